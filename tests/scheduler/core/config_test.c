/*
 * config_test - `lmsched serve`'s flags (scheduler/core/config.c): the
 * table is valid, every default is what the daemon has always used, every
 * flag takes its range and refuses the rest with its message, the
 * environment variables, the backend URL normalization, the rules between
 * flags, --help, --http's forms, and the JSON of the status's "config"
 * section.
 */
#include <fcntl.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "scheduler/core/config.h"
#include "scheduler/util/opt.h"

#define DEFAULT_LISTEN "ipc:///tmp/config_test.sock"

/* Runs config_parse over the defaults with the NULL-terminated args, with
 * stdout and stderr captured; returns its result, the text in *out and
 * *err (either may be NULL; free them). */
static int parse_v(sched_config *cfg, char **out, char **err, va_list ap)
{
    char *argv[128];
    int argc = 0;
    argv[argc++] = strdup("serve");
    for (const char *a; (a = va_arg(ap, const char *)) != NULL;) {
        assert_true(argc < 127);
        argv[argc++] = strdup(a);
    }
    argv[argc] = NULL;
    config_defaults(cfg, DEFAULT_LISTEN);

    FILE *fo = tmpfile(), *fe = tmpfile();
    assert_non_null(fo);
    assert_non_null(fe);
    fflush(stdout);
    fflush(stderr);
    int so = dup(1), se = dup(2);
    dup2(fileno(fo), 1);
    dup2(fileno(fe), 2);
    int rc = config_parse(cfg, argc, argv);
    fflush(stdout);
    fflush(stderr);
    dup2(so, 1);
    dup2(se, 2);
    close(so);
    close(se);

    FILE *fs[2] = {fo, fe};
    char **texts[2] = {out, err};
    for (int k = 0; k < 2; k++) {
        /* Written through the descriptor: its offset is the length. */
        off_t n = lseek(fileno(fs[k]), 0, SEEK_END);
        assert_true(n >= 0);
        char *t = calloc(1, (size_t)n + 1);
        assert_non_null(t);
        assert_int_equal(pread(fileno(fs[k]), t, (size_t)n, 0), n);
        fclose(fs[k]);
        if (texts[k] != NULL)
            *texts[k] = t;
        else
            free(t);
    }
    for (int k = 0; k < argc; k++)
        free(argv[k]);
    return rc;
}

static int parse(sched_config *cfg, char **out, char **err, ...)
{
    va_list ap;
    va_start(ap, err);
    int rc = parse_v(cfg, out, err, ap);
    va_end(ap);
    return rc;
}

/* Asserts that "serve a b" is a usage error with exactly the line want. */
static void fails(const char *want, const char *a, const char *b)
{
    sched_config cfg;
    char *err = NULL;
    int rc = parse(&cfg, NULL, &err, a, b, NULL);
    if (rc != 2 || strcmp(err, want) != 0)
        fail_msg("%s %s: rc %d, \"%s\", want \"%s\"", a, b ? b : "", rc, err, want);
    free(err);
}

static int setup(void **state)
{
    (void)state;
    unsetenv("LMSCHED_URL");
    unsetenv("LMSCHED_BACKEND");
    return 0;
}

static void test_table(void **state)
{
    (void)state;
    const opt_table *t = config_options();
    assert_int_equal(opt_check(t, stderr), 0);
    /* Every flag `lmsched serve` has had, none lost in the move to a table. */
    static const char *const flags[] = {
        "listen",
        "backend",
        "backend-kind",
        "backends-file",
        "no-cache-prompt",
        "ram-fraction",
        "total-ram",
        "model-size",
        "kv-per-request",
        "context",
        "slots",
        "max-concurrent",
        "max-queue",
        "force",
        "max-retries",
        "request-timeout",
        "connect-timeout",
        "drain-timeout",
        "backend-wait",
        "backend-errors",
        "backend-errors-ms",
        "routing",
        "exact-tokens",
        "max-response-bytes",
        "probe-interval",
        "probe-restore",
        "default-max-tokens",
        "policy",
        "log-level",
        "kv-bytes-per-token",
        "model-path",
        "cache-type",
        "starve-ms",
        "max-overtakes",
        "gather-ms",
        "preempt",
        "socket-mode",
        "socket-group",
        "auth-token-file",
        "max-per-conn",
        "slot-similarity",
        "stream-timeout",
        "stream-buffer",
        "http",
        "http-token-file",
        "http-max-body",
        "http-max-header",
        "http-max-conns",
        "http-header-timeout",
        "http-body-timeout",
        "http-cors",
    };
    assert_int_equal(t->n, sizeof(flags) / sizeof(flags[0]));
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++)
        if (opt_find(t, flags[i]) == NULL)
            fail_msg("--%s is missing", flags[i]);
}

