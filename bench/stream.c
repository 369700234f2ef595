/*
 * lmstream - what streaming buys an agent and what it costs, through the
 * lmsched daemon (docs/benchmarks.md, "Streaming: time to first token" and
 * "Overhead", streaming row). It starts lmsim and `lmsched serve` itself
 * and has two modes:
 *
 *   --mode ttft  Agents (threads, a client each) send requests with
 *                256-token answers, each agent one at a time, first all
 *                not streamed (lmsched_chat), then all streamed
 *                (lmsched_chat_stream), the order swapped every other
 *                repetition, lmsim reset before each phase. Time to first
 *                token as the agent sees it: the first content piece when
 *                streamed, the whole answer when not; and the total time.
 *   --mode poll  The cost of one poll of a stream: lmsim decodes a long
 *                answer at a fixed rate (1000 tokens/s by default); the
 *                reader sleeps 2 ms after each piece, so that pieces are
 *                waiting when it asks, then times getting the next ones:
 *                through lmsched, the chat_next round trip (from the delta
 *                callback's return, when agentlib sends chat_next, to the
 *                next callback); directly, reading the server's event
 *                stream from its socket and decoding the events. The
 *                difference is what lmsched adds per poll.
 *
 * Each prints one JSON object per repetition and phase, one with the
 * medians over the repetitions, then a table. It uses only the public
 * agentlib API and the lmsched and lmsim commands.
 *
 * Design notes
 * - ttft: all agents share one system prompt (as agents of one role do) and
 *   send the same requests in both phases; lmsim is reset before each
 *   phase so both start from cold caches. Times are wall-clock at the
 *   agent; lmsim runs --time-scale times faster than its modelled machine,
 *   so each figure is also given in model time (wall x time scale), which
 *   is what the modelled M4 Pro would show (lmsched's own microseconds are
 *   scaled up with it, and are negligible there).
 * - poll: one stream at a time on an idle machine. The direct reader
 *   speaks HTTP/1.0 on a plain socket (no chunked framing to undo), sends
 *   the body the daemon sends, and after each sleep reads whatever is
 *   there (waiting, with poll(2), only if nothing is) and decodes every
 *   complete event's JSON, as an agent reading the server itself would.
 *   The first read of a stream (the prefill) is not a poll and is not
 *   counted on either side.
 *
 * Exit status: 0 when every request succeeded, 1 when something could not
 * start or a request failed, 2 on a usage error.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>

#include "kit/clock.h"
#include "kit/daemon.h"
#include "kit/http.h"
#include "kit/net.h"
#include "kit/proc.h"
#include "kit/sim.h"
#include "lmsched/agent.h"
#include "scheduler/util/num.h"

#define ST_MAX_AGENTS 64
#define ST_MAX_REPS 99
#define ST_START_MS 15000
#define ST_STOP_MS 40000
#define ST_CALL_MS 600000

static const char st_system[] =
    "You are one of the agents of a software team. You answer questions about the "
    "team's code base, its design and its tests, at length and with examples.";

typedef enum st_mode { ST_TTFT, ST_POLL } st_mode;

typedef struct st_opts {
    st_mode mode;
    int agents, requests, reps;
    int tokens;        /* answer length */
    double time_scale; /* lmsim's */
    double decode_tps; /* poll: lmsim's decode rate */
    double gap_ms;     /* poll: the reader's sleep after each piece */
    const char *lmsched, *lmsim;
    bool json;
} st_opts;

static void st_usage(FILE *out)
{
    fprintf(
        out,
        "usage: lmstream --mode ttft|poll [--agents N] [--requests N] [--reps N]\n"
        "                [--tokens N] [--time-scale F] [--decode-tps F] [--gap-ms F]\n"
        "                [--lmsim PATH] [--lmsched PATH] [--json]\n"
        "\n"
        "ttft: time to the first token at the agent, streamed vs not, and the total.\n"
        "poll: the time one poll of a stream takes through lmsched vs reading the\n"
        "      server's event stream directly (docs/benchmarks.md).\n"
        "\n"
        "  --agents N       ttft: concurrent agents (default 4, lmsim's slots)\n"
        "  --requests N     requests per agent and phase (ttft, default 4), or\n"
        "                   streams per path (poll, default 5)\n"
        "  --reps N         repetitions; medians are reported (default 3)\n"
        "  --tokens N       answer length in tokens (default 256 ttft, 400 poll)\n"
        "  --time-scale F   ttft: lmsim's --time-scale (default 10)\n"
        "  --decode-tps F   poll: lmsim's decode rate (default 1000 tokens/s)\n"
        "  --gap-ms F       poll: the reader's pause after each piece (default 2)\n"
        "  --lmsim PATH, --lmsched PATH   the commands (default: next to lmstream)\n"
        "  --json           only the JSON lines\n");
}

