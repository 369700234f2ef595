/*
 * policy - which queued request runs next, and on which backend slot. The
 * scheduler keeps its queued requests here and, whenever a slot is idle and
 * memory allows, asks policy_next for a (request, slot) pair. Two policies:
 * "fifo" (higher priority first, arrival order within a priority; any idle
 * slot) and "prefix" (prefix-cache aware, see docs/scheduling.md). The
 * policy also models each backend slot's cache from what was sent there.
 *
 * The policy does not own requests: a pol_item is embedded in the
 * scheduler's job and the policy links it into its lists. Not thread-safe;
 * only the scheduler loop thread calls it. Times are microseconds on the
 * caller's monotonic clock, so tests can drive it with any clock.
 */
#ifndef LMSCHED_POLICY_H
#define LMSCHED_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct pol_item {
    /* Set by the caller before policy_push: */
    int64_t enq_us;          /* arrival time */
    int64_t deadline_us;     /* must have started by then; 0 = none */
    uint8_t priority;        /* 0..9, higher runs first; larger values clamp to 9 */
    const uint64_t *blocks;  /* prefix block hashes (prefix.h); may be NULL for fifo */
    uint32_t n_blocks;
    uint32_t tokens;         /* estimated prompt tokens */
    uint64_t group;          /* prefix group (hash of the system message) */
    const char *label;       /* system prompt text, for status (first bytes copied) */
    uint64_t session;        /* the conversation it continues (a hash of the client's
                                session key); 0 = none. prefix: kept on the slot that
                                served the session's previous turn */
    uint32_t backends;       /* bit b: backend b may run it (serves its model);
                                0 = any; read at each decision, so it may
                                change while the item is queued */
    uint32_t max_tokens;     /* it generates at most this many tokens; 0 = unknown */
    uint64_t source;         /* who sent it (a connection), to tell agents that send
                                again before their answer from those that wait; 0 =
                                unknown */
    /* Owned by the policy: */
    uint64_t seq;            /* arrival number */
    struct pol_item *prev, *next;
    int queued;              /* 1 while in the policy */
    void *priv;              /* policy-private */
} pol_item;

typedef struct policy policy;

/* Tuning of the "prefix" policy (fifo ignores it). */
typedef struct policy_tuning {
    int64_t starve_us;       /* a request queued longer than this runs next, cache or not */
    unsigned max_overtakes;  /* ... or once this many later arrivals started before it */
    int64_t gather_us;       /* a load that evicts a cached prefix waits until its
                                request has been queued this long (0: never waits),
                                and a slot that served a conversation is kept this
                                long for the conversation's next turn */
} policy_tuning;

/* Sets the prefix policy's tuning (defaults: 30 s, 4 x slots, 10 ms). */
void policy_set_tuning(policy *p, const policy_tuning *t);

/* Creates a policy by name ("fifo", "prefix"); max_queue > 0 bounds the queue.
 * Returns 0, LMSCHED_EINVAL for an unknown name, LMSCHED_ENOMEM. */
int policy_alloc(policy **pp, const char *name, size_t max_queue);
void policy_free(policy *p);   /* accepts NULL; does not touch items */
const char *policy_name(const policy *p);

/* Queues an item. Returns 0, or LMSCHED_EBUSY when max_queue items are
 * already queued (the item is then not queued). */
int policy_push(policy *p, pol_item *it);

/* Removes and returns the item that should run next, or NULL when empty
 * (ordering only, no slot; tests and shutdown). */
pol_item *policy_pop(policy *p, int64_t now_us);

/* Placement. pinned (the default): the request runs in the slot the
 * policy chooses (llama.cpp's id_slot). Otherwise the backend picks the
 * slot by its own rule (policy_backend_choice with this similarity, as LM
 * Studio does); the policy then only dispatches hits that rule will place
 * on the slot holding the prefix, and models the slot the rule picks. */
void policy_set_placement(policy *p, bool pinned, double similarity);

/* The backend has n parallel slots (1..256). Slot contents are forgotten
 * when n changes. Until called, the policy assumes 1 slot. */
int policy_set_slots(policy *p, unsigned n);
unsigned policy_slots(const policy *p);

/* Several backends: the policy's slots are every backend's, backend 0's
 * first (slots[0] of them), then backend 1's, and so on; a request runs
 * only on a slot of a backend in its pol_item.backends that is up. The
 * slot contents are forgotten when the layout changes, except when it only
 * adds backends after the existing ones (backends that had no slot): the
 * existing slots keep their contents and their running requests.
 * n_backends <= 32, the total 1..256. policy_set_slots(p, n) is one backend
 * of n slots. */
int policy_set_backend_slots(policy *p, const unsigned *slots, unsigned n_backends);
/* Bit b set: backend b is up (the default: all). */
void policy_set_backends_up(policy *p, uint32_t mask);
/* The backend a slot belongs to (0 for a slot out of range). */
unsigned policy_slot_backend(const policy *p, int slot);

/*
 * Chooses the next request to start and the idle slot it should run on.
 * Returns NULL when nothing should start now: the queue is empty, no slot is
 * idle, or (prefix) every queued request is better off waiting for the slot
 * that holds its prefix. On success the item has left the queue, *slot is
 * its slot (now busy, modelled as holding the item's blocks) and *cached the
 * prompt tokens expected to be reused there.
 */
pol_item *policy_next(policy *p, int64_t now_us, int *slot, uint32_t *cached);

/* The request on slot finished. ok: the backend processed the prompt, so
 * the slot holds its blocks; !ok: the slot's cache is unknown (forgotten).
 * prompt_tokens / cached_tokens: as the backend reported (-1 unknown), for
 * per-group hit rates. */
