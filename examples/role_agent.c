/*
 * role_agent - an example agent process: it plays one role (planner, critic,
 * coder ...) with that role's system prompt and asks the LLM a few questions
 * through lmsched, one at a time with lmsched_chat or all at once with
 * lmsched_chat_batch. scripts/demo runs several copies side by side; agents
 * of the same role share a system prompt, which is the prefix the LLM
 * server can keep cached between them.
 *
 * It prints one line per answer (timings from the scheduler, token counts
 * from the server, the start of the reply) and exits 0 when every question
 * got an answer, 1 when any failed, 2 on a usage error.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lmsched/agent.h"
/* Only for lmsched_err_name, the short error names lmsched uses everywhere
 * ("deadline", "no_daemon"); agent.h has just the long descriptions. */
#include "proto/proto.h"

/* Limits on what the command line may ask for; names appear in every
 * output line and in the daemon's logs. */
#define RA_MAX_NAME 64
#define RA_MAX_QUESTIONS 1000
#define RA_MAX_SYSTEM (4u << 20)
/* Characters of the reply shown per line. */
#define RA_EXCERPT_CHARS 40

typedef struct ra_opts {
    const char *agent;
    const char *role;
    const char *system;
    const char *system_file;
    const char *url;
    long questions;
    long max_tokens; /* -1: the daemon's or server's default */
    long timeout_ms; /* 0: the library default */
    bool batch;
} ra_opts;

static const char *const ra_topics[] = {
    "what is the first thing you do with a new task?",
    "name one mistake you watch for in your work.",
    "how do you know your part of the job is done?",
    "what do you need from the other agents to do your job well?",
    "describe your role in one sentence.",
};

static void ra_usage(FILE *out)
{
    fprintf(
        out,
        "usage: role_agent --agent NAME --role ROLE (--system TEXT | --system-file F)\n"
        "                  [--questions N] [--batch] [--max-tokens N] [--url URL]\n"
        "                  [--timeout MS]\n"
        "\n"
        "Asks N questions (default 3) through the lmsched daemon with the role's\n"
        "system prompt, one after another, or all at once with --batch.\n"
        "Exit status: 0 all answered, 1 some failed, 2 usage error.\n");
}

