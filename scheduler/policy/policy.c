/*
 * policy - the queue of waiting requests, the prefix groups they belong to,
 * and the bookkeeping of the backend's slots (see policy.h). The decision
 * itself is a rule from a table (internal.h): rule_fifo.c, rule_prefix.c;
 * the queries the rules share are in state.c.
 *
 * Design notes: every queued item is on two intrusive lists. One list per
 * priority level in arrival order (it->prev/next) gives FIFO order, expiry
 * and draining in O(1) per item. A node the policy allocates per item
 * (it->priv) links it into its group's list for that priority, which is
 * what the prefix policy searches. Per-level arrays of the groups that have
 * items at that level bound the prefix policy's scans by the number of
 * groups, never by the queue length. Both policies keep the same group and
 * slot bookkeeping, so `lmsched status` reports per-group figures either
 * way and the benchmark can compare them.
 *
 * Deadlines are not indexed: the scans are skipped while no queued item has
 * a deadline (the common case), and pop_expired also skips them while "now"
 * is before a known lower bound of the queued deadlines.
 */
#include "scheduler/policy/policy.h"

#include <stdlib.h>
#include <string.h>

#include "lmsched/wire.h"
#include "scheduler/policy/internal.h"

#define POL_SPARE_MAX 1024

/* The policies, by name; the first is the default of `lmsched serve`. */
static const pol_rule *const pol_rules[] = {&pol_rule_prefix, &pol_rule_fifo};
#define POL_DEFAULT_STARVE_US (30LL * 1000 * 1000)
#define POL_DEFAULT_GATHER_US (10LL * 1000)

/* ---- groups -------------------------------------------------------- */

static size_t pol_hash(uint64_t id, size_t mask)
{
    return (size_t)((id ^ (id >> 31)) & mask);
}

static void pol_recent_unlink(policy *p, pol_group *g)
{
    if (g->rprev != NULL)
        g->rprev->rnext = g->rnext;
    else
        p->recent = g->rnext;
    if (g->rnext != NULL)
        g->rnext->rprev = g->rprev;
    else
        p->recent_tail = g->rprev;
    g->rprev = g->rnext = NULL;
}

/* Marks g as just active: it moves to the front of the recency list. */
static void pol_touch(policy *p, pol_group *g)
{
    if (p->recent == g)
        return;
    pol_recent_unlink(p, g);
    g->rnext = p->recent;
    if (p->recent != NULL)
        p->recent->rprev = g;
    p->recent = g;
    if (p->recent_tail == NULL)
        p->recent_tail = g;
}

static void pol_group_drop(policy *p, pol_group *g)
{
    pol_group **pp = &p->htab[pol_hash(g->id, p->hmask)];
    while (*pp != g)
        pp = &(*pp)->hnext;
    *pp = g->hnext;
    pol_recent_unlink(p, g);
    free(g->ref);
    free(g);
    p->n_groups--;
}

static bool pol_group_idle(const pol_group *g)
{
    return g->queued == 0 && g->inflight == 0 && g->resident == 0;
}

static int pol_htab_grow(policy *p)
{
    size_t n = (p->hmask + 1) * 2;
    pol_group **t = calloc(n, sizeof(*t));
    if (t == NULL)
        return LMSCHED_ENOMEM;
    for (size_t i = 0; i <= p->hmask; i++) {
        pol_group *g = p->htab[i];
        while (g != NULL) {
            pol_group *next = g->hnext;
            size_t h = pol_hash(g->id, n - 1);
            g->hnext = t[h];
            t[h] = g;
            g = next;
        }
    }
    free(p->htab);
    p->htab = t;
    p->hmask = n - 1;
    return LMSCHED_OK;
}

/* The group with this id, created if new. NULL on ENOMEM. Memory stays
 * bounded: past POL_MAX_IDLE_GROUPS groups, creating one drops the least
 * recently active group that has nothing queued, running or resident. */
