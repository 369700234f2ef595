/*
 * fuzz_proto - libFuzzer target for the wire decoder, the one parser every
 * peer on the daemon's socket reaches. The input is one message as it
 * arrives from nng; it is decoded with the default limits.
 *
 * Oracles, beyond the sanitizers:
 * - a rejection carries one of the codes proto.h documents, a message, and
 *   leaves the output message zeroed;
 * - the hand-written structural pre-check agrees with msgpack-c: what
 *   msgpack-c reads as exactly one object, nested no deeper than the
 *   pre-check allows, the pre-check does not reject (and the reverse case,
 *   "malformed msgpack", never happens);
 * - an accepted message obeys the limits it was checked against, encodes,
 *   and decodes again to the same fields (the round trip the daemon and the
 *   agent library rely on); encoding that copy gives the same bytes.
 * A broken oracle prints what differed and aborts, so libFuzzer keeps the
 * input as a crash.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "proto/proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* assert() is compiled out in RelWithDebInfo; an oracle must always run. */
static void fz_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void fz_fail(const char *fmt, ...)
{
    va_list ap;
    fputs("fuzz_proto: oracle failed: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    abort();
}

#define FZ_CHECK(cond, ...)                                                              \
    do {                                                                                 \
        if (!(cond))                                                                     \
            fz_fail(__VA_ARGS__);                                                        \
    } while (0)

/* Both NULL, or both strings with the same bytes. */
static int fz_str_eq(const char *a, const char *b)
{
    if (a == NULL || b == NULL)
        return a == b;
    return strcmp(a, b) == 0;
}

/* A decoded string must fit the limit it was checked against. */
static void fz_check_str(const char *s, size_t max, const char *what, int required)
{
    if (s == NULL) {
        FZ_CHECK(!required, "required string %s is NULL after a successful decode", what);
        return;
    }
    FZ_CHECK(strlen(s) <= max, "%s: %zu bytes passes the limit %zu", what, strlen(s),
             max);
}

static void fz_check_limits(const lms_msg *m, const lms_limits *lim)
{
    fz_check_str(m->auth, lim->max_name_bytes, "auth", 0);
    FZ_CHECK(m->version == LMS_PROTO_VERSION, "version %u accepted", m->version);
    switch (m->kind) {
    case LMS_KIND_CHAT: {
        const lms_chat_req *c = &m->u.chat;
        fz_check_str(c->system, lim->max_text_bytes, "system", 1);
        FZ_CHECK(c->n_messages >= 1 && c->n_messages <= lim->max_messages,
                 "%zu messages accepted", c->n_messages);
        for (size_t i = 0; i < c->n_messages; i++) {
            const lms_chat_msg *mm = &c->messages[i];
            fz_check_str(mm->role, lim->max_name_bytes, "role", 1);
            /* The content is text, or an array of parts (parts_json), or
             * absent in an assistant message that has only tool_calls. */
            fz_check_str(mm->content, lim->max_text_bytes, "content",
                         mm->parts_json == NULL && mm->tool_calls_json == NULL);
            FZ_CHECK(mm->content == NULL || mm->parts_json == NULL,
                     "message %zu has both text and parts", i);
            fz_check_str(mm->parts_json, lim->max_text_bytes, "parts", 0);
            fz_check_str(mm->tool_calls_json, lim->max_text_bytes, "tool_calls", 0);
        }
        FZ_CHECK(c->n_stop <= lim->max_stop, "%zu stop strings accepted", c->n_stop);
        FZ_CHECK((c->n_stop == 0) == (c->stop == NULL), "stop array and count disagree");
        for (size_t i = 0; i < c->n_stop; i++)
            fz_check_str(c->stop[i], lim->max_name_bytes, "stop[i]", 1);
        fz_check_str(c->model, lim->max_name_bytes, "model", 0);
        fz_check_str(c->agent, lim->max_name_bytes, "agent", 0);
        fz_check_str(c->client_id, lim->max_name_bytes, "client_id", 0);
        FZ_CHECK(c->max_tokens == -1 || c->max_tokens >= 1, "max_tokens %d accepted",
                 (int)c->max_tokens);
        FZ_CHECK(c->priority <= 9, "priority %u accepted", c->priority);
        FZ_CHECK(!c->has_temperature || (c->temperature >= 0 && c->temperature <= 10),
                 "temperature %g accepted", c->temperature);
        FZ_CHECK(!c->has_top_p || (c->top_p >= 0 && c->top_p <= 1), "top_p %g accepted",
                 c->top_p);
        break;
    }
    case LMS_KIND_CHAT_REPLY:
        fz_check_str(m->u.chat_reply.content, lim->max_text_bytes, "content", 1);
        fz_check_str(m->u.chat_reply.finish_reason, lim->max_name_bytes, "finish_reason",
                     1);
        fz_check_str(m->u.chat_reply.model, lim->max_name_bytes, "model", 0);
        break;
    case LMS_KIND_STATUS:
        break;
    case LMS_KIND_STATUS_REPLY:
        fz_check_str(m->u.status_reply.json, lim->max_text_bytes, "status", 1);
        break;
    case LMS_KIND_ERROR:
        fz_check_str(m->u.error.message, lim->max_text_bytes, "message", 1);
        fz_check_str(m->u.error.field, lim->max_name_bytes, "field", 0);
        break;
    case LMS_KIND_CHAT_CHUNK:
        FZ_CHECK(m->u.chat_chunk.n_deltas > 0 && m->u.chat_chunk.deltas != NULL,
                 "a chat_chunk without deltas was accepted");
        for (size_t i = 0; i < m->u.chat_chunk.n_deltas; i++)
            fz_check_str(m->u.chat_chunk.deltas[i].text, lim->max_text_bytes, "deltas", 0);
        break;
    case LMS_KIND_CHAT_NEXT:
    case LMS_KIND_CANCEL:
    case LMS_KIND_CANCEL_REPLY:
        break;
    default:
        fz_fail("decoded kind %d", (int)m->kind);
    }
}

/* Every field of a and b, which decode must have filled identically. */
static void fz_check_same(const lms_msg *a, const lms_msg *b)
{
    FZ_CHECK(a->kind == b->kind && a->version == b->version && a->id == b->id,
             "kind/version/id changed in the round trip");
    FZ_CHECK(fz_str_eq(a->auth, b->auth), "auth changed in the round trip");
    switch (a->kind) {
    case LMS_KIND_CHAT: {
        const lms_chat_req *x = &a->u.chat, *y = &b->u.chat;
        FZ_CHECK(fz_str_eq(x->system, y->system), "system changed");
        FZ_CHECK(x->n_messages == y->n_messages, "message count changed");
        for (size_t i = 0; i < x->n_messages; i++)
            FZ_CHECK(fz_str_eq(x->messages[i].role, y->messages[i].role) &&
                         fz_str_eq(x->messages[i].content, y->messages[i].content) &&
                         fz_str_eq(x->messages[i].parts_json, y->messages[i].parts_json) &&
                         fz_str_eq(x->messages[i].tool_calls_json,
                                   y->messages[i].tool_calls_json) &&
                         fz_str_eq(x->messages[i].tool_call_id, y->messages[i].tool_call_id) &&
                         fz_str_eq(x->messages[i].name, y->messages[i].name),
                     "messages[%zu] changed", i);
        FZ_CHECK(fz_str_eq(x->tools_json, y->tools_json) &&
                     fz_str_eq(x->tool_choice_json, y->tool_choice_json) &&
                     fz_str_eq(x->response_format_json, y->response_format_json) &&
                     fz_str_eq(x->extra_json, y->extra_json) &&
                     x->parallel_tool_calls == y->parallel_tool_calls &&
                     x->stream == y->stream,
                 "a JSON field or a flag changed in the round trip");
        FZ_CHECK(fz_str_eq(x->model, y->model), "model changed");
        FZ_CHECK(x->max_tokens == y->max_tokens, "max_tokens changed");
        FZ_CHECK(x->has_temperature == y->has_temperature &&
                     (!x->has_temperature || x->temperature == y->temperature),
                 "temperature changed");
        FZ_CHECK(x->has_top_p == y->has_top_p && (!x->has_top_p || x->top_p == y->top_p),
                 "top_p changed");
        FZ_CHECK(x->n_stop == y->n_stop, "stop count changed");
        for (size_t i = 0; i < x->n_stop; i++)
            FZ_CHECK(fz_str_eq(x->stop[i], y->stop[i]), "stop[%zu] changed", i);
        FZ_CHECK(x->has_seed == y->has_seed && (!x->has_seed || x->seed == y->seed),
                 "seed changed");
        FZ_CHECK(x->priority == y->priority && x->deadline_ms == y->deadline_ms,
                 "priority/deadline changed");
        FZ_CHECK(fz_str_eq(x->agent, y->agent) && fz_str_eq(x->client_id, y->client_id),
                 "agent/client_id changed");
        break;
    }
    case LMS_KIND_CHAT_REPLY: {
        const lms_chat_reply *x = &a->u.chat_reply, *y = &b->u.chat_reply;
        FZ_CHECK(fz_str_eq(x->content, y->content) &&
                     fz_str_eq(x->finish_reason, y->finish_reason) &&
                     fz_str_eq(x->model, y->model),
                 "chat_reply strings changed");
        FZ_CHECK(x->usage.prompt_tokens == y->usage.prompt_tokens &&
                     x->usage.completion_tokens == y->usage.completion_tokens &&
                     x->usage.cached_tokens == y->usage.cached_tokens,
                 "usage changed");
        FZ_CHECK(x->timings.queue_ms == y->timings.queue_ms &&
                     x->timings.ttft_ms == y->timings.ttft_ms &&
                     x->timings.total_ms == y->timings.total_ms,
                 "timings changed");
        FZ_CHECK(x->retries == y->retries, "retries changed");
        FZ_CHECK(fz_str_eq(x->reasoning, y->reasoning) &&
                     fz_str_eq(x->logprobs_json, y->logprobs_json) &&
                     x->n_tool_calls == y->n_tool_calls && x->n_deltas == y->n_deltas,
                 "reasoning, logprobs, tool calls or deltas changed");
        for (size_t i = 0; i < x->n_tool_calls; i++)
            FZ_CHECK(fz_str_eq(x->tool_calls[i].id, y->tool_calls[i].id) &&
                         fz_str_eq(x->tool_calls[i].name, y->tool_calls[i].name) &&
                         fz_str_eq(x->tool_calls[i].arguments, y->tool_calls[i].arguments),
                     "tool_calls[%zu] changed", i);
        break;
    }
    case LMS_KIND_CHAT_CHUNK:
        FZ_CHECK(a->u.chat_chunk.n_deltas == b->u.chat_chunk.n_deltas, "deltas changed");
        for (size_t i = 0; i < a->u.chat_chunk.n_deltas; i++)
            FZ_CHECK(a->u.chat_chunk.deltas[i].kind == b->u.chat_chunk.deltas[i].kind &&
                         fz_str_eq(a->u.chat_chunk.deltas[i].text,
                                   b->u.chat_chunk.deltas[i].text),
                     "deltas[%zu] changed", i);
        break;
    case LMS_KIND_CHAT_NEXT:
        FZ_CHECK(a->u.chat_next.stream == b->u.chat_next.stream, "stream changed");
        break;
    case LMS_KIND_CANCEL:
        FZ_CHECK(a->u.cancel.target == b->u.cancel.target, "target changed");
        break;
    case LMS_KIND_CANCEL_REPLY:
        FZ_CHECK(a->u.cancel_reply.found == b->u.cancel_reply.found, "found changed");
        break;
    case LMS_KIND_STATUS:
        break;
    case LMS_KIND_STATUS_REPLY:
        FZ_CHECK(fz_str_eq(a->u.status_reply.json, b->u.status_reply.json),
                 "status changed");
        break;
    case LMS_KIND_ERROR:
        FZ_CHECK(a->u.error.code == b->u.error.code &&
                     fz_str_eq(a->u.error.message, b->u.error.message) &&
                     fz_str_eq(a->u.error.field, b->u.error.field),
                 "error changed");
        break;
    }
}

/* The pre-check's limit, LMS__MAX_DEPTH in proto.c. */
#define FZ_MAX_DEPTH 16

/* Containers nested in o, o itself included; stops counting past limit. */
static int fz_depth(const msgpack_object *o, int limit)
{
    int best = 0;

    if (limit < 0)
        return 0;
    if (o->type == MSGPACK_OBJECT_ARRAY) {
        for (uint32_t i = 0; i < o->via.array.size && best <= limit; i++) {
            int d = fz_depth(&o->via.array.ptr[i], limit - 1);
            best = d > best ? d : best;
        }
        return best + 1;
    }
    if (o->type == MSGPACK_OBJECT_MAP) {
        for (uint32_t i = 0; i < o->via.map.size && best <= limit; i++) {
            int dk = fz_depth(&o->via.map.ptr[i].key, limit - 1);
            int dv = fz_depth(&o->via.map.ptr[i].val, limit - 1);
            best = dk > best ? dk : best;
            best = dv > best ? dv : best;
        }
        return best + 1;
    }
    return 0;
}

/* Whether some array16/32 or map16/32 header at any offset (a superset of
 * the real ones) declares more elements than the input has bytes. msgpack-c
 * allocates a container's elements from the declared count before reading
 * them, which is why proto.c pre-checks; the oracle must not feed it such
 * bytes either. */
static int fz_huge_count(const uint8_t *p, size_t size)
{
    for (size_t i = 0; i < size; i++) {
        size_t lenb;
        uint64_t n = 0;
        if (p[i] == 0xdc || p[i] == 0xde)
            lenb = 2;
        else if (p[i] == 0xdd || p[i] == 0xdf)
            lenb = 4;
        else
            continue;
        if (size - i - 1 < lenb)
            return 1;
        for (size_t k = 1; k <= lenb; k++)
            n = n << 8 | p[i + k];
        if (n > size)
            return 1;
    }
    return 0;
}

/* Whether msgpack-c reads data as exactly one object the pre-check must
 * let through. */
static int fz_msgpack_accepts(const uint8_t *data, size_t size)
{
    msgpack_unpacked up;
    size_t off = 0;
    int ok;

    if (fz_huge_count(data, size))
        return 0; /* not asked: msgpack-c could allocate gigabytes */
    msgpack_unpacked_init(&up);
    ok = msgpack_unpack_next(&up, (const char *)data, size, &off) ==
             MSGPACK_UNPACK_SUCCESS &&
         off == size && fz_depth(&up.data, FZ_MAX_DEPTH) <= FZ_MAX_DEPTH;
    msgpack_unpacked_destroy(&up);
    return ok;
}

/* The messages lms_decode gives when the pre-check or msgpack-c finds the
 * bytes malformed, before any field is looked at. The size caps ("message
 * of N bytes", "message holds more than N values") are limits, not
 * malformation, and are left out. */
static int fz_structural(const char *msg)
{
    static const char *const prefixes[] = {"message truncated", "declared ",
                                           "nesting deeper", "invalid msgpack byte",
                                           "malformed msgpack"};
    if (strstr(msg, "trailing bytes after the message") != NULL)
        return 1;
    for (size_t i = 0; i < sizeof(prefixes) / sizeof(prefixes[0]); i++) {
        if (strncmp(msg, prefixes[i], strlen(prefixes[i])) == 0)
            return 1;
    }
    return 0;
}

static void fz_check_rejection(int rc, const lms_decode_err *err, const lms_msg *m)
{
    static const lms_msg zero;

    FZ_CHECK(rc == LMSCHED_EPROTO || rc == LMSCHED_EVERSION || rc == LMSCHED_ETOOLARGE ||
                 rc == LMSCHED_ENOMEM,
             "decode returned %d (%s)", rc, lmsched_err_name(rc));
    FZ_CHECK(err->code == rc, "err.code %d but returned %d", err->code, rc);
    FZ_CHECK(memchr(err->message, '\0', sizeof(err->message)) != NULL &&
                 err->message[0] != '\0',
             "rejection without a message");
    FZ_CHECK(memchr(err->field, '\0', sizeof(err->field)) != NULL,
             "err.field not terminated");
    FZ_CHECK(memcmp(m, &zero, sizeof(zero)) == 0, "rejected message not finied");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lms_limits lim;
    lms_decode_err err;
    lms_msg m, again;
    void *enc = NULL, *enc2 = NULL;
    size_t enc_len = 0, enc2_len = 0;
    int rc;

    lms_limits_default(&lim);
    rc = lms_decode(data, size, NULL, &m, &err);
    if (rc != LMSCHED_OK) {
        fz_check_rejection(rc, &err, &m);
        FZ_CHECK(strcmp(err.message, "malformed msgpack") != 0,
                 "the pre-check passed bytes msgpack-c rejects");
        FZ_CHECK(!fz_structural(err.message) || !fz_msgpack_accepts(data, size),
                 "pre-check rejects what msgpack-c reads: %s", err.message);
        return 0;
    }
    fz_check_limits(&m, &lim);

    rc = lms_encode(&m, &enc, &enc_len);
    FZ_CHECK(rc == LMSCHED_OK, "a decoded %s does not encode: %d", lms_kind_name(m.kind),
             rc);
    rc = lms_decode(enc, enc_len, NULL, &again, &err);
    FZ_CHECK(rc == LMSCHED_OK, "re-encoded %s does not decode: %s", lms_kind_name(m.kind),
             err.message);
    fz_check_same(&m, &again);
    /* The encoder writes one canonical form, so a second trip is exact. */
    rc = lms_encode(&again, &enc2, &enc2_len);
    FZ_CHECK(rc == LMSCHED_OK && enc2_len == enc_len && memcmp(enc, enc2, enc_len) == 0,
             "second encoding differs from the first");

    free(enc);
    free(enc2);
    lms_msg_fini(&again);
    lms_msg_fini(&m);
    return 0;
}
