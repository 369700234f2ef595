/*
 * lmbench - runs a named workload through the lmsched daemon against an LLM
 * server, once per queue policy, each time with a fresh backend and a fresh
 * daemon, and prints one JSON object per policy: the backend's own token
 * counts, latency figures from the per-request results, and the workload's
 * clairvoyant optimum (optimum.c). docs/benchmarks.md describes the
 * workloads and the figures.
 *
 * Two kinds of backend. lmsim: reset with POST /sim/reset, token counts
 * from GET /sim/stats, the optimum in lmsim's 4-bytes-per-token counting.
 * llama.cpp's llama-server (found from GET /props): reset by a command
 * (--reset-cmd, e.g. a restart) or by erasing every slot, token counts
 * summed from each reply's usage, and the optimum in the engine's own
 * tokens from its /tokenize.
 *
 * Every agent is a thread with its own lmsched_client, as separate agent
 * processes would be. Exit status: 0 when every policy ran (requests may
 * still have failed: see "errors"), 1 when a policy could not be run, 2 on a
 * usage error.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>

#include "bench/bench.h"
#include "kit/clock.h"
#include "kit/daemon.h"
#include "kit/http.h"
#include "kit/json.h"
#include "kit/proc.h"
#include "lmsched/agent.h"
#include "proto/proto.h"
#include "scheduler/util/num.h"

#define BN_MAX_POLICIES 8
#define BN_MAX_DAEMON_ARGS 32
/* Several lmsims behind one daemon (`scripts/bench fleet`). */
#define BN_MAX_BACKENDS 8
/* Hang guards only: a healthy run never gets close. */
#define BN_DAEMON_START_MS 15000
#define BN_DAEMON_STOP_MS 40000
#define BN_REQUEST_TIMEOUT_MS 900000
/* The "-tools" variants: each role's tool definitions, in lmsim's tokens. */
#define BN_TOOLS_TOKENS 600

typedef enum bn_backend_kind {
    BN_BACKEND_AUTO,
    BN_BACKEND_LMSIM,
    BN_BACKEND_LLAMACPP,
} bn_backend_kind;

typedef struct bn_opts {
    bn_kind kind;
    bn_backend_kind backend_kind;
    const char *reset_cmd; /* llama.cpp: /bin/sh command that resets it */
    double time_scale;     /* llama.cpp: `many`'s arrivals run this much faster */
    bool time_scale_auto;  /* llama.cpp: --time-scale auto (measured, bn_llama_calibrate) */
    const char *policies[BN_MAX_POLICIES];
    int npolicies;
    const char *backend;
    /* --backend repeated: the second and later lmsims, one daemon over all */
    const char *more_backends[BN_MAX_BACKENDS - 1];
    int nmore_backends;
    bool backend_given;
    const char *routing; /* the daemon's --routing, NULL for its default */
    const char *lmsched;
    const char *daemon_args[BN_MAX_DAEMON_ARGS + 1]; /* NULL-terminated */
    int ndaemon_args;
    unsigned slots;
    uint64_t seed;
    double scale;
    bool json;
    bool tools; /* the workload's "-tools" variant */
    const char *classes; /* mixed: only these classes send (NULL: all) */
    const char *dump;    /* per-request records to this file (NULL: none) */
} bn_opts;

static void bn_usage(FILE *out)
{
    fprintf(
        out,
        "usage: lmbench --workload rounds|roles|many|chat|mixed[-tools] [--policy P[,P...]]\n"
        "               [--backend URL] [--backend-kind auto|lmsim|llamacpp]\n"
        "               [--reset-cmd CMD] [--time-scale F|auto] [--lmsched PATH]\n"
        "               [--daemon-arg ARG]... [--slots N] [--seed N] [--scale F] "
        "[--json]\n"
        "               [--classes LIST] [--dump FILE]\n"
        "               [--routing cache|round-robin|least-loaded]\n"
        "\n"
        "Runs the workload through `lmsched serve` against the backend (lmsim or\n"
        "llama-server) once per policy (default fifo), resetting the backend before\n"
        "each, and prints one result per policy (a JSON object per line with --json).\n"
        "\n"
        "  --workload W      rounds, roles, many, chat or mixed (docs/benchmarks.md); with\n"
        "                    -tools (roles-tools ...), each role also sends its tools\n"
        "  --policy LIST     comma-separated queue policies (default fifo)\n"
        "  --backend URL     backend base URL (default http://127.0.0.1:1234); lmsim:\n"
        "                    repeat (up to 8) for one daemon over several, whose\n"
        "                    figures are summed (give --slots their total)\n"
        "  --routing R       the daemon's --routing over several backends (default:\n"
        "                    its own, cache)\n"
        "  --backend-kind K  lmsim, llamacpp, or auto (default: llamacpp if GET /props\n"
        "                    answers with total_slots, else lmsim)\n"
        "  --reset-cmd CMD   llamacpp: run CMD with /bin/sh before each policy to\n"
        "                    reset the server (e.g. scripts/llama-server restart), then\n"
        "                    wait for /health; without it, erase every slot\n"
        "                    (POST /slots/N?action=erase, needs --slot-save-path;\n"
        "                    the host prompt cache survives that)\n"
        "  --time-scale F    llamacpp: send `many`'s arrivals F times faster (default "
        "1);\n"
        "                    auto: as much faster as the server prefills the workload's\n"
        "                    text than lmsim's default 800 tokens/s (measured at start)\n"
        "  --lmsched PATH    the lmsched command (default: next to lmbench)\n"
        "  --daemon-arg ARG  one more argument for `lmsched serve` (repeatable)\n"
        "  --slots N         slots assumed by the optimum (default 4)\n"
        "  --seed N          workload seed (default 1)\n"
        "  --scale F         multiply the requests per agent by F (default 1)\n"
        "  --json            print only the JSON lines\n"
        "  --classes LIST    mixed: only these classes send (interactive, roles, batch)\n"
        "  --dump FILE       append one JSON line per request (timings, tokens) to FILE\n");
}

static int bn_parse_num(const char *flag, const char *s, double lo, double hi,
                        double *out)
{
    if (num_parse_double(s, lo, hi, false, false, out) != 0) {
        fprintf(stderr, "lmbench: %s: expected a number from %g to %g, got '%s'\n", flag,
                lo, hi, s);
        return -1;
    }
    return 0;
}

