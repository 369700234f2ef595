/*
 * simcfg - lmsim's command line as one option table (scheduler/util/opt):
 * every flag's field, range, default and help in one entry, which gives
 * the defaults, the strict parsing (so the engine can trust its
 * configuration), --help and docs/simulator.md's table (--help-markdown).
 */
#include "sim/config.h"

#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "scheduler/util/opt.h"

#ifndef LMSIM_VERSION
#define LMSIM_VERSION "0.0.0"
#endif

#define CFG sim_config
#define G_SERVER "Server"
#define G_MACHINE "The simulated machine"
#define G_FAULTS "Faults"

/* In the order of enum sim_garbage_mode. */
static const char *const simcfg_garbage_modes[] = {"json", "truncate", "html",
                                                   "huge", "any",      NULL};

static const opt_spec simcfg_specs[] = {
    {.name = "port",
     .arg = "N",
     OPT_INT_FIELD(CFG, port),
     .min = 0,
     .max = 65535,
     .def = "0",
     .group = G_SERVER,
     .help = "port to listen on; 0 picks a free one",
     .doc = "Port on 127.0.0.1; 0 picks a free one."},
    {.name = "port-file",
     .arg = "PATH",
     OPT_STRING_FIELD(CFG, port_file),
     .def_doc = "none",
     .group = G_SERVER,
     .help = "also write the port number to PATH (atomically)",
     .doc = "Also write the port to PATH (written to a temp file and renamed, so "
            "readers never see a partial number)."},
    {.name = "log-level",
     .arg = "L",
     OPT_LOG_LEVEL_FIELD(CFG, log_level),
     .def = "info",
     .group = G_SERVER,
     .help = "error, warn, info or debug",
     .doc = "What goes to stderr."},

    {.name = "slots",
     .arg = "N",
     OPT_UINT_FIELD(CFG, slots),
     .min = 1,
     .max = SIMCFG_MAX_SLOTS,
     .def = "4",
     .group = G_MACHINE,
     .help = "parallel slots",
     .doc = "Parallel slots (LM Studio's \"parallel\")."},
    {.name = "ctx",
     .arg = "TOKENS",
     OPT_UINT_FIELD(CFG, ctx),
     .min = 16,
     .max = SIMCFG_MAX_CTX,
     .def = "8192",
     .group = G_MACHINE,
     .help = "context per slot",
     .doc = "Context per slot."},
    {.name = "model",
     .arg = "NAME",
     OPT_STRING_FIELD(CFG, model),
     .def = "lmsim-8b-q4",
     .group = G_MACHINE,
     .help = "model key",
     .doc = "Model key reported everywhere."},
    {.name = "model-size",
     .arg = "BYTES",
     OPT_INT64_FIELD(CFG, model_size),
     .min = 0,
     .max = INT64_MAX,
     .def = "4920000000",
     .group = G_MACHINE,
     .help = "reported model size",
     .doc = "Reported `size_bytes`."},
    {.name = "slot-similarity",
     .arg = "F",
     OPT_DOUBLE_FIELD(CFG, slot_similarity),
     .dmin = 0,
     .dmax = 1,
     .def = "0.10",
     .group = G_MACHINE,
     .help = "prefix share needed to pick a cached slot",
     .doc = "Share of the prompt a cached prefix must cover to pick that slot "
            "(llama.cpp `--slot-prompt-similarity`)."},
    {.name = "host-cache",
     .arg = "TOKENS",
     OPT_UINT_FIELD(CFG, host_cache),
     .min = 0,
     .max = UINT_MAX,
     .def = "0",
     .group = G_MACHINE,
     .help = "tokens of evicted slot prompts kept and restored; 0: none",
     .doc = "A host prompt cache, as llama.cpp's (`--cache-ram`, on there by default): "
            "when a request takes a slot and drops part of what the slot held, the "
            "slot's prompt is kept (up to this many tokens in all, least recently used "
            "dropped first), and a later request whose prompt shares more with a kept "
            "prompt than with its slot gets that prompt back into the slot, reported "
            "as cached tokens. A kept prompt is restored only when at least a quarter "
            "of it matches, and leaves the cache when restored (it is kept again when "
            "its slot moves on). 0: none, the slot caches alone."},
    {.name = "prefill-tps",
     .arg = "F",
     OPT_DOUBLE_FIELD(CFG, prefill_tps),
     .dmin = 1e-3,
     .dmax = 1e9,
     .def = "800",
     .group = G_MACHINE,
     .help = "prompt tokens/s, shared by prefilling slots",
     .doc = "Prompt tokens/s, shared by prefilling sequences."},
    {.name = "decode-tps",
     .arg = "F",
     OPT_DOUBLE_FIELD(CFG, decode_tps),
     .dmin = 1e-3,
     .dmax = 1e9,
     .def = "45",
     .group = G_MACHINE,
     .help = "tokens/s of one decoding sequence",
     .doc = "Tokens/s of one sequence decoding alone."},
    {.name = "batch-slowdown",
     .arg = "F",
     OPT_DOUBLE_FIELD(CFG, batch_slowdown),
     .dmin = 0,
     .dmax = 100,
     .def = "0.05",
     .group = G_MACHINE,
     .help = "decode rate divisor 1+F*(active-1)",
     .doc = "Decode slowdown per extra active sequence: the rate is divided by 1 + F × "
            "(active − 1)."},
    {.name = "time-scale",
     .arg = "F",
     OPT_DOUBLE_FIELD(CFG, time_scale),
     .dmin = 1e-3,
     .dmax = 1e6,
     .def = "1",
     .group = G_MACHINE,
     .help = "run the simulated clock F times faster",
     .doc = "Run the simulated clock F times faster than the wall clock (tests use "
            "20..100)."},
    {.name = "reply-tokens",
     .arg = "N",
     OPT_UINT_FIELD(CFG, reply_tokens),
     .min = 1,
     .max = SIMCFG_MAX_CTX,
     .def = "32",
     .group = G_MACHINE,
     .help = "tokens in a reply",
     .doc = "Natural reply length."},
    {.name = "reasoning-tokens",
     .arg = "N",
     OPT_UINT_FIELD(CFG, reasoning_tokens),
     .min = 0,
     .max = SIMCFG_MAX_CTX,
     .def = "0",
     .group = G_MACHINE,
     .help = "reasoning tokens before every answer",
     .doc = "Every answer first streams N tokens of `reasoning_content` (llama.cpp's "
            "field; `message.reasoning_content` when not streamed); usage counts them "
            "([Tools, structured output, logprobs, "
            "reasoning](#tools-structured-output-logprobs-reasoning))."},
    {.name = "seed",
     .arg = "N",
     OPT_UINT64_FIELD(CFG, seed),
     .umin = 0,
     .umax = UINT64_MAX,
     .def = "1",
     .group = G_MACHINE,
     .help = "seed for replies and fault draws",
     .doc = "Seed for the words of replies and for fault draws."},
    {.name = "instant",
     OPT_FLAG_FIELD(CFG, instant),
     .group = G_MACHINE,
     .help = "answer every chat at once with the reply, without slots, time model or "
             "faults (overhead benchmarks)",
     .doc = "Answer every chat at once, without slots, time model or faults ([Instant "
            "mode](#instant-mode---instant)); for overhead benchmarks. Not combinable "
            "with the fault flags (exit 2)."},
    {.name = "no-tokenize",
     OPT_FLAG_FIELD(CFG, no_tokenize),
     .group = G_MACHINE,
     .help = "answer POST /apply-template and /tokenize with 404, as a server without "
             "them (LM Studio)",
     .doc = "Answer `POST /apply-template` and `POST /tokenize` with 404, as a server "
            "without them (LM Studio's REST API); by default lmsim serves them as "
            "llama-server does ([Token counts](#post-apply-template-post-tokenize))."},

    {.name = "fail-rate",
     .arg = "P",
     OPT_DOUBLE_FIELD(CFG, fail_rate),
     .dmin = 0,
     .dmax = 1,
     .def = "0",
     .group = G_FAULTS,
     .help = "fraction of requests failing with 500 Channel Error",
     .doc = "Fraction of requests answered 500 Channel Error."},
    {.name = "crash-after",
     .arg = "N",
     OPT_UINT_FIELD(CFG, crash_after),
     .min = 0,
     .max = UINT32_MAX,
     .def = "0",
     .group = G_FAULTS,
     .help = "crash the model when the Nth request starts generating; 0: never",
     .doc = "Crash the model when the Nth request starts generating; 0: never."},
    {.name = "crash-exit",
     OPT_FLAG_FIELD(CFG, crash_exit),
     .group = G_FAULTS,
     .help = "exit with status 3 at the crash",
     .doc = "With `--crash-after`: exit with status 3 right after cutting."},
    {.name = "spike-rate",
     .arg = "P",
     OPT_DOUBLE_FIELD(CFG, spike_rate),
     .dmin = 0,
     .dmax = 1,
     .def = "0",
     .group = G_FAULTS,
     .help = "fraction of requests delayed before their first token",
     .doc = "Fraction of requests delayed before prefill."},
    {.name = "spike-ms",
     .arg = "MS",
     OPT_DOUBLE_FIELD(CFG, spike_ms),
     .dmin = 0,
     .dmax = 1e9,
     .def = "1000",
     .group = G_FAULTS,
     .help = "that delay in simulated ms",
     .doc = "That delay, simulated ms."},
    {.name = "malformed-rate",
     .arg = "P",
     OPT_DOUBLE_FIELD(CFG, malformed_rate),
     .dmin = 0,
     .dmax = 1,
     .def = "0",
     .group = G_FAULTS,
     .help = "fraction of streams given one invalid JSON chunk",
     .doc = "Fraction of streamed responses given one invalid chunk."},
    {.name = "refuse-ms",
     .arg = "MS",
     OPT_UINT_FIELD(CFG, refuse_ms),
     .min = 0,
     .max = 3600000,
     .def = "0",
     .group = G_FAULTS,
     .help = "refuse connections for the first MS ms",
     .doc = "Do not listen for the first MS wall-clock ms."},
    {.name = "hang-rate",
     .arg = "P",
     OPT_DOUBLE_FIELD(CFG, hang_rate),
     .dmin = 0,
     .dmax = 1,
     .def = "0",
     .group = G_FAULTS,
     .help = "fraction of requests accepted and never answered",
     .doc = "Fraction of requests accepted and never answered."},
    {.name = "garbage-rate",
     .arg = "P",
     OPT_DOUBLE_FIELD(CFG, garbage_rate),
     .dmin = 0,
     .dmax = 1,
     .def = "0",
     .group = G_FAULTS,
     .help = "fraction of requests answered with garbage",
     .doc = "Fraction of requests answered with garbage."},
    {.name = "garbage-mode",
     .arg = "M",
     OPT_ENUM_FIELD(CFG, garbage_mode),
     .names = simcfg_garbage_modes,
     .def = "any",
     .group = G_FAULTS,
     .help = "what garbage: json, truncate, html, huge or any",
     .doc = "What garbage: invalid JSON, a stream cut mid-event, an HTML error page, a "
            "huge stream, or `any` (one of them, drawn per request)."},
    {.name = "garbage-bytes",
     .arg = "N",
     OPT_UINT64_FIELD(CFG, garbage_bytes),
     .umin = 1,
     .umax = 1ULL << 40,
     .def = "67108864",
     .group = G_FAULTS,
     .help = "length of a 'huge' answer",
     .doc = "Length of a `huge` answer."},
};

