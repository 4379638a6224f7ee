/* The configuration snapshot: loaded and checked whole, immutable, reference-counted. */
#include "config/load.h"

#include <ctype.h>
#include <dlfcn.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/client_addr.h"
#include "config/live.h"
#include "base/overload.h"
#include "config/plugin_host.h"
#include "base/redis_url.h"
#include "base/tls.h"
#include "base/url.h"

#define MAX_CONFIG_BYTES (16u << 20)
#define INT_MAX_MS (24LL * 3600 * 1000)

static int load_tls(gw_conf_ctx_t *cx, const cJSON *n, const char *path, void *dst);
static int load_plugin_config(gw_conf_ctx_t *cx, const cJSON *n, const char *path, void *dst);
static int derive_pool_balance(gw_conf_ctx_t *cx, gw_pool_t *p, const char *pp);

static const gw_conf_key_t tls_keys[] = {
    {"cert", GW_CT_STR, offsetof(gw_tls_conf_t, cert), .max = 4096, .flags = GW_CK_REQUIRED},
    {"key", GW_CT_STR, offsetof(gw_tls_conf_t, key), .max = 4096, .flags = GW_CK_REQUIRED},
    {"ticket_key_rotate_s", GW_CT_INT, offsetof(gw_tls_conf_t, ticket_key_rotate_s), 1, 86400},
    {NULL},
};
static const gw_conf_obj_t tls_obj = {sizeof(gw_tls_conf_t), tls_keys, NULL};

static const gw_conf_key_t listen_keys[] = {
    {"address", GW_CT_STR, offsetof(gw_listen_t, address), .max = 256, .flags = GW_CK_REQUIRED},
    {"tls", GW_CT_FN, offsetof(gw_listen_t, tls), .fn = load_tls},
    {"proxy_protocol", GW_CT_BOOL, offsetof(gw_listen_t, proxy_protocol)},
    {NULL},
};
static const gw_conf_obj_t listen_obj = {sizeof(gw_listen_t), listen_keys, NULL};

static const gw_conf_key_t admin_keys[] = {
    {"address", GW_CT_STR, offsetof(gw_listen_t, address), .max = 256, .flags = GW_CK_REQUIRED},
    {"allowed_hosts", GW_CT_STRS, offsetof(gw_listen_t, allowed_hosts), 0, 100},
    {NULL},
};
static const gw_conf_obj_t admin_obj = {sizeof(gw_listen_t), admin_keys, NULL};

#define LIMIT(k, lo, hi)                                                                           \
    {                                                                                              \
#k, GW_CT_INT, offsetof(gw_config_t, limits.k), lo, hi                                     \
    }
static const gw_conf_key_t limits_keys[] = {
    LIMIT(max_header_bytes, 1024, 1 << 20),
    LIMIT(max_headers, 8, 1000),
    LIMIT(max_body_bytes, 1024, 1LL << 30),
    LIMIT(max_memory_bytes, 0, 1LL << 50), /* 0: no ceiling; default: 3/4 of RAM (overload.c) */
    {NULL},
};
#define TIMEOUT(k)                                                                                 \
    {                                                                                              \
#k, GW_CT_INT, offsetof(gw_config_t, timeouts.k), 1, INT_MAX_MS                            \
    }
static const gw_conf_key_t timeouts_keys[] = {
    TIMEOUT(client_header_ms),
    TIMEOUT(client_body_ms),
    TIMEOUT(keepalive_ms),
    TIMEOUT(upstream_connect_ms),
    TIMEOUT(upstream_first_byte_ms),
    TIMEOUT(upstream_idle_ms),
    TIMEOUT(upstream_keepalive_ms),
    {"drain_ms", GW_CT_INT, offsetof(gw_config_t, timeouts.drain_ms), 0, INT_MAX_MS},
    /* under 100 ms a scheduling hiccup of a client that reads would cut it */
    {"client_send_ms", GW_CT_INT, offsetof(gw_config_t, timeouts.client_send_ms), 100, INT_MAX_MS},
    {NULL},
};
/* Nested objects of the snapshot itself: offsets are relative to the snapshot. */
static const gw_conf_obj_t limits_obj = {0, limits_keys, NULL};
static const gw_conf_obj_t timeouts_obj = {0, timeouts_keys, NULL};

static void backend_init(void *p)
{
    gw_backend_t *b = p;
    b->weight = 1;
    b->max_concurrent = 0;
}

static const gw_conf_key_t backend_keys[] = {
    {"url", GW_CT_STR, offsetof(gw_backend_t, url), .max = 2048, .flags = GW_CK_REQUIRED},
    {"country", GW_CT_STR, offsetof(gw_backend_t, country), .max = 2, .flags = GW_CK_REQUIRED},
    {"weight", GW_CT_INT, offsetof(gw_backend_t, weight), 1, 1000},
    {"max_concurrent", GW_CT_INT, offsetof(gw_backend_t, max_concurrent), 0, 1000000},
    {"api_key_env", GW_CT_STR, offsetof(gw_backend_t, api_key_env), .max = 256},
    {"api_key_file", GW_CT_STR, offsetof(gw_backend_t, api_key_file), .max = 4096},
    {"ca_file", GW_CT_STR, offsetof(gw_backend_t, ca_file), .max = 4096},
    {NULL},
};
static const gw_conf_obj_t backend_obj = {sizeof(gw_backend_t), backend_keys, backend_init};

