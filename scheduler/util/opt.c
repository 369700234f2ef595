/*
 * opt - option tables (see opt.h): defaults, strict getopt_long parsing,
 * --help, the docs' Markdown table and the JSON dump, all from one entry
 * per option.
 *
 * Design notes: an entry reaches its field through an offset into the
 * caller's struct, so this module never knows the struct. The field macros
 * in opt.h make a field of the wrong C type a compile error, which is what
 * keeps the (void *) arithmetic here honest. Values are parsed by util/num
 * only; the words of every message ("expected an integer from 1 to 4096")
 * come from the entry's type and range, so --help, the docs and the errors
 * cannot disagree about what is accepted.
 */
#include "scheduler/util/opt.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "scheduler/util/num.h"

/* getopt_long values: entry i is OPT_VAL_BASE + i; then the built-ins. */
#define OPT_VAL_BASE 256

/* --help layout: the text column and the line width. */
#define OPT_COL 26
#define OPT_WIDTH 80
#define OPT_NBSP '\x01'

static void *opt_field(const opt_spec *s, void *cfg)
{
    return (char *)cfg + s->off;
}

static const void *opt_cfield(const opt_spec *s, const void *cfg)
{
    return (const char *)cfg + s->off;
}

const opt_spec *opt_find(const opt_table *t, const char *name)
{
    for (size_t i = 0; i < t->n; i++)
        if (strcmp(t->specs[i].name, name) == 0)
            return &t->specs[i];
    return NULL;
}

/* "a, b, c or d" (quote: each name in backticks, for Markdown). */
static void opt_names(const opt_spec *s, bool quote, char *buf, size_t len)
{
    size_t n = 0, used = 0;
    while (s->names[n] != NULL)
        n++;
    buf[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        const char *sep = i == 0 ? "" : (i + 1 == n && !quote ? " or " : ", ");
        const char *q = quote ? "`" : "";
        int k = snprintf(buf + used, len - used, "%s%s%s%s", sep, q, s->names[i], q);
        if (k < 0 || (size_t)k >= len - used)
            return;
        used += (size_t)k;
    }
}

static const char *opt_interval(const opt_spec *s, char *buf, size_t len)
{
    char lo[40], hi[40];
    snprintf(buf, len, "%c%s, %s%c", s->flags & OPT_MIN_OPEN ? '(' : '[',
             num_fmt_double(s->dmin, lo, sizeof(lo)),
             num_fmt_double(s->dmax, hi, sizeof(hi)),
             s->flags & OPT_MAX_OPEN ? ')' : ']');
    return buf;
}

/* What a valid value is: after "expected " in an error (doc false), or in
 * the docs' "accepted" column (doc true). */
static const char *opt_expect(const opt_spec *s, bool doc, char *buf, size_t len)
{
    char a[40], b[40];
    if (s->expect != NULL) {
        snprintf(buf, len, "%s", s->expect);
        return buf;
    }
    switch (s->type) {
    case OPT_INT:
    case OPT_UINT:
    case OPT_INT64:
        snprintf(buf, len, doc ? "%lld to %lld" : "an integer from %lld to %lld", s->min,
                 s->max);
        break;
    case OPT_UINT64:
        snprintf(buf, len, doc ? "%llu to %llu" : "an integer from %llu to %llu",
                 (unsigned long long)s->umin, (unsigned long long)s->umax);
        break;
    case OPT_SIZE:
        if (!doc)
            snprintf(buf, len, "a size like 4G or 512MiB");
        else if (s->umin <= 1 && s->umax == UINT64_MAX)
            snprintf(buf, len, "size (K, M, G, T)%s", s->umin == 1 ? ", above 0" : "");
        else if (s->umax == UINT64_MAX)
            snprintf(buf, len, "size (K, M, G, T), at least %s",
                     num_fmt_size(s->umin, a, sizeof(a)));
        else
            snprintf(buf, len, "size (K, M, G, T), %s to %s",
                     num_fmt_size(s->umin, a, sizeof(a)),
                     num_fmt_size(s->umax, b, sizeof(b)));
        break;
    case OPT_DOUBLE:
        if (doc)
            opt_interval(s, buf, len);
        else
            snprintf(buf, len, "a number in %s", opt_interval(s, a, sizeof(a)));
        break;
    case OPT_MODE:
        snprintf(buf, len,
                 doc ? "octal %04llo to %04llo" : "an octal mode from %04llo to %04llo",
                 s->min, s->max);
        break;
    case OPT_ENUM:
    case OPT_CHOICE:
        opt_names(s, doc, buf, len);
        break;
    case OPT_STRING:
        snprintf(buf, len, doc ? "text, 1 to %zu bytes" : "a value of 1 to %zu bytes",
                 s->size - 1);
        break;
    case OPT_FLAG:
        snprintf(buf, len, "%s", doc ? "" : "no value");
        break;
    case OPT_CUSTOM:
        snprintf(buf, len, "a valid value");
        break;
    }
    return buf;
}

