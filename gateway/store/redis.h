/* The shared store: one asynchronous hiredis connection per worker, on the worker's loop. */
#ifndef GW_REDIS_H
#define GW_REDIS_H

#include <hiredis/hiredis.h>

#include "gotthard/plugin.h" /* gw_redis_detached_cb */
#include "io/worker.h"

typedef struct gw_redis gw_redis_t;

/* Starts connecting (and reconnecting with backoff) to the snapshot's redis, if any. */
gw_redis_t *gw_redis_new(gw_worker_t *w, const gw_config_t *cfg);
void gw_redis_free(gw_redis_t *rd);
/* A reload changed redis.url: the old connection finishes what it was sent (its replies, within
 * about redis.timeout_ms), then closes and frees itself. */
void gw_redis_retire(gw_redis_t *rd);
/* At a worker's end: its retiring connections are closed now. */
void gw_redis_free_retiring(void);
/* A reload changed only redis.timeout_ms: commands sent from now on use it. */
void gw_redis_set_timeout(gw_redis_t *rd, int64_t timeout_ms);
/* A reload replaced the connection: the commands still waiting for one move to `to`. */
void gw_redis_hand_over(gw_redis_t *from, gw_redis_t *to);
/* The worker's thread: gw_worker_redis_send sends on its connection. */
void gw_redis_thread(gw_worker_t *w);
/* At a worker's end, on its loop (stopped): waits up to redis.timeout_ms for what was sent to
 * reach Redis. */
void gw_redis_deliver(gw_redis_t *rd, struct event_base *base);
/* Commands dropped from the per-worker queues (full, or out of memory), since start. */
unsigned long gw_redis_queue_dropped(void);
/* One command on rd (a worker's connection): cb runs exactly once on that worker's loop, with the
 * reply (possibly an error reply), or NULL when none came within redis.timeout_ms or the connection
 * failed. -1 (cb never runs) when rd is NULL or not up. */
int gw_redis_command(gw_redis_t *rd, gw_redis_detached_cb cb, void *arg, int argc,
                     const char **argv, const size_t *argvlen);
/* One command whose answer nobody waits for: sent now, or queued (bounded) until rd is up
 * again. -1 only when rd is NULL or being freed, or without memory. */
int gw_redis_send(gw_redis_t *rd, int argc, const char **argv, const size_t *argvlen);
/* How many workers' connections are up (all workers, any snapshot). */
int gw_redis_connections_up(void);

/* Why no connection is up: what the last attempt met (GW_REDIS_OK while one is up). */
typedef enum gw_redis_problem {
    GW_REDIS_OK,
    GW_REDIS_CONNECTING,
    GW_REDIS_UNREACHABLE,
    GW_REDIS_AUTH_REFUSED,   /* a wrong or missing password: a config error, not an outage */
    GW_REDIS_SELECT_REFUSED, /* a database the server does not have: likewise */
    GW_REDIS_NO_ANSWER,
    GW_REDIS_UNEXPECTED,
} gw_redis_problem_t;
gw_redis_problem_t gw_redis_problem(void);
/* A constant sentence for /readyz and the log (never the password); NULL for GW_REDIS_OK. */
const char *gw_redis_problem_text(gw_redis_problem_t p);

#endif
