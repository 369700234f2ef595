/*
 * agent.c - the client side of lmsched: one nng req0 socket per client, one
 * nng context and aio per request in flight (kept in a per-client pool and
 * reused), the asynchronous calls (lmsched_chat_async, lmsched_chat_start,
 * streamed or not, with their call ids for lmsched_cancel and
 * lmsched_wait), and the blocking calls (lmsched_chat, lmsched_chat_stream,
 * lmsched_status on the caller's thread; lmsched_chat_batch on top of the
 * asynchronous call).
 *
 * Design notes
 *
 * A call (agent_call) goes through two phases on one aio. SEND: the request
 * waits for a connected pipe, at most the connect timeout at a time; when
 * it runs out with no pipe connected the call fails with LMSCHED_ENODAEMON,
 * while with a pipe connected (the daemon is slow to read) it is tried again
 * until the call's own deadline. RECV: the reply is awaited until that
 * deadline. agent_advance decides, after each operation, whether to start
 * the next one or to end the call.
 *
 * Two kinds of call drive that sequence. An asynchronous call's aio has a
 * callback (agent_call_cb), which runs on nng's threads and either starts
 * the next phase or completes the call. A synchronous call (lmsched_chat,
 * lmsched_status) has an aio without a callback, and the caller's own
 * thread starts each operation and waits for it with nng_aio_wait: nng then
 * completes a send that finds a pipe ready before nng_ctx_send returns, and
 * the thread that delivers the reply wakes the caller, with no hop to
 * another thread to run a callback. Such a call needs no hang guard (as
 * lmsched_chat_batch has, AGENT_GUARD_MS): every operation it waits for
 * carries a timeout that ends by the call's deadline, which nng enforces
 * from its own expiry thread. With the pool below, this took a sequential
 * lmsched_chat from about 10.5 voluntary context switches and 38 system
 * calls per request in the agent's process to about 7 and 23 (measured as
 * in docs/benchmarks.md, "Overhead"); what is left is nng's own hand-offs
 * (poller, task threads) and the caller's one sleep.
 *
 * nng's req0 would resend a request whose reply has not come within its
 * resend time (60 s by default), and a chat can wait longer than that in the
 * daemon's queue, so it would run twice. The resend time is set to
 * NNG_DURATION_INFINITE, which nng 1.5 reads as "never" (req0 arms its
 * resend timer only for a positive value). A side effect, from the same
 * code: when the pipe a request went out on closes (the daemon stopped or
 * restarted), req0 does not resend it on the next pipe but fails the receive
 * with NNG_ECONNRESET, which this library reports as LMSCHED_ENODAEMON. A
 * request that had not gone out yet waits for the next connection.
 *
 * Locking: c->mtx guards the client's fields, the list of calls in flight
 * and the pool. Every operation on a call's aio is started while holding
 * it, so close (which sets c->closing and cancels the listed aios under the
 * same lock) either cancels the operation or the next agent_advance sees
 * c->closing; no call slips past close. nng never holds one of its locks
 * while running our callbacks, and finishes an aio from our threads only by
 * dispatching its callback to a task thread (or, for an aio without one, by
 * marking it done), so holding c->mtx across nng_ctx_send/recv/aio_cancel
 * cannot deadlock.
 *
 * Reuse: a finished call goes back to the client's pool (c->idle, one list
 * per kind, at most AGENT_POOL_MAX each) with its context and aio, and the
 * next call of its kind takes it instead of opening a context and
 * allocating an aio. A req0 context can be reused once its exchange is over:
 * the next nng_ctx_send resets it and gets a new request id, so a late
 * reply to the old request is dropped. An aio must not be freed or stopped
 * from its own callback (nng #508, #1138: nng_aio_free waits for the
 * callback, i.e. for itself), and pooling is what keeps agent_call_cb from
 * having to: it returns its call to the pool and touches it no more, even
 * if another thread takes it at once (nng allows a new operation on an aio
 * whose callback is still returning, as when a callback restarts its own
 * aio). Only a call finishing with the pool full is freed from its
 * callback, through nng_aio_reap. c->inflight counts calls that have
 * started and not yet run their user callback (or returned to their
 * caller); close waits for it to reach zero, so every callback has run
 * before close returns, and then frees the pool: nng_aio_free waits for a
 * callback still returning.
 *
 * Streams. A streamed chat is one call over several exchanges on the same
 * context: the chat, then a chat_next after each chat_chunk, until the
 * final chat_reply (docs/protocol.md, Streaming). Each exchange has an id of
 * its own (call->xid); the stream is named by the chat's (call->id, the
 * public call id). When a chunk arrives the thread that waits for the call
 * (nng's, or the caller's for lmsched_chat_stream) runs the delta callback
 * for each piece without holding c->mtx, then, under it, sends the next
 * chat_next unless the call was canceled, the client is closing or the
 * deadline passed. So a call stays listed in c->calls from its start until
 * its outcome is fixed, under c->mtx, in agent_step.
 *
 * Cancellation (lmsched_cancel, or a delta callback returning non-zero)
 * sets call->canceled under c->mtx and aborts the pending operation, if
 * any; the call then ends with LMSCHED_ECANCELED at its next step, whatever
 * arrived meanwhile, so a cancel that found the call always wins and the
 * call completes once. The daemon is told with a `cancel` message, sent as
 * an internal call of its own once the canceled call's outcome is fixed,
 * and only when the chat had gone out (a send that is aborted never reached
 * the daemon). A stream that times out is canceled the same way, so its
 * slot frees at once rather than after the daemon's --stream-timeout.
 *
 * Kept results. A call started with no completion callback
 * (lmsched_chat_start with on_done NULL) keeps its result in an
 * agent_kept record, listed in c->kept from the start (so lmsched_wait can
 * tell "not done yet" from "no such call") until a waiter takes it, or
 * close frees it. Waiters are counted; close waits for them to leave.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <nng/supplemental/util/platform.h>

#include "agentlib/request.h"
#include "lmsched/agent.h"
#include "proto/proto.h"

#define AGENT_CONNECT_TIMEOUT_MS 2000
#define AGENT_RECONNECT_MIN_MS 100
#define AGENT_RECONNECT_MAX_MS 1000
/* nng drops a received message over NNG_OPT_RECVMAXSZ (and closes the
 * pipe); allow the protocol's message limit plus room for nng's header so
 * that every message the decoder could accept gets through. */
#define AGENT_RECV_SLACK (64u * 1024)
/* Longest URL accepted: a Unix socket path is at most ~108 bytes, a tcp://
 * host name at most 253, so this is only a guard. */
#define AGENT_URL_MAX 1024
/* lmsched_chat_batch waits this much past its timeout before giving up on
 * a callback; it only guards against a bug (the library always completes a
 * call by its deadline), never fires in normal operation. */
#define AGENT_GUARD_MS 10000
/* Idle calls (an nng context and aio each) a client keeps for reuse, per
 * kind: enough for every thread of a busy agent, and a bound on what a
 * burst of asynchronous calls leaves behind. */
#define AGENT_POOL_MAX 64
/* A `cancel` message for the daemon gives up after this long: it is only
 * a courtesy (the call it names has completed already). */
#define AGENT_CANCEL_TIMEOUT_MS 5000

typedef struct agent_call agent_call;
typedef struct agent_kept agent_kept;

static void agent_call_free(agent_call *call);

struct lmsched_client {
    nng_socket sock;
    char *url;
    size_t max_msg; /* largest request sent, the daemon's default limit */
    pthread_mutex_t mtx;
    pthread_cond_t idle_cv; /* signalled when inflight drops to 0 */
    /* Guarded by mtx: */
    bool closing;
    int connect_timeout_ms;
    int idle_timeout_ms; /* streams: longest wait for the next pieces; 0: none */
    char *auth;          /* access token sent with each request, or NULL */
    int npipes;          /* pipes between ADD_PRE and REM_POST */
    uint64_t next_id;
    size_t inflight;     /* starting or started calls whose callback has not run */
    agent_call *calls;   /* calls with an operation pending on their aio */
    agent_call *idle[2]; /* the pool: finished calls, by agent_kind */
    size_t nidle[2];
    agent_kept *kept; /* results of calls without a callback, until waited for */
    size_t waiters;   /* threads in lmsched_wait */
};

