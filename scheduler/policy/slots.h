/*
 * slots - what one backend slot's prompt cache holds, as the policy models
 * it: the chained block hashes (prefix.h) of the last prompt sent there, as
 * an array plus an open-addressing hash set, so "how many leading blocks of
 * this prompt does the slot hold" is a binary search over membership tests.
 * Not thread-safe; the policy (scheduler loop thread) owns each model.
 */
#ifndef LMSCHED_SLOTS_H
#define LMSCHED_SLOTS_H

#include <stdint.h>

typedef struct slot_cache {
    uint64_t *blocks; /* the held prompt's block hashes, in order */
    uint32_t n_blocks;
    uint32_t cap_blocks;
    uint64_t *set;     /* open addressing; 0 marks an empty cell */
    uint32_t set_mask; /* set size - 1; 0 with no set */
} slot_cache;

/* Initialises an empty cache in caller storage. */
void slot_cache_init(slot_cache *c);
/* Frees what the cache owns; accepts a zeroed cache. */
void slot_cache_fini(slot_cache *c);
/* The cache now holds exactly blocks[0..n) (copied). Returns 0, or
 * LMSCHED_ENOMEM, in which case the cache is left empty (forgetting only
 * costs hits, never correctness). */
int slot_cache_hold(slot_cache *c, const uint64_t *blocks, uint32_t n);
/* Forgets everything (the backend's cache state is unknown). */
void slot_cache_forget(slot_cache *c);
/* The number of leading blocks of blocks[0..n) that the cache holds. */
uint32_t slot_cache_match(const slot_cache *c, const uint64_t *blocks, uint32_t n);

#endif /* LMSCHED_SLOTS_H */
