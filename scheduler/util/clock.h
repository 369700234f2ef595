/*
 * clock - the daemon's one clock: monotonic microseconds. Tests replace the
 * source with their own (clock_set_source) to drive the loop's timers
 * without waiting; everything that reads the time goes through
 * clock_now_us. Set the source before other threads start.
 */
#ifndef LMSCHED_UTIL_CLOCK_H
#define LMSCHED_UTIL_CLOCK_H

#include <stdint.h>

typedef int64_t (*clock_fn)(void *arg);

/* Now, in microseconds, from the current source. */
int64_t clock_now_us(void);

/* CLOCK_MONOTONIC in microseconds (the default source). */
int64_t clock_monotonic_us(void);

/* Replaces the source; NULL restores the monotonic clock. */
void clock_set_source(clock_fn fn, void *arg);

#endif /* LMSCHED_UTIL_CLOCK_H */
