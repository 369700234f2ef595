/*
 * rule_prefix - the "prefix" policy's decision: which queued request
 * starts next and on which idle slot, so that the backend's per-slot
 * prompt cache is hit as often as possible without starving anyone
 * (docs/scheduling.md explains each rule and why).
 *
 * Design notes: the rules, in order, each applied per priority level from
 * the highest down (a level whose requests all wait for their leader lets
 * lower levels use the idle slot):
 *   1. Urgent: the oldest request of a level that has waited longer than
 *      starve_us, or was overtaken by more than max_overtakes later
 *      arrivals, runs now on its best idle slot (highest level first).
 *   2. Hit: for each idle slot, the queued requests of the group it holds
 *      (the first POL_SCAN_ITEMS per level, enough to find the deepest
 *      match of a multi-turn conversation) are compared by cached blocks;
 *      the deepest match wins, the oldest on ties (on a backend seen to
 *      restore lost prefixes by itself, pol_restores, the oldest hit wins,
 *      on its deepest slot). A request of a named
 *      session (an HTTP client's session key) that served its previous
 *      turn on an idle slot wins that slot before any of them.
 *   3. Load: otherwise a group whose prefix no slot holds is loaded into
 *      the idle slot cheapest to bring back (pol_reload_us, cost.c): the
 *      group with the most demand at the level (queued x prefix blocks),
 *      oldest on ties. Its oldest request is the leader; the others follow
 *      it onto that slot.
 *   4. Hold or duplicate: a group whose prefix is on a busy slot waits for
 *      that slot (its followers would otherwise pay the prefill again),
 *      unless it has more than POL_DUP_FACTOR queued requests per slot
 *      holding it; then its prefix is copied onto the idle slot.
 *   5. Wait for a better load (once the backend's rates are measured):
 *      for the group's next arrivals when its agents send without waiting,
 *      until the batch that balances the load's engine time against the
 *      queued requests' waits has arrived (an economic order quantity), or
 *      for a busy slot that is cheaper to evict. Never past the request's
 *      deadline; rule 1 bounds it too.
 * Cost per decision: O(slots x POL_SCAN_ITEMS x log blocks) for rule 2
 * and O(slots log slots) for rules 3-4 (a walk of the level's demand heap
 * that skips at most one group per busy slot), whatever the queue length
 * and the number of groups.
 */
#include <math.h>
#include <stdint.h>

#include "scheduler/policy/internal.h"

/* A match worth keeping a slot for: at least one block and at least half
 * the prefix the item's group shares; without pinning, also enough of the
 * prompt for the backend's similarity rule to pick that slot. */
static bool pp_real_hit(const policy *p, uint32_t blocks, const pol_item *it,
                        const pol_group *g)
{
    if (blocks < 1 || (uint64_t)blocks * 2 < g->pfx_blocks)
        return false;
    return p->pinned ||
           (double)blocks * POL_TOKENS_PER_BLOCK >= p->similarity * (double)it->tokens;
}

/* The idle slot where it has the most cached blocks (LRU on ties); with no
 * match anywhere, the slot that is cheapest to evict. */
static int pp_best_slot(const policy *p, const pol_item *it)
{
    int best = -1;
    uint32_t best_c = 0;
    for (unsigned i = 0; i < p->n_slots; i++) {
        const pol_slot *s = &p->slots[i];
        if (s->busy || !pol_slot_ok(p, i, it) || pol_slot_held(p, i, it, p->now_us))
            continue;
        uint32_t c = pol_cached_blocks(p, i, it);
        if (c > 0 && (best < 0 || c > best_c ||
                      (c == best_c && s->last_used < p->slots[best].last_used))) {
            best = (int)i;
            best_c = c;
        }
    }
    return best >= 0 ? best : pol_evict_slot(p, it, 0, NULL);
}

/* Rule 1. */
static pol_item *pp_urgent(policy *p, int64_t now_us, int *slot)
{
    unsigned max_ot = p->tun.max_overtakes ? p->tun.max_overtakes : 4 * p->n_slots;
    for (int lv = POL_LEVELS - 1; lv >= 0; lv--) {
        /* The head of a level is its oldest and the most overtaken. */
        pol_item *it = p->lv[lv].head;
        if (it == NULL)
            continue;
        if (now_us - it->enq_us > p->tun.starve_us ||
            pol_node_of(it)->overtakes > max_ot) {
            /* One no backend of its can take now waits; the others go on. */
            *slot = pp_best_slot(p, it);
            if (*slot >= 0 || pol_item_placeable(p, it))
                return it;
        }
    }
    return NULL;
}