static int st_num(const char *flag, const char *s, double lo, double hi, bool whole,
                  double *out)
{
    double v;
    if (num_parse_double(s, lo, hi, false, false, &v) != 0 || (whole && v != floor(v))) {
        fprintf(stderr, "lmstream: %s: expected a%s number from %g to %g, got '%s'\n",
                flag, whole ? " whole" : "", lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* Returns 0 to run, 1 after --help, 2 on a usage error (reported). */
static int st_parse(int argc, char **argv, st_opts *o)
{
    enum {
        OPT_MODE = 256,
        OPT_AGENTS,
        OPT_REQUESTS,
        OPT_REPS,
        OPT_TOKENS,
        OPT_TIME_SCALE,
        OPT_DECODE_TPS,
        OPT_GAP,
        OPT_LMSIM,
        OPT_LMSCHED,
        OPT_JSON,
    };
    static const struct option opts[] = {
        {"mode", required_argument, NULL, OPT_MODE},
        {"agents", required_argument, NULL, OPT_AGENTS},
        {"requests", required_argument, NULL, OPT_REQUESTS},
        {"reps", required_argument, NULL, OPT_REPS},
        {"tokens", required_argument, NULL, OPT_TOKENS},
        {"time-scale", required_argument, NULL, OPT_TIME_SCALE},
        {"decode-tps", required_argument, NULL, OPT_DECODE_TPS},
        {"gap-ms", required_argument, NULL, OPT_GAP},
        {"lmsim", required_argument, NULL, OPT_LMSIM},
        {"lmsched", required_argument, NULL, OPT_LMSCHED},
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bool have_mode = false;
    double v;
    int c, requests = 0, tokens = 0;
    *o = (st_opts){
        .agents = 4, .reps = 3, .time_scale = 10, .decode_tps = 1000, .gap_ms = 2};
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case OPT_MODE:
            if (strcmp(optarg, "ttft") != 0 && strcmp(optarg, "poll") != 0) {
                fprintf(stderr, "lmstream: --mode must be ttft or poll\n");
                return 2;
            }
            o->mode = strcmp(optarg, "ttft") == 0 ? ST_TTFT : ST_POLL;
            have_mode = true;
            break;
        case OPT_AGENTS:
            if (st_num("--agents", optarg, 1, ST_MAX_AGENTS, true, &v) != 0)
                return 2;
            o->agents = (int)v;
            break;
        case OPT_REQUESTS:
            if (st_num("--requests", optarg, 1, 100000, true, &v) != 0)
                return 2;
            requests = (int)v;
            break;
        case OPT_REPS:
            if (st_num("--reps", optarg, 1, ST_MAX_REPS, true, &v) != 0)
                return 2;
            o->reps = (int)v;
            break;
        case OPT_TOKENS:
            if (st_num("--tokens", optarg, 2, 100000, true, &v) != 0)
                return 2;
            tokens = (int)v;
            break;
        case OPT_TIME_SCALE:
            if (st_num("--time-scale", optarg, 0.01, 1000, false, &v) != 0)
                return 2;
            o->time_scale = v;
            break;
        case OPT_DECODE_TPS:
            if (st_num("--decode-tps", optarg, 1, 1e6, false, &v) != 0)
                return 2;
            o->decode_tps = v;
            break;
        case OPT_GAP:
            if (st_num("--gap-ms", optarg, 0, 1000, false, &v) != 0)
                return 2;
            o->gap_ms = v;
            break;
        case OPT_LMSIM:
            o->lmsim = optarg;
            break;
        case OPT_LMSCHED:
            o->lmsched = optarg;
            break;
        case OPT_JSON:
            o->json = true;
            break;
        case 'h':
            st_usage(stdout);
            return 1;
        default:
            fprintf(stderr, "lmstream: %s '%s' (see --help)\n",
                    c == ':' ? "option needs a value" : "unknown option",
                    argv[optind - 1]);
            return 2;
        }
    }
    if (!have_mode || optind < argc) {
        fprintf(stderr, "lmstream: %s (see --help)\n",
                have_mode ? "unexpected argument" : "--mode ttft|poll is required");
        return 2;
    }
    o->requests = requests > 0 ? requests : o->mode == ST_TTFT ? 4 : 5;
    o->tokens = tokens > 0 ? tokens : o->mode == ST_TTFT ? 256 : 400;
    return 0;
}

/* ---- figures ---------------------------------------------------------------- */

static int st_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of v[0..n) (sorted in place); NaN when empty. */
static double st_pct(double *v, size_t n, double p)
{
    if (n == 0)
        return NAN;
    qsort(v, n, sizeof(*v), st_cmp);
    size_t k = (size_t)ceil(p / 100.0 * (double)n);
    return v[k > 0 ? k - 1 : 0];
}

static double st_median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), st_cmp);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static json_t *st_fig(double v, int decimals)
{
    if (!(v == v))
        return json_null();
    double m = pow(10, decimals);
    return json_real(round(v * m) / m);
}

static void st_print(json_t *o)
{
    char *line =
        json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(12));
    if (line != NULL)
        printf("%s\n", line);
    free(line);
    fflush(stdout);
}

/* ---- the children ------------------------------------------------------------ */

typedef struct st_world {
    kit_proc sim, daemon;
    char dir[64];
    char backend[128];
    char url[160];
} st_world;

