/*
 * probe - the restore probe: does a backend restore a prompt its slot lost
 * by itself (llama.cpp's host prompt cache, --cache-ram, on by default)?
 * The prefix policy's holds only pay where it does not (docs/scheduling.md,
 * "The cost model"); learned from traffic alone, the answer comes after
 * three reloads, about the first ten requests of a conversation workload,
 * and those ran as on a server without the cache. The server does not say
 * (llama.cpp's /props has no cache-ram field), so it is asked by
 * observation: three one-token requests on one slot, a prompt A, another
 * B (which moves A out of the slot), and A again. What the third finds
 * cached beyond what B shared with A is what the server restored.
 *
 * Design notes:
 * - Only where the policy pins slots (id_slot), the only place it can
 *   know which slot A left. The probe takes one idle slot of the backend
 *   from the policy (policy_slot_take), so no request is placed there
 *   while it runs and the others run on the remaining slots; afterwards
 *   the slot is given back with its content unknown.
 * - At start-up (sched_start) the daemon waits for it before it listens,
 *   so the first request already finds the answer; when a backend comes
 *   back after an outage it runs again (a restarted server may have other
 *   flags) while requests go to its other slots.
 * - A failure, a timeout (PROBE_TIMEOUT_US for the three) or a server
 *   that reports no cached tokens leaves the answer unknown: the policy
 *   learns from traffic as without the probe.
 * - Several backends: each is probed and reported on its own; the policy
 *   keeps one measure for all its slots, seeded with the lowest share any
 *   backend's probe read. A restoring verdict is only taken when every
 *   probed backend restores, since wrongly dropping the holds costs
 *   prefill on a server that does not restore, where wrongly keeping them
 *   costs waits only.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lmsched/wire.h"
#include "scheduler/core/core.h"
#include "scheduler/util/clock.h"
#include "scheduler/util/log.h"

/* The three requests must be done within this long, or the answer stays
 * unknown. */
#define PROBE_TIMEOUT_US 5000000
/* Words of each probe prompt: about 300 bytes, 100 to 200 tokens. Any
 * non-empty prompt is saved by llama.cpp (b11669: 31 tokens were); the
 * length only has to make the share readable. */
#define PROBE_WORDS 48
/* Fewer tokens of A than this beyond what B shares tell nothing. */
#define PROBE_MIN_TOKENS 32
/* The share at which the verdict is "restores" (the policy's own
 * threshold, POL_RESTORING, applies to the share seeded). */
#define PROBE_RESTORES 0.5

const char *probe_restore_name(sched_restore r)
{
    switch (r) {
    case SCHED_RESTORE_OFF:
        return "off";
    case SCHED_RESTORE_PENDING:
        return "pending";
    case SCHED_RESTORE_RUNNING:
        return "probing";
    case SCHED_RESTORE_YES:
        return "restores";
    case SCHED_RESTORE_NO:
        return "no_restore";
    case SCHED_RESTORE_UNKNOWN:
        return "unknown";
    }
    return "unknown";
}

static uint64_t probe_mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

/* Prompt A (which 0) or B (1) of the probe with this nonce: pseudo-words
 * no workload has, different from the first letter on, so A and B share
 * only the chat template's tokens. malloc'd, NULL on ENOMEM. */
static char *probe_text(uint64_t nonce, unsigned which)
{
    static const char cons[] = "bcdfghjklmnprstvwz", vow[] = "aeiou";
    size_t cap = PROBE_WORDS * 9 + 1, n = 0;
    char *t = malloc(cap);
    if (t == NULL)
        return NULL;
    uint64_t h = probe_mix(nonce ^ (which + 1) * 0x9e3779b97f4a7c15ULL);
    for (unsigned w = 0; w < PROBE_WORDS; w++) {
        unsigned len = 3 + (unsigned)(h % 5);
        for (unsigned k = 0; k < len; k++) {
            h = probe_mix(h + k + 1);
            t[n++] = k % 2 == 0 ? cons[h % (sizeof(cons) - 1)] : vow[h % (sizeof(vow) - 1)];
        }
        t[n++] = w + 1 < PROBE_WORDS ? ' ' : '.';
    }
    /* A and B must differ in their first byte: their shared prefix is
     * then the template's alone. */
    t[0] = which == 0 ? 'q' : 'x';
    t[n] = '\0';
    return t;
}

