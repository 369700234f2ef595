/*
 * dialect - the kinds of LLM server lmsched knows, in one table: how each
 * is recognised (the endpoint probed and the parser of its answer), and how
 * it is spoken to (whether it takes llama.cpp's "id_slot" and
 * "cache_prompt"). Everything else that differs between LM Studio,
 * llama.cpp and a plain OpenAI-compatible server is read from this table;
 * no other file names a kind.
 */
#ifndef LMSCHED_BACKEND_DIALECT_H
#define LMSCHED_BACKEND_DIALECT_H

#include <stdbool.h>
#include <stddef.h>

#include "scheduler/backend/openai.h"

typedef struct dialect {
    const char *name;       /* "lmstudio", "llamacpp", "openai" (--backend-kind) */
    const char *probe_path; /* what says this is one, and what it serves */
    /* Reads the probe's body. Returns LMSCHED_OK, LMSCHED_EINVAL when it
     * answers but serves no model yet (LM Studio with nothing loaded), or
     * LMSCHED_EBACKEND_STREAM when it is not this kind's answer. */
    int (*parse)(const char *body, size_t len, oa_model_info *out);
    bool pins_slots;        /* takes "id_slot": the scheduler places requests itself */
    bool tokenizes;         /* counts a chat's tokens: POST /apply-template, /tokenize */
} dialect;

/* The kinds in the order `auto` probes them. */
extern const dialect *const dialects[];
extern const size_t n_dialects;

/* The kind of this name, or NULL. */
const dialect *dialect_find(const char *name);

/* "auto", or the names of every kind, separated by ", " and " or " (for
 * messages); a static string. */
const char *dialect_names(void);

#endif /* LMSCHED_BACKEND_DIALECT_H */
