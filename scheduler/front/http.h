/*
 * http - the OpenAI-compatible HTTP front door (docs/openai.md): `POST
 * /v1/chat/completions` (whole or streamed as server-sent events), `GET
 * /v1/models`, `/health` and `/metrics`, served by libmicrohttpd on the
 * same queue, policy, budget and backends as the nng socket. It is a sink
 * of the core like the nng front: each chat request is submitted with
 * itself as the sink, and a client that goes away cancels its request.
 *
 * Threads: libmicrohttpd's threads read requests, translate them
 * (openai_in.c) and post them to the loop; the loop submits them and hands
 * the answers back; a watcher thread notices clients that hang up while
 * their request waits, and closes connections past their header or body
 * deadline. Only the loop touches the scheduler. http_open and http_close
 * run on the main thread, outside sched_run.
 */
#ifndef LMSCHED_FRONT_HTTP_H
#define LMSCHED_FRONT_HTTP_H

#include <stdbool.h>

#include "scheduler/core/config.h"
#include "scheduler/core/sched.h"

typedef struct http_front http_front;

/* Listens on cfg->http with cfg's limits and token and adds itself to s's
 * fronts. Returns 0, or 4 with the reason printed (it cannot listen, or
 * the token file is unusable). */
int http_open(http_front **fp, sched *s, const sched_config *cfg);

/* Whether requests must carry the token (for the start-up log). */
bool http_auth_required(const http_front *f);

/* Stops serving, closes every connection and frees everything. Accepts
 * NULL. Call after sched_run returned, before sched_free. */
void http_close(http_front *f);

#endif /* LMSCHED_FRONT_HTTP_H */