/* The result of a call started without a completion callback. */
struct agent_kept {
    lmsched_client *c;
    uint64_t id;         /* the call's */
    lmsched_result *res; /* NULL until the call completes */
    bool claimed;        /* a thread waits for it */
    agent_kept *next;    /* c->kept */
};

enum agent_phase { AGENT_SEND = 1, AGENT_RECV = 2 };

/* Who waits for a call: its aio's callback, or the caller's thread. */
enum agent_kind { AGENT_ASYNC = 0, AGENT_SYNC = 1 };

/* How a call ended, before it is turned into a result. */
enum agent_outcome {
    AGENT_GOT_REPLY,
    AGENT_NO_DAEMON,
    AGENT_CONN_LOST,
    AGENT_TIMED_OUT,
    AGENT_CLOSED,
    AGENT_NNG_FAILED,
    AGENT_CANCELED,
};

/* Who canceled a call, for the message. */
enum agent_canceler { AGENT_BY_CALLER = 1, AGENT_BY_CALLBACK = 2 };

struct agent_call {
    lmsched_client *c;
    nng_ctx ctx;
    bool have_ctx;
    nng_aio *aio; /* with agent_call_cb for AGENT_ASYNC, without for AGENT_SYNC */
    enum agent_kind kind;
    enum agent_phase phase;
    lms_kind expect; /* LMS_KIND_CHAT_REPLY, _STATUS_REPLY or _CANCEL_REPLY */
    uint64_t id;     /* the call's: its first message's, the public call id */
    uint64_t xid;    /* the id of the exchange in progress (id, then chat_next's) */
    int timeout_ms;
    nng_time deadline;
    lmsched_chat_cb cb;
    void *arg;
    /* Streams: the delta callback and its argument; the pieces seen. */
    lmsched_delta_cb on_delta;
    void *delta_arg;
    bool stream;
    unsigned chunks; /* chat_chunks received */
    int idle_ms;     /* the client's idle timeout when the call started */
    bool recv_idle;  /* the pending receive waits at most idle_ms */
    bool sent;       /* the chat went out: the daemon may have it */
    bool ended;      /* the final reply or error came: the daemon is done */
    /* Guarded by c->mtx: */
    bool canceled;
    enum agent_canceler canceler;
    /* Allocated up front so the callback always gets a result, even when
     * building the real one runs out of memory; kept while unused. */
    lmsched_result *spare;
    agent_call *prev, *next; /* c->calls while in flight, else c->idle */
};

const char *lmsched_version(void)
{
    return LMSCHED_VERSION;
}

void lmsched_free(void *p)
{
    free(p);
}

/* ---- URLs -------------------------------------------------------------- */

int lmsched_default_url(char *buf, size_t len)
{
    const char *env = getenv("LMSCHED_URL");
    const char *dir = getenv("XDG_RUNTIME_DIR");
    int n;

    if (buf == NULL || len == 0) {
        return buf == NULL ? LMSCHED_EINVAL : LMSCHED_ETOOLARGE;
    }
    /* An empty variable counts as unset, as with most Unix tools, so that
     * "LMSCHED_URL= cmd" does not make every call fail. */
    if (env != NULL && env[0] != '\0') {
        n = snprintf(buf, len, "%s", env);
    } else if (dir != NULL && dir[0] != '\0') {
        n = snprintf(buf, len, "ipc://%s/lmsched.sock", dir);
    } else {
        n = snprintf(buf, len, "ipc:///tmp/lmsched.sock");
    }
    if (n < 0 || (size_t)n >= len) {
        buf[0] = '\0';
        return LMSCHED_ETOOLARGE;
    }
    return LMSCHED_OK;
}

/* ---- client ------------------------------------------------------------ */

/* Wipes and frees a token copy; accepts NULL. */
static void agent_auth_free(char *tok)
{
    if (tok != NULL) {
        explicit_bzero(tok, strlen(tok));
        free(tok);
    }
}

/* Counts pipes so that a send that times out can tell "no daemon" from "a
 * daemon slow to read". ADD_PRE is counted rather than ADD_POST because nng
 * runs REM_POST for every pipe that saw ADD_PRE (including ones rejected
 * afterwards), and may run it before ADD_POST has returned. */
static void agent_pipe_cb(nng_pipe p, nng_pipe_ev ev, void *arg)
{
    lmsched_client *c = arg;

    (void)p;
    pthread_mutex_lock(&c->mtx);
    if (ev == NNG_PIPE_EV_ADD_PRE) {
        c->npipes++;
    } else if (ev == NNG_PIPE_EV_REM_POST) {
        c->npipes--;
    }
    pthread_mutex_unlock(&c->mtx);
}

/* nng errors from open and dial, translated. */
static int agent_nng_err(int rv)
{
    switch (rv) {
    case 0:
        return LMSCHED_OK;
    case NNG_ENOMEM:
        return LMSCHED_ENOMEM;
    case NNG_EADDRINVAL:
    case NNG_EINVAL:
    case NNG_ENOTSUP:
    case NNG_ENOENT:
        return LMSCHED_EINVAL;
    case NNG_ECLOSED:
        return LMSCHED_ECLOSED;
    default:
        return LMSCHED_EINTERNAL;
    }
}

