/*
 * agents - the front door of agentlib's agents (see agents.h): decodes each message strictly
 * (proto/), checks the access token and the per-connection limit, answers
 * status requests, hands chat requests to the core, and encodes the core's
 * answers.
 *
 * Design notes: a chat request's strings move from the decoded message into
 * the core's chat_req (no copy of a 4 MiB prompt); what stays in the
 * message is freed with it. The request id lives in the context
 * (rep_ctx_user), so every answer, even one made before a job exists, goes
 * back on the right context with the right id. An agent connection that
 * closes has its requests canceled by owner (the pipe id).
 */
#include "scheduler/front/agents.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lmsched/wire.h"
#include "proto/proto.h"
#include "scheduler/front/rep.h"
#include "scheduler/util/log.h"

struct agents_front {
    sched *s;
    rep *rep;
    lms_limits limits;
};

/* ---- answers ------------------------------------------------------------- */

static void ag_send(rep_ctx *c, void *buf, size_t len)
{
    rep_reply(c, buf, len);
    free(buf);
}

static void ag_send_error(rep_ctx *c, uint64_t id, int code, const char *msg,
                            const char *field)
{
    void *buf = NULL;
    size_t len = 0;
    if (lms_encode_error(id, code, msg, field, &buf, &len) != LMSCHED_OK) {
        /* Only ENOMEM gets here; the agent's own timeout answers it. */
        log_error("cannot encode an error reply");
        return;
    }
    ag_send(c, buf, len);
}

/* The sink's answer: the reply goes out on the context of the request. */
static void ag_done(void *arg, job *j, const chat_result *r)
{
    rep_ctx *c = arg;
    uint64_t id = *rep_ctx_user(c);
    (void)j;
    lms_chat_reply reply = {
        .content = (char *)r->content,
        .finish_reason = (char *)r->finish_reason,
        .model = (char *)r->model,
        .usage = {r->usage.prompt_tokens, r->usage.completion_tokens, r->usage.cached_tokens},
        .timings = {r->timings.queue_ms, r->timings.ttft_ms, r->timings.total_ms},
        .retries = r->retries,
    };
    void *buf = NULL;
    size_t len = 0;
    int rc = lms_encode_chat_reply(id, &reply, &buf, &len);
    if (rc != LMSCHED_OK) {
        /* Only our own bug or ENOMEM gets here; still answer. */
        log_error("cannot encode a chat reply: %s", lmsched_strerror(rc));
        ag_send_error(c, id, LMSCHED_EINTERNAL, "scheduler could not encode its reply", NULL);
        return;
    }
    ag_send(c, buf, len);
}

static void ag_fail(void *arg, job *j, int code, const char *msg, const char *field)
{
    rep_ctx *c = arg;
    (void)j;
    ag_send_error(c, *rep_ctx_user(c), code, msg, field);
}

static const sink_ops agents_sink = {
    .done = ag_done,
    .fail = ag_fail,
};

/* ---- requests ------------------------------------------------------------ */

/* Moves the decoded request's strings into a chat_req (the message keeps
 * nothing of them). Returns LMSCHED_OK or LMSCHED_ENOMEM. */
static int ag_take_chat(lms_chat_req *w, chat_req **out)
{
    chat_req *r = NULL;
    int rc = chat_req_alloc(&r);
    if (rc != LMSCHED_OK)
        return rc;
    free(r->system);
    r->system = w->system;
    w->system = NULL;
    if (r->system == NULL) {
        r->system = calloc(1, 1);
        if (r->system == NULL) {
            chat_req_free(r);
            return LMSCHED_ENOMEM;
        }
    }
    r->messages = calloc(w->n_messages > 0 ? w->n_messages : 1, sizeof(*r->messages));
    if (r->messages == NULL) {
        chat_req_free(r);
        return LMSCHED_ENOMEM;
    }
    for (size_t i = 0; i < w->n_messages; i++) {
        r->messages[i].role = w->messages[i].role;
        r->messages[i].content = w->messages[i].content;
        w->messages[i].role = w->messages[i].content = NULL;
    }
    r->n_messages = w->n_messages;
    r->model = w->model;
    w->model = NULL;
    r->max_tokens = w->max_tokens;
    r->has_temperature = w->has_temperature;
    r->temperature = w->temperature;
    r->has_top_p = w->has_top_p;
    r->top_p = w->top_p;
    r->has_seed = w->has_seed;
    r->seed = w->seed;
    r->stop = w->stop;
    r->n_stop = w->n_stop;
    w->stop = NULL;
    w->n_stop = 0;
    r->priority = w->priority;
    r->deadline_ms = w->deadline_ms;
    r->agent = w->agent;
    w->agent = NULL;
    r->client_id = w->client_id;
    w->client_id = NULL;
    *out = r;
    return LMSCHED_OK;
}

static void ag_status(agents_front *w, rep_ctx *c, uint64_t id)
{
    sched_count_add(w->s, SCHED_COUNT_STATUS);
    lms_msg r;
    lms_msg_init(&r, LMS_KIND_STATUS_REPLY);
    r.id = id;
    r.u.status_reply.json = sched_status_json(w->s);
    if (r.u.status_reply.json == NULL) {
        ag_send_error(c, id, LMSCHED_ENOMEM, "out of memory building status", NULL);
        return;
    }
    void *buf = NULL;
    size_t len = 0;
    int rc = lms_encode(&r, &buf, &len);
    lms_msg_fini(&r);
    if (rc != LMSCHED_OK) {
        ag_send_error(c, id, LMSCHED_ENOMEM, "out of memory encoding status", NULL);
        return;
    }
    ag_send(c, buf, len);
}

