/*
 * fake_http - the core's unit tests' HTTP client (see fake_http.h).
 */
#include "fake_http.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lmsched/wire.h"
#include "scheduler/util/clock.h"

#define FAKE_ROUTES 8
#define FAKE_XFERS 256

typedef struct fake_xfer {
    http_xfer x; /* first */
    char *body;
    bool finishing; /* completes on the next perform */
    long status;
    char *reply;
    int curlcode;
    struct fake_xfer *next;
} fake_xfer;

struct http_target {
    int unused;
};

struct fake_http {
    http_client base;
    struct {
        char path[64];
        long status;
        char *body;
    } routes[FAKE_ROUTES];
    size_t n_routes;
    fake_xfer *pending[FAKE_XFERS]; /* chat transfers not finished, in order */
    size_t n_pending;
    fake_xfer *gets[FAKE_XFERS];    /* probes, answered on the next perform */
    size_t n_gets;
    fake_xfer *jsons[FAKE_XFERS];   /* JSON POSTs: answered on the next perform, unless held */
    size_t n_jsons;
    bool hold_json;
    unsigned n_json_total;
    fake_xfer *done[FAKE_XFERS * 3];
    size_t n_done;
    unsigned posts, n_get_total;
    void (*on_post)(void *arg);
    void *on_post_arg;
    struct http_target target;
};

static int f_target_alloc(http_client *hc, const char *url, const char *tok, http_target **tp)
{
    (void)url;
    (void)tok;
    *tp = &((fake_http *)hc)->target;
    return LMSCHED_OK;
}

static void f_target_free(http_client *hc, http_target *t)
{
    (void)hc;
    (void)t;
}

static fake_xfer *f_new(void *owner, int tag)
{
    fake_xfer *t = calloc(1, sizeof(*t));
    t->x.owner = owner;
    t->x.tag = tag;
    t->x.start_us = clock_now_us();
    oa_resp_init(&t->x.resp, LMSCHED_MAX_TEXT_BYTES);
    return t;
}

static int f_post_start(http_client *hc, http_target *t, const char *path, char *body,
                        void *owner, http_xfer **xp)
{
    fake_http *f = (fake_http *)hc;
    (void)t;
    (void)path;
    if (f->n_pending >= FAKE_XFERS) {
        free(body);
        return LMSCHED_ENOMEM;
    }
    if (f->on_post != NULL)
        f->on_post(f->on_post_arg);
    fake_xfer *x = f_new(owner, 0);
    x->x.is_chat = true;
    x->body = body;
    f->pending[f->n_pending++] = x;
    f->posts++;
    *xp = &x->x;
    return LMSCHED_OK;
}

/* x's answer from the route table. */
static void f_answer(fake_http *f, fake_xfer *x, const char *path)
{
    x->status = 404;
    for (size_t i = 0; i < f->n_routes; i++) {
        if (strcmp(f->routes[i].path, path) == 0) {
            x->status = f->routes[i].status;
            free(x->reply);
            x->reply = f->routes[i].body ? strdup(f->routes[i].body) : NULL;
        }
    }
    if (x->status == 0)
        x->curlcode = 7; /* CURLE_COULDNT_CONNECT */
}

static int f_post_json_start(http_client *hc, http_target *t, const char *path, char *body,
                             void *owner, int tag, http_xfer **xp)
{
    fake_http *f = (fake_http *)hc;
    (void)t;
    if (f->n_jsons >= FAKE_XFERS) {
        free(body);
        return LMSCHED_ENOMEM;
    }
    fake_xfer *x = f_new(owner, tag);
    x->x.is_json = true;
    x->body = body;
    f_answer(f, x, path);
    f->jsons[f->n_jsons++] = x;
    f->n_json_total++;
    *xp = &x->x;
    return LMSCHED_OK;
}

static int f_get_start(http_client *hc, http_target *t, const char *path, void *owner, int tag,
                       http_xfer **xp)
{
    fake_http *f = (fake_http *)hc;
    (void)t;
    fake_xfer *x = f_new(owner, tag);
    f_answer(f, x, path);
    f->gets[f->n_gets++] = x;
    f->n_get_total++;
    *xp = &x->x;
    return LMSCHED_OK;
}

/* What a finished transfer looks like to the loop, as http.c makes it. */
static void f_complete(fake_http *f, fake_xfer *t)
{
    http_xfer *x = &t->x;
    x->end_us = clock_now_us();
    x->http_status = t->status;
    if (t->reply != NULL) {
        x->raw = t->reply;
        x->raw_len = strlen(t->reply);
        t->reply = NULL;
    }
    if (t->status == 0) {
        oa_classify_curl(t->curlcode, "fake", &x->err);
    } else if (t->status >= 400) {
        oa_classify_http(t->status, x->raw ? x->raw : "", x->raw_len, &x->err);
    } else if (x->is_chat) {
        oa_resp_parse_full(&x->resp, x->raw ? x->raw : "", x->raw_len, &x->err);
        if (x->resp.got_token)
            x->first_token_us = x->end_us;
    }
    f->done[f->n_done++] = t;
}

static int f_perform(http_client *hc)
{
    fake_http *f = (fake_http *)hc;
    for (size_t i = 0; i < f->n_gets; i++)
        f_complete(f, f->gets[i]);
    f->n_gets = 0;
    if (!f->hold_json) {
        for (size_t i = 0; i < f->n_jsons; i++)
            f_complete(f, f->jsons[i]);
        f->n_jsons = 0;
    }
    size_t k = 0;
    for (size_t i = 0; i < f->n_pending; i++) {
        if (f->pending[i]->finishing)
            f_complete(f, f->pending[i]);
        else
            f->pending[k++] = f->pending[i];
    }
    f->n_pending = k;
    return LMSCHED_OK;
}

