/*
 * simcfg - parsing of lmsim's command line. Every numeric flag is checked
 * for junk and range here, so the engine can trust its configuration.
 */
#include "sim/config.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sim/log.h"

#ifndef LMSIM_VERSION
#define LMSIM_VERSION "0.0.0"
#endif

enum {
    OPT_PORT = 256,
    OPT_PORT_FILE,
    OPT_SLOTS,
    OPT_CTX,
    OPT_MODEL,
    OPT_MODEL_SIZE,
    OPT_SLOT_SIMILARITY,
    OPT_PREFILL_TPS,
    OPT_DECODE_TPS,
    OPT_BATCH_SLOWDOWN,
    OPT_TIME_SCALE,
    OPT_REPLY_TOKENS,
    OPT_FAIL_RATE,
    OPT_CRASH_AFTER,
    OPT_CRASH_EXIT,
    OPT_SPIKE_RATE,
    OPT_SPIKE_MS,
    OPT_MALFORMED_RATE,
    OPT_REFUSE_MS,
    OPT_HANG_RATE,
    OPT_GARBAGE_RATE,
    OPT_GARBAGE_MODE,
    OPT_GARBAGE_BYTES,
    OPT_SEED,
    OPT_LOG_LEVEL,
    OPT_INSTANT,
    OPT_HELP,
    OPT_VERSION,
};

static const struct option simcfg_options[] = {
    {"port", required_argument, NULL, OPT_PORT},
    {"port-file", required_argument, NULL, OPT_PORT_FILE},
    {"slots", required_argument, NULL, OPT_SLOTS},
    {"ctx", required_argument, NULL, OPT_CTX},
    {"model", required_argument, NULL, OPT_MODEL},
    {"model-size", required_argument, NULL, OPT_MODEL_SIZE},
    {"slot-similarity", required_argument, NULL, OPT_SLOT_SIMILARITY},
    {"prefill-tps", required_argument, NULL, OPT_PREFILL_TPS},
    {"decode-tps", required_argument, NULL, OPT_DECODE_TPS},
    {"batch-slowdown", required_argument, NULL, OPT_BATCH_SLOWDOWN},
    {"time-scale", required_argument, NULL, OPT_TIME_SCALE},
    {"reply-tokens", required_argument, NULL, OPT_REPLY_TOKENS},
    {"fail-rate", required_argument, NULL, OPT_FAIL_RATE},
    {"crash-after", required_argument, NULL, OPT_CRASH_AFTER},
    {"crash-exit", no_argument, NULL, OPT_CRASH_EXIT},
    {"spike-rate", required_argument, NULL, OPT_SPIKE_RATE},
    {"spike-ms", required_argument, NULL, OPT_SPIKE_MS},
    {"malformed-rate", required_argument, NULL, OPT_MALFORMED_RATE},
    {"refuse-ms", required_argument, NULL, OPT_REFUSE_MS},
    {"hang-rate", required_argument, NULL, OPT_HANG_RATE},
    {"garbage-rate", required_argument, NULL, OPT_GARBAGE_RATE},
    {"garbage-mode", required_argument, NULL, OPT_GARBAGE_MODE},
    {"garbage-bytes", required_argument, NULL, OPT_GARBAGE_BYTES},
    {"seed", required_argument, NULL, OPT_SEED},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"instant", no_argument, NULL, OPT_INSTANT},
    {"help", no_argument, NULL, OPT_HELP},
    {"version", no_argument, NULL, OPT_VERSION},
    {NULL, 0, NULL, 0},
};

