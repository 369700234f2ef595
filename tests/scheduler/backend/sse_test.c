/*
 * sse_test - the text/event-stream parser: the same events whatever way the
 * bytes are split, every line-ending style, the WHATWG field rules, bounds,
 * and the callback's stop value.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "scheduler/backend/sse.h"

#define REC_MAX 32

/* What the callback saw. */
typedef struct rec {
    int n;
    char event[REC_MAX][64];
    char *data[REC_MAX];
    size_t len[REC_MAX];
    int stop_at; /* 1-based event number whose callback returns stop_rc; 0 never */
    int stop_rc;
} rec;

static int rec_cb(void *arg, const char *event, const char *data, size_t len)
{
    rec *r = arg;
    assert_non_null(event);
    assert_non_null(data);
    assert_int_equal(data[len], '\0');
    assert_true(r->n < REC_MAX);
    strncpy(r->event[r->n], event, sizeof(r->event[0]) - 1);
    r->data[r->n] = malloc(len + 1);
    assert_non_null(r->data[r->n]);
    memcpy(r->data[r->n], data, len + 1);
    r->len[r->n] = len;
    r->n++;
    if (r->stop_at == r->n)
        return r->stop_rc;
    return 0;
}

static void rec_free(rec *r)
{
    for (int i = 0; i < r->n; i++)
        free(r->data[i]);
    memset(r, 0, sizeof(*r));
}

static void rec_equal(const rec *a, const rec *b)
{
    assert_int_equal(a->n, b->n);
    for (int i = 0; i < a->n; i++) {
        assert_string_equal(a->event[i], b->event[i]);
        assert_int_equal(a->len[i], b->len[i]);
        assert_memory_equal(a->data[i], b->data[i], a->len[i]);
    }
}

/* Feeds s in pieces: split 0 all at once, 1 byte by byte, 2 random sizes. */
static void feed(rec *r, const char *s, size_t len, int split, unsigned seed)
{
    sse_parser p;
    sse_init(&p, 4096, rec_cb, r);
    size_t i = 0;
    while (i < len) {
        size_t n = len - i;
        if (split == 1)
            n = 1;
        else if (split == 2) {
            seed = seed * 1103515245u + 12345u;
            size_t want = (seed >> 16) % 23 + 1;
            n = want < n ? want : n;
        }
        assert_int_equal(sse_feed(&p, s + i, n), 0);
        i += n;
    }
    sse_fini(&p);
}

/* A stream as llama.cpp and LM Studio send it, plus every rule at once. */
static const char stream[] = ": ping\r\n"
                             "\r\n"
                             "data: {\"a\":1}\n\n"
                             "data:{\"b\":2}\r\n\r\n"
                             "event: error\r"
                             "data: line one\r"
                             "data: line two\r\r"
                             "data\n\n"
                             "data:  two spaces\n"
                             "id: 7\n"
                             "retry: 100\n"
                             "unknown: x\n\n"
                             "event: lonely\n\n"
                             "data: after\r\n"
                             "\r\n"
                             "data: [DONE]\n\n"
                             "data: partial event never ended\n";

static void check_stream(const rec *r)
{
    assert_int_equal(r->n, 7);
    assert_string_equal(r->data[0], "{\"a\":1}");
    assert_string_equal(r->event[0], "");
    assert_string_equal(r->data[1], "{\"b\":2}");
    assert_string_equal(r->event[2], "error");
    assert_string_equal(r->data[2], "line one\nline two");
    assert_int_equal(r->len[2], strlen("line one\nline two"));
    /* A bare "data" line is an event with empty data. */
    assert_string_equal(r->data[3], "");
    assert_int_equal(r->len[3], 0);
    assert_string_equal(r->event[3], "");
    /* Only one space is dropped after the colon. */
    assert_string_equal(r->data[4], " two spaces");
    /* "event: lonely" had no data: not dispatched, and its type did not
     * leak into the next event. */
    assert_string_equal(r->data[5], "after");
    assert_string_equal(r->event[5], "");
    assert_string_equal(r->data[6], "[DONE]");
}

static void test_splits_agree(void **state)
{
    (void)state;
    rec whole = {0}, bytes = {0}, rnd = {0};
    feed(&whole, stream, sizeof(stream) - 1, 0, 0);
    check_stream(&whole);
    feed(&bytes, stream, sizeof(stream) - 1, 1, 0);
    rec_equal(&whole, &bytes);
    for (unsigned seed = 1; seed <= 50; seed++) {
        feed(&rnd, stream, sizeof(stream) - 1, 2, seed);
        rec_equal(&whole, &rnd);
        rec_free(&rnd);
    }
    rec_free(&whole);
    rec_free(&bytes);
}

/* A CRLF split across two feeds must not read as two line ends. */
static void test_crlf_split(void **state)
{
    (void)state;
    rec r = {0};
    sse_parser p;
    sse_init(&p, 256, rec_cb, &r);
    assert_int_equal(sse_feed(&p, "data: a\r", 8), 0);
    assert_int_equal(sse_feed(&p, "\n", 1), 0);
    assert_int_equal(r.n, 0); /* one line end so far, no blank line */
    assert_int_equal(sse_feed(&p, "data: b\r", 8), 0);
    assert_int_equal(sse_feed(&p, "\ndata: c\r\n\r", 11), 0);
    assert_int_equal(r.n, 1);
    assert_string_equal(r.data[0], "a\nb\nc");
    /* The LF after the last CR is skipped, not a second blank line. */
    assert_int_equal(sse_feed(&p, "\ndata: d\n\n", 10), 0);
    assert_int_equal(r.n, 2);
    assert_string_equal(r.data[1], "d");
    sse_fini(&p);
    rec_free(&r);
}

