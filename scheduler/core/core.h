/*
 * core - the scheduler core's state and the functions its files share:
 * loop.c (the turn and its phases), job.c (a request's life and its one
 * answer), admit.c (taking a request in), capacity.c (the memory budget
 * and how many run at once), status.c (the snapshot and its JSON). Nothing
 * outside scheduler/core/ includes it; the rest of the daemon uses sched.h.
 * Loop thread only, except the inbox (inbox_mtx).
 */
#ifndef LMSCHED_CORE_CORE_H
#define LMSCHED_CORE_CORE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "scheduler/backend/backend.h"
#include "scheduler/backend/http.h"
#include "scheduler/chat/chain.h"
#include "scheduler/core/sched.h"
#include "scheduler/memory/budget.h"
#include "scheduler/policy/policy.h"

#define SCHED_MAX_FRONTS 4
#define SCHED_MAX_BACKENDS CONFIG_MAX_BACKENDS
/* Exact token counts in flight per backend at most (a burst of arrivals
 * must not take every HTTP worker of the server from its chats); queued
 * requests over it are asked as earlier counts come back. */
#define SCHED_COUNTS_PER_BACKEND 4
/* Answers whose prompt-token ratio the reservation remembers. */
#define SCHED_TOK_WINDOW 32
#define LAT_SAMPLES 1024

/* While a backend is unreachable dispatch is paused; the loop then wakes
 * at least this often (the policy's own wake time is not refreshed). */
#define SCHED_DOWN_TICK_US 50000
/* How often a request that could not connect checks whether the backend
 * came back. */
#define SCHED_DOWN_RECHECK_US 250000

/* --preempt: a request is stopped for a higher-priority one at most this
 * often. Each stop throws its prefill and decode so far away, and it
 * waits again; once is enough to let a burst of urgent requests through,
 * and the bound keeps a low-priority request from being thrown back again
 * and again while urgent ones keep coming. */
#define SCHED_MAX_PREEMPTS 1

/* Histogram buckets of latencies since start (status.c has the bounds). */
#define LAT_BUCKETS 15

typedef struct lat_ring {
    double v[LAT_SAMPLES];
    unsigned n;   /* samples held, <= LAT_SAMPLES */
    unsigned pos; /* next slot to write */
    /* Every sample since start, for the metrics' histograms: per bucket
     * (the last one above the highest bound), their count and sum. */
    uint64_t hist[LAT_BUCKETS + 1];
    uint64_t count;
    double sum;
} lat_ring;

/* Adds a sample (milliseconds) to the window and the histogram. */
void lat_add(lat_ring *r, double v);

typedef struct sched_stats {
    uint64_t received; /* chat requests submitted */
    uint64_t completed;
    uint64_t failed; /* answered with an error (not counting BUSY) */
    uint64_t retried;
    uint64_t preempted; /* running requests stopped for higher-priority ones */
    uint64_t rejected_busy;
    uint64_t failed_by_code[32];
    uint64_t bad_messages; /* undecodable messages answered with an error */
    uint64_t status_requests;
    uint64_t auth_refused;
    uint64_t tokens_prompt, tokens_completion, tokens_cached;
    lat_ring queue_wait, ttft, total;
} sched_stats;

typedef enum job_state {
    JOB_QUEUED = 1,
    JOB_INFLIGHT = 2,   /* a backend transfer is running */
    JOB_RETRY_WAIT = 3, /* holds its concurrency slot until retry_at_us */
    JOB_PENDING = 4,    /* chosen for a slot, waiting for KV memory to be free */
} job_state;

