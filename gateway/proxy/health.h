/* Active health checks and metrics scraping: worker 0's loop probes each backend. */
#ifndef GW_HEALTH_H
#define GW_HEALTH_H

#include <event2/event.h>

#include "config/config.h"

typedef struct gw_health gw_health_t;

/* Starts probing the backends of cfg on base: GET health.path every health.interval_ms
 * (pools with a health.path), GET metrics.path every metrics.interval_ms (queue_aware pools),
 * and re-admits passively ejected backends through readmit (the balancer's: slow start). Probes
 * connect only to verified addresses. */
typedef void (*gw_health_readmit_fn)(gw_backend_t *b, uint64_t now_us);
gw_health_t *gw_health_new(struct event_base *base, gw_config_t *cfg, gw_health_readmit_fn readmit);
/* A new snapshot: its backends take over the health of the same (pool, url) in the old one. */
void gw_health_set_config(gw_health_t *h, gw_config_t *cfg);
void gw_health_free(gw_health_t *h);

#endif
