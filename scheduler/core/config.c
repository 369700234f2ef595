/*
 * config - `lmsched serve` flags as one option table (util/opt): each flag's
 * field, type, range, default, environment variable and help live in one
 * entry, which drives the defaults, the parsing, --help, docs/cli.md's
 * option tables (--help-markdown) and the "config" JSON of the status. The
 * rules between flags (which listeners need a token) and the backend URL
 * normalization are the two things the table cannot say; they are here.
 */
#include "scheduler/core/config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "lmsched/wire.h"
#include "scheduler/backend/dialect.h"
#include "scheduler/util/num.h"
#include "scheduler/util/opt.h"

/* API paths users paste with the server's URL (LM Studio's UI shows
 * "http://127.0.0.1:1234/v1"); lmsched adds them itself. Longest first. */
static const char *const config_api_suffixes[] = {"/v1/chat/completions", "/api/v1",
                                                  "/v1"};
_Static_assert(sizeof("/v1/chat/completions") <=
                   sizeof(((sched_config *)0)->backend_stripped),
               "backend_stripped holds every suffix");

/* Sets cfg->backend from a URL: trailing slashes and an API path suffix
 * are dropped (what was dropped is kept in backend_stripped for the log).
 * Returns 0, or -1 with cfg unchanged when it is not an http(s) URL or is
 * too long. */
static int config_set_backend(sched_config *cfg, const char *url)
{
    char be[sizeof(cfg->backend)], stripped[sizeof(cfg->backend_stripped)] = "";
    size_t n = strlen(url);
    if (n == 0 || n >= sizeof(be))
        return -1;
    memcpy(be, url, n + 1);
    while (n > 0 && be[n - 1] == '/')
        be[--n] = '\0';
    for (size_t i = 0; i < sizeof(config_api_suffixes) / sizeof(config_api_suffixes[0]);
         i++) {
        size_t k = strlen(config_api_suffixes[i]);
        if (n > k && strcmp(be + n - k, config_api_suffixes[i]) == 0) {
            memcpy(stripped, config_api_suffixes[i], k + 1);
            n -= k;
            be[n] = '\0';
            while (n > 0 && be[n - 1] == '/')
                be[--n] = '\0';
            break;
        }
    }
    if (strncmp(be, "http://", 7) != 0 && strncmp(be, "https://", 8) != 0)
        return -1;
    memcpy(cfg->backend, be, sizeof(be));
    memcpy(cfg->backend_stripped, stripped, sizeof(stripped));
    return 0;
}

int config_read_backends(const char *path, config_backend_list *out, char *err,
                         size_t errlen)
{
    FILE *f = fopen(path, "r");
    char line[2048];
    unsigned lineno = 0;
    int rc = -1;
    memset(out, 0, sizeof(*out));
    if (f == NULL) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    while (fgets(line, sizeof(line), f) != NULL) {
        lineno++;
        if (strchr(line, '\n') == NULL && !feof(f)) {
            snprintf(err, errlen, "%s:%u: line too long", path, lineno);
            goto out;
        }
        char *hash = strchr(line, '#');
        if (hash != NULL)
            *hash = '\0';
        char *save = NULL, *url = strtok_r(line, " \t\r\n", &save);
        if (url == NULL)
            continue;
        if (out->n == CONFIG_MAX_BACKENDS) {
            snprintf(err, errlen, "%s:%u: at most %d backends", path, lineno,
                     CONFIG_MAX_BACKENDS);
            goto out;
        }
        config_backend_entry *e = &out->v[out->n];
        sched_config tmp;
        if (config_set_backend(&tmp, url) != 0) {
            snprintf(err, errlen, "%s:%u: expected an http:// URL, got '%.200s'", path, lineno,
                     url);
            goto out;
        }
        memcpy(e->url, tmp.backend, sizeof(e->url));
        for (unsigned k = 0; k < out->n; k++)
            if (strcmp(out->v[k].url, e->url) == 0) {
                snprintf(err, errlen, "%s:%u: %s is listed twice", path, lineno, e->url);
                goto out;
            }
        for (char *kv; (kv = strtok_r(NULL, " \t\r\n", &save)) != NULL;) {
            if (strncmp(kv, "kind=", 5) == 0 &&
                (strcmp(kv + 5, "auto") == 0 || dialect_find(kv + 5) != NULL)) {
                snprintf(e->kind, sizeof(e->kind), "%s", kv + 5);
            } else if (strncmp(kv, "total-ram=", 10) == 0 &&
                       num_parse_size(kv + 10, &e->total_ram) == 0 && e->total_ram > 0) {
                continue;
            } else {
                snprintf(err, errlen, "%s:%u: expected kind=auto|lmstudio|llamacpp|openai or "
                         "total-ram=SIZE, got '%.200s'", path, lineno, kv);
                goto out;
            }
        }
        out->n++;
    }
    if (ferror(f)) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        goto out;
    }
    if (out->n == 0) {
        snprintf(err, errlen, "%s: no backend in it", path);
        goto out;
    }
    rc = 0;
out:
    fclose(f);
    return rc;
}

/* --backend, once per LLM server: the first URL given replaces the
 * default, each further one adds a server. The environment variable (read
 * when no --backend is given) takes several separated by commas. */
