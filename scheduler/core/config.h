/*
 * config - the flags of `lmsched serve`, parsed into one struct the rest of
 * the daemon reads. Each flag is one entry of the option table in config.c
 * (util/opt): its field, range, default, environment variable and help.
 */
#ifndef LMSCHED_CONFIG_H
#define LMSCHED_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "scheduler/util/log.h"

/* Most LLM servers behind one daemon (--backend repeated). */
#define CONFIG_MAX_BACKENDS 8

/* One line of --backends-file: a server and its own settings. */
typedef struct config_backend_entry {
    char url[512];      /* normalized as --backend's */
    char kind[16];      /* kind=KIND, "" for --backend-kind's */
    uint64_t total_ram; /* total-ram=SIZE: that host's RAM; 0 for --total-ram's
                         * (or this machine's) */
} config_backend_entry;

typedef struct config_backend_list {
    config_backend_entry v[CONFIG_MAX_BACKENDS];
    unsigned n;
} config_backend_list;

typedef struct sched_config {
    char listen[512];          /* nng URL the daemon listens on */
    char backend[512];         /* base URL of the LLM server, no trailing '/' */
    /* --backend repeated: the second and later URLs, in order */
    char backend_more[CONFIG_MAX_BACKENDS - 1][512];
    unsigned n_backends;       /* URLs given (backend + backend_more; more than
                                * CONFIG_MAX_BACKENDS: refused); 0 or 1: one */
    char backend_stripped[24]; /* API path dropped from the given URL ("/v1"), or "" */
    char backends_file[512];   /* "" or --backends-file: the backends, one a line
                                * (re-read on SIGHUP) */
    config_backend_list file_backends; /* what it said at start */
    char backend_kind[16];     /* "auto", "lmstudio", "llamacpp", "openai" */
    char policy[16];           /* queue policy name */
    char routing[16];          /* several backends: "cache" (the policy places over
                                * every backend's slots), or a benchmark baseline:
                                * "round-robin", "least-loaded" */
    bool cache_prompt;         /* send "cache_prompt": true */
    char exact_tokens[8];      /* "auto": ask llama.cpp backends for each request's
                                * prompt tokens (reservations); "off": estimate */
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
    int preempt;               /* --preempt: 1 (on, not the default) a queued request stops a running one of
                                * lower priority when nothing else frees a slot; 0 off */
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
    int stream_timeout_ms;     /* a stream nobody polls this long is canceled */
    uint64_t stream_buffer;    /* ... and one whose unread pieces pass this size */
    int backend_wait_ms;       /* a request without a deadline waits this long for an
                                * unreachable backend before failing */
    unsigned backend_errors;   /* several backends: this many server errors in a row
                                * take one out until its probe succeeds; 0: never */
    int backend_errors_ms;     /* ... within this long */
    uint64_t max_response_bytes; /* most bytes of one backend response (stream or body) */
    int probe_interval_ms;     /* how often /api/v1/models (or /props) is re-read */
    int probe_restore;         /* 1: ask a backend that pins slots whether it restores
                                * evicted prompts (the restore probe), 0: do not */
    int32_t default_max_tokens;/* used when a request gives none; -1: let the backend decide */
    log_level log_level;
    /* Access control (docs/security.md). */
    unsigned socket_mode;      /* ipc:// socket file permissions (default 0600) */
    char socket_group[256];    /* "" or a group name or number for the ipc:// socket file */
    char auth_token_file[512]; /* "" or the file holding the token every request must carry */
    unsigned max_per_conn;     /* outstanding requests per agent connection (default 256) */
    /* The OpenAI-compatible HTTP front door (docs/openai.md). */
    char http[300];              /* "" off, else "HOST:PORT" ("[V6]:PORT"), normalized */
    char http_token_file[512];   /* "" or the token file of HTTP requests (else
                                  * auth_token_file's) */
    uint64_t http_max_body;      /* request body bytes */
    uint64_t http_max_header;    /* request line and headers, bytes */
    unsigned http_max_conns;     /* open connections */
    int http_header_timeout_ms;  /* from connection (or previous answer) to headers */
    int http_body_timeout_ms;    /* from headers to the end of the body; idle writes */
    char http_cors[256];         /* "" no CORS, else the allowed origin ("*" any) */
} sched_config;

/* The default port of --http when none is given (docs/openai.md). */
#define CONFIG_HTTP_PORT 4321

/* Splits a normalized --http value ("HOST:PORT", "[V6]:PORT") into its
 * numeric host (without brackets) and port. Returns 0, or -1 when it is
 * not one. Any thread. */
int config_http_addr(const char *http, char *host, size_t hostlen, int *port, bool *v6);

/* Whether a numeric host of config_http_addr is a loopback address
 * (127.0.0.0/8, ::1). */
bool config_http_loopback(const char *host, bool v6);

struct opt_table;

/* Fills defaults. default_listen is the agent library's default URL. The
 * environment (LMSCHED_URL, LMSCHED_BACKEND) is read by config_parse. */
void config_defaults(sched_config *cfg, const char *default_listen);

/* Parses `serve` arguments (argv[0] is "serve") over the defaults, then the
 * environment variables of the flags not given. Returns 0 to run, 1 when
 * --help, --version or --help-markdown was printed to stdout (exit 0), 2
 * on a usage error (one line already printed to stderr). Main thread,
 * before other threads start (getopt); permutes argv. */
int config_parse(sched_config *cfg, int argc, char **argv);

/* Reads a --backends-file: one backend a line, `URL [kind=KIND]
 * [total-ram=SIZE]`, `#` comments and blank lines skipped, at most
 * CONFIG_MAX_BACKENDS, none twice. Returns 0, or -1 with err set (the file
 * and line). Any thread; reads the file. */
int config_read_backends(const char *path, config_backend_list *out, char *err,
                         size_t errlen);

/* Writes `lmsched serve --help`. */
void config_usage(FILE *out);

/* Writes the option tables of docs/cli.md (what --help-markdown prints). */
void config_markdown(FILE *out);

/* Returns a JSON object of flag name (without "--") -> current value, for
 * the "config" section of the status: numbers for numbers and sizes
 * (bytes), true/false for flags (true when given), strings for URLs, paths,
 * names, the socket mode ("0600") and the log level; null for a flag
 * without a default that is unset. No secret is an option (LM_API_TOKEN is
 * not; --auth-token-file is the file's path). One line, malloc'd: the
 * caller frees it. NULL when out of memory. Any thread; cfg is read only. */
char *config_json(const sched_config *cfg);

/* The option table itself (util/opt), for tests. */
const struct opt_table *config_options(void);

#endif /* LMSCHED_CONFIG_H */