/* Returns 0 to run, 1 after --help, 2 on a usage error (reported). */
static int bn_parse(int argc, char **argv, bn_opts *o, char **policy_buf)
{
    enum {
        OPT_WORKLOAD = 256,
        OPT_POLICY,
        OPT_BACKEND,
        OPT_LMSCHED,
        OPT_DAEMON_ARG,
        OPT_SLOTS,
        OPT_SEED,
        OPT_SCALE,
        OPT_JSON,
        OPT_BACKEND_KIND,
        OPT_RESET_CMD,
        OPT_TIME_SCALE,
        OPT_CLASSES,
        OPT_DUMP,
        OPT_ROUTING
    };
    static const struct option opts[] = {
        {"workload", required_argument, NULL, OPT_WORKLOAD},
        {"policy", required_argument, NULL, OPT_POLICY},
        {"backend", required_argument, NULL, OPT_BACKEND},
        {"lmsched", required_argument, NULL, OPT_LMSCHED},
        {"daemon-arg", required_argument, NULL, OPT_DAEMON_ARG},
        {"slots", required_argument, NULL, OPT_SLOTS},
        {"seed", required_argument, NULL, OPT_SEED},
        {"scale", required_argument, NULL, OPT_SCALE},
        {"json", no_argument, NULL, OPT_JSON},
        {"backend-kind", required_argument, NULL, OPT_BACKEND_KIND},
        {"reset-cmd", required_argument, NULL, OPT_RESET_CMD},
        {"time-scale", required_argument, NULL, OPT_TIME_SCALE},
        {"classes", required_argument, NULL, OPT_CLASSES},
        {"dump", required_argument, NULL, OPT_DUMP},
        {"routing", required_argument, NULL, OPT_ROUTING},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *workload = NULL, *policy = "fifo";
    double v;
    int c;
    *o = (bn_opts){.backend = "http://127.0.0.1:1234",
                   .slots = 4,
                   .seed = 1,
                   .scale = 1,
                   .time_scale = 1};
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case OPT_WORKLOAD:
            workload = optarg;
            break;
        case OPT_POLICY:
            policy = optarg;
            break;
        case OPT_BACKEND:
            if (!o->backend_given) {
                o->backend = optarg;
                o->backend_given = true;
            } else if (o->nmore_backends == BN_MAX_BACKENDS - 1) {
                fprintf(stderr, "lmbench: at most %d --backend\n", BN_MAX_BACKENDS);
                return 2;
            } else {
                o->more_backends[o->nmore_backends++] = optarg;
            }
            break;
        case OPT_ROUTING:
            o->routing = optarg;
            break;
        case OPT_LMSCHED:
            o->lmsched = optarg;
            break;
        case OPT_DAEMON_ARG:
            if (o->ndaemon_args == BN_MAX_DAEMON_ARGS) {
                fprintf(stderr, "lmbench: at most %d --daemon-arg\n", BN_MAX_DAEMON_ARGS);
                return 2;
            }
            o->daemon_args[o->ndaemon_args++] = optarg;
            break;
        case OPT_SLOTS:
            if (bn_parse_num("--slots", optarg, 1, 16, &v) != 0 || v != floor(v))
                return 2;
            o->slots = (unsigned)v;
            break;
        case OPT_SEED:
            if (bn_parse_num("--seed", optarg, 0, 9007199254740991.0, &v) != 0 ||
                v != floor(v))
                return 2;
            o->seed = (uint64_t)v;
            break;
        case OPT_SCALE:
            if (bn_parse_num("--scale", optarg, 0.01, 100, &v) != 0)
                return 2;
            o->scale = v;
            break;
        case OPT_JSON:
            o->json = true;
            break;
        case OPT_BACKEND_KIND:
            if (strcmp(optarg, "auto") == 0) {
                o->backend_kind = BN_BACKEND_AUTO;
            } else if (strcmp(optarg, "lmsim") == 0) {
                o->backend_kind = BN_BACKEND_LMSIM;
            } else if (strcmp(optarg, "llamacpp") == 0) {
                o->backend_kind = BN_BACKEND_LLAMACPP;
            } else {
                fprintf(stderr,
                        "lmbench: --backend-kind must be auto, lmsim or llamacpp\n");
                return 2;
            }
            break;
        case OPT_RESET_CMD:
            o->reset_cmd = optarg;
            break;
        case OPT_TIME_SCALE:
            if (strcmp(optarg, "auto") == 0) {
                o->time_scale_auto = true;
                break;
            }
            if (bn_parse_num("--time-scale", optarg, 0.001, 1000, &v) != 0)
                return 2;
            o->time_scale = v;
            break;
        case OPT_CLASSES:
            o->classes = optarg;
            break;
        case OPT_DUMP:
            o->dump = optarg;
            break;
        case 'h':
            bn_usage(stdout);
            return 1;
        default:
            fprintf(stderr, "lmbench: %s '%s' (see --help)\n",
                    c == ':' ? "option needs a value" : "unknown option",
                    argv[optind - 1]);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "lmbench: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (workload == NULL || bn_workload_parse(workload, &o->kind, &o->tools) != 0) {
        fprintf(stderr, "lmbench: --workload must be rounds, roles, many, chat or mixed, "
                        "optionally with -tools\n");
        return 2;
    }
    /* split the policy list in a copy; the pointers point into it */
    if ((*policy_buf = strdup(policy)) == NULL)
        return 2;
    for (char *save = NULL, *p = strtok_r(*policy_buf, ",", &save); p != NULL;
         p = strtok_r(NULL, ",", &save)) {
        if (o->npolicies == BN_MAX_POLICIES) {
            fprintf(stderr, "lmbench: at most %d policies\n", BN_MAX_POLICIES);
            return 2;
        }
        o->policies[o->npolicies++] = p;
    }
    if (o->npolicies == 0) {
        fprintf(stderr, "lmbench: --policy needs at least one name\n");
        return 2;
    }
    return 0;
}

static double bn_now_ms(void)
{
    return (double)kit_now_ns() / 1e6;
}

static void bn_sleep_ms(double ms)
{
    kit_sleep_ns((int64_t)(ms * 1e6));
}

/* ---- the backend's HTTP side -------------------------------------------- */

/* Sends a request to base + path and parses the JSON answer (*outp owned
 * by the caller): a GET when post is NULL, else a POST of that body (a
 * JSON document or ""). Returns 0, or -1 (reported on stderr unless quiet;
 * *statusp, if not NULL, gets the HTTP status, 0 without an answer). */
static int bn_http_req(const char *base, const char *path, const char *post, bool quiet,
                       long *statusp, json_t **outp)
{
    char url[1024], err[600];
    snprintf(url, sizeof(url), "%s%s", base, path);
    *outp = kit_http_json(NULL, url, post, 10000, statusp, err, sizeof(err));
    if (*outp == NULL && !quiet)
        fprintf(stderr, "lmbench: %s\n", err);
    return *outp != NULL ? 0 : -1;
}

/* GETs (post false) or POSTs an empty body to base + path; see bn_http_req. */
static int bn_http_json(const char *base, const char *path, bool post, json_t **outp)
{
    return bn_http_req(base, path, post ? "" : NULL, false, NULL, outp);
}

/* The integer at key, or -1 (printed as null). */
static int64_t bn_json_int(const json_t *o, const char *key)
{
    int64_t v = kit_json_int(o, key);
    return v != INT64_MIN ? v : -1;
}

/* ---- llama.cpp's llama-server ------------------------------------------- */

