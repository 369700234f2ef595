/*
 * json - msgpack values <-> JSON text for the wire's JSON fields (see
 * json.h).
 *
 * Design notes: the decoder's structural pre-check has already bounded
 * the depth (16) and the number of values, so the recursion here is
 * bounded too. The text is written by jansson with the flags every side of
 * lmsched uses (compact, keys in order, 17 significant digits), so the
 * daemon, lmsim and the prefix chains see the same bytes.
 */
#include "proto/json.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#define LMSJ_FLAGS (JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17))

static json_t *lmsj_value(const msgpack_object *o, char *why, size_t why_len, int *err);

static json_t *lmsj_fail(char *why, size_t why_len, int *err, int code, const char *fmt,
                         const char *arg)
{
    if (*err == 0) {
        *err = code;
        snprintf(why, why_len, fmt, arg);
    }
    return NULL;
}

static json_t *lmsj_string(const char *p, size_t n, char *why, size_t why_len, int *err)
{
    if (n > 0 && memchr(p, '\0', n) != NULL)
        return lmsj_fail(why, why_len, err, -1, "%s", "a string holds a NUL byte");
    json_t *s = json_stringn(p, n); /* NULL also for invalid UTF-8 */
    if (s == NULL)
        return lmsj_fail(why, why_len, err, -1, "%s", "a string is not valid UTF-8");
    return s;
}

static json_t *lmsj_value(const msgpack_object *o, char *why, size_t why_len, int *err)
{
    json_t *v = NULL;
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        return json_null();
    case MSGPACK_OBJECT_BOOLEAN:
        return json_boolean(o->via.boolean);
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        if (o->via.u64 > (uint64_t)INT64_MAX)
            return lmsj_fail(why, why_len, err, -1, "%s",
                             "an integer is past the signed 64-bit range");
        return json_integer((json_int_t)o->via.u64);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return json_integer((json_int_t)o->via.i64);
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        if (!isfinite(o->via.f64))
            return lmsj_fail(why, why_len, err, -1, "%s",
                             "a number is not finite (JSON has no NaN or infinity)");
        return json_real(o->via.f64);
    case MSGPACK_OBJECT_STR:
        return lmsj_string(o->via.str.ptr, o->via.str.size, why, why_len, err);
    case MSGPACK_OBJECT_ARRAY:
        v = json_array();
        for (uint32_t i = 0; v != NULL && i < o->via.array.size; i++) {
            json_t *e = lmsj_value(&o->via.array.ptr[i], why, why_len, err);
            if (e == NULL || json_array_append_new(v, e) != 0) {
                json_decref(v);
                return NULL;
            }
        }
        return v;
    case MSGPACK_OBJECT_MAP:
        v = json_object();
        for (uint32_t i = 0; v != NULL && i < o->via.map.size; i++) {
            const msgpack_object_kv *kv = &o->via.map.ptr[i];
            if (kv->key.type != MSGPACK_OBJECT_STR) {
                json_decref(v);
                return lmsj_fail(why, why_len, err, -1, "%s", "a map key is not a string");
            }
            json_t *ks = lmsj_string(kv->key.via.str.ptr, kv->key.via.str.size, why, why_len,
                                     err);
            if (ks == NULL) {
                json_decref(v);
                return NULL;
            }
            char *key = strdup(json_string_value(ks));
            json_decref(ks);
            if (key == NULL) {
                json_decref(v);
                return NULL;
            }
            if (json_object_get(v, key) != NULL) {
                free(key);
                json_decref(v);
                return lmsj_fail(why, why_len, err, -1, "%s", "a map key is repeated");
            }
            json_t *e = lmsj_value(&kv->val, why, why_len, err);
            /* json_object_set_new takes e, also when it fails. */
            if (e == NULL || json_object_set_new(v, key, e) != 0) {
                free(key);
                json_decref(v);
                return NULL;
            }
            free(key);
        }
        return v;
    case MSGPACK_OBJECT_BIN:
        return lmsj_fail(why, why_len, err, -1, "%s", "binary values are not JSON");
    case MSGPACK_OBJECT_EXT:
        return lmsj_fail(why, why_len, err, -1, "%s", "extension values are not JSON");
    }
    return lmsj_fail(why, why_len, err, -1, "%s", "unknown msgpack type");
}

int lmsj_from_msgpack(const msgpack_object *o, char **out, char *why, size_t why_len)
{
    int err = 0;
    json_t *v = lmsj_value(o, why, why_len, &err);
    if (v == NULL) {
        if (err == 0) {
            snprintf(why, why_len, "out of memory");
            return -2;
        }
        return err;
    }
    *out = json_dumps(v, LMSJ_FLAGS | JSON_ENCODE_ANY);
    json_decref(v);
    if (*out == NULL) {
        snprintf(why, why_len, "out of memory");
        return -2;
    }
    return 0;
}

static int lmsj_pack_value(msgpack_packer *pk, const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_NULL:
        return msgpack_pack_nil(pk);
    case JSON_TRUE:
        return msgpack_pack_true(pk);
    case JSON_FALSE:
        return msgpack_pack_false(pk);
    case JSON_INTEGER:
        return msgpack_pack_int64(pk, (int64_t)json_integer_value(v));
    case JSON_REAL:
        return msgpack_pack_double(pk, json_real_value(v));
    case JSON_STRING:
        return msgpack_pack_str_with_body(pk, json_string_value(v), json_string_length(v));
    case JSON_ARRAY: {
        size_t n = json_array_size(v);
        if (msgpack_pack_array(pk, n) != 0)
            return -1;
        for (size_t i = 0; i < n; i++)
            if (lmsj_pack_value(pk, json_array_get(v, i)) != 0)
                return -1;
        return 0;
    }
    case JSON_OBJECT: {
        const char *key;
        json_t *e;
        if (msgpack_pack_map(pk, json_object_size(v)) != 0)
            return -1;
        json_object_foreach((json_t *)v, key, e)
        {
            if (msgpack_pack_str_with_body(pk, key, strlen(key)) != 0 ||
                lmsj_pack_value(pk, e) != 0)
                return -1;
        }
        return 0;
    }
    }
    return -1;
}

int lmsj_pack(msgpack_packer *pk, const char *json)
{
    json_t *v = json_loads(json, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, NULL);
    if (v == NULL)
        return -1;
    int rc = lmsj_pack_value(pk, v) == 0 ? 0 : -2;
    json_decref(v);
    return rc;
}

int lmsj_check(const char *json, char *why, size_t why_len)
{
    json_error_t e;
    json_t *v = json_loads(json, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &e);
    if (v == NULL) {
        snprintf(why, why_len, "invalid JSON at line %d column %d: %s", e.line, e.column,
                 e.text);
        return -1;
    }
    json_decref(v);
    return 0;
}
