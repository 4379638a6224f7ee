/* The admin listener: health, readiness, metrics, reports, reload and the status page; never
 * public. Every answer is JSON (errors OpenAI-shaped), Prometheus text, or the page. */
#include "ops/admin.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <ctype.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/http.h>
#include <event2/http_struct.h>
#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/queue.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "ops/access_log.h"
#include "base/audit.h"
#include "base/log.h"
#include "base/oai_error.h"
#include "base/accept_guard.h"
#include "ops/metrics.h"
#include "base/overload.h"
#include "store/redis.h"
#include "proxy/request.h"
#include "store/backend_geo.h"
#include "ops/status_page.h"

/* The admin listener's bounds: connections at once (beyond, the oldest one without a complete
 * request is closed, so probes get through), seconds from
 * accept to a complete request (a client that trickles its head is closed), a head's and a
 * body's bytes. Every answer closes its connection: the deadline covers one request. */
enum { ADMIN_MAX_CONNS = 64, ADMIN_REQUEST_S = 5, ADMIN_MAX_HEAD = 8192, ADMIN_MAX_BODY = 4096 };

/* One accepted connection. evhttp (libevent 2.1) says nothing when it accepts one: its
 * bufferevent comes from conn_new, held until the loop's next turn, when evhttp has made the
 * connection around it (the bufferevent's callback argument) and its close callback can be
 * set; from then on it lives until that callback. */
typedef struct admin_conn {
    gw_admin_t *a; /* NULL once the listener is gone */
    struct bufferevent *bev;
    struct evhttp_connection *evcon; /* NULL until the first turn */
    struct event *timer;             /* the first turn, then the deadline */
    int answered;
    struct admin_conn *prev, *next;
} admin_conn_t;

struct gw_admin {
    struct evhttp *http;
    admin_conn_t *conns;
    int nconns;
    struct {
        char *key; /* path and query */
        int status;
        int64_t until;
        char *body;
    } page; /* the last 503 of a plugin's page, served again until `until` */
    gw_accept_guard_t *guard;
    gw_config_t *cfg;
    int draining;
    gw_admin_reload_fn reload;
    void *reload_arg;
    time_t started;
};

static int quota_store_up(const gw_config_t *cfg)
{
    if (!cfg->redis.url) return 1;
    gw_redis_problem_t p = gw_redis_problem();
    /* A refused password or database is a config error, not an outage: never ready. */
    if (p == GW_REDIS_AUTH_REFUSED || p == GW_REDIS_SELECT_REFUSED) return 0;
    if (cfg->redis.on_unavailable && strcmp(cfg->redis.on_unavailable, "local") == 0) return 1;
    return gw_redis_connections_up() > 0;
}

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 421:
        return "Misdirected Request";
    case 422:
        return "Unprocessable Content";
    case 500:
        return "Internal Server Error";
    default:
        return "Service Unavailable";
    }
}

static void reply(struct evhttp_request *req, int status, const char *type, const void *body,
                  size_t len)
{
    struct evbuffer *out = evbuffer_new();
    if (!out) {
        evhttp_send_error(req, 500, NULL);
        return;
    }
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    if (evhttp_request_get_command(req) == EVHTTP_REQ_HEAD) {
        /* evhttp sends a HEAD's body if given one: never a body, the GET's length (RFC 9110) */
        char n[24];
        snprintf(n, sizeof(n), "%zu", len);
        evhttp_add_header(h, "content-length", n);
    } else {
        evbuffer_add(out, body, len);
    }
    evhttp_add_header(h, "content-type", type);
    evhttp_add_header(h, "cache-control", "no-store");
    evhttp_add_header(h, "x-content-type-options", "nosniff");
    evhttp_add_header(h, "connection", "close"); /* one request a connection (ADMIN_REQUEST_S) */
    evhttp_send_reply(req, status, reason_phrase(status), out);
    evbuffer_free(out);
}

static void reply_json(struct evhttp_request *req, int status, const char *body)
{
    reply(req, status, "application/json", body, strlen(body));
}

/* An OpenAI-shaped error; message and code are the admin's own constants. */
static void reply_error(struct evhttp_request *req, int status, const char *code,
                        const char *message)
{
    char body[512];
    gw_error_json(body, sizeof(body), status, code, message);
    reply_json(req, status, body);
}

/* A JSON document (free it with cJSON_free), or a 500 when it could not be made. */
static void reply_doc(struct evhttp_request *req, char *body)
{
    if (body)
        reply_json(req, 200, body);
    else
        reply_error(req, 500, "internal_error", "The report could not be made.");
    cJSON_free(body);
}

