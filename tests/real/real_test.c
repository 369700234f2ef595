/*
 * real_test - the daemon against a real llama.cpp llama-server (issue 5).
 *
 * Which server: LMSCHED_LLAMA_URL names one started by hand (the tests that
 * must kill and restart the server then skip, since it is not ours). Without
 * it, and when scripts/llama-server can run here (root, the chroot set up by
 * `scripts/llama-server setup`), the suite starts its own server with
 * `--cache-ram 0` in a state directory of its own (LMSCHED_REAL_STATE, or a
 * fresh temp dir) and stops it at the end. It owns that server, so it can
 * read its log to see how requests were placed and kill -9 it mid-stream.
 * Otherwise every test is skipped, so the suite is harmless where no server
 * can run. Each test starts its own `lmsched serve` through the integration
 * harness; the server is shared, so tests use prompts made unique per run
 * and assert only on what another test cannot disturb.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "kit/check.h"
#include "kit/clock.h"
#include "kit/env.h"
#include "kit/fs.h"
#include "kit/json.h"
#include "kit/pstat.h"
#include "kit/wire.h"
#include "lmsched/agent.h"
#include "real/llama.h"

/* Generous hang guard; a chat of 16 tokens takes milliseconds. */
#define REAL_TIMEOUT_MS 60000
/* The mid-stream kill comes once the server has decoded this many tokens. */
#define REAL_KILL_AFTER_TOKENS 128

/* The server the suite runs against. */
static struct {
    char url[128];
    const char *skip_why; /* set when there is no server: every test skips */
    bool owned;           /* started here: may be killed, log is readable */
    rl_server srv;        /* the owned server */
} real_srv;

/* Reads a small integer file of the owned server's state dir (pid, port);
 * returns -1 if absent. */
static long real_state_long(const char *name)
{
    return rl_state_long(&real_srv.srv, name);
}

/* Starts (or restarts on port, when > 0) the owned server with the host
 * prompt cache off, so slot placement is not hidden by it. */
static int real_server_start(int port)
{
    if (rl_start(&real_srv.srv, port, NULL) != 0)
        return -1;
    snprintf(real_srv.url, sizeof(real_srv.url), "%s", real_srv.srv.url);
    return 0;
}

static int group_setup(void **state)
{
    (void)state;
    const char *url = getenv("LMSCHED_LLAMA_URL");
    const char *why = NULL;
    if (url != NULL && *url != '\0') {
        if (strlen(url) >= sizeof(real_srv.url)) {
            fprintf(stderr, "real: LMSCHED_LLAMA_URL is too long\n");
            return -1;
        }
        snprintf(real_srv.url, sizeof(real_srv.url), "%s", url);
        printf("real: against LMSCHED_LLAMA_URL=%s\n", url);
        return 0;
    }
    if ((why = rl_unusable()) != NULL) {
        real_srv.skip_why = why;
        printf("skipped: %s\n", why);
        return 0;
    }
    if (rl_init(&real_srv.srv, NULL) != 0)
        return -1;
    real_srv.owned = true;
    if (real_server_start(0) != 0) {
        fprintf(stderr, "real: scripts/llama-server start failed (state %s)\n",
                real_srv.srv.state);
        return -1;
    }
    printf("real: started llama-server --cache-ram 0 at %s (state %s)\n", real_srv.url,
           real_srv.srv.state);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    if (real_srv.owned)
        rl_fini(&real_srv.srv);
    return 0;
}

/* cmocka 1.1 counts a skip() in a setup function as an error, so without a
 * server the setup leaves the state NULL and each test skips itself. */
static int setup(void **state)
{
    *state = NULL;
    if (real_srv.skip_why != NULL)
        return 0;
    kit_env *e = calloc(1, sizeof(*e));
    assert_non_null(e);
    kit_env_init(e);
    snprintf(e->backend, sizeof(e->backend), "%s", real_srv.url);
    *state = e;
    if (kit_env_daemon_start(e, NULL) != 0) {
        kit_env_dump_logs(e);
        fail_msg("lmsched serve did not start against %s", real_srv.url);
    }
    return 0;
}

static int teardown(void **state)
{
    kit_env *e = *state;
    if (e == NULL)
        return 0;
    kit_env_fini(e);
    free(e);
    return 0;
}

/* The test's environment, or a skip when there is no server. */
static kit_env *real_env(void **state)
{
    if (*state == NULL)
        kit_skip_if(real_srv.skip_why != NULL ? real_srv.skip_why : "no server",
                    "the real llama.cpp suite");
    return *state;
}

/* A system prompt no earlier run left in the server's cache. */
static void real_unique_system(char *buf, size_t len, const char *what)
{
    snprintf(buf, len,
             "Run %ld.%d (%s). You are a careful assistant. The software license grants "
             "permission to use, copy, modify and distribute the program under the terms "
             "of the license, provided that the copyright notice and this permission "
             "notice appear in all copies of the software and its documentation.",
             (long)time(NULL), (int)getpid(), what);
}

static lmsched_request *real_req(const char *system, const char *user, int max_tokens)
{
    lmsched_request *r = kit_req(system, user, max_tokens);
    assert_int_equal(lmsched_request_set_temperature(r, 0.0), LMSCHED_OK);
    return r;
}

