/* Unit tests of loading a config from text, and of GW_CONFIG_OFFLINE (gateway/config.c): a
 * config checked without name resolution, key or TLS files, GeoIP databases or plugins; and of
 * the loader's answers to what fuzz_config found. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <string.h>

#include "check.h"
#include "config/config.h"
#include "config/load.h"
#include "base/json.h"
#include "store/backend_geo.h"

/* Every outside thing a config can name, none of which exists here. */
static const char outside[] =
    "{\"listen\":[{\"address\":\"127.0.0.1:0\",\"tls\":{\"cert\":\"/nonexistent/cert.pem\","
    "\"key\":\"/nonexistent/key.pem\"}}],"
    "\"admin\":{\"address\":\"127.0.0.1:0\"},"
    "\"geoip\":{\"databases\":[\"/nonexistent/site.mmdb\"]},"
    "\"residency\":{\"allowed_countries\":[\"CH\"]},"
    "\"resolver\":{\"hosts_file\":\"/nonexistent/hosts\"},"
    "\"plugins\":[{\"path\":\"/nonexistent/plugin.so\",\"config\":{\"x\":1}}],"
    "\"pools\":[{\"name\":\"p\",\"models\":[\"m\"],\"backends\":["
    "{\"url\":\"http://vllm-0.inference.invalid:8000\",\"country\":\"CH\"},"
    "{\"url\":\"https://10.0.0.1:8443\",\"country\":\"CH\",\"ca_file\":\"/nonexistent/ca.pem\","
    "\"api_key_file\":\"/nonexistent/key\"},"
    "{\"url\":\"http://"
    "10.0.0.2:8000\",\"country\":\"CH\",\"api_key_env\":\"GW_TEST_UNSET_KEY\"}]}]}";

/* A copy without a terminating NUL: the loader must keep to the length. */
static gw_config_t *load(const char *text, unsigned flags, char **errors)
{
    size_t len = strlen(text);
    char *p = malloc(len ? len : 1);
    memcpy(p, text, len);
    gw_config_t *c = gw_config_load_text(p, len, flags, errors);
    free(p);
    return c;
}

static int has_line(const char *errors, const char *prefix)
{
    for (const char *l = errors; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : "")
        if (strncmp(l, prefix, strlen(prefix)) == 0) return 1;
    return 0;
}

static void test_offline(void)
{
    unsetenv("GW_TEST_UNSET_KEY");
    char *errors = NULL;
    gw_config_t *c = load(outside, GW_CONFIG_OFFLINE, &errors);
    CHECK(c != NULL, "offline: %s", errors ? errors : "");
    if (c) {
        CHECK(c->nbackends == 3, "backends");
        for (size_t i = 0; i < c->nbackends; i++) {
            gw_backend_t *b = c->backends[i];
            CHECK(!atomic_load(&b->res) && !b->ssl && !b->auth_line, "backend %zu untouched", i);
        }
        CHECK(strcmp(c->backends[0]->name, "vllm-0.inference.invalid:8000") == 0, "named host");
        CHECK(c->backends[1]->tls == 1, "https");
        gw_listen_t *ls = c->listen.items;
        CHECK(ls[0].tls && !ls[0].ssl && ls[0].sslen, "listener: address, no TLS context");
        CHECK(c->residency != NULL, "the residency policy, without its databases");
        for (size_t i = 0; i < c->nplugins; i++)
            CHECK(c->plugins[i].dl == NULL, "no external plugin loaded");
        CHECK(c->plugin_entries.n == 1, "the external plugin's entry is kept");
        gw_config_unref(c);
    }
    free(errors);
}

/* The same config, for real (with a numeric host: no DNS in a unit test), fails on each. */
static void test_online_fails(void)
{
    const char *name = "vllm-0.inference.invalid", *at = strstr(outside, name);
    char text[sizeof(outside)];
    size_t k = (size_t)(at - outside);
    memcpy(text, outside, k);
    memcpy(text + k, "127.0.0.1", 9);
    strcpy(text + k + 9, at + strlen(name));
    char *errors = NULL;
    gw_config_t *c = load(text, 0, &errors);
    CHECK(!c, "refused");
    CHECK(has_line(errors, "$.listen[0].tls: "), "TLS files: %s", errors ? errors : "");
    CHECK(has_line(errors, "$.pools[0].backends[0].url: cannot read the hosts file"),
          "hosts file: %s", errors ? errors : "");
    if (c) gw_config_unref(c);
    free(errors);
}

/* The offline check still refuses what is wrong in the text itself. */
static void test_offline_still_checks(void)
{
    char *errors = NULL;
    gw_config_t *c = load("{\"listen\":[{\"address\":\"localhost:80\"}],\"admin\":{\"address\":"
                          "\"127.0.0.1:0\"},\"pools\":[{\"name\":\"p\",\"models\":[\"m\"],"
                          "\"backends\":[{\"url\":\"http://a_b:80\",\"country\":\"CH\","
                          "\"api_key_env\":\"A\",\"api_key_file\":\"B\"},{\"url\":\"http://x:1\","
                          "\"country\":\"CH\",\"ca_file\":\"c.pem\"}]}]}",
                          GW_CONFIG_OFFLINE, &errors);
    CHECK(!c, "refused");
    CHECK(has_line(errors, "$.listen[0].address: "), "numeric listener: %s", errors);
    CHECK(has_line(errors, "$.pools[0].backends[0].url: "), "bad host: %s", errors);
    CHECK(has_line(errors, "$.pools[0].backends[1].ca_file: is only for https"), "ca_file: %s",
          errors);
    if (c) gw_config_unref(c);
    free(errors);
}

