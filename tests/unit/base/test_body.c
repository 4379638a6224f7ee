/* Unit tests of the JSON read from bodies (gateway/body.c): a request body's verdict, model and
 * stream; an answer's usage. Texts are exact copies without a terminating NUL. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/body.h"
#include "check.h"
#include "base/json.h"

static char *copy_of(const char *s, size_t *len)
{
    *len = strlen(s);
    char *p = malloc(*len ? *len : 1);
    memcpy(p, s, *len);
    return p;
}

static void expect_body(const char *text, int want, const char *model, int stream)
{
    size_t len;
    char *p = copy_of(text, &len);
    gw_arena_t *a = gw_arena_new(4096);
    gw_body_t b;
    int rc = gw_body_inspect(a, p, len, &b);
    int model_ok = model ? b.model && strcmp(b.model, model) == 0 : b.model == NULL;
    CHECK(rc == want && model_ok && b.stream == stream, "%s: rc %d model %s stream %d", text, rc,
          b.model ? b.model : "(none)", b.stream);
    cJSON_Delete(b.json);
    gw_arena_free(a);
    free(p);
}

static void test_inspect(void)
{
    expect_body("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
                GW_BODY_OK, "m", 0);
    expect_body("{\"model\":\"m\",\"stream\":true}", GW_BODY_OK, "m", 1);
    expect_body("{\"model\":\"m\",\"stream\":false}", GW_BODY_OK, "m", 0);
    expect_body("{\"model\":\"m\",\"stream\":null}", GW_BODY_OK, "m", 0);
    expect_body(" {\"model\":\"m\"} \r\n\t", GW_BODY_OK, "m", 0);
    expect_body("{\"model\":\"m\",\"stream\":\"true\"}", GW_BODY_BAD_STREAM, "m", 0);
    expect_body("{\"model\":\"m\",\"stream\":1}", GW_BODY_BAD_STREAM, "m", 0);
    expect_body("{\"messages\":[]}", GW_BODY_NO_MODEL, NULL, 0);
    expect_body("{\"model\":\"\"}", GW_BODY_NO_MODEL, NULL, 0);
    expect_body("{\"model\":42}", GW_BODY_NO_MODEL, NULL, 0);
    expect_body("{\"model\":\"a\",\"model\":\"b\"}", GW_BODY_DUPLICATE_KEY, NULL, 0);
    expect_body("[{\"model\":\"m\"}]", GW_BODY_NOT_OBJECT, NULL, 0);
    expect_body("{\"model\":\"m\"} x", GW_BODY_NOT_JSON, NULL, 0); /* x: no JSON token */
    expect_body("{\"model\":\"m\"} 1", GW_BODY_NOT_OBJECT, NULL, 0);
    expect_body("{\"model\":\"m\"}{}", GW_BODY_NOT_OBJECT, NULL, 0);
    expect_body("{\"model\":\"m\"", GW_BODY_NOT_OBJECT, NULL, 0);
    expect_body("", GW_BODY_NOT_OBJECT, NULL, 0);
    /* fuzz_json: cJSON ends a string at \u0000; the backend does not. */
    expect_body("{\"model\\u0000x\":\"m\"}", GW_BODY_NUL, NULL, 0);
    expect_body("{\"model\":\"m\\u0000evil\"}", GW_BODY_NUL, NULL, 0);
    expect_body("{\"model\":\"m\",\"messages\":[{\"content\":\"a\\u0000\"}]}", GW_BODY_NUL, NULL,
                0);
    expect_body("{\"model\":\"m\",\"x\":\"\\\\u0000\"}", GW_BODY_OK, "m", 0); /* the text \u0000 */
    expect_body("{\"model\":\"m\",\"x\":\"\\\\\\u0000\"}", GW_BODY_NUL, NULL,
                0); /* \\ then \u0000 */
    expect_body("{\"model\":\"m\",\"x\":\"\\u0001\"}", GW_BODY_OK, "m", 0);
    /* a raw NUL: not JSON, but cJSON takes it and ends the string there (a raw control
     * character: not strict JSON, refused before the parse) */
    {
        const char raw[] = "{\"model\":\"allowed\0evil\",\"mo\0del\":1}";
        gw_body_t b;
        int rc = gw_body_inspect(NULL, raw, sizeof(raw) - 1, &b);
        CHECK(rc == GW_BODY_NOT_JSON, "a raw NUL: %d", rc);
        cJSON_Delete(b.json);
    }
    /* The body ends at its length: what follows in memory is not read. */
    {
        const char text[] = "{\"model\":\"m\"}, trailing bytes that are not the body's";
        gw_body_t b;
        int rc = gw_body_inspect(NULL, text, 13, &b);
        CHECK(rc == GW_BODY_OK && b.model && strcmp(b.model, "m") == 0, "exact length: %d", rc);
        cJSON_Delete(b.json);
        rc = gw_body_inspect(NULL, text, 12, &b);
        CHECK(rc == GW_BODY_NOT_OBJECT && !b.json, "one byte short: %d", rc);
    }
}

