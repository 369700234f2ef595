/*
 * simeng - the simulated llama.cpp engine behind lmsim: slots with prompt
 * caches, a FIFO wait queue, continuous batching on a simulated clock, and
 * fault injection.
 *
 * Design notes
 * - One mutex (mu) guards everything. The clock thread sleeps on `wake`
 *   until the next simulated event (converted to wall time through
 *   time_scale) or until someone changes the state; HTTP threads sleep on
 *   `progress`, broadcast whenever any request changed.
 * - Simulated time is a pure function of wall time: sim_ms = (wall - base)
 *   * time_scale. Whoever holds the lock may "sync": advance the model from
 *   sim_now to the current simulated time. Advancing walks from event to
 *   event (prefill done, next token, spike over) with the rates that hold
 *   between them, so the simulated timings do not depend on how late a
 *   thread woke up; a late wake-up only delays when tokens become visible.
 * - A request is held by the engine while it is queued or in a slot, and by
 *   the HTTP connection until it releases it; it is freed when both let go.
 * - The crash fault finishes every request in flight at once; with
 *   --crash-exit the clock thread then waits (bounded) until the connections
 *   of the cut streams have closed, so their partial answers reach the
 *   clients, and ends the process with _exit(3).
 */
#include "sim/engine.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "scheduler/util/log.h"

/* Remaining work below this counts as done (floating-point slack). */
#define SIMENG_EPS_TOKENS 1e-6
#define SIMENG_EPS_MS 1e-6
/* How long --crash-exit waits for the cut streams to close, wall ms. */
#define SIMENG_CRASH_EXIT_WAIT_MS 2000
/* Bound on event steps in one advance; only a bug could reach it. */
#define SIMENG_MAX_STEPS 10000000u

static const char simeng_channel_error[] =
    "{\"error\":{\"message\":\"Channel Error\",\"type\":\"server_error\"}}";
static const char simeng_crash_error[] =
    "{\"error\":\"The model has crashed without additional information. "
    "(Exit code: null)\"}";

struct sim_req {
    unsigned refs;
    uint64_t id;
    time_t created;
    char *prompt;
    size_t prompt_len;
    unsigned prompt_n;
    unsigned target; /* tokens to generate */
    bool capped;     /* target set by max_tokens or the context: "length" */
    bool cache_prompt;
    bool stream;
    int id_slot;
    uint64_t word_seed;
    sim_reply *reply; /* NULL: reply_tokens words */
    double spike_ms; /* 0: no spike */
    unsigned malformed_at;
    int garbage_mode; /* SIM_GARBAGE: the kind drawn */
    sim_state state;
    int slot;      /* slot held, -1 if none */
    int last_slot; /* slot it ran in, for the view */
    uint64_t admit_seq;
    unsigned cache_n;
    double prefill_left; /* prompt tokens still to process */
    double decode_acc;   /* progress towards the next token, [0, 1) */
    unsigned n_gen;
    double t_slot;    /* simulated ms: got a slot */
    double t_prefill; /* prefill started */
    double t_first;   /* first token */
    double t_last;    /* last token */
    int fail_status;
    const char *fail_body;
    bool cut_waiting; /* cut by a crash, connection not closed yet */
    sim_req *next;    /* wait queue link */
};

/* A prompt kept in the host cache (--host-cache). */
typedef struct sim_kept {
    char *text;
    size_t len;
    uint64_t last_used; /* LRU stamp */
} sim_kept;

typedef struct sim_slot {
    sim_req *req; /* NULL when idle */
    char *cache;  /* bytes whose tokens the KV cache holds */
    size_t cache_len, cache_cap;
    uint64_t last_used; /* LRU stamp */
} sim_slot;

struct sim_engine {
    const sim_config *cfg;
    pthread_mutex_t mu;
    pthread_cond_t wake;
    pthread_cond_t progress;
    pthread_t thread;
    bool thread_started;
    bool stopping;
    bool changed; /* some request changed since the last broadcast */

    sim_slot *slots;
    /* The host cache: slot prompts kept when a request moved their slot
     * on, restored into a slot for a later request (--host-cache). */
    sim_kept *kept;
    size_t n_kept, cap_kept;
    uint64_t kept_tokens;
    sim_req *q_head, *q_tail;
    unsigned n_queued;

    struct timespec wall_base;
    double sim_now;
    double stats_base; /* sim_now at the last reset */
    uint64_t rng;
    uint64_t next_id;
    uint64_t lru_clock;
    uint64_t admit_seq; /* slot grants since start/reset */

    unsigned started; /* first tokens since start/reset (crash trigger) */
    bool crashed;
    bool exit_pending;
    unsigned cut_pending;

    uint64_t requests, prompt_tokens, prefill_tokens, cached_tokens;
    uint64_t completion_tokens, errors_injected;
    uint64_t fault_fail, fault_crashes, fault_cut, fault_crash_failed;
    uint64_t fault_spike, fault_malformed;
    uint64_t fault_hang, fault_garbage;
    unsigned hanging;
    unsigned max_active;
};

