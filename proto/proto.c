/*
 * proto.c - encoding and strict decoding of the lmsched wire format (see
 * proto.h and docs/protocol.md). This is the only module that talks to
 * msgpack-c; nothing here does I/O.
 *
 * Design notes
 *
 * Decoding runs in three steps:
 *
 *  1. A bounded structural pre-check (lms__precheck) walks the msgpack type
 *     bytes once, without building anything. msgpack-c's C unpacker has no
 *     size limits and allocates an array's or map's elements up front from
 *     the declared count, so a 10-byte message claiming 2^31 elements would
 *     make it allocate gigabytes. The pre-check rejects any declared length
 *     that does not fit in the bytes that remain, any element count larger
 *     than the remaining bytes (every element takes at least one byte),
 *     nesting deeper than LMS__MAX_DEPTH, and trailing bytes. The unpacker
 *     then allocates one msgpack_object (24 bytes) per value, which for a
 *     16 MiB message of one-byte values would still be ~400 MiB, so the
 *     number of values is capped too (LMS__MAX_VALUES; real messages hold a
 *     few thousand). It is a guard, not a second decoder: it checks no field.
 *  2. msgpack_unpack_next builds the object tree in its zone.
 *  3. The lms__dec_* functions check every field against the schema and the
 *     limits and copy the strings out of the zone into the lms_msg, which
 *     then owns them; the zone is destroyed before returning.
 *
 * Every rejection names the field and the problem in lms_decode_err, so the
 * daemon can send it back to the client verbatim.
 */
#include "proto/proto.h"
#include "proto/json.h"

#include <msgpack.h>

#include <float.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Deepest nesting of containers accepted; real messages use 3. */
#define LMS__MAX_DEPTH 16

/* Most msgpack values (map keys included) in one message: a chat with 1024
 * messages holds about 5000, so this only stops amplification attacks. */
#define LMS__MAX_VALUES (1u << 20)

/* Maps with more keys than this are checked for duplicates by sorting. */
#define LMS__DUP_LINEAR_MAX 16

/* Room for the longest field path, "messages[4294967295].content". */
#define LMS__PATH_MAX 64

#define LMS__PRIORITY_MAX 9u
#define LMS__PRIORITY_DEFAULT 5u

void lms_limits_default(lms_limits *lim)
{
    lim->max_msg_bytes = LMSCHED_MAX_MESSAGE_BYTES;
    lim->max_text_bytes = LMSCHED_MAX_TEXT_BYTES;
    lim->max_name_bytes = 256;
    lim->max_messages = 1024;
    lim->max_stop = 16;
    lim->max_deltas = 65536;
    lim->max_tool_calls = 128;
}

const char *lms_kind_name(lms_kind kind)
{
    switch (kind) {
    case LMS_KIND_CHAT:
        return "chat";
    case LMS_KIND_CHAT_REPLY:
        return "chat_reply";
    case LMS_KIND_STATUS:
        return "status";
    case LMS_KIND_STATUS_REPLY:
        return "status_reply";
    case LMS_KIND_ERROR:
        return "error";
    case LMS_KIND_CHAT_CHUNK:
        return "chat_chunk";
    case LMS_KIND_CHAT_NEXT:
        return "chat_next";
    case LMS_KIND_CANCEL:
        return "cancel";
    case LMS_KIND_CANCEL_REPLY:
        return "cancel_reply";
    }
    return "unknown";
}

void lms_msg_init(lms_msg *m, lms_kind kind)
{
    memset(m, 0, sizeof(*m));
    m->kind = kind;
    m->version = LMS_PROTO_VERSION;
    switch (kind) {
    case LMS_KIND_CHAT:
        m->u.chat.max_tokens = -1;
        m->u.chat.priority = LMS__PRIORITY_DEFAULT;
        m->u.chat.parallel_tool_calls = -1;
        break;
    case LMS_KIND_CHAT_REPLY:
        m->u.chat_reply.usage.prompt_tokens = -1;
        m->u.chat_reply.usage.completion_tokens = -1;
        m->u.chat_reply.usage.cached_tokens = -1;
        break;
    case LMS_KIND_STATUS:
    case LMS_KIND_STATUS_REPLY:
    case LMS_KIND_ERROR:
    case LMS_KIND_CHAT_CHUNK:
    case LMS_KIND_CHAT_NEXT:
    case LMS_KIND_CANCEL:
    case LMS_KIND_CANCEL_REPLY:
        break;
    }
}

static void lms__deltas_free(lms_delta *d, size_t n)
{
    for (size_t i = 0; d != NULL && i < n; i++) {
        free(d[i].text);
        free(d[i].id);
        free(d[i].name);
    }
    free(d);
}

void lms_msg_fini(lms_msg *m)
{
    if (m == NULL) {
        return;
    }
    if (m->auth != NULL) {
        /* A credential: do not leave it in freed heap memory. */
        explicit_bzero(m->auth, strlen(m->auth));
        free(m->auth);
    }
    switch (m->kind) {
    case LMS_KIND_CHAT: {
        lms_chat_req *c = &m->u.chat;
        free(c->system);
        for (size_t i = 0; c->messages != NULL && i < c->n_messages; i++) {
            free(c->messages[i].role);
            free(c->messages[i].content);
            free(c->messages[i].parts_json);
            free(c->messages[i].tool_calls_json);
            free(c->messages[i].tool_call_id);
            free(c->messages[i].name);
        }
        free(c->messages);
        free(c->model);
        for (size_t i = 0; c->stop != NULL && i < c->n_stop; i++) {
            free(c->stop[i]);
        }
        free(c->stop);
        free(c->agent);
        free(c->client_id);
        free(c->tools_json);
        free(c->tool_choice_json);
        free(c->response_format_json);
        free(c->extra_json);
        break;
    }
    case LMS_KIND_CHAT_REPLY: {
        lms_chat_reply *r = &m->u.chat_reply;
        free(r->content);
        free(r->finish_reason);
        free(r->model);
        free(r->reasoning);
        for (size_t i = 0; r->tool_calls != NULL && i < r->n_tool_calls; i++) {
            free(r->tool_calls[i].id);
            free(r->tool_calls[i].type);
            free(r->tool_calls[i].name);
            free(r->tool_calls[i].arguments);
        }
        free(r->tool_calls);
        free(r->logprobs_json);
        lms__deltas_free(r->deltas, r->n_deltas);
        break;
    }
    case LMS_KIND_CHAT_CHUNK:
        lms__deltas_free(m->u.chat_chunk.deltas, m->u.chat_chunk.n_deltas);
        break;
    case LMS_KIND_CHAT_NEXT:
    case LMS_KIND_CANCEL:
    case LMS_KIND_CANCEL_REPLY:
        break;
    case LMS_KIND_STATUS_REPLY:
        free(m->u.status_reply.json);
        break;
    case LMS_KIND_ERROR:
        free(m->u.error.message);
        free(m->u.error.field);
        break;
    case LMS_KIND_STATUS:
        break;
    }
    memset(m, 0, sizeof(*m));
}

/* ---- encoding ------------------------------------------------------------ */

/* msgpack's sbuffer reports a failed realloc through the packer's return
 * value; remember the first failure and make every later call a no-op, so
 * the encoders read as a plain list of fields. */
typedef struct lms__enc {
    msgpack_sbuffer sbuf;
    msgpack_packer pk;
    int failed;
    bool bad_json; /* a JSON field was not JSON (EINVAL, not ENOMEM) */
} lms__enc;

static void lms__enc_key(lms__enc *e, const char *key)
{
    if (!e->failed) {
        e->failed = msgpack_pack_str_with_body(&e->pk, key, strlen(key));
    }
}

static void lms__enc_str(lms__enc *e, const char *key, const char *val)
{
    if (key != NULL) {
        lms__enc_key(e, key);
    }
    if (!e->failed) {
        e->failed = msgpack_pack_str_with_body(&e->pk, val, strlen(val));
    }
}

static void lms__enc_uint(lms__enc *e, const char *key, uint64_t val)
{
    lms__enc_key(e, key);
    if (!e->failed) {
        e->failed = msgpack_pack_uint64(&e->pk, val);
    }
}

static void lms__enc_int(lms__enc *e, const char *key, int64_t val)
{
    lms__enc_key(e, key);
    if (!e->failed) {
        e->failed = msgpack_pack_int64(&e->pk, val);
    }
}

static void lms__enc_double(lms__enc *e, const char *key, double val)
{
    lms__enc_key(e, key);
    if (!e->failed) {
        e->failed = msgpack_pack_double(&e->pk, val);
    }
}

static void lms__enc_map(lms__enc *e, const char *key, size_t n)
{
    if (key != NULL) {
        lms__enc_key(e, key);
    }
    if (!e->failed) {
        e->failed = msgpack_pack_map(&e->pk, n);
    }
}

