/*
 * openai_test - the OpenAI-compatible wire helpers: request bodies, LM
 * Studio and llama.cpp streams fed chunk by chunk, whole responses, the
 * classification of HTTP and curl failures, and the model-info parsers, on
 * bodies shaped like the ones those servers document.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <jansson.h>

#include "scheduler/backend/openai.h"

/* ---- helpers ------------------------------------------------------------ */

static int feed(oa_resp *r, const char *chunk, oa_error *err)
{
    memset(err, 0, sizeof(*err));
    return oa_resp_feed_chunk(r, chunk, strlen(chunk), err);
}

static bool has(const char *hay, const char *needle)
{
    return strstr(hay, needle) != NULL;
}

/* Every byte printable ASCII: what reaches an agent must be plain text. */
static void assert_printable(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        assert_true(*p >= 0x20 && *p < 0x7f);
}

static oa_body_opts opts_none(void)
{
    oa_body_opts o = {.stream = false,
                      .cache_prompt = false,
                      .model = NULL,
                      .max_tokens = -1,
                      .id_slot = -1};
    return o;
}

static chat_req req_basic(char *system, chat_msg *msgs, size_t n)
{
    chat_req r;
    memset(&r, 0, sizeof(r));
    r.system = system;
    r.messages = msgs;
    r.n_messages = n;
    r.max_tokens = -1;
    r.priority = 5;
    r.parallel_tool_calls = -1;
    return r;
}

/* ---- request bodies ----------------------------------------------------- */

static void test_body_minimal(void **state)
{
    (void)state;
    chat_msg m[] = {{.role = "user", .content = "hi"}};
    chat_req req = req_basic("S", m, 1);
    oa_body_opts o = opts_none();
    char *body = oa_build_chat_body(&req, &o);
    assert_non_null(body);
    assert_string_equal(body, "{\"messages\":[{\"role\":\"system\",\"content\":\"S\"},"
                              "{\"role\":\"user\",\"content\":\"hi\"}]}");
    free(body);

    /* An empty system prompt is left out rather than sent as "". */
    req.system = "";
    body = oa_build_chat_body(&req, &o);
    assert_non_null(body);
    assert_string_equal(body, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}");
    free(body);
}

static void test_body_all_fields(void **state)
{
    (void)state;
    chat_msg m[] = {{.role = "user", .content = "q1"},
                    {.role = "assistant", .content = "a1"},
                    {.role = "user", .content = "q2"}};
    char *stop[] = {"\n\n", "END"};
    chat_req req = req_basic("sys", m, 3);
    req.model = "m1";
    req.max_tokens = 50;
    req.has_temperature = true;
    req.temperature = 0.7;
    req.has_top_p = true;
    req.top_p = 0.9;
    req.has_seed = true;
    req.seed = 42;
    req.stop = stop;
    req.n_stop = 2;
    oa_body_opts o = {.stream = true,
                      .cache_prompt = true,
                      .model = "default",
                      .max_tokens = 100,
                      .id_slot = 2};
    char *body = oa_build_chat_body(&req, &o);
    assert_non_null(body);
    assert_string_equal(
        body,
        "{\"model\":\"m1\",\"messages\":[{\"role\":\"system\",\"content\":\"sys\"},"
        "{\"role\":\"user\",\"content\":\"q1\"},{\"role\":\"assistant\",\"content\":"
        "\"a1\"},{\"role\":\"user\",\"content\":\"q2\"}],\"max_tokens\":50,"
        "\"temperature\":0.7,\"top_p\":0.9,\"seed\":42,\"stop\":[\"\\n\\n\",\"END\"],"
        "\"stream\":true,\"stream_options\":{\"include_usage\":true},"
        "\"cache_prompt\":true,\"id_slot\":2}");
    /* Same input, same bytes: the body is deterministic. */
    char *again = oa_build_chat_body(&req, &o);
    assert_string_equal(body, again);
    free(again);
    free(body);

    /* The options fill in what the request leaves out. */
    req.model = NULL;
    req.max_tokens = -1;
    req.has_temperature = req.has_top_p = req.has_seed = false;
    req.n_stop = 0;
    req.stop = NULL;
    o.id_slot = 0;
    o.cache_prompt = false;
    o.stream = false;
    body = oa_build_chat_body(&req, &o);
    assert_non_null(body);
    json_t *root = json_loads(body, 0, NULL);
    assert_non_null(root);
    assert_string_equal(json_string_value(json_object_get(root, "model")), "default");
    assert_int_equal(json_integer_value(json_object_get(root, "max_tokens")), 100);
    assert_int_equal(json_integer_value(json_object_get(root, "id_slot")), 0);
    assert_null(json_object_get(root, "stream"));
    assert_null(json_object_get(root, "stream_options"));
    assert_null(json_object_get(root, "cache_prompt"));
    assert_null(json_object_get(root, "temperature"));
    assert_null(json_object_get(root, "top_p"));
    assert_null(json_object_get(root, "seed"));
    assert_null(json_object_get(root, "stop"));
    json_decref(root);
    free(body);

    /* Neither gives a model or max_tokens: both omitted; id_slot -1 omitted. */
    o.model = NULL;
    o.max_tokens = -1;
    o.id_slot = -1;
    body = oa_build_chat_body(&req, &o);
    assert_non_null(body);
    assert_false(has(body, "\"model\""));
    assert_false(has(body, "max_tokens"));
    assert_false(has(body, "id_slot"));
    free(body);
}

/* The system prompt is the shared prefix: it must reach the server byte for
 * byte, quotes, newlines, backslashes, control bytes and UTF-8 included. */
static void test_body_system_byte_identical(void **state)
{
    (void)state;
    char system[] =
        "You are \"helpful\".\nRules:\r\n\t- use C:\\path\\\n"
        "- h\xc3\xa9llo \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x9a\x80\x01</script>";
    chat_msg m[] = {{.role = "user", .content = "caf\xc3\xa9 \"q\""}};
    chat_req req = req_basic(system, m, 1);
    oa_body_opts o = opts_none();
    o.stream = true;
    char *body = oa_build_chat_body(&req, &o);
    assert_non_null(body);
    /* UTF-8 goes out as raw bytes, not \u escapes. */
    assert_true(has(body, "h\xc3\xa9llo \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x9a\x80"));
    json_error_t jerr;
    json_t *root = json_loads(body, 0, &jerr);
    assert_non_null(root);
    json_t *msgs = json_object_get(root, "messages");
    assert_int_equal(json_array_size(msgs), 2);
    json_t *sys = json_array_get(msgs, 0);
    assert_string_equal(json_string_value(json_object_get(sys, "role")), "system");
    json_t *c = json_object_get(sys, "content");
    assert_int_equal(json_string_length(c), strlen(system));
    assert_memory_equal(json_string_value(c), system, strlen(system));
    json_t *u = json_array_get(msgs, 1);
    assert_string_equal(json_string_value(json_object_get(u, "content")),
                        "caf\xc3\xa9 \"q\"");
    assert_true(json_is_true(json_object_get(root, "stream")));
    assert_true(json_is_true(
        json_object_get(json_object_get(root, "stream_options"), "include_usage")));
    json_decref(root);
    free(body);
}

