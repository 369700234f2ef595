/*
 * backend_test - the LLM server misbehaving under a real daemon: down when
 * the daemon starts (fault 1), killed with kill -9 mid-stream and restarted
 * on its port (2), "Channel Error" 500s on a fifth of the requests (3),
 * accepting requests and never answering (4), and answering garbage (10).
 * Real lmsim, real `lmsched serve`, agents through agentlib.
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
#include <unistd.h>

#include <cmocka.h>

#include "kit/check.h"
#include "kit/clock.h"
#include "kit/env.h"
#include "kit/json.h"
#include "kit/net.h"
#include "kit/proc.h"
#include "kit/pstat.h"
#include "kit/tally.h"
#include "lmsched/agent.h"

#define FAST "--time-scale", "50"
/* Fixed memory numbers so the budget never depends on the test machine:
 * 64 GiB assumed, 16 MiB of KV per request, a 1 GiB model. */
#define MEM "--total-ram", "64G", "--kv-per-request", "16M"
#define SMALL_MODEL "--model-size", "1073741824"

static void dump_if(kit_env *e, bool bad)
{
    if (bad)
        kit_env_dump_logs(e);
}

/* Starts lmsim on exactly this port (after a kill -9 the port is free at
 * once: lmsim's listener sets SO_REUSEADDR). Returns 0 or -1. */
static int sim_restart(kit_env *e, int port, const char *const *args)
{
    /* The port was just in use; a few tries cover a slow socket release. */
    for (int i = 0; i < 20; i++) {
        if (kit_env_sim_start(e, port, args) == 0)
            return 0;
        kit_sleep_ms(100);
    }
    return -1;
}

/* Fault 1: no backend when the daemon starts. Requests are queued, not
 * failed; those whose deadline passes get DEADLINE; the rest are served
 * once lmsim comes up on the port. */
static void test_backend_down_at_start(void **state)
{
    kit_env *e = *state;
    int port = kit_net_free_port();
    assert_true(port > 0);
    snprintf(e->backend, sizeof(e->backend), "http://127.0.0.1:%d", port);
    const char *d[] = {MEM, "--backend-wait", "60000", NULL};
    kit_env_start(e, NULL, d);

    json_t *st = kit_env_status(e);
    assert_non_null(st);
    assert_true(json_is_false(kit_json_get(st, "backend.healthy")));
    const char *last = json_string_value(kit_json_get(st, "backend.last_error"));
    assert_non_null(last);
    printf("backend down at start: status says healthy=false, last_error \"%s\"\n", last);
    json_decref(st);

    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, e->url), LMSCHED_OK);
    kit_tally served, late;
    kit_tally_init(&served);
    kit_tally_init(&late);
    for (int i = 0; i < 6; i++) {
        char user[32];
        snprintf(user, sizeof(user), "question %d", i);
        lmsched_request *r = kit_req("You wait for the backend.", user, 4);
        if (i >= 4) /* a deadline long enough to outlive the outage */
            assert_int_equal(lmsched_request_set_deadline_ms(r, 30000), LMSCHED_OK);
        assert_int_equal(lmsched_chat_async(c, r, 60000, kit_tally_cb, &served),
                         LMSCHED_OK);
        lmsched_request_free(r);
    }
    for (int i = 0; i < 2; i++) {
        lmsched_request *r = kit_req("You wait for the backend.", "in a hurry", 4);
        assert_int_equal(lmsched_request_set_deadline_ms(r, 600), LMSCHED_OK);
        assert_int_equal(lmsched_chat_async(c, r, 60000, kit_tally_cb, &late),
                         LMSCHED_OK);
        lmsched_request_free(r);
    }
    /* All eight wait in the queue: nothing was failed for the backend. */
    int64_t depth = kit_env_status_wait(e, "queue.depth", 8, 8, 5000);
    dump_if(e, depth != 8);
    assert_int_equal(depth, 8);
    assert_int_equal(kit_tally_wait(&late, 2, 5000), 2);
    assert_int_equal(late.by_code[LMSCHED_EDEADLINE], 2);
    printf("deadline error: %s\n", late.sample[LMSCHED_EDEADLINE]);
    assert_int_equal(served.done, 0);
    assert_int_equal(kit_env_status_wait(e, "queue.depth", 6, 6, 2000), 6);

    int64_t t_up = kit_now_ms();
    const char *sim[] = {FAST, SMALL_MODEL, NULL};
    assert_int_equal(kit_env_sim_start(e, port, sim), 0);
    int done = kit_tally_wait(&served, 6, 20000);
    dump_if(e, done != 6 || served.by_code[LMSCHED_OK] != 6);
    assert_int_equal(done, 6);
    assert_int_equal(served.by_code[LMSCHED_OK], 6);
    st = kit_env_status(e);
    assert_true(json_is_true(kit_json_get(st, "backend.healthy")));
    assert_int_equal(kit_json_int(st, "requests.failed_by_class.deadline"), 2);
    assert_int_equal(kit_json_int(st, "requests.completed"), 6);
    json_decref(st);
    printf("fault 1: backend down at start: 8 requests queued, 0 failed for it; 2 past "
           "their "
           "600 ms deadline got 'deadline'; 6 served, the last %lld ms after lmsim came "
           "up\n",
           (long long)(served.last_ms - t_up));
    lmsched_client_close(c);
    kit_tally_fini(&served);
    kit_tally_fini(&late);
}