static int opt_bad(const opt_table *t, const opt_spec *s, const char *from,
                   const char *val, FILE *err)
{
    char want[256];
    fprintf(err, "%s: %s: expected %s, got '%s'\n", t->prog, from,
            opt_expect(s, false, want, sizeof(want)), val);
    return -1;
}

/* Index of val in s->names, or -1. */
static int opt_name_index(const opt_spec *s, const char *val)
{
    for (int i = 0; s->names[i] != NULL; i++)
        if (strcmp(s->names[i], val) == 0)
            return i;
    return -1;
}

int opt_set(const opt_table *t, const opt_spec *s, void *cfg, const char *val,
            const char *from, FILE *err)
{
    void *f = opt_field(s, cfg);
    long long ll;
    uint64_t u;
    double d;
    unsigned m;
    int i;

    if (s->type == OPT_FLAG) {
        if (val != NULL) {
            fprintf(err, "%s: %s takes no value, got '%s'\n", t->prog, from, val);
            return -1;
        }
        *(bool *)f = !(s->flags & OPT_CLEARS);
        return 0;
    }
    if (val == NULL) {
        fprintf(err, "%s: %s needs a value\n", t->prog, from);
        return -1;
    }
    switch (s->type) {
    case OPT_STRING:
        if (val[0] == '\0' || strlen(val) >= s->size) {
            fprintf(err, "%s: %s: value empty or too long\n", t->prog, from);
            return -1;
        }
        memcpy(f, val, strlen(val) + 1);
        return 0;
    case OPT_INT:
    case OPT_UINT:
    case OPT_INT64:
        if (num_parse_ll(val, s->min, s->max, &ll) != 0)
            return opt_bad(t, s, from, val, err);
        if (s->type == OPT_INT)
            *(int *)f = (int)ll;
        else if (s->type == OPT_UINT)
            *(unsigned *)f = (unsigned)ll;
        else
            *(int64_t *)f = (int64_t)ll;
        return 0;
    case OPT_UINT64:
        if (num_parse_u64(val, s->umin, s->umax, &u) != 0)
            return opt_bad(t, s, from, val, err);
        *(uint64_t *)f = u;
        return 0;
    case OPT_SIZE: {
        char lim[40];
        if (num_parse_size(val, &u) != 0)
            return opt_bad(t, s, from, val, err);
        if (u < s->umin && s->umin == 1) {
            fprintf(err, "%s: %s: expected a size above 0, got '%s'\n", t->prog, from,
                    val);
            return -1;
        }
        if (u < s->umin || u > s->umax) {
            fprintf(err, "%s: %s: %s %s, got '%s'\n", t->prog, from,
                    u < s->umin ? "at least" : "at most",
                    num_fmt_size(u < s->umin ? s->umin : s->umax, lim, sizeof(lim)), val);
            return -1;
        }
        *(uint64_t *)f = u;
        return 0;
    }
    case OPT_DOUBLE:
        if (num_parse_double(val, s->dmin, s->dmax, s->flags & OPT_MIN_OPEN,
                             s->flags & OPT_MAX_OPEN, &d) != 0)
            return opt_bad(t, s, from, val, err);
        *(double *)f = d;
        return 0;
    case OPT_MODE:
        if (num_parse_octal(val, &m) != 0 || m < (unsigned long long)s->min ||
            m > (unsigned long long)s->max || (m & s->mask) != s->mask)
            return opt_bad(t, s, from, val, err);
        *(unsigned *)f = m;
        return 0;
    case OPT_ENUM:
        if ((i = opt_name_index(s, val)) < 0)
            return opt_bad(t, s, from, val, err);
        *(int *)f = i;
        return 0;
    case OPT_CHOICE:
        if (opt_name_index(s, val) < 0 || strlen(val) >= s->size)
            return opt_bad(t, s, from, val, err);
        memcpy(f, val, strlen(val) + 1);
        return 0;
    case OPT_CUSTOM:
        if (s->set == NULL || s->set(s, cfg, val) != 0)
            return opt_bad(t, s, from, val, err);
        return 0;
    case OPT_FLAG:
        break;
    }
    return -1;
}