static void lms__enc_array(lms__enc *e, const char *key, size_t n)
{
    if (key != NULL) {
        lms__enc_key(e, key);
    }
    if (!e->failed) {
        e->failed = msgpack_pack_array(&e->pk, n);
    }
}

static void lms__enc_bool(lms__enc *e, const char *key, bool val)
{
    lms__enc_key(e, key);
    if (!e->failed) {
        e->failed = val ? msgpack_pack_true(&e->pk) : msgpack_pack_false(&e->pk);
    }
}

/* A JSON field: the text packed as native msgpack. */
static void lms__enc_json(lms__enc *e, const char *key, const char *json)
{
    lms__enc_key(e, key);
    if (!e->failed) {
        int rc = lmsj_pack(&e->pk, json);
        if (rc != 0) {
            e->failed = 1;
            e->bad_json = rc == -1;
        }
    }
}

static void lms__enc_deltas(lms__enc *e, const char *key, const lms_delta *d, size_t n)
{
    lms__enc_array(e, key, n);
    for (size_t i = 0; i < n; i++) {
        lms__enc_map(e, NULL, 1);
        if (d[i].kind == LMS_DELTA_TOOL_CALL) {
            size_t k = 1 + (d[i].id != NULL) + (d[i].name != NULL) + (d[i].text != NULL);
            lms__enc_map(e, "tool_call", k);
            lms__enc_uint(e, "index", d[i].index);
            if (d[i].id != NULL) {
                lms__enc_str(e, "id", d[i].id);
            }
            if (d[i].name != NULL) {
                lms__enc_str(e, "name", d[i].name);
            }
            if (d[i].text != NULL) {
                lms__enc_str(e, "arguments", d[i].text);
            }
        } else {
            lms__enc_str(e, d[i].kind == LMS_DELTA_REASONING ? "reasoning" : "content",
                         d[i].text);
        }
    }
}

static int lms__deltas_check(const lms_delta *d, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (d[i].kind != LMS_DELTA_TOOL_CALL && d[i].text == NULL) {
            return LMSCHED_EINVAL;
        }
        if (d[i].kind != LMS_DELTA_CONTENT && d[i].kind != LMS_DELTA_REASONING &&
            d[i].kind != LMS_DELTA_TOOL_CALL) {
            return LMSCHED_EINVAL;
        }
    }
    return LMSCHED_OK;
}

/* Required strings are checked before anything is packed, so EINVAL never
 * leaves a half-written buffer behind. */
static int lms__enc_check(const lms_msg *m)
{
    switch (m->kind) {
    case LMS_KIND_CHAT: {
        const lms_chat_req *c = &m->u.chat;
        if (c->system == NULL || (c->n_messages > 0 && c->messages == NULL) ||
            (c->n_stop > 0 && c->stop == NULL)) {
            return LMSCHED_EINVAL;
        }
        for (size_t i = 0; i < c->n_messages; i++) {
            const lms_chat_msg *mm = &c->messages[i];
            if (mm->role == NULL || (mm->content == NULL && mm->parts_json == NULL &&
                                     mm->tool_calls_json == NULL)) {
                return LMSCHED_EINVAL;
            }
        }
        for (size_t i = 0; i < c->n_stop; i++) {
            if (c->stop[i] == NULL) {
                return LMSCHED_EINVAL;
            }
        }
        return LMSCHED_OK;
    }
    case LMS_KIND_CHAT_REPLY: {
        const lms_chat_reply *r = &m->u.chat_reply;
        if (r->content == NULL || r->finish_reason == NULL ||
            (r->n_tool_calls > 0 && r->tool_calls == NULL) ||
            (r->n_deltas > 0 && r->deltas == NULL)) {
            return LMSCHED_EINVAL;
        }
        for (size_t i = 0; i < r->n_tool_calls; i++) {
            const lms_tool_call *t = &r->tool_calls[i];
            if (t->id == NULL || t->type == NULL || t->name == NULL || t->arguments == NULL) {
                return LMSCHED_EINVAL;
            }
        }
        return lms__deltas_check(r->deltas, r->n_deltas);
    }
    case LMS_KIND_CHAT_CHUNK:
        if (m->u.chat_chunk.n_deltas == 0) {
            return LMSCHED_EINVAL;
        }
        return lms__deltas_check(m->u.chat_chunk.deltas, m->u.chat_chunk.n_deltas);
    case LMS_KIND_CHAT_NEXT:
    case LMS_KIND_CANCEL:
    case LMS_KIND_CANCEL_REPLY:
        return LMSCHED_OK;
    case LMS_KIND_STATUS:
        return LMSCHED_OK;
    case LMS_KIND_STATUS_REPLY:
        return m->u.status_reply.json != NULL ? LMSCHED_OK : LMSCHED_EINVAL;
    case LMS_KIND_ERROR:
        return m->u.error.message != NULL ? LMSCHED_OK : LMSCHED_EINVAL;
    }
    return LMSCHED_EINVAL;
}

/* Opens the message map with room for n_body more keys and writes the keys
 * every message carries. */
static void lms__enc_head(lms__enc *e, const char *kind, uint64_t id, size_t n_body)
{
    lms__enc_map(e, NULL, 3 + n_body);
    lms__enc_uint(e, "v", LMS_PROTO_VERSION);
    lms__enc_str(e, "kind", kind);
    lms__enc_uint(e, "id", id);
}

static void lms__enc_chat(lms__enc *e, uint64_t id, const char *auth,
                          const lms_chat_req *c)
{
    /* system, messages, priority, deadline_ms are always written. */
    size_t n = 4;
    n += auth != NULL;
    n += c->model != NULL;
    n += c->max_tokens != -1;
    n += c->has_temperature;
    n += c->has_top_p;
    n += c->n_stop > 0;
    n += c->has_seed;
    n += c->agent != NULL;
    n += c->client_id != NULL;
    n += c->tools_json != NULL;
    n += c->tool_choice_json != NULL;
    n += c->response_format_json != NULL;
    n += c->parallel_tool_calls >= 0;
    n += c->extra_json != NULL;
    n += c->stream;
    lms__enc_head(e, "chat", id, n);
    lms__enc_str(e, "system", c->system);
    lms__enc_array(e, "messages", c->n_messages);
    for (size_t i = 0; i < c->n_messages; i++) {
        const lms_chat_msg *mm = &c->messages[i];
        size_t k = 1 + (mm->content != NULL || mm->parts_json != NULL) +
                   (mm->tool_calls_json != NULL) + (mm->tool_call_id != NULL) +
                   (mm->name != NULL);
        lms__enc_map(e, NULL, k);
        lms__enc_str(e, "role", mm->role);
        if (mm->content != NULL) {
            lms__enc_str(e, "content", mm->content);
        } else if (mm->parts_json != NULL) {
            lms__enc_json(e, "content", mm->parts_json);
        }
        if (mm->tool_calls_json != NULL) {
            lms__enc_json(e, "tool_calls", mm->tool_calls_json);
        }
        if (mm->tool_call_id != NULL) {
            lms__enc_str(e, "tool_call_id", mm->tool_call_id);
        }
        if (mm->name != NULL) {
            lms__enc_str(e, "name", mm->name);
        }
    }
    if (c->model != NULL) {
        lms__enc_str(e, "model", c->model);
    }
    if (c->max_tokens != -1) {
        /* Written as given: the receiver rejects values out of range. */
        lms__enc_int(e, "max_tokens", c->max_tokens);
    }
    if (c->has_temperature) {
        lms__enc_double(e, "temperature", c->temperature);
    }
    if (c->has_top_p) {
        lms__enc_double(e, "top_p", c->top_p);
    }
    if (c->n_stop > 0) {
        lms__enc_array(e, "stop", c->n_stop);
        for (size_t i = 0; i < c->n_stop; i++) {
            lms__enc_str(e, NULL, c->stop[i]);
        }
    }
    if (c->has_seed) {
        lms__enc_int(e, "seed", c->seed);
    }
    lms__enc_uint(e, "priority", c->priority);
    lms__enc_uint(e, "deadline_ms", c->deadline_ms);
    if (c->agent != NULL) {
        lms__enc_str(e, "agent", c->agent);
    }
    if (c->client_id != NULL) {
        lms__enc_str(e, "client_id", c->client_id);
    }
    if (c->tools_json != NULL) {
        lms__enc_json(e, "tools", c->tools_json);
    }
    if (c->tool_choice_json != NULL) {
        lms__enc_json(e, "tool_choice", c->tool_choice_json);
    }
    if (c->response_format_json != NULL) {
        lms__enc_json(e, "response_format", c->response_format_json);
    }
    if (c->parallel_tool_calls >= 0) {
        lms__enc_bool(e, "parallel_tool_calls", c->parallel_tool_calls != 0);
    }
    if (c->extra_json != NULL) {
        lms__enc_json(e, "extra", c->extra_json);
    }
    if (c->stream) {
        lms__enc_bool(e, "stream", true);
    }
    if (auth != NULL) {
        lms__enc_str(e, "auth", auth);
    }
}

