/* API keys: a tenant's keys are kept as SHA-256 digests; a request's key is hashed and
 * looked up, and the digests are compared in constant time. */
#include <ctype.h>
#include <gotthard/plugin.h>
#include <hiredis/hiredis.h>
#include <time.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * config (inside each tenant): "api_keys": [{"id": "acme-1", "sha256": "<64 hex>"}]
 * and, for keys kept in Redis (rotation and revocation without a reload), at the top level:
 * "api_keys": {"redis": true, "cache_ms": 5000}. A digest not in the config is then looked up
 * as the Redis hash gotthard:apikey:<sha256 hex> with fields tenant and id; the answer, found
 * or not, is cached per worker for cache_ms, so a revoked key (DEL) stops within that time.
 * Found and not found are cached apart: random keys fill only the (smaller) negative cache and
 * never evict a real key's entry. A lookup is charged to the client address's failure budget
 * only when it finds nothing (gw_req_auth_lookup): over the budget, or with the budget's worth of
 * lookups in flight, a key that neither the config nor a cache knows is not looked up.
 * A key is sent as "Authorization: Bearer <key>" or "api-key: <key>". Credentials shaped like
 * a JWT (two dots) are left to auth_jwt. An unknown key is reported to the core with the
 * first 8 hex digits of its digest (never the key); the core answers the same 401 for
 * every failure.
 */
typedef struct key_entry {
    unsigned char digest[SHA256_DIGEST_LENGTH];
    char *tenant, *id;
    int used;
} key_entry_t;

typedef struct apikey_conf {
    key_entry_t *slots; /* open addressing on the digest's first bytes */
    size_t cap, n;
    int redis;
    int64_t cache_ms;
    EVP_MD *sha256; /* fetched once: the one-shot SHA256() looks it up on every call */
} apikey_conf_t;

/* The per-worker caches of Redis answers, direct-mapped: positive (a tenant) and, apart, negative
 * (no such key), so that unknown keys, which anyone can send, only ever displace each other. */
#define CACHE_SLOTS 4096
#define NEG_CACHE_SLOTS 1024
typedef struct cache_entry {
    unsigned char digest[SHA256_DIGEST_LENGTH];
    char tenant[129], id[129];
    long long expires_ms;
    int used;
} cache_entry_t;
typedef struct neg_entry {
    unsigned char digest[SHA256_DIGEST_LENGTH];
    long long expires_ms;
    int used;
} neg_entry_t;
typedef struct caches {
    cache_entry_t pos[CACHE_SLOTS];
    neg_entry_t neg[NEG_CACHE_SLOTS];
} caches_t;
static pthread_key_t cache_key; /* one caches_t per worker thread, freed when it exits */
static pthread_once_t cache_once = PTHREAD_ONCE_INIT;