/* ---- streamed responses --------------------------------------------------- */

/* LM Studio 0.4: role chunk, content chunks, finish chunk, usage chunk. */
static void test_stream_lmstudio(void **state)
{
    (void)state;
    oa_resp r;
    oa_error e;
    oa_resp_init(&r, 1 << 20);
    assert_non_null(r.content);
    assert_string_equal(r.content, "");
    assert_int_equal(r.prompt_tokens, -1);
    assert_int_equal(r.cached_tokens, -1);

    assert_int_equal(
        feed(&r,
             "{\"id\":\"chatcmpl-8x1\",\"object\":\"chat.completion.chunk\",\"created\":"
             "1760000000,\"model\":\"qwen3-8b\",\"system_fingerprint\":\"qwen3-8b\","
             "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":"
             "\"\"},"
             "\"logprobs\":null,\"finish_reason\":null}]}",
             &e),
        LMSCHED_OK);
    assert_false(r.got_token); /* an empty role delta is not a token */
    assert_string_equal(r.model, "qwen3-8b");
    assert_null(r.finish_reason);

    assert_int_equal(
        feed(&r,
             "{\"id\":\"chatcmpl-8x1\",\"object\":\"chat.completion.chunk\",\"created\":"
             "1760000000,\"model\":\"qwen3-8b\",\"system_fingerprint\":\"qwen3-8b\","
             "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},"
             "\"logprobs\":null,\"finish_reason\":null}]}",
             &e),
        LMSCHED_OK);
    assert_true(r.got_token);
    assert_int_equal(
        feed(&r,
             "{\"id\":\"chatcmpl-8x1\",\"object\":\"chat.completion.chunk\",\"created\":"
             "1760000000,\"model\":\"qwen3-8b\",\"choices\":[{\"index\":0,\"delta\":"
             "{\"content\":\", w\\u00f6rld \\\"q\\\"\\n\"},\"logprobs\":null,"
             "\"finish_reason\":null}]}",
             &e),
        LMSCHED_OK);
    assert_int_equal(
        feed(&r,
             "{\"id\":\"chatcmpl-8x1\",\"object\":\"chat.completion.chunk\",\"created\":"
             "1760000000,\"model\":\"qwen3-8b\",\"choices\":[{\"index\":0,\"delta\":{},"
             "\"logprobs\":null,\"finish_reason\":\"stop\"}]}",
             &e),
        LMSCHED_OK);
    assert_string_equal(r.finish_reason, "stop");
    assert_false(r.done);
    assert_int_equal(
        feed(&r,
             "{\"id\":\"chatcmpl-8x1\",\"object\":\"chat.completion.chunk\",\"created\":"
             "1760000000,\"model\":\"qwen3-8b\",\"choices\":[],\"usage\":{\"prompt_"
             "tokens\":"
             "1200,\"completion_tokens\":4,\"total_tokens\":1204,\"prompt_tokens_"
             "details\":"
             "{\"cached_tokens\":1024}}}",
             &e),
        LMSCHED_OK);
    assert_int_equal(feed(&r, "[DONE]", &e), LMSCHED_OK);

    assert_true(r.done);
    assert_string_equal(r.content, "Hello, w\xc3\xb6rld \"q\"\n");
    assert_int_equal(r.content_len, strlen("Hello, w\xc3\xb6rld \"q\"\n"));
    assert_string_equal(r.finish_reason, "stop");
    assert_string_equal(r.model, "qwen3-8b");
    assert_int_equal(r.prompt_tokens, 1200);
    assert_int_equal(r.completion_tokens, 4);
    assert_int_equal(r.cached_tokens, 1024);
    assert_int_equal(r.timings_prompt_n, -1);
    assert_int_equal(r.timings_cache_n, -1);
    assert_int_equal(r.chunks, 5);
    oa_resp_fini(&r);
    assert_null(r.model);
    assert_null(r.finish_reason);
    assert_string_equal(r.content, "");
    oa_resp_fini(&r); /* twice is fine */
}

/* llama-server: reasoning first, then content, timings in the last choice
 * chunk and usage without prompt_tokens_details. */
