/*
 * request.c - lmsched_request (a chat request built with typed setters) and
 * lmsched_result (the outcome of one call: a reply or an error). The agent
 * library's one user of jansson: it checks the JSON fields a caller gives
 * (tools, tool_choice, response_format, extra, message parts and tool
 * calls) and builds the tool calls' JSON of a result.
 *
 * A request holds the lms_chat_req it will be encoded as, so sending one is
 * a single lms_encode with no copying. Setters check what the protocol
 * defines (docs/protocol.md): ranges, and for a JSON field that it is JSON
 * of the right shape (an array of tools, an object for response_format,
 * ...), and reject a mistake with LMSCHED_EINVAL here, where it is easiest
 * to find; lmsched_request_last_error says what was wrong. What the LLM
 * server makes of the contents (a tool's schema, a json_schema) is the
 * server's to judge, and comes back as its error. Size limits are left to
 * the daemon, whose limits are configurable and whose error reply names the
 * field; only the whole message size is checked before sending.
 */
#include "agentlib/request.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#define REQ_PRIORITY_MAX 9
#define REQ_TEMPERATURE_MAX 10.0
#define REQ_ERR_MAX 256

/* How JSON values are written back as text: keys in the caller's order,
 * doubles exactly (the wire keeps every bit, see proto/json.h). */
#define REQ_JSON_FLAGS (JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17))
/* How the caller's JSON is read: a scalar is accepted where it may stand
 * (tool_choice, a value of extra), and a key twice is refused, as the wire
 * refuses it. jansson refuses "\u0000" and invalid UTF-8 by itself. */
#define REQ_JSON_LOAD (JSON_DECODE_ANY | JSON_REJECT_DUPLICATES)

struct lmsched_request {
    lms_chat_req chat;
    size_t cap_messages;
    size_t cap_stop;
    char err[REQ_ERR_MAX]; /* why the last setter failed, or "" */
};

struct lmsched_result {
    int err;
    char *message; /* errors only */
    char *field;   /* errors only: the field the daemon named, or NULL */
    char *content; /* replies only */
    char *finish_reason;
    char *model;
    char *reasoning;
    lms_tool_call *tool_calls;
    size_t n_tool_calls;
    char *tool_calls_json; /* the calls as OpenAI's array, or NULL */
    char *logprobs_json;
    char *status; /* status documents only (lmsched_status) */
    lms_usage usage;
    lms_timings timings;
    uint32_t retries;
};

/* ---- requests ---------------------------------------------------------- */

/* Records why a setter failed and returns rc. */
static int req_fail(lmsched_request *req, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int req_fail(lmsched_request *req, int rc, const char *fmt, ...)
{
    va_list ap;

    if (req != NULL) {
        va_start(ap, fmt);
        vsnprintf(req->err, sizeof(req->err), fmt, ap);
        va_end(ap);
    }
    return rc;
}

/* A setter's return: clears the message on success, sets a generic one
 * for ENOMEM. */
static int req_done(lmsched_request *req, int rc)
{
    if (rc == LMSCHED_OK) {
        req->err[0] = '\0';
    } else if (rc == LMSCHED_ENOMEM) {
        snprintf(req->err, sizeof(req->err), "out of memory");
    }
    return rc;
}

int lmsched_request_alloc(lmsched_request **reqp)
{
    lmsched_request *req;
    lms_msg m;

    if (reqp == NULL) {
        return LMSCHED_EINVAL;
    }
    *reqp = NULL;
    if ((req = calloc(1, sizeof(*req))) == NULL) {
        return LMSCHED_ENOMEM;
    }
    /* Take the protocol's defaults (max_tokens -1, priority 5) from the one
     * place that defines them. */
    lms_msg_init(&m, LMS_KIND_CHAT);
    req->chat = m.u.chat;
    req->chat.parallel_tool_calls = -1;
    *reqp = req;
    return LMSCHED_OK;
}

void lmsched_request_free(lmsched_request *req)
{
    lms_msg m;

    if (req == NULL) {
        return;
    }
    lms_msg_init(&m, LMS_KIND_CHAT);
    m.u.chat = req->chat;
    lms_msg_fini(&m);
    free(req);
}

const lms_chat_req *lma_request_chat(const lmsched_request *req)
{
    return &req->chat;
}

const char *lmsched_request_last_error(const lmsched_request *req)
{
    return req != NULL ? req->err : "the request is NULL";
}

/* Replaces *slot with a copy of text. */
static int req_set_string(char **slot, const char *text)
{
    char *copy;

    if (text == NULL) {
        return LMSCHED_EINVAL;
    }
    if ((copy = strdup(text)) == NULL) {
        return LMSCHED_ENOMEM;
    }
    free(*slot);
    *slot = copy;
    return LMSCHED_OK;
}

/* Replaces *slot with text taken over (NULL clears it). */
static void req_take_string(char **slot, char *text)
{
    free(*slot);
    *slot = text;
}

/* Makes room for one more element in an array of size elements of cap;
 * doubles so that appending n elements costs O(n). */
static int req_grow(void **arr, size_t *cap, size_t n, size_t elem)
{
    size_t ncap;
    void *p;

    if (n < *cap) {
        return LMSCHED_OK;
    }
    ncap = *cap == 0 ? 4 : *cap * 2;
    if (ncap < *cap || ncap > SIZE_MAX / elem) {
        return LMSCHED_ENOMEM;
    }
    if ((p = realloc(*arr, ncap * elem)) == NULL) {
        return LMSCHED_ENOMEM;
    }
    *arr = p;
    *cap = ncap;
    return LMSCHED_OK;
}

static void req_msg_fini(lms_chat_msg *msg)
{
    free(msg->role);
    free(msg->content);
    free(msg->parts_json);
    free(msg->tool_calls_json);
    free(msg->tool_call_id);
    free(msg->name);
    memset(msg, 0, sizeof(*msg));
}

/* Appends msg, taking its strings; on failure frees them. */
static int req_push_msg(lmsched_request *req, lms_chat_msg *msg)
{
    void *arr = req->chat.messages;
    int rc =
        req_grow(&arr, &req->cap_messages, req->chat.n_messages, sizeof(lms_chat_msg));

    req->chat.messages = arr;
    if (rc != LMSCHED_OK) {
        req_msg_fini(msg);
        return rc;
    }
    req->chat.messages[req->chat.n_messages++] = *msg;
    memset(msg, 0, sizeof(*msg));
    return LMSCHED_OK;
}

/* strdup of s, NULL for NULL; sets *rc to ENOMEM on failure. */
static char *req_dup(const char *s, int *rc)
{
    char *copy;

    if (s == NULL) {
        return NULL;
    }
    if ((copy = strdup(s)) == NULL) {
        *rc = LMSCHED_ENOMEM;
    }
    return copy;
}

/* ---- JSON fields ----------------------------------------------------------- */

/* Parses the caller's JSON text for the field what. Returns the value, or
 * NULL with the reason recorded. */
static json_t *req_json_load(lmsched_request *req, const char *what, const char *text)
{
    json_error_t jerr;
    json_t *v = json_loads(text, REQ_JSON_LOAD, &jerr);

    if (v == NULL) {
        req_fail(req, LMSCHED_EINVAL, "%s: not valid JSON (line %d, column %d): %s", what,
                 jerr.line, jerr.column, jerr.text);
    }
    return v;
}

static const char *req_json_type(const json_t *v)
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
    return "a value";
}

