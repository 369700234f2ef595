/*
 * Tests of lmsim as a program: each test starts its own lmsim child with
 * the flags it needs (fast --time-scale), talks to it with libcurl over
 * loopback, and checks responses against the rules in docs/simulator.md and
 * against /sim/stats. Timeouts here are hang guards only; nothing asserts
 * on wall-clock durations.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_ARGS 40
/* Hang guards. */
#define START_GUARD_MS 10000
#define STOP_GUARD_MS 10000
#define REQ_GUARD_S 30L

typedef struct sim {
    pid_t pid;
    char dir[64];
    char port_file[128];
    unsigned port;
    bool exited;
    int status;
} sim;

typedef struct resp {
    long status;
    CURLcode cc;
    char *body;
    size_t len;
    char ctype[128];
    json_t *json; /* parsed body when it is JSON */
    long slot;    /* X-Lmsim-Slot, -1 if absent */
    long admit;   /* X-Lmsim-Admit-Seq, -1 if absent */
} resp;

/* ---- helpers ---------------------------------------------------------- */

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static long now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static void sim_spawn(sim *s, const char *const *args, bool wait_port)
{
    const char *bindir = getenv("LMSCHED_BIN_DIR");
    char exe[512];
    const char *argv[MAX_ARGS];
    int n = 0;

    memset(s, 0, sizeof *s);
    assert_non_null(bindir);
    snprintf(exe, sizeof exe, "%s/lmsim", bindir);
    strcpy(s->dir, "/tmp/lmsim-test-XXXXXX");
    assert_non_null(mkdtemp(s->dir));
    snprintf(s->port_file, sizeof s->port_file, "%s/port", s->dir);

    argv[n++] = exe;
    argv[n++] = "--port-file";
    argv[n++] = s->port_file;
    argv[n++] = "--log-level";
    argv[n++] = "warn";
    for (const char *const *a = args; a && *a; a++) {
        assert_true(n < MAX_ARGS - 1);
        argv[n++] = *a;
    }
    argv[n] = NULL;

    s->pid = fork();
    assert_true(s->pid >= 0);
    if (s->pid == 0) {
        /* Keep the test's stdout clean; stderr shows lmsim's warnings. */
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0)
            dup2(devnull, STDOUT_FILENO);
        execv(exe, (char *const *)argv);
        _exit(127);
    }
    if (!wait_port)
        return;
    long deadline = now_ms() + START_GUARD_MS;
    for (;;) {
        FILE *f = fopen(s->port_file, "r");
        if (f) {
            int ok = fscanf(f, "%u", &s->port);
            fclose(f);
            assert_int_equal(ok, 1);
            assert_true(s->port > 0 && s->port < 65536);
            return;
        }
        int st;
        if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
            s->exited = true;
            fail_msg("lmsim exited before listening (status %d)", st);
        }
        if (now_ms() > deadline)
            fail_msg("lmsim did not write its port file");
        sleep_ms(10);
    }
}

static void sim_start(sim *s, const char *const *args)
{
    sim_spawn(s, args, true);
}

/* Waits for the child to exit by itself; returns its wait status. */
static int sim_wait_exit(sim *s)
{
    long deadline = now_ms() + STOP_GUARD_MS;
    while (!s->exited) {
        if (waitpid(s->pid, &s->status, WNOHANG) == s->pid) {
            s->exited = true;
            break;
        }
        if (now_ms() > deadline) {
            kill(s->pid, SIGKILL);
            waitpid(s->pid, &s->status, 0);
            s->exited = true;
            fail_msg("lmsim did not exit");
        }
        sleep_ms(10);
    }
    return s->status;
}

static void sim_cleanup_files(sim *s)
{
    unlink(s->port_file);
    rmdir(s->dir);
}

/* SIGTERM, and the simulator must stop cleanly with status 0 (under ASan a
 * leak would make it non-zero). */
static void sim_stop(sim *s)
{
    if (!s->exited)
        kill(s->pid, SIGTERM);
    int st = sim_wait_exit(s);
    sim_cleanup_files(s);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

static size_t resp_write_cb(char *data, size_t size, size_t nmemb, void *userp)
{
    resp *r = userp;
    size_t n = size * nmemb;
    char *p = realloc(r->body, r->len + n + 1);
    if (!p)
        return 0;
    r->body = p;
    memcpy(r->body + r->len, data, n);
    r->len += n;
    r->body[r->len] = '\0';
    return n;
}

static size_t resp_header_cb(char *data, size_t size, size_t nmemb, void *userp)
{
    resp *r = userp;
    size_t n = size * nmemb;
    char line[128];
    if (n >= sizeof line)
        return n;
    memcpy(line, data, n);
    line[n] = '\0';
    if (strncasecmp(line, "X-Lmsim-Slot:", 13) == 0)
        r->slot = strtol(line + 13, NULL, 10);
    else if (strncasecmp(line, "X-Lmsim-Admit-Seq:", 18) == 0)
        r->admit = strtol(line + 18, NULL, 10);
    return n;
}

static void resp_fini(resp *r)
{
    free(r->body);
    json_decref(r->json);
    memset(r, 0, sizeof *r);
}

static void http(const sim *s, const char *method, const char *path, const char *body,
                 resp *r)
{
    char url[256];
    struct curl_slist *hdr = NULL;
    CURL *c = curl_easy_init();
    assert_non_null(c);
    memset(r, 0, sizeof *r);
    r->slot = r->admit = -1;
    snprintf(url, sizeof url, "http://127.0.0.1:%u%s", s->port, path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (body) {
        hdr = curl_slist_append(hdr, "Content-Type: application/json");
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    }
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, resp_write_cb);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, resp_header_cb);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, REQ_GUARD_S);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    r->cc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    char *ct = NULL;
    if (curl_easy_getinfo(c, CURLINFO_CONTENT_TYPE, &ct) == CURLE_OK && ct)
        snprintf(r->ctype, sizeof r->ctype, "%s", ct);
    if (r->body)
        r->json = json_loadb(r->body, r->len, 0, NULL);
    curl_slist_free_all(hdr);
    curl_easy_cleanup(c);
}

static json_t *get_stats(const sim *s)
{
    resp r;
    http(s, "GET", "/sim/stats", NULL, &r);
    assert_int_equal(r.cc, CURLE_OK);
    assert_int_equal(r.status, 200);
    assert_non_null(r.json);
    json_t *j = json_incref(r.json);
    resp_fini(&r);
    return j;
}

static long long jint(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v))
        fail_msg("'%s' is not an integer", key);
    return json_integer_value(v);
}

static long long stat_int(const sim *s, const char *key)
{
    json_t *st = get_stats(s);
    long long v = jint(st, key);
    json_decref(st);
    return v;
}