static void test_stream_llamacpp(void **state)
{
    (void)state;
    oa_resp r;
    oa_error e;
    oa_resp_init(&r, 1 << 20);
    assert_int_equal(
        feed(&r,
             "{\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"role\":"
             "\"assistant\",\"content\":null}}],\"created\":1757141666,\"id\":"
             "\"chatcmpl-ecQULm0WqPrftUqjPZO1CFYeDjGZNbDu\",\"model\":\"gpt-3.5-turbo\","
             "\"system_fingerprint\":\"b6400-abcdef\",\"object\":\"chat.completion."
             "chunk\"}",
             &e),
        LMSCHED_OK);
    assert_false(r.got_token);
    assert_int_equal(
        feed(&r,
             "{\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":"
             "{\"reasoning_content\":\"Thinking\"}}],\"created\":1757141666,\"id\":"
             "\"chatcmpl-ecQ\",\"model\":\"gpt-3.5-turbo\",\"object\":"
             "\"chat.completion.chunk\"}",
             &e),
        LMSCHED_OK);
    /* A reasoning token shows the model started, but is not the answer. */
    assert_true(r.got_token);
    assert_int_equal(r.content_len, 0);
    assert_int_equal(
        feed(&r,
             "{\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"content\":"
             "\"Forty\"}}],\"created\":1757141666,\"id\":\"chatcmpl-ecQ\",\"model\":"
             "\"gpt-3.5-turbo\",\"object\":\"chat.completion.chunk\"}",
             &e),
        LMSCHED_OK);
    assert_int_equal(
        feed(&r,
             "{\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"content\":"
             "\"-two\"}}],\"created\":1757141666,\"id\":\"chatcmpl-ecQ\",\"model\":"
             "\"gpt-3.5-turbo\",\"object\":\"chat.completion.chunk\"}",
             &e),
        LMSCHED_OK);
    assert_int_equal(
        feed(&r,
             "{\"choices\":[{\"finish_reason\":\"length\",\"index\":0,\"delta\":{}}],"
             "\"created\":1757141666,\"id\":\"chatcmpl-ecQ\",\"model\":\"gpt-3.5-turbo\","
             "\"system_fingerprint\":\"b6400-abcdef\",\"object\":\"chat.completion."
             "chunk\","
             "\"timings\":{\"cache_n\":236,\"prompt_n\":12,\"prompt_ms\":30.958,"
             "\"prompt_per_token_ms\":2.58,\"prompt_per_second\":387.6,\"predicted_n\":3,"
             "\"predicted_ms\":61.064,\"predicted_per_token_ms\":20.35,"
             "\"predicted_per_second\":49.1}}",
             &e),
        LMSCHED_OK);
    /* Before usage arrives, cache_n stands in for cached_tokens. */
    assert_int_equal(r.cached_tokens, 236);
    assert_int_equal(
        feed(&r,
             "{\"choices\":[],\"created\":1757141666,\"id\":\"chatcmpl-ecQ\",\"model\":"
             "\"gpt-3.5-turbo\",\"object\":\"chat.completion.chunk\",\"usage\":"
             "{\"completion_tokens\":3,\"prompt_tokens\":248,\"total_tokens\":251}}",
             &e),
        LMSCHED_OK);
    assert_int_equal(feed(&r, "  [DONE]\n", &e), LMSCHED_OK);

    assert_true(r.done);
    assert_string_equal(r.content, "Forty-two");
    assert_string_equal(r.finish_reason, "length");
    assert_string_equal(r.model, "gpt-3.5-turbo");
    assert_int_equal(r.prompt_tokens, 248);
    assert_int_equal(r.completion_tokens, 3);
    assert_int_equal(r.cached_tokens, 236);
    assert_int_equal(r.timings_prompt_n, 12);
    assert_int_equal(r.timings_cache_n, 236);
    assert_int_equal(r.chunks, 6);
    oa_resp_fini(&r);
}

/* usage's cached_tokens wins over timings.cache_n, whichever comes first. */
static void test_cached_tokens_precedence(void **state)
{
    (void)state;
    oa_resp r;
    oa_error e;
    const char *timings = "{\"choices\":[],\"timings\":{\"cache_n\":10,\"prompt_n\":5}}";
    const char *usage =
        "{\"choices\":[],\"usage\":{\"prompt_tokens\":15,\"completion_tokens"
        "\":1,\"prompt_tokens_details\":{\"cached_tokens\":8}}}";
    oa_resp_init(&r, 100);
    assert_int_equal(feed(&r, timings, &e), LMSCHED_OK);
    assert_int_equal(feed(&r, usage, &e), LMSCHED_OK);
    assert_int_equal(r.cached_tokens, 8);
    assert_int_equal(r.timings_cache_n, 10);
    oa_resp_fini(&r);

    oa_resp_init(&r, 100);
    assert_int_equal(feed(&r, usage, &e), LMSCHED_OK);
    assert_int_equal(feed(&r, timings, &e), LMSCHED_OK);
    assert_int_equal(r.cached_tokens, 8);
    assert_int_equal(r.timings_prompt_n, 5);
    oa_resp_fini(&r);
}

/* A model that emits U+0000 ("\u0000", valid JSON) does not fail the
 * request: the character is dropped and the rest of the text arrives,
 * streamed or whole. */
static void test_nul_in_text(void **state)
{
    (void)state;
    oa_resp r;
    oa_error e;
    oa_resp_init(&r, 100);
    assert_int_equal(feed(&r, "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\\u0000b\"}}]}",
                          &e),
                     LMSCHED_OK);
    assert_int_equal(feed(&r, "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\\u0000c\"}}]}",
                          &e),
                     LMSCHED_OK);
    assert_int_equal(r.content_len, 3);
    assert_string_equal(r.content, "abc");
    oa_resp_fini(&r);
    const char *whole = "{\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
                        "\"content\":\"x\\u0000y\"},\"finish_reason\":\"stop\"}]}";
    oa_resp_init(&r, 100);
    memset(&e, 0, sizeof(e));
    assert_int_equal(oa_resp_parse_full(&r, whole, strlen(whole), &e), LMSCHED_OK);
    assert_string_equal(r.content, "xy");
    oa_resp_fini(&r);
    /* ... and so in a tool call's arguments */
    oa_resp_init(&r, 100);
    assert_int_equal(feed(&r,
                          "{\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,"
                          "\"id\":\"c1\",\"type\":\"function\",\"function\":{\"name\":\"f\","
                          "\"arguments\":\"{\\\"a\\\":\\u00001}\"}}]}}]}",
                          &e),
                     LMSCHED_OK);
    assert_int_equal(r.n_tool_calls, 1);
    assert_int_equal(r.tool_calls[0].arguments.len, 7);
    assert_memory_equal(r.tool_calls[0].arguments.data, "{\"a\":1}", 7);
    oa_resp_fini(&r);
}

static void test_stream_inline_errors(void **state)
{
    (void)state;
    oa_resp r;
    oa_error e;

    /* LM Studio reports a model crash inside the stream. */
    oa_resp_init(&r, 100);
    assert_int_equal(
        feed(&r, "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}", &e),
        LMSCHED_OK);
    assert_int_equal(feed(&r,
                          "{\"error\":{\"message\":\"Channel Error\",\"type\":"
                          "\"server_error\"}}",
                          &e),
                     LMSCHED_EBACKEND_CRASH);
    assert_int_equal(e.code, LMSCHED_EBACKEND_CRASH);
    assert_true(e.transient);
    assert_int_equal(e.http_status, 0);
    assert_true(has(e.message, "Channel Error"));
    assert_string_equal(r.content, "Hi"); /* what came before is kept */
    oa_resp_fini(&r);

    /* llama.cpp's context overflow carries its own code: not worth a retry. */
    oa_resp_init(&r, 100);
    assert_int_equal(
        feed(&r,
             "{\"error\":{\"code\":400,\"message\":\"the request exceeds the available "
             "context size. try increasing the context size or enable context shift\","
             "\"type\":\"exceed_context_size_error\",\"n_prompt_tokens\":14429,\"n_ctx\":"
             "8192}}",
             &e),
        LMSCHED_EBACKEND_HTTP);
    assert_false(e.transient);
    assert_true(has(e.message, "the request exceeds the available context size. try "
                               "increasing the context size or enable context shift"));
    assert_true(has(e.message, "14429"));
    assert_true(has(e.message, "8192"));
    oa_resp_fini(&r);

    /* A bare error string, no code: like a 500, so transient. */
    oa_resp_init(&r, 100);
    assert_int_equal(feed(&r, "{\"error\":\"slot unavailable\"}", &e),
                     LMSCHED_EBACKEND_HTTP);
    assert_true(e.transient);
    assert_true(has(e.message, "slot unavailable"));
    oa_resp_fini(&r);
}

