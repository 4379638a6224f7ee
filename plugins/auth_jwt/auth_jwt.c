/* The auth_jwt plugin: a bearer JWT from a configured issuer names the request's tenant. */
#include <gotthard/plugin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "jwt_verify.h"

/*
 * Config ("jwt" at the top level; built-in, so configure sees the whole config object):
 *   "jwt": [{"issuer": "https://idp.example.ch", "audience": "gotthard", "algorithm": "RS256",
 *            "key_file": "conf/keys/idp.pub.pem", "tenant_claim": "tenant", "leeway_s": 30,
 *            "tenants": ["acme"]}]
 * "tenants" binds the issuer to the tenants it may name (required with more than one issuer;
 * each must be a configured tenant); a token naming another is refused (jwt_tenant_not_bound).
 * No "jwt" key: the plugin stays off (*state NULL).
 *
 * request_headers:
 *   - no credential, a tenant already set, or a credential with fewer than two '.': GW_CONTINUE,
 *     untouched (the API-key plugin's business; it leaves everything with two dots or more here);
 *   - a valid token: the tenant is set from its tenant claim and the models narrowed by its
 *     "models" claim, GW_CONTINUE;
 *   - any failure: gw_req_auth_failed(r, reason, NULL) and GW_CONTINUE; the core answers the one
 *     401 invalid_api_key and writes the audit event. Neither the token nor a claim is ever
 *     logged or kept.
 *   - out of memory: GW_ERROR.
 */

static const char *const config_keys[] = {"jwt", NULL};

static void conf_err(void *arg, const char *path, const char *msg)
{
    gw_conf_error(arg, path, "%s", msg);
}

static int tenant_configured(gw_conf_ctx_t *cx, const char *id)
{
    const char *tid;
    for (size_t i = 0, n = gw_conf_tenant_count(cx); i < n; i++)
        if (gw_conf_tenant(cx, i, &tid, NULL) && tid && strcmp(tid, id) == 0) return 1;
    return 0;
}

/* Every tenant an issuer is bound to is one of the config's. */
static int check_bound_tenants(gw_conf_ctx_t *cx, const cJSON *jwt, const char *where)
{
    int rc = 0, i = 0;
    for (const cJSON *e = jwt->child; e; e = e->next, i++) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(e, "tenants");
        int j = 0;
        for (const cJSON *t = list ? list->child : NULL; t; t = t->next, j++)
            if (!tenant_configured(cx, t->valuestring)) {
                char p[320];
                snprintf(p, sizeof(p), "%s[%d].tenants[%d]", where, i, j);
                gw_conf_error(cx, p, "is not the id of a tenant in $.tenants");
                rc = -1;
            }
    }
    return rc;
}

static void free_conf(void *c)
{
    gwjwt_conf_free(c);
}

/* GW_CT_FN: the "jwt" array into a gwjwt_conf_t *, freed with the config. */
static int load_jwt(gw_conf_ctx_t *cx, const cJSON *jwt, const char *path, void *dst)
{
    gwjwt_conf_t *c = NULL;
    if (gwjwt_conf_parse(jwt, path, conf_err, cx, &c) < 0) return -1;
    if (gw_conf_on_release(cx, free_conf, c) < 0) {
        gwjwt_conf_free(c);
        return -1;
    }
    *(gwjwt_conf_t **)dst = c;
    return check_bound_tenants(cx, jwt, path);
}

static const gw_conf_key_t top_conf_keys[] = {
    {"jwt", GW_CT_FN, 0, .fn = load_jwt},
    {NULL},
};
static const gw_conf_obj_t top_obj = {sizeof(gwjwt_conf_t *), top_conf_keys, NULL, NULL};

/* No "jwt": off (*state NULL). */
static int configure(gw_conf_ctx_t *cx, const cJSON *config, const char *path, void **state)
{
    gwjwt_conf_t *c = NULL;
    if (gw_conf_load_some(cx, config, "$", &top_obj, &c) < 0) return -1;
    *state = c;
    return 0;
}

static void release(void *state)
{
    (void)state; /* free_conf runs when the config is released (load_jwt) */
}

static int request_headers(gw_req_t *r, void *conf, void **ctx)
{
    (void)ctx;
    size_t len = 0;
    const char *cred = gw_req_credential(r, &len);
    if (!conf || !cred || gw_req_tenant(r) || !gwjwt_is_jwt_shaped(cred, len)) return GW_CONTINUE;

    gwjwt_result_t res;
    int rc = gwjwt_verify(conf, cred, len, time(NULL), &res);
    if (rc == GWJWT_E_INTERNAL) return GW_ERROR;
    if (rc != GWJWT_OK) {
        gw_req_auth_failed(r, gwjwt_reason(rc), NULL);
        return GW_CONTINUE;
    }
    int out = GW_CONTINUE;
    if (gw_req_set_tenant(r, res.tenant) < 0)
        gw_req_auth_failed(r, "unknown_tenant", NULL);
    else if (res.has_models &&
             gw_req_narrow_models(r, (const char *const *)res.models, res.n_models) < 0)
        out = GW_ERROR;
    gwjwt_result_free(&res);
    return out;
}

const gw_plugin_t gw_plugin_auth_jwt = {
    .name = "auth_jwt",
    .abi = GW_PLUGIN_ABI,
    .config_keys = config_keys,
    .rank = GW_RANK_AUTH + 10,
    .configure = configure,
    .release = release,
    .request_headers = request_headers,
    .request_body = NULL,
    .upstream_select = NULL,
    .response_headers = NULL,
    .response_event = NULL,
    .log = NULL,
};
