/*
 * request_test - the request setters (what they accept and reject, and that
 * the values land in the wire-format request), the result accessors, the
 * default URL and the version call. No sockets here; agent_test covers the
 * calls.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "agentlib/request.h"
#include "lmsched/agent.h"
#include "proto/proto.h"

static void test_request_defaults(void **state)
{
    lmsched_request *req = NULL;
    const lms_chat_req *c;

    (void)state;
    assert_int_equal(lmsched_request_alloc(&req), LMSCHED_OK);
    assert_non_null(req);
    c = lma_request_chat(req);
    assert_null(c->system);
    assert_int_equal(c->n_messages, 0);
    assert_int_equal(c->max_tokens, -1);
    assert_int_equal(c->priority, 5);
    assert_int_equal(c->deadline_ms, 0);
    assert_false(c->has_temperature);
    assert_false(c->has_top_p);
    assert_false(c->has_seed);
    assert_null(c->model);
    assert_null(c->agent);
    assert_null(c->client_id);
    lmsched_request_free(req);
    lmsched_request_free(NULL);
    assert_int_equal(lmsched_request_alloc(NULL), LMSCHED_EINVAL);
}

static void test_request_setters_store_values(void **state)
{
    lmsched_request *req = NULL;
    const lms_chat_req *c;

    (void)state;
    assert_int_equal(lmsched_request_alloc(&req), LMSCHED_OK);
    assert_int_equal(lmsched_request_set_system(req, "first"), LMSCHED_OK);
    assert_int_equal(lmsched_request_set_system(req, "You are terse."), LMSCHED_OK);
    /* Enough messages and stops to make the arrays grow a few times. */
    for (int i = 0; i < 37; i++) {
        char content[32];
        snprintf(content, sizeof(content), "message %d", i);
        assert_int_equal(
            lmsched_request_add_message(req, i % 2 == 0 ? "user" : "assistant", content),
            LMSCHED_OK);
    }
    for (int i = 0; i < 9; i++) {
        char stop[16];
        snprintf(stop, sizeof(stop), "<stop%d>", i);
        assert_int_equal(lmsched_request_add_stop(req, stop), LMSCHED_OK);
    }
    assert_int_equal(lmsched_request_set_model(req, "qwen"), LMSCHED_OK);
    assert_int_equal(lmsched_request_set_max_tokens(req, 1), LMSCHED_OK);
    assert_int_equal(lmsched_request_set_max_tokens(req, 1048576), LMSCHED_OK);
    assert_int_equal(lmsched_request_set_temperature(req, 0.0), LMSCHED_OK);
    assert_int_equal(lmsched_request_set_temperature(req, 10.0), LMSCHED_OK);
    assert_int_equal(lmsched_request_set_top_p(req, 0.0), LMSCHED_OK);
    assert_int_equal(lmsched_request_set_top_p(req, 0.95), LMSCHED_OK);
    assert_int_equal(lmsched_request_set_seed(req, INT64_MIN), LMSCHED_OK);
    assert_int_equal(lmsched_request_set_priority(req, 0), LMSCHED_OK);
    assert_int_equal(lmsched_request_set_priority(req, 9), LMSCHED_OK);
    assert_int_equal(lmsched_request_set_deadline_ms(req, UINT32_MAX), LMSCHED_OK);
    assert_int_equal(lmsched_request_set_agent(req, "planner"), LMSCHED_OK);
    assert_int_equal(lmsched_request_set_client_id(req, "pid-42"), LMSCHED_OK);

    c = lma_request_chat(req);
    assert_string_equal(c->system, "You are terse.");
    assert_int_equal(c->n_messages, 37);
    assert_string_equal(c->messages[0].role, "user");
    assert_string_equal(c->messages[36].content, "message 36");
    assert_string_equal(c->messages[35].role, "assistant");
    assert_int_equal(c->n_stop, 9);
    assert_string_equal(c->stop[8], "<stop8>");
    assert_string_equal(c->model, "qwen");
    assert_int_equal(c->max_tokens, 1048576);
    assert_true(c->has_temperature);
    assert_true(c->temperature == 10.0);
    assert_true(c->has_top_p);
    assert_true(c->top_p == 0.95);
    assert_true(c->has_seed);
    assert_true(c->seed == INT64_MIN);
    assert_int_equal(c->priority, 9);
    assert_int_equal(c->deadline_ms, UINT32_MAX);
    assert_string_equal(c->agent, "planner");
    assert_string_equal(c->client_id, "pid-42");
    lmsched_request_free(req);
}

