/*
 * proto_test - the wire format: round trips of every message kind, the exact
 * bytes shown in docs/protocol.md, a table of rejected inputs (each checked
 * for its error code, the field it names and the message text), truncation
 * at every length, structural attacks on the msgpack layer, and a fixed-seed
 * mutation loop meant to run under ASan.
 *
 * Bad messages are built with msgpack-c's packer directly, since the encoder
 * under test only writes well-formed ones.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/proto.h"

/* ---- helpers --------------------------------------------------------------- */

/* Small limits so the size checks are reachable with tiny messages. */
static const lms_limits small_lim = {
    .max_msg_bytes = 1 << 20,
    .max_text_bytes = 16,
    .max_name_bytes = 8,
    .max_messages = 3,
    .max_stop = 2,
};

static void pstr(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str_with_body(pk, s, strlen(s));
}

static void pkv_str(msgpack_packer *pk, const char *k, const char *v)
{
    pstr(pk, k);
    pstr(pk, v);
}

static bool is_zeroed(const lms_msg *m)
{
    static const lms_msg zero;
    return memcmp(m, &zero, sizeof(zero)) == 0;
}

/* Encodes m, decodes the bytes back into *out with default limits. */
static void roundtrip(const lms_msg *m, lms_msg *out)
{
    void *buf = NULL;
    size_t len = 0;
    lms_decode_err err;
    int rc;

    assert_int_equal(lms_encode(m, &buf, &len), LMSCHED_OK);
    assert_non_null(buf);
    assert_true(len > 0);
    rc = lms_decode(buf, len, NULL, out, &err);
    if (rc != LMSCHED_OK) {
        fail_msg("decode of an encoded %s failed: %d %s", lms_kind_name(m->kind), rc,
                 err.message);
    }
    assert_int_equal(err.code, LMSCHED_OK);
    assert_int_equal(out->kind, m->kind);
    assert_int_equal(out->version, LMS_PROTO_VERSION);
    assert_true(out->id == m->id);
    free(buf);
}

/* ---- round trips ----------------------------------------------------------- */

static void test_chat_full(void **state)
{
    lms_msg m, out;
    lms_chat_msg msgs[3] = {
        {.role = "user", .content = "Hello, world"},
        {.role = "assistant", .content = "Grüße — ✓ 𝄞"},
        {.role = "user", .content = ""},
    };
    char *stops[2] = {"</s>", "\n\n"};

    lms_msg_init(&m, LMS_KIND_CHAT);
    m.id = UINT64_MAX;
    m.u.chat.system = "You are terse.";
    m.u.chat.messages = msgs;
    m.u.chat.n_messages = 3;
    m.u.chat.model = "qwen2.5-7b-instruct";
    m.u.chat.max_tokens = 1048576;
    m.u.chat.has_temperature = true;
    m.u.chat.temperature = 0.7;
    m.u.chat.has_top_p = true;
    m.u.chat.top_p = 1.0;
    m.u.chat.stop = stops;
    m.u.chat.n_stop = 2;
    m.u.chat.has_seed = true;
    m.u.chat.seed = INT64_MIN;
    m.u.chat.priority = 9;
    m.u.chat.deadline_ms = UINT32_MAX;
    m.u.chat.agent = "planner";
    m.u.chat.client_id = "c-17";

    roundtrip(&m, &out);
    const lms_chat_req *c = &out.u.chat;
    assert_string_equal(c->system, "You are terse.");
    assert_int_equal(c->n_messages, 3);
    for (size_t i = 0; i < 3; i++) {
        assert_string_equal(c->messages[i].role, msgs[i].role);
        assert_string_equal(c->messages[i].content, msgs[i].content);
    }
    assert_string_equal(c->model, "qwen2.5-7b-instruct");
    assert_int_equal(c->max_tokens, 1048576);
    assert_true(c->has_temperature);
    assert_true(c->temperature == 0.7);
    assert_true(c->has_top_p);
    assert_true(c->top_p == 1.0);
    assert_int_equal(c->n_stop, 2);
    assert_string_equal(c->stop[0], "</s>");
    assert_string_equal(c->stop[1], "\n\n");
    assert_true(c->has_seed);
    assert_true(c->seed == INT64_MIN);
    assert_int_equal(c->priority, 9);
    assert_true(c->deadline_ms == UINT32_MAX);
    assert_string_equal(c->agent, "planner");
    assert_string_equal(c->client_id, "c-17");
    lms_msg_fini(&out);
    assert_true(is_zeroed(&out));
}

static void test_chat_minimal(void **state)
{
    lms_msg m, out;
    lms_chat_msg msg = {.role = "user", .content = "hi"};

    lms_msg_init(&m, LMS_KIND_CHAT);
    m.id = 0;
    m.u.chat.system = "";
    m.u.chat.messages = &msg;
    m.u.chat.n_messages = 1;
    m.u.chat.priority = 0;

    roundtrip(&m, &out);
    const lms_chat_req *c = &out.u.chat;
    assert_string_equal(c->system, "");
    assert_int_equal(c->n_messages, 1);
    assert_null(c->model);
    assert_int_equal(c->max_tokens, -1);
    assert_false(c->has_temperature);
    assert_false(c->has_top_p);
    assert_null(c->stop);
    assert_int_equal(c->n_stop, 0);
    assert_false(c->has_seed);
    assert_int_equal(c->priority, 0);
    assert_int_equal(c->deadline_ms, 0);
    assert_null(c->agent);
    assert_null(c->client_id);
    lms_msg_fini(&out);
}

/* A chat from another client's encoder: no priority/deadline (the documented
 * defaults apply), integers in wider or signed encodings, an integer
 * temperature and a float32 top_p. */
static void test_chat_defaults_on_decode(void **state)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    lms_msg out;
    lms_decode_err err;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 8);
    pstr(&pk, "v");
    msgpack_pack_fix_int8(&pk, 1); /* a non-negative signed encoding is fine */
    pkv_str(&pk, "kind", "chat");
    pstr(&pk, "id");
    msgpack_pack_fix_uint64(&pk, 3); /* so is a wider one than needed */
    pstr(&pk, "seed");
    msgpack_pack_fix_int32(&pk, 12345);
    pkv_str(&pk, "system", "s");
    pstr(&pk, "messages");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_map(&pk, 2);
    pkv_str(&pk, "role", "user");
    pkv_str(&pk, "content", "x");
    pstr(&pk, "temperature");
    msgpack_pack_int64(&pk, 2);
    pstr(&pk, "top_p");
    msgpack_pack_float(&pk, 0.5f);

    assert_int_equal(lms_decode(sb.data, sb.size, NULL, &out, &err), LMSCHED_OK);
    assert_int_equal(out.u.chat.priority, 5);
    assert_int_equal(out.u.chat.deadline_ms, 0);
    assert_int_equal(out.u.chat.max_tokens, -1);
    assert_true(out.u.chat.has_temperature);
    assert_true(out.u.chat.temperature == 2.0);
    assert_true(out.u.chat.has_top_p);
    assert_true(out.u.chat.top_p == 0.5);
    assert_true(out.id == 3);
    assert_true(out.u.chat.has_seed);
    assert_true(out.u.chat.seed == 12345);
    lms_msg_fini(&out);
    msgpack_sbuffer_destroy(&sb);
}

