/*
 * cli_test - the client commands of `lmsched` (scheduler/cli.c).
 *
 * cli_render_status is checked on the example document of docs/status.md, on
 * documents with nulls and missing sections, on hostile strings, and on junk.
 * `status` and `chat` run end to end through the real agent library against
 * a small stand-in daemon: an nng REP socket on ipc:// in a temp directory
 * that decodes each request with proto and answers as the test says, so the
 * flags are checked on the wire and the output and exit codes as a user
 * sees them (stdout/stderr are captured through temp files).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>

#include "lmsched/agent.h"
#include "proto/proto.h"
#include "scheduler/cli/cli.h"

/* The example document of docs/status.md. */
static const char example_json[] =
    "{\"version\": \"0.1.0\", \"protocol\": 1, \"pid\": 4242, \"uptime_s\": 3723.5,"
    " \"listen\": \"ipc:///run/user/1000/lmsched.sock\", \"policy\": \"fifo\","
    " \"backend\": {\"url\": \"http://127.0.0.1:1234\", \"kind\": \"lmstudio\","
    "  \"healthy\": true, \"last_error\": null, \"model\": \"qwen3-8b\","
    "  \"context_length\": 8192, \"slots\": 4, \"checked_ago_s\": 4.2},"
    " \"memory\": {\"total_bytes\": 51539607552, \"ram_fraction\": 0.6,"
    "  \"model_size_bytes\": 4920000000, \"kv_per_request_bytes\": 1073741824,"
    "  \"budget_bytes\": 26003767296, \"max_concurrent\": 4, \"limited_by\": \"slots\"},"
    " \"queue\": {\"depth\": 3, \"max\": 1024}, \"inflight\": 4,"
    " \"requests\": {\"received\": 120, \"completed\": 110, \"failed\": 3,"
    "  \"retried\": 5, \"rejected_busy\": 0,"
    "  \"failed_by_class\": {\"deadline\": 2, \"backend_crash\": 1}},"
    " \"latency_ms\": {\"queue_wait\": {\"p50\": 12.0, \"p95\": 340.0},"
    "  \"ttft\": {\"p50\": 180.0, \"p95\": 900.0},"
    "  \"total\": {\"p50\": 2100.0, \"p95\": 6000.0}},"
    " \"tokens\": {\"prompt\": 240000, \"completion\": 12000, \"cached\": 180000}}";

/* Just started, backend down, nothing known yet: every optional value null. */
static const char nulls_json[] =
    "{\"version\": \"0.1.0\", \"protocol\": 1, \"pid\": 7, \"uptime_s\": 2.0,"
    " \"listen\": \"ipc:///tmp/x.sock\", \"policy\": null,"
    " \"backend\": {\"url\": \"http://127.0.0.1:9\", \"kind\": \"unknown\","
    "  \"healthy\": false, \"last_error\": \"connection refused\", \"model\": null,"
    "  \"context_length\": null, \"slots\": null, \"checked_ago_s\": 75.0},"
    " \"memory\": {\"total_bytes\": 8589934592, \"ram_fraction\": 0.6,"
    "  \"model_size_bytes\": null, \"kv_per_request_bytes\": null,"
    "  \"budget_bytes\": null, \"max_concurrent\": 1, \"limited_by\": \"flag\"},"
    " \"queue\": {\"depth\": 0, \"max\": 16}, \"inflight\": 0,"
    " \"requests\": {\"received\": 0, \"completed\": 0, \"failed\": 0, \"retried\": 0,"
    "  \"rejected_busy\": 0, \"failed_by_class\": {}},"
    " \"latency_ms\": {\"queue_wait\": {\"p50\": null, \"p95\": null},"
    "  \"ttft\": {\"p50\": null, \"p95\": null},"
    "  \"total\": {\"p50\": null, \"p95\": null}},"
    " \"tokens\": {\"prompt\": 0, \"completion\": 0, \"cached\": 0}}";

/* ---- helpers --------------------------------------------------------------- */

/* Renders json into a heap string (freed by the caller); *rc gets the result. */
static char *render(const char *json, int *rc)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    *rc = cli_render_status(json, f);
    assert_int_equal(fclose(f), 0);
    assert_non_null(text);
    assert_int_equal(strlen(text), len);
    return text;
}

#define assert_contains(hay, needle)                                                     \
    do {                                                                                 \
        if (strstr((hay), (needle)) == NULL)                                             \
            fail_msg("expected \"%s\" in:\n%s", (needle), (hay));                        \
    } while (0)

#define assert_lacks(hay, needle)                                                        \
    do {                                                                                 \
        if (strstr((hay), (needle)) != NULL)                                             \
            fail_msg("did not expect \"%s\" in:\n%s", (needle), (hay));                  \
    } while (0)

/* The line of text starting with prefix. */
static const char *line_of(const char *text, const char *prefix)
{
    size_t n = strlen(prefix);
    for (const char *p = text; p != NULL && *p != '\0';) {
        if (strncmp(p, prefix, n) == 0)
            return p;
        p = strchr(p, '\n');
        if (p != NULL)
            p++;
    }
    fail_msg("no line starting with \"%s\" in:\n%s", prefix, text);
    return NULL;
}

static size_t line_len(const char *line)
{
    const char *nl = strchr(line, '\n');
    return nl != NULL ? (size_t)(nl - line) : strlen(line);
}

/* ---- cli_render_status ----------------------------------------------------- */

