/*
 * simschema - a JSON instance of a JSON schema, built by walking the schema
 * once: the first choice wherever there is a choice (enum, anyOf, a type
 * list), the smallest value the bounds allow, every declared property.
 */
#include "sim/schema.h"

#include <math.h>
#include <string.h>

#include "sim/engine.h"

typedef struct simschema_gen {
    uint64_t seed;
    unsigned words; /* strings generated so far: the next word's index */
    unsigned nodes; /* values generated so far */
    size_t bytes;   /* of strings and property names so far */
} simschema_gen;

/* Takes n bytes from the budget; false when they do not fit. */
static bool simschema_spend(simschema_gen *g, size_t n)
{
    if (n > SIMSCHEMA_MAX_BYTES - g->bytes)
        return false;
    g->bytes += n;
    return true;
}

static json_t *simschema_value(simschema_gen *g, const json_t *s, unsigned depth);

/* A number keyword, if present: true and *v set. */
static bool simschema_num(const json_t *s, const char *key, double *v)
{
    const json_t *n = json_object_get(s, key);
    if (!json_is_number(n))
        return false;
    *v = json_number_value(n);
    return true;
}

/* A non-negative integer keyword, or def. */
static json_int_t simschema_count(const json_t *s, const char *key, json_int_t def)
{
    const json_t *n = json_object_get(s, key);
    if (!json_is_integer(n) || json_integer_value(n) < 0)
        return def;
    return json_integer_value(n);
}

/* The schema's type: "type" (the first of a list), else what its keywords
 * imply, else NULL. */
static const char *simschema_type(const json_t *s)
{
    const json_t *t = json_object_get(s, "type");
    if (json_is_array(t))
        t = json_array_get(t, 0);
    if (json_is_string(t))
        return json_string_value(t);
    if (t != NULL)
        return NULL;
    if (json_is_object(json_object_get(s, "properties")))
        return "object";
    if (json_object_get(s, "items") != NULL)
        return "array";
    return NULL;
}

static json_t *simschema_string(simschema_gen *g, const json_t *s)
{
    static const struct {
        const char *format, *value;
    } formats[] = {
        {"date-time", "2024-01-01T00:00:00Z"},
        {"date", "2024-01-01"},
        {"time", "00:00:00Z"},
        {"uuid", "00000000-0000-4000-8000-000000000000"},
        {"email", "lmsim@example.com"},
        {"uri", "https://example.com/"},
        {"hostname", "example.com"},
        {"ipv4", "127.0.0.1"},
    };
    char buf[SIMSCHEMA_MAX_STRING + 1];
    size_t len = 0;
    const char *word = simeng_word(g->seed, g->words++);
    const char *format = json_string_value(json_object_get(s, "format"));
    for (size_t i = 0; format != NULL && i < sizeof formats / sizeof formats[0]; i++) {
        if (strcmp(format, formats[i].format) == 0)
            return json_string(formats[i].value);
    }
    /* The word without its trailing space, repeated up to minLength. */
    json_int_t min = simschema_count(s, "minLength", 0);
    json_int_t max = simschema_count(s, "maxLength", SIMSCHEMA_MAX_STRING);
    if (max > SIMSCHEMA_MAX_STRING)
        max = SIMSCHEMA_MAX_STRING;
    if (min > max)
        min = max;
    size_t want = (size_t)(min > 3 ? min : 3);
    if (want > (size_t)max)
        want = (size_t)max;
    while (len < want) {
        buf[len] = word[len % 3];
        len++;
    }
    if (!simschema_spend(g, len))
        return json_null();
    return json_stringn(buf, len);
}

static json_t *simschema_integer(const json_t *s)
{
    double v = 1, b;
    if (simschema_num(s, "minimum", &b))
        v = ceil(b);
    if (simschema_num(s, "exclusiveMinimum", &b) && v <= b)
        v = floor(b) + 1;
    if (simschema_num(s, "maximum", &b) && v > b)
        v = floor(b);
    if (simschema_num(s, "exclusiveMaximum", &b) && v >= b)
        v = ceil(b) - 1;
    json_int_t m = 0;
    const json_t *mo = json_object_get(s, "multipleOf");
    if (json_is_integer(mo) && (m = json_integer_value(mo)) > 0)
        v = ceil(v / (double)m) * (double)m;
    if (!(v > -9e15 && v < 9e15))
        v = 1;
    return json_integer((json_int_t)v);
}

