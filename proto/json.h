/*
 * json - the wire's JSON values: fields whose value is any JSON (tools,
 * tool_choice, response_format, message content parts, tool calls, the
 * extra body fields, logprobs) travel as native msgpack (maps, arrays,
 * strings, integers, floats, booleans, nil) and are handed to callers as
 * compact JSON text, so "JSON that arrives as a msgpack map goes out as the
 * same JSON": keys keep their order, integers stay integers, floats keep
 * every bit (17 significant digits). Pure conversion, no I/O; jansson does
 * the JSON side. proto.c's decoder and encoder use it; nothing else does.
 */
#ifndef LMSCHED_PROTO_JSON_H
#define LMSCHED_PROTO_JSON_H

#include <stddef.h>

#include <msgpack.h>

/* The JSON text of o (malloc'd, NUL-terminated) in *out. Refuses what JSON
 * cannot hold: binary and extension values, non-string map keys, integers
 * past the signed 64-bit range, NaN and infinities, strings that are not
 * UTF-8 or hold a NUL. Returns 0, or -1 with why (what and where, below
 * the field the caller names) filled, -2 on ENOMEM. */
int lmsj_from_msgpack(const msgpack_object *o, char **out, char *why, size_t why_len);

/* Packs JSON text as msgpack. Returns 0, -1 when json is not valid JSON
 * text (a scalar is valid), -2 on ENOMEM. */
int lmsj_pack(msgpack_packer *pk, const char *json);

/* Whether json is valid JSON text; why says where not. Returns 0 or -1. */
int lmsj_check(const char *json, char *why, size_t why_len);

#endif /* LMSCHED_PROTO_JSON_H */
