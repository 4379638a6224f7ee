/* Load balancing: choosing a backend per request, per-pool wait queues, passive health. */
#ifndef GW_BALANCE_H
#define GW_BALANCE_H

#include "proxy/request.h"
#include "io/worker.h"

/* Picks a backend of r->pool for r: not vetoed, healthy, with room; the affine one first (pool
 * affinity "session"), else by the pool's algorithm. Reads atomics and per-worker state only:
 * no lock, no allocation. NULL when none: *full is set when the request should wait for a slot
 * (some eligible backend is full, or other requests already wait). */
gw_backend_t *gw_balance_pick(gw_req_t *r, int *full);
/* Queues r until a backend has room (0), or -1 when the pool's queue is off or full. When r
 * leaves the queue, dispatch(r, b) sends it on: to backend b, or with b NULL to its 503 (time up,
 * place taken, no eligible backend left); the balancer reaches upstream only through it. */
typedef void (*gw_balance_dispatch_fn)(gw_req_t *r, gw_backend_t *b);
int gw_balance_enqueue(gw_req_t *r, gw_balance_dispatch_fn dispatch);
/* Takes r out of its queue (it ended while waiting). */
void gw_balance_dequeue(gw_req_t *r);
/* A backend slot was freed on this worker: serve the waiters soon (not from this call). */
void gw_balance_kick(gw_worker_t *w);

/* Passive health: a request failed on b (connect error, timeout, 5xx, broken answer), or b
 * answered. max_fails failures in a row eject b for health.fail_timeout_ms. */
void gw_balance_failed(gw_backend_t *b);
void gw_balance_succeeded(gw_backend_t *b);
/* Makes b choosable again, with slow start (health.c). */
void gw_balance_readmit(gw_backend_t *b, uint64_t now_us);

/* The per-worker state: WRR weights, queues; worker 0 also runs the health loop (health.c). */
int gw_balance_worker_init(gw_worker_t *w);
void gw_balance_worker_reload(gw_worker_t *w);
void gw_balance_worker_drain(gw_worker_t *w);
void gw_balance_worker_free(gw_worker_t *w);

#endif
