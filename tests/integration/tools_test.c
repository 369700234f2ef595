/*
 * tools_test - tools, structured output and extra body fields through the
 * real daemon to lmsim and back, on the wire (docs/protocol.md): a tool
 * round trip (a call back, the tool's result sent, the final answer), the
 * same call streamed as fragments, a json_schema answer that parses and
 * fits, logprobs asked for through "extra", and a malformed tool definition
 * answered with the backend's own words naming the field.
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

#include "kit/check.h"
#include "kit/env.h"
#include "kit/wire.h"
#include "proto/proto.h"

#define XCHG_TIMEOUT_MS 20000

static const char tools_weather[] =
    "[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
    "\"description\":\"Current weather for a city\",\"parameters\":{\"type\":\"object\","
    "\"properties\":{\"city\":{\"type\":\"string\"},\"days\":{\"type\":\"integer\","
    "\"minimum\":1}},\"required\":[\"city\"]}}}]";

static const char tools_sys[] = "You are a tool-using assistant.";

static void tools_open(kit_wire *w, kit_env *e)
{
    const char *sim[] = {"--time-scale", "5", NULL};
    kit_env_start(e, sim, NULL);
    assert_int_equal(kit_wire_open(w, e->url, XCHG_TIMEOUT_MS), 0);
}

/* A chat of the given messages (views, never finied) with the tools. */
static void tools_chat(lms_msg *m, lms_chat_msg *msgs, size_t n, bool stream)
{
    lms_msg_init(m, LMS_KIND_CHAT);
    m->u.chat.system = (char *)tools_sys;
    m->u.chat.messages = msgs;
    m->u.chat.n_messages = n;
    m->u.chat.max_tokens = 32;
    m->u.chat.has_seed = true;
    m->u.chat.seed = 11;
    m->u.chat.tools_json = (char *)tools_weather;
    m->u.chat.stream = stream;
}

static void tools_xchg(kit_wire *w, lms_msg *m, lms_msg *r)
{
    int rc = kit_wire_xchg(w, m, r, NULL);
    if (rc != 0)
        fail_msg("no reply: %d", rc);
}

/* Fails unless r is a chat_reply, printing the error otherwise. */
static void tools_want_reply(const lms_msg *r)
{
    if (r->kind == LMS_KIND_ERROR)
        fail_msg("error reply %u: %s", r->u.error.code, r->u.error.message);
    assert_int_equal(r->kind, LMS_KIND_CHAT_REPLY);
}

/* The call's arguments parse as an object whose "city" is a string and
 * whose "days", if any, is an integer >= 1 (the tool's schema). */
static void tools_check_args(const char *args)
{
    json_error_t jerr;
    json_t *a = json_loads(args, 0, &jerr);
    if (a == NULL)
        fail_msg("arguments are not JSON (%s): %s", jerr.text, args);
    assert_true(json_is_object(a));
    assert_true(json_is_string(json_object_get(a, "city")));
    json_t *days = json_object_get(a, "days");
    if (days != NULL) {
        assert_true(json_is_integer(days));
        assert_true(json_integer_value(days) >= 1);
    }
    json_decref(a);
}

/* The whole round trip an agent makes: the question, the model's call, the
 * tool's result sent back with the call's id, the final answer, which
 * lmsim makes quote the result. */
