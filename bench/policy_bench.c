/*
 * policy_bench - the cost of one scheduling decision with a long queue.
 *
 * Fills the policy with 10,000 queued requests (2,000-token group prefixes
 * plus a short question), keeps every slot busy, then times cycles of
 * "a slot finishes (policy_slot_done), the next request starts on it
 * (policy_next), a new request arrives (policy_push)" so the queue stays
 * at 10,000. Cases: many groups, few groups, one group, one request per
 * group (the widest scan), and a multi-turn case where members of one
 * group match to different depths. With --backends N the slots are N
 * backends of --slots each (one slot space, as the daemon sets it up for
 * several servers) and every request may run on any of them, so each slot
 * test also checks its backend against the request's mask. Prints one JSON
 * object with the median, p99 and maximum cycle time in microseconds per
 * case. A program, not a test: the figures depend on the machine.
 *
 * Usage: policy_bench [--queued N] [--cycles N] [--slots N] [--backends N]
 *                     [--policy NAME]
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lmsched/wire.h"
#include "scheduler/policy/policy.h"
#include "scheduler/chat/chain.h"

#define PB_PFX_BLOCKS 125 /* 2,000 tokens */
#define PB_MAX_BLOCKS 400

typedef struct pb_req {
    pol_item pi;
    uint64_t blocks[PB_MAX_BLOCKS];
} pb_req;

typedef struct pb_case {
    const char *name;
    unsigned groups;     /* 0: one request per group */
    unsigned conv_depth; /* >0: members are conversations of random depth */
} pb_case;

static uint64_t pb_rng = 0x853c49e6748fea9bULL;

static uint64_t pb_rand(void)
{
    pb_rng ^= pb_rng << 13;
    pb_rng ^= pb_rng >> 7;
    pb_rng ^= pb_rng << 17;
    return pb_rng;
}

static uint64_t pb_mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static int64_t pb_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The mask every request carries (0: one backend, any). */
static uint32_t pb_backends_mask;

/* A request of group g; conv/depth shape its blocks after the prefix. */
static void pb_fill(pb_req *r, const pb_case *c, uint64_t serial, int64_t now)
{
    uint64_t g = c->groups ? pb_rand() % c->groups : serial;
    uint64_t conv = c->conv_depth ? pb_rand() % 64 : serial;
    uint32_t extra = c->conv_depth ? 1 + (uint32_t)(pb_rand() % c->conv_depth) : 2;
    uint64_t h = 0;
    uint32_t n = 0;

    memset(&r->pi, 0, sizeof(r->pi));
    for (uint32_t i = 0; i < PB_PFX_BLOCKS; i++)
        r->blocks[n++] = h = pb_mix(h ^ pb_mix(g * 1000003u + i));
    for (uint32_t i = 0; i < extra && n < PB_MAX_BLOCKS; i++)
        r->blocks[n++] = h = pb_mix(h ^ pb_mix(conv * 7919u + i + 1));
    r->pi.blocks = r->blocks;
    r->pi.n_blocks = n;
    r->pi.tokens = n * (PREFIX_BLOCK_BYTES / PREFIX_BYTES_PER_TOKEN) + 3;
    r->pi.group = g + 1;
    r->pi.label = "bench";
    r->pi.priority = 5;
    r->pi.enq_us = now;
    r->pi.backends = pb_backends_mask;
}

