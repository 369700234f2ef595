/*
 * policy_prefix_test - the "prefix" policy (scheduler/policy_prefix.c) and
 * the slot model both policies share, driven by plain clock values:
 * leaders and followers, longest prefix match, eviction by demand, the
 * starvation bound, priorities, holding and duplicating, forgetting a
 * failed slot, the backend's own slot choice, per-group status, named
 * sessions kept on their slot, and a
 * replay of the "rounds" workload comparing prefilled tokens of
 * fifo and prefix with the optimum.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lmsched/wire.h"
#include "scheduler/policy/policy.h"
#include "scheduler/chat/chain.h"

#define MAXB 512
#define TPB (PREFIX_BLOCK_BYTES / PREFIX_BYTES_PER_TOKEN) /* tokens per block */

/* A request as the scheduler's job holds it: the item and its chain. */
typedef struct req {
    pol_item pi;
    uint64_t blocks[MAXB];
    char label[64];
} req;

static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/*
 * Fills r like prefix_chain_build would for a prompt made of a system
 * prompt of pfx blocks (content "group g") and then conv_blocks blocks of
 * conversation "conv" (content depends only on conv and position, so a
 * later turn with more blocks extends an earlier one), plus a few tokens.
 */
static pol_item *mk(req *r, uint64_t g, uint32_t pfx, uint64_t conv, uint32_t conv_blocks,
                    uint8_t prio, int64_t enq)
{
    memset(r, 0, sizeof(*r));
    uint64_t h = 0;
    uint32_t n = 0;
    assert_true(pfx + conv_blocks <= MAXB);
    for (uint32_t i = 0; i < pfx; i++)
        r->blocks[n++] = h = mix(h ^ mix(g * 1000003u + i));
    for (uint32_t i = 0; i < conv_blocks; i++)
        r->blocks[n++] = h = mix(h ^ mix(conv * 7919u + i + 0x5555));
    r->pi.blocks = r->blocks;
    r->pi.n_blocks = n;
    r->pi.tokens = n * TPB + 5;
    r->pi.group = g;
    snprintf(r->label, sizeof(r->label), "role %llu", (unsigned long long)g);
    r->pi.label = r->label;
    r->pi.priority = prio;
    r->pi.enq_us = enq;
    return &r->pi;
}

static policy *mkpol(const char *name, unsigned slots)
{
    policy *p = NULL;
    assert_int_equal(policy_alloc(&p, name, 20000), LMSCHED_OK);
    assert_int_equal(policy_set_slots(p, slots), LMSCHED_OK);
    assert_int_equal(policy_slots(p), slots);
    /* No gather window unless a test asks for one: most tests push and
     * decide at the same clock value. */
    policy_tuning t = {.starve_us = 0, .max_overtakes = 0, .gather_us = 0};
    policy_set_tuning(p, &t);
    return p;
}

/* policy_next that must return want on slot want_slot; returns cached. */
static uint32_t expect_next(policy *p, int64_t now, const req *want, int want_slot)
{
    int slot = -7;
    uint32_t cached = 12345;
    pol_item *it = policy_next(p, now, &slot, &cached);
    assert_ptr_equal(it, &want->pi);
    assert_int_equal(it->queued, 0);
    if (want_slot >= 0)
        assert_int_equal(slot, want_slot);
    assert_true(slot >= 0 && (unsigned)slot < policy_slots(p));
    assert_true(cached < it->tokens);
    return cached;
}

static void expect_none(policy *p, int64_t now)
{
    int slot = -7;
    uint32_t cached = 12345;
    assert_null(policy_next(p, now, &slot, &cached));
    assert_int_equal(slot, -1);
    assert_int_equal(cached, 0);
}

static void test_names(void **state)
{
    (void)state;
    policy *p = NULL;
    assert_int_equal(policy_alloc(&p, "prefix", 10), LMSCHED_OK);
    assert_string_equal(policy_name(p), "prefix");
    assert_int_equal(policy_slots(p), 1);
    assert_int_equal(policy_set_slots(p, 0), LMSCHED_EINVAL);
    assert_int_equal(policy_set_slots(p, 257), LMSCHED_EINVAL);
    assert_int_equal(policy_set_slots(p, 256), LMSCHED_OK);
    expect_none(p, 0);
    policy_free(p);
}

/* 4 of group A and 4 of B interleaved, one slot: A's leader, then A's
 * followers (hits), then B's leader and followers. */
static void test_leader_followers_one_slot(void **state)
{
    (void)state;
    policy *p = mkpol("prefix", 1);
    req a[4], b[4];
    for (int i = 0; i < 4; i++) {
        assert_int_equal(policy_push(p, mk(&a[i], 1, 100, 100 + i, 2, 5, 2 * i)),
                         LMSCHED_OK);
        assert_int_equal(policy_push(p, mk(&b[i], 2, 100, 200 + i, 2, 5, 2 * i + 1)),
                         LMSCHED_OK);
    }
    int64_t t = 10;
    assert_int_equal(expect_next(p, t, &a[0], 0), 0); /* leader: nothing cached */
    expect_none(p, t);                                /* no idle slot */
    for (int i = 1; i < 4; i++) {
        policy_slot_done(p, 0, true, -1, -1);
        assert_int_equal(expect_next(p, ++t, &a[i], 0), 100 * TPB);
    }
    policy_slot_done(p, 0, true, -1, -1);
    assert_int_equal(expect_next(p, ++t, &b[0], 0), 0);
    for (int i = 1; i < 4; i++) {
        policy_slot_done(p, 0, true, -1, -1);
        assert_int_equal(expect_next(p, ++t, &b[i], 0), 100 * TPB);
    }
    policy_slot_done(p, 0, true, -1, -1);
    expect_none(p, t);
    assert_int_equal(policy_depth(p), 0);
    policy_free(p);
}

