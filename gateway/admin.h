/* The admin listener: health, readiness (and later metrics and reports), never public. */
#ifndef GW_ADMIN_H
#define GW_ADMIN_H

#include <event2/event.h>

#include "config.h"

typedef struct gw_admin gw_admin_t;

gw_admin_t *gw_admin_start(struct event_base *base, gw_config_t *cfg);
void gw_admin_set_draining(gw_admin_t *a);
/* A reload: the admin listener reports on the new snapshot (it takes a reference). */
void gw_admin_set_config(gw_admin_t *a, gw_config_t *cfg);
void gw_admin_free(gw_admin_t *a);

#endif
