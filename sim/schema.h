/*
 * simschema - lmsim's schema-to-example generator: a small, deterministic
 * JSON instance of a JSON schema, for response_format json_schema answers
 * and tool call arguments. It covers the subset documented in
 * docs/simulator.md ("Tools, structured output, logprobs, reasoning");
 * what it does not know ($ref, unknown types) becomes null, never a crash.
 * A helper of sim/api.c, the other module that handles jansson values.
 */
#ifndef LMSIM_SCHEMA_H
#define LMSIM_SCHEMA_H

#include <jansson.h>
#include <stdint.h>

/* Nesting followed; deeper schemas give null. */
#define SIMSCHEMA_MAX_DEPTH 16u
/* Values generated for one schema at most; the rest are null. */
#define SIMSCHEMA_MAX_NODES 4096u
/* Items of one array at most, whatever minItems says. */
#define SIMSCHEMA_MAX_ITEMS 64u
/* Longest generated string (minLength is met up to this). */
#define SIMSCHEMA_MAX_STRING 1024u
/* Bytes of strings and property names in one example at most; past them
 * values are null and objects take no more properties. With the node
 * bound this keeps an example's text within about 1.2 MiB. */
#define SIMSCHEMA_MAX_BYTES (1024u * 1024u)

/* An instance of schema; seed picks the words of strings (simeng_word).
 * Returns a new reference the caller owns, or NULL on ENOMEM. Pure:
 * thread-safe, the same schema and seed give the same value. */
json_t *simschema_example(const json_t *schema, uint64_t seed);

#endif /* LMSIM_SCHEMA_H */