/* The compact text of v (malloc'd), or NULL when out of memory. */
static char *req_json_dump(const json_t *v)
{
    return json_dumps(v, REQ_JSON_FLAGS | JSON_ENCODE_ANY);
}

/* A member that must be a string when present (null counts as absent). */
static bool req_opt_string(const json_t *obj, const char *key)
{
    const json_t *v = json_object_get(obj, key);
    return v == NULL || json_is_null(v) || json_is_string(v);
}

/* Checks an array of tool definitions (OpenAI's shape). Returns 0, or -1
 * with the reason recorded. Only the shape: the server judges the rest. */
static int req_check_tools(lmsched_request *req, const json_t *tools)
{
    size_t i;
    json_t *t;

    if (!json_is_array(tools)) {
        return req_fail(req, -1,
                        "tools: expected a JSON array of tool definitions, got %s",
                        req_json_type(tools));
    }
    json_array_foreach(tools, i, t)
    {
        const json_t *type = json_object_get(t, "type");
        const json_t *fn = json_object_get(t, "function");
        const json_t *params = json_object_get(fn, "parameters");
        if (!json_is_object(t)) {
            return req_fail(req, -1, "tools[%zu]: expected an object, got %s", i,
                            req_json_type(t));
        }
        if (!json_is_string(type)) {
            return req_fail(req, -1, "tools[%zu].type: missing or not a string", i);
        }
        if (strcmp(json_string_value(type), "function") != 0) {
            continue; /* another kind of tool: the server's to judge */
        }
        if (!json_is_object(fn)) {
            return req_fail(req, -1, "tools[%zu].function: missing or not an object", i);
        }
        if (!json_is_string(json_object_get(fn, "name")) ||
            json_string_length(json_object_get(fn, "name")) == 0) {
            return req_fail(req, -1, "tools[%zu].function.name: missing or not a string",
                            i);
        }
        if (!req_opt_string(fn, "description")) {
            return req_fail(req, -1, "tools[%zu].function.description: not a string", i);
        }
        if (params != NULL && !json_is_null(params) && !json_is_object(params)) {
            return req_fail(req, -1,
                            "tools[%zu].function.parameters: expected an object (a JSON "
                            "schema), got %s",
                            i, req_json_type(params));
        }
    }
    return 0;
}

/* Checks an assistant message's tool_calls (OpenAI's shape); where names
 * the message. Returns 0, or -1 with the reason recorded. */
static int req_check_calls(lmsched_request *req, const char *where, const json_t *calls)
{
    size_t i;
    json_t *tc;

    if (!json_is_array(calls)) {
        return req_fail(req, -1, "%s: expected a JSON array of tool calls, got %s", where,
                        req_json_type(calls));
    }
    json_array_foreach(calls, i, tc)
    {
        const json_t *type = json_object_get(tc, "type");
        const json_t *fn = json_object_get(tc, "function");
        if (!json_is_object(tc)) {
            return req_fail(req, -1, "%s[%zu]: expected an object, got %s", where, i,
                            req_json_type(tc));
        }
        if (!req_opt_string(tc, "id")) {
            return req_fail(req, -1, "%s[%zu].id: not a string", where, i);
        }
        if (type != NULL &&
            (!json_is_string(type) || strcmp(json_string_value(type), "function") != 0)) {
            return req_fail(req, -1, "%s[%zu].type: must be \"function\"", where, i);
        }
        if (!json_is_object(fn)) {
            return req_fail(req, -1, "%s[%zu].function: missing or not an object", where,
                            i);
        }
        if (!json_is_string(json_object_get(fn, "name"))) {
            return req_fail(req, -1, "%s[%zu].function.name: missing or not a string",
                            where, i);
        }
        if (!json_is_string(json_object_get(fn, "arguments"))) {
            return req_fail(req, -1,
                            "%s[%zu].function.arguments: missing or not a string (the "
                            "arguments are JSON text, as the model wrote them)",
                            where, i);
        }
    }
    return 0;
}

