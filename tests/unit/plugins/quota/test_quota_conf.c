/* Unit tests of the quota plugin's config (plugins/quota/quota.c): a tenant's limits, its
 * models' overrides, and every refusal at its path. */
#include "plugins/conf_load.h"

#define TENANT(keys) "\"tenants\":[{\"id\":\"t\",\"models\":[\"*\"]" keys "}]"

static void test_taken(void)
{
    conf_taken("", "quota", 0); /* no tenants: nothing to count */
    conf_taken(TENANT(""), "quota", 1);
    conf_taken(TENANT(",\"limits\":{\"requests_per_minute\":0,\"tokens_per_minute\":10000000000,"
                      "\"tokens_per_day\":5,\"max_concurrent\":2,"
                      "\"models\":{\"m\":{\"requests_per_minute\":1},\"n\":{}}}"),
               "quota", 1);
}

static void test_refused(void)
{
    conf_refused(TENANT(",\"limits\":[]"), "$.tenants[0].limits: must be an object");
    conf_refused(TENANT(",\"limits\":{\"tokens_per_hour\":1}"),
                 "$.tenants[0].limits.tokens_per_hour: unknown key");
    conf_refused(
        TENANT(",\"limits\":{\"requests_per_minute\":-1}"),
        "$.tenants[0].limits.requests_per_minute: must be between 0 and 10000000000 (0: no limit)");
    conf_refused(TENANT(",\"limits\":{\"tokens_per_minute\":10000000001}"),
                 "$.tenants[0].limits.tokens_per_minute: must be between");
    conf_refused(TENANT(",\"limits\":{\"tokens_per_day\":1.5}"),
                 "$.tenants[0].limits.tokens_per_day: must be an integer");
    conf_refused(TENANT(",\"limits\":{\"max_concurrent\":\"2\"}"),
                 "$.tenants[0].limits.max_concurrent: must be an integer");
    conf_refused(TENANT(",\"limits\":{\"models\":[]}"),
                 "$.tenants[0].limits.models: must be an object of model name to limits");
    conf_refused(TENANT(",\"limits\":{\"models\":{\"m\":7}}"),
                 "$.tenants[0].limits.models.m: must be an object");
    conf_refused(TENANT(",\"limits\":{\"models\":{\"m\":{\"models\":{}}}}"),
                 "$.tenants[0].limits.models.m.models: unknown key");
    conf_refused(TENANT(",\"limits\":{\"models\":{\"m\":{\"max_concurrent\":-2}}}"),
                 "$.tenants[0].limits.models.m.max_concurrent: must be between");
}

int main(void)
{
    test_taken();
    test_refused();
    return check_done();
}