/* Two slots: both leaders start at once; each group's followers follow on
 * their leader's slot. */
static void test_leader_followers_two_slots(void **state)
{
    (void)state;
    policy *p = mkpol("prefix", 2);
    req a[4], b[4];
    for (int i = 0; i < 4; i++) {
        assert_int_equal(policy_push(p, mk(&a[i], 1, 100, 100 + i, 2, 5, 2 * i)),
                         LMSCHED_OK);
        assert_int_equal(policy_push(p, mk(&b[i], 2, 100, 200 + i, 2, 5, 2 * i + 1)),
                         LMSCHED_OK);
    }
    expect_next(p, 10, &a[0], 0);
    expect_next(p, 10, &b[0], 1);
    expect_none(p, 10);
    /* B's slot finishes first: B's follower, not A's. */
    policy_slot_done(p, 1, true, -1, -1);
    assert_int_equal(expect_next(p, 11, &b[1], 1), 100 * TPB);
    policy_slot_done(p, 0, true, -1, -1);
    assert_int_equal(expect_next(p, 12, &a[1], 0), 100 * TPB);
    for (int i = 2; i < 4; i++) {
        policy_slot_done(p, 0, true, -1, -1);
        policy_slot_done(p, 1, true, -1, -1);
        uint32_t c1 = 0, c2 = 0;
        int s1 = -1, s2 = -1;
        pol_item *x = policy_next(p, 13, &s1, &c1);
        pol_item *y = policy_next(p, 13, &s2, &c2);
        assert_non_null(x);
        assert_non_null(y);
        /* each on its group's slot, both hits */
        assert_int_equal(s1, x->group == 1 ? 0 : 1);
        assert_int_equal(s2, y->group == 1 ? 0 : 1);
        assert_true(x->group != y->group);
        assert_int_equal(c1, 100 * TPB);
        assert_int_equal(c2, 100 * TPB);
    }
    assert_int_equal(policy_depth(p), 0);
    policy_free(p);
}

/* Runs one request to completion so its slot holds its prompt. */
static void warm(policy *p, pol_item *it, int want_slot)
{
    int slot = -1;
    uint32_t cached = 0;
    assert_int_equal(policy_push(p, it), LMSCHED_OK);
    assert_ptr_equal(policy_next(p, 0, &slot, &cached), it);
    assert_int_equal(slot, want_slot);
    policy_slot_done(p, slot, true, it->tokens, cached);
}

static void test_longest_prefix_match(void **state)
{
    (void)state;
    policy *p = mkpol("prefix", 3);
    req wa, wb, wc, x, y;
    warm(p, mk(&wa, 1, 50, 1, 1, 5, 0), 0);
    warm(p, mk(&wb, 2, 50, 2, 1, 5, 0), 1);
    /* Slot 2 was never used, so it is the least recently used; a B request
     * still goes to slot 1, which holds B's prefix. */
    assert_int_equal(policy_push(p, mk(&x, 2, 50, 3, 4, 5, 1)), LMSCHED_OK);
    assert_int_equal(expect_next(p, 1, &x, 1), 50 * TPB);
    policy_slot_done(p, 1, true, -1, -1);

    /* Multi-turn: one shared system prompt (group 7), two conversations;
     * each next turn goes to the slot holding its earlier turns. */
    policy_free(p);
    p = mkpol("prefix", 2);
    /* Turn 1 of conversation 1 on slot 0; turn 1 of conversation 2 does
     * not wait for slot 0: the shared prefix is short (10 blocks) and slot
     * 1 is empty, so it is copied there at once. */
    assert_int_equal(policy_push(p, mk(&wa, 7, 10, 1, 30, 5, 0)), LMSCHED_OK);
    expect_next(p, 0, &wa, 0);
    assert_int_equal(policy_push(p, mk(&wb, 7, 10, 2, 30, 5, 0)), LMSCHED_OK);
    expect_next(p, 0, &wb, 1);
    policy_slot_done(p, 0, true, -1, -1);
    policy_slot_done(p, 1, true, -1, -1);
    assert_int_equal(policy_push(p, mk(&x, 7, 10, 2, 60, 5, 1)), LMSCHED_OK);
    assert_int_equal(policy_push(p, mk(&y, 7, 10, 1, 60, 5, 2)), LMSCHED_OK);
    /* Both slots idle; each turn takes the slot with its conversation. */
    int s1 = -1, s2 = -1;
    uint32_t c1 = 0, c2 = 0;
    pol_item *i1 = policy_next(p, 3, &s1, &c1);
    pol_item *i2 = policy_next(p, 3, &s2, &c2);
    assert_true((i1 == &x.pi && i2 == &y.pi) || (i1 == &y.pi && i2 == &x.pi));
    assert_int_equal(i1 == &x.pi ? s1 : s2, 1);
    assert_int_equal(i1 == &y.pi ? s1 : s2, 0);
    assert_int_equal(c1, 40 * TPB);
    assert_int_equal(c2, 40 * TPB);
    policy_slot_done(p, 0, true, -1, -1);
    policy_slot_done(p, 1, true, -1, -1);

    /* With one idle slot and several turns of one group queued, the one
     * whose conversation the slot holds goes first, even if younger. */
    assert_int_equal(policy_push(p, mk(&wc, 7, 10, 3, 5, 5, 4)), LMSCHED_OK);
    assert_int_equal(policy_push(p, mk(&x, 7, 10, 1, 90, 5, 5)), LMSCHED_OK);
    assert_int_equal(policy_push(p, mk(&y, 7, 10, 2, 90, 5, 6)), LMSCHED_OK);
    assert_int_equal(expect_next(p, 7, &x, 0), 70 * TPB);
    assert_int_equal(expect_next(p, 7, &y, 1), 70 * TPB);
    policy_slot_done(p, 1, true, -1, -1);
    assert_int_equal(expect_next(p, 8, &wc, 1), 10 * TPB); /* the group prefix only */
    policy_free(p);
}

