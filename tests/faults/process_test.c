/*
 * process_test - processes dying under the daemon's feet: an agent process
 * killed with kill -9 while its requests run (fault 5), and the daemon
 * itself killed with kill -9 and restarted (fault 9). Real processes, real
 * signals, real ipc:// sockets.
 */
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "kit/check.h"
#include "kit/clock.h"
#include "kit/env.h"
#include "kit/json.h"
#include "kit/proc.h"
#include "kit/tally.h"
#include "lmsched/agent.h"

#define MEM "--total-ram", "64G", "--kv-per-request", "16M"
#define SMALL_MODEL "--model-size", "1073741824"

/* ---- agent processes ------------------------------------------------------ */

/*
 * Starts a separate agent process: this test binary re-executed with
 * "--agent URL N MAX_TOKENS", which opens a client, starts N chat requests
 * with lmsched_chat_async and then waits (up to a minute) for them, so it
 * can be killed with SIGKILL while they are in flight. Its output goes to
 * <e->dir>/agent.log. Returns 0 or -1.
 */
static int agent_spawn(kit_env *e, kit_proc *agent, int n, int max_tokens)
{
    char self[512], num[16], tok[16];
    if (kit_self_path(self, sizeof(self)) != 0)
        return -1;
    snprintf(agent->log, sizeof(agent->log), "%s/agent.log", e->dir);
    snprintf(num, sizeof(num), "%d", n);
    snprintf(tok, sizeof(tok), "%d", max_tokens);
    const char *argv[] = {self, "--agent", e->url, num, tok, NULL};
    return kit_proc_spawn(agent, argv, KIT_OUT_LOG);
}

/* The agent process (agent_spawn): returns its exit status. */
static int agent_main(const char *url, int n, int max_tokens)
{
    lmsched_client *c = NULL;
    if (lmsched_client_open(&c, url) != LMSCHED_OK)
        return 1;
    kit_tally t;
    kit_tally_init(&t);
    int started = 0;
    for (int i = 0; i < n; i++) {
        char user[64];
        snprintf(user, sizeof(user), "question %d", i);
        lmsched_request *r = NULL;
        if (lmsched_request_alloc(&r) != LMSCHED_OK)
            break;
        /* Distinct prompts: no prefix is shared, so the policy runs them
         * side by side instead of holding followers for a leader. */
        char sys[96];
        snprintf(sys, sizeof(sys),
                 "You are agent %d, conversation %d; you will be killed.", (int)getpid(),
                 i);
        lmsched_request_set_system(r, sys);
        lmsched_request_add_message(r, "user", user);
        if (max_tokens > 0)
            lmsched_request_set_max_tokens(r, max_tokens);
        if (lmsched_chat_async(c, r, 120000, kit_tally_cb, &t) == LMSCHED_OK)
            started++;
        lmsched_request_free(r);
    }
    printf("agent %d: %d requests sent\n", (int)getpid(), started);
    fflush(stdout);
    int done = kit_tally_wait(&t, started, 60000);
    printf("agent %d: %d replies\n", (int)getpid(), done);
    lmsched_client_close(c);
    kit_tally_fini(&t);
    return started == n ? 0 : 1;
}

/* ---- the faults ------------------------------------------------------------ */

/* Fault 5: an agent process is killed with kill -9 with four requests
 * streaming and two queued. The daemon cancels their transfers (lmsim sees
 * the connections close and frees its slots) and forgets the queued ones. */
static void test_agent_killed(void **state)
{
    kit_env *e = *state;
    /* Real time, 2000-token answers: they would stream for 44 s. */
    const char *sim[] = {"--slots", "4", "--reply-tokens", "2000", SMALL_MODEL, NULL};
    const char *d[] = {MEM, NULL};
    kit_env_start(e, sim, d);
    kit_proc agent = {0};
    assert_int_equal(agent_spawn(e, &agent, 6, 0), 0);
    int64_t active = kit_env_sim_wait(e, "active", 4, 4, 10000);
    int64_t depth = kit_env_status_wait(e, "queue.depth", 2, 2, 5000);
    if (active != 4 || depth != 2)
        kit_env_dump_logs(e);
    assert_int_equal(active, 4);
    assert_int_equal(depth, 2);
    kit_sleep_ms(300); /* streaming by now */

    int64_t t_kill = kit_now_ms();
    assert_int_equal(kit_proc_stop(&agent, SIGKILL, 5000), 128 + SIGKILL);
    /* Poll both sides as fast as they answer. */
    int64_t inflight = kit_env_status_wait(e, "inflight", 0, 0, 5000);
    int64_t t_daemon = kit_now_ms();
    assert_int_equal(inflight, 0);
    assert_int_equal(kit_env_status_wait(e, "queue.depth", 0, 0, 1000), 0);
    active = kit_env_sim_wait(e, "active", 0, 0, 5000);
    int64_t t_sim = kit_now_ms();
    assert_int_equal(active, 0);
    json_t *sj = kit_env_status(e);
    assert_int_equal(kit_json_int(sj, "requests.failed_by_class.canceled"), 6);
    json_decref(sj);

    /* The freed slots serve the next agent at once. */
    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, e->url), LMSCHED_OK);
    lmsched_request *r = kit_req("sys", "after the kill", 4);
    lmsched_result *res = NULL;
    assert_int_equal(lmsched_chat(c, r, 20000, &res), LMSCHED_OK);
    lmsched_result_free(res);
    lmsched_request_free(r);
    lmsched_client_close(c);
    printf(
        "fault 5: agent killed (kill -9) with 4 requests streaming and 2 queued: daemon "
        "had 0 in flight and 0 queued %lld ms after the kill, lmsim's slots were free "
        "after "
        "%lld ms; 6 requests canceled\n",
        (long long)(t_daemon - t_kill), (long long)(t_sim - t_kill));
    assert_true(t_sim - t_kill < 5000);
}