/* A chat body with a system prompt and one user message. */
static char *chat_body(const char *system, const char *user, const char *extra)
{
    json_t *o = json_pack("{s:[{s:s,s:s},{s:s,s:s}]}", "messages", "role", "system",
                          "content", system, "role", "user", "content", user);
    assert_non_null(o);
    if (extra) {
        json_t *x = json_loads(extra, 0, NULL);
        assert_non_null(x);
        json_object_update(o, x);
        json_decref(x);
    }
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    assert_non_null(s);
    return s;
}

/* The documented tokenizer: bytes of the ChatML rendering / 4, rounded up. */
static size_t rendered_len(const char *system, const char *user)
{
    return strlen("<|im_start|>system\n") + strlen(system) + strlen("<|im_end|>\n") +
           strlen("<|im_start|>user\n") + strlen(user) + strlen("<|im_end|>\n") +
           strlen("<|im_start|>assistant\n");
}

static long long prompt_tokens(const char *system, const char *user)
{
    return (long long)((rendered_len(system, user) + 3) / 4);
}

/* POSTs a non-streamed chat and checks it succeeded; returns the JSON and
 * the slot that served it. */
static json_t *chat_at(const sim *s, const char *system, const char *user,
                       const char *extra, long *slot)
{
    resp r;
    char *body = chat_body(system, user, extra);
    http(s, "POST", "/v1/chat/completions", body, &r);
    free(body);
    assert_int_equal(r.cc, CURLE_OK);
    if (r.status != 200)
        fail_msg("status %ld: %s", r.status, r.body ? r.body : "");
    assert_non_null(r.json);
    json_t *j = json_incref(r.json);
    if (slot)
        *slot = r.slot;
    resp_fini(&r);
    return j;
}

static json_t *chat(const sim *s, const char *system, const char *user, const char *extra)
{
    return chat_at(s, system, user, extra, NULL);
}

static long long timing(json_t *completion, const char *key)
{
    return jint(json_object_get(completion, "timings"), key);
}

/* A system prompt of n bytes, distinct per tag. */
static char *text(char tag, size_t n)
{
    char *s = malloc(n + 1);
    assert_non_null(s);
    for (size_t i = 0; i < n; i++)
        s[i] = (char)(i % 7 == 6 ? ' ' : tag + (int)(i % 3));
    s[n] = '\0';
    return s;
}

/* One parsed server-sent-events stream. */
typedef struct sse {
    json_t *events; /* array of parsed chunk objects */
    int malformed;  /* data lines that were not JSON */
    bool done;      /* "data: [DONE]" seen */
    bool done_last; /* and it was the last event */
} sse;

static void sse_parse(const char *body, size_t len, sse *out)
{
    memset(out, 0, sizeof *out);
    out->events = json_array();
    const char *p = body, *end = body + len;
    while (p < end) {
        const char *sep = strstr(p, "\n\n");
        size_t n = sep ? (size_t)(sep - p) : (size_t)(end - p);
        if (n > 0) {
            assert_true(n > 6);
            assert_memory_equal(p, "data: ", 6);
            out->done_last = false;
            if (n - 6 == 6 && memcmp(p + 6, "[DONE]", 6) == 0) {
                out->done = out->done_last = true;
            } else {
                json_t *j = json_loadb(p + 6, n - 6, 0, NULL);
                if (j)
                    json_array_append_new(out->events, j);
                else
                    out->malformed++;
            }
        }
        p += n + (sep ? 2 : 0);
    }
}

static const char *delta_content(json_t *ev)
{
    json_t *ch = json_array_get(json_object_get(ev, "choices"), 0);
    return json_string_value(json_object_get(json_object_get(ch, "delta"), "content"));
}

/* ---- tests ------------------------------------------------------------ */

static void test_nonstream(void **state)
{
    sim *s = *state;
    const char *args[] = {"--time-scale", "50", "--model", "test-model", NULL};
    sim_start(s, args);
    const char *sys = "You are a helpful assistant.";
    json_t *c = chat(s, sys, "Say hello.", NULL);

    assert_string_equal(json_string_value(json_object_get(c, "object")),
                        "chat.completion");
    assert_string_equal(json_string_value(json_object_get(c, "model")), "test-model");
    assert_true(strncmp(json_string_value(json_object_get(c, "id")), "chatcmpl-", 9) ==
                0);
    json_t *ch = json_array_get(json_object_get(c, "choices"), 0);
    json_t *msg = json_object_get(ch, "message");
    assert_string_equal(json_string_value(json_object_get(msg, "role")), "assistant");
    /* Default 32 reply tokens of 4 bytes each, finished naturally. */
    assert_int_equal(strlen(json_string_value(json_object_get(msg, "content"))), 32 * 4);
    assert_string_equal(json_string_value(json_object_get(ch, "finish_reason")), "stop");
    json_t *u = json_object_get(c, "usage");
    assert_int_equal(jint(u, "prompt_tokens"), prompt_tokens(sys, "Say hello."));
    assert_int_equal(jint(u, "completion_tokens"), 32);
    assert_int_equal(jint(u, "total_tokens"), prompt_tokens(sys, "Say hello.") + 32);
    assert_int_equal(jint(json_object_get(u, "prompt_tokens_details"), "cached_tokens"),
                     0);
    assert_int_equal(timing(c, "prompt_n"), prompt_tokens(sys, "Say hello."));
    assert_int_equal(timing(c, "cache_n"), 0);
    assert_int_equal(timing(c, "predicted_n"), 32);
    /* Simulated time: prompt at 800 tok/s, 31 more tokens at 45 tok/s. */
    double pms =
        json_real_value(json_object_get(json_object_get(c, "timings"), "prompt_ms"));
    double dms =
        json_real_value(json_object_get(json_object_get(c, "timings"), "predicted_ms"));
    assert_true(pms > 0.99 * prompt_tokens(sys, "Say hello.") * 1000.0 / 800.0);
    assert_true(pms < 1.01 * prompt_tokens(sys, "Say hello.") * 1000.0 / 800.0);
    assert_true(dms > 0.99 * 31 * 1000.0 / 45.0 && dms < 1.01 * 31 * 1000.0 / 45.0);
    json_decref(c);

    json_t *st = get_stats(s);
    assert_int_equal(jint(st, "requests"), 1);
    assert_int_equal(jint(st, "completion_tokens"), 32);
    assert_int_equal(jint(st, "prompt_tokens"), prompt_tokens(sys, "Say hello."));
    json_decref(st);
    sim_stop(s);
}

