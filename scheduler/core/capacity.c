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

/* Before the backend reported a count the estimate (4 bytes a token) is
 * scaled by 5/4, i.e. 3.2 bytes a token: English text takes 4-5 bytes a
 * token with today's BPE vocabularies, code and JSON 3-4, so the common
 * prompt is not under-reserved. Then the template's tokens the estimate may
 * miss: chain.c renders ChatML's markers as text, 28 bytes (7 estimated
 * tokens) a message where real templates spend about 5 tokens (a start
 * marker, the role, a newline, an end marker and a newline: ChatML, Llama 3,
 * Gemma), so per message they are covered; what is not is the BOS token and
 * the text some templates add (a date line in Llama 3.1's system header),
 * plus a margin for short messages, which tokenize denser. */
#define CAPACITY_FALLBACK_SCALE_PERCENT 125
#define CAPACITY_TEMPLATE_REQUEST 4
#define CAPACITY_TEMPLATE_MESSAGE 2
/* Over the learned ratio: the prompts' density varies, so the next one may
 * be a little denser than the densest of the window (docs/memory-budget.md). */
#define CAPACITY_MARGIN_PERCENT 3
#define CAPACITY_MARGIN_TOKENS 2
/* A reported ratio outside [1/8, 8] backend tokens per estimated one is not
 * a tokenizer's (a server that counts something else): it is ignored. */
#define CAPACITY_RATIO_MIN 125
#define CAPACITY_RATIO_MAX 8000

/* Slots the policy models at most. */
#define CAPACITY_MAX_SLOTS 256

