/*
 * http_test - the OpenAI-compatible HTTP front door (scheduler/front/http.c,
 * openai_in.c, metrics.c) end to end: the real daemon with --http in front
 * of lmsim, reached over loopback with libcurl. The endpoints and their
 * shapes, whole and streamed answers, lmsched's controls as headers and
 * body fields, every error status clients act on, a client that goes away
 * (queued, running, streaming) canceling its request and freeing the slot,
 * the token, CORS, the drain, and the nng and HTTP doors sharing one queue
 * and one group per system prompt.
 */
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hx.h"
#include "kit/check.h"
#include "kit/clock.h"
#include "kit/fs.h"
#include "kit/json.h"

#define T_MS 20000

static const char SYS[] =
    "You are the HTTP front door's test assistant. Answer in a few words.";

/* A request on a thread of its own. */
typedef struct bg {
    const hx *h;
    const char *path;
    const char *const *headers;
    char *body;
    long timeout_ms;
    kit_http_resp r;
    pthread_t tid;
} bg;

static void *bg_main(void *arg)
{
    bg *b = arg;
    hx_req(b->h, "POST", b->path, b->headers, b->body, b->timeout_ms, &b->r);
    return NULL;
}

static void bg_start(bg *b, const hx *h, const char *const *headers, char *body,
                     long timeout_ms)
{
    memset(b, 0, sizeof(*b));
    b->h = h;
    b->path = "/v1/chat/completions";
    b->headers = headers;
    b->body = body;
    b->timeout_ms = timeout_ms;
    assert_int_equal(pthread_create(&b->tid, NULL, bg_main, b), 0);
}

static void bg_join(bg *b)
{
    pthread_join(b->tid, NULL);
    free(b->body);
}

/* The status document's queue.by_priority[p]. */
static int64_t queued_at(hx *h, int p)
{
    json_t *st = kit_env_status(&h->e);
    assert_non_null(st);
    json_t *v = json_array_get(kit_json_get(st, "queue.by_priority"), (size_t)p);
    int64_t n = json_is_integer(v) ? json_integer_value(v) : -1;
    json_decref(st);
    return n;
}

static void wait_queued_at(hx *h, int p, int64_t want)
{
    int64_t until = kit_now_ms() + T_MS;
    while (queued_at(h, p) != want) {
        if (kit_now_ms() > until)
            fail_msg("queue.by_priority[%d] never became %lld", p, (long long)want);
        kit_sleep_ms(5);
    }
}

/* A sample of the metrics text, or -1. */
static double metric(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = text; p != NULL && *p != '\0';) {
        if (strncmp(p, series, n) == 0 && p[n] == ' ')
            return strtod(p + n + 1, NULL);
        p = strchr(p, '\n');
        if (p != NULL)
            p++;
    }
    return -1;
}

