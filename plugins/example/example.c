/* An example external plugin, the file to copy: plugin ABI 3 in full, in a few small hooks. */
#include <event2/event.h>
#include <gotthard/plugin.h> /* the one header a plugin includes: nothing of gateway/ */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/*
 * What it does (README.md, Plugins):
 *   - request_headers: a request carrying "x-example-deny: 1" is refused with 403; every other
 *     one goes upstream with `header: value`, with "x-example-token: <upstream_token>" when one
 *     is configured (a secret), and with "x-example-tag: <tag>" when its tenant has an
 *     "example_tag" (a key this plugin owns in tenants[]).
 *   - request_body: with delay_ms > 0 the request waits that long (asynchronously: GW_WAIT).
 *   - upstream_select: with select_body, the body sent upstream is replaced by that object (a
 *     plugin may change the body in any phase; the core holds it to the same rules).
 *   - response_headers: the answer gets `header: value` too.
 *   - GET /status on the admin listener gets {"example": {"header", "requests", ...}}.
 *
 * Its entry in the config:
 *   "plugins": [{"path": "/usr/lib/gotthard/gw_example.so",
 *                "config": {"header": "x-gotthard-example", "value": "hello", "delay_ms": 0,
 *                           "upstream_token": "s3cret", "select_body": {...}}}]
 *   "tenants": [{"id": "acme", "models": ["*"], "example_tag": "gold"}]
 */

/* ---- 1. The config: a struct, and the table the core's loader fills it by. ----
 *
 * Everything the loader makes (strings, the struct itself with gw_conf_alloc) lives in the
 * config's memory and goes with the snapshot: this plugin needs no release at all. The loader
 * refuses unknown keys, wrong types and values out of bounds, each with its JSON path
 * ("$.plugins[0].config.delay_ms: must be between 0 and 60000"); a GW_CK_SECRET value is never
 * quoted by an error, `gotthard -t` or the admin listener. */
typedef struct example_tenant {
    const char *id, *tag;
} example_tenant_t;

typedef struct example_conf {
    char *header, *value;
    int64_t delay_ms;
    char *upstream_token;     /* a secret: sent upstream, never shown */
    const cJSON *select_body; /* GW_CT_JSON: the config's own node, alive with the snapshot */
    example_tenant_t *tenants;
    size_t ntenants;
    atomic_ulong requests; /* counted on the workers, read by the admin thread */
} example_conf_t;

static const gw_conf_key_t conf_keys[] = {
    {"header", GW_CT_STR, offsetof(example_conf_t, header), .max = 64, .flags = GW_CK_REQUIRED},
    {"value", GW_CT_STR, offsetof(example_conf_t, value), .max = 256, .flags = GW_CK_REQUIRED},
    {"delay_ms", GW_CT_INT, offsetof(example_conf_t, delay_ms), 0, 60000},
    {"upstream_token", GW_CT_STR, offsetof(example_conf_t, upstream_token), .max = 256,
     .flags = GW_CK_SECRET},
    {"select_body", GW_CT_JSON, offsetof(example_conf_t, select_body)},
    {NULL},
};
static const gw_conf_obj_t conf_obj = {sizeof(example_conf_t), conf_keys, NULL};

/* A key of each tenants[] entry that this plugin owns (tenant_keys below): the core accepts it
 * there and leaves it to us. Read with gw_conf_load_some: the entry's other keys are the core's
 * and other plugins'. */
static const gw_conf_key_t tenant_conf_keys[] = {
    {"example_tag", GW_CT_STR, offsetof(example_tenant_t, tag), .max = 64},
    {NULL},
};
static const gw_conf_obj_t tenant_obj = {sizeof(example_tenant_t), tenant_conf_keys, NULL};

static int load_tenants(gw_conf_ctx_t *cx, example_conf_t *c)
{
    size_t n = gw_conf_tenant_count(cx);
    c->tenants = gw_conf_alloc(cx, (n ? n : 1) * sizeof(*c->tenants));
    if (!c->tenants) return -1;
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        const char *id = NULL, *path = NULL;
        const cJSON *t = gw_conf_tenant(cx, i, &id, &path);
        example_tenant_t et = {0};
        if (!t || !id) continue; /* the core reports a tenant without an id */
        if (gw_conf_load_some(cx, t, path, &tenant_obj, &et) < 0) rc = -1;
        if (!et.tag) continue;
        et.id = id; /* the config's string: alive as long as the snapshot */
        c->tenants[c->ntenants++] = et;
    }
    return rc;
}

/* configure: builds the state privately (a config is a transaction: a later check may refuse
 * it). path is "$.plugins[i].config"; config NULL when the entry has none. */