int opt_defaults(const opt_table *t, void *cfg)
{
    int rc = 0;
    for (size_t i = 0; i < t->n; i++) {
        const opt_spec *s = &t->specs[i];
        char from[80];
        if (s->type == OPT_FLAG) {
            *(bool *)opt_field(s, cfg) = (s->flags & OPT_CLEARS) != 0;
            continue;
        }
        if (s->def == NULL)
            continue;
        snprintf(from, sizeof(from), "--%s (its default)", s->name);
        if (opt_set(t, s, cfg, s->def, from, stderr) != 0)
            rc = -1;
    }
    return rc;
}

const char *opt_show(const opt_spec *s, const void *cfg, char *buf, size_t len)
{
    const void *f = opt_cfield(s, cfg);
    int i;

    if (len == 0)
        return "";
    buf[0] = '\0';
    switch (s->type) {
    case OPT_STRING:
    case OPT_CHOICE:
        snprintf(buf, len, "%.*s", (int)strnlen(f, s->size), (const char *)f);
        break;
    case OPT_INT:
        snprintf(buf, len, "%d", *(const int *)f);
        break;
    case OPT_UINT:
        snprintf(buf, len, "%u", *(const unsigned *)f);
        break;
    case OPT_INT64:
        snprintf(buf, len, "%lld", (long long)*(const int64_t *)f);
        break;
    case OPT_UINT64:
        snprintf(buf, len, "%llu", (unsigned long long)*(const uint64_t *)f);
        break;
    case OPT_SIZE:
        num_fmt_size(*(const uint64_t *)f, buf, len);
        break;
    case OPT_DOUBLE:
        num_fmt_double(*(const double *)f, buf, len);
        break;
    case OPT_MODE:
        snprintf(buf, len, "%04o", *(const unsigned *)f);
        break;
    case OPT_FLAG:
        snprintf(buf, len, "%s",
                 *(const bool *)f == !(s->flags & OPT_CLEARS) ? "true" : "false");
        break;
    case OPT_ENUM:
        i = *(const int *)f;
        for (int k = 0; s->names[k] != NULL; k++)
            if (k == i)
                snprintf(buf, len, "%s", s->names[k]);
        break;
    case OPT_CUSTOM:
        if (s->show != NULL)
            s->show(s, cfg, buf, len);
        break;
    }
    return buf;
}

/* ---- parsing ------------------------------------------------------------ */

/* getopt keeps state between calls; start it over (argv may differ). */
static void opt_getopt_reset(void)
{
#if defined(__GLIBC__)
    optind = 0;
#else
    optind = 1;
#if defined(__APPLE__) || defined(__FreeBSD__) || defined(__NetBSD__) ||                 \
    defined(__OpenBSD__)
    optreset = 1;
#endif
#endif
}