int lmsched_client_open(lmsched_client **clientp, const char *url)
{
    char defurl[AGENT_URL_MAX + 1];
    lmsched_client *c = NULL;
    lms_limits lim;
    bool have_mtx = false, have_cv = false, have_sock = false;
    pthread_condattr_t ca;
    int rc, rv;

    if (clientp == NULL) {
        return LMSCHED_EINVAL;
    }
    *clientp = NULL;
    if (url == NULL) {
        if ((rc = lmsched_default_url(defurl, sizeof(defurl))) != LMSCHED_OK) {
            return LMSCHED_EINVAL;
        }
        url = defurl;
    }
    if (url[0] == '\0' || strlen(url) > AGENT_URL_MAX) {
        return LMSCHED_EINVAL;
    }
    if ((c = calloc(1, sizeof(*c))) == NULL) {
        return LMSCHED_ENOMEM;
    }
    lms_limits_default(&lim);
    c->max_msg = lim.max_msg_bytes;
    c->connect_timeout_ms = AGENT_CONNECT_TIMEOUT_MS;
    if ((c->url = strdup(url)) == NULL) {
        rc = LMSCHED_ENOMEM;
        goto fail;
    }
    /* Checked by the daemon, which names the limit if it is too long. */
    const char *tok = getenv("LMSCHED_AUTH_TOKEN");
    if (tok != NULL && tok[0] != '\0' && (c->auth = strdup(tok)) == NULL) {
        rc = LMSCHED_ENOMEM;
        goto fail;
    }
    if (pthread_mutex_init(&c->mtx, NULL) != 0) {
        rc = LMSCHED_ENOMEM;
        goto fail;
    }
    have_mtx = true;
    if (pthread_condattr_init(&ca) != 0) {
        rc = LMSCHED_ENOMEM;
        goto fail;
    }
    rv = pthread_cond_init(&c->idle_cv, &ca);
    pthread_condattr_destroy(&ca);
    if (rv != 0) {
        rc = LMSCHED_ENOMEM;
        goto fail;
    }
    have_cv = true;

    if ((rv = nng_req0_open(&c->sock)) != 0) {
        rc = agent_nng_err(rv);
        goto fail;
    }
    have_sock = true;
    /* Options are set before the dial so the dialer and every context
     * inherit them. See the design notes for the resend time. */
    rv = nng_socket_set_ms(c->sock, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
    if (rv == 0) {
        rv = nng_socket_set_ms(c->sock, NNG_OPT_RECONNMINT, AGENT_RECONNECT_MIN_MS);
    }
    if (rv == 0) {
        rv = nng_socket_set_ms(c->sock, NNG_OPT_RECONNMAXT, AGENT_RECONNECT_MAX_MS);
    }
    if (rv == 0) {
        rv = nng_socket_set_size(c->sock, NNG_OPT_RECVMAXSZ,
                                 c->max_msg + AGENT_RECV_SLACK);
    }
    if (rv == 0) {
        rv = nng_pipe_notify(c->sock, NNG_PIPE_EV_ADD_PRE, agent_pipe_cb, c);
    }
    if (rv == 0) {
        rv = nng_pipe_notify(c->sock, NNG_PIPE_EV_REM_POST, agent_pipe_cb, c);
    }
    if (rv != 0) {
        rc = agent_nng_err(rv);
        goto fail;
    }
    /* Non-blocking: the dialer keeps retrying in the background, so a
     * client can be opened before the daemon starts. */
    if ((rv = nng_dial(c->sock, c->url, NULL, NNG_FLAG_NONBLOCK)) != 0) {
        rc = agent_nng_err(rv);
        goto fail;
    }
    *clientp = c;
    return LMSCHED_OK;

fail:
    if (have_sock) {
        nng_close(c->sock);
    }
    if (have_cv) {
        pthread_cond_destroy(&c->idle_cv);
    }
    if (have_mtx) {
        pthread_mutex_destroy(&c->mtx);
    }
    agent_auth_free(c->auth);
    free(c->url);
    free(c);
    return rc;
}

int lmsched_client_set_connect_timeout(lmsched_client *c, int ms)
{
    if (c == NULL) {
        return LMSCHED_EINVAL;
    }
    pthread_mutex_lock(&c->mtx);
    c->connect_timeout_ms = ms > 0 ? ms : AGENT_CONNECT_TIMEOUT_MS;
    pthread_mutex_unlock(&c->mtx);
    return LMSCHED_OK;
}

int lmsched_client_set_auth(lmsched_client *c, const char *token)
{
    char *copy = NULL;
    char *old;

    if (c == NULL) {
        return LMSCHED_EINVAL;
    }
    if (token != NULL && token[0] != '\0' && (copy = strdup(token)) == NULL) {
        return LMSCHED_ENOMEM;
    }
    pthread_mutex_lock(&c->mtx);
    old = c->auth;
    c->auth = copy;
    pthread_mutex_unlock(&c->mtx);
    agent_auth_free(old);
    return LMSCHED_OK;
}

int lmsched_client_set_stream_idle_timeout(lmsched_client *c, int ms)
{
    if (c == NULL) {
        return LMSCHED_EINVAL;
    }
    pthread_mutex_lock(&c->mtx);
    c->idle_timeout_ms = ms > 0 ? ms : 0;
    pthread_mutex_unlock(&c->mtx);
    return LMSCHED_OK;
}

void lmsched_client_close(lmsched_client *c)
{
    if (c == NULL) {
        return;
    }
    pthread_mutex_lock(&c->mtx);
    c->closing = true;
    /* Cancelling only dispatches the callbacks; they take c->mtx, which
     * the wait below releases. A stream between two exchanges (its thread
     * in the delta callback) has nothing to cancel: it sees c->closing
     * before its next exchange. */
    for (agent_call *call = c->calls; call != NULL; call = call->next) {
        nng_aio_cancel(call->aio);
    }
    /* Threads in lmsched_wait leave once their call completes. */
    while (c->inflight > 0 || c->waiters > 0) {
        pthread_cond_wait(&c->idle_cv, &c->mtx);
    }
    pthread_mutex_unlock(&c->mtx);

    /* Every call is in the pool now (or freed); a callback that put its
     * call back may still be returning, which nng_aio_free waits for. */
    for (int k = 0; k < 2; k++) {
        while (c->idle[k] != NULL) {
            agent_call *call = c->idle[k];
            c->idle[k] = call->next;
            agent_call_free(call);
        }
        c->nidle[k] = 0;
    }
    /* Results nobody waited for. */
    while (c->kept != NULL) {
        agent_kept *k = c->kept;
        c->kept = k->next;
        lmsched_result_free(k->res);
        free(k);
    }
    /* After nng_close returns no pipe callback can run, so c can go. (In
     * nng 1.5 to 1.8 and from 1.12, nng_close can hang if a reply is being
     * read as the pipe closes: nng #1813; the nng lmsched builds carries
     * the 1.9.0 fix, docs/nng.md.) */
    nng_close(c->sock);
    pthread_cond_destroy(&c->idle_cv);
    pthread_mutex_destroy(&c->mtx);
    agent_auth_free(c->auth);
    free(c->url);
    free(c);
}

/* ---- one call ---------------------------------------------------------- */

static void agent_link(lmsched_client *c, agent_call *call)
{
    call->prev = NULL;
    call->next = c->calls;
    if (c->calls != NULL) {
        c->calls->prev = call;
    }
    c->calls = call;
}

static void agent_unlink(lmsched_client *c, agent_call *call)
{
    if (call->prev != NULL) {
        call->prev->next = call->next;
    } else {
        c->calls = call->next;
    }
    if (call->next != NULL) {
        call->next->prev = call->prev;
    }
    call->prev = call->next = NULL;
}

/* Milliseconds left until the call's deadline (negative when past). */
static int64_t agent_left(const agent_call *call)
{
    return (int64_t)call->deadline - (int64_t)nng_clock();
}

/* Drops one count of c->inflight, waking close at zero. Called with
 * c->mtx held; c may be freed as soon as the caller unlocks. */
static void agent_release(lmsched_client *c)
{
    if (--c->inflight == 0) {
        pthread_cond_broadcast(&c->idle_cv);
    }
}

/* Starts waiting for the reply of the exchange just sent, at most until
 * the deadline, and for a stream's later exchanges at most its idle
 * timeout. Called with c->mtx held. */
static void agent_recv(agent_call *call, int64_t left)
{
    call->phase = AGENT_RECV;
    call->recv_idle =
        call->stream && call->chunks > 0 && call->idle_ms > 0 && call->idle_ms < left;
    nng_aio_set_timeout(call->aio,
                        (nng_duration)(call->recv_idle ? call->idle_ms : left));
    nng_ctx_recv(call->ctx, call->aio);
}

/*
 * Decides what follows the completion of the call's current operation
 * (result rv). Either starts the next operation and returns true, or
 * returns false with *out set. Called with c->mtx held. *msgp is the
 * message the aio held: the request given back after a failed send, which
 * is reused for another attempt (then *msgp becomes NULL), or the reply.
 */
static bool agent_advance(agent_call *call, int rv, nng_msg **msgp,
                          enum agent_outcome *out)
{
    lmsched_client *c = call->c;
    int64_t left = agent_left(call);

    if (call->phase == AGENT_SEND && rv == 0) {
        call->sent = true;
    }
    /* A canceled call ends whatever came meanwhile. */
    if (call->canceled) {
        *out = AGENT_CANCELED;
        return false;
    }
    if (rv == NNG_ECONNRESET) {
        *out = AGENT_CONN_LOST;
        return false;
    }
    if (rv == NNG_ECANCELED || rv == NNG_ECLOSED) {
        *out = c->closing ? AGENT_CLOSED : AGENT_NNG_FAILED;
        return false;
    }
    if (call->phase == AGENT_RECV) {
        /* A reply that made it in is delivered even when closing. */
        if (rv == 0) {
            *out = AGENT_GOT_REPLY;
        } else if (rv == NNG_ETIMEDOUT) {
            *out = AGENT_TIMED_OUT;
        } else {
            *out = AGENT_NNG_FAILED;
        }
        return false;
    }
    if (c->closing) {
        *out = AGENT_CLOSED;
        return false;
    }
    if (rv == 0) {
        if (left <= 0) {
            *out = AGENT_TIMED_OUT;
            return false;
        }
        agent_recv(call, left);
        return true;
    }
    if (rv != NNG_ETIMEDOUT) {
        *out = AGENT_NNG_FAILED;
        return false;
    }
    if (c->npipes == 0) {
        *out = AGENT_NO_DAEMON;
        return false;
    }
    if (left <= 0 || *msgp == NULL) {
        *out = AGENT_TIMED_OUT;
        return false;
    }
    /* Connected but the request was not taken: try again, still within
     * the call's deadline. */
    if (left > c->connect_timeout_ms) {
        left = c->connect_timeout_ms;
    }
    nng_aio_set_timeout(call->aio, (nng_duration)left);
    nng_aio_set_msg(call->aio, *msgp);
    *msgp = NULL;
    nng_ctx_send(call->ctx, call->aio);
    return true;
}

/* The result for a decoded reply m to the exchange in progress: the
 * reply, the daemon's error, or LMSCHED_EPROTO for anything that does not
 * answer it. Takes what it keeps out of m; the caller finis m. */
static lmsched_result *agent_result_msg(const agent_call *call, lms_msg *m)
{
    lmsched_result *res = NULL;
    const char *want = lms_kind_name(call->expect);

    if (m->kind == LMS_KIND_ERROR) {
        const lms_error_reply *e = &m->u.error;
        /* id 0 is what the daemon sends when it could not read ours. */
        if (m->id != call->xid && m->id != 0) {
            res = lma_result_error(LMSCHED_EPROTO,
                                   "error reply id %" PRIu64
                                   " does not match request id %" PRIu64,
                                   m->id, call->xid);
        } else if (e->code == LMSCHED_OK || e->code > INT_MAX) {
            res = lma_result_error(LMSCHED_EPROTO,
                                   "error reply with invalid code %" PRIu32 ": %s",
                                   e->code, e->message);
        } else if (e->field != NULL && strstr(e->message, e->field) == NULL) {
            /* Only when the message does not name the field already (the
             * daemon's decoder messages do: "field 'messages[0].content' ..."). */
            res = lma_result_error((int)e->code, "%s (field: %s)", e->message, e->field);
        } else {
            res = lma_result_error((int)e->code, "%s", e->message);
        }
        if (res != NULL && e->field != NULL &&
            lmsched_result_error(res) == (int)e->code &&
            lma_result_set_field(res, e->field) != 0) {
            lmsched_result_free(res);
            res = NULL;
        }
    } else if (m->kind != call->expect) {
        res = lma_result_error(LMSCHED_EPROTO,
                               "lmsched sent a '%s' reply where '%s' was expected",
                               lms_kind_name(m->kind), want);
    } else if (m->id != call->xid) {
        res = lma_result_error(LMSCHED_EPROTO,
                               "reply id %" PRIu64 " does not match request id %" PRIu64,
                               m->id, call->xid);
    } else if (m->kind == LMS_KIND_CHAT_REPLY) {
        res = lma_result_reply(&m->u.chat_reply);
    } else if (m->kind == LMS_KIND_STATUS_REPLY) {
        res = lma_result_status(&m->u.status_reply.json);
    } else {
        /* cancel_reply: nobody reads it (see agent_send_cancel) */
        res = lma_result_error(LMSCHED_OK, "cancel %s",
                               m->u.cancel_reply.found ? "found" : "not found");
    }
    return res;
}

/* Decodes a reply message into *m (the caller finis it) and returns
 * true; or returns false with *resp the error result (NULL when out of
 * memory: the spare result stands in). */
static bool agent_decode(nng_msg *msg, lms_msg *m, lmsched_result **resp)
{
    lms_decode_err de;

    if (lms_decode(nng_msg_body(msg), nng_msg_len(msg), NULL, m, &de) != LMSCHED_OK) {
        *resp = lma_result_error(LMSCHED_EPROTO, "malformed reply from lmsched: %s",
                                 de.message);
        return false;
    }
    return true;
}

static lmsched_result *agent_result(const agent_call *call, enum agent_outcome out,
                                    int rv, nng_msg *msg)
{
    const char *url = call->c->url;
    lmsched_result *res;
    lms_msg m;

    switch (out) {
    case AGENT_GOT_REPLY:
        if (!agent_decode(msg, &m, &res)) {
            return res;
        }
        res = agent_result_msg(call, &m);
        lms_msg_fini(&m);
        return res;
    case AGENT_NO_DAEMON:
        return lma_result_error(
            LMSCHED_ENODAEMON,
            "lmsched daemon not reachable at %s (is `lmsched serve` running?)", url);
    case AGENT_CONN_LOST:
        return lma_result_error(
            LMSCHED_ENODAEMON,
            "connection to the lmsched daemon at %s was lost before the "
            "reply arrived (daemon stopped or restarted?); the request "
            "may or may not have run",
            url);
    case AGENT_TIMED_OUT:
        if (call->recv_idle) {
            return lma_result_error(LMSCHED_ETIMEDOUT,
                                    "no streamed reply from lmsched within %d ms (the "
                                    "stream's idle timeout); the stream was canceled",
                                    call->idle_ms);
        }
        if (call->stream) {
            return lma_result_error(
                LMSCHED_ETIMEDOUT, "the stream did not end within %d ms; it was canceled",
                call->timeout_ms);
        }
        return lma_result_error(LMSCHED_ETIMEDOUT, "no reply from lmsched within %d ms",
                                call->timeout_ms);
    case AGENT_CLOSED:
        return lma_result_error(LMSCHED_ECLOSED,
                                "client closed before the reply arrived");
    case AGENT_CANCELED:
        return lma_result_error(
            LMSCHED_ECANCELED, "%s",
            call->canceler == AGENT_BY_CALLBACK
                ? "canceled by the delta callback (it returned non-zero)"
                : "canceled by lmsched_cancel");
    case AGENT_NNG_FAILED:
        break;
    }
    if (rv == NNG_ENOMEM) {
        return lma_result_error(LMSCHED_ENOMEM, "out of memory");
    }
    return lma_result_error(LMSCHED_EINTERNAL, "nng: %s", nng_strerror(rv));
}

/* Frees a call that is not in flight (a half-built one too). Not for use
 * from the call's own aio callback (see the design notes). */
static void agent_call_free(agent_call *call)
{
    if (call == NULL) {
        return;
    }
    if (call->aio != NULL) {
        nng_msg_free(nng_aio_get_msg(call->aio));
        nng_aio_free(call->aio);
    }
    if (call->have_ctx) {
        nng_ctx_close(call->ctx);
    }
    lmsched_result_free(call->spare);
    free(call);
}

static void agent_call_cb(void *arg);

/* A new call of the given kind with its context and aio, or NULL with the
 * error in *rcp. */
static agent_call *agent_call_alloc(lmsched_client *c, enum agent_kind kind, int *rcp)
{
    agent_call *call;
    int rv;

    if ((call = calloc(1, sizeof(*call))) == NULL) {
        *rcp = LMSCHED_ENOMEM;
        return NULL;
    }
    call->c = c;
    call->kind = kind;
    rv = nng_aio_alloc(&call->aio, kind == AGENT_ASYNC ? agent_call_cb : NULL, call);
    if (rv == 0 && (rv = nng_ctx_open(&call->ctx, c->sock)) == 0) {
        call->have_ctx = true;
    }
    if (rv != 0) {
        *rcp = agent_nng_err(rv);
        agent_call_free(call);
        return NULL;
    }
    return call;
}

/* Puts a call that is no longer in flight back into the pool, if there is
 * room, and returns true; false leaves it to the caller to free. Called
 * with c->mtx held. */
static bool agent_call_put(lmsched_client *c, agent_call *call)
{
    if (c->nidle[call->kind] >= AGENT_POOL_MAX) {
        return false;
    }
    call->prev = NULL;
    call->next = c->idle[call->kind];
    c->idle[call->kind] = call;
    c->nidle[call->kind]++;
    return true;
}

/* Takes a call of the given kind from the pool, or NULL if it is empty.
 * Called with c->mtx held. */
static agent_call *agent_call_take(lmsched_client *c, enum agent_kind kind)
{
    agent_call *call = c->idle[kind];

    if (call != NULL) {
        c->idle[kind] = call->next;
        c->nidle[kind]--;
        call->next = NULL;
    }
    return call;
}

/* Returns a finished call to the pool, or frees it, and drops its count of
 * c->inflight. Not for use from the call's own aio callback. c may be
 * freed once this returns. */
static void agent_call_done(lmsched_client *c, agent_call *call)
{
    bool kept;

    pthread_mutex_lock(&c->mtx);
    kept = call == NULL || agent_call_put(c, call);
    if (kept) {
        agent_release(c);
    }
    pthread_mutex_unlock(&c->mtx);
    if (!kept) {
        /* Before the release: closing the context needs the socket. */
        agent_call_free(call);
        pthread_mutex_lock(&c->mtx);
        agent_release(c);
        pthread_mutex_unlock(&c->mtx);
    }
}

/* A request to start: the message (its kind and body, views of the
 * caller's strings; id and auth are filled in), who waits for it and how. */
typedef struct agent_spec {
    lms_msg msg;
    lms_kind expect;
    enum agent_kind kind;
    int timeout_ms;
    lmsched_delta_cb on_delta; /* a streamed chat (msg.u.chat.stream is set) */
    void *delta_arg;
    lmsched_chat_cb cb; /* AGENT_ASYNC */
    void *arg;
    agent_kept *kept; /* listed in c->kept under the call's id */
    uint64_t *idp;    /* gets the call's id before it starts, or NULL */
} agent_spec;

static int agent_start(lmsched_client *c, agent_spec *s, agent_call **callp, char *errbuf,
                       size_t errlen);

static void agent_cancel_done_cb(lmsched_result *res, void *arg)
{
    (void)arg;
    lmsched_result_free(res);
}

/* Tells the daemon to cancel the request target of this connection: an
 * internal call of its own whose reply nobody reads. Best effort: a client
 * closing, or a daemon gone, means the request ends anyway (the daemon
 * cancels the requests of a connection that closes). */
static void agent_send_cancel(lmsched_client *c, uint64_t target)
{
    char err[64];
    agent_spec s = {.expect = LMS_KIND_CANCEL_REPLY,
                    .kind = AGENT_ASYNC,
                    .timeout_ms = AGENT_CANCEL_TIMEOUT_MS,
                    .cb = agent_cancel_done_cb};

    lms_msg_init(&s.msg, LMS_KIND_CANCEL);
    s.msg.u.cancel.target = target;
    (void)agent_start(c, &s, NULL, err, sizeof(err));
}

/* Sends the next chat_next of a stream on the call's context. Called with
 * c->mtx held (the token is read under it). Returns 0, or an nng error. */
static int agent_next(agent_call *call)
{
    lmsched_client *c = call->c;
    nng_msg *msg = NULL;
    void *buf = NULL;
    size_t len = 0;
    int64_t left = agent_left(call);
    lms_msg m;
    int rv;

    lms_msg_init(&m, LMS_KIND_CHAT_NEXT);
    m.id = ++c->next_id;
    m.auth = c->auth; /* only read by the encoder; m is not finied */
    m.u.chat_next.stream = call->id;
    if (lms_encode(&m, &buf, &len) != LMSCHED_OK) {
        return NNG_ENOMEM;
    }
    rv = nng_msg_alloc(&msg, len);
    if (rv == 0) {
        memcpy(nng_msg_body(msg), buf, len);
    }
    free(buf);
    if (rv != 0) {
        return rv;
    }
    call->xid = m.id;
    call->phase = AGENT_SEND;
    nng_aio_set_msg(call->aio, msg);
    nng_aio_set_timeout(
        call->aio,
        (nng_duration)(left < c->connect_timeout_ms ? left : c->connect_timeout_ms));
    nng_ctx_send(call->ctx, call->aio);
    return 0;
}

/* Hands deltas to the call's delta callback, in order. Returns true when
 * the callback asked to stop. */
static bool agent_deliver(agent_call *call, const lms_delta *d, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int kind;
        switch (d[i].kind) {
        case LMS_DELTA_CONTENT:
            kind = LMSCHED_DELTA_CONTENT;
            break;
        case LMS_DELTA_REASONING:
            kind = LMSCHED_DELTA_REASONING;
            break;
        case LMS_DELTA_TOOL_CALL:
            kind = LMSCHED_DELTA_TOOL_CALL;
            break;
        default:
            continue;
        }
        if (call->on_delta(kind, d[i].text != NULL ? d[i].text : "",
                           kind == LMSCHED_DELTA_TOOL_CALL ? (int)d[i].index : 0, d[i].id,
                           d[i].name, call->delta_arg) != 0) {
            return true;
        }
    }
    return false;
}

