/*
 * log - leveled logging to stderr for the daemon and lmsim. One
 * fprintf-sized write per message under a lock, so lines from different
 * threads (nng's and the loop's; lmsim's HTTP and engine threads) never
 * interleave.
 */
#include "scheduler/util/log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static log_level log_cur = LOG_INFO;
static const char *log_program = "lmsched";
static pthread_mutex_t log_mtx = PTHREAD_MUTEX_INITIALIZER;

static const char *const log_names[] = {"error", "warn", "info", "debug"};

void log_set_level(log_level level)
{
    log_cur = level;
}

log_level log_get_level(void)
{
    return log_cur;
}

void log_set_program(const char *name)
{
    log_program = name != NULL ? name : "lmsched";
}

const char *log_level_name(log_level level)
{
    if ((unsigned)level >= sizeof(log_names) / sizeof(log_names[0]))
        return "?";
    return log_names[level];
}

int log_parse_level(const char *s, log_level *out)
{
    for (unsigned i = 0; i < sizeof(log_names) / sizeof(log_names[0]); i++) {
        if (strcmp(s, log_names[i]) == 0) {
            *out = (log_level)i;
            return 0;
        }
    }
    if (strcmp(s, "warning") == 0) {
        *out = LOG_WARN;
        return 0;
    }
    return -1;
}

void log_msg(log_level level, const char *fmt, ...)
{
    if (level > log_cur)
        return;
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %s: ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, log_program, log_level_name(level));
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < sizeof(line))
        vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&log_mtx);
    fprintf(stderr, "%s\n", line);
    fflush(stderr);
    pthread_mutex_unlock(&log_mtx);
}