static void test_render_example(void **state)
{
    int rc;
    char *out = render(example_json, &rc);
    assert_int_equal(rc, 0);
    /* the brief's key facts */
    assert_contains(out, "healthy");
    assert_contains(out, "max 4 concurrent");
    assert_contains(out, "3 / 1024");
    assert_contains(out, "deadline 2");
    /* and the rest of the table, value by value */
    assert_contains(line_of(out, "lmsched "),
                    "lmsched 0.1.0  up 1h02m  pid 4242  listen "
                    "ipc:///run/user/1000/lmsched.sock  policy fifo\n");
    const char *be = line_of(out, "backend ");
    assert_contains(be,
                    "http://127.0.0.1:1234  lmstudio  healthy  model qwen3-8b  ctx 8192"
                    "  slots 4\n");
    assert_lacks(out, "unreachable");
    assert_contains(line_of(out, "memory "),
                    "RAM 48.0 GiB x 0.60 - model 4.6 GiB = budget 24.2 GiB; "
                    "KV/request 1.0 GiB -> max 4 concurrent (slots)\n");
    assert_contains(line_of(out, "queue "), "3 / 1024");
    assert_contains(line_of(out, "queue "), "in flight 4 / 4\n");
    assert_contains(line_of(out, "requests "),
                    "received 120  completed 110  failed 3 (deadline 2, backend_crash 1)"
                    "  retried 5  busy 0\n");
    const char *lat = line_of(out, "latency ");
    assert_contains(lat, "queue wait p50 12 ms  p95 340 ms");
    assert_contains(lat, "ttft p50 180 ms  p95 900 ms");
    assert_contains(lat, "total p50 2.1 s  p95 6.0 s\n");
    assert_contains(line_of(out, "tokens "),
                    "prompt 240k  completion 12k  cached 180k (75%)\n");
    assert_lacks(out, "unknown");
    free(out);
}

/* With the HTTP front door on, the first line says where it listens. */
static void test_render_http(void **state)
{
    (void)state;
    json_t *doc = json_loads(example_json, 0, NULL);
    assert_non_null(doc);
    json_object_set_new(doc, "http", json_string("127.0.0.1:4321"));
    char *text = json_dumps(doc, 0);
    json_decref(doc);
    int rc;
    char *out = render(text, &rc);
    free(text);
    assert_int_equal(rc, 0);
    assert_contains(line_of(out, "lmsched "),
                    "listen ipc:///run/user/1000/lmsched.sock  http 127.0.0.1:4321  policy "
                    "fifo\n");
    free(out);
}

/* Preemptions, when there were some, end the requests line. */
static void test_render_preempted(void **state)
{
    (void)state;
    json_t *doc = json_loads(example_json, 0, NULL);
    assert_non_null(doc);
    json_object_set_new(json_object_get(doc, "requests"), "preempted", json_integer(7));
    char *text = json_dumps(doc, 0);
    json_decref(doc);
    int rc;
    char *out = render(text, &rc);
    free(text);
    assert_int_equal(rc, 0);
    assert_contains(line_of(out, "requests "), "  retried 5  busy 0  preempted 7\n");
    free(out);
}

/* The restore probe's verdict, from the backends[] entry: yes with the
 * share it read; nothing when the probe is off. */
static void test_render_restore_probe(void **state)
{
    (void)state;
    static const char *const verdicts[] = {"restores", "no_restore", "probing", "off"};
    static const char *const shown[] = {"  host cache yes (probe 1.00)", "  host cache no (probe 0.00)",
                                        "  host cache unknown", NULL};
    for (int k = 0; k < 4; k++) {
        json_t *doc = json_loads(example_json, 0, NULL);
        assert_non_null(doc);
        json_t *one = json_deep_copy(json_object_get(doc, "backend"));
        json_object_set_new(one, "restore_probe", json_string(verdicts[k]));
        if (k < 2)
            json_object_set_new(one, "restore_share", json_real(k == 0 ? 1.0 : 0.0));
        json_t *arr = json_array();
        json_array_append_new(arr, one);
        json_object_set_new(doc, "backends", arr);
        char *text = json_dumps(doc, 0);
        json_decref(doc);
        int rc;
        char *out = render(text, &rc);
        free(text);
        assert_int_equal(rc, 0);
        const char *line = line_of(out, "backend ");
        if (shown[k] != NULL)
            assert_contains(line, shown[k]);
        else
            assert_null(strstr(out, "host cache"));
        free(out);
    }
}

static void test_render_nulls(void **state)
{
    int rc;
    char *out = render(nulls_json, &rc);
    assert_int_equal(rc, 0);
    assert_contains(line_of(out, "lmsched "), "up 2s");
    assert_contains(line_of(out, "lmsched "), "policy unknown\n");
    const char *be = line_of(out, "backend ");
    assert_contains(be, "unreachable  model unknown  ctx unknown  slots unknown");
    assert_contains(be, "last error: connection refused (checked 1m15s ago)\n");
    assert_contains(line_of(out, "memory "),
                    "RAM 8.0 GiB x 0.60 - model unknown = budget unknown; "
                    "KV/request unknown -> max 1 concurrent (flag)\n");
    /* no failures: no empty "()" */
    assert_contains(line_of(out, "requests "), "failed 0  retried 0");
    assert_contains(line_of(out, "latency "),
                    "queue wait p50 unknown  p95 unknown    ttft p50 unknown  p95 unknown"
                    "    total p50 unknown  p95 unknown\n");
    /* no prompt tokens yet: no cache percentage (and no division by zero) */
    assert_contains(line_of(out, "tokens "), "prompt 0  completion 0  cached 0\n");
    free(out);
}

/* A document from a daemon that lacks whole sections (an older or a newer
 * one) still renders, with "unknown" where values are missing. */
