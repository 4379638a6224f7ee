/* The configuration snapshot: loaded and checked whole, immutable, reference-counted. */
#ifndef GW_CONFIG_H
#define GW_CONFIG_H

#include <netinet/in.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>

#include "base/arena.h"
#include "base/conf.h"

typedef struct gw_pool gw_pool_t;

typedef struct gw_tls_conf {
    char *cert, *key;
    int64_t ticket_key_rotate_s; /* 0: GW_TLS_TICKET_ROTATE_S */
} gw_tls_conf_t;

typedef struct gw_listen {
    char *address;
    gw_tls_conf_t *tls;
    gw_conf_list_t allowed_hosts; /* the admin's only: host names it answers to (char *) */
    struct sockaddr_storage ss;
    socklen_t sslen;
    SSL_CTX *ssl;
    int proxy_protocol; /* every connection starts with a PROXY header (v1 or v2): conn.c */
} gw_listen_t;

/* What balancing and health checks know of a backend: shared by the workers (atomics), never
 * locked. Written by requests (passive failures) and by worker 0's health loop (health.c). */
typedef struct gw_backend_lb {
    atomic_int fails;               /* consecutive failures of requests (passive checks) */
    _Atomic uint64_t down_until_us; /* ejected: not re-admitted before this */
    _Atomic uint64_t slow_from_us, slow_until_us;       /* slow start after re-admission */
    atomic_int m_waiting, m_running, m_cache_pm, m_cap; /* scraped metrics (queue_aware) */
    atomic_int m_inflight;    /* the gateway's inflight when they were scraped */
    _Atomic uint64_t m_at_us; /* when they were scraped; 0: never */
} gw_backend_lb_t;

/* A backend's counters that outlive a snapshot (live.h): the requests of every snapshot count
 * in them, and the next config with the same pool name and url finds them again. */
typedef struct gw_backend_live {
    atomic_int inflight;
    /* 1 while the backend may be chosen as far as its health goes (active checks, passive
     * ejection: issue 7); 1 from the start. Residency approval is separate (res). */
    atomic_int healthy;
    gw_backend_lb_t lb; /* balancing and health state (issue 7: balance.c, health.c) */
    /* The caps of the newest config that names the backend (its first one's when made, then
     * each reload's as worker 0 takes it): every pick reads these, so a request that began
     * under an older snapshot (one waiting in the queue) is held to the current ones. */
    _Atomic int64_t max_concurrent, weight;
} gw_backend_live_t;

/* A tenant's places in a pool's wait queue (balance.c). */
typedef struct gw_queue_share {
    char *id; /* the tenant's id; "" without tenants */
    int64_t n;
    int64_t bytes;                          /* the bodies its waiters hold */
    struct gw_queue_place *oldest, *newest; /* its waiters, every worker's, in arrival order */
} gw_queue_share_t;

/* A pool's wait queue, every worker and every snapshot together (live.h, balance.c). */
typedef struct gw_pool_live {
    atomic_int queued;         /* requests waiting for a slot; read without the lock */
    pthread_mutex_t lock;      /* the rest: taken only when a request queues or leaves the queue */
    int64_t bytes;             /* their bodies */
    gw_queue_share_t *tenants; /* tenants with waiters */
    size_t ntenants, captenants;
} gw_pool_live_t;

typedef struct gw_backend {
    char *url, *country, *api_key_env, *api_key_file, *ca_file;
    int64_t weight, max_concurrent;
    /* derived */
    int tls;
    char *host, *name; /* name: host:port, for logs and metrics */
    char *host_header;
    char *auth_line; /* "authorization: Bearer ...\r\n", or NULL: a secret, never printed */
    size_t auth_line_len;
    struct sockaddr_storage ss;
    socklen_t sslen;
    SSL_CTX *ssl;
    size_t index; /* in the snapshot's backends */
    gw_pool_t *pool;
    gw_backend_live_t *live; /* in-flight, health: owned by the process (live.h) */
    char *port;              /* for re-resolution */
    /* Every address the host resolves to, each with its residency verdict: replaced (never
     * changed) by the resolver thread; the old ones live as long as the snapshot. */
    _Atomic(struct gw_resolved *) res;
} gw_backend_t;

enum { GW_BAL_LEAST_OUTSTANDING, GW_BAL_POWER_OF_TWO, GW_BAL_WRR, GW_BAL_QUEUE_AWARE };

struct gw_pool {
    char *name, *balance;
    gw_conf_list_t models;   /* char * */
    gw_conf_list_t backends; /* gw_backend_t */
    /* issue 7: balancing (docs/balancing.md) */
    const cJSON *aliases; /* {"client name": "backend name"} */
    struct {
        char *path; /* NULL: no active checks */
        int64_t interval_ms, timeout_ms, healthy_threshold, unhealthy_threshold;
        int64_t max_fails, fail_timeout_ms, slow_start_ms; /* passive ejection, re-admission */
    } health;
    struct {
        char *path;
        int64_t interval_ms;
    } metrics; /* queue_aware: the backends' vLLM-style metrics */
    struct {
        int64_t max, timeout_ms; /* max 0: no queue, 503 at once when every backend is full */
        int64_t max_per_tenant;  /* 0: the fair share only (balance.c) */
        int64_t max_bytes;       /* the queued requests' bodies together */
    } queue;
    char *affinity; /* "none", "session" (x-session-id, else the user field) */
    /* derived */
    int algo, affine;
    char **alias_from, **alias_to;
    size_t naliases;
    gw_pool_live_t *live; /* its wait queue: owned by the process (live.h) */
};

