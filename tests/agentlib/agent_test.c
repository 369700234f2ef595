/*
 * agent_test - the agent library's calls against a small REP server run by
 * the test itself on an ipc:// socket in a temporary directory: round trips,
 * status, error replies, thousands of calls in flight, batches, timeouts, a
 * missing or restarting daemon, close with calls in flight, and replies
 * that are not answers. The server decodes with lms_decode and answers with
 * lms_encode, as the daemon does.
 *
 * Time limits in here are hang guards (generous, never the thing tested),
 * except that a timeout must not fire long before it is due.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/supplemental/util/platform.h>

#include "lmsched/agent.h"
#include "proto/proto.h"

/* How long any wait in a test may take before the test fails. */
#define HANG_GUARD_MS 15000

/* ---- helpers ----------------------------------------------------------- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void deadline_in(struct timespec *ts, int ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static void cond_init_monotonic(pthread_cond_t *cv)
{
    pthread_condattr_t ca;
    assert_int_equal(pthread_condattr_init(&ca), 0);
    assert_int_equal(pthread_condattr_setclock(&ca, CLOCK_MONOTONIC), 0);
    assert_int_equal(pthread_cond_init(cv, &ca), 0);
    pthread_condattr_destroy(&ca);
}

/* A request with the given user message, or NULL. The caller frees it.
 * Usable from any thread (it asserts nothing). */
static lmsched_request *build_req(const char *content)
{
    lmsched_request *req = NULL;
    if (lmsched_request_alloc(&req) != LMSCHED_OK ||
        lmsched_request_set_system(req, "You are a test.") != LMSCHED_OK ||
        lmsched_request_add_message(req, "user", content) != LMSCHED_OK) {
        lmsched_request_free(req);
        return NULL;
    }
    return req;
}

static lmsched_request *make_req(const char *content)
{
    lmsched_request *req = build_req(content);
    assert_non_null(req);
    return req;
}

/* ---- the test server --------------------------------------------------- */

typedef enum srv_mode {
    SRV_ECHO,    /* answer every request (see srv_answer) */
    SRV_HOLD,    /* receive requests and never answer */
    SRV_GARBAGE, /* answer with bytes that are not msgpack */
    SRV_WRONG_ID /* answer chats with a reply carrying another id */
} srv_mode;

typedef struct test_srv {
    nng_socket sock;
    nng_ctx ctx;
    nng_aio *aio;
    pthread_t thread;
    atomic_bool stop;
    srv_mode mode;
    pthread_mutex_t mtx;
    pthread_cond_t cv;
    unsigned received; /* requests received */
    unsigned errors;   /* problems seen on the server thread, checked by srv_stop
                        * (cmocka's assertions work on the test's thread only) */
    lms_msg last;      /* the last chat request received */
    bool have_last;
} test_srv;

/*
 * The answer to a decoded request in SRV_ECHO mode. A chat whose last
 * message starts with "fail-field:" gets error EBUSY with a field, "fail:"
 * gets EDEADLINE without one; any other chat gets "echo: <content>" with
 * fixed usage and timings. A status gets a small JSON document.
 */
static int srv_answer(const lms_msg *req, void **buf, size_t *len)
{
    lms_msg rep;
    int rc;

    if (req->kind == LMS_KIND_STATUS) {
        lms_msg_init(&rep, LMS_KIND_STATUS_REPLY);
        rep.id = req->id;
        rep.u.status_reply.json = "{\"daemon\":\"test\"}";
        return lms_encode(&rep, buf, len);
    }
    const lms_chat_req *c = &req->u.chat;
    const char *content = c->messages[c->n_messages - 1].content;
    if (strncmp(content, "fail-field:", 11) == 0) {
        return lms_encode_error(req->id, LMSCHED_EBUSY, "queue is full", "priority", buf,
                                len);
    }
    if (strncmp(content, "fail:", 5) == 0) {
        return lms_encode_error(req->id, LMSCHED_EDEADLINE, "deadline passed", NULL, buf,
                                len);
    }
    char *text = malloc(strlen(content) + 7);
    if (text == NULL) {
        return LMSCHED_ENOMEM;
    }
    sprintf(text, "echo: %s", content);
    lms_msg_init(&rep, LMS_KIND_CHAT_REPLY);
    rep.id = req->id;
    rep.u.chat_reply.content = text;
    rep.u.chat_reply.finish_reason = "stop";
    rep.u.chat_reply.model = c->model != NULL ? c->model : "test-model";
    rep.u.chat_reply.usage.prompt_tokens = (int64_t)c->n_messages;
    rep.u.chat_reply.usage.completion_tokens = 7;
    rep.u.chat_reply.usage.cached_tokens = 3;
    rep.u.chat_reply.timings.queue_ms = 1.5;
    rep.u.chat_reply.timings.ttft_ms = 2.5;
    rep.u.chat_reply.timings.total_ms = 4.0;
    rep.u.chat_reply.retries = 2;
    rc = lms_encode(&rep, buf, len);
    free(text);
    return rc;
}

