/*
 * backend - one LLM server: probing, health, what it serves, and sending it
 * a chat request (see backend.h).
 */
#include "scheduler/backend/backend.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lmsched/wire.h"
#include "scheduler/util/log.h"

int backend_init(backend *b, http_client *http, const backend_config *cfg)
{
    memset(b, 0, sizeof(*b));
    snprintf(b->url, sizeof(b->url), "%s", cfg->url);
    if (strcmp(cfg->kind, "auto") != 0) {
        b->forced = dialect_find(cfg->kind);
        if (b->forced == NULL)
            return LMSCHED_EINVAL;
    }
    b->context_length = b->slots = b->size_bytes = -1;
    b->tokenizes = -1;
    b->probe_interval_us = (int64_t)cfg->probe_interval_ms * 1000;
    b->http = http;
    return http_target_alloc(http, b->url, cfg->token, &b->target);
}

void backend_fini(backend *b)
{
    if (b->probe != NULL)
        http_xfer_free(b->http, b->probe);
    b->probe = NULL;
    if (b->target != NULL)
        http_target_free(b->http, b->target);
    b->target = NULL;
}

const char *backend_kind_name(const backend *b)
{
    const dialect *d = b->forced != NULL ? b->forced : b->kind;
    return d != NULL ? d->name : "unknown";
}

bool backend_pins_slots(const backend *b)
{
    const dialect *d = b->forced != NULL ? b->forced : b->kind;
    return d != NULL && d->pins_slots;
}

/* ---- health --------------------------------------------------------------- */

unsigned backend_set_down(backend *b, const char *why, int64_t now_us)
{
    unsigned changed = b->healthy ? BACKEND_HEALTH : 0;
    if (b->healthy || strcmp(b->last_error, why) != 0)
        log_warn("backend %s unhealthy: %s", b->url, why);
    if (b->healthy || b->down_since_us == 0)
        b->down_since_us = now_us;
    b->healthy = false;
    snprintf(b->last_error, sizeof(b->last_error), "%s", why);
    /* A chat that could not connect marks it down between probes: probe
     * soon, so waiting requests go out as soon as it is back. */
    if (b->probe == NULL && b->next_probe_us > now_us + BACKEND_PROBE_RETRY_US)
        b->next_probe_us = now_us + BACKEND_PROBE_RETRY_US;
    return changed;
}

unsigned backend_set_failing(backend *b, const char *why, int64_t now_us)
{
    unsigned changed = backend_set_down(b, why, now_us);
    b->failing = true;
    if (b->probe == NULL)
        b->next_probe_us = now_us + BACKEND_PROBE_RETRY_US;
    return changed;
}

unsigned backend_set_up(backend *b)
{
    b->failing = false;
    if (b->healthy)
        return 0;
    /* At start-up the core's summary says it. */
    if (b->announce || b->down_since_us != 0)
        log_info("backend %s healthy (%s)", b->url, backend_kind_name(b));
    b->healthy = true;
    b->down_since_us = 0;
    b->last_error[0] = '\0';
    return BACKEND_HEALTH;
}

void backend_wanted(backend *b, int64_t now_us)
{
    if (b->healthy || b->probe != NULL || b->failing)
        return;
    int64_t soon = b->probe_started_us + BACKEND_PROBE_SOON_US;
    if (soon < now_us)
        soon = now_us;
    if (soon < b->next_probe_us)
        b->next_probe_us = soon;
}

/* ---- probing -------------------------------------------------------------- */

static void backend_probe_stage(backend *b, size_t stage, int64_t now_us)
{
    b->probe_stage = stage;
    b->probe_started_us = now_us;
    int rc = http_get_start(b->http, b->target, dialects[stage]->probe_path, b, (int)stage,
                            &b->probe);
    if (rc != LMSCHED_OK) {
        log_error("cannot start a probe of %s: %s", b->url, lmsched_strerror(rc));
        b->probe = NULL;
        b->next_probe_us = now_us + BACKEND_PROBE_RETRY_US;
    }
}

/* The stage a cycle starts with: the forced kind, else the kind learned so
 * far (keep probing that endpoint), else the first. */
static size_t backend_first_stage(const backend *b)
{
    const dialect *d = b->forced != NULL ? b->forced : b->kind;
    for (size_t i = 0; i < n_dialects; i++)
        if (dialects[i] == d)
            return i;
    return 0;
}

void backend_probe_start(backend *b, int64_t now_us)
{
    if (b->probe != NULL)
        return;
    b->probe_tried[0] = '\0';
    backend_probe_stage(b, backend_first_stage(b), now_us);
}

void backend_probe_tick(backend *b, int64_t now_us)
{
    if (b->probe == NULL && now_us >= b->next_probe_us)
        backend_probe_start(b, now_us);
}

bool backend_is_probe(const backend *b, const http_xfer *x)
{
    return x != NULL && x == b->probe;
}

