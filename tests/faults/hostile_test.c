/*
 * hostile_test - fault 7: malformed and hostile messages sent to the daemon
 * over a raw nng REQ socket (no agentlib in the way): truncated msgpack,
 * wrong types, huge declared lengths, deep nesting, invalid UTF-8, NUL
 * bytes, messages over the size limit, and a few hundred random byte
 * strings. Each gets an error reply or a dropped connection, and a normal
 * agent request afterwards still succeeds.
 */
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>

#include "kit/check.h"
#include "kit/clock.h"
#include "kit/env.h"
#include "kit/json.h"
#include "kit/proc.h"
#include "kit/pstat.h"
#include "lmsched/agent.h"
#include "proto/proto.h"

#define MEM "--total-ram", "64G", "--kv-per-request", "16M"

/* What became of one hostile message. */
typedef struct outcome {
    bool dropped;   /* no reply: the connection was closed on us */
    int code;       /* error code of the reply */
    char field[64]; /* its field, "" if none */
    char message[256];
} outcome;

/* Sends buf on a fresh raw REQ socket and reads the answer. The resend time
 * is infinite, so a dropped connection fails the receive instead of
 * resending the message forever. */
static outcome send_raw(kit_env *e, const void *buf, size_t len)
{
    outcome o;
    memset(&o, 0, sizeof(o));
    nng_socket s;
    assert_int_equal(nng_req0_open(&s), 0);
    nng_socket_set_ms(s, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
    nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 10000);
    nng_socket_set_ms(s, NNG_OPT_SENDTIMEO, 10000);
    assert_int_equal(nng_dial(s, e->url, NULL, 0), 0);
    nng_msg *m = NULL;
    assert_int_equal(nng_msg_alloc(&m, 0), 0);
    assert_int_equal(nng_msg_append(m, buf, len), 0);
    assert_int_equal(nng_sendmsg(s, m, 0), 0);
    nng_msg *reply = NULL;
    int rv = nng_recvmsg(s, &reply, 0);
    if (rv != 0) {
        o.dropped = true;
        snprintf(o.message, sizeof(o.message), "%s", nng_strerror(rv));
    } else {
        lms_msg rm;
        lms_decode_err de;
        assert_int_equal(
            lms_decode(nng_msg_body(reply), nng_msg_len(reply), NULL, &rm, &de),
            LMSCHED_OK);
        /* Never anything but an error reply to garbage. */
        assert_int_equal(rm.kind, LMS_KIND_ERROR);
        o.code = (int)rm.u.error.code;
        snprintf(o.field, sizeof(o.field), "%s",
                 rm.u.error.field ? rm.u.error.field : "");
        snprintf(o.message, sizeof(o.message), "%s", rm.u.error.message);
        lms_msg_fini(&rm);
        nng_msg_free(reply);
    }
    nng_close(s);
    return o;
}

/* A growable byte buffer for building messages by hand. */
typedef struct bbuf {
    unsigned char *p;
    size_t n, cap;
} bbuf;

static void bput(bbuf *b, const void *src, size_t n)
{
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        assert_non_null(b->p);
        b->cap = cap;
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}

static void bstr(bbuf *b, const char *s)
{
    size_t n = strlen(s);
    assert_true(n < 32);
    unsigned char h = (unsigned char)(0xa0 | n);
    bput(b, &h, 1);
    bput(b, s, n);
}

/* str8/str32 header for a string of n bytes that follows. */
static void bstrhdr(bbuf *b, uint32_t n)
{
    unsigned char h[5] = {0xdb, (unsigned char)(n >> 24), (unsigned char)(n >> 16),
                          (unsigned char)(n >> 8), (unsigned char)n};
    bput(b, h, 5);
}

/* {"v":1,"kind":"chat","id":9,"system":<sys>,"messages":[{"role":"user",
 * "content":<content>}]} with sys and content given as raw str bodies. */
static bbuf chat_with(const void *sys, uint32_t sys_len, const void *content,
                      uint32_t clen)
{
    bbuf b = {0};
    unsigned char h;
    h = 0x85;
    bput(&b, &h, 1);
    bstr(&b, "v");
    h = 0x01;
    bput(&b, &h, 1);
    bstr(&b, "kind");
    bstr(&b, "chat");
    bstr(&b, "id");
    h = 0x09;
    bput(&b, &h, 1);
    bstr(&b, "system");
    bstrhdr(&b, sys_len);
    bput(&b, sys, sys_len);
    bstr(&b, "messages");
    h = 0x91;
    bput(&b, &h, 1);
    h = 0x82;
    bput(&b, &h, 1);
    bstr(&b, "role");
    bstr(&b, "user");
    bstr(&b, "content");
    bstrhdr(&b, clen);
    bput(&b, content, clen);
    return b;
}