static void test_request_setters_reject_bad_values(void **state)
{
    lmsched_request *req = NULL;
    const lms_chat_req *c;

    (void)state;
    assert_int_equal(lmsched_request_alloc(&req), LMSCHED_OK);
    assert_int_equal(lmsched_request_set_priority(req, 7), LMSCHED_OK);
    assert_int_equal(lmsched_request_set_max_tokens(req, 100), LMSCHED_OK);
    assert_int_equal(lmsched_request_set_temperature(req, 0.5), LMSCHED_OK);
    assert_int_equal(lmsched_request_set_top_p(req, 0.5), LMSCHED_OK);
    assert_int_equal(lmsched_request_set_model(req, "kept"), LMSCHED_OK);

    assert_int_equal(lmsched_request_set_priority(req, -1), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_set_priority(req, 10), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_set_max_tokens(req, 0), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_set_max_tokens(req, -5), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_set_max_tokens(req, 1048577), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_set_temperature(req, -0.01), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_set_temperature(req, 10.01), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_set_temperature(req, NAN), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_set_temperature(req, INFINITY), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_set_top_p(req, -0.1), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_set_top_p(req, 1.5), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_set_top_p(req, NAN), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_set_system(req, NULL), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_add_message(req, NULL, "x"), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_add_message(req, "user", NULL), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_set_model(req, NULL), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_add_stop(req, NULL), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_set_agent(req, NULL), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_set_client_id(req, NULL), LMSCHED_EINVAL);

    /* A rejected value leaves the previous one in place. */
    c = lma_request_chat(req);
    assert_int_equal(c->priority, 7);
    assert_int_equal(c->max_tokens, 100);
    assert_true(c->temperature == 0.5);
    assert_true(c->top_p == 0.5);
    assert_string_equal(c->model, "kept");
    assert_int_equal(c->n_messages, 0);
    assert_int_equal(c->n_stop, 0);
    assert_null(c->agent);

    /* A NULL request is rejected by every setter. */
    assert_int_equal(lmsched_request_set_system(NULL, "x"), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_add_message(NULL, "user", "x"), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_set_model(NULL, "x"), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_set_max_tokens(NULL, 5), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_set_temperature(NULL, 0.5), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_set_top_p(NULL, 0.5), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_add_stop(NULL, "x"), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_set_seed(NULL, 1), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_set_priority(NULL, 1), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_set_deadline_ms(NULL, 1), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_set_agent(NULL, "x"), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_set_client_id(NULL, "x"), LMSCHED_EINVAL);
    lmsched_request_free(req);
}

static void test_result_error_and_reply(void **state)
{
    lmsched_result *res;
    lms_chat_reply reply;
    char *json;

    (void)state;
    res = lma_result_error(LMSCHED_EBUSY, "queue full (%d waiting)", 12);
    assert_non_null(res);
    assert_int_equal(lmsched_result_error(res), LMSCHED_EBUSY);
    assert_string_equal(lmsched_result_message(res), "queue full (12 waiting)");
    assert_null(lmsched_result_content(res));
    assert_null(lmsched_result_finish_reason(res));
    assert_null(lmsched_result_model(res));
    assert_int_equal(lmsched_result_prompt_tokens(res), -1);
    assert_int_equal(lmsched_result_completion_tokens(res), -1);
    assert_int_equal(lmsched_result_cached_tokens(res), -1);
    assert_true(lmsched_result_queue_ms(res) == 0.0);
    assert_int_equal(lmsched_result_retries(res), 0);
    lmsched_result_free(res);

    memset(&reply, 0, sizeof(reply));
    reply.content = strdup("hello");
    reply.finish_reason = strdup("length");
    reply.model = NULL;
    reply.usage.prompt_tokens = 11;
    reply.usage.completion_tokens = -1;
    reply.usage.cached_tokens = 4;
    reply.timings.queue_ms = 1.25;
    reply.timings.ttft_ms = 2.5;
    reply.timings.total_ms = 9.75;
    reply.retries = 3;
    res = lma_result_reply(&reply);
    assert_non_null(res);
    /* The strings moved into the result. */
    assert_null(reply.content);
    assert_null(reply.finish_reason);
    assert_int_equal(lmsched_result_error(res), LMSCHED_OK);
    assert_null(lmsched_result_message(res));
    assert_string_equal(lmsched_result_content(res), "hello");
    assert_string_equal(lmsched_result_finish_reason(res), "length");
    assert_null(lmsched_result_model(res));
    assert_int_equal(lmsched_result_prompt_tokens(res), 11);
    assert_int_equal(lmsched_result_completion_tokens(res), -1);
    assert_int_equal(lmsched_result_cached_tokens(res), 4);
    assert_true(lmsched_result_queue_ms(res) == 1.25);
    assert_true(lmsched_result_ttft_ms(res) == 2.5);
    assert_true(lmsched_result_total_ms(res) == 9.75);
    assert_int_equal(lmsched_result_retries(res), 3);
    lmsched_result_free(res);

    json = strdup("{\"ok\":true}");
    res = lma_result_status(&json);
    assert_non_null(res);
    assert_null(json);
    json = lma_result_take_status(res);
    assert_string_equal(json, "{\"ok\":true}");
    assert_null(lma_result_take_status(res));
    free(json);
    lmsched_result_free(res);
}

