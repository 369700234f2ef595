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

#include <jansson.h>

#include "lmsched/wire.h"
#include "proto/proto.h"
#include "scheduler/front/rep.h"
#include "scheduler/util/clock.h"
#include "scheduler/util/log.h"

typedef struct ag_stream ag_stream;

/* Cancels that named no request of their connection, kept for a moment:
 * the front's receive contexts hand messages to the loop from several nng
 * threads, so a chat and the cancel its agent sent right after it may
 * arrive here in the other order. A chat that comes within AG_EARLY_US of
 * a cancel naming it is answered canceled at once. */
#define AG_EARLY_CANCELS 64
#define AG_EARLY_US 2000000

typedef struct ag_early {
    uint32_t pipe;
    uint64_t id;
    int64_t at_us; /* 0: free */
} ag_early;

struct agents_front {
    sched *s;
    rep *rep;
    lms_limits limits;
    int64_t stream_timeout_us;
    uint64_t stream_buffer;
    ag_stream *streams; /* every stream not ended and fetched, newest first */
    ag_early early[AG_EARLY_CANCELS]; /* a ring */
    unsigned early_next;
};

/* ---- streams ---------------------------------------------------------------
 *
 * A streamed request's answer comes in pieces (the sink's chunk) and goes
 * out in exchanges: the chat and then each chat_next is held (waiting) until
 * there are pieces it has not sent, or the end. Pieces that arrive while no
 * exchange waits are buffered; the end is kept (the final reply, or the
 * error) until the agent asks for it. A stream ends when its end was sent,
 * or when its agent stops asking (tick): after a chunk went out and no
 * chat_next came within --stream-timeout, or with more than --stream-buffer
 * bytes unread, the request is canceled (its slot freed) and the stream
 * dropped. Loop thread only, like the rest of this file.
 */

enum { AG_RUNNING = 1, AG_DONE, AG_FAILED };

struct ag_stream {
    agents_front *w;
    uint32_t pipe;     /* the connection */
    uint64_t id;       /* the chat that started it */
    job *job;          /* while it runs */
    int state;
    rep_ctx *waiting;  /* an exchange held for pieces, or NULL */
    lms_delta *buf;    /* pieces not sent yet */
    size_t n_buf, cap_buf;
    uint64_t buf_bytes;
    bool overflow;     /* buf_bytes passed --stream-buffer: cancel at the next tick */
    bool submitting;   /* inside sched_submit: an end answered now frees it after */
    bool ended;        /* its end was sent while submitting */
    int64_t poll_by;   /* no exchange waits: the agent must ask by then; 0: none */
    lms_chat_reply final; /* AG_DONE: the answer (owned copies), sent when asked */
    int err_code;      /* AG_FAILED */
    char *err_msg, *err_field;
    ag_stream *prev, *next;
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
        .reasoning = (char *)r->reasoning,
        .logprobs_json = (char *)r->logprobs_json,
    };
    /* Views of the result's calls; few answers have more than a handful. */
    lms_tool_call few[8], *calls = few;
    if (r->n_tool_calls > sizeof(few) / sizeof(few[0]))
        calls = calloc(r->n_tool_calls, sizeof(*calls));
    if (calls == NULL) {
        ag_send_error(c, id, LMSCHED_ENOMEM, "scheduler out of memory for the reply", NULL);
        return;
    }
    for (size_t i = 0; i < r->n_tool_calls; i++)
        calls[i] = (lms_tool_call){
            .id = (char *)r->tool_calls[i].id,
            .type = (char *)r->tool_calls[i].type,
            .name = (char *)r->tool_calls[i].name,
            .arguments = (char *)r->tool_calls[i].arguments,
        };
    reply.tool_calls = r->n_tool_calls > 0 ? calls : NULL;
    reply.n_tool_calls = r->n_tool_calls;
    void *buf = NULL;
    size_t len = 0;
    int rc = lms_encode_chat_reply(id, &reply, &buf, &len);
    if (calls != few)
        free(calls);
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
    .chunk = NULL,
    .done = ag_done,
    .fail = ag_fail,
};

static ag_stream *ag_stream_find(agents_front *w, uint32_t pipe, uint64_t id)
{
    for (ag_stream *st = w->streams; st != NULL; st = st->next)
        if (st->pipe == pipe && st->id == id)
            return st;
    return NULL;
}

static void ag_deltas_clear(ag_stream *st)
{
    for (size_t i = 0; i < st->n_buf; i++) {
        free(st->buf[i].text);
        free(st->buf[i].id);
        free(st->buf[i].name);
    }
    st->n_buf = 0;
    st->buf_bytes = 0;
}

