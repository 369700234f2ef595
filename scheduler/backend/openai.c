/*
 * openai - the pure half of talking to an OpenAI-compatible LLM server:
 * request bodies, streamed and whole chat-completion responses, model info,
 * and the translation of HTTP and curl failures into lmsched error codes
 * (see openai.h for the contract). jansson is used only in this file.
 *
 * Design notes:
 * - Everything here reads what a backend sent, so every string that leaves
 *   this module is bounded: content by max_content, names (model,
 *   finish_reason) by OA_MAX_NAME, and error messages are sanitized to
 *   printable ASCII so they survive the trip to the agent (the wire format
 *   requires valid UTF-8 and a truncated multibyte character is not).
 * - Messages never quote the request headers, and any "Bearer <token>" a
 *   server echoes back is redacted before it reaches a log or an agent.
 * - Cached-token counts come from two places: the OpenAI-style
 *   usage.prompt_tokens_details.cached_tokens (LM Studio, recent llama.cpp)
 *   and llama.cpp's timings.cache_n. usage wins whatever the arrival order:
 *   it always overwrites, timings only fills an unknown value.
 */
#include "scheduler/backend/openai.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <jansson.h>

/* Longest model name or finish_reason kept; the wire format's name limit. */
#define OA_MAX_NAME 256
/* Longest backend text quoted in an error message. */
#define OA_MAX_EXCERPT 200
/* Longest backend error message (from JSON) quoted in an error message. */
#define OA_MAX_BACKEND_MSG 320

/* ---- small helpers ------------------------------------------------------ */

/* Case-insensitive search for the NUL-terminated needle in hay[0..len). */
static bool oa_contains_ci(const char *hay, size_t len, const char *needle)
{
    size_t n = strlen(needle);
    if (n == 0 || hay == NULL || len < n)
        return false;
    for (size_t i = 0; i + n <= len; i++) {
        size_t k = 0;
        while (k < n &&
               tolower((unsigned char)hay[i + k]) == tolower((unsigned char)needle[k]))
            k++;
        if (k == n)
            return true;
    }
    return false;
}

/* Copies at most max bytes of s, cut back to a UTF-8 character boundary.
 * Returns a malloc'd string or NULL. */
static char *oa_strndup_utf8(const char *s, size_t len, size_t max)
{
    if (len > max) {
        len = max;
        /* Back off over continuation bytes so no character is split. */
        while (len > 0 && ((unsigned char)s[len] & 0xC0) == 0x80)
            len--;
    }
    char *d = malloc(len + 1);
    if (d == NULL)
        return NULL;
    memcpy(d, s, len);
    d[len] = '\0';
    return d;
}

/* Replaces *dst by a bounded copy of the JSON string v. */
static int oa_set_name(char **dst, json_t *v)
{
    char *s = oa_strndup_utf8(json_string_value(v), json_string_length(v), OA_MAX_NAME);
    if (s == NULL)
        return LMSCHED_ENOMEM;
    free(*dst);
    *dst = s;
    return LMSCHED_OK;
}

/* A non-negative integral JSON number as int64, else -1. */
static int64_t oa_count(json_t *v)
{
    if (json_is_integer(v)) {
        json_int_t i = json_integer_value(v);
        return i >= 0 ? (int64_t)i : -1;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (d >= 0 && d < 9.0e18 && floor(d) == d)
            return (int64_t)d;
    }
    return -1;
}

/*
 * Appends a sanitized form of s[0..len) to out (size outsz, always
 * NUL-terminated), keeping at most max characters of s: printable ASCII
 * only, each non-ASCII character as '?', runs of whitespace and control
 * bytes as one space, HTML tags (and the contents of script and style
 * elements) dropped, the common entities decoded. Adds "..." when cut.
 */
static void oa_sanitize(char *out, size_t outsz, const char *s, size_t len, size_t max)
{
    size_t o = strlen(out);
    size_t kept = 0;
    bool space = o == 0 || out[o - 1] == ' '; /* suppresses leading/double spaces */
    bool cut = false;
    size_t i = 0;

    while (i < len) {
        unsigned char c = (unsigned char)s[i];
        char emit = 0;
        if (c == '<' && i + 1 < len &&
            (isalpha((unsigned char)s[i + 1]) || s[i + 1] == '/' || s[i + 1] == '!' ||
             s[i + 1] == '?')) {
            const char *gt = memchr(s + i, '>', len - i);
            size_t end = gt ? (size_t)(gt - s) + 1 : len;
            const char *skip_to = NULL;
            if (oa_contains_ci(s + i, end - i < 8 ? end - i : 8, "<script"))
                skip_to = "</script";
            else if (oa_contains_ci(s + i, end - i < 7 ? end - i : 7, "<style"))
                skip_to = "</style";
            i = end;
            if (skip_to != NULL) {
                /* Scripts and styles are noise in an error message. */
                size_t n = strlen(skip_to);
                while (i < len && !(i + n <= len && oa_contains_ci(s + i, n, skip_to)))
                    i++;
            }
            emit = ' ';
        } else if (c == '&') {
            static const struct {
                const char *name;
                char ch;
            } ents[] = {{"&amp;", '&'},  {"&lt;", '<'},   {"&gt;", '>'},
                        {"&quot;", '"'}, {"&#39;", '\''}, {"&nbsp;", ' '}};
            emit = '&';
            size_t adv = 1;
            for (size_t e = 0; e < sizeof(ents) / sizeof(ents[0]); e++) {
                size_t n = strlen(ents[e].name);
                if (i + n <= len && memcmp(s + i, ents[e].name, n) == 0) {
                    emit = ents[e].ch;
                    adv = n;
                    break;
                }
            }
            i += adv;
        } else if (c >= 0x80) {
            /* One '?' per character: skip its continuation bytes. */
            i++;
            while (i < len && ((unsigned char)s[i] & 0xC0) == 0x80)
                i++;
            emit = '?';
        } else if (c < 0x20 || c == 0x7F || c == ' ') {
            i++;
            emit = ' ';
        } else {
            i++;
            emit = (char)c;
        }

        if (emit == ' ') {
            if (space)
                continue;
            space = true;
        } else {
            space = false;
        }
        if (kept >= max || o + 1 >= outsz) {
            cut = true;
            break;
        }
        out[o++] = emit;
        out[o] = '\0';
        kept++;
    }
    /* Trailing space left by a tag or newline at the end. */
    while (o > 0 && out[o - 1] == ' ' && kept > 0) {
        out[--o] = '\0';
        kept--;
    }
    if (cut) {
        const char *dots = "...";
        for (size_t k = 0; dots[k] && o + 1 < outsz; k++)
            out[o++] = dots[k];
        out[o] = '\0';
    }
}