/* Fault 1, the bound: a request with no deadline waits for an unreachable
 * backend at most --backend-wait, then gets a clear backend_down error. */
static void test_backend_wait_bound(void **state)
{
    kit_env *e = *state;
    int port = kit_net_free_port();
    snprintf(e->backend, sizeof(e->backend), "http://127.0.0.1:%d", port);
    const char *d[] = {MEM, "--backend-wait", "700", NULL};
    kit_env_start(e, NULL, d);
    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, e->url), LMSCHED_OK);
    lmsched_request *r = kit_req("sys", "anyone there?", 4);
    lmsched_result *res = NULL;
    int64_t t0 = kit_now_ms();
    int rc = lmsched_chat(c, r, 20000, &res);
    int64_t ms = kit_now_ms() - t0;
    assert_int_equal(rc, LMSCHED_EBACKEND_DOWN);
    const char *msg = lmsched_result_message(res);
    assert_non_null(strstr(msg, "unreachable"));
    assert_non_null(strstr(msg, e->backend));
    assert_true(ms >= 700);
    assert_true(ms < 10000); /* hang guard */
    printf("fault 1b: --backend-wait 700, no deadline: backend_down after %lld ms: %s\n",
           (long long)ms, msg);
    lmsched_result_free(res);
    lmsched_request_free(r);
    lmsched_client_close(c);
}

/* Fault 2: lmsim killed with kill -9 while two answers stream and two
 * requests are still in prefill, then restarted on the same port. The two
 * without a token are retried and succeed; the two cut get an error that
 * says the answer was cut. */
