/*
 * lmreplay - runs one of lmbench's workloads through the policy library
 * alone, against lmsim's engine model on a simulated clock: no daemon, no
 * HTTP, no threads, no wall clock. The same workload and seed give the same
 * figures every time, in a fraction of a second, so a change to the policy
 * can be judged at once and its effect told from the machine's noise;
 * lmbench against lmsim and llama-server stays the measure that counts
 * (docs/benchmarks.md).
 *
 * The engine is lmsim's (docs/simulator.md): slots caching the rendered
 * prompt and the reply, the longest common prefix in whole 4-byte tokens,
 * at least one token evaluated, prefill shared by the prefilling sequences,
 * decode slowed per extra active sequence, replies of lmsim's words. The
 * daemon is its dispatch loop: while a slot is idle, policy_next; each
 * request pinned to the policy's slot (llama.cpp) or placed by the
 * backend's own rule (LM Studio, --unpinned); the policy's wake times
 * honoured. Agents send as lmbench's do (rounds behind a barrier, closed
 * loops, open-loop arrival times, think times), a few wall milliseconds
 * apart.
 *
 * Usage: lmreplay --workload W [--policy LIST] [--seed N] [--scale F]
 *        [--slots N] [--unpinned] [--time-scale F] [--prefill-tps F]
 *        [--decode-tps F] [--batch-slowdown F] [--classes LIST]
 *        [--restore] [--probe] [--gather-ms MS] [--batch-size N]
 * Prints one JSON object per policy. --probe: the daemon's restore probe
 * (pinned only): the policy starts knowing whether the engine restores,
 * as the probe reads it (1 with --restore, 0 without).
 */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench.h"
#include "lmsched/wire.h"
#include "scheduler/chat/chain.h"
#include "scheduler/chat/chat.h"
#include "scheduler/policy/policy.h"
#include "sim/config.h"
#include "sim/engine.h"

typedef struct rp_opts {
    bn_kind kind;
    bool tools;
    const char *policies;
    uint64_t seed;
    double scale;
    unsigned slots;
    bool pinned;
    double time_scale, prefill_tps, decode_tps, slowdown, similarity;
    unsigned batch; /* the engine's batch (lmsim --batch-size); 0: the continuous model */
    const char *classes;
    bool restore; /* the server restores evicted prefixes itself (a host cache) */
    bool probe;   /* the policy is told so before the first request (restore probe) */
    int gather_ms;
} rp_opts;

typedef enum rp_state { RP_WAIT = 0, RP_QUEUED, RP_PREFILL, RP_DECODE, RP_DONE } rp_state;

typedef struct rp_job {
    pol_item pi; /* first: the policy links it */
    size_t idx;  /* in w->reqs */
    prefix_chain chain;
    rp_state state;
    double t_send, t_dispatch, t_first, t_done; /* simulated ms */
    int slot;                                   /* where it runs */
    int pol_slot; /* where the policy put it: the daemon reports the end there */
    unsigned prompt_n, cache_n, n_gen, target;
    double prefill_left, decode_acc;
    double step_pf; /* prompt tokens of it in the current step */
    uint64_t word_seed;
} rp_job;

typedef struct rp_slot {
    char *cache;
    size_t len, cap;
    rp_job *job;
    uint64_t last_used;
} rp_slot;

typedef struct rp_sim {
    const rp_opts *o;
    bn_workload *w;
    policy *pol;
    rp_job *jobs;
    rp_slot *slots;
    uint64_t lru;
    double now;
    sim_config cfg;
    uint64_t rng;
    int round_left; /* rounds: answers still missing in the current round */
    int round;
    int64_t prefill, prompt, loads;
    double step_end; /* the batch step under way ends then; INFINITY: none */
} rp_sim;

static int bn_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double rp_unit(rp_sim *s)
{
    s->rng += 0x9e3779b97f4a7c15ull;
    uint64_t z = s->rng;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (double)((z ^ (z >> 31)) >> 11) * (1.0 / 9007199254740992.0);
}

/* An agent's request reaches the daemon 0.2-2 wall ms after it decides to
 * send: its thread wakes, builds and encodes the request, nng carries it. */
static double rp_lag(rp_sim *s)
{
    return (0.2 + 1.8 * rp_unit(s)) * s->o->time_scale;
}

