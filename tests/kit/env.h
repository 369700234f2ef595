/*
 * env - a test's world: a temporary directory, lmsim on a free loopback
 * port and `lmsched serve` in front of it on an ipc:// socket in that
 * directory, each logging to a file there; lmsim's ground truth
 * (/sim/stats) and the daemon's status, read or waited for. kit/check.h
 * adds kit_env_start, which fails the test when a start fails.
 *
 * Threads: the test's main thread; kit_env_status and kit_env_sim_get on
 * any.
 */
#ifndef LMSCHED_KIT_ENV_H
#define LMSCHED_KIT_ENV_H

#include <stdint.h>

#include <jansson.h>

#include "kit/proc.h"

typedef struct kit_env {
    char dir[256];     /* mkdtemp directory, removed by kit_env_fini */
    char url[512];     /* the daemon's --listen: ipc://DIR/lmsched.sock */
    int sim_port;      /* lmsim's port, 0 before it ran */
    char backend[128]; /* the daemon's --backend: lmsim's URL, "" before */
    kit_proc sim;      /* log: DIR/lmsim.log */
    kit_proc daemon;   /* log: DIR/lmsched.log */
} kit_env;

/* Makes the directory and the URL (aborts without a temp dir), and ignores
 * SIGPIPE: a child that dies must not take the test with it. */
void kit_env_init(kit_env *e);
/* Kills the children still running and removes the directory. */
void kit_env_fini(kit_env *e);

/* cmocka fixtures: *state is a fresh kit_env, then freed. */
int kit_env_setup(void **state);
int kit_env_teardown(void **state);

/* Starts lmsim with more flags (NULL-terminated, or NULL) on port (0: a
 * free one) and waits for it to listen; sets sim_port and backend.
 * Returns 0 or -1. */
int kit_env_sim_start(kit_env *e, int port, const char *const *args);

/* Starts `lmsched serve --listen url --backend backend --log-level debug`
 * plus args (a dead port without a backend) and waits until it answers a
 * status request. Returns 0 or -1 (it may still run; kit_env_fini stops
 * it). */
int kit_env_daemon_start(kit_env *e, const char *const *args);

/* Runs `lmsched serve --listen url --backend ...` plus args, expecting it
 * to refuse to start. Returns its exit status (-1: still running after
 * 20 s, then killed); *outp gets its output (malloc'd, never NULL). */
int kit_env_serve_run(kit_env *e, const char *const *args, char **outp);

/* GET path from lmsim as JSON (the caller decrefs it), NULL on failure. */
json_t *kit_env_sim_get(kit_env *e, const char *path);
/* POST /sim/reset. Returns 0 or -1. */
int kit_env_sim_reset(kit_env *e);
/* The daemon's status document (the caller decrefs it), NULL on failure. */
json_t *kit_env_status(kit_env *e);

/* Polls lmsim's /sim/stats (or the daemon's status) until the integer at
 * the dotted path is in [min, max], at most timeout_ms. Returns the last
 * value read, INT64_MIN if it never answered. */
int64_t kit_env_sim_wait(kit_env *e, const char *path, int64_t min, int64_t max,
                         int timeout_ms);
int64_t kit_env_status_wait(kit_env *e, const char *path, int64_t min, int64_t max,
                            int timeout_ms);

/* Prints the end of both logs to stderr (when a test fails). */
void kit_env_dump_logs(kit_env *e);

#endif
