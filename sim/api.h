/*
 * simapi - the JSON side of lmsim: reading an OpenAI chat-completion request
 * (validating it, rendering its messages and tools into the prompt the
 * engine tokenizes, and deciding what kind of answer it gets: text, a tool
 * call, JSON for a response_format), building that answer's tokens
 * (sim/reply), and writing every response body: chat completions, stream
 * chunks, model lists in the OpenAI and LM Studio 0.4 shapes, errors and
 * /sim/stats. jansson is used only here and in its helper sim/schema. No
 * I/O; every function is thread-safe.
 */
#ifndef LMSIM_API_H
#define LMSIM_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sim/config.h"
#include "sim/engine.h"
#include "sim/reply.h"

/* Bounds on what a client may send, beyond the body size limit. */
#define SIMAPI_MAX_MESSAGES 65536u
#define SIMAPI_MAX_ROLE 64u
#define SIMAPI_MAX_TOOLS 128u      /* tools of a request */
#define SIMAPI_MAX_TOOL_CALLS 128u /* tool_calls of one message */
#define SIMAPI_MAX_TOOL_NAME 64u   /* OpenAI's limit on a function name */
#define SIMAPI_MAX_TOP_LOGPROBS 20u
/* A tool result answer quotes this much of the tool message's content. */
#define SIMAPI_TOOL_RESULT_BYTES 40u

/* What kind of answer a request gets; private to api.c. */
typedef struct api_plan api_plan;

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
    bool logprobs;         /* "logprobs": true */
    unsigned top_logprobs; /* entries per token, 0..SIMAPI_MAX_TOP_LOGPROBS */
    api_plan *plan;        /* owned; see api_chat_reply */
} api_chat;

/* Parses a POST /v1/chat/completions body. Returns 0 and fills *out (free
 * with api_chat_fini), or returns an HTTP status (400, 500 on ENOMEM) and
 * sets *err_body to a malloc'd JSON error body the caller frees. */
int api_parse_chat(const char *body, size_t len, api_chat *out, char **err_body);

/* Frees what api_parse_chat allocated. Accepts a zeroed or finished struct. */
void api_chat_fini(api_chat *c);

/* Builds the answer of a parsed request for lmsim's configuration: its
 * reasoning words, then a tool call, JSON for its response_format, a tool
 * result's text or plain words (docs/simulator.md, "Tools, structured
 * output, logprobs, reasoning"). The caller owns *out (simreply_free, or
 * hand it to the engine). Returns 0 or -1 on ENOMEM. */
int api_chat_reply(const sim_config *cfg, const api_chat *c, sim_reply **out);

/* {"error":{"message":message,"type":type}}. Malloc'd; NULL on ENOMEM. */
char *api_error_json(const char *type, const char *message);

/* A 400 that names the field, OpenAI style: {"error":{"code":400,"message":
 * message,"type":"invalid_request_error","param":param}}. Malloc'd; NULL on
 * ENOMEM. */
char *api_param_error_json(const char *param, const char *message);

/* llama.cpp's context overflow error body. Malloc'd; NULL on ENOMEM. */
char *api_context_error_json(unsigned prompt_n, unsigned n_ctx);

/* Stream chunk objects (the JSON after "data: "). Malloc'd; NULL on ENOMEM. */
char *api_chunk_role(const sim_config *cfg, const sim_view *v);
char *api_chunk_content(const sim_config *cfg, const sim_view *v, const char *text);
/* Token i of the request's reply (v->reply; plain words when NULL): a
 * reasoning_content, content (with logprobs when asked) or tool_calls delta. */
char *api_chunk_piece(const sim_config *cfg, const sim_view *v, unsigned i);
char *api_chunk_final(const sim_config *cfg, const sim_view *v);
char *api_chunk_usage(const sim_config *cfg, const sim_view *v);

/* The whole non-streamed chat.completion of a finished request: content,
 * reasoning_content, tool_calls and logprobs from v->reply. */
char *api_completion(const sim_config *cfg, const sim_view *v);

/* llama-server's token counts. api_template: the {"prompt": ...} answer of
 * POST /apply-template for a request parsed by api_parse_chat (its
 * rendered prompt, the text the engine counts). api_tokenize: the answer
 * of POST /tokenize {"content": S}: {"tokens": [...]} with as many tokens
 * as the engine counts for a prompt S (simeng_tokens, at least 1), so that
 * the count of a chat's template is its usage.prompt_tokens. Returns 0 and
 * a malloc'd body, or an HTTP status (400, 500) and an error body in *out
 * (NULL on ENOMEM). */
int api_template(const api_chat *c, char **out);
int api_tokenize(const char *body, size_t len, char **out);

char *api_models_openai(const sim_config *cfg);
char *api_models_lmstudio(const sim_config *cfg);
char *api_stats(const sim_config *cfg, const sim_stats *st);

#endif /* LMSIM_API_H */
