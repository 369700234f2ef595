/*
 * fleet_test - several LLM servers behind one daemon (--backend repeated):
 * three lmsims, 200 requests in 6 prefix groups, one lmsim killed with
 * kill -9 halfway and restarted on its port: every request answered
 * exactly once, none lost, the killed backend rejoins and gets traffic
 * again; prefix groups stay on the backend that holds their prefix (cached
 * tokens reported); model routing over two lmsims serving different
 * models, and a clear error for a model none serves (nng and HTTP 400);
 * a burst of 5xx answers takes a backend out until its probe succeeds and
 * its work goes to the other; a hot group spills to a second backend and is
 * then cached on both; the --routing baselines (round-robin, least-loaded)
 * bind requests as they say, and round-robin's go elsewhere when a backend
 * dies; --backends-file re-read on SIGHUP adds and removes backends under
 * load without dropping a request. Real lmsims, real `lmsched serve`, agents through
 * agentlib.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kit/check.h"
#include "kit/clock.h"
#include "kit/env.h"
#include "kit/fs.h"
#include "kit/http.h"
#include "kit/json.h"
#include "kit/net.h"
#include "kit/proc.h"
#include "kit/sim.h"
#include "kit/tally.h"
#include "lmsched/agent.h"

#define MEM "--total-ram", "64G", "--kv-per-request", "16M"
#define SMALL_MODEL "--model-size", "1073741824"

enum { N_SIMS = 3, GROUPS = 6, N_REQ = 200 };

/* The extra lmsims of a test (the first is the kit_env's own). */
typedef struct fleet {
    kit_env *e;
    kit_proc sim[N_SIMS]; /* [0] unused: e->sim */
    int port[N_SIMS];
    char url[N_SIMS][128];
} fleet;

static int fleet_sim_start(fleet *f, int i, int port, const char *const *args)
{
    if (i == 0) {
        int rc = kit_env_sim_start(f->e, port, args);
        if (rc == 0) {
            f->port[0] = f->e->sim_port;
            snprintf(f->url[0], sizeof(f->url[0]), "%s", f->e->backend);
        }
        return rc;
    }
    char port_file[600], why[256];
    snprintf(port_file, sizeof(port_file), "%s/sim%d.port", f->e->dir, i);
    kit_sim_opts o = {
        .port_file = port_file,
        .port = port,
        .args = args,
        .out = KIT_OUT_LOG,
        .timeout_ms = 10000,
    };
    /* Its own log beside the first one's. */
    snprintf(f->sim[i].log, sizeof(f->sim[i].log), "%s/lmsim%d.log", f->e->dir, i);
    int p = kit_sim_start(&f->sim[i], &o, why, sizeof(why));
    if (p <= 0) {
        fprintf(stderr, "kit: %s\n", why);
        return -1;
    }
    f->port[i] = p;
    snprintf(f->url[i], sizeof(f->url[i]), "http://127.0.0.1:%d", p);
    return 0;
}

/* Restarts lmsim i on its port (free at once after a kill -9). */
static int fleet_sim_restart(fleet *f, int i, const char *const *args)
{
    for (int k = 0; k < 20; k++) {
        if (fleet_sim_start(f, i, f->port[i], args) == 0)
            return 0;
        kit_sleep_ms(100);
    }
    return -1;
}

static void fleet_stop(fleet *f)
{
    for (int i = 1; i < N_SIMS; i++)
        if (f->sim[i].pid > 0)
            kit_proc_stop(&f->sim[i], SIGTERM, 5000);
}

/* A system prompt of about 1,000 tokens, distinct per group. */
static char *group_prompt(int g)
{
    size_t cap = 4200;
    char *p = malloc(cap);
    assert_non_null(p);
    size_t n = (size_t)snprintf(p, cap, "You are agent %d of a fleet. ", g);
    static const char *const words[] = {"plan", "each",   "step", "then",  "check",
                                        "the",  "result", "and",  "write", "notes"};
    unsigned x = 2654435761u * (unsigned)(g + 7);
    while (n + 16 < 4000) {
        x = x * 1103515245u + 12345u;
        n += (size_t)snprintf(p + n, cap - n, "%s ", words[(x >> 16) % 10]);
    }
    return p;
}

/* Sends n requests of the groups in turn (request k of group k % GROUPS). */
static void send_batch(lmsched_client *c, char **prompts, int first, int n, kit_tally *t)
{
    for (int k = first; k < first + n; k++) {
        char user[64];
        snprintf(user, sizeof(user), "task %d", k);
        lmsched_request *r = kit_req(prompts[k % GROUPS], user, 8);
        assert_int_equal(lmsched_chat_async(c, r, 120000, kit_tally_cb, t), LMSCHED_OK);
        lmsched_request_free(r);
    }
}

static int64_t be_int(json_t *st, int i, const char *key)
{
    json_t *v = json_object_get(json_array_get(json_object_get(st, "backends"), (size_t)i), key);
    return json_is_integer(v) ? json_integer_value(v) : -1;
}

static bool be_healthy(json_t *st, int i)
{
    return json_is_true(
        json_object_get(json_array_get(json_object_get(st, "backends"), (size_t)i), "healthy"));
}