static void lms__enc_chat_reply(lms__enc *e, uint64_t id, const lms_chat_reply *r)
{
    const lms_usage *u = &r->usage;
    /* Negative token counts all mean "unknown" and are left out. */
    size_t nu =
        (u->prompt_tokens >= 0) + (u->completion_tokens >= 0) + (u->cached_tokens >= 0);
    /* content, finish_reason, timings, retries are always written. */
    size_t n = 4 + (r->model != NULL) + (nu > 0) + (r->reasoning != NULL) +
               (r->n_tool_calls > 0) + (r->logprobs_json != NULL) + (r->n_deltas > 0);

    lms__enc_head(e, "chat_reply", id, n);
    lms__enc_str(e, "content", r->content);
    lms__enc_str(e, "finish_reason", r->finish_reason);
    if (r->model != NULL) {
        lms__enc_str(e, "model", r->model);
    }
    if (nu > 0) {
        lms__enc_map(e, "usage", nu);
        if (u->prompt_tokens >= 0) {
            lms__enc_uint(e, "prompt_tokens", (uint64_t)u->prompt_tokens);
        }
        if (u->completion_tokens >= 0) {
            lms__enc_uint(e, "completion_tokens", (uint64_t)u->completion_tokens);
        }
        if (u->cached_tokens >= 0) {
            lms__enc_uint(e, "cached_tokens", (uint64_t)u->cached_tokens);
        }
    }
    lms__enc_map(e, "timings", 3);
    lms__enc_double(e, "queue_ms", r->timings.queue_ms);
    lms__enc_double(e, "ttft_ms", r->timings.ttft_ms);
    lms__enc_double(e, "total_ms", r->timings.total_ms);
    lms__enc_uint(e, "retries", r->retries);
    if (r->reasoning != NULL) {
        lms__enc_str(e, "reasoning", r->reasoning);
    }
    if (r->n_tool_calls > 0) {
        lms__enc_array(e, "tool_calls", r->n_tool_calls);
        for (size_t i = 0; i < r->n_tool_calls; i++) {
            const lms_tool_call *t = &r->tool_calls[i];
            lms__enc_map(e, NULL, 3);
            lms__enc_str(e, "id", t->id);
            lms__enc_str(e, "type", t->type);
            lms__enc_map(e, "function", 2);
            lms__enc_str(e, "name", t->name);
            lms__enc_str(e, "arguments", t->arguments);
        }
    }
    if (r->logprobs_json != NULL) {
        lms__enc_json(e, "logprobs", r->logprobs_json);
    }
    if (r->n_deltas > 0) {
        lms__enc_deltas(e, "deltas", r->deltas, r->n_deltas);
    }
}

int lms_encode(const lms_msg *m, void **bufp, size_t *lenp)
{
    lms__enc e;
    int rc;

    if (m == NULL || bufp == NULL || lenp == NULL) {
        return LMSCHED_EINVAL;
    }
    *bufp = NULL;
    *lenp = 0;
    rc = lms__enc_check(m);
    if (rc != LMSCHED_OK) {
        return rc;
    }

    memset(&e, 0, sizeof(e));
    msgpack_sbuffer_init(&e.sbuf);
    msgpack_packer_init(&e.pk, &e.sbuf, msgpack_sbuffer_write);

    switch (m->kind) {
    case LMS_KIND_CHAT:
        lms__enc_chat(&e, m->id, m->auth, &m->u.chat);
        break;
    case LMS_KIND_CHAT_REPLY:
        lms__enc_chat_reply(&e, m->id, &m->u.chat_reply);
        break;
    case LMS_KIND_STATUS:
        lms__enc_head(&e, "status", m->id, m->auth != NULL);
        if (m->auth != NULL) {
            lms__enc_str(&e, "auth", m->auth);
        }
        break;
    case LMS_KIND_STATUS_REPLY:
        lms__enc_head(&e, "status_reply", m->id, 1);
        lms__enc_str(&e, "status", m->u.status_reply.json);
        break;
    case LMS_KIND_CHAT_CHUNK:
        lms__enc_head(&e, "chat_chunk", m->id, 1);
        lms__enc_deltas(&e, "deltas", m->u.chat_chunk.deltas, m->u.chat_chunk.n_deltas);
        break;
    case LMS_KIND_CHAT_NEXT:
        lms__enc_head(&e, "chat_next", m->id, 1 + (m->auth != NULL));
        lms__enc_uint(&e, "stream", m->u.chat_next.stream);
        if (m->auth != NULL) {
            lms__enc_str(&e, "auth", m->auth);
        }
        break;
    case LMS_KIND_CANCEL:
        lms__enc_head(&e, "cancel", m->id, 1 + (m->auth != NULL));
        lms__enc_uint(&e, "target", m->u.cancel.target);
        if (m->auth != NULL) {
            lms__enc_str(&e, "auth", m->auth);
        }
        break;
    case LMS_KIND_CANCEL_REPLY:
        lms__enc_head(&e, "cancel_reply", m->id, 1);
        lms__enc_bool(&e, "found", m->u.cancel_reply.found);
        break;
    case LMS_KIND_ERROR:
        lms__enc_head(&e, "error", m->id, 2 + (m->u.error.field != NULL));
        lms__enc_uint(&e, "code", m->u.error.code);
        lms__enc_str(&e, "message", m->u.error.message);
        if (m->u.error.field != NULL) {
            lms__enc_str(&e, "field", m->u.error.field);
        }
        break;
    }

    if (e.failed) {
        rc = e.bad_json ? LMSCHED_EINVAL : LMSCHED_ENOMEM;
        goto fail;
    }
    *lenp = e.sbuf.size;
    *bufp = msgpack_sbuffer_release(&e.sbuf);
    return LMSCHED_OK;

fail:
    msgpack_sbuffer_destroy(&e.sbuf);
    return rc;
}

int lms_encode_error(uint64_t id, int code, const char *message, const char *field,
                     void **bufp, size_t *lenp)
{
    lms_msg m;

    if (code < 0) {
        return LMSCHED_EINVAL;
    }
    lms_msg_init(&m, LMS_KIND_ERROR);
    m.id = id;
    m.u.error.code = (uint32_t)code;
    /* The struct holds non-const pointers for decoded messages; encoding
     * only reads them. */
    m.u.error.message = (char *)message;
    m.u.error.field = (char *)field;
    return lms_encode(&m, bufp, lenp);
}

int lms_encode_chat_reply(uint64_t id, const lms_chat_reply *reply, void **bufp,
                          size_t *lenp)
{
    lms_msg m;

    lms_msg_init(&m, LMS_KIND_CHAT_REPLY);
    m.id = id;
    /* A copy of the caller's view: encoding only reads the strings, and m
     * is never finied, so nothing is freed or taken. */
    m.u.chat_reply = *reply;
    return lms_encode(&m, bufp, lenp);
}

/* ---- decoding: structural pre-check -------------------------------------- */

typedef struct lms__dec {
    const lms_limits *lim;
    lms_decode_err *err;
} lms__dec;

static int lms__fail(lms__dec *d, int code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int lms__fail(lms__dec *d, int code, const char *field, const char *fmt, ...)
{
    va_list ap;

    d->err->code = code;
    snprintf(d->err->field, sizeof(d->err->field), "%s", field != NULL ? field : "");
    va_start(ap, fmt);
    vsnprintf(d->err->message, sizeof(d->err->message), fmt, ap);
    va_end(ap);
    return code;
}

static uint64_t lms__be(const uint8_t *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        v = (v << 8) | p[i];
    }
    return v;
}

/* What follows a msgpack type byte. */
typedef enum lms__shape {
    LMS__FIXED, /* a fixed number of payload bytes (maybe none) */
    LMS__SIZED, /* a length field, then that many bytes (str, bin, ext) */
    LMS__ARRAY, /* a count field, then that many objects */
    LMS__MAP,   /* a count field, then twice that many objects */
} lms__shape;

/*
 * Walks buf[0..len) as exactly one msgpack object without allocating. For
 * each type byte it learns its shape, how many bytes of length or count
 * field follow (lenb), and how many payload bytes follow those. See the
 * design notes at the top of the file.
 */
