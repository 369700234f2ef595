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
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kit/clock.h"
#include "kit/fs.h"
#include "kit/http.h"
#include "kit/json.h"
#include "kit/net.h"
#include "kit/proc.h"
#include "kit/sim.h"

/* Hang guards. */
#define START_GUARD_MS 10000
#define STOP_GUARD_MS 10000
#define REQ_GUARD_MS 30000L

/* One lmsim child and its directory (the port file). */
typedef struct sim {
    kit_proc proc;
    char dir[64];
    char port_file[128];
    unsigned port;
} sim;

/* An HTTP exchange: status, body, headers, the body as JSON. */
typedef kit_http_resp resp;

/* ---- helpers ---------------------------------------------------------- */

static void sim_spawn(sim *s, const char *const *args, bool wait_port)
{
    char why[256];

    memset(s, 0, sizeof *s);
    strcpy(s->dir, "/tmp/lmsim-test-XXXXXX");
    assert_non_null(mkdtemp(s->dir));
    snprintf(s->port_file, sizeof s->port_file, "%s/port", s->dir);
    /* Keep the test's stdout clean; stderr shows lmsim's warnings. */
    kit_sim_opts o = {
        .port_file = s->port_file,
        .log_level = "warn",
        .args = args,
        .out = KIT_OUT_QUIET,
        .timeout_ms = wait_port ? START_GUARD_MS : 0,
    };
    int port = kit_sim_start(&s->proc, &o, why, sizeof why);
    if (port < 0)
        fail_msg("%s", why);
    s->port = (unsigned)port;
}

static void sim_start(sim *s, const char *const *args)
{
    sim_spawn(s, args, true);
}

/* Waits for the child to exit by itself; returns its exit code, or 128 +
 * the signal that ended it. */
static int sim_wait_exit(sim *s)
{
    if (s->proc.pid > 0 && kit_proc_wait(&s->proc, STOP_GUARD_MS) < 0) {
        kit_proc_stop(&s->proc, SIGKILL, STOP_GUARD_MS);
        fail_msg("lmsim did not exit");
    }
    return s->proc.status;
}

static void sim_cleanup_files(sim *s)
{
    if (s->dir[0] != '\0')
        kit_fs_rm_tree(s->dir);
    s->dir[0] = '\0';
}

/* SIGTERM, and the simulator must stop cleanly with status 0 (under ASan a
 * leak would make it non-zero). */
static void sim_stop(sim *s)
{
    if (s->proc.pid > 0)
        kill(s->proc.pid, SIGTERM);
    int st = sim_wait_exit(s);
    sim_cleanup_files(s);
    assert_int_equal(st, 0);
}

static void resp_fini(resp *r)
{
    kit_http_resp_fini(r);
}

/* The slot that served a request (X-Lmsim-Slot), -1 if absent. */
static long resp_slot(const resp *r)
{
    return kit_http_header_long(r, "X-Lmsim-Slot", -1);
}

/* Its admission sequence number (X-Lmsim-Admit-Seq), -1 if absent. */
static long resp_admit(const resp *r)
{
    return kit_http_header_long(r, "X-Lmsim-Admit-Seq", -1);
}

