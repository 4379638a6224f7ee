/* Workers: one thread, one event loop and one SO_REUSEPORT listener set each. */
#ifndef GW_WORKER_H
#define GW_WORKER_H

#include <event2/event.h>
#include <event2/listener.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "config/config.h"

typedef struct gw_conn gw_conn_t;
typedef struct gw_upconn gw_upconn_t;

typedef struct gw_worker {
    int id;
    pthread_t thread;
    struct event_base *base;
    struct evconnlistener **listeners;
    size_t nlisteners;
    int *fds; /* bound sockets, handed to the listeners */
    int wake_fd;
    struct event *wake;
    struct gw_accept_guard *accept_guard; /* pauses the listeners out of descriptors */
    gw_conn_t *conns;                     /* every open client connection */
    size_t nconns;
    int draining;
    atomic_int done;
    gw_config_t *cfg;                /* the snapshot new requests take */
    _Atomic(gw_config_t *) next_cfg; /* handed over by a reload */
    /* idle upstream connections, by backend index of idle_cfg */
    gw_upconn_t **idle;
    size_t *nidle;
    gw_config_t *idle_cfg;
    uint64_t rng;                /* tie-breaks only (gw_worker_random) */
    unsigned char rand_buf[512]; /* CSPRNG bytes for request ids (gw_worker_random_bytes) */
    size_t rand_left;
    size_t rr;
    void *lctx;
    struct gw_redis *redis;        /* this worker's connection to the shared store, or NULL */
    struct gw_balance_worker *bal; /* balancing state, wait queues, health loop (balance.c) */
} gw_worker_t;

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
/* A connection closed: the worker may be done draining. */
void gw_worker_conn_gone(gw_worker_t *w);

#endif
