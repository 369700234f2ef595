/*
 * simlog - leveled logging to stderr for lmsim. Lines carry the wall-clock
 * time so a test's stderr can be matched against what its client saw.
 */
#include "sim/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* Written once before any thread starts, read-only afterwards. */
static int simlog_threshold = SIMLOG_INFO;

static const char *const simlog_names[] = {"error", "warn", "info", "debug"};

void simlog_set_level(int level)
{
    simlog_threshold = level;
}

int simlog_parse_level(const char *name)
{
    for (int i = 0; i < (int)(sizeof simlog_names / sizeof simlog_names[0]); i++) {
        if (strcmp(name, simlog_names[i]) == 0)
            return i;
    }
    return -1;
}

void simlog(int level, const char *fmt, ...)
{
    if (level > simlog_threshold)
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);

    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    localtime_r(&ts.tv_sec, &tm);
    /* One fprintf per line so lines from different threads do not interleave. */
    fprintf(stderr, "%02d:%02d:%02d.%03ld lmsim %s: %s\n", tm.tm_hour, tm.tm_min,
            tm.tm_sec, ts.tv_nsec / 1000000L, simlog_names[level], msg);
}
