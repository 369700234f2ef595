/*
 * cost - the prefix policy's cost model: what it has measured of the
 * backend (how long a prefilled and a generated token take, how many of
 * the backend's tokens an estimated token is, whether the backend restores
 * evicted prefixes by itself) and of its clients (how often each group's
 * requests arrive), and the estimates the rules decide with: how long a
 * busy slot will stay busy, and what
 * evicting an idle slot's content is expected to cost (docs/scheduling.md,
 * "The cost model").
 *
 * Design notes: every figure is learned, none is configured. With the
 * first-token time of each request (policy_slot_end), prefill and decode
 * are measured apart: ttft / prefilled tokens, and (end - first token) /
 * (generated - 1). Without it (policy_slot_done: only the end is known, and
 * only at the next policy_next), the service time is fitted to prefilled
 * and generated tokens by recursive least squares with forgetting, which a
 * mix of hits and loads determines. Until the rates are known the rules
 * keep their rate-free behaviour (pol_rates_known).
 *
 * Tokens: the rules count in estimated tokens (4 bytes each, chain.c); the
 * backend reports its own. kappa, the ratio of the two over recent
 * requests, converts one into the other (1.6 for llama.cpp's tiny model,
 * 1.0 for lmsim).
 */
#include <math.h>

#include "scheduler/policy/internal.h"

/* Weight of a new sample in the running averages. */
#define POL_EWMA 0.25
/* Forgetting factor of the least-squares fit: about the last 30 requests. */
#define POL_FORGET 0.97
/* Prefill samples below this many tokens are mostly fixed overhead. */
#define POL_PF_SAMPLE_MIN 256
/* Feature scales of the fit (prefilled / 1000, generated / 100), so both
 * parameters are of a similar size. */
#define POL_FIT_X 1000.0
#define POL_FIT_G 100.0
/* A group is open (pol_group_open) once this share of its recent arrivals
 * came while their sender had another request of it queued or running. */
#define POL_OPEN_SHARE 0.1
/* Generated tokens assumed for a request without max_tokens, until the
 * mean is measured. */
#define POL_GEN_DEFAULT 256

static double pol_ewma(double old, double sample, unsigned n)
{
    return n == 0 ? sample : old + POL_EWMA * (sample - old);
}

void pol_meter_init(pol_meter *m)
{
    *m = (pol_meter){.kappa = 1.0};
    m->cov[0][0] = m->cov[1][1] = 1e16;
}

static double pol_pf_raw(const pol_meter *m)
{
    return m->n_pf > 0 ? m->pf_us : m->th[0] / POL_FIT_X;
}

static double pol_gen_raw(const pol_meter *m)
{
    return m->n_gen > 0 ? m->gen_us : m->th[1] / POL_FIT_G;
}

bool pol_rates_known(const policy *p)
{
    const pol_meter *m = &p->meter;
    if (m->n_pf > 0 && m->n_gen > 0)
        return m->pf_us > 0 && m->gen_us > 0;
    return m->n_fit >= 4 && pol_pf_raw(m) > 0 && pol_gen_raw(m) > 0;
}

double pol_prefill_us(const policy *p, double est_tokens)
{
    double pf = pol_pf_raw(&p->meter);
    return est_tokens > 0 && pf > 0 ? est_tokens * p->meter.kappa * pf : 0;
}

double pol_gen_us(const policy *p, double tokens)
{
    double g = pol_gen_raw(&p->meter);
    return tokens > 0 && g > 0 ? tokens * g : 0;
}

double pol_unrestored(const policy *p)
{
    if (p->meter.n_loads < p->meter.probe_until) /* the probe's verdict stands */
        return fmin(1.0 - p->meter.restore, 1.0 - POL_RESTORING);
    return p->meter.n_loads >= 3 ? 1.0 - p->meter.restore : 1.0;
}

bool pol_restores(const policy *p)
{
    return p->meter.n_loads < p->meter.probe_until ||
           (p->meter.n_loads >= 3 && p->meter.restore >= POL_RESTORING);
}

void policy_seed_restore(policy *p, double share)
{
    if (p == NULL || !(share >= 0))
        return;
    /* As POL_SEED_LOADS reloads that each read share: the next real
     * reload weighs in as a fourth one would (POL_EWMA). */
    p->meter.restore = share > 1 ? 1 : share;
    p->meter.n_loads = POL_SEED_LOADS;
    p->meter.probe_until = share >= POL_RESTORING ? POL_SEED_LOADS + POL_PROBE_TRUST : 0;
}

bool policy_restore_info(const policy *p, double *share, unsigned *reloads)
{
    if (share != NULL)
        *share = p != NULL && p->meter.n_loads > 0 ? p->meter.restore : -1;
    if (reloads != NULL)
        *reloads = p != NULL ? p->meter.n_loads : 0;
    return p != NULL && pol_restores(p);
}

