/*
 * tally - outcomes of asynchronous calls (see tally.h).
 */
#include "kit/tally.h"

#include <stdio.h>
#include <string.h>

#include "kit/clock.h"

void kit_tally_init(kit_tally *t)
{
    memset(t, 0, sizeof(*t));
    pthread_mutex_init(&t->mtx, NULL);
    pthread_cond_init(&t->cv, NULL);
}

void kit_tally_fini(kit_tally *t)
{
    pthread_cond_destroy(&t->cv);
    pthread_mutex_destroy(&t->mtx);
}

void kit_tally_add(kit_tally *t, int code, const char *message, uint32_t retries)
{
    pthread_mutex_lock(&t->mtx);
    if (code >= 0 && code < KIT_TALLY_CODES) {
        t->by_code[code]++;
        if (code != LMSCHED_OK && t->sample[code][0] == '\0' && message != NULL)
            snprintf(t->sample[code], sizeof(t->sample[code]), "%s", message);
    }
    if (code == LMSCHED_OK) {
        t->retries += retries;
        if (retries > t->max_retries)
            t->max_retries = retries;
    }
    t->done++;
    t->last_ms = kit_now_ms();
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mtx);
}

void kit_tally_cb(lmsched_result *res, void *arg)
{
    int code = lmsched_result_error(res);
    kit_tally_add(arg, code, lmsched_result_message(res),
                  code == LMSCHED_OK ? lmsched_result_retries(res) : 0);
    lmsched_result_free(res);
}

int kit_tally_wait(kit_tally *t, int n, int timeout_ms)
{
    struct timespec until = kit_deadline(timeout_ms);
    pthread_mutex_lock(&t->mtx);
    while (t->done < n)
        if (pthread_cond_timedwait(&t->cv, &t->mtx, &until) != 0)
            break;
    int done = t->done;
    pthread_mutex_unlock(&t->mtx);
    return done;
}

int kit_tally_done(kit_tally *t)
{
    pthread_mutex_lock(&t->mtx);
    int n = t->done;
    pthread_mutex_unlock(&t->mtx);
    return n;
}

int kit_tally_count(kit_tally *t, int code)
{
    pthread_mutex_lock(&t->mtx);
    int n = code >= 0 && code < KIT_TALLY_CODES ? t->by_code[code] : 0;
    pthread_mutex_unlock(&t->mtx);
    return n;
}