/* Duplicates among many keys, found by sorting: before, a body of a few MiB with a few hundred
 * thousand keys took minutes of pairwise comparisons. */
static void test_many_keys(void)
{
    const int n = 8000; /* within the parse budget: a few thousand keys still take the sort */
    size_t cap = (size_t)n * 16 + 64, len = 0;
    char *p = malloc(cap);
    len += (size_t)sprintf(p + len, "{\"model\":\"m\"");
    for (int i = 0; i < n; i++) len += (size_t)sprintf(p + len, ",\"k%d\":0", i);
    size_t open = len;
    len += (size_t)sprintf(p + len, "}");
    gw_arena_t *a = gw_arena_new(4096);
    gw_body_t b;
    CHECK(gw_body_inspect(a, p, len, &b) == GW_BODY_OK, "300000 distinct keys");
    gw_arena_free(a);
    len = open + (size_t)sprintf(p + open, ",\"k1234\":1}");
    a = gw_arena_new(4096);
    CHECK(gw_body_inspect(a, p, len, &b) == GW_BODY_DUPLICATE_KEY, "one duplicate, far apart");
    gw_arena_free(a);
    CHECK(gw_body_inspect(NULL, p, len, &b) == GW_BODY_DUPLICATE_KEY, "the same on the heap");
    cJSON_Delete(b.json);
    free(p);
}

/* The parse budget (2 x body + 8 MiB): an array of two million zeros in 4 MiB would take
 * 160 MB of nodes and is refused; 4 MiB of text is not. */
static void test_budget(void)
{
    size_t cap = 4u << 20, len = 0;
    char *p = malloc(cap + 64);
    len += (size_t)sprintf(p + len, "{\"model\":\"m\",\"x\":[0");
    while (len < cap - 8) len += (size_t)sprintf(p + len, ",0");
    len += (size_t)sprintf(p + len, "]}");
    gw_arena_t *a = gw_arena_new(4096);
    gw_body_t b;
    CHECK(gw_body_inspect(a, p, len, &b) == GW_BODY_TOO_LARGE && !b.json, "two million zeros");
    gw_arena_free(a);
    CHECK(gw_body_inspect(NULL, p, len, &b) == GW_BODY_TOO_LARGE && !b.json,
          "the same on the heap");
    len = (size_t)sprintf(p, "{\"model\":\"m\",\"x\":\"");
    memset(p + len, 'a', cap - len - 2);
    memcpy(p + cap - 2, "\"}", 2);
    a = gw_arena_new(4096);
    CHECK(gw_body_inspect(a, p, cap, &b) == GW_BODY_OK, "4 MiB of text");
    gw_arena_free(a);
    free(p);
}

static void expect_utf8(const char *bytes, size_t n, int want)
{
    /* alone, inside a string of a body, and after 13 ASCII bytes (past the 8-byte fast path) */
    CHECK(gw_body_utf8_valid(bytes, n) == want, "utf8 %zu bytes [0]=%02x: want %d", n,
          n ? (unsigned char)bytes[0] : 0, want);
    char buf[128];
    size_t len = (size_t)snprintf(buf, sizeof(buf), "{\"model\":\"m\",\"x\":\"abcdefghijklm");
    memcpy(buf + len, bytes, n);
    len += n;
    memcpy(buf + len, "\"}", 2);
    len += 2;
    gw_body_t b;
    int rc = gw_body_inspect(NULL, buf, len, &b);
    CHECK(want ? rc == GW_BODY_OK : rc == GW_BODY_BAD_UTF8, "utf8 in a body: rc %d", rc);
    cJSON_Delete(b.json);
}

