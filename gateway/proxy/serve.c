/* The proxy's side of a worker: the request layer its client connections call (as nginx's http
 * module sets a listener's connection handler), and the per-worker start, reload, drain and stop
 * of what the layers above io keep for a worker: the balancer, idle upstream connections, the
 * connection to Redis. io names none of them; it calls these hooks. */
#include "proxy/serve.h"

#include <string.h>

#include "base/overload.h"
#include "io/conn.h"
#include "proxy/balance.h"
#include "proxy/request.h"
#include "proxy/upstream.h"
#include "store/redis.h"

/* ---------------------------------------------------------------- requests of a connection */

/* Answers an error; the connection closes after it (an unread body would otherwise be taken
 * for the next request). */
static void fail(gw_req_t *r, int status, const char *code, const char *message)
{
    r->close = 1;
    gw_req_error(r, status, code, message);
    gw_req_finish(r, 1);
}

static void headers(gw_req_t *r)
{
    if (gw_overload_memory()) {
        /* Short of memory: running requests go on, this one is refused cheaply. */
        gw_req_add_response_header(r, "retry-after", "1");
        fail(r, 503, "server_overloaded", "The gateway is short of memory; try again shortly.");
        return;
    }
    if (r->head.content_length > r->cfg->limits.max_body_bytes) {
        fail(r, 413, "request_too_large", "The request body is too large.");
        return;
    }
    gw_req_headers_ready(r);
}

static void body_plan(gw_req_t *r, gw_conn_body_t *out)
{
    out->into = r->body;
    out->length = r->head.content_length;
    out->chunked = r->head.chunked;
    out->expect_continue = r->head.expect_continue;
    out->max_bytes = r->cfg->limits.max_body_bytes;
    out->timeout_ms = r->cfg->timeouts.client_body_ms;
}

static void abort_request(gw_req_t *r)
{
    r->conn = NULL;
    gw_req_abort(r);
}

static const gw_conn_handler_t conn_handler = {
    .begin = gw_req_new,
    .reply = gw_conn_error_reply,
    .headers = headers,
    .body_plan = body_plan,
    .body = gw_req_body_ready,
    .fail = fail,
    .abort = abort_request,
    .drained = gw_upstream_client_drained,
};

/* ---------------------------------------------------------------- a worker's life */

static int start(gw_worker_t *w)
{
    if (gw_balance_worker_init(w) < 0) return -1;
    w->redis = gw_redis_new(w, w->cfg);
    return 0;
}

static void reload(gw_worker_t *w, gw_config_t *next)
{
    gw_upstream_close_idle(w);
    /* A changed store: a new connection, while the old one finishes what it was sent (its
     * answers settle the admissions in flight; its queue moves over). A changed timeout only
     * applies to the commands sent from now on. */
    const char *old_url = w->cfg->redis.url, *new_url = next->redis.url;
    if ((old_url == NULL) != (new_url == NULL) || (old_url && strcmp(old_url, new_url) != 0)) {
        gw_redis_t *old = w->redis;
        w->redis = gw_redis_new(w, next);
        gw_redis_hand_over(old, w->redis);
        gw_redis_retire(old);
    } else if (w->cfg->redis.timeout_ms != next->redis.timeout_ms) {
        gw_redis_set_timeout(w->redis, next->redis.timeout_ms);
    }
}

static void drain(gw_worker_t *w)
{
    gw_balance_worker_drain(w);
    gw_upstream_close_idle(w);
}

/* The quota counts still pending are queued to Redis by now: a drained worker waits for them
 * to arrive before its connection goes. */
static void stop(gw_worker_t *w)
{
    gw_upstream_close_idle(w);
    if (w->draining) gw_redis_deliver(w->redis, w->base);
    gw_balance_worker_free(w);
    gw_redis_free(w->redis); /* answers what still waits on it */
    w->redis = NULL;
    gw_redis_free_retiring();
}

const gw_worker_hooks_t gw_serve_hooks = {
    .conn = &conn_handler,
    .start = start,
    .thread = gw_redis_thread,
    .reload = reload,
    .reloaded = gw_balance_worker_reload,
    .drain = drain,
    .stop = stop,
    .discard = gw_balance_worker_free,
};