/* Handles one request; returns the reply body in *buf (NULL: no reply). */
static void srv_handle(test_srv *s, nng_msg *msg, void **buf, size_t *len)
{
    lms_msg req;
    lms_decode_err de;
    int rc = lms_decode(nng_msg_body(msg), nng_msg_len(msg), NULL, &req, &de);

    *buf = NULL;
    *len = 0;
    pthread_mutex_lock(&s->mtx);
    s->received++;
    /* The library must never send what the daemon cannot read. */
    if (rc != LMSCHED_OK) {
        fprintf(stderr, "server could not decode a request: %s\n", de.message);
        s->errors++;
    }
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mtx);
    if (rc != LMSCHED_OK) {
        return;
    }
    rc = LMSCHED_OK;
    switch (s->mode) {
    case SRV_HOLD:
        break;
    case SRV_GARBAGE:
        if ((*buf = malloc(2)) == NULL) {
            rc = LMSCHED_ENOMEM;
            break;
        }
        memcpy(*buf, "\xc1\xc1", 2);
        *len = 2;
        break;
    case SRV_WRONG_ID: {
        lms_msg rep;
        lms_msg_init(&rep, LMS_KIND_CHAT_REPLY);
        rep.id = req.id + 1000;
        rep.u.chat_reply.content = "not yours";
        rep.u.chat_reply.finish_reason = "stop";
        rc = lms_encode(&rep, buf, len);
        break;
    }
    case SRV_ECHO:
        rc = srv_answer(&req, buf, len);
        break;
    }
    pthread_mutex_lock(&s->mtx);
    if (rc != LMSCHED_OK) {
        s->errors++;
    }
    pthread_mutex_unlock(&s->mtx);
    if (req.kind == LMS_KIND_CHAT) {
        pthread_mutex_lock(&s->mtx);
        if (s->have_last) {
            lms_msg_fini(&s->last);
        }
        s->last = req;
        s->have_last = true;
        pthread_mutex_unlock(&s->mtx);
    } else {
        lms_msg_fini(&req);
    }
}

static void *srv_main(void *arg)
{
    test_srv *s = arg;

    while (!atomic_load(&s->stop)) {
        void *buf;
        size_t len;
        nng_msg *msg;
        int rv;

        /* A short receive timeout so the loop sees s->stop. */
        nng_aio_set_timeout(s->aio, 50);
        nng_ctx_recv(s->ctx, s->aio);
        nng_aio_wait(s->aio);
        rv = nng_aio_result(s->aio);
        if (rv == NNG_ETIMEDOUT) {
            continue;
        }
        if (rv != 0) {
            break;
        }
        msg = nng_aio_get_msg(s->aio);
        srv_handle(s, msg, &buf, &len);
        if (buf == NULL) {
            nng_msg_free(msg);
            continue;
        }
        nng_msg_clear(msg);
        rv = nng_msg_append(msg, buf, len);
        free(buf);
        if (rv != 0) {
            nng_msg_free(msg);
            pthread_mutex_lock(&s->mtx);
            s->errors++;
            pthread_mutex_unlock(&s->mtx);
            continue;
        }
        nng_aio_set_timeout(s->aio, 5000);
        nng_aio_set_msg(s->aio, msg);
        nng_ctx_send(s->ctx, s->aio);
        nng_aio_wait(s->aio);
        if (nng_aio_result(s->aio) != 0) {
            nng_msg_free(nng_aio_get_msg(s->aio));
        }
    }
    return NULL;
}

static void srv_start(test_srv *s, const char *url, srv_mode mode)
{
    memset(s, 0, sizeof(*s));
    s->mode = mode;
    atomic_init(&s->stop, false);
    assert_int_equal(pthread_mutex_init(&s->mtx, NULL), 0);
    cond_init_monotonic(&s->cv);
    assert_int_equal(nng_rep0_open(&s->sock), 0);
    assert_int_equal(nng_listen(s->sock, url, NULL, 0), 0);
    assert_int_equal(nng_ctx_open(&s->ctx, s->sock), 0);
    assert_int_equal(nng_aio_alloc(&s->aio, NULL, NULL), 0);
    assert_int_equal(pthread_create(&s->thread, NULL, srv_main, s), 0);
}

/* Stops the server; its clients see their connection close. */
static void srv_stop(test_srv *s)
{
    atomic_store(&s->stop, true);
    pthread_join(s->thread, NULL);
    nng_aio_free(s->aio);
    nng_close(s->sock);
    assert_int_equal(s->errors, 0);
    if (s->have_last) {
        lms_msg_fini(&s->last);
    }
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mtx);
}

/* Waits until the server has received at least n requests. */
static void srv_wait_received(test_srv *s, unsigned n)
{
    struct timespec until;

    deadline_in(&until, HANG_GUARD_MS);
    pthread_mutex_lock(&s->mtx);
    while (s->received < n) {
        if (pthread_cond_timedwait(&s->cv, &s->mtx, &until) == ETIMEDOUT) {
            break;
        }
    }
    unsigned got = s->received;
    pthread_mutex_unlock(&s->mtx);
    assert_true(got >= n);
}

