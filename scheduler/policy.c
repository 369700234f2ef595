/*
 * policy - the "fifo" queue policy: higher priority first, arrival order
 * within a priority, at most max_queue items (see policy.h).
 *
 * Design notes: one intrusive doubly linked list per priority level, so
 * push, pop and remove are O(1) (pop looks at ten list heads). Items are
 * appended at the tail, so each list is in seq order without comparing.
 * Deadlines are not indexed: pol_item has no room for a heap position, and
 * with the queue bounded a scan is cheap. The scans are skipped entirely
 * while no queued item has a deadline (the common case), and pop_expired
 * also skips them while "now" is before a known lower bound of the queued
 * deadlines. policy_pop itself does not look at deadlines: the loop reaps
 * expired items with policy_pop_expired before it pops.
 */
#include "scheduler/policy.h"

#include <stdlib.h>
#include <string.h>

#include "lmsched/agent.h"

#define POL_LEVELS 10

typedef struct pol_list {
    pol_item *head, *tail;
} pol_list;

struct policy {
    size_t max_queue;
    size_t depth;
    size_t n_deadline;    /* queued items with deadline_us != 0 */
    int64_t deadline_low; /* <= every queued deadline; INT64_MAX when none */
    uint64_t next_seq;
    pol_list lv[POL_LEVELS];
};

/* Ownership: on success *pp belongs to the caller (policy_free). Any thread;
 * does not block. */
int policy_alloc(policy **pp, const char *name, size_t max_queue)
{
    policy *p = NULL;
    int rv;

    if (pp == NULL)
        return LMSCHED_EINVAL;
    *pp = NULL;
    if (name == NULL || strcmp(name, "fifo") != 0 || max_queue == 0) {
        rv = LMSCHED_EINVAL;
        goto fail;
    }
    p = calloc(1, sizeof(*p));
    if (p == NULL) {
        rv = LMSCHED_ENOMEM;
        goto fail;
    }
    p->max_queue = max_queue;
    p->deadline_low = INT64_MAX;
    *pp = p;
    return LMSCHED_OK;
fail:
    free(p);
    return rv;
}

/* Items still queued are left as they are: they belong to the caller, who
 * drains them with policy_pop_any first if it needs them unlinked. */
void policy_free(policy *p)
{
    free(p);
}

const char *policy_name(const policy *p)
{
    return p != NULL ? "fifo" : "";
}

/* The list an item lives in. Priority is clamped in place at push, so this
 * is stable while the item is queued. */
static pol_list *pol_list_of(policy *p, const pol_item *it)
{
    return &p->lv[it->priority < POL_LEVELS ? it->priority : POL_LEVELS - 1];
}

static void pol_unlink(policy *p, pol_item *it)
{
    pol_list *l = pol_list_of(p, it);

    if (it->prev != NULL)
        it->prev->next = it->next;
    else
        l->head = it->next;
    if (it->next != NULL)
        it->next->prev = it->prev;
    else
        l->tail = it->prev;
    it->prev = it->next = NULL;
    it->queued = 0;
    p->depth--;
    if (it->deadline_us != 0 && --p->n_deadline == 0)
        p->deadline_low = INT64_MAX;
}

/* The item stays owned by the caller; the policy only links it. Returns
 * LMSCHED_EINVAL for a NULL or already queued item (linking it twice would
 * corrupt the lists). */
int policy_push(policy *p, pol_item *it)
{
    if (p == NULL || it == NULL || it->queued)
        return LMSCHED_EINVAL;
    if (p->depth >= p->max_queue)
        return LMSCHED_EBUSY;
    if (it->priority >= POL_LEVELS)
        it->priority = POL_LEVELS - 1;
    pol_list *l = pol_list_of(p, it);
    it->seq = p->next_seq++;
    it->next = NULL;
    it->prev = l->tail;
    if (l->tail != NULL)
        l->tail->next = it;
    else
        l->head = it;
    l->tail = it;
    it->queued = 1;
    p->depth++;
    if (it->deadline_us != 0) {
        p->n_deadline++;
        if (it->deadline_us < p->deadline_low)
            p->deadline_low = it->deadline_us;
    }
    return LMSCHED_OK;
}

pol_item *policy_pop(policy *p, int64_t now_us)
{
    (void)now_us;
    return policy_pop_any(p);
}

void policy_remove(policy *p, pol_item *it)
{
    if (p == NULL || it == NULL || !it->queued)
        return;
    pol_unlink(p, it);
}

pol_item *policy_pop_expired(policy *p, int64_t now_us)
{
    if (p == NULL || p->n_deadline == 0 || now_us < p->deadline_low)
        return NULL;
    /* One pass finds an expired item and, if there is none, tightens the
     * lower bound to the exact earliest deadline so the next calls before
     * that time return at once. */
    int64_t low = INT64_MAX;
    for (int lv = POL_LEVELS - 1; lv >= 0; lv--) {
        for (pol_item *it = p->lv[lv].head; it != NULL; it = it->next) {
            if (it->deadline_us == 0)
                continue;
            if (it->deadline_us <= now_us) {
                pol_unlink(p, it);
                return it;
            }
            if (it->deadline_us < low)
                low = it->deadline_us;
        }
    }
    p->deadline_low = low;
    return NULL;
}

int64_t policy_next_deadline(const policy *p)
{
    if (p == NULL || p->n_deadline == 0)
        return INT64_MAX;
    int64_t low = INT64_MAX;
    for (int lv = 0; lv < POL_LEVELS; lv++)
        for (const pol_item *it = p->lv[lv].head; it != NULL; it = it->next)
            if (it->deadline_us != 0 && it->deadline_us < low)
                low = it->deadline_us;
    return low;
}

pol_item *policy_pop_any(policy *p)
{
    if (p == NULL)
        return NULL;
    for (int lv = POL_LEVELS - 1; lv >= 0; lv--) {
        pol_item *it = p->lv[lv].head;
        if (it != NULL) {
            pol_unlink(p, it);
            return it;
        }
    }
    return NULL;
}

size_t policy_depth(const policy *p)
{
    return p != NULL ? p->depth : 0;
}
