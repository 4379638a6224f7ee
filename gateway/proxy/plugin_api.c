/* The request as plugins see it: every gw_req_* accessor of include/gotthard/plugin.h. */
#include <arpa/inet.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "proxy/auth_guard.h"
#include "proxy/request.h"
#include "proxy/upstream.h"
#include "store/redis.h"
#include "store/backend_geo.h"

/* ---- the request, read-only ---- */

const char *gw_req_id(const gw_req_t *r)
{
    return r->id;
}

const char *gw_req_method(const gw_req_t *r)
{
    /* The method is followed by a space in the head copy: hand out a terminated copy. */
    return gw_arena_strndup(r->arena, r->head.method, r->head.method_len);
}

const char *gw_req_path(const gw_req_t *r)
{
    return r->path;
}

const char *gw_req_header(const gw_req_t *r, const char *name, size_t *len)
{
    const gw_header_t *h = gw_http_find(&r->head, name);
    if (!h) return NULL;
    if (len) *len = h->value_len;
    return h->value;
}

size_t gw_req_header_count(const gw_req_t *r)
{
    return r->head.nheaders;
}

const char *gw_req_header_at(const gw_req_t *r, size_t i, size_t *name_len, const char **value,
                             size_t *value_len)
{
    if (i >= r->head.nheaders) return NULL;
    const gw_header_t *h = &r->head.headers[i];
    if (name_len) *name_len = h->name_len;
    if (value) *value = h->value;
    if (value_len) *value_len = h->value_len;
    return h->name;
}

int gw_req_client_address(const gw_req_t *r, char *buf, size_t len)
{
    const struct sockaddr_storage *ss = &r->client;
    if (!r->client_len) return -1;
    const void *a;
    int af = ss->ss_family;
    if (af == AF_INET) {
        a = &((const struct sockaddr_in *)ss)->sin_addr;
    } else if (af == AF_INET6) {
        const struct in6_addr *a6 = &((const struct sockaddr_in6 *)ss)->sin6_addr;
        a = a6;
        if (IN6_IS_ADDR_V4MAPPED(a6)) {
            a = &a6->s6_addr[12];
            af = AF_INET;
        }
    } else {
        return -1;
    }
    return inet_ntop(af, a, buf, (socklen_t)len) ? 0 : -1;
}

const cJSON *gw_req_json(const gw_req_t *r)
{
    return r->json;
}

size_t gw_req_body_length(const gw_req_t *r)
{
    return r->body_received ? r->body_received : evbuffer_get_length(r->body);
}

const char *gw_req_model(const gw_req_t *r)
{
    return r->model;
}

int gw_req_is_stream(const gw_req_t *r)
{
    return r->stream;
}

int gw_req_status(const gw_req_t *r)
{
    return r->status;
}

int gw_req_aborted(const gw_req_t *r)
{
    return r->aborted;
}

int gw_req_usage(const gw_req_t *r, int64_t *prompt_tokens, int64_t *completion_tokens)
{
    if (!r->usage_known) return 0;
    if (prompt_tokens) *prompt_tokens = r->usage_prompt;
    if (completion_tokens) *completion_tokens = r->usage_completion;
    return 1;
}

uint64_t gw_req_events_relayed(const gw_req_t *r)
{
    return r->events_relayed;
}

int gw_req_served(const gw_req_t *r)
{
    return (r->status >= 200 && r->status < 300) || (r->stream && r->events_relayed > 0);
}

struct event_base *gw_req_base(gw_req_t *r)
{
    return r->w->base;
}

void *gw_req_alloc(gw_req_t *r, size_t size)
{
    return gw_arena_calloc(r->arena, size);
}

/* ---- what goes upstream ---- */

/* Header names and values that plugins set must not be able to break the framing. */
static int header_ok(const char *s, int is_name)
{
    if (!*s && is_name) return 0;
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '\r' || ch == '\n' || ch == 0 || (is_name && (ch <= ' ' || ch == ':'))) return 0;
    }
    return 1;
}

