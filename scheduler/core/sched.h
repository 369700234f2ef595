/*
 * sched - the scheduler core as the rest of the daemon sees it: the front
 * doors hand it requests and get answers back through a sink; `serve`
 * builds it, adds the fronts and runs it.
 *
 * One thread (the loop's, in sched_run) owns every request, the queue
 * policy, the memory budget and the backend transfers. Other threads (nng's
 * callbacks, the signal thread, a future HTTP server's) only post events
 * with sched_post, which wakes the loop; the loop runs each event's function
 * on its own thread. Everything else here is called on the loop thread:
 * from an event's function, or before sched_run.
 *
 * A request enters with sched_submit and ends in exactly one call of its
 * sink: done (the answer) or fail (an error), made on the loop thread. The
 * sink may be called before sched_submit returns (a request refused at
 * once). A job does not know who sent it: the nng front, the HTTP front
 * door and a test are sinks alike.
 */
#ifndef LMSCHED_CORE_SCHED_H
#define LMSCHED_CORE_SCHED_H

#include <stdbool.h>
#include <stdint.h>

#include "scheduler/chat/chat.h"
#include "scheduler/core/config.h"

typedef struct sched sched;
typedef struct job job;

/* ---- sinks --------------------------------------------------------------- */

typedef struct sink_ops {
    /* Pieces of the answer as they are generated, for a request that asked
     * to stream (chat_req.stream); may be NULL for a sink that never
     * streams. The deltas live until the call returns. Every piece comes
     * before done. */
    void (*chunk)(void *arg, job *j, const chat_delta *d, size_t n);
    /* The answer. r and its strings live until the call returns. */
    void (*done)(void *arg, job *j, const chat_result *r);
    /* The request failed: an lmsched_err code, a message for the agent, and
     * the offending field of the request or NULL. */
    void (*fail)(void *arg, job *j, int code, const char *msg, const char *field);
} sink_ops;

typedef struct sink {
    const sink_ops *ops;
    void *arg;      /* the front's, passed back to each call */
    uint64_t owner; /* who sent it (the front's connection), for sched_cancel_owner */
    uint64_t id;    /* the front's correlation id, for logs */
} sink;

/* ---- events -------------------------------------------------------------- */

/* An event for the loop: it calls run(s, e) on its thread, once. The poster
 * owns e (often embedded in a struct of its own) and must keep it alive
 * until run is called. */
typedef struct sched_event {
    void (*run)(sched *s, struct sched_event *e);
    struct sched_event *next;
} sched_event;

/* Queues e and wakes the loop. Safe from any thread. */
void sched_post(sched *s, sched_event *e);

/* ---- requests ------------------------------------------------------------- */

/* Takes req (owned from here, freed when the job ends) and queues it, or
 * answers at once through the sink when it cannot be queued (shutting
 * down, queue full, cannot fit the backend's context, out of memory).
 * Every call ends in exactly one sink call. Returns the job while it is
 * queued (the caller may keep it to cancel it: it is valid until its sink
 * call), NULL when it was answered at once. */
job *sched_submit(sched *s, chat_req *req, const sink *k);

/* Cancels every request of this owner (its agent went away): queued ones
 * leave the queue, running ones have their backend transfer closed (the
 * server frees the slot), and each gets fail(LMSCHED_ECANCELED, why).
 * Returns how many. */
unsigned sched_cancel_owner(sched *s, uint64_t owner, const char *why);

/* Cancels the request of this owner and id (an agent's cancel), as above.
 * Returns whether it was still in flight. */
bool sched_cancel(sched *s, uint64_t owner, uint64_t id, const char *why);

/* Cancels j (its front gave up on it: a stream nobody reads), as above. */
void sched_cancel_job(sched *s, job *j, int code, const char *why);

/* The status document (docs/status.md), malloc'd JSON text, or NULL on
 * ENOMEM. */
char *sched_status_json(sched *s);

/* Counters a front keeps in the core's statistics. */
typedef enum sched_count {
    SCHED_COUNT_BAD_MESSAGE,    /* undecodable message answered with an error */
    SCHED_COUNT_STATUS,         /* status request answered */
    SCHED_COUNT_AUTH_REFUSED,   /* missing or wrong access token */
    SCHED_COUNT_REFUSED_BUSY,   /* a request refused before it was a job (per-connection limit) */
    SCHED_COUNT_CANCELED_EARLY, /* a request its agent had canceled before it arrived */
} sched_count;
void sched_count_add(sched *s, sched_count what);

/* Whether the core is shutting down (a front refuses new requests). */
bool sched_draining(const sched *s);

/* ---- fronts --------------------------------------------------------------- */

/* A front door, as the core sees it during shutdown. */
typedef struct front_ops {
    const char *name; /* "nng" */
    /* Answers handed over but not yet delivered (the drain waits for 0). */
    unsigned (*sending)(void *arg);
    /* Called each turn with the time; returns when the front next wants a
     * turn (its own timers: streams nobody reads), INT64_MAX for never. May
     * be NULL. */
    int64_t (*tick)(void *arg, int64_t now_us);
} front_ops;

/* Adds a front (at most SCHED_MAX_FRONTS). Returns LMSCHED_OK or
 * LMSCHED_EINVAL. */
int sched_add_front(sched *s, const front_ops *ops, void *arg);

/* ---- life ----------------------------------------------------------------- */

/* Allocates the core for cfg (copied): HTTP client, backends, policy,
 * budget. No I/O yet. Returns 0, or 1 with the reason logged. */
int sched_alloc(sched **sp, const sched_config *cfg);

/* Probes the backends once, waiting at most wait_ms, computes the budget
 * and says it. Returns 0, or 4 when the model alone exceeds the budget and
 * --force is not set (printed). */
int sched_start(sched *s, int wait_ms);

/* Runs until a stop was requested and every request got its answer. */
void sched_run(sched *s);

/* Asks the loop to shut down gracefully; a second call ends the drain at
 * once. Safe from any thread (it posts an event). */
void sched_request_stop(sched *s);
/* SIGHUP: read --backends-file again on the loop thread (backends added,
 * removed, their settings). Safe from any thread (a counter and a wake-up). */
void sched_request_reload(sched *s);

/* Frees the core. The fronts must be closed first (no more events). */
void sched_free(sched *s);

/* A line for the start-up log: policy, concurrency, queue. */
void sched_describe(const sched *s, char *buf, size_t len);

#endif /* LMSCHED_CORE_SCHED_H */