static void ag_final_fini(lms_chat_reply *f)
{
    free(f->content);
    free(f->finish_reason);
    free(f->model);
    free(f->reasoning);
    for (size_t i = 0; i < f->n_tool_calls; i++) {
        free(f->tool_calls[i].id);
        free(f->tool_calls[i].type);
        free(f->tool_calls[i].name);
        free(f->tool_calls[i].arguments);
    }
    free(f->tool_calls);
    free(f->logprobs_json);
    memset(f, 0, sizeof(*f));
}

static void ag_stream_free(ag_stream *st)
{
    agents_front *w = st->w;
    if (st->prev != NULL)
        st->prev->next = st->next;
    else if (w->streams == st)
        w->streams = st->next;
    if (st->next != NULL)
        st->next->prev = st->prev;
    ag_deltas_clear(st);
    free(st->buf);
    ag_final_fini(&st->final);
    free(st->err_msg);
    free(st->err_field);
    free(st);
}

static char *ag_strndup(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d != NULL) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

/* Buffers a piece, joined to the last one when it continues it. Returns
 * false on ENOMEM. */
static bool ag_buffer(ag_stream *st, const chat_delta *d)
{
    lms_delta_kind kind = d->kind == CHAT_DELTA_CONTENT     ? LMS_DELTA_CONTENT
                          : d->kind == CHAT_DELTA_REASONING ? LMS_DELTA_REASONING
                                                            : LMS_DELTA_TOOL_CALL;
    lms_delta *last = st->n_buf > 0 ? &st->buf[st->n_buf - 1] : NULL;
    bool join = last != NULL && last->kind == kind &&
                (kind != LMS_DELTA_TOOL_CALL || (last->index == d->index && d->id == NULL &&
                                                 d->name == NULL));
    if (join) {
        size_t old = last->text != NULL ? strlen(last->text) : 0;
        char *t = realloc(last->text, old + d->len + 1);
        if (t == NULL)
            return false;
        memcpy(t + old, d->text != NULL ? d->text : "", d->len);
        t[old + d->len] = '\0';
        last->text = t;
    } else {
        if (st->n_buf == st->cap_buf) {
            size_t cap = st->cap_buf ? st->cap_buf * 2 : 8;
            lms_delta *b = realloc(st->buf, cap * sizeof(*b));
            if (b == NULL)
                return false;
            st->buf = b;
            st->cap_buf = cap;
        }
        lms_delta *n = &st->buf[st->n_buf];
        memset(n, 0, sizeof(*n));
        n->kind = kind;
        n->index = d->index;
        n->text = d->text != NULL || kind != LMS_DELTA_TOOL_CALL
                      ? ag_strndup(d->text != NULL ? d->text : "", d->len)
                      : NULL;
        n->id = d->id != NULL ? strdup(d->id) : NULL;
        n->name = d->name != NULL ? strdup(d->name) : NULL;
        if ((n->text == NULL && kind != LMS_DELTA_TOOL_CALL) ||
            (d->id != NULL && n->id == NULL) || (d->name != NULL && n->name == NULL)) {
            free(n->text);
            free(n->id);
            free(n->name);
            return false;
        }
        st->n_buf++;
    }
    st->buf_bytes += d->len;
    return true;
}

/* The stream's end went out: it is freed (after sched_submit returns, when
 * the end came from inside it). */
static void ag_stream_end(ag_stream *st)
{
    if (st->submitting)
        st->ended = true;
    else
        ag_stream_free(st);
}

/* Answers the waiting exchange with what the stream has: its pieces, or
 * its end. Returns true when the stream is over. */