static void http(const sim *s, const char *method, const char *path, const char *body,
                 resp *r)
{
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%u%s", s->port, path);
    kit_http(method, url, body, REQ_GUARD_MS, r);
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
    int64_t v = kit_json_int(o, key);
    if (v == INT64_MIN)
        fail_msg("'%s' is not an integer", key);
    return (long long)v;
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
        *slot = resp_slot(&r);
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

/* --host-cache: a prompt moved out of its slot comes back from the host
 * cache, as with llama.cpp's --cache-ram (without it: test_one_slot_evicts). */
static void test_host_cache(void **state)
{
    sim *s = *state;
    const char *args[] = {"--time-scale", "50", "--slots", "1", "--host-cache", "100000",
                          NULL};
    sim_start(s, args);
    char *a = text('a', 1200), *b = text('n', 1200);
    long long pa = prompt_tokens(a, "q");

    json_decref(chat(s, a, "q", "{\"id_slot\":0}"));
    json_decref(chat(s, b, "q", "{\"id_slot\":0}"));
    /* B took A's slot; A comes back whole (but the last token). */
    json_t *c = chat(s, a, "q", "{\"id_slot\":0}");
    assert_int_equal(timing(c, "cache_n"), pa - 1);
    assert_int_equal(
        jint(json_object_get(json_object_get(c, "usage"), "prompt_tokens_details"),
             "cached_tokens"),
        pa - 1);
    json_decref(c);
    /* A prompt that shares less than a quarter of a kept one does not get
     * it back; one that shares more does, up to where they part. */
    json_decref(chat(s, b, "q", NULL)); /* A is kept again */
    char *d = text('h', 1200), *e = text('h', 1200);
    memcpy(d, a, 200);
    memcpy(e, a, 800);
    c = chat(s, d, "q", NULL);
    assert_int_equal(timing(c, "cache_n"), 19 / 4);
    json_decref(c);
    c = chat(s, e, "q", NULL);
    assert_int_equal(timing(c, "cache_n"), (19 + 800) / 4);
    json_decref(c);
    sim_stop(s);

    /* Room for one prompt only: keeping B drops A (least recently used),
     * so A is prefilled again. */
    const char *small[] = {"--time-scale", "50", "--slots", "1", "--host-cache", "400",
                           NULL};
    sim_start(s, small);
    json_decref(chat(s, a, "q", NULL));
    json_decref(chat(s, b, "q", NULL));
    c = chat(s, a, "q", NULL);
    assert_int_equal(timing(c, "cache_n"), 19 / 4);
    json_decref(c);
    free(a);
    free(b);
    free(d);
    free(e);
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
        assert_int_equal(resp_slot(&w[i].r), 0);
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
        int64_t deadline = kit_now_ms() + START_GUARD_MS;
        for (;;) {
            json_t *st = get_stats(s);
            long long in = jint(st, "active") + jint(st, "queued") + jint(st, "requests");
            json_decref(st);
            if (in >= i + 1)
                break;
            assert_true(kit_now_ms() < deadline);
            kit_sleep_ms(2);
        }
    }
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(w[i].r.status, 200);
        assert_int_equal(resp_admit(&w[i].r), i + 1);
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
    int64_t deadline = kit_now_ms() + START_GUARD_MS;
    while (stat_int(s, "active") < 1) {
        assert_true(kit_now_ms() < deadline);
        kit_sleep_ms(5);
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
    assert_int_equal(st, 3);
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
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, REQ_GUARD_MS);
    assert_int_equal(curl_easy_perform(c), CURLE_WRITE_ERROR);
    curl_easy_cleanup(c);
    free(body);
    assert_true(seen >= 1);

    /* The slot frees without waiting for the 2000 tokens (about 44
     * simulated seconds of decoding, 2.2 s wall). */
    int64_t deadline = kit_now_ms() + STOP_GUARD_MS;
    while (stat_int(s, "active") != 0) {
        assert_true(kit_now_ms() < deadline);
        kit_sleep_ms(10);
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

/* POSTs body to path and returns the JSON of a 200 answer. */
static json_t *post_json_ok(const sim *s, const char *path, const char *body)
{
    resp r;
    http(s, "POST", path, body, &r);
    assert_int_equal(r.cc, CURLE_OK);
    if (r.status != 200)
        fail_msg("POST %s: status %ld: %s", path, r.status, r.body ? r.body : "");
    assert_non_null(r.json);
    json_t *j = json_incref(r.json);
    resp_fini(&r);
    return j;
}

/* The tokens /tokenize gives the template /apply-template renders for body:
 * llama-server's exact count of a chat. */
static long long count_tokens(const sim *s, const char *body, char **prompt)
{
    json_t *t = post_json_ok(s, "/apply-template", body);
    const char *text = json_string_value(json_object_get(t, "prompt"));
    assert_non_null(text);
    json_t *req = json_pack("{s:s,s:b,s:b}", "content", text, "add_special", 1,
                            "parse_special", 1);
    char *rb = json_dumps(req, JSON_COMPACT);
    json_t *k = post_json_ok(s, "/tokenize", rb);
    json_t *tokens = json_object_get(k, "tokens");
    assert_true(json_is_array(tokens));
    for (size_t i = 0; i < json_array_size(tokens); i++)
        assert_true(json_is_integer(json_array_get(tokens, i)));
    long long n = (long long)json_array_size(tokens);
    if (prompt != NULL)
        *prompt = strdup(text);
    json_decref(k);
    free(rb);
    json_decref(req);
    json_decref(t);
    return n;
}

/* llama-server's token counts: the template of a chat is the prompt lmsim
 * renders for it, and its /tokenize count is the chat's usage.prompt_tokens,
 * for plain messages and with tools; each answered without a slot. */
static void test_token_counts(void **state)
{
    sim *s = *state;
    const char *args[] = {"--slots", "1", NULL};
    sim_start(s, args);
    const char *sys = "You are a careful reviewer of C code.";
    const char *user = "Is this loop off by one? for (i = 0; i <= n; i++) a[i] = 0;";
    const char *extras[] = {
        "{\"max_tokens\":1,\"stream\":true,\"id_slot\":0,\"cache_prompt\":true}",
        "{\"max_tokens\":1,\"tools\":[{\"type\":\"function\",\"function\":{\"name\":"
        "\"read_file\",\"description\":\"Reads a file\",\"parameters\":{\"type\":"
        "\"object\",\"properties\":{\"path\":{\"type\":\"string\"}}}}}]}",
    };
    for (size_t i = 0; i < sizeof(extras) / sizeof(extras[0]); i++) {
        char *body = chat_body(sys, user, extras[i]);
        char *prompt = NULL;
        long long n = count_tokens(s, body, &prompt);
        if (i == 0) {
            /* Plain messages: the documented ChatML rendering. */
            assert_int_equal(strlen(prompt), rendered_len(sys, user));
            assert_int_equal(n, prompt_tokens(sys, user));
        } else {
            /* Tools are rendered into the prompt, so they count. */
            assert_true((size_t)n > (rendered_len(sys, user) + 3) / 4);
        }
        free(prompt);
        /* The same body as a (non-streamed) chat: the same count. */
        json_t *o = json_loads(body, 0, NULL);
        json_object_del(o, "stream");
        char *chat_b = json_dumps(o, JSON_COMPACT);
        json_t *c = post_json_ok(s, "/v1/chat/completions", chat_b);
        assert_int_equal(jint(json_object_get(c, "usage"), "prompt_tokens"), n);
        json_decref(c);
        free(chat_b);
        json_decref(o);
        free(body);
    }
    /* An empty text is one token, as the engine counts an empty prompt. */
    json_t *k = post_json_ok(s, "/tokenize", "{\"content\":\"\"}");
    assert_int_equal(json_array_size(json_object_get(k, "tokens")), 1);
    json_decref(k);
    json_t *st = get_stats(s);
    assert_int_equal(jint(st, "template_requests"), 2);
    assert_int_equal(jint(st, "tokenize_requests"), 3);
    assert_int_equal(jint(st, "requests"), 2); /* the counts took no slot */
    json_decref(st);

    /* Bad bodies: 400, counted nowhere. */
    resp r;
    http(s, "POST", "/tokenize", "{\"content\":7}", &r);
    assert_int_equal(r.status, 400);
    resp_fini(&r);
    http(s, "POST", "/apply-template", "{\"model\":\"m\"}", &r);
    assert_int_equal(r.status, 400);
    resp_fini(&r);
    http(s, "GET", "/tokenize", NULL, &r);
    assert_int_equal(r.status, 405);
    resp_fini(&r);
    assert_int_equal(stat_int(s, "tokenize_requests"), 3);
    http(s, "POST", "/sim/reset", "", &r);
    resp_fini(&r);
    assert_int_equal(stat_int(s, "tokenize_requests"), 0);
    assert_int_equal(stat_int(s, "template_requests"), 0);
    sim_stop(s);
}

/* --no-tokenize: a server without the count endpoints (LM Studio's REST
 * API) answers them 404, and chats as before. */
static void test_no_tokenize(void **state)
{
    sim *s = *state;
    const char *args[] = {"--no-tokenize", NULL};
    sim_start(s, args);
    char *body = chat_body("sys", "hello there", "{\"max_tokens\":1}");
    resp r;
    http(s, "POST", "/apply-template", body, &r);
    assert_int_equal(r.status, 404);
    assert_non_null(json_object_get(r.json, "error"));
    resp_fini(&r);
    http(s, "POST", "/tokenize", "{\"content\":\"hello\"}", &r);
    assert_int_equal(r.status, 404);
    resp_fini(&r);
    json_t *c = post_json_ok(s, "/v1/chat/completions", body);
    assert_int_equal(jint(json_object_get(c, "usage"), "prompt_tokens"),
                     prompt_tokens("sys", "hello there"));
    json_decref(c);
    free(body);
    json_t *st = get_stats(s);
    assert_int_equal(jint(st, "tokenize_requests"), 0);
    assert_true(json_is_true(json_object_get(json_object_get(st, "config"), "no_tokenize")));
    json_decref(st);
    sim_stop(s);
}

static void test_refuse_then_listen(void **state)
{
    /* Learn a free port, then ask lmsim to refuse for a while on it. */
    int free_port = kit_net_free_port();
    assert_true(free_port > 0);
    char port[16];
    snprintf(port, sizeof port, "%d", free_port);

    sim *s = *state;
    const char *args[] = {"--port", port, "--refuse-ms", "1500", NULL};
    int64_t t0 = kit_now_ms();
    sim_spawn(s, args, false);
    s->port = (unsigned)free_port;
    resp r;
    http(s, "GET", "/v1/models", NULL, &r);
    /* Refused, unless this machine was too slow to get here in time. */
    if (kit_now_ms() - t0 < 1000)
        assert_int_equal(r.cc, CURLE_COULDNT_CONNECT);
    resp_fini(&r);

    int64_t deadline = kit_now_ms() + START_GUARD_MS;
    while (access(s->port_file, F_OK) != 0) {
        assert_true(kit_now_ms() < deadline);
        kit_sleep_ms(10);
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
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, kit_http_body_cb);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, REQ_GUARD_MS);
    for (int i = 0; i < 3; i++)
        assert_int_equal(curl_easy_perform(c), CURLE_OK);
    long conns = -1;
    curl_easy_getinfo(c, CURLINFO_NUM_CONNECTS, &conns);
    assert_int_equal(conns, 0); /* the last request reused the connection */
    curl_easy_cleanup(c);
    free(body);
    resp_fini(&r);
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
    curl_easy_setopt(k, CURLOPT_WRITEFUNCTION, kit_http_body_cb);
    curl_easy_setopt(k, CURLOPT_WRITEDATA, &kr);
    curl_easy_setopt(k, CURLOPT_TIMEOUT_MS, REQ_GUARD_MS);
    for (int i = 0; i < 3; i++)
        assert_int_equal(curl_easy_perform(k), CURLE_OK);
    long conns = -1;
    curl_easy_getinfo(k, CURLINFO_NUM_CONNECTS, &conns);
    assert_int_equal(conns, 0);
    curl_easy_cleanup(k);
    resp_fini(&kr);
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
    assert_int_equal(st2, 2);
}

/* ---- tools, structured output, logprobs, reasoning ---------------------- */

/* Two tools; their parameters are what the argument examples must fit. */
#define WEATHER_PARAMS                                                                   \
    "{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\",\"minLength\":"  \
    "2},"                                                                                \
    "\"days\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":7},\"unit\":{\"enum\":["   \
    "\"C\",\"F\"]},\"alerts\":{\"type\":\"boolean\"}},\"required\":[\"city\"],"          \
    "\"additionalProperties\":false}"
