/*
 * loop - the scheduler: one thread owns every request, the queue policy, the
 * memory budget and the backend transfers. nng callbacks and the signal
 * thread only post events to its inbox and wake it through curl; the loop
 * drains the inbox, runs curl, handles finished transfers, expires
 * deadlines, dispatches queued requests up to max_concurrent, and sleeps in
 * curl_multi_poll until the next deadline.
 *
 * Every accepted request gets exactly one reply: a job is freed only right
 * after its reply was handed to the server (job_finish).
 */
#ifndef LMSCHED_LOOP_H
#define LMSCHED_LOOP_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "proto/proto.h"
#include "scheduler/backend/http.h"
#include "scheduler/memory/budget.h"
#include "scheduler/core/config.h"
#include "scheduler/policy/policy.h"
#include "scheduler/chat/chain.h"
#include "scheduler/front/rep.h"

#define LAT_SAMPLES 1024

typedef struct lat_ring {
    double v[LAT_SAMPLES];
    unsigned n;     /* samples held, <= LAT_SAMPLES */
    unsigned pos;   /* next slot to write */
} lat_ring;

typedef enum job_state {
    JOB_QUEUED = 1,
    JOB_INFLIGHT = 2,   /* a backend transfer is running */
    JOB_RETRY_WAIT = 3, /* holds its concurrency slot until retry_at_us */
    JOB_PENDING = 4,    /* chosen for a slot, waiting for KV memory to be free */
} job_state;

typedef struct job {
    pol_item pi;              /* first: the policy links it */
    job_state state;
    srv_ctx *ctx;             /* where the reply goes */
    uint32_t pipe;            /* the agent connection it came from */
    uint64_t id;              /* client's correlation id */
    lms_chat_req req;         /* owned */
    int64_t recv_us, dispatch_us, first_token_us;
    int64_t retry_at_us;
    unsigned attempts;        /* transfers started */
    unsigned refused;         /* of those, ones that could not connect (not counted
                               * against --max-retries: they never reached the backend) */
    int64_t down_wait_us;     /* since when it waits for an unreachable backend, 0 if not */
    bk_xfer *xfer;            /* while JOB_INFLIGHT */
    prefix_chain chain;       /* the prompt's prefix blocks (pi points into it) */
    int slot;                 /* backend slot chosen by the policy, -1 before */
    uint64_t reserve;         /* KV bytes this request reserves while it runs */
    bool reserved;            /* reserve is counted in sched.reserved_bytes */
    struct job *prev, *next;  /* every live job */
} job;

typedef struct sched_event sched_event;

typedef struct backend_state {
    char kind[16];            /* "lmstudio", "llamacpp", "openai", "unknown" */
    bool healthy;
    char last_error[1024];
    char model[256];
    int64_t context_length;   /* per slot, -1 unknown */
    int64_t slots;            /* -1 unknown */
    int64_t size_bytes;       /* -1 unknown */
    int64_t checked_us;       /* last successful or failed probe, 0 never */
    int64_t down_since_us;    /* when it became unreachable; 0 while healthy */
} backend_state;

typedef struct sched_stats {
    uint64_t received;        /* chat requests decoded */
    uint64_t completed;
    uint64_t failed;          /* answered with an error (not counting BUSY) */
    uint64_t retried;
    uint64_t rejected_busy;
    uint64_t failed_by_code[32];
    uint64_t bad_messages;    /* undecodable messages answered with an error */
    uint64_t status_requests;
    uint64_t tokens_prompt, tokens_completion, tokens_cached;
    lat_ring queue_wait, ttft, total;
} sched_stats;

typedef struct sched {
    sched_config cfg;
    char *token;              /* LM_API_TOKEN, never logged or shown */
    backend *bk;
    srv *srv;
    policy *pol;
    lms_limits limits;

    pthread_mutex_t inbox_mtx;
    sched_event *inbox_head, *inbox_tail;

    job *jobs;
    unsigned queued, inflight; /* inflight counts every job that left the queue */
    job *pending;              /* chosen by the policy, waiting for memory */
    uint64_t reserved_bytes;   /* KV reserved by running requests */
    uint64_t kv_bytes_per_token;
    const char *kv_source;     /* where kv_bytes_per_token came from */
    bool pin_slots;            /* send id_slot (llama.cpp with the prefix policy) */

    budget_in bin;
    budget_out bout;
    const char *limited_by;    /* "memory", "slots", "flag" */
    unsigned max_concurrent;

    backend_state be;
    bk_xfer *probe;            /* running probe, or NULL */
    int probe_stage;
    char probe_tried[400];     /* what each stage of the current cycle got */
    int64_t next_probe_us;
    int64_t probe_started_us;  /* when the last probe stage started */

    sched_stats st;
    int64_t start_us;
    bool listening;           /* sched_listen succeeded */
    bool draining;
    bool drain_forced;        /* a second stop signal ended the drain */
    int64_t drain_deadline_us;
    bool stopped;
} sched;

/* Sets up the scheduler with cfg (copied): backend, policy, budget. Does not
 * listen yet. Returns 0, or an exit code (1 failure) with a message logged. */
int sched_init(sched *s, const sched_config *cfg);

/* Reads the backend's model info once, waiting at most wait_ms, then
 * computes the budget. Returns 0, or 4 when the model alone exceeds the
 * budget and --force is not set (the message is printed). */
int sched_probe_initial(sched *s, int wait_ms);

/* Listens on cfg.listen. Returns 0 or 4 (message logged). */
int sched_listen(sched *s);

/* Runs until a stop was requested and every request got its reply. */
void sched_run(sched *s);

/* Asks the loop to shut down gracefully. Safe from any thread. */
void sched_request_stop(sched *s);

void sched_fini(sched *s);

/* Builds the status document (JSON text, malloc'd). Loop thread only. */
char *status_json(const sched *s);

#endif /* LMSCHED_LOOP_H */
