/*
 * backend - one LLM server as the scheduler knows it: its URL, what kind
 * of server it is (found by probing, or forced), what it serves (model,
 * size, slots, per-slot context), whether it is healthy and why not, and
 * how a chat request is sent to it. The core keeps an array of them (one
 * today); the HTTP client they use is shared.
 *
 * Probing: a cycle tries each kind's endpoint in dialect order (for
 * --backend-kind auto, starting with the kind learned so far) until one
 * answers in a dialect it knows; then every probe interval again, every
 * PROBE_RETRY_MS while the server is unreachable, and sooner when a request
 * is waiting for it. A server that answers HTTP but no known API is not
 * healthy: the message names every URL tried and what it answered.
 *
 * Loop thread only.
 */
#ifndef LMSCHED_BACKEND_BACKEND_H
#define LMSCHED_BACKEND_BACKEND_H

#include <stdbool.h>
#include <stdint.h>

#include "scheduler/backend/dialect.h"
#include "scheduler/backend/http.h"
#include "scheduler/chat/chat.h"

/* While the server is unreachable it is probed this often. */
#define BACKEND_PROBE_RETRY_US 2000000
/* A request waiting for an unreachable server brings the next probe
 * forward, to at most one every this often. */
#define BACKEND_PROBE_SOON_US 250000

typedef struct backend_config {
    const char *url;        /* base URL, no trailing '/' and no /v1 */
    const char *kind;       /* "auto" or a dialect name */
    const char *token;      /* Bearer token or NULL (copied by the HTTP target) */
    int probe_interval_ms;  /* re-read the model info this often while healthy */
} backend_config;

typedef struct backend {
    char url[512];
    const dialect *forced;  /* --backend-kind, NULL for auto */
    const dialect *kind;    /* what it turned out to be, NULL unknown */
    bool healthy;
    bool failing;           /* taken out after a burst of server errors: only a
                             * successful probe brings it back */
    char last_error[1024];
    char model[256];        /* "" unknown */
    int64_t context_length; /* per slot, -1 unknown */
    int64_t slots;          /* -1 unknown */
    int64_t size_bytes;     /* -1 unknown */
    int64_t checked_us;     /* last probe answer or failure, 0 never */
    int64_t down_since_us;  /* when it became unreachable; 0 while healthy */
    bool announce;          /* log health changes (off during start-up) */
    /* Probing: */
    http_xfer *probe;       /* running probe, or NULL */
    size_t probe_stage;     /* index into dialects[] */
    int64_t next_probe_us;
    int64_t probe_started_us;
    int64_t probe_interval_us;
    char probe_tried[400];  /* what each stage of the current cycle got */
    /* Exact token counts: 1 it answered one, 0 it cannot (404, 501 or an
     * answer not understood: asked no more), -1 not asked yet. */
    int tokenizes;
    http_client *http;
    http_target *target;
} backend;

/* What backend_probe_done changed, for the core (budget, dispatch). */
enum {
    BACKEND_INFO = 1,   /* model, size, slots or context */
    BACKEND_HEALTH = 2, /* healthy flipped */
};

/* Sets b up; no I/O yet. Returns LMSCHED_OK, LMSCHED_EINVAL (unknown kind)
 * or LMSCHED_ENOMEM. */
int backend_init(backend *b, http_client *http, const backend_config *cfg);
/* Cancels a running probe and frees what b holds. */
void backend_fini(backend *b);

/* "lmstudio", "llamacpp", "openai" or "unknown". */
const char *backend_kind_name(const backend *b);
/* Whether requests carry the slot the policy chose ("id_slot"). */
bool backend_pins_slots(const backend *b);

/* Starts a probe cycle now (start-up). */
void backend_probe_start(backend *b, int64_t now_us);
/* Starts a probe cycle when one is due. */
void backend_probe_tick(backend *b, int64_t now_us);
/* Whether x is b's probe. */
bool backend_is_probe(const backend *b, const http_xfer *x);
/* Takes a finished probe (and frees it). Returns BACKEND_* flags. */
unsigned backend_probe_done(backend *b, http_xfer *x, int64_t now_us);
/* When b next wants the loop awake (a probe due), INT64_MAX if never. */
int64_t backend_next_wake(const backend *b, int64_t now_us);

/* A request could not connect (why: the error): unhealthy, probed soon.
 * Returns BACKEND_HEALTH when it was healthy. */
unsigned backend_set_down(backend *b, const char *why, int64_t now_us);
/* Server errors came in a burst (why: what they were): unhealthy until a
 * probe succeeds, which is at least BACKEND_PROBE_RETRY_US away; answers
 * to chat requests do not bring it back meanwhile, nor do waiting requests
 * bring the probe forward. Returns BACKEND_HEALTH when it was healthy. */
unsigned backend_set_failing(backend *b, const char *why, int64_t now_us);
/* The server answered (a probe, or a request with an HTTP answer while
 * not failing): healthy. Returns BACKEND_HEALTH when it was not. */
unsigned backend_set_up(backend *b);
/* A request is waiting for this unreachable server: probe soon. */
void backend_wanted(backend *b, int64_t now_us);

/* How a chat request goes out. */
typedef struct backend_chat_opts {
    bool cache_prompt;  /* "cache_prompt": true (llama.cpp; others ignore it) */
    int32_t max_tokens; /* when the request gives none (-1: omit) */
    int slot;           /* the policy's slot, sent as id_slot where pinned; -1 none */
} backend_chat_opts;

/* Starts a streamed chat completion of r. Returns LMSCHED_OK and *xp, or
 * an error (LMSCHED_ENOMEM, LMSCHED_EINTERNAL). */
int backend_chat_start(backend *b, const chat_req *r, const backend_chat_opts *o,
                       void *owner, http_xfer **xp);

/* ---- exact token counts ------------------------------------------------------
 *
 * A chat's prompt tokens as the server will count them: its templated text
 * (POST /apply-template with the body the chat would be sent with), then
 * that text's tokens (POST /tokenize). Two small transfers on the shared
 * client, neither taking a slot; the caller owns whichever is running and
 * frees it to cancel. Their tags are these (probes' tags are below
 * n_dialects). */
enum {
    BACKEND_TAG_TEMPLATE = 0x100,
    BACKEND_TAG_TOKENIZE = 0x101,
};
/* What backend_count_step made of a finished count transfer. */
enum {
    BACKEND_COUNT_NEXT = 1,   /* the template came: *next counts its tokens */
    BACKEND_COUNT_DONE = 2,   /* *tokens is the count */
    BACKEND_COUNT_FAILED = 3, /* no count this time (b->tokenizes says whether ever) */
};

/* Whether b can be asked for a count: of a kind that tokenizes, and not
 * found unable to. */
bool backend_counts_tokens(const backend *b);
/* Starts the count of r as it would be sent with o (its first transfer).
 * Returns LMSCHED_OK and *xp, or an error. */
int backend_count_start(backend *b, const chat_req *r, const backend_chat_opts *o,
                        void *owner, http_xfer **xp);
/* Takes a finished count transfer x of b (frees it) and returns
 * BACKEND_COUNT_*: after the template, starts the tokenize transfer (owned
 * by owner) in *next. A server that answers either endpoint with 404, 405
 * or 501, or with a body that is not the expected JSON, cannot count:
 * b->tokenizes becomes 0 (logged once). */
int backend_count_step(backend *b, http_xfer *x, void *owner, http_xfer **next,
                       int64_t *tokens);

#endif /* LMSCHED_BACKEND_BACKEND_H */
