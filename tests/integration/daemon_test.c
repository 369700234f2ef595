/*
 * daemon_test - the daemon end to end: real lmsim over loopback HTTP, real
 * `lmsched serve`, real nng ipc:// sockets, driven through agentlib.
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

#include <cmocka.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>

#include "kit/check.h"
#include "kit/clock.h"
#include "kit/daemon.h"
#include "kit/env.h"
#include "kit/fs.h"
#include "kit/json.h"
#include "kit/net.h"
#include "kit/proc.h"
#include "kit/tally.h"
#include "lmsched/agent.h"
#include "proto/proto.h"

/* lmsim clock runs this much faster than wall time in these tests. */
#define FAST "--time-scale", "50"

/* The whole log file (malloc'd); fails the test if unreadable. */
static char *read_log(const char *path)
{
    char *text = kit_fs_read(path);
    assert_non_null(text);
    return text;
}

/* One chat: content, usage and timings come back. */
static void test_one_chat(void **state)
{
    kit_env *e = *state;
    const char *sim[] = {FAST, NULL};
    kit_env_start(e, sim, NULL);
    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, e->url), LMSCHED_OK);
    lmsched_request *r = kit_req("You are a terse assistant.", "Say hello.", 8);
    lmsched_result *res = NULL;
    int rc = lmsched_chat(c, r, 10000, &res);
    if (rc != LMSCHED_OK)
        kit_env_dump_logs(e);
    assert_int_equal(rc, LMSCHED_OK);
    assert_non_null(lmsched_result_content(res));
    assert_true(strlen(lmsched_result_content(res)) > 0);
    assert_string_equal(lmsched_result_finish_reason(res), "length");
    assert_true(lmsched_result_prompt_tokens(res) > 0);
    assert_int_equal(lmsched_result_completion_tokens(res), 8);
    assert_true(lmsched_result_ttft_ms(res) > 0);
    assert_true(lmsched_result_total_ms(res) >= lmsched_result_ttft_ms(res));
    lmsched_result_free(res);

    /* The same system prompt again: the backend reports cached tokens. */
    rc = lmsched_chat(c, r, 10000, &res);
    assert_int_equal(rc, LMSCHED_OK);
    assert_true(lmsched_result_cached_tokens(res) > 0);
    lmsched_result_free(res);
    lmsched_request_free(r);
    lmsched_client_close(c);
}

/* 200 requests from 20 threads; the memory budget allows 2 at once, and the
 * backend (4 slots) never sees more than 2. */
typedef struct load_arg {
    kit_env *e;
    int n;
    int ok;
    int idx;
} load_arg;

static void *load_thread(void *p)
{
    load_arg *a = p;
    lmsched_client *c;
    if (lmsched_client_open(&c, a->e->url) != LMSCHED_OK)
        return NULL;
    char sys[128], user[64];
    snprintf(sys, sizeof(sys), "You are agent %d of a team; your role is role-%d.",
             a->idx, a->idx % 4);
    for (int i = 0; i < a->n; i++) {
        snprintf(user, sizeof(user), "question %d", i);
        lmsched_request *r = NULL;
        lmsched_request_alloc(&r);
        lmsched_request_set_system(r, sys);
        lmsched_request_add_message(r, "user", user);
        lmsched_request_set_max_tokens(r, 4);
        lmsched_result *res = NULL;
        if (lmsched_chat(c, r, 60000, &res) == LMSCHED_OK)
            a->ok++;
        else if (res)
            fprintf(stderr, "agent %d: %s\n", a->idx, lmsched_result_message(res));
        lmsched_result_free(res);
        lmsched_request_free(r);
    }
    lmsched_client_close(c);
    return NULL;
}

static void test_concurrency_limit(void **state)
{
    kit_env *e = *state;
    /* The backend reports a 1 GiB model and 4 slots. budget = 0.5 x 10 GiB - 1 GiB =
     * 4 GiB; 2 GiB per request -> 2 at once, below the 4 slots. */
    const char *sim[] = {FAST, "--slots", "4", "--model-size", "1073741824", NULL};
    const char *d[] = {"--total-ram", "10G", "--ram-fraction", "0.5", "--kv-per-request",
                       "2G",          NULL};
    kit_env_start(e, sim, d);
    json_t *st = kit_env_status(e);
    assert_non_null(st);
    assert_int_equal(kit_json_int(st, "memory.max_concurrent"), 2);
    json_decref(st);

    enum { THREADS = 20, PER = 10 };
    pthread_t t[THREADS];
    load_arg a[THREADS];
    for (int i = 0; i < THREADS; i++) {
        a[i] = (load_arg){.e = e, .n = PER, .idx = i};
        pthread_create(&t[i], NULL, load_thread, &a[i]);
    }
    int ok = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        ok += a[i].ok;
    }
    if (ok != THREADS * PER)
        kit_env_dump_logs(e);
    assert_int_equal(ok, THREADS * PER);
    json_t *stats = kit_env_sim_get(e, "/sim/stats");
    assert_non_null(stats);
    int64_t max_active = kit_json_int(stats, "max_active");
    printf("concurrency: %d requests, lmsim max_active %lld (limit 2)\n", ok,
           (long long)max_active);
    assert_true(max_active >= 1);
    assert_true(max_active <= 2);
    assert_int_equal(kit_json_int(stats, "requests"), THREADS * PER);
    json_decref(stats);
    st = kit_env_status(e);
    assert_int_equal(kit_json_int(st, "requests.completed"), THREADS * PER);
    assert_int_equal(kit_json_int(st, "inflight"), 0);
    json_decref(st);
}

