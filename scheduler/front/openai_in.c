/*
 * openai_in - OpenAI chat-completions requests in, lmsched answers out (see
 * openai_in.h and docs/openai.md).
 *
 * Design notes: the body is parsed once with jansson (duplicate keys and
 * NUL bytes refused, so what reaches the backend is what the client meant)
 * and walked key by key; the values that keep their JSON (tools, content
 * parts, tool calls, every field passed through) are dumped compact, in
 * the order they came, so two agents that send the same tools send the
 * backend the same bytes and share the prompt cache through them. The
 * limits are the wire protocol's (proto/): an HTTP client gets what an nng
 * agent gets, refused with the field named.
 */
#include "scheduler/front/openai_in.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "lmsched/wire.h"
#include "proto/proto.h"

/* What one request may hold: the wire protocol's limits. */
typedef struct oai_in {
    lms_limits lim;
    oai_err *err;
    chat_req *req;
    json_t *extra; /* fields passed through, or NULL */
    uint8_t priority;
    bool has_priority;
    uint32_t deadline_ms;
    bool has_deadline;
    char *agent, *session;  /* from the body's "lmsched" object */
    char *cache_key, *user; /* prompt_cache_key, user */
} oai_in;

static int oai_fail(oai_in *in, int rc, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Fills the error; returns rc. */
static int oai_fail(oai_in *in, int rc, const char *param, const char *fmt, ...)
{
    va_list ap;
    in->err->status = rc == LMSCHED_ENOMEM ? 500 : 400;
    snprintf(in->err->param, sizeof(in->err->param), "%s", param != NULL ? param : "");
    va_start(ap, fmt);
    vsnprintf(in->err->message, sizeof(in->err->message), fmt, ap);
    va_end(ap);
    /* Printable ASCII only: jansson's error text quotes the bytes it
     * stopped at, and a header's value may be anything. */
    for (char *p = in->err->message; *p != '\0'; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
            *p = '?';
    return rc;
}

static const char *oai_type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
        return "null";
    }
    return "something else";
}

static int oai_wrong_type(oai_in *in, const char *param, const char *want,
                          const json_t *v)
{
    return oai_fail(in, LMSCHED_EPROTO, param, "%s: expected %s, got %s", param, want,
                    oai_type_name(v));
}

/* A copy of a string value of at most max bytes; *out NULL for null. */
static int oai_str(oai_in *in, const json_t *v, const char *param, size_t max,
                   bool nullable, char **out)
{
    *out = NULL;
    if (nullable && json_is_null(v))
        return LMSCHED_OK;
    if (!json_is_string(v))
        return oai_wrong_type(in, param, "a string", v);
    size_t n = json_string_length(v);
    if (n > max)
        return oai_fail(in, LMSCHED_ETOOLARGE, param,
                        "%s: %zu bytes, more than the limit of %zu", param, n, max);
    *out = malloc(n + 1);
    if (*out == NULL)
        return oai_fail(in, LMSCHED_ENOMEM, NULL, "out of memory");
    memcpy(*out, json_string_value(v), n + 1);
    return LMSCHED_OK;
}

/* v as compact JSON text, at most max bytes. */
static int oai_dump(oai_in *in, const json_t *v, const char *param, size_t max,
                    char **out)
{
    *out = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(17));
    if (*out == NULL)
        return oai_fail(in, LMSCHED_ENOMEM, NULL, "out of memory");
    if (strlen(*out) > max) {
        size_t n = strlen(*out);
        free(*out);
        *out = NULL;
        return oai_fail(in, LMSCHED_ETOOLARGE, param,
                        "%s: %zu bytes of JSON, more than the limit of %zu", param, n,
                        max);
    }
    return LMSCHED_OK;
}

/* An integer in [lo, hi]; null leaves *has false. */
static int oai_int(oai_in *in, const json_t *v, const char *param, int64_t lo, int64_t hi,
                   bool *has, int64_t *out)
{
    *has = false;
    if (json_is_null(v))
        return LMSCHED_OK;
    if (!json_is_integer(v)) {
        /* 5.0 is an integer to JavaScript clients. */
        double d = json_is_real(v) ? json_real_value(v) : 0.5;
        if (!json_is_real(v) || d != floor(d))
            return oai_wrong_type(in, param, "an integer", v);
        /* Checked before the conversion, which is undefined past int64. */
        if (!(d >= (double)lo && d <= (double)hi && fabs(d) < 9e18))
            return oai_fail(in, LMSCHED_EPROTO, param,
                            "%s: %g is out of range %" PRId64 "..%" PRId64, param, d, lo,
                            hi);
        *out = (int64_t)d;
    } else {
        *out = json_integer_value(v);
    }
    if (*out < lo || *out > hi)
        return oai_fail(in, LMSCHED_EPROTO, param,
                        "%s: %" PRId64 " is out of range %" PRId64 "..%" PRId64, param,
                        *out, lo, hi);
    *has = true;
    return LMSCHED_OK;
}