static int load_node(gw_conf_ctx_t *cx, const cJSON *n, const char *path, void *dst)
{
    *(const cJSON **)dst = n; /* checked by the plugin that reads it */
    return 0;
}

/* Balancing (issue 7, docs/balancing.md): health checks, the metrics of queue_aware, the queue. */
#define POOL_MS(o, k, lo)                                                                          \
    {                                                                                              \
#k, GW_CT_INT, offsetof(gw_pool_t, o.k), lo, INT_MAX_MS                                    \
    }
static const gw_conf_key_t health_keys[] = {
    {"path", GW_CT_STR, offsetof(gw_pool_t, health.path), .max = 1024},
    POOL_MS(health, interval_ms, 50),
    POOL_MS(health, timeout_ms, 10),
    {"healthy_threshold", GW_CT_INT, offsetof(gw_pool_t, health.healthy_threshold), 1, 100},
    {"unhealthy_threshold", GW_CT_INT, offsetof(gw_pool_t, health.unhealthy_threshold), 1, 100},
    {"max_fails", GW_CT_INT, offsetof(gw_pool_t, health.max_fails), 0, 1000},
    POOL_MS(health, fail_timeout_ms, 10),
    POOL_MS(health, slow_start_ms, 0),
    {NULL},
};
static const gw_conf_key_t metrics_keys[] = {
    {"path", GW_CT_STR, offsetof(gw_pool_t, metrics.path), .max = 1024},
    POOL_MS(metrics, interval_ms, 50),
    {NULL},
};
static const gw_conf_key_t queue_keys[] = {
    {"max", GW_CT_INT, offsetof(gw_pool_t, queue.max), 0, 1000000},
    POOL_MS(queue, timeout_ms, 1),
    {"max_per_tenant", GW_CT_INT, offsetof(gw_pool_t, queue.max_per_tenant), 0, 1000000},
    {"max_bytes", GW_CT_INT, offsetof(gw_pool_t, queue.max_bytes), 0, 1LL << 40},
    {NULL},
};
/* Offsets are relative to the pool. */
static const gw_conf_obj_t health_obj = {0, health_keys, NULL};
static const gw_conf_obj_t metrics_obj = {0, metrics_keys, NULL};
static const gw_conf_obj_t queue_obj = {0, queue_keys, NULL};

static void pool_init(void *p)
{
    gw_pool_t *o = p;
    o->health.interval_ms = 2000;
    o->health.timeout_ms = 1000;
    o->health.healthy_threshold = 2;
    o->health.unhealthy_threshold = 2;
    o->health.max_fails = 0; /* passive ejection is opted into (docs/balancing.md) */
    o->health.fail_timeout_ms = 10000;
    o->health.slow_start_ms = 10000;
    o->metrics.interval_ms = 500;
    o->queue.max = 1024;
    o->queue.timeout_ms = 30000;
    o->queue.max_bytes = 64LL << 20;
}

static const gw_conf_key_t pool_keys[] = {
    {"name", GW_CT_STR, offsetof(gw_pool_t, name), .max = 128, .flags = GW_CK_REQUIRED},
    {"models", GW_CT_STRS, offsetof(gw_pool_t, models), 1, 10000, GW_CK_REQUIRED},
    {"balance", GW_CT_STR, offsetof(gw_pool_t, balance), .max = 64},
    {"backends", GW_CT_OBJS, offsetof(gw_pool_t, backends), 1, 10000, GW_CK_REQUIRED, &backend_obj},
    {"aliases", GW_CT_FN, offsetof(gw_pool_t, aliases), .fn = load_node},
    {"health", GW_CT_OBJ, 0, .obj = &health_obj},
    {"metrics", GW_CT_OBJ, 0, .obj = &metrics_obj},
    {"queue", GW_CT_OBJ, 0, .obj = &queue_obj},
    {"affinity", GW_CT_STR, offsetof(gw_pool_t, affinity), .max = 16},
    {NULL},
};
static const gw_conf_obj_t pool_obj = {sizeof(gw_pool_t), pool_keys, pool_init};

static const gw_conf_key_t tenant_keys[] = {
    {"id", GW_CT_STR, offsetof(gw_tenant_t, id), .max = 128, .flags = GW_CK_REQUIRED},
    {"models", GW_CT_STRS, offsetof(gw_tenant_t, models), 1, 10000, GW_CK_REQUIRED},
    {NULL},
};
/* Every other key of a tenant belongs to the plugin that declares it (tenant_keys). */
static const gw_conf_obj_t tenant_obj = {sizeof(gw_tenant_t), tenant_keys, NULL,
                                         gw_plugins_own_tenant_key};

static const gw_conf_key_t plugin_keys[] = {
    {"path", GW_CT_STR, offsetof(gw_plugin_entry_t, path), .max = 4096, .flags = GW_CK_REQUIRED},
    {"config", GW_CT_FN, offsetof(gw_plugin_entry_t, config), .fn = load_plugin_config},
    {NULL},
};
static const gw_conf_obj_t plugin_obj = {sizeof(gw_plugin_entry_t), plugin_keys, NULL};

static const gw_conf_key_t audit_keys[] = {
    {"path", GW_CT_STR, offsetof(gw_config_t, audit_log.path), .max = 4096,
     .flags = GW_CK_REQUIRED},
    {NULL},
};
static const gw_conf_obj_t audit_obj = {0, audit_keys, NULL};

