/*
 * Tests of lmsim's pure parts: the chat request parser and its prompt
 * rendering (the tokenizer rule the docs promise, with tools, parts and
 * tool calls), error bodies (those naming the field), the replies built
 * for a request (tool calls, tool results, JSON, reasoning), the schema
 * example generator, and the reply words.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "sim/api.h"
#include "sim/config.h"
#include "sim/engine.h"
#include "sim/reply.h"
#include "sim/schema.h"

static int parse(const char *body, api_chat *out, char **err)
{
    return api_parse_chat(body, strlen(body), out, err);
}

/* The error "type" of an error body, or "" (jansson owns nothing after). */
static void assert_error_type(const char *body, const char *type)
{
    json_error_t je;
    json_t *o = json_loads(body, 0, &je);
    assert_non_null(o);
    json_t *t = json_object_get(json_object_get(o, "error"), "type");
    assert_true(json_is_string(t));
    assert_string_equal(json_string_value(t), type);
    json_decref(o);
}

static void test_render_chatml(void **state)
{
    api_chat c;
    char *err = NULL;
    assert_int_equal(
        parse("{\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
              "{\"role\":\"user\",\"content\":\"hi\"}]}",
              &c, &err),
        0);
    const char *want = "<|im_start|>system\nBe brief.<|im_end|>\n"
                       "<|im_start|>user\nhi<|im_end|>\n"
                       "<|im_start|>assistant\n";
    assert_int_equal(c.prompt_len, strlen(want));
    assert_memory_equal(c.prompt, want, c.prompt_len);
    /* Defaults. */
    assert_false(c.stream);
    assert_true(c.cache_prompt);
    assert_int_equal(c.id_slot, -1);
    assert_true(c.max_tokens == -1);
    api_chat_fini(&c);
}

static void test_options(void **state)
{
    api_chat c;
    char *err = NULL;
    assert_int_equal(
        parse("{\"model\":\"x\",\"stream\":true,\"stream_options\":{\"include_usage\":"
              "true},"
              "\"max_tokens\":7,\"cache_prompt\":false,\"id_slot\":2,\"ignore_eos\":true,"
              "\"seed\":42,\"temperature\":0.2,\"top_p\":1,\"stop\":[\"\\n\"],"
              "\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":"
              "\"a\"},"
              "{\"type\":\"image_url\",\"image_url\":{\"url\":\"x\"}},"
              "{\"type\":\"text\",\"text\":\"b\"}]},{\"role\":\"assistant\",\"content\":"
              "null}]}",
              &c, &err),
        0);
    assert_true(c.stream);
    assert_true(c.include_usage);
    assert_true(c.max_tokens == 7);
    assert_false(c.cache_prompt);
    assert_int_equal(c.id_slot, 2);
    assert_true(c.ignore_eos);
    assert_true(c.seed == 42);
    /* An image part shows as "<image>". */
    const char *want = "<|im_start|>user\na<image>b<|im_end|>\n"
                       "<|im_start|>assistant\n<|im_end|>\n"
                       "<|im_start|>assistant\n";
    assert_int_equal(c.prompt_len, strlen(want));
    assert_memory_equal(c.prompt, want, c.prompt_len);
    api_chat_fini(&c);

    /* llama.cpp's name for the limit. */
    assert_int_equal(
        parse("{\"n_predict\":3,\"messages\":[{\"role\":\"user\",\"content\":\"\"}]}", &c,
              &err),
        0);
    assert_true(c.max_tokens == 3);
    api_chat_fini(&c);
}

static void test_rejects(void **state)
{
    static const char *const bad[] = {
        "",
        "{bad",
        "[1,2]",
        "{}",
        "{\"messages\":[]}",
        "{\"messages\":\"hi\"}",
        "{\"messages\":[{\"content\":\"no role\"}]}",
        "{\"messages\":[{\"role\":\"user\",\"content\":5}]}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":0}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":\"9\"}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream\":\"yes\"}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"id_slot\":-2}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":\"hot\"}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":[1]}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        api_chat c;
        char *err = NULL;
        int rc = parse(bad[i], &c, &err);
        if (rc != 400)
            fail_msg("body %zu (%s): got %d, want 400", i, bad[i], rc);
        assert_non_null(err);
        assert_error_type(err, "invalid_request_error");
        assert_null(c.prompt);
        free(err);
    }
}