static void test_tool_round_trip(void **state)
{
    kit_env *e = *state;
    kit_wire w;
    tools_open(&w, e);

    lms_chat_msg msgs[3];
    memset(msgs, 0, sizeof(msgs));
    msgs[0].role = (char *)"user";
    msgs[0].content = (char *)"Please call get_weather for Paris.";
    lms_msg m, r;
    tools_chat(&m, msgs, 1, false);
    tools_xchg(&w, &m, &r);
    tools_want_reply(&r);
    const lms_chat_reply *cr = &r.u.chat_reply;
    assert_string_equal(cr->finish_reason, "tool_calls");
    assert_int_equal(cr->n_tool_calls, 1);
    assert_string_equal(cr->tool_calls[0].name, "get_weather");
    assert_string_equal(cr->tool_calls[0].type, "function");
    assert_non_null(cr->tool_calls[0].id);
    tools_check_args(cr->tool_calls[0].arguments);
    printf("call %s: %s(%s)\n", cr->tool_calls[0].id, cr->tool_calls[0].name,
           cr->tool_calls[0].arguments);

    /* The assistant's turn as OpenAI clients send it back. */
    json_t *calls = json_pack("[{s:s,s:s,s:{s:s,s:s}}]", "id", cr->tool_calls[0].id, "type",
                              "function", "function", "name", cr->tool_calls[0].name,
                              "arguments", cr->tool_calls[0].arguments);
    char *calls_json = json_dumps(calls, JSON_COMPACT);
    json_decref(calls);
    char call_id[128];
    snprintf(call_id, sizeof(call_id), "%s", cr->tool_calls[0].id);
    int64_t first_prompt = cr->usage.prompt_tokens;
    lms_msg_fini(&r);

    msgs[1].role = (char *)"assistant";
    msgs[1].tool_calls_json = calls_json;
    msgs[2].role = (char *)"tool";
    msgs[2].tool_call_id = call_id;
    msgs[2].name = (char *)"get_weather";
    msgs[2].content = (char *)"{\"temp_c\":18,\"sky\":\"clear\"}";
    tools_chat(&m, msgs, 3, false);
    tools_xchg(&w, &m, &r);
    tools_want_reply(&r);
    printf("answer: %s\n", r.u.chat_reply.content);
    assert_int_equal(r.u.chat_reply.n_tool_calls, 0);
    assert_true(strncmp(r.u.chat_reply.content, "Tool result: {\"temp_c\":18", 25) == 0);
    /* The call and the result are part of the prompt now. */
    assert_true(r.u.chat_reply.usage.prompt_tokens > first_prompt);
    lms_msg_fini(&r);
    free(calls_json);
    kit_wire_close(&w);
}

/* The same call streamed: a head delta with the id and name, then pieces
 * of the arguments that concatenate to the non-streamed arguments; the
 * final reply carries the assembled call. */
static void test_tool_call_streamed(void **state)
{
    kit_env *e = *state;
    kit_wire w;
    tools_open(&w, e);
    lms_chat_msg msg = {.role = (char *)"user",
                        .content = (char *)"Please call get_weather for Oslo."};
    lms_msg m, r;
    tools_chat(&m, &msg, 1, false);
    tools_xchg(&w, &m, &r);
    tools_want_reply(&r);
    assert_int_equal(r.u.chat_reply.n_tool_calls, 1);
    char whole[1024];
    snprintf(whole, sizeof(whole), "%s", r.u.chat_reply.tool_calls[0].arguments);
    lms_msg_fini(&r);

    tools_chat(&m, &msg, 1, true);
    uint64_t sid;
    assert_int_equal(kit_wire_xchg(&w, &m, &r, &sid), 0);
    char args[1024] = "", id[128] = "", name[128] = "";
    unsigned pieces = 0, exchanges = 1;
    for (;;) {
        const lms_delta *d =
            r.kind == LMS_KIND_CHAT_CHUNK ? r.u.chat_chunk.deltas : r.u.chat_reply.deltas;
        size_t n = r.kind == LMS_KIND_CHAT_CHUNK ? r.u.chat_chunk.n_deltas
                   : r.kind == LMS_KIND_CHAT_REPLY ? r.u.chat_reply.n_deltas
                                                   : 0;
        for (size_t i = 0; i < n; i++) {
            if (d[i].kind != LMS_DELTA_TOOL_CALL)
                continue;
            assert_int_equal(d[i].index, 0);
            if (d[i].id != NULL)
                snprintf(id, sizeof(id), "%s", d[i].id);
            if (d[i].name != NULL)
                snprintf(name, sizeof(name), "%s", d[i].name);
            if (d[i].text != NULL && d[i].text[0] != '\0') {
                assert_true(strlen(args) + strlen(d[i].text) < sizeof(args));
                strcat(args, d[i].text);
                pieces++;
            }
        }
        if (r.kind != LMS_KIND_CHAT_CHUNK)
            break;
        lms_msg_fini(&r);
        lms_msg next;
        lms_msg_init(&next, LMS_KIND_CHAT_NEXT);
        next.u.chat_next.stream = sid;
        assert_int_equal(kit_wire_xchg(&w, &next, &r, NULL), 0);
        exchanges++;
    }
    tools_want_reply(&r);
    printf("streamed call %s %s(%s): %u pieces in %u exchanges\n", id, name, args, pieces,
           exchanges);
    assert_string_equal(name, "get_weather");
    assert_true(id[0] != '\0');
    assert_string_equal(args, whole);
    assert_true(pieces >= 2);
    assert_string_equal(r.u.chat_reply.finish_reason, "tool_calls");
    assert_int_equal(r.u.chat_reply.n_tool_calls, 1);
    assert_string_equal(r.u.chat_reply.tool_calls[0].id, id);
    assert_string_equal(r.u.chat_reply.tool_calls[0].arguments, whole);
    lms_msg_fini(&r);
    kit_wire_close(&w);
}

