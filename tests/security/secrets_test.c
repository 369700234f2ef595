/*
 * secrets_test - the LM Studio token (LM_API_TOKEN) reaches the LLM server
 * and nothing else: a real daemon at debug log level, given the token,
 * serves a request from lmsim; the token appears neither in the daemon's
 * stderr nor in `lmsched status --json`.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kit/check.h"
#include "kit/daemon.h"
#include "kit/env.h"
#include "kit/fs.h"
#include "kit/proc.h"
#include "lmsched/agent.h"

#define SECRET "some-secret-value"

static void test_lm_api_token_not_leaked(void **state)
{
    (void)state;
    kit_env e;
    char out[600];

    kit_env_init(&e);
    /* lmsim first, so only the daemon gets the token. */
    if (kit_env_sim_start(&e, 0, (const char *const[]){"--time-scale", "20", NULL}) !=
        0) {
        kit_env_dump_logs(&e);
        fail_msg("lmsim did not start");
    }
    setenv("LM_API_TOKEN", SECRET, 1);
    /* The kit runs the daemon at --log-level debug. */
    int started = kit_env_daemon_start(&e, NULL);
    unsetenv("LM_API_TOKEN");
    if (started != 0) {
        kit_env_dump_logs(&e);
        fail_msg("lmsched serve did not start");
    }

    /* A request that goes all the way to the backend and back. */
    lmsched_client *c = NULL;
    lmsched_result *res = NULL;
    lmsched_request *r = kit_req("You are a test.", "tell me a secret", 16);
    assert_int_equal(lmsched_client_open(&c, e.url), LMSCHED_OK);
    assert_int_equal(lmsched_chat(c, r, 30000, &res), LMSCHED_OK);
    assert_non_null(lmsched_result_content(res));
    assert_null(strstr(lmsched_result_content(res), SECRET));
    lmsched_result_free(res);
    lmsched_request_free(r);
    lmsched_client_close(c);

    snprintf(out, sizeof(out), "%s/status.json", e.dir);
    assert_int_equal(
        kit_lmsched_run((const char *const[]){"status", "--json", "--url", e.url, NULL},
                        out, 20000),
        0);
    /* The status document is real: it counted the request. */
    assert_true(kit_fs_contains(out, "\"completed\": 1"));
    assert_false(kit_fs_contains(out, SECRET));
    /* The plain table too. */
    assert_int_equal(
        kit_lmsched_run((const char *const[]){"status", "--url", e.url, NULL}, out,
                        20000),
        0);
    assert_false(kit_fs_contains(out, SECRET));

    assert_int_equal(kit_proc_stop(&e.daemon, SIGTERM, 10000), 0);
    /* The daemon said it had a token (so the check above is meaningful),
     * logged at debug level, and never printed the token itself. */
    assert_true(kit_fs_contains(e.daemon.log, "with LM_API_TOKEN"));
    assert_true(kit_fs_contains(e.daemon.log, "debug"));
    assert_false(kit_fs_contains(e.daemon.log, SECRET));
    /* Nor any part of it long enough to matter. */
    assert_false(kit_fs_contains(e.daemon.log, "secret-val"));
    printf("LM_API_TOKEN: absent from %s and from status\n", e.daemon.log);
    kit_env_fini(&e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lm_api_token_not_leaked),
    };
    unsetenv("LMSCHED_AUTH_TOKEN");
    return cmocka_run_group_tests(tests, NULL, NULL);
}
