/*
 * opt_test - the option tables of scheduler/util/opt.c on a test struct
 * with one field of every type: defaults, parsing and its exact messages,
 * environment variables, --help, the Markdown table, the JSON dump and the
 * table check. Then lmsim's own table (sim/config.c), which is built on it.
 */
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "scheduler/util/opt.h"
#include "sim/config.h"

typedef struct t_cfg {
    char name[8];
    int i;
    unsigned u;
    int64_t i64;
    uint64_t u64;
    uint64_t size;
    double d;
    unsigned mode;
    bool flag;
    bool on;
    int color;
    char shape[8];
    char url[32];
    log_level level;
    int unset;
} t_cfg;

/* A custom type: an "x:" URL, stored without its trailing slashes. */
static int t_url_set(const opt_spec *s, void *cfg, const char *val)
{
    t_cfg *c = cfg;
    size_t n = strlen(val);
    (void)s;
    if (strncmp(val, "x:", 2) != 0 || n >= sizeof(c->url))
        return -1;
    memcpy(c->url, val, n + 1);
    while (n > 2 && c->url[n - 1] == '/')
        c->url[--n] = '\0';
    return 0;
}

static const char *t_url_show(const opt_spec *s, const void *cfg, char *buf, size_t len)
{
    (void)s;
    snprintf(buf, len, "%s", ((const t_cfg *)cfg)->url);
    return buf;
}

static const char *const t_colors[] = {"red", "green", "blue", NULL};
static const char *const t_shapes[] = {"round", "square", NULL};

static const opt_spec t_specs[] = {
    {.name = "name",
     .arg = "TEXT",
     OPT_STRING_FIELD(t_cfg, name),
     .def = "anon",
     .env = "OPT_TEST_NAME",
     .group = "Strings",
     .help = "a name"},
    {.name = "url",
     .arg = "URL",
     OPT_CUSTOM_FIELD(t_cfg, url),
     .set = t_url_set,
     .show = t_url_show,
     .expect = "an x: URL",
     .def = "x:home",
     .env = "OPT_TEST_URL",
     .group = "Strings",
     .help = "where | to go",
     .doc = "Where to go, a | in the docs."},
    {.name = "shape",
     .arg = "S",
     OPT_CHOICE_FIELD(t_cfg, shape),
     .names = t_shapes,
     .def = "round",
     .group = "Strings",
     .help = "round or square"},
    {.name = "int",
     .arg = "N",
     OPT_INT_FIELD(t_cfg, i),
     .min = -5,
     .max = 5,
     .def = "-1",
     .group = "Numbers",
     .help = "an int"},
    {.name = "uint",
     .arg = "N",
     OPT_UINT_FIELD(t_cfg, u),
     .min = 1,
     .max = 4096,
     .def_doc = "the server's",
     .group = "Numbers",
     .help = "an unsigned"},
    {.name = "i64",
     .arg = "N",
     OPT_INT64_FIELD(t_cfg, i64),
     .min = 0,
     .max = INT64_MAX,
     .def = "4920000000",
     .group = "Numbers",
     .help = "an int64"},
    {.name = "u64",
     .arg = "N",
     OPT_UINT64_FIELD(t_cfg, u64),
     .umin = 0,
     .umax = UINT64_MAX,
     .def = "1",
     .group = "Numbers",
     .help = "a seed"},
    {.name = "size",
     .arg = "SIZE",
     OPT_SIZE_FIELD(t_cfg, size),
     .umin = 4096,
     .umax = 1ULL << 30,
     .def = "8M",
     .group = "Numbers",
     .help = "a size"},
    {.name = "frac",
     .arg = "F",
     OPT_DOUBLE_FIELD(t_cfg, d),
     .dmin = 0,
     .dmax = 1,
     .flags = OPT_MIN_OPEN,
     .def = "0.60",
     .group = "Numbers",
     .help = "a fraction"},
    {.name = "mode",
     .arg = "MODE",
     OPT_MODE_FIELD(t_cfg, mode),
     .min = 0600,
     .max = 0777,
     .mask = 0600,
     .def = "0600",
     .group = "Numbers",
     .help = "a file mode"},
    {.name = "flag", OPT_FLAG_FIELD(t_cfg, flag), .group = "Switches", .help = "a flag"},
    {.name = "no-on",
     OPT_FLAG_FIELD(t_cfg, on),
     .flags = OPT_CLEARS,
     .group = "Switches",
     .help = "turn it off"},
    {.name = "color",
     .arg = "C",
     OPT_ENUM_FIELD(t_cfg, color),
     .names = t_colors,
     .def = "green",
     .group = "Switches",
     .help = "a color"},
    {.name = "log-level",
     .arg = "L",
     OPT_LOG_LEVEL_FIELD(t_cfg, level),
     .def = "info",
     .group = "Switches",
     .help = "a log level"},
    {.name = "unset",
     .arg = "N",
     OPT_INT_FIELD(t_cfg, unset),
     .min = 1,
     .max = 9,
     .def_doc = "none",
     .group = "Numbers",
     .help = "never set by default"},
};

