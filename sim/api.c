/*
 * simapi - JSON in and out for lmsim (jansson). Response shapes follow
 * OpenAI's chat.completion / chat.completion.chunk objects with llama.cpp's
 * "timings" added, and LM Studio 0.4's GET /api/v1/models.
 */
#include "sim/api.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim/schema.h"

/* The model LM Studio would report as the largest context it supports. */
#define SIMAPI_MODEL_MAX_CTX 131072u

static const char simapi_im_start[] = "<|im_start|>";
static const char simapi_im_end[] = "<|im_end|>\n";

static int simapi_append(char **buf, size_t *len, size_t *cap, const char *s, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t c = *cap ? *cap : 256;
        while (c < *len + n + 1)
            c *= 2;
        char *p = realloc(*buf, c);
        if (!p)
            return -1;
        *buf = p;
        *cap = c;
    }
    memcpy(*buf + *len, s, n);
    *len += n;
    (*buf)[*len] = '\0';
    return 0;
}

/* Dumps and frees obj (a new reference). NULL on ENOMEM. */
static char *simapi_dump(json_t *obj)
{
    if (!obj)
        return NULL;
    /* 10 significant digits: enough for ms timings, without binary noise. */
    char *s = json_dumps(obj, JSON_COMPACT | JSON_REAL_PRECISION(10));
    json_decref(obj);
    return s;
}

char *api_error_json(const char *type, const char *message)
{
    return simapi_dump(
        json_pack("{s:{s:s,s:s}}", "error", "message", message, "type", type));
}

char *api_context_error_json(unsigned prompt_n, unsigned n_ctx)
{
    /* The shape and words of llama.cpp's exceed_context_size_error. */
    return simapi_dump(
        json_pack("{s:{s:i,s:s,s:s,s:I,s:I}}", "error", "code", 400, "message",
                  "the request exceeds the available context size, try increasing it",
                  "type", "exceed_context_size_error", "n_prompt_tokens",
                  (json_int_t)prompt_n, "n_ctx", (json_int_t)n_ctx));
}

static int simapi_bad(char **err_body, const char *message)
{
    *err_body = api_error_json("invalid_request_error", message);
    return *err_body ? 400 : 500;
}

char *api_param_error_json(const char *param, const char *message)
{
    return simapi_dump(json_pack("{s:{s:i,s:s,s:s,s:s}}", "error", "code", 400, "message",
                                 message, "type", "invalid_request_error", "param",
                                 param));
}

/* A 400 that names the field param + suffix: "<field>: <what>". */
static int simapi_bad_at(char **err_body, const char *param, const char *suffix,
                         const char *what)
{
    char field[160], msg[512];
    snprintf(field, sizeof field, "%s%s", param, suffix);
    snprintf(msg, sizeof msg, "%s: %s", field, what);
    *err_body = api_param_error_json(field, msg);
    return *err_body ? 400 : 500;
}

/* The kinds of answer (docs/simulator.md, "Tools, structured output,
 * logprobs, reasoning"). */
typedef enum simapi_kind {
    SIMAPI_TEXT = 0,
    SIMAPI_CALLS,       /* tool calls */
    SIMAPI_JSON_OBJECT, /* response_format json_object */
    SIMAPI_JSON_SCHEMA, /* response_format json_schema */
    SIMAPI_TOOL_RESULT, /* text quoting the last tool message */
} simapi_kind;

typedef enum simapi_choice {
    SIMAPI_CHOICE_AUTO = 0,
    SIMAPI_CHOICE_NONE,
    SIMAPI_CHOICE_REQUIRED,
    SIMAPI_CHOICE_NAMED,
} simapi_choice;

struct api_plan {
    simapi_kind kind;
    json_t *calls;  /* SIMAPI_CALLS: the tools' "function" objects, in order */
    json_t *schema; /* SIMAPI_JSON_SCHEMA */
    char *quote;    /* SIMAPI_TOOL_RESULT: the start of the tool's content */
    size_t quote_len;
};

static void simapi_plan_free(api_plan *p)
{
    if (!p)
        return;
    json_decref(p->calls);
    json_decref(p->schema);
    free(p->quote);
    free(p);
}

/* Flags of every JSON text that goes into a prompt: the daemon dumps the
 * same values with the same flags (scheduler/chat/chain.c). */
#define SIMAPI_RENDER_FLAGS (JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17))

/* Appends a checked message content as the prompt shows it: a string; ""
 * for null or absent; for an array of parts, each text part's text and
 * "<image>" for each image_url part (other parts show nothing). 0 or -1. */
static int simapi_content(const json_t *content, char **buf, size_t *len, size_t *cap)
{
    size_t i;
    json_t *part;
    if (json_is_string(content))
        return simapi_append(buf, len, cap, json_string_value(content),
                             json_string_length(content));
    json_array_foreach(content, i, part)
    {
        const char *type = json_string_value(json_object_get(part, "type"));
        const json_t *text = json_object_get(part, "text");
        if (strcmp(type, "text") == 0 &&
            simapi_append(buf, len, cap, json_string_value(text),
                          json_string_length(text)) != 0)
            return -1;
        if (strcmp(type, "image_url") == 0 &&
            simapi_append(buf, len, cap, "<image>", 7) != 0)
            return -1;
    }
    return 0;
}

static int simapi_check_content(const json_t *content, size_t mi, char **err)
{
    char base[96];
    size_t j;
    json_t *part;
    if (content == NULL || json_is_null(content) || json_is_string(content))
        return 0;
    if (!json_is_array(content))
        return simapi_bad(
            err, "message 'content' must be a string, null or an array of parts");
    json_array_foreach(content, j, part)
    {
        const json_t *type = json_object_get(part, "type");
        snprintf(base, sizeof base, "messages[%zu].content[%zu]", mi, j);
        if (!json_is_object(part) || !json_is_string(type))
            return simapi_bad_at(err, base, "",
                                 "must be an object with a \"type\" string");
        if (strcmp(json_string_value(type), "text") == 0 &&
            !json_is_string(json_object_get(part, "text")))
            return simapi_bad_at(err, base, ".text", "missing or not a string");
        if (strcmp(json_string_value(type), "image_url") == 0 &&
            !json_is_string(json_object_get(json_object_get(part, "image_url"), "url")))
            return simapi_bad_at(err, base, ".image_url.url", "missing or not a string");
    }
    return 0;
}

/* An assistant message's tool_calls (any role's, if present). */
static int simapi_check_calls(const json_t *calls, size_t mi, char **err)
{
    char base[96];
    size_t j;
    json_t *tc;
    if (calls == NULL || json_is_null(calls))
        return 0;
    snprintf(base, sizeof base, "messages[%zu].tool_calls", mi);
    if (!json_is_array(calls))
        return simapi_bad_at(err, base, "", "must be an array");
    if (json_array_size(calls) > SIMAPI_MAX_TOOL_CALLS)
        return simapi_bad_at(err, base, "", "too many tool calls (at most 128)");
    json_array_foreach(calls, j, tc)
    {
        snprintf(base, sizeof base, "messages[%zu].tool_calls[%zu]", mi, j);
        const json_t *id = json_object_get(tc, "id");
        const json_t *type = json_object_get(tc, "type");
        const json_t *fn = json_object_get(tc, "function");
        if (!json_is_object(tc))
            return simapi_bad_at(err, base, "", "must be an object");
        if (id != NULL && !json_is_null(id) && !json_is_string(id))
            return simapi_bad_at(err, base, ".id", "must be a string");
        if (type != NULL &&
            (!json_is_string(type) || strcmp(json_string_value(type), "function") != 0))
            return simapi_bad_at(err, base, ".type", "must be \"function\"");
        if (!json_is_object(fn))
            return simapi_bad_at(err, base, ".function", "missing or not an object");
        if (!json_is_string(json_object_get(fn, "name")))
            return simapi_bad_at(err, base, ".function.name", "missing or not a string");
        if (!json_is_string(json_object_get(fn, "arguments")))
            return simapi_bad_at(err, base, ".function.arguments",
                                 "missing or not a string");
    }
    return 0;
}