static void test_role_bounded(void **state)
{
    char body[256];
    char role[SIMAPI_MAX_ROLE + 2];
    memset(role, 'r', sizeof role - 1);
    role[sizeof role - 1] = '\0';
    snprintf(body, sizeof body, "{\"messages\":[{\"role\":\"%s\",\"content\":\"x\"}]}",
             role);
    api_chat c;
    char *err = NULL;
    assert_int_equal(parse(body, &c, &err), 400);
    free(err);
}

static void test_context_error_shape(void **state)
{
    char *s = api_context_error_json(9000, 8192);
    assert_non_null(s);
    json_t *o = json_loads(s, 0, NULL);
    assert_non_null(o);
    json_t *e = json_object_get(o, "error");
    assert_string_equal(json_string_value(json_object_get(e, "type")),
                        "exceed_context_size_error");
    assert_non_null(strstr(json_string_value(json_object_get(e, "message")),
                           "exceeds the available context size"));
    assert_int_equal(json_integer_value(json_object_get(e, "n_prompt_tokens")), 9000);
    assert_int_equal(json_integer_value(json_object_get(e, "n_ctx")), 8192);
    assert_int_equal(json_integer_value(json_object_get(e, "code")), 400);
    json_decref(o);
    free(s);
}

static void test_tokens_and_words(void **state)
{
    assert_int_equal(simeng_tokens(0), 0);
    assert_int_equal(simeng_tokens(1), 1);
    assert_int_equal(simeng_tokens(4), 1);
    assert_int_equal(simeng_tokens(5), 2);
    assert_int_equal(simeng_tokens(400), 100);
    /* Every word is one token (4 bytes ending in a space), and the words
     * depend on the seed but not on the call. */
    bool differ = false;
    for (unsigned i = 0; i < 200; i++) {
        const char *w = simeng_word(7, i);
        assert_int_equal(strlen(w), SIMENG_BYTES_PER_TOKEN);
        assert_int_equal(w[3], ' ');
        assert_string_equal(w, simeng_word(7, i));
        differ = differ || strcmp(w, simeng_word(8, i)) != 0;
    }
    assert_true(differ);
}

/* ---- rendering of tools, parts and tool calls --------------------------- */

/* Parses body, which must succeed, and checks its rendered prompt. */
static void assert_renders(const char *body, const char *want)
{
    api_chat c;
    char *err = NULL;
    int rc = parse(body, &c, &err);
    if (rc != 0)
        fail_msg("status %d: %s", rc, err ? err : "");
    if (c.prompt_len != strlen(want) || memcmp(c.prompt, want, c.prompt_len) != 0)
        fail_msg("rendered\n%.*s\nwant\n%s", (int)c.prompt_len, c.prompt, want);
    api_chat_fini(&c);
}

#define TOOLS_JSON                                                                       \
    "[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"description\":"    \
    "\"Weather now\",\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{"     \
    "\"type\":\"string\"},\"days\":{\"type\":\"integer\",\"minimum\":1}},\"required\":[" \
    "\"city\"]}}}]"