/* Fault 9: the daemon is killed with kill -9 with requests out and
 * restarted. Agents get no_daemon, never a hang past their timeout; a
 * request made while it is down waits for it (connect timeout) and
 * succeeds once it is back; the same clients work after the restart. */
static void test_daemon_killed(void **state)
{
    kit_env *e = *state;
    const char *sim[] = {"--slots", "4", SMALL_MODEL, NULL};
    const char *d[] = {MEM, NULL};
    kit_env_start(e, sim, d);
    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, e->url), LMSCHED_OK);
    kit_tally t;
    kit_tally_init(&t);
    enum { N = 10, TIMEOUT = 8000 };
    for (int i = 0; i < N; i++) {
        char sys[64];
        snprintf(sys, sizeof(sys), "Agent %d of the restart test.", i);
        lmsched_request *r = kit_req(sys, "hello", 0);
        assert_int_equal(lmsched_chat_async(c, r, TIMEOUT, kit_tally_cb, &t), LMSCHED_OK);
        lmsched_request_free(r);
    }
    assert_int_equal(kit_env_sim_wait(e, "active", 4, 4, 10000), 4);

    int64_t t_kill = kit_now_ms();
    assert_int_equal(kit_proc_stop(&e->daemon, SIGKILL, 5000), 128 + SIGKILL);
    assert_int_equal(kit_tally_wait(&t, N, TIMEOUT + 2000), N);
    int64_t answered_ms = t.last_ms - t_kill;
    assert_int_equal(t.by_code[LMSCHED_OK] + t.by_code[LMSCHED_ENODAEMON], N);
    assert_true(t.by_code[LMSCHED_ENODAEMON] >= 1);
    assert_true(answered_ms < TIMEOUT);
    printf("no_daemon error: %s\n", t.sample[LMSCHED_ENODAEMON]);

    /* While it is down: a short connect timeout gives no_daemon quickly. */
    lmsched_client *quick;
    assert_int_equal(lmsched_client_open(&quick, e->url), LMSCHED_OK);
    assert_int_equal(lmsched_client_set_connect_timeout(quick, 500), LMSCHED_OK);
    lmsched_request *r = kit_req("sys", "anyone?", 4);
    lmsched_result *res = NULL;
    int64_t t0 = kit_now_ms();
    assert_int_equal(lmsched_chat(quick, r, 5000, &res), LMSCHED_ENODAEMON);
    int64_t nodaemon_ms = kit_now_ms() - t0;
    assert_true(nodaemon_ms < 4000);
    lmsched_result_free(res);
    lmsched_client_close(quick);

    /* A patient request sent while it is down goes out once it is back. */
    lmsched_client *patient;
    assert_int_equal(lmsched_client_open(&patient, e->url), LMSCHED_OK);
    assert_int_equal(lmsched_client_set_connect_timeout(patient, 15000), LMSCHED_OK);
    kit_tally pt;
    kit_tally_init(&pt);
    assert_int_equal(lmsched_chat_async(patient, r, 20000, kit_tally_cb, &pt),
                     LMSCHED_OK);
    kit_sleep_ms(300);
    assert_int_equal(pt.done, 0);

    int64_t t_restart = kit_now_ms();
    if (kit_env_daemon_start(e, d) != 0) {
        kit_env_dump_logs(e);
        fail_msg("daemon did not restart");
    }
    assert_int_equal(kit_tally_wait(&pt, 1, 20000), 1);
    assert_int_equal(pt.by_code[LMSCHED_OK], 1);
    int64_t patient_ms = pt.last_ms - t_restart;

    /* The first client reconnected by itself. */
    for (int i = 0; i < 5; i++) {
        res = NULL;
        int rc = lmsched_chat(c, r, 20000, &res);
        if (rc != LMSCHED_OK) {
            kit_env_dump_logs(e);
            fail_msg("the old client's request %d after the restart: %s: %s", i,
                     lmsched_err_name(rc),
                     res != NULL && lmsched_result_message(res) ? lmsched_result_message(res)
                                                                : "(no message)");
        }
        lmsched_result_free(res);
    }
    printf(
        "fault 9: daemon killed (kill -9) with 4 requests at the backend and 6 queued: "
        "%d no_daemon, %d ok, all answered %lld ms after the kill (timeout %d ms); a "
        "request while it was down: no_daemon after %lld ms (connect timeout 500 ms); a "
        "patient one was served %lld ms after the restart; the old client's next 5 "
        "requests succeeded\n",
        t.by_code[LMSCHED_ENODAEMON], t.by_code[LMSCHED_OK], (long long)answered_ms,
        TIMEOUT, (long long)nodaemon_ms, (long long)patient_ms);
    lmsched_request_free(r);
    lmsched_client_close(patient);
    lmsched_client_close(c);
    kit_tally_fini(&t);
    kit_tally_fini(&pt);
}

int main(int argc, char **argv)
{
    /* Re-executed as an agent process by agent_spawn. */
    if (argc == 5 && strcmp(argv[1], "--agent") == 0)
        return agent_main(argv[2], atoi(argv[3]), atoi(argv[4]));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_agent_killed, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_daemon_killed, kit_env_setup,
                                        kit_env_teardown),
    };
    return cmocka_run_group_tests_name("faults_process", tests, NULL, NULL);
}
