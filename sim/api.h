/*
 * simapi - the JSON side of lmsim: reading an OpenAI chat-completion request
 * (and rendering its messages into the prompt the engine tokenizes), and
 * writing every response body: chat completions, stream chunks, model
 * lists in the OpenAI and LM Studio 0.4 shapes, errors and /sim/stats.
 * jansson is used only here. No I/O; every function is thread-safe.
 */
#ifndef LMSIM_API_H
#define LMSIM_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sim/config.h"
#include "sim/engine.h"

/* Bounds on what a client may send, beyond the body size limit. */
#define SIMAPI_MAX_MESSAGES 65536u
#define SIMAPI_MAX_ROLE 64u

/* A parsed chat request. */
typedef struct api_chat {
    char *prompt; /* rendered prompt, malloc'd, owned by the struct */
    size_t prompt_len;
    int64_t max_tokens; /* -1: none */
    int id_slot;        /* -1: any */
    bool cache_prompt;
    bool stream;
    bool include_usage;
    bool ignore_eos;
    uint64_t seed;
} api_chat;

/* Parses a POST /v1/chat/completions body. Returns 0 and fills *out (free
 * with api_chat_fini), or returns an HTTP status (400, 500 on ENOMEM) and
 * sets *err_body to a malloc'd JSON error body the caller frees. */
int api_parse_chat(const char *body, size_t len, api_chat *out, char **err_body);

/* Frees what api_parse_chat allocated. Accepts a zeroed or finished struct. */
void api_chat_fini(api_chat *c);

/* The ChatML-like rendering the tokenizer counts (see docs/simulator.md),
 * exposed for tests: one message. Appends to *buf (malloc'd, grown as
 * needed). Returns 0 or -1 on ENOMEM. */
int api_render_message(char **buf, size_t *len, size_t *cap, const char *role,
                       const char *content, size_t content_len);

/* {"error":{"message":message,"type":type}}. Malloc'd; NULL on ENOMEM. */
char *api_error_json(const char *type, const char *message);

/* llama.cpp's context overflow error body. Malloc'd; NULL on ENOMEM. */
char *api_context_error_json(unsigned prompt_n, unsigned n_ctx);

/* Stream chunk objects (the JSON after "data: "). Malloc'd; NULL on ENOMEM. */
char *api_chunk_role(const sim_config *cfg, const sim_view *v);
char *api_chunk_content(const sim_config *cfg, const sim_view *v, const char *text);
char *api_chunk_final(const sim_config *cfg, const sim_view *v);
char *api_chunk_usage(const sim_config *cfg, const sim_view *v);

/* The whole non-streamed chat.completion of a finished request. */
char *api_completion(const sim_config *cfg, const sim_view *v);

char *api_models_openai(const sim_config *cfg);
char *api_models_lmstudio(const sim_config *cfg);
char *api_stats(const sim_config *cfg, const sim_stats *st);

#endif /* LMSIM_API_H */