static void st_world_stop(st_world *w)
{
    if (w->daemon.pid > 0 && kit_proc_stop(&w->daemon, SIGTERM, ST_STOP_MS) < 0)
        fprintf(stderr, "lmstream: the daemon did not stop on SIGTERM; killed it\n");
    if (w->sim.pid > 0 && kit_proc_stop(&w->sim, SIGTERM, ST_STOP_MS) < 0)
        fprintf(stderr, "lmstream: lmsim did not stop on SIGTERM; killed it\n");
    if (w->dir[0] != '\0') {
        char path[128];
        snprintf(path, sizeof(path), "%s/port", w->dir);
        unlink(path);
        snprintf(path, sizeof(path), "%s/d.sock", w->dir);
        unlink(path);
        rmdir(w->dir);
        w->dir[0] = '\0';
    }
}

/* lmsim with sim_args, then `lmsched serve` in front of it. Returns 0 or
 * -1 (reported). */
static int st_world_start(st_world *w, const char *lmsim, const char *lmsched,
                          const char *const *sim_args)
{
    char port_file[96], why[256];
    memset(w, 0, sizeof(*w));
    strcpy(w->dir, "/tmp/lmstream.XXXXXX");
    if (mkdtemp(w->dir) == NULL) {
        fprintf(stderr, "lmstream: mkdtemp: %s\n", strerror(errno));
        w->dir[0] = '\0';
        return -1;
    }
    snprintf(port_file, sizeof(port_file), "%s/port", w->dir);
    kit_sim_opts so = {.bin = lmsim,
                       .port_file = port_file,
                       .log_level = "warn",
                       .args = sim_args,
                       .out = KIT_OUT_QUIET,
                       .timeout_ms = ST_START_MS};
    int port = kit_sim_start(&w->sim, &so, why, sizeof(why));
    if (port <= 0) {
        fprintf(stderr, "lmstream: %s\n", why);
        return -1;
    }
    snprintf(w->backend, sizeof(w->backend), "http://127.0.0.1:%d", port);
    snprintf(w->url, sizeof(w->url), "ipc://%s/d.sock", w->dir);
    /* Nothing in the daemon caps concurrency below lmsim's slots. */
    const char *args[] = {"--total-ram", "1T", "--kv-per-request", "1M", NULL};
    kit_daemon_opts d = {.bin = lmsched,
                         .listen = w->url,
                         .backend = w->backend,
                         .log_level = "warn",
                         .args = args,
                         .out = KIT_OUT_STDERR,
                         .probed = true,
                         .timeout_ms = ST_START_MS};
    if (kit_daemon_start(&w->daemon, &d, why, sizeof(why)) != 0) {
        fprintf(stderr, "lmstream: %s\n", why);
        return -1;
    }
    return 0;
}

static int st_sim_reset(const st_world *w)
{
    char url[256];
    snprintf(url, sizeof(url), "%s/sim/reset", w->backend);
    json_t *r = kit_http_json("POST", url, "", 5000, NULL, NULL, 0);
    json_decref(r);
    return r != NULL ? 0 : -1;
}

/* ---- ttft --------------------------------------------------------------------- */

typedef struct st_agent {
    const st_opts *o;
    lmsched_client *client;
    int index;
    bool stream;
    pthread_t thread;
    double *ttft, *total; /* o->requests each, ms */
    int errors;
    int64_t t0, first; /* the request in progress */
    char errmsg[256];
} st_agent;

static int st_first_delta(int kind, const char *text, int index, const char *id,
                          const char *name, void *arg)
{
    st_agent *a = arg;
    (void)index;
    (void)id;
    (void)name;
    if (kind == LMSCHED_DELTA_CONTENT && text[0] != '\0' && a->first == 0)
        a->first = kit_now_ns();
    return 0;
}

static void *st_agent_main(void *arg)
{
    st_agent *a = arg;
    const st_opts *o = a->o;
    for (int j = 0; j < o->requests; j++) {
        char user[160];
        lmsched_request *req = NULL;
        lmsched_result *res = NULL;
        int rc;
        snprintf(user, sizeof(user),
                 "Agent %d, question %d: explain how the scheduler shares one LLM server "
                 "between many agents.",
                 a->index + 1, j + 1);
        if (lmsched_request_alloc(&req) != LMSCHED_OK ||
            lmsched_request_set_system(req, st_system) != LMSCHED_OK ||
            lmsched_request_add_message(req, "user", user) != LMSCHED_OK ||
            lmsched_request_set_max_tokens(req, o->tokens) != LMSCHED_OK ||
            lmsched_request_set_agent(req, "lmstream") != LMSCHED_OK) {
            a->errors++;
            lmsched_request_free(req);
            continue;
        }
        a->first = 0;
        a->t0 = kit_now_ns();
        if (a->stream)
            rc = lmsched_chat_stream(a->client, req, ST_CALL_MS, st_first_delta, a, &res);
        else
            rc = lmsched_chat(a->client, req, ST_CALL_MS, &res);
        int64_t end = kit_now_ns();
        if (rc != LMSCHED_OK || lmsched_result_completion_tokens(res) != o->tokens) {
            if (a->errors++ == 0)
                snprintf(a->errmsg, sizeof(a->errmsg), "%s: %s", lmsched_err_name(rc),
                         rc != LMSCHED_OK ? lmsched_result_message(res)
                                          : "not the asked number of tokens");
            a->ttft[j] = a->total[j] = NAN;
        } else {
            /* not streamed, the first token arrives with the last */
            int64_t first = a->stream && a->first != 0 ? a->first : end;
            a->ttft[j] = (double)(first - a->t0) / 1e6;
            a->total[j] = (double)(end - a->t0) / 1e6;
        }
        lmsched_result_free(res);
        lmsched_request_free(req);
    }
    return NULL;
}

