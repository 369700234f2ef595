/*
 * strbuf - a growable byte buffer with a limit (see buf.h).
 */
#include "scheduler/util/strbuf.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define STRBUF_MIN_CAP 256

void strbuf_init(strbuf *b)
{
    b->data = NULL;
    b->len = b->cap = 0;
}

void strbuf_fini(strbuf *b)
{
    free(b->data);
    strbuf_init(b);
}

void strbuf_clear(strbuf *b)
{
    b->len = 0;
    if (b->data != NULL)
        b->data[0] = '\0';
}

int strbuf_reserve(strbuf *b, size_t need, size_t limit)
{
    if (need > limit)
        return STRBUF_EOVER;
    if (need < b->cap)
        return 0; /* room for the NUL too */
    size_t cap = b->cap ? b->cap : STRBUF_MIN_CAP;
    while (cap <= need)
        cap = cap > SIZE_MAX / 2 ? need + 1 : cap * 2;
    if (cap > limit + 1)
        cap = limit + 1;
    char *d = realloc(b->data, cap);
    if (d == NULL)
        return STRBUF_ENOMEM;
    b->data = d;
    b->cap = cap;
    return 0;
}

int strbuf_append(strbuf *b, const void *p, size_t n, size_t limit)
{
    if (n > limit || b->len > limit - n)
        return STRBUF_EOVER;
    int rc = strbuf_reserve(b, b->len + n, limit);
    if (rc != 0)
        return rc;
    if (n > 0)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

const char *strbuf_str(const strbuf *b)
{
    return b->data != NULL ? b->data : "";
}

char *strbuf_steal(strbuf *b)
{
    char *d = b->data;
    strbuf_init(b);
    return d;
}