/* Checks a content array of parts (text, image_url). Returns 0 or -1. */
static int req_check_parts(lmsched_request *req, const char *where, const json_t *parts)
{
    size_t i;
    json_t *p;

    if (!json_is_array(parts)) {
        return req_fail(req, -1, "%s: expected a JSON array of content parts, got %s",
                        where, req_json_type(parts));
    }
    json_array_foreach(parts, i, p)
    {
        const json_t *type = json_object_get(p, "type");
        if (!json_is_object(p) || !json_is_string(type)) {
            return req_fail(req, -1, "%s[%zu]: expected an object with a \"type\" string",
                            where, i);
        }
        if (strcmp(json_string_value(type), "text") == 0 &&
            !json_is_string(json_object_get(p, "text"))) {
            return req_fail(req, -1, "%s[%zu].text: missing or not a string", where, i);
        }
        if (strcmp(json_string_value(type), "image_url") == 0 &&
            !json_is_string(json_object_get(json_object_get(p, "image_url"), "url"))) {
            return req_fail(req, -1, "%s[%zu].image_url.url: missing or not a string",
                            where, i);
        }
    }
    return 0;
}

/*
 * Sets a JSON field from the caller's text: NULL clears it; otherwise the
 * text must parse and pass check (NULL: any value). The value is kept as
 * the caller wrote it (the encoder packs it from the text).
 */
static int req_set_json(lmsched_request *req, const char *what, char **slot,
                        const char *text, int (*check)(lmsched_request *, const json_t *))
{
    json_t *v;
    char *copy;

    if (text == NULL) {
        req_take_string(slot, NULL);
        return req_done(req, LMSCHED_OK);
    }
    if ((v = req_json_load(req, what, text)) == NULL) {
        return LMSCHED_EINVAL;
    }
    if (check != NULL && check(req, v) != 0) {
        json_decref(v);
        return LMSCHED_EINVAL;
    }
    json_decref(v);
    if ((copy = strdup(text)) == NULL) {
        return req_done(req, LMSCHED_ENOMEM);
    }
    req_take_string(slot, copy);
    return req_done(req, LMSCHED_OK);
}

int lmsched_request_set_tools(lmsched_request *req, const char *json)
{
    if (req == NULL) {
        return LMSCHED_EINVAL;
    }
    return req_set_json(req, "tools", &req->chat.tools_json, json, req_check_tools);
}

static int req_check_choice(lmsched_request *req, const json_t *v)
{
    static const char what[] =
        "tool_choice: expected \"auto\", \"none\", \"required\" or "
        "{\"type\":\"function\",\"function\":{\"name\":...}}";
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        if (strcmp(s, "auto") != 0 && strcmp(s, "none") != 0 &&
            strcmp(s, "required") != 0) {
            return req_fail(req, -1, "%s, got \"%.60s\"", what, s);
        }
        return 0;
    }
    if (!json_is_object(v) || !json_is_string(json_object_get(v, "type"))) {
        return req_fail(req, -1, "%s, got %s", what, req_json_type(v));
    }
    return 0;
}

int lmsched_request_set_tool_choice(lmsched_request *req, const char *choice)
{
    char quoted[16];

    if (req == NULL) {
        return LMSCHED_EINVAL;
    }
    /* The three words as they are, or JSON text (a string or an object). */
    if (choice != NULL && (strcmp(choice, "auto") == 0 || strcmp(choice, "none") == 0 ||
                           strcmp(choice, "required") == 0)) {
        snprintf(quoted, sizeof(quoted), "\"%s\"", choice);
        choice = quoted;
    }
    return req_set_json(req, "tool_choice", &req->chat.tool_choice_json, choice,
                        req_check_choice);
}

int lmsched_request_set_tool_choice_function(lmsched_request *req, const char *name)
{
    json_t *v;
    char *text;

    if (req == NULL) {
        return LMSCHED_EINVAL;
    }
    if (name == NULL || name[0] == '\0') {
        return req_fail(req, LMSCHED_EINVAL, "tool_choice: the function name is empty");
    }
    v = json_pack("{s:s,s:{s:s}}", "type", "function", "function", "name", name);
    if (v == NULL) {
        /* json_pack refuses a name that is not UTF-8 (or memory ran out) */
        return req_fail(req, LMSCHED_EINVAL,
                        "tool_choice: the function name is not UTF-8");
    }
    text = req_json_dump(v);
    json_decref(v);
    if (text == NULL) {
        return req_done(req, LMSCHED_ENOMEM);
    }
    req_take_string(&req->chat.tool_choice_json, text);
    return req_done(req, LMSCHED_OK);
}

static int req_check_format(lmsched_request *req, const json_t *v)
{
    if (!json_is_object(v)) {
        return req_fail(req, -1,
                        "response_format: expected an object such as "
                        "{\"type\":\"json_object\"}, got %s",
                        req_json_type(v));
    }
    if (!json_is_string(json_object_get(v, "type"))) {
        return req_fail(req, -1, "response_format.type: missing or not a string");
    }
    return 0;
}

int lmsched_request_set_response_format(lmsched_request *req, const char *json)
{
    if (req == NULL) {
        return LMSCHED_EINVAL;
    }
    return req_set_json(req, "response_format", &req->chat.response_format_json, json,
                        req_check_format);
}

