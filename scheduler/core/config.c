/*
 * config - `lmsched serve` flags. getopt_long, strict number parsing, and
 * one usage text that documents every default.
 */
#include "scheduler/core/config.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "lmsched/wire.h"
#include "scheduler/memory/budget.h"

/* API paths users paste with the server's URL (LM Studio's UI shows
 * "http://127.0.0.1:1234/v1"); lmsched adds them itself. Longest first. */
static const char *const config_api_suffixes[] = {"/v1/chat/completions", "/api/v1", "/v1"};

/* Sets cfg->backend from a URL: trailing slashes and an API path suffix
 * are dropped (what was dropped is kept in backend_stripped for the log).
 * Returns 0, or -1 when it is not an http(s) URL or too long. */
static int config_set_backend(sched_config *cfg, const char *url)
{
    size_t n = strlen(url);
    if (n == 0 || n >= sizeof(cfg->backend))
        return -1;
    memcpy(cfg->backend, url, n + 1);
    cfg->backend_stripped[0] = '\0';
    while (n > 0 && cfg->backend[n - 1] == '/')
        cfg->backend[--n] = '\0';
    for (size_t i = 0; i < sizeof(config_api_suffixes) / sizeof(config_api_suffixes[0]); i++) {
        size_t k = strlen(config_api_suffixes[i]);
        if (n > k && strcmp(cfg->backend + n - k, config_api_suffixes[i]) == 0) {
            snprintf(cfg->backend_stripped, sizeof(cfg->backend_stripped), "%s",
                     config_api_suffixes[i]);
            n -= k;
            cfg->backend[n] = '\0';
            while (n > 0 && cfg->backend[n - 1] == '/')
                cfg->backend[--n] = '\0';
            break;
        }
    }
    if (strncmp(cfg->backend, "http://", 7) != 0 && strncmp(cfg->backend, "https://", 8) != 0)
        return -1;
    return 0;
}

void config_defaults(sched_config *cfg, const char *default_listen)
{
    memset(cfg, 0, sizeof(*cfg));
    snprintf(cfg->listen, sizeof(cfg->listen), "%s", default_listen);
    const char *be = getenv("LMSCHED_BACKEND");
    if (be == NULL || *be == '\0' || config_set_backend(cfg, be) != 0)
        config_set_backend(cfg, "http://127.0.0.1:1234"); /* a bad one fails at its first use */
    snprintf(cfg->backend_kind, sizeof(cfg->backend_kind), "auto");
    snprintf(cfg->policy, sizeof(cfg->policy), "prefix");
    snprintf(cfg->cache_type, sizeof(cfg->cache_type), "f16");
    cfg->starve_ms = 30000;
    cfg->gather_ms = 10;
    cfg->slot_similarity = 0.10;
    cfg->cache_prompt = true;
    cfg->ram_fraction = 0.60;
    cfg->max_queue = 1024;
    cfg->max_retries = 3;
    cfg->request_timeout_ms = 600000;
    cfg->connect_timeout_ms = 2000;
    cfg->drain_timeout_ms = 30000;
    cfg->backend_wait_ms = 20000;
    cfg->max_response_bytes = 8u << 20;
    cfg->probe_interval_ms = 10000;
    cfg->default_max_tokens = -1;
    cfg->log_level = LOG_INFO;
    cfg->socket_mode = 0600;
    cfg->max_per_conn = 256;
}