static int config_backend_set(const opt_spec *s, void *cfg, const char *val)
{
    sched_config *c = cfg;
    (void)s;
    for (;;) {
        const char *comma = strchr(val, ',');
        size_t n = comma != NULL ? (size_t)(comma - val) : strlen(val);
        char one[sizeof(c->backend)];
        if (n >= sizeof(one))
            return -1;
        memcpy(one, val, n);
        one[n] = '\0';
        if (c->n_backends >= CONFIG_MAX_BACKENDS) {
            /* Counted, for config_parse to say how many there may be. */
            sched_config tmp;
            if (config_set_backend(&tmp, one) != 0)
                return -1;
        } else if (c->n_backends == 0) {
            if (config_set_backend(c, one) != 0)
                return -1;
        } else {
            sched_config tmp;
            if (config_set_backend(&tmp, one) != 0)
                return -1;
            memcpy(c->backend_more[c->n_backends - 1], tmp.backend, sizeof(tmp.backend));
        }
        c->n_backends++;
        if (comma == NULL)
            return 0;
        val = comma + 1;
    }
}

static const char *config_backend_show(const opt_spec *s, const void *cfg, char *buf,
                                       size_t len)
{
    const sched_config *c = cfg;
    (void)s;
    size_t at = (size_t)snprintf(buf, len, "%s", c->backend);
    for (unsigned i = 1; i < c->n_backends && i < CONFIG_MAX_BACKENDS && at < len; i++)
        at += (size_t)snprintf(buf + at, len - at, ",%s", c->backend_more[i - 1]);
    return buf;
}

#define CFG sched_config
#define G_ACCESS "Listening and access"
#define G_BACKEND "Backend"
#define G_MEMORY "Memory budget (docs/memory-budget.md)"
#define G_QUEUE "Queue and policy (docs/scheduling.md)"
#define G_RUN "Shutdown and logging"
#define G_HTTP "OpenAI-compatible HTTP front door (docs/openai.md)"

/* --backend-kind: "auto" or a kind of the dialect table, which alone
 * knows the kinds. */
static int config_kind_set(const opt_spec *s, void *cfg, const char *val)
{
    sched_config *c = cfg;
    (void)s;
    if (strcmp(val, "auto") != 0 && dialect_find(val) == NULL)
        return -1;
    snprintf(c->backend_kind, sizeof(c->backend_kind), "%s", val);
    return 0;
}

static const char *config_kind_show(const opt_spec *s, const void *cfg, char *buf,
                                    size_t len)
{
    (void)s;
    snprintf(buf, len, "%s", ((const sched_config *)cfg)->backend_kind);
    return buf;
}
static const char *const config_policies[] = {"prefix", "fifo", NULL};
static const char *const config_off_on[] = {"off", "on", NULL};
static const char *const config_routings[] = {"cache", "round-robin", "least-loaded", NULL};
static const char *const config_on_off[] = {"off", "on", NULL};
static const char *const config_exact_tokens[] = {"auto", "off", NULL};

/* --http: "HOST:PORT", "HOST" (the default port), "PORT" (loopback), with
 * HOST a numeric IPv4 address, "[IPv6]" or "localhost" (127.0.0.1). Names
 * are not resolved: whether the listener is loopback, and so whether it
 * needs a token, must not depend on a DNS answer. Stored normalized. */
static int config_http_set(const opt_spec *s, void *cfg, const char *val)
{
    sched_config *c = cfg;
    char host[64];
    const char *port_s = NULL;
    bool v6 = false;
    unsigned char addr[16];
    (void)s;
    size_t n = strlen(val);
    if (n == 0 || n >= 80)
        return -1;
    if (strspn(val, "0123456789") == n) {
        snprintf(host, sizeof(host), "127.0.0.1");
        port_s = val;
    } else if (val[0] == '[') {
        const char *close = strchr(val, ']');
        if (close == NULL || (size_t)(close - val - 1) >= sizeof(host))
            return -1;
        memcpy(host, val + 1, (size_t)(close - val - 1));
        host[close - val - 1] = '\0';
        if (close[1] == ':')
            port_s = close + 2;
        else if (close[1] != '\0')
            return -1;
        v6 = true;
    } else {
        const char *colon = strchr(val, ':');
        size_t hl = colon != NULL ? (size_t)(colon - val) : n;
        if (hl == 0 || hl >= sizeof(host) || (colon != NULL && strchr(colon + 1, ':')))
            return -1;
        memcpy(host, val, hl);
        host[hl] = '\0';
        if (colon != NULL)
            port_s = colon + 1;
        if (strcmp(host, "localhost") == 0)
            snprintf(host, sizeof(host), "127.0.0.1");
    }
    if (inet_pton(v6 ? AF_INET6 : AF_INET, host, addr) != 1)
        return -1;
    long port = CONFIG_HTTP_PORT;
    if (port_s != NULL) {
        char *end;
        if (*port_s == '\0' || strspn(port_s, "0123456789") != strlen(port_s))
            return -1;
        port = strtol(port_s, &end, 10);
        if (port < 1 || port > 65535)
            return -1;
    }
    snprintf(c->http, sizeof(c->http), v6 ? "[%s]:%ld" : "%s:%ld", host, port);
    return 0;
}