int lmsched_request_set_parallel_tool_calls(lmsched_request *req, int on)
{
    if (req == NULL) {
        return LMSCHED_EINVAL;
    }
    req->chat.parallel_tool_calls = (int8_t)(on < 0 ? -1 : on > 0 ? 1 : 0);
    return req_done(req, LMSCHED_OK);
}

/* ---- extra body fields ------------------------------------------------------ */

/* The keys the daemon refuses in extra (docs/protocol.md, chat): what it
 * sets itself, and what has a field of its own. NULL when key may go. */
static const char *req_reserved_key(const char *key)
{
    static const char *const mine[] = {"model",          "messages", "stream",
                                       "stream_options", "id_slot",  "cache_prompt"};
    static const char *const fields[] = {"max_tokens",
                                         "temperature",
                                         "top_p",
                                         "stop",
                                         "seed",
                                         "tools",
                                         "tool_choice",
                                         "response_format",
                                         "parallel_tool_calls"};
    for (size_t i = 0; i < sizeof(mine) / sizeof(mine[0]); i++) {
        if (strcmp(key, mine[i]) == 0) {
            return "the scheduler sets it";
        }
    }
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        if (strcmp(key, fields[i]) == 0) {
            return "it has a setter of its own";
        }
    }
    return NULL;
}

static int req_check_extra(lmsched_request *req, const json_t *v)
{
    const char *key, *why;
    json_t *val;

    if (!json_is_object(v)) {
        return req_fail(req, -1, "extra: expected a JSON object of body fields, got %s",
                        req_json_type(v));
    }
    json_object_foreach((json_t *)v, key, val)
    {
        if ((why = req_reserved_key(key)) != NULL) {
            return req_fail(req, -1, "extra.%.60s: not allowed in extra: %s", key, why);
        }
    }
    return 0;
}

int lmsched_request_set_extra(lmsched_request *req, const char *json)
{
    if (req == NULL) {
        return LMSCHED_EINVAL;
    }
    return req_set_json(req, "extra", &req->chat.extra_json, json, req_check_extra);
}

/* Sets extra[key] = val, taking the reference to val (also on failure). */
static int req_extra_put(lmsched_request *req, const char *key, json_t *val)
{
    json_t *extra = NULL;
    const char *why;
    char *text;
    int rc = LMSCHED_OK;

    if (key == NULL || key[0] == '\0') {
        rc = req_fail(req, LMSCHED_EINVAL, "extra: the key is empty");
        goto out;
    }
    if ((why = req_reserved_key(key)) != NULL) {
        rc = req_fail(req, LMSCHED_EINVAL, "extra.%.60s: not allowed in extra: %s", key,
                      why);
        goto out;
    }
    if (val == NULL) {
        /* the value could not be made: a string that is not UTF-8, or ENOMEM */
        rc = req_fail(req, LMSCHED_EINVAL, "extra.%.60s: the value is not valid (UTF-8?)",
                      key);
        goto out;
    }
    extra = req->chat.extra_json != NULL ? json_loads(req->chat.extra_json, 0, NULL)
                                         : json_object();
    if (extra == NULL) {
        rc = req_done(req, LMSCHED_ENOMEM);
        goto out;
    }
    if (json_object_set(extra, key, val) != 0) {
        rc = req_fail(req, LMSCHED_EINVAL, "extra: the key is not valid UTF-8");
        goto out;
    }
    if ((text = req_json_dump(extra)) == NULL) {
        rc = req_done(req, LMSCHED_ENOMEM);
        goto out;
    }
    req_take_string(&req->chat.extra_json, text);
    rc = req_done(req, LMSCHED_OK);
out:
    json_decref(val);
    json_decref(extra);
    return rc;
}

int lmsched_request_set_extra_int(lmsched_request *req, const char *key, int64_t v)
{
    if (req == NULL) {
        return LMSCHED_EINVAL;
    }
    return req_extra_put(req, key, json_integer((json_int_t)v));
}

int lmsched_request_set_extra_double(lmsched_request *req, const char *key, double v)
{
    if (req == NULL) {
        return LMSCHED_EINVAL;
    }
    if (!isfinite(v)) {
        return req_fail(req, LMSCHED_EINVAL, "extra.%.60s: not a finite number",
                        key != NULL ? key : "");
    }
    return req_extra_put(req, key, json_real(v));
}

int lmsched_request_set_extra_bool(lmsched_request *req, const char *key, int v)
{
    if (req == NULL) {
        return LMSCHED_EINVAL;
    }
    return req_extra_put(req, key, json_boolean(v != 0));
}

int lmsched_request_set_extra_string(lmsched_request *req, const char *key, const char *v)
{
    if (req == NULL) {
        return LMSCHED_EINVAL;
    }
    if (v == NULL) {
        return req_fail(req, LMSCHED_EINVAL, "extra.%.60s: the value is NULL",
                        key != NULL ? key : "");
    }
    return req_extra_put(req, key, json_string(v));
}

int lmsched_request_set_extra_json(lmsched_request *req, const char *key,
                                   const char *json)
{
    char what[80];
    json_t *v;

    if (req == NULL) {
        return LMSCHED_EINVAL;
    }
    if (json == NULL) {
        return req_fail(req, LMSCHED_EINVAL, "extra.%.60s: the value is NULL",
                        key != NULL ? key : "");
    }
    snprintf(what, sizeof(what), "extra.%.60s", key != NULL ? key : "");
    if ((v = req_json_load(req, what, json)) == NULL) {
        return LMSCHED_EINVAL;
    }
    return req_extra_put(req, key, v);
}

