/* Unit tests of the PROXY protocol parser (gateway/proxy_proto.c). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "base/proxy_proto.h"

static const uint8_t SIG[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

/* The client address of a parsed header as text, "" when it keeps the peer. */
static const char *src_text(const gw_proxy_hdr_t *h, char *buf, size_t len)
{
    buf[0] = '\0';
    if (!h->has_addr) return buf;
    if (h->src.ss_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)&h->src)->sin_addr, buf, (socklen_t)len);
    else
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)&h->src)->sin6_addr, buf,
                  (socklen_t)len);
    return buf;
}

static unsigned src_port(const gw_proxy_hdr_t *h)
{
    return h->src.ss_family == AF_INET ? ntohs(((const struct sockaddr_in *)&h->src)->sin_port)
                                       : ntohs(((const struct sockaddr_in6 *)&h->src)->sin6_port);
}

/* Every proper prefix of a valid header is INCOMPLETE (a header split over reads, down to its
 * signature), the whole is its length, and bytes after it are not taken. Each prefix is a fresh
 * allocation, so that ASan sees any read past it. */
static long whole_and_split(const uint8_t *hdr, size_t n, gw_proxy_hdr_t *h)
{
    for (size_t i = 0; i < n; i++) {
        uint8_t *p = malloc(i ? i : 1);
        memcpy(p, hdr, i);
        gw_proxy_hdr_t tmp;
        long rc = gw_proxy_parse(p, i, &tmp);
        free(p);
        CHECK(rc == GW_PROXY_INCOMPLETE, "prefix %zu of %zu: %ld", i, n, rc);
        if (rc != GW_PROXY_INCOMPLETE) return rc;
    }
    uint8_t *p = malloc(n + 20);
    memcpy(p, hdr, n);
    memcpy(p + n, "GET / HTTP/1.1\r\n\r\n", 18);
    long rc = gw_proxy_parse(p, n + 18, h);
    free(p);
    CHECK(rc == (long)n, "with bytes after it: %ld, want %zu", rc, n);
    p = malloc(n);
    memcpy(p, hdr, n);
    rc = gw_proxy_parse(p, n, h);
    free(p);
    return rc;
}

static long parse_str(const char *s, gw_proxy_hdr_t *h)
{
    return whole_and_split((const uint8_t *)s, strlen(s), h);
}

/* The verdict on exactly the n bytes at b (a copy that ASan bounds). */
static long parse_buf(const uint8_t *b, size_t n)
{
    gw_proxy_hdr_t h;
    uint8_t *p = malloc(n ? n : 1);
    memcpy(p, b, n);
    long rc = gw_proxy_parse(p, n, &h);
    free(p);
    return rc;
}

static long bad_str(const char *s)
{
    return parse_buf((const uint8_t *)s, strlen(s));
}

static void test_v1(void)
{
    gw_proxy_hdr_t h;
    char a[64];
    const char *t4 = "PROXY TCP4 198.51.100.7 192.0.2.1 56324 443\r\n";
    CHECK(parse_str(t4, &h) == (long)strlen(t4), "TCP4");
    CHECK(h.version == 1 && h.has_addr && h.src.ss_family == AF_INET, "TCP4 address");
    CHECK(strcmp(src_text(&h, a, sizeof(a)), "198.51.100.7") == 0 && src_port(&h) == 56324, "%s",
          a);

    const char *t6 = "PROXY TCP6 2001:db8:1::7 2001:db8::1 0 65535\r\n";
    CHECK(parse_str(t6, &h) == (long)strlen(t6), "TCP6");
    CHECK(h.has_addr && h.src.ss_family == AF_INET6, "TCP6 family");
    CHECK(strcmp(src_text(&h, a, sizeof(a)), "2001:db8:1::7") == 0 && src_port(&h) == 0, "%s", a);

    CHECK(parse_str("PROXY UNKNOWN\r\n", &h) == 15 && !h.has_addr, "UNKNOWN");
    const char *unk = "PROXY UNKNOWN ffff:f::1 ffff:f::2 65535 65535\r\n";
    CHECK(parse_str(unk, &h) == (long)strlen(unk) && !h.has_addr, "UNKNOWN with addresses");

    /* The longest lines: 104 bytes for TCP6, 107 for UNKNOWN (the protocol's limit). */
    const char *tcp6 = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                       "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
    CHECK(parse_str(tcp6, &h) == 104 && h.has_addr, "the longest TCP6 line");
    const char *longest = "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                          "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
    CHECK(strlen(longest) == GW_PROXY_V1_MAX, "the test's longest line");
    CHECK(parse_str(longest, &h) == GW_PROXY_V1_MAX, "the longest line");
}

