/*
 * metrics - the status snapshot as Prometheus text (see metrics.h). Every
 * series is a figure of the snapshot `lmsched status` shows; names follow
 * Prometheus' conventions (base units, `_total` for counters). Series per
 * prefix group are bounded (METRICS_MAX_GROUPS), so a stream of distinct
 * system prompts cannot grow a scrape without bound.
 */
#include "scheduler/front/metrics.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "lmsched/wire.h"
#include "scheduler/util/strbuf.h"

typedef struct mx {
    strbuf b;
    bool oom;
} mx;

static void mx_printf(mx *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void mx_printf(mx *m, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof(line))
        n = (int)sizeof(line) - 1;
    if (strbuf_append(&m->b, line, (size_t)n, SIZE_MAX / 2) != 0)
        m->oom = true;
}

static void mx_head(mx *m, const char *name, const char *type, const char *help)
{
    mx_printf(m, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A one-sample series. */
static void mx_one(mx *m, const char *name, const char *type, const char *help, double v)
{
    mx_head(m, name, type, help);
    mx_printf(m, "%s %.15g\n", name, v);
}

/* A label value, escaped as the exposition format wants (\\, \", \n). */
static void mx_label(const char *in, char *out, size_t len)
{
    size_t o = 0;
    for (const char *p = in != NULL ? in : ""; *p != '\0' && o + 3 < len; p++) {
        if (*p == '\\' || *p == '"') {
            out[o++] = '\\';
            out[o++] = *p;
        } else if (*p == '\n') {
            out[o++] = '\\';
            out[o++] = 'n';
        } else {
            out[o++] = *p;
        }
    }
    out[o] = '\0';
}

static void mx_hist(mx *m, const char *name, const char *help, const status_hist *h)
{
    uint64_t cum = 0;
    mx_head(m, name, "histogram", help);
    for (size_t i = 0; i < STATUS_HIST_BUCKETS; i++) {
        cum += h->counts[i];
        mx_printf(m, "%s_bucket{le=\"%g\"} %" PRIu64 "\n", name,
                  status_hist_bounds_ms[i] / 1000.0, cum);
    }
    cum += h->counts[STATUS_HIST_BUCKETS];
    mx_printf(m, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n", name, cum);
    mx_printf(m, "%s_sum %.9g\n", name, h->sum_ms / 1000.0);
    mx_printf(m, "%s_count %" PRIu64 "\n", name, h->count);
}

static void mx_groups(mx *m, const status_snapshot *s)
{
    static const struct {
        const char *name, *type, *help;
    } series[] = {
        {"lmsched_group_queued", "gauge", "Requests of the prefix group waiting."},
        {"lmsched_group_inflight", "gauge",
         "Requests of the prefix group at the backend."},
        {"lmsched_group_requests_total", "counter",
         "Finished requests of the prefix group."},
        {"lmsched_group_prompt_tokens_total", "counter",
         "Prompt tokens of the prefix group's finished requests."},
        {"lmsched_group_cached_tokens_total", "counter",
         "Of those, tokens the server took from its prompt cache."},
    };
    size_t n = s->n_groups < METRICS_MAX_GROUPS ? s->n_groups : METRICS_MAX_GROUPS;
    for (size_t k = 0; k < sizeof(series) / sizeof(series[0]); k++) {
        mx_head(m, series[k].name, series[k].type, series[k].help);
        for (size_t i = 0; i < n; i++) {
            const pol_group_info *g = &s->groups[i];
            char label[2 * sizeof(g->label) + 1];
            mx_label(g->label, label, sizeof(label));
            uint64_t v = k == 0   ? g->queued
                         : k == 1 ? g->inflight
                         : k == 2 ? g->requests
                         : k == 3 ? g->prompt_tokens
                                  : g->cached_tokens;
            mx_printf(m, "%s{group=\"%016" PRIx64 "\",label=\"%s\"} %" PRIu64 "\n",
                      series[k].name, g->group, label, v);
        }
    }
}

char *metrics_text(const status_snapshot *s, const metrics_http *h, size_t *len)
{
    mx m = {0};
    char a[600], b[600];
    strbuf_init(&m.b);

    mx_label(LMSCHED_SERVE_VERSION, a, sizeof(a));
    mx_label(s->policy, b, sizeof(b));
    mx_head(&m, "lmsched_info", "gauge", "The daemon's version and queue policy.");
    mx_printf(&m, "lmsched_info{version=\"%s\",policy=\"%s\"} 1\n", a, b);
    mx_one(&m, "lmsched_uptime_seconds", "gauge", "Seconds since the daemon started.",
           s->uptime_s);

    /* The queue. */
    mx_head(&m, "lmsched_queue_depth", "gauge",
            "Requests waiting in the daemon, by priority.");
    for (int p = 0; p < 10; p++)
        mx_printf(&m, "lmsched_queue_depth{priority=\"%d\"} %u\n", p,
                  s->queue_by_priority[p]);
    mx_one(&m, "lmsched_queue_capacity", "gauge", "Queue capacity (--max-queue).",
           s->queue_max);
    mx_one(&m, "lmsched_inflight", "gauge",
           "Requests sent to the backend and not finished (including retry waits).",
           s->inflight);
    mx_one(&m, "lmsched_max_concurrent", "gauge",
           "Requests allowed at the backend at once.", s->memory.max_concurrent);

    /* Requests. */
    mx_one(&m, "lmsched_requests_received_total", "counter",
           "Chat requests received (including those later refused).",
           (double)s->requests.received);
    mx_head(&m, "lmsched_requests_total", "counter",
            "Chat requests answered, by outcome.");
    mx_printf(&m, "lmsched_requests_total{outcome=\"completed\"} %" PRIu64 "\n",
              s->requests.completed);
    mx_printf(&m, "lmsched_requests_total{outcome=\"failed\"} %" PRIu64 "\n",
              s->requests.failed);
    mx_printf(&m, "lmsched_requests_total{outcome=\"rejected_busy\"} %" PRIu64 "\n",
              s->requests.rejected_busy);
    mx_head(&m, "lmsched_requests_failed_total", "counter",
            "Failed chat requests by error class (canceled: the client went away).");
    for (int c = 0; c < STATUS_ERR_CODES; c++)
        if (s->requests.failed_by_code[c])
            mx_printf(&m, "lmsched_requests_failed_total{class=\"%s\"} %" PRIu64 "\n",
                      lmsched_err_name(c), s->requests.failed_by_code[c]);
    mx_one(&m, "lmsched_retries_total", "counter",
           "Retries of requests against the backend after transient errors.",
           (double)s->requests.retried);
    mx_one(&m, "lmsched_preemptions_total", "counter",
           "Running requests stopped and queued again for a higher-priority one (--preempt).",
           (double)s->requests.preempted);
    mx_one(&m, "lmsched_bad_messages_total", "counter",
           "Messages that were not a valid request.", (double)s->requests.bad_messages);
    mx_one(&m, "lmsched_auth_refused_total", "counter",
           "Requests refused for a missing or wrong token.",
           (double)s->requests.auth_refused);

    /* Tokens. */
    mx_one(&m, "lmsched_prompt_tokens_total", "counter",
           "Prompt tokens of completed requests, as the backend reported them.",
           (double)s->tokens_prompt);
    mx_one(&m, "lmsched_cached_tokens_total", "counter",
           "Of those, tokens the server took from its prompt cache.",
           (double)s->tokens_cached);
    mx_one(&m, "lmsched_prefilled_tokens_total", "counter",
           "Of those, tokens the server computed (prompt minus cached).",
           (double)(s->tokens_prompt > s->tokens_cached
                        ? s->tokens_prompt - s->tokens_cached
                        : 0));
    mx_one(&m, "lmsched_completion_tokens_total", "counter", "Generated tokens.",
           (double)s->tokens_completion);

    /* Latency. */
    mx_hist(&m, "lmsched_queue_wait_seconds",
            "From the daemon receiving a request to sending it to the backend.",
            &s->queue_wait_hist);
    mx_hist(&m, "lmsched_ttft_seconds",
            "Time to first token, from sending to the backend.", &s->ttft_hist);

    /* Memory. */
    mx_one(&m, "lmsched_memory_total_bytes", "gauge",
           "RAM of the machine (or --total-ram).", (double)s->memory.total_bytes);
    mx_one(&m, "lmsched_memory_budget_bytes", "gauge", "RAM left for KV caches.",
           (double)s->memory.budget_bytes);
    mx_one(&m, "lmsched_memory_reserved_bytes", "gauge",
           "KV bytes reserved by the requests running now.",
           (double)s->memory.reserved_bytes);
    mx_one(&m, "lmsched_model_size_bytes", "gauge",
           "Size of the model's weights (0: unknown).",
           (double)s->memory.model_size_bytes);
    mx_one(&m, "lmsched_kv_bytes_per_token", "gauge",
           "KV cache bytes per token reserved.", (double)s->memory.kv_bytes_per_token);

    /* The backends. */
    mx_head(&m, "lmsched_backend_up", "gauge",
            "1 when the last probe or request reached the backend.");
    for (unsigned i = 0; i < s->n_backends; i++) {
        mx_label(s->backends[i].url, a, sizeof(a));
        mx_label(s->backends[i].kind, b, sizeof(b));
        mx_printf(&m, "lmsched_backend_up{url=\"%s\",kind=\"%s\"} %d\n", a, b,
                  s->backends[i].healthy ? 1 : 0);
    }
    if (s->n_backends <= 1) {
        if (s->backend.slots >= 0)
            mx_one(&m, "lmsched_backend_slots", "gauge", "The backend's parallel slots.",
                   (double)s->backend.slots);
        if (s->backend.context_length >= 0)
            mx_one(&m, "lmsched_backend_context_tokens", "gauge",
                   "Context per slot, in tokens.", (double)s->backend.context_length);
    } else {
        /* Several: each labelled with its URL. */
        mx_head(&m, "lmsched_backend_slots", "gauge", "The backend's parallel slots.");
        for (unsigned i = 0; i < s->n_backends; i++) {
            mx_label(s->backends[i].url, a, sizeof(a));
            if (s->backends[i].slots >= 0)
                mx_printf(&m, "lmsched_backend_slots{url=\"%s\"} %" PRId64 "\n", a,
                          s->backends[i].slots);
        }
        mx_head(&m, "lmsched_backend_context_tokens", "gauge", "Context per slot, in tokens.");
        for (unsigned i = 0; i < s->n_backends; i++) {
            mx_label(s->backends[i].url, a, sizeof(a));
            if (s->backends[i].context_length >= 0)
                mx_printf(&m, "lmsched_backend_context_tokens{url=\"%s\"} %" PRId64 "\n", a,
                          s->backends[i].context_length);
        }
    }
    mx_head(&m, "lmsched_backend_requests_total", "counter",
            "Requests dispatched to the backend (a failed-over attempt counts at each).");
    for (unsigned i = 0; i < s->n_backends; i++) {
        mx_label(s->backends[i].url, a, sizeof(a));
        mx_printf(&m, "lmsched_backend_requests_total{url=\"%s\"} %" PRIu64 "\n", a,
                  s->backends[i].routed);
    }
    mx_head(&m, "lmsched_backend_prompt_tokens_total", "counter",
            "Prompt tokens the backend reported.");
    for (unsigned i = 0; i < s->n_backends; i++) {
        mx_label(s->backends[i].url, a, sizeof(a));
        mx_printf(&m, "lmsched_backend_prompt_tokens_total{url=\"%s\"} %" PRIu64 "\n", a,
                  s->backends[i].prompt_tokens);
    }
    mx_head(&m, "lmsched_backend_cached_tokens_total", "counter",
            "Prompt tokens the backend reported served from its cache.");
    for (unsigned i = 0; i < s->n_backends; i++) {
        mx_label(s->backends[i].url, a, sizeof(a));
        mx_printf(&m, "lmsched_backend_cached_tokens_total{url=\"%s\"} %" PRIu64 "\n", a,
                  s->backends[i].cached_tokens);
    }
    mx_head(&m, "lmsched_backend_error_outages_total", "counter",
            "Times the backend was taken out for a burst of server errors.");
    for (unsigned i = 0; i < s->n_backends; i++) {
        mx_label(s->backends[i].url, a, sizeof(a));
        mx_printf(&m, "lmsched_backend_error_outages_total{url=\"%s\"} %" PRIu64 "\n", a,
                  s->backends[i].error_outages);
    }

    mx_groups(&m, s);

    if (h != NULL) {
        mx_one(&m, "lmsched_http_connections", "gauge", "Open HTTP connections.",
               h->connections);
        mx_one(&m, "lmsched_http_connections_total", "counter",
               "HTTP connections accepted.", (double)h->connections_total);
        mx_one(&m, "lmsched_http_timeouts_total", "counter",
               "HTTP connections closed by the header or body timeout.",
               (double)h->timeouts);
        mx_one(&m, "lmsched_http_disconnects_total", "counter",
               "HTTP requests whose client went away before the answer (canceled).",
               (double)h->disconnects);
        mx_head(&m, "lmsched_http_responses_total", "counter",
                "HTTP answers by status class.");
        for (int c = 1; c <= 5; c++)
            mx_printf(&m, "lmsched_http_responses_total{code=\"%dxx\"} %" PRIu64 "\n", c,
                      h->responses[c]);
    }
    if (m.oom) {
        strbuf_fini(&m.b);
        return NULL;
    }
    if (len != NULL)
        *len = m.b.len;
    return strbuf_steal(&m.b);
}