/*
 * Reads one reply of a stream (and frees msg): a chat_chunk of this
 * exchange has its deltas delivered and returns true; anything else ends
 * the stream: the final reply's deltas are delivered and *resp gets the
 * call's result (NULL only when out of memory). *stop tells whether the
 * delta callback asked to stop. Runs without c->mtx, on the thread that
 * waits for the call.
 */
static bool agent_stream_read(agent_call *call, nng_msg *msg, lmsched_result **resp,
                              bool *stop)
{
    lms_msg m;
    bool ok = agent_decode(msg, &m, resp);

    nng_msg_free(msg);
    if (!ok) {
        return false;
    }
    if (m.kind == LMS_KIND_CHAT_CHUNK && m.id == call->xid) {
        call->chunks++;
        *stop = agent_deliver(call, m.u.chat_chunk.deltas, m.u.chat_chunk.n_deltas);
        lms_msg_fini(&m);
        return true;
    }
    if (m.id == call->xid || m.kind == LMS_KIND_ERROR) {
        /* The daemon has ended this stream: nothing to cancel there. */
        call->ended = true;
    }
    if (m.kind == LMS_KIND_CHAT_REPLY && m.id == call->xid) {
        *stop = agent_deliver(call, m.u.chat_reply.deltas, m.u.chat_reply.n_deltas);
    }
    *resp = agent_result_msg(call, &m);
    lms_msg_fini(&m);
    return false;
}