/* Slots of a llama-server (GET /props total_slots), or -1 if the backend
 * does not answer like one. Quiet: used to tell the two kinds apart. */
static int bn_llama_slots(const char *base)
{
    json_t *props = NULL;
    if (bn_http_req(base, "/props", NULL, true, NULL, &props) != 0)
        return -1;
    int64_t n = bn_json_int(props, "total_slots");
    json_decref(props);
    return n >= 1 && n <= 1024 ? (int)n : -1;
}

/* Waits up to 60 s for GET /health to answer 200. Returns 0 or -1. */
static int bn_llama_wait_healthy(const char *base)
{
    for (double end = bn_now_ms() + 60000; bn_now_ms() < end; bn_sleep_ms(100)) {
        json_t *h = NULL;
        if (bn_http_req(base, "/health", NULL, true, NULL, &h) == 0) {
            json_decref(h);
            return 0;
        }
    }
    return -1;
}

/* lmsim's default --prefill-tps: its tokens (4 bytes of text) per simulated
 * second. */
#define BN_LMSIM_PREFILL_TPS 800.0

/* --time-scale auto: the time scale at which `many`'s arrivals load the
 * server as they load lmsim with its defaults. The same text costs the
 * server other tokens than lmsim's 4 bytes each, at its own speed on this
 * machine now; so it prefills the workload's longest system prompt (no
 * cache, three times, the median) and the scale is its rate in lmsim's
 * tokens over lmsim's. Returns 0, or -1 with why set. */
static int bn_llama_calibrate(const char *base, const bn_workload *w, double *scale,
                              char *why, size_t whylen)
{
    const char *text = NULL;
    for (int i = 0; i < w->nsystems; i++)
        if (w->systems[i] != NULL && (text == NULL || strlen(w->systems[i]) > strlen(text)))
            text = w->systems[i];
    if (text == NULL) {
        snprintf(why, whylen, "--time-scale auto: the workload has no system prompt");
        return -1;
    }
    json_t *req = json_pack("{s:s, s:i, s:b}", "prompt", text, "n_predict", 1,
                            "cache_prompt", 0);
    char *body = req != NULL ? json_dumps(req, JSON_COMPACT) : NULL;
    json_decref(req);
    double ms[3];
    int64_t n = -1;
    for (int i = 0; i < 3; i++) {
        json_t *r = NULL;
        if (body == NULL || bn_http_req(base, "/completion", body, false, NULL, &r) != 0) {
            free(body);
            snprintf(why, whylen, "--time-scale auto: POST %s/completion failed", base);
            return -1;
        }
        json_t *t = json_object_get(r, "timings");
        ms[i] = json_number_value(json_object_get(t, "prompt_ms"));
        n = bn_json_int(t, "prompt_n");
        json_decref(r);
    }
    free(body);
    for (int i = 1; i < 3; i++) /* sort the three */
        for (int k = i; k > 0 && ms[k] < ms[k - 1]; k--) {
            double x = ms[k];
            ms[k] = ms[k - 1];
            ms[k - 1] = x;
        }
    if (!(ms[1] > 0) || n <= 0) {
        snprintf(why, whylen, "--time-scale auto: %s/completion reported no prompt timings",
                 base);
        return -1;
    }
    double lmsim_tokens = ceil((double)strlen(text) / 4.0);
    *scale = lmsim_tokens / (ms[1] / 1000.0) / BN_LMSIM_PREFILL_TPS;
    fprintf(stderr,
            "lmbench: --time-scale auto: %s prefills %" PRId64 " tokens (%.0f of lmsim's) in "
            "%.0f ms: %.0f of lmsim's tokens/s, time scale %.2f\n",
            base, n, lmsim_tokens, ms[1], lmsim_tokens / (ms[1] / 1000.0), *scale);
    return 0;
}

/* A fresh llama-server for the next policy: --reset-cmd (a restart also
 * empties the host prompt cache), or erasing every slot's cache, which
 * needs the server's --slot-save-path and leaves the host cache as it is.
 * Returns 0, or -1 with why set. */
static int bn_llama_reset(const bn_opts *o, char *why, size_t whylen)
{
    if (o->reset_cmd != NULL) {
        fflush(NULL);
        int st = system(o->reset_cmd);
        if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            snprintf(why, whylen, "--reset-cmd failed (status %d): %s", st, o->reset_cmd);
            return -1;
        }
        if (bn_llama_wait_healthy(o->backend) != 0) {
            snprintf(why, whylen, "%s/health not ok within 60 s after --reset-cmd",
                     o->backend);
            return -1;
        }
        return 0;
    }
    int slots = bn_llama_slots(o->backend);
    if (slots < 0) {
        snprintf(why, whylen, "cannot read %s/props", o->backend);
        return -1;
    }
    for (int i = 0; i < slots; i++) {
        char path[64];
        json_t *r = NULL;
        long status = 0;
        snprintf(path, sizeof(path), "/slots/%d?action=erase", i);
        if (bn_http_req(o->backend, path, "", true, &status, &r) != 0) {
            snprintf(why, whylen,
                     "POST %s%s: HTTP %ld (start llama-server with --slot-save-path, or "
                     "use --reset-cmd)",
                     o->backend, path, status);
            return -1;
        }
        json_decref(r);
    }
    return 0;
}

/* Tokenizes text with the server's own tokenizer (POST /tokenize): special
 * tokens parsed and BOS added for a rendered prompt (special true), plain
 * text for a reply. *toksp is malloc'd. Returns the count, or -1. */
static int64_t bn_llama_tokenize(const char *base, const char *text, bool special,
                                 int32_t **toksp)
{
    json_t *req = json_pack("{s:s, s:b, s:b}", "content", text, "add_special", special,
                            "parse_special", special);
    json_t *resp = NULL;
    char *body = req ? json_dumps(req, JSON_COMPACT) : NULL;
    int64_t n = -1;
    *toksp = NULL;
    if (body == NULL || bn_http_req(base, "/tokenize", body, false, NULL, &resp) != 0)
        goto out;
    const json_t *arr = json_object_get(resp, "tokens");
    size_t len = json_array_size(arr);
    if (!json_is_array(arr) || (*toksp = malloc((len + 1) * sizeof(int32_t))) == NULL)
        goto out;
    for (size_t i = 0; i < len; i++) {
        const json_t *t = json_array_get(arr, i);
        if (!json_is_integer(t)) {
            free(*toksp);
            *toksp = NULL;
            goto out;
        }
        (*toksp)[i] = (int32_t)json_integer_value(t);
    }
    n = (int64_t)len;
out:
    free(body);
    json_decref(req);
    json_decref(resp);
    return n;
}

/* Tokenizes every sent request's prompt and reply so the optimum counts in
 * the engine's tokens. Returns 0, or -1 (then w->tokenized stays false). */
