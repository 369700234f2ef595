/*
 * json - dotted paths into JSON documents (see json.h).
 */
#include "kit/json.h"

#include <stdio.h>
#include <string.h>

json_t *kit_json_get(const json_t *root, const char *path)
{
    char buf[256];
    json_t *cur = (json_t *)root;
    snprintf(buf, sizeof(buf), "%s", path);
    for (char *save = NULL, *tok = strtok_r(buf, ".", &save); tok != NULL && cur != NULL;
         tok = strtok_r(NULL, ".", &save))
        cur = json_object_get(cur, tok);
    return cur;
}

int64_t kit_json_int(const json_t *root, const char *path)
{
    const json_t *v = kit_json_get(root, path);
    return json_is_integer(v) ? (int64_t)json_integer_value(v) : INT64_MIN;
}