static void fleet_dump(fleet *f)
{
    kit_env_dump_logs(f->e);
    for (int i = 1; i < N_SIMS; i++) {
        fprintf(stderr, "---- %s\n", f->sim[i].log);
        kit_fs_tail(f->sim[i].log, 20, stderr);
    }
}

/* 3 lmsims, 200 requests in 6 groups, lmsim 1 killed halfway and
 * restarted. */
static void test_fleet_failover(void **state)
{
    fleet f = {.e = *state};
    const char *sim[] = {"--time-scale", "20", "--slots", "2", SMALL_MODEL, NULL};
    for (int i = 0; i < N_SIMS; i++)
        assert_int_equal(fleet_sim_start(&f, i, 0, sim), 0);
    const char *d[] = {MEM,      "--backend", f.url[0],       "--backend", f.url[1],
                       "--backend", f.url[2], "--backend-wait", "60000", NULL};
    kit_env_start(f.e, NULL, d);

    json_t *st = kit_env_status(f.e);
    assert_non_null(st);
    assert_int_equal(json_array_size(json_object_get(st, "backends")), N_SIMS);
    for (int i = 0; i < N_SIMS; i++) {
        assert_true(be_healthy(st, i));
        assert_int_equal(be_int(st, i, "policy_slots"), 2);
    }
    json_decref(st);

    char *prompts[GROUPS];
    for (int g = 0; g < GROUPS; g++)
        prompts[g] = group_prompt(g);
    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, f.e->url), LMSCHED_OK);
    kit_tally t;
    kit_tally_init(&t);

    /* First half, then kill lmsim 1 while its slots are busy. */
    send_batch(c, prompts, 0, N_REQ / 2, &t);
    int64_t got = kit_env_sim_wait(f.e, "requests", 10, INT64_MAX, 20000);
    assert_true(got >= 10);
    kit_tally_wait(&t, N_REQ / 4, 60000);
    st = kit_env_status(f.e);
    int64_t routed1_before = be_int(st, 1, "routed");
    json_decref(st);
    assert_true(routed1_before > 0);
    int64_t t_kill = kit_now_ms();
    assert_int_equal(kit_proc_stop(&f.sim[1], SIGKILL, 5000), 128 + SIGKILL);

    /* The second half arrives while it is down: served by the others. */
    send_batch(c, prompts, N_REQ / 2, N_REQ / 2, &t);
    int mid = kit_tally_wait(&t, N_REQ * 3 / 4, 60000);
    if (mid < N_REQ * 3 / 4)
        fleet_dump(&f);
    assert_true(mid >= N_REQ * 3 / 4);
    st = kit_env_status(f.e);
    assert_false(be_healthy(st, 1));
    int64_t routed1_down = be_int(st, 1, "routed");
    json_decref(st);

    /* Restart it on its port: it rejoins once its probe answers. */
    int64_t t_restart = kit_now_ms();
    assert_int_equal(fleet_sim_restart(&f, 1, sim), 0);
    int done = kit_tally_wait(&t, N_REQ, 90000);
    if (done != N_REQ || t.by_code[LMSCHED_OK] + t.by_code[LMSCHED_EBACKEND_STREAM] != N_REQ)
        fleet_dump(&f);
    assert_int_equal(done, N_REQ);
    /* Exactly once: no second answer turns up. */
    kit_sleep_ms(300);
    assert_int_equal(kit_tally_done(&t), N_REQ);
    /* Only a request cut mid-answer on the killed server may fail, and only
     * with the error saying so; lmsim 1 had 2 slots. */
    int cut = t.by_code[LMSCHED_EBACKEND_STREAM];
    assert_int_equal(t.by_code[LMSCHED_OK] + cut, N_REQ);
    assert_true(cut <= 2);
    if (cut > 0)
        assert_non_null(strstr(t.sample[LMSCHED_EBACKEND_STREAM], "answer was cut"));

    /* Rejoined: healthy again, and it gets traffic. */
    int64_t deadline = kit_now_ms() + 10000;
    bool up = false;
    while (!up && kit_now_ms() < deadline) {
        st = kit_env_status(f.e);
        up = st != NULL && be_healthy(st, 1);
        json_decref(st);
        if (!up)
            kit_sleep_ms(100);
    }
    assert_true(up);
    kit_tally t2;
    kit_tally_init(&t2);
    send_batch(c, prompts, N_REQ, 60, &t2);
    assert_int_equal(kit_tally_wait(&t2, 60, 60000), 60);
    assert_int_equal(t2.by_code[LMSCHED_OK], 60);
    st = kit_env_status(f.e);
    int64_t routed1_after = be_int(st, 1, "routed");
    int64_t completed = kit_json_int(st, "requests.completed");
    int64_t received = kit_json_int(st, "requests.received");
    int64_t failed = kit_json_int(st, "requests.failed");
    json_decref(st);
    assert_true(routed1_after > routed1_down);
    assert_int_equal(received, N_REQ + 60);
    assert_int_equal(completed + failed, N_REQ + 60);
    printf("fleet failover: 3 lmsims x 2 slots, %d requests in %d groups; lmsim 1 killed "
           "(kill -9) after %lld routed to it, restarted %lld ms later: %d answered "
           "(%d ok, %d cut mid-answer), each once; %lld ms from restart to the last answer; "
           "after it rejoined it took %lld of 60 more\n",
           N_REQ, GROUPS, (long long)routed1_before, (long long)(t_restart - t_kill), done,
           t.by_code[LMSCHED_OK], cut, (long long)(t.last_ms - t_restart),
           (long long)(routed1_after - routed1_down));
    lmsched_client_close(c);
    kit_tally_fini(&t);
    kit_tally_fini(&t2);
    for (int g = 0; g < GROUPS; g++)
        free(prompts[g]);
    fleet_stop(&f);
}