static int oai_num(oai_in *in, const json_t *v, const char *param, double lo, double hi,
                   bool *has, double *out)
{
    *has = false;
    if (json_is_null(v))
        return LMSCHED_OK;
    if (!json_is_number(v))
        return oai_wrong_type(in, param, "a number", v);
    *out = json_number_value(v);
    if (!(*out >= lo && *out <= hi))
        return oai_fail(in, LMSCHED_EPROTO, param, "%s: %g is out of range %g..%g", param,
                        *out, lo, hi);
    *has = true;
    return LMSCHED_OK;
}

/* ---- messages --------------------------------------------------------------- */

static bool oai_is_system(const char *role)
{
    return strcmp(role, "system") == 0 || strcmp(role, "developer") == 0;
}

/* One entry of "messages" into m. */
static int oai_message(oai_in *in, const json_t *o, size_t i, chat_msg *m)
{
    char param[64];
    const char *key;
    json_t *v;
    int rc;
    snprintf(param, sizeof(param), "messages[%zu]", i);
    if (!json_is_object(o))
        return oai_wrong_type(in, param, "an object", o);
    const json_t *role = json_object_get(o, "role");
    snprintf(param, sizeof(param), "messages[%zu].role", i);
    if (role == NULL)
        return oai_fail(in, LMSCHED_EPROTO, param, "%s: missing", param);
    if ((rc = oai_str(in, role, param, in->lim.max_name_bytes, false, &m->role)) != 0)
        return rc;
    if (m->role[0] == '\0')
        return oai_fail(in, LMSCHED_EPROTO, param, "%s: empty", param);
    json_object_foreach((json_t *)o, key, v)
    {
        if (strcmp(key, "content") == 0) {
            snprintf(param, sizeof(param), "messages[%zu].content", i);
            if (json_is_array(v)) {
                rc = oai_dump(in, v, param, in->lim.max_text_bytes, &m->parts_json);
            } else if (json_is_null(v)) {
                rc = LMSCHED_OK;
            } else {
                rc = oai_str(in, v, param, in->lim.max_text_bytes, false, &m->content);
            }
        } else if (strcmp(key, "tool_calls") == 0) {
            snprintf(param, sizeof(param), "messages[%zu].tool_calls", i);
            if (json_is_null(v))
                continue;
            if (!json_is_array(v))
                return oai_wrong_type(in, param, "an array", v);
            rc = oai_dump(in, v, param, in->lim.max_text_bytes, &m->tool_calls_json);
        } else if (strcmp(key, "tool_call_id") == 0) {
            snprintf(param, sizeof(param), "messages[%zu].tool_call_id", i);
            rc = oai_str(in, v, param, in->lim.max_name_bytes, true, &m->tool_call_id);
        } else if (strcmp(key, "name") == 0) {
            snprintf(param, sizeof(param), "messages[%zu].name", i);
            rc = oai_str(in, v, param, in->lim.max_name_bytes, true, &m->name);
        } else {
            /* refusal, audio, ...: nothing a local server renders */
            continue;
        }
        if (rc != LMSCHED_OK)
            return rc;
    }
    if (m->content == NULL && m->parts_json == NULL && m->tool_calls_json == NULL &&
        strcmp(m->role, "assistant") != 0) {
        snprintf(param, sizeof(param), "messages[%zu].content", i);
        return oai_fail(in, LMSCHED_EPROTO, param,
                        "%s: missing (only an assistant message "
                        "may go without content)",
                        param);
    }
    return LMSCHED_OK;
}

static int oai_messages(oai_in *in, const json_t *v)
{
    chat_req *r = in->req;
    if (v == NULL)
        return oai_fail(in, LMSCHED_EPROTO, "messages", "messages: missing");
    if (!json_is_array(v))
        return oai_wrong_type(in, "messages", "an array", v);
    size_t n = json_array_size(v);
    if (n == 0)
        return oai_fail(in, LMSCHED_EPROTO, "messages", "messages: empty");
    if (n > in->lim.max_messages)
        return oai_fail(in, LMSCHED_ETOOLARGE, "messages",
                        "messages: %zu entries, more than the limit of %zu", n,
                        in->lim.max_messages);
    r->messages = calloc(n, sizeof(*r->messages));
    if (r->messages == NULL)
        return oai_fail(in, LMSCHED_ENOMEM, NULL, "out of memory");
    for (size_t i = 0; i < n; i++) {
        int rc = oai_message(in, json_array_get(v, i), i, &r->messages[r->n_messages]);
        r->n_messages++; /* counted even when half built: chat_req_free frees it */
        if (rc != LMSCHED_OK)
            return rc;
    }
    /* The leading system (or developer) message is the shared prefix, as
     * over nng: the group key, sent first and byte for byte. One with parts
     * or a name stays a message, rendered as the client sent it. */
    chat_msg *m0 = &r->messages[0];
    if (oai_is_system(m0->role) && m0->content != NULL && m0->name == NULL &&
        m0->tool_calls_json == NULL) {
        free(r->system);
        r->system = m0->content;
        m0->content = NULL;
        free(m0->role);
        free(m0->tool_call_id);
        memmove(&r->messages[0], &r->messages[1], (r->n_messages - 1) * sizeof(chat_msg));
        r->n_messages--;
    }
    return LMSCHED_OK;
}