static void test_endpoints(void **state)
{
    hx *h = *state;
    hx_start(h, (const char *[]){"--time-scale", "50", NULL}, NULL);
    kit_http_resp r;
    char v[256];

    assert_int_equal(hx_req(h, "GET", "/health", NULL, NULL, T_MS, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.ctype, "application/json");
    assert_string_equal(json_string_value(json_object_get(r.json, "status")), "ok");
    assert_null(hx_header(&r, "Access-Control-Allow-Origin", v, sizeof(v)));
    kit_http_resp_fini(&r);
    assert_int_equal(hx_req(h, "HEAD", "/health", NULL, NULL, T_MS, &r), 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.len, 0);
    kit_http_resp_fini(&r);

    /* The backend's model, as the status knows it. */
    json_t *st = kit_env_status(&h->e);
    assert_non_null(st);
    const char *model = json_string_value(kit_json_get(st, "backend.model"));
    assert_non_null(model);
    assert_int_equal(hx_req(h, "GET", "/v1/models", NULL, NULL, T_MS, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(json_string_value(json_object_get(r.json, "object")), "list");
    json_t *m0 = json_array_get(json_object_get(r.json, "data"), 0);
    assert_string_equal(json_string_value(json_object_get(m0, "id")), model);
    assert_string_equal(json_string_value(json_object_get(m0, "object")), "model");
    kit_http_resp_fini(&r);
    /* The status says where HTTP is served. */
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", h->port);
    assert_string_equal(json_string_value(json_object_get(st, "http")), addr);
    json_decref(st);

    assert_int_equal(hx_req(h, "GET", "/metrics", NULL, NULL, T_MS, &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.ctype, "text/plain"));
    assert_true(metric(r.body, "lmsched_queue_depth{priority=\"9\"}") == 0);
    assert_true(metric(r.body, "lmsched_http_connections") >= 1);
    assert_non_null(strstr(r.body, "# TYPE lmsched_ttft_seconds histogram\n"));
    assert_non_null(strstr(r.body, "lmsched_queue_wait_seconds_bucket{le=\"+Inf\"} "));
    assert_non_null(strstr(r.body, "lmsched_backend_up{url=\"http://127.0.0.1:"));
    kit_http_resp_fini(&r);

    /* Unknown paths and methods, in the OpenAI error shape; the connection
     * stays usable (no body was left unread). */
    assert_int_equal(hx_req(h, "GET", "/v1/nope", NULL, NULL, T_MS, &r), 0);
    hx_expect_error(&r, 404, "proto", NULL, "no such endpoint");
    assert_null(hx_header(&r, "Connection", v, sizeof(v)));
    kit_http_resp_fini(&r);
    assert_int_equal(hx_req(h, "GET", "/v1/chat/completions", NULL, NULL, T_MS, &r), 0);
    hx_expect_error(&r, 405, NULL, NULL, "use POST");
    kit_http_resp_fini(&r);
    assert_int_equal(hx_req(h, "POST", "/health", NULL, "{}", T_MS, &r), 0);
    hx_expect_error(&r, 405, NULL, NULL, "use GET");
    kit_http_resp_fini(&r);
    /* No CORS unless configured: a preflight is just a wrong method. */
    assert_int_equal(hx_req(h, "OPTIONS", "/v1/chat/completions",
                            (const char *[]){"Origin: https://app.example", NULL}, NULL,
                            T_MS, &r),
                     0);
    assert_int_equal(r.status, 405);
    assert_null(hx_header(&r, "Access-Control-Allow-Origin", v, sizeof(v)));
    kit_http_resp_fini(&r);
}

/* A whole answer in OpenAI's shape, cached tokens the second time, and the
 * same figures in the status and the metrics. */
static void test_chat(void **state)
{
    hx *h = *state;
    hx_start(h, (const char *[]){"--time-scale", "50", NULL}, NULL);
    kit_http_resp r;
    int64_t cached = 0;
    char *first = NULL;
    for (int i = 0; i < 2; i++) {
        char *body =
            hx_chat_body(SYS, "Hello there.", 6, "\"seed\":3,\"temperature\":0.2");
        assert_int_equal(hx_req(h, "POST", "/v1/chat/completions", NULL, body, T_MS, &r),
                         0);
        free(body);
        if (r.status != 200)
            fail_msg("HTTP %ld: %s", r.status, r.body);
        assert_string_equal(r.ctype, "application/json");
        json_t *j = r.json;
        assert_string_equal(json_string_value(json_object_get(j, "object")),
                            "chat.completion");
        assert_int_equal(
            strncmp(json_string_value(json_object_get(j, "id")), "chatcmpl-", 9), 0);
        assert_true(json_is_integer(json_object_get(j, "created")));
        json_t *c0 = json_array_get(json_object_get(j, "choices"), 0);
        assert_int_equal(json_array_size(json_object_get(j, "choices")), 1);
        assert_string_equal(json_string_value(json_object_get(c0, "finish_reason")),
                            "length");
        json_t *msg = json_object_get(c0, "message");
        assert_string_equal(json_string_value(json_object_get(msg, "role")), "assistant");
        const char *content = json_string_value(json_object_get(msg, "content"));
        assert_non_null(content);
        if (first == NULL)
            first = strdup(content);
        else
            assert_string_equal(content, first);
        assert_int_equal(kit_json_int(j, "usage.completion_tokens"), 6);
        assert_int_equal(kit_json_int(j, "usage.total_tokens"),
                         kit_json_int(j, "usage.prompt_tokens") + 6);
        cached = kit_json_int(j, "usage.prompt_tokens_details.cached_tokens");
        assert_true(cached >= 0);
        kit_http_resp_fini(&r);
    }
    free(first);
    assert_true(cached > 0); /* the system prompt and the message, the second time */

    json_t *st = kit_env_status(&h->e);
    assert_non_null(st);
    assert_int_equal(hx_req(h, "GET", "/metrics", NULL, NULL, T_MS, &r), 0);
    assert_true(metric(r.body, "lmsched_cached_tokens_total") ==
                (double)kit_json_int(st, "tokens.cached"));
    assert_true(metric(r.body, "lmsched_prompt_tokens_total") ==
                (double)kit_json_int(st, "tokens.prompt"));
    assert_true(metric(r.body, "lmsched_requests_total{outcome=\"completed\"}") == 2);
    assert_true(metric(r.body, "lmsched_queue_wait_seconds_count") == 2);
    assert_true(metric(r.body, "lmsched_ttft_seconds_bucket{le=\"+Inf\"}") == 2);
    /* The system prompt is the group, labelled with its start. */
    json_t *g0 = json_array_get(json_object_get(st, "groups"), 0);
    assert_int_equal(strncmp(json_string_value(json_object_get(g0, "label")), SYS, 20),
                     0);
    assert_int_equal(json_integer_value(json_object_get(g0, "requests")), 2);
    char series[200];
    snprintf(series, sizeof(series),
             "lmsched_group_requests_total{group=\"%s\",label=\"%.47s\"}",
             json_string_value(json_object_get(g0, "id")),
             json_string_value(json_object_get(g0, "label")));
    assert_true(metric(r.body, series) == 2);
    kit_http_resp_fini(&r);
    json_decref(st);
    hx_stop(h);
}

/* Server-sent events: OpenAI's chunks, the usage chunk when asked, [DONE]
 * last; the pieces make the whole answer. */
static void test_stream(void **state)
{
    hx *h = *state;
    hx_start(h, (const char *[]){"--time-scale", "20", NULL}, NULL);
    kit_http_resp r;
    char *body = hx_chat_body(SYS, "Stream to me.", 8, "\"seed\":5");
    assert_int_equal(hx_req(h, "POST", "/v1/chat/completions", NULL, body, T_MS, &r), 0);
    free(body);
    char *whole = strdup(json_string_value(json_object_get(
        json_object_get(json_array_get(json_object_get(r.json, "choices"), 0), "message"),
        "content")));
    kit_http_resp_fini(&r);

    for (int usage = 0; usage <= 1; usage++) {
        body = hx_chat_body(SYS, "Stream to me.", 8,
                            usage ? "\"seed\":5,\"stream\":true,\"stream_options\":"
                                    "{\"include_usage\":true}"
                                  : "\"seed\":5,\"stream\":true");
        assert_int_equal(hx_req(h, "POST", "/v1/chat/completions", NULL, body, T_MS, &r),
                         0);
        free(body);
        assert_int_equal(r.status, 200);
        assert_string_equal(r.ctype, "text/event-stream");
        char text[4096] = "";
        int events = 0, usages = 0;
        bool done = false;
        const char *finish = NULL;
        for (char *p = r.body; p != NULL && *p != '\0';) {
            char *end = strstr(p, "\n\n");
            assert_non_null(end);
            *end = '\0';
            assert_int_equal(strncmp(p, "data: ", 6), 0);
            assert_false(done); /* nothing after [DONE] */
            if (strcmp(p + 6, "[DONE]") == 0) {
                done = true;
            } else {
                json_t *ev = json_loads(p + 6, 0, NULL);
                assert_non_null(ev);
                events++;
                assert_string_equal(json_string_value(json_object_get(ev, "object")),
                                    "chat.completion.chunk");
                json_t *ch = json_array_get(json_object_get(ev, "choices"), 0);
                const char *piece = json_string_value(
                    json_object_get(json_object_get(ch, "delta"), "content"));
                if (piece != NULL)
                    strcat(text, piece);
                if (json_is_string(json_object_get(ch, "finish_reason")))
                    finish = "length";
                if (json_object_get(ev, "usage") != NULL) {
                    usages++;
                    assert_int_equal(json_array_size(json_object_get(ev, "choices")), 0);
                    assert_int_equal(kit_json_int(ev, "usage.completion_tokens"), 8);
                    assert_true(
                        kit_json_int(ev, "usage.prompt_tokens_details.cached_tokens") >=
                        0);
                }
                json_decref(ev);
            }
            p = end + 2;
        }
        assert_true(done);
        assert_non_null(finish);
        assert_string_equal(text, whole);
        assert_int_equal(usages, usage);
        /* role, the pieces (joined when they come together), finish, usage */
        assert_true(events >= 3 + usage);
        kit_http_resp_fini(&r);
    }
    free(whole);
    hx_stop(h);
}

/* Priority, agent and deadline as headers and as body fields. */
static void test_controls(void **state)
{
    hx *h = *state;
    hx_start(
        h,
        (const char *[]){"--slots", "1", "--time-scale", "1", "--decode-tps", "20", NULL},
        (const char *[]){"--max-concurrent", "1", NULL});
    bg a, b, c;
    bg_start(&a, h, NULL, hx_chat_body(SYS, "Take a while.", 30, NULL), T_MS);
    assert_true(kit_env_status_wait(&h->e, "inflight", 1, 1, T_MS) == 1);
    static const char *const hb[] = {"X-Lmsched-Priority: 9",
                                     "X-Lmsched-Agent: urgent-agent", NULL};
    bg_start(&b, h, hb, hx_chat_body(SYS, "Me first.", 2, NULL), T_MS);
    wait_queued_at(h, 9, 1);
    kit_http_resp r;
    assert_int_equal(hx_req(h, "GET", "/metrics", NULL, NULL, T_MS, &r), 0);
    assert_true(metric(r.body, "lmsched_queue_depth{priority=\"9\"}") == 1);
    assert_true(metric(r.body, "lmsched_queue_depth{priority=\"5\"}") == 0);
    kit_http_resp_fini(&r);
    /* A body deadline: it cannot start in 100 ms behind A: 504. */
    bg_start(
        &c, h, NULL,
        hx_chat_body(SYS, "Soon or never.", 2,
                     "\"lmsched\":{\"priority\":2,\"deadline_ms\":100,\"agent\":\"c\"}"),
        T_MS);
    bg_join(&c);
    hx_expect_error(&c.r, 504, "deadline", NULL, "deadline of 100 ms");
    kit_http_resp_fini(&c.r);
    bg_join(&a);
    bg_join(&b);
    assert_int_equal(a.r.status, 200);
    assert_int_equal(b.r.status, 200);
    kit_http_resp_fini(&a.r);
    kit_http_resp_fini(&b.r);
    /* A bad header is a 400 naming it. */
    char *body = hx_chat_body(SYS, "x", 2, NULL);
    assert_int_equal(hx_req(h, "POST", "/v1/chat/completions",
                            (const char *[]){"X-Lmsched-Priority: 12", NULL}, body, T_MS,
                            &r),
                     0);
    hx_expect_error(&r, 400, "proto", "X-Lmsched-Priority", "from 0 to 9");
    kit_http_resp_fini(&r);
    assert_int_equal(hx_req(h, "POST", "/v1/chat/completions",
                            (const char *[]){"X-Lmsched-Deadline-Ms: soon", NULL}, body,
                            T_MS, &r),
                     0);
    hx_expect_error(&r, 400, "proto", "X-Lmsched-Deadline-Ms", NULL);
    kit_http_resp_fini(&r);
    free(body);
}

static void post_expect(hx *h, const char *const *headers, const char *body, long status,
                        const char *code, const char *param, const char *want)
{
    kit_http_resp r;
    assert_int_equal(hx_req(h, "POST", "/v1/chat/completions", headers, body, T_MS, &r),
                     0);
    hx_expect_error(&r, status, code, param, want);
    kit_http_resp_fini(&r);
}

/* Bad requests: 400 naming the field, 413, 415, context overflow. */
static void test_errors(void **state)
{
    hx *h = *state;
    hx_start(h, (const char *[]){"--time-scale", "50", NULL},
             (const char *[]){"--http-max-body", "300K", NULL});
    post_expect(h, NULL, "{\"messages\":[", 400, "proto", NULL, "not valid JSON");
    post_expect(h, NULL, "", 400, "proto", NULL, "not valid JSON");
    post_expect(h, NULL, "[1,2]", 400, "proto", NULL, "must be a JSON object");
    post_expect(h, NULL, "{\"model\":\"m\"}", 400, "proto", "messages", "missing");
    post_expect(h, NULL, "{\"messages\":[{\"content\":\"hi\"}]}", 400, "proto",
                "messages[0].role", "missing");
    post_expect(h, NULL, "{\"messages\":[{\"role\":\"user\",\"content\":7}]}", 400,
                "proto", "messages[0].content", "expected a string");
    post_expect(h, NULL, "{\"messages\":[{\"role\":\"user\"}]}", 400, "proto",
                "messages[0].content", "missing");
    post_expect(
        h, NULL,
        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"temperature\":\"hot\"}",
        400, "proto", "temperature", "expected a number");
    post_expect(h, NULL,
                "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"n\":2}", 400,
                "proto", "n", "only n=1");
    post_expect(
        h, NULL,
        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":0}", 400,
        "proto", "max_tokens", "out of range");
    post_expect(h, NULL, "{\"messages\":[],\"messages\":[]}", 400, "proto", NULL,
                "duplicate");
    post_expect(h, (const char *[]){"Content-Type: text/plain", NULL},
                "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", 415, "proto",
                NULL, "must be JSON");
    /* Over --http-max-body. */
    size_t big = 400 << 10;
    char *b = malloc(big + 100);
    assert_non_null(b);
    int n = sprintf(b, "{\"messages\":[{\"role\":\"user\",\"content\":\"");
    memset(b + n, 'a', big);
    strcpy(b + n + big, "\"}]}");
    post_expect(h, NULL, b, 413, "too_large", NULL, "--http-max-body");
    /* Under it, but more than the backend's context can hold: refused
     * before it costs a slot, with OpenAI's code for it. */
    b[n + (250 << 10)] = '\0';
    strcat(b, "\"}]}");
    post_expect(h, NULL, b, 400, "context_length_exceeded", "messages", "cannot fit");
    free(b);
    /* Refused requests count as bad messages in the status. */
    assert_true(kit_env_status_wait(&h->e, "requests.bad_messages", 10, 100, T_MS) >= 10);
    hx_stop(h);
}

/* A full queue: 429 with Retry-After, which the official clients honour. */
static void test_busy(void **state)
{
    hx *h = *state;
    hx_start(
        h,
        (const char *[]){"--slots", "1", "--time-scale", "1", "--decode-tps", "20", NULL},
        (const char *[]){"--max-concurrent", "1", "--max-queue", "1", NULL});
    bg a, b;
    bg_start(&a, h, NULL, hx_chat_body(SYS, "Running.", 20, NULL), T_MS);
    assert_true(kit_env_status_wait(&h->e, "inflight", 1, 1, T_MS) == 1);
    bg_start(&b, h, NULL, hx_chat_body(SYS, "Queued.", 2, NULL), T_MS);
    assert_true(kit_env_status_wait(&h->e, "queue.depth", 1, 1, T_MS) == 1);
    kit_http_resp r;
    char *body = hx_chat_body(SYS, "No room.", 2, NULL);
    assert_int_equal(hx_req(h, "POST", "/v1/chat/completions", NULL, body, T_MS, &r), 0);
    free(body);
    hx_expect_error(&r, 429, "busy", NULL, "queue is full");
    char v[32];
    assert_non_null(hx_header(&r, "Retry-After", v, sizeof(v)));
    assert_string_equal(v, "1");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(r.json, "error"), "type")),
        "rate_limit_error");
    kit_http_resp_fini(&r);
    bg_join(&a);
    bg_join(&b);
    assert_int_equal(a.r.status, 200);
    assert_int_equal(b.r.status, 200);
    kit_http_resp_fini(&a.r);
    kit_http_resp_fini(&b.r);
    assert_true(kit_env_status_wait(&h->e, "requests.rejected_busy", 1, 1, T_MS) == 1);
}