typedef struct gw_tenant {
    char *id;
    gw_conf_list_t models; /* char *; "*" is every model */
    int all_models;
    const cJSON *json; /* the whole entry: its other keys are the plugins' (tenant_keys) */
} gw_tenant_t;

typedef struct gw_plugin_inst {
    const gw_plugin_t *plugin;
    void *state;
    void *dl;         /* dlopen handle of an external plugin */
    const char *path; /* its entry in the config ("$.plugins[2]"), "$" for a built-in */
    long entry;       /* the index of that entry in plugins[], -1 for a built-in */
} gw_plugin_inst_t;

typedef struct gw_plugin_entry {
    char *path;
    const cJSON *config;
} gw_plugin_entry_t;

typedef struct gw_config {
    atomic_int refs;
    gw_arena_t *arena;
    cJSON *json;           /* the parsed file, alive as long as the snapshot */
    unsigned flags;        /* as loaded: GW_CONFIG_OFFLINE, GW_CONFIG_REPORT */
    gw_conf_list_t listen; /* gw_listen_t */
    gw_listen_t admin;
    int64_t workers;
    struct {
        int64_t max_header_bytes, max_headers, max_body_bytes;
        int64_t max_memory_bytes; /* resident memory over which new requests get 503 */
    } limits;
    struct {
        int64_t client_header_ms, client_body_ms, keepalive_ms, upstream_connect_ms,
            upstream_first_byte_ms, upstream_idle_ms, upstream_keepalive_ms, drain_ms;
        int64_t client_send_ms; /* a client that takes none of its answer for this is closed */
    } timeouts;
    gw_conf_list_t pools;   /* gw_pool_t */
    gw_conf_list_t tenants; /* gw_tenant_t; none: no authentication */
    struct {
        int64_t failure_rate, failure_burst; /* failed authentications per address (0: off) */
        int64_t failure_summary_ms;          /* one auth_failures_limited line per this */
    } auth;
    struct {
        char *path;
    } audit_log;
    struct {
        char *path; /* NULL: no access log */
    } access_log;
    struct {
        char *url, *on_unavailable;
        int64_t timeout_ms;
        /* derived from url */
        char *host, *password;
        int port, db;
    } redis;
    gw_conf_list_t plugin_entries; /* gw_plugin_entry_t */
    struct {
        int64_t refresh_ms; /* backend hosts are resolved again this often */
        char *hosts_file;   /* names found here are resolved from it, not from DNS */
    } resolver;
    struct gw_residency *residency; /* the policy handed over by the residency plugin, or NULL */
    /* Peers whose X-Forwarded-For names the client (issue 14): as written, and parsed. */
    gw_conf_list_t trusted_proxies; /* char * */
    struct gw_cidr *trusted_nets;
    size_t ntrusted_nets;
    /* derived */
    gw_plugin_inst_t *plugins; /* the chain: the plugins that run, in order */
    size_t nplugins;
    gw_plugin_inst_t *known; /* every plugin, in chain order (state NULL when not in it) */
    size_t nknown;
    int keys_unchecked; /* offline with external plugins: keys nobody owns are not refused */
    int want_usage;     /* a plugin reads the answers' usage */
    gw_backend_t **backends;
    size_t nbackends;
    char *models_json; /* the body of GET /v1/models */
    size_t models_json_len;
} gw_config_t;

/* Checks a config without the world beyond its text: backend host names are not resolved (the
 * backends get no addresses), no backend key is read (file or environment), no TLS context is
 * made (no certificate, key or CA file read), the GeoIP databases are not opened, external
 * plugins are not loaded (their entries are checked, their configs not). Built-in plugins are
 * configured as always. A snapshot loaded so is for checking only, never for serving. */
enum { GW_CONFIG_OFFLINE = 1 };

/* GW_CONFIG_REPORT (--residency-report): a backend address no database knows, or a lookup that
 * failed, is a verdict to show, not a config error. */
enum { GW_CONFIG_REPORT = 2 };

/* The snapshot's life (a reference count; the last unref releases its plugins and its live
 * counters, then its memory) and its lookups. Loading: config/load.h. */
gw_config_t *gw_config_ref(gw_config_t *c);
void gw_config_unref(gw_config_t *c);
gw_pool_t *gw_config_pool_for_model(const gw_config_t *c, const char *model);
const gw_tenant_t *gw_config_tenant(const gw_config_t *c, const char *id);
int gw_tenant_allows(const gw_tenant_t *t, const char *model);

#endif