/* Replaces the word after each "Bearer " in msg by "[redacted]": a server
 * may echo the request's Authorization header in its error page. */
static void oa_redact(char *msg, size_t msgsz)
{
    static const char word[] = "bearer ";
    static const char red[] = "[redacted]";
    size_t pos = 0;
    for (;;) {
        size_t len = strlen(msg);
        size_t at = len;
        for (size_t i = pos; i + sizeof(word) - 1 <= len; i++) {
            if (oa_contains_ci(msg + i, sizeof(word) - 1, word)) {
                at = i;
                break;
            }
        }
        if (at == len)
            return;
        size_t start = at + sizeof(word) - 1;
        size_t end = start;
        while (msg[end] != '\0' && msg[end] != ' ' && msg[end] != '"' && msg[end] != ',')
            end++;
        if (end == start || strncmp(msg + start, red, sizeof(red) - 1) == 0) {
            pos = start;
            continue;
        }
        size_t tail = len - end;
        size_t rl = sizeof(red) - 1;
        if (start + rl + tail + 1 > msgsz) /* cannot grow: drop the tail */
            tail = start + rl + 1 <= msgsz ? msgsz - 1 - start - rl : 0;
        if (start + rl + 1 > msgsz) {
            msg[start] = '\0';
            return;
        }
        memmove(msg + start + rl, msg + end, tail);
        memcpy(msg + start, red, rl);
        msg[start + rl + tail] = '\0';
        pos = start + rl;
    }
}

static int oa_err_set(oa_error *err, int code, bool transient, const char *fmt,
                      const char *arg)
{
    if (err != NULL) {
        memset(err, 0, sizeof(*err));
        err->code = code;
        err->transient = transient;
        snprintf(err->message, sizeof(err->message), fmt, arg);
    }
    return code;
}

/* ---- request body ------------------------------------------------------- */

static int oa_put(json_t *o, const char *key, json_t *v)
{
    /* json_object_set_new steals v even on failure. */
    return v == NULL || json_object_set_new(o, key, v) != 0 ? -1 : 0;
}

/* A JSON field of the request (compact JSON text, checked on the wire) as
 * a value, NULL on ENOMEM or (never for a decoded request) bad JSON. */
static json_t *oa_json(const char *text)
{
    return json_loads(text, JSON_DECODE_ANY, NULL);
}

static json_t *oa_message(const char *role, const char *content)
{
    json_t *m = json_object();
    if (m == NULL)
        return NULL;
    /* json_stringn: the exact bytes, so the prompt prefix stays cacheable. */
    if (oa_put(m, "role", json_string(role)) != 0 ||
        oa_put(m, "content", json_stringn(content, strlen(content))) != 0) {
        json_decref(m);
        return NULL;
    }
    return m;
}

/* A message with everything it may carry: content as text, as parts or
 * null; tool calls; the call it answers; a name. */
static json_t *oa_chat_msg(const chat_msg *cm)
{
    json_t *m = json_object();
    if (m == NULL || oa_put(m, "role", json_string(cm->role)) != 0)
        goto fail;
    if (cm->content != NULL) {
        if (oa_put(m, "content", json_stringn(cm->content, strlen(cm->content))) != 0)
            goto fail;
    } else if (cm->parts_json != NULL) {
        if (oa_put(m, "content", oa_json(cm->parts_json)) != 0)
            goto fail;
    } else if (oa_put(m, "content", json_null()) != 0) {
        goto fail;
    }
    if (cm->tool_calls_json != NULL && oa_put(m, "tool_calls", oa_json(cm->tool_calls_json)) != 0)
        goto fail;
    if (cm->tool_call_id != NULL &&
        oa_put(m, "tool_call_id", json_string(cm->tool_call_id)) != 0)
        goto fail;
    if (cm->name != NULL && oa_put(m, "name", json_string(cm->name)) != 0)
        goto fail;
    return m;
fail:
    json_decref(m);
    return NULL;
}

