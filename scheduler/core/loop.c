/*
 * loop - the scheduler's single thread of control.
 *
 * Design notes:
 * - Inbox. nng callbacks (request arrived, reply sent, agent gone) and the
 *   signal thread append a sched_event under inbox_mtx and call
 *   backend_wakeup (curl_multi_wakeup), which is safe from any thread.
 *   Wakeups coalesce; each turn drains the whole inbox.
 * - One turn: drain inbox -> run curl -> handle finished transfers -> retry
 *   timers -> expire queued deadlines -> dispatch -> probe timer -> sleep in
 *   curl_multi_poll until the earliest of those deadlines.
 * - Exactly one reply per accepted request: every path that ends a job goes
 *   through job_finish, which sends the reply and frees the job. A request
 *   that could not be decoded gets an error reply straight away.
 * - Retries: a transient backend error (connection refused, "Channel Error",
 *   5xx, a stream cut before the first token) is retried with exponential
 *   backoff while the job keeps its concurrency slot; once any token has been
 *   streamed the error goes to the agent, since a retry would restart the
 *   answer.
 */
#include "scheduler/core/loop.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scheduler/util/clock.h"
#include "scheduler/memory/gguf.h"
#include "scheduler/util/log.h"

enum ev_type { EV_REQUEST = 1, EV_IDLE, EV_PIPE_GONE, EV_STOP };

struct sched_event {
    enum ev_type type;
    srv_ctx *ctx;
    nng_msg *msg;
    uint32_t pipe;
    sched_event *next;
};

/* Probe order for --backend-kind auto. */
static const char *const probe_paths[] = {"/api/v1/models", "/props", "/v1/models"};
static const char *const probe_kinds[] = {"lmstudio", "llamacpp", "openai"};
#define PROBE_STAGES 3
/* While the backend is unreachable it is probed this often. */
#define PROBE_RETRY_MS 2000
/* While the backend is unreachable dispatch is paused; the loop then wakes
 * at least this often (the policy's own wake time is not refreshed). */
#define DOWN_TICK_US 50000
/* How often a request that could not connect checks whether the backend
 * came back. */
#define DOWN_RECHECK_US 250000

/* ---- inbox (any thread) ------------------------------------------------ */

static void sched_post(sched *s, sched_event *e)
{
    pthread_mutex_lock(&s->inbox_mtx);
    e->next = NULL;
    if (s->inbox_tail)
        s->inbox_tail->next = e;
    else
        s->inbox_head = e;
    s->inbox_tail = e;
    pthread_mutex_unlock(&s->inbox_mtx);
    backend_wakeup(s->bk);
}

static void sched_post_new(sched *s, enum ev_type type, srv_ctx *c, nng_msg *m, uint32_t pipe)
{
    sched_event *e = calloc(1, sizeof(*e));
    if (e == NULL) {
        /* Cannot queue the event: the request is lost to us, but its agent
         * still gets an answer from its own timeout. Log loudly. */
        log_error("out of memory posting an event; dropping it");
        if (m)
            nng_msg_free(m);
        return;
    }
    e->type = type;
    e->ctx = c;
    e->msg = m;
    e->pipe = pipe;
    sched_post(s, e);
}

static void sched_request_cb(void *arg, srv_ctx *c, nng_msg *msg)
{
    sched_post_new(arg, EV_REQUEST, c, msg, 0);
}

static void sched_idle_cb(void *arg, srv_ctx *c)
{
    sched_post_new(arg, EV_IDLE, c, NULL, 0);
}

static void sched_pipe_gone_cb(void *arg, uint32_t pipe)
{
    sched_post_new(arg, EV_PIPE_GONE, NULL, NULL, pipe);
}

void sched_request_stop(sched *s)
{
    sched_post_new(s, EV_STOP, NULL, NULL, 0);
}

/* ---- stats ------------------------------------------------------------- */

static void lat_add(lat_ring *r, double v)
{
    r->v[r->pos] = v;
    r->pos = (r->pos + 1) % LAT_SAMPLES;
    if (r->n < LAT_SAMPLES)
        r->n++;
}

/* ---- replies ------------------------------------------------------------ */

static void sched_send(sched *s, srv_ctx *c, const lms_msg *m)
{
    void *buf = NULL;
    size_t len = 0;
    int rc = lms_encode(m, &buf, &len);
    if (rc != LMSCHED_OK) {
        /* Only our own bug or ENOMEM gets here; still answer. */
        log_error("cannot encode %s reply: %s", lms_kind_name(m->kind), lmsched_strerror(rc));
        rc = lms_encode_error(m->id, LMSCHED_EINTERNAL, "scheduler could not encode its reply",
                             NULL, &buf, &len);
        if (rc != LMSCHED_OK) {
            srv_ctx_recycle(s->srv, c);
            return;
        }
    }
    srv_reply(s->srv, c, buf, len);
    free(buf);
}

static void sched_send_error(sched *s, srv_ctx *c, uint64_t id, int code, const char *msg,
                             const char *field)
{
    void *buf = NULL;
    size_t len = 0;
    if (lms_encode_error(id, code, msg, field, &buf, &len) != LMSCHED_OK) {
        log_error("cannot encode error reply");
        srv_ctx_recycle(s->srv, c);
        return;
    }
    srv_reply(s->srv, c, buf, len);
    free(buf);
}

static void job_unlink(sched *s, job *j)
{
    if (j->prev)
        j->prev->next = j->next;
    else
        s->jobs = j->next;
    if (j->next)
        j->next->prev = j->prev;
}

static void job_free(job *j)
{
    prefix_chain_fini(&j->chain);
    lms_chat_req tmp = j->req;
    lms_msg m;
    memset(&m, 0, sizeof(m));
    m.kind = LMS_KIND_CHAT;
    m.u.chat = tmp;
    lms_msg_fini(&m);
    free(j);
}

/* Detaches j from whatever holds it (policy, transfer, concurrency slot). */
static void job_release_slot(sched *s, job *j, bool ok, int64_t prompt, int64_t cached)
{
    if (j->reserved) {
        s->reserved_bytes -= j->reserve;
        j->reserved = false;
    }
    if (j->slot >= 0 && (unsigned)j->slot < policy_slots(s->pol))
        policy_slot_done(s->pol, j->slot, ok, prompt, cached);
    j->slot = -1;
}

