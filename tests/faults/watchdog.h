/*
 * watchdog - for the nng fault tests: ends the process with a failure when
 * it is not fed for WATCHDOG_S seconds, so that a hang in nng (a close that
 * never returns, a reaper that waits forever) fails the test with a message
 * instead of running into ctest's timeout. A hung nng call cannot be
 * interrupted, and cmocka cannot fail a test from another thread, so the
 * way out is _exit(1).
 *
 * Header only, with static functions. Threads: start, feed and stop from
 * the test's thread.
 */
#ifndef LMSCHED_FAULTS_WATCHDOG_H
#define LMSCHED_FAULTS_WATCHDOG_H

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define WATCHDOG_S 20

typedef struct watchdog {
    pthread_mutex_t mtx;
    pthread_cond_t cv;
    pthread_t thr;
    const char *what; /* what the test is waiting for */
    const char *why;  /* the likely cause, printed with it */
    uint64_t fed;
    bool stop;
} watchdog;

static void *watchdog_main(void *arg)
{
    watchdog *w = arg;
    pthread_mutex_lock(&w->mtx);
    while (!w->stop) {
        uint64_t seen = w->fed;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += WATCHDOG_S;
        int rv = 0;
        while (!w->stop && w->fed == seen && rv != ETIMEDOUT)
            rv = pthread_cond_timedwait(&w->cv, &w->mtx, &ts);
        if (!w->stop && w->fed == seen) {
            printf("FAIL: %s: nothing for %d s; %s\n", w->what, WATCHDOG_S, w->why);
            fflush(stdout);
            _exit(1);
        }
    }
    pthread_mutex_unlock(&w->mtx);
    return NULL;
}

/* Returns 0, or the error of pthread_create. */
static int watchdog_start(watchdog *w, const char *what, const char *why)
{
    memset(w, 0, sizeof(*w));
    pthread_mutex_init(&w->mtx, NULL);
    pthread_cond_init(&w->cv, NULL);
    w->what = what;
    w->why = why;
    return pthread_create(&w->thr, NULL, watchdog_main, w);
}

/* Progress: the next WATCHDOG_S count from now, waiting for `what`. */
static void watchdog_feed(watchdog *w, const char *what)
{
    pthread_mutex_lock(&w->mtx);
    w->what = what;
    w->fed++;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mtx);
}

static void watchdog_stop(watchdog *w)
{
    pthread_mutex_lock(&w->mtx);
    w->stop = true;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mtx);
    pthread_join(w->thr, NULL);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mtx);
}

#endif
