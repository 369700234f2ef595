/*
 * simhttp - the HTTP face of lmsim on libmicrohttpd.
 *
 * Design notes
 * - MHD runs one thread per connection, so handlers may block: a chat
 *   request is submitted to the engine and its connection thread waits on
 *   the engine until the first token exists (streamed) or the answer is
 *   complete (not streamed) before it queues a response. Like llama-server,
 *   the status line is only sent once it is known whether the request
 *   failed, so an injected failure or a crash while queued is a real HTTP
 *   500 rather than an error inside a 200 stream.
 * - The stream body comes from a content-reader callback that blocks on the
 *   engine until tokens exist; returning MHD_CONTENT_READER_END_WITH_ERROR
 *   closes the connection without the terminating chunk (a cut stream).
 * - Blocked threads wake at least every SIMHTTP_POLL_MS to notice a client
 *   that hung up (peeking at the socket) and engine shutdown, so a client
 *   that goes away frees its slot as llama-server does.
 * - Request bodies accumulate in the per-request context (con_cls) up to
 *   SIMHTTP_MAX_BODY; the rest is discarded and answered with 413.
 * - POST /apply-template and /tokenize (llama-server's token counts) are
 *   answered at once, without the engine or a slot, as llama-server does:
 *   the template is the chat's rendered prompt, and its tokens are counted
 *   by the engine's own rule, so the count equals usage.prompt_tokens.
 * - --instant answers a chat from a buffer formatted at once, without the
 *   engine's clock, so no handler blocks: MHD then runs a small pool of
 *   event-loop threads instead of a thread per connection, which keeps the
 *   server cheap with many keep-alive clients (overhead benchmarks).
 */
#include "sim/http.h"

#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "scheduler/util/log.h"
#include "sim/api.h"

/* How often a blocked connection thread checks its peer, wall ms. */
#define SIMHTTP_POLL_MS 100u
/* --instant: event-loop threads, one per CPU within these bounds. */
#define SIMHTTP_MIN_POOL 2
#define SIMHTTP_MAX_POOL 16

static const char simhttp_oom_body[] =
    "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\"}}";
/* A chunk cut off in the middle of its JSON, as a broken proxy might pass on. */
static const char simhttp_malformed[] =
    "data: {\"choices\":[{\"delta\":{\"content\":\n\n";
static const char simhttp_done[] = "data: [DONE]\n\n";
/* --garbage-mode json: a 200 completion whose JSON stops half way. */
static const char simhttp_garbage_json[] =
    "{\"id\":\"chatcmpl-garbage\",\"object\":\"chat.completion\",\"choices\":[{\"index\":0,"
    "\"message\":{\"role\":\"assistant\",\"content\":\"unterminated";
/* --garbage-mode html: what a reverse proxy in front of a dead server says. */
static const char simhttp_garbage_html[] =
    "<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
    "<body><center><h1>502 Bad Gateway</h1></center>\n<hr><center>nginx</center>\n"
    "</body></html>\n";
/* --garbage-mode truncate: the last event stops in the middle. */
static const char simhttp_garbage_tail[] = "data: {\"choices\":[{\"delta\":{\"content\":\"tr";

struct sim_http {
    const sim_config *cfg;
    sim_engine *engine;
    struct MHD_Daemon *daemon;
    atomic_uint_fast64_t n_template, n_tokenize; /* answered 200 (/sim/stats) */
};

/* State of one HTTP request (MHD's con_cls). */
typedef struct simhttp_conn {
    sim_http *h;
    char *body;
    size_t body_len, body_cap;
    bool too_large;
    sim_req *req; /* held until the request completes */
    MHD_socket fd;
    bool include_usage;
    /* Stream state, used by the content reader only. */
    unsigned sent; /* tokens already formatted */
    bool role_sent;
    bool eof;
    char *out; /* formatted bytes not yet handed to MHD */
    size_t out_len, out_off, out_cap;
} simhttp_conn;

static void simhttp_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    /* MHD reports every client hang-up; that is routine here. */
    log_debug("mhd: %s", msg);
}

/* True when the client closed its end (or the socket broke). */
static bool simhttp_peer_gone(MHD_socket fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (fd == MHD_INVALID_SOCKET)
        return false;
    if (poll(&p, 1, 0) <= 0)
        return false;
    if (p.revents & (POLLERR | POLLHUP | POLLNVAL))
        return true;
    if (p.revents & POLLIN) {
        char c;
        ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
        if (n == 0)
            return true;
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return true;
    }
    return false;
}

