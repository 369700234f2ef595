/*
 * metrics - the status snapshot (core/status.h) in the Prometheus text
 * exposition format, for GET /metrics: the same figures as `lmsched
 * status`, from the same snapshot, plus the HTTP front door's own
 * (docs/status.md, "Metrics").
 *
 * Pure: no I/O; the caller takes the snapshot on the loop thread.
 */
#ifndef LMSCHED_FRONT_METRICS_H
#define LMSCHED_FRONT_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "scheduler/core/status.h"

/* Prefix groups exported per series at most (the most recently active). */
#define METRICS_MAX_GROUPS 32

/* The HTTP front door's own figures. */
typedef struct metrics_http {
    unsigned connections;       /* open now */
    uint64_t connections_total; /* accepted since start */
    uint64_t timeouts;          /* closed by --http-header-timeout/--http-body-timeout */
    uint64_t disconnects;       /* requests whose client went away before the answer */
    uint64_t responses[6];      /* answers by status class: [1] 1xx ... [5] 5xx */
} metrics_http;

/* The exposition text (malloc'd, *len its length), NULL on ENOMEM. h may
 * be NULL. */
char *metrics_text(const status_snapshot *s, const metrics_http *h, size_t *len);

#endif /* LMSCHED_FRONT_METRICS_H */