static void test_render_missing_sections(void **state)
{
    int rc;
    char *out =
        render("{\"version\": \"9.9.9\", \"protocol\": 1, \"extra\": [1, 2]}", &rc);
    assert_int_equal(rc, 0);
    assert_contains(line_of(out, "lmsched "), "lmsched 9.9.9  up unknown  pid unknown");
    assert_contains(line_of(out, "backend "),
                    "unknown  unknown  health unknown  model unknown");
    assert_contains(line_of(out, "queue "), "unknown / unknown");
    assert_contains(line_of(out, "tokens "), "prompt unknown");
    free(out);
}

/* Strings that reach the terminal come from the daemon and the LLM server:
 * control characters are replaced and lengths bounded. */
static void test_render_hostile_strings(void **state)
{
    json_error_t jerr;
    json_t *doc = json_loads(example_json, 0, &jerr);
    assert_non_null(doc);
    json_t *be = json_object_get(doc, "backend");
    json_object_set_new(be, "model", json_string("evil\x1b]0;pwned\x07\nmodel"));
    char *longurl = malloc(5001);
    assert_non_null(longurl);
    memset(longurl, 'u', 5000);
    longurl[5000] = '\0';
    json_object_set_new(be, "url", json_string(longurl));
    free(longurl);
    /* many failure classes with long names */
    json_t *classes = json_object();
    for (int i = 0; i < 100; i++) {
        char key[80];
        snprintf(key, sizeof(key), "class_%03d_with_a_rather_long_name_indeed", i);
        json_object_set_new(classes, key, json_integer(i + 1));
    }
    json_object_set_new(json_object_get(doc, "requests"), "failed_by_class", classes);
    char *text = json_dumps(doc, JSON_PRESERVE_ORDER);
    json_decref(doc);
    assert_non_null(text);

    int rc;
    char *out = render(text, &rc);
    free(text);
    assert_int_equal(rc, 0);
    assert_lacks(out, "\x1b");
    assert_lacks(out, "\x07");
    assert_contains(out, "model evil?]0;pwned??model");
    const char *be_line = line_of(out, "backend ");
    assert_contains(be_line, "uuu...");
    assert_true(line_len(be_line) < 400);
    const char *req = line_of(out, "requests ");
    assert_contains(req, "(class_000_with_a_rather_long_name_indeed 1, ");
    assert_contains(req, ", ...)");
    assert_true(line_len(req) < 400);
    /* exactly seven lines */
    size_t lines = 0;
    for (const char *p = out; *p != '\0'; p++)
        lines += *p == '\n';
    assert_int_equal(lines, 7);
    free(out);
}

static void test_render_units(void **state)
{
    int rc;
    char *out = render(
        "{\"version\": \"0.1.0\", \"protocol\": 1, \"uptime_s\": 200000,"
        " \"memory\": {\"total_bytes\": 1000, \"model_size_bytes\": 1536,"
        "  \"budget_bytes\": 5368709120000, \"kv_per_request_bytes\": 1048576},"
        " \"latency_ms\": {\"total\": {\"p50\": 185000, \"p95\": 999.0}},"
        " \"tokens\": {\"prompt\": 1500, \"completion\": 999, \"cached\": 3200000}}",
        &rc);
    assert_int_equal(rc, 0);
    assert_contains(line_of(out, "lmsched "), "up 2d07h");
    assert_contains(line_of(out, "memory "),
                    "RAM 1000 B x unknown - model 1.5 KiB = budget 4.9 TiB; "
                    "KV/request 1.0 MiB");
    assert_contains(line_of(out, "latency "), "total p50 3m05s  p95 999 ms");
    assert_contains(line_of(out, "tokens "),
                    "prompt 1.5k  completion 999  cached 3.2M (213333%)");
    free(out);
}

static void test_render_junk(void **state)
{
    static const char *const junk[] = {
        "",
        "not json at all",
        "{\"version\": \"0.1.0\", \"protocol\": 1", /* cut short */
        "[1, 2, 3]",
        "{}",
        "{\"version\": 1, \"protocol\": 1}",             /* version must be a string */
        "{\"version\": \"0.1.0\"}",                      /* no protocol */
        "{\"version\": \"0.1.0\", \"protocol\": \"1\"}", /* protocol must be a number */
        "null",
    };
    for (size_t i = 0; i < sizeof(junk) / sizeof(junk[0]); i++) {
        int rc;
        char *out = render(junk[i], &rc);
        if (rc != -1)
            fail_msg("junk %zu (%s) was accepted", i, junk[i]);
        assert_string_equal(out, "");
        free(out);
    }
    int rc;
    char *out = render(NULL, &rc);
    assert_int_equal(rc, -1);
    assert_string_equal(out, "");
    free(out);
    assert_int_equal(cli_render_status(example_json, NULL), -1);
}

/* ---- a stand-in daemon ------------------------------------------------------ */

typedef enum fake_mode {
    FAKE_STATUS, /* status -> status_reply with fake.status_json */
    FAKE_CHAT,   /* chat -> chat_reply "echo: <user text>" */
    FAKE_ERROR,  /* anything -> error reply fake.err_code / fake.err_msg */
} fake_mode;

typedef struct fake_daemon {
    nng_socket sock;
    pthread_t thread;
    char dir[64];
    char url[128];
    fake_mode mode;
    const char *status_json;
    const char *reply_content; /* NULL: echo the user text */
    int err_code;
    const char *err_msg;
    /* what the last request carried */
    pthread_mutex_t mu;
    int requests;
    lms_msg last;
} fake_daemon;

static fake_daemon fake;