static const opt_table simcfg_table = {
    .prog = "lmsim",
    .usage = "usage: lmsim [options]\n"
             "A simulated LM Studio / llama.cpp server on 127.0.0.1 for tests and "
             "benchmarks.\n",
    .epilogue = NULL,
    .specs = simcfg_specs,
    .n = sizeof(simcfg_specs) / sizeof(simcfg_specs[0]),
};

const struct opt_table *simcfg_options(void)
{
    return &simcfg_table;
}

void simcfg_init(sim_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    /* The table's defaults parse (sim/config's test checks), so this
     * cannot fail. */
    opt_defaults(&simcfg_table, cfg);
}

int simcfg_parse(sim_config *cfg, int argc, char **argv, FILE *out, FILE *err)
{
    switch (opt_parse(&simcfg_table, cfg, argc, argv, NULL, err)) {
    case OPT_RUN:
        break;
    case OPT_HELP:
        opt_usage(&simcfg_table, out);
        return 1;
    case OPT_VERSION:
        fprintf(out, "lmsim %s\n", LMSIM_VERSION);
        return 1;
    case OPT_MARKDOWN:
        opt_markdown(&simcfg_table, out);
        return 1;
    default:
        return -1;
    }
    /* An instant answer never reaches the engine, where every fault is
     * drawn: accepting both would silently drop the faults. */
    if (cfg->instant &&
        (cfg->fail_rate > 0 || cfg->crash_after > 0 || cfg->spike_rate > 0 ||
         cfg->malformed_rate > 0 || cfg->hang_rate > 0 || cfg->garbage_rate > 0)) {
        fprintf(err, "lmsim: --instant cannot be combined with fault injection\n");
        return -1;
    }
    return 0;
}
