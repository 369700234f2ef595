/*
 * openai - the pure (no I/O) half of talking to an OpenAI-compatible LLM
 * server (LM Studio, llama.cpp's llama-server): building the request body,
 * reading streamed or whole chat-completion responses (including llama.cpp's
 * "timings" and usage.prompt_tokens_details.cached_tokens), reading what the
 * server says about its model (/api/v1/models, /props, /v1/models), and
 * turning HTTP and transport failures into lmsched error codes. The curl
 * side lives in backend.c. jansson is used only here.
 */
#ifndef LMSCHED_OPENAI_H
#define LMSCHED_OPENAI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lmsched/wire.h"
#include "scheduler/chat/chat.h"
#include "scheduler/util/strbuf.h"

typedef struct oa_body_opts {
    bool stream;             /* "stream": true plus stream_options.include_usage */
    bool cache_prompt;       /* "cache_prompt": true (llama.cpp; LM Studio ignores it) */
    const char *model;       /* used when the request names none; NULL: omit "model" */
    int32_t max_tokens;      /* used when the request gives none (-1: omit) */
    int id_slot;             /* >= 0: "id_slot" (llama.cpp slot pinning); -1: omit */
} oa_body_opts;

/* Builds the JSON body of POST /v1/chat/completions: "messages" starts with
 * {"role":"system","content":<system>} (byte-identical; omitted only when the
 * system prompt is ""), then the request's messages in order; optional fields
 * only when given. Returns a malloc'd NUL-terminated string, NULL on ENOMEM. */
char *oa_build_chat_body(const chat_req *req, const oa_body_opts *opts);

/* A tool call being assembled from a response (OpenAI's shape). */
typedef struct oa_tool_call {
    uint32_t index;           /* the backend's index of the call */
    char *id;                 /* NULL until reported */
    char *type;               /* NULL until reported ("function") */
    char *name;               /* NULL until reported */
    strbuf arguments;         /* the arguments' JSON text, as it arrives */
} oa_tool_call;

/* A piece of a streamed answer, recorded for the agent (see
 * oa_resp.record_deltas): consecutive pieces of one kind (and one tool
 * call) are joined. */
typedef enum oa_delta_kind {
    OA_DELTA_CONTENT = 1,
    OA_DELTA_REASONING = 2,
    OA_DELTA_TOOL_CALL = 3,
} oa_delta_kind;

typedef struct oa_delta {
    oa_delta_kind kind;
    uint32_t index;           /* tool call */
    char *id;                 /* tool call: in its first delta, else NULL */
    char *name;               /* tool call: in its first delta, else NULL */
    strbuf text;              /* content, reasoning, or arguments */
} oa_delta;

/* Accumulated state of one chat-completion response. */
typedef struct oa_resp {
    char *content;            /* assistant text so far, NUL-terminated, never NULL after init */
    size_t content_len, content_cap, max_content;
    char *finish_reason;      /* NULL until reported */
    char *model;              /* NULL until reported */
    int64_t prompt_tokens;    /* usage.prompt_tokens, -1 unknown */
    int64_t completion_tokens;/* usage.completion_tokens, -1 unknown */
    int64_t cached_tokens;    /* usage.prompt_tokens_details.cached_tokens, else timings.cache_n, -1 */
    int64_t timings_prompt_n; /* llama.cpp timings.prompt_n (tokens processed), -1 */
    int64_t timings_cache_n;  /* llama.cpp timings.cache_n (tokens reused), -1 */
    bool got_token;           /* at least one content, reasoning or tool-call delta */
    bool done;                /* "data: [DONE]" seen, or a whole response parsed */
    unsigned chunks;          /* chunks parsed */
    strbuf reasoning;         /* reasoning_content (or reasoning) so far */
    oa_tool_call *tool_calls; /* in the order they first appeared */
    size_t n_tool_calls, cap_tool_calls;
    strbuf logprobs;          /* the logprobs.content entries so far, as JSON text
                               * without the brackets (oa_resp_logprobs adds them) */
    bool record_deltas;       /* keep the pieces as they arrive, for streaming */
    oa_delta *deltas;         /* recorded since the last oa_resp_take_deltas */
    size_t n_deltas, cap_deltas;
} oa_resp;

/* The logprobs array as JSON text (malloc'd), NULL when none arrived. */
char *oa_resp_logprobs(const oa_resp *r);

/* Hands over the deltas recorded so far (*out, *n: the caller frees them
 * with oa_deltas_free) and starts a new record. */
void oa_resp_take_deltas(oa_resp *r, oa_delta **out, size_t *n);
void oa_deltas_free(oa_delta *d, size_t n);

void oa_resp_init(oa_resp *r, size_t max_content);
void oa_resp_fini(oa_resp *r);

