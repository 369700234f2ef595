/*
 * agent_tools_test - tools, structured output and extra body fields
 * through the agent library, against the real daemon and lmsim
 * (tests/kit): a tool round trip (the model's call, the tool's result sent
 * back with the call's id, the final answer quoting it), the same call
 * streamed as fragments that assemble to the non-streamed arguments, a
 * json_schema answer that parses, logprobs and reasoning, and a field the
 * daemon refuses named in the result.
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
#include "lmsched/agent.h"

#define CALL_MS 60000

static const char tools_weather[] =
    "[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
    "\"description\":\"Current weather for a city\",\"parameters\":{\"type\":\"object\","
    "\"properties\":{\"city\":{\"type\":\"string\"},\"days\":{\"type\":\"integer\","
    "\"minimum\":1}},\"required\":[\"city\"]}}}]";

static lmsched_client *tools_open(kit_env *e, const char *const *sim)
{
    static const char *const def[] = {"--time-scale", "5", NULL};
    lmsched_client *c = NULL;
    kit_env_start(e, sim != NULL ? sim : def, NULL);
    assert_int_equal(lmsched_client_open(&c, e->url), LMSCHED_OK);
    return c;
}

static lmsched_request *tools_req(const char *user)
{
    lmsched_request *r = kit_req("You are a tool-using assistant.", user, 32);
    assert_int_equal(lmsched_request_set_seed(r, 11), LMSCHED_OK);
    assert_int_equal(lmsched_request_set_tools(r, tools_weather), LMSCHED_OK);
    return r;
}

/* Fails with the message unless res is a reply. */
static void want_reply(int rc, const lmsched_result *res)
{
    if (rc != LMSCHED_OK)
        fail_msg("%s: %s", lmsched_err_name(rc), lmsched_result_message(res));
}

/* The arguments parse as an object with a string "city". */
static void check_args(const char *args)
{
    json_error_t jerr;
    json_t *a = json_loads(args, 0, &jerr);
    if (a == NULL)
        fail_msg("arguments are not JSON (%s): %s", jerr.text, args);
    assert_true(json_is_object(a));
    assert_true(json_is_string(json_object_get(a, "city")));
    json_decref(a);
}

static void test_tool_round_trip(void **state)
{
    kit_env *e = *state;
    lmsched_client *c = tools_open(e, NULL);
    lmsched_request *req = tools_req("Please call get_weather for Paris.");
    lmsched_result *res = NULL;
    int rc = lmsched_chat(c, req, CALL_MS, &res);
    want_reply(rc, res);
    assert_string_equal(lmsched_result_finish_reason(res), "tool_calls");
    assert_int_equal(lmsched_result_tool_call_count(res), 1);
    assert_string_equal(lmsched_result_tool_call_name(res, 0), "get_weather");
    assert_string_equal(lmsched_result_tool_call_type(res, 0), "function");
    const char *id = lmsched_result_tool_call_id(res, 0);
    assert_non_null(id);
    assert_true(strncmp(id, "call_", 5) == 0);
    check_args(lmsched_result_tool_call_arguments(res, 0));
    printf("call %s: %s(%s)\n", id, lmsched_result_tool_call_name(res, 0),
           lmsched_result_tool_call_arguments(res, 0));
    int64_t first_prompt = lmsched_result_prompt_tokens(res);

    /* the conversation goes on: the assistant's call, then the tool's answer */
    assert_int_equal(lmsched_request_add_reply(req, res), LMSCHED_OK);
    assert_int_equal(lmsched_request_add_tool_result(req, id, "get_weather",
                                                     "{\"temp_c\":18,\"sky\":\"clear\"}"),
                     LMSCHED_OK);
    lmsched_result_free(res);
    res = NULL;
    rc = lmsched_chat(c, req, CALL_MS, &res);
    want_reply(rc, res);
    printf("answer: %s\n", lmsched_result_content(res));
    assert_int_equal(lmsched_result_tool_call_count(res), 0);
    assert_null(lmsched_result_tool_calls_json(res));
    assert_true(strncmp(lmsched_result_content(res), "Tool result: {\"temp_c\":18", 25) ==
                0);
    /* the call and the result are part of the prompt now */
    assert_true(lmsched_result_prompt_tokens(res) > first_prompt);
    /* and the cache held the first turn: the call went back as it came */
    assert_true(lmsched_result_cached_tokens(res) > first_prompt / 2);
    lmsched_result_free(res);
    lmsched_request_free(req);
    lmsched_client_close(c);
}

