/*
 * loop - the scheduler's single thread of control: the turn and its phases.
 *
 * One turn: run the posted events -> run the HTTP client -> take finished
 * transfers (answers and probes) -> retry timers -> expire queued deadlines
 * -> dispatch (or, while the backend is down, expire the waits) -> probes
 * -> the drain step -> sleep in the HTTP client's poll until the earliest
 * of those times or the next event.
 *
 * Design notes:
 * - Inbox. Other threads post a sched_event under inbox_mtx and wake the
 *   poll (http_wakeup, curl_multi_wakeup: safe from any thread). Wakeups
 *   coalesce; each turn runs every event posted so far.
 * - Retries: a transient backend error (connection refused, "Channel
 *   Error", 5xx, a stream cut before the first token) is retried with
 *   exponential backoff while the job keeps its concurrency slot; once any
 *   token has been streamed the error goes to the agent, since a retry
 *   would restart the answer.
 * - Preemption (--preempt, loop_preempt): a queued request that cannot
 *   start stops a running one of lower priority, which goes back into the
 *   queue at its old place and runs again later; the answer of that run is
 *   its one answer. Stopping is closing its transfer, as a cancel does.
 * - Every accepted request gets exactly one answer: job_complete or
 *   job_fail (job.c) end every job.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lmsched/wire.h"
#include "scheduler/core/core.h"
#include "scheduler/util/clock.h"
#include "scheduler/util/log.h"
#include "scheduler/util/strbuf.h"

/* ---- inbox (any thread) ------------------------------------------------ */

void sched_post(sched *s, sched_event *e)
{
    pthread_mutex_lock(&s->inbox_mtx);
    e->next = NULL;
    if (s->inbox_tail != NULL)
        s->inbox_tail->next = e;
    else
        s->inbox_head = e;
    s->inbox_tail = e;
    pthread_mutex_unlock(&s->inbox_mtx);
    http_wakeup(s->http);
}

/* Runs every event posted so far, in order. */
static void loop_inbox(sched *s)
{
    pthread_mutex_lock(&s->inbox_mtx);
    sched_event *e = s->inbox_head;
    s->inbox_head = s->inbox_tail = NULL;
    pthread_mutex_unlock(&s->inbox_mtx);
    while (e != NULL) {
        sched_event *next = e->next;
        e->run(s, e); /* may free e */
        e = next;
    }
}

/* ---- stop ---------------------------------------------------------------- */

/* One stop request (a signal): the first starts the drain, a second ends
 * it at once. */
static void loop_stop(sched *s)
{
    int64_t now = clock_now_us();
    if (!s->draining) {
        s->draining = true;
        s->drain_deadline_us = now + (int64_t)s->cfg.drain_timeout_ms * 1000;
        log_info("shutting down: %u queued request(s) get a shutdown error, waiting up "
                 "to %d ms for %u in flight (a second SIGINT/SIGTERM ends the wait)",
                 s->queued, s->cfg.drain_timeout_ms, s->inflight);
    } else if (s->drain_deadline_us > now) {
        /* A second signal: as most servers do, stop waiting. The drain step
         * answers every request still here with the shutdown error on this
         * turn. */
        s->drain_deadline_us = now;
        s->drain_forced = true;
        log_info("second stop signal: ending the drain now; %u request(s) in flight "
                 "get a shutdown error", s->inflight);
    }
}

void sched_request_stop(sched *s)
{
    /* A counter, not an event: nothing to allocate in the signal thread,
     * and nothing left in the inbox to free at exit. */
    atomic_fetch_add(&s->stops, 1);
    http_wakeup(s->http);
}

static void loop_stops(sched *s)
{
    for (unsigned n = atomic_exchange(&s->stops, 0); n > 0; n--)
        loop_stop(s);
}

/* ---- --backends-file, read again on SIGHUP --------------------------------- */

void sched_request_reload(sched *s)
{
    atomic_fetch_add(&s->reloads, 1);
    http_wakeup(s->http);
}

/* A backend for the file line e, at index n_backends. Returns 0, or -1
 * (logged). */
static int loop_backend_add(sched *s, const config_backend_entry *e, int64_t now)
{
    unsigned i = s->n_backends;
    backend_config bc = {
        .url = e->url,
        .kind = e->kind[0] ? e->kind : s->cfg.backend_kind,
        .token = s->token,
        .probe_interval_ms = s->cfg.probe_interval_ms,
    };
    if (i >= SCHED_MAX_BACKENDS) {
        log_error("--backends-file: backend %s not added: %d backends already (removed ones "
                  "count until the daemon restarts)", e->url, SCHED_MAX_BACKENDS);
        return -1;
    }
    memset(&s->be[i], 0, sizeof(s->be[i]));
    s->be[i].rp_slot = -1;
    s->be[i].restore_share = -1;
    if (backend_init(&s->backends[i], s->http, &bc) != LMSCHED_OK) {
        log_error("--backends-file: backend %s not added: out of memory", e->url);
        return -1;
    }
    s->be[i].total_ram = e->total_ram;
    s->be[i].late = true;
    s->n_backends = i + 1;
    s->backends[i].announce = true;
    backend_probe_start(&s->backends[i], now);
    log_info("--backends-file: backend %s added", e->url);
    return 0;
}

/* Reads --backends-file again: backends added are probed and used, ones
 * removed take nothing new (their running requests finish; their queued
 * ones go elsewhere), settings change. Nothing is dropped: every queued
 * request is placed again over the new set, and only one whose model no
 * backend serves any more gets an error. */
