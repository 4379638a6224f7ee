/* Unit tests of the residency plugin's config (plugins/residency/residency.c): the global policy,
 * a tenant's own, and every refusal at its path. Offline: the databases are not opened. */
#include <string.h>

#include "plugins/conf_load.h"

#define GEOIP "\"geoip\":{\"databases\":[\"/nonexistent/site.mmdb\"]}"
#define POLICY "\"residency\":{\"allowed_countries\":[\"CH\",\"LI\"]}"
#define TENANT(keys) "\"tenants\":[{\"id\":\"t\",\"models\":[\"*\"]" keys "}]"

static void test_taken(void)
{
    conf_taken("", "residency", 0);
    conf_taken(TENANT(""), "residency", 0);
    conf_taken(GEOIP "," POLICY, "residency", 1);
    conf_taken(GEOIP ",\"residency\":{\"allowed_countries\":[\"CH\",\"CH\"],"
                     "\"allow_refused_backends\":true}",
               "residency", 1);
    conf_taken(GEOIP "," POLICY "," TENANT(",\"residency\":{\"allowed_countries\":[\"LI\"]},"
                                           "\"client_countries\":[\"CH\",\"DE\"]"),
               "residency", 1);
}

static void test_global_refused(void)
{
    conf_refused(POLICY, "$.geoip: is required with residency");
    conf_refused(GEOIP, "$.residency: is required with geoip");
    conf_refused(GEOIP ",\"residency\":[]", "$.residency: must be an object");
    conf_refused(GEOIP ",\"residency\":{}", "$.residency.allowed_countries: is required");
    conf_refused(GEOIP ",\"residency\":{\"allowed_countries\":[]}",
                 "$.residency.allowed_countries: is empty");
    conf_refused(GEOIP ",\"residency\":{\"allowed_countries\":\"CH\"}",
                 "$.residency.allowed_countries: must be an array");
    conf_refused(GEOIP ",\"residency\":{\"allowed_countries\":[\"CH\",\"ch\"]}",
                 "$.residency.allowed_countries[1]: must be an ISO");
    conf_refused(GEOIP ",\"residency\":{\"allowed_countries\":[\"CHE\"]}",
                 "$.residency.allowed_countries[0]: must be an ISO");
    conf_refused(GEOIP ",\"residency\":{\"allowed_countries\":[\"CH\"],\"mode\":\"strict\"}",
                 "$.residency.mode: unknown key");
    conf_refused(GEOIP ",\"residency\":{\"allowed_countries\":[\"CH\"],"
                       "\"allow_refused_backends\":1}",
                 "$.residency.allow_refused_backends: must be true or false");
    conf_refused(POLICY ",\"geoip\":{\"databases\":[]}", "$.geoip.databases: must list");
    conf_refused(POLICY ",\"geoip\":{}", "$.geoip.databases: is required");
    conf_refused(POLICY ",\"geoip\":{\"databases\":[\"a\",\"\"]}",
                 "$.geoip.databases[1]: must be the path of a MaxMind DB file");
    conf_refused(POLICY ",\"geoip\":{\"databases\":[\"a\"],\"x\":1}", "$.geoip.x: unknown key");
    char text[6000];
    snprintf(text, sizeof(text), "%s,\"geoip\":{\"databases\":[\"%04097d\"]}", POLICY, 0);
    conf_refused(text, "$.geoip.databases[0]: must be the path of a MaxMind DB file");
    strcpy(text, POLICY ",\"geoip\":{\"databases\":[\"a\"");
    for (int i = 0; i < 16; i++) strcat(text, ",\"a\"");
    strcat(text, "]}");
    conf_refused(text, "$.geoip.databases: must list 1 to 16");
}

static void test_tenant_refused(void)
{
    conf_refused(TENANT(",\"client_countries\":[\"CH\"]"), "$.tenants[0].client_countries: needs");
    conf_refused(TENANT(",\"residency\":{}"), "$.tenants[0].residency: needs the global");
    conf_refused(GEOIP "," POLICY "," TENANT(",\"residency\":{\"allowed_countries\":[\"DE\"]}"),
                 "$.tenants[0].residency.allowed_countries: DE is not allowed by the global");
    conf_refused(GEOIP "," POLICY "," TENANT(",\"residency\":{}"),
                 "$.tenants[0].residency.allowed_countries: is required");
    conf_refused(GEOIP "," POLICY "," TENANT(",\"residency\":{\"allowed_countries\":[\"CH\"],"
                                             "\"x\":1}"),
                 "$.tenants[0].residency.x: unknown key");
    conf_refused(GEOIP "," POLICY "," TENANT(",\"client_countries\":[]"),
                 "$.tenants[0].client_countries: is empty");
    conf_refused(GEOIP "," POLICY "," TENANT(",\"client_countries\":[7]"),
                 "$.tenants[0].client_countries[0]: must be an ISO");
}

int main(void)
{
    test_taken();
    test_global_refused();
    test_tenant_refused();
    return check_done();
}