static pol_group *pol_group_get(policy *p, uint64_t id)
{
    pol_group *g;

    for (g = p->htab[pol_hash(id, p->hmask)]; g != NULL; g = g->hnext)
        if (g->id == id)
            return g;
    if (p->n_groups >= POL_MAX_IDLE_GROUPS) {
        /* Idle groups drift to the tail; a bounded walk finds one unless
         * thousands of groups are active, and then growing is right. */
        int walk = 64;
        for (g = p->recent_tail; g != NULL && walk-- > 0; g = g->rprev) {
            if (pol_group_idle(g)) {
                pol_group_drop(p, g);
                break;
            }
        }
    }
    if (p->n_groups >= p->hmask + 1 && pol_htab_grow(p) != LMSCHED_OK)
        return NULL;
    g = calloc(1, sizeof(*g));
    if (g == NULL)
        return NULL;
    g->id = id;
    size_t h = pol_hash(id, p->hmask);
    g->hnext = p->htab[h];
    p->htab[h] = g;
    p->n_groups++;
    g->rnext = p->recent;
    if (p->recent != NULL)
        p->recent->rprev = g;
    p->recent = g;
    if (p->recent_tail == NULL)
        p->recent_tail = g;
    return g;
}

/* Leading blocks two chains share: chained hashes make "equal at k-1"
 * imply equal before, so binary search applies. */