/* A full queue answers BUSY at once; everything accepted completes. */
static void test_queue_full_busy(void **state)
{
    kit_env *e = *state;
    const char *sim[] = {"--time-scale", "5", NULL};
    const char *d[] = {"--max-concurrent", "1", "--max-queue", "3", NULL};
    kit_env_start(e, sim, d);
    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, e->url), LMSCHED_OK);
    kit_tally t;
    kit_tally_init(&t);
    lmsched_request *r = kit_req("sys", "hello", 16);
    enum { N = 12 };
    for (int i = 0; i < N; i++)
        assert_int_equal(lmsched_chat_async(c, r, 30000, kit_tally_cb, &t), LMSCHED_OK);
    assert_int_equal(kit_tally_wait(&t, N, 30000), N);
    printf("queue full: ok %d busy %d\n", t.by_code[LMSCHED_OK],
           t.by_code[LMSCHED_EBUSY]);
    assert_true(t.by_code[LMSCHED_EBUSY] >= 1);
    /* At least the 3 the queue holds (the burst may all arrive before the first
     * one is dispatched, so the running one may have been among the 3). */
    assert_true(t.by_code[LMSCHED_OK] >= 3);
    assert_int_equal(t.by_code[LMSCHED_OK] + t.by_code[LMSCHED_EBUSY], N);
    assert_int_equal(t.done, N);
    json_t *st = kit_env_status(e);
    assert_int_equal(kit_json_int(st, "requests.rejected_busy"),
                     t.by_code[LMSCHED_EBUSY]);
    json_decref(st);
    lmsched_request_free(r);
    lmsched_client_close(c);
}

/* A request whose deadline passes in the queue gets DEADLINE. */
static void test_deadline(void **state)
{
    kit_env *e = *state;
    const char *sim[] = {"--time-scale", "2", NULL};
    const char *d[] = {"--max-concurrent", "1", NULL};
    kit_env_start(e, sim, d);
    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, e->url), LMSCHED_OK);
    kit_tally t;
    kit_tally_init(&t);
    /* 200 tokens at 45 tok/s x2 = ~2.2 s holding the only slot; the quick
     * one is sent once it runs (a fixed sleep raced a loaded machine). */
    lmsched_request *slow = kit_req("sys", "a long answer please", 200);
    assert_int_equal(lmsched_chat_async(c, slow, 30000, kit_tally_cb, &t), LMSCHED_OK);
    kit_env_status_wait(e, "inflight", 1, 1, 2500);
    lmsched_request *r = kit_req("sys", "quick", 4);
    assert_int_equal(lmsched_request_set_deadline_ms(r, 150), LMSCHED_OK);
    lmsched_result *res = NULL;
    int rc = lmsched_chat(c, r, 30000, &res);
    assert_int_equal(rc, LMSCHED_EDEADLINE);
    assert_non_null(strstr(lmsched_result_message(res), "deadline"));
    lmsched_result_free(res);
    assert_int_equal(kit_tally_wait(&t, 1, 30000), 1);
    assert_int_equal(t.by_code[LMSCHED_OK], 1);
    json_t *st = kit_env_status(e);
    assert_int_equal(kit_json_int(st, "requests.failed_by_class.deadline"), 1);
    json_decref(st);
    lmsched_request_free(slow);
    lmsched_request_free(r);
    lmsched_client_close(c);
}

/* Backend down: a request waits --backend-wait for it, then gets a clear
 * error; when it comes up, service resumes. */