static void test_eviction_by_demand(void **state)
{
    (void)state;
    policy *p = mkpol("prefix", 2);
    req wa, wb, a2, c;
    warm(p, mk(&wa, 1, 50, 1, 1, 5, 0), 0);
    warm(p, mk(&wb, 2, 50, 2, 1, 5, 0), 1);
    /* Slot 0 (A) is the least recently used, but A has a queued request
     * (at a lower priority) and B has none: C's leader evicts B. */
    assert_int_equal(policy_push(p, mk(&a2, 1, 50, 3, 1, 2, 1)), LMSCHED_OK);
    assert_int_equal(policy_push(p, mk(&c, 3, 50, 4, 1, 5, 2)), LMSCHED_OK);
    assert_int_equal(expect_next(p, 2, &c, 1), 0);
    assert_int_equal(expect_next(p, 2, &a2, 0), 50 * TPB);

    /* Equal demand (none): the least recently used idle slot goes. */
    policy_slot_done(p, 1, true, -1, -1); /* C, slot 1 */
    policy_slot_done(p, 0, true, -1, -1); /* A, slot 0: most recent */
    req d;
    assert_int_equal(policy_push(p, mk(&d, 4, 50, 5, 1, 5, 3)), LMSCHED_OK);
    expect_next(p, 3, &d, 1);
    policy_free(p);
}

static void test_starvation_by_overtakes(void **state)
{
    (void)state;
    policy *p = mkpol("prefix", 1);
    policy_tuning tun = {.starve_us = 1000000000, .max_overtakes = 4};
    policy_set_tuning(p, &tun);
    req w, lone, pop[64];
    warm(p, mk(&w, 1, 50, 0, 1, 5, 0), 0);
    /* One request of an unpopular group, then a popular group that keeps
     * arriving: each dispatch of a popular one is a hit, and overtakes. */
    assert_int_equal(policy_push(p, mk(&lone, 2, 50, 1, 1, 5, 1)), LMSCHED_OK);
    int n = 0, t = 2;
    assert_int_equal(policy_push(p, mk(&pop[n], 1, 50, 100 + n, 1, 5, t++)), LMSCHED_OK);
    n++;
    int started_after = -1;
    for (int k = 0; k < 60; k++) {
        assert_int_equal(policy_push(p, mk(&pop[n], 1, 50, 100 + n, 1, 5, t++)),
                         LMSCHED_OK);
        n++;
        int slot = -1;
        uint32_t cached = 0;
        pol_item *it = policy_next(p, t, &slot, &cached);
        assert_non_null(it);
        policy_slot_done(p, slot, true, -1, -1);
        if (it == &lone.pi) {
            started_after = k;
            break;
        }
        assert_int_equal(it->group, 1);
        assert_int_equal(cached, 50 * TPB);
    }
    /* Overtaken by more than 4 later arrivals: the 5th dispatch after it
     * could still pass it, the 6th may not. */
    assert_int_equal(started_after, 5);
    while (policy_pop_any(p) != NULL)
        ;
    policy_free(p);
}

static void test_starvation_by_time(void **state)
{
    (void)state;
    policy *p = mkpol("prefix", 1);
    policy_tuning tun = {.starve_us = 1000, .max_overtakes = 1000};
    policy_set_tuning(p, &tun);
    req w, lone, pop[8];
    warm(p, mk(&w, 1, 50, 0, 1, 5, 0), 0);
    assert_int_equal(policy_push(p, mk(&lone, 2, 50, 1, 1, 5, 100)), LMSCHED_OK);
    for (int i = 0; i < 8; i++)
        assert_int_equal(policy_push(p, mk(&pop[i], 1, 50, 10 + i, 1, 5, 101 + i)),
                         LMSCHED_OK);
    /* Before the bound the holders of the cached prefix go first ... */
    expect_next(p, 500, &pop[0], 0);
    policy_slot_done(p, 0, true, -1, -1);
    expect_next(p, 1100, &pop[1], 0);
    policy_slot_done(p, 0, true, -1, -1);
    /* ... once "lone" has waited more than 1000 us, it runs next. */
    assert_int_equal(expect_next(p, 1101, &lone, 0), 0);
    policy_slot_done(p, 0, true, -1, -1);
    /* Later arrivals are not urgent yet: the rest of group 1 is a load. */
    expect_next(p, 1102, &pop[2], 0);
    while (policy_pop_any(p) != NULL)
        ;
    policy_free(p);
}

