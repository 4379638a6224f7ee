/* Workers: one thread, one event loop and one SO_REUSEPORT listener set each. */
#ifndef GW_WORKER_H
#define GW_WORKER_H

#include "io/worker_t.h"

/* Opens the listening sockets of every worker (SO_REUSEPORT) so that errors show at start. */
int gw_workers_bind(gw_worker_t *ws, size_t n, gw_config_t *cfg);
int gw_worker_start(gw_worker_t *w);
/* From another thread: start draining (stop accepting, finish in-flight), or stop now. */
void gw_worker_signal(gw_worker_t *w, char what);
/* From another thread: new requests take this snapshot (a reference is handed over). */
void gw_worker_reload(gw_worker_t *w, gw_config_t *cfg);
void gw_worker_join(gw_worker_t *w);
/* Releases a worker that never started (bound sockets, its snapshot reference). */
void gw_worker_discard(gw_worker_t *w);
uint64_t gw_worker_random(gw_worker_t *w);
/* n (at most 512) bytes from the CSPRNG (OpenSSL's), drawn a buffer at a time so that a
 * request id costs a copy, not a call into the DRBG. 0, or -1 if the CSPRNG failed. */
int gw_worker_random_bytes(gw_worker_t *w, void *out, size_t n);

#endif