static int ra_parse_long(const char *flag, const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi) {
        fprintf(stderr, "role_agent: %s: expected an integer from %ld to %ld, got '%s'\n",
                flag, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* Returns 0 to run, 1 after --help, 2 on a usage error (already reported). */
static int ra_parse(int argc, char **argv, ra_opts *o)
{
    enum {
        OPT_AGENT = 256,
        OPT_ROLE,
        OPT_SYSTEM,
        OPT_SYSTEM_FILE,
        OPT_QUESTIONS,
        OPT_BATCH,
        OPT_MAX_TOKENS,
        OPT_URL,
        OPT_TIMEOUT,
    };
    static const struct option opts[] = {
        {"agent", required_argument, NULL, OPT_AGENT},
        {"role", required_argument, NULL, OPT_ROLE},
        {"system", required_argument, NULL, OPT_SYSTEM},
        {"system-file", required_argument, NULL, OPT_SYSTEM_FILE},
        {"questions", required_argument, NULL, OPT_QUESTIONS},
        {"batch", no_argument, NULL, OPT_BATCH},
        {"max-tokens", required_argument, NULL, OPT_MAX_TOKENS},
        {"url", required_argument, NULL, OPT_URL},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;
    *o = (ra_opts){.questions = 3, .max_tokens = -1};
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case OPT_AGENT:
            o->agent = optarg;
            break;
        case OPT_ROLE:
            o->role = optarg;
            break;
        case OPT_SYSTEM:
            o->system = optarg;
            break;
        case OPT_SYSTEM_FILE:
            o->system_file = optarg;
            break;
        case OPT_QUESTIONS:
            if (ra_parse_long("--questions", optarg, 1, RA_MAX_QUESTIONS,
                              &o->questions) != 0)
                return 2;
            break;
        case OPT_BATCH:
            o->batch = true;
            break;
        case OPT_MAX_TOKENS:
            if (ra_parse_long("--max-tokens", optarg, 1, INT32_MAX, &o->max_tokens) != 0)
                return 2;
            break;
        case OPT_URL:
            o->url = optarg;
            break;
        case OPT_TIMEOUT:
            if (ra_parse_long("--timeout", optarg, 1, INT_MAX, &o->timeout_ms) != 0)
                return 2;
            break;
        case 'h':
            ra_usage(stdout);
            return 1;
        default:
            fprintf(stderr, "role_agent: %s '%s' (see --help)\n",
                    c == ':' ? "option needs a value" : "unknown option",
                    argv[optind - 1]);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "role_agent: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (o->agent == NULL || o->role == NULL) {
        fprintf(stderr, "role_agent: --agent and --role are required (see --help)\n");
        return 2;
    }
    if (strlen(o->agent) > RA_MAX_NAME || strlen(o->role) > RA_MAX_NAME) {
        fprintf(stderr, "role_agent: --agent and --role take at most %d bytes\n",
                RA_MAX_NAME);
        return 2;
    }
    if ((o->system == NULL) == (o->system_file == NULL)) {
        fprintf(stderr, "role_agent: give exactly one of --system and --system-file\n");
        return 2;
    }
    return 0;
}

/* Reads the system prompt file whole (*outp freed by the caller); it is sent
 * byte for byte, since any change would defeat the server's prefix cache. */
static int ra_read_file(const char *path, char **outp)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t n = 0;
    *outp = NULL;
    if (f == NULL)
        goto fail;
    buf = malloc(RA_MAX_SYSTEM + 1);
    if (buf == NULL)
        goto fail;
    n = fread(buf, 1, RA_MAX_SYSTEM + 1, f);
    if (ferror(f))
        goto fail;
    if (n > RA_MAX_SYSTEM) {
        errno = EFBIG;
        goto fail;
    }
    buf[n] = '\0';
    if (strlen(buf) != n) { /* a NUL byte would cut the prompt silently */
        errno = EILSEQ;
        goto fail;
    }
    fclose(f);
    *outp = buf;
    return 0;
fail:
    fprintf(stderr, "role_agent: cannot read the system prompt '%s': %s\n", path,
            strerror(errno));
    if (f != NULL)
        fclose(f);
    free(buf);
    return -1;
}

/* Builds question i (from 1): the role's system prompt and one user message.
 * Returns the request (freed by the caller) or NULL after reporting why. */
static lmsched_request *ra_question(const ra_opts *o, const char *system, long i)
{
    lmsched_request *req = NULL;
    char text[512];
    size_t ntopics = sizeof(ra_topics) / sizeof(ra_topics[0]);
    int rc;
    snprintf(text, sizeof(text), "Question %ld from %s: as the %s, %s", i, o->agent,
             o->role, ra_topics[(size_t)(i - 1) % ntopics]);
    if ((rc = lmsched_request_alloc(&req)) != LMSCHED_OK ||
        (rc = lmsched_request_set_system(req, system)) != LMSCHED_OK ||
        (rc = lmsched_request_add_message(req, "user", text)) != LMSCHED_OK ||
        (rc = lmsched_request_set_agent(req, o->agent)) != LMSCHED_OK)
        goto fail;
    if (o->max_tokens > 0 &&
        (rc = lmsched_request_set_max_tokens(req, (int32_t)o->max_tokens)) != LMSCHED_OK)
        goto fail;
    return req;
fail:
    fprintf(stderr, "role_agent: cannot build question %ld: %s\n", i,
            lmsched_strerror(rc));
    lmsched_request_free(req);
    return NULL;
}

/* The first RA_EXCERPT_CHARS characters of s on one line: line breaks and
 * other control characters become spaces, '"' becomes '\'', and "..." marks
 * a cut. */
static void ra_excerpt(char *buf, size_t len, const char *s)
{
    size_t n = 0, chars = 0;
    for (; s != NULL && *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        bool starts_char = (c & 0xC0) != 0x80;
        if (starts_char && chars == RA_EXCERPT_CHARS) {
            if (n + 3 < len) {
                memcpy(buf + n, "...", 3);
                n += 3;
            }
            break;
        }
        if (n + 1 >= len - 3) /* keep room for "..." */
            break;
        if (starts_char)
            chars++;
        buf[n++] = c < 0x20 || c == 0x7f ? ' ' : c == '"' ? '\'' : (char)c;
    }
    buf[n] = '\0';
}

/* Token counts are -1 when the server did not report them. */
static const char *ra_count(char *buf, size_t len, int64_t v)
{
    if (v < 0)
        snprintf(buf, len, "?");
    else
        snprintf(buf, len, "%lld", (long long)v);
    return buf;
}

/* Milliseconds, or "?" when the scheduler has no figure (a negative value:
 * ttft when no token arrived). */
static const char *ra_ms(char *buf, size_t len, double ms)
{
    if (ms < 0)
        snprintf(buf, len, "?");
    else
        snprintf(buf, len, "%.0fms", ms);
    return buf;
}

/* Prints the line for question i (res may be NULL when the call could not
 * even start: err says why). Returns true for an answer. The line is written
 * with one call and flushed, so lines of agents sharing a terminal or pipe
 * do not interleave. */
static bool ra_report(const ra_opts *o, long i, const lmsched_result *res, int err)
{
    char excerpt[RA_EXCERPT_CHARS * 4 + 8], prompt[32], cached[32];
    char queue[32], ttft[32], total[32];
    if (res != NULL)
        err = lmsched_result_error(res);
    else if (err == LMSCHED_OK)
        err = LMSCHED_EINTERNAL; /* an outcome the library did not deliver */
    if (err == LMSCHED_OK) {
        ra_excerpt(excerpt, sizeof(excerpt), lmsched_result_content(res));
        printf("%s role=%s q=%ld ok queue=%s ttft=%s total=%s prompt=%s cached=%s "
               "reply=\"%s\"\n",
               o->agent, o->role, i,
               ra_ms(queue, sizeof(queue), lmsched_result_queue_ms(res)),
               ra_ms(ttft, sizeof(ttft), lmsched_result_ttft_ms(res)),
               ra_ms(total, sizeof(total), lmsched_result_total_ms(res)),
               ra_count(prompt, sizeof(prompt), lmsched_result_prompt_tokens(res)),
               ra_count(cached, sizeof(cached), lmsched_result_cached_tokens(res)),
               excerpt);
    } else {
        const char *msg = res != NULL ? lmsched_result_message(res) : NULL;
        printf("%s role=%s q=%ld error=%s: %s\n", o->agent, o->role, i, lmsched_err_name(err),
               msg != NULL ? msg : lmsched_strerror(err));
    }
    fflush(stdout);
    return err == LMSCHED_OK;
}

int main(int argc, char **argv)
{
    ra_opts o;
    char *system_buf = NULL;
    lmsched_client *client = NULL;
    lmsched_request **reqs = NULL;
    lmsched_result **results = NULL;
    int code = 2, rc;

    switch (ra_parse(argc, argv, &o)) {
    case 0:
        break;
    case 1:
        return 0;
    default:
        return 2;
    }
    code = 1;
    if (o.system_file != NULL) {
        if (ra_read_file(o.system_file, &system_buf) != 0)
            goto out;
        o.system = system_buf;
    }
    if ((rc = lmsched_client_open(&client, o.url)) != LMSCHED_OK) {
        fprintf(stderr, "role_agent: cannot open the client: %s\n", lmsched_strerror(rc));
        code = rc == LMSCHED_EINVAL ? 2 : 1;
        goto out;
    }
    /* A short --timeout also bounds the wait for the daemon (2 s by default). */
    if (o.timeout_ms > 0 && o.timeout_ms < 2000)
        lmsched_client_set_connect_timeout(client, (int)o.timeout_ms);

    size_t n = (size_t)o.questions;
    reqs = calloc(n, sizeof(*reqs));
    results = calloc(n, sizeof(*results));
    if (reqs == NULL || results == NULL) {
        fprintf(stderr, "role_agent: out of memory\n");
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        if ((reqs[i] = ra_question(&o, o.system, (long)i + 1)) == NULL)
            goto out;

    bool all_ok = true;
    if (o.batch) {
        /* All questions at once: the scheduler queues them with every other
         * agent's and runs as many together as the memory budget allows. */
        rc = lmsched_chat_batch(client, (const lmsched_request *const *)reqs, n,
                                (int)o.timeout_ms, results);
        for (size_t i = 0; i < n; i++)
            all_ok &= ra_report(&o, (long)i + 1, results[i], rc != LMSCHED_OK ? rc : 0);
    } else {
        for (size_t i = 0; i < n; i++) {
            rc = lmsched_chat(client, reqs[i], (int)o.timeout_ms, &results[i]);
            all_ok &= ra_report(&o, (long)i + 1, results[i], rc);
        }
    }
    code = all_ok ? 0 : 1;
out:
    for (size_t i = 0; reqs != NULL && i < (size_t)o.questions; i++)
        lmsched_request_free(reqs[i]);
    for (size_t i = 0; results != NULL && i < (size_t)o.questions; i++)
        lmsched_result_free(results[i]);
    free(reqs);
    free(results);
    lmsched_client_close(client);
    free(system_buf);
    return code;
}