char *oa_build_chat_body(const chat_req *req, const oa_body_opts *opts)
{
    json_t *root = json_object();
    json_t *msgs = json_array();
    json_t *stop = NULL;
    char *out = NULL;
    const char *model;
    int32_t max_tokens;
    if (root == NULL || msgs == NULL || req == NULL || opts == NULL)
        goto fail;

    model = req->model != NULL ? req->model : opts->model;
    if (model != NULL && oa_put(root, "model", json_string(model)) != 0)
        goto fail;

    if (req->system != NULL && req->system[0] != '\0' &&
        json_array_append_new(msgs, oa_message("system", req->system)) != 0)
        goto fail;
    for (size_t i = 0; i < req->n_messages; i++) {
        const chat_msg *m = &req->messages[i];
        if (m->role == NULL || json_array_append_new(msgs, oa_chat_msg(m)) != 0)
            goto fail;
    }
    /* root owns msgs from here, even if the set fails. */
    json_t *msgs_ref = msgs;
    msgs = NULL;
    if (oa_put(root, "messages", msgs_ref) != 0)
        goto fail;

    max_tokens = req->max_tokens >= 0 ? req->max_tokens : opts->max_tokens;
    if (max_tokens >= 0 && oa_put(root, "max_tokens", json_integer(max_tokens)) != 0)
        goto fail;
    if (req->has_temperature &&
        oa_put(root, "temperature", json_real(req->temperature)) != 0)
        goto fail;
    if (req->has_top_p && oa_put(root, "top_p", json_real(req->top_p)) != 0)
        goto fail;
    if (req->has_seed && oa_put(root, "seed", json_integer((json_int_t)req->seed)) != 0)
        goto fail;
    if (req->n_stop > 0) {
        stop = json_array();
        if (oa_put(root, "stop", stop) != 0)
            goto fail;
        for (size_t i = 0; i < req->n_stop; i++) {
            if (req->stop[i] == NULL ||
                json_array_append_new(
                    stop, json_stringn(req->stop[i], strlen(req->stop[i]))) != 0)
                goto fail;
        }
    }
    if (req->tools_json != NULL && oa_put(root, "tools", oa_json(req->tools_json)) != 0)
        goto fail;
    if (req->tool_choice_json != NULL &&
        oa_put(root, "tool_choice", oa_json(req->tool_choice_json)) != 0)
        goto fail;
    if (req->parallel_tool_calls >= 0 &&
        oa_put(root, "parallel_tool_calls", json_boolean(req->parallel_tool_calls)) != 0)
        goto fail;
    if (req->response_format_json != NULL &&
        oa_put(root, "response_format", oa_json(req->response_format_json)) != 0)
        goto fail;
    if (req->extra_json != NULL) {
        /* Verbatim, key by key in their order; the keys the daemon sets
         * itself were refused when the request came in. */
        json_t *extra = oa_json(req->extra_json);
        const char *key;
        json_t *v;
        if (!json_is_object(extra)) {
            json_decref(extra);
            goto fail;
        }
        json_object_foreach(extra, key, v)
        {
            if (json_object_set(root, key, v) != 0) {
                json_decref(extra);
                goto fail;
            }
        }
        json_decref(extra);
    }
    if (opts->stream) {
        if (oa_put(root, "stream", json_true()) != 0 ||
            oa_put(root, "stream_options", json_pack("{s:b}", "include_usage", 1)) != 0)
            goto fail;
    }
    if (opts->cache_prompt && oa_put(root, "cache_prompt", json_true()) != 0)
        goto fail;
    if (opts->id_slot >= 0 && oa_put(root, "id_slot", json_integer(opts->id_slot)) != 0)
        goto fail;

    /* Precision 15 prints 0.7 as 0.7 rather than 0.69999999999999996. */
    out = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15));

fail:
    json_decref(msgs);
    json_decref(root);
    return out;
}

/* ---- responses ------------------------------------------------------------ */

void oa_resp_init(oa_resp *r, size_t max_content)
{
    memset(r, 0, sizeof(*r));
    /* A shared empty string until the first append (content_cap 0 marks it),
     * so content is never NULL and init cannot fail. */
    r->content = (char *)"";
    r->max_content = max_content;
    r->prompt_tokens = r->completion_tokens = r->cached_tokens = -1;
    r->timings_prompt_n = r->timings_cache_n = -1;
    strbuf_init(&r->reasoning);
    strbuf_init(&r->logprobs);
}

void oa_deltas_free(oa_delta *d, size_t n)
{
    for (size_t i = 0; d != NULL && i < n; i++) {
        free(d[i].id);
        free(d[i].name);
        strbuf_fini(&d[i].text);
    }
    free(d);
}

void oa_resp_fini(oa_resp *r)
{
    if (r == NULL)
        return;
    if (r->content_cap > 0)
        free(r->content);
    free(r->finish_reason);
    free(r->model);
    strbuf_fini(&r->reasoning);
    strbuf_fini(&r->logprobs);
    for (size_t i = 0; i < r->n_tool_calls; i++) {
        free(r->tool_calls[i].id);
        free(r->tool_calls[i].type);
        free(r->tool_calls[i].name);
        strbuf_fini(&r->tool_calls[i].arguments);
    }
    free(r->tool_calls);
    oa_deltas_free(r->deltas, r->n_deltas);
    bool record = r->record_deltas;
    oa_resp_init(r, r->max_content);
    r->record_deltas = record;
}

char *oa_resp_logprobs(const oa_resp *r)
{
    if (r->logprobs.len == 0)
        return NULL;
    size_t n = r->logprobs.len + 3;
    char *s = malloc(n);
    if (s != NULL)
        snprintf(s, n, "[%s]", r->logprobs.data);
    return s;
}

void oa_resp_take_deltas(oa_resp *r, oa_delta **out, size_t *n)
{
    *out = r->deltas;
    *n = r->n_deltas;
    r->deltas = NULL;
    r->n_deltas = r->cap_deltas = 0;
}

static int oa_malformed(oa_error *err, const char *kind, const char *what);

/* The delta a piece goes into: the last one when it is of the same kind
 * (and tool call), else a new one. NULL on ENOMEM. */
static oa_delta *oa_delta_for(oa_resp *r, oa_delta_kind kind, uint32_t index, bool fresh)
{
    if (!fresh && r->n_deltas > 0) {
        oa_delta *last = &r->deltas[r->n_deltas - 1];
        if (last->kind == kind && (kind != OA_DELTA_TOOL_CALL || last->index == index))
            return last;
    }
    if (r->n_deltas == r->cap_deltas) {
        size_t cap = r->cap_deltas ? r->cap_deltas * 2 : 8;
        oa_delta *d = realloc(r->deltas, cap * sizeof(*d));
        if (d == NULL)
            return NULL;
        r->deltas = d;
        r->cap_deltas = cap;
    }
    oa_delta *d = &r->deltas[r->n_deltas++];
    memset(d, 0, sizeof(*d));
    d->kind = kind;
    d->index = index;
    strbuf_init(&d->text);
    return d;
}

