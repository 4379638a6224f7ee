/* The public plugin interface of gotthard: the one header every plugin includes. */
#ifndef GOTTHARD_PLUGIN_H
#define GOTTHARD_PLUGIN_H

#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>

/* Raised whenever gw_plugin_t changes: a plugin built against another table is refused at
 * load instead of having its hooks read from the wrong slots. 2: upstream_select, wants_usage.
 * 3: the core's config tables, tenant keys, positions, admin contributions, activate. */
#define GW_PLUGIN_ABI 3

typedef struct gw_req gw_req_t;
typedef struct gw_conf_ctx gw_conf_ctx_t;
struct event_base;

/*
 * What a hook returns.
 *
 *   GW_CONTINUE  go on with the next plugin, then the next phase.
 *   GW_DONE      the plugin has answered the request (gw_req_respond_error); later
 *                phases are skipped except log.
 *   GW_WAIT      the plugin started asynchronous work on gw_req_base(r) and will call
 *                gw_req_resume(r, result) exactly once, later, from that loop, with
 *                GW_CONTINUE, GW_DONE or GW_ERROR. The request stays alive until then,
 *                even if the client goes away (gw_req_aborted tells).
 *   GW_ERROR     an internal failure: the gateway answers 500 and closes.
 *   GW_DROP      response_event only: leave this event out of what the client gets.
 */
enum { GW_CONTINUE = 0, GW_DONE = 1, GW_WAIT = 2, GW_DROP = 3, GW_ERROR = -1 };

/* ------------------------------------------------------------------------ config tables
 *
 * A plugin declares its keys once, in tables, and the core's loader reads them: type, bounds,
 * default (the table's init), unknown keys refused, duplicate keys refused, every problem
 * reported with its JSON path. Memory for what it loads comes from the config's arena and
 * dies with the snapshot; release is needed only for foreign objects (a file handle, an
 * OpenSSL key), or register those with gw_conf_on_release. */
typedef enum {
    GW_CT_INT,  /* int64_t, within [min, max] */
    GW_CT_BOOL, /* int, 0 or 1 */
    GW_CT_STR,  /* char *, not empty, at most max bytes (0: any), UTF-8 without controls */
    GW_CT_STRS, /* gw_conf_list_t of char *, between min and max entries (max 0: any) */
    GW_CT_OBJ,  /* an object loaded by obj into the struct at offset */
    GW_CT_OBJS, /* gw_conf_list_t of obj->size items, between min and max entries */
    GW_CT_FN,   /* fn parses the node itself */
    GW_CT_ENUM, /* int: the index of the string in names (NULL-terminated) */
    GW_CT_NUM,  /* double, within [min, max] */
    GW_CT_JSON, /* const cJSON *: the node itself, alive as long as the snapshot */
} gw_conf_type_t;

enum {
    GW_CK_REQUIRED = 1,
    /* The value is a secret (a password, a key, a salt): never quoted by an error, a report,
     * `gotthard -t` or the admin listener, which show "(secret)" in its place. */
    GW_CK_SECRET = 2,
};

typedef struct gw_conf_key gw_conf_key_t;

typedef struct gw_conf_obj {
    size_t size;               /* of one item (GW_CT_OBJS), or of the struct loaded */
    const gw_conf_key_t *keys; /* ends with a NULL name */
    void (*init)(void *item);  /* defaults; may be NULL */
    /* A key not in the table that someone else reads: 1 to accept it. */
    int (*owned_elsewhere)(const char *key);
} gw_conf_obj_t;

struct gw_conf_key {
    const char *name;
    gw_conf_type_t type;
    size_t offset;
    int64_t min, max; /* INT, NUM: bounds. STR: max length. STRS, OBJS: min and max count */
    unsigned flags;   /* GW_CK_* */
    const gw_conf_obj_t *obj;
    /* GW_CT_FN: parses the node itself into dst; 0, or -1 after gw_conf_error. */
    int (*fn)(gw_conf_ctx_t *cx, const cJSON *node, const char *path, void *dst);
    const char *const *names; /* GW_CT_ENUM */
    const char *note;         /* INT, NUM: what a bound means, added to its error ("0: no limit") */
};

