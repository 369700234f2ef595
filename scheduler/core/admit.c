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
 * any model: a named model no probed backend serves goes there. Returns
 * false and fills why when no backend can serve it: the models there are. */
static bool admit_route(const sched *s, job *j, char *why, size_t len)
{
    uint32_t m = 0, unknown = 0;
    const char *want = j->req->model != NULL && j->req->model[0] ? j->req->model : NULL;
    if (want == NULL)
        want = s->backends[0].model[0] ? s->backends[0].model : NULL;
    for (unsigned i = 0; i < s->n_backends; i++) {
        const backend *b = &s->backends[i];
        if (b->model[0] == '\0')
            unknown |= 1u << i;
        else if (want == NULL || strcmp(b->model, want) == 0)
            m |= 1u << i;
    }
    if (m == 0)
        m = unknown;
    if (want == NULL && m == 0)
        m = (1u << s->n_backends) - 1;
    j->pi.backends = m;
    if (m != 0)
        return false;
    size_t at = (size_t)snprintf(why, len, "no backend serves the model '%.100s'; the models "
                                           "there are:", want);
    for (unsigned i = 0; i < s->n_backends && at < len; i++) {
        bool dup = false;
        for (unsigned k = 0; k < i && !dup; k++)
            dup = strcmp(s->backends[k].model, s->backends[i].model) == 0;
        if (!dup)
            at += (size_t)snprintf(why + at, len - at, "%s '%.80s'", at > 0 && i > 0 ? "," : "",
                                   s->backends[i].model);
    }
    return true;
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
    if (s->n_backends > 1 && admit_route(s, j, why, sizeof(why))) {
        code = LMSCHED_EINVAL;
        field = "model";
        goto refuse;
    }
    j->reserve = capacity_reserve(s, j->chain.tokens, j->req->max_tokens);

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
    s->queued++;
    job_link(s, j);
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