static void test_chat_reply_full(void **state)
{
    lms_msg m, out;

    lms_msg_init(&m, LMS_KIND_CHAT_REPLY);
    m.id = 77;
    m.u.chat_reply.content = "The answer is 42.";
    m.u.chat_reply.finish_reason = "stop";
    m.u.chat_reply.model = "llama-3.1-8b";
    m.u.chat_reply.usage.prompt_tokens = 1234;
    m.u.chat_reply.usage.completion_tokens = 0;
    m.u.chat_reply.usage.cached_tokens = INT64_MAX;
    m.u.chat_reply.timings.queue_ms = 12.5;
    m.u.chat_reply.timings.ttft_ms = 0.25;
    m.u.chat_reply.timings.total_ms = 9876.125;
    m.u.chat_reply.retries = 3;

    roundtrip(&m, &out);
    const lms_chat_reply *r = &out.u.chat_reply;
    assert_string_equal(r->content, "The answer is 42.");
    assert_string_equal(r->finish_reason, "stop");
    assert_string_equal(r->model, "llama-3.1-8b");
    assert_true(r->usage.prompt_tokens == 1234);
    assert_true(r->usage.completion_tokens == 0);
    assert_true(r->usage.cached_tokens == INT64_MAX);
    assert_true(r->timings.queue_ms == 12.5);
    assert_true(r->timings.ttft_ms == 0.25);
    assert_true(r->timings.total_ms == 9876.125);
    assert_int_equal(r->retries, 3);
    lms_msg_fini(&out);
}

static void test_chat_reply_minimal(void **state)
{
    lms_msg m, out;

    lms_msg_init(&m, LMS_KIND_CHAT_REPLY);
    assert_true(m.u.chat_reply.usage.prompt_tokens == -1);
    m.id = 1;
    m.u.chat_reply.content = "";
    m.u.chat_reply.finish_reason = "length";
    /* Only one usage count known: the others must stay unknown. */
    m.u.chat_reply.usage.completion_tokens = 5;

    roundtrip(&m, &out);
    const lms_chat_reply *r = &out.u.chat_reply;
    assert_string_equal(r->content, "");
    assert_string_equal(r->finish_reason, "length");
    assert_null(r->model);
    assert_true(r->usage.prompt_tokens == -1);
    assert_true(r->usage.completion_tokens == 5);
    assert_true(r->usage.cached_tokens == -1);
    assert_int_equal(r->retries, 0);
    lms_msg_fini(&out);

    /* No usage at all: the key is left out and every count stays -1. */
    m.u.chat_reply.usage.completion_tokens = -1;
    roundtrip(&m, &out);
    assert_true(out.u.chat_reply.usage.prompt_tokens == -1);
    assert_true(out.u.chat_reply.usage.completion_tokens == -1);
    assert_true(out.u.chat_reply.usage.cached_tokens == -1);
    lms_msg_fini(&out);
}

static void test_status_and_status_reply(void **state)
{
    lms_msg m, out;

    lms_msg_init(&m, LMS_KIND_STATUS);
    m.id = 123456789012345ull;
    roundtrip(&m, &out);
    lms_msg_fini(&out);

    lms_msg_init(&m, LMS_KIND_STATUS_REPLY);
    m.id = 9;
    m.u.status_reply.json = "{\"queue\":[],\"ok\":true}";
    roundtrip(&m, &out);
    assert_string_equal(out.u.status_reply.json, "{\"queue\":[],\"ok\":true}");
    lms_msg_fini(&out);
}

static void test_error_reply(void **state)
{
    lms_msg m, out;
    void *buf = NULL;
    size_t len = 0;

    lms_msg_init(&m, LMS_KIND_ERROR);
    m.id = 5;
    m.u.error.code = LMSCHED_EBUSY;
    m.u.error.message = "scheduler queue is full";
    roundtrip(&m, &out);
    assert_int_equal(out.u.error.code, LMSCHED_EBUSY);
    assert_string_equal(out.u.error.message, "scheduler queue is full");
    assert_null(out.u.error.field);
    lms_msg_fini(&out);

    /* A code this build does not know still decodes (newer daemon). */
    m.u.error.code = UINT32_MAX;
    m.u.error.field = "messages[0].content";
    roundtrip(&m, &out);
    assert_true(out.u.error.code == UINT32_MAX);
    assert_string_equal(out.u.error.field, "messages[0].content");
    lms_msg_fini(&out);

    assert_int_equal(lms_encode_error(88, LMSCHED_EPROTO, "bad", "system", &buf, &len),
                     LMSCHED_OK);
    assert_int_equal(lms_decode(buf, len, NULL, &out, NULL), LMSCHED_OK);
    assert_int_equal(out.kind, LMS_KIND_ERROR);
    assert_true(out.id == 88);
    assert_int_equal(out.u.error.code, LMSCHED_EPROTO);
    assert_string_equal(out.u.error.message, "bad");
    assert_string_equal(out.u.error.field, "system");
    lms_msg_fini(&out);
    free(buf);

    assert_int_equal(lms_encode_error(1, LMSCHED_EINTERNAL, NULL, NULL, &buf, &len),
                     LMSCHED_EINVAL);
}

static void test_encode_rejects_missing_required(void **state)
{
    lms_msg m;
    lms_chat_msg bad_role = {.role = NULL, .content = "x"};
    lms_chat_msg bad_content = {.role = "user", .content = NULL};
    char *stops[1] = {NULL};
    void *buf = (void *)&m;
    size_t len = 99;

    lms_msg_init(&m, LMS_KIND_CHAT);
    assert_int_equal(lms_encode(&m, &buf, &len), LMSCHED_EINVAL); /* system NULL */
    assert_null(buf);
    assert_int_equal(len, 0);
    m.u.chat.system = "";
    m.u.chat.messages = &bad_role;
    m.u.chat.n_messages = 1;
    assert_int_equal(lms_encode(&m, &buf, &len), LMSCHED_EINVAL);
    m.u.chat.messages = &bad_content;
    assert_int_equal(lms_encode(&m, &buf, &len), LMSCHED_EINVAL);
    m.u.chat.messages = NULL;
    assert_int_equal(lms_encode(&m, &buf, &len), LMSCHED_EINVAL);
    m.u.chat.n_messages = 0;
    m.u.chat.stop = stops;
    m.u.chat.n_stop = 1;
    assert_int_equal(lms_encode(&m, &buf, &len), LMSCHED_EINVAL);

    lms_msg_init(&m, LMS_KIND_CHAT_REPLY);
    m.u.chat_reply.finish_reason = "stop";
    assert_int_equal(lms_encode(&m, &buf, &len), LMSCHED_EINVAL);
    m.u.chat_reply.content = "x";
    m.u.chat_reply.finish_reason = NULL;
    assert_int_equal(lms_encode(&m, &buf, &len), LMSCHED_EINVAL);

    lms_msg_init(&m, LMS_KIND_STATUS_REPLY);
    assert_int_equal(lms_encode(&m, &buf, &len), LMSCHED_EINVAL);
    lms_msg_init(&m, LMS_KIND_ERROR);
    assert_int_equal(lms_encode(&m, &buf, &len), LMSCHED_EINVAL);
    lms_msg_init(&m, (lms_kind)42);
    assert_int_equal(lms_encode(&m, &buf, &len), LMSCHED_EINVAL);
    assert_null(buf);
}

