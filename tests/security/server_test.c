/*
 * server_test - the daemon's access control against a real `lmsched serve`
 * on real sockets (docs/security.md): the ipc:// socket file's mode and
 * group, the refusal of a tcp:// listener without a token, the token file
 * checks, the token on every request (through agentlib and the lmsched
 * command), and the per-connection limit on outstanding requests.
 */
#include <grp.h>
#include <pthread.h>
#include <signal.h>
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

#include "kit/check.h"
#include "kit/clock.h"
#include "kit/daemon.h"
#include "kit/env.h"
#include "kit/fs.h"
#include "kit/net.h"
#include "kit/proc.h"
#include "kit/tally.h"
#include "lmsched/agent.h"

#define TOKEN "s3cr3t-T0ken_for-lmsched"
#define WRONG "s3cr3t-T0ken_for-lmschee"

static const char *ipc_path(const kit_env *e)
{
    return e->url + strlen("ipc://");
}

static void start_daemon(kit_env *e, const char *const *args)
{
    kit_env_start(e, NULL, args);
}

static void start_sim(kit_env *e, const char *const *args)
{
    if (kit_env_sim_start(e, 0, args) != 0) {
        kit_env_dump_logs(e);
        fail_msg("lmsim did not start");
    }
}

/* A chat request with one user message and max_tokens (<= 0: unset). */
static lmsched_request *sec_req(const char *user, int max_tokens)
{
    return kit_req("You are a test.", user, max_tokens);
}

/* Writes content to <e->dir>/<name> with the given mode and puts the path
 * in path (size len). */
static void write_file(kit_env *e, const char *name, const char *content, unsigned mode,
                       char *path, size_t len)
{
    snprintf(path, len, "%s/%s", e->dir, name);
    assert_int_equal(kit_fs_write(path, content, mode), 0);
}

/* One chat through a client with the given token (NULL: none); returns the
 * outcome and copies the message. */
static int chat_with(const char *url, const char *token, char *msg, size_t len)
{
    lmsched_client *c = NULL;
    lmsched_result *res = NULL;
    lmsched_request *r = sec_req("hello", 8);

    assert_int_equal(lmsched_client_open(&c, url), LMSCHED_OK);
    if (token != NULL)
        assert_int_equal(lmsched_client_set_auth(c, token), LMSCHED_OK);
    int rc = lmsched_chat(c, r, 20000, &res);
    snprintf(msg, len, "%s",
             res && lmsched_result_message(res) ? lmsched_result_message(res) : "");
    lmsched_result_free(res);
    lmsched_request_free(r);
    lmsched_client_close(c);
    return rc;
}

/* One status request through a fresh client (token from the environment). */
static int status_env(const char *url)
{
    lmsched_client *c = NULL;
    char *json = NULL, *err = NULL;

    assert_int_equal(lmsched_client_open(&c, url), LMSCHED_OK);
    int rc = lmsched_status(c, 10000, &json, &err);
    lmsched_free(json);
    lmsched_free(err);
    lmsched_client_close(c);
    return rc;
}

/* ---- the ipc:// socket file ------------------------------------------------ */

static void test_socket_mode_default(void **state)
{
    (void)state;
    kit_env e;
    struct stat st;

    kit_env_init(&e);
    start_daemon(&e, NULL);
    assert_int_equal(stat(ipc_path(&e), &st), 0);
    printf("socket %s: mode %04o\n", ipc_path(&e), (unsigned)(st.st_mode & 07777));
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(kit_proc_stop(&e.daemon, SIGTERM, 10000), 0);
    kit_env_fini(&e);
}

static void test_socket_mode_0660(void **state)
{
    (void)state;
    kit_env e;
    struct stat st;

    kit_env_init(&e);
    start_daemon(&e, (const char *const[]){"--socket-mode", "0660", NULL});
    assert_int_equal(stat(ipc_path(&e), &st), 0);
    assert_int_equal(st.st_mode & 0777, 0660);
    assert_int_equal(kit_proc_stop(&e.daemon, SIGTERM, 10000), 0);
    kit_env_fini(&e);
}