/* Checks every message; *sys_idx gets the index of the first "system"
 * message, SIZE_MAX if none. Returns 0 or an HTTP status. */
static int simapi_check_messages(const json_t *messages, size_t *sys_idx, char **err)
{
    char base[64];
    size_t i;
    json_t *m;
    *sys_idx = SIZE_MAX;
    if (!json_is_array(messages) || json_array_size(messages) == 0)
        return simapi_bad(err, "'messages' must be a non-empty array");
    if (json_array_size(messages) > SIMAPI_MAX_MESSAGES)
        return simapi_bad(err, "too many messages");
    json_array_foreach(messages, i, m)
    {
        const json_t *role = json_object_get(m, "role");
        if (!json_is_object(m) || !json_is_string(role) ||
            json_string_length(role) == 0 || json_string_length(role) > SIMAPI_MAX_ROLE ||
            strlen(json_string_value(role)) != json_string_length(role))
            return simapi_bad(err, "each message needs a 'role' string");
        if (*sys_idx == SIZE_MAX && strcmp(json_string_value(role), "system") == 0)
            *sys_idx = i;
        int rc = simapi_check_content(json_object_get(m, "content"), i, err);
        if (rc == 0)
            rc = simapi_check_calls(json_object_get(m, "tool_calls"), i, err);
        if (rc != 0)
            return rc;
        static const char *const strings[] = {"tool_call_id", "name"};
        for (size_t k = 0; k < sizeof strings / sizeof strings[0]; k++) {
            const json_t *v = json_object_get(m, strings[k]);
            if (v != NULL && !json_is_null(v) && !json_is_string(v)) {
                snprintf(base, sizeof base, "messages[%zu].", i);
                return simapi_bad_at(err, base, strings[k], "must be a string");
            }
        }
    }
    return 0;
}

/* OpenAI's rule for a function name: 1 to 64 of a-z, A-Z, 0-9, _ and -. */
static bool simapi_tool_name_ok(const json_t *name)
{
    const char *s = json_string_value(name);
    size_t n = json_string_length(name);
    if (n == 0 || n > SIMAPI_MAX_TOOL_NAME)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
    }
    return true;
}

static int simapi_check_tools(const json_t *tools, char **err)
{
    char base[32];
    size_t i;
    json_t *t;
    if (!json_is_array(tools))
        return simapi_bad_at(err, "tools", "", "must be an array");
    if (json_array_size(tools) > SIMAPI_MAX_TOOLS)
        return simapi_bad_at(err, "tools", "", "too many tools (at most 128)");
    json_array_foreach(tools, i, t)
    {
        snprintf(base, sizeof base, "tools[%zu]", i);
        const json_t *type = json_object_get(t, "type");
        const json_t *fn = json_object_get(t, "function");
        const json_t *name = json_object_get(fn, "name");
        const json_t *desc = json_object_get(fn, "description");
        const json_t *params = json_object_get(fn, "parameters");
        if (!json_is_object(t))
            return simapi_bad_at(err, base, "", "must be an object");
        if (!json_is_string(type) || strcmp(json_string_value(type), "function") != 0)
            return simapi_bad_at(err, base, ".type", "missing or not \"function\"");
        if (!json_is_object(fn))
            return simapi_bad_at(err, base, ".function", "missing or not an object");
        if (!json_is_string(name))
            return simapi_bad_at(err, base, ".function.name", "missing or not a string");
        if (!simapi_tool_name_ok(name))
            return simapi_bad_at(
                err, base, ".function.name",
                "must be 1 to 64 letters, digits, underscores or dashes");
        if (desc != NULL && !json_is_null(desc) && !json_is_string(desc))
            return simapi_bad_at(err, base, ".function.description", "must be a string");
        if (params != NULL && !json_is_null(params) && !json_is_object(params))
            return simapi_bad_at(err, base, ".function.parameters",
                                 "must be an object (a JSON schema)");
    }
    return 0;
}

/* tool_choice: *named gets the chosen tool's "function" object. */
static int simapi_tool_choice(const json_t *v, const json_t *tools, simapi_choice *choice,
                              const json_t **named, char **err)
{
    static const char what[] = "must be \"auto\", \"none\", \"required\" or "
                               "{\"type\":\"function\",\"function\":{\"name\":...}}";
    *choice = SIMAPI_CHOICE_AUTO;
    *named = NULL;
    if (v == NULL || json_is_null(v))
        return 0;
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        if (strcmp(s, "auto") == 0)
            *choice = SIMAPI_CHOICE_AUTO;
        else if (strcmp(s, "none") == 0)
            *choice = SIMAPI_CHOICE_NONE;
        else if (strcmp(s, "required") == 0)
            *choice = SIMAPI_CHOICE_REQUIRED;
        else
            return simapi_bad_at(err, "tool_choice", "", what);
    } else if (json_is_object(v)) {
        const json_t *type = json_object_get(v, "type");
        const json_t *fn = json_object_get(v, "function");
        const json_t *name = json_object_get(fn, "name");
        size_t i;
        json_t *t;
        if (!json_is_string(type) || strcmp(json_string_value(type), "function") != 0)
            return simapi_bad_at(err, "tool_choice", ".type",
                                 "missing or not \"function\"");
        if (!json_is_object(fn))
            return simapi_bad_at(err, "tool_choice", ".function",
                                 "missing or not an object");
        if (!json_is_string(name))
            return simapi_bad_at(err, "tool_choice", ".function.name",
                                 "missing or not a string");
        json_array_foreach(tools, i, t)
        {
            const json_t *f = json_object_get(t, "function");
            if (json_equal(json_object_get(f, "name"), (json_t *)name)) {
                *named = f;
                break;
            }
        }
        if (*named == NULL)
            return simapi_bad_at(err, "tool_choice", ".function.name",
                                 "names no tool of this request");
        *choice = SIMAPI_CHOICE_NAMED;
    } else {
        return simapi_bad_at(err, "tool_choice", "", what);
    }
    if (*choice == SIMAPI_CHOICE_REQUIRED && json_array_size(tools) == 0)
        return simapi_bad_at(err, "tool_choice", "", "\"required\" needs tools");
    return 0;
}

/* response_format: *kind SIMAPI_TEXT, _JSON_OBJECT or _JSON_SCHEMA (then
 * *schema is the schema, borrowed). */
