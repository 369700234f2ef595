/*
 * lmsim - a simulated LM Studio (llama.cpp engine) server for lmsched's
 * tests and benchmarks. main wires the pieces together: parse flags,
 * optionally refuse connections for a while, start the engine and the HTTP
 * server, announce the port, and stop cleanly on SIGINT/SIGTERM.
 *
 * SIGINT and SIGTERM are blocked in every thread and taken synchronously
 * here with sigwait, so no handler runs inside library code.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "scheduler/util/log.h"
#include "sim/config.h"
#include "sim/engine.h"
#include "sim/http.h"

/* Writes the port to path through a temporary file and rename, so a reader
 * sees either no file or the whole number. Returns 0 or -1 after logging. */
static int lmsim_write_port_file(const char *path, unsigned port)
{
    char tmp[4096];
    FILE *f = NULL;
    int n = snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    if (n < 0 || (size_t)n >= sizeof tmp) {
        log_error("port file path too long");
        return -1;
    }
    f = fopen(tmp, "w");
    if (!f)
        goto fail;
    if (fprintf(f, "%u\n", port) < 0)
        goto fail;
    if (fclose(f) != 0) {
        f = NULL;
        goto fail;
    }
    f = NULL;
    if (rename(tmp, path) != 0)
        goto fail;
    return 0;

fail:
    log_error("cannot write port file %s: %s", path, strerror(errno));
    if (f)
        fclose(f);
    unlink(tmp);
    return -1;
}

/* Waits up to ms for SIGINT/SIGTERM. Returns the signal, or 0 on timeout. */
static int lmsim_wait_signal(const sigset_t *set, unsigned ms)
{
    struct timespec end, now, left;
    clock_gettime(CLOCK_MONOTONIC, &end);
    end.tv_sec += ms / 1000;
    end.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (end.tv_nsec >= 1000000000L) {
        end.tv_sec++;
        end.tv_nsec -= 1000000000L;
    }
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        left.tv_sec = end.tv_sec - now.tv_sec;
        left.tv_nsec = end.tv_nsec - now.tv_nsec;
        if (left.tv_nsec < 0) {
            left.tv_sec--;
            left.tv_nsec += 1000000000L;
        }
        if (left.tv_sec < 0)
            return 0;
        int sig = sigtimedwait(set, NULL, &left);
        if (sig > 0)
            return sig;
        if (errno == EAGAIN)
            return 0;
    }
}

int main(int argc, char **argv)
{
    sim_config cfg;
    sim_engine *engine = NULL;
    sim_http *http = NULL;
    sigset_t sigs;
    uint16_t port = 0;
    int sig = 0, status = 1;

    simcfg_init(&cfg);
    int rc = simcfg_parse(&cfg, argc, argv, stdout, stderr);
    if (rc != 0)
        return rc > 0 ? 0 : 2;
    log_set_program("lmsim");
    log_set_level(cfg.log_level);

    /* A client hanging up mid-write must not kill the server. */
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    /* Before any thread exists, so all of them inherit the mask. */
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);

    if (cfg.refuse_ms > 0) {
        log_info("refusing connections for %u ms", cfg.refuse_ms);
        sig = lmsim_wait_signal(&sigs, cfg.refuse_ms);
        if (sig != 0) {
            status = 0;
            goto out;
        }
    }

    if (simeng_alloc(&engine, &cfg) != 0) {
        log_error("out of memory");
        goto out;
    }
    if (simeng_start(engine) != 0) {
        log_error("cannot start the engine thread");
        goto out;
    }
    if (simhttp_start(&http, &cfg, engine, &port) != 0)
        goto out;

    printf("lmsim listening on http://127.0.0.1:%u\n", (unsigned)port);
    fflush(stdout);
    if (cfg.port_file[0] != '\0' && lmsim_write_port_file(cfg.port_file, port) != 0)
        goto out;
    log_info("model %s: %u slot(s) x %u tokens, prefill %.0f tok/s, decode %.1f tok/s, "
             "time scale %g",
             cfg.model, cfg.slots, cfg.ctx, cfg.prefill_tps, cfg.decode_tps,
             cfg.time_scale);

    while (sigwait(&sigs, &sig) != 0)
        ;
    log_info("signal %d: stopping", sig);
    status = 0;

out:
    /* Engine first: handlers blocked on it return, so MHD can join them. */
    if (engine)
        simeng_stop(engine);
    simhttp_stop(http);
    simeng_free(engine);
    return status;
}