static int bn_llama_tokenize_workload(const char *base, bn_workload *w)
{
    for (size_t i = 0; i < w->nreqs; i++) {
        bn_req *q = &w->reqs[i];
        int64_t n;
        if (!q->sent || q->render == NULL)
            continue;
        if ((n = bn_llama_tokenize(base, q->render, true, &q->toks)) < 0)
            return -1;
        q->ntoks = (size_t)n;
        if (q->reply != NULL) {
            if ((n = bn_llama_tokenize(base, q->reply, false, &q->reply_toks)) < 0)
                return -1;
            q->nreply_toks = (size_t)n;
        }
    }
    w->tokenized = true;
    return 0;
}

/* ---- the daemon ----------------------------------------------------------- */

typedef struct bn_daemon {
    kit_proc proc;
    char dir[64];
    char url[128];
} bn_daemon;

static void bn_daemon_stop(bn_daemon *d)
{
    if (d->proc.pid > 0 && kit_proc_stop(&d->proc, SIGTERM, BN_DAEMON_STOP_MS) < 0)
        fprintf(stderr, "lmbench: the daemon did not stop on SIGTERM; killed it\n");
    if (d->dir[0] != '\0') {
        char sock[128];
        snprintf(sock, sizeof(sock), "%s/b.sock", d->dir);
        unlink(sock);
        rmdir(d->dir);
        d->dir[0] = '\0';
    }
}

/* Starts `lmsched serve` for one policy and waits until it answers a status
 * request and has probed the backend once: until then the first requests
 * would be placed (and, against llama-server, pinned) without the slots.
 * Whatever the probe found: a backend it calls unhealthy is the run's to
 * report. Returns 0, or -1 with *why set. */
static int bn_daemon_start(bn_daemon *d, const bn_opts *o, const char *lmsched,
                           const char *policy, char *why, size_t whylen)
{
    memset(d, 0, sizeof(*d));
    strcpy(d->dir, "/tmp/lmbench.XXXXXX");
    if (mkdtemp(d->dir) == NULL) {
        snprintf(why, whylen, "mkdtemp: %s", strerror(errno));
        d->dir[0] = '\0';
        return -1;
    }
    snprintf(d->url, sizeof(d->url), "ipc://%s/b.sock", d->dir);
    const char *args[8 + 2 * BN_MAX_BACKENDS] = {"--policy", policy};
    int na = 2;
    if (o->routing != NULL) {
        args[na++] = "--routing";
        args[na++] = o->routing;
    }
    if (o->nmore_backends > 0) {
        args[na++] = "--backend";
        args[na++] = o->backend;
        for (int i = 0; i < o->nmore_backends; i++) {
            args[na++] = "--backend";
            args[na++] = o->more_backends[i];
        }
    }
    args[na] = NULL;
    kit_daemon_opts k = {
        .bin = lmsched,
        .listen = d->url,
        .backend = o->backend,
        .log_level = "warn",
        .args = args,
        .more = o->daemon_args,
        .out = KIT_OUT_STDERR, /* its stdout would mix with our JSON lines */
        .probed = true,
        .timeout_ms = BN_DAEMON_START_MS,
    };
    if (kit_daemon_start(&d->proc, &k, why, whylen) != 0) {
        bn_daemon_stop(d);
        return -1;
    }
    return 0;
}

/* ---- agents --------------------------------------------------------------- */

typedef struct bn_run bn_run;

typedef struct bn_agent {
    bn_run *run;
    int index;
    lmsched_client *client;
    pthread_t thread;
    bool started;
    /* BN_MANY: answers still outstanding */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int pending;
} bn_agent;

struct bn_run {
    bn_workload *w;
    double t0;         /* workload start, monotonic ms */
    double time_scale; /* lmsim's simulated ms per wall ms */
    pthread_barrier_t start;
    pthread_barrier_t round; /* BN_ROUNDS */
    bn_agent agents[BN_MAX_AGENTS];
};

/* Copies the outcome into the request's record. Runs on the agent thread,
 * or on a library thread for async calls: each record has one writer. */
static void bn_record(bn_run *run, bn_req *q, lmsched_result *res, int rc)
{
    q->done_ms = bn_now_ms() - run->t0;
    q->err = res != NULL ? lmsched_result_error(res) : (rc != 0 ? rc : LMSCHED_EINTERNAL);
    if (res != NULL) {
        q->prompt_tokens = lmsched_result_prompt_tokens(res);
        q->cached_tokens = lmsched_result_cached_tokens(res);
        q->queue_ms = lmsched_result_queue_ms(res);
        q->ttft_ms = lmsched_result_ttft_ms(res);
        q->total_ms = lmsched_result_total_ms(res);
        if (q->err == LMSCHED_OK && lmsched_result_content(res) != NULL)
            q->reply = strdup(lmsched_result_content(res));
        else if (lmsched_result_message(res) != NULL)
            q->errmsg = strdup(lmsched_result_message(res));
    }
}

/* Builds request i of the workload and renders it for the optimum. */
static lmsched_request *bn_build(bn_run *run, size_t i)
{
    bn_workload *w = run->w;
    bn_req *q = &w->reqs[i];
    lmsched_request *req = NULL;
    bn_msg *m = NULL;
    char agent[32];
    int n = bn_request_messages(w, i, &m);
    if (n < 0 || bn_request_render(w, i) != 0)
        goto fail;
    snprintf(agent, sizeof(agent), "%s-%d", w->name, q->agent + 1);
    if (lmsched_request_alloc(&req) != LMSCHED_OK ||
        lmsched_request_set_system(req, w->systems[q->system]) != LMSCHED_OK ||
        lmsched_request_set_max_tokens(req, w->max_tokens) != LMSCHED_OK ||
        lmsched_request_set_agent(req, agent) != LMSCHED_OK ||
        (w->tools[q->system] != NULL &&
         lmsched_request_set_tools(req, w->tools[q->system]) != LMSCHED_OK) ||
        (q->priority >= 0 && lmsched_request_set_priority(req, q->priority) != LMSCHED_OK))
        goto fail;
    for (int k = 0; k < n; k++)
        if (lmsched_request_add_message(req, m[k].role, m[k].content) != LMSCHED_OK)
            goto fail;
    free(m);
    q->sent = true;
    q->sent_ms = bn_now_ms() - run->t0;
    return req;
fail:
    free(m);
    lmsched_request_free(req);
    return NULL;
}

/* The run in progress (one at a time), for the async callbacks, whose
 * argument is the request's record. */
static bn_run *bn_current_run;

static void bn_async_done_cb(lmsched_result *res, void *arg)
{
    bn_req *q = arg;
    bn_run *run = bn_current_run;
    bn_agent *ag = &run->agents[q->agent];
    bn_record(run, q, res, 0);
    lmsched_result_free(res);
    pthread_mutex_lock(&ag->mu);
    ag->pending--;
    pthread_cond_signal(&ag->cv);
    pthread_mutex_unlock(&ag->mu);
}

/* Whether agent a sends open-loop (each request at its arrival time,
 * without waiting for answers): `many`, and mixed's batch. */