#define TOOLS                                                                            \
    "[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"description\":"    \
    "\"Current weather\",\"parameters\":" WEATHER_PARAMS "}},"                           \
    "{\"type\":\"function\",\"function\":{\"name\":\"search\",\"parameters\":{\"type\":" \
    "\"object\",\"properties\":{\"query\":{\"type\":\"string\"},\"limit\":{\"type\":"    \
    "\"number\",\"minimum\":0.5}}}}}]"

/* A small validator for the schema subset lmsim's generator covers. */
static bool schema_valid(json_t *v, json_t *s)
{
    json_t *k, *x;
    size_t i;
    const char *key;
    if (!json_is_object(s))
        return true;
    if ((k = json_object_get(s, "const")) != NULL)
        return json_equal(v, k);
    if ((k = json_object_get(s, "enum")) != NULL) {
        json_array_foreach(k, i, x) if (json_equal(v, x)) return true;
        return false;
    }
    if (json_object_get(s, "$ref") != NULL)
        return true; /* not followed */
    if ((k = json_object_get(s, "anyOf")) != NULL ||
        (k = json_object_get(s, "oneOf")) != NULL) {
        json_array_foreach(k, i, x) if (schema_valid(v, x)) return true;
        return false;
    }
    const char *type = json_string_value(json_object_get(s, "type"));
    if (type == NULL)
        return true;
    double num = json_number_value(v), b;
    if (strcmp(type, "object") == 0) {
        json_t *props = json_object_get(s, "properties");
        if (!json_is_object(v))
            return false;
        json_object_foreach(v, key, x)
        {
            json_t *ps = json_object_get(props, key);
            if (ps == NULL && json_is_false(json_object_get(s, "additionalProperties")))
                return false;
            if (ps != NULL && !schema_valid(x, ps))
                return false;
        }
        json_array_foreach(json_object_get(s, "required"), i, x)
        {
            if (json_object_get(v, json_string_value(x)) == NULL)
                return false;
        }
        return true;
    }
    if (strcmp(type, "array") == 0) {
        if (!json_is_array(v))
            return false;
        if ((x = json_object_get(s, "minItems")) &&
            json_array_size(v) < (size_t)json_integer_value(x))
            return false;
        if ((x = json_object_get(s, "maxItems")) &&
            json_array_size(v) > (size_t)json_integer_value(x))
            return false;
        json_t *items = json_object_get(s, "items"), *item;
        json_array_foreach(v, i, item) if (!schema_valid(item, items)) return false;
        return true;
    }
    if (strcmp(type, "string") == 0) {
        if (!json_is_string(v))
            return false;
        if ((x = json_object_get(s, "minLength")) &&
            json_string_length(v) < (size_t)json_integer_value(x))
            return false;
        if ((x = json_object_get(s, "maxLength")) &&
            json_string_length(v) > (size_t)json_integer_value(x))
            return false;
        return true;
    }
    if (strcmp(type, "integer") == 0 && !json_is_integer(v))
        return false;
    if (strcmp(type, "number") == 0 && !json_is_number(v))
        return false;
    if (strcmp(type, "integer") == 0 || strcmp(type, "number") == 0) {
        if ((x = json_object_get(s, "minimum")) && num < (b = json_number_value(x)))
            return false;
        if ((x = json_object_get(s, "maximum")) && num > (b = json_number_value(x)))
            return false;
        return true;
    }
    if (strcmp(type, "boolean") == 0)
        return json_is_boolean(v);
    if (strcmp(type, "null") == 0)
        return json_is_null(v);
    return true;
}

