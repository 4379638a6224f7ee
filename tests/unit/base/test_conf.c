/* Unit tests of the config loader: every bad value is reported with its JSON path. */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "config/config.h"
#include "config/load.h"
#include "base/tls.h"
#include "base/conf.h"

#define BASE_LISTEN                                                                                \
    "\"listen\":[{\"address\":\"127.0.0.1:0\"}],\"admin\":{\"address\":\"127.0.0.1:0\"}"
#define BASE_POOL                                                                                  \
    "\"pools\":[{\"name\":\"p\",\"models\":[\"m1\",\"m2\"],\"backends\":[{\"url\":"                \
    "\"http://127.0.0.1:9\",\"country\":\"CH\"}]}]"

static gw_config_t *load(const char *json, char **errors)
{
    char path[] = "/tmp/gw-test-conf-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return NULL;
    if (write(fd, json, strlen(json)) < 0) return NULL;
    close(fd);
    gw_config_t *c = gw_config_load(path, errors);
    unlink(path);
    return c;
}

/* The config must fail with an error line starting with `path: `. */
static void expect_error(const char *json, const char *path)
{
    char *errors = NULL;
    gw_config_t *c = load(json, &errors);
    char want[256];
    snprintf(want, sizeof(want), "%s: ", path);
    int found = 0;
    for (const char *line = errors; line && *line;
         line = strchr(line, '\n') ? strchr(line, '\n') + 1 : "")
        if (strncmp(line, want, strlen(want)) == 0) found = 1;
    CHECK(!c && found, "want an error at %s, got: %s", path, errors ? errors : "(none)");
    if (c) gw_config_unref(c);
    free(errors);
}

static void test_good(void)
{
    char *errors = NULL;
    gw_config_t *c = load("{" BASE_LISTEN ",\"workers\":3,\"limits\":{\"max_headers\":50},"
                          "\"timeouts\":{\"drain_ms\":0}," BASE_POOL "}",
                          &errors);
    CHECK(c != NULL, "good config: %s", errors ? errors : "");
    if (!c) return;
    CHECK(c->workers == 3, "workers");
    CHECK(c->limits.max_headers == 50 && c->limits.max_header_bytes == 32768,
          "limits and defaults");
    CHECK(c->timeouts.drain_ms == 0 && c->timeouts.keepalive_ms == 60000, "timeouts");
    CHECK(c->nbackends == 1 && strcmp(c->backends[0]->name, "127.0.0.1:9") == 0, "backend name");
    CHECK(gw_config_pool_for_model(c, "m2") != NULL, "route m2");
    CHECK(gw_config_pool_for_model(c, "m3") == NULL, "no route m3");
    CHECK(strstr(c->models_json, "\"m1\"") && strstr(c->models_json, "\"m2\""), "models list");
    gw_config_unref(c);
}

/* Routing: every model to the one pool that lists it, nothing else. */
static void test_routing(void)
{
    char *errors = NULL;
    gw_config_t *c = load("{" BASE_LISTEN ",\"pools\":["
                          "{\"name\":\"a\",\"models\":[\"llama\",\"mixtral\"],\"backends\":[{"
                          "\"url\":\"http://127.0.0.1:1\",\"country\":\"CH\"}]},"
                          "{\"name\":\"b\",\"models\":[\"embed\"],\"backends\":[{\"url\":\"http://"
                          "127.0.0.1:2\",\"country\":\"CH\"},"
                          "{\"url\":\"http://127.0.0.1:3\",\"country\":\"CH\"}]}]}",
                          &errors);
    CHECK(c != NULL, "routing config: %s", errors ? errors : "");
    if (!c) return;
    gw_pool_t *a = gw_config_pool_for_model(c, "llama"), *b = gw_config_pool_for_model(c, "embed");
    CHECK(a && strcmp(a->name, "a") == 0, "llama -> a");
    CHECK(gw_config_pool_for_model(c, "mixtral") == a, "mixtral -> a");
    CHECK(b && strcmp(b->name, "b") == 0 && b->backends.n == 2, "embed -> b with two backends");
    CHECK(!gw_config_pool_for_model(c, "LLAMA") && !gw_config_pool_for_model(c, "llama ") &&
              !gw_config_pool_for_model(c, ""),
          "model names match exactly");
    CHECK(c->nbackends == 3 && c->backends[2]->pool == b && c->backends[2]->index == 2,
          "backend index");
    gw_config_unref(c);
}