/* ---- messages ------------------------------------------------------------- */

int lmsched_request_set_system(lmsched_request *req, const char *text)
{
    if (req == NULL) {
        return LMSCHED_EINVAL;
    }
    if (text == NULL) {
        return req_fail(req, LMSCHED_EINVAL,
                        "system: the text is NULL (use \"\" for none)");
    }
    return req_done(req, req_set_string(&req->chat.system, text));
}

/* The role of a message the caller gives: not NULL, not empty. */
static int req_check_role(lmsched_request *req, const char *role)
{
    if (role == NULL || role[0] == '\0') {
        return req_fail(req, LMSCHED_EINVAL, "message: the role is %s",
                        role == NULL ? "NULL" : "empty");
    }
    return LMSCHED_OK;
}

int lmsched_request_add_message(lmsched_request *req, const char *role,
                                const char *content)
{
    lms_chat_msg msg = {0};
    int rc = LMSCHED_OK;

    if (req == NULL) {
        return LMSCHED_EINVAL;
    }
    if (role == NULL || content == NULL) {
        return req_fail(req, LMSCHED_EINVAL, "message: the %s is NULL",
                        role == NULL ? "role" : "content");
    }
    msg.role = req_dup(role, &rc);
    msg.content = req_dup(content, &rc);
    if (rc != LMSCHED_OK) {
        req_msg_fini(&msg);
        return req_done(req, rc);
    }
    return req_done(req, req_push_msg(req, &msg));
}

int lmsched_request_add_message_parts(lmsched_request *req, const char *role,
                                      const char *parts_json)
{
    lms_chat_msg msg = {0};
    json_t *parts;
    int rc = LMSCHED_OK;

    if (req == NULL) {
        return LMSCHED_EINVAL;
    }
    if ((rc = req_check_role(req, role)) != LMSCHED_OK) {
        return rc;
    }
    if (parts_json == NULL) {
        return req_fail(req, LMSCHED_EINVAL, "content: the parts are NULL");
    }
    if ((parts = req_json_load(req, "content", parts_json)) == NULL) {
        return LMSCHED_EINVAL;
    }
    rc = req_check_parts(req, "content", parts) != 0 ? LMSCHED_EINVAL : LMSCHED_OK;
    json_decref(parts);
    if (rc != LMSCHED_OK) {
        return rc;
    }
    msg.role = req_dup(role, &rc);
    msg.parts_json = req_dup(parts_json, &rc);
    if (rc != LMSCHED_OK) {
        req_msg_fini(&msg);
        return req_done(req, rc);
    }
    return req_done(req, req_push_msg(req, &msg));
}

int lmsched_request_add_tool_calls(lmsched_request *req, const char *content,
                                   const char *tool_calls_json)
{
    lms_chat_msg msg = {0};
    json_t *calls;
    int rc = LMSCHED_OK;

    if (req == NULL) {
        return LMSCHED_EINVAL;
    }
    if (tool_calls_json == NULL) {
        return req_fail(req, LMSCHED_EINVAL, "tool_calls: NULL");
    }
    if ((calls = req_json_load(req, "tool_calls", tool_calls_json)) == NULL) {
        return LMSCHED_EINVAL;
    }
    rc = req_check_calls(req, "tool_calls", calls) != 0 ? LMSCHED_EINVAL : LMSCHED_OK;
    json_decref(calls);
    if (rc != LMSCHED_OK) {
        return rc;
    }
    msg.role = req_dup("assistant", &rc);
    msg.content = req_dup(content, &rc);
    msg.tool_calls_json = req_dup(tool_calls_json, &rc);
    if (rc != LMSCHED_OK) {
        req_msg_fini(&msg);
        return req_done(req, rc);
    }
    return req_done(req, req_push_msg(req, &msg));
}

int lmsched_request_add_tool_result(lmsched_request *req, const char *tool_call_id,
                                    const char *name, const char *content)
{
    lms_chat_msg msg = {0};
    int rc = LMSCHED_OK;

    if (req == NULL) {
        return LMSCHED_EINVAL;
    }
    if (tool_call_id == NULL || tool_call_id[0] == '\0') {
        return req_fail(req, LMSCHED_EINVAL,
                        "tool message: the tool_call_id is %s (the id of the call it "
                        "answers, lmsched_result_tool_call_id)",
                        tool_call_id == NULL ? "NULL" : "empty");
    }
    if (content == NULL) {
        return req_fail(req, LMSCHED_EINVAL, "tool message: the content is NULL");
    }
    msg.role = req_dup("tool", &rc);
    msg.tool_call_id = req_dup(tool_call_id, &rc);
    msg.name = req_dup(name, &rc);
    msg.content = req_dup(content, &rc);
    if (rc != LMSCHED_OK) {
        req_msg_fini(&msg);
        return req_done(req, rc);
    }
    return req_done(req, req_push_msg(req, &msg));
}

/* A member of a message object that must be a string, copied into *out
 * (absent or null: left NULL). Returns LMSCHED_OK or an error. */
static int req_msg_string(lmsched_request *req, const json_t *m, const char *key,
                          char **out)
{
    const json_t *v = json_object_get(m, key);

    if (v == NULL || json_is_null(v)) {
        return LMSCHED_OK;
    }
    if (!json_is_string(v)) {
        return req_fail(req, LMSCHED_EINVAL, "message.%s: expected a string, got %s", key,
                        req_json_type(v));
    }
    if ((*out = strdup(json_string_value(v))) == NULL) {
        return req_done(req, LMSCHED_ENOMEM);
    }
    return LMSCHED_OK;
}