/* ---- collecting async outcomes ----------------------------------------- */

typedef struct collector collector;

typedef struct slot {
    collector *col;
    size_t i;
} slot;

struct collector {
    pthread_mutex_t mtx;
    pthread_cond_t cv;
    size_t n;
    size_t done;
    lmsched_result **res;
    unsigned *calls; /* callbacks run per slot; must end at exactly 1 */
    slot *slots;
};

static collector *collector_new(size_t n)
{
    collector *col = calloc(1, sizeof(*col));
    assert_non_null(col);
    col->n = n;
    col->res = calloc(n, sizeof(*col->res));
    col->calls = calloc(n, sizeof(*col->calls));
    col->slots = calloc(n, sizeof(*col->slots));
    assert_non_null(col->res);
    assert_non_null(col->calls);
    assert_non_null(col->slots);
    for (size_t i = 0; i < n; i++) {
        col->slots[i].col = col;
        col->slots[i].i = i;
    }
    assert_int_equal(pthread_mutex_init(&col->mtx, NULL), 0);
    cond_init_monotonic(&col->cv);
    return col;
}

static void collector_free(collector *col)
{
    for (size_t i = 0; i < col->n; i++) {
        lmsched_result_free(col->res[i]);
    }
    pthread_cond_destroy(&col->cv);
    pthread_mutex_destroy(&col->mtx);
    free(col->res);
    free(col->calls);
    free(col->slots);
    free(col);
}

static void collect_cb(lmsched_result *res, void *arg)
{
    slot *sl = arg;
    collector *col = sl->col;

    pthread_mutex_lock(&col->mtx);
    col->calls[sl->i]++;
    if (col->res[sl->i] == NULL) {
        col->res[sl->i] = res;
    } else {
        lmsched_result_free(res); /* a second callback: counted, then failed on */
    }
    col->done++;
    pthread_cond_broadcast(&col->cv);
    pthread_mutex_unlock(&col->mtx);
}

/* Waits until n callbacks have run; returns how many did. */
static size_t collect_wait(collector *col, size_t n)
{
    struct timespec until;
    size_t done;

    deadline_in(&until, HANG_GUARD_MS);
    pthread_mutex_lock(&col->mtx);
    while (col->done < n) {
        if (pthread_cond_timedwait(&col->cv, &col->mtx, &until) == ETIMEDOUT) {
            break;
        }
    }
    done = col->done;
    pthread_mutex_unlock(&col->mtx);
    return done;
}

/* ---- fixture: a temporary directory for the socket --------------------- */

typedef struct fixture {
    char dir[64];
    char url[128];
    char path[96];
} fixture;

static int fixture_setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    if (f == NULL) {
        return -1;
    }
    snprintf(f->dir, sizeof(f->dir), "/tmp/lmsched-agent-XXXXXX");
    if (mkdtemp(f->dir) == NULL) {
        free(f);
        return -1;
    }
    snprintf(f->path, sizeof(f->path), "%s/d.sock", f->dir);
    snprintf(f->url, sizeof(f->url), "ipc://%s", f->path);
    *state = f;
    return 0;
}

static int fixture_teardown(void **state)
{
    fixture *f = *state;
    unlink(f->path);
    rmdir(f->dir);
    free(f);
    return 0;
}

/* ---- tests ------------------------------------------------------------- */