/* The step's request: one user message, one token. */
static chat_req *probe_req(uint64_t nonce, unsigned step)
{
    chat_req *r = NULL;
    if (chat_req_alloc(&r) != LMSCHED_OK)
        return NULL;
    r->messages = calloc(1, sizeof(*r->messages));
    if (r->messages == NULL)
        goto fail;
    r->n_messages = 1;
    r->messages[0].role = strdup("user");
    r->messages[0].content = probe_text(nonce, step == 1 ? 1 : 0);
    if (r->messages[0].role == NULL || r->messages[0].content == NULL)
        goto fail;
    r->max_tokens = 1;
    r->has_temperature = true;
    r->temperature = 0;
    return r;
fail:
    chat_req_free(r);
    return NULL;
}

/* Ends backend i's probe with a verdict: gives the slot back and, when
 * the share was read, seeds the policy's measure. */
static void probe_end(sched *s, unsigned i, sched_restore verdict, double share,
                      const char *why)
{
    sched_be *e = &s->be[i];
    const backend *b = &s->backends[i];
    if (e->rp_xfer != NULL)
        http_xfer_free(s->http, e->rp_xfer);
    e->rp_xfer = NULL;
    if (e->rp_slot >= 0)
        policy_slot_give(s->pol, e->rp_slot);
    e->rp_slot = -1;
    e->restore = verdict;
    e->restore_share = share;
    if (verdict == SCHED_RESTORE_UNKNOWN) {
        log_info("backend %s: whether it restores evicted prompts is not known (%s); "
                 "learned from traffic", b->url, why);
        return;
    }
    log_info("backend %s %s evicted prompts itself (%s): %.0f%% of a prompt its slot "
             "lost came back cached", b->url,
             verdict == SCHED_RESTORE_YES ? "restores" : "does not restore",
             verdict == SCHED_RESTORE_YES ? "a host prompt cache" : "no host prompt cache",
             share * 100);
    double low = share;
    for (unsigned k = 0; k < s->n_backends; k++)
        if ((s->be[k].restore == SCHED_RESTORE_YES || s->be[k].restore == SCHED_RESTORE_NO) &&
            s->be[k].restore_share < low)
            low = s->be[k].restore_share;
    policy_seed_restore(s->pol, low);
}

/* Sends step e->rp_step. Returns false (after ending the probe) when it
 * could not start. */
static bool probe_send(sched *s, unsigned i)
{
    sched_be *e = &s->be[i];
    chat_req *r = probe_req(e->rp_nonce, e->rp_step);
    if (r == NULL) {
        probe_end(s, i, SCHED_RESTORE_UNKNOWN, -1, "out of memory");
        return false;
    }
    backend_chat_opts o = {
        .cache_prompt = s->cfg.cache_prompt,
        .max_tokens = -1,
        .slot = e->rp_slot - (int)e->slot_base,
    };
    int rc = backend_chat_start(&s->backends[i], r, &o, e, &e->rp_xfer);
    chat_req_free(r);
    if (rc != LMSCHED_OK) {
        e->rp_xfer = NULL;
        probe_end(s, i, SCHED_RESTORE_UNKNOWN, -1, lmsched_strerror(rc));
        return false;
    }
    return true;
}

void probe_restore_want(sched *s, unsigned i)
{
    sched_be *e = &s->be[i];
    if (e->restore == SCHED_RESTORE_RUNNING)
        return;
    if (!s->cfg.probe_restore || !s->pin_slots || !backend_pins_slots(&s->backends[i])) {
        e->restore = SCHED_RESTORE_OFF;
        return;
    }
    e->restore = SCHED_RESTORE_PENDING;
}

