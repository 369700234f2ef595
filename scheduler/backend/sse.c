/*
 * sse - incremental text/event-stream parser (see sse.h for the contract).
 *
 * Design notes: bytes are scanned for the next CR or LF and copied into the
 * line buffer a run at a time, so a 1-byte feed and a 1 MiB feed take the
 * same path. A CR ends a line at once; last_cr remembers it across feeds so
 * the LF of a CRLF split between two feeds is not read as an empty line
 * (which would dispatch early). Both buffers grow geometrically up to
 * max_event (+1 for the NUL) and never beyond: a peer that never sends a
 * line end or a blank line gets SSE_ETOOBIG, not our memory.
 */
#include "scheduler/backend/sse.h"

#include <stdlib.h>
#include <string.h>

/* First allocation of either buffer; most chunk events fit. */
#define SSE_MIN_CAP 256

void sse_init(sse_parser *p, size_t max_event, sse_event_cb cb, void *arg)
{
    memset(p, 0, sizeof(*p));
    p->cb = cb;
    p->arg = arg;
    p->max_event = max_event;
}

void sse_fini(sse_parser *p)
{
    if (p == NULL)
        return;
    free(p->line);
    free(p->data);
    p->line = p->data = NULL;
    p->line_len = p->line_cap = p->data_len = p->data_cap = 0;
    p->event[0] = '\0';
    p->have_data = 0;
    p->last_cr = 0;
}

/* Makes room for need bytes in *bufp (need <= max_event + 1 is checked by
 * the callers). Returns 0 or SSE_ENOMEM. */
static int sse_reserve(char **bufp, size_t *capp, size_t need, size_t limit)
{
    if (need <= *capp)
        return 0;
    size_t cap = *capp ? *capp : SSE_MIN_CAP;
    while (cap < need)
        cap = cap > limit / 2 ? limit : cap * 2;
    if (cap < need)
        cap = need;
    char *b = realloc(*bufp, cap);
    if (b == NULL)
        return SSE_ENOMEM;
    *bufp = b;
    *capp = cap;
    return 0;
}

static void sse_reset_event(sse_parser *p)
{
    p->data_len = 0;
    p->have_data = 0;
    p->event[0] = '\0';
}

/* Blank line: hand the event over if it has data. */
static int sse_dispatch(sse_parser *p)
{
    if (!p->have_data) {
        sse_reset_event(p);
        return 0;
    }
    /* data holds "line\n" per data line; the last "\n" is not part of it. */
    size_t len = p->data_len > 0 ? p->data_len - 1 : 0;
    int rc = sse_reserve(&p->data, &p->data_cap, len + 1, p->max_event + 1);
    if (rc != 0)
        return rc;
    p->data[len] = '\0';
    char event[sizeof(p->event)];
    memcpy(event, p->event, sizeof(event));
    sse_reset_event(p);
    return p->cb(p->arg, event, p->data, len);
}

/* One complete line (without its terminator) in p->line. */
static int sse_line(sse_parser *p)
{
    const char *line = p->line;
    size_t len = p->line_len;
    p->line_len = 0;

    if (len == 0)
        return sse_dispatch(p);
    if (line[0] == ':')
        return 0; /* comment: servers send these as keep-alives */

    const char *colon = memchr(line, ':', len);
    size_t name_len = colon ? (size_t)(colon - line) : len;
    const char *value = colon ? colon + 1 : line + len;
    size_t value_len = len - (size_t)(value - line);
    if (value_len > 0 && value[0] == ' ') {
        value++;
        value_len--;
    }

    if (name_len == 4 && memcmp(line, "data", 4) == 0) {
        /* The joined data (earlier lines, this one) must fit max_event. */
        if (p->data_len + value_len > p->max_event)
            return SSE_ETOOBIG;
        int rc = sse_reserve(&p->data, &p->data_cap, p->data_len + value_len + 1,
                             p->max_event + 1);
        if (rc != 0)
            return rc;
        if (value_len > 0)
            memcpy(p->data + p->data_len, value, value_len);
        p->data_len += value_len;
        p->data[p->data_len++] = '\n';
        p->have_data = 1;
    } else if (name_len == 5 && memcmp(line, "event", 5) == 0) {
        size_t n = value_len < sizeof(p->event) - 1 ? value_len : sizeof(p->event) - 1;
        memcpy(p->event, value, n);
        p->event[n] = '\0';
    }
    /* "id", "retry" and unknown fields mean nothing to a chat stream. */
    return 0;
}

int sse_feed(sse_parser *p, const char *buf, size_t len)
{
    size_t i = 0;
    while (i < len) {
        if (p->last_cr) {
            p->last_cr = 0;
            if (buf[i] == '\n') {
                i++; /* the LF of a CRLF whose line already ended */
                continue;
            }
        }
        size_t j = i;
        while (j < len && buf[j] != '\r' && buf[j] != '\n')
            j++;
        size_t run = j - i;
        if (run > 0) {
            if (p->line_len + run > p->max_event)
                return SSE_ETOOBIG;
            int rc =
                sse_reserve(&p->line, &p->line_cap, p->line_len + run, p->max_event + 1);
            if (rc != 0)
                return rc;
            memcpy(p->line + p->line_len, buf + i, run);
            p->line_len += run;
        }
        if (j == len)
            break; /* the line continues in a later feed */
        p->last_cr = buf[j] == '\r';
        i = j + 1;
        int rc = sse_line(p);
        if (rc != 0)
            return rc;
    }
    return 0;
}