/* No backend: 503 for a chat, and the health check says so. */
static void test_backend_down(void **state)
{
    hx *h = *state;
    hx_start(h, NULL, (const char *[]){"--backend-wait", "0", NULL});
    kit_http_resp r;
    char *body = hx_chat_body(SYS, "Anyone?", 2, NULL);
    assert_int_equal(hx_req(h, "POST", "/v1/chat/completions", NULL, body, T_MS, &r), 0);
    free(body);
    hx_expect_error(&r, 503, "backend_down", NULL, "cannot reach the LLM server");
    kit_http_resp_fini(&r);
    assert_int_equal(hx_req(h, "GET", "/health", NULL, NULL, T_MS, &r), 0);
    assert_int_equal(r.status, 503);
    assert_string_equal(json_string_value(json_object_get(r.json, "status")),
                        "unavailable");
    kit_http_resp_fini(&r);
}

/* A client that goes away cancels its request as a vanished nng agent
 * does: running (the backend slot frees), queued (it leaves the queue),
 * streaming. */
static void test_disconnect(void **state)
{
    hx *h = *state;
    hx_start(
        h,
        (const char *[]){"--slots", "1", "--time-scale", "1", "--decode-tps", "10", NULL},
        (const char *[]){"--max-concurrent", "1", NULL});
    kit_http_resp r;
    /* Running, not streamed: the client gives up after 600 ms. */
    char *body = hx_chat_body(SYS, "Long answer.", 300, NULL);
    assert_int_not_equal(hx_req(h, "POST", "/v1/chat/completions", NULL, body, 600, &r),
                         0);
    kit_http_resp_fini(&r);
    assert_true(
        kit_env_status_wait(&h->e, "requests.failed_by_class.canceled", 1, 1, T_MS) == 1);
    assert_true(kit_env_sim_wait(&h->e, "active", 0, 0, T_MS) == 0);
    assert_true(kit_env_status_wait(&h->e, "inflight", 0, 0, T_MS) == 0);

    /* Queued behind a running one. */
    bg a;
    bg_start(&a, h, NULL, hx_chat_body(SYS, "Running.", 20, NULL), T_MS);
    assert_true(kit_env_status_wait(&h->e, "inflight", 1, 1, T_MS) == 1);
    assert_int_not_equal(hx_req(h, "POST", "/v1/chat/completions", NULL, body, 400, &r),
                         0);
    kit_http_resp_fini(&r);
    assert_true(
        kit_env_status_wait(&h->e, "requests.failed_by_class.canceled", 2, 2, T_MS) == 2);
    assert_true(kit_env_status_wait(&h->e, "queue.depth", 0, 0, T_MS) == 0);
    bg_join(&a);
    assert_int_equal(a.r.status, 200);
    kit_http_resp_fini(&a.r);

    /* Streaming: cut mid-stream. */
    free(body);
    body = hx_chat_body(SYS, "Stream long.", 300, "\"stream\":true");
    assert_int_not_equal(hx_req(h, "POST", "/v1/chat/completions", NULL, body, 2500, &r),
                         0);
    assert_non_null(r.body); /* pieces came before the cut */
    assert_non_null(strstr(r.body, "chat.completion.chunk"));
    kit_http_resp_fini(&r);
    free(body);
    assert_true(
        kit_env_status_wait(&h->e, "requests.failed_by_class.canceled", 3, 3, T_MS) == 3);
    assert_true(kit_env_sim_wait(&h->e, "active", 0, 0, T_MS) == 0);
    assert_int_equal(hx_req(h, "GET", "/metrics", NULL, NULL, T_MS, &r), 0);
    assert_true(metric(r.body, "lmsched_http_disconnects_total") == 3);
    kit_http_resp_fini(&r);
    hx_stop(h);
}