static void test_result_accessors_accept_null(void **state)
{
    (void)state;
    lmsched_result_free(NULL);
    assert_int_equal(lmsched_result_error(NULL), LMSCHED_EINVAL);
    assert_null(lmsched_result_message(NULL));
    assert_null(lmsched_result_content(NULL));
    assert_null(lmsched_result_finish_reason(NULL));
    assert_null(lmsched_result_model(NULL));
    assert_int_equal(lmsched_result_prompt_tokens(NULL), -1);
    assert_int_equal(lmsched_result_completion_tokens(NULL), -1);
    assert_int_equal(lmsched_result_cached_tokens(NULL), -1);
    assert_true(lmsched_result_queue_ms(NULL) == 0.0);
    assert_true(lmsched_result_ttft_ms(NULL) == 0.0);
    assert_true(lmsched_result_total_ms(NULL) == 0.0);
    assert_int_equal(lmsched_result_retries(NULL), 0);
}

/* The JSON fields and structured messages land in the wire-format request
 * as given, and survive an encode/decode round trip (what the daemon
 * reads). */
static void test_json_setters_store_values(void **state)
{
    static const char tools[] =
        "[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
        "\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":"
        "\"string\"}}}}}]";
    static const char calls[] =
        "[{\"id\":\"call_1\",\"type\":\"function\",\"function\":"
        "{\"name\":\"get_weather\",\"arguments\":\"{\\\"city\\\":\\\"Oslo\\\"}\"}}]";
    lmsched_request *req = NULL;
    const lms_chat_req *c;
    void *buf = NULL;
    size_t len = 0;
    lms_msg m, d;
    lms_decode_err de;

    (void)state;
    assert_int_equal(lmsched_request_alloc(&req), LMSCHED_OK);
    c = lma_request_chat(req);
    assert_int_equal(c->parallel_tool_calls, -1);
    assert_int_equal(lmsched_request_set_tools(req, tools), LMSCHED_OK);
    assert_string_equal(lmsched_request_last_error(req), "");
    assert_string_equal(c->tools_json, tools);
    assert_int_equal(lmsched_request_set_tool_choice(req, "required"), LMSCHED_OK);
    assert_string_equal(c->tool_choice_json, "\"required\"");
    assert_int_equal(lmsched_request_set_tool_choice(req, "\"none\""), LMSCHED_OK);
    assert_string_equal(c->tool_choice_json, "\"none\"");
    assert_int_equal(lmsched_request_set_tool_choice_function(req, "get_weather"),
                     LMSCHED_OK);
    assert_string_equal(
        c->tool_choice_json,
        "{\"type\":\"function\",\"function\":{\"name\":\"get_weather\"}}");
    assert_int_equal(
        lmsched_request_set_response_format(req, "{\"type\":\"json_object\"}"),
        LMSCHED_OK);
    assert_string_equal(c->response_format_json, "{\"type\":\"json_object\"}");
    assert_int_equal(lmsched_request_set_parallel_tool_calls(req, 1), LMSCHED_OK);
    assert_int_equal(c->parallel_tool_calls, 1);
    assert_int_equal(lmsched_request_set_parallel_tool_calls(req, 0), LMSCHED_OK);
    assert_int_equal(c->parallel_tool_calls, 0);

    /* extra: a whole object, then single fields added and replaced in place */
    assert_int_equal(lmsched_request_set_extra(req, "{\"top_k\":40}"), LMSCHED_OK);
    assert_int_equal(lmsched_request_set_extra_double(req, "min_p", 0.05), LMSCHED_OK);
    assert_int_equal(lmsched_request_set_extra_bool(req, "logprobs", 1), LMSCHED_OK);
    assert_int_equal(lmsched_request_set_extra_string(req, "grammar", "root ::= \"a\""),
                     LMSCHED_OK);
    assert_int_equal(lmsched_request_set_extra_json(req, "logit_bias", "{\"15\":-100}"),
                     LMSCHED_OK);
    assert_int_equal(lmsched_request_set_extra_int(req, "top_k", 5), LMSCHED_OK);
    assert_string_equal(
        c->extra_json,
        "{\"top_k\":5,\"min_p\":0.050000000000000003,\"logprobs\":true,"
        "\"grammar\":\"root ::= \\\"a\\\"\",\"logit_bias\":{\"15\":-100}}");

    /* structured messages */
    assert_int_equal(lmsched_request_add_message(req, "user", "Weather in Oslo?"),
                     LMSCHED_OK);
    assert_int_equal(lmsched_request_add_tool_calls(req, NULL, calls), LMSCHED_OK);
    assert_int_equal(
        lmsched_request_add_tool_result(req, "call_1", "get_weather", "{\"t\":3}"),
        LMSCHED_OK);
    assert_int_equal(
        lmsched_request_add_message_parts(req, "user",
                                          "[{\"type\":\"text\",\"text\":\"and this?\"},"
                                          "{\"type\":\"image_url\",\"image_url\":{"
                                          "\"url\":\"data:image/png;base64,AA==\"}}]"),
        LMSCHED_OK);
    assert_int_equal(lmsched_request_add_message_json(
                         req,
                         "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":"
                         "[{\"id\":\"c2\",\"type\":\"function\",\"function\":{\"name\":"
                         "\"f\",\"arguments\":\"{}\"}}]}"),
                     LMSCHED_OK);
    assert_int_equal(lmsched_request_add_message_json(
                         req, "{\"role\":\"tool\",\"tool_call_id\":\"c2\",\"name\":\"f\","
                              "\"content\":\"ok\"}"),
                     LMSCHED_OK);
    assert_int_equal(lmsched_request_add_message_json(
                         req,
                         "{\"role\":\"user\",\"name\":\"ann\",\"content\":[{\"type\":"
                         "\"text\",\"text\":\"hi\"}]}"),
                     LMSCHED_OK);
    assert_int_equal(lmsched_request_message_count(req), 7);
    assert_null(c->messages[1].content);
    assert_string_equal(c->messages[1].role, "assistant");
    assert_string_equal(c->messages[1].tool_calls_json, calls);
    assert_string_equal(c->messages[2].role, "tool");
    assert_string_equal(c->messages[2].tool_call_id, "call_1");
    assert_string_equal(c->messages[2].name, "get_weather");
    assert_string_equal(c->messages[2].content, "{\"t\":3}");
    assert_null(c->messages[3].content);
    assert_non_null(c->messages[3].parts_json);
    assert_null(c->messages[4].content);
    assert_string_equal(
        c->messages[4].tool_calls_json,
        "[{\"id\":\"c2\",\"type\":\"function\",\"function\":{\"name\":\"f\","
        "\"arguments\":\"{}\"}}]");
    assert_string_equal(c->messages[5].tool_call_id, "c2");
    assert_string_equal(c->messages[6].name, "ann");
    assert_string_equal(c->messages[6].parts_json,
                        "[{\"type\":\"text\",\"text\":\"hi\"}]");

    /* What the daemon decodes is what was set. */
    lms_msg_init(&m, LMS_KIND_CHAT);
    m.u.chat = *c;
    m.u.chat.system = (char *)"";
    m.id = 9;
    assert_int_equal(lms_encode(&m, &buf, &len), LMSCHED_OK);
    assert_int_equal(lms_decode(buf, len, NULL, &d, &de), LMSCHED_OK);
    free(buf);
    assert_string_equal(d.u.chat.tools_json, tools);
    assert_string_equal(
        d.u.chat.tool_choice_json,
        "{\"type\":\"function\",\"function\":{\"name\":\"get_weather\"}}");
    assert_int_equal(d.u.chat.parallel_tool_calls, 0);
    assert_string_equal(d.u.chat.extra_json, c->extra_json);
    assert_int_equal(d.u.chat.n_messages, 7);
    assert_string_equal(d.u.chat.messages[1].tool_calls_json, calls);
    assert_string_equal(d.u.chat.messages[2].tool_call_id, "call_1");
    assert_string_equal(d.u.chat.messages[3].parts_json, c->messages[3].parts_json);
    lms_msg_fini(&d);

    /* NULL removes a JSON field; clear_messages keeps the rest */
    assert_int_equal(lmsched_request_set_tools(req, NULL), LMSCHED_OK);
    assert_null(c->tools_json);
    assert_int_equal(lmsched_request_set_extra(req, NULL), LMSCHED_OK);
    assert_null(c->extra_json);
    assert_int_equal(lmsched_request_set_parallel_tool_calls(req, -1), LMSCHED_OK);
    assert_int_equal(c->parallel_tool_calls, -1);
    lmsched_request_clear_messages(req);
    assert_int_equal(lmsched_request_message_count(req), 0);
    assert_non_null(c->response_format_json);
    lmsched_request_clear_messages(NULL);
    assert_int_equal(lmsched_request_message_count(NULL), 0);
    lmsched_request_free(req);
}