/* A group's requests mostly land on one backend, and its prefix is reused
 * there: lmsim's own cached tokens. 3 lmsims of 2 slots, 3 groups. */
static void test_fleet_stickiness(void **state)
{
    fleet f = {.e = *state};
    const char *sim[] = {"--time-scale", "20", "--slots", "2", SMALL_MODEL, NULL};
    for (int i = 0; i < N_SIMS; i++)
        assert_int_equal(fleet_sim_start(&f, i, 0, sim), 0);
    const char *d[] = {MEM,       "--backend", f.url[0], "--backend",
                       f.url[1],  "--backend", f.url[2], NULL};
    kit_env_start(f.e, NULL, d);
    char *prompts[GROUPS];
    for (int g = 0; g < GROUPS; g++)
        prompts[g] = group_prompt(g);
    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, f.e->url), LMSCHED_OK);
    /* Three groups, one request of each at a time, in rounds: each fits a
     * slot, so each group should stay where its prefix is. */
    enum { ROUNDS = 8, G = 3 };
    for (int r = 0; r < ROUNDS; r++) {
        kit_tally t;
        kit_tally_init(&t);
        for (int g = 0; g < G; g++) {
            char user[64];
            snprintf(user, sizeof(user), "round %d", r);
            lmsched_request *q = kit_req(prompts[g], user, 8);
            assert_int_equal(lmsched_chat_async(c, q, 60000, kit_tally_cb, &t), LMSCHED_OK);
            lmsched_request_free(q);
        }
        assert_int_equal(kit_tally_wait(&t, G, 30000), G);
        assert_int_equal(t.by_code[LMSCHED_OK], G);
        kit_tally_fini(&t);
    }
    /* lmsim's ground truth: after the first round, the prompts are served
     * from the cache (each ~1,000-token prefix prefilled about once). */
    int64_t cached = 0, prompt = 0, requests = 0;
    for (int i = 0; i < N_SIMS; i++) {
        char url[256];
        snprintf(url, sizeof(url), "%s/sim/stats", f.url[i]);
        json_t *s = kit_http_json("GET", url, NULL, 5000, NULL, NULL, 0);
        assert_non_null(s);
        cached += kit_json_int(s, "cached_tokens");
        prompt += kit_json_int(s, "prompt_tokens");
        requests += kit_json_int(s, "requests");
        json_decref(s);
    }
    json_t *st = kit_env_status(f.e);
    int64_t be_cached = 0;
    for (int i = 0; i < N_SIMS; i++)
        be_cached += be_int(st, i, "cached_tokens");
    json_decref(st);
    assert_int_equal(requests, ROUNDS * G);
    printf("fleet stickiness: %d rounds of %d groups over 3 lmsims: %lld of %lld prompt "
           "tokens cached (%.0f%%); the daemon's per-backend counts say %lld\n",
           ROUNDS, G, (long long)cached, (long long)prompt,
           prompt ? 100.0 * (double)cached / (double)prompt : 0.0, (long long)be_cached);
    /* Ideal: every round after the first hits (7/8 = 87%); allow some
     * reloads. */
    assert_true(cached * 100 >= prompt * 70);
    assert_int_equal(be_cached, cached);
    lmsched_client_close(c);
    for (int g = 0; g < GROUPS; g++)
        free(prompts[g]);
    fleet_stop(&f);
}

/* Two lmsims serving different models: a request goes to the one serving
 * its model; none named: the first's; an unknown one is an error listing
 * both, over nng and as the HTTP front's 400; /v1/models is the union. */
