/*
 * stray_test - fault 11: connections to the daemon's listener that never
 * speak SP. Raw connect()/close() in a loop, connections held open (silent,
 * with half an SP header, with garbage) while agents are served, garbage or
 * half a header and then a hang-up, and a second `lmsched serve` on the same
 * ipc:// path (nng probes the path by connecting to it). On ipc:// and on
 * tcp:// (with --auth-token-file, which tcp:// requires). After every case a
 * new agent connection must get a chat answered within one second.
 *
 * With nng before 1.6.0 unpatched, the first peer that hangs up during the
 * SP handshake stops the listener for good (nng #1518, docs/nng.md): these
 * tests fail there, and pass with scripts/nng-build's patched nng.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cmocka.h>

#include "kit/check.h"
#include "kit/clock.h"
#include "kit/daemon.h"
#include "kit/env.h"
#include "kit/fs.h"
#include "kit/net.h"
#include "kit/proc.h"
#include "kit/pstat.h"
#include "kit/tally.h"
#include "lmsched/agent.h"

#define SIM "--time-scale", "50", "--model-size", "1073741824"
#define MEM "--total-ram", "64G", "--kv-per-request", "16M"
#define TOKEN "stray-test-token_0123456789"

/* The first 8 bytes a REQ peer sends: "\0SP\0", protocol 0x30 (req0), 0. */
static const unsigned char sp_req_header[8] = {0, 'S', 'P', 0, 0x00, 0x30, 0, 0};
static const char http_get[] = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";

/* ---- the daemon, on ipc:// or tcp:// ---------------------------------------- */

static void start_ipc(kit_env *e)
{
    unsetenv("LMSCHED_AUTH_TOKEN");
    const char *sim[] = {SIM, NULL};
    const char *d[] = {MEM, NULL};
    kit_env_start(e, sim, d);
}

/* tcp:// needs a token file; agents (and the kit's status probe) send
 * the token from the environment. */
static void start_tcp(kit_env *e)
{
    char tok[600];
    snprintf(tok, sizeof(tok), "%s/token", e->dir);
    assert_int_equal(kit_fs_write(tok, TOKEN "\n", 0600), 0);
    int port = kit_net_free_port();
    assert_true(port > 0);
    snprintf(e->url, sizeof(e->url), "tcp://127.0.0.1:%d", port);
    setenv("LMSCHED_AUTH_TOKEN", TOKEN, 1);
    const char *sim[] = {SIM, NULL};
    const char *d[] = {MEM, "--auth-token-file", tok, NULL};
    kit_env_start(e, sim, d);
}

/* ---- raw peers ------------------------------------------------------------------ */

/* A plain stream connection to the daemon's listener, or -1. */
static int raw_connect(const kit_env *e)
{
    return kit_net_connect(e->url);
}

static void raw_send(int fd, const void *buf, size_t len)
{
    assert_int_equal(kit_net_send(fd, buf, len), (ssize_t)len);
}

/* Some bytes that are not an SP header. */
static void garbage(unsigned char *buf, size_t len, unsigned seed)
{
    for (size_t i = 0; i < len; i++) {
        seed = seed * 1103515245u + 12345u;
        buf[i] = (unsigned char)(seed >> 16);
    }
    buf[0] = 'G'; /* never the header's leading 0 */
}

/* Sleeps a second and returns the CPU time pid used meanwhile, in ms (-1 if
 * unreadable). */
static long cpu_ms_in_next_second(pid_t pid)
{
    double t0 = kit_pstat_cpu_us(pid);
    kit_sleep_ms(1000);
    double t1 = kit_pstat_cpu_us(pid);
    return t0 >= 0 && t1 >= 0 ? (long)((t1 - t0) / 1000) : -1L;
}

/* ---- the check after every case ---------------------------------------------- */

/* A new agent connection asks one chat; it must be answered within a
 * second (connecting included). Prints and returns the time it took. */
static int64_t chat_within_1s(kit_env *e, const char *after)
{
    lmsched_client *c = NULL;
    lmsched_result *res = NULL;
    lmsched_request *r = kit_req("You are terse.", "still there?", 4);

    assert_int_equal(lmsched_client_open(&c, e->url), LMSCHED_OK);
    lmsched_client_set_connect_timeout(c, 1000);
    int64_t t0 = kit_now_ms();
    int rc = lmsched_chat(c, r, 1000, &res);
    int64_t ms = kit_now_ms() - t0;
    printf("  after %s: chat %s in %lld ms%s%s\n", after, lmsched_strerror(rc),
           (long long)ms, rc != LMSCHED_OK && res ? ": " : "",
           rc != LMSCHED_OK && res ? lmsched_result_message(res) : "");
    lmsched_result_free(res);
    lmsched_request_free(r);
    lmsched_client_close(c);
    if (rc != LMSCHED_OK) {
        /* With nng #1518 the daemon may also spin on the connections it
         * accepted but never handed over: show what it does meanwhile. */
        long cpu = cpu_ms_in_next_second(e->daemon.pid);
        kit_env_dump_logs(e);
        fail_msg(
            "no answer within a second after %s (daemon %s, CPU %ld ms in the second "
            "after): the listener stopped accepting (nng #1518? see docs/nng.md)",
            after, kit_proc_exited(&e->daemon) ? "dead" : "alive", cpu);
    }
    return ms;
}

