/*
 * clock - monotonic microseconds, or a test's clock (see clock.h).
 */
#include "scheduler/util/clock.h"

#include <stddef.h>
#include <time.h>

static clock_fn clock_src;
static void *clock_arg;

int64_t clock_monotonic_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t clock_now_us(void)
{
    return clock_src != NULL ? clock_src(clock_arg) : clock_monotonic_us();
}

void clock_set_source(clock_fn fn, void *arg)
{
    clock_src = fn;
    clock_arg = arg;
}
