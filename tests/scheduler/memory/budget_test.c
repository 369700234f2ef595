/*
 * budget_test - the memory rule of scheduler/budget.c: the worked example of
 * docs/memory-budget.md, the clamps, the refusals, overflow safety, and the
 * parsers for /proc/meminfo and size flags.
 */
#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "scheduler/memory/budget.h"

#define KiB (1ULL << 10)
#define MiB (1ULL << 20)
#define GiB (1ULL << 30)

/* The inputs of the worked example: 48 GiB Mac, 8B Q4_K_M (~4.9 GB), 8k
 * context per slot, LM Studio's default 4 parallel slots. */
static budget_in example_in(void)
{
    budget_in in = {
        .total_ram = 48 * GiB,
        .ram_fraction = 0.60,
        .model_size = 4900000000ULL,
        .kv_per_request = budget_default_kv_per_request(8192),
        .slots = 4,
        .max_concurrent = 0,
    };
    return in;
}

static void test_worked_example(void **state)
{
    (void)state;
    budget_in in = example_in();
    budget_out out;

    assert_int_equal(in.kv_per_request, GiB);
    assert_int_equal(budget_compute(&in, &out), 0);
    assert_false(out.model_too_big);
    /* 0.6 * 48 GiB = 30923764531.2 -> 30923764531; minus 4.9e9. */
    assert_int_equal(out.budget_bytes, 30923764531ULL - 4900000000ULL);
    assert_int_equal(out.fit, 24);
    assert_int_equal(out.cap, 4);
    assert_int_equal(out.max_concurrent, 4);
    assert_string_equal(
        out.explain,
        "budget 0.60 x 48.0 GiB - 4.6 GiB = 24.2 GiB; KV 1.0 GiB per request "
        "fits 24; capped at 4 (backend slots) -> max 4 concurrent");

    /* 32k context: 4 GiB per request, 6 fit, still capped by 4 slots. */
    in.kv_per_request = budget_default_kv_per_request(32768);
    assert_int_equal(in.kv_per_request, 4 * GiB);
    assert_int_equal(budget_compute(&in, &out), 0);
    assert_int_equal(out.fit, 6);
    assert_int_equal(out.max_concurrent, 4);

    /* 32k context with 8 slots: the memory rule binds at 6. */
    in.slots = 8;
    assert_int_equal(budget_compute(&in, &out), 0);
    assert_int_equal(out.max_concurrent, 6);
    assert_string_equal(
        out.explain,
        "budget 0.60 x 48.0 GiB - 4.6 GiB = 24.2 GiB; KV 4.0 GiB per request "
        "fits 6; within 8 (backend slots) -> max 6 concurrent");

    /* A 70B Q4 (~40 GB) is refused. */
    in = example_in();
    in.model_size = 40000000000ULL;
    assert_int_equal(budget_compute(&in, &out), 0);
    assert_true(out.model_too_big);
    assert_int_equal(out.budget_bytes, 0);
    assert_int_equal(out.max_concurrent, 1);
    assert_string_equal(out.explain,
                        "model 37.3 GiB does not fit in 0.60 x 48.0 GiB = 28.8 GiB (use "
                        "--force to start anyway, --ram-fraction to raise the limit)");
}

static void test_too_big_message(void **state)
{
    (void)state;
    budget_in in = {.total_ram = 32 * GiB,
                    .ram_fraction = 0.6,
                    .model_size = 30 * GiB,
                    .kv_per_request = GiB};
    budget_out out;
    assert_int_equal(budget_compute(&in, &out), 0);
    assert_true(out.model_too_big);
    assert_string_equal(out.explain,
                        "model 30.0 GiB does not fit in 0.60 x 32.0 GiB = 19.2 GiB (use "
                        "--force to start anyway, --ram-fraction to raise the limit)");
}

static void test_model_equal_to_budget(void **state)
{
    (void)state;
    /* 0.5 * 20 GiB = 10 GiB exactly: a model of exactly that size is too big. */
    budget_in in = {.total_ram = 20 * GiB,
                    .ram_fraction = 0.5,
                    .model_size = 10 * GiB,
                    .kv_per_request = MiB,
                    .slots = 8};
    budget_out out;
    assert_int_equal(budget_compute(&in, &out), 0);
    assert_true(out.model_too_big);
    assert_int_equal(out.budget_bytes, 0);
    assert_int_equal(out.fit, 0);
    assert_int_equal(out.max_concurrent, 1);

    /* One byte less fits, with a 1-byte budget and no room for a request. */
    in.model_size = 10 * GiB - 1;
    assert_int_equal(budget_compute(&in, &out), 0);
    assert_false(out.model_too_big);
    assert_int_equal(out.budget_bytes, 1);
    assert_int_equal(out.fit, 0);
    assert_int_equal(out.max_concurrent, 1);
}