int opt_parse(const opt_table *t, void *cfg, int argc, char **argv, bool *given,
              FILE *err)
{
    int rc = OPT_ERROR;
    int help = OPT_VAL_BASE + (int)t->n, version = help + 1, markdown = help + 2;
    struct option *lo = calloc(t->n + 4, sizeof(*lo));
    bool *seen = calloc(t->n + 1, sizeof(*seen));
    if (lo == NULL || seen == NULL) {
        fprintf(err, "%s: out of memory\n", t->prog);
        goto out;
    }
    for (size_t i = 0; i < t->n; i++) {
        lo[i].name = t->specs[i].name;
        lo[i].has_arg = t->specs[i].type == OPT_FLAG ? no_argument : required_argument;
        lo[i].val = OPT_VAL_BASE + (int)i;
    }
    lo[t->n] = (struct option){"help", no_argument, NULL, help};
    lo[t->n + 1] = (struct option){"version", no_argument, NULL, version};
    lo[t->n + 2] = (struct option){"help-markdown", no_argument, NULL, markdown};

    opt_getopt_reset();
    opterr = 0;
    int c;
    /* The leading ':' makes a missing value ':' rather than '?'. */
    while ((c = getopt_long(argc, argv, ":", lo, NULL)) != -1) {
        if (c == help || c == version || c == markdown) {
            rc = c == help ? OPT_HELP : c == version ? OPT_VERSION : OPT_MARKDOWN;
            goto out;
        }
        if (c >= OPT_VAL_BASE && c < help) {
            const opt_spec *s = &t->specs[c - OPT_VAL_BASE];
            char from[80];
            snprintf(from, sizeof(from), "--%s", s->name);
            if (opt_set(t, s, cfg, s->type == OPT_FLAG ? NULL : optarg, from, err) != 0)
                goto out;
            seen[c - OPT_VAL_BASE] = true;
            continue;
        }
        if (c == ':')
            fprintf(err, "%s: option '%s' needs a value (see --help)\n", t->prog,
                    argv[optind - 1]);
        else if (optopt >= OPT_VAL_BASE && optopt < help)
            fprintf(err, "%s: option '--%s' takes no value (see --help)\n", t->prog,
                    t->specs[optopt - OPT_VAL_BASE].name);
        else if (optopt > 0 && optopt < OPT_VAL_BASE)
            fprintf(err, "%s: unknown option '-%c' (see --help)\n", t->prog, optopt);
        else
            fprintf(err, "%s: unknown or incomplete option '%s' (see --help)\n", t->prog,
                    argv[optind - 1]);
        goto out;
    }
    if (optind < argc) {
        fprintf(err, "%s: unexpected argument '%s' (see --help)\n", t->prog,
                argv[optind]);
        goto out;
    }
    for (size_t i = 0; i < t->n; i++) {
        const opt_spec *s = &t->specs[i];
        const char *v = s->env != NULL ? getenv(s->env) : NULL;
        if (seen[i])
            continue;
        if (v != NULL && v[0] != '\0' && opt_set(t, s, cfg, v, s->env, err) != 0)
            goto out;
    }
    rc = OPT_RUN;
out:
    if (given != NULL)
        for (size_t i = 0; i < t->n; i++)
            given[i] = seen != NULL && seen[i];
    free(seen);
    free(lo);
    return rc;
}

/* ---- --help ------------------------------------------------------------- */

/* The default as --help and the docs say it, or NULL when there is none
 * to say (a flag). quote wraps a literal value in backticks. */