static const gw_conf_key_t access_log_keys[] = {
    {"path", GW_CT_STR, offsetof(gw_config_t, access_log.path), .max = 4096,
     .flags = GW_CK_REQUIRED},
    {NULL},
};
static const gw_conf_obj_t access_log_obj = {0, access_log_keys, NULL};

static const gw_conf_key_t redis_keys[] = {
    {"url", GW_CT_STR, offsetof(gw_config_t, redis.url), .max = 1024, .flags = GW_CK_REQUIRED},
    {"timeout_ms", GW_CT_INT, offsetof(gw_config_t, redis.timeout_ms), 1, 60000},
    {"on_unavailable", GW_CT_STR, offsetof(gw_config_t, redis.on_unavailable), .max = 16},
    {NULL},
};
static const gw_conf_obj_t redis_obj = {0, redis_keys, NULL};

/* Failed authentications per client address (auth_guard.c). */
static const gw_conf_key_t auth_keys[] = {
    {"failure_rate", GW_CT_INT, offsetof(gw_config_t, auth.failure_rate), 0, 1000000},
    {"failure_burst", GW_CT_INT, offsetof(gw_config_t, auth.failure_burst), 1, 1000000},
    {"failure_summary_ms", GW_CT_INT, offsetof(gw_config_t, auth.failure_summary_ms), 1000,
     INT_MAX_MS},
    {NULL},
};
static const gw_conf_obj_t auth_obj = {0, auth_keys, NULL};

static const gw_conf_key_t resolver_keys[] = {
    {"refresh_ms", GW_CT_INT, offsetof(gw_config_t, resolver.refresh_ms), 100, INT_MAX_MS},
    {"hosts_file", GW_CT_STR, offsetof(gw_config_t, resolver.hosts_file), .max = 4096},
    {NULL},
};
static const gw_conf_obj_t resolver_obj = {0, resolver_keys, NULL};

static const gw_conf_key_t top_keys[] = {
    {"listen", GW_CT_OBJS, offsetof(gw_config_t, listen), 1, 64, GW_CK_REQUIRED, &listen_obj},
    {"admin", GW_CT_OBJ, offsetof(gw_config_t, admin), .flags = GW_CK_REQUIRED, .obj = &admin_obj},
    {"workers", GW_CT_INT, offsetof(gw_config_t, workers), 0, 256},
    {"limits", GW_CT_OBJ, 0, .obj = &limits_obj},
    {"timeouts", GW_CT_OBJ, 0, .obj = &timeouts_obj},
    {"pools", GW_CT_OBJS, offsetof(gw_config_t, pools), 1, 10000, GW_CK_REQUIRED, &pool_obj},
    {"tenants", GW_CT_OBJS, offsetof(gw_config_t, tenants), 0, 100000, 0, &tenant_obj},
    {"auth", GW_CT_OBJ, 0, .obj = &auth_obj},
    {"audit_log", GW_CT_OBJ, 0, .obj = &audit_obj},
    {"access_log", GW_CT_OBJ, 0, .obj = &access_log_obj},
    {"redis", GW_CT_OBJ, 0, .obj = &redis_obj},
    {"plugins", GW_CT_OBJS, offsetof(gw_config_t, plugin_entries), 0, GW_MAX_PLUGINS, 0,
     &plugin_obj},
    {"resolver", GW_CT_OBJ, 0, .obj = &resolver_obj},
    {"trusted_proxies", GW_CT_STRS, offsetof(gw_config_t, trusted_proxies), 0, 1000},
    {NULL},
};
static const gw_conf_obj_t top_obj = {sizeof(gw_config_t), top_keys, NULL, gw_plugins_own_key};

static int load_tls(gw_conf_ctx_t *cx, const cJSON *n, const char *path, void *dst)
{
    gw_tls_conf_t *t = gw_arena_calloc(cx->arena, sizeof(*t));
    *(gw_tls_conf_t **)dst = t;
    return gw_conf_load(cx, n, path, &tls_obj, t);
}

static int load_plugin_config(gw_conf_ctx_t *cx, const cJSON *n, const char *path, void *dst)
{
    *(const cJSON **)dst = n; /* handed to the plugin's configure */
    return 0;
}

static void defaults(gw_config_t *c)
{
    c->workers = 0;
    c->limits.max_header_bytes = 32768;
    c->limits.max_headers = 100;
    c->limits.max_body_bytes = 4194304;
    c->limits.max_memory_bytes = gw_overload_default_limit(); /* 0 in the config: none */
    c->timeouts.client_header_ms = 10000;
    c->timeouts.client_body_ms = 30000;
    c->timeouts.keepalive_ms = 60000;
    c->timeouts.upstream_connect_ms = 2000;
    c->timeouts.upstream_first_byte_ms = 120000;
    c->timeouts.upstream_idle_ms = 60000;
    c->timeouts.upstream_keepalive_ms = 4000; /* under uvicorn's (vLLM's) 5 s keep-alive */
    c->timeouts.drain_ms = 30000;
    c->timeouts.client_send_ms = 60000;
    c->redis.timeout_ms = 100;
    c->resolver.refresh_ms = 30000;
    c->auth.failure_rate = 10;
    c->auth.failure_burst = 100;
    c->auth.failure_summary_ms = 60000;
}