static int configure(gw_conf_ctx_t *cx, const cJSON *config, const char *path, void **state)
{
    example_conf_t *c = gw_conf_alloc(cx, sizeof(*c));
    if (!c) return -1;
    atomic_init(&c->requests, 0);
    int rc = config ? gw_conf_load(cx, config, path, &conf_obj, c) : -1;
    if (!config) gw_conf_error(cx, path, "is required: an object with header and value");
    if (c->select_body && !cJSON_IsObject(c->select_body)) {
        gw_conf_error(cx, gw_conf_path_key(cx, path, "select_body"), "must be an object");
        rc = -1;
    }
    if (load_tenants(cx, c) < 0) rc = -1;
    if (rc < 0) return -1;
    *state = c;
    return 0;
}

/* ---- 2. The hooks, in request order. ---- */

static const char *tag_of(const example_conf_t *c, const char *tenant)
{
    for (size_t i = 0; tenant && i < c->ntenants; i++)
        if (strcmp(c->tenants[i].id, tenant) == 0) return c->tenants[i].tag;
    return NULL;
}

static int request_headers(gw_req_t *r, void *conf, void **ctx)
{
    example_conf_t *c = conf;
    atomic_fetch_add_explicit(&c->requests, 1, memory_order_relaxed);
    size_t n;
    const char *deny = gw_req_header(r, "x-example-deny", &n);
    if (deny && n == 1 && deny[0] == '1') {
        gw_req_respond_error(r, 403, "denied_by_example",
                             "The example plugin refused this request.");
        return GW_DONE;
    }
    /* Runs after authentication (its rank, below): the tenant is known here. */
    const char *tag = tag_of(c, gw_req_tenant(r));
    if (gw_req_set_upstream_header(r, c->header, c->value) < 0 ||
        (c->upstream_token &&
         gw_req_set_upstream_header(r, "x-example-token", c->upstream_token) < 0) ||
        (tag && gw_req_set_upstream_header(r, "x-example-tag", tag) < 0))
        return GW_ERROR;
    return GW_CONTINUE;
}

static void resume_cb(evutil_socket_t fd, short what, void *arg)
{
    gw_req_resume(arg, GW_CONTINUE);
}

static int request_body(gw_req_t *r, void *conf, void **ctx)
{
    example_conf_t *c = conf;
    if (c->delay_ms <= 0) return GW_CONTINUE;
    struct timeval tv = {c->delay_ms / 1000, (c->delay_ms % 1000) * 1000};
    if (event_base_once(gw_req_base(r), -1, EV_TIMEOUT, resume_cb, r, &tv) < 0) return GW_ERROR;
    return GW_WAIT;
}

static int upstream_select(gw_req_t *r, void *conf, void **ctx)
{
    example_conf_t *c = conf;
    if (!c->select_body) return GW_CONTINUE;
    return gw_req_replace_json(r, cJSON_Duplicate(c->select_body, 1)) == 0 ? GW_CONTINUE : GW_ERROR;
}

static int response_headers(gw_req_t *r, void *conf, void **ctx)
{
    example_conf_t *c = conf;
    return gw_req_add_response_header(r, c->header, c->value) == 0 ? GW_CONTINUE : GW_ERROR;
}

/* ---- 3. The admin listener: this plugin's part of GET /status. ----
 * On the admin thread, while the workers run: only what is safe to read from there (the
 * config, which does not change, and an atomic counter). Never a secret: whether a token is
 * configured, not the token. */
static int admin_report(void *state, const char *page, const char *query, cJSON *out,
                        gw_admin_err_t *err)
{
    example_conf_t *c = state;
    if (!c || strcmp(page, GW_ADMIN_STATUS) != 0) return 0;
    cJSON *o = cJSON_AddObjectToObject(out, "example");
    if (!o) return 0;
    cJSON_AddStringToObject(o, "header", c->header);
    cJSON_AddNumberToObject(o, "requests", (double)atomic_load(&c->requests));
    cJSON_AddBoolToObject(o, "upstream_token", c->upstream_token != NULL);
    cJSON_AddNumberToObject(o, "tagged_tenants", (double)c->ntenants);
    return 0;
}

/* ---- 4. The table: what the core reads. ---- */
static const char *const tenant_keys[] = {"example_tag", NULL};

const gw_plugin_t gotthard_plugin = {
    .name = "example",
    .abi = GW_PLUGIN_ABI, /* a .so of another ABI is refused, nothing in it called */
    .config_keys = NULL,  /* no top-level key: its config is its plugins[] entry's */
    .tenant_keys = tenant_keys,
    /* Its place in the chain: after every built-in (authentication, quota, residency, privacy),
     * as external plugins always were. `.before = "quota"` would run it before quota instead
     * (e.g. to answer some requests itself without counting them). */
    .rank = GW_RANK_LAST,
    .after = NULL,
    .before = NULL,
    .configure = configure,
    .release = NULL,  /* everything it holds is in the config's memory */
    .activate = NULL, /* nothing outlives the snapshot: configure publishes nothing */
    .request_headers = request_headers,
    .request_body = request_body,
    .upstream_select = upstream_select,
    .response_headers = response_headers,
    .response_event = NULL,
    .log = NULL,
    .wants_usage = 0,
    .admin_pages = NULL,
    .admin_report = admin_report,
    .admin_metrics = NULL,
    .thread_exit = NULL,
};
