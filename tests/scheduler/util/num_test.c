/*
 * num_test - the strict number parsers of scheduler/util/num.c: what each
 * accepts, everything strtol/strtod would let through that they must not
 * (space, '+', hex, inf/nan, wrap-around), the exact range bounds, and the
 * formatters that write what the parsers read back.
 */
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "scheduler/util/num.h"

static void test_ll(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        long long v;
    } good[] = {
        {"0", 0},
        {"7", 7},
        {"-1", -1},
        {"1000000", 1000000},
        {"007", 7},
        {"9223372036854775807", LLONG_MAX},
        {"-9223372036854775808", LLONG_MIN},
    };
    static const char *const bad[] = {
        "",
        "-",
        "+1",
        " 1",
        "1 ",
        "1\n",
        "0x10",
        "1e3",
        "1.0",
        "1_000",
        "--1",
        "12a",
        "9223372036854775808",
        "-9223372036854775809",
        "99999999999999999999999",
    };
    long long v;
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        v = 42;
        if (num_parse_ll(good[i].s, LLONG_MIN, LLONG_MAX, &v) != 0)
            fail_msg("rejected '%s'", good[i].s);
        assert_true(v == good[i].v);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        v = 42;
        if (num_parse_ll(bad[i], LLONG_MIN, LLONG_MAX, &v) != -1)
            fail_msg("accepted '%s' as %lld", bad[i], v);
        assert_true(v == 42);
    }
    /* The bounds are inclusive, and nothing outside them passes. */
    v = 42;
    assert_int_equal(num_parse_ll("1", 1, 4096, &v), 0);
    assert_true(v == 1);
    assert_int_equal(num_parse_ll("4096", 1, 4096, &v), 0);
    assert_true(v == 4096);
    assert_int_equal(num_parse_ll("0", 1, 4096, &v), -1);
    assert_int_equal(num_parse_ll("4097", 1, 4096, &v), -1);
    assert_int_equal(num_parse_ll("-2", -1, 10, &v), -1);
    assert_true(v == 4096);
    assert_int_equal(num_parse_ll(NULL, 0, 1, &v), -1);
}

static void test_u64(void **state)
{
    (void)state;
    uint64_t v = 42;
    assert_int_equal(num_parse_u64("18446744073709551615", 0, UINT64_MAX, &v), 0);
    assert_true(v == UINT64_MAX);
    assert_int_equal(num_parse_u64("0", 0, UINT64_MAX, &v), 0);
    assert_true(v == 0);
    /* strtoull takes "-1" as UINT64_MAX; a seed or a count never is. */
    static const char *const bad[] = {"-1",  "-0", "+1", "", " 1", "18446744073709551616",
                                      "1.5", "0x1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        v = 42;
        if (num_parse_u64(bad[i], 0, UINT64_MAX, &v) != -1)
            fail_msg("accepted '%s'", bad[i]);
        assert_true(v == 42);
    }
    assert_int_equal(num_parse_u64("0", 1, 1ULL << 40, &v), -1);
    assert_int_equal(num_parse_u64("1099511627777", 1, 1ULL << 40, &v), -1);
    assert_int_equal(num_parse_u64("1099511627776", 1, 1ULL << 40, &v), 0);
    assert_true(v == 1ULL << 40);
}

static void test_double(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        double v;
    } good[] = {
        {"0.6", 0.6},   {"0.60", 0.6},  {"1", 1.0},      {".5", 0.5},      {"5.", 5.0},
        {"1e-3", 1e-3}, {"2E2", 200.0}, {"1e+2", 100.0}, {"-0.25", -0.25}, {"0", 0.0},
    };
    static const char *const bad[] = {
        "",    "-",        ".",     "e3",    "inf",   "-inf",   "nan",
        "NAN", "infinity", "0x1p3", "0x10",  " 1",    "1 ",     "+1",
        "1,5", "1e",       "1e+",   "1.2.3", "1e400", "-1e400", "1f",
    };
    double v;
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        v = 42;
        if (num_parse_double(good[i].s, -1e9, 1e9, false, false, &v) != 0)
            fail_msg("rejected '%s'", good[i].s);
        assert_true(v == good[i].v);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        v = 42;
        if (num_parse_double(bad[i], -1e300, 1e300, false, false, &v) != -1)
            fail_msg("accepted '%s' as %g", bad[i], v);
        assert_true(v == 42);
    }
    /* (0, 1]: 0 is out, 1 is in. */
    assert_int_equal(num_parse_double("0", 0, 1, true, false, &v), -1);
    assert_int_equal(num_parse_double("0.0", 0, 1, true, false, &v), -1);
    assert_int_equal(num_parse_double("1", 0, 1, true, false, &v), 0);
    assert_true(v == 1.0);
    assert_int_equal(num_parse_double("1.0000001", 0, 1, true, false, &v), -1);
    assert_int_equal(num_parse_double("-0.1", 0, 1, false, false, &v), -1);
    /* [0, 1): the other way round. */
    assert_int_equal(num_parse_double("0", 0, 1, false, true, &v), 0);
    assert_true(v == 0.0);
    assert_int_equal(num_parse_double("1", 0, 1, false, true, &v), -1);
    /* A value too small for a double is that (tiny) number, not an error. */
    assert_int_equal(num_parse_double("1e-400", 0, 1, false, false, &v), 0);
    assert_true(v >= 0.0 && v < 1e-300);
}

