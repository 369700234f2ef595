/*
 * Tests of lmsim's pure parts: the chat request parser and its prompt
 * rendering (the tokenizer rule the docs promise), error bodies, and the
 * reply words.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "sim/api.h"
#include "sim/engine.h"

static int parse(const char *body, api_chat *out, char **err)
{
    return api_parse_chat(body, strlen(body), out, err);
}

/* The error "type" of an error body, or "" (jansson owns nothing after). */
static void assert_error_type(const char *body, const char *type)
{
    json_error_t je;
    json_t *o = json_loads(body, 0, &je);
    assert_non_null(o);
    json_t *t = json_object_get(json_object_get(o, "error"), "type");
    assert_true(json_is_string(t));
    assert_string_equal(json_string_value(t), type);
    json_decref(o);
}

static void test_render_chatml(void **state)
{
    api_chat c;
    char *err = NULL;
    assert_int_equal(
        parse("{\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
              "{\"role\":\"user\",\"content\":\"hi\"}]}",
              &c, &err),
        0);
    const char *want = "<|im_start|>system\nBe brief.<|im_end|>\n"
                       "<|im_start|>user\nhi<|im_end|>\n"
                       "<|im_start|>assistant\n";
    assert_int_equal(c.prompt_len, strlen(want));
    assert_memory_equal(c.prompt, want, c.prompt_len);
    /* Defaults. */
    assert_false(c.stream);
    assert_true(c.cache_prompt);
    assert_int_equal(c.id_slot, -1);
    assert_true(c.max_tokens == -1);
    api_chat_fini(&c);
}

static void test_options(void **state)
{
    api_chat c;
    char *err = NULL;
    assert_int_equal(
        parse("{\"model\":\"x\",\"stream\":true,\"stream_options\":{\"include_usage\":"
              "true},"
              "\"max_tokens\":7,\"cache_prompt\":false,\"id_slot\":2,\"ignore_eos\":true,"
              "\"seed\":42,\"temperature\":0.2,\"top_p\":1,\"stop\":[\"\\n\"],"
              "\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":"
              "\"a\"},"
              "{\"type\":\"image_url\",\"image_url\":{\"url\":\"x\"}},"
              "{\"type\":\"text\",\"text\":\"b\"}]},{\"role\":\"assistant\",\"content\":"
              "null}]}",
              &c, &err),
        0);
    assert_true(c.stream);
    assert_true(c.include_usage);
    assert_true(c.max_tokens == 7);
    assert_false(c.cache_prompt);
    assert_int_equal(c.id_slot, 2);
    assert_true(c.ignore_eos);
    assert_true(c.seed == 42);
    const char *want = "<|im_start|>user\nab<|im_end|>\n"
                       "<|im_start|>assistant\n<|im_end|>\n"
                       "<|im_start|>assistant\n";
    assert_int_equal(c.prompt_len, strlen(want));
    assert_memory_equal(c.prompt, want, c.prompt_len);
    api_chat_fini(&c);

    /* llama.cpp's name for the limit. */
    assert_int_equal(
        parse("{\"n_predict\":3,\"messages\":[{\"role\":\"user\",\"content\":\"\"}]}", &c,
              &err),
        0);
    assert_true(c.max_tokens == 3);
    api_chat_fini(&c);
}

static void test_rejects(void **state)
{
    static const char *const bad[] = {
        "",
        "{bad",
        "[1,2]",
        "{}",
        "{\"messages\":[]}",
        "{\"messages\":\"hi\"}",
        "{\"messages\":[{\"content\":\"no role\"}]}",
        "{\"messages\":[{\"role\":\"user\",\"content\":5}]}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":0}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":\"9\"}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream\":\"yes\"}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"id_slot\":-2}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":\"hot\"}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":[1]}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        api_chat c;
        char *err = NULL;
        int rc = parse(bad[i], &c, &err);
        if (rc != 400)
            fail_msg("body %zu (%s): got %d, want 400", i, bad[i], rc);
        assert_non_null(err);
        assert_error_type(err, "invalid_request_error");
        assert_null(c.prompt);
        free(err);
    }
}

static void test_role_bounded(void **state)
{
    char body[256];
    char role[SIMAPI_MAX_ROLE + 2];
    memset(role, 'r', sizeof role - 1);
    role[sizeof role - 1] = '\0';
    snprintf(body, sizeof body, "{\"messages\":[{\"role\":\"%s\",\"content\":\"x\"}]}",
             role);
    api_chat c;
    char *err = NULL;
    assert_int_equal(parse(body, &c, &err), 400);
    free(err);
}

static void test_context_error_shape(void **state)
{
    char *s = api_context_error_json(9000, 8192);
    assert_non_null(s);
    json_t *o = json_loads(s, 0, NULL);
    assert_non_null(o);
    json_t *e = json_object_get(o, "error");
    assert_string_equal(json_string_value(json_object_get(e, "type")),
                        "exceed_context_size_error");
    assert_non_null(strstr(json_string_value(json_object_get(e, "message")),
                           "exceeds the available context size"));
    assert_int_equal(json_integer_value(json_object_get(e, "n_prompt_tokens")), 9000);
    assert_int_equal(json_integer_value(json_object_get(e, "n_ctx")), 8192);
    assert_int_equal(json_integer_value(json_object_get(e, "code")), 400);
    json_decref(o);
    free(s);
}

static void test_tokens_and_words(void **state)
{
    assert_int_equal(simeng_tokens(0), 0);
    assert_int_equal(simeng_tokens(1), 1);
    assert_int_equal(simeng_tokens(4), 1);
    assert_int_equal(simeng_tokens(5), 2);
    assert_int_equal(simeng_tokens(400), 100);
    /* Every word is one token (4 bytes ending in a space), and the words
     * depend on the seed but not on the call. */
    bool differ = false;
    for (unsigned i = 0; i < 200; i++) {
        const char *w = simeng_word(7, i);
        assert_int_equal(strlen(w), SIMENG_BYTES_PER_TOKEN);
        assert_int_equal(w[3], ' ');
        assert_string_equal(w, simeng_word(7, i));
        differ = differ || strcmp(w, simeng_word(8, i)) != 0;
    }
    assert_true(differ);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_render_chatml),
        cmocka_unit_test(test_options),
        cmocka_unit_test(test_rejects),
        cmocka_unit_test(test_role_bounded),
        cmocka_unit_test(test_context_error_shape),
        cmocka_unit_test(test_tokens_and_words),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