static void loop_reload(sched *s)
{
    config_backend_list l;
    char err[700];
    int64_t now = clock_now_us();
    bool changed = false, listed[SCHED_MAX_BACKENDS] = {false};
    if (s->cfg.backends_file[0] == '\0') {
        log_warn("SIGHUP: no --backends-file; nothing to read again");
        return;
    }
    if (config_read_backends(s->cfg.backends_file, &l, err, sizeof(err)) != 0) {
        log_error("SIGHUP: --backends-file: %s; the backends stay as they are", err);
        return;
    }
    unsigned old_n = s->n_backends;
    for (unsigned k = 0; k < l.n; k++) {
        const config_backend_entry *e = &l.v[k];
        unsigned i = 0;
        while (i < s->n_backends && strcmp(s->backends[i].url, e->url) != 0)
            i++;
        if (i == s->n_backends) {
            if (loop_backend_add(s, e, now) == 0) {
                listed[i] = true;
                changed = true;
            }
            continue;
        }
        listed[i] = true;
        if (s->be[i].total_ram != e->total_ram) {
            s->be[i].total_ram = e->total_ram;
            log_info("--backends-file: backend %s: its RAM is now %s", e->url,
                     e->total_ram ? "the file's total-ram" : "this machine's (or --total-ram)");
        }
        if (s->be[i].removed) {
            s->be[i].removed = false;
            changed = true;
            backend_probe_start(&s->backends[i], now);
            log_info("--backends-file: backend %s is back", e->url);
        }
    }
    for (unsigned i = 0; i < old_n; i++) {
        if (listed[i] || s->be[i].removed)
            continue;
        s->be[i].removed = true;
        changed = true;
        log_info("--backends-file: backend %s removed: it takes no new request; %u running "
                 "there finish", s->backends[i].url, s->be[i].inflight);
    }
    capacity_update(s);
    if (changed) {
        policy_set_backends_up(s->pol, sched_up_mask(s));
        admit_reroute_queued(s);
    }
}

static void loop_reloads(sched *s)
{
    if (atomic_exchange(&s->reloads, 0) > 0 && !s->draining)
        loop_reload(s);
}

/* ---- dispatch ----------------------------------------------------------- */

static void loop_job_start(sched *s, job *j)
{
    backend_chat_opts o = {
        .cache_prompt = s->cfg.cache_prompt,
        .max_tokens = s->cfg.default_max_tokens,
        .slot = s->pin_slots && j->slot >= 0
                    ? j->slot - (int)s->be[sched_be_index(s, j->be)].slot_base
                    : -1,
    };
    j->attempts++;
    j->run_us = clock_now_us();
    if (j->dispatch_us == 0)
        j->dispatch_us = j->run_us;
    int rc = backend_chat_start(j->be, j->req, &o, j, &j->xfer);
    if (rc != LMSCHED_OK) {
        j->xfer = NULL;
        job_fail(s, j, rc, "scheduler could not start the backend request", NULL);
        return;
    }
    /* Pieces are kept for an agent that takes the answer as it comes. */
    j->xfer->resp.record_deltas = j->req->stream && j->sink.ops->chunk != NULL;
    j->state = JOB_INFLIGHT;
}

/* KV memory: j, chosen for its backend, reserves its share while it runs
 * and starts. One that cannot fit even alone is refused; otherwise it
 * waits (holding its place on that backend) until enough requests running
 * there finish. Returns true when it waits. */
static bool loop_reserve(sched *s, job *j, int64_t now)
{
    unsigned bi = sched_be_index(s, j->be);
    sched_be *e = &s->be[bi];
    uint64_t budget = e->bout.budget_bytes;
    /* Placed now: what it can take there, capped at that backend's own
     * context (not counted in any sum yet, so it may change). */
    j->reserve = capacity_reserve_on(s, (int)bi, j->reserve_tokens, j->req->max_tokens);
    if (e->reserved_bytes + j->reserve > budget) {
        if (e->reserved_bytes == 0 && !e->bout.model_too_big) {
            char why[200], b1[32], b2[32];
            snprintf(why, sizeof(why), "request needs %s of KV cache (prompt + max_tokens), "
                     "more than the whole budget of %s; lower max_tokens",
                     budget_fmt_size(j->reserve, b1, sizeof(b1)),
                     budget_fmt_size(budget, b2, sizeof(b2)));
            job_fail(s, j, LMSCHED_ETOOLARGE, why, NULL);
            return false;
        }
        if (e->reserved_bytes > 0) {
            e->pending = j;
            return true;
        }
        /* --force with a model over budget: run one at a time */
    }
    e->pending = NULL;
    s->reserved_bytes += j->reserve;
    e->reserved_bytes += j->reserve;
    j->reserved = true;
    lat_add(&s->st.queue_wait, (double)(now - j->recv_us) / 1000.0);
    loop_job_start(s, j);
    return false;
}

/* j, just taken from the queue for slot, runs there: counted, logged, and
 * its memory reserved (loop_reserve). Returns true when it waits for
 * memory. */
static bool loop_assign(sched *s, job *j, int slot, uint32_t cached, int64_t now)
{
    unsigned bi = policy_slot_backend(s->pol, slot);
    j->slot = slot;
    j->be = &s->backends[bi];
    j->state = JOB_PENDING;
    sched_queued_add(s, j, -1);
    s->inflight++;
    s->be[bi].inflight++;
    s->be[bi].routed++;
    if (s->n_backends > 1)
        log_debug("request %" PRIu64 "/%" PRIu64 " -> backend %s slot %d, ~%u of %u "
                  "prompt tokens cached", j->sink.owner, j->sink.id, j->be->url,
                  slot - (int)s->be[bi].slot_base, cached, j->chain.tokens);
    else
        log_debug("request %" PRIu64 "/%" PRIu64 " -> slot %d, ~%u of %u prompt tokens "
                  "cached", j->sink.owner, j->sink.id, slot, cached, j->chain.tokens);
    return loop_reserve(s, j, now);
}

/* Whether running j may be stopped for a request of priority prio: strictly
 * lower priority, stopped fewer than SCHED_MAX_PREEMPTS times, and nothing
 * of its answer handed to its agent (a streamed piece cannot be taken
 * back; pieces received but not yet handed over count as handed). */
static bool loop_preemptible(const job *j, uint8_t prio)
{
    return j->state == JOB_INFLIGHT && j->xfer != NULL && j->slot >= 0 &&
           j->pi.priority < prio && j->preempts < SCHED_MAX_PREEMPTS && !j->streamed &&
           j->xfer->resp.n_deltas == 0;
}

/* Stops running v for the higher-priority request t: v's transfer is
 * closed (llama.cpp and LM Studio stop generating when the client goes
 * away, as for a cancel), its slot and memory are given back, and it is
 * queued again at its old place, where it waits like any queued request.
 * Returns false, with v untouched, when it cannot be queued again (out of
 * memory). */