int lmsched_request_add_message_json(lmsched_request *req, const char *json)
{
    static const char *const known[] = {"role", "content", "tool_calls", "tool_call_id",
                                        "name"};
    lms_chat_msg msg = {0};
    json_t *m = NULL, *v;
    const char *key;
    int rc = LMSCHED_EINVAL;

    if (req == NULL) {
        return LMSCHED_EINVAL;
    }
    if (json == NULL) {
        return req_fail(req, LMSCHED_EINVAL, "message: NULL");
    }
    if ((m = req_json_load(req, "message", json)) == NULL) {
        return LMSCHED_EINVAL;
    }
    if (!json_is_object(m)) {
        req_fail(req, rc, "message: expected an object, got %s", req_json_type(m));
        goto fail;
    }
    json_object_foreach(m, key, v)
    {
        size_t k = 0;
        while (k < sizeof(known) / sizeof(known[0]) && strcmp(key, known[k]) != 0) {
            k++;
        }
        if (k == sizeof(known) / sizeof(known[0])) {
            req_fail(req, rc,
                     "message.%.60s: not a field the protocol carries (role, content, "
                     "tool_calls, tool_call_id, name)",
                     key);
            goto fail;
        }
    }
    if (!json_is_string(json_object_get(m, "role")) ||
        json_string_length(json_object_get(m, "role")) == 0) {
        req_fail(req, rc, "message.role: missing or not a string");
        goto fail;
    }
    if ((rc = req_msg_string(req, m, "role", &msg.role)) != LMSCHED_OK ||
        (rc = req_msg_string(req, m, "tool_call_id", &msg.tool_call_id)) != LMSCHED_OK ||
        (rc = req_msg_string(req, m, "name", &msg.name)) != LMSCHED_OK) {
        goto fail;
    }
    rc = LMSCHED_EINVAL;
    v = json_object_get(m, "content");
    if (json_is_string(v)) {
        if ((msg.content = strdup(json_string_value(v))) == NULL) {
            rc = req_done(req, LMSCHED_ENOMEM);
            goto fail;
        }
    } else if (json_is_array(v)) {
        if (req_check_parts(req, "message.content", v) != 0) {
            goto fail;
        }
        if ((msg.parts_json = req_json_dump(v)) == NULL) {
            rc = req_done(req, LMSCHED_ENOMEM);
            goto fail;
        }
    } else if (v != NULL && !json_is_null(v)) {
        req_fail(req, rc,
                 "message.content: expected a string, an array of parts or null, "
                 "got %s",
                 req_json_type(v));
        goto fail;
    }
    v = json_object_get(m, "tool_calls");
    if (v != NULL && !json_is_null(v)) {
        if (req_check_calls(req, "message.tool_calls", v) != 0) {
            goto fail;
        }
        if ((msg.tool_calls_json = req_json_dump(v)) == NULL) {
            rc = req_done(req, LMSCHED_ENOMEM);
            goto fail;
        }
    }
    if (msg.content == NULL && msg.parts_json == NULL && msg.tool_calls_json == NULL) {
        req_fail(req, rc,
                 "message.content: missing (only a message with tool_calls may "
                 "have none)");
        goto fail;
    }
    json_decref(m);
    return req_done(req, req_push_msg(req, &msg));

fail:
    json_decref(m);
    req_msg_fini(&msg);
    return rc;
}

int lmsched_request_add_reply(lmsched_request *req, const lmsched_result *res)
{
    lms_chat_msg msg = {0};
    int rc = LMSCHED_OK;

    if (req == NULL) {
        return LMSCHED_EINVAL;
    }
    if (res == NULL || res->err != LMSCHED_OK || res->finish_reason == NULL) {
        return req_fail(req, LMSCHED_EINVAL, "reply: the result is not a chat reply");
    }
    msg.role = req_dup("assistant", &rc);
    /* An answer of calls only goes back without content, as OpenAI's
     * clients send it; reasoning is not sent back (as with llama.cpp). */
    if (res->n_tool_calls == 0 || (res->content != NULL && res->content[0] != '\0')) {
        msg.content = req_dup(res->content != NULL ? res->content : "", &rc);
    }
    msg.tool_calls_json = req_dup(res->tool_calls_json, &rc);
    if (rc != LMSCHED_OK) {
        req_msg_fini(&msg);
        return req_done(req, rc);
    }
    return req_done(req, req_push_msg(req, &msg));
}

void lmsched_request_clear_messages(lmsched_request *req)
{
    if (req == NULL) {
        return;
    }
    for (size_t i = 0; i < req->chat.n_messages; i++) {
        req_msg_fini(&req->chat.messages[i]);
    }
    req->chat.n_messages = 0;
}

size_t lmsched_request_message_count(const lmsched_request *req)
{
    return req != NULL ? req->chat.n_messages : 0;
}

/* ---- the other fields ---------------------------------------------------------- */

int lmsched_request_set_model(lmsched_request *req, const char *model)
{
    if (req == NULL) {
        return LMSCHED_EINVAL;
    }
    if (model == NULL) {
        return req_fail(req, LMSCHED_EINVAL, "model: NULL");
    }
    return req_done(req, req_set_string(&req->chat.model, model));
}

int lmsched_request_set_max_tokens(lmsched_request *req, int32_t n)
{
    if (req == NULL) {
        return LMSCHED_EINVAL;
    }
    if (n < 1 || n > LMSCHED_MAX_TOKENS_MAX) {
        return req_fail(req, LMSCHED_EINVAL, "max_tokens: %ld is out of range 1..%d",
                        (long)n, LMSCHED_MAX_TOKENS_MAX);
    }
    req->chat.max_tokens = n;
    return req_done(req, LMSCHED_OK);
}