static const char *config_http_show(const opt_spec *s, const void *cfg, char *buf,
                                    size_t len)
{
    (void)s;
    snprintf(buf, len, "%s", ((const sched_config *)cfg)->http);
    return buf;
}

int config_http_addr(const char *http, char *host, size_t hostlen, int *port, bool *v6)
{
    const char *colon = strrchr(http, ':');
    if (colon == NULL || colon == http)
        return -1;
    const char *h = http;
    size_t hl = (size_t)(colon - http);
    *v6 = http[0] == '[';
    if (*v6) {
        if (hl < 2 || http[hl - 1] != ']')
            return -1;
        h++;
        hl -= 2;
    }
    if (hl == 0 || hl >= hostlen)
        return -1;
    memcpy(host, h, hl);
    host[hl] = '\0';
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (*end != '\0' || p < 1 || p > 65535)
        return -1;
    *port = (int)p;
    return 0;
}

bool config_http_loopback(const char *host, bool v6)
{
    unsigned char a[16];
    if (inet_pton(v6 ? AF_INET6 : AF_INET, host, a) != 1)
        return false;
    if (!v6)
        return a[0] == 127;
    static const unsigned char one[16] = {[15] = 1};
    return memcmp(a, one, 16) == 0;
}

static const opt_spec config_specs[] = {
    /* Listening and access (docs/security.md) */
    {.name = "listen",
     .arg = "URL",
     OPT_STRING_FIELD(CFG, listen),
     .env = "LMSCHED_URL",
     .def_doc = "ipc://$XDG_RUNTIME_DIR/lmsched.sock, or ipc:///tmp/lmsched.sock "
                "without XDG_RUNTIME_DIR",
     .group = G_ACCESS,
     .help = "nng URL to listen on",
     .doc = "The daemon's nng URL: `ipc://PATH` (a Unix socket, owner-only unless "
            "`--socket-mode` says otherwise) or `tcp://HOST:PORT` (only with "
            "`--auth-token-file`)."},
    {.name = "socket-mode",
     .arg = "MODE",
     OPT_MODE_FIELD(CFG, socket_mode),
     .min = 0600,
     .max = 0777,
     .mask = 0600,
     .def = "0600",
     .expect = "an octal mode from 0600 to 0777 that keeps the owner's rw",
     .group = G_ACCESS,
     .help = "permissions of an ipc:// socket file, octal",
     .doc = "Permissions of an `ipc://` socket file, octal; must keep the owner's "
            "`rw`. Only `ipc://`."},
    {.name = "socket-group",
     .arg = "GROUP",
     OPT_STRING_FIELD(CFG, socket_group),
     .def_doc = "none",
     .group = G_ACCESS,
     .help = "give an ipc:// socket file to this group (name or number)",
     .doc = "Give the `ipc://` socket file to this group (name or number) after it is "
            "created, then apply `--socket-mode`; combine with `--socket-mode 0660` to "
            "share the daemon with the group's members. A group that does not exist, "
            "or one the user may not give files to, makes `serve` exit 4. Only "
            "`ipc://`."},
    {.name = "auth-token-file",
     .arg = "FILE",
     OPT_STRING_FIELD(CFG, auth_token_file),
     .def_doc = "none",
     .group = G_ACCESS,
     .help = "every request must carry the token in FILE (required for a listener "
             "other than ipc://; FILE must be mode 0600 or stricter unless --force)",
     .doc = "Every request must carry the token held in FILE (its trailing newline is "
            "not part of it): printable ASCII without spaces, 1 to 256 bytes. Required "
            "for any listener other than `ipc://` (without it `serve` exits 2). The "
            "file must not be accessible by group or others (mode 0600 or stricter) "
            "unless `--force` is given; an unusable file makes `serve` exit 4. Given "
            "with an `ipc://` listener, that needs the token too."},
    {.name = "max-per-conn",
     .arg = "N",
     OPT_UINT_FIELD(CFG, max_per_conn),
     .min = 1,
     .max = 1000000,
     .def = "256",
     .group = G_ACCESS,
     .help = "outstanding requests per agent connection before BUSY",
     .doc = "Requests one agent connection may have outstanding (queued or running); "
            "past it a request is answered `busy` with \"too many outstanding requests "
            "on this connection\"."},

    /* The OpenAI-compatible HTTP front door */
    {.name = "http",
     .arg = "HOST:PORT",
     OPT_CUSTOM_FIELD(CFG, http),
     .set = config_http_set,
     .show = config_http_show,
     .expect = "HOST:PORT, HOST or PORT, with HOST a numeric IPv4 address, [IPv6] or "
               "localhost",
     .def_doc = "off",
     .env = "LMSCHED_HTTP",
     .group = G_HTTP,
     .help = "also serve the OpenAI chat-completions API here (port 4321 when only a "
             "host is given; a port alone means 127.0.0.1)",
     .doc = "Also serve the OpenAI-compatible API (`POST /v1/chat/completions`, `GET "
            "/v1/models`, `/health`, `/metrics`) on this address, on the same queue, "
            "policy and budget as the nng socket. `HOST:PORT`, `HOST` (port 4321) or "
            "`PORT` (127.0.0.1); HOST is a numeric address, `[IPv6]` or `localhost`. Off "
            "unless given. A listener that is not loopback needs a token "
            "(`--http-token-file` or `--auth-token-file`; without one `serve` exits 2)."},
    {.name = "http-token-file",
     .arg = "FILE",
     OPT_STRING_FIELD(CFG, http_token_file),
     .def_doc = "--auth-token-file's",
     .group = G_HTTP,
     .help = "HTTP requests must carry the token in FILE as Authorization: Bearer "
             "(default: the token of --auth-token-file, if any)",
     .doc = "HTTP requests must carry the token held in FILE as `Authorization: Bearer "
            "TOKEN` (the same rules for the file as `--auth-token-file`). Without it the "
            "HTTP front door uses `--auth-token-file`'s token when one is given, and no "
            "token otherwise, which only a loopback `--http` allows."},
    {.name = "http-max-body",
     .arg = "SIZE",
     OPT_SIZE_FIELD(CFG, http_max_body),
     .umin = 1024,
     .umax = 1ull << 30,
     .def = "16M",
     .group = G_HTTP,
     .help = "largest request body; past it 413",
     .doc = "Largest request body; a larger one is answered 413 (before it is read, when "
            "`Content-Length` says so) and its connection closed."},
    {.name = "http-max-header",
     .arg = "SIZE",
     OPT_SIZE_FIELD(CFG, http_max_header),
     .umin = 4096,
     .umax = 1u << 20,
     .def = "32K",
     .group = G_HTTP,
     .help = "memory for one connection's request line and headers; past it 431",
     .doc = "Memory for one connection's request line and headers (libmicrohttpd's "
            "per-connection pool); a request whose headers do not fit is answered 431 "
            "and its connection closed."},
    {.name = "http-max-conns",
     .arg = "N",
     OPT_UINT_FIELD(CFG, http_max_conns),
     .min = 1,
     .max = 100000,
     .def = "256",
     .group = G_HTTP,
     .help = "open HTTP connections; more are closed at once",
     .doc = "Open HTTP connections at once, idle or busy; a connection past it is closed "
            "as soon as it is accepted."},
    {.name = "http-header-timeout",
     .arg = "MS",
     OPT_INT_FIELD(CFG, http_header_timeout_ms),
     .min = 100,
     .max = 3600000,
     .def = "10000",
     .group = G_HTTP,
     .help = "a request's line and headers must arrive within this of the connection "
             "opening (or of the previous answer on a kept-alive one)",
     .doc = "A request's line and headers must be complete within this time of the "
            "connection opening, or of the previous answer on a kept-alive connection; "
            "otherwise the connection is closed (slow clients, idle keep-alive)."},
    {.name = "http-body-timeout",
     .arg = "MS",
     OPT_INT_FIELD(CFG, http_body_timeout_ms),
     .min = 100,
     .max = 3600000,
     .def = "30000",
     .group = G_HTTP,
     .help = "a request's body must arrive within this of its headers; also the most a "
             "client may leave its answer unread",
     .doc = "A request's body must be complete within this time of its headers, or the "
            "connection is closed. Also how long a client may leave an answer it is "
            "being sent unread before its connection is closed (and its request "
            "canceled)."},
    {.name = "http-cors",
     .arg = "ORIGIN",
     OPT_STRING_FIELD(CFG, http_cors),
     .def_doc = "none",
     .group = G_HTTP,
     .help = "answer browsers from ORIGIN (\"*\": any) with CORS headers; none by default",
     .doc = "Send CORS headers allowing ORIGIN (`*`: any origin) and answer preflight "
            "`OPTIONS` requests, so a web page from that origin can call the API. Without "
            "it no CORS header is sent and browsers refuse cross-origin calls."},

    /* Backend */
    {.name = "backend",
     .arg = "URL",
     OPT_CUSTOM_FIELD(CFG, backend),
     .set = config_backend_set,
     .show = config_backend_show,
     .expect = "an http:// URL",
     .def = "http://127.0.0.1:1234",
     .env = "LMSCHED_BACKEND",
     .group = G_BACKEND,
     .help = "LLM server base URL; repeat for several servers; LM_API_TOKEN is sent as a "
             "Bearer token",
     .doc = "The LLM server's root URL, `http://` or `https://`. A URL ending in "
            "`/v1`, `/api/v1` or `/v1/chat/completions` (what LM Studio's UI shows) is "
            "accepted and the suffix dropped with a log line. `LM_API_TOKEN` is sent "
            "as `Authorization: Bearer`. Repeat `--backend` (up to 8; in `LMSCHED_BACKEND`, "
            "separate them with commas) to put several servers behind one daemon: each is "
            "probed on its own, a request goes to a server that serves its model, and the "
            "prefix policy places it over every server's slots "
            "([scheduling.md](scheduling.md#several-backends))."},
    {.name = "backends-file",
     .arg = "FILE",
     OPT_STRING_FIELD(CFG, backends_file),
     .def_doc = "none",
     .group = G_BACKEND,
     .help = "the backends, one a line (URL [kind=KIND] [total-ram=SIZE]); re-read on "
             "SIGHUP",
     .doc = "Instead of `--backend`: the LLM servers, one a line, `URL [kind=KIND] "
            "[total-ram=SIZE]` (`#` starts a comment; up to 8). `kind` overrides "
            "`--backend-kind` for that server; `total-ram` is that host's RAM, for its "
            "memory budget (lmsched cannot read a remote host's; without it, "
            "`--total-ram` or this machine's). On SIGHUP the file is read again: a server "
            "added is probed and used, one removed takes no new request (its queued ones "
            "go to the others; those running there finish), a changed `total-ram` "
            "applies; no request is dropped. A file that does not parse changes nothing "
            "(logged). ([scheduling.md](scheduling.md#several-backends))"},
    {.name = "backend-kind",
     .arg = "KIND",
     OPT_CUSTOM_FIELD(CFG, backend_kind),
     .set = config_kind_set,
     .show = config_kind_show,
     .expect = "auto, lmstudio, llamacpp or openai",
     .def = "auto",
     .group = G_BACKEND,
     .help = "what the server is; auto probes it",
     .doc = "What the server is; `auto` probes `GET /api/v1/models` (LM Studio), "
            "`/props` (llama.cpp) and `/v1/models`."},
    {.name = "no-cache-prompt",
     OPT_FLAG_FIELD(CFG, cache_prompt),
     .flags = OPT_CLEARS,
     .group = G_BACKEND,
     .help = "do not send \"cache_prompt\": true",
     .doc = "Do not send `\"cache_prompt\": true` (llama.cpp's reuse of a slot's "
            "cached prompt)."},
    {.name = "exact-tokens",
     .arg = "WHEN",
     OPT_CHOICE_FIELD(CFG, exact_tokens),
     .names = config_exact_tokens,
     .def = "auto",
     .group = G_BACKEND,
     .help = "auto: reserve each request's exact prompt tokens where the backend counts "
             "them (llama.cpp); off: the estimate",
     .doc = "`auto`: when a request arrives, ask a llama.cpp backend for its exact prompt "
            "tokens (`POST /apply-template`, then `/tokenize`: no slot, well under a "
            "millisecond) and reserve KV memory for that count while it is queued; one "
            "dispatched before the count arrives keeps the estimate, and every count also "
            "corrects the estimate of later requests. A server that answers 404 there is "
            "asked no more. `off`: the estimate only (as for LM Studio, which has no such "
            "endpoint). ([memory-budget.md](memory-budget.md#exact-token-counts))"},
    {.name = "connect-timeout",
     .arg = "MS",
     OPT_INT_FIELD(CFG, connect_timeout_ms),
     .min = 1,
     .max = INT_MAX,
     .def = "2000",
     .group = G_BACKEND,
     .help = "backend TCP connect"},
    {.name = "request-timeout",
     .arg = "MS",
     OPT_INT_FIELD(CFG, request_timeout_ms),
     .min = 1,
     .max = INT_MAX,
     .def = "600000",
     .group = G_BACKEND,
     .help = "per backend request, the whole transfer"},
    {.name = "max-retries",
     .arg = "N",
     OPT_UINT_FIELD(CFG, max_retries),
     .min = 0,
     .max = 100,
     .def = "3",
     .group = G_BACKEND,
     .help = "retries of transient backend errors before the first token"},
    {.name = "backend-errors",
     .arg = "N",
     OPT_UINT_FIELD(CFG, backend_errors),
     .min = 0,
     .max = 1000,
     .def = "5",
     .group = G_BACKEND,
     .help = "several backends: N server errors in a row take one out until its probe "
             "succeeds (0: never)",
     .doc = "With several `--backend`s: when N requests in a row on one backend end in a "
            "server error (HTTP 5xx, a model crash, a cut stream) within "
            "`--backend-errors-ms`, that backend is taken out as if unreachable: its "
            "slots get nothing, its queued and retried requests go to the others, and it "
            "rejoins when a probe succeeds (at least 2 s later; answers of requests still "
            "running there do not bring it back). A successful answer there starts the "
            "count again. One backend is never taken out this way: its requests are "
            "retried (`--max-retries`) as before."},
    {.name = "backend-errors-ms",
     .arg = "MS",
     OPT_INT_FIELD(CFG, backend_errors_ms),
     .min = 1,
     .max = INT_MAX,
     .def = "10000",
     .group = G_BACKEND,
     .help = "the window of --backend-errors",
     .doc = "The time within which `--backend-errors` server errors in a row take a "
            "backend out, counted from the first of them."},
    {.name = "backend-wait",
     .arg = "MS",
     OPT_INT_FIELD(CFG, backend_wait_ms),
     .min = 0,
     .max = INT_MAX,
     .def = "20000",
     .group = G_BACKEND,
     .help = "a request without a deadline waits this long for an unreachable backend "
             "before failing",
     .doc = "While the backend is unreachable (connection refused, no answer to the "
            "probe), dispatch pauses and requests stay queued. A request with a "
            "`deadline_ms` waits until that deadline (then `deadline`); one without "
            "waits at most this long, counted from its arrival or the outage, "
            "whichever is later (then `backend_down`). A request whose connection was "
            "refused mid-retry waits the same way; such attempts do not count against "
            "`--max-retries`. 0: fail at once ([reliability.md](reliability.md))."},
    {.name = "max-response-bytes",
     .arg = "SIZE",
     OPT_SIZE_FIELD(CFG, max_response_bytes),
     .umin = 4096,
     .umax = UINT64_MAX,
     .def = "8M",
     .group = G_BACKEND,
     .help = "most bytes of one backend response",
     .doc = "Most bytes of one backend response, streamed or not. Past it the transfer "
            "is dropped and the request fails with `too_large`."},
    {.name = "probe-interval",
     .arg = "MS",
     OPT_INT_FIELD(CFG, probe_interval_ms),
     .min = 100,
     .max = INT_MAX,
     .def = "10000",
     .group = G_BACKEND,
     .help = "re-read the backend's model info this often"},
    {.name = "probe-restore",
     .arg = "on|off",
     OPT_ENUM_FIELD(CFG, probe_restore),
     .names = config_off_on,
     .def = "on",
     .group = G_BACKEND,
     .help = "ask a llama.cpp server at start whether it restores evicted prompts",
     .doc = "When a backend that takes the policy's slot (llama.cpp, with the prefix "
            "policy) is first found, and when it comes back after being unreachable, send "
            "it three one-token requests on one of its slots (a prompt, another, the first "
            "again) to see whether it restores a prompt its slot lost (llama.cpp's host "
            "prompt cache, `--cache-ram`): the prefix policy then knows from the first "
            "request ([scheduling.md](scheduling.md#the-restore-probe)). It occupies that "
            "slot for the three requests (100 to 200 prompt tokens each; at most 5 s), "
            "which start-up waits for; `off`: learn it from traffic only."},
    {.name = "default-max-tokens",
     .arg = "N",
     OPT_INT_FIELD(CFG, default_max_tokens),
     .min = -1,
     .max = LMSCHED_MAX_TOKENS_MAX,
     .def = "-1",
     .group = G_BACKEND,
     .help = "max_tokens for requests that give none; -1: the backend decides",
     .doc = "`max_tokens` sent for requests that give none; -1: none is sent, the "
            "backend decides."},

    /* Memory budget */
    {.name = "ram-fraction",
     .arg = "F",
     OPT_DOUBLE_FIELD(CFG, ram_fraction),
     .dmin = 0,
     .dmax = 1,
     .flags = OPT_MIN_OPEN,
     .def = "0.60",
     .group = G_MEMORY,
     .help = "share of RAM for the model and KV caches"},
    {.name = "total-ram",
     .arg = "SIZE",
     OPT_SIZE_FIELD(CFG, total_ram),
     .umin = 1,
     .umax = UINT64_MAX,
     .def_doc = "read from the system",
     .group = G_MEMORY,
     .help = "assume this much RAM instead of reading it"},
    {.name = "model-size",
     .arg = "SIZE",
     OPT_SIZE_FIELD(CFG, model_size),
     .umin = 0,
     .umax = UINT64_MAX,
     .def_doc = "from the backend",
     .group = G_MEMORY,
     .help = "model size when the backend does not report it"},
    {.name = "kv-per-request",
     .arg = "SIZE",
     OPT_SIZE_FIELD(CFG, kv_per_request),
     .umin = 1,
     .umax = UINT64_MAX,
     .def_doc = "per-token accounting",
     .group = G_MEMORY,
     .help = "reserve this much KV cache per request (flat)"},
    {.name = "kv-bytes-per-token",
     .arg = "SIZE",
     OPT_SIZE_FIELD(CFG, kv_bytes_per_token),
     .umin = 1,
     .umax = UINT64_MAX,
     .def_doc = "from --model-path, else 128K, a Llama-3-8B-class f16 cache",
     .group = G_MEMORY,
     .help = "KV cache bytes per token"},
    {.name = "model-path",
     .arg = "FILE",
     OPT_STRING_FIELD(CFG, model_path),
     .def_doc = "none",
     .group = G_MEMORY,
     .help = "GGUF model file: its architecture gives the per-token KV size"},
    {.name = "cache-type",
     .arg = "TYPE",
     OPT_STRING_FIELD(CFG, cache_type),
     .def = "f16",
     .group = G_MEMORY,
     .help = "KV cache type for that formula: f16, q8_0, q4_0 ..."},
    {.name = "context",
     .arg = "TOKENS",
     OPT_INT64_FIELD(CFG, context),
     .min = 1,
     .max = 1 << 24,
     .def_doc = "from the backend",
     .group = G_MEMORY,
     .help = "per-slot context when the backend does not report it"},
    {.name = "slots",
     .arg = "N",
     OPT_UINT_FIELD(CFG, slots),
     .min = 1,
     .max = 4096,
     .def_doc = "from the backend",
     .group = G_MEMORY,
     .help = "parallel slots when the backend does not report them"},
    {.name = "max-concurrent",
     .arg = "N",
     OPT_UINT_FIELD(CFG, max_concurrent),
     .min = 1,
     .max = 4096,
     .def_doc = "what the budget and the slots allow",
     .group = G_MEMORY,
     .help = "never more than N requests at the backend at once"},
    {.name = "force",
     OPT_FLAG_FIELD(CFG, force),
     .group = G_MEMORY,
     .help = "start even if the model alone exceeds the budget, or the token file is "
             "readable by others"},

    /* Queue and policy */
    {.name = "max-queue",
     .arg = "N",
     OPT_UINT_FIELD(CFG, max_queue),
     .min = 1,
     .max = 1000000,
     .def = "1024",
     .group = G_QUEUE,
     .help = "queued requests before BUSY"},
    {.name = "policy",
     .arg = "NAME",
     OPT_CHOICE_FIELD(CFG, policy),
     .names = config_policies,
     .def = "prefix",
     .group = G_QUEUE,
     .help = "prefix (prefix-cache aware) or fifo",
     .doc = "`prefix`: requests that share a cached prompt prefix run together, on the "
            "slot that holds it; `fifo`: arrival order within each priority."},
    {.name = "routing",
     .arg = "NAME",
     OPT_CHOICE_FIELD(CFG, routing),
     .names = config_routings,
     .def = "cache",
     .group = G_QUEUE,
     .help = "several backends: cache (the policy places over every backend's slots); "
             "round-robin or least-loaded: baselines for benchmarks",
     .doc = "With several `--backend`s: `cache` lets the queue policy choose the backend "
            "together with the slot (the one holding a request's prefix; "
            "[scheduling.md](scheduling.md#several-backends)). `round-robin` and "
            "`least-loaded` are baselines to compare it with (`scripts/bench fleet`): "
            "each request is bound to one backend when it arrives, the next in turn, or "
            "the one with the fewest requests queued for it and running there, and the "
            "policy orders it within that backend only. No effect with one backend."},
    {.name = "starve-ms",
     .arg = "MS",
     OPT_INT_FIELD(CFG, starve_ms),
     .min = 1,
     .max = INT_MAX,
     .def = "30000",
     .group = G_QUEUE,
     .help = "prefix: a request queued this long runs next",
     .doc = "`prefix` policy: a request queued this long runs next, whatever its "
            "prefix."},
    {.name = "max-overtakes",
     .arg = "N",
     OPT_UINT_FIELD(CFG, max_overtakes),
     .min = 1,
     .max = 1000000,
     .def_doc = "4 x slots",
     .group = G_QUEUE,
     .help = "prefix: ... or once N later requests started first",
     .doc = "`prefix` policy: ... or once N requests that arrived after it have "
            "started."},
    {.name = "gather-ms",
     .arg = "MS",
     OPT_INT_FIELD(CFG, gather_ms),
     .min = 0,
     .max = 10000,
     .def = "10",
     .group = G_QUEUE,
     .help = "prefix: a load that evicts a cached prefix waits this long for requests "
             "sent with it; a conversation keeps its slot this long for its next turn; "
             "0: off"},
    {.name = "preempt",
     .arg = "MODE",
     OPT_ENUM_FIELD(CFG, preempt),
     .names = config_on_off,
     .def = "off",
     .group = G_QUEUE,
     .help = "on: a queued request stops a running one of lower priority when no slot is free",
     .doc = "When a queued request cannot start (no idle slot, no room in the KV budget) "
            "and a request of strictly lower priority runs where it could, one of the lowest "
            "priority is stopped (the one whose stop throws away the least work; its backend "
            "transfer is closed) and queued again at its old place; the higher-priority "
            "request takes its slot. A "
            "streamed request that has sent a piece, or one already stopped once, is never "
            "stopped; equal priorities never are. The stopped request runs again later and "
            "gets its one normal answer ([scheduling.md](scheduling.md#priorities-and-"
            "preemption)). Off by default, as vLLM's priority scheduling is opt-in: the stopped work "
            "is thrown away (on the mixed workload the run takes about 28% longer)."},
    {.name = "slot-similarity",
     .arg = "F",
     OPT_DOUBLE_FIELD(CFG, slot_similarity),
     .dmin = 0,
     .dmax = 1,
     .def = "0.10",
     .group = G_QUEUE,
     .help = "the backend's slot-prompt-similarity"},

    /* Shutdown and logging */
    {.name = "stream-timeout",
     .arg = "MS",
     OPT_INT_FIELD(CFG, stream_timeout_ms),
     .min = 100,
     .max = INT_MAX,
     .def = "30000",
     .group = G_QUEUE,
     .help = "cancel a streamed request whose agent stops asking for more",
     .doc = "A streamed request (docs/protocol.md, Streaming) whose agent sends no "
            "`chat_next` this long after a `chat_chunk` is canceled, and its backend slot "
            "freed."},
    {.name = "stream-buffer",
     .arg = "SIZE",
     OPT_SIZE_FIELD(CFG, stream_buffer),
     .umin = 4096,
     .umax = 1ull << 30,
     .def = "1M",
     .group = G_QUEUE,
     .help = "cancel a stream whose unread pieces pass this size",
     .doc = "A streamed request whose pieces not yet fetched by its agent pass this size is "
            "canceled with `too_large`."},
    {.name = "drain-timeout",
     .arg = "MS",
     OPT_INT_FIELD(CFG, drain_timeout_ms),
     .min = 0,
     .max = INT_MAX,
     .def = "30000",
     .group = G_RUN,
     .help = "shutdown waits this long for in-flight requests"},
    {.name = "log-level",
     .arg = "LEVEL",
     OPT_LOG_LEVEL_FIELD(CFG, log_level),
     .def = "info",
     .group = G_RUN,
     .help = "error, warn, info or debug",
     .doc = "What goes to stderr."},
};

