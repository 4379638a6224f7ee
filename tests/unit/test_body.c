/* Unit tests of the JSON read from bodies (gateway/body.c): a request body's verdict, model and
 * stream; an answer's usage. Texts are exact copies without a terminating NUL. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "body.h"
#include "check.h"
#include "json.h"

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
    expect_body("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", GW_BODY_OK,
                "m", 0);
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
    expect_body("{\"model\":\"m\"} x", GW_BODY_NOT_OBJECT, NULL, 0);
    expect_body("{\"model\":\"m\"}{}", GW_BODY_NOT_OBJECT, NULL, 0);
    expect_body("{\"model\":\"m\"", GW_BODY_NOT_OBJECT, NULL, 0);
    expect_body("", GW_BODY_NOT_OBJECT, NULL, 0);
    /* fuzz_json: cJSON ends a string at \u0000; the backend does not. */
    expect_body("{\"model\\u0000x\":\"m\"}", GW_BODY_NUL, NULL, 0);
    expect_body("{\"model\":\"m\\u0000evil\"}", GW_BODY_NUL, NULL, 0);
    expect_body("{\"model\":\"m\",\"messages\":[{\"content\":\"a\\u0000\"}]}", GW_BODY_NUL, NULL, 0);
    expect_body("{\"model\":\"m\",\"x\":\"\\\\u0000\"}", GW_BODY_OK, "m", 0); /* the text \u0000 */
    expect_body("{\"model\":\"m\",\"x\":\"\\\\\\u0000\"}", GW_BODY_NUL, NULL, 0); /* \\ then \u0000 */
    expect_body("{\"model\":\"m\",\"x\":\"\\u0001\"}", GW_BODY_OK, "m", 0);
    /* a raw NUL: not JSON, but cJSON takes it and ends the string there */
    {
        const char raw[] = "{\"model\":\"allowed\0evil\",\"mo\0del\":1}";
        gw_body_t b;
        int rc = gw_body_inspect(NULL, raw, sizeof(raw) - 1, &b);
        CHECK(rc == GW_BODY_NUL, "a raw NUL: %d", rc);
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
    const int n = 300000;
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
    len = open + (size_t)sprintf(p + open, ",\"k123456\":1}");
    a = gw_arena_new(4096);
    CHECK(gw_body_inspect(a, p, len, &b) == GW_BODY_DUPLICATE_KEY, "one duplicate, far apart");
    gw_arena_free(a);
    CHECK(gw_body_inspect(NULL, p, len, &b) == GW_BODY_DUPLICATE_KEY, "the same on the heap");
    cJSON_Delete(b.json);
    free(p);
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
    expect_usage("{\"usage\" \r\n:\t {\"prompt_tokens\" : 7 , \"completion_tokens\":0.9}}", 1, 7,
                 0);
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
    expect_usage("{\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1e300}}", 1, 5, 0);
    expect_usage("{\"usage\":{\"prompt_tokens\":12,\"completion_tok", 0, 0, 0); /* cut short */
    expect_usage("\"usage\":", 0, 0, 0);
    expect_usage("", 0, 0, 0);
    /* fuzz_json: the end of a key posed as "usage" ({"a\"usage": ...} is the key a"usage). */
    expect_usage("{\"a\\\"usage\":{\"prompt_tokens\":5}}", 0, 0, 0);
    expect_usage("{\"a\\\\\":1,\"usage\":{\"prompt_tokens\":5}}", 1, 5, 0); /* "a\\" ends there */
    expect_usage("{\"a\\\"usage\":{\"prompt_tokens\":5},\"usage\":{\"prompt_tokens\":6}}", 1, 6, 0);
}

int main(void)
{
    gw_json_init();
    test_inspect();
    test_many_keys();
    test_usage();
    return check_done();
}
