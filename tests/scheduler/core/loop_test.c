/*
 * loop_test - the scheduler core in-process: the real loop, admission,
 * policy, budget and backend objects, with a fake HTTP client and a clock
 * the test moves. Wake times, retries, deadlines, outages, drain and
 * cancellation, and "every request gets exactly one answer", in
 * milliseconds of real time.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "fake_http.h"
#include "lmsched/wire.h"
#include "scheduler/core/core.h"
#include "scheduler/util/clock.h"
#include "scheduler/util/log.h"

/* ---- a clock the test moves -------------------------------------------- */

static int64_t fake_now = 1000000000;

static int64_t fake_clock(void *arg)
{
    (void)arg;
    return fake_now;
}

static void advance_ms(int64_t ms)
{
    fake_now += ms * 1000;
}

/* ---- a sink that records ------------------------------------------------ */

typedef struct answer {
    int calls;
    int code; /* LMSCHED_OK for done */
    char content[128];
    char msg[512];
    uint32_t retries;
    int64_t prompt, cached;
} answer;

static void rec_done(void *arg, job *j, const chat_result *r)
{
    answer *a = arg;
    (void)j;
    a->calls++;
    a->code = LMSCHED_OK;
    snprintf(a->content, sizeof(a->content), "%s", r->content);
    a->retries = r->retries;
    a->prompt = r->usage.prompt_tokens;
    a->cached = r->usage.cached_tokens;
}

static void rec_fail(void *arg, job *j, int code, const char *msg, const char *field)
{
    answer *a = arg;
    (void)j;
    (void)field;
    a->calls++;
    a->code = code;
    snprintf(a->msg, sizeof(a->msg), "%s", msg);
}

static const sink_ops rec_ops = {.done = rec_done, .fail = rec_fail};

/* ---- the core under test ------------------------------------------------ */

typedef struct env {
    sched *s;
    fake_http *f;
    sched_config cfg;
} env;

static const char lmstudio_models[] =
    "{\"models\":[{\"type\":\"llm\",\"key\":\"m1\",\"size_bytes\":1000000,"
    "\"loaded_instances\":[{\"id\":\"m1\",\"config\":{\"context_length\":8192,"
    "\"parallel\":2}}]}]}";

/* llama.cpp's /props, for a backend of that kind (env_props set). */
static const char llama_props[] =
    "{\"total_slots\":2,\"default_generation_settings\":{\"n_ctx\":8192},"
    "\"model_alias\":\"m1\"}";
static const char llama_props4[] =
    "{\"total_slots\":4,\"default_generation_settings\":{\"n_ctx\":8192},"
    "\"model_alias\":\"m1\"}";
/* When set, GET /props answers it (a tweak sets --backend-kind llamacpp),
 * and so do the two endpoints of an exact count: the template, and
 * EXACT_TOKENS tokens for any prompt. */
static const char *env_props;
#define EXACT_TOKENS 300

static void env_start_with(env *e, void (*tweak)(sched_config *), const char *models,
                          int slots)
{
    memset(e, 0, sizeof(*e));
    clock_set_source(fake_clock, NULL);
    log_set_level(LOG_ERROR);
    config_defaults(&e->cfg, "ipc:///tmp/loop_test.sock");
    snprintf(e->cfg.backend, sizeof(e->cfg.backend), "http://fake");
    e->cfg.total_ram = 64ull << 30;
    e->cfg.backend_wait_ms = 1000;
    e->cfg.preempt = 1; /* off by default; on here so it is exercised */
    if (tweak != NULL)
        tweak(&e->cfg);
    http_client *hc = NULL;
    e->f = fake_http_new(&hc);
    fake_http_route(e->f, "/api/v1/models", 200, models);
    if (env_props != NULL) {
        fake_http_route(e->f, "/props", 200, env_props);
        fake_http_route(e->f, "/apply-template", 200,
                        "{\"prompt\":\"<|im_start|>user\\nq<|im_end|>\\n\"}");
        char tokens[EXACT_TOKENS * 4 + 32];
        size_t n = (size_t)snprintf(tokens, sizeof(tokens), "{\"tokens\":[1");
        for (int i = 1; i < EXACT_TOKENS; i++)
            n += (size_t)snprintf(tokens + n, sizeof(tokens) - n, ",%d", 100 + i);
        snprintf(tokens + n, sizeof(tokens) - n, "]}");
        fake_http_route(e->f, "/tokenize", 200, tokens);
    }
    assert_int_equal(sched_alloc_http(&e->s, &e->cfg, hc), 0);
    assert_int_equal(sched_start(e->s, 100), 0);
    for (unsigned i = 0; i < e->s->n_backends; i++) {
        assert_true(e->s->backends[i].healthy);
        assert_int_equal(e->s->backends[i].slots, slots);
    }
}

static void env_start(env *e, void (*tweak)(sched_config *))
{
    env_start_with(e, tweak, lmstudio_models, 2);
}

static void env_stop(env *e)
{
    sched_free(e->s);
    clock_set_source(NULL, NULL);
}

static void submit(env *e, answer *a, uint64_t owner, const char *system, const char *user,
                   int priority, uint32_t deadline_ms)
{
    chat_req *r = NULL;
    assert_int_equal(chat_req_alloc(&r), LMSCHED_OK);
    free(r->system);
    r->system = strdup(system);
    r->messages = calloc(1, sizeof(*r->messages));
    r->messages[0].role = strdup("user");
    r->messages[0].content = strdup(user);
    r->n_messages = 1;
    r->max_tokens = 8;
    r->priority = (uint8_t)priority;
    r->deadline_ms = deadline_ms;
    sink k = {.ops = &rec_ops, .arg = a, .owner = owner, .id = 1};
    sched_submit(e->s, r, &k);
}

/* ---- tests ---------------------------------------------------------------- */

/* One request: dispatched on the next turn with the streamed body, its
 * answer goes to the sink once, and the counters say so. */
static void test_answer(void **state)
{
    (void)state;
    env e;
    env_start(&e, NULL);
    answer a = {0};
    submit(&e, &a, 1, "You are terse.", "hello", 5, 0);
    assert_int_equal(a.calls, 0);
    sched_turn(e.s);
    assert_int_equal(fake_http_pending(e.f), 1);
    const char *body = fake_http_body(e.f, 0);
    assert_non_null(strstr(body, "\"stream\":true"));
    assert_non_null(strstr(body, "You are terse."));
    assert_non_null(strstr(body, "\"model\":\"m1\""));
    assert_null(strstr(body, "id_slot")); /* LM Studio: no pinning */
    advance_ms(5);
    fake_http_finish(e.f, 0, 200, fake_http_completion("hi there", 20, 12), 0);
    sched_turn(e.s);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.code, LMSCHED_OK);
    assert_string_equal(a.content, "hi there");
    assert_int_equal(a.prompt, 20);
    assert_int_equal(a.cached, 12);
    assert_int_equal(e.s->st.completed, 1);
    assert_int_equal(e.s->inflight, 0);
    assert_int_equal(e.s->reserved_bytes, 0);
    env_stop(&e);
}

/* The reservation counts the prompt as the backend does: before any answer
 * the estimate plus the template's tokens; once the backend reported
 * usage.prompt_tokens (here a tokenizer 3x as dense as the estimate), the
 * next request of that shape is reserved for at least the backend's count,
 * and not for much more. */
