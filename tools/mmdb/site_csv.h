/* The `cidr,country` lines of gotthard-mmdb's input: one line in, one checked network out. */
#ifndef SITE_CSV_H
#define SITE_CSV_H

#include <stddef.h>
#include <stdint.h>

typedef struct site_net {
    uint8_t addr[16]; /* the network, host bits zero: 4 bytes for IPv4 (the rest 0), or 16 */
    int v4;           /* 1: IPv4, prefix 0 to 32; 0: IPv6, prefix 0 to 128 */
    int plen;         /* the prefix length */
    char cc[3];       /* ISO 3166-1 alpha-2: two uppercase ASCII letters and a NUL */
} site_net_t;

enum { SITE_CSV_BAD = -1, SITE_CSV_SKIP = 0, SITE_CSV_NET = 1 };

/* One input line of len bytes, its end of line included or not (no NUL needed, none read past
 * len). Returns SITE_CSV_NET with *net; SITE_CSV_SKIP for a blank line or a '#' comment;
 * SITE_CSV_BAD with *err the message for `IN.csv:LINE: message` (free it; NULL when out of
 * memory). */
int site_csv_line(const char *line, size_t len, site_net_t *net, char **err);

/* "10.1.0.0/16" or "2001:db8::/32" (at most INET6_ADDRSTRLEN + 4 bytes) into out. */
void site_csv_format(char *out, size_t outsz, int v4, const uint8_t *addr, int plen);

#endif
