/* The JSON the gateway reads from bodies, as pure functions of bytes: a request body's model and
 * stream, and an answer's usage. */
#include "body.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

static int json_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static int by_key(const void *a, const void *b)
{
    return strcmp((*(const cJSON *const *)a)->string, (*(const cJSON *const *)b)->string);
}

/* A key twice among an object's members. Sorted when there are many: a body of a few MiB can
 * hold a few hundred thousand keys, which compared pairwise would hold the worker for minutes. */
static int has_duplicate_key(gw_arena_t *arena, const cJSON *o)
{
    size_t n = 0;
    for (const cJSON *a = o->child; a; a = a->next) n++;
    const cJSON **v = n > 16 ? (arena ? gw_arena_alloc(arena, n * sizeof(*v))
                                      : malloc(n * sizeof(*v)))
                             : NULL;
    int dup = 0;
    if (n > 16 && !v) return 1; /* no memory to sort: refused rather than minutes pairwise */
    if (!v) { /* few keys: pairwise */
        for (const cJSON *a = o->child; a && !dup; a = a->next)
            for (const cJSON *b = a->next; b && !dup; b = b->next)
                dup = strcmp(a->string, b->string) == 0;
        return dup;
    }
    size_t i = 0;
    for (const cJSON *a = o->child; a; a = a->next) v[i++] = a;
    qsort(v, n, sizeof(*v), by_key);
    for (i = 1; i < n && !dup; i++) dup = strcmp(v[i - 1]->string, v[i]->string) == 0;
    if (!arena) free(v);
    return dup;
}

/* A key twice in any object of the value, at any depth (objects in arrays too): the backend's
 * parser may take the other one. cJSON bounds the depth (CJSON_NESTING_LIMIT), so does this. */
static int has_duplicate_key_deep(gw_arena_t *arena, const cJSON *v)
{
    if (cJSON_IsObject(v) && has_duplicate_key(arena, v)) return 1;
    for (const cJSON *c = v->child; c; c = c->next)
        if (c->child && has_duplicate_key_deep(arena, c)) return 1;
    return 0;
}

int gw_body_utf8_valid(const char *p, size_t len)
{
    const unsigned char *s = (const unsigned char *)p;
    size_t i = 0;
    while (i < len) {
        /* ASCII, eight bytes at a time: nearly every body is nearly all ASCII. */
        uint64_t w;
        while (len - i >= 8 && (memcpy(&w, s + i, 8), !(w & 0x8080808080808080ull)))
            i += 8;
        if (i == len) break;
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        /* Unicode's table 3-7 of well-formed sequences: the second byte's range depends on the
         * first (E0: no overlong, ED: no surrogate, F0: no overlong, F4: not past U+10FFFF). */
        size_t n;
        unsigned lo = 0x80, hi = 0xbf;
        if (c >= 0xc2 && c <= 0xdf) {
            n = 1;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2;
            if (c == 0xe0) lo = 0xa0;
            if (c == 0xed) hi = 0x9f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3;
            if (c == 0xf0) lo = 0x90;
            if (c == 0xf4) hi = 0x8f;
        } else {
            return 0; /* a continuation byte, C0, C1, or F5 and up */
        }
        if (len - i - 1 < n || s[i + 1] < lo || s[i + 1] > hi) return 0;
        for (size_t k = 2; k <= n; k++)
            if ((s[i + k] & 0xc0) != 0x80) return 0;
        i += n + 1;
    }
    return 1;
}

/* Is the character at p escaped: after an odd number of backslashes? */
static int escaped(const char *text, const char *p)
{
    size_t n = 0;
    while (p > text && *--p == '\\') n++;
    return n % 2;
}

/* A \u0000 escape anywhere. cJSON decodes it into a NUL that ends its C string, so a key
 * "model\u0000x" would be read here as "model" and routed on, while the backend sees another
 * key; the same for a model name. Refused whole: the gateway must read what the backend reads. */
static int has_nul_escape(const char *p, size_t len)
{
    if (memchr(p, '\0', len)) return 1; /* a raw NUL (never valid JSON, but cJSON takes it) */
    const char *end = p + len;
    for (const char *q = p; (q = memmem(q, (size_t)(end - q), "\\u0000", 6)); q += 6)
        if (!escaped(p, q)) return 1;
    return 0;
}

