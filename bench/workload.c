/*
 * workload - generates lmbench's four workloads, deterministically from a
 * seed: English-like system prompts of given token sizes (lmsim counts 4
 * bytes per token), short user messages (20-60 tokens), and for `many` the
 * open-loop send times; and for each its "-tools" variant, in which every
 * role also sends tool definitions of its own. Also renders a request the
 * way lmsim does, which the optimum needs to know exactly which leading
 * tokens two prompts share.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "bench/bench.h"

/* ---- a small seeded generator ------------------------------------------ */

typedef struct bn_rng {
    uint64_t s;
} bn_rng;

/* splitmix64: tiny, fast, and the same sequence on every platform. */
static uint64_t bn_rng_next(bn_rng *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double bn_rng_unit(bn_rng *r)
{
    return (double)(bn_rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

static int bn_rng_range(bn_rng *r, int lo, int hi)
{
    return lo + (int)(bn_rng_next(r) % (uint64_t)(hi - lo + 1));
}

/* A stream of its own for every (workload, purpose, index), so changing one
 * workload's generation never shifts another's text. */
static bn_rng bn_rng_for(uint64_t seed, int kind, int purpose, int index)
{
    bn_rng r = {seed * 0x2545f4914f6cdd1dull + (uint64_t)kind * 1000003u +
                (uint64_t)purpose * 7919u + (uint64_t)index};
    bn_rng_next(&r);
    return r;
}

/* ---- text ---------------------------------------------------------------- */

static const char *const bn_words[] = {
    "the",      "agent",    "plan",     "review",    "code",     "test",     "design",
    "a",        "of",       "to",       "and",       "in",       "for",      "with",
    "every",    "change",   "module",   "interface", "error",    "report",   "team",
    "task",     "step",     "result",   "before",    "after",    "when",     "should",
    "must",     "never",    "always",   "clear",     "short",    "careful",  "check",
    "write",    "read",     "explain",  "decide",    "measure",  "compare",  "keep",
    "request",  "answer",   "question", "detail",    "risk",     "budget",   "memory",
    "queue",    "server",   "client",   "message",   "input",    "output",   "value",
    "function", "file",     "build",    "release",   "document", "note",     "list",
    "small",    "large",    "simple",   "complex",   "first",    "last",     "next",
    "each",     "other",    "same",     "new",       "old",      "good",     "bad",
    "fast",     "slow",     "safe",     "known",     "open",     "closed",   "shared",
    "user",     "system",   "model",    "prompt",    "context",  "token",    "cache",
    "because",  "while",    "unless",   "then",      "only",     "also",     "not",
    "is",       "are",      "was",      "be",        "has",      "have",     "can",
    "will",     "it",       "this",     "that",      "these",    "your",     "our",
    "priority", "deadline", "owner",    "version",   "protocol", "schedule", "limit",
};
#define BN_NWORDS (sizeof(bn_words) / sizeof(bn_words[0]))

typedef struct bn_buf {
    char *p;
    size_t len, cap;
} bn_buf;

static int bn_buf_add(bn_buf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (b->len + n + 1 > cap)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (p == NULL)
            return -1;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

static int bn_buf_str(bn_buf *b, const char *s)
{
    return bn_buf_add(b, s, strlen(s));
}

/* Appends sentences of 6-18 words until the text has at least min_bytes.
 * The result is English-shaped (capitals, periods), not English. */
static int bn_text(bn_buf *b, bn_rng *r, size_t min_bytes)
{
    while (b->len < min_bytes) {
        int n = bn_rng_range(r, 6, 18);
        for (int i = 0; i < n; i++) {
            const char *w = bn_words[bn_rng_next(r) % BN_NWORDS];
            char first[2] = {w[0], '\0'};
            if (i == 0 && first[0] >= 'a' && first[0] <= 'z')
                first[0] = (char)(first[0] - 'a' + 'A');
            if (bn_buf_str(b, first) != 0 || bn_buf_str(b, w + 1) != 0 ||
                bn_buf_str(b, i + 1 == n ? ". " : " ") != 0)
                return -1;
        }
    }
    return 0;
}

/* A system prompt of about `tokens` tokens, opening with the role's name so
 * two roles share no more than lmsim's ChatML header. */
static char *bn_system_prompt(bn_rng *r, const char *role, int tokens)
{
    bn_buf b = {0};
    char lead[160];
    snprintf(lead, sizeof(lead),
             "You are the %s of a team of software agents. Follow these rules. ", role);
    if (bn_buf_str(&b, lead) != 0 ||
        bn_text(&b, r, (size_t)tokens * BN_BYTES_PER_TOKEN) != 0)
        goto fail;
    return b.p;
fail:
    free(b.p);
    return NULL;
}

/* A user message of 20-60 tokens, led by a unique heading. */
static char *bn_user_message(bn_rng *r, const char *heading)
{
    bn_buf b = {0};
    int tokens = bn_rng_range(r, 20, 60);
    if (bn_buf_str(&b, heading) != 0 ||
        bn_text(&b, r, b.len + (size_t)tokens * BN_BYTES_PER_TOKEN) != 0)
        goto fail;
    /* bn_text leaves ". " at the end; a trailing space would look odd */
    if (b.len > 0 && b.p[b.len - 1] == ' ')
        b.p[--b.len] = '\0';
    return b.p;
fail:
    free(b.p);
    return NULL;
}

/* ---- workloads ----------------------------------------------------------- */

static const char *const bn_roles[] = {
    "planner",  "critic",    "coder",   "tester", "researcher", "writer",
    "reviewer", "architect", "analyst", "editor", "operator",   "librarian",
};

int bn_kind_parse(const char *name, bn_kind *kind)
{
    static const char *const names[] = {"rounds", "roles", "many", "chat", "mixed"};
    for (int i = 0; i < 5; i++)
        if (strcmp(name, names[i]) == 0) {
            *kind = (bn_kind)i;
            return 0;
        }
    return -1;
}

int bn_workload_parse(const char *name, bn_kind *kind, bool *tools)
{
    static const char suffix[] = "-tools";
    char base[32];
    size_t n = strlen(name), k = sizeof(suffix) - 1;
    *tools = n > k && strcmp(name + n - k, suffix) == 0;
    if (!*tools)
        return bn_kind_parse(name, kind);
    if (n - k >= sizeof(base))
        return -1;
    memcpy(base, name, n - k);
    base[n - k] = '\0';
    return bn_kind_parse(base, kind);
}

void bn_workload_reset(bn_workload *w)
{
    for (size_t i = 0; w != NULL && i < w->nreqs; i++) {
        bn_req *r = &w->reqs[i];
        free(r->render);
        free(r->reply);
        free(r->errmsg);
        free(r->toks);
        free(r->reply_toks);
        r->render = r->reply = r->errmsg = NULL;
        r->toks = r->reply_toks = NULL;
        r->render_len = r->ntoks = r->nreply_toks = 0;
        r->prompt_tokens = r->cached_tokens = -1;
        r->sent = false;
        r->err = 0;
        r->queue_ms = r->ttft_ms = r->total_ms = r->done_ms = r->sent_ms = 0;
    }
    if (w != NULL)
        w->tokenized = false;
}

void bn_workload_free(bn_workload *w)
{
    if (w == NULL)
        return;
    bn_workload_reset(w);
    for (size_t i = 0; i < w->nreqs; i++)
        free(w->reqs[i].user);
    for (int i = 0; i < w->nsystems; i++) {
        free(w->systems[i]);
        free(w->tools[i]);
    }
    free(w->reqs);
    free(w);
}

static int bn_scaled(int n, double scale)
{
    int v = (int)lround(n * scale);
    return v < 1 ? 1 : v;
}

int bn_workload_alloc(bn_workload **wp, bn_kind kind, uint64_t seed, double scale)
{
    bn_workload *w = calloc(1, sizeof(*w));
    /* Token sizes of the system prompts, per workload. */
    static const int rounds_sizes[6] = {1700, 1980, 2260, 2540, 2820, 3100};
    static const int roles_sizes[4] = {6000, 4000, 3000, 2000};
    static const int many_sizes[8] = {1200, 1430, 1660, 1890, 2110, 2340, 2570, 2800};
    static const int mixed_sizes[6] = {300, 1400, 1700, 2000, 2300, 500};
    const int *sizes = NULL;
    int agents_per_system = 1;
    *wp = NULL;
    if (w == NULL)
        goto fail;
    w->kind = kind;
    w->max_tokens = 24;
    switch (kind) {
    case BN_ROUNDS:
        w->name = "rounds";
        w->nagents = 12;
        w->nsystems = 6;
        sizes = rounds_sizes;
        agents_per_system = 2;
        w->per_agent = bn_scaled(6, scale);
        break;
    case BN_ROLES:
        w->name = "roles";
        w->nagents = 12;
        w->nsystems = 4;
        sizes = roles_sizes;
        agents_per_system = 3;
        w->per_agent = bn_scaled(10, scale);
        break;
    case BN_MANY:
        w->name = "many";
        w->nagents = 16;
        w->nsystems = 8;
        sizes = many_sizes;
        agents_per_system = 2;
        w->per_agent = bn_scaled(8, scale);
        /* One request per simulated second over all 16 agents: the 4 slots
         * keep up when requests of a prompt share its prefill, and fall
         * far behind when every request prefills its ~2,000-token prompt
         * (2.5 s of prefill each at lmsim's default 800 tokens/s). */
        w->mean_gap_sim_ms = 16000.0;
        break;
    case BN_CHAT:
        w->name = "chat";
        w->nagents = 8;
        w->nsystems = 1;
        w->per_agent = bn_scaled(8, scale);
        break;
    case BN_MIXED:
        /* 3 interactive conversations (system 0), 8 role agents over 4
         * roles (systems 1-4), 4 batch agents (system 5). */
        w->name = "mixed";
        w->nagents = 15;
        w->nsystems = 6;
        sizes = mixed_sizes;
        w->per_agent = bn_scaled(6, scale);
        break;
    }
    w->nclasses = 1;
    w->class_names[0] = w->name;
    w->class_mask = 1;
    if (kind == BN_MIXED) {
        w->nclasses = BN_MAX_CLASSES;
        w->class_names[BN_CLASS_INTERACTIVE] = "interactive";
        w->class_names[BN_CLASS_ROLES] = "roles";
        w->class_names[BN_CLASS_BATCH] = "batch";
        w->class_mask = (1u << BN_MAX_CLASSES) - 1;
        for (int a = 0; a < w->nagents; a++)
            w->agent_class[a] = a < 3    ? BN_CLASS_INTERACTIVE
                                : a < 11 ? BN_CLASS_ROLES
                                         : BN_CLASS_BATCH;
    }
    /* Cache items: a conversation per agent for chat and the interactive
     * agents, a system prompt otherwise. */
    w->nitems = kind == BN_CHAT ? w->nagents : kind == BN_MIXED ? 3 + 5 : w->nsystems;

    for (int s = 0; s < w->nsystems; s++) {
        bn_rng r = bn_rng_for(seed, (int)kind, 1, s);
        if (kind == BN_CHAT)
            w->systems[s] = bn_system_prompt(&r, "assistant", 120);
        else if (kind == BN_MIXED)
            w->systems[s] = bn_system_prompt(
                &r, s == 0 ? "assistant" : s == 5 ? "summarizer" : bn_roles[s - 1], sizes[s]);
        else
            w->systems[s] = bn_system_prompt(&r, bn_roles[s], sizes[s]);
        if (w->systems[s] == NULL)
            goto fail;
    }

    w->nreqs = (size_t)w->nagents * (size_t)w->per_agent;
    w->reqs = calloc(w->nreqs, sizeof(*w->reqs));
    if (w->reqs == NULL)
        goto fail;
    for (int a = 0; a < w->nagents; a++) {
        bn_rng r = bn_rng_for(seed, (int)kind, 2, a);
        int system = kind == BN_CHAT ? 0 : a / agents_per_system;
        int cls = w->agent_class[a];
        const char *role = kind == BN_CHAT    ? "assistant"
                           : kind == BN_MIXED ? ""
                                              : bn_roles[system];
        const char *what = kind == BN_ROUNDS ? "round" : kind == BN_CHAT ? "turn" : "request";
        if (kind == BN_MIXED) {
            system = cls == BN_CLASS_INTERACTIVE ? 0
                     : cls == BN_CLASS_ROLES     ? 1 + (a - 3) / 2
                                                 : 5;
            role = system == 0 ? "assistant" : system == 5 ? "summarizer" : bn_roles[system - 1];
            what = cls == BN_CLASS_INTERACTIVE ? "turn"
                   : cls == BN_CLASS_ROLES     ? "round"
                                               : "document";
        }
        double t = 0;
        for (int j = 0; j < w->per_agent; j++) {
            bn_req *q = &w->reqs[(size_t)a * (size_t)w->per_agent + (size_t)j];
            char heading[128];
            q->agent = a;
            q->seq = j;
            q->system = system;
            q->item = kind == BN_CHAT ? a : system;
            q->group = j;
            q->cls = cls;
            q->priority = -1;
            q->conv = kind == BN_CHAT;
            if (kind == BN_MANY) {
                /* Exponential gaps; the first request also waits one gap so
                 * the agents do not all start at t = 0. */
                t += -log(1.0 - bn_rng_unit(&r)) * w->mean_gap_sim_ms;
                q->arrival_sim_ms = t;
                q->group = (int)(t / w->mean_gap_sim_ms);
            }
            if (kind == BN_MIXED) {
                static const int prio[BN_MAX_CLASSES] = {8, 5, 1};
                q->priority = prio[cls];
                /* Items: the 3 conversations, then the 4 roles and the
                 * batch's prompt. */
                q->item = cls == BN_CLASS_INTERACTIVE ? a : 2 + system;
                if (cls == BN_CLASS_INTERACTIVE) {
                    /* A user reads the answer and types: 3 simulated s on
                     * average; the conversations start 0.5 s apart. */
                    q->conv = true;
                    q->think_sim_ms = j == 0 ? 500.0 * (a + 1)
                                             : -log(1.0 - bn_rng_unit(&r)) * 3000.0;
                }
            }
            snprintf(heading, sizeof(heading), "Agent %d (%s), %s %d: ", a + 1, role, what,
                     j + 1);
            if (kind == BN_MIXED && cls == BN_CLASS_BATCH) {
                /* A document of 300-700 tokens to summarize. */
                bn_buf b = {0};
                if (bn_buf_str(&b, heading) != 0 ||
                    bn_text(&b, &r, (size_t)bn_rng_range(&r, 300, 700) * BN_BYTES_PER_TOKEN) !=
                        0) {
                    free(b.p);
                    goto fail;
                }
                if (b.len > 0 && b.p[b.len - 1] == ' ')
                    b.p[--b.len] = '\0';
                q->user = b.p;
                continue;
            }
            if ((q->user = bn_user_message(&r, heading)) == NULL)
                goto fail;
        }
    }
    *wp = w;
    return 0;
fail:
    bn_workload_free(w);
    return -1;
}

int bn_workload_classes(bn_workload *w, const char *list)
{
    char buf[128];
    unsigned mask = 0;
    if (snprintf(buf, sizeof(buf), "%s", list) >= (int)sizeof(buf))
        return -1;
    for (char *save = NULL, *c = strtok_r(buf, ",", &save); c != NULL;
         c = strtok_r(NULL, ",", &save)) {
        int k = 0;
        while (k < w->nclasses && strcmp(c, w->class_names[k]) != 0)
            k++;
        if (k == w->nclasses)
            return -1;
        mask |= 1u << k;
    }
    if (mask == 0)
        return -1;
    w->class_mask = mask;
    return 0;
}

/* ---- tools --------------------------------------------------------------- */

/* What each role's tools are called (after the role's name, so no user
 * message, which never holds an underscore, names one and makes lmsim call
 * it) and the parameter each takes. */
static const char *const bn_tool_verbs[][2] = {
    {"search", "query"},   {"read_file", "path"},    {"write_note", "text"},
    {"run_check", "name"}, {"list_items", "filter"}, {"ask_owner", "question"},
};
#define BN_NTOOLS (sizeof(bn_tool_verbs) / sizeof(bn_tool_verbs[0]))

/* One sentence or more of description, at least min_bytes. */
static json_t *bn_json_text(bn_rng *r, size_t min_bytes)
{
    bn_buf b = {0};
    json_t *s = NULL;
    if (bn_text(&b, r, min_bytes) == 0) {
        if (b.len > 0 && b.p[b.len - 1] == ' ')
            b.p[--b.len] = '\0';
        s = json_string(b.p);
    }
    free(b.p);
    return s;
}

/* A role's tool definitions, OpenAI's shape, of about `tokens` tokens as
 * JSON text dumped the way lmsim (and the daemon's prefix chain) dump it. */
static char *bn_role_tools(bn_rng *r, const char *role, int tokens)
{
    json_t *arr = json_array();
    char *text = NULL;
    size_t per = (size_t)tokens * BN_BYTES_PER_TOKEN / BN_NTOOLS;
    if (arr == NULL)
        return NULL;
    for (size_t i = 0; i < BN_NTOOLS; i++) {
        char name[96];
        snprintf(name, sizeof(name), "%s_%s", role, bn_tool_verbs[i][0]);
        json_t *t = json_pack(
            "{s:s,s:{s:s,s:o,s:{s:s,s:{s:{s:s,s:o},s:{s:s,s:i,s:i}},s:[s]}}}", "type",
            "function", "function", "name", name, "description", bn_json_text(r, per / 2),
            "parameters", "type", "object", "properties", bn_tool_verbs[i][1], "type",
            "string", "description", bn_json_text(r, per / 4), "limit", "type", "integer",
            "minimum", 1, "maximum", 100, "required", bn_tool_verbs[i][1]);
        if (t == NULL || json_array_append_new(arr, t) != 0)
            goto out;
    }
    text = json_dumps(arr, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17));
out:
    json_decref(arr);
    return text;
}

int bn_workload_add_tools(bn_workload *w, uint64_t seed, int tokens)
{
    static const char *const names[] = {"rounds-tools", "roles-tools", "many-tools",
                                        "chat-tools", "mixed-tools"};
    for (int s = 0; s < w->nsystems; s++) {
        bn_rng r = bn_rng_for(seed, (int)w->kind, 3, s);
        free(w->tools[s]);
        const char *role = w->kind == BN_CHAT ? "assistant" : bn_roles[s];
        if (w->kind == BN_MIXED)
            role = s == 0 ? "assistant" : s == 5 ? "summarizer" : bn_roles[s - 1];
        w->tools[s] = bn_role_tools(&r, role, tokens);
        if (w->tools[s] == NULL)
            return -1;
    }
    w->name = names[w->kind];
    return 0;
}

/* ---- messages and rendering ---------------------------------------------- */

int bn_request_messages(const bn_workload *w, size_t i, bn_msg **msgsp)
{
    const bn_req *q = &w->reqs[i];
    size_t first = i - (size_t)q->seq; /* the agent's first request */
    int n = 0;
    bn_msg *m = calloc(2 * (size_t)q->seq + 1, sizeof(*m));
    *msgsp = NULL;
    if (m == NULL)
        return -1;
    if (q->conv) {
        for (size_t t = first; t < i; t++) {
            m[n++] = (bn_msg){"user", w->reqs[t].user};
            m[n++] = (bn_msg){"assistant", w->reqs[t].reply ? w->reqs[t].reply : ""};
        }
    }
    m[n++] = (bn_msg){"user", q->user};
    *msgsp = m;
    return n;
}

/* lmsim's rendering: "<|im_start|>{role}\n{content}<|im_end|>\n" per message,
 * the system prompt first, then the generation prompt. */
static int bn_render_msg(bn_buf *b, const char *role, const char *content)
{
    return bn_buf_str(b, "<|im_start|>") != 0 || bn_buf_str(b, role) != 0 ||
                   bn_buf_str(b, "\n") != 0 || bn_buf_str(b, content) != 0 ||
                   bn_buf_str(b, "<|im_end|>\n") != 0
               ? -1
               : 0;
}

int bn_request_render(bn_workload *w, size_t i)
{
    bn_req *q = &w->reqs[i];
    bn_buf b = {0};
    bn_msg *m = NULL;
    int n = bn_request_messages(w, i, &m);
    if (n < 0)
        goto fail;
    /* The daemon leaves out an empty system prompt; ours never are. The
     * tools follow the system prompt in its block (docs/simulator.md). */
    const char *tools = w->tools[q->system];
    if (bn_buf_str(&b, "<|im_start|>system\n") != 0 ||
        bn_buf_str(&b, w->systems[q->system]) != 0 ||
        (tools != NULL && (bn_buf_str(&b, "\n\n# Tools\n") != 0 ||
                           bn_buf_str(&b, tools) != 0 || bn_buf_str(&b, "\n") != 0)) ||
        bn_buf_str(&b, "<|im_end|>\n") != 0)
        goto fail;
    for (int k = 0; k < n; k++)
        if (bn_render_msg(&b, m[k].role, m[k].content) != 0)
            goto fail;
    if (bn_buf_str(&b, "<|im_start|>assistant\n") != 0)
        goto fail;
    free(m);
    free(q->render);
    q->render = b.p;
    q->render_len = b.len;
    return 0;
fail:
    free(m);
    free(b.p);
    return -1;
}