#define CONFIG_NOPTS (sizeof(config_specs) / sizeof(config_specs[0]))

static const opt_table config_table = {
    .prog = "lmsched serve",
    .usage = "usage: lmsched serve [options]\n"
             "\n"
             "Runs the scheduler daemon in front of an LM Studio or llama.cpp server.\n",
    .epilogue =
        "SIZE takes K, M, G, T suffixes (powers of 1024). Exit status: 0 after a clean\n"
        "shutdown (SIGINT/SIGTERM), 1 on a runtime failure, 2 on a usage error, 4 when "
        "it\n"
        "refuses to start (the model alone exceeds the memory budget, it cannot listen, "
        "or\n"
        "the socket group or token file is unusable). LM_API_TOKEN is sent to the "
        "backend;\n"
        "LMSCHED_AUTH_TOKEN is what `lmsched status` and `lmsched chat` send to the "
        "daemon.\n",
    .specs = config_specs,
    .n = CONFIG_NOPTS,
};

void config_defaults(sched_config *cfg, const char *default_listen)
{
    memset(cfg, 0, sizeof(*cfg));
    /* The table's defaults parse (config_test checks), so this cannot fail. */
    opt_defaults(&config_table, cfg);
    snprintf(cfg->listen, sizeof(cfg->listen), "%s", default_listen);
}