static void test_defaults(void **state)
{
    (void)state;
    sched_config c;
    config_defaults(&c, DEFAULT_LISTEN);
    assert_string_equal(c.listen, DEFAULT_LISTEN);
    assert_string_equal(c.backend, "http://127.0.0.1:1234");
    assert_string_equal(c.backend_stripped, "");
    assert_string_equal(c.backend_kind, "auto");
    assert_string_equal(c.policy, "prefix");
    assert_string_equal(c.routing, "cache");
    assert_string_equal(c.exact_tokens, "auto");
    assert_int_equal(c.backend_errors, 5);
    assert_int_equal(c.backend_errors_ms, 10000);
    assert_true(c.cache_prompt);
    assert_true(c.ram_fraction == 0.60);
    assert_true(c.total_ram == 0);
    assert_true(c.model_size == 0);
    assert_true(c.kv_per_request == 0);
    assert_true(c.kv_bytes_per_token == 0);
    assert_string_equal(c.model_path, "");
    assert_string_equal(c.cache_type, "f16");
    assert_int_equal(c.starve_ms, 30000);
    assert_int_equal(c.max_overtakes, 0);
    assert_int_equal(c.gather_ms, 10);
    assert_true(c.slot_similarity == 0.10);
    assert_true(c.context == 0);
    assert_int_equal(c.slots, 0);
    assert_int_equal(c.max_concurrent, 0);
    assert_int_equal(c.max_queue, 1024);
    assert_false(c.force);
    assert_int_equal(c.max_retries, 3);
    assert_int_equal(c.request_timeout_ms, 600000);
    assert_int_equal(c.connect_timeout_ms, 2000);
    assert_int_equal(c.drain_timeout_ms, 30000);
    assert_int_equal(c.backend_wait_ms, 20000);
    assert_true(c.max_response_bytes == 8u << 20);
    assert_int_equal(c.probe_interval_ms, 10000);
    assert_int_equal(c.probe_restore, 1);
    assert_int_equal(c.default_max_tokens, -1);
    assert_int_equal(c.log_level, LOG_INFO);
    assert_int_equal(c.socket_mode, 0600);
    assert_string_equal(c.socket_group, "");
    assert_string_equal(c.auth_token_file, "");
    assert_int_equal(c.max_per_conn, 256);
    assert_string_equal(c.http, "");
    assert_string_equal(c.http_token_file, "");
    assert_true(c.http_max_body == 16u << 20);
    assert_true(c.http_max_header == 32u << 10);
    assert_int_equal(c.http_max_conns, 256);
    assert_int_equal(c.http_header_timeout_ms, 10000);
    assert_int_equal(c.http_body_timeout_ms, 30000);
    assert_string_equal(c.http_cors, "");

    /* No flags: the defaults run. */
    char *out = NULL, *err = NULL;
    assert_int_equal(parse(&c, &out, &err, NULL), 0);
    assert_string_equal(out, "");
    assert_string_equal(err, "");
    free(out);
    free(err);
}

