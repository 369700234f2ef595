/*
 * proc - child processes (see proc.h).
 */
#include "kit/proc.h"

#include <errno.h>
#include <stdint.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kit/clock.h"

#if defined(__linux__)
#include <sys/prctl.h>
#elif defined(__APPLE__)
#include <mach-o/dyld.h>
#endif

/* In the child between fork and exec: async-signal-safe calls only, since
 * the parent may have threads. */
static void kit_proc_child(const char *const *argv, kit_out out, const char *log,
                           pid_t parent)
{
    int fd;
#if defined(__linux__)
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent)
        _exit(1); /* the parent died before prctl */
#else
    (void)parent;
#endif
    switch (out) {
    case KIT_OUT_LOG:
        fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, STDOUT_FILENO);
            dup2(fd, STDERR_FILENO);
            if (fd > STDERR_FILENO)
                close(fd);
        }
        break;
    case KIT_OUT_STDERR:
        dup2(STDERR_FILENO, STDOUT_FILENO);
        break;
    case KIT_OUT_QUIET:
        fd = open("/dev/null", O_WRONLY);
        if (fd >= 0) {
            dup2(fd, STDOUT_FILENO);
            if (fd > STDERR_FILENO)
                close(fd);
        }
        break;
    case KIT_OUT_INHERIT:
        break;
    }
    execv(argv[0], (char *const *)argv);
    static const char msg[] = "kit: cannot execute ";
    ssize_t w = write(STDERR_FILENO, msg, sizeof(msg) - 1);
    w = write(STDERR_FILENO, argv[0], strlen(argv[0]));
    w = write(STDERR_FILENO, "\n", 1);
    (void)w;
    _exit(127);
}

int kit_proc_spawn(kit_proc *p, const char *const *argv, kit_out out)
{
    pid_t parent = getpid();
    p->status = -1;
    /* Whatever we printed comes before the child's output. */
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        p->pid = 0;
        return -1;
    }
    if (pid == 0)
        kit_proc_child(argv, out, p->log, parent);
    p->pid = pid;
    return 0;
}

static int kit_proc_decode(int st)
{
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    if (WIFSIGNALED(st))
        return 128 + WTERMSIG(st);
    return -1;
}

bool kit_proc_exited(kit_proc *p)
{
    int st;
    if (p->pid <= 0)
        return true;
    pid_t r = waitpid(p->pid, &st, WNOHANG);
    if (r == p->pid) {
        p->status = kit_proc_decode(st);
        p->pid = 0;
        return true;
    }
    if (r < 0 && errno == ECHILD) {
        /* not ours to wait for (any more): gone for us */
        p->pid = 0;
        return true;
    }
    return false;
}

int kit_proc_wait(kit_proc *p, int timeout_ms)
{
    if (p->pid <= 0)
        return -1;
    int64_t until = kit_now_ms() + timeout_ms;
    for (;;) {
        if (kit_proc_exited(p))
            return p->status;
        if (kit_now_ms() >= until)
            return -1;
        kit_sleep_ms(10);
    }
}

int kit_proc_stop(kit_proc *p, int sig, int timeout_ms)
{
    if (p->pid <= 0)
        return -1;
    kill(p->pid, sig);
    int st = kit_proc_wait(p, timeout_ms);
    if (st >= 0 || p->pid <= 0)
        return st;
    kill(p->pid, SIGKILL);
    waitpid(p->pid, NULL, 0);
    p->pid = 0;
    p->status = 128 + SIGKILL;
    return -1;
}

int kit_proc_run(const char *const *argv, const char *out_path, int timeout_ms)
{
    kit_proc p;
    memset(&p, 0, sizeof(p));
    snprintf(p.log, sizeof(p.log), "%s", out_path);
    unlink(out_path);
    if (kit_proc_spawn(&p, argv, KIT_OUT_LOG) != 0)
        return -1;
    int st = kit_proc_wait(&p, timeout_ms);
    if (st < 0)
        kit_proc_stop(&p, SIGKILL, 5000);
    return st;
}

int kit_self_path(char *buf, size_t len)
{
#if defined(__linux__)
    ssize_t n = readlink("/proc/self/exe", buf, len - 1);
    if (n <= 0 || (size_t)n >= len - 1)
        return -1;
    buf[n] = '\0';
    return 0;
#elif defined(__APPLE__)
    uint32_t size = (uint32_t)len;
    return _NSGetExecutablePath(buf, &size) == 0 ? 0 : -1;
#else
    (void)buf;
    (void)len;
    return -1;
#endif
}

int kit_sibling_path(const char *name, char *buf, size_t len)
{
    if (kit_self_path(buf, len) != 0)
        return -1;
    char *slash = strrchr(buf, '/');
    if (slash == NULL || (size_t)(slash + 1 - buf) + strlen(name) + 1 > len)
        return -1;
    strcpy(slash + 1, name);
    return 0;
}

void kit_bin_path(const char *name, char *buf, size_t len)
{
    const char *dir = getenv("LMSCHED_BIN_DIR");
    snprintf(buf, len, "%s/%s", dir != NULL && *dir != '\0' ? dir : "build/bin", name);
}
