/*
 * lmoverhead - what lmsched itself adds to every request. It starts a
 * backend that answers at once (`lmsim --instant`, or takes --backend) and
 * one `lmsched serve --http` in front of it, then measures, side by side
 * in one run and against the same backend, three paths: the backend called
 * directly with libcurl, through agentlib and the daemon's nng socket, and
 * through the daemon's OpenAI-compatible HTTP front door with libcurl:
 *
 *   - one client, sequential requests: p50 and p99 latency;
 *   - N concurrent clients (default 64), closed loop: requests per second.
 *
 * It prints one JSON object per repetition and one with the medians (and
 * the spread) over the repetitions, then a table (docs/benchmarks.md,
 * "Overhead"). It uses only the public agentlib API and the lmsched and
 * lmsim commands, so it measures whatever the daemon's internals become.
 *
 * Design notes
 * - The HTTP client is the direct one pointed at the daemon's front door: an
 *   OpenAI client's body (model, messages, max_tokens, stream with usage),
 *   keep-alive, the event stream read to [DONE] and every chunk decoded.
 * - The direct client does what the daemon does for a request: POST
 *   /v1/chat/completions with the daemon's body ("stream": true,
 *   stream_options.include_usage, cache_prompt, the model the backend
 *   reports), on a keep-alive connection, reading the whole event stream to
 *   [DONE] and decoding every chunk (content and usage), as an agent talking
 *   to the server itself would have to. Both paths check every answer.
 * - Concurrency is N threads per path, each a closed loop of blocking calls:
 *   direct, each thread its own curl easy handle (its own keep-alive
 *   connection); through lmsched, each thread its own lmsched_client and
 *   lmsched_chat. That is N agent processes' worth of clients in one
 *   process (agents in practice are separate processes, each with its own
 *   client), and the same thread structure on both sides.
 * - The daemon gets --max-concurrent N and a memory budget that does not
 *   bind, and lmsim reports N slots, so nothing caps concurrency below N.
 * - Each repetition runs the paths in turn, each starting one later than
 *   the last, so a drift of the noisy machine does not always favour one
 *   side. Each phase warms up first.
 * - CPU time per request of each process (this one, the daemon, lmsim;
 *   from getrusage and the test kit's process figures, tests/kit/pstat.h,
 *   around the measured part of each phase) is reported too: on a small
 *   machine it is what bounds the throughput, and it says which side a
 *   change has to make cheaper.
 *
 * Exit status: 0 after a run in which every request succeeded, 1 when
 * something could not be started or requests failed, 2 on a usage error.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>

#include "kit/clock.h"
#include "kit/daemon.h"
#include "kit/http.h"
#include "kit/net.h"
#include "kit/proc.h"
#include "kit/pstat.h"
#include "kit/sim.h"
#include "lmsched/agent.h"
#include "scheduler/util/num.h"

#define OV_MAX_CLIENTS 256
#define OV_MAX_ARGS 32
#define OV_MAX_REPS 99
/* (An answer over KIT_HTTP_MAX_BODY fails the call: an instant answer is a
 * few KiB.) */
/* Hang guards only: a healthy run never gets close. */
#define OV_START_MS 15000
#define OV_STOP_MS 40000
#define OV_CALL_TIMEOUT_MS 30000

static const char ov_system[] = "You are the lmsched overhead benchmark. Answer briefly.";
static const char ov_user[] = "Say something short.";

typedef struct ov_opts {
    const char *backend; /* NULL: start lmsim --instant */
    const char *lmsched, *lmsim;
    const char *daemon_args[OV_MAX_ARGS + 1]; /* NULL-terminated */
    int ndaemon_args;
    int clients;
    int requests;                   /* sequential, measured, per path and repetition */
    int warmup;                     /* sequential warm-up requests */
    double seconds, warmup_seconds; /* concurrent, per path and repetition */
    int reps;
    int max_tokens;
    bool json;
    bool sequential, throughput; /* --phase */
    bool paths[3];               /* --path: [OV_DIRECT], [OV_LMSCHED], [OV_HTTP] */
} ov_opts;

static void ov_usage(FILE *out)
{
    fprintf(
        out,
        "usage: lmoverhead [--clients N] [--requests N] [--warmup N] [--seconds S]\n"
        "                  [--warmup-seconds S] [--reps N] [--max-tokens N]\n"
        "                  [--backend URL] [--lmsim PATH] [--lmsched PATH]\n"
        "                  [--daemon-arg ARG]... [--phase both|sequential|throughput]\n"
        "                  [--path all|direct|lmsched|http[,...]] [--json]\n"
        "\n"
        "Measures the latency and throughput lmsched adds, calling a backend that\n"
        "answers at once directly (libcurl, keep-alive), through agentlib and\n"
        "`lmsched serve`'s nng socket, and through its OpenAI-compatible HTTP front\n"
        "door (libcurl), side by side (docs/benchmarks.md, \"Overhead\").\n"
        "\n"
        "  --clients N         concurrent clients of the throughput phase (default 64)\n"
        "  --requests N        sequential requests measured per path (default 2000)\n"
        "  --warmup N          sequential warm-up requests per path (default 200)\n"
        "  --seconds S         throughput measured per path (default 3)\n"
        "  --warmup-seconds S  throughput warm-up per path (default 1)\n"
        "  --reps N            repetitions; medians are reported (default 5)\n"
        "  --max-tokens N      reply tokens asked for (default 4)\n"
        "  --backend URL       use this backend instead of starting `lmsim --instant`\n"
        "  --lmsim PATH        the lmsim command (default: next to lmoverhead)\n"
        "  --lmsched PATH      the lmsched command (default: next to lmoverhead)\n"
        "  --daemon-arg ARG    one more argument for `lmsched serve` (repeatable)\n"
        "  --phase P           run only the sequential or the throughput phase\n"
        "                      (default both; for profiling the daemon under one load)\n"
        "  --path P            measure only these paths: direct, lmsched (the nng\n"
        "                      socket), http, comma-separated; both: direct,lmsched\n"
        "                      (default all)\n"
        "  --json              print only the JSON lines, not the table\n");
}