static void test_reserve_tokens(void **state)
{
    (void)state;
    env e;
    env_start(&e, NULL);
    uint64_t kv = e.s->kv_bytes_per_token;
    answer a = {0}, b = {0};
    submit(&e, &a, 1, "You review code.", "Please review this change to the parser.", 5, 0);
    assert_non_null(e.s->jobs);
    uint32_t est = e.s->jobs->chain.tokens;
    /* two messages (system, user): more than the bare estimate */
    assert_true(e.s->jobs->reserve_tokens >= est + 2);
    assert_int_equal(e.s->jobs->reserve, kv * (e.s->jobs->reserve_tokens + 8));
    sched_turn(e.s);
    assert_int_equal(fake_http_pending(e.f), 1);
    fake_http_finish(e.f, 0, 200, fake_http_completion("ok", (int)(3 * est), 0), 0);
    sched_turn(e.s);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.code, LMSCHED_OK);

    submit(&e, &b, 1, "You review code.", "Please review this change to the lexer.", 5, 0);
    assert_non_null(e.s->jobs);
    const job *j = e.s->jobs;
    uint32_t server = 3 * j->chain.tokens; /* what this backend will count */
    assert_true(j->reserve_tokens >= server);
    assert_true(j->reserve_tokens <= server + server * 3 / 100 + 4); /* ratio, margin */
    assert_int_equal(j->reserve, kv * (j->reserve_tokens + 8));
    sched_turn(e.s);
    fake_http_finish(e.f, 0, 200, fake_http_completion("ok", (int)server, 0), 0);
    sched_turn(e.s);
    assert_int_equal(b.calls, 1);
    assert_int_equal(e.s->reserved_bytes, 0);
    env_stop(&e);
}

/* Two slots: a third request waits for one to free. */
static void test_slots_bound(void **state)
{
    (void)state;
    env e;
    env_start(&e, NULL);
    answer a[3] = {{0}};
    for (int i = 0; i < 3; i++)
        submit(&e, &a[i], 1, "sys", "q", 5, 0);
    sched_turn(e.s);
    assert_int_equal(fake_http_pending(e.f), 2);
    assert_int_equal(e.s->queued, 1);
    fake_http_finish(e.f, 0, 200, fake_http_completion("a", 5, 0), 0);
    sched_turn(e.s);
    assert_int_equal(fake_http_pending(e.f), 2);
    assert_int_equal(e.s->queued, 0);
    int done = a[0].calls + a[1].calls + a[2].calls;
    assert_int_equal(done, 1);
    env_stop(&e);
}

static void tweak_one(sched_config *c)
{
    c->max_concurrent = 1;
}

/* A queued request's deadline: the loop wakes for it, and it is answered
 * DEADLINE then, not before. */
static void test_deadline(void **state)
{
    (void)state;
    env e;
    env_start(&e, tweak_one);
    answer a = {0}, b = {0};
    submit(&e, &a, 1, "sys", "slow", 5, 0);
    submit(&e, &b, 1, "sys", "quick", 5, 150);
    int64_t wake = sched_turn(e.s);
    assert_int_equal(fake_http_pending(e.f), 1);
    assert_true(wake <= fake_now + 150 * 1000);
    advance_ms(100);
    sched_turn(e.s);
    assert_int_equal(b.calls, 0);
    advance_ms(51);
    sched_turn(e.s);
    assert_int_equal(b.calls, 1);
    assert_int_equal(b.code, LMSCHED_EDEADLINE);
    assert_non_null(strstr(b.msg, "deadline of 150 ms"));
    assert_int_equal(a.calls, 0);
    env_stop(&e);
}

/* A transient 503 is retried after a backoff the loop wakes for; the
 * answer says it was retried. */
static void test_retry(void **state)
{
    (void)state;
    env e;
    env_start(&e, NULL);
    answer a = {0};
    submit(&e, &a, 1, "sys", "q", 5, 0);
    sched_turn(e.s);
    fake_http_finish(e.f, 0, 503, "{\"error\":{\"message\":\"busy\"}}", 0);
    int64_t wake = sched_turn(e.s);
    assert_int_equal(a.calls, 0);
    assert_int_equal(fake_http_pending(e.f), 0);
    /* 200 ms backoff plus up to 25% jitter */
    assert_true(wake >= fake_now + 200000 && wake <= fake_now + 250000);
    advance_ms(100);
    sched_turn(e.s);
    assert_int_equal(fake_http_posts(e.f), 1);
    advance_ms(151);
    sched_turn(e.s);
    assert_int_equal(fake_http_posts(e.f), 2);
    fake_http_finish(e.f, 0, 200, fake_http_completion("ok", 5, 0), 0);
    sched_turn(e.s);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.code, LMSCHED_OK);
    assert_int_equal(a.retries, 1);
    assert_int_equal(e.s->st.retried, 1);
    env_stop(&e);
}

/* A permanent 400 is not retried: the backend's words reach the agent. */
static void test_no_retry_400(void **state)
{
    (void)state;
    env e;
    env_start(&e, NULL);
    answer a = {0};
    submit(&e, &a, 1, "sys", "q", 5, 0);
    sched_turn(e.s);
    fake_http_finish(e.f, 0, 400, "{\"error\":{\"message\":\"bad tool schema\"}}", 0);
    sched_turn(e.s);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.code, LMSCHED_EBACKEND_HTTP);
    assert_non_null(strstr(a.msg, "bad tool schema"));
    assert_int_equal(fake_http_posts(e.f), 1);
    env_stop(&e);
}

/* Connection refused: the backend is unhealthy, the request waits for it
 * (refusals do not use up retries) and fails after --backend-wait with
 * the reason; when the backend is back, service resumes. */
static void test_backend_down(void **state)
{
    (void)state;
    env e;
    env_start(&e, NULL);
    answer a = {0}, b = {0};
    fake_http_route(e.f, "/api/v1/models", 0, NULL); /* refused from now on */
    submit(&e, &a, 1, "sys", "q", 5, 0);
    sched_turn(e.s);
    fake_http_finish(e.f, 0, 0, NULL, 7 /* CURLE_COULDNT_CONNECT */);
    sched_turn(e.s);
    assert_false(e.s->backends[0].healthy);
    assert_int_equal(a.calls, 0);
    for (int i = 0; i < 10 && a.calls == 0; i++) {
        advance_ms(250);
        sched_turn(e.s);
    }
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.code, LMSCHED_EBACKEND_DOWN);
    assert_non_null(strstr(a.msg, "http://fake"));
    assert_int_equal(fake_http_posts(e.f), 1); /* never sent to a dead server */

    /* Back: the next probe finds it, the next request is served. */
    fake_http_route(e.f, "/api/v1/models", 200, lmstudio_models);
    submit(&e, &b, 1, "sys", "q2", 5, 0);
    for (int i = 0; i < 20 && fake_http_pending(e.f) == 0; i++) {
        advance_ms(100);
        sched_turn(e.s);
    }
    assert_true(e.s->backends[0].healthy);
    assert_int_equal(fake_http_pending(e.f), 1);
    fake_http_finish(e.f, 0, 200, fake_http_completion("back", 5, 0), 0);
    sched_turn(e.s);
    assert_int_equal(b.code, LMSCHED_OK);
    env_stop(&e);
}

