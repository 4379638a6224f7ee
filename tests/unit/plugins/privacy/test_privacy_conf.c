/* Unit tests of the privacy plugin's config (plugins/privacy/privacy.c): its defaults, the
 * header lists, the user field and its salt, and every refusal at its path. */
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdlib.h>
#include <string.h>

#include "plugins/conf_load.h"
#include "privacy.h"

extern const gw_plugin_t gw_plugin_privacy;

/* The plugin's part of GET /privacy, through its admin hook (what the admin listener shows). */
static cJSON *privacy_report(void *state)
{
    cJSON *out = cJSON_CreateObject();
    gw_admin_err_t err;
    memset(&err, 0, sizeof(err));
    if (!out || gw_plugin_privacy.admin_report(state, "privacy", NULL, out, &err) != 0) {
        cJSON_Delete(out);
        return NULL;
    }
    cJSON *p = cJSON_DetachItemFromObjectCaseSensitive(out, "privacy");
    cJSON_Delete(out);
    return p;
}

/* The report of {conf_base, extra}'s privacy state (NULL when refused): the settings in force. */
static cJSON *report(const char *extra, gw_config_t **c)
{
    char *errors;
    *c = conf_load(extra, &errors);
    CHECK(*c != NULL, "%s: %s", extra, errors ? errors : "");
    free(errors);
    void *state = conf_plugin_state(*c, "privacy");
    CHECK(!*c || state, "%s: privacy is always on", extra);
    return state ? privacy_report(state) : NULL;
}

static int lists(const cJSON *r, const char *key, const char *name)
{
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(r, key), *e;
    cJSON_ArrayForEach(e, a) if (cJSON_IsString(e) && strcmp(e->valuestring, name) == 0) return 1;
    return 0;
}

static const char *str(const cJSON *r, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(r, key);
    return cJSON_IsString(v) ? v->valuestring : "";
}

static void test_defaults(void)
{
    gw_config_t *c;
    cJSON *r = report("", &c);
    CHECK(strcmp(str(r, "user_field"), "drop") == 0, "user_field drop");
    CHECK(strcmp(str(r, "backend_errors"), "replace") == 0, "backend_errors replace");
    CHECK(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(r, "forward_client_ip")), "no client ip");
    CHECK(lists(r, "strip_request_headers", "cookie") &&
              lists(r, "strip_request_headers", "x-forwarded-for") &&
              lists(r, "strip_request_headers", "cf-ip*"),
          "the default and the address headers stripped");
    CHECK(lists(r, "hide_response_headers", "server") &&
              lists(r, "hide_response_headers", "x-amzn-*"),
          "the default hidden");
    CHECK(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r, "forward_request_headers")) == 0,
          "none forwarded");
    cJSON_Delete(r);
    if (c) gw_config_unref(c);
}

static void test_configured(void)
{
    gw_config_t *c;
    cJSON *r = report("\"privacy\":{\"strip_request_headers\":[\"X-Foo-*\",\"cookie\"],"
                      "\"forward_request_headers\":[\"X-Session-Id\"],\"forward_client_ip\":true,"
                      "\"hide_response_headers\":[],\"backend_errors\":\"pass\","
                      "\"user_field\":\"keep\"}",
                      &c);
    CHECK(lists(r, "strip_request_headers", "x-foo-*") &&
              lists(r, "strip_request_headers", "openai-project"),
          "added to the defaults, lowercase");
    CHECK(lists(r, "forward_request_headers", "x-session-id"), "forwarded");
    CHECK(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r, "hide_response_headers")) == 0,
          "an empty list replaces the defaults");
    CHECK(strcmp(str(r, "backend_errors"), "pass") == 0, "pass");
    CHECK(strcmp(str(r, "user_field"), "keep") == 0, "keep");
    CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "forward_client_ip")), "client ip");
    cJSON_Delete(r);
    if (c) gw_config_unref(c);
}

/* user_field "hash" with the salt from the environment (a trailing newline is not part of it):
 * the user becomes HMAC-SHA256(salt, tenant "\n" user). */
