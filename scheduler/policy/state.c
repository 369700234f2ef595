/*
 * state - the policy's shared state and what every rule asks of it: the
 * per-level demand heaps of the groups, the modelled slot caches (how much
 * of a prompt a slot holds, which slot is free, which is cheapest to evict,
 * where the backend itself would put a request). policy.c keeps the queue
 * and calls the rules; the rules (rule_fifo.c, rule_prefix.c) call only
 * this file, so the policy's files form no cycle.
 */
#include <math.h>
#include <stdlib.h>

#include "lmsched/wire.h"
#include "scheduler/policy/internal.h"

/* Per level, the groups with queued items at that level form a binary
 * max-heap by (demand at the level, oldest head), so the prefix policy's
 * load choice does not scan every group. */
uint64_t pol_demand(const pol_group *g, int lv)
{
    return (uint64_t)g->n_lv[lv] * (g->pfx_blocks ? g->pfx_blocks : 1);
}

bool pol_heap_better(const pol_group *a, const pol_group *b, int lv)
{
    uint64_t da = pol_demand(a, lv), db = pol_demand(b, lv);
    if (da != db)
        return da > db;
    return a->lv[lv].head->it->seq < b->lv[lv].head->it->seq;
}

void pol_heap_set(pol_garr *a, size_t i, pol_group *g, int lv)
{
    a->v[i] = g;
    g->lv_pos[lv] = i;
}

/* Restores heap order around position i after g's key changed. */
void pol_heap_fix(pol_garr *a, size_t i, int lv)
{
    pol_group *g = a->v[i];
    while (i > 0 && pol_heap_better(g, a->v[(i - 1) / 2], lv)) {
        pol_heap_set(a, i, a->v[(i - 1) / 2], lv);
        i = (i - 1) / 2;
    }
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= a->n)
            break;
        if (c + 1 < a->n && pol_heap_better(a->v[c + 1], a->v[c], lv))
            c++;
        if (!pol_heap_better(a->v[c], g, lv))
            break;
        pol_heap_set(a, i, a->v[c], lv);
        i = c;
    }
    pol_heap_set(a, i, g, lv);
}

int pol_heap_reserve(pol_garr *a)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 16;
        pol_group **v = realloc(a->v, cap * sizeof(*v));
        if (v == NULL)
            return LMSCHED_ENOMEM;
        a->v = v;
        a->cap = cap;
    }
    return LMSCHED_OK;
}

/* g must have an item at lv and room reserved. */
void pol_heap_add(pol_garr *a, pol_group *g, int lv)
{
    pol_heap_set(a, a->n++, g, lv);
    pol_heap_fix(a, a->n - 1, lv);
}

void pol_heap_del(pol_garr *a, size_t pos, int lv)
{
    pol_group *last = a->v[--a->n];
    if (pos == a->n)
        return;
    pol_heap_set(a, pos, last, lv);
    pol_heap_fix(a, pos, lv);
}

uint32_t pol_cached_blocks(const policy *p, unsigned s, const pol_item *it)
{
    return slot_cache_match(&p->slots[s].cache, it->blocks, it->n_blocks);
}

/* Cached tokens for a number of held blocks. The backend always evaluates
 * at least the last prompt token, so at most tokens - 1 are reused. */
uint32_t pol_block_tokens(uint32_t blocks, const pol_item *it)
{
    uint64_t t = (uint64_t)blocks * POL_TOKENS_PER_BLOCK;
    uint32_t cap = it->tokens > 0 ? it->tokens - 1 : 0;
    return t < cap ? (uint32_t)t : cap;
}

bool pol_slot_held(const policy *p, unsigned s, const pol_item *it, int64_t now_us)
{
    const pol_slot *sl = &p->slots[s];
    if (sl->busy || sl->hold_until <= now_us)
        return false;
    /* The session the slot is kept for may start there, whatever its
     * prompt (a client may rewrite its history). */
    if (it != NULL && it->session != 0 && it->session == sl->session)
        return false;
    return it == NULL || pol_cached_blocks(p, s, it) < sl->cache.n_blocks;
}

int pol_lru_idle(const policy *p, const pol_item *it)
{
    int lru = -1;
    for (unsigned i = 0; i < p->n_slots; i++) {
        const pol_slot *s = &p->slots[i];
        if (!s->busy && pol_slot_ok(p, i, it) && (lru < 0 || s->last_used < p->slots[lru].last_used))
            lru = (int)i;
    }
    return lru;
}

int pol_evict_slot(const policy *p, const pol_item *it, double horizon_us, double *cost_us)
{
    int best = -1;
    double best_cost = 0;
    for (unsigned i = 0; i < p->n_slots; i++) {
        const pol_slot *s = &p->slots[i];
        if (s->busy || !pol_slot_ok(p, i, it) || pol_slot_held(p, i, NULL, p->now_us))
            continue;
        double c = pol_reload_us(p, i, horizon_us);
        /* Equal within a hair (two empty slots, two unwanted prefixes of
         * one size): the least recently used goes, as the backend's LRU. */
        bool tie = best >= 0 && fabs(c - best_cost) <= 1e-9 * (c + best_cost);
        if (best < 0 || (!tie && c < best_cost) ||
            (tie && s->last_used < p->slots[best].last_used)) {
            best = (int)i;
            best_cost = c;
        }
    }
    if (cost_us != NULL)
        *cost_us = best >= 0 ? best_cost : 0;
    return best;
}

/* Mirrors the backend's own rule (llama.cpp's slot selection, which lmsim's
 * engine copies): strictly longest cached prefix, lowest index on ties, if
 * it covers at least `similarity` of the prompt, else least recently used. */
int pol_backend_choice(const policy *p, const pol_item *it, double similarity)
{
    int best = -1;
    uint32_t best_tok = 0;
    for (unsigned i = 0; i < p->n_slots; i++) {
        if (p->slots[i].busy || !pol_slot_ok(p, i, it))
            continue;
        uint64_t t = (uint64_t)pol_cached_blocks(p, i, it) * POL_TOKENS_PER_BLOCK;
        uint32_t tok = t < it->tokens ? (uint32_t)t : it->tokens;
        if (tok > best_tok) {
            best_tok = tok;
            best = (int)i;
        }
    }
    if (best >= 0 && (double)best_tok >= similarity * (double)it->tokens)
        return best;
    return pol_lru_idle(p, it);
}
