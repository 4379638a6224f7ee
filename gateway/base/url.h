/* Backend URLs: http(s)://host[:port][/], parsed without a lookup or an allocation. */
#ifndef GW_URL_H
#define GW_URL_H

typedef struct gw_url {
    int tls;          /* https:// */
    const char *host; /* without the brackets of an IPv6 address; points into buf */
    const char *port; /* as written, or the scheme's default ("80", "443") */
    char name[320];   /* host:port, or [host]:port: the backend's name and Host header */
    char buf[300];
} gw_url_t;

/* Accepts http:// or https://, a host (letters, digits, '.', '-', or an [IPv6] address), an
 * optional port 1..65535, and no path but a single "/". 0, or -1 with *why: what is wrong,
 * worded to follow the key's path ("has no host"). */
int gw_url_parse(const char *url, gw_url_t *u, const char **why);

#endif