static void test_stream(void **state)
{
    sim *s = *state;
    const char *args[] = {"--time-scale", "50", NULL};
    sim_start(s, args);
    const char *sys = "You are a helpful assistant.";
    resp r;
    char *body = chat_body(sys, "Count.",
                           "{\"stream\":true,\"max_tokens\":6,"
                           "\"stream_options\":{\"include_usage\":true}}");
    http(s, "POST", "/v1/chat/completions", body, &r);
    free(body);
    assert_int_equal(r.cc, CURLE_OK);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.ctype, "text/event-stream"));

    sse ev;
    sse_parse(r.body, r.len, &ev);
    assert_int_equal(ev.malformed, 0);
    assert_true(ev.done_last);
    size_t n = json_array_size(ev.events);
    /* role, 6 tokens, final, usage */
    assert_int_equal(n, 1 + 6 + 1 + 1);
    json_t *first = json_array_get(ev.events, 0);
    json_t *delta =
        json_object_get(json_array_get(json_object_get(first, "choices"), 0), "delta");
    assert_string_equal(json_string_value(json_object_get(delta, "role")), "assistant");
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(ev.events, i);
        assert_string_equal(json_string_value(json_object_get(e, "object")),
                            "chat.completion.chunk");
        assert_string_equal(json_string_value(json_object_get(e, "id")),
                            json_string_value(json_object_get(first, "id")));
    }
    for (size_t i = 1; i <= 6; i++) {
        const char *t = delta_content(json_array_get(ev.events, i));
        assert_non_null(t);
        assert_int_equal(strlen(t), 4);
    }
    json_t *fin = json_array_get(ev.events, 7);
    json_t *ch = json_array_get(json_object_get(fin, "choices"), 0);
    assert_string_equal(json_string_value(json_object_get(ch, "finish_reason")),
                        "length");
    json_t *tm = json_object_get(fin, "timings");
    assert_non_null(tm);
    assert_int_equal(jint(tm, "predicted_n"), 6);
    assert_int_equal(jint(tm, "prompt_n") + jint(tm, "cache_n"),
                     prompt_tokens(sys, "Count."));
    assert_true(json_is_number(json_object_get(tm, "prompt_ms")));
    assert_true(json_is_number(json_object_get(tm, "predicted_ms")));
    json_t *last = json_array_get(ev.events, 8);
    assert_int_equal(json_array_size(json_object_get(last, "choices")), 0);
    json_t *u = json_object_get(last, "usage");
    assert_int_equal(jint(u, "completion_tokens"), 6);
    assert_int_equal(jint(u, "prompt_tokens"), prompt_tokens(sys, "Count."));
    assert_int_equal(jint(u, "total_tokens"), prompt_tokens(sys, "Count.") + 6);
    assert_non_null(
        json_object_get(json_object_get(u, "prompt_tokens_details"), "cached_tokens"));
    json_decref(ev.events);
    resp_fini(&r);

    /* Without include_usage there is no usage chunk; finish "stop" when the
     * reply ends before max_tokens. */
    body = chat_body(sys, "Again.", "{\"stream\":true,\"max_tokens\":100}");
    http(s, "POST", "/v1/chat/completions", body, &r);
    free(body);
    assert_int_equal(r.cc, CURLE_OK);
    sse_parse(r.body, r.len, &ev);
    assert_true(ev.done_last);
    n = json_array_size(ev.events);
    assert_int_equal(n, 1 + 32 + 1);
    ch = json_array_get(json_object_get(json_array_get(ev.events, n - 1), "choices"), 0);
    assert_string_equal(json_string_value(json_object_get(ch, "finish_reason")), "stop");
    json_decref(ev.events);
    resp_fini(&r);
    sim_stop(s);
}

static void test_same_prompt_hits_cache(void **state)
{
    sim *s = *state;
    const char *args[] = {"--time-scale", "50", NULL};
    sim_start(s, args);
    char *sys = text('a', 2000);
    long long pt = prompt_tokens(sys, "question");

    json_t *c1 = chat(s, sys, "question", NULL);
    assert_int_equal(timing(c1, "cache_n"), 0);
    long long prefill1 = stat_int(s, "prefill_tokens");
    assert_int_equal(prefill1, pt);

    json_t *c2 = chat(s, sys, "question", NULL);
    /* Full hit: llama.cpp still evaluates the last prompt token. */
    assert_int_equal(timing(c2, "cache_n"), pt - 1);
    assert_int_equal(timing(c2, "prompt_n"), 1);
    assert_int_equal(
        jint(json_object_get(json_object_get(c2, "usage"), "prompt_tokens_details"),
             "cached_tokens"),
        pt - 1);
    json_t *st = get_stats(s);
    assert_int_equal(jint(st, "prefill_tokens"), prefill1 + 1);
    assert_int_equal(jint(st, "cached_tokens"), pt - 1);
    assert_int_equal(jint(st, "prompt_tokens"), 2 * pt);
    json_decref(st);

    /* cache_prompt false: no reuse. */
    json_t *c3 = chat(s, sys, "question", "{\"cache_prompt\":false}");
    assert_int_equal(timing(c3, "cache_n"), 0);
    assert_int_equal(timing(c3, "prompt_n"), pt);

    json_decref(c1);
    json_decref(c2);
    json_decref(c3);
    free(sys);
    sim_stop(s);
}

static void test_one_slot_evicts(void **state)
{
    sim *s = *state;
    const char *args[] = {"--time-scale", "50", "--slots", "1", NULL};
    sim_start(s, args);
    char *a = text('a', 1200), *b = text('n', 1200);
    long long pa = prompt_tokens(a, "q");

    json_decref(chat(s, a, "q", NULL));
    json_decref(chat(s, b, "q", NULL));
    /* B replaced A in the only slot: just "<|im_start|>system\n" (19 bytes)
     * is shared, 4 whole tokens. */
    json_t *c = chat(s, a, "q", NULL);
    assert_int_equal(timing(c, "cache_n"), 19 / 4);
    json_decref(c);
    /* Back to back, A hits. */
    c = chat(s, a, "q", NULL);
    assert_int_equal(timing(c, "cache_n"), pa - 1);
    json_decref(c);
    free(a);
    free(b);
    sim_stop(s);
}

static void test_similarity_picks_slot(void **state)
{
    sim *s = *state;
    const char *args[] = {"--time-scale", "50", "--slots", "3", NULL};
    sim_start(s, args);
    char *a = text('a', 800), *b = text('h', 800), *c = text('o', 800);

    /* Sequential requests fill slots 0, 1, 2 (least recently used first). */
    json_decref(chat(s, a, "q", NULL));
    json_decref(chat(s, b, "q", NULL));
    json_decref(chat(s, c, "q", NULL));
    json_t *st = get_stats(s);
    json_t *slots = json_object_get(st, "slots");
    assert_int_equal(json_array_size(slots), 3);
    for (size_t i = 0; i < 3; i++)
        assert_true(jint(json_array_get(slots, i), "cached_tokens") > 0);
    json_decref(st);

    /* Same system prompt as B, another question: the idle slot holding B
     * wins over the least recently used one (A's). The common prefix runs
     * to the user message's content. */
    long slot = -1;
    json_t *r = chat_at(s, b, "other question", NULL, &slot);
    assert_int_equal(slot, 1);
    size_t common = strlen("<|im_start|>system\n") + strlen(b) +
                    strlen("<|im_end|>\n<|im_start|>user\n");
    assert_int_equal(timing(r, "cache_n"), (long long)(common / 4));
    json_decref(r);
    free(a);
    free(b);
    free(c);
    sim_stop(s);

    /* With a 0.9 threshold, a prompt sharing about half of a cached one
     * goes to the least recently used slot instead. */
    const char *args2[] = {"--time-scale",      "50",  "--slots", "2",
                           "--slot-similarity", "0.9", NULL};
    sim_start(s, args2);
    char *x = text('a', 400), *y = text('n', 400);
    json_decref(chat_at(s, x, "q", NULL, &slot));
    assert_int_equal(slot, 0);
    json_decref(chat_at(s, y, "q", NULL, &slot));
    assert_int_equal(slot, 1); /* slot 0 is now the least recently used */
    char *half = malloc(801);
    assert_non_null(half);
    memcpy(half, y, 400);
    memset(half + 400, 'z', 400);
    half[800] = '\0';
    r = chat_at(s, half, "q", NULL, &slot);
    assert_int_equal(slot, 0);
    assert_int_equal(timing(r, "cache_n"), 19 / 4); /* what slot 0 (x) shares */
    json_decref(r);
    free(half);
    free(x);
    free(y);
    sim_stop(s);
}