static double simeng_uniform(sim_engine *e)
{
    e->rng = sim_mix64(e->rng);
    return (double)(e->rng >> 11) * (1.0 / 9007199254740992.0);
}

static bool simeng_draw(sim_engine *e, double rate)
{
    if (rate <= 0.0)
        return false;
    /* Drawn even at rate 1 so the sequence does not depend on the rate. */
    return simeng_uniform(e) < rate;
}

unsigned simeng_tokens(size_t len)
{
    return (unsigned)((len + SIMENG_BYTES_PER_TOKEN - 1) / SIMENG_BYTES_PER_TOKEN);
}

bool simeng_final(sim_state s)
{
    return s == SIM_DONE || s == SIM_CUT || s == SIM_FAILED || s == SIM_CANCELLED ||
           s == SIM_GARBAGE;
}

static double simeng_elapsed_ms(const struct timespec *from, const struct timespec *to)
{
    return (double)(to->tv_sec - from->tv_sec) * 1e3 +
           (double)(to->tv_nsec - from->tv_nsec) / 1e6;
}

static struct timespec simeng_add_ms(struct timespec t, double ms)
{
    if (ms < 0)
        ms = 0;
    if (ms > 1e12)
        ms = 1e12;
    long long ns = (long long)(ms * 1e6);
    t.tv_sec += (time_t)(ns / 1000000000LL);
    t.tv_nsec += (long)(ns % 1000000000LL);
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000L;
    }
    return t;
}

static struct timespec simeng_mono(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t;
}

static void simeng_req_unref(sim_req *r)
{
    if (--r->refs > 0)
        return;
    free(r->prompt);
    simreply_free(r->reply);
    free(r);
}

/* Makes the slot cache hold the first len bytes of src. Keeps the old cache
 * on ENOMEM, which only costs cache hits. */
static void simeng_cache_set(sim_slot *s, const char *src, size_t len)
{
    if (len == 0) {
        s->cache_len = 0;
        return;
    }
    if (len > s->cache_cap) {
        char *p = realloc(s->cache, len);
        if (!p) {
            s->cache_len = 0;
            return;
        }
        s->cache = p;
        s->cache_cap = len;
    }
    memmove(s->cache, src, len);
    s->cache_len = len;
}

static void simeng_cache_append(sim_slot *s, const char *src, size_t len)
{
    if (s->cache_len + len > s->cache_cap) {
        size_t cap = s->cache_cap ? s->cache_cap : 64;
        while (cap < s->cache_len + len)
            cap *= 2;
        char *p = realloc(s->cache, cap);
        if (!p)
            return;
        s->cache = p;
        s->cache_cap = cap;
    }
    memcpy(s->cache + s->cache_len, src, len);
    s->cache_len += len;
}

/* Bytes two strings share from their start. */
static size_t simeng_common(const char *a, size_t na, const char *b, size_t nb)
{
    size_t n = na < nb ? na : nb, i = 0;
    while (i < n && a[i] == b[i])
        i++;
    return i;
}

static void simeng_kept_drop(sim_engine *e, size_t k)
{
    e->kept_tokens -= simeng_tokens(e->kept[k].len);
    free(e->kept[k].text);
    e->kept[k] = e->kept[--e->n_kept];
}

static void simeng_kept_clear(sim_engine *e)
{
    while (e->n_kept > 0)
        simeng_kept_drop(e, e->n_kept - 1);
}

/* Tokens of the common prefix of the slot cache and r's prompt. */
static unsigned simeng_lcp_tokens(const sim_slot *s, const sim_req *r)
{
    size_t n = s->cache_len < r->prompt_len ? s->cache_len : r->prompt_len;
    size_t i = 0;
    while (i < n && s->cache[i] == r->prompt[i])
        i++;
    return (unsigned)(i / SIMENG_BYTES_PER_TOKEN);
}

static unsigned simeng_active(const sim_engine *e)
{
    unsigned n = 0;
    for (unsigned i = 0; i < e->cfg->slots; i++)
        n += e->slots[i].req != NULL;
    return n;
}

/* Ends r's stay in the engine: frees its slot (the cache keeps what the
 * slot processed, as llama.cpp's KV cache does), counts it, and drops the
 * engine's hold. */
static void simeng_finish(sim_engine *e, sim_req *r, sim_state final)
{
    if (r->slot >= 0) {
        sim_slot *s = &e->slots[r->slot];
        if (r->state == SIM_DECODE) {
            simeng_cache_set(s, r->prompt, r->prompt_len);
            for (unsigned i = 0; i < r->n_gen; i++) {
                if (r->reply) {
                    /* What the model generated for the token, e.g. a tool
                     * call's markup, which a client sends back. */
                    sim_piece pc;
                    simreply_piece(r->reply, i, &pc);
                    simeng_cache_append(s, pc.cache, pc.cache_len);
                } else {
                    simeng_cache_append(s, simeng_word(r->word_seed, i),
                                        SIMENG_BYTES_PER_TOKEN);
                }
            }
        } else {
            /* Cut short during spike or prefill: the cached prefix plus the
             * prompt tokens processed so far. */
            double done = (double)(r->prompt_n - r->cache_n) - r->prefill_left;
            if (r->state == SIM_SPIKE || done < 0)
                done = 0;
            size_t keep = ((size_t)r->cache_n + (size_t)done) * SIMENG_BYTES_PER_TOKEN;
            simeng_cache_set(s, r->prompt, keep < r->prompt_len ? keep : r->prompt_len);
        }
        s->req = NULL;
        s->last_used = ++e->lru_clock;
        r->slot = -1;
    }
    e->completion_tokens += r->n_gen;
    if (final == SIM_DONE)
        e->requests++;
    r->state = final;
    e->changed = true;
    simeng_req_unref(r);
}

