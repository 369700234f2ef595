/*
 * rep - nng REP socket with one context per outstanding request, and the
 * daemon's access control: socket file mode and group, the access token,
 * and the per-connection limit on outstanding requests (see rep.h).
 *
 * Design notes: a context goes RECV (waiting for a request) -> POSTED (its
 * request is an event in the core's inbox) -> HELD (the loop has it; the
 * request is being served) -> SEND (the reply is going out) -> RECV again.
 * nng's callback does RECV -> POSTED (posting the context's own embedded
 * event: nothing is allocated per request) and SEND -> RECV (re-arming the
 * receive from the callback, as nng allows for a new operation on the same
 * aio); the loop does the rest. So the loop wakes once per request, and a
 * context is never freed or stopped inside its own callback: contexts live
 * until rep_close. The loop keeps REP_RECEIVERS contexts receiving beyond
 * those it holds, making new ones as requests are taken; the number of
 * contexts is bounded by the requests outstanding at the busiest moment
 * (the queue limit bounds those) plus REP_RECEIVERS.
 *
 * Per-connection limit: a HELD context is counted against its pipe in a
 * small hash table (rep_conn), from the loop taking it until its reply.
 * An entry exists only while its count is non-zero. Loop thread only.
 *
 * Agent connections that close are batched: nng's pipe callback appends
 * the pipe id under a mutex and posts one embedded event if none is
 * pending.
 *
 * The token is read and compared by token.c (shared with the HTTP front):
 * in constant time, so the time taken tells a peer nothing about how much
 * of its guess was right, nor the token's length.
 */
#include "scheduler/front/rep.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/transport/ipc/ipc.h>

#include "scheduler/front/token.h"
#include "scheduler/util/clock.h"
#include "scheduler/util/log.h"

_Static_assert(REP_TOKEN_MAX == TOKEN_MAX, "rep.h and token.h disagree on the token limit");

/* Contexts kept receiving beyond those holding requests. */
#define REP_RECEIVERS 32
/* Buckets of the per-connection table; connections with requests
 * outstanding are few (one per agent process), so chains stay short. */
#define REP_CONN_BUCKETS 256
/* Auth refusals are logged at most this often. */
#define REP_AUTH_LOG_US 1000000
/* Closed connections remembered until the loop takes them. */
#define REP_GONE_MAX 256

enum { REP_RECV = 1, REP_POSTED, REP_HELD, REP_SEND, REP_RECV_ERR };

struct rep_ctx {
    sched_event ev; /* first: the loop's event for this context */
    rep *r;
    nng_ctx ctx;
    nng_aio *aio;
    _Atomic int state;
    nng_msg *msg;   /* the request while POSTED/HELD */
    uint32_t pipe;
    uint64_t user;  /* the caller's (the request id) */
    bool counted;   /* HELD and counted in its pipe's rep_conn */
    rep_ctx *next;  /* every context, for rep_close */
};

/* Requests outstanding on one connection (pipe). */
typedef struct rep_conn {
    uint32_t pipe;
    unsigned held;
    struct rep_conn *next;
} rep_conn;

struct rep {
    sched *s;
    nng_socket sock;
    nng_listener listener;
    rep_events ev;
    atomic_uint receiving; /* contexts in RECV */
    atomic_uint sending;   /* contexts in SEND */
    rep_ctx *all;
    atomic_int closing;
    unsigned max_per_conn;
    rep_conn *conns[REP_CONN_BUCKETS];
    /* Closed connections, handed from nng's pipe callback to the loop. */
    pthread_mutex_t gone_mtx;
    uint32_t gone[REP_GONE_MAX];
    unsigned n_gone;
    bool gone_lost; /* more closed than gone[] held: cancel by a full sweep */
    bool gone_posted;
    sched_event gone_ev;
    token tok; /* the access token, if any (token.h) */
    uint64_t auth_refused;
    uint64_t auth_unlogged; /* refusals since the last log line */
    int64_t auth_logged_us; /* when the last one was logged, 0 never */
};

static void rep_recv(rep *r, rep_ctx *c)
{
    atomic_store(&c->state, REP_RECV);
    c->pipe = 0;
    atomic_fetch_add(&r->receiving, 1);
    nng_ctx_recv(c->ctx, c->aio);
}