/* Runs one chat; fails the test (with the daemon's log) unless it succeeds. */
static lmsched_result *real_chat_ok(kit_env *e, lmsched_client *c,
                                    const lmsched_request *r)
{
    lmsched_result *res = NULL;
    int rc = lmsched_chat(c, r, REAL_TIMEOUT_MS, &res);
    if (rc != LMSCHED_OK) {
        kit_env_dump_logs(e);
        fail_msg("chat failed: %s: %s", lmsched_strerror(rc),
                 res && lmsched_result_message(res) ? lmsched_result_message(res) : "");
    }
    return res;
}

/* A chat round trip: content and the server's usage come back. */
static void test_chat_round_trip(void **state)
{
    kit_env *e = real_env(state);
    char sys[512];
    real_unique_system(sys, sizeof(sys), "round trip");
    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, e->url), LMSCHED_OK);
    lmsched_request *r = real_req(sys, "Say hello.", 16);
    lmsched_result *res = real_chat_ok(e, c, r);

    assert_non_null(lmsched_result_content(res));
    assert_true(strlen(lmsched_result_content(res)) > 0);
    assert_non_null(lmsched_result_model(res));
    /* The system prompt alone is over 50 tokens with this vocabulary. */
    assert_true(lmsched_result_prompt_tokens(res) > 50);
    int64_t n = lmsched_result_completion_tokens(res);
    assert_true(n >= 1 && n <= 16);
    /* Random weights almost never pick an end token; when the reply ran to
     * its limit, the server must have counted exactly the limit. */
    if (strcmp(lmsched_result_finish_reason(res), "length") == 0)
        assert_int_equal(n, 16);
    assert_true(lmsched_result_cached_tokens(res) >= 0);
    assert_true(lmsched_result_total_ms(res) >= lmsched_result_ttft_ms(res));

    lmsched_result_free(res);
    lmsched_request_free(r);
    lmsched_client_close(c);
}

/* The same system prompt twice: the second reuses the first's prefix, as
 * reported by llama-server's prompt_tokens_details.cached_tokens. */
static void test_cached_system_prompt(void **state)
{
    kit_env *e = real_env(state);
    char sys[512];
    real_unique_system(sys, sizeof(sys), "cache");
    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, e->url), LMSCHED_OK);

    lmsched_request *r1 = real_req(sys, "First question about the license.", 4);
    lmsched_result *res1 = real_chat_ok(e, c, r1);
    int64_t cached1 = lmsched_result_cached_tokens(res1);
    int64_t prompt1 = lmsched_result_prompt_tokens(res1);

    lmsched_request *r2 = real_req(sys, "Second question about the program.", 4);
    lmsched_result *res2 = real_chat_ok(e, c, r2);
    int64_t cached2 = lmsched_result_cached_tokens(res2);

    /* The first can only share the chat template's opening with older
     * prompts (the run id comes early); the second shares the system prompt. */
    assert_true(cached1 >= 0 && cached1 < prompt1 / 4);
    assert_true(cached2 > prompt1 / 2);
    assert_true(cached2 < lmsched_result_prompt_tokens(res2));

    lmsched_result_free(res1);
    lmsched_result_free(res2);
    lmsched_request_free(r1);
    lmsched_request_free(r2);
    lmsched_client_close(c);
}

/* The daemon's count for its n-th answered request (from 0), from its debug
 * log line "request O/I: P prompt tokens by the backend, E estimated, R
 * reserved". Returns false when the log has no such line (yet). */
static bool real_token_line(kit_env *e, int n, long *prompt, long *est, long *reserved)
{
    char path[320], line[1024];
    snprintf(path, sizeof(path), "%s/lmsched.log", e->dir);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return false;
    bool found = false;
    while (!found && fgets(line, sizeof(line), f) != NULL) {
        if (strstr(line, "prompt tokens by the backend") == NULL)
            continue;
        for (const char *p = strstr(line, "request "); p != NULL; p = strstr(p + 1, "request ")) {
            unsigned long long o, i;
            if (sscanf(p, "request %llu/%llu: %ld prompt tokens by the backend, %ld estimated, "
                          "%ld reserved", &o, &i, prompt, est, reserved) == 5) {
                found = n-- == 0;
                break;
            }
        }
    }
    fclose(f);
    return found;
}

/* The prompt tokens a request is reserved for, against llama-server's own
 * usage.prompt_tokens: once one request was answered, the next ones (same
 * system prompt, other questions) are reserved for at least the server's
 * count and not 15% more (the prompts' density varies: this model's
 * vocabulary, built from license text, takes a question's plain words at
 * 1-2 bytes a token and the license-like system prompt at 3; the
 * reservation scales by the densest prompt seen lately). The first one has
 * only the estimate: printed, not asserted. */