static int simapi_response_format(const json_t *v, simapi_kind *kind,
                                  const json_t **schema, char **err)
{
    *kind = SIMAPI_TEXT;
    *schema = NULL;
    if (v == NULL || json_is_null(v))
        return 0;
    if (!json_is_object(v))
        return simapi_bad_at(err, "response_format", "", "must be an object");
    const json_t *type = json_object_get(v, "type");
    if (!json_is_string(type))
        return simapi_bad_at(err, "response_format", ".type", "missing or not a string");
    const char *t = json_string_value(type);
    if (strcmp(t, "text") == 0)
        return 0;
    if (strcmp(t, "json_object") == 0) {
        *kind = SIMAPI_JSON_OBJECT;
        return 0;
    }
    if (strcmp(t, "json_schema") != 0)
        return simapi_bad_at(err, "response_format", ".type",
                             "must be \"text\", \"json_object\" or \"json_schema\"");
    const json_t *js = json_object_get(v, "json_schema");
    const json_t *strict = json_object_get(js, "strict");
    if (!json_is_object(js))
        return simapi_bad_at(err, "response_format", ".json_schema",
                             "missing or not an object");
    if (!json_is_string(json_object_get(js, "name")))
        return simapi_bad_at(err, "response_format", ".json_schema.name",
                             "missing or not a string");
    if (!json_is_object(json_object_get(js, "schema")))
        return simapi_bad_at(err, "response_format", ".json_schema.schema",
                             "missing or not an object");
    if (strict != NULL && !json_is_null(strict) && !json_is_boolean(strict))
        return simapi_bad_at(err, "response_format", ".json_schema.strict",
                             "must be a boolean");
    *kind = SIMAPI_JSON_SCHEMA;
    *schema = json_object_get(js, "schema");
    return 0;
}

/* Appends an assistant message's tool calls as the prompt shows them. */
static int simapi_render_calls(const json_t *calls, char **buf, size_t *len, size_t *cap)
{
    size_t j;
    json_t *tc;
    json_array_foreach(calls, j, tc)
    {
        const json_t *fn = json_object_get(tc, "function");
        json_t *o = json_pack("{s:O,s:O}", "name", json_object_get(fn, "name"),
                              "arguments", json_object_get(fn, "arguments"));
        char *s = o ? json_dumps(o, SIMAPI_RENDER_FLAGS) : NULL;
        json_decref(o);
        int rc = s != NULL && simapi_append(buf, len, cap, "<tool_call>", 11) == 0 &&
                         simapi_append(buf, len, cap, s, strlen(s)) == 0 &&
                         simapi_append(buf, len, cap, "</tool_call>", 12) == 0
                     ? 0
                     : -1;
        free(s);
        if (rc != 0)
            return -1;
    }
    return 0;
}

/*
 * The prompt of a checked request; the daemon renders the same bytes
 * (scheduler/chat/chain.c), so token counts and cache prefixes agree:
 *
 *   the system block, when there is a system message (the first message
 *   with role "system", wherever it is) or tools (a non-empty array):
 *     "<|im_start|>system\n" + its content
 *     + (tools? (content non-empty? "\n\n") + "# Tools\n" + tools dumped
 *       with SIMAPI_RENDER_FLAGS + "\n")
 *     + "<|im_end|>\n"
 *   every other message, in order:
 *     "<|im_start|>" + role + "\n" + content
 *     + (assistant: "<tool_call>" + {"name":..,"arguments":..} dumped the
 *       same way + "</tool_call>" for each of its tool_calls)
 *     + "<|im_end|>\n"
 *   then "<|im_start|>assistant\n".
 *
 * Returns 0 or -1 on ENOMEM.
 */
static int simapi_render(const json_t *messages, size_t sys_idx, const json_t *tools,
                         char **out, size_t *out_len)
{
    char *buf = NULL, *dumped = NULL;
    size_t len = 0, cap = 0, i;
    json_t *m;
    bool has_tools = json_array_size(tools) > 0;

    if (sys_idx != SIZE_MAX || has_tools) {
        if (simapi_append(&buf, &len, &cap, simapi_im_start, strlen(simapi_im_start)) !=
                0 ||
            simapi_append(&buf, &len, &cap, "system\n", 7) != 0)
            goto fail;
        size_t start = len;
        if (sys_idx != SIZE_MAX &&
            simapi_content(json_object_get(json_array_get(messages, sys_idx), "content"),
                           &buf, &len, &cap) != 0)
            goto fail;
        if (has_tools) {
            dumped = json_dumps(tools, SIMAPI_RENDER_FLAGS);
            if (!dumped ||
                (len > start && simapi_append(&buf, &len, &cap, "\n\n", 2) != 0) ||
                simapi_append(&buf, &len, &cap, "# Tools\n", 8) != 0 ||
                simapi_append(&buf, &len, &cap, dumped, strlen(dumped)) != 0 ||
                simapi_append(&buf, &len, &cap, "\n", 1) != 0)
                goto fail;
        }
        if (simapi_append(&buf, &len, &cap, simapi_im_end, strlen(simapi_im_end)) != 0)
            goto fail;
    }
    json_array_foreach(messages, i, m)
    {
        if (i == sys_idx)
            continue;
        const char *role = json_string_value(json_object_get(m, "role"));
        if (simapi_append(&buf, &len, &cap, simapi_im_start, strlen(simapi_im_start)) !=
                0 ||
            simapi_append(&buf, &len, &cap, role, strlen(role)) != 0 ||
            simapi_append(&buf, &len, &cap, "\n", 1) != 0 ||
            simapi_content(json_object_get(m, "content"), &buf, &len, &cap) != 0 ||
            (strcmp(role, "assistant") == 0 &&
             simapi_render_calls(json_object_get(m, "tool_calls"), &buf, &len, &cap) !=
                 0) ||
            simapi_append(&buf, &len, &cap, simapi_im_end, strlen(simapi_im_end)) != 0)
            goto fail;
    }
    /* The generation prompt the chat template ends with. */
    if (simapi_append(&buf, &len, &cap, simapi_im_start, strlen(simapi_im_start)) != 0 ||
        simapi_append(&buf, &len, &cap, "assistant\n", 10) != 0)
        goto fail;
    free(dumped);
    *out = buf;
    *out_len = len;
    return 0;

fail:
    free(dumped);
    free(buf);
    return -1;
}

/* True when needle[0..k) occurs in hay[0..n). */
static bool simapi_contains(const char *hay, size_t n, const char *needle, size_t k)
{
    if (k == 0 || k > n)
        return false;
    for (const char *p = hay, *end = hay + n - k + 1; p < end;) {
        const char *c = memchr(p, needle[0], (size_t)(end - p));
        if (!c)
            return false;
        if (memcmp(c, needle, k) == 0)
            return true;
        p = c + 1;
    }
    return false;
}

/* Decides the kind of answer (docs/simulator.md, "Tools, structured
 * output, logprobs, reasoning"): a tool call when the last user message
 * names a tool (or tool_choice forces one), else JSON for a
 * response_format, else a tool result's text after a tool message, else
 * words. Returns 0 or -1 on ENOMEM. */