/* Idle, the loop sleeps until the next probe (the default interval). */
static void test_idle_wake(void **state)
{
    (void)state;
    env e;
    env_start(&e, NULL);
    int64_t wake = sched_turn(e.s);
    assert_true(wake > fake_now);
    assert_true(wake <= fake_now + (int64_t)e.cfg.probe_interval_ms * 1000);
    advance_ms(e.cfg.probe_interval_ms);
    unsigned gets = fake_http_gets(e.f);
    sched_turn(e.s);
    assert_int_equal(fake_http_gets(e.f), gets + 1);
    env_stop(&e);
}

/* Drain: queued requests get SHUTDOWN at once, running ones may finish;
 * a second stop ends the wait; the loop stops when every answer is out. */
static void test_drain(void **state)
{
    (void)state;
    env e;
    env_start(&e, NULL);
    answer a[4] = {{0}};
    for (int i = 0; i < 4; i++)
        submit(&e, &a[i], 1, "sys", "q", 5, 0);
    sched_turn(e.s);
    assert_int_equal(fake_http_pending(e.f), 2);
    sched_request_stop(e.s);
    sched_turn(e.s);
    int shut = 0, ok = 0;
    for (int i = 0; i < 4; i++)
        shut += a[i].calls == 1 && a[i].code == LMSCHED_ESHUTDOWN;
    assert_int_equal(shut, 2);
    assert_false(e.s->stopped);
    fake_http_finish(e.f, 0, 200, fake_http_completion("done", 5, 0), 0);
    sched_turn(e.s);
    sched_request_stop(e.s); /* the second one */
    sched_turn(e.s);
    shut = ok = 0;
    for (int i = 0; i < 4; i++) {
        assert_int_equal(a[i].calls, 1);
        shut += a[i].code == LMSCHED_ESHUTDOWN;
        ok += a[i].code == LMSCHED_OK;
    }
    assert_int_equal(ok, 1);
    assert_int_equal(shut, 3);
    assert_true(e.s->stopped);
    assert_int_equal(fake_http_pending(e.f), 0); /* its transfer was closed */
    env_stop(&e);
}

/* An owner that goes away: its queued and running requests are canceled
 * (the running transfer closed), others are untouched. */
static void test_cancel_owner(void **state)
{
    (void)state;
    env e;
    env_start(&e, tweak_one);
    answer mine[2] = {{0}}, other = {0};
    submit(&e, &mine[0], 7, "sys", "q", 5, 0);
    submit(&e, &other, 8, "sys", "q", 5, 0);
    submit(&e, &mine[1], 7, "sys", "q", 5, 0);
    sched_turn(e.s);
    assert_int_equal(fake_http_pending(e.f), 1);
    assert_int_equal(sched_cancel_owner(e.s, 7, "agent disconnected"), 2);
    assert_int_equal(mine[0].code, LMSCHED_ECANCELED);
    assert_int_equal(mine[1].code, LMSCHED_ECANCELED);
    assert_int_equal(other.calls, 0);
    sched_turn(e.s);
    assert_int_equal(fake_http_pending(e.f), 1); /* the other one runs now */
    fake_http_finish(e.f, 0, 200, fake_http_completion("x", 5, 0), 0);
    sched_turn(e.s);
    assert_int_equal(other.code, LMSCHED_OK);
    env_stop(&e);
}

static void tweak_small_queue(sched_config *c)
{
    c->max_queue = 3;
}

/* Past the queue limit: BUSY at once, counted as rejected, not failed. */
static void test_queue_full(void **state)
{
    (void)state;
    env e;
    env_start(&e, tweak_small_queue);
    answer a[5] = {{0}};
    for (int i = 0; i < 5; i++)
        submit(&e, &a[i], 1, "sys", "q", 5, 0);
    assert_int_equal(a[3].code, LMSCHED_EBUSY);
    assert_int_equal(a[4].code, LMSCHED_EBUSY);
    assert_int_equal(a[3].calls + a[4].calls, 2);
    assert_int_equal(e.s->st.rejected_busy, 2);
    assert_int_equal(e.s->st.failed, 0);
    env_stop(&e);
}

/* Many requests with every kind of ending: each gets exactly one answer. */
static void test_exactly_once(void **state)
{
    (void)state;
    env e;
    env_start(&e, NULL);
    enum { N = 300 };
    static answer a[N];
    memset(a, 0, sizeof(a));
    srand(7);
    int sent = 0;
    for (int round = 0; round < 2000 && (sent < N || e.s->jobs != NULL); round++) {
        for (int k = 0; k < 3 && sent < N; k++, sent++)
            submit(&e, &a[sent], (uint64_t)(1 + rand() % 5), rand() % 2 ? "A" : "B", "q",
                   rand() % 10, rand() % 4 == 0 ? 50 + (uint32_t)(rand() % 200) : 0);
        sched_turn(e.s);
        size_t p = fake_http_pending(e.f);
        if (p > 0) {
            int what = rand() % 5;
            if (what == 0)
                fake_http_finish(e.f, 0, 503, "{\"error\":\"x\"}", 0);
            else if (what == 1)
                fake_http_finish(e.f, 0, 400, "{\"error\":\"bad\"}", 0);
            else
                fake_http_finish(e.f, 0, 200, fake_http_completion("ok", 5, 1), 0);
        }
        if (rand() % 50 == 0)
            sched_cancel_owner(e.s, (uint64_t)(1 + rand() % 5), "gone");
        advance_ms(rand() % 40);
    }
    for (int i = 0; i < N; i++)
        if (a[i].calls != 1)
            fail_msg("request %d answered %d times", i, a[i].calls);
    assert_null(e.s->jobs);
    assert_int_equal(e.s->queued, 0);
    assert_int_equal(e.s->inflight, 0);
    assert_int_equal(e.s->reserved_bytes, 0);
    assert_int_equal(e.s->st.received,
                     e.s->st.completed + e.s->st.failed + e.s->st.rejected_busy);
    env_stop(&e);
}


/* ---- the memory budget at every dispatch ---------------------------------- */

/* Four slots per backend, 8192-token context: a request reserves at most
 * 8192 x 128 KiB = 1 GiB (the default KV bytes per token). */
static const char lmstudio_models4[] =
    "{\"models\":[{\"type\":\"llm\",\"key\":\"m1\",\"size_bytes\":1000000,"
    "\"loaded_instances\":[{\"id\":\"m1\",\"config\":{\"context_length\":8192,"
    "\"parallel\":4}}]}]}";

/* Each backend's RAM (--backends-file's total-ram), 0 ends the list; the
 * budget is 0.6 x RAM - the 1 MB model. */
static uint64_t budget_ram[SCHED_MAX_BACKENDS];
static const char *budget_policy = "prefix";
/* Requests' priorities are drawn from 0-9 (preemption), or all
 * budget_priority. */
static bool budget_priorities;
static uint8_t budget_priority = 5;

static void tweak_budget(sched_config *c)
{
    unsigned n = 0;
    while (n < SCHED_MAX_BACKENDS && budget_ram[n] != 0)
        n++;
    c->total_ram = budget_ram[0];
    c->backend_errors = 0; /* 503s are retried, never take a backend out */
    snprintf(c->policy, sizeof(c->policy), "%s", budget_policy);
    if (n < 2)
        return;
    c->n_backends = n;
    snprintf(c->backends_file, sizeof(c->backends_file), "loop_test.backends");
    c->file_backends.n = n;
    for (unsigned i = 0; i < n; i++) {
        if (i > 0)
            snprintf(c->backend_more[i - 1], sizeof(c->backend_more[i - 1]), "http://fake%u",
                     i + 1);
        snprintf(c->file_backends.v[i].url, sizeof(c->file_backends.v[i].url), "%s",
                 i == 0 ? c->backend : c->backend_more[i - 1]);
        c->file_backends.v[i].total_ram = budget_ram[i];
    }
}