/* The bytes shown in docs/protocol.md; if this changes, the doc must too. */
static void test_documented_bytes(void **state)
{
    /* clang-format off */
    static const uint8_t status_bytes[] = {
        0x83, 0xa1, 'v',  0x01, 0xa4, 'k', 'i', 'n', 'd', 0xa6, 's',
        't',  'a',  't',  'u',  's',  0xa2, 'i', 'd', 0x07,
    };
    static const uint8_t chat_bytes[] = {
        0x87, 0xa1, 'v', 0x01, 0xa4, 'k', 'i', 'n', 'd', 0xa4, 'c', 'h', 'a', 't',
        0xa2, 'i', 'd', 0x07, 0xa6, 's', 'y', 's', 't', 'e', 'm', 0xa0,
        0xa8, 'm', 'e', 's', 's', 'a', 'g', 'e', 's', 0x91, 0x82,
        0xa4, 'r', 'o', 'l', 'e', 0xa4, 'u', 's', 'e', 'r',
        0xa7, 'c', 'o', 'n', 't', 'e', 'n', 't', 0xa2, 'h', 'i',
        0xa8, 'p', 'r', 'i', 'o', 'r', 'i', 't', 'y', 0x05,
        0xab, 'd', 'e', 'a', 'd', 'l', 'i', 'n', 'e', '_', 'm', 's', 0x00,
    };
    /* clang-format on */
    lms_msg m;
    lms_chat_msg hi = {.role = "user", .content = "hi"};
    void *buf;
    size_t len;

    lms_msg_init(&m, LMS_KIND_STATUS);
    m.id = 7;
    assert_int_equal(lms_encode(&m, &buf, &len), LMSCHED_OK);
    assert_int_equal(len, sizeof(status_bytes));
    assert_memory_equal(buf, status_bytes, len);
    free(buf);

    lms_msg_init(&m, LMS_KIND_CHAT);
    m.id = 7;
    m.u.chat.system = "";
    m.u.chat.messages = &hi;
    m.u.chat.n_messages = 1;
    assert_int_equal(lms_encode(&m, &buf, &len), LMSCHED_OK);
    assert_int_equal(len, sizeof(chat_bytes));
    assert_memory_equal(buf, chat_bytes, len);
    free(buf);
}

/* ---- the table of rejected inputs ------------------------------------------- */

typedef void (*val_fn)(msgpack_packer *pk);
typedef struct kv {
    const char *key;
    val_fn val;
} kv;

/* clang-format off */
static void v_1(msgpack_packer *pk) { msgpack_pack_uint64(pk, 1); }
static void v_7(msgpack_packer *pk) { msgpack_pack_uint64(pk, 7); }
static void v_0(msgpack_packer *pk) { msgpack_pack_uint64(pk, 0); }
static void v_neg(msgpack_packer *pk) { msgpack_pack_int64(pk, -5); }
static void v_2p32(msgpack_packer *pk) { msgpack_pack_uint64(pk, 1ull << 32); }
static void v_2p63(msgpack_packer *pk) { msgpack_pack_uint64(pk, 1ull << 63); }
static void v_10(msgpack_packer *pk) { msgpack_pack_uint64(pk, 10); }
static void v_0_f(msgpack_packer *pk) { msgpack_pack_double(pk, 0.0); }
static void v_10_5(msgpack_packer *pk) { msgpack_pack_double(pk, 10.5); }
static void v_1_5(msgpack_packer *pk) { msgpack_pack_double(pk, 1.5); }
static void v_nan(msgpack_packer *pk) { msgpack_pack_double(pk, NAN); }
static void v_mt_big(msgpack_packer *pk) { msgpack_pack_uint64(pk, 1048577); }
static void v_nil(msgpack_packer *pk) { msgpack_pack_nil(pk); }
static void v_true(msgpack_packer *pk) { msgpack_pack_true(pk); }
static void v_empty_arr(msgpack_packer *pk) { msgpack_pack_array(pk, 0); }
static void v_empty_map(msgpack_packer *pk) { msgpack_pack_map(pk, 0); }
static void v_s_chat(msgpack_packer *pk) { pstr(pk, "chat"); }
static void v_s_reply(msgpack_packer *pk) { pstr(pk, "chat_reply"); }
static void v_s_error(msgpack_packer *pk) { pstr(pk, "error"); }
static void v_s_sreply(msgpack_packer *pk) { pstr(pk, "status_reply"); }
static void v_s_bogus(msgpack_packer *pk) { pstr(pk, "bogus"); }
static void v_s_1(msgpack_packer *pk) { pstr(pk, "1"); }
static void v_s_hi(msgpack_packer *pk) { pstr(pk, "hi"); }
static void v_s_17(msgpack_packer *pk) { pstr(pk, "0123456789abcdefX"); }
static void v_s_9(msgpack_packer *pk) { pstr(pk, "123456789"); }
static void v_s_hot(msgpack_packer *pk) { pstr(pk, "hot"); }
static void v_id42(msgpack_packer *pk) { msgpack_pack_uint64(pk, 42); }
/* clang-format on */

static void v_bin(msgpack_packer *pk)
{
    msgpack_pack_bin(pk, 3);
    msgpack_pack_bin_body(pk, "sys", 3);
}

static void v_raw(msgpack_packer *pk, const char *s, size_t n)
{
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

/* clang-format off */
static void v_utf8_bad(msgpack_packer *pk) { v_raw(pk, "ok\xc3\x28", 4); }
static void v_utf8_overlong(msgpack_packer *pk) { v_raw(pk, "\xc0\xaf", 2); }
static void v_utf8_surrogate(msgpack_packer *pk) { v_raw(pk, "\xed\xa0\x80", 3); }
static void v_utf8_cut(msgpack_packer *pk) { v_raw(pk, "\xe2\x82", 2); }
static void v_utf8_big(msgpack_packer *pk) { v_raw(pk, "\xf4\x90\x80\x80", 4); }
/* clang-format on */

static void one_msg(msgpack_packer *pk, const char *role, val_fn content)
{
    msgpack_pack_map(pk, 2);
    pkv_str(pk, "role", role);
    pstr(pk, "content");
    content(pk);
}

static void v_msgs1(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 1);
    one_msg(pk, "user", v_s_hi);
}

static void v_msgs_not_map(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 2);
    one_msg(pk, "user", v_s_hi);
    pstr(pk, "user: hi");
}

static void v_msgs_role_int(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 1);
    msgpack_pack_map(pk, 2);
    pstr(pk, "role");
    msgpack_pack_uint64(pk, 5);
    pkv_str(pk, "content", "hi");
}

static void v_msgs_no_role(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 1);
    msgpack_pack_map(pk, 1);
    pkv_str(pk, "content", "hi");
}

static void v_msgs_content_long(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 1);
    one_msg(pk, "user", v_s_17);
}