static bool loop_preempt_job(sched *s, job *v, const job *t)
{
    int64_t deadline = v->pi.deadline_us;
    v->pi.deadline_us = 0; /* see below; the queue counts it at the push */
    if (policy_requeue(s->pol, &v->pi) != LMSCHED_OK) {
        v->pi.deadline_us = deadline;
        return false;
    }
    unsigned bi = sched_be_index(s, v->be);
    log_debug("request %" PRIu64 "/%" PRIu64 " (priority %u) stopped after %" PRId64 " ms on "
              "slot %d for request %" PRIu64 "/%" PRIu64 " (priority %u); queued again",
              v->sink.owner, v->sink.id, v->pi.priority,
              (clock_now_us() - v->run_us) / 1000, v->slot, t->sink.owner, t->sink.id,
              t->pi.priority);
    http_xfer_free(s->http, v->xfer);
    v->xfer = NULL;
    job_release_slot(s, v, NULL); /* the slot's cache is unknown now */
    s->inflight--;
    s->be[bi].inflight--;
    sched_queued_add(s, v, 1);
    v->state = JOB_QUEUED;
    v->preempts++;
    /* The stopped attempt was the scheduler's doing: not a retry, and not
     * counted against --max-retries. Its wait goes on: queue_ms counts up
     * to the start of the run that answers. */
    v->attempts--;
    v->dispatch_us = 0;
    /* Its deadline (pi.deadline_us, cleared above) was to start by then,
     * and it did: expiring it in the queue now would answer it with an
     * error it did not cause. */
    s->st.preempted++;
    return true;
}

/* The running request to stop for one of priority prio that needs need
 * bytes of KV memory on a backend in where: of strictly lower priority
 * (loop_preemptible), and only one whose stop leaves memory enough for it;
 * of the lowest priority, the one stopped least often, and of those the
 * one whose stop throws away the least work (policy_stop_cost_us: its run
 * so far, and a prefix others queue for that only its slot holds). NULL
 * if none. */
static job *loop_victim(sched *s, uint8_t prio, uint32_t where, uint64_t need, int64_t now)
{
    job *v = NULL;
    double v_cost = 0;
    for (job *j = s->jobs; j != NULL; j = j->next) {
        if (!loop_preemptible(j, prio))
            continue;
        unsigned bi = sched_be_index(s, j->be);
        const sched_be *e = &s->be[bi];
        if (!((where >> bi) & 1u) ||
            e->reserved_bytes - j->reserve + need > e->bout.budget_bytes)
            continue;
        double cost = policy_stop_cost_us(s->pol, j->slot, now);
        if (v == NULL || j->pi.priority < v->pi.priority ||
            (j->pi.priority == v->pi.priority &&
             (j->preempts < v->preempts || (j->preempts == v->preempts && cost < v_cost)))) {
            v = j;
            v_cost = cost;
        }
    }
    return v;
}

/* --preempt, for memory: backend bi waits for KV memory for the request
 * the policy chose for it (sched_be.pending); a running request there of
 * lower priority is stopped for it when that makes room, and it starts.
 * Returns true when it still waits. */
static bool loop_preempt_memory(sched *s, unsigned bi, int64_t now)
{
    job *p = s->be[bi].pending;
    job *v = loop_victim(s, p->pi.priority, 1u << bi, p->reserve, now);
    if (v == NULL || !loop_preempt_job(s, v, p))
        return true;
    return loop_reserve(s, p, now);
}

/* --preempt, for a slot: while the request policy_top names (the oldest of
 * the highest queued priority that would start on a freed slot) cannot
 * start because every slot (or the concurrency) of its backends is taken,
 * a running request of lower priority on one of them is stopped for it
 * (loop_victim, loop_preempt_job), and the freed slot goes to that request,
 * whatever the rule would say of it (policy_take). Nothing happens while a
 * backend it may use has an idle slot: then the policy chose to wait (a
 * gather window, a slot kept for a conversation). A backend waiting for
 * memory for a request it chose is left to loop_preempt_memory. */
static void loop_preempt(sched *s, uint32_t up, uint32_t waiting, int64_t now)
{
    for (unsigned round = 0; round < s->max_concurrent; round++) {
        pol_item *it = policy_top(s->pol);
        if (it == NULL)
            return;
        job *t = (job *)it;
        uint32_t where = (it->backends != 0 ? it->backends : ~0u) & up & ~waiting;
        if (where == 0 ||
            (s->inflight < s->max_concurrent && policy_idle_slot(s->pol, where)))
            return;
        job *v = loop_victim(s, it->priority, where, t->reserve, now);
        if (v == NULL)
            return;
        int slot = v->slot;
        if (!loop_preempt_job(s, v, t))
            return;
        uint32_t cached = 0;
        slot = policy_take(s->pol, it, slot, now, &cached);
        if (slot < 0)
            return; /* cannot happen: the slot is idle and may run it */
        loop_assign(s, t, slot, cached, now);
    }
}

/* Starts what may start: first each backend's request waiting for memory,
 * then the policy's choices. A backend whose request still waits takes
 * nothing else (the waiting one keeps its place), but the others do: the
 * policy sees it as down until this dispatch ends. Then, if a request
 * still cannot start, the preemption of a lower-priority one. */
static void loop_dispatch(sched *s, uint32_t up, int64_t now)
{
    if (s->draining)
        return;
    uint32_t waiting = 0;
    for (unsigned i = 0; i < s->n_backends; i++)
        if (s->be[i].pending != NULL && loop_reserve(s, s->be[i].pending, now) &&
            (!s->cfg.preempt || loop_preempt_memory(s, i, now)))
            waiting |= 1u << i;
    while (s->inflight < s->max_concurrent && (up & ~waiting) != 0) {
        policy_set_backends_up(s->pol, up & ~waiting);
        int slot = -1;
        uint32_t cached = 0;
        pol_item *it = policy_next(s->pol, now, &slot, &cached);
        if (it == NULL)
            break;
        job *j = (job *)it;
        unsigned bi = policy_slot_backend(s->pol, slot);
        if (loop_assign(s, j, slot, cached, now) &&
            (!s->cfg.preempt || s->be[bi].pending != j || loop_preempt_memory(s, bi, now)))
            waiting |= 1u << bi;
    }
    if (s->cfg.preempt && (up & ~waiting) != 0) {
        policy_set_backends_up(s->pol, up & ~waiting);
        loop_preempt(s, up, waiting, now);
    }
    policy_set_backends_up(s->pol, up);
}