static int simapi_plan(api_chat *out, const json_t *messages, const json_t *tools,
                       simapi_choice choice, const json_t *named, bool parallel,
                       simapi_kind format, const json_t *schema)
{
    const json_t *last = json_array_get(messages, json_array_size(messages) - 1);
    const char *role = json_string_value(json_object_get(last, "role"));
    char *text = NULL;
    size_t len = 0, cap = 0, i;
    json_t *t;
    api_plan *p = calloc(1, sizeof *p);
    if (!p || !(p->calls = json_array()))
        goto fail;
    if (json_array_size(tools) > 0 && choice != SIMAPI_CHOICE_NONE) {
        if (choice == SIMAPI_CHOICE_NAMED) {
            if (json_array_append(p->calls, (json_t *)named) != 0)
                goto fail;
        } else if (strcmp(role, "user") == 0) {
            if (simapi_content(json_object_get(last, "content"), &text, &len, &cap) != 0)
                goto fail;
            json_array_foreach(tools, i, t)
            {
                json_t *fn = json_object_get(t, "function");
                json_t *name = json_object_get(fn, "name");
                if (!simapi_contains(text ? text : "", len, json_string_value(name),
                                     json_string_length(name)))
                    continue;
                if (json_array_append(p->calls, fn) != 0)
                    goto fail;
                if (!parallel)
                    break;
            }
        }
        /* "required": the model must call something; the first tool then. */
        if (choice == SIMAPI_CHOICE_REQUIRED && json_array_size(p->calls) == 0 &&
            json_array_append(p->calls,
                              json_object_get(json_array_get(tools, 0), "function")) != 0)
            goto fail;
    }
    if (json_array_size(p->calls) > 0) {
        p->kind = SIMAPI_CALLS;
    } else if (format != SIMAPI_TEXT) {
        p->kind = format;
        p->schema = json_incref((json_t *)schema);
    } else if (strcmp(role, "tool") == 0) {
        p->kind = SIMAPI_TOOL_RESULT;
        len = 0;
        if (simapi_content(json_object_get(last, "content"), &text, &len, &cap) != 0)
            goto fail;
        size_t n = len < SIMAPI_TOOL_RESULT_BYTES ? len : SIMAPI_TOOL_RESULT_BYTES;
        /* Whole UTF-8 characters only: a quote is streamed as JSON text. */
        while (n > 0 && n < len && ((unsigned char)text[n] & 0xC0) == 0x80)
            n--;
        p->quote = malloc(n + 1);
        if (!p->quote)
            goto fail;
        if (n > 0)
            memcpy(p->quote, text, n);
        p->quote[n] = '\0';
        p->quote_len = n;
    }
    free(text);
    out->plan = p;
    return 0;

fail:
    free(text);
    simapi_plan_free(p);
    return -1;
}

int api_parse_chat(const char *body, size_t len, api_chat *out, char **err_body)
{
    json_error_t jerr;
    json_t *root = NULL, *v, *messages, *tools;
    int rc = 0;
    char msg[256];
    size_t sys_idx;
    simapi_choice choice;
    const json_t *named, *schema;
    simapi_kind format;
    bool parallel = false;

    memset(out, 0, sizeof *out);
    out->max_tokens = -1;
    out->id_slot = -1;
    out->cache_prompt = true;
    *err_body = NULL;

    root = json_loadb(body, len, 0, &jerr);
    if (!root) {
        snprintf(msg, sizeof msg, "invalid JSON body: %s (line %d, column %d)", jerr.text,
                 jerr.line, jerr.column);
        rc = simapi_bad(err_body, msg);
        goto fail;
    }
    if (!json_is_object(root)) {
        rc = simapi_bad(err_body, "the request body must be a JSON object");
        goto fail;
    }
    if (!json_object_get(root, "messages")) {
        rc = simapi_bad(err_body, "'messages' is a required property");
        goto fail;
    }

    v = json_object_get(root, "model");
    if (v && !json_is_string(v) && !json_is_null(v)) {
        rc = simapi_bad(err_body, "'model' must be a string");
        goto fail;
    }
    v = json_object_get(root, "stream");
    if (v && !json_is_boolean(v) && !json_is_null(v)) {
        rc = simapi_bad(err_body, "'stream' must be a boolean");
        goto fail;
    }
    out->stream = json_is_true(v);
    v = json_object_get(root, "stream_options");
    if (v && !json_is_null(v)) {
        json_t *iu = json_object_get(v, "include_usage");
        if (!json_is_object(v) || (iu && !json_is_boolean(iu))) {
            rc = simapi_bad(err_body,
                            "'stream_options' must be {\"include_usage\": bool}");
            goto fail;
        }
        out->include_usage = json_is_true(iu);
    }
    /* OpenAI's two names and llama.cpp's own; the first one given wins. */
    static const char *const limit_keys[] = {"max_tokens", "max_completion_tokens",
                                             "n_predict"};
    for (size_t k = 0; k < sizeof limit_keys / sizeof limit_keys[0]; k++) {
        v = json_object_get(root, limit_keys[k]);
        if (!v || json_is_null(v))
            continue;
        if (!json_is_integer(v) ||
            (json_integer_value(v) < 1 && json_integer_value(v) != -1)) {
            snprintf(msg, sizeof msg, "'%s' must be a positive integer or -1",
                     limit_keys[k]);
            rc = simapi_bad(err_body, msg);
            goto fail;
        }
        out->max_tokens = json_integer_value(v);
        break;
    }
    v = json_object_get(root, "cache_prompt");
    if (v && !json_is_boolean(v)) {
        rc = simapi_bad(err_body, "'cache_prompt' must be a boolean");
        goto fail;
    }
    if (v)
        out->cache_prompt = json_is_true(v);
    v = json_object_get(root, "id_slot");
    if (v && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < -1 ||
            json_integer_value(v) >= (json_int_t)SIMCFG_MAX_SLOTS) {
            rc = simapi_bad(err_body, "'id_slot' must be -1 or a slot number");
            goto fail;
        }
        out->id_slot = (int)json_integer_value(v);
    }
    v = json_object_get(root, "ignore_eos");
    if (v && !json_is_boolean(v)) {
        rc = simapi_bad(err_body, "'ignore_eos' must be a boolean");
        goto fail;
    }
    out->ignore_eos = json_is_true(v);
    v = json_object_get(root, "seed");
    if (v && !json_is_null(v)) {
        if (!json_is_integer(v)) {
            rc = simapi_bad(err_body, "'seed' must be an integer");
            goto fail;
        }
        out->seed = (uint64_t)json_integer_value(v);
    }
    static const char *const number_keys[] = {"temperature", "top_p"};
    for (size_t k = 0; k < sizeof number_keys / sizeof number_keys[0]; k++) {
        v = json_object_get(root, number_keys[k]);
        if (v && !json_is_number(v) && !json_is_null(v)) {
            snprintf(msg, sizeof msg, "'%s' must be a number", number_keys[k]);
            rc = simapi_bad(err_body, msg);
            goto fail;
        }
    }
    v = json_object_get(root, "stop");
    if (v && !json_is_null(v) && !json_is_string(v)) {
        bool ok = json_is_array(v);
        for (size_t i = 0; ok && i < json_array_size(v); i++)
            ok = json_is_string(json_array_get(v, i));
        if (!ok) {
            rc = simapi_bad(err_body, "'stop' must be a string or an array of strings");
            goto fail;
        }
    }
    /* Other sampling fields (top_k, min_p, repeat_penalty, logit_bias, ...)
     * are accepted and ignored, as a model without sampling can. */
    v = json_object_get(root, "logprobs");
    if (v && !json_is_null(v) && !json_is_boolean(v)) {
        rc = simapi_bad_at(err_body, "logprobs", "", "must be a boolean");
        goto fail;
    }
    out->logprobs = json_is_true(v);
    v = json_object_get(root, "top_logprobs");
    if (v && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) > (json_int_t)SIMAPI_MAX_TOP_LOGPROBS) {
            rc = simapi_bad_at(err_body, "top_logprobs", "",
                               "must be an integer from 0 to 20");
            goto fail;
        }
        out->top_logprobs = (unsigned)json_integer_value(v);
    }

    tools = json_object_get(root, "tools");
    if (json_is_null(tools))
        tools = NULL;
    if (tools && (rc = simapi_check_tools(tools, err_body)) != 0)
        goto fail;
    if ((rc = simapi_tool_choice(json_object_get(root, "tool_choice"), tools, &choice,
                                 &named, err_body)) != 0)
        goto fail;
    v = json_object_get(root, "parallel_tool_calls");
    if (v && !json_is_null(v) && !json_is_boolean(v)) {
        rc = simapi_bad_at(err_body, "parallel_tool_calls", "", "must be a boolean");
        goto fail;
    }
    parallel = json_is_true(v);
    if ((rc = simapi_response_format(json_object_get(root, "response_format"), &format,
                                     &schema, err_body)) != 0)
        goto fail;

    messages = json_object_get(root, "messages");
    if ((rc = simapi_check_messages(messages, &sys_idx, err_body)) != 0)
        goto fail;
    if (simapi_render(messages, sys_idx, tools, &out->prompt, &out->prompt_len) != 0 ||
        simapi_plan(out, messages, tools, choice, named, parallel, format, schema) != 0) {
        *err_body = api_error_json("server_error", "out of memory");
        rc = 500;
        goto fail;
    }
    json_decref(root);
    return 0;

