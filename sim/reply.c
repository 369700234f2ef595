/*
 * simreply - the tokens of one lmsim answer. Reasoning and plain words are
 * computed on demand (simeng_word), so a long reply costs nothing; built
 * tokens (JSON content, tool calls, a tool result's prefix) live in one
 * byte buffer, addressed by offsets because the buffer grows while built.
 */
#include "sim/reply.h"

#include <stdlib.h>
#include <string.h>

#include "sim/words.h"

/* Mixed into the word seed so the reasoning words are not the content's. */
#define SIMREPLY_REASONING_SALT 0x7265617326f6e21ULL

typedef struct simreply_tok {
    sim_piece_kind kind;
    unsigned call;
    size_t off, len;   /* streamed text in buf */
    size_t coff, clen; /* cache bytes in buf */
} simreply_tok;

typedef struct simreply_call {
    char id[SIMREPLY_CALL_ID_LEN + 1];
    size_t name_off; /* NUL-terminated in buf */
} simreply_call;

struct sim_reply {
    uint64_t word_seed;
    unsigned n_reasoning;
    unsigned n_words;
    bool logprobs;
    unsigned top_logprobs;
    char *buf;
    size_t buf_len, buf_cap;
    simreply_tok *toks;
    unsigned n_toks, toks_cap;
    simreply_call *calls;
    unsigned n_calls, calls_cap;
};

int simreply_alloc(sim_reply **out, uint64_t word_seed, unsigned n_reasoning)
{
    sim_reply *r = calloc(1, sizeof *r);
    *out = r;
    if (!r)
        return -1;
    r->word_seed = word_seed;
    r->n_reasoning = n_reasoning;
    return 0;
}

void simreply_free(sim_reply *r)
{
    if (!r)
        return;
    free(r->buf);
    free(r->toks);
    free(r->calls);
    free(r);
}

size_t simreply_cut(const char *s, size_t len, size_t off)
{
    size_t end = off + 4;
    if (end >= len)
        return len;
    /* UTF-8 continuation bytes are 10xxxxxx: never end a token before one. */
    while (end < len && ((unsigned char)s[end] & 0xC0) == 0x80)
        end++;
    return end;
}

/* Copies n bytes (and a NUL) into buf; *off gets where. 0 or -1. */
static int simreply_store(sim_reply *r, const char *s, size_t n, size_t *off)
{
    if (r->buf_len + n + 1 > SIMREPLY_MAX_BYTES)
        return -1;
    if (r->buf_len + n + 1 > r->buf_cap) {
        size_t cap = r->buf_cap ? r->buf_cap : 256;
        while (cap < r->buf_len + n + 1)
            cap *= 2;
        char *p = realloc(r->buf, cap);
        if (!p)
            return -1;
        r->buf = p;
        r->buf_cap = cap;
    }
    if (n > 0)
        memcpy(r->buf + r->buf_len, s, n);
    r->buf[r->buf_len + n] = '\0';
    *off = r->buf_len;
    r->buf_len += n + 1;
    return 0;
}

/* Appends a token; cache NULL means the same bytes as text. */
static int simreply_push(sim_reply *r, sim_piece_kind kind, unsigned call,
                         const char *text, size_t len, const char *cache,
                         size_t cache_len)
{
    simreply_tok t = {.kind = kind, .call = call, .len = len};
    if (r->n_toks == r->toks_cap) {
        unsigned cap = r->toks_cap ? r->toks_cap * 2 : 64;
        simreply_tok *p = realloc(r->toks, cap * sizeof *p);
        if (!p)
            return -1;
        r->toks = p;
        r->toks_cap = cap;
    }
    if (simreply_store(r, text, len, &t.off) != 0)
        return -1;
    if (cache) {
        if (simreply_store(r, cache, cache_len, &t.coff) != 0)
            return -1;
        t.clen = cache_len;
    } else {
        t.coff = t.off;
        t.clen = len;
    }
    r->toks[r->n_toks++] = t;
    return 0;
}

