/*
 * words - the words lmsim answers with, and its token size: every reply
 * token is one 4-byte word ("cat "), picked by a hash of the request's word
 * seed and the token's position, so a reply is computed on demand and the
 * same request always gets the same words (docs/simulator.md).
 *
 * Threads: any (no state).
 */
#ifndef LMSIM_WORDS_H
#define LMSIM_WORDS_H

#include <stdint.h>

/* Bytes per token of the simulator's tokenizer (see docs/simulator.md). */
#define SIMENG_BYTES_PER_TOKEN 4u

/* splitmix64's finalizer: a well-mixed 64-bit hash of x. */
uint64_t sim_mix64(uint64_t x);

/* The reply token i (0-based) of a request: a static 4-byte string, a
 * three-letter word and a space. */
const char *simeng_word(uint64_t word_seed, unsigned i);

#endif