static void simeng_fail(sim_engine *e, sim_req *r, int status, const char *body)
{
    r->fail_status = status;
    r->fail_body = body;
    simeng_finish(e, r, SIM_FAILED);
}

/* The model crashes: streams that have tokens are cut, everything else in
 * flight or waiting gets the crash error, and the caches are gone. */
static void simeng_crash(sim_engine *e)
{
    unsigned cut = 0, failed = 0;
    e->crashed = true;
    e->fault_crashes++;
    for (unsigned i = 0; i < e->cfg->slots; i++) {
        sim_req *r = e->slots[i].req;
        if (!r)
            continue;
        if (r->stream && r->n_gen > 0) {
            r->cut_waiting = true;
            e->cut_pending++;
            simeng_finish(e, r, SIM_CUT);
            cut++;
        } else {
            simeng_fail(e, r, 500, simeng_crash_error);
            failed++;
        }
    }
    while (e->q_head) {
        sim_req *r = e->q_head;
        e->q_head = r->next;
        r->next = NULL;
        simeng_fail(e, r, 500, simeng_crash_error);
        failed++;
    }
    e->q_tail = NULL;
    e->n_queued = 0;
    for (unsigned i = 0; i < e->cfg->slots; i++)
        e->slots[i].cache_len = 0;
    simeng_kept_clear(e);
    e->fault_cut += cut;
    e->fault_crash_failed += failed;
    e->errors_injected += cut + failed;
    log_warn("injected model crash: %u stream(s) cut, %u request(s) failed",
             cut, failed);
    if (e->cfg->crash_exit) {
        e->exit_pending = true;
        pthread_cond_signal(&e->wake);
    }
}

/* The slot r should run in, or -1 if it must wait. */
static int simeng_pick_slot(const sim_engine *e, const sim_req *r)
{
    if (r->id_slot >= 0)
        return e->slots[r->id_slot].req ? -1 : r->id_slot;
    int best = -1, lru = -1;
    unsigned best_lcp = 0;
    for (unsigned i = 0; i < e->cfg->slots; i++) {
        const sim_slot *s = &e->slots[i];
        if (s->req)
            continue;
        if (lru < 0 || s->last_used < e->slots[lru].last_used)
            lru = (int)i;
        if (r->cache_prompt) {
            unsigned lcp = simeng_lcp_tokens(s, r);
            if (lcp > best_lcp) {
                best_lcp = lcp;
                best = (int)i;
            }
        }
    }
    if (best >= 0 && (double)best_lcp >= e->cfg->slot_similarity * (double)r->prompt_n)
        return best;
    return lru;
}

/* Keeps the slot's prompt in the host cache, as llama.cpp saves a slot's
 * state when a task takes the slot: a kept prompt that already holds it
 * is only refreshed, kept prompts it holds go (it replaces them), and the
 * least recently used go until it fits. One larger than the whole cache
 * is not kept. */
static void simeng_kept_save(sim_engine *e, const sim_slot *s)
{
    unsigned tok = simeng_tokens(s->cache_len);
    if (tok == 0 || tok > e->cfg->host_cache)
        return;
    for (size_t k = 0; k < e->n_kept;) {
        sim_kept *x = &e->kept[k];
        size_t c = simeng_common(x->text, x->len, s->cache, s->cache_len);
        if (c == s->cache_len) {
            x->last_used = ++e->lru_clock;
            return;
        }
        if (c == x->len)
            simeng_kept_drop(e, k);
        else
            k++;
    }
    while (e->n_kept > 0 && e->kept_tokens + tok > e->cfg->host_cache) {
        size_t old = 0;
        for (size_t k = 1; k < e->n_kept; k++)
            if (e->kept[k].last_used < e->kept[old].last_used)
                old = k;
        simeng_kept_drop(e, old);
    }
    if (e->n_kept == e->cap_kept) {
        size_t cap = e->cap_kept ? e->cap_kept * 2 : 16;
        sim_kept *v = realloc(e->kept, cap * sizeof(*v));
        if (v == NULL)
            return; /* not kept: costs a restore only */
        e->kept = v;
        e->cap_kept = cap;
    }
    char *t = malloc(s->cache_len);
    if (t == NULL)
        return;
    memcpy(t, s->cache, s->cache_len);
    e->kept[e->n_kept++] = (sim_kept){.text = t, .len = s->cache_len, .last_used = ++e->lru_clock};
    e->kept_tokens += tok;
}

