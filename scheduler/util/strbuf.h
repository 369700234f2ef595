/*
 * strbuf - a growable byte buffer with a limit: what the SSE parser, the HTTP
 * client, the response parser, the CLI and lmsim each used to grow by hand.
 * The bytes are always followed by a NUL once anything was appended, so a
 * buffer of text can be read as a C string (data is NULL while empty).
 */
#ifndef LMSCHED_UTIL_STRBUF_H
#define LMSCHED_UTIL_STRBUF_H

#include <stddef.h>

typedef struct strbuf {
    char *data; /* NULL until the first byte; NUL-terminated after */
    size_t len;
    size_t cap;
} strbuf;

#define STRBUF_EOVER (-1)  /* the limit would be passed */
#define STRBUF_ENOMEM (-2) /* realloc failed */

void strbuf_init(strbuf *b);
/* Frees the bytes; b is empty again. */
void strbuf_fini(strbuf *b);
/* Empties b, keeping its memory. */
void strbuf_clear(strbuf *b);
/* Room for need bytes plus the NUL, growing by doubling but never past
 * limit + 1 bytes. Returns 0, STRBUF_EOVER (need > limit) or STRBUF_ENOMEM. */
int strbuf_reserve(strbuf *b, size_t need, size_t limit);
/* Appends n bytes, the whole buffer staying within limit bytes. Returns 0,
 * STRBUF_EOVER (nothing appended) or STRBUF_ENOMEM. */
int strbuf_append(strbuf *b, const void *p, size_t n, size_t limit);
/* The bytes as a string, "" while empty; valid until b changes. */
const char *strbuf_str(const strbuf *b);
/* Hands the bytes over (malloc'd, NUL-terminated; NULL while empty) and
 * empties b. */
char *strbuf_steal(strbuf *b);

#endif /* LMSCHED_UTIL_STRBUF_H */
