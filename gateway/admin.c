/* The admin listener: health, readiness (and later metrics and reports), never public. */
#include "admin.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "access_log.h"
#include "log.h"
#include "metrics.h"
#include "privacy.h"
#include "quota.h"
#include "redis.h"
#include "residency.h"

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
        if (pools[i].backends.n == 0 || !gw_residency_pool_ok(a->cfg, &pools[i])) return 0;
    return 1;
}

/* GET /usage[?days=N]: requests and tokens per tenant and UTC day (plugins/quota/quota.h),
 * today first, 1 <= N <= 40 days (default 1). With Redis this blocks the admin loop (never
 * a worker's) for at most a few redis.timeout_ms. */
static char *usage_report(const gw_config_t *cfg, const struct evhttp_uri *uri)
{
    const void *state = NULL;
    for (size_t i = 0; i < cfg->nplugins; i++)
        if (cfg->plugins[i].plugin == &gw_plugin_quota) state = cfg->plugins[i].state;
    int days = 1;
    struct evkeyvalq q;
    const char *query = evhttp_uri_get_query(uri);
    if (query && evhttp_parse_query_str(query, &q) == 0) {
        const char *d = evhttp_find_header(&q, "days");
        if (d) days = atoi(d);
        evhttp_clear_headers(&q);
    }
    if (days < 1) days = 1;
    if (days > 40) days = 40;
    cJSON *o = gw_quota_usage_report(state, days);
    char *body = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    return body;
}

/* GET /privacy: the effective privacy settings, for auditors (docs/privacy.md). */
static char *privacy_report(const gw_config_t *cfg)
{
    const void *state = NULL;
    for (size_t i = 0; i < cfg->nplugins; i++)
        if (cfg->plugins[i].plugin == &gw_plugin_privacy) state = cfg->plugins[i].state;
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON *p = gw_privacy_report(state);
    if (p) {
        cJSON_AddBoolToObject(p, "enabled", state != NULL);
        cJSON_AddBoolToObject(p, "client_credentials_forwarded", 0);
    }
    cJSON_AddItemToObject(o, "privacy", p);
    cJSON *al = cJSON_AddObjectToObject(o, "access_log");
    if (al) {
        cJSON_AddBoolToObject(al, "enabled", cfg->access_log.path != NULL);
        if (cfg->access_log.path) cJSON_AddStringToObject(al, "path", cfg->access_log.path);
        static const char *const fields[] = {
            "ts", "request_id", "tenant", "model", "pool", "backend", "status", "code",
            "prompt_tokens", "completion_tokens", "tokens_estimated", "ttft_ms", "duration_ms",
            "bytes_in", "bytes_out", NULL};
        cJSON *f = cJSON_AddArrayToObject(al, "fields");
        for (size_t i = 0; f && fields[i]; i++) cJSON_AddItemToArray(f, cJSON_CreateString(fields[i]));
        cJSON_AddStringToObject(al, "unknown_model", "<unknown>");
        cJSON_AddNumberToObject(al, "dropped_lines", (double)gw_access_log_dropped());
    }
    cJSON_AddBoolToObject(o, "audit_log", cfg->audit_log.path != NULL);
    struct rlimit rl;
    cJSON *proc = cJSON_AddObjectToObject(o, "process");
    if (proc) {
        cJSON_AddBoolToObject(proc, "core_dumps",
                              !(getrlimit(RLIMIT_CORE, &rl) == 0 && rl.rlim_cur == 0));
        cJSON_AddBoolToObject(proc, "dumpable", prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != 0);
        cJSON_AddBoolToObject(proc, "bodies_on_disk", 0);
    }
    cJSON_AddBoolToObject(o, "content_in_logs", 0);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
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
        evbuffer_add_printf(out, "# HELP gotthard_access_log_dropped_total Access log lines dropped "
                                 "(a full buffer or a failed write).\n"
                                 "# TYPE gotthard_access_log_dropped_total counter\n"
                                 "gotthard_access_log_dropped_total %llu\n",
                            (unsigned long long)gw_access_log_dropped());
        evhttp_add_header(evhttp_request_get_output_headers(req), "content-type",
                          "text/plain; version=0.0.4; charset=utf-8");
        evhttp_send_reply(req, 200, "OK", out);
        evbuffer_free(out);
    } else if (get && path && strcmp(path, "/privacy") == 0) {
        char *body = privacy_report(a->cfg);
        if (body) reply_json(req, 200, body);
        else reply_json(req, 503, "{\"error\":{\"message\":\"Out of memory.\",\"type\":\"server_error\","
                                  "\"param\":null,\"code\":\"internal_error\"}}");
        cJSON_free(body);
    } else if (get && path && strcmp(path, "/usage") == 0) {
        char *body = usage_report(a->cfg, evhttp_request_get_evhttp_uri(req));
        if (body) reply_json(req, 200, body);
        else reply_json(req, 503, "{\"error\":{\"message\":\"Out of memory.\",\"type\":\"server_error\","
                                  "\"param\":null,\"code\":\"internal_error\"}}");
        cJSON_free(body);
    } else if (get && path && strcmp(path, "/residency") == 0) {
        char *body = gw_residency_report_json(a->cfg);
        if (body) reply_json(req, 200, body);
        else reply_json(req, 503, "{\"error\":{\"message\":\"The report could not be made.\","
                                  "\"type\":\"server_error\",\"param\":null,\"code\":\"internal_error\"}}");
        cJSON_free(body);
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