int lmsched_request_set_temperature(lmsched_request *req, double t)
{
    if (req == NULL) {
        return LMSCHED_EINVAL;
    }
    /* Written this way round so NaN fails the test too. */
    if (!(t >= 0.0 && t <= REQ_TEMPERATURE_MAX)) {
        return req_fail(req, LMSCHED_EINVAL, "temperature: %g is out of range 0..%g", t,
                        REQ_TEMPERATURE_MAX);
    }
    req->chat.has_temperature = true;
    req->chat.temperature = t;
    return req_done(req, LMSCHED_OK);
}

int lmsched_request_set_top_p(lmsched_request *req, double p)
{
    if (req == NULL) {
        return LMSCHED_EINVAL;
    }
    if (!(p >= 0.0 && p <= 1.0)) {
        return req_fail(req, LMSCHED_EINVAL, "top_p: %g is out of range 0..1", p);
    }
    req->chat.has_top_p = true;
    req->chat.top_p = p;
    return req_done(req, LMSCHED_OK);
}

int lmsched_request_add_stop(lmsched_request *req, const char *stop)
{
    char *copy;
    void *arr;
    int rc;

    if (req == NULL) {
        return LMSCHED_EINVAL;
    }
    if (stop == NULL) {
        return req_fail(req, LMSCHED_EINVAL, "stop: NULL");
    }
    arr = req->chat.stop;
    rc = req_grow(&arr, &req->cap_stop, req->chat.n_stop, sizeof(char *));
    req->chat.stop = arr;
    if (rc != LMSCHED_OK) {
        return req_done(req, rc);
    }
    if ((copy = strdup(stop)) == NULL) {
        return req_done(req, LMSCHED_ENOMEM);
    }
    req->chat.stop[req->chat.n_stop++] = copy;
    return req_done(req, LMSCHED_OK);
}

int lmsched_request_set_seed(lmsched_request *req, int64_t seed)
{
    if (req == NULL) {
        return LMSCHED_EINVAL;
    }
    req->chat.has_seed = true;
    req->chat.seed = seed;
    return req_done(req, LMSCHED_OK);
}

int lmsched_request_set_priority(lmsched_request *req, int priority)
{
    if (req == NULL) {
        return LMSCHED_EINVAL;
    }
    if (priority < 0 || priority > REQ_PRIORITY_MAX) {
        return req_fail(req, LMSCHED_EINVAL, "priority: %d is out of range 0..%d",
                        priority, REQ_PRIORITY_MAX);
    }
    req->chat.priority = (uint8_t)priority;
    return req_done(req, LMSCHED_OK);
}

int lmsched_request_set_deadline_ms(lmsched_request *req, uint32_t ms)
{
    if (req == NULL) {
        return LMSCHED_EINVAL;
    }
    req->chat.deadline_ms = ms;
    return req_done(req, LMSCHED_OK);
}

int lmsched_request_set_agent(lmsched_request *req, const char *name)
{
    if (req == NULL) {
        return LMSCHED_EINVAL;
    }
    if (name == NULL) {
        return req_fail(req, LMSCHED_EINVAL, "agent: NULL");
    }
    return req_done(req, req_set_string(&req->chat.agent, name));
}

int lmsched_request_set_client_id(lmsched_request *req, const char *id)
{
    if (req == NULL) {
        return LMSCHED_EINVAL;
    }
    if (id == NULL) {
        return req_fail(req, LMSCHED_EINVAL, "client_id: NULL");
    }
    return req_done(req, req_set_string(&req->chat.client_id, id));
}

/* ---- results ----------------------------------------------------------- */

static lmsched_result *res_alloc(int err)
{
    lmsched_result *res = calloc(1, sizeof(*res));

    if (res == NULL) {
        return NULL;
    }
    res->err = err;
    res->usage.prompt_tokens = -1;
    res->usage.completion_tokens = -1;
    res->usage.cached_tokens = -1;
    return res;
}

lmsched_result *lma_result_error(int err, const char *fmt, ...)
{
    lmsched_result *res;
    va_list ap;
    int n;

    if ((res = res_alloc(err)) == NULL) {
        return NULL;
    }
    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || (res->message = malloc((size_t)n + 1)) == NULL) {
        goto fail;
    }
    va_start(ap, fmt);
    vsnprintf(res->message, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return res;

fail:
    free(res);
    return NULL;
}

int lma_result_set_field(lmsched_result *res, const char *field)
{
    char *copy = NULL;

    if (field != NULL && (copy = strdup(field)) == NULL) {
        return -1;
    }
    free(res->field);
    res->field = copy;
    return 0;
}

/* The calls as OpenAI's tool_calls array (what an assistant message sends
 * back), or NULL when out of memory or a string is not UTF-8. */
static char *res_calls_json(const lms_tool_call *calls, size_t n)
{
    json_t *arr = json_array();
    char *text = NULL;

    if (arr == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *tc =
            json_pack("{s:s,s:s,s:{s:s,s:s}}", "id", calls[i].id ? calls[i].id : "",
                      "type", calls[i].type ? calls[i].type : "function", "function",
                      "name", calls[i].name ? calls[i].name : "", "arguments",
                      calls[i].arguments ? calls[i].arguments : "");
        if (tc == NULL || json_array_append_new(arr, tc) != 0) {
            goto out;
        }
    }
    text = req_json_dump(arr);
out:
    json_decref(arr);
    return text;
}