static uint32_t pol_common_blocks(const uint64_t *a, uint32_t na, const uint64_t *b,
                                  uint32_t nb)
{
    uint32_t hi = na < nb ? na : nb;
    if (hi == 0 || a[0] != b[0])
        return 0;
    if (a[hi - 1] == b[hi - 1])
        return hi;
    uint32_t lo = 1;
    while (hi - lo > 1) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (a[mid - 1] == b[mid - 1])
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

/* The group prefix is what all members seen so far share: the first
 * member's chain, cut back to the common part by each later one. */
static bool pol_group_learn(pol_group *g, const pol_item *it)
{
    const uint64_t *b = it->n_blocks > 0 ? it->blocks : NULL;
    uint32_t n = b != NULL ? it->n_blocks : 0;

    if (!g->seen) {
        g->seen = true;
        uint32_t keep = n < POL_REF_BLOCKS ? n : POL_REF_BLOCKS;
        if (keep > 0) {
            g->ref = malloc((size_t)keep * sizeof(*g->ref));
            if (g->ref != NULL) {
                memcpy(g->ref, b, (size_t)keep * sizeof(*b));
                g->n_ref = keep;
            }
        }
        /* Without the copy (ENOMEM) later members cut this back to 0. */
        g->pfx_blocks = keep;
        const char *l = it->label != NULL && it->label[0] != '\0' ? it->label : "(none)";
        size_t i;
        for (i = 0; i < sizeof(g->label) - 1 && l[i] != '\0'; i++) {
            unsigned char c = (unsigned char)l[i];
            g->label[i] =
                c >= 0x20 && c < 0x7f ? (char)c : (c == '\n' || c == '\t' ? ' ' : '?');
        }
        g->label[i] = '\0';
        return false;
    }
    uint32_t common = pol_common_blocks(b, n, g->ref, g->n_ref);
    if (common >= g->pfx_blocks)
        return false;
    g->pfx_blocks = common;
    return true;
}








/* ---- alloc / free -------------------------------------------------- */

static void pol_slots_release(policy *p)
{
    for (unsigned i = 0; i < p->n_slots; i++) {
        pol_slot *s = &p->slots[i];
        if (s->group != NULL)
            s->group->resident--;
        if (s->busy && s->run != NULL)
            s->run->inflight--; /* its slot_done will be ignored */
        slot_cache_fini(&s->cache);
    }
    free(p->slots);
    p->slots = NULL;
    p->n_slots = 0;
}

/* Ownership: on success *pp belongs to the caller (policy_free). Any thread;
 * does not block. */
int policy_alloc(policy **pp, const char *name, size_t max_queue)
{
    policy *p = NULL;
    const pol_rule *rule = NULL;
    int rv;

    if (pp == NULL)
        return LMSCHED_EINVAL;
    *pp = NULL;
    if (name == NULL || max_queue == 0)
        return LMSCHED_EINVAL;
    for (size_t i = 0; i < sizeof(pol_rules) / sizeof(pol_rules[0]); i++)
        if (strcmp(name, pol_rules[i]->name) == 0)
            rule = pol_rules[i];
    if (rule == NULL)
        return LMSCHED_EINVAL;
    p = calloc(1, sizeof(*p));
    if (p == NULL) {
        rv = LMSCHED_ENOMEM;
        goto fail;
    }
    p->rule = rule;
    p->max_queue = max_queue;
    p->deadline_low = INT64_MAX;
    p->tun.starve_us = POL_DEFAULT_STARVE_US;
    p->tun.gather_us = POL_DEFAULT_GATHER_US;
    p->wake_us = INT64_MAX;
    pol_meter_init(&p->meter);
    p->pinned = true;
    p->similarity = 0.10;
    p->be_up = ~0u;
    p->hmask = 63;
    p->htab = calloc(p->hmask + 1, sizeof(*p->htab));
    if (p->htab == NULL) {
        rv = LMSCHED_ENOMEM;
        goto fail;
    }
    rv = policy_set_slots(p, 1);
    if (rv != LMSCHED_OK)
        goto fail;
    *pp = p;
    return LMSCHED_OK;
fail:
    policy_free(p);
    return rv;
}

/* Items still queued are not touched (they belong to the caller, who
 * drains them with policy_pop_any first if it needs them unlinked); the
 * nodes the policy allocated for them are freed through the groups. */
void policy_free(policy *p)
{
    if (p == NULL)
        return;
    pol_slots_release(p);
    for (size_t i = 0; p->htab != NULL && i <= p->hmask; i++) {
        pol_group *g = p->htab[i];
        while (g != NULL) {
            pol_group *next = g->hnext;
            for (int lv = 0; lv < POL_LEVELS; lv++) {
                pol_node *n = g->lv[lv].head;
                while (n != NULL) {
                    pol_node *nn = n->gnext;
                    free(n);
                    n = nn;
                }
            }
            free(g->ref);
            free(g);
            g = next;
        }
    }
    free(p->htab);
    for (int lv = 0; lv < POL_LEVELS; lv++)
        free(p->active[lv].v);
    while (p->spare != NULL) {
        pol_node *n = p->spare;
        p->spare = n->gnext;
        free(n);
    }
    free(p);
}

const char *policy_name(const policy *p)
{
    if (p == NULL)
        return "";
    return p->rule->name;
}

void policy_set_tuning(policy *p, const policy_tuning *t)
{
    if (p == NULL || t == NULL)
        return;
    p->tun.starve_us = t->starve_us > 0 ? t->starve_us : POL_DEFAULT_STARVE_US;
    p->tun.max_overtakes = t->max_overtakes; /* 0: 4 x slots, worked out at use */
    p->tun.gather_us = t->gather_us > 0 ? t->gather_us : 0;
}

void policy_set_placement(policy *p, bool pinned, double similarity)
{
    if (p == NULL)
        return;
    p->pinned = pinned;
    p->similarity = similarity >= 0 && similarity <= 1 ? similarity : 0.10;
}

int policy_set_slots(policy *p, unsigned n)
{
    return policy_set_backend_slots(p, &n, 1);
}

int policy_set_backend_slots(policy *p, const unsigned *slots, unsigned n_backends)
{
    if (p == NULL || n_backends == 0 || n_backends > 32)
        return LMSCHED_EINVAL;
    uint8_t map[POL_MAX_SLOTS];
    unsigned n = 0;
    for (unsigned b = 0; b < n_backends; b++) {
        if (slots[b] > POL_MAX_SLOTS - n)
            return LMSCHED_EINVAL;
        for (unsigned k = 0; k < slots[b]; k++)
            map[n++] = (uint8_t)b;
    }
    if (n == 0)
        return LMSCHED_EINVAL;
    if (n == p->n_slots && memcmp(map, p->slot_be, n) == 0)
        return LMSCHED_OK;
    if (p->n_slots > 0 && n > p->n_slots && memcmp(map, p->slot_be, p->n_slots) == 0 &&
        map[p->n_slots] > p->slot_be[p->n_slots - 1]) {
        /* Only backends added after the existing ones: those keep their
         * slots' numbers, contents and running requests. */
        pol_slot *s = realloc(p->slots, n * sizeof(*s));
        if (s == NULL)
            return LMSCHED_ENOMEM;
        memset(s + p->n_slots, 0, (n - p->n_slots) * sizeof(*s));
        for (unsigned i = p->n_slots; i < n; i++)
            slot_cache_init(&s[i].cache);
        p->slots = s;
        p->n_slots = n;
        memcpy(p->slot_be, map, n);
        return LMSCHED_OK;
    }
    pol_slot *s = calloc(n, sizeof(*s));
    if (s == NULL)
        return LMSCHED_ENOMEM;
    pol_slots_release(p);
    for (unsigned i = 0; i < n; i++)
        slot_cache_init(&s[i].cache);
    p->slots = s;
    p->n_slots = n;
    memcpy(p->slot_be, map, n);
    return LMSCHED_OK;
}

void policy_set_backends_up(policy *p, uint32_t mask)
{
    if (p != NULL)
        p->be_up = mask;
}

unsigned policy_slot_backend(const policy *p, int slot)
{
    if (p == NULL || slot < 0 || (unsigned)slot >= p->n_slots)
        return 0;
    return p->slot_be[slot];
}

unsigned policy_slots(const policy *p)
{
    return p != NULL ? p->n_slots : 0;
}

/* ---- queue --------------------------------------------------------- */

/* The level an item lives in. Priority is clamped in place at push, so
 * this is stable while the item is queued. */
static int pol_level(const pol_item *it)
{
    return it->priority < POL_LEVELS ? it->priority : POL_LEVELS - 1;
}

/* Takes the item out of every list; frees its node. */
static void pol_unqueue(policy *p, pol_item *it)
{
    int lv = pol_level(it);
    pol_list *l = &p->lv[lv];
    pol_node *n = pol_node_of(it);
    pol_group *g = n->g;

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
    it->priv = NULL;
    p->depth--;
    if (it->deadline_us != 0 && --p->n_deadline == 0)
        p->deadline_low = INT64_MAX;

    if (n->gprev != NULL)
        n->gprev->gnext = n->gnext;
    else
        g->lv[lv].head = n->gnext;
    if (n->gnext != NULL)
        n->gnext->gprev = n->gprev;
    else
        g->lv[lv].tail = n->gprev;
    g->queued--;
    if (--g->n_lv[lv] == 0)
        pol_heap_del(&p->active[lv], g->lv_pos[lv], lv);
    else
        pol_heap_fix(&p->active[lv], g->lv_pos[lv], lv);

    if (p->n_spare < POL_SPARE_MAX) {
        n->gnext = p->spare;
        p->spare = n;
        p->n_spare++;
    } else {
        free(n);
    }
}

/* Remembers a dispatched prompt, so a later request that extends it (the
 * next turn of a conversation: this prompt, the reply, a new message) is
 * recognised. */
static void pol_served_add(policy *p, const pol_item *it)
{
    if (it->n_blocks == 0 || it->blocks == NULL)
        return;
    p->served[p->served_pos].n = it->n_blocks;
    p->served[p->served_pos].h = it->blocks[it->n_blocks - 1];
    p->served_pos = (p->served_pos + 1) % POL_SERVED;
}

/* Leading blocks of it that a slot held before and no slot but s holds
 * now (evicted): its group's prefix, once a member of the group was
 * started, if no other slot holds it; or a remembered prompt it extends (a
 * conversation's earlier turns) that no other slot holds. A server that
 * restores evicted prefixes by itself can bring these back; the rest of
 * the prompt is new to it, or still in another slot. */
static uint32_t pol_seen_blocks(const policy *p, const pol_item *it, const pol_group *g,
                                unsigned s)
{
    if (it->n_blocks == 0 || it->blocks == NULL)
        return 0;
    unsigned elsewhere = g->resident - (p->slots[s].group == g ? 1u : 0u);
    uint32_t seen = g->requests + g->inflight > 0 && elsewhere == 0 ? g->pfx_blocks : 0;
    for (unsigned i = 0; i < POL_SERVED; i++) {
        uint32_t n = p->served[i].n;
        if (n <= seen || n > it->n_blocks || it->blocks[n - 1] != p->served[i].h)
            continue;
        bool held = false;
        for (unsigned j = 0; j < p->n_slots && !held; j++)
            held = j != s && pol_cached_blocks(p, j, it) >= n;
        if (!held)
            seen = n;
    }
    return seen;
}

/* it extends a remembered prompt beyond its group's shared prefix. Chained
 * hashes make one comparison per remembered prompt enough. */
static bool pol_continues(const policy *p, const pol_item *it, uint32_t pfx_blocks)
{
    for (unsigned i = 0; i < POL_SERVED; i++) {
        uint32_t n = p->served[i].n;
        if (n > pfx_blocks && n <= it->n_blocks && it->blocks[n - 1] == p->served[i].h)
            return true;
    }
    return false;
}

/* Queues it: a new arrival at the tail of its lists, or (again) one that
 * was dispatched and comes back at its old place, its seq kept, not
 * counted as an arrival nor bounded by max_queue. */
static int pol_enqueue(policy *p, pol_item *it, bool again)
{
    if (p == NULL || it == NULL || it->queued)
        return LMSCHED_EINVAL;
    if (!again && p->depth >= p->max_queue)
        return LMSCHED_EBUSY;
    if (it->priority >= POL_LEVELS)
        it->priority = POL_LEVELS - 1;
    int lv = pol_level(it);

    pol_group *g = pol_group_get(p, it->group);
    if (g == NULL)
        return LMSCHED_ENOMEM;
    pol_node *n = p->spare;
    if (n != NULL) {
        p->spare = n->gnext;
        p->n_spare--;
    } else {
        n = malloc(sizeof(*n));
        if (n == NULL)
            return LMSCHED_ENOMEM;
    }
    if (g->n_lv[lv] == 0 && pol_heap_reserve(&p->active[lv]) != LMSCHED_OK) {
        free(n);
        return LMSCHED_ENOMEM;
    }
    if (!again)
        pol_group_arrival(p, g, it, it->enq_us);
    bool shrunk = pol_group_learn(g, it);
    if (!again) {
        /* +2 per continuation, -1 per other request: a group is
         * conversational while at least a third of its requests continue a
         * conversation (the first turns of conversations are not
         * continuations). One that comes back continues its own prompt
         * (served when it was dispatched): not counted again. */
        if (it->n_blocks > 0 && it->blocks != NULL &&
            pol_continues(p, it, g->pfx_blocks)) {
            g->conv_score = g->conv_score + 2 < 8 ? g->conv_score + 2 : 8;
        } else if (g->conv_score > 0) {
            g->conv_score--;
        }
        it->seq = p->next_seq++;
    }

    memset(n, 0, sizeof(*n));
    n->it = it;
    n->g = g;
    /* After the last node that arrived before it (the tail for a new one). */
    pol_node *after = g->lv[lv].tail;
    while (again && after != NULL && after->it->seq > it->seq)
        after = after->gprev;
    n->gprev = after;
    n->gnext = after != NULL ? after->gnext : g->lv[lv].head;
    if (n->gnext != NULL)
        n->gnext->gprev = n;
    else
        g->lv[lv].tail = n;
    if (after != NULL)
        after->gnext = n;
    else
        g->lv[lv].head = n;
    g->n_lv[lv]++;
    g->queued++;
    pol_touch(p, g);

    pol_list *l = &p->lv[lv];
    it->priv = n;
    /* The heaps compare heads' seq, so it is set before they move. */
    if (g->n_lv[lv] == 1)
        pol_heap_add(&p->active[lv], g, lv);
    else
        pol_heap_fix(&p->active[lv], g->lv_pos[lv], lv);
    if (shrunk) /* less demand at every level the group is in */
        for (int k = 0; k < POL_LEVELS; k++)
            if (g->n_lv[k] > 0)
                pol_heap_fix(&p->active[k], g->lv_pos[k], k);
    pol_item *prev = l->tail;
    while (again && prev != NULL && prev->seq > it->seq)
        prev = prev->prev;
    it->prev = prev;
    it->next = prev != NULL ? prev->next : l->head;
    if (it->next != NULL)
        it->next->prev = it;
    else
        l->tail = it;
    if (prev != NULL)
        prev->next = it;
    else
        l->head = it;
    it->queued = 1;
    p->depth++;
    if (it->deadline_us != 0) {
        p->n_deadline++;
        if (it->deadline_us < p->deadline_low)
            p->deadline_low = it->deadline_us;
    }
    return LMSCHED_OK;
}

/* The item stays owned by the caller; the policy links it and keeps a node
 * of its own in it->priv until the item leaves. Returns LMSCHED_EINVAL for
 * a NULL or already queued item (linking it twice would corrupt the lists),
 * LMSCHED_EBUSY when full, LMSCHED_ENOMEM when its group or node cannot be
 * allocated (the item is then not queued). Loop thread; does not block. */
int policy_push(policy *p, pol_item *it)
{
    return pol_enqueue(p, it, false);
}

/* Loop thread; does not block. */
int policy_requeue(policy *p, pol_item *it)
{
    return pol_enqueue(p, it, true);
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
    pol_unqueue(p, it);
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
                pol_unqueue(p, it);
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
            pol_unqueue(p, it);
            return it;
        }
    }
    return NULL;
}

