/*
 * openai_in_test - the HTTP front door's translation (scheduler/front/
 * openai_in.c), in-process: what of an OpenAI chat-completions body becomes
 * what in a chat_req (the leading system or developer message as the group
 * key, roles, parts, tool calls, tools, response_format, sampling fields,
 * everything else passed through, the fields lmsched sets itself dropped),
 * lmsched's controls from headers and the body and the session key's
 * sources, every refusal naming its field, and the answers: a completion,
 * stream chunks (content, reasoning, tool calls), a stream's end with and
 * without usage, the error bodies and the status of each core error.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "lmsched/wire.h"
#include "scheduler/front/openai_in.h"

static chat_req *parse_ok(const char *body, const oai_headers *h, oai_chat *out)
{
    oai_err err;
    int rc = oai_parse_chat(body, strlen(body), h, out, &err);
    if (rc != LMSCHED_OK)
        fail_msg("refused (%d, %d, %s): %s", rc, err.status, err.param, err.message);
    return out->req;
}

static void parse_bad(const char *body, const oai_headers *h, int want_rc,
                      const char *param, const char *msg)
{
    oai_chat out = {0};
    oai_err err;
    int rc = oai_parse_chat(body, strlen(body), h, &out, &err);
    if (rc != want_rc)
        fail_msg("%s: rc %d, want %d (%s)", body, rc, want_rc, err.message);
    assert_null(out.req);
    assert_int_equal(err.status, 400);
    assert_string_equal(err.param, param);
    if (strstr(err.message, msg) == NULL)
        fail_msg("%s: message \"%s\" lacks \"%s\"", body, err.message, msg);
}

static void test_messages(void **state)
{
    (void)state;
    oai_chat c;
    chat_req *r = parse_ok(
        "{\"model\":\"qwen\",\"messages\":["
        "{\"role\":\"developer\",\"content\":\"Be terse.\"},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"What is this?\"},"
        "{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/"
        "png;base64,AAA=\"}}]},"
        "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"c1\","
        "\"type\":"
        "\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}],\"refusal\":"
        "null},"
        "{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"name\":\"f\",\"content\":\"42\"},"
        "{\"role\":\"system\",\"content\":\"A later system message stays a message.\"}]}",
        NULL, &c);
    assert_string_equal(r->system, "Be terse.");
    assert_int_equal(r->n_messages, 4);
    assert_string_equal(r->model, "qwen");
    assert_string_equal(r->messages[0].role, "user");
    assert_null(r->messages[0].content);
    assert_string_equal(
        r->messages[0].parts_json,
        "[{\"type\":\"text\",\"text\":\"What is this?\"},{\"type\":\"image_url\","
        "\"image_url\":{\"url\":\"data:image/png;base64,AAA=\"}}]");
    assert_string_equal(r->messages[1].role, "assistant");
    assert_null(r->messages[1].content);
    assert_string_equal(
        r->messages[1].tool_calls_json,
        "[{\"id\":\"c1\",\"type\":\"function\",\"function\":{\"name\":\"f\","
        "\"arguments\":\"{}\"}}]");
    assert_string_equal(r->messages[2].role, "tool");
    assert_string_equal(r->messages[2].tool_call_id, "c1");
    assert_string_equal(r->messages[2].name, "f");
    assert_string_equal(r->messages[2].content, "42");
    assert_string_equal(r->messages[3].role, "system");
    assert_false(c.stream);
    assert_int_equal(r->priority, 5);
    assert_null(r->extra_json);
    chat_req_free(r);

    /* No leading system message: the group key is "". */
    r = parse_ok("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"model\":\"\"}",
                 NULL, &c);
    assert_string_equal(r->system, "");
    assert_int_equal(r->n_messages, 1);
    assert_null(r->model); /* "": whatever is loaded */
    chat_req_free(r);
    /* A system message in parts stays a message, as the client sent it. */
    r = parse_ok("{\"messages\":[{\"role\":\"system\",\"content\":[{\"type\":\"text\","
                 "\"text\":\"S\"}]},{\"role\":\"user\",\"content\":\"hi\"}]}",
                 NULL, &c);
    assert_string_equal(r->system, "");
    assert_int_equal(r->n_messages, 2);
    chat_req_free(r);
    /* A system message alone is a request. */
    r = parse_ok("{\"messages\":[{\"role\":\"system\",\"content\":\"Only this.\"}]}",
                 NULL, &c);
    assert_string_equal(r->system, "Only this.");
    assert_int_equal(r->n_messages, 0);
    chat_req_free(r);
}