/* The token: every endpoint but /health needs it, as a Bearer header. */
static void test_auth(void **state)
{
    hx *h = *state;
    char path[600];
    snprintf(path, sizeof(path), "%s/token", h->e.dir);
    assert_int_equal(kit_fs_write(path, "s3cret-Token_42\n", 0600), 0);
    hx_start(h, (const char *[]){"--time-scale", "50", NULL},
             (const char *[]){"--http-token-file", path, NULL});
    kit_http_resp r;
    char v[64];
    assert_int_equal(hx_req(h, "GET", "/v1/models", NULL, NULL, T_MS, &r), 0);
    hx_expect_error(&r, 401, "auth", NULL, "requires an access token");
    assert_non_null(hx_header(&r, "WWW-Authenticate", v, sizeof(v)));
    assert_string_equal(v, "Bearer");
    kit_http_resp_fini(&r);
    static const char *const bad[] = {"Authorization: Bearer s3cret-Token_4", NULL};
    static const char *const good[] = {"Authorization: Bearer s3cret-Token_42", NULL};
    assert_int_equal(hx_req(h, "GET", "/metrics", bad, NULL, T_MS, &r), 0);
    hx_expect_error(&r, 401, "auth", NULL, "refused");
    kit_http_resp_fini(&r);
    char *body = hx_chat_body(SYS, "hi", 2, NULL);
    assert_int_equal(hx_req(h, "POST", "/v1/chat/completions", bad, body, T_MS, &r), 0);
    hx_expect_error(&r, 401, "auth", NULL, NULL);
    kit_http_resp_fini(&r);
    assert_int_equal(hx_req(h, "POST", "/v1/chat/completions", good, body, T_MS, &r), 0);
    assert_int_equal(r.status, 200);
    kit_http_resp_fini(&r);
    free(body);
    assert_int_equal(hx_req(h, "GET", "/health", NULL, NULL, T_MS, &r), 0);
    assert_int_equal(r.status, 200);
    kit_http_resp_fini(&r);
    assert_true(kit_env_status_wait(&h->e, "requests.auth_refused", 3, 3, T_MS) == 3);
    /* The token never reaches the log. */
    assert_false(kit_fs_contains(h->e.daemon.log, "s3cret"));
    hx_stop(h);
}