static int64_t retry_backoff_us(unsigned attempt)
{
    /* 200 ms, 400 ms, 800 ms ... capped at 5 s, with up to 25% jitter so a
     * burst of failures does not retry in lockstep. */
    int64_t base = 200000LL << (attempt > 5 ? 5 : attempt - 1);
    if (base > 5000000)
        base = 5000000;
    return base + (int64_t)(rand() % (int)(base / 4 + 1));
}

/* The error of a request that gave up waiting for an unreachable backend. */
static void loop_down_msg(const sched *s, const backend *b, int64_t waited_us, char *buf,
                          size_t len)
{
    snprintf(buf, len, "cannot reach the LLM server at %s: it was unreachable for the %" PRId64
             " ms this request waited (--backend-wait %d ms); last error: %.600s",
             b->url, waited_us / 1000, s->cfg.backend_wait_ms,
             b->last_error[0] ? b->last_error : "none");
}

/* ---- answers ------------------------------------------------------------- */

/* Hands the pieces a transfer recorded since last time to the job's sink. */
static void loop_stream(sched *s, job *j, http_xfer *x)
{
    (void)s;
    if (!x->resp.record_deltas || x->resp.n_deltas == 0)
        return;
    oa_delta *d = NULL;
    size_t n = 0;
    oa_resp_take_deltas(&x->resp, &d, &n);
    chat_delta view[64];
    for (size_t i = 0; i < n; i += sizeof(view) / sizeof(view[0])) {
        size_t k = 0;
        for (; k < sizeof(view) / sizeof(view[0]) && i + k < n; k++) {
            const oa_delta *o = &d[i + k];
            view[k] = (chat_delta){
                .kind = o->kind == OA_DELTA_CONTENT     ? CHAT_DELTA_CONTENT
                        : o->kind == OA_DELTA_REASONING ? CHAT_DELTA_REASONING
                                                        : CHAT_DELTA_TOOL_CALL,
                .text = o->text.len > 0 ? o->text.data : NULL,
                .len = o->text.len,
                .index = o->index,
                .id = o->id,
                .name = o->name,
            };
        }
        j->sink.ops->chunk(j->sink.arg, j, view, k);
        j->streamed = true;
    }
    oa_deltas_free(d, n);
}

/* Every running request's new pieces (the transfers still going). */
static void loop_streams(sched *s)
{
    for (job *j = s->jobs; j != NULL; j = j->next)
        if (j->state == JOB_INFLIGHT && j->xfer != NULL)
            loop_stream(s, j, j->xfer);
}

/* The backends that may run j (serve its model), as a mask: with a
 * --routing baseline, not only the one it is bound to. */
static uint32_t loop_eligible(const sched *s, const job *j)
{
    uint32_t all = s->n_backends >= 32 ? ~0u : (1u << s->n_backends) - 1;
    return j->elig != 0 ? j->elig & all : all;
}

/* Failover: j, whose attempt got nothing back, goes back into the queue,
 * where the policy places it again, over every backend that serves it and
 * is up (the one it failed on too, if that is still up). Only when another
 * such backend is up: returns false, with j untouched, when there is none
 * (one backend: it waits for its own, as ever) or the queue is full. */
static bool loop_requeue(sched *s, job *j, const char *why)
{
    unsigned from = sched_be_index(s, j->be);
    if (s->draining || (loop_eligible(s, j) & sched_up_mask(s) & ~(1u << from)) == 0)
        return false;
    if (j->bound >= 0) {
        /* a --routing baseline: bound to another backend, as a new one */
        uint32_t was = j->pi.backends;
        int was_bound = j->bound;
        j->bound = -1;
        admit_bind(s, j, 1u << from);
        if (policy_push(s->pol, &j->pi) != LMSCHED_OK) {
            j->pi.backends = was;
            j->bound = was_bound;
            return false;
        }
    } else if (policy_push(s->pol, &j->pi) != LMSCHED_OK) {
        return false;
    }
    job_release_slot(s, j, NULL);
    if (s->be[from].pending == j)
        s->be[from].pending = NULL;
    s->inflight--;
    s->be[from].inflight--;
    sched_queued_add(s, j, 1);
    /* A retry's wait was counted when it began. */
    if (j->state != JOB_RETRY_WAIT)
        s->st.retried++;
    j->state = JOB_QUEUED;
    log_info("request %" PRIu64 "/%" PRIu64 " got nothing back from the backend %s (%s); "
             "queued again, for any backend serving it", j->sink.owner, j->sink.id, j->be->url,
             why);
    return true;
}

/* Several backends: a burst of server errors (--backend-errors in a row
 * within --backend-errors-ms; an answer resets the count) takes b out until
 * its probe succeeds, so its queued requests and the retries of the failed
 * ones go to the others. An error that is the request's own (4xx, a
 * timeout) does not count, nor does refusing the connection (that marks it
 * down by itself). */
static void loop_server_errors(sched *s, backend *b, const http_xfer *x, int64_t now)
{
    sched_be *e = &s->be[sched_be_index(s, b)];
    if (x->err.code == LMSCHED_OK) {
        e->err_run = 0;
        return;
    }
    bool server = x->http_status >= 500 || x->err.code == LMSCHED_EBACKEND_CRASH ||
                  (x->err.code == LMSCHED_EBACKEND_STREAM && x->err.transient);
    if (!server || s->n_backends < 2 || s->cfg.backend_errors == 0 || b->failing)
        return;
    if (e->err_run == 0 || now - e->err_first_us > (int64_t)s->cfg.backend_errors_ms * 1000) {
        e->err_run = 0;
        e->err_first_us = now;
    }
    if (++e->err_run < s->cfg.backend_errors)
        return;
    char why[sizeof(x->err.message) + 128];
    snprintf(why, sizeof(why), "%u server errors in a row within %" PRId64 " ms (last: %s); "
             "out until a probe succeeds", e->err_run, (now - e->err_first_us) / 1000,
             x->err.message);
    e->err_run = 0;
    e->error_outages++;
    backend_set_failing(b, why, now);
}