static bool ag_stream_answer(ag_stream *st)
{
    rep_ctx *c = st->waiting;
    uint64_t id = *rep_ctx_user(c);
    void *buf = NULL;
    size_t len = 0;
    int rc;
    if (st->state == AG_FAILED) {
        st->waiting = NULL;
        ag_send_error(c, id, st->err_code, st->err_msg, st->err_field);
        ag_stream_end(st);
        return true;
    }
    if (st->state == AG_DONE) {
        st->final.deltas = st->buf;
        st->final.n_deltas = st->n_buf;
        rc = lms_encode_chat_reply(id, &st->final, &buf, &len);
        st->final.deltas = NULL;
        st->final.n_deltas = 0;
        st->waiting = NULL;
        if (rc != LMSCHED_OK)
            ag_send_error(c, id, LMSCHED_EINTERNAL, "scheduler could not encode its reply",
                          NULL);
        else
            ag_send(c, buf, len);
        ag_stream_end(st);
        return true;
    }
    lms_msg m;
    lms_msg_init(&m, LMS_KIND_CHAT_CHUNK);
    m.id = id;
    m.u.chat_chunk.deltas = st->buf;
    m.u.chat_chunk.n_deltas = st->n_buf;
    rc = lms_encode(&m, &buf, &len); /* m is a view: never finied */
    st->waiting = NULL;
    if (rc != LMSCHED_OK) {
        ag_send_error(c, id, LMSCHED_ENOMEM, "scheduler could not encode the stream", NULL);
    } else {
        ag_send(c, buf, len);
        ag_deltas_clear(st);
    }
    st->poll_by = clock_now_us() + st->w->stream_timeout_us;
    return false;
}

static void ag_stream_chunk(void *arg, job *j, const chat_delta *d, size_t n)
{
    ag_stream *st = arg;
    (void)j;
    for (size_t i = 0; i < n; i++) {
        if (!ag_buffer(st, &d[i])) {
            st->overflow = true; /* out of memory: end it like an overflow */
            break;
        }
    }
    if (st->waiting != NULL && st->n_buf > 0)
        ag_stream_answer(st); /* the buffer empties */
    else if (st->buf_bytes > st->w->stream_buffer)
        st->overflow = true;
}

static void ag_stream_done(void *arg, job *j, const chat_result *r)
{
    ag_stream *st = arg;
    lms_chat_reply *f = &st->final;
    (void)j;
    st->job = NULL;
    st->state = AG_DONE;
    f->content = ag_strndup(r->content, r->content_len);
    f->finish_reason = strdup(r->finish_reason);
    f->model = r->model != NULL ? strdup(r->model) : NULL;
    f->usage = (lms_usage){r->usage.prompt_tokens, r->usage.completion_tokens,
                           r->usage.cached_tokens};
    f->timings = (lms_timings){r->timings.queue_ms, r->timings.ttft_ms, r->timings.total_ms};
    f->retries = r->retries;
    f->reasoning = r->reasoning != NULL ? strdup(r->reasoning) : NULL;
    f->logprobs_json = r->logprobs_json != NULL ? strdup(r->logprobs_json) : NULL;
    if (r->n_tool_calls > 0) {
        f->tool_calls = calloc(r->n_tool_calls, sizeof(*f->tool_calls));
        f->n_tool_calls = f->tool_calls != NULL ? r->n_tool_calls : 0;
        for (size_t i = 0; i < f->n_tool_calls; i++) {
            f->tool_calls[i].id = strdup(r->tool_calls[i].id);
            f->tool_calls[i].type = strdup(r->tool_calls[i].type);
            f->tool_calls[i].name = strdup(r->tool_calls[i].name);
            f->tool_calls[i].arguments = strdup(r->tool_calls[i].arguments);
        }
    }
    if (st->waiting != NULL)
        ag_stream_answer(st);
    else if (st->poll_by == 0)
        st->poll_by = clock_now_us() + st->w->stream_timeout_us;
}

static void ag_stream_fail(void *arg, job *j, int code, const char *msg, const char *field)
{
    ag_stream *st = arg;
    (void)j;
    st->job = NULL;
    st->state = AG_FAILED;
    st->err_code = code;
    st->err_msg = strdup(msg);
    st->err_field = field != NULL ? strdup(field) : NULL;
    if (st->waiting != NULL)
        ag_stream_answer(st);
    else if (st->poll_by == 0)
        st->poll_by = clock_now_us() + st->w->stream_timeout_us;
}

static const sink_ops ag_stream_sink = {
    .chunk = ag_stream_chunk,
    .done = ag_stream_done,
    .fail = ag_stream_fail,
};

/* The agent asks for a stream's next pieces. */
static void ag_chat_next(agents_front *w, rep_ctx *c, uint64_t id, uint64_t stream)
{
    ag_stream *st = ag_stream_find(w, rep_ctx_pipe(c), stream);
    if (st == NULL) {
        ag_send_error(c, id, LMSCHED_EPROTO,
                      "no such stream on this connection (it ended, was canceled, or was "
                      "never started)",
                      "stream");
        return;
    }
    if (st->waiting != NULL) {
        ag_send_error(c, id, LMSCHED_EPROTO,
                      "a chat_next for this stream is already waiting; ask again once it is "
                      "answered",
                      "stream");
        return;
    }
    st->waiting = c;
    st->poll_by = 0;
    if (st->n_buf > 0 || st->state != AG_RUNNING)
        ag_stream_answer(st);
}

