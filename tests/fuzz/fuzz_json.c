/* libFuzzer target for the JSON the gateway reads from bodies (gateway/body.c): the request
 * body's model and stream, what the quota plugin estimates from it, what the privacy plugin makes
 * of its user fields; and the usage of backends' answers.
 *
 * Every text is placed against an unreadable page, so that a read past its length (cJSON's too,
 * which is not instrumented) crashes. The first input byte picks the mode (byte % 3):
 *   0  a request body. Inspected into an arena and into the heap, with the same verdict. An
 *      accepted body is UTF-8 (decoded here the long way), strict RFC 8259 (parsed here by the
 *      grammar), an object without a duplicate key at any depth (also none equal under case
 *      folding with U+017F = s and U+212A = k), without a top-level or stream_options key that
 *      folds onto a name the gateway reads without being it, without a number that a double
 *      does not hold exactly (an integer beyond +-2^53, one past the range), with a non-empty
 *      model string, a boolean or null (or no) stream, and a
 *      stream_options object or null whose include_usage is a boolean or null, read as the
 *      JSON says; the usage the core asks for leaves it accepted, with include_usage true;
 *      a refused one is refused for a reason that holds. Of an accepted body: the quota
 *      estimate is at least 1 and bytes / 4, and bytes / 4 + max_tokens exactly when that is
 *      the only count; the privacy plugin
 *      leaves no user field when dropping, a 64-hex-digit hash for each string when hashing,
 *      touches no other key, and the body it leaves is accepted again with the same model.
 *      Printed with its numbers made exact (gw_body_exact_numbers), an accepted body is
 *      accepted again and reads as the same tree, number for number.
 *   1  an answer (a whole body or one event's data). A usage found has counts in [0, 1e12),
 *      sits at an object after a key "usage", reads the same again from there, into an arena or
 *      the heap; and when the answer is valid JSON, it is one of its "usage" objects.
 *   2  an answer the harness writes around counts taken from the data, with decoys (an earlier
 *      usage, a content holding the text of one, odd spacing): the usage found is exactly the
 *      one written last.
 */
#include <ctype.h>
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "guarded.h"
#include "base/body.h"
#include "base/conf.h"
#include "base/json.h"
#include "privacy.h"
#include "quota.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

extern const gw_plugin_t gw_plugin_privacy;

static void *priv_drop, *priv_hash;

static void *privacy_state(const char *conf)
{
    cJSON *j = cJSON_Parse(conf);
    gw_arena_t *a = gw_arena_new(1024);
    gw_conf_ctx_t cx;
    gw_conf_ctx_init(&cx, a);
    void *state = NULL;
    check(j && gw_plugin_privacy.configure(&cx, j, "$", &state) == 0 && state && !cx.nerrors);
    gw_conf_ctx_release(&cx);
    /* The state lives in the config's memory (the arena): kept for the whole run, as a
     * snapshot keeps it while it serves. */
    cJSON_Delete(j);
    return state;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    gw_json_init();
    setenv("FUZZ_JSON_SALT", "fuzz-json-salt-0123456789abcdef", 1);
    priv_drop = privacy_state("{\"privacy\":{\"user_field\":\"drop\"}}");
    priv_hash = privacy_state(
        "{\"privacy\":{\"user_field\":\"hash\",\"user_hash_salt_env\":\"FUZZ_JSON_SALT\"}}");
    return 0;
}

/* ------------------------------------------------------------------ request bodies */

static int json_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* The code points of a key, folded the way Go's encoding/json reaches ASCII with: A-Z as a-z,
 * U+017F as s, U+212A as k (decoded here, not compared by bytes). */
static size_t folded(const char *key, uint32_t *out, size_t cap)
{
    const unsigned char *s = (const unsigned char *)key;
    size_t n = 0;
    while (*s && n < cap) {
        uint32_t cp = *s++;
        if (cp >= 0xf0)
            cp = (cp & 7) << 18 | (uint32_t)(s[0] & 0x3f) << 12 | (uint32_t)(s[1] & 0x3f) << 6 |
                 (s[2] & 0x3f),
            s += 3;
        else if (cp >= 0xe0)
            cp = (cp & 15) << 12 | (uint32_t)(s[0] & 0x3f) << 6 | (s[1] & 0x3f), s += 2;
        else if (cp >= 0xc0)
            cp = (cp & 31) << 6 | (s[0] & 0x3f), s += 1;
        if (cp >= 'A' && cp <= 'Z') cp += 32;
        if (cp == 0x17f) cp = 's';
        if (cp == 0x212a) cp = 'k';
        out[n++] = cp;
    }
    return n;
}