static bool bn_open_loop(const bn_workload *w, int a)
{
    return w->kind == BN_MANY || (w->kind == BN_MIXED && w->agent_class[a] == BN_CLASS_BATCH);
}

/* Whether agent a waits for the others of its rounds after each request:
 * `rounds`, and mixed's role agents. */
static bool bn_in_rounds(const bn_workload *w, int a)
{
    return w->kind == BN_ROUNDS || (w->kind == BN_MIXED && w->agent_class[a] == BN_CLASS_ROLES);
}

static void *bn_agent_main(void *arg)
{
    bn_agent *ag = arg;
    bn_run *run = ag->run;
    bn_workload *w = run->w;
    size_t first = (size_t)ag->index * (size_t)w->per_agent;
    bool open = bn_open_loop(w, ag->index), rounds = bn_in_rounds(w, ag->index);

    pthread_barrier_wait(&run->start);
    for (int j = 0; j < w->per_agent; j++) {
        size_t i = first + (size_t)j;
        bn_req *q = &w->reqs[i];
        lmsched_result *res = NULL;
        lmsched_request *req;
        int rc;
        if (open) {
            double at = run->t0 + q->arrival_sim_ms / run->time_scale;
            double now = bn_now_ms();
            if (at > now)
                bn_sleep_ms(at - now);
        } else if (q->think_sim_ms > 0) {
            bn_sleep_ms(q->think_sim_ms / run->time_scale);
        }
        if ((req = bn_build(run, i)) == NULL) {
            q->sent = true;
            q->err = LMSCHED_ENOMEM;
            goto next;
        }
        if (open) {
            pthread_mutex_lock(&ag->mu);
            ag->pending++;
            pthread_mutex_unlock(&ag->mu);
            rc = lmsched_chat_async(ag->client, req, BN_REQUEST_TIMEOUT_MS,
                                    bn_async_done_cb, q);
            if (rc != LMSCHED_OK) {
                bn_record(run, q, NULL, rc);
                pthread_mutex_lock(&ag->mu);
                ag->pending--;
                pthread_mutex_unlock(&ag->mu);
            }
        } else {
            rc = lmsched_chat(ag->client, req, BN_REQUEST_TIMEOUT_MS, &res);
            bn_record(run, q, res, rc);
            lmsched_result_free(res);
        }
        lmsched_request_free(req);
    next:
        if (rounds)
            pthread_barrier_wait(&run->round);
    }
    pthread_mutex_lock(&ag->mu);
    while (ag->pending > 0)
        pthread_cond_wait(&ag->cv, &ag->mu);
    pthread_mutex_unlock(&ag->mu);
    return NULL;
}

/* Runs the workload against the daemon at url; returns the makespan in ms,
 * or -1 if the agents could not be started. */
static double bn_run_workload(bn_workload *w, const char *url, double time_scale)
{
    bn_run *run = calloc(1, sizeof(*run));
    double makespan = -1;
    if (run == NULL)
        return -1;
    run->w = w;
    run->time_scale = time_scale > 0 ? time_scale : 1;
    bn_current_run = run;
    /* Only the agents of the classes that send take part (mixed's
     * --classes); the round barrier counts the agents in rounds. */
    unsigned n_active = 0, n_rounds = 0;
    for (int a = 0; a < w->nagents; a++) {
        if (!(w->class_mask & (1u << w->agent_class[a])))
            continue;
        n_active++;
        n_rounds += bn_in_rounds(w, a);
    }
    pthread_barrier_init(&run->start, NULL, n_active + 1);
    pthread_barrier_init(&run->round, NULL, n_rounds > 0 ? n_rounds : 1);
    for (int a = 0; a < w->nagents; a++) {
        bn_agent *ag = &run->agents[a];
        ag->run = run;
        ag->index = a;
        pthread_mutex_init(&ag->mu, NULL);
        pthread_cond_init(&ag->cv, NULL);
        if (lmsched_client_open(&ag->client, url) != LMSCHED_OK) {
            fprintf(stderr, "lmbench: cannot open a client for %s\n", url);
            goto out;
        }
    }
    for (int a = 0; a < w->nagents; a++) {
        if (!(w->class_mask & (1u << w->agent_class[a])))
            continue;
        if (pthread_create(&run->agents[a].thread, NULL, bn_agent_main,
                           &run->agents[a]) != 0) {
            /* the barrier counts every agent: without all of them nobody
             * would start, so this is fatal */
            fprintf(stderr, "lmbench: cannot start agent threads\n");
            exit(1);
        }
        run->agents[a].started = true;
    }
    run->t0 = bn_now_ms();
    pthread_barrier_wait(&run->start);
    for (int a = 0; a < w->nagents; a++)
        if (run->agents[a].started)
            pthread_join(run->agents[a].thread, NULL);
    makespan = 0;
    for (size_t i = 0; i < w->nreqs; i++)
        if (w->reqs[i].sent && w->reqs[i].done_ms > makespan)
            makespan = w->reqs[i].done_ms;
out:
    for (int a = 0; a < w->nagents; a++) {
        lmsched_client_close(run->agents[a].client);
        pthread_mutex_destroy(&run->agents[a].mu);
        pthread_cond_destroy(&run->agents[a].cv);
    }
    pthread_barrier_destroy(&run->start);
    pthread_barrier_destroy(&run->round);
    bn_current_run = NULL;
    free(run);
    return makespan;
}

/* ---- figures -------------------------------------------------------------- */

static int bn_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct bn_dist {
    double mean, p50, p95, p99;
    size_t n;
} bn_dist;

/* Nearest-rank percentiles of v (sorted in place). */
static bn_dist bn_distribution(double *v, size_t n)
{
    bn_dist d = {0};
    double sum = 0;
    if (n == 0)
        return d;
    qsort(v, n, sizeof(*v), bn_cmp_double);
    for (size_t i = 0; i < n; i++)
        sum += v[i];
    d.n = n;
    d.mean = sum / (double)n;
#define BN_RANK(p) v[(size_t)ceil((p) / 100.0 * (double)n) - 1]
    d.p50 = BN_RANK(50);
    d.p95 = BN_RANK(95);
    d.p99 = BN_RANK(99);
#undef BN_RANK
    return d;
}

static json_t *bn_ms(double v)
{
    return json_real(round(v * 10) / 10);
}

static json_t *bn_ratio(double a, double b)
{
    return b > 0 && a >= 0 ? json_real(round(a / b * 1000) / 1000) : json_null();
}

/* Jain's fairness index of the agents' mean queue waits, over the agents of
 * class cls (-1: every agent) with at least one answer: (sum x)^2 / (n sum
 * x^2), 1 when every agent waited the same (or nothing), 1/n when one agent
 * did all the waiting. -1 when no agent has an answer. */