static void test_errors(void)
{
    expect_error("{" BASE_LISTEN ",\"workers\":-1," BASE_POOL "}", "$.workers");
    expect_error("{" BASE_LISTEN ",\"workers\":1.5," BASE_POOL "}", "$.workers");
    expect_error("{" BASE_LISTEN ",\"workers\":\"2\"," BASE_POOL "}", "$.workers");
    expect_error("{" BASE_LISTEN ",\"limits\":{\"bogus\":1}," BASE_POOL "}", "$.limits.bogus");
    expect_error("{" BASE_LISTEN ",\"timeouts\":{\"drain_ms\":\"x\"}," BASE_POOL "}",
                 "$.timeouts.drain_ms");
    expect_error("{" BASE_LISTEN ",\"limits\":{\"max_headers\":1}," BASE_POOL "}",
                 "$.limits.max_headers");
    expect_error("{" BASE_LISTEN ",\"nope\":true," BASE_POOL "}", "$.nope");
    expect_error("{" BASE_LISTEN ",\"workers\":1,\"workers\":2," BASE_POOL "}", "$.workers");
    expect_error("{" BASE_LISTEN "}", "$.pools");
    expect_error("{\"admin\":{\"address\":\"127.0.0.1:0\"}," BASE_POOL "}", "$.listen");
    expect_error(
        "{\"listen\":[{\"address\":\"nohost\"}],\"admin\":{\"address\":\"127.0.0.1:0\"}," BASE_POOL
        "}",
        "$.listen[0].address");
    expect_error("{" BASE_LISTEN ",\"pools\":[{\"name\":\"p\",\"models\":[\"m\"],\"backends\":[{"
                 "\"url\":\"ftp://x\",\"country\":\"CH\"}]}]}",
                 "$.pools[0].backends[0].url");
    expect_error("{" BASE_LISTEN ",\"pools\":[{\"name\":\"p\",\"models\":[\"m\"],\"backends\":[{"
                 "\"url\":\"http://127.0.0.1:1/v1\",\"country\":\"CH\"}]}]}",
                 "$.pools[0].backends[0].url");
    expect_error("{" BASE_LISTEN ",\"pools\":[{\"name\":\"p\",\"models\":[\"m\"],\"backends\":[{"
                 "\"url\":\"http://127.0.0.1:1\",\"country\":\"ch\"}]}]}",
                 "$.pools[0].backends[0].country");
    expect_error("{" BASE_LISTEN ",\"pools\":[{\"name\":\"p\",\"models\":[\"m\"],\"backends\":[{"
                 "\"url\":\"http://127.0.0.1:1\"}]}]}",
                 "$.pools[0].backends[0].country");
    expect_error("{" BASE_LISTEN
                 ",\"pools\":[{\"name\":\"p\",\"models\":[\"m\"],\"backends\":[{\"url\":\"http://"
                 "127.0.0.1:1\",\"country\":\"CH\",\"api_key_env\":\"GW_TEST_UNSET_VAR\"}]}]}",
                 "$.pools[0].backends[0].api_key_env");
    expect_error("{" BASE_LISTEN ",\"pools\":[{\"name\":\"p\",\"models\":[],\"backends\":[{\"url\":"
                 "\"http://127.0.0.1:1\",\"country\":\"CH\"}]}]}",
                 "$.pools[0].models");
    expect_error("{" BASE_LISTEN
                 ",\"pools\":[{\"name\":\"p\",\"models\":[\"m\"],\"balance\":\"random\","
                 "\"backends\":[{\"url\":\"http://127.0.0.1:1\",\"country\":\"CH\"}]}]}",
                 "$.pools[0].balance");
    expect_error("{" BASE_LISTEN "," BASE_POOL ",\"plugins\":[{\"path\":\"/nonexistent.so\"}]}",
                 "$.plugins[0].path");
    expect_error("{" BASE_LISTEN ",\"listen\":[]," BASE_POOL "}", "$.listen");
    /* a model served by two pools is ambiguous */
    expect_error("{" BASE_LISTEN ",\"pools\":[{\"name\":\"a\",\"models\":[\"m\"],\"backends\":[{"
                 "\"url\":\"http://127.0.0.1:1\",\"country\":\"CH\"}]},"
                 "{\"name\":\"b\",\"models\":[\"x\",\"m\"],\"backends\":[{\"url\":\"http://"
                 "127.0.0.1:2\",\"country\":\"CH\"}]}]}",
                 "$.pools[1].models[1]");
    expect_error("{" BASE_LISTEN ",\"pools\":[{\"name\":\"a\",\"models\":[\"m\"],\"backends\":[{"
                 "\"url\":\"http://127.0.0.1:1\",\"country\":\"CH\"}]},"
                 "{\"name\":\"a\",\"models\":[\"x\"],\"backends\":[{\"url\":\"http://"
                 "127.0.0.1:2\",\"country\":\"CH\"}]}]}",
                 "$.pools[1].name");
    expect_error("{\"listen\":[{\"address\":\"127.0.0.1:0\",\"tls\":{\"cert\":\"/"
                 "nonexistent.pem\",\"key\":\"/nonexistent.pem\"}}],"
                 "\"admin\":{\"address\":\"127.0.0.1:0\"}," BASE_POOL "}",
                 "$.listen[0].tls");
    expect_error("{ not json", "$");
    expect_error("[]", "$");
}