static void test_backend_killed_mid_stream(void **state)
{
    kit_env *e = *state;
    /* Real time: 400-token answers take ~9 s, so they are mid-stream. */
    const char *sim[] = {"--slots", "4", "--reply-tokens", "400", SMALL_MODEL, NULL};
    const char *d[] = {MEM, "--backend-wait", "30000", NULL};
    kit_env_start(e, sim, d);
    int port = e->sim_port;
    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, e->url), LMSCHED_OK);
    kit_tally cut, retried;
    kit_tally_init(&cut);
    kit_tally_init(&retried);
    for (int i = 0; i < 2; i++) {
        char sys[64];
        snprintf(sys, sizeof(sys), "Streamer %d.", i);
        lmsched_request *r = kit_req(sys, "a long answer please", 0);
        assert_int_equal(lmsched_chat_async(c, r, 60000, kit_tally_cb, &cut), LMSCHED_OK);
        lmsched_request_free(r);
    }
    /* Both in slots; their 28-token prompts prefill in 35 simulated ms, so
     * half a second later each has streamed about 20 tokens. (lmsim counts
     * completion_tokens only when a request ends.) */
    int64_t busy = kit_env_sim_wait(e, "active", 2, 2, 10000);
    dump_if(e, busy != 2);
    assert_int_equal(busy, 2);
    kit_sleep_ms(500);
    /* Two requests with 2000-token prompts: seconds of prefill, no token. */
    char *big = malloc(8001);
    assert_non_null(big);
    for (int i = 0; i < 2; i++) {
        for (int k = 0; k < 8000; k++)
            big[k] = (char)('a' + (k * 7 + i * 3) % 26);
        big[8000] = '\0';
        lmsched_request *r = kit_req(big, "summarise", 8);
        assert_int_equal(lmsched_chat_async(c, r, 60000, kit_tally_cb, &retried),
                         LMSCHED_OK);
        lmsched_request_free(r);
    }
    free(big);
    int64_t active = kit_env_sim_wait(e, "active", 4, 4, 10000);
    dump_if(e, active != 4);
    assert_int_equal(active, 4);
    kit_sleep_ms(200);

    int64_t t_kill = kit_now_ms();
    assert_int_equal(kit_proc_stop(&e->sim, SIGKILL, 5000), 128 + SIGKILL);
    assert_int_equal(kit_tally_wait(&cut, 2, 10000), 2);
    assert_int_equal(cut.by_code[LMSCHED_EBACKEND_STREAM], 2);
    assert_non_null(strstr(cut.sample[LMSCHED_EBACKEND_STREAM], "answer was cut"));
    printf("cut mid-answer: %s\n", cut.sample[LMSCHED_EBACKEND_STREAM]);
    /* The other two are waiting for the backend, not failed. */
    int64_t healthy = kit_env_status_wait(e, "inflight", 2, 2, 3000);
    assert_int_equal(healthy, 2);
    kit_sleep_ms(500);
    assert_int_equal(retried.done, 0);

    int64_t t_restart = kit_now_ms();
    const char *sim2[] = {FAST, "--slots", "4", SMALL_MODEL, NULL};
    assert_int_equal(sim_restart(e, port, sim2), 0);
    int done = kit_tally_wait(&retried, 2, 20000);
    dump_if(e, done != 2 || retried.by_code[LMSCHED_OK] != 2);
    assert_int_equal(done, 2);
    assert_int_equal(retried.by_code[LMSCHED_OK], 2);
    assert_true(retried.max_retries >= 1);
    printf(
        "fault 2: lmsim killed (kill -9) with 2 answers streaming and 2 in prefill: 2 "
        "cut "
        "(error \"the answer was cut...\", %lld ms after the kill), 2 retried and served "
        "%lld ms after lmsim restarted on port %d (%u retries in total)\n",
        (long long)(cut.last_ms - t_kill), (long long)(retried.last_ms - t_restart), port,
        retried.retries);
    lmsched_client_close(c);
    kit_tally_fini(&cut);
    kit_tally_fini(&retried);
}

/* Fault 3: 20% of requests fail with LM Studio's "Channel Error" 500. All
 * succeed within the retry limit, and status counts the retries. */