static int lms__precheck(lms__dec *d, const uint8_t *p, size_t len)
{
    uint64_t left[LMS__MAX_DEPTH]; /* elements still due in each open container */
    int top = -1;
    size_t pos = 0;
    size_t values = 0;

    for (;;) {
        size_t lenb = 0;      /* bytes of the length/count field */
        uint64_t payload = 0; /* bytes after the length field */
        lms__shape shape = LMS__FIXED;
        uint64_t count = 0; /* elements of a container */
        uint8_t b;

        if (pos >= len) {
            return lms__fail(d, LMSCHED_EPROTO, "", "message truncated at byte %zu", pos);
        }
        if (++values > LMS__MAX_VALUES) {
            return lms__fail(d, LMSCHED_ETOOLARGE, "",
                             "message holds more than %u values", LMS__MAX_VALUES);
        }
        b = p[pos++];
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
            /* fixint, nil, bool: the type byte is the whole object */
        } else if (b <= 0x8f) {
            shape = LMS__MAP;
            count = b & 0x0f;
        } else if (b <= 0x9f) {
            shape = LMS__ARRAY;
            count = b & 0x0f;
        } else if (b <= 0xbf) {
            payload = b & 0x1f;
        } else {
            /* One line per type byte: it reads as a table. */
            /* clang-format off */
            switch (b) {
            case 0xc4: case 0xd9: lenb = 1; shape = LMS__SIZED; break; /* bin8, str8 */
            case 0xc5: case 0xda: lenb = 2; shape = LMS__SIZED; break; /* bin16, str16 */
            case 0xc6: case 0xdb: lenb = 4; shape = LMS__SIZED; break; /* bin32, str32 */
            case 0xc7: lenb = 1; shape = LMS__SIZED; payload = 1; break;  /* ext8 + type */
            case 0xc8: lenb = 2; shape = LMS__SIZED; payload = 1; break;  /* ext16 + type */
            case 0xc9: lenb = 4; shape = LMS__SIZED; payload = 1; break;  /* ext32 + type */
            case 0xcc: case 0xd0: payload = 1; break;
            case 0xcd: case 0xd1: payload = 2; break;
            case 0xca: case 0xce: case 0xd2: payload = 4; break;
            case 0xcb: case 0xcf: case 0xd3: payload = 8; break;
            case 0xd4: payload = 2; break;  /* fixext1 + type */
            case 0xd5: payload = 3; break;
            case 0xd6: payload = 5; break;
            case 0xd7: payload = 9; break;
            case 0xd8: payload = 17; break;
            case 0xdc: lenb = 2; shape = LMS__ARRAY; break;
            case 0xdd: lenb = 4; shape = LMS__ARRAY; break;
            case 0xde: lenb = 2; shape = LMS__MAP; break;
            case 0xdf: lenb = 4; shape = LMS__MAP; break;
            default: /* 0xc1 is never used */
                return lms__fail(d, LMSCHED_EPROTO, "", "invalid msgpack byte 0x%02x at %zu",
                                 b, pos - 1);
            }
            /* clang-format on */
        }
        if (lenb > len - pos) {
            return lms__fail(d, LMSCHED_EPROTO, "", "message truncated at byte %zu", pos);
        }
        if (lenb > 0) {
            uint64_t v = lms__be(p + pos, lenb);
            pos += lenb;
            if (shape == LMS__SIZED) {
                payload += v;
            } else {
                count = v;
            }
        }
        if (payload > len - pos) {
            return lms__fail(
                d, LMSCHED_EPROTO, "",
                "declared length %llu at byte %zu exceeds the %zu bytes left",
                (unsigned long long)payload, pos, len - pos);
        }
        pos += (size_t)payload;

        if (shape == LMS__ARRAY || shape == LMS__MAP) {
            if (shape == LMS__MAP) {
                count *= 2; /* a key and a value per entry; fits: count < 2^32 */
            }
            if (count > len - pos) {
                return lms__fail(
                    d, LMSCHED_EPROTO, "",
                    "declared %llu elements at byte %zu but only %zu bytes left",
                    (unsigned long long)count, pos, len - pos);
            }
            if (top + 2 > LMS__MAX_DEPTH) {
                return lms__fail(d, LMSCHED_EPROTO, "", "nesting deeper than %d levels",
                                 LMS__MAX_DEPTH);
            }
            if (count > 0) {
                left[++top] = count;
                continue;
            }
        }
        /* One object is complete; it may complete its containers too. */
        while (top >= 0 && --left[top] == 0) {
            top--;
        }
        if (top < 0) {
            break;
        }
    }
    if (pos != len) {
        return lms__fail(d, LMSCHED_EPROTO, "", "%zu trailing bytes after the message",
                         len - pos);
    }
    return LMSCHED_OK;
}

/* ---- decoding: field access ---------------------------------------------- */

static const char *lms__type_name(msgpack_object_type t)
{
    switch (t) {
    case MSGPACK_OBJECT_NIL:
        return "nil";
    case MSGPACK_OBJECT_BOOLEAN:
        return "boolean";
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return "integer";
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return "float";
    case MSGPACK_OBJECT_STR:
        return "string";
    case MSGPACK_OBJECT_ARRAY:
        return "array";
    case MSGPACK_OBJECT_MAP:
        return "map";
    case MSGPACK_OBJECT_BIN:
        return "binary";
    case MSGPACK_OBJECT_EXT:
        return "extension";
    }
    return "unknown type";
}

static int lms__type_err(lms__dec *d, const char *field, const char *want,
                         const msgpack_object *o)
{
    return lms__fail(d, LMSCHED_EPROTO, field, "field '%s': expected %s, got %s", field,
                     want, lms__type_name(o->type));
}

static bool lms__key_is(const msgpack_object *k, const char *name)
{
    size_t n = strlen(name);
    return k->via.str.size == n && memcmp(k->via.str.ptr, name, n) == 0;
}

static int lms__key_cmp(const void *a, const void *b)
{
    const msgpack_object_str *x = &(*(const msgpack_object_kv *const *)a)->key.via.str;
    const msgpack_object_str *y = &(*(const msgpack_object_kv *const *)b)->key.via.str;
    if (x->size != y->size) {
        return x->size < y->size ? -1 : 1;
    }
    return x->size == 0 ? 0 : memcmp(x->ptr, y->ptr, x->size);
}

static bool lms__key_eq(const msgpack_object_kv *a, const msgpack_object_kv *b)
{
    return lms__key_cmp(&a, &b) == 0;
}

/* Copies at most 32 bytes of a peer's string for an error message, with
 * anything but printable ASCII replaced, so logs stay readable. */
static void lms__sanitize(char *dst, size_t cap, const char *src, size_t n)
{
    size_t i;

    for (i = 0; i < n && i < 32 && i + 1 < cap; i++) {
        unsigned char ch = (unsigned char)src[i];
        dst[i] = (ch >= 0x20 && ch < 0x7f && ch != '\'') ? (char)ch : '?';
    }
    dst[i] = '\0';
}

/*
 * Checks that o is a map whose keys are all strings, none repeated. Values
 * are not looked at: unknown keys and everything under them are ignored, as
 * a newer peer may send optional fields this side does not know.
 */
static int lms__map_check(lms__dec *d, const msgpack_object *o, const char *field)
{
    const char *name = field[0] != '\0' ? field : "(top level)";
    const msgpack_object_map *m;
    const msgpack_object_kv *dup = NULL;
    char shown[40];

    if (o->type != MSGPACK_OBJECT_MAP) {
        return lms__type_err(d, field, "map", o);
    }
    m = &o->via.map;
    for (uint32_t i = 0; i < m->size; i++) {
        if (m->ptr[i].key.type != MSGPACK_OBJECT_STR) {
            return lms__fail(d, LMSCHED_EPROTO, field,
                             "map '%s': key %u has type %s, not string", name, i,
                             lms__type_name(m->ptr[i].key.type));
        }
    }
    /* Duplicate keys would make "which one wins" differ between peers. */
    if (m->size <= LMS__DUP_LINEAR_MAX) {
        for (uint32_t i = 0; i < m->size && dup == NULL; i++) {
            for (uint32_t j = i + 1; j < m->size && dup == NULL; j++) {
                if (lms__key_eq(&m->ptr[i], &m->ptr[j])) {
                    dup = &m->ptr[i];
                }
            }
        }
    } else {
        const msgpack_object_kv **sorted = malloc(m->size * sizeof(*sorted));
        if (sorted == NULL) {
            return lms__fail(d, LMSCHED_ENOMEM, field, "out of memory");
        }
        for (uint32_t i = 0; i < m->size; i++) {
            sorted[i] = &m->ptr[i];
        }
        qsort(sorted, m->size, sizeof(*sorted), lms__key_cmp);
        for (uint32_t i = 1; i < m->size && dup == NULL; i++) {
            if (lms__key_eq(sorted[i - 1], sorted[i])) {
                dup = sorted[i];
            }
        }
        free(sorted);
    }
    if (dup != NULL) {
        lms__sanitize(shown, sizeof(shown), dup->key.via.str.ptr, dup->key.via.str.size);
        return lms__fail(d, LMSCHED_EPROTO, field, "map '%s': duplicate key '%s'", name,
                         shown);
    }
    return LMSCHED_OK;
}

/* Sets vals[i] to the value of key names[i] in the checked map o, or NULL. */
static void lms__map_find(const msgpack_object *o, const char *const *names,
                          size_t n_names, const msgpack_object **vals)
{
    const msgpack_object_map *m = &o->via.map;

    for (size_t j = 0; j < n_names; j++) {
        vals[j] = NULL;
    }
    for (uint32_t i = 0; i < m->size; i++) {
        for (size_t j = 0; j < n_names; j++) {
            if (lms__key_is(&m->ptr[i].key, names[j])) {
                vals[j] = &m->ptr[i].val;
                break;
            }
        }
    }
}