/* Asserts that the last setter on req failed with a message containing
 * want. */
static void expect_error(const lmsched_request *req, const char *want)
{
    const char *got = lmsched_request_last_error(req);
    if (strstr(got, want) == NULL)
        fail_msg("error message '%s' does not contain '%s'", got, want);
}

/* Every JSON setter refuses what is not JSON of its shape, names the
 * field, and leaves the previous value in place. */
static void test_json_setters_reject_bad_values(void **state)
{
    lmsched_request *req = NULL;
    const lms_chat_req *c;

    (void)state;
    assert_int_equal(lmsched_request_alloc(&req), LMSCHED_OK);
    c = lma_request_chat(req);
    assert_int_equal(lmsched_request_set_tools(req, "[]"), LMSCHED_OK);

    assert_int_equal(lmsched_request_set_tools(req, "[{\"type\":"), LMSCHED_EINVAL);
    expect_error(req, "tools: not valid JSON (line 1, column");
    assert_int_equal(lmsched_request_set_tools(req, "{\"type\":\"function\"}"),
                     LMSCHED_EINVAL);
    expect_error(req, "tools: expected a JSON array of tool definitions, got an object");
    assert_int_equal(lmsched_request_set_tools(req, "[1]"), LMSCHED_EINVAL);
    expect_error(req, "tools[0]: expected an object, got an integer");
    assert_int_equal(
        lmsched_request_set_tools(req, "[{\"type\":\"function\",\"function\":{\"name\":"
                                       "\"a\"}},{\"type\":\"function\","
                                       "\"function\":{\"description\":\"no name\"}}]"),
        LMSCHED_EINVAL);
    expect_error(req, "tools[1].function.name: missing or not a string");
    assert_int_equal(lmsched_request_set_tools(
                         req, "[{\"type\":\"function\",\"function\":{\"name\":\"a\","
                              "\"parameters\":[]}}]"),
                     LMSCHED_EINVAL);
    expect_error(req, "tools[0].function.parameters: expected an object");
    assert_int_equal(lmsched_request_set_tools(req, "[{\"a\":1,\"a\":2}]"),
                     LMSCHED_EINVAL);
    expect_error(req, "duplicate");
    assert_string_equal(c->tools_json, "[]");

    assert_int_equal(lmsched_request_set_tool_choice(req, "sometimes"), LMSCHED_EINVAL);
    expect_error(req, "tool_choice: not valid JSON");
    assert_int_equal(lmsched_request_set_tool_choice(req, "\"sometimes\""),
                     LMSCHED_EINVAL);
    expect_error(req, "tool_choice: expected \"auto\"");
    assert_int_equal(lmsched_request_set_tool_choice(req, "[\"auto\"]"), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_set_tool_choice_function(req, ""), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_set_tool_choice_function(req, NULL), LMSCHED_EINVAL);
    assert_null(c->tool_choice_json);

    assert_int_equal(lmsched_request_set_response_format(req, "\"json\""),
                     LMSCHED_EINVAL);
    expect_error(req, "response_format: expected an object");
    assert_int_equal(lmsched_request_set_response_format(req, "{\"schema\":{}}"),
                     LMSCHED_EINVAL);
    expect_error(req, "response_format.type: missing");

    assert_int_equal(lmsched_request_set_extra(req, "[1]"), LMSCHED_EINVAL);
    expect_error(req, "extra: expected a JSON object");
    assert_int_equal(lmsched_request_set_extra(req, "{\"top_k\":1,\"stream\":false}"),
                     LMSCHED_EINVAL);
    expect_error(req, "extra.stream: not allowed in extra: the scheduler sets it");
    assert_int_equal(lmsched_request_set_extra_int(req, "max_tokens", 5), LMSCHED_EINVAL);
    expect_error(req,
                 "extra.max_tokens: not allowed in extra: it has a setter of its own");
    assert_int_equal(lmsched_request_set_extra_int(req, "", 5), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_set_extra_int(req, NULL, 5), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_set_extra_double(req, "min_p", NAN), LMSCHED_EINVAL);
    expect_error(req, "extra.min_p: not a finite number");
    assert_int_equal(lmsched_request_set_extra_string(req, "grammar", NULL),
                     LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_set_extra_string(req, "grammar", "\xff"),
                     LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_set_extra_json(req, "logit_bias", "{"),
                     LMSCHED_EINVAL);
    expect_error(req, "extra.logit_bias: not valid JSON");
    assert_null(c->extra_json);

    assert_int_equal(lmsched_request_add_message_parts(req, "user", "\"text\""),
                     LMSCHED_EINVAL);
    expect_error(req, "content: expected a JSON array of content parts, got a string");
    assert_int_equal(
        lmsched_request_add_message_parts(req, "user", "[{\"type\":\"text\"}]"),
        LMSCHED_EINVAL);
    expect_error(req, "content[0].text: missing or not a string");
    assert_int_equal(lmsched_request_add_message_parts(req, "", "[]"), LMSCHED_EINVAL);
    expect_error(req, "message: the role is empty");
    assert_int_equal(lmsched_request_add_tool_calls(req, NULL, "{}"), LMSCHED_EINVAL);
    expect_error(req, "tool_calls: expected a JSON array of tool calls, got an object");
    assert_int_equal(
        lmsched_request_add_tool_calls(
            req, NULL,
            "[{\"id\":\"c\",\"type\":\"function\",\"function\":{\"name\":\"f\","
            "\"arguments\":{}}}]"),
        LMSCHED_EINVAL);
    expect_error(req, "tool_calls[0].function.arguments: missing or not a string");
    assert_int_equal(lmsched_request_add_tool_result(req, NULL, "f", "x"),
                     LMSCHED_EINVAL);
    expect_error(req, "tool_call_id is NULL");
    assert_int_equal(lmsched_request_add_tool_result(req, "c", "f", NULL),
                     LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_add_message_json(req, "[]"), LMSCHED_EINVAL);
    expect_error(req, "message: expected an object, got an array");
    assert_int_equal(lmsched_request_add_message_json(
                         req, "{\"role\":\"user\",\"content\":\"x\",\"refusal\":null}"),
                     LMSCHED_EINVAL);
    expect_error(req, "message.refusal: not a field the protocol carries");
    assert_int_equal(lmsched_request_add_message_json(req, "{\"content\":\"x\"}"),
                     LMSCHED_EINVAL);
    expect_error(req, "message.role: missing");
    assert_int_equal(lmsched_request_add_message_json(req, "{\"role\":\"user\"}"),
                     LMSCHED_EINVAL);
    expect_error(req, "message.content: missing");
    assert_int_equal(
        lmsched_request_add_message_json(req, "{\"role\":\"user\",\"content\":7}"),
        LMSCHED_EINVAL);
    expect_error(req, "message.content: expected a string, an array of parts or null");
    assert_int_equal(
        lmsched_request_add_message_json(req, "{\"role\":\"tool\",\"content\":\"x\","
                                              "\"tool_call_id\":5}"),
        LMSCHED_EINVAL);
    expect_error(req, "message.tool_call_id: expected a string, got an integer");
    assert_int_equal(lmsched_request_add_reply(req, NULL), LMSCHED_EINVAL);
    expect_error(req, "reply: the result is not a chat reply");
    assert_int_equal(lmsched_request_message_count(req), 0);

    /* a success clears the message */
    assert_int_equal(lmsched_request_set_max_tokens(req, 0), LMSCHED_EINVAL);
    expect_error(req, "max_tokens: 0 is out of range 1..1048576");
    assert_int_equal(lmsched_request_set_max_tokens(req, 3), LMSCHED_OK);
    assert_string_equal(lmsched_request_last_error(req), "");

    /* NULL requests */
    assert_int_equal(lmsched_request_set_tools(NULL, "[]"), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_set_tool_choice(NULL, "auto"), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_set_response_format(NULL, "{}"), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_set_parallel_tool_calls(NULL, 1), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_set_extra(NULL, "{}"), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_set_extra_bool(NULL, "k", 1), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_add_tool_calls(NULL, NULL, "[]"), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_add_tool_result(NULL, "a", "b", "c"),
                     LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_add_message_json(NULL, "{}"), LMSCHED_EINVAL);
    assert_int_equal(lmsched_request_add_reply(NULL, NULL), LMSCHED_EINVAL);
    assert_non_null(lmsched_request_last_error(NULL));
    lmsched_request_free(req);
}

