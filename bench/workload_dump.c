/*
 * lmworkload - prints one of lmbench's workloads (bench/workload.c, the
 * same requests for the same seed and scale) as JSON, with its clairvoyant
 * optimum (bench/optimum.c) for a server with --slots slots, so a client
 * in another language can run it: scripts/bench's `rounds-http` runs it
 * through the HTTP front door with the official `openai` client
 * (tests/http/node/bench_rounds.mjs) and compares with lmbench's run of
 * the same workload through agentlib (docs/benchmarks.md).
 *
 *   lmworkload --workload rounds|roles|many [--seed N] [--scale F] [--slots N]
 *
 * Output, one JSON object: workload, seed, scale, slots, max_tokens,
 * nagents, per_agent, systems (the system prompts), requests (agent, seq,
 * system index, user message; an agent's requests in order) and
 * optimal_prefill_tokens (in lmsim's counting, every request sent). `chat`
 * is refused: its prompts and its optimum depend on the replies. Exit
 * status 0, 1 on no memory, 2 on a usage error.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "bench/bench.h"

static int wd_usage(void)
{
    fprintf(stderr,
            "usage: lmworkload --workload rounds|roles|many [--seed N] [--scale F] "
            "[--slots N]\n");
    return 2;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"workload", required_argument, NULL, 'w'},
        {"seed", required_argument, NULL, 's'},
        {"scale", required_argument, NULL, 'x'},
        {"slots", required_argument, NULL, 'n'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bn_kind kind = BN_ROUNDS;
    bool have_kind = false;
    unsigned long long seed = 1;
    double scale = 1;
    long slots = 4;
    char *end;
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'w':
            if (bn_kind_parse(optarg, &kind) != 0 || kind == BN_CHAT)
                return wd_usage();
            have_kind = true;
            break;
        case 's':
            seed = strtoull(optarg, &end, 10);
            if (*end != '\0')
                return wd_usage();
            break;
        case 'x':
            scale = strtod(optarg, &end);
            if (*end != '\0' || !(scale >= 0.01 && scale <= 100))
                return wd_usage();
            break;
        case 'n':
            slots = strtol(optarg, &end, 10);
            if (*end != '\0' || slots < 1 || slots > 16)
                return wd_usage();
            break;
        default:
            return wd_usage();
        }
    }
    if (!have_kind || optind < argc)
        return wd_usage();
    bn_workload *w = NULL;
    if (bn_workload_alloc(&w, kind, seed, scale) != 0)
        return 1;
    json_t *systems = json_array(), *reqs = json_array();
    for (int i = 0; i < w->nsystems; i++)
        json_array_append_new(systems, json_string(w->systems[i]));
    for (size_t i = 0; i < w->nreqs; i++) {
        bn_req *q = &w->reqs[i];
        if (bn_request_render(w, i) != 0) {
            bn_workload_free(w);
            return 1;
        }
        q->sent = true;
        json_array_append_new(reqs,
                              json_pack("{s:i,s:i,s:i,s:s}", "agent", q->agent, "seq",
                                        q->seq, "system", q->system, "user", q->user));
    }
    int64_t opt = bn_optimum(w, (unsigned)slots);
    json_t *doc = json_pack("{s:s,s:I,s:f,s:i,s:i,s:i,s:i,s:o,s:o,s:o}", "workload",
                            w->name, "seed", (json_int_t)seed, "scale", scale, "slots",
                            (int)slots, "max_tokens", w->max_tokens, "nagents",
                            w->nagents, "per_agent", w->per_agent, "systems", systems,
                            "requests", reqs, "optimal_prefill_tokens",
                            opt >= 0 ? json_integer((json_int_t)opt) : json_null());
    char *text = doc != NULL ? json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    int rc = 1;
    if (text != NULL) {
        puts(text);
        rc = 0;
    }
    free(text);
    json_decref(doc);
    bn_workload_free(w);
    return rc;
}