/* Records a text piece for the agent, when streaming to it. */
static int oa_record(oa_resp *r, oa_delta_kind kind, const char *s, size_t n)
{
    if (!r->record_deltas || n == 0)
        return LMSCHED_OK;
    oa_delta *d = oa_delta_for(r, kind, 0, false);
    if (d == NULL || strbuf_append(&d->text, s, n, SIZE_MAX - 1) != 0)
        return LMSCHED_ENOMEM;
    return LMSCHED_OK;
}

static int oa_append(oa_resp *r, const char *s, size_t n, oa_error *err)
{
    if (n == 0)
        return LMSCHED_OK;
    if (n > r->max_content || r->content_len > r->max_content - n) {
        char lim[32];
        snprintf(lim, sizeof(lim), "%zu", r->max_content);
        return oa_err_set(
            err, LMSCHED_ETOOLARGE, false,
            "the backend's answer is longer than the content limit (%s bytes)", lim);
    }
    size_t need = r->content_len + n + 1;
    if (need > r->content_cap) {
        size_t cap = r->content_cap ? r->content_cap : 256;
        while (cap < need)
            cap = cap > SIZE_MAX / 2 ? need : cap * 2;
        char *c = realloc(r->content_cap ? r->content : NULL, cap);
        if (c == NULL)
            return oa_err_set(err, LMSCHED_ENOMEM, false, "%s",
                              "out of memory reading the backend's answer");
        r->content = c;
        r->content_cap = cap;
    }
    memcpy(r->content + r->content_len, s, n);
    r->content_len += n;
    r->content[r->content_len] = '\0';
    if (oa_record(r, OA_DELTA_CONTENT, s, n) != LMSCHED_OK)
        return oa_err_set(err, LMSCHED_ENOMEM, false, "%s",
                          "out of memory reading the backend's answer");
    return LMSCHED_OK;
}

/* A piece of text beyond the answer (reasoning, a call's arguments): the
 * same bound as the answer. */
static int oa_append_to(oa_resp *r, strbuf *b, const char *s, size_t n, oa_error *err)
{
    int rc = strbuf_append(b, s, n, r->max_content);
    if (rc == STRBUF_EOVER) {
        char lim[32];
        snprintf(lim, sizeof(lim), "%zu", r->max_content);
        return oa_err_set(err, LMSCHED_ETOOLARGE, false,
                          "the backend's answer is longer than the content limit (%s bytes)",
                          lim);
    }
    if (rc != 0)
        return oa_err_set(err, LMSCHED_ENOMEM, false, "%s",
                          "out of memory reading the backend's answer");
    return LMSCHED_OK;
}

/* The tool call of this index, added when new. NULL on ENOMEM. */
static oa_tool_call *oa_tool_call_at(oa_resp *r, uint32_t index, bool *is_new)
{
    *is_new = false;
    for (size_t i = 0; i < r->n_tool_calls; i++)
        if (r->tool_calls[i].index == index)
            return &r->tool_calls[i];
    if (r->n_tool_calls == r->cap_tool_calls) {
        size_t cap = r->cap_tool_calls ? r->cap_tool_calls * 2 : 4;
        oa_tool_call *t = realloc(r->tool_calls, cap * sizeof(*t));
        if (t == NULL)
            return NULL;
        r->tool_calls = t;
        r->cap_tool_calls = cap;
    }
    oa_tool_call *t = &r->tool_calls[r->n_tool_calls++];
    memset(t, 0, sizeof(*t));
    t->index = index;
    strbuf_init(&t->arguments);
    *is_new = true;
    return t;
}

/* A string member of obj as a bounded copy into *dst when present. */
static int oa_take_name(json_t *obj, const char *key, char **dst)
{
    json_t *v = json_object_get(obj, key);
    if (!json_is_string(v) || json_string_length(v) == 0)
        return LMSCHED_OK;
    return oa_set_name(dst, v);
}

/* The string v without U+0000: a model can emit it (a tiny or broken one
 * does), and it is valid JSON, but the agent's text is a C string, where it
 * would cut the answer short; dropped, so the rest arrives. Sets *len; NULL
 * when out of memory. */
static const char *oa_without_nul(json_t *v, size_t *len)
{
    *len = json_string_length(v);
    const char *t = json_string_value(v);
    if (memchr(t, '\0', *len) == NULL)
        return t;
    char *c = malloc(*len);
    if (c == NULL)
        return NULL;
    size_t n = 0;
    for (size_t i = 0; i < *len; i++)
        if (t[i] != '\0')
            c[n++] = t[i];
    int rc = json_string_setn(v, c, n);
    free(c);
    if (rc != 0)
        return NULL;
    *len = n;
    return json_string_value(v);
}

