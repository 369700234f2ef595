/*
 * harness - starts the real programs for integration tests: lmsim (the LM
 * Studio simulator) and `lmsched serve`, as child processes on a temporary
 * ipc:// socket and a free loopback port, and reads lmsim's ground truth.
 */
#ifndef LMSCHED_TEST_HARNESS_H
#define LMSCHED_TEST_HARNESS_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <jansson.h>

typedef struct h_proc {
    pid_t pid;
    char log[512];      /* stderr of the child goes here */
} h_proc;

typedef struct h_env {
    char dir[256];      /* mkdtemp directory */
    char url[512];      /* ipc:// URL of the daemon */
    int sim_port;
    char backend[128];  /* http://127.0.0.1:PORT */
    h_proc sim, daemon;
} h_env;

/* Creates the temp dir and URL. */
void h_env_init(h_env *e);
/* Removes everything, killing children still running. */
void h_env_fini(h_env *e);
/* cmocka fixtures: *state is a fresh h_env (h_env_init), then freed
 * (h_env_fini). */
int h_setup(void **state);
int h_teardown(void **state);

/* Starts lmsim with extra args (NULL-terminated); port 0 picks one. Waits
 * for its port file. Returns 0 or -1. */
int h_sim_start(h_env *e, int port, const char *const *args);
void h_sim_stop(h_env *e);

/* Starts `lmsched serve --listen e->url --backend e->backend` plus args and
 * waits until it answers a status request. Returns 0 or -1. */
int h_daemon_start(h_env *e, const char *const *args);
/* Sends sig and waits for exit; returns the exit status, or -1 on timeout
 * (then the child is killed). */
int h_proc_stop(h_proc *p, int sig, int timeout_ms);

/* GET path from lmsim as JSON (caller decrefs), NULL on failure. */
json_t *h_sim_get(h_env *e, const char *path);
/* POST /sim/reset. */
int h_sim_reset(h_env *e);
/* A free loopback TCP port. */
int h_free_port(void);
/* The status document of the daemon (caller decrefs), NULL on failure. */
json_t *h_status(h_env *e);
/* Integer at a dotted path of a JSON object ("memory.max_concurrent"), or
 * INT64_MIN if absent. */
int64_t h_json_int(json_t *root, const char *path);
json_t *h_json_get(json_t *root, const char *path);

/* Prints the child logs (on failure). */
void h_dump_logs(h_env *e);

#endif