/* Decays the recent prefill work to now. */
static double pol_work_at(const pol_meter *m, int64_t now_us)
{
    if (m->tau_us <= 0 || m->work_at_us == 0)
        return 0;
    return m->work_us * exp(-(double)(now_us - m->work_at_us) / m->tau_us);
}

double pol_engine_load(const policy *p, int64_t now_us)
{
    const pol_meter *m = &p->meter;
    if (m->tau_us <= 0)
        return 0;
    double u = pol_work_at(m, now_us) / m->tau_us;
    return u < 0.95 ? u : 0.95;
}

void pol_cost_start(policy *p, pol_slot *s, const pol_item *it, uint32_t cached,
                    uint32_t seen, int64_t now_us)
{
    pol_meter *m = &p->meter;
    double pf = pol_prefill_us(p, (double)it->tokens - cached);
    if (pf > 0) {
        /* The utilisation is judged over about 16 loads of the size seen. */
        if (pf >= pol_prefill_us(p, POL_MIN_LOAD_TOKENS)) {
            double tau = 16 * pf;
            m->tau_us = m->tau_us > 0 ? m->tau_us + POL_EWMA * (tau - m->tau_us) : tau;
        }
        m->work_us = pol_work_at(m, now_us) + pf;
        m->work_at_us = now_us;
    }
    s->start_us = now_us;
    s->est_prompt = it->tokens;
    s->est_cached = cached;
    s->est_seen = seen > cached ? seen : cached;
    if (it->max_tokens > 0)
        s->gen = it->max_tokens;
    else
        s->gen = p->meter.gen_mean > 0 ? (uint32_t)p->meter.gen_mean : POL_GEN_DEFAULT;
    s->end_unstamped = false;
}

/* One request's service: x backend tokens prefilled, g generated, from
 * start to end (first token at first, 0 unknown). */
static void pol_measure(pol_meter *m, double x, double g, int64_t start, int64_t first,
                        int64_t end)
{
    if (end <= start)
        return;
    /* A first token at the end (a server that ignored "stream") tells
     * nothing apart: fitted like an end without it. */
    if (first > start && first < end) {
        if (x >= POL_PF_SAMPLE_MIN) {
            m->pf_us = pol_ewma(m->pf_us, (double)(first - start) / x, m->n_pf);
            m->n_pf++;
        }
        if (g >= 2) {
            m->gen_us = pol_ewma(m->gen_us, (double)(end - first) / (g - 1), m->n_gen);
            m->n_gen++;
        }
        return;
    }
    /* service = th0 x/1000 + th1 g/100 */
    double phi[2] = {x / POL_FIT_X, g / POL_FIT_G}, y = (double)(end - start);
    double pphi[2] = {m->cov[0][0] * phi[0] + m->cov[0][1] * phi[1],
                      m->cov[1][0] * phi[0] + m->cov[1][1] * phi[1]};
    double den = POL_FORGET + phi[0] * pphi[0] + phi[1] * pphi[1];
    double k[2] = {pphi[0] / den, pphi[1] / den};
    double err = y - (m->th[0] * phi[0] + m->th[1] * phi[1]);
    m->th[0] += k[0] * err;
    m->th[1] += k[1] * err;
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++)
            m->cov[i][j] = (m->cov[i][j] - k[i] * pphi[j]) / POL_FORGET;
    /* Keep the covariance from blowing up in a direction no sample
     * excites (all hits, say): the prior's size bounds it. */
    for (int i = 0; i < 2; i++)
        if (m->cov[i][i] > 1e16)
            m->cov[i][i] = 1e16;
    m->n_fit++;
}

void pol_cost_end(policy *p, pol_slot *s, const pol_done *d)
{
    pol_meter *m = &p->meter;
    double est_unc = (double)s->est_prompt - (double)s->est_cached;
    if (d->prompt_tokens > 0 && s->est_prompt > 0) {
        m->kappa =
            pol_ewma(m->kappa, (double)d->prompt_tokens / s->est_prompt, m->n_kappa);
        m->n_kappa++;
    }
    double x = d->prompt_tokens > 0 && d->cached_tokens >= 0
                   ? (double)(d->prompt_tokens - d->cached_tokens)
                   : est_unc * m->kappa;
    /* A reload: of what slots held before and the model expected the
     * backend to have lost, how much did it have cached anyway? Only that
     * part counts: a prompt's new text (a first load, a conversation's new
     * message) is cached nowhere, whatever the server. */
    if (d->ok && d->prompt_tokens > 0 && d->cached_tokens >= 0 && s->est_prompt > 0) {
        double scale = (double)d->prompt_tokens / s->est_prompt;
        double exp_cached = s->est_cached * scale,
               exp_lost = ((double)s->est_seen - s->est_cached) * scale;
        if (exp_lost >= POL_MIN_LOAD_TOKENS * scale) {
            double r = ((double)d->cached_tokens - exp_cached) / exp_lost;
            r = r < 0 ? 0 : r > 1 ? 1 : r;
            m->restore = pol_ewma(m->restore, r, m->n_loads);
            m->n_loads++;
        }
    }
    double g = d->completion_tokens >= 0 ? (double)d->completion_tokens : (double)s->gen;
    if (d->completion_tokens >= 0)
        m->gen_mean =
            pol_ewma(m->gen_mean, (double)d->completion_tokens, m->gen_mean > 0 ? 1 : 0);
    if (!d->ok)
        return;
    if (d->end_us > 0) {
        pol_measure(m, x, g, s->start_us, d->first_token_us, d->end_us);
    } else {
        s->end_unstamped = true;
        s->end_x = x;
        s->end_g = g;
    }
}

