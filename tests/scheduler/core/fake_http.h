/*
 * fake_http - an HTTP client for the core's unit tests: nothing goes on
 * the network. Probes are answered from a table of paths set by the test;
 * JSON POSTs too, on the next perform unless the test holds them;
 * chat transfers wait until the test finishes them (fake_http_finish) with
 * a body, an HTTP error or a transport error, as a real server and libcurl
 * would report them. Its poll never sleeps: the test moves the clock.
 */
#ifndef LMSCHED_TEST_FAKE_HTTP_H
#define LMSCHED_TEST_FAKE_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include "scheduler/backend/http.h"

typedef struct fake_http fake_http;

/* A fake client; *hcp is what the core takes (sched_alloc_http). */
fake_http *fake_http_new(http_client **hcp);

/* The answer to GET path, or to a JSON POST to path (http_post_json_start,
 * a token count), as the table is when the transfer starts: status and
 * body (copied); status 0 means the connection is refused. Unset paths
 * answer 404. */
void fake_http_route(fake_http *f, const char *path, long status, const char *body);

/* Chat transfers started and not finished yet, oldest first. */
size_t fake_http_pending(const fake_http *f);
/* The body the i-th pending transfer was sent (NUL-terminated JSON). */
const char *fake_http_body(const fake_http *f, size_t i);
/* Chat transfers started in all, and GETs. */
unsigned fake_http_posts(const fake_http *f);
unsigned fake_http_gets(const fake_http *f);
/* JSON POSTs started in all, and those still in flight. */
unsigned fake_http_json_posts(const fake_http *f);
size_t fake_http_json_pending(const fake_http *f);
/* While held, JSON POSTs stay in flight (a count request the backend has
 * not answered yet); released, they are answered on the next perform. */
void fake_http_hold_json(fake_http *f, bool hold);

/* Finishes the i-th pending chat transfer on the next perform:
 * - status 200 and a whole chat.completion JSON body: an answer;
 * - status >= 400 and an error body: that HTTP error, classified;
 * - status 0: curlcode (CURLE_COULDNT_CONNECT = 7 and so on), no response. */
void fake_http_finish(fake_http *f, size_t i, long status, const char *body, int curlcode);

/* Calls fn(arg) each time a chat transfer starts, before it is queued:
 * the core has dispatched (or retried) a request and made its memory
 * reservation. NULL stops it. */
void fake_http_on_post(fake_http *f, void (*fn)(void *arg), void *arg);

/* A chat.completion body with this content (static buffer). */
const char *fake_http_completion(const char *content, int prompt_tokens, int cached_tokens);

#endif /* LMSCHED_TEST_FAKE_HTTP_H */