static int derive_redis(gw_conf_ctx_t *cx, gw_config_t *c)
{
    if (!c->redis.url) return 0;
    if (c->redis.on_unavailable && strcmp(c->redis.on_unavailable, "reject") != 0 &&
        strcmp(c->redis.on_unavailable, "local") != 0) {
        gw_conf_error(cx, "$.redis.on_unavailable", "must be reject or local");
        return -1;
    }
    gw_redis_url_t u;
    if (gw_redis_url_parse(c->redis.url, &u) < 0) {
        gw_conf_error(cx, "$.redis.url", "must look like redis://host:6379/0");
        return -1;
    }
    c->redis.host = gw_arena_strdup(c->arena, u.host);
    c->redis.password = u.password[0] ? gw_arena_strdup(c->arena, u.password) : NULL;
    c->redis.port = u.port;
    c->redis.db = u.db;
    explicit_bzero(u.password, sizeof(u.password));
    return 0;
}

/* "host:port" or "[v6]:port", numeric hosts only. */
static int parse_address(const char *addr, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[256];
    const char *colon = strrchr(addr, ':');
    if (!colon || colon == addr) return -1;
    size_t hl = (size_t)(colon - addr);
    const char *h = addr;
    if (addr[0] == '[') {
        if (hl < 3 || addr[hl - 1] != ']') return -1;
        h = addr + 1;
        hl -= 2;
    }
    if (hl >= sizeof(host)) return -1;
    memcpy(host, h, hl);
    host[hl] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || colon[1] == '\0' || port < 0 || port > 65535) return -1;
    struct addrinfo hints = {.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE,
                             .ai_socktype = SOCK_STREAM};
    struct addrinfo *res;
    if (getaddrinfo(host, colon + 1, &hints, &res) != 0) return -1;
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

static char *read_secret_file(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot read the key file: %s", strerror(errno));
        return NULL;
    }
    char buf[4096];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    while (n && isspace((unsigned char)buf[n - 1])) n--;
    buf[n] = '\0';
    if (n == 0) {
        snprintf(err, errlen, "the key file is empty");
        return NULL;
    }
    char *s = strdup(buf);
    explicit_bzero(buf, sizeof(buf));
    if (!s) snprintf(err, errlen, "out of memory");
    return s;
}

static int check_secret(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x21 || (unsigned char)*s > 0x7e) return -1;
    return 0;
}

/* The backend's key, from the environment or a file, as a ready header line (b->auth_line). */
static int backend_key(gw_conf_ctx_t *cx, gw_config_t *c, gw_backend_t *b, const char *path)
{
    char err[512];
    char *key = NULL;
    if (b->api_key_env && b->api_key_file) {
        gw_conf_error(cx, path, "api_key_env and api_key_file exclude each other");
        return -1;
    }
    int offline = c->flags & GW_CONFIG_OFFLINE; /* no key read */
    if (b->api_key_env && !offline) {
        const char *v = getenv(b->api_key_env);
        if (!v || !*v) {
            gw_conf_error(cx, gw_conf_path_key(cx, path, "api_key_env"),
                          "the environment variable is not set");
            return -1;
        }
        key = strdup(v);
        if (!key) {
            gw_conf_error(cx, path, "out of memory");
            return -1;
        }
    } else if (b->api_key_file && !offline) {
        key = read_secret_file(b->api_key_file, err, sizeof(err));
        if (!key) {
            gw_conf_error(cx, gw_conf_path_key(cx, path, "api_key_file"), "%s", err);
            return -1;
        }
    }
    if (!key) return 0;
    if (check_secret(key) < 0) {
        gw_conf_error(cx, path, "the backend key has characters a header cannot carry");
        free(key);
        return -1;
    }
    size_t n = strlen(key) + 32;
    b->auth_line = gw_arena_alloc(c->arena, n);
    if (b->auth_line)
        b->auth_line_len = (size_t)snprintf(b->auth_line, n, "authorization: Bearer %s\r\n", key);
    explicit_bzero(key, strlen(key));
    free(key);
    if (!b->auth_line) {
        gw_conf_error(cx, path, "out of memory");
        return -1;
    }
    return 0;
}

/* An https backend's TLS client context (none offline); ca_file only for https. */
static int backend_tls(gw_conf_ctx_t *cx, gw_config_t *c, gw_backend_t *b, const char *path)
{
    char err[512];
    if (b->tls && !(c->flags & GW_CONFIG_OFFLINE)) {
        b->ssl = gw_tls_client_ctx(b->ca_file, err, sizeof(err));
        if (!b->ssl) {
            gw_conf_error(cx, gw_conf_path_key(cx, path, b->ca_file ? "ca_file" : "url"), "%s",
                          err);
            return -1;
        }
    } else if (b->ca_file && !b->tls) {
        gw_conf_error(cx, gw_conf_path_key(cx, path, "ca_file"), "is only for https backends");
        return -1;
    }
    return 0;
}

/* The registered steps of the store layer (gw_config_set_steps), or NULL. */
static const gw_config_steps_t *store_steps;

void gw_config_set_steps(const gw_config_steps_t *steps)
{
    store_steps = steps;
}