static void test_chat_round_trip(void **state)
{
    fixture *f = *state;
    test_srv srv;
    lmsched_client *c = NULL;
    lmsched_request *req = NULL;
    lmsched_result *res = NULL;

    srv_start(&srv, f->url, SRV_ECHO);
    assert_int_equal(lmsched_client_open(&c, f->url), LMSCHED_OK);

    assert_int_equal(lmsched_request_alloc(&req), LMSCHED_OK);
    assert_int_equal(lmsched_request_set_system(req, "You are terse."), LMSCHED_OK);
    assert_int_equal(lmsched_request_add_message(req, "user", "first"), LMSCHED_OK);
    assert_int_equal(lmsched_request_add_message(req, "assistant", "ok"), LMSCHED_OK);
    assert_int_equal(lmsched_request_add_message(req, "user", "second \xc3\xa9"),
                     LMSCHED_OK);
    assert_int_equal(lmsched_request_set_model(req, "qwen-test"), LMSCHED_OK);
    assert_int_equal(lmsched_request_set_max_tokens(req, 64), LMSCHED_OK);
    assert_int_equal(lmsched_request_set_temperature(req, 0.25), LMSCHED_OK);
    assert_int_equal(lmsched_request_set_top_p(req, 0.75), LMSCHED_OK);
    assert_int_equal(lmsched_request_add_stop(req, "</s>"), LMSCHED_OK);
    assert_int_equal(lmsched_request_add_stop(req, "\n\n"), LMSCHED_OK);
    assert_int_equal(lmsched_request_set_seed(req, -42), LMSCHED_OK);
    assert_int_equal(lmsched_request_set_priority(req, 8), LMSCHED_OK);
    assert_int_equal(lmsched_request_set_deadline_ms(req, 1234), LMSCHED_OK);
    assert_int_equal(lmsched_request_set_agent(req, "coder"), LMSCHED_OK);
    assert_int_equal(lmsched_request_set_client_id(req, "client-7"), LMSCHED_OK);

    assert_int_equal(lmsched_chat(c, req, 10000, &res), LMSCHED_OK);
    /* The request was copied: freeing it now must not matter. */
    lmsched_request_free(req);
    assert_non_null(res);
    assert_int_equal(lmsched_result_error(res), LMSCHED_OK);
    assert_null(lmsched_result_message(res));
    assert_string_equal(lmsched_result_content(res), "echo: second \xc3\xa9");
    assert_string_equal(lmsched_result_finish_reason(res), "stop");
    assert_string_equal(lmsched_result_model(res), "qwen-test");
    assert_int_equal(lmsched_result_prompt_tokens(res), 3);
    assert_int_equal(lmsched_result_completion_tokens(res), 7);
    assert_int_equal(lmsched_result_cached_tokens(res), 3);
    assert_true(lmsched_result_queue_ms(res) == 1.5);
    assert_true(lmsched_result_ttft_ms(res) == 2.5);
    assert_true(lmsched_result_total_ms(res) == 4.0);
    assert_int_equal(lmsched_result_retries(res), 2);
    lmsched_result_free(res);

    /* What the server received is exactly what was set. */
    pthread_mutex_lock(&srv.mtx);
    assert_true(srv.have_last);
    const lms_msg *m = &srv.last;
    assert_int_equal(m->kind, LMS_KIND_CHAT);
    assert_int_equal(m->version, LMSCHED_PROTOCOL_VERSION);
    assert_true(m->id != 0);
    const lms_chat_req *r = &m->u.chat;
    assert_string_equal(r->system, "You are terse.");
    assert_int_equal(r->n_messages, 3);
    assert_string_equal(r->messages[0].role, "user");
    assert_string_equal(r->messages[0].content, "first");
    assert_string_equal(r->messages[1].role, "assistant");
    assert_string_equal(r->messages[1].content, "ok");
    assert_string_equal(r->messages[2].content, "second \xc3\xa9");
    assert_string_equal(r->model, "qwen-test");
    assert_int_equal(r->max_tokens, 64);
    assert_true(r->has_temperature && r->temperature == 0.25);
    assert_true(r->has_top_p && r->top_p == 0.75);
    assert_int_equal(r->n_stop, 2);
    assert_string_equal(r->stop[0], "</s>");
    assert_string_equal(r->stop[1], "\n\n");
    assert_true(r->has_seed && r->seed == -42);
    assert_int_equal(r->priority, 8);
    assert_int_equal(r->deadline_ms, 1234);
    assert_string_equal(r->agent, "coder");
    assert_string_equal(r->client_id, "client-7");
    pthread_mutex_unlock(&srv.mtx);

    /* The unset fields go out as the protocol's defaults; an unset system
     * prompt is sent as "". */
    assert_int_equal(lmsched_request_alloc(&req), LMSCHED_OK);
    assert_int_equal(lmsched_request_add_message(req, "user", "plain"), LMSCHED_OK);
    assert_int_equal(lmsched_chat(c, req, 0, &res), LMSCHED_OK);
    assert_string_equal(lmsched_result_content(res), "echo: plain");
    assert_string_equal(lmsched_result_model(res), "test-model");
    lmsched_result_free(res);
    lmsched_request_free(req);
    pthread_mutex_lock(&srv.mtx);
    r = &srv.last.u.chat;
    assert_string_equal(r->system, "");
    assert_null(r->model);
    assert_int_equal(r->max_tokens, -1);
    assert_false(r->has_temperature);
    assert_false(r->has_top_p);
    assert_false(r->has_seed);
    assert_int_equal(r->n_stop, 0);
    assert_int_equal(r->priority, 5);
    assert_int_equal(r->deadline_ms, 0);
    assert_null(r->agent);
    assert_null(r->client_id);
    pthread_mutex_unlock(&srv.mtx);

    lmsched_client_close(c);
    srv_stop(&srv);
}