static void v_msgs_role_long(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 1);
    msgpack_pack_map(pk, 2);
    pkv_str(pk, "role", "assistant");
    pkv_str(pk, "content", "hi");
}

static void v_msgs_content_int_at_2(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 3);
    one_msg(pk, "user", v_s_hi);
    one_msg(pk, "assistant", v_s_hi);
    one_msg(pk, "user", v_10);
}

static void v_msgs_4(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 4);
    for (int i = 0; i < 4; i++) {
        one_msg(pk, "user", v_s_hi);
    }
}

static void v_msgs_nul(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 1);
    msgpack_pack_map(pk, 2);
    pkv_str(pk, "role", "user");
    pstr(pk, "content");
    v_raw(pk, "a\0b", 3);
}

static void v_msgs_dup(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 1);
    msgpack_pack_map(pk, 3);
    pkv_str(pk, "role", "user");
    pkv_str(pk, "content", "hi");
    pkv_str(pk, "role", "system");
}

static void v_msgs_intkey(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 1);
    msgpack_pack_map(pk, 3);
    pkv_str(pk, "role", "user");
    pkv_str(pk, "content", "hi");
    msgpack_pack_uint64(pk, 1);
    pstr(pk, "x");
}

static void v_stop3(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 3);
    pstr(pk, "a");
    pstr(pk, "b");
    pstr(pk, "c");
}

static void v_stop_int(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 2);
    pstr(pk, "a");
    msgpack_pack_uint64(pk, 1);
}

static void v_usage_neg(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    pstr(pk, "prompt_tokens");
    msgpack_pack_int64(pk, -1);
}

static void v_timings_str(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    pkv_str(pk, "ttft_ms", "fast");
}

static const kv chat_fields[] = {
    {"v", v_1},         {"kind", v_s_chat},    {"id", v_id42},
    {"system", v_s_hi}, {"messages", v_msgs1}, {NULL, NULL},
};
static const kv reply_fields[] = {
    {"v", v_1},          {"kind", v_s_reply},       {"id", v_id42},
    {"content", v_s_hi}, {"finish_reason", v_s_hi}, {NULL, NULL},
};
static const kv error_fields[] = {
    {"v", v_1},     {"kind", v_s_error}, {"id", v_id42},
    {"code", v_10}, {"message", v_s_hi}, {NULL, NULL},
};
static const kv sreply_fields[] = {
    {"v", v_1}, {"kind", v_s_sreply}, {"id", v_id42}, {"status", v_s_hi}, {NULL, NULL},
};

typedef void (*raw_fn)(msgpack_sbuffer *sb);

typedef struct reject_case {
    const char *name;
    const kv *base;   /* the valid message this case starts from; NULL: chat */
    const char *omit; /* drop this key */
    kv set;           /* replace this key's value, or add the key if base lacks it */
    bool add;         /* add set.key even when base has it (a duplicate) */
    raw_fn raw;       /* build the whole buffer instead */
    bool small;       /* decode with small_lim */
    int code;
    const char *field; /* expected err.field */
    const char *msg;   /* expected substring of err.message */
    bool have_id;      /* whether err must carry id 42 */
} reject_case;

static bool kv_has(const kv *base, const char *key)
{
    for (const kv *f = base; f->key != NULL; f++) {
        if (strcmp(f->key, key) == 0) {
            return true;
        }
    }
    return false;
}

static void build_case(const reject_case *c, msgpack_sbuffer *sb)
{
    msgpack_packer pk;
    const kv *base = c->base != NULL ? c->base : chat_fields;
    bool adding = c->set.key != NULL && (c->add || !kv_has(base, c->set.key));
    size_t n = 0;

    if (c->raw != NULL) {
        c->raw(sb);
        return;
    }
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    for (const kv *f = base; f->key != NULL; f++) {
        n += c->omit == NULL || strcmp(c->omit, f->key) != 0;
    }
    msgpack_pack_map(&pk, n + adding);
    for (const kv *f = base; f->key != NULL; f++) {
        if (c->omit != NULL && strcmp(c->omit, f->key) == 0) {
            continue;
        }
        pstr(&pk, f->key);
        if (!adding && c->set.key != NULL && strcmp(c->set.key, f->key) == 0) {
            c->set.val(&pk);
        } else {
            f->val(&pk);
        }
    }
    if (adding) {
        pstr(&pk, c->set.key);
        c->set.val(&pk);
    }
}

static void sb_bytes(msgpack_sbuffer *sb, const void *p, size_t n)
{
    msgpack_sbuffer_write(sb, p, n);
}

static void raw_trailing(msgpack_sbuffer *sb)
{
    static const reject_case valid = {.name = "valid"};
    build_case(&valid, sb);
    sb_bytes(sb, "\xc0", 1);
}

static void raw_top_array(msgpack_sbuffer *sb)
{
    sb_bytes(sb, "\x92\x01\x02", 3);
}

static void raw_top_int(msgpack_sbuffer *sb)
{
    sb_bytes(sb, "\x2a", 1);
}

static void raw_huge_array(msgpack_sbuffer *sb)
{
    /* {"x": array32 of 2^31 elements} in 8 bytes */
    sb_bytes(sb, "\x81\xa1x\xdd\x80\x00\x00\x00", 8);
}

static void raw_huge_map(msgpack_sbuffer *sb)
{
    sb_bytes(sb, "\xdf\xff\xff\xff\xff\xc0", 6);
}

static void raw_huge_str(msgpack_sbuffer *sb)
{
    sb_bytes(sb,
             "\x81\xa1x\xdb\xff\xff\xff\xff"
             "abc",
             11);
}

static void raw_huge_ext(msgpack_sbuffer *sb)
{
    sb_bytes(sb, "\x81\xa1x\xc9\x7f\xff\xff\xff\x01", 9);
}

static void raw_many_values(msgpack_sbuffer *sb)
{
    /* {"x": [nil x (2^20 + 1)]}: small bytes, too many values to unpack */
    size_t n = (1u << 20) + 1;
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 1);
    pstr(&pk, "x");
    msgpack_pack_array(&pk, n);
    for (size_t i = 0; i < n; i++) {
        msgpack_pack_nil(&pk);
    }
}

static void raw_nest100(msgpack_sbuffer *sb)
{
    for (int i = 0; i < 100; i++) {
        sb_bytes(sb, "\x91", 1);
    }
    sb_bytes(sb, "\xc0", 1);
}

static void raw_c1(msgpack_sbuffer *sb)
{
    sb_bytes(sb, "\x81\xa1x\xc1", 4);
}

static void raw_empty(msgpack_sbuffer *sb)
{
    (void)sb;
}

static void raw_top_intkey(msgpack_sbuffer *sb)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 1);
    msgpack_pack_uint64(&pk, 1);
    pstr(&pk, "v");
}

static void raw_big_msg(msgpack_sbuffer *sb)
{
    /* Over the default 16 MiB limit: a valid chat with one 17 MiB content. */
    size_t n = 17u * 1024 * 1024;
    char *big = malloc(n);
    msgpack_packer pk;

    assert_non_null(big);
    memset(big, 'a', n);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 5);
    pkv_str(&pk, "v", "1");
    pkv_str(&pk, "kind", "chat");
    pkv_str(&pk, "id", "1");
    pkv_str(&pk, "system", "");
    pstr(&pk, "messages");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_map(&pk, 2);
    pkv_str(&pk, "role", "user");
    pstr(&pk, "content");
    v_raw(&pk, big, n);
    free(big);
}