static int same_folded(const char *a, const char *b)
{
    size_t la = strlen(a) + 1, lb = strlen(b) + 1;
    uint32_t *x = malloc(la * sizeof(*x)), *y = malloc(lb * sizeof(*y));
    check(x && y);
    size_t n = folded(a, x, la), m = folded(b, y, lb);
    int same = n == m && memcmp(x, y, n * sizeof(*x)) == 0;
    free(x);
    free(y);
    return same;
}

/* A key twice in any object, at any depth, equal or equal folded (pairwise: the harness's own
 * way). */
static int has_duplicate(const cJSON *o)
{
    if (cJSON_IsObject(o))
        for (const cJSON *a = o->child; a; a = a->next)
            for (const cJSON *b = a->next; b; b = b->next)
                if (same_folded(a->string, b->string)) return 1;
    for (const cJSON *c = o->child; c; c = c->next)
        if (has_duplicate(c)) return 1;
    return 0;
}

static int has_nonfinite(const cJSON *o)
{
    if (cJSON_IsNumber(o) && !isfinite(o->valuedouble)) return 1;
    for (const cJSON *c = o->child; c; c = c->next)
        if (has_nonfinite(c)) return 1;
    return 0;
}

/* Is some member of o (an object) named in list (names between spaces) once folded, while
 * its own name is not there as it is? */
static int folds_onto(const cJSON *o, const char *list)
{
    for (const cJSON *c = cJSON_IsObject(o) ? o->child : NULL; c; c = c->next) {
        size_t n = strlen(c->string) + 1, k = 0;
        uint32_t *cp = malloc(n * sizeof(*cp));
        char *ascii = malloc(n + 2);
        check(cp && ascii);
        size_t m = folded(c->string, cp, n);
        ascii[k++] = ' ';
        for (size_t i = 0; i < m && cp[i] < 0x80 && cp[i] != ' '; i++) ascii[k++] = (char)cp[i];
        ascii[k++] = ' ';
        ascii[k] = 0;
        int onto = k == m + 2 && strstr(list, ascii); /* all of it ASCII, and a name */
        memcpy(ascii + 1, c->string, n - 1);
        strcpy(ascii + n, " ");
        int exact = strstr(list, ascii) != NULL;
        free(cp);
        free(ascii);
        if (onto && !exact) return 1;
    }
    return 0;
}

static int has_folded_key(const cJSON *json)
{
    return folds_onto(json, " model stream stream_options user safety_identifier max_tokens "
                            "max_completion_tokens n prompt messages input ") ||
           folds_onto(cJSON_GetObjectItemCaseSensitive(json, "stream_options"), " include_usage ");
}

/* RFC 8259 by its grammar, the harness's own way: recursive descent over the n bytes at *p.
 * Notes in *big an integer literal beyond +-2^53 (long double holds 19 digits exactly). */
typedef struct {
    const char *p, *end;
    int big, depth;
} strict_t;

static void skip_ws(strict_t *t)
{
    while (t->p < t->end && json_ws(*t->p)) t->p++;
}

static int strict_lit(strict_t *t, const char *lit)
{
    size_t n = strlen(lit);
    if ((size_t)(t->end - t->p) < n || memcmp(t->p, lit, n)) return 0;
    t->p += n;
    return 1;
}

static int digits(strict_t *t)
{
    const char *s = t->p;
    while (t->p < t->end && *t->p >= '0' && *t->p <= '9') t->p++;
    return t->p > s;
}

