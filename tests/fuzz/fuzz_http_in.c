/*
 * fuzz_http_in - libFuzzer target for the HTTP front door's translation of
 * a request into a job (scheduler/front/openai_in.c): an OpenAI
 * chat-completions body and lmsched's headers, from an HTTP client.
 *
 * Input: byte 0's bits 0-3 say which of the four headers (priority,
 * deadline, agent, session) are present; each present one takes the next
 * bytes up to a '\n'; the rest is the body.
 *
 * Oracles, beyond the sanitizers. Whatever the client sent:
 * - a refusal is a 400 (or 500 for out of memory) with a printable message
 *   that fits, and a parameter name without control bytes;
 * - an accepted request is a chat_req the rest of the daemon can take: a
 *   system prompt (never NULL), every string within the wire protocol's
 *   limits and free of NUL bytes, each JSON field valid JSON of the right
 *   kind (tools an array, extra an object with no key the daemon sets
 *   itself), priority 0..9; the backend body built from it (what would go
 *   to LM Studio or llama.cpp) is valid JSON and starts with the system
 *   prompt; its prefix chain builds;
 * - the answers built for it are valid JSON: a completion echoing its
 *   first message's text as the reply, and the stream of that text in
 *   pieces, whose events are each valid JSON, ending in `data: [DONE]`.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "lmsched/wire.h"
#include "proto/proto.h"
#include "scheduler/backend/openai.h"
#include "scheduler/chat/chain.h"
#include "scheduler/front/openai_in.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fz_fail(const char *what) __attribute__((noreturn));

static void fz_fail(const char *what)
{
    fprintf(stderr, "fuzz_http_in: oracle failed: %s\n", what);
    abort();
}

#define FZ_CHECK(cond, what)                                                             \
    do {                                                                                 \
        if (!(cond))                                                                     \
            fz_fail(what);                                                               \
    } while (0)

static void fz_str(const char *s, size_t max, bool nullable, const char *what)
{
    if (s == NULL) {
        FZ_CHECK(nullable, what);
        return;
    }
    FZ_CHECK(strlen(s) <= max, what);
}

/* s is JSON text; of type want (or any when JSON_NULL is passed); extra:
 * an object of fields passed through, none of which the daemon sets. */
static void fz_json(const char *s, json_type want, bool extra, const char *what)
{
    if (s == NULL)
        return;
    json_t *v = json_loads(s, JSON_DECODE_ANY, NULL);
    FZ_CHECK(v != NULL, what);
    FZ_CHECK(want == JSON_NULL || json_typeof(v) == want, what);
    if (extra) {
        const char *key;
        json_t *x;
        json_object_foreach(v, key, x)
        {
            (void)x;
            FZ_CHECK(chat_reserved_key(key) == NULL, "extra holds a key the daemon sets");
        }
    }
    json_decref(v);
}

/* Every event of an SSE text is valid JSON; [DONE] ends it. */
static void fz_sse(const char *t, bool done)
{
    bool saw_done = false;
    while (*t != '\0') {
        FZ_CHECK(strncmp(t, "data: ", 6) == 0, "an event does not start with data:");
        const char *end = strstr(t, "\n\n");
        FZ_CHECK(end != NULL, "an event is not ended");
        FZ_CHECK(!saw_done, "an event after [DONE]");
        if (strncmp(t + 6, "[DONE]", 6) == 0 && end == t + 12) {
            saw_done = true;
        } else {
            json_t *v = json_loadb(t + 6, (size_t)(end - t - 6), 0, NULL);
            FZ_CHECK(v != NULL, "an event is not JSON");
            json_decref(v);
        }
        t = end + 2;
    }
    FZ_CHECK(saw_done == done, "[DONE] where it should not be, or missing");
}

