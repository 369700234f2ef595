/*
 * policy_test - the "fifo" queue policy of scheduler/policy.c: ordering by
 * priority then arrival, the queue bound, removal from any position, and
 * deadline expiry driven by plain int64 clock values, and its slot
 * bookkeeping (policy_next: FIFO order on the least recently used idle
 * slot).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "lmsched/wire.h"
#include "scheduler/policy/policy.h"

#define NITEMS 16

typedef struct fixture {
    policy *p;
    pol_item it[NITEMS];
} fixture;

static int setup(void **state)
{
    fixture *f = test_calloc(1, sizeof(*f));
    if (f == NULL || policy_alloc(&f->p, "fifo", NITEMS) != LMSCHED_OK) {
        test_free(f);
        return -1;
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    policy_free(f->p);
    test_free(f);
    return 0;
}

/* Fills an item the way the scheduler does before pushing it. */
static pol_item *item(fixture *f, int i, uint8_t prio, int64_t enq, int64_t deadline)
{
    pol_item *it = &f->it[i];
    memset(it, 0, sizeof(*it));
    it->priority = prio;
    it->enq_us = enq;
    it->deadline_us = deadline;
    return it;
}

static int index_of(fixture *f, const pol_item *it)
{
    assert_non_null(it);
    assert_true(it >= f->it && it < f->it + NITEMS);
    return (int)(it - f->it);
}

/* Pops everything and checks the order. */
static void expect_order(fixture *f, const int *want, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        pol_item *it = policy_pop(f->p, 1000);
        assert_non_null(it);
        assert_int_equal(index_of(f, it), want[i]);
        assert_int_equal(it->queued, 0);
        assert_int_equal(policy_depth(f->p), n - i - 1);
    }
    assert_null(policy_pop(f->p, 1000));
}

static void test_alloc_names(void **state)
{
    (void)state;
    policy *p = (policy *)&p; /* must be reset to NULL on failure */
    assert_int_equal(policy_alloc(&p, "lifo", 10), LMSCHED_EINVAL);
    assert_null(p);
    assert_int_equal(policy_alloc(&p, "", 10), LMSCHED_EINVAL);
    assert_int_equal(policy_alloc(&p, NULL, 10), LMSCHED_EINVAL);
    assert_int_equal(policy_alloc(&p, "fifo", 0), LMSCHED_EINVAL);
    assert_int_equal(policy_alloc(NULL, "fifo", 10), LMSCHED_EINVAL);
    assert_int_equal(policy_alloc(&p, "fifo", 10), LMSCHED_OK);
    assert_non_null(p);
    assert_string_equal(policy_name(p), "fifo");
    assert_int_equal(policy_depth(p), 0);
    assert_null(policy_pop(p, 0));
    assert_null(policy_pop_any(p));
    assert_null(policy_pop_expired(p, INT64_MAX));
    assert_int_equal(policy_next_deadline(p), INT64_MAX);
    policy_free(p);
    policy_free(NULL);
}

static void test_fifo_order(void **state)
{
    fixture *f = *state;
    for (int i = 0; i < 5; i++)
        assert_int_equal(policy_push(f->p, item(f, i, 5, i, 0)), LMSCHED_OK);
    assert_int_equal(policy_depth(f->p), 5);
    /* seq numbers arrival, increasing */
    for (int i = 1; i < 5; i++)
        assert_true(f->it[i].seq > f->it[i - 1].seq);
    const int want[] = {0, 1, 2, 3, 4};
    expect_order(f, want, 5);
}

static void test_priority_order(void **state)
{
    fixture *f = *state;
    const uint8_t prio[] = {0, 9, 3, 7, 5};
    for (int i = 0; i < 5; i++)
        assert_int_equal(policy_push(f->p, item(f, i, prio[i], i, 0)), LMSCHED_OK);
    const int want[] = {1, 3, 4, 2, 0};
    expect_order(f, want, 5);
}

static void test_priority_clamps(void **state)
{
    fixture *f = *state;
    assert_int_equal(policy_push(f->p, item(f, 0, 9, 0, 0)), LMSCHED_OK);
    assert_int_equal(policy_push(f->p, item(f, 1, 200, 1, 0)), LMSCHED_OK);
    assert_int_equal(policy_push(f->p, item(f, 2, 8, 2, 0)), LMSCHED_OK);
    /* 200 is treated as 9: after item 0, which came first at that level. */
    const int want[] = {0, 1, 2};
    expect_order(f, want, 3);
}