static const opt_table t_table = {
    .prog = "t",
    .usage = "usage: t [options]\n",
    .epilogue = "The end.\n",
    .specs = t_specs,
    .n = sizeof(t_specs) / sizeof(t_specs[0]),
};

#define T_N (sizeof(t_specs) / sizeof(t_specs[0]))

/* Output captured from a FILE *. */
typedef struct cap {
    char *text;
    size_t len;
    FILE *f;
} cap;

static void cap_open(cap *c)
{
    c->text = NULL;
    c->len = 0;
    c->f = open_memstream(&c->text, &c->len);
    assert_non_null(c->f);
}

static char *cap_close(cap *c)
{
    fclose(c->f);
    return c->text;
}

/* Runs opt_parse over the defaults with the NULL-terminated args; returns
 * its result and (when msg) the text written to err, to free. */
static int t_parse(t_cfg *cfg, bool *given, char **msg, ...)
{
    char *argv[32];
    int argc = 0;
    va_list ap;
    argv[argc++] = strdup("t");
    va_start(ap, msg);
    for (const char *a; (a = va_arg(ap, const char *)) != NULL;)
        argv[argc++] = strdup(a);
    va_end(ap);
    argv[argc] = NULL;
    memset(cfg, 0, sizeof(*cfg));
    assert_int_equal(opt_defaults(&t_table, cfg), 0);
    cap err;
    cap_open(&err);
    int rc = opt_parse(&t_table, cfg, argc, argv, given, err.f);
    char *text = cap_close(&err);
    if (msg != NULL)
        *msg = text;
    else
        free(text);
    for (int k = 0; k < argc; k++)
        free(argv[k]);
    return rc;
}

/* Asserts that args fail with exactly the message want. */
static void t_fails(const char *want, const char *a, const char *b)
{
    t_cfg cfg;
    char *msg = NULL;
    assert_int_equal(t_parse(&cfg, NULL, &msg, a, b, NULL), OPT_ERROR);
    if (strcmp(msg, want) != 0)
        fail_msg("%s %s: got \"%s\", want \"%s\"", a, b ? b : "", msg, want);
    free(msg);
}

static int t_setup(void **state)
{
    (void)state;
    unsetenv("OPT_TEST_NAME");
    unsetenv("OPT_TEST_URL");
    return 0;
}

