/*
 * real_test - the daemon against a real llama.cpp llama-server (issue 5).
 *
 * The server is not started here: scripts/llama-server starts one (4 slots
 * of 8192 tokens, the tiny random-weight model) and LMSCHED_LLAMA_URL names
 * it. Without that variable every test is skipped, so the suite is harmless
 * where no server can run. Each test starts its own `lmsched serve` through
 * the integration harness; the server is shared, so tests use prompts made
 * unique per run and assert only on what another test cannot disturb.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "integration/harness.h"
#include "lmsched/agent.h"

/* Generous hang guard; a chat of 16 tokens takes milliseconds. */
#define REAL_TIMEOUT_MS 60000

static const char *real_url(void)
{
    const char *u = getenv("LMSCHED_LLAMA_URL");
    return u && *u ? u : NULL;
}

/* cmocka 1.1 counts a skip() in a setup function as an error, so without a
 * server the setup leaves the state NULL and each test skips itself. */
static int setup(void **state)
{
    const char *url = real_url();
    *state = NULL;
    if (url == NULL)
        return 0;
    h_env *e = calloc(1, sizeof(*e));
    assert_non_null(e);
    h_env_init(e);
    assert_true(strlen(url) < sizeof(e->backend));
    snprintf(e->backend, sizeof(e->backend), "%s", url);
    *state = e;
    if (h_daemon_start(e, NULL) != 0) {
        h_dump_logs(e);
        fail_msg("lmsched serve did not start against %s", url);
    }
    return 0;
}

static int teardown(void **state)
{
    h_env *e = *state;
    if (e == NULL)
        return 0;
    h_env_fini(e);
    free(e);
    return 0;
}

/* The test's environment, or a skip when no server was named. */
static h_env *real_env(void **state)
{
    if (*state == NULL)
        skip();
    return *state;
}

/* A system prompt no earlier run left in the server's cache. */
static void real_unique_system(char *buf, size_t len, const char *what)
{
    snprintf(buf, len,
             "Run %ld.%d (%s). You are a careful assistant. The software license grants "
             "permission to use, copy, modify and distribute the program under the terms "
             "of the license, provided that the copyright notice and this permission "
             "notice appear in all copies of the software and its documentation.",
             (long)time(NULL), (int)getpid(), what);
}

static lmsched_request *real_req(const char *system, const char *user, int max_tokens)
{
    lmsched_request *r = NULL;
    assert_int_equal(lmsched_request_alloc(&r), LMSCHED_OK);
    if (system)
        assert_int_equal(lmsched_request_set_system(r, system), LMSCHED_OK);
    assert_int_equal(lmsched_request_add_message(r, "user", user), LMSCHED_OK);
    assert_int_equal(lmsched_request_set_max_tokens(r, max_tokens), LMSCHED_OK);
    assert_int_equal(lmsched_request_set_temperature(r, 0.0), LMSCHED_OK);
    return r;
}

/* Runs one chat; fails the test (with the daemon's log) unless it succeeds. */
static lmsched_result *real_chat_ok(h_env *e, lmsched_client *c, const lmsched_request *r)
{
    lmsched_result *res = NULL;
    int rc = lmsched_chat(c, r, REAL_TIMEOUT_MS, &res);
    if (rc != LMSCHED_OK) {
        h_dump_logs(e);
        fail_msg("chat failed: %s: %s", lmsched_strerror(rc),
                 res && lmsched_result_message(res) ? lmsched_result_message(res) : "");
    }
    return res;
}

/* A chat round trip: content and the server's usage come back. */
static void test_chat_round_trip(void **state)
{
    h_env *e = real_env(state);
    char sys[512];
    real_unique_system(sys, sizeof(sys), "round trip");
    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, e->url), LMSCHED_OK);
    lmsched_request *r = real_req(sys, "Say hello.", 16);
    lmsched_result *res = real_chat_ok(e, c, r);

    assert_non_null(lmsched_result_content(res));
    assert_true(strlen(lmsched_result_content(res)) > 0);
    assert_non_null(lmsched_result_model(res));
    /* The system prompt alone is over 50 tokens with this vocabulary. */
    assert_true(lmsched_result_prompt_tokens(res) > 50);
    int64_t n = lmsched_result_completion_tokens(res);
    assert_true(n >= 1 && n <= 16);
    /* Random weights almost never pick an end token; when the reply ran to
     * its limit, the server must have counted exactly the limit. */
    if (strcmp(lmsched_result_finish_reason(res), "length") == 0)
        assert_int_equal(n, 16);
    assert_true(lmsched_result_cached_tokens(res) >= 0);
    assert_true(lmsched_result_total_ms(res) >= lmsched_result_ttft_ms(res));

    lmsched_result_free(res);
    lmsched_request_free(r);
    lmsched_client_close(c);
}

