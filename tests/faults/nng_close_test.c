/*
 * nng_close_test - nng itself, without lmsched: nng_close must return while
 * a message is arriving on one of the socket's pipes. In nng 1.5.2 it can
 * hang forever (nng #1813, docs/nng.md): when the pipe closes between the
 * read of a message's header and the read of its body, the ipc transport
 * starts the body read on an aio that the close has already stopped, nng
 * drops that read without a word, and nng's reaper thread then waits for
 * it in the protocol's pipe_stop. nng_close waits for the reaper, and so
 * does every later reap in the process. This test is linked against the
 * same nng as the daemon and the agent library.
 *
 * In real use the window is the few microseconds between the header read
 * completing and its callback running. The first two cases make it as
 * wide as they like: they fill nng's task queue with callbacks that wait
 * (the queue is first in, first out, so the header's callback waits behind
 * them), close the socket, and let the queue go from the pipe-removed
 * callback, which nng's reaper runs after the pipe is closed and before it
 * stops it. The peer is a plain Unix socket that speaks SP by hand, so the
 * test decides exactly what arrives: a message header, and no body.
 *
 *   req0   an agent's REQ socket (lmsched_client_close) as a reply arrives
 *   rep0   the daemon's REP socket (rep_close at shutdown) as a request
 *          arrives
 *   churn  an echo pair over ipc://, requests and replies flowing both
 *          ways, the client's pipe closed 2000 times; each close can land
 *          in the window, and after the last the sockets are closed. nng
 *          1.5.2 hangs within a few dozen closes, nng 1.12.0 (which undid
 *          the fix for #1813) within a few hundred.
 *
 * A watchdog ends the process with a failure when nng_close (or, in churn,
 * the next pipe) has not come for 20 s.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <linux/sockios.h>

#include <cmocka.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/protocol/reqrep0/req.h>
#include <nng/supplemental/util/platform.h>

#include "faults/watchdog.h"

#define HANG_WHY                                                                          \
    "nng bug #1813 (nng_close hangs when a message arrives as a pipe closes), see "        \
    "docs/nng.md"
#define CHURN_CLOSES 2000
#define CHURN_CALLERS 8

/* ---- holding nng's task queue ------------------------------------------------ */

/* Callbacks that wait until released. nng runs aio callbacks on a fixed
 * set of threads (2 per CPU, at most 16 unless built otherwise) taking
 * tasks in order, so more blockers than threads hold back every task
 * queued after them. */
typedef struct taskq_hold {
    pthread_mutex_t mtx;
    pthread_cond_t cv;
    bool released;
    int n;
    nng_aio **aio;
} taskq_hold;

static void taskq_hold_cb(void *arg)
{
    taskq_hold *h = arg;
    pthread_mutex_lock(&h->mtx);
    while (!h->released)
        pthread_cond_wait(&h->cv, &h->mtx);
    pthread_mutex_unlock(&h->mtx);
}

static void taskq_hold_start(taskq_hold *h)
{
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    memset(h, 0, sizeof(*h));
    pthread_mutex_init(&h->mtx, NULL);
    pthread_cond_init(&h->cv, NULL);
    h->n = 2 * (int)(ncpu > 0 ? ncpu : 1) + 64;
    h->aio = calloc((size_t)h->n, sizeof(*h->aio));
    assert_non_null(h->aio);
    for (int i = 0; i < h->n; i++) {
        assert_int_equal(nng_aio_alloc(&h->aio[i], taskq_hold_cb, h), 0);
        /* Completing it queues its callback at once. */
        assert_true(nng_aio_begin(h->aio[i]));
        nng_aio_finish(h->aio[i], 0);
    }
}

static void taskq_hold_release(taskq_hold *h)
{
    pthread_mutex_lock(&h->mtx);
    h->released = true;
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mtx);
}

static bool taskq_hold_released(taskq_hold *h)
{
    pthread_mutex_lock(&h->mtx);
    bool r = h->released;
    pthread_mutex_unlock(&h->mtx);
    return r;
}

