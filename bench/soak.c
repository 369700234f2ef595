/*
 * soak - the load generator of scripts/soak: an agent process that sends
 * chat requests through the daemon at a fixed rate (open loop, so a slow
 * or failing daemon does not slow the offered load down) and counts every
 * outcome by error class. With --calibrate it instead runs a closed loop
 * of --threads agents and prints the throughput it measured, which the
 * script takes as the capacity.
 *
 *   soak --url URL --rate R --seconds S [--max-tokens N] [--label NAME]
 *   soak --url URL --calibrate --threads T --seconds S [--max-tokens N]
 *
 * Output: a progress line every 30 s on stderr, and at the end (or on
 * SIGINT/SIGTERM, after waiting for the requests still out) one summary
 * line on stdout:
 *   soak NAME: sent N ok N err N [class=N ...] p50_ms X p95_ms Y
 * which scripts/soak adds up. Exit status 0, 2 on a usage error.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kit/clock.h"
#include "kit/tally.h"
#include "lmsched/agent.h"
#include "proto/proto.h"

#define SOAK_LAT 65536         /* latency samples kept (a ring) */
#define SOAK_TIMEOUT_MS 120000 /* per request: well past --request-timeout */

typedef struct soak {
    kit_tally tally;     /* every outcome, by lmsched_err */
    pthread_mutex_t mtx; /* sent and the latency ring */
    uint64_t sent;
    double lat[SOAK_LAT];
    uint64_t nlat;
} soak;

typedef struct soak_call {
    soak *s;
    double t0;
} soak_call;

static atomic_int soak_stop;

/* Monotonic seconds. */
static double soak_now(void)
{
    return (double)kit_now_ns() / 1e9;
}

static void soak_sleep(double s)
{
    if (s <= 0)
        return;
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR && !atomic_load(&soak_stop))
        ;
}

static void soak_on_signal(int sig)
{
    (void)sig;
    atomic_store(&soak_stop, 1);
}

static void soak_record(soak *s, int code, double ms)
{
    if (code == LMSCHED_OK) {
        pthread_mutex_lock(&s->mtx);
        s->lat[s->nlat++ % SOAK_LAT] = ms;
        pthread_mutex_unlock(&s->mtx);
    }
    kit_tally_add(&s->tally, code, NULL, 0);
}

static void soak_cb(lmsched_result *res, void *arg)
{
    soak_call *call = arg;
    soak_record(call->s, lmsched_result_error(res), (soak_now() - call->t0) * 1000.0);
    lmsched_result_free(res);
    free(call);
}

/* Four roles share four system prompts, as a team of agents would. */
static lmsched_request *soak_request(uint64_t i, int max_tokens)
{
    static const char *const roles[] = {
        "You are the planner of a software team. Break the task into small steps.",
        "You are the coder of a software team. Answer with code only.",
        "You are the reviewer of a software team. List problems, most serious first.",
        "You are the tester of a software team. Propose test cases.",
    };
    lmsched_request *r = NULL;
    char user[96];
    if (lmsched_request_alloc(&r) != LMSCHED_OK)
        return NULL;
    snprintf(user, sizeof(user), "Task %llu: handle the next item.",
             (unsigned long long)i);
    lmsched_request_set_system(r, roles[i % 4]);
    lmsched_request_add_message(r, "user", user);
    lmsched_request_set_max_tokens(r, max_tokens);
    lmsched_request_set_agent(r, "soak");
    return r;
}

static int soak_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void soak_summary(soak *s, const char *label, FILE *out)
{
    pthread_mutex_lock(&s->mtx);
    uint64_t n = s->nlat < SOAK_LAT ? s->nlat : SOAK_LAT;
    double p50 = 0, p95 = 0;
    if (n > 0) {
        double *v = malloc(n * sizeof(*v));
        if (v != NULL) {
            memcpy(v, s->lat, n * sizeof(*v));
            qsort(v, n, sizeof(*v), soak_cmp);
            p50 = v[(size_t)(0.50 * (double)(n - 1))];
            p95 = v[(size_t)(0.95 * (double)(n - 1))];
            free(v);
        }
    }
    int ok = kit_tally_count(&s->tally, LMSCHED_OK);
    int err = kit_tally_done(&s->tally) - ok;
    fprintf(out, "soak %s: sent %llu ok %d err %d", label, (unsigned long long)s->sent,
            ok, err);
    for (int c = 1; c < KIT_TALLY_CODES; c++) {
        int cnt = kit_tally_count(&s->tally, c);
        if (cnt > 0)
            fprintf(out, " %s=%d", lmsched_err_name(c), cnt);
    }
    fprintf(out, " p50_ms %.0f p95_ms %.0f\n", p50, p95);
    fflush(out);
    pthread_mutex_unlock(&s->mtx);
}

/* ---- closed loop: --calibrate ---------------------------------------------- */

typedef struct soak_worker {
    lmsched_client *c;
    soak *s;
    double until;
    int max_tokens;
    uint64_t seq;
} soak_worker;