static void test_channel_errors(void **state)
{
    kit_env *e = *state;
    const char *sim[] = {FAST, "--fail-rate", "0.2", SMALL_MODEL, NULL};
    /* 0.2^7 per request: 50 requests all succeed unless something is wrong. */
    const char *d[] = {MEM, "--max-retries", "6", NULL};
    kit_env_start(e, sim, d);
    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, e->url), LMSCHED_OK);
    kit_tally t;
    kit_tally_init(&t);
    enum { N = 50 };
    for (int i = 0; i < N; i++) {
        char user[32];
        snprintf(user, sizeof(user), "question %d", i);
        lmsched_request *r = kit_req("You are reliable.", user, 4);
        assert_int_equal(lmsched_chat_async(c, r, 60000, kit_tally_cb, &t), LMSCHED_OK);
        lmsched_request_free(r);
    }
    int done = kit_tally_wait(&t, N, 60000);
    dump_if(e, done != N || t.by_code[LMSCHED_OK] != N);
    assert_int_equal(done, N);
    assert_int_equal(t.by_code[LMSCHED_OK], N);
    json_t *stats = kit_env_sim_get(e, "/sim/stats");
    json_t *st = kit_env_status(e);
    assert_non_null(stats);
    assert_non_null(st);
    int64_t injected = kit_json_int(stats, "faults.fail");
    int64_t retried = kit_json_int(st, "requests.retried");
    assert_true(injected >= 1);
    /* Each Channel Error cost exactly one retry, and status counted it. */
    assert_int_equal(retried, injected);
    assert_int_equal((int64_t)t.retries, injected);
    printf("fault 3: --fail-rate 0.2: %d/%d succeeded; %lld Channel Errors injected, "
           "requests.retried %lld in status (at most %u for one request)\n",
           t.by_code[LMSCHED_OK], N, (long long)injected, (long long)retried,
           t.max_retries);
    json_decref(stats);
    json_decref(st);
    lmsched_client_close(c);
    kit_tally_fini(&t);
}

/* Fault 4: half the requests are accepted and never answered. The daemon's
 * request timeout fires, the agent gets backend_timeout, and the slot is
 * freed: with one request at a time, later requests still run. */
static void test_backend_hangs(void **state)
{
    kit_env *e = *state;
    const char *sim[] = {FAST, "--hang-rate", "0.5", SMALL_MODEL, NULL};
    const char *d[] = {MEM, "--request-timeout", "800", "--max-concurrent",
                       "1", "--max-retries",     "0",   NULL};
    kit_env_start(e, sim, d);
    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, e->url), LMSCHED_OK);
    enum { N = 8 };
    int ok = 0, hung = 0, ok_after_hang = 0;
    int64_t tmin = INT64_MAX, tmax = 0;
    char sample[512] = "";
    for (int i = 0; i < N; i++) {
        char user[32];
        snprintf(user, sizeof(user), "question %d", i);
        lmsched_request *r = kit_req("sys", user, 4);
        lmsched_result *res = NULL;
        int64_t t0 = kit_now_ms();
        int rc = lmsched_chat(c, r, 10000, &res);
        int64_t ms = kit_now_ms() - t0;
        if (rc == LMSCHED_OK) {
            ok++;
            if (hung)
                ok_after_hang++;
        } else {
            if (rc != LMSCHED_EBACKEND_TIMEOUT)
                kit_env_dump_logs(e);
            assert_int_equal(rc, LMSCHED_EBACKEND_TIMEOUT);
            hung++;
            tmin = ms < tmin ? ms : tmin;
            tmax = ms > tmax ? ms : tmax;
            assert_true(ms >= 790); /* the timeout cannot fire early */
            assert_true(ms < 8000); /* hang guard */
            snprintf(sample, sizeof(sample), "%s", lmsched_result_message(res));
        }
        lmsched_result_free(res);
        lmsched_request_free(r);
    }
    assert_true(hung >= 1);
    assert_true(ok_after_hang >= 1);
    /* The daemon closed the hung connections and holds nothing. */
    int64_t hanging = kit_env_sim_wait(e, "hanging", 0, 0, 3000);
    assert_int_equal(hanging, 0);
    assert_int_equal(kit_env_status_wait(e, "inflight", 0, 0, 2000), 0);
    json_t *stats = kit_env_sim_get(e, "/sim/stats");
    assert_int_equal(kit_json_int(stats, "faults.hang"), hung);
    json_decref(stats);
    printf("timeout error: %s\n", sample);
    printf("fault 4: --hang-rate 0.5, --request-timeout 800: %d of %d hung and got "
           "backend_timeout after %lld-%lld ms; %d served (%d after a hang, one slot); "
           "hung connections left in lmsim: %lld\n",
           hung, N, (long long)tmin, (long long)tmax, ok, ok_after_hang,
           (long long)hanging);
    lmsched_client_close(c);
}