static double bn_fairness(const bn_workload *w, int cls)
{
    double sum = 0, sum2 = 0;
    int n = 0;
    for (int a = 0; a < w->nagents; a++) {
        double wsum = 0;
        int k = 0;
        if (cls >= 0 && w->agent_class[a] != cls)
            continue;
        for (int j = 0; j < w->per_agent; j++) {
            const bn_req *q = &w->reqs[(size_t)a * (size_t)w->per_agent + (size_t)j];
            if (q->sent && q->err == LMSCHED_OK) {
                wsum += q->queue_ms;
                k++;
            }
        }
        if (k == 0)
            continue;
        sum += wsum / k;
        sum2 += (wsum / k) * (wsum / k);
        n++;
    }
    if (n == 0)
        return -1;
    return sum2 > 0 ? sum * sum / ((double)n * sum2) : 1.0;
}

/* The backend's figures of one run: lmsim's /sim/stats, or for llama-server
 * the sums of the replies' usage; -1 (printed as null) when unknown. */
typedef struct bn_figures {
    const char *kind; /* "lmsim" or "llamacpp" */
    int64_t requests, prompt, prefill, cached, max_active;
    double sim_ms, time_scale;
} bn_figures;

static bn_figures bn_figures_lmsim(const json_t *stats)
{
    const json_t *cfg = json_object_get(stats, "config");
    return (bn_figures){
        .kind = "lmsim",
        .requests = bn_json_int(stats, "requests"),
        .prompt = bn_json_int(stats, "prompt_tokens"),
        .prefill = bn_json_int(stats, "prefill_tokens"),
        .cached = bn_json_int(stats, "cached_tokens"),
        .max_active = bn_json_int(stats, "max_active"),
        .sim_ms = round(json_number_value(json_object_get(stats, "sim_ms"))),
        .time_scale = json_number_value(json_object_get(cfg, "time_scale")),
    };
}

/* llama.cpp reports per reply prompt_tokens (the whole prompt) and
 * cached_tokens (reused from the slot): prefill is their difference. */
static bn_figures bn_figures_llama(const bn_workload *w, double time_scale)
{
    bn_figures f = {
        .kind = "llamacpp", .max_active = -1, .sim_ms = -1, .time_scale = time_scale};
    for (size_t i = 0; i < w->nreqs; i++) {
        const bn_req *q = &w->reqs[i];
        if (!q->sent || q->err != LMSCHED_OK || q->prompt_tokens < 0)
            continue;
        f.requests++;
        f.prompt += q->prompt_tokens;
        f.cached += q->cached_tokens > 0 ? q->cached_tokens : 0;
    }
    f.prefill = f.prompt - f.cached;
    return f;
}

static json_t *bn_int_or_null(int64_t v)
{
    return v >= 0 ? json_integer((json_int_t)v) : json_null();
}

/* Builds the result object of one policy run. */
static json_t *bn_result(const bn_opts *o, const bn_workload *w, const char *policy,
                         const bn_figures *f, double makespan, int64_t optimum)
{
    size_t n = 0, errors = 0, sent = 0;
    double *ttft = malloc((w->nreqs + 1) * sizeof(double));
    double *e2e = malloc((w->nreqs + 1) * sizeof(double));
    double *wait = malloc((w->nreqs + 1) * sizeof(double));
    json_t *r = json_object();
    if (ttft == NULL || e2e == NULL || wait == NULL || r == NULL) {
        json_decref(r);
        r = NULL;
        goto out;
    }
    for (size_t i = 0; i < w->nreqs; i++) {
        const bn_req *q = &w->reqs[i];
        if (!q->sent)
            continue;
        sent++;
        if (q->err != LMSCHED_OK) {
            errors++;
            continue;
        }
        ttft[n] = q->ttft_ms;
        e2e[n] = q->queue_ms + q->ttft_ms;
        wait[n] = q->queue_ms;
        n++;
    }
    bn_dist dt = bn_distribution(ttft, n), de = bn_distribution(e2e, n),
            dw = bn_distribution(wait, n);
    int64_t prefill = f->prefill;
    json_object_set_new(r, "workload", json_string(w->name));
    json_object_set_new(r, "policy", json_string(policy));
    json_object_set_new(r, "backends", json_integer(1 + o->nmore_backends));
    json_object_set_new(r, "routing", json_string(o->routing ? o->routing : "cache"));
    json_object_set_new(r, "backend_kind", json_string(f->kind));
    json_object_set_new(r, "seed", json_integer((json_int_t)o->seed));
    json_object_set_new(r, "scale", json_real(o->scale));
    json_object_set_new(r, "agents", json_integer(w->nagents));
    json_object_set_new(r, "slots", json_integer(o->slots));
    json_object_set_new(r, "requests", json_integer((json_int_t)sent));
    json_object_set_new(r, "errors", json_integer((json_int_t)errors));
    json_object_set_new(r, "backend_requests", bn_int_or_null(f->requests));
    json_object_set_new(r, "prompt_tokens", bn_int_or_null(f->prompt));
    json_object_set_new(r, "prefill_tokens", bn_int_or_null(prefill));
    json_object_set_new(r, "cached_tokens", bn_int_or_null(f->cached));
    json_object_set_new(r, "max_active", bn_int_or_null(f->max_active));
    json_object_set_new(r, "optimal_prefill_tokens",
                        optimum >= 0 ? json_integer(optimum) : json_null());
    json_object_set_new(r, "prefill_vs_optimal",
                        bn_ratio((double)prefill, (double)optimum));
    json_object_set_new(r, "ttft_mean_ms", bn_ms(dt.mean));
    json_object_set_new(r, "ttft_p50_ms", bn_ms(dt.p50));
    json_object_set_new(r, "ttft_p95_ms", bn_ms(dt.p95));
    json_object_set_new(r, "e2e_ttft_mean_ms", bn_ms(de.mean));
    json_object_set_new(r, "e2e_ttft_p95_ms", bn_ms(de.p95));
    json_object_set_new(r, "wait_mean_ms", bn_ms(dw.mean));
    json_object_set_new(r, "wait_p50_ms", bn_ms(dw.p50));
    json_object_set_new(r, "wait_p95_ms", bn_ms(dw.p95));
    json_object_set_new(r, "wait_p99_ms", bn_ms(dw.p99));
    json_object_set_new(r, "makespan_ms", bn_ms(makespan));
    json_object_set_new(r, "sim_ms", f->sim_ms >= 0 ? json_real(f->sim_ms) : json_null());
    json_object_set_new(r, "time_scale", json_real(f->time_scale));
    double fair = bn_fairness(w, -1);
    json_object_set_new(r, "fairness", fair >= 0 ? json_real(round(fair * 1000) / 1000)
                                                 : json_null());
    /* mixed: the same figures per class, flat ("interactive_wait_p99_ms"),
     * and which classes sent. */
    if (w->nclasses > 1) {
        char classes[128] = "";
        for (int c = 0; c < w->nclasses; c++) {
            if (!(w->class_mask & (1u << c)))
                continue;
            size_t k = 0, m = strlen(classes);
            snprintf(classes + m, sizeof(classes) - m, "%s%s", m ? "," : "",
                     w->class_names[c]);
            for (size_t i = 0; i < w->nreqs; i++) {
                const bn_req *q = &w->reqs[i];
                if (!q->sent || q->err != LMSCHED_OK || q->cls != c)
                    continue;
                ttft[k] = q->ttft_ms;
                e2e[k] = q->queue_ms + q->ttft_ms;
                wait[k] = q->queue_ms;
                k++;
            }
            bn_dist ct = bn_distribution(ttft, k), ce = bn_distribution(e2e, k),
                    cw = bn_distribution(wait, k);
            double cf = bn_fairness(w, c);
            char key[96];
#define BN_CLASS_SET(name, value)                                                         \
    do {                                                                                  \
        snprintf(key, sizeof(key), "%s_%s", w->class_names[c], name);                     \
        json_object_set_new(r, key, value);                                               \
    } while (0)
            BN_CLASS_SET("requests", json_integer((json_int_t)k));
            BN_CLASS_SET("wait_p50_ms", bn_ms(cw.p50));
            BN_CLASS_SET("wait_p99_ms", bn_ms(cw.p99));
            BN_CLASS_SET("ttft_mean_ms", bn_ms(ct.mean));
            BN_CLASS_SET("e2e_ttft_mean_ms", bn_ms(ce.mean));
            BN_CLASS_SET("fairness", cf >= 0 ? json_real(round(cf * 1000) / 1000) : json_null());
#undef BN_CLASS_SET
        }
        json_object_set_new(r, "classes", json_string(classes));
    }
out:
    free(ttft);
    free(e2e);
    free(wait);
    return r;
}