void config_usage(FILE *out)
{
    fprintf(out,
        "usage: lmsched serve [options]\n"
        "\n"
        "Runs the scheduler daemon in front of an LM Studio or llama.cpp server.\n"
        "\n"
        "  --listen URL            nng URL to listen on (default: $LMSCHED_URL, else\n"
        "                          ipc://$XDG_RUNTIME_DIR/lmsched.sock or ipc:///tmp/lmsched.sock)\n"
        "  --backend URL           LLM server base URL (default: $LMSCHED_BACKEND, else\n"
        "                          http://127.0.0.1:1234); LM_API_TOKEN is sent as a Bearer token\n"
        "  --backend-kind KIND     auto|lmstudio|llamacpp|openai (default auto: probe)\n"
        "  --no-cache-prompt       do not send \"cache_prompt\": true\n"
        "  --ram-fraction F        share of RAM for the model and KV caches (default 0.60)\n"
        "  --total-ram SIZE        assume this much RAM instead of reading it\n"
        "  --model-size SIZE       model size when the backend does not report it\n"
        "  --kv-per-request SIZE   reserve this much KV cache per request (flat); default:\n"
        "                          per-token accounting, see docs/memory-budget.md\n"
        "  --kv-bytes-per-token SIZE  KV cache bytes per token (default: from --model-path,\n"
        "                          else 128 KiB, a Llama-3-8B-class f16 cache)\n"
        "  --model-path FILE       GGUF model file: architecture for the per-token KV size\n"
        "  --cache-type TYPE       KV cache type for that formula: f16 (default), q8_0, q4_0 ...\n"
        "  --context TOKENS        per-slot context when the backend does not report it\n"
        "  --slots N               parallel slots when the backend does not report them\n"
        "  --max-concurrent N      never more than N requests at the backend at once\n"
        "  --max-queue N           queued requests before BUSY (default 1024)\n"
        "  --force                 start even if the model alone exceeds the budget\n"
        "  --max-retries N         retries of transient backend errors (default 3)\n"
        "  --request-timeout MS    per backend request (default 600000)\n"
        "  --connect-timeout MS    backend TCP connect (default 2000)\n"
        "  --drain-timeout MS      shutdown waits this long for in-flight requests (default 30000)\n"
        "  --backend-wait MS       a request without a deadline waits this long for an\n"
        "                          unreachable backend before failing (default 20000)\n"
        "  --max-response-bytes SIZE  most bytes of one backend response (default 8M)\n"
        "  --probe-interval MS     re-read the backend's model info (default 10000)\n"
        "  --default-max-tokens N  max_tokens for requests that give none (default: backend's)\n"
        "  --policy NAME           prefix (default: prefix-cache aware) or fifo\n"
        "  --starve-ms MS          prefix: a request queued this long runs next (default 30000)\n"
        "  --max-overtakes N       prefix: ... or once N later requests started first\n"
        "                          (default 4 x slots)\n"
        "  --gather-ms MS          prefix: a load that evicts a cached prefix waits this\n"
        "                          long for requests sent with it; a conversation keeps\n"
        "                          its slot this long for its next turn (default 10; 0 off)\n"
        "  --slot-similarity F     the backend's slot-prompt-similarity (default 0.10)\n"
        "  --log-level LEVEL       error|warn|info|debug (default info)\n"
        "  --socket-mode MODE      permissions of an ipc:// socket file, octal (default 0600)\n"
        "  --socket-group GROUP    give an ipc:// socket file to this group (name or number)\n"
        "  --auth-token-file FILE  every request must carry the token in FILE (required\n"
        "                          for a listener other than ipc://; FILE must be mode 0600\n"
        "                          or stricter unless --force)\n"
        "  --max-per-conn N        outstanding requests per agent connection before BUSY\n"
        "                          (default 256)\n"
        "  --help, --version\n"
        "\n"
        "SIZE takes K, M, G, T suffixes (powers of 1024). Exit status: 0 after a clean\n"
        "shutdown (SIGINT/SIGTERM), 1 on a runtime failure, 2 on a usage error, 4 when it\n"
        "refuses to start (the model alone exceeds the memory budget, it cannot listen, or\n"
        "the socket group or token file is unusable). LM_API_TOKEN is sent to the backend;\n"
        "LMSCHED_AUTH_TOKEN is what `lmsched status` and `lmsched chat` send to the daemon.\n");
}

