/*
 * hx - the HTTP front door's test harness (see hx.h).
 */
#include "hx.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>

#include "kit/check.h"
#include "kit/clock.h"
#include "kit/fs.h"
#include "kit/net.h"
#include "kit/proc.h"

int hx_setup(void **state)
{
    hx *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return -1;
    kit_env_init(&h->e);
    *state = h;
    return 0;
}

int hx_teardown(void **state)
{
    hx *h = *state;
    kit_env_fini(&h->e);
    free(h);
    return 0;
}

void hx_start(hx *h, const char *const *sim_args, const char *const *daemon_args)
{
    const char *args[64];
    char addr[32];
    size_t n = 0;
    h->port = kit_net_free_port();
    assert_true(h->port > 0);
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", h->port);
    snprintf(h->base, sizeof(h->base), "http://%s", addr);
    args[n++] = "--http";
    args[n++] = addr;
    for (size_t i = 0; daemon_args != NULL && daemon_args[i] != NULL; i++) {
        assert_true(n < 62);
        args[n++] = daemon_args[i];
    }
    args[n] = NULL;
    if (sim_args != NULL && kit_env_sim_start(&h->e, 0, sim_args) != 0) {
        kit_env_dump_logs(&h->e);
        fail_msg("lmsim did not start");
    }
    if (kit_env_daemon_start(&h->e, args) != 0) {
        kit_env_dump_logs(&h->e);
        fail_msg("lmsched serve --http did not start");
    }
}

void hx_stop(hx *h)
{
    assert_int_equal(kill(h->e.daemon.pid, SIGTERM), 0);
    int st = kit_proc_wait(&h->e.daemon, 30000);
    if (st != 0) {
        kit_env_dump_logs(&h->e);
        fail_msg("lmsched serve exited with status %d after SIGTERM", st);
    }
}

/* Header lines a test gives one request, at most. */
#define HX_MAX_HEADERS 32

int hx_req(const hx *h, const char *method, const char *path, const char *const *headers,
           const char *body, long timeout_ms, kit_http_resp *r)
{
    char url[512];
    const char *hl[HX_MAX_HEADERS + 3];
    size_t n = 0;
    bool ctype = false;
    snprintf(url, sizeof(url), "%s%s", h->base, path);
    for (size_t i = 0; headers != NULL && headers[i] != NULL; i++) {
        if (n == HX_MAX_HEADERS) {
            fprintf(stderr, "hx_req: more than %d header lines\n", HX_MAX_HEADERS);
            abort();
        }
        hl[n++] = headers[i];
        ctype |= strncasecmp(headers[i], "Content-Type:", 13) == 0;
    }
    /* JSON even for an empty body, unless the test says otherwise. */
    if (body != NULL && !ctype)
        hl[n++] = "Content-Type: application/json";
    /* No "Expect: 100-continue": the body goes with the headers. */
    hl[n++] = "Expect:";
    hl[n] = NULL;
    return kit_http_with(method, url, hl, body, timeout_ms, r);
}

const char *hx_header(const kit_http_resp *r, const char *name, char *buf, size_t len)
{
    size_t n = strlen(name);
    for (const char *p = r->headers; p != NULL && *p != '\0';) {
        if (strncasecmp(p, name, n) == 0 && p[n] == ':') {
            const char *v = p + n + 1;
            while (*v == ' ')
                v++;
            size_t k = strcspn(v, "\r\n");
            snprintf(buf, len, "%.*s", (int)k, v);
            return buf;
        }
        p = strchr(p, '\n');
        if (p != NULL)
            p++;
    }
    return NULL;
}

void hx_expect_error(const kit_http_resp *r, long status, const char *code,
                     const char *param, const char *want)
{
    if (r->status != status)
        fail_msg("HTTP %ld, want %ld: %s", r->status, status, r->body ? r->body : "");
    if (r->json == NULL)
        fail_msg("not JSON: %s", r->body ? r->body : "(empty)");
    json_t *e = json_object_get(r->json, "error");
    const char *msg = json_string_value(json_object_get(e, "message"));
    const char *type = json_string_value(json_object_get(e, "type"));
    const char *got_code = json_string_value(json_object_get(e, "code"));
    json_t *got_param = json_object_get(e, "param");
    assert_non_null(msg);
    assert_non_null(type);
    assert_true(json_object_size(e) == 4);
    if (code != NULL)
        assert_string_equal(got_code, code);
    if (param == NULL)
        assert_true(json_is_null(got_param));
    else
        assert_string_equal(json_string_value(got_param), param);
    if (want != NULL && strstr(msg, want) == NULL)
        fail_msg("message \"%s\" lacks \"%s\"", msg, want);
}