/* ---- lmsched's own controls --------------------------------------------------- */

static int oai_controls(oai_in *in, const json_t *o)
{
    const char *key;
    json_t *v;
    int64_t x;
    bool has;
    int rc = LMSCHED_OK;
    if (json_is_null(o))
        return LMSCHED_OK;
    if (!json_is_object(o))
        return oai_wrong_type(in, "lmsched", "an object", o);
    json_object_foreach((json_t *)o, key, v)
    {
        if (strcmp(key, "priority") == 0) {
            rc = oai_int(in, v, "lmsched.priority", 0, 9, &has, &x);
            if (rc == LMSCHED_OK && has) {
                in->priority = (uint8_t)x;
                in->has_priority = true;
            }
        } else if (strcmp(key, "deadline_ms") == 0) {
            rc = oai_int(in, v, "lmsched.deadline_ms", 0, UINT32_MAX, &has, &x);
            if (rc == LMSCHED_OK && has) {
                in->deadline_ms = (uint32_t)x;
                in->has_deadline = true;
            }
        } else if (strcmp(key, "agent") == 0) {
            free(in->agent);
            rc =
                oai_str(in, v, "lmsched.agent", in->lim.max_name_bytes, true, &in->agent);
        } else if (strcmp(key, "session") == 0) {
            free(in->session);
            rc = oai_str(in, v, "lmsched.session", in->lim.max_name_bytes, true,
                         &in->session);
        }
        /* Unknown keys are ignored, as the wire protocol does. */
        if (rc != LMSCHED_OK)
            return rc;
    }
    return LMSCHED_OK;
}

/* A decimal header value in [lo, hi]. */
static int oai_header_num(oai_in *in, const char *name, const char *s, uint64_t hi,
                          uint64_t *out)
{
    char *end;
    if (s[0] < '0' || s[0] > '9')
        goto bad;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    while (*end == ' ' || *end == '\t')
        end++;
    if (errno != 0 || *end != '\0' || v > hi)
        goto bad;
    *out = v;
    return LMSCHED_OK;
bad:
    return oai_fail(in, LMSCHED_EPROTO, name,
                    "header %s: expected a whole number from 0 to "
                    "%" PRIu64 ", got '%.40s'",
                    name, hi, s);
}

/* A header's text: printable ASCII (headers carry no charset), at most
 * the name limit. */
static int oai_header_str(oai_in *in, const char *name, const char *s, char **out)
{
    size_t n = strlen(s);
    if (n > in->lim.max_name_bytes)
        return oai_fail(in, LMSCHED_ETOOLARGE, name,
                        "header %s: %zu bytes, more than the "
                        "limit of %zu",
                        name, n, in->lim.max_name_bytes);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
            return oai_fail(in, LMSCHED_EPROTO, name,
                            "header %s: only printable ASCII is accepted", name);
    if (n == 0)
        return LMSCHED_OK;
    free(*out);
    *out = strdup(s);
    if (*out == NULL)
        return oai_fail(in, LMSCHED_ENOMEM, NULL, "out of memory");
    return LMSCHED_OK;
}

static int oai_headers_apply(oai_in *in, const oai_headers *h)
{
    uint64_t v;
    int rc;
    if (h == NULL)
        return LMSCHED_OK;
    if (h->priority != NULL) {
        if ((rc = oai_header_num(in, "X-Lmsched-Priority", h->priority, 9, &v)) != 0)
            return rc;
        in->priority = (uint8_t)v;
        in->has_priority = true;
    }
    if (h->deadline_ms != NULL) {
        if ((rc = oai_header_num(in, "X-Lmsched-Deadline-Ms", h->deadline_ms, UINT32_MAX,
                                 &v)) != 0)
            return rc;
        in->deadline_ms = (uint32_t)v;
        in->has_deadline = true;
    }
    if (h->agent != NULL &&
        (rc = oai_header_str(in, "X-Lmsched-Agent", h->agent, &in->agent)) != 0)
        return rc;
    if (h->session != NULL &&
        (rc = oai_header_str(in, "X-Session-ID", h->session, &in->session)) != 0)
        return rc;
    return LMSCHED_OK;
}

/* ---- the body ------------------------------------------------------------------ */

