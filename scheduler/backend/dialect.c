/*
 * dialect - the table of the LLM servers lmsched knows (see dialect.h).
 */
#include "scheduler/backend/dialect.h"

#include <stdio.h>
#include <string.h>

/* LM Studio 0.4's REST API: the loaded model, its context and "parallel". */
static const dialect d_lmstudio = {
    .name = "lmstudio",
    .probe_path = "/api/v1/models",
    .parse = oa_parse_lmstudio_models,
    .pins_slots = false,
};

/* llama.cpp's llama-server: slots and per-slot context from /props; it
 * takes id_slot, so requests go to the slot the policy chose; it tokenizes
 * a chat without a slot, so reservations can be exact. LM Studio's REST
 * API has no tokenize endpoint (its SDK counts over its websocket API). */
static const dialect d_llamacpp = {
    .name = "llamacpp",
    .probe_path = "/props",
    .parse = oa_parse_llamacpp_props,
    .pins_slots = true,
    .tokenizes = true,
};

/* Any OpenAI-compatible server: the model's name, nothing more. */
static const dialect d_openai = {
    .name = "openai",
    .probe_path = "/v1/models",
    .parse = oa_parse_openai_models,
    .pins_slots = false,
};

const dialect *const dialects[] = {&d_lmstudio, &d_llamacpp, &d_openai};
const size_t n_dialects = sizeof(dialects) / sizeof(dialects[0]);

const dialect *dialect_find(const char *name)
{
    for (size_t i = 0; i < n_dialects; i++)
        if (strcmp(dialects[i]->name, name) == 0)
            return dialects[i];
    return NULL;
}

const char *dialect_names(void)
{
    /* Built from the table once; the loop thread or start-up only. */
    static char buf[128];
    if (buf[0] == '\0') {
        size_t n = (size_t)snprintf(buf, sizeof(buf), "auto");
        for (size_t i = 0; i < n_dialects && n < sizeof(buf); i++)
            n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%s%s",
                                  i + 1 < n_dialects ? ", " : " or ", dialects[i]->name);
    }
    return buf;
}
