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
#include "kit/wire.h"
#include "proto/proto.h"

#define XCHG_TIMEOUT_MS 20000

typedef kit_wire conn;

static void conn_open(conn *c, const kit_env *e)
{
    assert_int_equal(kit_wire_open(c, e->url, XCHG_TIMEOUT_MS), 0);
}

static void conn_close(conn *c)
{
    kit_wire_close(c);
}

/* One exchange; fails the test when there is no decodable reply. */
static uint64_t xchg(conn *c, lms_msg *m, lms_msg *r)
{
    uint64_t id = 0;
    int rc = kit_wire_xchg(c, m, r, &id);
    if (rc != 0)
        fail_msg("no reply to %s: %d", lms_kind_name(m->kind), rc);
    assert_int_equal(r->id, id);
    return id;
}

static void chat_init(lms_msg *m, lms_chat_msg *msg, const char *system, const char *user,
                      int max_tokens, bool stream)
{
    kit_wire_chat(m, msg, system, user, max_tokens, stream);
    m->u.chat.has_seed = true;
    m->u.chat.seed = 7;
}

static void run_stream(conn *c, const char *user, int max_tokens, char *text, size_t cap,
                       lms_msg *final, unsigned *exchanges)
{
    lms_msg m;
    lms_chat_msg msg;
    chat_init(&m, &msg, "You are a streaming test.", user, max_tokens, true);
    int rc = kit_wire_stream(c, &m, text, cap, final, exchanges, NULL);
    if (rc != 0)
        fail_msg("stream failed (%d): %s", rc, text);
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

/* An exchange that waits in a thread of its own. */
typedef struct pending {
    conn *c;
    lms_msg m, r;
    lms_chat_msg msg;
    uint64_t id;
    int rc;
} pending;

static void *pending_thread(void *arg)
{
    pending *p = arg;
    /* the id is known once encoded: kit_wire_xchg sets it before sending */
    p->id = p->c->next_id;
    p->rc = kit_wire_xchg(p->c, &p->m, &p->r, NULL);
    return NULL;
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
    /* a long-running request, not streamed, waits in a thread of its own */
    pending p = {.c = &a};
    chat_init(&p.m, &p.msg, "s", "slow", 200, false);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, pending_thread, &p), 0);
    assert_int_equal(kit_env_status_wait(e, "inflight", 1, 1, 5000), 1);
    assert_int_equal(kit_env_sim_wait(e, "active", 1, 1, 5000), 1);

    /* cancel it from another context of the same connection */
    lms_msg m, r;
    lms_msg_init(&m, LMS_KIND_CANCEL);
    m.u.cancel.target = p.id;
    int64_t t0 = kit_now_ms();
    xchg(&a, &m, &r);
    assert_int_equal(r.kind, LMS_KIND_CANCEL_REPLY);
    assert_true(r.u.cancel_reply.found);
    lms_msg_fini(&r);
    pthread_join(t, NULL);
    assert_int_equal(p.rc, 0);
    assert_int_equal(p.r.kind, LMS_KIND_ERROR);
    assert_int_equal(p.r.u.error.code, LMSCHED_ECANCELED);
    lms_msg_fini(&p.r);
    /* lmsim sees the closed connection and frees its slot */
    assert_int_equal(kit_env_sim_wait(e, "active", 0, 0, 5000), 0);
    printf("cancel: slot free %lld ms after the cancel\n", (long long)(kit_now_ms() - t0));

    /* the same target again: no longer in flight; another connection's: no */
    lms_msg_init(&m, LMS_KIND_CANCEL);
    m.u.cancel.target = p.id;
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

/* A cancel that overtakes its chat (the daemon's receive contexts hand
 * messages over from several threads): the chat, arriving after the
 * cancel that named it, is answered canceled at once and never runs. */
static void test_cancel_before_chat(void **state)
{
    kit_env *e = *state;
    const char *sim[] = {NULL};
    kit_env_start(e, sim, NULL);
    conn a;
    conn_open(&a, e);
    lms_msg m, r;
    uint64_t target = a.next_id + 1; /* the id the chat below will get */
    lms_msg_init(&m, LMS_KIND_CANCEL);
    m.u.cancel.target = target;
    xchg(&a, &m, &r);
    assert_int_equal(r.kind, LMS_KIND_CANCEL_REPLY);
    assert_false(r.u.cancel_reply.found);
    lms_msg_fini(&r);
    lms_chat_msg msg;
    chat_init(&m, &msg, "s", "never runs", 8, false);
    assert_int_equal(xchg(&a, &m, &r), target);
    assert_int_equal(r.kind, LMS_KIND_ERROR);
    assert_int_equal(r.u.error.code, LMSCHED_ECANCELED);
    printf("cancel before chat: %s\n", r.u.error.message);
    lms_msg_fini(&r);
    /* once only: the next chat with another id runs */
    chat_init(&m, &msg, "s", "runs", 8, false);
    if (kit_wire_xchg(&a, &m, &r, NULL) != 0) {
        kit_env_dump_logs(e);
        fail_msg("no reply to the chat after the early cancel");
    }
    assert_int_equal(r.kind, LMS_KIND_CHAT_REPLY);
    lms_msg_fini(&r);
    json_t *st = kit_env_status(e);
    assert_int_equal(kit_json_int(st, "requests.failed_by_class.canceled"), 1);
    assert_int_equal(kit_json_int(st, "requests.received"), 2);
    assert_int_equal(kit_json_int(st, "requests.completed"), 1);
    json_decref(st);
    /* lmsim saw only the second chat */
    json_t *ss = kit_env_sim_get(e, "/sim/stats");
    assert_non_null(ss);
    assert_int_equal(kit_json_int(ss, "requests"), 1);
    json_decref(ss);
    conn_close(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_stream_equals_whole, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_stream_refusals, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_cancel, kit_env_setup, kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_cancel_before_chat, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_stream_abandoned, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_many_streams, kit_env_setup, kit_env_teardown),
    };
    return cmocka_run_group_tests_name("stream", tests, NULL, NULL);
}