static void test_backend_down_then_up(void **state)
{
    kit_env *e = *state;
    int port = kit_net_free_port();
    assert_true(port > 0);
    snprintf(e->backend, sizeof(e->backend), "http://127.0.0.1:%d", port);
    const char *d[] = {"--max-retries", "1", "--backend-wait", "1000", NULL};
    if (kit_env_daemon_start(e, d) != 0) {
        kit_env_dump_logs(e);
        fail_msg("daemon did not start with the backend down");
    }
    json_t *st = kit_env_status(e);
    assert_non_null(st);
    assert_true(json_is_false(kit_json_get(st, "backend.healthy")));
    json_decref(st);

    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, e->url), LMSCHED_OK);
    lmsched_request *r = kit_req("sys", "hello", 4);
    lmsched_result *res = NULL;
    int rc = lmsched_chat(c, r, 30000, &res);
    assert_int_equal(rc, LMSCHED_EBACKEND_DOWN);
    printf("backend down: %s\n", lmsched_result_message(res));
    assert_non_null(strstr(lmsched_result_message(res), "127.0.0.1"));
    lmsched_result_free(res);

    const char *sim[] = {FAST, NULL};
    assert_int_equal(kit_env_sim_start(e, port, sim), 0);
    rc = lmsched_chat(c, r, 30000, &res);
    if (rc != LMSCHED_OK)
        kit_env_dump_logs(e);
    assert_int_equal(rc, LMSCHED_OK);
    lmsched_result_free(res);
    st = kit_env_status(e);
    assert_true(json_is_true(kit_json_get(st, "backend.healthy")));
    assert_int_equal(kit_json_int(st, "requests.failed_by_class.backend_down"), 1);
    json_decref(st);
    lmsched_request_free(r);
    lmsched_client_close(c);
}

/* Garbage on the socket gets an error reply, and the daemon keeps serving. */
static void test_malformed_message(void **state)
{
    kit_env *e = *state;
    const char *sim[] = {FAST, NULL};
    kit_env_start(e, sim, NULL);
    nng_socket s;
    assert_int_equal(nng_req0_open(&s), 0);
    nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 5000);
    nng_socket_set_ms(s, NNG_OPT_SENDTIMEO, 5000);
    assert_int_equal(nng_dial(s, e->url, NULL, 0), 0);
    const char *bad[] = {"\xc1", "not msgpack at all", "\x81\xa1v\xa1x",
                         "\x93\x01\x02\x03"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(nng_send(s, (void *)bad[i], strlen(bad[i]), 0), 0);
        char *buf = NULL;
        size_t len = 0;
        assert_int_equal(nng_recv(s, &buf, &len, NNG_FLAG_ALLOC), 0);
        lms_msg m;
        lms_decode_err de;
        assert_int_equal(lms_decode(buf, len, NULL, &m, &de), LMSCHED_OK);
        assert_int_equal(m.kind, LMS_KIND_ERROR);
        assert_int_equal(m.u.error.code, LMSCHED_EPROTO);
        assert_true(strlen(m.u.error.message) > 0);
        lms_msg_fini(&m);
        nng_free(buf, len);
    }
    /* A reply kind sent as a request is refused by name. */
    lms_msg m;
    lms_msg_init(&m, LMS_KIND_CHAT_REPLY);
    m.u.chat_reply.content = "x";
    m.u.chat_reply.finish_reason = "stop";
    void *enc;
    size_t elen;
    assert_int_equal(lms_encode(&m, &enc, &elen), LMSCHED_OK);
    assert_int_equal(nng_send(s, enc, elen, 0), 0);
    free(enc);
    char *buf = NULL;
    size_t len = 0;
    assert_int_equal(nng_recv(s, &buf, &len, NNG_FLAG_ALLOC), 0);
    lms_decode_err de;
    assert_int_equal(lms_decode(buf, len, NULL, &m, &de), LMSCHED_OK);
    assert_int_equal(m.u.error.code, LMSCHED_EPROTO);
    assert_non_null(strstr(m.u.error.message, "chat_reply"));
    lms_msg_fini(&m);
    nng_free(buf, len);
    nng_close(s);

    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, e->url), LMSCHED_OK);
    lmsched_request *r = kit_req("sys", "still there?", 4);
    lmsched_result *res = NULL;
    assert_int_equal(lmsched_chat(c, r, 10000, &res), LMSCHED_OK);
    lmsched_result_free(res);
    lmsched_request_free(r);
    lmsched_client_close(c);
    json_t *st = kit_env_status(e);
    assert_int_equal(kit_json_int(st, "requests.bad_messages"), 5);
    json_decref(st);
}