/* r takes slot s (--host-cache): the slot's prompt is kept if r drops part
 * of it, and the kept prompt that gives r more than the slot would is
 * restored into the slot (and leaves the cache), as llama.cpp's
 * server_prompt_cache::load does: one that r matches for less than a
 * quarter of its length is not taken (llama.cpp does not trash a large
 * prompt for a small part of it). */
static void simeng_kept_swap(sim_engine *e, sim_slot *s, const sim_req *r)
{
    size_t have = simeng_common(s->cache, s->cache_len, r->prompt, r->prompt_len);
    if (have < s->cache_len)
        simeng_kept_save(e, s);
    size_t best = have;
    long pick = -1;
    for (size_t k = 0; k < e->n_kept; k++) {
        const sim_kept *x = &e->kept[k];
        size_t c = simeng_common(x->text, x->len, r->prompt, r->prompt_len);
        if (c > best && c * 4 >= x->len) {
            best = c;
            pick = (long)k;
        }
    }
    if (pick < 0)
        return;
    simeng_cache_set(s, e->kept[pick].text, e->kept[pick].len);
    log_debug("host cache: restored %u tokens", simeng_tokens(e->kept[pick].len));
    simeng_kept_drop(e, (size_t)pick);
}

static void simeng_place(sim_engine *e, sim_req *r, int slot, double t)
{
    sim_slot *s = &e->slots[slot];
    if (e->cfg->host_cache > 0 && r->cache_prompt)
        simeng_kept_swap(e, s, r);
    unsigned lcp = r->cache_prompt ? simeng_lcp_tokens(s, r) : 0;
    /* llama.cpp always evaluates at least the last prompt token. */
    r->cache_n = lcp < r->prompt_n - 1 ? lcp : r->prompt_n - 1;
    r->prefill_left = (double)(r->prompt_n - r->cache_n);
    r->slot = slot;
    r->last_slot = slot;
    r->admit_seq = ++e->admit_seq;
    r->t_slot = t;
    s->req = r;
    s->last_used = ++e->lru_clock;
    /* The slot's cache now follows this request's prompt. */
    simeng_cache_set(s, r->prompt, (size_t)r->cache_n * SIMENG_BYTES_PER_TOKEN);

    e->prompt_tokens += r->prompt_n;
    e->cached_tokens += r->cache_n;
    e->prefill_tokens += r->prompt_n - r->cache_n;
    unsigned active = simeng_active(e);
    if (active > e->max_active)
        e->max_active = active;

    if (r->spike_ms > 0) {
        r->state = SIM_SPIKE;
    } else {
        r->state = SIM_PREFILL;
        r->t_prefill = t;
    }
    e->changed = true;
    log_debug("req %llu -> slot %d: prompt %u, cached %u",
              (unsigned long long)r->id, slot, r->prompt_n, r->cache_n);
}

/* Moves waiting requests into idle slots, in arrival order. A request
 * pinned to a busy slot waits without holding up the others. */
static void simeng_admit(sim_engine *e, double t)
{
    sim_req *prev = NULL, *r = e->q_head;
    while (r && simeng_active(e) < e->cfg->slots) {
        sim_req *next = r->next;
        int slot = simeng_pick_slot(e, r);
        if (slot < 0) {
            prev = r;
            r = next;
            continue;
        }
        if (prev)
            prev->next = next;
        else
            e->q_head = next;
        if (e->q_tail == r)
            e->q_tail = prev;
        r->next = NULL;
        e->n_queued--;
        simeng_place(e, r, slot, t);
        r = next;
    }
}

/* Applies every transition due at simulated time t, then refills slots. */
static void simeng_events(sim_engine *e, double t)
{
    bool crash = false;
    for (unsigned i = 0; i < e->cfg->slots; i++) {
        sim_req *r = e->slots[i].req;
        if (!r)
            continue;
        switch (r->state) {
        case SIM_SPIKE:
            if (r->t_slot + r->spike_ms <= t + SIMENG_EPS_MS) {
                r->state = SIM_PREFILL;
                r->t_prefill = t;
                e->changed = true;
            }
            break;
        case SIM_PREFILL:
            if (r->prefill_left > SIMENG_EPS_TOKENS)
                break;
            /* The prompt's last logits give the first token. */
            r->prefill_left = 0;
            r->state = SIM_DECODE;
            r->decode_acc = 0;
            r->n_gen = 1;
            r->t_first = r->t_last = t;
            e->changed = true;
            e->started++;
            if (e->cfg->crash_after && !e->crashed && e->started == e->cfg->crash_after)
                crash = true;
            else if (r->n_gen >= r->target)
                simeng_finish(e, r, SIM_DONE);
            break;
        case SIM_DECODE:
            if (r->decode_acc < 1.0 - SIMENG_EPS_TOKENS)
                break;
            r->decode_acc = r->decode_acc > 1.0 ? r->decode_acc - 1.0 : 0.0;
            r->n_gen++;
            r->t_last = t;
            e->changed = true;
            if (r->n_gen >= r->target)
                simeng_finish(e, r, SIM_DONE);
            break;
        default:
            break;
        }
    }
    if (crash)
        simeng_crash(e);
    simeng_admit(e, t);
}

