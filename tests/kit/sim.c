/*
 * sim - lmsim as a child process (see sim.h).
 */
#include "kit/sim.h"

#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include "kit/clock.h"
#include "kit/fs.h"

#define KIT_SIM_MAX_ARGS 64

int kit_sim_start(kit_proc *p, const kit_sim_opts *o, char *why, size_t whylen)
{
    char bin[512], port[16];
    const char *argv[KIT_SIM_MAX_ARGS + 1];
    int n = 0;
    if (o->bin != NULL)
        snprintf(bin, sizeof(bin), "%s", o->bin);
    else
        kit_bin_path("lmsim", bin, sizeof(bin));
    snprintf(port, sizeof(port), "%d", o->port);
    argv[n++] = bin;
    argv[n++] = "--port";
    argv[n++] = port;
    argv[n++] = "--port-file";
    argv[n++] = o->port_file;
    if (o->log_level != NULL) {
        argv[n++] = "--log-level";
        argv[n++] = o->log_level;
    }
    for (int i = 0; o->args != NULL && o->args[i] != NULL; i++) {
        if (n == KIT_SIM_MAX_ARGS) {
            snprintf(why, whylen, "more than %d lmsim arguments", KIT_SIM_MAX_ARGS);
            return -1;
        }
        argv[n++] = o->args[i];
    }
    argv[n] = NULL;
    unlink(o->port_file);
    if (kit_proc_spawn(p, argv, o->out) != 0) {
        snprintf(why, whylen, "cannot fork for %s", bin);
        return -1;
    }
    if (o->timeout_ms <= 0)
        return 0;
    for (int64_t until = kit_now_ms() + o->timeout_ms; kit_now_ms() < until;) {
        long v = 0;
        if (kit_fs_read_long(o->port_file, &v) == 0 && v > 0 && v < 65536)
            return (int)v;
        if (kit_proc_exited(p)) {
            snprintf(why, whylen, "lmsim exited before listening (status %d)", p->status);
            return -1;
        }
        kit_sleep_ms(10);
    }
    kit_proc_stop(p, SIGKILL, 5000);
    snprintf(why, whylen, "lmsim wrote no port to %s within %d ms", o->port_file,
             o->timeout_ms);
    return -1;
}