/* A reply with tool calls, reasoning and logprobs: the accessors, the
 * calls as JSON, and add_reply putting the assistant's turn back. */
static void test_result_tool_calls(void **state)
{
    lms_chat_reply reply;
    lmsched_result *res;
    lmsched_request *req = NULL;
    const lms_chat_req *c;

    (void)state;
    memset(&reply, 0, sizeof(reply));
    reply.content = strdup("");
    reply.finish_reason = strdup("tool_calls");
    reply.reasoning = strdup("thinking...");
    reply.logprobs_json = strdup("[{\"token\":\"a\",\"logprob\":-0.5}]");
    reply.n_tool_calls = 2;
    reply.tool_calls = calloc(2, sizeof(lms_tool_call));
    assert_non_null(reply.tool_calls);
    reply.tool_calls[0] = (lms_tool_call){strdup("call_a"), strdup("function"),
                                          strdup("f"), strdup("{\"x\":1}")};
    reply.tool_calls[1] =
        (lms_tool_call){strdup("call_b"), strdup("function"), strdup("g"), strdup("{}")};
    res = lma_result_reply(&reply);
    assert_non_null(res);
    assert_null(reply.tool_calls);
    assert_string_equal(lmsched_result_reasoning(res), "thinking...");
    assert_string_equal(lmsched_result_logprobs_json(res),
                        "[{\"token\":\"a\",\"logprob\":-0.5}]");
    assert_int_equal(lmsched_result_tool_call_count(res), 2);
    assert_string_equal(lmsched_result_tool_call_id(res, 1), "call_b");
    assert_string_equal(lmsched_result_tool_call_type(res, 0), "function");
    assert_string_equal(lmsched_result_tool_call_name(res, 0), "f");
    assert_string_equal(lmsched_result_tool_call_arguments(res, 0), "{\"x\":1}");
    assert_null(lmsched_result_tool_call_id(res, 2));
    assert_null(lmsched_result_tool_call_name(NULL, 0));
    assert_int_equal(lmsched_result_tool_call_count(NULL), 0);
    assert_string_equal(
        lmsched_result_tool_calls_json(res),
        "[{\"id\":\"call_a\",\"type\":\"function\",\"function\":{\"name\":\"f\","
        "\"arguments\":\"{\\\"x\\\":1}\"}},{\"id\":\"call_b\",\"type\":"
        "\"function\",\"function\":{\"name\":\"g\",\"arguments\":\"{}\"}}]");

    assert_int_equal(lmsched_request_alloc(&req), LMSCHED_OK);
    assert_int_equal(lmsched_request_add_reply(req, res), LMSCHED_OK);
    c = lma_request_chat(req);
    assert_string_equal(c->messages[0].role, "assistant");
    assert_null(c->messages[0].content); /* calls only: no content */
    assert_string_equal(c->messages[0].tool_calls_json,
                        lmsched_result_tool_calls_json(res));
    lmsched_request_free(req);
    lmsched_result_free(res);

    /* an error reply's field */
    res = lma_result_error(LMSCHED_EPROTO, "bad");
    assert_null(lmsched_result_error_field(res));
    assert_int_equal(lma_result_set_field(res, "extra.stream"), 0);
    assert_string_equal(lmsched_result_error_field(res), "extra.stream");
    assert_int_equal(lmsched_request_alloc(&req), LMSCHED_OK);
    assert_int_equal(lmsched_request_add_reply(req, res), LMSCHED_EINVAL);
    lmsched_request_free(req);
    lmsched_result_free(res);
    assert_null(lmsched_result_error_field(NULL));
    assert_null(lmsched_result_reasoning(NULL));
    assert_null(lmsched_result_tool_calls_json(NULL));
    assert_null(lmsched_result_logprobs_json(NULL));
}

