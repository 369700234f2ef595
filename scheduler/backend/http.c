/*
 * http - the libcurl implementation of the HTTP client (see http.h), and
 * the thin dispatch through http_ops that the loop calls.
 *
 * Design notes: every transfer is a curl easy handle in one multi handle
 * owned by the loop thread. Streamed chat responses are parsed inside curl's
 * write callback (SSE framing, then one JSON chunk at a time), so memory per
 * request is bounded by the content limit, not by the stream length. The
 * write callback never calls curl_multi_* (that would be a recursive API
 * call); to stop a transfer it returns 0, which curl reports as
 * CURLE_WRITE_ERROR, and the error it recorded wins over that code.
 * A JSON POST (a side request: a token count) is a chat's POST with a
 * probe's handling: its answer is kept whole in raw, bounded by max_body,
 * under the probe timeout. Finished transfers are collected from
 * curl_multi_info_read onto a done list that http_done pops. Easy handles
 * are reset and kept for the next transfer; connections stay in the multi
 * handle's cache (keep-alive).
 *
 * Wakeups: another thread's http_wakeup costs a write to curl's wakeup
 * socket, and the loop a read of it, only while the loop sleeps in
 * curl_multi_poll (or is about to). Otherwise it just sets wake_pending,
 * which the next bk_poll sees: it then polls without waiting. Both sides
 * store their flag before reading the other's (sequentially consistent
 * atomics), so a wakeup is never lost: either the poster sees the loop
 * sleeping and writes, or the loop sees wake_pending and does not sleep.
 * In a busy loop most wakeups come while it is awake, and cost nothing.
 */
#include "scheduler/backend/http.h"

#include <curl/curl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lmsched/wire.h"
#include "scheduler/backend/sse.h"
#include "scheduler/util/clock.h"
#include "scheduler/util/log.h"

/* Largest single SSE event we accept; a chat chunk is a few hundred bytes. */
#define BK_MAX_EVENT (1u << 20)
/* Error bodies are kept short: they only feed a message. */
#define BK_MAX_ERROR_BODY (64u * 1024)
/* Probes are small and local: a server that takes longer is not well. */
#define BK_PROBE_TIMEOUT_MS 5000
#define BK_MODE_SSE 1
#define BK_MODE_RAW 2
/* Easy handles kept for reuse (curl_easy_reset keeps nothing of a
 * request); connections live in the multi handle's cache either way. */
#define BK_EASY_POOL 64

typedef struct bk_xfer bk_xfer;

typedef struct bk_client {
    http_client base; /* first: what the loop holds */
    CURLM *multi;
    http_opts o;
    bk_xfer *done_head, *done_tail;
    bk_xfer *all; /* every live transfer */
    CURL *pool[BK_EASY_POOL];
    unsigned n_pool;
    atomic_bool sleeping;     /* the loop is in (or entering) curl_multi_poll */
    atomic_bool wake_pending; /* http_wakeup since the last poll began */
} bk_client;

struct http_target {
    char *base_url;
    struct curl_slist *json_headers; /* Content-Type, Accept, Authorization */
    struct curl_slist *get_headers;  /* Accept, Authorization */
};

/* A transfer: the public part first, curl's below. */
struct bk_xfer {
    http_xfer x;
    bk_client *c;
    CURL *easy;
    char *body;
    size_t raw_cap;
    sse_parser sse;
    int mode;            /* 0 unknown, BK_MODE_SSE, BK_MODE_RAW */
    bool aborted;        /* our write callback stopped the transfer */
    uint64_t recv_bytes; /* body bytes received so far */
    bool done;
    char errbuf[CURL_ERROR_SIZE];
    bk_xfer *next_done;
    bk_xfer *all_prev, *all_next;
};

static void bk_set_error(bk_xfer *t, int code, bool transient, const char *fmt, const char *arg)
{
    if (t->x.err.code != LMSCHED_OK)
        return; /* the first error is the cause; later ones are consequences */
    t->x.err.code = code;
    t->x.err.transient = transient;
    snprintf(t->x.err.message, sizeof(t->x.err.message), fmt, arg);
}

static int bk_event_cb(void *arg, const char *event, const char *data, size_t len)
{
    bk_xfer *t = arg;
    http_xfer *x = &t->x;
    bool had_token = x->resp.got_token;
    oa_error e;
    (void)event;
    memset(&e, 0, sizeof(e));
    int rc = oa_resp_feed_chunk(&x->resp, data, len, &e);
    if (!had_token && x->resp.got_token)
        x->first_token_us = clock_now_us();
    if (rc != LMSCHED_OK) {
        if (x->err.code == LMSCHED_OK)
            x->err = e;
        if (x->err.code == LMSCHED_OK)
            x->err.code = rc;
        return 1;
    }
    return 0;
}

