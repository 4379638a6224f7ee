/* State that outlives a config snapshot: backends' live counters, pools' wait-queue counts. */
#include "config/live.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NBUCKETS 1024

/* The registry: one table of named nodes per kind, under one lock (taken at load and unref
 * only, never on the request path). */
typedef struct node {
    struct node *next;
    char *key;
    uint64_t hash;
    long refs;
} node_t;

typedef struct live_backend {
    node_t n;
    gw_backend_live_t s;
} live_backend_t;

typedef struct live_pool {
    node_t n;
    gw_pool_live_t s;
} live_pool_t;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static node_t *backends[NBUCKETS], *pools[NBUCKETS];

static uint64_t hash_key(const char *s)
{
    uint64_t x = 0xcbf29ce484222325ULL; /* FNV-1a */
    for (; *s; s++) x = (x ^ (unsigned char)*s) * 0x100000001b3ULL;
    return x;
}

static node_t *find(node_t **table, const char *key, uint64_t h)
{
    for (node_t *n = table[h % NBUCKETS]; n; n = n->next)
        if (n->hash == h && strcmp(n->key, key) == 0) return n;
    return NULL;
}

static void insert(node_t **table, node_t *n)
{
    n->next = table[n->hash % NBUCKETS];
    table[n->hash % NBUCKETS] = n;
}

/* Drops one reference; 1 when it was the last (the node is unlinked, the caller frees it). */
static int unref(node_t **table, node_t *n)
{
    if (--n->refs > 0) return 0;
    for (node_t **pp = &table[n->hash % NBUCKETS]; *pp; pp = &(*pp)->next)
        if (*pp == n) {
            *pp = n->next;
            break;
        }
    free(n->key);
    return 1;
}

static gw_backend_live_t *backend_get(const gw_pool_t *p, const gw_backend_t *b)
{
    size_t len = strlen(p->name) + strlen(b->url) + 2;
    char *key = malloc(len);
    if (!key) return NULL;
    snprintf(key, len, "%s\n%s", p->name, b->url);
    uint64_t h = hash_key(key);
    node_t *n = find(backends, key, h);
    if (n) {
        free(key);
        n->refs++;
        return &((live_backend_t *)n)->s;
    }
    live_backend_t *lb = calloc(1, sizeof(*lb));
    if (!lb) {
        free(key);
        return NULL;
    }
    lb->n = (node_t){NULL, key, h, 1};
    atomic_init(&lb->s.healthy, 1); /* a new backend is healthy until a check says otherwise */
    atomic_init(&lb->s.max_concurrent, b->max_concurrent);
    atomic_init(&lb->s.weight, b->weight);
    insert(backends, &lb->n);
    return &lb->s;
}

static gw_pool_live_t *pool_get(const gw_pool_t *p)
{
    uint64_t h = hash_key(p->name);
    node_t *n = find(pools, p->name, h);
    if (n) {
        n->refs++;
        return &((live_pool_t *)n)->s;
    }
    live_pool_t *lp = calloc(1, sizeof(*lp));
    char *key = strdup(p->name);
    if (!lp || !key || pthread_mutex_init(&lp->s.lock, NULL) != 0) {
        free(lp);
        free(key);
        return NULL;
    }
    lp->n = (node_t){NULL, key, h, 1};
    insert(pools, &lp->n);
    return &lp->s;
}

int gw_live_attach(gw_config_t *c)
{
    int rc = 0;
    pthread_mutex_lock(&lock);
    gw_pool_t *ps = c->pools.items;
    for (size_t i = 0; i < c->pools.n && rc == 0; i++) {
        if (!(ps[i].live = pool_get(&ps[i]))) rc = -1;
        gw_backend_t *bs = ps[i].backends.items;
        for (size_t j = 0; j < ps[i].backends.n && rc == 0; j++)
            if (!(bs[j].live = backend_get(&ps[i], &bs[j]))) rc = -1;
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

void gw_live_set_caps(const gw_config_t *c)
{
    const gw_pool_t *ps = c->pools.items;
    for (size_t i = 0; i < c->pools.n; i++) {
        const gw_backend_t *bs = ps[i].backends.items;
        for (size_t j = 0; j < ps[i].backends.n; j++) {
            if (!bs[j].live) continue;
            atomic_store_explicit(&bs[j].live->max_concurrent, bs[j].max_concurrent,
                                  memory_order_relaxed);
            atomic_store_explicit(&bs[j].live->weight, bs[j].weight, memory_order_relaxed);
        }
    }
}

void gw_live_detach(gw_config_t *c)
{
    pthread_mutex_lock(&lock);
    gw_pool_t *ps = c->pools.items;
    for (size_t i = 0; i < c->pools.n; i++) {
        gw_backend_t *bs = ps[i].backends.items;
        for (size_t j = 0; j < ps[i].backends.n; j++) {
            if (!bs[j].live) continue;
            live_backend_t *lb =
                (live_backend_t *)((char *)bs[j].live - offsetof(live_backend_t, s));
            if (unref(backends, &lb->n)) free(lb);
            bs[j].live = NULL;
        }
        if (!ps[i].live) continue;
        live_pool_t *lp = (live_pool_t *)((char *)ps[i].live - offsetof(live_pool_t, s));
        if (unref(pools, &lp->n)) {
            /* Nothing waits in a pool no snapshot names: its requests held one. */
            for (size_t k = 0; k < lp->s.ntenants; k++) free(lp->s.tenants[k].id);
            free(lp->s.tenants);
            pthread_mutex_destroy(&lp->s.lock);
            free(lp);
        }
        ps[i].live = NULL;
    }
    pthread_mutex_unlock(&lock);
}
