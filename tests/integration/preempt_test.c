/*
 * preempt_test - priority preemption (--preempt, docs/scheduling.md,
 * "Priorities and preemption") against the real daemon and lmsim over nng:
 * with every slot busy with long low-priority requests, a high-priority
 * one stops the one that started last (the least work lost) and is
 * answered first, and every
 * stopped request still gets its one complete answer; with --preempt off
 * it waits; a low-priority stream that has sent a piece is never stopped;
 * equal priorities never preempt.
 *
 * Ordering, not time: each reply takes a ticket from one counter when it
 * arrives, and the tests compare tickets. lmsim decodes at 10 tokens a
 * second, so a long request (24 tokens) runs for 2.4 s and a short one (2
 * tokens) for 0.2 s: the orders asserted are far apart.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <nng/nng.h>

#include "kit/check.h"
#include "kit/env.h"
#include "kit/json.h"
#include "kit/wire.h"
#include "proto/proto.h"

#define XCHG_TIMEOUT_MS 30000
#define LONG_TOKENS 24
#define SHORT_TOKENS 2

static const char *const sim_args[] = {"--slots", "2", "--time-scale", "1", "--decode-tps",
                                       "10", NULL};

static atomic_int tickets;

/* A chat that waits for its reply in a thread of its own. */
typedef struct call {
    kit_wire *w;
    lms_msg m, r;
    lms_chat_msg msg;
    int rc;
    int ticket; /* the order its reply came in, 0 before */
    pthread_t t;
} call;

static void *call_thread(void *arg)
{
    call *c = arg;
    c->rc = kit_wire_xchg(c->w, &c->m, &c->r, NULL);
    c->ticket = atomic_fetch_add(&tickets, 1) + 1;
    return NULL;
}

static void call_start(call *c, kit_wire *w, const char *user, int max_tokens,
                       uint8_t priority)
{
    memset(c, 0, sizeof(*c));
    c->w = w;
    kit_wire_chat(&c->m, &c->msg, "You are a preemption test.", user, max_tokens, false);
    c->m.u.chat.priority = priority;
    c->m.u.chat.has_seed = true;
    c->m.u.chat.seed = 7;
    assert_int_equal(pthread_create(&c->t, NULL, call_thread, c), 0);
}

/* Joins c and checks it got a whole answer of max_tokens tokens. */
static void call_check(kit_env *e, call *c, int max_tokens)
{
    pthread_join(c->t, NULL);
    if (c->rc != 0 || c->r.kind != LMS_KIND_CHAT_REPLY) {
        kit_env_dump_logs(e);
        fail_msg("no reply (rc %d, kind %d: %s)", c->rc, (int)c->r.kind,
                 c->r.kind == LMS_KIND_ERROR ? c->r.u.error.message : "");
    }
    assert_int_equal(c->r.u.chat_reply.usage.completion_tokens, max_tokens);
    assert_string_equal(c->r.u.chat_reply.finish_reason, "length");
    assert_true(strlen(c->r.u.chat_reply.content) > 0);
    assert_int_equal(c->r.u.chat_reply.retries, 0);
    lms_msg_fini(&c->r);
}

/* Two long requests of priority low_priority fill lmsim's 2 slots, the
 * second started after the first. */
static void fill_slots(kit_env *e, kit_wire *w, call *low, uint8_t low_priority)
{
    call_start(&low[0], w, "first long one", LONG_TOKENS, low_priority);
    assert_int_equal(kit_env_sim_wait(e, "active", 1, 1, 10000), 1);
    call_start(&low[1], w, "second long one", LONG_TOKENS, low_priority);
    assert_int_equal(kit_env_status_wait(e, "inflight", 2, 2, 10000), 2);
    assert_int_equal(kit_env_sim_wait(e, "active", 2, 2, 10000), 2);
}

/* The tests that show preemption never acts where it must not turn it on
 * (it is off by default). */
static const char *const on_args[] = {"--preempt", "on", NULL};

static void setup_world(kit_env *e, const char *const *daemon_args, kit_wire *w)
{
    atomic_store(&tickets, 0);
    kit_env_start(e, sim_args, daemon_args);
    assert_int_equal(kit_wire_open(w, e->url, XCHG_TIMEOUT_MS), 0);
}

/* The high-priority request is answered before either low one finishes;
 * the most recently started low one was stopped and answered in full
 * later; status counts one preemption. */