static void test_check(void **state)
{
    (void)state;
    assert_int_equal(opt_check(&t_table, stderr), 0);

    static const char *const none[] = {NULL};
    static const char *const t_long[] = {"ok", "muchtoolong", NULL};
    static const struct {
        opt_spec s;
        const char *why;
    } broken[] = {
        {{.name = "a",
          OPT_FLAG_FIELD(t_cfg, flag),
          .arg = "X",
          .group = "g",
          .help = "h"},
         "a value name iff"},
        {{.name = "a", OPT_INT_FIELD(t_cfg, i), .group = "g", .help = "h", .def = "1"},
         "a value name iff"},
        {{.name = "a",
          .arg = "N",
          OPT_INT_FIELD(t_cfg, i),
          .min = 2,
          .max = 1,
          .def = "1",
          .group = "g",
          .help = "h"},
         "min > max"},
        {{.name = "a",
          .arg = "N",
          OPT_INT_FIELD(t_cfg, i),
          .min = 1,
          .max = 2,
          .group = "g",
          .help = "h"},
         "no default"},
        {{.name = "a",
          .arg = "C",
          OPT_ENUM_FIELD(t_cfg, color),
          .names = none,
          .def = "x",
          .group = "g",
          .help = "h"},
         "no names"},
        {{.name = "a",
          .arg = "C",
          OPT_CHOICE_FIELD(t_cfg, shape),
          .names = t_colors,
          .def = "red",
          .group = "g",
          .help = "h"},
         NULL},
        {{.name = "a",
          .arg = "C",
          OPT_CHOICE_FIELD(t_cfg, shape),
          .names = t_long,
          .def = "ok",
          .group = "g",
          .help = "h"},
         "longer than its buffer"},
        {{.name = "help", OPT_FLAG_FIELD(t_cfg, flag), .group = "g", .help = "h"},
         "a built-in name"},
        {{.name = "a",
          OPT_FLAG_FIELD(t_cfg, flag),
          .env = "X",
          .group = "g",
          .help = "h"},
         "a flag has no default"},
        {{.name = "a",
          .arg = "U",
          OPT_CUSTOM_FIELD(t_cfg, url),
          .set = t_url_set,
          .def = "x:",
          .group = "g",
          .help = "h"},
         "custom without"},
        {{.name = "a",
          .arg = "F",
          OPT_DOUBLE_FIELD(t_cfg, d),
          .dmin = 1,
          .dmax = 1,
          .def = "1",
          .group = "g",
          .help = "h"},
         "dmin >= dmax"},
    };
    for (size_t i = 0; i < sizeof(broken) / sizeof(broken[0]); i++) {
        opt_table t = {.prog = "t", .usage = "", .specs = &broken[i].s, .n = 1};
        cap err;
        cap_open(&err);
        int rc = opt_check(&t, err.f);
        char *msg = cap_close(&err);
        if (broken[i].why == NULL) {
            /* Every color fits the 8-byte buffer. */
            assert_int_equal(rc, 0);
        } else {
            assert_int_equal(rc, -1);
            if (strstr(msg, broken[i].why) == NULL)
                fail_msg("entry %zu: \"%s\" lacks \"%s\"", i, msg, broken[i].why);
        }
        free(msg);
    }
    /* Twice the same name. */
    opt_spec twice[2] = {t_specs[0], t_specs[0]};
    opt_table t2 = {.prog = "t", .usage = "", .specs = twice, .n = 2};
    cap err;
    cap_open(&err);
    assert_int_equal(opt_check(&t2, err.f), -1);
    char *msg = cap_close(&err);
    assert_non_null(strstr(msg, "named twice"));
    free(msg);
}

static void test_defaults(void **state)
{
    (void)state;
    t_cfg c;
    memset(&c, 0, sizeof(c));
    assert_int_equal(opt_defaults(&t_table, &c), 0);
    assert_string_equal(c.name, "anon");
    assert_string_equal(c.url, "x:home");
    assert_string_equal(c.shape, "round");
    assert_int_equal(c.i, -1);
    assert_int_equal(c.u, 0); /* no def: left as it was */
    assert_true(c.i64 == 4920000000LL);
    assert_true(c.u64 == 1);
    assert_true(c.size == 8ULL << 20);
    assert_true(c.d == 0.60);
    assert_int_equal(c.mode, 0600);
    assert_false(c.flag);
    assert_true(c.on); /* a clearing flag's field starts true */
    assert_int_equal(c.color, 1);
    assert_int_equal(c.level, LOG_INFO);
    assert_int_equal(c.unset, 0);

    /* A default that does not parse is reported, not stored. */
    opt_spec bad = t_specs[3];
    bad.def = "9";
    opt_table t = {.prog = "t", .usage = "", .specs = &bad, .n = 1};
    c.i = 3;
    assert_int_equal(opt_defaults(&t, &c), -1);
    assert_int_equal(c.i, 3);
}

