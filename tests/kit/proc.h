/*
 * proc - child processes for tests and benchmarks: start a program with its
 * output where the caller wants it, see whether it ended, stop it with a
 * signal and a deadline, run one to completion, and find the built
 * programs.
 *
 * Design notes
 * - A kit_proc remembers how its child ended (status), so a test may ask
 *   again after the child was reaped, and never signals a pid it reaped.
 * - On Linux a child gets SIGTERM when the process that started it dies
 *   (PR_SET_PDEATHSIG): a test killed by ctest's timeout leaves no lmsim or
 *   daemon behind. Children are started from the main thread.
 *
 * Threads: a kit_proc belongs to one thread.
 */
#ifndef LMSCHED_KIT_PROC_H
#define LMSCHED_KIT_PROC_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* Where a child's stdout and stderr go. */
typedef enum kit_out {
    KIT_OUT_LOG,     /* both appended to the kit_proc's log file */
    KIT_OUT_STDERR,  /* stdout to our stderr, which it shares: our stdout
                      * stays for results (JSON lines) */
    KIT_OUT_QUIET,   /* stdout to /dev/null; stderr shared */
    KIT_OUT_INHERIT, /* both shared */
} kit_out;

typedef struct kit_proc {
    pid_t pid;     /* > 0 while the child may run (it is not reaped yet) */
    int status;    /* once reaped: exit code, or 128 + signal; else -1 */
    char log[512]; /* the file of KIT_OUT_LOG */
} kit_proc;

/* Starts argv[0] (a path) with argv (NULL-terminated). Returns 0, or -1 if
 * it could not fork. A program that cannot be executed exits 127, after a
 * line on its stderr. */
int kit_proc_spawn(kit_proc *p, const char *const *argv, kit_out out);

/* True when the child has ended (reaping it, keeping its status) or was
 * never started. Does not block. */
bool kit_proc_exited(kit_proc *p);

/* Waits at most timeout_ms for the child to end by itself. Returns its
 * status, or -1 if it still runs (or was never started). */
int kit_proc_wait(kit_proc *p, int timeout_ms);

/* Sends sig and waits at most timeout_ms; then SIGKILL. Returns the status,
 * or -1 when it had to be killed or was not running. */
int kit_proc_stop(kit_proc *p, int sig, int timeout_ms);

/* Runs argv to completion with stdout and stderr into out_path (replaced),
 * killing it after timeout_ms. Returns its status, or -1 (killed, or could
 * not start). */
int kit_proc_run(const char *const *argv, const char *out_path, int timeout_ms);

/* The path of this program's executable. Returns 0, or -1 where it cannot
 * be found (not Linux or macOS). */
int kit_self_path(char *buf, size_t len);

/* The program `name` in the directory of this executable (bench programs
 * start the lmsched and lmsim next to them). Returns 0 or -1. */
int kit_sibling_path(const char *name, char *buf, size_t len);

/* The built program `name`: in $LMSCHED_BIN_DIR (ctest sets it), else in
 * build/bin. */
void kit_bin_path(const char *name, char *buf, size_t len);

#endif