static void test_v1_bad(void)
{
    const char *bad[] = {
        "GET / HTTP/1.1\r\n",
        "POST /v1/chat/completions HTTP/1.1\r\n",
        "PROXY\r\n",
        "PROXY \r\n",
        "proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
        "PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
        "PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
        "PROXY TCP4 ::1 ::1 1 2\r\n",
        "PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
        "PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n",
        "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
        "PROXY UNKNOWNX\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\0\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        size_t n = strlen(bad[i]);
        if (i == sizeof(bad) / sizeof(bad[0]) - 1) n += 3; /* the NUL and what follows */
        long rc = parse_buf((const uint8_t *)bad[i], n);
        CHECK(rc == GW_PROXY_BAD, "bad[%zu] %s: %ld", i, bad[i], rc);
    }
    /* Judged on the first wrong byte, not at the end of the line. */
    CHECK(bad_str("G") == GW_PROXY_BAD, "G");
    CHECK(bad_str("PROXY") == GW_PROXY_INCOMPLETE, "PROXY");
    CHECK(bad_str("PROXZ") == GW_PROXY_BAD, "PROXZ");
    CHECK(bad_str("PROXY TCP4 1.2.3.4\x01") == GW_PROXY_BAD, "a control byte");
    CHECK(bad_str("") == GW_PROXY_INCOMPLETE, "nothing yet");
    /* Oversize: no CRLF within 107 bytes. */
    char big[300];
    memset(big, 'A', sizeof(big));
    memcpy(big, "PROXY UNKNOWN ", 14);
    big[GW_PROXY_V1_MAX - 1] = '\0';
    CHECK(bad_str(big) == GW_PROXY_INCOMPLETE, "106 bytes without an end");
    big[GW_PROXY_V1_MAX - 1] = 'A';
    big[GW_PROXY_V1_MAX] = '\0';
    CHECK(bad_str(big) == GW_PROXY_BAD, "107 bytes without an end");
    memcpy(big + 200, "\r\n", 3);
    CHECK(bad_str(big) == GW_PROXY_BAD, "a 202-byte line");
}

/* A v2 header: cmd (0 LOCAL, 1 PROXY), fam byte, body. Returns its length. */
static size_t v2(uint8_t *out, int cmd, uint8_t fam, const uint8_t *body, size_t blen)
{
    memcpy(out, SIG, 12);
    out[12] = (uint8_t)(0x20 | cmd);
    out[13] = fam;
    out[14] = (uint8_t)(blen >> 8);
    out[15] = (uint8_t)blen;
    memcpy(out + 16, body, blen);
    return 16 + blen;
}