/* The front's timers: streams whose agent stopped asking. */
static int64_t ag_tick(void *arg, int64_t now)
{
    agents_front *w = arg;
    int64_t next = INT64_MAX;
    ag_stream *nx;
    for (ag_stream *st = w->streams; st != NULL; st = nx) {
        nx = st->next;
        if (st->overflow && st->job != NULL && st->waiting == NULL) {
            char why[200];
            snprintf(why, sizeof(why),
                     "the agent did not read the stream: %llu bytes not fetched, more than "
                     "--stream-buffer (%llu)",
                     (unsigned long long)st->buf_bytes, (unsigned long long)w->stream_buffer);
            sched_cancel_job(w->s, st->job, LMSCHED_ETOOLARGE, why);
            /* the sink stored the error; the buffered pieces are of no use now */
            ag_deltas_clear(st);
        }
        if (st->waiting == NULL && st->poll_by != 0 && now >= st->poll_by) {
            if (st->job != NULL) {
                char why[160];
                snprintf(why, sizeof(why),
                         "the agent did not ask for the stream's next pieces within "
                         "--stream-timeout (%lld ms)",
                         (long long)(w->stream_timeout_us / 1000));
                sched_cancel_job(w->s, st->job, LMSCHED_ECANCELED, why);
            }
            log_info("stream %u/%llu dropped: not polled within %lld ms", st->pipe,
                     (unsigned long long)st->id, (long long)(w->stream_timeout_us / 1000));
            ag_stream_free(st);
            continue;
        }
        if (st->waiting == NULL && st->poll_by != 0 && st->poll_by < next)
            next = st->poll_by;
    }
    return next;
}

/* Whether a cancel naming (pipe, id) came just before: it is then taken. */
static bool ag_early_take(agents_front *w, uint32_t pipe, uint64_t id)
{
    int64_t now = clock_now_us();
    for (unsigned i = 0; i < AG_EARLY_CANCELS; i++) {
        ag_early *e = &w->early[i];
        if (e->at_us != 0 && e->pipe == pipe && e->id == id && now - e->at_us <= AG_EARLY_US) {
            e->at_us = 0;
            return true;
        }
    }
    return false;
}

/* The agent cancels one of its requests. */
static void ag_cancel(agents_front *w, rep_ctx *c, uint64_t id, uint64_t target)
{
    uint32_t pipe = rep_ctx_pipe(c);
    bool found = sched_cancel(w->s, pipe, target, "canceled by the agent");
    ag_stream *st = ag_stream_find(w, pipe, target);
    if (st != NULL && st->waiting == NULL)
        ag_stream_free(st); /* ended before; nobody will ask for it now */
    if (!found && st == NULL) {
        /* Not (or no longer) here: it may still be on its way. */
        w->early[w->early_next] = (ag_early){.pipe = pipe, .id = target,
                                             .at_us = clock_now_us()};
        w->early_next = (w->early_next + 1) % AG_EARLY_CANCELS;
    }
    lms_msg r;
    lms_msg_init(&r, LMS_KIND_CANCEL_REPLY);
    r.id = id;
    r.u.cancel_reply.found = found;
    void *buf = NULL;
    size_t len = 0;
    if (lms_encode(&r, &buf, &len) != LMSCHED_OK) {
        ag_send_error(c, id, LMSCHED_ENOMEM, "out of memory", NULL);
        return;
    }
    ag_send(c, buf, len);
}

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
        lms_chat_msg *from = &w->messages[i];
        r->messages[i] = (chat_msg){
            .role = from->role,
            .content = from->content,
            .parts_json = from->parts_json,
            .tool_calls_json = from->tool_calls_json,
            .tool_call_id = from->tool_call_id,
            .name = from->name,
        };
        memset(from, 0, sizeof(*from));
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
    r->tools_json = w->tools_json;
    r->tool_choice_json = w->tool_choice_json;
    r->response_format_json = w->response_format_json;
    r->extra_json = w->extra_json;
    w->tools_json = w->tool_choice_json = w->response_format_json = w->extra_json = NULL;
    r->parallel_tool_calls = w->parallel_tool_calls;
    r->stream = w->stream;
    *out = r;
    return LMSCHED_OK;
}

/* `extra` may not set what the scheduler sets itself or what has a field
 * of its own. Returns NULL, or the message and (in field) the key. */