/* A body: one user message, the given JSON fields merged in. */
static char *body_with(const char *user, const char *extra)
{
    json_t *o = json_pack("{s:[{s:s,s:s}]}", "messages", "role", "user", "content", user);
    assert_non_null(o);
    if (extra) {
        json_t *x = json_loads(extra, 0, NULL);
        if (!x)
            fail_msg("bad extra: %s", extra);
        json_object_update(o, x);
        json_decref(x);
    }
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    assert_non_null(s);
    return s;
}

/* POSTs a chat body; returns the response (status checked by the caller). */
static void post(const sim *s, const char *body, resp *r)
{
    http(s, "POST", "/v1/chat/completions", body, r);
    assert_int_equal(r->cc, CURLE_OK);
}

/* POSTs a chat body that must succeed, not streamed; returns the JSON. */
static json_t *post_ok(const sim *s, const char *body)
{
    resp r;
    post(s, body, &r);
    if (r.status != 200)
        fail_msg("status %ld: %s", r.status, r.body ? r.body : "");
    assert_non_null(r.json);
    json_t *j = json_incref(r.json);
    resp_fini(&r);
    return j;
}

static json_t *choice0(json_t *o)
{
    return json_array_get(json_object_get(o, "choices"), 0);
}

static json_t *message0(json_t *o)
{
    return json_object_get(choice0(o), "message");
}

/* A stream put back together as a client does. */
typedef struct assembled {
    char content[65536];
    char reasoning[4096];
    json_t *calls;        /* [{id,type,name,arguments}] by index */
    json_t *logprobs;     /* every content chunk's logprobs.content entries */
    int content_chunks;   /* chunks with a non-empty content delta */
    int reasoning_chunks; /* chunks with a reasoning_content delta */
    int args_chunks;      /* chunks with an arguments fragment */
    int lp_chunks;        /* chunks carrying "logprobs" */
    bool reasoning_after_content;
    char finish[32];
    json_t *usage;
} assembled;

static void assembled_fini(assembled *a)
{
    json_decref(a->calls);
    json_decref(a->logprobs);
    json_decref(a->usage);
}

/* POSTs body (which must ask for a stream) and assembles the answer. */
static void post_stream(const sim *s, const char *body, assembled *a)
{
    resp r;
    sse ev;
    size_t i;
    json_t *e;
    memset(a, 0, sizeof *a);
    a->calls = json_array();
    a->logprobs = json_array();
    post(s, body, &r);
    if (r.status != 200)
        fail_msg("status %ld: %s", r.status, r.body ? r.body : "");
    sse_parse(r.body, r.len, &ev);
    assert_int_equal(ev.malformed, 0);
    assert_true(ev.done_last);
    json_array_foreach(ev.events, i, e)
    {
        json_t *ch = choice0(e);
        if (json_object_get(e, "usage"))
            a->usage = json_incref(json_object_get(e, "usage"));
        if (!ch)
            continue;
        json_t *d = json_object_get(ch, "delta");
        const char *c = json_string_value(json_object_get(d, "content"));
        const char *rc = json_string_value(json_object_get(d, "reasoning_content"));
        const char *fin = json_string_value(json_object_get(ch, "finish_reason"));
        json_t *lp = json_object_get(ch, "logprobs");
        if (c && *c) {
            assert_true(strlen(a->content) + strlen(c) < sizeof a->content);
            strcat(a->content, c);
            a->content_chunks++;
        }
        if (rc) {
            assert_true(strlen(a->reasoning) + strlen(rc) < sizeof a->reasoning);
            strcat(a->reasoning, rc);
            a->reasoning_chunks++;
            if (a->content_chunks > 0)
                a->reasoning_after_content = true;
        }
        if (lp) {
            a->lp_chunks++;
            assert_non_null(c); /* only content chunks carry logprobs */
            json_array_extend(a->logprobs, json_object_get(lp, "content"));
        }
        if (fin)
            snprintf(a->finish, sizeof a->finish, "%s", fin);
        size_t k;
        json_t *tc;
        json_array_foreach(json_object_get(d, "tool_calls"), k, tc)
        {
            size_t idx = (size_t)json_integer_value(json_object_get(tc, "index"));
            json_t *fn = json_object_get(tc, "function");
            const char *frag = json_string_value(json_object_get(fn, "arguments"));
            assert_non_null(frag);
            if (json_object_get(tc, "id")) {
                /* A call's first delta: id, type, name, empty arguments. */
                assert_int_equal(idx, json_array_size(a->calls));
                assert_string_equal(frag, "");
                json_array_append_new(
                    a->calls,
                    json_pack("{s:O,s:O,s:O,s:s}", "id", json_object_get(tc, "id"),
                              "type", json_object_get(tc, "type"), "name",
                              json_object_get(fn, "name"), "arguments", ""));
                continue;
            }
            json_t *call = json_array_get(a->calls, idx);
            assert_non_null(call);
            assert_null(json_object_get(fn, "name"));
            /* About one token per chunk: 4 bytes, whole characters. */
            assert_true(strlen(frag) >= 1 && strlen(frag) <= 7);
            char buf[8192];
            snprintf(buf, sizeof buf, "%s%s",
                     json_string_value(json_object_get(call, "arguments")), frag);
            json_object_set_new(call, "arguments", json_string(buf));
            a->args_chunks++;
        }
    }
    json_decref(ev.events);
    resp_fini(&r);
}

/* What lmsim renders for one user message and TOOLS (docs/simulator.md). */
static char *render_tools_prompt(const char *user)
{
    json_t *tools = json_loads(TOOLS, 0, NULL);
    assert_non_null(tools);
    char *t =
        json_dumps(tools, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17));
    json_decref(tools);
    size_t n = strlen(t) + strlen(user) + 256;
    char *p = malloc(n);
    assert_non_null(p);
    snprintf(
        p, n,
        "<|im_start|>system\n# Tools\n%s\n<|im_end|>\n<|im_start|>user\n%s<|im_end|>\n"
        "<|im_start|>assistant\n",
        t, user);
    free(t);
    return p;
}