static void fake_answer(nng_msg *in)
{
    lms_msg req, reply;
    lms_decode_err derr;
    void *buf = NULL;
    size_t len = 0;
    char echo[512];
    int rc = lms_decode(nng_msg_body(in), nng_msg_len(in), NULL, &req, &derr);
    nng_msg_free(in);
    if (rc != LMSCHED_OK) {
        lms_encode_error(derr.have_id ? derr.id : 0, rc, derr.message, NULL, &buf, &len);
        goto send;
    }
    if (fake.mode == FAKE_ERROR) {
        lms_encode_error(req.id, fake.err_code, fake.err_msg, NULL, &buf, &len);
    } else if (req.kind == LMS_KIND_STATUS) {
        lms_msg_init(&reply, LMS_KIND_STATUS_REPLY);
        reply.id = req.id;
        reply.u.status_reply.json = (char *)fake.status_json; /* borrowed, not finied */
        lms_encode(&reply, &buf, &len);
    } else if (req.kind == LMS_KIND_CHAT) {
        lms_msg_init(&reply, LMS_KIND_CHAT_REPLY);
        reply.id = req.id;
        const char *user =
            req.u.chat.n_messages > 0 ? req.u.chat.messages[0].content : "";
        snprintf(echo, sizeof(echo), "echo: %s", user);
        reply.u.chat_reply.content =
            fake.reply_content ? (char *)fake.reply_content : echo;
        reply.u.chat_reply.finish_reason = "stop";
        reply.u.chat_reply.model = "fake-model";
        reply.u.chat_reply.usage.prompt_tokens = 812;
        reply.u.chat_reply.usage.completion_tokens = 9;
        reply.u.chat_reply.usage.cached_tokens = -1;
        reply.u.chat_reply.timings.queue_ms = 12;
        reply.u.chat_reply.timings.ttft_ms = 24.871;
        reply.u.chat_reply.timings.total_ms = 900;
        reply.u.chat_reply.retries = 2;
        lms_encode(&reply, &buf, &len);
    } else {
        lms_encode_error(req.id, LMSCHED_EPROTO, "unexpected kind", "kind", &buf, &len);
    }
    pthread_mutex_lock(&fake.mu);
    lms_msg_fini(&fake.last);
    fake.last = req; /* keep it for the test to inspect */
    fake.requests++;
    pthread_mutex_unlock(&fake.mu);
send:
    if (buf == NULL)
        return;
    nng_msg *out;
    if (nng_msg_alloc(&out, 0) == 0) {
        nng_msg_append(out, buf, len);
        if (nng_sendmsg(fake.sock, out, 0) != 0)
            nng_msg_free(out);
    }
    free(buf);
}

static void *fake_main(void *arg)
{
    for (;;) {
        nng_msg *in;
        if (nng_recvmsg(fake.sock, &in, 0) != 0)
            return NULL; /* closed at teardown */
        fake_answer(in);
    }
}

static int fake_setup(void **state)
{
    memset(&fake, 0, sizeof(fake));
    pthread_mutex_init(&fake.mu, NULL);
    strcpy(fake.dir, "/tmp/cli_test_XXXXXX");
    if (mkdtemp(fake.dir) == NULL)
        return -1;
    snprintf(fake.url, sizeof(fake.url), "ipc://%s/d.sock", fake.dir);
    fake.status_json = example_json;
    if (nng_rep0_open(&fake.sock) != 0 || nng_listen(fake.sock, fake.url, NULL, 0) != 0)
        return -1;
    if (pthread_create(&fake.thread, NULL, fake_main, NULL) != 0)
        return -1;
    return 0;
}

static int fake_teardown(void **state)
{
    char path[160];
    nng_close(fake.sock);
    pthread_join(fake.thread, NULL);
    lms_msg_fini(&fake.last);
    pthread_mutex_destroy(&fake.mu);
    snprintf(path, sizeof(path), "%s/d.sock", fake.dir);
    unlink(path);
    rmdir(fake.dir);
    return 0;
}

/* ---- running the commands with captured output ------------------------------ */

typedef struct run_result {
    int code;
    char *out;
    char *err;
} run_result;

static int capture_fd(int fd, char *path)
{
    strcpy(path, "/tmp/cli_test_out_XXXXXX");
    int tmp = mkstemp(path);
    assert_true(tmp >= 0);
    int saved = dup(fd);
    assert_true(saved >= 0);
    assert_true(dup2(tmp, fd) >= 0);
    close(tmp);
    return saved;
}

static char *restore_fd(int fd, int saved, const char *path)
{
    assert_true(dup2(saved, fd) >= 0);
    close(saved);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *text = calloc(1, 1 << 16);
    assert_non_null(text);
    size_t n = fread(text, 1, (1 << 16) - 1, f);
    text[n] = '\0';
    fclose(f);
    unlink(path);
    return text;
}

/* Runs cli_<cmd>_main with argv (NULL-terminated), stdin from stdin_text when
 * not NULL. The caller frees out and err. */
static run_result run(int (*fn)(int, char **), const char *stdin_text, const char **args)
{
    char *argv[32];
    int argc = 0;
    for (; args[argc] != NULL; argc++) {
        assert_true(argc < 31);
        argv[argc] = (char *)args[argc];
    }
    argv[argc] = NULL;

    char in_path[64] = "", out_path[64], err_path[64];
    int saved_in = -1;
    if (stdin_text != NULL) {
        strcpy(in_path, "/tmp/cli_test_in_XXXXXX");
        int tmp = mkstemp(in_path);
        assert_true(tmp >= 0);
        assert_int_equal(write(tmp, stdin_text, strlen(stdin_text)),
                         (ssize_t)strlen(stdin_text));
        assert_int_equal(lseek(tmp, 0, SEEK_SET), 0);
        saved_in = dup(0);
        assert_true(dup2(tmp, 0) >= 0);
        close(tmp);
        clearerr(stdin);
    }
    fflush(stdout);
    fflush(stderr);
    int saved_out = capture_fd(1, out_path);
    int saved_err = capture_fd(2, err_path);

    run_result r;
    r.code = fn(argc, argv);

    fflush(stdout);
    fflush(stderr);
    r.out = restore_fd(1, saved_out, out_path);
    r.err = restore_fd(2, saved_err, err_path);
    if (saved_in >= 0) {
        assert_true(dup2(saved_in, 0) >= 0);
        close(saved_in);
        clearerr(stdin);
        unlink(in_path);
    }
    return r;
}

