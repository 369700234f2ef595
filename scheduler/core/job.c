/*
 * job - one request's life in the core, and its one answer.
 *
 * Design notes: a job ends in exactly one of job_complete and job_fail.
 * Both unlink it, make the sink's one call, and free it, in that order:
 * nothing else frees a job, so no path can answer twice or forget to. The
 * sink copies what it needs during the call (the nng front encodes the
 * reply there and then), so results are views and nothing is borrowed and
 * zeroed afterwards.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "lmsched/wire.h"
#include "scheduler/core/core.h"
#include "scheduler/util/clock.h"
#include "scheduler/util/log.h"

job *job_new(sched *s, chat_req *req, const sink *k)
{
    (void)s;
    job *j = calloc(1, sizeof(*j));
    if (j == NULL) {
        chat_req_free(req);
        return NULL;
    }
    j->req = req;
    j->sink = *k;
    j->slot = -1;
    j->bound = -1;
    j->recv_us = clock_now_us();
    return j;
}

void job_link(sched *s, job *j)
{
    j->prev = NULL;
    j->next = s->jobs;
    if (s->jobs != NULL)
        s->jobs->prev = j;
    s->jobs = j;
}

static void job_unlink(sched *s, job *j)
{
    if (j->prev != NULL)
        j->prev->next = j->next;
    else if (s->jobs == j)
        s->jobs = j->next;
    if (j->next != NULL)
        j->next->prev = j->prev;
    j->prev = j->next = NULL;
}

static void job_free(job *j)
{
    prefix_chain_fini(&j->chain);
    chat_req_free(j->req);
    free(j);
}

void job_release_slot(sched *s, job *j, const pol_done *d)
{
    if (j->reserved) {
        s->reserved_bytes -= j->reserve;
        s->be[sched_be_index(s, j->be)].reserved_bytes -= j->reserve;
        j->reserved = false;
    }
    pol_done failed = {.prompt_tokens = -1, .cached_tokens = -1, .completion_tokens = -1};
    if (j->slot >= 0 && (unsigned)j->slot < policy_slots(s->pol))
        policy_slot_end(s->pol, j->slot, d != NULL ? d : &failed);
    j->slot = -1;
}

/* Detaches j from whatever holds it: its count, the queue, or its
 * transfer, slot and memory. */
static void job_detach(sched *s, job *j)
{
    /* A count still running is of no use any more: cancelled with the job
     * (curl drops the connection), so it never comes back to freed memory. */
    capacity_count_cancel(s, j);
    if (j->state == JOB_QUEUED) {
        policy_remove(s->pol, &j->pi);
        sched_queued_add(s, j, -1);
    } else if (j->state != 0) {
        if (j->xfer != NULL) {
            http_xfer_free(s->http, j->xfer);
            j->xfer = NULL;
        }
        if (s->be[sched_be_index(s, j->be)].pending == j)
            s->be[sched_be_index(s, j->be)].pending = NULL;
        job_release_slot(s, j, NULL);
        s->inflight--;
        s->be[sched_be_index(s, j->be)].inflight--;
    }
    j->state = 0;
}

void job_complete(sched *s, job *j, const chat_result *r)
{
    job_detach(s, j);
    job_unlink(s, j);
    s->st.completed++;
    j->sink.ops->done(j->sink.arg, j, r);
    job_free(j);
}

void job_fail(sched *s, job *j, int code, const char *msg, const char *field)
{
    job_detach(s, j);
    job_unlink(s, j);
    if (code == LMSCHED_EBUSY) {
        s->st.rejected_busy++;
    } else {
        s->st.failed++;
        if (code >= 0 &&
            code < (int)(sizeof(s->st.failed_by_code) / sizeof(s->st.failed_by_code[0])))
            s->st.failed_by_code[code]++;
    }
    log_debug("request %" PRIu64 "/%" PRIu64 " from %s failed: %s: %s", j->sink.owner,
              j->sink.id, j->req->agent != NULL ? j->req->agent : "?", lmsched_err_name(code),
              msg);
    j->sink.ops->fail(j->sink.arg, j, code, msg, field);
    job_free(j);
}