static void test_stream_malformed(void **state)
{
    (void)state;
    oa_resp r;
    oa_error e;
    static const char *bad[] = {
        "{\"choices\":[",                              /* truncated JSON */
        "not json at all",                             /* not JSON */
        "[1,2,3]",                                     /* not an object */
        "\"text\"",                                    /* not an object */
        "{\"choices\":{}}",                            /* choices not an array */
        "{\"choices\":[7]}",                           /* choice not an object */
        "{\"choices\":[{\"delta\":\"x\"}]}",           /* delta not an object */
        "{\"choices\":[{\"delta\":{\"content\":5}}]}", /* content not a string */
        "", /* empty event */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        oa_resp_init(&r, 100);
        int rc = feed(&r, bad[i], &e);
        assert_int_equal(rc, LMSCHED_EBACKEND_STREAM);
        assert_int_equal(e.code, LMSCHED_EBACKEND_STREAM);
        assert_false(e.transient);
        assert_true(strncmp(e.message, "malformed chunk from backend: ",
                            strlen("malformed chunk from backend: ")) == 0);
        assert_true(strlen(e.message) > strlen("malformed chunk from backend: "));
        assert_int_equal(r.content_len, 0);
        oa_resp_fini(&r);
    }
    /* jansson's own words are passed on. */
    oa_resp_init(&r, 100);
    feed(&r, "{\"choices\":[", &e);
    assert_true(has(e.message, "end of file"));
    oa_resp_fini(&r);

    /* Unknown fields and a chunk with no choices are fine. */
    oa_resp_init(&r, 100);
    assert_int_equal(feed(&r, "{\"object\":\"chat.completion.chunk\",\"x\":[1]}", &e),
                     LMSCHED_OK);
    assert_int_equal(feed(&r, "{\"choices\":null}", &e), LMSCHED_OK);
    assert_int_equal(r.chunks, 2);
    oa_resp_fini(&r);
}

static void test_content_limit(void **state)
{
    (void)state;
    oa_resp r;
    oa_error e;
    const char *five = "{\"choices\":[{\"delta\":{\"content\":\"12345\"}}]}";
    oa_resp_init(&r, 10);
    assert_int_equal(feed(&r, five, &e), LMSCHED_OK);
    assert_int_equal(feed(&r, five, &e), LMSCHED_OK); /* exactly at the limit */
    assert_int_equal(r.content_len, 10);
    assert_int_equal(feed(&r, "{\"choices\":[{\"delta\":{\"content\":\"6\"}}]}", &e),
                     LMSCHED_ETOOLARGE);
    assert_int_equal(e.code, LMSCHED_ETOOLARGE);
    assert_false(e.transient);
    assert_true(has(e.message, "10"));
    assert_int_equal(r.content_len, 10);
    assert_string_equal(r.content, "1234512345");
    oa_resp_fini(&r);

    /* A long answer grows the buffer many times. */
    oa_resp_init(&r, 1 << 20);
    for (int i = 0; i < 2000; i++)
        assert_int_equal(feed(&r, five, &e), LMSCHED_OK);
    assert_int_equal(r.content_len, 10000);
    assert_int_equal(strlen(r.content), 10000);
    oa_resp_fini(&r);
}

/* Names from the backend are bounded to the wire format's name limit. */
static void test_long_model_name(void **state)
{
    (void)state;
    char chunk[1200];
    char name[1000];
    /* 333 x "é" (2 bytes): a cut at 256 bytes must not split a character. */
    name[0] = 'a';
    for (int i = 0; i < 333; i++)
        memcpy(name + 1 + 2 * i, "\xc3\xa9", 2);
    name[667] = '\0';
    snprintf(chunk, sizeof(chunk), "{\"model\":\"%s\",\"choices\":[]}", name);
    oa_resp r;
    oa_error e;
    oa_resp_init(&r, 10);
    assert_int_equal(feed(&r, chunk, &e), LMSCHED_OK);
    assert_int_equal(strlen(r.model), 255);
    assert_memory_equal(r.model, name, 255);
    oa_resp_fini(&r);
}

