/*
 * admit - taking a request in: the checks that can answer it at once, its
 * prefix chain and memory reservation, and its place in the queue.
 *
 * Design notes: sched_submit makes the job first, so every refusal goes
 * through job_fail like any other end (one place answers, one place
 * counts); the checks are a sequence of "why not" that each set a code and
 * a message, and one exit answers them.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "lmsched/wire.h"
#include "scheduler/core/core.h"
#include "scheduler/util/log.h"


/* A prompt that cannot fit the slot's context would cost a slot only to
 * come back as the backend's 400: refused here, with the numbers. Only when
 * it is certain (the token floor alone fills the context); nearer the edge
 * the backend's own answer goes back to the agent. A large max_tokens is
 * not refused: LM Studio and llama.cpp stop at the context with
 * finish_reason "length". Returns true and fills why when it cannot fit. */
static bool admit_too_long(const sched *s, const job *j, char *why, size_t len)
{
    const backend *b = &s->backends[0];
    int64_t ctx = b->context_length > 0 ? b->context_length : s->cfg.context;
    uint64_t floor_tokens = j->chain.bytes / PREFIX_MAX_BYTES_PER_TOKEN;
    if (ctx <= 0 || floor_tokens < (uint64_t)ctx)
        return false;
    snprintf(why, len,
             "the prompt cannot fit the backend's context: about %u tokens (estimated from "
             "its %" PRIu64 " bytes; at least %" PRIu64 "), and the context is %" PRId64
             " tokens per slot%s; shorten the prompt",
             j->chain.tokens, j->chain.bytes, floor_tokens, ctx,
             b->context_length > 0 ? "" : " (--context)");
    return true;
}

/* Several backends: the ones that may run j, as a mask for the policy.
 * A request naming a model goes to the backends that serve it (as their
 * last probe said); one naming none to those serving the first backend's
 * model (any, while that is unknown). A backend not probed yet may serve
 * any model: a named model no probed backend serves goes there. A backend
 * removed from --backends-file serves nothing ("the first" is the first
 * one left). Returns false and fills why when no backend can serve it: the
 * models there are. */
static bool admit_route(sched *s, job *j, char *why, size_t len)
{
    uint32_t m = 0, unknown = 0, live = 0;
    const char *want = j->req->model != NULL && j->req->model[0] ? j->req->model : NULL;
    for (unsigned i = 0; i < s->n_backends; i++)
        if (!s->be[i].removed)
            live |= 1u << i;
    if (want == NULL && live != 0) {
        const backend *first = &s->backends[__builtin_ctz(live)];
        want = first->model[0] ? first->model : NULL;
    }
    for (unsigned i = 0; i < s->n_backends; i++) {
        const backend *b = &s->backends[i];
        if (s->be[i].removed)
            continue;
        if (b->model[0] == '\0')
            unknown |= 1u << i;
        else if (want == NULL || strcmp(b->model, want) == 0)
            m |= 1u << i;
    }
    if (m == 0)
        m = unknown;
    if (want == NULL && m == 0)
        m = live;
    j->pi.backends = m;
    j->elig = m;
    if (m != 0) {
        if (s->routing != SCHED_ROUTE_CACHE) {
            admit_bind(s, j, 0);
            return false;
        }
        capacity_fit(s, j);
        return false;
    }
    size_t at = (size_t)snprintf(why, len, "no backend serves the model '%.100s'; the models "
                                           "there are:", want ? want : "");
    bool first = true;
    for (unsigned i = 0; i < s->n_backends && at < len; i++) {
        bool dup = s->be[i].removed;
        for (unsigned k = 0; k < i && !dup; k++)
            dup = !s->be[k].removed && strcmp(s->backends[k].model, s->backends[i].model) == 0;
        if (!dup) {
            at += (size_t)snprintf(why + at, len - at, "%s '%.80s'", first ? "" : ",",
                                   s->backends[i].model);
            first = false;
        }
    }
    return true;
}

