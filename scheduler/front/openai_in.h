/*
 * openai_in - the OpenAI chat-completions API as lmsched's HTTP front door
 * speaks it (docs/openai.md): a request body and lmsched's own headers
 * turned into a chat_req, and the core's answers turned into OpenAI's
 * shapes (a chat.completion, chat.completion.chunk events ending in
 * `data: [DONE]`, error bodies with the status codes clients act on).
 *
 * Pure translation: no I/O, no threads, no state beyond the caller's
 * structs; jansson stays inside openai_in.c. http.c runs oai_parse_chat on
 * libmicrohttpd's threads and the rest on the loop thread; the fuzz target
 * tests/fuzz/fuzz_http_in.c runs them on anything.
 */
#ifndef LMSCHED_FRONT_OPENAI_IN_H
#define LMSCHED_FRONT_OPENAI_IN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "scheduler/chat/chat.h"
#include "scheduler/util/strbuf.h"

/* lmsched's own controls as request headers (NULL: absent); they win over
 * the same controls in the body. Strings are only read during the call. */
typedef struct oai_headers {
    const char *priority;    /* X-Lmsched-Priority: 0..9 */
    const char *deadline_ms; /* X-Lmsched-Deadline-Ms: start within this many ms */
    const char *agent;       /* X-Lmsched-Agent: a label for logs and status */
    const char *session;     /* X-Session-ID (or X-Lmsched-Session) */
} oai_headers;

/* A parsed request. */
typedef struct oai_chat {
    chat_req *req;      /* the caller's on success (chat_req_free) */
    bool stream;        /* answer as server-sent events */
    bool include_usage; /* stream_options.include_usage: a last chunk with usage */
} oai_chat;

/* Why a request was refused: the HTTP status, the offending parameter
 * ("" none) and a message for the client (printable, no secrets). */
typedef struct oai_err {
    int status;
    char param[80];
    char message[320];
} oai_err;

/*
 * Turns the body of POST /v1/chat/completions (len bytes, any content)
 * and the headers h (NULL: none) into out. The leading system or developer
 * message with string content becomes chat_req.system (the group key, as
 * over nng); the rest are messages. Fields with a chat_req field of their
 * own map to it; id_slot and cache_prompt, which lmsched sets itself, are
 * dropped; user and prompt_cache_key are session keys; every other field
 * goes to the backend verbatim (extra_json). Returns LMSCHED_OK, or
 * LMSCHED_EPROTO / LMSCHED_ETOOLARGE / LMSCHED_ENOMEM with err filled (out
 * untouched). Any thread.
 */
int oai_parse_chat(const char *body, size_t len, const oai_headers *h, oai_chat *out,
                   oai_err *err);

/* What every answer of one request carries, and a stream's progress. */
typedef struct oai_reply {
    char id[48];        /* "chatcmpl-..." */
    int64_t created;    /* Unix seconds */
    char model[260];    /* the model asked for, until the backend names one */
    bool include_usage; /* streaming: a usage chunk before [DONE] */
    bool started;       /* streaming: the role chunk went out */
    bool pieces;        /* streaming: a delta went out */
} oai_reply;

/* The non-streamed answer: a chat.completion object (JSON, malloc'd; *len
 * its length), NULL on ENOMEM. */
char *oai_completion(const oai_reply *c, const chat_result *r, size_t *len);

/* Appends the SSE events of n streamed pieces. Returns 0, or -1 on ENOMEM
 * (b may hold part of them). */
int oai_stream_pieces(strbuf *b, oai_reply *c, const chat_delta *d, size_t n);

/* Appends a stream's end: what was not streamed yet (an answer that came
 * whole), the chunk with finish_reason (and logprobs), the usage chunk
 * when asked for, `data: [DONE]`. Returns 0 or -1 on ENOMEM. */
int oai_stream_end(strbuf *b, oai_reply *c, const chat_result *r);

/* The HTTP status of a core error (an lmsched_err code and its message). */
int oai_status_of(int code, const char *msg);

/* An error body {"error":{"message","type","code","param"}} for a core
 * error (code, msg, field) sent with status; malloc'd, *len its length;
 * NULL on ENOMEM. */
char *oai_error_body(int status, int code, const char *msg, const char *field,
                     size_t *len);

/* Appends an error event ending a stream that already started. Returns 0
 * or -1. */
int oai_stream_error(strbuf *b, int code, const char *msg, const char *field);

#endif /* LMSCHED_FRONT_OPENAI_IN_H */