static void test_fit_zero_clamps_to_one(void **state)
{
    (void)state;
    budget_in in = {.total_ram = 16 * GiB,
                    .ram_fraction = 0.6,
                    .model_size = 9 * GiB,
                    .kv_per_request = 2 * GiB,
                    .slots = 4};
    budget_out out;
    /* 9.6 GiB - 9 GiB = 0.6 GiB < one 2 GiB request. */
    assert_int_equal(budget_compute(&in, &out), 0);
    assert_false(out.model_too_big);
    assert_int_equal(out.fit, 0);
    assert_int_equal(out.max_concurrent, 1);
    assert_non_null(strstr(out.explain, "fits 0; at least 1 -> max 1 concurrent"));
}

static void test_slots_and_flag(void **state)
{
    (void)state;
    /* 100 GiB * 0.5 - 0 = 50 GiB, 1 GiB each: 50 fit. */
    budget_in in = {.total_ram = 100 * GiB,
                    .ram_fraction = 0.5,
                    .model_size = 0,
                    .kv_per_request = GiB};
    budget_out out;

    /* Unknown slots, no flag: the fit alone. */
    assert_int_equal(budget_compute(&in, &out), 0);
    assert_int_equal(out.fit, 50);
    assert_int_equal(out.cap, 0);
    assert_int_equal(out.max_concurrent, 50);
    assert_non_null(strstr(out.explain, "(model size unknown)"));
    assert_non_null(strstr(out.explain, "no slot count known -> max 50 concurrent"));

    /* Fit larger than slots: slots. */
    in.slots = 8;
    assert_int_equal(budget_compute(&in, &out), 0);
    assert_int_equal(out.cap, 8);
    assert_int_equal(out.max_concurrent, 8);

    /* The flag below the slots wins. */
    in.max_concurrent = 3;
    assert_int_equal(budget_compute(&in, &out), 0);
    assert_int_equal(out.cap, 3);
    assert_int_equal(out.max_concurrent, 3);
    assert_non_null(
        strstr(out.explain, "capped at 3 (--max-concurrent) -> max 3 concurrent"));

    /* The flag above the slots wins too: it is the user's explicit cap. */
    in.max_concurrent = 20;
    assert_int_equal(budget_compute(&in, &out), 0);
    assert_int_equal(out.cap, 20);
    assert_int_equal(out.max_concurrent, 20);

    /* But never above what fits. */
    in.max_concurrent = 64;
    assert_int_equal(budget_compute(&in, &out), 0);
    assert_int_equal(out.cap, 64);
    assert_int_equal(out.max_concurrent, 50);

    /* And never below 1 even when nothing fits. */
    in.kv_per_request = 60 * GiB;
    in.max_concurrent = 2;
    assert_int_equal(budget_compute(&in, &out), 0);
    assert_int_equal(out.fit, 0);
    assert_int_equal(out.max_concurrent, 1);
}

static void test_fraction_one(void **state)
{
    (void)state;
    budget_in in = {.total_ram = 64 * GiB,
                    .ram_fraction = 1.0,
                    .model_size = 4 * GiB,
                    .kv_per_request = 2 * GiB};
    budget_out out;
    assert_int_equal(budget_compute(&in, &out), 0);
    assert_int_equal(out.budget_bytes, 60 * GiB);
    assert_int_equal(out.fit, 30);
    assert_int_equal(out.max_concurrent, 30);

    in.model_size = 64 * GiB;
    assert_int_equal(budget_compute(&in, &out), 0);
    assert_true(out.model_too_big);
}