/*
 * Runs after each completed operation of a call (result rv, message msg,
 * which it takes), on the thread that waits for the call: nng's for an
 * asynchronous one, the caller's otherwise. Returns NULL when the call goes
 * on (its next operation has started), or its result once it is over: the
 * call is then unlinked, and the daemon told to cancel what it may still
 * run for a call canceled or a stream timed out. Never returns NULL for an
 * ended call: the spare result stands in when memory runs out.
 */
static lmsched_result *agent_step(agent_call *call, int rv, nng_msg *msg)
{
    lmsched_client *c = call->c;
    lmsched_result *res = NULL;
    enum agent_outcome out;
    bool streamed = false, stop = false, tell;
    uint64_t target;

    pthread_mutex_lock(&c->mtx);
    if (agent_advance(call, rv, &msg, &out)) {
        pthread_mutex_unlock(&c->mtx);
        return NULL;
    }
    if (out == AGENT_GOT_REPLY && call->stream) {
        /* Decoding and the callback run without the lock: they may take
         * long, and the callback may call into the library. */
        pthread_mutex_unlock(&c->mtx);
        bool more = agent_stream_read(call, msg, &res, &stop);
        msg = NULL;
        streamed = true;
        pthread_mutex_lock(&c->mtx);
        if (stop && !call->canceled) {
            call->canceled = true;
            call->canceler = AGENT_BY_CALLBACK;
        }
        if (more) {
            if (call->canceled) {
                out = AGENT_CANCELED;
            } else if (c->closing) {
                out = AGENT_CLOSED;
            } else if (agent_left(call) <= 0) {
                out = AGENT_TIMED_OUT;
            } else if ((rv = agent_next(call)) == 0) {
                pthread_mutex_unlock(&c->mtx);
                return NULL;
            } else {
                out = AGENT_NNG_FAILED;
            }
        }
    }
    /* The outcome is fixed here: a cancel that found the call wins. */
    if (call->canceled) {
        out = AGENT_CANCELED;
    }
    agent_unlink(c, call);
    tell = call->sent && !call->ended &&
           (out == AGENT_CANCELED || (call->stream && out == AGENT_TIMED_OUT));
    target = call->id;
    pthread_mutex_unlock(&c->mtx);

    if (!streamed || out != AGENT_GOT_REPLY) {
        lmsched_result_free(res);
        res = agent_result(call, out, rv, msg);
        nng_msg_free(msg);
    }
    if (res == NULL) {
        res = call->spare;
        call->spare = NULL;
    }
    if (tell) {
        /* Before the caller hears of it, so the slot is on its way to
         * being freed when the caller moves on. */
        agent_send_cancel(c, target);
    }
    return res;
}