static void test_fleet_models(void **state)
{
    fleet f = {.e = *state};
    const char *sim_a[] = {"--time-scale", "20", "--model", "alpha-7b", SMALL_MODEL, NULL};
    const char *sim_b[] = {"--time-scale", "20", "--model", "beta-3b", SMALL_MODEL, NULL};
    assert_int_equal(fleet_sim_start(&f, 0, 0, sim_a), 0);
    assert_int_equal(fleet_sim_start(&f, 1, 0, sim_b), 0);
    int http_port = kit_net_free_port();
    char http[32];
    snprintf(http, sizeof(http), "127.0.0.1:%d", http_port);
    const char *d[] = {MEM, "--backend", f.url[0], "--backend", f.url[1], "--http", http, NULL};
    kit_env_start(f.e, NULL, d);
    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, f.e->url), LMSCHED_OK);

    static const char *const models[] = {"beta-3b", "alpha-7b", NULL, "beta-3b"};
    static const char *const expect[] = {"beta-3b", "alpha-7b", "alpha-7b", "beta-3b"};
    for (int i = 0; i < 4; i++) {
        lmsched_request *r = kit_req("You route by model.", "hello", 4);
        if (models[i] != NULL)
            assert_int_equal(lmsched_request_set_model(r, models[i]), LMSCHED_OK);
        lmsched_result *res = NULL;
        assert_int_equal(lmsched_chat(c, r, 30000, &res), LMSCHED_OK);
        assert_int_equal(lmsched_result_error(res), LMSCHED_OK);
        assert_string_equal(lmsched_result_model(res), expect[i]);
        lmsched_result_free(res);
        lmsched_request_free(r);
    }
    json_t *sa = kit_env_sim_get(f.e, "/sim/stats");
    char url[256];
    snprintf(url, sizeof(url), "%s/sim/stats", f.url[1]);
    json_t *sb = kit_http_json("GET", url, NULL, 5000, NULL, NULL, 0);
    assert_int_equal(kit_json_int(sa, "requests"), 2);
    assert_int_equal(kit_json_int(sb, "requests"), 2);
    json_decref(sa);
    json_decref(sb);

    /* A model no backend serves. */
    lmsched_request *r = kit_req("You route by model.", "hello", 4);
    assert_int_equal(lmsched_request_set_model(r, "gamma-70b"), LMSCHED_OK);
    lmsched_result *res = NULL;
    assert_int_equal(lmsched_chat(c, r, 30000, &res), LMSCHED_EINVAL);
    const char *msg = lmsched_result_message(res);
    printf("unknown model over nng: %s\n", msg);
    assert_non_null(strstr(msg, "gamma-70b"));
    assert_non_null(strstr(msg, "alpha-7b"));
    assert_non_null(strstr(msg, "beta-3b"));
    lmsched_result_free(res);
    lmsched_request_free(r);

    char base[64];
    snprintf(base, sizeof(base), "http://%s", http);
    snprintf(url, sizeof(url), "%s/v1/chat/completions", base);
    kit_http_resp hr;
    assert_int_equal(kit_http("POST", url,
                              "{\"model\":\"gamma-70b\",\"messages\":[{\"role\":\"user\","
                              "\"content\":\"hi\"}]}",
                              10000, &hr),
                     0);
    printf("unknown model over HTTP: %ld %s\n", hr.status, hr.body);
    assert_int_equal(hr.status, 400);
    assert_non_null(strstr(hr.body, "alpha-7b"));
    assert_non_null(strstr(hr.body, "beta-3b"));
    kit_http_resp_fini(&hr);

    snprintf(url, sizeof(url), "%s/v1/models", base);
    json_t *m = kit_http_json("GET", url, NULL, 5000, NULL, NULL, 0);
    assert_non_null(m);
    json_t *data = json_object_get(m, "data");
    assert_int_equal(json_array_size(data), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(data, 0), "id")),
                        "alpha-7b");
    assert_string_equal(json_string_value(json_object_get(json_array_get(data, 1), "id")),
                        "beta-3b");
    json_decref(m);
    lmsched_client_close(c);
    fleet_stop(&f);
}

/* Backends of different contexts: a request with no max_tokens may grow to
 * the context of the backend it runs on, and reserves that much KV there:
 * on the large one, its large context (once it was the first backend's,
 * here the small one's: under-reserved); on the small one, no more than
 * its own. Model routing places each request. */
static void test_fleet_context_per_backend(void **state)
{
    fleet f = {.e = *state};
    /* 2 tokens a second: each answer runs for seconds, long enough to read
     * the reservations while both run */
    const char *sim_a[] = {"--time-scale", "1",  "--decode-tps", "2", "--ctx", "2048", "--model",
                           "alpha-7b",     SMALL_MODEL, NULL};
    const char *sim_b[] = {"--time-scale", "1",  "--decode-tps", "2", "--ctx", "16384", "--model",
                           "beta-3b",      SMALL_MODEL, NULL};
    assert_int_equal(fleet_sim_start(&f, 0, 0, sim_a), 0);
    assert_int_equal(fleet_sim_start(&f, 1, 0, sim_b), 0);
    const char *d[] = {"--total-ram",       "64G",      "--kv-bytes-per-token", "1024",
                       "--backend",         f.url[0],   "--backend",            f.url[1],
                       NULL};
    kit_env_start(f.e, NULL, d);
    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, f.e->url), LMSCHED_OK);
    uint64_t id[2];
    static const char *const models[] = {"alpha-7b", "beta-3b"};
    for (int i = 0; i < 2; i++) {
        lmsched_request *r = kit_req("You reserve by context.", "hello", 0);
        assert_int_equal(lmsched_request_set_model(r, models[i]), LMSCHED_OK);
        assert_int_equal(lmsched_chat_start(c, r, 60000, NULL, NULL, NULL, &id[i]), LMSCHED_OK);
        lmsched_request_free(r);
    }
    assert_int_equal(kit_env_status_wait(f.e, "inflight", 2, 2, 10000), 2);
    json_t *st = kit_env_status(f.e);
    int64_t ra = be_int(st, 0, "reserved_bytes"), rb = be_int(st, 1, "reserved_bytes");
    printf("reserved: ctx 2048 backend %lld bytes, ctx 16384 backend %lld bytes\n",
           (long long)ra, (long long)rb);
    json_decref(st);
    assert_int_equal(ra, 2048 * 1024);
    assert_int_equal(rb, 16384 * 1024);
    for (int i = 0; i < 2; i++) {
        lmsched_result *res = NULL;
        assert_int_equal(lmsched_wait(c, id[i], &res), LMSCHED_OK);
        assert_string_equal(lmsched_result_model(res), models[i]);
        lmsched_result_free(res);
    }
    lmsched_client_close(c);
    fleet_stop(&f);
}