void probe_restore_tick(sched *s, int64_t now)
{
    for (unsigned i = 0; i < s->n_backends; i++) {
        sched_be *e = &s->be[i];
        if (e->restore == SCHED_RESTORE_RUNNING && now >= e->rp_deadline_us) {
            probe_end(s, i, SCHED_RESTORE_UNKNOWN, -1, "the probe timed out");
            continue;
        }
        if (e->restore != SCHED_RESTORE_PENDING || s->draining || e->removed ||
            !s->backends[i].healthy || e->n_slots == 0)
            continue;
        if (!s->pin_slots) {
            e->restore = SCHED_RESTORE_OFF;
            continue;
        }
        /* Its last idle slot: the policy fills the first ones first. */
        int slot = -1;
        for (unsigned k = e->n_slots; k-- > 0 && slot < 0;)
            if (policy_slot_take(s->pol, (int)(e->slot_base + k)) == 0)
                slot = (int)(e->slot_base + k);
        if (slot < 0)
            continue; /* every slot busy: at a later turn */
        e->rp_slot = slot;
        e->rp_step = 0;
        e->rp_deadline_us = now + PROBE_TIMEOUT_US;
        e->rp_nonce = probe_mix((uint64_t)now ^ ((uint64_t)i << 56) ^ (uint64_t)(uintptr_t)e);
        e->restore = SCHED_RESTORE_RUNNING;
        log_debug("backend %s: restore probe on slot %u", s->backends[i].url,
                  (unsigned)slot - e->slot_base);
        probe_send(s, i);
    }
}

bool probe_restore_owns(const sched *s, const http_xfer *x)
{
    for (unsigned i = 0; i < s->n_backends; i++)
        if (s->be[i].rp_xfer == x)
            return x != NULL;
    return false;
}

void probe_restore_done(sched *s, http_xfer *x)
{
    unsigned i = 0;
    while (i < s->n_backends && s->be[i].rp_xfer != x)
        i++;
    if (i == s->n_backends) {
        http_xfer_free(s->http, x);
        return;
    }
    sched_be *e = &s->be[i];
    if (x->err.code != LMSCHED_OK) {
        char why[sizeof(x->err.message) + 32];
        snprintf(why, sizeof(why), "the probe failed: %s", x->err.message);
        probe_end(s, i, SCHED_RESTORE_UNKNOWN, -1, why);
        return;
    }
    int64_t prompt = x->resp.prompt_tokens, cached = x->resp.cached_tokens;
    e->rp_prompt[e->rp_step] = prompt;
    e->rp_cached[e->rp_step] = cached;
    http_xfer_free(s->http, x);
    e->rp_xfer = NULL;
    if (cached < 0 || prompt <= 0) {
        probe_end(s, i, SCHED_RESTORE_UNKNOWN, -1, "the server reports no cached tokens");
        return;
    }
    if (++e->rp_step < 3) {
        probe_send(s, i);
        return;
    }
    /* Without a host cache the third finds what B shares with A (the
     * chat template's tokens), as B did; with one, the whole of A but the
     * last token, which llama.cpp always evaluates. */
    int64_t shared = e->rp_cached[1], lost = e->rp_prompt[2] - 1 - shared;
    if (lost < PROBE_MIN_TOKENS) {
        probe_end(s, i, SCHED_RESTORE_UNKNOWN, -1, "the probe prompts were too short to tell");
        return;
    }
    double share = (double)(e->rp_cached[2] - shared) / (double)lost;
    share = share < 0 ? 0 : share > 1 ? 1 : share;
    probe_end(s, i, share >= PROBE_RESTORES ? SCHED_RESTORE_YES : SCHED_RESTORE_NO, share,
              NULL);
}

bool probe_restore_running(const sched *s)
{
    for (unsigned i = 0; i < s->n_backends; i++)
        if (s->be[i].restore == SCHED_RESTORE_RUNNING)
            return true;
    return false;
}

int64_t probe_restore_wake(const sched *s)
{
    int64_t t = INT64_MAX;
    for (unsigned i = 0; i < s->n_backends; i++)
        if (s->be[i].restore == SCHED_RESTORE_RUNNING && s->be[i].rp_deadline_us < t)
            t = s->be[i].rp_deadline_us;
    return t;
}

void probe_restore_fini(sched *s)
{
    for (unsigned i = 0; i < s->n_backends; i++) {
        if (s->be[i].rp_xfer != NULL)
            http_xfer_free(s->http, s->be[i].rp_xfer);
        s->be[i].rp_xfer = NULL;
    }
}
