/*
 * check - the cmocka side of the kit: a check that cannot be made here is
 * reported as skipped with the reason, never passed; a request built or an
 * environment started, or the test fails.
 *
 * Header only, with static functions: the kit library is linked by the
 * bench programs too, which have no cmocka. Include it after the system
 * headers of the test (cmocka.h needs <setjmp.h>, <stdarg.h>, <stddef.h>,
 * which it includes here).
 *
 * Threads: the test's main thread (cmocka's assertions jump).
 */
#ifndef LMSCHED_KIT_CHECK_H
#define LMSCHED_KIT_CHECK_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "kit/env.h"
#include "lmsched/agent.h"

/* When why is not NULL: prints "skipped: <what>: <why>" and ends the test
 * as skipped (cmocka's skip()). Call it where the checks that could be
 * made are done, usually last. */
static inline void kit_skip_if(const char *why, const char *what)
{
    if (why == NULL)
        return;
    printf("skipped: %s: %s\n", what, why);
    fflush(stdout);
    skip();
}

/* A chat request: system prompt (NULL: none), one user message, and
 * max_tokens (<= 0: unset). Fails the test if it cannot be built. */
static inline lmsched_request *kit_req(const char *system, const char *user,
                                       int max_tokens)
{
    lmsched_request *r = NULL;
    assert_int_equal(lmsched_request_alloc(&r), LMSCHED_OK);
    if (system != NULL)
        assert_int_equal(lmsched_request_set_system(r, system), LMSCHED_OK);
    assert_int_equal(lmsched_request_add_message(r, "user", user), LMSCHED_OK);
    if (max_tokens > 0)
        assert_int_equal(lmsched_request_set_max_tokens(r, max_tokens), LMSCHED_OK);
    return r;
}

/* Starts lmsim with sim_args (unless sim_args is NULL: no backend, or
 * e->backend set by the test) and the daemon with daemon_args; on failure
 * prints the child logs and fails the test. */
static inline void kit_env_start(kit_env *e, const char *const *sim_args,
                                 const char *const *daemon_args)
{
    if (sim_args != NULL && kit_env_sim_start(e, 0, sim_args) != 0) {
        kit_env_dump_logs(e);
        fail_msg("lmsim did not start");
    }
    if (kit_env_daemon_start(e, daemon_args) != 0) {
        kit_env_dump_logs(e);
        fail_msg("lmsched serve did not start");
    }
}

#endif
