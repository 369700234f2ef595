/*
 * harness - real processes for integration tests (see harness.h).
 */
#include "integration/harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "lmsched/agent.h"

static const char *h_bin_dir(void)
{
    const char *d = getenv("LMSCHED_BIN_DIR");
    return d && *d ? d : "build/bin";
}

static void h_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

void h_env_init(h_env *e)
{
    memset(e, 0, sizeof(*e));
    snprintf(e->dir, sizeof(e->dir), "/tmp/lmsched-test-XXXXXX");
    if (mkdtemp(e->dir) == NULL) {
        perror("mkdtemp");
        abort();
    }
    snprintf(e->url, sizeof(e->url), "ipc://%s/lmsched.sock", e->dir);
    signal(SIGPIPE, SIG_IGN);
}

static void h_rm_dir(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "harness: could not remove %s\n", dir);
}

void h_env_fini(h_env *e)
{
    if (e->daemon.pid > 0)
        h_proc_stop(&e->daemon, SIGKILL, 5000);
    if (e->sim.pid > 0)
        h_proc_stop(&e->sim, SIGKILL, 5000);
    if (e->dir[0])
        h_rm_dir(e->dir);
    e->dir[0] = '\0';
}

int h_setup(void **state)
{
    h_env *e = calloc(1, sizeof(*e));
    if (e == NULL)
        return -1;
    h_env_init(e);
    *state = e;
    return 0;
}

int h_teardown(void **state)
{
    h_env *e = *state;
    h_env_fini(e);
    free(e);
    return 0;
}

static pid_t h_spawn(const char *const *argv, const char *log)
{
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execv(argv[0], (char *const *)argv);
        fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    return pid;
}

int h_proc_stop(h_proc *p, int sig, int timeout_ms)
{
    if (p->pid <= 0)
        return -1;
    kill(p->pid, sig);
    for (int waited = 0; waited <= timeout_ms; waited += 10) {
        int st;
        pid_t r = waitpid(p->pid, &st, WNOHANG);
        if (r == p->pid) {
            p->pid = 0;
            if (WIFEXITED(st))
                return WEXITSTATUS(st);
            return 128 + WTERMSIG(st);
        }
        h_sleep_ms(10);
    }
    kill(p->pid, SIGKILL);
    waitpid(p->pid, NULL, 0);
    p->pid = 0;
    return -1;
}

int h_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    int port = ntohs(a.sin_port);
    close(fd);
    return port;
}