static int pb_cmp(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int pb_run(const pb_case *c, const char *pol, size_t queued, size_t cycles,
                  unsigned per_backend, unsigned n_backends, int first)
{
    unsigned slots = per_backend * n_backends, layout[32];
    policy *p = NULL;
    pb_req *reqs = NULL;
    int64_t *ns = NULL;
    int *running = NULL;
    int rv = 1;
    size_t n_req = queued + slots;
    uint64_t serial = 0;
    int64_t clock_us = 0;

    reqs = calloc(n_req, sizeof(*reqs));
    ns = calloc(cycles, sizeof(*ns));
    running = calloc(slots, sizeof(*running));
    if (reqs == NULL || ns == NULL || running == NULL ||
        policy_alloc(&p, pol, queued + slots) != LMSCHED_OK) {
        fprintf(stderr, "policy_bench: out of memory\n");
        goto done;
    }
    for (unsigned b = 0; b < n_backends; b++)
        layout[b] = per_backend;
    if (policy_set_backend_slots(p, layout, n_backends) != LMSCHED_OK) {
        fprintf(stderr, "policy_bench: out of memory\n");
        goto done;
    }
    /* A large starvation bound: this measures the cache decisions. */
    policy_tuning t = {.starve_us = INT64_MAX / 2, .max_overtakes = 1000000};
    policy_set_tuning(p, &t);
    for (size_t i = 0; i < n_req; i++) {
        pb_fill(&reqs[i], c, serial++, clock_us++);
        if (policy_push(p, &reqs[i].pi) != LMSCHED_OK) {
            fprintf(stderr, "policy_bench: push refused\n");
            goto done;
        }
    }
    /* Fill the slots. */
    for (unsigned s = 0; s < slots; s++) {
        int slot;
        uint32_t cached;
        pol_item *it = policy_next(p, clock_us, &slot, &cached);
        if (it == NULL)
            break;
        running[slot] = (int)((pb_req *)it - reqs) + 1;
    }
    uint64_t cached_sum = 0, prompt_sum = 0;
    for (size_t k = 0; k < cycles; k++) {
        unsigned s = (unsigned)(pb_rand() % slots);
        if (running[s] == 0) {
            /* held: pick a running one */
            for (s = 0; s < slots && running[s] == 0; s++)
                ;
            if (s == slots) {
                fprintf(stderr, "policy_bench: nothing runs and nothing starts\n");
                goto done;
            }
        }
        pb_req *done_req = &reqs[running[s] - 1];
        running[s] = 0;
        int64_t t0 = pb_now_ns();
        policy_slot_done(p, (int)s, true, -1, -1);
        int slot;
        uint32_t cached;
        pol_item *it;
        while ((it = policy_next(p, clock_us, &slot, &cached)) != NULL) {
            running[slot] = (int)((pb_req *)it - reqs) + 1;
            cached_sum += cached;
            prompt_sum += it->tokens;
        }
        /* The finished request's storage comes back as a new arrival. */
        pb_fill(done_req, c, serial++, clock_us++);
        int prc = policy_push(p, &done_req->pi);
        int64_t t1 = pb_now_ns();
        if (prc != LMSCHED_OK) {
            fprintf(stderr, "policy_bench: push refused\n");
            goto done;
        }
        ns[k] = t1 - t0;
    }
    qsort(ns, cycles, sizeof(*ns), pb_cmp);
    printf(
        "%s    {\"case\": \"%s\", \"policy\": \"%s\", \"queued\": %zu, \"groups\": %u, "
        "\"backends\": %u, \"slots\": %u, \"cycles\": %zu, \"median_us\": %.2f, "
        "\"p99_us\": %.2f, \"max_us\": %.2f, \"cached_ratio\": %.3f}",
        first ? "" : ",\n", c->name, pol, queued,
        c->groups ? c->groups : (unsigned)(queued + slots), n_backends, slots, cycles,
        (double)ns[cycles / 2] / 1000.0, (double)ns[cycles * 99 / 100] / 1000.0,
        (double)ns[cycles - 1] / 1000.0,
        prompt_sum ? (double)cached_sum / (double)prompt_sum : 0.0);
    rv = 0;
done:
    while (p != NULL && policy_pop_any(p) != NULL)
        ;
    policy_free(p);
    free(running);
    free(ns);
    free(reqs);
    return rv;
}

int main(int argc, char **argv)
{
    size_t queued = 10000, cycles = 20000;
    unsigned slots = 4, backends = 1;
    const char *pol = "prefix";

    for (int i = 1; i < argc; i++) {
        if (i + 1 < argc && strcmp(argv[i], "--queued") == 0)
            queued = strtoul(argv[++i], NULL, 10);
        else if (i + 1 < argc && strcmp(argv[i], "--cycles") == 0)
            cycles = strtoul(argv[++i], NULL, 10);
        else if (i + 1 < argc && strcmp(argv[i], "--slots") == 0)
            slots = (unsigned)strtoul(argv[++i], NULL, 10);
        else if (i + 1 < argc && strcmp(argv[i], "--backends") == 0)
            backends = (unsigned)strtoul(argv[++i], NULL, 10);
        else if (i + 1 < argc && strcmp(argv[i], "--policy") == 0)
            pol = argv[++i];
        else {
            fprintf(stderr, "usage: policy_bench [--queued N] [--cycles N] [--slots N] "
                            "[--backends N] [--policy fifo|prefix]\n");
            return 2;
        }
    }
    if (queued == 0 || cycles == 0 || slots == 0 || backends == 0 || backends > 32 ||
        slots * backends > 256) {
        fprintf(stderr, "policy_bench: queued, cycles, slots and backends must be > 0 "
                        "(backends <= 32, slots x backends <= 256)\n");
        return 2;
    }
    if (backends > 1)
        pb_backends_mask = backends == 32 ? ~0u : (1u << backends) - 1;
    static const pb_case cases[] = {
        {"many_groups", 1000, 0},    {"few_groups", 8, 0},   {"one_group", 1, 0},
        {"group_per_request", 0, 0}, {"multi_turn", 1, 200},
    };
    printf("{\"results\": [\n");
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        if (pb_run(&cases[i], pol, queued, cycles, slots, backends, i == 0) != 0)
            return 1;
    printf("\n]}\n");
    return 0;
}