static int strict_number(strict_t *t)
{
    const char *s = t->p;
    int integer = 1;
    if (t->p < t->end && *t->p == '-') t->p++;
    if (t->p < t->end && *t->p == '0')
        t->p++;
    else if (t->p >= t->end || *t->p < '1' || *t->p > '9' || !digits(t))
        return 0;
    if (t->p < t->end && *t->p == '.') {
        t->p++;
        if (!digits(t)) return 0;
        integer = 0;
    }
    if (t->p < t->end && (*t->p == 'e' || *t->p == 'E')) {
        t->p++;
        if (t->p < t->end && (*t->p == '+' || *t->p == '-')) t->p++;
        if (!digits(t)) return 0;
        integer = 0;
    }
    if (integer) {
        char buf[64];
        size_t n = (size_t)(t->p - s);
        if (n >= sizeof(buf))
            t->big = 1;
        else {
            memcpy(buf, s, n);
            buf[n] = 0;
            if (fabsl(strtold(buf, NULL)) > 9007199254740992.0L) t->big = 1;
        }
    }
    return 1;
}

static int strict_string(strict_t *t)
{
    if (t->p >= t->end || *t->p != '"') return 0;
    for (t->p++; t->p < t->end; t->p++) {
        unsigned char c = (unsigned char)*t->p;
        if (c == '"') {
            t->p++;
            return 1;
        }
        if (c < 0x20) return 0;
        if (c != '\\') continue;
        if (++t->p >= t->end) return 0;
        if (*t->p == 'u') {
            for (int k = 0; k < 4; k++)
                if (++t->p >= t->end || !isxdigit((unsigned char)*t->p)) return 0;
        } else if (!memchr("\"\\/bfnrt", *t->p, 8)) {
            return 0;
        }
    }
    return 0;
}

static int strict_value(strict_t *t)
{
    skip_ws(t);
    if (t->p >= t->end || ++t->depth > 4096) return 0;
    int ok;
    char c = *t->p;
    if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        t->p++;
        skip_ws(t);
        ok = 1;
        if (t->p < t->end && *t->p == close) {
            t->p++;
        } else {
            for (;;) {
                if (c == '{') {
                    skip_ws(t);
                    if (!strict_string(t)) return 0;
                    skip_ws(t);
                    if (t->p >= t->end || *t->p++ != ':') return 0;
                }
                if (!strict_value(t)) return 0;
                skip_ws(t);
                if (t->p < t->end && *t->p == ',') {
                    t->p++;
                    continue;
                }
                if (t->p < t->end && *t->p == close) {
                    t->p++;
                    break;
                }
                return 0;
            }
        }
    } else if (c == '"') {
        ok = strict_string(t);
    } else if (c == '-' || (c >= '0' && c <= '9')) {
        ok = strict_number(t);
    } else {
        ok = strict_lit(t, "true") || strict_lit(t, "false") || strict_lit(t, "null");
    }
    t->depth--;
    return ok;
}

/* 1 when the n bytes at p are one JSON text of RFC 8259 (white space around it), *big as above. */
static int strict_json(const char *p, size_t n, int *big)
{
    strict_t t = {p, p + n, 0, 0};
    int ok = strict_value(&t);
    skip_ws(&t);
    *big = t.big;
    return ok && t.p == t.end;
}

/* UTF-8 the long way: decode each sequence by its leading ones, then refuse what is overlong,
 * a surrogate or past U+10FFFF (body.c checks the bytes' ranges instead). */
static int utf8_ok(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned c = s[i], len = c < 0x80             ? 1
                                 : (c & 0xe0) == 0xc0 ? 2
                                 : (c & 0xf0) == 0xe0 ? 3
                                 : (c & 0xf8) == 0xf0 ? 4
                                                      : 0;
        if (!len || n - i < len) return 0;
        uint32_t cp = len == 1 ? c : c & (0x7f >> len);
        for (unsigned k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return 0;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        static const uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
        i += len;
    }
    return 1;
}

static int bool_or_null(const cJSON *v)
{
    return !v || cJSON_IsBool(v) || cJSON_IsNull(v);
}

static int valid_model(const cJSON *o)
{
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(o, "model");
    return cJSON_IsString(m) && m->valuestring[0];
}