static void test_utf8(void)
{
    static const struct {
        const char *s;
        int ok;
    } cases[] = {
        {"\xc3\xa9", 1},
        {"\xe2\x82\xac", 1},
        {"\xf0\x9d\x84\x9e", 1},
        {"\xef\xbf\xbf", 1},
        {"\xf4\x8f\xbf\xbf", 1},
        {"\xed\x9f\xbf", 1},
        {"\xee\x80\x80", 1},
        {"\xc2\x80", 1},
        {"\xe0\xa0\x80", 1},
        {"\xf0\x90\x80\x80", 1},
        {"\xff", 0},
        {"\xfe", 0},
        {"\x80", 0},
        {"\xbf", 0},
        {"\xc0\xaf", 0},
        {"\xc1\xbf", 0},
        {"\xe0\x80\xaf", 0},
        {"\xe0\x9f\xbf", 0},
        {"\xf0\x80\x80\xaf", 0},
        {"\xf0\x8f\xbf\xbf", 0},
        {"\xed\xa0\x80", 0},
        {"\xed\xbf\xbf", 0},
        {"\xf4\x90\x80\x80", 0},
        {"\xf5\x80\x80\x80", 0},
        {"\xf8\x88\x80\x80\x80", 0},
        {"\xc3", 0},
        {"\xe2\x82", 0},
        {"\xf0\x9f\x98", 0},
        {"\xc3\x28", 0},
        {"\xe2\x28\xa1", 0},
        {"\xf0\x9f\x98\x28", 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        expect_utf8(cases[i].s, strlen(cases[i].s), cases[i].ok);
    /* a truncated sequence at the very end of the bytes: nothing read past len */
    const char cut[] = "abcdefgh\xe2\x82\xac";
    CHECK(gw_body_utf8_valid(cut, sizeof(cut) - 2) == 0, "cut at the end");
    CHECK(gw_body_utf8_valid(cut, sizeof(cut) - 1) == 1, "whole");
    CHECK(gw_body_utf8_valid("", 0) == 1, "empty");
    /* escapes: lone surrogates stay refused (cJSON), a pair is fine */
    expect_body("{\"model\":\"m\",\"x\":\"\\ud800\"}", GW_BODY_NOT_OBJECT, NULL, 0);
    expect_body("{\"model\":\"m\",\"x\":\"\\udc00\"}", GW_BODY_NOT_OBJECT, NULL, 0);
    expect_body("{\"model\":\"m\",\"x\":\"\\ud83d\\ude00\"}", GW_BODY_OK, "m", 0);
}

static void test_deep_duplicates(void)
{
    expect_body("{\"model\":\"m\",\"a\":{\"k\":1,\"k\":2}}", GW_BODY_DUPLICATE_KEY, NULL, 0);
    expect_body("{\"model\":\"m\",\"a\":[{\"k\":1,\"k\":2}]}", GW_BODY_DUPLICATE_KEY, NULL, 0);
    expect_body("{\"model\":\"m\",\"a\":[1,[2,{\"b\":{\"c\":[{\"k\":1,\"j\":0,\"k\":2}]}}]]}",
                GW_BODY_DUPLICATE_KEY, NULL, 0);
    expect_body("{\"model\":\"m\",\"stream_options\":{\"include_usage\":true,"
                "\"include_usage\":false}}",
                GW_BODY_DUPLICATE_KEY, NULL, 0);
    expect_body("{\"model\":\"m\",\"a\":[{\"k\":1},{\"k\":2}],\"b\":{\"k\":{\"k\":1}}}", GW_BODY_OK,
                "m", 0);
}

/* Review of issue 14, F1: keys equal under Go's case folding are one key to a Go backend. */
static void test_folded_keys(void)
{
    /* two keys equal under folding, at any depth: ASCII case, U+017F (long s), U+212A (Kelvin) */
    expect_body("{\"model\":\"m\",\"a\":{\"key\":1,\"KEY\":2}}", GW_BODY_DUPLICATE_KEY, NULL, 0);
    expect_body("{\"model\":\"m\",\"a\":[{\"s\":1,\"\xc5\xbf\":2}]}", GW_BODY_DUPLICATE_KEY, NULL,
                0);
    expect_body("{\"model\":\"m\",\"a\":[{\"\xe2\x84\xaa\":1,\"k\":2}]}", GW_BODY_DUPLICATE_KEY,
                NULL, 0);
    expect_body("{\"model\":\"m\",\"a\":{\"\\u017f\":1,\"S\":2}}", GW_BODY_DUPLICATE_KEY, NULL, 0);
    expect_body("{\"model\":\"m1\",\"MODEL\":\"m2\"}", GW_BODY_DUPLICATE_KEY, NULL, 0);
    expect_body("{\"Model\":\"m2\",\"model\":\"m1\"}", GW_BODY_DUPLICATE_KEY, NULL, 0);
    /* many keys (sorted, not pairwise): the pair far apart */
    {
        char text[2048];
        size_t n = (size_t)sprintf(text, "{\"model\":\"m\",\"x\":{\"Abc\":0");
        for (int i = 0; i < 40; i++) n += (size_t)sprintf(text + n, ",\"k%d\":0", i);
        sprintf(text + n, ",\"aBC\":1}}");
        expect_body(text, GW_BODY_DUPLICATE_KEY, NULL, 0);
    }
    /* a key folding onto one the gateway reads, alone */
    expect_body("{\"model\":\"m\",\"Stream\":true}", GW_BODY_FOLDED_KEY, NULL, 0);
    expect_body("{\"model\":\"m\",\"\xc5\xbftream\":true}", GW_BODY_FOLDED_KEY, NULL, 0);
    expect_body("{\"model\":\"m\",\"u\xc5\xbf"
                "er\":\"a\"}",
                GW_BODY_FOLDED_KEY, NULL, 0);
    expect_body("{\"model\":\"m\",\"USER\":\"a\"}", GW_BODY_FOLDED_KEY, NULL, 0);
    expect_body("{\"model\":\"m\",\"Max_Completion_Tokens\":1}", GW_BODY_FOLDED_KEY, NULL, 0);
    expect_body("{\"model\":\"m\",\"stream_options\":null,\"Stream_Options\":{}}",
                GW_BODY_DUPLICATE_KEY, NULL, 0);
    expect_body("{\"model\":\"m\",\"stream_options\":{\"Include_Usage\":false}}",
                GW_BODY_FOLDED_KEY, NULL, 0);
    expect_body("{\"model\":\"m\",\"stream_options\":{\"include_\xe2\x84\xaa\":1}}", GW_BODY_OK,
                "m", 0); /* not include_usage: K is no u */
    /* deeper, the same names are not the gateway's: a tool's schema may have a Model */
    expect_body("{\"model\":\"m\",\"tools\":[{\"Model\":1,\"USER\":2}]}", GW_BODY_OK, "m", 0);
    expect_body("{\"model\":\"m\",\"a\":{\"\xc3\xa9\":1,\"e\":2,\"ss\":3,\"s\":4}}", GW_BODY_OK,
                "m", 0);
}

/* Review of issue 14, F2: what RFC 8259 does not allow and cJSON takes. */
static void test_strict(void)
{
    static const char *const bad[] = {
        "{\"model\":\"m\",\"a\":\"\x01\"}",
        "{\"model\":\"m\",\"a\":\"\x1f\"}",
        "{\"model\":\"m\",\"a\":\"\n\"}",
        "{\"model\":\"m\",\"a\":\"\t\"}",
        "{\"model\":\"m\x7f\x01\"}",
        "{\"k\x02\":1,\"model\":\"m\"}",
        "{\"model\":\"m\",\x0b\"a\":1}",
        "{\"model\":\"m\"}\x0c",
        "\x1c{\"model\":\"m\"}",
        "{\"model\":\"m\",\"a\":010}",
        "{\"model\":\"m\",\"a\":-01}",
        "{\"model\":\"m\",\"a\":00}",
        "{\"model\":\"m\",\"a\":1.}",
        "{\"model\":\"m\",\"a\":.5}",
        "{\"model\":\"m\",\"a\":-.5}",
        "{\"model\":\"m\",\"a\":1.e5}",
        "{\"model\":\"m\",\"a\":+1}",
        "{\"model\":\"m\",\"a\":1e}",
        "{\"model\":\"m\",\"a\":1e+}",
        "{\"model\":\"m\",\"a\":-}",
        "{\"model\":\"m\",\"a\":0x1}",
        "{\"model\":\"m\",\"a\":\"\\x41\"}",
        "{\"model\":\"m\",\"a\":\"\\u41\"}",
        "{\"model\":\"m\",\"a\":\"\\u12g4\"}",
        "{\"model\":\"m\",\"a\":\"abc",
        "{\"model\":\"m\",\"a\":\"abc\\",
        "{\"model\":\"m\",\"a\":True}",
        "{\"model\":\"m\",\"a\":nul}",
        "{\"model\":\"m\",\xc2\xa0\"a\":1}",
        "{\"model\":\"m\",\"a\":1.5.5}",
        "{\"model\":\"m\",\"a\":1e5e5}",
        "{\"model\":\"m\",\"a\":\"0123456789abcdef\x01\"}", /* past the 8-byte steps */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_body(bad[i], GW_BODY_NOT_JSON, NULL, 0);
    expect_body("{\"model\":\"m\",\"a\":\"\\u0001\\b\\f\\n\\r\\t\\/\\\\\\\"\\uABcd\"}", GW_BODY_OK,
                "m", 0);
    expect_body(
        " \t\r\n{ \"model\" :\"m\" , \"a\":[0,-0,1,-1,0.5,-0.5,10,1e5,1E5,1e+5,1e-5,1.5e3,0e0,"
        "-0.0E-0,true,false,null,\"0123456789abcdef\\\"x\"] }\r\n",
        GW_BODY_OK, "m", 0);
    /* each special byte at every offset of the eight-byte steps (and \u0000 and a valid
     * two-byte character), in a string after a run of plain text */
    for (int at = 0; at < 20; at++) {
        static const struct {
            const char *bytes;
            int want;
        } special[] = {{"\x01", GW_BODY_NOT_JSON}, {"\x1f", GW_BODY_NOT_JSON},
                       {"\x7f", GW_BODY_OK},       {"\xff", GW_BODY_BAD_UTF8},
                       {"\xc3\xa9", GW_BODY_OK},   {"\\u0000", GW_BODY_NUL},
                       {"\\q", GW_BODY_NOT_JSON},  {"\\\"", GW_BODY_OK}};
        for (size_t k = 0; k < sizeof(special) / sizeof(special[0]); k++) {
            char text[128];
            snprintf(text, sizeof(text), "{\"model\":\"m\",\"a\":\"%.*s%s0123456789abcdefghij\"}",
                     at, "0123456789abcdefghijklmnop", special[k].bytes);
            expect_body(text, special[k].want, special[k].want == GW_BODY_OK ? "m" : NULL, 0);
        }
    }
    /* bad UTF-8 is said first, also after what is not JSON */
    expect_body("{\"model\":\"m\",\"a\":\"\x01\xff\"}", GW_BODY_BAD_UTF8, NULL, 0);
    expect_body("{\"model\":\"m\",\"a\":+\xc0\xaf}", GW_BODY_BAD_UTF8, NULL, 0);
}

/* Review of issue 14, F3: numbers a re-printed body cannot carry exactly are refused. */
static void test_inexact_numbers(void)
{
    static const char *const bad[] = {"123456789012345678",
                                      "9007199254740993",
                                      "-9007199254740993",
                                      "18446744073709551616",
                                      "1e400",
                                      "-1e400",
                                      "1E309"};
    char text[128];
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(text, sizeof(text), "{\"model\":\"m\",\"a\":[{\"b\":%s}]}", bad[i]);
        expect_body(text, GW_BODY_INEXACT_NUMBER, NULL, 0);
    }
    static const char *const ok[] = {"9007199254740992",
                                     "-9007199254740992",
                                     "9007199254740991",
                                     "1e20",
                                     "2.5e300",
                                     "1.7976931348623157e308",
                                     "0.30000000000000004",
                                     "1e-400",
                                     "12345678901234567.5"};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        snprintf(text, sizeof(text), "{\"model\":\"m\",\"a\":[{\"b\":%s}]}", ok[i]);
        expect_body(text, GW_BODY_OK, "m", 0);
    }
}

/* Numbers printed exactly after gw_body_exact_numbers: as text that reads back the same. */
static void test_exact_numbers(void)
{
    static const char *const cases[][2] = {
        {"9007199254740991", "9007199254740991"},
        {"-9007199254740992", "-9007199254740992"},
        {"0.30000000000000004", "0.30000000000000004"},
        {"0.1", "0.1"},
        {"1e15", "1000000000000000"},
        {"1.0", "1"},
        {"-0", "-0"},
        {"1e-7", "1e-07"},
        {"2.5e300", "2.5e+300"},
        {"1e20", "1e+20"},
        {"4.35", "4.35"},
        {"5e-324", "4.94065645841247e-324"},
        {"1.7976931348623157e308", "1.7976931348623157e+308"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char text[160], want[160];
        snprintf(text, sizeof(text), "{\"a\":%s,\"b\":[%s,{\"c\":%s}]}", cases[i][0], cases[i][0],
                 cases[i][0]);
        snprintf(want, sizeof(want), "{\"a\":%s,\"b\":[%s,{\"c\":%s}]}", cases[i][1], cases[i][1],
                 cases[i][1]);
        gw_arena_t *a = gw_arena_new(4096);
        cJSON *json = gw_json_parse(a, text, strlen(text), NULL);
        CHECK(json && gw_body_exact_numbers(json) == 0, "%s: converted", cases[i][0]);
        char *s = json ? cJSON_PrintUnformatted(json) : NULL;
        CHECK(s && strcmp(s, want) == 0, "%s: printed %s", cases[i][0], s ? s : "(null)");
        cJSON_free(s);
        cJSON_Delete(json); /* frees the raw texts from the heap */
        gw_arena_free(a);
    }
}

/* A number a plugin put into the tree that JSON cannot hold stays cJSON's: printed as null. */
static void test_exact_numbers_nonfinite(void)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "a", INFINITY);
    cJSON_AddNumberToObject(o, "b", 0.5);
    CHECK(gw_body_exact_numbers(o) == 0, "converted");
    char *s = cJSON_PrintUnformatted(o);
    CHECK(s && strcmp(s, "{\"a\":null,\"b\":0.5}") == 0, "printed %s", s ? s : "(null)");
    cJSON_free(s);
    cJSON_Delete(o);
}

