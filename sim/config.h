/*
 * simcfg - lmsim's command line: the simulated machine (slots, context,
 * speeds), the model it pretends to serve, and the faults it injects.
 * Defaults model an M4 Pro running an 8B Q4 model under LM Studio. The
 * flags are one option table (scheduler/util/opt), as the daemon's are.
 */
#ifndef LMSIM_CONFIG_H
#define LMSIM_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "scheduler/util/log.h"

/* Upper bounds on what the command line may ask for; they keep memory and
 * arithmetic bounded, not a limit of the model. */
#define SIMCFG_MAX_SLOTS 256u
#define SIMCFG_MAX_CTX (1u << 24)
#define SIMCFG_MAX_MODEL_NAME 256u

/* What a garbage answer looks like (--garbage-mode). */
typedef enum sim_garbage_mode {
    SIM_GARBAGE_JSON = 0,     /* 200 application/json, invalid JSON */
    SIM_GARBAGE_TRUNCATE = 1, /* 200 event stream that stops mid-answer, mid-event */
    SIM_GARBAGE_HTML = 2,     /* 502 text/html error page from a "proxy" */
    SIM_GARBAGE_HUGE = 3,     /* 200 event stream of garbage_bytes bytes */
    SIM_GARBAGE_ANY = 4,      /* one of the above, drawn per request */
} sim_garbage_mode;

typedef struct sim_config {
    int port;               /* 0: pick a free port */
    char port_file[4096];   /* "": none */
    unsigned slots;         /* parallel sequences (LM Studio "parallel") */
    unsigned ctx;           /* context per slot, tokens */
    char model[SIMCFG_MAX_MODEL_NAME + 1]; /* model key */
    int64_t model_size;     /* bytes, reported as size_bytes */
    double slot_similarity; /* fraction of the prompt a cached prefix must cover */
    unsigned host_cache;    /* tokens of evicted slot prompts kept in host RAM
                               (llama.cpp's --cache-ram); 0: none */
    double prefill_tps;     /* prompt tokens/s shared by all prefilling sequences */
    double decode_tps;      /* tokens/s of one sequence decoding alone */
    double batch_slowdown;  /* per extra active sequence, see docs/simulator.md */
    double time_scale;      /* simulated seconds per wall-clock second */
    unsigned reply_tokens;  /* natural reply length */
    unsigned reasoning_tokens; /* reasoning_content tokens before every answer */
    double fail_rate;       /* fraction answered 500 Channel Error */
    unsigned
        crash_after;   /* 0: never; else crash when the Nth request starts generating */
    bool crash_exit;   /* exit(3) at the crash instead of continuing */
    double spike_rate; /* fraction delayed before prefill */
    double spike_ms;   /* simulated ms of that delay */
    double malformed_rate; /* fraction of streams given one invalid chunk */
    unsigned refuse_ms;    /* wall ms to wait before listening */
    double hang_rate;      /* fraction accepted and never answered */
    double garbage_rate;   /* fraction answered with garbage (garbage_mode) */
    int garbage_mode;      /* enum sim_garbage_mode */
    uint64_t garbage_bytes; /* length of a SIM_GARBAGE_HUGE stream */
    uint64_t seed;
    log_level log_level;
    bool instant;  /* answer chats at once, outside the engine (--instant) */
    bool no_tokenize; /* no /apply-template nor /tokenize: 404, as LM Studio */
} sim_config;

struct opt_table;

/* Fills cfg with the defaults. */
void simcfg_init(sim_config *cfg);

/* Parses argv into cfg. Returns 0 to run, 1 when --help, --version or
 * --help-markdown was printed to out (exit 0), -1 after printing an error
 * to err (exit 2). Not thread-safe (getopt); permutes argv. */
int simcfg_parse(sim_config *cfg, int argc, char **argv, FILE *out, FILE *err);

/* The option table (util/opt): what --help and the docs are made from. */
const struct opt_table *simcfg_options(void);

#endif /* LMSIM_CONFIG_H */