static void test_parse_values(void **state)
{
    (void)state;
    t_cfg c;
    bool given[T_N];
    char *msg = NULL;
    int rc = t_parse(&c, given, &msg, "--name", "bob", "--url", "x:away//", "--shape",
                     "square", "--int", "-5", "--uint", "4096", "--i64", "0", "--u64",
                     "18446744073709551615", "--size", "1G", "--frac", "1", "--mode",
                     "0660", "--flag", "--no-on", "--color", "blue", "--log-level",
                     "warning", "--unset", "9", NULL);
    assert_int_equal(rc, OPT_RUN);
    assert_string_equal(msg, "");
    free(msg);
    assert_string_equal(c.name, "bob");
    assert_string_equal(c.url, "x:away");
    assert_string_equal(c.shape, "square");
    assert_int_equal(c.i, -5);
    assert_int_equal(c.u, 4096);
    assert_true(c.i64 == 0);
    assert_true(c.u64 == UINT64_MAX);
    assert_true(c.size == 1ULL << 30);
    assert_true(c.d == 1.0);
    assert_int_equal(c.mode, 0660);
    assert_true(c.flag);
    assert_false(c.on);
    assert_int_equal(c.color, 2);
    assert_int_equal(c.level, LOG_WARN);
    assert_int_equal(c.unset, 9);
    for (size_t i = 0; i < T_N; i++)
        assert_true(given[i]);

    /* "--name=value" works too, the last of two wins, and what is not
     * given keeps its default and is not marked. */
    rc = t_parse(&c, given, NULL, "--int=2", "--int", "3", NULL);
    assert_int_equal(rc, OPT_RUN);
    assert_int_equal(c.i, 3);
    assert_string_equal(c.name, "anon");
    assert_true(given[3]);
    assert_false(given[0]);
}

static void test_parse_errors(void **state)
{
    (void)state;
    t_fails("t: --int: expected an integer from -5 to 5, got '6'\n", "--int", "6");
    t_fails("t: --int: expected an integer from -5 to 5, got ' 1'\n", "--int", " 1");
    t_fails("t: --uint: expected an integer from 1 to 4096, got 'x'\n", "--uint", "x");
    t_fails("t: --u64: expected an integer from 0 to 18446744073709551615, got '-1'\n",
            "--u64", "-1");
    t_fails("t: --size: expected a size like 4G or 512MiB, got '4Q'\n", "--size", "4Q");
    t_fails("t: --size: at least 4K, got '4095'\n", "--size", "4095");
    t_fails("t: --size: at most 1G, got '2G'\n", "--size", "2G");
    t_fails("t: --frac: expected a number in (0, 1], got '0'\n", "--frac", "0");
    t_fails("t: --frac: expected a number in (0, 1], got 'nan'\n", "--frac", "nan");
    t_fails("t: --mode: expected an octal mode from 0600 to 0777, got '0066'\n", "--mode",
            "0066");
    t_fails("t: --mode: expected an octal mode from 0600 to 0777, got '0999'\n", "--mode",
            "0999");
    t_fails("t: --color: expected red, green or blue, got 'pink'\n", "--color", "pink");
    t_fails("t: --shape: expected round or square, got 'oval'\n", "--shape", "oval");
    t_fails("t: --url: expected an x: URL, got 'http://a'\n", "--url", "http://a");
    t_fails("t: --log-level: expected error, warn, info or debug, got 'loud'\n",
            "--log-level", "loud");
    t_fails("t: --name: value empty or too long\n", "--name", "");
    t_fails("t: --name: value empty or too long\n", "--name", "12345678");
    t_fails("t: unknown or incomplete option '--nope' (see --help)\n", "--nope", NULL);
    t_fails("t: option '--int' needs a value (see --help)\n", "--int", NULL);
    t_fails("t: option '--flag' takes no value (see --help)\n", "--flag=1", NULL);
    t_fails("t: unknown option '-x' (see --help)\n", "-x", NULL);
    t_fails("t: unexpected argument 'extra' (see --help)\n", "extra", NULL);

    /* A failed value leaves the field as it was. */
    t_cfg c;
    assert_int_equal(t_parse(&c, NULL, NULL, "--url", "y:z", NULL), OPT_ERROR);
    assert_string_equal(c.url, "x:home");
}

