/*
 * sim - lmsim, the LM Studio simulator, as a child process: started with
 * the flags a test or benchmark wants, on the port it picks (read back from
 * its --port-file).
 *
 * Threads: the thread that owns the kit_proc.
 */
#ifndef LMSCHED_KIT_SIM_H
#define LMSCHED_KIT_SIM_H

#include <stddef.h>

#include "kit/proc.h"

typedef struct kit_sim_opts {
    const char *bin;         /* NULL: kit_bin_path("lmsim") */
    const char *port_file;   /* --port-file (required) */
    int port;                /* --port; 0: lmsim picks one */
    const char *log_level;   /* --log-level; NULL: lmsim's default */
    const char *const *args; /* more flags (NULL-terminated), or NULL */
    kit_out out;             /* its output (KIT_OUT_LOG: into p->log) */
    int timeout_ms;          /* for the port file; 0: do not wait for it */
} kit_sim_opts;

/*
 * Starts lmsim and waits for its port file. Returns the port (0 when not
 * waiting), or -1 with why set: it exited first (p->status says how), or
 * wrote no port in time (then it was killed).
 */
int kit_sim_start(kit_proc *p, const kit_sim_opts *o, char *why, size_t whylen);

#endif
