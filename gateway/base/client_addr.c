/* The real client address behind trusted proxies: CIDR lists and X-Forwarded-For, pure logic. */
#include "base/client_addr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

static const uint8_t v4_mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* The address as 16 bytes (IPv4 mapped): 0, or -1 for another family. */
static int as16(const struct sockaddr *sa, uint8_t a[16])
{
    if (sa->sa_family == AF_INET) {
        memcpy(a, v4_mapped, 12);
        memcpy(a + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        return 0;
    }
    if (sa->sa_family == AF_INET6) {
        memcpy(a, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
        return 0;
    }
    return -1;
}

/* A bare numeric address of either family into a sockaddr (port 0): 0, or -1. */
static int parse_addr(const char *s, struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, s, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        *len = sizeof(*v4);
        return 0;
    }
    if (inet_pton(AF_INET6, s, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        *len = sizeof(*v6);
        return 0;
    }
    return -1;
}

int gw_cidr_parse(const char *s, gw_cidr_t *out)
{
    char addr[INET6_ADDRSTRLEN];
    const char *slash = strchr(s, '/');
    size_t n = slash ? (size_t)(slash - s) : strlen(s);
    if (n == 0 || n >= sizeof(addr)) return -1;
    memcpy(addr, s, n);
    addr[n] = '\0';
    struct sockaddr_storage ss;
    socklen_t sl;
    if (parse_addr(addr, &ss, &sl) < 0) return -1;
    as16((struct sockaddr *)&ss, out->addr);
    unsigned max = ss.ss_family == AF_INET ? 32 : 128;
    unsigned bits = max;
    if (slash) {
        const char *b = slash + 1;
        size_t bl = strlen(b);
        if (bl == 0 || bl > 3 || strspn(b, "0123456789") != bl || (bl > 1 && b[0] == '0'))
            return -1;
        bits = (unsigned)atoi(b);
        if (bits > max) return -1;
    }
    if (ss.ss_family == AF_INET) bits += 96;
    /* No host bits beyond the prefix: "10.1.2.3/8" is more likely a mistake than a network. */
    for (unsigned i = bits; i < 128; i++)
        if (out->addr[i / 8] & (0x80u >> (i % 8))) return -1;
    out->bits = bits;
    return 0;
}

static int in_net(const gw_cidr_t *net, const uint8_t a[16])
{
    unsigned full = net->bits / 8, rest = net->bits % 8;
    if (memcmp(net->addr, a, full) != 0) return 0;
    if (rest == 0) return 1;
    uint8_t mask = (uint8_t)(0xffu << (8 - rest));
    return (net->addr[full] & mask) == (a[full] & mask);
}

int gw_cidr_match(const gw_cidr_t *nets, size_t n, const struct sockaddr *sa)
{
    uint8_t a[16];
    if (as16(sa, a) < 0) return 0;
    for (size_t i = 0; i < n; i++)
        if (in_net(&nets[i], a)) return 1;
    return 0;
}

static int is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* A decimal port, 1 to 5 digits without a leading zero, at most 65535: 0, or -1. */
static int valid_port(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 5 || strspn(s, "0123456789") != n || (n > 1 && s[0] == '0')) return -1;
    return atol(s) <= 65535 ? 0 : -1;
}

/* One X-Forwarded-For entry: a bare address, "a.b.c.d:port", "[v6]" or "[v6]:port" (the port
 * is ignored; load balancers such as Azure's write it). 0, or -1 when it is none of these. */
static int parse_entry(char *text, struct sockaddr_storage *ss, socklen_t *len)
{
    if (parse_addr(text, ss, len) == 0) return 0;
    if (text[0] == '[') {
        char *close = strchr(text, ']');
        if (!close || (close[1] && (close[1] != ':' || valid_port(close + 2) < 0))) return -1;
        *close = '\0';
        if (parse_addr(text + 1, ss, len) < 0 || ss->ss_family != AF_INET6) return -1;
        return 0;
    }
    char *colon = strchr(text, ':');
    if (!colon || strchr(colon + 1, ':') || valid_port(colon + 1) < 0) return -1;
    *colon = '\0';
    if (parse_addr(text, ss, len) < 0 || ss->ss_family != AF_INET) return -1;
    return 0;
}

int gw_xff_client(const gw_cidr_t *trusted, size_t ntrusted, const char *const *values,
                  const size_t *lens, size_t nvalues, struct sockaddr_storage *out,
                  socklen_t *out_len)
{
    int found = 0;
    for (size_t v = nvalues; v-- > 0;) {
        const char *s = values[v];
        size_t end = lens[v];
        /* The entries of this value, right to left; a value is one entry at least. */
        for (;;) {
            size_t start = end;
            while (start > 0 && s[start - 1] != ',') start--;
            size_t a = start, b = end;
            while (a < b && is_ows(s[a])) a++;
            while (b > a && is_ows(s[b - 1])) b--;
            char text[INET6_ADDRSTRLEN + 8]; /* "[v6]:port" */
            struct sockaddr_storage ss;
            socklen_t sl;
            if (b - a == 0 || b - a >= sizeof(text)) return -1;
            memcpy(text, s + a, b - a);
            text[b - a] = '\0';
            if (parse_entry(text, &ss, &sl) < 0) return -1;
            *out = ss;
            *out_len = sl;
            found = 1;
            if (!gw_cidr_match(trusted, ntrusted, (struct sockaddr *)&ss)) return 1;
            if (start == 0) break;
            end = start - 1; /* before the comma */
        }
    }
    return found;
}