static void run_free(run_result *r)
{
    free(r->out);
    free(r->err);
}

/* ---- lmsched status ---------------------------------------------------------- */

static void test_status_json(void **state)
{
    run_result r = run(cli_status_main, NULL,
                       (const char *[]){"status", "--json", "--url", fake.url, NULL});
    assert_int_equal(r.code, 0);
    assert_string_equal(r.err, "");
    json_error_t jerr;
    json_t *got = json_loads(r.out, 0, &jerr);
    json_t *want = json_loads(example_json, 0, &jerr);
    assert_non_null(got);
    assert_non_null(want);
    assert_true(json_equal(got, want));
    json_decref(got);
    json_decref(want);
    assert_contains(r.out, "\"ram_fraction\": 0.6,");
    /* pretty-printed, in the daemon's key order */
    assert_contains(r.out,
                    "{\n  \"version\": \"0.1.0\",\n  \"protocol\": 1,\n  \"pid\": 4242,");
    run_free(&r);
}

static void test_status_table(void **state)
{
    run_result r =
        run(cli_status_main, NULL, (const char *[]){"status", "--url", fake.url, NULL});
    assert_int_equal(r.code, 0);
    assert_string_equal(r.err, "");
    assert_contains(r.out, "max 4 concurrent (slots)");
    assert_contains(r.out, "failed 3 (deadline 2, backend_crash 1)");
    run_free(&r);
}

static void test_status_not_a_document(void **state)
{
    fake.status_json = "{\"hello\": 1}";
    run_result r =
        run(cli_status_main, NULL, (const char *[]){"status", "--url", fake.url, NULL});
    assert_int_equal(r.code, 1);
    assert_string_equal(r.out, "");
    assert_contains(r.err, "lmsched: proto: ");
    assert_contains(r.err, "not a status document");
    run_free(&r);
}

static void test_status_error_reply(void **state)
{
    fake.mode = FAKE_ERROR;
    fake.err_code = LMSCHED_ESHUTDOWN;
    fake.err_msg = "draining, bye";
    run_result r = run(cli_status_main, NULL,
                       (const char *[]){"status", "--json", "--url", fake.url, NULL});
    assert_int_equal(r.code, 1);
    /* --json: the error is a JSON document on stdout too, as with chat */
    json_error_t jerr;
    json_t *doc = json_loads(r.out, 0, &jerr);
    assert_non_null(doc);
    assert_string_equal(json_string_value(json_object_get(json_object_get(doc, "error"), "code")),
                        "shutdown");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(doc, "error"), "message")),
        "draining, bye");
    json_decref(doc);
    assert_contains(r.err,
                    "lmsched: shutdown: scheduler is shutting down: draining, bye\n");
    run_free(&r);
    /* without --json stdout stays empty */
    r = run(cli_status_main, NULL, (const char *[]){"status", "--url", fake.url, NULL});
    assert_int_equal(r.code, 1);
    assert_string_equal(r.out, "");
    run_free(&r);
}

/* No daemon and --json: the error document says so on stdout (issue 9). */
static void test_status_json_no_daemon(void **state)
{
    char url[160];
    snprintf(url, sizeof(url), "ipc://%s/nobody.sock", fake.dir);
    run_result r = run(cli_status_main, NULL,
                       (const char *[]){"status", "--json", "--url", url, "--timeout", "300",
                                        NULL});
    assert_int_equal(r.code, 3);
    json_error_t jerr;
    json_t *doc = json_loads(r.out, 0, &jerr);
    if (doc == NULL)
        fail_msg("stdout is not JSON: '%s'", r.out);
    const char *code =
        json_string_value(json_object_get(json_object_get(doc, "error"), "code"));
    assert_non_null(code);
    assert_true(strcmp(code, "no_daemon") == 0 || strcmp(code, "timeout") == 0);
    json_decref(doc);
    run_free(&r);
}

/* One limit for max_tokens, quoted when it is passed (issue 9). */
static void test_chat_max_tokens_limit(void **state)
{
    run_result r = run(cli_chat_main, NULL,
                       (const char *[]){"chat", "--max-tokens", "2000000", "hi", NULL});
    assert_int_equal(r.code, 2);
    assert_contains(r.err, "--max-tokens: expected an integer from 1 to 1048576, got '2000000'");
    run_free(&r);
    r = run(cli_chat_main, NULL, (const char *[]){"chat", "--help", NULL});
    assert_contains(r.out, "1 to 1048576");
    run_free(&r);
    fake.mode = FAKE_CHAT;
    r = run(cli_chat_main, NULL,
            (const char *[]){"chat", "--max-tokens", "1048576", "--url", fake.url, "hi", NULL});
    assert_int_equal(r.code, 0);
    run_free(&r);
    assert_int_equal(fake.last.u.chat.max_tokens, 1048576);
}

/* No daemon at the URL: exit 3 well within the hang guard. */
static void test_status_no_daemon(void **state)
{
    char url[160];
    snprintf(url, sizeof(url), "ipc://%s/nobody.sock", fake.dir);
    run_result r =
        run(cli_status_main, NULL,
            (const char *[]){"status", "--url", url, "--timeout", "300", NULL});
    assert_int_equal(r.code, 3);
    assert_string_equal(r.out, "");
    if (strncmp(r.err, "lmsched: no_daemon: ", 20) != 0 &&
        strncmp(r.err, "lmsched: timeout: ", 18) != 0)
        fail_msg("unexpected message: %s", r.err);
    run_free(&r);
}