static void test_priorities(void **state)
{
    (void)state;
    policy *p = mkpol("prefix", 1);
    req w, hit, hi, mid;
    warm(p, mk(&w, 1, 50, 0, 1, 5, 0), 0);
    /* A priority-5 hit waits behind a priority-9 request that must load
     * its prefix, and a priority-7 hit beats a priority-5 hit. */
    assert_int_equal(policy_push(p, mk(&hit, 1, 50, 1, 1, 5, 1)), LMSCHED_OK);
    assert_int_equal(policy_push(p, mk(&hi, 2, 50, 2, 1, 9, 2)), LMSCHED_OK);
    assert_int_equal(expect_next(p, 3, &hi, 0), 0);
    policy_slot_done(p, 0, true, -1, -1);
    assert_int_equal(policy_push(p, mk(&mid, 2, 50, 3, 1, 7, 4)), LMSCHED_OK);
    assert_int_equal(expect_next(p, 5, &mid, 0), 50 * TPB);
    policy_slot_done(p, 0, true, -1, -1);
    expect_next(p, 6, &hit, 0);
    policy_slot_done(p, 0, true, -1, -1);
    /* Priority above 9 clamps to 9. */
    req big;
    assert_int_equal(policy_push(p, mk(&big, 3, 5, 4, 1, 250, 7)), LMSCHED_OK);
    assert_int_equal(big.pi.priority, 9);
    expect_next(p, 8, &big, 0);
    policy_free(p);
}

static void test_hold_and_duplicate(void **state)
{
    (void)state;
    policy *p = mkpol("prefix", 2);
    req a[6], b;
    assert_int_equal(policy_push(p, mk(&a[0], 1, 80, 1, 1, 5, 0)), LMSCHED_OK);
    assert_int_equal(policy_push(p, mk(&a[1], 1, 80, 2, 1, 5, 1)), LMSCHED_OK);
    assert_int_equal(policy_push(p, mk(&a[2], 1, 80, 3, 1, 5, 2)), LMSCHED_OK);
    expect_next(p, 3, &a[0], 0);
    /* Slot 1 is idle (empty), but the two followers wait for their leader:
     * copying an 80-block prefix costs more than the wait. */
    expect_none(p, 3);
    expect_none(p, 4);
    assert_int_equal(policy_depth(p), 2);
    /* Another group can use the idle slot meanwhile. */
    assert_int_equal(policy_push(p, mk(&b, 2, 80, 9, 1, 5, 5)), LMSCHED_OK);
    expect_next(p, 6, &b, 1);
    policy_slot_done(p, 1, true, -1, -1);
    expect_none(p, 7);
    /* A long queue (more than 2 per slot holding A) gets a second copy. */
    assert_int_equal(policy_push(p, mk(&a[3], 1, 80, 4, 1, 5, 8)), LMSCHED_OK);
    assert_int_equal(expect_next(p, 9, &a[1], 1), 0); /* a prefill, not a hit */
    policy_slot_done(p, 0, true, -1, -1);
    policy_slot_done(p, 1, true, -1, -1);
    assert_int_equal(expect_next(p, 10, &a[2], -1), 80 * TPB);
    assert_int_equal(expect_next(p, 10, &a[3], -1), 80 * TPB);
    policy_free(p);
}

static void test_failed_slot_forgets(void **state)
{
    (void)state;
    policy *p = mkpol("prefix", 1);
    req a0, a1, a2;
    assert_int_equal(policy_push(p, mk(&a0, 1, 40, 1, 1, 5, 0)), LMSCHED_OK);
    assert_int_equal(policy_push(p, mk(&a1, 1, 40, 2, 1, 5, 1)), LMSCHED_OK);
    assert_int_equal(policy_push(p, mk(&a2, 1, 40, 3, 1, 5, 2)), LMSCHED_OK);
    expect_next(p, 3, &a0, 0);
    pol_group_info gi[4];
    assert_int_equal(policy_groups(p, gi, 4), 1);
    assert_int_equal(gi[0].slots_mask, 1);
    policy_slot_done(p, 0, false, -1, -1);
    assert_int_equal(policy_groups(p, gi, 4), 1);
    assert_int_equal(gi[0].slots_mask, 0);
    assert_int_equal(gi[0].inflight, 0);
    /* Nothing is cached any more: the next one is a new leader. */
    assert_int_equal(expect_next(p, 4, &a1, 0), 0);
    policy_slot_done(p, 0, true, -1, -1);
    assert_int_equal(expect_next(p, 5, &a2, 0), 40 * TPB);
    /* Changing the number of slots forgets them all. */
    policy_slot_done(p, 0, true, -1, -1);
    assert_int_equal(policy_set_slots(p, 2), LMSCHED_OK);
    assert_int_equal(policy_push(p, mk(&a0, 1, 40, 1, 1, 5, 6)), LMSCHED_OK);
    assert_int_equal(expect_next(p, 6, &a0, 0), 0);
    /* slot_done on a bad or idle slot is ignored */
    policy_slot_done(p, -1, true, -1, -1);
    policy_slot_done(p, 5, true, -1, -1);
    policy_slot_done(p, 1, true, -1, -1);
    policy_slot_done(NULL, 0, true, -1, -1);
    assert_int_equal(policy_groups(p, gi, 4), 1);
    assert_int_equal(gi[0].inflight, 1);
    policy_free(p);
}