int hx_connect(const hx *h)
{
    char url[64];
    snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", h->port);
    return kit_net_connect(url);
}

char *hx_read_all(int fd, size_t max, int timeout_ms, bool *closed)
{
    char *buf = malloc(max + 1);
    size_t n = 0;
    int64_t until = kit_now_ms() + timeout_ms;
    assert_non_null(buf);
    *closed = false;
    while (n < max) {
        int left = (int)(until - kit_now_ms());
        if (left <= 0)
            break;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, left) <= 0)
            continue;
        ssize_t got = recv(fd, buf + n, max - n, 0);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0) {
            *closed = true;
            break;
        }
        n += (size_t)got;
    }
    buf[n] = '\0';
    return buf;
}

char *hx_chat_body(const char *system, const char *user, int max_tokens,
                   const char *extra)
{
    json_t *msgs = json_array();
    if (system != NULL)
        json_array_append_new(
            msgs, json_pack("{s:s,s:s}", "role", "system", "content", system));
    json_array_append_new(msgs, json_pack("{s:s,s:s}", "role", "user", "content", user));
    json_t *o = json_pack("{s:s,s:o,s:i}", "model", "lmsim", "messages", msgs,
                          "max_tokens", max_tokens);
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    assert_non_null(s);
    if (extra == NULL)
        return s;
    size_t n = strlen(s);
    char *t = malloc(n + strlen(extra) + 2);
    assert_non_null(t);
    memcpy(t, s, n - 1); /* without the closing brace */
    sprintf(t + n - 1, ",%s}", extra);
    free(s);
    return t;
}

static char hx_node_bin[512];
static char hx_node_dir[512];

const char *hx_node_missing(void)
{
    static char why[700];
    const char *env = getenv("LMSCHED_NODE");
    const char *dir = getenv("LMSCHED_NODE_DIR");
    hx_node_bin[0] = '\0';
    if (env != NULL && env[0] != '\0') {
        snprintf(hx_node_bin, sizeof(hx_node_bin), "%s", env);
    } else {
        const char *path = getenv("PATH");
        for (const char *p = path; p != NULL && *p != '\0';) {
            size_t n = strcspn(p, ":");
            char cand[512];
            snprintf(cand, sizeof(cand), "%.*s/node", (int)n, p);
            if (access(cand, X_OK) == 0) {
                snprintf(hx_node_bin, sizeof(hx_node_bin), "%s", cand);
                break;
            }
            p += n + (p[n] == ':');
        }
    }
    if (hx_node_bin[0] == '\0' || access(hx_node_bin, X_OK) != 0)
        return "node not found (scripts/test installs Debian's nodejs and npm)";
    if (dir == NULL)
        return "LMSCHED_NODE_DIR not set (ctest sets it)";
    snprintf(hx_node_dir, sizeof(hx_node_dir), "%s", dir);
    char mod[700];
    struct stat st;
    snprintf(mod, sizeof(mod), "%s/node_modules/@openai/agents/package.json", dir);
    if (stat(mod, &st) != 0) {
        snprintf(why, sizeof(why),
                 "%s/node_modules is not installed (scripts/test runs npm ci there)",
                 dir);
        return why;
    }
    return NULL;
}

int hx_run_node(hx *h, const char *script, const char *a1, const char *a2, int timeout_ms)
{
    char path[700], base[128], out[600];
    snprintf(path, sizeof(path), "%s/%s", hx_node_dir, script);
    snprintf(base, sizeof(base), "%s/v1", h->base);
    snprintf(out, sizeof(out), "%s/node.out", h->e.dir);
    const char *argv[] = {hx_node_bin, path, base, a1, a1 != NULL ? a2 : NULL, NULL};
    int rc = kit_proc_run(argv, out, timeout_ms);
    char *text = kit_fs_read(out);
    if (rc != 0) {
        fprintf(stderr, "node %s %s: exit %d\n%s\n", script, a1 ? a1 : "", rc,
                text ? text : "");
        kit_env_dump_logs(&h->e);
    } else {
        printf("%s: %.600s\n", script, text ? text : "");
    }
    free(text);
    return rc;
}
