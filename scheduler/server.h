/*
 * server - the nng side of the daemon: a REP socket whose contexts each hold
 * one agent request until the scheduler replies, so any number of requests
 * can be outstanding while the socket keeps receiving.
 *
 * Threads: the callbacks in srv_events run on nng's threads with no locks
 * held and must only hand the event over (the scheduler posts it to its
 * inbox). Every other function is called from the loop thread only.
 */
#ifndef LMSCHED_SERVER_H
#define LMSCHED_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include <nng/nng.h>

typedef struct srv srv;
typedef struct srv_ctx srv_ctx;

typedef struct srv_events {
    /* A request arrived on c; the callee owns msg. c now holds the request
     * until srv_reply. */
    void (*request)(void *arg, srv_ctx *c, nng_msg *msg);
    /* c finished its reply (sent or failed) or its receive failed: hand it
     * back with srv_ctx_recycle. */
    void (*idle)(void *arg, srv_ctx *c);
    /* An agent connection closed (its requests can be canceled). */
    void (*pipe_gone)(void *arg, uint32_t pipe_id);
    void *arg;
} srv_events;

/* Opens the REP socket and listens on url. For ipc:// the socket file is
 * made owner-only (0600). Returns 0, or an nng error with errbuf filled. */
int srv_open(srv **sp, const char *url, size_t max_msg, const srv_events *ev, char *errbuf,
             size_t errlen);

/* Keeps a fixed number of contexts waiting for requests. */
void srv_fill(srv *s);

/* The loop thread takes over a context whose request event it is handling
 * (and the server starts another receiver). Call once per request event. */
void srv_take(srv *s, srv_ctx *c);

/* Sends a reply on a taken context (copies buf). Afterwards c comes back
 * through idle.
 * Returns 0 or an nng error (then c is already recycled). */
int srv_reply(srv *s, srv_ctx *c, const void *buf, size_t len);

/* Takes back a context reported idle: it receives again or is freed. */
void srv_ctx_recycle(srv *s, srv_ctx *c);

/* The pipe (agent connection) a context's current request came from. */
uint32_t srv_ctx_pipe(const srv_ctx *c);

/* Contexts waiting to receive, and replies being sent (for status and
 * shutdown). */
unsigned srv_receiving(const srv *s);
unsigned srv_sending(const srv *s);

/* Stops every context, closes the socket, frees everything. Accepts NULL. */
void srv_close(srv *s);

#endif /* LMSCHED_SERVER_H */