/* Checks a non-streamed tool call against the stream of the same request. */
static void check_call(json_t *call, const char *name)
{
    const char *id = json_string_value(json_object_get(call, "id"));
    assert_non_null(id);
    assert_int_equal(strlen(id), 13);
    assert_memory_equal(id, "call_", 5);
    for (size_t i = 5; i < 13; i++)
        assert_non_null(strchr("0123456789abcdef", id[i]));
    assert_string_equal(json_string_value(json_object_get(call, "type")), "function");
    json_t *fn = json_object_get(call, "function");
    assert_string_equal(json_string_value(json_object_get(fn, "name")), name);
    const char *args = json_string_value(json_object_get(fn, "arguments"));
    assert_non_null(args);
    json_t *a = json_loads(args, 0, NULL);
    if (!json_is_object(a))
        fail_msg("arguments are not a JSON object: %s", args);
    json_t *tools = json_loads(TOOLS, 0, NULL);
    json_t *params = json_object_get(
        json_object_get(json_array_get(tools, strcmp(name, "search") == 0), "function"),
        "parameters");
    if (!schema_valid(a, params))
        fail_msg("arguments %s do not fit the schema", args);
    json_decref(tools);
    json_decref(a);
}

static void test_tool_call(void **state)
{
    sim *s = *state;
    const char *args[] = {"--time-scale", "100", NULL};
    sim_start(s, args);
    const char *user = "Please call get_weather for Paris.";
    char *body = body_with(user, "{\"tools\":" TOOLS ",\"seed\":5}");
    json_t *c = post_ok(s, body);
    json_t *msg = message0(c);
    assert_string_equal(json_string_value(json_object_get(choice0(c), "finish_reason")),
                        "tool_calls");
    assert_true(json_is_null(json_object_get(msg, "content")));
    json_t *calls = json_object_get(msg, "tool_calls");
    assert_int_equal(json_array_size(calls), 1);
    check_call(json_array_get(calls, 0), "get_weather");
    const char *call_args = json_string_value(json_object_get(
        json_object_get(json_array_get(calls, 0), "function"), "arguments"));
    /* The prompt counts the tools' rendering; the answer one step for the
     * call's head and one per 4 bytes of arguments. */
    char *prompt = render_tools_prompt(user);
    json_t *u = json_object_get(c, "usage");
    assert_int_equal(jint(u, "prompt_tokens"), (long long)((strlen(prompt) + 3) / 4));
    assert_int_equal(jint(u, "completion_tokens"),
                     1 + (long long)((strlen(call_args) + 3) / 4));
    free(prompt);

    /* The same request again: the same id and arguments. */
    json_t *c2 = post_ok(s, body);
    assert_true(json_equal(json_object_get(message0(c2), "tool_calls"), calls));
    json_decref(c2);
    free(body);

    /* Streamed: the head delta, then the arguments in ~4-byte fragments
     * that add up to the same call. */
    body = body_with(user, "{\"tools\":" TOOLS ",\"seed\":5,\"stream\":true,"
                           "\"stream_options\":{\"include_usage\":true}}");
    assembled a;
    post_stream(s, body, &a);
    free(body);
    assert_string_equal(a.finish, "tool_calls");
    assert_int_equal(a.content_chunks, 0);
    assert_int_equal(json_array_size(a.calls), 1);
    json_t *sc = json_array_get(a.calls, 0);
    json_t *nc = json_array_get(calls, 0);
    assert_string_equal(json_string_value(json_object_get(sc, "id")),
                        json_string_value(json_object_get(nc, "id")));
    assert_string_equal(json_string_value(json_object_get(sc, "name")), "get_weather");
    assert_string_equal(json_string_value(json_object_get(sc, "arguments")), call_args);
    assert_int_equal(a.args_chunks, (int)((strlen(call_args) + 3) / 4));
    assert_int_equal(jint(a.usage, "completion_tokens"), 1 + a.args_chunks);
    assembled_fini(&a);
    json_decref(c);

    /* Parallel: each named tool, in tools order; without, the first. */
    body = body_with("search the web, then get_weather",
                     "{\"tools\":" TOOLS ",\"parallel_tool_calls\":true}");
    c = post_ok(s, body);
    calls = json_object_get(message0(c), "tool_calls");
    assert_int_equal(json_array_size(calls), 2);
    check_call(json_array_get(calls, 0), "get_weather");
    check_call(json_array_get(calls, 1), "search");
    free(body);
    body =
        body_with("search the web, then get_weather",
                  "{\"tools\":" TOOLS ",\"parallel_tool_calls\":true,\"stream\":true}");
    post_stream(s, body, &a);
    free(body);
    assert_int_equal(json_array_size(a.calls), 2);
    for (size_t i = 0; i < 2; i++) {
        json_t *fn = json_object_get(json_array_get(calls, i), "function");
        assert_string_equal(
            json_string_value(json_object_get(json_array_get(a.calls, i), "arguments")),
            json_string_value(json_object_get(fn, "arguments")));
        assert_string_equal(
            json_string_value(json_object_get(json_array_get(a.calls, i), "id")),
            json_string_value(json_object_get(json_array_get(calls, i), "id")));
    }
    assembled_fini(&a);
    json_decref(c);
    body = body_with("search the web, then get_weather", "{\"tools\":" TOOLS "}");
    c = post_ok(s, body);
    calls = json_object_get(message0(c), "tool_calls");
    assert_int_equal(json_array_size(calls), 1);
    check_call(json_array_get(calls, 0), "get_weather");
    json_decref(c);
    free(body);

    /* No tool named, or tool_choice none: text. A named tool_choice:
     * that tool whatever the text. */
    body = body_with("What is the weather?", "{\"tools\":" TOOLS "}");
    c = post_ok(s, body);
    assert_null(json_object_get(message0(c), "tool_calls"));
    assert_string_equal(json_string_value(json_object_get(choice0(c), "finish_reason")),
                        "stop");
    assert_int_equal(strlen(json_string_value(json_object_get(message0(c), "content"))),
                     32 * 4);
    json_decref(c);
    free(body);
    body = body_with("get_weather", "{\"tools\":" TOOLS ",\"tool_choice\":\"none\"}");
    c = post_ok(s, body);
    assert_null(json_object_get(message0(c), "tool_calls"));
    json_decref(c);
    free(body);
    body = body_with("get_weather", "{\"tools\":" TOOLS ",\"tool_choice\":{\"type\":"
                                    "\"function\",\"function\":{\"name\":\"search\"}}}");
    c = post_ok(s, body);
    calls = json_object_get(message0(c), "tool_calls");
    assert_int_equal(json_array_size(calls), 1);
    check_call(json_array_get(calls, 0), "search");
    json_decref(c);
    free(body);
    sim_stop(s);
}

