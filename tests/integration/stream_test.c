/*
 * stream_test - the streaming exchange and cancellation on the wire
 * (docs/protocol.md, Streaming), against the real daemon and lmsim, with a
 * raw nng REQ socket speaking proto: chat with stream:true, chat_next until
 * the final chat_reply, cancel, the agent that stops asking, and the
 * protocol's refusals.
 */
#include <pthread.h>
#include <setjmp.h>
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
#include "kit/env.h"
#include "kit/json.h"
#include "proto/proto.h"

#define XCHG_TIMEOUT_MS 20000

/* nng 1.5 has no nng_ctx_sendmsg/recvmsg: an aio does it. */
static int ctx_sendmsg(nng_ctx ctx, nng_msg *m)
{
    nng_aio *aio;
    if (nng_aio_alloc(&aio, NULL, NULL) != 0)
        return NNG_ENOMEM;
    nng_aio_set_msg(aio, m);
    nng_ctx_send(ctx, aio);
    nng_aio_wait(aio);
    int rv = nng_aio_result(aio);
    if (rv != 0)
        nng_msg_free(nng_aio_get_msg(aio));
    nng_aio_free(aio);
    return rv;
}

static int ctx_recvmsg(nng_ctx ctx, nng_msg **m)
{
    nng_aio *aio;
    if (nng_aio_alloc(&aio, NULL, NULL) != 0)
        return NNG_ENOMEM;
    nng_aio_set_timeout(aio, XCHG_TIMEOUT_MS);
    nng_ctx_recv(ctx, aio);
    nng_aio_wait(aio);
    int rv = nng_aio_result(aio);
    if (rv == 0)
        *m = nng_aio_get_msg(aio);
    nng_aio_free(aio);
    return rv;
}

typedef struct conn {
    nng_socket sock;
    uint64_t next_id;
} conn;