/* The status document has the documented keys with correct values. */
static void test_status_json(void **state)
{
    kit_env *e = *state;
    const char *sim[] = {FAST,   "--slots",      "3",          "--ctx",
                         "4096", "--model-size", "2147483648", NULL};
    const char *d[] = {"--total-ram", "16G", "--ram-fraction", "0.5", NULL};
    kit_env_start(e, sim, d);
    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, e->url), LMSCHED_OK);
    lmsched_request *r = kit_req("sys", "count me", 4);
    for (int i = 0; i < 3; i++) {
        lmsched_result *res = NULL;
        assert_int_equal(lmsched_chat(c, r, 10000, &res), LMSCHED_OK);
        lmsched_result_free(res);
    }
    json_t *st = kit_env_status(e);
    assert_non_null(st);
    const int64_t gib = 1024LL * 1024 * 1024;
    assert_int_equal(kit_json_int(st, "memory.total_bytes"), 16 * gib);
    /* 0.5 x 16 GiB - 2 GiB model (reported by the backend) = 6 GiB */
    assert_int_equal(kit_json_int(st, "memory.budget_bytes"), 6 * gib);
    /* KV per request: 4096 tokens x 128 KiB = 512 MiB -> fits 12, capped at 3 slots */
    assert_int_equal(kit_json_int(st, "memory.kv_per_request_bytes"), 4096LL * 131072);
    assert_int_equal(kit_json_int(st, "memory.max_concurrent"), 3);
    assert_string_equal(json_string_value(kit_json_get(st, "memory.limited_by")),
                        "slots");
    assert_int_equal(kit_json_int(st, "queue.depth"), 0);
    assert_int_equal(kit_json_int(st, "inflight"), 0);
    assert_int_equal(kit_json_int(st, "requests.completed"), 3);
    assert_int_equal(kit_json_int(st, "requests.failed"), 0);
    assert_string_equal(json_string_value(kit_json_get(st, "backend.url")), e->backend);
    assert_true(json_is_true(kit_json_get(st, "backend.healthy")));
    assert_string_equal(json_string_value(kit_json_get(st, "backend.kind")), "lmstudio");
    assert_int_equal(kit_json_int(st, "backend.slots"), 3);
    assert_int_equal(kit_json_int(st, "backend.context_length"), 4096);
    assert_true(kit_json_int(st, "tokens.prompt") > 0);
    json_decref(st);
    lmsched_request_free(r);
    lmsched_client_close(c);
}

/* SIGTERM with requests in flight and queued: every one gets exactly one
 * reply (in flight ones finish, queued ones get SHUTDOWN), exit status 0. */
static void test_sigterm_loses_nothing(void **state)
{
    kit_env *e = *state;
    const char *sim[] = {"--time-scale", "5", NULL};
    const char *d[] = {"--max-concurrent", "4", NULL};
    kit_env_start(e, sim, d);
    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, e->url), LMSCHED_OK);
    kit_tally t;
    kit_tally_init(&t);
    lmsched_request *r = kit_req("sys", "answer slowly", 40);
    enum { N = 30 };
    for (int i = 0; i < N; i++)
        assert_int_equal(lmsched_chat_async(c, r, 30000, kit_tally_cb, &t), LMSCHED_OK);
    /* Wait until requests are in flight at the backend. */
    kit_env_status_wait(e, "inflight", 4, 4, 2000);
    int status = kit_proc_stop(&e->daemon, SIGTERM, 20000);
    assert_int_equal(kit_tally_wait(&t, N, 30000), N);
    printf("sigterm: ok %d shutdown %d other %d, exit %d\n", t.by_code[LMSCHED_OK],
           t.by_code[LMSCHED_ESHUTDOWN],
           N - t.by_code[LMSCHED_OK] - t.by_code[LMSCHED_ESHUTDOWN], status);
    assert_int_equal(status, 0);
    assert_int_equal(t.done, N);
    assert_true(t.by_code[LMSCHED_OK] >= 4);
    assert_true(t.by_code[LMSCHED_ESHUTDOWN] >= 1);
    assert_int_equal(t.by_code[LMSCHED_OK] + t.by_code[LMSCHED_ESHUTDOWN], N);
    lmsched_request_free(r);
    lmsched_client_close(c);
}

/* The model alone over the budget: serve refuses with the numbers. */
static void test_refuses_oversized_model(void **state)
{
    kit_env *e = *state;
    const char *sim[] = {FAST, "--model-size", "40000000000", NULL};
    assert_int_equal(kit_env_sim_start(e, 0, sim), 0);
    const char *d[] = {"--total-ram", "32G", NULL};
    assert_int_not_equal(kit_env_daemon_start(e, d), 0);
    char *log = read_log(e->daemon.log);
    assert_non_null(strstr(log, "refusing to start"));
    assert_non_null(strstr(log, "--force"));
    free(log);
    /* --force starts anyway */
    const char *df[] = {"--total-ram", "32G", "--force", NULL};
    assert_int_equal(kit_env_daemon_start(e, df), 0);
}

