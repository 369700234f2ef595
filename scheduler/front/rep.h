/*
 * rep - the nng side of the daemon's front door: a REP socket whose
 * contexts each hold one agent request until it is answered, so any number
 * of requests can be outstanding while the socket keeps receiving; and the
 * access control of the listener (socket file mode and group, the access
 * token, the per-connection limit on outstanding requests). It knows
 * nothing of the wire format: agents.c reads the requests and writes the
 * replies.
 *
 * Threads: nng's callbacks only hand a received request to the loop (an
 * event posted to the core) and, once a reply is sent, put the context
 * back to receiving themselves, so the loop is woken once per request.
 * Every function here is called on the loop thread.
 */
#ifndef LMSCHED_FRONT_REP_H
#define LMSCHED_FRONT_REP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "scheduler/core/sched.h"

typedef struct rep rep;
typedef struct rep_ctx rep_ctx;

typedef struct rep_events {
    /* A request arrived on c (loop thread). body[0..len) is valid during
     * the call; c holds the request until rep_reply. */
    void (*request)(void *arg, rep_ctx *c, const void *body, size_t len);
    /* An agent connection closed (loop thread): its requests can be
     * canceled. */
    void (*pipe_gone)(void *arg, uint32_t pipe);
    void *arg;
} rep_events;

/* Longest access token accepted (the protocol's name limit). */
#define REP_TOKEN_MAX 256

/* How the daemon listens; see docs/security.md. The strings are only read
 * during rep_open. */
typedef struct rep_opts {
    const char *url;
    size_t max_msg;              /* nng's receive limit for one message */
    unsigned socket_mode;        /* ipc:// file permissions, e.g. 0600 */
    const char *socket_group;    /* NULL, or a group name or number for the ipc:// file */
    unsigned max_per_conn;       /* outstanding requests per connection; 0: unlimited */
    const char *auth_token_file; /* NULL: requests need no token */
    bool force;                  /* accept a token file others can read */
} rep_opts;

/* Opens the REP socket and listens on o->url; events go to s's loop. An
 * ipc:// socket file gets o->socket_mode (and o->socket_group). With
 * o->auth_token_file the token is read from that file (refused when empty,
 * too long, or readable by group or others without o->force) and every
 * request must carry it. Returns 0, or -1 with errbuf saying why in the
 * user's terms. */
int rep_open(rep **rp, sched *s, const rep_opts *o, const rep_events *ev, char *errbuf,
             size_t errlen);

/* Whether a request on c carrying auth (NULL: none) may be served: always
 * when no token is configured, else when auth equals the token. The
 * comparison takes the same time whatever the two strings hold. A refusal
 * is logged at most once a second, never with either string. */
bool rep_auth_ok(rep *r, const rep_ctx *c, const char *auth);

/* Whether every request must carry a token. */
bool rep_auth_required(const rep *r);

/* Whether c's connection is within max_per_conn outstanding requests
 * (counting c). When false the caller answers c with an error at once. */
bool rep_within_limit(const rep *r, const rep_ctx *c);

/* Sends a reply on c (copies buf); c then receives again. */
void rep_reply(rep_ctx *c, const void *buf, size_t len);

/* The connection (pipe) c's request came from. */
uint32_t rep_ctx_pipe(const rep_ctx *c);
/* A place for the caller's per-request value (agents.c: the request id). */
uint64_t *rep_ctx_user(rep_ctx *c);

/* Replies handed over but not yet sent (for shutdown). Any thread. */
unsigned rep_sending(const rep *r);

/* Stops every context, closes the socket, frees everything. Accepts NULL.
 * No callback runs after it returns. */
void rep_close(rep *r);

#endif /* LMSCHED_FRONT_REP_H */