static void agent_call_cb(void *arg)
{
    agent_call *call = arg;
    lmsched_client *c = call->c;
    int rv = nng_aio_result(call->aio);
    nng_msg *msg = nng_aio_get_msg(call->aio);
    lmsched_result *res;
    bool kept;

    nng_aio_set_msg(call->aio, NULL);
    if ((res = agent_step(call, rv, msg)) == NULL) {
        return;
    }
    call->cb(res, call->arg);

    pthread_mutex_lock(&c->mtx);
    kept = agent_call_put(c, call);
    if (kept) {
        agent_release(c);
    }
    pthread_mutex_unlock(&c->mtx);
    if (kept) {
        /* The call may be in use on another thread already, and c gone. */
        return;
    }
    /* The pool is full: this call goes, though not with nng_aio_free from
     * its own callback. The context is closed while c (and so the socket)
     * is still held open by our count of c->inflight. */
    nng_ctx_close(call->ctx);
    pthread_mutex_lock(&c->mtx);
    agent_release(c);
    pthread_mutex_unlock(&c->mtx);
    /* c may be gone from here on. */
    lmsched_result_free(call->spare);
    nng_aio_reap(call->aio);
    free(call);
}

/*
 * Starts one call as s describes it. An AGENT_ASYNC call's callback s->cb
 * will run exactly once; an AGENT_SYNC call is returned in *callp for
 * agent_sync_wait. Returns LMSCHED_OK once the first operation has
 * started; otherwise returns the error and writes a message for it to
 * errbuf.
 */
static int agent_start(lmsched_client *c, agent_spec *s, agent_call **callp, char *errbuf,
                       size_t errlen)
{
    agent_call *call = NULL;
    nng_msg *msg = NULL;
    void *buf = NULL;
    size_t len = 0;
    char *auth = NULL;
    bool linked_kept = false;
    uint64_t id;
    int timeout_ms = s->timeout_ms, idle_ms;
    int rc, rv;

    snprintf(errbuf, errlen, "invalid argument");
    if (s->idp != NULL) {
        *s->idp = 0;
    }
    if (c == NULL || (s->kind == AGENT_ASYNC && s->cb == NULL)) {
        return LMSCHED_EINVAL;
    }
    if (s->msg.kind == LMS_KIND_CHAT && s->msg.u.chat.n_messages == 0) {
        snprintf(errbuf, errlen, "the request has no messages");
        return LMSCHED_EINVAL;
    }
    if (timeout_ms <= 0) {
        timeout_ms = LMSCHED_DEFAULT_TIMEOUT_MS;
    }

    /* Counted from here so that a close running meanwhile waits for us. */
    pthread_mutex_lock(&c->mtx);
    if (c->closing) {
        pthread_mutex_unlock(&c->mtx);
        snprintf(errbuf, errlen, "client is closed");
        return LMSCHED_ECLOSED;
    }
    c->inflight++;
    call = agent_call_take(c, s->kind);
    id = ++c->next_id;
    if (s->kept != NULL) {
        s->kept->id = id;
        s->kept->next = c->kept;
        c->kept = s->kept;
        linked_kept = true;
    }
    /* A copy, so lmsched_client_set_auth on another thread cannot free it
     * under the encoder. */
    if (c->auth != NULL && (auth = strdup(c->auth)) == NULL) {
        pthread_mutex_unlock(&c->mtx);
        rc = LMSCHED_ENOMEM;
        goto fail;
    }
    idle_ms = c->idle_timeout_ms;
    pthread_mutex_unlock(&c->mtx);

    if (call == NULL && (call = agent_call_alloc(c, s->kind, &rc)) == NULL) {
        goto fail;
    }
    if (call->spare == NULL) {
        call->spare =
            lma_result_error(LMSCHED_ENOMEM, "out of memory while reading the reply");
        if (call->spare == NULL) {
            rc = LMSCHED_ENOMEM;
            goto fail;
        }
    }
    call->cb = s->cb;
    call->arg = s->arg;
    call->on_delta = s->on_delta;
    call->delta_arg = s->delta_arg;
    call->stream = s->on_delta != NULL;
    call->chunks = 0;
    call->idle_ms = idle_ms;
    call->recv_idle = false;
    call->sent = false;
    call->ended = false;
    call->canceled = false;
    call->canceler = 0;
    call->timeout_ms = timeout_ms;
    call->expect = s->expect;
    call->id = id;
    call->xid = id;

    s->msg.id = id;
    s->msg.auth = auth;
    if (s->msg.kind == LMS_KIND_CHAT && s->msg.u.chat.system == NULL) {
        s->msg.u.chat.system = (char *)"";
    }
    rc = lms_encode(&s->msg, &buf, &len);
    s->msg.auth = NULL;
    if (rc != LMSCHED_OK) {
        goto fail;
    }
    /* Over the daemon's limit it would only come back as an error, and far
     * over nng's receive limit the daemon would drop the connection. */
    if (len > c->max_msg) {
        snprintf(errbuf, errlen, "request is %zu bytes, over the %zu byte message limit",
                 len, c->max_msg);
        rc = LMSCHED_ETOOLARGE;
        goto fail;
    }
    if ((rv = nng_msg_alloc(&msg, len)) != 0) {
        rc = agent_nng_err(rv);
        goto fail;
    }
    memcpy(nng_msg_body(msg), buf, len);
    free(buf);
    buf = NULL;
    agent_auth_free(auth);
    auth = NULL;
    nng_aio_set_msg(call->aio, msg);
    msg = NULL;

    pthread_mutex_lock(&c->mtx);
    if (c->closing) {
        pthread_mutex_unlock(&c->mtx);
        rc = LMSCHED_ECLOSED;
        goto fail;
    }
    call->phase = AGENT_SEND;
    call->deadline = nng_clock() + (nng_time)timeout_ms;
    /* The first attempt waits for a connection at most the connect
     * timeout (see agent_advance for what follows). */
    nng_aio_set_timeout(call->aio, timeout_ms < c->connect_timeout_ms
                                       ? timeout_ms
                                       : c->connect_timeout_ms);
    agent_link(c, call);
    /* Before the send: a callback may run before we return. */
    if (s->idp != NULL) {
        *s->idp = id;
    }
    nng_ctx_send(call->ctx, call->aio);
    pthread_mutex_unlock(&c->mtx);
    if (callp != NULL) {
        *callp = call;
    }
    return LMSCHED_OK;

fail:
    switch (rc) {
    case LMSCHED_ENOMEM:
        snprintf(errbuf, errlen, "out of memory");
        break;
    case LMSCHED_ECLOSED:
        snprintf(errbuf, errlen, "client is closed");
        break;
    case LMSCHED_ETOOLARGE:
        break;
    default:
        snprintf(errbuf, errlen, "could not start the request: %s", lmsched_strerror(rc));
        break;
    }
    nng_msg_free(msg);
    free(buf);
    agent_auth_free(auth);
    if (linked_kept) {
        pthread_mutex_lock(&c->mtx);
        for (agent_kept **kp = &c->kept; *kp != NULL; kp = &(*kp)->next) {
            if (*kp == s->kept) {
                *kp = s->kept->next;
                break;
            }
        }
        pthread_mutex_unlock(&c->mtx);
    }
    if (call != NULL) {
        nng_msg_free(nng_aio_get_msg(call->aio));
        nng_aio_set_msg(call->aio, NULL);
    }
    agent_call_done(c, call);
    return rc;
}

