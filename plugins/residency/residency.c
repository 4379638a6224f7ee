/* Residency: requests reach only backends in the countries the policy allows, and a tenant's
 * clients only from the countries it allows. */
#include <gotthard/plugin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * config (top level, owned here):
 *   "geoip": {"databases": ["conf/geoip/site.mmdb", "/var/lib/GeoIP/GeoLite2-Country.mmdb"]}
 *   "residency": {"allowed_countries": ["CH"], "allow_refused_backends": false}
 * and in each tenant (both optional):
 *   "residency": {"allowed_countries": ["CH"]}   narrows the global policy for its requests
 *   "client_countries": ["CH", "LI"]              where its clients' addresses must be
 *
 * The plugin checks the policy and hands it to the core (gw_conf_residency), which resolves
 * and verifies every backend and refuses, on the connect path, any address it did not verify.
 * Here, per request:
 *   request_headers   a tenant with client_countries: the client's address must map to one of
 *                     them, else 403 residency_denied (unknown addresses too: fail closed).
 *   upstream_select   every backend whose countries (declared and of each address) are not all
 *                     in the policy that applies (the tenant's, else the global one) is vetoed;
 *                     none left: 503 residency_unavailable. Retries stay within what is left.
 *                     A tenant's policy is also handed to the core (gw_req_residency_narrow),
 *                     which checks it at connect time with the global verdict: a request that
 *                     waited or is retried goes by the addresses resolved then, not at select.
 *   response_headers  x-gotthard-residency: the country of the backend that answers.
 * Refusals go to the audit log (residency_block) and the metrics, never with a client address.
 */

#define MAX_COUNTRIES 300
#define MAX_DATABASES 16

typedef struct policy {
    char (*cc)[3];
    size_t n;
} policy_t;

typedef struct tenant_policy {
    char *id;
    int narrowed, geofenced;
    policy_t allowed, clients;
} tenant_policy_t;

typedef struct residency_conf {
    gw_conf_list_t databases; /* geoip.databases: char * */
    policy_t global;
    int allow_refused;        /* residency.allow_refused_backends */
    tenant_policy_t *tenants; /* only those with their own residency or client_countries */
    size_t ntenants;
    size_t *index; /* open addressing over tenants by id; nindex slots, SIZE_MAX empty */
    size_t nindex;
} residency_conf_t;

static int in_policy(const policy_t *p, const char *cc)
{
    for (size_t i = 0; i < p->n; i++)
        if (p->cc[i][0] == cc[0] && p->cc[i][1] == cc[1]) return 1;
    return 0;
}

/* "CH" or "CH,LI": every country in the policy. */
static int all_in_policy(const policy_t *p, const char *list)
{
    for (const char *s = list; s[0] && s[1]; s += s[2] == ',' ? 3 : 2) {
        if (!in_policy(p, s)) return 0;
        if (s[2] != ',') break;
    }
    return 1;
}

static size_t hash(const char *s)
{
    size_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static const tenant_policy_t *tenant_policy(const residency_conf_t *c, const char *id)
{
    if (!id || !c->nindex) return NULL;
    for (size_t i = hash(id) & (c->nindex - 1);; i = (i + 1) & (c->nindex - 1)) {
        if (c->index[i] == SIZE_MAX) return NULL;
        if (strcmp(c->tenants[c->index[i]].id, id) == 0) return &c->tenants[c->index[i]];
    }
}

static void release(void *state)
{
    (void)state; /* everything it holds is in the config's memory */
}

/* ---------------------------------------------------------------- config */

/* GW_CT_FN: a non-empty array of ISO 3166 alpha-2 codes, into a policy_t. */
static int load_countries(gw_conf_ctx_t *cx, const cJSON *a, const char *path, void *dst)
{
    policy_t *out = dst;
    if (!cJSON_IsArray(a)) {
        gw_conf_error(cx, path, "must be an array of ISO 3166 alpha-2 codes such as [\"CH\"]");
        return -1;
    }
    int n = cJSON_GetArraySize(a);
    if (n == 0) {
        gw_conf_error(cx, path, "is empty: a policy that allows no country refuses everything");
        return -1;
    }
    if (n > MAX_COUNTRIES) {
        gw_conf_error(cx, path, "has more than %d countries", MAX_COUNTRIES);
        return -1;
    }
    out->cc = gw_conf_alloc(cx, (size_t)n * sizeof(*out->cc));
    if (!out->cc) {
        gw_conf_error(cx, path, "out of memory");
        return -1;
    }
    out->n = 0;
    int rc = 0;
    size_t i = 0;
    for (const cJSON *e = a->child; e; e = e->next, i++) {
        const char *s = cJSON_IsString(e) ? e->valuestring : NULL;
        if (!s || strlen(s) != 2 || s[0] < 'A' || s[0] > 'Z' || s[1] < 'A' || s[1] > 'Z') {
            gw_conf_error(cx, gw_conf_path_index(cx, path, i),
                          "must be an ISO 3166 alpha-2 code in capitals, such as CH");
            rc = -1;
            continue;
        }
        if (!in_policy(out, s)) memcpy(out->cc[out->n++], s, 3);
    }
    return rc;
}

/* GW_CT_FN: geoip.databases, 1 to MAX_DATABASES paths of MaxMind DB files (a gw_conf_list_t). */
static int load_databases(gw_conf_ctx_t *cx, const cJSON *a, const char *path, void *dst)
{
    gw_conf_list_t *l = dst;
    int n = cJSON_IsArray(a) ? cJSON_GetArraySize(a) : 0;
    if (n < 1 || n > MAX_DATABASES) {
        gw_conf_error(cx, path, "must list 1 to %d MaxMind DB files", MAX_DATABASES);
        return -1;
    }
    char **paths = gw_conf_alloc(cx, (size_t)n * sizeof(*paths));
    if (!paths) return -1;
    l->items = paths;
    for (const cJSON *d = a->child; d; d = d->next, l->n++) {
        if (!cJSON_IsString(d) || !d->valuestring[0] || strlen(d->valuestring) > 4096 ||
            !(paths[l->n] = gw_conf_strdup(cx, d->valuestring))) {
            gw_conf_error(cx, gw_conf_path_index(cx, path, l->n),
                          "must be the path of a MaxMind DB file");
            return -1;
        }
    }
    return 0;
}

/* The top level: "geoip" and "residency", both loaded into the residency_conf_t. */
static const gw_conf_key_t geoip_keys[] = {
    {"databases", GW_CT_FN, offsetof(residency_conf_t, databases), .flags = GW_CK_REQUIRED,
     .fn = load_databases},
    {NULL},
};
static const gw_conf_key_t global_keys[] = {
    {"allowed_countries", GW_CT_FN, offsetof(residency_conf_t, global), .flags = GW_CK_REQUIRED,
     .fn = load_countries},
    {"allow_refused_backends", GW_CT_BOOL, offsetof(residency_conf_t, allow_refused)},
    {NULL},
};
static const gw_conf_obj_t geoip_obj = {0, geoip_keys, NULL, NULL};
static const gw_conf_obj_t global_obj = {0, global_keys, NULL, NULL};
static const gw_conf_key_t top_conf_keys[] = {
    {"geoip", GW_CT_OBJ, 0, .obj = &geoip_obj},
    {"residency", GW_CT_OBJ, 0, .obj = &global_obj},
    {NULL},
};
static const gw_conf_obj_t top_obj = {sizeof(residency_conf_t), top_conf_keys, NULL, NULL};

/* A tenant's "residency" and "client_countries", both loaded into its tenant_policy_t. */
static const gw_conf_key_t narrow_keys[] = {
    {"allowed_countries", GW_CT_FN, offsetof(tenant_policy_t, allowed), .flags = GW_CK_REQUIRED,
     .fn = load_countries},
    {NULL},
};
static const gw_conf_obj_t narrow_obj = {0, narrow_keys, NULL, NULL};
static const gw_conf_key_t tenant_conf_keys[] = {
    {"residency", GW_CT_OBJ, 0, .obj = &narrow_obj},
    {"client_countries", GW_CT_FN, offsetof(tenant_policy_t, clients), .fn = load_countries},
    {NULL},
};
static const gw_conf_obj_t tenant_obj = {sizeof(tenant_policy_t), tenant_conf_keys, NULL, NULL};

/* "geoip" and "residency" come together, or neither does; then no tenant may have a policy of
 * its own either. 1: a policy, 0: none, -1 after an error. */
static int policy_present(gw_conf_ctx_t *cx, const cJSON *root)
{
    int geoip = cJSON_GetObjectItemCaseSensitive(root, "geoip") != NULL;
    int res = cJSON_GetObjectItemCaseSensitive(root, "residency") != NULL;
    if (geoip && res) return 1;
    if (geoip || res) {
        gw_conf_error(cx, geoip ? "$.residency" : "$.geoip", "%s",
                      geoip ? "is required with geoip: {\"allowed_countries\": [\"CH\"]}"
                            : "is required with residency: {\"databases\": "
                              "[\"conf/geoip/site.mmdb\"]}");
        return -1;
    }
    int rc = 0;
    for (size_t i = 0, nt = gw_conf_tenant_count(cx); i < nt; i++) {
        const char *tpath;
        const cJSON *t = gw_conf_tenant(cx, i, NULL, &tpath);
        for (const gw_conf_key_t *k = tenant_conf_keys; t && k->name; k++)
            if (cJSON_GetObjectItemCaseSensitive(t, k->name)) {
                gw_conf_error(cx, gw_conf_path_key(cx, tpath, k->name),
                              "needs the global \"residency\" policy and \"geoip\" databases");
                rc = -1;
            }
    }
    return rc;
}

/* A tenant's policy can only narrow the global one. */
static int narrows(gw_conf_ctx_t *cx, const policy_t *global, const tenant_policy_t *tp,
                   const char *tpath)
{
    int rc = 0;
    for (size_t k = 0; k < tp->allowed.n; k++)
        if (!in_policy(global, tp->allowed.cc[k])) {
            gw_conf_error(
                cx,
                gw_conf_path_key(cx, gw_conf_path_key(cx, tpath, "residency"), "allowed_countries"),
                "%s is not allowed by the global policy: a tenant's policy "
                "can only narrow it",
                tp->allowed.cc[k]);
            rc = -1;
        }
    return rc;
}

/* The tenants with a policy of their own. */
static int load_tenants(gw_conf_ctx_t *cx, residency_conf_t *c)
{
    size_t nt = gw_conf_tenant_count(cx);
    c->tenants = gw_conf_alloc(cx, nt * sizeof(*c->tenants));
    if (!c->tenants) return -1;
    int rc = 0;
    for (size_t i = 0; i < nt; i++) {
        const char *id, *tpath;
        const cJSON *t = gw_conf_tenant(cx, i, &id, &tpath);
        tenant_policy_t *tp = &c->tenants[c->ntenants];
        *tp = (tenant_policy_t){0};
        if (!t || !id) continue; /* the core reports it */
        if (gw_conf_load_some(cx, t, tpath, &tenant_obj, tp) < 0) {
            rc = -1;
            continue;
        }
        tp->narrowed = tp->allowed.n > 0;
        tp->geofenced = tp->clients.n > 0;
        if (!tp->narrowed && !tp->geofenced) continue;
        if (!(tp->id = gw_conf_strdup(cx, id)) || narrows(cx, &c->global, tp, tpath) < 0) rc = -1;
        c->ntenants++;
    }
    return rc;
}

static int cmp_cc(const void *a, const void *b)
{
    return memcmp(a, b, 2);
}

/* The policy as text, in a fixed order: its SHA-256 goes into the audit log. */
static void canon_policy(char **buf, size_t *len, size_t *cap, const char *label, policy_t *p)
{
    if (p->n) qsort(p->cc, p->n, sizeof(*p->cc), cmp_cc);
    size_t need = strlen(label) + p->n * 3 + 4;
    if (*len + need >= *cap) {
        size_t ncap = (*cap + need) * 2;
        char *nb = realloc(*buf, ncap);
        if (!nb) return;
        *buf = nb;
        *cap = ncap;
    }
    *len += (size_t)snprintf(*buf + *len, *cap - *len, "%s", label);
    for (size_t i = 0; i < p->n; i++)
        *len += (size_t)snprintf(*buf + *len, *cap - *len, "%s%s", i ? "," : " ", p->cc[i]);
    *len += (size_t)snprintf(*buf + *len, *cap - *len, "\n");
}

/* The whole policy as text (malloc'd; NULL when out of memory), digested for the audit log: the
 * allowed countries, the databases and every tenant's policy. */
static char *canonical(residency_conf_t *c)
{
    size_t len = 0, cap = 256;
    char *canon = malloc(cap), line[4200];
    policy_t none = {0};
    if (!canon) return NULL;
    canon[0] = '\0';
    canon_policy(&canon, &len, &cap, "allowed", &c->global);
    if (c->allow_refused) canon_policy(&canon, &len, &cap, "allow_refused_backends", &none);
    for (size_t k = 0; k < c->databases.n; k++) {
        snprintf(line, sizeof(line), "database %s", ((char **)c->databases.items)[k]);
        canon_policy(&canon, &len, &cap, line, &none);
    }
    for (size_t k = 0; k < c->ntenants; k++) {
        tenant_policy_t *tp = &c->tenants[k];
        if (tp->narrowed) {
            snprintf(line, sizeof(line), "tenant %s allowed", tp->id);
            canon_policy(&canon, &len, &cap, line, &tp->allowed);
        }
        if (tp->geofenced) {
            snprintf(line, sizeof(line), "tenant %s clients", tp->id);
            canon_policy(&canon, &len, &cap, line, &tp->clients);
        }
    }
    return canon;
}

static int build_index(gw_conf_ctx_t *cx, residency_conf_t *c)
{
    size_t slots = 8;
    while (slots < c->ntenants * 2) slots *= 2;
    c->index = gw_conf_alloc(cx, slots * sizeof(*c->index));
    if (!c->index) return -1;
    c->nindex = slots;
    for (size_t i = 0; i < slots; i++) c->index[i] = SIZE_MAX;
    for (size_t t = 0; t < c->ntenants; t++) {
        size_t i = hash(c->tenants[t].id) & (slots - 1);
        while (c->index[i] != SIZE_MAX) i = (i + 1) & (slots - 1);
        c->index[i] = t;
    }
    return 0;
}

/* The tenant's own narrowing, for the core's check of a request admitted under an older config
 * (gw_residency_policy_t.tenant_allows): conf is this config's state. */
static int tenant_allows(const void *conf, const char *tenant_id, const char *cc)
{
    const tenant_policy_t *tp = tenant_policy(conf, tenant_id);
    return !tp || !tp->narrowed || in_policy(&tp->allowed, cc);
}

/* Reads the policy and hands it to the core (gw_conf_residency), which verifies the backends. */
static int configure(gw_conf_ctx_t *cx, const cJSON *root, const char *path, void **state)
{
    *state = NULL;
    int present = policy_present(cx, root);
    if (present <= 0) return present;
    residency_conf_t *c = gw_conf_alloc(cx, sizeof(*c));
    if (!c || gw_conf_load_some(cx, root, "$", &top_obj, c) < 0 || load_tenants(cx, c) < 0)
        return -1;
    char *canon = build_index(cx, c) < 0 ? NULL : canonical(c);
    if (!canon) {
        gw_conf_error(cx, path, "out of memory");
        return -1;
    }
    const char *allowed[MAX_COUNTRIES];
    for (size_t k = 0; k < c->global.n; k++) allowed[k] = c->global.cc[k];
    gw_residency_policy_t pol = {(const char *const *)c->databases.items,
                                 c->databases.n,
                                 allowed,
                                 c->global.n,
                                 canon,
                                 c->allow_refused,
                                 tenant_allows,
                                 c};
    int rc = gw_conf_residency(cx, "$.residency", &pol);
    free(canon);
    if (rc < 0) return -1;
    *state = c;
    return 0;
}

/* ---------------------------------------------------------------- hooks */

static int request_headers(gw_req_t *r, void *conf, void **ctx)
{
    const tenant_policy_t *tp = tenant_policy(conf, gw_req_tenant(r));
    if (!tp || !tp->geofenced) return GW_CONTINUE;
    char cc[3];
    int rc = gw_req_client_country(r, cc);
    if (rc == 1 && in_policy(&tp->clients, cc)) return GW_CONTINUE;
    /* Neither the address nor its country is written anywhere. */
    gw_audit("residency_block", "request_id", gw_req_id(r), "tenant", tp->id, "reason",
             rc == 1   ? "client_country_not_allowed"
             : rc == 0 ? "client_country_unknown"
                       : "client_country_lookup_failed",
             NULL);
    gw_req_respond_error(r, 403, "residency_denied",
                         "Requests from this location are not allowed for this tenant.");
    return GW_DONE;
}

static int upstream_select(gw_req_t *r, void *conf, void **ctx)
{
    const residency_conf_t *c = conf;
    const char *tenant = gw_req_tenant(r);
    const tenant_policy_t *tp = tenant_policy(c, tenant);
    const policy_t *pol = tp && tp->narrowed ? &tp->allowed : &c->global;
    if (tp && tp->narrowed) {
        /* The core holds every try and connection of the request to it at connect time,
         * against the backend's addresses then (they may change while the request waits). */
        const char *cc[MAX_COUNTRIES];
        for (size_t k = 0; k < tp->allowed.n; k++) cc[k] = tp->allowed.cc[k];
        if (gw_req_residency_narrow(r, cc, tp->allowed.n) < 0) return GW_ERROR;
    }
    const char *pool = gw_req_pool(r);
    size_t n = gw_req_backend_count(r), left = 0;
    for (size_t i = 0; i < n; i++) {
        const char *countries = gw_req_backend_countries(r, i);
        if (countries && all_in_policy(pol, countries)) {
            left++;
            continue;
        }
        gw_req_backend_veto(r, i);
        gw_metrics_residency_blocked(pool, gw_req_backend_name(r, i));
    }
    if (left) return GW_CONTINUE;
    gw_audit("residency_block", "request_id", gw_req_id(r), "tenant", tenant ? tenant : "-", "pool",
             pool ? pool : "-", "reason",
             tp && tp->narrowed ? "no_backend_approved_for_tenant" : "no_backend_approved", NULL);
    gw_req_respond_error(r, 503, "residency_unavailable",
                         "No backend of this model's pool is approved by the residency policy.");
    return GW_DONE;
}

static int response_headers(gw_req_t *r, void *conf, void **ctx)
{
    long i = gw_req_backend_index(r);
    const char *countries = i >= 0 ? gw_req_backend_countries(r, (size_t)i) : NULL;
    if (countries) {
        char cc[3] = {countries[0], countries[1], '\0'}; /* the declared country */
        gw_req_add_response_header(r, "x-gotthard-residency", cc);
    }
    return GW_CONTINUE;
}

static const char *const config_keys[] = {"geoip", "residency", NULL};
static const char *const tenant_keys[] = {"residency", "client_countries", NULL};

const gw_plugin_t gw_plugin_residency = {
    .name = "residency",
    .abi = GW_PLUGIN_ABI,
    .config_keys = config_keys,
    .tenant_keys = tenant_keys,
    .rank = GW_RANK_ROUTE,
    .configure = configure,
    .release = release,
    .request_headers = request_headers,
    .request_body = NULL,
    .upstream_select = upstream_select,
    .response_headers = response_headers,
    .response_event = NULL,
    .log = NULL,
};
