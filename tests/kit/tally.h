/*
 * tally - the outcomes of asynchronous agentlib calls, counted by error
 * code: how many came back, the first message of each error, the retries
 * the daemon reported, and when the last one arrived. A test waits for n
 * outcomes with a deadline.
 *
 * Threads: kit_tally_cb and kit_tally_add run on any thread (agentlib's
 * callback threads); the fields may be read directly once kit_tally_wait
 * returned with every outcome in (nothing writes them any more), else
 * through kit_tally_done and kit_tally_count.
 */
#ifndef LMSCHED_KIT_TALLY_H
#define LMSCHED_KIT_TALLY_H

#include <pthread.h>
#include <stdint.h>

#include "lmsched/agent.h"

#define KIT_TALLY_CODES 32

typedef struct kit_tally {
    pthread_mutex_t mtx;
    pthread_cond_t cv;
    int done;                          /* outcomes counted */
    int by_code[KIT_TALLY_CODES];      /* by lmsched_err */
    uint32_t retries;                  /* sum of the retries of successes */
    uint32_t max_retries;              /* most retries of one success */
    int64_t last_ms;                   /* kit_now_ms() of the last outcome */
    char sample[KIT_TALLY_CODES][512]; /* first message per error code */
} kit_tally;

void kit_tally_init(kit_tally *t);
void kit_tally_fini(kit_tally *t);

/* Counts one outcome: code (an lmsched_err), its message (NULL: none) and
 * the retries it took. */
void kit_tally_add(kit_tally *t, int code, const char *message, uint32_t retries);

/* An lmsched_chat_cb; arg is the kit_tally. Counts res and frees it. */
void kit_tally_cb(lmsched_result *res, void *arg);

/* Waits until n outcomes are in or timeout_ms passed; returns how many are
 * in. */
int kit_tally_wait(kit_tally *t, int n, int timeout_ms);

/* Outcomes so far, and those with this code, read under the lock. */
int kit_tally_done(kit_tally *t);
int kit_tally_count(kit_tally *t, int code);

#endif
