/*
 * http - the OpenAI-compatible HTTP front door on libmicrohttpd (see
 * http.h, docs/openai.md and docs/security.md).
 *
 * Design notes
 * - Threads. libmicrohttpd (MHD) runs its own polling threads. Its
 *   callbacks only read the request, translate it (openai_in.c, on MHD's
 *   thread: a 4 MiB prompt is parsed off the loop) and post the request's
 *   embedded event to the core, then suspend the connection. The loop runs
 *   the event (submits the chat with this front as its sink, or builds the
 *   models, health or metrics answer from a status snapshot); the sink's
 *   calls put the answer's bytes into the request under f->mtx and resume
 *   the connection (MHD_resume_connection is safe from any thread). MHD's
 *   thread then queues the answer: a whole JSON body, or a server-sent
 *   event stream whose content reader hands out the bytes there are and
 *   suspends the connection when there are none. The loop never calls MHD
 *   but to resume; MHD's threads never call the core but to post.
 * - A stream's pieces wake their connection at the start of the loop's
 *   next turn (one posted flush event for all of them), not one by one: a
 *   turn's pieces, and an answer's end in the same turn, then reach MHD in
 *   one wake-up and one write. An answer complete by the time MHD sends it
 *   goes whole, with its length, even when it is an event stream.
 * - One lock, f->mtx, guards what both sides see: the connections, each
 *   request's answer buffer and flags, the counters. It is held while
 *   suspending (MHD's thread) and resuming (the loop), so a connection is
 *   resumed only while it really is suspended, as MHD requires. No MHD call
 *   that can call back into this file is made with it held.
 * - A request (hf_req) is shared: MHD holds it from the headers to its
 *   completion callback, each posted event until it ran, the core while it
 *   is a job. A count of those references under f->mtx frees it when the
 *   last goes, whichever side that is.
 * - A client that hangs up. While its connection is suspended MHD does not
 *   read it, so it would not notice; the watcher thread polls the sockets
 *   of suspended connections (every HF_WATCH_MS) and a hang-up posts the
 *   request's "gone" event: the loop cancels the job, as the nng front does
 *   for an agent that vanished. A hang-up MHD sees itself (a stream being
 *   written) ends the request in its completion callback, with the same
 *   event. A socket with more bytes waiting (a pipelined request) is not
 *   peeked at further: it cannot be told from a hang-up without reading.
 * - Slow clients hold nothing for long. MHD bounds the header memory, the
 *   connections and idle time; the watcher also closes (shutdown(2)) a
 *   connection whose request line and headers are not complete within
 *   --http-header-timeout of its opening or of its previous answer, or
 *   whose body is not complete within --http-body-timeout of the headers:
 *   a trickle of one byte a second resets MHD's idle timer but not these.
 *   shutdown on the descriptor only wakes MHD, which closes and frees the
 *   connection itself; the descriptor is valid because a connection leaves
 *   the watched list (under f->mtx) in MHD's close notification, before
 *   MHD closes it.
 * - Requests MHD accepts but HTTP leaves ambiguous are refused before the
 *   body is read: both Content-Length and Transfer-Encoding, a transfer
 *   coding other than chunked, a Content-Length given twice (request
 *   smuggling through a proxy in front). The connection is then closed.
 */
#define _GNU_SOURCE 1 /* MSG_DONTWAIT, POLLRDHUP */
#include "scheduler/front/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <microhttpd.h>

#include "lmsched/wire.h"
#include "scheduler/core/status.h"
#include "scheduler/front/metrics.h"
#include "scheduler/front/openai_in.h"
#include "scheduler/front/token.h"
#include "scheduler/util/clock.h"
#include "scheduler/util/log.h"
#include "scheduler/util/strbuf.h"

/* How often the watcher looks at suspended connections and deadlines. */
#define HF_WATCH_MS 100
/* MHD's polling threads. The loop is the daemon's bottleneck, not these:
 * two parse bodies side by side and keep one slow client from delaying
 * the others' bytes. */
#define HF_THREADS 2
/* Owner ids of HTTP connections have the top bit set: nng pipe ids are 32
 * bits, so the two fronts' owners never collide in sched_cancel_owner. */
#define HF_OWNER_BIT ((uint64_t)1 << 63)
/* What the streaming content reader hands MHD at a time. */
#define HF_BLOCK (16u << 10)

enum hf_kind { HF_CHAT = 1, HF_MODELS, HF_HEALTH, HF_METRICS };

typedef struct hf_conn hf_conn;
typedef struct hf_req hf_req;

struct http_front {
    sched *s;
    struct MHD_Daemon *d;
    token tok;
    bool need_token;
    char addr[300];
    uint64_t max_body;
    int64_t header_us, body_us;
    uint64_t stream_buffer;
    char cors[256];
    pthread_mutex_t mtx; /* everything below that MHD's threads and the loop share */
    hf_conn *conns;
    hf_req *reqs; /* every live request, for http_close */
    uint64_t next_conn;
    bool closing;
    atomic_bool stopping; /* the watcher ends */
    metrics_http stats;
    atomic_uint_fast64_t auth_refused,
        bad_requests; /* not yet counted in the core (tick) */
    uint64_t auth_refused_all, auth_unlogged;
    int64_t auth_logged_us; /* refusals are logged at most once a second */
    atomic_uint sending;    /* answers complete, not yet sent */
    atomic_uint_fast64_t next_req;
    pthread_t watcher;
    bool watching;
    int wake[2];       /* the watcher's pipe: a connection opened, or stop */
    bool watcher_idle; /* it sleeps until a connection opens */
    /* Loop thread only: */
    bool overflow; /* a stream passed --stream-buffer: tick cancels it */
    char last_model[260];
    hf_req *flush; /* streams with new pieces, woken by flush_ev */
    bool flush_posted;
    sched_event flush_ev;
};

struct hf_conn {
    uint64_t id; /* owner id (HF_OWNER_BIT set) */
    int fd;
    int64_t deadline_us; /* close it then: headers or body too slow; 0: none */
    bool watched;        /* suspended: the watcher looks for a hang-up */
    hf_req *cur;         /* the request MHD handles on it */
    hf_conn *prev, *next;
};

enum hf_phase { HF_NEW = 0, HF_POSTED, HF_SENDING };