static void test_parse_full(void **state)
{
    (void)state;
    const char *body =
        "{\"choices\":[{\"finish_reason\":\"stop\",\"index\":0,\"message\":{\"role\":"
        "\"assistant\",\"content\":\"The answer is 4.\",\"reasoning_content\":\"2+2\"}}],"
        "\"created\":1757141666,\"model\":\"llama-3.1-8b\",\"system_fingerprint\":"
        "\"b6400\","
        "\"object\":\"chat.completion\",\"usage\":{\"completion_tokens\":6,\"prompt_"
        "tokens\":"
        "44,\"total_tokens\":50,\"prompt_tokens_details\":{\"cached_tokens\":32}},\"id\":"
        "\"chatcmpl-1\",\"timings\":{\"cache_n\":32,\"prompt_n\":12,\"prompt_ms\":30.9,"
        "\"predicted_n\":6,\"predicted_ms\":100.0}}";
    oa_resp r;
    oa_error e;
    memset(&e, 0, sizeof(e));
    oa_resp_init(&r, 1000);
    assert_int_equal(oa_resp_parse_full(&r, body, strlen(body), &e), LMSCHED_OK);
    assert_true(r.done);
    assert_true(r.got_token);
    assert_string_equal(r.content, "The answer is 4.");
    assert_string_equal(r.finish_reason, "stop");
    assert_string_equal(r.model, "llama-3.1-8b");
    assert_int_equal(r.prompt_tokens, 44);
    assert_int_equal(r.completion_tokens, 6);
    assert_int_equal(r.cached_tokens, 32);
    assert_int_equal(r.timings_prompt_n, 12);
    assert_int_equal(r.timings_cache_n, 32);
    assert_int_equal(r.chunks, 1);
    assert_int_equal(e.code, LMSCHED_OK);
    oa_resp_fini(&r);

    /* Over the content limit. */
    oa_resp_init(&r, 5);
    assert_int_equal(oa_resp_parse_full(&r, body, strlen(body), &e), LMSCHED_ETOOLARGE);
    assert_false(r.done);
    oa_resp_fini(&r);

    /* Not JSON. */
    oa_resp_init(&r, 1000);
    const char *bad = "<html>oops</html>";
    assert_int_equal(oa_resp_parse_full(&r, bad, strlen(bad), &e),
                     LMSCHED_EBACKEND_STREAM);
    assert_true(has(e.message, "malformed response from backend: "));
    assert_false(r.done);
    oa_resp_fini(&r);

    /* An error object with status 200. */
    oa_resp_init(&r, 1000);
    const char *err =
        "{\"error\":\"The model has crashed without additional information. "
        "(Exit code: null)\"}";
    assert_int_equal(oa_resp_parse_full(&r, err, strlen(err), &e),
                     LMSCHED_EBACKEND_CRASH);
    assert_true(e.transient);
    oa_resp_fini(&r);

    /* Only the first len bytes are read. */
    oa_resp_init(&r, 1000);
    const char *two = "{\"choices\":[]}{\"junk\"";
    assert_int_equal(oa_resp_parse_full(&r, two, 14, &e), LMSCHED_OK);
    oa_resp_fini(&r);
}

/* ---- HTTP and curl classification ----------------------------------------- */

typedef struct http_case {
    long status;
    const char *body;
    int code;
    bool transient;
    const char *contains; /* must appear in the message, or NULL */
} http_case;