static void test_salt_env(void)
{
    const char *salt = "0123456789abcdef-salt";
    setenv("GW_TEST_PRIVACY_SALT", "0123456789abcdef-salt\n", 1);
    gw_config_t *c;
    cJSON *r = report("\"privacy\":{\"user_field\":\"hash\","
                      "\"user_hash_salt_env\":\"GW_TEST_PRIVACY_SALT\"}",
                      &c);
    CHECK(strcmp(str(r, "user_hash_salt"), "env") == 0, "salt from env: %s",
          str(r, "user_hash_salt"));
    cJSON *body = cJSON_Parse("{\"user\":\"alice\"}");
    void *state = conf_plugin_state(c, "privacy");
    CHECK(state && gw_privacy_user_field(state, "t", body) == 1, "user hashed");
    unsigned char mac[32];
    unsigned len = 0;
    HMAC(EVP_sha256(), salt, (int)strlen(salt), (const unsigned char *)"t\nalice", 7, mac, &len);
    char hex[65];
    for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", mac[i]);
    CHECK(strcmp(str(body, "user"), hex) == 0, "HMAC with the env's salt: %s", str(body, "user"));
    cJSON_Delete(body);
    cJSON_Delete(r);
    if (c) gw_config_unref(c);
    unsetenv("GW_TEST_PRIVACY_SALT");
}

static void test_refused(void)
{
    conf_refused("\"privacy\":[]", "$.privacy: must be an object");
    conf_refused("\"privacy\":{\"colour\":\"blue\"}", "$.privacy.colour: unknown key");
    conf_refused("\"privacy\":{\"user_field\":\"scramble\"}", "$.privacy.user_field: must be");
    conf_refused("\"privacy\":{\"backend_errors\":\"show\"}", "$.privacy.backend_errors: must be");
    conf_refused("\"privacy\":{\"forward_client_ip\":\"yes\"}",
                 "$.privacy.forward_client_ip: must be true or false");
    conf_refused("\"privacy\":{\"strip_request_headers\":\"cookie\"}",
                 "$.privacy.strip_request_headers: must be an array");
    conf_refused("\"privacy\":{\"strip_request_headers\":[\"ok\",\"bad header\"]}",
                 "$.privacy.strip_request_headers[1]: must be a header name");
    conf_refused("\"privacy\":{\"hide_response_headers\":[\"*\"]}",
                 "$.privacy.hide_response_headers[0]: must be a header name");
    conf_refused("\"privacy\":{\"forward_request_headers\":[\"x-a\",\"x-b*\"]}",
                 "$.privacy.forward_request_headers[1]: must be one header name, not a prefix");
    conf_refused("\"privacy\":{\"forward_request_headers\":[\"X-Real-IP\"]}",
                 "$.privacy.forward_request_headers[0]: is a client-address header");
    conf_refused("\"privacy\":{\"forward_request_headers\":[\"x_a\"]}",
                 "$.privacy.forward_request_headers[0]: is never forwarded: a name with '_'");
    conf_refused("\"privacy\":{\"forward_request_headers\":[\"authorization\"]}",
                 "$.privacy.forward_request_headers[0]: is never forwarded: the gateway");
    conf_refused("\"privacy\":{\"user_hash_salt_file\":\"f\",\"user_hash_salt_env\":\"E\"}",
                 "$.privacy: user_hash_salt_file and user_hash_salt_env exclude each other");
    conf_refused("\"privacy\":{\"user_hash_salt_file\":\"/nonexistent/salt\"}",
                 "$.privacy.user_hash_salt_file: cannot read the salt file");
    conf_refused("\"privacy\":{\"user_hash_salt_file\":\"\"}",
                 "$.privacy.user_hash_salt_file: must not be empty");
    unsetenv("GW_TEST_UNSET_SALT");
    conf_refused("\"privacy\":{\"user_hash_salt_env\":\"GW_TEST_UNSET_SALT\"}",
                 "$.privacy.user_hash_salt_env: the environment variable is not set");
    setenv("GW_TEST_SHORT_SALT", "short", 1);
    conf_refused("\"privacy\":{\"user_hash_salt_env\":\"GW_TEST_SHORT_SALT\"}",
                 "$.privacy.user_hash_salt_env: the salt must have between 16 and 4096 bytes");
}

int main(void)
{
    test_defaults();
    test_configured();
    test_salt_env();
    test_refused();
    return check_done();
}