/* lms__map_check, then lms__map_find. */
static int lms__map_get(lms__dec *d, const msgpack_object *o, const char *field,
                        const char *const *names, size_t n_names,
                        const msgpack_object **vals)
{
    int rc = lms__map_check(d, o, field);
    if (rc == LMSCHED_OK) {
        lms__map_find(o, names, n_names, vals);
    }
    return rc;
}

static int lms__missing(lms__dec *d, const char *field)
{
    return lms__fail(d, LMSCHED_EPROTO, field, "missing required field '%s'", field);
}

/* Strict UTF-8: no overlong forms, no surrogates, nothing past U+10FFFF. */
static bool lms__utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;

    while (i < n) {
        unsigned c = s[i];
        size_t extra;
        uint32_t cp, min;

        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            extra = 1, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            extra = 2, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            extra = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return false;
        }
        if (n - i - 1 < extra) {
            return false;
        }
        for (size_t k = 1; k <= extra; k++) {
            if ((s[i + k] & 0xc0) != 0x80) {
                return false;
            }
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
            return false;
        }
        i += extra + 1;
    }
    return true;
}

/* Copies a string field out of the zone into *out (malloc'd, NUL-terminated). */
static int lms__get_str(lms__dec *d, const msgpack_object *o, const char *field,
                        size_t max, char **out)
{
    const char *p;
    size_t n;

    if (o->type != MSGPACK_OBJECT_STR) {
        return lms__type_err(d, field, "string", o);
    }
    p = o->via.str.ptr;
    n = o->via.str.size;
    if (n > max) {
        return lms__fail(d, LMSCHED_ETOOLARGE, field,
                         "field '%s': %zu bytes exceeds the limit of %zu", field, n, max);
    }
    /* Strings become C strings here and JSON strings in the daemon. */
    if (n > 0 && memchr(p, '\0', n) != NULL) {
        return lms__fail(d, LMSCHED_EPROTO, field,
                         "field '%s': string contains a NUL byte", field);
    }
    if (!lms__utf8_valid((const unsigned char *)p, n)) {
        return lms__fail(d, LMSCHED_EPROTO, field,
                         "field '%s': string is not valid UTF-8", field);
    }
    *out = malloc(n + 1);
    if (*out == NULL) {
        return lms__fail(d, LMSCHED_ENOMEM, field, "out of memory");
    }
    if (n > 0) {
        memcpy(*out, p, n);
    }
    (*out)[n] = '\0';
    return LMSCHED_OK;
}

/* An optional string: absent leaves *out NULL. */
static int lms__opt_str(lms__dec *d, const msgpack_object *o, const char *field,
                        size_t max, char **out)
{
    return o == NULL ? LMSCHED_OK : lms__get_str(d, o, field, max, out);
}

static int lms__req_str(lms__dec *d, const msgpack_object *o, const char *field,
                        size_t max, char **out)
{
    return o == NULL ? lms__missing(d, field) : lms__get_str(d, o, field, max, out);
}

/* A non-negative integer in [min, max]. */
static int lms__get_uint(lms__dec *d, const msgpack_object *o, const char *field,
                         uint64_t min, uint64_t max, uint64_t *out)
{
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        return lms__fail(d, LMSCHED_EPROTO, field,
                         "field '%s': %lld is out of range %llu..%llu", field,
                         (long long)o->via.i64, (unsigned long long)min,
                         (unsigned long long)max);
    }
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
        return lms__type_err(d, field, "integer", o);
    }
    if (o->via.u64 < min || o->via.u64 > max) {
        return lms__fail(d, LMSCHED_EPROTO, field,
                         "field '%s': %llu is out of range %llu..%llu", field,
                         (unsigned long long)o->via.u64, (unsigned long long)min,
                         (unsigned long long)max);
    }
    *out = o->via.u64;
    return LMSCHED_OK;
}

static int lms__get_i64(lms__dec *d, const msgpack_object *o, const char *field,
                        int64_t *out)
{
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *out = o->via.i64;
        return LMSCHED_OK;
    }
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
        return lms__type_err(d, field, "integer", o);
    }
    if (o->via.u64 > (uint64_t)INT64_MAX) {
        return lms__fail(d, LMSCHED_EPROTO, field,
                         "field '%s': %llu is out of the signed 64-bit range", field,
                         (unsigned long long)o->via.u64);
    }
    *out = (int64_t)o->via.u64;
    return LMSCHED_OK;
}

/* A number, integer or float, in [min, max]; NaN is never in range. */
static int lms__get_num(lms__dec *d, const msgpack_object *o, const char *field,
                        double min, double max, double *out)
{
    double v;

    switch (o->type) {
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        v = (double)o->via.u64;
        break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        v = (double)o->via.i64;
        break;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        v = o->via.f64;
        break;
    default:
        return lms__type_err(d, field, "number", o);
    }
    if (!(v >= min && v <= max)) {
        return lms__fail(d, LMSCHED_EPROTO, field,
                         "field '%s': %g is out of range %g..%g", field, v, min, max);
    }
    *out = v;
    return LMSCHED_OK;
}

static int lms__get_bool(lms__dec *d, const msgpack_object *o, const char *field, bool *out)
{
    if (o->type != MSGPACK_OBJECT_BOOLEAN) {
        return lms__type_err(d, field, "boolean", o);
    }
    *out = o->via.boolean;
    return LMSCHED_OK;
}

/* A JSON field: o as compact JSON text (*out, malloc'd), at most max bytes
 * of it. want (NULL: any) names the msgpack types it may have, as
 * "array", "map", "string or map". */
static int lms__get_json(lms__dec *d, const msgpack_object *o, const char *field,
                         const char *want, size_t max, char **out)
{
    char why[128];
    if (want != NULL) {
        bool ok = (strstr(want, "array") != NULL && o->type == MSGPACK_OBJECT_ARRAY) ||
                  (strstr(want, "map") != NULL && o->type == MSGPACK_OBJECT_MAP) ||
                  (strstr(want, "string") != NULL && o->type == MSGPACK_OBJECT_STR);
        if (!ok) {
            return lms__type_err(d, field, want, o);
        }
    }
    int rc = lmsj_from_msgpack(o, out, why, sizeof(why));
    if (rc == -2) {
        return lms__fail(d, LMSCHED_ENOMEM, field, "out of memory");
    }
    if (rc != 0) {
        return lms__fail(d, LMSCHED_EPROTO, field, "field '%s': not JSON: %s", field, why);
    }
    if (strlen(*out) > max) {
        size_t n = strlen(*out);
        free(*out);
        *out = NULL;
        return lms__fail(d, LMSCHED_ETOOLARGE, field,
                         "field '%s': %zu bytes of JSON exceeds the limit of %zu", field, n,
                         max);
    }
    return LMSCHED_OK;
}

/* ---- decoding: messages -------------------------------------------------- */

enum {
    LMS__C_SYSTEM,
    LMS__C_MESSAGES,
    LMS__C_MODEL,
    LMS__C_MAX_TOKENS,
    LMS__C_TEMPERATURE,
    LMS__C_TOP_P,
    LMS__C_STOP,
    LMS__C_SEED,
    LMS__C_PRIORITY,
    LMS__C_DEADLINE,
    LMS__C_AGENT,
    LMS__C_CLIENT_ID,
    LMS__C_TOOLS,
    LMS__C_TOOL_CHOICE,
    LMS__C_RESPONSE_FORMAT,
    LMS__C_PARALLEL,
    LMS__C_EXTRA,
    LMS__C_STREAM,
    LMS__C_N
};

static const char *const lms__chat_keys[LMS__C_N] = {
    "system", "messages", "model",    "max_tokens",  "temperature", "top_p",
    "stop",   "seed",     "priority", "deadline_ms", "agent",       "client_id",
    "tools",  "tool_choice", "response_format", "parallel_tool_calls", "extra", "stream",
};