/* nng's thread, no lock held. */
static void rep_ctx_cb(void *arg)
{
    rep_ctx *c = arg;
    rep *r = c->r;
    int rv = nng_aio_result(c->aio);
    int state = atomic_load(&c->state);
    if (state == REP_RECV) {
        atomic_fetch_sub(&r->receiving, 1);
        if (rv == 0) {
            c->msg = nng_aio_get_msg(c->aio);
            nng_aio_set_msg(c->aio, NULL);
            c->pipe = nng_pipe_id(nng_msg_get_pipe(c->msg));
            atomic_store(&c->state, REP_POSTED);
            sched_post(r->s, &c->ev);
            return;
        }
        if (rv == NNG_ECLOSED || rv == NNG_ECANCELED || atomic_load(&r->closing))
            return; /* shutting down: rep_close frees it */
        log_warn("receive failed: %s", nng_strerror(rv));
        atomic_store(&c->state, REP_RECV_ERR);
        sched_post(r->s, &c->ev); /* the loop re-arms it */
        return;
    }
    if (state == REP_SEND) {
        if (rv != 0) {
            nng_msg *m = nng_aio_get_msg(c->aio);
            nng_aio_set_msg(c->aio, NULL);
            nng_msg_free(m);
            if (rv != NNG_ECLOSED)
                log_debug("reply not delivered: %s", nng_strerror(rv));
        }
        if (!atomic_load(&r->closing) && rv != NNG_ECLOSED)
            rep_recv(r, c);
        atomic_fetch_sub(&r->sending, 1);
    }
}

static void rep_pipe_cb(nng_pipe p, nng_pipe_ev ev, void *arg)
{
    rep *r = arg;
    if (ev != NNG_PIPE_EV_REM_POST || atomic_load(&r->closing))
        return;
    bool post = false;
    pthread_mutex_lock(&r->gone_mtx);
    if (r->n_gone < REP_GONE_MAX)
        r->gone[r->n_gone++] = nng_pipe_id(p);
    else
        r->gone_lost = true;
    if (!r->gone_posted) {
        r->gone_posted = true;
        post = true;
    }
    pthread_mutex_unlock(&r->gone_mtx);
    if (post)
        sched_post(r->s, &r->gone_ev);
}

static void rep_ctx_free(rep_ctx *c)
{
    if (c->aio != NULL) {
        nng_aio_stop(c->aio);
        nng_msg *m = nng_aio_get_msg(c->aio);
        if (m != NULL)
            nng_msg_free(m);
        nng_aio_free(c->aio);
    }
    if (c->msg != NULL)
        nng_msg_free(c->msg);
    nng_ctx_close(c->ctx);
    free(c);
}

static void rep_on_event(sched *s, sched_event *e);

static rep_ctx *rep_ctx_new(rep *r)
{
    rep_ctx *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->r = r;
    c->ev.run = rep_on_event;
    if (nng_aio_alloc(&c->aio, rep_ctx_cb, c) != 0) {
        free(c);
        return NULL;
    }
    if (nng_ctx_open(&c->ctx, r->sock) != 0) {
        nng_aio_free(c->aio);
        free(c);
        return NULL;
    }
    c->next = r->all;
    r->all = c;
    return c;
}

/* Keeps REP_RECEIVERS contexts receiving (loop thread). */
static void rep_fill(rep *r)
{
    while (!atomic_load(&r->closing) && atomic_load(&r->receiving) < REP_RECEIVERS) {
        rep_ctx *c = rep_ctx_new(r);
        if (c == NULL) {
            log_error("cannot allocate a receive context");
            return;
        }
        rep_recv(r, c);
    }
}

static rep_conn **rep_conn_slot(rep *r, uint32_t pipe)
{
    /* Fibonacci hashing: pipe ids are sequential from a random start. */
    rep_conn **pp = &r->conns[(uint32_t)(pipe * 2654435761u) % REP_CONN_BUCKETS];
    while (*pp != NULL && (*pp)->pipe != pipe)
        pp = &(*pp)->next;
    return pp;
}