struct hf_req {
    sched_event ev;      /* first: the request for the loop */
    sched_event gone_ev; /* the client went away */
    http_front *f;
    unsigned refs; /* under f->mtx */
    int kind;
    uint64_t conn_id;
    uint64_t seq;
    /* MHD's threads only: */
    struct MHD_Connection *conn;
    int phase;
    strbuf body;
    bool too_big;
    int early_status; /* refused at its headers, answered once it is read */
    int early_code;
    char early_msg[240];
    /* Handed to the loop with the event: */
    oai_chat chat;
    bool head; /* a HEAD request: no body in the answer */
    /* Under f->mtx: */
    hf_conn *c;       /* its connection, while MHD handles it */
    bool suspended;   /* MHD_suspend_connection was called, no resume since */
    bool answered;    /* out holds the whole answer (or the stream's end) */
    bool streaming;   /* the answer is an event stream, status 200 */
    bool posted;      /* handed to the loop: a job may run for it */
    bool gone;        /* the client went away */
    bool mhd_done;    /* MHD's completion callback ran */
    bool counted;     /* counted in f->sending */
    bool retry_after; /* a 429: say when to retry */
    int status;
    const char *ctype;
    strbuf out; /* answer bytes not handed to MHD yet */
    size_t out_pos;
    /* The loop thread only: */
    job *job;
    bool in_submit, ended;
    bool flush_queued; /* on f->flush (holding a reference) */
    hf_req *flush_next;
    oai_reply reply;
    hf_req *prev, *next; /* f->reqs */
};

/* ---- references ------------------------------------------------------------ */

static void hf_req_free(hf_req *r)
{
    strbuf_fini(&r->body);
    strbuf_fini(&r->out);
    chat_req_free(r->chat.req);
    free(r);
}

/* Drops one reference with f->mtx held; returns r when that was the last
 * (free it after unlocking). */
static hf_req *hf_rele_locked(hf_req *r)
{
    http_front *f = r->f;
    if (--r->refs > 0)
        return NULL;
    if (r->prev != NULL)
        r->prev->next = r->next;
    else if (f->reqs == r)
        f->reqs = r->next;
    if (r->next != NULL)
        r->next->prev = r->prev;
    return r;
}

static void hf_rele(hf_req *r)
{
    http_front *f = r->f;
    pthread_mutex_lock(&f->mtx);
    hf_req *dead = hf_rele_locked(r);
    pthread_mutex_unlock(&f->mtx);
    if (dead != NULL)
        hf_req_free(dead);
}

/* ---- suspend and resume (f->mtx held) ------------------------------------------- */

/* MHD's thread, in a callback of this connection. */
static void hf_suspend_locked(hf_req *r)
{
    r->suspended = true;
    if (r->c != NULL)
        r->c->watched = true;
    MHD_suspend_connection(r->conn);
}

/* Any thread: MHD's thread goes on with the connection. */
static void hf_resume_locked(hf_req *r)
{
    if (!r->suspended)
        return;
    r->suspended = false;
    if (r->c != NULL)
        r->c->watched = false;
    MHD_resume_connection(r->conn);
}

/* The answer is complete: count it as being sent until MHD is done. */
static void hf_answered_locked(hf_req *r)
{
    r->answered = true;
    if (!r->mhd_done && !r->counted) {
        r->counted = true;
        atomic_fetch_add(&r->f->sending, 1);
    }
    hf_resume_locked(r);
}

/* ---- answers built on MHD's thread --------------------------------------------- */

static const char *hf_header_value(struct MHD_Connection *conn, const char *name)
{
    return MHD_lookup_connection_value(conn, MHD_HEADER_KIND, name);
}

static void hf_cors(http_front *f, struct MHD_Response *resp)
{
    if (f->cors[0] == '\0')
        return;
    MHD_add_response_header(resp, "Access-Control-Allow-Origin", f->cors);
    if (strcmp(f->cors, "*") != 0)
        MHD_add_response_header(resp, "Vary", "Origin");
}

/* Queues a whole answer (body copied). Returns MHD's result. */
static enum MHD_Result hf_queue(http_front *f, struct MHD_Connection *conn, int status,
                                const char *ctype, const char *body, size_t len,
                                bool retry_after, bool head)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        head ? 0 : len, (void *)(head ? "" : body), MHD_RESPMEM_MUST_COPY);
    if (resp == NULL)
        return MHD_NO;
    MHD_add_response_header(resp, "Content-Type", ctype);
    if (retry_after)
        MHD_add_response_header(resp, "Retry-After", "1");
    if (status == 401)
        MHD_add_response_header(resp, "WWW-Authenticate", "Bearer");
    hf_cors(f, resp);
    pthread_mutex_lock(&f->mtx);
    f->stats.responses[status / 100 >= 1 && status / 100 <= 5 ? status / 100 : 5]++;
    pthread_mutex_unlock(&f->mtx);
    enum MHD_Result rc = MHD_queue_response(conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return rc;
}

/* An error answered by the front itself (before the core saw the request). */
static enum MHD_Result hf_queue_error(http_front *f, hf_req *r, int status, int code,
                                      const char *msg, const char *param)
{
    size_t len = 0;
    char *body = oai_error_body(status, code, msg, param, &len);
    pthread_mutex_lock(&f->mtx);
    r->answered = true;
    r->phase = HF_SENDING;
    pthread_mutex_unlock(&f->mtx);
    enum MHD_Result rc = body != NULL ? hf_queue(f, r->conn, status, "application/json",
                                                 body, len, false, r->head)
                                      : MHD_NO;
    free(body);
    return rc;
}

/* Refuses a request at its headers. One without a body is answered once
 * MHD has read it all, so its connection stays open for the next; one with
 * a body (or with ambiguous framing: force) at once, which makes MHD drop
 * the body unread and close the connection. Returns true (answered or
 * to be). */
static bool hf_reject(http_front *f, hf_req *r, int status, int code, const char *msg,
                      bool force, enum MHD_Result *rc)
{
    const char *cl = hf_header_value(r->conn, "Content-Length");
    bool body = hf_header_value(r->conn, "Transfer-Encoding") != NULL ||
                (cl != NULL && strtoull(cl, NULL, 10) > 0);
    if (force || body) {
        *rc = hf_queue_error(f, r, status, code, msg, NULL);
        return true;
    }
    r->early_status = status;
    r->early_code = code;
    snprintf(r->early_msg, sizeof(r->early_msg), "%s", msg);
    *rc = MHD_YES;
    return true;
}