void admit_bind(sched *s, job *j, uint32_t avoid)
{
    uint32_t all = (1u << s->n_backends) - 1, elig = j->elig != 0 ? j->elig & all : all;
    uint32_t cand = elig & sched_up_mask(s) & ~avoid;
    if (cand == 0)
        cand = elig & ~avoid;
    if (cand == 0)
        cand = elig;
    unsigned pick = 0;
    if (s->routing == SCHED_ROUTE_ROUND_ROBIN) {
        for (unsigned k = 0; k < s->n_backends; k++) {
            unsigned i = (s->rr_next + k) % s->n_backends;
            if ((cand >> i) & 1u) {
                pick = i;
                break;
            }
        }
        s->rr_next = (pick + 1) % s->n_backends;
    } else {
        unsigned best = ~0u;
        for (unsigned i = 0; i < s->n_backends; i++) {
            unsigned load = s->be[i].queued + s->be[i].inflight;
            if (((cand >> i) & 1u) && load < best) {
                best = load;
                pick = i;
            }
        }
    }
    j->bound = (int)pick;
    j->pi.backends = 1u << pick;
}

/* The policy reads an item's backends at each decision, so a queued
 * request's may change in place: it keeps its place in the queue. */
void admit_rebind_down(sched *s, uint32_t up)
{
    for (job *j = s->jobs; j != NULL; j = j->next) {
        if (j->state != JOB_QUEUED || j->bound < 0 || ((up >> j->bound) & 1u) ||
            (j->elig & up) == 0)
            continue;
        unsigned from = (unsigned)j->bound;
        sched_queued_add(s, j, -1);
        j->bound = -1;
        admit_bind(s, j, 1u << from);
        sched_queued_add(s, j, 1);
        log_debug("request %" PRIu64 "/%" PRIu64 ": backend %s is down; bound to %s instead",
                  j->sink.owner, j->sink.id, s->backends[from].url,
                  s->backends[j->bound].url);
    }
}

void admit_reroute_queued(sched *s)
{
    job *next;
    for (job *j = s->jobs; j != NULL; j = next) {
        next = j->next;
        if (j->state != JOB_QUEUED)
            continue;
        char why[400];
        sched_queued_add(s, j, -1);
        j->bound = -1;
        if (admit_route(s, j, why, sizeof(why))) {
            policy_remove(s->pol, &j->pi);
            j->state = 0; /* out of the queue */
            job_fail(s, j, LMSCHED_EINVAL, why, "model");
            continue;
        }
        sched_queued_add(s, j, 1);
    }
}

/* The policy's key of a session (FNV-1a of the client's key), 0 for none. */
static uint64_t admit_session(const char *key)
{
    if (key == NULL || key[0] == '\0')
        return 0;
    uint64_t h = 0xcbf29ce484222325ull;
    for (const unsigned char *p = (const unsigned char *)key; *p != '\0'; p++)
        h = (h ^ *p) * 0x100000001b3ull;
    return h != 0 ? h : 1;
}