void loop_job_done(sched *s, job *j, http_xfer *x)
{
    int64_t now = clock_now_us();
    backend *b = j->be;
    j->xfer = NULL;
    if (x->err.code == LMSCHED_EBACKEND_DOWN)
        backend_set_down(b, x->err.message, now);
    else if (x->http_status > 0 && !b->failing)
        backend_set_up(b);
    loop_server_errors(s, b, x, now);
    if (x->http_status > 0)
        j->down_wait_us = 0; /* it reached the backend */

    if (x->err.code != LMSCHED_OK) {
        bool refused = x->err.code == LMSCHED_EBACKEND_DOWN && !x->resp.got_token;
        if (refused && loop_requeue(s, j, x->err.message)) {
            http_xfer_free(s->http, x);
            return;
        }
        if (refused && !s->draining) {
            /* Could not connect: the request never reached the backend, so
             * this attempt does not count against --max-retries. It waits
             * for the backend to come back (loop_retries), at most
             * --backend-wait. */
            j->refused++;
            if (j->down_wait_us == 0)
                j->down_wait_us = now;
            if (now - j->down_wait_us < (int64_t)s->cfg.backend_wait_ms * 1000) {
                s->st.retried++;
                j->state = JOB_RETRY_WAIT;
                j->retry_at_us = now + SCHED_DOWN_RECHECK_US;
                log_info("request %" PRIu64 "/%" PRIu64 " could not reach the backend (%s); "
                         "waiting for it", j->sink.owner, j->sink.id, x->err.message);
                http_xfer_free(s->http, x);
                return;
            }
        }
        bool can_retry = x->err.transient && !refused && !x->resp.got_token && !s->draining &&
                         j->attempts - j->refused <= s->cfg.max_retries;
        if (can_retry) {
            s->st.retried++;
            j->state = JOB_RETRY_WAIT;
            j->retry_at_us = now + retry_backoff_us(j->attempts);
            log_info("request %" PRIu64 "/%" PRIu64 " attempt %u failed (%s); retrying in "
                     "%" PRId64 " ms", j->sink.owner, j->sink.id, j->attempts, x->err.message,
                     (j->retry_at_us - now) / 1000);
            http_xfer_free(s->http, x);
            return;
        }
        char msg[sizeof(x->err.message) + sizeof(b->url) + 96];
        if (refused && j->down_wait_us)
            snprintf(msg, sizeof(msg), "%s (backend %s; waited %" PRId64 " ms for it)",
                     x->err.message, b->url, (now - j->down_wait_us) / 1000);
        else if (j->attempts > 1)
            snprintf(msg, sizeof(msg), "%s (backend %s, after %u attempts)", x->err.message,
                     b->url, j->attempts);
        else
            snprintf(msg, sizeof(msg), "%s (backend %s)", x->err.message, b->url);
        int code = x->err.code;
        http_xfer_free(s->http, x);
        job_fail(s, j, code, msg, NULL);
        return;
    }

    /* The last pieces go before the answer. */
    loop_stream(s, j, x);
    const oa_resp *resp = &x->resp;
    chat_tool_call calls[16], *tc = calls;
    if (resp->n_tool_calls > sizeof(calls) / sizeof(calls[0]))
        tc = calloc(resp->n_tool_calls, sizeof(*tc));
    size_t n_calls = tc != NULL ? resp->n_tool_calls : 0;
    for (size_t i = 0; i < n_calls; i++) {
        const oa_tool_call *t = &resp->tool_calls[i];
        tc[i] = (chat_tool_call){
            .id = t->id != NULL ? t->id : "",
            .type = t->type != NULL ? t->type : "function",
            .name = t->name != NULL ? t->name : "",
            .arguments = strbuf_str(&t->arguments),
        };
    }
    char *logprobs = oa_resp_logprobs(resp);
    chat_result r = {
        .content = resp->content,
        .content_len = resp->content_len,
        .finish_reason = resp->finish_reason != NULL ? resp->finish_reason : "stop",
        .model = resp->model,
        .usage = {resp->prompt_tokens, resp->completion_tokens, resp->cached_tokens},
        .timings =
            {
                .queue_ms = (double)(j->dispatch_us - j->recv_us) / 1000.0,
                .ttft_ms = x->first_token_us
                               ? (double)(x->first_token_us - j->dispatch_us) / 1000.0
                               : -1.0,
                .total_ms = (double)(now - j->recv_us) / 1000.0,
            },
        .retries = j->attempts - 1,
        .reasoning = resp->reasoning.len > 0 ? resp->reasoning.data : NULL,
        .tool_calls = tc,
        .n_tool_calls = n_calls,
        .logprobs_json = logprobs,
    };
    if (resp->prompt_tokens > 0)
        s->st.tokens_prompt += (uint64_t)resp->prompt_tokens;
    if (resp->completion_tokens > 0)
        s->st.tokens_completion += (uint64_t)resp->completion_tokens;
    if (resp->cached_tokens > 0)
        s->st.tokens_cached += (uint64_t)resp->cached_tokens;
    sched_be *e = &s->be[sched_be_index(s, b)];
    e->completed++;
    if (resp->prompt_tokens > 0)
        e->prompt_tokens += (uint64_t)resp->prompt_tokens;
    if (resp->cached_tokens > 0)
        e->cached_tokens += (uint64_t)resp->cached_tokens;
    if (r.timings.ttft_ms >= 0)
        lat_add(&s->st.ttft, r.timings.ttft_ms);
    lat_add(&s->st.total, r.timings.total_ms);

    if (resp->prompt_tokens > 0)
        log_debug("request %" PRIu64 "/%" PRIu64 ": %" PRId64 " prompt tokens by the backend, "
                  "%u estimated, %u reserved", j->sink.owner, j->sink.id, resp->prompt_tokens,
                  j->chain.tokens, j->reserve_tokens);
    /* An exact count taught it already, unless the chat counted otherwise
     * (the chat's usage is the truth). */
    if (j->exact_tokens == 0 || resp->prompt_tokens != (int64_t)j->exact_tokens)
        capacity_learn_tokens(s, j->chain.tokens, resp->prompt_tokens);
    capacity_note_answer(s, j, resp->prompt_tokens);
    pol_done done = {.ok = true,
                     .prompt_tokens = resp->prompt_tokens,
                     .cached_tokens = resp->cached_tokens,
                     .end_us = now,
                     .first_token_us = x->first_token_us,
                     .completion_tokens = resp->completion_tokens};
    job_release_slot(s, j, &done);
    job_complete(s, j, &r);
    if (tc != calls)
        free(tc);
    free(logprobs);
    http_xfer_free(s->http, x);
}