/* The event stream's content reader (MHD's thread). */
static ssize_t hf_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    hf_req *r = cls;
    http_front *f = r->f;
    ssize_t n;
    (void)pos;
    pthread_mutex_lock(&f->mtx);
    size_t avail = r->out.len - r->out_pos;
    if (avail > 0) {
        n = (ssize_t)(avail < max ? avail : max);
        memcpy(buf, r->out.data + r->out_pos, (size_t)n);
        r->out_pos += (size_t)n;
        if (r->out_pos == r->out.len) {
            strbuf_clear(&r->out);
            r->out_pos = 0;
        }
    } else if (r->answered) {
        n = MHD_CONTENT_READER_END_OF_STREAM;
    } else if (f->closing) {
        n = MHD_CONTENT_READER_END_WITH_ERROR;
    } else {
        hf_suspend_locked(r); /* the loop resumes it with more */
        n = 0;
    }
    pthread_mutex_unlock(&f->mtx);
    return n;
}

/* The request is complete (or its connection was resumed): answer it when
 * its answer is there, else wait. MHD's thread. */
static enum MHD_Result hf_answer(http_front *f, hf_req *r)
{
    pthread_mutex_lock(&f->mtx);
    if (f->closing && !r->answered && !r->streaming) {
        pthread_mutex_unlock(&f->mtx);
        return hf_queue_error(f, r, 503, LMSCHED_ESHUTDOWN, "lmsched is shutting down",
                              NULL);
    }
    if (!r->answered && !r->streaming) {
        hf_suspend_locked(r);
        pthread_mutex_unlock(&f->mtx);
        return MHD_YES;
    }
    r->phase = HF_SENDING;
    if (r->streaming && !r->answered) {
        /* A stream still being written: a content reader hands out what
         * there is, chunk-encoded. (One already complete goes whole, like
         * any answer: one write, with its length.) */
        f->stats.responses[2]++;
        pthread_mutex_unlock(&f->mtx);
        struct MHD_Response *resp = MHD_create_response_from_callback(
            MHD_SIZE_UNKNOWN, HF_BLOCK, hf_reader, r, NULL);
        if (resp == NULL)
            return MHD_NO;
        MHD_add_response_header(resp, "Content-Type", "text/event-stream");
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
        hf_cors(f, resp);
        enum MHD_Result rc = MHD_queue_response(r->conn, 200, resp);
        MHD_destroy_response(resp);
        return rc;
    }
    /* A whole answer: its bytes go to MHD (and are freed by it). */
    size_t len = r->out.len;
    char *body = strbuf_steal(&r->out);
    int status = r->status;
    bool retry = r->retry_after;
    const char *ctype = r->ctype != NULL ? r->ctype : "application/json";
    pthread_mutex_unlock(&f->mtx);
    enum MHD_Result rc = hf_queue(f, r->conn, status, ctype, body != NULL ? body : "",
                                  len, retry, r->head);
    free(body);
    return rc;
}

/* ---- requests arriving (MHD's threads) ------------------------------------------- */

static void hf_on_event(sched *s, sched_event *e);
static void hf_on_gone(sched *s, sched_event *e);

typedef struct hf_count {
    const char *name;
    unsigned n;
} hf_count;

static enum MHD_Result hf_count_cb(void *cls, enum MHD_ValueKind kind, const char *key,
                                   const char *value)
{
    hf_count *c = cls;
    (void)kind;
    (void)value;
    if (strcasecmp(key, c->name) == 0)
        c->n++;
    return MHD_YES;
}

/* How many times the header appears. */
static unsigned hf_header_count(struct MHD_Connection *conn, const char *name)
{
    hf_count c = {name, 0};
    MHD_get_connection_values(conn, MHD_HEADER_KIND, hf_count_cb, &c);
    return c.n;
}

/* Whether the request carries the token (constant time). */
static bool hf_auth_ok(http_front *f, struct MHD_Connection *conn)
{
    if (!f->need_token)
        return true;
    const char *a = hf_header_value(conn, "Authorization");
    if (a == NULL || strncasecmp(a, "Bearer ", 7) != 0)
        return token_equal(&f->tok, NULL, 0);
    a += 7;
    while (*a == ' ')
        a++;
    size_t n = strlen(a);
    while (n > 0 && (a[n - 1] == ' ' || a[n - 1] == '\t'))
        n--;
    return token_equal(&f->tok, a, n);
}

/* The connection's bookkeeping, or NULL (it could not be allocated). */
static hf_conn *hf_conn_of(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci != NULL ? ci->socket_context : NULL;
}

/* Checks and routes a request whose headers just arrived. Returns true
 * when it was answered already. */
static bool hf_route(http_front *f, hf_req *r, const char *url, const char *method,
                     enum MHD_Result *rc)
{
    struct MHD_Connection *conn = r->conn;
    bool get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    bool post = strcmp(method, "POST") == 0;
    r->head = strcmp(method, "HEAD") == 0;

