/* Unit tests of the plugin host (gateway/config/plugin_host.c): the chain's order from ranks and
 * after/before, the keys plugins own at the top level and in tenants[], claims made twice,
 * unknown names and cycles, each plugin's thread_exit. The built-in list is this file's own
 * (the program's comes from the build): four plugins whose tables each test changes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "config/config.h"
#include "config/load.h"
#include "config/plugin_host.h"

/* configure: in the chain when the config has the plugin's first top-level key, or when the
 * plugin has none; the value of its tenant key in the first tenant is read with
 * gw_conf_load_some and kept as state. */
typedef struct {
    int64_t lim;
} fake_state_t;
static const gw_conf_key_t lim_keys[] = {{"lim", GW_CT_INT, offsetof(fake_state_t, lim), 0, 100},
                                         {NULL}};
static const gw_conf_obj_t lim_obj = {sizeof(fake_state_t), lim_keys, NULL};

static int configure(gw_conf_ctx_t *cx, const cJSON *config, const char *path, void **state)
{
    (void)path;
    (void)config;
    fake_state_t *s = gw_conf_alloc(cx, sizeof(*s));
    if (!s) return -1;
    const char *tpath = NULL;
    const cJSON *t = gw_conf_tenant_count(cx) ? gw_conf_tenant(cx, 0, NULL, &tpath) : NULL;
    if (t && gw_conf_load_some(cx, t, tpath, &lim_obj, s) < 0) return -1;
    *state = s;
    return 0;
}

static int exits;
static void thread_exit(void)
{
    exits++;
}

static const char *const k_alpha[] = {"alpha", NULL}, *const t_lim[] = {"lim", NULL};
static const char *const k_listen[] = {"listen", NULL}, *const t_models[] = {"models", NULL};

static gw_plugin_t alpha = {.name = "alpha",
                            .abi = GW_PLUGIN_ABI,
                            .rank = 200,
                            .config_keys = k_alpha,
                            .tenant_keys = t_lim,
                            .configure = configure,
                            .thread_exit = thread_exit};
static gw_plugin_t beta = {.name = "beta",
                           .abi = GW_PLUGIN_ABI,
                           .rank = 100,
                           .configure = configure,
                           .thread_exit = thread_exit};
static gw_plugin_t gamma_ = {.name = "gamma", .abi = GW_PLUGIN_ABI, .configure = configure};
static gw_plugin_t delta = {
    .name = "delta", .abi = GW_PLUGIN_ABI, .rank = 300, .configure = configure};

const gw_plugin_t *const gw_builtin_plugins[] = {&alpha, &beta, &gamma_, &delta, NULL};

static gw_config_t *load(const char *extra, const char *tenant, char **errors)
{
    char text[1024];
    snprintf(
        text, sizeof(text),
        "{\"listen\":[{\"address\":\"127.0.0.1:0\"}],\"admin\":{\"address\":\"127.0.0.1:0\"},"
        "\"pools\":[{\"name\":\"p\",\"models\":[\"m\"],\"backends\":[{\"url\":"
        "\"http://"
        "127.0.0.1:9\",\"country\":\"CH\"}]}],\"tenants\":[{\"id\":\"t\",\"models\":[\"*\"]%s}]%s}",
        tenant, extra);
    *errors = NULL;
    return gw_config_load_text(text, strlen(text), GW_CONFIG_OFFLINE, errors);
}

static int has_line(const char *errors, const char *prefix)
{
    for (const char *l = errors; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : "")
        if (strncmp(l, prefix, strlen(prefix)) == 0) return 1;
    return 0;
}

static const char *chain(const gw_config_t *c)
{
    static char s[128];
    s[0] = '\0';
    for (size_t i = 0; c && i < c->nplugins; i++) {
        strcat(s, i ? "," : "");
        strcat(s, c->plugins[i].plugin->name);
    }
    return s;
}

