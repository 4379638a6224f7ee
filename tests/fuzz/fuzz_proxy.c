/* libFuzzer target for the client address behind load balancers: the PROXY protocol parser
 * (gateway/proxy_proto.c) and trusted X-Forwarded-For (gateway/client_addr.c).
 *
 * The first input byte picks the mode (byte % 3), the rest is the data:
 *   0  the data is what a balancer sends first. Besides "no crash, no undefined behaviour,
 *      nothing read past its length" (the bytes sit against an unreadable page): the verdict is
 *      BAD, INCOMPLETE or a length within the data; a whole header has the same length on its
 *      own bytes and is INCOMPLETE one byte short; cut anywhere, the verdict on the prefix is
 *      consistent with the whole (BAD stays BAD, INCOMPLETE may become anything, a length stays);
 *      a parsed address is AF_INET or AF_INET6 with its own length.
 *   1  the data describes a header the harness writes (v1 or v2, family, address, port, TLVs):
 *      it parses back to exactly that address, and to its whole length.
 *   2  the data is X-Forwarded-For values separated by '\n', and after a '\0' trusted
 *      networks separated by '\n': the client found is an IPv4 or IPv6 address, and another
 *      header with an untrusted address appended makes that address the client.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/client_addr.h"
#include "guarded.h"
#include "base/proxy_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static long parse(const uint8_t *p, size_t n, gw_proxy_hdr_t *h)
{
    const uint8_t *at = (const uint8_t *)gw_fuzz_guarded((const char *)p, n);
    memset(h, 0x5a, sizeof(*h));
    long rc = gw_proxy_parse(at, n, h);
    check(rc == GW_PROXY_BAD || rc == GW_PROXY_INCOMPLETE || (rc > 0 && (size_t)rc <= n));
    if (rc > 0) {
        check(h->version == 1 || h->version == 2);
        check(h->has_addr == 0 || h->has_addr == 1);
        if (h->has_addr)
            check((h->src.ss_family == AF_INET && h->src_len == sizeof(struct sockaddr_in)) ||
                  (h->src.ss_family == AF_INET6 && h->src_len == sizeof(struct sockaddr_in6)));
        check(rc <= (h->version == 1 ? GW_PROXY_V1_MAX : GW_PROXY_V2_MAX));
    }
    return rc;
}

static void raw_mode(const uint8_t *p, size_t n)
{
    gw_proxy_hdr_t h, h2;
    long rc = parse(p, n, &h);
    if (rc > 0) {
        check(parse(p, (size_t)rc, &h2) == rc);
        check(h2.has_addr == h.has_addr);
        check(!h.has_addr || memcmp(&h.src, &h2.src, h.src_len) == 0);
        check(parse(p, (size_t)rc - 1, &h2) == GW_PROXY_INCOMPLETE);
    }
    size_t cut = n ? (size_t)p[n - 1] * n / 256 : 0;
    long pre = parse(p, cut, &h2);
    if (pre == GW_PROXY_BAD) check(rc == GW_PROXY_BAD);
    if (pre > 0) check(rc == pre);
    if (rc == GW_PROXY_INCOMPLETE) check(pre == GW_PROXY_INCOMPLETE);
}

static const uint8_t SIG[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

static size_t take(const uint8_t **p, size_t *n, void *out, size_t k)
{
    size_t t = *n < k ? *n : k;
    memset(out, 0, k);
    memcpy(out, *p, t);
    *p += t;
    *n -= t;
    return t;
}

static void written_mode(const uint8_t *p, size_t n)
{
    uint8_t ctl = 0, addr[16], port[2];
    take(&p, &n, &ctl, 1);
    take(&p, &n, addr, 16);
    take(&p, &n, port, 2);
    int six = ctl & 1, version = ctl & 2 ? 2 : 1;
    unsigned prt = (unsigned)port[0] << 8 | port[1];
    static uint8_t hdr[GW_PROXY_V2_MAX];
    size_t len;
    if (version == 1) {
        char a[INET6_ADDRSTRLEN];
        check(inet_ntop(six ? AF_INET6 : AF_INET, addr, a, sizeof(a)) != NULL);
        int k = snprintf((char *)hdr, 200, "PROXY %s %s %s %u 443\r\n", six ? "TCP6" : "TCP4", a,
                         six ? "::1" : "127.0.0.1", prt);
        check(k > 0 && k < 200);
        len = (size_t)k;
    } else {
        memcpy(hdr, SIG, 12);
        hdr[12] = 0x21; /* version 2, PROXY */
        hdr[13] = six ? 0x21 : 0x11;
        size_t al = six ? 16 : 4, pos = 16;
        memcpy(hdr + pos, addr, al);
        memset(hdr + pos + al, 7, al);
        pos += 2 * al;
        hdr[pos++] = port[0];
        hdr[pos++] = port[1];
        hdr[pos++] = 0x01;
        hdr[pos++] = 0xbb;
        /* TLVs: a byte for the type and length, then as many value bytes as there are. */
        while (n > 0 && pos + 3 + 255 <= sizeof(hdr)) {
            uint8_t tl = 0;
            take(&p, &n, &tl, 1);
            size_t got = take(&p, &n, hdr + pos + 3, tl);
            hdr[pos] = (uint8_t)(0xE0 + (tl & 0x0f));
            hdr[pos + 1] = 0;
            hdr[pos + 2] = (uint8_t)got;
            pos += 3 + got;
        }
        hdr[14] = (uint8_t)((pos - 16) >> 8);
        hdr[15] = (uint8_t)(pos - 16);
        len = pos;
    }
    gw_proxy_hdr_t h;
    check(parse(hdr, len, &h) == (long)len);
    check(h.version == version && h.has_addr);
    check(h.src.ss_family == (six ? AF_INET6 : AF_INET));
    if (six) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&h.src;
        check(memcmp(&s6->sin6_addr, addr, 16) == 0 && ntohs(s6->sin6_port) == prt);
    } else {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)&h.src;
        check(memcmp(&s4->sin_addr, addr, 4) == 0 && ntohs(s4->sin_port) == prt);
    }
    check(parse(hdr, len - 1, &h) == GW_PROXY_INCOMPLETE);
}

