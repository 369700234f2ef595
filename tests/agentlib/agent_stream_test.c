/*
 * agent_stream_test - streaming, call ids and cancellation through the
 * agent library, against the real daemon and lmsim (tests/kit): the
 * streamed pieces make exactly the non-streamed answer, blocking and
 * asynchronous; 100 streams at once each complete exactly once after their
 * last piece; lmsched_cancel removes a queued request and ends a running
 * one and a running stream (the backend slot frees, the daemon counts the
 * cancel); a delta callback that returns non-zero cancels its stream; a
 * stream past its idle timeout is canceled; lmsched_wait collects a call
 * started without a callback, also one canceled from another thread; close
 * ends streams in flight, each once.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kit/check.h"
#include "kit/clock.h"
#include "kit/env.h"
#include "kit/json.h"
#include "lmsched/agent.h"

#define CALL_MS 60000
/* Waits for a condition (a slot to free, a count to appear): hang guards,
 * not expectations. */
#define WAIT_MS 10000

/* What one streamed call delivered, shared by its callbacks (nng's
 * threads) and the test. */
typedef struct collect {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char content[16384];
    char reasoning[4096];
    int deltas;      /* on_delta calls */
    int stop_after;  /* return non-zero from the delta with this number; 0: never */
    int done;        /* on_done calls */
    bool late_delta; /* a delta after on_done */
    bool concurrent; /* two on_delta calls at once */
    bool in_delta;
    lmsched_result *res;
} collect;

static void collect_init(collect *k)
{
    memset(k, 0, sizeof(*k));
    pthread_mutex_init(&k->mu, NULL);
    pthread_cond_init(&k->cv, NULL);
}

static void collect_fini(collect *k)
{
    lmsched_result_free(k->res);
    pthread_mutex_destroy(&k->mu);
    pthread_cond_destroy(&k->cv);
}

static void append(char *buf, size_t cap, const char *text)
{
    size_t n = strlen(buf), t = strlen(text);
    assert_true(n + t < cap);
    memcpy(buf + n, text, t + 1);
}

static int on_delta(int kind, const char *text, int index, const char *id,
                    const char *name, void *arg)
{
    collect *k = arg;
    int stop;
    (void)index;
    (void)id;
    (void)name;
    pthread_mutex_lock(&k->mu);
    if (k->in_delta)
        k->concurrent = true;
    k->in_delta = true;
    if (k->done > 0)
        k->late_delta = true;
    k->deltas++;
    if (kind == LMSCHED_DELTA_CONTENT)
        append(k->content, sizeof(k->content), text);
    else if (kind == LMSCHED_DELTA_REASONING)
        append(k->reasoning, sizeof(k->reasoning), text);
    stop = k->stop_after > 0 && k->deltas >= k->stop_after;
    k->in_delta = false;
    pthread_cond_broadcast(&k->cv);
    pthread_mutex_unlock(&k->mu);
    return stop;
}

static void on_done(lmsched_result *res, void *arg)
{
    collect *k = arg;
    pthread_mutex_lock(&k->mu);
    k->done++;
    if (k->res == NULL)
        k->res = res;
    else
        lmsched_result_free(res); /* a second completion: counted, asserted on */
    pthread_cond_broadcast(&k->cv);
    pthread_mutex_unlock(&k->mu);
}

/* k's completions so far. */
static int collect_done(collect *k)
{
    pthread_mutex_lock(&k->mu);
    int n = k->done;
    pthread_mutex_unlock(&k->mu);
    return n;
}

/* Waits until k saw at least n deltas (want_done: its completion). */
static void collect_wait(collect *k, int deltas, bool want_done)
{
    struct timespec until = kit_deadline(CALL_MS);
    pthread_mutex_lock(&k->mu);
    while (k->deltas < deltas || (want_done && k->done == 0)) {
        if (pthread_cond_timedwait(&k->cv, &k->mu, &until) != 0)
            break;
    }
    bool ok = k->deltas >= deltas && (!want_done || k->done > 0);
    pthread_mutex_unlock(&k->mu);
    if (!ok)
        fail_msg("no %s within %d ms (deltas %d)", want_done ? "completion" : "delta",
                 CALL_MS, k->deltas);
}