int gw_body_inspect(gw_arena_t *arena, const char *p, size_t len, gw_body_t *out)
{
    memset(out, 0, sizeof(*out));
    if (!gw_body_utf8_valid(p, len)) return GW_BODY_BAD_UTF8;
    const char *end = NULL;
    int over = 0;
    cJSON *json =
        len ? gw_json_parse_bounded(arena, p, len, &end, GW_BODY_PARSE_BUDGET(len), &over) : NULL;
    if (!json && over) return GW_BODY_TOO_LARGE;
    if (json && end)
        for (; end < p + len; end++)
            if (!json_ws(*end)) {
                cJSON_Delete(json);
                json = NULL;
                break;
            }
    out->json = json;
    if (!json || !cJSON_IsObject(json)) return GW_BODY_NOT_OBJECT;
    if (has_nul_escape(p, len)) return GW_BODY_NUL;
    if (has_duplicate_key_deep(arena, json)) return GW_BODY_DUPLICATE_KEY;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(json, "model");
    if (!cJSON_IsString(model) || model->valuestring[0] == '\0') return GW_BODY_NO_MODEL;
    out->model = model->valuestring;
    const cJSON *stream = cJSON_GetObjectItemCaseSensitive(json, "stream");
    if (stream && !cJSON_IsBool(stream) && !cJSON_IsNull(stream)) return GW_BODY_BAD_STREAM;
    out->stream = cJSON_IsTrue(stream);
    /* The gateway decides the usage chunk (gw_body_ask_usage): a value the backend might read
     * otherwise is refused rather than replaced. */
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(json, "stream_options");
    const cJSON *iu = cJSON_GetObjectItemCaseSensitive(so, "include_usage");
    if (so && !cJSON_IsObject(so) && !cJSON_IsNull(so)) return GW_BODY_BAD_STREAM_OPTIONS;
    if (iu && !cJSON_IsBool(iu) && !cJSON_IsNull(iu)) return GW_BODY_BAD_STREAM_OPTIONS;
    out->usage_asked = cJSON_IsTrue(iu);
    return GW_BODY_OK;
}

int gw_body_ask_usage(cJSON *json)
{
    cJSON *so = cJSON_GetObjectItemCaseSensitive(json, "stream_options");
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(so, "include_usage"))) return 0;
    if (!cJSON_IsObject(so)) { /* absent, null, or put there by a plugin */
        cJSON *o = cJSON_CreateObject();
        if (!o) return -1;
        if (so ? !cJSON_ReplaceItemInObjectCaseSensitive(json, "stream_options", o)
               : !cJSON_AddItemToObject(json, "stream_options", o)) {
            cJSON_Delete(o);
            return -1;
        }
        so = o;
    }
    cJSON *t = cJSON_CreateTrue();
    if (!t) return -1;
    if (cJSON_GetObjectItemCaseSensitive(so, "include_usage")
            ? !cJSON_ReplaceItemInObjectCaseSensitive(so, "include_usage", t)
            : !cJSON_AddItemToObject(so, "include_usage", t)) {
        cJSON_Delete(t);
        return -1;
    }
    return 1;
}

int gw_body_is_usage_chunk(gw_arena_t *arena, const char *data, size_t len)
{
    cJSON *json = gw_json_parse(arena, data, len, NULL);
    const cJSON *choices = cJSON_GetObjectItemCaseSensitive(json, "choices");
    int is = cJSON_IsArray(choices) && !choices->child &&
             cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(json, "usage"));
    cJSON_Delete(json); /* nothing for nodes from the arena */
    return is;
}

/* Only the usage object is parsed, not the whole answer (a third of the access log's cost
 * per request): the last key "usage" whose value is an object. A string cannot hold the
 * bytes "usage" with both quotes unescaped, so no text of the answer can pose as it; but the
 * end of a key can (`{"a\"usage": {...}}`): the opening quote must not be escaped. */
static int token_count(const cJSON *v)
{
    return cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble < 1e12 &&
           v->valuedouble == (double)(int64_t)v->valuedouble;
}

int gw_body_usage(gw_arena_t *arena, const char *text, size_t len, int64_t *prompt,
                  int64_t *completion, size_t *at)
{
    const char *end = text + len, *obj = NULL;
    for (const char *p = text; (p = memmem(p, (size_t)(end - p), "\"usage\"", 7)); p += 7) {
        if (escaped(text, p)) continue;
        const char *q = p + 7;
        while (q < end && json_ws(*q)) q++;
        if (q == end || *q != ':') continue;
        for (q++; q < end && json_ws(*q);) q++;
        if (q < end && *q == '{') obj = q;
    }
    if (!obj) return 0;
    cJSON *usage = gw_json_parse(arena, obj, (size_t)(end - obj), NULL);
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(usage, "prompt_tokens");
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(usage, "completion_tokens");
    const cJSON *tt = cJSON_GetObjectItemCaseSensitive(usage, "total_tokens");
    int found = 0;
    /* Both counts, whole numbers below 1e12, or no usage at all: a partial usage (a count
     * absent, negative, fractional or absurd) would charge what was not counted as 0. An
     * answer without completion_tokens (embeddings) counts total_tokens - prompt_tokens. */
    int have_c = token_count(ct);
    if (!ct && token_count(pt) && token_count(tt) && tt->valuedouble >= pt->valuedouble)
        have_c = 2;
    if (token_count(pt) && have_c) {
        *prompt = (int64_t)pt->valuedouble;
        *completion = have_c == 1 ? (int64_t)ct->valuedouble
                                  : (int64_t)tt->valuedouble - (int64_t)pt->valuedouble;
        if (at) *at = (size_t)(obj - text);
        found = 1;
    }
    cJSON_Delete(usage); /* nothing for nodes from the arena */
    return found;
}
