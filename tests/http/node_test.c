/*
 * node_test - the real clients against the HTTP front door: the official
 * `openai` JavaScript client (tests/http/node/openai_client.mjs) and a
 * multi-agent program on OpenAI's Agents SDK (tests/http/node/agents.mjs),
 * run by Node against `lmsched serve --http` in front of lmsim. The
 * scripts check what the client sees; this file starts the daemon each
 * scenario needs and checks what the daemon did (a cancel counted and the
 * slot freed, 429s given and retried, refusals counted, the role agents'
 * groups served from the prompt cache).
 *
 * Node and the packages (tests/http/node/package-lock.json) are installed
 * by scripts/test (`npm ci`); without them each test is skipped, saying
 * why. $LMSCHED_NODE names the node binary (default: node on PATH).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hx.h"
#include "kit/check.h"
#include "kit/fs.h"
#include "kit/json.h"

#define T_MS 30000
#define NODE_MS 240000

static void test_basic(void **state)
{
    hx *h = *state;
    kit_skip_if(hx_node_missing(), "the openai client");
    hx_start(h, (const char *[]){"--time-scale", "50", NULL}, NULL);
    assert_int_equal(hx_run_node(h, "openai_client.mjs", "basic", NULL, NODE_MS), 0);
    /* two plain, one stream, three with tools, one json_schema (n=2 was
     * refused before it was a request) */
    assert_true(kit_env_status_wait(&h->e, "requests.completed", 7, 7, T_MS) == 7);
}

/* The client aborts a stream: the daemon counts a cancel, the slot frees. */
static void test_abort(void **state)
{
    hx *h = *state;
    kit_skip_if(hx_node_missing(), "the openai client");
    hx_start(
        h,
        (const char *[]){"--slots", "1", "--time-scale", "1", "--decode-tps", "20", NULL},
        (const char *[]){"--max-concurrent", "1", NULL});
    assert_int_equal(hx_run_node(h, "openai_client.mjs", "abort", NULL, NODE_MS), 0);
    assert_true(
        kit_env_status_wait(&h->e, "requests.failed_by_class.canceled", 1, 1, T_MS) == 1);
    assert_true(kit_env_sim_wait(&h->e, "active", 0, 0, T_MS) == 0);
    assert_true(kit_env_status_wait(&h->e, "inflight", 0, 0, T_MS) == 0);
}

/* 429s that the client retries by itself until every request is in. */
static void test_retry429(void **state)
{
    hx *h = *state;
    kit_skip_if(hx_node_missing(), "the openai client");
    hx_start(
        h,
        (const char *[]){"--slots", "1", "--time-scale", "1", "--decode-tps", "50", NULL},
        (const char *[]){"--max-concurrent", "1", "--max-queue", "1", NULL});
    assert_int_equal(hx_run_node(h, "openai_client.mjs", "retry429", NULL, NODE_MS), 0);
    json_t *st = kit_env_status(&h->e);
    assert_non_null(st);
    printf("retry429: %lld refused busy, %lld completed\n",
           (long long)kit_json_int(st, "requests.rejected_busy"),
           (long long)kit_json_int(st, "requests.completed"));
    assert_true(kit_json_int(st, "requests.rejected_busy") >= 1);
    assert_int_equal(kit_json_int(st, "requests.completed"), 8);
    json_decref(st);
}

static void test_auth(void **state)
{
    hx *h = *state;
    kit_skip_if(hx_node_missing(), "the openai client");
    char path[600];
    snprintf(path, sizeof(path), "%s/token", h->e.dir);
    assert_int_equal(kit_fs_write(path, "node-test-token-1\n", 0600), 0);
    hx_start(h, (const char *[]){"--time-scale", "50", NULL},
             (const char *[]){"--http-token-file", path, NULL});
    assert_int_equal(
        hx_run_node(h, "openai_client.mjs", "auth", "node-test-token-1", NODE_MS), 0);
    assert_true(kit_env_status_wait(&h->e, "requests.auth_refused", 2, 2, T_MS) == 2);
}

/* Twelve runs of a triage agent handing off to three role agents at once:
 * every run completes, and the role prompts are groups served from the
 * prompt cache. */
static void test_agents(void **state)
{
    hx *h = *state;
    kit_skip_if(hx_node_missing(), "the Agents SDK");
    hx_start(h, (const char *[]){"--slots", "4", "--time-scale", "20", NULL}, NULL);
    assert_int_equal(hx_run_node(h, "agents.mjs", "12", NULL, NODE_MS), 0);
    json_t *st = kit_env_status(&h->e);
    assert_non_null(st);
    json_t *groups = json_object_get(st, "groups");
    static const char *const roles[] = {"researcher", "critic", "writer"};
    for (size_t k = 0; k < 3; k++) {
        char want[64];
        snprintf(want, sizeof(want), "You are the %s of a small", roles[k]);
        json_t *g = NULL;
        for (size_t i = 0; i < json_array_size(groups) && g == NULL; i++) {
            const char *label =
                json_string_value(json_object_get(json_array_get(groups, i), "label"));
            if (label != NULL && strncmp(label, want, strlen(want)) == 0)
                g = json_array_get(groups, i);
        }
        if (g == NULL)
            fail_msg("no group for the %s in the status", roles[k]);
        printf("group %-10s requests %lld prompt %lld cached %lld\n", roles[k],
               (long long)kit_json_int(g, "requests"),
               (long long)kit_json_int(g, "prompt_tokens"),
               (long long)kit_json_int(g, "cached_tokens"));
        assert_int_equal(kit_json_int(g, "requests"), 4);
        assert_true(kit_json_int(g, "cached_tokens") > 0);
    }
    assert_int_equal(kit_json_int(st, "requests.failed"), 0);
    assert_int_equal(kit_json_int(st, "requests.completed"), 24); /* triage + role, x12 */
    json_decref(st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_basic, hx_setup, hx_teardown),
        cmocka_unit_test_setup_teardown(test_abort, hx_setup, hx_teardown),
        cmocka_unit_test_setup_teardown(test_retry429, hx_setup, hx_teardown),
        cmocka_unit_test_setup_teardown(test_auth, hx_setup, hx_teardown),
        cmocka_unit_test_setup_teardown(test_agents, hx_setup, hx_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
