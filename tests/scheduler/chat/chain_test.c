/*
 * prefix_test - scheduler/prefix.c: rendering and chained block hashes.
 * Equal prompts give equal chains, a shared start gives shared leading
 * blocks, the token estimate and the rendered bytes equal what lmsim
 * computes from the request the daemon would send it, groups follow the
 * system prompt, and a conversation's next turn extends its chain.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>
#include <xxhash.h>

#include "lmsched/wire.h"
#include "scheduler/chat/chain.h"
#include "sim/api.h"

#define MAXMSG 8

typedef struct conv {
    chat_req req;
    chat_msg msg[MAXMSG];
} conv;

static void conv_init(conv *c, const char *system)
{
    memset(c, 0, sizeof(*c));
    c->req.system = (char *)system;
    c->req.messages = c->msg;
    c->req.priority = 5;
    c->req.max_tokens = -1;
}

static void conv_add(conv *c, const char *role, const char *content)
{
    assert_true(c->req.n_messages < MAXMSG);
    c->msg[c->req.n_messages].role = (char *)role;
    c->msg[c->req.n_messages].content = (char *)content;
    c->req.n_messages++;
}

static void build(prefix_chain *ch, const conv *c)
{
    assert_int_equal(prefix_chain_build(ch, &c->req), LMSCHED_OK);
}

/* A long text that differs by seed. */
static char *text(int seed, size_t len)
{
    char *s = malloc(len + 1);
    assert_non_null(s);
    for (size_t i = 0; i < len; i++)
        s[i] = (char)('a' + (int)((i * 7 + (size_t)seed * 13 + i / 11) % 26));
    s[len] = '\0';
    return s;
}

static void test_equal_prompts(void **state)
{
    (void)state;
    char *sys = text(1, 3000);
    conv a, b;
    conv_init(&a, sys);
    conv_add(&a, "user", "What is the plan?");
    conv_init(&b, sys);
    conv_add(&b, "user", "What is the plan?");
    prefix_chain ca, cb;
    build(&ca, &a);
    build(&cb, &b);
    assert_true(ca.n_blocks > 40);
    assert_int_equal(ca.n_blocks, cb.n_blocks);
    assert_int_equal(ca.tokens, cb.tokens);
    assert_memory_equal(ca.blocks, cb.blocks, ca.n_blocks * sizeof(uint64_t));
    assert_true(ca.group == cb.group && ca.group != 0);
    /* Chained: no two blocks of a repetitive text hash alike. */
    for (uint32_t i = 1; i < ca.n_blocks; i++)
        assert_true(ca.blocks[i] != ca.blocks[i - 1]);
    prefix_chain_fini(&ca);
    prefix_chain_fini(&cb);
    prefix_chain_fini(&cb); /* twice is harmless */
    prefix_chain_fini(NULL);
    free(sys);
}

static void test_common_prefix(void **state)
{
    (void)state;
    char *sys = text(2, 2000);
    conv a, b;
    conv_init(&a, sys);
    conv_add(&a, "user",
             "first question, somewhat long so it fills a block or two of text");
    conv_init(&b, sys);
    conv_add(&b, "user",
             "second question, somewhat long so it fills a block or two of text");
    prefix_chain ca, cb;
    build(&ca, &a);
    build(&cb, &b);
    /* "<|im_start|>system\n" + sys + "<|im_end|>\n" + "<|im_start|>user\n" + ... */
    size_t shared = strlen("<|im_start|>system\n") + strlen(sys) +
                    strlen("<|im_end|>\n") + strlen("<|im_start|>user\n");
    uint32_t whole = (uint32_t)(shared / PREFIX_BLOCK_BYTES);
    for (uint32_t i = 0; i < whole; i++)
        assert_true(ca.blocks[i] == cb.blocks[i]);
    /* The block where they differ, and every later one, differ. */
    for (uint32_t i = whole; i < ca.n_blocks && i < cb.n_blocks; i++)
        assert_true(ca.blocks[i] != cb.blocks[i]);
    assert_true(ca.group == cb.group);
    prefix_chain_fini(&ca);
    prefix_chain_fini(&cb);
    free(sys);
}

/* What lmsim renders for the request the daemon would send (openai.c: the
 * system prompt first, only when non-empty). */
static void sim_render(const conv *c, char **prompt, size_t *len)
{
    json_t *msgs = json_array();
    assert_non_null(msgs);
    if (c->req.system != NULL && c->req.system[0] != '\0')
        json_array_append_new(
            msgs, json_pack("{s:s,s:s}", "role", "system", "content", c->req.system));
    for (size_t i = 0; i < c->req.n_messages; i++)
        json_array_append_new(msgs, json_pack("{s:s,s:s}", "role", c->msg[i].role,
                                              "content", c->msg[i].content));
    json_t *root = json_pack("{s:o}", "messages", msgs);
    assert_non_null(root);
    char *body = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    assert_non_null(body);
    api_chat chat;
    memset(&chat, 0, sizeof(chat));
    char *err = NULL;
    assert_int_equal(api_parse_chat(body, strlen(body), &chat, &err), 0);
    free(body);
    *prompt = chat.prompt;
    *len = chat.prompt_len;
    chat.prompt = NULL;
    api_chat_fini(&chat);
}