static void test_status(void **state)
{
    fixture *f = *state;
    test_srv srv;
    lmsched_client *c = NULL;
    char *json = NULL;
    char *err = (char *)"untouched";

    srv_start(&srv, f->url, SRV_ECHO);
    assert_int_equal(lmsched_client_open(&c, f->url), LMSCHED_OK);
    assert_int_equal(lmsched_status(c, 10000, &json, &err), LMSCHED_OK);
    assert_string_equal(json, "{\"daemon\":\"test\"}");
    assert_null(err);
    lmsched_free(json);
    /* errmsg may be NULL. */
    assert_int_equal(lmsched_status(c, 10000, &json, NULL), LMSCHED_OK);
    lmsched_free(json);
    assert_int_equal(lmsched_status(c, 10000, NULL, NULL), LMSCHED_EINVAL);
    assert_int_equal(lmsched_status(NULL, 10000, &json, NULL), LMSCHED_EINVAL);
    assert_null(json);
    lmsched_client_close(c);
    srv_stop(&srv);
}

static void test_error_reply(void **state)
{
    fixture *f = *state;
    test_srv srv;
    lmsched_client *c = NULL;
    lmsched_request *req;
    lmsched_result *res = NULL;

    srv_start(&srv, f->url, SRV_ECHO);
    assert_int_equal(lmsched_client_open(&c, f->url), LMSCHED_OK);

    req = make_req("fail-field: please");
    assert_int_equal(lmsched_chat(c, req, 10000, &res), LMSCHED_EBUSY);
    assert_non_null(res);
    assert_int_equal(lmsched_result_error(res), LMSCHED_EBUSY);
    assert_string_equal(lmsched_result_message(res), "queue is full (field: priority)");
    assert_null(lmsched_result_content(res));
    assert_int_equal(lmsched_result_prompt_tokens(res), -1);
    lmsched_result_free(res);
    lmsched_request_free(req);

    req = make_req("fail: late");
    assert_int_equal(lmsched_chat(c, req, 10000, &res), LMSCHED_EDEADLINE);
    assert_string_equal(lmsched_result_message(res), "deadline passed");
    lmsched_result_free(res);
    lmsched_request_free(req);

    lmsched_client_close(c);
    srv_stop(&srv);
}

#define MANY 500

static void test_many_async_from_one_thread(void **state)
{
    fixture *f = *state;
    test_srv srv;
    lmsched_client *c = NULL;
    collector *col = collector_new(MANY);

    srv_start(&srv, f->url, SRV_ECHO);
    assert_int_equal(lmsched_client_open(&c, f->url), LMSCHED_OK);
    for (size_t i = 0; i < MANY; i++) {
        char content[32];
        snprintf(content, sizeof(content), "n%zu", i);
        lmsched_request *req = make_req(content);
        assert_int_equal(lmsched_chat_async(c, req, 20000, collect_cb, &col->slots[i]),
                         LMSCHED_OK);
        lmsched_request_free(req);
    }
    assert_int_equal(collect_wait(col, MANY), MANY);
    for (size_t i = 0; i < MANY; i++) {
        char want[40];
        snprintf(want, sizeof(want), "echo: n%zu", i);
        assert_int_equal(col->calls[i], 1);
        assert_int_equal(lmsched_result_error(col->res[i]), LMSCHED_OK);
        assert_string_equal(lmsched_result_content(col->res[i]), want);
    }
    lmsched_client_close(c);
    /* Exactly once: closing must not run any callback again. */
    assert_int_equal(col->done, MANY);
    collector_free(col);
    srv_stop(&srv);
}

#define BATCH 20

static void test_batch_in_order(void **state)
{
    fixture *f = *state;
    test_srv srv;
    lmsched_client *c = NULL;
    lmsched_request *reqs[BATCH];
    lmsched_result *results[BATCH];

    srv_start(&srv, f->url, SRV_ECHO);
    assert_int_equal(lmsched_client_open(&c, f->url), LMSCHED_OK);
    for (size_t i = 0; i < BATCH; i++) {
        char content[32];
        if (i % 3 == 0) {
            snprintf(content, sizeof(content), "fail-field:%zu", i);
        } else if (i % 7 == 0) {
            snprintf(content, sizeof(content), "fail:%zu", i);
        } else {
            snprintf(content, sizeof(content), "b%zu", i);
        }
        reqs[i] = make_req(content);
    }
    assert_int_equal(lmsched_chat_batch(c, (const lmsched_request *const *)reqs, BATCH,
                                        10000, results),
                     LMSCHED_OK);
    for (size_t i = 0; i < BATCH; i++) {
        assert_non_null(results[i]);
        if (i % 3 == 0) {
            assert_int_equal(lmsched_result_error(results[i]), LMSCHED_EBUSY);
            assert_string_equal(lmsched_result_message(results[i]),
                                "queue is full (field: priority)");
        } else if (i % 7 == 0) {
            assert_int_equal(lmsched_result_error(results[i]), LMSCHED_EDEADLINE);
        } else {
            char want[40];
            snprintf(want, sizeof(want), "echo: b%zu", i);
            assert_int_equal(lmsched_result_error(results[i]), LMSCHED_OK);
            assert_string_equal(lmsched_result_content(results[i]), want);
        }
        lmsched_result_free(results[i]);
    }

    /* A request that cannot start gets its own error result in its place;
     * the others still run. */
    lmsched_request *empty = NULL;
    assert_int_equal(lmsched_request_alloc(&empty), LMSCHED_OK);
    const lmsched_request *mixed[4] = {reqs[1], empty, NULL, reqs[2]};
    assert_int_equal(lmsched_chat_batch(c, mixed, 4, 10000, results), LMSCHED_OK);
    assert_string_equal(lmsched_result_content(results[0]), "echo: b1");
    assert_int_equal(lmsched_result_error(results[1]), LMSCHED_EINVAL);
    assert_non_null(lmsched_result_message(results[1]));
    assert_int_equal(lmsched_result_error(results[2]), LMSCHED_EINVAL);
    assert_string_equal(lmsched_result_content(results[3]), "echo: b2");
    for (size_t i = 0; i < 4; i++) {
        lmsched_result_free(results[i]);
    }

    /* Nothing could start: the batch fails and leaves no results. */
    const lmsched_request *none[2] = {empty, empty};
    results[0] = results[1] = (lmsched_result *)&results; /* garbage to be cleared */
    assert_int_equal(lmsched_chat_batch(c, none, 2, 10000, results), LMSCHED_EINVAL);
    assert_null(results[0]);
    assert_null(results[1]);
    assert_int_equal(lmsched_chat_batch(c, none, 0, 10000, results), LMSCHED_OK);
    assert_int_equal(lmsched_chat_batch(NULL, none, 2, 10000, results), LMSCHED_EINVAL);
    assert_int_equal(lmsched_chat_batch(c, NULL, 2, 10000, results), LMSCHED_EINVAL);

    lmsched_request_free(empty);
    for (size_t i = 0; i < BATCH; i++) {
        lmsched_request_free(reqs[i]);
    }
    lmsched_client_close(c);
    srv_stop(&srv);
}