static int derive_backend(gw_conf_ctx_t *cx, gw_config_t *c, gw_backend_t *b, const char *path)
{
    char err[512];
    const char *upath = gw_conf_path_key(cx, path, "url");
    gw_url_t u;
    const char *why;
    if (gw_url_parse(b->url, &u, &why) < 0) {
        gw_conf_error(cx, upath, "%s", why);
        return -1;
    }
    b->tls = u.tls;
    b->host = gw_arena_strdup(cx->arena, u.host);
    b->port = gw_arena_strdup(cx->arena, u.port);
    b->name = gw_arena_strdup(cx->arena, u.name);
    b->host_header = b->name;
    if (!b->host || !b->port || !b->name) {
        gw_conf_error(cx, upath, "out of memory");
        return -1;
    }
    /* Every address (A and AAAA); resolved again by the resolver thread (store/resolver.c). */
    if (store_steps && store_steps->resolve_backend(cx, c, b, path, err, sizeof(err)) < 0) {
        gw_conf_error(cx, upath, "%s", err);
        return -1;
    }
    if (!isupper((unsigned char)b->country[0]) || !isupper((unsigned char)b->country[1]) ||
        b->country[2]) {
        gw_conf_error(cx, gw_conf_path_key(cx, path, "country"),
                      "must be an ISO 3166 alpha-2 code such as CH");
        return -1;
    }
    if (backend_key(cx, c, b, path) < 0) return -1;
    return backend_tls(cx, c, b, path);
}

/* Same port (not 0: each gets its own), and the same address or a wildcard on either side. */
static int addresses_overlap(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    for (const struct sockaddr_storage *x = a; x; x = x == a ? b : NULL)
        if ((x->ss_family == AF_INET &&
             ((const struct sockaddr_in *)(const void *)x)->sin_port == 0) ||
            (x->ss_family == AF_INET6 &&
             ((const struct sockaddr_in6 *)(const void *)x)->sin6_port == 0))
            return 0;
    if (a->ss_family == AF_INET && b->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port &&
               (x->sin_addr.s_addr == y->sin_addr.s_addr || x->sin_addr.s_addr == INADDR_ANY ||
                y->sin_addr.s_addr == INADDR_ANY);
    }
    if (a->ss_family == AF_INET6 && b->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
        return x->sin6_port == y->sin6_port &&
               (memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0 ||
                IN6_IS_ADDR_UNSPECIFIED(&x->sin6_addr) || IN6_IS_ADDR_UNSPECIFIED(&y->sin6_addr));
    }
    const struct sockaddr_in *v4 = (const void *)(a->ss_family == AF_INET ? a : b);
    const struct sockaddr_in6 *v6 = (const void *)(a->ss_family == AF_INET ? b : a);
    return (a->ss_family == AF_INET || b->ss_family == AF_INET) && v4->sin_port == v6->sin6_port &&
           IN6_IS_ADDR_UNSPECIFIED(&v6->sin6_addr); /* [::] also takes IPv4 by default */
}

/* trusted_proxies: CIDRs (or single addresses) whose X-Forwarded-For names the client. */
static int derive_trusted_proxies(gw_conf_ctx_t *cx, gw_config_t *c)
{
    int rc = 0;
    char **s = c->trusted_proxies.items;
    size_t n = c->trusted_proxies.n;
    c->trusted_nets = gw_arena_calloc(c->arena, (n ? n : 1) * sizeof(*c->trusted_nets));
    for (size_t i = 0; i < n; i++)
        if (gw_cidr_parse(s[i], &c->trusted_nets[i]) < 0) {
            gw_conf_error(cx, gw_conf_path_index(cx, "$.trusted_proxies", i),
                          "must be a network such as 10.0.0.0/8 or fd00::/8, or one address");
            rc = -1;
        }
    c->ntrusted_nets = rc == 0 ? n : 0;
    return rc;
}