/* The rule of llama.cpp's slot selection and lmsim's engine: among idle
 * slots the strictly longest cached prefix (lowest index on ties) if it
 * covers >= similarity of the prompt, else the least recently used. */
static void test_backend_choice(void **state)
{
    (void)state;
    policy *p = mkpol("fifo", 4);
    req w0, w1, w2, x;
    /* fifo places on the LRU idle slot: 0, 1, 2 in turn. */
    warm(p, mk(&w0, 1, 40, 1, 0, 5, 0), 0);
    warm(p, mk(&w1, 2, 40, 2, 0, 5, 0), 1);
    warm(p, mk(&w2, 1, 40, 3, 0, 5, 0), 2); /* same prefix as slot 0 */
    /* Slot 3 was never used: the LRU. */
    mk(&x, 1, 40, 9, 10, 5, 0); /* 40 of 50 blocks held by slots 0 and 2 */
    assert_int_equal(policy_backend_choice(p, &x.pi, 0.5), 0);
    assert_int_equal(policy_backend_choice(p, &x.pi, 0.79), 0);
    assert_int_equal(policy_backend_choice(p, &x.pi, 0.81), 3);
    mk(&x, 3, 40, 9, 10, 5, 0);
    assert_int_equal(policy_backend_choice(p, &x.pi, 0.1), 3);
    assert_int_equal(policy_backend_choice(p, &x.pi, 0.0), 3);
    /* Busy slots are not candidates; the next LRU is slot 0. */
    req y, z;
    assert_int_equal(policy_push(p, mk(&y, 5, 1, 5, 0, 5, 1)), LMSCHED_OK);
    expect_next(p, 1, &y, 3);
    assert_int_equal(policy_backend_choice(p, &x.pi, 0.5), 0);
    mk(&x, 1, 40, 9, 10, 5, 0);
    assert_int_equal(policy_push(p, mk(&z, 6, 1, 6, 0, 5, 1)), LMSCHED_OK);
    expect_next(p, 1, &z, 0);
    assert_int_equal(policy_backend_choice(p, &x.pi, 0.5), 2);
    req u;
    assert_int_equal(policy_push(p, mk(&u, 6, 1, 6, 0, 5, 1)), LMSCHED_OK);
    expect_next(p, 1, &u, 1);
    expect_none(p, 1); /* empty queue */
    req v;
    assert_int_equal(policy_push(p, mk(&v, 6, 1, 6, 0, 5, 1)), LMSCHED_OK);
    expect_next(p, 1, &v, 2);
    assert_int_equal(policy_backend_choice(p, &x.pi, 0.5), -1);
    policy_free(p);
}

static void test_groups_status(void **state)
{
    (void)state;
    policy *p = mkpol("prefix", 2);
    req a[3], b;
    for (int i = 0; i < 3; i++)
        assert_int_equal(policy_push(p, mk(&a[i], 1, 30, i, 1, 5, i)), LMSCHED_OK);
    /* A label with a newline and bytes that are not printable, too long. */
    mk(&b, 2, 30, 9, 1, 5, 3);
    strcpy(b.label, "line one\nline\x01two \xc3\xa9 and then a great deal more text");
    assert_int_equal(policy_push(p, &b.pi), LMSCHED_OK);
    pol_group_info gi[8];
    assert_int_equal(policy_groups(p, gi, 8), 2);
    assert_int_equal(policy_groups(p, gi, 1), 1);
    assert_int_equal(policy_groups(p, NULL, 1), 0);
    assert_int_equal(policy_groups(p, gi, 8), 2);
    /* most recently active first */
    assert_true(gi[0].group == 2);
    assert_string_equal(gi[0].label, "line one line?two ?? and then a great deal more");
    assert_int_equal(strlen(gi[0].label), 47);
    assert_string_equal(gi[1].label, "role 1");
    assert_int_equal(gi[1].queued, 3);
    expect_next(p, 4, &a[0], 0);
    expect_next(p, 4, &b, 1);
    assert_int_equal(policy_groups(p, gi, 8), 2);
    for (int i = 0; i < 2; i++) {
        if (gi[i].group == 1) {
            assert_int_equal(gi[i].queued, 2);
            assert_int_equal(gi[i].inflight, 1);
            assert_int_equal(gi[i].slots_mask, 1);
        } else {
            assert_int_equal(gi[i].queued, 0);
            assert_int_equal(gi[i].inflight, 1);
            assert_int_equal(gi[i].slots_mask, 2);
        }
    }
    policy_slot_done(p, 0, true, 500, 0);
    expect_next(p, 5, &a[1], 0);
    policy_slot_done(p, 0, true, 500, 480);
    policy_slot_done(p, 1, true, -1, -1); /* unknown counts add nothing */
    assert_int_equal(policy_groups(p, gi, 8), 2);
    const pol_group_info *ga = gi[0].group == 1 ? &gi[0] : &gi[1];
    const pol_group_info *gb = gi[0].group == 1 ? &gi[1] : &gi[0];
    assert_int_equal(ga->requests, 2);
    assert_int_equal(ga->prompt_tokens, 1000);
    assert_int_equal(ga->cached_tokens, 480);
    assert_int_equal(ga->queued, 1);
    assert_int_equal(ga->inflight, 0);
    assert_int_equal(gb->requests, 1);
    assert_int_equal(gb->prompt_tokens, 0);
    /* Removal and expiry keep the counts right. */
    policy_remove(p, &a[2].pi);
    assert_int_equal(policy_groups(p, gi, 8), 2);
    assert_int_equal((gi[0].group == 1 ? gi[0] : gi[1]).queued, 0);
    req e;
    mk(&e, 1, 30, 7, 1, 5, 6);
    e.pi.deadline_us = 10;
    assert_int_equal(policy_push(p, &e.pi), LMSCHED_OK);
    assert_ptr_equal(policy_pop_expired(p, 10), &e.pi);
    assert_int_equal(policy_depth(p), 0);
    policy_free(p);
}