/* Per-sequence rates, tokens per simulated ms, for the current slot mix. */
static void simeng_rates(const sim_engine *e, double *prefill, double *decode)
{
    unsigned n_prefill = 0, n_decode = 0;
    for (unsigned i = 0; i < e->cfg->slots; i++) {
        const sim_req *r = e->slots[i].req;
        if (r && r->state == SIM_PREFILL)
            n_prefill++;
        else if (r && r->state == SIM_DECODE)
            n_decode++;
    }
    unsigned active = n_prefill + n_decode;
    *prefill = n_prefill ? e->cfg->prefill_tps / n_prefill / 1000.0 : 0.0;
    *decode = active ? e->cfg->decode_tps /
                           (1.0 + e->cfg->batch_slowdown * (double)(active - 1)) / 1000.0
                     : 0.0;
}

/* The simulated time of the next transition after t, INFINITY if none. */
static double simeng_next_event(const sim_engine *e, double t)
{
    double prefill, decode, next = INFINITY;
    simeng_rates(e, &prefill, &decode);
    for (unsigned i = 0; i < e->cfg->slots; i++) {
        const sim_req *r = e->slots[i].req;
        double te = INFINITY;
        if (!r)
            continue;
        if (r->state == SIM_SPIKE)
            te = r->t_slot + r->spike_ms;
        else if (r->state == SIM_PREFILL && prefill > 0)
            te = t + r->prefill_left / prefill;
        else if (r->state == SIM_DECODE && decode > 0)
            te = t + (1.0 - r->decode_acc) / decode;
        if (te < next)
            next = te;
    }
    return next;
}

/* Runs the model from sim_now to t1, event by event. */
static void simeng_advance(sim_engine *e, double t1)
{
    double t = e->sim_now;
    for (unsigned step = 0; step < SIMENG_MAX_STEPS; step++) {
        simeng_events(e, t);
        if (t >= t1)
            break;
        double prefill, decode;
        simeng_rates(e, &prefill, &decode);
        double te = simeng_next_event(e, t);
        double tn = te < t1 ? te : t1;
        double dt = tn - t;
        for (unsigned i = 0; i < e->cfg->slots; i++) {
            sim_req *r = e->slots[i].req;
            if (r && r->state == SIM_PREFILL)
                r->prefill_left -= prefill * dt;
            else if (r && r->state == SIM_DECODE)
                r->decode_acc += decode * dt;
        }
        t = tn;
        e->sim_now = t;
    }
    if (e->sim_now < t1)
        e->sim_now = t1;
}

static double simeng_clock(const sim_engine *e)
{
    struct timespec now = simeng_mono();
    return simeng_elapsed_ms(&e->wall_base, &now) * e->cfg->time_scale;
}

/* Brings the model up to the present and tells waiters if anything moved.
 * Caller holds mu. */
static void simeng_sync(sim_engine *e)
{
    double t1 = simeng_clock(e);
    if (t1 < e->sim_now)
        t1 = e->sim_now;
    simeng_advance(e, t1);
    if (e->changed) {
        e->changed = false;
        pthread_cond_broadcast(&e->progress);
    }
}

static void simeng_crash_exit(sim_engine *e)
{
    struct timespec deadline = simeng_add_ms(simeng_mono(), SIMENG_CRASH_EXIT_WAIT_MS);
    while (e->cut_pending > 0) {
        if (pthread_cond_timedwait(&e->wake, &e->mu, &deadline) == ETIMEDOUT)
            break;
    }
    log_warn("exiting with status 3 after the injected crash (--crash-exit)");
    fflush(stdout);
    fflush(stderr);
    _exit(3);
}

static void *simeng_thread(void *arg)
{
    sim_engine *e = arg;
    pthread_mutex_lock(&e->mu);
    while (!e->stopping) {
        simeng_sync(e);
        if (e->exit_pending)
            simeng_crash_exit(e);
        double te = simeng_next_event(e, e->sim_now);
        if (isinf(te)) {
            pthread_cond_wait(&e->wake, &e->mu);
        } else {
            /* A hair past the event so the clock has reached it on wake-up. */
            double wall_ms = te / e->cfg->time_scale + 0.001;
            struct timespec deadline = simeng_add_ms(e->wall_base, wall_ms);
            pthread_cond_timedwait(&e->wake, &e->mu, &deadline);
        }
    }
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

int simeng_alloc(sim_engine **out, const sim_config *cfg)
{
    pthread_condattr_t ca;
    bool mu_ok = false, wake_ok = false, ca_ok = false;
    sim_engine *e = calloc(1, sizeof *e);
    *out = NULL;
    if (!e)
        return ENOMEM;
    e->cfg = cfg;
    e->slots = calloc(cfg->slots, sizeof *e->slots);
    if (!e->slots)
        goto fail;
    if (pthread_mutex_init(&e->mu, NULL) != 0)
        goto fail;
    mu_ok = true;
    if (pthread_condattr_init(&ca) != 0)
        goto fail;
    ca_ok = true;
    /* Deadlines are computed on the monotonic clock, immune to clock steps. */
    if (pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) != 0)
        goto fail;
    if (pthread_cond_init(&e->wake, &ca) != 0)
        goto fail;
    wake_ok = true;
    if (pthread_cond_init(&e->progress, &ca) != 0)
        goto fail;
    pthread_condattr_destroy(&ca);
    e->wall_base = simeng_mono();
    e->rng = cfg->seed;
    *out = e;
    return 0;

fail:
    if (ca_ok)
        pthread_condattr_destroy(&ca);
    if (wake_ok)
        pthread_cond_destroy(&e->wake);
    if (mu_ok)
        pthread_mutex_destroy(&e->mu);
    free(e->slots);
    free(e);
    return ENOMEM;
}