static void test_socket_mode_bad(void **state)
{
    (void)state;
    kit_env e;
    char *out = NULL;

    kit_env_init(&e);
    /* 0066 takes the owner's own access away; 0999 is not octal. */
    assert_int_equal(
        kit_env_serve_run(&e, (const char *const[]){"--socket-mode", "0066", NULL}, &out),
        2);
    assert_non_null(strstr(out, "--socket-mode"));
    free(out);
    assert_int_equal(
        kit_env_serve_run(&e, (const char *const[]){"--socket-mode", "0999", NULL}, &out),
        2);
    free(out);
    kit_env_fini(&e);
}

static void test_socket_group_own(void **state)
{
    (void)state;
    kit_env e;
    struct stat st;
    struct group *gr = getgrgid(getgid());

    assert_non_null(gr);
    char name[256];
    snprintf(name, sizeof(name), "%s", gr->gr_name);
    kit_env_init(&e);
    start_daemon(
        &e, (const char *const[]){"--socket-group", name, "--socket-mode", "0660", NULL});
    assert_int_equal(stat(ipc_path(&e), &st), 0);
    printf("socket group %s (%u): gid %u, mode %04o\n", name, (unsigned)getgid(),
           (unsigned)st.st_gid, (unsigned)(st.st_mode & 07777));
    assert_int_equal(st.st_gid, getgid());
    assert_int_equal(st.st_mode & 0777, 0660);
    /* The daemon still serves its owner. */
    assert_int_equal(status_env(e.url), LMSCHED_OK);
    assert_int_equal(kit_proc_stop(&e.daemon, SIGTERM, 10000), 0);

    /* A group given by number works the same. */
    char num[32];
    snprintf(num, sizeof(num), "%u", (unsigned)getgid());
    start_daemon(&e, (const char *const[]){"--socket-group", num, NULL});
    assert_int_equal(stat(ipc_path(&e), &st), 0);
    assert_int_equal(st.st_gid, getgid());
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(kit_proc_stop(&e.daemon, SIGTERM, 10000), 0);
    kit_env_fini(&e);
}

static void test_socket_group_missing(void **state)
{
    (void)state;
    kit_env e;
    char *out = NULL;

    kit_env_init(&e);
    int rc = kit_env_serve_run(
        &e, (const char *const[]){"--socket-group", "no-such-group-lmsched-test", NULL},
        &out);
    printf("exit %d: %s", rc, out);
    assert_int_equal(rc, 4);
    assert_non_null(strstr(out, "no such group"));
    free(out);
    kit_env_fini(&e);
}

/* ---- tcp:// and the token file ------------------------------------------- */

static void tcp_url(kit_env *e)
{
    int port = kit_net_free_port();
    assert_true(port > 0);
    snprintf(e->url, sizeof(e->url), "tcp://127.0.0.1:%d", port);
}

static void test_tcp_needs_token(void **state)
{
    (void)state;
    kit_env e;
    char *out = NULL;

    kit_env_init(&e);
    tcp_url(&e);
    int rc = kit_env_serve_run(&e, NULL, &out);
    printf("exit %d: %s", rc, out);
    assert_int_equal(rc, 2);
    assert_non_null(strstr(out, "--auth-token-file"));
    free(out);
    /* Socket file options make no sense there either. */
    char tok[600];
    write_file(&e, "token", TOKEN "\n", 0600, tok, sizeof(tok));
    rc = kit_env_serve_run(
        &e,
        (const char *const[]){"--auth-token-file", tok, "--socket-mode", "0660", NULL},
        &out);
    assert_int_equal(rc, 2);
    free(out);
    kit_env_fini(&e);
}