int h_sim_start(h_env *e, int port, const char *const *args)
{
    char bin[512], portfile[600], portarg[16];
    snprintf(bin, sizeof(bin), "%s/lmsim", h_bin_dir());
    snprintf(portfile, sizeof(portfile), "%s/sim.port", e->dir);
    snprintf(portarg, sizeof(portarg), "%d", port);
    snprintf(e->sim.log, sizeof(e->sim.log), "%s/lmsim.log", e->dir);
    unlink(portfile);
    const char *argv[64];
    int n = 0;
    argv[n++] = bin;
    argv[n++] = "--port";
    argv[n++] = portarg;
    argv[n++] = "--port-file";
    argv[n++] = portfile;
    for (int i = 0; args && args[i] && n < 62; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    e->sim.pid = h_spawn(argv, e->sim.log);
    for (int waited = 0; waited < 10000; waited += 20) {
        FILE *f = fopen(portfile, "r");
        if (f) {
            int p = 0;
            int ok = fscanf(f, "%d", &p);
            fclose(f);
            if (ok == 1 && p > 0) {
                e->sim_port = p;
                snprintf(e->backend, sizeof(e->backend), "http://127.0.0.1:%d", p);
                return 0;
            }
        }
        if (waitpid(e->sim.pid, NULL, WNOHANG) == e->sim.pid) {
            e->sim.pid = 0;
            return -1;
        }
        h_sleep_ms(20);
    }
    return -1;
}

void h_sim_stop(h_env *e)
{
    h_proc_stop(&e->sim, SIGTERM, 5000);
}

json_t *h_status(h_env *e)
{
    lmsched_client *c;
    if (lmsched_client_open(&c, e->url) != LMSCHED_OK)
        return NULL;
    lmsched_client_set_connect_timeout(c, 500);
    char *text = NULL, *err = NULL;
    json_t *doc = NULL;
    if (lmsched_status(c, 2000, &text, &err) == LMSCHED_OK)
        doc = json_loads(text, 0, NULL);
    lmsched_free(text);
    lmsched_free(err);
    lmsched_client_close(c);
    return doc;
}

int h_daemon_start(h_env *e, const char *const *args)
{
    char bin[512];
    snprintf(bin, sizeof(bin), "%s/lmsched", h_bin_dir());
    snprintf(e->daemon.log, sizeof(e->daemon.log), "%s/lmsched.log", e->dir);
    const char *argv[64];
    int n = 0;
    argv[n++] = bin;
    argv[n++] = "serve";
    argv[n++] = "--listen";
    argv[n++] = e->url;
    argv[n++] = "--backend";
    argv[n++] = e->backend[0] ? e->backend : "http://127.0.0.1:9";
    argv[n++] = "--log-level";
    argv[n++] = "debug";
    for (int i = 0; args && args[i] && n < 62; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    e->daemon.pid = h_spawn(argv, e->daemon.log);
    for (int waited = 0; waited < 15000; waited += 50) {
        if (waitpid(e->daemon.pid, NULL, WNOHANG) == e->daemon.pid) {
            e->daemon.pid = 0;
            return -1;
        }
        json_t *st = h_status(e);
        if (st) {
            json_decref(st);
            return 0;
        }
        h_sleep_ms(50);
    }
    return -1;
}

typedef struct h_buf {
    char *p;
    size_t n;
} h_buf;

static size_t h_write(char *ptr, size_t size, size_t nmemb, void *ud)
{
    h_buf *b = ud;
    size_t len = size * nmemb;
    char *np = realloc(b->p, b->n + len + 1);
    if (np == NULL)
        return 0;
    b->p = np;
    memcpy(b->p + b->n, ptr, len);
    b->n += len;
    b->p[b->n] = '\0';
    return len;
}

static json_t *h_http(h_env *e, const char *path, bool post)
{
    char url[256];
    snprintf(url, sizeof(url), "%s%s", e->backend, path);
    CURL *c = curl_easy_init();
    h_buf b = {NULL, 0};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, h_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 5000L);
    curl_easy_setopt(c, CURLOPT_PROXY, "");
    if (post)
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
    CURLcode rc = curl_easy_perform(c);
    curl_easy_cleanup(c);
    json_t *doc = NULL;
    if (rc == CURLE_OK && b.p)
        doc = json_loads(b.p, 0, NULL);
    else if (rc == CURLE_OK && post)
        doc = json_object();
    free(b.p);
    return doc;
}

json_t *h_sim_get(h_env *e, const char *path)
{
    return h_http(e, path, false);
}

int h_sim_reset(h_env *e)
{
    json_t *r = h_http(e, "/sim/reset", true);
    if (r == NULL)
        return -1;
    json_decref(r);
    return 0;
}

json_t *h_json_get(json_t *root, const char *path)
{
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", path);
    json_t *cur = root;
    for (char *save = NULL, *tok = strtok_r(buf, ".", &save); tok && cur;
         tok = strtok_r(NULL, ".", &save))
        cur = json_object_get(cur, tok);
    return cur;
}

int64_t h_json_int(json_t *root, const char *path)
{
    json_t *v = h_json_get(root, path);
    if (v == NULL || !json_is_integer(v))
        return INT64_MIN;
    return json_integer_value(v);
}

static void h_cat(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return;
    char line[1024];
    int n = 0;
    fprintf(stderr, "---- %s (last lines) ----\n", path);
    /* keep it short: the last ~60 lines */
    long pos[60];
    memset(pos, 0, sizeof(pos));
    while (fgets(line, sizeof(line), f))
        pos[n++ % 60] = ftell(f);
    long start = n > 60 ? pos[n % 60] : 0;
    fseek(f, start, SEEK_SET);
    while (fgets(line, sizeof(line), f))
        fputs(line, stderr);
    fclose(f);
}

void h_dump_logs(h_env *e)
{
    if (e->sim.log[0])
        h_cat(e->sim.log);
    if (e->daemon.log[0])
        h_cat(e->daemon.log);
}