int simeng_start(sim_engine *e)
{
    int rc = pthread_create(&e->thread, NULL, simeng_thread, e);
    if (rc == 0)
        e->thread_started = true;
    return rc;
}

void simeng_stop(sim_engine *e)
{
    pthread_mutex_lock(&e->mu);
    e->stopping = true;
    pthread_cond_broadcast(&e->wake);
    pthread_cond_broadcast(&e->progress);
    pthread_mutex_unlock(&e->mu);
    if (e->thread_started) {
        pthread_join(e->thread, NULL);
        e->thread_started = false;
    }
}

void simeng_free(sim_engine *e)
{
    if (!e)
        return;
    for (unsigned i = 0; i < e->cfg->slots; i++) {
        if (e->slots[i].req)
            simeng_req_unref(e->slots[i].req);
        free(e->slots[i].cache);
    }
    simeng_kept_clear(e);
    free(e->kept);
    while (e->q_head) {
        sim_req *r = e->q_head;
        e->q_head = r->next;
        simeng_req_unref(r);
    }
    pthread_cond_destroy(&e->progress);
    pthread_cond_destroy(&e->wake);
    pthread_mutex_destroy(&e->mu);
    free(e->slots);
    free(e);
}

static uint64_t simeng_hash(const char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* Tokens a request generates (see docs/simulator.md, Timing); *capped when
 * a limit rather than the model's own end stops it ("length"). */
static unsigned simeng_target(const sim_config *cfg, const sim_req_params *p,
                              unsigned prompt_n, bool *capped)
{
    unsigned room = cfg->ctx - prompt_n;
    unsigned target = p->reply ? simreply_tokens(p->reply) : cfg->reply_tokens;
    *capped = false;
    if (p->ignore_eos) {
        target =
            p->max_tokens > 0 && p->max_tokens < room ? (unsigned)p->max_tokens : room;
        *capped = true;
    } else if (p->max_tokens > 0 && (uint64_t)p->max_tokens <= target) {
        /* The limit reached before the model's own end counts as "length". */
        target = (unsigned)p->max_tokens;
        *capped = true;
    }
    if (target > room) {
        target = room;
        *capped = true;
    }
    return target;
}

uint64_t simeng_reply_seed(const sim_config *cfg, const char *prompt, size_t len,
                           uint64_t seed)
{
    return sim_mix64(cfg->seed ^ sim_mix64(simeng_hash(prompt, len) ^ seed));
}

static uint64_t simeng_word_seed(const sim_config *cfg, const sim_req_params *p)
{
    return simeng_reply_seed(cfg, p->prompt, p->prompt_len, p->seed);
}

sim_submit_rc simeng_submit(sim_engine *e, sim_req_params *p, sim_req **out,
                            unsigned *prompt_n)
{
    const sim_config *cfg = e->cfg;
    size_t n_big = (p->prompt_len + SIMENG_BYTES_PER_TOKEN - 1) / SIMENG_BYTES_PER_TOKEN;
    unsigned n = n_big > UINT32_MAX ? UINT32_MAX : (unsigned)n_big;
    sim_submit_rc rc = SIM_SUBMIT_OK;
    sim_req *r = NULL;

    *out = NULL;
    *prompt_n = n;
    /* As llama.cpp: the prompt must leave room for at least one token. */
    if (n_big >= cfg->ctx)
        return SIM_SUBMIT_ECONTEXT;
    if (p->id_slot >= (int)cfg->slots)
        return SIM_SUBMIT_ESLOT;
    r = calloc(1, sizeof *r);
    if (!r)
        return SIM_SUBMIT_ENOMEM;

    pthread_mutex_lock(&e->mu);
    if (e->stopping || e->n_queued >= SIMENG_MAX_QUEUED) {
        rc = SIM_SUBMIT_EBUSY;
        goto fail;
    }
    simeng_sync(e);

    r->refs = 1;
    r->id = ++e->next_id;
    r->created = time(NULL);
    r->prompt_n = n < 1 ? 1 : n;
    r->cache_prompt = p->cache_prompt;
    r->stream = p->stream;
    r->id_slot = p->id_slot < 0 ? -1 : p->id_slot;
    r->slot = r->last_slot = -1;
    r->word_seed = simeng_word_seed(cfg, p);

    r->target = simeng_target(cfg, p, r->prompt_n, &r->capped);

    r->prompt = p->prompt;
    r->prompt_len = p->prompt_len;
    r->reply = p->reply;
    p->prompt = NULL;
    p->reply = NULL;
    *out = r;

    if (simeng_draw(e, cfg->fail_rate)) {
        /* Refused before it ever reaches a slot. */
        r->state = SIM_FAILED;
        r->fail_status = 500;
        r->fail_body = simeng_channel_error;
        e->fault_fail++;
        e->errors_injected++;
        log_info("req %llu: injected Channel Error",
                 (unsigned long long)r->id);
        goto out;
    }
    /* Drawn only when asked for, so runs without these faults keep the
     * random sequence they always had. */
    if (simeng_draw(e, cfg->hang_rate)) {
        /* Accepted and then nothing: no queue place, no slot, no answer
         * until the client gives up (simeng_release). */
        r->state = SIM_HUNG;
        e->hanging++;
        e->fault_hang++;
        e->errors_injected++;
        log_info("req %llu: injected hang", (unsigned long long)r->id);
        goto out;
    }
    if (simeng_draw(e, cfg->garbage_rate)) {
        r->state = SIM_GARBAGE;
        r->garbage_mode = cfg->garbage_mode;
        if (r->garbage_mode == SIM_GARBAGE_ANY)
            r->garbage_mode = (int)(simeng_uniform(e) * 4.0) % 4;
        e->fault_garbage++;
        e->errors_injected++;
        log_info("req %llu: injected garbage (mode %d)", (unsigned long long)r->id,
                 r->garbage_mode);
        goto out;
    }
    if (simeng_draw(e, cfg->spike_rate) && cfg->spike_ms > 0) {
        r->spike_ms = cfg->spike_ms;
        e->fault_spike++;
        e->errors_injected++;
    }
    if (simeng_draw(e, cfg->malformed_rate) && p->stream) {
        r->malformed_at = r->target / 2 ? r->target / 2 : 1;
        e->fault_malformed++;
        e->errors_injected++;
    }

    r->refs++; /* the engine's hold */
    r->state = SIM_QUEUED;
    if (e->q_tail)
        e->q_tail->next = r;
    else
        e->q_head = r;
    e->q_tail = r;
    e->n_queued++;
    simeng_admit(e, e->sim_now);
    pthread_cond_signal(&e->wake);

out:
    pthread_mutex_unlock(&e->mu);
    return SIM_SUBMIT_OK;

fail:
    pthread_mutex_unlock(&e->mu);
    free(r);
    return rc;
}

sim_submit_rc simeng_instant(sim_engine *e, const sim_req_params *p, sim_view *v,
                             unsigned *prompt_n)
{
    const sim_config *cfg = e->cfg;
    size_t n_big = (p->prompt_len + SIMENG_BYTES_PER_TOKEN - 1) / SIMENG_BYTES_PER_TOKEN;
    unsigned n = n_big > UINT32_MAX ? UINT32_MAX : (unsigned)n_big;
    bool capped;

    memset(v, 0, sizeof *v);
    *prompt_n = n;
    /* The same refusals as a modelled request, so clients see no difference. */
    if (n_big >= cfg->ctx)
        return SIM_SUBMIT_ECONTEXT;
    if (p->id_slot >= (int)cfg->slots)
        return SIM_SUBMIT_ESLOT;
    v->state = SIM_DONE;
    v->created = time(NULL);
    v->stream = p->stream;
    v->prompt_n = n < 1 ? 1 : n;
    v->n_gen = simeng_target(cfg, p, v->prompt_n, &capped);
    v->finish_reason = capped ? "length" : "stop";
    v->word_seed = simeng_word_seed(cfg, p);
    v->reply = p->reply;
    v->slot = -1;
    /* Counted as a request that prefilled its whole prompt in no time; the
     * lock is held for a few increments only. */
    pthread_mutex_lock(&e->mu);
    if (e->stopping) {
        pthread_mutex_unlock(&e->mu);
        return SIM_SUBMIT_EBUSY;
    }
    v->id = ++e->next_id;
    e->requests++;
    e->prompt_tokens += v->prompt_n;
    e->prefill_tokens += v->prompt_n;
    e->completion_tokens += v->n_gen;
    pthread_mutex_unlock(&e->mu);
    return SIM_SUBMIT_OK;
}

static void simeng_view(const sim_engine *e, const sim_req *r, sim_view *v)
{
    memset(v, 0, sizeof *v);
    v->state = r->state;
    v->stopping = e->stopping;
    v->id = r->id;
    v->created = r->created;
    v->stream = r->stream;
    v->n_gen = r->n_gen;
    v->malformed_at = r->malformed_at;
    v->word_seed = r->word_seed;
    v->reply = r->reply;
    v->slot = r->last_slot;
    v->admit_seq = r->admit_seq;
    v->prompt_n = r->prompt_n;
    v->cache_n = r->cache_n;
    if (r->n_gen > 0) {
        v->prompt_ms = r->t_first - r->t_prefill;
        v->predicted_ms = r->t_last - r->t_first;
    }
    if (r->state == SIM_DONE)
        v->finish_reason = r->capped ? "length" : "stop";
    v->fail_status = r->fail_status;
    v->fail_body = r->fail_body;
    v->garbage_mode = r->garbage_mode;
}

void simeng_wait(sim_engine *e, sim_req *r, unsigned have, unsigned timeout_ms,
                 sim_view *v)
{
    struct timespec deadline = simeng_add_ms(simeng_mono(), timeout_ms);
    pthread_mutex_lock(&e->mu);
    while (!e->stopping && !simeng_final(r->state) && r->n_gen <= have) {
        if (pthread_cond_timedwait(&e->progress, &e->mu, &deadline) == ETIMEDOUT)
            break;
    }
    simeng_view(e, r, v);
    pthread_mutex_unlock(&e->mu);
}

void simeng_release(sim_engine *e, sim_req *r)
{
    if (!r)
        return;
    pthread_mutex_lock(&e->mu);
    if (!simeng_final(r->state)) {
        simeng_sync(e);
    }
    if (r->state == SIM_HUNG) {
        /* Never queued and never in a slot: only the gauge to undo. */
        e->hanging--;
        r->state = SIM_CANCELLED;
        e->changed = true;
    }
    if (r->state == SIM_QUEUED) {
        sim_req *prev = NULL;
        for (sim_req *q = e->q_head; q; prev = q, q = q->next) {
            if (q != r)
                continue;
            if (prev)
                prev->next = r->next;
            else
                e->q_head = r->next;
            if (e->q_tail == r)
                e->q_tail = prev;
            e->n_queued--;
            break;
        }
        r->next = NULL;
        simeng_finish(e, r, SIM_CANCELLED);
    } else if (!simeng_final(r->state)) {
        log_debug("req %llu: client gone after %u token(s)",
                  (unsigned long long)r->id, r->n_gen);
        simeng_finish(e, r, SIM_CANCELLED);
        simeng_admit(e, e->sim_now);
    }
    if (r->cut_waiting) {
        r->cut_waiting = false;
        e->cut_pending--;
    }
    if (e->changed) {
        e->changed = false;
        pthread_cond_broadcast(&e->progress);
    }
    pthread_cond_signal(&e->wake);
    simeng_req_unref(r);
    pthread_mutex_unlock(&e->mu);
}

void simeng_reset(sim_engine *e)
{
    pthread_mutex_lock(&e->mu);
    simeng_sync(e);
    for (unsigned i = 0; i < e->cfg->slots; i++) {
        e->slots[i].cache_len = 0;
        e->slots[i].last_used = 0;
    }
    simeng_kept_clear(e);
    e->lru_clock = 0;
    e->admit_seq = 0;
    e->requests = e->prompt_tokens = e->prefill_tokens = e->cached_tokens = 0;
    e->completion_tokens = e->errors_injected = 0;
    e->fault_fail = e->fault_crashes = e->fault_cut = e->fault_crash_failed = 0;
    e->fault_spike = e->fault_malformed = 0;
    e->fault_hang = e->fault_garbage = 0;
    e->max_active = simeng_active(e);
    e->started = 0;
    e->crashed = false;
    e->rng = e->cfg->seed;
    e->stats_base = e->sim_now;
    pthread_mutex_unlock(&e->mu);
    log_info("state reset");
}

void simeng_stats(sim_engine *e, sim_stats *st)
{
    pthread_mutex_lock(&e->mu);
    simeng_sync(e);
    st->requests = e->requests;
    st->prompt_tokens = e->prompt_tokens;
    st->prefill_tokens = e->prefill_tokens;
    st->cached_tokens = e->cached_tokens;
    st->completion_tokens = e->completion_tokens;
    st->errors_injected = e->errors_injected;
    st->fault_fail = e->fault_fail;
    st->fault_crashes = e->fault_crashes;
    st->fault_cut = e->fault_cut;
    st->fault_crash_failed = e->fault_crash_failed;
    st->fault_spike = e->fault_spike;
    st->fault_malformed = e->fault_malformed;
    st->fault_hang = e->fault_hang;
    st->fault_garbage = e->fault_garbage;
    st->hanging = e->hanging;
    st->max_active = e->max_active;
    st->active = simeng_active(e);
    st->queued = e->n_queued;
    st->sim_ms = e->sim_now - e->stats_base;
    st->n_slots = e->cfg->slots;
    for (unsigned i = 0; i < e->cfg->slots; i++) {
        st->slots[i].id = i;
        st->slots[i].busy = e->slots[i].req != NULL;
        st->slots[i].cached_tokens = simeng_tokens(e->slots[i].cache_len);
    }
    pthread_mutex_unlock(&e->mu);
}
