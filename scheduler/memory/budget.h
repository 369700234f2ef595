/*
 * budget - the memory rule that decides how many predictions may run at once:
 *
 *   budget         = ram_fraction * total_ram - model_size
 *   max_concurrent = floor(budget / kv_per_request), clamped to [1, cap]
 *
 * where cap is --max-concurrent if given, else the backend's parallel slots
 * if known, else unbounded by slots. docs/memory-budget.md explains it with
 * a worked example. Pure arithmetic plus the one system query for total RAM.
 */
#ifndef LMSCHED_BUDGET_H
#define LMSCHED_BUDGET_H

#include <stdbool.h>
#include <stdint.h>

/* Bytes of KV cache per token assumed when nothing better is known: a
 * Llama-3-8B-class model (32 layers, 8 KV heads of 128, f16 cache) holds
 * 2 * 32 * 8 * 128 * 2 = 131072 bytes per token. */
#define BUDGET_DEFAULT_KV_BYTES_PER_TOKEN 131072ULL
/* Context assumed per request when the backend does not report one. */
#define BUDGET_DEFAULT_CONTEXT 4096

typedef struct budget_in {
    uint64_t total_ram;       /* bytes */
    double ram_fraction;      /* (0, 1] */
    uint64_t model_size;      /* bytes, 0 if unknown */
    uint64_t kv_per_request;  /* bytes, > 0 */
    unsigned slots;           /* backend parallel slots, 0 if unknown */
    unsigned max_concurrent;  /* --max-concurrent, 0 if not given */
} budget_in;

typedef struct budget_out {
    uint64_t budget_bytes;    /* ram_fraction*total - model_size, 0 if negative */
    uint64_t fit;             /* floor(budget / kv_per_request) before clamping */
    unsigned cap;             /* the upper clamp used (0 = none) */
    unsigned max_concurrent;  /* the result, >= 1 */
    bool model_too_big;       /* model_size >= ram_fraction * total_ram */
    char explain[320];        /* one line with the numbers, for logs and the refusal message */
} budget_out;

/* Computes the rule. Returns 0, or -1 (with explain set) when the inputs are
 * unusable (total_ram 0, fraction outside (0,1], kv_per_request 0). When
 * model_too_big, max_concurrent is 1 and explain shows the numbers; the
 * caller refuses to start unless --force. */
int budget_compute(const budget_in *in, budget_out *out);

/* Default KV bytes per request for a per-slot context length (tokens):
 * context * BUDGET_DEFAULT_KV_BYTES_PER_TOKEN; context <= 0 uses
 * BUDGET_DEFAULT_CONTEXT. */
uint64_t budget_default_kv_per_request(int64_t context);

/* Total physical RAM: MemTotal of /proc/meminfo on Linux, sysctl hw.memsize
 * on macOS. Returns 0 and sets *out, or -1. */
int budget_total_ram(uint64_t *out);

/* Parses /proc/meminfo text for MemTotal (kB). Returns 0 or -1. */
int budget_parse_meminfo(const char *text, uint64_t *out);

/* Parses a size: "123" (bytes), "4.5G", "512MiB", "8GB", "1k" ... K/M/G/T
 * with or without "i"/"B", all powers of 1024 (so "48GB" is 48 GiB, as
 * macOS reports memory). Returns 0 or -1 on junk, overflow, or negatives.
 * The same as num_parse_size (scheduler/util/num.h), which flags use. */
int budget_parse_size(const char *s, uint64_t *out);

/* Formats bytes as "12.3 GiB" / "512.0 MiB" / "900 B" into buf. */
const char *budget_fmt_size(uint64_t bytes, char *buf, unsigned len);

#endif /* LMSCHED_BUDGET_H */