/* Fault 10: the backend answers garbage. Each kind gets a clear error, the
 * daemon does not crash, and its memory stays bounded even when the answer
 * is 256 MiB long. */
static void test_backend_garbage(void **state)
{
    kit_env *e = *state;
    const char *rss_why = kit_pstat_unusable(KIT_PSTAT_RSS);
    static const struct {
        const char *mode;
        int code;
        const char *needle;
    } cases[] = {
        {"json", LMSCHED_EBACKEND_STREAM, "malformed response"},
        {"truncate", LMSCHED_EBACKEND_STREAM, "answer was cut"},
        {"html", LMSCHED_EBACKEND_HTTP, "Bad Gateway"},
        {"huge", LMSCHED_ETOOLARGE, "--max-response-bytes"},
    };
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        const char *sim[] = {
            FAST,          SMALL_MODEL,       "--garbage-rate", "1", "--garbage-mode",
            cases[k].mode, "--garbage-bytes", "268435456",      NULL};
        const char *d[] = {MEM, "--max-response-bytes", "1M", "--max-retries", "1", NULL};
        kit_env_start(e, sim, d);
        long rss0 = kit_pstat_rss_kb(e->daemon.pid);
        lmsched_client *c;
        assert_int_equal(lmsched_client_open(&c, e->url), LMSCHED_OK);
        char msg[512] = "";
        for (int i = 0; i < 3; i++) {
            lmsched_request *r = kit_req("sys", "hello", 8);
            lmsched_result *res = NULL;
            int rc = lmsched_chat(c, r, 30000, &res);
            if (rc != cases[k].code ||
                !strstr(lmsched_result_message(res), cases[k].needle)) {
                printf("mode %s: got %d: %s\n", cases[k].mode, rc,
                       res ? lmsched_result_message(res) : "(none)");
                kit_env_dump_logs(e);
            }
            assert_int_equal(rc, cases[k].code);
            snprintf(msg, sizeof(msg), "%s", lmsched_result_message(res));
            assert_non_null(strstr(msg, cases[k].needle));
            assert_null(strchr(msg, '<')); /* no markup passed on */
            lmsched_result_free(res);
            lmsched_request_free(r);
        }
        assert_false(kit_proc_exited(&e->daemon));
        long hwm = kit_pstat_peak_kb(e->daemon.pid);
        long rss1 = kit_pstat_rss_kb(e->daemon.pid);
        json_t *stats = kit_env_sim_get(e, "/sim/stats");
        assert_true(kit_json_int(stats, "faults.garbage") >= 3);
        json_decref(stats);
        /* 256 MiB offered, 1 MiB allowed: the peak stays far below. */
        if (rss_why == NULL) {
            assert_true(rss0 > 0 && hwm > 0);
            assert_true(hwm - rss0 < 32 * 1024);
        }
        printf("fault 10 (%s): %s: \"%s\"; daemon RSS %ld KiB before, %ld KiB after, "
               "peak %ld KiB\n",
               cases[k].mode, lmsched_strerror(cases[k].code), msg, rss0, rss1, hwm);
        lmsched_client_close(c);
        /* A fresh pair for the next kind (teardown kills them on failure). */
        assert_int_equal(kit_proc_stop(&e->daemon, SIGTERM, 10000), 0);
        assert_int_equal(kit_proc_stop(&e->sim, SIGTERM, 10000), 0);
    }
    kit_skip_if(rss_why, "fault 10: the daemon's peak RSS bound");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_backend_down_at_start, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_backend_wait_bound, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_backend_killed_mid_stream, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_channel_errors, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_backend_hangs, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_backend_garbage, kit_env_setup,
                                        kit_env_teardown),
    };
    return cmocka_run_group_tests_name("faults_backend", tests, NULL, NULL);
}
