/*
 * fleet_real_test - one daemon in front of two real llama.cpp llama-servers
 * (issue 14): two servers of 2 slots each (`-np 2 -c 16384`, host prompt
 * cache off), started by scripts/llama-server from its chroot, each with a
 * state dir of its own.
 *
 * - Four prefix groups spread over both servers, and both report cached
 *   tokens for the requests routed to them (the groups stay where their
 *   prefix is).
 * - One server killed with kill -9 in the middle of a run: every request
 *   gets exactly one reply (answered by the other server, or, for the few
 *   that were generating on the killed one, the "answer was cut" stream
 *   error), and the server rejoins once restarted on its port.
 *
 * Needs servers of its own (root and the chroot): skipped, saying why,
 * otherwise, and also when LMSCHED_LLAMA_URL names a server started by hand.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "kit/check.h"
#include "kit/clock.h"
#include "kit/env.h"
#include "kit/json.h"
#include "kit/pstat.h"
#include "kit/tally.h"
#include "lmsched/agent.h"
#include "real/llama.h"

#define FR_TIMEOUT_MS 120000
#define FR_SERVER_ARGS "-np 2 -c 16384 -t 1 -tb 1"
enum { FR_SERVERS = 2, FR_GROUPS = 4 };

static struct {
    const char *skip_why;
    rl_server srv[FR_SERVERS];
    bool started[FR_SERVERS];
} fr;

static int group_setup(void **state)
{
    (void)state;
    const char *url = getenv("LMSCHED_LLAMA_URL");
    if (url != NULL && *url != '\0')
        fr.skip_why = "LMSCHED_LLAMA_URL names one server started by hand; this test "
                      "starts two of its own";
    else
        fr.skip_why = rl_unusable();
    if (fr.skip_why != NULL) {
        printf("skipped: %s\n", fr.skip_why);
        return 0;
    }
    static const char *const names[FR_SERVERS] = {"fleet-a", "fleet-b"};
    for (int i = 0; i < FR_SERVERS; i++) {
        if (rl_init(&fr.srv[i], names[i]) != 0 || rl_start(&fr.srv[i], 0, FR_SERVER_ARGS) != 0)
            return -1;
        fr.started[i] = true;
        printf("fleet_real: llama-server %d at %s (%s, state %s)\n", i, fr.srv[i].url,
               FR_SERVER_ARGS, fr.srv[i].state);
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    for (int i = 0; i < FR_SERVERS; i++)
        if (fr.started[i])
            rl_fini(&fr.srv[i]);
    return 0;
}

static int setup(void **state)
{
    *state = NULL;
    if (fr.skip_why != NULL)
        return 0;
    kit_env *e = calloc(1, sizeof(*e));
    assert_non_null(e);
    kit_env_init(e);
    *state = e;
    const char *args[] = {"--backend", fr.srv[0].url, "--backend", fr.srv[1].url, NULL};
    if (kit_env_daemon_start(e, args) != 0) {
        kit_env_dump_logs(e);
        fail_msg("lmsched serve did not start against %s and %s", fr.srv[0].url,
                 fr.srv[1].url);
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

static kit_env *fr_env(void **state)
{
    if (*state == NULL)
        kit_skip_if(fr.skip_why != NULL ? fr.skip_why : "no servers",
                    "two real llama-servers behind one daemon");
    return *state;
}

/* A system prompt of group g that no earlier run left in a server's cache:
 * about 250 tokens, so a hit is plain in the cached counts. */
static void fr_system(char *buf, size_t len, const char *what, int g)
{
    snprintf(buf, len,
             "Run %ld.%d (%s), role %d. You are a careful assistant of a team. The software "
             "license grants permission to use, copy, modify and distribute the program "
             "under the terms of the license, provided that the copyright notice and this "
             "permission notice appear in all copies of the software and its documentation. "
             "Answer in short sentences, name your sources, and say when you do not know. "
             "Keep a list of open questions and return it at the end of every answer. "
             "Prefer plain words to jargon, and numbers to adjectives, wherever you can.",
             (long)time(NULL), (int)getpid(), what, g);
}

/* Sends n requests, round-robin over FR_GROUPS groups, all at once. */
static void fr_send(lmsched_client *c, kit_tally *t, const char *what, int n, int max_tokens)
{
    char sys[FR_GROUPS][1024];
    for (int g = 0; g < FR_GROUPS; g++)
        fr_system(sys[g], sizeof(sys[g]), what, g);
    for (int i = 0; i < n; i++) {
        char user[64];
        snprintf(user, sizeof(user), "Question %d.", i);
        lmsched_request *r = kit_req(sys[i % FR_GROUPS], user, max_tokens);
        assert_int_equal(lmsched_request_set_temperature(r, 0.0), LMSCHED_OK);
        assert_int_equal(lmsched_chat_async(c, r, FR_TIMEOUT_MS, kit_tally_cb, t), LMSCHED_OK);
        lmsched_request_free(r);
    }
}

static int64_t fr_backend_int(const json_t *st, int i, const char *key)
{
    json_t *v = json_object_get(json_array_get(json_object_get(st, "backends"), (size_t)i), key);
    return json_is_integer(v) ? (int64_t)json_integer_value(v) : -1;
}

static bool fr_backend_healthy(const json_t *st, int i)
{
    return json_is_true(
        json_object_get(json_array_get(json_object_get(st, "backends"), (size_t)i), "healthy"));
}