static int64_t rp_us(const rp_sim *s, double sim_ms)
{
    return (int64_t)llround(sim_ms * 1000.0 / s->o->time_scale);
}

static bool rp_active(const rp_sim *s, int agent)
{
    return (s->w->class_mask & (1u << s->w->agent_class[agent])) != 0;
}

static bool rp_open(const bn_workload *w, int a)
{
    return w->kind == BN_MANY || (w->kind == BN_MIXED && w->agent_class[a] == BN_CLASS_BATCH);
}

static bool rp_rounds(const bn_workload *w, int a)
{
    return w->kind == BN_ROUNDS || (w->kind == BN_MIXED && w->agent_class[a] == BN_CLASS_ROLES);
}

/* Builds request i as the daemon keeps it and its prefix chain. */
static int rp_build(rp_sim *s, rp_job *j)
{
    bn_workload *w = s->w;
    bn_req *q = &w->reqs[j->idx];
    chat_req *r = NULL;
    bn_msg *m = NULL;
    int rc = -1;
    int n = bn_request_messages(w, j->idx, &m);
    if (n < 0 || bn_request_render(w, j->idx) != 0 || chat_req_alloc(&r) != LMSCHED_OK)
        goto out;
    free(r->system);
    r->system = strdup(w->systems[q->system]);
    r->messages = calloc((size_t)n, sizeof(*r->messages));
    if (r->system == NULL || r->messages == NULL)
        goto out;
    if (w->tools[q->system] != NULL && (r->tools_json = strdup(w->tools[q->system])) == NULL)
        goto out;
    for (int k = 0; k < n; k++) {
        r->messages[k].role = strdup(m[k].role);
        r->messages[k].content = strdup(m[k].content);
        r->n_messages++;
        if (r->messages[k].role == NULL || r->messages[k].content == NULL)
            goto out;
    }
    if (prefix_chain_build(&j->chain, r) != LMSCHED_OK)
        goto out;
    memset(&j->pi, 0, sizeof(j->pi));
    j->pi.priority = q->priority >= 0 ? (uint8_t)q->priority : 5;
    j->pi.blocks = j->chain.blocks;
    j->pi.n_blocks = j->chain.n_blocks;
    j->pi.tokens = j->chain.tokens;
    j->pi.group = j->chain.group;
    j->pi.label = w->systems[q->system];
    j->pi.max_tokens = (uint32_t)w->max_tokens;
    j->pi.source = (uint64_t)q->agent + 1;
    q->sent = true;
    rc = 0;
out:
    free(m);
    chat_req_free(r);
    return rc;
}

static unsigned rp_lcp_tokens(const rp_slot *sl, const bn_req *q)
{
    size_t n = sl->len < q->render_len ? sl->len : q->render_len, i = 0;
    while (i < n && sl->cache[i] == q->render[i])
        i++;
    return (unsigned)(i / SIMENG_BYTES_PER_TOKEN);
}

static int rp_cache_set(rp_slot *sl, const char *src, size_t len)
{
    if (len > sl->cap) {
        char *p = realloc(sl->cache, len);
        if (p == NULL)
            return -1;
        sl->cache = p;
        sl->cap = len;
    }
    memmove(sl->cache, src, len);
    sl->len = len;
    return 0;
}

/* The backend's own choice without id_slot (lmsim's engine rule). */
static int rp_backend_slot(rp_sim *s, const bn_req *q, unsigned prompt_n)
{
    int best = -1, lru = -1;
    unsigned best_lcp = 0;
    for (unsigned i = 0; i < s->o->slots; i++) {
        const rp_slot *sl = &s->slots[i];
        if (sl->job != NULL)
            continue;
        if (lru < 0 || sl->last_used < s->slots[lru].last_used)
            lru = (int)i;
        unsigned lcp = rp_lcp_tokens(sl, q);
        if (lcp > best_lcp) {
            best_lcp = lcp;
            best = (int)i;
        }
    }
    if (best >= 0 && (double)best_lcp >= s->o->similarity * (double)prompt_n)
        return best;
    return lru;
}

