/*
 * gguf_test - scheduler/gguf.c: GGUF files written by the test itself (a
 * header, metadata of every value type, vocabularies to skip) are read back
 * into model info and KV bytes per token; damaged and hostile files (every
 * truncation, lying lengths, wrong magic, wrong types) fail with a clear
 * message. Run it under -DLMSCHED_SANITIZE=address,undefined to see that
 * no bad file reads out of bounds or allocates from a declared length.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "scheduler/memory/gguf.h"

/* Value types of the GGUF spec. */
enum {
    T_U8 = 0,
    T_I8 = 1,
    T_U16 = 2,
    T_I16 = 3,
    T_U32 = 4,
    T_I32 = 5,
    T_F32 = 6,
    T_BOOL = 7,
    T_STR = 8,
    T_ARR = 9,
    T_U64 = 10,
    T_I64 = 11,
    T_F64 = 12,
};

static char g_dir[64];
static char g_file[128];
static char g_subdir[128];

/* ---- a tiny GGUF writer ---- */

typedef struct tbuf {
    unsigned char *p;
    size_t len, cap;
} tbuf;

static void put(tbuf *b, const void *d, size_t n)
{
    if (n == 0)
        return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        assert_non_null(b->p);
        b->cap = cap;
    }
    memcpy(b->p + b->len, d, n);
    b->len += n;
}

static void put_le(tbuf *b, uint64_t v, int bytes)
{
    unsigned char x[8];
    for (int i = 0; i < bytes; i++)
        x[i] = (unsigned char)(v >> (8 * i));
    put(b, x, (size_t)bytes);
}

static void put_u32(tbuf *b, uint32_t v)
{
    put_le(b, v, 4);
}

static void put_u64(tbuf *b, uint64_t v)
{
    put_le(b, v, 8);
}

static void put_strn(tbuf *b, const char *s, size_t n)
{
    put_u64(b, n);
    put(b, s, n);
}

static void put_str(tbuf *b, const char *s)
{
    put_strn(b, s, strlen(s));
}

/* A file under construction: the metadata body and its key count. */
typedef struct gfile {
    tbuf kv;
    uint64_t n_kv;
} gfile;

static void key(gfile *g, const char *k, uint32_t type)
{
    put_str(&g->kv, k);
    put_u32(&g->kv, type);
    g->n_kv++;
}

static void kv_u32(gfile *g, const char *k, uint32_t v)
{
    key(g, k, T_U32);
    put_u32(&g->kv, v);
}

static void kv_i32(gfile *g, const char *k, int32_t v)
{
    key(g, k, T_I32);
    put_u32(&g->kv, (uint32_t)v);
}

static void kv_u64(gfile *g, const char *k, uint64_t v)
{
    key(g, k, T_U64);
    put_u64(&g->kv, v);
}

static void kv_str(gfile *g, const char *k, const char *v)
{
    key(g, k, T_STR);
    put_str(&g->kv, v);
}

static void kv_f32(gfile *g, const char *k, float v)
{
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    key(g, k, T_F32);
    put_u32(&g->kv, u);
}

static void kv_arr_i32(gfile *g, const char *k, const int32_t *v, size_t n)
{
    key(g, k, T_ARR);
    put_u32(&g->kv, T_I32);
    put_u64(&g->kv, n);
    for (size_t i = 0; i < n; i++)
        put_u32(&g->kv, (uint32_t)v[i]);
}

/* Values of every other type, and arrays of them, that the reader must
 * skip: a vocabulary, scores, token types, a nested array, scalars. */
