/*
 * http - the daemon's HTTP client for LLM servers: transfers that run
 * inside the loop's one poll, keep-alive connections, streamed chat
 * completions parsed as they arrive (SSE, then openai.c's chunk parser),
 * plain GETs for probing, and small JSON POSTs whose whole answer comes
 * back as one body (side requests such as llama.cpp's /tokenize). The
 * poll is also where the loop sleeps: any thread may interrupt it with
 * http_wakeup.
 *
 * The client is a table of functions (http_ops) with two implementations:
 * libcurl's multi interface (http_curl_alloc, the daemon's) and the fake of
 * the core's unit tests, which finishes transfers when a test says so. The
 * loop only ever calls the functions below.
 *
 * A transfer (http_xfer) is started, runs inside http_poll/http_perform,
 * and comes back from http_done with its outcome classified; the caller
 * then frees it. Freeing one that has not finished cancels it (curl closes
 * its connection, so the server drops the request too). Every function but
 * http_wakeup belongs to the loop thread.
 */
#ifndef LMSCHED_BACKEND_HTTP_H
#define LMSCHED_BACKEND_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "scheduler/backend/openai.h"

typedef struct http_client http_client;
typedef struct http_target http_target;

/* A transfer: what the caller set, and the outcome once http_done returned
 * it. An implementation may embed this in a larger struct of its own. */
typedef struct http_xfer {
    void *owner;            /* caller's pointer (a job, a backend's probe) */
    int tag;                /* caller's tag (which probe stage, which count step) */
    bool is_chat;
    bool is_json;           /* a small JSON POST (http_post_json_start) */
    /* Outcome: */
    oa_error err;           /* err.code == LMSCHED_OK on success */
    oa_resp resp;           /* chat: content, usage, timings */
    long http_status;       /* 0 if no response */
    char *raw;              /* body of non-streamed responses (probes, JSON POSTs,
                             * errors), NUL-terminated */
    size_t raw_len;
    int64_t start_us;       /* when it was started */
    int64_t first_token_us; /* when the first token arrived, 0 if none */
    int64_t end_us;
} http_xfer;

/* Limits and timeouts of every transfer of a client. */
typedef struct http_opts {
    int connect_timeout_ms;
    int request_timeout_ms; /* chat transfers; probes use min(this, 5000) */
    size_t max_body;        /* most bytes of a non-streamed body */
    size_t max_content;     /* most bytes of generated content */
    uint64_t max_response;  /* most bytes of one response, streamed or not (0: max_body) */
} http_opts;

typedef struct http_ops {
    int (*target_alloc)(http_client *c, const char *base_url, const char *token,
                        http_target **tp);
    void (*target_free)(http_client *c, http_target *t);
    int (*post_start)(http_client *c, http_target *t, const char *path, char *body,
                      void *owner, http_xfer **xp);
    int (*get_start)(http_client *c, http_target *t, const char *path, void *owner, int tag,
                     http_xfer **xp);
    int (*post_json_start)(http_client *c, http_target *t, const char *path, char *body,
                           void *owner, int tag, http_xfer **xp);
    int (*poll)(http_client *c, int timeout_ms);
    int (*perform)(http_client *c);
    http_xfer *(*done)(http_client *c);
    void (*xfer_free)(http_client *c, http_xfer *x);
    void (*wakeup)(http_client *c);
    void (*free)(http_client *c);
} http_ops;

/* Every implementation's client starts with this. */
struct http_client {
    const http_ops *ops;
};

/* The libcurl client. Returns LMSCHED_OK and *cp, or LMSCHED_ENOMEM. */
int http_curl_alloc(http_client **cp, const http_opts *o);

/* Frees the client and every transfer still alive. Accepts NULL. */
void http_free(http_client *c);

/* A server to talk to: its base URL ("http://127.0.0.1:1234", no trailing
 * '/') and Bearer token (NULL: none; copied, never logged). */
int http_target_alloc(http_client *c, const char *base_url, const char *token,
                      http_target **tp);
void http_target_free(http_client *c, http_target *t);

/* Starts a streamed POST of a JSON body to base_url + path (a chat
 * completion); takes ownership of body (malloc'd), also on failure. */
int http_post_start(http_client *c, http_target *t, const char *path, char *body, void *owner,
                    http_xfer **xp);
/* Starts GET base_url + path. */
int http_get_start(http_client *c, http_target *t, const char *path, void *owner, int tag,
                   http_xfer **xp);
/* Starts a POST of a small JSON body to base_url + path whose answer is
 * one JSON body (not a stream): it comes back in raw, bounded and timed
 * out as a probe's, on the same poll as everything else. Takes ownership
 * of body (malloc'd), also on failure. is_json is set on the transfer. */
int http_post_json_start(http_client *c, http_target *t, const char *path, char *body,
                         void *owner, int tag, http_xfer **xp);

/* Waits up to timeout_ms for network activity or a wakeup, then runs
 * transfers. Returns LMSCHED_OK or LMSCHED_EINTERNAL. */
int http_poll(http_client *c, int timeout_ms);
/* Runs transfers without waiting (after starting new ones). */
int http_perform(http_client *c);
/* A finished transfer, or NULL. */
http_xfer *http_done(http_client *c);
/* Frees a transfer; cancels it if still running. Accepts NULL. */
void http_xfer_free(http_client *c, http_xfer *x);
/* Interrupts http_poll, or makes the next one return at once when none is
 * waiting (the loop then runs a turn, which reads what the caller posted
 * before this call). Safe from any thread. */
void http_wakeup(http_client *c);

#endif /* LMSCHED_BACKEND_HTTP_H */
