/* The admin listener: health, readiness (and later metrics and reports), never public. */
#include "admin.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"
#include "redis.h"

struct gw_admin {
    struct evhttp *http;
    gw_config_t *cfg;
    int draining;
};

static int quota_store_up(const gw_config_t *cfg)
{
    if (!cfg->redis.url) return 1;
    if (cfg->redis.on_unavailable && strcmp(cfg->redis.on_unavailable, "local") == 0) return 1;
    return gw_redis_connections_up() > 0;
}

static void reply_json(struct evhttp_request *req, int status, const char *body)
{
    struct evbuffer *out = evbuffer_new();
    if (!out) return;
    evbuffer_add(out, body, strlen(body));
    evhttp_add_header(evhttp_request_get_output_headers(req), "content-type", "application/json");
    evhttp_send_reply(req, status, status == 200 ? "OK" : status == 404 ? "Not Found"
                                                          : "Service Unavailable", out);
    evbuffer_free(out);
}

/* Ready when not draining, every pool has a backend to send to, and the quota store is
 * usable: Redis reached by the workers, unless its absence falls back to local counts. */
static int ready(const gw_admin_t *a)
{
    if (a->draining) return 0;
    if (!quota_store_up(a->cfg)) return 0;
    gw_pool_t *pools = a->cfg->pools.items;
    for (size_t i = 0; i < a->cfg->pools.n; i++)
        if (pools[i].backends.n == 0) return 0;
    return 1;
}

static void handle(struct evhttp_request *req, void *arg)
{
    gw_admin_t *a = arg;
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    int get = evhttp_request_get_command(req) == EVHTTP_REQ_GET;
    if (get && path && strcmp(path, "/healthz") == 0) {
        reply_json(req, 200, "{\"status\":\"ok\"}");
    } else if (get && path && strcmp(path, "/metrics") == 0) {
        struct evbuffer *out = evbuffer_new();
        if (!out) return;
        gw_metrics_render(out);
        evbuffer_add_printf(out, "# HELP gotthard_quota_store_up Whether the quota store can be used.\n"
                                 "# TYPE gotthard_quota_store_up gauge\ngotthard_quota_store_up %d\n",
                            a->cfg->redis.url ? gw_redis_connections_up() > 0 : 1);
        evhttp_add_header(evhttp_request_get_output_headers(req), "content-type",
                          "text/plain; version=0.0.4; charset=utf-8");
        evhttp_send_reply(req, 200, "OK", out);
        evbuffer_free(out);
    } else if (get && path && strcmp(path, "/readyz") == 0) {
        if (ready(a)) reply_json(req, 200, "{\"status\":\"ready\"}");
        else reply_json(req, 503, "{\"status\":\"not ready\"}");
    } else {
        reply_json(req, 404, "{\"error\":{\"message\":\"There is nothing at this path.\","
                             "\"type\":\"invalid_request_error\",\"param\":null,\"code\":\"not_found\"}}");
    }
}

gw_admin_t *gw_admin_start(struct event_base *base, gw_config_t *cfg)
{
    gw_admin_t *a = calloc(1, sizeof(*a));
    if (!a) return NULL;
    a->cfg = gw_config_ref(cfg);
    a->http = evhttp_new(base);
    int fd = socket(cfg->admin.ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (!a->http || fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(fd, (struct sockaddr *)&cfg->admin.ss, cfg->admin.sslen) < 0 || listen(fd, 128) < 0 ||
        evhttp_accept_socket(a->http, fd) < 0) {
        gw_error("cannot listen on the admin address %s: %s", cfg->admin.address, strerror(errno));
        if (fd >= 0) close(fd);
        if (a->http) evhttp_free(a->http);
        gw_config_unref(a->cfg);
        free(a);
        return NULL;
    }
    evhttp_set_allowed_methods(a->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST);
    evhttp_set_max_headers_size(a->http, 16384);
    evhttp_set_max_body_size(a->http, 65536);
    evhttp_set_timeout(a->http, 10);
    evhttp_set_gencb(a->http, handle, a);
    return a;
}

void gw_admin_set_draining(gw_admin_t *a)
{
    a->draining = 1;
}

void gw_admin_set_config(gw_admin_t *a, gw_config_t *cfg)
{
    gw_config_unref(a->cfg);
    a->cfg = gw_config_ref(cfg);
}

void gw_admin_free(gw_admin_t *a)
{
    if (!a) return;
    evhttp_free(a->http);
    gw_config_unref(a->cfg);
    free(a);
}
