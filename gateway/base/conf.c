/* A table-driven JSON config loader: each module declares its keys once. */
#include "base/conf.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/body.h"

void gw_conf_ctx_init(gw_conf_ctx_t *cx, gw_arena_t *arena)
{
    memset(cx, 0, sizeof(*cx));
    cx->arena = arena;
}

void gw_conf_ctx_release(gw_conf_ctx_t *cx)
{
    free(cx->errors);
    cx->errors = NULL;
}

void gw_conf_error(gw_conf_ctx_t *cx, const char *path, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    size_t need = strlen(path) + strlen(msg) + 4;
    if (cx->errors_len + need > cx->errors_cap) {
        size_t cap = cx->errors_cap ? cx->errors_cap * 2 : 1024;
        while (cap < cx->errors_len + need) cap *= 2;
        char *e = realloc(cx->errors, cap);
        if (!e) return;
        cx->errors = e;
        cx->errors_cap = cap;
    }
    char *line = cx->errors + cx->errors_len;
    cx->errors_len +=
        (size_t)snprintf(line, cx->errors_cap - cx->errors_len, "%s: %s\n", path, msg);
    /* One line per error: a key or value from the config may hold a line break. */
    for (char *p = line; p < cx->errors + cx->errors_len - 1; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f) *p = '?';
    cx->nerrors++;
}

char *gw_conf_path_key(gw_conf_ctx_t *cx, const char *path, const char *key)
{
    size_t n = strlen(path) + strlen(key) + 2;
    char *p = gw_arena_alloc(cx->arena, n);
    if (p) snprintf(p, n, "%s.%s", path, key);
    return p ? p : "$";
}

char *gw_conf_path_index(gw_conf_ctx_t *cx, const char *path, size_t i)
{
    size_t n = strlen(path) + 24;
    char *p = gw_arena_alloc(cx->arena, n);
    if (p) snprintf(p, n, "%s[%zu]", path, i);
    return p ? p : "$";
}

static const char *type_name(const cJSON *n)
{
    if (cJSON_IsString(n)) return "a string";
    if (cJSON_IsNumber(n)) return "a number";
    if (cJSON_IsBool(n)) return "a boolean";
    if (cJSON_IsNull(n)) return "null";
    if (cJSON_IsArray(n)) return "an array";
    if (cJSON_IsObject(n)) return "an object";
    return "invalid";
}

/* "one of a, b or c", for an error: the table's names only, never the value given. */
static int load_enum(gw_conf_ctx_t *cx, const cJSON *n, const char *path, const gw_conf_key_t *k,
                     void *dst)
{
    if (cJSON_IsString(n))
        for (int i = 0; k->names[i]; i++)
            if (strcmp(k->names[i], n->valuestring) == 0) {
                *(int *)dst = i;
                return 0;
            }
    char list[256] = "";
    size_t len = 0;
    for (int i = 0; k->names[i] && len < sizeof(list); i++)
        len += (size_t)snprintf(list + len, sizeof(list) - len, "%s\"%s\"",
                                i == 0 ? "" : (k->names[i + 1] ? ", " : " or "), k->names[i]);
    gw_conf_error(cx, path, "must be %s%s", k->names[0] && k->names[1] ? "one of " : "",
                  k->names[0] ? list : "(no value is allowed)");
    return -1;
}

