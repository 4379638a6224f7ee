/* HAProxy's PROXY protocol, versions 1 (text) and 2 (binary): a pure parser of the header a load
 * balancer sends before the client's bytes (HAProxy's doc/proxy-protocol.txt).
 *
 * Strict, as HAProxy is: v1 is "PROXY TCP4|TCP6 src dst sport dport\r\n" with single spaces,
 * numeric addresses of the named family and decimal ports without leading zeros, or
 * "PROXY UNKNOWN...\r\n"; at most 107 bytes. v2 is the 12-byte signature, version 2, command
 * LOCAL or PROXY, a family and length, the addresses and TLVs (each inside the declared length).
 * The bytes are judged as they come: a wrong byte is BAD at once, so that a plain HTTP request
 * on a PROXY listener is refused on its first bytes, not after a timeout. */
#include "base/proxy_proto.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

static const uint8_t v2_sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                   0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A}; /* "\r\n\r\n\0\r\nQUIT\n" */
static const char v1_sig[] = "PROXY ";

enum { V2_LOCAL = 0, V2_PROXY = 1 };
enum { AF2_UNSPEC = 0, AF2_INET = 1, AF2_INET6 = 2, AF2_UNIX = 3 };
enum { TP2_UNSPEC = 0, TP2_STREAM = 1, TP2_DGRAM = 2 };

static size_t min_sz(size_t a, size_t b)
{
    return a < b ? a : b;
}

static unsigned be16(const uint8_t *p)
{
    return (unsigned)p[0] << 8 | p[1];
}

/* A decimal port: 1 to 5 digits, no leading zero (but "0"), at most 65535. */
static int parse_port(const char *s, uint16_t *port)
{
    size_t n = strlen(s);
    if (n == 0 || n > 5 || strspn(s, "0123456789") != n || (n > 1 && s[0] == '0')) return -1;
    unsigned long v = 0;
    for (size_t i = 0; i < n; i++) v = v * 10 + (unsigned long)(s[i] - '0');
    if (v > 65535) return -1;
    *port = (uint16_t)v;
    return 0;
}

/* The client: AF_INET (4 bytes at addr) or AF_INET6 (16). */
static void set_src(gw_proxy_hdr_t *out, int af, const uint8_t *addr, uint16_t port)
{
    memset(&out->src, 0, sizeof(out->src));
    if (af == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&out->src;
        a->sin_family = AF_INET;
        memcpy(&a->sin_addr, addr, 4);
        a->sin_port = htons(port);
        out->src_len = sizeof(*a);
    } else {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&out->src;
        a->sin6_family = AF_INET6;
        memcpy(&a->sin6_addr, addr, 16);
        a->sin6_port = htons(port);
        out->src_len = sizeof(*a);
    }
    out->has_addr = 1;
}

/* The address and port fields of a whole TCP4/TCP6 line, split on single spaces. */
static long v1_addresses(char *rest, int af, gw_proxy_hdr_t *out)
{
    char *f[4];
    for (int i = 0; i < 4; i++) {
        f[i] = rest;
        char *sp = strchr(rest, ' ');
        if (i < 3) {
            if (!sp) return GW_PROXY_BAD;
            *sp = '\0';
            rest = sp + 1;
        } else if (sp) {
            return GW_PROXY_BAD;
        }
    }
    uint8_t src[16], dst[16];
    uint16_t sport, dport;
    if (inet_pton(af, f[0], src) != 1 || inet_pton(af, f[1], dst) != 1 ||
        parse_port(f[2], &sport) < 0 || parse_port(f[3], &dport) < 0)
        return GW_PROXY_BAD;
    set_src(out, af, src, sport);
    return 0;
}