static void rp_start(rp_sim *s, rp_job *j, int slot)
{
    const bn_req *q = &s->w->reqs[j->idx];
    j->pol_slot = slot;
    if (!s->o->pinned)
        slot = rp_backend_slot(s, q, simeng_tokens(q->render_len));
    rp_slot *sl = &s->slots[slot];
    j->prompt_n = simeng_tokens(q->render_len);
    unsigned lcp = rp_lcp_tokens(sl, q);
    /* A server with a host cache restores a prefix it served before
     * wherever the request lands: modelled as the longest prefix any
     * earlier request of its item left behind. */
    if (s->o->restore) {
        for (size_t k = 0; k < s->w->nreqs; k++) {
            const bn_req *o = &s->w->reqs[k];
            if (k == j->idx || !o->sent || o->reply == NULL || o->item != q->item)
                continue;
            size_t n = o->render_len < q->render_len ? o->render_len : q->render_len, b = 0;
            while (b < n && o->render[b] == q->render[b])
                b++;
            if (b / SIMENG_BYTES_PER_TOKEN > lcp)
                lcp = (unsigned)(b / SIMENG_BYTES_PER_TOKEN);
        }
    }
    j->cache_n = lcp < j->prompt_n - 1 ? lcp : j->prompt_n - 1;
    j->prefill_left = j->prompt_n - j->cache_n;
    j->slot = slot;
    j->state = RP_PREFILL;
    j->t_dispatch = s->now;
    j->target = (unsigned)s->w->max_tokens < s->cfg.reply_tokens ? (unsigned)s->w->max_tokens
                                                                  : s->cfg.reply_tokens;
    j->word_seed = simeng_reply_seed(&s->cfg, q->render, q->render_len, 0);
    sl->job = j;
    sl->last_used = ++s->lru;
    rp_cache_set(sl, q->render, (size_t)j->cache_n * SIMENG_BYTES_PER_TOKEN);
    s->prompt += j->prompt_n;
    s->prefill += j->prompt_n - j->cache_n;
    if (getenv("LMREPLAY_TRACE") != NULL) {
        fprintf(stderr, "%9.1f start a%-2d #%d sys%d slot %d prompt %u cached %u waited %.1f |",
                s->now / s->o->time_scale, q->agent, q->seq, q->system, slot, j->prompt_n,
                j->cache_n, (s->now - j->t_send) / s->o->time_scale);
        for (unsigned i = 0; i < s->o->slots; i++) {
            const rp_slot *o = &s->slots[i];
            int sys = -1;
            for (int k = 0; k < s->w->nsystems; k++) {
                size_t l = strlen(s->w->systems[k]);
                if (o->len > 19 + l && memcmp(o->cache + 19, s->w->systems[k], l) == 0)
                    sys = k;
            }
            fprintf(stderr, " %c%d", o->job ? '*' : ' ', sys);
        }
        fprintf(stderr, "\n");
    }
    if (j->prompt_n - j->cache_n > j->prompt_n / 2)
        s->loads++;
}

static void rp_rates(const rp_sim *s, double *prefill, double *decode)
{
    unsigned np = 0, nd = 0;
    for (unsigned i = 0; i < s->o->slots; i++) {
        const rp_job *j = s->slots[i].job;
        np += j != NULL && j->state == RP_PREFILL;
        nd += j != NULL && j->state == RP_DECODE;
    }
    *prefill = np ? s->o->prefill_tps / np / 1000.0 : 0;
    *decode = np + nd ? s->o->decode_tps / (1.0 + s->o->slowdown * (np + nd - 1)) / 1000.0 : 0;
}

/* The batched engine (lmsim's --batch-size, docs/simulator.md): a step
 * takes one token of every decoding sequence and up to `batch` prompt
 * tokens of the prefilling ones in slot order, and lasts the decode time of
 * its batch plus the prefill time of its prompt tokens. */
static void rp_step_start(rp_sim *s)
{
    unsigned nd = 0, active = 0;
    double room = s->o->batch, pf = 0;
    for (unsigned i = 0; i < s->o->slots; i++) {
        rp_job *j = s->slots[i].job;
        if (j == NULL)
            continue;
        active++;
        j->step_pf = 0;
        if (j->state == RP_DECODE) {
            nd++;
            room -= 1;
        }
    }
    for (unsigned i = 0; i < s->o->slots && room > 0; i++) {
        rp_job *j = s->slots[i].job;
        if (j == NULL || j->state != RP_PREFILL)
            continue;
        j->step_pf = j->prefill_left < room ? j->prefill_left : room;
        room -= j->step_pf;
        pf += j->step_pf;
    }
    if (active == 0) {
        s->step_end = INFINITY;
        return;
    }
    double dt = pf / s->o->prefill_tps * 1000.0;
    if (nd > 0)
        dt += (1.0 + s->o->slowdown * (active - 1)) / s->o->decode_tps * 1000.0;
    s->step_end = s->now + dt;
}

