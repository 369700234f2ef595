/*
 * cli - the client commands of `lmsched`. `status` asks the daemon for its
 * status document (docs/status.md) and shows it as a table, or as the JSON
 * itself; `chat` sends one chat request and prints the reply. They reach the
 * daemon only through the public agent library, as any agent would, and use
 * jansson to read and write JSON.
 *
 * Everything shown comes from the daemon, and some of it (the backend's last
 * error, the model name) from the LLM server behind it, so the table bounds
 * every string it prints and replaces control characters: a hostile or
 * broken server cannot drive the user's terminal.
 */
#include "scheduler/cli/cli.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include <jansson.h>

/* A client of the daemon like any agent: the public header only (its
 * lmsched_err_name gives the names the status JSON uses). */
#include "lmsched/agent.h"

/* Exit codes, documented in docs/cli.md (serve's 4 lives in main.c). */
enum {
    CLI_EXIT_OK = 0,
    CLI_EXIT_FAILED = 1,
    CLI_EXIT_USAGE = 2,
    CLI_EXIT_UNREACHABLE = 3,
};

/* The status reply is small and the daemon answers it from its loop without
 * queueing, so a few seconds means it is not there or is stuck. */
#define CLI_STATUS_TIMEOUT_MS 5000
/* The agent library's default connect timeout; a shorter --timeout lowers it
 * so `status --timeout 500` gives up after 500 ms, not 2 s. */
#define CLI_CONNECT_TIMEOUT_MS 2000

/* JSON output: 12 significant digits show every figure the daemon measures
 * (microseconds of a ten-minute request) without the binary-rounding noise
 * of 17 ("24.870999999999999"). */
#define CLI_JSON_FLAGS (JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(12))

/* Longest string from the daemon shown in one table field. */
#define CLI_FIELD_MAX 200

/* ---- small helpers --------------------------------------------------------- */

/* Maps an outcome to the exit code: the daemon being away or silent is told
 * apart from a request the daemon (or the LLM server) refused. */
static int cli_exit_for(int err)
{
    if (err == LMSCHED_OK)
        return CLI_EXIT_OK;
    if (err == LMSCHED_ENODAEMON || err == LMSCHED_ETIMEDOUT)
        return CLI_EXIT_UNREACHABLE;
    return CLI_EXIT_FAILED;
}

/* Copies s into buf (size len >= 4), replacing control characters with '?'
 * and cutting it at max bytes (on a UTF-8 character boundary) with "...". */
static const char *cli_clean(char *buf, size_t len, const char *s, size_t max)
{
    size_t n = strlen(s);
    bool cut = false;
    if (max > len - 1)
        max = len - 1;
    if (n > max) {
        n = max - 3;
        /* do not split a multi-byte character */
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
            n--;
        cut = true;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        buf[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    if (cut) {
        memcpy(buf + n, "...", 3);
        n += 3;
    }
    buf[n] = '\0';
    return buf;
}

/* Prints "lmsched: <name>: <description>[: <detail>]" to stderr and returns
 * the exit code for err. detail (a message from the library or the daemon)
 * may be NULL; it is shown cleaned and bounded. */
static int cli_report(int err, const char *detail)
{
    const char *text = lmsched_strerror(err);
    if (detail != NULL && detail[0] != '\0' && strcmp(detail, text) != 0) {
        char clean[1024];
        fprintf(stderr, "lmsched: %s: %s: %s\n", lmsched_err_name(err), text,
                cli_clean(clean, sizeof(clean), detail, sizeof(clean) - 1));
    } else {
        fprintf(stderr, "lmsched: %s: %s\n", lmsched_err_name(err), text);
    }
    return cli_exit_for(err);
}

/* A failed write to stdout (a closed pipe, a full disk) must not look like
 * success to a script. */
static int cli_finish_stdout(int code)
{
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "lmsched: cannot write the output: %s\n", strerror(errno));
        return code == CLI_EXIT_OK ? CLI_EXIT_FAILED : code;
    }
    return code;
}

