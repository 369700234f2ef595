/*
 * policy - which queued request runs next. The scheduler keeps its queued
 * requests here and asks for the next one whenever a concurrency slot frees.
 * This module is the seam where ordering lives: this version is FIFO within
 * priority (higher priority first, arrival order within a priority); the
 * prefix-aware policy replaces it behind the same calls.
 *
 * The policy does not own requests: a pol_item is embedded in the
 * scheduler's job and the policy links it into its lists. Not thread-safe;
 * only the scheduler loop thread calls it. Times are microseconds on the
 * caller's monotonic clock, so tests can drive it with any clock.
 */
#ifndef LMSCHED_POLICY_H
#define LMSCHED_POLICY_H

#include <stddef.h>
#include <stdint.h>

typedef struct pol_item {
    /* Set by the caller before policy_push: */
    int64_t enq_us;          /* arrival time */
    int64_t deadline_us;     /* must have started by then; 0 = none */
    uint8_t priority;        /* 0..9, higher runs first; larger values clamp to 9 */
    /* Owned by the policy: */
    uint64_t seq;            /* arrival number */
    struct pol_item *prev, *next;
    int queued;              /* 1 while in the policy */
} pol_item;

typedef struct policy policy;

/* Creates a policy by name ("fifo"); max_queue > 0 bounds the queue.
 * Returns 0, LMSCHED_EINVAL for an unknown name, LMSCHED_ENOMEM. */
int policy_alloc(policy **pp, const char *name, size_t max_queue);
void policy_free(policy *p);   /* accepts NULL; does not touch items */
const char *policy_name(const policy *p);

/* Queues an item. Returns 0, or LMSCHED_EBUSY when max_queue items are
 * already queued (the item is then not queued). */
int policy_push(policy *p, pol_item *it);

/* Removes and returns the item that should run next, or NULL when empty. */
pol_item *policy_pop(policy *p, int64_t now_us);

/* Removes a queued item (canceled, or its agent went away). No-op if not queued. */
void policy_remove(policy *p, pol_item *it);

/* Removes and returns one queued item whose deadline_us <= now_us, or NULL.
 * Call until NULL to collect all expired items. */
pol_item *policy_pop_expired(policy *p, int64_t now_us);

/* The earliest deadline among queued items, or INT64_MAX. */
int64_t policy_next_deadline(const policy *p);

/* Removes and returns any queued item (for shutdown), or NULL. */
pol_item *policy_pop_any(policy *p);

size_t policy_depth(const policy *p);

#endif /* LMSCHED_POLICY_H */
