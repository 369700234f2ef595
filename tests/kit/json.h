/*
 * json - reading the daemon's status and lmsim's /sim/stats by dotted path
 * ("memory.max_concurrent").
 *
 * Threads: any.
 */
#ifndef LMSCHED_KIT_JSON_H
#define LMSCHED_KIT_JSON_H

#include <stdint.h>

#include <jansson.h>

/* The value at a dotted path of objects (borrowed), or NULL. */
json_t *kit_json_get(const json_t *root, const char *path);

/* The integer at the path, or INT64_MIN if absent or not an integer. */
int64_t kit_json_int(const json_t *root, const char *path);

#endif
