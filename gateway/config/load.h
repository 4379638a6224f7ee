/* Loading a config into a snapshot: the core's tables, the plugins' (config/plugin_host.c), the
 * derivations, the registered steps of higher layers, the live counters (config/live.c). */
#ifndef GW_LOAD_H
#define GW_LOAD_H

#include "config/config.h"

/* Loads and checks FILE. On failure returns NULL and *errors holds lines
 * "$.path: message\n" (free it). */
gw_config_t *gw_config_load(const char *file, char **errors);

/* As gw_config_load, from the len bytes of text (no NUL needed); flags: GW_CONFIG_* or 0. */
gw_config_t *gw_config_load_text(const char *text, size_t len, unsigned flags, char **errors);
/* As gw_config_load, with flags. */
gw_config_t *gw_config_load_flags(const char *file, unsigned flags, char **errors);

/* What a higher layer adds to every load (the store's backend_geo.c: resolution and verdicts),
 * registered once at start-up, before any load; without it backends are not resolved (no
 * addresses, gw_backend_hold gives NULL). resolve_backend: b's first resolution, from
 * derive_backend (0, or -1 with err, reported at the backend's url); verdicts: once the plugins
 * are configured, every backend's (0, or -1 having reported its errors through cx). */
typedef struct gw_config_steps {
    int (*resolve_backend)(gw_conf_ctx_t *cx, gw_config_t *c, gw_backend_t *b, const char *path,
                           char *err, size_t errlen);
    int (*verdicts)(gw_conf_ctx_t *cx, gw_config_t *c);
} gw_config_steps_t;
void gw_config_set_steps(const gw_config_steps_t *steps);

#endif