static void test_rank_order(void)
{
    char *errors;
    gw_config_t *c = load(",\"alpha\":1", ",\"lim\":7", &errors);
    CHECK(c != NULL, "loaded: %s", errors ? errors : "");
    /* gamma has rank 0: last, after every ranked one */
    CHECK(c && strcmp(chain(c), "beta,alpha,delta,gamma") == 0, "order %s", chain(c));
    const fake_state_t *s = c ? c->plugins[1].state : NULL;
    CHECK(s && s->lim == 7, "the tenant key's value reaches its owner");
    exits = 0;
    gw_plugins_thread_exit(c);
    CHECK(exits == 2, "thread_exit of alpha and beta: %d", exits);
    gw_config_unref(c);
    free(errors);
}

static void test_after_before(void)
{
    gamma_.before = "beta"; /* rank 0, moved to just before beta */
    delta.after = "gamma";  /* rank 300: already after gamma */
    char *errors;
    gw_config_t *c = load("", "", &errors);
    CHECK(c && strcmp(chain(c), "gamma,beta,alpha,delta") == 0, "before: %s %s", chain(c),
          errors ? errors : "");
    gw_config_unref(c);
    free(errors);
    gamma_.before = NULL;
    gamma_.rank = 50;
    gamma_.after = "beta"; /* moved from 50 to just after beta (100), before alpha */
    delta.after = NULL;
    c = load("", "", &errors);
    CHECK(c && strcmp(chain(c), "beta,gamma,alpha,delta") == 0, "after: %s %s", chain(c),
          errors ? errors : "");
    gw_config_unref(c);
    free(errors);
    gamma_.rank = 0;
    gamma_.after = "alpha"; /* last already: stays there */
    c = load("", "", &errors);
    CHECK(c && strcmp(chain(c), "beta,alpha,delta,gamma") == 0, "after, kept: %s %s", chain(c),
          errors ? errors : "");
    gw_config_unref(c);
    free(errors);
    gamma_.after = NULL;
}

static void test_unknown_and_cycle(void)
{
    gamma_.after = "epsilon";
    char *errors;
    gw_config_t *c = load("", "", &errors);
    CHECK(!c && has_line(errors, "$: plugin \"gamma\" wants to run after \"epsilon\", which is "
                                 "no plugin"),
          "unknown name: %s", errors ? errors : "(loaded)");
    gw_config_unref(c);
    free(errors);
    gamma_.after = "beta";
    beta.after = "gamma";
    c = load("", "", &errors);
    CHECK(!c && strstr(errors ? errors : "", "(after/before) make a cycle"), "cycle: %s",
          errors ? errors : "(loaded)");
    gw_config_unref(c);
    free(errors);
    gamma_.after = beta.after = NULL;
}

/* A position moves its own plugin only: gamma after alpha (200) and before beta (100) would run
 * beta after alpha, against their ranks: refused at gamma. */
static void test_positions_keep_others_ranks(void)
{
    gamma_.after = "alpha";
    gamma_.before = "beta";
    char *errors;
    gw_config_t *c = load("", "", &errors);
    CHECK(!c && strstr(errors ? errors : "", "would run \"beta\" after \"alpha\", against"),
          "contradictory positions: %s", errors ? errors : "(loaded)");
    gw_config_unref(c);
    free(errors);
    gamma_.after = gamma_.before = NULL;
}

/* Admin pages: free names only (not the core's, not another plugin's, a plain path). */
static void test_admin_pages(void)
{
    static const char *const bad[][2] = {{"metrics", "is a page of the core's"},
                                         {"audit/recent", "is a page of the core's"},
                                         {"", "is not a page name"},
                                         {"../x", "is not a page name"},
                                         {"a//b", "is not a page name"},
                                         {"Usage", "is not a page name"}};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *pages[] = {bad[i][0], NULL};
        delta.admin_pages = pages;
        char *errors;
        gw_config_t *c = load("", "", &errors);
        CHECK(!c && strstr(errors ? errors : "", bad[i][1]), "page \"%s\": %s", bad[i][0],
              errors ? errors : "(loaded)");
        gw_config_unref(c);
        free(errors);
    }
    static const char *const usage[] = {"usage", NULL}, *const mine[] = {"my/report", NULL};
    delta.admin_pages = usage;
    alpha.admin_pages = usage;
    char *errors;
    gw_config_t *c = load("", "", &errors);
    CHECK(!c && strstr(errors ? errors : "", "\"usage\" is served by another plugin"),
          "a page twice: %s", errors ? errors : "(loaded)");
    gw_config_unref(c);
    free(errors);
    alpha.admin_pages = NULL;
    delta.admin_pages = mine;
    c = load("", "", &errors);
    CHECK(c != NULL, "a free page: %s", errors ? errors : "");
    gw_config_unref(c);
    free(errors);
    delta.admin_pages = NULL;
}

