/* The JSON the gateway reads from bodies, as pure functions of bytes: a request body's model and
 * stream, and an answer's usage. */
#include "base/body.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/json.h"

static int json_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* The next unit of the key at *s under the case folding of Go's encoding/json (which matches a
 * key to a field by unicode.SimpleFold), as far as it reaches ASCII: A-Z as a-z, U+017F (long s)
 * as s, U+212A (Kelvin sign) as k, every other byte as itself. No other code point's simple-fold
 * orbit holds an ASCII letter (Unicode's CaseFolding.txt), so no other key folds onto a name
 * spelled in ASCII. The keys are UTF-8 (checked before the parse, and cJSON writes escapes so). */
static unsigned fold_next(const unsigned char **s)
{
    const unsigned char *p = *s;
    unsigned c = p[0];
    if (c >= 'A' && c <= 'Z')
        c += 'a' - 'A';
    else if (c == 0xc5 && p[1] == 0xbf)
        c = 's', p++;
    else if (c == 0xe2 && p[1] == 0x84 && p[2] == 0xaa)
        c = 'k', p += 2;
    *s = p + 1;
    return c;
}

/* Keys compared under that folding: 0 when a backend could read one as the other. */
static int fold_cmp(const char *a, const char *b)
{
    const unsigned char *x = (const unsigned char *)a, *y = (const unsigned char *)b;
    for (;;) {
        unsigned c = fold_next(&x), d = fold_next(&y);
        if (c != d) return c < d ? -1 : 1;
        if (!c) return 0;
    }
}

static int by_key(const void *a, const void *b)
{
    return fold_cmp((*(const cJSON *const *)a)->string, (*(const cJSON *const *)b)->string);
}

/* A key twice among an object's members, equal or equal under case folding (fold_next). Sorted
 * when there are many: a body of a few MiB can hold a few hundred thousand keys, which compared
 * pairwise would hold the worker for minutes. */
static int has_duplicate_key(gw_arena_t *arena, const cJSON *o)
{
    size_t n = 0;
    for (const cJSON *a = o->child; a; a = a->next) n++;
    const cJSON **v =
        n > 16 ? (arena ? gw_arena_alloc(arena, n * sizeof(*v)) : malloc(n * sizeof(*v))) : NULL;
    int dup = 0;
    if (n > 16 && !v) return 1; /* no memory to sort: refused rather than minutes pairwise */
    if (!v) {                   /* few keys: pairwise */
        for (const cJSON *a = o->child; a && !dup; a = a->next)
            for (const cJSON *b = a->next; b && !dup; b = b->next)
                dup = fold_cmp(a->string, b->string) == 0;
        return dup;
    }
    size_t i = 0;
    for (const cJSON *a = o->child; a; a = a->next) v[i++] = a;
    qsort(v, n, sizeof(*v), by_key);
    for (i = 1; i < n && !dup; i++) dup = by_key(&v[i - 1], &v[i]) == 0;
    if (!arena) free(v);
    return dup;
}

/* In any object of the value, at any depth (objects in arrays too), a key twice under folding:
 * the backend's parser may take the other one (GW_BODY_DUPLICATE_KEY); and a number out of the
 * double's range, which cJSON reads as infinity (GW_BODY_INEXACT_NUMBER). cJSON bounds the
 * depth (CJSON_NESTING_LIMIT), so does this. */
static int check_tree(gw_arena_t *arena, const cJSON *v)
{
    if (cJSON_IsNumber(v) && !isfinite(v->valuedouble)) return GW_BODY_INEXACT_NUMBER;
    if (cJSON_IsObject(v) && has_duplicate_key(arena, v)) return GW_BODY_DUPLICATE_KEY;
    for (const cJSON *c = v->child; c; c = c->next) {
        int rc = check_tree(arena, c);
        if (rc) return rc;
    }
    return GW_BODY_OK;
}

/* The keys the gateway and its plugins read: at the top (core, quota, privacy, balance) and in
 * stream_options. A key that folds onto one of them without being it would be read by a Go
 * backend as it, unseen by the gateway. */
static const char *const read_keys[] = {"model",
                                        "stream",
                                        "stream_options",
                                        "user",
                                        "safety_identifier",
                                        "max_tokens",
                                        "max_completion_tokens",
                                        "n",
                                        "prompt",
                                        "messages",
                                        "input",
                                        NULL};
static const char *const read_option_keys[] = {"include_usage", NULL};

/* Can folding change the key at all: an ASCII capital, or a byte of a longer sequence? Most keys
 * are lowercase ASCII, which folds only onto itself. */
static int may_fold(const char *s)
{
    for (; *s; s++)
        if ((*s >= 'A' && *s <= 'Z') || (unsigned char)*s >= 0x80) return 1;
    return 0;
}

static int folds_onto(const cJSON *o, const char *const *names)
{
    for (const cJSON *c = cJSON_IsObject(o) ? o->child : NULL; c; c = c->next)
        for (const char *const *k = names; *k && may_fold(c->string); k++)
            if (fold_cmp(c->string, *k) == 0 && strcmp(c->string, *k) != 0) return 1;
    return 0;
}

/* The length of the UTF-8 sequence at s[i] (not ASCII), or 0 when it is not one (RFC 3629). */
static size_t utf8_sequence(const unsigned char *s, size_t i, size_t len)
{
    unsigned c = s[i];
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
    return n + 1;
}

int gw_body_utf8_valid(const char *p, size_t len)
{
    const unsigned char *s = (const unsigned char *)p;
    size_t i = 0;
    while (i < len) {
        /* ASCII, eight bytes at a time: nearly every body is nearly all ASCII. */
        uint64_t w;
        while (len - i >= 8 && (memcpy(&w, s + i, 8), !(w & 0x8080808080808080ull))) i += 8;
        if (i == len) break;
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        size_t n = utf8_sequence(s, i, len);
        if (!n) return 0;
        i += n;
    }
    return 1;
}

#define ONES 0x0101010101010101ull
#define HIGHS 0x8080808080808080ull

/* From s[i], the first byte of a string that is not plain text (a quote, a backslash, a control
 * character or a high byte), eight bytes at a time; len or the last few bytes' start when there
 * is none within reach. Each test below is exact for the lowest byte it flags (a byte under n
 * sets the high bit of (x - n * ONES) & ~x; borrows run only upwards from it), so on a little-
 * endian machine the lowest flag is the byte. */
static size_t plain_run(const unsigned char *s, size_t i, size_t len)
{
    for (; len - i >= 8; i += 8) {
        uint64_t w, q, b;
        memcpy(&w, s + i, 8);
        q = w ^ (ONES * '"');
        b = w ^ (ONES * '\\');
        uint64_t m = (w | ((w - ONES * 0x20) & ~w) | ((q - ONES) & ~q) | ((b - ONES) & ~b)) & HIGHS;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        if (m) return i + (size_t)(__builtin_ctzll(m) >> 3);
#else
        if (m) return i;
#endif
    }
    return i;
}

static int is_digit(const unsigned char *s, size_t i, size_t len)
{
    return i < len && s[i] >= '0' && s[i] <= '9';
}

/* One number of RFC 8259 at s[*i]: -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?, not
 * followed by what would continue one. Returns 0 when it is not one, else 1, or 2 for an
 * integer beyond +-2^53 (a double cannot hold it: the backend would get another). */
static int scan_number(const unsigned char *s, size_t *i, size_t len)
{
    size_t k = *i;
    if (s[k] == '-') k++;
    size_t digits = k;
    if (!is_digit(s, k, len)) return 0;
    if (s[k] == '0')
        k++;
    else
        while (is_digit(s, k, len)) k++;
    size_t ndigits = k - digits;
    int integer = 1;
    if (k < len && s[k] == '.') {
        if (!is_digit(s, ++k, len)) return 0;
        while (is_digit(s, k, len)) k++;
        integer = 0;
    }
    if (k < len && (s[k] == 'e' || s[k] == 'E')) {
        k++;
        if (k < len && (s[k] == '+' || s[k] == '-')) k++;
        if (!is_digit(s, k, len)) return 0;
        while (is_digit(s, k, len)) k++;
        integer = 0;
    }
    if (k < len && (is_digit(s, k, len) || s[k] == '.' || s[k] == 'e' || s[k] == 'E' ||
                    s[k] == '+' || s[k] == '-'))
        return 0; /* 01, 1.2.3, 1e5e5 */
    *i = k;
    if (integer &&
        (ndigits > 16 || (ndigits == 16 && memcmp(s + digits, "9007199254740992", 16) > 0)))
        return 2;
    return 1;
}

static int is_hex(unsigned c)
{
    return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f');
}

/* The bytes of one string from after its opening quote to after its closing one: UTF-8, no raw
 * control character, only RFC 8259's escapes; a \u0000 is noted (GW_BODY_SCAN_NUL_ESCAPE).
 * Returns 0, GW_BODY_BAD_UTF8 or GW_BODY_NOT_JSON. */
static int scan_string(const unsigned char *s, size_t *at, size_t len, unsigned *notes)
{
    size_t i = *at;
    for (;;) {
        i = plain_run(s, i, len);
        if (i == len) break;
        unsigned c = s[i];
        if (c == '"') {
            *at = i + 1;
            return 0;
        }
        if (c == '\\') {
            c = len - i >= 2 ? s[i + 1] : 0;
            if (c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n' || c == 'r' ||
                c == 't') {
                i += 2;
                continue;
            }
            if (c != 'u' || len - i < 6 || !is_hex(s[i + 2]) || !is_hex(s[i + 3]) ||
                !is_hex(s[i + 4]) || !is_hex(s[i + 5]))
                break;
            if (memcmp(s + i + 2, "0000", 4) == 0) *notes |= GW_BODY_SCAN_NUL_ESCAPE;
            i += 6;
        } else if (c < 0x20) {
            break;
        } else if (c < 0x80) {
            i++;
        } else {
            size_t n = utf8_sequence(s, i, len);
            if (!n) return GW_BODY_BAD_UTF8;
            i += n;
        }
    }
    *at = i;
    return GW_BODY_NOT_JSON;
}

int gw_body_scan(const char *p, size_t len, unsigned *notes)
{
    const unsigned char *s = (const unsigned char *)p;
    size_t i = 0;
    int rc = GW_BODY_OK;
    *notes = 0;
    while (i < len && rc == GW_BODY_OK) {
        unsigned c = s[i];
        switch (c) {
        case '"':
            i++;
            rc = scan_string(s, &i, len, notes);
            if (rc == GW_BODY_BAD_UTF8) return rc;
            break;
        case ' ':
        case '\t':
        case '\r':
        case '\n':
        case '{':
        case '}':
        case '[':
        case ']':
        case ':':
        case ',':
            i++;
            break;
        case '-':
        case '0':
        case '1':
        case '2':
        case '3':
        case '4':
        case '5':
        case '6':
        case '7':
        case '8':
        case '9': {
            int n = scan_number(s, &i, len);
            if (!n) rc = GW_BODY_NOT_JSON;
            if (n == 2) *notes |= GW_BODY_SCAN_BIG_INTEGER;
            break;
        }
        default:
            if (len - i >= 4 && (memcmp(s + i, "true", 4) == 0 || memcmp(s + i, "null", 4) == 0))
                i += 4;
            else if (len - i >= 5 && memcmp(s + i, "false", 5) == 0)
                i += 5;
            else
                rc = GW_BODY_NOT_JSON;
        }
    }
    /* Not JSON from s[i] on (an ASCII byte, or a sequence's start): unless the rest is not
     * UTF-8 either, which is said first, as for any body. */
    if (rc == GW_BODY_NOT_JSON && !gw_body_utf8_valid(p + i, len - i)) return GW_BODY_BAD_UTF8;
    return rc;
}

/* Is the character at p escaped: after an odd number of backslashes? */
static int escaped(const char *text, const char *p)
{
    size_t n = 0;
    while (p > text && *--p == '\\') n++;
    return n % 2;
}

int gw_body_inspect(gw_arena_t *arena, const char *p, size_t len, gw_body_t *out)
{
    memset(out, 0, sizeof(*out));
    unsigned notes;
    int rc = gw_body_scan(p, len, &notes);
    if (rc) return rc;
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
    /* A \u0000: cJSON decodes it into a NUL that ends its C string, so a key "model\u0000x"
     * would be read here as "model" and routed on, while the backend sees another key; the same
     * for a model name. Refused whole: the gateway must read what the backend reads. */
    if (notes & GW_BODY_SCAN_NUL_ESCAPE) return GW_BODY_NUL;
    if (notes & GW_BODY_SCAN_BIG_INTEGER) return GW_BODY_INEXACT_NUMBER;
    if ((rc = check_tree(arena, json))) return rc;
    if (folds_onto(json, read_keys) ||
        folds_onto(cJSON_GetObjectItemCaseSensitive(json, "stream_options"), read_option_keys))
        return GW_BODY_FOLDED_KEY;
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

int gw_body_exact_numbers(cJSON *v)
{
    for (; v; v = v->next) {
        if (v->child && gw_body_exact_numbers(v->child) < 0) return -1;
        if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) continue; /* a plugin's: null */
        /* Whole numbers within +-2^53 as integers (a backend's integer field takes no 1e+15);
         * others in the fewest digits that read back as the same double (17 always do). */
        char text[40];
        double d = v->valuedouble;
        if (d >= -9007199254740992.0 && d <= 9007199254740992.0 && d == (double)(int64_t)d) {
            snprintf(text, sizeof(text), "%.0f", d);
        } else {
            for (int digits = 15; digits <= 17; digits++) {
                snprintf(text, sizeof(text), "%.*g", digits, d);
                if (strtod(text, NULL) == d) break;
            }
        }
        size_t n = strlen(text) + 1;
        char *raw = cJSON_malloc(n);
        if (!raw) return -1;
        memcpy(raw, text, n);
        v->valuestring = raw; /* freed by cJSON_Delete, as a raw node's */
        v->type = cJSON_Raw | (v->type & ~0xff);
    }
    return 0;
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
    if (!ct && token_count(pt) && token_count(tt) && tt->valuedouble >= pt->valuedouble) have_c = 2;
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