static void test_reserve_counts_real(void **state)
{
    kit_env *e = real_env(state);
    char sys[512];
    real_unique_system(sys, sizeof(sys), "token counts");
    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, e->url), LMSCHED_OK);
    static const char *const q[] = {
        "First question about the license.", "Second question, about the program's terms.",
        "May I copy the software?", "Which notice must appear in all copies of it?",
        "Summarize the permission notice in one sentence, please."};
    for (int k = 0; k < 5; k++) {
        lmsched_request *r = real_req(sys, q[k], 4);
        lmsched_result *res = real_chat_ok(e, c, r);
        int64_t server = lmsched_result_prompt_tokens(res);
        long p = -1, est = -1, rsv = -1;
        for (int t = 0; t < 200 && !real_token_line(e, k, &p, &est, &rsv); t++)
            usleep(10000);
        printf("request %d: llama-server %" PRId64 " prompt tokens, estimate %ld, "
               "reserved for %ld\n", k, server, est, rsv);
        if (p != server) {
            kit_env_dump_logs(e);
            fail_msg("request %d: the daemon logged %ld prompt tokens, the reply says %" PRId64,
                     k, p, server);
        }
        if (k > 0 && (rsv < server || rsv > server + server * 15 / 100 + 2))
            fail_msg("request %d reserved for %ld prompt tokens; llama-server counted %" PRId64,
                     k, rsv, server);
        lmsched_result_free(res);
        lmsched_request_free(r);
    }
    lmsched_client_close(c);
}

/* A prompt longer than a slot's context: the agent gets an HTTP error that
 * carries llama.cpp's own explanation. */
static void test_prompt_over_context(void **state)
{
    kit_env *e = real_env(state);
    /* 9000 known words: one token each, over the 8192-token slot. */
    static const char word[] = "license ";
    size_t n = 9000, len = n * (sizeof(word) - 1);
    char *user = malloc(len + 1);
    assert_non_null(user);
    for (size_t i = 0; i < n; i++)
        memcpy(user + i * (sizeof(word) - 1), word, sizeof(word) - 1);
    user[len - 1] = '\0';

    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, e->url), LMSCHED_OK);
    lmsched_request *r = real_req(NULL, user, 4);
    lmsched_result *res = NULL;
    int rc = lmsched_chat(c, r, REAL_TIMEOUT_MS, &res);
    assert_int_equal(rc, LMSCHED_EBACKEND_HTTP);
    assert_non_null(res);
    assert_int_equal(lmsched_result_error(res), LMSCHED_EBACKEND_HTTP);
    const char *msg = lmsched_result_message(res);
    assert_non_null(msg);
    if (strstr(msg, "exceeds the available context size") == NULL)
        fail_msg("message lacks llama.cpp's explanation: %s", msg);

    lmsched_result_free(res);
    lmsched_request_free(r);
    lmsched_client_close(c);
    free(user);
}

/* The daemon finds out what it talks to from /props: llama.cpp, 4 slots of
 * 8192 tokens (scripts/llama-server starts it with -np 4 -c 32768). */
static void test_autodetect_props(void **state)
{
    kit_env *e = real_env(state);
    json_t *st = NULL;
    /* The first probe may still be under way when the daemon answers. */
    for (int i = 0; i < 100; i++) {
        st = kit_env_status(e);
        if (st && kit_json_int(st, "backend.slots") > 0)
            break;
        json_decref(st);
        st = NULL;
        kit_sleep_ms(100);
    }
    if (st == NULL) {
        kit_env_dump_logs(e);
        fail_msg("no status with backend slots");
    }
    json_t *kind = kit_json_get(st, "backend.kind");
    assert_true(json_is_string(kind));
    assert_string_equal(json_string_value(kind), "llamacpp");
    assert_int_equal(kit_json_int(st, "backend.slots"), 4);
    assert_int_equal(kit_json_int(st, "backend.context_length"), 8192);
    assert_true(json_is_true(kit_json_get(st, "backend.healthy")));
    json_decref(st);
}

/* ---- long prompts and the owned server's view --------------------------- */

/* Frequent words of the license texts the tiny model's vocabulary is built
 * from: each is a single token, so N words make about N tokens. */
static const char *const real_words[] = {
    "the",     "software", "license", "program", "copyright", "permission", "notice",
    "terms",   "work",     "source",  "code",    "version",   "free",       "public",
    "general", "you",      "any",     "of",      "to",        "and",        "or",
    "in",      "this",     "that",    "for",     "is",        "with",       "under",
    "not",     "by",       "be",      "may",     "other",     "such",       "all",
};
#define REAL_NWORDS (sizeof(real_words) / sizeof(real_words[0]))

/* A system prompt of about `words` tokens, unique to this run and to `k`
 * from its first words on (two of them share only the chat template's
 * opening). Returns a malloc'd string. */
static char *real_long_system(int k, int words)
{
    size_t cap = (size_t)words * 12 + 128, len;
    char *s = malloc(cap);
    assert_non_null(s);
    len = (size_t)snprintf(s, cap, "Prompt %d of run %ld.%d.", k, (long)time(NULL),
                           (int)getpid());
    uint32_t x = 2166136261u ^ (uint32_t)k * 16777619u;
    for (int i = 0; i < words; i++) {
        x = x * 1103515245u + 12345u; /* a fixed sequence per k */
        const char *w = real_words[(x >> 16) % REAL_NWORDS];
        len += (size_t)snprintf(s + len, cap - len, " %s", w);
    }
    return s;
}

/* Lines of the owned server's log containing needle (-1 if unreadable). */
static long real_log_count(const char *needle)
{
    char path[320];
    snprintf(path, sizeof(path), "%s/log", real_srv.srv.state);
    return kit_fs_count_lines(path, needle);
}