/* What each request got: its one answer, its reservation, where it ran. */
typedef struct bud_answer {
    int calls;
    int code;
    uint64_t reserve;
    int backend; /* -1: never dispatched */
} bud_answer;

static sched *bud_s;
/* budget_run's tweak (test_budget_exact: of a llama.cpp backend) */
static void (*budget_tweak)(sched_config *) = tweak_budget;

static void bud_record(bud_answer *a, const job *j, int code)
{
    a->calls++;
    a->code = code;
    a->reserve = j->reserve;
    a->backend = j->be != NULL ? (int)sched_be_index(bud_s, j->be) : -1;
}

static void bud_done(void *arg, job *j, const chat_result *r)
{
    (void)r;
    bud_record(arg, j, LMSCHED_OK);
}

static void bud_fail(void *arg, job *j, int code, const char *msg, const char *field)
{
    (void)msg;
    (void)field;
    bud_record(arg, j, code);
}

static const sink_ops bud_ops = {.done = bud_done, .fail = bud_fail};

/* The invariant, checked from the fake server each time the core starts a
 * transfer (a dispatch or a retry), i.e. right after it reserved: the
 * reservations of the requests that hold one, summed per backend, equal
 * the core's bookkeeping and fit that backend's budget; so do the totals. */
typedef struct bud_check {
    sched *s;
    unsigned checks;
    uint64_t peak[SCHED_MAX_BACKENDS]; /* the largest sum seen */
} bud_check;

static void bud_check_now(void *arg)
{
    bud_check *c = arg;
    const sched *s = c->s;
    uint64_t sum[SCHED_MAX_BACKENDS] = {0}, total = 0, budgets = 0;
    for (const job *j = s->jobs; j != NULL; j = j->next) {
        if (!j->reserved)
            continue;
        assert_non_null(j->be);
        sum[sched_be_index(s, j->be)] += j->reserve;
        total += j->reserve;
    }
    for (unsigned i = 0; i < s->n_backends; i++) {
        if (sum[i] > s->be[i].bout.budget_bytes)
            fail_msg("backend %u: %llu bytes reserved, over its budget of %llu", i,
                     (unsigned long long)sum[i], (unsigned long long)s->be[i].bout.budget_bytes);
        assert_int_equal(sum[i], s->be[i].reserved_bytes);
        budgets += s->be[i].bout.budget_bytes;
        if (sum[i] > c->peak[i])
            c->peak[i] = sum[i];
    }
    assert_int_equal(total, s->reserved_bytes);
    assert_true(total <= budgets);
    c->checks++;
}

/* A request of about prompt_tokens tokens (user text of 4 bytes a token)
 * asking for max_tokens back. */
static void submit_sized(env *e, bud_answer *a, uint64_t owner, const char *system,
                         unsigned prompt_tokens, int32_t max_tokens)
{
    chat_req *r = NULL;
    assert_int_equal(chat_req_alloc(&r), LMSCHED_OK);
    free(r->system);
    r->system = strdup(system);
    r->messages = calloc(1, sizeof(*r->messages));
    r->messages[0].role = strdup("user");
    char *text = malloc((size_t)prompt_tokens * 4 + 1);
    for (unsigned i = 0; i < prompt_tokens; i++)
        memcpy(text + (size_t)i * 4, "abc ", 4);
    text[(size_t)prompt_tokens * 4] = '\0';
    r->messages[0].content = text;
    r->n_messages = 1;
    r->max_tokens = max_tokens;
    r->priority = budget_priorities ? (uint8_t)(rand() % 10) : budget_priority;
    sink k = {.ops = &bud_ops, .arg = a, .owner = owner, .id = 1};
    sched_submit(e->s, r, &k);
}

/* What a server would count for the pending request p of submit_sized: a
 * token per "abc " and about 20 for the system prompt and the template, as
 * the daemon estimates it (the reservation learns the ratio, capacity.c). */
static int bud_prompt_tokens(fake_http *f, size_t p)
{
    int n = 20;
    for (const char *b = fake_http_body(f, p); (b = strstr(b, "abc ")) != NULL; b += 4)
        n++;
    return n;
}

/* Many requests of mixed sizes against the backends of budget_ram: small
 * ones, ones that fit a budget only alone, ones larger than a budget; the
 * fake server finishes them in random order, with retried 503s, refused
 * 400s and agents going away. At every dispatch the invariant holds; at
 * the end every request has its one answer, nothing is reserved, and only
 * requests larger than every budget were refused as too large. */
static void budget_run(unsigned seed)
{
    env e;
    env_start_with(&e, budget_tweak, lmstudio_models4, 4);
    bud_s = e.s;
    bud_check c = {.s = e.s};
    fake_http_on_post(e.f, bud_check_now, &c);
    uint64_t min_budget = UINT64_MAX, max_budget = 0;
    for (unsigned i = 0; i < e.s->n_backends; i++) {
        uint64_t b = e.s->be[i].bout.budget_bytes;
        min_budget = b < min_budget ? b : min_budget;
        max_budget = b > max_budget ? b : max_budget;
    }
    enum { N = 400 };
    static bud_answer a[N];
    memset(a, 0, sizeof(a));
    static const char *const sys[] = {"You review code.", "You write tests.", "You plan.",
                                      "You summarize."};
    srand(seed);
    int sent = 0;
    for (int round = 0; round < 40000 && (sent < N || e.s->jobs != NULL); round++) {
        for (int k = rand() % 4; k > 0 && sent < N; k--, sent++) {
            unsigned prompt = 20 + (unsigned)(rand() % 1500);
            int32_t max;
            int kind = rand() % 20;
            if (kind < 10)
                max = 16 + rand() % 256; /* small */
            else if (kind < 15)
                max = 512 + rand() % 1536;
            else if (kind < 18)
                max = 4000 + rand() % 2600; /* with the prompt, alone or nearly */
            else
                max = 8192; /* a whole context: 1 GiB */
            submit_sized(&e, &a[sent], (uint64_t)(1 + rand() % 6), sys[rand() % 4], prompt,
                         max);
        }
        sched_turn(e.s);
        for (size_t p = fake_http_pending(e.f); p-- > 0;) {
            int what = rand() % 40;
            if (what < 12)
                fake_http_finish(e.f, p, 200,
                                 fake_http_completion("ok", bud_prompt_tokens(e.f, p), 10), 0);
            else if (what == 12)
                fake_http_finish(e.f, p, 503, "{\"error\":\"busy\"}", 0);
            else if (what == 13)
                fake_http_finish(e.f, p, 400, "{\"error\":\"bad\"}", 0);
        }
        if (rand() % 150 == 0)
            sched_cancel_owner(e.s, (uint64_t)(1 + rand() % 6), "gone");
        advance_ms(rand() % 30);
    }
    fake_http_on_post(e.f, NULL, NULL);
    int ok = 0, too_large = 0, ok_big = 0, ok_alone = 0, canceled = 0;
    for (int i = 0; i < N; i++) {
        if (a[i].calls != 1)
            fail_msg("request %d answered %d times", i, a[i].calls);
        canceled += a[i].code == LMSCHED_ECANCELED;
        if (a[i].code == LMSCHED_ETOOLARGE) {
            too_large++;
            /* refused only when no backend's whole budget holds it */
            if (a[i].reserve <= max_budget)
                fail_msg("request %d (%llu bytes) refused as too large; a budget of %llu "
                         "holds it", i, (unsigned long long)a[i].reserve,
                         (unsigned long long)max_budget);
        } else if (a[i].code == LMSCHED_OK) {
            ok++;
            assert_true(a[i].backend >= 0);
            assert_true(a[i].reserve <= e.s->be[a[i].backend].bout.budget_bytes);
            ok_big += a[i].reserve > min_budget;
            ok_alone += a[i].reserve > e.s->be[a[i].backend].bout.budget_bytes / 2;
        }
    }
    /* most of those its agent did not cancel ran (how many the agents'
     * cancels catch depends on how long the queue was at the time) */
    assert_true(ok > (N - canceled) / 2);
    assert_true(ok_alone > 0); /* some ran with room for nothing as large beside them */
    if (max_budget < (1ull << 30))
        assert_true(too_large > 0);
    if (min_budget < max_budget)
        assert_true(ok_big > 0); /* ran where they fit, not refused */
    assert_int_equal(c.checks, fake_http_posts(e.f));
    for (unsigned i = 0; i < e.s->n_backends; i++) {
        assert_int_equal(e.s->be[i].reserved_bytes, 0);
        assert_int_equal(e.s->be[i].inflight, 0);
        /* the budget was the limit, not the slots */
        assert_true(c.peak[i] > e.s->be[i].bout.budget_bytes / 2);
    }
    assert_null(e.s->jobs);
    assert_int_equal(e.s->queued, 0);
    assert_int_equal(e.s->inflight, 0);
    assert_int_equal(e.s->reserved_bytes, 0);
    assert_int_equal(e.s->st.received,
                     e.s->st.completed + e.s->st.failed + e.s->st.rejected_busy);
    /* preemptions where priorities differ, and the policy's books agree:
     * nothing queued or running in any group (each stopped request's slot
     * was given back once) */
    assert_true(e.s->st.preempted > 0 || !budget_priorities);
    assert_int_equal(policy_depth(e.s->pol), 0);
    pol_group_info gi[16];
    size_t ng = policy_groups(e.s->pol, gi, 16);
    for (size_t i = 0; i < ng; i++) {
        assert_int_equal(gi[i].queued, 0);
        assert_int_equal(gi[i].inflight, 0);
    }
    env_stop(&e);
}