static void job_detach(sched *s, job *j)
{
    if (j->state == JOB_QUEUED) {
        policy_remove(s->pol, &j->pi);
        s->queued--;
    } else {
        if (j->xfer) {
            backend_xfer_free(j->xfer);
            j->xfer = NULL;
        }
        if (s->pending == j)
            s->pending = NULL;
        job_release_slot(s, j, false, -1, -1);
        s->inflight--;
    }
}

/* Ends a job with an error reply. */
static void job_fail(sched *s, job *j, int code, const char *msg)
{
    job_detach(s, j);
    job_unlink(s, j);
    s->st.failed++;
    if (code >= 0 && code < (int)(sizeof(s->st.failed_by_code) / sizeof(s->st.failed_by_code[0])))
        s->st.failed_by_code[code]++;
    log_debug("request %u/%" PRIu64 " from %s failed: %s: %s", j->pipe, j->id,
              j->req.agent ? j->req.agent : "?", lmsched_err_name(code), msg);
    sched_send_error(s, j->ctx, j->id, code, msg, NULL);
    job_free(j);
}

/* ---- budget ------------------------------------------------------------- */

static int64_t sched_context(const sched *s)
{
    if (s->be.context_length > 0)
        return s->be.context_length;
    return s->cfg.context > 0 ? s->cfg.context : BUDGET_DEFAULT_CONTEXT;
}

static void sched_budget(sched *s)
{
    budget_in *in = &s->bin;
    int64_t ctx = sched_context(s);
    in->ram_fraction = s->cfg.ram_fraction;
    in->model_size = s->be.size_bytes > 0 ? (uint64_t)s->be.size_bytes : s->cfg.model_size;
    /* A full-context request is the worst case; per-token accounting lets
     * shorter ones share that room. */
    in->kv_per_request = s->cfg.kv_per_request ? s->cfg.kv_per_request
                                               : s->kv_bytes_per_token * (uint64_t)ctx;
    in->slots = s->be.slots > 0 ? (unsigned)s->be.slots : s->cfg.slots;
    in->max_concurrent = s->cfg.max_concurrent;
    if (budget_compute(in, &s->bout) != 0) {
        log_error("memory budget: %s", s->bout.explain);
        s->max_concurrent = 1;
        s->limited_by = "memory";
        return;
    }
    unsigned old = s->max_concurrent;
    s->max_concurrent = s->bout.max_concurrent;
    if (s->bout.cap && s->bout.fit >= s->bout.cap)
        s->limited_by = in->max_concurrent ? "flag" : "slots";
    else
        s->limited_by = "memory";
    if (!s->cfg.kv_per_request && s->bout.cap) {
        /* Per-token accounting: memory is checked per request at dispatch,
         * so the only fixed cap is the slots (or the flag). */
        s->max_concurrent = s->bout.cap;
        s->limited_by = in->max_concurrent ? "flag" : "slots";
    }
    unsigned slots = s->be.slots > 0 ? (unsigned)s->be.slots
                     : s->cfg.slots ? s->cfg.slots : s->max_concurrent;
    if (slots > 256)
        slots = 256;
    if (slots != policy_slots(s->pol) && s->inflight == 0)
        policy_set_slots(s->pol, slots);
    const char *kind = strcmp(s->cfg.backend_kind, "auto") ? s->cfg.backend_kind : s->be.kind;
    s->pin_slots = strcmp(kind, "llamacpp") == 0 && strcmp(policy_name(s->pol), "prefix") == 0;
    policy_set_placement(s->pol, s->pin_slots, s->cfg.slot_similarity);
    /* Until the daemon listens the numbers are provisional: start-up says
     * them once, in sched_probe_initial's summary; afterwards every change
     * is logged. */
    if (old != s->max_concurrent && s->listening)
        log_info("memory budget: %s", s->bout.explain);
}

/* ---- probing the backend ----------------------------------------------- */

static int probe_first_stage(const sched *s)
{
    for (int i = 0; i < PROBE_STAGES; i++)
        if (strcmp(s->cfg.backend_kind, probe_kinds[i]) == 0)
            return i;
    /* auto: once a kind was learned, keep probing that endpoint */
    for (int i = 0; i < PROBE_STAGES; i++)
        if (strcmp(s->be.kind, probe_kinds[i]) == 0)
            return i;
    return 0;
}

static void probe_start(sched *s, int stage);
static void be_set_down(sched *s, const char *why);

/* Starts a probe cycle: the stages from the first one (for `auto`, the
 * dialect learned so far), each tried in turn until one is understood. */
static void probe_cycle(sched *s)
{
    s->probe_tried[0] = '\0';
    probe_start(s, probe_first_stage(s));
}

/* Notes what one stage of the cycle got, for the message when none is
 * understood. */
static void probe_note(sched *s, int stage, const bk_xfer *x)
{
    size_t n = strlen(s->probe_tried);
    char what[64];
    if (x->http_status >= 400)
        snprintf(what, sizeof(what), "HTTP %ld", x->http_status);
    else if (x->http_status > 0)
        snprintf(what, sizeof(what), "HTTP %ld, not the JSON expected there", x->http_status);
    else
        snprintf(what, sizeof(what), "no answer");
    snprintf(s->probe_tried + n, sizeof(s->probe_tried) - n, "%sGET %s (%s)", n ? ", " : "",
             probe_paths[stage], what);
}

/* No stage of an `auto` cycle found an API it knows, though the server
 * answers HTTP: most likely a wrong URL (a path that is not the server's
 * root). Reported unhealthy, so dispatch pauses and requests that give up
 * waiting say why, rather than each failing with a 404 of its own. */
static void probe_found_nothing(sched *s)
{
    char why[sizeof(s->cfg.backend) + sizeof(s->probe_tried) + 256];
    int n = snprintf(why, sizeof(why),
             "no LLM server API found at %s: tried %s; check the URL (the server's root, "
             "without /v1: lmsched adds the API paths itself), or pass --backend-kind openai "
             "to skip this check",
             s->cfg.backend, s->probe_tried);
    (void)n;
    snprintf(s->be.kind, sizeof(s->be.kind), "unknown");
    be_set_down(s, why);
}