/* One chat with a long system prompt; returns its result (owned). */
static lmsched_result *real_long_chat(kit_env *e, lmsched_client *c, const char *system,
                                      const char *user)
{
    lmsched_request *r = real_req(system, user, 4);
    lmsched_result *res = real_chat_ok(e, c, r);
    lmsched_request_free(r);
    return res;
}

/* id_slot placement: a ~2,000-token system prompt sent twice hits its own
 * cache the second time; after three other long prompts, one per remaining
 * slot, it still hits, because the daemon pinned each prefix to a slot of
 * its own (the server runs with --cache-ram 0, so no host cache restores an
 * evicted prefix). A fourth other prompt would make five prefixes for four
 * slots: one must then be evicted, and with no queue to tell them apart the
 * least recently used one goes, which is the original. When the server is
 * ours, its log must also show that every request was placed by id. */
static void test_id_slot_placement(void **state)
{
    kit_env *e = real_env(state);
    enum { WORDS = 2000, OTHERS = 3 };
    char *sys_a = real_long_system(0, WORDS);
    char *others[OTHERS];
    lmsched_result *res[OTHERS];
    lmsched_client *c;
    long by_id0 = real_srv.owned ? real_log_count("selected slot by id") : -1;
    assert_int_equal(lmsched_client_open(&c, e->url), LMSCHED_OK);

    lmsched_result *a1 = real_long_chat(e, c, sys_a, "First question.");
    lmsched_result *a2 = real_long_chat(e, c, sys_a, "Second question.");
    for (int k = 0; k < OTHERS; k++) {
        others[k] = real_long_system(k + 1, WORDS);
        res[k] = real_long_chat(e, c, others[k], "Another question.");
    }
    lmsched_result *a3 = real_long_chat(e, c, sys_a, "Third question.");

    int64_t p1 = lmsched_result_prompt_tokens(a1);
    int64_t c2 = lmsched_result_cached_tokens(a2), c3 = lmsched_result_cached_tokens(a3);
    printf(
        "placement: prompt %lld tokens; cached: first %lld, second %lld, after %d other "
        "prompts %lld\n",
        (long long)p1, (long long)lmsched_result_cached_tokens(a1), (long long)c2, OTHERS,
        (long long)c3);
    /* The words are single tokens: the system prompt is ~2,000 of them. */
    assert_true(p1 > WORDS && p1 < WORDS + 200);
    assert_true(lmsched_result_cached_tokens(a1) < p1 / 10);
    if (c2 < p1 * 9 / 10 || c3 < p1 * 9 / 10) {
        kit_env_dump_logs(e);
        fail_msg("system prompt of %lld tokens: cached %lld then %lld, want >= 90%%",
                 (long long)p1, (long long)c2, (long long)c3);
    }
    for (int k = 0; k < OTHERS; k++) {
        int64_t p = lmsched_result_prompt_tokens(res[k]);
        assert_true(p > WORDS);
        /* different prompts: nothing beyond the template's opening */
        assert_true(lmsched_result_cached_tokens(res[k]) < p / 10);
    }
    if (real_srv.owned) {
        long by_id = real_log_count("selected slot by id") - by_id0;
        if (by_id != 3 + OTHERS)
            fail_msg(
                "llama-server placed %ld of %d requests by id_slot (its log: %s/log)",
                by_id, 3 + OTHERS, real_srv.srv.state);
    }

    lmsched_result_free(a1);
    lmsched_result_free(a2);
    lmsched_result_free(a3);
    for (int k = 0; k < OTHERS; k++) {
        lmsched_result_free(res[k]);
        free(others[k]);
    }
    free(sys_a);
    lmsched_client_close(c);
}

/* An asynchronous chat's outcome, for the restart test. */
typedef struct real_async {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
    lmsched_result *res;
} real_async;

static void real_async_done_cb(lmsched_result *res, void *arg)
{
    real_async *a = arg;
    pthread_mutex_lock(&a->mu);
    a->res = res;
    a->done = true;
    pthread_cond_signal(&a->cv);
    pthread_mutex_unlock(&a->mu);
}

static void real_async_init(real_async *a)
{
    memset(a, 0, sizeof(*a));
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->cv, NULL);
}

/* Waits for the outcome (the chat's own timeout bounds the wait) and hands
 * over the result. */
static lmsched_result *real_async_wait(real_async *a)
{
    pthread_mutex_lock(&a->mu);
    while (!a->done)
        pthread_cond_wait(&a->cv, &a->mu);
    lmsched_result *res = a->res;
    a->res = NULL;
    pthread_mutex_unlock(&a->mu);
    pthread_mutex_destroy(&a->mu);
    pthread_cond_destroy(&a->cv);
    return res;
}

static bool real_async_done(real_async *a)
{
    pthread_mutex_lock(&a->mu);
    bool d = a->done;
    pthread_mutex_unlock(&a->mu);
    return d;
}

/* True while some slot of the server is generating and has decoded at
 * least min_decoded tokens. */
static bool real_slot_decoding(kit_env *e, int64_t min_decoded)
{
    json_t *slots = kit_env_sim_get(e, "/slots"), *s;
    size_t i;
    bool yes = false;
    json_array_foreach(slots, i, s)
    {
        json_t *next = json_array_get(json_object_get(s, "next_token"), 0);
        if (json_is_true(json_object_get(s, "is_processing")) &&
            json_integer_value(json_object_get(next, "n_decoded")) >= min_decoded)
            yes = true;
    }
    json_decref(slots);
    return yes;
}

