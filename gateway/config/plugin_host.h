/* The plugin host: loads the configured plugins into a snapshot and releases them. */
#ifndef GW_PLUGIN_HOST_H
#define GW_PLUGIN_HOST_H

#include "config/config.h"

int gw_plugins_configure(gw_conf_ctx_t *cx, gw_config_t *c);
/* A top-level config key that a built-in plugin owns. */
int gw_plugins_own_key(const char *key);
void gw_plugins_release(gw_config_t *c);
/* The config passed every check and is about to serve: each plugin's activate, in order. */
void gw_plugins_activate(gw_config_t *c);

#endif
