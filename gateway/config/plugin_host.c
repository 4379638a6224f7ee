/* The plugin host: loads the configured plugins into a snapshot and releases them. */
#include "config/plugin_host.h"

#include <dlfcn.h>
#include <string.h>

/* Built-in plugins, in request order: authentication first. */
extern const gw_plugin_t gw_plugin_auth_apikey, gw_plugin_quota;
extern const gw_plugin_t gw_plugin_residency;
extern const gw_plugin_t gw_plugin_privacy;
#ifdef GW_HAVE_AUTH_JWT
extern const gw_plugin_t gw_plugin_auth_jwt;
#endif
static const gw_plugin_t *const builtins[] = {
    &gw_plugin_auth_apikey,
#ifdef GW_HAVE_AUTH_JWT
    &gw_plugin_auth_jwt,
#endif
    &gw_plugin_quota,
    &gw_plugin_residency,
    &gw_plugin_privacy, /* always on: privacy is a property, not an option */
    NULL,
};

int gw_plugins_own_key(const char *key)
{
    for (const gw_plugin_t *const *b = builtins; *b; b++)
        for (const char *const *k = (*b)->config_keys; k && *k; k++)
            if (strcmp(*k, key) == 0) return 1;
    return 0;
}

int gw_plugins_configure(gw_conf_ctx_t *cx, gw_config_t *c)
{
    gw_plugin_entry_t *entries = c->plugin_entries.items;
    size_t n = c->plugin_entries.n, nb = sizeof(builtins) / sizeof(builtins[0]) - 1;
    c->plugins = gw_arena_calloc(c->arena, (n + nb + 1) * sizeof(*c->plugins));
    if (!c->plugins) return -1;
    int rc = 0;
    /* Built-ins see the whole config and stay out of the chain unless it enables them. */
    for (const gw_plugin_t *const *b = builtins; *b; b++) {
        void *state = NULL;
        if ((*b)->configure(cx, c->json, "$", &state) < 0)
            rc = -1;
        else if (state)
            c->plugins[c->nplugins++] = (gw_plugin_inst_t){*b, state, NULL};
    }
    for (size_t i = 0; i < n; i++) {
        char *path = gw_conf_path_index(cx, "$.plugins", i);
        char *ppath = gw_conf_path_key(cx, path, "path");
        void *dl = dlopen(entries[i].path, RTLD_NOW | RTLD_LOCAL);
        if (!dl) {
            gw_conf_error(cx, ppath, "cannot load: %s", dlerror());
            rc = -1;
            continue;
        }
        const gw_plugin_t *p = dlsym(dl, GW_PLUGIN_SYMBOL);
        if (!p || p->abi != GW_PLUGIN_ABI || !p->name) {
            gw_conf_error(cx, ppath, "is not a gotthard plugin of ABI %d", GW_PLUGIN_ABI);
            dlclose(dl);
            rc = -1;
            continue;
        }
        gw_plugin_inst_t *inst = &c->plugins[c->nplugins++];
        inst->plugin = p;
        inst->dl = dl;
        if (p->configure && p->configure(cx, entries[i].config,
                                         gw_conf_path_key(cx, path, "config"), &inst->state) < 0)
            rc = -1;
        else if (!p->configure && entries[i].config) {
            gw_conf_error(cx, gw_conf_path_key(cx, path, "config"), "this plugin takes no config");
            rc = -1;
        }
    }
    for (size_t i = 0; i < c->nplugins; i++) c->want_usage |= c->plugins[i].plugin->wants_usage;
    return rc;
}

void gw_plugins_activate(gw_config_t *c)
{
    for (size_t i = 0; i < c->nplugins; i++) {
        gw_plugin_inst_t *inst = &c->plugins[i];
        if (inst->plugin->activate) inst->plugin->activate(inst->state);
    }
}

void gw_plugins_release(gw_config_t *c)
{
    for (size_t i = c->nplugins; i-- > 0;) {
        gw_plugin_inst_t *inst = &c->plugins[i];
        if (inst->plugin->release && inst->state) inst->plugin->release(inst->state);
        if (inst->dl) dlclose(inst->dl);
    }
    c->nplugins = 0;
}