static void kv_noise(gfile *g)
{
    char tok[32];
    key(g, "tokenizer.ggml.tokens", T_ARR);
    put_u32(&g->kv, T_STR);
    put_u64(&g->kv, 40);
    for (int i = 0; i < 40; i++) {
        snprintf(tok, sizeof tok, "tok%d", i);
        put_str(&g->kv, tok);
    }
    key(g, "tokenizer.ggml.scores", T_ARR);
    put_u32(&g->kv, T_F32);
    put_u64(&g->kv, 40);
    for (int i = 0; i < 40; i++)
        put_u32(&g->kv, 0x3f800000u);
    key(g, "tokenizer.ggml.merges", T_ARR); /* an array of arrays of strings */
    put_u32(&g->kv, T_ARR);
    put_u64(&g->kv, 2);
    for (int i = 0; i < 2; i++) {
        put_u32(&g->kv, T_STR);
        put_u64(&g->kv, 2);
        put_str(&g->kv, "a");
        put_str(&g->kv, "bc");
    }
    key(g, "tokenizer.ggml.add_bos_token", T_BOOL);
    put_le(&g->kv, 1, 1);
    key(g, "test.u8", T_U8);
    put_le(&g->kv, 7, 1);
    key(g, "test.i8", T_I8);
    put_le(&g->kv, 0xff, 1);
    key(g, "test.u16", T_U16);
    put_le(&g->kv, 7, 2);
    key(g, "test.i16", T_I16);
    put_le(&g->kv, 0xfffe, 2);
    key(g, "test.i64", T_I64);
    put_u64(&g->kv, (uint64_t)-5);
    key(g, "test.f64", T_F64);
    put_u64(&g->kv, 0x3ff0000000000000ULL);
    kv_u64(g, "test.u64", 1ULL << 40);
    key(g, "test.empty", T_ARR);
    put_u32(&g->kv, T_U64);
    put_u64(&g->kv, 0);
}

/* Header + metadata, as a file image. */
static tbuf finish(const gfile *g, uint32_t version)
{
    tbuf out = {0};
    put(&out, "GGUF", 4);
    put_u32(&out, version);
    put_u64(&out, 3); /* tensor infos would follow; the reader stops before them */
    put_u64(&out, g->n_kv);
    put(&out, g->kv.p, g->kv.len);
    return out;
}

