/* Unit tests of gateway/store/resolver.c: the hosts-file resolver, address comparison, and what a
 * refresh and the resolver thread hand to their callbacks (names from a hosts file: no DNS is
 * asked). */
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "store/resolver.h"

static const char *addr_text(const struct sockaddr_storage *ss, char *buf, size_t cap)
{
    const void *raw = ss->ss_family == AF_INET
                          ? (const void *)&((const struct sockaddr_in *)ss)->sin_addr
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
    CHECK(rc < 0 && strstr(err, "cannot read the hosts file"),
          "a missing hosts file is an error: %s", err);
}

/* More addresses than a state keeps: GW_MAX_ADDRS + 1 of them come back, so that the backend is
 * refused (never approved on the first GW_MAX_ADDRS while the others go unverified). */
static void test_too_many_addresses(void)
{
    char path[] = "/tmp/gw-test-hosts-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0, "mkstemp");
    FILE *f = fdopen(fd, "w");
    for (int i = 1; i <= GW_MAX_ADDRS + 6; i++) fprintf(f, "127.0.3.%d many.test\n", i);
    fclose(f);
    struct sockaddr_storage *v;
    size_t n;
    char err[256];
    int rc = gw_resolve_host("many.test", "80", path, &v, &n, err, sizeof(err));
    CHECK(rc == GW_MAX_ADDRS + 1 && n == GW_MAX_ADDRS + 1, "more than the limit is told: %d", rc);
    if (rc > 0) free(v);
    unlink(path);
}

static struct {
    const gw_backend_t *b[8];
    size_t n[8];
    struct sockaddr_storage first[8];
    size_t calls;
    gw_config_t *serving[8];
    size_t nserving;
} seen;

static void on_resolved(const gw_config_t *c, gw_backend_t *b, const struct sockaddr_storage *v,
                        size_t n)
{
    (void)c;
    if (seen.calls < 8) {
        seen.b[seen.calls] = b;
        seen.n[seen.calls] = n;
        seen.first[seen.calls] = v[0];
    }
    seen.calls++;
}

static void on_serving(gw_config_t *c)
{
    if (seen.nserving < 8) seen.serving[seen.nserving] = c;
    seen.nserving++;
}

static const gw_resolver_cbs_t cbs = {on_resolved, on_serving};

static struct sockaddr_storage v4(const char *addr, int port)
{
    struct sockaddr_storage ss = {0};
    struct sockaddr_in *s = (struct sockaddr_in *)&ss;
    s->sin_family = AF_INET;
    s->sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, addr, &s->sin_addr);
    return ss;
}

static void test_addr_same(void)
{
    struct sockaddr_storage a = v4("127.0.0.1", 80), b = v4("127.0.0.1", 80);
    struct sockaddr_storage other_port = v4("127.0.0.1", 81), other = v4("127.0.0.2", 80);
    struct sockaddr_storage six = {0};
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&six;
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons(80);
    inet_pton(AF_INET6, "::1", &s6->sin6_addr);
    CHECK(gw_addr_same(&a, &b), "equal");
    CHECK(!gw_addr_same(&a, &other_port), "another port");
    CHECK(!gw_addr_same(&a, &other), "another address");
    CHECK(!gw_addr_same(&a, &six) && gw_addr_same(&six, &six), "families");
}

/* A config of two backends, by hand: only what the resolver reads. */
typedef struct fixture {
    gw_config_t c;
    gw_backend_t b[2];
    gw_backend_t *bs[2];
} fixture_t;

static void fixture_init(fixture_t *f, const char *hosts_file)
{
    memset(f, 0, sizeof(*f));
    f->b[0].host = "a.test";
    f->b[0].port = "8000";
    f->b[0].name = "a.test:8000";
    f->b[1].host = "b.test";
    f->b[1].port = "80";
    f->b[1].name = "b.test:80";
    f->bs[0] = &f->b[0];
    f->bs[1] = &f->b[1];
    f->c.backends = f->bs;
    f->c.nbackends = 2;
    f->c.resolver.hosts_file = (char *)hosts_file;
    f->c.resolver.refresh_ms = 3600000; /* the thread never runs a pass in this test */
    atomic_init(&f->c.refs, 100);       /* never freed: not an arena's */
}

static void test_refresh(const char *hosts)
{
    fixture_t f;
    fixture_init(&f, hosts);
    memset(&seen, 0, sizeof(seen));
    gw_resolver_refresh(&f.c, &cbs);
    CHECK(seen.calls == 2, "one call per backend: %zu", seen.calls);
    CHECK(seen.b[0] == &f.b[0] && seen.n[0] == 2, "a.test: two addresses (%zu)", seen.n[0]);
    struct sockaddr_storage want = v4("127.0.0.1", 8000);
    CHECK(gw_addr_same(&seen.first[0], &want), "a.test: 127.0.0.1 port 8000 first");
    CHECK(seen.b[1] == &f.b[1] && seen.n[1] == 1, "b.test: one address (%zu)", seen.n[1]);
    want = v4("127.0.0.3", 80);
    CHECK(gw_addr_same(&seen.first[1], &want), "b.test: 127.0.0.3 port 80");
    CHECK(seen.nserving == 0, "a pass names no snapshot served");

    /* Nothing resolves (the hosts file is gone): nothing is handed over, the old stays. */
    fixture_init(&f, "/nonexistent/hosts");
    memset(&seen, 0, sizeof(seen));
    gw_resolver_refresh(&f.c, &cbs);
    CHECK(seen.calls == 0, "no addresses, no call: %zu", seen.calls);
}

static void test_thread_tells_serving(const char *hosts)
{
    fixture_t f, g;
    fixture_init(&f, hosts);
    fixture_init(&g, hosts);
    memset(&seen, 0, sizeof(seen));
    CHECK(gw_resolver_start(&f.c, &cbs) == 0, "started");
    gw_resolver_set_config(&g.c);
    gw_resolver_stop();
    CHECK(seen.nserving == 3, "start, reload, stop: %zu", seen.nserving);
    CHECK(seen.serving[0] == &f.c && seen.serving[1] == &g.c && seen.serving[2] == NULL,
          "in order: the first snapshot, the new one, none");
    CHECK(atomic_load(&f.c.refs) == 100 && atomic_load(&g.c.refs) == 100,
          "every reference taken is given back");
}

int main(void)
{
    char path[] = "/tmp/gw-test-resolver-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0, "mkstemp");
    const char *text = "127.0.0.1 a.test\n::1 a.test # and v6\n127.0.0.3 b.test\n";
    CHECK(write(fd, text, strlen(text)) == (ssize_t)strlen(text), "write");
    close(fd);
    test_hosts_file();
    test_too_many_addresses();
    test_addr_same();
    test_refresh(path);
    test_thread_tells_serving(path);
    unlink(path);
    return check_done();
}