fail:
    json_decref(root);
    api_chat_fini(out);
    return rc;
}

void api_chat_fini(api_chat *c)
{
    if (!c)
        return;
    free(c->prompt);
    c->prompt = NULL;
    c->prompt_len = 0;
    simapi_plan_free(c->plan);
    c->plan = NULL;
}

/* splitmix64's finalizer: ids and logprobs from the reply's seed. */
static uint64_t simapi_mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* A JSON string's text as it appears inside a dumped document, without the
 * quotes. Malloc'd; NULL on ENOMEM (or invalid UTF-8). */
static char *simapi_escape(const char *s, size_t n, size_t *out_len)
{
    json_t *str = json_stringn(s, n);
    char *d = str ? json_dumps(str, JSON_ENCODE_ANY | SIMAPI_RENDER_FLAGS) : NULL;
    json_decref(str);
    if (!d)
        return NULL;
    *out_len = strlen(d) - 2;
    memmove(d, d + 1, *out_len);
    d[*out_len] = '\0';
    return d;
}

/*
 * Call k of a reply: id "call_" + 8 hex digits of the reply's seed, the
 * arguments an example of the tool's parameters schema. The slot cache
 * gets what the prompt shows when the client sends the call back:
 * "<tool_call>{"name":N,"arguments":"<the arguments, escaped>"}</tool_call>",
 * the head token holding everything up to the arguments' opening quote,
 * each argument fragment its escaped text, the last one the closing part.
 */
static int simapi_add_call(sim_reply *r, uint64_t seed, unsigned k, const json_t *fn)
{
    char id[SIMREPLY_CALL_ID_LEN + 1];
    const json_t *name = json_object_get(fn, "name");
    const json_t *params = json_object_get(fn, "parameters");
    uint64_t call_seed = simapi_mix(seed ^ ((uint64_t)(k + 1) * 0x9e3779b97f4a7c15ULL));
    json_t *example = NULL;
    char *args = NULL, *head = NULL, *esc = NULL, *frag = NULL;
    size_t head_len = 0, head_cap = 0, esc_len = 0, frag_cap = 0;
    int rc = -1;

    snprintf(id, sizeof id, "call_%08x", (unsigned)(call_seed & 0xffffffffu));
    if (json_is_object(params)) {
        example = simschema_example(params, call_seed);
        if (!example)
            goto out;
    }
    args =
        json_is_object(example) ? json_dumps(example, SIMAPI_RENDER_FLAGS) : strdup("{}");
    esc = simapi_escape(json_string_value(name), json_string_length(name), &esc_len);
    if (!args || !esc ||
        simapi_append(&head, &head_len, &head_cap, "<tool_call>{\"name\":\"", 20) != 0 ||
        simapi_append(&head, &head_len, &head_cap, esc, esc_len) != 0 ||
        simapi_append(&head, &head_len, &head_cap, "\",\"arguments\":\"", 15) != 0 ||
        simreply_add_call(r, id, json_string_value(name), head, head_len) != 0)
        goto out;
    size_t n = strlen(args);
    for (size_t off = 0; off < n;) {
        size_t end = simreply_cut(args, n, off), frag_len = 0;
        free(esc);
        esc = simapi_escape(args + off, end - off, &esc_len);
        if (!esc || simapi_append(&frag, &frag_len, &frag_cap, esc, esc_len) != 0 ||
            (end == n &&
             simapi_append(&frag, &frag_len, &frag_cap, "\"}</tool_call>", 14) != 0) ||
            simreply_add_args(r, args + off, end - off, frag, frag_len) != 0)
            goto out;
        off = end;
    }
    rc = 0;
out:
    json_decref(example);
    free(args);
    free(head);
    free(esc);
    free(frag);
    return rc;
}

/* Words of a reply joined by spaces, for a JSON answer. */
#define SIMAPI_MAX_ANSWER_WORDS 65536u

int api_chat_reply(const sim_config *cfg, const api_chat *c, sim_reply **out)
{
    uint64_t seed = simeng_reply_seed(cfg, c->prompt, c->prompt_len, c->seed);
    sim_reply *r = NULL;
    json_t *v = NULL;
    char *s = NULL;
    size_t len = 0, cap = 0;
    const api_plan *p = c->plan;
    simapi_kind kind = p ? p->kind : SIMAPI_TEXT;

    *out = NULL;
    if (simreply_alloc(&r, seed, cfg->reasoning_tokens) != 0)
        goto fail;
    simreply_set_logprobs(r, c->logprobs, c->top_logprobs);
    switch (kind) {
    case SIMAPI_TEXT:
        simreply_set_words(r, cfg->reply_tokens);
        break;
    case SIMAPI_TOOL_RESULT: {
        if (simapi_append(&s, &len, &cap, "Tool result: ", 13) != 0 ||
            simapi_append(&s, &len, &cap, p->quote, p->quote_len) != 0 ||
            simapi_append(&s, &len, &cap, " ", 1) != 0 ||
            simreply_add_text(r, s, len) != 0)
            goto fail;
        unsigned pieces = 0;
        for (size_t off = 0; off < len; off = simreply_cut(s, len, off))
            pieces++;
        simreply_set_words(r,
                           cfg->reply_tokens > pieces ? cfg->reply_tokens - pieces : 0);
        break;
    }
    case SIMAPI_JSON_OBJECT: {
        unsigned n = cfg->reply_tokens < SIMAPI_MAX_ANSWER_WORDS
                         ? cfg->reply_tokens
                         : SIMAPI_MAX_ANSWER_WORDS;
        for (unsigned i = 0; i < n; i++) {
            if (simapi_append(&s, &len, &cap, simeng_word(seed, i),
                              SIMENG_BYTES_PER_TOKEN) != 0)
                goto fail;
        }
        /* The words without the last one's trailing space. */
        v = json_pack("{s:s%}", "answer", s ? s : "", len > 0 ? len - 1 : 0);
        free(s);
        s = v ? json_dumps(v, SIMAPI_RENDER_FLAGS) : NULL;
        if (!s || simreply_add_text(r, s, strlen(s)) != 0)
            goto fail;
        break;
    }
    case SIMAPI_JSON_SCHEMA:
        v = simschema_example(p->schema, seed);
        s = v ? json_dumps(v, JSON_ENCODE_ANY | SIMAPI_RENDER_FLAGS) : NULL;
        if (!s || simreply_add_text(r, s, strlen(s)) != 0)
            goto fail;
        break;
    case SIMAPI_CALLS:
        for (size_t k = 0; k < json_array_size(p->calls); k++) {
            if (simapi_add_call(r, seed, (unsigned)k, json_array_get(p->calls, k)) != 0)
                goto fail;
        }
        break;
    }
    json_decref(v);
    free(s);
    *out = r;
    return 0;

fail:
    json_decref(v);
    free(s);
    simreply_free(r);
    return -1;
}