static void preempt_run(kit_env *e, const char *const *daemon_args)
{
    kit_wire w;
    setup_world(e, daemon_args, &w);
    call low[2], high;
    fill_slots(e, &w, low, 1);
    call_start(&high, &w, "urgent", SHORT_TOKENS, 8);
    call_check(e, &high, SHORT_TOKENS);
    call_check(e, &low[0], LONG_TOKENS);
    call_check(e, &low[1], LONG_TOKENS);
    printf("preempt: tickets high %d, low %d %d\n", high.ticket, low[0].ticket,
           low[1].ticket);
    assert_int_equal(high.ticket, 1);
    /* the first one kept running and ends first; the second ran again */
    assert_int_equal(low[0].ticket, 2);
    assert_int_equal(low[1].ticket, 3);

    json_t *st = kit_env_status(e);
    assert_non_null(st);
    assert_int_equal(kit_json_int(st, "requests.preempted"), 1);
    assert_int_equal(kit_json_int(st, "requests.completed"), 3);
    assert_int_equal(kit_json_int(st, "requests.failed"), 0);
    assert_int_equal(kit_json_int(st, "requests.retried"), 0);
    assert_int_equal(kit_json_int(st, "inflight"), 0);
    json_decref(st);
    /* lmsim completed 3; the stopped attempt ended when the daemon closed
     * its connection, before its last token (lmsim counts what it
     * generated). */
    json_t *ss = kit_env_sim_get(e, "/sim/stats");
    assert_non_null(ss);
    assert_int_equal(kit_json_int(ss, "requests"), 3);
    assert_int_equal(kit_json_int(ss, "active"), 0);
    int64_t gen = kit_json_int(ss, "completion_tokens");
    printf("preempt: lmsim generated %lld tokens\n", (long long)gen);
    assert_true(gen >= 2 * LONG_TOKENS + SHORT_TOKENS);
    assert_true(gen < 3 * LONG_TOKENS + SHORT_TOKENS);
    json_decref(ss);
    kit_wire_close(&w);
}

static void test_preempt(void **state)
{
    const char *d[] = {"--preempt", "on", NULL};
    preempt_run(*state, d);
}

/* The same where the daemon pins slots (llama.cpp's id_slot): the freed
 * slot, sent by number, is the one the high-priority request gets. */
static void test_preempt_pinned(void **state)
{
    const char *d[] = {"--backend-kind", "llamacpp", "--slots", "2", "--preempt", "on",
                       "--probe-restore", "off", NULL};
    preempt_run(*state, d);
}

/* --preempt off: the high-priority request waits for a slot. */
static void test_preempt_off(void **state)
{
    kit_env *e = *state;
    kit_wire w;
    const char *d[] = {"--preempt", "off", NULL};
    setup_world(e, d, &w);
    call low[2], high;
    fill_slots(e, &w, low, 1);
    call_start(&high, &w, "urgent", SHORT_TOKENS, 8);
    call_check(e, &high, SHORT_TOKENS);
    call_check(e, &low[0], LONG_TOKENS);
    call_check(e, &low[1], LONG_TOKENS);
    assert_int_equal(low[0].ticket, 1);
    assert_true(high.ticket > 1);
    json_t *st = kit_env_status(e);
    assert_int_equal(kit_json_int(st, "requests.preempted"), 0);
    json_decref(st);
    json_t *ss = kit_env_sim_get(e, "/sim/stats");
    assert_int_equal(kit_json_int(ss, "requests"), 3);
    assert_int_equal(kit_json_int(ss, "completion_tokens"), 2 * LONG_TOKENS + SHORT_TOKENS);
    json_decref(ss);
    kit_wire_close(&w);
}

/* Equal priorities never preempt, whatever the priority. */
static void test_equal_priority(void **state)
{
    kit_env *e = *state;
    kit_wire w;
    setup_world(e, on_args, &w);
    call low[2], same;
    fill_slots(e, &w, low, 8);
    call_start(&same, &w, "just as urgent", SHORT_TOKENS, 8);
    call_check(e, &same, SHORT_TOKENS);
    call_check(e, &low[0], LONG_TOKENS);
    call_check(e, &low[1], LONG_TOKENS);
    assert_int_equal(low[0].ticket, 1);
    assert_true(same.ticket > 1);
    json_t *st = kit_env_status(e);
    assert_int_equal(kit_json_int(st, "requests.preempted"), 0);
    json_decref(st);
    json_t *ss = kit_env_sim_get(e, "/sim/stats");
    assert_int_equal(kit_json_int(ss, "requests"), 3);
    assert_int_equal(kit_json_int(ss, "completion_tokens"), 2 * LONG_TOKENS + SHORT_TOKENS);
    json_decref(ss);
    kit_wire_close(&w);
}