static void test_cors(void **state)
{
    hx *h = *state;
    hx_start(h, (const char *[]){"--time-scale", "50", NULL},
             (const char *[]){"--http-cors", "https://app.example", NULL});
    kit_http_resp r;
    char v[200];
    static const char *const pre[] = {
        "Origin: https://app.example", "Access-Control-Request-Method: POST",
        "Access-Control-Request-Headers: authorization,content-type,x-stainless-os",
        NULL};
    assert_int_equal(hx_req(h, "OPTIONS", "/v1/chat/completions", pre, NULL, T_MS, &r),
                     0);
    assert_int_equal(r.status, 204);
    assert_string_equal(hx_header(&r, "Access-Control-Allow-Origin", v, sizeof(v)),
                        "https://app.example");
    assert_string_equal(hx_header(&r, "Access-Control-Allow-Headers", v, sizeof(v)),
                        "authorization,content-type,x-stainless-os");
    assert_non_null(
        strstr(hx_header(&r, "Access-Control-Allow-Methods", v, sizeof(v)), "POST"));
    kit_http_resp_fini(&r);
    char *body = hx_chat_body(SYS, "hi", 2, NULL);
    assert_int_equal(hx_req(h, "POST", "/v1/chat/completions", pre, body, T_MS, &r), 0);
    free(body);
    assert_int_equal(r.status, 200);
    assert_string_equal(hx_header(&r, "Access-Control-Allow-Origin", v, sizeof(v)),
                        "https://app.example");
    kit_http_resp_fini(&r);
}

