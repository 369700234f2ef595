/*
 * budget - the memory rule (see budget.h and docs/memory-budget.md): how many
 * predictions may run at once so that the model plus their KV caches stay
 * inside a share of physical RAM. Everything here is arithmetic on numbers
 * the caller supplies, except budget_total_ram, which asks the system.
 *
 * Design notes: sizes are uint64_t bytes. fraction * total is computed in
 * double (a 53-bit mantissa is exact for any real machine's RAM) and clamped
 * before it is converted back, because converting a double >= 2^64 to
 * uint64_t is undefined behaviour. Every subtraction is guarded, every
 * multiplication is checked, so no input can wrap around.
 */
#include "scheduler/memory/budget.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "scheduler/util/num.h"

#ifdef __APPLE__
#include <sys/types.h>
#include <sys/sysctl.h>
#endif

/* 2^64 as a double: the first value that does not fit in uint64_t. */
#define BUDGET_TWO_POW_64 18446744073709551616.0

/* Converts a non-negative double to uint64_t, saturating instead of invoking
 * undefined behaviour for values >= 2^64 (and mapping NaN or negatives to 0). */
static uint64_t budget_d2u(double v)
{
    if (!(v > 0.0))
        return 0;
    if (v >= BUDGET_TWO_POW_64)
        return UINT64_MAX;
    return (uint64_t)v;
}

static int budget_fail(budget_out *out, const char *why)
{
    snprintf(out->explain, sizeof(out->explain), "invalid memory budget inputs: %s", why);
    return -1;
}

int budget_compute(const budget_in *in, budget_out *out)
{
    char total_s[32], model_s[32], usable_s[32], budget_s[32], kv_s[32];

    if (out == NULL)
        return -1;
    memset(out, 0, sizeof(*out));
    out->max_concurrent = 1;
    if (in == NULL)
        return budget_fail(out, "none given");
    if (in->total_ram == 0)
        return budget_fail(out, "total RAM is unknown (0)");
    /* Written so that NaN fails too. */
    if (!(in->ram_fraction > 0.0 && in->ram_fraction <= 1.0)) {
        char why[96];
        snprintf(why, sizeof(why), "RAM fraction %g is outside (0, 1]", in->ram_fraction);
        return budget_fail(out, why);
    }
    if (in->kv_per_request == 0)
        return budget_fail(out, "KV bytes per request is 0");

    double usable_d = in->ram_fraction * (double)in->total_ram;
    uint64_t usable = budget_d2u(usable_d);
    budget_fmt_size(in->total_ram, total_s, sizeof(total_s));
    budget_fmt_size(in->model_size, model_s, sizeof(model_s));
    budget_fmt_size(usable, usable_s, sizeof(usable_s));
    budget_fmt_size(in->kv_per_request, kv_s, sizeof(kv_s));

    /* The rule compares against the exact product, not the truncated one,
     * so "model == fraction * total" is too big whatever the rounding. An
     * unknown model (0) is never too big: 0 >= a positive product is false. */
    if ((double)in->model_size >= usable_d) {
        out->model_too_big = true;
        out->budget_bytes = 0;
        out->fit = 0;
        out->cap = in->max_concurrent ? in->max_concurrent : in->slots;
        out->max_concurrent = 1;
        snprintf(out->explain, sizeof(out->explain),
                 "model %s does not fit in %.2f x %s = %s (use --force to start anyway, "
                 "--ram-fraction to raise the limit)",
                 model_s, in->ram_fraction, total_s, usable_s);
        return 0;
    }

    out->budget_bytes = usable > in->model_size ? usable - in->model_size : 0;
    out->fit = out->budget_bytes / in->kv_per_request;

    /* The user's flag wins over the backend's slots in both directions: it
     * is an explicit cap, and a backend with fewer slots just queues the
     * extra requests itself. */
    const char *cap_from = NULL;
    if (in->max_concurrent != 0) {
        out->cap = in->max_concurrent;
        cap_from = "--max-concurrent";
    } else if (in->slots != 0) {
        out->cap = in->slots;
        cap_from = "backend slots";
    }
    uint64_t upper = out->cap != 0 ? out->cap : UINT_MAX;
    uint64_t n = out->fit;
    if (n < 1)
        n = 1;
    if (n > upper)
        n = upper;
    out->max_concurrent = (unsigned)n;

    budget_fmt_size(out->budget_bytes, budget_s, sizeof(budget_s));
    char tail[128];
    if (out->fit == 0)
        snprintf(tail, sizeof(tail), "at least 1 -> max 1 concurrent");
    else if (cap_from != NULL && out->fit > out->cap)
        snprintf(tail, sizeof(tail), "capped at %u (%s) -> max %u concurrent", out->cap,
                 cap_from, out->max_concurrent);
    else if (cap_from != NULL)
        snprintf(tail, sizeof(tail), "within %u (%s) -> max %u concurrent", out->cap,
                 cap_from, out->max_concurrent);
    else if (out->fit > UINT_MAX)
        snprintf(tail, sizeof(tail),
                 "no slot count known, capped at %u -> max %u concurrent", UINT_MAX,
                 out->max_concurrent);
    else
        snprintf(tail, sizeof(tail), "no slot count known -> max %u concurrent",
                 out->max_concurrent);
    snprintf(out->explain, sizeof(out->explain),
             "budget %.2f x %s - %s%s = %s; KV %s per request fits %llu; %s",
             in->ram_fraction, total_s, model_s,
             in->model_size == 0 ? " (model size unknown)" : "", budget_s, kv_s,
             (unsigned long long)out->fit, tail);
    return 0;
}

