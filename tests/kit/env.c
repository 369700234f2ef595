/*
 * env - a test's temp dir, lmsim and daemon (see env.h).
 */
#include "kit/env.h"

#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kit/clock.h"
#include "kit/daemon.h"
#include "kit/fs.h"
#include "kit/http.h"
#include "kit/json.h"
#include "kit/sim.h"

/* Hang guards, not expectations. */
#define KIT_ENV_SIM_START_MS 10000
#define KIT_ENV_HTTP_MS 5000

void kit_env_init(kit_env *e)
{
    memset(e, 0, sizeof(*e));
    e->sim.status = e->daemon.status = -1;
    snprintf(e->dir, sizeof(e->dir), "/tmp/lmsched-test-XXXXXX");
    if (mkdtemp(e->dir) == NULL) {
        perror("kit: mkdtemp");
        abort();
    }
    snprintf(e->url, sizeof(e->url), "ipc://%s/lmsched.sock", e->dir);
    snprintf(e->sim.log, sizeof(e->sim.log), "%s/lmsim.log", e->dir);
    snprintf(e->daemon.log, sizeof(e->daemon.log), "%s/lmsched.log", e->dir);
    signal(SIGPIPE, SIG_IGN);
}

void kit_env_fini(kit_env *e)
{
    kit_proc_stop(&e->daemon, SIGKILL, 5000);
    kit_proc_stop(&e->sim, SIGKILL, 5000);
    if (e->dir[0] != '\0' && kit_fs_rm_tree(e->dir) != 0)
        fprintf(stderr, "kit: could not remove %s\n", e->dir);
    e->dir[0] = '\0';
}

int kit_env_setup(void **state)
{
    kit_env *e = calloc(1, sizeof(*e));
    if (e == NULL)
        return -1;
    kit_env_init(e);
    *state = e;
    return 0;
}

int kit_env_teardown(void **state)
{
    kit_env *e = *state;
    kit_env_fini(e);
    free(e);
    return 0;
}

int kit_env_sim_start(kit_env *e, int port, const char *const *args)
{
    char port_file[600], why[256];
    snprintf(port_file, sizeof(port_file), "%s/sim.port", e->dir);
    kit_sim_opts o = {
        .port_file = port_file,
        .port = port,
        .args = args,
        .out = KIT_OUT_LOG,
        .timeout_ms = KIT_ENV_SIM_START_MS,
    };
    int p = kit_sim_start(&e->sim, &o, why, sizeof(why));
    if (p <= 0) {
        fprintf(stderr, "kit: %s\n", why);
        return -1;
    }
    e->sim_port = p;
    snprintf(e->backend, sizeof(e->backend), "http://127.0.0.1:%d", p);
    return 0;
}

int kit_env_daemon_start(kit_env *e, const char *const *args)
{
    char why[256];
    kit_daemon_opts o = {
        .listen = e->url,
        .backend = e->backend,
        .log_level = "debug",
        .args = args,
        .out = KIT_OUT_LOG,
    };
    if (kit_daemon_start(&e->daemon, &o, why, sizeof(why)) != 0) {
        fprintf(stderr, "kit: %s\n", why);
        return -1;
    }
    return 0;
}

int kit_env_serve_run(kit_env *e, const char *const *args, char **outp)
{
    char out[600];
    kit_daemon_opts o = {.listen = e->url, .backend = e->backend, .args = args};
    snprintf(out, sizeof(out), "%s/serve.out", e->dir);
    int rc = kit_daemon_run(&o, out, 20000);
    *outp = kit_fs_read(out);
    if (*outp == NULL)
        *outp = strdup("");
    return rc;
}

json_t *kit_env_sim_get(kit_env *e, const char *path)
{
    char url[512];
    snprintf(url, sizeof(url), "%s%s", e->backend, path);
    return kit_http_json("GET", url, NULL, KIT_ENV_HTTP_MS, NULL, NULL, 0);
}

int kit_env_sim_reset(kit_env *e)
{
    char url[512];
    snprintf(url, sizeof(url), "%s/sim/reset", e->backend);
    json_t *r = kit_http_json("POST", url, "", KIT_ENV_HTTP_MS, NULL, NULL, 0);
    json_decref(r);
    return r != NULL ? 0 : -1;
}

json_t *kit_env_status(kit_env *e)
{
    return kit_daemon_status(e->url);
}

static int64_t kit_env_wait(kit_env *e, bool sim, const char *path, int64_t min,
                            int64_t max, int timeout_ms)
{
    int64_t v = INT64_MIN;
    int64_t until = kit_now_ms() + timeout_ms;
    for (;;) {
        json_t *doc = sim ? kit_env_sim_get(e, "/sim/stats") : kit_env_status(e);
        if (doc != NULL) {
            v = kit_json_int(doc, path);
            json_decref(doc);
            if (v != INT64_MIN && v >= min && v <= max)
                return v;
        }
        if (kit_now_ms() >= until)
            return v;
        kit_sleep_ms(5);
    }
}

int64_t kit_env_sim_wait(kit_env *e, const char *path, int64_t min, int64_t max,
                         int timeout_ms)
{
    return kit_env_wait(e, true, path, min, max, timeout_ms);
}

int64_t kit_env_status_wait(kit_env *e, const char *path, int64_t min, int64_t max,
                            int timeout_ms)
{
    return kit_env_wait(e, false, path, min, max, timeout_ms);
}

void kit_env_dump_logs(kit_env *e)
{
    kit_fs_tail(e->sim.log, 60, stderr);
    kit_fs_tail(e->daemon.log, 60, stderr);
}