static void test_status_usage(void **state)
{
    const char *const *const bad[] = {
        (const char *[]){"status", "extra", NULL},
        (const char *[]){"status", "--bogus", NULL},
        (const char *[]){"status", "--timeout", NULL},
        (const char *[]){"status", "--timeout", "0", NULL},
        (const char *[]){"status", "--timeout", "12x", NULL},
        (const char *[]){"status", "--json=yes", NULL},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        run_result r = run(cli_status_main, NULL, (const char **)bad[i]);
        if (r.code != 2)
            fail_msg("case %zu: exit %d, stderr: %s", i, r.code, r.err);
        assert_string_equal(r.out, "");
        assert_contains(r.err, "lmsched status: ");
        run_free(&r);
    }
    run_result r = run(cli_status_main, NULL, (const char *[]){"status", "--help", NULL});
    assert_int_equal(r.code, 0);
    assert_contains(r.out, "usage: lmsched status");
    assert_string_equal(r.err, "");
    run_free(&r);
    /* nothing reached the daemon */
    assert_int_equal(fake.requests, 0);
}

/* ---- lmsched chat ------------------------------------------------------------ */

static void test_chat_flags_on_the_wire(void **state)
{
    fake.mode = FAKE_CHAT;
    run_result r =
        run(cli_chat_main, NULL,
            (const char *[]){"chat", "--system", "You are terse.", "--model", "m1",
                             "--max-tokens", "7", "--temperature", "0.25", "--priority",
                             "8", "--agent", "tester", "--url", fake.url, "--timeout",
                             "20000", "Say hello.", NULL});
    assert_int_equal(r.code, 0);
    assert_string_equal(r.err, "");
    assert_string_equal(r.out, "echo: Say hello.\n");
    run_free(&r);

    pthread_mutex_lock(&fake.mu);
    assert_int_equal(fake.requests, 1);
    const lms_chat_req *c = &fake.last.u.chat;
    assert_int_equal(fake.last.kind, LMS_KIND_CHAT);
    assert_string_equal(c->system, "You are terse.");
    assert_int_equal(c->n_messages, 1);
    assert_string_equal(c->messages[0].role, "user");
    assert_string_equal(c->messages[0].content, "Say hello.");
    assert_string_equal(c->model, "m1");
    assert_int_equal(c->max_tokens, 7);
    assert_true(c->has_temperature);
    assert_true(c->temperature == 0.25);
    assert_int_equal(c->priority, 8);
    assert_string_equal(c->agent, "tester");
    pthread_mutex_unlock(&fake.mu);
}

/* Defaults: empty system prompt, no model or limits, priority 5. */
static void test_chat_defaults(void **state)
{
    fake.mode = FAKE_CHAT;
    fake.reply_content = "already ends in a newline\n";
    run_result r =
        run(cli_chat_main, NULL, (const char *[]){"chat", "--url", fake.url, "hi", NULL});
    assert_int_equal(r.code, 0);
    assert_string_equal(r.out, "already ends in a newline\n");
    run_free(&r);
    pthread_mutex_lock(&fake.mu);
    const lms_chat_req *c = &fake.last.u.chat;
    assert_string_equal(c->system, "");
    assert_null(c->model);
    assert_int_equal(c->max_tokens, -1);
    assert_false(c->has_temperature);
    assert_int_equal(c->priority, 5);
    assert_string_equal(c->agent, "lmsched-chat");
    pthread_mutex_unlock(&fake.mu);

    fake.reply_content = "";
    r = run(cli_chat_main, NULL, (const char *[]){"chat", "--url", fake.url, "hi", NULL});
    assert_int_equal(r.code, 0);
    assert_string_equal(r.out, "\n");
    run_free(&r);
}

static void test_chat_json(void **state)
{
    fake.mode = FAKE_CHAT;
    run_result r =
        run(cli_chat_main, NULL,
            (const char *[]){"chat", "--json", "--url", fake.url, "ping", NULL});
    assert_int_equal(r.code, 0);
    json_error_t jerr;
    json_t *doc = json_loads(r.out, 0, &jerr);
    if (doc == NULL)
        fail_msg("not JSON: %s", r.out);
    assert_string_equal(json_string_value(json_object_get(doc, "content")), "echo: ping");
    assert_string_equal(json_string_value(json_object_get(doc, "finish_reason")), "stop");
    assert_string_equal(json_string_value(json_object_get(doc, "model")), "fake-model");
    json_t *usage = json_object_get(doc, "usage");
    assert_int_equal(json_integer_value(json_object_get(usage, "prompt_tokens")), 812);
    assert_int_equal(json_integer_value(json_object_get(usage, "completion_tokens")), 9);
    assert_true(json_is_null(json_object_get(usage, "cached_tokens"))); /* not reported */
    json_t *t = json_object_get(doc, "timings");
    assert_true(json_number_value(json_object_get(t, "queue_ms")) == 12);
    assert_true(json_number_value(json_object_get(t, "ttft_ms")) == 24.871);
    /* printed short, not as 24.870999999999999 */
    assert_contains(r.out, "\"ttft_ms\": 24.871,");
    assert_true(json_number_value(json_object_get(t, "total_ms")) == 900);
    assert_int_equal(json_integer_value(json_object_get(doc, "retries")), 2);
    json_decref(doc);
    run_free(&r);
}