static void taskq_hold_free(taskq_hold *h)
{
    taskq_hold_release(h);
    for (int i = 0; i < h->n; i++)
        nng_aio_free(h->aio[i]); /* waits for its callback */
    free(h->aio);
    pthread_cond_destroy(&h->cv);
    pthread_mutex_destroy(&h->mtx);
}

/* ---- a peer that speaks SP by hand ---------------------------------------------- */

static void read_full(int fd, void *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, (char *)buf + got, len - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            fail_msg("raw peer: read: %s", n == 0 ? "end of stream" : strerror(errno));
        got += (size_t)n;
    }
}

static void write_full(int fd, const void *buf, size_t len)
{
    size_t put = 0;
    while (put < len) {
        ssize_t n = send(fd, (const char *)buf + put, len - put, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            fail_msg("raw peer: send: %s", strerror(errno));
        put += (size_t)n;
    }
}

/* Pipe events of the socket under test. */
typedef struct pipe_watch {
    pthread_mutex_t mtx;
    pthread_cond_t cv;
    int added;
    nng_pipe last;
    bool have_new;
    taskq_hold *hold; /* released when a pipe goes, if set */
} pipe_watch;

static void pipe_watch_cb(nng_pipe p, nng_pipe_ev ev, void *arg)
{
    pipe_watch *w = arg;
    pthread_mutex_lock(&w->mtx);
    if (ev == NNG_PIPE_EV_ADD_POST) {
        w->added++;
        w->last = p;
        w->have_new = true;
        pthread_cond_broadcast(&w->cv);
    }
    taskq_hold *h = ev == NNG_PIPE_EV_REM_POST ? w->hold : NULL;
    pthread_mutex_unlock(&w->mtx);
    /* The reaper runs this after the pipe was closed and before it stops
     * the pipe: now the held header callback runs too late. */
    if (h != NULL)
        taskq_hold_release(h);
}

static void pipe_watch_init(pipe_watch *w, nng_socket s)
{
    memset(w, 0, sizeof(*w));
    pthread_mutex_init(&w->mtx, NULL);
    pthread_cond_init(&w->cv, NULL);
    assert_int_equal(nng_pipe_notify(s, NNG_PIPE_EV_ADD_POST, pipe_watch_cb, w), 0);
    assert_int_equal(nng_pipe_notify(s, NNG_PIPE_EV_REM_POST, pipe_watch_cb, w), 0);
}

/* Waits for a pipe added since the last call and returns it. */
static nng_pipe pipe_watch_next(pipe_watch *w)
{
    pthread_mutex_lock(&w->mtx);
    while (!w->have_new)
        pthread_cond_wait(&w->cv, &w->mtx);
    w->have_new = false;
    nng_pipe p = w->last;
    pthread_mutex_unlock(&w->mtx);
    return p;
}

static void pipe_watch_fini(pipe_watch *w)
{
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mtx);
}

/* One socket of protocol `self`, dialed to a Unix socket whose end is a raw
 * fd that completes the SP handshake as protocol `peer`; a message header
 * (8 bytes of body announced, none sent) arrives while the task queue is
 * held, and the socket is closed. */