    /* Ambiguous framing: refused before any body byte is read. */
    const char *te = hf_header_value(conn, "Transfer-Encoding");
    unsigned n_cl = hf_header_count(conn, "Content-Length");
    if ((te != NULL && (n_cl > 0 || strcasecmp(te, "chunked") != 0)) || n_cl > 1 ||
        hf_header_count(conn, "Transfer-Encoding") > 1) {
        return hf_reject(f, r, 400, LMSCHED_EPROTO,
                         "ambiguous request framing: give either one Content-Length or "
                         "Transfer-Encoding: chunked, not both (or several)",
                         true, rc);
    }
    if (strcmp(method, "OPTIONS") == 0 && f->cors[0] != '\0') {
        /* A browser's preflight: no token (browsers send none here). */
        struct MHD_Response *resp =
            MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
        if (resp == NULL) {
            *rc = MHD_NO;
            return true;
        }
        hf_cors(f, resp);
        MHD_add_response_header(resp, "Access-Control-Allow-Methods",
                                "GET, POST, OPTIONS");
        const char *want = hf_header_value(conn, "Access-Control-Request-Headers");
        MHD_add_response_header(resp, "Access-Control-Allow-Headers",
                                want != NULL ? want : "Authorization, Content-Type");
        MHD_add_response_header(resp, "Access-Control-Max-Age", "600");
        pthread_mutex_lock(&f->mtx);
        r->answered = true;
        r->phase = HF_SENDING;
        f->stats.responses[2]++;
        pthread_mutex_unlock(&f->mtx);
        *rc = MHD_queue_response(conn, 204, resp);
        MHD_destroy_response(resp);
        return true;
    }
    if (strcmp(url, "/v1/chat/completions") == 0 || strcmp(url, "/chat/completions") == 0)
        r->kind = HF_CHAT;
    else if (strcmp(url, "/v1/models") == 0 || strcmp(url, "/models") == 0)
        r->kind = HF_MODELS;
    else if (strcmp(url, "/health") == 0 || strcmp(url, "/v1/health") == 0)
        r->kind = HF_HEALTH;
    else if (strcmp(url, "/metrics") == 0)
        r->kind = HF_METRICS;
    if (r->kind == 0) {
        char why[160];
        snprintf(why, sizeof(why), "no such endpoint: %s %.80s (see docs/openai.md)",
                 method, url);
        return hf_reject(f, r, 404, LMSCHED_EPROTO, why, false, rc);
    }
    if ((r->kind == HF_CHAT && !post) || (r->kind != HF_CHAT && !get)) {
        char why[160];
        snprintf(why, sizeof(why), "%s is not allowed on %.80s; use %s", method, url,
                 r->kind == HF_CHAT ? "POST" : "GET");
        return hf_reject(f, r, 405, LMSCHED_EPROTO, why, false, rc);
    }
    /* Every endpoint but the health check needs the token. */
    if (r->kind != HF_HEALTH && !hf_auth_ok(f, conn)) {
        bool had = hf_header_value(conn, "Authorization") != NULL;
        int64_t now = clock_now_us();
        pthread_mutex_lock(&f->mtx);
        atomic_fetch_add(&f->auth_refused, 1);
        f->auth_refused_all++;
        f->auth_unlogged++;
        if (f->auth_logged_us == 0 || now - f->auth_logged_us >= 1000000) {
            /* Neither the token nor the guess is ever logged. */
            log_warn("http: refused a request on connection %" PRIu64 ": %s (%" PRIu64
                     " refused since the last such message, %" PRIu64 " in all)",
                     r->conn_id & ~HF_OWNER_BIT, had ? "wrong token" : "no token",
                     f->auth_unlogged, f->auth_refused_all);
            f->auth_logged_us = now;
            f->auth_unlogged = 0;
        }
        pthread_mutex_unlock(&f->mtx);
        return hf_reject(
            f, r, 401, LMSCHED_EAUTH,
            had ? "access token refused"
                : "this lmsched daemon requires an access token: send "
                  "Authorization: Bearer TOKEN (the OpenAI clients' api_key)",
            false, rc);
    }
    if (r->kind == HF_CHAT) {
        const char *ct = hf_header_value(conn, "Content-Type");
        if (ct != NULL && strncasecmp(ct, "application/json", 16) != 0) {
            char why[200];
            snprintf(
                why, sizeof(why),
                "the request body must be JSON (Content-Type: application/json), not "
                "%.60s",
                ct);
            return hf_reject(f, r, 415, LMSCHED_EPROTO, why, false, rc);
        }
        const char *cl = hf_header_value(conn, "Content-Length");
        if (cl != NULL && strtoull(cl, NULL, 10) > f->max_body) {
            char why[160];
            snprintf(why, sizeof(why),
                     "the request body is larger than the limit of %" PRIu64
                     " bytes (--http-max-body)",
                     f->max_body);
            return hf_reject(f, r, 413, LMSCHED_ETOOLARGE, why, true, rc);
        }
    }
    return false;
}

/* The whole request is in: translate it and hand it to the loop. */
static enum MHD_Result hf_post(http_front *f, hf_req *r)
{
    struct MHD_Connection *conn = r->conn;
    if (r->kind == HF_CHAT) {
        if (r->too_big) {
            char why[160];
            snprintf(why, sizeof(why),
                     "the request body is larger than the limit of %" PRIu64
                     " bytes (--http-max-body)",
                     f->max_body);
            return hf_queue_error(f, r, 413, LMSCHED_ETOOLARGE, why, NULL);
        }
        oai_headers h = {
            .priority = hf_header_value(conn, "X-Lmsched-Priority"),
            .deadline_ms = hf_header_value(conn, "X-Lmsched-Deadline-Ms"),
            .agent = hf_header_value(conn, "X-Lmsched-Agent"),
            .session = hf_header_value(conn, "X-Session-ID"),
        };
        if (h.session == NULL)
            h.session = hf_header_value(conn, "X-Lmsched-Session");
        oai_err err;
        int rc = oai_parse_chat(r->body.data != NULL ? r->body.data : "", r->body.len, &h,
                                &r->chat, &err);
        strbuf_fini(&r->body);
        if (rc != LMSCHED_OK) {
            atomic_fetch_add(&f->bad_requests, 1);
            log_debug("http: refused a request on connection %" PRIu64 ": %s",
                      r->conn_id & ~HF_OWNER_BIT, err.message);
            return hf_queue_error(f, r, err.status, rc, err.message,
                                  err.param[0] ? err.param : NULL);
        }
    }
    pthread_mutex_lock(&f->mtx);
    if (f->closing) {
        pthread_mutex_unlock(&f->mtx);
        return hf_queue_error(f, r, 503, LMSCHED_ESHUTDOWN, "lmsched is shutting down",
                              NULL);
    }
    r->phase = HF_POSTED;
    r->posted = true;
    r->refs++; /* the event's */
    if (r->c != NULL)
        r->c->deadline_us = 0; /* with the scheduler now: no deadline of ours */
    hf_suspend_locked(r);
    pthread_mutex_unlock(&f->mtx);
    sched_post(f->s, &r->ev);
    return MHD_YES;
}