static void probe_start(sched *s, int stage)
{
    s->probe_stage = stage;
    s->probe_started_us = clock_now_us();
    int rc = backend_get_start(s->bk, probe_paths[stage], NULL, stage, &s->probe);
    if (rc != LMSCHED_OK) {
        log_error("cannot start backend probe: %s", lmsched_strerror(rc));
        s->probe = NULL;
        s->next_probe_us = clock_now_us() + PROBE_RETRY_MS * 1000LL;
    }
}

static void be_set_down(sched *s, const char *why)
{
    int64_t now = clock_now_us();
    if (s->be.healthy || strcmp(s->be.last_error, why) != 0)
        log_warn("backend %s unhealthy: %s", s->cfg.backend, why);
    if (s->be.healthy || s->be.down_since_us == 0)
        s->be.down_since_us = now;
    s->be.healthy = false;
    snprintf(s->be.last_error, sizeof(s->be.last_error), "%s", why);
    /* A chat that could not connect marks it down between probes: probe
     * soon, so waiting requests go out as soon as it is back. */
    if (!s->probe && s->next_probe_us > now + PROBE_RETRY_MS * 1000LL)
        s->next_probe_us = now + PROBE_RETRY_MS * 1000LL;
}

static void be_set_up(sched *s)
{
    /* At start-up sched_probe_initial's summary says it. */
    if (!s->be.healthy && (s->listening || s->be.down_since_us != 0))
        log_info("backend %s healthy (%s)", s->cfg.backend, s->be.kind);
    s->be.healthy = true;
    s->be.down_since_us = 0;
    s->be.last_error[0] = '\0';
}

static void probe_done(sched *s, bk_xfer *x)
{
    int stage = x->tag;
    int64_t now = clock_now_us();
    log_debug("probe GET %s: HTTP %ld after %" PRId64 " ms%s%s", probe_paths[stage],
              x->http_status, (now - x->start_us) / 1000, x->err.code ? ": " : "",
              x->err.code ? x->err.message : "");
    s->probe = NULL;
    s->be.checked_us = now;
    bool forced = strcmp(s->cfg.backend_kind, "auto") != 0;
    if (x->err.code == LMSCHED_OK) {
        oa_model_info mi;
        oa_model_info_init(&mi);
        int rc;
        if (stage == 0)
            rc = oa_parse_lmstudio_models(x->raw ? x->raw : "", x->raw_len, &mi);
        else if (stage == 1)
            rc = oa_parse_llamacpp_props(x->raw ? x->raw : "", x->raw_len, &mi);
        else
            rc = oa_parse_openai_models(x->raw ? x->raw : "", x->raw_len, &mi);
        if (rc == LMSCHED_OK || (stage == 0 && rc == LMSCHED_EINVAL)) {
            snprintf(s->be.kind, sizeof(s->be.kind), "%s", probe_kinds[stage]);
            if (rc == LMSCHED_EINVAL)
                log_warn("LM Studio answers but has no LLM loaded; it loads one on the first "
                         "request (just-in-time loading)");
            s->be.model[0] = '\0';
            if (mi.model)
                snprintf(s->be.model, sizeof(s->be.model), "%s", mi.model);
            s->be.size_bytes = mi.size_bytes;
            s->be.context_length = mi.context_length;
            s->be.slots = mi.parallel;
            be_set_up(s);
            sched_budget(s);
            oa_model_info_fini(&mi);
            s->next_probe_us = now + (int64_t)s->cfg.probe_interval_ms * 1000;
            return;
        }
        oa_model_info_fini(&mi);
        probe_note(s, stage, x);
        /* Answered, but not in this dialect: try the next one. */
        if (!forced && stage + 1 < PROBE_STAGES) {
            probe_start(s, stage + 1);
            return;
        }
        if (!forced) {
            probe_found_nothing(s);
            s->next_probe_us = now + PROBE_RETRY_MS * 1000LL;
            return;
        }
        be_set_up(s); /* it answers HTTP; chat may still work */
        snprintf(s->be.kind, sizeof(s->be.kind), "%s", forced ? s->cfg.backend_kind : "unknown");
        s->next_probe_us = now + (int64_t)s->cfg.probe_interval_ms * 1000;
        return;
    }
    if (x->err.code == LMSCHED_EBACKEND_HTTP || x->err.code == LMSCHED_EAUTH) {
        if (x->err.code == LMSCHED_EAUTH)
            log_warn("backend refused the probe: %s (set LM_API_TOKEN)", x->err.message);
        probe_note(s, stage, x);
        if (!forced && stage + 1 < PROBE_STAGES && x->err.code != LMSCHED_EAUTH) {
            probe_start(s, stage + 1);
            return;
        }
        if (!forced && x->err.code != LMSCHED_EAUTH) {
            probe_found_nothing(s);
            s->next_probe_us = now + PROBE_RETRY_MS * 1000LL;
            return;
        }
        be_set_up(s);
        if (s->be.kind[0] == '\0' || strcmp(s->be.kind, "unknown") == 0)
            snprintf(s->be.kind, sizeof(s->be.kind), "%s",
                     forced ? s->cfg.backend_kind : "unknown");
        s->next_probe_us = now + (int64_t)s->cfg.probe_interval_ms * 1000;
        return;
    }
    if (x->http_status > 0) {
        /* It answered HTTP, with a body we could not use (too large, cut):
         * reachable. Chat may still work; do not pause dispatch for it. */
        be_set_up(s);
        s->next_probe_us = now + (int64_t)s->cfg.probe_interval_ms * 1000;
        return;
    }
    be_set_down(s, x->err.message);
    s->next_probe_us = now + PROBE_RETRY_MS * 1000LL;
}

/* ---- requests ------------------------------------------------------------- */