/* Ground truth for tests: which slot served the request and in which order
 * requests got slots. Clients ignore unknown headers. */
static void simhttp_truth_headers(struct MHD_Response *resp, const sim_view *v)
{
    char num[32];
    snprintf(num, sizeof num, "%d", v->slot);
    MHD_add_response_header(resp, "X-Lmsim-Slot", num);
    snprintf(num, sizeof num, "%llu", (unsigned long long)v->admit_seq);
    MHD_add_response_header(resp, "X-Lmsim-Admit-Seq", num);
}

/* Queues a complete response; takes ownership of body (malloc'd, may be
 * NULL meaning out of memory). */
static enum MHD_Result simhttp_send(struct MHD_Connection *c, unsigned status, char *body,
                                    const char *ctype, const sim_view *v)
{
    struct MHD_Response *resp;
    if (body) {
        resp = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    } else {
        status = MHD_HTTP_INTERNAL_SERVER_ERROR;
        resp = MHD_create_response_from_buffer(
            strlen(simhttp_oom_body), (void *)simhttp_oom_body, MHD_RESPMEM_PERSISTENT);
    }
    if (!resp) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    if (v && body)
        simhttp_truth_headers(resp, v);
    enum MHD_Result ret = MHD_queue_response(c, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result simhttp_json(struct MHD_Connection *c, unsigned status, char *body)
{
    return simhttp_send(c, status, body, "application/json; charset=utf-8", NULL);
}

static enum MHD_Result simhttp_error(struct MHD_Connection *c, unsigned status,
                                     const char *type, const char *message)
{
    return simhttp_json(c, status, api_error_json(type, message));
}

/* Appends to the pending stream output. Returns 0 or -1 on ENOMEM. */
static int simhttp_out(simhttp_conn *cc, const char *s, size_t n)
{
    if (cc->out_len + n > cc->out_cap) {
        size_t cap = cc->out_cap ? cc->out_cap : 1024;
        while (cap < cc->out_len + n)
            cap *= 2;
        char *p = realloc(cc->out, cap);
        if (!p)
            return -1;
        cc->out = p;
        cc->out_cap = cap;
    }
    memcpy(cc->out + cc->out_len, s, n);
    cc->out_len += n;
    return 0;
}

/* Appends "data: <json>\n\n" and frees json (NULL: out of memory). */
static int simhttp_event(simhttp_conn *cc, char *json)
{
    int rc = -1;
    if (json && simhttp_out(cc, "data: ", 6) == 0 &&
        simhttp_out(cc, json, strlen(json)) == 0 && simhttp_out(cc, "\n\n", 2) == 0)
        rc = 0;
    free(json);
    return rc;
}

/* Formats whatever the request has produced since the last call, blocking
 * until there is something. Returns 0 (output pending, or eof set) or -1
 * when the stream must be cut. */
static int simhttp_stream_fill(simhttp_conn *cc)
{
    const sim_config *cfg = cc->h->cfg;
    sim_view v;
    for (;;) {
        simeng_wait(cc->h->engine, cc->req, cc->sent, SIMHTTP_POLL_MS, &v);
        if (!cc->role_sent) {
            if (simhttp_event(cc, api_chunk_role(cfg, &v)) != 0)
                return -1;
            cc->role_sent = true;
        }
        while (cc->sent < v.n_gen) {
            if (simhttp_event(cc, api_chunk_piece(cfg, &v, cc->sent)) != 0)
                return -1;
            cc->sent++;
            if (cc->sent == v.malformed_at &&
                simhttp_out(cc, simhttp_malformed, strlen(simhttp_malformed)) != 0)
                return -1;
        }
        if (v.state == SIM_DONE) {
            if (simhttp_event(cc, api_chunk_final(cfg, &v)) != 0 ||
                (cc->include_usage && simhttp_event(cc, api_chunk_usage(cfg, &v)) != 0) ||
                simhttp_out(cc, simhttp_done, strlen(simhttp_done)) != 0)
                return -1;
            cc->eof = true;
            return 0;
        }
        if (cc->out_len > 0)
            return 0;
        if (simeng_final(v.state) || v.stopping) {
            if (v.state == SIM_CUT)
                log_info("req %llu: stream cut after %u token(s)",
                         (unsigned long long)v.id, v.n_gen);
            return -1;
        }
        if (simhttp_peer_gone(cc->fd))
            return -1;
    }
}

static ssize_t simhttp_stream_cb(void *cls, uint64_t pos, char *buf, size_t max)
{
    simhttp_conn *cc = cls;
    while (cc->out_off == cc->out_len) {
        if (cc->eof)
            return MHD_CONTENT_READER_END_OF_STREAM;
        cc->out_len = cc->out_off = 0;
        if (simhttp_stream_fill(cc) != 0)
            return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    size_t n = cc->out_len - cc->out_off;
    if (n > max)
        n = max;
    memcpy(buf, cc->out + cc->out_off, n);
    cc->out_off += n;
    return (ssize_t)n;
}

/* --garbage-mode huge: the event in cc->out repeated up to garbage_bytes,
 * then the body just ends. */
static ssize_t simhttp_huge_cb(void *cls, uint64_t pos, char *buf, size_t max)
{
    simhttp_conn *cc = cls;
    uint64_t limit = cc->h->cfg->garbage_bytes;
    if (pos >= limit)
        return MHD_CONTENT_READER_END_OF_STREAM;
    size_t n = limit - pos < max ? (size_t)(limit - pos) : max;
    for (size_t done = 0; done < n;) {
        size_t off = (size_t)((pos + done) % cc->out_len);
        size_t k = cc->out_len - off;
        if (k > n - done)
            k = n - done;
        memcpy(buf + done, cc->out + off, k);
        done += k;
    }
    return (ssize_t)n;
}

/* Answers a request drawn for --garbage-rate with the kind in v. */
static enum MHD_Result simhttp_garbage(struct MHD_Connection *c, simhttp_conn *cc,
                                       const sim_view *v)
{
    const sim_config *cfg = cc->h->cfg;
    switch (v->garbage_mode) {
    case SIM_GARBAGE_JSON:
        return simhttp_send(c, MHD_HTTP_OK, strdup(simhttp_garbage_json),
                            "application/json; charset=utf-8", NULL);
    case SIM_GARBAGE_HTML:
        return simhttp_send(c, MHD_HTTP_BAD_GATEWAY, strdup(simhttp_garbage_html),
                            "text/html", NULL);
    case SIM_GARBAGE_TRUNCATE: {
        /* Some tokens, then half an event, then a clean end of body: no
         * finish_reason, no [DONE]. */
        unsigned n = cfg->reply_tokens / 2 ? cfg->reply_tokens / 2 : 1;
        int rc = simhttp_event(cc, api_chunk_role(cfg, v));
        for (unsigned i = 0; rc == 0 && i < n; i++)
            rc = simhttp_event(cc, api_chunk_content(cfg, v, simeng_word(v->word_seed, i)));
        if (rc == 0)
            rc = simhttp_out(cc, simhttp_garbage_tail, strlen(simhttp_garbage_tail));
        char *body = rc == 0 ? strndup(cc->out, cc->out_len) : NULL;
        cc->out_len = 0;
        return simhttp_send(c, MHD_HTTP_OK, body, "text/event-stream", NULL);
    }
    case SIM_GARBAGE_HUGE:
    default: {
        if (simhttp_event(cc, api_chunk_content(cfg, v, "big ")) != 0)
            return simhttp_json(c, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL);
        struct MHD_Response *resp = MHD_create_response_from_callback(
            MHD_SIZE_UNKNOWN, 16 * 1024, simhttp_huge_cb, cc, NULL);
        if (!resp)
            return MHD_NO;
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
        enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_OK, resp);
        MHD_destroy_response(resp);
        return ret;
    }
    }
}

/* lmsim --instant: the whole answer at once from one buffer, a complete
 * event stream (role, one chunk per token, final, usage, [DONE]) or a
 * completion, formatted on this thread without touching the engine's clock. */
static enum MHD_Result simhttp_instant(struct MHD_Connection *c, simhttp_conn *cc,
                                       const sim_req_params *p, bool include_usage)
{
    const sim_config *cfg = cc->h->cfg;
    unsigned prompt_n = 0;
    sim_view v;
    switch (simeng_instant(cc->h->engine, p, &v, &prompt_n)) {
    case SIM_SUBMIT_OK:
        break;
    case SIM_SUBMIT_ECONTEXT:
        return simhttp_json(c, MHD_HTTP_BAD_REQUEST,
                            api_context_error_json(prompt_n, cfg->ctx));
    case SIM_SUBMIT_ESLOT:
        return simhttp_error(c, MHD_HTTP_BAD_REQUEST, "invalid_request_error",
                             "'id_slot' is out of range");
    case SIM_SUBMIT_EBUSY:
    case SIM_SUBMIT_ENOMEM:
    default:
        return simhttp_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "server_error",
                             "server busy or shutting down");
    }
    if (!p->stream)
        return simhttp_send(c, MHD_HTTP_OK, api_completion(cfg, &v),
                            "application/json; charset=utf-8", NULL);
    int rc = simhttp_event(cc, api_chunk_role(cfg, &v));
    for (unsigned i = 0; rc == 0 && i < v.n_gen; i++)
        rc = simhttp_event(cc, api_chunk_piece(cfg, &v, i));
    if (rc == 0)
        rc = simhttp_event(cc, api_chunk_final(cfg, &v));
    if (rc == 0 && include_usage)
        rc = simhttp_event(cc, api_chunk_usage(cfg, &v));
    if (rc == 0)
        rc = simhttp_out(cc, simhttp_done, strlen(simhttp_done));
    if (rc != 0)
        return simhttp_json(c, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL);
    /* The response takes the buffer (and frees it); cc forgets it. */
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(cc->out_len, cc->out, MHD_RESPMEM_MUST_FREE);
    if (!resp)
        return MHD_NO;
    cc->out = NULL;
    cc->out_len = cc->out_cap = 0;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result simhttp_chat(struct MHD_Connection *c, simhttp_conn *cc)
{
    sim_http *h = cc->h;
    api_chat chat;
    char *err = NULL;
    unsigned prompt_n = 0;
    sim_view v;

    if (cc->too_large)
        return simhttp_error(c, MHD_HTTP_CONTENT_TOO_LARGE, "invalid_request_error",
                             "request body too large (limit 8 MiB)");
    int status = api_parse_chat(cc->body ? cc->body : "", cc->body_len, &chat, &err);
    if (status != 0)
        return simhttp_json(c, (unsigned)status, err);
    sim_reply *reply = NULL;
    if (api_chat_reply(h->cfg, &chat, &reply) != 0) {
        api_chat_fini(&chat);
        return simhttp_json(c, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL);
    }

    sim_req_params p = {
        .prompt = chat.prompt,
        .prompt_len = chat.prompt_len,
        .max_tokens = chat.max_tokens,
        .id_slot = chat.id_slot,
        .cache_prompt = chat.cache_prompt,
        .stream = chat.stream,
        .ignore_eos = chat.ignore_eos,
        .seed = chat.seed,
        .reply = reply,
    };
    if (h->cfg->instant) {
        enum MHD_Result ret = simhttp_instant(c, cc, &p, chat.include_usage);
        api_chat_fini(&chat);
        simreply_free(reply);
        return ret;
    }
    sim_submit_rc rc = simeng_submit(h->engine, &p, &cc->req, &prompt_n);
    cc->include_usage = chat.include_usage;
    chat.prompt = p.prompt; /* NULL when the engine took it, as p.reply */
    api_chat_fini(&chat);
    simreply_free(p.reply);
    switch (rc) {
    case SIM_SUBMIT_OK:
        break;
    case SIM_SUBMIT_ECONTEXT:
        return simhttp_json(c, MHD_HTTP_BAD_REQUEST,
                            api_context_error_json(prompt_n, h->cfg->ctx));
    case SIM_SUBMIT_ESLOT:
        return simhttp_error(c, MHD_HTTP_BAD_REQUEST, "invalid_request_error",
                             "'id_slot' is out of range");
    case SIM_SUBMIT_EBUSY:
        return simhttp_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "server_error",
                             "server busy or shutting down");
    case SIM_SUBMIT_ENOMEM:
        return simhttp_json(c, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL);
    }

    for (;;) {
        simeng_wait(h->engine, cc->req, 0, SIMHTTP_POLL_MS, &v);
        if (v.state == SIM_FAILED) {
            return simhttp_json(c, (unsigned)v.fail_status, strdup(v.fail_body));
        }
        if (v.state == SIM_GARBAGE)
            return simhttp_garbage(c, cc, &v);
        /* SIM_HUNG falls through to the checks below: it is answered only
         * when the engine stops, and released when the client hangs up. */
        if (v.stopping)
            return simhttp_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "server_error",
                                 "server shutting down");
        if (v.state == SIM_CANCELLED)
            return MHD_NO;
        if (v.stream && v.n_gen > 0)
            break;
        if (!v.stream && simeng_final(v.state)) {
            if (v.state == SIM_DONE)
                return simhttp_send(c, MHD_HTTP_OK, api_completion(h->cfg, &v),
                                    "application/json; charset=utf-8", &v);
            return MHD_NO;
        }
        /* Returning MHD_NO closes the connection; the completion callback
         * then releases the request, which frees its queue place or slot. */
        if (simhttp_peer_gone(cc->fd))
            return MHD_NO;
    }

    struct MHD_Response *resp = MHD_create_response_from_callback(
        MHD_SIZE_UNKNOWN, 16 * 1024, simhttp_stream_cb, cc, NULL);
    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    simhttp_truth_headers(resp, &v);
    enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* POST /apply-template (tokenize false) or /tokenize: llama-server's
 * token counts, or 404 with --no-tokenize (a server without them). */
static enum MHD_Result simhttp_count(struct MHD_Connection *c, simhttp_conn *cc,
                                     const char *url, bool tokenize)
{
    sim_http *h = cc->h;
    char *out = NULL;
    int status;
    if (h->cfg->no_tokenize) {
        char msg[300];
        snprintf(msg, sizeof msg, "Unexpected endpoint or method. (POST %.200s)", url);
        return simhttp_error(c, MHD_HTTP_NOT_FOUND, "invalid_request_error", msg);
    }
    if (cc->too_large)
        return simhttp_error(c, MHD_HTTP_CONTENT_TOO_LARGE, "invalid_request_error",
                             "request body too large (limit 8 MiB)");
    if (tokenize) {
        status = api_tokenize(cc->body ? cc->body : "", cc->body_len, &out);
    } else {
        api_chat chat;
        status = api_parse_chat(cc->body ? cc->body : "", cc->body_len, &chat, &out);
        if (status == 0) {
            status = api_template(&chat, &out);
            api_chat_fini(&chat);
        }
    }
    if (status != 0)
        return simhttp_json(c, (unsigned)status, out);
    atomic_fetch_add(tokenize ? &h->n_tokenize : &h->n_template, 1);
    return simhttp_json(c, MHD_HTTP_OK, out);
}

static enum MHD_Result simhttp_route(struct MHD_Connection *c, simhttp_conn *cc,
                                     const char *url, const char *method)
{
    sim_http *h = cc->h;
    bool get = strcmp(method, MHD_HTTP_METHOD_GET) == 0;
    bool post = strcmp(method, MHD_HTTP_METHOD_POST) == 0;

    if (strcmp(url, "/v1/chat/completions") == 0) {
        if (post)
            return simhttp_chat(c, cc);
    } else if (strcmp(url, "/apply-template") == 0 || strcmp(url, "/tokenize") == 0) {
        if (post)
            return simhttp_count(c, cc, url, strcmp(url, "/tokenize") == 0);
    } else if (strcmp(url, "/v1/models") == 0) {
        if (get)
            return simhttp_json(c, MHD_HTTP_OK, api_models_openai(h->cfg));
    } else if (strcmp(url, "/api/v1/models") == 0) {
        if (get)
            return simhttp_json(c, MHD_HTTP_OK, api_models_lmstudio(h->cfg));
    } else if (strcmp(url, "/sim/stats") == 0) {
        if (get) {
            sim_slot_stats slots[SIMCFG_MAX_SLOTS];
            sim_stats st = {.slots = slots};
            simeng_stats(h->engine, &st);
            st.template_requests = atomic_load(&h->n_template);
            st.tokenize_requests = atomic_load(&h->n_tokenize);
            return simhttp_json(c, MHD_HTTP_OK, api_stats(h->cfg, &st));
        }
    } else if (strcmp(url, "/sim/reset") == 0) {
        if (post) {
            simeng_reset(h->engine);
            atomic_store(&h->n_template, 0);
            atomic_store(&h->n_tokenize, 0);
            return simhttp_json(c, MHD_HTTP_OK, strdup("{\"reset\":true}"));
        }
    } else {
        char msg[300];
        snprintf(msg, sizeof msg, "Unexpected endpoint or method. (%.16s %.200s)", method,
                 url);
        return simhttp_error(c, MHD_HTTP_NOT_FOUND, "invalid_request_error", msg);
    }
    return simhttp_error(c, MHD_HTTP_METHOD_NOT_ALLOWED, "invalid_request_error",
                         "method not allowed on this endpoint");
}

static enum MHD_Result simhttp_handler(void *cls, struct MHD_Connection *c,
                                       const char *url, const char *method,
                                       const char *version, const char *upload_data,
                                       size_t *upload_data_size, void **con_cls)
{
    simhttp_conn *cc = *con_cls;
    if (!cc) {
        /* First call: headers only. */
        cc = calloc(1, sizeof *cc);
        if (!cc)
            return MHD_NO;
        cc->h = cls;
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        cc->fd = ci ? ci->connect_fd : MHD_INVALID_SOCKET;
        *con_cls = cc;
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (cc->too_large)
            return MHD_YES;
        if (cc->body_len + n > SIMHTTP_MAX_BODY) {
            /* Keep reading (and dropping) the body so the 413 can be sent. */
            cc->too_large = true;
            free(cc->body);
            cc->body = NULL;
            cc->body_len = cc->body_cap = 0;
            return MHD_YES;
        }
        if (cc->body_len + n + 1 > cc->body_cap) {
            size_t cap = cc->body_cap ? cc->body_cap : 4096;
            while (cap < cc->body_len + n + 1)
                cap *= 2;
            char *p = realloc(cc->body, cap);
            if (!p)
                return MHD_NO;
            cc->body = p;
            cc->body_cap = cap;
        }
        memcpy(cc->body + cc->body_len, upload_data, n);
        cc->body_len += n;
        cc->body[cc->body_len] = '\0';
        return MHD_YES;
    }
    log_debug("%s %s (%zu body bytes)", method, url, cc->body_len);
    return simhttp_route(c, cc, url, method);
}

static void simhttp_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                              enum MHD_RequestTerminationCode toe)
{
    sim_http *h = cls;
    simhttp_conn *cc = *con_cls;
    if (!cc)
        return;
    /* If the request is unfinished this cancels it: the client is gone. */
    simeng_release(h->engine, cc->req);
    free(cc->body);
    free(cc->out);
    free(cc);
    *con_cls = NULL;
}