static const char simcfg_usage[] =
    "usage: lmsim [options]\n"
    "A simulated LM Studio / llama.cpp server on 127.0.0.1 for tests and benchmarks.\n"
    "\n"
    "  --port N               port to listen on; 0 picks a free one (default 0)\n"
    "  --port-file PATH       also write the port number to PATH (atomically)\n"
    "  --slots N              parallel slots (default 4)\n"
    "  --ctx TOKENS           context per slot (default 8192)\n"
    "  --model NAME           model key (default lmsim-8b-q4)\n"
    "  --model-size BYTES     reported model size (default 4920000000)\n"
    "  --slot-similarity F    prefix share needed to pick a cached slot (default 0.10)\n"
    "  --prefill-tps F        prompt tokens/s, shared by prefilling slots (default 800)\n"
    "  --decode-tps F         tokens/s of one decoding sequence (default 45)\n"
    "  --batch-slowdown F     decode rate divisor 1+F*(active-1) (default 0.05)\n"
    "  --time-scale F         run the simulated clock F times faster (default 1)\n"
    "  --reply-tokens N       tokens in a reply (default 32)\n"
    "  --fail-rate P          fraction of requests failing with 500 Channel Error\n"
    "  --crash-after N        crash the model when the Nth request starts generating\n"
    "  --crash-exit           exit with status 3 at the crash\n"
    "  --spike-rate P         fraction of requests delayed before their first token\n"
    "  --spike-ms MS          that delay in simulated ms (default 1000)\n"
    "  --malformed-rate P     fraction of streams given one invalid JSON chunk\n"
    "  --refuse-ms MS         refuse connections for the first MS ms\n"
    "  --hang-rate P          fraction of requests accepted and never answered\n"
    "  --garbage-rate P       fraction of requests answered with garbage\n"
    "  --garbage-mode M       json, truncate, html, huge or any (default any)\n"
    "  --garbage-bytes N      length of a 'huge' answer (default 67108864)\n"
    "  --seed N               seed for replies and fault draws (default 1)\n"
    "  --log-level L          error, warn, info or debug (default info)\n"
    "  --instant              answer every chat at once with the reply, without\n"
    "                         slots, time model or faults (overhead benchmarks)\n"
    "  --help, --version\n";

void simcfg_init(sim_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->port = 0;
    cfg->port_file = NULL;
    cfg->slots = 4;
    cfg->ctx = 8192;
    cfg->model = "lmsim-8b-q4";
    cfg->model_size = 4920000000LL;
    cfg->slot_similarity = 0.10;
    cfg->prefill_tps = 800.0;
    cfg->decode_tps = 45.0;
    cfg->batch_slowdown = 0.05;
    cfg->time_scale = 1.0;
    cfg->reply_tokens = 32;
    cfg->fail_rate = 0.0;
    cfg->crash_after = 0;
    cfg->crash_exit = false;
    cfg->spike_rate = 0.0;
    cfg->spike_ms = 1000.0;
    cfg->malformed_rate = 0.0;
    cfg->refuse_ms = 0;
    cfg->hang_rate = 0.0;
    cfg->garbage_rate = 0.0;
    cfg->garbage_mode = SIM_GARBAGE_ANY;
    cfg->garbage_bytes = 64u << 20;
    cfg->seed = 1;
    cfg->log_level = SIMLOG_INFO;
}