static void close_as_header_arrives(int (*open)(nng_socket *), uint16_t self, uint16_t peer,
                                    const char *what)
{
    char dir[] = "/tmp/lmsched-nng-close-XXXXXX";
    char path[128], url[160];
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    watchdog wd;
    pipe_watch pw;
    taskq_hold hold;
    nng_socket s;
    int lfd, fd, outq = 0;
    uint8_t hs[8];

    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/peer.sock", dir);
    snprintf(url, sizeof(url), "ipc://%s", path);
    assert_true(strlen(path) < sizeof(sa.sun_path));
    memcpy(sa.sun_path, path, strlen(path) + 1);
    lfd = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_true(lfd >= 0);
    assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(lfd, 1), 0);

    assert_int_equal(watchdog_start(&wd, what, HANG_WHY), 0);
    assert_int_equal(open(&s), 0);
    pipe_watch_init(&pw, s);
    /* The daemon listens and the agents dial, but the pipe's teardown is
     * the same either way; dialing keeps a listener out of the close,
     * which would wait for its accept callback behind the held queue. */
    assert_int_equal(nng_dial(s, url, NULL, NNG_FLAG_NONBLOCK), 0);
    fd = accept(lfd, NULL, NULL);
    assert_true(fd >= 0);
    read_full(fd, hs, sizeof(hs));
    assert_memory_equal(hs, ((uint8_t[]){0, 'S', 'P', 0, self >> 8, self & 0xff, 0, 0}), 8);
    write_full(fd, ((uint8_t[]){0, 'S', 'P', 0, peer >> 8, peer & 0xff, 0, 0}), 8);
    (void)pipe_watch_next(&pw); /* the pipe is up and reading */

    taskq_hold_start(&hold);
    pthread_mutex_lock(&pw.mtx);
    pw.hold = &hold;
    pthread_mutex_unlock(&pw.mtx);
    /* Message type 1, then the length of the body, big-endian: 8. */
    write_full(fd, ((uint8_t[]){1, 0, 0, 0, 0, 0, 0, 0, 8}), 9);
    /* nng has read it once nothing is left unread on our side; its
     * callback is held in the queue. */
    do {
        if (ioctl(fd, SIOCOUTQ, &outq) != 0)
            fail_msg("ioctl SIOCOUTQ: %s", strerror(errno));
        if (outq > 0)
            nng_msleep(1);
    } while (outq > 0);

    assert_int_equal(nng_close(s), 0);
    watchdog_feed(&wd, what);
    /* The pipe went away, and its header callback ran only after that. */
    assert_true(taskq_hold_released(&hold));
    printf("%s: nng_close returned with a message header read and its body pending\n", what);

    watchdog_stop(&wd);
    taskq_hold_free(&hold);
    pipe_watch_fini(&pw);
    close(fd);
    close(lfd);
    unlink(path);
    rmdir(dir);
}

static void test_req0(void **state)
{
    (void)state;
    close_as_header_arrives(nng_req0_open, 0x30, 0x31,
                            "req0 (agent) socket closed as a reply arrives");
}

static void test_rep0(void **state)
{
    (void)state;
    close_as_header_arrives(nng_rep0_open, 0x31, 0x30,
                            "rep0 (daemon) socket closed as a request arrives");
}

/* ---- churn -------------------------------------------------------------------- */

/* One aio going round: the server's receive-then-echo, or a client's
 * send-then-receive. */
typedef struct caller {
    nng_ctx ctx;
    nng_aio *aio;
    bool sending;
    atomic_bool *stopping;
} caller;

static void server_cb(void *arg)
{
    caller *c = arg;
    int rv = nng_aio_result(c->aio);
    if (!c->sending) {
        if (rv != 0)
            return; /* closed */
        c->sending = true;
        nng_ctx_send(c->ctx, c->aio);
        return;
    }
    if (rv != 0)
        nng_msg_free(nng_aio_get_msg(c->aio));
    c->sending = false;
    nng_ctx_recv(c->ctx, c->aio);
}

static void client_send(caller *c)
{
    nng_msg *m = NULL;
    if (nng_msg_alloc(&m, 64) != 0)
        return;
    memset(nng_msg_body(m), 'x', 64);
    c->sending = true;
    nng_aio_set_msg(c->aio, m);
    nng_ctx_send(c->ctx, c->aio);
}

static void client_cb(void *arg)
{
    caller *c = arg;
    int rv = nng_aio_result(c->aio);
    if (c->sending) {
        if (rv != 0) {
            nng_msg_free(nng_aio_get_msg(c->aio));
            nng_aio_set_msg(c->aio, NULL);
        } else if (!atomic_load(c->stopping)) {
            c->sending = false;
            nng_ctx_recv(c->ctx, c->aio);
            return;
        }
    } else if (rv == 0) {
        nng_msg_free(nng_aio_get_msg(c->aio));
        nng_aio_set_msg(c->aio, NULL);
    }
    if (atomic_load(c->stopping) || rv == NNG_ECLOSED)
        return;
    client_send(c);
}

