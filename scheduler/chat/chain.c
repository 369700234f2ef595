/*
 * chain - renders a chat request the way the backend's chat template does
 * and cuts it into chained block hashes (see chain.h).
 *
 * Design notes: the rendering must match what the backend tokenizes, byte
 * for byte, or a prefix that is cached would look different here. The
 * daemon sends the system prompt as the first message only when it is
 * non-empty (openai.c), and lmsim renders each message as ChatML followed by
 * the generation prompt (sim/api.c); this file mirrors both, so against
 * lmsim the token estimate equals its prompt_tokens exactly. Real chat
 * templates differ in their markers, but only by a constant per message, so
 * what is shared between two prompts stays shared.
 *
 * Tools are rendered where templates put them, in the system block ahead of
 * the conversation ("# Tools" and the tools' JSON); a message's parts as
 * their text (an image as "<image>"), an assistant's tool calls after its
 * content. docs/protocol.md and docs/simulator.md state the same rules.
 */
#include "scheduler/chat/chain.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <xxhash.h>

#include "lmsched/wire.h"
#include "scheduler/util/strbuf.h"

static const char chain_im_start[] = "<|im_start|>";
static const char chain_im_end[] = "<|im_end|>\n";
static const char chain_gen[] = "<|im_start|>assistant\n";

#define CHAIN_JSON_FLAGS (JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17))

/* The request passed the wire limits (16 MiB a message), so nothing here
 * comes near this; it only keeps strbuf's arithmetic honest. */
#define CHAIN_MAX ((size_t)1 << 30)

static int chain_put(strbuf *b, const char *s)
{
    return strbuf_append(b, s, strlen(s), CHAIN_MAX);
}

/* A message's content as the template sees it: the text, or the parts'
 * text with "<image>" for each image. */
static int chain_content(strbuf *b, const chat_msg *m)
{
    if (m->content != NULL)
        return chain_put(b, m->content);
    if (m->parts_json == NULL)
        return 0;
    json_t *parts = json_loads(m->parts_json, 0, NULL);
    size_t i;
    json_t *p;
    int rc = 0;
    json_array_foreach(parts, i, p)
    {
        const char *type = json_string_value(json_object_get(p, "type"));
        const char *text = json_string_value(json_object_get(p, "text"));
        if (type != NULL && strcmp(type, "text") == 0 && text != NULL)
            rc = chain_put(b, text);
        else if (type != NULL && strcmp(type, "image_url") == 0)
            rc = chain_put(b, "<image>");
        if (rc != 0)
            break;
    }
    json_decref(parts);
    return rc;
}

/* An assistant's tool calls: "<tool_call>{"name":..,"arguments":..}</tool_call>". */
static int chain_tool_calls(strbuf *b, const chat_msg *m)
{
    if (m->tool_calls_json == NULL)
        return 0;
    json_t *calls = json_loads(m->tool_calls_json, 0, NULL);
    size_t i;
    json_t *c;
    int rc = 0;
    json_array_foreach(calls, i, c)
    {
        json_t *fn = json_object_get(c, "function");
        json_t *one = json_pack("{s:O?,s:O?}", "name", json_object_get(fn, "name"),
                                "arguments", json_object_get(fn, "arguments"));
        char *s = one != NULL ? json_dumps(one, CHAIN_JSON_FLAGS) : NULL;
        json_decref(one);
        rc = s == NULL ? STRBUF_ENOMEM : chain_put(b, "<tool_call>");
        if (rc == 0)
            rc = chain_put(b, s);
        if (rc == 0)
            rc = chain_put(b, "</tool_call>");
        free(s);
        if (rc != 0)
            break;
    }
    json_decref(calls);
    return rc;
}

static int chain_message(strbuf *b, const chat_msg *m)
{
    int rc = chain_put(b, chain_im_start);
    if (rc == 0)
        rc = chain_put(b, m->role);
    if (rc == 0)
        rc = chain_put(b, "\n");
    if (rc == 0)
        rc = chain_content(b, m);
    if (rc == 0)
        rc = chain_tool_calls(b, m);
    if (rc == 0)
        rc = chain_put(b, chain_im_end);
    return rc;
}

/* The system block: the system prompt, then the tools. None without
 * either. */
static int chain_system(strbuf *b, const chat_req *req)
{
    const char *sys = req->system != NULL ? req->system : "";
    if (sys[0] == '\0' && req->tools_json == NULL)
        return 0;
    int rc = chain_put(b, chain_im_start);
    if (rc == 0)
        rc = chain_put(b, "system\n");
    if (rc == 0)
        rc = chain_put(b, sys);
    if (rc == 0 && req->tools_json != NULL) {
        if (sys[0] != '\0')
            rc = chain_put(b, "\n\n");
        if (rc == 0)
            rc = chain_put(b, "# Tools\n");
        if (rc == 0)
            rc = chain_put(b, req->tools_json);
        if (rc == 0)
            rc = chain_put(b, "\n");
    }
    if (rc == 0)
        rc = chain_put(b, chain_im_end);
    return rc;
}

/* Ownership: c's blocks are owned by c afterwards (prefix_chain_fini), also
 * on failure (then empty). The request is only read. Any thread. Messages
 * with a NULL role are skipped, as the backend module refuses to send
 * them anyway. */
int prefix_chain_build(prefix_chain *c, const chat_req *req)
{
    strbuf b;
    int rv = LMSCHED_ENOMEM;

    memset(c, 0, sizeof(*c));
    strbuf_init(&b);
    if (chain_system(&b, req) != 0)
        goto out;
    /* The group is the system prompt alone: agents that share it belong
     * together even when their tools differ (then they share less). */
    const char *sys = req->system != NULL ? req->system : "";
    c->group = sys[0] != '\0' ? XXH3_64bits(sys, strlen(sys)) : 0;
    for (size_t i = 0; i < req->n_messages; i++) {
        if (req->messages[i].role != NULL && chain_message(&b, &req->messages[i]) != 0)
            goto out;
    }
    if (chain_put(&b, chain_gen) != 0)
        goto out;

    size_t len = b.len;
    size_t nb = len / PREFIX_BLOCK_BYTES;
    if (nb > UINT32_MAX)
        goto out;
    if (nb > 0) {
        c->blocks = malloc(nb * sizeof(*c->blocks));
        if (c->blocks == NULL)
            goto out;
    }
    /* Each block's hash is seeded with the previous one, so equal hashes at
     * block k mean equal bytes over the whole range [0, (k+1)*BLOCK). */
    uint64_t h = 0;
    for (size_t i = 0; i < nb; i++) {
        h = XXH3_64bits_withSeed(b.data + i * PREFIX_BLOCK_BYTES, PREFIX_BLOCK_BYTES, h);
        c->blocks[i] = h;
    }
    c->n_blocks = (uint32_t)nb;
    size_t tok = (len + PREFIX_BYTES_PER_TOKEN - 1) / PREFIX_BYTES_PER_TOKEN;
    c->tokens = tok > UINT32_MAX ? UINT32_MAX : (uint32_t)tok;
    c->bytes = len;
    rv = LMSCHED_OK;
out:
    strbuf_fini(&b);
    if (rv != LMSCHED_OK)
        prefix_chain_fini(c);
    return rv;
}

/* Accepts a zeroed or finied chain. */
void prefix_chain_fini(prefix_chain *c)
{
    if (c == NULL)
        return;
    free(c->blocks);
    memset(c, 0, sizeof(*c));
}
