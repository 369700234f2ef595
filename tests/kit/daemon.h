/*
 * daemon - `lmsched serve` as a child process, and the lmsched command: start
 * the daemon and wait until it answers a status request (and, if asked,
 * until it has probed its backend once), read its status document, run
 * `lmsched ...` to completion.
 *
 * Status requests go through agentlib, which sends $LMSCHED_AUTH_TOKEN when
 * it is set (a tcp:// daemon needs it).
 *
 * Threads: the thread that owns the kit_proc; kit_daemon_status on any.
 */
#ifndef LMSCHED_KIT_DAEMON_H
#define LMSCHED_KIT_DAEMON_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "kit/proc.h"

typedef struct kit_daemon_opts {
    const char *bin;         /* NULL: kit_bin_path("lmsched") */
    const char *listen;      /* --listen URL (required) */
    const char *backend;     /* --backend; NULL or "": a closed port, 9; not given
                              * when args or more give --backend (or
                              * --backends-file) themselves */
    const char *log_level;   /* --log-level; NULL: the daemon's default */
    const char *const *args; /* more flags (NULL-terminated), or NULL */
    const char *const *more; /* then these, which win over args, or NULL */
    kit_out out;             /* its output (KIT_OUT_LOG: into p->log) */
    bool probed;             /* also wait for its first probe of the backend */
    int timeout_ms;          /* to wait; 0: 15 s */
} kit_daemon_opts;

/* Starts `lmsched serve` and waits until it answers. Returns 0, or -1 with
 * why set: it exited (p->status says how), or did not answer in time (it
 * still runs: the caller stops it). */
int kit_daemon_start(kit_proc *p, const kit_daemon_opts *o, char *why, size_t whylen);

/* Runs `lmsched serve` with these options to completion (a start that must
 * be refused), output into out_path. Returns its exit status, or -1 if it
 * was still running after timeout_ms (then killed). */
int kit_daemon_run(const kit_daemon_opts *o, const char *out_path, int timeout_ms);

/* Runs `lmsched ARGS...` (args NULL-terminated, without the program) to
 * completion, output into out_path. Returns its exit status, or -1 (killed
 * after timeout_ms, or could not start). */
int kit_lmsched_run(const char *const *args, const char *out_path, int timeout_ms);

/* The status document of the daemon at url (the caller decrefs it), or
 * NULL when it does not answer within 2.5 s. */
json_t *kit_daemon_status(const char *url);

#endif