/* ---- issue 9: what a new user hit ------------------------------------------ */

/* Runs `lmsched ARGS...` with stdout and stderr into *outp (malloc'd);
 * returns the exit status, -1 if it could not run. */
static int run_capture(kit_env *e, const char *const *args, char **outp)
{
    char path[600];
    snprintf(path, sizeof(path), "%s/capture.out", e->dir);
    int rc = kit_lmsched_run(args, path, 20000);
    *outp = kit_fs_read(path);
    assert_non_null(*outp);
    return rc;
}

static unsigned count_str(const char *hay, const char *needle)
{
    unsigned n = 0;
    for (const char *p = strstr(hay, needle); p != NULL; p = strstr(p + 1, needle))
        n++;
    return n;
}

/* The URL LM Studio's UI shows (".../v1") is accepted: the daemon strips
 * it, says so, and chat works. */
static void test_backend_url_with_v1(void **state)
{
    kit_env *e = *state;
    const char *sim[] = {FAST, NULL};
    assert_int_equal(kit_env_sim_start(e, 0, sim), 0);
    char be[160];
    snprintf(be, sizeof(be), "%s/v1/", e->backend);
    const char *d[] = {"--backend", be, NULL};
    if (kit_env_daemon_start(e, d) != 0) {
        kit_env_dump_logs(e);
        fail_msg("lmsched serve did not start");
    }
    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, e->url), LMSCHED_OK);
    lmsched_request *r = kit_req("sys", "hello", 4);
    lmsched_result *res = NULL;
    int rc = lmsched_chat(c, r, 10000, &res);
    if (rc != LMSCHED_OK)
        fail_msg("chat through a /v1 URL: %s", res ? lmsched_result_message(res) : "?");
    lmsched_result_free(res);
    json_t *st = kit_env_status(e);
    assert_string_equal(json_string_value(kit_json_get(st, "backend.url")), e->backend);
    assert_string_equal(json_string_value(kit_json_get(st, "backend.kind")), "lmstudio");
    json_decref(st);
    char *log = read_log(e->daemon.log);
    assert_non_null(strstr(log, "ended in /v1"));
    free(log);
    lmsched_request_free(r);
    lmsched_client_close(c);
}

/* A URL where no known API answers (a wrong path): the start-up log and
 * status say which URLs were tried and what answered; the backend is not
 * reported healthy, and a request fails saying the same. */
static void test_backend_nothing_found(void **state)
{
    kit_env *e = *state;
    const char *sim[] = {FAST, NULL};
    assert_int_equal(kit_env_sim_start(e, 0, sim), 0);
    char be[160];
    snprintf(be, sizeof(be), "%s/not-here", e->backend);
    const char *d[] = {"--backend", be, "--backend-wait", "300", NULL};
    if (kit_env_daemon_start(e, d) != 0) {
        kit_env_dump_logs(e);
        fail_msg("lmsched serve did not start");
    }
    json_t *st = kit_env_status(e);
    assert_non_null(st);
    assert_true(json_is_false(kit_json_get(st, "backend.healthy")));
    const char *le = json_string_value(kit_json_get(st, "backend.last_error"));
    assert_non_null(le);
    printf("last_error: %s\n", le);
    assert_non_null(strstr(le, "no LLM server API found"));
    assert_non_null(strstr(le, "GET /api/v1/models (HTTP 404)"));
    assert_non_null(strstr(le, "GET /props (HTTP 404)"));
    assert_non_null(strstr(le, "GET /v1/models (HTTP 404)"));
    json_decref(st);
    char *log = read_log(e->daemon.log);
    assert_non_null(strstr(log, "no LLM server API found"));
    assert_null(strstr(log, "healthy, model"));
    free(log);

    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, e->url), LMSCHED_OK);
    lmsched_request *r = kit_req("sys", "hello", 4);
    lmsched_result *res = NULL;
    assert_int_equal(lmsched_chat(c, r, 10000, &res), LMSCHED_EBACKEND_DOWN);
    assert_non_null(strstr(lmsched_result_message(res), "no LLM server API found"));
    lmsched_result_free(res);
    lmsched_request_free(r);
    lmsched_client_close(c);
}

/* A prompt that certainly cannot fit the context the backend reported is
 * refused before it costs a slot, naming the estimate and the context; one
 * near the edge goes to the backend, whose own 400 comes back. */