/* clang-format off */
static const reject_case reject_cases[] = {
    /* common keys */
    {"wrong version", .set = {"v", v_7}, .code = LMSCHED_EVERSION, .field = "v",
     .msg = "protocol version 7 not supported (this side speaks 1)", .have_id = true},
    {"version 0", .set = {"v", v_0}, .code = LMSCHED_EPROTO, .field = "v",
     .msg = "field 'v'", .have_id = true},
    {"version as string", .set = {"v", v_s_1}, .code = LMSCHED_EPROTO, .field = "v",
     .msg = "field 'v': expected integer, got string", .have_id = true},
    {"missing v", .omit = "v", .code = LMSCHED_EPROTO, .field = "v",
     .msg = "missing required field 'v'", .have_id = true},
    {"unknown kind", .set = {"kind", v_s_bogus}, .code = LMSCHED_EPROTO, .field = "kind",
     .msg = "field 'kind': unknown message kind 'bogus'", .have_id = true},
    {"kind not a string", .set = {"kind", v_10}, .code = LMSCHED_EPROTO, .field = "kind",
     .msg = "field 'kind': expected string, got integer", .have_id = true},
    {"missing kind", .omit = "kind", .code = LMSCHED_EPROTO, .field = "kind",
     .msg = "missing required field 'kind'", .have_id = true},
    {"missing id", .omit = "id", .code = LMSCHED_EPROTO, .field = "id",
     .msg = "missing required field 'id'"},
    {"negative id", .set = {"id", v_neg}, .code = LMSCHED_EPROTO, .field = "id",
     .msg = "field 'id': -5 is out of range"},
    {"id as nil", .set = {"id", v_nil}, .code = LMSCHED_EPROTO, .field = "id",
     .msg = "field 'id': expected integer, got nil"},
    /* chat */
    {"missing system", .omit = "system", .code = LMSCHED_EPROTO, .field = "system",
     .msg = "missing required field 'system'", .have_id = true},
    {"missing messages", .omit = "messages", .code = LMSCHED_EPROTO, .field = "messages",
     .msg = "missing required field 'messages'", .have_id = true},
    {"messages empty", .set = {"messages", v_empty_arr}, .code = LMSCHED_EPROTO,
     .field = "messages", .msg = "field 'messages': needs at least one entry",
     .have_id = true},
    {"messages a map", .set = {"messages", v_empty_map}, .code = LMSCHED_EPROTO,
     .field = "messages", .msg = "field 'messages': expected array, got map",
     .have_id = true},
    {"messages entry not a map", .set = {"messages", v_msgs_not_map},
     .code = LMSCHED_EPROTO, .field = "messages[1]",
     .msg = "field 'messages[1]': expected map, got string", .have_id = true},
    {"role wrong type", .set = {"messages", v_msgs_role_int}, .code = LMSCHED_EPROTO,
     .field = "messages[0].role",
     .msg = "field 'messages[0].role': expected string, got integer", .have_id = true},
    {"role missing", .set = {"messages", v_msgs_no_role}, .code = LMSCHED_EPROTO,
     .field = "messages[0].role", .msg = "missing required field 'messages[0].role'",
     .have_id = true},
    {"content wrong type at index 2", .set = {"messages", v_msgs_content_int_at_2},
     .code = LMSCHED_EPROTO, .field = "messages[2].content",
     .msg = "field 'messages[2].content': expected string, got integer", .have_id = true},
    {"content too long", .set = {"messages", v_msgs_content_long}, .small = true,
     .code = LMSCHED_ETOOLARGE, .field = "messages[0].content",
     .msg = "field 'messages[0].content': 17 bytes exceeds the limit of 16",
     .have_id = true},
    {"role too long", .set = {"messages", v_msgs_role_long}, .small = true,
     .code = LMSCHED_ETOOLARGE, .field = "messages[0].role",
     .msg = "field 'messages[0].role': 9 bytes exceeds the limit of 8", .have_id = true},
    {"too many messages", .set = {"messages", v_msgs_4}, .small = true,
     .code = LMSCHED_ETOOLARGE, .field = "messages",
     .msg = "field 'messages': 4 entries exceeds the limit of 3", .have_id = true},
    {"system too long", .set = {"system", v_s_17}, .small = true,
     .code = LMSCHED_ETOOLARGE, .field = "system", .msg = "field 'system'",
     .have_id = true},
    {"model too long", .set = {"model", v_s_9}, .small = true, .code = LMSCHED_ETOOLARGE,
     .field = "model", .msg = "field 'model': 9 bytes exceeds the limit of 8",
     .have_id = true},
    {"too many stop strings", .set = {"stop", v_stop3}, .small = true,
     .code = LMSCHED_ETOOLARGE, .field = "stop",
     .msg = "field 'stop': 3 entries exceeds the limit of 2", .have_id = true},
    {"stop entry not a string", .set = {"stop", v_stop_int}, .code = LMSCHED_EPROTO,
     .field = "stop[1]", .msg = "field 'stop[1]': expected string, got integer",
     .have_id = true},
    {"priority 10", .set = {"priority", v_10}, .code = LMSCHED_EPROTO, .field = "priority",
     .msg = "field 'priority': 10 is out of range 0..9", .have_id = true},
    {"negative max_tokens", .set = {"max_tokens", v_neg}, .code = LMSCHED_EPROTO,
     .field = "max_tokens", .msg = "field 'max_tokens': -5 is out of range 1..1048576",
     .have_id = true},
    {"max_tokens 0", .set = {"max_tokens", v_0}, .code = LMSCHED_EPROTO,
     .field = "max_tokens", .msg = "field 'max_tokens'", .have_id = true},
    {"max_tokens too big", .set = {"max_tokens", v_mt_big}, .code = LMSCHED_EPROTO,
     .field = "max_tokens", .msg = "field 'max_tokens'", .have_id = true},
    {"max_tokens as float", .set = {"max_tokens", v_0_f}, .code = LMSCHED_EPROTO,
     .field = "max_tokens", .msg = "field 'max_tokens': expected integer, got float",
     .have_id = true},
    {"temperature as string", .set = {"temperature", v_s_hot}, .code = LMSCHED_EPROTO,
     .field = "temperature", .msg = "field 'temperature': expected number, got string",
     .have_id = true},
    {"temperature too high", .set = {"temperature", v_10_5}, .code = LMSCHED_EPROTO,
     .field = "temperature", .msg = "field 'temperature'", .have_id = true},
    {"temperature NaN", .set = {"temperature", v_nan}, .code = LMSCHED_EPROTO,
     .field = "temperature", .msg = "field 'temperature'", .have_id = true},
    {"top_p too high", .set = {"top_p", v_1_5}, .code = LMSCHED_EPROTO, .field = "top_p",
     .msg = "field 'top_p'", .have_id = true},
    {"seed past int64", .set = {"seed", v_2p63}, .code = LMSCHED_EPROTO, .field = "seed",
     .msg = "field 'seed'", .have_id = true},
    {"deadline past uint32", .set = {"deadline_ms", v_2p32}, .code = LMSCHED_EPROTO,
     .field = "deadline_ms", .msg = "field 'deadline_ms'", .have_id = true},
    {"agent as bool", .set = {"agent", v_true}, .code = LMSCHED_EPROTO, .field = "agent",
     .msg = "field 'agent': expected string, got boolean", .have_id = true},
    {"bin instead of str", .set = {"system", v_bin}, .code = LMSCHED_EPROTO,
     .field = "system", .msg = "field 'system': expected string, got binary",
     .have_id = true},
    {"invalid UTF-8", .set = {"system", v_utf8_bad}, .code = LMSCHED_EPROTO,
     .field = "system", .msg = "field 'system': string is not valid UTF-8",
     .have_id = true},
    {"overlong UTF-8", .set = {"client_id", v_utf8_overlong}, .code = LMSCHED_EPROTO,
     .field = "client_id", .msg = "not valid UTF-8", .have_id = true},
    {"UTF-8 surrogate", .set = {"model", v_utf8_surrogate}, .code = LMSCHED_EPROTO,
     .field = "model", .msg = "not valid UTF-8", .have_id = true},
    {"UTF-8 cut short", .set = {"system", v_utf8_cut}, .code = LMSCHED_EPROTO,
     .field = "system", .msg = "not valid UTF-8", .have_id = true},
    {"UTF-8 past U+10FFFF", .set = {"system", v_utf8_big}, .code = LMSCHED_EPROTO,
     .field = "system", .msg = "not valid UTF-8", .have_id = true},
    {"NUL in string", .set = {"messages", v_msgs_nul}, .code = LMSCHED_EPROTO,
     .field = "messages[0].content",
     .msg = "field 'messages[0].content': string contains a NUL byte", .have_id = true},
    {"duplicate key", .set = {"system", v_s_hi}, .add = true, .code = LMSCHED_EPROTO,
     .field = "", .msg = "map '(top level)': duplicate key 'system'"},
    {"duplicate key in a message", .set = {"messages", v_msgs_dup},
     .code = LMSCHED_EPROTO, .field = "messages[0]",
     .msg = "map 'messages[0]': duplicate key 'role'", .have_id = true},
    {"integer key in a message", .set = {"messages", v_msgs_intkey},
     .code = LMSCHED_EPROTO, .field = "messages[0]", .msg = "key 2 has type integer, not string",
     .have_id = true},
    /* chat_reply, status_reply, error */
    {"reply missing finish_reason", .base = reply_fields, .omit = "finish_reason",
     .code = LMSCHED_EPROTO, .field = "finish_reason",
     .msg = "missing required field 'finish_reason'", .have_id = true},
    {"reply negative usage", .base = reply_fields, .set = {"usage", v_usage_neg},
     .code = LMSCHED_EPROTO, .field = "usage.prompt_tokens",
     .msg = "field 'usage.prompt_tokens'", .have_id = true},
    {"reply timings value a string", .base = reply_fields,
     .set = {"timings", v_timings_str}, .code = LMSCHED_EPROTO,
     .field = "timings.ttft_ms",
     .msg = "field 'timings.ttft_ms': expected number, got string", .have_id = true},
    {"reply usage not a map", .base = reply_fields, .set = {"usage", v_empty_arr},
     .code = LMSCHED_EPROTO, .field = "usage",
     .msg = "field 'usage': expected map, got array", .have_id = true},
    {"reply retries too big", .base = reply_fields, .set = {"retries", v_2p32},
     .code = LMSCHED_EPROTO, .field = "retries", .msg = "field 'retries'",
     .have_id = true},
    {"status_reply too long", .base = sreply_fields, .set = {"status", v_s_17},
     .small = true, .code = LMSCHED_ETOOLARGE, .field = "status",
     .msg = "field 'status': 17 bytes exceeds the limit of 16", .have_id = true},
    {"error negative code", .base = error_fields, .set = {"code", v_neg},
     .code = LMSCHED_EPROTO, .field = "code", .msg = "field 'code'", .have_id = true},
    {"error code past uint32", .base = error_fields, .set = {"code", v_2p32},
     .code = LMSCHED_EPROTO, .field = "code", .msg = "field 'code'", .have_id = true},
    {"error missing message", .base = error_fields, .omit = "message",
     .code = LMSCHED_EPROTO, .field = "message",
     .msg = "missing required field 'message'", .have_id = true},
    /* the msgpack layer */
    {"trailing bytes", .raw = raw_trailing, .code = LMSCHED_EPROTO, .field = "",
     .msg = "1 trailing bytes"},
    {"top-level array", .raw = raw_top_array, .code = LMSCHED_EPROTO, .field = "",
     .msg = "message has type array, not map"},
    {"top-level integer", .raw = raw_top_int, .code = LMSCHED_EPROTO, .field = "",
     .msg = "not map"},
    {"top-level integer key", .raw = raw_top_intkey, .code = LMSCHED_EPROTO, .field = "",
     .msg = "key 0 has type integer, not string"},
    {"array of 2^31 in 8 bytes", .raw = raw_huge_array, .code = LMSCHED_EPROTO,
     .field = "", .msg = "declared 2147483648 elements"},
    {"map of 2^32-1 in 6 bytes", .raw = raw_huge_map, .code = LMSCHED_EPROTO,
     .field = "", .msg = "declared 8589934590 elements"},
    {"str32 past the end", .raw = raw_huge_str, .code = LMSCHED_EPROTO, .field = "",
     .msg = "declared length 4294967295"},
    {"ext32 past the end", .raw = raw_huge_ext, .code = LMSCHED_EPROTO, .field = "",
     .msg = "declared length"},
    {"over 2^20 values", .raw = raw_many_values, .code = LMSCHED_ETOOLARGE, .field = "",
     .msg = "message holds more than 1048576 values"},
    {"nesting depth 100", .raw = raw_nest100, .code = LMSCHED_EPROTO, .field = "",
     .msg = "nesting deeper than 16 levels"},
    {"never-used byte 0xc1", .raw = raw_c1, .code = LMSCHED_EPROTO, .field = "",
     .msg = "invalid msgpack byte 0xc1"},
    {"empty buffer", .raw = raw_empty, .code = LMSCHED_EPROTO, .field = "",
     .msg = "truncated"},
    {"message larger than max_msg_bytes", .raw = raw_big_msg, .code = LMSCHED_ETOOLARGE,
     .field = "", .msg = "exceeds the limit of 16777216"},
};
/* clang-format on */