static void test_builtins(void **state)
{
    (void)state;
    t_cfg c;
    assert_int_equal(t_parse(&c, NULL, NULL, "--help", NULL), OPT_HELP);
    assert_int_equal(t_parse(&c, NULL, NULL, "--version", NULL), OPT_VERSION);
    assert_int_equal(t_parse(&c, NULL, NULL, "--help-markdown", NULL), OPT_MARKDOWN);
    /* The first of them decides, and values before it are still checked. */
    assert_int_equal(t_parse(&c, NULL, NULL, "--int", "1", "--help", "--int", "9", NULL),
                     OPT_HELP);
    assert_int_equal(t_parse(&c, NULL, NULL, "--int", "9", "--help", NULL), OPT_ERROR);
    /* getopt starts over each time: the same argv parses the same twice. */
    assert_int_equal(t_parse(&c, NULL, NULL, "--nope", NULL), OPT_ERROR);
    assert_int_equal(t_parse(&c, NULL, NULL, "--int", "4", NULL), OPT_RUN);
    assert_int_equal(c.i, 4);
    assert_int_equal(t_parse(&c, NULL, NULL, "--int", "4", NULL), OPT_RUN);
    assert_int_equal(c.i, 4);
}

static void test_env(void **state)
{
    (void)state;
    t_cfg c;
    bool given[T_N];
    char *msg = NULL;

    setenv("OPT_TEST_NAME", "envy", 1);
    setenv("OPT_TEST_URL", "x:env/", 1);
    assert_int_equal(t_parse(&c, given, NULL, NULL), OPT_RUN);
    assert_string_equal(c.name, "envy");
    assert_string_equal(c.url, "x:env");
    assert_false(given[0]); /* from the environment, not the command line */

    /* The flag beats the variable, even a bad variable. */
    setenv("OPT_TEST_URL", "garbage", 1);
    assert_int_equal(t_parse(&c, NULL, NULL, "--url", "x:flag", NULL), OPT_RUN);
    assert_string_equal(c.url, "x:flag");

    /* A bad variable is a usage error that names it. */
    assert_int_equal(t_parse(&c, NULL, &msg, NULL), OPT_ERROR);
    assert_string_equal(msg, "t: OPT_TEST_URL: expected an x: URL, got 'garbage'\n");
    free(msg);

    /* An empty variable counts as unset. */
    setenv("OPT_TEST_URL", "", 1);
    setenv("OPT_TEST_NAME", "", 1);
    assert_int_equal(t_parse(&c, NULL, NULL, NULL), OPT_RUN);
    assert_string_equal(c.url, "x:home");
    assert_string_equal(c.name, "anon");
    unsetenv("OPT_TEST_NAME");
    unsetenv("OPT_TEST_URL");
}

