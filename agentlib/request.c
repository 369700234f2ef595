/*
 * request.c - lmsched_request (a chat request built with typed setters) and
 * lmsched_result (the outcome of one call: a reply or an error).
 *
 * A request holds the lms_chat_req it will be encoded as, so sending one is
 * a single lms_encode with no copying. Setters check what the protocol
 * defines as a range (docs/protocol.md) and reject it with LMSCHED_EINVAL
 * here, where the caller's mistake is easiest to find. Size limits are left
 * to the daemon, whose limits are configurable and whose error reply names
 * the field; only the whole message size is checked before sending.
 */
#include "agentlib/request.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REQ_PRIORITY_MAX 9
#define REQ_TEMPERATURE_MAX 10.0

struct lmsched_request {
    lms_chat_req chat;
    size_t cap_messages;
    size_t cap_stop;
};

struct lmsched_result {
    int err;
    char *message; /* errors only */
    char *content; /* replies only */
    char *finish_reason;
    char *model;
    char *status; /* status documents only (lmsched_status) */
    lms_usage usage;
    lms_timings timings;
    uint32_t retries;
};

/* ---- requests ---------------------------------------------------------- */

int lmsched_request_alloc(lmsched_request **reqp)
{
    lmsched_request *req;
    lms_msg m;

    if (reqp == NULL) {
        return LMSCHED_EINVAL;
    }
    *reqp = NULL;
    if ((req = calloc(1, sizeof(*req))) == NULL) {
        return LMSCHED_ENOMEM;
    }
    /* Take the protocol's defaults (max_tokens -1, priority 5) from the one
     * place that defines them. */
    lms_msg_init(&m, LMS_KIND_CHAT);
    req->chat = m.u.chat;
    *reqp = req;
    return LMSCHED_OK;
}

void lmsched_request_free(lmsched_request *req)
{
    lms_msg m;

    if (req == NULL) {
        return;
    }
    lms_msg_init(&m, LMS_KIND_CHAT);
    m.u.chat = req->chat;
    lms_msg_fini(&m);
    free(req);
}

const lms_chat_req *lma_request_chat(const lmsched_request *req)
{
    return &req->chat;
}

/* Replaces *slot with a copy of text. */
static int req_set_string(char **slot, const char *text)
{
    char *copy;

    if (text == NULL) {
        return LMSCHED_EINVAL;
    }
    if ((copy = strdup(text)) == NULL) {
        return LMSCHED_ENOMEM;
    }
    free(*slot);
    *slot = copy;
    return LMSCHED_OK;
}

/* Makes room for one more element in an array of size elements of cap;
 * doubles so that appending n elements costs O(n). */
static int req_grow(void **arr, size_t *cap, size_t n, size_t elem)
{
    size_t ncap;
    void *p;

    if (n < *cap) {
        return LMSCHED_OK;
    }
    ncap = *cap == 0 ? 4 : *cap * 2;
    if (ncap < *cap || ncap > SIZE_MAX / elem) {
        return LMSCHED_ENOMEM;
    }
    if ((p = realloc(*arr, ncap * elem)) == NULL) {
        return LMSCHED_ENOMEM;
    }
    *arr = p;
    *cap = ncap;
    return LMSCHED_OK;
}

int lmsched_request_set_system(lmsched_request *req, const char *text)
{
    if (req == NULL) {
        return LMSCHED_EINVAL;
    }
    return req_set_string(&req->chat.system, text);
}

int lmsched_request_add_message(lmsched_request *req, const char *role,
                                const char *content)
{
    lms_chat_msg msg = {0};
    void *arr;
    int rc;

    if (req == NULL || role == NULL || content == NULL) {
        return LMSCHED_EINVAL;
    }
    arr = req->chat.messages;
    rc = req_grow(&arr, &req->cap_messages, req->chat.n_messages, sizeof(lms_chat_msg));
    req->chat.messages = arr;
    if (rc != LMSCHED_OK) {
        return rc;
    }
    if ((msg.role = strdup(role)) == NULL || (msg.content = strdup(content)) == NULL) {
        rc = LMSCHED_ENOMEM;
        goto fail;
    }
    req->chat.messages[req->chat.n_messages++] = msg;
    return LMSCHED_OK;

fail:
    free(msg.role);
    free(msg.content);
    return rc;
}

int lmsched_request_set_model(lmsched_request *req, const char *model)
{
    if (req == NULL) {
        return LMSCHED_EINVAL;
    }
    return req_set_string(&req->chat.model, model);
}

int lmsched_request_set_max_tokens(lmsched_request *req, int32_t n)
{
    if (req == NULL || n < 1 || n > LMSCHED_MAX_TOKENS_MAX) {
        return LMSCHED_EINVAL;
    }
    req->chat.max_tokens = n;
    return LMSCHED_OK;
}

int lmsched_request_set_temperature(lmsched_request *req, double t)
{
    /* Written this way round so NaN fails the test too. */
    if (req == NULL || !(t >= 0.0 && t <= REQ_TEMPERATURE_MAX)) {
        return LMSCHED_EINVAL;
    }
    req->chat.has_temperature = true;
    req->chat.temperature = t;
    return LMSCHED_OK;
}

int lmsched_request_set_top_p(lmsched_request *req, double p)
{
    if (req == NULL || !(p >= 0.0 && p <= 1.0)) {
        return LMSCHED_EINVAL;
    }
    req->chat.has_top_p = true;
    req->chat.top_p = p;
    return LMSCHED_OK;
}