int simhttp_start(sim_http **out, const sim_config *cfg, sim_engine *e, uint16_t *port)
{
    struct sockaddr_in addr;
    sim_http *h = calloc(1, sizeof *h);
    *out = NULL;
    if (!h) {
        log_error("out of memory");
        return -1;
    }
    h->cfg = cfg;
    h->engine = e;

    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)cfg->port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

    /* AUTO picks poll() over select(), which fails past fd 1023 (and epoll
     * where there is one). With --instant no handler ever blocks, so a
     * small pool of event-loop threads serves every connection, and a
     * client's request costs the server no thread switch of its own. */
    unsigned pool = 0;
    unsigned int flags =
        MHD_USE_AUTO | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
    if (cfg->instant) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        pool = n < SIMHTTP_MIN_POOL   ? SIMHTTP_MIN_POOL
               : n > SIMHTTP_MAX_POOL ? SIMHTTP_MAX_POOL
                                      : (unsigned)n;
    } else {
        flags |= MHD_USE_THREAD_PER_CONNECTION;
    }
    h->daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, simhttp_handler, h, MHD_OPTION_EXTERNAL_LOGGER,
        simhttp_mhd_log, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
        MHD_OPTION_NOTIFY_COMPLETED, simhttp_completed, h, MHD_OPTION_LISTEN_BACKLOG_SIZE,
        (unsigned int)128, MHD_OPTION_THREAD_POOL_SIZE, pool, MHD_OPTION_END);
    if (!h->daemon) {
        log_error("cannot listen on 127.0.0.1:%d: %s", cfg->port,
                  strerror(errno));
        free(h);
        return -1;
    }
    const union MHD_DaemonInfo *di =
        MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
    if (!di || di->port == 0) {
        log_error("cannot learn the bound port");
        MHD_stop_daemon(h->daemon);
        free(h);
        return -1;
    }
    *port = di->port;
    *out = h;
    return 0;
}

void simhttp_stop(sim_http *h)
{
    if (!h)
        return;
    if (h->daemon)
        MHD_stop_daemon(h->daemon);
    free(h);
}