static void test_size(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        uint64_t v;
    } good[] = {
        {"0", 0},
        {"4096", 4096},
        {"900B", 900},
        {"4K", 4096},
        {"1k", 1024},
        {"8M", 8ULL << 20},
        {"512MiB", 512ULL << 20},
        {"8GB", 8ULL << 30},
        {"4.5G", (4ULL << 30) + (1ULL << 29)},
        {"2T", 2ULL << 40},
        {"18446744073709551615", UINT64_MAX},
    };
    static const char *const bad[] = {
        "",          "-1",   "+1",  " 1",   "1 ",
        "1.5",       "1.5B", ".5G", "1.G",  "12X",
        "G",         "1GG",  "1e9", "0x10", "18446744073709551616",
        "16777216T",
    };
    uint64_t v;
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        v = 42;
        if (num_parse_size(good[i].s, &v) != 0)
            fail_msg("rejected '%s'", good[i].s);
        assert_true(v == good[i].v);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        v = 42;
        if (num_parse_size(bad[i], &v) != -1)
            fail_msg("accepted '%s'", bad[i]);
        assert_true(v == 42);
    }
}

static void test_octal(void **state)
{
    (void)state;
    unsigned v = 42;
    assert_int_equal(num_parse_octal("0600", &v), 0);
    assert_int_equal(v, 0600);
    assert_int_equal(num_parse_octal("660", &v), 0);
    assert_int_equal(v, 0660);
    assert_int_equal(num_parse_octal("0", &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(num_parse_octal("0177777", &v), 0);
    assert_int_equal(v, 0177777);
    static const char *const bad[] = {
        "",     "0999", "8",     "-1",      "+600",
        " 600", "600 ", "0x1ff", "0200000", "77777777777777777777"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        v = 42;
        if (num_parse_octal(bad[i], &v) != -1)
            fail_msg("accepted '%s'", bad[i]);
        assert_int_equal(v, 42);
    }
}

static void test_fmt(void **state)
{
    (void)state;
    char buf[64];
    static const struct {
        uint64_t v;
        const char *s;
    } sizes[] = {
        {0, "0"},
        {1, "1"},
        {4096, "4K"},
        {4097, "4097"},
        {8ULL << 20, "8M"},
        {1536ULL << 10, "1536K"},
        {1ULL << 40, "1T"},
        {1ULL << 50, "1024T"},
        {UINT64_MAX, "18446744073709551615"},
    };
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        assert_string_equal(num_fmt_size(sizes[i].v, buf, sizeof(buf)), sizes[i].s);
        /* What it writes reads back as the same size. */
        uint64_t back = 0;
        assert_int_equal(num_parse_size(buf, &back), 0);
        assert_true(back == sizes[i].v);
    }
    assert_string_equal(num_fmt_double(0.6, buf, sizeof(buf)), "0.6");
    assert_string_equal(num_fmt_double(1e9, buf, sizeof(buf)), "1000000000");
    assert_string_equal(num_fmt_double(0.001, buf, sizeof(buf)), "0.001");
    assert_string_equal(num_fmt_double(0, buf, sizeof(buf)), "0");
    assert_string_equal(num_fmt_double(-1, buf, sizeof(buf)), "-1");
    static const double round[] = {0.1 + 0.2, 1.0 / 3.0, 1e-300, 123456.789, 1e20};
    for (size_t i = 0; i < sizeof(round) / sizeof(round[0]); i++) {
        double back = 0;
        num_fmt_double(round[i], buf, sizeof(buf));
        assert_int_equal(num_parse_double(buf, -1e308, 1e308, false, false, &back), 0);
        assert_true(back == round[i]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ll),     cmocka_unit_test(test_u64),
        cmocka_unit_test(test_double), cmocka_unit_test(test_size),
        cmocka_unit_test(test_octal),  cmocka_unit_test(test_fmt),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