static void test_errors_all_reported(void)
{
    /* several problems: one line each */
    char *errors = NULL;
    gw_config_t *c =
        load("{" BASE_LISTEN ",\"workers\":-1,\"limits\":{\"x\":1}," BASE_POOL "}", &errors);
    int lines = 0;
    for (const char *p = errors; p && *p; p++) lines += *p == '\n';
    CHECK(!c && lines == 2, "two problems, two lines: %s", errors ? errors : "");
    free(errors);
}

/* The public table loader (gotthard/plugin.h): the kinds a plugin's table declares, a partial
 * load beside other readers' keys, and the tenants of the config being loaded. */
typedef struct {
    int64_t n;
    int mode;
    double price;
    const cJSON *raw;
    char *secret;
} table_t;

static const char *const modes[] = {"keep", "drop", "hash", NULL};
static const gw_conf_key_t table_keys[] = {
    {"n", GW_CT_INT, offsetof(table_t, n), 1, 10},
    {"mode", GW_CT_ENUM, offsetof(table_t, mode), .names = modes},
    {"price", GW_CT_NUM, offsetof(table_t, price), 0, 1000},
    {"raw", GW_CT_JSON, offsetof(table_t, raw)},
    {"secret", GW_CT_STR, offsetof(table_t, secret), .max = 64, .flags = GW_CK_SECRET},
    {NULL},
};
static const gw_conf_obj_t table_obj = {sizeof(table_t), table_keys, NULL, NULL};

static int table_load(const char *text, int some, table_t *t, char **errors)
{
    gw_arena_t *a = gw_arena_new(4096);
    gw_conf_ctx_t cx;
    gw_conf_ctx_init(&cx, a);
    cJSON *j = cJSON_Parse(text);
    cx.root = j;
    memset(t, 0, sizeof(*t));
    int rc = some ? gw_conf_load_some(&cx, j, "$.x", &table_obj, t)
                  : gw_conf_load(&cx, j, "$.x", &table_obj, t);
    if (rc == 0 && t->raw) CHECK(cJSON_IsArray(t->raw), "raw node kept as it is");
    *errors = cx.errors ? strdup(cx.errors) : NULL;
    gw_conf_ctx_release(&cx);
    cJSON_Delete(j);
    gw_arena_free(a);
    return rc;
}