static void sched_on_request(sched *s, srv_ctx *c, nng_msg *msg)
{
    lms_msg m;
    lms_decode_err de;
    bool within_limit = srv_take(s->srv, c);
    int rc = lms_decode(nng_msg_body(msg), nng_msg_len(msg), &s->limits, &m, &de);
    nng_msg_free(msg);
    if (rc != LMSCHED_OK) {
        s->st.bad_messages++;
        log_warn("rejected a message from pipe %u: %s", srv_ctx_pipe(c), de.message);
        sched_send_error(s, c, de.have_id ? de.id : 0, rc, de.message,
                         de.field[0] ? de.field : NULL);
        return;
    }
    /* Every request is checked, status too: the token is the only thing
     * that tells a tcp:// peer from the user. srv_auth_ok logs refusals. */
    if (!srv_auth_ok(s->srv, c, m.auth)) {
        sched_send_error(s, c, m.id, LMSCHED_EAUTH,
                         m.auth == NULL ? "this lmsched daemon requires an access token "
                                          "(set LMSCHED_AUTH_TOKEN)"
                                        : "access token refused",
                         "auth");
        lms_msg_fini(&m);
        return;
    }
    if (m.auth != NULL) {
        /* Checked; not kept (the chat body moves into a job below). */
        explicit_bzero(m.auth, strlen(m.auth));
        free(m.auth);
        m.auth = NULL;
    }
    if (!within_limit) {
        /* Counted as received too, so received = completed + failed +
         * rejected_busy still holds (docs/status.md). */
        if (m.kind == LMS_KIND_CHAT)
            s->st.received++;
        s->st.rejected_busy++;
        sched_send_error(s, c, m.id, LMSCHED_EBUSY,
                         "too many outstanding requests on this connection; wait for "
                         "replies before sending more (see --max-per-conn)", NULL);
        lms_msg_fini(&m);
        return;
    }
    if (m.kind == LMS_KIND_STATUS) {
        s->st.status_requests++;
        lms_msg r;
        lms_msg_init(&r, LMS_KIND_STATUS_REPLY);
        r.id = m.id;
        r.u.status_reply.json = status_json(s);
        if (r.u.status_reply.json == NULL)
            sched_send_error(s, c, m.id, LMSCHED_ENOMEM, "out of memory building status", NULL);
        else
            sched_send(s, c, &r);
        lms_msg_fini(&r);
        lms_msg_fini(&m);
        return;
    }
    if (m.kind != LMS_KIND_CHAT) {
        char why[96];
        snprintf(why, sizeof(why), "message kind '%s' is not a request", lms_kind_name(m.kind));
        sched_send_error(s, c, m.id, LMSCHED_EPROTO, why, "kind");
        s->st.bad_messages++;
        lms_msg_fini(&m);
        return;
    }
    s->st.received++;
    if (s->draining) {
        s->st.failed++;
        s->st.failed_by_code[LMSCHED_ESHUTDOWN]++;
        sched_send_error(s, c, m.id, LMSCHED_ESHUTDOWN,
                         "lmsched is shutting down and accepts no new requests", NULL);
        lms_msg_fini(&m);
        return;
    }
    if (!s->be.healthy && !s->probe) {
        /* It waits for the backend: ask again soon rather than at the next
         * 2 s probe, so it goes out as soon as the backend is back (at
         * most one probe per DOWN_RECHECK_US). */
        int64_t soon = s->probe_started_us + DOWN_RECHECK_US;
        int64_t now = clock_now_us();
        if (soon < now)
            soon = now;
        if (soon < s->next_probe_us)
            s->next_probe_us = soon;
    }
    job *j = calloc(1, sizeof(*j));
    if (j == NULL) {
        s->st.failed++;
        s->st.failed_by_code[LMSCHED_ENOMEM]++;
        sched_send_error(s, c, m.id, LMSCHED_ENOMEM, "scheduler out of memory", NULL);
        lms_msg_fini(&m);
        return;
    }
    j->ctx = c;
    j->pipe = srv_ctx_pipe(c);
    j->id = m.id;
    j->req = m.u.chat; /* ownership moves to the job */
    j->recv_us = clock_now_us();
    j->pi.enq_us = j->recv_us;
    j->pi.deadline_us = j->req.deadline_ms ? j->recv_us + (int64_t)j->req.deadline_ms * 1000 : 0;
    j->pi.priority = j->req.priority;
    j->slot = -1;
    if (prefix_chain_build(&j->chain, &j->req) != LMSCHED_OK) {
        sched_send_error(s, c, m.id, LMSCHED_ENOMEM, "scheduler out of memory", NULL);
        s->st.failed++;
        s->st.failed_by_code[LMSCHED_ENOMEM]++;
        job_free(j);
        return;
    }
    /* A prompt that cannot fit the slot's context would cost a slot only to
     * come back as the backend's 400: refused here, with the numbers. Only
     * when it is certain (the token floor alone fills the context); nearer
     * the edge the backend's own answer goes back to the agent. A large
     * max_tokens is not refused: LM Studio and llama.cpp stop at the
     * context with finish_reason "length". */
    int64_t known_ctx = s->be.context_length > 0 ? s->be.context_length : s->cfg.context;
    uint64_t floor_tokens = j->chain.bytes / PREFIX_MAX_BYTES_PER_TOKEN;
    if (known_ctx > 0 && floor_tokens >= (uint64_t)known_ctx) {
        char why[400];
        snprintf(why, sizeof(why),
                 "the prompt cannot fit the backend's context: about %u tokens (estimated "
                 "from its %" PRIu64 " bytes; at least %" PRIu64 "), and the context is %" PRId64
                 " tokens per slot%s; shorten the prompt",
                 j->chain.tokens, j->chain.bytes, floor_tokens, known_ctx,
                 s->be.context_length > 0 ? "" : " (--context)");
        s->st.failed++;
        s->st.failed_by_code[LMSCHED_ETOOLARGE]++;
        log_debug("request %u/%" PRIu64 " refused: %s", j->pipe, j->id, why);
        sched_send_error(s, c, j->id, LMSCHED_ETOOLARGE, why, "messages");
        job_free(j);
        return;
    }
    j->pi.blocks = j->chain.blocks;
    j->pi.n_blocks = j->chain.n_blocks;
    j->pi.tokens = j->chain.tokens;
    j->pi.group = j->chain.group;
    j->pi.label = j->req.system;
    if (s->cfg.kv_per_request) {
        j->reserve = s->cfg.kv_per_request;
    } else {
        /* prompt + what it may generate, never more than one slot's context */
        int64_t ctx = sched_context(s);
        int64_t gen = j->req.max_tokens > 0 ? j->req.max_tokens
                      : s->cfg.default_max_tokens > 0 ? s->cfg.default_max_tokens
                                                       : ctx - (int64_t)j->chain.tokens;
        int64_t toks = (int64_t)j->chain.tokens + (gen > 0 ? gen : 0);
        if (toks > ctx)
            toks = ctx;
        j->reserve = s->kv_bytes_per_token * (uint64_t)(toks > 0 ? toks : 1);
    }
    int prc = policy_push(s->pol, &j->pi);
    if (prc == LMSCHED_EBUSY) {
        s->st.rejected_busy++;
        char why[128];
        snprintf(why, sizeof(why), "scheduler queue is full (%u requests waiting); retry later",
                 s->cfg.max_queue);
        sched_send_error(s, c, j->id, LMSCHED_EBUSY, why, NULL);
        job_free(j);
        return;
    }
    if (prc != LMSCHED_OK) {
        sched_send_error(s, c, j->id, prc == LMSCHED_ENOMEM ? LMSCHED_ENOMEM : LMSCHED_EINTERNAL,
                         "scheduler could not queue the request (out of memory)", NULL);
        job_free(j);
        return;
    }
    j->state = JOB_QUEUED;
    s->queued++;
    j->next = s->jobs;
    if (s->jobs)
        s->jobs->prev = j;
    s->jobs = j;
}