static int lms__dec_chat_msgs(lms__dec *d, const msgpack_object *o, lms_chat_req *c)
{
    static const char *const keys[] = {"role", "content", "tool_calls", "tool_call_id",
                                       "name"};
    const lms_limits *lim = d->lim;
    uint32_t n;
    int rc;

    if (o == NULL) {
        return lms__missing(d, "messages");
    }
    if (o->type != MSGPACK_OBJECT_ARRAY) {
        return lms__type_err(d, "messages", "array", o);
    }
    n = o->via.array.size;
    if (n == 0) {
        return lms__fail(d, LMSCHED_EPROTO, "messages",
                         "field 'messages': needs at least one entry");
    }
    if (n > lim->max_messages) {
        return lms__fail(d, LMSCHED_ETOOLARGE, "messages",
                         "field 'messages': %u entries exceeds the limit of %zu", n,
                         lim->max_messages);
    }
    c->messages = calloc(n, sizeof(*c->messages));
    if (c->messages == NULL) {
        return lms__fail(d, LMSCHED_ENOMEM, "messages", "out of memory");
    }
    c->n_messages = n; /* set now so lms_msg_fini frees a partial array */
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *v[5];
        char path[LMS__PATH_MAX];
        char fpath[LMS__PATH_MAX];
        lms_chat_msg *m = &c->messages[i];

        snprintf(path, sizeof(path), "messages[%u]", i);
        if ((rc = lms__map_get(d, &o->via.array.ptr[i], path, keys, 5, v)) != 0) {
            return rc;
        }
        snprintf(fpath, sizeof(fpath), "messages[%u].role", i);
        if ((rc = lms__req_str(d, v[0], fpath, lim->max_name_bytes, &m->role)) != 0) {
            return rc;
        }
        /* The content: a string, an array of parts, or nothing (nil or
         * absent) when the message carries tool calls. */
        snprintf(fpath, sizeof(fpath), "messages[%u].content", i);
        if (v[1] != NULL && v[1]->type == MSGPACK_OBJECT_ARRAY) {
            rc = lms__get_json(d, v[1], fpath, "array", lim->max_text_bytes, &m->parts_json);
        } else if (v[1] != NULL && v[1]->type != MSGPACK_OBJECT_NIL) {
            rc = lms__get_str(d, v[1], fpath, lim->max_text_bytes, &m->content);
        }
        if (rc != 0) {
            return rc;
        }
        snprintf(fpath, sizeof(fpath), "messages[%u].tool_calls", i);
        if (v[2] != NULL && (rc = lms__get_json(d, v[2], fpath, "array", lim->max_text_bytes,
                                                &m->tool_calls_json)) != 0) {
            return rc;
        }
        if (m->content == NULL && m->parts_json == NULL && m->tool_calls_json == NULL) {
            snprintf(fpath, sizeof(fpath), "messages[%u].content", i);
            return lms__missing(d, fpath);
        }
        snprintf(fpath, sizeof(fpath), "messages[%u].tool_call_id", i);
        if ((rc = lms__opt_str(d, v[3], fpath, lim->max_name_bytes, &m->tool_call_id)) != 0) {
            return rc;
        }
        snprintf(fpath, sizeof(fpath), "messages[%u].name", i);
        if ((rc = lms__opt_str(d, v[4], fpath, lim->max_name_bytes, &m->name)) != 0) {
            return rc;
        }
    }
    return LMSCHED_OK;
}

static int lms__dec_stop(lms__dec *d, const msgpack_object *o, lms_chat_req *c)
{
    uint32_t n;
    int rc;

    if (o->type != MSGPACK_OBJECT_ARRAY) {
        return lms__type_err(d, "stop", "array", o);
    }
    n = o->via.array.size;
    if (n > d->lim->max_stop) {
        return lms__fail(d, LMSCHED_ETOOLARGE, "stop",
                         "field 'stop': %u entries exceeds the limit of %zu", n,
                         d->lim->max_stop);
    }
    if (n == 0) {
        return LMSCHED_OK;
    }
    c->stop = calloc(n, sizeof(*c->stop));
    if (c->stop == NULL) {
        return lms__fail(d, LMSCHED_ENOMEM, "stop", "out of memory");
    }
    c->n_stop = n;
    for (uint32_t i = 0; i < n; i++) {
        char path[LMS__PATH_MAX];
        snprintf(path, sizeof(path), "stop[%u]", i);
        if ((rc = lms__get_str(d, &o->via.array.ptr[i], path, d->lim->max_name_bytes,
                               &c->stop[i])) != 0) {
            return rc;
        }
    }
    return LMSCHED_OK;
}

/* The body decoders get the message map already checked by lms__dec_top. */
static int lms__dec_chat(lms__dec *d, const msgpack_object *top, lms_chat_req *c)
{
    const msgpack_object *v[LMS__C_N];
    const lms_limits *lim = d->lim;
    uint64_t u;
    int rc;

    lms__map_find(top, lms__chat_keys, LMS__C_N, v);
    if ((rc = lms__req_str(d, v[LMS__C_SYSTEM], "system", lim->max_text_bytes,
                           &c->system)) != 0) {
        return rc;
    }
    if ((rc = lms__dec_chat_msgs(d, v[LMS__C_MESSAGES], c)) != 0) {
        return rc;
    }
    if ((rc = lms__opt_str(d, v[LMS__C_MODEL], "model", lim->max_name_bytes,
                           &c->model)) != 0) {
        return rc;
    }
    if (v[LMS__C_MAX_TOKENS] != NULL) {
        if ((rc = lms__get_uint(d, v[LMS__C_MAX_TOKENS], "max_tokens", 1,
                                LMSCHED_MAX_TOKENS_MAX, &u)) != 0) {
            return rc;
        }
        c->max_tokens = (int32_t)u;
    }
    if (v[LMS__C_TEMPERATURE] != NULL) {
        if ((rc = lms__get_num(d, v[LMS__C_TEMPERATURE], "temperature", 0, 10,
                               &c->temperature)) != 0) {
            return rc;
        }
        c->has_temperature = true;
    }
    if (v[LMS__C_TOP_P] != NULL) {
        if ((rc = lms__get_num(d, v[LMS__C_TOP_P], "top_p", 0, 1, &c->top_p)) != 0) {
            return rc;
        }
        c->has_top_p = true;
    }
    if (v[LMS__C_STOP] != NULL && (rc = lms__dec_stop(d, v[LMS__C_STOP], c)) != 0) {
        return rc;
    }
    if (v[LMS__C_SEED] != NULL) {
        if ((rc = lms__get_i64(d, v[LMS__C_SEED], "seed", &c->seed)) != 0) {
            return rc;
        }
        c->has_seed = true;
    }
    if (v[LMS__C_PRIORITY] != NULL) {
        if ((rc = lms__get_uint(d, v[LMS__C_PRIORITY], "priority", 0, LMS__PRIORITY_MAX,
                                &u)) != 0) {
            return rc;
        }
        c->priority = (uint8_t)u;
    }
    if (v[LMS__C_DEADLINE] != NULL) {
        if ((rc = lms__get_uint(d, v[LMS__C_DEADLINE], "deadline_ms", 0, UINT32_MAX,
                                &u)) != 0) {
            return rc;
        }
        c->deadline_ms = (uint32_t)u;
    }
    if ((rc = lms__opt_str(d, v[LMS__C_AGENT], "agent", lim->max_name_bytes,
                           &c->agent)) != 0 ||
        (rc = lms__opt_str(d, v[LMS__C_CLIENT_ID], "client_id", lim->max_name_bytes,
                           &c->client_id)) != 0) {
        return rc;
    }
    if (v[LMS__C_TOOLS] != NULL &&
        (rc = lms__get_json(d, v[LMS__C_TOOLS], "tools", "array", lim->max_text_bytes,
                            &c->tools_json)) != 0) {
        return rc;
    }
    if (v[LMS__C_TOOL_CHOICE] != NULL &&
        (rc = lms__get_json(d, v[LMS__C_TOOL_CHOICE], "tool_choice", "string or map",
                            lim->max_text_bytes, &c->tool_choice_json)) != 0) {
        return rc;
    }
    if (v[LMS__C_RESPONSE_FORMAT] != NULL &&
        (rc = lms__get_json(d, v[LMS__C_RESPONSE_FORMAT], "response_format", "map",
                            lim->max_text_bytes, &c->response_format_json)) != 0) {
        return rc;
    }
    if (v[LMS__C_PARALLEL] != NULL) {
        bool b = false;
        if ((rc = lms__get_bool(d, v[LMS__C_PARALLEL], "parallel_tool_calls", &b)) != 0) {
            return rc;
        }
        c->parallel_tool_calls = b ? 1 : 0;
    }
    if (v[LMS__C_EXTRA] != NULL &&
        (rc = lms__get_json(d, v[LMS__C_EXTRA], "extra", "map", lim->max_text_bytes,
                            &c->extra_json)) != 0) {
        return rc;
    }
    if (v[LMS__C_STREAM] != NULL &&
        (rc = lms__get_bool(d, v[LMS__C_STREAM], "stream", &c->stream)) != 0) {
        return rc;
    }
    return LMSCHED_OK;
}

