/* Parsing redis://[:password@]host[:port][/db], for the gateway and its tools. */
#include "redis_url.h"

#include <stdlib.h>
#include <string.h>

int gw_redis_url_parse(const char *u, gw_redis_url_t *out)
{
    memset(out, 0, sizeof(*out));
    out->port = 6379;
    if (strncmp(u, "redis://", 8) != 0) return -1;
    u += 8;
    const char *at = strchr(u, '@');
    if (at) {
        size_t n = (size_t)(at - u - 1);
        if (*u != ':' || n == 0 || n >= sizeof(out->password)) return -1;
        memcpy(out->password, u + 1, n);
        u = at + 1;
    }
    size_t hl = strcspn(u, ":/");
    if (hl == 0 || hl >= sizeof(out->host)) return -1;
    memcpy(out->host, u, hl);
    u += hl;
    if (*u == ':') {
        char *end;
        long port = strtol(u + 1, &end, 10);
        if (end == u + 1 || port < 1 || port > 65535) return -1;
        out->port = (int)port;
        u = end;
    }
    if (*u == '/') {
        char *end;
        long db = strtol(u + 1, &end, 10);
        if (end == u + 1 || *end || db < 0 || db > 1000) return -1;
        out->db = (int)db;
        u = end;
    }
    return *u ? -1 : 0;
}