int simreply_add_text(sim_reply *r, const char *text, size_t len)
{
    for (size_t off = 0; off < len;) {
        size_t end = simreply_cut(text, len, off);
        if (simreply_push(r, SIM_PIECE_CONTENT, 0, text + off, end - off, NULL, 0) != 0)
            return -1;
        off = end;
    }
    return 0;
}

int simreply_add_call(sim_reply *r, const char *id, const char *name,
                      const char *head_cache, size_t head_cache_len)
{
    simreply_call c;
    if (r->n_calls >= SIMREPLY_MAX_CALLS || strlen(id) > SIMREPLY_CALL_ID_LEN)
        return -1;
    if (r->n_calls == r->calls_cap) {
        unsigned cap = r->calls_cap ? r->calls_cap * 2 : 4;
        simreply_call *p = realloc(r->calls, cap * sizeof *p);
        if (!p)
            return -1;
        r->calls = p;
        r->calls_cap = cap;
    }
    memset(&c, 0, sizeof c);
    strcpy(c.id, id);
    if (simreply_store(r, name, strlen(name), &c.name_off) != 0 ||
        simreply_push(r, SIM_PIECE_CALL_HEAD, r->n_calls, "", 0, head_cache,
                      head_cache_len) != 0)
        return -1;
    r->calls[r->n_calls++] = c;
    return 0;
}

int simreply_add_args(sim_reply *r, const char *text, size_t len, const char *cache,
                      size_t cache_len)
{
    if (r->n_calls == 0)
        return -1;
    return simreply_push(r, SIM_PIECE_CALL_ARGS, r->n_calls - 1, text, len, cache,
                         cache_len);
}

void simreply_set_words(sim_reply *r, unsigned n)
{
    r->n_words = n;
}

void simreply_set_logprobs(sim_reply *r, bool on, unsigned top)
{
    r->logprobs = on;
    r->top_logprobs = top;
}

bool simreply_logprobs(const sim_reply *r, unsigned *top)
{
    if (top)
        *top = r->top_logprobs;
    return r->logprobs;
}

unsigned simreply_tokens(const sim_reply *r)
{
    uint64_t n = (uint64_t)r->n_reasoning + r->n_toks + r->n_words;
    if (n == 0)
        return 1; /* a model says at least one token */
    return n > UINT32_MAX ? UINT32_MAX : (unsigned)n;
}

void simreply_piece(const sim_reply *r, unsigned i, sim_piece *out)
{
    memset(out, 0, sizeof *out);
    if (i < r->n_reasoning) {
        out->kind = SIM_PIECE_REASONING;
        out->text = simeng_word(r->word_seed ^ SIMREPLY_REASONING_SALT, i);
    } else if (i - r->n_reasoning < r->n_toks) {
        const simreply_tok *t = &r->toks[i - r->n_reasoning];
        out->kind = t->kind;
        out->call = t->call;
        out->text = r->buf + t->off;
        out->len = t->len;
        out->cache = r->buf + t->coff;
        out->cache_len = t->clen;
        return;
    } else {
        out->kind = SIM_PIECE_CONTENT;
        out->text = simeng_word(r->word_seed, i - r->n_reasoning - r->n_toks);
    }
    out->len = SIMENG_BYTES_PER_TOKEN;
    out->cache = out->text;
    out->cache_len = out->len;
}

uint64_t simreply_seed(const sim_reply *r)
{
    return r->word_seed;
}

unsigned simreply_calls(const sim_reply *r)
{
    return r->n_calls;
}

const char *simreply_call_id(const sim_reply *r, unsigned k)
{
    return k < r->n_calls ? r->calls[k].id : "";
}

const char *simreply_call_name(const sim_reply *r, unsigned k)
{
    return k < r->n_calls ? r->buf + r->calls[k].name_off : "";
}