/* The sum of key over the backends' status entries. */
static int64_t be_sum(json_t *st, const char *key, int n)
{
    int64_t sum = 0;
    for (int i = 0; i < n; i++)
        sum += be_int(st, i, key);
    return sum;
}

/* lmsim i's /sim/stats counter key. */
static int64_t sim_stat(fleet *f, int i, const char *key)
{
    char url[256];
    snprintf(url, sizeof(url), "%s/sim/stats", f->url[i]);
    json_t *s = kit_http_json("GET", url, NULL, 5000, NULL, NULL, 0);
    assert_non_null(s);
    int64_t v = kit_json_int(s, key);
    json_decref(s);
    return v;
}

/* Two lmsims, the second answering every chat with a 500 (--fail-rate 1):
 * after --backend-errors 3 in a row it is taken out, the failed requests
 * are retried on the first, the queued ones go there too, and every
 * request is answered, ok. Its probe (which lmsim answers) brings it back
 * for a moment at most every 2 s; each time it fails again and goes out. */
static void test_fleet_error_burst(void **state)
{
    fleet f = {.e = *state};
    const char *good[] = {"--time-scale", "20", "--slots", "4", SMALL_MODEL, NULL};
    const char *bad[] = {"--time-scale", "20", "--slots",  "4",
                         "--fail-rate",  "1",  SMALL_MODEL, NULL};
    assert_int_equal(fleet_sim_start(&f, 0, 0, good), 0);
    assert_int_equal(fleet_sim_start(&f, 1, 0, bad), 0);
    char http[32];
    snprintf(http, sizeof(http), "127.0.0.1:%d", kit_net_free_port());
    const char *d[] = {MEM,       "--backend", f.url[0], "--backend", f.url[1],
                       "--backend-errors", "3", "--http", http, NULL};
    kit_env_start(f.e, NULL, d);
    enum { N = 40, G = 4 };
    char *prompts[GROUPS];
    for (int g = 0; g < GROUPS; g++)
        prompts[g] = group_prompt(g);
    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, f.e->url), LMSCHED_OK);
    kit_tally t;
    kit_tally_init(&t);
    for (int k = 0; k < N; k++) {
        char user[64];
        snprintf(user, sizeof(user), "task %d", k);
        lmsched_request *r = kit_req(prompts[k % G], user, 8);
        assert_int_equal(lmsched_chat_async(c, r, 120000, kit_tally_cb, &t), LMSCHED_OK);
        lmsched_request_free(r);
    }
    int done = kit_tally_wait(&t, N, 60000);
    if (done != N || t.by_code[LMSCHED_OK] != N)
        fleet_dump(&f);
    assert_int_equal(done, N);
    assert_int_equal(t.by_code[LMSCHED_OK], N);
    kit_sleep_ms(200);
    assert_int_equal(kit_tally_done(&t), N); /* each answered once */
    json_t *st = kit_env_status(f.e);
    assert_non_null(st);
    int64_t outages = be_int(st, 1, "error_outages");
    int64_t routed_bad = be_int(st, 1, "routed");
    int64_t completed_good = be_int(st, 0, "completed");
    int64_t completed_bad = be_int(st, 1, "completed");
    int64_t retried = kit_json_int(st, "requests.retried");
    json_decref(st);
    int64_t injected = sim_stat(&f, 1, "errors_injected");
    printf("fleet error burst: %d requests over 2 lmsims, the second failing every chat "
           "with a 500: all %d ok, %lld on the good one; the bad one got %lld (%lld 500s) "
           "and was taken out %lld time(s); %lld retries\n",
           N, t.by_code[LMSCHED_OK], (long long)completed_good, (long long)routed_bad,
           (long long)injected, (long long)outages, (long long)retried);
    assert_int_equal(completed_good, N);
    assert_int_equal(completed_bad, 0);
    assert_true(outages >= 1);
    assert_true(injected >= 3);
    /* Taken out after 3 in a row: it gets a few, not its share of 40. */
    assert_true(routed_bad < N / 2);
    /* The log says why; /metrics counts it. */
    assert_true(kit_fs_contains(f.e->daemon.log, "server errors in a row"));
    char url[256], line[300];
    snprintf(url, sizeof(url), "http://%s/metrics", http);
    kit_http_resp hr;
    assert_int_equal(kit_http("GET", url, NULL, 10000, &hr), 0);
    assert_int_equal(hr.status, 200);
    snprintf(line, sizeof(line), "lmsched_backend_error_outages_total{url=\"%s\"} %lld\n",
             f.url[1], (long long)outages);
    assert_non_null(strstr(hr.body, line));
    kit_http_resp_fini(&hr);
    lmsched_client_close(c);
    kit_tally_fini(&t);
    for (int g = 0; g < GROUPS; g++)
        free(prompts[g]);
    fleet_stop(&f);
}

/* One hot group on 2 lmsims of 2 slots: first one request, so its prefix
 * is resident on one backend only; then many at once: its queue per
 * holding slot makes the policy copy the prefix to idle slots, on the
 * other backend too; both serve the burst and both report cached tokens
 * for it, and the status shows it cached in slots of both. */
