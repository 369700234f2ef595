/*
 * simlog - lmsim's logging: one line per event on stderr, with a level
 * threshold set once at startup (--log-level). Safe to call from any thread:
 * each line is written with a single fprintf, which stdio locks.
 */
#ifndef LMSIM_LOG_H
#define LMSIM_LOG_H

enum simlog_level {
    SIMLOG_ERROR = 0,
    SIMLOG_WARN = 1,
    SIMLOG_INFO = 2,
    SIMLOG_DEBUG = 3,
};

/* Sets the threshold. Call before starting threads. */
void simlog_set_level(int level);

/* Parses "error", "warn", "info" or "debug". Returns the level, or -1. */
int simlog_parse_level(const char *name);

void simlog(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif /* LMSIM_LOG_H */