job *sched_submit(sched *s, chat_req *req, const sink *k)
{
    char why[400];
    int code = LMSCHED_OK;
    const char *field = NULL;

    s->st.received++;
    job *j = job_new(s, req, k);
    if (j == NULL) {
        s->st.failed++;
        s->st.failed_by_code[LMSCHED_ENOMEM]++;
        k->ops->fail(k->arg, NULL, LMSCHED_ENOMEM, "scheduler out of memory", NULL);
        return NULL;
    }
    if (s->draining) {
        code = LMSCHED_ESHUTDOWN;
        snprintf(why, sizeof(why), "lmsched is shutting down and accepts no new requests");
        goto refuse;
    }
    /* It waits for the backend: ask again soon rather than at the next
     * probe, so it goes out as soon as the backend is back. */
    for (unsigned i = 0; i < s->n_backends; i++)
        if (!s->be[i].removed)
            backend_wanted(&s->backends[i], j->recv_us);

    if (prefix_chain_build(&j->chain, j->req) != LMSCHED_OK) {
        code = LMSCHED_ENOMEM;
        snprintf(why, sizeof(why), "scheduler out of memory");
        goto refuse;
    }
    if (admit_too_long(s, j, why, sizeof(why))) {
        code = LMSCHED_ETOOLARGE;
        field = "messages";
        goto refuse;
    }
    j->pi.enq_us = j->recv_us;
    j->pi.deadline_us =
        j->req->deadline_ms ? j->recv_us + (int64_t)j->req->deadline_ms * 1000 : 0;
    j->pi.priority = j->req->priority;
    j->pi.blocks = j->chain.blocks;
    j->pi.n_blocks = j->chain.n_blocks;
    j->pi.tokens = j->chain.tokens;
    j->pi.group = j->chain.group;
    j->pi.label = j->req->system;
    j->pi.session = admit_session(j->req->session);
    j->pi.max_tokens = j->req->max_tokens > 0 ? (uint32_t)j->req->max_tokens : 0;
    j->pi.source = j->sink.owner;
    j->reserve_tokens = capacity_prompt_tokens(s, &j->chain, j->req->n_messages +
                                                                 (j->req->system != NULL &&
                                                                  j->req->system[0] != '\0'));
    j->reserve = capacity_reserve(s, j->reserve_tokens, j->req->max_tokens);
    if (s->n_backends > 1 && admit_route(s, j, why, sizeof(why))) {
        code = LMSCHED_EINVAL;
        field = "model";
        goto refuse;
    }

    int rc = policy_push(s->pol, &j->pi);
    if (rc == LMSCHED_EBUSY) {
        code = LMSCHED_EBUSY;
        snprintf(why, sizeof(why), "scheduler queue is full (%u requests waiting); retry later",
                 s->cfg.max_queue);
        goto refuse;
    }
    if (rc != LMSCHED_OK) {
        code = rc == LMSCHED_ENOMEM ? LMSCHED_ENOMEM : LMSCHED_EINTERNAL;
        snprintf(why, sizeof(why), "scheduler could not queue the request (out of memory)");
        goto refuse;
    }
    j->state = JOB_QUEUED;
    sched_queued_add(s, j, 1);
    job_link(s, j);
    capacity_count_start(s, j);
    return j;

refuse:
    job_fail(s, j, code, why, field);
    return NULL;
}

unsigned sched_cancel_owner(sched *s, uint64_t owner, const char *why)
{
    unsigned n = 0;
    job *next;
    for (job *j = s->jobs; j != NULL; j = next) {
        next = j->next;
        if (j->sink.owner == owner) {
            job_fail(s, j, LMSCHED_ECANCELED, why, NULL);
            n++;
        }
    }
    return n;
}

bool sched_cancel(sched *s, uint64_t owner, uint64_t id, const char *why)
{
    for (job *j = s->jobs; j != NULL; j = j->next) {
        if (j->sink.owner == owner && j->sink.id == id) {
            job_fail(s, j, LMSCHED_ECANCELED, why, NULL);
            return true;
        }
    }
    return false;
}

void sched_cancel_job(sched *s, job *j, int code, const char *why)
{
    job_fail(s, j, code, why, NULL);
}

bool sched_draining(const sched *s)
{
    return s->draining;
}

void sched_count_add(sched *s, sched_count what)
{
    switch (what) {
    case SCHED_COUNT_BAD_MESSAGE:
        s->st.bad_messages++;
        break;
    case SCHED_COUNT_STATUS:
        s->st.status_requests++;
        break;
    case SCHED_COUNT_AUTH_REFUSED:
        s->st.auth_refused++;
        break;
    case SCHED_COUNT_REFUSED_BUSY:
        /* Counted as received too, so received = completed + failed +
         * rejected_busy still holds (docs/status.md). */
        s->st.received++;
        s->st.rejected_busy++;
        break;
    case SCHED_COUNT_CANCELED_EARLY:
        /* Received and failed as canceled, as if it had been canceled a
         * moment after it was queued. */
        s->st.received++;
        s->st.failed++;
        s->st.failed_by_code[LMSCHED_ECANCELED]++;
        break;
    }
}