/* The same system prompt twice: the second reuses the first's prefix, as
 * reported by llama-server's prompt_tokens_details.cached_tokens. */
static void test_cached_system_prompt(void **state)
{
    h_env *e = real_env(state);
    char sys[512];
    real_unique_system(sys, sizeof(sys), "cache");
    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, e->url), LMSCHED_OK);

    lmsched_request *r1 = real_req(sys, "First question about the license.", 4);
    lmsched_result *res1 = real_chat_ok(e, c, r1);
    int64_t cached1 = lmsched_result_cached_tokens(res1);
    int64_t prompt1 = lmsched_result_prompt_tokens(res1);

    lmsched_request *r2 = real_req(sys, "Second question about the program.", 4);
    lmsched_result *res2 = real_chat_ok(e, c, r2);
    int64_t cached2 = lmsched_result_cached_tokens(res2);

    /* The first can only share the chat template's opening with older
     * prompts (the run id comes early); the second shares the system prompt. */
    assert_true(cached1 >= 0 && cached1 < prompt1 / 4);
    assert_true(cached2 > prompt1 / 2);
    assert_true(cached2 < lmsched_result_prompt_tokens(res2));

    lmsched_result_free(res1);
    lmsched_result_free(res2);
    lmsched_request_free(r1);
    lmsched_request_free(r2);
    lmsched_client_close(c);
}

/* A prompt longer than a slot's context: the agent gets an HTTP error that
 * carries llama.cpp's own explanation. */
static void test_prompt_over_context(void **state)
{
    h_env *e = real_env(state);
    /* 9000 known words: one token each, over the 8192-token slot. */
    static const char word[] = "license ";
    size_t n = 9000, len = n * (sizeof(word) - 1);
    char *user = malloc(len + 1);
    assert_non_null(user);
    for (size_t i = 0; i < n; i++)
        memcpy(user + i * (sizeof(word) - 1), word, sizeof(word) - 1);
    user[len - 1] = '\0';

    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, e->url), LMSCHED_OK);
    lmsched_request *r = real_req(NULL, user, 4);
    lmsched_result *res = NULL;
    int rc = lmsched_chat(c, r, REAL_TIMEOUT_MS, &res);
    assert_int_equal(rc, LMSCHED_EBACKEND_HTTP);
    assert_non_null(res);
    assert_int_equal(lmsched_result_error(res), LMSCHED_EBACKEND_HTTP);
    const char *msg = lmsched_result_message(res);
    assert_non_null(msg);
    if (strstr(msg, "exceeds the available context size") == NULL)
        fail_msg("message lacks llama.cpp's explanation: %s", msg);

    lmsched_result_free(res);
    lmsched_request_free(r);
    lmsched_client_close(c);
    free(user);
}

/* The daemon finds out what it talks to from /props: llama.cpp, 4 slots of
 * 8192 tokens (scripts/llama-server starts it with -np 4 -c 32768). */
static void test_autodetect_props(void **state)
{
    h_env *e = real_env(state);
    json_t *st = NULL;
    /* The first probe may still be under way when the daemon answers. */
    for (int i = 0; i < 100; i++) {
        st = h_status(e);
        if (st && h_json_int(st, "backend.slots") > 0)
            break;
        json_decref(st);
        st = NULL;
        usleep(100 * 1000);
    }
    if (st == NULL) {
        h_dump_logs(e);
        fail_msg("no status with backend slots");
    }
    json_t *kind = h_json_get(st, "backend.kind");
    assert_true(json_is_string(kind));
    assert_string_equal(json_string_value(kind), "llamacpp");
    assert_int_equal(h_json_int(st, "backend.slots"), 4);
    assert_int_equal(h_json_int(st, "backend.context_length"), 8192);
    assert_true(json_is_true(h_json_get(st, "backend.healthy")));
    json_decref(st);
}

int main(void)
{
    if (real_url() == NULL)
        printf("skipped: LMSCHED_LLAMA_URL not set\n");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_chat_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cached_system_prompt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prompt_over_context, setup, teardown),
        cmocka_unit_test_setup_teardown(test_autodetect_props, setup, teardown),
    };
    return cmocka_run_group_tests_name("real", tests, NULL, NULL);
}