static void sched_on_pipe_gone(sched *s, uint32_t pipe)
{
    /* The agent is gone: stop spending backend time on its requests. The
     * replies go nowhere, but sending them frees their contexts. */
    unsigned n = 0;
    job *next;
    for (job *j = s->jobs; j; j = next) {
        next = j->next;
        if (j->pipe == pipe) {
            job_fail(s, j, LMSCHED_ECANCELED, "agent disconnected");
            n++;
        }
    }
    if (n)
        log_info("agent connection %u closed: canceled %u request(s)", pipe, n);
}

static void sched_drain_inbox(sched *s)
{
    pthread_mutex_lock(&s->inbox_mtx);
    sched_event *e = s->inbox_head;
    s->inbox_head = s->inbox_tail = NULL;
    pthread_mutex_unlock(&s->inbox_mtx);
    while (e) {
        sched_event *next = e->next;
        switch (e->type) {
        case EV_REQUEST:
            sched_on_request(s, e->ctx, e->msg);
            break;
        case EV_IDLE:
            srv_ctx_recycle(s->srv, e->ctx);
            break;
        case EV_PIPE_GONE:
            sched_on_pipe_gone(s, e->pipe);
            break;
        case EV_STOP:
            if (!s->draining) {
                s->draining = true;
                s->drain_deadline_us = clock_now_us() + (int64_t)s->cfg.drain_timeout_ms * 1000;
                log_info("shutting down: %u queued request(s) get a shutdown error, waiting up "
                         "to %d ms for %u in flight (a second SIGINT/SIGTERM ends the wait)",
                         s->queued, s->cfg.drain_timeout_ms, s->inflight);
            } else if (s->drain_deadline_us > clock_now_us()) {
                /* A second signal: as most servers do, stop waiting. The
                 * drain step answers every request still here with the
                 * shutdown error on this turn. */
                s->drain_deadline_us = clock_now_us();
                s->drain_forced = true;
                log_info("second stop signal: ending the drain now; %u request(s) in flight "
                         "get a shutdown error", s->inflight);
            }
            break;
        }
        free(e);
        e = next;
    }
}

/* ---- dispatch and completion ---------------------------------------------- */

static void job_start(sched *s, job *j)
{
    oa_body_opts o = {
        .stream = true,
        .cache_prompt = s->cfg.cache_prompt,
        .model = s->be.model[0] ? s->be.model : NULL,
        .max_tokens = s->cfg.default_max_tokens,
        .id_slot = s->pin_slots ? j->slot : -1,
    };
    j->attempts++;
    j->dispatch_us = j->dispatch_us ? j->dispatch_us : clock_now_us();
    int rc = backend_chat_start(s->bk, &j->req, &o, j, &j->xfer);
    if (rc != LMSCHED_OK) {
        j->xfer = NULL;
        job_fail(s, j, rc, "scheduler could not start the backend request");
        return;
    }
    j->state = JOB_INFLIGHT;
}

static void sched_dispatch(sched *s, int64_t now)
{
    if (s->draining)
        return;
    for (;;) {
        job *j = s->pending;
        if (j == NULL) {
            if (s->inflight >= s->max_concurrent)
                break;
            int slot = -1;
            uint32_t cached = 0;
            pol_item *it = policy_next(s->pol, now, &slot, &cached);
            if (it == NULL)
                break;
            j = (job *)it;
            j->slot = slot;
            j->state = JOB_PENDING;
            s->queued--;
            s->inflight++;
            log_debug("request %u/%" PRIu64 " -> slot %d, ~%u of %u prompt tokens cached",
                      j->pipe, j->id, slot, cached, j->chain.tokens);
        }
        /* KV memory: the request reserves its share while it runs. One that
         * cannot fit even alone is refused; otherwise it waits (holding its
         * place) until enough running requests finish. */
        uint64_t budget = s->bout.budget_bytes;
        if (s->reserved_bytes + j->reserve > budget) {
            if (s->reserved_bytes == 0 && !s->bout.model_too_big) {
                char why[200], b1[32], b2[32];
                snprintf(why, sizeof(why), "request needs %s of KV cache (prompt + max_tokens), "
                         "more than the whole budget of %s; lower max_tokens",
                         budget_fmt_size(j->reserve, b1, sizeof(b1)),
                         budget_fmt_size(budget, b2, sizeof(b2)));
                if (s->pending == j)
                    s->pending = NULL;
                job_fail(s, j, LMSCHED_ETOOLARGE, why);
                continue;
            }
            if (s->reserved_bytes > 0) {
                s->pending = j;
                break;
            }
            /* --force with a model over budget: run one at a time */
        }
        s->pending = NULL;
        s->reserved_bytes += j->reserve;
        j->reserved = true;
        lat_add(&s->st.queue_wait, (double)(now - j->recv_us) / 1000.0);
        job_start(s, j);
    }
}

static int64_t retry_backoff_us(unsigned attempt)
{
    /* 200 ms, 400 ms, 800 ms ... capped at 5 s, with up to 25% jitter so a
     * burst of failures does not retry in lockstep. */
    int64_t base = 200000LL << (attempt > 5 ? 5 : attempt - 1);
    if (base > 5000000)
        base = 5000000;
    return base + (int64_t)(rand() % (int)(base / 4 + 1));
}