static const char base[] = "\"listen\":[{\"address\":\"127.0.0.1:0\"}],\"admin\":{\"address\":"
                           "\"127.0.0.1:0\"},\"pools\":[{\"name\":\"p\",\"models\":[\"m\"],"
                           "\"backends\":[{\"url\":\"http://127.0.0.1:1\",\"country\":\"CH\"}]}]";

static void expect(const char *extra, const char *line)
{
    char text[1024];
    snprintf(text, sizeof(text), "{%s,%s}", base, extra);
    char *errors = NULL;
    gw_config_t *c = load(text, GW_CONFIG_OFFLINE, &errors);
    CHECK(!c && has_line(errors, line), "%s: want %s, got %s", extra, line,
          errors ? errors : "(loaded)");
    for (const char *l = errors; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : "")
        CHECK(l[0] == '$' && strchr(l, '\n'), "every line a path: %s", errors);
    if (c) gw_config_unref(c);
    free(errors);
}

/* What fuzz_config found, and an external plugin's entry checked offline. */
static void test_found_by_fuzzing(void)
{
    expect("\"plugins\":[{}]", "$.plugins[0].path: is required"); /* checked, not loaded */
    /* A key with a line break made an error line that did not start with its path; since the
     * admin review, a key with a control character is refused at its object's path. */
    expect("\"bad\\nkey\":1", "$: has a key that is not valid UTF-8 or holds a control");
    expect("\"limits\":{\"x\\r\\n$.y\":1}",
           "$.limits: has a key that is not valid UTF-8 or holds a control");
    /* Strings: UTF-8 without control characters, and \u0000 not cut short (admin review). */
    static const char *const bad_names[] = {"z\xfcrich", "p\xc0\xafx", "p\xed\xa0\x80x", "p\x01x",
                                            "p\\u0000x", "p\\u001fx",  "p\x7fx",         "\\u0000"};
    for (size_t i = 0; i < sizeof(bad_names) / sizeof(*bad_names); i++) {
        char extra[128];
        snprintf(extra, sizeof(extra), "\"tenants\":[{\"id\":\"%s\",\"models\":[\"*\"]}]",
                 bad_names[i]);
        expect(extra, "$.tenants[0].id: must be valid UTF-8 without control characters");
    }
    /* valid UTF-8, and an escaped backslash before u0000: past this check, to the id's own */
    expect("\"tenants\":[{\"id\":\"z\xc3\xbcrich\\\\u0000\",\"models\":[\"*\"]}]",
           "$.tenants[0].id: may hold only letters");
    /* A number beyond int64 was cast to one (undefined); now it is out of bounds. */
    expect("\"limits\":{\"max_body_bytes\":1e400}", "$.limits.max_body_bytes: must be between");
    expect("\"limits\":{\"max_body_bytes\":-1e300}", "$.limits.max_body_bytes: must be between");
    expect("\"timeouts\":{\"drain_ms\":9.3e18}", "$.timeouts.drain_ms: must be between");
    expect("\"workers\":1.5", "$.workers: must be an integer, not a number");
    /* auth_jwt's leeway: 1e300 was cast to a long before its bounds were checked. */
    expect("\"tenants\":[{\"id\":\"t\",\"models\":[\"*\"]}],\"jwt\":[{\"issuer\":\"https://i\","
           "\"audience\":\"a\",\"algorithm\":\"HS256\",\"key_file\":\"k\",\"tenant_claim\":\"t\","
           "\"leeway_s\":1e300}]",
           "$.jwt[0].leeway_s: must be an integer between 0 and 300");
}

/* Tenant ids are unique, and checking it stays fast at the config's bound (100,000 tenants):
 * every later holder of an id is named; 50,000 tenants load in well under a second of CPU
 * (quadratic checks took minutes there). */
static void test_tenant_ids(void)
{
    expect("\"tenants\":[{\"id\":\"a\",\"models\":[\"*\"]},{\"id\":\"b\",\"models\":[\"*\"]},{"
           "\"id\":\"a\",\"models\":[\"*\"]}]",
           "$.tenants[2].id: is used by another tenant");
    size_t n = 50000, cap = n * 40 + 1024, len = 0;
    char *text = malloc(cap);
    CHECK(text != NULL, "memory");
    if (!text) return;
    len += (size_t)snprintf(text + len, cap - len, "{%s,\"tenants\":[", base);
    for (size_t i = 0; i < n; i++)
        len += (size_t)snprintf(text + len, cap - len, "%s{\"id\":\"t%zu\",\"models\":[\"*\"]}",
                                i ? "," : "", i);
    snprintf(text + len, cap - len, "]}");
    char *errors = NULL;
    clock_t t0 = clock();
    gw_config_t *c = load(text, GW_CONFIG_OFFLINE, &errors);
    double cpu = (double)(clock() - t0) / CLOCKS_PER_SEC;
    CHECK(c != NULL, "50,000 tenants: %s", errors ? errors : "");
    CHECK(cpu < 10.0, "50,000 tenants took %.1f s of CPU", cpu);
    if (c) gw_config_unref(c);
    free(errors);
    free(text);
}

int main(void)
{
    gw_json_init();
    /* As main.c: a load resolves and judges backends through the store's registered steps. */
    gw_config_set_steps(&gw_backend_geo_config_steps);
    test_offline();
    test_online_fails();
    test_offline_still_checks();
    test_found_by_fuzzing();
    test_tenant_ids();
    return check_done();
}