static void test_invalid_inputs(void **state)
{
    (void)state;
    const budget_in good = {.total_ram = 8 * GiB,
                            .ram_fraction = 0.6,
                            .model_size = GiB,
                            .kv_per_request = MiB};
    budget_in in;
    budget_out out;

    in = good;
    in.ram_fraction = 0.0;
    assert_int_equal(budget_compute(&in, &out), -1);
    assert_non_null(strstr(out.explain, "fraction"));
    assert_int_equal(out.max_concurrent, 1);

    in.ram_fraction = 1.0000001;
    assert_int_equal(budget_compute(&in, &out), -1);
    in.ram_fraction = -0.5;
    assert_int_equal(budget_compute(&in, &out), -1);
    in.ram_fraction = NAN;
    assert_int_equal(budget_compute(&in, &out), -1);

    in = good;
    in.kv_per_request = 0;
    assert_int_equal(budget_compute(&in, &out), -1);
    assert_non_null(strstr(out.explain, "KV"));

    in = good;
    in.total_ram = 0;
    assert_int_equal(budget_compute(&in, &out), -1);
    assert_non_null(strstr(out.explain, "RAM"));

    assert_int_equal(budget_compute(NULL, &out), -1);
    assert_int_equal(budget_compute(&good, NULL), -1);

    in = good;
    assert_int_equal(budget_compute(&in, &out), 0);
}

static void test_huge_values(void **state)
{
    (void)state;
    budget_out out;

    /* 2^50 bytes of RAM, 1-byte requests: the fit exceeds UINT_MAX. */
    budget_in in = {.total_ram = 1ULL << 50,
                    .ram_fraction = 1.0,
                    .model_size = 1ULL << 49,
                    .kv_per_request = 1};
    assert_int_equal(budget_compute(&in, &out), 0);
    assert_int_equal(out.budget_bytes, 1ULL << 49);
    assert_int_equal(out.fit, 1ULL << 49);
    assert_int_equal(out.max_concurrent, UINT_MAX);

    in.slots = 16;
    assert_int_equal(budget_compute(&in, &out), 0);
    assert_int_equal(out.max_concurrent, 16);

    /* The largest inputs there are: fraction * total rounds to 2^64 as a
     * double and must saturate instead of wrapping. */
    in = (budget_in){.total_ram = UINT64_MAX,
                     .ram_fraction = 1.0,
                     .model_size = 0,
                     .kv_per_request = UINT64_MAX};
    assert_int_equal(budget_compute(&in, &out), 0);
    assert_false(out.model_too_big);
    assert_int_equal(out.budget_bytes, UINT64_MAX);
    assert_int_equal(out.fit, 1);
    assert_int_equal(out.max_concurrent, 1);

    in.model_size = UINT64_MAX;
    assert_int_equal(budget_compute(&in, &out), 0);
    assert_true(out.model_too_big);
    assert_int_equal(out.budget_bytes, 0);

    in.model_size = UINT64_MAX / 2;
    in.kv_per_request = 1;
    assert_int_equal(budget_compute(&in, &out), 0);
    assert_false(out.model_too_big);
    assert_true(out.budget_bytes >= UINT64_MAX / 2);
    assert_int_equal(out.max_concurrent, UINT_MAX);
}

static void test_default_kv(void **state)
{
    (void)state;
    assert_int_equal(budget_default_kv_per_request(8192), 8192ULL * 131072ULL);
    assert_int_equal(budget_default_kv_per_request(0),
                     (uint64_t)BUDGET_DEFAULT_CONTEXT *
                         BUDGET_DEFAULT_KV_BYTES_PER_TOKEN);
    assert_int_equal(budget_default_kv_per_request(-5),
                     (uint64_t)BUDGET_DEFAULT_CONTEXT *
                         BUDGET_DEFAULT_KV_BYTES_PER_TOKEN);
    assert_int_equal(budget_default_kv_per_request(INT64_MAX), UINT64_MAX);
}

static void test_meminfo(void **state)
{
    (void)state;
    const char *real = "MemTotal:       32768000 kB\n"
                       "MemFree:         1234567 kB\n"
                       "MemAvailable:   20000000 kB\n"
                       "Buffers:           12345 kB\n";
    uint64_t v = 0;
    assert_int_equal(budget_parse_meminfo(real, &v), 0);
    assert_int_equal(v, 32768000ULL * 1024);

    /* Not on the first line, tabs, no trailing newline. */
    assert_int_equal(budget_parse_meminfo("Foo: 1 kB\nMemTotal:\t16 kB", &v), 0);
    assert_int_equal(v, 16 * 1024);

    /* Junk. */
    static const char *const junk[] = {
        "",
        "MemFree: 100 kB\n",
        "MemTotal: kB\n",
        "MemTotal: -5 kB\n",
        "MemTotal: 12abc kB\n",
        "MemTotal: 100 MB\n",
        "MemTotal: 100\n",
        "MemTotal: 0 kB\n",
        "XMemTotal: 100 kB\n",
        "MemTotal: 99999999999999999999999 kB\n",
        "MemTotal: 18014398509481984 kB\n", /* 2^54 kB: * 1024 overflows */
        "hello world",
    };
    for (size_t i = 0; i < sizeof(junk) / sizeof(junk[0]); i++) {
        v = 42;
        if (budget_parse_meminfo(junk[i], &v) != -1)
            fail_msg("accepted junk meminfo '%s'", junk[i]);
        assert_int_equal(v, 42);
    }
    assert_int_equal(budget_parse_meminfo(NULL, &v), -1);
}