/*
 * Waits on the caller's thread for a call started as AGENT_SYNC, running
 * its steps as agent_call_cb does for an asynchronous one, and returns its
 * result (never NULL: the spare result stands in). Every wait is bounded:
 * each operation is started with a timeout that ends by the call's
 * deadline.
 */
static lmsched_result *agent_sync_wait(agent_call *call)
{
    lmsched_client *c = call->c;
    lmsched_result *res;

    do {
        nng_aio_wait(call->aio);
        int rv = nng_aio_result(call->aio);
        nng_msg *msg = nng_aio_get_msg(call->aio);
        nng_aio_set_msg(call->aio, NULL);
        res = agent_step(call, rv, msg);
    } while (res == NULL);
    agent_call_done(c, call);
    return res;
}

/* The wire chat of a request, as a view: streamed when stream is set. */
static void agent_chat_msg(lms_msg *m, const lmsched_request *req, bool stream)
{
    lms_msg_init(m, LMS_KIND_CHAT);
    /* A shallow copy: lms_encode only reads it, and it is not finied. */
    m->u.chat = *lma_request_chat(req);
    m->u.chat.stream = stream;
}

int lmsched_chat_async(lmsched_client *c, const lmsched_request *req, int timeout_ms,
                       lmsched_chat_cb cb, void *arg)
{
    char err[128];
    agent_spec s = {.expect = LMS_KIND_CHAT_REPLY,
                    .kind = AGENT_ASYNC,
                    .timeout_ms = timeout_ms,
                    .cb = cb,
                    .arg = arg};

    if (req == NULL) {
        return LMSCHED_EINVAL;
    }
    agent_chat_msg(&s.msg, req, false);
    return agent_start(c, &s, NULL, err, sizeof(err));
}

/* ---- call ids: start, wait, cancel ------------------------------------ */

/* The completion callback of a call started without one: the result is
 * kept for lmsched_wait. */
static void agent_kept_cb(lmsched_result *res, void *arg)
{
    agent_kept *k = arg;
    lmsched_client *c = k->c;

    pthread_mutex_lock(&c->mtx);
    k->res = res;
    pthread_cond_broadcast(&c->idle_cv);
    pthread_mutex_unlock(&c->mtx);
}

int lmsched_chat_start(lmsched_client *c, const lmsched_request *req, int timeout_ms,
                       lmsched_delta_cb on_delta, lmsched_chat_cb on_done, void *arg,
                       uint64_t *idp)
{
    char err[128];
    agent_kept *k = NULL;
    agent_spec s = {.expect = LMS_KIND_CHAT_REPLY,
                    .kind = AGENT_ASYNC,
                    .timeout_ms = timeout_ms,
                    .on_delta = on_delta,
                    .delta_arg = arg,
                    .cb = on_done,
                    .arg = arg,
                    .idp = idp};
    int rc;

    if (idp != NULL) {
        *idp = 0;
    }
    if (c == NULL || req == NULL) {
        return LMSCHED_EINVAL;
    }
    if (on_done == NULL) {
        if ((k = calloc(1, sizeof(*k))) == NULL) {
            return LMSCHED_ENOMEM;
        }
        k->c = c;
        s.cb = agent_kept_cb;
        s.arg = k;
        s.kept = k;
    }
    agent_chat_msg(&s.msg, req, on_delta != NULL);
    rc = agent_start(c, &s, NULL, err, sizeof(err));
    if (rc != LMSCHED_OK) {
        free(k); /* agent_start unlisted it */
    }
    return rc;
}

int lmsched_wait(lmsched_client *c, uint64_t id, lmsched_result **resp)
{
    agent_kept *k, **kp;

    if (resp != NULL) {
        *resp = NULL;
    }
    if (c == NULL || resp == NULL) {
        return LMSCHED_EINVAL;
    }
    pthread_mutex_lock(&c->mtx);
    for (k = c->kept; k != NULL && (k->id != id || k->claimed); k = k->next) {
    }
    if (k == NULL) {
        pthread_mutex_unlock(&c->mtx);
        return LMSCHED_EINVAL;
    }
    k->claimed = true;
    c->waiters++;
    /* The call completes by its deadline, or when close cancels it. */
    while (k->res == NULL) {
        pthread_cond_wait(&c->idle_cv, &c->mtx);
    }
    for (kp = &c->kept; *kp != k; kp = &(*kp)->next) {
    }
    *kp = k->next;
    if (--c->waiters == 0 && c->closing) {
        pthread_cond_broadcast(&c->idle_cv);
    }
    pthread_mutex_unlock(&c->mtx);
    *resp = k->res;
    free(k);
    return lmsched_result_error(*resp);
}

int lmsched_cancel(lmsched_client *c, uint64_t id)
{
    agent_call *call;

    if (c == NULL || id == 0) {
        return LMSCHED_EINVAL;
    }
    pthread_mutex_lock(&c->mtx);
    if (c->closing) {
        pthread_mutex_unlock(&c->mtx);
        return LMSCHED_ECLOSED;
    }
    for (call = c->calls; call != NULL; call = call->next) {
        if (call->id == id && call->expect == LMS_KIND_CHAT_REPLY) {
            break;
        }
    }
    if (call == NULL) {
        pthread_mutex_unlock(&c->mtx);
        return LMSCHED_EINVAL;
    }
    if (!call->canceled) {
        call->canceled = true;
        call->canceler = AGENT_BY_CALLER;
        /* Ends the pending operation, if any (a stream whose thread is in
         * its delta callback has none: it sees the flag next). The daemon
         * is told once the call's outcome is fixed (agent_step). */
        nng_aio_cancel(call->aio);
    }
    pthread_mutex_unlock(&c->mtx);
    return LMSCHED_OK;
}

/* ---- waiting for calls ------------------------------------------------- */

/*
 * A group of asynchronous calls the caller's thread waits for
 * (lmsched_chat_batch). It is shared with the callbacks and reference
 * counted: should the hang guard ever fire, the caller leaves and the last
 * callback frees it.
 */
typedef struct agent_wait agent_wait;

typedef struct agent_slot {
    agent_wait *w;
    size_t i;
} agent_slot;

struct agent_wait {
    pthread_mutex_t mtx;
    pthread_cond_t cv; /* on CLOCK_MONOTONIC */
    size_t refs;       /* the caller + one per started call */
    size_t pending;    /* started calls whose callback has not run */
    bool abandoned;    /* the caller left; callbacks free their results */
    size_t n;
    lmsched_result **results;
    agent_slot *slots;
};

static void agent_wait_free(agent_wait *w)
{
    if (w == NULL) {
        return;
    }
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mtx);
    free(w->results);
    free(w->slots);
    free(w);
}

static agent_wait *agent_wait_alloc(size_t n)
{
    agent_wait *w;
    pthread_condattr_t ca;
    bool have_mtx = false;

    if ((w = calloc(1, sizeof(*w))) == NULL) {
        return NULL;
    }
    w->n = n;
    w->refs = 1;
    if ((w->results = calloc(n, sizeof(*w->results))) == NULL ||
        (w->slots = calloc(n, sizeof(*w->slots))) == NULL) {
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        w->slots[i].w = w;
        w->slots[i].i = i;
    }
    if (pthread_mutex_init(&w->mtx, NULL) != 0) {
        goto fail;
    }
    have_mtx = true;
    if (pthread_condattr_init(&ca) != 0) {
        goto fail;
    }
    /* Monotonic, so a change of the wall clock cannot fire the guard. */
    if (pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) != 0 ||
        pthread_cond_init(&w->cv, &ca) != 0) {
        pthread_condattr_destroy(&ca);
        goto fail;
    }
    pthread_condattr_destroy(&ca);
    return w;