/* ---- exact token counts ------------------------------------------------------ */

static void tweak_llama(sched_config *c)
{
    snprintf(c->backend_kind, sizeof(c->backend_kind), "llamacpp");
    /* the restore probe's requests would take the fake's transfers these
     * tests count (the probe has its own tests below) */
    c->probe_restore = 0;
}

static void tweak_llama_off(sched_config *c)
{
    tweak_llama(c);
    snprintf(c->exact_tokens, sizeof(c->exact_tokens), "off");
}

static void env_start_llama(env *e, void (*tweak)(sched_config *))
{
    env_props = llama_props;
    env_start_with(e, tweak, lmstudio_models, 2);
    env_props = NULL;
}

/* The job of owner, NULL if none. */
static job *job_of(const env *e, uint64_t owner)
{
    for (job *j = e->s->jobs; j != NULL; j = j->next)
        if (j->sink.owner == owner)
            return j;
    return NULL;
}

/* llama.cpp, two slots, three requests: the two dispatched at once keep
 * their estimates (dispatch never waits for a count); the queued one's
 * reservation becomes the server's count once both steps came back, and
 * its answer then shows no error. Each request is counted once; the counts
 * teach the estimate (a later request reserves near the count before its
 * own arrives). */
static void test_exact_tokens(void **state)
{
    (void)state;
    env e;
    env_start_llama(&e, tweak_llama);
    uint64_t kv = e.s->kv_bytes_per_token;
    answer a[4] = {{0}};
    /* about 250 estimated tokens: the count is a plausible tokenizer's */
    char text[1001];
    for (int i = 0; i < 200; i++)
        memcpy(text + i * 5, "word ", 5);
    text[1000] = '\0';
    for (int i = 0; i < 3; i++)
        submit(&e, &a[i], (uint64_t)(1 + i), "You are terse.", text, 5, 0);
    assert_int_equal(fake_http_json_posts(e.f), 3); /* one count each, at once */
    job *q = job_of(&e, 3);
    assert_non_null(q);
    assert_int_not_equal(q->reserve_tokens, EXACT_TOKENS);
    /* One turn: it dispatches two before anything came back; then the
     * templates come back (its first perform), and the counts (its last). */
    sched_turn(e.s);
    assert_int_equal(fake_http_pending(e.f), 2);
    assert_int_equal(q->state, JOB_QUEUED);
    assert_int_equal(fake_http_json_posts(e.f), 6);
    assert_int_equal(fake_http_json_pending(e.f), 0);
    assert_int_equal(q->exact_tokens, EXACT_TOKENS);
    assert_int_equal(q->reserve_tokens, EXACT_TOKENS);
    assert_int_equal(q->reserve, kv * (EXACT_TOKENS + 8));
    assert_int_equal(e.s->tokc.asked, 3);
    assert_int_equal(e.s->tokc.counted, 3);
    assert_int_equal(e.s->tokc.applied, 1);
    assert_int_equal(e.s->tokc.late, 2);
    /* the running ones kept what they reserved at dispatch */
    uint64_t sum = 0;
    for (const job *j = e.s->jobs; j != NULL; j = j->next)
        if (j->reserved) {
            assert_int_not_equal(j->reserve_tokens, EXACT_TOKENS);
            sum += j->reserve;
        }
    assert_int_equal(sum, e.s->reserved_bytes);
    assert_int_equal(e.s->backends[0].tokenizes, 1);
    char *st = sched_status_json(e.s);
    assert_non_null(strstr(st, "\"tokenizes\":true"));
    assert_non_null(strstr(st, "\"waiting\":1,\"waiting_exact\":1,"
                               "\"waiting_prompt_tokens\":300"));
    free(st);
    /* a fourth request: reserved by the learned ratio, near the count */
    submit(&e, &a[3], 4, "You are terse.", text, 5, 0);
    job *d = job_of(&e, 4);
    assert_true(d->reserve_tokens >= EXACT_TOKENS);
    assert_true(d->reserve_tokens <= EXACT_TOKENS + EXACT_TOKENS * 3 / 100 + 4);
    for (int round = 0; round < 20 && e.s->jobs != NULL; round++) {
        while (fake_http_pending(e.f) > 0)
            fake_http_finish(e.f, 0, 200, fake_http_completion("ok", EXACT_TOKENS, 0), 0);
        sched_turn(e.s);
    }
    assert_null(e.s->jobs);
    for (int i = 0; i < 4; i++)
        assert_int_equal(a[i].code, LMSCHED_OK);
    assert_int_equal(e.s->tokc.answers, 4);
    /* every reservation set by a count matched the answer's usage */
    assert_true(e.s->tokc.applied >= 1);
    assert_int_equal(e.s->tokc.exact, e.s->tokc.applied);
    assert_int_equal(e.s->reserved_bytes, 0);
    env_stop(&e);
}

