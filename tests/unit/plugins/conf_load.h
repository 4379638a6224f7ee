/* For the plugins' config tests: a config loaded offline (gw_config_load_text), the error lines
 * it gives, and a plugin's state in the chain. */
#ifndef GW_TEST_CONF_LOAD_H
#define GW_TEST_CONF_LOAD_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "config/config.h"
#include "config/load.h"

/* A listener, the admin and one pool: extra adds the keys under test. */
static const char conf_base[] =
    "\"listen\":[{\"address\":\"127.0.0.1:0\"}],\"admin\":{\"address\":\"127.0.0.1:0\"},"
    "\"pools\":[{\"name\":\"p\",\"models\":[\"m\"],\"backends\":[{\"url\":\"http://127.0.0.1:1\","
    "\"country\":\"CH\"}]}]";

/* {conf_base, extra}, checked offline: the snapshot, or NULL with *errors its lines. */
static inline gw_config_t *conf_load(const char *extra, char **errors)
{
    size_t n = strlen(conf_base) + strlen(extra) + 4;
    char *text = malloc(n);
    if (!text) return NULL;
    snprintf(text, n, "{%s%s%s}", conf_base, extra[0] ? "," : "", extra);
    *errors = NULL;
    gw_config_t *c = gw_config_load_text(text, strlen(text), GW_CONFIG_OFFLINE, errors);
    free(text);
    return c;
}

static inline int conf_has_line(const char *errors, const char *prefix)
{
    for (const char *l = errors; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : "")
        if (strncmp(l, prefix, strlen(prefix)) == 0) return 1;
    return 0;
}

/* The state of the plugin `name` in c's chain; NULL when the config leaves it out. */
static inline void *conf_plugin_state(const gw_config_t *c, const char *name)
{
    for (size_t i = 0; c && i < c->nplugins; i++)
        if (strcmp(c->plugins[i].plugin->name, name) == 0) return c->plugins[i].state;
    return NULL;
}

/* {conf_base, extra} is refused, with a line that begins with `line`. */
static inline void conf_refused(const char *extra, const char *line)
{
    char *errors;
    gw_config_t *c = conf_load(extra, &errors);
    CHECK(!c && conf_has_line(errors, line), "%s: want %s, got %s", extra, line,
          errors ? errors : "(loaded)");
    if (c) gw_config_unref(c);
    free(errors);
}

/* {conf_base, extra} is taken, and the plugin `name` is in the chain (on) or not. */
static inline void conf_taken(const char *extra, const char *name, int on)
{
    char *errors;
    gw_config_t *c = conf_load(extra, &errors);
    CHECK(c != NULL, "%s: %s", extra, errors ? errors : "");
    CHECK(!c || (conf_plugin_state(c, name) != NULL) == on, "%s: %s %s", extra, name,
          on ? "left out" : "in the chain");
    if (c) gw_config_unref(c);
    free(errors);
}

#endif