void config_usage(FILE *out)
{
    opt_usage(&config_table, out);
}

void config_markdown(FILE *out)
{
    opt_markdown(&config_table, out);
}

char *config_json(const sched_config *cfg)
{
    return opt_json(&config_table, cfg);
}

const opt_table *config_options(void)
{
    return &config_table;
}

/* The access rules between flags: only an ipc:// socket is protected by
 * file permissions; anything else (tcp://, ws://, abstract:// ...) can be
 * reached by other users, so it needs a token. An HTTP listener may go
 * without one on loopback only. Returns 0 or 2. */
static int config_check_access(const sched_config *cfg, bool socket_mode_given)
{
    bool ipc = strncmp(cfg->listen, "ipc://", 6) == 0;
    if (!ipc && cfg->auth_token_file[0] == '\0') {
        fprintf(stderr,
                "lmsched serve: refusing to listen on %s without a token: anyone who "
                "can reach it could use the LLM server; give --auth-token-file FILE "
                "(see docs/security.md)\n",
                cfg->listen);
        return 2;
    }
    if (cfg->http[0] != '\0' && cfg->http_token_file[0] == '\0' &&
        cfg->auth_token_file[0] == '\0') {
        char host[64];
        int port;
        bool v6;
        if (config_http_addr(cfg->http, host, sizeof(host), &port, &v6) != 0 ||
            !config_http_loopback(host, v6)) {
            fprintf(stderr,
                    "lmsched serve: refusing to serve HTTP on %s without a token: it is "
                    "not a loopback address, so anyone who can reach it could use the LLM "
                    "server; give --http-token-file FILE (or --auth-token-file FILE), or "
                    "listen on 127.0.0.1 (see docs/security.md)\n",
                    cfg->http);
            return 2;
        }
    }
    if (!ipc && (socket_mode_given || cfg->socket_group[0] != '\0')) {
        fprintf(stderr,
                "lmsched serve: --socket-mode and --socket-group apply to an ipc:// "
                "listener only, not %s\n",
                cfg->listen);
        return 2;
    }
    return 0;
}