static void test_chat_stdin_and_system_file(void **state)
{
    fake.mode = FAKE_CHAT;
    char path[] = "/tmp/cli_test_sys_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    static const char sys[] = "Line one.\nLine two, with trailing space \n";
    assert_int_equal(write(fd, sys, sizeof(sys) - 1), (ssize_t)(sizeof(sys) - 1));
    close(fd);

    run_result r = run(
        cli_chat_main, "question from\nstdin\n",
        (const char *[]){"chat", "--system-file", path, "--url", fake.url, "-", NULL});
    assert_int_equal(r.code, 0);
    assert_string_equal(r.out, "echo: question from\nstdin\n");
    run_free(&r);
    pthread_mutex_lock(&fake.mu);
    assert_string_equal(fake.last.u.chat.system, sys); /* byte for byte */
    assert_string_equal(fake.last.u.chat.messages[0].content, "question from\nstdin\n");
    pthread_mutex_unlock(&fake.mu);
    unlink(path);
}

static void test_chat_error_reply(void **state)
{
    fake.mode = FAKE_ERROR;
    fake.err_code = LMSCHED_EDEADLINE;
    fake.err_msg = "waited 5000 ms in the queue";
    run_result r =
        run(cli_chat_main, NULL, (const char *[]){"chat", "--url", fake.url, "hi", NULL});
    assert_int_equal(r.code, 1);
    assert_string_equal(r.out, "");
    assert_contains(r.err,
                    "lmsched: deadline: request deadline passed before it could run: "
                    "waited 5000 ms in the queue\n");
    run_free(&r);

    /* control characters in the daemon's message do not reach the terminal */
    fake.err_code = LMSCHED_EBACKEND_HTTP;
    fake.err_msg = "HTTP 500 \x1b[31mred\x1b[0m";
    r = run(cli_chat_main, NULL, (const char *[]){"chat", "--url", fake.url, "hi", NULL});
    assert_int_equal(r.code, 1);
    assert_contains(r.err, "lmsched: backend_http: ");
    assert_contains(r.err, "HTTP 500 ?[31mred?[0m\n");
    run_free(&r);

    /* --json: the failure is also a JSON document on stdout */
    fake.err_code = LMSCHED_EDEADLINE;
    fake.err_msg = "waited 5000 ms in the queue";
    r = run(cli_chat_main, NULL,
            (const char *[]){"chat", "--json", "--url", fake.url, "hi", NULL});
    assert_int_equal(r.code, 1);
    json_error_t jerr;
    json_t *doc = json_loads(r.out, 0, &jerr);
    if (doc == NULL)
        fail_msg("not JSON: %s", r.out);
    json_t *e = json_object_get(doc, "error");
    assert_string_equal(json_string_value(json_object_get(e, "code")), "deadline");
    assert_int_equal(json_integer_value(json_object_get(e, "number")), LMSCHED_EDEADLINE);
    assert_string_equal(json_string_value(json_object_get(e, "message")),
                        "waited 5000 ms in the queue");
    json_decref(doc);
    assert_contains(r.err, "lmsched: deadline: ");
    run_free(&r);
}

static void test_chat_no_daemon(void **state)
{
    char url[160];
    snprintf(url, sizeof(url), "ipc://%s/nobody.sock", fake.dir);
    run_result r =
        run(cli_chat_main, NULL,
            (const char *[]){"chat", "--url", url, "--timeout", "300", "hi", NULL});
    assert_int_equal(r.code, 3);
    assert_string_equal(r.out, "");
    assert_contains(r.err, "lmsched: ");
    run_free(&r);
}

static void test_chat_usage(void **state)
{
    const char *const *const bad[] = {
        (const char *[]){"chat", NULL},
        (const char *[]){"chat", "one", "two", NULL},
        (const char *[]){"chat", "--system", "a", "--system-file", "/dev/null", "hi",
                         NULL},
        (const char *[]){"chat", "--priority", "10", "hi", NULL},
        (const char *[]){"chat", "--priority", "-1", "hi", NULL},
        (const char *[]){"chat", "--max-tokens", "0", "hi", NULL},
        (const char *[]){"chat", "--max-tokens", "abc", "hi", NULL},
        (const char *[]){"chat", "--temperature", "nan", "hi", NULL},
        (const char *[]){"chat", "--temperature", "11", "hi", NULL},
        (const char *[]){"chat", "--timeout", "-5", "hi", NULL},
        (const char *[]){"chat", "--nope", "hi", NULL},
        (const char *[]){"chat", "hi", "--model", NULL},
        (const char *[]){"chat", "--system-file", "/nonexistent/dir/file", "hi", NULL},
        (const char *[]){"chat", "--system-file", "-", "-", NULL},
        (const char *[]){"chat", "--extra", "[1]", "hi", NULL},
        (const char *[]){"chat", "--extra", "{\"stream\":true}", "hi", NULL},
        (const char *[]){"chat", "--extra", "{\"top_k\":", "hi", NULL},
        (const char *[]){"chat", "--tools", "/nonexistent/tools.json", "hi", NULL},
        (const char *[]){"chat", "--tools", "-", "-", NULL},
        (const char *[]){"chat", "--tools", "/dev/null", "hi", NULL},
        (const char *[]){"chat", "--response-format", "/dev/null", "hi", NULL},
        (const char *[]){"chat", "--tool-choice", "{bad", "hi", NULL},
        (const char *[]){"chat", "--seed", "abc", "hi", NULL},
        (const char *[]){"chat", "--seed", "99999999999999999999", "hi", NULL},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        run_result r = run(cli_chat_main, NULL, (const char **)bad[i]);
        if (r.code != 2)
            fail_msg("case %zu: exit %d, stderr: %s", i, r.code, r.err);
        assert_string_equal(r.out, "");
        assert_contains(r.err, "lmsched chat: ");
        run_free(&r);
    }
    run_result r = run(cli_chat_main, NULL, (const char *[]){"chat", "-h", NULL});
    assert_int_equal(r.code, 0);
    assert_contains(r.out, "usage: lmsched chat");
    run_free(&r);
    assert_int_equal(fake.requests, 0);
}