/* The deltas of a chat_chunk or of a stream's final chat_reply. */
static int lms__dec_deltas(lms__dec *d, const msgpack_object *o, const char *field,
                           lms_delta **out, size_t *n_out)
{
    static const char *const keys[] = {"content", "reasoning", "tool_call"};
    static const char *const tkeys[] = {"index", "id", "name", "arguments"};
    const lms_limits *lim = d->lim;
    int rc;

    if (o->type != MSGPACK_OBJECT_ARRAY) {
        return lms__type_err(d, field, "array", o);
    }
    uint32_t n = o->via.array.size;
    if (n > lim->max_deltas) {
        return lms__fail(d, LMSCHED_ETOOLARGE, field,
                         "field '%s': %u entries exceeds the limit of %zu", field, n,
                         lim->max_deltas);
    }
    if (n == 0) {
        return LMSCHED_OK;
    }
    *out = calloc(n, sizeof(**out));
    if (*out == NULL) {
        return lms__fail(d, LMSCHED_ENOMEM, field, "out of memory");
    }
    *n_out = n;
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *v[3];
        char path[LMS__PATH_MAX];
        lms_delta *dl = &(*out)[i];
        snprintf(path, sizeof(path), "%s[%u]", field, i);
        if ((rc = lms__map_get(d, &o->via.array.ptr[i], path, keys, 3, v)) != 0) {
            return rc;
        }
        if (v[0] != NULL) {
            dl->kind = LMS_DELTA_CONTENT;
            rc = lms__get_str(d, v[0], path, lim->max_text_bytes, &dl->text);
        } else if (v[1] != NULL) {
            dl->kind = LMS_DELTA_REASONING;
            rc = lms__get_str(d, v[1], path, lim->max_text_bytes, &dl->text);
        } else if (v[2] != NULL) {
            const msgpack_object *tv[4];
            uint64_t u = 0;
            dl->kind = LMS_DELTA_TOOL_CALL;
            if ((rc = lms__map_get(d, v[2], path, tkeys, 4, tv)) != 0) {
                return rc;
            }
            if (tv[0] == NULL) {
                return lms__missing(d, path);
            }
            if ((rc = lms__get_uint(d, tv[0], path, 0, lim->max_tool_calls, &u)) != 0 ||
                (rc = lms__opt_str(d, tv[1], path, lim->max_name_bytes, &dl->id)) != 0 ||
                (rc = lms__opt_str(d, tv[2], path, lim->max_name_bytes, &dl->name)) != 0 ||
                (rc = lms__opt_str(d, tv[3], path, lim->max_text_bytes, &dl->text)) != 0) {
                return rc;
            }
            dl->index = (uint32_t)u;
        } else {
            return lms__fail(d, LMSCHED_EPROTO, path,
                             "field '%s': a delta needs content, reasoning or tool_call", path);
        }
        if (rc != 0) {
            return rc;
        }
    }
    return LMSCHED_OK;
}

static int lms__dec_tool_calls(lms__dec *d, const msgpack_object *o, lms_chat_reply *r)
{
    static const char *const keys[] = {"id", "type", "function"};
    static const char *const fkeys[] = {"name", "arguments"};
    const lms_limits *lim = d->lim;
    int rc;

    if (o->type != MSGPACK_OBJECT_ARRAY) {
        return lms__type_err(d, "tool_calls", "array", o);
    }
    uint32_t n = o->via.array.size;
    if (n > lim->max_tool_calls) {
        return lms__fail(d, LMSCHED_ETOOLARGE, "tool_calls",
                         "field 'tool_calls': %u entries exceeds the limit of %zu", n,
                         lim->max_tool_calls);
    }
    if (n == 0) {
        return LMSCHED_OK;
    }
    r->tool_calls = calloc(n, sizeof(*r->tool_calls));
    if (r->tool_calls == NULL) {
        return lms__fail(d, LMSCHED_ENOMEM, "tool_calls", "out of memory");
    }
    r->n_tool_calls = n;
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *v[3], *fv[2];
        char path[LMS__PATH_MAX], fpath[LMS__PATH_MAX];
        lms_tool_call *t = &r->tool_calls[i];
        snprintf(path, sizeof(path), "tool_calls[%u]", i);
        if ((rc = lms__map_get(d, &o->via.array.ptr[i], path, keys, 3, v)) != 0) {
            return rc;
        }
        snprintf(fpath, sizeof(fpath), "tool_calls[%u].id", i);
        if ((rc = lms__req_str(d, v[0], fpath, lim->max_name_bytes, &t->id)) != 0) {
            return rc;
        }
        snprintf(fpath, sizeof(fpath), "tool_calls[%u].type", i);
        if ((rc = lms__req_str(d, v[1], fpath, lim->max_name_bytes, &t->type)) != 0) {
            return rc;
        }
        snprintf(fpath, sizeof(fpath), "tool_calls[%u].function", i);
        if (v[2] == NULL) {
            return lms__missing(d, fpath);
        }
        if ((rc = lms__map_get(d, v[2], fpath, fkeys, 2, fv)) != 0) {
            return rc;
        }
        snprintf(fpath, sizeof(fpath), "tool_calls[%u].function.name", i);
        if ((rc = lms__req_str(d, fv[0], fpath, lim->max_name_bytes, &t->name)) != 0) {
            return rc;
        }
        snprintf(fpath, sizeof(fpath), "tool_calls[%u].function.arguments", i);
        if ((rc = lms__req_str(d, fv[1], fpath, lim->max_text_bytes, &t->arguments)) != 0) {
            return rc;
        }
    }
    return LMSCHED_OK;
}

static int lms__dec_chat_reply(lms__dec *d, const msgpack_object *top, lms_chat_reply *r)
{
    static const char *const keys[] = {"content", "finish_reason", "model",
                                       "usage",   "timings",       "retries",
                                       "reasoning", "tool_calls",  "logprobs",
                                       "deltas"};
    static const char *const ukeys[] = {"prompt_tokens", "completion_tokens",
                                        "cached_tokens"};
    static const char *const upaths[] = {"usage.prompt_tokens", "usage.completion_tokens",
                                         "usage.cached_tokens"};
    static const char *const tkeys[] = {"queue_ms", "ttft_ms", "total_ms"};
    static const char *const tpaths[] = {"timings.queue_ms", "timings.ttft_ms",
                                         "timings.total_ms"};
    const msgpack_object *v[10];
    const lms_limits *lim = d->lim;
    int rc;

    lms__map_find(top, keys, 10, v);
    if ((rc = lms__req_str(d, v[0], "content", lim->max_text_bytes, &r->content)) != 0 ||
        (rc = lms__req_str(d, v[1], "finish_reason", lim->max_name_bytes,
                           &r->finish_reason)) != 0 ||
        (rc = lms__opt_str(d, v[2], "model", lim->max_name_bytes, &r->model)) != 0) {
        return rc;
    }
    if (v[3] != NULL) {
        const msgpack_object *uv[3];
        int64_t *dst[3] = {&r->usage.prompt_tokens, &r->usage.completion_tokens,
                           &r->usage.cached_tokens};
        if ((rc = lms__map_get(d, v[3], "usage", ukeys, 3, uv)) != 0) {
            return rc;
        }
        for (int i = 0; i < 3; i++) {
            uint64_t u;
            if (uv[i] == NULL) {
                continue;
            }
            if ((rc = lms__get_uint(d, uv[i], upaths[i], 0, INT64_MAX, &u)) != 0) {
                return rc;
            }
            *dst[i] = (int64_t)u;
        }
    }
    if (v[4] != NULL) {
        const msgpack_object *tv[3];
        double *dst[3] = {&r->timings.queue_ms, &r->timings.ttft_ms,
                          &r->timings.total_ms};
        if ((rc = lms__map_get(d, v[4], "timings", tkeys, 3, tv)) != 0) {
            return rc;
        }
        for (int i = 0; i < 3; i++) {
            if (tv[i] != NULL && (rc = lms__get_num(d, tv[i], tpaths[i], -DBL_MAX,
                                                    DBL_MAX, dst[i])) != 0) {
                return rc;
            }
        }
    }
    if (v[5] != NULL) {
        uint64_t u;
        if ((rc = lms__get_uint(d, v[5], "retries", 0, UINT32_MAX, &u)) != 0) {
            return rc;
        }
        r->retries = (uint32_t)u;
    }
    if ((rc = lms__opt_str(d, v[6], "reasoning", lim->max_text_bytes, &r->reasoning)) != 0) {
        return rc;
    }
    if (v[7] != NULL && (rc = lms__dec_tool_calls(d, v[7], r)) != 0) {
        return rc;
    }
    if (v[8] != NULL && (rc = lms__get_json(d, v[8], "logprobs", "array",
                                            lim->max_text_bytes, &r->logprobs_json)) != 0) {
        return rc;
    }
    if (v[9] != NULL &&
        (rc = lms__dec_deltas(d, v[9], "deltas", &r->deltas, &r->n_deltas)) != 0) {
        return rc;
    }
    return LMSCHED_OK;
}

static int lms__dec_chat_chunk(lms__dec *d, const msgpack_object *top, lms_chat_chunk *c)
{
    static const char *const keys[] = {"deltas"};
    const msgpack_object *v[1];
    int rc;

    lms__map_find(top, keys, 1, v);
    if (v[0] == NULL) {
        return lms__missing(d, "deltas");
    }
    if ((rc = lms__dec_deltas(d, v[0], "deltas", &c->deltas, &c->n_deltas)) != 0) {
        return rc;
    }
    if (c->n_deltas == 0) {
        return lms__fail(d, LMSCHED_EPROTO, "deltas",
                         "field 'deltas': needs at least one entry");
    }
    return LMSCHED_OK;
}