static void test_fields(void **state)
{
    (void)state;
    oai_chat c;
    chat_req *r = parse_ok(
        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":10,"
        "\"max_completion_tokens\":20,\"temperature\":0.5,\"top_p\":1,\"seed\":-3,"
        "\"stop\":\"END\",\"n\":1,\"stream\":true,\"stream_options\":{\"include_usage\":"
        "true},"
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{"
        "\"a\":1.5}}}],"
        "\"tool_choice\":\"required\",\"parallel_tool_calls\":false,"
        "\"response_format\":{\"type\":\"json_object\"},\"top_k\":40,\"logprobs\":true,"
        "\"frequency_penalty\":0.1,\"id_slot\":3,\"cache_prompt\":false,\"store\":false}",
        NULL, &c);
    assert_int_equal(r->max_tokens, 20);
    assert_true(r->has_temperature && r->temperature == 0.5);
    assert_true(r->has_top_p && r->top_p == 1.0);
    assert_true(r->has_seed && r->seed == -3);
    assert_int_equal(r->n_stop, 1);
    assert_string_equal(r->stop[0], "END");
    assert_true(c.stream);
    assert_true(r->stream);
    assert_true(c.include_usage);
    assert_string_equal(
        r->tools_json,
        "[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":"
        "{\"a\":1.5}}}]");
    assert_string_equal(r->tool_choice_json, "\"required\"");
    assert_int_equal(r->parallel_tool_calls, 0);
    assert_string_equal(r->response_format_json, "{\"type\":\"json_object\"}");
    /* Passed through in their order; id_slot and cache_prompt dropped. */
    assert_string_equal(r->extra_json, "{\"top_k\":40,\"logprobs\":true,"
                                       "\"frequency_penalty\":0.10000000000000001,"
                                       "\"store\":false}");
    assert_null(chat_reserved_key("top_k"));
    chat_req_free(r);
    /* Nulls are "not given". */
    r = parse_ok(
        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":null,"
        "\"temperature\":null,\"stop\":null,\"tools\":null,\"stream\":null,"
        "\"seed\":null}",
        NULL, &c);
    assert_int_equal(r->max_tokens, -1);
    assert_false(r->has_temperature);
    assert_false(r->has_seed);
    assert_int_equal(r->n_stop, 0);
    assert_null(r->tools_json);
    assert_false(c.stream);
    chat_req_free(r);
    /* stop as an array; 5.0 is an integer to a JavaScript client. */
    r = parse_ok(
        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stop\":[\"a\",\"b\"],"
        "\"max_tokens\":5.0}",
        NULL, &c);
    assert_int_equal(r->n_stop, 2);
    assert_string_equal(r->stop[1], "b");
    assert_int_equal(r->max_tokens, 5);
    chat_req_free(r);
}

static void test_controls(void **state)
{
    (void)state;
    oai_chat c;
    const char *msgs = "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]";
    char body[512];
    snprintf(body, sizeof(body),
             "{%s,\"lmsched\":{\"priority\":7,\"deadline_ms\":1500,\"agent\":\"planner\","
             "\"session\":\"s-body\",\"future\":1},\"user\":\"u-1\",\"prompt_cache_key\":"
             "\"pk\"}",
             msgs);
    chat_req *r = parse_ok(body, NULL, &c);
    assert_int_equal(r->priority, 7);
    assert_int_equal(r->deadline_ms, 1500);
    assert_string_equal(r->agent, "planner");
    assert_string_equal(r->session, "s-body");
    assert_null(r->extra_json); /* none of them goes to the backend */
    chat_req_free(r);
    /* Headers win over the body. */
    oai_headers h = {
        .priority = "9", .deadline_ms = "0", .agent = "hdr-agent", .session = "s-hdr"};
    r = parse_ok(body, &h, &c);
    assert_int_equal(r->priority, 9);
    assert_int_equal(r->deadline_ms, 0);
    assert_string_equal(r->agent, "hdr-agent");
    assert_string_equal(r->session, "s-hdr");
    chat_req_free(r);
    /* The session's other sources, in order. */
    snprintf(body, sizeof(body), "{%s,\"user\":\"u-1\",\"prompt_cache_key\":\"pk\"}",
             msgs);
    r = parse_ok(body, NULL, &c);
    assert_string_equal(r->session, "pk");
    chat_req_free(r);
    snprintf(body, sizeof(body), "{%s,\"user\":\"u-1\"}", msgs);
    r = parse_ok(body, NULL, &c);
    assert_string_equal(r->session, "u-1");
    assert_int_equal(r->priority, 5);
    assert_null(r->agent);
    chat_req_free(r);

    snprintf(body, sizeof(body), "{%s}", msgs);
    oai_headers bad1 = {.priority = "10"};
    parse_bad(body, &bad1, LMSCHED_EPROTO, "X-Lmsched-Priority", "from 0 to 9");
    oai_headers bad2 = {.deadline_ms = "-1"};
    parse_bad(body, &bad2, LMSCHED_EPROTO, "X-Lmsched-Deadline-Ms", "whole number");
    oai_headers bad3 = {.agent = "tab\there"};
    parse_bad(body, &bad3, LMSCHED_EPROTO, "X-Lmsched-Agent", "printable");
    char longer[400];
    memset(longer, 'k', 300);
    longer[300] = '\0';
    oai_headers bad4 = {.session = longer};
    parse_bad(body, &bad4, LMSCHED_ETOOLARGE, "X-Session-ID", "limit of 256");
    snprintf(body, sizeof(body), "{%s,\"lmsched\":{\"priority\":\"high\"}}", msgs);
    parse_bad(body, NULL, LMSCHED_EPROTO, "lmsched.priority", "expected an integer");
    snprintf(body, sizeof(body), "{%s,\"lmsched\":[]}", msgs);
    parse_bad(body, NULL, LMSCHED_EPROTO, "lmsched", "expected an object");
}

static void test_refusals(void **state)
{
    (void)state;
    parse_bad("", NULL, LMSCHED_EPROTO, "", "not valid JSON");
    parse_bad("{\"messages\":[{\"role\":\"user\",\"content\":\"a\\u0000b\"}]}", NULL,
              LMSCHED_EPROTO, "", "not valid JSON");
    parse_bad("{\"messages\":[],\"x\":1,\"x\":2}", NULL, LMSCHED_EPROTO, "", "duplicate");
    parse_bad("\"just a string\"", NULL, LMSCHED_EPROTO, "", "must be a JSON object");
    parse_bad("{}", NULL, LMSCHED_EPROTO, "messages", "missing");
    parse_bad("{\"messages\":{}}", NULL, LMSCHED_EPROTO, "messages", "expected an array");
    parse_bad("{\"messages\":[]}", NULL, LMSCHED_EPROTO, "messages", "empty");
    parse_bad("{\"messages\":[1]}", NULL, LMSCHED_EPROTO, "messages[0]",
              "expected an object");
    parse_bad("{\"messages\":[{\"role\":\"\",\"content\":\"x\"}]}", NULL, LMSCHED_EPROTO,
              "messages[0].role", "empty");
    parse_bad(
        "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"tool\"}]}",
        NULL, LMSCHED_EPROTO, "messages[1].content", "missing");
    parse_bad("{\"messages\":[{\"role\":\"user\",\"content\":\"x\",\"tool_calls\":{}}]}",
              NULL, LMSCHED_EPROTO, "messages[0].tool_calls", "expected an array");
    const char *u = "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],";
    char b[600];
    static const struct {
        const char *field, *param, *msg;
    } cases[] = {
        {"\"n\":3}", "n", "only n=1"},
        {"\"max_tokens\":0}", "max_tokens", "out of range"},
        {"\"max_completion_tokens\":2000000}", "max_completion_tokens", "out of range"},
        {"\"temperature\":11}", "temperature", "out of range"},
        {"\"top_p\":\"1\"}", "top_p", "expected a number"},
        {"\"seed\":1.5}", "seed", "expected an integer"},
        {"\"stop\":[\"a\",2]}", "stop[1]", "expected a string"},
        {"\"stream\":\"yes\"}", "stream", "expected a boolean"},
        {"\"stream_options\":{\"include_usage\":1}}", "stream_options.include_usage",
         "expected a boolean"},
        {"\"tools\":{}}", "tools", "expected an array"},
        {"\"tool_choice\":1}", "tool_choice", "a string or an object"},
        {"\"response_format\":\"json\"}", "response_format", "expected an object"},
        {"\"parallel_tool_calls\":1}", "parallel_tool_calls", "expected a boolean"},
        {"\"model\":7}", "model", "expected a string"},
        {"\"user\":{}}", "user", "expected a string"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(b, sizeof(b), "%s%s", u, cases[i].field);
        parse_bad(b, NULL, LMSCHED_EPROTO, cases[i].param, cases[i].msg);
    }
    /* Limits: the wire protocol's. */
    snprintf(b, sizeof(b),
             "%s\"stop\":[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\","
             "\"10\",\"11\",\"12\",\"13\",\"14\",\"15\",\"16\",\"17\"]}",
             u);
    parse_bad(b, NULL, LMSCHED_ETOOLARGE, "stop", "limit of 16");
    size_t big = (4u << 20) + 1;
    char *t = malloc(big + 100);
    assert_non_null(t);
    int n = sprintf(t, "{\"messages\":[{\"role\":\"user\",\"content\":\"");
    memset(t + n, 'x', big);
    strcpy(t + n + big, "\"}]}");
    parse_bad(t, NULL, LMSCHED_ETOOLARGE, "messages[0].content", "limit of 4194304");
    free(t);
    char *many = malloc(1025 * 40 + 64);
    assert_non_null(many);
    strcpy(many, "{\"messages\":[");
    for (int i = 0; i < 1025; i++)
        strcat(many, i ? ",{\"role\":\"user\",\"content\":\"x\"}"
                       : "{\"role\":\"user\",\"content\":\"x\"}");
    strcat(many, "]}");
    parse_bad(many, NULL, LMSCHED_ETOOLARGE, "messages", "limit of 1024");
    free(many);
    char role[400];
    snprintf(role, sizeof(role),
             "{\"messages\":[{\"role\":\"%0300d\",\"content\":\"x\"}]}", 0);
    parse_bad(role, NULL, LMSCHED_ETOOLARGE, "messages[0].role", "limit of 256");
}

static oai_reply reply_ctx(bool usage)
{
    oai_reply c;
    memset(&c, 0, sizeof(c));
    snprintf(c.id, sizeof(c.id), "chatcmpl-t1");
    c.created = 1700000000;
    snprintf(c.model, sizeof(c.model), "asked-for");
    c.include_usage = usage;
    return c;
}

static void test_completion(void **state)
{
    (void)state;
    oai_reply c = reply_ctx(false);
    chat_tool_call tc[] = {{.id = "call_1",
                            .type = "function",
                            .name = "get_weather",
                            .arguments = "{\"city\":\"Paris\"}"}};
    chat_result r = {
        .content = "",
        .content_len = 0,
        .finish_reason = "tool_calls",
        .model = "qwen3",
        .usage = {100, 7, 96},
        .timings = {1.5, 20, 40},
        .reasoning = "thinking",
        .tool_calls = tc,
        .n_tool_calls = 1,
        .logprobs_json = "[{\"token\":\"a\",\"logprob\":-0.5}]",
    };
    size_t len = 0;
    char *s = oai_completion(&c, &r, &len);
    assert_non_null(s);
    assert_int_equal(strlen(s), len);
    json_t *j = json_loads(s, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "id")), "chatcmpl-t1");
    assert_string_equal(json_string_value(json_object_get(j, "object")),
                        "chat.completion");
    assert_string_equal(json_string_value(json_object_get(j, "model")), "qwen3");
    json_t *c0 = json_array_get(json_object_get(j, "choices"), 0);
    json_t *m = json_object_get(c0, "message");
    assert_true(json_is_null(json_object_get(m, "content")));
    assert_string_equal(json_string_value(json_object_get(m, "reasoning_content")),
                        "thinking");
    json_t *t0 = json_array_get(json_object_get(m, "tool_calls"), 0);
    assert_string_equal(json_string_value(json_object_get(t0, "id")), "call_1");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(t0, "function"), "arguments")),
        "{\"city\":\"Paris\"}");
    assert_string_equal(json_string_value(json_object_get(c0, "finish_reason")),
                        "tool_calls");
    assert_true(
        json_is_array(json_object_get(json_object_get(c0, "logprobs"), "content")));
    json_t *u = json_object_get(j, "usage");
    assert_int_equal(json_integer_value(json_object_get(u, "prompt_tokens")), 100);
    assert_int_equal(json_integer_value(json_object_get(u, "total_tokens")), 107);
    assert_int_equal(json_integer_value(json_object_get(
                         json_object_get(u, "prompt_tokens_details"), "cached_tokens")),
                     96);
    json_decref(j);
    free(s);
    /* Unknown counts are 0; content with tool calls stays a string. */
    r.content = "see";
    r.content_len = 3;
    r.usage = (chat_usage){-1, -1, -1};
    r.model = NULL;
    r.logprobs_json = NULL;
    s = oai_completion(&c, &r, &len);
    j = json_loads(s, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(j, "model")), "asked-for");
    c0 = json_array_get(json_object_get(j, "choices"), 0);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(c0, "message"), "content")),
        "see");
    assert_true(json_is_null(json_object_get(c0, "logprobs")));
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(j, "usage"), "prompt_tokens")),
        0);
    json_decref(j);
    free(s);
}