struct job {
    pol_item pi; /* first: the policy links it */
    job_state state;
    chat_req *req;  /* owned */
    sink sink;      /* where the answer goes */
    backend *be;    /* the backend it runs on, once dispatched */
    int64_t recv_us, dispatch_us;
    int64_t retry_at_us;
    unsigned attempts;    /* transfers started */
    unsigned refused;     /* of those, ones that could not connect (not counted
                           * against --max-retries: they never reached the backend) */
    int64_t down_wait_us; /* since when it waits for an unreachable backend, 0 if not */
    int64_t run_us;       /* when its current attempt started */
    unsigned preempts;    /* times it was stopped for a higher-priority request */
    bool streamed;        /* a piece of its answer went to its agent */
    http_xfer *xfer;      /* while JOB_INFLIGHT */
    prefix_chain chain;   /* the prompt's prefix blocks (pi points into it) */
    int slot;             /* backend slot chosen by the policy, -1 before */
    uint32_t elig;        /* several backends: those serving its model (0: any) */
    int bound;            /* --routing round-robin|least-loaded: the backend it
                           * is bound to (pi.backends is that one), -1 if none */
    uint64_t reserve;     /* KV bytes this request reserves while it runs */
    uint32_t reserve_tokens; /* the prompt tokens reserve counts (capacity_prompt_tokens) */
    bool reserved;        /* reserve is counted in sched.reserved_bytes */
    http_xfer *count;     /* its exact token count in flight (capacity.c), or NULL;
                           * freed (cancelled) when the job ends */
    unsigned count_be;    /* the backend asked for it */
    bool count_asked;     /* a count was started (each request is counted once) */
    uint32_t exact_tokens; /* that backend's count of its prompt, 0 none (yet) */
    job *prev, *next;     /* every live job */
};

/* --routing: the policy chooses the backend with the slot, or a baseline
 * binds each request to one backend when it arrives. */
typedef enum sched_routing {
    SCHED_ROUTE_CACHE = 0,
    SCHED_ROUTE_ROUND_ROBIN,
    SCHED_ROUTE_LEAST_LOADED,
} sched_routing;

/* Whether a backend restores evicted prompts by itself, as its restore
 * probe found (probe.c). */
typedef enum sched_restore {
    SCHED_RESTORE_OFF = 0, /* not probed: --probe-restore off, or slots not pinned */
    SCHED_RESTORE_PENDING, /* to probe once one of its slots is idle */
    SCHED_RESTORE_RUNNING,
    SCHED_RESTORE_YES,
    SCHED_RESTORE_NO,
    SCHED_RESTORE_UNKNOWN, /* the probe failed, timed out or read nothing */
} sched_restore;

/* What the core keeps per backend beside the backend object: its budget,
 * its slots in the policy's numbering, what runs there, and its counts. */
typedef struct sched_be {
    budget_in bin;
    budget_out bout;
    unsigned max_concurrent;  /* its share of sched.max_concurrent */
    unsigned slot_base;       /* its first slot in the policy */
    unsigned n_slots;         /* its slots there */
    uint64_t reserved_bytes;  /* KV reserved by requests running on it */
    job *pending;             /* chosen for it by the policy, waiting for its KV memory
                               * (its other slots wait too; other backends do not) */
    unsigned inflight;        /* requests dispatched to it, not yet ended */
    unsigned queued;          /* --routing baselines: queued requests bound to it */
    unsigned counting;        /* exact token counts in flight there */
    unsigned err_run;         /* server errors in a row (--backend-errors) */
    int64_t err_first_us;     /* when the first of them came */
    uint64_t error_outages;   /* times it was taken out for them */
    bool removed;             /* left --backends-file: takes nothing new; stays in
                               * the array (indices are in queued requests' masks) */
    uint64_t total_ram;       /* its host's RAM from --backends-file, 0: s->bin's */
    bool late;                /* added on SIGHUP: no slot until it reports them */
    uint64_t routed;          /* requests dispatched to it (attempts on another
                               * backend after a failover count there) */
    uint64_t completed, prompt_tokens, cached_tokens;
    /* The restore probe (probe.c): */
    sched_restore restore;
    double restore_share;     /* what it read (0..1), -1 none */
    http_xfer *rp_xfer;       /* its running request */
    int rp_slot;              /* the policy slot it took, -1 none */
    unsigned rp_step;         /* 0: prompt A, 1: prompt B, 2: A again */
    int64_t rp_deadline_us;
    uint64_t rp_nonce;        /* makes its prompts its own */
    int64_t rp_prompt[3], rp_cached[3]; /* each step's reported tokens */
} sched_be;

struct sched {
    sched_config cfg;
    char *token; /* LM_API_TOKEN, never logged or shown */
    http_client *http;
    backend backends[SCHED_MAX_BACKENDS];
    sched_be be[SCHED_MAX_BACKENDS];
    unsigned n_backends;
    policy *pol;
    sched_routing routing; /* --routing */
    unsigned rr_next;      /* round-robin: the backend to try first next time */
    uint32_t up_seen;      /* the up mask of the last turn */