/* Parses a whole decimal integer in [lo, hi]. */
static int simcfg_ll(const char *s, long long lo, long long hi, long long *out)
{
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

/* Parses a whole finite number in [lo, hi]. */
static int simcfg_dbl(const char *s, double lo, double hi, double *out)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !isfinite(v) || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

int simcfg_parse(sim_config *cfg, int argc, char **argv, FILE *out, FILE *err)
{
    long long n = 0;
    int opt;
    const char *name = "?";

    optind = 1;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "", simcfg_options, NULL)) != -1) {
        for (const struct option *o = simcfg_options; o->name; o++) {
            if (o->val == opt)
                name = o->name;
        }
        switch (opt) {
        case OPT_PORT:
            if (simcfg_ll(optarg, 0, 65535, &n) != 0)
                goto bad;
            cfg->port = (int)n;
            break;
        case OPT_PORT_FILE:
            if (optarg[0] == '\0')
                goto bad;
            cfg->port_file = optarg;
            break;
        case OPT_SLOTS:
            if (simcfg_ll(optarg, 1, SIMCFG_MAX_SLOTS, &n) != 0)
                goto bad;
            cfg->slots = (unsigned)n;
            break;
        case OPT_CTX:
            if (simcfg_ll(optarg, 16, SIMCFG_MAX_CTX, &n) != 0)
                goto bad;
            cfg->ctx = (unsigned)n;
            break;
        case OPT_MODEL:
            if (optarg[0] == '\0' || strlen(optarg) > SIMCFG_MAX_MODEL_NAME)
                goto bad;
            cfg->model = optarg;
            break;
        case OPT_MODEL_SIZE:
            if (simcfg_ll(optarg, 0, INT64_MAX, &n) != 0)
                goto bad;
            cfg->model_size = n;
            break;
        case OPT_SLOT_SIMILARITY:
            if (simcfg_dbl(optarg, 0.0, 1.0, &cfg->slot_similarity) != 0)
                goto bad;
            break;
        case OPT_PREFILL_TPS:
            if (simcfg_dbl(optarg, 1e-3, 1e9, &cfg->prefill_tps) != 0)
                goto bad;
            break;
        case OPT_DECODE_TPS:
            if (simcfg_dbl(optarg, 1e-3, 1e9, &cfg->decode_tps) != 0)
                goto bad;
            break;
        case OPT_BATCH_SLOWDOWN:
            if (simcfg_dbl(optarg, 0.0, 100.0, &cfg->batch_slowdown) != 0)
                goto bad;
            break;
        case OPT_TIME_SCALE:
            if (simcfg_dbl(optarg, 1e-3, 1e6, &cfg->time_scale) != 0)
                goto bad;
            break;
        case OPT_REPLY_TOKENS:
            if (simcfg_ll(optarg, 1, SIMCFG_MAX_CTX, &n) != 0)
                goto bad;
            cfg->reply_tokens = (unsigned)n;
            break;
        case OPT_FAIL_RATE:
            if (simcfg_dbl(optarg, 0.0, 1.0, &cfg->fail_rate) != 0)
                goto bad;
            break;
        case OPT_CRASH_AFTER:
            if (simcfg_ll(optarg, 0, UINT32_MAX, &n) != 0)
                goto bad;
            cfg->crash_after = (unsigned)n;
            break;
        case OPT_CRASH_EXIT:
            cfg->crash_exit = true;
            break;
        case OPT_SPIKE_RATE:
            if (simcfg_dbl(optarg, 0.0, 1.0, &cfg->spike_rate) != 0)
                goto bad;
            break;
        case OPT_SPIKE_MS:
            if (simcfg_dbl(optarg, 0.0, 1e9, &cfg->spike_ms) != 0)
                goto bad;
            break;
        case OPT_MALFORMED_RATE:
            if (simcfg_dbl(optarg, 0.0, 1.0, &cfg->malformed_rate) != 0)
                goto bad;
            break;
        case OPT_REFUSE_MS:
            if (simcfg_ll(optarg, 0, 3600000, &n) != 0)
                goto bad;
            cfg->refuse_ms = (unsigned)n;
            break;
        case OPT_HANG_RATE:
            if (simcfg_dbl(optarg, 0.0, 1.0, &cfg->hang_rate) != 0)
                goto bad;
            break;
        case OPT_GARBAGE_RATE:
            if (simcfg_dbl(optarg, 0.0, 1.0, &cfg->garbage_rate) != 0)
                goto bad;
            break;
        case OPT_GARBAGE_MODE: {
            static const char *const modes[] = {"json", "truncate", "html", "huge", "any"};
            int m = -1;
            for (int i = 0; i < 5; i++)
                if (strcmp(optarg, modes[i]) == 0)
                    m = i;
            if (m < 0)
                goto bad;
            cfg->garbage_mode = m;
            break;
        }
        case OPT_GARBAGE_BYTES:
            if (simcfg_ll(optarg, 1, 1LL << 40, &n) != 0)
                goto bad;
            cfg->garbage_bytes = (uint64_t)n;
            break;
        case OPT_SEED: {
            char *end = NULL;
            errno = 0;
            unsigned long long u = strtoull(optarg, &end, 10);
            /* strtoull accepts "-1" and wraps it; a seed is never negative. */
            if (errno != 0 || end == optarg || *end != '\0' || optarg[0] == '-')
                goto bad;
            cfg->seed = u;
            break;
        }
        case OPT_LOG_LEVEL:
            cfg->log_level = simlog_parse_level(optarg);
            if (cfg->log_level < 0)
                goto bad;
            break;
        case OPT_INSTANT:
            cfg->instant = true;
            break;
        case OPT_HELP:
            fputs(simcfg_usage, out);
            return 1;
        case OPT_VERSION:
            fprintf(out, "lmsim %s\n", LMSIM_VERSION);
            return 1;
        default:
            if (optopt == 0)
                fprintf(err, "lmsim: unknown or incomplete option '%s'\n",
                        argv[optind - 1]);
            else
                fprintf(err, "lmsim: option '%s' needs a value\n", argv[optind - 1]);
            fputs("try 'lmsim --help'\n", err);
            return -1;
        }
    }
    if (optind < argc) {
        fprintf(err, "lmsim: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    /* An instant answer never reaches the engine, where every fault is
     * drawn: accepting both would silently drop the faults. */
    if (cfg->instant &&
        (cfg->fail_rate > 0 || cfg->crash_after > 0 || cfg->spike_rate > 0 ||
         cfg->malformed_rate > 0 || cfg->hang_rate > 0 || cfg->garbage_rate > 0)) {
        fprintf(err, "lmsim: --instant cannot be combined with fault injection\n");
        return -1;
    }
    return 0;

bad:
    fprintf(err, "lmsim: invalid value '%s' for --%s\n", optarg, name);
    return -1;
}