size_t policy_depth(const policy *p)
{
    return p != NULL ? p->depth : 0;
}

/* ---- slots and dispatch -------------------------------------------- */






/* Starts it on slot s: it leaves the queue, the slot is busy and modelled
 * as holding its prompt. Returns the prompt tokens expected cached. */
static uint32_t pol_dispatch(policy *p, pol_item *it, unsigned s)
{
    pol_slot *sl = &p->slots[s];
    pol_group *g = pol_node_of(it)->g;

    /* Every queued item that arrived earlier at the same or a higher
     * priority is overtaken. Lower priorities are not: being passed by
     * more urgent work is what priority means. Nor are followers held for
     * their leader's slot: they wait for their own group's prefill, which
     * no other request's dispatch delays. The walk is bounded; the oldest
     * items, the only ones near the limit, come first. */
    int budget = POL_OVERTAKE_WALK;
    for (int lv = pol_level(it); lv < POL_LEVELS && budget > 0; lv++)
        for (pol_item *x = p->lv[lv].head; x != NULL && x->seq < it->seq && budget > 0;
             x = x->next, budget--)
            if (!pol_group_held(pol_node_of(x)->g))
                pol_node_of(x)->overtakes++;

    uint32_t held = pol_cached_blocks(p, s, it);
    uint32_t cached = pol_block_tokens(held, it);
    uint32_t seen = pol_block_tokens(pol_seen_blocks(p, it, g, s), it);
    pol_cost_start(p, sl, it, cached, seen > cached ? seen : cached, p->now_us);
    pol_unqueue(p, it);
    /* A turn that extends the slot's whole previous prompt, beyond what
     * the group shares, continues a conversation. */
    sl->run_cont = (held > 0 && held == sl->cache.n_blocks && held > g->pfx_blocks) ||
                   (it->session != 0 && it->session == sl->session);
    sl->session = it->session;
    sl->source = it->source;
    sl->streak = sl->run_cont ? sl->streak + 1 : 0;
    sl->hold_pending = false;
    sl->hold_until = 0;
    pol_served_add(p, it);

    sl->busy = true;
    sl->last_used = ++p->lru_clock;
    sl->run = g;
    g->inflight++;
    if (sl->group != g) {
        if (sl->group != NULL)
            sl->group->resident--;
        sl->group = g;
        g->resident++;
    }
    if (slot_cache_hold(&sl->cache, it->blocks, it->n_blocks) != LMSCHED_OK) {
        /* Not modelled: claim nothing. */
        g->resident--;
        sl->group = NULL;
    }
    pol_touch(p, g);
    return cached;
}