static void test_interleaved_same_priority(void **state)
{
    fixture *f = *state;
    /* Pushes alternate between priorities 2 and 6, with pops in between;
     * within each priority the arrival order must hold. */
    assert_int_equal(policy_push(f->p, item(f, 0, 2, 0, 0)), LMSCHED_OK);
    assert_int_equal(policy_push(f->p, item(f, 1, 6, 1, 0)), LMSCHED_OK);
    assert_int_equal(policy_push(f->p, item(f, 2, 2, 2, 0)), LMSCHED_OK);
    assert_int_equal(policy_push(f->p, item(f, 3, 6, 3, 0)), LMSCHED_OK);
    assert_int_equal(index_of(f, policy_pop(f->p, 10)), 1);
    assert_int_equal(policy_push(f->p, item(f, 4, 2, 4, 0)), LMSCHED_OK);
    assert_int_equal(policy_push(f->p, item(f, 5, 6, 5, 0)), LMSCHED_OK);
    assert_int_equal(index_of(f, policy_pop(f->p, 10)), 3);
    assert_int_equal(policy_push(f->p, item(f, 6, 2, 6, 0)), LMSCHED_OK);
    const int want[] = {5, 0, 2, 4, 6};
    expect_order(f, want, 5);
}

static void test_queue_full(void **state)
{
    (void)state;
    policy *p = NULL;
    pol_item it[4];
    memset(it, 0, sizeof(it));
    assert_int_equal(policy_alloc(&p, "fifo", 3), LMSCHED_OK);
    for (int i = 0; i < 3; i++)
        assert_int_equal(policy_push(p, &it[i]), LMSCHED_OK);
    it[3].priority = 9;
    assert_int_equal(policy_push(p, &it[3]), LMSCHED_EBUSY);
    assert_int_equal(it[3].queued, 0);
    assert_int_equal(policy_depth(p), 3);
    /* The refused item is not in the queue even at the highest priority. */
    assert_ptr_equal(policy_pop(p, 0), &it[0]);
    /* A freed place can be taken again. */
    assert_int_equal(policy_push(p, &it[3]), LMSCHED_OK);
    assert_ptr_equal(policy_pop(p, 0), &it[3]);
    assert_ptr_equal(policy_pop(p, 0), &it[1]);
    assert_ptr_equal(policy_pop(p, 0), &it[2]);
    assert_null(policy_pop(p, 0));
    policy_free(p);
}

static void test_double_push_refused(void **state)
{
    fixture *f = *state;
    pol_item *a = item(f, 0, 5, 0, 0);
    assert_int_equal(policy_push(f->p, a), LMSCHED_OK);
    assert_int_equal(policy_push(f->p, a), LMSCHED_EINVAL);
    assert_int_equal(policy_push(f->p, NULL), LMSCHED_EINVAL);
    assert_int_equal(policy_depth(f->p), 1);
    const int want[] = {0};
    expect_order(f, want, 1);
}

static void test_remove(void **state)
{
    fixture *f = *state;
    for (int i = 0; i < 5; i++)
        assert_int_equal(policy_push(f->p, item(f, i, 4, i, 0)), LMSCHED_OK);
    policy_remove(f->p, &f->it[2]); /* middle */
    assert_int_equal(f->it[2].queued, 0);
    assert_int_equal(policy_depth(f->p), 4);
    policy_remove(f->p, &f->it[0]); /* head */
    policy_remove(f->p, &f->it[4]); /* tail */
    assert_int_equal(policy_depth(f->p), 2);
    /* Removing again, or an item never queued, changes nothing. */
    policy_remove(f->p, &f->it[2]);
    policy_remove(f->p, item(f, 9, 4, 9, 0));
    policy_remove(f->p, NULL);
    assert_int_equal(policy_depth(f->p), 2);
    /* The list is still well linked: push after removals lands at the tail. */
    assert_int_equal(policy_push(f->p, item(f, 5, 4, 5, 0)), LMSCHED_OK);
    const int want[] = {1, 3, 5};
    expect_order(f, want, 3);

    /* Removing the only item empties its level. */
    assert_int_equal(policy_push(f->p, item(f, 6, 7, 6, 0)), LMSCHED_OK);
    policy_remove(f->p, &f->it[6]);
    assert_int_equal(policy_depth(f->p), 0);
    assert_null(policy_pop(f->p, 0));
    assert_int_equal(policy_push(f->p, item(f, 7, 7, 7, 0)), LMSCHED_OK);
    assert_ptr_equal(policy_pop(f->p, 0), &f->it[7]);
}

