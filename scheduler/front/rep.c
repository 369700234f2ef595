/*
 * server - nng REP socket with one context per outstanding request, and the
 * daemon's access control: socket file mode and group, the access token,
 * and the per-connection limit on outstanding requests.
 *
 * Design notes: a context is in one of three states. RECV: waiting for a
 * request (srv keeps SRV_RECEIVERS of these). HELD: holding a request the
 * scheduler has not answered yet. SEND: sending the reply. Callbacks run on
 * nng threads and only forward events; state and counters are changed by the
 * loop thread alone (srv_fill, srv_reply, srv_ctx_recycle), so there is no
 * lock here. A context is freed only from the loop thread after its idle
 * event was handled, which is after its callback returned, so nng_aio_free
 * never runs inside the aio's own callback.
 *
 * Per-connection limit: a HELD context is counted against its pipe in a
 * small hash table (srv_conn), from srv_take until it leaves HELD (reply or
 * recycle). An entry exists only while its count is non-zero, so the table
 * holds one entry per connection with a request outstanding and needs no
 * cleanup when a pipe closes: its requests are answered (canceled) and the
 * counts drop to zero.
 *
 * The token is kept zero-padded in a fixed SRV_TOKEN_MAX buffer and compared
 * over the whole buffer with no early exit, so the time taken tells a peer
 * nothing about how much of its guess was right, nor the token's length.
 */
#include "scheduler/front/rep.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <nng/protocol/reqrep0/rep.h>
#include <nng/transport/ipc/ipc.h>

#include "scheduler/util/clock.h"
#include "scheduler/util/log.h"

#define SRV_RECEIVERS 32
/* Buckets of the per-connection table; connections with requests
 * outstanding are few (one per agent process), so chains stay short. */
#define SRV_CONN_BUCKETS 256
/* Auth refusals are logged at most this often. */
#define SRV_AUTH_LOG_US 1000000

enum { SRV_RECV = 1, SRV_HELD = 2, SRV_SEND = 3, SRV_DEAD = 4 };

struct srv_ctx {
    srv *s;
    nng_ctx ctx;
    nng_aio *aio;
    int state;
    uint32_t pipe;
    bool counted;         /* HELD and counted in its pipe's srv_conn */
    srv_ctx *prev, *next; /* all contexts, for srv_close */
};

/* Requests outstanding on one connection (pipe). */
typedef struct srv_conn {
    uint32_t pipe;
    unsigned held;
    struct srv_conn *next;
} srv_conn;