    struct {
        const front_ops *ops;
        void *arg;
    } fronts[SCHED_MAX_FRONTS];
    unsigned n_fronts;

    pthread_mutex_t inbox_mtx;
    sched_event *inbox_head, *inbox_tail;
    atomic_uint stops; /* stop requests not yet seen by the loop */
    atomic_uint reloads; /* SIGHUPs not yet seen by the loop */

    job *jobs;
    unsigned queued, inflight; /* inflight counts every job that left the queue */
    uint64_t reserved_bytes;   /* KV reserved by running requests */
    uint64_t kv_bytes_per_token;
    const char *kv_source;     /* where kv_bytes_per_token came from */
    /* Backend prompt tokens per estimated one (x 1000), of the last
     * SCHED_TOK_WINDOW answers that reported usage.prompt_tokens: the
     * reservation scales the estimate by the largest (capacity.c). */
    uint32_t tok_ratio[SCHED_TOK_WINDOW];
    unsigned n_tok_ratio, tok_next;
    bool pin_slots;            /* requests carry the policy's slot */
    /* Exact token counts (--exact-tokens) and how reservations fared. */
    struct {
        uint64_t asked;   /* counts started */
        uint64_t counted; /* counts that came back */
        uint64_t applied; /* of those, to a request still waiting: its reservation */
        uint64_t late;    /* ... to one already running: it kept the estimate */
        uint64_t failed;  /* counts that did not come back (error, not counting) */
        /* Answers with usage.prompt_tokens against the reserved prompt tokens: */
        uint64_t answers, exact, under, over;
        uint64_t error_tokens; /* sum of |reserved - used| */
        bool wanted;      /* a queued request was not asked (the cap): ask when room */
        bool freed;       /* a count ended since the last look for room */
    } tokc;

    budget_in bin;
    budget_out bout;
    const char *limited_by; /* "memory", "slots", "flag" */
    unsigned max_concurrent;

    sched_stats st;
    int64_t start_us;
    bool started;      /* sched_start is done: changes are logged from now on */
    int64_t fronts_wake; /* when a front's timer is next due */
    bool draining;
    bool drain_forced; /* a second stop signal ended the drain */
    int64_t drain_deadline_us;
    bool stopped;
};

/* ---- job.c ---------------------------------------------------------------- */

/* A job for req (taken) answering through k; not linked anywhere yet.
 * NULL on ENOMEM (req is then freed). */
job *job_new(sched *s, chat_req *req, const sink *k);
/* Links a new job into the list of live jobs. */
void job_link(sched *s, job *j);
/* Ends j with its answer: the sink's done, then the job is freed. */
void job_complete(sched *s, job *j, const chat_result *r);
/* Ends j with an error: detached from whatever holds it (queue, transfer,
 * slot, memory), the sink's fail, then freed. */
void job_fail(sched *s, job *j, int code, const char *msg, const char *field);
/* Gives back j's slot and KV reservation; d: how it ended, NULL failed. */
void job_release_slot(sched *s, job *j, const pol_done *d);

/* ---- admit.c ---------------------------------------------------------------- */

/* --routing baselines: binds queued (or about to be queued) j to one
 * backend of j->elig, preferring those up and not in avoid: the next in
 * turn, or the one with the fewest bound queued plus running requests. */
void admit_bind(sched *s, job *j, uint32_t avoid);
/* j enters (d = 1) or leaves (d = -1) the queue: the counts. */
static inline void sched_queued_add(sched *s, const job *j, int d)
{
    s->queued = (unsigned)((int)s->queued + d);
    if (j->bound >= 0)
        s->be[j->bound].queued = (unsigned)((int)s->be[j->bound].queued + d);
}
/* --routing baselines: queued requests bound to a backend not in up are
 * bound again to one that is (when one serving them is). */
void admit_rebind_down(sched *s, uint32_t up);
/* The backends changed (--backends-file): every queued request's backends
 * are worked out again; one that no backend serves any more fails. */
void admit_reroute_queued(sched *s);

/* ---- capacity.c ---------------------------------------------------------- */

/* The per-slot context the core plans with on backend bi: its own when it
 * reported one, else --context, else the default; bi < 0: the largest of
 * the backends' (what a request not yet placed may grow to). */
