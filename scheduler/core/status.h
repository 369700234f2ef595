/*
 * status - what the scheduler is doing, as one snapshot taken on the loop
 * thread, and the status document (docs/status.md) built from it. Every
 * view of the figures (`lmsched status`, the JSON, metrics) is built from a
 * snapshot, so they agree.
 */
#ifndef LMSCHED_CORE_STATUS_H
#define LMSCHED_CORE_STATUS_H

#include <stdbool.h>
#include <stdint.h>

#include "scheduler/core/sched.h"
#include "scheduler/policy/policy.h"

#define STATUS_MAX_GROUPS 64
#define STATUS_ERR_CODES 32

/* Latency histograms since start: upper bounds in milliseconds of each
 * bucket but the last (which has none). */
#define STATUS_HIST_BUCKETS 15
extern const double status_hist_bounds_ms[STATUS_HIST_BUCKETS];

typedef struct status_hist {
    uint64_t counts[STATUS_HIST_BUCKETS + 1]; /* per bucket, not cumulative */
    uint64_t count;
    double sum_ms;
} status_hist;

/* Nearest-rank percentiles of a latency window; have is false when empty. */
typedef struct status_pct {
    bool have;
    double p50, p95;
} status_pct;

typedef struct status_backend {
    const char *url;
    const char *kind;
    bool healthy;
    const char *last_error; /* NULL when healthy */
    const char *model;      /* NULL unknown */
    int64_t context_length; /* -1 unknown */
    int64_t slots;          /* -1 unknown */
    double checked_ago_s;   /* < 0: never checked */
    /* Routing (the core's counts for this backend): */
    unsigned first_slot;    /* its first slot in the policy's numbering */
    unsigned policy_slots;  /* its slots there */
    unsigned inflight;      /* requests running on it */
    uint64_t routed;        /* requests dispatched to it */
    uint64_t completed;     /* answers it gave */
    uint64_t error_outages; /* times taken out for a burst of server errors */
    bool removed;           /* removed from --backends-file (running ones finish) */
    uint64_t total_ram;     /* the RAM its budget uses */
    uint64_t budget_bytes;  /* its KV budget */
    uint64_t reserved_bytes; /* of which reserved by running requests */
    unsigned max_concurrent; /* requests it may run at once */
    uint64_t prompt_tokens, cached_tokens; /* as it reported them */
    int tokenizes;          /* counts tokens: 1 yes, 0 no, -1 not asked yet */
    const char *restore_probe; /* what the restore probe found (probe_restore_name) */
    double restore_share;      /* what it read, < 0 none */
} status_backend;

#define STATUS_MAX_BACKENDS CONFIG_MAX_BACKENDS

typedef struct status_snapshot {
    double uptime_s;
    int pid;
    const char *listen;
    const char *policy;
    status_backend backend;           /* the first backend (backends[0]) */
    status_backend backends[STATUS_MAX_BACKENDS];
    unsigned n_backends;
    struct {
        uint64_t total_bytes;
        double ram_fraction;
        uint64_t model_size_bytes; /* 0 unknown */
        uint64_t kv_per_request_bytes;
        uint64_t budget_bytes;
        unsigned max_concurrent;
        const char *limited_by;
        const char *accounting; /* "per_token", "per_request" */
        uint64_t kv_bytes_per_token;
        const char *kv_source;
        uint64_t reserved_bytes;
    } memory;
    const char *http;                  /* the HTTP front door's address, NULL: off */
    unsigned queue_depth, queue_max, inflight;
    unsigned queue_by_priority[10];    /* queued requests at each priority 0..9 */
    struct {
        uint64_t received, completed, failed, retried, preempted, rejected_busy;
        uint64_t bad_messages, auth_refused, status_requests;
        uint64_t failed_by_code[STATUS_ERR_CODES];
    } requests;
    status_pct queue_wait, ttft, total;
    status_hist queue_wait_hist, ttft_hist;
    uint64_t tokens_prompt, tokens_completion, tokens_cached;
    pol_group_info groups[STATUS_MAX_GROUPS];
    size_t n_groups;
    /* Prompt-token reservations and the exact counts behind them. */
    struct {
        const char *exact_tokens; /* --exact-tokens */
        uint64_t asked, counted, applied, late, failed;
        unsigned waiting;         /* requests not reserved yet (queued, or waiting for memory) */
        unsigned waiting_exact;   /* of which reserve an exact count */
        uint64_t waiting_prompt_tokens; /* their reserved prompt tokens */
        uint64_t answers, exact, under, over, error_tokens;
    } reservation;
    struct {
        double share;     /* the policy's measure (< 0: none yet) */
        unsigned reloads; /* reloads it stands for */
        bool restoring;   /* the backend counts as restoring */
    } restore;
} status_snapshot;

/* Fills out from the scheduler's state. The strings point into the
 * scheduler and are valid until the loop runs again. Loop thread. */
void status_take(sched *s, status_snapshot *out);

/* The status document as compact JSON text (malloc'd), NULL on ENOMEM. */
char *status_json(const status_snapshot *snap);

#endif /* LMSCHED_CORE_STATUS_H */
