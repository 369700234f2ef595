/*
 * cli_chat_test - `lmsched chat` end to end: the real command against the
 * real daemon and lmsim (tests/kit), its stdout and stderr read apart.
 * --stream prints exactly what the same request prints without it (the
 * answer on stdout, reasoning on stderr); --stream --json prints a JSON
 * line per piece and the reply last; --tools makes lmsim call the tool and
 * the call is printed, streamed or not; --tool-choice names a function;
 * --response-format gives JSON; --extra reaches the server (logprobs come
 * back in --json); refused values exit 2 naming the field.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "kit/check.h"
#include "kit/clock.h"
#include "kit/env.h"
#include "kit/proc.h"

#define RUN_MS 60000

static const char tools_weather[] =
    "[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
    "\"description\":\"Current weather for a city\",\"parameters\":{\"type\":\"object\","
    "\"properties\":{\"city\":{\"type\":\"string\"}},\"required\":[\"city\"]}}}]";

typedef struct run_out {
    int code;
    char *out;
    char *err;
} run_out;

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *buf = calloc(1, 1 << 20);
    assert_non_null(buf);
    size_t n = fread(buf, 1, (1 << 20) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* Runs `lmsched chat --url URL args...` with stdout and stderr into files
 * of their own, killed after RUN_MS. */
static run_out run_chat(kit_env *e, const char *const *args)
{
    char bin[1024], out_path[600], err_path[600];
    const char *argv[48];
    int n = 0;
    kit_bin_path("lmsched", bin, sizeof(bin));
    argv[n++] = bin;
    argv[n++] = "chat";
    argv[n++] = "--url";
    argv[n++] = e->url;
    for (; *args != NULL; args++) {
        assert_true(n < 46);
        argv[n++] = *args;
    }
    argv[n] = NULL;
    snprintf(out_path, sizeof(out_path), "%s/chat.out", e->dir);
    snprintf(err_path, sizeof(err_path), "%s/chat.err", e->dir);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int o = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int r = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (o < 0 || r < 0 || dup2(o, 1) < 0 || dup2(r, 2) < 0)
            _exit(126);
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    int status = 0;
    int64_t until = kit_now_ms() + RUN_MS;
    while (waitpid(pid, &status, WNOHANG) == 0) {
        if (kit_now_ms() > until) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            fail_msg("lmsched chat did not end within %d ms", RUN_MS);
        }
        kit_sleep_ms(5);
    }
    run_out r = {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status),
                 slurp(out_path), slurp(err_path)};
    return r;
}

static void run_free(run_out *r)
{
    free(r->out);
    free(r->err);
}

#define assert_contains(hay, needle)                                                     \
    do {                                                                                 \
        if (strstr((hay), (needle)) == NULL)                                             \
            fail_msg("'%s' not found in: %s", (needle), (hay));                          \
    } while (0)

static void write_file(kit_env *e, const char *name, const char *text, char *path,
                       size_t len)
{
    snprintf(path, len, "%s/%s", e->dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    fclose(f);
}

/* --stream prints what the same request prints without it, stdout and
 * stderr alike. */
static void test_stream_same_output(void **state)
{
    kit_env *e = *state;
    const char *sim[] = {"--time-scale", "5", "--reasoning-tokens", "5", NULL};
    kit_env_start(e, sim, NULL);
    const char *base[] = {"--seed", "3", "--max-tokens", "30", "Tell me a story.", NULL};
    const char *streamed[] = {"--stream", "--seed",           "3", "--max-tokens",
                              "30",       "Tell me a story.", NULL};
    run_out a = run_chat(e, base);
    run_out b = run_chat(e, streamed);
    printf("stdout: %sstderr: %s", a.out, a.err);
    assert_int_equal(a.code, 0);
    assert_int_equal(b.code, 0);
    assert_true(strlen(a.out) > 40);
    assert_string_equal(b.out, a.out);
    assert_true(strlen(a.err) > 5); /* the reasoning */
    assert_string_equal(b.err, a.err);
    run_free(&a);
    run_free(&b);
}

/* --stream --json: a line per piece, the reply last; the content pieces
 * make the reply's content. */
static void test_stream_json_lines(void **state)
{
    kit_env *e = *state;
    const char *sim[] = {"--time-scale", "5", NULL};
    kit_env_start(e, sim, NULL);
    const char *args[] = {"--stream", "--json", "--max-tokens", "12", "Count.", NULL};
    run_out r = run_chat(e, args);
    assert_int_equal(r.code, 0);
    char text[4096] = "";
    int lines = 0;
    json_t *last = NULL;
    for (char *line = strtok(r.out, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        json_t *v = json_loads(line, 0, NULL);
        if (v == NULL)
            fail_msg("not a JSON line: %s", line);
        const char *piece = json_string_value(json_object_get(v, "content"));
        if (piece != NULL && json_object_get(v, "finish_reason") == NULL)
            strncat(text, piece, sizeof(text) - strlen(text) - 1);
        json_decref(last);
        last = v;
        lines++;
    }
    assert_true(lines >= 3);
    assert_non_null(last);
    assert_string_equal(json_string_value(json_object_get(last, "finish_reason")),
                        "length");
    assert_string_equal(json_string_value(json_object_get(last, "content")), text);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(last, "usage"),
                                                        "completion_tokens")),
                     12);
    json_decref(last);
    run_free(&r);
}