static void test_public_tables(void)
{
    table_t t;
    char *err = NULL;
    CHECK(table_load("{\"n\":3,\"mode\":\"hash\",\"price\":0.25,\"raw\":[1]}", 0, &t, &err) == 0,
          "good table: %s", err ? err : "");
    CHECK(t.n == 3 && t.mode == 2 && t.price == 0.25, "values: %lld %d %g", (long long)t.n, t.mode,
          t.price);
    free(err);
    CHECK(table_load("{\"mode\":\"shred\"}", 0, &t, &err) < 0 && err &&
              strstr(err, "$.x.mode: must be one of \"keep\", \"drop\" or \"hash\"") &&
              !strstr(err, "shred"),
          "enum error names the choices, never the value: %s", err ? err : "");
    free(err);
    CHECK(table_load("{\"price\":-1}", 0, &t, &err) < 0 && err && strstr(err, "$.x.price: "),
          "number bounds: %s", err ? err : "");
    free(err);
    CHECK(table_load("{\"n\":2,\"other\":1}", 0, &t, &err) < 0 && err &&
              strstr(err, "$.x.other: unknown key"),
          "unknown key refused: %s", err ? err : "");
    free(err);
    CHECK(table_load("{\"n\":2,\"other\":1}", 1, &t, &err) == 0 && t.n == 2,
          "a partial load leaves other keys alone: %s", err ? err : "");
    free(err);
    CHECK(table_load("{\"secret\":\""
                     "0123456789012345678901234567890123456789012345678901234567890123456789"
                     "\"}",
                     0, &t, &err) < 0 &&
              err && !strstr(err, "0123456789"),
          "a secret's error never quotes it: %s", err ? err : "");
    free(err);

    gw_arena_t *a = gw_arena_new(4096);
    gw_conf_ctx_t cx;
    gw_conf_ctx_init(&cx, a);
    cJSON *j = cJSON_Parse("{\"tenants\":[{\"id\":\"a\"},{\"id\":\"b\",\"k\":1}]}");
    cx.root = j;
    const char *id = NULL, *path = NULL;
    CHECK(gw_conf_root(&cx) == j && gw_conf_tenant_count(&cx) == 2, "root and tenants");
    const cJSON *b = gw_conf_tenant(&cx, 1, &id, &path);
    CHECK(b && id && strcmp(id, "b") == 0 && path && strcmp(path, "$.tenants[1]") == 0,
          "tenant 1: %s at %s", id ? id : "-", path ? path : "-");
    CHECK(!gw_conf_tenant(&cx, 2, &id, &path), "no tenant 2");
    gw_conf_ctx_release(&cx);
    cJSON_Delete(j);
    gw_arena_free(a);
}

/* gw_conf_tenant goes on from the tenant it gave last: any order gives the same answers. */
static void test_tenants_in_any_order(void)
{
    gw_arena_t *a = gw_arena_new(4096);
    gw_conf_ctx_t cx;
    gw_conf_ctx_init(&cx, a);
    cJSON *j = cJSON_CreateObject(), *ts = cJSON_AddArrayToObject(j, "tenants");
    char want[32];
    for (int i = 0; i < 300; i++) {
        snprintf(want, sizeof(want), "t%d", i);
        cJSON *t = cJSON_CreateObject();
        cJSON_AddStringToObject(t, "id", want);
        cJSON_AddItemToArray(ts, t);
    }
    cx.root = j;
    const size_t order[] = {0, 1, 2, 299, 150, 151, 0, 298, 300, 7, 8, 8, 301, 5};
    for (size_t k = 0; k < sizeof(order) / sizeof(order[0]); k++) {
        const char *id = NULL, *path = NULL;
        const cJSON *t = gw_conf_tenant(&cx, order[k], &id, &path);
        snprintf(want, sizeof(want), "t%zu", order[k]);
        if (order[k] >= 300) {
            CHECK(!t, "no tenant %zu", order[k]);
            continue;
        }
        char wpath[32];
        snprintf(wpath, sizeof(wpath), "$.tenants[%zu]", order[k]);
        CHECK(t && id && strcmp(id, want) == 0 && strcmp(path, wpath) == 0, "tenant %zu: %s at %s",
              order[k], id ? id : "-", path ? path : "-");
    }
    /* In order, a config's worth of tenants costs one step each (from the first each time it
     * was n*n/2: 5e9 steps, tens of seconds, for 100000 tenants at every reload). */
    for (int i = 300; i < 100000; i++) cJSON_AddItemToArray(ts, cJSON_CreateObject());
    clock_t start = clock();
    size_t n = gw_conf_tenant_count(&cx), seen = 0;
    for (size_t i = 0; i < n; i++) seen += gw_conf_tenant(&cx, i, NULL, NULL) != NULL;
    double cpu = (double)(clock() - start) / CLOCKS_PER_SEC;
    CHECK(n == 100000 && seen == n && cpu < 3, "%zu of %zu tenants in %.2f s of CPU", seen, n, cpu);
    gw_conf_ctx_release(&cx);
    cJSON_Delete(j);
    gw_arena_free(a);
}

int main(void)
{
    gw_tls_init();
    unsetenv("GW_TEST_UNSET_VAR");
    test_good();
    test_routing();
    test_errors();
    test_errors_all_reported();
    test_public_tables();
    test_tenants_in_any_order();
    return check_done();
}