static int bk_raw_append(bk_xfer *t, const char *p, size_t n, size_t limit)
{
    http_xfer *x = &t->x;
    if (x->raw_len + n > limit)
        return -1;
    if (x->raw_len + n + 1 > t->raw_cap) {
        size_t cap = t->raw_cap ? t->raw_cap : 1024;
        while (cap < x->raw_len + n + 1)
            cap *= 2;
        char *r = realloc(x->raw, cap);
        if (r == NULL)
            return -1;
        x->raw = r;
        t->raw_cap = cap;
    }
    memcpy(x->raw + x->raw_len, p, n);
    x->raw_len += n;
    x->raw[x->raw_len] = '\0';
    return 0;
}

static size_t bk_write_cb(char *ptr, size_t size, size_t nmemb, void *ud)
{
    bk_xfer *t = ud;
    http_xfer *x = &t->x;
    size_t n = size * nmemb;
    if (t->mode == 0) {
        long status = 0;
        char *ctype = NULL;
        curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_getinfo(t->easy, CURLINFO_CONTENT_TYPE, &ctype);
        x->http_status = status;
        bool sse = ctype && strstr(ctype, "text/event-stream") != NULL;
        t->mode = (x->is_chat && status < 400 && sse) ? BK_MODE_SSE : BK_MODE_RAW;
    }
    /* A stream's memory is bounded by the parser, but not its length: a
     * server sending chunks forever would hold the slot until the request
     * timeout. Count every byte, whatever the mode. */
    t->recv_bytes += n;
    if (t->recv_bytes > t->c->o.max_response) {
        char lim[32];
        snprintf(lim, sizeof(lim), "%llu", (unsigned long long)t->c->o.max_response);
        bk_set_error(t, LMSCHED_ETOOLARGE, false,
                     "backend response larger than --max-response-bytes (%s bytes); "
                     "dropped", lim);
        t->aborted = true;
        return 0;
    }
    if (t->mode == BK_MODE_SSE) {
        int rc = sse_feed(&t->sse, ptr, n);
        if (rc == SSE_ETOOBIG) {
            bk_set_error(t, LMSCHED_EBACKEND_STREAM, false,
                         "backend sent an event larger than %s bytes", "1048576");
        } else if (rc == SSE_ENOMEM) {
            bk_set_error(t, LMSCHED_ENOMEM, false, "%s", "out of memory reading the stream");
        }
        if (rc != 0) {
            t->aborted = true;
            return 0;
        }
        return n;
    }
    size_t limit = x->http_status >= 400 ? BK_MAX_ERROR_BODY : t->c->o.max_body;
    if (bk_raw_append(t, ptr, n, limit) != 0) {
        if (x->http_status >= 400)
            return n; /* keep the start of an error page; drop the rest */
        char lim[32];
        snprintf(lim, sizeof(lim), "%zu", t->c->o.max_body);
        bk_set_error(t, LMSCHED_ETOOLARGE, false,
                     "backend response body larger than the limit (%s bytes); dropped", lim);
        t->aborted = true;
        return 0;
    }
    return n;
}

/* ---- targets -------------------------------------------------------------- */

static void bk_target_free(http_client *hc, http_target *t)
{
    (void)hc;
    if (t == NULL)
        return;
    curl_slist_free_all(t->json_headers);
    curl_slist_free_all(t->get_headers);
    free(t->base_url);
    free(t);
}

static int bk_target_alloc(http_client *hc, const char *base_url, const char *token,
                           http_target **tp)
{
    (void)hc;
    http_target *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return LMSCHED_ENOMEM;
    t->base_url = strdup(base_url);
    t->json_headers = curl_slist_append(NULL, "Content-Type: application/json");
    if (t->json_headers != NULL)
        t->json_headers =
            curl_slist_append(t->json_headers, "Accept: text/event-stream, application/json");
    t->get_headers = curl_slist_append(NULL, "Accept: application/json");
    if (t->base_url == NULL || t->json_headers == NULL || t->get_headers == NULL)
        goto fail;
    if (token != NULL && *token != '\0') {
        size_t len = strlen(token) + 32;
        char *h = malloc(len);
        if (h == NULL)
            goto fail;
        snprintf(h, len, "Authorization: Bearer %s", token);
        struct curl_slist *a = curl_slist_append(t->json_headers, h);
        struct curl_slist *b = a != NULL ? curl_slist_append(t->get_headers, h) : NULL;
        memset(h, 0, len); /* curl copied it; do not leave the token lying around */
        free(h);
        if (a == NULL || b == NULL)
            goto fail;
    }
    *tp = t;
    return LMSCHED_OK;
fail:
    bk_target_free(hc, t);
    return LMSCHED_ENOMEM;
}