/* Every flag at its bounds. */
static void test_values(void **state)
{
    (void)state;
    sched_config c;
    char *err = NULL;
    int rc =
        parse(&c, NULL, &err, "--listen", "ipc:///tmp/x.sock", "--backend",
              "https://h:9/api/v1", "--backend-kind", "llamacpp", "--no-cache-prompt",
              "--ram-fraction", "1", "--total-ram", "48G", "--model-size", "0",
              "--kv-per-request", "1G", "--kv-bytes-per-token", "64K", "--model-path",
              "/m.gguf", "--cache-type", "q8_0", "--context", "16777216", "--slots",
              "4096", "--max-concurrent", "1", "--max-queue", "1000000", "--force",
              "--max-retries", "0", "--request-timeout", "2147483647",
              "--connect-timeout", "1", "--drain-timeout", "0", "--backend-wait", "0",
              "--max-response-bytes", "4K", "--probe-interval", "100",
              "--probe-restore", "off", "--default-max-tokens", "1048576", "--policy", "fifo", "--starve-ms", "1",
              "--max-overtakes", "1000000", "--gather-ms", "10000", "--slot-similarity",
              "0", "--log-level", "debug", "--socket-mode", "0777", "--socket-group",
              "staff", "--auth-token-file", "/t", "--max-per-conn", "1", NULL);
    if (rc != 0)
        fail_msg("rc %d: %s", rc, err);
    free(err);
    assert_string_equal(c.listen, "ipc:///tmp/x.sock");
    assert_string_equal(c.backend, "https://h:9");
    assert_string_equal(c.backend_stripped, "/api/v1");
    assert_string_equal(c.backend_kind, "llamacpp");
    assert_false(c.cache_prompt);
    assert_true(c.ram_fraction == 1.0);
    assert_true(c.total_ram == 48ULL << 30);
    assert_true(c.model_size == 0);
    assert_true(c.kv_per_request == 1ULL << 30);
    assert_true(c.kv_bytes_per_token == 64 << 10);
    assert_string_equal(c.model_path, "/m.gguf");
    assert_string_equal(c.cache_type, "q8_0");
    assert_true(c.context == 1 << 24);
    assert_int_equal(c.slots, 4096);
    assert_int_equal(c.max_concurrent, 1);
    assert_int_equal(c.max_queue, 1000000);
    assert_true(c.force);
    assert_int_equal(c.max_retries, 0);
    assert_int_equal(c.request_timeout_ms, INT_MAX);
    assert_int_equal(c.connect_timeout_ms, 1);
    assert_int_equal(c.drain_timeout_ms, 0);
    assert_int_equal(c.backend_wait_ms, 0);
    assert_true(c.max_response_bytes == 4096);
    assert_int_equal(c.probe_interval_ms, 100);
    assert_int_equal(c.probe_restore, 0);
    assert_int_equal(c.default_max_tokens, 1048576);
    assert_string_equal(c.policy, "fifo");
    assert_int_equal(c.starve_ms, 1);
    assert_int_equal(c.max_overtakes, 1000000);
    assert_int_equal(c.gather_ms, 10000);
    assert_true(c.slot_similarity == 0.0);
    assert_int_equal(c.log_level, LOG_DEBUG);
    assert_int_equal(c.socket_mode, 0777);
    assert_string_equal(c.socket_group, "staff");
    assert_string_equal(c.auth_token_file, "/t");
    assert_int_equal(c.max_per_conn, 1);
}

