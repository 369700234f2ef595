/*
 * backend - libcurl multi side of the LLM server connection.
 *
 * Design notes: every transfer is a curl easy handle in one multi handle
 * owned by the loop thread. Streamed chat responses are parsed inside curl's
 * write callback (SSE framing, then one JSON chunk at a time), so memory per
 * request is bounded by the content limit, not by the stream length. The
 * write callback never calls curl_multi_* (that would be a recursive API
 * call); to stop a transfer it returns 0, which curl reports as
 * CURLE_WRITE_ERROR, and the error it recorded wins over that code.
 * Finished transfers are collected from curl_multi_info_read onto a done
 * list that backend_done pops.
 */
#include "scheduler/backend/http.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scheduler/util/clock.h"
#include "scheduler/util/log.h"

/* Largest single SSE event we accept; a chat chunk is a few hundred bytes. */
#define BK_MAX_EVENT (1u << 20)
/* Error bodies are kept short: they only feed a message. */
#define BK_MAX_ERROR_BODY (64u * 1024)
#define BK_MODE_SSE 1
#define BK_MODE_RAW 2

struct backend {
    CURLM *multi;
    char *base_url;
    struct curl_slist *json_headers;  /* Content-Type, Accept, Authorization */
    struct curl_slist *get_headers;   /* Accept, Authorization */
    int connect_timeout_ms;
    int request_timeout_ms;
    size_t max_body;
    size_t max_content;
    uint64_t max_response;
    bk_xfer *done_head, *done_tail;
    bk_xfer *all;                     /* every live transfer */
};

static void bk_set_error(bk_xfer *x, int code, bool transient, const char *fmt, const char *arg)
{
    if (x->err.code != LMSCHED_OK)
        return; /* the first error is the cause; later ones are consequences */
    x->err.code = code;
    x->err.transient = transient;
    snprintf(x->err.message, sizeof(x->err.message), fmt, arg);
}

