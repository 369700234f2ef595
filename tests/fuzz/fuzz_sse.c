/*
 * fuzz_sse - libFuzzer target for the text/event-stream parser, which reads
 * the backend's streamed answer as curl hands it over in pieces of any size.
 *
 * Input layout (so the fuzzer mutates the split points and bounds too):
 *   byte 0   bits 0-2: max_event, from fz_max_event[];
 *            bits 3-7: k, the callback returns FZ_STOP_RC on event k (0: never)
 *   byte 1   n, the number of chunk sizes that follow (n % 17)
 *   n bytes  chunk sizes, each byte b meaning b + 1 bytes, used in turn; with
 *            n == 0 the stream is fed one byte at a time
 *   rest     the stream
 *
 * Oracle: the parser's output does not depend on how the stream was split.
 * The stream is parsed once in a single sse_feed and once in chunks; the
 * events (name, length, bytes) and the final return must be the same. Each
 * event must also obey the contract in sse.h: data NUL-terminated at len,
 * len within max_event, the name shorter than 64 bytes.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scheduler/backend/sse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FZ_STOP_RC 7
#define FZ_MAX_SIZES 16

static const size_t fz_max_event[8] = {1u << 20, 1, 8, 32, 64, 256, 1024, 65536};

static void fz_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void fz_fail(const char *fmt, ...)
{
    va_list ap;
    fputs("fuzz_sse: oracle failed: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    abort();
}

#define FZ_CHECK(cond, ...)                                                              \
    do {                                                                                 \
        if (!(cond))                                                                     \
            fz_fail(__VA_ARGS__);                                                        \
    } while (0)

/* What one parse produced: a count and a hash of every event, in order. */
typedef struct fz_log {
    size_t max_event;
    unsigned stop_at;
    unsigned n;
    uint64_t hash;
} fz_log;

static uint64_t fz_fnv(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static int fz_event_cb(void *arg, const char *event, const char *data, size_t len)
{
    fz_log *l = arg;
    uint64_t len64 = len;

    FZ_CHECK(event != NULL && data != NULL, "NULL event or data");
    FZ_CHECK(memchr(event, '\0', 64) != NULL,
             "event name not terminated within 64 bytes");
    FZ_CHECK(data[len] == '\0', "data not NUL-terminated at len %zu", len);
    FZ_CHECK(len <= l->max_event, "event of %zu bytes passes max_event %zu", len,
             l->max_event);
    l->n++;
    l->hash = fz_fnv(l->hash, event, strlen(event) + 1);
    l->hash = fz_fnv(l->hash, &len64, sizeof(len64));
    l->hash = fz_fnv(l->hash, data, len);
    return l->n == l->stop_at ? FZ_STOP_RC : 0;
}

static void fz_log_init(fz_log *l, size_t max_event, unsigned stop_at)
{
    memset(l, 0, sizeof(*l));
    l->max_event = max_event;
    l->stop_at = stop_at;
    l->hash = 0xcbf29ce484222325ull;
}

static void fz_check_rc(int rc)
{
    FZ_CHECK(rc == 0 || rc == SSE_ETOOBIG || rc == FZ_STOP_RC, "sse_feed returned %d",
             rc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t sizes[FZ_MAX_SIZES];
    size_t n_sizes, max_event;
    unsigned stop_at;
    const char *stream;
    size_t len;
    sse_parser p;
    fz_log whole, split;
    int rc_whole, rc_split = 0;

    if (size < 2)
        return 0;
    max_event = fz_max_event[data[0] & 7];
    stop_at = data[0] >> 3;
    n_sizes = data[1] % (FZ_MAX_SIZES + 1);
    if (size < 2 + n_sizes)
        return 0;
    for (size_t i = 0; i < n_sizes; i++)
        sizes[i] = (size_t)data[2 + i] + 1;
    stream = (const char *)data + 2 + n_sizes;
    len = size - 2 - n_sizes;

    /* A private copy of exactly len bytes, so ASan sees any over-read of
     * the stream even when the parser runs past a chunk's end. */
    char *copy = malloc(len > 0 ? len : 1);
    if (copy == NULL)
        return 0;
    if (len > 0)
        memcpy(copy, stream, len);

    fz_log_init(&whole, max_event, stop_at);
    sse_init(&p, max_event, fz_event_cb, &whole);
    rc_whole = sse_feed(&p, copy, len);
    fz_check_rc(rc_whole);
    sse_fini(&p);

    fz_log_init(&split, max_event, stop_at);
    sse_init(&p, max_event, fz_event_cb, &split);
    for (size_t off = 0, k = 0; off < len && rc_split == 0; k++) {
        size_t want = n_sizes > 0 ? sizes[k % n_sizes] : 1;
        size_t n = want < len - off ? want : len - off;
        /* Each piece in a buffer of its own size, as curl's would be. */
        char *piece = malloc(n);
        if (piece == NULL)
            break;
        memcpy(piece, copy + off, n);
        rc_split = sse_feed(&p, piece, n);
        free(piece);
        fz_check_rc(rc_split);
        off += n;
    }
    sse_fini(&p);
    /* fini leaves the parser reusable: a second fini must be harmless. */
    sse_fini(&p);

    FZ_CHECK(rc_whole == rc_split, "whole feed returned %d, split feeds %d", rc_whole,
             rc_split);
    FZ_CHECK(whole.n == split.n && whole.hash == split.hash,
             "whole feed gave %u events, split feeds %u (or different bytes)", whole.n,
             split.n);
    free(copy);
    return 0;
}