static void expect_usage_asked(const char *text, int want, int asked)
{
    size_t len;
    char *p = copy_of(text, &len);
    gw_body_t b;
    int rc = gw_body_inspect(NULL, p, len, &b);
    CHECK(rc == want && b.usage_asked == asked, "%s: rc %d asked %d", text, rc, b.usage_asked);
    if (rc == GW_BODY_OK) {
        int changed = gw_body_ask_usage(b.json);
        const cJSON *so = cJSON_GetObjectItemCaseSensitive(b.json, "stream_options");
        CHECK(changed == !asked &&
                  cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(so, "include_usage")) &&
                  cJSON_GetArraySize(so) >= 1,
              "%s: ask_usage %d", text, changed);
    }
    cJSON_Delete(b.json);
    free(p);
}

static void test_stream_options(void)
{
    expect_usage_asked("{\"model\":\"m\",\"stream\":true}", GW_BODY_OK, 0);
    expect_usage_asked("{\"model\":\"m\",\"stream\":true,\"stream_options\":null}", GW_BODY_OK, 0);
    expect_usage_asked("{\"model\":\"m\",\"stream_options\":{}}", GW_BODY_OK, 0);
    expect_usage_asked("{\"model\":\"m\",\"stream_options\":{\"include_usage\":false,\"x\":1}}",
                       GW_BODY_OK, 0);
    expect_usage_asked("{\"model\":\"m\",\"stream_options\":{\"include_usage\":null}}", GW_BODY_OK,
                       0);
    expect_usage_asked("{\"model\":\"m\",\"stream_options\":{\"include_usage\":true}}", GW_BODY_OK,
                       1);
    expect_usage_asked("{\"model\":\"m\",\"stream_options\":5}", GW_BODY_BAD_STREAM_OPTIONS, 0);
    expect_usage_asked("{\"model\":\"m\",\"stream_options\":[]}", GW_BODY_BAD_STREAM_OPTIONS, 0);
    expect_usage_asked("{\"model\":\"m\",\"stream_options\":{\"include_usage\":\"true\"}}",
                       GW_BODY_BAD_STREAM_OPTIONS, 0);
    expect_usage_asked("{\"model\":\"m\",\"stream_options\":{\"include_usage\":1}}",
                       GW_BODY_BAD_STREAM_OPTIONS, 0);
    static const struct {
        const char *s;
        int is;
    } chunks[] = {
        {"{\"choices\":[],\"usage\":{\"prompt_tokens\":1}}", 1},
        {" {\"id\":\"x\",\"choices\":[],\"usage\":{}}\n", 1},
        {"{\"choices\":[{\"delta\":{}}],\"usage\":{\"prompt_tokens\":1}}", 0},
        {"{\"choices\":[],\"usage\":null}", 0},
        {"{\"usage\":{\"prompt_tokens\":1}}", 0},
        {"[DONE]", 0},
        {"{\"choices\":[],\"usage\":{", 0},
    };
    for (size_t i = 0; i < sizeof(chunks) / sizeof(chunks[0]); i++) {
        size_t len;
        char *p = copy_of(chunks[i].s, &len);
        gw_arena_t *a = gw_arena_new(1024);
        CHECK(gw_body_is_usage_chunk(a, p, len) == chunks[i].is, "usage chunk %s", chunks[i].s);
        gw_arena_free(a);
        free(p);
    }
}