static void cache_key_init(void)
{
    pthread_key_create(&cache_key, free);
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static size_t slot_of(const unsigned char *d, size_t cap)
{
    size_t h;
    memcpy(&h, d, sizeof(h));
    return h & (cap - 1);
}

static key_entry_t *find(const apikey_conf_t *c, const unsigned char *d)
{
    for (size_t i = slot_of(d, c->cap), k = 0; k < c->cap; i = (i + 1) & (c->cap - 1), k++) {
        key_entry_t *e = &c->slots[i];
        if (!e->used) return NULL;
        if (CRYPTO_memcmp(e->digest, d, SHA256_DIGEST_LENGTH) == 0) return e;
    }
    return NULL;
}

static int parse_hex(const char *hex, unsigned char *out)
{
    if (strlen(hex) != 2 * SHA256_DIGEST_LENGTH) return -1;
    for (size_t i = 0; i < SHA256_DIGEST_LENGTH; i++) {
        unsigned v = 0;
        for (int k = 0; k < 2; k++) {
            char ch = (char)tolower((unsigned char)hex[2 * i + k]);
            if (ch >= '0' && ch <= '9')
                v = v * 16 + (unsigned)(ch - '0');
            else if (ch >= 'a' && ch <= 'f')
                v = v * 16 + (unsigned)(ch - 'a' + 10);
            else
                return -1;
        }
        out[i] = (unsigned char)v;
    }
    return 0;
}

static void release(void *state)
{
    apikey_conf_t *c = state;
    if (c) EVP_MD_free(c->sha256); /* the rest is in the config's memory */
}

static int id_ok(const char *s)
{
    if (!*s || strlen(s) > 128) return 0;
    for (; *s; s++)
        if (!(isalnum((unsigned char)*s) || *s == '-' || *s == '_' || *s == '.')) return 0;
    return 1;
}

/* One key of a tenant's "api_keys": {"id": "acme-1", "sha256": "<64 hex>"}. */
typedef struct key_conf {
    char *id;
    unsigned char digest[SHA256_DIGEST_LENGTH];
} key_conf_t;

static int load_key_id(gw_conf_ctx_t *cx, const cJSON *n, const char *path, void *dst)
{
    if (!cJSON_IsString(n) || !id_ok(n->valuestring) ||
        !(*(char **)dst = gw_conf_strdup(cx, n->valuestring))) {
        gw_conf_error(cx, path, "must be letters, digits, '-', '_' or '.' (1 to 128)");
        return -1;
    }
    return 0;
}

static int load_digest(gw_conf_ctx_t *cx, const cJSON *n, const char *path, void *dst)
{
    if (!cJSON_IsString(n) || parse_hex(n->valuestring, dst) < 0) {
        gw_conf_error(cx, path, "must be 64 hexadecimal digits (gotthard-keygen prints it)");
        return -1;
    }
    return 0;
}

static const gw_conf_key_t key_keys[] = {
    {"id", GW_CT_FN, offsetof(key_conf_t, id), .flags = GW_CK_REQUIRED, .fn = load_key_id},
    {"sha256", GW_CT_FN, offsetof(key_conf_t, digest), .flags = GW_CK_REQUIRED | GW_CK_SECRET,
     .fn = load_digest},
    {NULL},
};
static const gw_conf_obj_t key_obj = {sizeof(key_conf_t), key_keys, NULL, NULL};
/* A tenant's "api_keys", into a gw_conf_list_t of key_conf_t. */
static const gw_conf_key_t tenant_conf_keys[] = {
    {"api_keys", GW_CT_OBJS, 0, .obj = &key_obj},
    {NULL},
};
static const gw_conf_obj_t tenant_obj = {sizeof(gw_conf_list_t), tenant_conf_keys, NULL, NULL};
/* The top level's "api_keys": {"redis": true, "cache_ms": 5000}, into the apikey_conf_t. */
static const gw_conf_key_t store_keys[] = {
    {"redis", GW_CT_BOOL, offsetof(apikey_conf_t, redis)},
    {"cache_ms", GW_CT_INT, offsetof(apikey_conf_t, cache_ms), 0, 300000},
    {NULL},
};
static const gw_conf_obj_t store_obj = {0, store_keys, NULL, NULL};
static const gw_conf_key_t top_conf_keys[] = {
    {"api_keys", GW_CT_OBJ, 0, .obj = &store_obj},
    {NULL},
};
static const gw_conf_obj_t top_obj = {sizeof(apikey_conf_t), top_conf_keys, NULL, NULL};

/* Tenant ti's keys into the table: a digest is one key's, across all tenants. */
static int add_keys(gw_conf_ctx_t *cx, apikey_conf_t *c, size_t ti, const gw_conf_list_t *keys)
{
    const char *id, *tpath;
    if (!keys->n || !gw_conf_tenant(cx, ti, &id, &tpath) || !id) return 0; /* the core reports it */
    char *tenant = gw_conf_strdup(cx, id);
    if (!tenant) return -1;
    const key_conf_t *k = keys->items;
    int rc = 0;
    for (size_t i = 0; i < keys->n; i++) {
        if (find(c, k[i].digest)) {
            char *kp = gw_conf_path_index(cx, gw_conf_path_key(cx, tpath, "api_keys"), i);
            gw_conf_error(cx, gw_conf_path_key(cx, kp, "sha256"), "is the digest of another key");
            rc = -1;
            continue;
        }
        size_t s = slot_of(k[i].digest, c->cap);
        while (c->slots[s].used) s = (s + 1) & (c->cap - 1);
        key_entry_t *e = &c->slots[s];
        memcpy(e->digest, k[i].digest, sizeof(e->digest));
        e->tenant = tenant;
        e->id = k[i].id;
        e->used = 1;
        c->n++;
    }
    return rc;
}

/* The plugin is on when a tenant has a key, or keys are kept in Redis. */
static int configure(gw_conf_ctx_t *cx, const cJSON *root, const char *path, void **state)
{
    size_t nt = gw_conf_tenant_count(cx), total = 0;
    apikey_conf_t *c = gw_conf_alloc(cx, sizeof(*c));
    gw_conf_list_t *keys = gw_conf_alloc(cx, nt * sizeof(*keys));
    if (!c || !keys) return -1;
    c->cache_ms = 5000;
    int rc = gw_conf_load_some(cx, root, "$", &top_obj, c);
    if (c->redis && !cJSON_GetObjectItemCaseSensitive(root, "redis")) {
        gw_conf_error(cx, "$.api_keys.redis", "needs the top-level redis");
        rc = -1;
    }
    for (size_t i = 0; i < nt; i++) {
        const char *tpath;
        const cJSON *t = gw_conf_tenant(cx, i, NULL, &tpath);
        if (t && gw_conf_load_some(cx, t, tpath, &tenant_obj, &keys[i]) < 0) rc = -1;
        total += keys[i].n;
    }
    if (rc < 0 || (total == 0 && !c->redis)) return rc; /* no keys: off */
    for (c->cap = 16; c->cap < total * 2;) c->cap *= 2;
    if (!(c->slots = gw_conf_alloc(cx, c->cap * sizeof(*c->slots)))) return -1;
    for (size_t i = 0; i < nt; i++)
        if (add_keys(cx, c, i, &keys[i]) < 0) rc = -1;
    if (rc < 0 || !(c->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL))) return -1;
    *state = c;
    return 0;
}

