/*
 * prefix_test - prefix-aware scheduling against lmsim, measured by lmsim's
 * own ground truth: the same small workload run through the daemon with
 * --policy fifo and with --policy prefix, on a fresh backend each time;
 * prefix must prefill fewer tokens. And the restore probe: the daemon
 * knows, before its first request, whether the backend restores evicted
 * prompts (lmsim with and without --host-cache).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kit/env.h"
#include "kit/json.h"
#include "kit/proc.h"
#include "lmsched/agent.h"

enum { GROUPS = 4, PER_GROUP = 2, ROUNDS = 3 };

/* A system prompt of about 1,500 tokens (6,000 bytes), distinct per role. */
static char *role_prompt(int g)
{
    size_t cap = 6200;
    char *p = malloc(cap);
    size_t n = (size_t)snprintf(p, cap, "You are role %d of a review board. ", g);
    static const char *const words[] = {"check", "every",  "claim", "against", "evidence",
                                        "and",   "report", "what",  "fails",   "first"};
    unsigned x = 2654435761u * (unsigned)(g + 1);
    while (n + 16 < 6000) {
        x = x * 1103515245u + 12345u;
        n += (size_t)snprintf(p + n, cap - n, "%s ", words[(x >> 16) % 10]);
    }
    return p;
}

typedef struct run_result {
    int64_t prefill, cached, prompt;
    int ok;
} run_result;

static void run_policy(kit_env *e, const char *policy, run_result *out)
{
    assert_int_equal(kit_env_sim_reset(e), 0);
    const char *d[] = {"--policy", policy, NULL};
    if (kit_env_daemon_start(e, d) != 0) {
        kit_env_dump_logs(e);
        fail_msg("daemon did not start with --policy %s", policy);
    }
    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, e->url), LMSCHED_OK);
    char *prompts[GROUPS];
    for (int g = 0; g < GROUPS; g++)
        prompts[g] = role_prompt(g);
    memset(out, 0, sizeof(*out));
    for (int r = 0; r < ROUNDS; r++) {
        /* Interleaved arrival (A B C D A B C D), as independent agents send. */
        lmsched_request *reqs[GROUPS * PER_GROUP];
        lmsched_result *res[GROUPS * PER_GROUP];
        for (int i = 0; i < GROUPS * PER_GROUP; i++) {
            char q[64];
            snprintf(q, sizeof(q), "round %d, question %d", r, i);
            lmsched_request_alloc(&reqs[i]);
            lmsched_request_set_system(reqs[i], prompts[i % GROUPS]);
            lmsched_request_add_message(reqs[i], "user", q);
            lmsched_request_set_max_tokens(reqs[i], 8);
        }
        assert_int_equal(lmsched_chat_batch(c, (const lmsched_request *const *)reqs,
                                            GROUPS * PER_GROUP, 60000, res),
                         LMSCHED_OK);
        for (int i = 0; i < GROUPS * PER_GROUP; i++) {
            if (lmsched_result_error(res[i]) == LMSCHED_OK)
                out->ok++;
            else
                fprintf(stderr, "%s: %s\n", policy, lmsched_result_message(res[i]));
            lmsched_result_free(res[i]);
            lmsched_request_free(reqs[i]);
        }
    }
    json_t *st = kit_env_sim_get(e, "/sim/stats");
    assert_non_null(st);
    out->prefill = kit_json_int(st, "prefill_tokens");
    out->cached = kit_json_int(st, "cached_tokens");
    out->prompt = kit_json_int(st, "prompt_tokens");
    json_decref(st);
    if (strcmp(policy, "prefix") == 0) {
        json_t *ds = kit_env_status(e);
        assert_non_null(ds);
        json_t *groups = kit_json_get(ds, "groups");
        assert_true(json_is_array(groups));
        assert_int_equal(json_array_size(groups), GROUPS);
        json_decref(ds);
    }
    lmsched_client_close(c);
    for (int g = 0; g < GROUPS; g++)
        free(prompts[g]);
    assert_int_equal(kit_proc_stop(&e->daemon, 15, 10000), 0);
}

