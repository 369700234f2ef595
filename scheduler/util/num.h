/*
 * num - strict parsing of numbers typed by people: command-line flags,
 * environment variables. The whole string must be the number, with no
 * leading space, no '+', no hex, no trailing junk; out-of-range values and
 * overflow fail instead of wrapping or saturating. Every function returns 0
 * and sets *out, or -1 and leaves *out untouched. Pure; any thread.
 * Messages are the caller's (util/opt words them for flags).
 */
#ifndef LMSCHED_NUM_H
#define LMSCHED_NUM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A decimal integer in [lo, hi]: "-12", "0", "4096". */
int num_parse_ll(const char *s, long long lo, long long hi, long long *out);

/* A decimal integer in [lo, hi] that may use the whole uint64_t range;
 * never negative ("-1" fails, where strtoull would wrap it). */
int num_parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out);

/* A finite decimal number: "0.6", "45", "1e-3", ".5". lo and hi bound it;
 * with lo_open (hi_open) the bound itself is excluded, so (0, 1] is
 * num_parse_double(s, 0, 1, true, false, &v). NaN, infinities, hex floats
 * and values that overflow a double fail. */
int num_parse_double(const char *s, double lo, double hi, bool lo_open, bool hi_open,
                     double *out);

/* A size in bytes: "123", "900B", "4.5G", "512MiB", "8GB", "1k". K, M, G, T
 * with or without "i" and "B" are all powers of 1024 (so "48GB" is 48 GiB,
 * as macOS reports memory); a fraction needs a unit ("1.5" fails). */
int num_parse_size(const char *s, uint64_t *out);

/* An octal number of at most 0177777 written with the digits 0-7 only
 * ("0600", "660"); the caller checks which bits it allows. */
int num_parse_octal(const char *s, unsigned *out);

/* Writes a size the way num_parse_size reads it, exactly: "4K", "8M",
 * "1536K", "4097". Returns buf. */
const char *num_fmt_size(uint64_t bytes, char *buf, size_t len);

/* Writes a double so that num_parse_double reads back the same value, in
 * the shortest of %.15g / %.17g, and without an exponent for whole numbers
 * below 1e15 ("1000000000", "0.6", "0.001"). Returns buf. */
const char *num_fmt_double(double v, char *buf, size_t len);

#endif /* LMSCHED_NUM_H */
