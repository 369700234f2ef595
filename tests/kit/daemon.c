/*
 * daemon - `lmsched serve` as a child process (see daemon.h).
 */
#include "kit/daemon.h"

#include <stdio.h>
#include <string.h>

#include "kit/clock.h"
#include "lmsched/agent.h"

#define KIT_DAEMON_MAX_ARGS 64

/* Where a daemon without a backend points: the discard port, closed on a
 * test machine, so its probe fails at once. */
#define KIT_DAEMON_NO_BACKEND "http://127.0.0.1:9"

/* argv of `lmsched serve` for o, into argv (KIT_DAEMON_MAX_ARGS + 1) with
 * the program path in bin (512). Returns 0, or -1 when it does not fit. */
static int kit_daemon_argv(const kit_daemon_opts *o, const char **argv, char *bin)
{
    const char *const *lists[2] = {o->args, o->more};
    int n = 0;
    if (o->bin != NULL)
        snprintf(bin, 512, "%s", o->bin);
    else
        kit_bin_path("lmsched", bin, 512);
    argv[n++] = bin;
    argv[n++] = "serve";
    argv[n++] = "--listen";
    argv[n++] = o->listen;
    /* --backend is repeatable (several servers): flags that give their own
     * (or --backends-file) replace this one rather than add to it. */
    bool own = false;
    for (int k = 0; k < 2; k++)
        for (int i = 0; lists[k] != NULL && lists[k][i] != NULL; i++)
            own = own || strcmp(lists[k][i], "--backend") == 0 ||
                  strcmp(lists[k][i], "--backends-file") == 0;
    if (!own) {
        argv[n++] = "--backend";
        argv[n++] =
            o->backend != NULL && *o->backend != '\0' ? o->backend : KIT_DAEMON_NO_BACKEND;
    }
    if (o->log_level != NULL) {
        argv[n++] = "--log-level";
        argv[n++] = o->log_level;
    }
    for (int k = 0; k < 2; k++)
        for (int i = 0; lists[k] != NULL && lists[k][i] != NULL; i++) {
            if (n == KIT_DAEMON_MAX_ARGS)
                return -1;
            argv[n++] = lists[k][i];
        }
    argv[n] = NULL;
    return 0;
}

json_t *kit_daemon_status(const char *url)
{
    lmsched_client *c = NULL;
    char *text = NULL, *err = NULL;
    json_t *doc = NULL;
    if (lmsched_client_open(&c, url) != LMSCHED_OK)
        return NULL;
    lmsched_client_set_connect_timeout(c, 500);
    if (lmsched_status(c, 2000, &text, &err) == LMSCHED_OK)
        doc = json_loads(text, 0, NULL);
    lmsched_free(text);
    lmsched_free(err);
    lmsched_client_close(c);
    return doc;
}

int kit_daemon_start(kit_proc *p, const kit_daemon_opts *o, char *why, size_t whylen)
{
    const char *argv[KIT_DAEMON_MAX_ARGS + 1];
    char bin[512];
    int timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : 15000;
    if (kit_daemon_argv(o, argv, bin) != 0) {
        snprintf(why, whylen, "more than %d arguments for lmsched serve",
                 KIT_DAEMON_MAX_ARGS);
        return -1;
    }
    if (kit_proc_spawn(p, argv, o->out) != 0) {
        snprintf(why, whylen, "cannot fork for %s", bin);
        return -1;
    }
    for (int64_t until = kit_now_ms() + timeout_ms; kit_now_ms() < until;) {
        if (kit_proc_exited(p)) {
            snprintf(why, whylen, "lmsched serve exited with status %d", p->status);
            return -1;
        }
        json_t *st = kit_daemon_status(o->listen);
        /* Until its first probe the daemon does not know the backend's
         * slots: requests sent now would be placed without them. */
        bool ready =
            st != NULL &&
            (!o->probed || json_is_number(json_object_get(json_object_get(st, "backend"),
                                                          "checked_ago_s")));
        json_decref(st);
        if (ready)
            return 0;
        kit_sleep_ms(50);
    }
    snprintf(why, whylen, "lmsched serve did not answer%s within %d ms",
             o->probed ? ", or did not probe its backend," : "", timeout_ms);
    return -1;
}

int kit_lmsched_run(const char *const *args, const char *out_path, int timeout_ms)
{
    const char *argv[KIT_DAEMON_MAX_ARGS + 1];
    char bin[512];
    int n = 0;
    kit_bin_path("lmsched", bin, sizeof(bin));
    argv[n++] = bin;
    for (int i = 0; args[i] != NULL; i++) {
        if (n == KIT_DAEMON_MAX_ARGS)
            return -1;
        argv[n++] = args[i];
    }
    argv[n] = NULL;
    return kit_proc_run(argv, out_path, timeout_ms);
}

int kit_daemon_run(const kit_daemon_opts *o, const char *out_path, int timeout_ms)
{
    const char *argv[KIT_DAEMON_MAX_ARGS + 1];
    char bin[512];
    if (kit_daemon_argv(o, argv, bin) != 0)
        return -1;
    return kit_proc_run(argv, out_path, timeout_ms);
}