static void test_tool_result_and_cache(void **state)
{
    sim *s = *state;
    const char *args[] = {"--time-scale", "100", "--slots", "1", NULL};
    sim_start(s, args);
    const char *user = "Use get_weather for Oslo";
    char *body = body_with(user, "{\"tools\":" TOOLS "}");
    json_t *c1 = post_ok(s, body);
    free(body);
    json_t *call = json_array_get(json_object_get(message0(c1), "tool_calls"), 0);
    assert_non_null(call);
    const char *call_args = json_string_value(
        json_object_get(json_object_get(call, "function"), "arguments"));

    /* Turn two sends the call back with the tool's answer. */
    const char *result =
        "{\"temperature\": 21, \"sky\": \"clear\", \"wind\": \"5 km/h\"}";
    json_t *o = json_pack(
        "{s:[{s:s,s:s},{s:s,s:n,s:[O]},{s:s,s:O,s:s,s:s}],s:o,s:b,s:{s:b}}", "messages",
        "role", "user", "content", user, "role", "assistant", "content", "tool_calls",
        call, "role", "tool", "tool_call_id", json_object_get(call, "id"), "name",
        "get_weather", "content", result, "tools", json_loads(TOOLS, 0, NULL), "stream",
        0, "stream_options", "include_usage", 1);
    assert_non_null(o);
    char *body2 = json_dumps(o, JSON_COMPACT);
    json_t *c2 = post_ok(s, body2);
    const char *content = json_string_value(json_object_get(message0(c2), "content"));
    char want[128];
    snprintf(want, sizeof want, "Tool result: %.40s ", result);
    assert_true(strncmp(content, want, strlen(want)) == 0);
    assert_string_equal(json_string_value(json_object_get(choice0(c2), "finish_reason")),
                        "stop");
    assert_null(json_object_get(message0(c2), "tool_calls"));
    assert_int_equal(jint(json_object_get(c2, "usage"), "completion_tokens"), 32);
    /* The slot kept the call as the prompt shows it sent back: the cached
     * prefix runs through the whole call. */
    char *prompt1 = render_tools_prompt(user);
    json_t *k = json_pack("{s:s,s:s}", "name", "get_weather", "arguments", call_args);
    char *kd =
        json_dumps(k, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17));
    size_t common =
        strlen(prompt1) + strlen("<tool_call>") + strlen(kd) + strlen("</tool_call>");
    assert_int_equal(timing(c2, "cache_n"), (long long)(common / 4));
    free(kd);
    json_decref(k);
    free(prompt1);

    /* Streamed, the same text. */
    json_object_set_new(o, "stream", json_true());
    free(body2);
    body2 = json_dumps(o, JSON_COMPACT);
    assembled a;
    post_stream(s, body2, &a);
    assert_string_equal(a.content, content);
    assert_string_equal(a.finish, "stop");
    assert_int_equal(jint(a.usage, "completion_tokens"), 32);
    assembled_fini(&a);
    free(body2);
    json_decref(o);
    json_decref(c2);
    json_decref(c1);
    sim_stop(s);
}