/* A low-priority stream that has sent a piece to its agent is not
 * stopped: its output cannot be taken back. Both slots stream; the
 * high-priority request waits, and both streams end whole. */
static void test_streamed_not_preempted(void **state)
{
    kit_env *e = *state;
    kit_wire w;
    setup_world(e, on_args, &w);
    lms_msg m[2], r[2];
    lms_chat_msg msg[2];
    uint64_t sid[2];
    char text[2][4096];
    for (int i = 0; i < 2; i++) {
        kit_wire_chat(&m[i], &msg[i], "You are a preemption test.",
                      i == 0 ? "first stream" : "second stream", LONG_TOKENS, true);
        m[i].u.chat.priority = 1;
        /* the first reply is a chunk: a piece went to the agent */
        assert_int_equal(kit_wire_xchg(&w, &m[i], &r[i], &sid[i]), 0);
        assert_int_equal(r[i].kind, LMS_KIND_CHAT_CHUNK);
        text[i][0] = '\0';
    }
    call high;
    call_start(&high, &w, "urgent", SHORT_TOKENS, 8);
    assert_int_equal(kit_env_status_wait(e, "queue.depth", 1, 1, 10000), 1);
    /* read both streams to their ends */
    int done_ticket[2] = {0, 0};
    for (int i = 0; i < 2; i++) {
        while (r[i].kind == LMS_KIND_CHAT_CHUNK) {
            for (size_t k = 0; k < r[i].u.chat_chunk.n_deltas; k++) {
                const lms_delta *d = &r[i].u.chat_chunk.deltas[k];
                if (d->kind == LMS_DELTA_CONTENT && d->text != NULL &&
                    strlen(text[i]) + strlen(d->text) < sizeof(text[i]))
                    strcat(text[i], d->text);
            }
            lms_msg_fini(&r[i]);
            lms_msg next;
            lms_msg_init(&next, LMS_KIND_CHAT_NEXT);
            next.u.chat_next.stream = sid[i];
            assert_int_equal(kit_wire_xchg(&w, &next, &r[i], NULL), 0);
        }
        if (r[i].kind != LMS_KIND_CHAT_REPLY) {
            kit_env_dump_logs(e);
            fail_msg("stream %d ended with %d: %s", i, (int)r[i].kind,
                     r[i].kind == LMS_KIND_ERROR ? r[i].u.error.message : "");
        }
        done_ticket[i] = atomic_fetch_add(&tickets, 1) + 1;
        for (size_t k = 0; k < r[i].u.chat_reply.n_deltas; k++) {
            const lms_delta *d = &r[i].u.chat_reply.deltas[k];
            if (d->kind == LMS_DELTA_CONTENT && d->text != NULL &&
                strlen(text[i]) + strlen(d->text) < sizeof(text[i]))
                strcat(text[i], d->text);
        }
        assert_string_equal(text[i], r[i].u.chat_reply.content);
        assert_int_equal(r[i].u.chat_reply.usage.completion_tokens, LONG_TOKENS);
        lms_msg_fini(&r[i]);
    }
    call_check(e, &high, SHORT_TOKENS);
    assert_int_equal(done_ticket[0], 1);
    assert_true(high.ticket > 1);
    json_t *st = kit_env_status(e);
    assert_int_equal(kit_json_int(st, "requests.preempted"), 0);
    assert_int_equal(kit_json_int(st, "requests.completed"), 3);
    json_decref(st);
    json_t *ss = kit_env_sim_get(e, "/sim/stats");
    assert_int_equal(kit_json_int(ss, "requests"), 3);
    assert_int_equal(kit_json_int(ss, "completion_tokens"), 2 * LONG_TOKENS + SHORT_TOKENS);
    json_decref(ss);
    kit_wire_close(&w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_preempt, kit_env_setup, kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_preempt_pinned, kit_env_setup, kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_preempt_off, kit_env_setup, kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_equal_priority, kit_env_setup, kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_streamed_not_preempted, kit_env_setup,
                                        kit_env_teardown),
    };
    return cmocka_run_group_tests_name("preempt", tests, NULL, NULL);
}