/* Lines of p[0..n) (split on '\n'), at most max: their starts and lengths. */
static size_t lines(const char *p, size_t n, const char **v, size_t *l, size_t max)
{
    size_t k = 0;
    while (k < max) {
        const char *nl = memchr(p, '\n', n);
        size_t len = nl ? (size_t)(nl - p) : n;
        v[k] = p;
        l[k++] = len;
        if (!nl) break;
        p += len + 1;
        n -= len + 1;
    }
    return k;
}

static void xff_mode(const uint8_t *data, size_t size)
{
    const char *p = gw_fuzz_guarded((const char *)data, size);
    const char *nul = memchr(p, '\0', size);
    size_t vn = nul ? (size_t)(nul - p) : size;
    const char *v[64], *nv[16];
    size_t vl[64], nl[16];
    size_t nvalues = vn ? lines(p, vn, v, vl, 64) : 0;
    gw_cidr_t nets[16];
    size_t nnets = 0;
    if (nul) {
        size_t k = lines(nul + 1, size - vn - 1, nv, nl, 16);
        for (size_t i = 0; i < k; i++) {
            char s[64];
            if (nl[i] >= sizeof(s)) continue;
            memcpy(s, nv[i], nl[i]);
            s[nl[i]] = '\0';
            if (gw_cidr_parse(s, &nets[nnets]) == 0) {
                check(nets[nnets].bits <= 128);
                nnets++;
            }
        }
    }
    struct sockaddr_storage ss;
    socklen_t sl = 0;
    int rc = gw_xff_client(nets, nnets, v, vl, nvalues, &ss, &sl);
    check(rc == -1 || rc == 0 || rc == 1); /* -1: an entry it had to read is no address */
    if (rc == 1) {
        check((ss.ss_family == AF_INET && sl == sizeof(struct sockaddr_in)) ||
              (ss.ss_family == AF_INET6 && sl == sizeof(struct sockaddr_in6)));
    }
    /* A proxy that appends an untrusted address makes it the client, whatever came before. */
    static const char untrusted[] = "203.0.113.1";
    struct sockaddr_in u = {.sin_family = AF_INET};
    inet_pton(AF_INET, untrusted, &u.sin_addr);
    if (nvalues < 64 && !gw_cidr_match(nets, nnets, (struct sockaddr *)&u)) {
        v[nvalues] = untrusted;
        vl[nvalues] = sizeof(untrusted) - 1;
        check(gw_xff_client(nets, nnets, v, vl, nvalues + 1, &ss, &sl) == 1);
        check(ss.ss_family == AF_INET &&
              memcmp(&((struct sockaddr_in *)&ss)->sin_addr, &u.sin_addr, 4) == 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0 || size > GW_FUZZ_AREA) return 0;
    switch (data[0] % 3) {
    case 0:
        raw_mode(data + 1, size - 1);
        break;
    case 1:
        written_mode(data + 1, size - 1);
        break;
    default:
        xff_mode(data + 1, size - 1);
        break;
    }
    return 0;
}