static int bk_event_cb(void *arg, const char *event, const char *data, size_t len)
{
    bk_xfer *x = arg;
    bool had_token = x->resp.got_token;
    oa_error e;
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

static int bk_raw_append(bk_xfer *x, const char *p, size_t n, size_t limit)
{
    if (x->raw_len + n > limit)
        return -1;
    if (x->raw_len + n + 1 > x->raw_cap) {
        size_t cap = x->raw_cap ? x->raw_cap : 1024;
        while (cap < x->raw_len + n + 1)
            cap *= 2;
        char *r = realloc(x->raw, cap);
        if (r == NULL)
            return -1;
        x->raw = r;
        x->raw_cap = cap;
    }
    memcpy(x->raw + x->raw_len, p, n);
    x->raw_len += n;
    x->raw[x->raw_len] = '\0';
    return 0;
}

static size_t bk_write_cb(char *ptr, size_t size, size_t nmemb, void *ud)
{
    bk_xfer *x = ud;
    size_t n = size * nmemb;
    if (x->mode == 0) {
        long status = 0;
        char *ctype = NULL;
        curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_getinfo(x->easy, CURLINFO_CONTENT_TYPE, &ctype);
        x->http_status = status;
        bool sse = ctype && strstr(ctype, "text/event-stream") != NULL;
        x->mode = (x->is_chat && status < 400 && sse) ? BK_MODE_SSE : BK_MODE_RAW;
    }
    /* A stream's memory is bounded by the parser, but not its length: a
     * server sending chunks forever would hold the slot until the request
     * timeout. Count every byte, whatever the mode. */
    x->recv_bytes += n;
    if (x->recv_bytes > x->bk->max_response) {
        char lim[32];
        snprintf(lim, sizeof(lim), "%llu", (unsigned long long)x->bk->max_response);
        bk_set_error(x, LMSCHED_ETOOLARGE, false,
                     "backend response larger than --max-response-bytes (%s bytes); "
                     "dropped", lim);
        x->aborted = true;
        return 0;
    }
    if (x->mode == BK_MODE_SSE) {
        int rc = sse_feed(&x->sse, ptr, n);
        if (rc == SSE_ETOOBIG) {
            bk_set_error(x, LMSCHED_EBACKEND_STREAM, false,
                         "backend sent an event larger than %s bytes", "1048576");
        } else if (rc == SSE_ENOMEM) {
            bk_set_error(x, LMSCHED_ENOMEM, false, "%s", "out of memory reading the stream");
        }
        if (rc != 0) {
            x->aborted = true;
            return 0;
        }
        return n;
    }
    size_t limit = x->http_status >= 400 ? BK_MAX_ERROR_BODY : x->bk->max_body;
    if (bk_raw_append(x, ptr, n, limit) != 0) {
        if (x->http_status >= 400)
            return n; /* keep the start of an error page; drop the rest */
        char lim[32];
        snprintf(lim, sizeof(lim), "%zu", x->bk->max_body);
        bk_set_error(x, LMSCHED_ETOOLARGE, false,
                     "backend response body larger than the limit (%s bytes); dropped", lim);
        x->aborted = true;
        return 0;
    }
    return n;
}

int backend_alloc(backend **bp, const backend_opts *opts)
{
    backend *b = calloc(1, sizeof(*b));
    if (b == NULL)
        return LMSCHED_ENOMEM;
    b->multi = curl_multi_init();
    b->base_url = strdup(opts->base_url);
    if (b->multi == NULL || b->base_url == NULL)
        goto fail;
    b->connect_timeout_ms = opts->connect_timeout_ms;
    b->request_timeout_ms = opts->request_timeout_ms;
    b->max_body = opts->max_body;
    b->max_content = opts->max_content;
    b->max_response = opts->max_response ? opts->max_response : opts->max_body;
    curl_multi_setopt(b->multi, CURLMOPT_MAXCONNECTS, 64L);

    b->json_headers = curl_slist_append(NULL, "Content-Type: application/json");
    b->json_headers = curl_slist_append(b->json_headers, "Accept: text/event-stream, application/json");
    b->get_headers = curl_slist_append(NULL, "Accept: application/json");
    if (b->json_headers == NULL || b->get_headers == NULL)
        goto fail;
    if (opts->token && *opts->token) {
        size_t len = strlen(opts->token) + 32;
        char *h = malloc(len);
        if (h == NULL)
            goto fail;
        snprintf(h, len, "Authorization: Bearer %s", opts->token);
        b->json_headers = curl_slist_append(b->json_headers, h);
        b->get_headers = curl_slist_append(b->get_headers, h);
        memset(h, 0, len); /* curl copied it; do not leave the token lying around */
        free(h);
    }
    *bp = b;
    return LMSCHED_OK;
fail:
    backend_free(b);
    return LMSCHED_ENOMEM;
}

static void bk_xfer_release(bk_xfer *x)
{
    backend *b = x->bk;
    if (x->all_prev)
        x->all_prev->all_next = x->all_next;
    else if (b && b->all == x)
        b->all = x->all_next;
    if (x->all_next)
        x->all_next->all_prev = x->all_prev;
    if (x->easy) {
        curl_multi_remove_handle(x->bk->multi, x->easy);
        curl_easy_cleanup(x->easy);
    }
    sse_fini(&x->sse);
    oa_resp_fini(&x->resp);
    free(x->raw);
    free(x->body);
    free(x);
}

void backend_free(backend *b)
{
    if (b == NULL)
        return;
    /* Transfers still alive belong to callers being torn down with us. */
    while (b->all)
        bk_xfer_release(b->all);
    b->done_head = b->done_tail = NULL;
    curl_multi_cleanup(b->multi);
    curl_slist_free_all(b->json_headers);
    curl_slist_free_all(b->get_headers);
    free(b->base_url);
    free(b);
}

static bk_xfer *bk_xfer_new(backend *b, const char *path, void *owner, int tag)
{
    bk_xfer *x = calloc(1, sizeof(*x));
    if (x == NULL)
        return NULL;
    x->bk = b;
    x->all_next = b->all;
    if (b->all)
        b->all->all_prev = x;
    b->all = x;
    x->owner = owner;
    x->tag = tag;
    oa_resp_init(&x->resp, b->max_content);
    sse_init(&x->sse, BK_MAX_EVENT, bk_event_cb, x);
    CURL *e = curl_easy_init();
    if (e == NULL) {
        bk_xfer_release(x);
        return NULL;
    }
    x->easy = e;
    size_t ulen = strlen(b->base_url) + strlen(path) + 1;
    char *url = malloc(ulen);
    if (url == NULL) {
        bk_xfer_release(x);
        return NULL;
    }
    snprintf(url, ulen, "%s%s", b->base_url, path);
    curl_easy_setopt(e, CURLOPT_URL, url);
    free(url); /* curl copies strings passed to setopt */
    curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)x);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, bk_write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)b->connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    /* Local servers only: no proxy from the environment may capture the token. */
    curl_easy_setopt(e, CURLOPT_PROXY, "");
    x->start_us = clock_now_us();
    return x;
}