/* ---- the cases ------------------------------------------------------------------ */

enum { STRAYS = 100, HELD = 20, REPEAT = 20, SECOND_SERVES = 10 };

/* Three rounds of STRAYS raw connect()/close() (as `python3 -c 'import
 * socket; ...'` does), each followed by a chat. A hang-up stops an
 * unpatched listener when it lands between the daemon's accept() and its
 * SP header, so one round can miss the bug; three rarely do. */
static void case_connect_close(kit_env *e, const char *tr)
{
    int fds0 = kit_pstat_fds(e->daemon.pid);
    int64_t ms = 0;
    for (int round = 1; round <= 3; round++) {
        for (int i = 0; i < STRAYS; i++) {
            int fd = raw_connect(e);
            assert_true(fd >= 0);
            close(fd);
        }
        char what[64];
        snprintf(what, sizeof(what), "%d raw connect/close (round %d)", STRAYS, round);
        int64_t t = chat_within_1s(e, what);
        ms = t > ms ? t : ms;
    }
    /* What the daemon does while nobody talks to it: nothing. An accepted
     * connection left behind can make the poller spin on its hang-up. */
    long cpu = cpu_ms_in_next_second(e->daemon.pid);
    printf(
        "fault 11: %s: 3 x %d raw connect/close: each next chat answered in at most "
        "%lld ms; daemon fds %d before, %d after; CPU %ld ms in the idle second after\n",
        tr, STRAYS, (long long)ms, fds0, kit_pstat_fds(e->daemon.pid), cpu);
}

/* HELD connections kept open (a third silent, a third with half an SP
 * header, a third with garbage) while agents are served; then closed. */