/* ---- transfers ------------------------------------------------------------ */

static void bk_xfer_release(bk_xfer *t)
{
    bk_client *c = t->c;
    if (t->all_prev)
        t->all_prev->all_next = t->all_next;
    else if (c->all == t)
        c->all = t->all_next;
    if (t->all_next)
        t->all_next->all_prev = t->all_prev;
    if (t->easy) {
        curl_multi_remove_handle(c->multi, t->easy);
        if (c->n_pool < BK_EASY_POOL) {
            curl_easy_reset(t->easy);
            c->pool[c->n_pool++] = t->easy;
        } else {
            curl_easy_cleanup(t->easy);
        }
    }
    sse_fini(&t->sse);
    oa_resp_fini(&t->x.resp);
    free(t->x.raw);
    free(t->body);
    free(t);
}

static bk_xfer *bk_xfer_new(bk_client *c, http_target *tg, const char *path, void *owner,
                            int tag)
{
    bk_xfer *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    t->c = c;
    t->all_next = c->all;
    if (c->all)
        c->all->all_prev = t;
    c->all = t;
    t->x.owner = owner;
    t->x.tag = tag;
    oa_resp_init(&t->x.resp, c->o.max_content);
    sse_init(&t->sse, BK_MAX_EVENT, bk_event_cb, t);
    CURL *e = c->n_pool > 0 ? c->pool[--c->n_pool] : curl_easy_init();
    if (e == NULL) {
        bk_xfer_release(t);
        return NULL;
    }
    t->easy = e;
    size_t ulen = strlen(tg->base_url) + strlen(path) + 1;
    char *url = malloc(ulen);
    if (url == NULL) {
        bk_xfer_release(t);
        return NULL;
    }
    snprintf(url, ulen, "%s%s", tg->base_url, path);
    curl_easy_setopt(e, CURLOPT_URL, url);
    free(url); /* curl copies strings passed to setopt */
    curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)t);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, bk_write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->errbuf);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)c->o.connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    /* Local servers only: no proxy from the environment may capture the token. */
    curl_easy_setopt(e, CURLOPT_PROXY, "");
    t->x.start_us = clock_now_us();
    return t;
}

static int bk_add(bk_client *c, bk_xfer *t, http_xfer **xp)
{
    if (curl_multi_add_handle(c->multi, t->easy) != CURLM_OK) {
        bk_xfer_release(t);
        return LMSCHED_EINTERNAL;
    }
    *xp = &t->x;
    return LMSCHED_OK;
}

/* A JSON POST of body (taken over, freed on failure too) to path, with
 * this timeout; the caller says what kind of transfer it is. */
static bk_xfer *bk_post_new(bk_client *c, http_target *tg, const char *path, char *body,
                            void *owner, int tag, long timeout_ms)
{
    bk_xfer *t = bk_xfer_new(c, tg, path, owner, tag);
    if (t == NULL) {
        free(body);
        return NULL;
    }
    t->body = body;
    curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, tg->json_headers);
    curl_easy_setopt(t->easy, CURLOPT_POSTFIELDS, t->body);
    curl_easy_setopt(t->easy, CURLOPT_POSTFIELDSIZE, (long)strlen(t->body));
    curl_easy_setopt(t->easy, CURLOPT_TIMEOUT_MS, timeout_ms);
    return t;
}

static int bk_post_start(http_client *hc, http_target *tg, const char *path, char *body,
                         void *owner, http_xfer **xp)
{
    bk_client *c = (bk_client *)hc;
    bk_xfer *t = bk_post_new(c, tg, path, body, owner, 0, (long)c->o.request_timeout_ms);
    if (t == NULL)
        return LMSCHED_ENOMEM;
    t->x.is_chat = true;
    return bk_add(c, t, xp);
}

static long bk_probe_timeout(const bk_client *c)
{
    return c->o.request_timeout_ms < BK_PROBE_TIMEOUT_MS ? c->o.request_timeout_ms
                                                         : BK_PROBE_TIMEOUT_MS;
}

static int bk_get_start(http_client *hc, http_target *tg, const char *path, void *owner,
                        int tag, http_xfer **xp)
{
    bk_client *c = (bk_client *)hc;
    bk_xfer *t = bk_xfer_new(c, tg, path, owner, tag);
    if (t == NULL)
        return LMSCHED_ENOMEM;
    curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, tg->get_headers);
    curl_easy_setopt(t->easy, CURLOPT_TIMEOUT_MS, bk_probe_timeout(c));
    return bk_add(c, t, xp);
}

