/*
 * pstat - figures about another process (the daemon, lmsim): resident
 * memory now and at its peak, open file descriptors, CPU time, and whether
 * it is still alive.
 *
 * Where they come from: /proc on Linux; libproc on macOS (the physical
 * footprint, as Activity Monitor shows it, and its lifetime peak; the fd
 * table; task CPU time). Elsewhere the figures are not available, and
 * kit_pstat_unusable says so: a test then reports its check as skipped
 * (kit/check.h) instead of letting it pass without a figure.
 *
 * Threads: any.
 */
#ifndef LMSCHED_KIT_PSTAT_H
#define LMSCHED_KIT_PSTAT_H

#include <stdbool.h>
#include <sys/types.h>

typedef enum kit_pstat_kind {
    KIT_PSTAT_RSS, /* kit_pstat_rss_kb, kit_pstat_peak_kb */
    KIT_PSTAT_FDS, /* kit_pstat_fds */
    KIT_PSTAT_CPU, /* kit_pstat_cpu_us */
} kit_pstat_kind;

/* Why figures of this kind cannot bound anything in this build on this
 * platform, or NULL when they can. For memory that includes builds with
 * AddressSanitizer: its quarantine keeps freed memory on purpose, so the
 * figures are printed but say nothing about a leak. */
const char *kit_pstat_unusable(kit_pstat_kind kind);

/* Resident memory of pid now, and its peak, in KiB; -1 if unreadable. */
long kit_pstat_rss_kb(pid_t pid);
long kit_pstat_peak_kb(pid_t pid);

/* Open file descriptors of pid, -1 if unreadable. */
int kit_pstat_fds(pid_t pid);

/* User + system CPU time pid used so far, in microseconds (every thread);
 * -1 if unreadable. */
double kit_pstat_cpu_us(pid_t pid);

/* Whether pid exists and is not a zombie (a process that exited but was
 * not reaped has closed its sockets already). For a child of ours, see
 * kit_proc_exited. */
bool kit_pstat_alive(pid_t pid);

#endif