static void test_prompt_over_context(void **state)
{
    kit_env *e = *state;
    const char *sim[] = {FAST, "--ctx", "8192", NULL};
    kit_env_start(e, sim, NULL);
    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, e->url), LMSCHED_OK);

    size_t big = 1u << 20; /* ~262k tokens by the estimate, at least 65k */
    char *text = malloc(big + 1);
    assert_non_null(text);
    memset(text, 'x', big);
    text[big] = '\0';
    lmsched_request *r = kit_req("sys", text, 0);
    lmsched_result *res = NULL;
    assert_int_equal(lmsched_chat(c, r, 10000, &res), LMSCHED_ETOOLARGE);
    const char *msg = lmsched_result_message(res);
    printf("refused: %s\n", msg);
    assert_non_null(strstr(msg, "cannot fit"));
    assert_non_null(strstr(msg, "context is 8192 tokens"));
    assert_non_null(strstr(msg, "262"));
    lmsched_result_free(res);
    lmsched_request_free(r);
    json_t *ss = kit_env_sim_get(e, "/sim/stats");
    assert_int_equal(kit_json_int(ss, "requests"), 0);
    assert_int_equal(kit_json_int(ss, "prompt_tokens"), 0);
    json_decref(ss);

    /* 40 KB: ~10k tokens by the estimate, but not certainly over 8192. */
    text[40000] = '\0';
    r = kit_req("sys", text, 0);
    assert_int_equal(lmsched_chat(c, r, 10000, &res), LMSCHED_EBACKEND_HTTP);
    printf("backend: %s\n", lmsched_result_message(res));
    assert_non_null(strstr(lmsched_result_message(res), "context"));
    lmsched_result_free(res);
    lmsched_request_free(r);
    free(text);
    lmsched_client_close(c);
}

/* A field over its limit is named once in the message, not twice. */
static void test_field_named_once(void **state)
{
    kit_env *e = *state;
    const char *sim[] = {FAST, NULL};
    kit_env_start(e, sim, NULL);
    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, e->url), LMSCHED_OK);
    size_t big = 5u << 20;
    char *text = malloc(big + 1);
    assert_non_null(text);
    memset(text, 'x', big);
    text[big] = '\0';
    lmsched_request *r = kit_req("sys", text, 0);
    free(text);
    lmsched_result *res = NULL;
    assert_int_equal(lmsched_chat(c, r, 10000, &res), LMSCHED_ETOOLARGE);
    const char *msg = lmsched_result_message(res);
    printf("over the limit: %s\n", msg);
    assert_int_equal(count_str(msg, "messages[0].content"), 1);
    lmsched_result_free(res);
    lmsched_request_free(r);
    lmsched_client_close(c);
}

/* Bad flags and listen addresses: exit 2 (usage) or 4 (cannot listen) with
 * a message in the user's terms, not nng's. */
static void test_serve_messages(void **state)
{
    kit_env *e = *state;
    char listen[600], *out = NULL;

    assert_int_equal(
        run_capture(e, (const char *const[]){"serve", "--policy", "lifo", NULL}, &out),
        2);
    assert_non_null(strstr(out, "--policy: expected prefix or fifo, got 'lifo'"));
    free(out);

    snprintf(listen, sizeof(listen), "ipc://%s/no/such/dir/x.sock", e->dir);
    const char *nodir[] = {"serve",
                           "--backend",
                           "http://127.0.0.1:9",
                           "--connect-timeout",
                           "100",
                           "--listen",
                           listen,
                           NULL};
    assert_int_equal(run_capture(e, nodir, &out), 4);
    assert_null(strstr(out, "Entry not found"));
    assert_non_null(strstr(out, "/no/such/dir does not exist"));
    free(out);

    char longp[200];
    memset(longp, 'a', 150);
    longp[150] = '\0';
    snprintf(listen, sizeof(listen), "ipc:///tmp/%s.sock", longp);
    const char *toolong[] = {"serve",
                             "--backend",
                             "http://127.0.0.1:9",
                             "--connect-timeout",
                             "100",
                             "--listen",
                             listen,
                             NULL};
    assert_int_equal(run_capture(e, toolong, &out), 4);
    assert_null(strstr(out, "Address invalid"));
    assert_non_null(strstr(out, "may have at most 107"));
    free(out);
}

/* Start-up says the memory budget once, and an unknown model size as
 * unknown (status: null), not "0 B". */
static void test_startup_log(void **state)
{
    kit_env *e = *state;
    const char *sim[] = {FAST, "--model-size", "0", NULL};
    kit_env_start(e, sim, NULL);
    char *log = read_log(e->daemon.log);
    assert_int_equal(count_str(log, "per request fits"), 1);
    assert_null(strstr(log, "model 0 B"));
    assert_non_null(strstr(log, "model size unknown"));
    free(log);
    json_t *st = kit_env_status(e);
    assert_true(json_is_null(kit_json_get(st, "memory.model_size_bytes")));
    json_decref(st);
}