int config_parse(sched_config *cfg, int argc, char **argv)
{
    bool given[CONFIG_NOPTS];
    /* The default URL is replaced by the first --backend given. */
    cfg->n_backends = 0;
    switch (opt_parse(&config_table, cfg, argc, argv, given, stderr)) {
    case OPT_RUN:
        break;
    case OPT_HELP:
        config_usage(stdout);
        return 1;
    case OPT_VERSION:
        printf("lmsched %s (protocol %d)\n", LMSCHED_SERVE_VERSION,
               LMSCHED_PROTOCOL_VERSION);
        return 1;
    case OPT_MARKDOWN:
        config_markdown(stdout);
        return 1;
    default:
        return 2;
    }
    if (cfg->backends_file[0] != '\0') {
        const opt_spec *be = opt_find(&config_table, "backend");
        char err[700];
        if (given[be - config_specs]) {
            fprintf(stderr, "lmsched serve: give --backend or --backends-file, not both\n");
            return 2;
        }
        if (config_read_backends(cfg->backends_file, &cfg->file_backends, err,
                                 sizeof(err)) != 0) {
            fprintf(stderr, "lmsched serve: --backends-file: %s\n", err);
            return 2;
        }
        /* The file's servers stand where --backend's would. */
        cfg->n_backends = cfg->file_backends.n;
        memcpy(cfg->backend, cfg->file_backends.v[0].url, sizeof(cfg->backend));
        cfg->backend_stripped[0] = '\0';
        for (unsigned i = 1; i < cfg->file_backends.n; i++)
            memcpy(cfg->backend_more[i - 1], cfg->file_backends.v[i].url,
                   sizeof(cfg->backend_more[0]));
    }
    if (cfg->n_backends == 0)
        cfg->n_backends = 1; /* the default */
    if (cfg->n_backends > CONFIG_MAX_BACKENDS) {
        fprintf(stderr, "lmsched serve: --backend: at most %d LLM servers, got %u\n",
                CONFIG_MAX_BACKENDS, cfg->n_backends);
        return 2;
    }
    const opt_spec *mode = opt_find(&config_table, "socket-mode");
    return config_check_access(cfg, given[mode - config_specs]);
}