static void fz_answers(const chat_req *r)
{
    /* Echo the first message's text (or the system prompt) as the reply. */
    const char *text = r->n_messages > 0 && r->messages[0].content != NULL
                           ? r->messages[0].content
                           : r->system;
    size_t len = strlen(text);
    chat_tool_call tc = {
        .id = "call_1", .type = "function", .name = text, .arguments = text};
    chat_result res = {
        .content = text,
        .content_len = len,
        .finish_reason = "stop",
        .model = r->model,
        .usage = {(int64_t)len, 3, -1},
        .reasoning = r->agent,
        .tool_calls = &tc,
        .n_tool_calls = r->tools_json != NULL ? 1 : 0,
    };
    oai_reply c;
    memset(&c, 0, sizeof(c));
    snprintf(c.id, sizeof(c.id), "chatcmpl-fuzz");
    snprintf(c.model, sizeof(c.model), "%s", r->model != NULL ? r->model : "");
    c.include_usage = r->session != NULL;
    size_t n = 0;
    char *s = oai_completion(&c, &res, &n);
    FZ_CHECK(s != NULL && strlen(s) == n, "no completion");
    json_t *v = json_loads(s, 0, NULL);
    FZ_CHECK(v != NULL, "the completion is not JSON");
    json_decref(v);
    free(s);

    strbuf b;
    strbuf_init(&b);
    chat_delta d[3] = {
        {.kind = CHAT_DELTA_CONTENT, .text = text, .len = len / 2},
        {.kind = CHAT_DELTA_CONTENT, .text = text + len / 2, .len = len - len / 2},
        {.kind = CHAT_DELTA_TOOL_CALL,
         .text = text,
         .len = len,
         .id = r->model,
         .name = text},
    };
    FZ_CHECK(oai_stream_pieces(&b, &c, d, 3) == 0, "pieces");
    fz_sse(strbuf_str(&b), false);
    FZ_CHECK(oai_stream_end(&b, &c, &res) == 0, "stream end");
    fz_sse(strbuf_str(&b), true);
    strbuf_fini(&b);
    FZ_CHECK(oai_stream_error(&b, LMSCHED_EBACKEND_STREAM, text, r->model) == 0, "error");
    fz_sse(strbuf_str(&b), false);
    strbuf_fini(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char hdr[4][512];
    const char *hv[4] = {NULL, NULL, NULL, NULL};
    size_t pos = 1;
    if (size == 0)
        return 0;
    for (int k = 0; k < 4; k++) {
        if (!(data[0] & (1u << k)))
            continue;
        size_t e = pos;
        while (e < size && data[e] != '\n' && e - pos < sizeof(hdr[k]) - 1)
            e++;
        memcpy(hdr[k], data + pos, e - pos);
        hdr[k][e - pos] = '\0';
        hv[k] = hdr[k];
        pos = e < size ? e + 1 : e;
    }
    oai_headers h = {
        .priority = hv[0], .deadline_ms = hv[1], .agent = hv[2], .session = hv[3]};
    oai_chat out = {0};
    oai_err err;
    int rc = oai_parse_chat((const char *)data + pos, size - pos, &h, &out, &err);
    if (rc != LMSCHED_OK) {
        FZ_CHECK(out.req == NULL, "a refused request was kept");
        FZ_CHECK(err.status == 400 || (rc == LMSCHED_ENOMEM && err.status == 500),
                 "status");
        size_t n = strnlen(err.message, sizeof(err.message));
        FZ_CHECK(n > 0 && n < sizeof(err.message), "message");
        /* Headers are printable ASCII only, and body text went through
         * jansson's UTF-8 check: no control byte reaches the client. */
        for (size_t i = 0; i < n; i++)
            FZ_CHECK((unsigned char)err.message[i] >= 0x20 &&
                         (unsigned char)err.message[i] < 0x7f,
                     "a control byte in the message");
        for (const char *p = err.param; *p != '\0'; p++)
            FZ_CHECK((unsigned char)*p >= 0x20, "a control byte in the param");
        return 0;
    }
    lms_limits lim;
    lms_limits_default(&lim);
    chat_req *r = out.req;
    FZ_CHECK(r != NULL && r->system != NULL, "no system prompt");
    fz_str(r->system, lim.max_text_bytes, false, "system");
    fz_str(r->model, lim.max_name_bytes, true, "model");
    fz_str(r->agent, lim.max_name_bytes, true, "agent");
    fz_str(r->session, lim.max_name_bytes, true, "session");
    FZ_CHECK(r->priority <= 9, "priority");
    FZ_CHECK(r->n_messages <= lim.max_messages, "messages");
    FZ_CHECK(r->n_stop <= lim.max_stop, "stop");
    FZ_CHECK(r->max_tokens == -1 ||
                 (r->max_tokens >= 1 && r->max_tokens <= LMSCHED_MAX_TOKENS_MAX),
             "max_tokens");
    for (size_t i = 0; i < r->n_stop; i++)
        fz_str(r->stop[i], lim.max_name_bytes, false, "stop[i]");
    for (size_t i = 0; i < r->n_messages; i++) {
        const chat_msg *m = &r->messages[i];
        fz_str(m->role, lim.max_name_bytes, false, "role");
        FZ_CHECK(m->role[0] != '\0', "an empty role");
        fz_str(m->content, lim.max_text_bytes, true, "content");
        fz_str(m->tool_call_id, lim.max_name_bytes, true, "tool_call_id");
        fz_str(m->name, lim.max_name_bytes, true, "name");
        fz_json(m->parts_json, JSON_ARRAY, false, "parts");
        fz_json(m->tool_calls_json, JSON_ARRAY, false, "tool_calls");
    }
    fz_json(r->tools_json, JSON_ARRAY, false, "tools");
    fz_json(r->tool_choice_json, JSON_NULL, false, "tool_choice");
    fz_json(r->response_format_json, JSON_OBJECT, false, "response_format");
    fz_json(r->extra_json, JSON_OBJECT, true, "extra");

    /* The job side: the backend body and the prefix chain. */
    oa_body_opts bo = {
        .stream = true, .cache_prompt = true, .max_tokens = -1, .id_slot = 0};
    char *body = oa_build_chat_body(r, &bo);
    FZ_CHECK(body != NULL, "no backend body");
    json_t *bj = json_loads(body, 0, NULL);
    FZ_CHECK(bj != NULL, "the backend body is not JSON");
    json_t *m0 = json_array_get(json_object_get(bj, "messages"), 0);
    if (r->system[0] != '\0')
        FZ_CHECK(
            json_is_string(json_object_get(m0, "content")) &&
                strcmp(json_string_value(json_object_get(m0, "content")), r->system) == 0,
            "the backend body does not start with the system prompt");
    FZ_CHECK(json_is_true(json_object_get(bj, "stream")),
             "the backend body is not streamed");
    json_decref(bj);
    free(body);
    prefix_chain ch;
    FZ_CHECK(prefix_chain_build(&ch, r) == LMSCHED_OK, "no prefix chain");
    prefix_chain_fini(&ch);

    fz_answers(r);
    chat_req_free(r);
    return 0;
}