static int derive(gw_conf_ctx_t *cx, gw_config_t *c)
{
    int rc = 0;
    char err[512];
    if (c->workers == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        c->workers = n > 0 ? n : 1;
    }
    gw_listen_t *ls = c->listen.items;
    for (size_t i = 0; i < c->listen.n; i++) {
        char *p = gw_conf_path_index(cx, "$.listen", i);
        if (parse_address(ls[i].address, &ls[i].ss, &ls[i].sslen) < 0) {
            gw_conf_error(cx, gw_conf_path_key(cx, p, "address"),
                          "must be a numeric host:port such as 127.0.0.1:8080");
            rc = -1;
        }
        if (ls[i].tls && !(c->flags & GW_CONFIG_OFFLINE)) {
            ls[i].ssl = gw_tls_server_ctx(ls[i].tls->cert, ls[i].tls->key,
                                          ls[i].tls->ticket_key_rotate_s, err, sizeof(err));
            if (!ls[i].ssl) {
                gw_conf_error(cx, gw_conf_path_key(cx, p, "tls"), "%s", err);
                rc = -1;
            }
        }
    }
    if (parse_address(c->admin.address, &c->admin.ss, &c->admin.sslen) < 0) {
        gw_conf_error(cx, "$.admin.address", "must be a numeric host:port such as 127.0.0.1:9090");
        rc = -1;
    } else {
        /* The admin listener shows verdicts, usage and metrics and takes reloads: never on a
         * public listener's port (SO_REUSEPORT would otherwise let both bind). */
        for (size_t i = 0; i < c->listen.n; i++)
            if (addresses_overlap(&c->admin.ss, &ls[i].ss)) {
                gw_conf_error(cx, "$.admin.address", "must not be a public listener's address (%s)",
                              ls[i].address);
                rc = -1;
            }
    }
    char **hosts = c->admin.allowed_hosts.items;
    for (size_t i = 0; i < c->admin.allowed_hosts.n; i++) {
        size_t n = strlen(hosts[i]);
        if (n == 0 || n > 253 ||
            strspn(hosts[i], "abcdefghijklmnopqrstuvwxyz"
                             "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.") != n) {
            gw_conf_error(cx, gw_conf_path_index(cx, "$.admin.allowed_hosts", i),
                          "must be a host name without a port, such as gotthard-1.mgmt.example");
            rc = -1;
        }
    }
    gw_pool_t *pools = c->pools.items;
    size_t nb = 0;
    for (size_t i = 0; i < c->pools.n; i++) nb += pools[i].backends.n;
    c->backends = gw_arena_calloc(c->arena, (nb ? nb : 1) * sizeof(*c->backends));
    for (size_t i = 0; i < c->pools.n; i++) {
        gw_pool_t *p = &pools[i];
        char *pp = gw_conf_path_index(cx, "$.pools", i);
        for (size_t j = 0; j < i; j++)
            if (strcmp(pools[j].name, p->name) == 0) {
                gw_conf_error(cx, gw_conf_path_key(cx, pp, "name"), "is used by another pool");
                rc = -1;
            }
        if (derive_pool_balance(cx, p, pp) < 0) rc = -1;
        char **models = p->models.items;
        for (size_t m = 0; m < p->models.n; m++) {
            if (!models[m]) continue;
            for (size_t q = 0; q <= i; q++) {
                gw_pool_t *o = &pools[q];
                char **om = o->models.items;
                size_t lim = q == i ? m : o->models.n;
                for (size_t k = 0; k < lim; k++)
                    if (om[k] && strcmp(om[k], models[m]) == 0) {
                        gw_conf_error(cx,
                                      gw_conf_path_index(cx, gw_conf_path_key(cx, pp, "models"), m),
                                      "is already served by pool %s", o->name);
                        rc = -1;
                    }
            }
        }
        gw_backend_t *bs = p->backends.items;
        char *bp = gw_conf_path_key(cx, pp, "backends");
        for (size_t j = 0; j < p->backends.n; j++) {
            bs[j].pool = p;
            bs[j].index = c->nbackends;
            c->backends[c->nbackends++] = &bs[j];
            if (bs[j].url && bs[j].country &&
                derive_backend(cx, c, &bs[j], gw_conf_path_index(cx, bp, j)) < 0)
                rc = -1;
        }
    }
    return rc;
}

/* Balancing (issue 7): the algorithm, affinity, aliases; then no alias may shadow a model. */
static int derive_pool_balance(gw_conf_ctx_t *cx, gw_pool_t *p, const char *pp)
{
    static const char *const algos[] = {"least_outstanding", "power_of_two", "weighted_round_robin",
                                        "queue_aware", NULL};
    int rc = 0;
    p->algo = GW_BAL_LEAST_OUTSTANDING;
    if (p->balance) {
        int k = 0;
        while (algos[k] && strcmp(algos[k], p->balance) != 0) k++;
        if (!algos[k]) {
            gw_conf_error(cx, gw_conf_path_key(cx, pp, "balance"),
                          "must be least_outstanding, power_of_two, weighted_round_robin or "
                          "queue_aware");
            rc = -1;
        }
        p->algo = k;
    }
    if (!p->metrics.path) p->metrics.path = "/metrics";
    if (p->affinity && strcmp(p->affinity, "none") != 0 && strcmp(p->affinity, "session") != 0) {
        gw_conf_error(cx, gw_conf_path_key(cx, pp, "affinity"), "must be none or session");
        rc = -1;
    }
    p->affine = p->affinity && strcmp(p->affinity, "session") == 0;
    if (p->health.path && p->health.path[0] != '/') {
        gw_conf_error(cx, gw_conf_path_key(cx, gw_conf_path_key(cx, pp, "health"), "path"),
                      "must begin with /");
        rc = -1;
    }
    if (p->metrics.path[0] != '/') {
        gw_conf_error(cx, gw_conf_path_key(cx, gw_conf_path_key(cx, pp, "metrics"), "path"),
                      "must begin with /");
        rc = -1;
    }
    const char *ap = gw_conf_path_key(cx, pp, "aliases");
    if (p->aliases && !cJSON_IsObject(p->aliases)) {
        gw_conf_error(cx, ap, "must be an object of model names");
        return -1;
    }
    size_t n = p->aliases ? (size_t)cJSON_GetArraySize(p->aliases) : 0;
    p->alias_from = gw_arena_calloc(cx->arena, (n + 1) * sizeof(char *));
    p->alias_to = gw_arena_calloc(cx->arena, (n + 1) * sizeof(char *));
    if (!p->alias_from || !p->alias_to) return -1;
    for (const cJSON *a = p->aliases ? p->aliases->child : NULL; a; a = a->next) {
        const char *kp = gw_conf_path_key(cx, ap, a->string);
        if (!cJSON_IsString(a) || !a->valuestring[0] || strlen(a->valuestring) > 256 ||
            !a->string[0] || strlen(a->string) > 256) {
            gw_conf_error(cx, kp, "must be a model name (1 to 256 characters)");
            rc = -1;
            continue;
        }
        for (size_t k = 0; k < p->naliases; k++)
            if (strcmp(p->alias_from[k], a->string) == 0) {
                gw_conf_error(cx, kp, "duplicate alias");
                rc = -1;
            }
        p->alias_from[p->naliases] = a->string;
        p->alias_to[p->naliases++] = a->valuestring;
    }
    return rc;
}