static void test_v2(void)
{
    uint8_t hdr[600], body[560];
    gw_proxy_hdr_t h;
    char a[64];
    /* INET: 198.51.100.7:40000 -> 192.0.2.1:443, then TLVs. */
    size_t bl = 0;
    const uint8_t in4[12] = {198, 51, 100, 7, 192, 0, 2, 1, 0x9c, 0x40, 0x01, 0xbb};
    memcpy(body, in4, 12);
    bl = 12;
    size_t n = v2(hdr, 1, 0x11, body, bl);
    CHECK(whole_and_split(hdr, n, &h) == (long)n, "INET");
    CHECK(h.version == 2 && h.has_addr && strcmp(src_text(&h, a, sizeof(a)), "198.51.100.7") == 0 &&
              src_port(&h) == 40000,
          "INET address %s", a);
    CHECK(gw_proxy_v2_length(hdr, n) == n && gw_proxy_v2_length(hdr, 15) == 0, "v2 length");
    /* With TLVs: authority, NOOP, an empty one. */
    const uint8_t tlvs[] = {0x02, 0x00, 0x03, 'a', '.',  'b',  0x04,
                            0x00, 0x02, 0,    0,   0x30, 0x00, 0x00};
    memcpy(body + 12, tlvs, sizeof(tlvs));
    n = v2(hdr, 1, 0x11, body, 12 + sizeof(tlvs));
    CHECK(whole_and_split(hdr, n, &h) == (long)n && h.has_addr, "INET with TLVs");
    /* INET6. */
    memset(body, 0, 36);
    inet_pton(AF_INET6, "2001:db8:1::7", body);
    inet_pton(AF_INET6, "2001:db8::1", body + 16);
    body[32] = 0x12, body[33] = 0x34;
    n = v2(hdr, 1, 0x21, body, 36);
    CHECK(whole_and_split(hdr, n, &h) == (long)n, "INET6");
    CHECK(h.has_addr && strcmp(src_text(&h, a, sizeof(a)), "2001:db8:1::7") == 0 &&
              src_port(&h) == 0x1234,
          "INET6 address %s", a);
    /* UNIX: the peer stays the client. */
    memset(body, 'x', 216);
    n = v2(hdr, 1, 0x31, body, 216);
    CHECK(whole_and_split(hdr, n, &h) == (long)n && !h.has_addr, "UNIX");
    /* UNSPEC: the peer. */
    n = v2(hdr, 1, 0x00, body, 0);
    CHECK(whole_and_split(hdr, n, &h) == 16 && !h.has_addr, "UNSPEC");
    /* LOCAL: the peer, whatever the block holds (not read as TLVs). */
    memcpy(body, in4, 12);
    body[12] = 0xff;
    n = v2(hdr, 0, 0x11, body, 13);
    CHECK(whole_and_split(hdr, n, &h) == (long)n && !h.has_addr, "LOCAL");
    n = v2(hdr, 0, 0x00, body, 0);
    CHECK(whole_and_split(hdr, n, &h) == 16 && !h.has_addr, "LOCAL, empty");
}