/* A second SIGTERM during the drain ends it at once: the requests in
 * flight get the shutdown error now, not after --drain-timeout. */
static void test_second_sigterm(void **state)
{
    kit_env *e = *state;
    const char *sim[] = {"--time-scale", "1", "--decode-tps", "5", NULL};
    const char *d[] = {"--max-concurrent", "2", "--drain-timeout", "60000", NULL};
    kit_env_start(e, sim, d);
    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, e->url), LMSCHED_OK);
    kit_tally t;
    kit_tally_init(&t);
    lmsched_request *r = kit_req("sys", "answer slowly", 500);
    enum { N = 4 };
    for (int i = 0; i < N; i++)
        assert_int_equal(lmsched_chat_async(c, r, 30000, kit_tally_cb, &t), LMSCHED_OK);
    kit_env_status_wait(e, "inflight", 2, 2, 2000);
    kill(e->daemon.pid, SIGTERM);
    kit_sleep_ms(300);
    int64_t t0 = kit_now_ms();
    int status = kit_proc_stop(&e->daemon, SIGTERM, 10000);
    int64_t ms = kit_now_ms() - t0;
    assert_int_equal(kit_tally_wait(&t, N, 10000), N);
    printf("second sigterm: exit %d after %lld ms; shutdown %d\n", status, (long long)ms,
           t.by_code[LMSCHED_ESHUTDOWN]);
    assert_int_equal(status, 0);
    assert_true(ms < 5000);
    assert_int_equal(t.by_code[LMSCHED_ESHUTDOWN], N);
    char *log = read_log(e->daemon.log);
    assert_non_null(strstr(log, "second stop signal"));
    free(log);
    lmsched_request_free(r);
    lmsched_client_close(c);
}

/* ---- exact token counts (--exact-tokens) ------------------------------------ */

typedef struct chat_arg {
    const char *url;
    const char *user;
    int max_tokens;
    int rc;
    int64_t prompt_tokens;
} chat_arg;

static void *chat_thread(void *p)
{
    chat_arg *a = p;
    lmsched_client *c;
    a->rc = -1;
    if (lmsched_client_open(&c, a->url) != LMSCHED_OK)
        return NULL;
    lmsched_request *r = kit_req("You count tokens for a living.", a->user, a->max_tokens);
    lmsched_result *res = NULL;
    a->rc = lmsched_chat(c, r, 60000, &res);
    if (a->rc == LMSCHED_OK)
        a->prompt_tokens = lmsched_result_prompt_tokens(res);
    lmsched_result_free(res);
    lmsched_request_free(r);
    lmsched_client_close(c);
    return NULL;
}

/* One slot: a long request runs, a second waits in the queue. Returns the
 * prompt tokens reserved for the waiting one as the status showed them once
 * it waited (and, with want_exact, once its count had come back), and its
 * usage.prompt_tokens in *used. */
static int64_t exact_run(kit_env *e, bool want_exact, int64_t *used)
{
    chat_arg a = {.url = e->url, .user = "Tell me a long story.", .max_tokens = 90};
    chat_arg b = {.url = e->url,
                  .user = "Count these words: alpha beta gamma delta epsilon zeta eta theta "
                          "iota kappa lambda mu nu xi omicron pi rho sigma tau upsilon.",
                  .max_tokens = 4};
    pthread_t ta, tb;
    pthread_create(&ta, NULL, chat_thread, &a);
    assert_int_equal(kit_env_status_wait(e, "inflight", 1, 1, 10000), 1);
    pthread_create(&tb, NULL, chat_thread, &b);
    assert_int_equal(kit_env_status_wait(e, "reservation.waiting", 1, 1, 10000), 1);
    if (want_exact)
        assert_int_equal(kit_env_status_wait(e, "reservation.waiting_exact", 1, 1, 10000), 1);
    json_t *st = kit_env_status(e);
    assert_non_null(st);
    assert_int_equal(kit_json_int(st, "inflight"), 1); /* the long one still runs */
    int64_t reserved = kit_json_int(st, "reservation.waiting_prompt_tokens");
    json_decref(st);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    if (a.rc != LMSCHED_OK || b.rc != LMSCHED_OK)
        kit_env_dump_logs(e);
    assert_int_equal(a.rc, LMSCHED_OK);
    assert_int_equal(b.rc, LMSCHED_OK);
    *used = b.prompt_tokens;
    return reserved;
}

