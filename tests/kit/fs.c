/*
 * fs - files for tests (see fs.h).
 */
/* nftw is an X/Open interface. */
#define _XOPEN_SOURCE 700
#include "kit/fs.h"

#include <fcntl.h>
#include <ftw.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

char *kit_fs_read(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t n = 0, cap = 0;
    if (f == NULL)
        return NULL;
    for (;;) {
        if (cap - n < 4096) {
            char *nb = realloc(buf, cap + 65536);
            if (nb == NULL) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
            cap += 65536;
        }
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0)
            break;
    }
    fclose(f);
    buf[n] = '\0';
    return buf;
}

bool kit_fs_contains(const char *path, const char *needle)
{
    char *text = kit_fs_read(path);
    bool found = text != NULL && strstr(text, needle) != NULL;
    free(text);
    return found;
}

int kit_fs_count_lines(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    char line[4096];
    int n = 0;
    if (f == NULL)
        return -1;
    while (fgets(line, sizeof(line), f) != NULL)
        if (strstr(line, needle) != NULL)
            n++;
    fclose(f);
    return n;
}

int kit_fs_write(const char *path, const char *content, unsigned mode)
{
    size_t n = strlen(content);
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        return -1;
    int rc =
        write(fd, content, n) == (ssize_t)n && fchmod(fd, (mode_t)mode) == 0 ? 0 : -1;
    if (close(fd) != 0)
        rc = -1;
    return rc;
}

int kit_fs_read_long(const char *path, long *out)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    int ok = fscanf(f, "%ld", out);
    fclose(f);
    return ok == 1 ? 0 : -1;
}

void kit_fs_tail(const char *path, int lines, FILE *out)
{
    enum { MAX_LINES = 1000 };
    long pos[MAX_LINES];
    char line[1024];
    int n = 0;
    long at;
    if (lines > MAX_LINES)
        lines = MAX_LINES;
    if (lines <= 0)
        return;
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return;
    /* pos[i % lines]: where line i starts */
    for (at = ftell(f); fgets(line, sizeof(line), f) != NULL; at = ftell(f))
        pos[n++ % lines] = at;
    fprintf(out, "---- %s (last lines) ----\n", path);
    fseek(f, n > lines ? pos[n % lines] : 0, SEEK_SET);
    while (fgets(line, sizeof(line), f) != NULL)
        fputs(line, out);
    fclose(f);
}

static int kit_fs_rm_one(const char *path, const struct stat *st, int type,
                         struct FTW *ftw)
{
    (void)st;
    (void)type;
    (void)ftw;
    return remove(path) == 0 ? 0 : -1;
}

int kit_fs_rm_tree(const char *dir)
{
    return nftw(dir, kit_fs_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}