static void conn_open(conn *c, const kit_env *e)
{
    assert_int_equal(nng_req0_open(&c->sock), 0);
    /* a held exchange may wait long; never resend it */
    nng_socket_set_ms(c->sock, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
    assert_int_equal(nng_dial(c->sock, e->url, NULL, 0), 0);
    c->next_id = 100;
}

static void conn_close(conn *c)
{
    nng_close(c->sock);
}

/* One exchange on its own context: sends m (its id set here), decodes the
 * reply into r. Returns the id used. */
static uint64_t xchg(conn *c, lms_msg *m, lms_msg *r)
{
    nng_ctx ctx;
    void *buf = NULL;
    size_t len = 0;
    m->id = c->next_id++;
    assert_int_equal(lms_encode(m, &buf, &len), LMSCHED_OK);
    assert_int_equal(nng_ctx_open(&ctx, c->sock), 0);
    nng_msg *out = NULL;
    assert_int_equal(nng_msg_alloc(&out, 0), 0);
    assert_int_equal(nng_msg_append(out, buf, len), 0);
    free(buf);
    assert_int_equal(ctx_sendmsg(ctx, out), 0);
    nng_msg *in = NULL;
    int rv = ctx_recvmsg(ctx, &in);
    if (rv != 0)
        fail_msg("no reply to %s %llu: %s", lms_kind_name(m->kind),
                 (unsigned long long)m->id, nng_strerror(rv));
    lms_decode_err de;
    int rc = lms_decode(nng_msg_body(in), nng_msg_len(in), NULL, r, &de);
    if (rc != LMSCHED_OK)
        fail_msg("reply does not decode: %s", de.message);
    assert_int_equal(r->id, m->id);
    nng_msg_free(in);
    nng_ctx_close(ctx);
    return m->id;
}

static void chat_init(lms_msg *m, lms_chat_msg *msg, const char *system, const char *user,
                      int max_tokens, bool stream)
{
    lms_msg_init(m, LMS_KIND_CHAT);
    memset(msg, 0, sizeof(*msg));
    msg->role = (char *)"user";
    msg->content = (char *)user;
    m->u.chat.system = (char *)system;
    m->u.chat.messages = msg;
    m->u.chat.n_messages = 1;
    m->u.chat.max_tokens = max_tokens;
    m->u.chat.has_seed = true;
    m->u.chat.seed = 7;
    m->u.chat.stream = stream;
}

/* Appends every content delta's text to out. */
static void take_deltas(const lms_delta *d, size_t n, char *out, size_t cap, unsigned *pieces)
{
    for (size_t i = 0; i < n; i++) {
        if (d[i].kind != LMS_DELTA_CONTENT)
            continue;
        size_t have = strlen(out);
        assert_true(have + strlen(d[i].text) < cap);
        strcat(out, d[i].text);
        (*pieces)++;
    }
}

/* Runs a whole stream: returns its final chat_reply (the caller finis it)
 * and the concatenated deltas in text. */
static void run_stream(conn *c, const char *user, int max_tokens, char *text, size_t cap,
                       lms_msg *final, unsigned *exchanges)
{
    lms_msg m, r;
    lms_chat_msg msg;
    chat_init(&m, &msg, "You are a streaming test.", user, max_tokens, true);
    uint64_t sid = xchg(c, &m, &r);
    unsigned pieces = 0;
    text[0] = '\0';
    *exchanges = 1;
    while (r.kind == LMS_KIND_CHAT_CHUNK) {
        take_deltas(r.u.chat_chunk.deltas, r.u.chat_chunk.n_deltas, text, cap, &pieces);
        lms_msg_fini(&r);
        lms_msg_init(&m, LMS_KIND_CHAT_NEXT);
        m.u.chat_next.stream = sid;
        xchg(c, &m, &r);
        (*exchanges)++;
    }
    if (r.kind == LMS_KIND_ERROR)
        fail_msg("stream failed: %s", r.u.error.message);
    assert_int_equal(r.kind, LMS_KIND_CHAT_REPLY);
    take_deltas(r.u.chat_reply.deltas, r.u.chat_reply.n_deltas, text, cap, &pieces);
    *final = r;
}

/* Streamed pieces, concatenated, are exactly the final content, and the
 * same as the non-streamed answer to the same request; the answer comes in
 * more than one exchange at lmsim's decode rate. */
static void test_stream_equals_whole(void **state)
{
    kit_env *e = *state;
    const char *sim[] = {"--time-scale", "5", NULL};
    kit_env_start(e, sim, NULL);
    conn c;
    conn_open(&c, e);
    static char text[65536];
    lms_msg final;
    unsigned ex = 0;
    run_stream(&c, "tell me something long", 24, text, sizeof(text), &final, &ex);
    printf("stream: %u exchanges, %zu bytes\n", ex, strlen(text));
    assert_true(ex >= 3);
    assert_string_equal(text, final.u.chat_reply.content);
    assert_int_equal(final.u.chat_reply.usage.completion_tokens, 24);
    assert_string_equal(final.u.chat_reply.finish_reason, "length");
    lms_msg_fini(&final);

    lms_msg m, r;
    lms_chat_msg msg;
    chat_init(&m, &msg, "You are a streaming test.", "tell me something long", 24, false);
    xchg(&c, &m, &r);
    assert_int_equal(r.kind, LMS_KIND_CHAT_REPLY);
    assert_string_equal(r.u.chat_reply.content, text);
    lms_msg_fini(&r);
    conn_close(&c);
}

/* chat_next for a stream this connection does not have, and two at once. */
static void test_stream_refusals(void **state)
{
    kit_env *e = *state;
    const char *sim[] = {"--time-scale", "1", "--decode-tps", "20", NULL};
    kit_env_start(e, sim, NULL);
    conn c;
    conn_open(&c, e);
    lms_msg m, r;
    lms_msg_init(&m, LMS_KIND_CHAT_NEXT);
    m.u.chat_next.stream = 424242;
    xchg(&c, &m, &r);
    assert_int_equal(r.kind, LMS_KIND_ERROR);
    assert_int_equal(r.u.error.code, LMSCHED_EPROTO);
    assert_string_equal(r.u.error.field, "stream");
    lms_msg_fini(&r);

    /* extra may not set what the scheduler sets */
    lms_chat_msg msg;
    chat_init(&m, &msg, "s", "hi", 4, false);
    m.u.chat.extra_json = (char *)"{\"top_k\":40,\"stream\":false}";
    xchg(&c, &m, &r);
    assert_int_equal(r.kind, LMS_KIND_ERROR);
    assert_int_equal(r.u.error.code, LMSCHED_EPROTO);
    assert_string_equal(r.u.error.field, "extra.stream");
    lms_msg_fini(&r);
    conn_close(&c);
}

/* cancel of a queued and of a running request: each pending exchange gets
 * canceled, cancel_reply says found, the backend slot is free again and
 * status counts the cancels. */
static void test_cancel(void **state)
{
    kit_env *e = *state;
    const char *sim[] = {"--time-scale", "1", "--decode-tps", "5", "--slots", "1", NULL};
    const char *d[] = {"--max-concurrent", "1", NULL};
    kit_env_start(e, sim, d);
    conn a, b;
    conn_open(&a, e);
    conn_open(&b, e);
    /* a long-running request, not streamed, waits on its own context */
    lms_msg m, r;
    lms_chat_msg msg;
    chat_init(&m, &msg, "s", "slow", 200, false);
    m.id = 1;
    void *buf = NULL;
    size_t len = 0;
    assert_int_equal(lms_encode(&m, &buf, &len), LMSCHED_OK);
    nng_ctx running;
    assert_int_equal(nng_ctx_open(&running, a.sock), 0);
    nng_msg *out;
    nng_msg_alloc(&out, 0);
    nng_msg_append(out, buf, len);
    free(buf);
    assert_int_equal(ctx_sendmsg(running, out), 0);
    assert_int_equal(kit_env_status_wait(e, "inflight", 1, 1, 5000), 1);
    assert_int_equal(kit_env_sim_wait(e, "active", 1, 1, 5000), 1);

    /* cancel it from another context of the same connection */
    lms_msg_init(&m, LMS_KIND_CANCEL);
    m.u.cancel.target = 1;
    int64_t t0 = kit_now_ms();
    xchg(&a, &m, &r);
    assert_int_equal(r.kind, LMS_KIND_CANCEL_REPLY);
    assert_true(r.u.cancel_reply.found);
    lms_msg_fini(&r);
    nng_msg *in = NULL;
    assert_int_equal(ctx_recvmsg(running, &in), 0);
    assert_int_equal(lms_decode(nng_msg_body(in), nng_msg_len(in), NULL, &r, NULL), 0);
    nng_msg_free(in);
    nng_ctx_close(running);
    assert_int_equal(r.kind, LMS_KIND_ERROR);
    assert_int_equal(r.u.error.code, LMSCHED_ECANCELED);
    lms_msg_fini(&r);
    /* lmsim sees the closed connection and frees its slot */
    assert_int_equal(kit_env_sim_wait(e, "active", 0, 0, 5000), 0);
    printf("cancel: slot free %lld ms after the cancel\n", (long long)(kit_now_ms() - t0));

    /* the same target again: no longer in flight; another connection's: no */
    lms_msg_init(&m, LMS_KIND_CANCEL);
    m.u.cancel.target = 1;
    xchg(&a, &m, &r);
    assert_false(r.u.cancel_reply.found);
    lms_msg_fini(&r);
    json_t *st = kit_env_status(e);
    assert_int_equal(kit_json_int(st, "requests.failed_by_class.canceled"), 1);
    json_decref(st);
    conn_close(&a);
    conn_close(&b);
}

/* A streaming agent that stops asking: its request is canceled after
 * --stream-timeout and the slot freed. */
static void test_stream_abandoned(void **state)
{
    kit_env *e = *state;
    const char *sim[] = {"--time-scale", "1", "--decode-tps", "10", NULL};
    const char *d[] = {"--stream-timeout", "300", NULL};
    kit_env_start(e, sim, d);
    conn c;
    conn_open(&c, e);
    lms_msg m, r;
    lms_chat_msg msg;
    chat_init(&m, &msg, "s", "talk", 500, true);
    xchg(&c, &m, &r);
    assert_int_equal(r.kind, LMS_KIND_CHAT_CHUNK);
    lms_msg_fini(&r);
    /* and now it never asks again */
    assert_int_equal(kit_env_sim_wait(e, "active", 0, 0, 5000), 0);
    json_t *st = kit_env_status(e);
    assert_int_equal(kit_json_int(st, "requests.failed_by_class.canceled"), 1);
    assert_int_equal(kit_json_int(st, "inflight"), 0);
    json_decref(st);
    /* asking late: the stream is gone */
    lms_msg_init(&m, LMS_KIND_CHAT_NEXT);
    m.u.chat_next.stream = 100;
    xchg(&c, &m, &r);
    assert_int_equal(r.kind, LMS_KIND_ERROR);
    lms_msg_fini(&r);
    conn_close(&c);
}

/* 100 streams at once from 4 connections: every one ends with its reply. */
typedef struct many_arg {
    kit_env *e;
    int n;
    int ok;
} many_arg;

static void *many_thread(void *p)
{
    many_arg *a = p;
    conn c;
    conn_open(&c, a->e);
    static __thread char text[16384];
    for (int i = 0; i < a->n; i++) {
        lms_msg final;
        unsigned ex;
        run_stream(&c, "q", 16, text, sizeof(text), &final, &ex);
        if (strcmp(text, final.u.chat_reply.content) == 0)
            a->ok++;
        lms_msg_fini(&final);
    }
    conn_close(&c);
    return NULL;
}

static void test_many_streams(void **state)
{
    kit_env *e = *state;
    const char *sim[] = {"--time-scale", "20", NULL};
    kit_env_start(e, sim, NULL);
    pthread_t t[4];
    many_arg a[4];
    for (int i = 0; i < 4; i++) {
        a[i] = (many_arg){e, 25, 0};
        assert_int_equal(pthread_create(&t[i], NULL, many_thread, &a[i]), 0);
    }
    int ok = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        ok += a[i].ok;
    }
    assert_int_equal(ok, 100);
    json_t *st = kit_env_status(e);
    assert_int_equal(kit_json_int(st, "requests.completed"), 100);
    assert_int_equal(kit_json_int(st, "inflight"), 0);
    json_decref(st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_stream_equals_whole, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_stream_refusals, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_cancel, kit_env_setup, kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_stream_abandoned, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_many_streams, kit_env_setup, kit_env_teardown),
    };
    return cmocka_run_group_tests_name("stream", tests, NULL, NULL);
}