static void test_reject_table(void **state)
{
    for (size_t i = 0; i < sizeof(reject_cases) / sizeof(reject_cases[0]); i++) {
        const reject_case *c = &reject_cases[i];
        msgpack_sbuffer sb;
        lms_msg out;
        lms_decode_err err;
        int rc;

        msgpack_sbuffer_init(&sb);
        build_case(c, &sb);
        memset(&out, 0xa5, sizeof(out)); /* decode must not trust *out */
        rc = lms_decode(sb.data, sb.size, c->small ? &small_lim : NULL, &out, &err);
        msgpack_sbuffer_destroy(&sb);

        if (rc != c->code || err.code != c->code) {
            fail_msg("case '%s': returned %d (err.code %d), want %d; message: %s",
                     c->name, rc, err.code, c->code, err.message);
        }
        if (strcmp(err.field, c->field) != 0) {
            fail_msg("case '%s': field '%s', want '%s'", c->name, err.field, c->field);
        }
        if (strstr(err.message, c->msg) == NULL) {
            fail_msg("case '%s': message \"%s\" lacks \"%s\"", c->name, err.message,
                     c->msg);
        }
        if (err.have_id != c->have_id || (c->have_id && err.id != 42)) {
            fail_msg("case '%s': have_id %d id %llu, want %d", c->name, err.have_id,
                     (unsigned long long)err.id, c->have_id);
        }
        if (!is_zeroed(&out)) {
            fail_msg("case '%s': *out not left finied", c->name);
        }
    }
}

