/*
 * num - the one family of strict number parsers (see num.h). strtoll and
 * strtod are lenient (leading space, '+', "0x10", "inf", wrap-around of
 * "-1" in strtoull), so the text is checked character by character first
 * and only the digits are converted.
 */
#include "scheduler/util/num.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* 2^64 as a double: the first value that does not fit in uint64_t. */
#define NUM_TWO_POW_64 18446744073709551616.0

static bool num_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Accumulates the decimal digits at *pp into *v, advancing *pp past them.
 * Returns the number of digits, or -1 on overflow of uint64_t. */
static int num_digits(const char **pp, uint64_t *v)
{
    const char *p = *pp;
    int n = 0;
    for (; num_digit(*p); p++, n++) {
        uint64_t d = (uint64_t)(*p - '0');
        if (*v > (UINT64_MAX - d) / 10)
            return -1;
        *v = *v * 10 + d;
    }
    *pp = p;
    return n;
}

int num_parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
    const char *p = s;
    uint64_t v = 0;
    if (s == NULL || out == NULL || num_digits(&p, &v) <= 0 || *p != '\0')
        return -1;
    if (v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

int num_parse_ll(const char *s, long long lo, long long hi, long long *out)
{
    const char *p = s;
    uint64_t mag = 0;
    bool neg = false;
    long long v;

    if (s == NULL || out == NULL)
        return -1;
    if (*p == '-') {
        neg = true;
        p++;
    }
    if (num_digits(&p, &mag) <= 0 || *p != '\0')
        return -1;
    if (neg) {
        /* -LLONG_MIN does not exist: compare magnitudes. */
        if (mag > (uint64_t)LLONG_MAX + 1)
            return -1;
        v = mag == (uint64_t)LLONG_MAX + 1 ? LLONG_MIN : -(long long)mag;
    } else {
        if (mag > (uint64_t)LLONG_MAX)
            return -1;
        v = (long long)mag;
    }
    if (v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

int num_parse_double(const char *s, double lo, double hi, bool lo_open, bool hi_open,
                     double *out)
{
    const char *p = s;
    int digits = 0;

    if (s == NULL || out == NULL)
        return -1;
    /* The grammar strtod will then read: -?D*(.D*)?(e[-+]?D+)? with at
     * least one mantissa digit. Anything else (space, '+', hex, "inf",
     * "nan", a decimal comma) fails here. */
    if (*p == '-')
        p++;
    for (; num_digit(*p); p++)
        digits++;
    if (*p == '.')
        for (p++; num_digit(*p); p++)
            digits++;
    if (digits == 0)
        return -1;
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '-' || *p == '+')
            p++;
        if (!num_digit(*p))
            return -1;
        while (num_digit(*p))
            p++;
    }
    if (*p != '\0')
        return -1;

    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    /* ERANGE is overflow (HUGE_VAL) or underflow; an underflow to a tiny
     * or zero value is still that number, an overflow is not. */
    if (end != p || !isfinite(v) || (errno == ERANGE && (v > 1.0 || v < -1.0)))
        return -1;
    if (v < lo || v > hi || (lo_open && v == lo) || (hi_open && v == hi))
        return -1;
    *out = v;
    return 0;
}

/* Multiplier of a unit letter, or 0 if c is not one. */
static uint64_t num_unit(char c)
{
    switch (c) {
    case 'k':
    case 'K':
        return 1ULL << 10;
    case 'm':
    case 'M':
        return 1ULL << 20;
    case 'g':
    case 'G':
        return 1ULL << 30;
    case 't':
    case 'T':
        return 1ULL << 40;
    default:
        return 0;
    }
}

int num_parse_size(const char *s, uint64_t *out)
{
    const char *p = s;
    uint64_t whole = 0;
    double frac = 0.0, scale = 1.0;
    bool has_frac = false;

    if (s == NULL || out == NULL)
        return -1;
    /* Digits first: this rejects "", "-1", "+1", " 1" and ".5" up front. */
    if (num_digits(&p, &whole) <= 0)
        return -1;
    if (*p == '.') {
        p++;
        if (!num_digit(*p))
            return -1;
        has_frac = true;
        /* Digits past the 17th cannot change a double; they are still
         * consumed so "1.50000000000000000001G" parses. */
        for (; num_digit(*p); p++) {
            if (scale < 1e17) {
                scale *= 10.0;
                frac += (double)(*p - '0') / scale;
            }
        }
    }

    uint64_t mult = num_unit(*p);
    if (mult != 0) {
        p++;
        if (*p == 'i' || *p == 'I')
            p++;
    } else {
        mult = 1;
    }
    if (*p == 'b' || *p == 'B')
        p++;
    if (*p != '\0')
        return -1;
    /* A fraction of a byte is almost surely a missing unit ("1.5" for 1.5G). */
    if (has_frac && mult == 1)
        return -1;

    if (whole > UINT64_MAX / mult)
        return -1;
    uint64_t v = whole * mult;
    if (has_frac) {
        /* frac < 1 and mult <= 2^40, so this stays far below 2^64. */
        double extra_d = frac * (double)mult;
        uint64_t extra =
            extra_d > 0.0 && extra_d < NUM_TWO_POW_64 ? (uint64_t)extra_d : 0;
        if (v > UINT64_MAX - extra)
            return -1;
        v += extra;
    }
    *out = v;
    return 0;
}

int num_parse_octal(const char *s, unsigned *out)
{
    const char *p = s;
    unsigned v = 0;

    if (s == NULL || out == NULL || *p == '\0')
        return -1;
    for (; *p >= '0' && *p <= '7'; p++) {
        v = v * 8 + (unsigned)(*p - '0');
        if (v > 0177777)
            return -1;
    }
    if (*p != '\0')
        return -1;
    *out = v;
    return 0;
}

const char *num_fmt_size(uint64_t bytes, char *buf, size_t len)
{
    static const char units[] = "KMGT";
    int u = -1;

    if (buf == NULL || len == 0)
        return "";
    while (u < 3 && bytes != 0 && bytes % 1024 == 0) {
        bytes /= 1024;
        u++;
    }
    if (u < 0)
        snprintf(buf, len, "%llu", (unsigned long long)bytes);
    else
        snprintf(buf, len, "%llu%c", (unsigned long long)bytes, units[u]);
    return buf;
}

const char *num_fmt_double(double v, char *buf, size_t len)
{
    if (buf == NULL || len == 0)
        return "";
    /* No libm here (floor): the cast is exact for whole numbers below 1e15. */
    if (v > -1e15 && v < 1e15 && v == (double)(long long)v) {
        snprintf(buf, len, "%.0f", v);
        return buf;
    }
    snprintf(buf, len, "%.15g", v);
    if (strtod(buf, NULL) != v)
        snprintf(buf, len, "%.17g", v);
    return buf;
}