static enum MHD_Result hf_access_cb(void *cls, struct MHD_Connection *conn,
                                    const char *url, const char *method,
                                    const char *version, const char *upload,
                                    size_t *upload_size, void **req_cls)
{
    http_front *f = cls;
    hf_req *r = *req_cls;
    (void)version;
    if (r == NULL) {
        /* The headers are in. */
        r = calloc(1, sizeof(*r));
        if (r == NULL)
            return MHD_NO; /* closes the connection */
        r->f = f;
        r->conn = conn;
        r->refs = 1; /* MHD's, until hf_completed_cb */
        r->ev.run = hf_on_event;
        r->gone_ev.run = hf_on_gone;
        r->seq = atomic_fetch_add(&f->next_req, 1);
        strbuf_init(&r->body);
        strbuf_init(&r->out);
        hf_conn *c = hf_conn_of(conn);
        pthread_mutex_lock(&f->mtx);
        r->next = f->reqs;
        if (f->reqs != NULL)
            f->reqs->prev = r;
        f->reqs = r;
        r->c = c;
        if (c != NULL) {
            c->cur = r;
            r->conn_id = c->id;
            c->deadline_us = clock_now_us() + f->body_us;
        }
        pthread_mutex_unlock(&f->mtx);
        *req_cls = r;
        enum MHD_Result rc = MHD_YES;
        if (hf_route(f, r, url, method, &rc))
            return rc;
        return MHD_YES;
    }
    if (*upload_size > 0) {
        if (r->phase == HF_NEW && r->kind == HF_CHAT && !r->too_big &&
            r->early_status == 0) {
            if (r->body.len + *upload_size > f->max_body ||
                strbuf_append(&r->body, upload, *upload_size, (size_t)f->max_body) != 0) {
                r->too_big = true; /* the rest is read and dropped, then 413 */
                strbuf_fini(&r->body);
            }
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (r->phase == HF_NEW && r->early_status != 0)
        return hf_queue_error(f, r, r->early_status, r->early_code, r->early_msg, NULL);
    if (r->phase == HF_NEW)
        return hf_post(f, r);
    if (r->phase == HF_SENDING)
        return MHD_YES; /* answered at the headers; MHD is sending it */
    return hf_answer(f, r);
}

/* MHD's thread: the request ended (answered, or its client went away). */
static void hf_completed_cb(void *cls, struct MHD_Connection *conn, void **req_cls,
                            enum MHD_RequestTerminationCode toe)
{
    http_front *f = cls;
    hf_req *r = *req_cls;
    (void)conn;
    if (r == NULL)
        return;
    *req_cls = NULL;
    bool post_gone = false;
    pthread_mutex_lock(&f->mtx);
    r->mhd_done = true;
    if (r->counted) {
        r->counted = false;
        atomic_fetch_sub(&f->sending, 1);
    }
    if (r->c != NULL) {
        r->c->cur = NULL;
        r->c->watched = false;
        /* Kept alive: the next request's headers are due within the
         * header timeout, idle time included. */
        r->c->deadline_us = clock_now_us() + f->header_us;
        r->c = NULL;
    }
    r->suspended = false;
    if (!r->answered && !r->gone && r->posted) {
        r->gone = true;
        r->refs++;
        post_gone = true;
        f->stats.disconnects++;
    }
    hf_req *dead = hf_rele_locked(r);
    pthread_mutex_unlock(&f->mtx);
    if (post_gone) {
        log_debug("http: connection %" PRIu64 " ended its request before the answer (%d)",
                  r->conn_id & ~HF_OWNER_BIT, (int)toe);
        sched_post(f->s, &r->gone_ev);
    }
    if (dead != NULL)
        hf_req_free(dead);
}

/* MHD's thread: a connection opens or closes. */
static void hf_conn_cb(void *cls, struct MHD_Connection *conn, void **socket_context,
                       enum MHD_ConnectionNotificationCode toe)
{
    http_front *f = cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        hf_conn *c = calloc(1, sizeof(*c));
        *socket_context = c;
        if (c == NULL)
            return; /* served without deadlines or hang-up watch */
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        c->fd = ci != NULL ? ci->connect_fd : -1;
        pthread_mutex_lock(&f->mtx);
        c->id = ++f->next_conn | HF_OWNER_BIT;
        c->deadline_us = c->fd >= 0 ? clock_now_us() + f->header_us : 0;
        c->next = f->conns;
        if (f->conns != NULL)
            f->conns->prev = c;
        f->conns = c;
        f->stats.connections++;
        f->stats.connections_total++;
        bool wake = f->watcher_idle;
        f->watcher_idle = false;
        pthread_mutex_unlock(&f->mtx);
        if (wake) {
            ssize_t w = write(f->wake[1], "c", 1);
            (void)w;
        }
        return;
    }
    hf_conn *c = *socket_context;
    if (c == NULL)
        return;
    /* Out of the list before MHD closes the descriptor (see the notes). */
    pthread_mutex_lock(&f->mtx);
    if (c->prev != NULL)
        c->prev->next = c->next;
    else if (f->conns == c)
        f->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    f->stats.connections--;
    if (c->cur != NULL)
        c->cur->c = NULL;
    pthread_mutex_unlock(&f->mtx);
    free(c);
    *socket_context = NULL;
}

static void hf_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char line[512];
    (void)cls;
    vsnprintf(line, sizeof(line), fmt, ap);
    size_t n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    log_debug("http: libmicrohttpd: %s", line);
}

/* ---- the watcher thread --------------------------------------------------------- */

/* Whether a watched socket's client hung up. Peeks without reading; a
 * socket with bytes waiting is not watched further (see the notes). */
static bool hf_hung_up(hf_conn *c, short revents)
{
    if (revents & (POLLHUP | POLLERR | POLLNVAL))
        return true;
#ifdef POLLRDHUP
    if (revents & POLLRDHUP)
        return true;
#endif
    char b;
    ssize_t n = recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
        return true;
    if (n > 0)
        c->watched = false;
    return false;
}