typedef struct st_ttft_fig {
    double ttft_p50, ttft_p90, total_p50, total_p90;
    int errors;
} st_ttft_fig;

/* One phase: every agent's requests, streamed or not. Returns 0 or -1. */
static int st_ttft_phase(const st_opts *o, st_world *w, bool stream, st_ttft_fig *f)
{
    size_t n = (size_t)o->agents * (size_t)o->requests;
    st_agent *ag = calloc((size_t)o->agents, sizeof(*ag));
    double *ttft = calloc(n, sizeof(double)), *total = calloc(n, sizeof(double));
    double *a = calloc(n, sizeof(double)), *b = calloc(n, sizeof(double));
    int rc = -1, started = 0;
    if (ag == NULL || ttft == NULL || total == NULL || a == NULL || b == NULL)
        goto out;
    if (st_sim_reset(w) != 0) {
        fprintf(stderr, "lmstream: cannot reset lmsim\n");
        goto out;
    }
    for (int i = 0; i < o->agents; i++) {
        ag[i] = (st_agent){.o = o,
                           .index = i,
                           .stream = stream,
                           .ttft = ttft + (size_t)i * (size_t)o->requests,
                           .total = total + (size_t)i * (size_t)o->requests};
        if (lmsched_client_open(&ag[i].client, w->url) != LMSCHED_OK)
            goto join;
    }
    for (; started < o->agents; started++)
        if (pthread_create(&ag[started].thread, NULL, st_agent_main, &ag[started]) != 0)
            break;
join:
    for (int i = 0; i < started; i++)
        pthread_join(ag[i].thread, NULL);
    if (started == o->agents) {
        size_t k = 0;
        f->errors = 0;
        for (int i = 0; i < o->agents; i++) {
            f->errors += ag[i].errors;
            if (ag[i].errors > 0)
                fprintf(stderr, "lmstream: agent %d: %d failed, first: %s\n", i + 1,
                        ag[i].errors, ag[i].errmsg);
        }
        for (size_t i = 0; i < n; i++)
            if (ttft[i] == ttft[i]) {
                a[k] = ttft[i];
                b[k] = total[i];
                k++;
            }
        f->ttft_p50 = st_pct(a, k, 50);
        f->ttft_p90 = st_pct(a, k, 90);
        f->total_p50 = st_pct(b, k, 50);
        f->total_p90 = st_pct(b, k, 90);
        rc = 0;
    } else {
        fprintf(stderr, "lmstream: cannot start the agents\n");
    }
out:
    for (int i = 0; ag != NULL && i < o->agents; i++)
        lmsched_client_close(ag[i].client);
    free(ag);
    free(ttft);
    free(total);
    free(a);
    free(b);
    return rc;
}