static void test_expiry(void **state)
{
    fixture *f = *state;
    /* deadlines: 0 = none */
    const int64_t dl[] = {0, 100, 300, 50, 0, 200, 100};
    const uint8_t prio[] = {5, 5, 9, 0, 3, 7, 5};
    for (int i = 0; i < 7; i++)
        assert_int_equal(policy_push(f->p, item(f, i, prio[i], i, dl[i])), LMSCHED_OK);
    assert_int_equal(policy_next_deadline(f->p), 50);

    assert_null(policy_pop_expired(f->p, 49));
    assert_int_equal(policy_depth(f->p), 7);

    /* At 100: items 1, 3 and 6 (deadline <= now), in any order. */
    int got = 0;
    pol_item *it;
    while ((it = policy_pop_expired(f->p, 100)) != NULL) {
        int i = index_of(f, it);
        assert_true(i == 1 || i == 3 || i == 6);
        assert_false(got & (1 << i));
        assert_int_equal(it->queued, 0);
        got |= 1 << i;
    }
    assert_int_equal(got, (1 << 1) | (1 << 3) | (1 << 6));
    assert_int_equal(policy_depth(f->p), 4);
    assert_int_equal(policy_next_deadline(f->p), 200);

    /* A later, earlier-deadline push is seen at once. */
    assert_int_equal(policy_push(f->p, item(f, 7, 1, 7, 150)), LMSCHED_OK);
    assert_int_equal(policy_next_deadline(f->p), 150);
    assert_ptr_equal(policy_pop_expired(f->p, 160), &f->it[7]);
    assert_null(policy_pop_expired(f->p, 160));

    /* Removing the earliest deadline moves next_deadline on. */
    policy_remove(f->p, &f->it[5]);
    assert_int_equal(policy_next_deadline(f->p), 300);
    assert_null(policy_pop_expired(f->p, 299));

    /* Items without a deadline never expire; the rest go in priority order. */
    assert_ptr_equal(policy_pop_expired(f->p, INT64_MAX), &f->it[2]);
    assert_null(policy_pop_expired(f->p, INT64_MAX));
    assert_int_equal(policy_next_deadline(f->p), INT64_MAX);
    const int want[] = {0, 4};
    expect_order(f, want, 2);
}

static void test_pop_ignores_deadline_order(void **state)
{
    fixture *f = *state;
    /* pop is priority + arrival only; an expired item is still returned by
     * pop if the caller did not reap it first. */
    assert_int_equal(policy_push(f->p, item(f, 0, 5, 0, 500)), LMSCHED_OK);
    assert_int_equal(policy_push(f->p, item(f, 1, 5, 1, 10)), LMSCHED_OK);
    assert_ptr_equal(policy_pop(f->p, 5), &f->it[0]);
    assert_int_equal(policy_next_deadline(f->p), 10);
    assert_ptr_equal(policy_pop(f->p, 5), &f->it[1]);
    assert_int_equal(policy_next_deadline(f->p), INT64_MAX);
    assert_null(policy_pop_expired(f->p, INT64_MAX));
}

static void test_expiry_over_time(void **state)
{
    fixture *f = *state;
    /* The clock advances in steps; each step returns exactly what became
     * due, however many fruitless calls came before. */
    assert_int_equal(policy_push(f->p, item(f, 0, 5, 0, 100)), LMSCHED_OK);
    assert_int_equal(policy_push(f->p, item(f, 1, 2, 1, 200)), LMSCHED_OK);
    assert_int_equal(policy_push(f->p, item(f, 2, 8, 2, 300)), LMSCHED_OK);
    assert_null(policy_pop_expired(f->p, 99));
    assert_ptr_equal(policy_pop_expired(f->p, 150), &f->it[0]);
    assert_null(policy_pop_expired(f->p, 150));
    assert_null(policy_pop_expired(f->p, 199));
    assert_ptr_equal(policy_pop_expired(f->p, 200), &f->it[1]);
    assert_null(policy_pop_expired(f->p, 200));
    assert_int_equal(policy_next_deadline(f->p), 300);
    /* An item removed before its deadline never comes back. */
    policy_remove(f->p, &f->it[2]);
    assert_null(policy_pop_expired(f->p, 1000));
    assert_int_equal(policy_next_deadline(f->p), INT64_MAX);
    /* A new push with an earlier deadline than anything seen still counts. */
    assert_int_equal(policy_push(f->p, item(f, 3, 5, 3, 120)), LMSCHED_OK);
    assert_ptr_equal(policy_pop_expired(f->p, 500), &f->it[3]);
    assert_int_equal(policy_depth(f->p), 0);
}

