/* The configuration snapshot: its life and its lookups (loading: config/load.c). */
#include "config/config.h"

#include <string.h>
#include <strings.h>

const gw_tenant_t *gw_config_tenant(const gw_config_t *c, const char *id)
{
    gw_tenant_t *ts = c->tenants.items;
    for (size_t i = 0; i < c->tenants.n; i++)
        if (strcmp(ts[i].id, id) == 0) return &ts[i];
    return NULL;
}

int gw_tenant_allows(const gw_tenant_t *t, const char *model)
{
    if (t->all_models) return 1;
    char **models = t->models.items;
    for (size_t m = 0; m < t->models.n; m++)
        if (strcmp(models[m], model) == 0) return 1;
    return 0;
}

gw_config_t *gw_config_ref(gw_config_t *c)
{
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
    return c;
}

void gw_config_unref(gw_config_t *c)
{
    if (!c || atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) != 1) return;
    gw_listen_t *ls = c->listen.items;
    for (size_t i = 0; i < c->listen.n; i++) SSL_CTX_free(ls[i].ssl);
    for (size_t i = 0; i < c->nbackends; i++) {
        gw_backend_t *b = c->backends[i];
        SSL_CTX_free(b->ssl);
        if (b->auth_line) explicit_bzero(b->auth_line, b->auth_line_len);
    }
    gw_arena_free(c->arena);
}

gw_pool_t *gw_config_pool_for_model(const gw_config_t *c, const char *model)
{
    gw_pool_t *pools = c->pools.items;
    for (size_t i = 0; i < c->pools.n; i++) {
        char **models = pools[i].models.items;
        for (size_t m = 0; m < pools[i].models.n; m++)
            if (strcmp(models[m], model) == 0) return &pools[i];
        for (size_t a = 0; a < pools[i].naliases; a++)
            if (strcmp(pools[i].alias_from[a], model) == 0) return &pools[i];
    }
    return NULL;
}
