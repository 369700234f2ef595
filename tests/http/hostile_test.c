/*
 * hostile_test - hostile HTTP against the front door, on raw sockets where
 * libcurl would not send it: malformed JSON, a wrong content type, a
 * 20 MiB body (declared and chunked), 10,000 headers, a header trickled a
 * byte at a time, request smuggling (conflicting framing), pipelined
 * requests, binary garbage, 1,000 idle connections. Each gets its error or
 * its timeout, a normal request still succeeds during and after, and the
 * daemon's descriptors and memory come back to where they were.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "hx.h"
#include "kit/check.h"
#include "kit/clock.h"
#include "kit/json.h"
#include "kit/net.h"
#include "kit/pstat.h"

#define T_MS 20000
/* The daemon under attack: short timeouts so the test is quick. */
#define HEADER_MS 1000
#define IDLE 1000

static const char CHAT[] =
    "{\"messages\":[{\"role\":\"system\",\"content\":\"You are under "
    "attack.\"},{\"role\":\"user\",\"content\":\"Still there?\"}],"
    "\"max_tokens\":3}";

/* A normal request: it works. */
static void normal(hx *h)
{
    kit_http_resp r;
    if (hx_req(h, "POST", "/v1/chat/completions", NULL, CHAT, T_MS, &r) != 0 ||
        r.status != 200)
        fail_msg("a normal request failed: cc %d, HTTP %ld: %s", r.cc, r.status,
                 r.body ? r.body : "");
    assert_int_equal(kit_json_int(r.json, "usage.completion_tokens"), 3);
    kit_http_resp_fini(&r);
}

/* Sends raw bytes (ignoring a reset midway) and reads until the daemon
 * closes or timeout_ms; returns what came back (free it). */
static char *raw(hx *h, const void *req, size_t len, int timeout_ms, bool *closed)
{
    int fd = hx_connect(h);
    assert_true(fd >= 0);
    size_t off = 0;
    while (off < len) {
        ssize_t n = kit_net_send(fd, (const char *)req + off, len - off);
        if (n <= 0)
            break; /* the daemon closed on us: what it said is still readable */
        off += (size_t)n;
    }
    char *got = hx_read_all(fd, 1 << 20, timeout_ms, closed);
    close(fd);
    return got;
}

static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

static int64_t metric_int(hx *h, const char *series)
{
    kit_http_resp r;
    int64_t v = -1;
    if (hx_req(h, "GET", "/metrics", NULL, NULL, T_MS, &r) == 0 && r.body != NULL) {
        char line[160];
        snprintf(line, sizeof(line), "\n%s ", series);
        const char *p = strstr(r.body, line);
        if (p != NULL)
            v = strtoll(p + strlen(line), NULL, 10);
    }
    kit_http_resp_fini(&r);
    return v;
}