static const char *ag_check_extra(const char *extra_json, char *field, size_t field_len,
                                  char *msg, size_t msg_len)
{
    json_t *extra = json_loads(extra_json, 0, NULL);
    const char *key;
    json_t *v;
    const char *bad = NULL;
    json_object_foreach(extra, key, v)
    {
        const char *why = chat_reserved_key(key);
        if (why != NULL) {
            snprintf(field, field_len, "extra.%.40s", key);
            snprintf(msg, msg_len, "field 'extra.%.40s': not allowed in extra: %s", key, why);
            bad = msg;
            break;
        }
    }
    json_decref(extra);
    return bad;
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
    if (m.kind == LMS_KIND_CHAT_NEXT) {
        ag_chat_next(w, c, m.id, m.u.chat_next.stream);
        goto out;
    }
    if (m.kind == LMS_KIND_CANCEL) {
        ag_cancel(w, c, m.id, m.u.cancel.target);
        goto out;
    }
    if (m.kind != LMS_KIND_CHAT) {
        char why[96];
        snprintf(why, sizeof(why), "message kind '%s' is not a request", lms_kind_name(m.kind));
        sched_count_add(w->s, SCHED_COUNT_BAD_MESSAGE);
        ag_send_error(c, m.id, LMSCHED_EPROTO, why, "kind");
        goto out;
    }
    if (m.u.chat.extra_json != NULL) {
        char field[64], why[160];
        if (ag_check_extra(m.u.chat.extra_json, field, sizeof(field), why, sizeof(why)) !=
            NULL) {
            sched_count_add(w->s, SCHED_COUNT_BAD_MESSAGE);
            ag_send_error(c, m.id, LMSCHED_EPROTO, why, field);
            goto out;
        }
    }
    uint32_t pipe = rep_ctx_pipe(c);
    if (ag_early_take(w, pipe, m.id)) {
        sched_count_add(w->s, SCHED_COUNT_CANCELED_EARLY);
        ag_send_error(c, m.id, LMSCHED_ECANCELED,
                      "canceled by the agent (the cancel arrived before the request)", NULL);
        goto out;
    }
    ag_stream *st = NULL;
    if (m.u.chat.stream) {
        if (ag_stream_find(w, pipe, m.id) != NULL) {
            ag_send_error(c, m.id, LMSCHED_EPROTO,
                          "a stream with this id is still open on this connection", "id");
            goto out;
        }
        st = calloc(1, sizeof(*st));
        if (st == NULL) {
            ag_send_error(c, m.id, LMSCHED_ENOMEM, "scheduler out of memory", NULL);
            goto out;
        }
        st->w = w;
        st->pipe = pipe;
        st->id = m.id;
        st->state = AG_RUNNING;
        st->waiting = c;
        st->next = w->streams;
        if (w->streams != NULL)
            w->streams->prev = st;
        w->streams = st;
    }
    chat_req *req = NULL;
    if (ag_take_chat(&m.u.chat, &req) != LMSCHED_OK) {
        if (st != NULL) {
            st->waiting = NULL;
            ag_stream_free(st);
        }
        ag_send_error(c, m.id, LMSCHED_ENOMEM, "scheduler out of memory", NULL);
        goto out;
    }
    sink k = {.ops = st != NULL ? &ag_stream_sink : &agents_sink,
              .arg = st != NULL ? (void *)st : (void *)c,
              .owner = pipe,
              .id = m.id};
    if (st != NULL) {
        st->submitting = true;
        st->job = sched_submit(w->s, req, &k);
        st->submitting = false;
        if (st->ended)
            ag_stream_free(st); /* refused at once: its error went out */
    } else {
        sched_submit(w->s, req, &k);
    }
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
    ag_stream *nx;
    for (ag_stream *st = w->streams; st != NULL; st = nx) {
        nx = st->next;
        if (st->pipe == pipe && st->waiting == NULL)
            ag_stream_free(st);
    }
}

/* ---- the front ------------------------------------------------------------ */

static unsigned ag_sending(void *arg)
{
    return rep_sending(((agents_front *)arg)->rep);
}

static const front_ops agents_front_ops = {
    .name = "nng",
    .sending = ag_sending,
    .tick = ag_tick,
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
    w->stream_timeout_us = (int64_t)cfg->stream_timeout_ms * 1000;
    w->stream_buffer = cfg->stream_buffer;
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
    while (w->streams != NULL)
        ag_stream_free(w->streams);
    free(w);
}