/* lmsim as llama.cpp (--backend-kind llamacpp: id_slot, /apply-template and
 * /tokenize): the queued request reserves exactly what lmsim then reports
 * as its usage.prompt_tokens. */
static void test_exact_tokens(void **state)
{
    kit_env *e = *state;
    const char *sim[] = {"--slots", "1", NULL};
    const char *d[] = {"--backend-kind", "llamacpp", "--slots", "1", NULL};
    kit_env_start(e, sim, d);
    int64_t used = 0, reserved = exact_run(e, true, &used);
    printf("exact tokens: reserved %lld, used %lld\n", (long long)reserved, (long long)used);
    assert_true(used > 0);
    assert_int_equal(reserved, used);
    json_t *st = kit_env_status(e);
    assert_true(json_is_true(
        json_object_get(json_array_get(json_object_get(st, "backends"), 0), "tokenizes")));
    assert_int_equal(kit_json_int(st, "reservation.counts.asked"), 2);
    assert_int_equal(kit_json_int(st, "reservation.counts.counted"), 2);
    assert_int_equal(kit_json_int(st, "reservation.counts.applied"), 1);
    assert_true(kit_json_int(st, "reservation.answers.exact") >= 1);
    json_decref(st);
    json_t *stats = kit_env_sim_get(e, "/sim/stats");
    assert_int_equal(kit_json_int(stats, "tokenize_requests"), 2);
    json_decref(stats);
}

/* --exact-tokens off: the queued request reserves the estimate, which is
 * not lmsim's count; nothing is asked. */
static void test_exact_tokens_off(void **state)
{
    kit_env *e = *state;
    const char *sim[] = {"--slots", "1", NULL};
    const char *d[] = {"--backend-kind", "llamacpp", "--slots", "1", "--exact-tokens", "off",
                       NULL};
    kit_env_start(e, sim, d);
    int64_t used = 0, reserved = exact_run(e, false, &used);
    printf("estimate: reserved %lld, used %lld\n", (long long)reserved, (long long)used);
    assert_true(used > 0);
    assert_int_not_equal(reserved, used);
    json_t *st = kit_env_status(e);
    assert_int_equal(kit_json_int(st, "reservation.counts.asked"), 0);
    json_decref(st);
    json_t *stats = kit_env_sim_get(e, "/sim/stats");
    assert_int_equal(kit_json_int(stats, "tokenize_requests"), 0);
    json_decref(stats);
}

/* Servers that cannot count: LM Studio's kind is never asked; a llamacpp
 * one answering 404 (lmsim --no-tokenize) is asked once, then no more.
 * Both serve every request on the estimate. */
static void test_exact_tokens_none(void **state)
{
    kit_env *e = *state;
    const char *sim[] = {"--slots", "1", NULL};
    kit_env_start(e, sim, NULL); /* auto: lmsim answers as LM Studio */
    int64_t used = 0, reserved = exact_run(e, false, &used);
    assert_true(used > 0 && reserved > 0);
    json_t *st = kit_env_status(e);
    assert_string_equal(json_string_value(kit_json_get(st, "backend.kind")), "lmstudio");
    assert_int_equal(kit_json_int(st, "reservation.counts.asked"), 0);
    assert_int_equal(kit_json_int(st, "requests.completed"), 2);
    json_decref(st);
}

static void test_exact_tokens_404(void **state)
{
    kit_env *e = *state;
    const char *sim[] = {"--slots", "1", "--no-tokenize", NULL};
    const char *d[] = {"--backend-kind", "llamacpp", "--slots", "1", NULL};
    kit_env_start(e, sim, d);
    int64_t used = 0, reserved = exact_run(e, false, &used);
    assert_true(used > 0 && reserved > 0);
    json_t *st = kit_env_status(e);
    assert_int_equal(kit_json_int(st, "reservation.counts.asked"), 1);
    assert_int_equal(kit_json_int(st, "reservation.counts.failed"), 1);
    assert_int_equal(kit_json_int(st, "requests.completed"), 2);
    json_decref(st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_one_chat, kit_env_setup, kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_concurrency_limit, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_queue_full_busy, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_deadline, kit_env_setup, kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_backend_down_then_up, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_malformed_message, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_status_json, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_sigterm_loses_nothing, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_refuses_oversized_model, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_backend_url_with_v1, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_backend_nothing_found, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_prompt_over_context, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_serve_messages, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_field_named_once, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_startup_log, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_second_sigterm, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_exact_tokens, kit_env_setup, kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_exact_tokens_off, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_exact_tokens_none, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_exact_tokens_404, kit_env_setup,
                                        kit_env_teardown),
    };
    return cmocka_run_group_tests_name("daemon", tests, NULL, NULL);
}