typedef struct counts {
    int replies, dropped;
    int by_code[32];
} counts;

static void count(counts *c, const outcome *o)
{
    if (o->dropped) {
        c->dropped++;
        return;
    }
    c->replies++;
    if (o->code >= 0 && o->code < 32)
        c->by_code[o->code]++;
}

/* Sends one named case and checks its reply's code (and field, if given). */
static void expect(kit_env *e, counts *c, const char *name, const void *buf, size_t len,
                   int code, const char *field)
{
    outcome o = send_raw(e, buf, len);
    count(c, &o);
    printf("  %-28s -> %s%s%s: %s\n", name,
           o.dropped ? "dropped" : lmsched_err_name(o.code), o.field[0] ? " field " : "",
           o.field, o.message);
    assert_false(o.dropped);
    assert_int_equal(o.code, code);
    if (field)
        assert_string_equal(o.field, field);
}

static void test_hostile_messages(void **state)
{
    kit_env *e = *state;
    const char *sim[] = {"--time-scale", "50", "--model-size", "1073741824", NULL};
    const char *d[] = {MEM, NULL};
    kit_env_start(e, sim, d);
    long rss0 = kit_pstat_rss_kb(e->daemon.pid);
    counts c;
    memset(&c, 0, sizeof(c));

    /* A valid chat, to cut and to compare with. */
    bbuf ok = chat_with("sys", 3, "hi", 2);
    expect(e, &c, "empty message", "", 0, LMSCHED_EPROTO, NULL);
    expect(e, &c, "truncated msgpack", ok.p, ok.n / 2, LMSCHED_EPROTO, NULL);
    bput(&ok, "\xc0", 1);
    expect(e, &c, "trailing bytes", ok.p, ok.n, LMSCHED_EPROTO, NULL);
    free(ok.p);

    /* Wrong types. */
    static const unsigned char sys_int[] =
        "\x85\xa1v\x01\xa4kind\xa4"
        "chat\xa2id\x05\xa6system\x07\xa8messages\x91\x82"
        "\xa4role\xa4user\xa7"
        "content\xa2hi";
    expect(e, &c, "system is an integer", sys_int, sizeof(sys_int) - 1, LMSCHED_EPROTO,
           "system");
    static const unsigned char msgs_str[] = "\x85\xa1v\x01\xa4kind\xa4"
                                            "chat\xa2id\x05\xa6system\xa0\xa8messages\xa3"
                                            "abc";
    expect(e, &c, "messages is a string", msgs_str, sizeof(msgs_str) - 1, LMSCHED_EPROTO,
           "messages");
    static const unsigned char id_neg[] = "\x83\xa1v\x01\xa4kind\xa6status\xa2id\xff";
    expect(e, &c, "negative id", id_neg, sizeof(id_neg) - 1, LMSCHED_EPROTO, "id");
    static const unsigned char not_map[] = "\x93\x01\x02\x03";
    expect(e, &c, "array, not a map", not_map, sizeof(not_map) - 1, LMSCHED_EPROTO, NULL);
    static const unsigned char int_key[] = "\x83\x01\x01\xa4kind\xa6status\xa2id\x01";
    expect(e, &c, "integer map key", int_key, sizeof(int_key) - 1, LMSCHED_EPROTO, NULL);

    /* Declared lengths far beyond the bytes sent. */
    static const unsigned char huge_str[] = "\x81\xa1v\xdb\xff\xff\xff\xf0"
                                            "abc";
    expect(e, &c, "str32 of 4 GiB", huge_str, sizeof(huge_str) - 1, LMSCHED_EPROTO, NULL);
    static const unsigned char huge_arr[] = "\xdd\xff\xff\xff\xff\x01\x02";
    expect(e, &c, "array32 of 2^32-1", huge_arr, sizeof(huge_arr) - 1, LMSCHED_EPROTO,
           NULL);
    static const unsigned char huge_map[] = "\xdf\xff\xff\xff\xff\xa1v\x01";
    expect(e, &c, "map32 of 2^32-1", huge_map, sizeof(huge_map) - 1, LMSCHED_EPROTO,
           NULL);
    static const unsigned char huge_bin[] = "\x81\xa1v\xc6\x7f\xff\xff\xff\x00";
    expect(e, &c, "bin32 of 2 GiB", huge_bin, sizeof(huge_bin) - 1, LMSCHED_EPROTO, NULL);

    /* Deep nesting: 100000 one-element arrays, then deep maps. */
    enum { DEPTH = 100000 };
    unsigned char *deep = malloc(DEPTH * 3 + 1);
    assert_non_null(deep);
    memset(deep, 0x91, DEPTH);
    deep[DEPTH] = 0x01;
    expect(e, &c, "100000 nested arrays", deep, DEPTH + 1, LMSCHED_EPROTO, NULL);
    for (int i = 0; i < DEPTH; i++) {
        deep[i * 3] = 0x81;
        deep[i * 3 + 1] = 0xa1;
        deep[i * 3 + 2] = 'k';
    }
    deep[DEPTH * 3] = 0x01;
    expect(e, &c, "100000 nested maps", deep, DEPTH * 3 + 1, LMSCHED_EPROTO, NULL);
    free(deep);

    /* Invalid UTF-8 and NUL bytes in strings the daemon would forward. */
    static const struct {
        const char *name;
        const char *bytes;
        uint32_t len;
    } bad_text[] = {
        {"invalid UTF-8", "\xc3\x28", 2},
        {"overlong UTF-8", "\xc0\xaf", 2},
        {"UTF-16 surrogate", "\xed\xa0\x80", 3},
        {"past U+10FFFF", "\xf4\x90\x80\x80", 4},
        {"NUL byte", "a\0b", 3},
    };
    for (size_t i = 0; i < sizeof(bad_text) / sizeof(bad_text[0]); i++) {
        bbuf b = chat_with("sys", 3, bad_text[i].bytes, bad_text[i].len);
        expect(e, &c, bad_text[i].name, b.p, b.n, LMSCHED_EPROTO, "messages[0].content");
        free(b.p);
    }

    /* Over the 16 MiB message limit but within what the transport reads:
     * answered too_large. Far over it: the transport drops the connection. */
    size_t big = (16u << 20) + 100;
    char *text = malloc(big);
    assert_non_null(text);
    memset(text, 'a', big);
    bbuf b = chat_with(text, (uint32_t)big, "hi", 2);
    assert_true(b.n > (16u << 20) && b.n < (16u << 20) + 1024);
    expect(e, &c, "message of 16 MiB + 100", b.p, b.n, LMSCHED_ETOOLARGE, NULL);
    free(b.p);
    free(text);
    size_t huge = 20u << 20;
    unsigned char *blob = malloc(huge);
    assert_non_null(blob);
    memset(blob, 0xa1, huge);
    outcome o = send_raw(e, blob, huge);
    count(&c, &o);
    printf("  %-28s -> %s: %s\n", "message of 20 MiB", o.dropped ? "dropped" : "reply",
           o.message);
    assert_true(o.dropped); /* nng's receive limit closed the connection */
    free(blob);

    /* A few hundred random byte strings, some starting like a map. */
    srand(4);
    enum { RANDOM = 300 };
    int random_replies = 0;
    for (int i = 0; i < RANDOM; i++) {
        unsigned char r[256];
        size_t n = 1 + (size_t)(rand() % (int)sizeof(r));
        for (size_t k = 0; k < n; k++)
            r[k] = (unsigned char)rand();
        if (i % 2)
            r[0] = (unsigned char)(0x80 | (rand() % 16));
        o = send_raw(e, r, n);
        count(&c, &o);
        if (!o.dropped) {
            random_replies++;
            assert_int_not_equal(o.code, LMSCHED_OK);
        }
    }
    assert_int_equal(random_replies, RANDOM);

    /* Still serving, and nothing leaked on the way. */
    assert_false(kit_proc_exited(&e->daemon));
    lmsched_client *cl;
    assert_int_equal(lmsched_client_open(&cl, e->url), LMSCHED_OK);
    lmsched_request *r = kit_req("sys", "are you still there?", 4);
    lmsched_result *res = NULL;
    int64_t t0 = kit_now_ms();
    assert_int_equal(lmsched_chat(cl, r, 20000, &res), LMSCHED_OK);
    int64_t ok_ms = kit_now_ms() - t0;
    lmsched_result_free(res);
    lmsched_request_free(r);
    lmsched_client_close(cl);
    json_t *st = kit_env_status(e);
    int64_t bad = kit_json_int(st, "requests.bad_messages");
    json_decref(st);
    assert_int_equal(bad, c.replies);
    long rss1 = kit_pstat_rss_kb(e->daemon.pid);
    printf(
        "fault 7: %d hostile messages: %d error replies (%d proto, %d too_large), %d "
        "dropped "
        "connection (20 MiB); daemon alive, RSS %ld KiB before, %ld KiB after; a normal "
        "request afterwards succeeded in %lld ms\n",
        c.replies + c.dropped, c.replies, c.by_code[LMSCHED_EPROTO],
        c.by_code[LMSCHED_ETOOLARGE], c.dropped, rss0, rss1, (long long)ok_ms);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_hostile_messages, kit_env_setup,
                                        kit_env_teardown),
    };
    return cmocka_run_group_tests_name("faults_hostile", tests, NULL, NULL);
}