/* A worker stopping calls the thread_exit of every plugin that has served since start, also of
 * one the current config no longer has (its state on the worker outlives its config). */
static void test_thread_exit_of_plugins_gone(void)
{
    char *errors;
    gw_config_t *c = load(",\"alpha\":1", "", &errors);
    CHECK(c != NULL, "loaded: %s", errors ? errors : "");
    free(errors);
    if (!c) return;
    gw_plugins_activate(c); /* alpha and beta served */
    gw_config_unref(c);
    void (*saved)(void) = beta.thread_exit;
    beta.thread_exit = NULL; /* the config of now knows no thread_exit at all */
    alpha.thread_exit = NULL;
    c = load("", "", &errors);
    exits = 0;
    gw_plugins_thread_exit(c);
    CHECK(exits == 1, "the thread_exit that served once runs once: %d", exits);
    gw_config_unref(c);
    free(errors);
    beta.thread_exit = alpha.thread_exit = saved;
}

static void test_keys(void)
{
    char *errors;
    gw_config_t *c = load("", ",\"nobody\":1", &errors);
    CHECK(!c && has_line(errors, "$.tenants[0].nobody: unknown key"), "tenant key: %s",
          errors ? errors : "(loaded)");
    gw_config_unref(c);
    free(errors);
    c = load(",\"nobody\":1", "", &errors);
    CHECK(!c && has_line(errors, "$.nobody: unknown key"), "top key: %s",
          errors ? errors : "(loaded)");
    gw_config_unref(c);
    free(errors);
    c = load("", ",\"lim\":1000", &errors);
    CHECK(!c && has_line(errors, "$.tenants[0].lim: "), "owner's bounds: %s",
          errors ? errors : "(loaded)");
    gw_config_unref(c);
    free(errors);
    /* claimed twice: by two plugins, by the core and a plugin */
    delta.tenant_keys = t_lim;
    c = load("", "", &errors);
    CHECK(!c && has_line(errors, "$: plugin \"delta\" claims the tenant key \"lim\", which plugin "
                                 "\"alpha\" owns"),
          "twice: %s", errors ? errors : "(loaded)");
    gw_config_unref(c);
    free(errors);
    delta.tenant_keys = t_models;
    delta.config_keys = k_listen;
    c = load("", "", &errors);
    CHECK(!c && has_line(errors, "$: plugin \"delta\" claims the top-level key \"listen\", "
                                 "which the core owns"),
          "core's top key: %s", errors ? errors : "(loaded)");
    CHECK(has_line(errors, "$: plugin \"delta\" claims the tenant key \"models\", which the core "
                           "owns"),
          "core's tenant key: %s", errors ? errors : "(loaded)");
    gw_config_unref(c);
    free(errors);
    delta.tenant_keys = delta.config_keys = NULL;
}

/* The public answer to "does the core forward this client header as it is?" (privacy reads it). */
static void test_header_forwarded(void)
{
    static const char *const kept[] = {"x-custom", "Content-Type", "openai-organization", NULL};
    static const char *const never[] = {
        "authorization",     "API-Key",    "host",         "content-length",
        "transfer-encoding", "connection", "x-request-id", "x-client-request-id",
        "accept-encoding",   NULL};
    for (const char *const *h = kept; *h; h++)
        CHECK(gw_header_forwarded(*h, strlen(*h)) == 1, "%s is forwarded", *h);
    for (const char *const *h = never; *h; h++)
        CHECK(gw_header_forwarded(*h, strlen(*h)) == 0, "%s is the gateway's own", *h);
    CHECK(gw_header_forwarded("authorization-x", 13) == 0, "the length is the name's");
}

int main(void)
{
    test_header_forwarded();
    test_rank_order();
    test_after_before();
    test_unknown_and_cycle();
    test_keys();
    test_positions_keep_others_ranks();
    test_admin_pages();
    test_thread_exit_of_plugins_gone();
    return check_done();
}