static void test_pop_any_drains(void **state)
{
    fixture *f = *state;
    for (int i = 0; i < NITEMS; i++)
        assert_int_equal(
            policy_push(f->p, item(f, i, (uint8_t)(i % 10), i, i % 3 ? i : 0)),
            LMSCHED_OK);
    assert_int_equal(policy_depth(f->p), NITEMS);
    assert_int_equal(policy_push(f->p, &f->it[0]), LMSCHED_EINVAL); /* already queued */
    int seen = 0;
    pol_item *it;
    while ((it = policy_pop_any(f->p)) != NULL) {
        int i = index_of(f, it);
        assert_false(seen & (1 << i));
        seen |= 1 << i;
    }
    assert_int_equal(seen, (1 << NITEMS) - 1);
    assert_int_equal(policy_depth(f->p), 0);
    assert_int_equal(policy_next_deadline(f->p), INT64_MAX);
    assert_null(policy_pop_expired(f->p, INT64_MAX));
}

static void test_many_rounds(void **state)
{
    fixture *f = *state;
    /* Fill and drain many times with mixed operations; the depth and the
     * order must stay consistent and seq keeps increasing. */
    uint64_t last_seq = 0;
    for (int round = 0; round < 200; round++) {
        for (int i = 0; i < NITEMS; i++)
            assert_int_equal(policy_push(f->p, item(f, i, (uint8_t)((i * 7 + round) % 10),
                                                    round, (i % 4) ? 0 : round + i)),
                             LMSCHED_OK);
        policy_remove(f->p, &f->it[round % NITEMS]);
        int prev_prio = 9;
        uint64_t prev_seq = 0;
        size_t n = 0;
        pol_item *it;
        while ((it = policy_pop(f->p, round)) != NULL) {
            assert_true(it->priority <= prev_prio);
            if (it->priority == prev_prio && n > 0)
                assert_true(it->seq > prev_seq);
            assert_true(it->seq >= last_seq);
            prev_prio = it->priority;
            prev_seq = it->seq;
            n++;
        }
        assert_int_equal(n, NITEMS - 1);
        assert_int_equal(policy_next_deadline(f->p), INT64_MAX);
        last_seq = prev_seq;
    }
}

static void test_fifo_slots(void **state)
{
    fixture *f = *state;
    int slot = -1;
    uint32_t cached = 99;
    /* One slot until told otherwise; nothing queued, nothing to start. */
    assert_int_equal(policy_slots(f->p), 1);
    assert_null(policy_next(f->p, 0, &slot, &cached));
    assert_int_equal(slot, -1);
    assert_int_equal(cached, 0);
    assert_int_equal(policy_set_slots(f->p, 3), LMSCHED_OK);
    assert_int_equal(policy_slots(f->p), 3);
    const uint8_t prio[] = {5, 5, 7, 5, 5};
    for (int i = 0; i < 5; i++)
        assert_int_equal(policy_push(f->p, item(f, i, prio[i], i, 0)), LMSCHED_OK);
    /* Priority, then arrival; slots 0, 1, 2 in turn (all equally unused). */
    const int want[] = {2, 0, 1};
    for (int k = 0; k < 3; k++) {
        pol_item *it = policy_next(f->p, 10, &slot, &cached);
        assert_int_equal(index_of(f, it), want[k]);
        assert_int_equal(slot, k);
        assert_int_equal(cached, 0); /* no blocks, nothing cached */
        assert_int_equal(it->queued, 0);
    }
    /* No idle slot: nothing starts, the queue keeps its order. */
    assert_null(policy_next(f->p, 11, &slot, &cached));
    assert_int_equal(policy_depth(f->p), 2);
    /* Slot 1 then slot 0 finish: slot 1 is now the least recently used. */
    policy_slot_done(f->p, 1, true, 10, 0);
    policy_slot_done(f->p, 0, false, -1, -1);
    assert_int_equal(index_of(f, policy_next(f->p, 12, &slot, &cached)), 3);
    assert_int_equal(slot, 1);
    assert_int_equal(index_of(f, policy_next(f->p, 12, &slot, &cached)), 4);
    assert_int_equal(slot, 0);
    assert_null(policy_next(f->p, 12, &slot, &cached));
    /* Per-group figures are kept for fifo too (all these share group 0). */
    pol_group_info gi[2];
    assert_int_equal(policy_groups(f->p, gi, 2), 1);
    assert_int_equal(gi[0].inflight, 3);
    assert_int_equal(gi[0].requests, 2);
    assert_int_equal(gi[0].prompt_tokens, 10);
    /* fifo ignores the tuning, and the other names are refused */
    policy_tuning t = {.starve_us = 1, .max_overtakes = 1};
    policy_set_tuning(f->p, &t);
    policy_set_tuning(NULL, &t);
    assert_int_equal(policy_set_slots(f->p, 0), LMSCHED_EINVAL);
}

