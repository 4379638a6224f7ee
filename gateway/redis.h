/* The shared store: one asynchronous hiredis connection per worker, on the worker's loop. */
#ifndef GW_REDIS_H
#define GW_REDIS_H

#include <hiredis/hiredis.h>

#include "worker.h"

typedef struct gw_redis gw_redis_t;

/* Starts connecting (and reconnecting with backoff) to the snapshot's redis, if any. */
gw_redis_t *gw_redis_new(gw_worker_t *w, const gw_config_t *cfg);
void gw_redis_free(gw_redis_t *rd);
/* How many workers' connections are up (all workers, any snapshot). */
int gw_redis_connections_up(void);

#endif
