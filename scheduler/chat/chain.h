/*
 * prefix - what a request's prompt looks like to a prefix cache: the system
 * prompt and messages rendered the way chat templates render them (ChatML:
 * "<|im_start|>role\ncontent<|im_end|>\n", then "<|im_start|>assistant\n"),
 * cut into fixed-size blocks with chained hashes (xxhash XXH3, each block's
 * hash seeded with the previous block's), so two prompts share their first k
 * blocks exactly when their first k block hashes are equal, and "how much of
 * this prompt does a slot hold" is a lookup of block hashes, not a string
 * comparison.
 *
 * Tokens are estimated from bytes (PREFIX_BYTES_PER_TOKEN), the same rule
 * lmsim uses; against a real server they are an estimate.
 */
#ifndef LMSCHED_PREFIX_H
#define LMSCHED_PREFIX_H

#include <stdint.h>

#include "scheduler/chat/chat.h"

#define PREFIX_BLOCK_BYTES 64
#define PREFIX_BYTES_PER_TOKEN 4
/* A floor on a prompt's tokens is its rendered bytes / this. Real text
 * averages 3-5 bytes per token; a run of one long word can reach 8 and more
 * (" license" is one token of 8 bytes), so the margin is wide: a prompt whose
 * floor alone fills the context cannot fit, whatever the tokenizer. */
#define PREFIX_MAX_BYTES_PER_TOKEN 16

typedef struct prefix_chain {
    uint64_t *blocks;     /* blocks[i] = hash of rendered bytes [0, (i+1)*BLOCK) chained */
    uint32_t n_blocks;    /* whole blocks only; a trailing partial block is not hashed */
    uint32_t tokens;      /* estimated prompt tokens: ceil(rendered bytes / 4) */
    uint64_t bytes;       /* rendered bytes */
    uint64_t group;       /* hash of the rendered system message: the prefix group */
} prefix_chain;

/* Renders req and builds its chain. Returns LMSCHED_OK or LMSCHED_ENOMEM. */
int prefix_chain_build(prefix_chain *c, const chat_req *req);
void prefix_chain_fini(prefix_chain *c);

#endif /* LMSCHED_PREFIX_H */