/* Several backends: slots 0-1 are backend 0's, 2-4 backend 1's. A request
 * runs only on a slot of a backend in its mask that is up; an older one
 * whose backends are all busy does not hold back a younger one that can
 * run. Both rules. */
static void backends_case(const char *name)
{
    policy *p;
    pol_item it[6];
    assert_int_equal(policy_alloc(&p, name, 16), LMSCHED_OK);
    const unsigned slots[] = {2, 3};
    assert_int_equal(policy_set_backend_slots(p, slots, 2), LMSCHED_OK);
    assert_int_equal(policy_slots(p), 5);
    assert_int_equal(policy_slot_backend(p, 1), 0);
    assert_int_equal(policy_slot_backend(p, 2), 1);
    assert_int_equal(policy_slot_backend(p, 4), 1);
    for (int i = 0; i < 6; i++) {
        memset(&it[i], 0, sizeof(it[i]));
        it[i].enq_us = i;
        it[i].group = (uint64_t)i + 1;
        it[i].backends = i < 3 ? 1u : 2u; /* 0-2: backend 0 only; 3-5: backend 1 */
        assert_int_equal(policy_push(p, &it[i]), LMSCHED_OK);
    }
    int slot;
    uint32_t cached;
    /* Backend 0's two slots take items 0 and 1; item 2 then waits for
     * them, while 3-5 go to backend 1. */
    for (int k = 0; k < 5; k++) {
        pol_item *x = policy_next(p, 1000000, &slot, &cached);
        assert_non_null(x);
        int i = (int)(x - it);
        assert_int_equal(policy_slot_backend(p, slot), i < 3 ? 0 : 1);
        assert_true(i != 2);
    }
    assert_null(policy_next(p, 1000000, &slot, &cached));
    /* Backend 0 down: a free slot there is not used. */
    policy_slot_done(p, 0, true, -1, -1);
    policy_set_backends_up(p, 2u);
    assert_null(policy_next(p, 1000000, &slot, &cached));
    policy_set_backends_up(p, 3u);
    pol_item *x = policy_next(p, 1000000, &slot, &cached);
    assert_ptr_equal(x, &it[2]);
    assert_int_equal(slot, 0);
    /* The layout is kept when set again unchanged; any mask 0: any backend. */
    assert_int_equal(policy_set_backend_slots(p, slots, 2), LMSCHED_OK);
    assert_int_equal(policy_slots(p), 5);
    policy_free(p);
}

static void test_backends_fifo(void **state)
{
    (void)state;
    backends_case("fifo");
}

static void test_backends_prefix(void **state)
{
    (void)state;
    backends_case("prefix");
}

/* Preemption's calls: an item that ran comes back at its old place (not
 * at the tail, and past max_queue), policy_top names the oldest of the
 * highest priority, policy_take starts it on the given idle slot, and a
 * stopped slot counts as idle again. */