/* {"id":..,"object":..,"created":..,"model":..} shared by every response. */
static json_t *simapi_head(const sim_config *cfg, const sim_view *v, const char *object)
{
    char id[40];
    snprintf(id, sizeof id, "chatcmpl-%llu", (unsigned long long)v->id);
    return json_pack("{s:s,s:s,s:I,s:s}", "id", id, "object", object, "created",
                     (json_int_t)v->created, "model", cfg->model);
}

static json_t *simapi_usage(const sim_view *v)
{
    return json_pack("{s:I,s:I,s:I,s:{s:I}}", "prompt_tokens", (json_int_t)v->prompt_n,
                     "completion_tokens", (json_int_t)v->n_gen, "total_tokens",
                     (json_int_t)v->prompt_n + (json_int_t)v->n_gen,
                     "prompt_tokens_details", "cached_tokens", (json_int_t)v->cache_n);
}

static json_t *simapi_timings(const sim_view *v)
{
    /* llama.cpp's prompt_n counts the tokens processed, not the cached ones. */
    unsigned processed = v->prompt_n - v->cache_n;
    double p_ms = v->prompt_ms, d_ms = v->predicted_ms;
    return json_pack(
        "{s:I,s:I,s:f,s:f,s:f,s:I,s:f,s:f,s:f}", "cache_n", (json_int_t)v->cache_n,
        "prompt_n", (json_int_t)processed, "prompt_ms", p_ms, "prompt_per_token_ms",
        processed ? p_ms / processed : 0.0, "prompt_per_second",
        p_ms > 0 ? processed * 1000.0 / p_ms : 0.0, "predicted_n", (json_int_t)v->n_gen,
        "predicted_ms", d_ms, "predicted_per_token_ms", v->n_gen ? d_ms / v->n_gen : 0.0,
        /* llama.cpp's formula: the first token's time is in prompt_ms */
        "predicted_per_second", d_ms > 0 ? v->n_gen * 1000.0 / d_ms : 0.0);
}

/* The finish reason: a reply of tool calls that ended by itself says so. */
static const char *simapi_finish(const sim_view *v)
{
    const char *f = v->finish_reason ? v->finish_reason : "stop";
    if (strcmp(f, "stop") == 0 && v->reply && simreply_calls(v->reply) > 0)
        return "tool_calls";
    return f;
}

/* {"token":t,"logprob":lp,"bytes":[...]}. NULL on ENOMEM. */
static json_t *simapi_lp_entry(const char *t, size_t n, double lp)
{
    json_t *bytes = json_array();
    for (size_t b = 0; bytes && b < n; b++) {
        if (json_array_append_new(bytes, json_integer((unsigned char)t[b])) != 0) {
            json_decref(bytes);
            bytes = NULL;
        }
    }
    return bytes
               ? json_pack("{s:s%,s:f,s:o}", "token", t, n, "logprob", lp, "bytes", bytes)
               : NULL;
}

/* The logprobs "content" entry of token i of the reply: a deterministic
 * logprob in [-2, -0.001], and `top` top_logprobs entries: the token
 * itself, then other words, each 0.5 less likely. NULL on ENOMEM. */
static json_t *simapi_logprob(const sim_reply *r, unsigned i, const char *text,
                              size_t len, unsigned top)
{
    uint64_t h =
        simapi_mix(simreply_seed(r) ^ ((uint64_t)(i + 1) * 0xd1b54a32d192ed03ULL));
    double lp = -(double)(1 + h % 2000) / 1000.0;
    json_t *e = simapi_lp_entry(text, len, lp), *alts = json_array();
    if (!e || !alts)
        goto fail;
    for (unsigned k = 0; k < top; k++) {
        json_t *alt = k == 0 ? simapi_lp_entry(text, len, lp)
                             : simapi_lp_entry(simeng_word(h, k), SIMENG_BYTES_PER_TOKEN,
                                               lp - 0.5 * k);
        if (json_array_append_new(alts, alt) != 0)
            goto fail;
    }
    if (json_object_set_new(e, "top_logprobs", alts) != 0) {
        alts = NULL;
        goto fail;
    }
    return e;
fail:
    json_decref(alts);
    json_decref(e);
    return NULL;
}

/* A chunk with one choice whose delta is `delta` and logprobs `logprobs`
 * (both stolen; logprobs may be NULL: none). */
static char *simapi_chunk(const sim_config *cfg, const sim_view *v, json_t *delta,
                          json_t *logprobs, const char *finish, bool timings)
{
    json_t *o = simapi_head(cfg, v, "chat.completion.chunk");
    json_t *choice = json_pack("{s:i,s:o}", "index", 0, "delta", delta);
    if (!o || !choice ||
        (logprobs && json_object_set_new(choice, "logprobs", logprobs) != 0) ||
        json_object_set_new(choice, "finish_reason",
                            finish ? json_string(finish) : json_null()) != 0 ||
        json_object_set_new(o, "choices", json_pack("[o]", choice)) != 0 ||
        (timings && json_object_set_new(o, "timings", simapi_timings(v)) != 0)) {
        json_decref(o);
        return NULL;
    }
    return simapi_dump(o);
}

char *api_chunk_role(const sim_config *cfg, const sim_view *v)
{
    return simapi_chunk(cfg, v,
                        json_pack("{s:s,s:s}", "role", "assistant", "content", ""), NULL,
                        NULL, false);
}

char *api_chunk_content(const sim_config *cfg, const sim_view *v, const char *text)
{
    return simapi_chunk(cfg, v, json_pack("{s:s}", "content", text), NULL, NULL, false);
}