typedef struct worker {
    const sim *s;
    char *body;
    pthread_barrier_t *barrier;
    resp r;
} worker;

static void *worker_main(void *arg)
{
    worker *w = arg;
    if (w->barrier)
        pthread_barrier_wait(w->barrier);
    http(w->s, "POST", "/v1/chat/completions", w->body, &w->r);
    return NULL;
}

static void test_id_slot(void **state)
{
    sim *s = *state;
    const char *args[] = {"--time-scale", "50", "--slots", "2", NULL};
    sim_start(s, args);
    char *a = text('a', 800);
    long long pa = prompt_tokens(a, "q");

    long slot = -1;
    json_t *c = chat_at(s, a, "q", "{\"id_slot\":1}", &slot);
    assert_int_equal(slot, 1);
    json_decref(c);
    json_t *st = get_stats(s);
    json_t *slots = json_object_get(st, "slots");
    assert_int_equal(jint(json_array_get(slots, 0), "cached_tokens"), 0);
    assert_true(jint(json_array_get(slots, 1), "cached_tokens") >= pa);
    json_decref(st);

    /* Pinned to the empty slot: no reuse even though slot 1 has it all. */
    c = chat_at(s, a, "q", "{\"id_slot\":0}", &slot);
    assert_int_equal(slot, 0);
    assert_int_equal(timing(c, "cache_n"), 0);
    json_decref(c);
    c = chat(s, a, "q", "{\"id_slot\":1}");
    assert_int_equal(timing(c, "cache_n"), pa - 1);
    json_decref(c);

    resp r;
    char *body = chat_body(a, "q", "{\"id_slot\":2}");
    http(s, "POST", "/v1/chat/completions", body, &r);
    free(body);
    assert_int_equal(r.status, 400);
    resp_fini(&r);

    /* Two requests pinned to one slot run one after the other although the
     * other slot is idle. */
    http(s, "POST", "/sim/reset", "", &r);
    assert_int_equal(r.status, 200);
    resp_fini(&r);
    worker w[2];
    pthread_t t[2];
    for (int i = 0; i < 2; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].s = s;
        w[i].body = chat_body(a, i ? "x" : "y", "{\"id_slot\":0}");
        assert_int_equal(pthread_create(&t[i], NULL, worker_main, &w[i]), 0);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(w[i].r.status, 200);
        assert_int_equal(w[i].r.slot, 0);
        resp_fini(&w[i].r);
        free(w[i].body);
    }
    st = get_stats(s);
    assert_int_equal(jint(st, "requests"), 2);
    assert_int_equal(jint(st, "max_active"), 1);
    json_decref(st);
    free(a);
    sim_stop(s);
}

static void test_multi_turn_reuses_reply(void **state)
{
    sim *s = *state;
    const char *args[] = {"--time-scale", "50", NULL};
    sim_start(s, args);
    const char *sys = "You are a coding agent. Use the tools.";
    json_t *c1 = chat(s, sys, "List the files.", NULL);
    const char *reply = json_string_value(json_object_get(
        json_object_get(json_array_get(json_object_get(c1, "choices"), 0), "message"),
        "content"));
    assert_non_null(reply);

    /* Turn two sends turn one back with the assistant's answer: the slot
     * kept the generated tokens, so the hit runs through the reply. */
    json_t *o = json_pack("{s:[{s:s,s:s},{s:s,s:s},{s:s,s:s},{s:s,s:s}]}", "messages",
                          "role", "system", "content", sys, "role", "user", "content",
                          "List the files.", "role", "assistant", "content", reply,
                          "role", "user", "content", "Open the first one.");
    assert_non_null(o);
    char *body = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    resp r;
    http(s, "POST", "/v1/chat/completions", body, &r);
    free(body);
    assert_int_equal(r.status, 200);
    size_t common = rendered_len(sys, "List the files.") + strlen(reply);
    assert_int_equal(timing(r.json, "cache_n"), (long long)(common / 4));
    resp_fini(&r);
    json_decref(c1);
    sim_stop(s);
}

static void test_fifo_queue(void **state)
{
    /* One slot; three requests queue behind each other and get the slot in
     * arrival order (X-Lmsim-Admit-Seq is the server's grant order). */
    sim *s = *state;
    const char *args[] = {"--time-scale",   "20", "--slots", "1",
                          "--reply-tokens", "40", NULL};
    sim_start(s, args);
    enum { N = 3 };
    worker w[N];
    pthread_t t[N];
    for (int i = 0; i < N; i++) {
        char user[16];
        snprintf(user, sizeof user, "job %d", i);
        memset(&w[i], 0, sizeof w[i]);
        w[i].s = s;
        w[i].body = chat_body("sys", user, NULL);
        assert_int_equal(pthread_create(&t[i], NULL, worker_main, &w[i]), 0);
        /* Wait until it holds the slot, sits in the queue, or is done. */
        long deadline = now_ms() + START_GUARD_MS;
        for (;;) {
            json_t *st = get_stats(s);
            long long in = jint(st, "active") + jint(st, "queued") + jint(st, "requests");
            json_decref(st);
            if (in >= i + 1)
                break;
            assert_true(now_ms() < deadline);
            sleep_ms(2);
        }
    }
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(w[i].r.status, 200);
        assert_int_equal(w[i].r.admit, i + 1);
        resp_fini(&w[i].r);
        free(w[i].body);
    }
    assert_int_equal(stat_int(s, "max_active"), 1);
    sim_stop(s);
}