static void *hf_watch_main(void *arg)
{
    http_front *f = arg;
    size_t cap = 64;
    struct pollfd *pfd = malloc(cap * sizeof(*pfd));
    uint64_t *ids = malloc(cap * sizeof(*ids));
    if (pfd == NULL || ids == NULL) {
        log_error("http: out of memory: clients that hang up are noticed only when their "
                  "answer is sent");
        free(pfd);
        free(ids);
        return NULL;
    }
    for (;;) {
        size_t n = 1;
        pthread_mutex_lock(&f->mtx);
        int64_t now = clock_now_us();
        for (hf_conn *c = f->conns; c != NULL; c = c->next) {
            if (c->deadline_us != 0 && now >= c->deadline_us && !c->watched) {
                /* Too slow: MHD sees the socket end and closes it. */
                shutdown(c->fd, SHUT_RDWR);
                c->deadline_us = 0;
                f->stats.timeouts++;
                log_debug("http: closed connection %" PRIu64
                          ": its request did not arrive "
                          "in time",
                          c->id & ~HF_OWNER_BIT);
            }
            if (!c->watched || c->fd < 0)
                continue;
            if (n == cap) {
                size_t nc = cap * 2;
                struct pollfd *np = realloc(pfd, nc * sizeof(*np));
                if (np != NULL)
                    pfd = np;
                uint64_t *ni = np != NULL ? realloc(ids, nc * sizeof(*ni)) : NULL;
                if (ni == NULL)
                    break; /* watch those there is room for */
                ids = ni;
                cap = nc;
            }
            short ev = POLLIN;
#ifdef POLLRDHUP
            ev |= POLLRDHUP;
#endif
            pfd[n] = (struct pollfd){.fd = c->fd, .events = ev};
            ids[n] = c->id;
            n++;
        }
        bool closing = f->closing;
        /* No connection, nothing to watch: sleep until one opens. */
        f->watcher_idle = f->conns == NULL;
        int timeout = f->watcher_idle ? -1 : HF_WATCH_MS;
        pthread_mutex_unlock(&f->mtx);
        if (closing)
            break;
        pfd[0] = (struct pollfd){.fd = f->wake[0], .events = POLLIN};
        int got = poll(pfd, (nfds_t)n, timeout);
        if (got <= 0)
            continue;
        if (pfd[0].revents != 0) {
            char drain[64];
            ssize_t r = read(f->wake[0], drain, sizeof(drain));
            (void)r;
            if (atomic_load(&f->stopping))
                break;
        }
        for (size_t i = 1; i < n; i++) {
            if (pfd[i].revents == 0)
                continue;
            hf_req *post = NULL;
            pthread_mutex_lock(&f->mtx);
            hf_conn *c = f->conns;
            while (c != NULL && c->id != ids[i])
                c = c->next;
            /* Still the same suspended connection: its descriptor is open. */
            if (c != NULL && c->watched && c->fd == pfd[i].fd &&
                hf_hung_up(c, pfd[i].revents)) {
                c->watched = false;
                hf_req *r = c->cur;
                if (r != NULL && !r->answered && !r->gone && r->posted) {
                    r->gone = true;
                    r->refs++;
                    post = r;
                    f->stats.disconnects++;
                }
            }
            pthread_mutex_unlock(&f->mtx);
            if (post != NULL) {
                log_debug("http: connection %" PRIu64 " hung up while its request waited",
                          post->conn_id & ~HF_OWNER_BIT);
                sched_post(f->s, &post->gone_ev);
            }
        }
    }
    free(pfd);
    free(ids);
    return NULL;
}

/* ---- the sink (loop thread) ---------------------------------------------------- */

/* Appends bytes of the answer and wakes the connection: at once for the
 * answer's end; for a stream's pieces at the start of the loop's next turn
 * (flush_ev), so the pieces of one turn, and an end that comes in the same
 * turn (a backend that answers at once), reach MHD in one wake-up and one
 * write instead of one each. */
static void hf_put(hf_req *r, strbuf *b, bool end, int status, const char *ctype,
                   bool streaming, bool retry_after)
{
    http_front *f = r->f;
    bool post = false;
    pthread_mutex_lock(&f->mtx);
    if (b->len > 0 && !r->gone) {
        if (r->out.len == 0 && r->out_pos == 0) {
            strbuf_fini(&r->out);
            r->out = *b; /* take it whole: no copy */
            strbuf_init(b);
        } else if (strbuf_append(&r->out, b->data, b->len, SIZE_MAX / 2) != 0) {
            end = true; /* out of memory: end what we have */
        }
    }
    if (streaming)
        r->streaming = true;
    if (r->out.len - r->out_pos > f->stream_buffer && !end) {
        /* The client reads slower than the model writes. */
        f->overflow = true;
    }
    if (end) {
        r->status = status;
        r->ctype = ctype;
        r->retry_after = retry_after;
        hf_answered_locked(r);
    } else if (!r->flush_queued) {
        r->flush_queued = true;
        r->refs++; /* the flush's */
        r->flush_next = f->flush;
        f->flush = r;
        post = !f->flush_posted;
        f->flush_posted = true;
    }
    pthread_mutex_unlock(&f->mtx);
    strbuf_fini(b);
    if (post)
        sched_post(f->s, &f->flush_ev);
}

/* The loop's next turn: wake the streams that got pieces. */
static void hf_on_flush(sched *s, sched_event *e)
{
    http_front *f = (http_front *)((char *)e - offsetof(http_front, flush_ev));
    hf_req *dead = NULL;
    (void)s;
    pthread_mutex_lock(&f->mtx);
    hf_req *r = f->flush;
    f->flush = NULL;
    f->flush_posted = false;
    while (r != NULL) {
        hf_req *next = r->flush_next;
        r->flush_queued = false;
        hf_resume_locked(r);
        hf_req *d = hf_rele_locked(r);
        if (d != NULL) {
            d->flush_next = dead;
            dead = d;
        }
        r = next;
    }
    pthread_mutex_unlock(&f->mtx);
    while (dead != NULL) {
        hf_req *next = dead->flush_next;
        hf_req_free(dead);
        dead = next;
    }
}

static void hf_sink_chunk(void *arg, job *j, const chat_delta *d, size_t n)
{
    hf_req *r = arg;
    strbuf b;
    (void)j;
    strbuf_init(&b);
    if (oai_stream_pieces(&b, &r->reply, d, n) != 0)
        log_error("http: out of memory encoding a stream");
    hf_put(r, &b, false, 200, "text/event-stream", true, false);
}

/* The job ended: its reference goes (unless inside sched_submit, which
 * drops it after). */
static void hf_job_end(hf_req *r)
{
    r->job = NULL;
    r->ended = true;
    if (!r->in_submit)
        hf_rele(r);
}

static void hf_sink_done(void *arg, job *j, const chat_result *r_)
{
    hf_req *r = arg;
    http_front *f = r->f;
    strbuf b;
    (void)j;
    strbuf_init(&b);
    if (r_->model != NULL)
        snprintf(f->last_model, sizeof(f->last_model), "%s", r_->model);
    if (r->chat.stream) {
        if (oai_stream_end(&b, &r->reply, r_) != 0)
            log_error("http: out of memory encoding a stream's end");
        hf_put(r, &b, true, 200, "text/event-stream", true, false);
    } else {
        size_t len = 0;
        char *body = oai_completion(&r->reply, r_, &len);
        if (body != NULL) {
            strbuf_append(&b, body, len, SIZE_MAX / 2);
            free(body);
            hf_put(r, &b, true, 200, "application/json", false, false);
        } else {
            char *e = oai_error_body(500, LMSCHED_ENOMEM, "scheduler out of memory", NULL,
                                     &len);
            if (e != NULL)
                strbuf_append(&b, e, len, SIZE_MAX / 2);
            free(e);
            hf_put(r, &b, true, 500, "application/json", false, false);
        }
    }
    hf_job_end(r);
}

