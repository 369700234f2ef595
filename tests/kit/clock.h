/*
 * clock - time for tests and benchmarks: a monotonic clock, sleeps that
 * survive signals, and the absolute deadline pthread_cond_timedwait wants.
 *
 * Threads: any.
 */
#ifndef LMSCHED_KIT_CLOCK_H
#define LMSCHED_KIT_CLOCK_H

#include <stdint.h>
#include <time.h>

/* Monotonic time, in nanoseconds and in milliseconds. */
int64_t kit_now_ns(void);
int64_t kit_now_ms(void);

/* Sleeps this long, resuming after a signal; <= 0 returns at once. */
void kit_sleep_ns(int64_t ns);
void kit_sleep_ms(int64_t ms);

/* CLOCK_REALTIME now + timeout_ms: the absolute time that
 * pthread_cond_timedwait takes. */
struct timespec kit_deadline(int64_t timeout_ms);

#endif