lmsched_result *lma_result_reply(lms_chat_reply *reply)
{
    lmsched_result *res;
    char *calls = NULL;

    if (reply->n_tool_calls > 0 &&
        (calls = res_calls_json(reply->tool_calls, reply->n_tool_calls)) == NULL) {
        return NULL;
    }
    if ((res = res_alloc(LMSCHED_OK)) == NULL) {
        free(calls);
        return NULL;
    }
    res->content = reply->content;
    res->finish_reason = reply->finish_reason;
    res->model = reply->model;
    res->reasoning = reply->reasoning;
    res->tool_calls = reply->tool_calls;
    res->n_tool_calls = reply->n_tool_calls;
    res->tool_calls_json = calls;
    res->logprobs_json = reply->logprobs_json;
    reply->content = NULL;
    reply->finish_reason = NULL;
    reply->model = NULL;
    reply->reasoning = NULL;
    reply->tool_calls = NULL;
    reply->n_tool_calls = 0;
    reply->logprobs_json = NULL;
    res->usage = reply->usage;
    res->timings = reply->timings;
    res->retries = reply->retries;
    return res;
}

lmsched_result *lma_result_status(char **json)
{
    lmsched_result *res;

    if ((res = res_alloc(LMSCHED_OK)) == NULL) {
        return NULL;
    }
    res->status = *json;
    *json = NULL;
    return res;
}

char *lma_result_take_status(lmsched_result *res)
{
    char *s = res->status;

    res->status = NULL;
    return s;
}

void lmsched_result_free(lmsched_result *res)
{
    if (res == NULL) {
        return;
    }
    free(res->message);
    free(res->field);
    free(res->content);
    free(res->finish_reason);
    free(res->model);
    free(res->reasoning);
    for (size_t i = 0; i < res->n_tool_calls; i++) {
        free(res->tool_calls[i].id);
        free(res->tool_calls[i].type);
        free(res->tool_calls[i].name);
        free(res->tool_calls[i].arguments);
    }
    free(res->tool_calls);
    free(res->tool_calls_json);
    free(res->logprobs_json);
    free(res->status);
    free(res);
}

/* The accessors accept NULL (a call that returned no result) and answer as
 * for an empty result, so a caller's error path need not test for it. */

int lmsched_result_error(const lmsched_result *res)
{
    return res != NULL ? res->err : LMSCHED_EINVAL;
}

const char *lmsched_result_message(const lmsched_result *res)
{
    return res != NULL ? res->message : NULL;
}

const char *lmsched_result_error_field(const lmsched_result *res)
{
    return res != NULL ? res->field : NULL;
}

const char *lmsched_result_content(const lmsched_result *res)
{
    return res != NULL ? res->content : NULL;
}

const char *lmsched_result_finish_reason(const lmsched_result *res)
{
    return res != NULL ? res->finish_reason : NULL;
}

const char *lmsched_result_model(const lmsched_result *res)
{
    return res != NULL ? res->model : NULL;
}

const char *lmsched_result_reasoning(const lmsched_result *res)
{
    return res != NULL ? res->reasoning : NULL;
}

size_t lmsched_result_tool_call_count(const lmsched_result *res)
{
    return res != NULL ? res->n_tool_calls : 0;
}

/* Call i of res, or NULL when there is none. */
static const lms_tool_call *res_call(const lmsched_result *res, size_t i)
{
    return res != NULL && i < res->n_tool_calls ? &res->tool_calls[i] : NULL;
}

const char *lmsched_result_tool_call_id(const lmsched_result *res, size_t i)
{
    const lms_tool_call *tc = res_call(res, i);
    return tc != NULL ? tc->id : NULL;
}

const char *lmsched_result_tool_call_type(const lmsched_result *res, size_t i)
{
    const lms_tool_call *tc = res_call(res, i);
    return tc != NULL ? tc->type : NULL;
}

const char *lmsched_result_tool_call_name(const lmsched_result *res, size_t i)
{
    const lms_tool_call *tc = res_call(res, i);
    return tc != NULL ? tc->name : NULL;
}

const char *lmsched_result_tool_call_arguments(const lmsched_result *res, size_t i)
{
    const lms_tool_call *tc = res_call(res, i);
    return tc != NULL ? tc->arguments : NULL;
}

const char *lmsched_result_tool_calls_json(const lmsched_result *res)
{
    return res != NULL ? res->tool_calls_json : NULL;
}

const char *lmsched_result_logprobs_json(const lmsched_result *res)
{
    return res != NULL ? res->logprobs_json : NULL;
}

int64_t lmsched_result_prompt_tokens(const lmsched_result *res)
{
    return res != NULL ? res->usage.prompt_tokens : -1;
}

int64_t lmsched_result_completion_tokens(const lmsched_result *res)
{
    return res != NULL ? res->usage.completion_tokens : -1;
}

int64_t lmsched_result_cached_tokens(const lmsched_result *res)
{
    return res != NULL ? res->usage.cached_tokens : -1;
}

double lmsched_result_queue_ms(const lmsched_result *res)
{
    return res != NULL ? res->timings.queue_ms : 0.0;
}

double lmsched_result_ttft_ms(const lmsched_result *res)
{
    return res != NULL ? res->timings.ttft_ms : 0.0;
}

double lmsched_result_total_ms(const lmsched_result *res)
{
    return res != NULL ? res->timings.total_ms : 0.0;
}

uint32_t lmsched_result_retries(const lmsched_result *res)
{
    return res != NULL ? res->retries : 0;
}