/* Each flag just outside its range, with the message users have seen. */
static void test_errors(void **state)
{
    (void)state;
    const char *p = "lmsched serve: ";
    static const struct {
        const char *flag, *val, *msg;
    } cases[] = {
        {"--max-queue", "x",
         "--max-queue: expected an integer from 1 to 1000000, got 'x'"},
        {"--max-queue", "0",
         "--max-queue: expected an integer from 1 to 1000000, got '0'"},
        {"--context", "16777217",
         "--context: expected an integer from 1 to 16777216, got "
         "'16777217'"},
        {"--slots", "4097", "--slots: expected an integer from 1 to 4096, got '4097'"},
        {"--max-concurrent", "0",
         "--max-concurrent: expected an integer from 1 to 4096, "
         "got '0'"},
        {"--max-retries", "101",
         "--max-retries: expected an integer from 0 to 100, got "
         "'101'"},
        {"--request-timeout", "0",
         "--request-timeout: expected an integer from 1 to "
         "2147483647, got '0'"},
        {"--connect-timeout", "2147483648",
         "--connect-timeout: expected an integer from 1 "
         "to 2147483647, got '2147483648'"},
        {"--drain-timeout", "-1",
         "--drain-timeout: expected an integer from 0 to "
         "2147483647, got '-1'"},
        {"--backend-wait", "1.5",
         "--backend-wait: expected an integer from 0 to "
         "2147483647, got '1.5'"},
        {"--probe-interval", "99",
         "--probe-interval: expected an integer from 100 to "
         "2147483647, got '99'"},
        {"--default-max-tokens", "-2",
         "--default-max-tokens: expected an integer from -1 "
         "to 1048576, got '-2'"},
        {"--starve-ms", "0",
         "--starve-ms: expected an integer from 1 to 2147483647, got "
         "'0'"},
        {"--max-overtakes", "0",
         "--max-overtakes: expected an integer from 1 to 1000000, "
         "got '0'"},
        {"--gather-ms", "10001",
         "--gather-ms: expected an integer from 0 to 10000, got "
         "'10001'"},
        {"--max-per-conn", "0",
         "--max-per-conn: expected an integer from 1 to 1000000, got "
         "'0'"},
        {"--ram-fraction", "0", "--ram-fraction: expected a number in (0, 1], got '0'"},
        {"--ram-fraction", "1.01",
         "--ram-fraction: expected a number in (0, 1], got '1.01'"},
        {"--slot-similarity", "-0.1",
         "--slot-similarity: expected a number in [0, 1], got "
         "'-0.1'"},
        {"--total-ram", "lots",
         "--total-ram: expected a size like 4G or 512MiB, got 'lots'"},
        {"--total-ram", "0", "--total-ram: expected a size above 0, got '0'"},
        {"--model-size", "-1",
         "--model-size: expected a size like 4G or 512MiB, got '-1'"},
        {"--kv-per-request", "0", "--kv-per-request: expected a size above 0, got '0'"},
        {"--kv-bytes-per-token", "0",
         "--kv-bytes-per-token: expected a size above 0, got "
         "'0'"},
        {"--max-response-bytes", "4095", "--max-response-bytes: at least 4K, got '4095'"},
        {"--backend", "localhost:1234",
         "--backend: expected an http:// URL, got "
         "'localhost:1234'"},
        {"--backend-kind", "ollama",
         "--backend-kind: expected auto, lmstudio, llamacpp or "
         "openai, got 'ollama'"},
        {"--policy", "lifo", "--policy: expected prefix or fifo, got 'lifo'"},
        {"--routing", "random",
         "--routing: expected cache, round-robin or least-loaded, got 'random'"},
        {"--exact-tokens", "on", "--exact-tokens: expected auto or off, got 'on'"},
        {"--backend-errors-ms", "0",
         "--backend-errors-ms: expected an integer from 1 to 2147483647, got '0'"},
        {"--log-level", "loud",
         "--log-level: expected error, warn, info or debug, got "
         "'loud'"},
        {"--socket-mode", "0066",
         "--socket-mode: expected an octal mode from 0600 to 0777 "
         "that keeps the owner's rw, got '0066'"},
        {"--socket-mode", "0999",
         "--socket-mode: expected an octal mode from 0600 to 0777 "
         "that keeps the owner's rw, got '0999'"},
        {"--socket-mode", "01600",
         "--socket-mode: expected an octal mode from 0600 to 0777 "
         "that keeps the owner's rw, got '01600'"},
        {"--listen", "", "--listen: value empty or too long"},
        {"--model-path", "", "--model-path: value empty or too long"},
        {"--cache-type", "f16-but-much-too-long",
         "--cache-type: value empty or too long"},
        {"--socket-group", "", "--socket-group: value empty or too long"},
        {"--auth-token-file", "", "--auth-token-file: value empty or too long"},
        {"--max-queue", NULL, "option '--max-queue' needs a value (see --help)"},
        {"--force=yes", NULL, "option '--force' takes no value (see --help)"},
        {"--frobnicate", NULL,
         "unknown or incomplete option '--frobnicate' (see --help)"},
        {"stray", NULL, "unexpected argument 'stray' (see --help)"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char want[512];
        snprintf(want, sizeof(want), "%s%s\n", p, cases[i].msg);
        fails(want, cases[i].flag, cases[i].val);
    }

    /* A backend URL longer than the field is refused, not cut. */
    char url[600] = "http://";
    memset(url + 7, 'h', 520);
    url[527] = '\0';
    sched_config c;
    char *err = NULL;
    assert_int_equal(parse(&c, NULL, &err, "--backend", url, NULL), 2);
    assert_non_null(strstr(err, "--backend: expected an http:// URL"));
    free(err);
}

static void test_backend_url(void **state)
{
    (void)state;
    static const struct {
        const char *in, *out, *stripped;
    } cases[] = {
        {"http://127.0.0.1:1234", "http://127.0.0.1:1234", ""},
        {"http://127.0.0.1:1234/", "http://127.0.0.1:1234", ""},
        {"http://127.0.0.1:1234/v1", "http://127.0.0.1:1234", "/v1"},
        {"http://127.0.0.1:1234/v1/", "http://127.0.0.1:1234", "/v1"},
        {"https://h/api/v1", "https://h", "/api/v1"},
        {"http://h:8080/v1/chat/completions", "http://h:8080", "/v1/chat/completions"},
        {"http://h/proxy/v1", "http://h/proxy", "/v1"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        sched_config c;
        assert_int_equal(parse(&c, NULL, NULL, "--backend", cases[i].in, NULL), 0);
        assert_string_equal(c.backend, cases[i].out);
        assert_string_equal(c.backend_stripped, cases[i].stripped);
    }
    /* Only the suffix is an API path: "/v1" alone is not a server. */
    fails("lmsched serve: --backend: expected an http:// URL, got '/v1'\n", "--backend",
          "/v1");
    fails("lmsched serve: --backend: expected an http:// URL, got 'ftp://h'\n",
          "--backend", "ftp://h");
}

/* --backend repeated: the first replaces the default, each further one
 * adds a server, in order; the variable takes a comma-separated list; more
 * than 8 is a usage error saying so. */
static void test_backends_repeated(void **state)
{
    (void)state;
    sched_config c;
    char *err = NULL;
    assert_int_equal(parse(&c, NULL, NULL, NULL), 0);
    assert_int_equal(c.n_backends, 1);
    assert_string_equal(c.backend, "http://127.0.0.1:1234");
    assert_int_equal(parse(&c, NULL, NULL, "--backend", "http://a:1/v1", "--backend",
                           "http://b:2/", "--backend", "https://c:3", NULL),
                     0);
    assert_int_equal(c.n_backends, 3);
    assert_string_equal(c.backend, "http://a:1");
    assert_string_equal(c.backend_more[0], "http://b:2");
    assert_string_equal(c.backend_more[1], "https://c:3");
    setenv("LMSCHED_BACKEND", "http://x:1,http://y:2", 1);
    assert_int_equal(parse(&c, NULL, NULL, NULL), 0);
    assert_int_equal(c.n_backends, 2);
    assert_string_equal(c.backend, "http://x:1");
    assert_string_equal(c.backend_more[0], "http://y:2");
    setenv("LMSCHED_BACKEND", "http://x:1,y:2", 1);
    assert_int_equal(parse(&c, NULL, &err, NULL), 2);
    assert_non_null(strstr(err, "LMSCHED_BACKEND: expected an http:// URL"));
    free(err);
    unsetenv("LMSCHED_BACKEND");
    assert_int_equal(parse(&c, NULL, &err, "--backend", "http://a:1", "--backend",
                           "http://a:2", "--backend", "http://a:3", "--backend", "http://a:4",
                           "--backend", "http://a:5", "--backend", "http://a:6", "--backend",
                           "http://a:7", "--backend", "http://a:8", "--backend", "http://a:9",
                           NULL),
                     2);
    assert_string_equal(err, "lmsched serve: --backend: at most 8 LLM servers, got 9\n");
    free(err);
}

static void test_env(void **state)
{
    (void)state;
    sched_config c;
    char *err = NULL;

    setenv("LMSCHED_BACKEND", "http://10.0.0.2:1234/v1", 1);
    assert_int_equal(parse(&c, NULL, NULL, NULL), 0);
    assert_string_equal(c.backend, "http://10.0.0.2:1234");
    assert_string_equal(c.backend_stripped, "/v1");
    /* The flag wins over the variable. */
    assert_int_equal(parse(&c, NULL, NULL, "--backend", "http://h:1", NULL), 0);
    assert_string_equal(c.backend, "http://h:1");
    /* A bad variable is a usage error naming it, not a silent default. */
    setenv("LMSCHED_BACKEND", "10.0.0.2:1234", 1);
    assert_int_equal(parse(&c, NULL, &err, NULL), 2);
    assert_string_equal(err,
                        "lmsched serve: LMSCHED_BACKEND: expected an http:// URL, got "
                        "'10.0.0.2:1234'\n");
    free(err);
    /* ... unless the flag replaces it. */
    assert_int_equal(parse(&c, NULL, NULL, "--backend", "http://h:1", NULL), 0);
    setenv("LMSCHED_BACKEND", "", 1);
    assert_int_equal(parse(&c, NULL, NULL, NULL), 0);
    assert_string_equal(c.backend, "http://127.0.0.1:1234");
    unsetenv("LMSCHED_BACKEND");

    setenv("LMSCHED_URL", "ipc:///tmp/from-env.sock", 1);
    assert_int_equal(parse(&c, NULL, NULL, NULL), 0);
    assert_string_equal(c.listen, "ipc:///tmp/from-env.sock");
    assert_int_equal(parse(&c, NULL, NULL, "--listen", "ipc:///tmp/flag.sock", NULL), 0);
    assert_string_equal(c.listen, "ipc:///tmp/flag.sock");
    /* The variable's listener follows the same access rules as the flag's. */
    setenv("LMSCHED_URL", "tcp://127.0.0.1:7010", 1);
    assert_int_equal(parse(&c, NULL, &err, NULL), 2);
    assert_non_null(
        strstr(err, "refusing to listen on tcp://127.0.0.1:7010 without a token"));
    free(err);
    unsetenv("LMSCHED_URL");
}

static void test_access_rules(void **state)
{
    (void)state;
    sched_config c;
    char *err = NULL;
    assert_int_equal(parse(&c, NULL, &err, "--listen", "tcp://127.0.0.1:7010", NULL), 2);
    assert_string_equal(err,
                        "lmsched serve: refusing to listen on tcp://127.0.0.1:7010 "
                        "without a token: anyone who can reach it could use the LLM "
                        "server; give --auth-token-file FILE (see docs/security.md)\n");
    free(err);
    assert_int_equal(parse(&c, NULL, NULL, "--listen", "tcp://127.0.0.1:7010",
                           "--auth-token-file", "/t", NULL),
                     0);
    /* Socket file options on a listener without a socket file. */
    assert_int_equal(parse(&c, NULL, &err, "--listen", "tcp://127.0.0.1:7010",
                           "--auth-token-file", "/t", "--socket-mode", "0600", NULL),
                     2);
    assert_string_equal(err,
                        "lmsched serve: --socket-mode and --socket-group apply to an "
                        "ipc:// listener only, not tcp://127.0.0.1:7010\n");
    free(err);
    assert_int_equal(parse(&c, NULL, NULL, "--listen", "tcp://127.0.0.1:7010",
                           "--auth-token-file", "/t", "--socket-group", "staff", NULL),
                     2);
    /* On ipc:// both are fine, and a token is optional. */
    assert_int_equal(
        parse(&c, NULL, NULL, "--socket-mode", "0660", "--socket-group", "staff", NULL),
        0);
    assert_int_equal(c.socket_mode, 0660);
}

/* --http: its forms, the default port, and the token rule (issue 12). */
static void test_http(void **state)
{
    (void)state;
    static const struct {
        const char *in, *out;
    } ok[] = {
        {"127.0.0.1:4321", "127.0.0.1:4321"}, {"127.0.0.1", "127.0.0.1:4321"},
        {"8080", "127.0.0.1:8080"},           {"localhost", "127.0.0.1:4321"},
        {"localhost:9", "127.0.0.1:9"},       {"[::1]:7", "[::1]:7"},
        {"[::1]", "[::1]:4321"},              {"127.0.0.2:65535", "127.0.0.2:65535"},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        sched_config c;
        char *err = NULL;
        if (parse(&c, NULL, &err, "--http", ok[i].in, NULL) != 0)
            fail_msg("--http %s: %s", ok[i].in, err);
        free(err);
        assert_string_equal(c.http, ok[i].out);
        char host[64];
        int port;
        bool v6;
        assert_int_equal(config_http_addr(c.http, host, sizeof(host), &port, &v6), 0);
        assert_true(config_http_loopback(host, v6));
    }
    static const char *const bad[] = {"host.example:80", "127.0.0.1:0", "1.2.3.4:65536",
                                      "[::1", "::1:80", "127.0.0.1:", "127.0.0.1:8x"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char want[300];
        snprintf(want, sizeof(want),
                 "lmsched serve: --http: expected HOST:PORT, HOST or PORT, with HOST a "
                 "numeric IPv4 address, [IPv6] or localhost, got '%s'\n",
                 bad[i]);
        fails(want, "--http", bad[i]);
    }
    /* Not loopback: a token, HTTP's own or the daemon's, is required. */
    sched_config c;
    char *err = NULL;
    assert_int_equal(parse(&c, NULL, &err, "--http", "0.0.0.0:4321", NULL), 2);
    assert_non_null(strstr(err, "refusing to serve HTTP on 0.0.0.0:4321 without a token"));
    free(err);
    assert_int_equal(parse(&c, NULL, NULL, "--http", "[::]:4321", NULL), 2);
    assert_int_equal(
        parse(&c, NULL, NULL, "--http", "0.0.0.0", "--http-token-file", "/t", NULL), 0);
    assert_int_equal(
        parse(&c, NULL, NULL, "--http", "10.1.2.3:80", "--auth-token-file", "/t", NULL), 0);
    /* The environment variable, under the same rules. */
    setenv("LMSCHED_HTTP", "4322", 1);
    assert_int_equal(parse(&c, NULL, NULL, NULL), 0);
    assert_string_equal(c.http, "127.0.0.1:4322");
    setenv("LMSCHED_HTTP", "192.168.1.9", 1);
    assert_int_equal(parse(&c, NULL, NULL, NULL), 2);
    unsetenv("LMSCHED_HTTP");
}

static void test_help(void **state)
{
    (void)state;
    sched_config c;
    char *out = NULL, *err = NULL;
    assert_int_equal(parse(&c, &out, &err, "--help", NULL), 1);
    assert_string_equal(err, "");
    assert_int_equal(strncmp(out, "usage: lmsched serve [options]\n", 31), 0);
    const opt_table *t = config_options();
    for (size_t i = 0; i < t->n; i++) {
        const opt_spec *s = &t->specs[i];
        char want[600];
        snprintf(want, sizeof(want), "  --%s%s%s ", s->name, s->arg ? " " : "",
                 s->arg ? s->arg : "");
        if (strstr(out, want) == NULL)
            fail_msg("--help lacks \"%s\"", want);
        /* Every default is shown (the words may wrap; the value may not). */
        if (s->def != NULL) {
            snprintf(want, sizeof(want), "(default: %s%s%s", s->env ? "$" : "",
                     s->env ? s->env : s->def, s->env ? "," : ")");
            if (strstr(out, want) == NULL)
                fail_msg("--help lacks \"%s\"", want);
        }
    }
    static const char *const want[] = {
        "(default: 1024)",
        "(default: 8M)",
        "(default: 0.60)",
        "(default: 0600)",
        "(default: $LMSCHED_BACKEND, else",
        "(default: $LMSCHED_URL, else",
        "LM_API_TOKEN",
        "(default: 4 x slots)",
        "  --version",
        "Exit status: 0 after a clean",
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        if (strstr(out, want[i]) == NULL)
            fail_msg("--help lacks \"%s\"", want[i]);
    assert_null(strstr(out, "help-markdown"));
    free(out);
    free(err);

    assert_int_equal(parse(&c, &out, NULL, "--version", NULL), 1);
    assert_int_equal(strncmp(out, "lmsched ", 8), 0);
    assert_non_null(strstr(out, "(protocol "));
    free(out);

    assert_int_equal(parse(&c, &out, NULL, "--help-markdown", NULL), 1);
    assert_int_equal(strncmp(out, "**Listening and access**\n", 25), 0);
    assert_non_null(strstr(out, "| `--max-queue N` | `1024` | 1 to 1000000 | "));
    free(out);
}

static void test_json(void **state)
{
    (void)state;
    sched_config c;
    json_error_t jerr;
    config_defaults(&c, DEFAULT_LISTEN);
    setenv("LM_API_TOKEN", "sekrit-token", 1);
    char *text = config_json(&c);
    assert_non_null(text);
    assert_null(strstr(text, "sekrit"));
    json_t *j = json_loads(text, 0, &jerr);
    if (j == NULL)
        fail_msg("not JSON (%s): %s", jerr.text, text);
    free(text);
    unsetenv("LM_API_TOKEN");
    assert_int_equal(json_object_size(j), config_options()->n);
    assert_string_equal(json_string_value(json_object_get(j, "listen")), DEFAULT_LISTEN);
    assert_string_equal(json_string_value(json_object_get(j, "backend")),
                        "http://127.0.0.1:1234");
    assert_int_equal(json_integer_value(json_object_get(j, "max-queue")), 1024);
    assert_int_equal(json_integer_value(json_object_get(j, "max-response-bytes")),
                     8 << 20);
    assert_int_equal(json_integer_value(json_object_get(j, "default-max-tokens")), -1);
    assert_true(json_real_value(json_object_get(j, "ram-fraction")) == 0.6);
    assert_string_equal(json_string_value(json_object_get(j, "socket-mode")), "0600");
    assert_string_equal(json_string_value(json_object_get(j, "log-level")), "info");
    assert_string_equal(json_string_value(json_object_get(j, "policy")), "prefix");
    assert_true(json_is_false(json_object_get(j, "no-cache-prompt")));
    assert_true(json_is_false(json_object_get(j, "force")));
    assert_true(json_is_null(json_object_get(j, "total-ram")));
    assert_true(json_is_null(json_object_get(j, "context")));
    assert_true(json_is_null(json_object_get(j, "auth-token-file")));
    assert_true(json_is_null(json_object_get(j, "max-overtakes")));
    json_decref(j);

    assert_int_equal(parse(&c, NULL, NULL, "--total-ram", "48G", "--no-cache-prompt",
                           "--auth-token-file", "/etc/lmsched/token", "--log-level",
                           "warning", "--backend", "http://h:1/v1", "--slot-similarity",
                           "0.25", NULL),
                     0);
    text = config_json(&c);
    j = json_loads(text, 0, &jerr);
    assert_non_null(j);
    free(text);
    assert_int_equal(json_integer_value(json_object_get(j, "total-ram")), 48LL << 30);
    assert_true(json_is_true(json_object_get(j, "no-cache-prompt")));
    assert_string_equal(json_string_value(json_object_get(j, "auth-token-file")),
                        "/etc/lmsched/token");
    assert_string_equal(json_string_value(json_object_get(j, "log-level")), "warn");
    assert_string_equal(json_string_value(json_object_get(j, "backend")), "http://h:1");
    assert_true(json_real_value(json_object_get(j, "slot-similarity")) == 0.25);
    json_decref(j);
}

/* Writes text to a temporary file; returns its path (static storage). */
static const char *tmp_file(const char *text)
{
    static char path[64];
    snprintf(path, sizeof(path), "/tmp/config_test.XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

/* --backends-file: one backend a line with its settings; the servers stand
 * where --backend's would; bad lines name the file and line. */
static void test_backends_file(void **state)
{
    (void)state;
    sched_config c;
    char *err = NULL;
    const char *path = tmp_file("# fleet\n\nhttp://a:1234/v1  total-ram=96G\n"
                                "http://b:8080 kind=llamacpp # the Linux box\n");
    assert_int_equal(parse(&c, NULL, NULL, "--backends-file", path, NULL), 0);
    assert_int_equal(c.n_backends, 2);
    assert_string_equal(c.backend, "http://a:1234");
    assert_string_equal(c.backend_more[0], "http://b:8080");
    assert_int_equal(c.file_backends.n, 2);
    assert_true(c.file_backends.v[0].total_ram == 96ULL << 30);
    assert_string_equal(c.file_backends.v[0].kind, "");
    assert_string_equal(c.file_backends.v[1].kind, "llamacpp");
    assert_true(c.file_backends.v[1].total_ram == 0);
    /* Not both. */
    assert_int_equal(parse(&c, NULL, &err, "--backends-file", path, "--backend", "http://x",
                           NULL),
                     2);
    assert_non_null(strstr(err, "--backend or --backends-file, not both"));
    free(err);
    unlink(path);

    static const struct {
        const char *text, *want;
    } bad[] = {
        {"http://a\nftp://b\n", ":2: expected an http:// URL, got 'ftp://b'"},
        {"http://a speed=9\n", ":1: expected kind=auto|lmstudio|llamacpp|openai or "
                               "total-ram=SIZE, got 'speed=9'"},
        {"http://a total-ram=0\n", "got 'total-ram=0'"},
        {"http://a\nhttp://a/\n", ":2: http://a is listed twice"},
        {"# nothing\n", ": no backend in it"},
        {"http://1\nhttp://2\nhttp://3\nhttp://4\nhttp://5\nhttp://6\nhttp://7\nhttp://8\n"
         "http://9\n",
         ":9: at most 8 backends"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        path = tmp_file(bad[i].text);
        err = NULL;
        assert_int_equal(parse(&c, NULL, &err, "--backends-file", path, NULL), 2);
        if (strstr(err, bad[i].want) == NULL || strstr(err, path) == NULL)
            fail_msg("%s: got '%s', want '%s'", bad[i].text, err, bad[i].want);
        free(err);
        unlink(path);
    }
    err = NULL;
    assert_int_equal(parse(&c, NULL, &err, "--backends-file", "/nonexistent/b", NULL), 2);
    assert_non_null(strstr(err, "/nonexistent/b: No such file"));
    free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_values),       cmocka_unit_test(test_errors),
        cmocka_unit_test(test_backend_url),  cmocka_unit_test(test_env),
        cmocka_unit_test(test_backends_repeated),
        cmocka_unit_test(test_backends_file),
        cmocka_unit_test(test_access_rules), cmocka_unit_test(test_http),
        cmocka_unit_test(test_help),
        cmocka_unit_test(test_json),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
