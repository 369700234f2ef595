/*
 * serve - `lmsched serve`: the daemon's composition root. It parses the
 * flags, builds the core (which holds the backends), opens the front doors
 * (the nng socket, and the OpenAI-compatible HTTP server when --http is given),
 * takes signals on a thread of its own, runs the loop, and tears things
 * down in order: fronts first (no more events), then the core.
 */
#include "scheduler/serve.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include <curl/curl.h>

#include "lmsched/agent.h"
#include "scheduler/core/config.h"
#include "scheduler/core/sched.h"
#include "scheduler/front/agents.h"
#include "scheduler/front/http.h"
#include "scheduler/util/log.h"

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
        if (sig == SIGHUP) {
            log_info("received SIGHUP");
            sched_request_reload(a->s); /* --backends-file */
            continue;
        }
        log_info("received %s", sig == SIGINT ? "SIGINT" : "SIGTERM");
        sched_request_stop(a->s);
    }
}

int serve_main(int argc, char **argv)
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
    sigaddset(&sa.set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sa.set, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "lmsched serve: cannot initialise libcurl\n");
        return 1;
    }
    sched *s = NULL;
    agents_front *nng_front = NULL;
    http_front *http = NULL;
    int exit_code = 0;
    if (sched_alloc(&s, &cfg) != 0) {
        exit_code = 1;
        goto out;
    }
    char more[1024] = "";
    for (unsigned i = 1, at = 0; i < cfg.n_backends && at < sizeof(more); i++)
        at += (unsigned)snprintf(more + at, sizeof(more) - at, ", %s", cfg.backend_more[i - 1]);
    log_info("lmsched %s starting; backend%s %s%s%s", LMSCHED_SERVE_VERSION,
             cfg.n_backends > 1 ? "s" : "", cfg.backend, more,
             getenv("LM_API_TOKEN") != NULL && *getenv("LM_API_TOKEN") ? " (with LM_API_TOKEN)"
                                                                      : "");
    if (cfg.backend_stripped[0])
        log_info("the backend URL ended in %s: using %s (lmsched adds the API paths itself)",
                 cfg.backend_stripped, cfg.backend);
    if ((exit_code = sched_start(s, 3000)) != 0)
        goto out;
    if ((exit_code = agents_open(&nng_front, s, &cfg)) != 0)
        goto out;
    char what[128];
    sched_describe(s, what, sizeof(what));
    log_info("listening on %s (%s, %u per connection%s)", cfg.listen, what, cfg.max_per_conn,
             agents_auth_required(nng_front) ? ", token required" : "");
    if (cfg.http[0] != '\0') {
        if ((exit_code = http_open(&http, s, &cfg)) != 0)
            goto out;
        log_info("serving the OpenAI API on http://%s/v1 (%s)", cfg.http,
                 http_auth_required(http) ? "token required"
                                          : "no token: loopback only");
    }

    sa.s = s;
    pthread_t tid;
    if (pthread_create(&tid, NULL, sig_thread, &sa) != 0) {
        log_error("cannot start the signal thread");
        exit_code = 1;
        goto out;
    }
    sched_run(s);
    pthread_kill(tid, SIGUSR1);
    pthread_join(tid, NULL);
out:
    /* Order: the fronts stop their callbacks first, then the core (and the
     * HTTP client inside it). */
    agents_close(nng_front);
    http_close(http);
    sched_free(s);
    curl_global_cleanup();
    return exit_code;
}