static lmsched_client *open_client(kit_env *e)
{
    lmsched_client *c = NULL;
    assert_int_equal(lmsched_client_open(&c, e->url), LMSCHED_OK);
    return c;
}

static lmsched_request *stream_req(const char *user, int max_tokens)
{
    lmsched_request *r = kit_req("You are a streaming test.", user, max_tokens);
    assert_int_equal(lmsched_request_set_seed(r, 7), LMSCHED_OK);
    assert_int_equal(lmsched_request_set_agent(r, "agent_stream_test"), LMSCHED_OK);
    return r;
}

static int64_t status_int(kit_env *e, const char *path)
{
    json_t *st = kit_env_status(e);
    int64_t v = kit_json_int(st, path);
    json_decref(st);
    return v;
}

/* The pieces of a stream, concatenated, are exactly the answer the same
 * request gets without streaming, and the stream's own final content; the
 * same through the asynchronous form. */
static void test_stream_equals_whole(void **state)
{
    kit_env *e = *state;
    const char *sim[] = {"--time-scale", "5", "--reasoning-tokens", "4", NULL};
    kit_env_start(e, sim, NULL);
    lmsched_client *c = open_client(e);
    lmsched_request *req = stream_req("tell me something long", 24);

    lmsched_result *whole = NULL;
    assert_int_equal(lmsched_chat(c, req, CALL_MS, &whole), LMSCHED_OK);

    collect k;
    collect_init(&k);
    lmsched_result *res = NULL;
    int rc = lmsched_chat_stream(c, req, CALL_MS, on_delta, &k, &res);
    if (rc != LMSCHED_OK)
        fail_msg("stream failed: %s", lmsched_result_message(res));
    printf("stream: %d deltas, %zu bytes of content, %zu of reasoning\n", k.deltas,
           strlen(k.content), strlen(k.reasoning));
    assert_true(k.deltas >= 3);
    assert_string_equal(k.content, lmsched_result_content(whole));
    assert_string_equal(k.content, lmsched_result_content(res));
    assert_non_null(lmsched_result_reasoning(res));
    assert_string_equal(k.reasoning, lmsched_result_reasoning(res));
    assert_string_equal(k.reasoning, lmsched_result_reasoning(whole));
    assert_string_equal(lmsched_result_finish_reason(res), "length");
    assert_int_equal(lmsched_result_completion_tokens(res),
                     lmsched_result_completion_tokens(whole));
    assert_false(k.concurrent);
    lmsched_result_free(res);

    /* asynchronously, with the id */
    collect a;
    collect_init(&a);
    uint64_t id = 0;
    assert_int_equal(lmsched_chat_start(c, req, CALL_MS, on_delta, on_done, &a, &id),
                     LMSCHED_OK);
    assert_true(id != 0);
    collect_wait(&a, 1, true);
    assert_int_equal(lmsched_result_error(a.res), LMSCHED_OK);
    assert_string_equal(a.content, lmsched_result_content(whole));
    assert_string_equal(a.reasoning, lmsched_result_reasoning(whole));
    /* it has ended: nothing to cancel */
    assert_int_equal(lmsched_cancel(c, id), LMSCHED_EINVAL);
    lmsched_client_close(c);
    assert_int_equal(a.done, 1);
    assert_false(a.late_delta);
    assert_false(a.concurrent);
    collect_fini(&a);
    collect_fini(&k);
    lmsched_result_free(whole);
    lmsched_request_free(req);
}

/* 100 streams at once on one client: each completes exactly once, after
 * its last piece, with pieces that make its answer. */