static void *soak_worker_main(void *arg)
{
    soak_worker *w = arg;
    while (soak_now() < w->until && !atomic_load(&soak_stop)) {
        lmsched_request *r = soak_request(w->seq++, w->max_tokens);
        lmsched_result *res = NULL;
        double t0 = soak_now();
        int rc = r ? lmsched_chat(w->c, r, SOAK_TIMEOUT_MS, &res) : LMSCHED_ENOMEM;
        pthread_mutex_lock(&w->s->mtx);
        w->s->sent++;
        pthread_mutex_unlock(&w->s->mtx);
        soak_record(w->s, rc, (soak_now() - t0) * 1000.0);
        lmsched_result_free(res);
        lmsched_request_free(r);
    }
    return NULL;
}

static int soak_calibrate(lmsched_client *c, soak *s, int threads, double seconds,
                          int max_tokens)
{
    pthread_t tid[256];
    soak_worker w[256];
    if (threads < 1 || threads > 256)
        return 2;
    double t0 = soak_now();
    for (int i = 0; i < threads; i++) {
        w[i] = (soak_worker){c, s, t0 + seconds, max_tokens, (uint64_t)i * 1000000};
        pthread_create(&tid[i], NULL, soak_worker_main, &w[i]);
    }
    for (int i = 0; i < threads; i++)
        pthread_join(tid[i], NULL);
    double dt = soak_now() - t0;
    int ok = kit_tally_count(&s->tally, LMSCHED_OK);
    printf("soak calibrate: %d agents, %d ok in %.1f s: capacity %.2f req/s\n", threads,
           ok, dt, (double)ok / dt);
    return 0;
}

/* ---- open loop ------------------------------------------------------------------ */

static int soak_run(lmsched_client *c, soak *s, double rate, double seconds,
                    int max_tokens, const char *label)
{
    double t0 = soak_now(), next = t0, report = t0 + 30;
    unsigned seed = (unsigned)getpid();
    for (uint64_t i = 0; !atomic_load(&soak_stop); i++) {
        double now = soak_now();
        if (now - t0 >= seconds)
            break;
        if (now >= report) {
            soak_summary(s, label, stderr);
            report += 30;
        }
        soak_sleep(next - now);
        /* Exponential gaps: arrivals of many independent agents. */
        double u = ((double)rand_r(&seed) + 1.0) / ((double)RAND_MAX + 2.0);
        next += -log(u) / rate;
        lmsched_request *r = soak_request(i, max_tokens);
        soak_call *call = malloc(sizeof(*call));
        if (r == NULL || call == NULL) {
            lmsched_request_free(r);
            free(call);
            soak_record(s, LMSCHED_ENOMEM, 0);
            continue;
        }
        call->s = s;
        call->t0 = soak_now();
        pthread_mutex_lock(&s->mtx);
        s->sent++;
        pthread_mutex_unlock(&s->mtx);
        int rc = lmsched_chat_async(c, r, SOAK_TIMEOUT_MS, soak_cb, call);
        lmsched_request_free(r);
        if (rc != LMSCHED_OK) {
            free(call);
            soak_record(s, rc, 0);
        }
    }
    /* Wait for what is still out: every request gets its one outcome. */
    pthread_mutex_lock(&s->mtx);
    int sent = (int)s->sent;
    pthread_mutex_unlock(&s->mtx);
    kit_tally_wait(&s->tally, sent, SOAK_TIMEOUT_MS + 5000);
    return 0;
}

static void soak_usage(FILE *out)
{
    fprintf(
        out,
        "usage: soak --url URL --rate R --seconds S [--max-tokens N] [--label NAME]\n"
        "       soak --url URL --calibrate --threads T --seconds S [--max-tokens N]\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"url", required_argument, NULL, 'u'},
        {"rate", required_argument, NULL, 'r'},
        {"seconds", required_argument, NULL, 's'},
        {"max-tokens", required_argument, NULL, 'm'},
        {"label", required_argument, NULL, 'l'},
        {"threads", required_argument, NULL, 't'},
        {"calibrate", no_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *url = NULL, *label = "agent";
    double rate = 0, seconds = 60;
    int max_tokens = 32, threads = 4, opt;
    bool calibrate = false;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'u':
            url = optarg;
            break;
        case 'r':
            rate = atof(optarg);
            break;
        case 's':
            seconds = atof(optarg);
            break;
        case 'm':
            max_tokens = atoi(optarg);
            break;
        case 'l':
            label = optarg;
            break;
        case 't':
            threads = atoi(optarg);
            break;
        case 'c':
            calibrate = true;
            break;
        case 'h':
            soak_usage(stdout);
            return 0;
        default:
            soak_usage(stderr);
            return 2;
        }
    }
    if (url == NULL || seconds <= 0 || max_tokens < 1 || (!calibrate && !(rate > 0))) {
        soak_usage(stderr);
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = soak_on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    lmsched_client *c = NULL;
    if (lmsched_client_open(&c, url) != LMSCHED_OK) {
        fprintf(stderr, "soak: cannot open a client for %s\n", url);
        return 1;
    }
    /* static: 512 KiB of latency samples */
    static soak s;
    kit_tally_init(&s.tally);
    pthread_mutex_init(&s.mtx, NULL);
    int rc = calibrate ? soak_calibrate(c, &s, threads, seconds, max_tokens)
                       : soak_run(c, &s, rate, seconds, max_tokens, label);
    if (!calibrate)
        soak_summary(&s, label, stdout);
    lmsched_client_close(c);
    pthread_mutex_destroy(&s.mtx);
    kit_tally_fini(&s.tally);
    return rc;
}
