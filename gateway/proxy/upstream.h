/* The backend side: keep-alive pools, connecting, sending the request, relaying the answer. */
#ifndef GW_UPSTREAM_H
#define GW_UPSTREAM_H

#include "proxy/request.h"

/* Installs the functions below as the request phases' way upstream (gw_req_set_upstream): at
 * start-up, before any request. */
void gw_upstream_install(void);
/* Picks a backend of r->pool (balance.c: the pool's algorithm, not vetoed, healthy, with
 * room) and sends the request; waits in the pool's queue when all are full; answers 503
 * itself when none can take it. */
void gw_upstream_start(gw_req_t *r);
/* Sends a request that waited in its pool's queue to b; b NULL: 503 no_backend_available. */
void gw_upstream_dispatch(gw_req_t *r, gw_backend_t *b);
/* The client went away or the request is being torn down: drop the backend request. */
void gw_upstream_abort(gw_req_t *r);
/* The client's output drained: resume reading the backend. */
void gw_upstream_client_drained(gw_req_t *r);
/* Closes a worker's idle connections (drain, snapshot change). */
void gw_upstream_close_idle(gw_worker_t *w);
/* The verified addresses the request's backend connection was made under, or NULL. */
const struct gw_resolved *gw_upstream_resolved(const gw_req_t *r);

#endif