/* Keys lmsched reads itself or drops; everything else is passed through. */
static int oai_field(oai_in *in, oai_chat *out, const char *key, json_t *v)
{
    chat_req *r = in->req;
    int64_t x;
    bool has;
    int rc = LMSCHED_OK;
    if (strcmp(key, "messages") == 0) {
        rc = oai_messages(in, v);
    } else if (strcmp(key, "model") == 0) {
        rc = oai_str(in, v, "model", in->lim.max_name_bytes, true, &r->model);
        if (rc == LMSCHED_OK && r->model != NULL && r->model[0] == '\0') {
            free(r->model);
            r->model = NULL; /* "": whatever the server has loaded */
        }
    } else if (strcmp(key, "max_tokens") == 0 ||
               strcmp(key, "max_completion_tokens") == 0) {
        rc = oai_int(in, v, key, 1, LMSCHED_MAX_TOKENS_MAX, &has, &x);
        /* max_completion_tokens is the newer name; it wins over max_tokens. */
        if (rc == LMSCHED_OK && has &&
            (r->max_tokens < 0 || strcmp(key, "max_completion_tokens") == 0))
            r->max_tokens = (int32_t)x;
    } else if (strcmp(key, "temperature") == 0) {
        rc = oai_num(in, v, "temperature", 0, 10, &r->has_temperature, &r->temperature);
    } else if (strcmp(key, "top_p") == 0) {
        rc = oai_num(in, v, "top_p", 0, 1, &r->has_top_p, &r->top_p);
    } else if (strcmp(key, "seed") == 0) {
        rc = oai_int(in, v, "seed", INT64_MIN, INT64_MAX, &r->has_seed, &x);
        if (rc == LMSCHED_OK && r->has_seed)
            r->seed = x;
    } else if (strcmp(key, "stop") == 0) {
        if (json_is_null(v))
            return LMSCHED_OK;
        size_t n = json_is_string(v) ? 1 : json_is_array(v) ? json_array_size(v) : 0;
        if (!json_is_string(v) && !json_is_array(v))
            return oai_wrong_type(in, "stop", "a string or an array of strings", v);
        if (n > in->lim.max_stop)
            return oai_fail(in, LMSCHED_ETOOLARGE, "stop",
                            "stop: %zu entries, more than "
                            "the limit of %zu",
                            n, in->lim.max_stop);
        if (n == 0)
            return LMSCHED_OK;
        r->stop = calloc(n, sizeof(*r->stop));
        if (r->stop == NULL)
            return oai_fail(in, LMSCHED_ENOMEM, NULL, "out of memory");
        for (size_t i = 0; i < n; i++) {
            char param[32];
            snprintf(param, sizeof(param), "stop[%zu]", i);
            const json_t *s = json_is_string(v) ? v : json_array_get(v, i);
            rc = oai_str(in, s, param, in->lim.max_name_bytes, false, &r->stop[i]);
            if (rc != LMSCHED_OK)
                return rc;
            r->n_stop++;
        }
    } else if (strcmp(key, "n") == 0) {
        rc = oai_int(in, v, "n", 1, INT32_MAX, &has, &x);
        if (rc == LMSCHED_OK && has && x != 1)
            rc = oai_fail(in, LMSCHED_EPROTO, "n",
                          "n: %" PRId64 " choices asked for, but only n=1 is supported: "
                          "LM Studio and llama.cpp generate one choice per request; send "
                          "%" PRId64 " requests instead (lmsched runs them side by side)",
                          x, x);
    } else if (strcmp(key, "stream") == 0) {
        if (!json_is_boolean(v) && !json_is_null(v))
            return oai_wrong_type(in, "stream", "a boolean", v);
        out->stream = json_is_true(v);
    } else if (strcmp(key, "stream_options") == 0) {
        if (json_is_null(v))
            return LMSCHED_OK;
        if (!json_is_object(v))
            return oai_wrong_type(in, "stream_options", "an object", v);
        const json_t *u = json_object_get(v, "include_usage");
        if (u != NULL && !json_is_boolean(u) && !json_is_null(u))
            return oai_wrong_type(in, "stream_options.include_usage", "a boolean", u);
        out->include_usage = json_is_true(u);
    } else if (strcmp(key, "tools") == 0) {
        if (json_is_null(v))
            return LMSCHED_OK;
        if (!json_is_array(v))
            return oai_wrong_type(in, "tools", "an array", v);
        rc = oai_dump(in, v, "tools", in->lim.max_text_bytes, &r->tools_json);
    } else if (strcmp(key, "tool_choice") == 0) {
        if (json_is_null(v))
            return LMSCHED_OK;
        if (!json_is_string(v) && !json_is_object(v))
            return oai_wrong_type(in, "tool_choice", "a string or an object", v);
        rc = oai_dump(in, v, "tool_choice", in->lim.max_text_bytes, &r->tool_choice_json);
    } else if (strcmp(key, "response_format") == 0) {
        if (json_is_null(v))
            return LMSCHED_OK;
        if (!json_is_object(v))
            return oai_wrong_type(in, "response_format", "an object", v);
        rc = oai_dump(in, v, "response_format", in->lim.max_text_bytes,
                      &r->response_format_json);
    } else if (strcmp(key, "parallel_tool_calls") == 0) {
        if (json_is_null(v))
            return LMSCHED_OK;
        if (!json_is_boolean(v))
            return oai_wrong_type(in, "parallel_tool_calls", "a boolean", v);
        r->parallel_tool_calls = json_is_true(v) ? 1 : 0;
    } else if (strcmp(key, "user") == 0) {
        free(in->user);
        rc = oai_str(in, v, "user", in->lim.max_name_bytes, true, &in->user);
    } else if (strcmp(key, "prompt_cache_key") == 0) {
        free(in->cache_key);
        rc = oai_str(in, v, "prompt_cache_key", in->lim.max_name_bytes, true,
                     &in->cache_key);
    } else if (strcmp(key, "lmsched") == 0) {
        rc = oai_controls(in, v);
    } else if (strcmp(key, "id_slot") == 0 || strcmp(key, "cache_prompt") == 0) {
        /* lmsched places requests on slots and keeps the prompt cache on
         * itself; a llama.cpp client's own settings would defeat it. */
    } else {
        if (in->extra == NULL && (in->extra = json_object()) == NULL)
            return oai_fail(in, LMSCHED_ENOMEM, NULL, "out of memory");
        if (json_object_set(in->extra, key, v) != 0)
            return oai_fail(in, LMSCHED_ENOMEM, NULL, "out of memory");
    }
    return rc;
}