static int load_value(gw_conf_ctx_t *cx, const cJSON *n, const char *path, const gw_conf_key_t *k,
                      void *dst)
{
    switch (k->type) {
    case GW_CT_INT: {
        double d = n->valuedouble;
        /* Beyond 2^63 (1e300, an overflow to inf) a cast is undefined: out of bounds anyway. */
        int in64 = d > -0x1p63 && d < 0x1p63;
        if (!cJSON_IsNumber(n) || (in64 && d != (double)(int64_t)d)) {
            gw_conf_error(cx, path, "must be an integer, not %s", type_name(n));
            return -1;
        }
        if (!in64 || (int64_t)d < k->min || (int64_t)d > k->max) {
            gw_conf_error(cx, path, "must be between %lld and %lld%s%s%s", (long long)k->min,
                          (long long)k->max, k->note ? " (" : "", k->note ? k->note : "",
                          k->note ? ")" : "");
            return -1;
        }
        *(int64_t *)dst = (int64_t)d;
        return 0;
    }
    case GW_CT_BOOL:
        if (!cJSON_IsBool(n)) {
            gw_conf_error(cx, path, "must be true or false, not %s", type_name(n));
            return -1;
        }
        *(int *)dst = cJSON_IsTrue(n);
        return 0;
    case GW_CT_STR:
        if (!cJSON_IsString(n)) {
            gw_conf_error(cx, path, "must be a string, not %s", type_name(n));
            return -1;
        }
        if (k->max && (int64_t)strlen(n->valuestring) > k->max) {
            gw_conf_error(cx, path, "must be at most %lld characters", (long long)k->max);
            return -1;
        }
        if (n->valuestring[0] == '\0') {
            gw_conf_error(cx, path, "must not be empty");
            return -1;
        }
        *(char **)dst = gw_arena_strdup(cx->arena, n->valuestring);
        return 0;
    case GW_CT_STRS:
    case GW_CT_OBJS: {
        if (!cJSON_IsArray(n)) {
            gw_conf_error(cx, path, "must be an array, not %s", type_name(n));
            return -1;
        }
        size_t count = (size_t)cJSON_GetArraySize(n);
        if ((int64_t)count < k->min || (k->max && (int64_t)count > k->max)) {
            gw_conf_error(cx, path, "must have between %lld and %lld entries", (long long)k->min,
                          (long long)(k->max ? k->max : 1000000));
            return -1;
        }
        size_t item = k->type == GW_CT_STRS ? sizeof(char *) : k->obj->size;
        gw_conf_list_t *l = dst;
        l->n = count;
        l->items = count ? gw_arena_calloc(cx->arena, item * count) : NULL;
        int rc = 0;
        size_t i = 0;
        for (const cJSON *e = n->child; e; e = e->next, i++) {
            char *ip = gw_conf_path_index(cx, path, i);
            char *slot = (char *)l->items + i * item;
            if (k->type == GW_CT_STRS) {
                gw_conf_key_t sk = {.name = k->name, .type = GW_CT_STR};
                rc |= load_value(cx, e, ip, &sk, slot);
            } else {
                if (k->obj->init) k->obj->init(slot);
                rc |= gw_conf_load(cx, e, ip, k->obj, slot);
            }
        }
        return rc;
    }
    case GW_CT_OBJ:
        return gw_conf_load(cx, n, path, k->obj, dst);
    case GW_CT_FN:
        return k->fn(cx, n, path, dst);
    case GW_CT_ENUM:
        return load_enum(cx, n, path, k, dst);
    case GW_CT_NUM:
        if (!cJSON_IsNumber(n)) {
            gw_conf_error(cx, path, "must be a number, not %s", type_name(n));
            return -1;
        }
        if (!(n->valuedouble >= (double)k->min && n->valuedouble <= (double)k->max)) {
            gw_conf_error(cx, path, "must be between %lld and %lld%s%s%s", (long long)k->min,
                          (long long)k->max, k->note ? " (" : "", k->note ? k->note : "",
                          k->note ? ")" : "");
            return -1;
        }
        *(double *)dst = n->valuedouble;
        return 0;
    case GW_CT_JSON:
        *(const cJSON **)dst = n;
        return 0;
    }
    return -1;
}

static int load(gw_conf_ctx_t *cx, const cJSON *node, const char *path, const gw_conf_obj_t *obj,
                void *dst, int some)
{
    if (!cJSON_IsObject(node)) {
        gw_conf_error(cx, path, "must be an object, not %s", type_name(node));
        return -1;
    }
    int rc = 0;
    for (const cJSON *e = node->child; e; e = e->next) {
        int dup = 0;
        for (const cJSON *p = node->child; p != e && !dup; p = p->next)
            dup = strcmp(p->string, e->string) == 0;
        const gw_conf_key_t *k = obj->keys;
        while (k->name && strcmp(k->name, e->string) != 0) k++;
        int others =
            !k->name && (some || (obj->owned_elsewhere && obj->owned_elsewhere(e->string)));
        if (others && !dup) continue; /* not even its path in the config's memory */
        const char *kpath = gw_conf_path_key(cx, path, e->string);
        if (dup) {
            gw_conf_error(cx, kpath, "duplicate key");
            rc = -1;
        }
        if (others) continue;
        if (!k->name) {
            gw_conf_error(cx, kpath, "unknown key");
            rc = -1;
            continue;
        }
        if (load_value(cx, e, kpath, k, (char *)dst + k->offset) < 0) rc = -1;
    }
    for (const gw_conf_key_t *k = obj->keys; k->name; k++)
        if ((k->flags & GW_CK_REQUIRED) && !cJSON_GetObjectItemCaseSensitive(node, k->name)) {
            gw_conf_error(cx, gw_conf_path_key(cx, path, k->name), "is required");
            rc = -1;
        }
    return rc;
}

int gw_conf_load(gw_conf_ctx_t *cx, const cJSON *node, const char *path, const gw_conf_obj_t *obj,
                 void *dst)
{
    return load(cx, node, path, obj, dst, 0);
}