static void test_models(void **state)
{
    sim *s = *state;
    const char *args[] = {"--model",   "qwen-test", "--model-size",
                          "123456789", "--ctx",     "4096",
                          "--slots",   "3",         NULL};
    sim_start(s, args);
    resp r;
    http(s, "GET", "/api/v1/models", NULL, &r);
    assert_int_equal(r.status, 200);
    assert_non_null(r.json);
    json_t *m = json_array_get(json_object_get(r.json, "models"), 0);
    assert_non_null(m);
    assert_string_equal(json_string_value(json_object_get(m, "type")), "llm");
    assert_string_equal(json_string_value(json_object_get(m, "key")), "qwen-test");
    assert_true(json_is_string(json_object_get(m, "display_name")));
    assert_string_equal(json_string_value(json_object_get(m, "architecture")), "llama");
    assert_int_equal(jint(m, "size_bytes"), 123456789);
    assert_true(jint(m, "max_context_length") >= 4096);
    assert_string_equal(json_string_value(json_object_get(m, "format")), "gguf");
    json_t *li = json_array_get(json_object_get(m, "loaded_instances"), 0);
    assert_string_equal(json_string_value(json_object_get(li, "id")), "qwen-test");
    json_t *cfg = json_object_get(li, "config");
    assert_int_equal(jint(cfg, "context_length"), 4096);
    assert_int_equal(jint(cfg, "parallel"), 3);
    resp_fini(&r);

    http(s, "GET", "/v1/models", NULL, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(json_object_get(r.json, "data"), 0), "id")),
                        "qwen-test");
    resp_fini(&r);
    sim_stop(s);
}

static void test_concurrency_bounded_by_slots(void **state)
{
    sim *s = *state;
    const char *args[] = {"--time-scale",   "20",  "--slots", "3",
                          "--reply-tokens", "200", NULL};
    sim_start(s, args);
    enum { N = 10 };
    worker w[N];
    pthread_t t[N];
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, N);
    for (int i = 0; i < N; i++) {
        char user[32];
        memset(&w[i], 0, sizeof w[i]);
        snprintf(user, sizeof user, "request %d", i);
        w[i].s = s;
        w[i].barrier = &barrier;
        w[i].body = chat_body("You are terse.", user, i % 2 ? "{\"stream\":true}" : NULL);
        assert_int_equal(pthread_create(&t[i], NULL, worker_main, &w[i]), 0);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(w[i].r.cc, CURLE_OK);
        assert_int_equal(w[i].r.status, 200);
        resp_fini(&w[i].r);
        free(w[i].body);
    }
    pthread_barrier_destroy(&barrier);
    json_t *st = get_stats(s);
    assert_int_equal(jint(st, "requests"), N);
    assert_int_equal(jint(st, "completion_tokens"), N * 200);
    /* Ten requests of 200 tokens (over 4 simulated seconds each) released
     * together must have filled every slot, and never more. */
    assert_int_equal(jint(st, "max_active"), 3);
    assert_int_equal(jint(st, "active"), 0);
    assert_int_equal(jint(st, "queued"), 0);
    json_decref(st);
    sim_stop(s);
}

static void test_fail_rate(void **state)
{
    sim *s = *state;
    const char *args[] = {"--fail-rate", "1", NULL};
    sim_start(s, args);
    resp r;
    char *body = chat_body("sys", "hi", "{\"stream\":true}");
    http(s, "POST", "/v1/chat/completions", body, &r);
    free(body);
    assert_int_equal(r.status, 500);
    assert_non_null(r.json);
    json_t *e = json_object_get(r.json, "error");
    assert_string_equal(json_string_value(json_object_get(e, "message")),
                        "Channel Error");
    assert_string_equal(json_string_value(json_object_get(e, "type")), "server_error");
    resp_fini(&r);
    json_t *st = get_stats(s);
    assert_int_equal(jint(st, "errors_injected"), 1);
    assert_int_equal(jint(st, "requests"), 0);
    assert_int_equal(jint(st, "prompt_tokens"), 0); /* never reached a slot */
    json_decref(st);
    sim_stop(s);
}

static void test_crash_cuts_stream(void **state)
{
    sim *s = *state;
    const char *args[] = {"--time-scale", "20", "--crash-after", "1", "--reply-tokens",
                          "50",           NULL};
    sim_start(s, args);
    char *sys = text('a', 400);
    resp r;
    char *body = chat_body(sys, "q", "{\"stream\":true}");
    http(s, "POST", "/v1/chat/completions", body, &r);
    free(body);
    /* Headers came, then the connection closed without the last chunk. */
    assert_int_equal(r.status, 200);
    assert_true(r.cc == CURLE_PARTIAL_FILE || r.cc == CURLE_RECV_ERROR);
    sse ev;
    sse_parse(r.body ? r.body : "", r.len, &ev);
    assert_false(ev.done);
    int tokens = 0;
    for (size_t i = 0; i < json_array_size(ev.events); i++)
        tokens += delta_content(json_array_get(ev.events, i)) &&
                  *delta_content(json_array_get(ev.events, i));
    assert_true(tokens >= 1 && tokens < 50);
    json_decref(ev.events);
    resp_fini(&r);

    json_t *st = get_stats(s);
    assert_int_equal(jint(st, "crashes"), 1);
    assert_int_equal(jint(st, "errors_injected"), 1);
    json_t *slots = json_object_get(st, "slots");
    for (size_t i = 0; i < json_array_size(slots); i++)
        assert_int_equal(jint(json_array_get(slots, i), "cached_tokens"), 0);
    json_decref(st);

    /* Service continues, with a cold cache. */
    json_t *c = chat(s, sys, "q", NULL);
    assert_int_equal(timing(c, "cache_n"), 0);
    json_decref(c);
    free(sys);
    sim_stop(s);
}

static void test_crash_fails_waiting(void **state)
{
    /* One slot; A's 4000-token prompt takes 40 simulated s (2 s wall) to
     * prefill, so B is queued behind it when A's first token crashes the
     * model. */
    sim *s = *state;
    const char *args[] = {"--time-scale",  "20",  "--slots", "1", "--crash-after", "1",
                          "--prefill-tps", "100", NULL};
    sim_start(s, args);
    char *big = text('a', 16000);
    worker wa = {.s = s, .body = chat_body(big, "q", "{\"stream\":true}")};
    pthread_t ta;
    assert_int_equal(pthread_create(&ta, NULL, worker_main, &wa), 0);
    long deadline = now_ms() + START_GUARD_MS;
    while (stat_int(s, "active") < 1) {
        assert_true(now_ms() < deadline);
        sleep_ms(5);
    }
    resp rb;
    char *body = chat_body("other", "q", NULL);
    http(s, "POST", "/v1/chat/completions", body, &rb);
    free(body);
    assert_int_equal(rb.status, 500);
    assert_non_null(strstr(rb.body, "The model has crashed"));
    resp_fini(&rb);
    pthread_join(ta, NULL);
    assert_int_equal(wa.r.status, 200);
    assert_true(wa.r.cc != CURLE_OK);
    resp_fini(&wa.r);
    free(wa.body);
    free(big);
    json_t *st = get_stats(s);
    assert_int_equal(jint(st, "errors_injected"), 2);
    json_t *f = json_object_get(st, "faults");
    assert_int_equal(jint(f, "cut"), 1);
    assert_int_equal(jint(f, "crash_failed"), 1);
    json_decref(st);
    sim_stop(s);
}

