/*
 * opt - a program's options as one table. Each entry names a long option,
 * the field of the program's config struct it fills (by offsetof), its
 * type and range, its default, an optional environment variable, and its
 * help text. The same table then gives the defaults, strict getopt_long
 * parsing (one clear line and exit status 2 on a bad value), the --help
 * text, the Markdown option table of the docs, and a JSON dump of the
 * current values. `lmsched serve` (scheduler/core/config.c) and lmsim
 * (sim/config.c) are built on it.
 *
 * An entry, with the field-typing macros below:
 *
 *     {.name = "max-queue", .arg = "N", OPT_UINT_FIELD(sched_config, max_queue),
 *      .min = 1, .max = 1000000, .def = "1024", .group = "Queue and policy",
 *      .help = "queued requests before BUSY"},
 *
 * Nothing here allocates except opt_parse (the getopt table, freed before
 * it returns) and opt_json (its result). Not thread-safe: getopt_long has
 * global state; parse before starting threads.
 */
#ifndef LMSCHED_OPT_H
#define LMSCHED_OPT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "scheduler/util/log.h"

typedef enum opt_type {
    OPT_STRING, /* char buffer of .size bytes; a value must be non-empty and fit */
    OPT_INT,    /* int in [min, max] */
    OPT_UINT,   /* unsigned in [min, max] */
    OPT_INT64,  /* int64_t in [min, max] */
    OPT_UINT64, /* uint64_t in [umin, umax], decimal */
    OPT_SIZE,   /* uint64_t bytes in [umin, umax], with K/M/G/T suffixes */
    OPT_DOUBLE, /* double in [dmin, dmax]; OPT_MIN_OPEN/OPT_MAX_OPEN exclude a bound */
    OPT_MODE,   /* unsigned octal file mode in [min, max] with every .mask bit set */
    OPT_FLAG,   /* bool, no value: set true (false with OPT_CLEARS) when given */
    OPT_ENUM,   /* int: the index of the value in .names */
    OPT_CHOICE, /* char buffer of .size bytes holding one of .names */
    OPT_CUSTOM, /* .set parses and stores, .show prints the current value */
} opt_type;

/* opt_spec.flags */
#define OPT_MIN_OPEN 1u /* OPT_DOUBLE: dmin itself is not allowed */
#define OPT_MAX_OPEN 2u /* OPT_DOUBLE: dmax itself is not allowed */
#define OPT_CLEARS 4u   /* OPT_FLAG: the flag sets the field false ("--no-...") */

typedef struct opt_spec opt_spec;

/* OPT_CUSTOM hooks. set parses val and stores it in cfg (the whole config
 * struct, for options that fill more than one field); returns 0 or -1, and
 * opt words the error from .expect. show writes the current value as text
 * into buf and returns buf. */
typedef int opt_set_fn(const opt_spec *s, void *cfg, const char *val);
typedef const char *opt_show_fn(const opt_spec *s, const void *cfg, char *buf,
                                size_t len);

struct opt_spec {
    const char *name; /* long name without "--" */
    const char *arg;  /* the value's name in --help ("N"); NULL for OPT_FLAG */
    opt_type type;
    size_t off;               /* offsetof the field in the config struct */
    size_t size;              /* OPT_STRING, OPT_CHOICE: sizeof the buffer */
    long long min, max;       /* OPT_INT, OPT_UINT, OPT_INT64, OPT_MODE */
    uint64_t umin, umax;      /* OPT_UINT64, OPT_SIZE */
    double dmin, dmax;        /* OPT_DOUBLE */
    unsigned mask;            /* OPT_MODE: bits every value keeps */
    unsigned flags;           /* OPT_MIN_OPEN, OPT_MAX_OPEN, OPT_CLEARS */
    const char *const *names; /* OPT_ENUM, OPT_CHOICE: NULL-terminated */
    opt_set_fn *set;          /* OPT_CUSTOM */
    opt_show_fn *show;        /* OPT_CUSTOM */
    const char *def;          /* the default as the flag's value ("8M"); NULL: none */
    const char *def_doc;      /* the default in words when def is NULL */
    const char *env;          /* environment variable read when the flag is not given */
    const char *expect;       /* what "expected ..." says; NULL: from the type */
    const char *group;        /* section of --help and of the docs */
    const char *help;         /* --help text, without the default (added from def) */
    const char *doc;          /* the docs' text; NULL: help */
};

/* Field macros: the offset, and a compile error when the field does not
 * have the C type the option type writes. */
#define OPT_AT_(S, f, T) _Generic(((S *)0)->f, T : offsetof(S, f))
#define OPT_STRING_FIELD(S, f)                                                           \
    .type = OPT_STRING, .off = _Generic(((S *)0)->f + 0, char *: offsetof(S, f)),      \
    .size = sizeof(((S *)0)->f)
#define OPT_CHOICE_FIELD(S, f)                                                           \
    .type = OPT_CHOICE, .off = _Generic(((S *)0)->f + 0, char *: offsetof(S, f)),      \
    .size = sizeof(((S *)0)->f)