/* One entry of tool_calls, in a delta (pieces) or a whole message. */
static int oa_read_tool_call(oa_resp *r, json_t *tc, size_t pos, const char *kind,
                             oa_error *err)
{
    if (!json_is_object(tc))
        return oa_malformed(err, kind, "a tool_calls entry is not an object");
    json_t *ix = json_object_get(tc, "index");
    int64_t index = json_is_integer(ix) ? (int64_t)json_integer_value(ix) : (int64_t)pos;
    if (index < 0 || index >= 128)
        return oa_malformed(err, kind, "a tool call's index is out of range");
    bool is_new;
    oa_tool_call *t = oa_tool_call_at(r, (uint32_t)index, &is_new);
    if (t == NULL)
        return oa_err_set(err, LMSCHED_ENOMEM, false, "%s", "out of memory");
    json_t *fn = json_object_get(tc, "function");
    bool had_id = t->id != NULL, had_name = t->name != NULL;
    if (oa_take_name(tc, "id", &t->id) != LMSCHED_OK ||
        oa_take_name(tc, "type", &t->type) != LMSCHED_OK ||
        (json_is_object(fn) && oa_take_name(fn, "name", &t->name) != LMSCHED_OK))
        return oa_err_set(err, LMSCHED_ENOMEM, false, "%s", "out of memory");
    json_t *args = json_is_object(fn) ? json_object_get(fn, "arguments") : NULL;
    size_t an = 0;
    const char *a = json_is_string(args) ? oa_without_nul(args, &an) : NULL;
    if (json_is_string(args) && a == NULL)
        return oa_err_set(err, LMSCHED_ENOMEM, false, "%s", "out of memory");
    int rc = oa_append_to(r, &t->arguments, a, an, err);
    if (rc != LMSCHED_OK)
        return rc;
    r->got_token = true;
    if (r->record_deltas) {
        bool first = (t->id != NULL && !had_id) || (t->name != NULL && !had_name);
        oa_delta *d = oa_delta_for(r, OA_DELTA_TOOL_CALL, (uint32_t)index, first);
        if (d == NULL)
            return oa_err_set(err, LMSCHED_ENOMEM, false, "%s", "out of memory");
        if (first) {
            d->id = t->id != NULL ? strdup(t->id) : NULL;
            d->name = t->name != NULL ? strdup(t->name) : NULL;
        }
        if (an > 0 && strbuf_append(&d->text, a, an, SIZE_MAX - 1) != 0)
            return oa_err_set(err, LMSCHED_ENOMEM, false, "%s", "out of memory");
    }
    return LMSCHED_OK;
}

/* choices[0].logprobs.content: its entries join the ones so far. */
static int oa_read_logprobs(oa_resp *r, json_t *c, oa_error *err)
{
    json_t *lp = json_object_get(c, "logprobs");
    json_t *content = json_is_object(lp) ? json_object_get(lp, "content") : NULL;
    size_t i;
    json_t *e;
    if (!json_is_array(content))
        return LMSCHED_OK;
    json_array_foreach(content, i, e)
    {
        char *s = json_dumps(e, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17) |
                                    JSON_ENCODE_ANY);
        if (s == NULL)
            return oa_err_set(err, LMSCHED_ENOMEM, false, "%s", "out of memory");
        int rc = r->logprobs.len > 0 ? oa_append_to(r, &r->logprobs, ",", 1, err) : 0;
        if (rc == LMSCHED_OK)
            rc = oa_append_to(r, &r->logprobs, s, strlen(s), err);
        free(s);
        if (rc != LMSCHED_OK)
            return rc;
    }
    return LMSCHED_OK;
}

/* kind is "chunk" (one streamed event) or "response" (a whole body). */
static int oa_malformed(oa_error *err, const char *kind, const char *what)
{
    if (err != NULL) {
        /* jansson's error text quotes the backend's bytes ("near '...'"),
         * which may be control bytes, broken UTF-8 or an echoed token. */
        char shown[OA_MAX_EXCERPT + 4] = "";
        oa_sanitize(shown, sizeof(shown), what, strlen(what), OA_MAX_EXCERPT);
        oa_redact(shown, sizeof(shown));
        memset(err, 0, sizeof(*err));
        err->code = LMSCHED_EBACKEND_STREAM;
        snprintf(err->message, sizeof(err->message), "malformed %s from backend: %s",
                 kind, shown);
    }
    return LMSCHED_EBACKEND_STREAM;
}

/* usage, timings and model: the parts shared by chunks and whole bodies. */
static int oa_read_meta(oa_resp *r, json_t *root)
{
    json_t *v = json_object_get(root, "model");
    if (json_is_string(v) && oa_set_name(&r->model, v) != LMSCHED_OK)
        return LMSCHED_ENOMEM;

    json_t *usage = json_object_get(root, "usage");
    if (json_is_object(usage)) {
        int64_t n = oa_count(json_object_get(usage, "prompt_tokens"));
        if (n >= 0)
            r->prompt_tokens = n;
        n = oa_count(json_object_get(usage, "completion_tokens"));
        if (n >= 0)
            r->completion_tokens = n;
        json_t *det = json_object_get(usage, "prompt_tokens_details");
        n = json_is_object(det) ? oa_count(json_object_get(det, "cached_tokens")) : -1;
        if (n >= 0)
            r->cached_tokens = n; /* the OpenAI field wins over timings.cache_n */
    }

    json_t *t = json_object_get(root, "timings");
    if (json_is_object(t)) {
        int64_t n = oa_count(json_object_get(t, "prompt_n"));
        if (n >= 0)
            r->timings_prompt_n = n;
        n = oa_count(json_object_get(t, "cache_n"));
        if (n >= 0) {
            r->timings_cache_n = n;
            if (r->cached_tokens < 0)
                r->cached_tokens = n;
        }
    }
    return LMSCHED_OK;
}

static void oa_classify(long status, const char *body, size_t len, bool in_stream,
                        oa_error *out);

/* {"error": ...} inside a 200 response: classified like an HTTP error body
 * whose status is the error's own "code" when it gives one (llama.cpp does,
 * so a context overflow stays permanent), else 500 (LM Studio's "Channel
 * Error" carries none). http_status stays 0: the HTTP status was fine. */
