/* Unit tests of trusted proxies and X-Forwarded-For (gateway/client_addr.c). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "check.h"
#include "base/client_addr.h"

static struct sockaddr_storage addr(const char *s)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, s, &v4->sin_addr) == 1)
        v4->sin_family = AF_INET;
    else if (inet_pton(AF_INET6, s, &v6->sin6_addr) == 1)
        v6->sin6_family = AF_INET6;
    return ss;
}

static const char *text(const struct sockaddr_storage *ss, char *buf, size_t len)
{
    if (ss->ss_family == AF_INET)
        return inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, buf, (socklen_t)len);
    return inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, buf, (socklen_t)len);
}

static int matches(const gw_cidr_t *nets, size_t n, const char *a)
{
    struct sockaddr_storage ss = addr(a);
    return gw_cidr_match(nets, n, (struct sockaddr *)&ss);
}

static void test_cidr(void)
{
    const char *good[] = {"10.0.0.0/8",  "192.0.2.7", "192.0.2.6/31",  "0.0.0.0/0",    "fd00::/8",
                          "2001:db8::1", "::/0",      "::ffff:0:0/96", "172.16.0.0/12"};
    gw_cidr_t nets[16];
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        CHECK(gw_cidr_parse(good[i], &nets[i]) == 0, "%s", good[i]);
    const char *bad[] = {"",
                         "/8",
                         "10.0.0.0/",
                         "10.0.0.0/33",
                         "10.0.0.0/08",
                         "10.1.0.0/8",
                         "fd00::/129",
                         "example.com",
                         "10.0.0.0/8 ",
                         " 10.0.0.0/8",
                         "10.0.0.0/-1",
                         "10.0.0.0/8/8",
                         "192.0.2.7/31",
                         "10.0.0.0/1000",
                         "1111:2222:3333:4444:5555:6666:7777:8888:9999/128"};
    gw_cidr_t c;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECK(gw_cidr_parse(bad[i], &c) < 0, "accepted %s", bad[i]);

    gw_cidr_t one[3];
    gw_cidr_parse("10.0.0.0/8", &one[0]);
    gw_cidr_parse("192.0.2.6/31", &one[1]);
    gw_cidr_parse("2001:db8::/33", &one[2]);
    CHECK(matches(one, 3, "10.255.1.2") && !matches(one, 3, "11.0.0.1"), "/8");
    CHECK(matches(one, 3, "192.0.2.6") && matches(one, 3, "192.0.2.7") &&
              !matches(one, 3, "192.0.2.8"),
          "/31");
    CHECK(matches(one, 3, "2001:db8:7fff::1") && !matches(one, 3, "2001:db8:8000::1"), "/33");
    /* An IPv4 peer of a dual-stack listener matches IPv4 networks; nothing else does. */
    CHECK(matches(one, 3, "::ffff:10.1.2.3") && !matches(one, 3, "::a01:203"), "IPv4-mapped");
    CHECK(!matches(one, 0, "10.1.2.3"), "no networks");
    gw_cidr_t all4;
    gw_cidr_parse("0.0.0.0/0", &all4);
    CHECK(matches(&all4, 1, "1.2.3.4") && !matches(&all4, 1, "2001:db8::1"),
          "0.0.0.0/0 is IPv4 only");
}

/* The client for the values (";" separates headers), "peer" when there are none, "unknown"
 * when the entry to read is not an address. */
static const char *client(const char *values, char *buf, size_t len)
{
    gw_cidr_t trusted[3];
    gw_cidr_parse("10.0.0.0/8", &trusted[0]);
    gw_cidr_parse("fd00::/8", &trusted[1]);
    gw_cidr_parse("192.0.2.1", &trusted[2]);
    const char *v[8];
    size_t l[8], n = 0;
    const char *p = values;
    for (;;) {
        const char *e = strchr(p, ';');
        v[n] = p;
        l[n++] = e ? (size_t)(e - p) : strlen(p);
        if (!e) break;
        p = e + 1;
    }
    struct sockaddr_storage ss;
    socklen_t sl = 0;
    int rc = gw_xff_client(trusted, 3, v, l, n, &ss, &sl);
    if (rc == 0) return "peer";
    if (rc < 0) return "unknown";
    CHECK(rc == 1, "rc %d", rc);
    CHECK(sl ==
              (ss.ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6)),
          "len");
    return text(&ss, buf, len);
}