/* Many groups: the table stays bounded once groups go idle, and active
 * groups are never dropped. */
static void test_many_groups(void **state)
{
    (void)state;
    policy *p = mkpol("prefix", 4);
    req *r = calloc(6000, sizeof(*r));
    assert_non_null(r);
    for (int i = 0; i < 6000; i++) {
        assert_int_equal(
            policy_push(p, mk(&r[i], 1000 + (uint64_t)i, 4, (uint64_t)i, 1, 5, i)),
            LMSCHED_OK);
        /* every second one leaves at once; its group goes idle */
        if (i % 2)
            policy_remove(p, &r[i].pi);
    }
    pol_group_info *gi = calloc(8000, sizeof(*gi));
    assert_non_null(gi);
    size_t n = policy_groups(p, gi, 8000);
    assert_true(n >= 3000 && n <= 3000 + 4096);
    size_t active = 0;
    for (size_t i = 0; i < n; i++)
        active += gi[i].queued;
    assert_int_equal(active, 3000);
    /* Drain through the slots: all 3000 come out. */
    int got = 0;
    for (int k = 0; k < 4000 && got < 3000; k++) {
        int slot;
        uint32_t cached;
        pol_item *it = policy_next(p, 10000 + k, &slot, &cached);
        assert_non_null(it);
        policy_slot_done(p, slot, true, -1, -1);
        got++;
    }
    assert_int_equal(got, 3000);
    assert_int_equal(policy_depth(p), 0);
    free(gi);
    free(r);
    policy_free(p);
}

/*
 * The "rounds" workload: 12 agents, 6 roles (2 agents each) with
 * system prompts of about 2,000 tokens, 4 slots, 6 rounds; in each round
 * all 12 ask at once and the round ends when all are answered. Every
 * request holds its slot for the same time. Prefilled tokens are counted
 * from the model (prompt - cached per dispatch).
 */
#define R_AGENTS 12
#define R_ROLES 6
#define R_SLOTS 4
#define R_ROUNDS 6
#define R_PFX 125 /* blocks: 2,000 tokens */
#define R_SFX 3   /* the agent's question */

static uint64_t replay_rounds(const char *name, uint64_t *optimum)
{
    policy *p = mkpol(name, R_SLOTS);
    req *r = calloc(R_AGENTS, sizeof(*r));
    assert_non_null(r);
    int64_t now = 0, busy_until[R_SLOTS];
    uint64_t prefill = 0;
    const int64_t service = 1000;

    for (int s = 0; s < R_SLOTS; s++)
        busy_until[s] = -1;
    for (int round = 0; round < R_ROUNDS; round++) {
        for (int a = 0; a < R_AGENTS; a++)
            assert_int_equal(
                policy_push(p, mk(&r[a], 1 + (uint64_t)(a / 2), R_PFX,
                                  (uint64_t)(round * 100 + a), R_SFX, 5, now)),
                LMSCHED_OK);
        int left = R_AGENTS;
        while (left > 0) {
            int slot;
            uint32_t cached;
            pol_item *it;
            while ((it = policy_next(p, now, &slot, &cached)) != NULL) {
                prefill += it->tokens - cached;
                busy_until[slot] = now + service;
            }
            /* The next completion; several at the same time finish one by
             * one, each followed by a decision, as the daemon's loop does. */
            int next = -1;
            for (int s = 0; s < R_SLOTS; s++)
                if (busy_until[s] >= 0 && (next < 0 || busy_until[s] < busy_until[next]))
                    next = s;
            assert_true(next >= 0); /* something runs, or the policy deadlocked */
            now = busy_until[next];
            busy_until[next] = -1;
            policy_slot_done(p, next, true, -1, -1);
            left--;
        }
    }
    /* Clairvoyant: 6 loads in round 1, then 2 per round (the two roles the
     * 4 slots cannot keep), every other request pays only its question. */
    uint64_t per_req = r[0].pi.tokens - (uint64_t)R_PFX * TPB;
    *optimum = (uint64_t)(R_ROLES + 2 * (R_ROUNDS - 1)) * R_PFX * TPB +
               (uint64_t)R_AGENTS * R_ROUNDS * per_req;
    free(r);
    policy_free(p);
    return prefill;
}

static void test_rounds_simulation(void **state)
{
    (void)state;
    uint64_t opt = 0;
    uint64_t fifo = replay_rounds("fifo", &opt);
    uint64_t pfx = replay_rounds("prefix", &opt);
    print_message("rounds: optimum %llu, prefix %llu (%.2fx), fifo %llu (%.2fx)\n",
                  (unsigned long long)opt, (unsigned long long)pfx,
                  (double)pfx / (double)opt, (unsigned long long)fifo,
                  (double)fifo / (double)opt);
    assert_true(pfx * 100 <= opt * 115);
    assert_true(pfx < fifo);
}