/* The server killed with SIGKILL in the middle of a long streamed answer:
 * the agent gets a clear stream error (not a hang, not a success); a
 * request sent while the server is down waits for it or fails as
 * backend-down; once the test restarts it on the same port, a request
 * succeeds without restarting the daemon. */
static void test_server_killed_mid_stream(void **state)
{
    kit_env *e = real_env(state);
    /* not ours to kill: needs LMSCHED_LLAMA_URL unset */
    kit_skip_if(real_srv.owned ? NULL
                               : "the server named by LMSCHED_LLAMA_URL is not ours",
                "killing llama-server mid-stream");
    char sys[512];
    real_unique_system(sys, sizeof(sys), "killed");
    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, e->url), LMSCHED_OK);

    /* ~4,000 tokens take 1-2 s here: time enough to see it generating. The
     * random model practically never samples an end token. */
    /* static: a failed assertion leaves the test with the chats in flight,
     * and their callbacks must not write into a dead stack frame */
    static real_async cut, down;
    real_async_init(&cut);
    lmsched_request *r = real_req(sys, "Write a long answer.", 4000);
    assert_int_equal(lmsched_chat_async(c, r, REAL_TIMEOUT_MS, real_async_done_cb, &cut),
                     LMSCHED_OK);
    bool decoding = false;
    for (int i = 0; i < 6000 && !decoding && !real_async_done(&cut); i++) {
        /* Some tokens in, not just the first: the server has decoded the
         * first token before its chunk is on the wire, and a kill in
         * between leaves a request that got nothing back, which the
         * daemon rightly retries instead of failing it as cut. */
        decoding = real_slot_decoding(e, REAL_KILL_AFTER_TOKENS);
        if (!decoding)
            kit_sleep_ms(5);
    }
    pid_t pid = (pid_t)real_state_long("pid");
    assert_true(pid > 1);
    if (!decoding) {
        kit_env_dump_logs(e);
        fail_msg("never saw the long request generating on the server");
    }
    assert_int_equal(kill(pid, SIGKILL), 0);

    lmsched_result *res = real_async_wait(&cut);
    assert_non_null(res);
    const char *msg = lmsched_result_message(res);
    printf("cut request: %s: %s\n", lmsched_strerror(lmsched_result_error(res)),
           msg ? msg : "");
    /* Tokens had been streamed, so the daemon must not retry (the agent
     * would get a reply spliced from two generations): a stream error. */
    assert_int_equal(lmsched_result_error(res), LMSCHED_EBACKEND_STREAM);
    assert_non_null(msg);
    assert_non_null(strstr(msg, "LLM server"));
    lmsched_result_free(res);

    for (int i = 0; i < 1000 && kit_pstat_alive(pid); i++)
        kit_sleep_ms(10);
    assert_false(kit_pstat_alive(pid));

    /* While it is down: the daemon waits for the backend (--backend-wait),
     * or, if it gives up, says it cannot reach it. */
    real_async_init(&down);
    lmsched_request_free(r);
    r = real_req(sys, "Are you there?", 8);
    assert_int_equal(lmsched_chat_async(c, r, REAL_TIMEOUT_MS, real_async_done_cb, &down),
                     LMSCHED_OK);

    /* Restart on the same port; the socket may take a moment to go. */
    int rc = -1;
    for (int i = 0; i < 20 && rc != 0; i++) {
        rc = real_server_start(real_srv.srv.port);
        if (rc != 0)
            kit_sleep_ms(250);
    }
    if (rc != 0)
        fail_msg("could not restart llama-server on port %d (log %s/log)", real_srv.srv.port,
                 real_srv.srv.state);

    res = real_async_wait(&down);
    assert_non_null(res);
    int err = lmsched_result_error(res);
    printf("request sent while down: %s%s%s\n", lmsched_strerror(err), err ? ": " : "",
           err ? lmsched_result_message(res) : "");
    assert_true(err == LMSCHED_OK || err == LMSCHED_EBACKEND_DOWN);
    if (err == LMSCHED_EBACKEND_DOWN)
        assert_non_null(strstr(lmsched_result_message(res), "reach"));
    lmsched_result_free(res);

    /* Recovery, with the same daemon. */
    lmsched_request_free(r);
    r = real_req(sys, "And now?", 8);
    res = real_chat_ok(e, c, r);
    assert_true(lmsched_result_completion_tokens(res) >= 1);
    lmsched_result_free(res);
    lmsched_request_free(r);
    lmsched_client_close(c);
}

/* ---- issue 11: structured output, tools, streaming, cancel ------------- */

/* A raw protocol connection to the test's daemon. */
static void real_wire(kit_env *e, kit_wire *w)
{
    assert_int_equal(kit_wire_open(w, e->url, REAL_TIMEOUT_MS), 0);
}

/* One chat exchange that must end in a chat_reply. */
static void real_wire_reply(kit_env *e, kit_wire *w, lms_msg *m, lms_msg *r)
{
    int rc = kit_wire_xchg(w, m, r, NULL);
    if (rc != 0)
        fail_msg("no reply: %d", rc);
    if (r->kind == LMS_KIND_ERROR) {
        kit_env_dump_logs(e);
        fail_msg("error %s: %s", lmsched_err_name((int)r->u.error.code), r->u.error.message);
    }
    assert_int_equal(r->kind, LMS_KIND_CHAT_REPLY);
}