char *api_chunk_piece(const sim_config *cfg, const sim_view *v, unsigned i)
{
    sim_piece pc;
    unsigned top = 0;
    json_t *lp = NULL, *delta = NULL;
    if (!v->reply)
        return api_chunk_content(cfg, v, simeng_word(v->word_seed, i));
    simreply_piece(v->reply, i, &pc);
    switch (pc.kind) {
    case SIM_PIECE_REASONING:
        delta = json_pack("{s:s%}", "reasoning_content", pc.text, pc.len);
        break;
    case SIM_PIECE_CONTENT:
        delta = json_pack("{s:s%}", "content", pc.text, pc.len);
        if (simreply_logprobs(v->reply, &top)) {
            json_t *e = simapi_logprob(v->reply, i, pc.text, pc.len, top);
            lp = e ? json_pack("{s:[o]}", "content", e) : NULL;
            if (!lp) {
                json_decref(delta);
                return NULL;
            }
        }
        break;
    case SIM_PIECE_CALL_HEAD:
        delta = json_pack("{s:[{s:I,s:s,s:s,s:{s:s,s:s}}]}", "tool_calls", "index",
                          (json_int_t)pc.call, "id", simreply_call_id(v->reply, pc.call),
                          "type", "function", "function", "name",
                          simreply_call_name(v->reply, pc.call), "arguments", "");
        break;
    case SIM_PIECE_CALL_ARGS:
        delta = json_pack("{s:[{s:I,s:{s:s%}}]}", "tool_calls", "index",
                          (json_int_t)pc.call, "function", "arguments", pc.text, pc.len);
        break;
    }
    if (!delta) {
        json_decref(lp);
        return NULL;
    }
    return simapi_chunk(cfg, v, delta, lp, NULL, false);
}

char *api_chunk_final(const sim_config *cfg, const sim_view *v)
{
    return simapi_chunk(cfg, v, json_object(), NULL, simapi_finish(v), true);
}

char *api_chunk_usage(const sim_config *cfg, const sim_view *v)
{
    json_t *o = simapi_head(cfg, v, "chat.completion.chunk");
    if (!o || json_object_set_new(o, "choices", json_array()) != 0 ||
        json_object_set_new(o, "usage", simapi_usage(v)) != 0) {
        json_decref(o);
        return NULL;
    }
    return simapi_dump(o);
}

/* Appends {"id","type","function":{"name","arguments"}} for call k. */
static int simapi_add_call_json(json_t *calls, const sim_reply *r, unsigned k,
                                const char *args, size_t len)
{
    return json_array_append_new(
        calls, json_pack("{s:s,s:s,s:{s:s,s:s%}}", "id", simreply_call_id(r, k), "type",
                         "function", "function", "name", simreply_call_name(r, k),
                         "arguments", args ? args : "", len));
}

/* The message of a finished reply: content (null when the answer is tool
 * calls and nothing else), reasoning_content and tool_calls when there
 * are any (the arguments generated so far); *logprobs the content tokens'
 * entries when asked (else NULL). NULL on ENOMEM. */
static json_t *simapi_message(const sim_view *v, json_t **logprobs)
{
    char *content = NULL, *reasoning = NULL, *args = NULL;
    size_t clen = 0, ccap = 0, rlen = 0, rcap = 0, alen = 0, acap = 0;
    json_t *msg = NULL, *calls = NULL, *lps = NULL;
    unsigned top = 0;
    bool want_lp = v->reply && simreply_logprobs(v->reply, &top), in_call = false;
    unsigned call = 0;
    sim_piece pc;

    *logprobs = NULL;
    if (!(calls = json_array()) || (want_lp && !(lps = json_array())))
        goto fail;
    for (unsigned i = 0; i < v->n_gen; i++) {
        if (!v->reply) {
            if (simapi_append(&content, &clen, &ccap, simeng_word(v->word_seed, i),
                              SIMENG_BYTES_PER_TOKEN) != 0)
                goto fail;
            continue;
        }
        simreply_piece(v->reply, i, &pc);
        switch (pc.kind) {
        case SIM_PIECE_REASONING:
            if (simapi_append(&reasoning, &rlen, &rcap, pc.text, pc.len) != 0)
                goto fail;
            break;
        case SIM_PIECE_CONTENT:
            if (simapi_append(&content, &clen, &ccap, pc.text, pc.len) != 0 ||
                (lps && json_array_append_new(
                            lps, simapi_logprob(v->reply, i, pc.text, pc.len, top)) != 0))
                goto fail;
            break;
        case SIM_PIECE_CALL_HEAD:
            /* A call's pieces are contiguous: a head ends the previous call. */
            if (in_call && simapi_add_call_json(calls, v->reply, call, args, alen) != 0)
                goto fail;
            in_call = true;
            call = pc.call;
            alen = 0;
            break;
        case SIM_PIECE_CALL_ARGS:
            if (simapi_append(&args, &alen, &acap, pc.text, pc.len) != 0)
                goto fail;
            break;
        }
    }
    if (in_call && simapi_add_call_json(calls, v->reply, call, args, alen) != 0)
        goto fail;
    msg = json_pack("{s:s}", "role", "assistant");
    if (!msg ||
        json_object_set_new(msg, "content",
                            clen > 0 || json_array_size(calls) == 0
                                ? json_stringn(content ? content : "", clen)
                                : json_null()) != 0 ||
        (rlen > 0 && json_object_set_new(msg, "reasoning_content",
                                         json_stringn(reasoning, rlen)) != 0) ||
        (json_array_size(calls) > 0 && json_object_set(msg, "tool_calls", calls) != 0))
        goto fail;
    if (lps) {
        *logprobs = json_pack("{s:o}", "content", lps);
        lps = NULL;
        if (!*logprobs)
            goto fail;
    }
    json_decref(calls);
    free(content);
    free(reasoning);
    free(args);
    return msg;

fail:
    json_decref(msg);
    json_decref(calls);
    json_decref(lps);
    free(content);
    free(reasoning);
    free(args);
    return NULL;
}

char *api_completion(const sim_config *cfg, const sim_view *v)
{
    json_t *lp = NULL;
    json_t *msg = simapi_message(v, &lp);
    json_t *o = simapi_head(cfg, v, "chat.completion");
    if (!msg || !o ||
        json_object_set_new(o, "choices",
                            json_pack("[{s:i,s:o,s:o,s:s}]", "index", 0, "message", msg,
                                      "logprobs", lp ? lp : json_null(), "finish_reason",
                                      simapi_finish(v))) != 0 ||
        json_object_set_new(o, "usage", simapi_usage(v)) != 0 ||
        json_object_set_new(o, "timings", simapi_timings(v)) != 0) {
        json_decref(o);
        return NULL;
    }
    return simapi_dump(o);
}

int api_template(const api_chat *c, char **out)
{
    *out = simapi_dump(json_pack("{s:s%}", "prompt", c->prompt, c->prompt_len));
    if (*out == NULL)
        return 500;
    return 0;
}

