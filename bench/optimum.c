/*
 * optimum - the clairvoyant lower bound on prefilled tokens for a workload
 * run on a server with S slots, each caching the prompt (and reply) of the
 * last request it served.
 *
 * Design notes. Every request r pays at least
 *   hit_r  = P_r - min(H_r, P_r - 1)
 * where P_r is its prompt tokens and H_r the longest prefix (in tokens) it
 * shares with the cached state (prompt + reply) of any other request of its
 * group or an earlier one: no slot can offer more, and lmsim (like
 * llama.cpp) evaluates at least one token. That is the cost when the
 * request's cache item (its system prompt, or for `chat` its conversation)
 * is resident. When it is not, the request can share at most X_r tokens
 * (the longest prefix shared with a request of another item), so it pays
 *   load_r = min(H_r, P_r - 1) - min(X_r, P_r - 1)
 * more. Requests are released in groups (a round, the k-th request of every
 * closed-loop agent, a window of open-loop arrivals); within a group any
 * order is allowed, across groups the order is fixed. A group that needs
 * item k while k is not resident pays at least one load, the cheapest
 * load_r among its requests of k. Which items are resident between groups
 * is chosen by dynamic programming over the sets of at most S items (exact:
 * with items of different sizes Belady's rule is not optimal): from a
 * resident set A, a group with demand D can end with any set B of at most S
 * items drawn from A and D; if it loaded items it will not keep while
 * keeping S items it already had (B within A, |B| = S), one of them was
 * evicted and must be reloaded, which costs one more load of an item of B
 * in D. The bound is the sum of hit_r plus the cheapest sequence of loads.
 */
#include <stdlib.h>
#include <string.h>

#include "bench/bench.h"

#define BN_OPT_MAX_ITEMS 16

static int64_t bn_tokens_ceil(size_t bytes)
{
    return (int64_t)((bytes + BN_BYTES_PER_TOKEN - 1) / BN_BYTES_PER_TOKEN);
}

/* The same in the engine's tokens: the common prefix of a's prompt tokens
 * with b's prompt tokens followed by its reply's. The reply is tokenized on
 * its own, which may split its first word differently from the tokens the
 * engine generated; that can only shorten the shared run by a token or so. */
static int64_t bn_common_engine_tokens(const bn_req *a, const bn_req *b)
{
    size_t n = 0;
    while (n < a->ntoks && n < b->ntoks && a->toks[n] == b->toks[n])
        n++;
    if (n == b->ntoks && b->reply_toks != NULL) {
        size_t k = 0;
        while (n < a->ntoks && k < b->nreply_toks && a->toks[n] == b->reply_toks[k]) {
            n++;
            k++;
        }
    }
    return (int64_t)n;
}

/* Leading tokens prompt a shares with the cached state of b (its prompt,
 * then its reply), in lmsim's counting: floor(common bytes / 4). */
static int64_t bn_common_tokens(const bn_workload *w, const bn_req *a, const bn_req *b)
{
    if (w->tokenized)
        return bn_common_engine_tokens(a, b);
    size_t n = 0;
    while (n < a->render_len && n < b->render_len && a->render[n] == b->render[n])
        n++;
    if (n == b->render_len && b->reply != NULL) {
        size_t k = 0, rl = strlen(b->reply);
        while (n < a->render_len && k < rl && a->render[n] == b->reply[k]) {
            n++;
            k++;
        }
    }
    return (int64_t)(n / BN_BYTES_PER_TOKEN);
}

/* Prompt tokens of a sent request, in the counting the optimum uses. */
static int64_t bn_prompt_tokens(const bn_workload *w, const bn_req *r)
{
    return w->tokenized ? (int64_t)r->ntoks : bn_tokens_ceil(r->render_len);
}

int64_t bn_model_prompt_tokens(const bn_workload *w)
{
    int64_t sum = 0;
    for (size_t i = 0; i < w->nreqs; i++)
        if (w->reqs[i].sent)
            sum += bn_prompt_tokens(w, &w->reqs[i]);
    return sum;
}

static int bn_popcount(uint32_t m)
{
    return __builtin_popcount(m);
}