/* response_format json_schema: llama-server turns the schema into a
 * grammar, so even the random model's answer is JSON that validates. The
 * schema has only bounded values (an integer, a boolean, an enum), so the
 * answer ends by itself. */
static void test_json_schema_real(void **state)
{
    kit_env *e = real_env(state);
    char sys[512];
    real_unique_system(sys, sizeof(sys), "json schema");
    kit_wire w;
    real_wire(e, &w);
    lms_msg m, r;
    lms_chat_msg msg;
    kit_wire_chat(&m, &msg, sys, "Describe the license as JSON.", 200, false);
    m.u.chat.response_format_json =
        (char *)"{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"verdict\",\"schema\":{"
                "\"type\":\"object\",\"properties\":{\"count\":{\"type\":\"integer\"},"
                "\"free\":{\"type\":\"boolean\"},\"kind\":{\"enum\":[\"mit\",\"gpl\",\"bsd\"]}},"
                "\"required\":[\"count\",\"free\",\"kind\"]}}}";
    real_wire_reply(e, &w, &m, &r);
    const char *content = r.u.chat_reply.content;
    printf("json_schema answer (%s, %lld tokens): %s\n", r.u.chat_reply.finish_reason,
           (long long)r.u.chat_reply.usage.completion_tokens, content);
    json_error_t jerr;
    json_t *v = json_loads(content, 0, &jerr);
    if (v == NULL)
        fail_msg("not JSON (%s): %s", jerr.text, content);
    assert_true(json_is_integer(json_object_get(v, "count")));
    assert_true(json_is_boolean(json_object_get(v, "free")));
    const char *kind = json_string_value(json_object_get(v, "kind"));
    assert_non_null(kind);
    assert_true(strcmp(kind, "mit") == 0 || strcmp(kind, "gpl") == 0 ||
                strcmp(kind, "bsd") == 0);
    assert_int_equal(json_object_size(v), 3);
    json_decref(v);
    lms_msg_fini(&r);
    kit_wire_close(&w);
}

/* Tools reach the prompt: the same chat with tools costs the server more
 * prompt tokens, at least one per 8 bytes of the tools' JSON (the
 * template renders that JSON, and this vocabulary has no token longer
 * than a word). */
static void test_tools_reach_prompt_real(void **state)
{
    kit_env *e = real_env(state);
    char sys[512];
    real_unique_system(sys, sizeof(sys), "tools");
    static const char tools[] =
        "[{\"type\":\"function\",\"function\":{\"name\":\"search_license\","
        "\"description\":\"Finds the clauses of a software license that grant or restrict "
        "a permission\",\"parameters\":{\"type\":\"object\",\"properties\":{\"permission\":"
        "{\"type\":\"string\",\"description\":\"copy, modify or distribute\"},\"limit\":"
        "{\"type\":\"integer\"}},\"required\":[\"permission\"]}}}]";
    kit_wire w;
    real_wire(e, &w);
    lms_msg m, r;
    lms_chat_msg msg;
    kit_wire_chat(&m, &msg, sys, "May I copy it?", 4, false);
    real_wire_reply(e, &w, &m, &r);
    int64_t without = r.u.chat_reply.usage.prompt_tokens;
    lms_msg_fini(&r);

    kit_wire_chat(&m, &msg, sys, "May I copy it?", 4, false);
    m.u.chat.tools_json = (char *)tools;
    real_wire_reply(e, &w, &m, &r);
    int64_t with = r.u.chat_reply.usage.prompt_tokens;
    printf("prompt tokens: %lld without tools, %lld with (tools JSON %zu bytes)\n",
           (long long)without, (long long)with, strlen(tools));
    assert_true(without > 0);
    assert_true(with - without >= (int64_t)(strlen(tools) / 8));
    lms_msg_fini(&r);
    kit_wire_close(&w);
}

/* A stream of the real server's tokens: the deltas concatenate to the
 * final content, which came in more than one exchange. */
static void test_stream_real(void **state)
{
    kit_env *e = real_env(state);
    char sys[512];
    real_unique_system(sys, sizeof(sys), "stream");
    kit_wire w;
    real_wire(e, &w);
    lms_msg m, final;
    lms_chat_msg msg;
    kit_wire_chat(&m, &msg, sys, "Tell me about the license.", 400, true);
    m.u.chat.has_temperature = true;
    m.u.chat.temperature = 0.0;
    static char text[65536];
    unsigned ex = 0;
    double first_ms = 0;
    int rc = kit_wire_stream(&w, &m, text, sizeof(text), &final, &ex, &first_ms);
    if (rc != 0)
        fail_msg("stream failed (%d): %s", rc, text);
    printf("stream: %u exchanges, %zu bytes, first reply after %.1f ms, %lld tokens\n", ex,
           strlen(text), first_ms, (long long)final.u.chat_reply.usage.completion_tokens);
    assert_true(ex >= 2);
    assert_string_equal(text, final.u.chat_reply.content);
    assert_true(final.u.chat_reply.usage.completion_tokens >= 1);
    lms_msg_fini(&final);
    kit_wire_close(&w);
}