/* chat_next's "stream", cancel's "target": a request id. */
static int lms__dec_target(lms__dec *d, const msgpack_object *top, const char *key,
                           uint64_t *out)
{
    const char *const keys[] = {key};
    const msgpack_object *v[1];

    lms__map_find(top, keys, 1, v);
    if (v[0] == NULL) {
        return lms__missing(d, key);
    }
    return lms__get_uint(d, v[0], key, 0, UINT64_MAX, out);
}

static int lms__dec_cancel_reply(lms__dec *d, const msgpack_object *top, lms_cancel_reply *c)
{
    static const char *const keys[] = {"found"};
    const msgpack_object *v[1];

    lms__map_find(top, keys, 1, v);
    if (v[0] == NULL) {
        return lms__missing(d, "found");
    }
    return lms__get_bool(d, v[0], "found", &c->found);
}

static int lms__dec_status_reply(lms__dec *d, const msgpack_object *top,
                                 lms_status_reply *s)
{
    static const char *const keys[] = {"status"};
    const msgpack_object *v[1];

    lms__map_find(top, keys, 1, v);
    return lms__req_str(d, v[0], "status", d->lim->max_text_bytes, &s->json);
}

static int lms__dec_error(lms__dec *d, const msgpack_object *top, lms_error_reply *e)
{
    static const char *const keys[] = {"code", "message", "field"};
    const msgpack_object *v[3];
    uint64_t u;
    int rc;

    lms__map_find(top, keys, 3, v);
    if (v[0] == NULL) {
        return lms__missing(d, "code");
    }
    /* Any uint32: a client must survive codes added after it was built. */
    if ((rc = lms__get_uint(d, v[0], "code", 0, UINT32_MAX, &u)) != 0) {
        return rc;
    }
    e->code = (uint32_t)u;
    if ((rc = lms__req_str(d, v[1], "message", d->lim->max_text_bytes, &e->message)) !=
        0) {
        return rc;
    }
    return lms__opt_str(d, v[2], "field", d->lim->max_name_bytes, &e->field);
}

static int lms__dec_kind(lms__dec *d, const msgpack_object *o, lms_kind *kind)
{
    static const lms_kind kinds[] = {LMS_KIND_CHAT,         LMS_KIND_CHAT_REPLY,
                                     LMS_KIND_STATUS,       LMS_KIND_STATUS_REPLY,
                                     LMS_KIND_ERROR,        LMS_KIND_CHAT_CHUNK,
                                     LMS_KIND_CHAT_NEXT,    LMS_KIND_CANCEL,
                                     LMS_KIND_CANCEL_REPLY};
    char shown[40];

    if (o == NULL) {
        return lms__missing(d, "kind");
    }
    if (o->type != MSGPACK_OBJECT_STR) {
        return lms__type_err(d, "kind", "string", o);
    }
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
        if (lms__key_is(o, lms_kind_name(kinds[i]))) {
            *kind = kinds[i];
            return LMSCHED_OK;
        }
    }
    lms__sanitize(shown, sizeof(shown), o->via.str.ptr, o->via.str.size);
    return lms__fail(d, LMSCHED_EPROTO, "kind", "field 'kind': unknown message kind '%s'",
                     shown);
}

static int lms__dec_top(lms__dec *d, const msgpack_object *top, lms_msg *out)
{
    static const char *const keys[] = {"v", "kind", "id"};
    const msgpack_object *v[3];
    lms_kind kind = LMS_KIND_STATUS; /* set by lms__dec_kind on success */
    uint64_t u;
    int rc;

    if (top->type != MSGPACK_OBJECT_MAP) {
        return lms__fail(d, LMSCHED_EPROTO, "", "message has type %s, not map",
                         lms__type_name(top->type));
    }
    if ((rc = lms__map_get(d, top, "", keys, 3, v)) != 0) {
        return rc;
    }
    /* The id first, so even a rejected message gets an addressed reply. */
    if (v[2] != NULL) {
        if ((rc = lms__get_uint(d, v[2], "id", 0, UINT64_MAX, &u)) != 0) {
            return rc;
        }
        d->err->have_id = true;
        d->err->id = u;
    }
    /* The version before anything kind-specific: a newer peer's message
     * may not parse as this version's schema at all. */
    if (v[0] == NULL) {
        return lms__missing(d, "v");
    }
    if ((rc = lms__get_uint(d, v[0], "v", 1, UINT32_MAX, &u)) != 0) {
        return rc;
    }
    if (u != LMS_PROTO_VERSION) {
        return lms__fail(d, LMSCHED_EVERSION, "v",
                         "protocol version %llu not supported (this side speaks %d)",
                         (unsigned long long)u, LMS_PROTO_VERSION);
    }
    if ((rc = lms__dec_kind(d, v[1], &kind)) != 0) {
        return rc;
    }
    if (v[2] == NULL) {
        return lms__missing(d, "id");
    }
    lms_msg_init(out, kind);
    out->id = d->err->id;
    if (kind == LMS_KIND_CHAT || kind == LMS_KIND_STATUS || kind == LMS_KIND_CHAT_NEXT ||
        kind == LMS_KIND_CANCEL) {
        /* Requests may carry the daemon's access token; whether one is
         * needed is the daemon's business, not the decoder's. */
        static const char *const akeys[] = {"auth"};
        const msgpack_object *av[1];
        lms__map_find(top, akeys, 1, av);
        rc = lms__opt_str(d, av[0], "auth", d->lim->max_name_bytes, &out->auth);
        if (rc != 0) {
            return rc;
        }
    }
    switch (kind) {
    case LMS_KIND_CHAT:
        return lms__dec_chat(d, top, &out->u.chat);
    case LMS_KIND_CHAT_REPLY:
        return lms__dec_chat_reply(d, top, &out->u.chat_reply);
    case LMS_KIND_STATUS:
        return LMSCHED_OK;
    case LMS_KIND_STATUS_REPLY:
        return lms__dec_status_reply(d, top, &out->u.status_reply);
    case LMS_KIND_ERROR:
        return lms__dec_error(d, top, &out->u.error);
    case LMS_KIND_CHAT_CHUNK:
        return lms__dec_chat_chunk(d, top, &out->u.chat_chunk);
    case LMS_KIND_CHAT_NEXT:
        return lms__dec_target(d, top, "stream", &out->u.chat_next.stream);
    case LMS_KIND_CANCEL:
        return lms__dec_target(d, top, "target", &out->u.cancel.target);
    case LMS_KIND_CANCEL_REPLY:
        return lms__dec_cancel_reply(d, top, &out->u.cancel_reply);
    }
    return lms__fail(d, LMSCHED_EINTERNAL, "kind", "unhandled kind");
}

int lms_decode(const void *buf, size_t len, const lms_limits *lim, lms_msg *out,
               lms_decode_err *err)
{
    lms_limits deflim;
    lms_decode_err localerr;
    lms__dec d;
    msgpack_unpacked up;
    size_t off = 0;
    int rc;

    if (err == NULL) {
        err = &localerr;
    }
    memset(err, 0, sizeof(*err));
    if (lim == NULL) {
        lms_limits_default(&deflim);
        lim = &deflim;
    }
    d.lim = lim;
    d.err = err;
    msgpack_unpacked_init(&up);
    if (out == NULL) {
        return lms__fail(&d, LMSCHED_EINVAL, "", "no output message");
    }
    memset(out, 0, sizeof(*out));
    if (buf == NULL && len > 0) {
        return lms__fail(&d, LMSCHED_EINVAL, "", "no input buffer");
    }

    if (len > lim->max_msg_bytes) {
        rc = lms__fail(&d, LMSCHED_ETOOLARGE, "",
                       "message of %zu bytes exceeds the limit of %zu", len,
                       lim->max_msg_bytes);
        goto fail;
    }
    if ((rc = lms__precheck(&d, buf, len)) != 0) {
        goto fail;
    }
    switch (msgpack_unpack_next(&up, buf, len, &off)) {
    case MSGPACK_UNPACK_SUCCESS:
        break;
    case MSGPACK_UNPACK_NOMEM_ERROR:
        rc = lms__fail(&d, LMSCHED_ENOMEM, "", "out of memory unpacking the message");
        goto fail;
    default:
        /* The pre-check accepted it, so this means the two disagree. */
        rc = lms__fail(&d, LMSCHED_EPROTO, "", "malformed msgpack");
        goto fail;
    }
    if (off != len) {
        rc = lms__fail(&d, LMSCHED_EPROTO, "", "%zu trailing bytes after the message",
                       len - off);
        goto fail;
    }
    if ((rc = lms__dec_top(&d, &up.data, out)) != 0) {
        goto fail;
    }
    msgpack_unpacked_destroy(&up);
    return LMSCHED_OK;

fail:
    msgpack_unpacked_destroy(&up);
    lms_msg_fini(out);
    return rc;
}