static void test_requeue_take(void **state)
{
    (void)state;
    policy *p = NULL;
    pol_item it[5];
    int slot = -1;
    uint32_t cached = 0;
    assert_int_equal(policy_alloc(&p, "fifo", 3), LMSCHED_OK);
    assert_int_equal(policy_set_slots(p, 2), LMSCHED_OK);
    memset(it, 0, sizeof(it));
    for (int i = 0; i < 5; i++) {
        it[i].priority = 1;
        it[i].enq_us = i;
    }
    it[4].priority = 8;
    for (int i = 0; i < 2; i++)
        assert_int_equal(policy_push(p, &it[i]), LMSCHED_OK);
    assert_ptr_equal(policy_next(p, 10, &slot, &cached), &it[0]);
    assert_ptr_equal(policy_next(p, 10, &slot, &cached), &it[1]);
    assert_int_equal(slot, 1);
    assert_false(policy_idle_slot(p, 0));
    for (int i = 2; i < 4; i++)
        assert_int_equal(policy_push(p, &it[i]), LMSCHED_OK);
    assert_int_equal(policy_push(p, &it[4]), LMSCHED_OK);
    assert_ptr_equal(policy_top(p), &it[4]);
    assert_true(policy_stop_cost_us(p, 1, 20) >= 10);
    assert_int_equal(policy_stop_cost_us(p, 5, 20), 0);
    /* it[1] is stopped: back before it[2] and it[3], past max_queue 3 */
    assert_int_equal(policy_requeue(p, &it[1]), LMSCHED_OK);
    assert_int_equal(policy_requeue(p, &it[1]), LMSCHED_EINVAL);
    assert_int_equal(policy_depth(p), 4);
    policy_slot_done(p, 1, false, -1, -1);
    assert_true(policy_idle_slot(p, 0));
    /* not queued, a busy slot, a slot out of range: refused, nothing changes */
    assert_int_equal(policy_take(p, &it[0], 1, 20, &cached), -1);
    assert_int_equal(policy_take(p, &it[4], 0, 20, &cached), -1);
    assert_int_equal(policy_take(p, &it[4], 7, 20, &cached), -1);
    assert_int_equal(policy_take(p, &it[4], 1, 20, &cached), 1);
    assert_int_equal(it[4].queued, 0);
    assert_false(policy_idle_slot(p, 0));
    assert_ptr_equal(policy_top(p), &it[1]);
    /* the rest in arrival order: the stopped one first */
    const pol_item *want[] = {&it[1], &it[2], &it[3]};
    for (int k = 0; k < 3; k++)
        assert_ptr_equal(policy_pop(p, 30), want[k]);
    assert_null(policy_top(p));
    policy_free(p);
}

/* prefix: one that comes back is again its group's oldest, so it leads
 * the group's next load. */
static void test_requeue_prefix(void **state)
{
    (void)state;
    policy *p = NULL;
    pol_item it[3];
    int slot = -1;
    uint32_t cached = 0;
    assert_int_equal(policy_alloc(&p, "prefix", 8), LMSCHED_OK);
    assert_int_equal(policy_set_slots(p, 1), LMSCHED_OK);
    memset(it, 0, sizeof(it));
    for (int i = 0; i < 3; i++) {
        it[i].priority = 5;
        it[i].enq_us = i;
        it[i].group = 42;
    }
    assert_int_equal(policy_push(p, &it[0]), LMSCHED_OK);
    assert_int_equal(policy_push(p, &it[1]), LMSCHED_OK);
    assert_ptr_equal(policy_next(p, 10, &slot, &cached), &it[0]);
    assert_int_equal(policy_push(p, &it[2]), LMSCHED_OK);
    assert_int_equal(policy_requeue(p, &it[0]), LMSCHED_OK);
    policy_slot_done(p, 0, false, -1, -1);
    const pol_item *want[] = {&it[0], &it[1], &it[2]};
    for (int k = 0; k < 3; k++) {
        assert_ptr_equal(policy_next(p, 20 + k, &slot, &cached), want[k]);
        policy_slot_done(p, 0, true, -1, -1);
    }
    policy_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alloc_names),
        cmocka_unit_test_setup_teardown(test_fifo_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_priority_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_priority_clamps, setup, teardown),
        cmocka_unit_test_setup_teardown(test_interleaved_same_priority, setup, teardown),
        cmocka_unit_test(test_queue_full),
        cmocka_unit_test_setup_teardown(test_double_push_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_remove, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expiry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pop_ignores_deadline_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expiry_over_time, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pop_any_drains, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_rounds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fifo_slots, setup, teardown),
        cmocka_unit_test(test_requeue_take),
        cmocka_unit_test(test_requeue_prefix),
        cmocka_unit_test(test_backends_fifo),
        cmocka_unit_test(test_backends_prefix),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