/* Finished transfers: a job's answer, or a backend's probe. */
static void loop_transfers(sched *s)
{
    http_xfer *x;
    int64_t now = 0;
    while ((x = http_done(s->http)) != NULL) {
        if (probe_restore_owns(s, x)) {
            probe_restore_done(s, x);
            continue;
        }
        if (x->is_chat && x->owner != NULL) {
            loop_job_done(s, (job *)x->owner, x);
            continue;
        }
        if (x->is_json && x->owner != NULL) {
            capacity_count_done(s, (job *)x->owner, x);
            continue;
        }
        backend *b = x->owner;
        if (now == 0)
            now = clock_now_us();
        if (b != NULL && backend_is_probe(b, x)) {
            unsigned changed = backend_probe_done(b, x, now);
            if (changed & BACKEND_INFO)
                capacity_update(s);
            /* Found, or back after an outage (maybe restarted with other
             * flags): ask it again whether it restores evicted prompts. */
            if ((changed & BACKEND_HEALTH) && b->healthy)
                probe_restore_want(s, sched_be_index(s, b));
        } else {
            http_xfer_free(s->http, x);
        }
    }
    loop_streams(s);
}

/* ---- timers ---------------------------------------------------------------- */

static void loop_retries(sched *s, int64_t now)
{
    job *next;
    for (job *j = s->jobs; j != NULL; j = next) {
        next = j->next;
        if (j->state != JOB_RETRY_WAIT || j->retry_at_us > now)
            continue;
        if (s->draining) {
            job_fail(s, j, LMSCHED_ESHUTDOWN,
                     "lmsched is shutting down; request canceled while waiting to retry", NULL);
            continue;
        }
        /* Several backends: the retry goes through the policy again, so it
         * may run on another backend (the only way while its own is down). */
        bool gone = s->be[sched_be_index(s, j->be)].removed;
        if (loop_requeue(s, j, gone ? "it was removed" : j->be->healthy ? "retrying"
                                                                         : "it is down"))
            continue;
        if (!j->be->healthy || gone) {
            /* No use trying an unreachable backend: the probe says when it
             * is back. Meanwhile the wait is bounded like a queued one's. */
            if (j->down_wait_us == 0)
                j->down_wait_us = now;
            if (now - j->down_wait_us >= (int64_t)s->cfg.backend_wait_ms * 1000) {
                char why[2048];
                loop_down_msg(s, j->be, now - j->down_wait_us, why, sizeof(why));
                job_fail(s, j, LMSCHED_EBACKEND_DOWN, why, NULL);
                continue;
            }
            j->retry_at_us = now + SCHED_DOWN_RECHECK_US;
            continue;
        }
        loop_job_start(s, j);
    }
}

static void loop_expire(sched *s, int64_t now)
{
    pol_item *it;
    while ((it = policy_pop_expired(s->pol, now)) != NULL) {
        job *j = (job *)it;
        /* Out of the queue already: detach must not remove it again. */
        j->state = 0;
        sched_queued_add(s, j, -1);
        char why[160];
        snprintf(why, sizeof(why), "deadline of %u ms passed while queued (%u others queued, "
                 "%u in flight)", j->req->deadline_ms, s->queued, s->inflight);
        job_fail(s, j, LMSCHED_EDEADLINE, why, NULL);
    }
}

/* Dispatch is paused for a request while every backend that serves it is
 * unreachable. A queued request with a deadline waits for one (loop_expire
 * answers DEADLINE once it passes); one without waits at most
 * --backend-wait, counted from when it arrived or the last of its backends
 * went away, whichever is later. Returns when the next such wait runs out,
 * INT64_MAX if none. */
static int64_t loop_expire_down(sched *s, uint32_t up, int64_t now)
{
    int64_t wait_us = (int64_t)s->cfg.backend_wait_ms * 1000, first = INT64_MAX;
    job *next;
    for (job *j = s->jobs; j != NULL; j = next) {
        next = j->next;
        if (j->state != JOB_QUEUED && j->state != JOB_PENDING)
            continue;
        if (j->state == JOB_QUEUED && j->req->deadline_ms)
            continue;
        uint32_t elig = loop_eligible(s, j);
        if (j->state == JOB_PENDING)
            elig = 1u << sched_be_index(s, j->be);
        if (elig & up)
            continue;
        /* The backend named in the message: the one that went away last. */
        const backend *b = NULL;
        for (unsigned i = 0; i < s->n_backends; i++)
            if (((elig >> i) & 1u) &&
                (b == NULL || s->backends[i].down_since_us > b->down_since_us))
                b = &s->backends[i];
        if (b == NULL)
            continue;
        int64_t since = j->recv_us > b->down_since_us ? j->recv_us : b->down_since_us;
        if (now - since < wait_us) {
            if (since + wait_us < first)
                first = since + wait_us;
            continue;
        }
        char why[2048];
        loop_down_msg(s, b, now - since, why, sizeof(why));
        job_fail(s, j, LMSCHED_EBACKEND_DOWN, why, NULL);
    }
    return first;
}

/* ---- shutdown ------------------------------------------------------------ */

static unsigned loop_fronts_sending(const sched *s)
{
    unsigned n = 0;
    for (unsigned i = 0; i < s->n_fronts; i++)
        n += s->fronts[i].ops->sending(s->fronts[i].arg);
    return n;
}

static void loop_drain_step(sched *s, int64_t now)
{
    job *next;
    for (job *j = s->jobs; j != NULL; j = next) {
        next = j->next;
        if (j->state == JOB_QUEUED || j->state == JOB_PENDING)
            job_fail(s, j, LMSCHED_ESHUTDOWN, "lmsched is shutting down; the request was still "
                                              "queued and did not run", NULL);
        else if (now >= s->drain_deadline_us)
            job_fail(s, j, LMSCHED_ESHUTDOWN,
                     s->drain_forced ? "lmsched is shutting down; the request was canceled "
                                       "by a second stop signal"
                                     : "lmsched is shutting down; the request was canceled "
                                       "after the drain timeout",
                     NULL);
    }
    if (s->jobs == NULL && loop_fronts_sending(s) == 0)
        s->stopped = true;
}

/* ---- the turn -------------------------------------------------------------- */

/* The fronts' own timers; returns the earliest next one. */
static int64_t loop_fronts_tick(sched *s, int64_t now)
{
    int64_t t = INT64_MAX;
    for (unsigned i = 0; i < s->n_fronts; i++) {
        if (s->fronts[i].ops->tick == NULL)
            continue;
        int64_t w = s->fronts[i].ops->tick(s->fronts[i].arg, now);
        if (w < t)
            t = w;
    }
    return t;
}