static int st_ttft(const st_opts *o, const char *lmsim, const char *lmsched)
{
    char scale[32], tokens[32];
    snprintf(scale, sizeof(scale), "%g", o->time_scale);
    snprintf(tokens, sizeof(tokens), "%d", o->tokens);
    const char *sim_args[] = {"--slots", "4", "--time-scale", scale, "--reply-tokens",
                              tokens,    NULL};
    st_world w = {0};
    enum {
        F_WHOLE_TTFT,
        F_STREAM_TTFT,
        F_RATIO,
        F_WHOLE_TOTAL,
        F_STREAM_TOTAL,
        F_WHOLE_TTFT90,
        F_STREAM_TTFT90,
        F_N
    };
    static const char *const names[F_N] = {"whole_ttft_p50_ms",   "stream_ttft_p50_ms",
                                           "ttft_ratio",          "whole_total_p50_ms",
                                           "stream_total_p50_ms", "whole_ttft_p90_ms",
                                           "stream_ttft_p90_ms"};
    double(*fig)[F_N] = calloc((size_t)o->reps, sizeof(*fig));
    double col[ST_MAX_REPS], med[F_N];
    int errors = 0, code = 1;
    if (fig == NULL || st_world_start(&w, lmsim, lmsched, sim_args) != 0)
        goto out;
    for (int r = 0; r < o->reps; r++) {
        st_ttft_fig f[2]; /* [0] whole, [1] streamed */
        for (int k = 0; k < 2; k++) {
            int s = (k + r) % 2; /* odd repetitions stream first */
            if (st_ttft_phase(o, &w, s == 1, &f[s]) != 0)
                goto out;
            errors += f[s].errors;
            json_t *line = json_pack(
                "{s:s,s:i,s:s,s:i,s:i,s:i,s:f,s:o,s:o,s:o,s:o,s:o,s:o,s:i}", "workload",
                "ttft", "rep", r + 1, "mode", s ? "stream" : "whole", "agents", o->agents,
                "requests", o->agents * o->requests, "tokens", o->tokens, "time_scale",
                o->time_scale, "ttft_p50_ms", st_fig(f[s].ttft_p50, 1), "ttft_p90_ms",
                st_fig(f[s].ttft_p90, 1), "total_p50_ms", st_fig(f[s].total_p50, 1),
                "total_p90_ms", st_fig(f[s].total_p90, 1), "ttft_p50_model_ms",
                st_fig(f[s].ttft_p50 * o->time_scale, 0), "total_p50_model_ms",
                st_fig(f[s].total_p50 * o->time_scale, 0), "errors", f[s].errors);
            st_print(line);
            json_decref(line);
        }
        fig[r][F_WHOLE_TTFT] = f[0].ttft_p50;
        fig[r][F_STREAM_TTFT] = f[1].ttft_p50;
        fig[r][F_RATIO] = f[1].ttft_p50 / f[0].ttft_p50;
        fig[r][F_WHOLE_TOTAL] = f[0].total_p50;
        fig[r][F_STREAM_TOTAL] = f[1].total_p50;
        fig[r][F_WHOLE_TTFT90] = f[0].ttft_p90;
        fig[r][F_STREAM_TTFT90] = f[1].ttft_p90;
    }
    for (int k = 0; k < F_N; k++) {
        for (int r = 0; r < o->reps; r++)
            col[r] = fig[r][k];
        med[k] = st_median(col, o->reps);
    }
    json_t *sum = json_pack("{s:s,s:s,s:i,s:i,s:i,s:i,s:f,s:i}", "workload", "ttft",
                            "rep", "median", "reps", o->reps, "agents", o->agents,
                            "requests", o->agents * o->requests, "tokens", o->tokens,
                            "time_scale", o->time_scale, "errors", errors);
    for (int k = 0; sum != NULL && k < F_N; k++)
        json_object_set_new(sum, names[k], st_fig(med[k], k == F_RATIO ? 3 : 1));
    if (sum != NULL) {
        json_object_set_new(sum, "whole_ttft_p50_model_ms",
                            st_fig(med[F_WHOLE_TTFT] * o->time_scale, 0));
        json_object_set_new(sum, "stream_ttft_p50_model_ms",
                            st_fig(med[F_STREAM_TTFT] * o->time_scale, 0));
        st_print(sum);
    }
    json_decref(sum);
    if (!o->json) {
        printf("\nlmsched streaming, time to first token at the agent: %d agents, %d "
               "requests each per phase, %d-token answers, lmsim 4 slots at --time-scale "
               "%g; %d rep(s), medians\n",
               o->agents, o->requests, o->tokens, o->time_scale, o->reps);
        printf("%-10s %12s %12s %12s %14s %14s\n", "", "ttft p50", "ttft p90",
               "total p50", "ttft p50", "total p50");
        printf("%-10s %12s %12s %12s %14s %14s\n", "", "wall ms", "wall ms", "wall ms",
               "model ms", "model ms");
        printf("%-10s %12.1f %12.1f %12.1f %14.0f %14.0f\n", "whole", med[F_WHOLE_TTFT],
               med[F_WHOLE_TTFT90], med[F_WHOLE_TOTAL], med[F_WHOLE_TTFT] * o->time_scale,
               med[F_WHOLE_TOTAL] * o->time_scale);
        printf("%-10s %12.1f %12.1f %12.1f %14.0f %14.0f\n", "streamed",
               med[F_STREAM_TTFT], med[F_STREAM_TTFT90], med[F_STREAM_TOTAL],
               med[F_STREAM_TTFT] * o->time_scale, med[F_STREAM_TOTAL] * o->time_scale);
        printf("streamed / whole ttft: %.3f\n", med[F_RATIO]);
        fflush(stdout);
    }
    if (errors > 0)
        fprintf(stderr, "lmstream: %d request(s) failed\n", errors);
    code = errors > 0 ? 1 : 0;
out:
    st_world_stop(&w);
    free(fig);
    return code;
}

/* ---- poll --------------------------------------------------------------------- */

/* Samples of one path, microseconds. */
typedef struct st_samples {
    double *v;
    size_t n, cap;
} st_samples;

static int st_add(st_samples *s, double us)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 1024;
        double *v = realloc(s->v, cap * sizeof(double));
        if (v == NULL)
            return -1;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = us;
    return 0;
}

typedef struct st_poller {
    const st_opts *o;
    st_samples *s;
    int64_t back; /* when the callback returned last (0: not yet) */
    long content; /* content bytes seen */
} st_poller;

