/*
 * fharness - helpers of the fault tests (see fharness.h).
 */
#include "faults/fharness.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

/* ---- tally ----------------------------------------------------------------- */

void fh_tally_init(fh_tally *t)
{
    memset(t, 0, sizeof(*t));
    pthread_mutex_init(&t->mtx, NULL);
    pthread_cond_init(&t->cv, NULL);
}

void fh_tally_fini(fh_tally *t)
{
    pthread_mutex_destroy(&t->mtx);
    pthread_cond_destroy(&t->cv);
}

void fh_tally_cb(lmsched_result *res, void *arg)
{
    fh_tally *t = arg;
    int code = lmsched_result_error(res);
    pthread_mutex_lock(&t->mtx);
    if (code >= 0 && code < FH_CODES) {
        t->by_code[code]++;
        if (code != LMSCHED_OK && t->sample[code][0] == '\0' &&
            lmsched_result_message(res))
            snprintf(t->sample[code], sizeof(t->sample[code]), "%s",
                     lmsched_result_message(res));
    }
    if (code == LMSCHED_OK) {
        uint32_t r = lmsched_result_retries(res);
        t->retries += r;
        if (r > t->max_retries)
            t->max_retries = r;
    }
    t->done++;
    t->last_ms = fh_now_ms();
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mtx);
    lmsched_result_free(res);
}

int fh_tally_done(fh_tally *t)
{
    pthread_mutex_lock(&t->mtx);
    int n = t->done;
    pthread_mutex_unlock(&t->mtx);
    return n;
}

int fh_tally_wait(fh_tally *t, int n, int timeout_ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&t->mtx);
    while (t->done < n)
        if (pthread_cond_timedwait(&t->cv, &t->mtx, &ts) != 0)
            break;
    int d = t->done;
    pthread_mutex_unlock(&t->mtx);
    return d;
}

/* ---- time and /proc ------------------------------------------------------- */

int64_t fh_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void fh_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static long fh_status_kb(pid_t pid, const char *key)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    long kb = -1;
    size_t klen = strlen(key);
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
            kb = strtol(line + klen + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kb;
}

long fh_rss_kb(pid_t pid)
{
    return fh_status_kb(pid, "VmRSS");
}

long fh_hwm_kb(pid_t pid)
{
    return fh_status_kb(pid, "VmHWM");
}

int fh_fd_count(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    if (d == NULL)
        return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (de->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

bool fh_alive(pid_t pid)
{
    if (pid <= 0)
        return false;
    if (waitpid(pid, NULL, WNOHANG) == pid)
        return false;
    return kill(pid, 0) == 0;
}

/* ---- requests and polling ------------------------------------------------- */

lmsched_request *fh_req(const char *system, const char *user, int max_tokens)
{
    lmsched_request *r = NULL;
    assert_int_equal(lmsched_request_alloc(&r), LMSCHED_OK);
    assert_int_equal(lmsched_request_set_system(r, system), LMSCHED_OK);
    assert_int_equal(lmsched_request_add_message(r, "user", user), LMSCHED_OK);
    if (max_tokens > 0)
        assert_int_equal(lmsched_request_set_max_tokens(r, max_tokens), LMSCHED_OK);
    return r;
}

static int64_t fh_wait_doc(h_env *e, bool sim, const char *path, int64_t min, int64_t max,
                           int timeout_ms)
{
    int64_t v = INT64_MIN;
    int64_t until = fh_now_ms() + timeout_ms;
    for (;;) {
        json_t *doc = sim ? h_sim_get(e, "/sim/stats") : h_status(e);
        if (doc) {
            v = h_json_int(doc, path);
            json_decref(doc);
            if (v != INT64_MIN && v >= min && v <= max)
                return v;
        }
        if (fh_now_ms() >= until)
            return v;
        fh_sleep_ms(5);
    }
}

int64_t fh_sim_wait(h_env *e, const char *path, int64_t min, int64_t max, int timeout_ms)
{
    return fh_wait_doc(e, true, path, min, max, timeout_ms);
}

int64_t fh_status_wait(h_env *e, const char *path, int64_t min, int64_t max,
                       int timeout_ms)
{
    return fh_wait_doc(e, false, path, min, max, timeout_ms);
}

void fh_start(h_env *e, const char *const *sim_args, const char *const *daemon_args)
{
    if (sim_args && h_sim_start(e, 0, sim_args) != 0) {
        h_dump_logs(e);
        fail_msg("lmsim did not start");
    }
    if (h_daemon_start(e, daemon_args) != 0) {
        h_dump_logs(e);
        fail_msg("lmsched serve did not start");
    }
}

int fh_sim_restart(h_env *e, int port, const char *const *args)
{
    /* The port was just in use; a few tries cover a slow socket release. */
    for (int i = 0; i < 20; i++) {
        if (h_sim_start(e, port, args) == 0)
            return 0;
        fh_sleep_ms(100);
    }
    return -1;
}

/* ---- agent processes -------------------------------------------------------- */

pid_t fh_agent_spawn(h_env *e, int n, int max_tokens)
{
    char self[512], log[600], num[16], tok[16];
    ssize_t len = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (len <= 0)
        return -1;
    self[len] = '\0';
    snprintf(log, sizeof(log), "%s/agent.log", e->dir);
    snprintf(num, sizeof(num), "%d", n);
    snprintf(tok, sizeof(tok), "%d", max_tokens);
    pid_t pid = fork();
    if (pid == 0) {
        /* Only async-signal-safe calls until exec: the parent has threads. */
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        char *const argv[] = {self, "--fh-agent", e->url, num, tok, NULL};
        execv(self, argv);
        _exit(127);
    }
    return pid;
}

int fh_agent_main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--fh-agent") != 0)
        return -1;
    if (argc != 5)
        return 2;
    const char *url = argv[2];
    int n = atoi(argv[3]);
    int max_tokens = atoi(argv[4]);
    lmsched_client *c = NULL;
    if (lmsched_client_open(&c, url) != LMSCHED_OK)
        return 1;
    fh_tally t;
    fh_tally_init(&t);
    int started = 0;
    for (int i = 0; i < n; i++) {
        char user[64];
        snprintf(user, sizeof(user), "question %d", i);
        lmsched_request *r = NULL;
        if (lmsched_request_alloc(&r) != LMSCHED_OK)
            break;
        /* Distinct prompts: no prefix is shared, so the policy runs them
         * side by side instead of holding followers for a leader. */
        char sys[96];
        snprintf(sys, sizeof(sys),
                 "You are agent %d, conversation %d; you will be killed.", (int)getpid(),
                 i);
        lmsched_request_set_system(r, sys);
        lmsched_request_add_message(r, "user", user);
        if (max_tokens > 0)
            lmsched_request_set_max_tokens(r, max_tokens);
        if (lmsched_chat_async(c, r, 120000, fh_tally_cb, &t) == LMSCHED_OK)
            started++;
        lmsched_request_free(r);
    }
    printf("agent %d: %d requests sent\n", (int)getpid(), started);
    fflush(stdout);
    int done = fh_tally_wait(&t, started, 60000);
    printf("agent %d: %d replies\n", (int)getpid(), done);
    lmsched_client_close(c);
    fh_tally_fini(&t);
    return started == n ? 0 : 1;
}