static void rp_step_end(rp_sim *s)
{
    for (unsigned i = 0; i < s->o->slots; i++) {
        rp_job *j = s->slots[i].job;
        if (j == NULL)
            continue;
        if (j->state == RP_DECODE) {
            j->decode_acc = 1.0; /* one token, applied by rp_engine_events */
        } else if (j->state == RP_PREFILL) {
            j->prefill_left -= j->step_pf;
            if (j->prefill_left < 1e-9)
                j->prefill_left = 0;
        }
        j->step_pf = 0;
    }
    s->step_end = INFINITY;
}

static double rp_next_engine(const rp_sim *s)
{
    if (s->o->batch > 0)
        return s->step_end;
    double p, d, t = INFINITY;
    rp_rates(s, &p, &d);
    for (unsigned i = 0; i < s->o->slots; i++) {
        const rp_job *j = s->slots[i].job;
        double te = INFINITY;
        if (j != NULL && j->state == RP_PREFILL && p > 0)
            te = s->now + j->prefill_left / p;
        else if (j != NULL && j->state == RP_DECODE && d > 0)
            te = s->now + (1.0 - j->decode_acc) / d;
        if (te < t)
            t = te;
    }
    return t;
}

static void rp_schedule_next(rp_sim *s, int agent, int seq, double at)
{
    if (seq >= s->w->per_agent)
        return;
    rp_job *n = &s->jobs[(size_t)agent * (size_t)s->w->per_agent + (size_t)seq];
    n->t_send = at + s->w->reqs[n->idx].think_sim_ms + rp_lag(s);
}

/* A request finished: the slot caches prompt and reply, the policy hears
 * it, the agent goes on. */
static void rp_finish(rp_sim *s, rp_job *j)
{
    bn_workload *w = s->w;
    bn_req *q = &w->reqs[j->idx];
    rp_slot *sl = &s->slots[j->slot];
    size_t rl = (size_t)j->n_gen * SIMENG_BYTES_PER_TOKEN;
    char *reply = malloc(rl + 1);
    if (reply == NULL)
        abort();
    for (unsigned i = 0; i < j->n_gen; i++)
        memcpy(reply + (size_t)i * SIMENG_BYTES_PER_TOKEN, simeng_word(j->word_seed, i),
               SIMENG_BYTES_PER_TOKEN);
    reply[rl] = '\0';
    rp_cache_set(sl, q->render, q->render_len);
    if (sl->cap < sl->len + rl) {
        char *p = realloc(sl->cache, sl->len + rl);
        if (p == NULL)
            abort();
        sl->cache = p;
        sl->cap = sl->len + rl;
    }
    memcpy(sl->cache + sl->len, reply, rl);
    sl->len += rl;
    sl->job = NULL;
    sl->last_used = ++s->lru;
    q->reply = reply;
    q->err = LMSCHED_OK;
    q->prompt_tokens = j->prompt_n;
    q->cached_tokens = j->cache_n;
    j->state = RP_DONE;
    j->t_done = s->now;
    q->queue_ms = (j->t_dispatch - j->t_send) / s->o->time_scale;
    q->ttft_ms = (j->t_first - j->t_dispatch) / s->o->time_scale;
    q->total_ms = (j->t_done - j->t_send) / s->o->time_scale;
    q->done_ms = j->t_done / s->o->time_scale;
    pol_done d = {
        .ok = true,
        .prompt_tokens = j->prompt_n,
        .cached_tokens = j->cache_n,
        .end_us = rp_us(s, s->now),
        .first_token_us = rp_us(s, j->t_first),
        .completion_tokens = j->n_gen,
    };
    policy_slot_end(s->pol, j->pol_slot, &d);
    if (rp_rounds(w, q->agent)) {
        if (--s->round_left == 0) {
            s->round++;
            for (int a = 0; a < w->nagents; a++)
                if (rp_active(s, a) && rp_rounds(w, a)) {
                    rp_schedule_next(s, a, s->round, s->now);
                    s->round_left++;
                }
        }
    } else if (!rp_open(w, q->agent)) {
        rp_schedule_next(s, q->agent, q->seq + 1, s->now);
    }
}