/* A JSON schema: the answer parses and has the required properties with
 * the right types and bounds. */
static void test_json_schema(void **state)
{
    kit_env *e = *state;
    kit_wire w;
    tools_open(&w, e);
    lms_msg m, r;
    lms_chat_msg msg;
    kit_wire_chat(&m, &msg, "You answer in JSON.", "Describe a user.", 200, false);
    m.u.chat.response_format_json =
        (char *)"{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"user\",\"strict\":true,"
                "\"schema\":{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},"
                "\"age\":{\"type\":\"integer\",\"minimum\":18},\"role\":{\"enum\":[\"admin\","
                "\"user\"]},\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"string\"}}},"
                "\"required\":[\"name\",\"age\",\"role\",\"tags\"]}}}";
    tools_xchg(&w, &m, &r);
    tools_want_reply(&r);
    printf("json: %s\n", r.u.chat_reply.content);
    json_error_t jerr;
    json_t *v = json_loads(r.u.chat_reply.content, 0, &jerr);
    if (v == NULL)
        fail_msg("not JSON (%s): %s", jerr.text, r.u.chat_reply.content);
    assert_true(json_is_string(json_object_get(v, "name")));
    assert_true(json_is_integer(json_object_get(v, "age")));
    assert_true(json_integer_value(json_object_get(v, "age")) >= 18);
    const char *role = json_string_value(json_object_get(v, "role"));
    assert_non_null(role);
    assert_true(strcmp(role, "admin") == 0 || strcmp(role, "user") == 0);
    assert_true(json_is_array(json_object_get(v, "tags")));
    json_decref(v);
    lms_msg_fini(&r);
    kit_wire_close(&w);
}

/* Fields the protocol does not name go through "extra" verbatim: logprobs
 * asked that way come back. */
static void test_extra_logprobs(void **state)
{
    kit_env *e = *state;
    kit_wire w;
    tools_open(&w, e);
    lms_msg m, r;
    lms_chat_msg msg;
    kit_wire_chat(&m, &msg, "You are terse.", "Say something.", 6, false);
    tools_xchg(&w, &m, &r);
    tools_want_reply(&r);
    assert_null(r.u.chat_reply.logprobs_json);
    lms_msg_fini(&r);

    kit_wire_chat(&m, &msg, "You are terse.", "Say something.", 6, false);
    m.u.chat.extra_json = (char *)"{\"logprobs\":true,\"top_k\":5,\"min_p\":0.05}";
    tools_xchg(&w, &m, &r);
    tools_want_reply(&r);
    assert_non_null(r.u.chat_reply.logprobs_json);
    json_t *lp = json_loads(r.u.chat_reply.logprobs_json, 0, NULL);
    assert_true(json_is_array(lp));
    assert_int_equal(json_array_size(lp), 6);
    json_t *first = json_array_get(lp, 0);
    assert_true(json_is_string(json_object_get(first, "token")));
    assert_true(json_is_real(json_object_get(first, "logprob")));
    json_decref(lp);
    lms_msg_fini(&r);
    kit_wire_close(&w);
}

/* A tool without a name: the backend's 400 reaches the agent with the
 * backend's own message, which names the field, and is not retried. */
static void test_malformed_tool(void **state)
{
    kit_env *e = *state;
    kit_wire w;
    tools_open(&w, e);
    lms_chat_msg msg = {.role = (char *)"user", .content = (char *)"hello"};
    lms_msg m, r;
    tools_chat(&m, &msg, 1, false);
    m.u.chat.tools_json =
        (char *)"[{\"type\":\"function\",\"function\":{\"name\":\"ok_tool\"}},"
                "{\"type\":\"function\",\"function\":{\"description\":\"no name\"}}]";
    tools_xchg(&w, &m, &r);
    assert_int_equal(r.kind, LMS_KIND_ERROR);
    printf("error %s: %s\n", lmsched_err_name((int)r.u.error.code), r.u.error.message);
    assert_int_equal(r.u.error.code, LMSCHED_EBACKEND_HTTP);
    assert_non_null(strstr(r.u.error.message, "400"));
    assert_non_null(
        strstr(r.u.error.message, "tools[1].function.name: missing or not a string"));
    lms_msg_fini(&r);
    kit_wire_close(&w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_tool_round_trip, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_tool_call_streamed, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_json_schema, kit_env_setup, kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_extra_logprobs, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_malformed_tool, kit_env_setup,
                                        kit_env_teardown),
    };
    return cmocka_run_group_tests_name("tools", tests, NULL, NULL);
}