static json_t *simschema_number(const json_t *s)
{
    double v = 1.5, b;
    if (simschema_num(s, "minimum", &b))
        v = b;
    if (simschema_num(s, "exclusiveMinimum", &b) && v <= b)
        v = b + 1;
    if (simschema_num(s, "maximum", &b) && v > b)
        v = b;
    if (simschema_num(s, "exclusiveMaximum", &b) && v >= b)
        v = b - 1;
    if (!isfinite(v))
        v = 1.5;
    return json_real(v);
}

static json_t *simschema_object(simschema_gen *g, const json_t *s, unsigned depth)
{
    json_t *o = json_object();
    const json_t *props = json_object_get(s, "properties");
    const json_t *req = json_object_get(s, "required");
    const char *key;
    json_t *sub;
    size_t i;
    if (!o)
        return NULL;
    if (json_is_object(props)) {
        /* json_object_foreach wants a non-const object; it does not change it. */
        json_object_foreach((json_t *)props, key, sub)
        {
            if (!simschema_spend(g, strlen(key)))
                return o;
            if (json_object_set_new(o, key, simschema_value(g, sub, depth + 1)) != 0)
                goto fail;
        }
    }
    /* A required name with no schema of its own accepts anything. */
    json_array_foreach((json_t *)req, i, sub)
    {
        if (!json_is_string(sub) || json_object_get(o, json_string_value(sub)) != NULL)
            continue;
        if (!simschema_spend(g, json_string_length(sub)))
            return o;
        if (json_object_set_new(o, json_string_value(sub), json_null()) != 0)
            goto fail;
    }
    return o;
fail:
    json_decref(o);
    return NULL;
}

static json_t *simschema_array(simschema_gen *g, const json_t *s, unsigned depth)
{
    json_t *a = json_array();
    const json_t *items = json_object_get(s, "items");
    json_int_t n = simschema_count(s, "minItems", 1);
    json_int_t max = simschema_count(s, "maxItems", SIMSCHEMA_MAX_ITEMS);
    if (!a)
        return NULL;
    if (n < 1)
        n = 1;
    if (n > max)
        n = max;
    if (n > (json_int_t)SIMSCHEMA_MAX_ITEMS)
        n = SIMSCHEMA_MAX_ITEMS;
    for (json_int_t i = 0; i < n; i++) {
        /* The old tuple form gives one schema per position. */
        const json_t *is =
            json_is_array(items) ? json_array_get(items, (size_t)i) : items;
        json_t *v = is != NULL ? simschema_value(g, is, depth + 1) : json_null();
        if (json_array_append_new(a, v) != 0) {
            json_decref(a);
            return NULL;
        }
    }
    return a;
}

static json_t *simschema_value(simschema_gen *g, const json_t *s, unsigned depth)
{
    static const char *const choices[] = {"anyOf", "oneOf", "allOf"};
    if (depth > SIMSCHEMA_MAX_DEPTH || g->nodes >= SIMSCHEMA_MAX_NODES ||
        !json_is_object(s))
        return json_null();
    g->nodes++;
    const json_t *v = json_object_get(s, "const");
    if (v != NULL)
        return json_deep_copy(v);
    v = json_object_get(s, "enum");
    if (json_is_array(v) && json_array_size(v) > 0)
        return json_deep_copy(json_array_get(v, 0));
    if (json_object_get(s, "$ref") != NULL)
        return json_null();
    for (size_t i = 0; i < sizeof choices / sizeof choices[0]; i++) {
        v = json_object_get(s, choices[i]);
        if (json_is_array(v) && json_array_size(v) > 0)
            return simschema_value(g, json_array_get(v, 0), depth + 1);
    }
    const char *type = simschema_type(s);
    if (type == NULL)
        return json_null();
    if (strcmp(type, "object") == 0)
        return simschema_object(g, s, depth);
    if (strcmp(type, "array") == 0)
        return simschema_array(g, s, depth);
    if (strcmp(type, "string") == 0)
        return simschema_string(g, s);
    if (strcmp(type, "integer") == 0)
        return simschema_integer(s);
    if (strcmp(type, "number") == 0)
        return simschema_number(s);
    if (strcmp(type, "boolean") == 0)
        return json_true();
    return json_null();
}

json_t *simschema_example(const json_t *schema, uint64_t seed)
{
    simschema_gen g = {.seed = seed};
    return simschema_value(&g, schema, 0);
}
