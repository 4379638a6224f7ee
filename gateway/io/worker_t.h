/* The worker's types, apart from its functions (as HAProxy's X-t.h): what a connection needs
 * of its worker, without the worker's module (io/worker.c calls into io/conn.c). */
#ifndef GW_WORKER_T_H
#define GW_WORKER_T_H

#include <event2/event.h>
#include <event2/listener.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "config/config.h"

typedef struct gw_conn gw_conn_t;
typedef struct gw_upconn gw_upconn_t;
typedef struct gw_worker gw_worker_t;

/* What a worker asks of the layers above io (main.c sets the proxy's, proxy/serve.c, before
 * gw_worker_start): the request layer its connections call, and the per-worker state those
 * layers keep (balancer, idle upstream connections, the Redis connection). Every one is
 * required; all but start and discard run on the worker's own thread. */
typedef struct gw_worker_hooks {
    const struct gw_conn_handler *conn;
    /* Before the thread starts: -1 and the worker does not start. */
    int (*start)(gw_worker_t *w);
    /* First thing on the worker's thread. */
    void (*thread)(gw_worker_t *w);
    /* A reload: the worker takes next (w->cfg is still the old one), then has taken it. */
    void (*reload)(gw_worker_t *w, gw_config_t *next);
    void (*reloaded)(gw_worker_t *w);
    /* Draining: the listeners are closed, the connections finish what they have. */
    void (*drain)(gw_worker_t *w);
    /* The loop has ended and every client connection is closed. */
    void (*stop)(gw_worker_t *w);
    /* Before the event base is freed (a worker joined, or one that never started). */
    void (*discard)(gw_worker_t *w);
} gw_worker_hooks_t;

struct gw_worker {
    int id;
    const gw_worker_hooks_t *hooks; /* set before gw_worker_start */
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
};

/* A connection closed: the worker may be done draining. */
static inline void gw_worker_conn_gone(gw_worker_t *w)
{
    if (w->draining && w->nconns == 0) event_base_loopexit(w->base, NULL);
}

#endif
