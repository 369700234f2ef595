/*
 * proto - the lmsched wire format: msgpack maps between agents and the
 * scheduler daemon. Encoding and strict decoding only, no I/O. The error
 * codes are the public lmsched_err enum of <lmsched/wire.h>, owned here and
 * included by <lmsched/agent.h>, so an error reply carries the same number
 * the agent library returns.
 *
 * Every message is one msgpack map with at least "v" (protocol version),
 * "kind" (a string) and "id" (the client's 64-bit correlation id). See
 * docs/protocol.md for every field.
 *
 * Ownership: a decoded message owns all its strings (copied out of the
 * msgpack zone); lms_msg_fini frees them. Encoded buffers are malloc'd and
 * freed by the caller with free().
 */
#ifndef LMSCHED_PROTO_H
#define LMSCHED_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lmsched/wire.h"

#define LMS_PROTO_VERSION LMSCHED_PROTOCOL_VERSION

typedef enum lms_kind {
    LMS_KIND_CHAT = 1,         /* "chat": agent -> daemon */
    LMS_KIND_CHAT_REPLY = 2,   /* "chat_reply": daemon -> agent */
    LMS_KIND_STATUS = 3,       /* "status": agent -> daemon */
    LMS_KIND_STATUS_REPLY = 4, /* "status_reply": daemon -> agent */
    LMS_KIND_ERROR = 5,        /* "error": daemon -> agent */
    LMS_KIND_CHAT_CHUNK = 6,   /* "chat_chunk": daemon -> agent, a streamed answer's deltas */
    LMS_KIND_CHAT_NEXT = 7,    /* "chat_next": agent -> daemon, the next deltas of a stream */
    LMS_KIND_CANCEL = 8,       /* "cancel": agent -> daemon, cancel a request in flight */
    LMS_KIND_CANCEL_REPLY = 9, /* "cancel_reply": daemon -> agent */
} lms_kind;

/* Limits on what a peer controls; the decoder rejects anything past them. */
typedef struct lms_limits {
    size_t max_msg_bytes;     /* whole encoded message */
    size_t max_text_bytes;    /* system prompt, one message content, reply content */
    size_t max_name_bytes;    /* role, model, agent, client_id, finish_reason, stop item,
                               * auth */
    size_t max_messages;      /* entries in "messages" */
    size_t max_stop;          /* entries in "stop" */
    size_t max_deltas;        /* deltas in one chat_chunk or final chat_reply */
    size_t max_tool_calls;    /* entries in a reply's "tool_calls" */
} lms_limits;

/* Defaults: 16 MiB message, 4 MiB text, 256 bytes names, 1024 messages,
 * 16 stop strings, 65536 deltas, 128 tool calls. */
void lms_limits_default(lms_limits *lim);

/* Fields whose value is any JSON travel as native msgpack and are held
 * here as compact JSON text ("*_json"; see proto/json.h). */
typedef struct lms_chat_msg {
    char *role;
    char *content;             /* the text; NULL when parts_json holds it, or for an
                                * assistant message with only tool_calls */
    char *parts_json;          /* content as an array of parts (text, image_url), or NULL */
    char *tool_calls_json;     /* an assistant message's tool_calls array, or NULL */
    char *tool_call_id;        /* a tool message's call id, or NULL */
    char *name;                /* NULL: not given */
} lms_chat_msg;

typedef struct lms_chat_req {
    char *system;              /* required (may be ""), the shared prefix */
    lms_chat_msg *messages;    /* required, at least one */
    size_t n_messages;
    char *model;               /* NULL: the backend's loaded model */
    int32_t max_tokens;        /* -1: not given */
    bool has_temperature;
    double temperature;
    bool has_top_p;
    double top_p;
    char **stop;               /* NULL when n_stop == 0 */
    size_t n_stop;
    bool has_seed;
    int64_t seed;
    uint8_t priority;          /* 0..9, default 5 */
    uint32_t deadline_ms;      /* 0: none */
    char *agent;               /* NULL: not given */
    char *client_id;           /* NULL: not given */
    char *tools_json;          /* "tools": array of tool definitions, or NULL */
    char *tool_choice_json;    /* "tool_choice": "auto"/"none"/"required"/{...}, or NULL */
    char *response_format_json;/* "response_format": {...}, or NULL */
    int8_t parallel_tool_calls;/* -1: not given, else 0 or 1 */
    char *extra_json;          /* "extra": an object of more body fields, sent verbatim */
    bool stream;               /* answer as a stream (chat_chunk, chat_next) */
} lms_chat_req;

/* One tool call of an answer (OpenAI's shape: id, type, function.name,
 * function.arguments). */
typedef struct lms_tool_call {
    char *id;
    char *type;                /* "function" */
    char *name;
    char *arguments;           /* JSON text, as the model wrote it */
} lms_tool_call;

/* A piece of a streamed answer. */
typedef enum lms_delta_kind {
    LMS_DELTA_CONTENT = 1,     /* {"content": text} */
    LMS_DELTA_REASONING = 2,   /* {"reasoning": text} */
    LMS_DELTA_TOOL_CALL = 3,   /* {"tool_call": {"index", "id"?, "name"?, "arguments"?}} */
} lms_delta_kind;

