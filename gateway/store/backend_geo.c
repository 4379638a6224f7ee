/* Where backends are: their addresses' countries and verdicts, the connect-time check, the
 * audit lines and the report (the core's residency verification; the policy's config is the
 * plugin's, the resolver and its thread are store/resolver.c).
 *
 * The residency plugin hands over the global policy (gw_conf_residency) while the config is
 * loaded. Every backend host is resolved (A and AAAA, through resolver.hosts_file first) and
 * each address looked up in the databases, in order: a backend is approved when its declared
 * country and the country of every address are allowed. An address that no database knows or a
 * failed lookup is never allowed (fail closed), and at load it is a config error.
 *
 * A backend's addresses and verdict form one immutable gw_resolved_t, published through an
 * atomic pointer. The resolver thread resolves every host again each resolver.refresh_ms and
 * hands the addresses here (gw_backend_geo_resolver_cbs): when the answer changed, this verifies
 * the new addresses and publishes a new state: a host that now resolves abroad makes its backend
 * refused; its old addresses are not used any more and the new ones never.
 *
 * Lifetime. A state is counted (refs): one reference is the backend's while the state is its
 * current one (b->res), one is taken by every holder (gw_backend_hold: a connection for its
 * whole life, idle ones included, a health probe, a report while it reads). Nobody reads a
 * state without holding it, except the code that holds the backend's own reference. A holder
 * takes its reference under `hold_mu` while the state is still b->res; `publish` takes it out
 * of b->res under the same lock before dropping the backend's reference. So a hold either
 * comes first (the count is 2 or more when the backend's goes: the last holder frees it) or
 * sees the new state: a replaced state lives exactly as long as someone uses it, and the
 * states alive are the current ones plus those that connections and readers still hold
 * (gotthard_resolver_states), however often names change. The connect path costs one
 * uncontended lock per try and, per new connection, one getpeername. */
#include "store/backend_geo.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "base/audit.h"
#include "base/geoip.h"
#include "base/log.h"

#define MAX_ADDRS GW_MAX_ADDRS

struct gw_residency {
    gw_geoip_t *geoip;
    char **databases;
    size_t ndatabases;
    char (*allowed)[3];
    size_t nallowed;
    int allow_refused; /* residency.allow_refused_backends */
    int (*tenant_allows)(const void *arg, const char *tenant_id, const char *cc);
    const void *tenant_arg;
    char digest[72]; /* "sha256:" + 64 hex */
};

/* ---------------------------------------------------------------- verdicts */

static int allowed(const gw_residency_t *p, const char *cc)
{
    for (size_t i = 0; i < p->nallowed; i++)
        if (strcmp(p->allowed[i], cc) == 0) return 1;
    return 0;
}