void policy_slot_done(policy *p, int slot, bool ok, int64_t prompt_tokens,
                      int64_t cached_tokens);

/* How a request on a slot ended, as the core saw it. */
typedef struct pol_done {
    bool ok;                   /* see policy_slot_done */
    int64_t prompt_tokens;     /* as the backend reported; -1 unknown */
    int64_t cached_tokens;     /* -1 unknown */
    int64_t end_us;            /* when it ended (the caller's clock); 0 unknown: the
                                  next policy_next's time stands for it */
    int64_t first_token_us;    /* when its first token came; 0 unknown */
    int64_t completion_tokens; /* tokens it generated; -1 unknown */
} pol_done;

/* policy_slot_done with what was measured: the policy learns the backend's
 * prefill and decode rates from it (docs/scheduling.md, "The cost model"). */
void policy_slot_end(policy *p, int slot, const pol_done *d);

/* Takes idle slot for the caller's own use (the daemon's restore probe,
 * docs/scheduling.md): busy, so nothing is placed there, until
 * policy_slot_give. Returns 0, or -1 when the slot is busy, held for a
 * conversation or out of range. */
int policy_slot_take(policy *p, int slot);
/* Gives back a slot taken with policy_slot_take: idle, its content
 * unknown (what the caller ran there replaced it). No-op when the slot is
 * not taken (the slots were laid out again meanwhile). */
void policy_slot_give(policy *p, int slot);

/* What the backend was seen to restore before any request: of a prompt
 * evicted from a slot, the share (0..1) it had cached when that prompt
 * came back (the daemon's restore probe). Stands for three reloads'
 * measure (docs/scheduling.md, "The cost model"), so whether the backend
 * restores is decided from the first request; real reloads go on
 * updating it. A negative share is ignored. */
void policy_seed_restore(policy *p, double share);
/* The measured restore share (-1 before any), the reloads it stands for,
 * and whether the backend counts as restoring (for status). */
bool policy_restore_info(const policy *p, double *share, unsigned *reloads);

/* The idle slot the backend itself would pick for an item when it is sent
 * without a slot id (LM Studio, llama.cpp without id_slot): the idle slot
 * with the longest cached prefix if that covers >= similarity of the prompt,
 * else the least recently used idle slot. -1 if none is idle. */
int policy_backend_choice(const policy *p, const pol_item *it, double similarity);

/* Per prefix group, for `lmsched status`. */
typedef struct pol_group_info {
    uint64_t group;
    char label[48];          /* start of the system prompt */
    unsigned queued;
    unsigned inflight;
    uint32_t slots_mask;     /* bit s set: slot s holds this group's prefix (slots < 32) */
    uint64_t requests;       /* finished */
    uint64_t prompt_tokens;  /* reported by the backend */
    uint64_t cached_tokens;  /* reported by the backend */
} pol_group_info;

/* Fills up to max groups (most recently active first). Returns the count. */
size_t policy_groups(const policy *p, pol_group_info *out, size_t max);

/* Priority preemption (the core stops a running lower-priority request for
 * a queued higher-priority one, docs/scheduling.md):
 * policy_top: the queued item that preemption would serve: the oldest of
 * the highest priority that the rule would start on a freed slot (prefix:
 * not a follower waiting for its group's leader), or NULL.
 * policy_idle_slot: whether a slot of a backend in mask (0: any) that is up
 * is idle.
 * policy_take: starts queued item it on idle slot (one that may run it)
 * without asking the rule, as policy_next would have (*cached: the prompt
 * tokens expected cached there). Returns the slot it runs in (without
 * pinning, the backend's own choice among that backend's idle slots), or
 * -1 (nothing changed) when it is not queued or the slot is not idle or
 * may not run it.
 * policy_requeue: puts an item that was dispatched back into the queue, at
 * its old place: its seq (arrival order) and enq_us are kept, it is not
 * counted as an arrival again, and max_queue does not apply (it was
 * accepted once). Its slot must have been ended (policy_slot_end) first.
 * Returns 0, LMSCHED_EINVAL (already queued) or LMSCHED_ENOMEM. */
pol_item *policy_top(const policy *p);
bool policy_idle_slot(const policy *p, uint32_t mask);
int policy_take(policy *p, pol_item *it, int slot, int64_t now_us, uint32_t *cached);
int policy_requeue(policy *p, pol_item *it);

/* The engine time, in microseconds, that stopping the request running on
 * slot throws away: the work it has done so far (its run time, at most
 * what it was expected to take) and, once the backend's rates are
 * measured, bringing back what of the slot's cache other queued requests
 * want (a group's prefix that no other slot holds). 0 for an idle slot. */
double policy_stop_cost_us(policy *p, int slot, int64_t now_us);

/* Removes a queued item (canceled, or its agent went away). No-op if not queued. */
void policy_remove(policy *p, pol_item *it);

/* Removes and returns one queued item whose deadline_us <= now_us, or NULL.
 * Call until NULL to collect all expired items. */
pol_item *policy_pop_expired(policy *p, int64_t now_us);

/* When policy_next may choose differently without any other event (a
 * load's gather window or a slot's hold for a conversation ends), or
 * INT64_MAX. */
int64_t policy_next_wake(const policy *p);

/* The earliest deadline among queued items, or INT64_MAX. */
int64_t policy_next_deadline(const policy *p);

/* Removes and returns any queued item (for shutdown), or NULL. */
pol_item *policy_pop_any(policy *p);

size_t policy_depth(const policy *p);

#endif /* LMSCHED_POLICY_H */
