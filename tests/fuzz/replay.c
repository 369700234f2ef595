/*
 * replay - runs a fuzz target's LLVMFuzzerTestOneInput over saved inputs,
 * without libFuzzer, so the seed corpus and every crash kept in regress/
 * replay in the normal (gcc) test suite and under its sanitizer builds.
 *
 * Usage: replay PATH...  Each PATH is a file or a directory whose regular
 * files (not hidden ones) are run in name order. A missing PATH, an
 * unreadable file, or no input at all fails the run: a typo must not turn
 * the test into a silent pass. A target that finds a bug aborts, which is
 * the failure ctest sees; the name of the input is printed first.
 */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Inputs larger than this are not fuzz inputs (libFuzzer's default
 * -max_len is 4096); refusing them keeps a stray file from eating memory. */
#define RP_MAX_INPUT (16u * 1024 * 1024)

static int rp_run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf = NULL;
    struct stat st;
    size_t n;
    int rc = -1;

    if (f == NULL) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (fstat(fileno(f), &st) != 0 || st.st_size < 0 || st.st_size > RP_MAX_INPUT) {
        fprintf(stderr, "replay: %s: cannot size it, or larger than %u bytes\n", path,
                RP_MAX_INPUT);
        goto fail;
    }
    n = (size_t)st.st_size;
    /* Exactly n bytes, so a sanitizer build sees a read past the input. */
    buf = malloc(n > 0 ? n : 1);
    if (buf == NULL || (n > 0 && fread(buf, 1, n, f) != n)) {
        fprintf(stderr, "replay: %s: read failed\n", path);
        goto fail;
    }
    fprintf(stderr, "replay: %s (%zu bytes)\n", path, n);
    LLVMFuzzerTestOneInput(buf, n);
    rc = 0;
fail:
    free(buf);
    fclose(f);
    return rc;
}

static int rp_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Runs every regular, non-hidden file of dir in name order; adds the count
 * to *count. */
static int rp_run_dir(const char *dir, size_t *count)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char **names = NULL;
    size_t n = 0, cap = 0;
    int rc = -1;

    if (d == NULL) {
        fprintf(stderr, "replay: %s: %s\n", dir, strerror(errno));
        return -1;
    }
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 64;
            char **nn = realloc(names, ncap * sizeof(*nn));
            if (nn == NULL)
                goto oom;
            names = nn;
            cap = ncap;
        }
        size_t len = strlen(dir) + 1 + strlen(e->d_name) + 1;
        names[n] = malloc(len);
        if (names[n] == NULL)
            goto oom;
        snprintf(names[n], len, "%s/%s", dir, e->d_name);
        n++;
    }
    if (n > 0)
        qsort(names, n, sizeof(*names), rp_cmp);
    for (size_t i = 0; i < n; i++) {
        struct stat st;
        if (stat(names[i], &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        if (rp_run_file(names[i]) != 0)
            goto done;
        (*count)++;
    }
    rc = 0;
    goto done;
oom:
    fprintf(stderr, "replay: %s: out of memory\n", dir);
done:
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    closedir(d);
    return rc;
}

int main(int argc, char **argv)
{
    size_t count = 0;

    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE-OR-DIR...\n", argv[0]);
        return 2;
    }
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
            return 1;
        }
        if (S_ISDIR(st.st_mode)) {
            if (rp_run_dir(argv[i], &count) != 0)
                return 1;
        } else {
            if (rp_run_file(argv[i]) != 0)
                return 1;
            count++;
        }
    }
    if (count == 0) {
        fprintf(stderr, "replay: no inputs found\n");
        return 1;
    }
    printf("replay: %zu inputs ran clean\n", count);
    return 0;
}