/* The events of an SSE text, parsed; [DONE] as the JSON string "[DONE]". */
static size_t events(const char *text, json_t **out, size_t max)
{
    size_t n = 0;
    for (const char *p = text; *p != '\0' && n < max;) {
        assert_int_equal(strncmp(p, "data: ", 6), 0);
        const char *end = strstr(p, "\n\n");
        assert_non_null(end);
        if (strncmp(p + 6, "[DONE]", 6) == 0)
            out[n++] = json_string("[DONE]");
        else
            out[n++] = json_loadb(p + 6, (size_t)(end - p - 6), 0, NULL);
        assert_non_null(out[n - 1]);
        p = end + 2;
    }
    return n;
}

static json_t *delta_of(json_t *ev)
{
    return json_object_get(json_array_get(json_object_get(ev, "choices"), 0), "delta");
}

static void test_stream(void **state)
{
    (void)state;
    oai_reply c = reply_ctx(true);
    strbuf b;
    strbuf_init(&b);
    chat_delta d[] = {
        {.kind = CHAT_DELTA_REASONING, .text = "hmm", .len = 3},
        {.kind = CHAT_DELTA_CONTENT, .text = "Hel", .len = 3},
        {.kind = CHAT_DELTA_TOOL_CALL, .index = 0, .id = "call_9", .name = "f"},
        {.kind = CHAT_DELTA_TOOL_CALL, .index = 0, .text = "{\"a\":", .len = 5},
    };
    assert_int_equal(oai_stream_pieces(&b, &c, d, 4), 0);
    chat_result r = {.content = "Hel",
                     .content_len = 3,
                     .finish_reason = "tool_calls",
                     .model = "m2",
                     .usage = {10, 4, 8}};
    assert_int_equal(oai_stream_end(&b, &c, &r), 0);
    json_t *ev[16];
    size_t n = events(strbuf_str(&b), ev, 16);
    assert_int_equal(n, 8); /* role, 4 pieces, finish, usage, [DONE] */
    assert_string_equal(json_string_value(json_object_get(delta_of(ev[0]), "role")),
                        "assistant");
    assert_string_equal(json_string_value(json_object_get(ev[0], "object")),
                        "chat.completion.chunk");
    assert_string_equal(
        json_string_value(json_object_get(delta_of(ev[1]), "reasoning_content")), "hmm");
    assert_string_equal(json_string_value(json_object_get(delta_of(ev[2]), "content")),
                        "Hel");
    json_t *tc = json_array_get(json_object_get(delta_of(ev[3]), "tool_calls"), 0);
    assert_int_equal(json_integer_value(json_object_get(tc, "index")), 0);
    assert_string_equal(json_string_value(json_object_get(tc, "id")), "call_9");
    assert_string_equal(json_string_value(json_object_get(tc, "type")), "function");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(tc, "function"), "name")), "f");
    tc = json_array_get(json_object_get(delta_of(ev[4]), "tool_calls"), 0);
    assert_null(json_object_get(tc, "id"));
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(tc, "function"), "arguments")),
        "{\"a\":");
    assert_string_equal(
        json_string_value(json_object_get(
            json_array_get(json_object_get(ev[5], "choices"), 0), "finish_reason")),
        "tool_calls");
    assert_string_equal(json_string_value(json_object_get(ev[5], "model")), "m2");
    assert_int_equal(json_array_size(json_object_get(ev[6], "choices")), 0);
    assert_int_equal(
        json_integer_value(json_object_get(
            json_object_get(json_object_get(ev[6], "usage"), "prompt_tokens_details"),
            "cached_tokens")),
        8);
    assert_string_equal(json_string_value(ev[7]), "[DONE]");
    for (size_t i = 0; i < n; i++)
        json_decref(ev[i]);
    strbuf_fini(&b);

    /* An answer that came whole is streamed at the end, without usage
     * unless asked. */
    c = reply_ctx(false);
    chat_tool_call t[] = {
        {.id = "k", .type = "function", .name = "g", .arguments = "{}"}};
    chat_result w = {.content = "All of it.",
                     .content_len = 10,
                     .finish_reason = "stop",
                     .usage = {1, 2, 0},
                     .tool_calls = t,
                     .n_tool_calls = 1};
    assert_int_equal(oai_stream_end(&b, &c, &w), 0);
    n = events(strbuf_str(&b), ev, 16);
    assert_int_equal(n, 5); /* role, content, the call, finish, [DONE] */
    assert_string_equal(json_string_value(json_object_get(delta_of(ev[1]), "content")),
                        "All of it.");
    tc = json_array_get(json_object_get(delta_of(ev[2]), "tool_calls"), 0);
    assert_string_equal(json_string_value(json_object_get(tc, "id")), "k");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(tc, "function"), "arguments")),
        "{}");
    assert_string_equal(json_string_value(ev[4]), "[DONE]");
    for (size_t i = 0; i < n; i++)
        json_decref(ev[i]);
    strbuf_fini(&b);

    /* Escaping: what JSON needs escaped is; UTF-8 passes; a byte that is
     * not UTF-8 (a piece that cut a character) becomes U+FFFD. */
    c = reply_ctx(false);
    c.started = true;
    static const char tricky[] =
        "q\"b\\n\nt\tc\x01 \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80 \xe2\x82 \xff";
    chat_delta td = {
        .kind = CHAT_DELTA_CONTENT, .text = tricky, .len = sizeof(tricky) - 1};
    assert_int_equal(oai_stream_pieces(&b, &c, &td, 1), 0);
    n = events(strbuf_str(&b), ev, 16);
    assert_int_equal(n, 1);
    assert_string_equal(json_string_value(json_object_get(delta_of(ev[0]), "content")),
                        "q\"b\\n\nt\tc\x01 \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80 "
                        "\xef\xbf\xbd\xef\xbf\xbd \xef\xbf\xbd");
    json_decref(ev[0]);
    strbuf_fini(&b);

    /* An error ends a stream as an event. */
    assert_int_equal(oai_stream_error(&b, LMSCHED_EBACKEND_STREAM, "cut", NULL), 0);
    n = events(strbuf_str(&b), ev, 16);
    assert_int_equal(n, 1);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(ev[0], "error"), "code")),
        "backend_stream");
    json_decref(ev[0]);
    strbuf_fini(&b);
}