static void rp_engine_events(rp_sim *s)
{
    for (unsigned i = 0; i < s->o->slots; i++) {
        rp_job *j = s->slots[i].job;
        if (j == NULL)
            continue;
        if (j->state == RP_PREFILL && j->prefill_left <= 1e-6) {
            j->state = RP_DECODE;
            j->n_gen = 1;
            j->decode_acc = 0;
            j->t_first = s->now;
        } else if (j->state == RP_DECODE && j->decode_acc >= 1.0 - 1e-6) {
            j->decode_acc = j->decode_acc > 1.0 ? j->decode_acc - 1.0 : 0;
            j->n_gen++;
        }
        if (j->state == RP_DECODE && j->n_gen >= j->target)
            rp_finish(s, j);
    }
}

static void rp_advance(rp_sim *s, double t)
{
    if (s->o->batch > 0) {
        if (t >= s->step_end)
            rp_step_end(s);
        s->now = t;
        return;
    }
    double p, d;
    rp_rates(s, &p, &d);
    for (unsigned i = 0; i < s->o->slots; i++) {
        rp_job *j = s->slots[i].job;
        if (j != NULL && j->state == RP_PREFILL)
            j->prefill_left -= p * (t - s->now);
        else if (j != NULL && j->state == RP_DECODE)
            j->decode_acc += d * (t - s->now);
    }
    s->now = t;
}

static void rp_dispatch(rp_sim *s)
{
    for (;;) {
        unsigned busy = 0;
        for (unsigned i = 0; i < s->o->slots; i++)
            busy += s->slots[i].job != NULL;
        if (busy >= s->o->slots)
            return;
        int slot = -1;
        uint32_t cached = 0;
        pol_item *it = policy_next(s->pol, rp_us(s, s->now), &slot, &cached);
        if (it == NULL)
            return;
        rp_start(s, (rp_job *)it, slot);
    }
}