/* Writes text to a new temp file; path gets its name (the caller unlinks). */
static void temp_file(char *path, const char *text)
{
    strcpy(path, "/tmp/cli_test_json_XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
}

/* --tools, --tool-choice, --response-format, --extra and --seed land in
 * the request as given; a bad one names the field. */
static void test_chat_json_flags_on_the_wire(void **state)
{
    static const char tools[] =
        "[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
        "\"parameters\":{\"type\":\"object\"}}}]";
    static const char format[] = "{\"type\":\"json_object\"}";
    char tools_path[64], format_path[64];
    fake.mode = FAKE_CHAT;
    temp_file(tools_path, tools);
    temp_file(format_path, format);
    run_result r = run(cli_chat_main, NULL,
                       (const char *[]){"chat", "--tools", tools_path, "--tool-choice",
                                        "get_weather", "--response-format", format_path,
                                        "--extra", "{\"top_k\":40,\"min_p\":0.05}",
                                        "--seed", "-12", "--url", fake.url, "hi", NULL});
    assert_int_equal(r.code, 0);
    assert_string_equal(r.out, "echo: hi\n");
    run_free(&r);
    pthread_mutex_lock(&fake.mu);
    const lms_chat_req *c = &fake.last.u.chat;
    assert_string_equal(c->tools_json, tools);
    assert_string_equal(
        c->tool_choice_json,
        "{\"type\":\"function\",\"function\":{\"name\":\"get_weather\"}}");
    assert_string_equal(c->response_format_json, format);
    assert_string_equal(c->extra_json, "{\"top_k\":40,\"min_p\":0.050000000000000003}");
    assert_true(c->has_seed);
    assert_int_equal(c->seed, -12);
    assert_false(c->stream);
    pthread_mutex_unlock(&fake.mu);

    r = run(cli_chat_main, NULL,
            (const char *[]){"chat", "--tool-choice", "required", "--url", fake.url, "hi",
                             NULL});
    assert_int_equal(r.code, 0);
    run_free(&r);
    pthread_mutex_lock(&fake.mu);
    assert_string_equal(fake.last.u.chat.tool_choice_json, "\"required\"");
    pthread_mutex_unlock(&fake.mu);

    /* a plain answer's document has no reasoning, tool_calls or logprobs */
    r = run(cli_chat_main, NULL,
            (const char *[]){"chat", "--json", "--url", fake.url, "hi", NULL});
    assert_int_equal(r.code, 0);
    assert_null(strstr(r.out, "reasoning"));
    assert_null(strstr(r.out, "tool_calls"));
    assert_null(strstr(r.out, "logprobs"));
    run_free(&r);

    /* the setter's reason, naming the field */
    unlink(tools_path);
    temp_file(tools_path, "[{\"type\":\"function\",\"function\":{}}]");
    r = run(
        cli_chat_main, NULL,
        (const char *[]){"chat", "--tools", tools_path, "--url", fake.url, "hi", NULL});
    assert_int_equal(r.code, 2);
    assert_contains(r.err, "invalid --tools: tools[0].function.name: missing");
    run_free(&r);
    r = run(cli_chat_main, NULL,
            (const char *[]){"chat", "--extra", "{\"seed\":1}", "--url", fake.url, "hi",
                             NULL});
    assert_int_equal(r.code, 2);
    assert_contains(r.err, "invalid --extra: extra.seed: not allowed in extra");
    run_free(&r);
    unlink(tools_path);
    unlink(format_path);
}

/* A user text with a NUL byte cannot be sent whole: refused, not cut. */
static void test_chat_stdin_nul(void **state)
{
    char path[] = "/tmp/cli_test_nul_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "ab\0cd", 5), 5);
    close(fd);
    run_result r = run(cli_chat_main, NULL,
                       (const char *[]){"chat", "--system-file", path, "hi", NULL});
    assert_int_equal(r.code, 2);
    assert_contains(r.err, "NUL byte");
    run_free(&r);
    unlink(path);
    assert_int_equal(fake.requests, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_render_example),
        cmocka_unit_test(test_render_http),
        cmocka_unit_test(test_render_preempted),
        cmocka_unit_test(test_render_restore_probe),
        cmocka_unit_test(test_render_nulls),
        cmocka_unit_test(test_render_missing_sections),
        cmocka_unit_test(test_render_hostile_strings),
        cmocka_unit_test(test_render_units),
        cmocka_unit_test(test_render_junk),
        cmocka_unit_test_setup_teardown(test_status_json, fake_setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_status_table, fake_setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_status_not_a_document, fake_setup,
                                        fake_teardown),
        cmocka_unit_test_setup_teardown(test_status_error_reply, fake_setup,
                                        fake_teardown),
        cmocka_unit_test_setup_teardown(test_status_no_daemon, fake_setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_status_json_no_daemon, fake_setup,
                                        fake_teardown),
        cmocka_unit_test_setup_teardown(test_chat_max_tokens_limit, fake_setup,
                                        fake_teardown),
        cmocka_unit_test_setup_teardown(test_status_usage, fake_setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_chat_flags_on_the_wire, fake_setup,
                                        fake_teardown),
        cmocka_unit_test_setup_teardown(test_chat_defaults, fake_setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_chat_json, fake_setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_chat_stdin_and_system_file, fake_setup,
                                        fake_teardown),
        cmocka_unit_test_setup_teardown(test_chat_error_reply, fake_setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_chat_no_daemon, fake_setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_chat_usage, fake_setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_chat_stdin_nul, fake_setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_chat_json_flags_on_the_wire, fake_setup,
                                        fake_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