static void test_reply_timeout(void **state)
{
    fixture *f = *state;
    test_srv srv;
    lmsched_client *c = NULL;
    lmsched_request *req = make_req("never answered");
    lmsched_result *res = NULL;
    char *json = NULL, *err = NULL;

    srv_start(&srv, f->url, SRV_HOLD);
    assert_int_equal(lmsched_client_open(&c, f->url), LMSCHED_OK);

    int64_t t0 = now_ms();
    assert_int_equal(lmsched_chat(c, req, 300, &res), LMSCHED_ETIMEDOUT);
    int64_t took = now_ms() - t0;
    assert_true(took >= 150);
    assert_true(took < HANG_GUARD_MS);
    assert_string_equal(lmsched_result_message(res),
                        "no reply from lmsched within 300 ms");
    lmsched_result_free(res);

    assert_int_equal(lmsched_status(c, 200, &json, &err), LMSCHED_ETIMEDOUT);
    assert_null(json);
    assert_non_null(err);
    assert_non_null(strstr(err, "200 ms"));
    lmsched_free(err);

    /* The server did receive both: the time ran out waiting for replies. */
    srv_wait_received(&srv, 2);
    lmsched_client_close(c);
    lmsched_request_free(req);
    srv_stop(&srv);
}

static void test_no_daemon(void **state)
{
    fixture *f = *state;
    lmsched_client *c = NULL;
    lmsched_request *req = make_req("anyone?");
    lmsched_result *res = NULL;
    char *json = NULL, *err = NULL;

    /* Opening succeeds with nothing listening. */
    assert_int_equal(lmsched_client_open(&c, f->url), LMSCHED_OK);
    assert_int_equal(lmsched_client_set_connect_timeout(c, 200), LMSCHED_OK);

    int64_t t0 = now_ms();
    assert_int_equal(lmsched_chat(c, req, 60000, &res), LMSCHED_ENODAEMON);
    int64_t took = now_ms() - t0;
    assert_true(took >= 100);
    assert_true(took < HANG_GUARD_MS);
    assert_non_null(res);
    assert_non_null(strstr(lmsched_result_message(res), f->url));
    assert_non_null(strstr(lmsched_result_message(res), "lmsched serve"));
    lmsched_result_free(res);

    assert_int_equal(lmsched_status(c, 60000, &json, &err), LMSCHED_ENODAEMON);
    assert_null(json);
    assert_non_null(strstr(err, f->url));
    lmsched_free(err);

    /* With a call timeout shorter than the connect timeout, the daemon is
     * still reported missing, at the call timeout. */
    assert_int_equal(lmsched_client_set_connect_timeout(c, 0), LMSCHED_OK);
    assert_int_equal(lmsched_chat(c, req, 150, &res), LMSCHED_ENODAEMON);
    lmsched_result_free(res);

    lmsched_client_close(c);
    lmsched_request_free(req);
}

