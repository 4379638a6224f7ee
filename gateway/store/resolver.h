/* The resolver: backend host names to addresses, and the thread that resolves them again. */
#ifndef GW_RESOLVER_H
#define GW_RESOLVER_H

#include <sys/socket.h>

#include "config/config.h"

#define GW_MAX_ADDRS 64 /* addresses kept of one resolution */

/* Same family, address and port. */
int gw_addr_same(const struct sockaddr_storage *a, const struct sockaddr_storage *b);

/* Resolves host (A and AAAA) through resolver.hosts_file, then getaddrinfo. Returns the
 * number of distinct addresses (> 0) in *out (free it), or -1 with err. One more than
 * GW_MAX_ADDRS are kept to tell a host with too many addresses. */
int gw_resolve_host(const char *host, const char *port, const char *hosts_file,
                    struct sockaddr_storage **out, size_t *n, char *err, size_t errlen);

/* What the resolver does with what it finds (store/backend_geo.c provides it). */
typedef struct gw_resolver_cbs {
    /* b of c resolves to these n addresses now (the same as before, or not). */
    void (*resolved)(const gw_config_t *c, gw_backend_t *b, const struct sockaddr_storage *v,
                     size_t n);
    /* c is the snapshot served from now (NULL: none, stopping). */
    void (*serving)(gw_config_t *c);
} gw_resolver_cbs_t;

/* The resolver thread: re-resolves backend hosts every resolver.refresh_ms and hands the
 * addresses to cbs->resolved; start, set_config and stop tell cbs->serving. */
int gw_resolver_start(gw_config_t *c, const gw_resolver_cbs_t *cbs);
void gw_resolver_set_config(gw_config_t *c);
void gw_resolver_stop(void);
/* One pass at once (the thread's body). */
void gw_resolver_refresh(gw_config_t *c, const gw_resolver_cbs_t *cbs);

#endif