/* Moves the controls into the request: headers over the body's "lmsched"
 * object; the session from X-Session-ID, lmsched.session, prompt_cache_key
 * or user, in that order. */
static void oai_controls_apply(oai_in *in)
{
    chat_req *r = in->req;
    if (in->has_priority)
        r->priority = in->priority;
    if (in->has_deadline)
        r->deadline_ms = in->deadline_ms;
    r->agent = in->agent;
    in->agent = NULL;
    char **from[] = {&in->session, &in->cache_key, &in->user};
    for (size_t i = 0; i < sizeof(from) / sizeof(from[0]); i++) {
        if (*from[i] != NULL && (*from[i])[0] != '\0') {
            r->session = *from[i];
            *from[i] = NULL;
            break;
        }
    }
}

int oai_parse_chat(const char *body, size_t len, const oai_headers *h, oai_chat *out,
                   oai_err *err)
{
    oai_in in;
    oai_chat res = {0};
    json_error_t jerr;
    const char *key;
    json_t *v;
    json_t *root = NULL;
    int rc;

    memset(&in, 0, sizeof(in));
    memset(err, 0, sizeof(*err));
    lms_limits_default(&in.lim);
    in.err = err;
    if ((rc = chat_req_alloc(&in.req)) != LMSCHED_OK) {
        rc = oai_fail(&in, LMSCHED_ENOMEM, NULL, "out of memory");
        goto out;
    }
    root = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (root == NULL) {
        /* jansson's text names the problem, never the body. */
        rc = oai_fail(&in, LMSCHED_EPROTO, NULL,
                      "the request body is not valid JSON: %.120s (line %d, column %d)",
                      jerr.text, jerr.line, jerr.column);
        goto out;
    }
    if (!json_is_object(root)) {
        rc = oai_fail(&in, LMSCHED_EPROTO, NULL,
                      "the request body must be a JSON object, "
                      "not %s",
                      oai_type_name(root));
        goto out;
    }
    if (json_object_get(root, "messages") == NULL) {
        rc = oai_fail(&in, LMSCHED_EPROTO, "messages", "messages: missing");
        goto out;
    }
    json_object_foreach(root, key, v)
    {
        if ((rc = oai_field(&in, &res, key, v)) != LMSCHED_OK)
            goto out;
    }
    if ((rc = oai_headers_apply(&in, h)) != LMSCHED_OK)
        goto out;
    if (in.extra != NULL && json_object_size(in.extra) > 0) {
        rc = oai_dump(&in, in.extra, "(fields passed through)", in.lim.max_text_bytes,
                      &in.req->extra_json);
        if (rc != LMSCHED_OK)
            goto out;
    }
    oai_controls_apply(&in);
    in.req->stream = res.stream;
    res.req = in.req;
    in.req = NULL;
    *out = res;
    rc = LMSCHED_OK;
out:
    json_decref(root);
    json_decref(in.extra);
    chat_req_free(in.req);
    free(in.agent);
    free(in.session);
    free(in.cache_key);
    free(in.user);
    return rc;
}

/* ---- answers ------------------------------------------------------------------- */

static json_t *oai_usage(const chat_result *r)
{
    int64_t p = r->usage.prompt_tokens > 0 ? r->usage.prompt_tokens : 0;
    int64_t c = r->usage.completion_tokens > 0 ? r->usage.completion_tokens : 0;
    int64_t k = r->usage.cached_tokens > 0 ? r->usage.cached_tokens : 0;
    return json_pack("{s:I,s:I,s:I,s:{s:I}}", "prompt_tokens", (json_int_t)p,
                     "completion_tokens", (json_int_t)c, "total_tokens",
                     (json_int_t)(p + c), "prompt_tokens_details", "cached_tokens",
                     (json_int_t)k);
}

static json_t *oai_logprobs(const chat_result *r)
{
    json_t *lp = r->logprobs_json != NULL ? json_loads(r->logprobs_json, 0, NULL) : NULL;
    if (lp == NULL)
        return json_null();
    return json_pack("{s:o}", "content", lp);
}

