/*
 * simapi - JSON in and out for lmsim (jansson). Response shapes follow
 * OpenAI's chat.completion / chat.completion.chunk objects with llama.cpp's
 * "timings" added, and LM Studio 0.4's GET /api/v1/models.
 */
#include "sim/api.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

int api_render_message(char **buf, size_t *len, size_t *cap, const char *role,
                       const char *content, size_t content_len)
{
    if (simapi_append(buf, len, cap, simapi_im_start, strlen(simapi_im_start)) != 0 ||
        simapi_append(buf, len, cap, role, strlen(role)) != 0 ||
        simapi_append(buf, len, cap, "\n", 1) != 0 ||
        simapi_append(buf, len, cap, content, content_len) != 0 ||
        simapi_append(buf, len, cap, simapi_im_end, strlen(simapi_im_end)) != 0)
        return -1;
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

/* Appends one message's content: a string, null, or an array of parts of
 * which the "text" ones count. Returns 0, -1 on a wrong shape, -2 ENOMEM. */
static int simapi_content(json_t *content, char **buf, size_t *len, size_t *cap)
{
    if (json_is_null(content))
        return 0;
    if (json_is_string(content))
        return simapi_append(buf, len, cap, json_string_value(content),
                             json_string_length(content)) == 0
                   ? 0
                   : -2;
    if (!json_is_array(content))
        return -1;
    size_t i;
    json_t *part;
    json_array_foreach(content, i, part)
    {
        json_t *type = json_object_get(part, "type");
        json_t *text = json_object_get(part, "text");
        if (!json_is_object(part) || !json_is_string(type))
            return -1;
        if (strcmp(json_string_value(type), "text") != 0)
            continue; /* images and the like cost nothing here */
        if (!json_is_string(text))
            return -1;
        if (simapi_append(buf, len, cap, json_string_value(text),
                          json_string_length(text)) != 0)
            return -2;
    }
    return 0;
}

/* Renders messages into out->prompt. Returns 0 or an HTTP status. */
static int simapi_render(json_t *messages, api_chat *out, char **err_body)
{
    char *buf = NULL, *content = NULL;
    size_t len = 0, cap = 0, clen = 0, ccap = 0;
    int rc = 0;
    size_t i;
    json_t *m;

    if (!json_is_array(messages) || json_array_size(messages) == 0) {
        rc = simapi_bad(err_body, "'messages' must be a non-empty array");
        goto fail;
    }
    if (json_array_size(messages) > SIMAPI_MAX_MESSAGES) {
        rc = simapi_bad(err_body, "too many messages");
        goto fail;
    }
    json_array_foreach(messages, i, m)
    {
        json_t *role = json_object_get(m, "role");
        if (!json_is_object(m) || !json_is_string(role) ||
            json_string_length(role) == 0 || json_string_length(role) > SIMAPI_MAX_ROLE ||
            strlen(json_string_value(role)) != json_string_length(role)) {
            rc = simapi_bad(err_body, "each message needs a 'role' string");
            goto fail;
        }
        clen = 0;
        int crc = simapi_content(json_object_get(m, "content"), &content, &clen, &ccap);
        if (crc == -1) {
            rc = simapi_bad(
                err_body,
                "message 'content' must be a string, null or an array of parts");
            goto fail;
        }
        if (crc == -2 || api_render_message(&buf, &len, &cap, json_string_value(role),
                                            clen ? content : "", clen) != 0)
            goto nomem;
    }
    /* The generation prompt the chat template ends with. */
    if (simapi_append(&buf, &len, &cap, simapi_im_start, strlen(simapi_im_start)) != 0 ||
        simapi_append(&buf, &len, &cap, "assistant\n", 10) != 0)
        goto nomem;
    free(content);
    out->prompt = buf;
    out->prompt_len = len;
    return 0;

nomem:
    *err_body = api_error_json("server_error", "out of memory");
    rc = 500;
fail:
    free(content);
    free(buf);
    return rc;
}

int api_parse_chat(const char *body, size_t len, api_chat *out, char **err_body)
{
    json_error_t jerr;
    json_t *root = NULL, *v;
    int rc = 0;
    char msg[256];

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

    rc = simapi_render(json_object_get(root, "messages"), out, err_body);
    if (rc != 0)
        goto fail;
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

/* A chunk with one choice whose delta is `delta` (stolen). */
static char *simapi_chunk(const sim_config *cfg, const sim_view *v, json_t *delta,
                          const char *finish, bool timings)
{
    json_t *o = simapi_head(cfg, v, "chat.completion.chunk");
    json_t *choice =
        json_pack("{s:i,s:o,s:o}", "index", 0, "delta", delta, "finish_reason",
                  finish ? json_string(finish) : json_null());
    if (!o || !choice ||
        json_object_set_new(o, "choices", json_pack("[o]", choice)) != 0 ||
        (timings && json_object_set_new(o, "timings", simapi_timings(v)) != 0)) {
        json_decref(o);
        return NULL;
    }
    return simapi_dump(o);
}

char *api_chunk_role(const sim_config *cfg, const sim_view *v)
{
    return simapi_chunk(
        cfg, v, json_pack("{s:s,s:s}", "role", "assistant", "content", ""), NULL, false);
}

char *api_chunk_content(const sim_config *cfg, const sim_view *v, const char *text)
{
    return simapi_chunk(cfg, v, json_pack("{s:s}", "content", text), NULL, false);
}

char *api_chunk_final(const sim_config *cfg, const sim_view *v)
{
    return simapi_chunk(cfg, v, json_object(), v->finish_reason, true);
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

char *api_completion(const sim_config *cfg, const sim_view *v)
{
    char *text = malloc((size_t)v->n_gen * SIMENG_BYTES_PER_TOKEN + 1);
    json_t *o = NULL;
    char *out = NULL;
    if (!text)
        goto fail;
    for (unsigned i = 0; i < v->n_gen; i++)
        memcpy(text + (size_t)i * SIMENG_BYTES_PER_TOKEN, simeng_word(v->word_seed, i),
               SIMENG_BYTES_PER_TOKEN);
    text[(size_t)v->n_gen * SIMENG_BYTES_PER_TOKEN] = '\0';
    o = simapi_head(cfg, v, "chat.completion");
    if (!o ||
        json_object_set_new(
            o, "choices",
            json_pack("[{s:i,s:{s:s,s:s},s:n,s:s}]", "index", 0, "message", "role",
                      "assistant", "content", text, "logprobs", "finish_reason",
                      v->finish_reason ? v->finish_reason : "stop")) != 0 ||
        json_object_set_new(o, "usage", simapi_usage(v)) != 0 ||
        json_object_set_new(o, "timings", simapi_timings(v)) != 0)
        goto fail;
    out = simapi_dump(o);
    o = NULL;
fail:
    json_decref(o);
    free(text);
    return out;
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
         json_object_set_new(c, "garbage_bytes", json_integer((json_int_t)cfg->garbage_bytes)) !=
             0 ||
         json_object_set_new(c, "instant", json_boolean(cfg->instant)) != 0)) {
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
        json_object_set_new(o, "hanging", json_integer((json_int_t)st->hanging)) != 0) {
        json_decref(o);
        return NULL;
    }
    return simapi_dump(o);
}