static void test_crash_exit(void **state)
{
    sim *s = *state;
    const char *args[] = {"--time-scale", "20", "--crash-after", "2",
                          "--crash-exit", NULL};
    sim_start(s, args);
    json_decref(chat(s, "sys", "first", NULL));
    resp r;
    char *body = chat_body("sys", "second", "{\"stream\":true}");
    http(s, "POST", "/v1/chat/completions", body, &r);
    free(body);
    assert_int_equal(r.status, 200);
    assert_true(r.cc != CURLE_OK);
    assert_non_null(r.body);
    sse ev;
    sse_parse(r.body, r.len, &ev);
    assert_false(ev.done);
    assert_true(json_array_size(ev.events) >= 2); /* role and one token */
    json_decref(ev.events);
    resp_fini(&r);
    int st = sim_wait_exit(s);
    sim_cleanup_files(s);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 3);
}

static void test_context_overflow(void **state)
{
    sim *s = *state;
    const char *args[] = {"--ctx", "64", "--reply-tokens", "100", "--time-scale",
                          "50",    NULL};
    sim_start(s, args);
    char *sys = text('a', 300);
    resp r;
    char *body = chat_body(sys, "q", NULL);
    http(s, "POST", "/v1/chat/completions", body, &r);
    free(body);
    assert_int_equal(r.status, 400);
    assert_non_null(r.json);
    json_t *e = json_object_get(r.json, "error");
    assert_non_null(strstr(json_string_value(json_object_get(e, "message")),
                           "exceeds the available context size"));
    assert_int_equal(jint(e, "n_ctx"), 64);
    assert_int_equal(jint(e, "n_prompt_tokens"), prompt_tokens(sys, "q"));
    resp_fini(&r);
    free(sys);

    /* A prompt that fits generates until the context is full: "length". */
    json_t *c = chat(s, "sys", "q", NULL);
    long long room = 64 - prompt_tokens("sys", "q");
    assert_int_equal(jint(json_object_get(c, "usage"), "completion_tokens"), room);
    json_t *ch = json_array_get(json_object_get(c, "choices"), 0);
    assert_string_equal(json_string_value(json_object_get(ch, "finish_reason")),
                        "length");
    json_decref(c);
    sim_stop(s);
}

static void test_reset(void **state)
{
    sim *s = *state;
    const char *args[] = {"--time-scale", "50", NULL};
    sim_start(s, args);
    char *sys = text('a', 400);
    json_decref(chat(s, sys, "q", NULL));
    json_t *st = get_stats(s);
    assert_int_equal(jint(st, "requests"), 1);
    assert_true(jint(st, "prompt_tokens") > 0);
    json_decref(st);

    resp r;
    http(s, "POST", "/sim/reset", "", &r);
    assert_int_equal(r.status, 200);
    resp_fini(&r);
    st = get_stats(s);
    static const char *const zero[] = {
        "requests",          "prompt_tokens", "prefill_tokens", "cached_tokens",
        "completion_tokens", "max_active",    "errors_injected"};
    for (size_t i = 0; i < sizeof zero / sizeof zero[0]; i++)
        assert_int_equal(jint(st, zero[i]), 0);
    json_t *slots = json_object_get(st, "slots");
    for (size_t i = 0; i < json_array_size(slots); i++)
        assert_int_equal(jint(json_array_get(slots, i), "cached_tokens"), 0);
    json_decref(st);
    json_t *c = chat(s, sys, "q", NULL);
    assert_int_equal(timing(c, "cache_n"), 0);
    json_decref(c);
    free(sys);
    sim_stop(s);
}

static void test_malformed_chunk(void **state)
{
    sim *s = *state;
    const char *args[] = {"--time-scale", "50", "--malformed-rate", "1", NULL};
    sim_start(s, args);
    resp r;
    char *body = chat_body("sys", "q", "{\"stream\":true}");
    http(s, "POST", "/v1/chat/completions", body, &r);
    free(body);
    assert_int_equal(r.cc, CURLE_OK);
    sse ev;
    sse_parse(r.body, r.len, &ev);
    assert_int_equal(ev.malformed, 1);
    assert_true(ev.done_last);
    assert_int_equal(json_array_size(ev.events), 1 + 32 + 1); /* the stream went on */
    json_decref(ev.events);
    resp_fini(&r);
    assert_int_equal(stat_int(s, "errors_injected"), 1);
    sim_stop(s);
}

static void test_spike(void **state)
{
    sim *s = *state;
    const char *args[] = {"--time-scale", "50", "--spike-rate", "1", "--spike-ms",
                          "5000",         NULL};
    sim_start(s, args);
    json_t *st = get_stats(s);
    double t0 = json_real_value(json_object_get(st, "sim_ms"));
    json_decref(st);
    json_decref(chat(s, "sys", "q", NULL));
    st = get_stats(s);
    /* The request took at least the spike in simulated time. */
    assert_true(json_real_value(json_object_get(st, "sim_ms")) - t0 >= 5000.0);
    assert_int_equal(jint(st, "errors_injected"), 1);
    assert_int_equal(jint(json_object_get(st, "faults"), "spike"), 1);
    json_decref(st);
    sim_stop(s);
}

static size_t abort_after_token_cb(char *data, size_t size, size_t nmemb, void *userp)
{
    static const char needle[] = "\"delta\":{\"content\":\"";
    int *seen = userp;
    size_t n = size * nmemb;
    /* Hang up once a content token has arrived. */
    for (size_t i = 0; i + sizeof needle - 1 <= n; i++) {
        if (memcmp(data + i, needle, sizeof needle - 1) == 0)
            (*seen)++;
    }
    return *seen ? 0 : n;
}

static void test_client_gone_frees_slot(void **state)
{
    sim *s = *state;
    const char *args[] = {"--time-scale",   "20",   "--slots", "1",
                          "--reply-tokens", "2000", NULL};
    sim_start(s, args);
    char url[128];
    int seen = 0;
    snprintf(url, sizeof url, "http://127.0.0.1:%u/v1/chat/completions", s->port);
    char *body = chat_body("sys", "long answer", "{\"stream\":true}");
    CURL *c = curl_easy_init();
    assert_non_null(c);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, abort_after_token_cb);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &seen);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, REQ_GUARD_S);
    assert_int_equal(curl_easy_perform(c), CURLE_WRITE_ERROR);
    curl_easy_cleanup(c);
    free(body);
    assert_true(seen >= 1);

    /* The slot frees without waiting for the 2000 tokens (about 44
     * simulated seconds of decoding, 2.2 s wall). */
    long deadline = now_ms() + STOP_GUARD_MS;
    while (stat_int(s, "active") != 0) {
        assert_true(now_ms() < deadline);
        sleep_ms(10);
    }
    json_t *st = get_stats(s);
    assert_int_equal(jint(st, "requests"), 0);
    assert_true(jint(st, "completion_tokens") < 2000);
    json_decref(st);
    sim_stop(s);
}