/* SIGTERM: a stream in flight finishes, a new request gets 503, the
 * daemon exits 0. */
static void test_drain(void **state)
{
    hx *h = *state;
    hx_start(h, (const char *[]){"--time-scale", "1", "--decode-tps", "20", NULL}, NULL);
    bg a;
    bg_start(&a, h, NULL, hx_chat_body(SYS, "Finish me.", 20, "\"stream\":true"), T_MS);
    assert_true(kit_env_status_wait(&h->e, "inflight", 1, 1, T_MS) == 1);
    kill(h->e.daemon.pid, SIGTERM);
    kit_sleep_ms(100);
    kit_http_resp r;
    char *body = hx_chat_body(SYS, "Too late.", 2, NULL);
    if (hx_req(h, "POST", "/v1/chat/completions", NULL, body, T_MS, &r) == 0)
        hx_expect_error(&r, 503, "shutdown", NULL, "shutting down");
    kit_http_resp_fini(&r);
    free(body);
    bg_join(&a);
    assert_int_equal(a.r.status, 200);
    assert_non_null(a.r.body);
    assert_non_null(strstr(a.r.body, "data: [DONE]\n\n"));
    kit_http_resp_fini(&a.r);
    assert_int_equal(kit_proc_wait(&h->e.daemon, T_MS), 0);
}