/* Why a body is refused, found again from its tree. */
static void check_verdict(const char *p, size_t n, int rc, const gw_body_t *b)
{
    check(utf8_ok((const unsigned char *)p, n) == (rc != GW_BODY_BAD_UTF8));
    check(rc != GW_BODY_TOO_LARGE); /* inputs are small: within 2 x n + 1 MiB */
    if (rc == GW_BODY_BAD_UTF8) {
        check(!b->json && !b->model);
        return;
    }
    int big, strict = strict_json(p, n, &big);
    if (rc == GW_BODY_NOT_JSON) {
        check(!strict && !b->json && !b->model);
        return;
    }
    if (rc == GW_BODY_NOT_OBJECT) {
        check(!b->json || !cJSON_IsObject(b->json));
        check(!b->model);
        return;
    }
    if (rc == GW_BODY_NUL) { /* a raw NUL, or a \u0000 escape whose backslash is not escaped */
        check(!b->model && (memchr(p, 0, n) || memmem(p, n, "\\u0000", 6)));
        return;
    }
    check(strict && cJSON_IsObject(b->json)); /* what cJSON parsed and the scan passed */
    if (rc == GW_BODY_INEXACT_NUMBER) {
        check(big || has_nonfinite(b->json));
        return;
    }
    if (rc == GW_BODY_DUPLICATE_KEY) {
        check(has_duplicate(b->json));
        return;
    }
    check(!big && !has_nonfinite(b->json) && !has_duplicate(b->json));
    check(has_folded_key(b->json) == (rc == GW_BODY_FOLDED_KEY));
    if (rc == GW_BODY_FOLDED_KEY) return;
    check(valid_model(b->json) == (rc != GW_BODY_NO_MODEL));
    if (rc == GW_BODY_NO_MODEL) {
        check(!b->model);
        return;
    }
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(b->json, "model");
    check(b->model == m->valuestring && b->model[0]);
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(b->json, "stream");
    check(bool_or_null(s) == (rc != GW_BODY_BAD_STREAM));
    if (rc == GW_BODY_BAD_STREAM) return;
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(b->json, "stream_options");
    const cJSON *iu = cJSON_GetObjectItemCaseSensitive(so, "include_usage");
    int so_ok = (!so || cJSON_IsObject(so) || cJSON_IsNull(so)) && bool_or_null(iu);
    check(so_ok == (rc == GW_BODY_OK));
    if (rc == GW_BODY_OK) check(b->stream == cJSON_IsTrue(s) && b->usage_asked == cJSON_IsTrue(iu));
    /* An accepted body is the whole text: after its JSON only white space. */
    const char *end = NULL;
    cJSON *again = cJSON_ParseWithLengthOpts(gw_fuzz_guarded(p, n), n, &end, 0);
    check(again != NULL);
    cJSON_Delete(again);
}

static void check_estimate(size_t n, const cJSON *json)
{
    int64_t e = gw_quota_estimate_tokens(n, json, 1), q = (int64_t)n / 4;
    check(e == (q > 0 ? q : 1));
    e = gw_quota_estimate_tokens(n, json, 0);
    check(e >= 1 && e >= q && e <= q + 128 * 1000000000LL); /* 128 choices at most */
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(json, "max_tokens");
    /* One choice: the completion part once. */
    if (!cJSON_GetObjectItemCaseSensitive(json, "n") &&
        !cJSON_GetObjectItemCaseSensitive(json, "best_of") &&
        !cJSON_GetObjectItemCaseSensitive(json, "max_completion_tokens") && cJSON_IsNumber(mt) &&
        mt->valuedouble >= 0 && mt->valuedouble < 1e9 &&
        mt->valuedouble == floor(mt->valuedouble)) {
        int64_t want = q + (int64_t)mt->valuedouble;
        check(e == (want > 0 ? want : 1));
    }
}

static int is_hash(const cJSON *v)
{
    if (!cJSON_IsString(v) || strlen(v->valuestring) != 64) return 0;
    for (const char *s = v->valuestring; *s; s++)
        if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f'))) return 0;
    return 1;
}

static int user_key(const char *k)
{
    return strcmp(k, "user") == 0 || strcmp(k, "safety_identifier") == 0;
}