/* A pool has a backend to send to: approved by residency (or no policy) and healthy. */
static int pool_up(const gw_config_t *cfg, const gw_pool_t *p)
{
    const gw_backend_t *bs = p->backends.items;
    for (size_t i = 0; i < p->backends.n; i++)
        if (gw_metrics_backend_up(cfg, &bs[i])) return 1;
    return 0;
}

/* Ready when not draining, every pool has an approved healthy backend, and the quota store
 * is usable: Redis reached by the workers, unless its absence falls back to local counts (a
 * refused password or database never is). With why, the first reason not to be, in words
 * from constants and pool names only (never a secret). */
static int ready_why(const gw_admin_t *a, const char **why, const char **pool)
{
    if (a->draining) {
        if (why) *why = "draining";
        return 0;
    }
    if (!quota_store_up(a->cfg)) {
        if (why) *why = gw_redis_problem_text(gw_redis_problem());
        if (why && !*why) *why = "redis: not connected";
        return 0;
    }
    gw_pool_t *pools = a->cfg->pools.items;
    for (size_t i = 0; i < a->cfg->pools.n; i++)
        if (!pool_up(a->cfg, &pools[i])) {
            if (why) *why = "no backend that residency approves and that is healthy";
            if (pool) *pool = pools[i].name;
            return 0;
        }
    return 1;
}

static int ready(const gw_admin_t *a)
{
    return ready_why(a, NULL, NULL);
}