static json_t *oai_tool_calls(const chat_result *r)
{
    json_t *a = json_array();
    for (size_t i = 0; a != NULL && i < r->n_tool_calls; i++) {
        const chat_tool_call *t = &r->tool_calls[i];
        json_array_append_new(a, json_pack("{s:s,s:s,s:{s:s,s:s}}", "id", t->id, "type",
                                           t->type, "function", "name", t->name,
                                           "arguments", t->arguments));
    }
    return a;
}

static const char *oai_model(const oai_reply *c, const chat_result *r)
{
    return r != NULL && r->model != NULL ? r->model : c->model;
}

static char *oai_dumps(json_t *doc, size_t *len)
{
    char *s =
        doc != NULL ? json_dumps(doc, JSON_COMPACT | JSON_REAL_PRECISION(10)) : NULL;
    json_decref(doc);
    if (s != NULL && len != NULL)
        *len = strlen(s);
    return s;
}

char *oai_completion(const oai_reply *c, const chat_result *r, size_t *len)
{
    json_t *msg = json_object();
    if (msg == NULL)
        return NULL;
    json_object_set_new(msg, "role", json_string("assistant"));
    /* OpenAI's shape: null content beside tool calls when nothing was said. */
    json_object_set_new(msg, "content",
                        r->content_len == 0 && r->n_tool_calls > 0
                            ? json_null()
                            : json_stringn(r->content, r->content_len));
    if (r->reasoning != NULL)
        json_object_set_new(msg, "reasoning_content", json_string(r->reasoning));
    if (r->n_tool_calls > 0)
        json_object_set_new(msg, "tool_calls", oai_tool_calls(r));
    json_t *timings = json_pack("{s:f,s:f,s:f,s:i}", "queue_ms", r->timings.queue_ms,
                                "ttft_ms", r->timings.ttft_ms, "total_ms",
                                r->timings.total_ms, "retries", (int)r->retries);
    json_t *doc = json_pack(
        "{s:s,s:s,s:I,s:s,s:[{s:i,s:o,s:o,s:s}],s:o,s:o}", "id", c->id, "object",
        "chat.completion", "created", (json_int_t)c->created, "model", oai_model(c, r),
        "choices", "index", 0, "message", msg, "logprobs", oai_logprobs(r),
        "finish_reason", r->finish_reason, "usage", oai_usage(r), "lmsched", timings);
    return oai_dumps(doc, len);
}

/* Appends "data: <doc>\n\n" (doc taken). */
static int oai_event(strbuf *b, json_t *doc)
{
    size_t n = 0;
    char *s = oai_dumps(doc, &n);
    if (s == NULL)
        return -1;
    int rc = strbuf_append(b, "data: ", 6, SIZE_MAX / 2) != 0 ||
                     strbuf_append(b, s, n, SIZE_MAX / 2) != 0 ||
                     strbuf_append(b, "\n\n", 2, SIZE_MAX / 2) != 0
                 ? -1
                 : 0;
    free(s);
    return rc;
}

/* ---- the stream ---------------------------------------------------------------
 *
 * Chunks are written by hand, not built with jansson: a stream is dozens to
 * thousands of them on the loop thread, each the same frame around one
 * piece. Only the piece's text needs escaping.
 */

#define OAI_MAX_OUT (SIZE_MAX / 2)

static int oai_put(strbuf *b, const char *s, size_t n)
{
    return strbuf_append(b, s, n, OAI_MAX_OUT) == 0 ? 0 : -1;
}

static int oai_puts(strbuf *b, const char *s)
{
    return oai_put(b, s, strlen(s));
}

/* The length of the UTF-8 sequence at s[0..n), 0 when it is not one (a
 * stray byte, an overlong form, a surrogate, past U+10FFFF, cut short). */
static size_t oai_utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t k;
    uint32_t cp;
    if (c < 0xc2 || c > 0xf4)
        return 0;
    k = c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
    if (n < k)
        return 0;
    cp = c & (k == 2 ? 0x1f : k == 3 ? 0x0f : 0x07);
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if ((k == 3 && cp < 0x800) || (k == 4 && cp < 0x10000) || cp > 0x10ffff ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return k;
}

/* s[0..n) as a quoted JSON string: what JSON requires escaped is, and bytes
 * that are not UTF-8 become U+FFFD (a piece is text the backend sent as
 * JSON, so this does not happen unless it cut a character). */
static int oai_put_jstr(strbuf *b, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, run = 0;
    if (oai_put(b, "\"", 1) != 0)
        return -1;
    while (i < n) {
        unsigned char c = u[i];
        if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80) {
            i++;
            continue;
        }
        size_t k = c >= 0x80 ? oai_utf8_len(u + i, n - i) : 0;
        if (k > 0) {
            i += k;
            continue;
        }
        /* Flush the plain run, then the escape. */
        if (oai_put(b, s + run, i - run) != 0)
            return -1;
        char esc[8];
        const char *e = esc;
        if (c == '"')
            e = "\\\"";
        else if (c == '\\')
            e = "\\\\";
        else if (c == '\n')
            e = "\\n";
        else if (c == '\r')
            e = "\\r";
        else if (c == '\t')
            e = "\\t";
        else if (c < 0x20)
            snprintf(esc, sizeof(esc), "\\u%04x", c);
        else
            e = "\\ufffd";
        if (oai_puts(b, e) != 0)
            return -1;
        i++;
        run = i;
    }
    if (oai_put(b, s + run, n - run) != 0)
        return -1;
    return oai_put(b, "\"", 1);
}

