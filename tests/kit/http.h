/*
 * http - HTTP for tests and benchmarks, on libcurl: one request with its
 * status, body, headers and the body parsed as JSON; a JSON document from a
 * URL (lmsim's /sim/stats, llama-server's /props); and the body callback
 * for callers that keep their own curl handle (keep-alive).
 *
 * Threads: any; a kit_http_resp belongs to one thread.
 */
#ifndef LMSCHED_KIT_HTTP_H
#define LMSCHED_KIT_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

/* Bodies longer than this fail the transfer (toobig). */
#define KIT_HTTP_MAX_BODY (16u << 20)

typedef struct kit_http_resp {
    int cc;          /* the transfer's CURLcode: 0 (CURLE_OK) when complete */
    long status;     /* HTTP status, 0 without an answer */
    char *body;      /* NUL-terminated (malloc'd), NULL when empty */
    size_t len, cap; /* body bytes; set len to 0 to reuse the buffer */
    bool toobig;     /* over KIT_HTTP_MAX_BODY: the transfer was failed */
    char ctype[128]; /* Content-Type, "" if none */
    char *headers;   /* the header lines (malloc'd), NULL if none */
    size_t hlen;
    json_t *json; /* the body as JSON (owned), NULL when it is not */
} kit_http_resp;

/*
 * One request to url, waiting at most timeout_ms: method (NULL: GET, or
 * POST when body is not NULL) with body as application/json (a "" body is
 * sent without a type). *r is overwritten: kit_http_resp_fini it after.
 * Returns 0 when the transfer completed, whatever the status; else -1
 * (r->cc says why).
 */
int kit_http(const char *method, const char *url, const char *body, long timeout_ms,
             kit_http_resp *r);

/* kit_http with more header lines ("Name: value", NULL-terminated; NULL
 * for none). A Content-Type among them replaces the JSON one; HEAD asks
 * for no body. */
int kit_http_with(const char *method, const char *url, const char *const *headers,
                  const char *body, long timeout_ms, kit_http_resp *r);

/* Frees what r holds and zeroes it. */
void kit_http_resp_fini(kit_http_resp *r);

/* A CURLOPT_WRITEFUNCTION appending to the kit_http_resp given as
 * CURLOPT_WRITEDATA. */
size_t kit_http_body_cb(char *data, size_t size, size_t n, void *resp);

/* The value of response header name as a number, or dflt if absent. */
long kit_http_header_long(const kit_http_resp *r, const char *name, long dflt);

/*
 * The JSON document of a 2xx answer (the caller decrefs it; an empty body
 * to a POST gives an empty object), or NULL; then err (if not NULL) says
 * why, naming the URL, and *statusp (if not NULL) has the HTTP status (0
 * without an answer).
 */
json_t *kit_http_json(const char *method, const char *url, const char *body,
                      long timeout_ms, long *statusp, char *err, size_t errlen);

#endif
