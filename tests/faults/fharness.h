/*
 * fharness - what the fault tests need beyond tests/integration/harness.h:
 * counting asynchronous outcomes, reading a process's memory and file
 * descriptors from /proc, restarting lmsim on the port it had, and agent
 * processes (the test binary re-executed in agent mode) that can be killed
 * with SIGKILL while their requests are in flight.
 *
 * Threads: the tally may be fed from agentlib's callback threads; everything
 * else is for the test's main thread.
 */
#ifndef LMSCHED_TEST_FHARNESS_H
#define LMSCHED_TEST_FHARNESS_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "integration/harness.h"
#include "lmsched/agent.h"

/* ---- outcomes of asynchronous calls ------------------------------------ */

#define FH_CODES 32

typedef struct fh_tally {
    pthread_mutex_t mtx;
    pthread_cond_t cv;
    int done;                   /* callbacks run */
    int by_code[FH_CODES];      /* outcomes by lmsched_err */
    uint32_t retries;           /* sum of lmsched_result_retries over replies */
    uint32_t max_retries;       /* most retries of one reply */
    int64_t last_ms;            /* fh_now_ms() of the last callback */
    char sample[FH_CODES][512]; /* first error message seen per code */
} fh_tally;

void fh_tally_init(fh_tally *t);
void fh_tally_fini(fh_tally *t);
/* An lmsched_chat_cb; arg is the fh_tally. Frees res. */
void fh_tally_cb(lmsched_result *res, void *arg);
/* Waits until n callbacks ran or timeout_ms passed; returns how many ran. */
int fh_tally_wait(fh_tally *t, int n, int timeout_ms);
/* Replies counted so far (read under the tally's lock). */
int fh_tally_done(fh_tally *t);

/* ---- time and /proc ----------------------------------------------------- */

int64_t fh_now_ms(void);
void fh_sleep_ms(int ms);
/* VmRSS or VmHWM (peak) of pid in KiB, -1 if unreadable. */
long fh_rss_kb(pid_t pid);
long fh_hwm_kb(pid_t pid);
/* Whether RSS figures mean anything in this build: AddressSanitizer's
 * quarantine keeps freed memory on purpose, so under it the tests print
 * memory figures but do not assert on them. */
#if defined(__SANITIZE_ADDRESS__)
#define FH_RSS_ASSERTS 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FH_RSS_ASSERTS 0
#endif
#endif
#ifndef FH_RSS_ASSERTS
#define FH_RSS_ASSERTS 1
#endif
/* Open file descriptors of pid, -1 if unreadable. */
int fh_fd_count(pid_t pid);
/* True while pid exists (and is not a zombie we reaped). */
bool fh_alive(pid_t pid);

/* ---- requests and polling ----------------------------------------------- */

/* A request with this system prompt and user message; max_tokens <= 0
 * leaves it unset. Aborts the test (cmocka) on failure. */
lmsched_request *fh_req(const char *system, const char *user, int max_tokens);

/* Polls lmsim's /sim/stats until the integer at path is in [min, max], at
 * most timeout_ms. Returns the last value read, or INT64_MIN if lmsim never
 * answered. */
int64_t fh_sim_wait(h_env *e, const char *path, int64_t min, int64_t max, int timeout_ms);
/* The same on the daemon's status document. */
int64_t fh_status_wait(h_env *e, const char *path, int64_t min, int64_t max,
                       int timeout_ms);

/* Starts lmsim with sim_args (unless sim_args is NULL: no backend; then
 * e->backend must be set) and the daemon with daemon_args; on failure
 * prints the child logs and fails the test. */
void fh_start(h_env *e, const char *const *sim_args, const char *const *daemon_args);

/* Starts lmsim on exactly this port (after a kill -9 the port is free at
 * once: lmsim's listener sets SO_REUSEADDR). Returns 0 or -1. */
int fh_sim_restart(h_env *e, int port, const char *const *args);

/* ---- agent processes ------------------------------------------------------ */

/*
 * Starts a separate agent process: this test binary re-executed with
 * "--fh-agent URL N MAX_TOKENS", which opens a client, starts N chat
 * requests with lmsched_chat_async and then waits (up to a minute) for
 * them. Its output goes to <e->dir>/agent.log. Returns the pid or -1.
 */
pid_t fh_agent_spawn(h_env *e, int n, int max_tokens);

/* Every test binary's main calls this first: in agent mode it runs the
 * agent and returns its exit status, otherwise it returns -1. */
int fh_agent_main(int argc, char **argv);

#endif
