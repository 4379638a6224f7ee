/* The real client address behind trusted proxies: CIDR lists and X-Forwarded-For, pure logic. */
#ifndef GW_CLIENT_ADDR_H
#define GW_CLIENT_ADDR_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* A network: IPv4 is kept as IPv4-mapped IPv6 (::ffff:a.b.c.d/96+n), so one comparison serves
 * both families and an IPv4 peer on a dual-stack listener matches IPv4 entries. */
typedef struct gw_cidr {
    uint8_t addr[16];
    unsigned bits; /* 0..128 */
} gw_cidr_t;

/* "10.0.0.0/8", "2001:db8::/32", or one address ("192.0.2.7", "::1"): 0, or -1 when it is not
 * one, or has host bits set beyond its prefix. */
int gw_cidr_parse(const char *s, gw_cidr_t *out);
/* Is the address (AF_INET or AF_INET6) in one of the n networks? */
int gw_cidr_match(const gw_cidr_t *nets, size_t n, const struct sockaddr *sa);

/* The client named by X-Forwarded-For values (every header of the request, in order, taken as
 * one comma-separated list) received from a trusted peer: the rightmost address that is not
 * itself trusted, or the leftmost when all are. Entries left of it are never read (a client
 * writes whatever it likes there). An entry is an IPv4 or IPv6 address, "a.b.c.d:port", "[v6]"
 * or "[v6]:port" (the port is ignored). Returns 1 and sets *out (port 0); 0 when there are no
 * values; -1 when an entry it has to read is empty or not an address ("unknown", "_hidden", a
 * zone, garbage): then the client's address is not known (never the peer's). */
int gw_xff_client(const gw_cidr_t *trusted, size_t ntrusted, const char *const *values,
                  const size_t *lens, size_t nvalues, struct sockaddr_storage *out,
                  socklen_t *out_len);

#endif