static void test_v2_bad(void)
{
    uint8_t hdr[600], body[560];
    memset(body, 0, sizeof(body));
    size_t n = v2(hdr, 1, 0x11, body, 12);
    hdr[12] = 0x22; /* command 2 */
    CHECK(parse_buf(hdr, 13) == GW_PROXY_BAD, "command 2");
    hdr[12] = 0x11; /* version 1 */
    CHECK(parse_buf(hdr, 13) == GW_PROXY_BAD && gw_proxy_v2_length(hdr, n) == 0, "version 1");
    hdr[12] = 0x21;
    hdr[13] = 0x12; /* DGRAM */
    CHECK(parse_buf(hdr, 14) == GW_PROXY_BAD, "DGRAM");
    hdr[13] = 0x41; /* family 4 */
    CHECK(parse_buf(hdr, 14) == GW_PROXY_BAD, "family 4");
    hdr[13] = 0x10; /* INET, transport UNSPEC */
    CHECK(parse_buf(hdr, 14) == GW_PROXY_BAD, "INET over UNSPEC");
    hdr[13] = 0x13;
    CHECK(parse_buf(hdr, 14) == GW_PROXY_BAD, "transport 3");
    hdr[7] = 'q'; /* the signature */
    CHECK(parse_buf(hdr, 8) == GW_PROXY_BAD, "signature");
    /* A body shorter than its addresses. */
    n = v2(hdr, 1, 0x11, body, 11);
    CHECK(parse_buf(hdr, n) == GW_PROXY_BAD, "INET in 11 bytes");
    n = v2(hdr, 1, 0x21, body, 35);
    CHECK(parse_buf(hdr, n) == GW_PROXY_BAD, "INET6 in 35 bytes");
    n = v2(hdr, 1, 0x31, body, 215);
    CHECK(parse_buf(hdr, n) == GW_PROXY_BAD, "UNIX in 215 bytes");
    /* TLVs that do not fit: half a TLV header, a length past the end. */
    body[12] = 0x02;
    n = v2(hdr, 1, 0x11, body, 14);
    CHECK(parse_buf(hdr, n) == GW_PROXY_BAD, "half a TLV");
    body[13] = 0x00, body[14] = 0x04;
    n = v2(hdr, 1, 0x11, body, 18);
    CHECK(parse_buf(hdr, n) == GW_PROXY_BAD, "a TLV one byte past the end");
    n = v2(hdr, 1, 0x11, body, 19);
    CHECK(parse_buf(hdr, n) == (long)n, "the same TLV, whole");
    body[13] = 0xff, body[14] = 0xff;
    n = v2(hdr, 1, 0x11, body, 30);
    CHECK(parse_buf(hdr, n) == GW_PROXY_BAD, "a TLV of 65535 bytes in 30");
    /* A v2 prefix is INCOMPLETE until its declared length is in. */
    n = v2(hdr, 1, 0x11, body, 500);
    memset(hdr + 28, 0x04, 3); /* a NOOP TLV of 0x0404 bytes: past the end */
    CHECK(parse_buf(hdr, 200) == GW_PROXY_INCOMPLETE && gw_proxy_v2_length(hdr, 200) == n,
          "declared 516, 200 in");
    CHECK(parse_buf(hdr, n) == GW_PROXY_BAD, "the NOOP TLV overruns");
}

/* The largest v2 header there is: 16 + 65535 bytes, all TLVs. */
static void test_v2_largest(void)
{
    size_t blen = 65535;
    uint8_t *body = calloc(1, blen), *hdr = malloc(16 + blen);
    memcpy(body, (const uint8_t[]){198, 51, 100, 7, 192, 0, 2, 1, 0, 1, 0, 2}, 12);
    size_t pos = 12;
    while (blen - pos >= 3) {
        size_t v = blen - pos - 3 < 1000 ? blen - pos - 3 : 1000;
        body[pos] = 0xE0;
        body[pos + 1] = (uint8_t)(v >> 8);
        body[pos + 2] = (uint8_t)v;
        pos += 3 + v;
    }
    blen = pos;
    size_t n = v2(hdr, 1, 0x11, body, blen);
    gw_proxy_hdr_t h;
    CHECK(gw_proxy_parse(hdr, n, &h) == (long)n && h.has_addr, "%zu bytes", n);
    CHECK(gw_proxy_parse(hdr, n - 1, &h) == GW_PROXY_INCOMPLETE, "one byte short");
    CHECK(n <= GW_PROXY_V2_MAX, "within the maximum");
    free(body);
    free(hdr);
}

static void test_garbage(void)
{
    /* Random bytes never crash, and a verdict never claims more than was given. */
    uint64_t x = 88172645463325252ULL;
    uint8_t buf[300];
    for (int i = 0; i < 20000; i++) {
        size_t n = (size_t)(i % 300);
        for (size_t j = 0; j < n; j++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            buf[j] = (uint8_t)x;
        }
        if (i % 3 == 0 && n >= 12) memcpy(buf, SIG, 12); /* mostly a v2 */
        if (i % 3 == 1 && n >= 6) memcpy(buf, "PROXY ", 6);
        long rc = parse_buf(buf, n);
        CHECK(rc >= GW_PROXY_BAD && rc <= (long)n, "rc %ld for %zu bytes", rc, n);
    }
}

int main(void)
{
    test_v1();
    test_v1_bad();
    test_v2();
    test_v2_bad();
    test_v2_largest();
    test_garbage();
    return check_done();
}