static void expect_usage(const char *text, int want, int64_t prompt, int64_t completion)
{
    size_t len;
    char *p = copy_of(text, &len);
    gw_arena_t *a = gw_arena_new(1024);
    int64_t pt = -1, ct = -1;
    size_t at = 0;
    int found = gw_body_usage(a, p, len, &pt, &ct, &at);
    CHECK(found == want && (!found || (pt == prompt && ct == completion && p[at] == '{')),
          "%s: found %d prompt %lld completion %lld", text, found, (long long)pt, (long long)ct);
    gw_arena_free(a);
    free(p);
}

static void test_usage(void)
{
    expect_usage("{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\",\"choices\":[{\"index\":0,"
                 "\"message\":{\"role\":\"assistant\",\"content\":\"Hi!\"}}],"
                 "\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3,\"total_tokens\":15}}",
                 1, 12, 3);
    expect_usage(" {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],"
                 "\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":40}}",
                 1, 9, 40);
    expect_usage("{\"usage\" \r\n:\t {\"prompt_tokens\" : 7 , \"completion_tokens\":9}}", 1, 7, 9);
    /* A partial usage is none (the caller's estimate applies): a fractional, negative, huge or
     * missing completion_tokens (without total_tokens). */
    expect_usage("{\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":0.9}}", 0, 0, 0);
    expect_usage("{\"usage\":{\"prompt_tokens\":7,\"total_tokens\":7}}", 1, 7, 0);
    expect_usage("{\"choices\":[{\"delta\":{\"content\":\"x\"}}],\"usage\":null}", 0, 0, 0);
    expect_usage("{\"usage\":{\"prompt_tokens\":1},\"x\":{\"usage\":{\"prompt_tokens\":2,"
                 "\"completion_tokens\":3}}}",
                 1, 2, 3); /* the last one */
    expect_usage("{\"choices\":[{\"message\":{\"content\":\"\\\"usage\\\": {\\\"prompt_tokens\\\": "
                 "999}\"}}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}",
                 1, 1, 2); /* a content holding the text of a usage */
    expect_usage("{\"usage\":{\"prompt_tokens\":-1,\"completion_tokens\":3}}", 0, 0, 0);
    expect_usage("{\"usage\":{\"prompt_tokens\":1e12}}", 0, 0, 0);
    expect_usage("{\"usage\":{\"prompt_tokens\":\"12\"}}", 0, 0, 0);
    expect_usage("{\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1e300}}", 0, 0, 0);
    expect_usage("{\"usage\":{\"prompt_tokens\":12,\"completion_tok", 0, 0, 0); /* cut short */
    expect_usage("\"usage\":", 0, 0, 0);
    expect_usage("", 0, 0, 0);
    /* fuzz_json: the end of a key posed as "usage" ({"a\"usage": ...} is the key a"usage). */
    expect_usage("{\"a\\\"usage\":{\"prompt_tokens\":5}}", 0, 0, 0);
    expect_usage("{\"a\\\\\":1,\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1}}", 1, 5,
                 1); /* "a\\" ends there */
    expect_usage("{\"a\\\"usage\":{\"prompt_tokens\":5},\"usage\":{\"prompt_tokens\":6,"
                 "\"completion_tokens\":2}}",
                 1, 6, 2);
}

int main(void)
{
    gw_json_init();
    test_inspect();
    test_many_keys();
    test_budget();
    test_utf8();
    test_deep_duplicates();
    test_folded_keys();
    test_strict();
    test_inexact_numbers();
    test_exact_numbers();
    test_exact_numbers_nonfinite();
    test_stream_options();
    test_usage();
    return check_done();
}