static void check_against_sim(const conv *c)
{
    prefix_chain ch;
    build(&ch, c);
    char *prompt = NULL;
    size_t len = 0;
    sim_render(c, &prompt, &len);
    /* lmsim's prompt_tokens: ceil(bytes / 4) */
    assert_int_equal(ch.tokens, (len + 3) / 4);
    assert_int_equal(ch.n_blocks, len / PREFIX_BLOCK_BYTES);
    /* Same bytes: the chain over lmsim's rendering is ours. */
    uint64_t h = 0;
    for (uint32_t i = 0; i < ch.n_blocks; i++) {
        h = XXH3_64bits_withSeed(prompt + (size_t)i * PREFIX_BLOCK_BYTES,
                                 PREFIX_BLOCK_BYTES, h);
        assert_true(h == ch.blocks[i]);
    }
    free(prompt);
    prefix_chain_fini(&ch);
}

static void test_tokens_match_lmsim(void **state)
{
    (void)state;
    char *sys = text(3, 1234);
    conv c;
    for (size_t extra = 0; extra < 4; extra++) {
        /* every remainder of bytes mod 4 */
        char q[16] = "abc";
        q[3 + extra] = '\0';
        memset(q + 3, 'z', extra);
        conv_init(&c, sys);
        conv_add(&c, "user", q);
        check_against_sim(&c);
    }
    /* Without a system prompt, with several turns, with an empty content. */
    conv_init(&c, "");
    conv_add(&c, "user", "hello");
    conv_add(&c, "assistant", "");
    conv_add(&c, "user", "again");
    check_against_sim(&c);
    conv_init(&c, NULL);
    conv_add(&c, "user", "x");
    check_against_sim(&c);
    free(sys);
}

static void test_groups(void **state)
{
    (void)state;
    char *s1 = text(4, 800), *s2 = text(5, 800);
    conv a, b, c, d;
    conv_init(&a, s1);
    conv_add(&a, "user", "q");
    conv_init(&b, s2);
    conv_add(&b, "user", "q");
    conv_init(&c, s1);
    conv_add(&c, "user", "a different question");
    conv_init(&d, "");
    conv_add(&d, "user", "q");
    prefix_chain ca, cb, cc, cd;
    build(&ca, &a);
    build(&cb, &b);
    build(&cc, &c);
    build(&cd, &d);
    assert_true(ca.group != cb.group);
    assert_true(ca.group == cc.group);
    assert_true(cd.group == 0);
    /* Different systems share no leading block here. */
    assert_true(ca.blocks[0] != cb.blocks[0]);
    /* A tiny prompt has no whole block but still a token count. */
    assert_int_equal(cd.n_blocks, 0);
    assert_null(cd.blocks);
    size_t tiny = strlen("<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n");
    assert_int_equal(cd.tokens, (tiny + 3) / 4);
    prefix_chain_fini(&ca);
    prefix_chain_fini(&cb);
    prefix_chain_fini(&cc);
    prefix_chain_fini(&cd);
    free(s1);
    free(s2);
}

static void test_multi_turn_extends(void **state)
{
    (void)state;
    char *sys = text(6, 500);
    char *reply = text(7, 700);
    conv t1, t2;
    conv_init(&t1, sys);
    conv_add(&t1, "user", "Tell me about the first topic in some detail please.");
    conv_init(&t2, sys);
    conv_add(&t2, "user", "Tell me about the first topic in some detail please.");
    conv_add(&t2, "assistant", reply);
    conv_add(&t2, "user", "And the second?");
    prefix_chain c1, c2;
    build(&c1, &t1);
    build(&c2, &t2);
    assert_true(c2.n_blocks > c1.n_blocks);
    /* Turn 1's prompt ends with "<|im_start|>assistant\n", which turn 2
     * continues with the reply: every whole block of turn 1 is shared. */
    assert_memory_equal(c1.blocks, c2.blocks, c1.n_blocks * sizeof(uint64_t));
    assert_true(c1.group == c2.group);
    prefix_chain_fini(&c1);
    prefix_chain_fini(&c2);
    free(sys);
    free(reply);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_equal_prompts),      cmocka_unit_test(test_common_prefix),
        cmocka_unit_test(test_tokens_match_lmsim), cmocka_unit_test(test_groups),
        cmocka_unit_test(test_multi_turn_extends),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