static void test_fleet_hot_group_spills(void **state)
{
    fleet f = {.e = *state};
    const char *sim[] = {"--time-scale", "20", "--slots", "2", SMALL_MODEL, NULL};
    assert_int_equal(fleet_sim_start(&f, 0, 0, sim), 0);
    assert_int_equal(fleet_sim_start(&f, 1, 0, sim), 0);
    const char *d[] = {MEM, "--backend", f.url[0], "--backend", f.url[1], NULL};
    kit_env_start(f.e, NULL, d);
    enum { N = 48 };
    char *prompt = group_prompt(3);
    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, f.e->url), LMSCHED_OK);
    lmsched_request *first = kit_req(prompt, "warm up", 8);
    lmsched_result *res = NULL;
    assert_int_equal(lmsched_chat(c, first, 30000, &res), LMSCHED_OK);
    lmsched_result_free(res);
    lmsched_request_free(first);
    json_t *st = kit_env_status(f.e);
    assert_non_null(st);
    int64_t before0 = be_int(st, 0, "completed"), before1 = be_int(st, 1, "completed");
    json_decref(st);
    assert_int_equal(before0 + before1, 1);
    kit_tally t;
    kit_tally_init(&t);
    for (int k = 0; k < N; k++) {
        char user[64];
        snprintf(user, sizeof(user), "hot task %d", k);
        lmsched_request *r = kit_req(prompt, user, 8);
        assert_int_equal(lmsched_chat_async(c, r, 120000, kit_tally_cb, &t), LMSCHED_OK);
        lmsched_request_free(r);
    }
    int done = kit_tally_wait(&t, N, 60000);
    if (done != N || t.by_code[LMSCHED_OK] != N)
        fleet_dump(&f);
    assert_int_equal(done, N);
    assert_int_equal(t.by_code[LMSCHED_OK], N);
    st = kit_env_status(f.e);
    assert_non_null(st);
    int64_t c0 = be_int(st, 0, "completed") - before0;
    int64_t c1 = be_int(st, 1, "completed") - before1;
    int64_t k0 = be_int(st, 0, "cached_tokens"), k1 = be_int(st, 1, "cached_tokens");
    int64_t base1 = be_int(st, 1, "first_slot");
    /* Where the status says the group is cached: slots of both backends. */
    json_t *groups = json_object_get(st, "groups"), *g = NULL;
    for (size_t i = 0; i < json_array_size(groups); i++)
        if (kit_json_int(json_array_get(groups, i), "requests") == N + 1)
            g = json_array_get(groups, i);
    assert_non_null(g);
    json_t *in = json_object_get(g, "cached_in_slots");
    bool on0 = false, on1 = false;
    for (size_t i = 0; i < json_array_size(in); i++) {
        json_int_t slot = json_integer_value(json_array_get(in, i));
        on0 = on0 || slot < base1;
        on1 = on1 || slot >= base1;
    }
    int64_t total_completed = be_sum(st, "completed", 2);
    json_decref(st);
    int64_t sk0 = sim_stat(&f, 0, "cached_tokens"), sk1 = sim_stat(&f, 1, "cached_tokens");
    printf("fleet hot group: one request of a group (on backend %d), then %d at once, on 2 "
           "lmsims x 2 slots: %lld and %lld served, %lld and %lld prompt tokens cached "
           "(lmsim: %lld, %lld), cached in slots of backend 0: %s, backend 1: %s\n",
           before0 ? 0 : 1, N, (long long)c0, (long long)c1, (long long)k0, (long long)k1, (long long)sk0,
           (long long)sk1, on0 ? "yes" : "no", on1 ? "yes" : "no");
    assert_int_equal(total_completed, N + 1);
    /* Both serve it, neither only a token share. */
    assert_true(c0 >= N / 6);
    assert_true(c1 >= N / 6);
    /* ... from their caches: each backend holds the prefix. */
    assert_true(sk0 > 0 && sk1 > 0);
    assert_true(k0 > 0 && k1 > 0);
    assert_true(on0 && on1);
    lmsched_client_close(c);
    kit_tally_fini(&t);
    free(prompt);
    fleet_stop(&f);
}

/* --routing round-robin, the benchmarks' baseline: requests one at a time
 * alternate between the backends whatever their prefix; when one dies, the
 * requests bound to it go to the other and every one is answered. */