static int oa_inline_error(json_t *root, const char *data, size_t len, oa_error *err)
{
    json_t *e = json_object_get(root, "error");
    json_t *code = json_is_object(e) ? json_object_get(e, "code") : NULL;
    long status = 500;
    if (json_is_integer(code) && json_integer_value(code) >= 400 &&
        json_integer_value(code) <= 599)
        status = (long)json_integer_value(code);
    oa_error tmp;
    oa_classify(status, data, len, true, &tmp);
    if (err != NULL)
        *err = tmp;
    return tmp.code;
}

/* The text of a delta or message field: NULL when absent or null; sets
 * *bad when it is some other type. */
static const char *oa_text(json_t *obj, const char *key, size_t *len, bool *bad)
{
    json_t *v = json_object_get(obj, key);
    *len = 0;
    if (v == NULL || json_is_null(v))
        return NULL;
    if (!json_is_string(v)) {
        *bad = true;
        return NULL;
    }
    const char *t = oa_without_nul(v, len);
    if (t == NULL)
        *bad = true;
    return t;
}

/* Reads choices[0] of a chunk (part "delta") or a whole response (part
 * "message"). */
static int oa_read_choice(oa_resp *r, json_t *root, const char *part, const char *kind,
                          oa_error *err)
{
    json_t *choices = json_object_get(root, "choices");
    if (choices == NULL || json_is_null(choices))
        return LMSCHED_OK;
    if (!json_is_array(choices))
        return oa_malformed(err, kind, "\"choices\" is not an array");
    if (json_array_size(choices) == 0)
        return LMSCHED_OK; /* the usage chunk */
    json_t *c = json_array_get(choices, 0);
    if (!json_is_object(c))
        return oa_malformed(err, kind, "choices[0] is not an object");

    json_t *d = json_object_get(c, part);
    if (d != NULL && !json_is_null(d)) {
        if (!json_is_object(d))
            return oa_malformed(err, kind, "choices[0].delta/message is not an object");
        bool bad = false, ignored = false;
        size_t n = 0, rn = 0;
        const char *text = oa_text(d, "content", &n, &bad);
        if (bad)
            return oa_malformed(err, kind, "\"content\" is neither a string nor null");
        /* Reasoning models stream their thinking first: it shows the model
         * is generating (a token arrived) but is not the answer. llama.cpp
         * names it reasoning_content, some servers reasoning. */
        const char *rtext = oa_text(d, "reasoning_content", &rn, &ignored);
        if (rtext == NULL)
            rtext = oa_text(d, "reasoning", &rn, &ignored);
        if (text != NULL) {
            int rc = oa_append(r, text, n, err);
            if (rc != LMSCHED_OK)
                return rc;
        }
        if (rtext != NULL && rn > 0) {
            int rc = oa_append_to(r, &r->reasoning, rtext, rn, err);
            if (rc == LMSCHED_OK)
                rc = oa_record(r, OA_DELTA_REASONING, rtext, rn) == LMSCHED_OK
                         ? LMSCHED_OK
                         : oa_err_set(err, LMSCHED_ENOMEM, false, "%s", "out of memory");
            if (rc != LMSCHED_OK)
                return rc;
        }
        if (n > 0 || rn > 0)
            r->got_token = true;
        json_t *tcs = json_object_get(d, "tool_calls");
        if (tcs != NULL && !json_is_null(tcs)) {
            size_t i;
            json_t *tc;
            if (!json_is_array(tcs))
                return oa_malformed(err, kind, "\"tool_calls\" is not an array");
            json_array_foreach(tcs, i, tc)
            {
                int rc = oa_read_tool_call(r, tc, i, kind, err);
                if (rc != LMSCHED_OK)
                    return rc;
            }
        }
    }
    {
        int rc = oa_read_logprobs(r, c, err);
        if (rc != LMSCHED_OK)
            return rc;
    }

    json_t *fr = json_object_get(c, "finish_reason");
    if (json_is_string(fr) && oa_set_name(&r->finish_reason, fr) != LMSCHED_OK)
        return oa_err_set(err, LMSCHED_ENOMEM, false, "%s", "out of memory");
    return LMSCHED_OK;
}

static int oa_parse(oa_resp *r, const char *data, size_t len, const char *part,
                    const char *kind, oa_error *err)
{
    json_error_t jerr;
    int rc;
    /* JSON_ALLOW_NUL: "\u0000" in a model's text is valid JSON (oa_text). */
    json_t *root = json_loadb(data, len, JSON_ALLOW_NUL, &jerr);
    if (root == NULL)
        return oa_malformed(err, kind, jerr.text);
    if (!json_is_object(root)) {
        rc = oa_malformed(err, kind, "not a JSON object");
        goto done;
    }
    json_t *e = json_object_get(root, "error");
    if (e != NULL && !json_is_null(e)) {
        rc = oa_inline_error(root, data, len, err);
        goto done;
    }
    r->chunks++;
    rc = oa_read_choice(r, root, part, kind, err);
    if (rc == LMSCHED_OK && oa_read_meta(r, root) != LMSCHED_OK)
        rc = oa_err_set(err, LMSCHED_ENOMEM, false, "%s", "out of memory");
done:
    json_decref(root);
    return rc;
}

int oa_resp_feed_chunk(oa_resp *r, const char *data, size_t len, oa_error *err)
{
    /* Tolerate whitespace around the terminator. */
    size_t a = 0, b = len;
    while (a < b && isspace((unsigned char)data[a]))
        a++;
    while (b > a && isspace((unsigned char)data[b - 1]))
        b--;
    if (b - a == 6 && memcmp(data + a, "[DONE]", 6) == 0) {
        r->done = true;
        return LMSCHED_OK;
    }
    return oa_parse(r, data, len, "delta", "chunk", err);
}

int oa_resp_parse_full(oa_resp *r, const char *body, size_t len, oa_error *err)
{
    int rc = oa_parse(r, body, len, "message", "response", err);
    if (rc == LMSCHED_OK)
        r->done = true;
    return rc;
}