static void hf_sink_fail(void *arg, job *j, int code, const char *msg, const char *field)
{
    hf_req *r = arg;
    http_front *f = r->f;
    strbuf b;
    (void)j;
    strbuf_init(&b);
    pthread_mutex_lock(&f->mtx);
    bool started = r->streaming;
    pthread_mutex_unlock(&f->mtx);
    if (started) {
        /* The status line went out with the first piece: the error ends
         * the stream as an event. */
        oai_stream_error(&b, code, msg, field);
        hf_put(r, &b, true, 200, "text/event-stream", true, false);
    } else {
        int status = oai_status_of(code, msg);
        size_t len = 0;
        char *e = oai_error_body(status, code, msg, field, &len);
        if (e != NULL)
            strbuf_append(&b, e, len, SIZE_MAX / 2);
        free(e);
        hf_put(r, &b, true, status, "application/json", false, code == LMSCHED_EBUSY);
    }
    hf_job_end(r);
}

static const sink_ops hf_sink = {
    .chunk = hf_sink_chunk,
    .done = hf_sink_done,
    .fail = hf_sink_fail,
};

/* ---- events (loop thread) -------------------------------------------------------- */

/* An answer the front builds itself from a status snapshot. */
static void hf_info(http_front *f, hf_req *r)
{
    status_snapshot *snap = malloc(sizeof(*snap));
    strbuf b;
    int status = 200;
    const char *ctype = "application/json";
    strbuf_init(&b);
    if (snap == NULL)
        goto oom;
    status_take(f->s, snap);
    char *text = NULL;
    size_t len = 0;
    if (r->kind == HF_METRICS) {
        metrics_http h;
        pthread_mutex_lock(&f->mtx);
        h = f->stats;
        pthread_mutex_unlock(&f->mtx);
        text = metrics_text(snap, &h, &len);
        ctype = "text/plain; version=0.0.4; charset=utf-8";
    } else {
        json_t *doc;
        if (r->kind == HF_MODELS) {
            /* The backends' models: the one each has loaded, once each. */
            json_t *data = json_array();
            for (unsigned i = 0; i < snap->n_backends; i++) {
                const status_backend *x = &snap->backends[i];
                bool dup = x->model == NULL || x->removed;
                for (unsigned k = 0; k < i && !dup; k++)
                    dup = snap->backends[k].model != NULL && !snap->backends[k].removed &&
                          strcmp(snap->backends[k].model, x->model) == 0;
                if (!dup)
                    json_array_append_new(data, json_pack("{s:s,s:s,s:i,s:s}", "id", x->model,
                                                          "object", "model", "created", 0,
                                                          "owned_by", x->kind));
            }
            doc = json_pack("{s:s,s:o}", "object", "list", "data", data);
        } else {
            bool draining = sched_draining(f->s);
            /* Several backends: healthy while any of them is. */
            bool healthy = false;
            for (unsigned i = 0; i < snap->n_backends; i++)
                healthy = healthy || (snap->backends[i].healthy && !snap->backends[i].removed);
            status = !draining && healthy ? 200 : 503;
            doc = json_pack("{s:s,s:{s:b},s:{s:i,s:i},s:i}", "status",
                            draining  ? "shutting_down"
                            : healthy ? "ok"
                                      : "unavailable",
                            "backend", "healthy", healthy, "queue", "depth",
                            (int)snap->queue_depth, "max", (int)snap->queue_max,
                            "inflight", (int)snap->inflight);
        }
        text = doc != NULL ? json_dumps(doc, JSON_COMPACT) : NULL;
        json_decref(doc);
        len = text != NULL ? strlen(text) : 0;
    }
    free(snap);
    if (text == NULL)
        goto oom;
    strbuf_append(&b, text, len, SIZE_MAX / 2);
    free(text);
    hf_put(r, &b, true, status, ctype, false, false);
    return;
oom:
    free(snap);
    static const char nomem[] =
        "{\"error\":{\"message\":\"scheduler out of memory\",\"type\":\"server_error\","
        "\"code\":\"nomem\",\"param\":null}}";
    strbuf_append(&b, nomem, sizeof(nomem) - 1, SIZE_MAX / 2);
    hf_put(r, &b, true, 500, "application/json", false, false);
}

static void hf_on_event(sched *s, sched_event *e)
{
    hf_req *r = (hf_req *)e;
    http_front *f = r->f;
    if (r->kind != HF_CHAT) {
        hf_info(f, r);
        hf_rele(r);
        return;
    }
    pthread_mutex_lock(&f->mtx);
    bool gone = r->gone;
    if (!gone)
        r->refs++; /* the job's */
    pthread_mutex_unlock(&f->mtx);
    if (gone) {
        /* It went away before it was a job. */
        chat_req_free(r->chat.req);
        r->chat.req = NULL;
        hf_rele(r);
        return;
    }
    chat_req *req = r->chat.req;
    r->chat.req = NULL;
    oai_reply *rp = &r->reply;
    snprintf(rp->id, sizeof(rp->id), "chatcmpl-lms%" PRIx64 "x%" PRIx64,
             r->conn_id & ~HF_OWNER_BIT, r->seq);
    rp->created = (int64_t)time(NULL);
    snprintf(rp->model, sizeof(rp->model), "%s",
             req->model != NULL ? req->model : f->last_model);
    rp->include_usage = r->chat.include_usage;
    sink k = {.ops = &hf_sink, .arg = r, .owner = r->conn_id, .id = r->seq};
    r->in_submit = true;
    job *j = sched_submit(s, req, &k);
    r->in_submit = false;
    if (r->ended)
        hf_rele(r); /* answered at once: the job's reference */
    else
        r->job = j;
    hf_rele(r); /* the event's */
}

static void hf_on_gone(sched *s, sched_event *e)
{
    hf_req *r = (hf_req *)((char *)e - offsetof(hf_req, gone_ev));
    if (r->job != NULL)
        sched_cancel_job(s, r->job, LMSCHED_ECANCELED, "the HTTP client disconnected");
    hf_rele(r);
}

/* ---- the front ------------------------------------------------------------------- */

static unsigned hf_sending(void *arg)
{
    return atomic_load(&((http_front *)arg)->sending);
}