static void test_bad_requests(void **state)
{
    sim *s = *state;
    sim_start(s, NULL);
    resp r;
    http(s, "POST", "/v1/chat/completions", "{\"model\":\"m\"}", &r);
    assert_int_equal(r.status, 400);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(r.json, "error"), "type")),
        "invalid_request_error");
    resp_fini(&r);
    http(s, "POST", "/v1/chat/completions", "{not json", &r);
    assert_int_equal(r.status, 400);
    resp_fini(&r);
    http(s, "GET", "/no/such/path", NULL, &r);
    assert_int_equal(r.status, 404);
    assert_non_null(json_object_get(r.json, "error"));
    resp_fini(&r);
    http(s, "GET", "/v1/chat/completions", NULL, &r);
    assert_int_equal(r.status, 405);
    resp_fini(&r);

    /* Over the 8 MiB body limit. */
    size_t big = 8u * 1024 * 1024 + 100;
    char *body = malloc(big + 1);
    assert_non_null(body);
    memset(body, ' ', big);
    body[big] = '\0';
    http(s, "POST", "/v1/chat/completions", body, &r);
    free(body);
    assert_int_equal(r.status, 413);
    resp_fini(&r);
    sim_stop(s);
}

static void test_refuse_then_listen(void **state)
{
    /* Learn a free port, then ask lmsim to refuse for a while on it. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &alen), 0);
    close(fd);
    char port[16];
    snprintf(port, sizeof port, "%u", (unsigned)ntohs(a.sin_port));

    sim *s = *state;
    const char *args[] = {"--port", port, "--refuse-ms", "1500", NULL};
    long t0 = now_ms();
    sim_spawn(s, args, false);
    s->port = (unsigned)ntohs(a.sin_port);
    resp r;
    http(s, "GET", "/v1/models", NULL, &r);
    /* Refused, unless this machine was too slow to get here in time. */
    if (now_ms() - t0 < 1000)
        assert_int_equal(r.cc, CURLE_COULDNT_CONNECT);
    resp_fini(&r);

    long deadline = now_ms() + START_GUARD_MS;
    while (access(s->port_file, F_OK) != 0) {
        assert_true(now_ms() < deadline);
        sleep_ms(10);
    }
    http(s, "GET", "/v1/models", NULL, &r);
    assert_int_equal(r.cc, CURLE_OK);
    assert_int_equal(r.status, 200);
    resp_fini(&r);
    sim_stop(s);
}

static void test_keep_alive(void **state)
{
    sim *s = *state;
    const char *args[] = {"--time-scale", "50", NULL};
    sim_start(s, args);
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%u/v1/chat/completions", s->port);
    char *body = chat_body("sys", "q", "{\"stream\":true,\"max_tokens\":3}");
    CURL *c = curl_easy_init();
    assert_non_null(c);
    resp r = {0};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, resp_write_cb);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, REQ_GUARD_S);
    for (int i = 0; i < 3; i++)
        assert_int_equal(curl_easy_perform(c), CURLE_OK);
    long conns = -1;
    curl_easy_getinfo(c, CURLINFO_NUM_CONNECTS, &conns);
    assert_int_equal(conns, 0); /* the last request reused the connection */
    curl_easy_cleanup(c);
    free(body);
    free(r.body);
    sim_stop(s);
}

/* The content of a non-streamed completion (a copy). */
static char *completion_content(json_t *c)
{
    json_t *ch = json_array_get(json_object_get(c, "choices"), 0);
    const char *t =
        json_string_value(json_object_get(json_object_get(ch, "message"), "content"));
    assert_non_null(t);
    char *copy = strdup(t);
    assert_non_null(copy);
    return copy;
}

/* --instant: every chat answered at once, as a whole event stream or
 * completion, with no slots, clock or faults. The rates below would make a
 * modelled request take days, so each answer arriving within the request
 * guard shows it bypassed the time model. */