/* A load that would evict a cached prefix waits for the gather window, so
 * requests sent at the same time that hit go first; hits never wait, and a
 * load onto a slot that holds nothing does not wait. */
static void test_gather_window(void **state)
{
    (void)state;
    policy *p = mkpol("prefix", 3);
    policy_tuning t = {.gather_us = 1000};
    policy_set_tuning(p, &t);
    req wa, wb, c1, a1, b1, e1;
    warm(p, mk(&wa, 1, 40, 1, 1, 5, 0), 0);
    warm(p, mk(&wb, 2, 40, 2, 1, 5, 0), 1);
    /* Slot 2 holds nothing: the new group's leader goes there at once. */
    assert_int_equal(policy_push(p, mk(&e1, 9, 40, 9, 1, 5, 100)), LMSCHED_OK);
    assert_int_equal(expect_next(p, 100, &e1, 2), 0);
    assert_int_equal(policy_next_wake(p), INT64_MAX);
    /* Now every idle slot holds a prefix: C's load waits. */
    assert_int_equal(policy_push(p, mk(&c1, 3, 40, 3, 1, 5, 200)), LMSCHED_OK);
    expect_none(p, 201);
    assert_int_equal(policy_next_wake(p), 1200);
    /* The rest of the fan-out arrives and hits. */
    assert_int_equal(policy_push(p, mk(&a1, 1, 40, 4, 1, 5, 202)), LMSCHED_OK);
    assert_int_equal(policy_push(p, mk(&b1, 2, 40, 5, 1, 5, 203)), LMSCHED_OK);
    assert_int_equal(expect_next(p, 204, &a1, 0), 40 * TPB);
    assert_int_equal(expect_next(p, 204, &b1, 1), 40 * TPB);
    expect_none(p, 205); /* no idle slot */
    policy_slot_done(p, 2, true, -1, -1);
    expect_none(p, 1199); /* E's slot is idle but C's window is still open */
    assert_int_equal(expect_next(p, 1200, &c1, 2), 0);
    assert_int_equal(policy_next_wake(p), INT64_MAX);
    policy_free(p);
}

/* A conversation's next turn extends its last prompt. Once a group is seen
 * to hold conversations, a slot that served a turn which had to be loaded
 * is kept for the gather window for that conversation's next turn, which
 * then hits in full; a turn that was itself such a hit does not hold its
 * slot, so conversations take turns on a slot two at a time. */
static void test_conversation_hold(void **state)
{
    (void)state;
    policy *p = mkpol("prefix", 1);
    policy_tuning t = {.gather_us = 1000};
    policy_set_tuning(p, &t);
    req v1, x1, x2, x3, x4, y1, y2, z1;
    /* V's and X's first turns share the system prompt (8 blocks). */
    warm(p, mk(&v1, 1, 8, 5, 4, 5, 0), 0);
    assert_int_equal(policy_push(p, mk(&x1, 1, 8, 1, 4, 5, 0)), LMSCHED_OK);
    assert_int_equal(expect_next(p, 0, &x1, 0), 8 * TPB);
    /* X's next turns continue X: the group becomes conversational. Each
     * hits X's whole previous prompt (12, then 16 blocks). */
    policy_slot_done(p, 0, true, -1, -1);
    assert_int_equal(policy_push(p, mk(&x2, 1, 8, 1, 8, 5, 11)), LMSCHED_OK);
    assert_int_equal(expect_next(p, 11, &x2, 0), 12 * TPB);
    policy_slot_done(p, 0, true, -1, -1);
    assert_int_equal(policy_push(p, mk(&x3, 1, 8, 1, 12, 5, 21)), LMSCHED_OK);
    assert_int_equal(expect_next(p, 21, &x3, 0), 16 * TPB);
    /* X3 was a continuation: its slot is not held when it finishes. */
    policy_slot_done(p, 0, true, -1, -1);
    assert_int_equal(policy_push(p, mk(&y1, 1, 8, 2, 4, 5, 31)), LMSCHED_OK);
    assert_int_equal(expect_next(p, 31, &y1, 0), 8 * TPB); /* the system prompt */
    /* Y1 had to be loaded: its slot is kept for Y's next turn, so X's
     * fourth turn (its cache is gone) waits for the window. */
    policy_slot_done(p, 0, true, -1, -1);
    assert_int_equal(policy_push(p, mk(&x4, 1, 8, 1, 16, 5, 41)), LMSCHED_OK);
    expect_none(p, 41);
    assert_int_equal(policy_next_wake(p), 1041);
    assert_int_equal(policy_push(p, mk(&y2, 1, 8, 2, 8, 5, 42)), LMSCHED_OK);
    assert_int_equal(expect_next(p, 42, &y2, 0), 12 * TPB);
    /* Y2 was a continuation: no hold, X4 goes at once. */
    policy_slot_done(p, 0, true, -1, -1);
    assert_int_equal(expect_next(p, 51, &x4, 0), 8 * TPB);
    /* X4 was loaded: held for X5, which does not come; the window ends. */
    policy_slot_done(p, 0, true, -1, -1);
    assert_int_equal(policy_push(p, mk(&z1, 1, 8, 3, 4, 5, 61)), LMSCHED_OK);
    expect_none(p, 61);
    expect_none(p, 1060);
    assert_int_equal(policy_next_wake(p), 1061);
    assert_int_equal(expect_next(p, 1061, &z1, 0), 8 * TPB);
    policy_free(p);
}

