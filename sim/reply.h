/*
 * simreply - what lmsim's model says to one request, token by token:
 * first the reasoning words (--reasoning-tokens), then a table of built
 * tokens (structured content, or tool calls), then plain words. Past the
 * reply's natural end (ignore_eos) every token is one more word of content.
 *
 * The JSON side (sim/api.c) builds a reply from the request; the engine
 * owns it with the request, reads its natural length and what each token
 * puts in the slot cache; the JSON side reads what each token streams.
 * No JSON here. Immutable once built: any thread holding the request may
 * read it without a lock.
 */
#ifndef LMSIM_REPLY_H
#define LMSIM_REPLY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Bounds on a built reply (the generated words are not built): room for
 * the largest schema example (sim/schema.h), escaped, twice over. */
#define SIMREPLY_MAX_BYTES (16u * 1024u * 1024u)
#define SIMREPLY_MAX_CALLS 128u
/* "call_" and 8 hex digits. */
#define SIMREPLY_CALL_ID_LEN 13u

typedef struct sim_reply sim_reply;

typedef enum sim_piece_kind {
    SIM_PIECE_REASONING = 0, /* a reasoning_content delta */
    SIM_PIECE_CONTENT = 1,   /* a content delta */
    SIM_PIECE_CALL_HEAD = 2, /* a tool call begins: id, type, name, arguments "" */
    SIM_PIECE_CALL_ARGS = 3, /* a fragment of that call's arguments string */
} sim_piece_kind;

/* One token. The pointers stay valid as long as the reply. */
typedef struct sim_piece {
    sim_piece_kind kind;
    unsigned call;    /* tool call pieces: the call's index */
    const char *text; /* what is streamed, whole UTF-8 characters; "" for a head */
    size_t len;
    const char *cache; /* what the model generated, as the slot cache keeps it */
    size_t cache_len;
} sim_piece;

/* Allocates an empty reply: n_reasoning reasoning words, no content. The
 * caller owns *out (simreply_free). word_seed picks the words (see
 * simeng_word). Returns 0 or -1 on ENOMEM. */
int simreply_alloc(sim_reply **out, uint64_t word_seed, unsigned n_reasoning);

/* Frees r. Accepts NULL. */
void simreply_free(sim_reply *r);

/* Where the token that starts at byte off of s[0..len) ends: 4 bytes on,
 * moved forward to the next character boundary so that every token is
 * whole UTF-8 characters, or len. */
size_t simreply_cut(const char *s, size_t len, size_t off);

/* Appends content text (valid UTF-8) as tokens cut by simreply_cut.
 * Returns 0 or -1 (ENOMEM, or past SIMREPLY_MAX_BYTES). */
int simreply_add_text(sim_reply *r, const char *text, size_t len);

/* Starts tool call number simreply_calls(r): its head token, whose slot
 * cache bytes are head_cache. id and name are copied. Returns 0 or -1. */
int simreply_add_call(sim_reply *r, const char *id, const char *name,
                      const char *head_cache, size_t head_cache_len);

/* Appends one argument fragment of the last call started: text is
 * streamed, cache goes to the slot cache. Returns 0 or -1. */
int simreply_add_args(sim_reply *r, const char *text, size_t len, const char *cache,
                      size_t cache_len);

/* Plain words of content after the built tokens (the natural reply). */
void simreply_set_words(sim_reply *r, unsigned n);

/* How the answer reports logprobs: on or off, and top_logprobs entries. */
void simreply_set_logprobs(sim_reply *r, bool on, unsigned top);
bool simreply_logprobs(const sim_reply *r, unsigned *top);

/* The natural length in tokens: reasoning + built + words (at least 1). */
unsigned simreply_tokens(const sim_reply *r);

/* Token i (any i: past the natural end it is a word of content). */
void simreply_piece(const sim_reply *r, unsigned i, sim_piece *out);

uint64_t simreply_seed(const sim_reply *r);
unsigned simreply_calls(const sim_reply *r);
/* Call k's id ("call_" + 8 hex digits) and function name. */
const char *simreply_call_id(const sim_reply *r, unsigned k);
const char *simreply_call_name(const sim_reply *r, unsigned k);

#endif /* LMSIM_REPLY_H */