/* The error of a request that gave up waiting for an unreachable backend. */
static void sched_down_msg(const sched *s, int64_t waited_us, char *buf, size_t len)
{
    snprintf(buf, len, "cannot reach the LLM server at %s: it was unreachable for the %" PRId64
             " ms this request waited (--backend-wait %d ms); last error: %.400s",
             s->cfg.backend, waited_us / 1000, s->cfg.backend_wait_ms,
             s->be.last_error[0] ? s->be.last_error : "none");
}

static void job_done(sched *s, job *j, bk_xfer *x)
{
    int64_t now = clock_now_us();
    j->xfer = NULL;
    if (x->err.code == LMSCHED_EBACKEND_DOWN)
        be_set_down(s, x->err.message);
    else if (x->http_status > 0)
        be_set_up(s);
    if (x->http_status > 0)
        j->down_wait_us = 0; /* it reached the backend */

    if (x->err.code != LMSCHED_OK) {
        bool refused = x->err.code == LMSCHED_EBACKEND_DOWN && !x->resp.got_token;
        if (refused && !s->draining) {
            /* Could not connect: the request never reached the backend, so
             * this attempt does not count against --max-retries. It waits
             * for the backend to come back (sched_retries), at most
             * --backend-wait. */
            j->refused++;
            if (j->down_wait_us == 0)
                j->down_wait_us = now;
            if (now - j->down_wait_us < (int64_t)s->cfg.backend_wait_ms * 1000) {
                s->st.retried++;
                j->state = JOB_RETRY_WAIT;
                j->retry_at_us = now + DOWN_RECHECK_US;
                log_info("request %u/%" PRIu64 " could not reach the backend (%s); waiting "
                         "for it", j->pipe, j->id, x->err.message);
                backend_xfer_free(x);
                return;
            }
        }
        bool can_retry = x->err.transient && !refused && !x->resp.got_token && !s->draining &&
                         j->attempts - j->refused <= s->cfg.max_retries;
        if (can_retry) {
            s->st.retried++;
            j->state = JOB_RETRY_WAIT;
            j->retry_at_us = now + retry_backoff_us(j->attempts);
            log_info("request %u/%" PRIu64 " attempt %u failed (%s); retrying in %" PRId64
                     " ms", j->pipe, j->id, j->attempts, x->err.message,
                     (j->retry_at_us - now) / 1000);
            backend_xfer_free(x);
            return;
        }
        char msg[sizeof(x->err.message) + sizeof(s->cfg.backend) + 96];
        if (refused && j->down_wait_us)
            snprintf(msg, sizeof(msg), "%s (backend %s; waited %" PRId64 " ms for it)",
                     x->err.message, s->cfg.backend, (now - j->down_wait_us) / 1000);
        else if (j->attempts > 1)
            snprintf(msg, sizeof(msg), "%s (backend %s, after %u attempts)", x->err.message,
                     s->cfg.backend, j->attempts);
        else
            snprintf(msg, sizeof(msg), "%s (backend %s)", x->err.message, s->cfg.backend);
        int code = x->err.code;
        backend_xfer_free(x);
        j->state = JOB_RETRY_WAIT; /* no transfer attached any more */
        job_fail(s, j, code, msg);
        return;
    }

    lms_msg r;
    lms_msg_init(&r, LMS_KIND_CHAT_REPLY);
    r.id = j->id;
    lms_chat_reply *cr = &r.u.chat_reply;
    cr->content = x->resp.content;
    cr->finish_reason = x->resp.finish_reason ? x->resp.finish_reason : "stop";
    cr->model = x->resp.model;
    cr->usage.prompt_tokens = x->resp.prompt_tokens;
    cr->usage.completion_tokens = x->resp.completion_tokens;
    cr->usage.cached_tokens = x->resp.cached_tokens;
    cr->timings.queue_ms = (double)(j->dispatch_us - j->recv_us) / 1000.0;
    cr->timings.ttft_ms =
        x->first_token_us ? (double)(x->first_token_us - j->dispatch_us) / 1000.0 : -1.0;
    cr->timings.total_ms = (double)(now - j->recv_us) / 1000.0;
    cr->retries = j->attempts - 1;

    s->st.completed++;
    if (x->resp.prompt_tokens > 0)
        s->st.tokens_prompt += (uint64_t)x->resp.prompt_tokens;
    if (x->resp.completion_tokens > 0)
        s->st.tokens_completion += (uint64_t)x->resp.completion_tokens;
    if (x->resp.cached_tokens > 0)
        s->st.tokens_cached += (uint64_t)x->resp.cached_tokens;
    if (cr->timings.ttft_ms >= 0)
        lat_add(&s->st.ttft, cr->timings.ttft_ms);
    lat_add(&s->st.total, cr->timings.total_ms);

    job_release_slot(s, j, true, x->resp.prompt_tokens, x->resp.cached_tokens);
    s->inflight--;
    job_unlink(s, j);
    sched_send(s, j->ctx, &r);
    /* The strings belong to the transfer; do not let fini free them. */
    memset(cr, 0, sizeof(*cr));
    lms_msg_fini(&r);
    backend_xfer_free(x);
    job_free(j);
}

static void sched_retries(sched *s, int64_t now)
{
    job *next;
    for (job *j = s->jobs; j; j = next) {
        next = j->next;
        if (j->state != JOB_RETRY_WAIT || j->retry_at_us > now)
            continue;
        if (s->draining) {
            job_fail(s, j, LMSCHED_ESHUTDOWN, "lmsched is shutting down; request canceled "
                                              "while waiting to retry");
            continue;
        }
        if (!s->be.healthy) {
            /* No use trying an unreachable backend: the probe says when it
             * is back. Meanwhile the wait is bounded like a queued one's. */
            if (j->down_wait_us == 0)
                j->down_wait_us = now;
            if (now - j->down_wait_us >= (int64_t)s->cfg.backend_wait_ms * 1000) {
                char why[1200];
                sched_down_msg(s, now - j->down_wait_us, why, sizeof(why));
                job_fail(s, j, LMSCHED_EBACKEND_DOWN, why);
                continue;
            }
            j->retry_at_us = now + DOWN_RECHECK_US;
            continue;
        }
        job_start(s, j);
    }
}