/* The item has left the queue and belongs to the caller again; it is
 * running on *slot until policy_slot_done. Loop thread; does not block. */
pol_item *policy_next(policy *p, int64_t now_us, int *slot, uint32_t *cached)
{
    int s = -1;
    pol_item *it;

    if (slot != NULL)
        *slot = -1;
    if (cached != NULL)
        *cached = 0;
    if (p == NULL)
        return NULL;
    p->wake_us = INT64_MAX;
    p->now_us = now_us;
    pol_cost_stamp(p, now_us);
    if (p->depth == 0 || pol_lru_idle(p, NULL) < 0)
        return NULL;
    p->idle_be = 0;
    for (unsigned i = 0; i < p->n_slots; i++)
        if (!p->slots[i].busy)
            p->idle_be |= 1u << p->slot_be[i];
    p->idle_be &= p->be_up;
    if (p->rule->holds_slots) {
        /* Holds start when the loop first looks after the slot freed. */
        for (unsigned i = 0; i < p->n_slots; i++) {
            pol_slot *sl = &p->slots[i];
            if (sl->hold_pending) {
                sl->hold_pending = false;
                sl->hold_until = now_us + p->tun.gather_us;
            }
            if (!sl->busy && sl->hold_until > now_us && sl->hold_until < p->wake_us)
                p->wake_us = sl->hold_until;
        }
    }
    it = p->rule->choose(p, now_us, &s);
    if (it == NULL || s < 0)
        return NULL;
    if (!p->pinned) {
        /* Sent without a slot id, it runs where the backend's own rule
         * puts it; the model follows, so it stays true. */
        /* ... among the slots of the backend the rule chose. */
        uint32_t up = p->be_up;
        p->be_up &= 1u << p->slot_be[s];
        int b = pol_backend_choice(p, it, p->similarity);
        p->be_up = up;
        if (b >= 0 && p->rule->holds_slots && pol_slot_held(p, (unsigned)b, it, now_us))
            return NULL; /* it would land on a slot kept for a conversation */
        if (b >= 0)
            s = b;
    }
    uint32_t c = pol_dispatch(p, it, (unsigned)s);
    if (slot != NULL)
        *slot = s;
    if (cached != NULL)
        *cached = c;
    return it;
}

