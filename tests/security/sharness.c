/*
 * sharness - child processes, files and tallies for the security tests
 * (see sharness.h).
 */
#include "security/sharness.h"

#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

static const char *sh_bin_dir(void)
{
    const char *d = getenv("LMSCHED_BIN_DIR");
    return d && *d ? d : "build/bin";
}

static void sh_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int sh_run_lmsched(const char *const *argv, const char *out_path, int timeout_ms)
{
    char bin[512];
    const char *args[64];
    int n = 0;

    snprintf(bin, sizeof(bin), "%s/lmsched", sh_bin_dir());
    args[n++] = bin;
    for (int i = 0; argv[i] != NULL && n < 63; i++)
        args[n++] = argv[i];
    args[n] = NULL;

    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execv(bin, (char *const *)args);
        fprintf(stderr, "exec %s: %s\n", bin, strerror(errno));
        _exit(127);
    }
    for (int waited = 0; waited <= timeout_ms; waited += 10) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        sh_sleep_ms(10);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

int sh_serve_refused(h_env *e, const char *const *args, char **outp)
{
    char out[600];
    const char *argv[64];
    int n = 0;

    snprintf(out, sizeof(out), "%s/refused.out", e->dir);
    argv[n++] = "serve";
    argv[n++] = "--listen";
    argv[n++] = e->url;
    argv[n++] = "--backend";
    /* Port 9 (discard) is closed on a test machine: the probe fails fast. */
    argv[n++] = e->backend[0] ? e->backend : "http://127.0.0.1:9";
    for (int i = 0; args != NULL && args[i] != NULL && n < 63; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    int rc = sh_run_lmsched(argv, out, 20000);
    *outp = sh_read_file(out);
    if (*outp == NULL)
        *outp = strdup("");
    return rc;
}

char *sh_read_file(const char *path)
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

bool sh_file_contains(const char *path, const char *needle)
{
    char *text = sh_read_file(path);
    bool found = text != NULL && strstr(text, needle) != NULL;
    free(text);
    return found;
}

int sh_count_lines(const char *path, const char *needle)
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

void sh_write_file(h_env *e, const char *name, const char *content, unsigned mode,
                   char *path, size_t len)
{
    snprintf(path, len, "%s/%s", e->dir, name);
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    size_t n = strlen(content);
    assert_int_equal(write(fd, content, n), (ssize_t)n);
    /* fchmod, not the open mode: the umask would cut it. */
    assert_int_equal(fchmod(fd, (mode_t)mode), 0);
    close(fd);
}

lmsched_request *sh_req(const char *user, int max_tokens)
{
    lmsched_request *r = NULL;
    assert_int_equal(lmsched_request_alloc(&r), LMSCHED_OK);
    assert_int_equal(lmsched_request_set_system(r, "You are a test."), LMSCHED_OK);
    assert_int_equal(lmsched_request_add_message(r, "user", user), LMSCHED_OK);
    if (max_tokens > 0)
        assert_int_equal(lmsched_request_set_max_tokens(r, max_tokens), LMSCHED_OK);
    return r;
}

void sh_tally_init(sh_tally *t)
{
    memset(t, 0, sizeof(*t));
    pthread_mutex_init(&t->mtx, NULL);
    pthread_cond_init(&t->cv, NULL);
}

void sh_tally_fini(sh_tally *t)
{
    pthread_cond_destroy(&t->cv);
    pthread_mutex_destroy(&t->mtx);
}

void sh_tally_cb(lmsched_result *res, void *arg)
{
    sh_tally *t = arg;
    int code = lmsched_result_error(res);

    pthread_mutex_lock(&t->mtx);
    if (code >= 0 && code < SH_CODES)
        t->by_code[code]++;
    if (code == LMSCHED_EBUSY && t->busy_msg[0] == '\0')
        snprintf(t->busy_msg, sizeof(t->busy_msg), "%s", lmsched_result_message(res));
    t->done++;
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mtx);
    lmsched_result_free(res);
}

int sh_tally_wait(sh_tally *t, int n, int timeout_ms)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&t->mtx);
    while (t->done < n)
        if (pthread_cond_timedwait(&t->cv, &t->mtx, &until) == ETIMEDOUT)
            break;
    int done = t->done;
    pthread_mutex_unlock(&t->mtx);
    return done;
}
