/*
 * sse - an incremental parser for text/event-stream (Server-Sent Events), the
 * framing of streamed chat completions. Bytes arrive in arbitrary pieces
 * from curl's write callback; complete events are handed to a callback.
 * Follows the WHATWG rules that matter here: lines end in CRLF, LF or CR;
 * "data:" lines of one event are joined with "\n"; a blank line dispatches;
 * lines starting with ':' are comments; one leading space after the colon is
 * dropped; an event without data is not dispatched; a partial event at end of
 * stream is discarded.
 */
#ifndef LMSCHED_SSE_H
#define LMSCHED_SSE_H

#include <stddef.h>

#include "scheduler/util/strbuf.h"

/* Called once per complete event. event is the "event:" field or "" (never
 * NULL); data is NUL-terminated, len bytes. Both are valid only during the
 * call. Return 0 to continue, non-zero to stop parsing (sse_feed then
 * returns that value). */
typedef int (*sse_event_cb)(void *arg, const char *event, const char *data, size_t len);

typedef struct sse_parser {
    sse_event_cb cb;
    void *arg;
    size_t max_event;   /* most bytes of data one event may hold */
    strbuf line;          /* the line being read (not yet terminated) */
    strbuf data;          /* data of the event being assembled */
    char event[64];     /* "event:" field, truncated */
    int have_data;      /* a data line was seen for this event */
    int last_cr;        /* previous byte was CR (so a following LF is skipped) */
} sse_parser;

/* Initialise caller storage. max_event bounds both a line and an event. */
void sse_init(sse_parser *p, size_t max_event, sse_event_cb cb, void *arg);
void sse_fini(sse_parser *p);

/* Feeds len bytes. Returns 0; SSE_ETOOBIG if a line or an event exceeds
 * max_event (the parser is then unusable); SSE_ENOMEM; or the callback's
 * non-zero return. */
#define SSE_ETOOBIG (-1)
#define SSE_ENOMEM (-2)
int sse_feed(sse_parser *p, const char *bytes, size_t len);

#endif /* LMSCHED_SSE_H */