struct srv {
    nng_socket sock;
    nng_listener listener;
    srv_events ev;
    unsigned receiving;
    unsigned sending;
    srv_ctx *all;
    atomic_int closing; /* read by the pipe callback on nng threads */
    unsigned max_per_conn;
    srv_conn *conns[SRV_CONN_BUCKETS];
    uint64_t conn_refused;
    bool have_token;
    size_t token_len;
    unsigned char token[SRV_TOKEN_MAX]; /* zero-padded */
    uint64_t auth_refused;
    uint64_t auth_unlogged; /* refusals since the last log line */
    int64_t auth_logged_us; /* when the last one was logged, 0 never */
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

/* Reads the access token from path into s (see srv_opts). */
static int srv_token_load(srv *s, const char *path, bool force, char *errbuf,
                          size_t errlen)
{
    /* Room for the longest token plus "\r\n", and one byte to see that a
     * file is longer than that. */
    char buf[SRV_TOKEN_MAX + 3];
    size_t n = 0;
    struct stat st;
    int rv = NNG_EINVAL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0) {
        snprintf(errbuf, errlen, "--auth-token-file %s: %s", path, strerror(errno));
        return NNG_EINVAL;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(errbuf, errlen, "--auth-token-file %s: not a regular file", path);
        goto out;
    }
    /* As ssh does for private keys: a secret others can read is no secret. */
    if ((st.st_mode & 0077) != 0 && !force) {
        snprintf(errbuf, errlen,
                 "--auth-token-file %s: permissions %04o are too open: the token must "
                 "not be accessible by group or others (chmod 600 it, or pass --force)",
                 path, (unsigned)(st.st_mode & 07777));
        goto out;
    }
    while (n < sizeof(buf)) {
        ssize_t r = read(fd, buf + n, sizeof(buf) - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            snprintf(errbuf, errlen, "--auth-token-file %s: %s", path, strerror(errno));
            goto out;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    /* The trailing newline an editor or `echo` adds is not part of it. */
    if (n > 0 && buf[n - 1] == '\n')
        n--;
    if (n > 0 && buf[n - 1] == '\r')
        n--;
    if (n == 0) {
        snprintf(errbuf, errlen, "--auth-token-file %s: the file holds no token", path);
        goto out;
    }
    if (n > SRV_TOKEN_MAX) {
        snprintf(errbuf, errlen,
                 "--auth-token-file %s: the token is longer than %d bytes", path,
                 SRV_TOKEN_MAX);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        /* Printable ASCII only: it travels as a msgpack string and is typed
         * into environment variables. */
        if ((unsigned char)buf[i] < 0x21 || (unsigned char)buf[i] > 0x7e) {
            snprintf(errbuf, errlen,
                     "--auth-token-file %s: the token must be printable ASCII with no "
                     "spaces or control characters (byte %zu is not)",
                     path, i);
            goto out;
        }
    }
    memset(s->token, 0, sizeof(s->token));
    memcpy(s->token, buf, n);
    s->token_len = n;
    s->have_token = true;
    rv = 0;
out:
    explicit_bzero(buf, sizeof(buf));
    close(fd);
    return rv;
}

/* Gives the ipc:// socket file at path the group (a name or a number) and
 * then its final mode. Until then it was owner-only, so no member of the
 * user's own group could connect in between. */
static int srv_sock_group(const char *path, const char *group, unsigned mode,
                          char *errbuf, size_t errlen)
{
    gid_t gid;
    char *end;
    errno = 0;
    unsigned long num = strtoul(group, &end, 10);
    if (*group != '\0' && *end == '\0' && errno == 0 && num <= (unsigned long)INT32_MAX) {
        gid = (gid_t)num;
    } else {
        errno = 0;
        struct group *gr = getgrnam(group);
        if (gr == NULL) {
            snprintf(errbuf, errlen, "--socket-group %s: no such group%s%s", group,
                     errno ? ": " : "", errno ? strerror(errno) : "");
            return NNG_EINVAL;
        }
        gid = gr->gr_gid;
    }
    if (chown(path, (uid_t)-1, gid) != 0) {
        snprintf(errbuf, errlen, "--socket-group %s: cannot give %s to group %lu: %s%s",
                 group, path, (unsigned long)gid, strerror(errno),
                 errno == EPERM ? " (you must be a member of the group)" : "");
        return NNG_EINVAL;
    }
    if (chmod(path, (mode_t)mode) != 0) {
        snprintf(errbuf, errlen, "--socket-mode %04o: cannot set it on %s: %s", mode,
                 path, strerror(errno));
        return NNG_EINVAL;
    }
    return 0;
}

/* Says in the user's terms why listening on url failed with nng error rv
 * (nng's own words, "Entry not found" or "Address invalid", name no cause
 * a user can act on); the original is logged at debug level. */
static void srv_listen_error(const char *url, int rv, char *errbuf, size_t errlen)
{
    bool ipc = strncmp(url, "ipc://", 6) == 0;
    const char *path = url + 6;
    size_t max_path = sizeof(((struct sockaddr_un *)0)->sun_path) - 1;

    log_debug("listen on %s: nng error %d: %s", url, rv, nng_strerror(rv));
    if (ipc && rv == NNG_EADDRINVAL && strlen(path) > max_path) {
        snprintf(errbuf, errlen,
                 "cannot listen on %s: the socket path is %zu bytes long, and a Unix "
                 "socket path may have at most %zu on this system; choose a shorter one "
                 "(for example under $XDG_RUNTIME_DIR)",
                 url, strlen(path), max_path);
    } else if (ipc && rv == NNG_ENOENT) {
        const char *slash = strrchr(path, '/');
        int dlen = slash != NULL && slash != path ? (int)(slash - path) : 1;
        snprintf(errbuf, errlen,
                 "cannot listen on %s: the directory %.*s does not exist; create it or "
                 "choose another path",
                 url, dlen, slash != NULL ? path : "/");
    } else if (rv == NNG_EPERM) {
        snprintf(errbuf, errlen, "cannot listen on %s: permission denied%s", url,
                 ipc ? " (cannot create the socket file in that directory)" : "");
    } else if (rv == NNG_EADDRINUSE) {
        snprintf(errbuf, errlen,
                 "cannot listen on %s: Address in use: another process listens there "
                 "(is another lmsched serve running?)",
                 url);
    } else if (rv == NNG_EADDRINVAL || rv == NNG_ENOTSUP) {
        snprintf(errbuf, errlen,
                 "cannot listen on %s: not a usable address (expected ipc:///path/to/socket "
                 "or tcp://HOST:PORT)",
                 url);
    } else {
        snprintf(errbuf, errlen, "cannot listen on %s: %s", url, nng_strerror(rv));
    }
}

int srv_open(srv **sp, const srv_opts *o, const srv_events *ev, char *errbuf,
             size_t errlen)
{
    srv *s = calloc(1, sizeof(*s));
    bool ipc = strncmp(o->url, "ipc://", 6) == 0;
    int rv;
    if (s == NULL)
        return NNG_ENOMEM;
    s->ev = *ev;
    s->max_per_conn = o->max_per_conn;
    if (o->auth_token_file != NULL &&
        (rv = srv_token_load(s, o->auth_token_file, o->force, errbuf, errlen)) != 0) {
        free(s);
        return rv;
    }
    if ((rv = nng_rep0_open(&s->sock)) != 0) {
        snprintf(errbuf, errlen, "cannot open socket: %s", nng_strerror(rv));
        explicit_bzero(s->token, sizeof(s->token));
        free(s);
        return rv;
    }
    nng_socket_set_size(s->sock, NNG_OPT_RECVMAXSZ, o->max_msg);
    nng_pipe_notify(s->sock, NNG_PIPE_EV_REM_POST, srv_pipe_cb, s);
    if ((rv = nng_listener_create(&s->listener, s->sock, o->url)) != 0) {
        srv_listen_error(o->url, rv, errbuf, errlen);
        goto fail;
    }
    if (ipc) {
        /* Owner-only unless asked otherwise: other local users must not
         * submit requests. With a group the file stays owner-only until it
         * belongs to that group (srv_sock_group). */
        unsigned mode =
            o->socket_group != NULL ? (o->socket_mode & 0700) : o->socket_mode;
        if ((rv = nng_listener_set_int(s->listener, NNG_OPT_IPC_PERMISSIONS,
                                       (int)mode)) != 0) {
            snprintf(errbuf, errlen, "cannot set permissions of %s: %s", o->url,
                     nng_strerror(rv));
            goto fail;
        }
    }
    if ((rv = nng_listener_start(s->listener, 0)) != 0) {
        srv_listen_error(o->url, rv, errbuf, errlen);
        goto fail;
    }
    if (ipc && o->socket_group != NULL &&
        (rv = srv_sock_group(o->url + 6, o->socket_group, o->socket_mode, errbuf,
                             errlen)) != 0) {
        goto fail;
    }
    *sp = s;
    srv_fill(s);
    return 0;
fail:
    nng_close(s->sock);
    explicit_bzero(s->token, sizeof(s->token));
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

static srv_conn **srv_conn_slot(srv *s, uint32_t pipe)
{
    /* Fibonacci hashing: pipe ids are sequential from a random start. */
    srv_conn **pp = &s->conns[(uint32_t)(pipe * 2654435761u) % SRV_CONN_BUCKETS];
    while (*pp != NULL && (*pp)->pipe != pipe)
        pp = &(*pp)->next;
    return pp;
}

/* Counts a context that became HELD against its connection. Returns false
 * when the connection already had max_per_conn outstanding. */
static bool srv_conn_hold(srv *s, srv_ctx *c)
{
    srv_conn **pp = srv_conn_slot(s, c->pipe);
    srv_conn *cn = *pp;
    if (cn == NULL) {
        if ((cn = calloc(1, sizeof(*cn))) == NULL) {
            /* Uncounted: the request is served rather than refused for our
             * own lack of memory. */
            log_error("out of memory counting requests of connection %u", c->pipe);
            return true;
        }
        cn->pipe = c->pipe;
        *pp = cn;
    }
    cn->held++;
    c->counted = true;
    return s->max_per_conn == 0 || cn->held <= s->max_per_conn;
}

/* A context leaves HELD: uncount it. */
static void srv_conn_rele(srv *s, srv_ctx *c)
{
    if (!c->counted)
        return;
    c->counted = false;
    srv_conn **pp = srv_conn_slot(s, c->pipe);
    srv_conn *cn = *pp;
    if (cn == NULL)
        return;
    if (--cn->held == 0) {
        *pp = cn->next;
        free(cn);
    }
}

bool srv_take(srv *s, srv_ctx *c)
{
    bool ok = true;
    if (c->state == SRV_RECV) {
        s->receiving--;
        c->state = SRV_HELD;
        ok = srv_conn_hold(s, c);
        if (!ok)
            s->conn_refused++;
    }
    srv_fill(s);
    return ok;
}

bool srv_auth_required(const srv *s)
{
    return s->have_token;
}

bool srv_auth_ok(srv *s, const srv_ctx *c, const char *auth)
{
    unsigned char given[SRV_TOKEN_MAX];
    size_t n = auth != NULL ? strnlen(auth, SRV_TOKEN_MAX + 1) : 0;
    volatile unsigned diff = 0;

    if (!s->have_token)
        return true;
    /* The decoder caps "auth" at SRV_TOKEN_MAX bytes; anything longer or
     * missing is a mismatch, found by the same full-length loop. */
    diff |= (auth == NULL) | (n > SRV_TOKEN_MAX);
    if (n > SRV_TOKEN_MAX)
        n = SRV_TOKEN_MAX;
    memset(given, 0, sizeof(given));
    if (n > 0)
        memcpy(given, auth, n);
    diff |= (unsigned)((n ^ s->token_len) != 0);
    for (size_t i = 0; i < SRV_TOKEN_MAX; i++)
        diff |= (unsigned)(given[i] ^ s->token[i]);
    explicit_bzero(given, sizeof(given));
    if (diff == 0)
        return true;

    s->auth_refused++;
    s->auth_unlogged++;
    int64_t now = clock_now_us();
    if (s->auth_logged_us == 0 || now - s->auth_logged_us >= SRV_AUTH_LOG_US) {
        log_warn("refused a request from connection %u: %s (%" PRIu64
                 " refused since the last such message, %" PRIu64 " in all)",
                 c->pipe, auth == NULL ? "no token" : "wrong token", s->auth_unlogged,
                 s->auth_refused);
        s->auth_logged_us = now;
        s->auth_unlogged = 0;
    }
    return false;
}

uint64_t srv_auth_refused(const srv *s)
{
    return s->auth_refused;
}

uint64_t srv_conn_refused(const srv *s)
{
    return s->conn_refused;
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
    srv_conn_rele(s, c);
    c->state = SRV_SEND;
    s->sending++;
    nng_aio_set_msg(c->aio, m);
    nng_ctx_send(c->ctx, c->aio);
    return 0;
}

void srv_ctx_recycle(srv *s, srv_ctx *c)
{
    srv_conn_rele(s, c);
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
    for (size_t i = 0; i < SRV_CONN_BUCKETS; i++) {
        while (s->conns[i] != NULL) {
            srv_conn *cn = s->conns[i];
            s->conns[i] = cn->next;
            free(cn);
        }
    }
    explicit_bzero(s->token, sizeof(s->token));
    free(s);
}
