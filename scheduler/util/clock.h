/* clock - the daemon's one clock: monotonic microseconds. */
#ifndef LMSCHED_CLOCK_H
#define LMSCHED_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline int64_t clock_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

#endif /* LMSCHED_CLOCK_H */
