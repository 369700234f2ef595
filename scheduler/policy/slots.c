/*
 * slots - the modelled content of one backend slot's prompt cache (see
 * slots.h).
 *
 * Design notes: block hashes are chained (each seeded with the previous
 * one), so a slot holding block hash blocks[k-1] of a prompt holds that
 * prompt's whole first k blocks. "Block k-1 is held" is therefore monotone
 * in k and the longest held prefix is found by binary search: O(log n)
 * membership tests, each O(1) in the hash set. Position is not stored: a
 * hash equal at a different position would need an XXH3 collision.
 */
#include "scheduler/policy/slots.h"

#include <stdlib.h>
#include <string.h>

#include "lmsched/wire.h"

/* 0 marks an empty cell; a real hash of 0 is stored as 1 (a collision with
 * a hash of 1 merely counts one block as held). */
static uint64_t slot_key(uint64_t h)
{
    return h != 0 ? h : 1;
}

static uint32_t slot_cell(uint64_t key, uint32_t mask)
{
    return (uint32_t)((key ^ (key >> 29)) & mask);
}

void slot_cache_init(slot_cache *c)
{
    memset(c, 0, sizeof(*c));
}

void slot_cache_fini(slot_cache *c)
{
    if (c == NULL)
        return;
    free(c->blocks);
    free(c->set);
    memset(c, 0, sizeof(*c));
}

void slot_cache_forget(slot_cache *c)
{
    if (c->set != NULL)
        memset(c->set, 0, ((size_t)c->set_mask + 1) * sizeof(*c->set));
    c->n_blocks = 0;
}

static int slot_has(const slot_cache *c, uint64_t h)
{
    if (c->n_blocks == 0)
        return 0;
    uint64_t key = slot_key(h);
    for (uint32_t i = slot_cell(key, c->set_mask);; i = (i + 1) & c->set_mask) {
        if (c->set[i] == key)
            return 1;
        if (c->set[i] == 0)
            return 0;
    }
}

int slot_cache_hold(slot_cache *c, const uint64_t *blocks, uint32_t n)
{
    slot_cache_forget(c);
    if (n == 0)
        return LMSCHED_OK;
    if (n > c->cap_blocks) {
        uint64_t *b = realloc(c->blocks, (size_t)n * sizeof(*b));
        if (b == NULL)
            return LMSCHED_ENOMEM;
        c->blocks = b;
        c->cap_blocks = n;
    }
    /* At most half full, so probes stay short. */
    size_t want = 16;
    while (want < (size_t)n * 2)
        want *= 2;
    if (c->set == NULL || want > (size_t)c->set_mask + 1) {
        uint64_t *s = calloc(want, sizeof(*s));
        if (s == NULL)
            return LMSCHED_ENOMEM;
        free(c->set);
        c->set = s;
        c->set_mask = (uint32_t)(want - 1);
    }
    memcpy(c->blocks, blocks, (size_t)n * sizeof(*blocks));
    for (uint32_t k = 0; k < n; k++) {
        uint64_t key = slot_key(blocks[k]);
        uint32_t i = slot_cell(key, c->set_mask);
        while (c->set[i] != 0 && c->set[i] != key)
            i = (i + 1) & c->set_mask;
        c->set[i] = key;
    }
    c->n_blocks = n;
    return LMSCHED_OK;
}

uint32_t slot_cache_match(const slot_cache *c, const uint64_t *blocks, uint32_t n)
{
    if (c->n_blocks == 0 || n == 0 || blocks == NULL)
        return 0;
    uint32_t hi = n < c->n_blocks ? n : c->n_blocks;
    /* The common cases first: the whole prompt is held, or nothing. */
    if (slot_has(c, blocks[hi - 1]))
        return hi;
    if (!slot_has(c, blocks[0]))
        return 0;
    /* Invariant: block lo-1 held, block hi-1 not. */
    uint32_t lo = 1;
    while (hi - lo > 1) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (slot_has(c, blocks[mid - 1]))
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}