/* Counts a context that became HELD against its connection. Returns false
 * when the connection already had max_per_conn outstanding. */
static bool rep_conn_hold(rep *r, rep_ctx *c)
{
    rep_conn **pp = rep_conn_slot(r, c->pipe);
    rep_conn *cn = *pp;
    if (cn == NULL) {
        if ((cn = calloc(1, sizeof(*cn))) == NULL) {
            /* Uncounted: the request is served rather than refused for our
             * own lack of memory. */
            log_error("out of memory counting requests of connection %u", c->pipe);
            return true;
        }
        cn->pipe = c->pipe;
        *pp = cn;
    }
    cn->held++;
    c->counted = true;
    return r->max_per_conn == 0 || cn->held <= r->max_per_conn;
}

/* A context leaves HELD: uncount it. */
static void rep_conn_rele(rep *r, rep_ctx *c)
{
    if (!c->counted)
        return;
    c->counted = false;
    rep_conn **pp = rep_conn_slot(r, c->pipe);
    rep_conn *cn = *pp;
    if (cn == NULL)
        return;
    if (--cn->held == 0) {
        *pp = cn->next;
        free(cn);
    }
}


/* The loop takes a posted request, or re-arms a context whose receive
 * failed. */
static void rep_on_event(sched *s, sched_event *e)
{
    rep_ctx *c = (rep_ctx *)e;
    rep *r = c->r;
    (void)s;
    if (atomic_load(&c->state) == REP_RECV_ERR) {
        rep_recv(r, c);
        return;
    }
    atomic_store(&c->state, REP_HELD);
    rep_conn_hold(r, c);
    rep_fill(r);
    nng_msg *m = c->msg;
    c->msg = NULL;
    r->ev.request(r->ev.arg, c, nng_msg_body(m), nng_msg_len(m));
    nng_msg_free(m);
}

/* The loop takes the connections that closed. */
static void rep_on_gone(sched *s, sched_event *e)
{
    rep *r = (rep *)((char *)e - offsetof(rep, gone_ev));
    uint32_t gone[REP_GONE_MAX];
    (void)s;
    pthread_mutex_lock(&r->gone_mtx);
    unsigned n = r->n_gone;
    bool lost = r->gone_lost;
    memcpy(gone, r->gone, n * sizeof(gone[0]));
    r->n_gone = 0;
    r->gone_lost = false;
    r->gone_posted = false;
    pthread_mutex_unlock(&r->gone_mtx);
    for (unsigned i = 0; i < n; i++)
        r->ev.pipe_gone(r->ev.arg, gone[i]);
    if (lost)
        log_warn("more than %d agent connections closed at once; their requests are "
                 "answered when their replies fail", REP_GONE_MAX);
}

bool rep_within_limit(const rep *r, const rep_ctx *c)
{
    if (r->max_per_conn == 0 || !c->counted)
        return true;
    rep_conn *const *pp = &r->conns[(uint32_t)(c->pipe * 2654435761u) % REP_CONN_BUCKETS];
    while (*pp != NULL && (*pp)->pipe != c->pipe)
        pp = &(*pp)->next;
    return *pp == NULL || (*pp)->held <= r->max_per_conn;
}

/* Gives the ipc:// socket file at path the group (a name or a number) and
 * then its final mode. Until then it was owner-only, so no member of the
 * user's own group could connect in between. */
static int rep_sock_group(const char *path, const char *group, unsigned mode,
                          char *errbuf, size_t errlen)
{
    gid_t gid;
    char *end;
    errno = 0;
    unsigned long num = strtoul(group, &end, 10);
    if (*group != '\0' && *end == '\0' && errno == 0 && num <= (unsigned long)INT32_MAX) {
        gid = (gid_t)num;
    } else {
        errno = 0;
        struct group *gr = getgrnam(group);
        if (gr == NULL) {
            snprintf(errbuf, errlen, "--socket-group %s: no such group%s%s", group,
                     errno ? ": " : "", errno ? strerror(errno) : "");
            return NNG_EINVAL;
        }
        gid = gr->gr_gid;
    }
    if (chown(path, (uid_t)-1, gid) != 0) {
        snprintf(errbuf, errlen, "--socket-group %s: cannot give %s to group %lu: %s%s",
                 group, path, (unsigned long)gid, strerror(errno),
                 errno == EPERM ? " (you must be a member of the group)" : "");
        return NNG_EINVAL;
    }
    if (chmod(path, (mode_t)mode) != 0) {
        snprintf(errbuf, errlen, "--socket-mode %04o: cannot set it on %s: %s", mode,
                 path, strerror(errno));
        return NNG_EINVAL;
    }
    return 0;
}