/* ---- error classification ---------------------------------------------- */

/* Whether a status is worth retrying: overload, crash, restart. */
static bool oa_status_transient(long status)
{
    return status == 429 || status == 500 || status == 502 || status == 503 ||
           status == 504;
}

/* The backend's own words from a JSON error body, sanitized into msg;
 * false when the body holds none. */
static bool oa_json_message(const char *body, size_t len, char *msg, size_t msgsz)
{
    json_t *root = json_loadb(body, len, 0, NULL);
    bool found = false;
    if (!json_is_object(root))
        goto done;
    json_t *e = json_object_get(root, "error");
    json_t *m = NULL;
    if (json_is_object(e))
        m = json_object_get(e, "message");
    else if (json_is_string(e))
        m = e;
    if (!json_is_string(m))
        m = json_object_get(root, "message");
    if (!json_is_string(m) || json_string_length(m) == 0)
        goto done;
    oa_sanitize(msg, msgsz, json_string_value(m), json_string_length(m),
                OA_MAX_BACKEND_MSG);
    found = msg[0] != '\0';
    if (found && json_is_object(e)) {
        /* llama.cpp's context overflow says by how much: worth passing on. */
        int64_t np = oa_count(json_object_get(e, "n_prompt_tokens"));
        int64_t nc = oa_count(json_object_get(e, "n_ctx"));
        if (np >= 0 && nc >= 0) {
            size_t o = strlen(msg);
            snprintf(msg + o, msgsz - o, " (prompt %lld tokens, context %lld)",
                     (long long)np, (long long)nc);
        }
    }
done:
    json_decref(root);
    return found;
}

static void oa_classify(long status, const char *body, size_t len, bool in_stream,
                        oa_error *out)
{
    char head[64];
    char msg[400] = "";
    if (body == NULL)
        len = 0;
    memset(out, 0, sizeof(*out));

    if (len == 0 || !oa_json_message(body, len, msg, sizeof(msg))) {
        msg[0] = '\0';
        if (len > 0)
            oa_sanitize(msg, sizeof(msg), body, len, OA_MAX_EXCERPT);
    }
    oa_redact(msg, sizeof(msg));

    const char *hint = "";
    if (oa_contains_ci(body, len, "Channel Error") ||
        oa_contains_ci(body, len, "model has crashed")) {
        /* LM Studio's words when the model process died; it reloads the
         * model, so the same request usually succeeds a moment later. */
        out->code = LMSCHED_EBACKEND_CRASH;
        out->transient = true;
        hint = " (the model crashed in the backend)";
    } else if (status == 401 || status == 403) {
        out->code = LMSCHED_EAUTH;
        out->transient = false;
        hint = " (check the API token lmsched is configured with)";
    } else {
        out->code = LMSCHED_EBACKEND_HTTP;
        out->transient = oa_status_transient(status);
    }

    if (in_stream)
        snprintf(head, sizeof(head), "backend error in the stream (code %ld)", status);
    else
        snprintf(head, sizeof(head), "backend HTTP %ld", status);
    snprintf(out->message, sizeof(out->message), "%s: %s%s", head,
             msg[0] != '\0' ? msg : "(empty body)", hint);
}

void oa_classify_http(long status, const char *body, size_t len, oa_error *out)
{
    oa_classify(status, body, len, false, out);
    out->http_status = status;
}

void oa_classify_curl(int curlcode, const char *errbuf, oa_error *out)
{
    char detail[300] = "";
    const char *what;
    CURLcode cc = (CURLcode)curlcode;

    memset(out, 0, sizeof(*out));
    out->code = LMSCHED_EBACKEND_STREAM;
    out->transient = false;
    switch (cc) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        out->code = LMSCHED_EBACKEND_DOWN;
        out->transient = true;
        what = "cannot reach the LLM server (is it running, and is the URL right?)";
        break;
    case CURLE_OPERATION_TIMEDOUT:
        out->code = LMSCHED_EBACKEND_TIMEOUT;
        what = "the LLM server did not answer in time";
        break;
    case CURLE_GOT_NOTHING:
        out->transient = true;
        what = "the LLM server closed the connection without answering";
        break;
    case CURLE_PARTIAL_FILE:
        out->transient = true;
        what = "the LLM server's answer was cut short";
        break;
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
        out->transient = true;
        what = "the connection to the LLM server broke";
        break;
    case CURLE_WRITE_ERROR:
        what = "reading the LLM server's answer was aborted";
        break;
    default:
        what = "transfer to the LLM server failed";
        break;
    }

    /* curl's error buffer names host and port, never headers; sanitize it
     * anyway so it is plain ASCII. */
    if (errbuf != NULL && errbuf[0] != '\0')
        oa_sanitize(detail, sizeof(detail), errbuf, strlen(errbuf), OA_MAX_EXCERPT);
    oa_redact(detail, sizeof(detail));
    if (detail[0] != '\0')
        snprintf(out->message, sizeof(out->message), "%s: %s (curl error %d: %s)", what,
                 detail, curlcode, curl_easy_strerror(cc));
    else
        snprintf(out->message, sizeof(out->message), "%s (curl error %d: %s)", what,
                 curlcode, curl_easy_strerror(cc));
}

/* ---- model info --------------------------------------------------------- */

void oa_model_info_init(oa_model_info *mi)
{
    mi->model = NULL;
    mi->size_bytes = mi->context_length = mi->parallel = -1;
}

void oa_model_info_fini(oa_model_info *mi)
{
    if (mi == NULL)
        return;
    free(mi->model);
    oa_model_info_init(mi);
}