/* --exact-tokens off: nothing is asked; the estimate stays. */
static void test_exact_tokens_off(void **state)
{
    (void)state;
    env e;
    env_start_llama(&e, tweak_llama_off);
    answer a[3] = {{0}};
    for (int i = 0; i < 3; i++)
        submit(&e, &a[i], (uint64_t)(1 + i), "You are terse.", "hello", 5, 0);
    sched_turn(e.s);
    sched_turn(e.s);
    assert_int_equal(fake_http_json_posts(e.f), 0);
    job *q = job_of(&e, 3);
    assert_int_equal(q->state, JOB_QUEUED);
    assert_int_equal(q->exact_tokens, 0);
    assert_int_not_equal(q->reserve_tokens, EXACT_TOKENS);
    char *st = sched_status_json(e.s);
    assert_non_null(strstr(st, "\"exact_tokens\":\"off\""));
    free(st);
    env_stop(&e);
}

/* A server without the endpoints (404): the request keeps its estimate and
 * is answered; the backend is asked no more. LM Studio is never asked. */
static void test_exact_tokens_404(void **state)
{
    (void)state;
    env e;
    env_start_llama(&e, tweak_llama);
    fake_http_route(e.f, "/apply-template", 404, "{\"error\":\"not found\"}");
    answer a[2] = {{0}};
    submit(&e, &a[0], 1, "sys", "q", 5, 0);
    assert_int_equal(fake_http_json_posts(e.f), 1);
    sched_turn(e.s);
    assert_int_equal(e.s->backends[0].tokenizes, 0);
    assert_int_equal(e.s->tokc.failed, 1);
    submit(&e, &a[1], 2, "sys", "q", 5, 0);
    assert_int_equal(fake_http_json_posts(e.f), 1);
    sched_turn(e.s);
    while (fake_http_pending(e.f) > 0)
        fake_http_finish(e.f, 0, 200, fake_http_completion("ok", 10, 0), 0);
    sched_turn(e.s);
    assert_int_equal(a[0].code, LMSCHED_OK);
    assert_int_equal(a[1].code, LMSCHED_OK);
    env_stop(&e);

    env_start(&e, NULL); /* LM Studio */
    submit(&e, &a[0], 1, "sys", "q", 5, 0);
    sched_turn(e.s);
    assert_int_equal(fake_http_json_posts(e.f), 0);
    env_stop(&e);
}

/* Counts still in flight when their requests end: a canceled queued one, a
 * finished one, one failed by its deadline and one at shutdown. Each count
 * goes with its job (nothing left in flight), and counts answered later
 * reach nothing (ASan: no use after free). */
static void test_exact_tokens_inflight_end(void **state)
{
    (void)state;
    env e;
    env_start_llama(&e, tweak_llama);
    fake_http_hold_json(e.f, true);
    answer a[4] = {{0}};
    submit(&e, &a[0], 1, "sys", "first", 5, 0);
    submit(&e, &a[1], 2, "sys", "second", 5, 0);
    submit(&e, &a[2], 3, "sys", "third", 5, 0);
    submit(&e, &a[3], 4, "sys", "fourth", 5, 50);
    sched_turn(e.s);
    assert_int_equal(fake_http_pending(e.f), 2);
    assert_int_equal(fake_http_json_pending(e.f), 4);
    /* canceled while queued */
    assert_true(sched_cancel(e.s, 3, 1, "agent went away"));
    assert_int_equal(a[2].code, LMSCHED_ECANCELED);
    assert_int_equal(fake_http_json_pending(e.f), 3);
    /* finished before its count came */
    fake_http_finish(e.f, 0, 200, fake_http_completion("ok", 10, 0), 0);
    sched_turn(e.s);
    assert_int_equal(a[0].calls + a[1].calls, 1);
    assert_int_equal(fake_http_json_pending(e.f), 2);
    /* a deadline passes while queued */
    advance_ms(60);
    sched_turn(e.s);
    assert_int_equal(a[3].code, LMSCHED_EDEADLINE);
    assert_int_equal(fake_http_json_pending(e.f), 1);
    /* the rest come back now: to live jobs only */
    fake_http_hold_json(e.f, false);
    sched_turn(e.s);
    sched_turn(e.s);
    assert_int_equal(e.s->tokc.asked, 4);
    assert_int_equal(e.s->tokc.counted, 1);
    /* and one in flight at shutdown: sched_free frees it */
    fake_http_hold_json(e.f, true);
    answer b = {0};
    submit(&e, &b, 9, "sys", "late", 5, 0);
    assert_int_equal(fake_http_json_pending(e.f), 1);
    env_stop(&e);
}

/* A burst of arrivals: at most SCHED_COUNTS_PER_BACKEND counts in flight
 * at once; the queued requests left over are asked as room comes, and each
 * one still queued ends with its count. */
static void test_exact_tokens_cap(void **state)
{
    (void)state;
    env e;
    env_start_llama(&e, tweak_llama);
    fake_http_hold_json(e.f, true);
    enum { N = 10 };
    answer a[N] = {{0}};
    for (int i = 0; i < N; i++)
        submit(&e, &a[i], (uint64_t)(1 + i), "sys", "a question", 5, 0);
    assert_int_equal(fake_http_json_pending(e.f), SCHED_COUNTS_PER_BACKEND);
    sched_turn(e.s);
    assert_int_equal(fake_http_pending(e.f), 2);
    assert_int_equal(fake_http_json_pending(e.f), SCHED_COUNTS_PER_BACKEND);
    fake_http_hold_json(e.f, false);
    for (int t = 0; t < 10; t++)
        sched_turn(e.s);
    assert_int_equal(fake_http_json_pending(e.f), 0);
    assert_int_equal(e.s->tokc.counted, e.s->tokc.asked);
    assert_int_equal(e.s->be[0].counting, 0);
    unsigned queued = 0;
    for (const job *j = e.s->jobs; j != NULL; j = j->next)
        if (j->state == JOB_QUEUED) {
            queued++;
            assert_int_equal(j->reserve_tokens, EXACT_TOKENS);
        }
    assert_int_equal(queued, N - 2);
    env_stop(&e);
}

/* The budget invariant of budget_run with counts changing the
 * reservations of requests while they wait (queued or for memory). */
static void tweak_budget_llama(sched_config *c)
{
    tweak_budget(c);
    tweak_llama(c);
}

static void test_budget_exact(void **state)
{
    (void)state;
    memset(budget_ram, 0, sizeof(budget_ram));
    budget_ram[0] = 3ull << 29;
    budget_policy = "prefix";
    budget_tweak = tweak_budget_llama;
    env_props = llama_props4;
    budget_run(31);
    budget_ram[0] = 4ull << 30;
    budget_ram[1] = 3ull << 29;
    budget_run(32);
    env_props = NULL;
    budget_tweak = tweak_budget;
}

/* One backend, a budget of 0.6 x 1.5 GiB - 1 MB (about 920 MiB): a whole
 * context (1 GiB) is too large, ~5000 tokens fit only alone. */
static void test_budget_one(void **state)
{
    (void)state;
    memset(budget_ram, 0, sizeof(budget_ram));
    budget_ram[0] = 3ull << 29;
    budget_policy = "prefix";
    budget_run(11);
    budget_policy = "fifo";
    budget_run(12);
}

/* Two backends, budgets of about 2.4 GiB and 920 MiB: a whole context
 * fits only the first; a request no budget holds is refused. */