static int config_num(const char *flag, const char *s, long long lo, long long hi, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end != '\0' || v < lo || v > hi) {
        fprintf(stderr, "lmsched serve: %s: expected an integer from %lld to %lld, got '%s'\n",
                flag, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int config_size(const char *flag, const char *s, uint64_t *out)
{
    if (budget_parse_size(s, out) != 0) {
        fprintf(stderr, "lmsched serve: %s: expected a size like 4G or 512MiB, got '%s'\n",
                flag, s);
        return -1;
    }
    return 0;
}

static int config_str(const char *flag, const char *s, char *dst, size_t len)
{
    if (strlen(s) >= len || *s == '\0') {
        fprintf(stderr, "lmsched serve: %s: value empty or too long\n", flag);
        return -1;
    }
    memcpy(dst, s, strlen(s) + 1);
    return 0;
}

enum {
    OPT_LISTEN = 256, OPT_BACKEND, OPT_BACKEND_KIND, OPT_NO_CACHE, OPT_FRACTION, OPT_TOTAL_RAM,
    OPT_MODEL_SIZE, OPT_KV, OPT_CONTEXT, OPT_SLOTS, OPT_MAXC, OPT_MAXQ, OPT_FORCE,
    OPT_RETRIES, OPT_REQ_TO, OPT_CONN_TO, OPT_DRAIN, OPT_PROBE, OPT_DEF_MAXTOK, OPT_POLICY,
    OPT_BACKEND_WAIT, OPT_MAX_RESPONSE,
    OPT_LOG, OPT_HELP, OPT_VERSION, OPT_KV_TOKEN, OPT_MODEL_PATH, OPT_CACHE_TYPE, OPT_STARVE,
    OPT_OVERTAKES, OPT_SIMILARITY, OPT_GATHER,
    OPT_SOCKET_MODE, OPT_SOCKET_GROUP, OPT_AUTH_FILE, OPT_MAX_PER_CONN,
};

/* The access rules between flags: only an ipc:// socket is protected by
 * file permissions; anything else (tcp://, ws://, abstract:// ...) can be
 * reached by other users, so it needs a token. Returns 0 or 2. */
static int config_check_access(const sched_config *cfg, bool socket_mode_given)
{
    bool ipc = strncmp(cfg->listen, "ipc://", 6) == 0;
    if (!ipc && cfg->auth_token_file[0] == '\0') {
        fprintf(stderr, "lmsched serve: refusing to listen on %s without a token: anyone who "
                        "can reach it could use the LLM server; give --auth-token-file FILE "
                        "(see docs/security.md)\n", cfg->listen);
        return 2;
    }
    if (!ipc && (socket_mode_given || cfg->socket_group[0] != '\0')) {
        fprintf(stderr, "lmsched serve: --socket-mode and --socket-group apply to an ipc:// "
                        "listener only, not %s\n", cfg->listen);
        return 2;
    }
    return 0;
}

int config_parse(sched_config *cfg, int argc, char **argv)
{
    static const struct option opts[] = {
        {"listen", required_argument, NULL, OPT_LISTEN},
        {"backend", required_argument, NULL, OPT_BACKEND},
        {"backend-kind", required_argument, NULL, OPT_BACKEND_KIND},
        {"no-cache-prompt", no_argument, NULL, OPT_NO_CACHE},
        {"ram-fraction", required_argument, NULL, OPT_FRACTION},
        {"total-ram", required_argument, NULL, OPT_TOTAL_RAM},
        {"model-size", required_argument, NULL, OPT_MODEL_SIZE},
        {"kv-per-request", required_argument, NULL, OPT_KV},
        {"context", required_argument, NULL, OPT_CONTEXT},
        {"slots", required_argument, NULL, OPT_SLOTS},
        {"max-concurrent", required_argument, NULL, OPT_MAXC},
        {"max-queue", required_argument, NULL, OPT_MAXQ},
        {"force", no_argument, NULL, OPT_FORCE},
        {"max-retries", required_argument, NULL, OPT_RETRIES},
        {"request-timeout", required_argument, NULL, OPT_REQ_TO},
        {"connect-timeout", required_argument, NULL, OPT_CONN_TO},
        {"drain-timeout", required_argument, NULL, OPT_DRAIN},
        {"backend-wait", required_argument, NULL, OPT_BACKEND_WAIT},
        {"max-response-bytes", required_argument, NULL, OPT_MAX_RESPONSE},
        {"probe-interval", required_argument, NULL, OPT_PROBE},
        {"default-max-tokens", required_argument, NULL, OPT_DEF_MAXTOK},
        {"policy", required_argument, NULL, OPT_POLICY},
        {"log-level", required_argument, NULL, OPT_LOG},
        {"kv-bytes-per-token", required_argument, NULL, OPT_KV_TOKEN},
        {"model-path", required_argument, NULL, OPT_MODEL_PATH},
        {"cache-type", required_argument, NULL, OPT_CACHE_TYPE},
        {"starve-ms", required_argument, NULL, OPT_STARVE},
        {"max-overtakes", required_argument, NULL, OPT_OVERTAKES},
        {"gather-ms", required_argument, NULL, OPT_GATHER},
        {"socket-mode", required_argument, NULL, OPT_SOCKET_MODE},
        {"socket-group", required_argument, NULL, OPT_SOCKET_GROUP},
        {"auth-token-file", required_argument, NULL, OPT_AUTH_FILE},
        {"max-per-conn", required_argument, NULL, OPT_MAX_PER_CONN},
        {"slot-similarity", required_argument, NULL, OPT_SIMILARITY},
        {"help", no_argument, NULL, OPT_HELP},
        {"version", no_argument, NULL, OPT_VERSION},
        {NULL, 0, NULL, 0},
    };
    long long v;
    bool socket_mode_given = false;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case OPT_LISTEN:
            if (config_str("--listen", optarg, cfg->listen, sizeof(cfg->listen)))
                return 2;
            break;
        case OPT_BACKEND:
            if (config_set_backend(cfg, optarg) != 0) {
                fprintf(stderr, "lmsched serve: --backend: expected an http:// URL, got '%s'\n",
                        optarg);
                return 2;
            }
            break;
        case OPT_BACKEND_KIND:
            if (strcmp(optarg, "auto") && strcmp(optarg, "lmstudio") &&
                strcmp(optarg, "llamacpp") && strcmp(optarg, "openai")) {
                fprintf(stderr, "lmsched serve: --backend-kind: expected auto, lmstudio, "
                                "llamacpp or openai, got '%s'\n", optarg);
                return 2;
            }
            config_str("--backend-kind", optarg, cfg->backend_kind, sizeof(cfg->backend_kind));
            break;
        case OPT_NO_CACHE:
            cfg->cache_prompt = false;
            break;
        case OPT_FRACTION: {
            char *end;
            errno = 0;
            double f = strtod(optarg, &end);
            if (errno || end == optarg || *end || !(f > 0.0 && f <= 1.0)) {
                fprintf(stderr, "lmsched serve: --ram-fraction: expected a number in (0, 1], "
                                "got '%s'\n", optarg);
                return 2;
            }
            cfg->ram_fraction = f;
            break;
        }
        case OPT_TOTAL_RAM:
            if (config_size("--total-ram", optarg, &cfg->total_ram) || cfg->total_ram == 0)
                return 2;
            break;
        case OPT_MODEL_SIZE:
            if (config_size("--model-size", optarg, &cfg->model_size))
                return 2;
            break;
        case OPT_KV:
            if (config_size("--kv-per-request", optarg, &cfg->kv_per_request) ||
                cfg->kv_per_request == 0)
                return 2;
            break;
        case OPT_CONTEXT:
            if (config_num("--context", optarg, 1, 1 << 24, &v))
                return 2;
            cfg->context = v;
            break;
        case OPT_SLOTS:
            if (config_num("--slots", optarg, 1, 4096, &v))
                return 2;
            cfg->slots = (unsigned)v;
            break;
        case OPT_MAXC:
            if (config_num("--max-concurrent", optarg, 1, 4096, &v))
                return 2;
            cfg->max_concurrent = (unsigned)v;
            break;
        case OPT_MAXQ:
            if (config_num("--max-queue", optarg, 1, 1000000, &v))
                return 2;
            cfg->max_queue = (unsigned)v;
            break;
        case OPT_FORCE:
            cfg->force = true;
            break;
        case OPT_RETRIES:
            if (config_num("--max-retries", optarg, 0, 100, &v))
                return 2;
            cfg->max_retries = (unsigned)v;
            break;
        case OPT_REQ_TO:
            if (config_num("--request-timeout", optarg, 1, INT_MAX, &v))
                return 2;
            cfg->request_timeout_ms = (int)v;
            break;
        case OPT_CONN_TO:
            if (config_num("--connect-timeout", optarg, 1, INT_MAX, &v))
                return 2;
            cfg->connect_timeout_ms = (int)v;
            break;
        case OPT_DRAIN:
            if (config_num("--drain-timeout", optarg, 0, INT_MAX, &v))
                return 2;
            cfg->drain_timeout_ms = (int)v;
            break;
        case OPT_BACKEND_WAIT:
            if (config_num("--backend-wait", optarg, 0, INT_MAX, &v))
                return 2;
            cfg->backend_wait_ms = (int)v;
            break;
        case OPT_MAX_RESPONSE:
            /* At least 4 KiB: a normal answer's stream is a few KiB. */
            if (config_size("--max-response-bytes", optarg, &cfg->max_response_bytes))
                return 2;
            if (cfg->max_response_bytes < 4096) {
                fprintf(stderr, "lmsched serve: --max-response-bytes: at least 4K, got '%s'\n",
                        optarg);
                return 2;
            }
            break;
        case OPT_PROBE:
            if (config_num("--probe-interval", optarg, 100, INT_MAX, &v))
                return 2;
            cfg->probe_interval_ms = (int)v;
            break;
        case OPT_DEF_MAXTOK:
            if (config_num("--default-max-tokens", optarg, -1, LMSCHED_MAX_TOKENS_MAX, &v))
                return 2;
            cfg->default_max_tokens = (int32_t)v;
            break;
        case OPT_POLICY:
            if (strcmp(optarg, "prefix") != 0 && strcmp(optarg, "fifo") != 0) {
                fprintf(stderr, "lmsched serve: --policy: expected prefix or fifo, got '%s'\n",
                        optarg);
                return 2;
            }
            config_str("--policy", optarg, cfg->policy, sizeof(cfg->policy));
            break;
        case OPT_LOG:
            if (log_parse_level(optarg, &cfg->log_level) != 0) {
                fprintf(stderr, "lmsched serve: --log-level: expected error, warn, info or "
                                "debug, got '%s'\n", optarg);
                return 2;
            }
            break;
        case OPT_KV_TOKEN:
            if (config_size("--kv-bytes-per-token", optarg, &cfg->kv_bytes_per_token) ||
                cfg->kv_bytes_per_token == 0)
                return 2;
            break;
        case OPT_MODEL_PATH:
            if (config_str("--model-path", optarg, cfg->model_path, sizeof(cfg->model_path)))
                return 2;
            break;
        case OPT_CACHE_TYPE:
            if (config_str("--cache-type", optarg, cfg->cache_type, sizeof(cfg->cache_type)))
                return 2;
            break;
        case OPT_STARVE:
            if (config_num("--starve-ms", optarg, 1, INT_MAX, &v))
                return 2;
            cfg->starve_ms = (int)v;
            break;
        case OPT_GATHER:
            if (config_num("--gather-ms", optarg, 0, 10000, &v))
                return 2;
            cfg->gather_ms = (int)v;
            break;
        case OPT_OVERTAKES:
            if (config_num("--max-overtakes", optarg, 1, 1000000, &v))
                return 2;
            cfg->max_overtakes = (unsigned)v;
            break;
        case OPT_SIMILARITY: {
            char *end;
            errno = 0;
            double f = strtod(optarg, &end);
            if (errno || end == optarg || *end || !(f >= 0.0 && f <= 1.0)) {
                fprintf(stderr, "lmsched serve: --slot-similarity: expected a number in "
                                "[0, 1], got '%s'\n", optarg);
                return 2;
            }
            cfg->slot_similarity = f;
            break;
        }
        case OPT_SOCKET_MODE: {
            char *end;
            errno = 0;
            unsigned long m = strtoul(optarg, &end, 8);
            /* The owner must keep read and write, or its own agents could
             * not connect. */
            if (errno || end == optarg || *end || m > 0777 || (m & 0600) != 0600) {
                fprintf(stderr, "lmsched serve: --socket-mode: expected an octal mode from "
                                "0600 to 0777 that keeps the owner's rw, got '%s'\n", optarg);
                return 2;
            }
            cfg->socket_mode = (unsigned)m;
            socket_mode_given = true;
            break;
        }
        case OPT_SOCKET_GROUP:
            if (config_str("--socket-group", optarg, cfg->socket_group,
                           sizeof(cfg->socket_group)))
                return 2;
            break;
        case OPT_AUTH_FILE:
            if (config_str("--auth-token-file", optarg, cfg->auth_token_file,
                           sizeof(cfg->auth_token_file)))
                return 2;
            break;
        case OPT_MAX_PER_CONN:
            if (config_num("--max-per-conn", optarg, 1, 1000000, &v))
                return 2;
            cfg->max_per_conn = (unsigned)v;
            break;
        case OPT_HELP:
            config_usage(stdout);
            return 1;
        case OPT_VERSION:
            printf("lmsched %s (protocol %d)\n", LMSCHED_SERVE_VERSION, LMSCHED_PROTOCOL_VERSION);
            return 1;
        default:
            fprintf(stderr, "lmsched serve: unknown or incomplete option '%s' (see --help)\n",
                    argv[optind - 1]);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "lmsched serve: unexpected argument '%s' (see --help)\n", argv[optind]);
        return 2;
    }
    return config_check_access(cfg, socket_mode_given);
}
