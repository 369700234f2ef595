/*
 * wire - the daemon's protocol spoken by hand (see wire.h).
 */
#include "kit/wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nng/protocol/reqrep0/req.h>

#include "kit/clock.h"

int kit_wire_open(kit_wire *w, const char *url, int timeout_ms)
{
    int rv = nng_req0_open(&w->sock);
    if (rv != 0)
        return rv;
    nng_socket_set_ms(w->sock, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
    w->next_id = 100;
    w->timeout_ms = timeout_ms > 0 ? timeout_ms : 30000;
    return nng_dial(w->sock, url, NULL, 0);
}

void kit_wire_close(kit_wire *w)
{
    nng_close(w->sock);
}

/* nng 1.5 has no nng_ctx_sendmsg/recvmsg: an aio does it. */
static int kit_wire_io(nng_ctx ctx, nng_msg **m, bool send, int timeout_ms)
{
    nng_aio *aio;
    int rv = nng_aio_alloc(&aio, NULL, NULL);
    if (rv != 0)
        return rv;
    nng_aio_set_timeout(aio, timeout_ms);
    if (send) {
        nng_aio_set_msg(aio, *m);
        nng_ctx_send(ctx, aio);
    } else {
        nng_ctx_recv(ctx, aio);
    }
    nng_aio_wait(aio);
    rv = nng_aio_result(aio);
    if (send && rv != 0)
        nng_msg_free(nng_aio_get_msg(aio));
    if (!send && rv == 0)
        *m = nng_aio_get_msg(aio);
    nng_aio_free(aio);
    return rv;
}

int kit_wire_xchg(kit_wire *w, lms_msg *m, lms_msg *r, uint64_t *idp)
{
    nng_ctx ctx;
    void *buf = NULL;
    size_t len = 0;
    m->id = w->next_id++;
    if (idp != NULL)
        *idp = m->id;
    int rc = lms_encode(m, &buf, &len);
    if (rc != LMSCHED_OK)
        return rc;
    int rv = nng_ctx_open(&ctx, w->sock);
    nng_msg *out = NULL;
    if (rv == 0)
        rv = nng_msg_alloc(&out, 0);
    if (rv == 0)
        rv = nng_msg_append(out, buf, len);
    free(buf);
    if (rv == 0)
        rv = kit_wire_io(ctx, &out, true, w->timeout_ms);
    nng_msg *in = NULL;
    if (rv == 0)
        rv = kit_wire_io(ctx, &in, false, w->timeout_ms);
    nng_ctx_close(ctx);
    if (rv != 0)
        return rv;
    rc = lms_decode(nng_msg_body(in), nng_msg_len(in), NULL, r, NULL);
    nng_msg_free(in);
    return rc;
}

void kit_wire_chat(lms_msg *m, lms_chat_msg *msg, const char *system, const char *user,
                   int max_tokens, bool stream)
{
    lms_msg_init(m, LMS_KIND_CHAT);
    memset(msg, 0, sizeof(*msg));
    msg->role = (char *)"user";
    msg->content = (char *)user;
    m->u.chat.system = (char *)system;
    m->u.chat.messages = msg;
    m->u.chat.n_messages = 1;
    m->u.chat.max_tokens = max_tokens;
    m->u.chat.stream = stream;
}

static void kit_wire_take(const lms_delta *d, size_t n, char *text, size_t cap)
{
    for (size_t i = 0; i < n; i++) {
        if (d[i].kind != LMS_DELTA_CONTENT || d[i].text == NULL)
            continue;
        size_t have = strlen(text), add = strlen(d[i].text);
        if (have + add < cap)
            memcpy(text + have, d[i].text, add + 1);
    }
}

int kit_wire_stream(kit_wire *w, lms_msg *m, char *text, size_t cap, lms_msg *final,
                    unsigned *exchanges, double *first_ms)
{
    lms_msg r;
    uint64_t sid;
    text[0] = '\0';
    int64_t t0 = kit_now_ns();
    int rc = kit_wire_xchg(w, m, &r, &sid);
    if (first_ms != NULL)
        *first_ms = (double)(kit_now_ns() - t0) / 1e6;
    if (rc != 0)
        return rc;
    *exchanges = 1;
    while (r.kind == LMS_KIND_CHAT_CHUNK) {
        kit_wire_take(r.u.chat_chunk.deltas, r.u.chat_chunk.n_deltas, text, cap);
        lms_msg_fini(&r);
        lms_msg next;
        lms_msg_init(&next, LMS_KIND_CHAT_NEXT);
        next.u.chat_next.stream = sid;
        if ((rc = kit_wire_xchg(w, &next, &r, NULL)) != 0)
            return rc;
        (*exchanges)++;
    }
    if (r.kind == LMS_KIND_ERROR) {
        snprintf(text, cap, "%s", r.u.error.message);
        rc = (int)r.u.error.code;
        lms_msg_fini(&r);
        return rc;
    }
    kit_wire_take(r.u.chat_reply.deltas, r.u.chat_reply.n_deltas, text, cap);
    *final = r;
    return 0;
}