static void sched_expire(sched *s, int64_t now)
{
    pol_item *it;
    while ((it = policy_pop_expired(s->pol, now)) != NULL) {
        job *j = (job *)it;
        char why[160];
        snprintf(why, sizeof(why), "deadline of %u ms passed while queued (%u others queued, "
                 "%u in flight)", j->req.deadline_ms, s->queued - 1, s->inflight);
        job_fail(s, j, LMSCHED_EDEADLINE, why); /* policy_remove is a no-op now */
    }
}

/* Dispatch is paused while the backend is unreachable. A queued request
 * with a deadline waits for it (sched_expire answers DEADLINE once it
 * passes); one without waits at most --backend-wait, counted from when it
 * arrived or the backend went away, whichever is later. Returns when the
 * next such wait runs out, INT64_MAX if none. */
static int64_t sched_expire_down(sched *s, int64_t now)
{
    int64_t wait_us = (int64_t)s->cfg.backend_wait_ms * 1000, first = INT64_MAX;
    job *next;
    for (job *j = s->jobs; j; j = next) {
        next = j->next;
        if (j->state != JOB_QUEUED && j->state != JOB_PENDING)
            continue;
        if (j->state == JOB_QUEUED && j->req.deadline_ms)
            continue;
        int64_t since = j->recv_us > s->be.down_since_us ? j->recv_us : s->be.down_since_us;
        if (now - since < wait_us) {
            if (since + wait_us < first)
                first = since + wait_us;
            continue;
        }
        char why[1200];
        sched_down_msg(s, now - since, why, sizeof(why));
        job_fail(s, j, LMSCHED_EBACKEND_DOWN, why);
    }
    return first;
}

static void sched_backend_events(sched *s)
{
    bk_xfer *x;
    while ((x = backend_done(s->bk)) != NULL) {
        if (x->is_chat && x->owner) {
            job_done(s, (job *)x->owner, x);
        } else {
            probe_done(s, x);
            backend_xfer_free(x);
        }
    }
}

/* ---- shutdown ------------------------------------------------------------ */

static void sched_drain_step(sched *s, int64_t now)
{
    job *next;
    for (job *j = s->jobs; j; j = next) {
        next = j->next;
        if (j->state == JOB_QUEUED || j->state == JOB_PENDING)
            job_fail(s, j, LMSCHED_ESHUTDOWN, "lmsched is shutting down; the request was still "
                                              "queued and did not run");
        else if (now >= s->drain_deadline_us)
            job_fail(s, j, LMSCHED_ESHUTDOWN,
                     s->drain_forced ? "lmsched is shutting down; the request was canceled "
                                       "by a second stop signal"
                                     : "lmsched is shutting down; the request was canceled "
                                       "after the drain timeout");
    }
    if (s->jobs == NULL && srv_sending(s->srv) == 0)
        s->stopped = true;
}

/* ---- public ------------------------------------------------------------- */

int sched_init(sched *s, const sched_config *cfg)
{
    memset(s, 0, sizeof(*s));
    s->cfg = *cfg;
    pthread_mutex_init(&s->inbox_mtx, NULL);
    lms_limits_default(&s->limits);
    s->start_us = clock_now_us();
    snprintf(s->be.kind, sizeof(s->be.kind), "unknown");
    s->be.context_length = s->be.slots = s->be.size_bytes = -1;
    const char *tok = getenv("LM_API_TOKEN");
    if (tok && *tok)
        s->token = strdup(tok);

    backend_opts bo = {
        .base_url = cfg->backend,
        .token = s->token,
        .connect_timeout_ms = cfg->connect_timeout_ms,
        .request_timeout_ms = cfg->request_timeout_ms,
        .max_body = (size_t)cfg->max_response_bytes,
        .max_response = cfg->max_response_bytes,
        .max_content = s->limits.max_text_bytes,
    };
    if (backend_alloc(&s->bk, &bo) != LMSCHED_OK) {
        log_error("cannot set up the HTTP client");
        return 1;
    }
    int rc = policy_alloc(&s->pol, cfg->policy, cfg->max_queue);
    if (rc != 0) {
        log_error("unknown queue policy '%s'", cfg->policy);
        return 1;
    }
    uint64_t ram = cfg->total_ram;
    if (ram == 0 && budget_total_ram(&ram) != 0) {
        log_error("cannot read the total RAM; pass --total-ram");
        return 1;
    }
    s->bin.total_ram = ram;
    s->kv_bytes_per_token = BUDGET_DEFAULT_KV_BYTES_PER_TOKEN;
    s->kv_source = "default (Llama-3-8B-class f16)";
    if (cfg->kv_bytes_per_token) {
        s->kv_bytes_per_token = cfg->kv_bytes_per_token;
        s->kv_source = "--kv-bytes-per-token";
    } else if (cfg->model_path[0]) {
        gguf_model_info mi;
        char err[256];
        if (gguf_read_info(cfg->model_path, &mi, err, sizeof(err)) != 0) {
            log_error("--model-path %s: %s", cfg->model_path, err);
            return 1;
        }
        uint64_t per = gguf_kv_bytes_per_token(&mi, cfg->cache_type);
        if (per == 0) {
            log_error("--cache-type %s: unknown KV cache type", cfg->cache_type);
            return 1;
        }
        s->kv_bytes_per_token = per;
        s->kv_source = "GGUF header";
        if (s->cfg.model_size == 0)
            s->cfg.model_size = mi.file_size;
        log_info("model %s (%s): %" PRId64 " layers, %" PRId64 " KV heads, K %" PRId64
                 " + V %" PRId64 " per head, %s cache -> %" PRIu64 " bytes of KV per token",
                 cfg->model_path, mi.arch, mi.n_layer, mi.n_head_kv, mi.key_length,
                 mi.value_length, cfg->cache_type, per);
    }
    policy_tuning tun = {
        .starve_us = (int64_t)cfg->starve_ms * 1000,
        .max_overtakes = cfg->max_overtakes,
        .gather_us = (int64_t)cfg->gather_ms * 1000,
    };
    policy_set_tuning(s->pol, &tun);
    sched_budget(s);
    return 0;
}