/* True when no slot of the server is processing. */
static bool real_slots_idle(kit_env *e)
{
    json_t *slots = kit_env_sim_get(e, "/slots"), *s;
    size_t i;
    bool idle = json_is_array(slots);
    json_array_foreach(slots, i, s)
    {
        if (json_is_true(json_object_get(s, "is_processing")))
            idle = false;
    }
    json_decref(slots);
    return idle;
}

/* Cancel in the middle of a long stream: the daemon aborts its transfer
 * and llama-server stops generating, so /slots shows every slot idle. The
 * issue's target is 100 ms; the test prints the time and, the machine
 * being shared, asserts only that it is well under the answer's length. */
static void test_cancel_mid_stream_real(void **state)
{
    kit_env *e = real_env(state);
    char sys[512];
    real_unique_system(sys, sizeof(sys), "cancel");
    kit_wire w;
    real_wire(e, &w);
    lms_msg m, r;
    lms_chat_msg msg;
    /* ~4,000 tokens take 1-2 s here; the random model does not stop early. */
    kit_wire_chat(&m, &msg, sys, "Write a very long answer.", 4000, true);
    uint64_t sid = 0;
    assert_int_equal(kit_wire_xchg(&w, &m, &r, &sid), 0);
    if (r.kind != LMS_KIND_CHAT_CHUNK)
        fail_msg("expected the first chunk, got kind %d", (int)r.kind);
    lms_msg_fini(&r);
    assert_false(real_slots_idle(e));

    lms_msg cm;
    lms_msg_init(&cm, LMS_KIND_CANCEL);
    cm.u.cancel.target = sid;
    int64_t t0 = kit_now_ns();
    assert_int_equal(kit_wire_xchg(&w, &cm, &r, NULL), 0);
    assert_int_equal(r.kind, LMS_KIND_CANCEL_REPLY);
    assert_true(r.u.cancel_reply.found);
    lms_msg_fini(&r);
    bool idle = false;
    while (!idle && kit_now_ns() - t0 < 5000000000LL) {
        idle = real_slots_idle(e);
        if (!idle)
            kit_sleep_ms(2);
    }
    double ms = (double)(kit_now_ns() - t0) / 1e6;
    printf("cancel: slots idle %.1f ms after the cancel was sent\n", ms);
    assert_true(idle);
    assert_true(ms < 1000.0);

    /* The stream ends with a canceled error, not an answer. */
    lms_msg next;
    lms_msg_init(&next, LMS_KIND_CHAT_NEXT);
    next.u.chat_next.stream = sid;
    assert_int_equal(kit_wire_xchg(&w, &next, &r, NULL), 0);
    assert_int_equal(r.kind, LMS_KIND_ERROR);
    lms_msg_fini(&r);
    kit_wire_close(&w);
}

/* A 10-token stream: the first exchange answers with a chunk, before the
 * answer is complete, not with the whole answer. */
static void test_short_stream_first_delta_real(void **state)
{
    kit_env *e = real_env(state);
    char sys[512];
    real_unique_system(sys, sizeof(sys), "short stream");
    kit_wire w;
    real_wire(e, &w);
    lms_msg m, r;
    lms_chat_msg msg;
    kit_wire_chat(&m, &msg, sys, "Ten tokens, please.", 10, true);
    uint64_t sid = 0;
    int64_t t0 = kit_now_ns();
    assert_int_equal(kit_wire_xchg(&w, &m, &r, &sid), 0);
    double first_ms = (double)(kit_now_ns() - t0) / 1e6;
    if (r.kind != LMS_KIND_CHAT_CHUNK)
        fail_msg("the first reply is not a chunk (kind %d)", (int)r.kind);
    size_t first_deltas = r.u.chat_chunk.n_deltas;
    lms_msg_fini(&r);
    unsigned ex = 1;
    for (;;) {
        lms_msg next;
        lms_msg_init(&next, LMS_KIND_CHAT_NEXT);
        next.u.chat_next.stream = sid;
        assert_int_equal(kit_wire_xchg(&w, &next, &r, NULL), 0);
        ex++;
        if (r.kind != LMS_KIND_CHAT_CHUNK)
            break;
        lms_msg_fini(&r);
    }
    double end_ms = (double)(kit_now_ns() - t0) / 1e6;
    assert_int_equal(r.kind, LMS_KIND_CHAT_REPLY);
    printf("10-token stream: first chunk (%zu deltas) at %.2f ms, end at %.2f ms, "
           "%u exchanges\n",
           first_deltas, first_ms, end_ms, ex);
    assert_true(first_deltas >= 1 && first_deltas < 10);
    assert_int_equal(r.u.chat_reply.usage.completion_tokens, 10);
    lms_msg_fini(&r);
    kit_wire_close(&w);
}

/* One mode's run of test_exact_reserve_real: the daemon again with
 * --max-concurrent 1 and --exact-tokens mode; a long answer holds the one
 * place while N requests queue behind it (a system prompt of their own,
 * questions of different lengths); then everything finishes. For each
 * queued request, the prompt tokens it was reserved for against
 * llama-server's usage.prompt_tokens (the daemon's debug line). Returns the
 * sum of |reserved - used| over them; *exact: how many matched. */
