/*
 * status - the status document of `lmsched status --json`, built from the
 * scheduler's state on the loop thread. docs/status.md is its contract: keys
 * are only ever added. jansson builds it; the token is never part of it.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "scheduler/util/clock.h"
#include "scheduler/core/loop.h"

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* {"p50": x, "p95": y} over the ring, nulls when empty. */
static json_t *status_pct(const lat_ring *r)
{
    if (r->n == 0)
        return json_pack("{s:n,s:n}", "p50", "p95");
    double *v = malloc(sizeof(double) * r->n);
    if (v == NULL)
        return json_pack("{s:n,s:n}", "p50", "p95");
    memcpy(v, r->v, sizeof(double) * r->n);
    qsort(v, r->n, sizeof(double), cmp_double);
    /* nearest-rank percentiles */
    unsigned i50 = (unsigned)((r->n * 50 + 99) / 100) - 1;
    unsigned i95 = (unsigned)((r->n * 95 + 99) / 100) - 1;
    json_t *o = json_pack("{s:f,s:f}", "p50", v[i50], "p95", v[i95]);
    free(v);
    return o;
}

static json_t *opt_int(int64_t v)
{
    return v >= 0 ? json_integer(v) : json_null();
}

char *status_json(const sched *s)
{
    int64_t now = clock_now_us();
    json_t *failed = json_object();
    for (int c = 0; c < (int)(sizeof(s->st.failed_by_code) / sizeof(s->st.failed_by_code[0]));
         c++)
        if (s->st.failed_by_code[c])
            json_object_set_new(failed, lmsched_err_name(c), json_integer((json_int_t)s->st.failed_by_code[c]));

    json_t *be = json_pack(
        "{s:s,s:s,s:b,s:o,s:o,s:o,s:o,s:o}", "url", s->cfg.backend, "kind", s->be.kind,
        "healthy", s->be.healthy, "last_error",
        s->be.last_error[0] ? json_string(s->be.last_error) : json_null(), "model",
        s->be.model[0] ? json_string(s->be.model) : json_null(), "context_length",
        opt_int(s->be.context_length), "slots", opt_int(s->be.slots), "checked_ago_s",
        s->be.checked_us ? json_real((double)(now - s->be.checked_us) / 1e6) : json_null());

    json_t *memory = json_pack(
        "{s:I,s:f,s:o,s:I,s:I,s:i,s:s,s:s,s:I,s:s,s:I}", "total_bytes",
        (json_int_t)s->bin.total_ram, "ram_fraction", s->bin.ram_fraction, "model_size_bytes",
        s->bin.model_size ? json_integer((json_int_t)s->bin.model_size) : json_null(),
        "kv_per_request_bytes", (json_int_t)s->bin.kv_per_request,
        "budget_bytes", (json_int_t)s->bout.budget_bytes, "max_concurrent",
        (int)s->max_concurrent, "limited_by", s->limited_by ? s->limited_by : "memory",
        "accounting", s->cfg.kv_per_request ? "per_request" : "per_token",
        "kv_bytes_per_token", (json_int_t)s->kv_bytes_per_token, "kv_source",
        s->kv_source ? s->kv_source : "default", "reserved_bytes",
        (json_int_t)s->reserved_bytes);

    /* Per prefix group: where its prefix is cached and how often it hit. */
    json_t *groups = json_array();
    pol_group_info gi[64];
    size_t ng = policy_groups(s->pol, gi, sizeof(gi) / sizeof(gi[0]));
    for (size_t i = 0; i < ng; i++) {
        json_t *slots = json_array();
        for (unsigned b = 0; b < 32; b++)
            if (gi[i].slots_mask & (1u << b))
                json_array_append_new(slots, json_integer(b));
        char id[24];
        snprintf(id, sizeof(id), "%016llx", (unsigned long long)gi[i].group);
        json_array_append_new(
            groups, json_pack("{s:s,s:s,s:i,s:i,s:o,s:I,s:I,s:I,s:o}", "id", id, "label",
                              gi[i].label, "queued", (int)gi[i].queued, "inflight",
                              (int)gi[i].inflight, "cached_in_slots", slots, "requests",
                              (json_int_t)gi[i].requests, "prompt_tokens",
                              (json_int_t)gi[i].prompt_tokens, "cached_tokens",
                              (json_int_t)gi[i].cached_tokens, "hit_rate",
                              gi[i].prompt_tokens
                                  ? json_real((double)gi[i].cached_tokens /
                                              (double)gi[i].prompt_tokens)
                                  : json_null()));
    }

    json_t *requests = json_pack(
        "{s:I,s:I,s:I,s:I,s:I,s:o,s:I,s:I}", "received", (json_int_t)s->st.received,
        "completed", (json_int_t)s->st.completed, "failed", (json_int_t)s->st.failed, "retried",
        (json_int_t)s->st.retried, "rejected_busy", (json_int_t)s->st.rejected_busy,
        "failed_by_class", failed, "bad_messages", (json_int_t)s->st.bad_messages,
        "auth_refused", (json_int_t)(s->srv != NULL ? srv_auth_refused(s->srv) : 0));

    json_t *doc = json_pack(
        "{s:s,s:i,s:i,s:f,s:s,s:s,s:o,s:o,s:{s:i,s:i},s:i,s:o,s:{s:o,s:o,s:o},"
        "s:{s:I,s:I,s:I,s:o},s:o}",
        "version", LMSCHED_SERVE_VERSION, "protocol", LMSCHED_PROTOCOL_VERSION, "pid", (int)getpid(),
        "uptime_s", (double)(now - s->start_us) / 1e6, "listen", s->cfg.listen, "policy",
        policy_name(s->pol), "backend", be, "memory", memory, "queue", "depth",
        (int)s->queued, "max", (int)s->cfg.max_queue, "inflight", (int)s->inflight, "requests",
        requests, "latency_ms", "queue_wait", status_pct(&s->st.queue_wait), "ttft",
        status_pct(&s->st.ttft), "total", status_pct(&s->st.total), "tokens", "prompt",
        (json_int_t)s->st.tokens_prompt, "completion", (json_int_t)s->st.tokens_completion,
        "cached", (json_int_t)s->st.tokens_cached, "cached_ratio",
        s->st.tokens_prompt ? json_real((double)s->st.tokens_cached / (double)s->st.tokens_prompt)
                            : json_null(),
        "groups", groups);
    if (doc == NULL)
        return NULL;
    char *text = json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
    json_decref(doc);
    return text;
}