pol_item *policy_top(const policy *p)
{
    if (p == NULL)
        return NULL;
    for (int lv = POL_LEVELS - 1; lv >= 0; lv--) {
        int scan = POL_SCAN_ITEMS;
        for (pol_item *it = p->lv[lv].head; it != NULL && scan-- > 0; it = it->next)
            if (p->rule->takes_free_slot == NULL || p->rule->takes_free_slot(p, it))
                return it;
    }
    return NULL;
}

double policy_stop_cost_us(policy *p, int slot, int64_t now_us)
{
    if (p == NULL || slot < 0 || (unsigned)slot >= p->n_slots || !p->slots[slot].busy)
        return 0;
    const pol_slot *sl = &p->slots[slot];
    double done = (double)(now_us - sl->start_us);
    double total = pol_prefill_us(p, (double)sl->est_prompt - sl->est_cached) +
                   pol_gen_us(p, sl->gen);
    if (total > 0 && done > total)
        done = total;
    if (done < 0)
        done = 0;
    if (!pol_rates_known(p))
        return done;
    p->now_us = now_us;
    return done + pol_reload_us(p, (unsigned)slot, 0);
}

bool policy_idle_slot(const policy *p, uint32_t mask)
{
    if (p == NULL)
        return false;
    uint32_t up = p->be_up & (mask != 0 ? mask : ~0u);
    for (unsigned i = 0; i < p->n_slots; i++)
        if (!p->slots[i].busy && (up >> p->slot_be[i] & 1u))
            return true;
    return false;
}