static void test_many_async_streams(void **state)
{
    enum { N = 100 };
    kit_env *e = *state;
    const char *sim[] = {"--time-scale", "20", NULL};
    kit_env_start(e, sim, NULL);
    lmsched_client *c = open_client(e);
    collect *k = calloc(N, sizeof(*k));
    assert_non_null(k);
    for (int i = 0; i < N; i++) {
        char user[64];
        snprintf(user, sizeof(user), "question number %d", i);
        lmsched_request *req = stream_req(user, 16);
        collect_init(&k[i]);
        assert_int_equal(
            lmsched_chat_start(c, req, CALL_MS, on_delta, on_done, &k[i], NULL),
            LMSCHED_OK);
        lmsched_request_free(req);
    }
    int ok = 0;
    for (int i = 0; i < N; i++) {
        collect_wait(&k[i], 1, true);
        if (lmsched_result_error(k[i].res) == LMSCHED_OK &&
            strcmp(k[i].content, lmsched_result_content(k[i].res)) == 0)
            ok++;
        else
            printf("stream %d: %s\n", i, lmsched_result_message(k[i].res));
    }
    lmsched_client_close(c);
    for (int i = 0; i < N; i++) {
        assert_int_equal(k[i].done, 1);
        assert_false(k[i].late_delta);
        assert_false(k[i].concurrent);
        collect_fini(&k[i]);
    }
    free(k);
    assert_int_equal(ok, N);
    assert_int_equal(status_int(e, "requests.completed"), N);
    assert_int_equal(status_int(e, "inflight"), 0);
}

/* With one request running at a time: a second one waits in the queue
 * and lmsched_cancel takes it out; then the running one is canceled and
 * its backend slot frees. Each completes once, as canceled, and the daemon
 * counts both. */
static void test_cancel_queued_and_running(void **state)
{
    kit_env *e = *state;
    const char *sim[] = {"--time-scale", "1", "--decode-tps", "5", "--slots", "1", NULL};
    const char *d[] = {"--max-concurrent", "1", NULL};
    kit_env_start(e, sim, d);
    lmsched_client *c = open_client(e);
    lmsched_request *slow = stream_req("slow", 200);
    collect a, b;
    collect_init(&a);
    collect_init(&b);
    uint64_t ida = 0, idb = 0;
    assert_int_equal(lmsched_chat_start(c, slow, CALL_MS, NULL, on_done, &a, &ida),
                     LMSCHED_OK);
    assert_int_equal(kit_env_sim_wait(e, "active", 1, 1, WAIT_MS), 1);
    assert_int_equal(lmsched_chat_start(c, slow, CALL_MS, NULL, on_done, &b, &idb),
                     LMSCHED_OK);
    assert_true(ida != idb);
    assert_int_equal(kit_env_status_wait(e, "queue.depth", 1, 1, WAIT_MS), 1);

    assert_int_equal(lmsched_cancel(c, idb), LMSCHED_OK);
    collect_wait(&b, 0, true);
    assert_int_equal(lmsched_result_error(b.res), LMSCHED_ECANCELED);
    printf("queued: %s\n", lmsched_result_message(b.res));
    assert_int_equal(kit_env_status_wait(e, "queue.depth", 0, 0, WAIT_MS), 0);
    assert_int_equal(
        kit_env_status_wait(e, "requests.failed_by_class.canceled", 1, 1, WAIT_MS), 1);
    /* the running one is untouched by that */
    assert_int_equal(collect_done(&a), 0);
    assert_int_equal(lmsched_cancel(c, idb), LMSCHED_EINVAL);

    assert_int_equal(lmsched_cancel(c, ida), LMSCHED_OK);
    /* again: no harm, whether it has ended by now or not */
    int again = lmsched_cancel(c, ida);
    assert_true(again == LMSCHED_OK || again == LMSCHED_EINVAL);
    collect_wait(&a, 0, true);
    assert_int_equal(lmsched_result_error(a.res), LMSCHED_ECANCELED);
    assert_int_equal(kit_env_sim_wait(e, "active", 0, 0, WAIT_MS), 0);
    assert_int_equal(
        kit_env_status_wait(e, "requests.failed_by_class.canceled", 2, 2, WAIT_MS), 2);
    assert_int_equal(status_int(e, "inflight"), 0);
    assert_int_equal(lmsched_cancel(c, ida), LMSCHED_EINVAL);
    assert_int_equal(lmsched_cancel(c, 0), LMSCHED_EINVAL);
    assert_int_equal(lmsched_cancel(NULL, ida), LMSCHED_EINVAL);

    /* the slot serves the next request */
    lmsched_request *quick = stream_req("quick", 2);
    lmsched_result *res = NULL;
    assert_int_equal(lmsched_chat(c, quick, CALL_MS, &res), LMSCHED_OK);
    lmsched_result_free(res);
    lmsched_client_close(c);
    assert_int_equal(a.done, 1);
    assert_int_equal(b.done, 1);
    collect_fini(&a);
    collect_fini(&b);
    lmsched_request_free(slow);
    lmsched_request_free(quick);
}