static void test_prefix_prefills_less_than_fifo(void **state)
{
    kit_env e;
    kit_env_init(&e);
    const char *sim[] = {"--time-scale", "50", "--slots", "2", NULL};
    assert_int_equal(kit_env_sim_start(&e, 0, sim), 0);
    run_result fifo, prefix;
    run_policy(&e, "fifo", &fifo);
    run_policy(&e, "prefix", &prefix);
    printf("prefill tokens: fifo %lld, prefix %lld (prompt %lld; cached fifo %lld, "
           "prefix %lld)\n",
           (long long)fifo.prefill, (long long)prefix.prefill, (long long)prefix.prompt,
           (long long)fifo.cached, (long long)prefix.cached);
    int n = GROUPS * PER_GROUP * ROUNDS;
    assert_int_equal(fifo.ok, n);
    assert_int_equal(prefix.ok, n);
    assert_int_equal(fifo.prompt, prefix.prompt);
    assert_true(prefix.prefill < fifo.prefill);
    /* Each group's prefix needs loading at least once; with 2 slots and 4
     * groups per round, prefix should stay within 2 loads per group per round. */
    assert_true(prefix.prefill <= fifo.prefill * 3 / 4);
    kit_env_fini(&e);
}

/* The daemon's verdict on an lmsim with these flags, right after start:
 * backends[0].restore_probe, and the policy's restore figures. Checks
 * that no request but the probe's three reached lmsim. */
static char *probe_verdict(const char *const *sim, const char *const *daemon,
                           json_t **restore)
{
    kit_env e;
    kit_env_init(&e);
    assert_int_equal(kit_env_sim_start(&e, 0, sim), 0);
    if (kit_env_daemon_start(&e, daemon) != 0) {
        kit_env_dump_logs(&e);
        fail_msg("daemon did not start");
    }
    json_t *ds = kit_env_status(&e);
    assert_non_null(ds);
    json_t *b0 = json_array_get(kit_json_get(ds, "backends"), 0);
    const char *v = json_string_value(json_object_get(b0, "restore_probe"));
    assert_non_null(v);
    char *out = strdup(v);
    *restore = json_incref(kit_json_get(ds, "restore"));
    assert_int_equal(kit_json_int(ds, "requests.received"), 0);
    json_decref(ds);
    json_t *st = kit_env_sim_get(&e, "/sim/stats");
    assert_non_null(st);
    int64_t n = kit_json_int(st, "requests");
    assert_int_equal(n, strcmp(out, "off") == 0 ? 0 : 3);
    json_decref(st);
    kit_env_fini(&e);
    return out;
}

static void test_restore_probe(void **state)
{
    (void)state;
    const char *plain[] = {"--time-scale", "50", "--slots", "2", NULL};
    const char *host[] = {"--time-scale", "50", "--slots", "2", "--host-cache", "100000",
                          NULL};
    const char *pinned[] = {"--backend-kind", "llamacpp", "--slots", "2", NULL};
    const char *off[] = {"--backend-kind", "llamacpp", "--slots", "2", "--probe-restore",
                         "off", NULL};
    json_t *r = NULL;

    char *v = probe_verdict(host, pinned, &r);
    assert_string_equal(v, "restores");
    assert_true(json_is_true(json_object_get(r, "restoring")));
    assert_true(json_real_value(json_object_get(r, "share")) >= 0.9);
    assert_int_equal(json_integer_value(json_object_get(r, "reloads")), 3);
    free(v);
    json_decref(r);

    v = probe_verdict(plain, pinned, &r);
    assert_string_equal(v, "no_restore");
    assert_true(json_is_false(json_object_get(r, "restoring")));
    assert_true(json_real_value(json_object_get(r, "share")) <= 0.1);
    free(v);
    json_decref(r);

    /* Turned off: learned from traffic only, nothing known at start. */
    v = probe_verdict(host, off, &r);
    assert_string_equal(v, "off");
    assert_true(json_is_false(json_object_get(r, "restoring")));
    assert_true(json_is_null(json_object_get(r, "share")));
    free(v);
    json_decref(r);

    /* lmsim as LM Studio places requests itself: no slot to probe. */
    const char *auto_kind[] = {NULL};
    v = probe_verdict(host, auto_kind, &r);
    assert_string_equal(v, "off");
    free(v);
    json_decref(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prefix_prefills_less_than_fifo),
        cmocka_unit_test(test_restore_probe),
    };
    return cmocka_run_group_tests_name("prefix", tests, NULL, NULL);
}