/* `data: {"id":...,"model":...,"choices":` */
static int oai_chunk_open(strbuf *b, const oai_reply *c, const chat_result *r)
{
    char head[160];
    const char *model = oai_model(c, r);
    snprintf(
        head, sizeof(head),
        "data: {\"id\":\"%s\",\"object\":\"chat.completion.chunk\",\"created\":%" PRId64
        ",\"model\":",
        c->id, c->created);
    if (oai_puts(b, head) != 0 || oai_put_jstr(b, model, strlen(model)) != 0)
        return -1;
    return oai_puts(b, ",\"choices\":");
}

/* A chunk with one choice: its delta's members (JSON text between the
 * braces), finish_reason (NULL: null) and logprobs' content (NULL: null). */
static int oai_chunk(strbuf *b, const oai_reply *c, const char *delta, const char *finish,
                     const char *logprobs, const chat_result *r)
{
    if (oai_chunk_open(b, c, r) != 0 || oai_puts(b, "[{\"index\":0,\"delta\":{") != 0 ||
        oai_puts(b, delta) != 0 || oai_puts(b, "},\"logprobs\":") != 0)
        return -1;
    if (logprobs != NULL) {
        if (oai_puts(b, "{\"content\":") != 0 || oai_puts(b, logprobs) != 0 ||
            oai_puts(b, "}") != 0)
            return -1;
    } else if (oai_puts(b, "null") != 0) {
        return -1;
    }
    if (oai_puts(b, ",\"finish_reason\":") != 0)
        return -1;
    if (finish != NULL ? oai_put_jstr(b, finish, strlen(finish)) : oai_puts(b, "null"))
        return -1;
    return oai_puts(b, "}]}\n\n");
}

static int oai_start(strbuf *b, oai_reply *c)
{
    if (c->started)
        return 0;
    c->started = true;
    return oai_chunk(b, c, "\"role\":\"assistant\",\"content\":\"\"", NULL, NULL, NULL);
}

/* The delta's members of one piece into d (cleared first). */
static int oai_delta(strbuf *d, const chat_delta *p)
{
    const char *text = p->text != NULL ? p->text : "";
    size_t len = p->text != NULL ? p->len : 0;
    strbuf_clear(d);
    if (p->kind == CHAT_DELTA_CONTENT || p->kind == CHAT_DELTA_REASONING)
        return oai_puts(d, p->kind == CHAT_DELTA_CONTENT ? "\"content\":"
                                                         : "\"reasoning_content\":") ||
                       oai_put_jstr(d, text, len)
                   ? -1
                   : 0;
    char idx[48];
    snprintf(idx, sizeof(idx), "\"tool_calls\":[{\"index\":%u,", p->index);
    if (oai_puts(d, idx) != 0)
        return -1;
    if (p->id != NULL || p->name != NULL) {
        /* The call's first piece: its id, type and name. */
        const char *id = p->id != NULL ? p->id : "",
                   *name = p->name != NULL ? p->name : "";
        if (oai_puts(d, "\"id\":") || oai_put_jstr(d, id, strlen(id)) ||
            oai_puts(d, ",\"type\":\"function\",\"function\":{\"name\":") ||
            oai_put_jstr(d, name, strlen(name)) || oai_puts(d, ","))
            return -1;
    } else if (oai_puts(d, "\"function\":{") != 0) {
        return -1;
    }
    if (oai_puts(d, "\"arguments\":") || oai_put_jstr(d, text, len) || oai_puts(d, "}}]"))
        return -1;
    return 0;
}

int oai_stream_pieces(strbuf *b, oai_reply *c, const chat_delta *d, size_t n)
{
    strbuf delta;
    int rc = 0;
    if (n > 0 && oai_start(b, c) != 0)
        return -1;
    strbuf_init(&delta);
    for (size_t i = 0; i < n && rc == 0; i++) {
        rc = oai_delta(&delta, &d[i]) != 0 ||
                     oai_chunk(b, c, strbuf_str(&delta), NULL, NULL, NULL) != 0
                 ? -1
                 : 0;
        c->pieces = true;
    }
    strbuf_fini(&delta);
    return rc;
}