/* Says in the user's terms why listening on url failed with nng error rv
 * (nng's own words, "Entry not found" or "Address invalid", name no cause
 * a user can act on); the original is logged at debug level. */
static void rep_listen_error(const char *url, int rv, char *errbuf, size_t errlen)
{
    bool ipc = strncmp(url, "ipc://", 6) == 0;
    const char *path = url + 6;
    size_t max_path = sizeof(((struct sockaddr_un *)0)->sun_path) - 1;

    log_debug("listen on %s: nng error %d: %s", url, rv, nng_strerror(rv));
    if (ipc && rv == NNG_EADDRINVAL && strlen(path) > max_path) {
        snprintf(errbuf, errlen,
                 "cannot listen on %s: the socket path is %zu bytes long, and a Unix "
                 "socket path may have at most %zu on this system; choose a shorter one "
                 "(for example under $XDG_RUNTIME_DIR)",
                 url, strlen(path), max_path);
    } else if (ipc && rv == NNG_ENOENT) {
        const char *slash = strrchr(path, '/');
        int dlen = slash != NULL && slash != path ? (int)(slash - path) : 1;
        snprintf(errbuf, errlen,
                 "cannot listen on %s: the directory %.*s does not exist; create it or "
                 "choose another path",
                 url, dlen, slash != NULL ? path : "/");
    } else if (rv == NNG_EPERM) {
        snprintf(errbuf, errlen, "cannot listen on %s: permission denied%s", url,
                 ipc ? " (cannot create the socket file in that directory)" : "");
    } else if (rv == NNG_EADDRINUSE) {
        snprintf(errbuf, errlen,
                 "cannot listen on %s: Address in use: another process listens there "
                 "(is another lmsched serve running?)",
                 url);
    } else if (rv == NNG_EADDRINVAL || rv == NNG_ENOTSUP) {
        snprintf(errbuf, errlen,
                 "cannot listen on %s: not a usable address (expected ipc:///path/to/socket "
                 "or tcp://HOST:PORT)",
                 url);
    } else {
        snprintf(errbuf, errlen, "cannot listen on %s: %s", url, nng_strerror(rv));
    }
}

int rep_open(rep **rp, sched *s, const rep_opts *o, const rep_events *ev, char *errbuf,
             size_t errlen)
{
    rep *r = calloc(1, sizeof(*r));
    bool ipc = strncmp(o->url, "ipc://", 6) == 0;
    int rv;
    if (r == NULL) {
        snprintf(errbuf, errlen, "out of memory");
        return -1;
    }
    r->s = s;
    r->ev = *ev;
    r->max_per_conn = o->max_per_conn;
    r->gone_ev.run = rep_on_gone;
    pthread_mutex_init(&r->gone_mtx, NULL);
    if (o->auth_token_file != NULL &&
        token_load(&r->tok, o->auth_token_file, "--auth-token-file", o->force, errbuf,
                   errlen) != 0) {
        pthread_mutex_destroy(&r->gone_mtx);
        free(r);
        return -1;
    }
    if ((rv = nng_rep0_open(&r->sock)) != 0) {
        snprintf(errbuf, errlen, "cannot open socket: %s", nng_strerror(rv));
        token_wipe(&r->tok);
        pthread_mutex_destroy(&r->gone_mtx);
        free(r);
        return -1;
    }
    nng_socket_set_size(r->sock, NNG_OPT_RECVMAXSZ, o->max_msg);
    nng_pipe_notify(r->sock, NNG_PIPE_EV_REM_POST, rep_pipe_cb, r);
    if ((rv = nng_listener_create(&r->listener, r->sock, o->url)) != 0) {
        rep_listen_error(o->url, rv, errbuf, errlen);
        goto fail;
    }
    if (ipc) {
        /* Owner-only unless asked otherwise: other local users must not
         * submit requests. With a group the file stays owner-only until it
         * belongs to that group (rep_sock_group). */
        unsigned mode =
            o->socket_group != NULL ? (o->socket_mode & 0700) : o->socket_mode;
        if ((rv = nng_listener_set_int(r->listener, NNG_OPT_IPC_PERMISSIONS,
                                       (int)mode)) != 0) {
            snprintf(errbuf, errlen, "cannot set permissions of %s: %s", o->url,
                     nng_strerror(rv));
            goto fail;
        }
    }
    if ((rv = nng_listener_start(r->listener, 0)) != 0) {
        rep_listen_error(o->url, rv, errbuf, errlen);
        goto fail;
    }
    if (ipc && o->socket_group != NULL &&
        rep_sock_group(o->url + 6, o->socket_group, o->socket_mode, errbuf, errlen) != 0)
        goto fail;
    *rp = r;
    rep_fill(r);
    return 0;
fail:
    nng_close(r->sock);
    token_wipe(&r->tok);
    pthread_mutex_destroy(&r->gone_mtx);
    free(r);
    return -1;
}