/* The privacy plugin on a copy of an accepted body, then that body read again. */
static void check_privacy(const cJSON *json, void *state, int hash)
{
    cJSON *copy = cJSON_Duplicate(json, 1);
    check(copy != NULL);
    int had = 0, other = 0, strings = 0;
    for (const cJSON *e = json->child; e; e = e->next) {
        if (user_key(e->string))
            had++, strings += cJSON_IsString(e);
        else
            other++;
    }
    int rc = gw_privacy_user_field(state, hash ? "tenant-a" : NULL, copy);
    check(rc == (had > 0));
    int left = 0, others = 0;
    const cJSON *o = json->child;
    for (const cJSON *e = copy->child; e; e = e->next) {
        if (user_key(e->string)) {
            check(hash && is_hash(e));
            left++;
            continue;
        }
        while (o && user_key(o->string)) o = o->next;
        check(o && strcmp(o->string, e->string) == 0); /* the others, in their order */
        o = o->next;
        others++;
    }
    check(others == other && left == (hash ? strings : 0));
    check(gw_body_exact_numbers(copy) == 0);
    char *text = cJSON_PrintUnformatted(copy);
    check(text != NULL);
    size_t n = strlen(text);
    gw_body_t b;
    int again = gw_body_inspect(NULL, gw_fuzz_guarded(text, n), n, &b);
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(json, "model");
    check(again == GW_BODY_OK && strcmp(b.model, m->valuestring) == 0);
    cJSON_Delete(b.json);
    cJSON_free(text);
    cJSON_Delete(copy);
}

/* The usage the core asks for on a copy of an accepted body: the body it writes is accepted
 * again, with include_usage true and every other key as it was. */
static void check_ask_usage(const cJSON *json)
{
    cJSON *copy = cJSON_Duplicate(json, 1);
    check(copy != NULL);
    const cJSON *iu = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(json, "stream_options"), "include_usage");
    check(gw_body_ask_usage(copy) == !cJSON_IsTrue(iu));
    check(gw_body_ask_usage(copy) == 0);
    check(gw_body_exact_numbers(copy) == 0);
    char *text = cJSON_PrintUnformatted(copy);
    check(text != NULL);
    size_t n = strlen(text);
    gw_body_t b;
    check(gw_body_inspect(NULL, gw_fuzz_guarded(text, n), n, &b) == GW_BODY_OK && b.usage_asked);
    check(cJSON_GetArraySize(b.json) ==
          cJSON_GetArraySize(json) + !cJSON_GetObjectItemCaseSensitive(json, "stream_options"));
    cJSON_Delete(b.json);
    cJSON_free(text);
    cJSON_Delete(copy);
}

/* The same tree: types, keys and order, strings, and numbers equal as doubles. */
static int same_tree(const cJSON *a, const cJSON *b)
{
    if ((a->type & 0xff) != (b->type & 0xff)) return 0;
    if (!a->string != !b->string || (a->string && strcmp(a->string, b->string))) return 0;
    if (cJSON_IsNumber(a) && !(a->valuedouble == b->valuedouble)) return 0;
    if (cJSON_IsString(a) && strcmp(a->valuestring, b->valuestring)) return 0;
    const cJSON *x = a->child, *y = b->child;
    for (; x && y; x = x->next, y = y->next)
        if (!same_tree(x, y)) return 0;
    return !x && !y;
}

/* An accepted body printed as settle_body prints it: accepted again, the same tree. */
static void check_reprint(const cJSON *json)
{
    cJSON *copy = cJSON_Duplicate(json, 1);
    check(copy && gw_body_exact_numbers(copy) == 0);
    char *text = cJSON_PrintUnformatted(copy);
    check(text != NULL);
    size_t n = strlen(text);
    gw_body_t b;
    check(gw_body_inspect(NULL, gw_fuzz_guarded(text, n), n, &b) == GW_BODY_OK);
    check(same_tree(json, b.json));
    cJSON_Delete(b.json);
    cJSON_free(text);
    cJSON_Delete(copy);
}