/* An alias names no model of any pool, nor another pool's alias. */
static int check_aliases(gw_conf_ctx_t *cx, gw_config_t *c)
{
    int rc = 0;
    gw_pool_t *pools = c->pools.items;
    for (size_t i = 0; i < c->pools.n; i++)
        for (size_t a = 0; a < pools[i].naliases; a++) {
            const char *name = pools[i].alias_from[a];
            for (size_t j = 0; j < c->pools.n; j++) {
                char **models = pools[j].models.items;
                int clash = 0;
                for (size_t m = 0; m < pools[j].models.n; m++)
                    clash |= models[m] && strcmp(models[m], name) == 0;
                for (size_t b = 0; j < i && b < pools[j].naliases; b++)
                    clash |= strcmp(pools[j].alias_from[b], name) == 0;
                if (clash) {
                    gw_conf_error(
                        cx,
                        gw_conf_path_key(
                            cx,
                            gw_conf_path_key(cx, gw_conf_path_index(cx, "$.pools", i), "aliases"),
                            name),
                        "is already a model of pool %s", pools[j].name);
                    rc = -1;
                }
            }
        }
    return rc;
}

static _Thread_local const gw_tenant_t *sort_base; /* for by_id: loads run on several threads */

/* By id, then by place in the config. */
static int by_id(const void *a, const void *b)
{
    size_t i = *(const size_t *)a, j = *(const size_t *)b;
    int d = strcmp(sort_base[i].id, sort_base[j].id);
    return d ? d : (i > j) - (i < j);
}

/* Each tenant whose id an earlier one has: sorted, in n log n (the config allows 100,000). */
static int unique_ids(gw_conf_ctx_t *cx, gw_config_t *c)
{
    const gw_tenant_t *ts = c->tenants.items;
    size_t n = 0, *ix = gw_arena_alloc(cx->arena, (c->tenants.n + 1) * sizeof(*ix));
    if (!ix) return -1;
    for (size_t i = 0; i < c->tenants.n; i++)
        if (ts[i].id) ix[n++] = i;
    sort_base = ts;
    qsort(ix, n, sizeof(*ix), by_id);
    int rc = 0;
    for (size_t k = 1; k < n; k++)
        if (strcmp(ts[ix[k]].id, ts[ix[k - 1]].id) == 0) {
            gw_conf_error(cx,
                          gw_conf_path_key(cx, gw_conf_path_index(cx, "$.tenants", ix[k]), "id"),
                          "is used by another tenant");
            rc = -1;
        }
    return rc;
}

/* Tenant ids are tokens, unique; their models exist in some pool (or are "*"). */
static int derive_tenants(gw_conf_ctx_t *cx, gw_config_t *c)
{
    int rc = 0;
    gw_tenant_t *ts = c->tenants.items;
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(c->json, "tenants");
    const cJSON *node = list ? list->child : NULL; /* walked beside i: no lookup by index */
    for (size_t i = 0; i < c->tenants.n; i++, node = node ? node->next : NULL) {
        gw_tenant_t *t = &ts[i];
        char *tp = gw_conf_path_index(cx, "$.tenants", i);
        t->json = node;
        if (!t->id) continue;
        for (const char *p = t->id; *p; p++)
            if (!(isalnum((unsigned char)*p) || *p == '-' || *p == '_' || *p == '.')) {
                gw_conf_error(cx, gw_conf_path_key(cx, tp, "id"),
                              "may hold only letters, digits, '-', '_' and '.'");
                rc = -1;
                break;
            }
        char **models = t->models.items;
        for (size_t m = 0; m < t->models.n; m++) {
            if (!models[m]) continue;
            if (strcmp(models[m], "*") == 0)
                t->all_models = 1;
            else if (!gw_config_pool_for_model(c, models[m])) {
                gw_conf_error(cx, gw_conf_path_index(cx, gw_conf_path_key(cx, tp, "models"), m),
                              "is not served by any pool");
                rc = -1;
            }
        }
    }
    if (unique_ids(cx, c) < 0) rc = -1;
    return rc;
}

static int build_models_json(gw_config_t *c)
{
    cJSON *root = cJSON_CreateObject(), *data = cJSON_CreateArray();
    if (!root || !data) {
        cJSON_Delete(root);
        cJSON_Delete(data);
        return -1;
    }
    cJSON_AddStringToObject(root, "object", "list");
    cJSON_AddItemToObject(root, "data", data);
    gw_pool_t *pools = c->pools.items;
    for (size_t i = 0; i < c->pools.n; i++) {
        char **models = pools[i].models.items;
        for (size_t m = 0; m < pools[i].models.n + pools[i].naliases; m++) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(
                o, "id",
                m < pools[i].models.n ? models[m] : pools[i].alias_from[m - pools[i].models.n]);
            cJSON_AddStringToObject(o, "object", "model");
            cJSON_AddNumberToObject(o, "created", 0);
            cJSON_AddStringToObject(o, "owned_by", "gotthard");
            cJSON_AddItemToArray(data, o);
        }
    }
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!s) return -1;
    c->models_json_len = strlen(s);
    c->models_json = gw_arena_strndup(c->arena, s, c->models_json_len);
    cJSON_free(s);
    return c->models_json ? 0 : -1;
}