static long parse_v1(const uint8_t *buf, size_t len, gw_proxy_hdr_t *out)
{
    size_t sig = sizeof(v1_sig) - 1;
    if (memcmp(buf, v1_sig, min_sz(len, sig)) != 0) return GW_PROXY_BAD;
    size_t look = min_sz(len, GW_PROXY_V1_MAX);
    size_t end = 0; /* the index of "\r\n" */
    for (size_t i = 0; i < look; i++) {
        uint8_t ch = buf[i];
        if (ch == '\r') {
            if (i + 1 == look) break; /* its "\n" may come next */
            if (buf[i + 1] != '\n') return GW_PROXY_BAD;
            end = i;
            break;
        }
        if (ch < 0x20 || ch > 0x7e) return GW_PROXY_BAD;
    }
    if (end == 0) return len >= GW_PROXY_V1_MAX ? GW_PROXY_BAD : GW_PROXY_INCOMPLETE;
    if (end < sig) return GW_PROXY_BAD;
    char line[GW_PROXY_V1_MAX];
    memcpy(line, buf, end);
    line[end] = '\0';
    char *proto = line + sig;
    long hl = (long)end + 2;
    memset(out, 0, sizeof(*out));
    out->version = 1;
    if (strncmp(proto, "UNKNOWN", 7) == 0 && (proto[7] == '\0' || proto[7] == ' ')) return hl;
    int af;
    if (strncmp(proto, "TCP4 ", 5) == 0)
        af = AF_INET;
    else if (strncmp(proto, "TCP6 ", 5) == 0)
        af = AF_INET6;
    else
        return GW_PROXY_BAD;
    return v1_addresses(proto + 5, af, out) < 0 ? GW_PROXY_BAD : hl;
}

size_t gw_proxy_v2_length(const uint8_t *buf, size_t len)
{
    if (len < 16 || memcmp(buf, v2_sig, sizeof(v2_sig)) != 0 || (buf[12] >> 4) != 2) return 0;
    return 16 + (size_t)be16(buf + 14);
}

static long parse_v2(const uint8_t *buf, size_t len, gw_proxy_hdr_t *out)
{
    if (memcmp(buf, v2_sig, min_sz(len, sizeof(v2_sig))) != 0) return GW_PROXY_BAD;
    if (len < 13) return GW_PROXY_INCOMPLETE;
    int cmd = buf[12] & 0x0f;
    if ((buf[12] >> 4) != 2 || (cmd != V2_LOCAL && cmd != V2_PROXY)) return GW_PROXY_BAD;
    if (len < 14) return GW_PROXY_INCOMPLETE;
    int fam = buf[13] >> 4, tp = buf[13] & 0x0f;
    /* LOCAL (the balancer's own health check): the family is not looked at. A PROXY header of
     * a TCP listener names a stream, or says nothing (UNSPEC). */
    if (cmd == V2_PROXY && fam != AF2_UNSPEC && (fam > AF2_UNIX || tp != TP2_STREAM))
        return GW_PROXY_BAD;
    if (cmd == V2_PROXY && fam == AF2_UNSPEC && tp > TP2_DGRAM) return GW_PROXY_BAD;
    if (len < 16) return GW_PROXY_INCOMPLETE;
    size_t total = gw_proxy_v2_length(buf, len);
    if (len < total) return GW_PROXY_INCOMPLETE;
    memset(out, 0, sizeof(*out));
    out->version = 2;
    if (cmd == V2_LOCAL) return (long)total; /* the whole block is discarded */
    static const size_t addr_len[] = {0, 12, 36, 216};
    size_t pos = 16 + addr_len[fam];
    if (pos > total) return GW_PROXY_BAD;
    const uint8_t *a = buf + 16;
    if (fam == AF2_INET)
        set_src(out, AF_INET, a, (uint16_t)be16(a + 8));
    else if (fam == AF2_INET6)
        set_src(out, AF_INET6, a, (uint16_t)be16(a + 32));
    /* TLVs: type, 16-bit length, value; each must end within the header. */
    while (pos < total) {
        if (total - pos < 3 || total - pos - 3 < be16(buf + pos + 1)) {
            memset(out, 0, sizeof(*out));
            return GW_PROXY_BAD;
        }
        pos += 3 + be16(buf + pos + 1);
    }
    return (long)total;
}

long gw_proxy_parse(const uint8_t *buf, size_t len, gw_proxy_hdr_t *out)
{
    if (len == 0) return GW_PROXY_INCOMPLETE;
    if (buf[0] == v1_sig[0]) return parse_v1(buf, len, out);
    if (buf[0] == v2_sig[0]) return parse_v2(buf, len, out);
    return GW_PROXY_BAD;
}