static const char *opt_default_text(const opt_spec *s, bool quote, char *buf, size_t len)
{
    const char *what, *q = quote ? "`" : "";
    char tmp[512];
    if (s->type == OPT_FLAG)
        return quote ? "off" : NULL;
    if (s->def != NULL) {
        snprintf(tmp, sizeof(tmp), "%s%s%s", q, s->def, q);
        what = tmp;
    } else if (s->def_doc != NULL) {
        what = s->def_doc;
    } else {
        what = "none";
    }
    if (s->env != NULL)
        snprintf(buf, len, "%s$%s%s, else %s", q, s->env, q, what);
    else
        snprintf(buf, len, "%s", what);
    return buf;
}

/* Writes text word-wrapped from column OPT_COL, the first line after a
 * label already printed that took `used` columns. OPT_NBSP is a space
 * that does not break the line. */
static void opt_wrap(FILE *out, size_t used, const char *text)
{
    const char *p = text;
    if (used + 2 > OPT_COL) {
        fputs("  ", out);
        used += 2;
    } else {
        fprintf(out, "%*s", (int)(OPT_COL - used), "");
        used = OPT_COL;
    }
    bool first = true;
    while (*p != '\0') {
        while (*p == ' ' || *p == '\n')
            p++;
        if (*p == '\0')
            break;
        size_t w = strcspn(p, " \n");
        if (!first && used + 1 + w > OPT_WIDTH) {
            fprintf(out, "\n%*s", OPT_COL, "");
            used = OPT_COL;
            first = true;
        }
        if (!first) {
            fputc(' ', out);
            used++;
        }
        for (size_t k = 0; k < w; k++)
            fputc(p[k] == OPT_NBSP ? ' ' : p[k], out);
        used += w;
        p += w;
        first = false;
    }
    fputc('\n', out);
}

/* True when the group of entry i is already that of an earlier entry. */
static bool opt_group_seen(const opt_table *t, size_t i)
{
    for (size_t k = 0; k < i; k++)
        if (strcmp(t->specs[k].group, t->specs[i].group) == 0)
            return true;
    return false;
}

void opt_usage(const opt_table *t, FILE *out)
{
    fputs(t->usage, out);
    for (size_t g = 0; g < t->n; g++) {
        if (opt_group_seen(t, g))
            continue;
        fprintf(out, "\n%s:\n", t->specs[g].group);
        for (size_t i = g; i < t->n; i++) {
            const opt_spec *s = &t->specs[i];
            char label[128], def[640], text[2048];
            if (strcmp(s->group, t->specs[g].group) != 0)
                continue;
            int n = snprintf(label, sizeof(label), "  --%s%s%s", s->name,
                             s->arg ? " " : "", s->arg ? s->arg : "");
            const char *d = opt_default_text(s, false, def, sizeof(def));
            if (d != NULL)
                snprintf(text, sizeof(text), "%s (default:%c%s)", s->help, OPT_NBSP, d);
            else
                snprintf(text, sizeof(text), "%s", s->help);
            fputs(label, out);
            opt_wrap(out, n > 0 ? (size_t)n : 0, text);
        }
    }
    fputs("\n  --help", out);
    opt_wrap(out, 8, "print this help and exit");
    fputs("  --version", out);
    opt_wrap(out, 11, "print the version and exit");
    if (t->epilogue != NULL) {
        fputc('\n', out);
        fputs(t->epilogue, out);
    }
}

/* ---- Markdown ----------------------------------------------------------- */

/* Writes text for a table cell: '|' escaped, newlines as spaces. */
static void opt_md_cell(FILE *out, const char *text)
{
    for (const char *p = text; *p != '\0'; p++) {
        if (*p == '|')
            fputs("\\|", out);
        else if (*p == '\n')
            fputc(' ', out);
        else
            fputc(*p, out);
    }
}