/* Rule 2 at one level. A request of a named session goes first to the
 * slot that served the session's previous turn, whatever the model says
 * the other slots hold. */
static pol_item *pp_hit(policy *p, int lv, int *slot)
{
    pol_item *best = NULL;
    uint32_t best_c = 0;
    bool best_mine = false;
    /* Where the backend restores lost prefixes itself, a deeper match
     * saves next to nothing: the oldest hit goes first (to its deepest
     * slot). */
    bool by_age = pol_restores(p);
    for (unsigned i = 0; i < p->n_slots; i++) {
        const pol_slot *s = &p->slots[i];
        const pol_group *g = s->group;
        if (s->busy || g == NULL || g->n_lv[lv] == 0)
            continue;
        int scan = POL_SCAN_ITEMS;
        for (const pol_node *n = g->lv[lv].head; n != NULL && scan-- > 0; n = n->gnext) {
            if (!pol_slot_ok(p, i, n->it))
                continue;
            uint32_t c = pol_cached_blocks(p, i, n->it);
            bool mine = n->it->session != 0 && n->it->session == s->session;
            if (!mine &&
                (!pp_real_hit(p, c, n->it, g) || pol_slot_held(p, i, n->it, p->now_us)))
                continue;
            bool better;
            if (best == NULL || mine != best_mine)
                better = best == NULL || mine;
            else if (by_age && n->it != best)
                better = n->it->seq < best->seq;
            else /* deepest first, the oldest on ties; its deepest slot */
                better = c > best_c || (c == best_c && n->it->seq < best->seq);
            if (better) {
                best = n->it;
                best_c = c;
                best_mine = mine;
                *slot = (int)i;
            }
        }
    }
    return best;
}

/* Rule 3's candidates: no slot holds the group's prefix, or nothing of it
 * runs (so no leader is coming), or it has no prefix worth waiting for. */
static bool pp_loadable(const pol_group *g)
{
    return !pol_group_held(g);
}

/* ... and its oldest request at lv has a backend with an idle slot. */
static bool pp_placeable(const policy *p, const pol_group *g, int lv)
{
    return pol_item_placeable(p, g->lv[lv].head->it);
}

/* Engine time a hit of it costs: its generation (and a little prefill). */
static double pp_hit_us(const policy *p, const pol_item *it)
{
    double gen = it->max_tokens > 0      ? it->max_tokens
                 : p->meter.gen_mean > 0 ? p->meter.gen_mean
                                         : 256;
    return pol_gen_us(p, gen) + pol_prefill_us(p, POL_TOKENS_PER_BLOCK);
}

/* How long a load of g's prefix keeps the slot it takes: its prefill and
 * the queued requests of g at the level that follow it there. */
static double pp_horizon(const policy *p, const pol_group *g, int lv)
{
    const pol_item *it = g->lv[lv].head->it;
    return pol_prefill_us(p, (double)g->pfx_blocks * POL_TOKENS_PER_BLOCK) +
           pp_hit_us(p, it) * g->n_lv[lv];
}

static double pp_engine_weight(const policy *p, int64_t now_us);

/* What a microsecond of engine time is worth in microseconds of waiting.
 * The engine's time is shared: work saved now lets every request of the
 * current busy period start that much sooner, and a busy period at
 * utilisation u serves about 1 / (1 - u) requests (M/G/1). So 1 on an idle
 * engine (the request itself), more the busier it is. */
static double pp_engine_weight(const policy *p, int64_t now_us)
{
    return 1.0 / (1.0 - pol_engine_load(p, now_us));
}

static bool pp_wait(policy *p, const pol_item *it, int64_t now_us, double until_us);

