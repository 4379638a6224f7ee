/* The `cidr,country` lines of gotthard-mmdb's input: one line in, one checked network out.
 *
 * Depends on libc only. */
#include "site_csv.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int bad(char **err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bad(char **err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(err, fmt, ap) < 0) *err = NULL;
    va_end(ap);
    return SITE_CSV_BAD;
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t') s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n'))
        s[--n] = '\0';
    return s;
}

void site_csv_format(char *out, size_t outsz, int v4, const uint8_t *addr, int plen)
{
    char buf[INET6_ADDRSTRLEN];
    if (!inet_ntop(v4 ? AF_INET : AF_INET6, addr, buf, sizeof buf)) snprintf(buf, sizeof buf, "?");
    snprintf(out, outsz, "%s/%d", buf, plen);
}

/* One data line, trimmed, not a comment. */
static int parse(char *text, site_net_t *net, char **err)
{
    char *comma = strchr(text, ',');
    if (!comma) return bad(err, "expected 'cidr,country' (e.g. 10.1.0.0/16,CH), got '%s'", text);
    *comma = '\0';
    char *cidr = trim(text);
    char *cc = trim(comma + 1);
    if (strchr(cc, ',')) return bad(err, "expected 'cidr,country' (two fields), got more fields");
    if (!*cidr) return bad(err, "missing network before the comma");

    char *slash = strchr(cidr, '/');
    if (!slash)
        return bad(err, "'%s' has no prefix length (for one address write %s/%d)", cidr, cidr,
                   strchr(cidr, ':') ? 128 : 32);
    *slash = '\0';
    const char *addr_s = cidr, *plen_s = slash + 1;
    int v4 = strchr(addr_s, ':') == NULL;
    int maxlen = v4 ? 32 : 128;

    uint8_t a[16];
    memset(a, 0, sizeof a);
    if (inet_pton(v4 ? AF_INET : AF_INET6, addr_s, a) != 1)
        return bad(err, "'%s' is not a valid %s address", addr_s, v4 ? "IPv4" : "IPv6");

    long plen = -1;
    size_t pl = strlen(plen_s);
    if (pl >= 1 && pl <= 3 && strspn(plen_s, "0123456789") == pl && !(pl > 1 && plen_s[0] == '0'))
        plen = strtol(plen_s, NULL, 10);
    if (plen < 0 || plen > maxlen)
        return bad(err, "bad prefix length '/%s' for an %s network (0 to %d)", plen_s,
                   v4 ? "IPv4" : "IPv6", maxlen);

    /* Host bits must be zero. */
    int bytes = v4 ? 4 : 16;
    uint8_t netw[16];
    memcpy(netw, a, sizeof netw);
    for (int i = (int)plen; i < bytes * 8; i++) netw[i / 8] &= (uint8_t) ~(0x80u >> (i % 8));
    if (memcmp(netw, a, (size_t)bytes) != 0) {
        char want[64];
        site_csv_format(want, sizeof want, v4, netw, (int)plen);
        return bad(err, "host bits set in %s/%ld (the network is %s)", addr_s, plen, want);
    }

    if (strlen(cc) != 2 || cc[0] < 'A' || cc[0] > 'Z' || cc[1] < 'A' || cc[1] > 'Z')
        return bad(err, "country '%s' is not an ISO 3166-1 alpha-2 code (two uppercase letters)",
                   cc);
    memcpy(net->addr, a, sizeof net->addr);
    net->v4 = v4;
    net->plen = (int)plen;
    memcpy(net->cc, cc, 3);
    return SITE_CSV_NET;
}

int site_csv_line(const char *line, size_t len, site_net_t *net, char **err)
{
    *err = NULL;
    if (memchr(line, '\0', len)) return bad(err, "NUL byte in line");
    char *copy = malloc(len + 1);
    if (!copy) return SITE_CSV_BAD;
    memcpy(copy, line, len);
    copy[len] = '\0';
    char *t = trim(copy);
    int rc = !*t || *t == '#' ? SITE_CSV_SKIP : parse(t, net, err);
    free(copy);
    return rc;
}