/* What a streamed tool call delivered. */
typedef struct calls_seen {
    char args[1024];
    char id[128];
    char name[128];
    int heads, pieces, others;
    int bad_index;
} calls_seen;

static int on_call_delta(int kind, const char *text, int index, const char *id,
                         const char *name, void *arg)
{
    calls_seen *s = arg;
    if (kind != LMSCHED_DELTA_TOOL_CALL) {
        s->others++;
        return 0;
    }
    if (index != 0)
        s->bad_index++;
    if (id != NULL) {
        snprintf(s->id, sizeof(s->id), "%s", id);
        snprintf(s->name, sizeof(s->name), "%s", name != NULL ? name : "");
        s->heads++;
    }
    if (text[0] != '\0') {
        if (strlen(s->args) + strlen(text) < sizeof(s->args))
            strcat(s->args, text);
        s->pieces++;
    }
    return 0;
}

static void test_tool_call_streamed(void **state)
{
    kit_env *e = *state;
    lmsched_client *c = tools_open(e, NULL);
    lmsched_request *req = tools_req("Please call get_weather for Oslo.");
    lmsched_result *whole = NULL, *res = NULL;
    want_reply(lmsched_chat(c, req, CALL_MS, &whole), whole);
    assert_int_equal(lmsched_result_tool_call_count(whole), 1);

    calls_seen s = {0};
    int rc = lmsched_chat_stream(c, req, CALL_MS, on_call_delta, &s, &res);
    want_reply(rc, res);
    printf("streamed %s %s(%s): %d pieces\n", s.id, s.name, s.args, s.pieces);
    assert_int_equal(s.heads, 1);
    assert_int_equal(s.bad_index, 0);
    assert_true(s.pieces >= 2);
    assert_string_equal(s.name, "get_weather");
    assert_string_equal(s.id, lmsched_result_tool_call_id(whole, 0));
    assert_string_equal(s.args, lmsched_result_tool_call_arguments(whole, 0));
    /* the final result carries the assembled call */
    assert_string_equal(lmsched_result_finish_reason(res), "tool_calls");
    assert_int_equal(lmsched_result_tool_call_count(res), 1);
    assert_string_equal(lmsched_result_tool_call_arguments(res, 0), s.args);
    assert_string_equal(lmsched_result_tool_calls_json(res),
                        lmsched_result_tool_calls_json(whole));
    lmsched_result_free(res);
    lmsched_result_free(whole);
    lmsched_request_free(req);
    lmsched_client_close(c);
}

/* tool_choice naming the function calls it whatever the message says;
 * "none" calls nothing. */
static void test_tool_choice(void **state)
{
    kit_env *e = *state;
    lmsched_client *c = tools_open(e, NULL);
    lmsched_request *req = tools_req("What should I wear today?");
    lmsched_result *res = NULL;
    assert_int_equal(lmsched_request_set_tool_choice_function(req, "get_weather"),
                     LMSCHED_OK);
    want_reply(lmsched_chat(c, req, CALL_MS, &res), res);
    assert_int_equal(lmsched_result_tool_call_count(res), 1);
    lmsched_result_free(res);
    assert_int_equal(lmsched_request_set_tool_choice(req, "none"), LMSCHED_OK);
    want_reply(lmsched_chat(c, req, CALL_MS, &res), res);
    assert_int_equal(lmsched_result_tool_call_count(res), 0);
    assert_string_equal(lmsched_result_finish_reason(res), "length");
    lmsched_result_free(res);
    lmsched_request_free(req);
    lmsched_client_close(c);
}