static void test_xff(void)
{
    struct {
        const char *values, *want;
    } cases[] = {
        {"198.51.100.7", "198.51.100.7"},
        {" 198.51.100.7 ", "198.51.100.7"},
        {"198.51.100.7, 10.0.0.1", "198.51.100.7"},
        {"198.51.100.7,10.0.0.1,\t192.0.2.1", "198.51.100.7"},
        {"2001:db8::7, fd00::1", "2001:db8::7"},
        /* The client's own writing, left of the first untrusted entry, is never read. */
        {"6.6.6.6, 198.51.100.7", "198.51.100.7"},
        {"garbage, <x>, 198.51.100.7, 10.0.0.1", "198.51.100.7"},
        {",,,198.51.100.7", "198.51.100.7"},
        /* Headers are one list, in order. */
        {"198.51.100.7;203.0.113.9", "203.0.113.9"},
        {"203.0.113.9;198.51.100.7, 10.0.0.2;10.0.0.1", "198.51.100.7"},
        {"198.51.100.7;10.0.0.1, 10.0.0.2", "198.51.100.7"},
        /* Every entry trusted: the farthest. */
        {"10.0.0.5, 10.0.0.6", "10.0.0.5"},
        {"10.0.0.5;fd00::2", "10.0.0.5"},
        /* ip:port and [v6]:port (Azure Application Gateway): the address, the port ignored. */
        {"198.51.100.7:443", "198.51.100.7"},
        {"[2001:db8::7]", "2001:db8::7"},
        {"[2001:db8::7]:8080", "2001:db8::7"},
        {"198.51.100.7, 10.0.0.1:80", "198.51.100.7"},
        {"198.51.100.7:1, [fd00::1]:2", "198.51.100.7"},
        {"198.51.100.7:65535", "198.51.100.7"},
        /* A malformed entry that has to be read: no client address (not the peer's). */
        {"198.51.100.7, bogus", "unknown"},
        {"198.51.100.7, ", "unknown"},
        {"", "unknown"},
        {" ", "unknown"},
        {"unknown", "unknown"},
        {"_hidden", "unknown"},
        {"198.51.100.7,,10.0.0.1", "unknown"},
        {"198.51.100.7;", "unknown"},
        {"10.0.0.1, 1.2.3.4.5", "unknown"},
        {"1111:2222:3333:4444:5555:6666:7777:8888:9999", "unknown"},
        {"198.51.100.7, 10.0.0.1 10.0.0.2", "unknown"},
        {"198.51.100.7%lo", "unknown"},
        {"198.51.100.7:", "unknown"},
        {"198.51.100.7:65536", "unknown"},
        {"198.51.100.7:0443", "unknown"},
        {"198.51.100.7:44a", "unknown"},
        {"198.51.100.7:443:1", "unknown"},
        {"[2001:db8::7", "unknown"},
        {"[2001:db8::7]:", "unknown"},
        {"[2001:db8::7]x", "unknown"},
        {"[198.51.100.7]:80", "unknown"},
        {"2001:db8::7:443", "2001:db8::7:443"}, /* a whole IPv6 address first */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char buf[64];
        const char *got = client(cases[i].values, buf, sizeof(buf));
        CHECK(got && strcmp(got, cases[i].want) == 0, "'%s': %s, want %s", cases[i].values, got,
              cases[i].want);
    }
    /* No values at all. */
    struct sockaddr_storage ss;
    socklen_t sl;
    CHECK(gw_xff_client(NULL, 0, NULL, NULL, 0, &ss, &sl) == 0, "no header");
}

int main(void)
{
    test_cidr();
    test_xff();
    return check_done();
}
