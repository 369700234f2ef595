/*
 * simeng - lmsim's model of a llama.cpp engine: N slots with a prompt cache
 * each, a FIFO queue in front of them, a simulated clock driving continuous
 * batching (prefill and decode rates), and the injected faults. It knows
 * nothing of HTTP or JSON: the HTTP side submits requests, waits for their
 * progress, and reads their tokens and timings through snapshots.
 *
 * Threads: every function may be called from any thread; one mutex guards
 * all engine state, and one engine thread advances the clock.
 */
#ifndef LMSIM_ENGINE_H
#define LMSIM_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "sim/config.h"
#include "sim/reply.h"
#include "sim/words.h"

/* Requests that may wait for a slot at once; more are answered 503. */
#define SIMENG_MAX_QUEUED 4096u

typedef struct sim_engine sim_engine;
typedef struct sim_req sim_req;

typedef enum sim_state {
    SIM_QUEUED = 0, /* waiting for a slot */
    SIM_SPIKE,      /* in a slot, stalled by an injected latency spike */
    SIM_PREFILL,    /* in a slot, processing the prompt */
    SIM_DECODE,     /* in a slot, generating; at least one token exists */
    SIM_DONE,       /* finished normally */
    SIM_CUT,        /* stream cut by a crash after some tokens */
    SIM_FAILED,     /* answered with an HTTP error (fail_status, fail_body) */
    SIM_CANCELLED,  /* the client went away */
    SIM_HUNG,       /* injected hang: accepted, never queued, never answered */
    SIM_GARBAGE,    /* injected garbage answer (garbage_mode in the view) */
} sim_state;

/* A chat request as the HTTP side hands it over. */
typedef struct sim_req_params {
    char *prompt; /* rendered prompt bytes; owned by the engine after submit */
    size_t prompt_len;
    int64_t max_tokens; /* <= 0: no limit */
    int id_slot;        /* -1: any slot */
    bool cache_prompt;  /* false: never reuse a slot's cache */
    bool stream;
    bool ignore_eos; /* generate until max_tokens (or the context) */
    uint64_t seed;   /* request's "seed", mixed into the reply words */
    sim_reply *reply; /* what the model says; owned by the engine after submit,
                         like prompt; NULL: --reply-tokens words */
} sim_req_params;

typedef enum sim_submit_rc {
    SIM_SUBMIT_OK = 0,
    SIM_SUBMIT_ECONTEXT, /* prompt does not fit the slot context */
    SIM_SUBMIT_ESLOT,    /* id_slot out of range */
    SIM_SUBMIT_EBUSY,    /* queue full or shutting down */
    SIM_SUBMIT_ENOMEM,
} sim_submit_rc;

/* What a request looks like at one instant (copied under the lock). */
typedef struct sim_view {
    sim_state state;
    bool stopping;  /* the engine is shutting down */
    uint64_t id;    /* for "chatcmpl-<id>" */
    time_t created; /* wall clock at submit, seconds */
    bool stream;
    unsigned n_gen;        /* tokens generated so far */
    unsigned malformed_at; /* 0: none; else emit the bad chunk after this token */
    uint64_t word_seed;    /* for simeng_word() */
    const sim_reply *reply; /* the request's reply (NULL: words); valid while
                               the caller holds the request */
    int slot;              /* slot it runs or ran in, -1 if it never got one */
    uint64_t admit_seq;    /* 1 for the first request given a slot since start/reset */
    /* Meaningful once the first token exists: */
    unsigned prompt_n;         /* whole prompt, tokens */
    unsigned cache_n;          /* reused from the slot cache */
    double prompt_ms;          /* simulated prefill time */
    double predicted_ms;       /* simulated time from first to last token */
    const char *finish_reason; /* "stop" or "length" once SIM_DONE, else NULL */
    /* SIM_FAILED: */
    int fail_status;
    const char *fail_body; /* static JSON text */
    /* SIM_GARBAGE: which kind (enum sim_garbage_mode, never SIM_GARBAGE_ANY) */
    int garbage_mode;
} sim_view;

typedef struct sim_slot_stats {
    unsigned id;
    bool busy;
    unsigned cached_tokens;
} sim_slot_stats;

