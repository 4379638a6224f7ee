/* Unit tests of gateway/store/backend_geo.c and base/geoip.c: database errors, lookups in the
 * site database the build makes (SITE_MMDB, when given), the connect-time check and the counted
 * backend states. */
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "base/geoip.h"
#include "store/backend_geo.h"

static void test_open_errors(void)
{
    char err[512];
    size_t bad = 99;
    const char *paths[] = {"/nonexistent/site.mmdb"};
    gw_geoip_t *g = gw_geoip_open(paths, 1, &bad, err, sizeof(err));
    CHECK(!g && bad == 0 && strstr(err, "cannot load the database /nonexistent/site.mmdb"), "%s",
          err);
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
            CHECK(rc == GW_GEOIP_FOUND && strcmp(cc, cases[i].want) == 0 && src &&
                      strcmp(src, db) == 0,
                  "%s: rc %d cc %s", cases[i].ip, rc, cc);
        else
            CHECK(rc == GW_GEOIP_UNKNOWN && cc[0] == '\0', "%s: rc %d cc %s", cases[i].ip, rc, cc);
    }
    gw_geoip_close(g);
}

/* A state as verify() makes it: approved, addresses in these countries. */
static gw_resolved_t *state(int approved, const char *const *cc, size_t n)
{
    gw_resolved_t *rs = calloc(1, sizeof(*rs));
    rs->addrs = calloc(n, sizeof(*rs->addrs));
    rs->n = n;
    rs->approved = approved;
    atomic_init(&rs->refs, 1);
    for (size_t i = 0; i < n; i++) memcpy(rs->addrs[i].country, cc[i], 3);
    return rs;
}

static void test_connect_check(void)
{
    int policy; /* only "there is a policy" matters here */
    gw_config_t cfg = {0};
    cfg.residency = (gw_residency_t *)&policy;
    gw_geo_ask_t r = {0};
    r.cfg = &cfg;
    gw_backend_t b = {0};
    b.country = "CH";
    const char *ch[] = {"CH"}, *ch_de[] = {"CH", "DE"}, *li[] = {"LI"};
    gw_resolved_t *home = state(1, ch, 1), *mixed = state(1, ch_de, 2),
                  *refused = state(0, ch_de, 2), *liech = state(1, li, 1);
    CHECK(!gw_residency_connect_check(&r, &b, home), "approved, no tenant policy");
    CHECK(!gw_residency_connect_check(&r, &b, mixed),
          "globally approved CH,DE without a tenant policy");
    const char *why = gw_residency_connect_check(&r, &b, refused);
    CHECK(why && strcmp(why, "backend_not_approved") == 0, "the global verdict: %s",
          why ? why : "-");
    why = gw_residency_connect_check(&r, &b, NULL);
    CHECK(why && strcmp(why, "backend_not_approved") == 0, "no state: refused");
    /* a tenant narrowed to CH: every address, and the declared country, must be in CH */
    char narrow[2][3] = {"CH", "LI"};
    r.narrow = narrow;
    r.nnarrow = 1;
    CHECK(!gw_residency_connect_check(&r, &b, home), "CH for a CH tenant");
    why = gw_residency_connect_check(&r, &b, mixed);
    CHECK(why && strcmp(why, "backend_not_approved_for_tenant") == 0, "a DE address: %s",
          why ? why : "-");
    why = gw_residency_connect_check(&r, &b, liech);
    CHECK(why && strcmp(why, "backend_not_approved_for_tenant") == 0, "an LI address for CH only");
    r.nnarrow = 2;
    CHECK(!gw_residency_connect_check(&r, &b, liech), "LI for a CH,LI tenant");
    b.country = "LI";
    r.nnarrow = 1;
    why = gw_residency_connect_check(&r, &b, home);
    CHECK(why && strcmp(why, "backend_not_approved_for_tenant") == 0,
          "declared LI for a CH tenant");
    r.nnarrow = 0;
    b.country = "CH";
    CHECK(gw_residency_connect_check(&r, &b, home) != NULL,
          "a tenant policy of no country allows none");
    /* without a policy, any resolved backend */
    cfg.residency = NULL;
    CHECK(!gw_residency_connect_check(&r, &b, refused), "no policy");
    gw_resolved_release(home);
    gw_resolved_release(mixed);
    gw_resolved_release(refused);
    gw_resolved_release(liech);
}

/* A hold keeps a state alive after the backend lets go of it; the last release frees it
 * (ASan reports a leak or a use after free otherwise). */
static void test_hold_release(void)
{
    const char *ch[] = {"CH"};
    gw_resolved_t *rs = state(1, ch, 1);
    gw_backend_t b = {0};
    atomic_init(&b.res, rs);
    const gw_resolved_t *h1 = gw_backend_hold(&b), *h2 = gw_backend_hold(&b);
    CHECK(h1 == rs && h2 == rs && atomic_load(&rs->refs) == 3, "two holds and the backend's");
    atomic_store(&b.res, NULL); /* replaced: the backend's reference goes */
    gw_resolved_release(rs);
    CHECK(strcmp(h1->addrs[0].country, "CH") == 0 && atomic_load(&rs->refs) == 2, "still held");
    gw_resolved_release(h1);
    gw_resolved_release(h2); /* freed here */
    CHECK(gw_backend_hold(&b) == NULL, "an unresolved backend: NULL");
    gw_resolved_release(NULL);
}

/* The database in use is the bytes read at open: the file truncated or rewritten in place
 * changes no lookup (and does not fault), and the digest is of those bytes. */
static void test_database_copied_at_open(void)
{
    const char *db = getenv("SITE_MMDB");
    if (!db) {
        printf("SITE_MMDB not set: copy test skipped\n");
        return;
    }
    char path[] = "/tmp/gw-test-mmdb-XXXXXX";
    int fd = mkstemp(path);
    FILE *in = fopen(db, "rb");
    CHECK(fd >= 0 && in, "copy");
    char buf[65536];
    for (size_t k; in && (k = fread(buf, 1, sizeof(buf), in)) > 0;)
        CHECK(write(fd, buf, k) == (ssize_t)k, "write");
    if (in) fclose(in);
    char err[512], cc[3];
    size_t bad;
    const char *paths[] = {path};
    gw_geoip_t *g = gw_geoip_open(paths, 1, &bad, err, sizeof(err));
    CHECK(g != NULL, "open: %s", err);
    if (!g) return;
    CHECK(gw_geoip_sha256(g, 0) != NULL, "a SHA-256 of the database");
    CHECK(ftruncate(fd, 0) == 0, "truncate");
    close(fd);
    struct sockaddr_in s4 = {.sin_family = AF_INET};
    inet_pton(AF_INET, "127.0.0.2", &s4.sin_addr);
    int rc = gw_geoip_lookup(g, (struct sockaddr *)&s4, cc, NULL, err, sizeof(err));
    CHECK(rc == GW_GEOIP_FOUND && strcmp(cc, "DE") == 0, "after truncation: rc %d cc %s", rc, cc);
    gw_geoip_close(g);
    unlink(path);
}

int main(void)
{
    test_database_copied_at_open();
    test_connect_check();
    test_hold_release();
    test_open_errors();
    test_lookups();
    return check_done();
}
