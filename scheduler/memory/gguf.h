/*
 * gguf - reads a model's architecture from the header of its GGUF file and
 * turns it into KV-cache bytes per token, for per-token memory accounting
 * (docs/memory-budget.md, "Per-token accounting"). Only the header and the
 * metadata key/value pairs are read; tensor data is never touched.
 */
#ifndef LMSCHED_GGUF_H
#define LMSCHED_GGUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct gguf_model_info {
    char arch[64];          /* general.architecture, e.g. "llama" */
    char name[128];         /* general.name or "" (control bytes replaced by '?') */
    int64_t n_layer;        /* <arch>.block_count */
    int64_t n_head;         /* <arch>.attention.head_count */
    int64_t n_head_kv;      /* <arch>.attention.head_count_kv (defaults to n_head) */
    int64_t n_embd;         /* <arch>.embedding_length, -1 if absent */
    int64_t key_length;     /* <arch>.attention.key_length, default n_embd / n_head */
    int64_t value_length;   /* <arch>.attention.value_length, default n_embd / n_head */
    int64_t context_length; /* <arch>.context_length (training context), -1 if absent */
    uint64_t file_size;     /* bytes of the file (the model's size for the budget) */
} gguf_model_info;

/* Reads the GGUF file at path (versions 2 and 3, little-endian) into *out.
 * The file is treated as hostile: every length is checked against caps
 * (strings 1 MiB, keys 65535 bytes, arrays 100M elements, nesting 8 deep)
 * and against the bytes left in the file, and nothing is allocated from a
 * declared length. Where the model stores head_count or head_count_kv per
 * layer (an integer array), the largest value is used, which never
 * underestimates the cache. embedding_length may be absent only when both
 * key_length and value_length are given.
 *
 * Returns 0, or -1 with errbuf (if non-NULL) saying what is wrong, without
 * the path: "not a GGUF file", "truncated at metadata key 12 (tokenizer.
 * ggml.tokens)", "missing llama.block_count". *out is unspecified on error.
 * Blocking file I/O; any thread; no state kept; the caller owns everything. */
int gguf_read_info(const char *path, gguf_model_info *out, char *errbuf, size_t errlen);

/* Bytes of KV cache per token: n_layer * n_head_kv * (key_length +
 * value_length) * bytes per element of the cache type, rounded up to a
 * whole byte. cache_type (case-insensitive): "f16" (2), "f32" (4), "bf16"
 * (2), "q8_0" (34/32), "q4_0" (18/32), "q4_1" (20/32), "q5_0" (22/32),
 * "q5_1" (24/32). Returns 0 for an unknown cache type, a NULL argument, a
 * non-positive field or a result that would not fit in uint64_t, so 0 always
 * means "cannot tell", never "free". Pure; any thread. */
uint64_t gguf_kv_bytes_per_token(const gguf_model_info *mi, const char *cache_type);

#endif /* LMSCHED_GGUF_H */