static void test_daemon_restart(void **state)
{
    fixture *f = *state;
    test_srv a, b;
    lmsched_client *c = NULL;
    collector *col = collector_new(7);
    lmsched_result *res = NULL;

    srv_start(&a, f->url, SRV_HOLD);
    assert_int_equal(lmsched_client_open(&c, f->url), LMSCHED_OK);
    /* Long enough to span the restart below. */
    assert_int_equal(lmsched_client_set_connect_timeout(c, 8000), LMSCHED_OK);

    for (size_t i = 0; i < 7; i++) {
        if (i == 4) {
            /* Four requests are held by the first daemon; it goes away,
             * and three more are sent while nothing listens. */
            srv_wait_received(&a, 4);
            srv_stop(&a);
        }
        char content[16];
        snprintf(content, sizeof(content), "r%zu", i);
        lmsched_request *req = make_req(content);
        assert_int_equal(lmsched_chat_async(c, req, 10000, collect_cb, &col->slots[i]),
                         LMSCHED_OK);
        lmsched_request_free(req);
    }
    nng_msleep(200);
    srv_start(&b, f->url, SRV_ECHO);

    assert_int_equal(collect_wait(col, 7), 7);
    for (size_t i = 0; i < 7; i++) {
        lmsched_result *r = col->res[i];
        int e = lmsched_result_error(r);
        assert_int_equal(col->calls[i], 1);
        if (i < 4) {
            /* Sent on the connection that closed: nng's req0 does not
             * resend with the resend timer off; the call fails clearly. */
            assert_int_equal(e, LMSCHED_ENODAEMON);
            assert_non_null(strstr(lmsched_result_message(r), "lost"));
        } else if (e == LMSCHED_OK) {
            char want[16];
            snprintf(want, sizeof(want), "echo: r%zu", i);
            assert_string_equal(lmsched_result_content(r), want);
        } else {
            /* Possible if the request went out on the dying connection. */
            assert_int_equal(e, LMSCHED_ENODAEMON);
            assert_non_null(lmsched_result_message(r));
        }
    }

    /* The client reconnected by itself. */
    lmsched_request *req = make_req("back?");
    assert_int_equal(lmsched_chat(c, req, 10000, &res), LMSCHED_OK);
    assert_string_equal(lmsched_result_content(res), "echo: back?");
    lmsched_result_free(res);
    lmsched_request_free(req);

    lmsched_client_close(c);
    collector_free(col);
    srv_stop(&b);
}

static void test_close_with_calls_in_flight(void **state)
{
    fixture *f = *state;
    test_srv srv;
    lmsched_client *c = NULL, *lonely = NULL;
    collector *col = collector_new(13);
    char nowhere[160];

    srv_start(&srv, f->url, SRV_HOLD);
    assert_int_equal(lmsched_client_open(&c, f->url), LMSCHED_OK);
    /* A second client whose requests are still waiting for a connection. */
    snprintf(nowhere, sizeof(nowhere), "%s.absent", f->url);
    assert_int_equal(lmsched_client_open(&lonely, nowhere), LMSCHED_OK);
    assert_int_equal(lmsched_client_set_connect_timeout(lonely, 60000), LMSCHED_OK);

    lmsched_request *req = make_req("held");
    for (size_t i = 0; i < 13; i++) {
        lmsched_client *to = i < 10 ? c : lonely;
        assert_int_equal(lmsched_chat_async(to, req, 60000, collect_cb, &col->slots[i]),
                         LMSCHED_OK);
    }
    lmsched_request_free(req);
    srv_wait_received(&srv, 10);

    int64_t t0 = now_ms();
    lmsched_client_close(c);
    lmsched_client_close(lonely);
    assert_true(now_ms() - t0 < HANG_GUARD_MS);
    /* Every callback ran before close returned, once, with ECLOSED. */
    pthread_mutex_lock(&col->mtx);
    assert_int_equal(col->done, 13);
    for (size_t i = 0; i < 13; i++) {
        assert_int_equal(col->calls[i], 1);
        assert_int_equal(lmsched_result_error(col->res[i]), LMSCHED_ECLOSED);
        assert_non_null(lmsched_result_message(col->res[i]));
    }
    pthread_mutex_unlock(&col->mtx);
    collector_free(col);
    srv_stop(&srv);
}

static void test_replies_that_are_not_answers(void **state)
{
    fixture *f = *state;
    test_srv srv;
    lmsched_client *c = NULL;
    lmsched_request *req = make_req("hello");
    lmsched_result *res = NULL;

    srv_start(&srv, f->url, SRV_GARBAGE);
    assert_int_equal(lmsched_client_open(&c, f->url), LMSCHED_OK);
    assert_int_equal(lmsched_chat(c, req, 10000, &res), LMSCHED_EPROTO);
    assert_non_null(strstr(lmsched_result_message(res), "malformed reply"));
    lmsched_result_free(res);
    lmsched_client_close(c);
    srv_stop(&srv);

    srv_start(&srv, f->url, SRV_WRONG_ID);
    assert_int_equal(lmsched_client_open(&c, f->url), LMSCHED_OK);
    assert_int_equal(lmsched_chat(c, req, 10000, &res), LMSCHED_EPROTO);
    assert_non_null(strstr(lmsched_result_message(res), "does not match"));
    lmsched_result_free(res);
    lmsched_client_close(c);
    srv_stop(&srv);
    lmsched_request_free(req);
}