static int bk_add(backend *b, bk_xfer *x, bk_xfer **xp)
{
    if (curl_multi_add_handle(b->multi, x->easy) != CURLM_OK) {
        bk_xfer_release(x);
        return LMSCHED_EINTERNAL;
    }
    *xp = x;
    return LMSCHED_OK;
}

int backend_chat_start(backend *b, const lms_chat_req *req, const oa_body_opts *opts,
                       void *owner, bk_xfer **xp)
{
    bk_xfer *x = bk_xfer_new(b, "/v1/chat/completions", owner, 0);
    if (x == NULL)
        return LMSCHED_ENOMEM;
    x->is_chat = true;
    x->body = oa_build_chat_body(req, opts);
    if (x->body == NULL) {
        bk_xfer_release(x);
        return LMSCHED_ENOMEM;
    }
    curl_easy_setopt(x->easy, CURLOPT_HTTPHEADER, b->json_headers);
    curl_easy_setopt(x->easy, CURLOPT_POSTFIELDS, x->body);
    curl_easy_setopt(x->easy, CURLOPT_POSTFIELDSIZE, (long)strlen(x->body));
    curl_easy_setopt(x->easy, CURLOPT_TIMEOUT_MS, (long)b->request_timeout_ms);
    return bk_add(b, x, xp);
}

int backend_get_start(backend *b, const char *path, void *owner, int tag, bk_xfer **xp)
{
    bk_xfer *x = bk_xfer_new(b, path, owner, tag);
    if (x == NULL)
        return LMSCHED_ENOMEM;
    curl_easy_setopt(x->easy, CURLOPT_HTTPHEADER, b->get_headers);
    long to = b->request_timeout_ms < 5000 ? b->request_timeout_ms : 5000;
    curl_easy_setopt(x->easy, CURLOPT_TIMEOUT_MS, to);
    return bk_add(b, x, xp);
}

/* Decides the outcome of a finished transfer from curl's code, the HTTP
 * status and what the parser saw. */
static void bk_finish(bk_xfer *x, CURLcode rc)
{
    x->end_us = clock_now_us();
    if (x->http_status == 0)
        curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &x->http_status);
    if (x->err.code != LMSCHED_OK)
        return; /* recorded while streaming: the real cause */
    if (rc != CURLE_OK) {
        oa_classify_curl((int)rc, x->errbuf, &x->err);
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
    if (x->mode == BK_MODE_RAW) {
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

static void bk_collect(backend *b)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(b->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE)
            continue;
        bk_xfer *x = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
        CURLcode rc = m->data.result;
        if (x == NULL || x->done)
            continue;
        bk_finish(x, rc);
        x->done = true;
        /* Off the multi now, so a later free does not touch a running handle. */
        curl_multi_remove_handle(b->multi, x->easy);
        x->next_done = NULL;
        if (b->done_tail)
            b->done_tail->next_done = x;
        else
            b->done_head = x;
        b->done_tail = x;
    }
}

int backend_perform(backend *b)
{
    int running;
    CURLMcode mc = curl_multi_perform(b->multi, &running);
    if (mc != CURLM_OK) {
        log_error("curl_multi_perform: %s", curl_multi_strerror(mc));
        return LMSCHED_EINTERNAL;
    }
    bk_collect(b);
    return LMSCHED_OK;
}

int backend_poll(backend *b, int timeout_ms)
{
    if (timeout_ms < 0)
        timeout_ms = 0;
    CURLMcode mc = curl_multi_poll(b->multi, NULL, 0, timeout_ms, NULL);
    if (mc != CURLM_OK) {
        log_error("curl_multi_poll: %s", curl_multi_strerror(mc));
        return LMSCHED_EINTERNAL;
    }
    return backend_perform(b);
}

bk_xfer *backend_done(backend *b)
{
    bk_xfer *x = b->done_head;
    if (x) {
        b->done_head = x->next_done;
        if (b->done_head == NULL)
            b->done_tail = NULL;
        x->next_done = NULL;
    }
    return x;
}

void backend_xfer_free(bk_xfer *x)
{
    if (x == NULL)
        return;
    if (x->done) {
        /* Finished transfers are off the multi but may still sit on the done
         * list if the caller frees before popping; unlink it. */
        backend *b = x->bk;
        bk_xfer **pp = &b->done_head, *prev = NULL;
        while (*pp && *pp != x) {
            prev = *pp;
            pp = &(*pp)->next_done;
        }
        if (*pp == x) {
            *pp = x->next_done;
            if (b->done_tail == x)
                b->done_tail = prev;
        }
    }
    bk_xfer_release(x);
}

void backend_wakeup(backend *b)
{
    curl_multi_wakeup(b->multi);
}