static void case_half_open(kit_env *e, const char *tr)
{
    int fds[HELD];
    int silent = 0, partial = 0, junk = 0;
    for (int i = 0; i < HELD; i++) {
        fds[i] = raw_connect(e);
        assert_true(fds[i] >= 0);
        if (i % 3 == 1) {
            raw_send(fds[i], sp_req_header, 4);
            partial++;
        } else if (i % 3 == 2) {
            raw_send(fds[i], http_get, sizeof(http_get) - 1);
            junk++;
        } else {
            silent++;
        }
    }
    char what[128];
    snprintf(what, sizeof(what), "%d held open (%d silent, %d half header, %d garbage)",
             HELD, silent, partial, junk);
    /* Several agents at once, each on its own connection. */
    enum { AGENTS = 4 };
    lmsched_client *c[AGENTS];
    kit_tally t;
    kit_tally_init(&t);
    for (int i = 0; i < AGENTS; i++) {
        assert_int_equal(lmsched_client_open(&c[i], e->url), LMSCHED_OK);
        lmsched_client_set_connect_timeout(c[i], 1000);
        lmsched_request *r = kit_req("You are terse.", "are you there?", 4);
        assert_int_equal(lmsched_chat_async(c[i], r, 1000, kit_tally_cb, &t), LMSCHED_OK);
        lmsched_request_free(r);
    }
    int done = kit_tally_wait(&t, AGENTS, 5000);
    int ok = kit_tally_count(&t, LMSCHED_OK);
    for (int i = 0; i < AGENTS; i++)
        lmsched_client_close(c[i]);
    kit_tally_fini(&t);
    printf("  while %s: %d of %d agents answered within a second\n", what, ok, AGENTS);
    assert_int_equal(done, AGENTS);
    assert_int_equal(ok, AGENTS);
    int64_t during = chat_within_1s(e, what);

    /* Half of them read what the daemon sent (its SP header) first, so
     * their close is a clean end of stream; the others close with it
     * unread, which a kernel may turn into a reset. */
    for (int i = 0; i < HELD; i++) {
        if (i % 2 == 0) {
            struct timeval tv = {1, 0};
            unsigned char hdr[8];
            setsockopt(fds[i], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
            assert_int_equal(recv(fds[i], hdr, sizeof(hdr), MSG_WAITALL),
                             (ssize_t)sizeof(hdr));
            assert_memory_equal(hdr, "\0SP\0", 4);
        }
        close(fds[i]);
    }
    snprintf(what, sizeof(what), "closing the %d held connections", HELD);
    int64_t after = chat_within_1s(e, what);
    printf("fault 11: %s: %d connections held open (%d silent, %d half header, %d "
           "garbage): %d agents served meanwhile, a chat in %lld ms; after closing them "
           "a chat in %lld ms\n",
           tr, HELD, silent, partial, junk, AGENTS, (long long)during, (long long)after);
}

/* REPEAT times: garbage, then a hang-up; half with fewer bytes than a
 * header (the hang-up ends the handshake), half with more. */
static void case_garbage_close(kit_env *e, const char *tr)
{
    for (int i = 0; i < REPEAT; i++) {
        unsigned char buf[64];
        size_t n = i % 2 ? 3 : sizeof(buf);
        garbage(buf, n, (unsigned)i + 1);
        int fd = raw_connect(e);
        assert_true(fd >= 0);
        raw_send(fd, buf, n);
        close(fd);
    }
    char what[64];
    snprintf(what, sizeof(what), "%d garbage-then-close", REPEAT);
    int64_t ms = chat_within_1s(e, what);
    printf("fault 11: %s: %d connections sent garbage (3 or 64 bytes) and closed: next "
           "chat answered in %lld ms\n",
           tr, REPEAT, (long long)ms);
}

/* REPEAT times: the first half of a valid REQ header, then a hang-up. */
static void case_half_header_close(kit_env *e, const char *tr)
{
    for (int i = 0; i < REPEAT; i++) {
        int fd = raw_connect(e);
        assert_true(fd >= 0);
        raw_send(fd, sp_req_header, 4);
        close(fd);
    }
    char what[64];
    snprintf(what, sizeof(what), "%d half-handshake-then-close", REPEAT);
    int64_t ms = chat_within_1s(e, what);
    printf("fault 11: %s: %d connections sent half an SP header and closed: next chat "
           "answered in %lld ms\n",
           tr, REPEAT, (long long)ms);
}

/* ---- the tests -------------------------------------------------------------------- */

static void test_ipc_connect_close(void **state)
{
    start_ipc(*state);
    case_connect_close(*state, "ipc");
}

static void test_ipc_half_open(void **state)
{
    start_ipc(*state);
    case_half_open(*state, "ipc");
}

static void test_ipc_garbage_close(void **state)
{
    start_ipc(*state);
    case_garbage_close(*state, "ipc");
}

static void test_ipc_half_header_close(void **state)
{
    start_ipc(*state);
    case_half_header_close(*state, "ipc");
}

/* A second daemon on the same ipc:// path must be refused (exit 4, "Address
 * in use"), and on its way nng connects to the path to see whether anyone
 * listens there: a stray connection of its own. The first keeps serving.
 * Whether one probe hits nng #1518 depends on timing, hence ten. */
static void test_ipc_second_serve(void **state)
{
    kit_env *e = *state;
    start_ipc(e);
    const char *mem[] = {MEM, NULL};
    int64_t ms = 0;
    for (int i = 0; i < SECOND_SERVES; i++) {
        char *out = NULL;
        int rc = kit_env_serve_run(e, mem, &out);
        printf("  second lmsched serve on %s: exit %d: %s", e->url, rc, out);
        assert_int_equal(rc, 4);
        assert_non_null(strstr(out, "Address in use"));
        free(out);
        ms = chat_within_1s(e, "a second lmsched serve on the same path");
    }
    assert_false(kit_proc_exited(&e->daemon));
    printf("fault 11: ipc: a second lmsched serve on the same path, %d times: exit 4 "
           "(Address in use) each time; the first answered the next chat in %lld ms\n",
           SECOND_SERVES, (long long)ms);
}

static void test_tcp_connect_close(void **state)
{
    start_tcp(*state);
    case_connect_close(*state, "tcp");
    unsetenv("LMSCHED_AUTH_TOKEN");
}

static void test_tcp_half_open(void **state)
{
    start_tcp(*state);
    case_half_open(*state, "tcp");
    unsetenv("LMSCHED_AUTH_TOKEN");
}

static void test_tcp_garbage_close(void **state)
{
    start_tcp(*state);
    case_garbage_close(*state, "tcp");
    unsetenv("LMSCHED_AUTH_TOKEN");
}

static void test_tcp_half_header_close(void **state)
{
    start_tcp(*state);
    case_half_header_close(*state, "tcp");
    unsetenv("LMSCHED_AUTH_TOKEN");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_ipc_connect_close, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_ipc_half_open, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_ipc_garbage_close, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_ipc_half_header_close, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_ipc_second_serve, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_tcp_connect_close, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_tcp_half_open, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_tcp_garbage_close, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_tcp_half_header_close, kit_env_setup,
                                        kit_env_teardown),
    };
    return cmocka_run_group_tests_name("faults_stray", tests, NULL, NULL);
}