static json_t *oa_load_object(const char *body, size_t len)
{
    json_t *root = body != NULL ? json_loadb(body, len, 0, NULL) : NULL;
    if (root != NULL && !json_is_object(root)) {
        json_decref(root);
        root = NULL;
    }
    return root;
}

/* Replaces mi->model by a bounded copy of s[0..len) when it is non-empty. */
static int oa_set_model(oa_model_info *mi, const char *s, size_t len)
{
    if (s == NULL || len == 0)
        return LMSCHED_OK;
    char *m = oa_strndup_utf8(s, len, OA_MAX_NAME);
    if (m == NULL)
        return LMSCHED_ENOMEM;
    free(mi->model);
    mi->model = m;
    return LMSCHED_OK;
}

int oa_parse_lmstudio_models(const char *body, size_t len, oa_model_info *out)
{
    int rc = LMSCHED_EBACKEND_STREAM;
    json_t *root = oa_load_object(body, len);
    json_t *models = json_object_get(root, "models");
    if (!json_is_array(models))
        goto done;

    rc = LMSCHED_EINVAL; /* until a loaded LLM turns up */
    size_t i;
    json_t *m;
    json_array_foreach(models, i, m)
    {
        json_t *type = json_object_get(m, "type");
        json_t *inst = json_object_get(m, "loaded_instances");
        if (!json_is_string(type) || strcmp(json_string_value(type), "llm") != 0 ||
            !json_is_array(inst) || json_array_size(inst) == 0)
            continue;
        json_t *i0 = json_array_get(inst, 0);
        json_t *cfg = json_object_get(i0, "config");
        json_t *key = json_object_get(m, "key");
        if (!json_is_string(key))
            key = json_object_get(i0, "id");
        rc = json_is_string(key)
                 ? oa_set_model(out, json_string_value(key), json_string_length(key))
                 : LMSCHED_OK;
        if (rc != LMSCHED_OK)
            goto done;
        int64_t n = oa_count(json_object_get(m, "size_bytes"));
        if (n >= 0)
            out->size_bytes = n;
        n = oa_count(json_object_get(cfg, "context_length"));
        if (n >= 0)
            out->context_length = n;
        /* "parallel" is new in LM Studio 0.4; older servers omit it. */
        n = oa_count(json_object_get(cfg, "parallel"));
        if (n >= 0)
            out->parallel = n;
        break;
    }
done:
    json_decref(root);
    return rc;
}

int oa_parse_llamacpp_props(const char *body, size_t len, oa_model_info *out)
{
    int rc = LMSCHED_EBACKEND_STREAM;
    json_t *root = oa_load_object(body, len);
    if (root == NULL)
        goto done;

    int64_t n = oa_count(json_object_get(root, "total_slots"));
    if (n >= 0)
        out->parallel = n;
    json_t *dgs = json_object_get(root, "default_generation_settings");
    n = oa_count(json_object_get(dgs, "n_ctx"));
    if (n >= 0)
        out->context_length = n;

    rc = LMSCHED_OK;
    json_t *alias = json_object_get(root, "model_alias");
    json_t *path = json_object_get(root, "model_path");
    if (json_is_string(alias) && json_string_length(alias) > 0) {
        rc = oa_set_model(out, json_string_value(alias), json_string_length(alias));
    } else if (json_is_string(path)) {
        const char *p = json_string_value(path);
        size_t plen = json_string_length(path);
        size_t base = 0;
        for (size_t k = 0; k < plen; k++)
            if (p[k] == '/' || p[k] == '\\')
                base = k + 1; /* llama-server also runs on Windows */
        rc = oa_set_model(out, p + base, plen - base);
    }
done:
    json_decref(root);
    return rc;
}

int oa_parse_openai_models(const char *body, size_t len, oa_model_info *out)
{
    int rc = LMSCHED_EBACKEND_STREAM;
    json_t *root = oa_load_object(body, len);
    json_t *data = json_object_get(root, "data");
    if (!json_is_array(data))
        goto done;
    json_t *m0 = json_array_get(data, 0);
    json_t *id = json_object_get(m0, "id");
    if (!json_is_string(id) || json_string_length(id) == 0) {
        rc = LMSCHED_EINVAL; /* no model served */
        goto done;
    }
    rc = oa_set_model(out, json_string_value(id), json_string_length(id));
    /* llama.cpp adds the file size under "meta". */
    int64_t n = oa_count(json_object_get(json_object_get(m0, "meta"), "size"));
    if (rc == LMSCHED_OK && n >= 0)
        out->size_bytes = n;
done:
    json_decref(root);
    return rc;
}

int oa_parse_template(const char *body, size_t len, char **out)
{
    int rc = LMSCHED_EBACKEND_STREAM;
    json_t *root = oa_load_object(body, len);
    json_t *prompt = json_object_get(root, "prompt");
    *out = NULL;
    if (!json_is_string(prompt))
        goto done;
    *out = strndup(json_string_value(prompt), json_string_length(prompt));
    rc = *out != NULL ? LMSCHED_OK : LMSCHED_ENOMEM;
done:
    json_decref(root);
    return rc;
}

char *oa_build_tokenize_body(const char *prompt)
{
    /* The chat handler tokenizes its prompt with the model's BOS and with
     * special tokens parsed (the template's markers): so must the count. */
    json_t *o = json_pack("{s:s,s:b,s:b}", "content", prompt, "add_special", 1,
                          "parse_special", 1);
    char *s = o != NULL ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return s;
}

int oa_parse_token_count(const char *body, size_t len, int64_t *n)
{
    int rc = LMSCHED_EBACKEND_STREAM;
    json_t *root = oa_load_object(body, len);
    json_t *tokens = json_object_get(root, "tokens");
    if (json_is_array(tokens)) {
        *n = (int64_t)json_array_size(tokens);
        rc = LMSCHED_OK;
    }
    json_decref(root);
    return rc;
}
