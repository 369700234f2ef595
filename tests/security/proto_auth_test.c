/*
 * proto_auth_test - the optional "auth" field of the request messages
 * (docs/protocol.md): encoded only when set, decoded for chat and status,
 * bounded by the name limit, type-checked, and ignored elsewhere.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <msgpack.h>

#include "proto/proto.h"

static void roundtrip(lms_msg *in, lms_msg *out)
{
    void *buf = NULL;
    size_t len = 0;
    lms_decode_err de;
    assert_int_equal(lms_encode(in, &buf, &len), LMSCHED_OK);
    int rc = lms_decode(buf, len, NULL, out, &de);
    if (rc != LMSCHED_OK)
        fail_msg("decode: %s", de.message);
    free(buf);
}

static void test_status_auth(void **state)
{
    (void)state;
    lms_msg in, out;
    lms_msg_init(&in, LMS_KIND_STATUS);
    in.id = 9;
    in.auth = "tok-123";
    roundtrip(&in, &out);
    assert_int_equal(out.kind, LMS_KIND_STATUS);
    assert_string_equal(out.auth, "tok-123");
    lms_msg_fini(&out);
    assert_null(out.auth);

    /* Absent when not set, and then the bytes are those of a plain status. */
    in.auth = NULL;
    void *buf = NULL;
    size_t len = 0;
    assert_int_equal(lms_encode(&in, &buf, &len), LMSCHED_OK);
    assert_int_equal(len, 20);
    assert_int_equal(lms_decode(buf, len, NULL, &out, NULL), LMSCHED_OK);
    assert_null(out.auth);
    lms_msg_fini(&out);
    free(buf);
}

static void test_chat_auth(void **state)
{
    (void)state;
    lms_msg in, out;
    lms_chat_msg msgs[1] = {{.role = "user", .content = "hi"}};
    lms_msg_init(&in, LMS_KIND_CHAT);
    in.id = 7;
    in.auth = "chat-token";
    in.u.chat.system = "";
    in.u.chat.messages = msgs;
    in.u.chat.n_messages = 1;
    in.u.chat.agent = "a";
    roundtrip(&in, &out);
    assert_string_equal(out.auth, "chat-token");
    assert_string_equal(out.u.chat.messages[0].content, "hi");
    assert_string_equal(out.u.chat.agent, "a");
    lms_msg_fini(&out);
}

/* A status message {v, kind, id, auth: <packed by fn>}. */
static void pack_status(msgpack_sbuffer *sb, void (*fn)(msgpack_packer *))
{
    msgpack_packer pk;
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 4);
    msgpack_pack_str_with_body(&pk, "v", 1);
    msgpack_pack_uint8(&pk, 1);
    msgpack_pack_str_with_body(&pk, "kind", 4);
    msgpack_pack_str_with_body(&pk, "status", 6);
    msgpack_pack_str_with_body(&pk, "id", 2);
    msgpack_pack_uint8(&pk, 3);
    msgpack_pack_str_with_body(&pk, "auth", 4);
    fn(&pk);
}

static void pack_int(msgpack_packer *pk)
{
    msgpack_pack_int(pk, 42);
}

static void pack_long(msgpack_packer *pk)
{
    char s[257];
    memset(s, 'a', sizeof(s));
    msgpack_pack_str_with_body(pk, s, sizeof(s));
}

static void pack_max(msgpack_packer *pk)
{
    char s[256];
    memset(s, 'a', sizeof(s));
    msgpack_pack_str_with_body(pk, s, sizeof(s));
}

static void pack_bad_utf8(msgpack_packer *pk)
{
    msgpack_pack_str_with_body(pk, "\xff\xfe", 2);
}

static void test_auth_rejections(void **state)
{
    (void)state;
    struct {
        void (*fn)(msgpack_packer *);
        int code;
    } cases[] = {
        {pack_int, LMSCHED_EPROTO},
        {pack_long, LMSCHED_ETOOLARGE},
        {pack_bad_utf8, LMSCHED_EPROTO},
        {pack_max, LMSCHED_OK},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        msgpack_sbuffer sb;
        lms_msg out;
        lms_decode_err de;
        pack_status(&sb, cases[i].fn);
        int rc = lms_decode(sb.data, sb.size, NULL, &out, &de);
        assert_int_equal(rc, cases[i].code);
        if (rc == LMSCHED_OK) {
            assert_int_equal(strlen(out.auth), 256);
            lms_msg_fini(&out);
        } else {
            assert_string_equal(de.field, "auth");
            /* The reply names the field, never echoes the value. */
            assert_null(strstr(de.message, "aaaa"));
            assert_true(de.have_id);
            assert_int_equal(de.id, 3);
        }
        msgpack_sbuffer_destroy(&sb);
    }
}

/* Replies carry no token: a stray "auth" key is ignored like any unknown
 * key. */
static void test_auth_ignored_in_replies(void **state)
{
    (void)state;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    lms_msg out;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 5);
    msgpack_pack_str_with_body(&pk, "v", 1);
    msgpack_pack_uint8(&pk, 1);
    msgpack_pack_str_with_body(&pk, "kind", 4);
    msgpack_pack_str_with_body(&pk, "status_reply", 12);
    msgpack_pack_str_with_body(&pk, "id", 2);
    msgpack_pack_uint8(&pk, 3);
    msgpack_pack_str_with_body(&pk, "status", 6);
    msgpack_pack_str_with_body(&pk, "{}", 2);
    msgpack_pack_str_with_body(&pk, "auth", 4);
    msgpack_pack_int(&pk, 1);
    assert_int_equal(lms_decode(sb.data, sb.size, NULL, &out, NULL), LMSCHED_OK);
    assert_null(out.auth);
    lms_msg_fini(&out);
    msgpack_sbuffer_destroy(&sb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_auth),
        cmocka_unit_test(test_chat_auth),
        cmocka_unit_test(test_auth_rejections),
        cmocka_unit_test(test_auth_ignored_in_replies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