/* A side request: a chat's body and headers, a probe's raw answer and
 * timeout (is_chat stays false, so the write callback keeps the body). */
static int bk_post_json_start(http_client *hc, http_target *tg, const char *path, char *body,
                              void *owner, int tag, http_xfer **xp)
{
    bk_client *c = (bk_client *)hc;
    bk_xfer *t = bk_post_new(c, tg, path, body, owner, tag, bk_probe_timeout(c));
    if (t == NULL)
        return LMSCHED_ENOMEM;
    t->x.is_json = true;
    return bk_add(c, t, xp);
}

/* Decides the outcome of a finished transfer from curl's code, the HTTP
 * status and what the parser saw. */
static void bk_finish(bk_xfer *t, CURLcode rc)
{
    http_xfer *x = &t->x;
    x->end_us = clock_now_us();
    if (x->http_status == 0)
        curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &x->http_status);
    if (x->err.code != LMSCHED_OK)
        return; /* recorded while streaming: the real cause */
    if (rc != CURLE_OK) {
        oa_classify_curl((int)rc, t->errbuf, &x->err);
        if (x->is_chat && x->resp.got_token && x->err.code == LMSCHED_EBACKEND_STREAM) {
            /* The connection broke after the model had started answering:
             * say so, since the agent cannot tell from curl's words that
             * its answer was cut and will not be retried. */
            char why[sizeof(x->err.message)];
            snprintf(why, sizeof(why), "%s", x->err.message);
            snprintf(x->err.message, sizeof(x->err.message),
                     "the answer was cut: the backend stream broke after %zu bytes of "
                     "content; the partial answer was dropped and the request not retried "
                     "(%.300s)", x->resp.content_len, why);
            x->err.transient = false;
        }
        return;
    }
    if (x->http_status >= 400) {
        oa_classify_http(x->http_status, x->raw ? x->raw : "", x->raw_len, &x->err);
        return;
    }
    if (!x->is_chat)
        return;
    if (t->mode == BK_MODE_RAW) {
        /* The server ignored "stream": a whole completion. */
        int prc = oa_resp_parse_full(&x->resp, x->raw ? x->raw : "", x->raw_len, &x->err);
        if (prc != LMSCHED_OK && x->err.code == LMSCHED_OK)
            x->err.code = prc;
        if (x->resp.got_token && x->first_token_us == 0)
            x->first_token_us = x->end_us;
        return;
    }
    if (!x->resp.done && x->resp.finish_reason == NULL) {
        x->err.code = LMSCHED_EBACKEND_STREAM;
        x->err.transient = !x->resp.got_token;
        if (x->resp.got_token)
            snprintf(x->err.message, sizeof(x->err.message),
                     "the answer was cut: the backend stream ended in the middle of the "
                     "answer (after %zu bytes of content, with no finish reason); the partial "
                     "answer was dropped", x->resp.content_len);
        else
            snprintf(x->err.message, sizeof(x->err.message),
                     "backend stream ended before the first token");
    }
}

static void bk_collect(bk_client *c)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(c->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE)
            continue;
        bk_xfer *t = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&t);
        CURLcode rc = m->data.result;
        if (t == NULL || t->done)
            continue;
        bk_finish(t, rc);
        t->done = true;
        /* Off the multi now, so a later free does not touch a running handle. */
        curl_multi_remove_handle(c->multi, t->easy);
        t->next_done = NULL;
        if (c->done_tail)
            c->done_tail->next_done = t;
        else
            c->done_head = t;
        c->done_tail = t;
    }
}

static int bk_perform(http_client *hc)
{
    bk_client *c = (bk_client *)hc;
    int running;
    CURLMcode mc = curl_multi_perform(c->multi, &running);
    if (mc != CURLM_OK) {
        log_error("curl_multi_perform: %s", curl_multi_strerror(mc));
        return LMSCHED_EINTERNAL;
    }
    bk_collect(c);
    return LMSCHED_OK;
}

static int bk_poll(http_client *hc, int timeout_ms)
{
    bk_client *c = (bk_client *)hc;
    if (timeout_ms < 0)
        timeout_ms = 0;
    atomic_store(&c->sleeping, true);
    if (atomic_exchange(&c->wake_pending, false))
        timeout_ms = 0; /* woken while awake: look, do not wait */
    CURLMcode mc = curl_multi_poll(c->multi, NULL, 0, timeout_ms, NULL);
    atomic_store(&c->sleeping, false);
    /* A wakeup from before here is for the caller's next look (the loop's
     * inbox), which comes after this. An exchange, not a store: reading
     * the poster's flag orders what it posted before our look. */
    (void)atomic_exchange(&c->wake_pending, false);
    if (mc != CURLM_OK) {
        log_error("curl_multi_poll: %s", curl_multi_strerror(mc));
        return LMSCHED_EINTERNAL;
    }
    return bk_perform(hc);
}

