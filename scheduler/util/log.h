/*
 * log - leveled logging to stderr, safe from any thread, shared by the
 * daemon and lmsim. The daemon logs; library code never prints. Secrets (the
 * LM Studio token) are never passed here.
 */
#ifndef LMSCHED_LOG_H
#define LMSCHED_LOG_H

typedef enum log_level {
    LOG_ERROR = 0,
    LOG_WARN = 1,
    LOG_INFO = 2,
    LOG_DEBUG = 3,
} log_level;

/* Sets the level; messages above it are dropped. Not thread-safe: call once
 * at start-up before other threads exist. */
void log_set_level(log_level level);
log_level log_get_level(void);
/* Sets the program name every line carries ("lmsched" unless set; lmsim
 * sets "lmsim"). name must outlive the logging, a string literal in
 * practice. Not thread-safe: call at start-up like log_set_level. */
void log_set_program(const char *name);
/* Parses "error", "warn" (or "warning"), "info", "debug". Returns 0 or -1. */
int log_parse_level(const char *s, log_level *out);
/* "error", "warn", "info" or "debug"; "?" for a value outside the enum. */
const char *log_level_name(log_level level);

/* One line: "<UTC time> <program> <level>: <message>". */
void log_msg(log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...)                                                                    \
    do {                                                                                  \
        if (log_get_level() >= LOG_DEBUG)                                                 \
            log_msg(LOG_DEBUG, __VA_ARGS__);                                              \
    } while (0)

#endif /* LMSCHED_LOG_H */