static void bn_print_human(const json_t *r)
{
    printf("%-6s %-7s requests %lld errors %lld  prefill %lld (optimum %lld, x%.2f)  "
           "cached %lld of %lld\n"
           "               ttft mean %.0f p50 %.0f p95 %.0f ms  queue+ttft mean %.0f ms  "
           "wait p99 %.0f ms  makespan %.0f ms\n",
           json_string_value(json_object_get(r, "workload")),
           json_string_value(json_object_get(r, "policy")),
           (long long)json_integer_value(json_object_get(r, "requests")),
           (long long)json_integer_value(json_object_get(r, "errors")),
           (long long)json_integer_value(json_object_get(r, "prefill_tokens")),
           (long long)json_integer_value(json_object_get(r, "optimal_prefill_tokens")),
           json_number_value(json_object_get(r, "prefill_vs_optimal")),
           (long long)json_integer_value(json_object_get(r, "cached_tokens")),
           (long long)json_integer_value(json_object_get(r, "prompt_tokens")),
           json_number_value(json_object_get(r, "ttft_mean_ms")),
           json_number_value(json_object_get(r, "ttft_p50_ms")),
           json_number_value(json_object_get(r, "ttft_p95_ms")),
           json_number_value(json_object_get(r, "e2e_ttft_mean_ms")),
           json_number_value(json_object_get(r, "wait_p99_ms")),
           json_number_value(json_object_get(r, "makespan_ms")));
}

/* Appends one JSON line per sent request to path: who sent it, when, how
 * long it waited, and the server's token counts. */
static void bn_dump(const char *path, const bn_workload *w, const char *policy)
{
    FILE *f = fopen(path, "a");
    if (f == NULL) {
        fprintf(stderr, "lmbench: --dump %s: %s\n", path, strerror(errno));
        return;
    }
    for (size_t i = 0; i < w->nreqs; i++) {
        const bn_req *q = &w->reqs[i];
        if (!q->sent)
            continue;
        fprintf(f,
                "{\"workload\":\"%s\",\"policy\":\"%s\",\"agent\":%d,\"seq\":%d,"
                "\"class\":\"%s\",\"system\":%d,\"err\":%d,\"prompt_tokens\":%lld,"
                "\"cached_tokens\":%lld,\"sent_ms\":%.1f,\"queue_ms\":%.1f,"
                "\"ttft_ms\":%.1f,\"total_ms\":%.1f,\"done_ms\":%.1f}\n",
                w->name, policy, q->agent, q->seq, w->class_names[q->cls], q->system, q->err,
                (long long)q->prompt_tokens, (long long)q->cached_tokens, q->sent_ms,
                q->queue_ms, q->ttft_ms, q->total_ms, q->done_ms);
    }
    fclose(f);
}

/* GET /sim/stats of every lmsim, summed into one object of the same shape
 * (requests and tokens added, max_active added: an upper bound of what ran
 * at once, sim_ms the longest; config the first's). Returns 0, or -1 with
 * why set. */
static int bn_fleet_stats(const bn_opts *o, json_t **outp, char *why, size_t whylen)
{
    static const char *const sums[] = {"requests", "prompt_tokens", "prefill_tokens",
                                       "cached_tokens", "max_active"};
    json_t *sum = NULL;
    *outp = NULL;
    for (int i = -1; i < o->nmore_backends; i++) {
        const char *url = i < 0 ? o->backend : o->more_backends[i];
        json_t *st = NULL;
        if (bn_http_json(url, "/sim/stats", false, &st) != 0) {
            snprintf(why, whylen, "cannot read %s/sim/stats", url);
            json_decref(sum);
            return -1;
        }
        if (sum == NULL) {
            sum = st;
            continue;
        }
        for (size_t k = 0; k < sizeof(sums) / sizeof(sums[0]); k++) {
            int64_t a = bn_json_int(sum, sums[k]), b = bn_json_int(st, sums[k]);
            json_object_set_new(sum, sums[k],
                                a >= 0 && b >= 0 ? json_integer(a + b) : json_null());
        }
        double ms = json_number_value(json_object_get(st, "sim_ms"));
        if (ms > json_number_value(json_object_get(sum, "sim_ms")))
            json_object_set_new(sum, "sim_ms", json_real(ms));
        json_decref(st);
    }
    *outp = sum;
    return 0;
}

/* Resets the backend before a policy's run and returns the time scale for
 * `many`'s arrivals (lmsim's clock speed, or --time-scale for llama-server).
 * Returns 0, or -1 with why set. */
static int bn_backend_reset(const bn_opts *o, const bn_workload *w, double *time_scale,
                            char *why, size_t whylen)
{
    json_t *reset = NULL, *stats = NULL;
    if (o->backend_kind == BN_BACKEND_LLAMACPP) {
        /* measured once, before the first reset: every policy gets the
         * same arrivals */
        static double measured;
        if (o->time_scale_auto && measured == 0 &&
            bn_llama_calibrate(o->backend, w, &measured, why, whylen) != 0)
            return -1;
        *time_scale = o->time_scale_auto ? measured : o->time_scale;
        return bn_llama_reset(o, why, whylen);
    }
    for (int i = -1; i < o->nmore_backends; i++) {
        const char *url = i < 0 ? o->backend : o->more_backends[i];
        if (bn_http_json(url, "/sim/reset", true, &reset) != 0) {
            snprintf(why, whylen, "cannot reset the backend at %s (is it lmsim?)", url);
            return -1;
        }
        json_decref(reset);
    }
    /* lmsim's clock speed, to send `many`'s arrivals at simulated times */
    if (bn_http_json(o->backend, "/sim/stats", false, &stats) != 0) {
        snprintf(why, whylen, "cannot read %s/sim/stats", o->backend);
        return -1;
    }
    *time_scale = json_number_value(
        json_object_get(json_object_get(stats, "config"), "time_scale"));
    json_decref(stats);
    return 0;
}