void opt_markdown(const opt_table *t, FILE *out)
{
    bool first = true;
    for (size_t g = 0; g < t->n; g++) {
        if (opt_group_seen(t, g))
            continue;
        fprintf(out, "%s**%s**\n\n", first ? "" : "\n", t->specs[g].group);
        fputs("| flag | default | accepted | meaning |\n| --- | --- | --- | --- |\n",
              out);
        first = false;
        for (size_t i = g; i < t->n; i++) {
            const opt_spec *s = &t->specs[i];
            char buf[640];
            if (strcmp(s->group, t->specs[g].group) != 0)
                continue;
            fprintf(out, "| `--%s%s%s` | ", s->name, s->arg ? " " : "",
                    s->arg ? s->arg : "");
            opt_md_cell(out, opt_default_text(s, true, buf, sizeof(buf)));
            fputs(" | ", out);
            opt_md_cell(out, opt_expect(s, true, buf, sizeof(buf)));
            fputs(" | ", out);
            opt_md_cell(out, s->doc != NULL ? s->doc : s->help);
            fputs(" |\n", out);
        }
    }
}

/* ---- JSON --------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at p, or 0. */
static size_t opt_utf8_len(const unsigned char *p)
{
    size_t n;
    unsigned min;
    unsigned cp;
    if (p[0] < 0x80)
        return 1;
    if ((p[0] & 0xe0) == 0xc0) {
        n = 2, min = 0x80, cp = p[0] & 0x1f;
    } else if ((p[0] & 0xf0) == 0xe0) {
        n = 3, min = 0x800, cp = p[0] & 0x0f;
    } else if ((p[0] & 0xf8) == 0xf0) {
        n = 4, min = 0x10000, cp = p[0] & 0x07;
    } else {
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (p[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

/* A JSON string; bytes that are not UTF-8 become '?'. */
static void opt_json_str(FILE *out, const char *s)
{
    fputc('"', out);
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0';) {
        size_t n = opt_utf8_len(p);
        if (n == 0) {
            fputc('?', out);
            p++;
        } else if (n > 1) {
            fwrite(p, 1, n, out);
            p += n;
        } else {
            if (*p == '"' || *p == '\\')
                fprintf(out, "\\%c", *p);
            else if (*p < 0x20 || *p == 0x7f)
                fprintf(out, "\\u%04x", *p);
            else
                fputc(*p, out);
            p++;
        }
    }
    fputc('"', out);
}

/* True when s has no default and its field holds the unset value. */
static bool opt_unset(const opt_spec *s, const void *cfg)
{
    const void *f = opt_cfield(s, cfg);
    if (s->def != NULL || s->type == OPT_FLAG || s->type == OPT_ENUM)
        return false;
    switch (s->type) {
    case OPT_STRING:
    case OPT_CHOICE:
        return *(const char *)f == '\0';
    case OPT_INT:
        return *(const int *)f == 0;
    case OPT_UINT:
    case OPT_MODE:
        return *(const unsigned *)f == 0;
    case OPT_INT64:
        return *(const int64_t *)f == 0;
    case OPT_UINT64:
    case OPT_SIZE:
        return *(const uint64_t *)f == 0;
    case OPT_DOUBLE:
        return *(const double *)f == 0.0;
    default:
        return false;
    }
}

char *opt_json(const opt_table *t, const void *cfg)
{
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    if (out == NULL)
        return NULL;
    fputc('{', out);
    for (size_t i = 0; i < t->n; i++) {
        const opt_spec *s = &t->specs[i];
        const void *f = opt_cfield(s, cfg);
        char buf[1024];
        if (i > 0)
            fputc(',', out);
        opt_json_str(out, s->name);
        fputc(':', out);
        if (opt_unset(s, cfg)) {
            fputs("null", out);
            continue;
        }
        switch (s->type) {
        case OPT_SIZE:
            fprintf(out, "%llu", (unsigned long long)*(const uint64_t *)f);
            break;
        case OPT_DOUBLE:
            /* "800.0", not "800": a reader typed by the text gets a real. */
            fputs(opt_show(s, cfg, buf, sizeof(buf)), out);
            if (strpbrk(buf, ".eE") == NULL)
                fputs(".0", out);
            break;
        case OPT_INT:
        case OPT_UINT:
        case OPT_INT64:
        case OPT_UINT64:
        case OPT_FLAG:
            fputs(opt_show(s, cfg, buf, sizeof(buf)), out);
            break;
        default:
            opt_json_str(out, opt_show(s, cfg, buf, sizeof(buf)));
            break;
        }
    }
    fputc('}', out);
    if (ferror(out)) {
        fclose(out);
        free(text);
        return NULL;
    }
    if (fclose(out) != 0) {
        free(text);
        return NULL;
    }
    return text;
}

/* ---- table check -------------------------------------------------------- */

static int opt_check_fail(FILE *err, const opt_spec *s, const char *why)
{
    fprintf(err, "option table: --%s: %s\n", s->name ? s->name : "(null)", why);
    return -1;
}

int opt_check(const opt_table *t, FILE *err)
{
    for (size_t i = 0; i < t->n; i++) {
        const opt_spec *s = &t->specs[i];
        if (s->name == NULL || s->name[0] == '\0' || strchr(s->name, '=') != NULL)
            return opt_check_fail(err, s, "no name, or one with '='");
        for (size_t k = 0; k < i; k++)
            if (strcmp(t->specs[k].name, s->name) == 0)
                return opt_check_fail(err, s, "named twice");
        if (!strcmp(s->name, "help") || !strcmp(s->name, "version") ||
            !strcmp(s->name, "help-markdown"))
            return opt_check_fail(err, s, "a built-in name");
        if (s->group == NULL || s->help == NULL || s->help[0] == '\0')
            return opt_check_fail(err, s, "no group or help text");
        if ((s->arg == NULL) != (s->type == OPT_FLAG))
            return opt_check_fail(err, s, "a value name iff it takes a value");
        if (s->type == OPT_FLAG && (s->env != NULL || s->def != NULL))
            return opt_check_fail(err, s, "a flag has no default or variable");
        if (s->type != OPT_FLAG && s->def == NULL && s->def_doc == NULL && s->env == NULL)
            return opt_check_fail(err, s, "no default, and no words for its absence");
        switch (s->type) {
        case OPT_INT:
        case OPT_UINT:
        case OPT_INT64:
        case OPT_MODE:
            if (s->min > s->max)
                return opt_check_fail(err, s, "min > max");
            break;
        case OPT_UINT64:
        case OPT_SIZE:
            if (s->umin > s->umax)
                return opt_check_fail(err, s, "umin > umax");
            break;
        case OPT_DOUBLE:
            if (!(s->dmin < s->dmax))
                return opt_check_fail(err, s, "dmin >= dmax");
            break;
        case OPT_ENUM:
        case OPT_CHOICE:
            if (s->names == NULL || s->names[0] == NULL)
                return opt_check_fail(err, s, "no names");
            for (size_t k = 0; s->names[k] != NULL; k++)
                if (s->type == OPT_CHOICE && strlen(s->names[k]) >= s->size)
                    return opt_check_fail(err, s, "a name longer than its buffer");
            break;
        case OPT_STRING:
            if (s->size < 2)
                return opt_check_fail(err, s, "buffer too small");
            break;
        case OPT_CUSTOM:
            if (s->set == NULL || s->show == NULL || s->expect == NULL)
                return opt_check_fail(err, s, "custom without set, show and expect");
            break;
        case OPT_FLAG:
            break;
        }
    }
    return 0;
}

/* ---- shared custom hooks ------------------------------------------------ */

int opt_log_level_set(const opt_spec *s, void *cfg, const char *val)
{
    log_level l;
    if (log_parse_level(val, &l) != 0)
        return -1;
    *(log_level *)((char *)cfg + s->off) = l;
    return 0;
}

const char *opt_log_level_show(const opt_spec *s, const void *cfg, char *buf, size_t len)
{
    snprintf(buf, len, "%s",
             log_level_name(*(const log_level *)((const char *)cfg + s->off)));
    return buf;
}