/* A stream canceled while it runs (between pieces): it completes once as
 * canceled, after its last piece, and lmsim's slot frees. */
static void test_cancel_running_stream(void **state)
{
    kit_env *e = *state;
    const char *sim[] = {"--time-scale", "1", "--decode-tps", "10", "--slots", "1", NULL};
    kit_env_start(e, sim, NULL);
    lmsched_client *c = open_client(e);
    lmsched_request *req = stream_req("talk to me", 500);
    collect k;
    collect_init(&k);
    uint64_t id = 0;
    assert_int_equal(lmsched_chat_start(c, req, CALL_MS, on_delta, on_done, &k, &id),
                     LMSCHED_OK);
    collect_wait(&k, 2, false);
    assert_int_equal(kit_env_sim_wait(e, "active", 1, 1, WAIT_MS), 1);
    assert_int_equal(lmsched_cancel(c, id), LMSCHED_OK);
    collect_wait(&k, 0, true);
    assert_int_equal(lmsched_result_error(k.res), LMSCHED_ECANCELED);
    assert_int_equal(kit_env_sim_wait(e, "active", 0, 0, WAIT_MS), 0);
    assert_int_equal(
        kit_env_status_wait(e, "requests.failed_by_class.canceled", 1, 1, WAIT_MS), 1);
    assert_int_equal(kit_env_status_wait(e, "inflight", 0, 0, WAIT_MS), 0);
    lmsched_client_close(c);
    assert_int_equal(k.done, 1);
    assert_false(k.late_delta);
    printf("canceled after %d deltas\n", k.deltas);
    collect_fini(&k);
    lmsched_request_free(req);
}

/* A delta callback that returns non-zero ends its (blocking) stream as
 * canceled, and the daemon frees the slot. */
static void test_callback_stops_stream(void **state)
{
    kit_env *e = *state;
    const char *sim[] = {"--time-scale", "1", "--decode-tps", "20", "--slots", "1", NULL};
    kit_env_start(e, sim, NULL);
    lmsched_client *c = open_client(e);
    lmsched_request *req = stream_req("talk to me", 500);
    collect k;
    collect_init(&k);
    k.stop_after = 3;
    lmsched_result *res = NULL;
    assert_int_equal(lmsched_chat_stream(c, req, CALL_MS, on_delta, &k, &res),
                     LMSCHED_ECANCELED);
    assert_int_equal(k.deltas, 3);
    assert_non_null(strstr(lmsched_result_message(res), "delta callback"));
    lmsched_result_free(res);
    assert_int_equal(kit_env_sim_wait(e, "active", 0, 0, WAIT_MS), 0);
    assert_int_equal(
        kit_env_status_wait(e, "requests.failed_by_class.canceled", 1, 1, WAIT_MS), 1);
    /* argument errors */
    assert_int_equal(lmsched_chat_stream(c, req, CALL_MS, NULL, NULL, &res),
                     LMSCHED_EINVAL);
    assert_null(res);
    assert_int_equal(lmsched_chat_stream(c, NULL, CALL_MS, on_delta, &k, &res),
                     LMSCHED_EINVAL);
    assert_int_equal(lmsched_chat_stream(c, req, CALL_MS, on_delta, &k, NULL),
                     LMSCHED_EINVAL);
    lmsched_client_close(c);
    collect_fini(&k);
    lmsched_request_free(req);
}