/* ---- other decoder properties ------------------------------------------------ */

static void test_unknown_keys_ignored(void **state)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    lms_msg out;
    lms_decode_err err;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 7);
    pstr(&pk, "future_map");
    msgpack_pack_map(&pk, 2);
    pkv_str(&pk, "a", "b");
    msgpack_pack_uint64(&pk, 7); /* inside an ignored value anything goes */
    msgpack_pack_bin(&pk, 0);
    pstr(&pk, "v");
    msgpack_pack_uint64(&pk, 1);
    pkv_str(&pk, "kind", "chat_reply");
    pstr(&pk, "id");
    msgpack_pack_uint64(&pk, 11);
    pkv_str(&pk, "content", "done");
    pkv_str(&pk, "finish_reason", "stop");
    pstr(&pk, "usage");
    msgpack_pack_map(&pk, 2);
    pstr(&pk, "reasoning_tokens");
    msgpack_pack_uint64(&pk, 99);
    pstr(&pk, "cached_tokens");
    msgpack_pack_uint64(&pk, 10);

    assert_int_equal(lms_decode(sb.data, sb.size, NULL, &out, &err), LMSCHED_OK);
    assert_int_equal(out.kind, LMS_KIND_CHAT_REPLY);
    assert_true(out.id == 11);
    assert_string_equal(out.u.chat_reply.content, "done");
    assert_true(out.u.chat_reply.usage.cached_tokens == 10);
    assert_true(out.u.chat_reply.usage.prompt_tokens == -1);
    lms_msg_fini(&out);
    msgpack_sbuffer_destroy(&sb);

    /* An unknown key inside a chat message entry, and one on a status. */
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 6);
    pstr(&pk, "v");
    msgpack_pack_uint64(&pk, 1);
    pkv_str(&pk, "kind", "chat");
    pstr(&pk, "id");
    msgpack_pack_uint64(&pk, 12);
    pkv_str(&pk, "system", "s");
    pstr(&pk, "messages");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_map(&pk, 3);
    pkv_str(&pk, "role", "user");
    pkv_str(&pk, "name", "alice");
    pkv_str(&pk, "content", "hi");
    pstr(&pk, "stream");
    msgpack_pack_true(&pk);
    assert_int_equal(lms_decode(sb.data, sb.size, NULL, &out, &err), LMSCHED_OK);
    assert_string_equal(out.u.chat.messages[0].content, "hi");
    lms_msg_fini(&out);
    msgpack_sbuffer_destroy(&sb);
}

/* Nesting: 16 levels are accepted (inside an ignored key), 17 are not. */
static void test_nesting_limit(void **state)
{
    for (int depth = 16; depth <= 17; depth++) {
        msgpack_sbuffer sb;
        msgpack_packer pk;
        lms_msg out;
        lms_decode_err err;
        int rc;

        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, 4);
        pstr(&pk, "v");
        msgpack_pack_uint64(&pk, 1);
        pkv_str(&pk, "kind", "status");
        pstr(&pk, "id");
        msgpack_pack_uint64(&pk, 1);
        pstr(&pk, "x");
        for (int i = 1; i < depth; i++) { /* the top map is level 1 */
            msgpack_pack_array(&pk, 1);
        }
        msgpack_pack_nil(&pk);
        rc = lms_decode(sb.data, sb.size, NULL, &out, &err);
        if (depth == 16) {
            assert_int_equal(rc, LMSCHED_OK);
            assert_int_equal(out.kind, LMS_KIND_STATUS);
            lms_msg_fini(&out);
        } else {
            assert_int_equal(rc, LMSCHED_EPROTO);
            assert_non_null(strstr(err.message, "nesting"));
        }
        msgpack_sbuffer_destroy(&sb);
    }
}

/* Many unknown keys take the sorted duplicate check; a duplicate among them
 * is still caught. */
static void test_many_keys(void **state)
{
    for (int with_dup = 0; with_dup <= 1; with_dup++) {
        msgpack_sbuffer sb;
        msgpack_packer pk;
        lms_msg out;
        lms_decode_err err;
        char key[16];
        int rc;

        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, 3 + 200);
        pstr(&pk, "v");
        msgpack_pack_uint64(&pk, 1);
        pkv_str(&pk, "kind", "status");
        pstr(&pk, "id");
        msgpack_pack_uint64(&pk, 5);
        for (int i = 0; i < 200; i++) {
            snprintf(key, sizeof(key), "k%d", (with_dup && i == 150) ? 20 : i);
            pstr(&pk, key);
            msgpack_pack_uint64(&pk, (uint64_t)i);
        }
        rc = lms_decode(sb.data, sb.size, NULL, &out, &err);
        if (with_dup) {
            assert_int_equal(rc, LMSCHED_EPROTO);
            assert_non_null(strstr(err.message, "duplicate key 'k20'"));
        } else {
            assert_int_equal(rc, LMSCHED_OK);
            assert_true(out.id == 5);
            lms_msg_fini(&out);
        }
        msgpack_sbuffer_destroy(&sb);
    }
}

/* A full chat with every optional field, used by the truncation and
 * mutation tests. */
static void encode_full_chat(void **bufp, size_t *lenp)
{
    lms_msg m;
    lms_chat_msg msgs[2] = {{.role = "user", .content = "What is 2+2?"},
                            {.role = "assistant", .content = "4 ✓"}};
    char *stops[1] = {"END"};

    lms_msg_init(&m, LMS_KIND_CHAT);
    m.id = 0x0102030405060708ull;
    m.u.chat.system = "system prompt";
    m.u.chat.messages = msgs;
    m.u.chat.n_messages = 2;
    m.u.chat.model = "m";
    m.u.chat.max_tokens = 300;
    m.u.chat.has_temperature = true;
    m.u.chat.temperature = 0.2;
    m.u.chat.has_top_p = true;
    m.u.chat.top_p = 0.9;
    m.u.chat.stop = stops;
    m.u.chat.n_stop = 1;
    m.u.chat.has_seed = true;
    m.u.chat.seed = -77;
    m.u.chat.priority = 3;
    m.u.chat.deadline_ms = 70000;
    m.u.chat.agent = "a";
    m.u.chat.client_id = "c";
    assert_int_equal(lms_encode(&m, bufp, lenp), LMSCHED_OK);
}