static void test_malformed_tool(void **state)
{
    sim *s = *state;
    const char *args[] = {"--time-scale", "100", NULL};
    sim_start(s, args);
    static const struct {
        const char *extra, *param, *message;
    } bad[] = {
        {"{\"stream\":true,\"tools\":[{\"type\":\"function\",\"function\":{\"name\":"
         "\"a\"}},"
         "{\"type\":\"function\",\"function\":{\"parameters\":{}}}]}",
         "tools[1].function.name", "tools[1].function.name: missing or not a string"},
        {"{\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"a\",\"parameters\":"
         "\"x\"}}]}",
         "tools[0].function.parameters",
         "tools[0].function.parameters: must be an object (a JSON schema)"},
        {"{\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"x\"}"
         "}}",
         "response_format.json_schema.schema",
         "response_format.json_schema.schema: missing or not an object"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *body = body_with("get_weather", bad[i].extra);
        resp r;
        post(s, body, &r);
        free(body);
        assert_int_equal(r.status, 400);
        assert_non_null(r.json);
        json_t *e = json_object_get(r.json, "error");
        assert_int_equal(jint(e, "code"), 400);
        assert_string_equal(json_string_value(json_object_get(e, "type")),
                            "invalid_request_error");
        assert_string_equal(json_string_value(json_object_get(e, "param")), bad[i].param);
        assert_string_equal(json_string_value(json_object_get(e, "message")),
                            bad[i].message);
        resp_fini(&r);
    }
    /* Nothing reached the engine. */
    assert_int_equal(stat_int(s, "prompt_tokens"), 0);
    sim_stop(s);
}

#define PERSON_SCHEMA                                                                    \
    "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},\"age\":{"      \
    "\"type\":\"integer\",\"minimum\":18},\"score\":{\"type\":\"number\"},\"tags\":{"    \
    "\"type\":\"array\",\"items\":{\"type\":\"string\"},\"minItems\":2,\"maxItems\":3}," \
    "\"role\":{\"enum\":[\"admin\",\"user\"]},\"address\":{\"type\":\"object\","         \
    "\"properties\":{\"street\":{\"type\":\"string\"},\"zip\":{\"anyOf\":[{\"type\":"    \
    "\"string\",\"minLength\":5},{\"type\":\"null\"}]}},\"required\":[\"street\"]},"     \
    "\"active\":{\"type\":\"boolean\"},\"nothing\":{\"type\":\"null\"}},\"required\":["  \
    "\"name\",\"age\"],\"additionalProperties\":false}"

static void test_structured_output(void **state)
{
    sim *s = *state;
    const char *args[] = {"--time-scale", "100", NULL};
    sim_start(s, args);

    /* json_object: {"answer": the usual words}. */
    char *body =
        body_with("Answer in JSON.", "{\"response_format\":{\"type\":\"json_object\"}}");
    json_t *c = post_ok(s, body);
    free(body);
    const char *content = json_string_value(json_object_get(message0(c), "content"));
    json_t *o = json_loads(content, 0, NULL);
    assert_true(json_is_object(o));
    assert_int_equal(json_object_size(o), 1);
    assert_int_equal(json_string_length(json_object_get(o, "answer")), 32 * 4 - 1);
    assert_int_equal(jint(json_object_get(c, "usage"), "completion_tokens"),
                     (long long)((strlen(content) + 3) / 4));
    json_decref(o);
    body = body_with("Answer in JSON.",
                     "{\"response_format\":{\"type\":\"json_object\"},\"stream\":true}");
    assembled a;
    post_stream(s, body, &a);
    free(body);
    assert_string_equal(a.content, content);
    assert_string_equal(a.finish, "stop");
    assembled_fini(&a);
    json_decref(c);

    /* json_schema: an instance of the schema. */
    body = body_with("Make a person.",
                     "{\"seed\":9,\"response_format\":{\"type\":\"json_schema\","
                     "\"json_schema\":{\"name\":\"person\",\"strict\":true,"
                     "\"schema\":" PERSON_SCHEMA "}}}");
    c = post_ok(s, body);
    free(body);
    content = json_string_value(json_object_get(message0(c), "content"));
    o = json_loads(content, 0, NULL);
    json_t *schema = json_loads(PERSON_SCHEMA, 0, NULL);
    assert_non_null(schema);
    if (!json_is_object(o) || !schema_valid(o, schema))
        fail_msg("%s does not fit the schema", content);
    /* Every property, in order. */
    assert_int_equal(json_object_size(o), 8);
    assert_true(strncmp(content, "{\"name\":", 8) == 0);
    assert_int_equal(jint(o, "age"), 18);
    assert_int_equal(jint(json_object_get(c, "usage"), "completion_tokens"),
                     (long long)((strlen(content) + 3) / 4));
    body = body_with(
        "Make a person.",
        "{\"seed\":9,\"stream\":true,\"response_format\":{\"type\":\"json_schema\","
        "\"json_schema\":{\"name\":\"person\",\"schema\":" PERSON_SCHEMA "}}}");
    post_stream(s, body, &a);
    free(body);
    assert_string_equal(a.content, content);
    assert_int_equal(a.content_chunks, (int)((strlen(content) + 3) / 4));
    assembled_fini(&a);
    json_decref(schema);
    json_decref(o);

    /* Cut by max_tokens: the JSON stops where the tokens do, "length". */
    body =
        body_with("Make a person.", "{\"seed\":9,\"max_tokens\":3,\"response_format\":{"
                                    "\"type\":\"json_schema\",\"json_schema\":{\"name\":"
                                    "\"person\",\"schema\":" PERSON_SCHEMA "}}}");
    json_t *cut = post_ok(s, body);
    free(body);
    assert_string_equal(json_string_value(json_object_get(choice0(cut), "finish_reason")),
                        "length");
    assert_int_equal(strlen(json_string_value(json_object_get(message0(cut), "content"))),
                     12);
    assert_true(strncmp(json_string_value(json_object_get(message0(cut), "content")),
                        content, 12) == 0);
    json_decref(cut);
    json_decref(c);
    sim_stop(s);
}

static void test_logprobs(void **state)
{
    sim *s = *state;
    const char *args[] = {"--time-scale", "100", NULL};
    sim_start(s, args);
    /* Not asked: none, streamed or not. */
    char *body = body_with("q", "{\"stream\":true,\"max_tokens\":4}");
    assembled a;
    post_stream(s, body, &a);
    free(body);
    assert_int_equal(a.lp_chunks, 0);
    assembled_fini(&a);
    body = body_with("q", "{\"max_tokens\":4,\"logprobs\":false,\"top_logprobs\":2}");
    json_t *c = post_ok(s, body);
    free(body);
    assert_true(json_is_null(json_object_get(choice0(c), "logprobs")));
    json_decref(c);

    /* Asked: every content chunk carries its token's entry. */
    body = body_with("q", "{\"stream\":true,\"max_tokens\":5,\"logprobs\":true,"
                          "\"top_logprobs\":3}");
    post_stream(s, body, &a);
    free(body);
    assert_int_equal(a.lp_chunks, 5);
    assert_int_equal(a.content_chunks, 5);
    assert_int_equal(json_array_size(a.logprobs), 5);
    char joined[64] = "";
    size_t i;
    json_t *e;
    json_array_foreach(a.logprobs, i, e)
    {
        const char *tok = json_string_value(json_object_get(e, "token"));
        assert_non_null(tok);
        strcat(joined, tok);
        double lp = json_number_value(json_object_get(e, "logprob"));
        assert_true(lp < 0 && lp >= -2.0);
        json_t *bytes = json_object_get(e, "bytes");
        assert_int_equal(json_array_size(bytes), strlen(tok));
        for (size_t b = 0; b < strlen(tok); b++)
            assert_int_equal(json_integer_value(json_array_get(bytes, b)),
                             (unsigned char)tok[b]);
        json_t *top = json_object_get(e, "top_logprobs");
        assert_int_equal(json_array_size(top), 3);
        assert_string_equal(
            json_string_value(json_object_get(json_array_get(top, 0), "token")), tok);
        for (size_t k = 1; k < 3; k++)
            assert_true(
                json_number_value(json_object_get(json_array_get(top, k), "logprob")) <
                json_number_value(
                    json_object_get(json_array_get(top, k - 1), "logprob")));
    }
    assert_string_equal(joined, a.content);

    /* Not streamed: the whole list, the same values. */
    body = body_with("q", "{\"max_tokens\":5,\"logprobs\":true,\"top_logprobs\":3}");
    c = post_ok(s, body);
    free(body);
    json_t *list = json_object_get(json_object_get(choice0(c), "logprobs"), "content");
    assert_true(json_equal(list, a.logprobs));
    assert_string_equal(json_string_value(json_object_get(message0(c), "content")),
                        a.content);
    json_decref(c);
    assembled_fini(&a);

    /* Without top_logprobs the list is empty. */
    body = body_with("q", "{\"max_tokens\":2,\"logprobs\":true}");
    c = post_ok(s, body);
    free(body);
    list = json_object_get(json_object_get(choice0(c), "logprobs"), "content");
    assert_int_equal(json_array_size(list), 2);
    assert_int_equal(
        json_array_size(json_object_get(json_array_get(list, 0), "top_logprobs")), 0);
    json_decref(c);
    sim_stop(s);
}

/* The answers of one lmsim to a fixed set of requests, to compare runs. */
typedef struct answers {
    char text[4096];     /* plain, streamed */
    char text_ns[4096];  /* plain, not streamed */
    char reasoning[512]; /* plain, streamed */
    char reasoning_ns[512];
    char json[4096];      /* json_schema, not streamed */
    char call[1024];      /* tool call arguments and id, not streamed */
    long long completion; /* plain, usage */
    int reasoning_chunks;
    bool reasoning_first;
    long long config_reasoning; /* /sim/stats config.reasoning_tokens */
} answers;

static void collect(const sim *s, answers *out)
{
    memset(out, 0, sizeof *out);
    json_t *st = get_stats(s);
    out->config_reasoning = jint(json_object_get(st, "config"), "reasoning_tokens");
    json_decref(st);
    char *body =
        body_with("Tell me.", "{\"seed\":4,\"stream\":true,\"stream_options\":{"
                              "\"include_usage\":true},\"top_k\":40,\"min_p\":0.1}");
    assembled a;
    post_stream(s, body, &a);
    free(body);
    assert_true(strlen(a.content) < sizeof out->text &&
                strlen(a.reasoning) < sizeof out->reasoning);
    snprintf(out->text, sizeof out->text, "%.4095s", a.content);
    snprintf(out->reasoning, sizeof out->reasoning, "%.511s", a.reasoning);
    out->completion = jint(a.usage, "completion_tokens");
    out->reasoning_chunks = a.reasoning_chunks;
    out->reasoning_first = !a.reasoning_after_content;
    assembled_fini(&a);
    body = body_with("Tell me.", "{\"seed\":4,\"repeat_penalty\":1.1}");
    json_t *c = post_ok(s, body);
    free(body);
    snprintf(out->text_ns, sizeof out->text_ns, "%s",
             json_string_value(json_object_get(message0(c), "content")));
    const char *r = json_string_value(json_object_get(message0(c), "reasoning_content"));
    snprintf(out->reasoning_ns, sizeof out->reasoning_ns, "%s", r ? r : "");
    json_decref(c);
    body = body_with("Make a person.",
                     "{\"response_format\":{\"type\":\"json_schema\","
                     "\"json_schema\":{\"name\":\"p\",\"schema\":" PERSON_SCHEMA "}}}");
    c = post_ok(s, body);
    free(body);
    snprintf(out->json, sizeof out->json, "%s",
             json_string_value(json_object_get(message0(c), "content")));
    json_decref(c);
    body = body_with("get_weather now", "{\"tools\":" TOOLS "}");
    c = post_ok(s, body);
    free(body);
    json_t *call = json_array_get(json_object_get(message0(c), "tool_calls"), 0);
    snprintf(out->call, sizeof out->call, "%s %s",
             json_string_value(json_object_get(call, "id")),
             json_string_value(
                 json_object_get(json_object_get(call, "function"), "arguments")));
    json_decref(c);
}

static void test_reasoning_and_modes(void **state)
{
    sim *s = *state;
    answers plain, reasoned, instant;
    const char *a0[] = {"--time-scale", "100", NULL};
    sim_start(s, a0);
    collect(s, &plain);
    sim_stop(s);
    assert_int_equal(plain.reasoning_chunks, 0);
    assert_string_equal(plain.reasoning_ns, "");
    assert_int_equal(plain.completion, 32);
    /* Streamed content is the non-streamed content, for the same seed. */
    assert_string_equal(plain.text, plain.text_ns);

    /* --reasoning-tokens: N reasoning_content deltas first, counted in usage;
     * the content is the same as without them. */
    const char *a1[] = {"--time-scale", "100", "--reasoning-tokens", "6", NULL};
    sim_start(s, a1);
    collect(s, &reasoned);
    sim_stop(s);
    assert_int_equal(reasoned.reasoning_chunks, 6);
    assert_true(reasoned.reasoning_first);
    assert_int_equal(reasoned.config_reasoning, 6);
    assert_int_equal(strlen(reasoned.reasoning), 6 * 4);
    assert_string_equal(reasoned.reasoning, reasoned.reasoning_ns);
    assert_int_equal(reasoned.completion, 6 + 32);
    assert_string_equal(reasoned.text, plain.text);
    assert_string_equal(reasoned.text_ns, plain.text);
    assert_string_equal(reasoned.json, plain.json);
    assert_string_equal(reasoned.call, plain.call);

    /* --instant answers exactly what the engine does. */
    const char *a2[] = {"--instant", "--reasoning-tokens", "6", NULL};
    sim_start(s, a2);
    collect(s, &instant);
    sim_stop(s);
    assert_string_equal(instant.text, reasoned.text);
    assert_string_equal(instant.text_ns, reasoned.text_ns);
    assert_string_equal(instant.reasoning, reasoned.reasoning);
    assert_string_equal(instant.reasoning_ns, reasoned.reasoning_ns);
    assert_string_equal(instant.json, reasoned.json);
    assert_string_equal(instant.call, reasoned.call);
    assert_int_equal(instant.completion, reasoned.completion);
    assert_int_equal(instant.reasoning_chunks, 6);
}

/* Every test gets a sim slot; teardown kills a child a failed assertion
 * left running. */
static int sim_setup(void **state)
{
    sim *s = calloc(1, sizeof *s);
    if (!s)
        return -1;
    *state = s;
    return 0;
}

static int sim_teardown(void **state)
{
    sim *s = *state;
    kit_proc_stop(&s->proc, SIGKILL, STOP_GUARD_MS);
    sim_cleanup_files(s);
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
        cmocka_unit_test_setup_teardown(test_host_cache, sim_setup, sim_teardown),
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
        cmocka_unit_test_setup_teardown(test_tool_call, sim_setup, sim_teardown),
        cmocka_unit_test_setup_teardown(test_tool_result_and_cache, sim_setup,
                                        sim_teardown),
        cmocka_unit_test_setup_teardown(test_malformed_tool, sim_setup, sim_teardown),
        cmocka_unit_test_setup_teardown(test_token_counts, sim_setup, sim_teardown),
        cmocka_unit_test_setup_teardown(test_no_tokenize, sim_setup, sim_teardown),
        cmocka_unit_test_setup_teardown(test_structured_output, sim_setup, sim_teardown),
        cmocka_unit_test_setup_teardown(test_logprobs, sim_setup, sim_teardown),
        cmocka_unit_test_setup_teardown(test_reasoning_and_modes, sim_setup,
                                        sim_teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