static void test_invalid_calls(void **state)
{
    fixture *f = *state;
    lmsched_client *c = NULL;
    lmsched_request *empty = NULL;
    lmsched_request *req = make_req("x");
    lmsched_result *res = (lmsched_result *)&res;
    collector *col = collector_new(1);

    assert_int_equal(lmsched_client_open(NULL, f->url), LMSCHED_EINVAL);
    assert_int_equal(lmsched_client_open(&c, "nope://where"), LMSCHED_EINVAL);
    assert_null(c);
    assert_int_equal(lmsched_client_open(&c, ""), LMSCHED_EINVAL);
    assert_int_equal(lmsched_client_open(&c, "tcp://"), LMSCHED_EINVAL);
    lmsched_client_close(NULL);
    assert_int_equal(lmsched_client_set_connect_timeout(NULL, 5), LMSCHED_EINVAL);

    assert_int_equal(lmsched_client_open(&c, f->url), LMSCHED_OK);
    assert_int_equal(lmsched_request_alloc(&empty), LMSCHED_OK);
    /* A request without a message: EINVAL and no result. */
    assert_int_equal(lmsched_chat(c, empty, 1000, &res), LMSCHED_EINVAL);
    assert_null(res);
    assert_int_equal(lmsched_chat(c, NULL, 1000, &res), LMSCHED_EINVAL);
    assert_int_equal(lmsched_chat(NULL, req, 1000, &res), LMSCHED_EINVAL);
    assert_int_equal(lmsched_chat(c, req, 1000, NULL), LMSCHED_EINVAL);
    assert_int_equal(lmsched_chat_async(c, empty, 1000, collect_cb, &col->slots[0]),
                     LMSCHED_EINVAL);
    assert_int_equal(lmsched_chat_async(c, req, 1000, NULL, NULL), LMSCHED_EINVAL);
    assert_int_equal(lmsched_chat_async(c, NULL, 1000, collect_cb, &col->slots[0]),
                     LMSCHED_EINVAL);

    /* Over the message limit: refused before sending, with a result. */
    size_t big = 17u * 1024 * 1024;
    char *text = malloc(big + 1);
    assert_non_null(text);
    memset(text, 'a', big);
    text[big] = '\0';
    assert_int_equal(lmsched_request_add_message(req, "user", text), LMSCHED_OK);
    free(text);
    assert_int_equal(lmsched_chat(c, req, 1000, &res), LMSCHED_ETOOLARGE);
    assert_non_null(strstr(lmsched_result_message(res), "limit"));
    lmsched_result_free(res);
    assert_int_equal(lmsched_chat_async(c, req, 1000, collect_cb, &col->slots[0]),
                     LMSCHED_ETOOLARGE);

    lmsched_client_close(c);
    /* None of the refused calls ran a callback. */
    assert_int_equal(col->done, 0);
    collector_free(col);
    lmsched_request_free(empty);
    lmsched_request_free(req);
}

#define THREADS 4
#define PER_THREAD 25

typedef struct worker {
    lmsched_client *c;
    int id;
    int ok;
} worker;

static void *worker_main(void *arg)
{
    worker *w = arg;

    for (int i = 0; i < PER_THREAD; i++) {
        char content[32], want[40];
        lmsched_result *res = NULL;
        snprintf(content, sizeof(content), "t%d-%d", w->id, i);
        snprintf(want, sizeof(want), "echo: %s", content);
        lmsched_request *req = build_req(content);
        if (req != NULL && lmsched_chat(w->c, req, 20000, &res) == LMSCHED_OK &&
            strcmp(lmsched_result_content(res), want) == 0) {
            w->ok++;
        }
        lmsched_result_free(res);
        lmsched_request_free(req);
    }
    return NULL;
}

static void test_threads_share_a_client(void **state)
{
    fixture *f = *state;
    test_srv srv;
    lmsched_client *c = NULL;
    pthread_t th[THREADS];
    worker w[THREADS];

    srv_start(&srv, f->url, SRV_ECHO);
    assert_int_equal(lmsched_client_open(&c, f->url), LMSCHED_OK);
    for (int i = 0; i < THREADS; i++) {
        w[i].c = c;
        w[i].id = i;
        w[i].ok = 0;
        assert_int_equal(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(w[i].ok, PER_THREAD);
    }
    lmsched_client_close(c);
    srv_stop(&srv);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, fixture_setup, fixture_teardown)
    const struct CMUnitTest tests[] = {
        T(test_chat_round_trip),
        T(test_status),
        T(test_error_reply),
        T(test_many_async_from_one_thread),
        T(test_batch_in_order),
        T(test_reply_timeout),
        T(test_no_daemon),
        T(test_daemon_restart),
        T(test_close_with_calls_in_flight),
        T(test_replies_that_are_not_answers),
        T(test_invalid_calls),
        T(test_threads_share_a_client),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
