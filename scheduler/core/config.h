/*
 * config - the flags of `lmsched serve`, parsed into one struct the rest of
 * the daemon reads. Defaults live here and in config_usage() only.
 */
#ifndef LMSCHED_CONFIG_H
#define LMSCHED_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "scheduler/util/log.h"

typedef struct sched_config {
    char listen[512];          /* nng URL the daemon listens on */
    char backend[512];         /* base URL of the LLM server, no trailing '/' */
    char backend_stripped[24]; /* API path dropped from the given URL ("/v1"), or "" */
    char backend_kind[16];     /* "auto", "lmstudio", "llamacpp", "openai" */
    char policy[16];           /* queue policy name */
    bool cache_prompt;         /* send "cache_prompt": true */
    double ram_fraction;       /* share of RAM the model plus KV caches may use */
    uint64_t total_ram;        /* 0: read from the system (a flag for tests and what-ifs) */
    uint64_t model_size;       /* 0: from the backend */
    uint64_t kv_per_request;   /* flat reservation per request; 0: per-token accounting */
    uint64_t kv_bytes_per_token; /* 0: from --model-path's GGUF header, else the default */
    char model_path[512];      /* GGUF file to read the architecture (and size) from */
    char cache_type[16];       /* KV cache element type for the GGUF formula ("f16") */
    int starve_ms;             /* prefix policy: queued longer than this runs next */
    unsigned max_overtakes;    /* prefix policy: ... or overtaken this often (0: 4 x slots) */
    int gather_ms;             /* prefix policy: gather window for loads, conversation hold */
    double slot_similarity;    /* the backend's slot-prompt-similarity (LM Studio placement) */
    int64_t context;           /* fallback per-slot context; 0: none */
    unsigned slots;            /* fallback parallel slots; 0: none */
    unsigned max_concurrent;   /* user cap; 0: none */
    unsigned max_queue;
    bool force;                /* start even if the model alone exceeds the budget */
    unsigned max_retries;      /* retries of transient backend errors before any token */
    int request_timeout_ms;    /* whole backend transfer */
    int connect_timeout_ms;    /* TCP connect to the backend */
    int drain_timeout_ms;      /* how long shutdown waits for in-flight requests */
    int backend_wait_ms;       /* a request without a deadline waits this long for an
                                * unreachable backend before failing */
    uint64_t max_response_bytes; /* most bytes of one backend response (stream or body) */
    int probe_interval_ms;     /* how often /api/v1/models (or /props) is re-read */
    int32_t default_max_tokens;/* used when a request gives none; -1: let the backend decide */
    log_level log_level;
    /* Access control (docs/security.md). */
    unsigned socket_mode;      /* ipc:// socket file permissions (default 0600) */
    char socket_group[256];    /* "" or a group name or number for the ipc:// socket file */
    char auth_token_file[512]; /* "" or the file holding the token every request must carry */
    unsigned max_per_conn;     /* outstanding requests per agent connection (default 256) */
} sched_config;

/* Fills defaults. default_listen is the agent library's default URL. */
void config_defaults(sched_config *cfg, const char *default_listen);

/* Parses `serve` arguments (argv[0] is "serve"). Returns 0 to run, 1 when
 * --help or --version was handled (exit 0), 2 on a usage error (message
 * already printed to stderr). */
int config_parse(sched_config *cfg, int argc, char **argv);

void config_usage(FILE *out);

#endif /* LMSCHED_CONFIG_H */