int sched_probe_initial(sched *s, int wait_ms)
{
    probe_cycle(s);
    int64_t until = clock_now_us() + (int64_t)wait_ms * 1000;
    while (s->probe && clock_now_us() < until) {
        backend_poll(s->bk, 50);
        bk_xfer *x;
        while ((x = backend_done(s->bk)) != NULL) {
            probe_done(s, x);
            backend_xfer_free(x);
        }
    }
    if (s->probe) {
        backend_xfer_free(s->probe);
        s->probe = NULL;
        be_set_down(s, "backend did not answer the first probe in time");
        s->next_probe_us = clock_now_us() + PROBE_RETRY_MS * 1000LL;
    }
    sched_budget(s);
    char b1[32], b2[32], b3[32], ctx[24] = "unknown", slots[24] = "unknown";
    if (s->be.context_length > 0)
        snprintf(ctx, sizeof(ctx), "%" PRId64, s->be.context_length);
    if (s->be.slots > 0)
        snprintf(slots, sizeof(slots), "%" PRId64, s->be.slots);
    if (s->be.healthy)
        log_info("backend %s: %s, healthy, model %s, context %s, slots %s", s->cfg.backend,
                 s->be.kind, s->be.model[0] ? s->be.model : "unknown", ctx, slots);
    else
        log_warn("backend %s: not usable yet (%s); requests wait for it up to --backend-wait",
                 s->cfg.backend, s->be.last_error);
    log_info("memory: RAM %s, model %s, KV per request %s; %s",
             budget_fmt_size(s->bin.total_ram, b1, sizeof(b1)),
             s->bin.model_size ? budget_fmt_size(s->bin.model_size, b2, sizeof(b2))
                               : "size unknown",
             budget_fmt_size(s->bin.kv_per_request, b3, sizeof(b3)), s->bout.explain);
    if (s->bout.model_too_big) {
        if (!s->cfg.force) {
            fprintf(stderr, "lmsched serve: refusing to start: %s\n", s->bout.explain);
            return 4;
        }
        log_warn("--force: starting although %s", s->bout.explain);
    }
    return 0;
}

int sched_listen(sched *s)
{
    srv_events ev = {
        .request = sched_request_cb,
        .idle = sched_idle_cb,
        .pipe_gone = sched_pipe_gone_cb,
        .arg = s,
    };
    srv_opts o = {
        .url = s->cfg.listen,
        .max_msg = s->limits.max_msg_bytes + 1024,
        .socket_mode = s->cfg.socket_mode,
        .socket_group = s->cfg.socket_group[0] ? s->cfg.socket_group : NULL,
        .max_per_conn = s->cfg.max_per_conn,
        .auth_token_file = s->cfg.auth_token_file[0] ? s->cfg.auth_token_file : NULL,
        .force = s->cfg.force,
    };
    char err[900];
    int rv = srv_open(&s->srv, &o, &ev, err, sizeof(err));
    if (rv != 0) {
        fprintf(stderr, "lmsched serve: %s\n", err);
        return 4;
    }
    s->listening = true;
    log_info("listening on %s (policy %s, max %u concurrent, queue %u, %u per "
             "connection%s)", s->cfg.listen, policy_name(s->pol), s->max_concurrent, s->cfg.max_queue,
             s->cfg.max_per_conn, srv_auth_required(s->srv) ? ", token required" : "");
    return 0;
}

static int64_t sched_next_wake(sched *s, int64_t now)
{
    int64_t t = s->probe ? now + 1000000 : s->next_probe_us;
    int64_t d = policy_next_deadline(s->pol);
    if (d < t)
        t = d;
    /* Only a future one: the policy computes it in policy_next, which is
     * not called while every slot is busy, so a past value is stale (and
     * waking for it would spin the loop, taking a core from the server). */
    d = policy_next_wake(s->pol);
    if (d > now && d < t)
        t = d;
    for (job *j = s->jobs; j; j = j->next)
        if (j->state == JOB_RETRY_WAIT && j->retry_at_us < t)
            t = j->retry_at_us;
    if (s->draining) {
        int64_t dd = s->drain_deadline_us;
        if (dd < t)
            t = dd;
        if (now + 100000 < t)
            t = now + 100000; /* check pending sends often while draining */
    }
    return t;
}

void sched_run(sched *s)
{
    while (!s->stopped) {
        sched_drain_inbox(s);
        backend_perform(s->bk);
        sched_backend_events(s);
        int64_t now = clock_now_us();
        sched_retries(s, now);
        sched_expire(s, now);
        int64_t down_wake = INT64_MAX;
        if (s->be.healthy)
            sched_dispatch(s, now);
        else
            down_wake = sched_expire_down(s, now);
        if (!s->probe && now >= s->next_probe_us && !s->draining)
            probe_cycle(s);
        if (s->draining)
            sched_drain_step(s, now);
        if (s->stopped)
            break;
        backend_perform(s->bk); /* start what was just added */
        sched_backend_events(s);
        int64_t wake = sched_next_wake(s, now);
        if (!s->be.healthy) {
            if (down_wake < wake)
                wake = down_wake;
            if (wake < now + DOWN_TICK_US)
                wake = now + DOWN_TICK_US; /* dispatch paused: the policy's wake may be stale */
        }
        int64_t ms = (wake - clock_now_us() + 999) / 1000;
        if (ms > 1000)
            ms = 1000;
        backend_poll(s->bk, (int)(ms < 0 ? 0 : ms));
    }
    log_info("stopped: %" PRIu64 " completed, %" PRIu64 " failed, %" PRIu64 " busy",
             s->st.completed, s->st.failed, s->st.rejected_busy);
}

void sched_fini(sched *s)
{
    /* Order: stop nng (no more callbacks), drop events, then curl. */
    srv_close(s->srv);
    s->srv = NULL;
    sched_event *e = s->inbox_head;
    while (e) {
        sched_event *n = e->next;
        if (e->msg)
            nng_msg_free(e->msg);
        free(e);
        e = n;
    }
    s->inbox_head = s->inbox_tail = NULL;
    while (s->jobs) {
        job *j = s->jobs;
        s->jobs = j->next;
        job_free(j);
    }
    if (s->probe)
        backend_xfer_free(s->probe);
    backend_free(s->bk);
    policy_free(s->pol);
    if (s->token) {
        memset(s->token, 0, strlen(s->token));
        free(s->token);
    }
    pthread_mutex_destroy(&s->inbox_mtx);
}