static int ov_num(const char *flag, const char *s, double lo, double hi, bool whole,
                  double *out)
{
    double v;
    if (num_parse_double(s, lo, hi, false, false, &v) != 0 || (whole && v != floor(v))) {
        fprintf(stderr, "lmoverhead: %s: expected a%s number from %g to %g, got '%s'\n",
                flag, whole ? " whole" : "", lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* --path: "all", "both" (direct and lmsched, as before there was HTTP), or
 * a comma-separated list of direct, lmsched, http. Returns 0 or -1. */
static int ov_paths(const char *arg, bool paths[3])
{
    static const char *const names[3] = {"direct", "lmsched", "http"};
    paths[0] = paths[1] = paths[2] = false;
    if (strcmp(arg, "all") == 0 || strcmp(arg, "both") == 0) {
        paths[0] = paths[1] = true;
        paths[2] = arg[0] == 'a';
        return 0;
    }
    for (const char *p = arg; *p != '\0';) {
        size_t n = strcspn(p, ",");
        int k = -1;
        for (int i = 0; i < 3; i++)
            if (strlen(names[i]) == n && strncmp(p, names[i], n) == 0)
                k = i;
        if (k < 0)
            return -1;
        paths[k] = true;
        p += n + (p[n] == ',');
    }
    return paths[0] || paths[1] || paths[2] ? 0 : -1;
}

/* Returns 0 to run, 1 after --help, 2 on a usage error (reported). */
static int ov_parse(int argc, char **argv, ov_opts *o)
{
    enum {
        OPT_CLIENTS = 256,
        OPT_REQUESTS,
        OPT_WARMUP,
        OPT_SECONDS,
        OPT_WARMUP_SECONDS,
        OPT_REPS,
        OPT_MAX_TOKENS,
        OPT_BACKEND,
        OPT_LMSIM,
        OPT_LMSCHED,
        OPT_DAEMON_ARG,
        OPT_JSON,
        OPT_PHASE,
        OPT_PATH,
    };
    static const struct option opts[] = {
        {"clients", required_argument, NULL, OPT_CLIENTS},
        {"requests", required_argument, NULL, OPT_REQUESTS},
        {"warmup", required_argument, NULL, OPT_WARMUP},
        {"seconds", required_argument, NULL, OPT_SECONDS},
        {"warmup-seconds", required_argument, NULL, OPT_WARMUP_SECONDS},
        {"reps", required_argument, NULL, OPT_REPS},
        {"max-tokens", required_argument, NULL, OPT_MAX_TOKENS},
        {"backend", required_argument, NULL, OPT_BACKEND},
        {"lmsim", required_argument, NULL, OPT_LMSIM},
        {"lmsched", required_argument, NULL, OPT_LMSCHED},
        {"daemon-arg", required_argument, NULL, OPT_DAEMON_ARG},
        {"json", no_argument, NULL, OPT_JSON},
        {"phase", required_argument, NULL, OPT_PHASE},
        {"path", required_argument, NULL, OPT_PATH},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    double v;
    int c;
    *o = (ov_opts){.clients = 64,
                   .requests = 2000,
                   .warmup = 200,
                   .seconds = 3,
                   .warmup_seconds = 1,
                   .reps = 5,
                   .max_tokens = 4,
                   .sequential = true,
                   .throughput = true,
                   .paths = {true, true, true}};
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case OPT_CLIENTS:
            if (ov_num("--clients", optarg, 1, OV_MAX_CLIENTS, true, &v) != 0)
                return 2;
            o->clients = (int)v;
            break;
        case OPT_REQUESTS:
            if (ov_num("--requests", optarg, 1, 10000000, true, &v) != 0)
                return 2;
            o->requests = (int)v;
            break;
        case OPT_WARMUP:
            if (ov_num("--warmup", optarg, 0, 10000000, true, &v) != 0)
                return 2;
            o->warmup = (int)v;
            break;
        case OPT_SECONDS:
            if (ov_num("--seconds", optarg, 0.1, 3600, false, &v) != 0)
                return 2;
            o->seconds = v;
            break;
        case OPT_WARMUP_SECONDS:
            if (ov_num("--warmup-seconds", optarg, 0, 3600, false, &v) != 0)
                return 2;
            o->warmup_seconds = v;
            break;
        case OPT_REPS:
            if (ov_num("--reps", optarg, 1, OV_MAX_REPS, true, &v) != 0)
                return 2;
            o->reps = (int)v;
            break;
        case OPT_MAX_TOKENS:
            if (ov_num("--max-tokens", optarg, 1, 4096, true, &v) != 0)
                return 2;
            o->max_tokens = (int)v;
            break;
        case OPT_BACKEND:
            o->backend = optarg;
            break;
        case OPT_LMSIM:
            o->lmsim = optarg;
            break;
        case OPT_LMSCHED:
            o->lmsched = optarg;
            break;
        case OPT_DAEMON_ARG:
            if (o->ndaemon_args == OV_MAX_ARGS) {
                fprintf(stderr, "lmoverhead: at most %d --daemon-arg\n", OV_MAX_ARGS);
                return 2;
            }
            o->daemon_args[o->ndaemon_args++] = optarg;
            break;
        case OPT_JSON:
            o->json = true;
            break;
        case OPT_PHASE:
            o->sequential = strcmp(optarg, "throughput") != 0;
            o->throughput = strcmp(optarg, "sequential") != 0;
            if (strcmp(optarg, "both") != 0 && o->sequential == o->throughput) {
                fprintf(stderr,
                        "lmoverhead: --phase must be both, sequential or throughput\n");
                return 2;
            }
            break;
        case OPT_PATH:
            if (ov_paths(optarg, o->paths) != 0) {
                fprintf(stderr, "lmoverhead: --path must be all, both, or direct, lmsched "
                                "and http separated by commas\n");
                return 2;
            }
            break;
        case 'h':
            ov_usage(stdout);
            return 1;
        default:
            fprintf(stderr, "lmoverhead: %s '%s' (see --help)\n",
                    c == ':' ? "option needs a value" : "unknown option",
                    argv[optind - 1]);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "lmoverhead: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    return 0;
}

/* ---- HTTP (libcurl) --------------------------------------------------------- */

/* The model the backend serves (data[0].id of GET /v1/models, which the
 * daemon also learns and then names in its requests), or NULL. */
static char *ov_backend_model(const char *base)
{
    char url[1024];
    char *model = NULL;
    snprintf(url, sizeof(url), "%s/v1/models", base);
    json_t *doc = kit_http_json("GET", url, NULL, 5000, NULL, NULL, 0);
    if (doc != NULL) {
        const char *id = json_string_value(
            json_object_get(json_array_get(json_object_get(doc, "data"), 0), "id"));
        if (id != NULL)
            model = strdup(id);
    }
    json_decref(doc);
    return model;
}

/* The body the daemon sends for our request (scheduler/openai.c): system
 * prompt first, then the user message, max_tokens, streaming with usage,
 * cache_prompt. Malloc'd, or NULL. */
static char *ov_direct_body(const char *model, int max_tokens)
{
    json_t *o = json_object();
    char *s = NULL;
    if (o == NULL)
        return NULL;
    if (model != NULL)
        json_object_set_new(o, "model", json_string(model));
    json_object_set_new(o, "messages",
                        json_pack("[{s:s,s:s},{s:s,s:s}]", "role", "system", "content",
                                  ov_system, "role", "user", "content", ov_user));
    json_object_set_new(o, "max_tokens", json_integer(max_tokens));
    json_object_set_new(o, "stream", json_true());
    json_object_set_new(o, "stream_options", json_pack("{s:b}", "include_usage", 1));
    json_object_set_new(o, "cache_prompt", json_true());
    if (json_object_size(o) >= 5)
        s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    return s;
}

/* The body an OpenAI client sends the daemon's front door for the same
 * request: model, messages, max_tokens, streamed with usage. Malloc'd, or
 * NULL. */
static char *ov_http_body(const char *model, int max_tokens)
{
    json_t *o = json_pack("{s:s,s:[{s:s,s:s},{s:s,s:s}],s:i,s:b,s:{s:b}}", "model",
                          model != NULL ? model : "local", "messages", "role", "system",
                          "content", ov_system, "role", "user", "content", ov_user,
                          "max_tokens", max_tokens, "stream", 1, "stream_options",
                          "include_usage", 1);
    char *s = o != NULL ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(o);
    return s;
}

/* One direct client: a curl easy handle that keeps its connection. */
typedef struct ov_direct {
    CURL *h;
    struct curl_slist *hdrs;
    kit_http_resp buf; /* the body only */
} ov_direct;

static void ov_direct_fini(ov_direct *d)
{
    curl_easy_cleanup(d->h);
    curl_slist_free_all(d->hdrs);
    kit_http_resp_fini(&d->buf);
    memset(d, 0, sizeof(*d));
}

/* url and body must outlive the handle (curl keeps POSTFIELDS' pointer). */
static int ov_direct_init(ov_direct *d, const char *url, const char *body)
{
    memset(d, 0, sizeof(*d));
    if ((d->h = curl_easy_init()) == NULL)
        return -1;
    d->hdrs = curl_slist_append(NULL, "Content-Type: application/json");
    if (d->hdrs != NULL)
        d->hdrs =
            curl_slist_append(d->hdrs, "Accept: text/event-stream, application/json");
    if (d->hdrs == NULL) {
        ov_direct_fini(d);
        return -1;
    }
    curl_easy_setopt(d->h, CURLOPT_URL, url);
    curl_easy_setopt(d->h, CURLOPT_HTTPHEADER, d->hdrs);
    curl_easy_setopt(d->h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(d->h, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    curl_easy_setopt(d->h, CURLOPT_WRITEFUNCTION, kit_http_body_cb);
    curl_easy_setopt(d->h, CURLOPT_WRITEDATA, &d->buf);
    curl_easy_setopt(d->h, CURLOPT_TIMEOUT_MS, (long)OV_CALL_TIMEOUT_MS);
    curl_easy_setopt(d->h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(d->h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(d->h, CURLOPT_PROXY, "");
    return 0;
}

/* Decodes an event stream as an agent would: every "data:" event's JSON,
 * the content of its delta, the usage chunk, [DONE] last. Returns the
 * content bytes, or -1 when the stream is not a complete answer. */
static long ov_sse_decode(char *p, size_t len)
{
    char *end = p + len;
    long content = 0;
    bool usage = false, done = false;
    while (p < end) {
        char *sep = strstr(p, "\n\n");
        size_t n = sep != NULL ? (size_t)(sep - p) : (size_t)(end - p);
        if (n >= 6 && memcmp(p, "data: ", 6) == 0) {
            if (done)
                return -1; /* something after [DONE] */
            if (n == 12 && memcmp(p + 6, "[DONE]", 6) == 0) {
                done = true;
            } else {
                json_t *ev = json_loadb(p + 6, n - 6, 0, NULL);
                if (ev == NULL)
                    return -1;
                const json_t *ch = json_array_get(json_object_get(ev, "choices"), 0);
                const json_t *text =
                    json_object_get(json_object_get(ch, "delta"), "content");
                if (json_is_string(text))
                    content += (long)json_string_length(text);
                if (json_is_integer(json_object_get(json_object_get(ev, "usage"),
                                                    "completion_tokens")))
                    usage = true;
                json_decref(ev);
            }
        }
        p += n + (sep != NULL ? 2 : 0);
    }
    return done && usage && content > 0 ? content : -1;
}

/* One request, directly. Returns 0 or -1. */
static int ov_direct_call(ov_direct *d)
{
    long status = 0;
    d->buf.len = 0;
    d->buf.toobig = false;
    if (curl_easy_perform(d->h) != CURLE_OK ||
        curl_easy_getinfo(d->h, CURLINFO_RESPONSE_CODE, &status) != CURLE_OK ||
        status != 200 || d->buf.body == NULL)
        return -1;
    return ov_sse_decode(d->buf.body, d->buf.len) > 0 ? 0 : -1;
}

/* ---- through lmsched ---------------------------------------------------- */

/* One request through the daemon. Returns 0 or -1. */
static int ov_lmsched_call(lmsched_client *c, const lmsched_request *req)
{
    lmsched_result *res = NULL;
    int rc = lmsched_chat(c, req, OV_CALL_TIMEOUT_MS, &res);
    const char *content = res != NULL ? lmsched_result_content(res) : NULL;
    bool ok = rc == LMSCHED_OK && content != NULL && content[0] != '\0';
    lmsched_result_free(res);
    return ok ? 0 : -1;
}

typedef struct ov_daemon {
    kit_proc proc;
    char dir[64];
    char url[128];
    char http[64]; /* the front door's chat URL */
} ov_daemon;

/* SIGTERM, then SIGKILL after OV_STOP_MS. */
static void ov_child_stop(kit_proc *p, const char *what)
{
    if (p->pid > 0 && kit_proc_stop(p, SIGTERM, OV_STOP_MS) < 0)
        fprintf(stderr, "lmoverhead: %s did not stop on SIGTERM; killed it\n", what);
}

static void ov_daemon_stop(ov_daemon *d)
{
    ov_child_stop(&d->proc, "the daemon");
    if (d->dir[0] != '\0') {
        char sock[128];
        snprintf(sock, sizeof(sock), "%s/o.sock", d->dir);
        unlink(sock);
        rmdir(d->dir);
        d->dir[0] = '\0';
    }
}

/* Starts `lmsched serve` in front of backend and waits until it answers
 * and has probed the backend. Returns 0 or -1 (reported). */
static int ov_daemon_start(ov_daemon *d, const ov_opts *o, const char *lmsched,
                           const char *backend)
{
    char conc[16], why[256];
    memset(d, 0, sizeof(*d));
    strcpy(d->dir, "/tmp/lmoverhead.XXXXXX");
    if (mkdtemp(d->dir) == NULL) {
        fprintf(stderr, "lmoverhead: mkdtemp: %s\n", strerror(errno));
        d->dir[0] = '\0';
        return -1;
    }
    snprintf(d->url, sizeof(d->url), "ipc://%s/o.sock", d->dir);
    snprintf(conc, sizeof(conc), "%d", o->clients);
    char addr[32], conns[16];
    int port = kit_net_free_port();
    if (port <= 0) {
        fprintf(stderr, "lmoverhead: no free port for --http\n");
        ov_daemon_stop(d);
        return -1;
    }
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
    snprintf(d->http, sizeof(d->http), "http://%s/v1/chat/completions", addr);
    snprintf(conns, sizeof(conns), "%d", 2 * o->clients + 16);
    /* Nothing may cap concurrency below the clients: not the backend's
     * slots, not the memory budget (a made-up 1 TiB machine, 1 MiB of KV
     * per request), not the queue or the per-connection limit (defaults
     * 1024 and 256). Later --daemon-arg flags override these. */
    const char *args[] = {"--max-concurrent", conc, "--total-ram", "1T", "--kv-per-request",
                          "1M", "--http", addr, "--http-max-conns", conns, NULL};
    kit_daemon_opts k = {
        .bin = lmsched,
        .listen = d->url,
        .backend = backend,
        .log_level = "warn",
        .args = args,
        .more = o->daemon_args,
        .out = KIT_OUT_STDERR, /* its stdout would mix with the JSON lines */
        .probed = true,
        .timeout_ms = OV_START_MS,
    };
    if (kit_daemon_start(&d->proc, &k, why, sizeof(why)) != 0) {
        fprintf(stderr, "lmoverhead: %s (backend %s)\n", why, backend);
        ov_daemon_stop(d);
        return -1;
    }
    return 0;
}

/* `lmsim --instant` on a free port, reporting `slots` slots. Returns 0 and
 * sets url, or -1 (reported). */
static int ov_lmsim_start(kit_proc *p, char *dir, const char *lmsim, int slots, char *url,
                          size_t urllen)
{
    char port_file[96], nslots[16], why[256];
    strcpy(dir, "/tmp/lmoverhead-sim.XXXXXX");
    if (mkdtemp(dir) == NULL) {
        fprintf(stderr, "lmoverhead: mkdtemp: %s\n", strerror(errno));
        dir[0] = '\0';
        return -1;
    }
    snprintf(port_file, sizeof(port_file), "%s/port", dir);
    snprintf(nslots, sizeof(nslots), "%d", slots < 4 ? 4 : slots);
    const char *args[] = {"--instant", "--slots", nslots, NULL};
    kit_sim_opts k = {
        .bin = lmsim,
        .port_file = port_file,
        .log_level = "warn",
        .args = args,
        .out = KIT_OUT_QUIET, /* its one stdout line, the URL, is in the JSON */
        .timeout_ms = OV_START_MS,
    };
    int port = kit_sim_start(p, &k, why, sizeof(why));
    if (port <= 0) {
        fprintf(stderr, "lmoverhead: %s\n", why);
        return -1;
    }
    snprintf(url, urllen, "http://127.0.0.1:%d", port);
    return 0;
}

static void ov_lmsim_stop(kit_proc *p, char *dir)
{
    ov_child_stop(p, "lmsim");
    if (dir[0] != '\0') {
        char port_file[96];
        snprintf(port_file, sizeof(port_file), "%s/port", dir);
        unlink(port_file);
        rmdir(dir);
        dir[0] = '\0';
    }
}

/* ---- the phases ------------------------------------------------------------ */

typedef enum ov_path { OV_DIRECT, OV_LMSCHED, OV_HTTP } ov_path;
#define OV_PATHS 3

/* Everything both paths need, built once for the whole run. */
typedef struct ov_bench {
    const ov_opts *o;
    char url[1024];           /* backend + /v1/chat/completions */
    char *body;               /* the direct request body */
    ov_direct *direct;        /* o->clients handles */
    char http_url[128];       /* the daemon's front door */
    char *http_body;          /* the HTTP client's body */
    ov_direct *http;          /* o->clients handles on the front door */
    lmsched_client **clients; /* o->clients handles */
    lmsched_request *req;
    pid_t daemon_pid, backend_pid; /* backend_pid 0: not ours */
    atomic_bool stop;
} ov_bench;

/* CPU time used so far, microseconds: this process (the clients), the
 * daemon, the backend (-1 when unknown). Per-request CPU of each side is
 * what bounds throughput on a small machine. */
typedef struct ov_cpu {
    double client, daemon, backend;
} ov_cpu;

static ov_cpu ov_cpu_now(const ov_bench *b)
{
    struct rusage ru;
    ov_cpu c = {-1, -1, -1};
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        c.client = (double)ru.ru_utime.tv_sec * 1e6 + (double)ru.ru_utime.tv_usec +
                   (double)ru.ru_stime.tv_sec * 1e6 + (double)ru.ru_stime.tv_usec;
    c.daemon = b->daemon_pid > 0 ? kit_pstat_cpu_us(b->daemon_pid) : -1;
    c.backend = b->backend_pid > 0 ? kit_pstat_cpu_us(b->backend_pid) : -1;
    return c;
}

/* CPU microseconds per request between two samples (NaN when unknown). */
static ov_cpu ov_cpu_per_req(ov_cpu a, ov_cpu z, double requests)
{
    ov_cpu c;
    c.client = a.client >= 0 && z.client >= 0 ? (z.client - a.client) / requests : NAN;
    c.daemon = a.daemon >= 0 && z.daemon >= 0 ? (z.daemon - a.daemon) / requests : NAN;
    c.backend =
        a.backend >= 0 && z.backend >= 0 ? (z.backend - a.backend) / requests : NAN;
    return c;
}

static int ov_call(ov_bench *b, ov_path path, int i)
{
    return path == OV_DIRECT ? ov_direct_call(&b->direct[i])
           : path == OV_HTTP ? ov_direct_call(&b->http[i])
                             : ov_lmsched_call(b->clients[i], b->req);
}

typedef struct ov_lat {
    double p50, p99, mean;
    ov_cpu cpu; /* per request */
} ov_lat;

static int ov_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted v. */
static double ov_rank(const double *v, size_t n, double p)
{
    size_t k = (size_t)ceil(p / 100.0 * (double)n);
    return v[k > 0 ? k - 1 : 0];
}

/* One client, one request at a time: warm-up, then o->requests timed ones
 * into lat (us). Returns the number of failed requests. */
static int ov_sequential(ov_bench *b, ov_path path, double *lat, ov_lat *out)
{
    int errors = 0;
    double sum = 0;
    for (int i = 0; i < b->o->warmup; i++)
        errors += ov_call(b, path, 0) != 0;
    ov_cpu c0 = ov_cpu_now(b);
    for (int i = 0; i < b->o->requests; i++) {
        int64_t t0 = kit_now_ns();
        errors += ov_call(b, path, 0) != 0;
        lat[i] = (double)(kit_now_ns() - t0) / 1e3;
        sum += lat[i];
    }
    out->cpu = ov_cpu_per_req(c0, ov_cpu_now(b), b->o->requests);
    qsort(lat, (size_t)b->o->requests, sizeof(*lat), ov_cmp_double);
    out->p50 = ov_rank(lat, (size_t)b->o->requests, 50);
    out->p99 = ov_rank(lat, (size_t)b->o->requests, 99);
    out->mean = sum / b->o->requests;
    return errors;
}

/* A client thread of the throughput phase; counters on their own cache
 * line so the threads do not share one. */
typedef struct ov_worker {
    _Alignas(64) atomic_uint_fast64_t done;
    atomic_uint_fast64_t errors;
    ov_bench *b;
    ov_path path;
    int index;
    pthread_t thread;
} ov_worker;

static void *ov_worker_main(void *arg)
{
    ov_worker *w = arg;
    while (!atomic_load_explicit(&w->b->stop, memory_order_relaxed)) {
        if (ov_call(w->b, w->path, w->index) != 0) {
            atomic_fetch_add_explicit(&w->errors, 1, memory_order_relaxed);
            kit_sleep_ms(1); /* a dead path must not spin */
        } else {
            atomic_fetch_add_explicit(&w->done, 1, memory_order_relaxed);
        }
    }
    return NULL;
}

static uint64_t ov_sum_done(ov_worker *w, int n)
{
    uint64_t s = 0;
    for (int i = 0; i < n; i++)
        s += atomic_load_explicit(&w[i].done, memory_order_relaxed);
    return s;
}

/* o->clients closed-loop clients for warmup_seconds, then counted for
 * seconds. Returns requests per second, or -1 if the threads could not
 * start; *errors gets the failed requests, *cpu the CPU per request. */
static double ov_concurrent(ov_bench *b, ov_path path, uint64_t *errors, ov_cpu *cpu)
{
    int n = b->o->clients, started = 0;
    double rps = -1;
    ov_worker *w = aligned_alloc(64, sizeof(*w) * (size_t)n);
    *errors = 0;
    *cpu = (ov_cpu){NAN, NAN, NAN};
    if (w == NULL)
        return -1;
    atomic_store(&b->stop, false);
    for (int i = 0; i < n; i++) {
        atomic_init(&w[i].done, 0);
        atomic_init(&w[i].errors, 0);
        w[i].b = b;
        w[i].path = path;
        w[i].index = i;
        if (pthread_create(&w[i].thread, NULL, ov_worker_main, &w[i]) != 0)
            break;
        started++;
    }
    if (started == n) {
        kit_sleep_ns((int64_t)(b->o->warmup_seconds * 1e9));
        ov_cpu c0 = ov_cpu_now(b);
        int64_t t0 = kit_now_ns();
        uint64_t d0 = ov_sum_done(w, n);
        kit_sleep_ns((int64_t)(b->o->seconds * 1e9));
        int64_t t1 = kit_now_ns();
        uint64_t d1 = ov_sum_done(w, n);
        ov_cpu c1 = ov_cpu_now(b);
        rps = (double)(d1 - d0) / ((double)(t1 - t0) / 1e9);
        *cpu = ov_cpu_per_req(c0, c1, d1 > d0 ? (double)(d1 - d0) : NAN);
    } else {
        fprintf(stderr, "lmoverhead: cannot start %d client threads\n", n);
    }
    atomic_store(&b->stop, true);
    for (int i = 0; i < started; i++) {
        pthread_join(w[i].thread, NULL);
        *errors += atomic_load(&w[i].errors);
    }
    free(w);
    return rps;
}

/* ---- figures ---------------------------------------------------------------- */

/* The figures of one repetition, in the order of the JSON fields. */
enum {
    OV_DIRECT_P50,
    OV_LMSCHED_P50,
    OV_ADDED_P50,
    OV_DIRECT_P99,
    OV_LMSCHED_P99,
    OV_ADDED_P99,
    OV_DIRECT_MEAN,
    OV_LMSCHED_MEAN,
    OV_DIRECT_RPS,
    OV_LMSCHED_RPS,
    OV_RATIO,
    /* The HTTP front door, against the same direct figures. */
    OV_HTTP_P50,
    OV_ADDED_HTTP_P50,
    OV_HTTP_P99,
    OV_ADDED_HTTP_P99,
    OV_HTTP_MEAN,
    OV_HTTP_RPS,
    OV_HTTP_RATIO,
    OV_NMAIN, /* the figures above get a min and max in the summary */
    /* CPU microseconds per request, sequential phase then throughput phase:
     * the clients (this process), the daemon, the backend. */
    OV_SEQ_DIRECT_CLIENT_CPU = OV_NMAIN,
    OV_SEQ_DIRECT_BACKEND_CPU,
    OV_SEQ_LMSCHED_CLIENT_CPU,
    OV_SEQ_LMSCHED_DAEMON_CPU,
    OV_SEQ_LMSCHED_BACKEND_CPU,
    OV_TPUT_DIRECT_CLIENT_CPU,
    OV_TPUT_DIRECT_BACKEND_CPU,
    OV_TPUT_LMSCHED_CLIENT_CPU,
    OV_TPUT_LMSCHED_DAEMON_CPU,
    OV_TPUT_LMSCHED_BACKEND_CPU,
    OV_SEQ_HTTP_CLIENT_CPU,
    OV_SEQ_HTTP_DAEMON_CPU,
    OV_SEQ_HTTP_BACKEND_CPU,
    OV_TPUT_HTTP_CLIENT_CPU,
    OV_TPUT_HTTP_DAEMON_CPU,
    OV_TPUT_HTTP_BACKEND_CPU,
    OV_NFIG
};

static const char *const ov_fig_names[OV_NFIG] = {
    "direct_p50_us",
    "lmsched_p50_us",
    "added_p50_us",
    "direct_p99_us",
    "lmsched_p99_us",
    "added_p99_us",
    "direct_mean_us",
    "lmsched_mean_us",
    "direct_rps",
    "lmsched_rps",
    "throughput_ratio",
    "http_p50_us",
    "added_http_p50_us",
    "http_p99_us",
    "added_http_p99_us",
    "http_mean_us",
    "http_rps",
    "http_throughput_ratio",
    "seq_direct_client_cpu_us",
    "seq_direct_backend_cpu_us",
    "seq_lmsched_client_cpu_us",
    "seq_lmsched_daemon_cpu_us",
    "seq_lmsched_backend_cpu_us",
    "tput_direct_client_cpu_us",
    "tput_direct_backend_cpu_us",
    "tput_lmsched_client_cpu_us",
    "tput_lmsched_daemon_cpu_us",
    "tput_lmsched_backend_cpu_us",
    "seq_http_client_cpu_us",
    "seq_http_daemon_cpu_us",
    "seq_http_backend_cpu_us",
    "tput_http_client_cpu_us",
    "tput_http_daemon_cpu_us",
    "tput_http_backend_cpu_us",
};

static json_t *ov_fig_json(int k, double v)
{
    if (!(v == v)) /* NaN: not measured */
        return json_null();
    if (k == OV_RATIO || k == OV_HTTP_RATIO)
        return json_real(round(v * 1000) / 1000);
    return json_integer((json_int_t)llround(v));
}

static void ov_print_json(json_t *o)
{
    char *line =
        json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(12));
    if (line != NULL)
        printf("%s\n", line);
    free(line);
    fflush(stdout);
}

static double ov_median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), ov_cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* One table cell: v with decimals, or "-" when not measured. */
static const char *ov_cell(char *buf, size_t len, double v, int decimals)
{
    if (v == v)
        snprintf(buf, len, "%.*f", decimals, v);
    else
        snprintf(buf, len, "-");
    return buf;
}

/* A row of the table of a path through lmsched (OV_LMSCHED or OV_HTTP)
 * beside the direct one. */
static void ov_table_row(const char *label, const double *f, ov_path path)
{
    static const int nng[] = {OV_DIRECT_P50, OV_LMSCHED_P50, OV_ADDED_P50,
                              OV_DIRECT_P99, OV_LMSCHED_P99, OV_ADDED_P99,
                              OV_DIRECT_RPS, OV_LMSCHED_RPS, OV_RATIO};
    static const int http[] = {OV_DIRECT_P50, OV_HTTP_P50, OV_ADDED_HTTP_P50,
                               OV_DIRECT_P99, OV_HTTP_P99, OV_ADDED_HTTP_P99,
                               OV_DIRECT_RPS, OV_HTTP_RPS, OV_HTTP_RATIO};
    static const int width[] = {8, 8, 8, 10, 8, 8, 11, 9, 7};
    const int *cols = path == OV_HTTP ? http : nng;
    char cell[32];
    printf("%-7s", label);
    for (size_t i = 0; i < sizeof(width) / sizeof(width[0]); i++)
        printf(" %*s", width[i],
               ov_cell(cell, sizeof(cell), f[cols[i]], i == 8 ? 3 : 0));
    printf("\n");
}

/* Runs every repetition and prints the lines. Returns 0, or 1 when a
 * request failed or a phase could not run. */
static int ov_run(ov_bench *b, const char *backend_kind, const char *backend)
{
    const ov_opts *o = b->o;
    double(*fig)[OV_NFIG] = calloc((size_t)o->reps, sizeof(*fig));
    double *lat = malloc(sizeof(double) * (size_t)o->requests);
    double med[OV_NFIG], lo[OV_NFIG], hi[OV_NFIG], col[OV_MAX_REPS];
    uint64_t errors_total = 0;
    int code = 1;
    if (fig == NULL || lat == NULL) {
        fprintf(stderr, "lmoverhead: out of memory\n");
        goto out;
    }
    for (int r = 0; r < o->reps; r++) {
        /* a phase left out (--phase) leaves its figures NaN: null, "-" */
        const ov_lat none = {NAN, NAN, NAN, {NAN, NAN, NAN}};
        ov_lat seq[OV_PATHS] = {none, none, none};
        ov_cpu tcpu[OV_PATHS] = {none.cpu, none.cpu, none.cpu};
        double rps[OV_PATHS] = {NAN, NAN, NAN};
        uint64_t errs[OV_PATHS] = {0, 0, 0}, cerr;
        for (int k = 0; o->sequential && k < OV_PATHS; k++) {
            /* each repetition starts with the next path */
            ov_path p = (ov_path)((k + r) % OV_PATHS);
            if (o->paths[p])
                errs[p] += (uint64_t)ov_sequential(b, p, lat, &seq[p]);
        }
        for (int k = 0; o->throughput && k < OV_PATHS; k++) {
            ov_path p = (ov_path)((k + r) % OV_PATHS);
            if (!o->paths[p])
                continue;
            rps[p] = ov_concurrent(b, p, &cerr, &tcpu[p]);
            errs[p] += cerr;
            if (rps[p] < 0)
                goto out;
        }
        double *f = fig[r];
        f[OV_DIRECT_P50] = seq[OV_DIRECT].p50;
        f[OV_LMSCHED_P50] = seq[OV_LMSCHED].p50;
        f[OV_ADDED_P50] = seq[OV_LMSCHED].p50 - seq[OV_DIRECT].p50;
        f[OV_DIRECT_P99] = seq[OV_DIRECT].p99;
        f[OV_LMSCHED_P99] = seq[OV_LMSCHED].p99;
        f[OV_ADDED_P99] = seq[OV_LMSCHED].p99 - seq[OV_DIRECT].p99;
        f[OV_DIRECT_MEAN] = seq[OV_DIRECT].mean;
        f[OV_LMSCHED_MEAN] = seq[OV_LMSCHED].mean;
        f[OV_DIRECT_RPS] = rps[OV_DIRECT];
        f[OV_LMSCHED_RPS] = rps[OV_LMSCHED];
        f[OV_RATIO] = rps[OV_DIRECT] > 0 ? rps[OV_LMSCHED] / rps[OV_DIRECT] : NAN;
        f[OV_HTTP_P50] = seq[OV_HTTP].p50;
        f[OV_ADDED_HTTP_P50] = seq[OV_HTTP].p50 - seq[OV_DIRECT].p50;
        f[OV_HTTP_P99] = seq[OV_HTTP].p99;
        f[OV_ADDED_HTTP_P99] = seq[OV_HTTP].p99 - seq[OV_DIRECT].p99;
        f[OV_HTTP_MEAN] = seq[OV_HTTP].mean;
        f[OV_HTTP_RPS] = rps[OV_HTTP];
        f[OV_HTTP_RATIO] = rps[OV_DIRECT] > 0 ? rps[OV_HTTP] / rps[OV_DIRECT] : NAN;
        f[OV_SEQ_DIRECT_CLIENT_CPU] = seq[OV_DIRECT].cpu.client;
        f[OV_SEQ_DIRECT_BACKEND_CPU] = seq[OV_DIRECT].cpu.backend;
        f[OV_SEQ_LMSCHED_CLIENT_CPU] = seq[OV_LMSCHED].cpu.client;
        f[OV_SEQ_LMSCHED_DAEMON_CPU] = seq[OV_LMSCHED].cpu.daemon;
        f[OV_SEQ_LMSCHED_BACKEND_CPU] = seq[OV_LMSCHED].cpu.backend;
        f[OV_TPUT_DIRECT_CLIENT_CPU] = tcpu[OV_DIRECT].client;
        f[OV_TPUT_DIRECT_BACKEND_CPU] = tcpu[OV_DIRECT].backend;
        f[OV_TPUT_LMSCHED_CLIENT_CPU] = tcpu[OV_LMSCHED].client;
        f[OV_TPUT_LMSCHED_DAEMON_CPU] = tcpu[OV_LMSCHED].daemon;
        f[OV_TPUT_LMSCHED_BACKEND_CPU] = tcpu[OV_LMSCHED].backend;
        f[OV_SEQ_HTTP_CLIENT_CPU] = seq[OV_HTTP].cpu.client;
        f[OV_SEQ_HTTP_DAEMON_CPU] = seq[OV_HTTP].cpu.daemon;
        f[OV_SEQ_HTTP_BACKEND_CPU] = seq[OV_HTTP].cpu.backend;
        f[OV_TPUT_HTTP_CLIENT_CPU] = tcpu[OV_HTTP].client;
        f[OV_TPUT_HTTP_DAEMON_CPU] = tcpu[OV_HTTP].daemon;
        f[OV_TPUT_HTTP_BACKEND_CPU] = tcpu[OV_HTTP].backend;
        errors_total += errs[0] + errs[1] + errs[2];

        json_t *line = json_pack("{s:s,s:i}", "workload", "overhead", "rep", r + 1);
        for (int k = 0; line != NULL && k < OV_NFIG; k++)
            json_object_set_new(line, ov_fig_names[k], ov_fig_json(k, f[k]));
        if (line != NULL) {
            json_object_set_new(line, "direct_errors", json_integer((json_int_t)errs[0]));
            json_object_set_new(line, "lmsched_errors",
                                json_integer((json_int_t)errs[1]));
            json_object_set_new(line, "http_errors", json_integer((json_int_t)errs[2]));
            ov_print_json(line);
        }
        json_decref(line);
    }

    /* Medians over the repetitions: each figure's own median, so added_p50
     * is the median of the per-repetition differences (each measured side by
     * side), not the difference of the medians. */
    for (int k = 0; k < OV_NFIG; k++) {
        for (int r = 0; r < o->reps; r++)
            col[r] = fig[r][k];
        med[k] = ov_median(col, o->reps);
        lo[k] = col[0];
        hi[k] = col[o->reps - 1];
    }
    json_t *sum =
        json_pack("{s:s,s:s,s:i,s:s,s:s,s:i,s:i,s:i,s:f,s:i}", "workload", "overhead",
                  "rep", "median", "reps", o->reps, "backend_kind", backend_kind,
                  "backend", backend, "clients", o->clients, "requests", o->requests,
                  "max_tokens", o->max_tokens, "seconds", o->seconds, "errors",
                  (int)(errors_total > INT_MAX ? INT_MAX : errors_total));
    for (int k = 0; sum != NULL && k < OV_NFIG; k++)
        json_object_set_new(sum, ov_fig_names[k], ov_fig_json(k, med[k]));
    for (int k = 0; sum != NULL && k < OV_NMAIN; k++) {
        char key[64];
        snprintf(key, sizeof(key), "%s_min", ov_fig_names[k]);
        json_object_set_new(sum, key, ov_fig_json(k, lo[k]));
        snprintf(key, sizeof(key), "%s_max", ov_fig_names[k]);
        json_object_set_new(sum, key, ov_fig_json(k, hi[k]));
    }
    if (sum != NULL)
        ov_print_json(sum);
    json_decref(sum);

    for (int t = OV_LMSCHED; !o->json && t <= OV_HTTP; t++) {
        const char *name = t == OV_HTTP ? "http" : "lmsched";
        if (!o->paths[t])
            continue;
        printf("\nlmsched overhead, %s: %s backend %s; sequential: 1 client, %d requests; "
               "throughput: %d clients, %g s; %d rep(s)\n",
               t == OV_HTTP ? "through the HTTP front door (libcurl, OpenAI API, streamed)"
                            : "through the nng socket (agentlib)",
               backend_kind, backend, o->requests, o->clients, o->seconds, o->reps);
        printf("%-7s %8s %8s %8s   %8s %8s %8s   %9s %9s %7s\n", "", "direct", name,
               "added", "direct", name, "added", "direct", name, "ratio");
        printf("%-7s %8s %8s %8s   %8s %8s %8s   %9s %9s %7s\n", "rep", "p50 us",
               "p50 us", "p50 us", "p99 us", "p99 us", "p99 us", "req/s", "req/s",
               t == OV_HTTP ? "htt/dir" : "lms/dir");
        for (int r = 0; r < o->reps; r++) {
            char label[16];
            snprintf(label, sizeof(label), "%d", r + 1);
            ov_table_row(label, fig[r], (ov_path)t);
        }
        ov_table_row("median", med, (ov_path)t);
        ov_table_row("min", lo, (ov_path)t);
        ov_table_row("max", hi, (ov_path)t);
        fflush(stdout);
    }
    if (errors_total > 0)
        fprintf(stderr, "lmoverhead: %llu request(s) failed\n",
                (unsigned long long)errors_total);
    code = errors_total > 0 ? 1 : 0;
out:
    free(fig);
    free(lat);
    return code;
}

int main(int argc, char **argv)
{
    ov_opts o;
    ov_bench b = {0};
    kit_proc sim = {0};
    ov_daemon d = {0};
    char lmsched[PATH_MAX], lmsim[PATH_MAX], simdir[64] = "", backend[256];
    char *model = NULL;
    int code = 2, ndirect = 0, nclients = 0, nhttp = 0;

    switch (ov_parse(argc, argv, &o)) {
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
    if (access(lmsched, X_OK) != 0 || (o.backend == NULL && access(lmsim, X_OK) != 0)) {
        fprintf(stderr, "lmoverhead: cannot run %s; use --lmsched / --lmsim\n",
                access(lmsched, X_OK) != 0 ? "lmsched" : "lmsim");
        return 2;
    }
    code = 1;
    /* A child that dies must not take us with it through a closed socket. */
    signal(SIGPIPE, SIG_IGN);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return 1;
    b.o = &o;
    if (o.backend != NULL) {
        snprintf(backend, sizeof(backend), "%s", o.backend);
    } else if (ov_lmsim_start(&sim, simdir, lmsim, o.clients, backend, sizeof(backend)) !=
               0) {
        goto out;
    }
    model = ov_backend_model(backend);
    snprintf(b.url, sizeof(b.url), "%s/v1/chat/completions", backend);
    if ((b.body = ov_direct_body(model, o.max_tokens)) == NULL ||
        (b.direct = calloc((size_t)o.clients, sizeof(*b.direct))) == NULL ||
        (b.clients = calloc((size_t)o.clients, sizeof(*b.clients))) == NULL ||
        (b.http = calloc((size_t)o.clients, sizeof(*b.http))) == NULL ||
        (b.http_body = ov_http_body(model, o.max_tokens)) == NULL) {
        fprintf(stderr, "lmoverhead: out of memory\n");
        goto out;
    }
    for (; ndirect < o.clients; ndirect++)
        if (ov_direct_init(&b.direct[ndirect], b.url, b.body) != 0) {
            fprintf(stderr, "lmoverhead: cannot make a curl handle\n");
            goto out;
        }
    if (ov_daemon_start(&d, &o, lmsched, backend) != 0)
        goto out;
    b.daemon_pid = d.proc.pid;
    b.backend_pid = sim.pid;
    snprintf(b.http_url, sizeof(b.http_url), "%s", d.http);
    for (; nhttp < o.clients; nhttp++)
        if (ov_direct_init(&b.http[nhttp], b.http_url, b.http_body) != 0) {
            fprintf(stderr, "lmoverhead: cannot make a curl handle\n");
            goto out;
        }
    for (; nclients < o.clients; nclients++)
        if (lmsched_client_open(&b.clients[nclients], d.url) != LMSCHED_OK) {
            fprintf(stderr, "lmoverhead: cannot open a client for %s\n", d.url);
            goto out;
        }
    if (lmsched_request_alloc(&b.req) != LMSCHED_OK ||
        lmsched_request_set_system(b.req, ov_system) != LMSCHED_OK ||
        lmsched_request_add_message(b.req, "user", ov_user) != LMSCHED_OK ||
        lmsched_request_set_max_tokens(b.req, o.max_tokens) != LMSCHED_OK ||
        lmsched_request_set_agent(b.req, "lmoverhead") != LMSCHED_OK) {
        fprintf(stderr, "lmoverhead: cannot build the request\n");
        goto out;
    }
    /* One request each way first: a backend or daemon that cannot answer
     * is reported now, not as a run full of errors. */
    if (ov_direct_call(&b.direct[0]) != 0) {
        fprintf(stderr,
                "lmoverhead: the backend at %s did not answer a chat request "
                "with a complete event stream\n",
                backend);
        goto out;
    }
    if (ov_lmsched_call(b.clients[0], b.req) != 0) {
        fprintf(stderr, "lmoverhead: a chat request through the daemon failed\n");
        goto out;
    }
    if (ov_direct_call(&b.http[0]) != 0) {
        fprintf(stderr, "lmoverhead: a chat request through the daemon's HTTP front door "
                        "(%s) failed\n",
                b.http_url);
        goto out;
    }
    code = ov_run(&b, o.backend != NULL ? "external" : "lmsim-instant", backend);
out:
    for (int i = 0; i < nclients; i++)
        lmsched_client_close(b.clients[i]);
    ov_daemon_stop(&d);
    for (int i = 0; i < ndirect; i++)
        ov_direct_fini(&b.direct[i]);
    for (int i = 0; i < nhttp; i++)
        ov_direct_fini(&b.http[i]);
    free(b.http);
    free(b.http_body);
    ov_lmsim_stop(&sim, simdir);
    lmsched_request_free(b.req);
    free(b.clients);
    free(b.direct);
    free(b.body);
    free(model);
    curl_global_cleanup();
    return code;
}