static void test_truncated_every_prefix(void **state)
{
    void *buf;
    size_t len;

    encode_full_chat(&buf, &len);
    for (size_t n = 0; n < len; n++) {
        /* A copy of exactly n bytes so ASan catches any read past the end. */
        uint8_t *p = malloc(n > 0 ? n : 1);
        lms_msg out;
        lms_decode_err err;
        int rc;

        assert_non_null(p);
        memcpy(p, buf, n);
        rc = lms_decode(p, n, NULL, &out, &err);
        if (rc == LMSCHED_OK) {
            fail_msg("prefix of %zu of %zu bytes decoded", n, len);
        }
        assert_int_equal(err.code, rc);
        assert_true(err.message[0] != '\0');
        assert_true(is_zeroed(&out));
        free(p);
    }
    free(buf);
}

/* Fixed-seed xorshift, so a failure reproduces. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void test_mutations(void **state)
{
    enum { N_SEEDS = 4, ITERS = 4000 };
    void *seeds[N_SEEDS];
    size_t lens[N_SEEDS];
    lms_msg m;
    int accepted = 0, rejected = 0;

    encode_full_chat(&seeds[0], &lens[0]);
    lms_msg_init(&m, LMS_KIND_CHAT_REPLY);
    m.id = 3;
    m.u.chat_reply.content = "reply text";
    m.u.chat_reply.finish_reason = "stop";
    m.u.chat_reply.model = "m";
    m.u.chat_reply.usage.prompt_tokens = 10;
    m.u.chat_reply.usage.completion_tokens = 20;
    m.u.chat_reply.usage.cached_tokens = 5;
    m.u.chat_reply.retries = 1;
    assert_int_equal(lms_encode(&m, &seeds[1], &lens[1]), LMSCHED_OK);
    assert_int_equal(
        lms_encode_error(4, LMSCHED_EBUSY, "full", "queue", &seeds[2], &lens[2]),
        LMSCHED_OK);
    lms_msg_init(&m, LMS_KIND_STATUS_REPLY);
    m.u.status_reply.json = "{\"a\":[1,2,3]}";
    assert_int_equal(lms_encode(&m, &seeds[3], &lens[3]), LMSCHED_OK);

    for (int it = 0; it < ITERS; it++) {
        int s = (int)(rng() % N_SEEDS);
        size_t len = lens[s];
        uint8_t *p;
        int flips = 1 + (int)(rng() % 4);
        lms_msg out;
        lms_decode_err err;
        int rc;

        /* Sometimes cut the message short or grow it by a few bytes. */
        switch (rng() % 8) {
        case 0:
            len = (size_t)(rng() % len);
            break;
        case 1:
            len += 1 + (size_t)(rng() % 8);
            break;
        default:
            break;
        }
        p = malloc(len > 0 ? len : 1);
        assert_non_null(p);
        for (size_t i = 0; i < len; i++) {
            p[i] = i < lens[s] ? ((uint8_t *)seeds[s])[i] : (uint8_t)rng();
        }
        for (int f = 0; f < flips && len > 0; f++) {
            size_t at = (size_t)(rng() % len);
            if (rng() % 2) {
                p[at] ^= (uint8_t)(1u << (rng() % 8));
            } else {
                p[at] = (uint8_t)rng();
            }
        }
        rc = lms_decode(p, len, NULL, &out, &err);
        if (rc == LMSCHED_OK) {
            /* Whatever was accepted must encode and decode again. */
            void *again;
            size_t alen;
            lms_msg out2;
            assert_int_equal(lms_encode(&out, &again, &alen), LMSCHED_OK);
            assert_int_equal(lms_decode(again, alen, NULL, &out2, NULL), LMSCHED_OK);
            assert_int_equal(out2.kind, out.kind);
            assert_true(out2.id == out.id);
            lms_msg_fini(&out2);
            lms_msg_fini(&out);
            free(again);
            accepted++;
        } else {
            assert_int_equal(err.code, rc);
            assert_true(err.message[0] != '\0');
            assert_true(is_zeroed(&out));
            rejected++;
        }
        free(p);
    }
    /* Both paths must have been exercised for the loop to mean anything. */
    assert_true(accepted > 0);
    assert_true(rejected > 0);
    for (int i = 0; i < N_SEEDS; i++) {
        free(seeds[i]);
    }
}

/* ---- error names ------------------------------------------------------------- */

static void test_error_strings(void **state)
{
    const char *names[LMSCHED_EAUTH + 1];

    for (int c = LMSCHED_OK; c <= LMSCHED_EAUTH; c++) {
        names[c] = lmsched_err_name(c);
        assert_string_not_equal(names[c], "unknown");
        assert_string_not_equal(lmsched_strerror(c), "unknown error");
        for (int j = 0; j < c; j++) {
            assert_string_not_equal(names[j], names[c]);
        }
    }
    assert_string_equal(lmsched_err_name(LMSCHED_OK), "ok");
    assert_string_equal(lmsched_err_name(LMSCHED_EBACKEND_CRASH), "backend_crash");
    assert_string_equal(lmsched_err_name(LMSCHED_ETOOLARGE), "too_large");
    assert_string_equal(lmsched_strerror(LMSCHED_EBUSY), "scheduler queue is full");
    assert_string_equal(lmsched_strerror(LMSCHED_ENODAEMON),
                        "lmsched daemon is not reachable");
    assert_string_equal(lmsched_err_name(999), "unknown");
    assert_string_equal(lmsched_err_name(-1), "unknown");
    assert_string_equal(lmsched_strerror(999), "unknown error");

    assert_string_equal(lms_kind_name(LMS_KIND_STATUS_REPLY), "status_reply");
    assert_string_equal(lms_kind_name((lms_kind)0), "unknown");
}

static void test_limits_default(void **state)
{
    lms_limits lim;
    lms_limits_default(&lim);
    assert_int_equal(lim.max_msg_bytes, 16u * 1024 * 1024);
    assert_int_equal(lim.max_text_bytes, 4u * 1024 * 1024);
    assert_int_equal(lim.max_name_bytes, 256);
    assert_int_equal(lim.max_messages, 1024);
    assert_int_equal(lim.max_stop, 16);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chat_full),
        cmocka_unit_test(test_chat_minimal),
        cmocka_unit_test(test_chat_defaults_on_decode),
        cmocka_unit_test(test_chat_reply_full),
        cmocka_unit_test(test_chat_reply_minimal),
        cmocka_unit_test(test_status_and_status_reply),
        cmocka_unit_test(test_error_reply),
        cmocka_unit_test(test_encode_rejects_missing_required),
        cmocka_unit_test(test_documented_bytes),
        cmocka_unit_test(test_reject_table),
        cmocka_unit_test(test_unknown_keys_ignored),
        cmocka_unit_test(test_nesting_limit),
        cmocka_unit_test(test_many_keys),
        cmocka_unit_test(test_truncated_every_prefix),
        cmocka_unit_test(test_mutations),
        cmocka_unit_test(test_error_strings),
        cmocka_unit_test(test_limits_default),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