int64_t sched_context(const sched *s, int bi);
/* The index of a backend of s. */
static inline unsigned sched_be_index(const sched *s, const backend *b)
{
    return (unsigned)(b - s->backends);
}
/* Bit i: backend i is healthy (and not removed). */
uint32_t sched_up_mask(const sched *s);

/* Reads the machine's RAM and the KV size per token (flags, GGUF). Returns
 * 0, or 1 with the reason logged. */
int capacity_init(sched *s);
/* Recomputes the budget, max_concurrent, the policy's slots and placement
 * from what the backends report and the flags. */
void capacity_update(sched *s);
/* The KV bytes a request with this prompt reserves while it runs. */
uint64_t capacity_reserve(const sched *s, uint32_t prompt_tokens, int32_t max_tokens);
/* The same on backend bi, capped at its own context: what a request placed
 * there can take (loop_reserve). */
uint64_t capacity_reserve_on(const sched *s, int bi, uint32_t prompt_tokens, int32_t max_tokens);
/* The prompt tokens a request is reserved for: its estimate (chain.c) scaled
 * by the largest ratio the backends reported lately, or before any report
 * the estimate plus the template's tokens (CAPACITY_TEMPLATE_*). */
/* Several backends, --routing cache: queued j's backends are those of
 * j->elig whose budget holds its reservation (all of them when none does);
 * again whenever the reservation changes (admission, an exact count). */
void capacity_fit(sched *s, job *j);
uint32_t capacity_prompt_tokens(const sched *s, const prefix_chain *c, size_t n_messages);
/* A request estimated at est tokens was counted prompt_tokens by its backend
 * (usage.prompt_tokens, or the exact count; <= 0 unknown, ignored). */
void capacity_learn_tokens(sched *s, uint32_t est, int64_t prompt_tokens);
/* --exact-tokens: asks a backend that counts tokens for queued j's exact
 * prompt tokens (nothing when none can). */
void capacity_count_start(sched *s, job *j);
/* A finished transfer of j's count (j->count): the next step, or the count,
 * which sets j's reservation while it waits for its slot or memory. */
void capacity_count_done(sched *s, job *j, http_xfer *x);
/* Cancels j's count in flight, if any (j ends). */
void capacity_count_cancel(sched *s, job *j);
/* Asks for the counts of queued requests left unasked by the cap, while
 * there is room (each turn; nothing to do most of the time). */
void capacity_count_more(sched *s);
/* The backend answered j: its reservation against usage.prompt_tokens. */
void capacity_note_answer(sched *s, const job *j, int64_t prompt_tokens);

/* ---- probe.c --------------------------------------------------------------- */

/* Backend i was found healthy (first found, or back after an outage):
 * probe it when one of its slots is idle, if the probe applies. */
void probe_restore_want(sched *s, unsigned i);
/* Starts the probes that are due (taking a slot from the policy) and ends
 * those past their time. Call before dispatch. */
void probe_restore_tick(sched *s, int64_t now);
/* Whether x is a restore probe's transfer. */
bool probe_restore_owns(const sched *s, const http_xfer *x);
/* Takes a finished probe transfer (and frees it): the next step, or the
 * verdict. */
void probe_restore_done(sched *s, http_xfer *x);
/* Whether any probe is running. */
bool probe_restore_running(const sched *s);
/* When a running probe times out, INT64_MAX if none runs. */
int64_t probe_restore_wake(const sched *s);
/* Cancels running probes (shutdown). */
void probe_restore_fini(sched *s);
/* "off", "pending", "probing", "restores", "no_restore", "unknown". */
const char *probe_restore_name(sched_restore r);

/* ---- loop.c -------------------------------------------------------------- */

/* Takes the backend's answer to a finished transfer of a job. */
void loop_job_done(sched *s, job *j, http_xfer *x);

/* One turn of the loop without its sleep (sched_run calls it, and so do
 * the core's unit tests, which drive the clock themselves). Returns when
 * the loop wants the next turn. */
int64_t sched_turn(sched *s);

/* sched_alloc with an HTTP client of the caller's (taken, freed by
 * sched_free): the unit tests' fake. */
int sched_alloc_http(sched **sp, const sched_config *cfg, http_client *http);

#endif /* LMSCHED_CORE_CORE_H */