static void test_token_file_checks(void **state)
{
    (void)state;
    kit_env e;
    char tok[600];
    char *out = NULL;

    kit_env_init(&e);
    tcp_url(&e);

    write_file(&e, "token", TOKEN "\n", 0644, tok, sizeof(tok));
    int rc = kit_env_serve_run(&e, (const char *const[]){"--auth-token-file", tok, NULL},
                               &out);
    printf("mode 0644: exit %d: %s", rc, out);
    assert_int_equal(rc, 4);
    assert_non_null(strstr(out, "too open"));
    assert_null(strstr(out, TOKEN));
    free(out);

    write_file(&e, "empty", "\n", 0600, tok, sizeof(tok));
    rc = kit_env_serve_run(&e, (const char *const[]){"--auth-token-file", tok, NULL},
                           &out);
    printf("empty: exit %d: %s", rc, out);
    assert_int_equal(rc, 4);
    assert_non_null(strstr(out, "no token"));
    free(out);

    rc = kit_env_serve_run(
        &e,
        (const char *const[]){"--auth-token-file", "/nonexistent/lmsched-token", NULL},
        &out);
    assert_int_equal(rc, 4);
    assert_non_null(strstr(out, "No such file"));
    free(out);

    /* --force accepts the open file (and the token works). */
    write_file(&e, "token", TOKEN "\n", 0644, tok, sizeof(tok));
    setenv("LMSCHED_AUTH_TOKEN", TOKEN, 1);
    start_daemon(&e, (const char *const[]){"--auth-token-file", tok, "--force", NULL});
    unsetenv("LMSCHED_AUTH_TOKEN");
    assert_int_equal(status_env(e.url), LMSCHED_EAUTH);
    assert_int_equal(kit_proc_stop(&e.daemon, SIGTERM, 10000), 0);
    kit_env_fini(&e);
}

static void test_tcp_token(void **state)
{
    (void)state;
    kit_env e;
    char tok[600], msg[512], out[600];

    kit_env_init(&e);
    start_sim(&e, (const char *const[]){"--time-scale", "20", NULL});
    tcp_url(&e);
    write_file(&e, "token", TOKEN "\n", 0600, tok, sizeof(tok));
    /* The kit waits for a status reply, which needs the token. */
    setenv("LMSCHED_AUTH_TOKEN", TOKEN, 1);
    start_daemon(&e, (const char *const[]){"--auth-token-file", tok, NULL});
    unsetenv("LMSCHED_AUTH_TOKEN");

    /* No token: refused, chat and status alike. */
    int rc = chat_with(e.url, NULL, msg, sizeof(msg));
    printf("no token: %s: %s\n", lmsched_strerror(rc), msg);
    assert_int_equal(rc, LMSCHED_EAUTH);
    assert_non_null(strstr(msg, "LMSCHED_AUTH_TOKEN"));
    assert_int_equal(status_env(e.url), LMSCHED_EAUTH);

    /* A wrong token, one character off, and a longer one with the right
     * prefix: refused. */
    rc = chat_with(e.url, WRONG, msg, sizeof(msg));
    printf("wrong token: %s: %s\n", lmsched_strerror(rc), msg);
    assert_int_equal(rc, LMSCHED_EAUTH);
    assert_int_equal(chat_with(e.url, TOKEN "x", msg, sizeof(msg)), LMSCHED_EAUTH);
    assert_int_equal(chat_with(e.url, "s3cr3t", msg, sizeof(msg)), LMSCHED_EAUTH);

    /* The right token through lmsched_client_set_auth, then through the
     * environment variable. */
    rc = chat_with(e.url, TOKEN, msg, sizeof(msg));
    assert_int_equal(rc, LMSCHED_OK);
    setenv("LMSCHED_AUTH_TOKEN", TOKEN, 1);
    assert_int_equal(chat_with(e.url, NULL, msg, sizeof(msg)), LMSCHED_OK);
    assert_int_equal(status_env(e.url), LMSCHED_OK);
    /* set_auth(NULL) takes the environment's token away again. */
    {
        lmsched_client *c = NULL;
        char *json = NULL, *err = NULL;
        assert_int_equal(lmsched_client_open(&c, e.url), LMSCHED_OK);
        assert_int_equal(lmsched_client_set_auth(c, NULL), LMSCHED_OK);
        assert_int_equal(lmsched_status(c, 10000, &json, &err), LMSCHED_EAUTH);
        lmsched_free(json);
        lmsched_free(err);
        lmsched_client_close(c);
    }

    /* The lmsched command takes it from the environment too. */
    snprintf(out, sizeof(out), "%s/status.out", e.dir);
    rc = kit_lmsched_run((const char *const[]){"status", "--json", "--url", e.url, NULL},
                         out, 20000);
    assert_int_equal(rc, 0);
    assert_true(kit_fs_contains(out, "\"completed\""));
    rc = kit_lmsched_run(
        (const char *const[]){"chat", "--url", e.url, "--max-tokens", "4", "hi", NULL},
        out, 20000);
    assert_int_equal(rc, 0);
    unsetenv("LMSCHED_AUTH_TOKEN");
    rc = kit_lmsched_run((const char *const[]){"status", "--url", e.url, NULL}, out,
                         20000);
    char *text = kit_fs_read(out);
    printf("lmsched status without the token: exit %d: %s", rc, text ? text : "");
    free(text);
    assert_int_equal(rc, 1);
    assert_true(kit_fs_contains(out, "auth"));

    /* Neither the token nor a guess is ever logged; refusals are. */
    assert_false(kit_fs_contains(e.daemon.log, TOKEN));
    assert_false(kit_fs_contains(e.daemon.log, WRONG));
    assert_true(kit_fs_count_lines(e.daemon.log, "refused a request") >= 1);
    assert_int_equal(kit_proc_stop(&e.daemon, SIGTERM, 10000), 0);
    kit_env_fini(&e);
}

