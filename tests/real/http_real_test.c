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

#define REAL_SCRIPT_WAIT_S 120

static struct {
    char url[128];
    const char *skip_why;
    bool owned;
    bool made_state; /* a temp dir of ours, removed at the end */
    char state[256];
    char script[512];
} srv;

static int srv_script(const char *args)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "LMSCHED_LLAMA_STATE='%s' timeout %d '%s' %s", srv.state,
             REAL_SCRIPT_WAIT_S, srv.script, args);
    int st = system(cmd);
    return st == -1 ? -1 : WEXITSTATUS(st);
}

static int group_setup(void **state)
{
    (void)state;
    const char *url = getenv("LMSCHED_LLAMA_URL");
    if (url != NULL && *url != '\0') {
        snprintf(srv.url, sizeof(srv.url), "%s", url);
        return 0;
    }
    const char *script = getenv("LMSCHED_LLAMA_SCRIPT");
    const char *root = getenv("LMSCHED_LLAMA_ROOT");
    char path[600];
    if (root == NULL || *root == '\0')
        root = "/var/cache/lmsched/sid";
    snprintf(path, sizeof(path), "%s/models/tiny.gguf", root);
    struct stat st;
    if (script == NULL || access(script, X_OK) != 0)
        srv.skip_why = "LMSCHED_LLAMA_URL not set and scripts/llama-server not found";
    else if (geteuid() != 0)
        srv.skip_why =
            "LMSCHED_LLAMA_URL not set and not root (scripts/llama-server needs it)";
    else if (stat(path, &st) != 0)
        srv.skip_why = "LMSCHED_LLAMA_URL not set and no llama-server chroot (run "
                       "scripts/llama-server setup as root)";
    if (srv.skip_why != NULL) {
        printf("skipped: %s\n", srv.skip_why);
        return 0;
    }
    snprintf(srv.script, sizeof(srv.script), "%s", script);
    /* scripts/test's state dir when it runs the suite: its trap stops
     * whatever server is left there, even if this test dies. */
    const char *st_dir = getenv("LMSCHED_REAL_STATE");
    if (st_dir != NULL && *st_dir != '\0') {
        snprintf(srv.state, sizeof(srv.state), "%s", st_dir);
        mkdir(srv.state, 0700);
    } else {
        snprintf(srv.state, sizeof(srv.state), "/tmp/lmsched-http-real-XXXXXX");
        if (mkdtemp(srv.state) == NULL)
            return -1;
        srv.made_state = true;
    }
    srv.owned = true;
    if (srv_script("start >/dev/null") != 0) {
        fprintf(stderr, "http_real: scripts/llama-server start failed (state %s)\n",
                srv.state);
        return -1;
    }
    snprintf(path, sizeof(path), "%s/port", srv.state);
    long port = -1;
    if (kit_fs_read_long(path, &port) != 0 || port <= 0)
        return -1;
    snprintf(srv.url, sizeof(srv.url), "http://127.0.0.1:%ld", port);
    printf("http_real: started llama-server at %s\n", srv.url);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    if (!srv.owned)
        return 0;
    srv_script("stop >/dev/null 2>&1");
    if (srv.made_state)
        kit_fs_rm_tree(srv.state);
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