static void test_classify_http_table(void **state)
{
    (void)state;
    static const http_case cases[] = {
        {500, "{\"error\":{\"message\":\"Channel Error\",\"type\":\"server_error\"}}",
         LMSCHED_EBACKEND_CRASH, true, "backend HTTP 500: Channel Error"},
        {500, "The model has crashed without additional information. (Exit code: null)",
         LMSCHED_EBACKEND_CRASH, true, "backend HTTP 500: The model has crashed"},
        {500, "{\"error\":\"The model has crashed without additional information.\"}",
         LMSCHED_EBACKEND_CRASH, true, "The model has crashed"},
        {503,
         "{\"error\":{\"code\":503,\"message\":\"Loading model\",\"type\":"
         "\"unavailable_error\"}}",
         LMSCHED_EBACKEND_HTTP, true, "backend HTTP 503: Loading model"},
        {400,
         "{\"error\":{\"code\":400,\"message\":\"the request exceeds the available "
         "context size. try increasing the context size or enable context shift\","
         "\"type\":\"exceed_context_size_error\",\"n_prompt_tokens\":14429,\"n_ctx\":"
         "8192}}",
         LMSCHED_EBACKEND_HTTP, false,
         "backend HTTP 400: the request exceeds the available context size. try "
         "increasing "
         "the context size or enable context shift"},
        {401,
         "{\"error\":{\"message\":\"Invalid API token\",\"type\":"
         "\"authentication_error\"}}",
         LMSCHED_EAUTH, false, "Invalid API token"},
        {403, "", LMSCHED_EAUTH, false, "backend HTTP 403"},
        {429, "{\"message\":\"Too many requests\"}", LMSCHED_EBACKEND_HTTP, true,
         "backend HTTP 429: Too many requests"},
        {502, "", LMSCHED_EBACKEND_HTTP, true, "backend HTTP 502: (empty body)"},
        {504, "Gateway Timeout", LMSCHED_EBACKEND_HTTP, true, "Gateway Timeout"},
        {404, "{\"error\":\"Unexpected endpoint or method. (POST /v1/chat/completion)\"}",
         LMSCHED_EBACKEND_HTTP, false, "Unexpected endpoint or method."},
        {422, "{\"detail\":\"nothing we know\"}", LMSCHED_EBACKEND_HTTP, false,
         "nothing we know"},
        {418, "short and stout", LMSCHED_EBACKEND_HTTP, false, "backend HTTP 418: short"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        oa_error e;
        memset(&e, 0x5a, sizeof(e));
        oa_classify_http(cases[i].status, cases[i].body, strlen(cases[i].body), &e);
        if (e.code != cases[i].code || e.transient != cases[i].transient ||
            (cases[i].contains && !has(e.message, cases[i].contains)))
            print_error("case %zu: code %d transient %d message '%s'\n", i, e.code,
                        e.transient, e.message);
        assert_int_equal(e.code, cases[i].code);
        assert_int_equal(e.transient, cases[i].transient);
        assert_int_equal(e.http_status, cases[i].status);
        assert_true(has(e.message, cases[i].contains));
        assert_printable(e.message);
    }
}

static void test_classify_http_html(void **state)
{
    (void)state;
    const char *page =
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<title>404 Not Found</title>\n<style>\nbody { font-family: sans-serif; }\n"
        "</style>\n<script>var x = 1 < 2;</script>\n</head>\n<body>\n"
        "<h1>Not Found</h1>\n<p>The requested URL &quot;/v1/chat/completions&quot; was "
        "not found on this server.</p>\n</body>\n</html>\n";
    oa_error e;
    oa_classify_http(404, page, strlen(page), &e);
    assert_int_equal(e.code, LMSCHED_EBACKEND_HTTP);
    assert_false(e.transient);
    assert_string_equal(e.message,
                        "backend HTTP 404: 404 Not Found Not Found The requested "
                        "URL \"/v1/chat/completions\" was not found on this "
                        "server.");
}

static void test_classify_http_sanitize(void **state)
{
    (void)state;
    oa_error e;

    /* A huge body is cut to a short excerpt. */
    char *big = malloc(10000);
    assert_non_null(big);
    memset(big, 'a', 10000);
    oa_classify_http(500, big, 10000, &e);
    assert_true(strlen(e.message) < 260);
    assert_true(has(e.message, "..."));
    free(big);

    /* Control bytes, newlines and UTF-8 become plain ASCII. */
    const char odd[] = "bad\x01\x02 thing\r\n\n\thappened \xe2\x9c\x93 \xff";
    oa_classify_http(500, odd, sizeof(odd) - 1, &e);
    assert_printable(e.message);
    assert_string_equal(e.message, "backend HTTP 500: bad thing happened ? ?");

    /* A body that echoes the token never leaks it. */
    const char echo[] =
        "{\"error\":\"refused header Authorization: Bearer sk-lm-SECRET123 "
        "for this server\"}";
    oa_classify_http(401, echo, sizeof(echo) - 1, &e);
    assert_int_equal(e.code, LMSCHED_EAUTH);
    assert_false(has(e.message, "SECRET123"));
    assert_true(has(e.message, "Bearer [redacted] for this server"));
    const char echo2[] = "<p>bearer abc.def.ghi</p>";
    oa_classify_http(401, echo2, sizeof(echo2) - 1, &e);
    assert_false(has(e.message, "abc.def.ghi"));

    /* NUL bytes inside the body do not end it early. */
    const char nul[] = "first\0second";
    oa_classify_http(500, nul, sizeof(nul) - 1, &e);
    assert_string_equal(e.message, "backend HTTP 500: first second");

    /* No body at all. */
    oa_classify_http(500, NULL, 0, &e);
    assert_int_equal(e.code, LMSCHED_EBACKEND_HTTP);
    assert_true(e.transient);
    assert_true(has(e.message, "(empty body)"));

    /* "Channel Error" anywhere, in any case, means a crash. */
    const char deep[] = "{\"error\":{\"message\":\"failed: channel error in worker\"}}";
    oa_classify_http(500, deep, sizeof(deep) - 1, &e);
    assert_int_equal(e.code, LMSCHED_EBACKEND_CRASH);
}

typedef struct curl_case {
    int curlcode;
    int code;
    bool transient;
} curl_case;

static void test_classify_curl_table(void **state)
{
    (void)state;
    static const curl_case cases[] = {
        {CURLE_COULDNT_CONNECT, LMSCHED_EBACKEND_DOWN, true},
        {CURLE_COULDNT_RESOLVE_HOST, LMSCHED_EBACKEND_DOWN, true},
        {CURLE_OPERATION_TIMEDOUT, LMSCHED_EBACKEND_TIMEOUT, false},
        {CURLE_GOT_NOTHING, LMSCHED_EBACKEND_STREAM, true},
        {CURLE_PARTIAL_FILE, LMSCHED_EBACKEND_STREAM, true},
        {CURLE_RECV_ERROR, LMSCHED_EBACKEND_STREAM, true},
        {CURLE_SEND_ERROR, LMSCHED_EBACKEND_STREAM, true},
        {CURLE_WRITE_ERROR, LMSCHED_EBACKEND_STREAM, false},
        {CURLE_SSL_CONNECT_ERROR, LMSCHED_EBACKEND_STREAM, false},
        {CURLE_URL_MALFORMAT, LMSCHED_EBACKEND_STREAM, false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        oa_error e;
        memset(&e, 0x5a, sizeof(e));
        oa_classify_curl(cases[i].curlcode, "", &e);
        assert_int_equal(e.code, cases[i].code);
        assert_int_equal(e.transient, cases[i].transient);
        assert_int_equal(e.http_status, 0);
        /* curl's own name for the code is in the message. */
        assert_true(has(e.message, curl_easy_strerror((CURLcode)cases[i].curlcode)));
        assert_printable(e.message);
    }

    oa_error e;
    oa_classify_curl(
        CURLE_COULDNT_CONNECT,
        "Failed to connect to 127.0.0.1 port 1234 after 0 ms: Connection refused", &e);
    assert_true(has(e.message, "Failed to connect to 127.0.0.1 port 1234"));
    assert_true(has(e.message, "cannot reach the LLM server"));
    oa_classify_curl(CURLE_OPERATION_TIMEDOUT, NULL, &e);
    assert_int_equal(e.code, LMSCHED_EBACKEND_TIMEOUT);
    assert_true(has(e.message, "did not answer in time"));
}

/* ---- model info ------------------------------------------------------------ */

/* The example of LM Studio's docs (1_developer/2_rest/list.md), plus the
 * "parallel" key LM Studio 0.4 adds to a loaded instance's config. */
#define LMS_MODELS(INSTANCES)                                                            \
    "{\"models\":[{\"type\":\"embedding\",\"publisher\":\"gaianet\",\"key\":"            \
    "\"text-embedding-nomic-embed-text-v1.5-embedding\",\"display_name\":\"Nomic Embed " \
    "Text v1.5\",\"quantization\":{\"name\":\"F16\",\"bits_per_weight\":16},"            \
    "\"size_bytes\":274290560,\"params_string\":null,\"loaded_instances\":[{\"id\":"     \
    "\"text-embedding-nomic-embed-text-v1.5-embedding\",\"config\":{\"context_length\":" \
    "2048}}],\"max_context_length\":2048,\"format\":\"gguf\"},"                          \
    "{\"type\":\"llm\",\"publisher\":\"lmstudio-community\",\"key\":"                    \
    "\"gemma-3-270m-it-qat\",\"display_name\":\"Gemma 3 270m Instruct Qat\","            \
    "\"architecture\":\"gemma3\",\"quantization\":{\"name\":\"Q4_0\",\"bits_per_"        \
    "weight\":4},"                                                                       \
    "\"size_bytes\":241410208,\"params_string\":\"270M\",\"loaded_instances\":"          \
    "[" INSTANCES "],\"max_context_length\":32768,\"format\":\"gguf\",\"capabilities\":" \
    "{\"vision\":false,"                                                                 \
    "\"trained_for_tool_use\":false},\"description\":null}]}"
#define LMS_INSTANCE(PARALLEL)                                                           \
    "{\"id\":\"gemma-3-270m-it-qat\",\"config\":{\"context_length\":4096" PARALLEL "}}"

static void test_lmstudio_models(void **state)
{
    (void)state;
    const char *with =
        LMS_MODELS(LMS_INSTANCE(",\"parallel\":4,\"eval_batch_size\":512"));
    const char *without = LMS_MODELS(LMS_INSTANCE(""));
    const char *none = LMS_MODELS("");
    oa_model_info mi;

    oa_model_info_init(&mi);
    assert_int_equal(oa_parse_lmstudio_models(with, strlen(with), &mi), LMSCHED_OK);
    assert_string_equal(mi.model, "gemma-3-270m-it-qat");
    assert_int_equal(mi.size_bytes, 241410208);
    assert_int_equal(mi.context_length, 4096);
    assert_int_equal(mi.parallel, 4);
    oa_model_info_fini(&mi);
    assert_null(mi.model);
    assert_int_equal(mi.parallel, -1);

    oa_model_info_init(&mi);
    assert_int_equal(oa_parse_lmstudio_models(without, strlen(without), &mi), LMSCHED_OK);
    assert_string_equal(mi.model, "gemma-3-270m-it-qat");
    assert_int_equal(mi.context_length, 4096);
    assert_int_equal(mi.parallel, -1);
    oa_model_info_fini(&mi);

    /* Only the embedding model is loaded: no LLM to schedule for. */
    oa_model_info_init(&mi);
    assert_int_equal(oa_parse_lmstudio_models(none, strlen(none), &mi), LMSCHED_EINVAL);
    assert_null(mi.model);
    assert_int_equal(mi.context_length, -1);
    oa_model_info_fini(&mi);

    const char *empty = "{\"models\":[]}";
    oa_model_info_init(&mi);
    assert_int_equal(oa_parse_lmstudio_models(empty, strlen(empty), &mi), LMSCHED_EINVAL);
    oa_model_info_fini(&mi);
}

static void test_llamacpp_props(void **state)
{
    (void)state;
    /* Cut down from the /props example of llama.cpp's server README. */
    const char *props =
        "{\"default_generation_settings\":{\"id\":0,\"id_task\":-1,\"n_ctx\":1024,"
        "\"speculative\":false,\"is_processing\":false,\"params\":{\"n_predict\":-1,"
        "\"seed\":4294967295,\"temperature\":0.800000011920929,\"top_k\":40,\"stop\":[],"
        "\"max_tokens\":-1,\"samplers\":[\"dry\",\"top_k\"]},\"prompt\":\"\","
        "\"next_token\":{\"has_next_token\":true,\"n_remain\":-1}},\"total_slots\":1,"
        "\"model_path\":\"../models/Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf\","
        "\"chat_template\":\"...\",\"chat_template_caps\":{},\"modalities\":{\"vision\":"
        "false},\"build_info\":\"b6400-abcdef\",\"is_sleeping\":false}";
    oa_model_info mi;
    oa_model_info_init(&mi);
    assert_int_equal(oa_parse_llamacpp_props(props, strlen(props), &mi), LMSCHED_OK);
    assert_string_equal(mi.model, "Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf");
    assert_int_equal(mi.parallel, 1);
    assert_int_equal(mi.context_length, 1024);
    assert_int_equal(mi.size_bytes, -1);
    oa_model_info_fini(&mi);

    const char *alias =
        "{\"default_generation_settings\":{\"n_ctx\":8192},\"total_slots\":4,"
        "\"model_alias\":\"qwen\",\"model_path\":\"C:\\\\m\\\\q.gguf\"}";
    oa_model_info_init(&mi);
    assert_int_equal(oa_parse_llamacpp_props(alias, strlen(alias), &mi), LMSCHED_OK);
    assert_string_equal(mi.model, "qwen");
    assert_int_equal(mi.parallel, 4);
    assert_int_equal(mi.context_length, 8192);
    oa_model_info_fini(&mi);

    const char *winpath = "{\"model_path\":\"C:\\\\models\\\\q.gguf\"}";
    oa_model_info_init(&mi);
    assert_int_equal(oa_parse_llamacpp_props(winpath, strlen(winpath), &mi), LMSCHED_OK);
    assert_string_equal(mi.model, "q.gguf");
    assert_int_equal(mi.parallel, -1);
    assert_int_equal(mi.context_length, -1);
    oa_model_info_fini(&mi);
}

static void test_openai_models(void **state)
{
    (void)state;
    /* llama.cpp's /v1/models example. */
    const char *llama =
        "{\"object\":\"list\",\"data\":[{\"id\":\"../models/"
        "Meta-Llama-3.1-8B-Instruct-Q4_K_M."
        "gguf\",\"object\":\"model\",\"created\":1735142223,\"owned_by\":\"llamacpp\","
        "\"meta\":{\"vocab_type\":2,\"n_vocab\":128256,\"n_ctx_train\":131072,\"n_embd\":"
        "4096,"
        "\"n_params\":8030261312,\"size\":4912898304}}]}";
    /* LM Studio's. */
    const char *lms = "{\"data\":[{\"id\":\"qwen3-8b\",\"object\":\"model\",\"owned_by\":"
                      "\"organization_owner\"},{\"id\":\"other\"}],\"object\":\"list\"}";
    oa_model_info mi;
    oa_model_info_init(&mi);
    assert_int_equal(oa_parse_openai_models(llama, strlen(llama), &mi), LMSCHED_OK);
    assert_string_equal(mi.model, "../models/Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf");
    assert_int_equal(mi.size_bytes, 4912898304LL);
    assert_int_equal(mi.context_length, -1);
    assert_int_equal(mi.parallel, -1);
    oa_model_info_fini(&mi);

    oa_model_info_init(&mi);
    assert_int_equal(oa_parse_openai_models(lms, strlen(lms), &mi), LMSCHED_OK);
    assert_string_equal(mi.model, "qwen3-8b");
    assert_int_equal(mi.size_bytes, -1);
    oa_model_info_fini(&mi);

    const char *empty = "{\"object\":\"list\",\"data\":[]}";
    oa_model_info_init(&mi);
    assert_int_equal(oa_parse_openai_models(empty, strlen(empty), &mi), LMSCHED_EINVAL);
    assert_null(mi.model);
    oa_model_info_fini(&mi);
}

static void test_model_info_garbage(void **state)
{
    (void)state;
    static const char *garbage[] = {
        "",     "not json", "<html><body>404</body></html>", "[]", "42", "{\"models\":5",
        "null",
    };
    for (size_t i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++) {
        oa_model_info mi;
        size_t n = strlen(garbage[i]);
        oa_model_info_init(&mi);
        assert_int_equal(oa_parse_lmstudio_models(garbage[i], n, &mi),
                         LMSCHED_EBACKEND_STREAM);
        assert_int_equal(oa_parse_llamacpp_props(garbage[i], n, &mi),
                         LMSCHED_EBACKEND_STREAM);
        assert_int_equal(oa_parse_openai_models(garbage[i], n, &mi),
                         LMSCHED_EBACKEND_STREAM);
        assert_null(mi.model);
        assert_int_equal(mi.size_bytes, -1);
        assert_int_equal(mi.context_length, -1);
        assert_int_equal(mi.parallel, -1);
        oa_model_info_fini(&mi);
    }
    /* JSON of the wrong shape. */
    oa_model_info mi;
    oa_model_info_init(&mi);
    const char *wrong = "{\"models\":{\"type\":\"llm\"}}";
    assert_int_equal(oa_parse_lmstudio_models(wrong, strlen(wrong), &mi),
                     LMSCHED_EBACKEND_STREAM);
    const char *wrong2 = "{\"data\":\"qwen\"}";
    assert_int_equal(oa_parse_openai_models(wrong2, strlen(wrong2), &mi),
                     LMSCHED_EBACKEND_STREAM);
    /* Negative or fractional numbers are not believed. */
    const char *neg =
        "{\"total_slots\":-3,\"default_generation_settings\":{\"n_ctx\":1.5}}";
    assert_int_equal(oa_parse_llamacpp_props(neg, strlen(neg), &mi), LMSCHED_OK);
    assert_int_equal(mi.parallel, -1);
    assert_int_equal(mi.context_length, -1);
    oa_model_info_fini(&mi);
    oa_model_info_fini(NULL);
}

/* Every prefix of a valid chunk is either that chunk or a malformed one,
 * and every prefix of an error page classifies to plain text. */
static void test_truncations(void **state)
{
    (void)state;
    const char *chunk = "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"h\\u00e9\"},"
                        "\"finish_reason\":null}],\"usage\":{\"prompt_tokens\":3}}";
    size_t n = strlen(chunk);
    for (size_t k = 0; k <= n; k++) {
        oa_resp r;
        oa_error e;
        memset(&e, 0, sizeof(e));
        oa_resp_init(&r, 100);
        int rc = oa_resp_feed_chunk(&r, chunk, k, &e);
        if (k == n) {
            assert_int_equal(rc, LMSCHED_OK);
            assert_string_equal(r.content, "h\xc3\xa9");
        } else {
            assert_int_equal(rc, LMSCHED_EBACKEND_STREAM);
            assert_int_equal(r.content_len, 0);
        }
        oa_resp_fini(&r);
    }
    const char *page = "<html><head><style>p{}</style></head><body>Bearer tok &amp; "
                       "caf\xc3\xa9<p>Channel Error</p></body></html>";
    n = strlen(page);
    for (size_t k = 0; k <= n; k++) {
        oa_error e;
        oa_classify_http(500, page, k, &e);
        assert_true(e.code == LMSCHED_EBACKEND_HTTP || e.code == LMSCHED_EBACKEND_CRASH);
        assert_true(has(e.message, "backend HTTP 500: "));
        assert_false(has(e.message, "tok"));
        assert_printable(e.message);
    }
}

/* llama.cpp's exact count: the template's prompt, the tokenize body (BOS
 * and special tokens as the chat handler parses them), the number of
 * tokens; anything else is not that answer. */
static void test_token_count(void **state)
{
    (void)state;
    char *prompt = NULL;
    const char *tpl = "{\"prompt\":\"<|im_start|>user\\nhi \\u00e9<|im_end|>\\n\"}";
    assert_int_equal(oa_parse_template(tpl, strlen(tpl), &prompt), LMSCHED_OK);
    assert_string_equal(prompt, "<|im_start|>user\nhi \xc3\xa9<|im_end|>\n");
    char *body = oa_build_tokenize_body(prompt);
    assert_non_null(body);
    json_t *o = json_loads(body, 0, NULL);
    assert_non_null(o);
    assert_string_equal(json_string_value(json_object_get(o, "content")), prompt);
    assert_true(json_is_true(json_object_get(o, "add_special")));
    assert_true(json_is_true(json_object_get(o, "parse_special")));
    json_decref(o);
    free(body);
    free(prompt);
    static const char *const not_template[] = {"", "[]", "{}", "{\"prompt\":3}", "<html>"};
    for (size_t i = 0; i < sizeof(not_template) / sizeof(not_template[0]); i++) {
        prompt = (char *)1;
        assert_int_equal(oa_parse_template(not_template[i], strlen(not_template[i]), &prompt),
                         LMSCHED_EBACKEND_STREAM);
        assert_null(prompt);
    }
    int64_t n = -1;
    const char *tok = "{\"tokens\":[1,3,269,42]}";
    assert_int_equal(oa_parse_token_count(tok, strlen(tok), &n), LMSCHED_OK);
    assert_int_equal(n, 4);
    const char *with_pieces = "{\"tokens\":[{\"id\":1,\"piece\":\"<s>\"},{\"id\":2,\"piece\":\"a\"}]}";
    assert_int_equal(oa_parse_token_count(with_pieces, strlen(with_pieces), &n), LMSCHED_OK);
    assert_int_equal(n, 2);
    static const char *const not_tokens[] = {"", "{}", "{\"tokens\":3}", "[1,2]"};
    for (size_t i = 0; i < sizeof(not_tokens) / sizeof(not_tokens[0]); i++)
        assert_int_equal(oa_parse_token_count(not_tokens[i], strlen(not_tokens[i]), &n),
                         LMSCHED_EBACKEND_STREAM);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_body_minimal),
        cmocka_unit_test(test_body_all_fields),
        cmocka_unit_test(test_body_system_byte_identical),
        cmocka_unit_test(test_stream_lmstudio),
        cmocka_unit_test(test_stream_llamacpp),
        cmocka_unit_test(test_cached_tokens_precedence),
        cmocka_unit_test(test_nul_in_text),
        cmocka_unit_test(test_stream_inline_errors),
        cmocka_unit_test(test_stream_malformed),
        cmocka_unit_test(test_content_limit),
        cmocka_unit_test(test_long_model_name),
        cmocka_unit_test(test_parse_full),
        cmocka_unit_test(test_classify_http_table),
        cmocka_unit_test(test_classify_http_html),
        cmocka_unit_test(test_classify_http_sanitize),
        cmocka_unit_test(test_classify_curl_table),
        cmocka_unit_test(test_lmstudio_models),
        cmocka_unit_test(test_llamacpp_props),
        cmocka_unit_test(test_openai_models),
        cmocka_unit_test(test_model_info_garbage),
        cmocka_unit_test(test_truncations),
        cmocka_unit_test(test_token_count),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