/* A flood of refused requests is logged at most once a second. */
static void test_auth_log_rate(void **state)
{
    (void)state;
    kit_env e;
    char tok[600];

    kit_env_init(&e);
    write_file(&e, "token", TOKEN, 0600, tok, sizeof(tok)); /* no newline */
    setenv("LMSCHED_AUTH_TOKEN", TOKEN, 1);
    start_daemon(&e, (const char *const[]){"--auth-token-file", tok, NULL});
    unsetenv("LMSCHED_AUTH_TOKEN");
    int before = kit_fs_count_lines(e.daemon.log, "refused a request");

    lmsched_client *c = NULL;
    assert_int_equal(lmsched_client_open(&c, e.url), LMSCHED_OK);
    assert_int_equal(lmsched_client_set_auth(c, WRONG), LMSCHED_OK);
    int64_t t0 = kit_now_ns();
    enum { N = 200 };
    for (int i = 0; i < N; i++) {
        char *json = NULL, *err = NULL;
        assert_int_equal(lmsched_status(c, 10000, &json, &err), LMSCHED_EAUTH);
        lmsched_free(json);
        lmsched_free(err);
    }
    int64_t t1 = kit_now_ns();
    lmsched_client_close(c);
    assert_int_equal(kit_proc_stop(&e.daemon, SIGTERM, 10000), 0);

    double secs = (double)(t1 - t0) / 1e9;
    int lines = kit_fs_count_lines(e.daemon.log, "refused a request") - before;
    printf("%d refused requests in %.2f s: %d log lines\n", N, secs, lines);
    assert_true(lines >= 1);
    assert_true(lines <= 1 + (int)secs + 1);
    assert_false(kit_fs_contains(e.daemon.log, WRONG));
    kit_env_fini(&e);
}

/* With --auth-token-file an ipc:// listener needs the token too; without
 * one, a token sent anyway is ignored. */
static void test_ipc_token(void **state)
{
    (void)state;
    kit_env e;
    char tok[600], msg[512];

    kit_env_init(&e);
    start_sim(&e, (const char *const[]){"--time-scale", "20", NULL});
    start_daemon(&e, NULL);
    assert_int_equal(chat_with(e.url, "anything", msg, sizeof(msg)), LMSCHED_OK);
    assert_int_equal(chat_with(e.url, NULL, msg, sizeof(msg)), LMSCHED_OK);
    assert_int_equal(kit_proc_stop(&e.daemon, SIGTERM, 10000), 0);

    write_file(&e, "token", TOKEN "\n", 0600, tok, sizeof(tok));
    setenv("LMSCHED_AUTH_TOKEN", TOKEN, 1);
    start_daemon(&e, (const char *const[]){"--auth-token-file", tok, NULL});
    unsetenv("LMSCHED_AUTH_TOKEN");
    assert_int_equal(chat_with(e.url, NULL, msg, sizeof(msg)), LMSCHED_EAUTH);
    assert_int_equal(chat_with(e.url, WRONG, msg, sizeof(msg)), LMSCHED_EAUTH);
    assert_int_equal(chat_with(e.url, TOKEN, msg, sizeof(msg)), LMSCHED_OK);
    assert_int_equal(kit_proc_stop(&e.daemon, SIGTERM, 10000), 0);
    kit_env_fini(&e);
}