static void test_render_system_and_tools(void **state)
{
    assert_renders(
        "{\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
        "{\"role\":\"user\",\"content\":\"hi\"}],\"tools\":" TOOLS_JSON "}",
        "<|im_start|>system\nBe brief.\n\n# Tools\n" TOOLS_JSON
        "\n<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    /* The tools as jansson dumps them: compact, in order, 17 digits. */
    assert_renders(
        "{\"messages\":[{\"role\":\"system\",\"content\":\"S\"},{\"role\":\"user\","
        "\"content\":\"x\"}],\"tools\":[ {\"type\": \"function\", \"function\": "
        "{\"parameters\": {\"minimum\": 0.1}, \"name\": \"f\"}} ]}",
        "<|im_start|>system\nS\n\n# Tools\n[{\"type\":\"function\",\"function\":{"
        "\"parameters\":{\"minimum\":0.10000000000000001},\"name\":\"f\"}}]\n<|im_end|>\n"
        "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n");
    /* An empty system content takes no blank line before the tools. */
    assert_renders(
        "{\"messages\":[{\"role\":\"system\",\"content\":\"\"},"
        "{\"role\":\"user\",\"content\":\"hi\"}],\"tools\":" TOOLS_JSON "}",
        "<|im_start|>system\n# Tools\n" TOOLS_JSON
        "\n<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
}

static void test_render_tools_without_system(void **state)
{
    assert_renders(
        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"tools\":" TOOLS_JSON
        ",\"tool_choice\":\"none\"}",
        "<|im_start|>system\n# Tools\n" TOOLS_JSON
        "\n<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    /* An empty tools array is no tools: no system block. */
    assert_renders("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"tools\":[]}",
                   "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    /* The first system message makes the system block wherever it is; later
     * system and developer messages stay in place. */
    assert_renders(
        "{\"messages\":[{\"role\":\"user\",\"content\":\"u\"},"
        "{\"role\":\"system\",\"content\":\"S1\"},{\"role\":\"developer\","
        "\"content\":\"D\"},{\"role\":\"system\",\"content\":\"S2\"}]}",
        "<|im_start|>system\nS1<|im_end|>\n<|im_start|>user\nu<|im_end|>\n"
        "<|im_start|>developer\nD<|im_end|>\n<|im_start|>system\nS2<|im_end|>\n"
        "<|im_start|>assistant\n");
}

static void test_render_parts_with_image(void **state)
{
    assert_renders(
        "{\"messages\":[{\"role\":\"system\",\"content\":[{\"type\":\"text\",\"text\":"
        "\"Sys\"}]},{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"What "
        "is "
        "\"},{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/"
        "png;base64,AAAA\"}},"
        "{\"type\":\"input_audio\",\"input_audio\":{}},{\"type\":\"text\",\"text\":\" "
        "this?\"}]}]}",
        "<|im_start|>system\nSys<|im_end|>\n<|im_start|>user\nWhat is <image> "
        "this?<|im_end|>\n"
        "<|im_start|>assistant\n");
}

static void test_render_tool_calls_and_result(void **state)
{
    assert_renders(
        "{\"messages\":[{\"role\":\"user\",\"content\":\"weather?\"},"
        "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"call_1\","
        "\"type\":\"function\",\"function\":{\"arguments\":\"{\\\"city\\\": "
        "\\\"Paris\\\"}\","
        "\"name\":\"get_weather\"}},{\"id\":\"call_2\",\"type\":\"function\","
        "\"function\":{"
        "\"name\":\"now\",\"arguments\":\"{}\"}}]},"
        "{\"role\":\"tool\",\"tool_call_id\":\"call_1\",\"name\":\"get_weather\","
        "\"content\":\"21 C\"},{\"role\":\"assistant\",\"tool_calls\":[]},"
        "{\"role\":\"tool\",\"tool_call_id\":\"call_2\",\"content\":\"noon\"}]}",
        "<|im_start|>user\nweather?<|im_end|>\n"
        "<|im_start|>assistant\n<tool_call>{\"name\":\"get_weather\",\"arguments\":"
        "\"{\\\"city\\\": \\\"Paris\\\"}\"}</tool_call><tool_call>{\"name\":\"now\","
        "\"arguments\":\"{}\"}</tool_call><|im_end|>\n"
        "<|im_start|>tool\n21 C<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n"
        "<|im_start|>tool\nnoon<|im_end|>\n<|im_start|>assistant\n");
}

/* ---- errors that name the field ------------------------------------------ */

static void test_param_errors(void **state)
{
    static const struct {
        const char *extra; /* fields added to a valid body */
        const char *param;
        const char *message;
    } bad[] = {
        {"\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"a\"}},"
         "{\"type\":\"function\",\"function\":{\"description\":\"no name\"}}]",
         "tools[1].function.name", "tools[1].function.name: missing or not a string"},
        {"\"tools\":{}", "tools", "tools: must be an array"},
        {"\"tools\":[5]", "tools[0]", "tools[0]: must be an object"},
        {"\"tools\":[{\"function\":{\"name\":\"a\"}}]", "tools[0].type",
         "tools[0].type: missing or not \"function\""},
        {"\"tools\":[{\"type\":\"function\"}]", "tools[0].function",
         "tools[0].function: missing or not an object"},
        {"\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"a b\"}}]",
         "tools[0].function.name",
         "tools[0].function.name: must be 1 to 64 letters, digits, underscores or "
         "dashes"},
        {"\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"a\",\"parameters\":["
         "]}}]",
         "tools[0].function.parameters",
         "tools[0].function.parameters: must be an object (a JSON schema)"},
        {"\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"a\",\"description\":"
         "1}}]",
         "tools[0].function.description",
         "tools[0].function.description: must be a string"},
        {"\"tool_choice\":\"sometimes\"", "tool_choice", NULL},
        {"\"tool_choice\":\"required\"", "tool_choice",
         "tool_choice: \"required\" needs tools"},
        {"\"tools\":" TOOLS_JSON ",\"tool_choice\":{\"type\":\"function\",\"function\":"
         "{\"name\":\"nope\"}}",
         "tool_choice.function.name",
         "tool_choice.function.name: names no tool of this request"},
        {"\"parallel_tool_calls\":1", "parallel_tool_calls", NULL},
        {"\"response_format\":\"json\"", "response_format", NULL},
        {"\"response_format\":{\"type\":\"xml\"}", "response_format.type",
         "response_format.type: must be \"text\", \"json_object\" or \"json_schema\""},
        {"\"response_format\":{\"type\":\"json_schema\"}", "response_format.json_schema",
         NULL},
        {"\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"schema\":{}}}",
         "response_format.json_schema.name", NULL},
        {"\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"n\","
         "\"schema\":true}}",
         "response_format.json_schema.schema", NULL},
        {"\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"n\","
         "\"schema\":{},\"strict\":\"yes\"}}",
         "response_format.json_schema.strict", NULL},
        {"\"logprobs\":\"yes\"", "logprobs", NULL},
        {"\"top_logprobs\":21", "top_logprobs", NULL},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char body[2048];
        snprintf(body, sizeof body,
                 "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],%s}",
                 bad[i].extra);
        api_chat c;
        char *err = NULL;
        int rc = parse(body, &c, &err);
        if (rc != 400)
            fail_msg("body %zu (%s): got %d, want 400", i, body, rc);
        json_t *o = json_loads(err, 0, NULL);
        assert_non_null(o);
        json_t *e = json_object_get(o, "error");
        assert_int_equal(json_integer_value(json_object_get(e, "code")), 400);
        assert_string_equal(json_string_value(json_object_get(e, "type")),
                            "invalid_request_error");
        assert_string_equal(json_string_value(json_object_get(e, "param")), bad[i].param);
        const char *msg = json_string_value(json_object_get(e, "message"));
        assert_non_null(msg);
        if (bad[i].message)
            assert_string_equal(msg, bad[i].message);
        else /* the message starts with the field */
            assert_true(strncmp(msg, bad[i].param, strlen(bad[i].param)) == 0);
        json_decref(o);
        free(err);
    }

    /* Messages: tool_calls, tool fields and parts. */
    static const struct {
        const char *messages;
        const char *param;
    } badm[] = {
        {"[{\"role\":\"assistant\",\"tool_calls\":{}}]", "messages[0].tool_calls"},
        {"[{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"assistant\",\"tool_calls\":"
         "[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]}]",
         "messages[1].tool_calls[0].function.arguments"},
        {"[{\"role\":\"assistant\",\"tool_calls\":[{\"function\":{\"arguments\":\"{}\"}}]"
         "}]",
         "messages[0].tool_calls[0].function.name"},
        {"[{\"role\":\"assistant\",\"tool_calls\":[{\"type\":\"code\",\"function\":{}}]}"
         "]",
         "messages[0].tool_calls[0].type"},
        {"[{\"role\":\"tool\",\"tool_call_id\":5,\"content\":\"r\"}]",
         "messages[0].tool_call_id"},
        {"[{\"role\":\"user\",\"content\":[{\"type\":\"text\"}]}]",
         "messages[0].content[0].text"},
        {"[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{}}]}]",
         "messages[0].content[0].image_url.url"},
        {"[{\"role\":\"user\",\"content\":[\"text\"]}]", "messages[0].content[0]"},
    };
    for (size_t i = 0; i < sizeof badm / sizeof badm[0]; i++) {
        char body[1024];
        snprintf(body, sizeof body, "{\"messages\":%s}", badm[i].messages);
        api_chat c;
        char *err = NULL;
        int rc = parse(body, &c, &err);
        if (rc != 400)
            fail_msg("messages %zu (%s): got %d, want 400", i, body, rc);
        json_t *o = json_loads(err, 0, NULL);
        assert_non_null(o);
        assert_string_equal(
            json_string_value(json_object_get(json_object_get(o, "error"), "param")),
            badm[i].param);
        json_decref(o);
        free(err);
    }

    /* Sampling fields lmsim does not model are accepted; so are a valid
     * tool_choice, parallel_tool_calls, response_format and logprobs. */
    api_chat c;
    char *err = NULL;
    assert_int_equal(
        parse("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_k\":40,"
              "\"min_p\":0.05,\"repeat_penalty\":1.1,\"presence_penalty\":0,"
              "\"frequency_penalty\":0,\"logit_bias\":{\"15\":-100},\"seed\":3,"
              "\"tools\":" TOOLS_JSON
              ",\"tool_choice\":{\"type\":\"function\",\"function\":"
              "{\"name\":\"get_weather\"}},\"parallel_tool_calls\":true,"
              "\"response_format\":{\"type\":\"json_object\"},\"logprobs\":true,"
              "\"top_logprobs\":3}",
              &c, &err),
        0);
    assert_true(c.logprobs);
    assert_int_equal(c.top_logprobs, 3);
    api_chat_fini(&c);
}

/* ---- replies -------------------------------------------------------------- */

/* The reply lmsim builds for body (default flags but those given). */
static sim_reply *reply_for(const char *body, unsigned reasoning)
{
    sim_config cfg;
    simcfg_init(&cfg);
    cfg.reasoning_tokens = reasoning;
    api_chat c;
    char *err = NULL;
    int rc = parse(body, &c, &err);
    if (rc != 0)
        fail_msg("status %d: %s", rc, err ? err : "");
    sim_reply *r = NULL;
    assert_int_equal(api_chat_reply(&cfg, &c, &r), 0);
    assert_non_null(r);
    api_chat_fini(&c);
    return r;
}

/* Concatenated stream text or cache bytes of every token of kind (or of
 * every token with kind -1), malloc'd. */
static char *reply_join(const sim_reply *r, int kind, bool cache)
{
    size_t len = 0;
    char *s = calloc(1, 1);
    for (unsigned i = 0; i < simreply_tokens(r); i++) {
        sim_piece pc;
        simreply_piece(r, i, &pc);
        if (kind >= 0 && (int)pc.kind != kind)
            continue;
        const char *t = cache ? pc.cache : pc.text;
        size_t n = cache ? pc.cache_len : pc.len;
        s = realloc(s, len + n + 1);
        assert_non_null(s);
        memcpy(s + len, t, n);
        len += n;
        s[len] = '\0';
    }
    return s;
}

static void test_reply_tool_call(void **state)
{
    const char *body = "{\"messages\":[{\"role\":\"user\",\"content\":\"Use get_weather "
                       "for Paris\"}],\"tools\":" TOOLS_JSON "}";
    sim_reply *r = reply_for(body, 0);
    assert_int_equal(simreply_calls(r), 1);
    assert_string_equal(simreply_call_name(r, 0), "get_weather");
    const char *id = simreply_call_id(r, 0);
    assert_int_equal(strlen(id), 13);
    assert_memory_equal(id, "call_", 5);
    for (size_t i = 5; i < 13; i++)
        assert_non_null(strchr("0123456789abcdef", id[i]));
    sim_piece pc;
    simreply_piece(r, 0, &pc);
    assert_int_equal(pc.kind, SIM_PIECE_CALL_HEAD);
    /* The arguments: an example of the parameters, in ~4-byte tokens. */
    char *args = reply_join(r, SIM_PIECE_CALL_ARGS, false);
    json_t *a = json_loads(args, 0, NULL);
    assert_non_null(a);
    assert_true(json_is_string(json_object_get(a, "city")));
    assert_int_equal(json_integer_value(json_object_get(a, "days")), 1);
    assert_int_equal(simreply_tokens(r), 1 + (strlen(args) + 3) / 4);
    json_decref(a);

    /* Same request, same id; the slot cache gets the call as the prompt
     * shows it once sent back, so the next turn's prefix runs through it. */
    sim_reply *r2 = reply_for(body, 0);
    assert_string_equal(simreply_call_id(r2, 0), id);
    char *cache = reply_join(r, -1, true);
    json_t *call = json_pack("{s:s,s:s}", "name", "get_weather", "arguments", args);
    char *dumped = json_dumps(call, JSON_COMPACT | JSON_PRESERVE_ORDER);
    char want[1024];
    snprintf(want, sizeof want, "<tool_call>%s</tool_call>", dumped);
    assert_string_equal(cache, want);
    free(dumped);
    json_decref(call);
    free(cache);
    simreply_free(r2);
    free(args);
    simreply_free(r);

    /* tool_choice none: words; required: the first tool whatever the text. */
    r = reply_for("{\"messages\":[{\"role\":\"user\",\"content\":\"get_weather\"}],"
                  "\"tools\":" TOOLS_JSON ",\"tool_choice\":\"none\"}",
                  0);
    assert_int_equal(simreply_calls(r), 0);
    assert_int_equal(simreply_tokens(r), 32);
    simreply_free(r);
    r = reply_for("{\"messages\":[{\"role\":\"user\",\"content\":\"hello\"}],"
                  "\"tools\":" TOOLS_JSON ",\"tool_choice\":\"required\"}",
                  0);
    assert_int_equal(simreply_calls(r), 1);
    simreply_free(r);
    /* No name in the text: words. */
    r = reply_for("{\"messages\":[{\"role\":\"user\",\"content\":\"hello\"}],"
                  "\"tools\":" TOOLS_JSON "}",
                  0);
    assert_int_equal(simreply_calls(r), 0);
    simreply_free(r);
}

static void test_reply_parallel_calls(void **state)
{
    const char *tools =
        "[{\"type\":\"function\",\"function\":{\"name\":\"alpha\"}},"
        "{\"type\":\"function\",\"function\":{\"name\":\"beta\",\"parameters\":{\"type\":"
        "\"object\",\"properties\":{\"q\":{\"type\":\"string\",\"enum\":[\"x\\\"y\","
        "\"z\"]}}}}},"
        "{\"type\":\"function\",\"function\":{\"name\":\"gamma\"}}]";
    char body[2048];
    snprintf(body, sizeof body,
             "{\"messages\":[{\"role\":\"user\",\"content\":\"gamma then beta\"}],"
             "\"tools\":%s,\"parallel_tool_calls\":true}",
             tools);
    sim_reply *r = reply_for(body, 0);
    assert_int_equal(simreply_calls(r), 2);
    /* In tools order, whatever the text's order. */
    assert_string_equal(simreply_call_name(r, 0), "beta");
    assert_string_equal(simreply_call_name(r, 1), "gamma");
    assert_string_not_equal(simreply_call_id(r, 0), simreply_call_id(r, 1));
    /* Escaping in the cache matches the prompt's rendering of the calls. */
    char *cache = reply_join(r, -1, true);
    assert_string_equal(cache, "<tool_call>{\"name\":\"beta\",\"arguments\":\"{\\\"q\\\":"
                               "\\\"x\\\\\\\"y\\\"}\"}</tool_call><tool_call>{\"name\":"
                               "\"gamma\",\"arguments\":\"{}\"}</tool_call>");
    free(cache);
    simreply_free(r);
    /* Without parallel_tool_calls: the first named tool only. */
    snprintf(body, sizeof body,
             "{\"messages\":[{\"role\":\"user\",\"content\":\"gamma then beta\"}],"
             "\"tools\":%s}",
             tools);
    r = reply_for(body, 0);
    assert_int_equal(simreply_calls(r), 1);
    assert_string_equal(simreply_call_name(r, 0), "beta");
    simreply_free(r);
}

static void test_reply_tool_result(void **state)
{
    /* 45 bytes of content, with a 2-byte character across byte 40. */
    sim_reply *r = reply_for(
        "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"tool\","
        "\"tool_call_id\":\"c\",\"content\":\"0123456789012345678901234567890123456789\"}"
        "]}",
        0);
    char *text = reply_join(r, SIM_PIECE_CONTENT, false);
    const char *prefix = "Tool result: 0123456789012345678901234567890123456789 ";
    assert_true(strncmp(text, prefix, strlen(prefix)) == 0);
    /* 55 bytes of prefix are 14 tokens; words make up the 32. */
    assert_int_equal(simreply_tokens(r), 32);
    assert_int_equal(strlen(text), strlen(prefix) + 18 * 4);
    free(text);
    simreply_free(r);

    /* "a" and twenty 2-byte characters: byte 40 is inside the last one,
     * so the quote stops before it (39 bytes). */
    r = reply_for(
        "{\"messages\":[{\"role\":\"tool\",\"content\":"
        "\"a\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9"
        "\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\"}]}",
        0);
    text = reply_join(r, SIM_PIECE_CONTENT, false);
    char quote[80] = "Tool result: a";
    for (int i = 0; i < 19; i++)
        strcat(quote, "\xc3\xa9");
    strcat(quote, " ");
    assert_true(strncmp(text, quote, strlen(quote)) == 0);
    assert_true(strncmp(text + strlen(quote), "\xc3", 1) != 0);
    /* Every token is whole characters, so it is valid JSON text. */
    for (unsigned i = 0; i < simreply_tokens(r); i++) {
        sim_piece pc;
        simreply_piece(r, i, &pc);
        json_t *s = json_stringn(pc.text, pc.len);
        assert_non_null(s);
        json_decref(s);
    }
    free(text);
    simreply_free(r);
}

static void test_reply_json_and_reasoning(void **state)
{
    sim_reply *r = reply_for("{\"messages\":[{\"role\":\"user\",\"content\":\"q\"}],"
                             "\"response_format\":{\"type\":\"json_object\"}}",
                             3);
    char *text = reply_join(r, SIM_PIECE_CONTENT, false);
    json_t *o = json_loads(text, 0, NULL);
    assert_non_null(o);
    assert_int_equal(json_object_size(o), 1);
    assert_int_equal(json_string_length(json_object_get(o, "answer")), 32 * 4 - 1);
    assert_int_equal(simreply_tokens(r), 3 + (strlen(text) + 3) / 4);
    json_decref(o);
    free(text);
    char *reasoning = reply_join(r, SIM_PIECE_REASONING, false);
    assert_int_equal(strlen(reasoning), 3 * 4);
    free(reasoning);
    simreply_free(r);

    r = reply_for(
        "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"}],"
        "\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":"
        "\"n\",\"schema\":{\"type\":\"object\",\"properties\":{\"ok\":{\"type\":"
        "\"boolean\"},\"n\":{\"type\":\"number\",\"minimum\":2.5},\"tags\":{"
        "\"type\":\"array\",\"items\":{\"enum\":[\"a\",\"b\"]},\"minItems\":2},"
        "\"none\":{\"type\":\"null\"},\"ref\":{\"$ref\":\"#/x\"},\"pick\":{"
        "\"anyOf\":[{\"type\":\"integer\",\"maximum\":-3},{\"type\":\"string\"}]},"
        "\"kind\":{\"const\":{\"k\":1}}}}}}}",
        0);
    text = reply_join(r, SIM_PIECE_CONTENT, false);
    assert_string_equal(text,
                        "{\"ok\":true,\"n\":2.5,\"tags\":[\"a\",\"a\"],\"none\":null,"
                        "\"ref\":null,\"pick\":-3,\"kind\":{\"k\":1}}");
    free(text);
    simreply_free(r);
}

static void test_schema_generator(void **state)
{
    static const struct {
        const char *schema, *want;
    } cases[] = {
        {"{\"type\":\"string\",\"minLength\":7,\"maxLength\":9}", NULL},
        {"{\"type\":\"string\",\"format\":\"date\"}", "\"2024-01-01\""},
        {"{\"type\":\"integer\",\"minimum\":5,\"maximum\":9}", "5"},
        {"{\"type\":\"integer\",\"exclusiveMinimum\":5}", "6"},
        {"{\"type\":\"integer\",\"minimum\":3,\"multipleOf\":4}", "4"},
        {"{\"type\":[\"null\",\"string\"]}", "null"},
        {"{\"type\":\"array\",\"minItems\":0,\"maxItems\":0}", "[]"},
        {"{\"type\":\"array\",\"minItems\":100000,\"items\":{\"type\":\"boolean\"}}",
         NULL},
        {"{\"type\":\"object\",\"required\":[\"x\"]}", "{\"x\":null}"},
        {"{\"properties\":{\"a\":{\"oneOf\":[{\"type\":\"integer\"}]}}}", "{\"a\":1}"},
        {"{\"type\":\"wat\"}", "null"},
        {"{}", "null"},
        {"{\"$ref\":\"#/defs/a\"}", "null"},
        {"{\"type\":\"array\",\"items\":[{\"type\":\"integer\"},{\"type\":\"boolean\"}],"
         "\"minItems\":2}",
         "[1,true]"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *s = json_loads(cases[i].schema, 0, NULL);
        assert_non_null(s);
        json_t *v = simschema_example(s, 7);
        assert_non_null(v);
        char *d = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
        if (cases[i].want && strcmp(d, cases[i].want) != 0)
            fail_msg("schema %s: got %s, want %s", cases[i].schema, d, cases[i].want);
        if (i == 0)
            assert_int_equal(json_string_length(v), 7);
        if (i == 7)
            assert_int_equal(json_array_size(v), SIMSCHEMA_MAX_ITEMS);
        free(d);
        json_decref(v);
        json_decref(s);
    }
    /* A schema nested past the bound, and one that would explode in size,
     * end in nulls instead of a crash or a huge value. */
    char deep[4096] = "";
    for (int i = 0; i < 40; i++)
        strcat(deep, "{\"type\":\"array\",\"items\":");
    strcat(deep, "{\"type\":\"integer\"}");
    for (int i = 0; i < 40; i++)
        strcat(deep, "}");
    json_t *s = json_loads(deep, 0, NULL);
    assert_non_null(s);
    json_t *v = simschema_example(s, 1);
    char *d = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
    assert_non_null(strstr(d, "null"));
    assert_null(strstr(d, "1"));
    free(d);
    json_decref(v);
    json_decref(s);
    s = json_loads(
        "{\"type\":\"array\",\"minItems\":64,\"items\":{\"type\":\"array\","
        "\"minItems\":64,\"items\":{\"type\":\"array\",\"minItems\":64,\"items\":"
        "{\"type\":\"integer\"}}}}",
        0, NULL);
    v = simschema_example(s, 1);
    d = json_dumps(v, JSON_COMPACT);
    assert_true(strlen(d) < 64 * 1024);
    free(d);
    json_decref(v);
    json_decref(s);

    /* 3000 strings of 1000 bytes: the byte budget ends them in nulls and
     * then ends the object, and the answer (here a tool's arguments,
     * escaped in the cache too) is still built. */
    json_t *props = json_object();
    for (int i = 0; i < 3000; i++) {
        char key[16];
        snprintf(key, sizeof key, "p%d", i);
        json_object_set_new(props, key,
                            json_pack("{s:s,s:i}", "type", "string", "minLength", 1000));
    }
    s = json_pack("{s:s,s:o}", "type", "object", "properties", props);
    v = simschema_example(s, 1);
    size_t n = json_object_size(v);
    assert_true(n > 1000 && n < 3000);
    assert_int_equal(json_string_length(json_object_get(v, "p0")), 1000);
    char last[16];
    snprintf(last, sizeof last, "p%zu", n - 1);
    assert_true(json_is_null(json_object_get(v, last)));
    d = json_dumps(v, JSON_COMPACT);
    assert_true(strlen(d) < SIMSCHEMA_MAX_BYTES + 64 * 1024);
    free(d);
    json_decref(v);
    json_t *body = json_pack("{s:[{s:s,s:s}],s:[{s:s,s:{s:s,s:O}}]}", "messages", "role",
                             "user", "content", "call big", "tools", "type", "function",
                             "function", "name", "big", "parameters", s);
    char *b = json_dumps(body, JSON_COMPACT);
    sim_reply *r = reply_for(b, 0);
    assert_int_equal(simreply_calls(r), 1);
    assert_true(simreply_tokens(r) > 250000);
    simreply_free(r);
    free(b);
    json_decref(body);
    json_decref(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_render_chatml),
        cmocka_unit_test(test_options),
        cmocka_unit_test(test_rejects),
        cmocka_unit_test(test_role_bounded),
        cmocka_unit_test(test_context_error_shape),
        cmocka_unit_test(test_tokens_and_words),
        cmocka_unit_test(test_render_system_and_tools),
        cmocka_unit_test(test_render_tools_without_system),
        cmocka_unit_test(test_render_parts_with_image),
        cmocka_unit_test(test_render_tool_calls_and_result),
        cmocka_unit_test(test_param_errors),
        cmocka_unit_test(test_reply_tool_call),
        cmocka_unit_test(test_reply_parallel_calls),
        cmocka_unit_test(test_reply_tool_result),
        cmocka_unit_test(test_reply_json_and_reasoning),
        cmocka_unit_test(test_schema_generator),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