/* --tools: the model's call is printed, the same streamed or not;
 * --tool-choice names a function the message does not mention. */
static void test_tools(void **state)
{
    kit_env *e = *state;
    const char *sim[] = {"--time-scale", "5", NULL};
    kit_env_start(e, sim, NULL);
    char tools[700];
    write_file(e, "tools.json", tools_weather, tools, sizeof(tools));
    const char *plain[] = {
        "--tools", tools, "--seed", "1", "Please call get_weather for Paris.", NULL};
    const char *streamed[] = {"--stream", "--tools", tools,
                              "--seed",   "1",       "Please call get_weather for Paris.",
                              NULL};
    run_out a = run_chat(e, plain);
    run_out b = run_chat(e, streamed);
    printf("tools: %s", a.out);
    assert_int_equal(a.code, 0);
    assert_int_equal(b.code, 0);
    assert_true(strncmp(a.out, "tool_call call_", 15) == 0);
    assert_contains(a.out, " get_weather {\"city\":");
    assert_string_equal(b.out, a.out);
    run_free(&a);
    run_free(&b);

    const char *chosen[] = {"--tools",     tools,    "--tool-choice",
                            "get_weather", "--json", "What should I wear?",
                            NULL};
    run_out c = run_chat(e, chosen);
    assert_int_equal(c.code, 0);
    json_t *doc = json_loads(c.out, 0, NULL);
    assert_non_null(doc);
    assert_string_equal(json_string_value(json_object_get(doc, "finish_reason")),
                        "tool_calls");
    json_t *call = json_array_get(json_object_get(doc, "tool_calls"), 0);
    assert_string_equal(json_string_value(json_object_get(call, "name")), "get_weather");
    assert_true(json_is_string(json_object_get(call, "arguments")));
    json_decref(doc);
    run_free(&c);
}

/* --response-format and --extra reach the server. */
static void test_format_and_extra(void **state)
{
    kit_env *e = *state;
    const char *sim[] = {"--time-scale", "5", NULL};
    kit_env_start(e, sim, NULL);
    char fmt[700];
    write_file(
        e, "format.json",
        "{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"p\",\"schema\":{\"type\":"
        "\"object\",\"properties\":{\"n\":{\"type\":\"integer\"}},\"required\":[\"n\"]}}"
        "}",
        fmt, sizeof(fmt));
    const char *args[] = {"--response-format", fmt, "--max-tokens", "100",
                          "A number.",         NULL};
    run_out r = run_chat(e, args);
    assert_int_equal(r.code, 0);
    json_t *v = json_loads(r.out, 0, NULL);
    if (v == NULL)
        fail_msg("not JSON: %s", r.out);
    assert_true(json_is_integer(json_object_get(v, "n")));
    json_decref(v);
    run_free(&r);

    const char *lp[] = {"--extra", "{\"logprobs\":true,\"top_k\":5}",
                        "--json",  "--max-tokens",
                        "4",       "Hi.",
                        NULL};
    r = run_chat(e, lp);
    assert_int_equal(r.code, 0);
    json_t *doc = json_loads(r.out, 0, NULL);
    assert_non_null(doc);
    assert_int_equal(json_array_size(json_object_get(doc, "logprobs")), 4);
    json_decref(doc);
    run_free(&r);

    const char *bad[] = {"--extra", "{\"stream\":false}", "Hi.", NULL};
    r = run_chat(e, bad);
    assert_int_equal(r.code, 2);
    assert_string_equal(r.out, "");
    assert_contains(r.err, "extra.stream: not allowed in extra");
    run_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_stream_same_output, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_stream_json_lines, kit_env_setup,
                                        kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_tools, kit_env_setup, kit_env_teardown),
        cmocka_unit_test_setup_teardown(test_format_and_extra, kit_env_setup,
                                        kit_env_teardown),
    };
    return cmocka_run_group_tests_name("cli_chat", tests, NULL, NULL);
}