/* GET /readyz: {"status":"ready"}, or 503 {"status":"not ready","reasons":[...]}. */
static void reply_readyz(struct evhttp_request *req, const gw_admin_t *a)
{
    const char *why = NULL, *pool = NULL;
    if (ready_why(a, &why, &pool)) {
        reply_json(req, 200, "{\"status\":\"ready\"}");
        return;
    }
    char line[256];
    if (pool) snprintf(line, sizeof(line), "pool %s: %s", pool, why);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "status", "not ready");
    cJSON *reasons = cJSON_AddArrayToObject(o, "reasons"),
          *r = cJSON_CreateString(pool ? line : why);
    if (!cJSON_AddItemToArray(reasons, r)) cJSON_Delete(r);
    char *body = o ? cJSON_PrintUnformatted(o) : NULL;
    reply_json(req, 503, body ? body : "{\"status\":\"not ready\"}");
    cJSON_free(body);
    cJSON_Delete(o);
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A plugin's error for one of its pages, as an OpenAI-shaped body: its code kept when it is a
 * short token of [a-z0-9_], its message escaped (and cut at its buffer's end, NUL or not), its
 * status when it is an error status (else 500). */
static char *plugin_error(int *status, gw_admin_err_t *err)
{
    int ok = err->code && *err->code && strlen(err->code) <= 64;
    for (const char *c = err->code; ok && *c; c++)
        ok = (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_';
    err->message[sizeof(err->message) - 1] = '\0';
    if (*status < 400 || *status > 599) *status = 500;
    cJSON *o = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(o, "error");
    cJSON_AddStringToObject(e, "message",
                            err->message[0] ? err->message : "The report could not be made.");
    cJSON_AddStringToObject(e, "type", gw_error_type(*status));
    cJSON_AddNullToObject(e, "param");
    cJSON_AddStringToObject(e, "code", ok ? err->code : "internal_error");
    char *printed = e ? cJSON_PrintUnformatted(o) : NULL, *body = printed ? strdup(printed) : NULL;
    cJSON_free(printed);
    cJSON_Delete(o);
    return body;
}

/* A plugin's own page (its admin_pages): that plugin, with its state (NULL when the config
 * leaves it out of the chain), or NULL when none serves it. */
static const gw_plugin_inst_t *page_owner(const gw_config_t *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->nknown; i++)
        for (const char *const *p = cfg->known[i].plugin->admin_pages; p && *p; p++)
            if (strcmp(*p, name) == 0 && cfg->known[i].plugin->admin_report) return &cfg->known[i];
    return NULL;
}

/* GET /<page>: the whole answer is the plugin's (admin_report). Its 503 is served again for five
 * seconds without asking the plugin: a slow store (the quota plugin's GET /usage) is not asked
 * again and again. An answer is never served stale otherwise. */
static void reply_page(gw_admin_t *a, struct evhttp_request *req, const gw_plugin_inst_t *inst,
                       const char *path)
{
    const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
    char key[600];
    snprintf(key, sizeof(key), "%s?%s", path, query ? query : "");
    if (a->page.body && strcmp(a->page.key, key) == 0 && mono_ms() < a->page.until) {
        reply_json(req, a->page.status, a->page.body);
        return;
    }
    cJSON *o = cJSON_CreateObject();
    gw_admin_err_t err = {NULL, {0}};
    int status = o ? inst->plugin->admin_report(inst->state, path + 1, query, o, &err) : 500;
    char *printed = status == 0 ? cJSON_PrintUnformatted(o) : NULL, *body = NULL;
    cJSON_Delete(o);
    if (status != 0) { /* an error status, or anything else but 0 (an error too) */
        body = plugin_error(&status, &err);
    } else {
        status = 200;
        body = printed ? strdup(printed) : NULL;
    }
    cJSON_free(printed);
    if (!body) {
        reply_error(req, 500, "internal_error", "The report could not be made.");
        return;
    }
    free(a->page.body);
    free(a->page.key);
    a->page.body = body;
    a->page.key = strdup(key);
    a->page.status = status;
    a->page.until = status == 503 && a->page.key ? mono_ms() + 5000 : 0;
    reply_json(req, status, body);
}

/* Members a plugin added to o (those after `before`) that another, earlier member already names:
 * dropped, so that no plugin can shadow the core's or another plugin's part of a document. */
static void drop_repeated(cJSON *o, const cJSON *before)
{
    cJSON *e = before ? before->next : o->child;
    while (e) {
        cJSON *next = e->next;
        for (const cJSON *p = o->child; p != e; p = p->next)
            if (p->string && e->string && strcmp(p->string, e->string) == 0) {
                cJSON_Delete(cJSON_DetachItemViaPointer(o, e));
                break;
            }
        e = next;
    }
}

/* Each plugin's part of a document (GW_ADMIN_STATUS, GW_ADMIN_PRIVACY), in chain order, after
 * the core's own members. */
static void plugin_parts(const gw_config_t *cfg, const char *page, cJSON *o)
{
    for (size_t i = 0; i < cfg->nknown; i++) {
        const gw_plugin_inst_t *inst = &cfg->known[i];
        gw_admin_err_t err = {NULL, {0}};
        const cJSON *last =
            o->child ? o->child->prev : NULL; /* cJSON: the head's prev is the tail */
        if (inst->plugin->admin_report)
            inst->plugin->admin_report(inst->state, page, NULL, o, &err);
        drop_repeated(o, last);
    }
}

/* GET /privacy: the effective privacy settings, for auditors (docs/privacy.md): the plugins'
 * parts, then the core's, from the loaded config. */
static char *privacy_report(const gw_config_t *cfg)
{
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON *al = cJSON_AddObjectToObject(o, "access_log");
    if (al) {
        cJSON_AddBoolToObject(al, "enabled", cfg->access_log.path != NULL);
        if (cfg->access_log.path) cJSON_AddStringToObject(al, "path", cfg->access_log.path);
        cJSON *f = cJSON_AddArrayToObject(al, "fields");
        for (size_t i = 0; f && gw_access_log_fields[i]; i++)
            cJSON_AddItemToArray(f, cJSON_CreateString(gw_access_log_fields[i]));
        cJSON_AddStringToObject(al, "unknown_model", GW_ACCESS_LOG_UNKNOWN_MODEL);
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
    plugin_parts(cfg, GW_ADMIN_PRIVACY, o);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

/* GET /status: what the status page shows besides /usage and /audit/recent: pools and
 * backends (health, load, residency verdict), tenants and their limits, the process. Names
 * and numbers from the config and the counters only; never API keys or request content. */
static char *status_report(const gw_admin_t *a)
{
    const gw_config_t *cfg = a->cfg;
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "version", GW_VERSION);
    cJSON_AddNumberToObject(o, "uptime_s", (double)(time(NULL) - a->started));
    cJSON_AddBoolToObject(o, "ready", ready(a));
    cJSON_AddBoolToObject(o, "draining", a->draining);
    unsigned long ok = 0, refused = 0;
    gw_metrics_reloads(&ok, &refused);
    cJSON *rl = cJSON_AddObjectToObject(o, "reloads");
    if (rl) {
        cJSON_AddNumberToObject(rl, "ok", (double)ok);
        cJSON_AddNumberToObject(rl, "refused", (double)refused);
    }
    cJSON *qs = cJSON_AddObjectToObject(o, "quota_store");
    if (qs) {
        cJSON_AddStringToObject(qs, "kind", cfg->redis.url ? "redis" : "process");
        cJSON_AddBoolToObject(qs, "usable", quota_store_up(cfg));
        if (cfg->redis.url)
            cJSON_AddNumberToObject(qs, "connections_up", gw_redis_connections_up());
    }
    cJSON_AddBoolToObject(o, "residency_policy", cfg->residency != NULL);
    cJSON *pools = cJSON_AddArrayToObject(o, "pools");
    gw_pool_t *ps = cfg->pools.items;
    for (size_t i = 0; pools && i < cfg->pools.n; i++) {
        cJSON *p = cJSON_CreateObject();
        if (!p) break;
        cJSON_AddItemToArray(pools, p);
        cJSON_AddStringToObject(p, "name", ps[i].name);
        cJSON_AddStringToObject(p, "balance", ps[i].balance ? ps[i].balance : "least_outstanding");
        cJSON_AddBoolToObject(p, "up", pool_up(cfg, &ps[i]));
        cJSON_AddNumberToObject(p, "queued", atomic_load(&ps[i].live->queued));
        cJSON *models = cJSON_AddArrayToObject(p, "models");
        char **ms = ps[i].models.items;
        for (size_t m = 0; models && m < ps[i].models.n; m++)
            cJSON_AddItemToArray(models, cJSON_CreateString(ms[m]));
        cJSON *bl = cJSON_AddArrayToObject(p, "backends");
        gw_backend_t *bs = ps[i].backends.items;
        for (size_t k = 0; bl && k < ps[i].backends.n; k++) {
            gw_backend_t *b = &bs[k];
            cJSON *e = cJSON_CreateObject();
            if (!e) break;
            const gw_resolved_t *rs = gw_backend_hold(b);
            cJSON_AddItemToArray(bl, e);
            cJSON_AddStringToObject(e, "name", b->name);
            cJSON_AddStringToObject(e, "country", b->country ? b->country : "");
            cJSON_AddBoolToObject(e, "up", gw_metrics_backend_up(cfg, b));
            cJSON_AddBoolToObject(e, "healthy", atomic_load(&b->live->healthy) != 0);
            cJSON_AddNumberToObject(e, "inflight", atomic_load(&b->live->inflight));
            cJSON_AddNumberToObject(e, "max_concurrent", (double)b->max_concurrent);
            cJSON_AddNumberToObject(e, "weight", (double)b->weight);
            const char *verdict = !cfg->residency      ? "unverified"
                                  : rs && rs->approved ? "approved"
                                                       : "refused";
            cJSON_AddStringToObject(e, "verdict", verdict);
            if (rs) {
                cJSON_AddStringToObject(e, "countries", rs->countries);
                if (rs->reason[0]) cJSON_AddStringToObject(e, "reason", rs->reason);
                cJSON_AddStringToObject(e, "resolved_at", rs->when);
            }
            gw_resolved_release(rs);
        }
    }
    cJSON *tenants = cJSON_AddArrayToObject(o, "tenants");
    gw_tenant_t *ts = cfg->tenants.items;
    for (size_t i = 0; tenants && i < cfg->tenants.n; i++) {
        cJSON *t = cJSON_CreateObject();
        if (!t) break;
        cJSON_AddItemToArray(tenants, t);
        cJSON_AddStringToObject(t, "id", ts[i].id);
        cJSON *models = cJSON_AddArrayToObject(t, "models");
        char **ms = ts[i].models.items;
        for (size_t m = 0; models && m < ts[i].models.n; m++)
            cJSON_AddItemToArray(models, cJSON_CreateString(ms[m]));
    }
    plugin_parts(cfg, GW_ADMIN_STATUS, o); /* e.g. the tenants' limits */
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

/* POST /reload: the same whole-config check as SIGHUP. A browser on another site can send a
 * POST to 127.0.0.1 too: a request whose Origin is not this listener is refused. */
static void handle_reload(gw_admin_t *a, struct evhttp_request *req)
{
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    const char *origin = evhttp_find_header(in, "origin");
    const char *host = evhttp_find_header(in, "host");
    if (origin && (!host || strncmp(origin, "http://", 7) != 0 || strcmp(origin + 7, host) != 0)) {
        reply_error(req, 403, "forbidden_origin", "A reload may not come from another origin.");
        return;
    }
    if (!a->reload) {
        reply_error(req, 503, "reload_unavailable", "Reloading is not available.");
        return;
    }
    char *why = NULL;
    if (a->reload(a->reload_arg, &why) == 0) {
        free(why);
        reply_json(req, 200, "{\"status\":\"reloaded\"}");
        return;
    }
    int draining = a->draining;
    cJSON *o = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(o, "error");
    if (e) {
        cJSON_AddStringToObject(e, "message",
                                draining ? "The gateway is draining."
                                         : "The new configuration was refused; the "
                                           "old one keeps serving.");
        cJSON_AddStringToObject(e, "type", draining ? "server_error" : "invalid_request_error");
        cJSON_AddNullToObject(e, "param");
        cJSON_AddStringToObject(e, "code", draining ? "draining" : "config_invalid");
    }
    cJSON *problems = cJSON_AddArrayToObject(o, "problems");
    for (const char *p = why; problems && p && *p;) { /* one problem a line */
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        char *line = strndup(p, n);
        if (line && n) cJSON_AddItemToArray(problems, cJSON_CreateString(line));
        free(line);
        p = nl ? nl + 1 : p + n;
    }
    free(why);
    char *body = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (body)
        reply_json(req, draining ? 503 : 422, body);
    else
        reply_error(req, 500, "internal_error", "The answer could not be made.");
    cJSON_free(body);
}

/* Whether the Host a request names is one this listener answers to: an IP literal, localhost,
 * or a name in admin.allowed_hosts. A page that rebinds its own DNS name to this address sends
 * that name as Host: without this, it could read every admin page and POST /reload (its Origin
 * matches its Host). A request without Host (HTTP/1.0) comes from no browser. */
static int host_allowed(const gw_config_t *cfg, const char *host)
{
    if (!host) return 1;
    char name[256];
    size_t n;
    if (host[0] == '[') { /* [v6]:port */
        const char *end = strchr(host, ']');
        if (!end || (end[1] && end[1] != ':')) return 0;
        n = (size_t)(end - host - 1);
        if (n >= sizeof(name)) return 0;
        memcpy(name, host + 1, n);
        name[n] = '\0';
        struct in6_addr a6;
        return inet_pton(AF_INET6, name, &a6) == 1;
    }
    const char *colon = strchr(host, ':');
    n = colon ? (size_t)(colon - host) : strlen(host);
    if (n == 0 || n >= sizeof(name)) return 0;
    memcpy(name, host, n);
    name[n] = '\0';
    if (n > 1 && name[n - 1] == '.') name[--n] = '\0'; /* a fully qualified name's last dot */
    struct in_addr a4;
    if (inet_pton(AF_INET, name, &a4) == 1 || strcasecmp(name, "localhost") == 0) return 1;
    char **allowed = cfg->admin.allowed_hosts.items;
    for (size_t i = 0; i < cfg->admin.allowed_hosts.n; i++)
        if (strcasecmp(name, allowed[i]) == 0) return 1;
    return 0;
}

/* A Host value as RFC 9112 has it: a name of letters, digits and "-._~", or [an IPv6 literal]
 * (host_allowed reads it), and an optional :port. Nothing else: no space, no comma. */
static int host_syntax_ok(const char *h)
{
    const char *p = h;
    if (*p == '[') {
        p = strchr(p, ']');
        if (!p) return 0;
        p++;
    } else {
        while (isalnum((unsigned char)*p) || *p == '.' || *p == '-' || *p == '_' || *p == '~') p++;
        if (p == h) return 0;
    }
    if (*p == ':') {
        const char *d = ++p;
        while (isdigit((unsigned char)*p)) p++;
        if (p == d || p - d > 5) return 0;
    }
    return *p == '\0';
}

/* The head's field names are tokens (no "Host :"), and Host is there once with a valid value;
 * HTTP/1.1 requires it (RFC 9112 3.2), HTTP/1.0 may leave it out. A name with a space or a
 * second Host would let host_allowed check one name while another one is meant. 0, or -1
 * with *why; *host is the value (NULL when none). */
static int head_ok(struct evhttp_request *req, const char **host, const char **why)
{
    static const char tchar[] = "!#$%&'*+-.^_`|~";
    struct evkeyval *h;
    int hosts = 0;
    *host = NULL;
    TAILQ_FOREACH(h, evhttp_request_get_input_headers(req), next)
    {
        for (const char *k = h->key; *k; k++)
            if (!isalnum((unsigned char)*k) && !strchr(tchar, *k)) {
                *why = "A header name holds a character that is not allowed (RFC 9110 5.1).";
                return -1;
            }
        if (!h->key[0]) {
            *why = "A header has an empty name.";
            return -1;
        }
        if (strcasecmp(h->key, "host") == 0 && hosts++ == 0) *host = h->value;
    }
    if (hosts > 1)
        *why = "The request has more than one Host header.";
    else if (*host && !host_syntax_ok(*host))
        *why = "The Host header is not a host name or address with an optional port.";
    else
        return 0;
    return -1;
}

/* A plugin's lines of GET /metrics (admin_metrics), into the answer's buffer. */
__attribute__((format(printf, 2, 3))) static void metrics_out(void *out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    evbuffer_add_vprintf(out, fmt, ap);
    va_end(ap);
}

/* GET /metrics: the core's, the overload guard's, then each plugin's (admin_metrics). */
static void reply_metrics(gw_admin_t *a, struct evhttp_request *req)
{
    struct evbuffer *out = evbuffer_new();
    if (!out) {
        reply_error(req, 500, "internal_error", "Out of memory.");
        return;
    }
    gw_metrics_render(out, a->cfg);
    gw_overload_render(out);
    evbuffer_add_printf(out,
                        "# HELP gotthard_quota_store_up Whether the quota store can be used.\n"
                        "# TYPE gotthard_quota_store_up gauge\ngotthard_quota_store_up %d\n",
                        a->cfg->redis.url ? gw_redis_connections_up() > 0 : 1);
    evbuffer_add_printf(out,
                        "# HELP gotthard_quota_store_dropped_total Settlements, slot "
                        "releases and usage counts dropped while the quota store was "
                        "away (the per-worker queue was full).\n"
                        "# TYPE gotthard_quota_store_dropped_total counter\n"
                        "gotthard_quota_store_dropped_total %lu\n",
                        gw_redis_queue_dropped());
    evbuffer_add_printf(out,
                        "# HELP gotthard_access_log_dropped_total Access log lines dropped "
                        "(a full buffer or a failed write).\n"
                        "# TYPE gotthard_access_log_dropped_total counter\n"
                        "gotthard_access_log_dropped_total %llu\n",
                        (unsigned long long)gw_access_log_dropped());
    for (size_t i = 0; i < a->cfg->nknown; i++) {
        const gw_plugin_inst_t *inst = &a->cfg->known[i];
        if (inst->plugin->admin_metrics) inst->plugin->admin_metrics(inst->state, metrics_out, out);
    }
    reply(req, 200, "text/plain; version=0.0.4; charset=utf-8", evbuffer_pullup(out, -1),
          evbuffer_get_length(out));
    evbuffer_free(out);
}

static admin_conn_t *conn_of(gw_admin_t *a, struct evhttp_request *req)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
    for (admin_conn_t *c = a->conns; bev && c; c = c->next)
        if (c->evcon == evcon || c->bev == bev) return c;
    return NULL;
}

static void handle(struct evhttp_request *req, void *arg)
{
    gw_admin_t *a = arg;
    admin_conn_t *conn = conn_of(a, req);
    if (conn) { /* the request is complete: answered below, then the connection closes */
        conn->answered = 1;
        if (conn->evcon) evtimer_del(conn->timer);
    }
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    int get = cmd == EVHTTP_REQ_GET || cmd == EVHTTP_REQ_HEAD; /* HEAD: the GET, no body */
    if (!path) path = "";
    const char *host = NULL, *why = NULL;
    if (head_ok(req, &host, &why) < 0) {
        reply_error(req, 400, "invalid_request", why);
        return;
    }
    /* Probes only learn up or not: they answer to any host name (load balancers' checks) and
     * to none; everything else wants one from HTTP/1.1 (every browser sends one). */
    int probe = strcmp(path, "/healthz") == 0 || strcmp(path, "/readyz") == 0;
    if (!probe && !host && (req->major > 1 || (req->major == 1 && req->minor >= 1))) {
        reply_error(req, 400, "invalid_request", "An HTTP/1.1 request needs a Host header.");
        return;
    }
    if (!probe && !host_allowed(a->cfg, host)) {
        reply_error(req, 421, "misdirected_request",
                    "This admin listener does not answer to that host name; list it in "
                    "admin.allowed_hosts.");
        return;
    }
    if (strcmp(path, "/reload") == 0) {
        if (cmd == EVHTTP_REQ_POST)
            handle_reload(a, req);
        else
            reply_error(req, 405, "method_not_allowed", "Use POST for /reload.");
        return;
    }
    static const char *const gets[] = {"/",        "/healthz", "/readyz",       "/metrics",
                                       "/privacy", "/status",  "/audit/recent", "/residency",
                                       NULL};
    size_t known = 0;
    while (gets[known] && strcmp(gets[known], path) != 0) known++;
    const gw_plugin_inst_t *page = path[0] == '/' ? page_owner(a->cfg, path + 1) : NULL;
    if (!gets[known] && !page) {
        reply_error(req, 404, "not_found", "There is nothing at this path.");
        return;
    }
    if (!get) {
        reply_error(req, 405, "method_not_allowed", "Use GET for this path.");
        return;
    }
    if (!gets[known]) {
        reply_page(a, req, page, path);
    } else if (strcmp(path, "/") == 0) {
        struct evkeyvalq *h = evhttp_request_get_output_headers(req);
        /* Self-contained: inline script and style, data only from this origin. */
        evhttp_add_header(h, "content-security-policy",
                          "default-src 'none'; script-src 'unsafe-inline'; style-src "
                          "'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; "
                          "form-action 'none'; frame-ancestors 'none'");
        evhttp_add_header(h, "referrer-policy", "no-referrer");
        reply(req, 200, "text/html; charset=utf-8", gw_status_page_html, gw_status_page_html_len);
    } else if (strcmp(path, "/healthz") == 0) {
        reply_json(req, 200, "{\"status\":\"ok\"}");
    } else if (strcmp(path, "/metrics") == 0) {
        reply_metrics(a, req);
    } else if (strcmp(path, "/privacy") == 0) {
        reply_doc(req, privacy_report(a->cfg));
    } else if (strcmp(path, "/residency") == 0) {
        reply_doc(req, gw_residency_report_json(a->cfg));
    } else if (strcmp(path, "/status") == 0) {
        reply_doc(req, status_report(a));
    } else if (strcmp(path, "/audit/recent") == 0) {
        size_t n = 50;
        struct evkeyvalq q;
        const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
        if (query && evhttp_parse_query_str(query, &q) == 0) {
            const char *v = evhttp_find_header(&q, "n");
            if (v) n = (size_t)strtoul(v, NULL, 10);
            evhttp_clear_headers(&q);
        }
        char *body = gw_audit_recent_json(n);
        if (body)
            reply_json(req, 200, body);
        else
            reply_error(req, 500, "internal_error", "Out of memory.");
        free(body);
    } else { /* "/readyz" */
        reply_readyz(req, a);
    }
}

static void conn_forget(admin_conn_t *c)
{
    if (c->a) {
        if (c->prev)
            c->prev->next = c->next;
        else
            c->a->conns = c->next;
        if (c->next) c->next->prev = c->prev;
        c->a->nconns--;
    }
    event_free(c->timer);
    free(c);
}

static void conn_closed(struct evhttp_connection *evcon, void *arg)
{
    (void)evcon;
    conn_forget(arg);
}

/* Over ADMIN_MAX_CONNS: closes the oldest connection other than keep that has not completed a
 * request yet (the list is newest first), so slow or idle clients make room for a probe that
 * sends its request at once, never the other way round. 1 when one was closed. */
static int evict_oldest(gw_admin_t *a, admin_conn_t *keep)
{
    admin_conn_t *last = a->conns;
    while (last && last->next) last = last->next;
    for (admin_conn_t *v = last; v; v = v->prev)
        if (v != keep && v->evcon && !v->answered) {
            evhttp_connection_free(v->evcon); /* conn_closed frees v */
            return 1;
        }
    return 0;
}

/* The first turn: over ADMIN_MAX_CONNS, the oldest connection without a complete request is
 * closed to make room (none: this one is); then this one has
 * ADMIN_REQUEST_S for a whole request. Then the deadline: closed (evhttp frees the request it
 * was reading, without calling handle). */
static void conn_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    admin_conn_t *c = arg;
    if (c->evcon) {
        evhttp_connection_free(c->evcon); /* conn_closed frees c */
        return;
    }
    struct bufferevent *bev = c->bev;
    bufferevent_data_cb readcb = NULL;
    void *evcon = NULL;
    bufferevent_getcb(bev, &readcb, NULL, NULL, &evcon);
    if (!readcb || !evcon || !c->a) { /* evhttp is done with it already */
        conn_forget(c);
        bufferevent_decref(bev);
        return;
    }
    c->evcon = evcon;
    evhttp_connection_set_closecb(c->evcon, conn_closed, c);
    bufferevent_decref(bev); /* evhttp's own reference remains */
    struct timeval tv = {ADMIN_REQUEST_S, 0};
    if (c->a->nconns > ADMIN_MAX_CONNS && !evict_oldest(c->a, c)) {
        evhttp_connection_free(c->evcon);
        return;
    }
    if (!c->answered && evtimer_add(c->timer, &tv) < 0) evhttp_connection_free(c->evcon);
}

/* evhttp's bufferevent for each accepted connection, counted (descriptors and head memory
 * stay bounded whatever the admin's clients do; the public listeners keep theirs). NULL lets
 * evhttp make its own. */
static struct bufferevent *conn_new(struct event_base *base, void *arg)
{
    gw_admin_t *a = arg;
    admin_conn_t *c = calloc(1, sizeof(*c));
    if (c) c->bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (c && c->bev) c->timer = evtimer_new(base, conn_timer, c);
    struct timeval now = {0, 0};
    if (!c || !c->timer || evtimer_add(c->timer, &now) < 0) {
        if (c && c->timer) event_free(c->timer);
        if (c && c->bev) bufferevent_free(c->bev);
        free(c);
        return NULL;
    }
    bufferevent_incref(c->bev); /* valid at the first turn, whatever evhttp did meanwhile */
    c->a = a;
    c->next = a->conns;
    if (a->conns) a->conns->prev = c;
    a->conns = c;
    a->nconns++;
    return c->bev;
}

gw_admin_t *gw_admin_start(struct event_base *base, gw_config_t *cfg)
{
    gw_admin_t *a = calloc(1, sizeof(*a));
    if (!a) return NULL;
    a->cfg = gw_config_ref(cfg);
    a->http = evhttp_new(base);
    int fd = socket(cfg->admin.ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    struct evhttp_bound_socket *bound = NULL;
    if (!a->http || fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(fd, (struct sockaddr *)&cfg->admin.ss, cfg->admin.sslen) < 0 || listen(fd, 128) < 0 ||
        !(bound = evhttp_accept_socket_with_handle(a->http, fd)) ||
        !(a->guard = gw_accept_guard_new(base, "admin")) ||
        gw_accept_guard_add(a->guard, evhttp_bound_socket_get_listener(bound)) < 0) {
        gw_error("cannot listen on the admin address %s: %s", cfg->admin.address, strerror(errno));
        if (fd >= 0 && !bound) close(fd);
        gw_accept_guard_free(a->guard);
        if (a->http) evhttp_free(a->http);
        gw_config_unref(a->cfg);
        free(a);
        return NULL;
    }
    /* Every method reaches handle(), which answers 405 in JSON (not libevent's HTML). */
    evhttp_set_allowed_methods(a->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                            EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                            EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
    evhttp_set_max_headers_size(a->http, ADMIN_MAX_HEAD);
    evhttp_set_max_body_size(a->http, ADMIN_MAX_BODY);
    evhttp_set_timeout(a->http, 10);
    evhttp_set_bevcb(a->http, conn_new, a);
    evhttp_set_gencb(a->http, handle, a);
    a->started = time(NULL);
    return a;
}

void gw_admin_set_reload(gw_admin_t *a, gw_admin_reload_fn fn, void *arg)
{
    a->reload = fn;
    a->reload_arg = arg;
}

void gw_admin_set_draining(gw_admin_t *a)
{
    a->draining = 1;
}

void gw_admin_set_config(gw_admin_t *a, gw_config_t *cfg)
{
    free(a->page.body); /* other tenants, or another store */
    free(a->page.key);
    a->page.body = a->page.key = NULL;
    gw_config_unref(a->cfg);
    a->cfg = gw_config_ref(cfg);
}

void gw_admin_free(gw_admin_t *a)
{
    if (!a) return;
    gw_accept_guard_free(a->guard);
    /* Before their first turn, connections are ours to let go; evhttp_free closes the rest. */
    for (admin_conn_t *c = a->conns, *next; c; c = next) {
        next = c->next;
        c->a = NULL;
        if (!c->evcon) {
            bufferevent_decref(c->bev);
            conn_forget(c);
        }
    }
    evhttp_free(a->http);
    free(a->page.body);
    free(a->page.key);
    gw_config_unref(a->cfg);
    free(a);
}