static void test_instant(void **state)
{
    sim *s = *state;
    const char *args[] = {
        "--instant", "--reply-tokens", "5",     "--slots", "2", "--prefill-tps",
        "0.001",     "--decode-tps",   "0.001", NULL};
    sim_start(s, args);
    const char *sys = "You are a helpful assistant.";
    resp r;

    /* Streamed with usage: role, 5 tokens, final, usage, [DONE]. */
    char *body = chat_body(sys, "Count.",
                           "{\"stream\":true,\"max_tokens\":100,\"cache_prompt\":true,"
                           "\"stream_options\":{\"include_usage\":true}}");
    http(s, "POST", "/v1/chat/completions", body, &r);
    free(body);
    assert_int_equal(r.cc, CURLE_OK);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.ctype, "text/event-stream"));
    sse ev;
    sse_parse(r.body, r.len, &ev);
    assert_int_equal(ev.malformed, 0);
    assert_true(ev.done_last);
    size_t n = json_array_size(ev.events);
    assert_int_equal(n, 1 + 5 + 1 + 1);
    json_t *first = json_array_get(ev.events, 0);
    json_t *delta =
        json_object_get(json_array_get(json_object_get(first, "choices"), 0), "delta");
    assert_string_equal(json_string_value(json_object_get(delta, "role")), "assistant");
    char streamed[64] = "";
    for (size_t i = 1; i <= 5; i++) {
        const char *t = delta_content(json_array_get(ev.events, i));
        assert_non_null(t);
        assert_int_equal(strlen(t), 4);
        strcat(streamed, t);
    }
    json_t *fin = json_array_get(ev.events, 6);
    json_t *ch = json_array_get(json_object_get(fin, "choices"), 0);
    assert_string_equal(json_string_value(json_object_get(ch, "finish_reason")), "stop");
    json_t *tm = json_object_get(fin, "timings");
    assert_int_equal(jint(tm, "predicted_n"), 5);
    assert_int_equal(jint(tm, "prompt_n"), prompt_tokens(sys, "Count."));
    assert_int_equal(jint(tm, "cache_n"), 0);
    json_t *u = json_object_get(json_array_get(ev.events, 7), "usage");
    assert_int_equal(jint(u, "prompt_tokens"), prompt_tokens(sys, "Count."));
    assert_int_equal(jint(u, "completion_tokens"), 5);
    assert_int_equal(jint(json_object_get(u, "prompt_tokens_details"), "cached_tokens"),
                     0);
    json_decref(ev.events);
    resp_fini(&r);

    /* max_tokens below the reply cuts it with "length"; no usage asked. */
    body = chat_body(sys, "Count.", "{\"stream\":true,\"max_tokens\":3}");
    http(s, "POST", "/v1/chat/completions", body, &r);
    free(body);
    assert_int_equal(r.status, 200);
    sse_parse(r.body, r.len, &ev);
    assert_true(ev.done_last);
    assert_int_equal(json_array_size(ev.events), 1 + 3 + 1);
    ch = json_array_get(json_object_get(json_array_get(ev.events, 4), "choices"), 0);
    assert_string_equal(json_string_value(json_object_get(ch, "finish_reason")),
                        "length");
    json_decref(ev.events);
    resp_fini(&r);

    /* Not streamed: the same words as the stream, for the same request. */
    json_t *c = chat(s, sys, "Count.", NULL);
    char *instant_text = completion_content(c);
    assert_string_equal(instant_text, streamed);
    assert_int_equal(jint(json_object_get(c, "usage"), "completion_tokens"), 5);
    json_decref(c);

    /* Keep-alive connections stay usable; no slot limit applies. */
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%u/v1/chat/completions", s->port);
    body = chat_body("sys", "q", "{\"stream\":true,\"max_tokens\":2}");
    CURL *k = curl_easy_init();
    assert_non_null(k);
    resp kr = {0};
    curl_easy_setopt(k, CURLOPT_URL, url);
    curl_easy_setopt(k, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(k, CURLOPT_WRITEFUNCTION, resp_write_cb);
    curl_easy_setopt(k, CURLOPT_WRITEDATA, &kr);
    curl_easy_setopt(k, CURLOPT_TIMEOUT, REQ_GUARD_S);
    for (int i = 0; i < 3; i++)
        assert_int_equal(curl_easy_perform(k), CURLE_OK);
    long conns = -1;
    curl_easy_getinfo(k, CURLINFO_NUM_CONNECTS, &conns);
    assert_int_equal(conns, 0);
    curl_easy_cleanup(k);
    free(kr.body);
    free(body);

    /* The refusals of a modelled request still apply. */
    body = chat_body(sys, "q", "{\"id_slot\":2}");
    http(s, "POST", "/v1/chat/completions", body, &r);
    free(body);
    assert_int_equal(r.status, 400);
    resp_fini(&r);
    char *big = text('a', 40000); /* 10,000 tokens over 8,192 */
    body = chat_body(big, "q", NULL);
    http(s, "POST", "/v1/chat/completions", body, &r);
    free(body);
    free(big);
    assert_int_equal(r.status, 400);
    assert_int_equal(jint(json_object_get(r.json, "error"), "n_ctx"), 8192);
    resp_fini(&r);

    /* Counted in the stats as prefilled in full; the flag is reported. */
    json_t *st = get_stats(s);
    assert_int_equal(jint(st, "requests"), 6);
    assert_int_equal(jint(st, "completion_tokens"), 5 + 3 + 5 + 3 * 2);
    assert_int_equal(jint(st, "prompt_tokens"), jint(st, "prefill_tokens"));
    assert_int_equal(jint(st, "cached_tokens"), 0);
    assert_int_equal(jint(st, "max_active"), 0);
    assert_true(json_is_true(json_object_get(json_object_get(st, "config"), "instant")));
    json_decref(st);
    sim_stop(s);

    /* The modelled engine gives the same request the same words. */
    const char *modelled[] = {"--reply-tokens", "5", "--time-scale", "100", NULL};
    sim_start(s, modelled);
    c = chat(s, sys, "Count.", NULL);
    char *model_text = completion_content(c);
    assert_string_equal(model_text, instant_text);
    json_decref(c);
    free(model_text);
    free(instant_text);
    sim_stop(s);

    /* Faults are drawn by the engine, which --instant bypasses: refused. */
    const char *faulty[] = {"--instant", "--fail-rate", "0.5", NULL};
    sim_spawn(s, faulty, false);
    int st2 = sim_wait_exit(s);
    sim_cleanup_files(s);
    assert_true(WIFEXITED(st2));
    assert_int_equal(WEXITSTATUS(st2), 2);
}

/* Every test gets a sim slot; teardown kills a child a failed assertion
 * left running. */
static int sim_setup(void **state)
{
    sim *s = calloc(1, sizeof *s);
    if (!s)
        return -1;
    s->exited = true;
    *state = s;
    return 0;
}

static int sim_teardown(void **state)
{
    sim *s = *state;
    if (s->pid > 0 && !s->exited) {
        kill(s->pid, SIGKILL);
        waitpid(s->pid, NULL, 0);
    }
    if (s->dir[0]) {
        unlink(s->port_file);
        rmdir(s->dir);
    }
    free(s);
    return 0;
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_nonstream, sim_setup, sim_teardown),
        cmocka_unit_test_setup_teardown(test_stream, sim_setup, sim_teardown),
        cmocka_unit_test_setup_teardown(test_same_prompt_hits_cache, sim_setup,
                                        sim_teardown),
        cmocka_unit_test_setup_teardown(test_one_slot_evicts, sim_setup, sim_teardown),
        cmocka_unit_test_setup_teardown(test_similarity_picks_slot, sim_setup,
                                        sim_teardown),
        cmocka_unit_test_setup_teardown(test_id_slot, sim_setup, sim_teardown),
        cmocka_unit_test_setup_teardown(test_multi_turn_reuses_reply, sim_setup,
                                        sim_teardown),
        cmocka_unit_test_setup_teardown(test_fifo_queue, sim_setup, sim_teardown),
        cmocka_unit_test_setup_teardown(test_models, sim_setup, sim_teardown),
        cmocka_unit_test_setup_teardown(test_concurrency_bounded_by_slots, sim_setup,
                                        sim_teardown),
        cmocka_unit_test_setup_teardown(test_fail_rate, sim_setup, sim_teardown),
        cmocka_unit_test_setup_teardown(test_crash_cuts_stream, sim_setup, sim_teardown),
        cmocka_unit_test_setup_teardown(test_crash_fails_waiting, sim_setup,
                                        sim_teardown),
        cmocka_unit_test_setup_teardown(test_crash_exit, sim_setup, sim_teardown),
        cmocka_unit_test_setup_teardown(test_context_overflow, sim_setup, sim_teardown),
        cmocka_unit_test_setup_teardown(test_reset, sim_setup, sim_teardown),
        cmocka_unit_test_setup_teardown(test_malformed_chunk, sim_setup, sim_teardown),
        cmocka_unit_test_setup_teardown(test_spike, sim_setup, sim_teardown),
        cmocka_unit_test_setup_teardown(test_client_gone_frees_slot, sim_setup,
                                        sim_teardown),
        cmocka_unit_test_setup_teardown(test_bad_requests, sim_setup, sim_teardown),
        cmocka_unit_test_setup_teardown(test_refuse_then_listen, sim_setup, sim_teardown),
        cmocka_unit_test_setup_teardown(test_keep_alive, sim_setup, sim_teardown),
        cmocka_unit_test_setup_teardown(test_instant, sim_setup, sim_teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