#define OPT_INT_FIELD(S, f) .type = OPT_INT, .off = OPT_AT_(S, f, int)
#define OPT_UINT_FIELD(S, f) .type = OPT_UINT, .off = OPT_AT_(S, f, unsigned)
#define OPT_INT64_FIELD(S, f) .type = OPT_INT64, .off = OPT_AT_(S, f, int64_t)
#define OPT_UINT64_FIELD(S, f) .type = OPT_UINT64, .off = OPT_AT_(S, f, uint64_t)
#define OPT_SIZE_FIELD(S, f) .type = OPT_SIZE, .off = OPT_AT_(S, f, uint64_t)
#define OPT_DOUBLE_FIELD(S, f) .type = OPT_DOUBLE, .off = OPT_AT_(S, f, double)
#define OPT_MODE_FIELD(S, f) .type = OPT_MODE, .off = OPT_AT_(S, f, unsigned)
#define OPT_FLAG_FIELD(S, f) .type = OPT_FLAG, .off = OPT_AT_(S, f, bool)
#define OPT_ENUM_FIELD(S, f) .type = OPT_ENUM, .off = OPT_AT_(S, f, int)
/* --log-level over a log_level field (scheduler/util/log.h). */
#define OPT_LOG_LEVEL_FIELD(S, f)                                                        \
    .type = OPT_CUSTOM, .off = OPT_AT_(S, f, log_level), .size = sizeof(log_level),      \
    .set = opt_log_level_set, .show = opt_log_level_show,                                \
    .expect = "error, warn, info or debug"
/* A custom option stores through its hooks; off and size describe the
 * field they write, for the shared hooks below. */
#define OPT_CUSTOM_FIELD(S, f)                                                           \
    .type = OPT_CUSTOM, .off = offsetof(S, f), .size = sizeof(((S *)0)->f)

/* A program's table and the text around it in --help. */
typedef struct opt_table {
    const char *prog;     /* starts every message: "lmsched serve", "lmsim" */
    const char *usage;    /* the top of --help, up to the options */
    const char *epilogue; /* after the options; NULL: none */
    const opt_spec *specs;
    size_t n;
} opt_table;

/* What opt_parse found. */
enum {
    OPT_ERROR = -1,   /* a usage error, already printed to err */
    OPT_RUN = 0,      /* cfg is filled; run */
    OPT_HELP = 1,     /* --help was given */
    OPT_VERSION = 2,  /* --version was given */
    OPT_MARKDOWN = 3, /* --help-markdown (hidden): print opt_markdown */
};

/* Stores every default (def) into cfg; fields without one are left as
 * they are (the caller zeroes the struct first). Returns 0, or -1 when a
 * def does not parse, a bug in the table that opt_check reports. */
int opt_defaults(const opt_table *t, void *cfg);

/* Parses argv (argv[0] is the program or subcommand) into cfg, which holds
 * the defaults: every value strictly, then the environment variable of each
 * option the command line did not give (an empty variable counts as unset).
 * given, when not NULL, has t->n entries and says which options the command
 * line gave. Messages go to err, one line each, starting with t->prog.
 * Returns OPT_RUN, OPT_HELP, OPT_VERSION, OPT_MARKDOWN or OPT_ERROR. Not
 * thread-safe (getopt_long); permutes argv. */
int opt_parse(const opt_table *t, void *cfg, int argc, char **argv, bool *given,
              FILE *err);

/* Parses one value for s into cfg as "--name val" would; from names where
 * the value came from in the message ("--max-queue", "LMSCHED_BACKEND").
 * Returns 0, or -1 after printing the error to err. */
int opt_set(const opt_table *t, const opt_spec *s, void *cfg, const char *val,
            const char *from, FILE *err);

/* The entry named name (without "--"), or NULL. */
const opt_spec *opt_find(const opt_table *t, const char *name);

/* Writes the current value of s in cfg as the option would take it ("8M",
 * "0600", "info"; "" for an empty string; "true"/"false" for a flag, true
 * when the flag is in effect). Returns buf. */
const char *opt_show(const opt_spec *s, const void *cfg, char *buf, size_t len);

/* Writes the --help text: t->usage, the options by group with each one's
 * default, --help and --version, t->epilogue. */
void opt_usage(const opt_table *t, FILE *out);

/* Writes the options as Markdown, a table per group (flag, default,
 * accepted values, meaning), for the docs; tests compare it with them. */
void opt_markdown(const opt_table *t, FILE *out);

/* Returns a JSON object of option name -> current value: numbers for
 * numbers and sizes (bytes), true/false for flags (in effect or not),
 * strings for the rest; null for an option without a default that is
 * unset (0 or ""). One line, malloc'd: the caller frees it. NULL when out
 * of memory. */
char *opt_json(const opt_table *t, const void *cfg);

/* Checks the table itself: names unique and non-empty, a value name for
 * every option that takes one, ranges ordered, every def parses, every
 * option but a flag has a default or says what it is. Returns 0, or -1
 * after printing the first problem to err. For tests. */
int opt_check(const opt_table *t, FILE *err);

/* The OPT_CUSTOM hooks of OPT_LOG_LEVEL_FIELD: "error", "warn" (or
 * "warning"), "info", "debug". */
opt_set_fn opt_log_level_set;
opt_show_fn opt_log_level_show;

#endif /* LMSCHED_OPT_H */
