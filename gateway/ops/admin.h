/* The admin listener: health, readiness, metrics, reports, reload and the status page; never
 * public. */
#ifndef GW_ADMIN_H
#define GW_ADMIN_H

#include <event2/event.h>

#include "config/config.h"

typedef struct gw_admin gw_admin_t;

gw_admin_t *gw_admin_start(struct event_base *base, gw_config_t *cfg);
void gw_admin_set_draining(gw_admin_t *a);
/* A reload: the admin listener reports on the new snapshot (it takes a reference). */
void gw_admin_set_config(gw_admin_t *a, gw_config_t *cfg);
void gw_admin_free(gw_admin_t *a);
/* POST /reload calls fn(arg, &why) on the admin's loop: 0 when the new configuration serves,
 * -1 when it was refused, with *why (malloc'ed, or NULL) one problem a line. */
typedef int (*gw_admin_reload_fn)(void *arg, char **why);
void gw_admin_set_reload(gw_admin_t *a, gw_admin_reload_fn fn, void *arg);

#endif