#define REAL_EXACT_N 4
static long real_exact_run(kit_env *e, const char *mode, int *exact)
{
    const char *args[] = {"--max-concurrent", "1", "--exact-tokens", mode, NULL};
    /* the log is appended to: this run's lines come after those there */
    int base = 0;
    long p0, e0, r0;
    while (real_token_line(e, base, &p0, &e0, &r0))
        base++;
    kit_proc_stop(&e->daemon, SIGTERM, 10000);
    if (kit_env_daemon_start(e, args) != 0) {
        kit_env_dump_logs(e);
        fail_msg("lmsched serve did not start again");
    }
    char sys[512];
    real_unique_system(sys, sizeof(sys), mode);
    static const char *const q[REAL_EXACT_N] = {
        "Is this allowed?", "Which notice must appear in all copies of the software?",
        "Summarize the permission notice in one sentence, and then say which parts of the "
        "license matter most to someone who wants to modify and distribute the program.",
        "ünïcödé, 日本語 and <|im_start|> in a question: how are they counted?"};
    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, e->url), LMSCHED_OK);
    static real_async hold, w[REAL_EXACT_N];
    real_async_init(&hold);
    lmsched_request *rh = real_req(sys, "Write a long answer.", 4000);
    assert_int_equal(lmsched_chat_async(c, rh, REAL_TIMEOUT_MS, real_async_done_cb, &hold),
                     LMSCHED_OK);
    assert_int_equal(kit_env_status_wait(e, "inflight", 1, 1, 10000), 1);
    lmsched_request *r[REAL_EXACT_N];
    for (int k = 0; k < REAL_EXACT_N; k++) {
        real_async_init(&w[k]);
        r[k] = real_req(sys, q[k], 4);
        assert_int_equal(lmsched_chat_async(c, r[k], REAL_TIMEOUT_MS, real_async_done_cb, &w[k]),
                         LMSCHED_OK);
    }
    /* all queued behind the long one (and, counting, each with its count) */
    assert_int_equal(kit_env_status_wait(e, "reservation.waiting", REAL_EXACT_N, REAL_EXACT_N,
                                         10000), REAL_EXACT_N);
    if (strcmp(mode, "auto") == 0)
        assert_int_equal(kit_env_status_wait(e, "reservation.waiting_exact", REAL_EXACT_N,
                                             REAL_EXACT_N, 10000), REAL_EXACT_N);
    bool held = !real_async_done(&hold);
    lmsched_result *res = real_async_wait(&hold);
    assert_non_null(res);
    assert_int_equal(lmsched_result_error(res), LMSCHED_OK);
    lmsched_result_free(res);
    assert_true(held); /* the queue was held full while the counts came */
    long err = 0;
    *exact = 0;
    for (int k = 0; k < REAL_EXACT_N; k++) {
        res = real_async_wait(&w[k]);
        assert_non_null(res);
        assert_int_equal(lmsched_result_error(res), LMSCHED_OK);
        lmsched_result_free(res);
        lmsched_request_free(r[k]);
    }
    /* the debug lines, in answer order: the long one, then the N */
    for (int k = 1; k <= REAL_EXACT_N; k++) {
        long p = -1, est = -1, rsv = -1;
        for (int t = 0; t < 200 && !real_token_line(e, base + k, &p, &est, &rsv); t++)
            usleep(10000);
        assert_true(p > 0);
        printf("--exact-tokens %s: llama-server %ld prompt tokens, estimate %ld, reserved %ld\n",
               mode, p, est, rsv);
        err += rsv > p ? rsv - p : p - rsv;
        *exact += rsv == p;
    }
    lmsched_request_free(rh);
    lmsched_client_close(c);
    return err;
}

/* Exact token counts (--exact-tokens auto, the default for llama.cpp):
 * requests that wait in the queue reserve exactly llama-server's own
 * usage.prompt_tokens (its /apply-template then /tokenize); with the
 * counts off they reserve the estimate, which is off by some tokens. */
static void test_exact_reserve_real(void **state)
{
    kit_env *e = real_env(state);
    int exact_off = 0, exact_on = 0;
    long err_off = real_exact_run(e, "off", &exact_off);
    long err_on = real_exact_run(e, "auto", &exact_on);
    printf("reservation error over %d queued requests: estimate %ld tokens (%d exact), "
           "counts %ld tokens (%d exact)\n", REAL_EXACT_N, err_off, exact_off, err_on, exact_on);
    assert_int_equal(exact_on, REAL_EXACT_N);
    assert_int_equal(err_on, 0);
    json_t *st = kit_env_status(e);
    assert_true(kit_json_int(st, "reservation.counts.applied") >= REAL_EXACT_N);
    assert_true(json_is_true(
        json_object_get(json_array_get(json_object_get(st, "backends"), 0), "tokenizes")));
    json_decref(st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_chat_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cached_system_prompt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reserve_counts_real, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exact_reserve_real, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prompt_over_context, setup, teardown),
        cmocka_unit_test_setup_teardown(test_autodetect_props, setup, teardown),
        cmocka_unit_test_setup_teardown(test_id_slot_placement, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_schema_real, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tools_reach_prompt_real, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_real, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_mid_stream_real, setup, teardown),
        cmocka_unit_test_setup_teardown(test_short_stream_first_delta_real, setup, teardown),
        /* last: it kills the server (and restarts it) */
        cmocka_unit_test_setup_teardown(test_server_killed_mid_stream, setup, teardown),
    };
    return cmocka_run_group_tests_name("real", tests, group_setup, group_teardown);
}