static void test_budget_two(void **state)
{
    (void)state;
    memset(budget_ram, 0, sizeof(budget_ram));
    budget_ram[0] = 4ull << 30;
    budget_ram[1] = 3ull << 29;
    budget_policy = "prefix";
    budget_run(21);
    budget_policy = "fifo";
    budget_run(22);
    /* both too small for a whole context: those are refused */
    budget_ram[0] = 3ull << 29;
    budget_ram[1] = 1ull << 30;
    budget_run(23);
}

/* The same with priorities 0-9: higher ones stop lower ones that run (for
 * a slot, or for the memory a chosen request waits for), which run again
 * later. The reservations stay within every budget at every dispatch, and
 * every request still gets exactly one answer. */
static void test_budget_preempt(void **state)
{
    (void)state;
    budget_priorities = true;
    memset(budget_ram, 0, sizeof(budget_ram));
    budget_ram[0] = 3ull << 29;
    budget_policy = "prefix";
    budget_run(31);
    budget_policy = "fifo";
    budget_run(32);
    budget_ram[0] = 4ull << 30;
    budget_ram[1] = 3ull << 29;
    budget_policy = "prefix";
    budget_run(33);
    budget_priorities = false;
}

/* Two backends: a request waiting for memory on one does not hold up
 * another that has room. Large requests go in one at a time until one
 * waits for memory; a small one then runs on the other backend. */
static void test_budget_pending_one_backend(void **state)
{
    (void)state;
    memset(budget_ram, 0, sizeof(budget_ram));
    budget_ram[0] = 2ull << 30; /* budgets of ~1.2 GiB: one 875 MiB request each */
    budget_ram[1] = 2ull << 30;
    budget_policy = "fifo";
    env e;
    env_start_with(&e, tweak_budget, lmstudio_models4, 4);
    bud_s = e.s;
    bud_answer big[3] = {{0}}, small = {0};
    const job *waiting = NULL;
    for (int i = 0; i < 3 && waiting == NULL; i++) {
        submit_sized(&e, &big[i], 1, "sys", 100, 6900);
        sched_turn(e.s);
        if (e.s->jobs->state == JOB_PENDING)
            waiting = e.s->jobs;
    }
    assert_non_null(waiting);
    unsigned held = sched_be_index(e.s, waiting->be);
    assert_int_not_equal(e.s->be[held].reserved_bytes, 0);
    submit_sized(&e, &small, 2, "other", 100, 200);
    sched_turn(e.s);
    const job *j = e.s->jobs;
    assert_int_equal(j->state, JOB_INFLIGHT);
    assert_int_not_equal(sched_be_index(e.s, j->be), held);
    assert_int_equal(waiting->state, JOB_PENDING);
    /* the others finish: the waiting one runs, everyone is answered */
    for (int round = 0; round < 100 && e.s->jobs != NULL; round++) {
        if (fake_http_pending(e.f) > 0)
            fake_http_finish(e.f, 0, 200, fake_http_completion("ok", 100, 0), 0);
        sched_turn(e.s);
        advance_ms(10);
    }
    assert_null(e.s->jobs);
    assert_int_equal(small.calls, 1);
    for (int i = 0; i < 3; i++)
        assert_true(big[i].calls <= 1);
    assert_int_equal(e.s->reserved_bytes, 0);
    env_stop(&e);
}

/* Both slots run priority-1 requests with a deadline of 100 ms; a
 * priority-8 request stops the later one, which goes back to the queue
 * after it had started: its deadline, met, no longer applies, and it is
 * answered when it runs again, long after the 100 ms. */
static void test_preempt_deadline(void **state)
{
    (void)state;
    env e;
    env_start(&e, NULL);
    answer low[2] = {{0}}, high = {0};
    submit(&e, &low[0], 1, "You are terse.", "first", 1, 100);
    submit(&e, &low[1], 1, "You are terse.", "second", 1, 100);
    sched_turn(e.s);
    assert_int_equal(fake_http_pending(e.f), 2);
    advance_ms(5);
    submit(&e, &high, 2, "You are urgent.", "now", 8, 0);
    sched_turn(e.s);
    assert_int_equal(e.s->st.preempted, 1);
    assert_int_equal(e.s->queued, 1);
    assert_int_equal(e.s->inflight, 2);
    assert_int_equal(fake_http_pending(e.f), 2);
    /* equal priority: nothing more is stopped for the queued priority-1 one */
    advance_ms(200);
    sched_turn(e.s);
    assert_int_equal(e.s->st.preempted, 1);
    for (int round = 0; round < 20 && e.s->jobs != NULL; round++) {
        if (fake_http_pending(e.f) > 0)
            fake_http_finish(e.f, 0, 200, fake_http_completion("ok", 20, 0), 0);
        sched_turn(e.s);
        advance_ms(10);
    }
    assert_null(e.s->jobs);
    assert_int_equal(high.calls, 1);
    assert_int_equal(high.code, LMSCHED_OK);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(low[i].calls, 1);
        assert_int_equal(low[i].code, LMSCHED_OK);
    }
    assert_int_equal(e.s->st.failed, 0);
    assert_int_equal(e.s->st.retried, 0);
    env_stop(&e);
}

/* Memory: a high-priority request the policy chose waits for KV memory
 * that a running low-priority one holds; that one is stopped (its
 * transfer closed) and queued again, the high one starts; the low one
 * runs again when the memory is back, and both get one answer. */
static void test_preempt_memory(void **state)
{
    (void)state;
    memset(budget_ram, 0, sizeof(budget_ram));
    budget_ram[0] = 3ull << 29; /* ~920 MiB: one 875 MiB request at a time */
    budget_policy = "prefix";
    env e;
    env_start_with(&e, tweak_budget, lmstudio_models4, 4);
    bud_s = e.s;
    bud_answer low = {0}, high = {0};
    budget_priorities = false;
    submit_sized(&e, &low, 1, "sys", 100, 6900);
    sched_turn(e.s);
    assert_int_equal(fake_http_pending(e.f), 1);
    const job *lj = e.s->jobs;
    assert_int_equal(lj->state, JOB_INFLIGHT);
    budget_priority = 8;
    submit_sized(&e, &high, 2, "other", 100, 6900);
    budget_priority = 5;
    sched_turn(e.s);
    assert_int_equal(e.s->st.preempted, 1);
    assert_int_equal(fake_http_pending(e.f), 1); /* the low one's transfer was closed */
    /* queued again, and (the policy gave it the slot it left) waiting for
     * the memory the high one now holds */
    assert_int_equal(lj->preempts, 1);
    assert_int_equal(lj->state, JOB_PENDING);
    assert_false(lj->reserved);
    assert_int_equal(e.s->jobs->state, JOB_INFLIGHT);
    assert_int_equal(e.s->jobs->pi.priority, 8);
    assert_int_equal(e.s->be[0].reserved_bytes, e.s->jobs->reserve);
    for (int round = 0; round < 100 && e.s->jobs != NULL; round++) {
        if (fake_http_pending(e.f) > 0)
            fake_http_finish(e.f, 0, 200, fake_http_completion("ok", 120, 0), 0);
        sched_turn(e.s);
        advance_ms(10);
    }
    assert_null(e.s->jobs);
    assert_int_equal(high.calls, 1);
    assert_int_equal(high.code, LMSCHED_OK);
    assert_int_equal(low.calls, 1);
    assert_int_equal(low.code, LMSCHED_OK);
    assert_int_equal(e.s->st.preempted, 1);
    assert_int_equal(e.s->reserved_bytes, 0);
    env_stop(&e);
}