/* The loop's turn: counts for the core, and streams nobody reads. */
static int64_t hf_tick(void *arg, int64_t now_us)
{
    http_front *f = arg;
    (void)now_us;
    uint64_t auth = atomic_exchange(&f->auth_refused, 0);
    uint64_t bad = atomic_exchange(&f->bad_requests, 0);
    for (; auth > 0; auth--)
        sched_count_add(f->s, SCHED_COUNT_AUTH_REFUSED);
    for (; bad > 0; bad--)
        sched_count_add(f->s, SCHED_COUNT_BAD_MESSAGE);
    if (f->overflow) {
        f->overflow = false;
        for (;;) {
            job *cancel = NULL;
            pthread_mutex_lock(&f->mtx);
            for (hf_req *r = f->reqs; r != NULL && cancel == NULL; r = r->next)
                if (r->job != NULL && !r->answered &&
                    r->out.len - r->out_pos > f->stream_buffer)
                    cancel = r->job;
            pthread_mutex_unlock(&f->mtx);
            if (cancel == NULL)
                break;
            char why[160];
            snprintf(
                why, sizeof(why),
                "the client did not read the stream: more than --stream-buffer (%" PRIu64
                " bytes) unread",
                f->stream_buffer);
            sched_cancel_job(f->s, cancel, LMSCHED_ETOOLARGE, why);
        }
    }
    return INT64_MAX;
}

static const front_ops http_front_ops = {
    .name = "http",
    .sending = hf_sending,
    .tick = hf_tick,
};

int http_open(http_front **fp, sched *s, const sched_config *cfg)
{
    char host[64], err[900];
    int port;
    bool v6;
    *fp = NULL;
    if (config_http_addr(cfg->http, host, sizeof(host), &port, &v6) != 0) {
        fprintf(stderr, "lmsched serve: --http %s: not HOST:PORT\n", cfg->http);
        return 4;
    }
    http_front *f = calloc(1, sizeof(*f));
    if (f == NULL) {
        fprintf(stderr, "lmsched serve: out of memory\n");
        return 4;
    }
    f->s = s;
    f->wake[0] = f->wake[1] = -1;
    f->flush_ev.run = hf_on_flush;
    snprintf(f->addr, sizeof(f->addr), "%s", cfg->http);
    f->max_body = cfg->http_max_body;
    f->header_us = (int64_t)cfg->http_header_timeout_ms * 1000;
    f->body_us = (int64_t)cfg->http_body_timeout_ms * 1000;
    f->stream_buffer = cfg->stream_buffer;
    snprintf(f->cors, sizeof(f->cors), "%s", cfg->http_cors);
    pthread_mutex_init(&f->mtx, NULL);
    const char *tf =
        cfg->http_token_file[0] ? cfg->http_token_file : cfg->auth_token_file;
    if (tf[0] != '\0') {
        if (token_load(&f->tok, tf,
                       cfg->http_token_file[0] ? "--http-token-file"
                                               : "--auth-token-file",
                       cfg->force, err, sizeof(err)) != 0) {
            fprintf(stderr, "lmsched serve: %s\n", err);
            goto fail;
        }
        f->need_token = true;
    }
    if (pipe(f->wake) != 0) {
        fprintf(stderr, "lmsched serve: pipe: %s\n", strerror(errno));
        goto fail;
    }
    fcntl(f->wake[0], F_SETFD, FD_CLOEXEC);
    fcntl(f->wake[1], F_SETFD, FD_CLOEXEC);
    /* Neither end may block: a full pipe already says "wake up". */
    fcntl(f->wake[0], F_SETFL, O_NONBLOCK);
    fcntl(f->wake[1], F_SETFL, O_NONBLOCK);

    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (v6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        inet_pton(AF_INET6, host, &a->sin6_addr);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)port);
        inet_pton(AF_INET, host, &a->sin_addr);
    }
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO |
                     MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG |
                     (v6 ? MHD_USE_IPv6 : 0);
    unsigned idle_s = (unsigned)((cfg->http_body_timeout_ms + 999) / 1000);
    f->d = MHD_start_daemon(
        flags, 0, NULL, NULL, hf_access_cb, f, MHD_OPTION_EXTERNAL_LOGGER, hf_mhd_log, f,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss, MHD_OPTION_NOTIFY_COMPLETED,
        hf_completed_cb, f, MHD_OPTION_NOTIFY_CONNECTION, hf_conn_cb, f,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->http_max_conns,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)cfg->http_max_header,
        MHD_OPTION_CONNECTION_TIMEOUT, idle_s, MHD_OPTION_THREAD_POOL_SIZE,
        (unsigned)HF_THREADS, MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)128,
        MHD_OPTION_STRICT_FOR_CLIENT, (int)1, MHD_OPTION_END);
    if (f->d == NULL) {
        int e = errno;
        fprintf(stderr, "lmsched serve: cannot serve HTTP on %s: %s\n", cfg->http,
                e == EADDRINUSE ? "Address in use: another process listens there"
                : e != 0        ? strerror(e)
                                : "libmicrohttpd could not start");
        goto fail;
    }
    if (pthread_create(&f->watcher, NULL, hf_watch_main, f) != 0) {
        fprintf(stderr, "lmsched serve: cannot start the HTTP watcher thread\n");
        goto fail;
    }
    f->watching = true;
    /* The model to name in answers until the backend names one (the
     * backend was probed before the fronts open; this is the loop's
     * thread, before sched_run). */
    status_snapshot *snap = malloc(sizeof(*snap));
    if (snap != NULL) {
        status_take(s, snap);
        if (snap->backend.model != NULL)
            snprintf(f->last_model, sizeof(f->last_model), "%s", snap->backend.model);
        free(snap);
    }
    sched_add_front(s, &http_front_ops, f);
    *fp = f;
    return 0;
fail:
    http_close(f);
    return 4;
}

bool http_auth_required(const http_front *f)
{
    return f->need_token;
}

void http_close(http_front *f)
{
    if (f == NULL)
        return;
    /* No more suspending; every suspended connection goes on, to end. */
    pthread_mutex_lock(&f->mtx);
    f->closing = true;
    for (hf_req *r = f->reqs; r != NULL; r = r->next)
        hf_resume_locked(r);
    pthread_mutex_unlock(&f->mtx);
    if (f->watching) {
        atomic_store(&f->stopping, true);
        ssize_t w = write(f->wake[1], "x", 1);
        (void)w;
        pthread_join(f->watcher, NULL);
    }
    if (f->d != NULL)
        MHD_stop_daemon(f->d); /* ends every request and connection */
    /* What the loop never ran (events, jobs of an aborted start) goes now. */
    while (f->reqs != NULL) {
        hf_req *r = f->reqs;
        f->reqs = r->next;
        hf_req_free(r);
    }
    if (f->wake[0] >= 0)
        close(f->wake[0]);
    if (f->wake[1] >= 0)
        close(f->wake[1]);
    token_wipe(&f->tok);
    pthread_mutex_destroy(&f->mtx);
    free(f);
}