static void free_json(void *p)
{
    cJSON_Delete(p);
}

static void detach_live(void *c)
{
    gw_live_detach(c);
}

static void release_plugins(void *c)
{
    gw_plugins_release(c);
}

static char *read_file(const char *file, size_t *len, char *err, size_t errlen)
{
    FILE *f = fopen(file, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot open: %s", strerror(errno));
        return NULL;
    }
    char *buf = malloc(MAX_CONFIG_BYTES + 1);
    size_t n = buf ? fread(buf, 1, MAX_CONFIG_BYTES + 1, f) : 0;
    int bad = ferror(f);
    fclose(f);
    if (!buf || bad || n > MAX_CONFIG_BYTES) {
        snprintf(err, errlen, "cannot read, or larger than 16 MiB");
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

gw_config_t *gw_config_load(const char *file, char **errors)
{
    return gw_config_load_flags(file, 0, errors);
}

gw_config_t *gw_config_load_flags(const char *file, unsigned flags, char **errors)
{
    *errors = NULL;
    char err[512];
    size_t len;
    char *text = read_file(file, &len, err, sizeof(err));
    if (!text) {
        *errors = malloc(strlen(err) + 8);
        if (*errors) sprintf(*errors, "$: %s\n", err);
        return NULL;
    }
    gw_config_t *c = gw_config_load_text(text, len, flags, errors);
    free(text);
    return c;
}

gw_config_t *gw_config_load_text(const char *text, size_t len, unsigned flags, char **errors)
{
    *errors = NULL;
    const char *end = NULL;
    cJSON *json = gw_conf_parse(text, len, &end);
    if (!json) {
        int line = 1;
        const char *stop = end ? end : cJSON_GetErrorPtr();
        if (!stop || stop < text || stop > text + len) stop = text;
        for (const char *p = text; p < stop; p++) line += *p == '\n';
        *errors = malloc(64);
        if (*errors) snprintf(*errors, 64, "$: invalid JSON near line %d\n", line);
        return NULL;
    }
    gw_arena_t *arena = gw_arena_new(16384);
    gw_config_t *c = arena ? gw_arena_calloc(arena, sizeof(*c)) : NULL;
    if (!c) {
        cJSON_Delete(json);
        gw_arena_free(arena);
        *errors = strdup("$: out of memory\n");
        return NULL;
    }
    c->arena = arena;
    c->json = json;
    c->flags = flags;
    gw_arena_cleanup(arena, free_json, json);
    /* What the last unref releases before the memory, in this order: the plugins (their own
     * gw_conf_on_release functions, registered later, run before them), then the live counters. */
    if (gw_arena_cleanup(arena, detach_live, c) < 0 ||
        gw_arena_cleanup(arena, release_plugins, c) < 0) {
        gw_arena_free(arena);
        *errors = strdup("$: out of memory\n");
        return NULL;
    }
    atomic_init(&c->refs, 1);
    defaults(c);
    gw_conf_ctx_t cx;
    gw_conf_ctx_init(&cx, arena);
    cx.config = c;
    cx.root = json;
    /* First: the loader's messages name keys, which must be printable. */
    int rc = gw_conf_check_strings(&cx, json, "$");
    /* The plugins' tables first: the keys they own are theirs, not unknown. Its problems (a
     * plugin that does not load) do not keep the rest of the config from being checked. */
    int plugins_rc = rc == 0 ? gw_plugins_open(&cx, c, &top_obj, &tenant_obj) : -1;
    if (rc == 0) rc = gw_conf_load(&cx, json, "$", &top_obj, c);
    if (rc == 0) rc = derive(&cx, c);
    if (rc == 0) rc = check_aliases(&cx, c);
    if (rc == 0) rc = derive_tenants(&cx, c);
    if (rc == 0) rc = derive_redis(&cx, c);
    if (rc == 0) rc = derive_trusted_proxies(&cx, c);
    /* Offline, external plugins are not loaded: their entries are checked, not their configs. */
    if (rc == 0) rc = plugins_rc;
    if (rc == 0) rc = gw_plugins_configure(&cx, c);
    if (c->access_log.path) c->want_usage = 1; /* the access log carries the tokens */
    if (rc == 0 && store_steps) rc = store_steps->verdicts(&cx, c);
    if (rc == 0 && gw_live_attach(c) < 0) { /* in-flight, health, queues carry over */
        gw_conf_error(&cx, "$", "out of memory");
        rc = -1;
    }
    if (rc == 0 && build_models_json(c) < 0) {
        gw_conf_error(&cx, "$", "out of memory");
        rc = -1;
    }
    if (rc < 0 || cx.nerrors) {
        *errors = cx.errors ? cx.errors : strdup("$: invalid\n");
        cx.errors = NULL;
        gw_config_unref(c);
        return NULL;
    }
    gw_conf_ctx_release(&cx);
    return c;
}
