/*
 * chat - a chat request as the daemon keeps it: what the backend will be
 * sent (system prompt, messages, sampling options) and how the scheduler
 * treats it (priority, deadline, who sent it), whatever front door it came
 * through. A front builds one (the nng front from a decoded wire message,
 * moving the strings over), the core keeps it in a job, the backend layer
 * renders the request body from it and the chain module its prefix blocks.
 *
 * And the answer as the backend gave it (chat_result), a read-only view the
 * core hands to a job's sink: the strings belong to whoever built it and
 * live until the sink call returns.
 *
 * Ownership: a chat_req owns every string and array it points to;
 * chat_req_free frees them all. Not thread-safe; one thread at a time.
 */
#ifndef LMSCHED_CHAT_CHAT_H
#define LMSCHED_CHAT_CHAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* JSON-valued fields are held as compact JSON text (*_json), exactly as
 * they go to the backend. */
typedef struct chat_msg {
    char *role;            /* "user", "assistant", "tool", "system", ... */
    char *content;         /* the text, sent byte for byte; NULL with parts_json or
                            * for an assistant message of tool calls only */
    char *parts_json;      /* content as an array of parts (text, image_url), or NULL */
    char *tool_calls_json; /* an assistant message's tool calls, or NULL */
    char *tool_call_id;    /* a tool message's call id, or NULL */
    char *name;            /* NULL: not given */
} chat_msg;

typedef struct chat_req {
    char *system; /* the shared prefix, "" when none; never NULL */
    chat_msg *messages;
    size_t n_messages;
    char *model;        /* NULL: the backend's loaded model */
    int32_t max_tokens; /* -1: not given */
    bool has_temperature;
    double temperature;
    bool has_top_p;
    double top_p;
    bool has_seed;
    int64_t seed;
    char **stop; /* NULL when n_stop == 0 */
    size_t n_stop;
    /* How the scheduler treats it: */
    uint8_t priority;     /* 0..9, default 5 */
    uint32_t deadline_ms; /* start-by, from arrival; 0: none */
    char *agent;          /* NULL: not given */
    char *client_id;      /* NULL: not given */
    char *session;        /* the conversation it continues (an HTTP client's session
                           * key), kept on the slot of its previous turn; NULL: none */
    /* What agents send beyond text (all NULL or -1 when not given): */
    char *tools_json;           /* array of tool definitions */
    char *tool_choice_json;     /* "auto", "none", "required" or an object */
    char *response_format_json; /* json_object / json_schema */
    int8_t parallel_tool_calls; /* -1: not given, else 0 or 1 */
    char *extra_json;           /* an object of more body fields, merged verbatim */
    bool stream;                /* the agent takes the answer as it is generated */
} chat_req;

/* The body keys the daemon writes itself: `extra` may not set them. NULL
 * when key is free, else why not (for the error message). */
const char *chat_reserved_key(const char *key);

/* A zeroed request with the defaults (system "", max_tokens -1, priority
 * 5). Returns LMSCHED_OK or LMSCHED_ENOMEM; *rp belongs to the caller. */
int chat_req_alloc(chat_req **rp);
/* Frees r and everything it owns. Accepts NULL. */
void chat_req_free(chat_req *r);

/* Token counts as the backend reported them; -1 when it did not. */
typedef struct chat_usage {
    int64_t prompt_tokens;
    int64_t completion_tokens;
    int64_t cached_tokens;
} chat_usage;

/* Where the time went, in milliseconds: queued in the scheduler, from
 * dispatch to the first token (-1 when none came), and in all. */
typedef struct chat_timings {
    double queue_ms;
    double ttft_ms;
    double total_ms;
} chat_timings;

/* One tool call of an answer, as the backend gave it. */
typedef struct chat_tool_call {
    const char *id;
    const char *type;      /* "function" */
    const char *name;
    const char *arguments; /* the JSON text the model wrote */
} chat_tool_call;

/* The answer to one request (a view; see above). */
typedef struct chat_result {
    const char *content;       /* never NULL */
    size_t content_len;
    const char *finish_reason; /* never NULL ("stop" when the backend gave none) */
    const char *model;         /* NULL: not reported */
    chat_usage usage;
    chat_timings timings;
    uint32_t retries;          /* times the scheduler retried it against the backend */
    const char *reasoning;     /* NULL: none */
    const chat_tool_call *tool_calls;
    size_t n_tool_calls;
    const char *logprobs_json; /* NULL: not asked for, or none */
} chat_result;

/* A piece of an answer as it is generated (streaming); a view. */
typedef enum chat_delta_kind {
    CHAT_DELTA_CONTENT = 1,
    CHAT_DELTA_REASONING = 2,
    CHAT_DELTA_TOOL_CALL = 3,
} chat_delta_kind;

typedef struct chat_delta {
    chat_delta_kind kind;
    const char *text;   /* content, reasoning, or a piece of a call's arguments; may be
                         * NULL for a tool call */
    size_t len;
    uint32_t index;     /* tool call: which call */
    const char *id;     /* tool call: its id, in its first delta; else NULL */
    const char *name;   /* tool call: the function, in its first delta; else NULL */
} chat_delta;

#endif /* LMSCHED_CHAT_CHAT_H */