/* ---- outstanding requests per connection ---------------------------------- */

static void test_per_conn_limit(void **state)
{
    (void)state;
    enum { LIMIT = 4, SENT = 10 };
    kit_env e;
    char lim[16], msg[512];
    kit_tally t;

    snprintf(lim, sizeof(lim), "%d", LIMIT);
    kit_env_init(&e);
    /* 100 tokens at 45 tokens/s: each reply takes over 2 s, so the first
     * LIMIT are still outstanding when the rest arrive milliseconds
     * later. */
    start_sim(&e, (const char *const[]){"--reply-tokens", "100", NULL});
    start_daemon(&e, (const char *const[]){"--max-per-conn", lim, NULL});

    lmsched_client *a = NULL;
    lmsched_request *r = sec_req("flood", 0);
    kit_tally_init(&t);
    assert_int_equal(lmsched_client_open(&a, e.url), LMSCHED_OK);
    for (int i = 0; i < SENT; i++)
        assert_int_equal(lmsched_chat_async(a, r, 60000, kit_tally_cb, &t), LMSCHED_OK);

    /* The excess is refused at once ... */
    assert_int_equal(kit_tally_wait(&t, SENT - LIMIT, 30000), SENT - LIMIT);
    int busy = kit_tally_count(&t, LMSCHED_EBUSY);
    /* ... while another connection is still served. */
    int rc = chat_with(e.url, NULL, msg, sizeof(msg));
    printf("other connection: %s\n", lmsched_strerror(rc));
    assert_int_equal(rc, LMSCHED_OK);

    assert_int_equal(kit_tally_wait(&t, SENT, 60000), SENT);
    printf("one connection sent %d with a limit of %d: %d ok, %d busy (\"%s\")\n", SENT,
           LIMIT, t.by_code[LMSCHED_OK], t.by_code[LMSCHED_EBUSY],
           t.sample[LMSCHED_EBUSY]);
    assert_int_equal(busy, SENT - LIMIT);
    assert_int_equal(t.by_code[LMSCHED_EBUSY], SENT - LIMIT);
    assert_int_equal(t.by_code[LMSCHED_OK], LIMIT);
    assert_non_null(strstr(t.sample[LMSCHED_EBUSY],
                           "too many outstanding requests on this connection"));

    /* The answered requests no longer count: the same connection can send
     * LIMIT more. */
    kit_tally_fini(&t);
    kit_tally_init(&t);
    for (int i = 0; i < LIMIT; i++)
        assert_int_equal(lmsched_chat_async(a, r, 60000, kit_tally_cb, &t), LMSCHED_OK);
    assert_int_equal(kit_tally_wait(&t, LIMIT, 60000), LIMIT);
    assert_int_equal(t.by_code[LMSCHED_OK], LIMIT);

    lmsched_client_close(a);
    lmsched_request_free(r);
    kit_tally_fini(&t);
    assert_int_equal(kit_proc_stop(&e.daemon, SIGTERM, 10000), 0);
    kit_env_fini(&e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_socket_mode_default),
        cmocka_unit_test(test_socket_mode_0660),
        cmocka_unit_test(test_socket_mode_bad),
        cmocka_unit_test(test_socket_group_own),
        cmocka_unit_test(test_socket_group_missing),
        cmocka_unit_test(test_tcp_needs_token),
        cmocka_unit_test(test_token_file_checks),
        cmocka_unit_test(test_tcp_token),
        cmocka_unit_test(test_auth_log_rate),
        cmocka_unit_test(test_ipc_token),
        cmocka_unit_test(test_per_conn_limit),
    };
    unsetenv("LMSCHED_AUTH_TOKEN");
    unsetenv("LM_API_TOKEN");
    return cmocka_run_group_tests(tests, NULL, NULL);
}
