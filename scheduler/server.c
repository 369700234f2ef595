/*
 * server - nng REP socket with one context per outstanding request.
 *
 * Design notes: a context is in one of three states. RECV: waiting for a
 * request (srv keeps SRV_RECEIVERS of these). HELD: holding a request the
 * scheduler has not answered yet. SEND: sending the reply. Callbacks run on
 * nng threads and only forward events; state and counters are changed by the
 * loop thread alone (srv_fill, srv_reply, srv_ctx_recycle), so there is no
 * lock here. A context is freed only from the loop thread after its idle
 * event was handled, which is after its callback returned, so nng_aio_free
 * never runs inside the aio's own callback.
 */
#include "scheduler/server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdatomic.h>

#include <nng/protocol/reqrep0/rep.h>

#include "scheduler/log.h"

#define SRV_RECEIVERS 32

enum { SRV_RECV = 1, SRV_HELD = 2, SRV_SEND = 3, SRV_DEAD = 4 };

struct srv_ctx {
    srv *s;
    nng_ctx ctx;
    nng_aio *aio;
    int state;
    uint32_t pipe;
    srv_ctx *prev, *next; /* all contexts, for srv_close */
};

struct srv {
    nng_socket sock;
    nng_listener listener;
    srv_events ev;
    unsigned receiving;
    unsigned sending;
    srv_ctx *all;
    atomic_int closing;  /* read by the pipe callback on nng threads */
};

static void srv_ctx_cb(void *arg)
{
    srv_ctx *c = arg;
    srv *s = c->s;
    int rv = nng_aio_result(c->aio);
    if (c->state == SRV_RECV) {
        if (rv == 0) {
            nng_msg *m = nng_aio_get_msg(c->aio);
            nng_aio_set_msg(c->aio, NULL);
            c->pipe = nng_pipe_id(nng_msg_get_pipe(m));
            s->ev.request(s->ev.arg, c, m);
            return;
        }
        if (rv == NNG_ECLOSED || rv == NNG_ECANCELED)
            return; /* shutting down: srv_close frees it */
        log_warn("receive failed: %s", nng_strerror(rv));
        s->ev.idle(s->ev.arg, c);
        return;
    }
    if (c->state == SRV_SEND) {
        if (rv != 0) {
            nng_msg *m = nng_aio_get_msg(c->aio);
            nng_aio_set_msg(c->aio, NULL);
            nng_msg_free(m);
            if (rv != NNG_ECLOSED)
                log_debug("reply not delivered: %s", nng_strerror(rv));
        }
        s->ev.idle(s->ev.arg, c);
    }
}

static void srv_pipe_cb(nng_pipe p, nng_pipe_ev ev, void *arg)
{
    srv *s = arg;
    if (ev == NNG_PIPE_EV_REM_POST && !atomic_load(&s->closing))
        s->ev.pipe_gone(s->ev.arg, nng_pipe_id(p));
}

static void srv_ctx_free(srv *s, srv_ctx *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        s->all = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (c->aio) {
        nng_aio_stop(c->aio);
        nng_msg *m = nng_aio_get_msg(c->aio);
        if (m)
            nng_msg_free(m);
        nng_aio_free(c->aio);
    }
    nng_ctx_close(c->ctx);
    free(c);
}

static srv_ctx *srv_ctx_new(srv *s)
{
    srv_ctx *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->s = s;
    if (nng_aio_alloc(&c->aio, srv_ctx_cb, c) != 0) {
        free(c);
        return NULL;
    }
    if (nng_ctx_open(&c->ctx, s->sock) != 0) {
        nng_aio_free(c->aio);
        free(c);
        return NULL;
    }
    c->next = s->all;
    if (s->all)
        s->all->prev = c;
    s->all = c;
    return c;
}

static void srv_recv(srv *s, srv_ctx *c)
{
    c->state = SRV_RECV;
    c->pipe = 0;
    s->receiving++;
    nng_ctx_recv(c->ctx, c->aio);
}