static void fail_unknown(gw_req_t *r, const unsigned char *d)
{
    char hint[24];
    snprintf(hint, sizeof(hint), "sha256:%02x%02x%02x%02x", d[0], d[1], d[2], d[3]);
    gw_req_auth_failed(r, "unknown_key", hint);
}

static caches_t *caches(void)
{
    pthread_once(&cache_once, cache_key_init);
    caches_t *c = pthread_getspecific(cache_key);
    if (!c) {
        if (!(c = calloc(1, sizeof(*c)))) return NULL;
        pthread_setspecific(cache_key, c);
    }
    return c;
}

static cache_entry_t *cache_slot(const unsigned char *d)
{
    caches_t *c = caches();
    return c ? &c->pos[slot_of(d, CACHE_SLOTS)] : NULL;
}

static neg_entry_t *neg_slot(const unsigned char *d)
{
    caches_t *c = caches();
    return c ? &c->neg[slot_of(d, NEG_CACHE_SLOTS)] : NULL;
}

static int fresh(int used, long long expires_ms, const unsigned char *have, const unsigned char *d)
{
    return used && expires_ms > now_ms() && CRYPTO_memcmp(have, d, SHA256_DIGEST_LENGTH) == 0;
}

/* Applies a known answer: a tenant, or none. */
static void apply(gw_req_t *r, const unsigned char *d, const char *tenant, const char *id)
{
    if (!tenant[0])
        fail_unknown(r, d);
    else if (gw_req_set_tenant(r, tenant) < 0)
        gw_req_auth_failed(r, "unknown_tenant", id);
}

typedef struct lookup {
    apikey_conf_t *c;
    unsigned char digest[SHA256_DIGEST_LENGTH];
} lookup_t;

static int string_ok(const redisReply *x)
{
    return x && x->type == REDIS_REPLY_STRING && x->len > 0 && x->len <= 128 &&
           !memchr(x->str, '\0', x->len);
}