/* Saves the URL variables in setup and puts them back in teardown. */
typedef struct saved_env {
    char *url;
    char *xdg;
} saved_env;

static int env_save(void **state)
{
    saved_env *s = calloc(1, sizeof(*s));
    const char *v;

    if (s == NULL) {
        return -1;
    }
    if ((v = getenv("LMSCHED_URL")) != NULL) {
        s->url = strdup(v);
    }
    if ((v = getenv("XDG_RUNTIME_DIR")) != NULL) {
        s->xdg = strdup(v);
    }
    *state = s;
    return 0;
}

static int env_restore(void **state)
{
    saved_env *s = *state;

    if (s->url != NULL) {
        setenv("LMSCHED_URL", s->url, 1);
    } else {
        unsetenv("LMSCHED_URL");
    }
    if (s->xdg != NULL) {
        setenv("XDG_RUNTIME_DIR", s->xdg, 1);
    } else {
        unsetenv("XDG_RUNTIME_DIR");
    }
    free(s->url);
    free(s->xdg);
    free(s);
    return 0;
}

static void test_default_url(void **state)
{
    char buf[128];
    char tiny[8];

    (void)state;
    setenv("LMSCHED_URL", "tcp://127.0.0.1:7777", 1);
    setenv("XDG_RUNTIME_DIR", "/run/user/1000", 1);
    assert_int_equal(lmsched_default_url(buf, sizeof(buf)), LMSCHED_OK);
    assert_string_equal(buf, "tcp://127.0.0.1:7777");

    unsetenv("LMSCHED_URL");
    assert_int_equal(lmsched_default_url(buf, sizeof(buf)), LMSCHED_OK);
    assert_string_equal(buf, "ipc:///run/user/1000/lmsched.sock");

    /* Empty counts as unset. */
    setenv("LMSCHED_URL", "", 1);
    assert_int_equal(lmsched_default_url(buf, sizeof(buf)), LMSCHED_OK);
    assert_string_equal(buf, "ipc:///run/user/1000/lmsched.sock");

    unsetenv("LMSCHED_URL");
    unsetenv("XDG_RUNTIME_DIR");
    assert_int_equal(lmsched_default_url(buf, sizeof(buf)), LMSCHED_OK);
    assert_string_equal(buf, "ipc:///tmp/lmsched.sock");

    /* Exactly fitting, one byte short, and no room at all. */
    assert_int_equal(lmsched_default_url(buf, strlen("ipc:///tmp/lmsched.sock") + 1),
                     LMSCHED_OK);
    assert_int_equal(lmsched_default_url(tiny, sizeof(tiny)), LMSCHED_ETOOLARGE);
    assert_string_equal(tiny, "");
    assert_int_equal(lmsched_default_url(buf, strlen("ipc:///tmp/lmsched.sock")),
                     LMSCHED_ETOOLARGE);
    assert_int_equal(lmsched_default_url(buf, 0), LMSCHED_ETOOLARGE);
    assert_int_equal(lmsched_default_url(NULL, 10), LMSCHED_EINVAL);
}

static void test_version_and_strerror(void **state)
{
    (void)state;
    assert_string_equal(lmsched_version(), LMSCHED_VERSION);
    assert_string_equal(lmsched_version(), "0.2.0");
    assert_non_null(lmsched_strerror(LMSCHED_ENODAEMON));
    assert_non_null(lmsched_strerror(12345));
    /* lmsched_free takes NULL like free. */
    lmsched_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_defaults),
        cmocka_unit_test(test_request_setters_store_values),
        cmocka_unit_test(test_request_setters_reject_bad_values),
        cmocka_unit_test(test_result_error_and_reply),
        cmocka_unit_test(test_result_accessors_accept_null),
        cmocka_unit_test(test_json_setters_store_values),
        cmocka_unit_test(test_json_setters_reject_bad_values),
        cmocka_unit_test(test_result_tool_calls),
        cmocka_unit_test_setup_teardown(test_default_url, env_save, env_restore),
        cmocka_unit_test(test_version_and_strerror),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
