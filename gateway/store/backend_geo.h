/* Where backends are: their addresses' countries, the verdicts under the global policy, the
 * connect-time check, the audit lines and the report. The plugin owns the policy's config; the
 * core judges backends by it. */
#ifndef GW_BACKEND_GEO_H
#define GW_BACKEND_GEO_H

#include <arpa/inet.h>
#include <stdio.h>

#include "config/config.h"
#include "config/load.h"
#include "store/resolver.h"

typedef struct gw_residency gw_residency_t;
typedef struct gw_req gw_req_t;

/* One address a backend host resolves to, and what the databases say of it. */
typedef struct gw_addr {
    struct sockaddr_storage ss;
    socklen_t len;
    char text[INET6_ADDRSTRLEN];
    char country[3];    /* "" when no database knows it */
    const char *source; /* the database that said so (the policy's copy of its path), or NULL */
    int allowed;        /* the global policy allows it (always 1 without a policy) */
} gw_addr_t;

/* A backend's addresses and verdict at one resolution: immutable once published, counted
 * (see "Lifetime" in backend_geo.c): freed by whoever drops its last reference. */
typedef struct gw_resolved {
    atomic_int refs; /* the backend's while it is current, and one per holder */
    size_t n;
    gw_addr_t *addrs;
    int approved;        /* may be connected to: declared country and every address allowed */
    int unknown, failed; /* an address no database knows; a lookup that failed */
    char reason[384];    /* why not approved ("" when approved) */
    char countries[3 * GW_MAX_ADDRS + 3]; /* declared first, then the others: "CH,LI" */
    char when[32];                        /* UTC time of the resolution */
    int cause;                            /* GW_RES_LOAD or GW_RES_REFRESH */
} gw_resolved_t;

enum { GW_RES_LOAD, GW_RES_REFRESH };

/* Config loading: the backend's first resolution (derive_backend), then, once the plugins are
 * configured, the verdicts of every backend (errors: unknown addresses, failed lookups). */
int gw_residency_resolve_backend(gw_conf_ctx_t *cx, gw_config_t *c, gw_backend_t *b,
                                 const char *path, char *err, size_t errlen);
int gw_residency_derive(gw_conf_ctx_t *cx, gw_config_t *c);
/* Both, as the steps the config loader runs (gw_config_set_steps); with GW_CONFIG_REPORT an
 * unknown address or a failed lookup is a verdict to show, not a config error. */
extern const gw_config_steps_t gw_backend_geo_config_steps;

/* The backend's current state, held: valid (from any thread) until gw_resolved_release.
 * NULL when the backend was not resolved (offline checks). */
const gw_resolved_t *gw_backend_hold(const gw_backend_t *b);
void gw_resolved_release(const gw_resolved_t *rs);

/* The connect path: the address to connect to (a verified one), or NULL when the backend may
 * not be connected to; then, once connected, whether the peer is one of the verified
 * addresses of that state. */
const gw_addr_t *gw_residency_connect_addr(const gw_config_t *c, const gw_resolved_t *rs);
/* Who asks to connect: the snapshot the request was admitted under, its tenant (NULL: none) and
 * the countries the tenant's policy narrowed it to (gw_req_residency_narrow; NULL: none). */
typedef struct gw_geo_ask {
    const gw_config_t *cfg;
    const char *tenant_id;
    char (*narrow)[3];
    size_t nnarrow;
} gw_geo_ask_t;
/* The one residency check of a request's connect path, for every try (first, queued,
 * retried) and every connection (new or idle): may r go to b under rs, b's state current at
 * this moment (held)? NULL when it may, else the reason (for the audit log):
 * backend_not_approved (the global verdict) or backend_not_approved_for_tenant (the tenant's
 * narrowed policy). */
const char *gw_residency_connect_check(const gw_geo_ask_t *r, const gw_backend_t *b,
                                       const gw_resolved_t *rs);
int gw_residency_peer_ok(const gw_config_t *c, const gw_resolved_t *rs, int fd);
/* A pool has at least one approved backend. */
int gw_residency_pool_ok(const gw_config_t *c, const gw_pool_t *p);

/* Audit: config_loaded and a backend_verdict per backend, after the audit log is open. */
void gw_residency_audit_loaded(const gw_config_t *c);

/* The report: JSON (free with cJSON_free), or a table; 1 when every backend is approved. */
char *gw_residency_report_json(const gw_config_t *c);
void gw_residency_report_table(const gw_config_t *c, FILE *f);
int gw_residency_all_approved(const gw_config_t *c);

/* What the resolver thread hands over (gw_resolver_start): new addresses of a backend, verified
 * and published when they changed; the snapshot served now. */
extern const gw_resolver_cbs_t gw_backend_geo_resolver_cbs;
/* Backend states alive in the process (gotthard_resolver_states). */
long gw_resolver_states(void);

/* For the plugin interface (proxy/plugin_api.c). The countries behind b, as named by rs, the
 * state its connection was verified under, judged by the config serving now when a reload
 * came since cfg (the request's); NULL when refused. Copies live in a. */
const char *gw_residency_conn_countries(const gw_config_t *cfg, const gw_backend_t *b,
                                        const gw_resolved_t *rs, gw_arena_t *a);
/* The countries behind b's current state, copied into a; NULL when it is not approved. */
const char *gw_residency_countries_now(const gw_backend_t *b, gw_arena_t *a);
/* The country of sa (NULL: not known) in c's residency databases: 1 and cc set, 0 when none
 * knows it, -1 without a policy or on error. */
int gw_residency_country_of(const gw_config_t *c, const struct sockaddr *sa, char cc[3]);

#endif
