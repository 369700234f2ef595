/*
 * fuzz_openai - libFuzzer target for the parsers of what an LLM server sends
 * back (scheduler/openai.c). Byte 0 picks the parser:
 *   bits 0-2  0 streamed chunks: the rest split at '\n', each piece one event's
 *               data for oa_resp_feed_chunk, into one oa_resp
 *             1 a whole response body, oa_resp_parse_full
 *             2 an HTTP error body, oa_classify_http; bytes 1-2 are the status
 *               (big-endian), the rest the body
 *             3 a transport failure, oa_classify_curl; byte 1 is the CURLcode,
 *               the rest curl's error text
 *             4 LM Studio's /api/v1/models, oa_parse_lmstudio_models
 *             5 llama.cpp's /props, oa_parse_llamacpp_props
 *             6 /v1/models, oa_parse_openai_models
 *             7 a streamed body as the backend reads it: the rest through the
 *               SSE parser into oa_resp_feed_chunk, stopping at the first error
 *   bits 3-4  max_content for 0, 1 and 7, from fz_max_content[]
 *
 * Oracles, beyond the sanitizers. Whatever the backend sent:
 * - a response's content, finish_reason and model fit a chat_reply the wire
 *   decoder accepts (the agent must be able to read what the daemon relays),
 *   and the content stays within max_content;
 * - an error's code is a known lmsched_err equal to the return value, and
 *   its message is printable ASCII (openai.c promises that, so the message
 *   survives the trip to the agent) and fits an error reply;
 * - model info holds -1 or a count, and a model name that fits the wire.
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proto/proto.h"
#include "scheduler/backend/openai.h"
#include "scheduler/backend/sse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const size_t fz_max_content[4] = {1u << 20, 0, 16, 4096};

static void fz_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void fz_fail(const char *fmt, ...)
{
    va_list ap;
    fputs("fuzz_openai: oracle failed: ", stderr);
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

/* Encodes m and decodes it with the default limits, as the peer would. */
static void fz_check_wire(const lms_msg *m, const char *what)
{
    void *buf = NULL;
    size_t len = 0;
    lms_msg back;
    lms_decode_err derr;
    int rc = lms_encode(m, &buf, &len);

    FZ_CHECK(rc == LMSCHED_OK, "%s: encode failed with %d", what, rc);
    rc = lms_decode(buf, len, NULL, &back, &derr);
    FZ_CHECK(rc == LMSCHED_OK, "%s: the peer would reject it: %s", what, derr.message);
    lms_msg_fini(&back);
    free(buf);
}

static void fz_check_error(int rc, const oa_error *err)
{
    size_t n = strnlen(err->message, sizeof(err->message));
    lms_msg m;

    FZ_CHECK(rc != LMSCHED_OK, "error check on success");
    FZ_CHECK(err->code == rc, "err.code %d but returned %d", err->code, rc);
    FZ_CHECK(strcmp(lmsched_err_name(rc), "unknown") != 0, "unknown error code %d", rc);
    FZ_CHECK(n < sizeof(err->message), "error message not terminated");
    FZ_CHECK(n > 0, "empty error message");
    for (size_t i = 0; i < n; i++)
        FZ_CHECK(err->message[i] >= 0x20 && err->message[i] < 0x7f,
                 "byte 0x%02x at %zu of the error message \"%s\"",
                 (unsigned char)err->message[i], i, err->message);
    /* A server may echo the request's Authorization header; the token after
     * any "Bearer " must not reach the agent. The backend's text may end in
     * "Bearer", and then openai.c's own words follow: those are no token. */
    for (size_t i = 0; i + 7 <= n; i++) {
        static const char *const own[] = {"[redacted]", "(curl error ", "(the model ",
                                          "(check the API token"};
        const char *w = err->message + i + 7;
        bool ok = *w == '\0' || *w == ' ' || *w == '"' || *w == ',';
        if (strncasecmp(err->message + i, "bearer ", 7) != 0)
            continue;
        for (size_t k = 0; k < sizeof(own) / sizeof(own[0]) && !ok; k++)
            ok = strncmp(w, own[k], strlen(own[k])) == 0;
        FZ_CHECK(ok, "unredacted token in \"%s\"", err->message);
    }
    lms_msg_init(&m, LMS_KIND_ERROR);
    m.u.error.code = (uint32_t)rc;
    m.u.error.message = (char *)err->message;
    fz_check_wire(&m, "error reply");
}

static void fz_check_resp(const oa_resp *r)
{
    lms_msg m;

    FZ_CHECK(r->content != NULL, "content is NULL");
    FZ_CHECK(r->content_len <= r->max_content, "content %zu bytes passes max_content %zu",
             r->content_len, r->max_content);
    FZ_CHECK(strlen(r->content) == r->content_len, "content length %zu, strlen %zu",
             r->content_len, strlen(r->content));
    lms_msg_init(&m, LMS_KIND_CHAT_REPLY);
    m.u.chat_reply.content = r->content;
    m.u.chat_reply.finish_reason = r->finish_reason != NULL ? r->finish_reason : "stop";
    m.u.chat_reply.model = r->model;
    m.u.chat_reply.usage.prompt_tokens = r->prompt_tokens;
    m.u.chat_reply.usage.completion_tokens = r->completion_tokens;
    m.u.chat_reply.usage.cached_tokens = r->cached_tokens;
    fz_check_wire(&m, "chat reply");
}

/* oa_error says LMSCHED_OK with an empty message when nothing failed. */
static void fz_check_result(int rc, const oa_error *err, const oa_resp *r)
{
    if (rc != LMSCHED_OK)
        fz_check_error(rc, err);
    fz_check_resp(r);
}

