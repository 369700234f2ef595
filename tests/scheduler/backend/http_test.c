/*
 * http_test - the libcurl client's sleep and its wakeups: http_poll returns
 * when another thread calls http_wakeup, whether the wakeup comes before
 * the poll begins or while it waits, and a wakeup is never lost (a lost one
 * leaves a poll waiting for its full timeout, far past the test's). And its
 * small JSON POSTs (http_post_json_start) against lmsim over loopback: the
 * answer's body, an HTTP error, and a transfer freed while in flight.
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

#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include "kit/fs.h"
#include "kit/proc.h"
#include "kit/sim.h"
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

/* ---- JSON POSTs against lmsim ------------------------------------------- */

typedef struct ht_sim {
    kit_proc proc;
    char dir[64];
    char url[64];
} ht_sim;

static void ht_sim_start(ht_sim *s, const char *const *args)
{
    char port_file[128], why[256];
    memset(s, 0, sizeof(*s));
    snprintf(s->dir, sizeof(s->dir), "/tmp/lmsched-http-test-XXXXXX");
    assert_non_null(mkdtemp(s->dir));
    snprintf(port_file, sizeof(port_file), "%s/port", s->dir);
    kit_sim_opts o = {
        .port_file = port_file,
        .log_level = "warn",
        .args = args,
        .out = KIT_OUT_QUIET,
        .timeout_ms = 10000,
    };
    int port = kit_sim_start(&s->proc, &o, why, sizeof(why));
    if (port < 0)
        fail_msg("%s", why);
    snprintf(s->url, sizeof(s->url), "http://127.0.0.1:%d", port);
}

static void ht_sim_stop(ht_sim *s)
{
    assert_int_equal(kit_proc_stop(&s->proc, SIGTERM, 10000), 0);
    kit_fs_rm_tree(s->dir);
}

/* Polls until a transfer finishes, and returns it. */
static http_xfer *ht_wait(http_client *c)
{
    for (int i = 0; i < 1000; i++) {
        http_xfer *x = http_done(c);
        if (x != NULL)
            return x;
        assert_int_equal(http_poll(c, 100), LMSCHED_OK);
    }
    fail_msg("no transfer finished");
    return NULL;
}

/* A JSON POST comes back whole in raw, with its owner and tag, marked
 * is_json (not a chat: nothing went through the stream parser). */
static void test_post_json(void **state)
{
    (void)state;
    ht_sim s;
    ht_sim_start(&s, NULL);
    http_client *c = ht_client();
    http_target *t = NULL;
    assert_int_equal(http_target_alloc(c, s.url, NULL, &t), LMSCHED_OK);
    int owner;
    http_xfer *x = NULL;
    assert_int_equal(http_post_json_start(c, t, "/tokenize",
                                          strdup("{\"content\":\"twelve bytes\"}"), &owner,
                                          7, &x),
                     LMSCHED_OK);
    assert_true(x->is_json);
    assert_false(x->is_chat);
    assert_ptr_equal(ht_wait(c), x);
    assert_int_equal(x->err.code, LMSCHED_OK);
    assert_int_equal(x->http_status, 200);
    assert_ptr_equal(x->owner, &owner);
    assert_int_equal(x->tag, 7);
    assert_non_null(x->raw);
    assert_int_equal(strlen(x->raw), x->raw_len);
    json_t *o = json_loads(x->raw, 0, NULL);
    assert_int_equal(json_array_size(json_object_get(o, "tokens")), 3); /* 12 bytes / 4 */
    json_decref(o);
    http_xfer_free(c, x);

    /* A bad body: the server's 400, classified as any HTTP error. */
    assert_int_equal(http_post_json_start(c, t, "/tokenize", strdup("{\"content\":1}"), NULL,
                                          0, &x),
                     LMSCHED_OK);
    assert_ptr_equal(ht_wait(c), x);
    assert_int_equal(x->http_status, 400);
    assert_int_not_equal(x->err.code, LMSCHED_OK);
    http_xfer_free(c, x);
    http_target_free(c, t);
    http_free(c);
    ht_sim_stop(&s);
}

/* A server without the endpoint: its 404, with the error's body in raw. */
static void test_post_json_not_found(void **state)
{
    (void)state;
    ht_sim s;
    const char *args[] = {"--no-tokenize", NULL};
    ht_sim_start(&s, args);
    http_client *c = ht_client();
    http_target *t = NULL;
    assert_int_equal(http_target_alloc(c, s.url, "secret", &t), LMSCHED_OK);
    http_xfer *x = NULL;
    assert_int_equal(http_post_json_start(c, t, "/apply-template",
                                          strdup("{\"messages\":[]}"), NULL, 1, &x),
                     LMSCHED_OK);
    assert_ptr_equal(ht_wait(c), x);
    assert_int_equal(x->http_status, 404);
    assert_int_equal(x->err.code, LMSCHED_EBACKEND_HTTP);
    assert_non_null(x->raw);
    http_xfer_free(c, x);
    http_target_free(c, t);
    http_free(c);
    ht_sim_stop(&s);
}

/* Freed in flight (its owner ended first): cancelled, never handed back
 * by http_done, and the client goes on; the one left running when the
 * client is freed is freed with it (ASan checks both). */
static void test_post_json_cancel(void **state)
{
    (void)state;
    ht_sim s;
    ht_sim_start(&s, NULL);
    http_client *c = ht_client();
    http_target *t = NULL;
    assert_int_equal(http_target_alloc(c, s.url, NULL, &t), LMSCHED_OK);
    http_xfer *a = NULL, *b = NULL, *d = NULL;
    assert_int_equal(http_post_json_start(c, t, "/tokenize", strdup("{\"content\":\"a\"}"),
                                          NULL, 1, &a),
                     LMSCHED_OK);
    assert_int_equal(http_post_json_start(c, t, "/tokenize", strdup("{\"content\":\"b\"}"),
                                          NULL, 2, &b),
                     LMSCHED_OK);
    assert_int_equal(http_perform(c), LMSCHED_OK); /* both under way */
    http_xfer_free(c, a);
    assert_ptr_equal(ht_wait(c), b);
    assert_int_equal(b->err.code, LMSCHED_OK);
    assert_null(http_done(c));
    http_xfer_free(c, b);
    /* Finished but not taken yet: freeing it takes it off the done list. */
    assert_int_equal(http_post_json_start(c, t, "/tokenize", strdup("{\"content\":\"c\"}"),
                                          NULL, 3, &a),
                     LMSCHED_OK);
    for (int i = 0; i < 1000 && !a->end_us; i++)
        assert_int_equal(http_poll(c, 100), LMSCHED_OK);
    http_xfer_free(c, a);
    assert_null(http_done(c));
    assert_int_equal(http_post_json_start(c, t, "/tokenize", strdup("{\"content\":\"d\"}"),
                                          NULL, 4, &d),
                     LMSCHED_OK);
    http_target_free(c, t);
    http_free(c); /* d still running */
    ht_sim_stop(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wakeup_before_poll),
        cmocka_unit_test(test_wakeup_from_another_thread),
        cmocka_unit_test(test_post_json),
        cmocka_unit_test(test_post_json_not_found),
        cmocka_unit_test(test_post_json_cancel),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