/* Times each poll: from the previous callback's return (when agentlib
 * sends chat_next) to this call. Sleeps before returning, so the next
 * pieces wait in the daemon when it asks. */
static int st_poll_delta(int kind, const char *text, int index, const char *id,
                         const char *name, void *arg)
{
    st_poller *p = arg;
    int64_t now = kit_now_ns();
    (void)index;
    (void)id;
    (void)name;
    if (kind == LMSCHED_DELTA_CONTENT)
        p->content += (long)strlen(text);
    if (p->back != 0 && st_add(p->s, (double)(now - p->back) / 1e3) != 0)
        return 1;
    kit_sleep_ns((int64_t)(p->o->gap_ms * 1e6));
    p->back = kit_now_ns();
    return 0;
}

/* One stream through lmsched. Returns 0 or -1. */
static int st_poll_lmsched(const st_opts *o, lmsched_client *c,
                           const lmsched_request *req, st_samples *s)
{
    st_poller p = {.o = o, .s = s};
    lmsched_result *res = NULL;
    int rc = lmsched_chat_stream(c, req, ST_CALL_MS, st_poll_delta, &p, &res);
    bool ok = rc == LMSCHED_OK && lmsched_result_completion_tokens(res) == o->tokens &&
              p.content == (long)strlen(lmsched_result_content(res));
    if (!ok)
        fprintf(stderr, "lmstream: a stream through lmsched failed: %s: %s\n",
                lmsched_err_name(rc), lmsched_result_message(res));
    lmsched_result_free(res);
    return ok ? 0 : -1;
}

/* The first occurrence of needle (nlen bytes) in hay[0..len), or NULL. */
static char *st_find(char *hay, size_t len, const char *needle, size_t nlen)
{
    for (size_t i = 0; i + nlen <= len; i++)
        if (hay[i] == needle[0] && memcmp(hay + i, needle, nlen) == 0)
            return hay + i;
    return NULL;
}

/* Decodes the complete events at the start of buf[0..*len), drops them,
 * and counts content bytes and [DONE]. Returns the events decoded, or -1
 * on a malformed one. */
static int st_sse_take(char *buf, size_t *len, long *content, bool *done)
{
    char *p = buf, *end = buf + *len;
    int events = 0;
    for (;;) {
        char *sep = st_find(p, (size_t)(end - p), "\n\n", 2);
        if (sep == NULL)
            break;
        size_t n = (size_t)(sep - p);
        if (n >= 6 && memcmp(p, "data: ", 6) == 0) {
            if (n == 12 && memcmp(p + 6, "[DONE]", 6) == 0) {
                *done = true;
            } else {
                json_t *ev = json_loadb(p + 6, n - 6, 0, NULL);
                if (ev == NULL)
                    return -1;
                const json_t *t = json_object_get(
                    json_object_get(json_array_get(json_object_get(ev, "choices"), 0),
                                    "delta"),
                    "content");
                if (json_is_string(t))
                    *content += (long)json_string_length(t);
                json_decref(ev);
            }
            events++;
        }
        p = sep + 2;
    }
    memmove(buf, p, (size_t)(end - p));
    *len = (size_t)(end - p);
    return events;
}

/* One stream read directly from lmsim over HTTP/1.0. Returns 0 or -1. */
static int st_poll_direct(const st_opts *o, const st_world *w, const char *body,
                          st_samples *s)
{
    char url[160], head[512];
    size_t cap = 1 << 20, len = 0;
    char *buf = malloc(cap);
    long content = 0;
    bool done = false, in_body = false, first = true;
    int fd = -1, rc = -1;
    if (buf == NULL)
        return -1;
    snprintf(url, sizeof(url), "tcp://%s", w->backend + strlen("http://"));
    if ((fd = kit_net_connect(url)) < 0)
        goto out;
    int hn = snprintf(head, sizeof(head),
                      "POST /v1/chat/completions HTTP/1.0\r\nHost: 127.0.0.1\r\n"
                      "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
                      "Content-Length: %zu\r\n\r\n",
                      strlen(body));
    if (kit_net_send(fd, head, (size_t)hn) != hn ||
        kit_net_send(fd, body, strlen(body)) != (ssize_t)strlen(body))
        goto out;
    /* reads take what is there and return */
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0)
        goto out;
    while (!done) {
        /* a poll: wait for data only if none is there, read all there is,
         * decode the complete events */
        int64_t t0 = kit_now_ns();
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, ST_CALL_MS) <= 0)
            goto out;
        ssize_t got;
        do {
            if (cap - len < 65536) {
                char *nb = realloc(buf, cap * 2);
                if (nb == NULL)
                    goto out;
                buf = nb;
                cap *= 2;
            }
            got = recv(fd, buf + len, cap - len, 0);
            if (got > 0)
                len += (size_t)got;
        } while (got > 0);
        if (got < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
            goto out;
        if (got == 0 && len == 0)
            break; /* closed */
        if (!in_body) {
            char *hend = st_find(buf, len, "\r\n\r\n", 4);
            if (hend == NULL)
                continue;
            if (strncmp(buf, "HTTP/1.", 7) != 0 || strncmp(buf + 9, "200", 3) != 0) {
                fprintf(stderr, "lmstream: lmsim answered: %.40s\n", buf);
                goto out;
            }
            size_t hl = (size_t)(hend + 4 - buf);
            memmove(buf, hend + 4, len - hl);
            len -= hl;
            in_body = true;
        }
        int ev = st_sse_take(buf, &len, &content, &done);
        if (ev < 0)
            goto out;
        int64_t t1 = kit_now_ns();
        if (ev > 0) {
            /* the first read carries the prefill: not a poll */
            if (!first && st_add(s, (double)(t1 - t0) / 1e3) != 0)
                goto out;
            first = false;
            kit_sleep_ns((int64_t)(o->gap_ms * 1e6));
        }
        if (got == 0)
            break;
    }
    rc = done && content > 0 ? 0 : -1;
    if (rc != 0)
        fprintf(stderr, "lmstream: the direct stream ended early\n");