/* Runs the workload once under one policy and prints its line. Returns 0 or
 * -1 (the policy could not be run; a JSON line with "error" says why). */
static int bn_run_policy(const bn_opts *o, bn_workload *w, const char *lmsched,
                         const char *policy)
{
    bn_daemon d = {0};
    json_t *stats = NULL, *r = NULL;
    bn_figures fig;
    char why[512] = "";
    int rc = -1;
    double makespan, time_scale = 1;
    bool llama = o->backend_kind == BN_BACKEND_LLAMACPP;

    bn_workload_reset(w);
    if (bn_backend_reset(o, w, &time_scale, why, sizeof(why)) != 0)
        goto out;
    if (bn_daemon_start(&d, o, lmsched, policy, why, sizeof(why)) != 0)
        goto out;
    makespan = bn_run_workload(w, d.url, time_scale);
    if (makespan < 0) {
        snprintf(why, sizeof(why), "the agents could not start");
        goto out;
    }
    if (llama) {
        fig = bn_figures_llama(w, time_scale);
    } else {
        if (bn_fleet_stats(o, &stats, why, sizeof(why)) != 0)
            goto out;
        fig = bn_figures_lmsim(stats);
    }
    bn_daemon_stop(&d);
    /* The optimum counts in the engine's tokens: ask it to tokenize what
     * was sent (its tokenizer is stateless; a reset does not matter). */
    if (llama && bn_llama_tokenize_workload(o->backend, w) != 0) {
        snprintf(why, sizeof(why), "cannot tokenize the prompts with %s/tokenize",
                 o->backend);
        goto out;
    }

    /* The optimum uses the prompts as rendered here; if the server counted
     * different prompt tokens, the rendering no longer matches its own. */
    int64_t model = bn_model_prompt_tokens(w), seen = fig.prompt;
    if (llama) {
        /* only replies carry a count: compare over the successful ones */
        model = 0;
        for (size_t i = 0; i < w->nreqs; i++)
            if (w->reqs[i].sent && w->reqs[i].err == LMSCHED_OK &&
                w->reqs[i].prompt_tokens >= 0)
                model += (int64_t)w->reqs[i].ntoks;
    }
    if (model != seen)
        fprintf(stderr,
                "lmbench: warning: %s/%s: the server counted %lld prompt tokens, the "
                "workload renders to %lld (failed requests, or a rendering mismatch)\n",
                w->name, policy, (long long)seen, (long long)model);
    int shown = 0;
    for (size_t i = 0; i < w->nreqs && shown < 5; i++)
        if (w->reqs[i].sent && w->reqs[i].err != LMSCHED_OK) {
            fprintf(stderr, "lmbench: %s/%s: agent %d request %d: %s: %s\n", w->name,
                    policy, w->reqs[i].agent + 1, w->reqs[i].seq + 1,
                    lmsched_err_name(w->reqs[i].err),
                    w->reqs[i].errmsg ? w->reqs[i].errmsg
                                      : lmsched_strerror(w->reqs[i].err));
            shown++;
        }
    if (o->dump != NULL)
        bn_dump(o->dump, w, policy);
    if ((r = bn_result(o, w, policy, &fig, makespan, bn_optimum(w, o->slots))) == NULL) {
        snprintf(why, sizeof(why), "out of memory");
        goto out;
    }
    rc = 0;
out:
    bn_daemon_stop(&d);
    if (rc != 0) {
        fprintf(stderr, "lmbench: %s/%s: %s\n", w->name, policy, why);
        r = json_pack("{s:s, s:s, s:s}", "workload", w->name, "policy", policy, "error",
                      why);
    }
    if (r != NULL) {
        if (o->json || rc != 0) {
            char *line = json_dumps(r, JSON_COMPACT | JSON_PRESERVE_ORDER |
                                           JSON_REAL_PRECISION(12));
            if (line != NULL)
                printf("%s\n", line);
            free(line);
        } else {
            bn_print_human(r);
        }
        fflush(stdout);
    }
    json_decref(r);
    json_decref(stats);
    return rc;
}

int main(int argc, char **argv)
{
    bn_opts o;
    bn_workload *w = NULL;
    char *policy_buf = NULL;
    char lmsched[PATH_MAX];
    int code = 2;

    switch (bn_parse(argc, argv, &o, &policy_buf)) {
    case 0:
        break;
    case 1:
        code = 0;
        goto out;
    default:
        goto out;
    }
    if (o.lmsched != NULL) {
        snprintf(lmsched, sizeof(lmsched), "%s", o.lmsched);
    } else if (kit_sibling_path("lmsched", lmsched, sizeof(lmsched)) != 0) {
        fprintf(stderr, "lmbench: cannot find lmsched next to lmbench; use --lmsched\n");
        goto out;
    }
    if (access(lmsched, X_OK) != 0) {
        fprintf(stderr, "lmbench: %s: %s\n", lmsched, strerror(errno));
        goto out;
    }
    code = 1;
    /* A daemon that dies must not take lmbench with it through a write to a
     * closed socket. */
    signal(SIGPIPE, SIG_IGN);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        goto out;
    if (o.backend_kind == BN_BACKEND_AUTO)
        o.backend_kind =
            bn_llama_slots(o.backend) > 0 ? BN_BACKEND_LLAMACPP : BN_BACKEND_LMSIM;
    if (o.backend_kind == BN_BACKEND_LLAMACPP && o.nmore_backends > 0) {
        fprintf(stderr, "lmbench: several --backend: lmsim only\n");
        code = 2;
        goto out_curl;
    }
    if (bn_workload_alloc(&w, o.kind, o.seed, o.scale) != 0 ||
        (o.tools && bn_workload_add_tools(w, o.seed, BN_TOOLS_TOKENS) != 0)) {
        fprintf(stderr, "lmbench: out of memory\n");
        goto out_curl;
    }
    if (o.classes != NULL && (w->nclasses < 2 || bn_workload_classes(w, o.classes) != 0)) {
        fprintf(stderr, "lmbench: --classes: the mixed workload's classes are interactive, "
                        "roles and batch\n");
        code = 2;
        goto out_curl;
    }
    code = 0;
    for (int i = 0; i < o.npolicies; i++)
        if (bn_run_policy(&o, w, lmsched, o.policies[i]) != 0)
            code = 1;
out_curl:
    curl_global_cleanup();
out:
    bn_workload_free(w);
    free(policy_buf);
    return code;
}