/* Runs the workload once under policy name; prints its JSON line. */
static int rp_run(const rp_opts *o, bn_workload *w, const char *name)
{
    rp_sim s = {.o = o, .w = w, .rng = o->seed * 7919 + 17, .step_end = INFINITY};
    int rc = -1;
    bn_workload_reset(w);
    simcfg_init(&s.cfg);
    s.cfg.slots = o->slots;
    if (policy_alloc(&s.pol, name, 100000) != LMSCHED_OK) {
        fprintf(stderr, "lmreplay: unknown policy %s\n", name);
        return -1;
    }
    policy_set_slots(s.pol, o->slots);
    policy_set_placement(s.pol, o->pinned, o->similarity);
    policy_tuning tun = {.starve_us = 30000000, .gather_us = (int64_t)o->gather_ms * 1000};
    policy_set_tuning(s.pol, &tun);
    if (o->probe && o->pinned)
        policy_seed_restore(s.pol, o->restore ? 1.0 : 0.0);
    s.jobs = calloc(w->nreqs, sizeof(*s.jobs));
    s.slots = calloc(o->slots, sizeof(*s.slots));
    if (s.jobs == NULL || s.slots == NULL)
        goto out;
    for (size_t i = 0; i < w->nreqs; i++) {
        s.jobs[i].idx = i;
        s.jobs[i].t_send = INFINITY;
        s.jobs[i].slot = -1;
        s.jobs[i].pol_slot = -1;
    }
    for (int a = 0; a < w->nagents; a++) {
        if (!rp_active(&s, a))
            continue;
        rp_job *j = &s.jobs[(size_t)a * (size_t)w->per_agent];
        if (rp_open(w, a)) {
            for (int k = 0; k < w->per_agent; k++)
                j[k].t_send = w->reqs[j[k].idx].arrival_sim_ms + rp_lag(&s);
        } else {
            j->t_send = w->reqs[j->idx].think_sim_ms + rp_lag(&s);
            s.round_left += rp_rounds(w, a);
        }
    }
    for (unsigned steps = 0; steps < 50000000u; steps++) {
        double te = rp_next_engine(&s), ta = INFINITY;
        for (size_t i = 0; i < w->nreqs; i++)
            if (s.jobs[i].state == RP_WAIT && s.jobs[i].t_send < ta)
                ta = s.jobs[i].t_send;
        int64_t wake = policy_next_wake(s.pol);
        double tw = wake == INT64_MAX ? INFINITY : (double)wake * o->time_scale / 1000.0;
        if (tw <= s.now)
            tw = INFINITY;
        double t = te < ta ? te : ta;
        if (tw < t)
            t = tw;
        if (isinf(t))
            break;
        rp_advance(&s, t);
        rp_engine_events(&s);
        for (size_t i = 0; i < w->nreqs; i++) {
            rp_job *j = &s.jobs[i];
            if (j->state != RP_WAIT || j->t_send > s.now)
                continue;
            if (rp_build(&s, j) != 0)
                goto out;
            j->pi.enq_us = rp_us(&s, s.now);
            j->t_send = s.now;
            j->state = RP_QUEUED;
            w->reqs[i].sent_ms = s.now / o->time_scale;
            if (policy_push(s.pol, &j->pi) != LMSCHED_OK)
                goto out;
        }
        rp_dispatch(&s);
        if (o->batch > 0 && isinf(s.step_end))
            rp_step_start(&s);
    }
    int64_t opt = bn_optimum(w, o->slots);
    double *wait = calloc(w->nreqs + 1, sizeof(double)), makespan = 0, e2e = 0, ttft = 0;
    size_t n = 0, undone = 0;
    for (size_t i = 0; i < w->nreqs; i++) {
        const bn_req *q = &w->reqs[i];
        if (!q->sent)
            continue;
        if (s.jobs[i].state != RP_DONE) {
            undone++;
            continue;
        }
        wait[n++] = q->queue_ms;
        e2e += q->queue_ms + q->ttft_ms;
        ttft += q->ttft_ms;
        if (q->done_ms > makespan)
            makespan = q->done_ms;
    }
    qsort(wait, n, sizeof(double), bn_cmp_double);
    printf("{\"workload\":\"%s\",\"policy\":\"%s\",\"seed\":%llu,\"pinned\":%s,"
           "\"requests\":%zu,\"undone\":%zu,\"prompt_tokens\":%lld,\"prefill_tokens\":%lld,"
           "\"loads\":%lld,\"optimal_prefill_tokens\":%lld,\"prefill_vs_optimal\":%.3f,"
           "\"ttft_mean_ms\":%.1f,\"e2e_ttft_mean_ms\":%.1f,\"wait_p50_ms\":%.1f,"
           "\"wait_p99_ms\":%.1f,\"makespan_ms\":%.1f",
           w->name, name, (unsigned long long)o->seed, o->pinned ? "true" : "false", n, undone,
           (long long)s.prompt, (long long)s.prefill, (long long)s.loads, (long long)opt,
           opt > 0 ? (double)s.prefill / (double)opt : 0.0, n ? ttft / n : 0,
           n ? e2e / n : 0, n ? wait[(size_t)ceil(0.5 * n) - 1] : 0,
           n ? wait[(size_t)ceil(0.99 * n) - 1] : 0, makespan);
    for (int c = 0; w->nclasses > 1 && c < w->nclasses; c++) {
        size_t k = 0;
        double sum = 0, sum2 = 0;
        int na = 0;
        for (size_t i = 0; i < w->nreqs; i++)
            if (w->reqs[i].sent && s.jobs[i].state == RP_DONE && w->reqs[i].cls == c)
                wait[k++] = w->reqs[i].queue_ms;
        for (int a = 0; a < w->nagents; a++) {
            double ws = 0;
            int m = 0;
            for (int q = 0; q < w->per_agent; q++) {
                size_t i = (size_t)a * (size_t)w->per_agent + (size_t)q;
                if (w->agent_class[a] == c && s.jobs[i].state == RP_DONE) {
                    ws += w->reqs[i].queue_ms;
                    m++;
                }
            }
            if (m > 0) {
                sum += ws / m;
                sum2 += ws / m * ws / m;
                na++;
            }
        }
        if (k == 0)
            continue;
        qsort(wait, k, sizeof(double), bn_cmp_double);
        printf(",\"%s_wait_p50_ms\":%.1f,\"%s_wait_p99_ms\":%.1f,\"%s_fairness\":%.3f",
               w->class_names[c], wait[(size_t)ceil(0.5 * k) - 1], w->class_names[c],
               wait[(size_t)ceil(0.99 * k) - 1], w->class_names[c],
               sum2 > 0 ? sum * sum / (na * sum2) : 1.0);
    }
    printf("}\n");
    free(wait);
    rc = undone == 0 ? 0 : -1;
out:
    for (size_t i = 0; s.jobs != NULL && i < w->nreqs; i++) {
        if (s.jobs[i].state == RP_QUEUED)
            policy_remove(s.pol, &s.jobs[i].pi);
        prefix_chain_fini(&s.jobs[i].chain);
    }
    for (unsigned i = 0; s.slots != NULL && i < o->slots; i++)
        free(s.slots[i].cache);
    free(s.slots);
    free(s.jobs);
    policy_free(s.pol);
    return rc;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"workload", required_argument, NULL, 'w'},
        {"policy", required_argument, NULL, 'p'},
        {"seed", required_argument, NULL, 's'},
        {"scale", required_argument, NULL, 'x'},
        {"slots", required_argument, NULL, 'n'},
        {"unpinned", no_argument, NULL, 'u'},
        {"time-scale", required_argument, NULL, 't'},
        {"prefill-tps", required_argument, NULL, 'P'},
        {"decode-tps", required_argument, NULL, 'D'},
        {"batch-slowdown", required_argument, NULL, 'B'},
        {"classes", required_argument, NULL, 'c'},
        {"restore", no_argument, NULL, 'r'},
        {"probe", no_argument, NULL, 'R'},
        {"gather-ms", required_argument, NULL, 'g'},
        {"batch-size", required_argument, NULL, 'b'},
        {NULL, 0, NULL, 0},
    };
    rp_opts o = {.policies = "fifo,prefix",
                 .seed = 1,
                 .scale = 1,
                 .slots = 4,
                 .pinned = true,
                 .time_scale = 20,
                 .prefill_tps = 800,
                 .decode_tps = 45,
                 .slowdown = 0.05,
                 .similarity = 0.10,
                 .gather_ms = 10};
    const char *workload = NULL;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'w': workload = optarg; break;
        case 'p': o.policies = optarg; break;
        case 's': o.seed = strtoull(optarg, NULL, 10); break;
        case 'x': o.scale = atof(optarg); break;
        case 'n': o.slots = (unsigned)atoi(optarg); break;
        case 'u': o.pinned = false; break;
        case 't': o.time_scale = atof(optarg); break;
        case 'P': o.prefill_tps = atof(optarg); break;
        case 'D': o.decode_tps = atof(optarg); break;
        case 'B': o.slowdown = atof(optarg); break;
        case 'c': o.classes = optarg; break;
        case 'r': o.restore = true; break;
        case 'R': o.probe = true; break;
        case 'g': o.gather_ms = atoi(optarg); break;
        case 'b': o.batch = (unsigned)atoi(optarg); break;
        default:
            fprintf(stderr, "usage: lmreplay --workload W [--policy LIST] [--seed N] ...\n");
            return 2;
        }
    }
    if (workload == NULL || bn_workload_parse(workload, &o.kind, &o.tools) != 0 ||
        o.slots < 1 || o.slots > 16 || o.time_scale <= 0 || o.prefill_tps <= 0 ||
        o.decode_tps <= 0) {
        fprintf(stderr, "lmreplay: bad arguments (see the comment at the top of replay.c)\n");
        return 2;
    }
    bn_workload *w = NULL;
    if (bn_workload_alloc(&w, o.kind, o.seed, o.scale) != 0 ||
        (o.tools && bn_workload_add_tools(w, o.seed, 600) != 0)) {
        fprintf(stderr, "lmreplay: out of memory\n");
        return 1;
    }
    if (o.classes != NULL && bn_workload_classes(w, o.classes) != 0) {
        fprintf(stderr, "lmreplay: --classes: unknown class\n");
        bn_workload_free(w);
        return 2;
    }
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", o.policies);
    int rc = 0;
    for (char *save = NULL, *p = strtok_r(buf, ",", &save); p != NULL;
         p = strtok_r(NULL, ",", &save))
        if (rp_run(&o, w, p) != 0)
            rc = 1;
    bn_workload_free(w);
    return rc;
}
