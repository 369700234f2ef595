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

#include <stdbool.h>
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

/* Longest access token accepted (the protocol's name limit). */
#define SRV_TOKEN_MAX 256

/* How the daemon listens; see docs/security.md. The strings are only read
 * during srv_open. */
typedef struct srv_opts {
    const char *url;
    size_t max_msg;              /* nng's receive limit for one message */
    unsigned socket_mode;        /* ipc:// file permissions, e.g. 0600 */
    const char *socket_group;    /* NULL, or a group name or number for the ipc:// file */
    unsigned max_per_conn;       /* outstanding requests per connection; 0: unlimited */
    const char *auth_token_file; /* NULL: requests need no token */
    bool force;                  /* accept a token file others can read */
} srv_opts;

/* Opens the REP socket and listens on o->url. An ipc:// socket file gets
 * o->socket_mode (and o->socket_group). With o->auth_token_file the token
 * is read from that file (refused when empty, too long, or readable by
 * group or others without o->force) and every request must carry it.
 * Returns 0, or an nng error (NNG_EINVAL for a bad token file or group)
 * with errbuf filled. */
int srv_open(srv **sp, const srv_opts *o, const srv_events *ev, char *errbuf,
             size_t errlen);

/* Keeps a fixed number of contexts waiting for requests. */
void srv_fill(srv *s);

/* The loop thread takes over a context whose request event it is handling
 * (and the server starts another receiver). Call once per request event.
 * Returns false when the request's connection already has max_per_conn
 * requests outstanding: the caller must answer this one with an error at
 * once (it is counted until then, like any other). */
bool srv_take(srv *s, srv_ctx *c);

/* Whether a request on c carrying auth (NULL: none) may be served: always
 * when no token is configured, else when auth equals the token. The comparison
 * takes the same time whatever the two strings hold. A refusal is counted
 * and logged at most once a second, never with either string. */
bool srv_auth_ok(srv *s, const srv_ctx *c, const char *auth);

/* Whether every request must carry a token. */
bool srv_auth_required(const srv *s);

/* Requests refused for a missing or wrong token, and for too many
 * outstanding on one connection (for status). */
uint64_t srv_auth_refused(const srv *s);
uint64_t srv_conn_refused(const srv *s);

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
