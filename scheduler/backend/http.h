/*
 * backend - the libcurl side of talking to the LLM server: one multi handle,
 * keep-alive connections, streamed chat completions parsed as they arrive,
 * and plain GETs for probing the server. Only the loop thread calls these,
 * except backend_wakeup, which any thread may call.
 *
 * A transfer (bk_xfer) is started, runs inside backend_poll, and comes back
 * from backend_done with its outcome classified; the caller then frees it.
 * Freeing a transfer that has not finished cancels it (its connection is
 * closed by curl).
 */
#ifndef LMSCHED_BACKEND_H
#define LMSCHED_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/proto.h"
#include "scheduler/backend/openai.h"
#include "scheduler/backend/sse.h"

typedef struct backend backend;

typedef struct bk_xfer {
    void *owner;              /* caller's pointer (a job, or NULL for probes) */
    int tag;                  /* caller's tag (e.g. which probe) */
    bool is_chat;
    /* Outcome, valid once backend_done returned the transfer: */
    oa_error err;             /* err.code == LMSCHED_OK on success */
    oa_resp resp;             /* chat: content, usage, timings */
    long http_status;         /* 0 if no response */
    char *raw;                /* body of non-streamed responses (probes, errors), NUL-terminated */
    size_t raw_len;
    int64_t start_us;         /* when the transfer was started */
    int64_t first_token_us;   /* when the first token arrived, 0 if none */
    int64_t end_us;
    /* Internal: */
    struct backend *bk;
    void *easy;
    char *body;
    size_t raw_cap;
    sse_parser sse;
    int mode;                 /* 0 unknown, 1 sse, 2 raw */
    bool aborted;             /* our write callback stopped the transfer */
    uint64_t recv_bytes;      /* body bytes received so far */
    bool done;
    char errbuf[256];
    struct bk_xfer *next_done;
    struct bk_xfer *all_prev, *all_next; /* every live transfer, for backend_free */
} bk_xfer;

typedef struct backend_opts {
    const char *base_url;     /* "http://127.0.0.1:1234" */
    const char *token;        /* Bearer token or NULL; never logged */
    int connect_timeout_ms;
    int request_timeout_ms;   /* chat transfers; probes use min(this, 5000) */
    size_t max_body;          /* most bytes of a non-streamed body */
    size_t max_content;       /* most bytes of generated content */
    uint64_t max_response;    /* most bytes of one response, streamed or not (0: max_body) */
} backend_opts;

int backend_alloc(backend **bp, const backend_opts *opts);
void backend_free(backend *b);     /* frees unfinished transfers too; accepts NULL */

/* Starts POST /v1/chat/completions. Returns LMSCHED_OK and *xp, or an error. */
int backend_chat_start(backend *b, const lms_chat_req *req, const oa_body_opts *opts,
                       void *owner, bk_xfer **xp);
/* Starts GET base_url + path. */
int backend_get_start(backend *b, const char *path, void *owner, int tag, bk_xfer **xp);

/* Waits up to timeout_ms for network activity or a wakeup, then runs
 * transfers. Returns LMSCHED_OK or LMSCHED_EINTERNAL. */
int backend_poll(backend *b, int timeout_ms);
/* Runs transfers without waiting (after starting new ones). */
int backend_perform(backend *b);

/* Returns a finished transfer (no longer running), or NULL. */
bk_xfer *backend_done(backend *b);

/* Frees a transfer; cancels it if still running. Accepts NULL. */
void backend_xfer_free(bk_xfer *x);

/* Interrupts backend_poll. Safe from any thread. */
void backend_wakeup(backend *b);

#endif /* LMSCHED_BACKEND_H */
