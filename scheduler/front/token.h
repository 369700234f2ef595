/*
 * token - an access token of the daemon's front doors: read once from a
 * file with the rules of docs/security.md (a regular file, not accessible
 * by group or others unless forced, printable ASCII without spaces, 1 to
 * TOKEN_MAX bytes, one trailing newline dropped), and compared with what a
 * client sent in constant time.
 *
 * Threads: token_load before the token is shared; token_equal from any
 * thread (it only reads).
 */
#ifndef LMSCHED_FRONT_TOKEN_H
#define LMSCHED_FRONT_TOKEN_H

#include <stdbool.h>
#include <stddef.h>

/* Longest token accepted (the wire protocol's name limit). */
#define TOKEN_MAX 256

typedef struct token {
    bool have;
    size_t len;
    unsigned char buf[TOKEN_MAX]; /* zero-padded */
} token;

/* Reads the token from path into t. flag names the option in messages
 * ("--http-token-file"). Returns 0, or -1 with errbuf saying why in the
 * user's terms (t is then empty). */
int token_load(token *t, const char *path, const char *flag, bool force, char *errbuf,
               size_t errlen);

/* Whether given[0..len) is the token. It takes the same time whatever the
 * two hold, their lengths included: the comparison runs over TOKEN_MAX
 * bytes with no early exit. False when t has no token. */
bool token_equal(const token *t, const char *given, size_t len);

/* Wipes t. */
void token_wipe(token *t);

#endif /* LMSCHED_FRONT_TOKEN_H */