bool rep_auth_required(const rep *r)
{
    return r->tok.have;
}

bool rep_auth_ok(rep *r, const rep_ctx *c, const char *auth)
{
    if (!r->tok.have)
        return true;
    /* The decoder caps "auth" at REP_TOKEN_MAX bytes; token_equal takes the
     * same time whatever either holds. */
    if (token_equal(&r->tok, auth, auth != NULL ? strnlen(auth, TOKEN_MAX + 1) : 0))
        return true;

    r->auth_refused++;
    r->auth_unlogged++;
    int64_t now = clock_now_us();
    if (r->auth_logged_us == 0 || now - r->auth_logged_us >= REP_AUTH_LOG_US) {
        log_warn("refused a request from connection %u: %s (%" PRIu64
                 " refused since the last such message, %" PRIu64 " in all)",
                 c->pipe, auth == NULL ? "no token" : "wrong token", r->auth_unlogged,
                 r->auth_refused);
        r->auth_logged_us = now;
        r->auth_unlogged = 0;
    }
    return false;
}

void rep_reply(rep_ctx *c, const void *buf, size_t len)
{
    rep *r = c->r;
    nng_msg *m = NULL;
    int rv = nng_msg_alloc(&m, len);
    rep_conn_rele(r, c);
    if (rv != 0) {
        log_error("cannot build a reply: %s", nng_strerror(rv));
        rep_recv(r, c); /* the agent's own timeout answers it */
        return;
    }
    memcpy(nng_msg_body(m), buf, len);
    atomic_fetch_add(&r->sending, 1);
    atomic_store(&c->state, REP_SEND);
    nng_aio_set_msg(c->aio, m);
    nng_ctx_send(c->ctx, c->aio);
}

uint32_t rep_ctx_pipe(const rep_ctx *c)
{
    return c->pipe;
}

uint64_t *rep_ctx_user(rep_ctx *c)
{
    return &c->user;
}

unsigned rep_sending(const rep *r)
{
    return atomic_load(&r->sending);
}

void rep_close(rep *r)
{
    if (r == NULL)
        return;
    atomic_store(&r->closing, 1);
    nng_pipe_notify(r->sock, NNG_PIPE_EV_REM_POST, NULL, NULL);
    /* Stop every aio first (waits for running callbacks), then close. */
    for (rep_ctx *c = r->all; c != NULL; c = c->next)
        nng_aio_stop(c->aio);
    nng_close(r->sock);
    while (r->all != NULL) {
        rep_ctx *c = r->all;
        r->all = c->next;
        rep_ctx_free(c);
    }
    for (size_t i = 0; i < REP_CONN_BUCKETS; i++) {
        while (r->conns[i] != NULL) {
            rep_conn *cn = r->conns[i];
            r->conns[i] = cn->next;
            free(cn);
        }
    }
    pthread_mutex_destroy(&r->gone_mtx);
    token_wipe(&r->tok);
    free(r);
}