static void test_churn(void **state)
{
    (void)state;
    char url[128];
    nng_socket srv, cli;
    caller sc[CHURN_CALLERS], cc[CHURN_CALLERS];
    atomic_bool stopping = false;
    pipe_watch pw;
    watchdog wd;
    unsigned seed = (unsigned)getpid();

    snprintf(url, sizeof(url), "ipc:///tmp/lmsched-nng-churn-%d.sock", (int)getpid());
    assert_int_equal(watchdog_start(&wd, "churn: waiting for the next pipe", HANG_WHY), 0);
    assert_int_equal(nng_rep0_open(&srv), 0);
    assert_int_equal(nng_listen(srv, url, NULL, 0), 0);
    for (int i = 0; i < CHURN_CALLERS; i++) {
        sc[i] = (caller){.stopping = &stopping};
        assert_int_equal(nng_ctx_open(&sc[i].ctx, srv), 0);
        assert_int_equal(nng_aio_alloc(&sc[i].aio, server_cb, &sc[i]), 0);
        nng_ctx_recv(sc[i].ctx, sc[i].aio);
    }
    assert_int_equal(nng_req0_open(&cli), 0);
    /* Resend soon and redial at once, so every close cuts into traffic. */
    assert_int_equal(nng_socket_set_ms(cli, NNG_OPT_REQ_RESENDTIME, 5), 0);
    assert_int_equal(nng_socket_set_ms(cli, NNG_OPT_RECONNMINT, 1), 0);
    assert_int_equal(nng_socket_set_ms(cli, NNG_OPT_RECONNMAXT, 1), 0);
    pipe_watch_init(&pw, cli);
    assert_int_equal(nng_dial(cli, url, NULL, NNG_FLAG_NONBLOCK), 0);
    for (int i = 0; i < CHURN_CALLERS; i++) {
        cc[i] = (caller){.stopping = &stopping};
        assert_int_equal(nng_ctx_open(&cc[i].ctx, cli), 0);
        assert_int_equal(nng_aio_alloc(&cc[i].aio, client_cb, &cc[i]), 0);
        client_send(&cc[i]);
    }
    for (int n = 0; n < CHURN_CLOSES; n++) {
        nng_pipe p = pipe_watch_next(&pw);
        watchdog_feed(&wd, "churn: waiting for the next pipe");
        usleep((useconds_t)(rand_r(&seed) % 500));
        nng_pipe_close(p);
    }
    atomic_store(&stopping, true);
    for (int i = 0; i < CHURN_CALLERS; i++)
        nng_aio_stop(cc[i].aio);
    watchdog_feed(&wd, "churn: closing the client");
    assert_int_equal(nng_close(cli), 0);
    for (int i = 0; i < CHURN_CALLERS; i++)
        nng_aio_stop(sc[i].aio);
    watchdog_feed(&wd, "churn: closing the server");
    assert_int_equal(nng_close(srv), 0);
    watchdog_stop(&wd);

    for (int i = 0; i < CHURN_CALLERS; i++) {
        nng_msg_free(nng_aio_get_msg(cc[i].aio));
        nng_msg_free(nng_aio_get_msg(sc[i].aio));
        nng_aio_free(cc[i].aio);
        nng_aio_free(sc[i].aio);
    }
    pthread_mutex_lock(&pw.mtx);
    int added = pw.added;
    pthread_mutex_unlock(&pw.mtx);
    printf("churn: %d pipes closed under traffic, %d added, then both sockets closed\n",
           CHURN_CLOSES, added);
    assert_true(added >= CHURN_CLOSES);
    pipe_watch_fini(&pw);
    unlink(url + strlen("ipc://"));
}

int main(void)
{
    printf("nng %s\n", nng_version());
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_req0),
        cmocka_unit_test(test_rep0),
        cmocka_unit_test(test_churn),
    };
    return cmocka_run_group_tests_name("faults_nng_close", tests, NULL, NULL);
}