static void test_fleet_round_robin(void **state)
{
    fleet f = {.e = *state};
    const char *sim[] = {"--time-scale", "20", "--slots", "2", SMALL_MODEL, NULL};
    assert_int_equal(fleet_sim_start(&f, 0, 0, sim), 0);
    assert_int_equal(fleet_sim_start(&f, 1, 0, sim), 0);
    const char *d[] = {MEM, "--backend", f.url[0], "--backend", f.url[1], "--routing",
                       "round-robin", NULL};
    kit_env_start(f.e, NULL, d);
    char *prompt = group_prompt(1);
    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, f.e->url), LMSCHED_OK);
    enum { N = 10 };
    for (int k = 0; k < N; k++) {
        char user[64];
        snprintf(user, sizeof(user), "one at a time %d", k);
        lmsched_request *r = kit_req(prompt, user, 8);
        lmsched_result *res = NULL;
        assert_int_equal(lmsched_chat(c, r, 30000, &res), LMSCHED_OK);
        lmsched_result_free(res);
        lmsched_request_free(r);
    }
    json_t *st = kit_env_status(f.e);
    assert_non_null(st);
    /* The same prefix each time, yet alternating: the baseline ignores it. */
    assert_int_equal(be_int(st, 0, "routed"), N / 2);
    assert_int_equal(be_int(st, 1, "routed"), N / 2);
    json_decref(st);
    assert_int_equal(sim_stat(&f, 0, "requests"), N / 2);
    assert_int_equal(sim_stat(&f, 1, "requests"), N / 2);

    /* lmsim 1 dies: what is bound to it goes to lmsim 0. */
    assert_int_equal(kit_proc_stop(&f.sim[1], SIGKILL, 5000), 128 + SIGKILL);
    kit_tally t;
    kit_tally_init(&t);
    for (int k = 0; k < N; k++) {
        char user[64];
        snprintf(user, sizeof(user), "after the kill %d", k);
        lmsched_request *r = kit_req(prompt, user, 8);
        assert_int_equal(lmsched_chat_async(c, r, 60000, kit_tally_cb, &t), LMSCHED_OK);
        lmsched_request_free(r);
    }
    int done = kit_tally_wait(&t, N, 30000);
    if (done != N || t.by_code[LMSCHED_OK] != N)
        fleet_dump(&f);
    assert_int_equal(done, N);
    assert_int_equal(t.by_code[LMSCHED_OK], N);
    st = kit_env_status(f.e);
    assert_non_null(st);
    printf("fleet round-robin: %d requests one at a time: %lld and %lld; lmsim 1 killed, "
           "%d more at once: all ok, lmsim 0 completed %lld in all\n",
           N, (long long)N / 2, (long long)N / 2, N, (long long)be_int(st, 0, "completed"));
    assert_int_equal(be_int(st, 0, "completed"), N / 2 + N);
    assert_false(be_healthy(st, 1));
    json_decref(st);
    lmsched_client_close(c);
    kit_tally_fini(&t);
    free(prompt);
    fleet_stop(&f);
}

/* --routing least-loaded: a burst of one group's requests is split by
 * queued plus running counts, half to each backend. */
static void test_fleet_least_loaded(void **state)
{
    fleet f = {.e = *state};
    const char *sim[] = {"--time-scale", "20", "--slots", "2", SMALL_MODEL, NULL};
    assert_int_equal(fleet_sim_start(&f, 0, 0, sim), 0);
    assert_int_equal(fleet_sim_start(&f, 1, 0, sim), 0);
    const char *d[] = {MEM, "--backend", f.url[0], "--backend", f.url[1], "--routing",
                       "least-loaded", NULL};
    kit_env_start(f.e, NULL, d);
    char *prompt = group_prompt(2);
    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, f.e->url), LMSCHED_OK);
    enum { N = 16 };
    kit_tally t;
    kit_tally_init(&t);
    for (int k = 0; k < N; k++) {
        char user[64];
        snprintf(user, sizeof(user), "burst %d", k);
        lmsched_request *r = kit_req(prompt, user, 8);
        assert_int_equal(lmsched_chat_async(c, r, 60000, kit_tally_cb, &t), LMSCHED_OK);
        lmsched_request_free(r);
    }
    assert_int_equal(kit_tally_wait(&t, N, 30000), N);
    assert_int_equal(t.by_code[LMSCHED_OK], N);
    json_t *st = kit_env_status(f.e);
    assert_non_null(st);
    int64_t r0 = be_int(st, 0, "routed"), r1 = be_int(st, 1, "routed");
    json_decref(st);
    printf("fleet least-loaded: %d requests of one group at once: %lld and %lld\n", N,
           (long long)r0, (long long)r1);
    assert_int_equal(r0 + r1, N);
    /* Answers coming back while the burst arrives may tip one or two. */
    assert_true(r0 >= N / 2 - 2 && r1 >= N / 2 - 2);
    lmsched_client_close(c);
    kit_tally_fini(&t);
    free(prompt);
    fleet_stop(&f);
}

/* Writes the backends file. */
static void write_backends(const char *path, const char *text)
{
    assert_int_equal(kit_fs_write(path, text, 0644), 0);
}

/* Sends n requests of 3 groups, first numbered from first. */
static void send_some(lmsched_client *c, char **prompts, int first, int n, kit_tally *t)
{
    for (int k = first; k < first + n; k++) {
        char user[64];
        snprintf(user, sizeof(user), "file task %d", k);
        lmsched_request *r = kit_req(prompts[k % 3], user, 8);
        assert_int_equal(lmsched_chat_async(c, r, 120000, kit_tally_cb, t), LMSCHED_OK);
        lmsched_request_free(r);
    }
}

/* Waits until the status lists n backends and backend i is healthy. */
static bool wait_backend(fleet *f, int n, int i, int timeout_ms)
{
    for (int64_t end = kit_now_ms() + timeout_ms; kit_now_ms() < end; kit_sleep_ms(50)) {
        json_t *st = kit_env_status(f->e);
        bool ok = st != NULL &&
                  json_array_size(json_object_get(st, "backends")) == (size_t)n &&
                  be_healthy(st, i);
        json_decref(st);
        if (ok)
            return true;
    }
    return false;
}

