/*
 * restore_real_test - the restore probe against real llama.cpp
 * llama-servers (docs/scheduling.md, "The cost model"): one with its
 * default host prompt cache (--cache-ram 8192 MiB), which restores a
 * prompt its slot lost, and one with --cache-ram 0, which does not. Right
 * after start, before any request, the daemon's status says which is
 * which, and the prefix policy counts the first as restoring.
 *
 * Needs servers of its own (root and the chroot): skipped, saying why,
 * otherwise, and also when LMSCHED_LLAMA_URL names a server started by hand.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "kit/check.h"
#include "kit/env.h"
#include "kit/json.h"
#include "real/llama.h"

static const char *rr_skip(void)
{
    const char *url = getenv("LMSCHED_LLAMA_URL");
    if (url != NULL && *url != '\0')
        return "LMSCHED_LLAMA_URL names one server started by hand; this test starts "
               "two of its own (with and without the host cache)";
    return rl_unusable();
}

/* Starts a server (cache_ram NULL: its default), a daemon in front of it,
 * and checks the daemon's verdict and the policy's figures. */
static void rr_check(const char *name, const char *cache_ram, const char *want,
                     bool restoring)
{
    rl_server srv;
    memset(&srv, 0, sizeof(srv));
    assert_int_equal(rl_init(&srv, name), 0);
    if (rl_start_cache(&srv, 0, cache_ram, NULL) != 0) {
        rl_fini(&srv);
        fail_msg("llama-server %s did not start", name);
    }
    kit_env e;
    kit_env_init(&e);
    const char *args[] = {"--backend", srv.url, NULL};
    if (kit_env_daemon_start(&e, args) != 0) {
        kit_env_dump_logs(&e);
        kit_env_fini(&e);
        rl_fini(&srv);
        fail_msg("lmsched serve did not start against %s", srv.url);
    }
    json_t *ds = kit_env_status(&e);
    assert_non_null(ds);
    json_t *b0 = json_array_get(kit_json_get(ds, "backends"), 0);
    const char *got = json_string_value(json_object_get(b0, "restore_probe"));
    printf("restore_real: llama-server --cache-ram %s: %s, share %.3f; policy share %.3f\n",
           cache_ram != NULL ? cache_ram : "(default)", got != NULL ? got : "(none)",
           json_number_value(json_object_get(b0, "restore_share")),
           json_number_value(kit_json_get(ds, "restore.share")));
    bool ok = got != NULL && strcmp(got, want) == 0 &&
              json_is_boolean(kit_json_get(ds, "restore.restoring")) &&
              json_boolean_value(kit_json_get(ds, "restore.restoring")) == restoring &&
              kit_json_int(ds, "requests.received") == 0;
    if (!ok)
        kit_env_dump_logs(&e);
    json_decref(ds);
    kit_env_fini(&e);
    rl_fini(&srv);
    assert_true(ok);
}

static void test_probe_tells_host_cache(void **state)
{
    (void)state;
    const char *why = rr_skip();
    if (why != NULL)
        kit_skip_if(why, "the restore probe against real llama-servers");
    rr_check("restore-default", NULL, "restores", true);
    rr_check("restore-off", "0", "no_restore", false);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_probe_tells_host_cache),
    };
    return cmocka_run_group_tests_name("restore_real", tests, NULL, NULL);
}