static int cli_parse_long(const char *cmd, const char *flag, const char *s, long lo,
                          long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi) {
        fprintf(stderr, "lmsched %s: %s: expected an integer from %ld to %ld, got '%s'\n",
                cmd, flag, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int cli_parse_double(const char *cmd, const char *flag, const char *s, double lo,
                            double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    /* the negated range test also rejects NaN */
    if (errno != 0 || end == s || *end != '\0' || !(v >= lo && v <= hi)) {
        fprintf(stderr, "lmsched %s: %s: expected a number from %g to %g, got '%s'\n",
                cmd, flag, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* Reports a getopt_long error: unknown option or missing value. */
static int cli_bad_option(const char *cmd, int c, char **argv)
{
    const char *arg = argv[optind - 1];
    if (c == ':')
        fprintf(stderr, "lmsched %s: option '%s' needs a value (see --help)\n", cmd, arg);
    else
        fprintf(stderr, "lmsched %s: unknown option '%s' (see --help)\n", cmd, arg);
    return CLI_EXIT_USAGE;
}

/* Opens the client; url NULL means the library default ($LMSCHED_URL or the
 * per-user socket). timeout_ms > 0 caps the connect timeout. */
static int cli_open(const char *cmd, const char *url, int timeout_ms, lmsched_client **cp)
{
    int rc = lmsched_client_open(cp, url);
    if (rc == LMSCHED_EINVAL) {
        char def[512] = "";
        if (url == NULL)
            lmsched_default_url(def, sizeof(def));
        const char *u = url != NULL ? url : def;
        size_t max_path = sizeof(((struct sockaddr_un *)0)->sun_path) - 1;
        if (strncmp(u, "ipc://", 6) == 0 && strlen(u + 6) > max_path)
            fprintf(stderr,
                    "lmsched %s: daemon URL '%s'%s: the socket path is %zu bytes long, and "
                    "a Unix socket path may have at most %zu on this system\n",
                    cmd, u, url != NULL ? "" : " (from LMSCHED_URL)", strlen(u + 6),
                    max_path);
        else
            fprintf(stderr,
                    "lmsched %s: invalid daemon URL '%s'%s (expected ipc:///path/to/socket "
                    "or tcp://HOST:PORT)\n",
                    cmd, u, url != NULL ? "" : " (from LMSCHED_URL)");
        return CLI_EXIT_USAGE;
    }
    if (rc != LMSCHED_OK)
        return cli_report(rc, NULL);
    if (timeout_ms > 0 && timeout_ms < CLI_CONNECT_TIMEOUT_MS)
        lmsched_client_set_connect_timeout(*cp, timeout_ms);
    return CLI_EXIT_OK;
}

/* With --json a failed command is also a JSON document on stdout, so a
 * script reading stdout sees why; the exit status and the stderr line are
 * as without --json. */
static void cli_print_error_json(int err, const char *msg)
{
    json_t *doc = json_pack("{s:{s:s,s:i,s:s}}", "error", "code", lmsched_err_name(err), "number",
                            err, "message",
                            msg != NULL && msg[0] != '\0' ? msg : lmsched_strerror(err));
    if (doc == NULL)
        return;
    if (json_dumpf(doc, stdout, CLI_JSON_FLAGS) == 0)
        fputc('\n', stdout);
    json_decref(doc);
    fflush(stdout);
}

/* ---- the status table ---------------------------------------------------- */

/* A member of obj, or NULL when obj is not an object or the member is absent
 * or null: the table shows all three as "unknown". */
static json_t *st_get(const json_t *obj, const char *key)
{
    json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    return json_is_null(v) ? NULL : v;
}

static bool st_num(const json_t *obj, const char *key, double *out)
{
    json_t *v = st_get(obj, key);
    if (!json_is_number(v))
        return false;
    *out = json_number_value(v);
    return true;
}

/* A count as the daemon sent it ("1024"). */
static const char *st_int(char *buf, size_t len, const json_t *obj, const char *key)
{
    json_t *v = st_get(obj, key);
    if (json_is_integer(v))
        snprintf(buf, len, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    else if (json_is_real(v))
        snprintf(buf, len, "%.0f", json_real_value(v));
    else
        snprintf(buf, len, "unknown");
    return buf;
}

static const char *st_str(char *buf, size_t len, const json_t *obj, const char *key)
{
    json_t *v = st_get(obj, key);
    if (!json_is_string(v))
        return "unknown";
    return cli_clean(buf, len, json_string_value(v), CLI_FIELD_MAX);
}

/* Bytes in binary units: "512 B", "1.0 GiB". */
static const char *st_bytes(char *buf, size_t len, const json_t *obj, const char *key)
{
    static const char *const units[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    double v;
    if (!st_num(obj, key, &v) || v < 0) {
        snprintf(buf, len, "unknown");
        return buf;
    }
    if (v < 1024) {
        snprintf(buf, len, "%.0f B", v);
        return buf;
    }
    size_t u = 0;
    v /= 1024;
    while (v >= 1024 && u + 1 < sizeof(units) / sizeof(units[0])) {
        v /= 1024;
        u++;
    }
    snprintf(buf, len, "%.1f %s", v, units[u]);
    return buf;
}

/* A long duration in seconds, two units: "42s", "5m07s", "1h02m", "3d04h". */
static void st_fmt_secs(char *buf, size_t len, double secs)
{
    if (secs >= 1e12) { /* beyond any uptime; keeps the casts below defined */
        snprintf(buf, len, "%.0fs", secs);
        return;
    }
    long long s = (long long)secs;
    if (s < 60)
        snprintf(buf, len, "%llds", s);
    else if (s < 3600)
        snprintf(buf, len, "%lldm%02llds", s / 60, s % 60);
    else if (s < 86400)
        snprintf(buf, len, "%lldh%02lldm", s / 3600, s % 3600 / 60);
    else
        snprintf(buf, len, "%lldd%02lldh", s / 86400, s % 86400 / 3600);
}

static const char *st_secs(char *buf, size_t len, const json_t *obj, const char *key)
{
    double v;
    if (!st_num(obj, key, &v) || v < 0)
        snprintf(buf, len, "unknown");
    else
        st_fmt_secs(buf, len, v);
    return buf;
}

/* A latency in milliseconds: "12 ms", "2.1 s", "3m05s". */
static const char *st_ms(char *buf, size_t len, const json_t *obj, const char *key)
{
    double v;
    if (!st_num(obj, key, &v) || v < 0)
        snprintf(buf, len, "unknown");
    else if (v < 999.5)
        snprintf(buf, len, "%.0f ms", v);
    else if (v < 59950)
        snprintf(buf, len, "%.1f s", v / 1000);
    else
        st_fmt_secs(buf, len, v / 1000);
    return buf;
}

/* A large count, short: "812", "1.5k", "240k", "3.2M". */
static const char *st_count(char *buf, size_t len, const json_t *obj, const char *key)
{
    double v;
    if (!st_num(obj, key, &v) || v < 0)
        snprintf(buf, len, "unknown");
    else if (v < 1000)
        snprintf(buf, len, "%.0f", v);
    else if (v < 9950)
        snprintf(buf, len, "%.1fk", v / 1e3);
    else if (v < 999500)
        snprintf(buf, len, "%.0fk", v / 1e3);
    else if (v < 9950000)
        snprintf(buf, len, "%.1fM", v / 1e6);
    else if (v < 999500000)
        snprintf(buf, len, "%.0fM", v / 1e6);
    else
        snprintf(buf, len, "%.1fG", v / 1e9);
    return buf;
}

/* " (deadline 2, backend_crash 1)" in the daemon's order, or "" when no
 * failure has a class. Entries that do not fit in buf become ", ...". */
static const char *st_classes(char *buf, size_t len, const json_t *classes)
{
    static const char more[] = ", ...)";
    size_t n = 0;
    const char *key;
    json_t *v;
    buf[0] = '\0';
    if (!json_is_object(classes) || json_object_size(classes) == 0 || len < 128)
        return buf;
    json_object_foreach((json_t *)classes, key, v)
    {
        char name[48], item[96];
        cli_clean(name, sizeof(name), key, sizeof(name) - 1);
        if (json_is_integer(v))
            snprintf(item, sizeof(item), "%s%s %" JSON_INTEGER_FORMAT, n ? ", " : " (",
                     name, json_integer_value(v));
        else
            snprintf(item, sizeof(item), "%s%s ?", n ? ", " : " (", name);
        size_t w = strlen(item);
        if (n + w + sizeof(more) > len) {
            memcpy(buf + n, more, sizeof(more));
            return buf;
        }
        memcpy(buf + n, item, w);
        n += w;
    }
    memcpy(buf + n, ")", 2);
    return buf;
}

/* Sanity of the document itself: every status document carries its version
 * and protocol; anything else may be missing (shown as "unknown"). */
static bool st_is_status(const json_t *doc)
{
    return json_is_object(doc) && json_is_string(json_object_get(doc, "version")) &&
           json_is_integer(json_object_get(doc, "protocol"));
}

int cli_render_status(const char *json, FILE *out)
{
    if (json == NULL || out == NULL)
        return -1;
    json_error_t jerr;
    json_t *doc = json_loads(json, 0, &jerr);
    if (!st_is_status(doc)) {
        json_decref(doc);
        return -1;
    }
    json_t *be = st_get(doc, "backend");
    json_t *mem = st_get(doc, "memory");
    json_t *queue = st_get(doc, "queue");
    json_t *req = st_get(doc, "requests");
    json_t *lat = st_get(doc, "latency_ms");
    json_t *tok = st_get(doc, "tokens");
    char a[256], b[256], c[256], d[256], e[256], f[256];

    fprintf(out, "lmsched %s  up %s  pid %s  listen %s",
            st_str(a, sizeof(a), doc, "version"), st_secs(b, sizeof(b), doc, "uptime_s"),
            st_int(c, sizeof(c), doc, "pid"), st_str(d, sizeof(d), doc, "listen"));
    /* The HTTP front door only when it is on (--http). */
    if (json_is_string(st_get(doc, "http")))
        fprintf(out, "  http %s", st_str(a, sizeof(a), doc, "http"));
    fprintf(out, "  policy %s\n", st_str(e, sizeof(e), doc, "policy"));

    /* One line per backend; with several, each also says what was routed
     * to it and how much of its prompts its cache served. */
    json_t *all = st_get(doc, "backends");
    size_t n_be = json_is_array(all) && json_array_size(all) > 1 ? json_array_size(all) : 1;
    for (size_t i = 0; i < n_be; i++) {
        if (n_be > 1)
            be = json_array_get(all, i);
        json_t *healthy = st_get(be, "healthy");
        const char *health = json_is_true(healthy)    ? "healthy"
                             : json_is_false(healthy) ? "unreachable"
                                                      : "health unknown";
        fprintf(out, "backend   %s  %s  %s  model %s  ctx %s  slots %s",
                st_str(a, sizeof(a), be, "url"), st_str(b, sizeof(b), be, "kind"), health,
                st_str(c, sizeof(c), be, "model"), st_int(d, sizeof(d), be, "context_length"),
                st_int(e, sizeof(e), be, "slots"));
        if (n_be > 1) {
            double ratio;
            char pct[32] = "-";
            if (st_num(be, "cached_ratio", &ratio))
                snprintf(pct, sizeof(pct), "%.0f%%", ratio * 100);
            fprintf(out, "  routed %s  running %s  cached %s",
                    st_count(a, sizeof(a), be, "routed"), st_int(b, sizeof(b), be, "inflight"),
                    pct);
            if (st_get(be, "budget_bytes") != NULL)
                fprintf(out, "  budget %s  max %s", st_bytes(a, sizeof(a), be, "budget_bytes"),
                        st_int(b, sizeof(b), be, "max_concurrent"));
            if (json_is_true(st_get(be, "removed")))
                fputs("  removed", out);
            double outages;
            if (st_num(be, "error_outages", &outages) && outages > 0)
                fprintf(out, "  taken out for errors %s",
                        st_count(a, sizeof(a), be, "error_outages"));
        }
        /* The restore probe's verdict (the backends[] entry has it, also
         * with one backend): whether the server restores evicted prompts
         * itself, i.e. has a host prompt cache. */
        json_t *bx = json_is_array(all) ? json_array_get(all, i) : NULL;
        json_t *verdict = bx != NULL ? st_get(bx, "restore_probe") : NULL;
        if (json_is_string(verdict)) {
            const char *v = json_string_value(verdict);
            const char *yn = strcmp(v, "restores") == 0     ? "yes"
                             : strcmp(v, "no_restore") == 0 ? "no"
                             : strcmp(v, "off") == 0        ? NULL
                                                            : "unknown";
            double share;
            if (yn != NULL && st_num(bx, "restore_share", &share))
                fprintf(out, "  host cache %s (probe %.2f)", yn, share);
            else if (yn != NULL)
                fprintf(out, "  host cache %s", yn);
        }
        if (json_is_string(st_get(be, "last_error"))) {
            fprintf(out, "  last error: %s", st_str(a, sizeof(a), be, "last_error"));
            if (st_get(be, "checked_ago_s") != NULL)
                fprintf(out, " (checked %s ago)", st_secs(b, sizeof(b), be, "checked_ago_s"));
        }
        fputc('\n', out);
    }

    char fraction[32] = "unknown";
    double frac;
    if (st_num(mem, "ram_fraction", &frac))
        snprintf(fraction, sizeof(fraction), "%.2f", frac);
    if (n_be > 1) {
        /* Each backend has its budget (on its line); the first's inputs. */
        fprintf(out,
                "memory    budget per backend (above); KV/request %s -> max %s concurrent "
                "in all\n",
                st_bytes(a, sizeof(a), mem, "kv_per_request_bytes"),
                st_int(b, sizeof(b), mem, "max_concurrent"));
    } else {
        fprintf(out,
                "memory    RAM %s x %s - model %s = budget %s; KV/request %s -> max %s "
                "concurrent (%s)\n",
                st_bytes(a, sizeof(a), mem, "total_bytes"), fraction,
                st_bytes(b, sizeof(b), mem, "model_size_bytes"),
                st_bytes(c, sizeof(c), mem, "budget_bytes"),
                st_bytes(d, sizeof(d), mem, "kv_per_request_bytes"),
                st_int(e, sizeof(e), mem, "max_concurrent"),
                st_str(f, sizeof(f), mem, "limited_by"));
    }

    fprintf(out, "queue     %s / %s        in flight %s / %s\n",
            st_int(a, sizeof(a), queue, "depth"), st_int(b, sizeof(b), queue, "max"),
            st_int(c, sizeof(c), doc, "inflight"),
            st_int(d, sizeof(d), mem, "max_concurrent"));

    fprintf(out, "requests  received %s  completed %s  failed %s%s  retried %s  busy %s",
            st_int(a, sizeof(a), req, "received"), st_int(b, sizeof(b), req, "completed"),
            st_int(c, sizeof(c), req, "failed"),
            st_classes(d, sizeof(d), st_get(req, "failed_by_class")),
            st_int(e, sizeof(e), req, "retried"),
            st_int(f, sizeof(f), req, "rejected_busy"));
    double bad;
    if (st_num(req, "bad_messages", &bad) && bad > 0)
        fprintf(out, "  bad messages %s", st_int(a, sizeof(a), req, "bad_messages"));
    if (st_num(req, "preempted", &bad) && bad > 0)
        fprintf(out, "  preempted %s", st_int(a, sizeof(a), req, "preempted"));
    fputc('\n', out);

    json_t *qw = st_get(lat, "queue_wait"), *ttft = st_get(lat, "ttft");
    json_t *total = st_get(lat, "total");
    fprintf(out, "latency   queue wait p50 %s  p95 %s    ttft p50 %s  p95 %s",
            st_ms(a, sizeof(a), qw, "p50"), st_ms(b, sizeof(b), qw, "p95"),
            st_ms(c, sizeof(c), ttft, "p50"), st_ms(d, sizeof(d), ttft, "p95"));
    fprintf(out, "    total p50 %s  p95 %s\n", st_ms(a, sizeof(a), total, "p50"),
            st_ms(b, sizeof(b), total, "p95"));

    double prompt, cached;
    f[0] = '\0';
    if (st_num(tok, "prompt", &prompt) && st_num(tok, "cached", &cached) && prompt > 0 &&
        cached >= 0)
        snprintf(f, sizeof(f), " (%.0f%%)", 100.0 * cached / prompt);
    fprintf(out, "tokens    prompt %s  completion %s  cached %s%s\n",
            st_count(a, sizeof(a), tok, "prompt"),
            st_count(b, sizeof(b), tok, "completion"),
            st_count(c, sizeof(c), tok, "cached"), f);

    /* Per prefix group: demand, placement and hit rate. */
    json_t *groups = st_get(doc, "groups");
    if (json_is_array(groups) && json_array_size(groups) > 0) {
        fprintf(out, "groups    %-5s %-8s %-10s %-8s %-6s %s\n", "queue", "inflight", "slots",
                "requests", "hit", "system prompt");
        size_t i;
        json_t *g;
        json_array_foreach(groups, i, g) {
            char slots[64] = "-";
            json_t *sl = st_get(g, "cached_in_slots");
            if (json_is_array(sl) && json_array_size(sl) > 0) {
                size_t k, n = 0;
                json_t *v;
                json_array_foreach(sl, k, v) {
                    if (n + 8 >= sizeof(slots))
                        break;
                    n += (size_t)snprintf(slots + n, sizeof(slots) - n, "%s%lld", k ? "," : "",
                                          (long long)json_integer_value(v));
                }
            }
            double hit;
            char hits[16] = "-";
            if (st_num(g, "hit_rate", &hit))
                snprintf(hits, sizeof(hits), "%.0f%%", hit * 100.0);
            fprintf(out, "          %-5s %-8s %-10s %-8s %-6s \"%s\"\n",
                    st_int(a, sizeof(a), g, "queued"), st_int(b, sizeof(b), g, "inflight"),
                    slots, st_int(c, sizeof(c), g, "requests"), hits,
                    st_str(d, sizeof(d), g, "label"));
        }
    }

    json_decref(doc);
    return 0;
}

/* ---- lmsched status -------------------------------------------------------- */

static void cli_status_usage(FILE *out)
{
    fprintf(out,
            "usage: lmsched status [--json] [--url URL] [--timeout MS]\n"
            "\n"
            "Shows what the lmsched daemon is doing: backend, memory budget, queue,\n"
            "request counts, latencies and tokens.\n"
            "\n"
            "  --json         print the status document as JSON (see docs/status.md)\n"
            "  --url URL      daemon URL (default: $LMSCHED_URL, else\n"
            "                 ipc://$XDG_RUNTIME_DIR/lmsched.sock, or\n"
            "                 ipc:///tmp/lmsched.sock)\n"
            "  --timeout MS   give up after MS milliseconds (default %d)\n"
            "  --help\n"
            "\n"
            "A daemon started with --auth-token-file needs its token: set it in the\n"
            "environment variable LMSCHED_AUTH_TOKEN.\n"
            "\n"
            "Exit status: 0 success, 1 the request failed, 2 usage error,\n"
            "3 daemon not reachable or no reply in time.\n",
            CLI_STATUS_TIMEOUT_MS);
}

/* Pretty-prints the daemon's JSON text, keys in the daemon's order. */
static int cli_print_json_text(const char *text)
{
    json_error_t jerr;
    json_t *doc = json_loads(text, 0, &jerr);
    if (doc == NULL)
        return cli_report(LMSCHED_EPROTO, "the daemon's status reply is not JSON");
    int rc = json_dumpf(doc, stdout, CLI_JSON_FLAGS);
    json_decref(doc);
    if (rc != 0)
        return cli_report(LMSCHED_ENOMEM, "cannot print the status document");
    fputc('\n', stdout);
    return CLI_EXIT_OK;
}

int cli_status_main(int argc, char **argv)
{
    enum { OPT_JSON = 256, OPT_URL, OPT_TIMEOUT };
    static const struct option opts[] = {
        {"json", no_argument, NULL, OPT_JSON},
        {"url", required_argument, NULL, OPT_URL},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bool as_json = false;
    const char *url = NULL;
    long timeout = CLI_STATUS_TIMEOUT_MS;
    lmsched_client *client = NULL;
    char *json = NULL, *errmsg = NULL;
    int code, c;

    /* 0 (not 1) makes glibc and the BSDs reset getopt's hidden state too. */
    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case OPT_JSON:
            as_json = true;
            break;
        case OPT_URL:
            url = optarg;
            break;
        case OPT_TIMEOUT:
            if (cli_parse_long("status", "--timeout", optarg, 1, INT_MAX, &timeout) != 0)
                return CLI_EXIT_USAGE;
            break;
        case 'h':
            cli_status_usage(stdout);
            return cli_finish_stdout(CLI_EXIT_OK);
        default:
            return cli_bad_option("status", c, argv);
        }
    }
    if (optind < argc) {
        fprintf(stderr, "lmsched status: unexpected argument '%s' (see --help)\n",
                argv[optind]);
        return CLI_EXIT_USAGE;
    }

    if ((code = cli_open("status", url, (int)timeout, &client)) != CLI_EXIT_OK)
        goto out;
    int rc = lmsched_status(client, (int)timeout, &json, &errmsg);
    if (rc != LMSCHED_OK) {
        if (as_json)
            cli_print_error_json(rc, errmsg);
        code = cli_report(rc, errmsg);
        goto out;
    }
    if (as_json)
        code = cli_print_json_text(json);
    else if (cli_render_status(json, stdout) != 0)
        code = cli_report(LMSCHED_EPROTO, "the daemon's reply is not a status document");
    code = cli_finish_stdout(code);
out:
    lmsched_free(json);
    lmsched_free(errmsg);
    lmsched_client_close(client);
    return code;
}

/* ---- lmsched chat -------------------------------------------------------- */

static void cli_chat_usage(FILE *out)
{
    fprintf(
        out,
        "usage: lmsched chat [options] \"user text\"\n"
        "\n"
        "Sends one chat request (a system prompt and one user message) through the\n"
        "lmsched daemon and prints the reply. A user text of \"-\" is read from stdin.\n"
        "\n"
        "  --system TEXT          system prompt (default: empty)\n"
        "  --system-file FILE     read the system prompt from FILE, byte for byte\n"
        "  --model M              model to ask for (default: the server's loaded model)\n"
        "  --max-tokens N         reply length limit in tokens, 1 to %d\n"
        "  --temperature T        sampling temperature, 0 to 10\n"
        "  --seed N               sampling seed (a signed 64-bit integer)\n"
        "  --priority P           0 (lowest) to 9 (highest), default 5\n"
        "  --agent NAME           agent name shown in the daemon's logs (default\n"
        "                         lmsched-chat)\n"
        "  --stream               print the answer as it is generated\n"
        "  --tools FILE           tool definitions: a JSON array (OpenAI's shape) in "
        "FILE\n"
        "  --tool-choice C        auto, none, required, a function name, or a JSON "
        "object\n"
        "  --response-format FILE structured output: a JSON object in FILE, e.g.\n"
        "                         {\"type\":\"json_object\"}\n"
        "  --extra JSON           more fields for the LLM server's request body, as a\n"
        "                         JSON object, e.g. '{\"top_k\":40,\"min_p\":0.05}'\n"
        "  --timeout MS           give up after MS milliseconds (default %d)\n"
        "  --url URL              daemon URL (default: $LMSCHED_URL, else\n"
        "                         ipc://$XDG_RUNTIME_DIR/lmsched.sock, or\n"
        "                         ipc:///tmp/lmsched.sock)\n"
        "  --json                 print the reply, usage and timings as a JSON object\n"
        "                         (with --stream: a JSON line per piece, then the\n"
        "                         reply's)\n"
        "  --help\n"
        "\n"
        "The answer goes to stdout, each tool call the model made as a line\n"
        "\"tool_call ID NAME ARGUMENTS\" after it; a reasoning model's thoughts go to\n"
        "stderr. FILE may be \"-\" for stdin (once).\n"
        "\n"
        "A daemon started with --auth-token-file needs its token: set it in the\n"
        "environment variable LMSCHED_AUTH_TOKEN.\n"
        "\n"
        "Exit status: 0 success, 1 the request failed, 2 usage error,\n"
        "3 daemon not reachable or no reply in time.\n",
        LMSCHED_MAX_TOKENS_MAX, LMSCHED_DEFAULT_TIMEOUT_MS);
}

/*
 * Reads all of f into a NUL-terminated heap string (*outp, freed by the
 * caller) of at most max bytes. Returns 0, or -1 with errno set: EFBIG when
 * longer than max, EILSEQ when it holds a NUL byte (it could not be sent as
 * a C string without silently cutting it), or the read error.
 */
static int cli_read_all(FILE *f, size_t max, char **outp)
{
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    *outp = NULL;
    if (buf == NULL)
        goto fail;
    for (;;) {
        if (cap - n < 2) {
            char *nb = cap > max ? NULL : realloc(buf, cap * 2);
            if (nb == NULL) {
                if (cap > max)
                    errno = EFBIG;
                goto fail;
            }
            buf = nb;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (n > max) {
            errno = EFBIG;
            goto fail;
        }
        if (got == 0) {
            if (ferror(f))
                goto fail;
            break;
        }
    }
    buf[n] = '\0';
    if (strlen(buf) != n) {
        errno = EILSEQ;
        goto fail;
    }
    *outp = buf;
    return 0;
fail:
    free(buf);
    return -1;
}

/* Reads a prompt from a file, or stdin for "-"; reports problems itself. */
static int cli_read_text(const char *what, const char *path, char **outp)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "lmsched chat: cannot open %s '%s': %s\n", what, path,
                strerror(errno));
        return -1;
    }
    int rc = cli_read_all(f, LMSCHED_MAX_TEXT_BYTES, outp);
    int saved = errno;
    if (f != stdin)
        fclose(f);
    if (rc != 0) {
        if (saved == EFBIG)
            fprintf(stderr, "lmsched chat: the %s is over the %u byte limit\n", what,
                    LMSCHED_MAX_TEXT_BYTES);
        else if (saved == EILSEQ)
            fprintf(stderr, "lmsched chat: the %s contains a NUL byte\n", what);
        else
            fprintf(stderr, "lmsched chat: cannot read the %s: %s\n", what,
                    strerror(saved));
        return -1;
    }
    return 0;
}

/* A JSON string for s: null for NULL. Reply text that is not valid UTF-8
 * (jansson refuses it) is shown with its non-ASCII bytes as '?' rather than
 * losing the whole reply. */
static json_t *cli_json_str(const char *s)
{
    if (s == NULL)
        return json_null();
    json_t *j = json_string(s);
    if (j != NULL)
        return j;
    char *copy = strdup(s);
    if (copy == NULL)
        return NULL;
    for (char *p = copy; *p != '\0'; p++)
        if ((unsigned char)*p >= 0x80)
            *p = '?';
    j = json_string(copy);
    free(copy);
    return j;
}

/* Token counts are -1 when the LLM server did not report them. */
static json_t *cli_json_count(int64_t v)
{
    return v >= 0 ? json_integer((json_int_t)v) : json_null();
}

static json_t *cli_json_ms(double v)
{
    return v >= 0 ? json_real(v) : json_null();
}

/* The reply's tool calls as a JSON array of {id, type, name, arguments}
 * (arguments as the model wrote them, a string). */
static json_t *cli_json_calls(const lmsched_result *res)
{
    json_t *arr = json_array();
    for (size_t i = 0; arr != NULL && i < lmsched_result_tool_call_count(res); i++) {
        json_t *tc = json_pack(
            "{s:o,s:o,s:o,s:o}", "id", cli_json_str(lmsched_result_tool_call_id(res, i)),
            "type", cli_json_str(lmsched_result_tool_call_type(res, i)), "name",
            cli_json_str(lmsched_result_tool_call_name(res, i)), "arguments",
            cli_json_str(lmsched_result_tool_call_arguments(res, i)));
        if (tc == NULL || json_array_append_new(arr, tc) != 0) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

/* The logprobs the server sent (when --extra asked for them), or null. */
static json_t *cli_json_logprobs(const lmsched_result *res)
{
    const char *text = lmsched_result_logprobs_json(res);
    json_t *v = text != NULL ? json_loads(text, JSON_DECODE_ANY, NULL) : NULL;
    return v != NULL ? v : json_null();
}

/* One tool call as the text output shows it: "tool_call ID NAME ARGS". */
static void cli_print_call_head(const char *id, const char *name)
{
    printf("tool_call %s %s ", id != NULL && id[0] != '\0' ? id : "-",
           name != NULL ? name : "-");
}

/* Prints the reply. flags: CLI_JSON_FLAGS, or compact for a stream's last
 * line. Without JSON: reasoning to stderr, content to stdout (ended by a
 * newline), then a line per tool call. */
static int cli_print_reply(const lmsched_result *res, bool as_json, size_t flags)
{
    if (!as_json) {
        const char *reasoning = lmsched_result_reasoning(res);
        if (reasoning != NULL && reasoning[0] != '\0') {
            size_t r = strlen(reasoning);
            fwrite(reasoning, 1, r, stderr);
            if (reasoning[r - 1] != '\n')
                fputc('\n', stderr);
        }
        const char *content = lmsched_result_content(res);
        size_t n = content != NULL ? strlen(content) : 0;
        size_t ncalls = lmsched_result_tool_call_count(res);
        if (n > 0)
            fwrite(content, 1, n, stdout);
        if ((n > 0 && content[n - 1] != '\n') || (n == 0 && ncalls == 0))
            fputc('\n', stdout);
        for (size_t i = 0; i < ncalls; i++) {
            cli_print_call_head(lmsched_result_tool_call_id(res, i),
                                lmsched_result_tool_call_name(res, i));
            printf("%s\n", lmsched_result_tool_call_arguments(res, i));
        }
        return CLI_EXIT_OK;
    }
    json_t *doc =
        json_pack("{s:o,s:o,s:o,s:{s:o,s:o,s:o},s:{s:o,s:o,s:o},s:I}", "content",
                  cli_json_str(lmsched_result_content(res)), "finish_reason",
                  cli_json_str(lmsched_result_finish_reason(res)), "model",
                  cli_json_str(lmsched_result_model(res)), "usage", "prompt_tokens",
                  cli_json_count(lmsched_result_prompt_tokens(res)), "completion_tokens",
                  cli_json_count(lmsched_result_completion_tokens(res)), "cached_tokens",
                  cli_json_count(lmsched_result_cached_tokens(res)), "timings",
                  "queue_ms", cli_json_ms(lmsched_result_queue_ms(res)), "ttft_ms",
                  cli_json_ms(lmsched_result_ttft_ms(res)), "total_ms",
                  cli_json_ms(lmsched_result_total_ms(res)), "retries",
                  (json_int_t)lmsched_result_retries(res));
    /* What not every answer has comes only when it is there, so the
     * document of a plain answer keeps its keys. */
    bool bad = doc == NULL;
    if (!bad && lmsched_result_reasoning(res) != NULL)
        bad = json_object_set_new(doc, "reasoning",
                                  cli_json_str(lmsched_result_reasoning(res))) != 0;
    if (!bad && lmsched_result_tool_call_count(res) > 0)
        bad = json_object_set_new(doc, "tool_calls", cli_json_calls(res)) != 0;
    if (!bad && lmsched_result_logprobs_json(res) != NULL)
        bad = json_object_set_new(doc, "logprobs", cli_json_logprobs(res)) != 0;
    if (bad) {
        json_decref(doc);
        return cli_report(LMSCHED_ENOMEM, "cannot build the JSON reply");
    }
    int rc = json_dumpf(doc, stdout, flags);
    json_decref(doc);
    if (rc != 0)
        return cli_report(LMSCHED_ENOMEM, "cannot print the JSON reply");
    fputc('\n', stdout);
    return CLI_EXIT_OK;
}

/* What the stream printer remembers between pieces. */
typedef struct cli_stream {
    bool as_json;
    bool out_open; /* stdout's last line is not ended */
    bool out_any;  /* anything went to stdout */
    bool err_open; /* stderr's reasoning line is not ended */
} cli_stream;

/* Ends the reasoning line on stderr before anything else is printed. */
static void cli_stream_end_reasoning(cli_stream *s)
{
    if (s->err_open) {
        fputc('\n', stderr);
        fflush(stderr);
        s->err_open = false;
    }
}

/* Prints each piece as it comes: content to stdout, reasoning to stderr,
 * a tool call as its "tool_call ID NAME " head then its arguments; with
 * --json, one line per piece in the protocol's delta shape. The output
 * is the same as without --stream once the stream is over. */
static int cli_on_delta(int kind, const char *text, int index, const char *id,
                        const char *name, void *arg)
{
    cli_stream *s = arg;
    size_t n = strlen(text);

    if (s->as_json) {
        json_t *d = NULL;
        if (kind == LMSCHED_DELTA_CONTENT)
            d = json_pack("{s:o}", "content", cli_json_str(text));
        else if (kind == LMSCHED_DELTA_REASONING)
            d = json_pack("{s:o}", "reasoning", cli_json_str(text));
        else if (kind == LMSCHED_DELTA_TOOL_CALL)
            d = json_pack("{s:{s:i,s:o,s:o,s:o}}", "tool_call", "index", index, "id",
                          cli_json_str(id), "name", cli_json_str(name), "arguments",
                          cli_json_str(text));
        if (d != NULL && json_dumpf(d, stdout, JSON_COMPACT | JSON_PRESERVE_ORDER) == 0)
            fputc('\n', stdout);
        json_decref(d);
    } else if (kind == LMSCHED_DELTA_REASONING) {
        if (n > 0) {
            fwrite(text, 1, n, stderr);
            s->err_open = text[n - 1] != '\n';
            fflush(stderr);
        }
        return 0;
    } else if (kind == LMSCHED_DELTA_CONTENT) {
        cli_stream_end_reasoning(s);
        if (n > 0) {
            fwrite(text, 1, n, stdout);
            s->out_open = text[n - 1] != '\n';
            s->out_any = true;
        }
    } else if (kind == LMSCHED_DELTA_TOOL_CALL) {
        cli_stream_end_reasoning(s);
        if (id != NULL) {
            if (s->out_open)
                fputc('\n', stdout);
            cli_print_call_head(id, name);
            s->out_any = true;
        }
        fwrite(text, 1, n, stdout);
        s->out_open = true;
    }
    fflush(stdout);
    /* A closed stdout (the reader went away) stops the stream: the daemon
     * frees the slot instead of generating for nobody. */
    return ferror(stdout) ? 1 : 0;
}

/* A setter refused a value that passed our own checks, or memory ran out. */
static int cli_setter_failed(int rc, const char *what, const lmsched_request *req)
{
    if (rc == LMSCHED_ENOMEM)
        return cli_report(rc, NULL);
    const char *why = lmsched_request_last_error(req);
    fprintf(stderr, "lmsched chat: invalid %s: %s\n", what,
            why != NULL && why[0] != '\0' ? why : lmsched_strerror(rc));
    return CLI_EXIT_USAGE;
}

int cli_chat_main(int argc, char **argv)
{
    enum {
        OPT_SYSTEM = 256,
        OPT_SYSTEM_FILE,
        OPT_MODEL,
        OPT_MAX_TOKENS,
        OPT_TEMPERATURE,
        OPT_PRIORITY,
        OPT_AGENT,
        OPT_TIMEOUT,
        OPT_URL,
        OPT_JSON,
        OPT_STREAM,
        OPT_TOOLS,
        OPT_TOOL_CHOICE,
        OPT_RESPONSE_FORMAT,
        OPT_EXTRA,
        OPT_SEED,
    };
    static const struct option opts[] = {
        {"system", required_argument, NULL, OPT_SYSTEM},
        {"system-file", required_argument, NULL, OPT_SYSTEM_FILE},
        {"model", required_argument, NULL, OPT_MODEL},
        {"max-tokens", required_argument, NULL, OPT_MAX_TOKENS},
        {"temperature", required_argument, NULL, OPT_TEMPERATURE},
        {"priority", required_argument, NULL, OPT_PRIORITY},
        {"agent", required_argument, NULL, OPT_AGENT},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"url", required_argument, NULL, OPT_URL},
        {"json", no_argument, NULL, OPT_JSON},
        {"stream", no_argument, NULL, OPT_STREAM},
        {"tools", required_argument, NULL, OPT_TOOLS},
        {"tool-choice", required_argument, NULL, OPT_TOOL_CHOICE},
        {"response-format", required_argument, NULL, OPT_RESPONSE_FORMAT},
        {"extra", required_argument, NULL, OPT_EXTRA},
        {"seed", required_argument, NULL, OPT_SEED},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *system = NULL, *system_file = NULL, *model = NULL,
               *agent = "lmsched-chat";
    const char *url = NULL, *tools_file = NULL, *tool_choice = NULL, *format_file = NULL,
               *extra = NULL;
    long max_tokens = -1, priority = -1, timeout = 0;
    long long seed = 0;
    bool have_seed = false;
    double temperature = -1;
    bool as_json = false, stream = false;
    char *system_buf = NULL, *user_buf = NULL, *tools_buf = NULL, *format_buf = NULL;
    lmsched_client *client = NULL;
    lmsched_request *req = NULL;
    lmsched_result *res = NULL;
    int code = CLI_EXIT_USAGE, rc, c;

    optind = 0; /* see cli_status_main */
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case OPT_SYSTEM:
            system = optarg;
            break;
        case OPT_SYSTEM_FILE:
            system_file = optarg;
            break;
        case OPT_MODEL:
            model = optarg;
            break;
        case OPT_MAX_TOKENS:
            if (cli_parse_long("chat", "--max-tokens", optarg, 1, LMSCHED_MAX_TOKENS_MAX,
                               &max_tokens) != 0)
                return CLI_EXIT_USAGE;
            break;
        case OPT_TEMPERATURE:
            if (cli_parse_double("chat", "--temperature", optarg, 0, 10, &temperature) !=
                0)
                return CLI_EXIT_USAGE;
            break;
        case OPT_PRIORITY:
            if (cli_parse_long("chat", "--priority", optarg, 0, 9, &priority) != 0)
                return CLI_EXIT_USAGE;
            break;
        case OPT_AGENT:
            agent = optarg;
            break;
        case OPT_TIMEOUT:
            if (cli_parse_long("chat", "--timeout", optarg, 1, INT_MAX, &timeout) != 0)
                return CLI_EXIT_USAGE;
            break;
        case OPT_URL:
            url = optarg;
            break;
        case OPT_JSON:
            as_json = true;
            break;
        case OPT_STREAM:
            stream = true;
            break;
        case OPT_TOOLS:
            tools_file = optarg;
            break;
        case OPT_TOOL_CHOICE:
            tool_choice = optarg;
            break;
        case OPT_RESPONSE_FORMAT:
            format_file = optarg;
            break;
        case OPT_EXTRA:
            extra = optarg;
            break;
        case OPT_SEED: {
            char *end;
            errno = 0;
            seed = strtoll(optarg, &end, 10);
            if (errno != 0 || end == optarg || *end != '\0') {
                fprintf(
                    stderr,
                    "lmsched chat: --seed: expected a signed 64-bit integer, got '%s'\n",
                    optarg);
                return CLI_EXIT_USAGE;
            }
            have_seed = true;
            break;
        }
        case 'h':
            cli_chat_usage(stdout);
            return cli_finish_stdout(CLI_EXIT_OK);
        default:
            return cli_bad_option("chat", c, argv);
        }
    }
    if (system != NULL && system_file != NULL) {
        fprintf(stderr, "lmsched chat: give --system or --system-file, not both\n");
        return CLI_EXIT_USAGE;
    }
    if (argc - optind != 1) {
        fprintf(stderr, "lmsched chat: %s (see --help)\n",
                optind >= argc ? "the user text is missing"
                               : "expected one user text; quote it as one argument");
        return CLI_EXIT_USAGE;
    }
    const char *user = argv[optind];
    int from_stdin = (strcmp(user, "-") == 0) +
                     (system_file != NULL && strcmp(system_file, "-") == 0) +
                     (tools_file != NULL && strcmp(tools_file, "-") == 0) +
                     (format_file != NULL && strcmp(format_file, "-") == 0);
    if (from_stdin > 1) {
        fprintf(stderr, "lmsched chat: stdin can hold only one of the system prompt, the "
                        "user text, --tools and --response-format\n");
        return CLI_EXIT_USAGE;
    }
    if (system_file != NULL) {
        if (cli_read_text("system prompt", system_file, &system_buf) != 0)
            goto out;
        system = system_buf;
    }
    if (strcmp(user, "-") == 0) {
        if (cli_read_text("user text", "-", &user_buf) != 0)
            goto out;
        user = user_buf;
    }
    if (tools_file != NULL && cli_read_text("--tools file", tools_file, &tools_buf) != 0)
        goto out;
    if (format_file != NULL &&
        cli_read_text("--response-format file", format_file, &format_buf) != 0)
        goto out;

    if ((rc = lmsched_request_alloc(&req)) != LMSCHED_OK) {
        code = cli_report(rc, NULL);
        goto out;
    }
    /* the system prompt is the shared prefix the server caches: sent as given */
    if ((rc = lmsched_request_set_system(req, system != NULL ? system : "")) !=
        LMSCHED_OK) {
        code = cli_setter_failed(rc, "system prompt", req);
        goto out;
    }
    if ((rc = lmsched_request_add_message(req, "user", user)) != LMSCHED_OK) {
        code = cli_setter_failed(rc, "user text", req);
        goto out;
    }
    if (model != NULL && (rc = lmsched_request_set_model(req, model)) != LMSCHED_OK) {
        code = cli_setter_failed(rc, "--model", req);
        goto out;
    }
    if (max_tokens > 0 &&
        (rc = lmsched_request_set_max_tokens(req, (int32_t)max_tokens)) != LMSCHED_OK) {
        code = cli_setter_failed(rc, "--max-tokens", req);
        goto out;
    }
    if (temperature >= 0 &&
        (rc = lmsched_request_set_temperature(req, temperature)) != LMSCHED_OK) {
        code = cli_setter_failed(rc, "--temperature", req);
        goto out;
    }
    if (have_seed && (rc = lmsched_request_set_seed(req, (int64_t)seed)) != LMSCHED_OK) {
        code = cli_setter_failed(rc, "--seed", req);
        goto out;
    }
    if (priority >= 0 &&
        (rc = lmsched_request_set_priority(req, (int)priority)) != LMSCHED_OK) {
        code = cli_setter_failed(rc, "--priority", req);
        goto out;
    }
    if ((rc = lmsched_request_set_agent(req, agent)) != LMSCHED_OK) {
        code = cli_setter_failed(rc, "--agent", req);
        goto out;
    }
    if (tools_buf != NULL &&
        (rc = lmsched_request_set_tools(req, tools_buf)) != LMSCHED_OK) {
        code = cli_setter_failed(rc, "--tools", req);
        goto out;
    }
    if (tool_choice != NULL) {
        /* a bare word other than auto/none/required names a function */
        bool word = tool_choice[0] != '{' && tool_choice[0] != '"' &&
                    strcmp(tool_choice, "auto") != 0 &&
                    strcmp(tool_choice, "none") != 0 &&
                    strcmp(tool_choice, "required") != 0;
        rc = word ? lmsched_request_set_tool_choice_function(req, tool_choice)
                  : lmsched_request_set_tool_choice(req, tool_choice);
        if (rc != LMSCHED_OK) {
            code = cli_setter_failed(rc, "--tool-choice", req);
            goto out;
        }
    }
    if (format_buf != NULL &&
        (rc = lmsched_request_set_response_format(req, format_buf)) != LMSCHED_OK) {
        code = cli_setter_failed(rc, "--response-format", req);
        goto out;
    }
    if (extra != NULL && (rc = lmsched_request_set_extra(req, extra)) != LMSCHED_OK) {
        code = cli_setter_failed(rc, "--extra", req);
        goto out;
    }

    if ((code = cli_open("chat", url, (int)timeout, &client)) != CLI_EXIT_OK)
        goto out;
    cli_stream st = {.as_json = as_json};
    if (stream)
        rc = lmsched_chat_stream(client, req, (int)timeout, cli_on_delta, &st, &res);
    else
        rc = lmsched_chat(client, req, (int)timeout, &res);
    cli_stream_end_reasoning(&st);
    if (st.out_open) {
        fputc('\n', stdout);
        st.out_open = false;
    }
    if (rc != LMSCHED_OK) {
        const char *msg = res != NULL ? lmsched_result_message(res) : NULL;
        fflush(stdout);
        if (as_json)
            cli_print_error_json(rc, msg);
        code = cli_report(rc, msg);
        if (stream && ferror(stdout))
            code = cli_finish_stdout(code);
        goto out;
    }
    if (!stream) {
        code = cli_finish_stdout(cli_print_reply(res, as_json, CLI_JSON_FLAGS));
    } else if (as_json) {
        /* the last line: the whole reply, as without --stream but on one line */
        code = cli_finish_stdout(cli_print_reply(
            res, true, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(12)));
    } else {
        /* an answer with nothing to show still ends its (empty) line */
        if (!st.out_any)
            fputc('\n', stdout);
        code = cli_finish_stdout(CLI_EXIT_OK);
    }
out:
    lmsched_result_free(res);
    lmsched_request_free(req);
    lmsched_client_close(client);
    free(system_buf);
    free(user_buf);
    free(tools_buf);
    free(format_buf);
    return code;
}
