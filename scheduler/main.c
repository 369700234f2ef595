/*
 * main - the `lmsched` command: `serve` runs the daemon; `status` and `chat`
 * are clients of it (cli.c).
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "lmsched/agent.h"
#include "scheduler/cli/cli.h"
#include "scheduler/core/config.h"
#include "scheduler/util/log.h"
#include "scheduler/core/loop.h"

static void usage(FILE *out)
{
    fprintf(out,
        "usage: lmsched <command> [options]\n"
        "\n"
        "Shares one local LLM server (LM Studio, llama.cpp) between many agent processes.\n"
        "\n"
        "commands:\n"
        "  serve     run the scheduler daemon (lmsched serve --help)\n"
        "  status    show what the daemon is doing (lmsched status --help)\n"
        "  chat      send one chat request through the daemon (lmsched chat --help)\n"
        "\n"
        "  --help, --version\n"
        "\n"
        "Exit status: 0 success, 1 the request or daemon failed, 2 usage error,\n"
        "3 daemon not reachable or no reply in time, 4 serve refused to start.\n");
}

typedef struct sig_thread_arg {
    sched *s;
    sigset_t set;
} sig_thread_arg;

static void *sig_thread(void *arg)
{
    sig_thread_arg *a = arg;
    for (;;) {
        int sig = 0;
        if (sigwait(&a->set, &sig) != 0)
            continue;
        if (sig == SIGUSR1)
            return NULL; /* our own wake-up at exit */
        log_info("received %s", sig == SIGINT ? "SIGINT" : "SIGTERM");
        sched_request_stop(a->s);
    }
}

static int serve_main(int argc, char **argv)
{
    char url[512];
    if (lmsched_default_url(url, sizeof(url)) != LMSCHED_OK) {
        fprintf(stderr, "lmsched serve: the default URL is too long; pass --listen\n");
        return 2;
    }
    sched_config cfg;
    config_defaults(&cfg, url);
    int rc = config_parse(&cfg, argc, argv);
    if (rc == 1)
        return 0;
    if (rc != 0)
        return 2;
    log_set_level(cfg.log_level);

    /* Signals are taken by one thread with sigwait, so no handler ever runs
     * inside nng or curl. Block them before any thread exists. */
    sig_thread_arg sa;
    sigemptyset(&sa.set);
    sigaddset(&sa.set, SIGINT);
    sigaddset(&sa.set, SIGTERM);
    sigaddset(&sa.set, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &sa.set, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "lmsched serve: cannot initialise libcurl\n");
        return 1;
    }
    static sched s; /* large (latency rings); not on the stack */
    int exit_code = 0;
    if (sched_init(&s, &cfg) != 0) {
        exit_code = 1;
        goto out;
    }
    log_info("lmsched %s starting; backend %s%s", LMSCHED_VERSION, cfg.backend,
             s.token ? " (with LM_API_TOKEN)" : "");
    if (cfg.backend_stripped[0])
        log_info("the backend URL ended in %s: using %s (lmsched adds the API paths itself)",
                 cfg.backend_stripped, cfg.backend);
    if ((exit_code = sched_probe_initial(&s, 3000)) != 0)
        goto out;
    if ((exit_code = sched_listen(&s)) != 0)
        goto out;

    sa.s = &s;
    pthread_t tid;
    if (pthread_create(&tid, NULL, sig_thread, &sa) != 0) {
        log_error("cannot start the signal thread");
        exit_code = 1;
        goto out;
    }
    sched_run(&s);
    pthread_kill(tid, SIGUSR1);
    pthread_join(tid, NULL);
out:
    sched_fini(&s);
    curl_global_cleanup();
    return exit_code;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "serve") == 0)
        return serve_main(argc - 1, argv + 1);
    if (strcmp(cmd, "status") == 0)
        return cli_status_main(argc - 1, argv + 1);
    if (strcmp(cmd, "chat") == 0)
        return cli_chat_main(argc - 1, argv + 1);
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
        printf("lmsched %s (protocol %d)\n", lmsched_version(), LMSCHED_PROTOCOL_VERSION);
        return 0;
    }
    fprintf(stderr, "lmsched: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