int oai_stream_end(strbuf *b, oai_reply *c, const chat_result *r)
{
    if (oai_start(b, c) != 0)
        return -1;
    if (!c->pieces) {
        /* Nothing was streamed (the backend answered whole): the answer
         * goes out as pieces now, so the client sees the same shape. */
        if (r->reasoning != NULL) {
            chat_delta d = {.kind = CHAT_DELTA_REASONING,
                            .text = r->reasoning,
                            .len = strlen(r->reasoning)};
            if (oai_stream_pieces(b, c, &d, 1) != 0)
                return -1;
        }
        if (r->content_len > 0) {
            chat_delta d = {
                .kind = CHAT_DELTA_CONTENT, .text = r->content, .len = r->content_len};
            if (oai_stream_pieces(b, c, &d, 1) != 0)
                return -1;
        }
        for (size_t i = 0; i < r->n_tool_calls; i++) {
            const chat_tool_call *t = &r->tool_calls[i];
            chat_delta d = {.kind = CHAT_DELTA_TOOL_CALL,
                            .text = t->arguments,
                            .len = strlen(t->arguments),
                            .index = (uint32_t)i,
                            .id = t->id,
                            .name = t->name};
            if (oai_stream_pieces(b, c, &d, 1) != 0)
                return -1;
        }
    }
    if (oai_chunk(b, c, "", r->finish_reason, r->logprobs_json, r) != 0)
        return -1;
    if (c->include_usage) {
        int64_t p = r->usage.prompt_tokens > 0 ? r->usage.prompt_tokens : 0;
        int64_t k = r->usage.completion_tokens > 0 ? r->usage.completion_tokens : 0;
        int64_t h = r->usage.cached_tokens > 0 ? r->usage.cached_tokens : 0;
        char u[256];
        snprintf(u, sizeof(u),
                 "[],\"usage\":{\"prompt_tokens\":%" PRId64
                 ",\"completion_tokens\":%" PRId64 ",\"total_tokens\":%" PRId64
                 ",\"prompt_tokens_details\":{\"cached_tokens\":%" PRId64 "}}}\n\n",
                 p, k, p + k, h);
        if (oai_chunk_open(b, c, r) != 0 || oai_puts(b, u) != 0)
            return -1;
    }
    return oai_puts(b, "data: [DONE]\n\n");
}

/* ---- errors ---------------------------------------------------------------------- */

/* The status the backend answered with, when msg says "backend HTTP N". */
static long oai_backend_status(const char *msg)
{
    const char *p = msg != NULL ? strstr(msg, "backend HTTP ") : NULL;
    return p != NULL ? strtol(p + 13, NULL, 10) : 0;
}

static bool oai_context_overflow(int code, const char *msg, const char *field)
{
    if (code == LMSCHED_ETOOLARGE && field != NULL && strcmp(field, "messages") == 0)
        return true;
    return code == LMSCHED_EBACKEND_HTTP && msg != NULL &&
           (strstr(msg, "exceed") != NULL && strstr(msg, "context") != NULL);
}

int oai_status_of(int code, const char *msg)
{
    long st;
    switch (code) {
    case LMSCHED_ETOOLARGE:
        /* The backend's answer over a limit is the backend's failure; a
         * request over one is the client's. */
        return msg != NULL && (strstr(msg, "backend response") != NULL ||
                               strstr(msg, "the backend's answer") != NULL)
                   ? 502
                   : 400;
    case LMSCHED_EPROTO:
    case LMSCHED_EINVAL:
        return 400;
    case LMSCHED_EBUSY:
        return 429;
    case LMSCHED_EDEADLINE:
    case LMSCHED_EBACKEND_TIMEOUT:
        return 504;
    case LMSCHED_ESHUTDOWN:
    case LMSCHED_EBACKEND_DOWN:
        return 503;
    case LMSCHED_EBACKEND_HTTP:
        /* The server refused the request itself (a bad field, a prompt over
         * its context): the client's to fix, with the server's status.
         * Anything else is the server's failure. */
        st = oai_backend_status(msg);
        return st >= 400 && st < 500 && st != 408 && st != 429 ? (int)st : 502;
    case LMSCHED_EBACKEND_CRASH:
    case LMSCHED_EBACKEND_STREAM:
    case LMSCHED_EAUTH: /* the server refused lmsched's own token */
        return 502;
    default:
        return 500;
    }
}

static const char *oai_type_of(int status)
{
    switch (status) {
    case 401:
        return "authentication_error";
    case 403:
        return "permission_error";
    case 404:
        return "not_found_error";
    case 429:
        return "rate_limit_error";
    default:
        return status < 500 ? "invalid_request_error" : "server_error";
    }
}

static json_t *oai_error_obj(int status, int code, const char *msg, const char *field)
{
    const char *name = oai_context_overflow(code, msg, field) ? "context_length_exceeded"
                                                              : lmsched_err_name(code);
    return json_pack("{s:{s:s,s:s,s:s,s:o}}", "error", "message", msg != NULL ? msg : "",
                     "type", oai_type_of(status), "code", name, "param",
                     field != NULL && field[0] != '\0' ? json_string(field)
                                                       : json_null());
}

char *oai_error_body(int status, int code, const char *msg, const char *field,
                     size_t *len)
{
    return oai_dumps(oai_error_obj(status, code, msg, field), len);
}

int oai_stream_error(strbuf *b, int code, const char *msg, const char *field)
{
    return oai_event(b, oai_error_obj(oai_status_of(code, msg), code, msg, field));
}
