/*
 * pstat - figures about another process (see pstat.h): /proc on Linux,
 * libproc on macOS, nothing elsewhere.
 */
#if defined(__APPLE__)
/* libproc and rusage_info are Darwin extensions, hidden by the
 * _POSIX_C_SOURCE the build defines. */
#define _DARWIN_C_SOURCE 1
#endif

#include "kit/pstat.h"

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__linux__)
#include <dirent.h>
#elif defined(__APPLE__)
#include <libproc.h>
#include <mach/mach_time.h>
#include <sys/resource.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#define KIT_PSTAT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KIT_PSTAT_ASAN 1
#endif
#endif

#if defined(__SANITIZE_THREAD__)
#define KIT_PSTAT_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define KIT_PSTAT_TSAN 1
#endif
#endif

const char *kit_pstat_unusable(kit_pstat_kind kind)
{
#ifdef KIT_PSTAT_ASAN
    if (kind == KIT_PSTAT_RSS)
        return "built with AddressSanitizer, whose quarantine keeps freed memory: "
               "resident memory bounds nothing";
#endif
#ifdef KIT_PSTAT_TSAN
    if (kind == KIT_PSTAT_RSS)
        return "built with ThreadSanitizer, whose shadow memory and sync-object "
               "tables stay resident after the memory they track is freed: "
               "resident memory bounds nothing";
#endif
#if defined(__linux__)
    (void)kind;
    if (access("/proc/self/stat", R_OK) != 0)
        return "/proc is not mounted";
    return NULL;
#elif defined(__APPLE__)
    (void)kind;
    return NULL;
#else
    (void)kind;
    return "no /proc and no libproc here: tests/kit/pstat.c cannot read another "
           "process's figures on this platform";
#endif
}

#if defined(__linux__)

/* A "Key:   123 kB" line of /proc/PID/status, -1 if absent. */
static long kit_pstat_status_kb(pid_t pid, const char *key)
{
    char path[64], line[256];
    size_t klen = strlen(key);
    long kb = -1;
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
            kb = strtol(line + klen + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kb;
}

/* /proc/PID/stat after the command name (which may hold spaces and
 * parentheses), starting at the state field; NULL if unreadable. */
static const char *kit_pstat_stat(pid_t pid, char *buf, size_t len)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return NULL;
    size_t n = fread(buf, 1, len - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    return p != NULL && p[1] == ' ' && p[2] != '\0' ? p + 2 : NULL;
}

long kit_pstat_rss_kb(pid_t pid)
{
    return kit_pstat_status_kb(pid, "VmRSS");
}

long kit_pstat_peak_kb(pid_t pid)
{
    return kit_pstat_status_kb(pid, "VmHWM");
}

int kit_pstat_fds(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    if (d == NULL)
        return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (de->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

double kit_pstat_cpu_us(pid_t pid)
{
    char buf[1024];
    unsigned long long ut, st;
    const char *p = kit_pstat_stat(pid, buf, sizeof(buf));
    long hz = sysconf(_SC_CLK_TCK);
    /* from the state (field 3): utime is field 14, stime 15 */
    if (p == NULL || hz <= 0 ||
        sscanf(p, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) * 1e6 / (double)hz;
}

bool kit_pstat_alive(pid_t pid)
{
    char buf[512];
    const char *p = pid > 0 ? kit_pstat_stat(pid, buf, sizeof(buf)) : NULL;
    return p != NULL && *p != 'Z';
}

#elif defined(__APPLE__)

/* pbi_status of a zombie (SZOMB in <sys/proc.h>). */
#define KIT_PSTAT_SZOMB 5

static int kit_pstat_rusage(pid_t pid, struct rusage_info_v4 *ri)
{
    return proc_pid_rusage(pid, RUSAGE_INFO_V4, (rusage_info_t *)ri);
}

long kit_pstat_rss_kb(pid_t pid)
{
    struct rusage_info_v4 ri;
    return kit_pstat_rusage(pid, &ri) == 0 ? (long)(ri.ri_phys_footprint / 1024) : -1;
}

long kit_pstat_peak_kb(pid_t pid)
{
    struct rusage_info_v4 ri;
    return kit_pstat_rusage(pid, &ri) == 0
               ? (long)(ri.ri_lifetime_max_phys_footprint / 1024)
               : -1;
}

int kit_pstat_fds(pid_t pid)
{
    /* The first call says how many bytes the table may need. */
    int size = proc_pidinfo(pid, PROC_PIDLISTFDS, 0, NULL, 0);
    if (size <= 0)
        return -1;
    struct proc_fdinfo *fds = malloc((size_t)size);
    if (fds == NULL)
        return -1;
    int got = proc_pidinfo(pid, PROC_PIDLISTFDS, 0, fds, size);
    free(fds);
    return got > 0 ? got / (int)PROC_PIDLISTFD_SIZE : -1;
}

double kit_pstat_cpu_us(pid_t pid)
{
    struct rusage_info_v4 ri;
    mach_timebase_info_data_t tb;
    if (kit_pstat_rusage(pid, &ri) != 0 || mach_timebase_info(&tb) != KERN_SUCCESS ||
        tb.denom == 0)
        return -1;
    /* in Mach time units (nanoseconds on Intel, not on Apple silicon) */
    double ticks = (double)(ri.ri_user_time + ri.ri_system_time);
    return ticks * (double)tb.numer / (double)tb.denom / 1e3;
}

bool kit_pstat_alive(pid_t pid)
{
    struct proc_bsdinfo bi;
    if (pid <= 0)
        return false;
    int n = proc_pidinfo(pid, PROC_PIDTBSDINFO, 0, &bi, (int)sizeof(bi));
    return n == (int)sizeof(bi) && bi.pbi_status != KIT_PSTAT_SZOMB;
}

#else

long kit_pstat_rss_kb(pid_t pid)
{
    (void)pid;
    return -1;
}

long kit_pstat_peak_kb(pid_t pid)
{
    (void)pid;
    return -1;
}

int kit_pstat_fds(pid_t pid)
{
    (void)pid;
    return -1;
}

double kit_pstat_cpu_us(pid_t pid)
{
    (void)pid;
    return -1;
}

bool kit_pstat_alive(pid_t pid)
{
    return pid > 0 && (kill(pid, 0) == 0 || errno == EPERM);
}

#endif