uint64_t budget_default_kv_per_request(int64_t context)
{
    if (context <= 0)
        context = BUDGET_DEFAULT_CONTEXT;
    if ((uint64_t)context > UINT64_MAX / BUDGET_DEFAULT_KV_BYTES_PER_TOKEN)
        return UINT64_MAX;
    return (uint64_t)context * BUDGET_DEFAULT_KV_BYTES_PER_TOKEN;
}

/* Accumulates one decimal digit into *v; returns -1 on overflow. */
static int budget_add_digit(uint64_t *v, char c)
{
    uint64_t d = (uint64_t)(c - '0');
    if (*v > (UINT64_MAX - d) / 10)
        return -1;
    *v = *v * 10 + d;
    return 0;
}

int budget_parse_meminfo(const char *text, uint64_t *out)
{
    static const char key[] = "MemTotal:";
    const char *p = text;

    if (text == NULL || out == NULL)
        return -1;
    /* The key must start a line, so "SwapMemTotal:"-like names cannot match. */
    for (;;) {
        if (strncmp(p, key, sizeof(key) - 1) == 0)
            break;
        p = strchr(p, '\n');
        if (p == NULL)
            return -1;
        p++;
    }
    p += sizeof(key) - 1;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p < '0' || *p > '9')
        return -1;
    uint64_t kb = 0;
    for (; *p >= '0' && *p <= '9'; p++)
        if (budget_add_digit(&kb, *p) != 0)
            return -1;
    while (*p == ' ' || *p == '\t')
        p++;
    /* The kernel always prints "kB"; anything else is not the file we know. */
    if (strncmp(p, "kB", 2) != 0 ||
        (p[2] != '\0' && p[2] != '\n' && p[2] != '\r' && p[2] != ' ' && p[2] != '\t'))
        return -1;
    if (kb == 0 || kb > UINT64_MAX / 1024)
        return -1;
    *out = kb * 1024;
    return 0;
}

int budget_total_ram(uint64_t *out)
{
    if (out == NULL)
        return -1;
#if defined(__APPLE__)
    uint64_t mem = 0;
    size_t len = sizeof(mem);
    if (sysctlbyname("hw.memsize", &mem, &len, NULL, 0) != 0 || len != sizeof(mem) ||
        mem == 0)
        return -1;
    *out = mem;
    return 0;
#elif defined(__linux__)
    /* MemTotal is the first line; 8 KiB holds the whole file many times over. */
    char buf[8192];
    FILE *f = fopen("/proc/meminfo", "r");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    return budget_parse_meminfo(buf, out);
#else
    return -1;
#endif
}

int budget_parse_size(const char *s, uint64_t *out)
{
    /* The one size parser is util/num's; this name stays for callers. */
    return num_parse_size(s, out);
}

const char *budget_fmt_size(uint64_t bytes, char *buf, unsigned len)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};

    if (buf == NULL || len == 0)
        return "";
    if (bytes < 1024) {
        snprintf(buf, len, "%u B", (unsigned)bytes);
        return buf;
    }
    unsigned u = 0;
    double v = (double)bytes;
    while (v >= 1024.0 && u + 1 < sizeof(units) / sizeof(units[0])) {
        v /= 1024.0;
        u++;
    }
    /* Move up a unit rather than print "1024.0 MiB" after rounding. */
    if (v >= 1023.95 && u + 1 < sizeof(units) / sizeof(units[0])) {
        v /= 1024.0;
        u++;
    }
    snprintf(buf, len, "%.1f %s", v, units[u]);
    return buf;
}
