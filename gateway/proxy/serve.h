/* The proxy's side of a worker: what the io layer's workers and connections call above them. */
#ifndef GW_SERVE_H
#define GW_SERVE_H

#include "io/worker.h"

/* Set on every worker before it starts (main.c): requests for its connections, and the
 * per-worker state of the proxy and the store (balancer, idle upstream connections, Redis). */
extern const gw_worker_hooks_t gw_serve_hooks;

#endif