static void fz_stream_lines(const char *p, size_t len, size_t max_content)
{
    oa_resp r;
    int rc = LMSCHED_OK;

    oa_resp_init(&r, max_content);
    while (rc == LMSCHED_OK) {
        const char *nl = memchr(p, '\n', len);
        size_t n = nl != NULL ? (size_t)(nl - p) : len;
        /* Each event's data in a buffer of its own, so an over-read shows. */
        char *ev = malloc(n > 0 ? n : 1);
        oa_error err;
        if (ev == NULL)
            break;
        memcpy(ev, p, n);
        memset(&err, 0, sizeof(err));
        rc = oa_resp_feed_chunk(&r, ev, n, &err);
        free(ev);
        fz_check_result(rc, &err, &r);
        if (nl == NULL)
            break;
        p += n + 1;
        len -= n + 1;
    }
    oa_resp_fini(&r);
}

typedef struct fz_sse_ctx {
    oa_resp r;
    oa_error err;
    int rc;
} fz_sse_ctx;

/* What the backend's SSE callback does: feed, stop at the first error. */
static int fz_sse_event_cb(void *arg, const char *event, const char *data, size_t len)
{
    fz_sse_ctx *c = arg;
    c->rc = oa_resp_feed_chunk(&c->r, data, len, &c->err);
    fz_check_result(c->rc, &c->err, &c->r);
    return c->rc != LMSCHED_OK;
}

static void fz_stream_sse(const char *p, size_t len, size_t max_content)
{
    fz_sse_ctx c;
    sse_parser sp;

    memset(&c, 0, sizeof(c));
    oa_resp_init(&c.r, max_content);
    sse_init(&sp, 1u << 20, fz_sse_event_cb, &c);
    (void)sse_feed(&sp, p, len);
    sse_fini(&sp);
    oa_resp_fini(&c.r);
}

static void fz_full(const char *p, size_t len, size_t max_content)
{
    oa_resp r;
    oa_error err;
    int rc;

    oa_resp_init(&r, max_content);
    memset(&err, 0, sizeof(err));
    rc = oa_resp_parse_full(&r, p, len, &err);
    fz_check_result(rc, &err, &r);
    FZ_CHECK(rc != LMSCHED_OK || r.done, "parsed whole response not marked done");
    oa_resp_fini(&r);
}

static void fz_http(const uint8_t *data, size_t size)
{
    oa_error err;
    long status;

    if (size < 2)
        return;
    status = (long)data[0] << 8 | data[1];
    oa_classify_http(status, (const char *)data + 2, size - 2, &err);
    FZ_CHECK(err.http_status == status, "http_status %ld for %ld", err.http_status,
             status);
    FZ_CHECK(err.code == LMSCHED_EBACKEND_HTTP || err.code == LMSCHED_EBACKEND_CRASH ||
                 err.code == LMSCHED_EAUTH,
             "HTTP error classified as %d", err.code);
    fz_check_error(err.code, &err);
}

static void fz_curl(const uint8_t *data, size_t size)
{
    oa_error err;
    char *text;

    if (size < 1)
        return;
    /* curl's error buffer is a C string. */
    text = malloc(size);
    if (text == NULL)
        return;
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';
    oa_classify_curl(data[0], text, &err);
    fz_check_error(err.code, &err);
    free(text);
}

static void fz_model_info(int which, const char *p, size_t len)
{
    oa_model_info mi;
    int rc;

    oa_model_info_init(&mi);
    if (which == 4)
        rc = oa_parse_lmstudio_models(p, len, &mi);
    else if (which == 5)
        rc = oa_parse_llamacpp_props(p, len, &mi);
    else
        rc = oa_parse_openai_models(p, len, &mi);
    FZ_CHECK(rc == LMSCHED_OK || rc == LMSCHED_EBACKEND_STREAM || rc == LMSCHED_EINVAL,
             "model info parser %d returned %d", which, rc);
    FZ_CHECK(mi.size_bytes >= -1 && mi.context_length >= -1 && mi.parallel >= -1,
             "negative count other than -1");
    if (mi.model != NULL) {
        lms_msg m;
        FZ_CHECK(mi.model[0] != '\0', "empty model name kept");
        /* The daemon reports the model in replies and status. */
        lms_msg_init(&m, LMS_KIND_CHAT_REPLY);
        m.u.chat_reply.content = "";
        m.u.chat_reply.finish_reason = "stop";
        m.u.chat_reply.model = mi.model;
        fz_check_wire(&m, "model name");
    }
    oa_model_info_fini(&mi);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int which = data[0] & 7;
    size_t max_content = fz_max_content[(data[0] >> 3) & 3];
    const uint8_t *rest = data + 1;
    size_t n = size - 1;

    /* An exact-size copy: ASan then catches a read one past the body. */
    char *body = malloc(n > 0 ? n : 1);
    if (body == NULL)
        return 0;
    if (n > 0)
        memcpy(body, rest, n);
    switch (which) {
    case 0:
        fz_stream_lines(body, n, max_content);
        break;
    case 1:
        fz_full(body, n, max_content);
        break;
    case 2:
        fz_http((const uint8_t *)body, n);
        break;
    case 3:
        fz_curl((const uint8_t *)body, n);
        break;
    case 4:
    case 5:
    case 6:
        fz_model_info(which, body, n);
        break;
    case 7:
        fz_stream_sse(body, n, max_content);
        break;
    }
    free(body);
    return 0;
}