/* --backends-file, read again on SIGHUP while requests are queued and
 * running: a backend added takes work; one removed takes no new request,
 * what ran there finishes, what was queued goes to the other; a file that
 * does not parse changes nothing; every request is answered once, ok; a
 * line's total-ram is that backend's RAM. */
static void test_fleet_backends_file(void **state)
{
    fleet f = {.e = *state};
    const char *sim[] = {"--time-scale", "20", "--slots", "2", SMALL_MODEL, NULL};
    assert_int_equal(fleet_sim_start(&f, 0, 0, sim), 0);
    assert_int_equal(fleet_sim_start(&f, 1, 0, sim), 0);
    char path[600], text[600];
    snprintf(path, sizeof(path), "%s/backends", f.e->dir);
    snprintf(text, sizeof(text), "# the fleet\n%s total-ram=32G\n", f.url[0]);
    write_backends(path, text);
    const char *d[] = {MEM, "--backends-file", path, NULL};
    kit_env_start(f.e, NULL, d);
    json_t *st = kit_env_status(f.e);
    assert_non_null(st);
    assert_int_equal(json_array_size(json_object_get(st, "backends")), 1);
    assert_int_equal(be_int(st, 0, "total_ram"), 32LL << 30);
    json_decref(st);

    char *prompts[3];
    for (int g = 0; g < 3; g++)
        prompts[g] = group_prompt(g);
    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, f.e->url), LMSCHED_OK);
    kit_tally t;
    kit_tally_init(&t);
    int sent = 0;

    /* Add lmsim 1 while 30 requests are queued and running on lmsim 0. */
    send_some(c, prompts, sent, 30, &t);
    sent += 30;
    snprintf(text, sizeof(text), "%s total-ram=32G\n%s\n", f.url[0], f.url[1]);
    write_backends(path, text);
    assert_int_equal(kill(f.e->daemon.pid, SIGHUP), 0);
    bool added = wait_backend(&f, 2, 1, 10000);
    if (!added)
        fleet_dump(&f);
    assert_true(added);
    send_some(c, prompts, sent, 30, &t);
    sent += 30;
    assert_int_equal(kit_tally_wait(&t, sent, 60000), sent);
    int64_t on1 = sim_stat(&f, 1, "requests");
    assert_true(on1 > 0);
    st = kit_env_status(f.e);
    assert_int_equal(be_int(st, 1, "total_ram"), 64LL << 30); /* --total-ram's */
    json_decref(st);

    /* Remove lmsim 0 while 30 more are queued and running on both. */
    send_some(c, prompts, sent, 30, &t);
    sent += 30;
    snprintf(text, sizeof(text), "%s\n", f.url[1]);
    write_backends(path, text);
    int64_t on0_at_removal = sim_stat(&f, 0, "requests");
    assert_int_equal(kill(f.e->daemon.pid, SIGHUP), 0);
    int done = kit_tally_wait(&t, sent, 60000);
    if (done != sent)
        fleet_dump(&f);
    assert_int_equal(done, sent);
    int64_t on0 = sim_stat(&f, 0, "requests");
    st = kit_env_status(f.e);
    assert_true(json_is_true(json_object_get(
        json_array_get(json_object_get(st, "backends"), 0), "removed")));
    json_decref(st);
    /* Nothing new goes there; the rest go to lmsim 1. */
    send_some(c, prompts, sent, 20, &t);
    sent += 20;
    assert_int_equal(kit_tally_wait(&t, sent, 60000), sent);
    assert_int_equal(sim_stat(&f, 0, "requests"), on0);

    /* A file that does not parse changes nothing. */
    write_backends(path, "not-a-url\n");
    assert_int_equal(kill(f.e->daemon.pid, SIGHUP), 0);
    kit_sleep_ms(300);
    assert_true(kit_fs_contains(f.e->daemon.log, "the backends stay as they are"));
    send_some(c, prompts, sent, 10, &t);
    sent += 10;
    assert_int_equal(kit_tally_wait(&t, sent, 60000), sent);
    assert_int_equal(sim_stat(&f, 0, "requests"), on0);

    kit_sleep_ms(200);
    assert_int_equal(kit_tally_done(&t), sent); /* each answered once */
    assert_int_equal(t.by_code[LMSCHED_OK], sent);
    st = kit_env_status(f.e);
    int64_t received = kit_json_int(st, "requests.received");
    int64_t completed = kit_json_int(st, "requests.completed");
    json_decref(st);
    printf("fleet backends file: %d requests; lmsim 1 added by SIGHUP under load (then %lld "
           "on it), lmsim 0 removed by SIGHUP with %lld done there: %lld more finished there, "
           "none after; a bad file changed nothing; %lld received, %lld completed\n",
           sent, (long long)on1, (long long)on0_at_removal,
           (long long)(on0 - on0_at_removal), (long long)received, (long long)completed);
    assert_int_equal(received, sent);
    assert_int_equal(completed, sent);
    lmsched_client_close(c);
    kit_tally_fini(&t);
    for (int g = 0; g < 3; g++)
        free(prompts[g]);
    fleet_stop(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_fleet_models, kit_env_setup, kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_fleet_context_per_backend, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_fleet_stickiness, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_fleet_failover, kit_env_setup, kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_fleet_error_burst, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_fleet_hot_group_spills, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_fleet_round_robin, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_fleet_least_loaded, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_fleet_backends_file, kit_env_setup,
                                        kit_env_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