static void ag_request(void *arg, rep_ctx *c, const void *body, size_t len)
{
    agents_front *w = arg;
    lms_msg m;
    lms_decode_err de;
    int rc = lms_decode(body, len, &w->limits, &m, &de);
    if (rc != LMSCHED_OK) {
        sched_count_add(w->s, SCHED_COUNT_BAD_MESSAGE);
        log_warn("rejected a message from connection %u: %s", rep_ctx_pipe(c), de.message);
        *rep_ctx_user(c) = de.have_id ? de.id : 0;
        ag_send_error(c, *rep_ctx_user(c), rc, de.message, de.field[0] ? de.field : NULL);
        return;
    }
    *rep_ctx_user(c) = m.id;
    /* Every request is checked, status too: the token is the only thing
     * that tells a tcp:// peer from the user. rep_auth_ok logs refusals. */
    if (!rep_auth_ok(w->rep, c, m.auth)) {
        sched_count_add(w->s, SCHED_COUNT_AUTH_REFUSED);
        ag_send_error(c, m.id, LMSCHED_EAUTH,
                        m.auth == NULL ? "this lmsched daemon requires an access token "
                                         "(set LMSCHED_AUTH_TOKEN)"
                                       : "access token refused",
                        "auth");
        goto out;
    }
    if (!rep_within_limit(w->rep, c)) {
        if (m.kind == LMS_KIND_CHAT)
            sched_count_add(w->s, SCHED_COUNT_REFUSED_BUSY);
        ag_send_error(c, m.id, LMSCHED_EBUSY,
                        "too many outstanding requests on this connection; wait for "
                        "replies before sending more (see --max-per-conn)",
                        NULL);
        goto out;
    }
    if (m.kind == LMS_KIND_STATUS) {
        ag_status(w, c, m.id);
        goto out;
    }
    if (m.kind != LMS_KIND_CHAT) {
        char why[96];
        snprintf(why, sizeof(why), "message kind '%s' is not a request", lms_kind_name(m.kind));
        sched_count_add(w->s, SCHED_COUNT_BAD_MESSAGE);
        ag_send_error(c, m.id, LMSCHED_EPROTO, why, "kind");
        goto out;
    }
    chat_req *req = NULL;
    if (ag_take_chat(&m.u.chat, &req) != LMSCHED_OK) {
        ag_send_error(c, m.id, LMSCHED_ENOMEM, "scheduler out of memory", NULL);
        goto out;
    }
    sink k = {.ops = &agents_sink, .arg = c, .owner = rep_ctx_pipe(c), .id = m.id};
    sched_submit(w->s, req, &k);
out:
    if (m.auth != NULL) /* checked; not kept */
        explicit_bzero(m.auth, strlen(m.auth));
    lms_msg_fini(&m);
}

static void ag_pipe_gone(void *arg, uint32_t pipe)
{
    agents_front *w = arg;
    /* The agent is gone: stop spending backend time on its requests. The
     * replies go nowhere, but sending them frees their contexts. */
    unsigned n = sched_cancel_owner(w->s, pipe, "agent disconnected");
    if (n > 0)
        log_info("agent connection %u closed: canceled %u request(s)", pipe, n);
}

/* ---- the front ------------------------------------------------------------ */

static unsigned ag_sending(void *arg)
{
    return rep_sending(((agents_front *)arg)->rep);
}

static const front_ops agents_front_ops = {
    .name = "nng",
    .sending = ag_sending,
};

int agents_open(agents_front **wp, sched *s, const sched_config *cfg)
{
    agents_front *w = calloc(1, sizeof(*w));
    if (w == NULL) {
        fprintf(stderr, "lmsched serve: out of memory\n");
        return 1;
    }
    w->s = s;
    lms_limits_default(&w->limits);
    rep_events ev = {.request = ag_request, .pipe_gone = ag_pipe_gone, .arg = w};
    rep_opts o = {
        .url = cfg->listen,
        .max_msg = w->limits.max_msg_bytes + 1024,
        .socket_mode = cfg->socket_mode,
        .socket_group = cfg->socket_group[0] ? cfg->socket_group : NULL,
        .max_per_conn = cfg->max_per_conn,
        .auth_token_file = cfg->auth_token_file[0] ? cfg->auth_token_file : NULL,
        .force = cfg->force,
    };
    char err[900];
    if (rep_open(&w->rep, s, &o, &ev, err, sizeof(err)) != 0) {
        fprintf(stderr, "lmsched serve: %s\n", err);
        free(w);
        return 4;
    }
    sched_add_front(s, &agents_front_ops, w);
    *wp = w;
    return 0;
}

bool agents_auth_required(const agents_front *w)
{
    return rep_auth_required(w->rep);
}

void agents_close(agents_front *w)
{
    if (w == NULL)
        return;
    rep_close(w->rep);
    free(w);
}