int64_t backend_next_wake(const backend *b, int64_t now_us)
{
    /* A running probe ends by itself (its transfer wakes the loop); check
     * on it once a second anyway. */
    return b->probe != NULL ? now_us + 1000000 : b->next_probe_us;
}

/* Notes what one stage of the cycle got, for the message when none is
 * understood. */
static void backend_probe_note(backend *b, size_t stage, const http_xfer *x)
{
    size_t n = strlen(b->probe_tried);
    char what[64];
    if (x->http_status >= 400)
        snprintf(what, sizeof(what), "HTTP %ld", x->http_status);
    else if (x->http_status > 0)
        snprintf(what, sizeof(what), "HTTP %ld, not the JSON expected there", x->http_status);
    else
        snprintf(what, sizeof(what), "no answer");
    snprintf(b->probe_tried + n, sizeof(b->probe_tried) - n, "%sGET %s (%s)", n ? ", " : "",
             dialects[stage]->probe_path, what);
}

/* No stage of an `auto` cycle found an API it knows, though the server
 * answers HTTP: most likely a wrong URL (a path that is not the server's
 * root). Unhealthy, so dispatch pauses and requests that give up waiting
 * say why, rather than each failing with a 404 of its own. */
static unsigned backend_found_nothing(backend *b, int64_t now_us)
{
    char why[sizeof(b->url) + sizeof(b->probe_tried) + 256];
    int n = snprintf(why, sizeof(why),
                     "no LLM server API found at %s: tried %s; check the URL (the server's "
                     "root, without /v1: lmsched adds the API paths itself), or pass "
                     "--backend-kind openai to skip this check",
                     b->url, b->probe_tried);
    (void)n; /* bounded by why's size; a cut message is still the right one */
    b->kind = NULL;
    unsigned changed = backend_set_down(b, why, now_us);
    b->next_probe_us = now_us + BACKEND_PROBE_RETRY_US;
    return changed;
}

/* The probe's body parsed: take what the server says about its model. */
static unsigned backend_learn(backend *b, const dialect *d, const oa_model_info *mi)
{
    unsigned changed = 0;
    const char *model = mi->model != NULL ? mi->model : "";
    if (b->kind != d || strcmp(b->model, model) != 0 || b->size_bytes != mi->size_bytes ||
        b->context_length != mi->context_length || b->slots != mi->parallel)
        changed |= BACKEND_INFO;
    /* Another kind or model (a server restarted, maybe a newer build): ask
     * it for counts again. */
    if (b->kind != d || strcmp(b->model, model) != 0)
        b->tokenizes = -1;
    b->kind = d;
    snprintf(b->model, sizeof(b->model), "%s", model);
    b->size_bytes = mi->size_bytes;
    b->context_length = mi->context_length;
    b->slots = mi->parallel;
    return changed;
}

unsigned backend_probe_done(backend *b, http_xfer *x, int64_t now_us)
{
    size_t stage = b->probe_stage;
    const dialect *d = dialects[stage];
    bool forced = b->forced != NULL;
    unsigned changed = 0;

    b->probe = NULL;
    b->checked_us = now_us;
    log_debug("probe GET %s: HTTP %ld after %" PRId64 " ms%s%s", d->probe_path,
              x->http_status, (now_us - x->start_us) / 1000, x->err.code ? ": " : "",
              x->err.code ? x->err.message : "");

    if (x->err.code == LMSCHED_OK) {
        oa_model_info mi;
        oa_model_info_init(&mi);
        int rc = d->parse(x->raw ? x->raw : "", x->raw_len, &mi);
        if (rc == LMSCHED_OK || rc == LMSCHED_EINVAL) {
            if (rc == LMSCHED_EINVAL)
                log_warn("%s answers but has no model loaded; it loads one on the first "
                         "request (just-in-time loading)", b->url);
            changed |= backend_learn(b, d, &mi);
            changed |= backend_set_up(b);
            oa_model_info_fini(&mi);
            b->next_probe_us = now_us + b->probe_interval_us;
            goto out;
        }
        oa_model_info_fini(&mi);
        backend_probe_note(b, stage, x);
        /* Answered, but not in this dialect: try the next one. */
        if (!forced && stage + 1 < n_dialects) {
            backend_probe_stage(b, stage + 1, now_us);
            goto out;
        }
        if (!forced) {
            changed |= backend_found_nothing(b, now_us);
            goto out;
        }
        changed |= backend_set_up(b); /* it answers HTTP; chat may still work */
        b->next_probe_us = now_us + b->probe_interval_us;
        goto out;
    }
    if (x->err.code == LMSCHED_EBACKEND_HTTP || x->err.code == LMSCHED_EAUTH) {
        if (x->err.code == LMSCHED_EAUTH)
            log_warn("backend %s refused the probe: %s (set LM_API_TOKEN)", b->url,
                     x->err.message);
        backend_probe_note(b, stage, x);
        if (!forced && stage + 1 < n_dialects && x->err.code != LMSCHED_EAUTH) {
            backend_probe_stage(b, stage + 1, now_us);
            goto out;
        }
        if (!forced && x->err.code != LMSCHED_EAUTH) {
            changed |= backend_found_nothing(b, now_us);
            goto out;
        }
        changed |= backend_set_up(b);
        b->next_probe_us = now_us + b->probe_interval_us;
        goto out;
    }
    if (x->http_status > 0) {
        /* It answered HTTP, with a body we could not use (too large, cut):
         * reachable. Chat may still work; do not pause dispatch for it. */
        changed |= backend_set_up(b);
        b->next_probe_us = now_us + b->probe_interval_us;
        goto out;
    }
    changed |= backend_set_down(b, x->err.message, now_us);
    b->next_probe_us = now_us + BACKEND_PROBE_RETRY_US;
out:
    http_xfer_free(b->http, x);
    return changed;
}

