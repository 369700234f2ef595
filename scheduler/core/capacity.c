/*
 * capacity - how much may run at once: the memory budget (the 60% rule,
 * docs/memory-budget.md) from the machine's RAM and what the backend
 * reports, the KV bytes each request reserves while it runs, and the
 * backend's slots handed to the policy.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "lmsched/wire.h"
#include "scheduler/core/core.h"
#include "scheduler/memory/gguf.h"
#include "scheduler/util/log.h"

/* Slots the policy models at most. */
#define CAPACITY_MAX_SLOTS 256

int64_t sched_context(const sched *s)
{
    const backend *b = &s->backends[0];
    if (b->context_length > 0)
        return b->context_length;
    return s->cfg.context > 0 ? s->cfg.context : BUDGET_DEFAULT_CONTEXT;
}

int capacity_init(sched *s)
{
    const sched_config *cfg = &s->cfg;
    uint64_t ram = cfg->total_ram;
    if (ram == 0 && budget_total_ram(&ram) != 0) {
        log_error("cannot read the total RAM; pass --total-ram");
        return 1;
    }
    s->bin.total_ram = ram;
    s->kv_bytes_per_token = BUDGET_DEFAULT_KV_BYTES_PER_TOKEN;
    s->kv_source = "default (Llama-3-8B-class f16)";
    if (cfg->kv_bytes_per_token) {
        s->kv_bytes_per_token = cfg->kv_bytes_per_token;
        s->kv_source = "--kv-bytes-per-token";
    } else if (cfg->model_path[0]) {
        gguf_model_info mi;
        char err[256];
        if (gguf_read_info(cfg->model_path, &mi, err, sizeof(err)) != 0) {
            log_error("--model-path %s: %s", cfg->model_path, err);
            return 1;
        }
        uint64_t per = gguf_kv_bytes_per_token(&mi, cfg->cache_type);
        if (per == 0) {
            log_error("--cache-type %s: unknown KV cache type", cfg->cache_type);
            return 1;
        }
        s->kv_bytes_per_token = per;
        s->kv_source = "GGUF header";
        if (s->cfg.model_size == 0)
            s->cfg.model_size = mi.file_size;
        log_info("model %s (%s): %" PRId64 " layers, %" PRId64 " KV heads, K %" PRId64
                 " + V %" PRId64 " per head, %s cache -> %" PRIu64 " bytes of KV per token",
                 cfg->model_path, mi.arch, mi.n_layer, mi.n_head_kv, mi.key_length,
                 mi.value_length, cfg->cache_type, per);
    }
    return 0;
}

void capacity_update(sched *s)
{
    const backend *b = &s->backends[0];
    budget_in *in = &s->bin;
    int64_t ctx = sched_context(s);
    in->ram_fraction = s->cfg.ram_fraction;
    in->model_size = b->size_bytes > 0 ? (uint64_t)b->size_bytes : s->cfg.model_size;
    /* A full-context request is the worst case; per-token accounting lets
     * shorter ones share that room. */
    in->kv_per_request = s->cfg.kv_per_request ? s->cfg.kv_per_request
                                               : s->kv_bytes_per_token * (uint64_t)ctx;
    in->slots = b->slots > 0 ? (unsigned)b->slots : s->cfg.slots;
    in->max_concurrent = s->cfg.max_concurrent;
    if (budget_compute(in, &s->bout) != 0) {
        log_error("memory budget: %s", s->bout.explain);
        s->max_concurrent = 1;
        s->limited_by = "memory";
        return;
    }
    unsigned old = s->max_concurrent;
    s->max_concurrent = s->bout.max_concurrent;
    if (s->bout.cap && s->bout.fit >= s->bout.cap)
        s->limited_by = in->max_concurrent ? "flag" : "slots";
    else
        s->limited_by = "memory";
    if (!s->cfg.kv_per_request && s->bout.cap) {
        /* Per-token accounting: memory is checked per request at dispatch,
         * so the only fixed cap is the slots (or the flag). */
        s->max_concurrent = s->bout.cap;
        s->limited_by = in->max_concurrent ? "flag" : "slots";
    }
    unsigned slots = b->slots > 0 ? (unsigned)b->slots
                     : s->cfg.slots ? s->cfg.slots : s->max_concurrent;
    if (slots > CAPACITY_MAX_SLOTS)
        slots = CAPACITY_MAX_SLOTS;
    if (slots != policy_slots(s->pol) && s->inflight == 0)
        policy_set_slots(s->pol, slots);
    /* The policy's slot is sent where the server takes one (llama.cpp's
     * id_slot) and the policy places requests itself (prefix); otherwise
     * it models the server's own choice. */
    s->pin_slots = backend_pins_slots(b) && strcmp(policy_name(s->pol), "prefix") == 0;
    policy_set_placement(s->pol, s->pin_slots, s->cfg.slot_similarity);
    /* Until start-up is done the numbers are provisional: sched_start says
     * them once; afterwards every change is logged. */
    if (old != s->max_concurrent && s->started)
        log_info("memory budget: %s", s->bout.explain);
}

uint64_t capacity_reserve(const sched *s, uint32_t prompt_tokens, int32_t max_tokens)
{
    if (s->cfg.kv_per_request)
        return s->cfg.kv_per_request;
    /* prompt + what it may generate, never more than one slot's context */
    int64_t ctx = sched_context(s);
    int64_t gen = max_tokens > 0                  ? max_tokens
                  : s->cfg.default_max_tokens > 0 ? s->cfg.default_max_tokens
                                                  : ctx - (int64_t)prompt_tokens;
    int64_t toks = (int64_t)prompt_tokens + (gen > 0 ? gen : 0);
    if (toks > ctx)
        toks = ctx;
    return s->kv_bytes_per_token * (uint64_t)(toks > 0 ? toks : 1);
}