static http_xfer *bk_done(http_client *hc)
{
    bk_client *c = (bk_client *)hc;
    bk_xfer *t = c->done_head;
    if (t == NULL)
        return NULL;
    c->done_head = t->next_done;
    if (c->done_head == NULL)
        c->done_tail = NULL;
    t->next_done = NULL;
    return &t->x;
}

static void bk_xfer_free(http_client *hc, http_xfer *x)
{
    bk_client *c = (bk_client *)hc;
    bk_xfer *t = (bk_xfer *)x;
    if (t->done) {
        /* Finished transfers are off the multi but may still sit on the done
         * list if the caller frees before popping; unlink it. */
        bk_xfer **pp = &c->done_head, *prev = NULL;
        while (*pp && *pp != t) {
            prev = *pp;
            pp = &(*pp)->next_done;
        }
        if (*pp == t) {
            *pp = t->next_done;
            if (c->done_tail == t)
                c->done_tail = prev;
        }
    }
    bk_xfer_release(t);
}

static void bk_wakeup(http_client *hc)
{
    bk_client *c = (bk_client *)hc;
    atomic_store(&c->wake_pending, true);
    if (atomic_load(&c->sleeping))
        curl_multi_wakeup(c->multi);
}

static void bk_free(http_client *hc)
{
    bk_client *c = (bk_client *)hc;
    /* Transfers still alive belong to callers being torn down with us. */
    while (c->all)
        bk_xfer_release(c->all);
    c->done_head = c->done_tail = NULL;
    while (c->n_pool > 0)
        curl_easy_cleanup(c->pool[--c->n_pool]);
    curl_multi_cleanup(c->multi);
    free(c);
}

static const http_ops bk_ops = {
    .target_alloc = bk_target_alloc,
    .target_free = bk_target_free,
    .post_start = bk_post_start,
    .get_start = bk_get_start,
    .post_json_start = bk_post_json_start,
    .poll = bk_poll,
    .perform = bk_perform,
    .done = bk_done,
    .xfer_free = bk_xfer_free,
    .wakeup = bk_wakeup,
    .free = bk_free,
};

int http_curl_alloc(http_client **cp, const http_opts *o)
{
    bk_client *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return LMSCHED_ENOMEM;
    c->base.ops = &bk_ops;
    c->o = *o;
    if (c->o.max_response == 0)
        c->o.max_response = c->o.max_body;
    c->multi = curl_multi_init();
    if (c->multi == NULL) {
        free(c);
        return LMSCHED_ENOMEM;
    }
    curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS, 64L);
    *cp = &c->base;
    return LMSCHED_OK;
}

/* ---- dispatch ------------------------------------------------------------- */

void http_free(http_client *c)
{
    if (c != NULL)
        c->ops->free(c);
}

int http_target_alloc(http_client *c, const char *base_url, const char *token,
                      http_target **tp)
{
    return c->ops->target_alloc(c, base_url, token, tp);
}

void http_target_free(http_client *c, http_target *t)
{
    if (t != NULL)
        c->ops->target_free(c, t);
}

int http_post_start(http_client *c, http_target *t, const char *path, char *body, void *owner,
                    http_xfer **xp)
{
    return c->ops->post_start(c, t, path, body, owner, xp);
}

int http_get_start(http_client *c, http_target *t, const char *path, void *owner, int tag,
                   http_xfer **xp)
{
    return c->ops->get_start(c, t, path, owner, tag, xp);
}

int http_post_json_start(http_client *c, http_target *t, const char *path, char *body,
                         void *owner, int tag, http_xfer **xp)
{
    if (c->ops->post_json_start == NULL) {
        free(body);
        return LMSCHED_EINTERNAL;
    }
    return c->ops->post_json_start(c, t, path, body, owner, tag, xp);
}

int http_poll(http_client *c, int timeout_ms)
{
    return c->ops->poll(c, timeout_ms);
}

int http_perform(http_client *c)
{
    return c->ops->perform(c);
}

http_xfer *http_done(http_client *c)
{
    return c->ops->done(c);
}

void http_xfer_free(http_client *c, http_xfer *x)
{
    if (x != NULL)
        c->ops->xfer_free(c, x);
}

void http_wakeup(http_client *c)
{
    c->ops->wakeup(c);
}