static void test_total_ram(void **state)
{
    (void)state;
#if defined(__linux__) || defined(__APPLE__)
    uint64_t v = 0;
    assert_int_equal(budget_total_ram(&v), 0);
    /* Any machine that builds this has more than 64 MiB. */
    assert_true(v > 64 * MiB);
#endif
    assert_int_equal(budget_total_ram(NULL), -1);
}

static void test_parse_size(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        uint64_t v;
    } good[] = {
        {"0", 0},
        {"123", 123},
        {"900B", 900},
        {"1k", 1024},
        {"1K", 1024},
        {"1KiB", 1024},
        {"1kb", 1024},
        {"512MiB", 512 * MiB},
        {"512M", 512 * MiB},
        {"8GB", 8 * GiB},
        {"48G", 48 * GiB},
        {"4.5G", 4 * GiB + GiB / 2},
        {"4.5GiB", 4 * GiB + GiB / 2},
        {"0.5k", 512},
        {"2T", 2ULL << 40},
        {"1.25TiB", (1ULL << 40) + (1ULL << 38)},
        {"18446744073709551615", UINT64_MAX},
        {"16777215T", 16777215ULL << 40},
    };
    static const char *const bad[] = {
        "",
        "-1",
        "+1",
        " 1",
        "1 ",
        "1.5.2",
        "12X",
        "G",
        "1GG",
        "1iB",
        "1Gx",
        ".5G",
        "1.G",
        "1.5",
        "1.5B",
        "1e9",
        "18446744073709551616",
        "99999999999999999999999",
        "16777216T",
        "17179869184G",
        "18446744073709551615.5K",
        "0x10",
    };
    uint64_t v;
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        v = 42;
        if (budget_parse_size(good[i].s, &v) != 0)
            fail_msg("rejected '%s'", good[i].s);
        if (v != good[i].v)
            fail_msg("'%s' -> %llu, want %llu", good[i].s, (unsigned long long)v,
                     (unsigned long long)good[i].v);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        v = 42;
        if (budget_parse_size(bad[i], &v) != -1)
            fail_msg("accepted '%s' as %llu", bad[i], (unsigned long long)v);
        assert_int_equal(v, 42);
    }
    assert_int_equal(budget_parse_size(NULL, &v), -1);
}

static void test_fmt_size(void **state)
{
    (void)state;
    static const struct {
        uint64_t v;
        const char *s;
    } t[] = {
        {0, "0 B"},
        {900, "900 B"},
        {1023, "1023 B"},
        {1024, "1.0 KiB"},
        {1536, "1.5 KiB"},
        {512 * MiB, "512.0 MiB"},
        {MiB * 1024 - 1, "1.0 GiB"},
        {4900000000ULL, "4.6 GiB"},
        {48 * GiB, "48.0 GiB"},
        {12 * GiB + 3 * GiB / 10, "12.3 GiB"},
        {3ULL << 40, "3.0 TiB"},
        {UINT64_MAX, "16.0 EiB"},
    };
    char buf[32];
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
        assert_string_equal(budget_fmt_size(t[i].v, buf, sizeof(buf)), t[i].s);

    /* Truncates to the buffer and always terminates. */
    char small[5];
    memset(small, 'x', sizeof(small));
    assert_string_equal(budget_fmt_size(48 * GiB, small, sizeof(small)), "48.0");
    assert_string_equal(budget_fmt_size(1, NULL, 0), "");
    assert_string_equal(budget_fmt_size(1, buf, 0), "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_worked_example),
        cmocka_unit_test(test_too_big_message),
        cmocka_unit_test(test_model_equal_to_budget),
        cmocka_unit_test(test_fit_zero_clamps_to_one),
        cmocka_unit_test(test_slots_and_flag),
        cmocka_unit_test(test_fraction_one),
        cmocka_unit_test(test_invalid_inputs),
        cmocka_unit_test(test_huge_values),
        cmocka_unit_test(test_default_kv),
        cmocka_unit_test(test_meminfo),
        cmocka_unit_test(test_total_ram),
        cmocka_unit_test(test_parse_size),
        cmocka_unit_test(test_fmt_size),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