/* Both servers take part, and each reports cached tokens for what it ran. */
static void test_two_servers_cached(void **state)
{
    kit_env *e = fr_env(state);
    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, e->url), LMSCHED_OK);
    kit_tally t;
    kit_tally_init(&t);
    enum { N = 32 };
    fr_send(c, &t, "cached", N, 8);
    int done = kit_tally_wait(&t, N, FR_TIMEOUT_MS);
    if (done != N || t.by_code[LMSCHED_OK] != N)
        kit_env_dump_logs(e);
    assert_int_equal(done, N);
    assert_int_equal(t.by_code[LMSCHED_OK], N);
    json_t *st = kit_env_status(e);
    assert_non_null(st);
    assert_int_equal(json_array_size(json_object_get(st, "backends")), FR_SERVERS);
    int64_t routed[FR_SERVERS], prompt[FR_SERVERS], cached[FR_SERVERS];
    for (int i = 0; i < FR_SERVERS; i++) {
        routed[i] = fr_backend_int(st, i, "routed");
        prompt[i] = fr_backend_int(st, i, "prompt_tokens");
        cached[i] = fr_backend_int(st, i, "cached_tokens");
        printf("server %d (%s): %lld routed, %lld of %lld prompt tokens cached\n", i,
               fr.srv[i].url, (long long)routed[i], (long long)cached[i],
               (long long)prompt[i]);
    }
    json_decref(st);
    if (routed[0] * routed[1] == 0 || cached[0] * cached[1] == 0)
        kit_env_dump_logs(e);
    for (int i = 0; i < FR_SERVERS; i++) {
        assert_true(routed[i] > 0);
        /* The servers' own counts: most of each group's prompt is its system
         * prompt, reused after the group's first request on a slot. */
        assert_true(cached[i] > 0);
    }
    assert_int_equal(routed[0] + routed[1], N);
    /* 4 groups over 4 slots: at most a load per slot and group, the rest
     * hits. */
    assert_true(cached[0] + cached[1] > (prompt[0] + prompt[1]) / 2);
    kit_tally_fini(&t);
    lmsched_client_close(c);
}

/* One server killed mid-run: one reply per request, the other server
 * carries on, and the killed one rejoins once restarted. */
static void test_one_server_killed(void **state)
{
    kit_env *e = fr_env(state);
    lmsched_client *c;
    assert_int_equal(lmsched_client_open(&c, e->url), LMSCHED_OK);
    /* static: a failed assertion leaves the chats in flight, and their
     * callbacks must not write into a dead stack frame */
    static kit_tally t;
    kit_tally_init(&t);
    enum { N = 40 };
    fr_send(c, &t, "killed", N, 48);
    /* Until a few are answered, and the server to kill is generating. */
    bool busy = false;
    for (int i = 0; i < 3000 && !(busy && kit_tally_done(&t) >= 6); i++) {
        json_t *st = kit_env_status(e);
        busy = st != NULL && fr_backend_int(st, 1, "inflight") > 0;
        json_decref(st);
        kit_sleep_ms(10);
    }
    assert_true(busy);
    pid_t pid = (pid_t)rl_state_long(&fr.srv[1], "pid");
    assert_true(pid > 1);
    int before = kit_tally_done(&t);
    assert_int_equal(kill(pid, SIGKILL), 0);
    int done = kit_tally_wait(&t, N, FR_TIMEOUT_MS);
    if (done != N)
        kit_env_dump_logs(e);
    assert_int_equal(done, N);
    int ok = t.by_code[LMSCHED_OK], cut = t.by_code[LMSCHED_EBACKEND_STREAM];
    printf("killed llama-server 1 (pid %d) after %d of %d answers: %d ok, %d cut mid-answer "
           "(%s), %d other\n",
           (int)pid, before, N, ok, cut, cut ? t.sample[LMSCHED_EBACKEND_STREAM] : "-",
           N - ok - cut);
    /* Only what was generating on the killed server (2 slots) may fail. */
    assert_int_equal(ok + cut, N);
    assert_true(cut <= 2);
    json_t *st = kit_env_status(e);
    assert_non_null(st);
    assert_false(fr_backend_healthy(st, 1));
    int64_t routed1 = fr_backend_int(st, 1, "routed");
    json_decref(st);

    /* Restart on its port; the daemon's probe finds it again. */
    int rc = -1;
    for (int i = 0; i < 20 && rc != 0; i++) {
        rc = rl_start(&fr.srv[1], fr.srv[1].port, FR_SERVER_ARGS);
        if (rc != 0)
            kit_sleep_ms(250);
    }
    assert_int_equal(rc, 0);
    bool healthy = false;
    for (int i = 0; i < 300 && !healthy; i++) {
        st = kit_env_status(e);
        healthy = st != NULL && fr_backend_healthy(st, 1);
        json_decref(st);
        if (!healthy)
            kit_sleep_ms(50);
    }
    assert_true(healthy);
    /* Fresh groups: with the other server's 2 slots busy, some run here. */
    kit_tally_fini(&t);
    kit_tally_init(&t);
    fr_send(c, &t, "rejoined", 16, 24);
    assert_int_equal(kit_tally_wait(&t, 16, FR_TIMEOUT_MS), 16);
    assert_int_equal(t.by_code[LMSCHED_OK], 16);
    st = kit_env_status(e);
    int64_t after = fr_backend_int(st, 1, "routed") - routed1;
    json_decref(st);
    printf("after the restart llama-server 1 took %lld of 16 requests\n", (long long)after);
    assert_true(after > 0);
    kit_tally_fini(&t);
    lmsched_client_close(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_two_servers_cached, setup, teardown),
        cmocka_unit_test_setup_teardown(test_one_server_killed, setup, teardown),
    };
    return cmocka_run_group_tests_name("fleet_real", tests, group_setup, group_teardown);
}
