/*
 * llama - a real llama.cpp llama-server for the real suite, run by
 * scripts/llama-server from its Debian sid chroot (docs/llama-server.md).
 *
 * Each server has a state directory of its own (pid, port, log), so a test
 * may run several at once. Under scripts/test the directories live in
 * $LMSCHED_REAL_STATE, whose trap stops whatever a crashed test left
 * running there; otherwise they are temp dirs of ours, removed at the end.
 *
 * Threads: the test's main thread.
 */
#ifndef LMSCHED_TESTS_REAL_LLAMA_H
#define LMSCHED_TESTS_REAL_LLAMA_H

#include <stdbool.h>
#include <stddef.h>

/* Hang guard for scripts/llama-server start/stop (start takes ~0.3 s). */
#define RL_SCRIPT_WAIT_S 120

typedef struct rl_server {
    char state[256];  /* its state dir */
    char script[512]; /* scripts/llama-server */
    char url[128];    /* http://127.0.0.1:PORT once started */
    int port;
    bool made_state; /* the state dir is a temp dir of ours */
} rl_server;

/* NULL when a server can be started here (root, scripts/llama-server found
 * through $LMSCHED_LLAMA_SCRIPT, the chroot with llama-server and the
 * model); else why not. */
const char *rl_unusable(void);

/* Prepares s with state dir $LMSCHED_REAL_STATE/name (scripts/test's, whose
 * trap cleans up) or, without that variable, a fresh temp dir; name NULL:
 * $LMSCHED_REAL_STATE itself. Returns 0, or -1 (printed why). */
int rl_init(rl_server *s, const char *name);

/* Runs `scripts/llama-server ARGS` for s; its exit status. */
int rl_script(const rl_server *s, const char *args);

/* An integer file of s's state dir ("pid", "port"), -1 when absent. */
long rl_state_long(const rl_server *s, const char *name);

/* Starts s (on port when > 0) with the host prompt cache off, so slot
 * placement is not hidden by it; extra: more llama-server arguments
 * ("-np 2 -c 16384") or NULL. Returns 0, or -1. */
int rl_start(rl_server *s, int port, const char *extra);
/* rl_start with the host prompt cache's --cache-ram MIB (NULL: the
 * server's default, on). */
int rl_start_cache(rl_server *s, int port, const char *cache_ram, const char *extra);

/* Stops s if it runs and removes a state dir of ours. */
void rl_fini(rl_server *s);

#endif