int gw_conf_load_some(gw_conf_ctx_t *cx, const cJSON *node, const char *path,
                      const gw_conf_obj_t *obj, void *dst)
{
    return load(cx, node, path, obj, dst, 1);
}

void *gw_conf_alloc(gw_conf_ctx_t *cx, size_t size)
{
    return gw_arena_calloc(cx->arena, size ? size : 1);
}

char *gw_conf_strdup(gw_conf_ctx_t *cx, const char *s)
{
    return s ? gw_arena_strdup(cx->arena, s) : NULL;
}

int gw_conf_on_release(gw_conf_ctx_t *cx, void (*fn)(void *), void *arg)
{
    return gw_arena_cleanup(cx->arena, fn, arg);
}

const cJSON *gw_conf_root(gw_conf_ctx_t *cx)
{
    return cx->root;
}

static const cJSON *tenants(gw_conf_ctx_t *cx)
{
    const cJSON *t = cx->root ? cJSON_GetObjectItemCaseSensitive(cx->root, "tenants") : NULL;
    return cJSON_IsArray(t) ? t : NULL;
}

size_t gw_conf_tenant_count(gw_conf_ctx_t *cx)
{
    const cJSON *t = tenants(cx);
    if (!t) return 0;
    /* counted once per list: a plugin may ask in its loop's condition */
    if (cx->count_list != t) {
        cx->count_list = t;
        cx->count = (size_t)cJSON_GetArraySize(t);
    }
    return cx->count;
}

const cJSON *gw_conf_tenant(gw_conf_ctx_t *cx, size_t i, const char **id, const char **path)
{
    const cJSON *t = tenants(cx), *e = t ? t->child : NULL;
    size_t k = 0;
    /* Plugins read the tenants in order: from the last one given, not from the first. */
    if (t && t == cx->tenant_list && cx->tenant_node && cx->tenant_index <= i) {
        e = cx->tenant_node;
        k = cx->tenant_index;
    }
    for (; e && k < i; k++) e = e->next;
    if (!e) return NULL;
    cx->tenant_list = t;
    cx->tenant_node = e;
    cx->tenant_index = i;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(e, "id");
    if (id) *id = cJSON_IsString(v) ? v->valuestring : NULL;
    if (path) *path = gw_conf_path_index(cx, "$.tenants", i);
    return cJSON_IsObject(e) ? e : NULL;
}

/* cJSON decodes \u0000 (and takes a raw NUL) into a NUL that ends its C string: "p\u0000x"
 * would be read as "p". Parsed from a copy where each becomes U+0001 instead, which
 * gw_conf_check_strings then refuses at its path. */
cJSON *gw_conf_parse(const char *text, size_t len, const char **end)
{
    char *copy = malloc(len ? len : 1);
    if (!copy) return NULL;
    memcpy(copy, text, len);
    for (size_t i = 0; i < len; i++) {
        if (copy[i] == '\0') copy[i] = '\x01';
        if (copy[i] != '\\' || i + 1 >= len) continue;
        /* an escape: the byte after the backslash is never one itself */
        if (len - i >= 6 && memcmp(copy + i + 1, "u0000", 5) == 0) copy[i + 5] = '1';
        i++;
    }
    const char *cend = NULL;
    cJSON *json = cJSON_ParseWithLengthOpts(copy, len, &cend, 0);
    if (end) *end = cend ? text + (cend - copy) : NULL;
    free(copy);
    return json;
}

/* Valid UTF-8 (RFC 3629: no overlong form, no surrogate) without a control character (below
 * 0x20, or 0x7f): a config string goes into metrics, JSON reports and log lines as it is. */
int gw_conf_string_ok(const char *s)
{
    size_t n = strlen(s);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) return 0;
    return gw_body_utf8_valid(s, n);
}

int gw_conf_check_strings(gw_conf_ctx_t *cx, const cJSON *node, const char *path)
{
    if (cJSON_IsString(node)) {
        if (gw_conf_string_ok(node->valuestring)) return 0;
        gw_conf_error(cx, path, "must be valid UTF-8 without control characters (nor \\u0000)");
        return -1;
    }
    int rc = 0;
    size_t i = 0;
    for (const cJSON *e = node->child; e; e = e->next, i++) {
        if (cJSON_IsObject(node) && !gw_conf_string_ok(e->string)) {
            /* named by its object: the key itself may not be printable */
            gw_conf_error(cx, path,
                          "has a key that is not valid UTF-8 or holds a control character");
            rc = -1;
            continue;
        }
        const char *sub = cJSON_IsObject(node) ? gw_conf_path_key(cx, path, e->string)
                                               : gw_conf_path_index(cx, path, i);
        if (gw_conf_check_strings(cx, e, sub) < 0) rc = -1;
    }
    return rc;
}