fail:
    if (have_mtx) {
        pthread_mutex_destroy(&w->mtx);
    }
    free(w->results);
    free(w->slots);
    free(w);
    return NULL;
}

static void agent_wait_cb(lmsched_result *res, void *arg)
{
    agent_slot *slot = arg;
    agent_wait *w = slot->w;
    bool last;

    pthread_mutex_lock(&w->mtx);
    if (w->abandoned) {
        lmsched_result_free(res);
    } else {
        w->results[slot->i] = res;
    }
    if (--w->pending == 0) {
        pthread_cond_signal(&w->cv);
    }
    last = --w->refs == 0;
    pthread_mutex_unlock(&w->mtx);
    if (last) {
        agent_wait_free(w);
    }
}

/* Starts call i of w; on failure stores an error result for it (unless out
 * of memory) and returns the error. */
static int agent_wait_start(agent_wait *w, size_t i, lmsched_client *c,
                            const lmsched_request *req, int timeout_ms)
{
    char err[192];
    agent_spec s = {.expect = LMS_KIND_CHAT_REPLY,
                    .kind = AGENT_ASYNC,
                    .timeout_ms = timeout_ms,
                    .cb = agent_wait_cb,
                    .arg = &w->slots[i]};
    int rc;

    agent_chat_msg(&s.msg, req, false);
    pthread_mutex_lock(&w->mtx);
    w->refs++;
    w->pending++;
    pthread_mutex_unlock(&w->mtx);
    rc = agent_start(c, &s, NULL, err, sizeof(err));
    if (rc != LMSCHED_OK) {
        pthread_mutex_lock(&w->mtx);
        w->refs--;
        w->pending--;
        w->results[i] = lma_result_error(rc, "%s", err);
        pthread_mutex_unlock(&w->mtx);
    }
    return rc;
}

/*
 * Waits until every started call of w has completed, moves the results to
 * out[0..n) and releases the caller's reference (w may be freed). The hang
 * guard fills in whatever is still missing at timeout_ms + AGENT_GUARD_MS.
 */
static void agent_wait_finish(agent_wait *w, int timeout_ms, lmsched_result **out)
{
    struct timespec until;
    int64_t ms = (int64_t)timeout_ms + AGENT_GUARD_MS;
    bool last;

    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += (time_t)(ms / 1000);
    until.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&w->mtx);
    while (w->pending > 0) {
        if (pthread_cond_timedwait(&w->cv, &w->mtx, &until) == ETIMEDOUT) {
            break;
        }
    }
    if (w->pending > 0) {
        w->abandoned = true;
    }
    for (size_t i = 0; i < w->n; i++) {
        out[i] = w->results[i];
        w->results[i] = NULL;
        /* Only a call whose callback never ran is missing here, or one
         * that could not start for lack of memory. */
        if (out[i] == NULL && w->abandoned) {
            out[i] = lma_result_error(
                LMSCHED_ETIMEDOUT, "no reply from lmsched within %d ms (gave up waiting)",
                timeout_ms);
        }
    }
    last = --w->refs == 0;
    pthread_mutex_unlock(&w->mtx);
    if (last) {
        agent_wait_free(w);
    }
}

/* The common body of lmsched_chat, lmsched_chat_stream and
 * lmsched_status: one call, run on the caller's thread. Returns its code;
 * *resp gets the result except for EINVAL/ENOMEM failures to start. */
static int agent_call_sync(lmsched_client *c, agent_spec *s, lmsched_result **resp)
{
    char err[192];
    agent_call *call = NULL;
    int rc;

    s->kind = AGENT_SYNC;
    rc = agent_start(c, s, &call, err, sizeof(err));
    if (rc == LMSCHED_EINVAL || rc == LMSCHED_ENOMEM) {
        /* agent.h promises no result for these two. */
        *resp = NULL;
        return rc;
    }
    if (rc != LMSCHED_OK) {
        *resp = lma_result_error(rc, "%s", err);
    } else {
        *resp = agent_sync_wait(call);
    }
    return *resp != NULL ? lmsched_result_error(*resp) : LMSCHED_ENOMEM;
}

int lmsched_chat(lmsched_client *c, const lmsched_request *req, int timeout_ms,
                 lmsched_result **resp)
{
    if (resp == NULL) {
        return LMSCHED_EINVAL;
    }
    *resp = NULL;
    if (c == NULL || req == NULL) {
        return LMSCHED_EINVAL;
    }
    agent_spec s = {.expect = LMS_KIND_CHAT_REPLY, .timeout_ms = timeout_ms};
    agent_chat_msg(&s.msg, req, false);
    return agent_call_sync(c, &s, resp);
}

int lmsched_chat_stream(lmsched_client *c, const lmsched_request *req, int timeout_ms,
                        lmsched_delta_cb on_delta, void *arg, lmsched_result **resp)
{
    if (resp == NULL) {
        return LMSCHED_EINVAL;
    }
    *resp = NULL;
    if (c == NULL || req == NULL || on_delta == NULL) {
        return LMSCHED_EINVAL;
    }
    agent_spec s = {.expect = LMS_KIND_CHAT_REPLY,
                    .timeout_ms = timeout_ms,
                    .on_delta = on_delta,
                    .delta_arg = arg};
    agent_chat_msg(&s.msg, req, true);
    return agent_call_sync(c, &s, resp);
}

int lmsched_chat_batch(lmsched_client *c, const lmsched_request *const *reqs, size_t n,
                       int timeout_ms, lmsched_result **results)
{
    agent_wait *w;
    size_t started = 0;
    int first_err = LMSCHED_OK;

    if (c == NULL || (n > 0 && (reqs == NULL || results == NULL))) {
        return LMSCHED_EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        results[i] = NULL;
    }
    if (n == 0) {
        return LMSCHED_OK;
    }
    if (timeout_ms <= 0) {
        timeout_ms = LMSCHED_DEFAULT_TIMEOUT_MS;
    }
    if ((w = agent_wait_alloc(n)) == NULL) {
        return LMSCHED_ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        int rc;
        if (reqs[i] == NULL) {
            rc = LMSCHED_EINVAL;
            w->results[i] = lma_result_error(rc, "request %zu is NULL", i);
        } else {
            rc = agent_wait_start(w, i, c, reqs[i], timeout_ms);
        }
        if (rc == LMSCHED_OK) {
            started++;
        } else if (first_err == LMSCHED_OK) {
            first_err = rc;
        }
    }
    agent_wait_finish(w, timeout_ms, results);
    if (started == 0) {
        /* Nothing went out: report it as the batch's failure, with no
         * results to free. */
        for (size_t i = 0; i < n; i++) {
            lmsched_result_free(results[i]);
            results[i] = NULL;
        }
        return first_err;
    }
    return LMSCHED_OK;
}

int lmsched_status(lmsched_client *c, int timeout_ms, char **jsonp, char **errmsg)
{
    lmsched_result *res = NULL;
    int rc;

    if (errmsg != NULL) {
        *errmsg = NULL;
    }
    if (jsonp == NULL) {
        return LMSCHED_EINVAL;
    }
    *jsonp = NULL;
    if (c == NULL) {
        return LMSCHED_EINVAL;
    }
    agent_spec s = {.expect = LMS_KIND_STATUS_REPLY, .timeout_ms = timeout_ms};
    lms_msg_init(&s.msg, LMS_KIND_STATUS);
    rc = agent_call_sync(c, &s, &res);
    if (rc == LMSCHED_OK) {
        *jsonp = lma_result_take_status(res);
        if (*jsonp == NULL) {
            rc = LMSCHED_EPROTO;
        }
    } else if (errmsg != NULL && lmsched_result_message(res) != NULL) {
        *errmsg = strdup(lmsched_result_message(res));
    }
    lmsched_result_free(res);
    return rc;
}