static void test_usage(void **state)
{
    (void)state;
    cap out;
    cap_open(&out);
    opt_usage(&t_table, out.f);
    char *text = cap_close(&out);
    printf("%s", text);
    assert_int_equal(strncmp(text, "usage: t [options]\n", 19), 0);
    /* Groups in order of first appearance, each once. */
    char *g1 = strstr(text, "\nStrings:\n"), *g2 = strstr(text, "\nNumbers:\n"),
         *g3 = strstr(text, "\nSwitches:\n");
    assert_true(g1 && g2 && g3 && g1 < g2 && g2 < g3);
    assert_null(strstr(g2 + 1, "\nNumbers:\n"));
    /* "unset" is listed with Numbers, after "mode", though it comes last. */
    assert_true(strstr(text, "--unset N") < g3);
    static const char *const want[] = {
        "  --name TEXT             a name (default: $OPT_TEST_NAME, else anon)\n",
        "  --uint N                an unsigned (default: the server's)\n",
        "  --size SIZE             a size (default: 8M)\n",
        "  --frac F                a fraction (default: 0.60)\n",
        "  --flag                  a flag\n",
        "  --no-on                 turn it off\n",
        "  --color C               a color (default: green)\n",
        "  --help                  print this help and exit\n",
        "\nThe end.\n",
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        if (strstr(text, want[i]) == NULL)
            fail_msg("help lacks \"%s\"", want[i]);
    /* Every line fits 80 columns. */
    for (char *p = text; *p != '\0';) {
        size_t n = strcspn(p, "\n");
        if (n > 80)
            fail_msg("line too long: %.*s", (int)n, p);
        p += n + (p[n] == '\n');
    }
    free(text);

    /* A long help wraps at a word, continues at column 26, and keeps
     * "(default: X)" on one line. */
    opt_spec s = t_specs[3];
    s.help = "one two three four five six seven eight nine ten eleven twelve thirteen";
    opt_table t = {.prog = "t", .usage = "", .specs = &s, .n = 1};
    cap_open(&out);
    opt_usage(&t, out.f);
    text = cap_close(&out);
    assert_non_null(strstr(text,
                           "  --int N                 one two three four five six seven "
                           "eight nine ten\n                          eleven twelve "
                           "thirteen (default: -1)\n"));
    free(text);
}

static void test_markdown(void **state)
{
    (void)state;
    cap out;
    cap_open(&out);
    opt_markdown(&t_table, out.f);
    char *text = cap_close(&out);
    printf("%s", text);
    static const char head[] = "**Strings**\n\n| flag | default | accepted | meaning |\n"
                               "| --- | --- | --- | --- |\n";
    assert_int_equal(strncmp(text, head, strlen(head)), 0);
    static const char *const want[] = {
        "| `--name TEXT` | `$OPT_TEST_NAME`, else `anon` | text, 1 to 7 bytes | a name "
        "|\n",
        "| `--url URL` | `$OPT_TEST_URL`, else `x:home` | an x: URL | Where to go, a \\| "
        "in "
        "the docs. |\n",
        "| `--shape S` | `round` | `round`, `square` | round or square |\n",
        "| `--int N` | `-1` | -5 to 5 | an int |\n",
        "| `--uint N` | the server's | 1 to 4096 | an unsigned |\n",
        "| `--u64 N` | `1` | 0 to 18446744073709551615 | a seed |\n",
        "| `--size SIZE` | `8M` | size (K, M, G, T), 4K to 1G | a size |\n",
        "| `--frac F` | `0.60` | (0, 1] | a fraction |\n",
        "| `--mode MODE` | `0600` | octal 0600 to 0777 | a file mode |\n",
        "| `--flag` | off |  | a flag |\n",
        "| `--unset N` | none | 1 to 9 | never set by default |\n",
        "\n**Switches**\n\n",
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        if (strstr(text, want[i]) == NULL)
            fail_msg("markdown lacks \"%s\"", want[i]);
    /* One row per option. */
    size_t rows = 0;
    for (const char *p = text; (p = strstr(p, "\n| `--")) != NULL; p++)
        rows++;
    assert_int_equal(rows, T_N);
    free(text);
}

static void test_json(void **state)
{
    (void)state;
    t_cfg c;
    memset(&c, 0, sizeof(c));
    opt_defaults(&t_table, &c);
    char *j = opt_json(&t_table, &c);
    assert_non_null(j);
    assert_string_equal(
        j, "{\"name\":\"anon\",\"url\":\"x:home\",\"shape\":\"round\",\"int\":-1,"
           "\"uint\":null,\"i64\":4920000000,\"u64\":1,\"size\":8388608,"
           "\"frac\":0.6,\"mode\":\"0600\",\"flag\":false,\"no-on\":false,"
           "\"color\":\"green\",\"log-level\":\"info\",\"unset\":null}");
    free(j);

    /* Given values; strings escaped; bytes that are not UTF-8 replaced. */
    assert_int_equal(t_parse(&c, NULL, NULL, "--flag", "--no-on", "--uint", "7", "--u64",
                             "18446744073709551615", "--log-level", "debug", NULL),
                     OPT_RUN);
    strcpy(c.name, "a\"\\\n\xff\xc3\xa9");
    j = opt_json(&t_table, &c);
    assert_non_null(j);
    assert_non_null(strstr(j, "\"name\":\"a\\\"\\\\\\u000a?\xc3\xa9\","));
    assert_non_null(strstr(j, "\"uint\":7,"));
    assert_non_null(strstr(j, "\"u64\":18446744073709551615,"));
    assert_non_null(strstr(j, "\"flag\":true,\"no-on\":true,"));
    assert_non_null(strstr(j, "\"log-level\":\"debug\""));
    free(j);
}

static void test_show(void **state)
{
    (void)state;
    t_cfg c;
    char buf[64];
    memset(&c, 0, sizeof(c));
    opt_defaults(&t_table, &c);
    assert_string_equal(opt_show(opt_find(&t_table, "size"), &c, buf, sizeof(buf)), "8M");
    assert_string_equal(opt_show(opt_find(&t_table, "mode"), &c, buf, sizeof(buf)),
                        "0600");
    assert_string_equal(opt_show(opt_find(&t_table, "frac"), &c, buf, sizeof(buf)),
                        "0.6");
    assert_string_equal(opt_show(opt_find(&t_table, "color"), &c, buf, sizeof(buf)),
                        "green");
    assert_string_equal(opt_show(opt_find(&t_table, "no-on"), &c, buf, sizeof(buf)),
                        "false");
    assert_string_equal(opt_show(opt_find(&t_table, "url"), &c, buf, sizeof(buf)),
                        "x:home");
    assert_null(opt_find(&t_table, "nope"));
    /* Every value shown parses back to the same field. */
    for (size_t i = 0; i < T_N; i++) {
        const opt_spec *s = &t_specs[i];
        t_cfg d = c;
        if (s->type == OPT_FLAG || (s->def == NULL && s->type != OPT_CUSTOM))
            continue;
        assert_int_equal(
            opt_set(&t_table, s, &d, opt_show(s, &c, buf, sizeof(buf)), s->name, stderr),
            0);
        assert_memory_equal(&d, &c, sizeof(c));
    }
}

/* lmsim's table: valid, its defaults, its flags and its cross-flag rule. */
static void test_lmsim_table(void **state)
{
    (void)state;
    const opt_table *t = simcfg_options();
    assert_int_equal(opt_check(t, stderr), 0);

    sim_config cfg;
    simcfg_init(&cfg);
    assert_int_equal(cfg.port, 0);
    assert_string_equal(cfg.port_file, "");
    assert_int_equal(cfg.slots, 4);
    assert_int_equal(cfg.ctx, 8192);
    assert_string_equal(cfg.model, "lmsim-8b-q4");
    assert_true(cfg.model_size == 4920000000LL);
    assert_true(cfg.slot_similarity == 0.10);
    assert_true(cfg.prefill_tps == 800.0);
    assert_true(cfg.decode_tps == 45.0);
    assert_true(cfg.batch_slowdown == 0.05);
    assert_true(cfg.time_scale == 1.0);
    assert_int_equal(cfg.reply_tokens, 32);
    assert_int_equal(cfg.crash_after, 0);
    assert_false(cfg.crash_exit);
    assert_true(cfg.spike_ms == 1000.0);
    assert_int_equal(cfg.garbage_mode, SIM_GARBAGE_ANY);
    assert_true(cfg.garbage_bytes == 64u << 20);
    assert_true(cfg.seed == 1);
    assert_int_equal(cfg.log_level, LOG_INFO);
    assert_false(cfg.instant);

    char a0[] = "lmsim", a1[] = "--slots", a2[] = "8", a3[] = "--garbage-mode",
         a4[] = "huge", a5[] = "--model", a6[] = "m1", a7[] = "--seed",
         a8[] = "18446744073709551615", a9[] = "--port-file", a10[] = "/tmp/p";
    char *argv[] = {a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, NULL};
    cap out, err;
    cap_open(&out);
    cap_open(&err);
    assert_int_equal(simcfg_parse(&cfg, 11, argv, out.f, err.f), 0);
    free(cap_close(&out));
    free(cap_close(&err));
    assert_int_equal(cfg.slots, 8);
    assert_int_equal(cfg.garbage_mode, SIM_GARBAGE_HUGE);
    assert_string_equal(cfg.model, "m1");
    assert_true(cfg.seed == UINT64_MAX);
    assert_string_equal(cfg.port_file, "/tmp/p");

    /* A model key of 256 bytes fits, 257 does not. */
    char name[258];
    memset(name, 'm', 257);
    name[257] = '\0';
    char b0[] = "lmsim", b1[] = "--model";
    char *argv2[] = {b0, b1, name, NULL};
    simcfg_init(&cfg);
    cap_open(&out);
    cap_open(&err);
    assert_int_equal(simcfg_parse(&cfg, 3, argv2, out.f, err.f), -1);
    free(cap_close(&out));
    char *msg = cap_close(&err);
    assert_string_equal(msg, "lmsim: --model: value empty or too long\n");
    free(msg);
    name[256] = '\0';
    cap_open(&out);
    cap_open(&err);
    assert_int_equal(simcfg_parse(&cfg, 3, argv2, out.f, err.f), 0);
    free(cap_close(&out));
    free(cap_close(&err));
    assert_int_equal(strlen(cfg.model), 256);

    /* --instant with a fault is refused. */
    char c0[] = "lmsim", c1[] = "--instant", c2[] = "--hang-rate", c3[] = "0.1";
    char *argv3[] = {c0, c1, c2, c3, NULL};
    simcfg_init(&cfg);
    cap_open(&out);
    cap_open(&err);
    assert_int_equal(simcfg_parse(&cfg, 4, argv3, out.f, err.f), -1);
    free(cap_close(&out));
    msg = cap_close(&err);
    assert_string_equal(msg,
                        "lmsim: --instant cannot be combined with fault injection\n");
    free(msg);

    /* --help lists every flag with its default. */
    char d0[] = "lmsim", d1[] = "--help";
    char *argv4[] = {d0, d1, NULL};
    cap_open(&out);
    cap_open(&err);
    assert_int_equal(simcfg_parse(&cfg, 2, argv4, out.f, err.f), 1);
    char *help = cap_close(&out);
    free(cap_close(&err));
    for (size_t i = 0; i < t->n; i++) {
        char want[300];
        snprintf(want, sizeof(want), "  --%s", t->specs[i].name);
        if (strstr(help, want) == NULL)
            fail_msg("lmsim --help lacks %s", want);
        if (t->specs[i].def != NULL) {
            snprintf(want, sizeof(want), "(default: %s)", t->specs[i].def);
            if (strstr(help, want) == NULL)
                fail_msg("lmsim --help lacks %s", want);
        }
    }
    free(help);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_check),        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_parse_values), cmocka_unit_test(test_parse_errors),
        cmocka_unit_test(test_builtins),     cmocka_unit_test(test_env),
        cmocka_unit_test(test_usage),        cmocka_unit_test(test_markdown),
        cmocka_unit_test(test_json),         cmocka_unit_test(test_show),
        cmocka_unit_test(test_lmsim_table),
    };
    return cmocka_run_group_tests(tests, t_setup, NULL);
}