/* Holding a load for its group's next arrivals, as an economic order
 * quantity. A group whose prefix no slot keeps between its requests is
 * loaded once per cycle: every T, a load of engine time L (weighted,
 * pp_engine_weight: K = L w) serves the rate x T requests that arrived
 * since the last one, which waited T / 2 on average. Per unit of time
 * that costs K / T + rate T / 2, least at the cycle T* = sqrt(2 K / rate),
 * a batch of Q* = sqrt(2 rate K) requests. So hold while fewer than Q* are
 * queued, until the oldest of them has waited T* at the group's mean rate.
 * The rate used for Q* falls while the group is quiet (pol_group_rate), so
 * a group that stops sending is not waited for; a deadline and rule 1 end
 * a hold sooner. Holding only for the next arrival (while rate x K > q,
 * at most one mean gap) stopped at half the cycle or less wherever loads
 * pay: `many` loaded its prompts 37 times where the optimum needs about 25
 * (docs/benchmarks.md). */
static bool pp_hold_for_arrival(policy *p, const pol_group *g, int lv, int64_t now_us)
{
    double rate = pol_group_rate(g, now_us);
    if (rate <= 0 || !pol_group_open(g))
        return false;
    const pol_item *it = g->lv[lv].head->it;
    double load = pol_prefill_us(p, (double)g->pfx_blocks * POL_TOKENS_PER_BLOCK) *
                  pol_unrestored(p);
    double k = load * pp_engine_weight(p, now_us);
    if (sqrt(2.0 * rate * k) <= (double)g->n_lv[lv])
        return false;
    return pp_wait(p, it, now_us, (double)it->enq_us + sqrt(2.0 * k * g->gap_us));
}

/* Waits until `until` (policy_next_wake), unless it would pass the item's
 * deadline: returns true to wait. */
static bool pp_wait(policy *p, const pol_item *it, int64_t now_us, double until_us)
{
    if (until_us <= (double)now_us)
        return false;
    int64_t t =
        until_us > (double)INT64_MAX / 2 ? INT64_MAX / 2 : (int64_t)ceil(until_us);
    if (it->deadline_us != 0 && t >= it->deadline_us)
        return false;
    if (t < p->wake_us)
        p->wake_us = t;
    return true;
}

