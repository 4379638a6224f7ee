/* Unit tests of the auth_apikey plugin's config (plugins/auth_apikey/auth_apikey.c): tenants'
 * keys, the Redis store, and every refusal at its path, never quoting a digest. */
#include <string.h>

#include "plugins/conf_load.h"

#define D1 "1111111111111111111111111111111111111111111111111111111111111111"
#define D2 "abcdefABCDEF0123456789abcdefABCDEF0123456789abcdefABCDEF01234567"
#define KEY(id, sha) "{\"id\":\"" id "\",\"sha256\":\"" sha "\"}"
#define TENANTS(a, b)                                                                              \
    "\"tenants\":[{\"id\":\"a\",\"models\":[\"*\"]" a "},{\"id\":\"b\",\"models\":[\"*\"]" b "}]"
#define REDIS "\"redis\":{\"url\":\"redis://127.0.0.1:6379\"}"

static void test_taken(void)
{
    conf_taken("", "auth_apikey", 0);
    conf_taken(TENANTS("", ",\"api_keys\":[]"), "auth_apikey", 0); /* no key: off */
    conf_taken(TENANTS(",\"api_keys\":[" KEY("a-1", D1) "," KEY("a_2.x", D2) "]", ""),
               "auth_apikey", 1);
    conf_taken(REDIS ",\"api_keys\":{\"redis\":true,\"cache_ms\":0}," TENANTS("", ""),
               "auth_apikey", 1);
    conf_taken("\"api_keys\":{\"redis\":false,\"cache_ms\":300000}," TENANTS("", ""), "auth_apikey",
               0);
}

/* Refused at line, and the digest (a credential's) is in no line. */
static void refused(const char *extra, const char *line)
{
    conf_refused(extra, line);
    char *errors;
    gw_config_t *c = conf_load(extra, &errors);
    CHECK(!errors || !strstr(errors, D1), "a digest quoted: %s", errors);
    if (c) gw_config_unref(c);
    free(errors);
}

static void test_refused(void)
{
    refused(TENANTS(",\"api_keys\":[" KEY("a-1", D1) "]", ",\"api_keys\":[" KEY("b-1", D1) "]"),
            "$.tenants[1].api_keys[0].sha256: is the digest of another key");
    refused(TENANTS(",\"api_keys\":[" KEY("a-1", D1) "," KEY("a-2", D1) "]", ""),
            "$.tenants[0].api_keys[1].sha256: is the digest of another key");
    refused(TENANTS(",\"api_keys\":[" KEY("a-1", "abc") "]", ""),
            "$.tenants[0].api_keys[0].sha256: must be 64 hexadecimal digits");
    refused(TENANTS(",\"api_keys\":[" KEY("a-1", D1 "1") "]", ""),
            "$.tenants[0].api_keys[0].sha256: must be 64 hexadecimal digits");
    refused(TENANTS("", ",\"api_keys\":[{\"sha256\":\"" D1 "\"}]"),
            "$.tenants[1].api_keys[0].id: is required");
    refused(TENANTS(",\"api_keys\":[" KEY("a 1", D1) "]", ""),
            "$.tenants[0].api_keys[0].id: must be letters, digits");
    refused(TENANTS(",\"api_keys\":[{\"id\":\"a\",\"sha256\":\"" D1 "\",\"key\":\"gk_x\"}]", ""),
            "$.tenants[0].api_keys[0].key: unknown key");
    refused(TENANTS(",\"api_keys\":[\"" D1 "\"]", ""),
            "$.tenants[0].api_keys[0]: must be an object");
    refused(TENANTS(",\"api_keys\":{}", ""), "$.tenants[0].api_keys: must be an array");
    refused("\"api_keys\":{\"redis\":true}," TENANTS("", ""),
            "$.api_keys.redis: needs the top-level redis");
    refused(REDIS ",\"api_keys\":{\"redis\":\"yes\"}", "$.api_keys.redis: must be true or false");
    refused(REDIS ",\"api_keys\":{\"cache_ms\":300001}", "$.api_keys.cache_ms: must be between");
    refused(REDIS ",\"api_keys\":{\"cache_ms\":1.5}", "$.api_keys.cache_ms: must be an integer");
    refused(REDIS ",\"api_keys\":{\"cache\":1}", "$.api_keys.cache: unknown key");
    refused(REDIS ",\"api_keys\":[]", "$.api_keys: must be an object");
}

int main(void)
{
    test_taken();
    test_refused();
    return check_done();
}