static void append(char *buf, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void append(char *buf, size_t cap, const char *fmt, ...)
{
    size_t len = strlen(buf);
    if (len + 1 >= cap) return;
    if (len) {
        snprintf(buf + len, cap - len, "; ");
        len = strlen(buf);
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + len, cap - len, fmt, ap);
    va_end(ap);
}

static void now_utc(char *buf, size_t cap)
{
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static atomic_long live_states; /* gotthard_resolver_states */

long gw_resolver_states(void)
{
    return atomic_load_explicit(&live_states, memory_order_relaxed);
}

static void free_resolved(gw_resolved_t *rs)
{
    if (!rs) return;
    free(rs->addrs);
    free(rs);
    atomic_fetch_sub_explicit(&live_states, 1, memory_order_relaxed);
}

static pthread_mutex_t hold_mu = PTHREAD_MUTEX_INITIALIZER;

const gw_resolved_t *gw_backend_hold(const gw_backend_t *b)
{
    pthread_mutex_lock(&hold_mu);
    gw_resolved_t *rs = atomic_load_explicit(&((gw_backend_t *)b)->res, memory_order_acquire);
    if (rs) atomic_fetch_add_explicit(&rs->refs, 1, memory_order_relaxed);
    pthread_mutex_unlock(&hold_mu);
    return rs;
}

void gw_resolved_release(const gw_resolved_t *rs)
{
    gw_resolved_t *s = (gw_resolved_t *)rs;
    if (s && atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1) free_resolved(s);
}

/* Makes rs (with the reference given to the backend) b's current state and drops the
 * backend's reference to the one it replaces (see Lifetime above). */
static void publish(gw_backend_t *b, gw_resolved_t *rs)
{
    pthread_mutex_lock(&hold_mu);
    gw_resolved_t *old = atomic_exchange_explicit(&b->res, rs, memory_order_acq_rel);
    pthread_mutex_unlock(&hold_mu);
    gw_resolved_release(old);
}

/* A new state for backend b over these addresses, checked against c's policy. */
static gw_resolved_t *verify(const gw_config_t *c, const gw_backend_t *b,
                             const struct sockaddr_storage *v, size_t n, int cause)
{
    gw_resolved_t *rs = calloc(1, sizeof(*rs));
    if (!rs || !(rs->addrs = calloc(n ? n : 1, sizeof(*rs->addrs)))) {
        free(rs);
        return NULL;
    }
    atomic_fetch_add_explicit(&live_states, 1, memory_order_relaxed);
    atomic_init(&rs->refs, 1);
    const gw_residency_t *p = c->residency;
    rs->n = n;
    rs->cause = cause;
    rs->approved = 1;
    now_utc(rs->when, sizeof(rs->when));
    snprintf(rs->countries, sizeof(rs->countries), "%s", b->country);
    if (p && !allowed(p, b->country)) {
        rs->approved = 0;
        append(rs->reason, sizeof(rs->reason), "declared country %s is not allowed", b->country);
    }
    if (p && n > MAX_ADDRS) { /* the others were not even read: none of them is verified */
        rs->approved = 0;
        append(rs->reason, sizeof(rs->reason),
               "%s resolves to more than %d addresses, more than can be verified", b->host,
               MAX_ADDRS);
    }
    for (size_t i = 0; i < n; i++) {
        gw_addr_t *a = &rs->addrs[i];
        a->ss = v[i];
        a->len =
            v[i].ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
        const void *raw = v[i].ss_family == AF_INET
                              ? (const void *)&((const struct sockaddr_in *)&v[i])->sin_addr
                              : (const void *)&((const struct sockaddr_in6 *)&v[i])->sin6_addr;
        inet_ntop(v[i].ss_family, raw, a->text, sizeof(a->text));
        if (!p) {
            a->allowed = 1;
            continue;
        }
        char err[256];
        int rc = gw_geoip_lookup(p->geoip, (const struct sockaddr *)&a->ss, a->country, &a->source,
                                 err, sizeof(err));
        if (rc == GW_GEOIP_FOUND) {
            a->allowed = allowed(p, a->country);
            if (!a->allowed)
                append(rs->reason, sizeof(rs->reason), "%s is in %s (%s), not allowed", a->text,
                       a->country, a->source);
            if (!strstr(rs->countries, a->country) &&
                strlen(rs->countries) + 4 < sizeof(rs->countries)) {
                strcat(rs->countries, ",");
                strcat(rs->countries, a->country);
            }
        } else if (rc == GW_GEOIP_UNKNOWN) {
            rs->unknown = 1;
            append(rs->reason, sizeof(rs->reason), "%s is in no database", a->text);
        } else {
            rs->failed = 1;
            append(rs->reason, sizeof(rs->reason), "%s: %s", a->text, err);
        }
        if (!a->allowed) rs->approved = 0;
    }
    if (cause == GW_RES_REFRESH && !rs->approved && rs->reason[0]) {
        static const char pre[] = "re-resolved: ";
        size_t keep = sizeof(rs->reason) - sizeof(pre);
        memmove(rs->reason + sizeof(pre) - 1, rs->reason, keep);
        rs->reason[sizeof(rs->reason) - 1] = '\0';
        memcpy(rs->reason, pre, sizeof(pre) - 1);
    }
    return rs;
}

static void free_backend_states(void *arg)
{
    publish(arg, NULL); /* states still held live on until their holders let go */
}

int gw_residency_resolve_backend(gw_conf_ctx_t *cx, gw_config_t *c, gw_backend_t *b,
                                 const char *path, char *err, size_t errlen)
{
    struct sockaddr_storage *v;
    size_t n;
    if (c->flags & GW_CONFIG_OFFLINE) return 0; /* not resolved: no addresses, no verdict */
    if (gw_resolve_host(b->host, b->port, c->resolver.hosts_file, &v, &n, err, errlen) < 0)
        return -1;
    /* Verified once the plugins are configured (the policy is not known yet). */
    gw_resolved_t *rs = verify(c, b, v, n, GW_RES_LOAD);
    free(v);
    if (!rs || gw_arena_cleanup(c->arena, free_backend_states, b) < 0) {
        free_resolved(rs);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    atomic_init(&b->res, rs);
    memcpy(&b->ss, &rs->addrs[0].ss, rs->addrs[0].len);
    b->sslen = rs->addrs[0].len;
    return 0;
}

static void free_policy(void *arg)
{
    gw_residency_t *p = arg;
    gw_geoip_close(p->geoip);
}

static void hex(const unsigned char *d, size_t n, char *out)
{
    static const char h[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = h[d[i] >> 4];
        out[2 * i + 1] = h[d[i] & 15];
    }
    out[2 * n] = '\0';
}

/* The digest names each database by the SHA-256 of the copy its lookups read (geoip.c), not of
 * the file as it may be now: the databases are part of the policy. */
static void db_digest(const gw_geoip_t *g, size_t i, EVP_MD_CTX *outer)
{
    char line[65];
    hex(gw_geoip_sha256(g, i), 32, line);
    EVP_DigestUpdate(outer, "\ndb-sha256 ", 11);
    EVP_DigestUpdate(outer, line, strlen(line));
}

int gw_conf_residency(gw_conf_ctx_t *cx, const char *path, const gw_residency_policy_t *pol)
{
    gw_config_t *c = cx->config;
    if (!c) return 0; /* configured outside a snapshot (unit tests) */
    if (c->residency) {
        gw_conf_error(cx, path, "a residency policy is already set");
        return -1;
    }
    if (!pol || pol->nallowed == 0) {
        gw_conf_error(cx, path, "the residency policy allows no country");
        return -1;
    }
    if (pol->ndatabases == 0) {
        gw_conf_error(cx, path, "the residency policy needs at least one GeoIP database");
        return -1;
    }
    gw_residency_t *p = gw_arena_calloc(c->arena, sizeof(*p));
    p->databases = p ? gw_arena_calloc(c->arena, pol->ndatabases * sizeof(char *)) : NULL;
    p->allowed = p ? gw_arena_calloc(c->arena, pol->nallowed * sizeof(*p->allowed)) : NULL;
    if (!p || !p->databases || !p->allowed) {
        gw_conf_error(cx, path, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < pol->nallowed; i++) {
        const char *a = pol->allowed[i];
        if (!a || strlen(a) != 2 || !isupper((unsigned char)a[0]) ||
            !isupper((unsigned char)a[1])) {
            gw_conf_error(cx, path, "allowed countries must be ISO 3166 alpha-2 codes such as CH");
            return -1;
        }
        memcpy(p->allowed[i], a, 3);
    }
    p->nallowed = pol->nallowed;
    p->allow_refused = pol->allow_refused_backends;
    p->tenant_allows = pol->tenant_allows;
    p->tenant_arg = pol->arg;
    if (c->flags & GW_CONFIG_OFFLINE) { /* the databases are neither opened nor digested */
        c->residency = p;
        return 0;
    }
    char err[512];
    size_t bad = 0;
    p->geoip = gw_geoip_open(pol->databases, pol->ndatabases, &bad, err, sizeof(err));
    if (!p->geoip) {
        char *dp = gw_conf_path_index(cx, "$.geoip.databases", bad);
        gw_conf_error(cx, dp ? dp : "$.geoip.databases", "%s", err);
        return -1;
    }
    if (gw_arena_cleanup(c->arena, free_policy, p) < 0) {
        gw_geoip_close(p->geoip);
        gw_conf_error(cx, path, "out of memory");
        return -1;
    }
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int dl = 0;
    int ok = m && EVP_DigestInit_ex(m, EVP_sha256(), NULL);
    if (ok && pol->canonical) ok = EVP_DigestUpdate(m, pol->canonical, strlen(pol->canonical));
    for (size_t i = 0; i < pol->ndatabases; i++) {
        p->databases[i] = gw_arena_strdup(c->arena, pol->databases[i]);
        if (ok) db_digest(p->geoip, i, m);
    }
    p->ndatabases = pol->ndatabases;
    ok = ok && EVP_DigestFinal_ex(m, d, &dl);
    EVP_MD_CTX_free(m);
    if (!ok) {
        gw_conf_error(cx, "$.geoip.databases", "cannot digest the databases");
        return -1;
    }
    memcpy(p->digest, "sha256:", 7);
    hex(d, dl, p->digest + 7);
    c->residency = p;
    return 0;
}

/* After the plugins: every backend's first state, verified under the policy. A backend that
 * cannot be verified (an address in no database, a failed lookup) is a config error; so is
 * one the policy refuses, unless residency.allow_refused_backends: -t, start and reload say
 * so, naming it, instead of a gateway that answers 503 for its pool. The report shows both. */
int gw_residency_derive(gw_conf_ctx_t *cx, gw_config_t *c)
{
    int rc = 0;
    for (size_t i = 0; i < c->nbackends; i++) {
        gw_backend_t *b = c->backends[i];
        gw_resolved_t *old = atomic_load(&b->res);
        if (!old) continue;
        struct sockaddr_storage v[MAX_ADDRS + 1];
        for (size_t k = 0; k < old->n; k++) v[k] = old->addrs[k].ss;
        gw_resolved_t *rs = verify(c, b, v, old->n, GW_RES_LOAD);
        if (!rs) {
            gw_conf_error(cx, "$.pools", "out of memory");
            return -1;
        }
        publish(b, rs); /* nobody else sees the snapshot yet: rs stays b's while it loads */
        if (!c->residency || (c->flags & GW_CONFIG_REPORT) || rs->approved) continue;
        int broken = rs->unknown || rs->failed;
        if (!broken && c->residency->allow_refused) continue;
        gw_pool_t *pools = c->pools.items;
        size_t pi = (size_t)(b->pool - pools),
               bi = (size_t)(b - (gw_backend_t *)b->pool->backends.items);
        char *path = gw_conf_path_index(
            cx, gw_conf_path_key(cx, gw_conf_path_index(cx, "$.pools", pi), "backends"), bi);
        path = gw_conf_path_key(cx, path, "url");
        if (broken) /* a broken setup, not a verdict: fail closed, and say why */
            gw_conf_error(cx, path, "residency: %s", rs->reason);
        else
            gw_conf_error(cx, path,
                          "backend %s of pool %s is refused by the residency policy: %s "
                          "(residency.allow_refused_backends: true starts with it refused)",
                          b->name, b->pool->name, rs->reason);
        rc = -1;
    }
    return rc;
}

const gw_config_steps_t gw_backend_geo_config_steps = {gw_residency_resolve_backend,
                                                       gw_residency_derive};

/* ---------------------------------------------------------------- the connect path */

const gw_addr_t *gw_residency_connect_addr(const gw_config_t *c, const gw_resolved_t *rs)
{
    if (!rs || rs->n == 0) return NULL;
    if (c->residency && !rs->approved) return NULL;
    return &rs->addrs[0];
}

static int in_narrow(const gw_geo_ask_t *r, const char *cc)
{
    for (size_t i = 0; i < r->nnarrow; i++)
        if (strcmp(r->narrow[i], cc) == 0) return 1;
    return 0;
}

/* The snapshot the process serves now (the last accepted config), counted: a request admitted
 * under an older one (r->cfg) is held to it as well at connect (gw_residency_connect_check). */
static pthread_mutex_t live_mu = PTHREAD_MUTEX_INITIALIZER;
static _Atomic(gw_config_t *) live_cfg;

static void set_live(gw_config_t *c)
{
    if (c) gw_config_ref(c);
    pthread_mutex_lock(&live_mu);
    gw_config_t *old = atomic_exchange_explicit(&live_cfg, c, memory_order_acq_rel);
    pthread_mutex_unlock(&live_mu);
    if (old) gw_config_unref(old);
}

static gw_config_t *hold_live(void)
{
    pthread_mutex_lock(&live_mu);
    gw_config_t *c = atomic_load_explicit(&live_cfg, memory_order_acquire);
    if (c) gw_config_ref(c);
    pthread_mutex_unlock(&live_mu);
    return c;
}

/* Is cc in the tenant's residency.allowed_countries (checked by the plugin when loaded)? */
/* b's twin in the snapshot `now`: the backend with the same identity (its pool's name and its
 * url, as live.c keys it), or NULL when the current config no longer has it. */
static const gw_backend_t *twin_in(const gw_config_t *now, const gw_backend_t *b)
{
    const gw_pool_t *ps = now->pools.items;
    for (size_t i = 0; i < now->pools.n; i++) {
        if (strcmp(ps[i].name, b->pool->name) != 0) continue;
        const gw_backend_t *bs = ps[i].backends.items;
        for (size_t j = 0; j < ps[i].backends.n; j++)
            if (strcmp(bs[j].url, b->url) == 0) return &bs[j];
    }
    return NULL;
}

/* May a connection go to b under rs (the state of the request's snapshot) as the current
 * snapshot `now` judges it? b is judged as `now` declares and resolves it: its twin there
 * (gone: refused), the twin's declared country and its current state, held; and every address
 * rs may connect to must be one the twin's state approves. The tenant's narrowing is `now`'s. */
static const char *check_now(const gw_config_t *now, const gw_geo_ask_t *r, const gw_backend_t *b,
                             const gw_resolved_t *rs)
{
    const gw_residency_t *p = now->residency;
    if (!p) return NULL; /* the current config has no policy */
    const gw_backend_t *cur = twin_in(now, b);
    if (!cur) return "backend_not_approved";
    const gw_resolved_t *crs = gw_backend_hold(cur);
    const char *why = NULL;
    if (!crs || !crs->approved || !cur->country || !allowed(p, cur->country))
        why = "backend_not_approved";
    for (size_t i = 0; !why && i < rs->n; i++) {
        size_t j = 0;
        while (j < crs->n && !gw_addr_same(&crs->addrs[j].ss, &rs->addrs[i].ss)) j++;
        if (j == crs->n || !crs->addrs[j].allowed) why = "backend_not_approved";
    }
    /* the tenant's own narrowing, as the current config's policy says */
    int narrowed = r->tenant_id && p->tenant_allows;
    for (size_t i = 0; !why && narrowed && i <= crs->n; i++) {
        const char *cc = i == 0 ? cur->country : crs->addrs[i - 1].country;
        if (!p->tenant_allows(p->tenant_arg, r->tenant_id, cc))
            why = "backend_not_approved_for_tenant";
    }
    gw_resolved_release(crs);
    return why;
}

const char *gw_residency_connect_check(const gw_geo_ask_t *r, const gw_backend_t *b,
                                       const gw_resolved_t *rs)
{
    if (!gw_residency_connect_addr(r->cfg, rs)) return "backend_not_approved";
    if (r->cfg->residency && r->narrow) {
        /* Approved: the declared country and every address's are known and allowed globally. */
        if (!b->country || !in_narrow(r, b->country)) return "backend_not_approved_for_tenant";
        for (size_t i = 0; i < rs->n; i++)
            if (!in_narrow(r, rs->addrs[i].country)) return "backend_not_approved_for_tenant";
    }
    /* A reload accepted since the request was admitted: nothing new goes where the current
     * config no longer allows. One atomic load when nothing changed. */
    const gw_config_t *now = atomic_load_explicit(&live_cfg, memory_order_acquire);
    if (!now || now == r->cfg) return NULL;
    gw_config_t *held = hold_live();
    const char *why = held && held != r->cfg ? check_now(held, r, b, rs) : NULL;
    if (held) gw_config_unref(held);
    return why;
}

int gw_residency_peer_ok(const gw_config_t *c, const gw_resolved_t *rs, int fd)
{
    if (!c->residency) return 1;
    if (!rs || !rs->approved || fd < 0) return 0;
    struct sockaddr_storage peer = {0};
    socklen_t len = sizeof(peer);
    if (getpeername(fd, (struct sockaddr *)&peer, &len) < 0) return 0;
    for (size_t i = 0; i < rs->n; i++)
        if (rs->addrs[i].allowed && gw_addr_same(&rs->addrs[i].ss, &peer)) return 1;
    return 0;
}

int gw_residency_pool_ok(const gw_config_t *c, const gw_pool_t *p)
{
    if (!c->residency) return 1;
    gw_backend_t *bs = p->backends.items;
    for (size_t i = 0; i < p->backends.n; i++) {
        const gw_resolved_t *rs = gw_backend_hold(&bs[i]);
        int ok = rs && rs->approved;
        gw_resolved_release(rs);
        if (ok) return 1;
    }
    return 0;
}

/* ---------------------------------------------------------------- audit and report */

static const char *verdict_of(const gw_config_t *c, const gw_resolved_t *rs)
{
    if (!c->residency) return "unverified";
    return rs && rs->approved ? "approved" : "refused";
}

/* "address=country,..." with whole entries only: when they do not all fit in cap, as many as
 * fit with room left for " +N more" (N the entries left out). */
static void addresses_text(const gw_resolved_t *rs, char *buf, size_t cap)
{
    enum { MORE = sizeof(" +99999 more") };
    size_t len = 0, i = 0, n = rs ? rs->n : 0;
    buf[0] = '\0';
    for (; i < n; i++) {
        char entry[INET6_ADDRSTRLEN + 16];
        int k = snprintf(entry, sizeof(entry), "%s%s=%s", i ? "," : "", rs->addrs[i].text,
                         rs->addrs[i].country[0] ? rs->addrs[i].country : "unknown");
        size_t room = i + 1 < n ? MORE : 1; /* the last one needs no room for the count */
        if (k < 0 || len + (size_t)k + room > cap) break;
        memcpy(buf + len, entry, (size_t)k + 1);
        len += (size_t)k;
    }
    if (i < n) snprintf(buf + len, cap - len, " +%zu more", n - i);
}

static void audit_verdict(const gw_config_t *c, const gw_backend_t *b, const gw_resolved_t *rs)
{
    char addrs[1024];
    addresses_text(rs, addrs, sizeof(addrs));
    gw_audit("backend_verdict", "pool", b->pool->name, "backend", b->name, "verdict",
             verdict_of(c, rs), "declared_country", b->country, "addresses", addrs, "reason",
             rs && rs->reason[0] ? rs->reason : "", "cause",
             rs && rs->cause == GW_RES_REFRESH ? "re-resolution" : "config", NULL);
}

void gw_residency_audit_loaded(const gw_config_t *c)
{
    const gw_residency_t *p = c->residency;
    char allowed_s[512] = "", dbs[2048] = "", nb[24], na[24];
    size_t approved = 0;
    for (size_t i = 0; i < c->nbackends; i++) {
        const gw_resolved_t *rs = gw_backend_hold(c->backends[i]);
        approved += rs && rs->approved;
        gw_resolved_release(rs);
    }
    snprintf(nb, sizeof(nb), "%zu", c->nbackends);
    snprintf(na, sizeof(na), "%zu", p ? approved : 0);
    for (size_t i = 0; p && i < p->nallowed; i++)
        snprintf(allowed_s + strlen(allowed_s), sizeof(allowed_s) - strlen(allowed_s), "%s%s",
                 i ? "," : "", p->allowed[i]);
    for (size_t i = 0; p && i < p->ndatabases; i++)
        snprintf(dbs + strlen(dbs), sizeof(dbs) - strlen(dbs), "%s%s", i ? "," : "",
                 p->databases[i]);
    gw_audit("config_loaded", "digest", p ? p->digest : "none", "residency", p ? "on" : "off",
             "allowed_countries", allowed_s, "databases", dbs, "backends", nb, "approved", na,
             NULL);
    for (size_t i = 0; i < c->nbackends; i++) {
        const gw_resolved_t *rs = gw_backend_hold(c->backends[i]);
        audit_verdict(c, c->backends[i], rs);
        gw_resolved_release(rs);
    }
}

int gw_residency_all_approved(const gw_config_t *c)
{
    if (!c->residency) return 0;
    for (size_t i = 0; i < c->nbackends; i++) {
        const gw_resolved_t *rs = gw_backend_hold(c->backends[i]);
        int ok = rs && rs->approved;
        gw_resolved_release(rs);
        if (!ok) return 0;
    }
    return 1;
}

static cJSON *report(const gw_config_t *c)
{
    const gw_residency_t *p = c->residency;
    cJSON *root = cJSON_CreateObject();
    if (!root) return NULL;
    if (p) {
        cJSON *pol = cJSON_AddObjectToObject(root, "policy");
        cJSON *al = cJSON_AddArrayToObject(pol, "allowed_countries");
        for (size_t i = 0; i < p->nallowed; i++)
            cJSON_AddItemToArray(al, cJSON_CreateString(p->allowed[i]));
        cJSON *dbs = cJSON_AddArrayToObject(pol, "databases");
        for (size_t i = 0; i < p->ndatabases; i++)
            cJSON_AddItemToArray(dbs, cJSON_CreateString(p->databases[i]));
        cJSON_AddStringToObject(pol, "digest", p->digest);
    } else {
        cJSON_AddNullToObject(root, "policy");
    }
    cJSON_AddBoolToObject(root, "all_approved", gw_residency_all_approved(c));
    cJSON *arr = cJSON_AddArrayToObject(root, "backends");
    for (size_t i = 0; i < c->nbackends; i++) {
        const gw_backend_t *b = c->backends[i];
        const gw_resolved_t *rs = gw_backend_hold(b);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToArray(arr, o);
        cJSON_AddStringToObject(o, "pool", b->pool->name);
        cJSON_AddStringToObject(o, "backend", b->name);
        cJSON_AddStringToObject(o, "url", b->url);
        cJSON_AddStringToObject(o, "host", b->host);
        cJSON_AddStringToObject(o, "declared_country", b->country);
        cJSON *as = cJSON_AddArrayToObject(o, "addresses");
        for (size_t k = 0; rs && k < rs->n; k++) {
            const gw_addr_t *a = &rs->addrs[k];
            cJSON *ao = cJSON_CreateObject();
            cJSON_AddItemToArray(as, ao);
            cJSON_AddStringToObject(ao, "address", a->text);
            if (p && a->country[0])
                cJSON_AddStringToObject(ao, "country", a->country);
            else
                cJSON_AddNullToObject(ao, "country");
            if (p && a->source)
                cJSON_AddStringToObject(ao, "database", a->source);
            else
                cJSON_AddNullToObject(ao, "database");
            cJSON_AddBoolToObject(ao, "allowed", p && a->allowed);
        }
        cJSON_AddStringToObject(o, "verdict", verdict_of(c, rs));
        cJSON_AddStringToObject(o, "reason",
                                !p                    ? "no residency policy is configured"
                                : rs && rs->reason[0] ? rs->reason
                                                      : "");
        cJSON_AddStringToObject(o, "resolved_at", rs ? rs->when : "");
        cJSON_AddStringToObject(o, "resolved_by",
                                rs && rs->cause == GW_RES_REFRESH ? "re-resolution" : "config");
        gw_resolved_release(rs);
    }
    return root;
}

char *gw_residency_report_json(const gw_config_t *c)
{
    cJSON *root = report(c);
    char *s = root ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    return s;
}

void gw_residency_report_table(const gw_config_t *c, FILE *f)
{
    const gw_residency_t *p = c->residency;
    if (p) {
        fprintf(f, "policy: allowed countries");
        for (size_t i = 0; i < p->nallowed; i++) fprintf(f, "%s%s", i ? ", " : " ", p->allowed[i]);
        fprintf(f, "\ndatabases:");
        for (size_t i = 0; i < p->ndatabases; i++)
            fprintf(f, "%s%s", i ? ", " : " ", p->databases[i]);
        fprintf(f, "\ndigest: %s\n\n", p->digest);
    } else {
        fprintf(f, "policy: none (no \"residency\" in the config): no backend is verified\n\n");
    }
    fprintf(f, "%-16s %-24s %-8s %-26s %-7s %-24s %s\n", "POOL", "BACKEND", "DECLARED", "ADDRESS",
            "COUNTRY", "DATABASE", "VERDICT");
    for (size_t i = 0; i < c->nbackends; i++) {
        const gw_backend_t *b = c->backends[i];
        const gw_resolved_t *rs = gw_backend_hold(b);
        for (size_t k = 0; rs && k < rs->n; k++) {
            const gw_addr_t *a = &rs->addrs[k];
            fprintf(f, "%-16s %-24s %-8s %-26s %-7s %-24s %s\n", k ? "" : b->pool->name,
                    k ? "" : b->name, k ? "" : b->country, a->text,
                    p ? (a->country[0] ? a->country : "unknown") : "-",
                    p && a->source ? a->source : "-", k ? "" : verdict_of(c, rs));
        }
        if (!p)
            fprintf(f, "%16s   why: no residency policy is configured\n", "");
        else if (rs && !rs->approved)
            fprintf(f, "%16s   why: %s\n", "", rs->reason);
        gw_resolved_release(rs);
    }
    fprintf(f, "\n%s\n",
            gw_residency_all_approved(c) ? "every backend is approved"
                                         : "NOT every backend is approved");
}

/* ---------------------------------------------------------------- re-resolution */

static int same_set(const gw_resolved_t *rs, const struct sockaddr_storage *v, size_t n)
{
    if (!rs || rs->n != n) return 0;
    for (size_t i = 0; i < n; i++) {
        int found = 0;
        for (size_t k = 0; k < n && !found; k++) found = gw_addr_same(&rs->addrs[k].ss, &v[i]);
        if (!found) return 0;
    }
    return 1;
}

/* The resolver thread found b's addresses: when they changed, a new state, verified and
 * published, logged and audited; a host that now resolves abroad makes its backend refused. */
static void resolved(const gw_config_t *c, gw_backend_t *b, const struct sockaddr_storage *v,
                     size_t n)
{
    const gw_resolved_t *old = gw_backend_hold(b);
    int same = same_set(old, v, n);
    gw_resolved_release(old);
    if (same) return;
    gw_resolved_t *rs = verify(c, b, v, n, GW_RES_REFRESH);
    if (!rs) return;
    atomic_fetch_add_explicit(&rs->refs, 1, memory_order_relaxed); /* ours, for the audit */
    publish(b, rs);
    char addrs[1024];
    addresses_text(rs, addrs, sizeof(addrs));
    if (c->residency && !rs->approved)
        gw_warn("backend %s re-resolved to %s: refused (%s)", b->name, addrs, rs->reason);
    else
        gw_info("backend %s re-resolved to %s", b->name, addrs);
    audit_verdict(c, b, rs);
    gw_resolved_release(rs);
}

const gw_resolver_cbs_t gw_backend_geo_resolver_cbs = {resolved, set_live};

/* ---------------------------------------------------------------- for the plugin interface
 * (proxy/plugin_api.c: gw_req_backend_countries, gw_req_client_country) */

const char *gw_residency_conn_countries(const gw_config_t *cfg, const gw_backend_t *b,
                                        const gw_resolved_t *rs, gw_arena_t *a)
{
    if (!rs || !rs->approved) return NULL;
    /* A reload since admission: a backend the current config still has is named as it
     * gives it now (check_now judged a connection made since by that), and not at all
     * when it refuses it; one it no longer has can only be answering on a connection made
     * before the reload, named as verified then. */
    const gw_config_t *now = atomic_load_explicit(&live_cfg, memory_order_acquire);
    if (!now || now == cfg) return rs->countries;
    gw_config_t *held = hold_live();
    const gw_backend_t *cur = held && held != cfg ? twin_in(held, b) : NULL;
    const char *out = rs->countries;
    if (cur) {
        const gw_resolved_t *crs = gw_backend_hold(cur);
        out = held->residency && crs && crs->approved ? gw_arena_strdup(a, crs->countries) : NULL;
        gw_resolved_release(crs);
    }
    if (held) gw_config_unref(held);
    return out;
}

const char *gw_residency_countries_now(const gw_backend_t *b, gw_arena_t *a)
{
    const gw_resolved_t *rs = gw_backend_hold(b);
    char *copy = rs && rs->approved ? gw_arena_strdup(a, rs->countries) : NULL;
    gw_resolved_release(rs);
    return copy;
}

int gw_residency_country_of(const gw_config_t *c, const struct sockaddr *sa, char cc[3])
{
    cc[0] = '\0';
    const gw_residency_t *p = c->residency;
    if (!p) return -1;
    if (!sa) return 0;
    char err[256];
    int rc = gw_geoip_lookup(p->geoip, sa, cc, NULL, err, sizeof(err));
    return rc == GW_GEOIP_FOUND ? 1 : rc == GW_GEOIP_UNKNOWN ? 0 : -1;
}