/* A failure of the backend, classified. */
typedef struct oa_error {
    int code;                 /* an lmsched_err value, LMSCHED_OK when none */
    bool transient;           /* worth retrying if no token has been streamed */
    long http_status;         /* 0 when not an HTTP error */
    char message[512];        /* for the agent: says what happened, with the backend's words */
} oa_error;

/* Feeds the data of one SSE event of a streamed response ("[DONE]" or one
 * chunk object). A chunk carrying {"error": ...} (LM Studio and llama.cpp
 * send errors in-stream) is classified into err like an HTTP 500 body.
 * Returns LMSCHED_OK, or an error code with err filled: LMSCHED_EBACKEND_STREAM
 * for invalid JSON or a chunk of the wrong shape, LMSCHED_ETOOLARGE when
 * content would pass max_content, or the in-stream error's code. */
int oa_resp_feed_chunk(oa_resp *r, const char *data, size_t len, oa_error *err);

/* Parses a whole (non-streamed) chat completion body. Same returns. */
int oa_resp_parse_full(oa_resp *r, const char *body, size_t len, oa_error *err);

/* Classifies an HTTP error response (status >= 400). Pulls the message from
 * {"error":{"message":...}}, {"error":"..."} or {"message":...}; otherwise a
 * sanitized (printable ASCII, tags stripped), truncated excerpt of the body.
 * "Channel Error" or "model has crashed" anywhere in the body give
 * LMSCHED_EBACKEND_CRASH (transient); 429, 500, 502, 503, 504 are transient
 * LMSCHED_EBACKEND_HTTP; other statuses are permanent LMSCHED_EBACKEND_HTTP.
 * 401/403 give LMSCHED_EAUTH. The message looks like
 * "backend HTTP 500: <backend's message>". */
void oa_classify_http(long status, const char *body, size_t len, oa_error *out);

/* Classifies a transport failure (a CURLcode, passed as int) with curl's
 * error buffer text (may be NULL or ""): connection refused / resolve
 * failure -> LMSCHED_EBACKEND_DOWN (transient); timeout ->
 * LMSCHED_EBACKEND_TIMEOUT (not transient); connection cut, empty reply,
 * partial body, send/recv errors -> LMSCHED_EBACKEND_STREAM (transient);
 * anything else -> LMSCHED_EBACKEND_STREAM (not transient). */
void oa_classify_curl(int curlcode, const char *errbuf, oa_error *out);

/* What the backend says about the model it serves. Fields not reported keep
 * -1 / NULL. */
typedef struct oa_model_info {
    char *model;              /* model key / id / alias */
    int64_t size_bytes;       /* model file size */
    int64_t context_length;   /* context one request can use (LM Studio's loaded context, llama.cpp's per-slot n_ctx) */
    int64_t parallel;         /* parallel slots */
} oa_model_info;

void oa_model_info_init(oa_model_info *mi);
void oa_model_info_fini(oa_model_info *mi);

/* LM Studio 0.4 GET /api/v1/models: the first "llm" model with a non-empty
 * loaded_instances; size_bytes, loaded_instances[0].config.context_length
 * and .parallel. Returns LMSCHED_OK, LMSCHED_EBACKEND_STREAM if the body is
 * not the expected JSON, or LMSCHED_EINVAL when no LLM is loaded. */
int oa_parse_lmstudio_models(const char *body, size_t len, oa_model_info *out);

/* llama.cpp GET /props: parallel = total_slots; context_length =
 * default_generation_settings.n_ctx (the per-slot context); model =
 * model_alias, else the file name of model_path. size_bytes stays -1. */
int oa_parse_llamacpp_props(const char *body, size_t len, oa_model_info *out);

/* OpenAI GET /v1/models: data[0].id as model. */
int oa_parse_openai_models(const char *body, size_t len, oa_model_info *out);

/* llama.cpp's exact token count of a chat (docs/scheduling.md, "Exact
 * token counts"): POST /apply-template takes the chat's own body and
 * answers {"prompt": TEXT}; POST /tokenize of that text, with the BOS and
 * special tokens as the chat handler parses them, answers {"tokens": [..]},
 * as many as usage.prompt_tokens of that chat. */

/* The templated prompt of an /apply-template answer, malloc'd, in *out.
 * Returns LMSCHED_OK, LMSCHED_EBACKEND_STREAM (not that answer) or
 * LMSCHED_ENOMEM. */
int oa_parse_template(const char *body, size_t len, char **out);
/* The /tokenize body for prompt: malloc'd, NULL on ENOMEM. */
char *oa_build_tokenize_body(const char *prompt);
/* The number of tokens of a /tokenize answer in *n. Returns LMSCHED_OK or
 * LMSCHED_EBACKEND_STREAM. */
int oa_parse_token_count(const char *body, size_t len, int64_t *n);

#endif /* LMSCHED_OPENAI_H */
