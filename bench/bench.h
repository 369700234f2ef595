/*
 * bench.h - shared types of lmbench, the benchmark that runs a named workload
 * through the lmsched daemon against an LLM server (lmsim) and compares the
 * prompt tokens the server prefilled with a clairvoyant optimum.
 *
 * workload.c generates the workloads (deterministic from a seed; each has a
 * variant whose agents also send their role's tools), optimum.c
 * computes the optimum from the requests actually sent, lmbench.c runs them.
 * Single-threaded except where noted: agent threads each write only their
 * own bn_req entries.
 */
#ifndef LMSCHED_BENCH_H
#define LMSCHED_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The workloads' fixed sizes (see docs/benchmarks.md). */
#define BN_MAX_AGENTS 64
#define BN_MAX_SYSTEMS 16
/* lmsim counts one token per 4 bytes of the rendered prompt. */
#define BN_BYTES_PER_TOKEN 4

typedef enum bn_kind {
    BN_ROUNDS, /* batch per round, barrier between rounds */
    BN_ROLES,  /* closed loop, one request at a time per agent */
    BN_MANY,   /* open loop: sent at scheduled times, not waiting for answers */
    BN_CHAT,   /* closed loop, each request repeats the conversation so far */
    BN_MIXED,  /* three classes at once: interactive chats, role rounds, a batch */
} bn_kind;

/* BN_MIXED's classes, in priority order (see docs/benchmarks.md). */
enum {
    BN_CLASS_INTERACTIVE = 0, /* long conversations, priority 8, a user's think time */
    BN_CLASS_ROLES = 1,       /* role agents in rounds (a barrier per round), priority 5 */
    BN_CLASS_BATCH = 2,       /* single requests sent at once, priority 1 */
    BN_MAX_CLASSES = 3,
};

/* One request of a workload. The generator fills the first block; the agent
 * thread that sends it fills the rest. */
typedef struct bn_req {
    int agent;             /* 0..nagents-1 */
    int seq;               /* position in the agent's sequence (round, turn) */
    int group;             /* release group: requests the optimum may reorder */
    int item;              /* cache item: the system prompt, or the conversation */
    int system;            /* index into bn_workload.systems */
    double arrival_sim_ms; /* BN_MANY, BN_MIXED's batch: send time in simulated ms */
    char *user;            /* the user message (owned) */
    int cls;               /* BN_MIXED: its class (BN_CLASS_*); 0 otherwise */
    int priority;          /* sent with this priority (-1: the default) */
    bool conv;             /* sends every earlier turn of its agent (a conversation) */
    double think_sim_ms;   /* closed loop: pause before sending it, simulated ms */

    /* Filled when sent: */
    char *render; /* the prompt as lmsim renders it (owned) */
    size_t render_len;
    char *reply; /* the reply's content, NULL for an error (owned) */
    bool sent;
    int err;      /* lmsched_err of the outcome */
    char *errmsg; /* the error's message (owned), or NULL */
    double queue_ms, ttft_ms, total_ms;
    double sent_ms; /* when sent, ms since the workload started */
    double done_ms; /* completion, ms since the workload started */
    /* The server's own count for this request (a reply's usage), or -1. */
    int64_t prompt_tokens, cached_tokens;
    /* Against llama-server: the prompt and the reply in the engine's own
     * tokens (from its /tokenize), for the optimum; NULL otherwise. */
    int32_t *toks;
    size_t ntoks;
    int32_t *reply_toks;
    size_t nreply_toks;
} bn_req;

typedef struct bn_workload {
    bn_kind kind;
    const char *name;
    int nagents;
    int per_agent; /* requests per agent; reqs[a * per_agent + j] */
    int max_tokens;
    char *systems[BN_MAX_SYSTEMS];
    int nsystems;
    int nitems; /* distinct cache items (for the optimum) */
    /* The "-tools" variant: each system prompt's role also sends these tool
     * definitions (JSON text, as lmsim dumps it), NULL otherwise. */
    char *tools[BN_MAX_SYSTEMS];
    double mean_gap_sim_ms; /* BN_MANY: mean inter-arrival time per agent */
    /* BN_MIXED: the classes (names, agents of each); one class otherwise. */
    int nclasses;
    const char *class_names[BN_MAX_CLASSES];
    int agent_class[BN_MAX_AGENTS];
    unsigned class_mask; /* the classes that send (bit c); the others' requests are not sent */
    bn_req *reqs;
    size_t nreqs;
    /* Every sent request has toks (and reply_toks when it has a reply): the
     * optimum counts in the engine's tokens instead of lmsim's 4 bytes. */
    bool tokenized;
} bn_workload;

/* Keeps only the classes named in list ("interactive,batch"; names of
 * w->class_names): the others send nothing. Returns 0, or -1 for an unknown
 * name. */
int bn_workload_classes(bn_workload *w, const char *list);

/* Parses a workload name; returns -1 if unknown. */
int bn_kind_parse(const char *name, bn_kind *kind);
/* The same, also accepting a "-tools" suffix (the variant with tools):
 * *tools says whether it was there. */
int bn_workload_parse(const char *name, bn_kind *kind, bool *tools);

/* Generates the workload (*wp freed with bn_workload_free). scale multiplies
 * the number of requests per agent (at least 1). Returns 0 or -1 (no
 * memory). */
int bn_workload_alloc(bn_workload **wp, bn_kind kind, uint64_t seed, double scale);
void bn_workload_free(bn_workload *w); /* accepts NULL */
/* Makes w the "-tools" variant: every role (system prompt) gets tool
 * definitions of about `tokens` tokens of its own, deterministic from the
 * seed, sent with each of its requests and rendered into the system block
 * as lmsim and the daemon render them. Returns 0 or -1 (no memory). */
int bn_workload_add_tools(bn_workload *w, uint64_t seed, int tokens);
/* Forgets everything filled by a run, so the workload can run again. */
void bn_workload_reset(bn_workload *w);

/* A message of a request as sent: role and content (both borrowed). */
typedef struct bn_msg {
    const char *role;
    const char *content;
} bn_msg;

/* The messages of request i after the system prompt: for BN_CHAT every
 * earlier turn of the conversation (user, then the assistant's reply, ""
 * for a failed turn), then the user message. *msgsp is a malloc'd array the
 * caller frees (the strings stay owned by the workload); returns the count,
 * or -1 (no memory). */
int bn_request_messages(const bn_workload *w, size_t i, bn_msg **msgsp);

/* Renders request i as lmsim does (ChatML, see docs/simulator.md; the
 * system block holds the tools when the workload has them) into
 * req->render. Returns 0 or -1 (no memory). */
int bn_request_render(bn_workload *w, size_t i);

/*
 * The clairvoyant lower bound on prefilled tokens with `slots` slots for the
 * requests of w that were sent (see docs/benchmarks.md, "The optimum").
 * Uses the rendered prompts and replies, in the engine's tokens when
 * w->tokenized, else in lmsim's (4 bytes each). Returns the bound, or -1 if the
 * workload has too many items for the exact computation (more than 16) or no
 * memory.
 */
int64_t bn_optimum(const bn_workload *w, unsigned slots);

/* Sum of ceil(render_len / 4) over the sent requests (of ntoks when
 * w->tokenized): the prompt tokens the server should report if the
 * rendering here matches its own. */
int64_t bn_model_prompt_tokens(const bn_workload *w);

#endif /* LMSCHED_BENCH_H */