static int64_t loop_next_wake(sched *s, int64_t now)
{
    int64_t t = s->fronts_wake;
    for (unsigned i = 0; i < s->n_backends; i++) {
        if (s->be[i].removed)
            continue;
        int64_t w = backend_next_wake(&s->backends[i], now);
        if (w < t)
            t = w;
    }
    int64_t d = policy_next_deadline(s->pol);
    if (d < t)
        t = d;
    d = probe_restore_wake(s);
    if (d < t)
        t = d;
    /* Only a future one: the policy computes it in policy_next, which is
     * not called while every slot is busy, so a past value is stale (and
     * waking for it would spin the loop, taking a core from the server). */
    d = policy_next_wake(s->pol);
    if (d > now && d < t)
        t = d;
    for (job *j = s->jobs; j != NULL; j = j->next)
        if (j->state == JOB_RETRY_WAIT && j->retry_at_us < t)
            t = j->retry_at_us;
    if (s->draining) {
        if (s->drain_deadline_us < t)
            t = s->drain_deadline_us;
        if (now + 100000 < t)
            t = now + 100000; /* check pending sends often while draining */
    }
    return t;
}

int64_t sched_turn(sched *s)
{
    loop_inbox(s);
    loop_stops(s);
    loop_reloads(s);
    http_perform(s->http);
    loop_transfers(s);
    int64_t now = clock_now_us();
    loop_retries(s, now);
    loop_expire(s, now);
    int64_t down_wake = INT64_MAX;
    uint32_t up = sched_up_mask(s), all = 0;
    for (unsigned i = 0; i < s->n_backends; i++)
        if (!s->be[i].removed)
            all |= 1u << i;
    policy_set_backends_up(s->pol, up);
    if (up != s->up_seen) {
        if (s->routing != SCHED_ROUTE_CACHE)
            admit_rebind_down(s, up);
        s->up_seen = up;
    }
    /* Before dispatch, so the slot it takes is not given to a request. */
    probe_restore_tick(s, now);
    if (up != 0)
        loop_dispatch(s, up, now);
    capacity_count_more(s);
    if (up != all)
        down_wake = loop_expire_down(s, up, now);
    if (!s->draining)
        for (unsigned i = 0; i < s->n_backends; i++)
            if (!s->be[i].removed)
                backend_probe_tick(&s->backends[i], now);
    s->fronts_wake = loop_fronts_tick(s, now);
    if (s->draining)
        loop_drain_step(s, now);
    if (s->stopped)
        return now;
    http_perform(s->http); /* start what was just added */
    loop_transfers(s);
    int64_t wake = loop_next_wake(s, now);
    if (down_wake < wake)
        wake = down_wake;
    if (up == 0) {
        if (wake < now + SCHED_DOWN_TICK_US)
            wake = now + SCHED_DOWN_TICK_US; /* dispatch paused: the policy's wake may be stale */
    }
    return wake;
}

void sched_run(sched *s)
{
    while (!s->stopped) {
        int64_t wake = sched_turn(s);
        if (s->stopped)
            break;
        int64_t ms = (wake - clock_now_us() + 999) / 1000;
        if (ms > 1000)
            ms = 1000;
        http_poll(s->http, (int)(ms < 0 ? 0 : ms));
    }
    log_info("stopped: %" PRIu64 " completed, %" PRIu64 " failed, %" PRIu64 " busy",
             s->st.completed, s->st.failed, s->st.rejected_busy);
}

/* ---- life ------------------------------------------------------------------- */

int sched_alloc(sched **sp, const sched_config *cfg)
{
    http_opts ho = {
        .connect_timeout_ms = cfg->connect_timeout_ms,
        .request_timeout_ms = cfg->request_timeout_ms,
        .max_body = (size_t)cfg->max_response_bytes,
        .max_response = cfg->max_response_bytes,
        .max_content = LMSCHED_MAX_TEXT_BYTES,
    };
    http_client *http = NULL;
    *sp = NULL;
    if (http_curl_alloc(&http, &ho) != LMSCHED_OK) {
        log_error("cannot set up the HTTP client");
        return 1;
    }
    return sched_alloc_http(sp, cfg, http);
}

int sched_alloc_http(sched **sp, const sched_config *cfg, http_client *http)
{
    sched *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        log_error("out of memory");
        http_free(http);
        return 1;
    }
    s->http = http;
    s->cfg = *cfg;
    pthread_mutex_init(&s->inbox_mtx, NULL);
    s->start_us = clock_now_us();
    s->fronts_wake = INT64_MAX;
    const char *tok = getenv("LM_API_TOKEN");
    if (tok != NULL && *tok != '\0')
        s->token = strdup(tok);
    *sp = s;

    unsigned n = cfg->n_backends > 1 ? cfg->n_backends : 1;
    if (n > SCHED_MAX_BACKENDS)
        n = SCHED_MAX_BACKENDS;
    int rc;
    /* --backends-file: its lines' own settings */
    const config_backend_list *fl = cfg->backends_file[0] ? &cfg->file_backends : NULL;
    for (unsigned i = 0; i < n; i++) {
        backend_config bc = {
            .url = i == 0 ? cfg->backend : cfg->backend_more[i - 1],
            .kind = fl != NULL && i < fl->n && fl->v[i].kind[0] ? fl->v[i].kind
                                                                 : cfg->backend_kind,
            .token = s->token,
            .probe_interval_ms = cfg->probe_interval_ms,
        };
        rc = backend_init(&s->backends[i], s->http, &bc);
        if (rc != LMSCHED_OK) {
            log_error("backend %s: %s", bc.url,
                      rc == LMSCHED_EINVAL ? "unknown --backend-kind" : lmsched_strerror(rc));
            return 1;
        }
        s->n_backends = i + 1;
        s->be[i].rp_slot = -1;
        s->be[i].restore_share = -1;
        if (fl != NULL && i < fl->n)
            s->be[i].total_ram = fl->v[i].total_ram;
    }
    s->up_seen = (1u << s->n_backends) - 1;
    s->routing = strcmp(cfg->routing, "round-robin") == 0    ? SCHED_ROUTE_ROUND_ROBIN
                 : strcmp(cfg->routing, "least-loaded") == 0 ? SCHED_ROUTE_LEAST_LOADED
                                                             : SCHED_ROUTE_CACHE;
    rc = policy_alloc(&s->pol, cfg->policy, cfg->max_queue);
    if (rc != LMSCHED_OK) {
        log_error("unknown queue policy '%s'", cfg->policy);
        return 1;
    }
    if (capacity_init(s) != 0)
        return 1;
    policy_tuning tun = {
        .starve_us = (int64_t)cfg->starve_ms * 1000,
        .max_overtakes = cfg->max_overtakes,
        .gather_us = (int64_t)cfg->gather_ms * 1000,
    };
    policy_set_tuning(s->pol, &tun);
    capacity_update(s);
    return 0;
}