static int add_edit(gw_req_t *r, gw_hdr_edit_t **list, const char *name, const char *value)
{
    if (!header_ok(name, 1) || (value && !header_ok(value, 0))) return -1;
    gw_hdr_edit_t *e = gw_arena_alloc(r->arena, sizeof(*e));
    if (!e) return -1;
    e->name = gw_arena_strdup(r->arena, name);
    e->value = value ? gw_arena_strdup(r->arena, value) : NULL;
    if (!e->name || (value && !e->value)) return -1;
    e->next = *list;
    *list = e;
    return 0;
}

int gw_req_set_upstream_header(gw_req_t *r, const char *name, const char *value)
{
    return add_edit(r, &r->up_edits, name, value);
}

int gw_req_replace_json(gw_req_t *r, cJSON *json)
{
    if (!json) return -1;
    if (r->json && r->json != json) cJSON_Delete(r->json);
    r->json = json;
    r->json_replaced = 1;
    return 0;
}

size_t gw_req_backend_count(const gw_req_t *r)
{
    return r->pool ? r->pool->backends.n : 0;
}

const char *gw_req_backend_name(const gw_req_t *r, size_t i)
{
    if (!r->pool || i >= r->pool->backends.n) return NULL;
    return ((gw_backend_t *)r->pool->backends.items)[i].name;
}

void gw_req_backend_veto(gw_req_t *r, size_t i)
{
    if (r->vetoed && r->pool && i < r->pool->backends.n) r->vetoed[i] = 1;
}

/* ---- tenants and credentials ---- */

const char *gw_req_credential(const gw_req_t *cr, size_t *len)
{
    gw_req_t *r = (gw_req_t *)cr; /* the extraction is cached in the request */
    if (!r->credential_done) {
        r->credential_done = 1;
        const char *v = NULL;
        size_t n = 0;
        /* Authorization wins; api-key is read only when there is no Authorization at all. */
        const gw_header_t *h = gw_http_find_kind(&r->head, GW_H_AUTHORIZATION);
        int is_auth = h != NULL;
        if (!h) h = gw_http_find_kind(&r->head, GW_H_API_KEY);
        if (h && gw_http_credential(is_auth, h->value, h->value_len, &v, &n) == 0 && n <= 8192)
            r->credential = gw_arena_strndup(r->arena, v, n);
    }
    if (len) *len = r->credential ? strlen(r->credential) : 0;
    return r->credential;
}

int gw_req_set_tenant(gw_req_t *r, const char *tenant_id)
{
    const gw_tenant_t *t = gw_config_tenant(r->cfg, tenant_id);
    if (!t) return -1;
    r->tenant = t;
    return 0;
}

const char *gw_req_tenant(const gw_req_t *r)
{
    return r->tenant ? r->tenant->id : NULL;
}

int gw_req_narrow_models(gw_req_t *r, const char *const *models, size_t n)
{
    char **copy = gw_arena_alloc(r->arena, (n + 1) * sizeof(char *));
    if (!copy) return -1;
    for (size_t i = 0; i < n; i++)
        if (!(copy[i] = gw_arena_strdup(r->arena, models[i]))) return -1;
    r->narrow = copy;
    r->nnarrow = n;
    return 0;
}

void gw_req_auth_failed(gw_req_t *r, const char *reason, const char *key_hint)
{
    r->auth_reason = reason ? gw_arena_strdup(r->arena, reason) : NULL;
    r->auth_hint = key_hint ? gw_arena_strdup(r->arena, key_hint) : NULL;
}

int gw_req_auth_lookup(gw_req_t *r)
{
    return gw_auth_guard_reserve(&r->guard);
}

/* ---- answers ---- */

int gw_req_add_response_header(gw_req_t *r, const char *name, const char *value)
{
    return add_edit(r, &r->resp_headers, name, value);
}

size_t gw_req_response_header_count(const gw_req_t *r)
{
    return r->resp_head ? r->resp_head->nheaders : 0;
}