static void test_errors(void **state)
{
    (void)state;
    static const struct {
        int code;
        const char *msg;
        int status;
    } cases[] = {
        {LMSCHED_EPROTO, "x", 400},
        {LMSCHED_ETOOLARGE, "x", 400},
        {LMSCHED_ETOOLARGE, "backend response larger than --max-response-bytes (8 bytes)",
         502},
        {LMSCHED_ETOOLARGE, "the backend's answer is longer than the content limit", 502},
        {LMSCHED_EBUSY, "x", 429},
        {LMSCHED_EDEADLINE, "x", 504},
        {LMSCHED_EBACKEND_TIMEOUT, "x", 504},
        {LMSCHED_ESHUTDOWN, "x", 503},
        {LMSCHED_EBACKEND_DOWN, "x", 503},
        {LMSCHED_EBACKEND_HTTP, "backend HTTP 400: bad field (backend h)", 400},
        {LMSCHED_EBACKEND_HTTP, "backend HTTP 404: no model", 404},
        {LMSCHED_EBACKEND_HTTP, "backend HTTP 429: slow down", 502},
        {LMSCHED_EBACKEND_HTTP, "backend HTTP 500: oops", 502},
        {LMSCHED_EBACKEND_CRASH, "x", 502},
        {LMSCHED_EBACKEND_STREAM, "x", 502},
        {LMSCHED_EAUTH, "backend HTTP 401", 502},
        {LMSCHED_EINTERNAL, "x", 500},
        {LMSCHED_ENOMEM, "x", 500},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        if (oai_status_of(cases[i].code, cases[i].msg) != cases[i].status)
            fail_msg("%s (%s): %d, want %d", lmsched_err_name(cases[i].code),
                     cases[i].msg, oai_status_of(cases[i].code, cases[i].msg),
                     cases[i].status);
    size_t len;
    char *s = oai_error_body(429, LMSCHED_EBUSY, "queue \"full\"", NULL, &len);
    json_t *j = json_loads(s, 0, NULL);
    json_t *e = json_object_get(j, "error");
    assert_int_equal(json_object_size(j), 1);
    assert_string_equal(json_string_value(json_object_get(e, "message")),
                        "queue \"full\"");
    assert_string_equal(json_string_value(json_object_get(e, "type")),
                        "rate_limit_error");
    assert_string_equal(json_string_value(json_object_get(e, "code")), "busy");
    assert_true(json_is_null(json_object_get(e, "param")));
    json_decref(j);
    free(s);
    /* A prompt over the context: OpenAI's code, which frameworks look for. */
    s = oai_error_body(400, LMSCHED_ETOOLARGE, "cannot fit", "messages", &len);
    j = json_loads(s, 0, NULL);
    e = json_object_get(j, "error");
    assert_string_equal(json_string_value(json_object_get(e, "code")),
                        "context_length_exceeded");
    assert_string_equal(json_string_value(json_object_get(e, "param")), "messages");
    assert_string_equal(json_string_value(json_object_get(e, "type")),
                        "invalid_request_error");
    json_decref(j);
    free(s);
    s = oai_error_body(400, LMSCHED_EBACKEND_HTTP,
                       "backend HTTP 400: the request exceeds the available context size",
                       NULL, &len);
    assert_non_null(strstr(s, "\"context_length_exceeded\""));
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_messages),   cmocka_unit_test(test_fields),
        cmocka_unit_test(test_controls),   cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_completion), cmocka_unit_test(test_stream),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