/* Rules 3 and 4 at one level. */
static pol_item *pp_load(policy *p, int lv, int64_t now_us, int *slot)
{
    const pol_garr *a = &p->active[lv];
    pol_group *g = NULL;
    bool rates = pol_rates_known(p);

    /* Best-first walk of the level's heap (most demand, then oldest on
     * top). Groups that are not loadable have a request in flight, so at
     * most one per slot is skipped and the walk stays O(slots log). */
    size_t open[2 * POL_MAX_SLOTS + 4];
    size_t n_open = 0;
    if (a->n > 0)
        open[n_open++] = 0;
    while (n_open > 0) {
        size_t bi = 0;
        for (size_t k = 1; k < n_open; k++)
            if (pol_heap_better(a->v[open[k]], a->v[open[bi]], lv))
                bi = k;
        size_t i = open[bi];
        open[bi] = open[--n_open];
        if (pp_loadable(a->v[i]) && pp_placeable(p, a->v[i], lv)) {
            g = a->v[i];
            break;
        }
        if (n_open + 2 > sizeof(open) / sizeof(open[0]))
            break; /* cannot happen: see above */
        if (2 * i + 1 < a->n)
            open[n_open++] = 2 * i + 1;
        if (2 * i + 2 < a->n)
            open[n_open++] = 2 * i + 2;
    }
    /* Rule 4: every group here waits for a leader; copy the one with the
     * longest queue per holding slot, if it is long enough, or at once if
     * a slot is empty and the prefix short (copying it there evicts
     * nothing and costs less than waiting for the leader's answer; a long
     * one would also slow the leader's prefill, which shares the engine). */
    if (g == NULL) {
        uint64_t best_d = 0;
        bool empty = false;
        for (unsigned s = 0; s < p->n_slots && !empty; s++)
            empty = !p->slots[s].busy && p->slots[s].cache.n_blocks == 0 &&
                    !pol_slot_held(p, s, NULL, now_us);
        for (unsigned s = 0; s < p->n_slots; s++) {
            pol_group *c = p->slots[s].group;
            if (c == NULL || c->n_lv[lv] == 0 || pp_loadable(c) || !pp_placeable(p, c, lv))
                continue;
            bool cheap = empty && c->pfx_blocks <= POL_CHEAP_COPY_BLOCKS;
            if (c->queued <= (cheap ? 0 : POL_DUP_FACTOR * c->resident))
                continue;
            uint64_t d = pol_demand(c, lv) / c->resident;
            if (g == NULL || d > best_d ||
                (d == best_d && c->lv[lv].head->it->seq < g->lv[lv].head->it->seq)) {
                g = c;
                best_d = d;
            }
        }
    }
    if (g == NULL)
        return NULL; /* followers wait for their leaders' slots */
    pol_item *it = g->lv[lv].head->it;
    double horizon = pp_horizon(p, g, lv), victim = 0;
    int s = pol_evict_slot(p, it, horizon, &victim);
    if (s < 0)
        return NULL; /* the idle slots are kept for conversations */
    /* Gather: requests sent together (a coordinator's fan-out) reach the
     * daemon over a few milliseconds. Loading the first one at once would
     * evict a prefix that the next ones are about to hit, so a load that
     * overwrites a cached prefix waits until its request has been queued
     * gather_us; hits go first meanwhile. Not for a prefix the backend
     * restores by itself, nor for one nobody is expected to want. */
    int over = p->pinned ? s : pol_backend_choice(p, it, p->similarity);
    bool evicts = over >= 0 && p->slots[over].cache.n_blocks > 0;
    if (evicts && rates)
        evicts = pol_reload_us(p, (unsigned)over, horizon) > 0;
    if (evicts && now_us < it->enq_us + p->tun.gather_us &&
        pp_wait(p, it, now_us, (double)(it->enq_us + p->tun.gather_us)))
        return NULL;
    if (rates && pp_loadable(g) && pp_hold_for_arrival(p, g, lv, now_us))
        return NULL;
    if (rates) {
        /* A cheaper victim soon: a busy slot nobody queued is waiting for,
         * whose content costs less to bring back by more than the wait
         * costs the queued requests of g. */
        double wgt = pp_engine_weight(p, now_us), best = victim * wgt, until = 0;
        for (unsigned b = 0; b < p->n_slots; b++) {
            const pol_slot *sl = &p->slots[b];
            if (!sl->busy || !pol_slot_ok(p, b, it) ||
                (sl->group != NULL && sl->group->queued > 0))
                continue;
            double t = pol_remaining_us(p, sl, now_us);
            double c = pol_reload_us(p, b, horizon) * wgt + t * g->n_lv[lv];
            if (c < best) {
                best = c;
                until = (double)now_us + t;
            }
        }
        if (until > 0 && pp_wait(p, it, now_us, until))
            return NULL;
    }
    *slot = s;
    return it;
}

/* Ownership: returns a queued item (still queued; policy_next dispatches
 * it) and its idle slot, or NULL. Loop thread; does not block. */
static pol_item *prefix_choose(policy *p, int64_t now_us, int *slot)
{
    pol_item *it = pp_urgent(p, now_us, slot);
    if (it != NULL)
        return it;
    for (int lv = POL_LEVELS - 1; lv >= 0; lv--) {
        if (p->lv[lv].head == NULL)
            continue;
        it = pp_hit(p, lv, slot);
        if (it == NULL)
            it = pp_load(p, lv, now_us, slot);
        if (it != NULL)
            return it;
    }
    return NULL;
}

/* Whether it would start on an empty idle slot (one a preemption frees):
 * unless it follows a leader of its group that runs where the prefix is
 * (rule 4), and copying the prefix is not worth it yet. Such a request
 * waits for the slot its group's running request holds, not for the work
 * a preemption would stop. */
static bool prefix_takes_free_slot(const policy *p, const pol_item *it)
{
    (void)p;
    const pol_group *g = pol_node_of(it)->g;
    return !pol_group_held(g) || g->pfx_blocks <= POL_CHEAP_COPY_BLOCKS ||
           g->queued > POL_DUP_FACTOR * g->resident;
}

const pol_rule pol_rule_prefix = {
    .name = "prefix",
    .choose = prefix_choose,
    .holds_slots = true,
    .takes_free_slot = prefix_takes_free_slot,
};