/* The item leaves the queue and belongs to the caller again, running on
 * slot as after policy_next. Loop thread; does not block. */
int policy_take(policy *p, pol_item *it, int slot, int64_t now_us, uint32_t *cached)
{
    if (p == NULL || it == NULL || !it->queued || slot < 0 || (unsigned)slot >= p->n_slots ||
        p->slots[slot].busy || !pol_slot_ok(p, (unsigned)slot, it))
        return -1;
    p->now_us = now_us;
    pol_cost_stamp(p, now_us);
    if (!p->pinned) {
        /* Sent without a slot id, it runs where the backend's own rule puts
         * it among that backend's idle slots; the model follows. */
        uint32_t up = p->be_up;
        p->be_up &= 1u << p->slot_be[slot];
        int b = pol_backend_choice(p, it, p->similarity);
        p->be_up = up;
        if (b >= 0)
            slot = b;
    }
    uint32_t c = pol_dispatch(p, it, (unsigned)slot);
    if (cached != NULL)
        *cached = c;
    return slot;
}

void policy_slot_done(policy *p, int slot, bool ok, int64_t prompt_tokens,
                      int64_t cached_tokens)
{
    pol_done d = {.ok = ok,
                  .prompt_tokens = prompt_tokens,
                  .cached_tokens = cached_tokens,
                  .completion_tokens = -1};
    policy_slot_end(p, slot, &d);
}

