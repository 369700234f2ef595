/*
 * token - an access token read from a file and compared in constant time
 * (see token.h).
 */
#include "scheduler/front/token.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int token_load(token *t, const char *path, const char *flag, bool force, char *errbuf,
               size_t errlen)
{
    /* Room for the longest token plus "\r\n", and one byte to see that a
     * file is longer than that. */
    char buf[TOKEN_MAX + 3];
    size_t n = 0;
    struct stat st;
    int rv = -1;
    memset(t, 0, sizeof(*t));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(errbuf, errlen, "%s %s: %s", flag, path, strerror(errno));
        return -1;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(errbuf, errlen, "%s %s: not a regular file", flag, path);
        goto out;
    }
    /* As ssh does for private keys: a secret others can read is no secret. */
    if ((st.st_mode & 0077) != 0 && !force) {
        snprintf(errbuf, errlen,
                 "%s %s: permissions %04o are too open: the token must not be accessible "
                 "by group or others (chmod 600 it, or pass --force)",
                 flag, path, (unsigned)(st.st_mode & 07777));
        goto out;
    }
    while (n < sizeof(buf)) {
        ssize_t got = read(fd, buf + n, sizeof(buf) - n);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            snprintf(errbuf, errlen, "%s %s: %s", flag, path, strerror(errno));
            goto out;
        }
        if (got == 0)
            break;
        n += (size_t)got;
    }
    /* The trailing newline an editor or `echo` adds is not part of it. */
    if (n > 0 && buf[n - 1] == '\n')
        n--;
    if (n > 0 && buf[n - 1] == '\r')
        n--;
    if (n == 0) {
        snprintf(errbuf, errlen, "%s %s: the file holds no token", flag, path);
        goto out;
    }
    if (n > TOKEN_MAX) {
        snprintf(errbuf, errlen, "%s %s: the token is longer than %d bytes", flag, path,
                 TOKEN_MAX);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        /* Printable ASCII only: it travels in headers and msgpack strings
         * and is typed into environment variables. */
        if ((unsigned char)buf[i] < 0x21 || (unsigned char)buf[i] > 0x7e) {
            snprintf(errbuf, errlen,
                     "%s %s: the token must be printable ASCII with no spaces or control "
                     "characters (byte %zu is not)",
                     flag, path, i);
            goto out;
        }
    }
    memcpy(t->buf, buf, n);
    t->len = n;
    t->have = true;
    rv = 0;
out:
    explicit_bzero(buf, sizeof(buf));
    close(fd);
    return rv;
}

bool token_equal(const token *t, const char *given, size_t len)
{
    unsigned char g[TOKEN_MAX];
    volatile unsigned diff = 0;
    if (!t->have)
        return false;
    /* Anything longer than TOKEN_MAX or missing is a mismatch, found by the
     * same full-length loop. */
    diff |= (unsigned)(given == NULL) | (unsigned)(len > TOKEN_MAX);
    size_t n = given == NULL ? 0 : len > TOKEN_MAX ? TOKEN_MAX : len;
    memset(g, 0, sizeof(g));
    if (n > 0)
        memcpy(g, given, n);
    diff |= (unsigned)((n ^ t->len) != 0);
    for (size_t i = 0; i < TOKEN_MAX; i++)
        diff |= (unsigned)(g[i] ^ t->buf[i]);
    explicit_bzero(g, sizeof(g));
    return diff == 0;
}

void token_wipe(token *t)
{
    explicit_bzero(t, sizeof(*t));
}
