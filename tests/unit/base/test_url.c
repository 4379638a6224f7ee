/* Unit tests for gateway/base/url.c: the backend URL parser, every accepted form and every error.
 */
#include <string.h>

#include "base/url.h"
#include "check.h"

static void good(const char *url, int tls, const char *host, const char *port, const char *name)
{
    gw_url_t u;
    const char *why = NULL;
    int rc = gw_url_parse(url, &u, &why);
    CHECK(rc == 0, "%s: rejected (%s)", url, why ? why : "?");
    if (rc < 0) return;
    CHECK(u.tls == tls, "%s: tls %d", url, u.tls);
    CHECK(strcmp(u.host, host) == 0, "%s: host %s", url, u.host);
    CHECK(strcmp(u.port, port) == 0, "%s: port %s", url, u.port);
    CHECK(strcmp(u.name, name) == 0, "%s: name %s", url, u.name);
}

static void bad(const char *url, const char *expect)
{
    gw_url_t u;
    const char *why = NULL;
    int rc = gw_url_parse(url, &u, &why);
    CHECK(rc == -1, "%s: accepted", url);
    CHECK(why && strcmp(why, expect) == 0, "%s: says \"%s\", not \"%s\"", url, why ? why : "(null)",
          expect);
}

int main(void)
{
    good("http://127.0.0.1:8000", 0, "127.0.0.1", "8000", "127.0.0.1:8000");
    good("http://127.0.0.1:8000/", 0, "127.0.0.1", "8000", "127.0.0.1:8000");
    good("http://backend.example", 0, "backend.example", "80", "backend.example:80");
    good("https://backend.example", 1, "backend.example", "443", "backend.example:443");
    good("https://gpu-1.ch.example:8443/", 1, "gpu-1.ch.example", "8443", "gpu-1.ch.example:8443");
    good("http://[::1]:9000", 0, "::1", "9000", "[::1]:9000");
    good("https://[2001:db8::7]", 1, "2001:db8::7", "443", "[2001:db8::7]:443");
    good("http://[::1]/", 0, "::1", "80", "[::1]:80");
    good("http://h:1", 0, "h", "1", "h:1");
    good("http://h:65535", 0, "h", "65535", "h:65535");

    bad("ftp://h", "must start with http:// or https://");
    bad("HTTP://h", "must start with http:// or https://");
    bad("h:80", "must start with http:// or https://");
    bad("", "must start with http:// or https://");
    bad("http://h/v1", "must not have a path");
    bad("http://h//", "must not have a path");
    bad("http://h:80/?x", "must not have a path");
    bad("http://", "has no host");
    bad("https:///", "has no host");
    char longhost[400] = "http://";
    memset(longhost + 7, 'a', 300);
    longhost[307] = '\0';
    bad(longhost, "has no host");
    bad("http://[::1", "has a bad IPv6 address");
    bad("http://[::1]x", "has a bad host");
    bad("http://[::1]:", "has a bad host or port");
    bad("http://[]:80", "has a bad host or port");
    bad("http://:80", "has a bad host or port");
    bad("http://h:", "has a bad host or port");
    bad("http://h:0", "has a bad host or port");
    bad("http://h:65536", "has a bad host or port");
    bad("http://h:-1", "has a bad host or port");
    bad("http://h:80x", "has a bad host or port");
    bad("http://h:8:8", "has a bad host or port");
    bad("http://h_1:80", "has a bad host");
    bad("http://user@h:80", "has a bad host");
    bad("http://[fe80::1%eth0]:80", "has a bad host");
    return check_done();
}