/* ---- chat ----------------------------------------------------------------- */

/* The body r is sent with (the chat, and the template of its count). */
static char *backend_chat_body(const backend *b, const chat_req *r,
                               const backend_chat_opts *o, bool stream)
{
    oa_body_opts bo = {
        .stream = stream,
        .cache_prompt = o->cache_prompt,
        .model = b->model[0] ? b->model : NULL,
        .max_tokens = o->max_tokens,
        .id_slot = backend_pins_slots(b) ? o->slot : -1,
    };
    return oa_build_chat_body(r, &bo);
}

int backend_chat_start(backend *b, const chat_req *r, const backend_chat_opts *o, void *owner,
                       http_xfer **xp)
{
    char *body = backend_chat_body(b, r, o, true);
    if (body == NULL)
        return LMSCHED_ENOMEM;
    return http_post_start(b->http, b->target, "/v1/chat/completions", body, owner, xp);
}

/* ---- exact token counts ------------------------------------------------------ */

bool backend_counts_tokens(const backend *b)
{
    const dialect *d = b->forced != NULL ? b->forced : b->kind;
    return d != NULL && d->tokenizes && b->tokenizes != 0;
}

int backend_count_start(backend *b, const chat_req *r, const backend_chat_opts *o,
                        void *owner, http_xfer **xp)
{
    /* The same body as the chat's: the template sees the same messages,
     * tools and options (stream and id_slot do not change the prompt). */
    char *body = backend_chat_body(b, r, o, true);
    if (body == NULL)
        return LMSCHED_ENOMEM;
    return http_post_json_start(b->http, b->target, "/apply-template", body, owner,
                                BACKEND_TAG_TEMPLATE, xp);
}

/* b answered path in a way that says it cannot count (an old build, a
 * proxy, another server behind a llama.cpp URL): asked no more. */
static void backend_no_counts(backend *b, const char *path, const http_xfer *x)
{
    if (b->tokenizes != 0)
        log_info("backend %s cannot count tokens (POST %s: %s%ld); reservations use the "
                 "estimate", b->url, path, x->http_status >= 400 ? "HTTP " : "an answer "
                 "not understood, HTTP ", x->http_status);
    b->tokenizes = 0;
}

int backend_count_step(backend *b, http_xfer *x, void *owner, http_xfer **next,
                       int64_t *tokens)
{
    const char *path = x->tag == BACKEND_TAG_TEMPLATE ? "/apply-template" : "/tokenize";
    int rc = BACKEND_COUNT_FAILED;
    *next = NULL;
    if (x->err.code != LMSCHED_OK) {
        long st = x->http_status;
        if (st == 404 || st == 405 || st == 501)
            backend_no_counts(b, path, x);
        else
            log_debug("backend %s: POST %s failed: %s", b->url, path, x->err.message);
        goto out;
    }
    if (x->tag == BACKEND_TAG_TEMPLATE) {
        char *prompt = NULL;
        int prc = oa_parse_template(x->raw, x->raw_len, &prompt);
        if (prc == LMSCHED_EBACKEND_STREAM)
            backend_no_counts(b, path, x);
        if (prc != LMSCHED_OK)
            goto out;
        char *body = oa_build_tokenize_body(prompt);
        free(prompt);
        if (body == NULL)
            goto out;
        if (http_post_json_start(b->http, b->target, "/tokenize", body, owner,
                                 BACKEND_TAG_TOKENIZE, next) != LMSCHED_OK) {
            *next = NULL;
            goto out;
        }
        rc = BACKEND_COUNT_NEXT;
        goto out;
    }
    if (oa_parse_token_count(x->raw, x->raw_len, tokens) != LMSCHED_OK) {
        backend_no_counts(b, path, x);
        goto out;
    }
    b->tokenizes = 1;
    rc = BACKEND_COUNT_DONE;
out:
    http_xfer_free(b->http, x);
    return rc;
}