static void body_mode(const char *p, size_t n)
{
    gw_arena_t *a = gw_arena_new(4096);
    check(a != NULL);
    gw_body_t b, h;
    int rc = gw_body_inspect(a, gw_fuzz_guarded(p, n), n, &b);
    int rh = gw_body_inspect(NULL, gw_fuzz_guarded(p, n), n, &h);
    check(rc == rh);
    check(rc == GW_BODY_OK || rc == GW_BODY_NOT_OBJECT || rc == GW_BODY_DUPLICATE_KEY ||
          rc == GW_BODY_NO_MODEL || rc == GW_BODY_BAD_STREAM || rc == GW_BODY_NUL ||
          rc == GW_BODY_BAD_UTF8 || rc == GW_BODY_BAD_STREAM_OPTIONS || rc == GW_BODY_NOT_JSON ||
          rc == GW_BODY_FOLDED_KEY || rc == GW_BODY_INEXACT_NUMBER);
    check(!b.model == !h.model && (!b.model || strcmp(b.model, h.model) == 0));
    check(b.stream == h.stream);
    check_verdict(p, n, rc, &b);
    if (rc == GW_BODY_OK) {
        check_estimate(n, b.json);
        check_privacy(b.json, priv_drop, 0);
        check_privacy(b.json, priv_hash, 1);
        check_ask_usage(b.json);
        check_reprint(b.json);
    }
    cJSON_Delete(h.json);
    cJSON_Delete(b.json); /* nothing for nodes from the arena */
    gw_arena_free(a);
}

/* ------------------------------------------------------------------ usage */

static int count(const cJSON *v, int64_t *out)
{
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0 && v->valuedouble < 1e12) ||
        v->valuedouble != floor(v->valuedouble))
        return 0;
    *out = (int64_t)v->valuedouble;
    return 1;
}

/* A usage object's reading (gw_body_usage): both counts whole, or completion_tokens absent and
 * total_tokens at least the prompt; 0 otherwise (a partial usage is none). */
static int reading(const cJSON *u, int64_t *prompt, int64_t *completion)
{
    int64_t t = -1;
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(u, "completion_tokens");
    if (!count(cJSON_GetObjectItemCaseSensitive(u, "prompt_tokens"), prompt)) return 0;
    if (ct) return count(ct, completion);
    if (!count(cJSON_GetObjectItemCaseSensitive(u, "total_tokens"), &t) || t < *prompt) return 0;
    *completion = t - *prompt;
    return 1;
}

/* Is (prompt, completion) the reading of some "usage" object in the tree? */
static int in_tree(const cJSON *j, int64_t prompt, int64_t completion)
{
    for (const cJSON *e = j ? j->child : NULL; e; e = e->next) {
        if (e->string && strcmp(e->string, "usage") == 0 && cJSON_IsObject(e)) {
            int64_t p = -1, c = -1;
            if (reading(e, &p, &c) && p == prompt && c == completion) return 1;
        }
        if (in_tree(e, prompt, completion)) return 1;
    }
    return 0;
}

static void usage_mode(const char *p, size_t n)
{
    gw_arena_t *a = gw_arena_new(1024);
    check(a != NULL);
    int64_t pt = -1, ct = -1, pt2 = -1, ct2 = -1;
    size_t at = n, at2 = n;
    const char *g = gw_fuzz_guarded(p, n);
    int found = gw_body_usage(a, g, n, &pt, &ct, &at);
    int found2 = gw_body_usage(NULL, gw_fuzz_guarded(p, n), n, &pt2, &ct2, &at2);
    gw_arena_free(a);
    check(found == found2);
    if (!found) return;
    check(pt == pt2 && ct == ct2 && at == at2);
    check(pt >= 0 && pt < 1000000000000 && ct >= 0 && ct < 1000000000000);
    /* At an object, after "usage" and a colon. */
    check(at < n && p[at] == '{');
    size_t k = at;
    while (k > 0 && json_ws(p[k - 1])) k--;
    check(k > 0 && p[--k] == ':');
    while (k > 0 && json_ws(p[k - 1])) k--;
    check(k >= 7 && memcmp(p + k - 7, "\"usage\"", 7) == 0);
    /* Read again from there. */
    cJSON *u = cJSON_ParseWithLengthOpts(gw_fuzz_guarded(p + at, n - at), n - at, NULL, 0);
    int64_t rp = -1, rc = -1;
    check(reading(u, &rp, &rc) && rp == pt && rc == ct);
    cJSON_Delete(u);
    /* A valid answer: the usage is one of its own. */
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(gw_fuzz_guarded(p, n), n, &end, 0);
    if (j && end) {
        size_t e = (size_t)(end - (gw_fuzz_guard_end() - n));
        while (e < n && json_ws(p[e])) e++;
        if (e == n) check(in_tree(j, pt, ct));
    }
    cJSON_Delete(j);
}