void pol_cost_stamp(policy *p, int64_t now_us)
{
    for (unsigned i = 0; i < p->n_slots; i++) {
        pol_slot *s = &p->slots[i];
        if (!s->end_unstamped)
            continue;
        s->end_unstamped = false;
        pol_measure(&p->meter, s->end_x, s->end_g, s->start_us, 0, now_us);
    }
}

double pol_remaining_us(const policy *p, const pol_slot *s, int64_t now_us)
{
    if (!s->busy)
        return 0;
    double total =
        pol_prefill_us(p, (double)s->est_prompt - s->est_cached) + pol_gen_us(p, s->gen);
    double left = total - (double)(now_us - s->start_us);
    /* Past the estimate it is still generating: at least one more token. */
    double floor = pol_gen_us(p, 1);
    return left > floor ? left : floor;
}

void pol_group_arrival(const policy *p, pol_group *g, const pol_item *it, int64_t now_us)
{
    if (g->last_enq_us > 0 && now_us >= g->last_enq_us) {
        double gap = (double)(now_us - g->last_enq_us);
        g->gap_us = g->gap_us > 0 ? g->gap_us + POL_EWMA * (gap - g->gap_us) : gap;
    }
    g->last_enq_us = now_us;
    /* Did its sender send it while waiting for another answer of g? */
    bool piped = false;
    if (it->source != 0) {
        for (unsigned i = 0; i < p->n_slots && !piped; i++)
            piped = p->slots[i].busy && p->slots[i].run == g &&
                    p->slots[i].source == it->source;
        for (int lv = 0; lv < POL_LEVELS && !piped; lv++) {
            int scan = POL_SCAN_ITEMS;
            for (const pol_node *n = g->lv[lv].head; n != NULL && scan-- > 0 && !piped;
                 n = n->gnext)
                piped = n->it->source == it->source;
        }
    }
    g->pipelined += POL_EWMA * ((piped ? 1.0 : 0.0) - g->pipelined);
}

bool pol_group_open(const pol_group *g)
{
    return g->pipelined >= POL_OPEN_SHARE;
}

double pol_group_rate(const pol_group *g, int64_t now_us)
{
    if (g->gap_us <= 0)
        return 0;
    /* A group that has gone quiet for longer than its usual gap is
     * probably slowing down: the time since its last arrival bounds its
     * rate too. */
    double since = (double)(now_us - g->last_enq_us);
    double gap = since > g->gap_us ? since : g->gap_us;
    return 1.0 / (gap > 1 ? gap : 1);
}

double pol_reload_us(const policy *p, unsigned s, double horizon_us)
{
    const pol_slot *sl = &p->slots[s];
    uint32_t n = sl->cache.n_blocks;
    if (n == 0)
        return 0;
    /* What another slot also holds stays resident. */
    uint32_t kept = 0;
    for (unsigned i = 0; i < p->n_slots && kept < n; i++) {
        if (i == s)
            continue;
        uint32_t m = slot_cache_match(&p->slots[i].cache, sl->cache.blocks, n);
        if (m > kept)
            kept = m;
    }
    double tokens = (double)(n - kept) * POL_TOKENS_PER_BLOCK;
    double cost = pol_prefill_us(p, tokens);
    if (cost <= 0) /* rates unknown: count tokens, the ranking is the same */
        cost = tokens;
    cost *= pol_unrestored(p);
    /* How likely it is wanted again: for sure (and the more, the longer its
     * queue per holding slot) while requests of its group wait; otherwise
     * the chance that one arrives within the horizon. */
    const pol_group *g = sl->group;
    if (g == NULL)
        return cost * 0.5;
    if (g->queued > 0)
        return cost * (1.0 + (double)g->queued / (g->resident ? g->resident : 1));
    double rate = pol_group_rate(g, p->now_us);
    return cost * (1.0 - exp(-rate * horizon_us));
}