/* ---- the restore probe (probe.c) ---------------------------------------------- */

static const char llamacpp_props[] =
    "{\"total_slots\":2,\"default_generation_settings\":{\"n_ctx\":8192},"
    "\"model_path\":\"/models/m1.gguf\"}";

static void tweak_llamacpp(sched_config *c)
{
    snprintf(c->backend_kind, sizeof(c->backend_kind), "llamacpp");
}

/* A llama.cpp backend of 2 slots behind the prefix policy: its restore
 * probe starts at sched_start (the fake never answers by itself, so the
 * start returns with it running). */
static void env_start_llamacpp(env *e)
{
    memset(e, 0, sizeof(*e));
    clock_set_source(fake_clock, NULL);
    log_set_level(LOG_ERROR);
    config_defaults(&e->cfg, "ipc:///tmp/loop_test.sock");
    snprintf(e->cfg.backend, sizeof(e->cfg.backend), "http://fake");
    e->cfg.total_ram = 64ull << 30;
    tweak_llamacpp(&e->cfg);
    http_client *hc = NULL;
    e->f = fake_http_new(&hc);
    fake_http_route(e->f, "/props", 200, llamacpp_props);
    assert_int_equal(sched_alloc_http(&e->s, &e->cfg, hc), 0);
    assert_int_equal(sched_start(e->s, 100), 0);
    assert_int_equal(e->s->backends[0].slots, 2);
    assert_int_equal(e->s->be[0].restore, SCHED_RESTORE_RUNNING);
}

/* The pending transfer whose body has this text, or -1. */
static long pending_with(const env *e, const char *text)
{
    for (size_t i = 0; i < fake_http_pending(e->f); i++)
        if (strstr(fake_http_body(e->f, i), text) != NULL)
            return (long)i;
    return -1;
}

/* The probe's three one-token requests on the last slot, one after the
 * other; a request arriving meanwhile runs on the other slot. A, B, A
 * with A found cached again beyond what B shared: the backend restores,
 * and the policy counts it as restoring from the start. */
static void test_restore_probe_verdict(void **state)
{
    (void)state;
    env e;
    env_start_llamacpp(&e);
    assert_int_equal(fake_http_pending(e.f), 1);
    const char *body = fake_http_body(e.f, 0);
    assert_non_null(strstr(body, "\"id_slot\":1"));
    assert_non_null(strstr(body, "\"max_tokens\":1"));
    answer a = {0};
    submit(&e, &a, 1, "You are terse.", "hello", 5, 0);
    sched_turn(e.s);
    long r = pending_with(&e, "You are terse.");
    assert_true(r >= 0);
    assert_non_null(strstr(fake_http_body(e.f, (size_t)r), "\"id_slot\":0"));
    static const int cached[3] = {0, 7, 149};
    for (int step = 0; step < 3; step++) {
        long p = pending_with(&e, "\"id_slot\":1");
        assert_true(p >= 0);
        fake_http_finish(e.f, (size_t)p, 200, fake_http_completion("x", 150, cached[step]), 0);
        sched_turn(e.s);
        assert_int_equal(e.s->be[0].restore,
                         step < 2 ? SCHED_RESTORE_RUNNING : SCHED_RESTORE_YES);
    }
    assert_true(e.s->be[0].restore_share > 0.99);
    assert_int_equal(e.s->st.completed, 0); /* the probe is no request of anyone's */
    double share = 0;
    unsigned reloads = 0;
    assert_true(policy_restore_info(e.s->pol, &share, &reloads));
    assert_int_equal(reloads, 3);
    /* Slot 1 is the policy's again: a second request runs there. */
    answer b = {0};
    submit(&e, &b, 2, "You are verbose.", "hello", 5, 0);
    sched_turn(e.s);
    r = pending_with(&e, "You are verbose.");
    assert_true(r >= 0);
    assert_non_null(strstr(fake_http_body(e.f, (size_t)r), "\"id_slot\":1"));
    assert_int_equal(a.calls + b.calls, 0);
    env_stop(&e);
}

/* A probe the server does not answer in time leaves the answer unknown
 * and gives its slot back; a failed one too, and the policy learns from
 * traffic only. Without a host cache (A found as little as B shared) the
 * verdict is no_restore. */
static void test_restore_probe_unknown(void **state)
{
    (void)state;
    env e;
    env_start_llamacpp(&e);
    advance_ms(5001);
    sched_turn(e.s);
    assert_int_equal(e.s->be[0].restore, SCHED_RESTORE_UNKNOWN);
    assert_int_equal(fake_http_pending(e.f), 0); /* canceled */
    double share = 0;
    assert_false(policy_restore_info(e.s->pol, &share, NULL));
    assert_true(share < 0);
    answer a = {0}, b = {0};
    submit(&e, &a, 1, "You are terse.", "hello", 5, 0);
    submit(&e, &b, 2, "You are verbose.", "hello", 5, 0);
    sched_turn(e.s);
    assert_int_equal(fake_http_pending(e.f), 2); /* both slots */
    env_stop(&e);

    env_start_llamacpp(&e);
    fake_http_finish(e.f, 0, 500, "{\"error\":{\"message\":\"boom\"}}", 0);
    sched_turn(e.s);
    assert_int_equal(e.s->be[0].restore, SCHED_RESTORE_UNKNOWN);
    env_stop(&e);

    env_start_llamacpp(&e);
    static const int cached[3] = {0, 7, 7};
    for (int step = 0; step < 3; step++) {
        fake_http_finish(e.f, 0, 200, fake_http_completion("x", 150, cached[step]), 0);
        sched_turn(e.s);
    }
    assert_int_equal(e.s->be[0].restore, SCHED_RESTORE_NO);
    assert_false(policy_restore_info(e.s->pol, &share, NULL));
    assert_true(share == 0);
    env_stop(&e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_answer),        cmocka_unit_test(test_reserve_tokens),
        cmocka_unit_test(test_restore_probe_verdict),
        cmocka_unit_test(test_restore_probe_unknown),
        cmocka_unit_test(test_slots_bound),
        cmocka_unit_test(test_deadline),      cmocka_unit_test(test_retry),
        cmocka_unit_test(test_no_retry_400),  cmocka_unit_test(test_backend_down),
        cmocka_unit_test(test_idle_wake),     cmocka_unit_test(test_drain),
        cmocka_unit_test(test_cancel_owner),  cmocka_unit_test(test_queue_full),
        cmocka_unit_test(test_exactly_once),  cmocka_unit_test(test_budget_one),
        cmocka_unit_test(test_budget_two),    cmocka_unit_test(test_budget_pending_one_backend),
        cmocka_unit_test(test_budget_preempt), cmocka_unit_test(test_preempt_memory),
        cmocka_unit_test(test_preempt_deadline),
        cmocka_unit_test(test_exact_tokens),  cmocka_unit_test(test_exact_tokens_off),
        cmocka_unit_test(test_exact_tokens_404),
        cmocka_unit_test(test_exact_tokens_inflight_end),
        cmocka_unit_test(test_exact_tokens_cap),
        cmocka_unit_test(test_budget_exact),
    };
    return cmocka_run_group_tests_name("loop", tests, NULL, NULL);
}