typedef struct sim_stats {
    uint64_t requests;          /* completed (SIM_DONE) */
    uint64_t prompt_tokens;     /* sum of prompt_n of requests given a slot */
    uint64_t prefill_tokens;    /* of those, processed */
    uint64_t cached_tokens;     /* of those, reused */
    uint64_t completion_tokens; /* generated, whatever became of the request */
    uint64_t errors_injected;   /* requests hit by any fault */
    uint64_t fault_fail, fault_crashes, fault_cut, fault_crash_failed;
    uint64_t fault_spike, fault_malformed;
    uint64_t fault_hang, fault_garbage;
    unsigned hanging;    /* hung requests whose client is still connected */
    unsigned max_active; /* most requests ever in slots at once */
    unsigned active;
    unsigned queued;
    double sim_ms; /* simulated time since start or reset */
    unsigned n_slots;
    sim_slot_stats *slots; /* caller's array of cfg->slots entries */
    /* Filled by the HTTP side, not the engine: token counts answered. */
    uint64_t template_requests; /* POST /apply-template answered 200 */
    uint64_t tokenize_requests; /* POST /tokenize answered 200 */
} sim_stats;

/* Tokens of a byte string: ceil(len / 4). */
unsigned simeng_tokens(size_t len);

/* The word seed of a request: from --seed, the rendered prompt and the
 * request's "seed", so the same request gets the same reply. */
uint64_t simeng_reply_seed(const sim_config *cfg, const char *prompt, size_t len,
                           uint64_t seed);

/* Allocates an engine for cfg, which must outlive it. The caller owns *out
 * and frees it with simeng_free after simeng_stop. Returns 0 or ENOMEM. */
int simeng_alloc(sim_engine **out, const sim_config *cfg);

/* Starts the clock thread. Returns 0 or an errno value. */
int simeng_start(sim_engine *e);

/* Stops the clock thread and wakes every waiter (they see stopping). Blocks
 * until the thread has exited. Idempotent. */
void simeng_stop(sim_engine *e);

/* Frees the engine and every request it still holds. Requests the caller
 * holds must have been released first. Accepts NULL. */
void simeng_free(sim_engine *e);

/* Submits a request. On SIM_SUBMIT_OK, *out is a request the caller holds
 * (release it with simeng_release) and p->prompt belongs to the engine;
 * the request may already be SIM_FAILED (injected failure). On any other
 * code p->prompt stays with the caller and *out is NULL; *prompt_n gets the
 * prompt's token count either way (for the context error message). */
sim_submit_rc simeng_submit(sim_engine *e, sim_req_params *p, sim_req **out,
                            unsigned *prompt_n);

/* lmsim --instant: the request as if it had finished the moment it
 * arrived, without a slot, the clock or faults. Fills *v as a finished
 * request (SIM_DONE, its tokens, finish reason, zero timings, slot -1) and
 * counts it in the stats (requests, prompt, prefill and completion tokens).
 * Nothing is held: there is nothing to release. Returns SIM_SUBMIT_OK, or
 * the refusal simeng_submit would give (context, id_slot, stopping);
 * p->prompt and p->reply stay with the caller either way (v->reply points
 * to p->reply). */
sim_submit_rc simeng_instant(sim_engine *e, const sim_req_params *p, sim_view *v,
                             unsigned *prompt_n);

/* Blocks until r has more than `have` tokens, reaches a final state
 * (SIM_DONE, SIM_CUT, SIM_FAILED, SIM_CANCELLED, SIM_GARBAGE), the engine stops, or
 * timeout_ms of wall time pass; then fills *v. */
void simeng_wait(sim_engine *e, sim_req *r, unsigned have, unsigned timeout_ms,
                 sim_view *v);

/* True for the final states. */
bool simeng_final(sim_state s);

/* Drops the caller's hold on r. If r has not finished, the client is taken
 * to have gone away: r leaves its queue or slot (SIM_CANCELLED), keeping in
 * the slot cache what was processed. */
void simeng_release(sim_engine *e, sim_req *r);

/* Clears every slot cache, the counters and the fault state (fresh backend
 * for a benchmark). Requests in flight continue. */
void simeng_reset(sim_engine *e);

/* Fills *st; st->slots must point to cfg->slots entries. */
void simeng_stats(sim_engine *e, sim_stats *st);

#endif /* LMSIM_ENGINE_H */
