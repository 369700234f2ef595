/*
 * status - the snapshot of the scheduler's state and the status document of
 * `lmsched status --json` built from it. docs/status.md is its contract:
 * keys are only ever added. jansson builds it; the token is never part of
 * it.
 */
#include "scheduler/core/status.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "lmsched/wire.h"
#include "scheduler/core/core.h"
#include "scheduler/util/clock.h"

/* Prometheus-style bounds: a cached prefill in milliseconds up to a long
 * queue in minutes. */
const double status_hist_bounds_ms[STATUS_HIST_BUCKETS] = {
    1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000};
_Static_assert(LAT_BUCKETS == STATUS_HIST_BUCKETS, "one bucket count");

void lat_add(lat_ring *r, double v)
{
    size_t b = 0;
    while (b < LAT_BUCKETS && v > status_hist_bounds_ms[b])
        b++;
    r->hist[b]++;
    r->count++;
    r->sum += v;
    r->v[r->pos] = v;
    r->pos = (r->pos + 1) % LAT_SAMPLES;
    if (r->n < LAT_SAMPLES)
        r->n++;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank p50 and p95 over the ring. */
static status_pct status_pct_of(const lat_ring *r)
{
    status_pct p = {false, 0, 0};
    if (r->n == 0)
        return p;
    double v[LAT_SAMPLES];
    memcpy(v, r->v, sizeof(double) * r->n);
    qsort(v, r->n, sizeof(double), cmp_double);
    unsigned i50 = (unsigned)((r->n * 50 + 99) / 100) - 1;
    unsigned i95 = (unsigned)((r->n * 95 + 99) / 100) - 1;
    p.have = true;
    p.p50 = v[i50];
    p.p95 = v[i95];
    return p;
}

static void status_hist_of(const lat_ring *r, status_hist *h)
{
    memcpy(h->counts, r->hist, sizeof(h->counts));
    h->count = r->count;
    h->sum_ms = r->sum;
}

void status_take(sched *s, status_snapshot *o)
{
    int64_t now = clock_now_us();
    memset(o, 0, sizeof(*o));
    o->uptime_s = (double)(now - s->start_us) / 1e6;
    o->pid = (int)getpid();
    o->listen = s->cfg.listen;
    o->policy = policy_name(s->pol);

    for (unsigned i = 0; i < s->n_backends && i < STATUS_MAX_BACKENDS; i++) {
        const backend *b = &s->backends[i];
        const sched_be *e = &s->be[i];
        status_backend *ob = &o->backends[i];
        ob->url = b->url;
        ob->kind = backend_kind_name(b);
        ob->healthy = b->healthy;
        ob->last_error = b->last_error[0] ? b->last_error : NULL;
        ob->model = b->model[0] ? b->model : NULL;
        ob->context_length = b->context_length;
        ob->slots = b->slots;
        ob->checked_ago_s = b->checked_us ? (double)(now - b->checked_us) / 1e6 : -1;
        ob->first_slot = e->slot_base;
        ob->policy_slots = e->n_slots;
        ob->inflight = e->inflight;
        ob->routed = e->routed;
        ob->completed = e->completed;
        ob->error_outages = e->error_outages;
        ob->removed = e->removed;
        ob->total_ram = e->bin.total_ram;
        ob->budget_bytes = e->bout.budget_bytes;
        ob->reserved_bytes = e->reserved_bytes;
        ob->max_concurrent = e->max_concurrent;
        ob->prompt_tokens = e->prompt_tokens;
        ob->cached_tokens = e->cached_tokens;
        ob->tokenizes = !backend_counts_tokens(b) ? 0 : b->tokenizes;
        ob->restore_probe = probe_restore_name(e->restore);
        ob->restore_share = e->restore_share;
        o->n_backends = i + 1;
    }
    o->backend = o->backends[0];
    o->restore.restoring =
        policy_restore_info(s->pol, &o->restore.share, &o->restore.reloads);

    o->memory.total_bytes = s->bin.total_ram;
    o->memory.ram_fraction = s->bin.ram_fraction;
    o->memory.model_size_bytes = s->bin.model_size;
    o->memory.kv_per_request_bytes = s->bin.kv_per_request;
    o->memory.budget_bytes = s->bout.budget_bytes;
    o->memory.max_concurrent = s->max_concurrent;
    o->memory.limited_by = s->limited_by != NULL ? s->limited_by : "memory";
    o->memory.accounting = s->cfg.kv_per_request ? "per_request" : "per_token";
    o->memory.kv_bytes_per_token = s->kv_bytes_per_token;
    o->memory.kv_source = s->kv_source != NULL ? s->kv_source : "default";
    o->memory.reserved_bytes = s->reserved_bytes;

    o->http = s->cfg.http[0] ? s->cfg.http : NULL;
    o->queue_depth = s->queued;
    /* One walk: the queue by priority, and the waiting requests'
     * reservations (not counted in any budget yet). */
    for (const job *j = s->jobs; j != NULL; j = j->next) {
        if (j->state == JOB_QUEUED)
            o->queue_by_priority[j->req->priority < 10 ? j->req->priority : 9]++;
        if (j->reserved || (j->state != JOB_QUEUED && j->state != JOB_PENDING))
            continue;
        o->reservation.waiting++;
        o->reservation.waiting_prompt_tokens += j->reserve_tokens;
        if (j->exact_tokens != 0 && j->reserve_tokens == j->exact_tokens)
            o->reservation.waiting_exact++;
    }
    o->queue_max = s->cfg.max_queue;
    o->inflight = s->inflight;
    o->requests.received = s->st.received;
    o->requests.completed = s->st.completed;
    o->requests.failed = s->st.failed;
    o->requests.retried = s->st.retried;
    o->requests.preempted = s->st.preempted;
    o->requests.rejected_busy = s->st.rejected_busy;
    o->requests.bad_messages = s->st.bad_messages;
    o->requests.auth_refused = s->st.auth_refused;
    o->requests.status_requests = s->st.status_requests;
    memcpy(o->requests.failed_by_code, s->st.failed_by_code,
           sizeof(o->requests.failed_by_code));

    o->queue_wait = status_pct_of(&s->st.queue_wait);
    o->ttft = status_pct_of(&s->st.ttft);
    o->total = status_pct_of(&s->st.total);
    status_hist_of(&s->st.queue_wait, &o->queue_wait_hist);
    status_hist_of(&s->st.ttft, &o->ttft_hist);
    o->tokens_prompt = s->st.tokens_prompt;
    o->tokens_completion = s->st.tokens_completion;
    o->tokens_cached = s->st.tokens_cached;
    o->n_groups = policy_groups(s->pol, o->groups, STATUS_MAX_GROUPS);

    o->reservation.exact_tokens = s->cfg.exact_tokens;
    o->reservation.asked = s->tokc.asked;
    o->reservation.counted = s->tokc.counted;
    o->reservation.applied = s->tokc.applied;
    o->reservation.late = s->tokc.late;
    o->reservation.failed = s->tokc.failed;
    o->reservation.answers = s->tokc.answers;
    o->reservation.exact = s->tokc.exact;
    o->reservation.under = s->tokc.under;
    o->reservation.over = s->tokc.over;
    o->reservation.error_tokens = s->tokc.error_tokens;
}

static json_t *opt_int(int64_t v)
{
    return v >= 0 ? json_integer(v) : json_null();
}

static json_t *opt_str(const char *v)
{
    return v != NULL ? json_string(v) : json_null();
}

static json_t *pct_json(const status_pct *p)
{
    if (!p->have)
        return json_pack("{s:n,s:n}", "p50", "p95");
    return json_pack("{s:f,s:f}", "p50", p->p50, "p95", p->p95);
}

char *status_json(const status_snapshot *o)
{
    json_t *failed = json_object();
    for (int c = 0; c < STATUS_ERR_CODES; c++)
        if (o->requests.failed_by_code[c])
            json_object_set_new(failed, lmsched_err_name(c),
                                json_integer((json_int_t)o->requests.failed_by_code[c]));

    const status_backend *b = &o->backend;
    json_t *be = json_pack(
        "{s:s,s:s,s:b,s:o,s:o,s:o,s:o,s:o}", "url", b->url, "kind", b->kind, "healthy",
        b->healthy, "last_error", opt_str(b->last_error), "model", opt_str(b->model),
        "context_length", opt_int(b->context_length), "slots", opt_int(b->slots),
        "checked_ago_s", b->checked_ago_s >= 0 ? json_real(b->checked_ago_s) : json_null());

    json_t *memory = json_pack(
        "{s:I,s:f,s:o,s:I,s:I,s:i,s:s,s:s,s:I,s:s,s:I}", "total_bytes",
        (json_int_t)o->memory.total_bytes, "ram_fraction", o->memory.ram_fraction,
        "model_size_bytes",
        o->memory.model_size_bytes ? json_integer((json_int_t)o->memory.model_size_bytes)
                                   : json_null(),
        "kv_per_request_bytes", (json_int_t)o->memory.kv_per_request_bytes, "budget_bytes",
        (json_int_t)o->memory.budget_bytes, "max_concurrent", (int)o->memory.max_concurrent,
        "limited_by", o->memory.limited_by, "accounting", o->memory.accounting,
        "kv_bytes_per_token", (json_int_t)o->memory.kv_bytes_per_token, "kv_source",
        o->memory.kv_source, "reserved_bytes", (json_int_t)o->memory.reserved_bytes);

    /* Every backend, with its routing counts. */
    json_t *backends = json_array();
    for (unsigned i = 0; i < o->n_backends; i++) {
        const status_backend *x = &o->backends[i];
        json_t *one = json_pack(
            "{s:s,s:s,s:b,s:o,s:o,s:o,s:o,s:i,s:i,s:i,s:I,s:I,s:I,s:I,s:o,s:I,s:b,s:I}", "url",
            x->url,
            "kind", x->kind, "healthy", x->healthy, "last_error", opt_str(x->last_error),
            "model", opt_str(x->model), "context_length", opt_int(x->context_length), "slots",
            opt_int(x->slots), "first_slot", (int)x->first_slot, "policy_slots",
            (int)x->policy_slots, "inflight", (int)x->inflight, "routed",
            (json_int_t)x->routed, "completed", (json_int_t)x->completed, "prompt_tokens",
            (json_int_t)x->prompt_tokens, "cached_tokens", (json_int_t)x->cached_tokens,
            "cached_ratio",
            x->prompt_tokens ? json_real((double)x->cached_tokens / (double)x->prompt_tokens)
                             : json_null(),
            "error_outages", (json_int_t)x->error_outages, "removed", x->removed, "total_ram",
            (json_int_t)x->total_ram);
        if (one != NULL) {
            json_object_set_new(one, "budget_bytes", json_integer((json_int_t)x->budget_bytes));
            json_object_set_new(one, "reserved_bytes",
                                json_integer((json_int_t)x->reserved_bytes));
            json_object_set_new(one, "max_concurrent", json_integer((json_int_t)x->max_concurrent));
            json_object_set_new(one, "tokenizes",
                                x->tokenizes < 0 ? json_null() : json_boolean(x->tokenizes));
            json_object_set_new(one, "restore_probe", json_string(x->restore_probe));
            json_object_set_new(one, "restore_share", x->restore_share >= 0
                                                          ? json_real(x->restore_share)
                                                          : json_null());
            json_array_append_new(backends, one);
        }
    }

    /* Per prefix group: where its prefix is cached and how often it hit. */
    json_t *groups = json_array();
    for (size_t i = 0; i < o->n_groups; i++) {
        const pol_group_info *g = &o->groups[i];
        json_t *slots = json_array();
        for (unsigned k = 0; k < 32; k++)
            if (g->slots_mask & (1u << k))
                json_array_append_new(slots, json_integer(k));
        char id[24];
        snprintf(id, sizeof(id), "%016llx", (unsigned long long)g->group);
        json_array_append_new(
            groups, json_pack("{s:s,s:s,s:i,s:i,s:o,s:I,s:I,s:I,s:o}", "id", id, "label",
                              g->label, "queued", (int)g->queued, "inflight", (int)g->inflight,
                              "cached_in_slots", slots, "requests", (json_int_t)g->requests,
                              "prompt_tokens", (json_int_t)g->prompt_tokens, "cached_tokens",
                              (json_int_t)g->cached_tokens, "hit_rate",
                              g->prompt_tokens ? json_real((double)g->cached_tokens /
                                                           (double)g->prompt_tokens)
                                               : json_null()));
    }

    json_t *requests = json_pack(
        "{s:I,s:I,s:I,s:I,s:I,s:I,s:o,s:I,s:I}", "received", (json_int_t)o->requests.received,
        "completed", (json_int_t)o->requests.completed, "failed",
        (json_int_t)o->requests.failed, "retried", (json_int_t)o->requests.retried,
        "preempted", (json_int_t)o->requests.preempted,
        "rejected_busy", (json_int_t)o->requests.rejected_busy, "failed_by_class", failed,
        "bad_messages", (json_int_t)o->requests.bad_messages, "auth_refused",
        (json_int_t)o->requests.auth_refused);

    json_t *doc = json_pack(
        "{s:s,s:i,s:i,s:f,s:s,s:s,s:o,s:o,s:{s:i,s:i},s:i,s:o,s:{s:o,s:o,s:o},"
        "s:{s:I,s:I,s:I,s:o},s:o,s:o}",
        "version", LMSCHED_SERVE_VERSION, "protocol", LMSCHED_PROTOCOL_VERSION, "pid", o->pid,
        "uptime_s", o->uptime_s, "listen", o->listen, "policy", o->policy, "backend", be,
        "memory", memory, "queue", "depth", (int)o->queue_depth, "max", (int)o->queue_max,
        "inflight", (int)o->inflight, "requests", requests, "latency_ms", "queue_wait",
        pct_json(&o->queue_wait), "ttft", pct_json(&o->ttft), "total", pct_json(&o->total),
        "tokens", "prompt", (json_int_t)o->tokens_prompt, "completion",
        (json_int_t)o->tokens_completion, "cached", (json_int_t)o->tokens_cached,
        "cached_ratio",
        o->tokens_prompt ? json_real((double)o->tokens_cached / (double)o->tokens_prompt)
                         : json_null(),
        "groups", groups, "http", opt_str(o->http));
    if (doc != NULL) {
        /* Added keys go last in their object (docs/status.md: only ever added). */
        json_t *by = json_array();
        for (int p = 0; p < 10; p++)
            json_array_append_new(by, json_integer(o->queue_by_priority[p]));
        json_object_set_new(json_object_get(doc, "queue"), "by_priority", by);
        json_object_set_new(doc, "backends", backends);
        json_object_set_new(
            doc, "reservation",
            json_pack("{s:s,s:{s:I,s:I,s:I,s:I,s:I},s:i,s:i,s:I,s:{s:I,s:I,s:I,s:I,s:I}}",
                      "exact_tokens", o->reservation.exact_tokens, "counts", "asked",
                      (json_int_t)o->reservation.asked, "counted",
                      (json_int_t)o->reservation.counted, "applied",
                      (json_int_t)o->reservation.applied, "late",
                      (json_int_t)o->reservation.late, "failed",
                      (json_int_t)o->reservation.failed, "waiting",
                      (int)o->reservation.waiting, "waiting_exact",
                      (int)o->reservation.waiting_exact, "waiting_prompt_tokens",
                      (json_int_t)o->reservation.waiting_prompt_tokens, "answers", "count",
                      (json_int_t)o->reservation.answers, "exact",
                      (json_int_t)o->reservation.exact, "under",
                      (json_int_t)o->reservation.under, "over",
                      (json_int_t)o->reservation.over, "error_tokens",
                      (json_int_t)o->reservation.error_tokens));
        json_object_set_new(
            doc, "restore",
            json_pack("{s:o,s:i,s:b}", "share",
                      o->restore.share >= 0 ? json_real(o->restore.share) : json_null(),
                      "reloads", (int)o->restore.reloads, "restoring", o->restore.restoring));
    } else {
        json_decref(backends);
    }
    if (doc == NULL)
        return NULL;
    char *text = json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
    json_decref(doc);
    return text;
}

char *sched_status_json(sched *s)
{
    status_snapshot *snap = malloc(sizeof(*snap));
    if (snap == NULL)
        return NULL;
    status_take(s, snap);
    char *text = status_json(snap);
    free(snap);
    return text;
}