/* A list of strings (char *) or of objects (obj->size bytes each). */
typedef struct gw_conf_list {
    void *items;
    size_t n;
} gw_conf_list_t;

/* Loads the object node (at JSON path `path`) into dst by the table obj: 0, or -1 with an error
 * for each problem. Every key of node must be in the table (or owned elsewhere). */
int gw_conf_load(gw_conf_ctx_t *cx, const cJSON *node, const char *path, const gw_conf_obj_t *obj,
                 void *dst);
/* The same, reading only the table's keys and leaving any other key of node alone (a plugin's
 * keys inside an object that the core, or another plugin, also reads: a tenant entry). */
int gw_conf_load_some(gw_conf_ctx_t *cx, const cJSON *node, const char *path,
                      const gw_conf_obj_t *obj, void *dst);
/* Config problems, reported with the JSON path they concern. Never put a secret in them. */
void gw_conf_error(gw_conf_ctx_t *cx, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Memory that lives as long as the config (zeroed), and a copy of a string in it. */
void *gw_conf_alloc(gw_conf_ctx_t *cx, size_t size);
char *gw_conf_strdup(gw_conf_ctx_t *cx, const char *s);
/* fn(arg) runs when the config is released (or refused), in the reverse order of registration,
 * before the plugin's release. */
int gw_conf_on_release(gw_conf_ctx_t *cx, void (*fn)(void *), void *arg);
/* path + "." + key, and path + "[i]", in the config's memory. */
char *gw_conf_path_key(gw_conf_ctx_t *cx, const char *path, const char *key);
char *gw_conf_path_index(gw_conf_ctx_t *cx, const char *path, size_t i);
/* The whole config being loaded (read-only), for a plugin's top-level keys (config_keys). */
const cJSON *gw_conf_root(gw_conf_ctx_t *cx);
/* The config's tenants, for a plugin's tenant-level keys (tenant_keys): how many, and the
 * i-th's id, its object (with every key, the core's and other plugins' too: read yours with
 * gw_conf_load_some) and its JSON path ("$.tenants[2]"). */
size_t gw_conf_tenant_count(gw_conf_ctx_t *cx);
const cJSON *gw_conf_tenant(gw_conf_ctx_t *cx, size_t i, const char **id, const char **path);

/* ------------------------------------------------------------------------ the chain
 *
 * Each plugin has a place in the chain of hooks: its rank (lower runs first, in every phase),
 * then `after` and `before` (a plugin's name) move it relative to another one. A name that is
 * no plugin at all is a config error; one that names a plugin the config leaves off is ignored.
 * The built-in plugins' ranks: */
enum {
    GW_RANK_AUTH = 100,    /* auth_apikey 100, auth_jwt 110: who the tenant is */
    GW_RANK_QUOTA = 200,   /* quota: how much it may */
    GW_RANK_ROUTE = 300,   /* residency: where it may go */
    GW_RANK_PRIVACY = 900, /* privacy: what is stripped, always on */
    GW_RANK_LAST = 1000,   /* rank 0 means this: after every built-in */
};

/* ------------------------------------------------------------------------ the admin listener
 *
 * What a plugin contributes to the admin listener's documents. report is called with page:
 *   "status"   GET /status: add your part (one member named after the plugin) to out; a
 *              plugin with something to say per tenant may add members to the entries of
 *              out's "tenants" array (each has the tenant's "id") instead.
 *   "privacy"  GET /privacy: add what you do to data (facts derived from your loaded config).
 *   a name in pages, for GET /<name>: fill out, the whole answer.
 * query is the URL's query string (NULL when none). Return 0, or an HTTP status >= 400 after
 * writing a constant error code and message into err (the client then gets an OpenAI-shaped
 * error; a 503 is served again for five seconds without asking the plugin). Runs on the admin
 * thread, concurrently with the workers: read only what is safe to read from another thread. */
#define GW_ADMIN_STATUS "status"
#define GW_ADMIN_PRIVACY "privacy"
typedef struct gw_admin_err {
    const char *code; /* a constant, e.g. "quota_store_timeout" */
    char message[200];
} gw_admin_err_t;

/* Metrics a plugin adds to GET /metrics: text in the Prometheus format, through out. */
typedef void (*gw_metrics_out)(void *out, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/*
 * A plugin is one const table. Every hook is optional (NULL where unused) and receives
 * the plugin's configured state (`conf`, from configure) and a per-request slot (`ctx`,
 * NULL at start; memory for it should come from gw_req_alloc so it dies with the request).
 * Built-in plugins (compiled into the gotthard program; the build lists them) and external
 * ones (a .so named in the config's plugins[]) have exactly this interface.
 *
 * Phases, in request order:
 *   request_headers   the head is parsed, the body not yet read (auth).
 *   request_body      the body is read and its JSON inspected: model, stream (quota).
 *   upstream_select   a pool is chosen; veto backends with gw_req_backend_veto (residency).
 *   response_headers  the backend's head is in; add headers with gw_req_add_response_header.
 *   response_event    one server-sent event of a stream, whole (usage, filtering).
 *   log               exactly once per request, whatever happened, after the answer.
 *
 * Hooks run on the worker's event loop: they must not block.
 */
typedef struct gw_plugin {
    const char *name;
    int abi; /* GW_PLUGIN_ABI */

    /* The top-level config keys this plugin owns (NULL-terminated; may be NULL): the core
     * accepts them and leaves them to it. The tenant-level keys it owns likewise, in every
     * tenants[] entry. A key owned by two plugins, or by the core and a plugin, is refused. */
    const char *const *config_keys;
    const char *const *tenant_keys;

    /* Its place in the chain (see above). */
    int rank;
    const char *after, *before;

    /* configure: read the plugin's config into *state. `config` is its entry's "config" in
     * plugins[] (path "$.plugins[i].config"), NULL when absent; a built-in plugin, which has no
     * entry, gets the whole config at path "$". Top-level keys it owns: gw_conf_root (or that
     * whole config); tenant keys: gw_conf_tenant. Returning with *state NULL leaves it out of the
     * chain (a built-in that the config does not enable). Report problems with gw_conf_error and
     * return -1.
     *
     * A config is a transaction (a reload, or a check on the admin listener): configure builds
     * its state privately and publishes nothing process-wide, because a later check may still
     * refuse the config; release then gets the state that never served. What must outlive the
     * snapshot (counts carried from one config to the next) is published by activate, called
     * once the config has passed every check and is about to serve, on the thread that
     * configured it, before any request sees the state. Never called for a refused config or a
     * check (-t, --residency-report). */
    int (*configure)(gw_conf_ctx_t *cx, const cJSON *config, const char *path, void **state);
    void (*release)(void *state);
    void (*activate)(void *state);

    int (*request_headers)(gw_req_t *r, void *conf, void **ctx);
    int (*request_body)(gw_req_t *r, void *conf, void **ctx);
    int (*upstream_select)(gw_req_t *r, void *conf, void **ctx);
    int (*response_headers)(gw_req_t *r, void *conf, void **ctx);
    int (*response_event)(gw_req_t *r, void *conf, void **ctx, const char *event, size_t len);
    void (*log)(gw_req_t *r, void *conf, void **ctx);

    /* Set when the plugin reads gw_req_usage: the core then reads the usage of answers. */
    int wants_usage;

    /* The admin listener (see above): pages it serves (NULL-terminated names, each GET /name;
     * may be NULL), and its report for those and for "status" and "privacy". */
    const char *const *admin_pages;
    int (*admin_report)(void *state, const char *page, const char *query, cJSON *out,
                        gw_admin_err_t *err);
    /* Its lines of GET /metrics, written with out_fn(out, ...). */
    void (*admin_metrics)(void *state, gw_metrics_out out_fn, void *out);

    /* thread_exit: runs on each worker thread as it stops, for the plugin's thread-local
     * state (not for state, which release frees): for every plugin that has served since the
     * start, also one a reload has removed since, whether or not it ran on that thread. An
     * external plugin's code stays loaded until the process ends, so that such state (or a
     * detached Redis callback) never points into unmapped code; a new build of a plugin
     * therefore needs a new file name (loading the same path again reuses the loaded code). */
    void (*thread_exit)(void);
} gw_plugin_t;

/* An external plugin (.so) exports its table under this name. */
#define GW_PLUGIN_SYMBOL "gotthard_plugin"

/* The request, read-only. Header names are case-insensitive; values are not copied. */
const char *gw_req_id(const gw_req_t *r);
const char *gw_req_method(const gw_req_t *r);
const char *gw_req_path(const gw_req_t *r);
const char *gw_req_header(const gw_req_t *r, const char *name, size_t *len);
/* Every header of the request, in order: the i-th name (not NUL-terminated; NULL past the
 * end), its length, and its value and length. */
size_t gw_req_header_count(const gw_req_t *r);
const char *gw_req_header_at(const gw_req_t *r, size_t i, size_t *name_len, const char **value,
                             size_t *value_len);
/* The client's address as text ("192.0.2.1", "2001:db8::1"), for a plugin configured to
 * forward it: 0, or -1 when it is not known. Behind a balancer, the one its PROXY header or a
 * trusted proxy's X-Forwarded-For names (listen[].proxy_protocol, trusted_proxies); not known
 * when they name none usable (PROXY UNKNOWN or LOCAL, a malformed X-Forwarded-For entry), never
 * the balancer's own. Never log it. */
int gw_req_client_address(const gw_req_t *r, char *buf, size_t len);
/* The parsed body: during request_body only (NULL before, after, or without a body; the core
 * frees the tree once the body phase is over, so that a waiting request holds its body once). */
const cJSON *gw_req_json(const gw_req_t *r);
size_t gw_req_body_length(const gw_req_t *r); /* bytes of the request body as received */
const char *gw_req_model(const gw_req_t *r);
int gw_req_is_stream(const gw_req_t *r);
int gw_req_status(const gw_req_t *r); /* the status answered, for log; 0 before */
int gw_req_aborted(const gw_req_t *r);
/* The backend's usage (a JSON answer's, or a stream's usage chunk): 1 when it gave one.
 * Read only for plugins with wants_usage. */
int gw_req_usage(const gw_req_t *r, int64_t *prompt_tokens, int64_t *completion_tokens);
/* Server-sent events of the answer relayed to the client so far. */
uint64_t gw_req_events_relayed(const gw_req_t *r);
/* Did the client receive content: a 2xx answer relayed, or a stream that relayed events (even
 * one the backend cut short or the client left). The one rule for what is counted: quota
 * charges, the access log's and the metrics' tokens are 0 for a request not served. */
int gw_req_served(const gw_req_t *r);
struct event_base *gw_req_base(gw_req_t *r);

/* Memory that lives as long as the request. */
void *gw_req_alloc(gw_req_t *r, size_t size);

/* Change what goes upstream: set (or, with value NULL, remove) a header. The headers the
 * gateway writes itself (Host, framing and hop-by-hop, credentials, x-request-id,
 * x-client-request-id, Accept-Encoding, Content-Encoding; see gw_header_forwarded) are not set by
 * it: such a value is left out. */
int gw_req_set_upstream_header(gw_req_t *r, const char *name, const char *value);
/* Replace the body sent upstream by this JSON (the gateway takes ownership). `json` may be
 * gw_req_json(r) itself, changed in place: the body is then written from it. */
int gw_req_replace_json(gw_req_t *r, cJSON *json);

/* Backends of the chosen pool, for upstream_select. */
size_t gw_req_backend_count(const gw_req_t *r);
const char *gw_req_backend_name(const gw_req_t *r, size_t i);
void gw_req_backend_veto(gw_req_t *r, size_t i);

/* Tenants and credentials (auth plugins, request_headers). */
/* The credential sent as "Authorization: Bearer X" or "api-key: X"; NULL if none. */
const char *gw_req_credential(const gw_req_t *r, size_t *len);
/* The request belongs to this tenant; -1 if the config has no such tenant. */
int gw_req_set_tenant(gw_req_t *r, const char *tenant_id);
const char *gw_req_tenant(const gw_req_t *r); /* NULL before (or without) authentication */
/* Narrows the models this request may use (e.g. a JWT's models claim) within the tenant's;
 * n == 0 allows none. Returns -1 when out of memory (fail the request). */
int gw_req_narrow_models(gw_req_t *r, const char *const *models, size_t n);
/* Why authentication failed, for the audit log and metrics (never for the client, which
 * always gets the same 401): a short reason such as "unknown_key" or "jwt_expired", and at
 * most a key id or a digest prefix. */
void gw_req_auth_failed(gw_req_t *r, const char *reason, const char *key_hint);
/* Call right before asking a store (Redis) about a credential the plugin does not know.
 * 1: go ahead; the lookup counts against the client address's budget of failed authentications
 * (auth.failure_rate, auth.failure_burst) while it is in flight, and is charged to it only if the
 * request does not authenticate. 0: do not look up, leave the request without a tenant: the
 * address is over its budget (the request gets 429 rate_limit_exceeded, and no audit line of its
 * own), or its lookups in flight fill the budget (503 auth_lookups_busy: not a failure). */
int gw_req_auth_lookup(gw_req_t *r);

/* The shared store (the config's "redis"), for plugins that keep state across instances.
 * Sends one command; cb runs exactly once on the worker's loop with the reply (possibly an
 * error reply: check its type), or with NULL when Redis did not answer within
 * redis.timeout_ms or the connection failed. Returns -1 (and cb never runs) when Redis is
 * not configured or not connected. */
struct redisReply;
typedef void (*gw_redis_cb)(gw_req_t *r, const struct redisReply *reply, void *arg);
int gw_req_redis(gw_req_t *r, gw_redis_cb cb, void *arg, int argc, const char **argv,
                 const size_t *argvlen);
/* Sends one command on the request's worker whose answer does not concern the request: cb runs
 * exactly once on that worker's loop, with the reply, or NULL as for gw_req_redis, possibly
 * after the request is gone (arg must live until then). -1 (cb never runs) as gw_req_redis. */
typedef void (*gw_redis_detached_cb)(const struct redisReply *reply, void *arg);
int gw_req_redis_detached(gw_req_t *r, gw_redis_detached_cb cb, void *arg, int argc,
                          const char **argv, const size_t *argvlen);
/* Sends one command whose answer nobody waits for (it may outlive the request). When Redis is
 * not connected now, the command waits in a bounded per-worker queue and is sent once a
 * connection is up again (the oldest dropped past the bound). -1 only without Redis or memory. */
int gw_req_redis_send(gw_req_t *r, int argc, const char **argv, const size_t *argvlen);
/* The same without a request, on the calling worker's connection (from a timer on a worker's
 * loop); -1 off a worker thread. */
int gw_worker_redis_send(int argc, const char **argv, const size_t *argvlen);
/* A Lua script the plugin runs by EVALSHA: every Redis connection loads it (SCRIPT LOAD) as soon
 * as it is up, before the commands that waited for it are sent, so that they do not meet
 * NOSCRIPT on a new server (a restart, a failover, a reload to another redis.url). Call from
 * configure; the same source again is kept once. 0, or -1 (no memory, or too many scripts). */
int gw_redis_register_script(const char *source);

/* A blocking connection to the Redis server of url (redis://[:password@]host[:port][/db]), for
 * an admin report (never on a worker's loop): connected, authenticated and on its db, every
 * command bounded by timeout_ms. NULL with a message in err (never the password) on failure;
 * free it with redisFree. */
struct redisContext;
struct redisContext *gw_redis_url_connect(const char *url, int timeout_ms, char *err,
                                          size_t errlen);

/* Does the core forward a client's request header of this name as it is (1), or is it one the
 * gateway writes itself or never forwards (0: framing, hop-by-hop, credentials, the request
 * ids, the codings; see gw_req_set_upstream_header)? Case-insensitive; len bytes of name. */
int gw_header_forwarded(const char *name, size_t len);

/* Metrics: a request refused by a quota, by tenant (a configured id) and kind ("requests",
 * "tokens", "tokens_per_day", "concurrency"): gotthard_ratelimited_total{tenant,kind}. */
void gw_metrics_ratelimited(const char *tenant, const char *kind);

/* Residency (the built-in residency plugin; docs/residency.md).
 *
 * configure hands the core the global policy with gw_conf_residency: the core opens the
 * databases, resolves every backend host (A and AAAA) at load and every resolver.refresh_ms,
 * looks each address up, and connects only to verified addresses of approved backends. */
typedef struct gw_residency_policy {
    const char *const *databases; /* MaxMind DB files, looked up in order */
    size_t ndatabases;
    const char *const *allowed; /* ISO 3166 alpha-2 codes; never empty */
    size_t nallowed;
    const char *canonical; /* the whole policy as text, digested for the audit log */
    /* residency.allow_refused_backends: a config with a backend the policy refuses at load
     * is taken (503 for what only it could serve) instead of refused. */
    int allow_refused_backends;
    /* Whether a tenant's requests may reach country cc under this config (its own narrowing of
     * the policy); NULL: every tenant follows the global policy. The core asks it at connect
     * time, with arg, for a request admitted under an older config than the one serving now
     * (a request's own narrowing is gw_req_residency_narrow). arg lives as long as the config. */
    int (*tenant_allows)(const void *arg, const char *tenant_id, const char *cc);
    const void *arg;
} gw_residency_policy_t;
int gw_conf_residency(gw_conf_ctx_t *cx, const char *path, const gw_residency_policy_t *policy);
/* The pool chosen for the request (upstream_select on), or NULL. */
const char *gw_req_pool(const gw_req_t *r);
/* The countries behind backend i of the pool now: its declared country first, then the others
 * that its addresses map to, comma-separated ("CH", "CH,LI"); NULL when the global policy does
 * not approve the backend (or there is no policy). */
const char *gw_req_backend_countries(const gw_req_t *r, size_t i);
/* Narrows, for this request, the countries its backend may be in (declared and of every
 * address) within the global policy: the core checks them at connect time, against the
 * backend's addresses as resolved at that moment, for every try (queued and retried ones too)
 * and every connection (new or idle). n == 0 allows none. -1 when out of memory. */
int gw_req_residency_narrow(gw_req_t *r, const char *const *countries, size_t n);
/* The index (in the pool) of the backend the answer comes from; -1 before one is chosen. */
long gw_req_backend_index(const gw_req_t *r);
/* The country of the client's address in the residency databases: 1 and cc set, 0 when no
 * database knows it or the address is not known (gw_req_client_address -1), -1 on error. The
 * address itself is never handed out. */
int gw_req_client_country(const gw_req_t *r, char cc[3]);
/* A request or connection kept from a backend by the residency policy:
 * gotthard_residency_blocked_total{pool,backend} (names from the config). */
void gw_metrics_residency_blocked(const char *pool, const char *backend);

/* The audit log: one JSON line {"ts", "event", fields...}. Fields are NULL-terminated name,
 * value pairs of metadata: never request content, credentials or client addresses. */
void gw_audit(const char *event, ...) __attribute__((sentinel));

/* Answers. */
/* Adds a header to the answer; with value NULL (response_headers), removes the backend's
 * header of that name from it instead. Only headers the gateway does not write itself are
 * added (not framing, hop-by-hop, Content-Type or the request ids). */
int gw_req_add_response_header(gw_req_t *r, const char *name, const char *value);
/* The backend's answer headers, during response_headers only (0 / NULL otherwise); as
 * gw_req_header_at. */
size_t gw_req_response_header_count(const gw_req_t *r);
const char *gw_req_response_header_at(const gw_req_t *r, size_t i, size_t *name_len,
                                      const char **value, size_t *value_len);
/* response_headers, on a backend error (gw_req_status(r) >= 400): the client gets the
 * gateway's own OpenAI-shaped error with the same status (502 for a backend's 401, 403 or
 * 407) instead of the backend's body, which is read but never relayed. The backend's error
 * code is kept only when it is one of OpenAI's known codes. On a successful stream: each of
 * its error events is replaced by the gateway's own error event, likewise. */
void gw_req_own_error_body(gw_req_t *r);
/* An OpenAI-shaped error; `message` must never contain request content. */
void gw_req_respond_error(gw_req_t *r, int status, const char *code, const char *message);
void gw_req_resume(gw_req_t *r, int result);

#endif
