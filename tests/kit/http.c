/*
 * http - HTTP over libcurl (see http.h).
 */
#include "kit/http.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

/* Header lines kept per response; more are dropped. */
#define KIT_HTTP_MAX_HEADERS (64u << 10)

size_t kit_http_body_cb(char *data, size_t size, size_t n, void *resp)
{
    kit_http_resp *r = resp;
    size_t add = size * n;
    if (r->len + add > KIT_HTTP_MAX_BODY) {
        r->toobig = true;
        return 0; /* curl fails the transfer */
    }
    if (r->len + add + 1 > r->cap) {
        size_t cap = r->cap ? r->cap : 4096;
        while (cap < r->len + add + 1)
            cap *= 2;
        char *p = realloc(r->body, cap);
        if (p == NULL)
            return 0;
        r->body = p;
        r->cap = cap;
    }
    memcpy(r->body + r->len, data, add);
    r->len += add;
    r->body[r->len] = '\0';
    return add;
}

static size_t kit_http_header_cb(char *data, size_t size, size_t n, void *resp)
{
    kit_http_resp *r = resp;
    size_t add = size * n;
    if (r->hlen + add > KIT_HTTP_MAX_HEADERS)
        return add;
    char *p = realloc(r->headers, r->hlen + add + 1);
    if (p == NULL)
        return add;
    r->headers = p;
    memcpy(r->headers + r->hlen, data, add);
    r->hlen += add;
    r->headers[r->hlen] = '\0';
    return add;
}

void kit_http_resp_fini(kit_http_resp *r)
{
    free(r->body);
    free(r->headers);
    json_decref(r->json);
    memset(r, 0, sizeof(*r));
}

int kit_http(const char *method, const char *url, const char *body, long timeout_ms,
             kit_http_resp *r)
{
    return kit_http_with(method, url, NULL, body, timeout_ms, r);
}

int kit_http_with(const char *method, const char *url, const char *const *headers,
                  const char *body, long timeout_ms, kit_http_resp *r)
{
    struct curl_slist *hdrs = NULL;
    bool ctype = false;
    memset(r, 0, sizeof(*r));
    r->cc = CURLE_FAILED_INIT;
    CURL *h = curl_easy_init();
    if (h == NULL)
        return -1;
    if (method == NULL)
        method = body != NULL ? "POST" : "GET";
    for (size_t i = 0; headers != NULL && headers[i] != NULL; i++) {
        hdrs = curl_slist_append(hdrs, headers[i]);
        ctype |= strncasecmp(headers[i], "Content-Type:", 13) == 0;
    }
    if (body != NULL && *body != '\0' && !ctype)
        hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    if (strcmp(method, "HEAD") == 0)
        curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    if (hdrs != NULL)
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    if (body != NULL)
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, kit_http_body_cb);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, kit_http_header_cb);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    /* Loopback servers only: no proxy from the environment. */
    curl_easy_setopt(h, CURLOPT_PROXY, "");
    r->cc = (int)curl_easy_perform(h);
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r->status);
    char *ct = NULL;
    if (curl_easy_getinfo(h, CURLINFO_CONTENT_TYPE, &ct) == CURLE_OK && ct != NULL)
        snprintf(r->ctype, sizeof(r->ctype), "%s", ct);
    if (r->body != NULL)
        r->json = json_loadb(r->body, r->len, 0, NULL);
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(h);
    return r->cc == CURLE_OK ? 0 : -1;
}

long kit_http_header_long(const kit_http_resp *r, const char *name, long dflt)
{
    size_t n = strlen(name);
    for (const char *p = r->headers; p != NULL && *p != '\0';) {
        if (strncasecmp(p, name, n) == 0 && p[n] == ':')
            return strtol(p + n + 1, NULL, 10);
        p = strchr(p, '\n');
        if (p != NULL)
            p++;
    }
    return dflt;
}

json_t *kit_http_json(const char *method, const char *url, const char *body,
                      long timeout_ms, long *statusp, char *err, size_t errlen)
{
    kit_http_resp r;
    json_t *doc = NULL;
    char why[512] = "";
    if (kit_http(method, url, body, timeout_ms, &r) != 0) {
        snprintf(why, sizeof(why), "%s: %s", url,
                 r.toobig ? "answer too long" : curl_easy_strerror((CURLcode)r.cc));
    } else if (r.status < 200 || r.status > 299) {
        snprintf(why, sizeof(why), "%s: HTTP %ld%s%.200s", url, r.status,
                 r.body != NULL ? ": " : "", r.body != NULL ? r.body : "");
    } else if (r.json != NULL) {
        doc = json_incref(r.json);
    } else if (r.len == 0 && body != NULL) {
        doc = json_object();
    } else {
        snprintf(why, sizeof(why), "%s: the answer is not JSON", url);
    }
    if (statusp != NULL)
        *statusp = r.status;
    if (doc == NULL && err != NULL)
        snprintf(err, errlen, "%s", why);
    kit_http_resp_fini(&r);
    return doc;
}
