/*
 * hx - what the HTTP front door's tests share: lmsim and `lmsched serve
 * --http` on a free loopback port (the kit's env with the HTTP listener),
 * HTTP requests with headers of the test's choosing (libcurl), and raw
 * sockets for the hostile ones.
 *
 * Threads: the test's main thread, except hx_req (any).
 */
#ifndef LMSCHED_TESTS_HTTP_HX_H
#define LMSCHED_TESTS_HTTP_HX_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "kit/env.h"
#include "kit/http.h"

typedef struct hx {
    kit_env e;
    int port;
    char base[64]; /* http://127.0.0.1:PORT */
} hx;

/* cmocka fixtures: *state is a fresh hx (its env initialized). */
int hx_setup(void **state);
int hx_teardown(void **state);

/* Starts lmsim with sim_args (NULL: none, no backend) and the daemon with
 * --http on a free port plus daemon_args; fails the test if either does
 * not start. */
void hx_start(hx *h, const char *const *sim_args, const char *const *daemon_args);

/* Stops the daemon with SIGTERM and asserts a clean exit (0): under
 * AddressSanitizer that also means nothing leaked. */
void hx_stop(hx *h);

/*
 * One request: method, base + path, extra header lines (NULL-terminated,
 * "Name: value"; NULL none), body (NULL none; sent as application/json
 * unless a Content-Type header is given). *r as kit_http fills it (the
 * header lines in r->headers). Returns 0 when the transfer completed.
 */
int hx_req(const hx *h, const char *method, const char *path, const char *const *headers,
           const char *body, long timeout_ms, kit_http_resp *r);

/* The value of header name in r (case-insensitive), copied into buf; NULL
 * when absent. */
const char *hx_header(const kit_http_resp *r, const char *name, char *buf, size_t len);

/* Asserts r is an OpenAI error body with this status, code and param (NULL:
 * null), whose message contains want (NULL: any). */
void hx_expect_error(const kit_http_resp *r, long status, const char *code,
                     const char *param, const char *want);

/* A raw TCP connection to the HTTP port, or -1. */
int hx_connect(const hx *h);

/* Reads what the peer sends until it closes, max bytes are in, or
 * timeout_ms passes; returns the bytes (NUL-terminated, malloc'd) and sets
 * *closed when the peer closed (EOF or reset). */
char *hx_read_all(int fd, size_t max, int timeout_ms, bool *closed);

/* Why Node and the real clients' packages (tests/http/node, installed by
 * scripts/test with npm ci) cannot run here, or NULL. $LMSCHED_NODE names
 * the node binary (default: node on PATH); $LMSCHED_NODE_DIR the scripts'
 * directory (ctest sets it). */
const char *hx_node_missing(void);

/* Runs `node DIR/script BASE_URL/v1 a1 a2` (a1, a2 may be NULL) with its
 * output in the test's directory; returns its exit status, printing its
 * output (and the daemon's log when it failed). */
int hx_run_node(hx *h, const char *script, const char *a1, const char *a2,
                int timeout_ms);

/* A chat body with the system prompt and one user message (malloc'd);
 * extra (NULL none) is spliced in as more top-level fields ("\"a\":1"). */
char *hx_chat_body(const char *system, const char *user, int max_tokens,
                   const char *extra);

#endif