int64_t sched_context(const sched *s, int bi)
{
    int64_t fallback = s->cfg.context > 0 ? s->cfg.context : BUDGET_DEFAULT_CONTEXT;
    if (bi >= 0)
        return s->backends[bi].context_length > 0 ? s->backends[bi].context_length : fallback;
    int64_t ctx = 0;
    for (unsigned i = 0; i < s->n_backends; i++) {
        int64_t c = s->be[i].removed ? 0 : sched_context(s, (int)i);
        if (c > ctx)
            ctx = c;
    }
    return ctx > 0 ? ctx : fallback;
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

uint32_t sched_up_mask(const sched *s)
{
    uint32_t m = 0;
    for (unsigned i = 0; i < s->n_backends; i++)
        if (s->backends[i].healthy && !s->be[i].removed)
            m |= 1u << i;
    return m;
}

/* One backend's budget and slots, from what it reports and the flags. A
 * remote host's RAM cannot be read from here: every backend's budget uses
 * the RAM of this machine (or --total-ram). Returns its slots. */
static unsigned capacity_backend(sched *s, unsigned i)
{
    const backend *b = &s->backends[i];
    sched_be *e = &s->be[i];
    budget_in *in = &e->bin;
    int64_t ctx = b->context_length > 0                ? b->context_length
                  : s->cfg.context > 0                 ? s->cfg.context
                                                       : BUDGET_DEFAULT_CONTEXT;
    in->total_ram = e->total_ram ? e->total_ram : s->bin.total_ram;
    in->ram_fraction = s->cfg.ram_fraction;
    in->model_size = b->size_bytes > 0 ? (uint64_t)b->size_bytes : s->cfg.model_size;
    /* A full-context request is the worst case; per-token accounting lets
     * shorter ones share that room. */
    in->kv_per_request = s->cfg.kv_per_request ? s->cfg.kv_per_request
                                               : s->kv_bytes_per_token * (uint64_t)ctx;
    in->slots = b->slots > 0 ? (unsigned)b->slots : s->cfg.slots;
    in->max_concurrent = s->cfg.max_concurrent;
    const char *limited_by;
    if (budget_compute(in, &e->bout) != 0) {
        log_error("memory budget%s%s: %s", s->n_backends > 1 ? " of " : "",
                  s->n_backends > 1 ? b->url : "", e->bout.explain);
        e->max_concurrent = 1;
        limited_by = "memory";
    } else {
        e->max_concurrent = e->bout.max_concurrent;
        if (e->bout.cap && e->bout.fit >= e->bout.cap)
            limited_by = in->max_concurrent ? "flag" : "slots";
        else
            limited_by = "memory";
        if (!s->cfg.kv_per_request && e->bout.cap) {
            /* Per-token accounting: memory is checked per request at
             * dispatch, so the only fixed cap is the slots (or the flag). */
            e->max_concurrent = e->bout.cap;
            limited_by = in->max_concurrent ? "flag" : "slots";
        }
    }
    if (i == 0) {
        s->bout = e->bout;
        s->bin.ram_fraction = in->ram_fraction;
        s->bin.model_size = in->model_size;
        s->bin.kv_per_request = in->kv_per_request;
        s->bin.slots = in->slots;
        s->bin.max_concurrent = in->max_concurrent;
        s->limited_by = limited_by;
    }
    /* Unknown slots: with one backend, as many as may run; with several,
     * one until it reports them (the policy's numbering is shared, and it
     * changes only while nothing runs). */
    unsigned slots = b->slots > 0    ? (unsigned)b->slots
                     : s->cfg.slots  ? s->cfg.slots
                     : s->n_backends > 1 ? 1
                                         : e->max_concurrent;
    /* One added on SIGHUP has none until it reports them: then they are
     * added after everyone's while requests run (capacity_appends). */
    if (e->late && b->slots <= 0 && !s->cfg.slots)
        return 0;
    return slots > 0 ? slots : 1;
}

/* Whether the layout slots[] only gives slots to backends after the last
 * one that has some, so the policy can take it while requests run: each
 * backend keeps its slots up to the first that changes, and from there on
 * none had any. */
static bool capacity_appends(const sched *s, const unsigned *slots)
{
    unsigned i = 0;
    while (i < s->n_backends && slots[i] == s->be[i].n_slots)
        i++;
    for (unsigned k = i; k < s->n_backends; k++)
        if (s->be[k].n_slots != 0)
            return false;
    return true;
}

void capacity_update(sched *s)
{
    unsigned old = s->max_concurrent, total = 0, conc = 0;
    unsigned slots[SCHED_MAX_BACKENDS];
    bool pins = true;
    for (unsigned i = 0; i < s->n_backends; i++) {
        slots[i] = capacity_backend(s, i);
        if (s->be[i].removed) {
            /* Its slots stay where they are (running requests hold them);
             * the up mask keeps new ones off. */
            if (s->be[i].n_slots > 0)
                slots[i] = s->be[i].n_slots;
            continue;
        }
        conc += s->be[i].max_concurrent;
        pins = pins && backend_pins_slots(&s->backends[i]);
    }
    s->max_concurrent = conc;
    /* The policy models at most CAPACITY_MAX_SLOTS slots in all: the
     * backends share them, the first ones first. */
    for (unsigned i = 0; i < s->n_backends; i++) {
        if (slots[i] > CAPACITY_MAX_SLOTS - total)
            slots[i] = CAPACITY_MAX_SLOTS - total;
        total += slots[i];
    }
    bool changed = false;
    for (unsigned i = 0; i < s->n_backends; i++)
        changed = changed || slots[i] != s->be[i].n_slots;
    if (changed && (s->inflight == 0 || capacity_appends(s, slots)) &&
        policy_set_backend_slots(s->pol, slots, s->n_backends) == LMSCHED_OK) {
        unsigned base = 0;
        for (unsigned i = 0; i < s->n_backends; i++) {
            s->be[i].slot_base = base;
            s->be[i].n_slots = slots[i];
            base += slots[i];
        }
    }
    /* The policy's slot is sent where the server takes one (llama.cpp's
     * id_slot) and the policy places requests itself (prefix); otherwise
     * it models the server's own choice. With several backends, only when
     * every one of them pins. */
    s->pin_slots = pins && strcmp(policy_name(s->pol), "prefix") == 0;
    policy_set_placement(s->pol, s->pin_slots, s->cfg.slot_similarity);
    /* Until start-up is done the numbers are provisional: sched_start says
     * them once; afterwards every change is logged. */
    if (old != s->max_concurrent && s->started)
        log_info("memory budget: %s", s->bout.explain);
}

uint32_t capacity_prompt_tokens(const sched *s, const prefix_chain *c, size_t n_messages)
{
    uint64_t t;
    if (s->n_tok_ratio > 0) {
        /* The largest ratio of the last answers: a prompt as dense as the
         * densest of them is not under-reserved. */
        uint32_t r = 0;
        for (unsigned i = 0; i < s->n_tok_ratio; i++)
            r = s->tok_ratio[i] > r ? s->tok_ratio[i] : r;
        t = ((uint64_t)c->tokens * r + 999) / 1000;
        /* Texts tokenize unevenly (names, code, another language), so this
         * prompt may be a little denser than every one measured: a margin. */
        t += t * CAPACITY_MARGIN_PERCENT / 100 + CAPACITY_MARGIN_TOKENS;
    } else {
        t = ((uint64_t)c->tokens * CAPACITY_FALLBACK_SCALE_PERCENT + 99) / 100 +
            CAPACITY_TEMPLATE_REQUEST +
            (uint64_t)n_messages * CAPACITY_TEMPLATE_MESSAGE;
    }
    return t > UINT32_MAX ? UINT32_MAX : (uint32_t)t;
}

void capacity_learn_tokens(sched *s, uint32_t est, int64_t prompt_tokens)
{
    if (est == 0 || prompt_tokens <= 0)
        return;
    /* ratio x 1000, rounded up so that est x ratio covers prompt_tokens */
    uint64_t r = ((uint64_t)prompt_tokens * 1000 + est - 1) / est;
    if (r < CAPACITY_RATIO_MIN || r > CAPACITY_RATIO_MAX)
        return;
    s->tok_ratio[s->tok_next] = (uint32_t)r;
    s->tok_next = (s->tok_next + 1) % SCHED_TOK_WINDOW;
    if (s->n_tok_ratio < SCHED_TOK_WINDOW)
        s->n_tok_ratio++;
}

/* ---- exact token counts ----------------------------------------------------- */

/* The backend to ask for j's count: the one it is bound to, else the first
 * of those that may run it (with one backend, that one), if it is up and
 * counts tokens; -1 for none. One request, one count: the backends that may
 * run it serve the same model, so any of them counts the same. */
static int capacity_count_backend(const sched *s, const job *j)
{
    uint32_t all = s->n_backends >= 32 ? ~0u : (1u << s->n_backends) - 1;
    uint32_t m = j->bound >= 0       ? 1u << j->bound
                 : j->pi.backends != 0 ? j->pi.backends
                                       : all;
    for (unsigned i = 0; i < s->n_backends; i++)
        if (((m >> i) & 1u) && !s->be[i].removed && s->backends[i].healthy &&
            backend_counts_tokens(&s->backends[i]))
            return (int)i;
    return -1;
}

void capacity_count_start(sched *s, job *j)
{
    if (strcmp(s->cfg.exact_tokens, "off") == 0 || j->count_asked)
        return;
    int i = capacity_count_backend(s, j);
    if (i < 0)
        return;
    if (s->be[i].counting >= SCHED_COUNTS_PER_BACKEND) {
        s->tokc.wanted = true;
        return;
    }
    /* The options the chat goes out with (loop_job_start); the slot is not
     * chosen yet, and id_slot does not change the prompt. */
    backend_chat_opts o = {
        .cache_prompt = s->cfg.cache_prompt,
        .max_tokens = s->cfg.default_max_tokens,
        .slot = -1,
    };
    j->count_asked = true;
    if (backend_count_start(&s->backends[i], j->req, &o, j, &j->count) != LMSCHED_OK) {
        j->count = NULL;
        s->tokc.failed++;
        return;
    }
    j->count_be = (unsigned)i;
    s->be[i].counting++;
    s->tokc.asked++;
}

void capacity_count_cancel(sched *s, job *j)
{
    if (j->count == NULL)
        return;
    http_xfer_free(s->http, j->count);
    j->count = NULL;
    s->be[j->count_be].counting--;
    s->tokc.freed = true;
}

void capacity_count_more(sched *s)
{
    /* Only when a count has ended since the last look: otherwise the cap
     * still holds, and walking every job each turn costs O(queued). */
    if (!s->tokc.wanted || !s->tokc.freed)
        return;
    s->tokc.wanted = false;
    s->tokc.freed = false;
    for (job *j = s->jobs; j != NULL; j = j->next) {
        if (j->state == JOB_QUEUED && !j->count_asked)
            capacity_count_start(s, j); /* sets wanted again while the cap holds */
        /* One backend: at its cap, no other job can be asked either. */
        if (s->tokc.wanted && s->n_backends == 1)
            break;
    }
}

void capacity_count_done(sched *s, job *j, http_xfer *x)
{
    http_xfer *next = NULL;
    int64_t n = 0;
    j->count = NULL;
    int r = backend_count_step(&s->backends[j->count_be], x, j, &next, &n);
    if (r == BACKEND_COUNT_NEXT) {
        j->count = next;
        return;
    }
    s->be[j->count_be].counting--;
    s->tokc.freed = true;
    if (r != BACKEND_COUNT_DONE || n <= 0) {
        s->tokc.failed++;
        return;
    }
    s->tokc.counted++;
    j->exact_tokens = n > UINT32_MAX ? UINT32_MAX : (uint32_t)n;
    /* A perfect observation of the estimate's error: requests dispatched
     * before their own count arrives reserve by it. */
    capacity_learn_tokens(s, j->chain.tokens, n);
    if (j->reserved || (j->state != JOB_QUEUED && j->state != JOB_PENDING)) {
        /* Its reservation is counted in the budget (or it never was, and it
         * has ended): that stays as it was. */
        s->tokc.late++;
        return;
    }
    /* Not counted in any budget yet (queued, or chosen and waiting for
     * memory: loop_reserve reads j->reserve at each try), so changing it
     * leaves every sum as it was. */
    log_debug("request %" PRIu64 "/%" PRIu64 ": %u prompt tokens by the backend's count, %u "
              "reserved by the estimate", j->sink.owner, j->sink.id, j->exact_tokens,
              j->reserve_tokens);
    j->reserve_tokens = j->exact_tokens;
    j->reserve = capacity_reserve(s, j->reserve_tokens, j->req->max_tokens);
    if (j->state == JOB_QUEUED)
        capacity_fit(s, j);
    s->tokc.applied++;
}

void capacity_note_answer(sched *s, const job *j, int64_t prompt_tokens)
{
    if (prompt_tokens <= 0)
        return;
    int64_t d = (int64_t)j->reserve_tokens - prompt_tokens;
    s->tokc.answers++;
    if (d == 0)
        s->tokc.exact++;
    else if (d < 0)
        s->tokc.under++;
    else
        s->tokc.over++;
    s->tokc.error_tokens += (uint64_t)(d < 0 ? -d : d);
}

uint64_t capacity_reserve(const sched *s, uint32_t prompt_tokens, int32_t max_tokens)
{
    return capacity_reserve_on(s, -1, prompt_tokens, max_tokens);
}

uint64_t capacity_reserve_on(const sched *s, int bi, uint32_t prompt_tokens, int32_t max_tokens)
{
    if (s->cfg.kv_per_request)
        return s->cfg.kv_per_request;
    /* prompt + what it may generate, never more than one slot's context:
     * before it is placed, the largest context of any backend, so the
     * budget fit (capacity_fit) never counts it smaller than it can be. */
    int64_t ctx = sched_context(s, bi);
    int64_t gen = max_tokens > 0                  ? max_tokens
                  : s->cfg.default_max_tokens > 0 ? s->cfg.default_max_tokens
                                                  : ctx - (int64_t)prompt_tokens;
    int64_t toks = (int64_t)prompt_tokens + (gen > 0 ? gen : 0);
    if (toks > ctx)
        toks = ctx;
    return s->kv_bytes_per_token * (uint64_t)(toks > 0 ? toks : 1);
}

void capacity_fit(sched *s, job *j)
{
    if (s->routing != SCHED_ROUTE_CACHE || j->elig == 0)
        return;
    /* Only where its reservation fits the whole budget: placed on a
     * smaller one it would be refused although another holds it. When
     * none does, any (it is refused at dispatch). */
    uint32_t fit = 0;
    for (unsigned i = 0; i < s->n_backends; i++)
        if (((j->elig >> i) & 1u) &&
            (s->be[i].bout.model_too_big || j->reserve <= s->be[i].bout.budget_bytes))
            fit |= 1u << i;
    j->pi.backends = fit != 0 ? fit : j->elig;
}