const char *gw_req_response_header_at(const gw_req_t *r, size_t i, size_t *name_len,
                                      const char **value, size_t *value_len)
{
    if (!r->resp_head || i >= r->resp_head->nheaders) return NULL;
    const gw_header_t *h = &r->resp_head->headers[i];
    if (name_len) *name_len = h->name_len;
    if (value) *value = h->value;
    if (value_len) *value_len = h->value_len;
    return h->name;
}

void gw_req_own_error_body(gw_req_t *r)
{
    r->own_error = 1;
}

void gw_req_respond_error(gw_req_t *r, int status, const char *code, const char *message)
{
    gw_req_error(r, status, code, message);
}

void gw_req_resume(gw_req_t *r, int result)
{
    gw_req_continue(r, result);
}

/* ---- residency ---- */

const char *gw_req_pool(const gw_req_t *r)
{
    return r->pool ? r->pool->name : NULL;
}

const char *gw_req_backend_countries(const gw_req_t *r, size_t i)
{
    if (!r->pool || i >= r->pool->backends.n || !r->cfg->residency) return NULL;
    gw_backend_t *b = &((gw_backend_t *)r->pool->backends.items)[i];
    /* The backend answering: the state its connection was verified under (a re-resolution
     * since then does not change where this answer came from); held by that connection. */
    if (r->up && r->backend == b)
        return gw_residency_conn_countries(r->cfg, b, gw_upstream_resolved(r), r->arena);
    /* Else the state now, copied for the request: it may be replaced the next moment. */
    return gw_residency_countries_now(b, r->arena);
}

int gw_req_residency_narrow(gw_req_t *r, const char *const *countries, size_t n)
{
    char(*v)[3] = gw_arena_alloc(r->arena, (n ? n : 1) * sizeof(*v));
    if (!v) return -1;
    for (size_t i = 0; i < n; i++) snprintf(v[i], sizeof(v[i]), "%s", countries[i]);
    r->res_narrow = v;
    r->nres_narrow = n;
    return 0;
}

long gw_req_backend_index(const gw_req_t *r)
{
    if (!r->pool || !r->backend) return -1;
    return (long)(r->backend - (gw_backend_t *)r->pool->backends.items);
}

int gw_req_client_country(const gw_req_t *r, char cc[3])
{
    /* The client's address stored once per request (the peer, PROXY's, or X-Forwarded-For's
     * from a trusted proxy): never the balancer's own; none usable (PROXY LOCAL, a bad
     * X-Forwarded-For): not known. */
    const struct sockaddr *client = r->client_len ? (const struct sockaddr *)&r->client : NULL;
    return gw_residency_country_of(r->cfg, client, cc);
}

/* ---- the shared store ---- */

/* A command of gw_req_redis: the request and the plugin's callback, until the reply. */
typedef struct req_call {
    gw_req_t *r;
    gw_redis_cb cb;
    void *arg;
} req_call_t;

static void req_call_done(const struct redisReply *reply, void *arg)
{
    req_call_t *c = arg;
    c->cb(c->r, reply, c->arg);
    free(c);
}

int gw_req_redis(gw_req_t *r, gw_redis_cb cb, void *arg, int argc, const char **argv,
                 const size_t *argvlen)
{
    req_call_t *c = malloc(sizeof(*c));
    if (!c) return -1;
    *c = (req_call_t){r, cb, arg};
    if (gw_redis_command(r->w->redis, req_call_done, c, argc, argv, argvlen) < 0) {
        free(c);
        return -1;
    }
    return 0;
}

int gw_req_redis_detached(gw_req_t *r, gw_redis_detached_cb cb, void *arg, int argc,
                          const char **argv, const size_t *argvlen)
{
    return gw_redis_command(r->w->redis, cb, arg, argc, argv, argvlen);
}

int gw_req_redis_send(gw_req_t *r, int argc, const char **argv, const size_t *argvlen)
{
    return gw_redis_send(r->w->redis, argc, argv, argvlen);
}