typedef struct lms_delta {
    lms_delta_kind kind;
    char *text;                /* content, reasoning, or a piece of a call's arguments
                                * (may be NULL for a tool call) */
    uint32_t index;            /* tool call: which call */
    char *id;                  /* tool call: its id, in the call's first delta */
    char *name;                /* tool call: the function's name, in its first delta */
} lms_delta;

typedef struct lms_usage {
    int64_t prompt_tokens;     /* -1: unknown */
    int64_t completion_tokens; /* -1: unknown */
    int64_t cached_tokens;     /* -1: unknown */
} lms_usage;

typedef struct lms_timings {
    double queue_ms;
    double ttft_ms;
    double total_ms;
} lms_timings;

typedef struct lms_chat_reply {
    char *content;             /* required ("" for an answer of tool calls only) */
    char *finish_reason;       /* required ("stop", "length", "tool_calls", ...) */
    char *model;               /* NULL: not reported */
    lms_usage usage;
    lms_timings timings;
    uint32_t retries;
    char *reasoning;           /* NULL: none (the backend's reasoning_content) */
    lms_tool_call *tool_calls; /* NULL when n_tool_calls == 0 */
    size_t n_tool_calls;
    char *logprobs_json;       /* the backend's logprobs.content array, or NULL */
    lms_delta *deltas;         /* a stream's last deltas, not sent before; NULL */
    size_t n_deltas;
} lms_chat_reply;

typedef struct lms_chat_chunk {
    lms_delta *deltas;         /* required, at least one */
    size_t n_deltas;
} lms_chat_chunk;

typedef struct lms_chat_next {
    uint64_t stream;           /* the id of the chat that started the stream */
} lms_chat_next;

typedef struct lms_cancel {
    uint64_t target;           /* the id of the request to cancel */
} lms_cancel;

typedef struct lms_cancel_reply {
    bool found;                /* the request was still in flight and is canceled */
} lms_cancel_reply;

typedef struct lms_status_reply {
    char *json;                /* the status document, JSON text */
} lms_status_reply;

typedef struct lms_error_reply {
    uint32_t code;             /* an lmsched_err value */
    char *message;             /* required, human readable */
    char *field;               /* NULL, or the offending field of a rejected message */
} lms_error_reply;

typedef struct lms_msg {
    lms_kind kind;
    uint32_t version;
    uint64_t id;
    char *auth;                /* requests only (chat, status, chat_next, cancel): the
                                * daemon's access token ("auth"), NULL when absent; at
                                * most max_name_bytes */
    union {
        lms_chat_req chat;
        lms_chat_reply chat_reply;
        lms_status_reply status_reply;
        lms_error_reply error;
        lms_chat_chunk chat_chunk;
        lms_chat_next chat_next;
        lms_cancel cancel;
        lms_cancel_reply cancel_reply;
    } u;                       /* LMS_KIND_STATUS has no body */
} lms_msg;

/* Why a message was rejected. */
typedef struct lms_decode_err {
    int code;                  /* LMSCHED_EPROTO, LMSCHED_EVERSION, LMSCHED_ETOOLARGE, LMSCHED_ENOMEM */
    char field[64];            /* the offending field ("messages[3].content"), or "" */
    char message[256];         /* names the field and the problem */
    bool have_id;              /* whether "id" was read before the error */
    uint64_t id;
} lms_decode_err;

/* Initialise a message of the given kind: zeroes it, sets version and the
 * optional-field defaults (max_tokens -1, priority 5, usage -1). */
void lms_msg_init(lms_msg *m, lms_kind kind);

/* Frees what a message owns (its strings and arrays) and zeroes it. Accepts
 * a zeroed or half-decoded message. */
void lms_msg_fini(lms_msg *m);

/*
 * Strictly decodes one message from buf[0..len). On success returns
 * LMSCHED_OK and fills *out, which the caller finis. On failure returns the
 * error code, fills *err, and leaves *out finied. Never reads outside buf.
 * lim NULL means lms_limits_default.
 */
int lms_decode(const void *buf, size_t len, const lms_limits *lim, lms_msg *out,
               lms_decode_err *err);

/*
 * Encodes m. On success returns LMSCHED_OK and sets *bufp (malloc'd, freed
 * by the caller with free()) and *lenp. Returns LMSCHED_EINVAL if a required
 * string is NULL, LMSCHED_ENOMEM on allocation failure.
 */
int lms_encode(const lms_msg *m, void **bufp, size_t *lenp);

/* Encodes a chat_reply whose strings belong to the caller (only read). */
int lms_encode_chat_reply(uint64_t id, const lms_chat_reply *reply, void **bufp,
                          size_t *lenp);

/* Convenience: encode an error reply (the strings are only read). */
int lms_encode_error(uint64_t id, int code, const char *message, const char *field,
                     void **bufp, size_t *lenp);

/* "chat", "chat_reply", ... or "unknown". */
const char *lms_kind_name(lms_kind kind);


#endif /* LMSCHED_PROTO_H */