int srv_open(srv **sp, const char *url, size_t max_msg, const srv_events *ev, char *errbuf,
             size_t errlen)
{
    srv *s = calloc(1, sizeof(*s));
    int rv;
    if (s == NULL)
        return NNG_ENOMEM;
    s->ev = *ev;
    if ((rv = nng_rep0_open(&s->sock)) != 0) {
        snprintf(errbuf, errlen, "cannot open socket: %s", nng_strerror(rv));
        free(s);
        return rv;
    }
    nng_socket_set_size(s->sock, NNG_OPT_RECVMAXSZ, max_msg);
    nng_pipe_notify(s->sock, NNG_PIPE_EV_REM_POST, srv_pipe_cb, s);
    if ((rv = nng_listener_create(&s->listener, s->sock, url)) != 0) {
        snprintf(errbuf, errlen, "cannot listen on %s: %s", url, nng_strerror(rv));
        goto fail;
    }
    if (strncmp(url, "ipc://", 6) == 0) {
        /* Owner-only socket: other local users must not submit requests. */
        nng_listener_set_int(s->listener, NNG_OPT_IPC_PERMISSIONS, 0600);
    }
    if ((rv = nng_listener_start(s->listener, 0)) != 0) {
        snprintf(errbuf, errlen, "cannot listen on %s: %s%s", url, nng_strerror(rv),
                 rv == NNG_EADDRINUSE ? " (is another lmsched serve running?)" : "");
        goto fail;
    }
    *sp = s;
    srv_fill(s);
    return 0;
fail:
    nng_close(s->sock);
    free(s);
    return rv;
}

void srv_fill(srv *s)
{
    while (!atomic_load(&s->closing) && s->receiving < SRV_RECEIVERS) {
        srv_ctx *c = srv_ctx_new(s);
        if (c == NULL) {
            log_error("cannot allocate a receive context");
            return;
        }
        srv_recv(s, c);
    }
}

void srv_take(srv *s, srv_ctx *c)
{
    if (c->state == SRV_RECV) {
        s->receiving--;
        c->state = SRV_HELD;
    }
    srv_fill(s);
}

int srv_reply(srv *s, srv_ctx *c, const void *buf, size_t len)
{
    nng_msg *m = NULL;
    int rv = nng_msg_alloc(&m, 0);
    if (rv == 0)
        rv = nng_msg_append(m, buf, len);
    if (rv != 0) {
        nng_msg_free(m);
        log_error("cannot build reply: %s", nng_strerror(rv));
        srv_ctx_recycle(s, c);
        return rv;
    }
    c->state = SRV_SEND;
    s->sending++;
    nng_aio_set_msg(c->aio, m);
    nng_ctx_send(c->ctx, c->aio);
    return 0;
}

void srv_ctx_recycle(srv *s, srv_ctx *c)
{
    if (c->state == SRV_SEND)
        s->sending--;
    else if (c->state == SRV_RECV)
        s->receiving--;
    c->state = SRV_HELD;
    if (!atomic_load(&s->closing) && s->receiving < SRV_RECEIVERS)
        srv_recv(s, c);
    else
        srv_ctx_free(s, c);
}

uint32_t srv_ctx_pipe(const srv_ctx *c)
{
    return c->pipe;
}

unsigned srv_receiving(const srv *s)
{
    return s->receiving;
}

unsigned srv_sending(const srv *s)
{
    return s->sending;
}

void srv_close(srv *s)
{
    if (s == NULL)
        return;
    atomic_store(&s->closing, 1);
    nng_pipe_notify(s->sock, NNG_PIPE_EV_REM_POST, NULL, NULL);
    /* Stop every aio first (waits for running callbacks), then close. */
    for (srv_ctx *c = s->all; c; c = c->next)
        nng_aio_stop(c->aio);
    nng_close(s->sock);
    while (s->all)
        srv_ctx_free(s, s->all);
    free(s);
}
