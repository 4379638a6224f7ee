/* Backend URLs: the scheme, host and port of http(s)://host[:port][/]. */
#include "base/url.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char **why, const char *what)
{
    *why = what;
    return -1;
}

/* Splits u->buf ("host:port", "[v6]:port", "host") into u->host and u->port. */
static int split_host_port(gw_url_t *u, const char **why)
{
    char *hp = u->buf;
    u->port = NULL;
    u->host = hp;
    if (hp[0] == '[') {
        char *close = strchr(hp, ']');
        if (!close) return fail(why, "has a bad IPv6 address");
        *close = '\0';
        u->host = hp + 1;
        if (close[1] == ':')
            u->port = close + 2;
        else if (close[1])
            return fail(why, "has a bad host");
    } else {
        char *colon = strchr(hp, ':');
        if (colon) {
            *colon = '\0';
            u->port = colon + 1;
        }
    }
    return 0;
}

int gw_url_parse(const char *url, gw_url_t *u, const char **why)
{
    const char *rest;
    memset(u, 0, sizeof(*u));
    if (strncmp(url, "http://", 7) == 0) {
        rest = url + 7;
    } else if (strncmp(url, "https://", 8) == 0) {
        rest = url + 8;
        u->tls = 1;
    } else {
        return fail(why, "must start with http:// or https://");
    }
    size_t hostport_len = strcspn(rest, "/");
    if (rest[hostport_len] && strcmp(rest + hostport_len, "/") != 0)
        return fail(why, "must not have a path");
    if (hostport_len == 0 || hostport_len >= sizeof(u->buf)) return fail(why, "has no host");
    memcpy(u->buf, rest, hostport_len);
    u->buf[hostport_len] = '\0';
    if (split_host_port(u, why) < 0) return -1;
    if (!u->port) u->port = u->tls ? "443" : "80";
    char *end;
    long pn = strtol(u->port, &end, 10);
    if (!*u->host || !*u->port || *end || pn < 1 || pn > 65535)
        return fail(why, "has a bad host or port");
    for (const char *p = u->host; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '.' && *p != '-' && *p != ':')
            return fail(why, "has a bad host");
    int v6 = strchr(u->host, ':') != NULL;
    snprintf(u->name, sizeof(u->name), v6 ? "[%s]:%s" : "%s:%s", u->host, u->port);
    return 0;
}
