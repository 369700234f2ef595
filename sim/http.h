/*
 * simhttp - lmsim's HTTP server (libmicrohttpd, one thread per connection,
 * or a pool of event-loop threads with --instant; 127.0.0.1 only): routes
 * the OpenAI / LM Studio endpoints and the /sim/ endpoints to the engine and
 * streams tokens as server-sent events as they appear.
 */
#ifndef LMSIM_HTTP_H
#define LMSIM_HTTP_H

#include <stdint.h>

#include "sim/config.h"
#include "sim/engine.h"

/* Largest request body accepted; larger ones get 413. */
#define SIMHTTP_MAX_BODY (8u * 1024u * 1024u)

typedef struct sim_http sim_http;

/* Starts listening on 127.0.0.1:cfg->port (0: a free port) and stores the
 * bound port in *port. cfg and e must outlive the server. The caller owns
 * *out and frees it with simhttp_stop. Returns 0, or -1 after logging. */
int simhttp_start(sim_http **out, const sim_config *cfg, sim_engine *e, uint16_t *port);

/* Closes the listener and every connection, joining their threads; call
 * simeng_stop first so handlers blocked on the engine return. Accepts NULL. */
void simhttp_stop(sim_http *h);

#endif /* LMSIM_HTTP_H */