static void test_json_schema(void **state)
{
    kit_env *e = *state;
    lmsched_client *c = tools_open(e, NULL);
    lmsched_request *req = kit_req("You answer in JSON.", "Describe a user.", 200);
    assert_int_equal(
        lmsched_request_set_response_format(
            req,
            "{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"user\",\"strict\":"
            "true,"
            "\"schema\":{\"type\":\"object\",\"properties\":{\"name\":{\"type\":"
            "\"string\"},"
            "\"age\":{\"type\":\"integer\",\"minimum\":18},\"tags\":{\"type\":\"array\","
            "\"items\":{\"type\":\"string\"}}},\"required\":[\"name\",\"age\",\"tags\"]}}"
            "}"),
        LMSCHED_OK);
    lmsched_result *res = NULL;
    want_reply(lmsched_chat(c, req, CALL_MS, &res), res);
    printf("json: %s\n", lmsched_result_content(res));
    json_error_t jerr;
    json_t *v = json_loads(lmsched_result_content(res), 0, &jerr);
    if (v == NULL)
        fail_msg("not JSON (%s): %s", jerr.text, lmsched_result_content(res));
    assert_true(json_is_string(json_object_get(v, "name")));
    assert_true(json_is_integer(json_object_get(v, "age")));
    assert_true(json_integer_value(json_object_get(v, "age")) >= 18);
    assert_true(json_is_array(json_object_get(v, "tags")));
    json_decref(v);
    lmsched_result_free(res);
    lmsched_request_free(req);
    lmsched_client_close(c);
}

/* logprobs asked through an extra field come back; reasoning too. */
static void test_extra_logprobs_reasoning(void **state)
{
    kit_env *e = *state;
    const char *sim[] = {"--time-scale", "5", "--reasoning-tokens", "3", NULL};
    lmsched_client *c = tools_open(e, sim);
    lmsched_request *req = kit_req("You are terse.", "Say something.", 6);
    lmsched_result *res = NULL;
    want_reply(lmsched_chat(c, req, CALL_MS, &res), res);
    assert_null(lmsched_result_logprobs_json(res));
    assert_non_null(lmsched_result_reasoning(res));
    lmsched_result_free(res);

    assert_int_equal(lmsched_request_set_extra_bool(req, "logprobs", 1), LMSCHED_OK);
    assert_int_equal(lmsched_request_set_extra_int(req, "top_k", 5), LMSCHED_OK);
    assert_int_equal(lmsched_request_set_extra_double(req, "min_p", 0.05), LMSCHED_OK);
    want_reply(lmsched_chat(c, req, CALL_MS, &res), res);
    printf("reasoning: %s\n", lmsched_result_reasoning(res));
    json_t *lp = json_loads(lmsched_result_logprobs_json(res), 0, NULL);
    assert_true(json_is_array(lp));
    assert_true(json_array_size(lp) >= 3);
    assert_true(json_is_string(json_object_get(json_array_get(lp, 0), "token")));
    json_decref(lp);
    lmsched_result_free(res);
    lmsched_request_free(req);
    lmsched_client_close(c);
}

/* The daemon refuses a field over its limit: the result names it. */
static void test_error_field(void **state)
{
    kit_env *e = *state;
    lmsched_client *c = tools_open(e, NULL);
    lmsched_request *req = kit_req("s", "hi", 4);
    char model[400];
    memset(model, 'm', sizeof(model) - 1);
    model[sizeof(model) - 1] = '\0';
    assert_int_equal(lmsched_request_set_model(req, model), LMSCHED_OK);
    lmsched_result *res = NULL;
    assert_int_equal(lmsched_chat(c, req, CALL_MS, &res), LMSCHED_ETOOLARGE);
    printf("refused: %s\n", lmsched_result_message(res));
    assert_string_equal(lmsched_result_error_field(res), "model");
    lmsched_result_free(res);
    lmsched_request_free(req);
    lmsched_client_close(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_tool_round_trip, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_tool_call_streamed, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_tool_choice, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_json_schema, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_extra_logprobs_reasoning, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_error_field, kit_env_setup,
                                        kit_env_teardown),
    };
    return cmocka_run_group_tests_name("agent_tools", tests, NULL, NULL);
}
