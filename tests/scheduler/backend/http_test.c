/*
 * http_test - the libcurl client's sleep and its wakeups: http_poll returns
 * when another thread calls http_wakeup, whether the wakeup comes before
 * the poll begins or while it waits, and a wakeup is never lost (a lost one
 * leaves a poll waiting for its full timeout, far past the test's).
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lmsched/wire.h"
#include "scheduler/backend/http.h"

/* Longer than the test's own TIMEOUT: a poll that returns was woken. */
#define HT_FOREVER_MS 600000
#define HT_ROUNDS 2000

static http_client *ht_client(void)
{
    http_opts o = {
        .connect_timeout_ms = 1000,
        .request_timeout_ms = 1000,
        .max_body = 1 << 20,
        .max_content = 1 << 20,
    };
    http_client *c = NULL;
    assert_int_equal(http_curl_alloc(&c, &o), LMSCHED_OK);
    assert_non_null(c);
    return c;
}

/* A wakeup with no poll waiting makes the next poll return at once, and
 * only that one: the loop looks at what was posted, then may sleep. */
static void test_wakeup_before_poll(void **state)
{
    (void)state;
    http_client *c = ht_client();
    http_wakeup(c);
    assert_int_equal(http_poll(c, HT_FOREVER_MS), LMSCHED_OK);
    http_wakeup(c);
    http_wakeup(c);
    assert_int_equal(http_poll(c, HT_FOREVER_MS), LMSCHED_OK);
    /* Nothing pending: a zero wait returns without a wakeup. */
    assert_int_equal(http_poll(c, 0), LMSCHED_OK);
    http_free(c);
}

typedef struct ht_waker {
    http_client *c;
    atomic_uint round;  /* the poll the main thread is in or about to enter */
    atomic_uint woken;  /* the last round a wakeup was sent for */
    atomic_bool stop;
} ht_waker;

/* One wakeup per round, sent as soon as the main thread announces the
 * round: it lands before the poll begins or while it waits, whichever the
 * scheduler makes of it. */
static void *ht_waker_main(void *arg)
{
    ht_waker *w = arg;
    while (!atomic_load(&w->stop)) {
        unsigned r = atomic_load(&w->round);
        if (r != atomic_load(&w->woken)) {
            http_wakeup(w->c);
            atomic_store(&w->woken, r);
        }
    }
    return NULL;
}

static void test_wakeup_from_another_thread(void **state)
{
    (void)state;
    ht_waker w;
    pthread_t t;
    memset(&w, 0, sizeof(w));
    w.c = ht_client();
    assert_int_equal(pthread_create(&t, NULL, ht_waker_main, &w), 0);
    for (unsigned r = 1; r <= HT_ROUNDS; r++) {
        atomic_store(&w.round, r);
        assert_int_equal(http_poll(w.c, HT_FOREVER_MS), LMSCHED_OK);
        /* The round's wakeup was sent before the next round starts, so
         * at most one wakeup is ever unconsumed. */
        while (atomic_load(&w.woken) != r)
            ;
    }
    atomic_store(&w.stop, true);
    assert_int_equal(pthread_join(t, NULL), 0);
    http_free(w.c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wakeup_before_poll),
        cmocka_unit_test(test_wakeup_from_another_thread),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