/* A stream whose next piece takes longer than the client's idle timeout
 * fails with ETIMEDOUT and is canceled in the daemon (its slot frees). */
static void test_stream_idle_timeout(void **state)
{
    kit_env *e = *state;
    /* a token every 2 s (the first one comes right after the prefill) */
    const char *sim[] = {
        "--time-scale", "1", "--decode-tps", "0.5", "--slots", "1", NULL};
    kit_env_start(e, sim, NULL);
    lmsched_client *c = open_client(e);
    assert_int_equal(lmsched_client_set_stream_idle_timeout(c, 300), LMSCHED_OK);
    assert_int_equal(lmsched_client_set_stream_idle_timeout(NULL, 300), LMSCHED_EINVAL);
    lmsched_request *req = stream_req("slow", 50);
    collect k;
    collect_init(&k);
    lmsched_result *res = NULL;
    assert_int_equal(lmsched_chat_stream(c, req, CALL_MS, on_delta, &k, &res),
                     LMSCHED_ETIMEDOUT);
    printf("idle: %s (after %d deltas)\n", lmsched_result_message(res), k.deltas);
    assert_non_null(strstr(lmsched_result_message(res), "idle timeout"));
    assert_true(k.deltas >= 1);
    lmsched_result_free(res);
    assert_int_equal(kit_env_sim_wait(e, "active", 0, 0, WAIT_MS), 0);
    assert_int_equal(
        kit_env_status_wait(e, "requests.failed_by_class.canceled", 1, 1, WAIT_MS), 1);
    lmsched_client_close(c);
    collect_fini(&k);
    lmsched_request_free(req);
}

/* A call started without a completion callback is collected with
 * lmsched_wait, once. */
static void test_wait(void **state)
{
    kit_env *e = *state;
    const char *sim[] = {"--time-scale", "20", NULL};
    kit_env_start(e, sim, NULL);
    lmsched_client *c = open_client(e);
    lmsched_request *req = stream_req("wait for me", 8);
    uint64_t id1 = 0, id2 = 0;
    collect k;
    collect_init(&k);
    assert_int_equal(lmsched_chat_start(c, req, CALL_MS, NULL, NULL, NULL, &id1),
                     LMSCHED_OK);
    assert_int_equal(lmsched_chat_start(c, req, CALL_MS, on_delta, NULL, &k, &id2),
                     LMSCHED_OK);
    lmsched_result *r1 = NULL, *r2 = NULL;
    /* in the other order than started */
    assert_int_equal(lmsched_wait(c, id2, &r2), LMSCHED_OK);
    assert_int_equal(lmsched_wait(c, id1, &r1), LMSCHED_OK);
    assert_string_equal(lmsched_result_content(r1), lmsched_result_content(r2));
    assert_string_equal(k.content, lmsched_result_content(r2));
    lmsched_result *again = NULL;
    assert_int_equal(lmsched_wait(c, id1, &again), LMSCHED_EINVAL);
    assert_null(again);
    assert_int_equal(lmsched_wait(c, 424242, &again), LMSCHED_EINVAL);
    assert_int_equal(lmsched_wait(NULL, id1, &again), LMSCHED_EINVAL);
    assert_int_equal(lmsched_wait(c, id1, NULL), LMSCHED_EINVAL);
    /* a request that cannot start gives no id and no result to wait for */
    lmsched_request *empty = NULL;
    uint64_t id3 = 99;
    assert_int_equal(lmsched_request_alloc(&empty), LMSCHED_OK);
    assert_int_equal(lmsched_chat_start(c, empty, CALL_MS, NULL, NULL, NULL, &id3),
                     LMSCHED_EINVAL);
    assert_int_equal(id3, 0);
    /* one nobody waits for is freed by close */
    assert_int_equal(lmsched_chat_start(c, req, CALL_MS, NULL, NULL, NULL, NULL),
                     LMSCHED_OK);
    lmsched_client_close(c);
    lmsched_result_free(r1);
    lmsched_result_free(r2);
    lmsched_request_free(empty);
    lmsched_request_free(req);
    collect_fini(&k);
}

