/*
 * sse - incremental text/event-stream parser (see sse.h for the contract).
 *
 * Design notes: bytes are scanned for the next CR or LF and copied into the
 * line buffer a run at a time, so a 1-byte feed and a 1 MiB feed take the
 * same path. A CR ends a line at once; last_cr remembers it across feeds so
 * the LF of a CRLF split between two feeds is not read as an empty line
 * (which would dispatch early). Both buffers (util/strbuf) grow up to
 * max_event and never beyond: a peer that never sends a line end or a
 * blank line gets SSE_ETOOBIG, not our memory.
 */
#include "scheduler/backend/sse.h"

#include <stdlib.h>
#include <string.h>

/* A buf error as the parser's. */
static int sse_err(int rc)
{
    return rc == STRBUF_EOVER ? SSE_ETOOBIG : rc == STRBUF_ENOMEM ? SSE_ENOMEM : 0;
}

void sse_init(sse_parser *p, size_t max_event, sse_event_cb cb, void *arg)
{
    memset(p, 0, sizeof(*p));
    strbuf_init(&p->line);
    strbuf_init(&p->data);
    p->cb = cb;
    p->arg = arg;
    p->max_event = max_event;
}

void sse_fini(sse_parser *p)
{
    if (p == NULL)
        return;
    strbuf_fini(&p->line);
    strbuf_fini(&p->data);
    p->event[0] = '\0';
    p->have_data = 0;
    p->last_cr = 0;
}

static void sse_reset_event(sse_parser *p)
{
    strbuf_clear(&p->data);
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
    /* data holds "line\n" per data line; the last "\n" is not part of it
     * (it ends as the NUL: a data line always appended one byte). */
    size_t len = p->data.len > 0 ? p->data.len - 1 : 0;
    p->data.data[len] = '\0';
    char event[sizeof(p->event)];
    memcpy(event, p->event, sizeof(event));
    /* The event ends before the callback (which may feed more), its
     * bytes stay in place until the next data line. */
    char *data = p->data.data;
    p->data.len = 0;
    p->have_data = 0;
    p->event[0] = '\0';
    return p->cb(p->arg, event, data, len);
}

/* One complete line (without its terminator) in p->line. */
static int sse_line(sse_parser *p)
{
    const char *line = strbuf_str(&p->line);
    size_t len = p->line.len;
    p->line.len = 0; /* the bytes stay readable until the next append */

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
        /* The joined data (earlier lines, this one and its "\n") must
         * fit max_event + 1: the last "\n" is not part of the event. */
        int rc = strbuf_append(&p->data, value, value_len, p->max_event);
        if (rc == 0)
            rc = strbuf_append(&p->data, "\n", 1, p->max_event + 1);
        if (rc != 0)
            return sse_err(rc);
        p->have_data = 1;
    } else if (name_len == 5 && memcmp(line, "event", 5) == 0) {
        size_t n = value_len < sizeof(p->event) - 1 ? value_len : sizeof(p->event) - 1;
        memcpy(p->event, value, n);
        p->event[n] = '\0';
    }
    /* "id", "retry" and unknown fields mean nothing to a chat stream. */
    return 0;
}

int sse_feed(sse_parser *p, const char *bytes, size_t len)
{
    size_t i = 0;
    while (i < len) {
        if (p->last_cr) {
            p->last_cr = 0;
            if (bytes[i] == '\n') {
                i++; /* the LF of a CRLF whose line already ended */
                continue;
            }
        }
        size_t j = i;
        while (j < len && bytes[j] != '\r' && bytes[j] != '\n')
            j++;
        size_t run = j - i;
        if (run > 0) {
            int rc = strbuf_append(&p->line, bytes + i, run, p->max_event);
            if (rc != 0)
                return sse_err(rc);
        }
        if (j == len)
            break; /* the line continues in a later feed */
        p->last_cr = bytes[j] == '\r';
        i = j + 1;
        int rc = sse_line(p);
        if (rc != 0)
            return rc;
    }
    return 0;
}
