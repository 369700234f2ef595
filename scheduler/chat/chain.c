/*
 * prefix - renders a chat request the way the backend's chat template does
 * and cuts it into chained block hashes (see prefix.h).
 *
 * Design notes: the rendering must match what the backend tokenizes, byte
 * for byte, or a prefix that is cached would look different here. The
 * daemon sends the system prompt as the first message only when it is
 * non-empty (openai.c), and lmsim renders each message as ChatML followed by
 * the generation prompt (sim/api.c); this file mirrors both, so against
 * lmsim the token estimate equals its prompt_tokens exactly. Real chat
 * templates differ in their markers, but only by a constant per message, so
 * what is shared between two prompts stays shared.
 */
#include "scheduler/chat/chain.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "lmsched/wire.h"

static const char prefix_im_start[] = "<|im_start|>";
static const char prefix_im_end[] = "<|im_end|>\n";
static const char prefix_gen[] = "<|im_start|>assistant\n";

static size_t prefix_msg_len(const char *role, const char *content)
{
    return strlen(prefix_im_start) + strlen(role) + 1 + strlen(content) +
           strlen(prefix_im_end);
}

/* Writes one rendered message at dst; returns the bytes written. */
static size_t prefix_msg_put(char *dst, const char *role, const char *content)
{
    size_t n = 0, l;

    l = strlen(prefix_im_start);
    memcpy(dst + n, prefix_im_start, l);
    n += l;
    l = strlen(role);
    memcpy(dst + n, role, l);
    n += l;
    dst[n++] = '\n';
    l = strlen(content);
    memcpy(dst + n, content, l);
    n += l;
    l = strlen(prefix_im_end);
    memcpy(dst + n, prefix_im_end, l);
    return n + l;
}

/* Ownership: c's blocks are owned by c afterwards (prefix_chain_fini), also
 * on failure (then empty). The request is only read. Any thread. Messages
 * with a NULL role or content are skipped, as the backend module refuses
 * to send them anyway. */
int prefix_chain_build(prefix_chain *c, const chat_req *req)
{
    char *buf = NULL;
    size_t len = 0, sys_len = 0, pos = 0;
    const char *sys = req->system != NULL ? req->system : "";
    bool have_sys = sys[0] != '\0';
    int rv;

    memset(c, 0, sizeof(*c));
    /* The request passed the wire limits (4 MiB of text), so these sums
     * cannot overflow size_t. */
    if (have_sys)
        sys_len = prefix_msg_len("system", sys);
    len = sys_len;
    for (size_t i = 0; i < req->n_messages; i++) {
        const chat_msg *m = &req->messages[i];
        if (m->role != NULL && m->content != NULL)
            len += prefix_msg_len(m->role, m->content);
    }
    len += strlen(prefix_gen);

    buf = malloc(len);
    if (buf == NULL) {
        rv = LMSCHED_ENOMEM;
        goto fail;
    }
    if (have_sys)
        pos += prefix_msg_put(buf + pos, "system", sys);
    for (size_t i = 0; i < req->n_messages; i++) {
        const chat_msg *m = &req->messages[i];
        if (m->role != NULL && m->content != NULL)
            pos += prefix_msg_put(buf + pos, m->role, m->content);
    }
    memcpy(buf + pos, prefix_gen, strlen(prefix_gen));

    size_t nb = len / PREFIX_BLOCK_BYTES;
    if (nb > UINT32_MAX) {
        rv = LMSCHED_ENOMEM;
        goto fail;
    }
    if (nb > 0) {
        c->blocks = malloc(nb * sizeof(*c->blocks));
        if (c->blocks == NULL) {
            rv = LMSCHED_ENOMEM;
            goto fail;
        }
    }
    /* Each block's hash is seeded with the previous one, so equal hashes at
     * block k mean equal bytes over the whole range [0, (k+1)*BLOCK). */
    uint64_t h = 0;
    for (size_t i = 0; i < nb; i++) {
        h = XXH3_64bits_withSeed(buf + i * PREFIX_BLOCK_BYTES, PREFIX_BLOCK_BYTES, h);
        c->blocks[i] = h;
    }
    c->n_blocks = (uint32_t)nb;
    size_t tok = (len + PREFIX_BYTES_PER_TOKEN - 1) / PREFIX_BYTES_PER_TOKEN;
    c->tokens = tok > UINT32_MAX ? UINT32_MAX : (uint32_t)tok;
    c->bytes = len;
    c->group = have_sys ? XXH3_64bits(buf, sys_len) : 0;
    free(buf);
    return LMSCHED_OK;
fail:
    free(buf);
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
