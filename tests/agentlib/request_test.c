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
    assert_string_equal(lmsched_version(), "0.1.0");
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
        cmocka_unit_test_setup_teardown(test_default_url, env_save, env_restore),
        cmocka_unit_test(test_version_and_strerror),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