static void test_hostile(void **state)
{
    hx *h = *state;
    char hto[16];
    snprintf(hto, sizeof(hto), "%d", HEADER_MS);
    hx_start(h, (const char *[]){"--time-scale", "50", NULL},
             (const char *[]){"--http-max-conns", "256", "--http-header-timeout", hto,
                              "--http-body-timeout", "2000", "--http-max-body", "1M",
                              NULL});
    pid_t pid = h->e.daemon.pid;
    normal(h);
    normal(h);
    kit_sleep_ms(200);
    int fd0 = kit_pstat_fds(pid);
    long rss0 = kit_pstat_rss_kb(pid);
    printf("baseline: %d fds, %ld KiB resident\n", fd0, rss0);
    kit_http_resp r;
    bool closed;
    char *got;

    /* Malformed JSON and a wrong content type. */
    assert_int_equal(
        hx_req(h, "POST", "/v1/chat/completions", NULL, "{\"messages\":[{]", T_MS, &r),
        0);
    hx_expect_error(&r, 400, "proto", NULL, "not valid JSON");
    kit_http_resp_fini(&r);
    assert_int_equal(
        hx_req(h, "POST", "/v1/chat/completions",
               (const char *[]){"Content-Type: application/x-www-form-urlencoded", NULL},
               "messages=hi", T_MS, &r),
        0);
    hx_expect_error(&r, 415, "proto", NULL, NULL);
    kit_http_resp_fini(&r);

    /* 20 MiB declared: 413 before a byte of it is read, connection closed. */
    static const char big_hdr[] = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                                  "Content-Type: application/json\r\n"
                                  "Content-Length: 20971520\r\n\r\n{\"messages\":";
    got = raw(h, big_hdr, sizeof(big_hdr) - 1, T_MS, &closed);
    assert_int_equal(strncmp(got, "HTTP/1.1 413", 12), 0);
    assert_true(closed);
    free(got);
    /* 20 MiB chunked (no length to refuse it by): read, dropped, 413. */
    size_t big = 20u << 20;
    char *b = malloc(big + 1);
    assert_non_null(b);
    memset(b, ' ', big);
    b[0] = '{';
    b[big - 1] = '}';
    b[big] = '\0';
    assert_int_equal(hx_req(h, "POST", "/v1/chat/completions",
                            (const char *[]){"Transfer-Encoding: chunked", NULL}, b, T_MS,
                            &r),
                     0);
    hx_expect_error(&r, 413, "too_large", NULL, "--http-max-body");
    kit_http_resp_fini(&r);
    free(b);

    /* 10,000 headers: past the header memory, 431, closed. */
    size_t cap = 10000 * 24 + 256, n = 0;
    char *many = malloc(cap);
    assert_non_null(many);
    n += (size_t)sprintf(many, "GET /health HTTP/1.1\r\nHost: x\r\n");
    for (int i = 0; i < 10000; i++)
        n += (size_t)sprintf(many + n, "X-Hostile-%05d: v\r\n", i);
    n += (size_t)sprintf(many + n, "\r\n");
    got = raw(h, many, n, T_MS, &closed);
    assert_true(closed);
    if (got[0] != '\0')
        assert_int_equal(strncmp(got, "HTTP/1.1 431", 12), 0);
    printf("10,000 headers: %.40s\n", got);
    free(got);
    free(many);

    /* Smuggling: Content-Length and Transfer-Encoding both, with a second
     * request hidden behind: one 400, the connection closed, nothing more
     * answered. Then two Content-Lengths, then a coding that is not
     * chunked. */
    static const char *const smuggle[] = {
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
        "application/json\r\n"
        "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        "GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
        "application/json\r\n"
        "Content-Length: 2\r\nContent-Length: 40\r\n\r\n{}GET /health HTTP/1.1\r\nHost: "
        "x\r\n\r\n",
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
        "application/json\r\n"
        "Transfer-Encoding: gzip\r\n\r\n{}",
    };
    for (size_t i = 0; i < sizeof(smuggle) / sizeof(smuggle[0]); i++) {
        got = raw(h, smuggle[i], strlen(smuggle[i]), T_MS, &closed);
        if (strncmp(got, "HTTP/1.1 400", 12) != 0 || count(got, "HTTP/1.1 ") != 1 ||
            !closed)
            fail_msg("smuggling case %zu answered: %s", i, got);
        free(got);
    }

    /* Pipelined: three requests in one write, three answers in order. */
    char pipe_req[1024];
    int pl = snprintf(pipe_req, sizeof(pipe_req),
                      "GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
                      "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                      "application/json\r\nContent-Length: %zu\r\n\r\n%s"
                      "GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                      strlen(CHAT), CHAT);
    got = raw(h, pipe_req, (size_t)pl, T_MS, &closed);
    assert_true(closed);
    assert_int_equal(count(got, "HTTP/1.1 200 OK"), 3);
    const char *a1 = strstr(got, "\"status\":\"ok\"");
    const char *a2 = strstr(got, "\"object\":\"chat.completion\"");
    const char *a3 = strstr(got, "\"object\":\"list\"");
    assert_true(a1 != NULL && a2 != NULL && a3 != NULL && a1 < a2 && a2 < a3);
    free(got);

    /* Binary garbage (a TLS hello to a plain port). */
    static const unsigned char tls[] = {0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00,
                                        0xa1, 0x03, 0x03, 0x00, 0x0d, 0x0a, 0x0d, 0x0a};
    got = raw(h, tls, sizeof(tls), T_MS, &closed);
    assert_true(closed);
    if (got[0] != '\0')
        assert_int_equal(strncmp(got, "HTTP/1.1 400", 12), 0);
    free(got);

    /* A header trickled a byte every 100 ms: the daemon closes it at the
     * header timeout, while a normal request goes through. */
    int fd = hx_connect(h);
    assert_true(fd >= 0);
    kit_net_send(fd, "GET /health HTTP/1.1\r\nX-Slow: ", 30);
    int64_t t0 = kit_now_ms();
    bool normal_done = false;
    closed = false;
    while (!closed && kit_now_ms() - t0 < 10 * HEADER_MS) {
        if (kit_net_send(fd, "a", 1) != 1)
            closed = true;
        char c;
        ssize_t k = recv(fd, &c, 1, MSG_DONTWAIT);
        if (k == 0 || (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK))
            closed = true;
        if (!normal_done && kit_now_ms() - t0 > HEADER_MS / 3) {
            normal(h);
            normal_done = true;
        }
        kit_sleep_ms(100);
    }
    int64_t took = kit_now_ms() - t0;
    close(fd);
    printf("slow header closed after %lld ms (timeout %d ms)\n", (long long)took,
           HEADER_MS);
    assert_true(closed);
    assert_true(took >= HEADER_MS - 200 && took < 5 * HEADER_MS);

    /* 1,000 idle connections: past --http-max-conns closed at once, the
     * rest at the header timeout; then everything works again. */
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < 1200 && rl.rlim_max >= 1200) {
        rl.rlim_cur = rl.rlim_max < 4096 ? rl.rlim_max : 4096;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    getrlimit(RLIMIT_NOFILE, &rl);
    int want = rl.rlim_cur >= 1100 ? 1000 : (int)rl.rlim_cur - 100;
    int *fds = calloc((size_t)want, sizeof(*fds));
    assert_non_null(fds);
    int opened = 0;
    for (int i = 0; i < want; i++) {
        fds[i] = hx_connect(h);
        if (fds[i] >= 0)
            opened++;
    }
    printf("idle: %d connections opened\n", opened);
    assert_true(opened >= want * 9 / 10);
    int64_t t1 = kit_now_ms();
    int open_left = opened;
    while (open_left > 0 && kit_now_ms() - t1 < T_MS) {
        open_left = 0;
        for (int i = 0; i < want; i++) {
            if (fds[i] < 0)
                continue;
            char c;
            ssize_t k = recv(fds[i], &c, 1, MSG_DONTWAIT);
            if (k == 0 || (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
                close(fds[i]);
                fds[i] = -1;
            } else {
                open_left++;
            }
        }
        kit_sleep_ms(50);
    }
    printf("idle: all closed by the daemon after %lld ms\n",
           (long long)(kit_now_ms() - t1));
    assert_int_equal(open_left, 0);
    free(fds);
    normal(h);
    int64_t timeouts = metric_int(h, "lmsched_http_timeouts_total");
    printf("idle: %lld closed by the header timeout\n", (long long)timeouts);
    assert_true(timeouts >= 200);

    /* Back to baseline: descriptors exactly, memory within a bound. */
    int fd1 = -1;
    for (int64_t until = kit_now_ms() + T_MS; kit_now_ms() < until; kit_sleep_ms(50))
        if ((fd1 = kit_pstat_fds(pid)) <= fd0)
            break;
    long rss1 = kit_pstat_rss_kb(pid);
    printf("after: %d fds, %ld KiB resident\n", fd1, rss1);
    const char *why = kit_pstat_unusable(KIT_PSTAT_FDS);
    if (why == NULL)
        assert_true(fd1 <= fd0);
    json_t *st = kit_env_status(&h->e);
    assert_int_equal(kit_json_int(st, "requests.failed"), 0);
    assert_int_equal(kit_json_int(st, "queue.depth"), 0);
    json_decref(st);
    const char *why_rss = kit_pstat_unusable(KIT_PSTAT_RSS);
#if defined(__SANITIZE_THREAD__)
    /* ThreadSanitizer keeps shadow state for every connection thread and
     * lock the daemon ever saw. */
    why_rss = "ThreadSanitizer's shadow memory grows with what the daemon did";
#endif
    if (why_rss == NULL)
        assert_true(rss1 <= rss0 + 16 * 1024);
    hx_stop(h);
    kit_skip_if(why != NULL ? why : why_rss, "the daemon's descriptors and memory");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_hostile, hx_setup, hx_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