typedef struct text {
    char *p;
    size_t len, cap;
} text_t;

static void put(text_t *t, const char *s)
{
    size_t n = strlen(s);
    if (n == 0) return;
    if (t->len + n > t->cap) {
        t->cap = (t->len + n) * 2 + 64;
        t->p = realloc(t->p, t->cap);
        check(t->p != NULL);
    }
    memcpy(t->p + t->len, s, n);
    t->len += n;
}

static uint64_t take(const uint8_t **d, size_t *n, int bytes)
{
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++) {
        v = v << 8 | (*n ? **d : 0);
        if (*n) (*d)++, (*n)--;
    }
    return v;
}

/* An answer with a usage written last, among decoys the data chooses. */
static void written_mode(const uint8_t *d, size_t n)
{
    static const char *const ws[] = {"", " ", "\n  ", "\t", "\r\n"};
    unsigned how = (unsigned)take(&d, &n, 2);
    uint64_t prompt = take(&d, &n, 5), completion = take(&d, &n, 5), decoy = take(&d, &n, 2);
    int bad_completion = how & 1, big = how & 2;
    if (big) prompt = prompt * 1000 + 999; /* may pass 1e12: then no usage at all */
    const char *w1 = ws[(how >> 2) % 5], *w2 = ws[(how >> 5) % 5];
    text_t t = {0};
    char num[160];
    put(&t, how & 0x100 ? " " : "");
    put(&t, "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\",\"choices\":[{\"index\":0,");
    if (how & 0x200) { /* an earlier usage, in a place no backend puts one */
        snprintf(num, sizeof(num), "\"usage\":{\"prompt_tokens\":%" PRIu64 "},", decoy);
        put(&t, num);
    }
    put(&t, "\"message\":{\"role\":\"assistant\",\"content\":\"");
    if (how & 0x400) /* a content holding the text of a usage */
        put(&t, "say \\\"usage\\\": {\\\"prompt_tokens\\\": 1} \\\\\\\"usage\\\\\\\":{}");
    /* the rest of the content: the data, as a JSON string's characters */
    for (size_t i = 0; i < n && i < 64; i++) {
        char c[8];
        if (d[i] == '"' || d[i] == '\\')
            snprintf(c, sizeof(c), "\\%c", d[i]);
        else if (d[i] < 0x20 || d[i] >= 0x7f)
            snprintf(c, sizeof(c), "\\u%04x", d[i]);
        else
            snprintf(c, sizeof(c), "%c", d[i]);
        put(&t, c);
    }
    put(&t, "\"},\"finish_reason\":\"stop\"}],");
    snprintf(num, sizeof(num), "\"usage\"%s:%s{\"prompt_tokens\":%" PRIu64 ",", w1, w2, prompt);
    put(&t, num);
    if (bad_completion)
        put(&t, "\"completion_tokens\":-1}}");
    else {
        snprintf(num, sizeof(num),
                 "\"completion_tokens\":%" PRIu64 ",\"total_tokens\":%" PRIu64 "}}", completion,
                 prompt + completion);
        put(&t, num);
    }
    int64_t pt = -1, ct = -1;
    int found = gw_body_usage(NULL, gw_fuzz_guarded(t.p, t.len), t.len, &pt, &ct, NULL);
    /* A partial usage (a bad completion_tokens) is no usage. */
    check(found == ((double)prompt < 1e12 && !bad_completion && (double)completion < 1e12));
    if (found) check(pt == (int64_t)prompt && ct == (int64_t)completion);
    usage_mode(t.p, t.len);
    free(t.p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size - 1 > GW_FUZZ_AREA / 2) return 0;
    const char *p = (const char *)data + 1;
    size_t n = size - 1;
    switch (data[0] % 3) {
    case 0:
        body_mode(p, n);
        break;
    case 1:
        usage_mode(p, n);
        break;
    default:
        written_mode(data + 1, n);
        break;
    }
    return 0;
}