static int64_t bn_min64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

int64_t bn_optimum(const bn_workload *w, unsigned slots)
{
    const int64_t inf = INT64_MAX / 4;
    int nitems = w->nitems, ngroups = 0;
    int64_t total_hit = 0, best = -1;
    int64_t *load = NULL, *dp = NULL, *ndp = NULL;
    uint32_t *demand = NULL;
    size_t nmasks;

    if (nitems > BN_OPT_MAX_ITEMS || nitems < 1 || slots < 1)
        return -1;
    for (size_t i = 0; i < w->nreqs; i++)
        if (w->reqs[i].group + 1 > ngroups)
            ngroups = w->reqs[i].group + 1;
    nmasks = (size_t)1 << nitems;
    /* load[g * nitems + k]: cheapest extra cost of item k's first request
     * in group g when k is not resident */
    load = malloc((size_t)ngroups * (size_t)nitems * sizeof(*load));
    demand = calloc((size_t)ngroups, sizeof(*demand));
    dp = malloc(nmasks * sizeof(*dp));
    ndp = malloc(nmasks * sizeof(*ndp));
    if (load == NULL || demand == NULL || dp == NULL || ndp == NULL)
        goto out;
    for (size_t i = 0; i < (size_t)ngroups * (size_t)nitems; i++)
        load[i] = inf;

    for (size_t i = 0; i < w->nreqs; i++) {
        const bn_req *r = &w->reqs[i];
        int64_t p, h = 0, x = 0, hit_share, cross_share;
        if (!r->sent)
            continue;
        p = bn_prompt_tokens(w, r);
        for (size_t j = 0; j < w->nreqs; j++) {
            const bn_req *q = &w->reqs[j];
            /* a later group's request cannot have been served before r */
            if (j == i || !q->sent || q->group > r->group)
                continue;
            int64_t c = bn_common_tokens(w, r, q);
            if (q->item == r->item) {
                if (c > h)
                    h = c;
            } else if (c > x) {
                x = c;
            }
        }
        if (x > h)
            h = x;
        hit_share = bn_min64(h, p - 1);
        cross_share = bn_min64(x, p - 1);
        total_hit += p - hit_share;
        size_t li = (size_t)r->group * (size_t)nitems + (size_t)r->item;
        load[li] = bn_min64(load[li], hit_share - cross_share);
        demand[r->group] |= 1u << r->item;
    }

    for (size_t m = 0; m < nmasks; m++)
        dp[m] = inf;
    dp[0] = 0;
    for (int g = 0; g < ngroups; g++) {
        uint32_t d = demand[g];
        const int64_t *lg = &load[(size_t)g * (size_t)nitems];
        for (size_t m = 0; m < nmasks; m++)
            ndp[m] = inf;
        for (uint32_t a = 0; a < nmasks; a++) {
            if (dp[a] >= inf)
                continue;
            int64_t base = dp[a];
            for (int k = 0; k < nitems; k++)
                if ((d & ~a) & (1u << k))
                    base += lg[k];
            uint32_t u = a | d;
            /* every subset b of u, including the empty set */
            for (uint32_t b = u;; b = (b - 1) & u) {
                if ((unsigned)bn_popcount(b) <= slots) {
                    int64_t c = base;
                    bool transients = (d & ~a & ~b) != 0;
                    if (transients && (b & ~a) == 0 &&
                        (unsigned)bn_popcount(b) == slots) {
                        int64_t reload = inf;
                        for (int k = 0; k < nitems; k++)
                            if ((b & d) & (1u << k))
                                reload = bn_min64(reload, lg[k]);
                        c = reload >= inf ? inf : c + reload;
                    }
                    if (c < ndp[b])
                        ndp[b] = c;
                }
                if (b == 0)
                    break;
            }
        }
        int64_t *t = dp;
        dp = ndp;
        ndp = t;
    }
    best = inf;
    for (size_t m = 0; m < nmasks; m++)
        best = bn_min64(best, dp[m]);
    best = best >= inf ? -1 : best + total_hit;
out:
    free(load);
    free(demand);
    free(dp);
    free(ndp);
    return best;
}
