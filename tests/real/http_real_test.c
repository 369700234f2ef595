/*
 * http_real_test - the HTTP front door against a real llama.cpp
 * llama-server (issue 12): the official `openai` JavaScript client through
 * `lmsched serve --http`, whole and streamed, with the cached tokens the
 * server reports coming back in usage.prompt_tokens_details.cached_tokens.
 *
 * Which server, as real_test.c: LMSCHED_LLAMA_URL, else one started with
 * scripts/llama-server (root and its chroot needed), else skipped saying
 * why. Node and the client's packages come from scripts/test (npm ci);
 * without them it is skipped too.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "http/hx.h"
#include "kit/check.h"
#include "kit/fs.h"
#include "kit/json.h"
#include "real/llama.h"

static struct {
    char url[128];
    const char *skip_why;
    bool owned;
    rl_server srv;
} srv;

static int group_setup(void **state)
{
    (void)state;
    const char *url = getenv("LMSCHED_LLAMA_URL");
    if (url != NULL && *url != '\0') {
        snprintf(srv.url, sizeof(srv.url), "%s", url);
        return 0;
    }
    if ((srv.skip_why = rl_unusable()) != NULL) {
        printf("skipped: %s\n", srv.skip_why);
        return 0;
    }
    /* scripts/test's state dir when it runs the suite: its trap stops
     * whatever server is left there, even if this test dies. */
    if (rl_init(&srv.srv, NULL) != 0)
        return -1;
    srv.owned = true;
    if (rl_start(&srv.srv, 0, NULL) != 0) {
        fprintf(stderr, "http_real: scripts/llama-server start failed (state %s)\n",
                srv.srv.state);
        return -1;
    }
    snprintf(srv.url, sizeof(srv.url), "%s", srv.srv.url);
    printf("http_real: started llama-server at %s\n", srv.url);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    if (srv.owned)
        rl_fini(&srv.srv);
    return 0;
}

/* The openai client through lmsched, whole and streamed: cached tokens
 * reported the second time. */
static void test_openai_client(void **state)
{
    hx *h = *state;
    kit_skip_if(srv.skip_why, "the real llama.cpp suite");
    kit_skip_if(hx_node_missing(), "the openai client");
    snprintf(h->e.backend, sizeof(h->e.backend), "%s", srv.url);
    hx_start(h, NULL, NULL);
    char tag[64];
    snprintf(tag, sizeof(tag), "%ld.%d", (long)time(NULL), (int)getpid());
    assert_int_equal(hx_run_node(h, "openai_client.mjs", "real", tag, 180000), 0);
    json_t *st = kit_env_status(&h->e);
    assert_non_null(st);
    assert_string_equal(json_string_value(kit_json_get(st, "backend.kind")), "llamacpp");
    assert_int_equal(kit_json_int(st, "requests.completed"), 3);
    assert_true(kit_json_int(st, "tokens.cached") > 0);
    json_decref(st);
    hx_stop(h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_openai_client, hx_setup, hx_teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