/* The blocking pattern with a cancel from another thread: start without a
 * callback, hand the id over, wait; the other thread cancels. */
typedef struct canceler {
    kit_env *e;
    lmsched_client *c;
    uint64_t id;
    int rc;
} canceler;

static void *cancel_thread(void *arg)
{
    canceler *x = arg;
    /* once the request runs on the backend */
    kit_env_sim_wait(x->e, "active", 1, 1, WAIT_MS);
    x->rc = lmsched_cancel(x->c, x->id);
    return NULL;
}

static void test_cancel_wait_from_thread(void **state)
{
    kit_env *e = *state;
    const char *sim[] = {"--time-scale", "1", "--decode-tps", "5", NULL};
    kit_env_start(e, sim, NULL);
    lmsched_client *c = open_client(e);
    lmsched_request *req = stream_req("slow", 300);
    canceler x = {.e = e, .c = c};
    assert_int_equal(lmsched_chat_start(c, req, CALL_MS, NULL, NULL, NULL, &x.id),
                     LMSCHED_OK);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, cancel_thread, &x), 0);
    lmsched_result *res = NULL;
    assert_int_equal(lmsched_wait(c, x.id, &res), LMSCHED_ECANCELED);
    pthread_join(t, NULL);
    assert_int_equal(x.rc, LMSCHED_OK);
    assert_int_equal(lmsched_result_error(res), LMSCHED_ECANCELED);
    lmsched_result_free(res);
    assert_int_equal(kit_env_sim_wait(e, "active", 0, 0, WAIT_MS), 0);
    lmsched_client_close(c);
    lmsched_request_free(req);
}

/* Closing a client with streams in flight ends each of them once, as
 * closed, before close returns. */
static void test_close_ends_streams(void **state)
{
    enum { N = 8 };
    kit_env *e = *state;
    const char *sim[] = {"--time-scale", "1", "--decode-tps", "10", NULL};
    kit_env_start(e, sim, NULL);
    lmsched_client *c = open_client(e);
    lmsched_request *req = stream_req("talk", 400);
    collect k[N];
    for (int i = 0; i < N; i++) {
        collect_init(&k[i]);
        assert_int_equal(
            lmsched_chat_start(c, req, CALL_MS, on_delta, on_done, &k[i], NULL),
            LMSCHED_OK);
    }
    /* some have pieces, some wait in the queue */
    collect_wait(&k[0], 1, false);
    lmsched_client_close(c);
    for (int i = 0; i < N; i++) {
        assert_int_equal(k[i].done, 1);
        assert_false(k[i].late_delta);
        int rc = lmsched_result_error(k[i].res);
        if (rc != LMSCHED_ECLOSED)
            fail_msg("stream %d ended with %s: %s", i, lmsched_err_name(rc),
                     lmsched_result_message(k[i].res));
        collect_fini(&k[i]);
    }
    /* the daemon saw the connection go and freed the slots */
    assert_int_equal(kit_env_sim_wait(e, "active", 0, 0, WAIT_MS), 0);
    assert_int_equal(kit_env_status_wait(e, "inflight", 0, 0, WAIT_MS), 0);
    lmsched_request_free(req);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_stream_equals_whole, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_many_async_streams, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_cancel_queued_and_running, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_cancel_running_stream, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_callback_stops_stream, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_stream_idle_timeout, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_wait, kit_env_setup, kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_cancel_wait_from_thread, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_close_ends_streams, kit_env_setup,
                                        kit_env_teardown),
    };
    return cmocka_run_group_tests_name("agent_stream", tests, NULL, NULL);
}