void policy_slot_end(policy *p, int slot, const pol_done *d)
{
    bool ok = d->ok;
    int64_t prompt_tokens = d->prompt_tokens, cached_tokens = d->cached_tokens;
    if (p == NULL || slot < 0 || (unsigned)slot >= p->n_slots)
        return;
    pol_slot *s = &p->slots[slot];
    if (!s->busy || s->taken)
        return;
    s->busy = false;
    s->last_used = ++p->lru_clock;
    pol_group *g = s->run;
    s->run = NULL;
    pol_cost_end(p, s, d);
    /* A turn of a named session is a conversation's by definition; others
     * are when their group is conversational. */
    s->hold_pending = ok && g != NULL && p->rule->holds_slots && p->tun.gather_us > 0 &&
                      (pol_group_conv(g) || s->session != 0) &&
                      s->streak < POL_STICKY_TURNS && s->group == g &&
                      !pol_restores(p);
    if (g != NULL) {
        g->inflight--;
        g->requests++;
        if (prompt_tokens > 0)
            g->prompt_tokens += (uint64_t)prompt_tokens;
        if (cached_tokens > 0)
            g->cached_tokens += (uint64_t)cached_tokens;
        pol_touch(p, g);
    }
    if (!ok) {
        /* The backend may have dropped or half-written the cache. */
        slot_cache_forget(&s->cache);
        s->session = 0;
        if (s->group != NULL)
            s->group->resident--;
        s->group = NULL;
    }
}


int policy_slot_take(policy *p, int slot)
{
    if (p == NULL || slot < 0 || (unsigned)slot >= p->n_slots)
        return -1;
    pol_slot *s = &p->slots[slot];
    if (s->busy || (p->rule->holds_slots && s->hold_until > p->now_us))
        return -1;
    s->busy = true;
    s->taken = true;
    s->run = NULL;
    s->hold_pending = false;
    s->hold_until = 0;
    s->end_unstamped = false;
    s->last_used = ++p->lru_clock;
    return 0;
}

void policy_slot_give(policy *p, int slot)
{
    if (p == NULL || slot < 0 || (unsigned)slot >= p->n_slots)
        return;
    pol_slot *s = &p->slots[slot];
    if (!s->taken)
        return;
    s->taken = false;
    s->busy = false;
    s->last_used = ++p->lru_clock;
    slot_cache_forget(&s->cache);
    s->session = 0;
    s->streak = 0;
    if (s->group != NULL)
        s->group->resident--;
    s->group = NULL;
}

int policy_backend_choice(const policy *p, const pol_item *it, double similarity)
{
    if (p == NULL || it == NULL)
        return -1;
    return pol_backend_choice(p, it, similarity);
}

int64_t policy_next_wake(const policy *p)
{
    return p != NULL ? p->wake_us : INT64_MAX;
}

size_t policy_groups(const policy *p, pol_group_info *out, size_t max)
{
    size_t n = 0;
    if (p == NULL || out == NULL)
        return 0;
    for (const pol_group *g = p->recent; g != NULL && n < max; g = g->rnext, n++) {
        pol_group_info *o = &out[n];
        memset(o, 0, sizeof(*o));
        o->group = g->id;
        memcpy(o->label, g->label, sizeof(o->label));
        o->queued = g->queued;
        o->inflight = g->inflight;
        for (unsigned i = 0; i < p->n_slots && i < 32; i++)
            if (p->slots[i].group == g)
                o->slots_mask |= 1u << i;
        o->requests = g->requests;
        o->prompt_tokens = g->prompt_tokens;
        o->cached_tokens = g->cached_tokens;
    }
    return n;
}