static void on_redis(gw_req_t *r, const struct redisReply *reply, void *arg)
{
    lookup_t *l = arg;
    if (gw_req_aborted(r)) {
        gw_req_resume(r, GW_DONE);
        return;
    }
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 2) {
        /* The store did not answer: fail closed, and do not cache. */
        gw_req_auth_failed(r, "key_store_unavailable", NULL);
        gw_req_resume(r, GW_CONTINUE);
        return;
    }
    const redisReply *t = reply->element[0], *i = reply->element[1];
    char tenant[129] = "", id[129] = "-";
    if (string_ok(t)) {
        memcpy(tenant, t->str, t->len);
        tenant[t->len] = '\0';
        if (string_ok(i)) {
            memcpy(id, i->str, i->len);
            id[i->len] = '\0';
        }
    }
    if (l->c->cache_ms > 0 && tenant[0]) {
        cache_entry_t *e = cache_slot(l->digest);
        if (e) {
            memcpy(e->digest, l->digest, sizeof(e->digest));
            memcpy(e->tenant, tenant, sizeof(tenant));
            memcpy(e->id, id, sizeof(id));
            e->expires_ms = now_ms() + l->c->cache_ms;
            e->used = 1;
        }
    } else if (l->c->cache_ms > 0) { /* not found: the negative cache only */
        neg_entry_t *n = neg_slot(l->digest);
        cache_entry_t *e = cache_slot(l->digest);
        if (e && e->used && CRYPTO_memcmp(e->digest, l->digest, sizeof(e->digest)) == 0)
            e->used = 0; /* revoked: its stale positive entry goes */
        if (n) {
            memcpy(n->digest, l->digest, sizeof(n->digest));
            n->expires_ms = now_ms() + l->c->cache_ms;
            n->used = 1;
        }
    }
    apply(r, l->digest, tenant, id);
    gw_req_resume(r, GW_CONTINUE);
}

static int redis_lookup(gw_req_t *r, apikey_conf_t *c, const unsigned char *d)
{
    cache_entry_t *e = cache_slot(d);
    if (e && fresh(e->used, e->expires_ms, e->digest, d)) {
        apply(r, d, e->tenant, e->id);
        return GW_CONTINUE;
    }
    neg_entry_t *n = neg_slot(d);
    if ((n && fresh(n->used, n->expires_ms, n->digest, d)) || !gw_req_auth_lookup(r)) {
        fail_unknown(r, d);
        return GW_CONTINUE;
    }
    lookup_t *l = gw_req_alloc(r, sizeof(*l));
    if (!l) return GW_ERROR;
    l->c = c;
    memcpy(l->digest, d, sizeof(l->digest));
    char key[96] = "gotthard:apikey:";
    size_t k = strlen(key);
    for (size_t i = 0; i < SHA256_DIGEST_LENGTH; i++, k += 2) snprintf(key + k, 3, "%02x", d[i]);
    const char *argv[] = {"HMGET", key, "tenant", "id"};
    if (gw_req_redis(r, on_redis, l, 4, argv, NULL) < 0) {
        gw_req_auth_failed(r, "key_store_unavailable", NULL);
        return GW_CONTINUE;
    }
    return GW_WAIT;
}

static int request_headers(gw_req_t *r, void *conf, void **ctx)
{
    apikey_conf_t *c = conf;
    size_t len;
    const char *key = gw_req_credential(r, &len);
    if (!key || gw_req_tenant(r)) return GW_CONTINUE;
    const char *dot = memchr(key, '.', len);
    if (dot && memchr(dot + 1, '.', len - (size_t)(dot + 1 - key))) return GW_CONTINUE; /* a JWT */
    unsigned char d[SHA256_DIGEST_LENGTH];
    if (EVP_Digest(key, len, d, NULL, c->sha256, NULL) != 1) return GW_ERROR;
    const key_entry_t *e = find(c, d);
    if (e) {
        if (gw_req_set_tenant(r, e->tenant) < 0) gw_req_auth_failed(r, "unknown_tenant", e->id);
        return GW_CONTINUE;
    }
    if (c->redis) return redis_lookup(r, c, d);
    fail_unknown(r, d);
    return GW_CONTINUE;
}

static const char *const config_keys[] = {"api_keys", NULL};
static const char *const tenant_keys[] = {"api_keys", NULL};

const gw_plugin_t gw_plugin_auth_apikey = {
    .name = "auth_apikey",
    .abi = GW_PLUGIN_ABI,
    .config_keys = config_keys,
    .tenant_keys = tenant_keys,
    .rank = GW_RANK_AUTH,
    .configure = configure,
    .release = release,
    .request_headers = request_headers,
};