out:
    if (fd >= 0)
        close(fd);
    free(buf);
    return rc;
}

/* The body the daemon sends lmsim for our request (as lmoverhead's direct
 * client does): malloc'd, or NULL. */
static char *st_direct_body(const st_world *w, int tokens)
{
    char url[200];
    char *model = NULL, *s = NULL;
    snprintf(url, sizeof(url), "%s/v1/models", w->backend);
    json_t *models = kit_http_json("GET", url, NULL, 5000, NULL, NULL, 0);
    const char *id = json_string_value(
        json_object_get(json_array_get(json_object_get(models, "data"), 0), "id"));
    if (id != NULL)
        model = strdup(id);
    json_decref(models);
    json_t *o =
        json_pack("{s:[{s:s,s:s},{s:s,s:s}],s:i,s:b,s:{s:b},s:b}", "messages", "role",
                  "system", "content", st_system, "role", "user", "content",
                  "Stream a long answer.", "max_tokens", tokens, "stream", 1,
                  "stream_options", "include_usage", 1, "cache_prompt", 1);
    if (o != NULL && model != NULL)
        json_object_set_new(o, "model", json_string(model));
    if (o != NULL)
        s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    free(model);
    return s;
}

static int st_poll(const st_opts *o, const char *lmsim, const char *lmsched)
{
    char tps[32], tokens[32];
    snprintf(tps, sizeof(tps), "%g", o->decode_tps);
    snprintf(tokens, sizeof(tokens), "%d", o->tokens);
    const char *sim_args[] = {"--slots", "1", "--decode-tps", tps, "--reply-tokens",
                              tokens,    NULL};
    enum { P_DIRECT50, P_LMSCHED50, P_ADDED50, P_DIRECT99, P_LMSCHED99, P_ADDED99, P_N };
    static const char *const names[P_N] = {"direct_poll_p50_us",  "lmsched_poll_p50_us",
                                           "added_poll_p50_us",   "direct_poll_p99_us",
                                           "lmsched_poll_p99_us", "added_poll_p99_us"};
    double(*fig)[P_N] = calloc((size_t)o->reps, sizeof(*fig));
    double col[ST_MAX_REPS], med[P_N], lo[P_N], hi[P_N];
    st_world w = {0};
    lmsched_client *c = NULL;
    lmsched_request *req = NULL;
    char *body = NULL;
    int errors = 0, code = 1;
    size_t polls[2] = {0, 0};
    if (fig == NULL || st_world_start(&w, lmsim, lmsched, sim_args) != 0)
        goto out;
    if ((body = st_direct_body(&w, o->tokens)) == NULL ||
        lmsched_client_open(&c, w.url) != LMSCHED_OK ||
        lmsched_request_alloc(&req) != 0 ||
        lmsched_request_set_system(req, st_system) != LMSCHED_OK ||
        lmsched_request_add_message(req, "user", "Stream a long answer.") != LMSCHED_OK ||
        lmsched_request_set_max_tokens(req, o->tokens) != LMSCHED_OK ||
        lmsched_request_set_agent(req, "lmstream") != LMSCHED_OK) {
        fprintf(stderr, "lmstream: cannot set up the poll phase\n");
        goto out;
    }
    for (int r = 0; r < o->reps; r++) {
        st_samples s[2] = {{0}, {0}}; /* [0] direct, [1] lmsched */
        for (int k = 0; k < 2; k++) {
            int p = (k + r) % 2; /* odd repetitions run lmsched first */
            for (int i = 0; i < o->requests; i++) {
                int rc = p == 0 ? st_poll_direct(o, &w, body, &s[0])
                                : st_poll_lmsched(o, c, req, &s[1]);
                if (rc != 0)
                    errors++;
            }
        }
        polls[0] = s[0].n;
        polls[1] = s[1].n;
        double *f = fig[r];
        f[P_DIRECT50] = st_pct(s[0].v, s[0].n, 50);
        f[P_LMSCHED50] = st_pct(s[1].v, s[1].n, 50);
        f[P_ADDED50] = f[P_LMSCHED50] - f[P_DIRECT50];
        f[P_DIRECT99] = st_pct(s[0].v, s[0].n, 99);
        f[P_LMSCHED99] = st_pct(s[1].v, s[1].n, 99);
        f[P_ADDED99] = f[P_LMSCHED99] - f[P_DIRECT99];
        json_t *line = json_pack("{s:s,s:i,s:I,s:I}", "workload", "overhead-stream",
                                 "rep", r + 1, "direct_polls", (json_int_t)s[0].n,
                                 "lmsched_polls", (json_int_t)s[1].n);
        for (int k = 0; line != NULL && k < P_N; k++)
            json_object_set_new(line, names[k], st_fig(f[k], 0));
        if (line != NULL)
            st_print(line);
        json_decref(line);
        free(s[0].v);
        free(s[1].v);
    }
    for (int k = 0; k < P_N; k++) {
        for (int r = 0; r < o->reps; r++)
            col[r] = fig[r][k];
        med[k] = st_median(col, o->reps);
        lo[k] = col[0];
        hi[k] = col[o->reps - 1];
    }
    json_t *sum = json_pack(
        "{s:s,s:s,s:i,s:i,s:i,s:f,s:f,s:I,s:I,s:i}", "workload", "overhead-stream", "rep",
        "median", "reps", o->reps, "streams", o->requests, "tokens", o->tokens,
        "decode_tps", o->decode_tps, "gap_ms", o->gap_ms, "direct_polls",
        (json_int_t)polls[0], "lmsched_polls", (json_int_t)polls[1], "errors", errors);
    for (int k = 0; sum != NULL && k < P_N; k++) {
        char key[64];
        json_object_set_new(sum, names[k], st_fig(med[k], 0));
        snprintf(key, sizeof(key), "%s_min", names[k]);
        json_object_set_new(sum, key, st_fig(lo[k], 0));
        snprintf(key, sizeof(key), "%s_max", names[k]);
        json_object_set_new(sum, key, st_fig(hi[k], 0));
    }
    if (sum != NULL)
        st_print(sum);
    json_decref(sum);
    if (!o->json) {
        printf("\nlmsched streaming overhead: one poll with pieces waiting (lmsim %g "
               "tokens/s, %g ms between polls), %d streams of %d tokens per path; %d "
               "rep(s)\n",
               o->decode_tps, o->gap_ms, o->requests, o->tokens, o->reps);
        printf("%-7s %9s %9s %9s   %9s %9s %9s\n", "", "direct", "lmsched", "added",
               "direct", "lmsched", "added");
        printf("%-7s %9s %9s %9s   %9s %9s %9s\n", "rep", "p50 us", "p50 us", "p50 us",
               "p99 us", "p99 us", "p99 us");
        for (int r = 0; r <= o->reps + 2; r++) {
            const double *f = r < o->reps        ? fig[r]
                              : r == o->reps     ? med
                              : r == o->reps + 1 ? lo
                                                 : hi;
            char label[16];
            if (r < o->reps)
                snprintf(label, sizeof(label), "%d", r + 1);
            else
                snprintf(label, sizeof(label), "%s",
                         r == o->reps       ? "median"
                         : r == o->reps + 1 ? "min"
                                            : "max");
            printf("%-7s %9.0f %9.0f %9.0f   %9.0f %9.0f %9.0f\n", label, f[P_DIRECT50],
                   f[P_LMSCHED50], f[P_ADDED50], f[P_DIRECT99], f[P_LMSCHED99],
                   f[P_ADDED99]);
        }
        fflush(stdout);
    }
    if (errors > 0)
        fprintf(stderr, "lmstream: %d stream(s) failed\n", errors);
    code = errors > 0 ? 1 : 0;
out:
    lmsched_request_free(req);
    lmsched_client_close(c);
    st_world_stop(&w);
    free(body);
    free(fig);
    return code;
}

int main(int argc, char **argv)
{
    st_opts o;
    char lmsched[PATH_MAX], lmsim[PATH_MAX];
    int code;

    switch (st_parse(argc, argv, &o)) {
    case 0:
        break;
    case 1:
        return 0;
    default:
        return 2;
    }
    if (o.lmsched != NULL)
        snprintf(lmsched, sizeof(lmsched), "%s", o.lmsched);
    else if (kit_sibling_path("lmsched", lmsched, sizeof(lmsched)) != 0)
        lmsched[0] = '\0';
    if (o.lmsim != NULL)
        snprintf(lmsim, sizeof(lmsim), "%s", o.lmsim);
    else if (kit_sibling_path("lmsim", lmsim, sizeof(lmsim)) != 0)
        lmsim[0] = '\0';
    if (access(lmsched, X_OK) != 0 || access(lmsim, X_OK) != 0) {
        fprintf(stderr, "lmstream: cannot run %s; use --lmsched / --lmsim\n",
                access(lmsched, X_OK) != 0 ? "lmsched" : "lmsim");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return 1;
    code = o.mode == ST_TTFT ? st_ttft(&o, lmsim, lmsched) : st_poll(&o, lmsim, lmsched);
    curl_global_cleanup();
    return code;
}
