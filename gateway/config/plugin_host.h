/* The plugin host: loads the configured plugins into a snapshot, orders them, releases them. */
#ifndef GW_PLUGIN_HOST_H
#define GW_PLUGIN_HOST_H

#include "config/config.h"

/* External plugins a config may list (plugins[]). */
#define GW_MAX_PLUGINS 64

/* The built-in plugins, NULL-terminated: the list the build generates (builtin_plugins.c, from
 * plugins/CMakeLists.txt), linked into the gotthard program with the plugins themselves. */
extern const gw_plugin_t *const gw_builtin_plugins[];

/* Before the core's tables are loaded: every plugin (built-in, and external ones of the
 * config's plugins[], loaded unless offline) into c->known in chain order. A key of top or of
 * tenant (the core's tables) that a plugin claims too, or one claimed by two plugins, an
 * unknown after/before name, a cycle of positions, a .so of another ABI: errors with paths.
 * Until gw_plugins_configure, gw_plugins_own_key and gw_plugins_own_tenant_key answer for c. */
int gw_plugins_open(gw_conf_ctx_t *cx, gw_config_t *c, const gw_conf_obj_t *top,
                    const gw_conf_obj_t *tenant);
/* The owned_elsewhere of the core's top level and tenants[] entries: a key a plugin owns. */
int gw_plugins_own_key(const char *key);
int gw_plugins_own_tenant_key(const char *key);
/* Each plugin's configure, in chain order; c->plugins is then the chain: the external plugins
 * and the built-ins that the config enables. */
int gw_plugins_configure(gw_conf_ctx_t *cx, gw_config_t *c);
void gw_plugins_release(gw_config_t *c);
/* The config passed every check and is about to serve: each plugin's activate, in order. */
void gw_plugins_activate(gw_config_t *c);
/* A worker thread stops: the thread_exit of every plugin that has served since start (also one a
 * reload removed since) and of every plugin c knows, once each. */
void gw_plugins_thread_exit(const gw_config_t *c);

#endif