/* One queue, one group per system prompt, whichever door: an agentlib
 * request and an HTTP one with the same system prompt share the group. */
static void test_one_queue(void **state)
{
    hx *h = *state;
    hx_start(h, (const char *[]){"--time-scale", "50", NULL}, NULL);
    lmsched_client *c = NULL;
    assert_int_equal(lmsched_client_open(&c, h->e.url), LMSCHED_OK);
    lmsched_request *req = kit_req(SYS, "From nng.", 4);
    lmsched_result *res = NULL;
    assert_int_equal(lmsched_chat(c, req, T_MS, &res), LMSCHED_OK);
    lmsched_result_free(res);
    lmsched_request_free(req);
    lmsched_client_close(c);
    kit_http_resp r;
    char *body = hx_chat_body(SYS, "From HTTP.", 4, "\"user\":\"session-1\"");
    assert_int_equal(hx_req(h, "POST", "/v1/chat/completions", NULL, body, T_MS, &r), 0);
    free(body);
    assert_int_equal(r.status, 200);
    assert_true(kit_json_int(r.json, "usage.prompt_tokens_details.cached_tokens") > 0);
    kit_http_resp_fini(&r);
    json_t *st = kit_env_status(&h->e);
    json_t *groups = json_object_get(st, "groups");
    assert_int_equal(json_array_size(groups), 1);
    assert_int_equal(kit_json_int(json_array_get(groups, 0), "requests"), 2);
    json_decref(st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_endpoints, hx_setup, hx_teardown),
        cmocka_unit_test_setup_teardown(test_chat, hx_setup, hx_teardown),
        cmocka_unit_test_setup_teardown(test_stream, hx_setup, hx_teardown),
        cmocka_unit_test_setup_teardown(test_controls, hx_setup, hx_teardown),
        cmocka_unit_test_setup_teardown(test_errors, hx_setup, hx_teardown),
        cmocka_unit_test_setup_teardown(test_busy, hx_setup, hx_teardown),
        cmocka_unit_test_setup_teardown(test_backend_down, hx_setup, hx_teardown),
        cmocka_unit_test_setup_teardown(test_disconnect, hx_setup, hx_teardown),
        cmocka_unit_test_setup_teardown(test_auth, hx_setup, hx_teardown),
        cmocka_unit_test_setup_teardown(test_cors, hx_setup, hx_teardown),
        cmocka_unit_test_setup_teardown(test_drain, hx_setup, hx_teardown),
        cmocka_unit_test_setup_teardown(test_one_queue, hx_setup, hx_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
