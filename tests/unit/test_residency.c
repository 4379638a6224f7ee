/* Unit tests of gateway/residency.c and gateway/geoip.c: the hosts-file resolver, database errors,
 * and lookups in the site database the build makes (SITE_MMDB, when given). */
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "geoip.h"
#include "residency.h"

static const char *addr_text(const struct sockaddr_storage *ss, char *buf, size_t cap)
{
    const void *raw = ss->ss_family == AF_INET ? (const void *)&((const struct sockaddr_in *)ss)->sin_addr
                                               : (const void *)&((const struct sockaddr_in6 *)ss)->sin6_addr;
    return inet_ntop(ss->ss_family, raw, buf, (socklen_t)cap);
}

static void test_hosts_file(void)
{
    char path[] = "/tmp/gw-test-hosts-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0, "mkstemp");
    const char *text = "# comment\n"
                       "127.0.0.1   llm.test alias.test   # trailing comment\n"
                       "\n"
                       "127.0.0.2 other.test\n"
                       "::1 llm.test\n"
                       "127.0.0.1 llm.test\n" /* a duplicate: once */
                       "not-an-address llm.test\n";
    CHECK(write(fd, text, strlen(text)) == (ssize_t)strlen(text), "write");
    close(fd);
    struct sockaddr_storage *v;
    size_t n;
    char err[256], buf[64];
    int rc = gw_resolve_host("LLM.test", "8000", path, &v, &n, err, sizeof(err));
    CHECK(rc == 2 && n == 2, "two distinct addresses, got %d (%s)", rc, rc < 0 ? err : "");
    if (rc == 2) {
        CHECK(strcmp(addr_text(&v[0], buf, sizeof(buf)), "127.0.0.1") == 0, "first %s", buf);
        CHECK(ntohs(((struct sockaddr_in *)&v[0])->sin_port) == 8000, "port");
        CHECK(strcmp(addr_text(&v[1], buf, sizeof(buf)), "::1") == 0, "second %s", buf);
        CHECK(ntohs(((struct sockaddr_in6 *)&v[1])->sin6_port) == 8000, "v6 port");
    }
    free(v);
    rc = gw_resolve_host("alias.test", "1", path, &v, &n, err, sizeof(err));
    CHECK(rc == 1, "an alias resolves");
    free(v);
    /* not in the file: the system resolver (a numeric host needs no DNS) */
    rc = gw_resolve_host("127.0.0.9", "80", path, &v, &n, err, sizeof(err));
    CHECK(rc == 1 && strcmp(addr_text(&v[0], buf, sizeof(buf)), "127.0.0.9") == 0, "fallback");
    free(v);
    unlink(path);
    rc = gw_resolve_host("llm.test", "80", path, &v, &n, err, sizeof(err));
    CHECK(rc < 0 && strstr(err, "cannot read the hosts file"), "a missing hosts file is an error: %s", err);
}

static void test_open_errors(void)
{
    char err[512];
    size_t bad = 99;
    const char *paths[] = {"/nonexistent/site.mmdb"};
    gw_geoip_t *g = gw_geoip_open(paths, 1, &bad, err, sizeof(err));
    CHECK(!g && bad == 0 && strstr(err, "cannot load the database /nonexistent/site.mmdb"), "%s", err);
    char junk[] = "/tmp/gw-test-mmdb-XXXXXX";
    int fd = mkstemp(junk);
    CHECK(fd >= 0 && write(fd, "not a database", 14) == 14, "junk");
    close(fd);
    const char *db = getenv("SITE_MMDB");
    if (db) {
        const char *two[] = {db, junk};
        g = gw_geoip_open(two, 2, &bad, err, sizeof(err));
        CHECK(!g && bad == 1 && strstr(err, junk), "the second database is named: %s", err);
    }
    unlink(junk);
}

static void test_lookups(void)
{
    const char *db = getenv("SITE_MMDB");
    if (!db) {
        printf("SITE_MMDB not set: lookups skipped\n");
        return;
    }
    char err[512], cc[3];
    size_t bad;
    const char *paths[] = {db};
    gw_geoip_t *g = gw_geoip_open(paths, 1, &bad, err, sizeof(err));
    CHECK(g != NULL, "open %s: %s", db, err);
    if (!g) return;
    struct {
        const char *ip, *want;
    } cases[] = {{"127.0.0.1", "CH"}, {"127.0.0.2", "DE"}, {"127.0.0.200", "CH"},
                 {"127.0.1.1", ""},   {"::1", "CH"},       {"10.0.0.1", ""}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct sockaddr_storage ss = {0};
        if (strchr(cases[i].ip, ':')) {
            struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
            s6->sin6_family = AF_INET6;
            inet_pton(AF_INET6, cases[i].ip, &s6->sin6_addr);
        } else {
            struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
            s4->sin_family = AF_INET;
            inet_pton(AF_INET, cases[i].ip, &s4->sin_addr);
        }
        const char *src = NULL;
        int rc = gw_geoip_lookup(g, (struct sockaddr *)&ss, cc, &src, err, sizeof(err));
        if (cases[i].want[0])
            CHECK(rc == GW_GEOIP_FOUND && strcmp(cc, cases[i].want) == 0 && src && strcmp(src, db) == 0,
                  "%s: rc %d cc %s", cases[i].ip, rc, cc);
        else CHECK(rc == GW_GEOIP_UNKNOWN && cc[0] == '\0', "%s: rc %d cc %s", cases[i].ip, rc, cc);
    }
    gw_geoip_close(g);
}

int main(void)
{
    test_hosts_file();
    test_open_errors();
    test_lookups();
    return check_done();
}