static int f_poll(http_client *hc, int timeout_ms)
{
    (void)timeout_ms;
    return f_perform(hc);
}

static http_xfer *f_done(http_client *hc)
{
    fake_http *f = (fake_http *)hc;
    if (f->n_done == 0)
        return NULL;
    fake_xfer *t = f->done[0];
    memmove(f->done, f->done + 1, (f->n_done - 1) * sizeof(f->done[0]));
    f->n_done--;
    return &t->x;
}

static void f_release(fake_xfer *t)
{
    oa_resp_fini(&t->x.resp);
    free(t->x.raw);
    free(t->reply);
    free(t->body);
    free(t);
}

static void f_remove(fake_xfer **arr, size_t *n, fake_xfer *t)
{
    for (size_t i = 0; i < *n; i++) {
        if (arr[i] == t) {
            memmove(arr + i, arr + i + 1, (*n - i - 1) * sizeof(arr[0]));
            (*n)--;
            return;
        }
    }
}

static void f_xfer_free(http_client *hc, http_xfer *x)
{
    fake_http *f = (fake_http *)hc;
    fake_xfer *t = (fake_xfer *)x;
    f_remove(f->pending, &f->n_pending, t);
    f_remove(f->gets, &f->n_gets, t);
    f_remove(f->jsons, &f->n_jsons, t);
    f_remove(f->done, &f->n_done, t);
    f_release(t);
}

static void f_wakeup(http_client *hc)
{
    (void)hc;
}

static void f_free(http_client *hc)
{
    fake_http *f = (fake_http *)hc;
    for (size_t i = 0; i < f->n_pending; i++)
        f_release(f->pending[i]);
    for (size_t i = 0; i < f->n_gets; i++)
        f_release(f->gets[i]);
    for (size_t i = 0; i < f->n_jsons; i++)
        f_release(f->jsons[i]);
    for (size_t i = 0; i < f->n_done; i++)
        f_release(f->done[i]);
    for (size_t i = 0; i < f->n_routes; i++)
        free(f->routes[i].body);
    free(f);
}

static const http_ops f_ops = {
    .target_alloc = f_target_alloc,
    .target_free = f_target_free,
    .post_start = f_post_start,
    .get_start = f_get_start,
    .post_json_start = f_post_json_start,
    .poll = f_poll,
    .perform = f_perform,
    .done = f_done,
    .xfer_free = f_xfer_free,
    .wakeup = f_wakeup,
    .free = f_free,
};

fake_http *fake_http_new(http_client **hcp)
{
    fake_http *f = calloc(1, sizeof(*f));
    f->base.ops = &f_ops;
    *hcp = &f->base;
    return f;
}

void fake_http_route(fake_http *f, const char *path, long status, const char *body)
{
    size_t i = 0;
    while (i < f->n_routes && strcmp(f->routes[i].path, path) != 0)
        i++;
    if (i == f->n_routes)
        f->n_routes++;
    snprintf(f->routes[i].path, sizeof(f->routes[i].path), "%s", path);
    f->routes[i].status = status;
    free(f->routes[i].body);
    f->routes[i].body = body ? strdup(body) : NULL;
}

size_t fake_http_pending(const fake_http *f)
{
    size_t n = 0;
    for (size_t i = 0; i < f->n_pending; i++)
        n += !f->pending[i]->finishing;
    return n;
}

static fake_xfer *f_nth(const fake_http *f, size_t i)
{
    for (size_t k = 0; k < f->n_pending; k++)
        if (!f->pending[k]->finishing && i-- == 0)
            return f->pending[k];
    return NULL;
}

const char *fake_http_body(const fake_http *f, size_t i)
{
    fake_xfer *t = f_nth(f, i);
    return t != NULL ? t->body : NULL;
}

unsigned fake_http_posts(const fake_http *f)
{
    return f->posts;
}

unsigned fake_http_gets(const fake_http *f)
{
    return f->n_get_total;
}

unsigned fake_http_json_posts(const fake_http *f)
{
    return f->n_json_total;
}

size_t fake_http_json_pending(const fake_http *f)
{
    return f->n_jsons;
}

void fake_http_hold_json(fake_http *f, bool hold)
{
    f->hold_json = hold;
}

void fake_http_on_post(fake_http *f, void (*fn)(void *arg), void *arg)
{
    f->on_post = fn;
    f->on_post_arg = arg;
}

void fake_http_finish(fake_http *f, size_t i, long status, const char *body, int curlcode)
{
    fake_xfer *t = f_nth(f, i);
    if (t == NULL)
        return;
    t->finishing = true;
    t->status = status;
    t->reply = body ? strdup(body) : NULL;
    t->curlcode = curlcode;
}

const char *fake_http_completion(const char *content, int prompt_tokens, int cached_tokens)
{
    static char buf[4096];
    snprintf(buf, sizeof(buf),
             "{\"id\":\"x\",\"object\":\"chat.completion\",\"model\":\"fake\",\"choices\":[{"
             "\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"%s\"},"
             "\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":%d,"
             "\"completion_tokens\":3,\"prompt_tokens_details\":{\"cached_tokens\":%d}}}",
             content, prompt_tokens, cached_tokens);
    return buf;
}
