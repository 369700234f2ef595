/*
 * sharness - what the security tests need beyond tests/integration/harness.h:
 * running `lmsched` as a child to see its exit status and output (for
 * starts that must be refused, and for `lmsched status`), reading files
 * whole, writing token files, and counting the outcomes of asynchronous
 * chat calls.
 *
 * Threads: sh_tally_cb runs on agentlib's threads; everything else is for
 * the test's main thread.
 */
#ifndef LMSCHED_TEST_SHARNESS_H
#define LMSCHED_TEST_SHARNESS_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

#include "integration/harness.h"
#include "lmsched/agent.h"

/* Runs `lmsched <argv...>` (argv NULL-terminated, without the program) with
 * stdout and stderr to out_path, waiting at most timeout_ms. Returns its
 * exit status, or -1 when it had to be killed or could not start. */
int sh_run_lmsched(const char *const *argv, const char *out_path, int timeout_ms);

/* Runs `lmsched serve --listen e->url --backend <e->backend or a dead
 * port> <args...>` expecting it to refuse to start. Returns the exit status
 * (-1 if it was still running after 20 s and had to be killed); *outp
 * receives its output (malloc'd, the caller frees). */
int sh_serve_refused(h_env *e, const char *const *args, char **outp);

/* The whole content of path, NUL-terminated (malloc'd), or NULL. */
char *sh_read_file(const char *path);

/* Whether the file at path contains needle. */
bool sh_file_contains(const char *path, const char *needle);

/* Lines of the file at path that contain needle. */
int sh_count_lines(const char *path, const char *needle);

/* Writes content to <e->dir>/<name> with the given mode and puts the path
 * in path (size len). Aborts the test on failure. */
void sh_write_file(h_env *e, const char *name, const char *content, unsigned mode,
                   char *path, size_t len);

/* A chat request with one user message and max_tokens (<= 0: unset). */
lmsched_request *sh_req(const char *user, int max_tokens);

/* Outcomes of asynchronous chat calls by error code. */
#define SH_CODES 32

typedef struct sh_tally {
    pthread_mutex_t mtx;
    pthread_cond_t cv;
    int done;
    int by_code[SH_CODES];
    char busy_msg[512]; /* the first LMSCHED_EBUSY message */
} sh_tally;

void sh_tally_init(sh_tally *t);
void sh_tally_fini(sh_tally *t);
/* An lmsched_chat_cb; arg is the sh_tally. Frees res. */
void sh_tally_cb(lmsched_result *res, void *arg);
/* Waits until n callbacks ran or timeout_ms passed; returns how many ran. */
int sh_tally_wait(sh_tally *t, int n, int timeout_ms);

#endif
