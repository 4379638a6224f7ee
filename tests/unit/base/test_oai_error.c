/* Unit tests of the OpenAI-shaped error bodies (gateway/base/oai_error.c). */
#include <string.h>

#include <cjson/cJSON.h>

#include "base/oai_error.h"
#include "check.h"

/* The body's error.<key> as a string, or "" when missing. */
static const char *member(const cJSON *root, const char *key)
{
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(root, "error");
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(e, key);
    return cJSON_IsString(v) ? v->valuestring : "";
}

int main(void)
{
    static const struct {
        int status;
        const char *type;
    } types[] = {{400, "invalid_request_error"}, {401, "authentication_error"},
                 {403, "permission_error"},      {404, "invalid_request_error"},
                 {429, "rate_limit_error"},      {499, "invalid_request_error"},
                 {500, "server_error"},          {503, "server_error"}};
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
        CHECK(strcmp(gw_error_type(types[i].status), types[i].type) == 0, "%d: %s", types[i].status,
              gw_error_type(types[i].status));

    char buf[256];
    size_t n = gw_error_json(buf, sizeof(buf), 429, "rate_limit_exceeded", "Slow down.");
    CHECK(n == strlen(buf) && n > 0, "length %zu", n);
    cJSON *j = cJSON_Parse(buf);
    CHECK(j != NULL, "parses: %s", buf);
    CHECK(strcmp(member(j, "message"), "Slow down.") == 0, "message");
    CHECK(strcmp(member(j, "type"), "rate_limit_error") == 0, "type");
    CHECK(strcmp(member(j, "code"), "rate_limit_exceeded") == 0, "code");
    const cJSON *param = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItem(j, "error"), "param");
    CHECK(cJSON_IsNull(param), "param is null");
    cJSON_Delete(j);
    CHECK(strcmp(buf, "{\"error\":{\"message\":\"Slow down.\",\"type\":\"rate_limit_error\","
                      "\"param\":null,\"code\":\"rate_limit_exceeded\"}}") == 0,
          "the exact bytes: %s", buf);

    /* Too small: nothing, and an empty string, never a cut body. */
    char small[20];
    memset(small, 'x', sizeof(small));
    CHECK(gw_error_json(small, sizeof(small), 500, "internal_error", "Failed.") == 0 &&
              small[0] == '\0',
          "too small");
    CHECK(gw_error_json(NULL, 0, 500, "internal_error", "Failed.") == 0, "no room at all");
    return check_done();
}