int api_tokenize(const char *body, size_t len, char **out)
{
    json_error_t jerr;
    json_t *root = json_loadb(body, len, 0, &jerr);
    json_t *content = json_object_get(root, "content");
    json_t *tokens = NULL;
    int rc = 500;
    *out = NULL;
    if (!json_is_string(content)) {
        json_decref(root);
        *out = api_param_error_json("content", "'content' must be a string");
        return 400;
    }
    /* The engine's tokenizer: one token per SIMENG_BYTES_PER_TOKEN bytes of
     * the prompt, at least one. Each token's id is drawn from its bytes, so
     * the same text gives the same ids, as a real tokenizer does. */
    const unsigned char *p = (const unsigned char *)json_string_value(content);
    size_t n = json_string_length(content);
    unsigned count = simeng_tokens(n);
    tokens = json_array();
    if (tokens == NULL)
        goto done;
    for (unsigned i = 0; i < (count < 1 ? 1 : count); i++) {
        uint32_t h = 2166136261u;
        for (size_t k = (size_t)i * SIMENG_BYTES_PER_TOKEN;
             k < n && k < ((size_t)i + 1) * SIMENG_BYTES_PER_TOKEN; k++)
            h = (h ^ p[k]) * 16777619u;
        if (json_array_append_new(tokens, json_integer((json_int_t)(h % 32000u))) != 0)
            goto done;
    }
    *out = simapi_dump(json_pack("{s:o}", "tokens", tokens));
    tokens = NULL; /* the pack took it, also on failure */
    rc = *out != NULL ? 0 : 500;
done:
    json_decref(tokens);
    json_decref(root);
    return rc;
}

char *api_models_openai(const sim_config *cfg)
{
    return simapi_dump(json_pack("{s:[{s:s,s:s,s:s}],s:s}", "data", "id", cfg->model,
                                 "object", "model", "owned_by", "organization_owner",
                                 "object", "list"));
}

char *api_models_lmstudio(const sim_config *cfg)
{
    unsigned max_ctx = cfg->ctx > SIMAPI_MODEL_MAX_CTX ? cfg->ctx : SIMAPI_MODEL_MAX_CTX;
    return simapi_dump(json_pack(
        "{s:[{s:s,s:s,s:s,s:s,s:s,s:{s:s,s:i},s:I,s:s,"
        "s:[{s:s,s:{s:I,s:I,s:i,s:b,s:b}}],s:I,s:s,s:{s:b,s:b},s:n}]}",
        "models", "type", "llm", "publisher", "lmsim", "key", cfg->model, "display_name",
        cfg->model, "architecture", "llama", "quantization", "name", "Q4_K_M",
        "bits_per_weight", 4, "size_bytes", (json_int_t)cfg->model_size, "params_string",
        "8B", "loaded_instances", "id", cfg->model, "config", "context_length",
        (json_int_t)cfg->ctx, "parallel", (json_int_t)cfg->slots, "eval_batch_size", 512,
        "flash_attention", 1, "offload_kv_cache_to_gpu", 1, "max_context_length",
        (json_int_t)max_ctx, "format", "gguf", "capabilities", "vision", 0,
        "trained_for_tool_use", 0, "description"));
}

static json_t *simapi_config(const sim_config *cfg)
{
    json_t *c = json_pack(
        "{s:I,s:I,s:s,s:I,s:f,s:f,s:f,s:f,s:f,s:I,s:f,s:I,s:b,s:f,s:f,s:f,s:I,s:I}",
        "slots", (json_int_t)cfg->slots, "ctx", (json_int_t)cfg->ctx, "model", cfg->model,
        "model_size", (json_int_t)cfg->model_size, "slot_similarity",
        cfg->slot_similarity, "prefill_tps", cfg->prefill_tps, "decode_tps",
        cfg->decode_tps, "batch_slowdown", cfg->batch_slowdown, "time_scale",
        cfg->time_scale, "reply_tokens", (json_int_t)cfg->reply_tokens, "fail_rate",
        cfg->fail_rate, "crash_after", (json_int_t)cfg->crash_after, "crash_exit",
        cfg->crash_exit, "spike_rate", cfg->spike_rate, "spike_ms", cfg->spike_ms,
        "malformed_rate", cfg->malformed_rate, "refuse_ms", (json_int_t)cfg->refuse_ms,
        "seed", (json_int_t)cfg->seed);
    static const char *const modes[] = {"json", "truncate", "html", "huge", "any"};
    int gm = cfg->garbage_mode >= 0 && cfg->garbage_mode <= 4 ? cfg->garbage_mode : 4;
    if (c != NULL &&
        (json_object_set_new(c, "hang_rate", json_real(cfg->hang_rate)) != 0 ||
         json_object_set_new(c, "garbage_rate", json_real(cfg->garbage_rate)) != 0 ||
         json_object_set_new(c, "garbage_mode", json_string(modes[gm])) != 0 ||
         json_object_set_new(c, "garbage_bytes",
                             json_integer((json_int_t)cfg->garbage_bytes)) != 0 ||
         json_object_set_new(c, "instant", json_boolean(cfg->instant)) != 0 ||
         json_object_set_new(c, "reasoning_tokens",
                             json_integer((json_int_t)cfg->reasoning_tokens)) != 0 ||
         json_object_set_new(c, "no_tokenize", json_boolean(cfg->no_tokenize)) != 0)) {
        json_decref(c);
        return NULL;
    }
    return c;
}

char *api_stats(const sim_config *cfg, const sim_stats *st)
{
    json_t *slots = json_array();
    json_t *o = NULL;
    if (!slots)
        return NULL;
    for (unsigned i = 0; i < st->n_slots; i++) {
        if (json_array_append_new(
                slots, json_pack("{s:I,s:b,s:I}", "id", (json_int_t)st->slots[i].id,
                                 "busy", st->slots[i].busy, "cached_tokens",
                                 (json_int_t)st->slots[i].cached_tokens)) != 0) {
            json_decref(slots);
            return NULL;
        }
    }
    o = json_pack(
        "{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:{s:I,s:I,s:I,s:I,s:I,s:I},"
        "s:f,s:o,s:o}",
        "requests", (json_int_t)st->requests, "prompt_tokens",
        (json_int_t)st->prompt_tokens, "prefill_tokens", (json_int_t)st->prefill_tokens,
        "cached_tokens", (json_int_t)st->cached_tokens, "completion_tokens",
        (json_int_t)st->completion_tokens, "max_active", (json_int_t)st->max_active,
        "active", (json_int_t)st->active, "queued", (json_int_t)st->queued,
        "errors_injected", (json_int_t)st->errors_injected, "crashes",
        (json_int_t)st->fault_crashes, "faults", "fail", (json_int_t)st->fault_fail,
        "crash", (json_int_t)st->fault_crashes, "cut", (json_int_t)st->fault_cut,
        "crash_failed", (json_int_t)st->fault_crash_failed, "spike",
        (json_int_t)st->fault_spike, "malformed", (json_int_t)st->fault_malformed,
        "sim_ms", st->sim_ms, "slots", slots, "config", simapi_config(cfg));
    /* Added after the pack: its format string is long enough already. */
    json_t *faults = json_object_get(o, "faults");
    if (faults == NULL ||
        json_object_set_new(faults, "hang", json_integer((json_int_t)st->fault_hang)) != 0 ||
        json_object_set_new(faults, "garbage", json_integer((json_int_t)st->fault_garbage)) !=
            0 ||
        json_object_set_new(o, "hanging", json_integer((json_int_t)st->hanging)) != 0 ||
        json_object_set_new(o, "template_requests",
                            json_integer((json_int_t)st->template_requests)) != 0 ||
        json_object_set_new(o, "tokenize_requests",
                            json_integer((json_int_t)st->tokenize_requests)) != 0) {
        json_decref(o);
        return NULL;
    }
    return simapi_dump(o);
}
