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

typedef struct chat_msg {
    char *role;    /* "user", "assistant", "system", ... */
    char *content; /* the text, sent byte for byte */
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
} chat_req;

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

/* The answer to one request (a view; see above). */
typedef struct chat_result {
    const char *content;       /* never NULL */
    size_t content_len;
    const char *finish_reason; /* never NULL ("stop" when the backend gave none) */
    const char *model;         /* NULL: not reported */
    chat_usage usage;
    chat_timings timings;
    uint32_t retries; /* times the scheduler retried it against the backend */
} chat_result;

#endif /* LMSCHED_CHAT_CHAT_H */