static void write_bytes(const void *p, size_t n)
{
    FILE *f = fopen(g_file, "wb");
    assert_non_null(f);
    if (n > 0)
        assert_int_equal(fwrite(p, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

/* Writes g as version `version` and reads it back. */
static int read_back(const gfile *g, uint32_t version, gguf_model_info *mi, char *err,
                     size_t errlen)
{
    tbuf img = finish(g, version);
    write_bytes(img.p, img.len);
    free(img.p);
    return gguf_read_info(g_file, mi, err, errlen);
}

/* Expects reading g to fail with a message containing want. */
static void expect_error(const gfile *g, const char *want)
{
    gguf_model_info mi;
    char err[256];
    assert_int_equal(read_back(g, 3, &mi, err, sizeof err), -1);
    if (strstr(err, want) == NULL)
        fail_msg("error \"%s\" does not contain \"%s\"", err, want);
}

/* A Llama-3-8B-like file: 32 layers, 32 heads over 4096, 8 KV heads. */
static void llama3(gfile *g)
{
    kv_str(g, "general.architecture", "llama");
    kv_str(g, "general.name", "Test Llama 3 8B");
    kv_u32(g, "general.alignment", 32);
    kv_u32(g, "llama.block_count", 32);
    kv_u32(g, "llama.context_length", 8192);
    kv_u32(g, "llama.embedding_length", 4096);
    kv_u32(g, "llama.feed_forward_length", 14336);
    kv_u32(g, "llama.attention.head_count", 32);
    kv_u32(g, "llama.attention.head_count_kv", 8);
    kv_f32(g, "llama.rope.freq_base", 500000.0f);
    kv_f32(g, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    kv_u32(g, "clip.vision.block_count", 99); /* another prefix: ignored */
    kv_str(g, "tokenizer.ggml.model", "gpt2");
    kv_noise(g);
}

static void gfree(gfile *g)
{
    free(g->kv.p);
    memset(g, 0, sizeof *g);
}

/* ---- setup ---- */

static int group_setup(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/gguf_test.XXXXXX");
    if (mkdtemp(g_dir) == NULL)
        return -1;
    snprintf(g_file, sizeof g_file, "%s/model.gguf", g_dir);
    snprintf(g_subdir, sizeof g_subdir, "%s/adir", g_dir);
    return mkdir(g_subdir, 0700);
}

static int group_teardown(void **state)
{
    (void)state;
    unlink(g_file);
    rmdir(g_subdir);
    return rmdir(g_dir);
}

/* ---- tests ---- */

static void test_llama3_f16_q8(void **state)
{
    (void)state;
    gfile g = {0};
    gguf_model_info mi;
    char err[256];
    llama3(&g);
    tbuf img = finish(&g, 3);
    write_bytes(img.p, img.len);
    assert_int_equal(gguf_read_info(g_file, &mi, err, sizeof err), 0);
    assert_string_equal(err, "");
    assert_string_equal(mi.arch, "llama");
    assert_string_equal(mi.name, "Test Llama 3 8B");
    assert_int_equal(mi.n_layer, 32);
    assert_int_equal(mi.n_head, 32);
    assert_int_equal(mi.n_head_kv, 8);
    assert_int_equal(mi.n_embd, 4096);
    assert_int_equal(mi.key_length, 128);
    assert_int_equal(mi.value_length, 128);
    assert_int_equal(mi.context_length, 8192);
    assert_int_equal(mi.file_size, img.len);
    /* 32 layers x 8 heads x (128 + 128) = 65536 elements per token. */
    assert_int_equal(gguf_kv_bytes_per_token(&mi, "f16"), 131072);
    assert_int_equal(gguf_kv_bytes_per_token(&mi, "bf16"), 131072);
    assert_int_equal(gguf_kv_bytes_per_token(&mi, "f32"), 262144);
    assert_int_equal(gguf_kv_bytes_per_token(&mi, "q8_0"), 65536 / 32 * 34);
    assert_int_equal(gguf_kv_bytes_per_token(&mi, "Q8_0"), 69632);
    assert_int_equal(gguf_kv_bytes_per_token(&mi, "q4_0"), 65536 / 32 * 18);
    assert_int_equal(gguf_kv_bytes_per_token(&mi, "q4_1"), 65536 / 32 * 20);
    assert_int_equal(gguf_kv_bytes_per_token(&mi, "q5_0"), 65536 / 32 * 22);
    assert_int_equal(gguf_kv_bytes_per_token(&mi, "q5_1"), 65536 / 32 * 24);
    assert_int_equal(gguf_kv_bytes_per_token(&mi, "q4_k"), 0);
    assert_int_equal(gguf_kv_bytes_per_token(&mi, ""), 0);
    assert_int_equal(gguf_kv_bytes_per_token(&mi, NULL), 0);
    assert_int_equal(gguf_kv_bytes_per_token(NULL, "f16"), 0);
    /* A NULL errbuf is allowed. */
    assert_int_equal(gguf_read_info(g_file, &mi, NULL, 0), 0);
    free(img.p);
    gfree(&g);
}

static void test_versions(void **state)
{
    (void)state;
    gfile g = {0};
    gguf_model_info mi;
    char err[256];
    llama3(&g);
    for (uint32_t v = 2; v <= 3; v++) {
        memset(&mi, 0, sizeof mi);
        assert_int_equal(read_back(&g, v, &mi, err, sizeof err), 0);
        assert_int_equal(gguf_kv_bytes_per_token(&mi, "f16"), 131072);
    }
    assert_int_equal(read_back(&g, 1, &mi, err, sizeof err), -1);
    assert_non_null(strstr(err, "version 1"));
    assert_int_equal(read_back(&g, 4, &mi, err, sizeof err), -1);
    assert_non_null(strstr(err, "version 4"));
    /* A big-endian file's version reads as 0x03000000 here. */
    assert_int_equal(read_back(&g, 0x03000000u, &mi, err, sizeof err), -1);
    assert_non_null(strstr(err, "big-endian"));
    gfree(&g);
}

/* Llama-2-7B: no grouped-query attention, so no head_count_kv key. */
static void test_no_gqa_defaults_to_head_count(void **state)
{
    (void)state;
    gfile g = {0};
    gguf_model_info mi;
    char err[256];
    kv_str(&g, "general.architecture", "llama");
    kv_u32(&g, "llama.block_count", 32);
    kv_u32(&g, "llama.embedding_length", 4096);
    kv_u32(&g, "llama.attention.head_count", 32);
    kv_noise(&g);
    assert_int_equal(read_back(&g, 3, &mi, err, sizeof err), 0);
    assert_int_equal(mi.n_head_kv, 32);
    assert_int_equal(mi.key_length, 128);
    assert_int_equal(mi.value_length, 128);
    assert_int_equal(mi.context_length, -1);
    assert_string_equal(mi.name, "");
    assert_int_equal(gguf_kv_bytes_per_token(&mi, "f16"), 524288);
    assert_int_equal(gguf_kv_bytes_per_token(&mi, "q8_0"), 278528);
    gfree(&g);
}

static void test_explicit_key_value_length(void **state)
{
    (void)state;
    gfile g = {0};
    gguf_model_info mi;
    char err[256];
    /* Head sizes that differ from n_embd / n_head (which would be 128). */
    kv_str(&g, "general.architecture", "qwen3");
    kv_u32(&g, "qwen3.block_count", 2);
    kv_u32(&g, "qwen3.embedding_length", 4096);
    kv_u32(&g, "qwen3.attention.head_count", 32);
    kv_u32(&g, "qwen3.attention.head_count_kv", 4);
    kv_u32(&g, "qwen3.attention.key_length", 192);
    kv_u32(&g, "qwen3.attention.value_length", 96);
    assert_int_equal(read_back(&g, 3, &mi, err, sizeof err), 0);
    assert_int_equal(mi.key_length, 192);
    assert_int_equal(mi.value_length, 96);
    assert_int_equal(gguf_kv_bytes_per_token(&mi, "f16"), 2 * 4 * (192 + 96) * 2);
    gfree(&g);

    /* With both lengths given, embedding_length is not needed. */
    kv_str(&g, "general.architecture", "x");
    kv_u32(&g, "x.block_count", 1);
    kv_u32(&g, "x.attention.head_count", 1);
    kv_u32(&g, "x.attention.key_length", 64);
    kv_u32(&g, "x.attention.value_length", 64);
    assert_int_equal(read_back(&g, 2, &mi, err, sizeof err), 0);
    assert_int_equal(mi.n_embd, -1);
    assert_int_equal(gguf_kv_bytes_per_token(&mi, "f32"), 512);
    gfree(&g);

    /* Only one given: the other defaults. */
    kv_str(&g, "general.architecture", "x");
    kv_u32(&g, "x.block_count", 1);
    kv_u32(&g, "x.embedding_length", 256);
    kv_u32(&g, "x.attention.head_count", 2);
    kv_u32(&g, "x.attention.key_length", 64);
    assert_int_equal(read_back(&g, 3, &mi, err, sizeof err), 0);
    assert_int_equal(mi.key_length, 64);
    assert_int_equal(mi.value_length, 128);
    gfree(&g);
}

/* Some models store head counts per layer; the largest one counts. */
static void test_per_layer_head_count_kv(void **state)
{
    (void)state;
    gfile g = {0};
    gguf_model_info mi;
    char err[256];
    const int32_t kv[4] = {2, 8, 0, 4};
    const int32_t heads[4] = {16, 16, 16, 16};
    kv_str(&g, "general.architecture", "openelm");
    kv_u32(&g, "openelm.block_count", 4);
    kv_u32(&g, "openelm.embedding_length", 2048);
    kv_arr_i32(&g, "openelm.attention.head_count", heads, 4);
    kv_arr_i32(&g, "openelm.attention.head_count_kv", kv, 4);
    assert_int_equal(read_back(&g, 3, &mi, err, sizeof err), 0);
    assert_int_equal(mi.n_head, 16);
    assert_int_equal(mi.n_head_kv, 8);
    assert_int_equal(mi.key_length, 128);
    gfree(&g);

    const int32_t neg[2] = {4, -1};
    kv_str(&g, "general.architecture", "x");
    kv_arr_i32(&g, "x.attention.head_count_kv", neg, 2);
    expect_error(&g, "negative");
    gfree(&g);

    kv_str(&g, "general.architecture", "x");
    kv_arr_i32(&g, "x.attention.head_count_kv", neg, 0);
    expect_error(&g, "empty array");
    gfree(&g);

    /* block_count is one number, never per layer. */
    kv_str(&g, "general.architecture", "x");
    kv_arr_i32(&g, "x.block_count", heads, 4);
    expect_error(&g, "x.block_count has type array");
    gfree(&g);
}

/* The architecture may come after its keys; other prefixes are ignored. */
static void test_key_order_and_prefixes(void **state)
{
    (void)state;
    gfile g = {0};
    gguf_model_info mi;
    char err[256];
    kv_u32(&g, "qwen2.block_count", 7);
    kv_u32(&g, "llama.block_count", 16);
    kv_u32(&g, "llamax.block_count", 3);
    kv_u32(&g, "llama.attention.head_count", 8);
    kv_u32(&g, "llama.embedding_length", 512);
    kv_noise(&g);
    kv_str(&g, "general.name", "late arch");
    kv_str(&g, "general.architecture", "llama");
    assert_int_equal(read_back(&g, 3, &mi, err, sizeof err), 0);
    assert_string_equal(mi.arch, "llama");
    assert_string_equal(mi.name, "late arch");
    assert_int_equal(mi.n_layer, 16);
    assert_int_equal(mi.n_head_kv, 8);
    assert_int_equal(mi.key_length, 64);
    assert_int_equal(gguf_kv_bytes_per_token(&mi, "f16"), 16 * 8 * 128 * 2);
    gfree(&g);
}

static void test_missing_keys(void **state)
{
    (void)state;
    gfile g = {0};

    kv_str(&g, "general.architecture", "llama");
    kv_u32(&g, "llama.embedding_length", 4096);
    kv_u32(&g, "llama.attention.head_count", 32);
    expect_error(&g, "missing llama.block_count");
    gfree(&g);

    kv_str(&g, "general.architecture", "llama");
    kv_u32(&g, "llama.block_count", 32);
    kv_u32(&g, "llama.embedding_length", 4096);
    expect_error(&g, "missing llama.attention.head_count");
    gfree(&g);

    kv_str(&g, "general.architecture", "llama");
    kv_u32(&g, "llama.block_count", 32);
    kv_u32(&g, "llama.attention.head_count", 32);
    expect_error(&g, "missing llama.embedding_length");
    gfree(&g);

    kv_u32(&g, "llama.block_count", 32);
    kv_noise(&g);
    expect_error(&g, "missing general.architecture");
    gfree(&g);

    /* No metadata at all. */
    expect_error(&g, "missing general.architecture");

    /* A key with an embedded NUL must not pass for the one before it. */
    kv_str(&g, "general.architecture", "llama");
    put_strn(&g.kv, "llama.block_count\0x", 19);
    put_u32(&g.kv, T_U32);
    put_u32(&g.kv, 32);
    g.n_kv++;
    kv_u32(&g, "llama.embedding_length", 4096);
    kv_u32(&g, "llama.attention.head_count", 32);
    expect_error(&g, "missing llama.block_count");
    gfree(&g);
}

static void test_bad_values(void **state)
{
    (void)state;
    gfile g = {0};

    kv_str(&g, "general.architecture", "llama");
    kv_f32(&g, "llama.block_count", 32.0f);
    expect_error(&g, "llama.block_count has type float32, expected an integer");
    gfree(&g);

    kv_str(&g, "general.architecture", "llama");
    kv_i32(&g, "llama.attention.head_count", -4);
    expect_error(&g, "llama.attention.head_count = -4 is out of range");
    gfree(&g);

    kv_str(&g, "general.architecture", "llama");
    kv_u32(&g, "llama.block_count", 0);
    expect_error(&g, "llama.block_count = 0 is out of range");
    gfree(&g);

    kv_str(&g, "general.architecture", "llama");
    kv_u64(&g, "llama.block_count", UINT64_MAX);
    expect_error(&g, "out of range");
    gfree(&g);

    kv_str(&g, "general.architecture", "llama");
    kv_u32(&g, "llama.block_count", 1u << 30);
    expect_error(&g, "out of range");
    gfree(&g);

    kv_str(&g, "general.architecture", "llama");
    kv_u32(&g, "llama.block_count", 32);
    kv_u32(&g, "llama.block_count", 40);
    expect_error(&g, "duplicate key llama.block_count");
    gfree(&g);

    kv_str(&g, "general.architecture", "llama");
    kv_str(&g, "general.architecture", "qwen2");
    expect_error(&g, "duplicate key general.architecture");
    gfree(&g);

    kv_str(&g, "general.architecture", "llama");
    key(&g, "x.bad", 13);
    put_u32(&g.kv, 0);
    expect_error(&g, "bad value type 13 at metadata key 1 (x.bad)");
    gfree(&g);

    kv_u32(&g, "general.architecture", 1);
    expect_error(&g, "general.architecture has type uint32, expected a string");
    gfree(&g);

    kv_str(&g, "general.architecture", "");
    expect_error(&g, "not a valid name");
    gfree(&g);

    kv_str(&g, "general.architecture", "ll\nama");
    expect_error(&g, "\"ll?ama\"");
    gfree(&g);

    kv_str(&g, "general.architecture",
           "a-name-of-sixty-four-bytes-is-too-long-for-the-arch-field-xxxxxx");
    expect_error(&g, "(64 bytes) is not a valid name");
    gfree(&g);

    /* embedding_length smaller than the head count gives a head size of 0. */
    kv_str(&g, "general.architecture", "llama");
    kv_u32(&g, "llama.block_count", 2);
    kv_u32(&g, "llama.embedding_length", 4);
    kv_u32(&g, "llama.attention.head_count", 8);
    expect_error(&g, "smaller than");
    gfree(&g);
}

/* Every proper prefix of a valid file fails cleanly, never crashes. */
static void test_truncation_every_prefix(void **state)
{
    (void)state;
    gfile g = {0};
    gguf_model_info mi;
    char err[256];
    llama3(&g);
    tbuf img = finish(&g, 3);
    for (size_t n = 0; n < img.len; n++) {
        write_bytes(img.p, n);
        err[0] = 'x';
        err[1] = '\0';
        if (gguf_read_info(g_file, &mi, err, sizeof err) != -1)
            fail_msg("prefix of %zu of %zu bytes was accepted", n, img.len);
        const char *want = n < 4 ? "not a GGUF file" : "truncated";
        if (strstr(err, want) == NULL)
            fail_msg("prefix of %zu bytes: \"%s\", wanted \"%s\"", n, err, want);
    }
    write_bytes(img.p, img.len);
    assert_int_equal(gguf_read_info(g_file, &mi, err, sizeof err), 0);
    /* The message names the key being read, once its name is read:
     * 24 header bytes, then key 0 is 8 + 20 name bytes, 4 type bytes and
     * the value's 8-byte length and 5 bytes ("llama"). */
    write_bytes(img.p, 40);
    assert_int_equal(gguf_read_info(g_file, &mi, err, sizeof err), -1);
    assert_string_equal(err, "truncated at metadata key 0");
    write_bytes(img.p, 66);
    assert_int_equal(gguf_read_info(g_file, &mi, err, sizeof err), -1);
    assert_string_equal(err, "truncated at metadata key 0 (general.architecture)");
    write_bytes(img.p, 12);
    assert_int_equal(gguf_read_info(g_file, &mi, err, sizeof err), -1);
    assert_string_equal(err, "truncated in header");
    free(img.p);
    gfree(&g);
}

/* Lengths and counts that lie: errors, and nothing allocated from them
 * (under ASan a multi-gigabyte malloc would abort the test). */
static void test_huge_lengths(void **state)
{
    (void)state;
    gfile g = {0};

    kv_str(&g, "general.architecture", "llama");
    key(&g, "general.name", T_STR);
    put_u64(&g.kv, 1ULL << 62);
    expect_error(&g, "string of 4611686018427387904 bytes at metadata key 1");
    gfree(&g);

    kv_str(&g, "general.architecture", "llama");
    key(&g, "a.string", T_STR);
    put_u64(&g.kv, (1u << 20) + 1);
    expect_error(&g, "exceeds the 1048576-byte cap");
    gfree(&g);

    /* Under the cap but longer than the file. */
    kv_str(&g, "general.architecture", "llama");
    key(&g, "a.string", T_STR);
    put_u64(&g.kv, 1u << 20);
    expect_error(&g, "truncated at metadata key 1 (a.string)");
    gfree(&g);

    put_u64(&g.kv, 1ULL << 40);
    g.n_kv = 1;
    expect_error(&g, "key of 1099511627776 bytes");
    gfree(&g);

    kv_str(&g, "general.architecture", "llama");
    key(&g, "big.array", T_ARR);
    put_u32(&g.kv, T_U8);
    put_u64(&g.kv, 1ULL << 40);
    expect_error(&g, "exceeds the 100000000-element cap");
    gfree(&g);

    kv_str(&g, "general.architecture", "llama");
    key(&g, "big.array", T_ARR);
    put_u32(&g.kv, T_U64);
    put_u64(&g.kv, 99999999);
    expect_error(&g, "truncated at metadata key 1 (big.array)");
    gfree(&g);

    /* 90M strings declared, two present. */
    kv_str(&g, "general.architecture", "llama");
    key(&g, "tokenizer.ggml.tokens", T_ARR);
    put_u32(&g.kv, T_STR);
    put_u64(&g.kv, 90000000);
    put_str(&g.kv, "a");
    put_str(&g.kv, "b");
    expect_error(&g, "truncated at metadata key 1");
    gfree(&g);

    /* A string inside an array lies about its length. */
    kv_str(&g, "general.architecture", "llama");
    key(&g, "tokenizer.ggml.tokens", T_ARR);
    put_u32(&g.kv, T_STR);
    put_u64(&g.kv, 2);
    put_str(&g.kv, "a");
    put_u64(&g.kv, UINT64_MAX);
    expect_error(&g, "cap");
    gfree(&g);

    /* Arrays nested deeper than any real file. */
    kv_str(&g, "general.architecture", "llama");
    key(&g, "deep", T_ARR);
    for (int i = 0; i < 100; i++) {
        put_u32(&g.kv, T_ARR);
        put_u64(&g.kv, 1);
    }
    expect_error(&g, "nested more than 8 deep");
    gfree(&g);

    /* A huge key count with nothing behind it. */
    kv_str(&g, "general.architecture", "llama");
    g.n_kv = UINT64_MAX;
    expect_error(&g, "truncated at metadata key 1");
    gfree(&g);
}

static void test_not_gguf(void **state)
{
    (void)state;
    gguf_model_info mi;
    char err[256];
    static const unsigned char ggml[] = "GGMLxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
    write_bytes(ggml, sizeof ggml - 1);
    assert_int_equal(gguf_read_info(g_file, &mi, err, sizeof err), -1);
    assert_string_equal(err, "not a GGUF file");
    write_bytes("", 0);
    assert_int_equal(gguf_read_info(g_file, &mi, err, sizeof err), -1);
    assert_string_equal(err, "not a GGUF file");

    assert_int_equal(gguf_read_info(g_subdir, &mi, err, sizeof err), -1);
    assert_string_equal(err, "is a directory");

    char missing[192];
    snprintf(missing, sizeof missing, "%s/no-such-file.gguf", g_dir);
    assert_int_equal(gguf_read_info(missing, &mi, err, sizeof err), -1);
    assert_non_null(strstr(err, "cannot open"));

    assert_int_equal(gguf_read_info("/dev/null", &mi, err, sizeof err), -1);
    assert_string_equal(err, "not a regular file");

    assert_int_equal(gguf_read_info(NULL, &mi, err, sizeof err), -1);
    /* A tiny errbuf is cut, still terminated. */
    char small[4];
    assert_int_equal(gguf_read_info(g_subdir, &mi, small, sizeof small), -1);
    assert_string_equal(small, "is ");
}

/* general.name is cut to fit on a character boundary and cleaned. */
static void test_name_sanitized(void **state)
{
    (void)state;
    gfile g = {0};
    gguf_model_info mi;
    char err[256];
    char name[300];
    /* 126 ASCII bytes, then "é" (2 bytes) straddling the 127-byte cut. */
    memset(name, 'n', 126);
    memcpy(name + 126, "\xc3\xa9tail", 7);
    kv_str(&g, "general.architecture", "llama");
    kv_str(&g, "general.name", name);
    kv_u32(&g, "llama.block_count", 1);
    kv_u32(&g, "llama.embedding_length", 64);
    kv_u32(&g, "llama.attention.head_count", 1);
    assert_int_equal(read_back(&g, 3, &mi, err, sizeof err), 0);
    assert_int_equal(strlen(mi.name), 126);
    assert_int_equal(mi.name[125], 'n');
    gfree(&g);

    kv_str(&g, "general.architecture", "llama");
    kv_str(&g, "general.name", "a\x1b[31mb\xc3\xa9");
    kv_u32(&g, "llama.block_count", 1);
    kv_u32(&g, "llama.embedding_length", 64);
    kv_u32(&g, "llama.attention.head_count", 1);
    assert_int_equal(read_back(&g, 3, &mi, err, sizeof err), 0);
    assert_string_equal(mi.name, "a?[31mb\xc3\xa9");
    gfree(&g);
}

static void test_kv_bytes_formula(void **state)
{
    (void)state;
    gguf_model_info mi = {
        .n_layer = 1,
        .n_head = 1,
        .n_head_kv = 1,
        .key_length = 40,
        .value_length = 40,
    };
    /* A row of 40 elements takes two whole 32-element blocks. */
    assert_int_equal(gguf_kv_bytes_per_token(&mi, "q8_0"), 2 * 2 * 34);
    assert_int_equal(gguf_kv_bytes_per_token(&mi, "f16"), 160);
    /* Llama-3-70B: 80 layers, 8 KV heads of 128. */
    mi = (gguf_model_info){
        .n_layer = 80, .n_head_kv = 8, .key_length = 128, .value_length = 128};
    assert_int_equal(gguf_kv_bytes_per_token(&mi, "f16"), 327680);
    mi.n_head_kv = 0;
    assert_int_equal(gguf_kv_bytes_per_token(&mi, "f16"), 0);
    mi.n_head_kv = -8;
    assert_int_equal(gguf_kv_bytes_per_token(&mi, "f16"), 0);
    /* Overflow gives 0, not a wrapped small number. */
    mi = (gguf_model_info){.n_layer = INT64_MAX,
                           .n_head_kv = INT64_MAX,
                           .key_length = INT64_MAX,
                           .value_length = INT64_MAX};
    assert_int_equal(gguf_kv_bytes_per_token(&mi, "f32"), 0);
    mi = (gguf_model_info){.n_layer = 1LL << 50,
                           .n_head_kv = 1LL << 10,
                           .key_length = 1LL << 10,
                           .value_length = 1LL << 10};
    assert_int_equal(gguf_kv_bytes_per_token(&mi, "f16"), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_llama3_f16_q8),
        cmocka_unit_test(test_versions),
        cmocka_unit_test(test_no_gqa_defaults_to_head_count),
        cmocka_unit_test(test_explicit_key_value_length),
        cmocka_unit_test(test_per_layer_head_count_kv),
        cmocka_unit_test(test_key_order_and_prefixes),
        cmocka_unit_test(test_missing_keys),
        cmocka_unit_test(test_bad_values),
        cmocka_unit_test(test_truncation_every_prefix),
        cmocka_unit_test(test_huge_lengths),
        cmocka_unit_test(test_not_gguf),
        cmocka_unit_test(test_name_sanitized),
        cmocka_unit_test(test_kv_bytes_formula),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