int lmsched_request_add_stop(lmsched_request *req, const char *stop)
{
    char *copy;
    void *arr;
    int rc;

    if (req == NULL || stop == NULL) {
        return LMSCHED_EINVAL;
    }
    arr = req->chat.stop;
    rc = req_grow(&arr, &req->cap_stop, req->chat.n_stop, sizeof(char *));
    req->chat.stop = arr;
    if (rc != LMSCHED_OK) {
        return rc;
    }
    if ((copy = strdup(stop)) == NULL) {
        return LMSCHED_ENOMEM;
    }
    req->chat.stop[req->chat.n_stop++] = copy;
    return LMSCHED_OK;
}

int lmsched_request_set_seed(lmsched_request *req, int64_t seed)
{
    if (req == NULL) {
        return LMSCHED_EINVAL;
    }
    req->chat.has_seed = true;
    req->chat.seed = seed;
    return LMSCHED_OK;
}

int lmsched_request_set_priority(lmsched_request *req, int priority)
{
    if (req == NULL || priority < 0 || priority > REQ_PRIORITY_MAX) {
        return LMSCHED_EINVAL;
    }
    req->chat.priority = (uint8_t)priority;
    return LMSCHED_OK;
}

int lmsched_request_set_deadline_ms(lmsched_request *req, uint32_t ms)
{
    if (req == NULL) {
        return LMSCHED_EINVAL;
    }
    req->chat.deadline_ms = ms;
    return LMSCHED_OK;
}

int lmsched_request_set_agent(lmsched_request *req, const char *name)
{
    if (req == NULL) {
        return LMSCHED_EINVAL;
    }
    return req_set_string(&req->chat.agent, name);
}

int lmsched_request_set_client_id(lmsched_request *req, const char *id)
{
    if (req == NULL) {
        return LMSCHED_EINVAL;
    }
    return req_set_string(&req->chat.client_id, id);
}

/* ---- results ----------------------------------------------------------- */

static lmsched_result *res_alloc(int err)
{
    lmsched_result *res = calloc(1, sizeof(*res));

    if (res == NULL) {
        return NULL;
    }
    res->err = err;
    res->usage.prompt_tokens = -1;
    res->usage.completion_tokens = -1;
    res->usage.cached_tokens = -1;
    return res;
}

lmsched_result *lma_result_error(int err, const char *fmt, ...)
{
    lmsched_result *res;
    va_list ap;
    int n;

    if ((res = res_alloc(err)) == NULL) {
        return NULL;
    }
    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || (res->message = malloc((size_t)n + 1)) == NULL) {
        goto fail;
    }
    va_start(ap, fmt);
    vsnprintf(res->message, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return res;

fail:
    free(res);
    return NULL;
}

lmsched_result *lma_result_reply(lms_chat_reply *reply)
{
    lmsched_result *res;

    if ((res = res_alloc(LMSCHED_OK)) == NULL) {
        return NULL;
    }
    res->content = reply->content;
    res->finish_reason = reply->finish_reason;
    res->model = reply->model;
    reply->content = NULL;
    reply->finish_reason = NULL;
    reply->model = NULL;
    res->usage = reply->usage;
    res->timings = reply->timings;
    res->retries = reply->retries;
    return res;
}

lmsched_result *lma_result_status(char **json)
{
    lmsched_result *res;

    if ((res = res_alloc(LMSCHED_OK)) == NULL) {
        return NULL;
    }
    res->status = *json;
    *json = NULL;
    return res;
}

char *lma_result_take_status(lmsched_result *res)
{
    char *s = res->status;

    res->status = NULL;
    return s;
}

void lmsched_result_free(lmsched_result *res)
{
    if (res == NULL) {
        return;
    }
    free(res->message);
    free(res->content);
    free(res->finish_reason);
    free(res->model);
    free(res->status);
    free(res);
}

/* The accessors accept NULL (a call that returned no result) and answer as
 * for an empty result, so a caller's error path need not test for it. */

int lmsched_result_error(const lmsched_result *res)
{
    return res != NULL ? res->err : LMSCHED_EINVAL;
}

const char *lmsched_result_message(const lmsched_result *res)
{
    return res != NULL ? res->message : NULL;
}

const char *lmsched_result_content(const lmsched_result *res)
{
    return res != NULL ? res->content : NULL;
}

const char *lmsched_result_finish_reason(const lmsched_result *res)
{
    return res != NULL ? res->finish_reason : NULL;
}

const char *lmsched_result_model(const lmsched_result *res)
{
    return res != NULL ? res->model : NULL;
}

int64_t lmsched_result_prompt_tokens(const lmsched_result *res)
{
    return res != NULL ? res->usage.prompt_tokens : -1;
}

int64_t lmsched_result_completion_tokens(const lmsched_result *res)
{
    return res != NULL ? res->usage.completion_tokens : -1;
}

int64_t lmsched_result_cached_tokens(const lmsched_result *res)
{
    return res != NULL ? res->usage.cached_tokens : -1;
}

double lmsched_result_queue_ms(const lmsched_result *res)
{
    return res != NULL ? res->timings.queue_ms : 0.0;
}

double lmsched_result_ttft_ms(const lmsched_result *res)
{
    return res != NULL ? res->timings.ttft_ms : 0.0;
}

double lmsched_result_total_ms(const lmsched_result *res)
{
    return res != NULL ? res->timings.total_ms : 0.0;
}

uint32_t lmsched_result_retries(const lmsched_result *res)
{
    return res != NULL ? res->retries : 0;
}