/* Whether a backend's first probe is still running. */
static bool loop_probing(const sched *s)
{
    for (unsigned i = 0; i < s->n_backends; i++)
        if (s->backends[i].probe != NULL)
            return true;
    return false;
}

int sched_start(sched *s, int wait_ms)
{
    int64_t now = clock_now_us();
    for (unsigned i = 0; i < s->n_backends; i++)
        backend_probe_start(&s->backends[i], now);
    int64_t until = now + (int64_t)wait_ms * 1000;
    while (loop_probing(s) && clock_now_us() < until) {
        http_poll(s->http, 50);
        loop_transfers(s);
    }
    for (unsigned i = 0; i < s->n_backends; i++) {
        backend *b = &s->backends[i];
        if (b->probe != NULL) {
            http_xfer_free(s->http, b->probe);
            b->probe = NULL;
            backend_set_down(b, "backend did not answer the first probe in time",
                             clock_now_us());
            b->next_probe_us = clock_now_us() + BACKEND_PROBE_RETRY_US;
        }
    }
    capacity_update(s);
    /* The restore probes of the backends found (probe.c), before the
     * daemon listens: the first request finds the answer. */
    for (unsigned i = 0; i < s->n_backends; i++)
        if (s->backends[i].healthy)
            probe_restore_want(s, i);
    probe_restore_tick(s, clock_now_us());
    /* Bounded by the probe's own timeout, and by the polls too (a poll
     * that returns at once, as the unit tests' does, must not spin). */
    for (int n = 0; probe_restore_running(s) && n < 400; n++) {
        http_poll(s->http, 50);
        loop_transfers(s);
        probe_restore_tick(s, clock_now_us());
    }
    char b1[32], b2[32], b3[32];
    for (unsigned i = 0; i < s->n_backends; i++) {
        const backend *b = &s->backends[i];
        char ctx[24] = "unknown", slots[24] = "unknown";
        if (b->context_length > 0)
            snprintf(ctx, sizeof(ctx), "%" PRId64, b->context_length);
        if (b->slots > 0)
            snprintf(slots, sizeof(slots), "%" PRId64, b->slots);
        if (b->healthy)
            log_info("backend %s: %s, healthy, model %s, context %s, slots %s", b->url,
                     backend_kind_name(b), b->model[0] ? b->model : "unknown", ctx, slots);
        else
            log_warn("backend %s: not usable yet (%s); requests wait for it up to "
                     "--backend-wait", b->url, b->last_error);
    }
    if (s->n_backends == 1)
        log_info("memory: RAM %s, model %s, KV per request %s; %s",
                 budget_fmt_size(s->bin.total_ram, b1, sizeof(b1)),
                 s->bin.model_size ? budget_fmt_size(s->bin.model_size, b2, sizeof(b2))
                                   : "size unknown",
                 budget_fmt_size(s->bin.kv_per_request, b3, sizeof(b3)), s->bout.explain);
    for (unsigned i = 0; s->n_backends > 1 && i < s->n_backends; i++) {
        const budget_in *in = &s->be[i].bin;
        log_info("memory of %s: RAM %s, model %s, KV per request %s; %s", s->backends[i].url,
                 budget_fmt_size(in->total_ram, b1, sizeof(b1)),
                 in->model_size ? budget_fmt_size(in->model_size, b2, sizeof(b2))
                                : "size unknown",
                 budget_fmt_size(in->kv_per_request, b3, sizeof(b3)), s->be[i].bout.explain);
    }
    if (s->n_backends > 1)
        log_info("memory: max %u concurrent over %u backends", s->max_concurrent,
                 s->n_backends);
    if (s->bout.model_too_big) {
        if (!s->cfg.force) {
            fprintf(stderr, "lmsched serve: refusing to start: %s\n", s->bout.explain);
            return 4;
        }
        log_warn("--force: starting although %s", s->bout.explain);
    }
    s->started = true;
    for (unsigned i = 0; i < s->n_backends; i++)
        s->backends[i].announce = true;
    return 0;
}

int sched_add_front(sched *s, const front_ops *ops, void *arg)
{
    if (s->n_fronts >= SCHED_MAX_FRONTS)
        return LMSCHED_EINVAL;
    s->fronts[s->n_fronts].ops = ops;
    s->fronts[s->n_fronts].arg = arg;
    s->n_fronts++;
    return LMSCHED_OK;
}

void sched_describe(const sched *s, char *buf, size_t len)
{
    snprintf(buf, len, "policy %s, max %u concurrent, queue %u", policy_name(s->pol),
             s->max_concurrent, s->cfg.max_queue);
}

void sched_free(sched *s)
{
    if (s == NULL)
        return;
    /* The fronts are closed: no more events. The events still in the
     * inbox are not run, nor read: each belonged to a front, which freed
     * it. Jobs still here (an aborted start) are dropped unanswered: their
     * fronts no longer exist. */
    s->inbox_head = s->inbox_tail = NULL;
    while (s->jobs != NULL) {
        job *j = s->jobs;
        s->jobs = j->next;
        if (j->xfer != NULL)
            http_xfer_free(s->http, j->xfer);
        if (j->count != NULL)
            http_xfer_free(s->http, j->count);
        prefix_chain_fini(&j->chain);
        chat_req_free(j->req);
        free(j);
    }
    probe_restore_fini(s);
    for (unsigned i = 0; i < s->n_backends; i++)
        backend_fini(&s->backends[i]);
    http_free(s->http);
    policy_free(s->pol);
    if (s->token != NULL) {
        explicit_bzero(s->token, strlen(s->token));
        free(s->token);
    }
    pthread_mutex_destroy(&s->inbox_mtx);
    free(s);
}