static void test_event_name_truncated(void **state)
{
    (void)state;
    rec r = {0};
    sse_parser p;
    char bytes[256];
    memset(bytes, 0, sizeof(bytes));
    strcpy(bytes, "event: ");
    memset(bytes + 7, 'e', 100);
    strcat(bytes, "\ndata: x\n\n");
    sse_init(&p, 1024, rec_cb, &r);
    assert_int_equal(sse_feed(&p, bytes, strlen(bytes)), 0);
    assert_int_equal(r.n, 1);
    assert_int_equal(strlen(r.event[0]), 63);
    sse_fini(&p);
    rec_free(&r);
}

static void test_partial_discarded(void **state)
{
    (void)state;
    rec r = {0};
    sse_parser p;
    sse_init(&p, 256, rec_cb, &r);
    const char s[] = "data: one\n\ndata: two\ndata: three";
    assert_int_equal(sse_feed(&p, s, sizeof(s) - 1), 0);
    assert_int_equal(r.n, 1);
    assert_string_equal(r.data[0], "one");
    sse_fini(&p); /* frees the half-built event without dispatching it */
    assert_int_equal(r.n, 1);
    rec_free(&r);
}

static void test_line_too_big(void **state)
{
    (void)state;
    rec r = {0};
    sse_parser p;
    char bytes[64];
    memset(bytes, 'x', sizeof(bytes));
    sse_init(&p, 1000, rec_cb, &r);
    /* A line with no end, fed in small pieces, must hit the bound without
     * the buffer growing past it. */
    int rc = 0, feeds = 0;
    while (rc == 0 && feeds < 1000) {
        rc = sse_feed(&p, bytes, sizeof(bytes));
        feeds++;
    }
    assert_int_equal(rc, SSE_ETOOBIG);
    assert_int_equal(feeds, 16); /* 15 x 64 = 960 fit, the 16th passes 1000 */
    assert_true(p.line.cap <= 1001);
    assert_int_equal(r.n, 0);
    sse_fini(&p);

    /* A line of exactly max_event bytes is fine. */
    sse_init(&p, 32, rec_cb, &r);
    memcpy(bytes, "data: ", 6);
    bytes[32] = '\n';
    bytes[33] = '\n';
    assert_int_equal(sse_feed(&p, bytes, 34), 0);
    assert_int_equal(r.n, 1);
    assert_int_equal(r.len[0], 26);
    sse_fini(&p);
    rec_free(&r);
}

static void test_event_too_big(void **state)
{
    (void)state;
    rec r = {0};
    sse_parser p;
    /* Each line fits, the joined event does not: 4 x 10 bytes + 3 "\n" > 40. */
    sse_init(&p, 40, rec_cb, &r);
    const char line[] = "data: 0123456789\n";
    int rc = 0;
    for (int i = 0; i < 4 && rc == 0; i++)
        rc = sse_feed(&p, line, sizeof(line) - 1);
    assert_int_equal(rc, SSE_ETOOBIG);
    assert_int_equal(r.n, 0);
    sse_fini(&p);

    /* Exactly at the bound: 3 x 10 + 3 joins + 7 = 40 bytes. */
    sse_init(&p, 40, rec_cb, &r);
    const char ok[] = "data: 0123456789\ndata: 0123456789\ndata: 0123456789\n"
                      "data: 0123456\n\n";
    assert_int_equal(sse_feed(&p, ok, sizeof(ok) - 1), 0);
    assert_int_equal(r.n, 1);
    assert_int_equal(r.len[0], 40);
    sse_fini(&p);
    rec_free(&r);
}

static void test_stop_propagated(void **state)
{
    (void)state;
    rec r = {0};
    r.stop_at = 2;
    r.stop_rc = 42;
    sse_parser p;
    sse_init(&p, 256, rec_cb, &r);
    const char s[] = "data: 1\n\ndata: 2\n\ndata: 3\n\n";
    assert_int_equal(sse_feed(&p, s, sizeof(s) - 1), 42);
    /* Parsing stopped at the second event. */
    assert_int_equal(r.n, 2);
    sse_fini(&p);
    rec_free(&r);
}

/* Data bytes are passed through untouched, NULs and UTF-8 included. */
static void test_binary_data(void **state)
{
    (void)state;
    rec r = {0};
    sse_parser p;
    sse_init(&p, 256, rec_cb, &r);
    const char s[] = "data: a\0b \xc3\xa9\n\n";
    assert_int_equal(sse_feed(&p, s, sizeof(s) - 1), 0);
    assert_int_equal(r.n, 1);
    assert_int_equal(r.len[0], 6);
    assert_memory_equal(r.data[0], "a\0b \xc3\xa9", 6);
    sse_fini(&p);
    rec_free(&r);
}

static void test_fini_null_and_twice(void **state)
{
    (void)state;
    sse_fini(NULL);
    rec r = {0};
    sse_parser p;
    sse_init(&p, 64, rec_cb, &r);
    assert_int_equal(sse_feed(&p, "data: x", 7), 0);
    sse_fini(&p);
    sse_fini(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_splits_agree),
        cmocka_unit_test(test_crlf_split),
        cmocka_unit_test(test_event_name_truncated),
        cmocka_unit_test(test_partial_discarded),
        cmocka_unit_test(test_line_too_big),
        cmocka_unit_test(test_event_too_big),
        cmocka_unit_test(test_stop_propagated),
        cmocka_unit_test(test_binary_data),
        cmocka_unit_test(test_fini_null_and_twice),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