/* Without id_slot the backend places a request by its own rule: a match
 * below its similarity threshold is no hit, and the model records the slot
 * the rule picks (the least recently used idle one here). */
static void test_unpinned_placement(void **state)
{
    (void)state;
    policy *p = mkpol("prefix", 2);
    policy_set_placement(p, false, 0.5);
    req wa, a1, a2;
    warm(p, mk(&wa, 1, 10, 1, 1, 5, 0), 0);
    /* 10 of 41 blocks cached on slot 0: below half, so the backend would
     * take the least recently used idle slot, 1. */
    assert_int_equal(policy_push(p, mk(&a1, 1, 10, 2, 31, 5, 1)), LMSCHED_OK);
    assert_int_equal(expect_next(p, 1, &a1, 1), 0);
    policy_slot_done(p, 1, true, -1, -1);
    /* Its continuation matches slot 1 in full and goes there. */
    assert_int_equal(policy_push(p, mk(&a2, 1, 10, 2, 40, 5, 2)), LMSCHED_OK);
    assert_int_equal(expect_next(p, 2, &a2, 1), 41 * TPB);
    policy_free(p);
}

/* Named sessions (an HTTP client's session key, issue 12): a session's
 * request goes to the slot that served its previous turn although another
 * idle slot holds as much of its prompt; its slot is kept for the
 * session's next turn even in a group that is not conversational, and that
 * turn takes it although it does not extend the slot's content (a client
 * may rewrite its history). Without the key neither happens. */
static void test_session_affinity(void **state)
{
    (void)state;
    policy *p = mkpol("prefix", 2);
    req a1, b1, c1, c2;
    /* A on slot 0; B, the same group, copied onto the empty slot 1. */
    mk(&a1, 1, 8, 1, 2, 5, 0)->session = 0xa;
    mk(&b1, 1, 8, 2, 2, 5, 0)->session = 0xb;
    assert_int_equal(policy_push(p, &a1.pi), LMSCHED_OK);
    expect_next(p, 0, &a1, 0);
    assert_int_equal(policy_push(p, &b1.pi), LMSCHED_OK);
    expect_next(p, 0, &b1, 1);
    policy_slot_done(p, 0, true, -1, -1);
    policy_slot_done(p, 1, true, -1, -1);
    /* A new conversation matches both slots' 8 blocks: the first wins... */
    assert_int_equal(policy_push(p, mk(&c1, 1, 8, 3, 2, 5, 1)), LMSCHED_OK);
    assert_int_equal(expect_next(p, 1, &c1, 0), 8 * TPB);
    policy_slot_done(p, 0, true, -1, -1);
    /* ... unless it is B's next turn: then B's slot. */
    mk(&c2, 1, 8, 4, 2, 5, 2)->session = 0xb;
    assert_int_equal(policy_push(p, &c2.pi), LMSCHED_OK);
    assert_int_equal(expect_next(p, 2, &c2, 1), 8 * TPB);
    policy_free(p);

    /* The hold, one slot, a 1 ms window: Z, a new conversation of the
     * same group, arrives just after X's turn. */
    policy_tuning t = {.gather_us = 1000};
    for (int named = 0; named <= 1; named++) {
        p = mkpol("prefix", 1);
        policy_set_tuning(p, &t);
        req x1, x2, z;
        mk(&x1, 1, 8, 1, 4, 5, 0)->session = named ? 0x7 : 0;
        warm(p, &x1.pi, 0);
        assert_int_equal(policy_push(p, mk(&z, 1, 8, 5, 2, 5, 1)), LMSCHED_OK);
        if (!named) {
            /* One turn of a group nobody continues: nothing kept. */
            assert_int_equal(expect_next(p, 1, &z, 0), 8 * TPB);
            policy_free(p);
            continue;
        }
        expect_none(p, 1); /* kept for session 7 */
        assert_int_equal(policy_next_wake(p), 1001);
        /* Its next turn, history rewritten (conversation 9, not 1). */
        mk(&x2, 1, 8, 9, 6, 5, 2)->session = 0x7;
        assert_int_equal(policy_push(p, &x2.pi), LMSCHED_OK);
        assert_int_equal(expect_next(p, 2, &x2, 0), 8 * TPB);
        /* That was the session's continuation: no second hold. */
        policy_slot_done(p, 0, true, -1, -1);
        assert_int_equal(expect_next(p, 3, &z, 0), 8 * TPB);
        policy_free(p);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_leader_followers_one_slot),
        cmocka_unit_test(test_leader_followers_two_slots),
        cmocka_unit_test(test_longest_prefix_match),
        cmocka_unit_test(test_eviction_by_demand),
        cmocka_unit_test(test_starvation_by_overtakes),
        cmocka_unit_test(test_starvation_by_time),
        cmocka_unit_test(test_priorities),
        cmocka_unit_test(test_hold_and_duplicate),
        cmocka_unit_test(test_failed_slot_forgets),
        cmocka_unit_test(test_backend_choice),
        cmocka_unit_test(test_groups_status),
        cmocka_unit_test(test_many_groups),
        cmocka_unit_test(test_rounds_simulation),
        cmocka_unit_test(test_gather_window),
        cmocka_unit_test(test_conversation_hold),
        cmocka_unit_test(test_unpinned_placement),
        cmocka_unit_test(test_session_affinity),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
