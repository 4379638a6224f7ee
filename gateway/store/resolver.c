/* The resolver: backend host names to addresses (resolver.hosts_file first, then DNS), and the
 * thread that resolves every backend again each resolver.refresh_ms and hands what it finds to
 * the verdicts (gw_resolver_cbs_t: store/backend_geo.c), which judge and publish it. */
#include "store/resolver.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "base/log.h"

#define MAX_ADDRS GW_MAX_ADDRS

int gw_addr_same(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family) return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
        return x->sin6_port == y->sin6_port &&
               memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
    }
    return 0;
}

/* ---------------------------------------------------------------- resolution */

static int add_addr(struct sockaddr_storage *v, size_t *n, const struct sockaddr *sa, socklen_t len)
{
    if ((sa->sa_family != AF_INET && sa->sa_family != AF_INET6) || len > sizeof(*v)) return 0;
    struct sockaddr_storage ss = {0};
    memcpy(&ss, sa, len);
    for (size_t i = 0; i < *n; i++)
        if (gw_addr_same(&v[i], &ss)) return 0;
    /* One past the limit is kept to say so: such a backend is refused (verify), never judged on
     * its first MAX_ADDRS addresses alone. */
    if (*n > MAX_ADDRS) return 0;
    v[(*n)++] = ss;
    return 0;
}

/* Lines "address name [alias...]" as in /etc/hosts; '#' starts a comment. */
static int from_hosts_file(const char *file, const char *host, int port, struct sockaddr_storage *v,
                           size_t *n, char *err, size_t errlen)
{
    FILE *f = fopen(file, "r");
    if (!f) {
        snprintf(err, errlen, "cannot read the hosts file %s: %s", file, strerror(errno));
        return -1;
    }
    char line[1024];
    while (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "#\r\n")] = '\0';
        char *save = NULL, *addr = strtok_r(line, " \t", &save);
        if (!addr) continue;
        int match = 0;
        for (char *name; (name = strtok_r(NULL, " \t", &save));)
            match |= strcasecmp(name, host) == 0;
        if (!match) continue;
        struct sockaddr_in v4 = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        struct sockaddr_in6 v6 = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port)};
        if (inet_pton(AF_INET, addr, &v4.sin_addr) == 1)
            add_addr(v, n, (struct sockaddr *)&v4, sizeof(v4));
        else if (inet_pton(AF_INET6, addr, &v6.sin6_addr) == 1)
            add_addr(v, n, (struct sockaddr *)&v6, sizeof(v6));
    }
    fclose(f);
    return 0;
}

int gw_resolve_host(const char *host, const char *port, const char *hosts_file,
                    struct sockaddr_storage **out, size_t *n, char *err, size_t errlen)
{
    *out = NULL;
    *n = 0;
    struct sockaddr_storage *v = calloc(MAX_ADDRS + 1, sizeof(*v));
    if (!v) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (hosts_file && from_hosts_file(hosts_file, host, atoi(port), v, n, err, errlen) < 0) {
        free(v);
        return -1;
    }
    if (*n == 0) {
        struct addrinfo hints = {
            .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
        struct addrinfo *res;
        int rc = getaddrinfo(host, port, &hints, &res);
        if (rc != 0) {
            snprintf(err, errlen, "cannot be resolved: %s", gai_strerror(rc));
            free(v);
            return -1;
        }
        for (struct addrinfo *a = res; a; a = a->ai_next) add_addr(v, n, a->ai_addr, a->ai_addrlen);
        freeaddrinfo(res);
    }
    if (*n == 0) {
        snprintf(err, errlen, "cannot be resolved: no address");
        free(v);
        return -1;
    }
    *out = v;
    return (int)*n;
}

/* ---------------------------------------------------------------- the resolver thread */

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t th;
    gw_config_t *cfg;
    const gw_resolver_cbs_t *cbs; /* from gw_resolver_start */
    int running, stop;
} R = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER};

void gw_resolver_refresh(gw_config_t *c, const gw_resolver_cbs_t *cbs)
{
    for (size_t i = 0; i < c->nbackends; i++) {
        gw_backend_t *b = c->backends[i];
        struct sockaddr_storage *v;
        size_t n;
        char err[512];
        if (gw_resolve_host(b->host, b->port, c->resolver.hosts_file, &v, &n, err, sizeof(err)) <
            0) {
            /* Nothing new to connect to: the verified addresses stay (they are still checked). */
            gw_warn("backend %s: %s; keeping its verified addresses", b->name, err);
            continue;
        }
        cbs->resolved(c, b, v, n);
        free(v);
    }
}

static void *resolver_main(void *arg)
{
    pthread_mutex_lock(&R.mu);
    while (!R.stop) {
        int64_t ms = R.cfg->resolver.refresh_ms;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += ms / 1000;
        ts.tv_nsec += (ms % 1000) * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        gw_config_t *before = R.cfg;
        int rc = 0;
        while (!R.stop && R.cfg == before && rc != ETIMEDOUT)
            rc = pthread_cond_timedwait(&R.cv, &R.mu, &ts);
        if (R.stop || R.cfg != before) continue; /* a new snapshot was resolved just now */
        gw_config_t *c = gw_config_ref(R.cfg);
        pthread_mutex_unlock(&R.mu);
        gw_resolver_refresh(c, R.cbs);
        gw_config_unref(c);
        pthread_mutex_lock(&R.mu);
    }
    pthread_mutex_unlock(&R.mu);
    gw_arena_thread_cleanup(); /* a snapshot it released last may have left blocks here */
    return NULL;
}

/* The snapshot served now, to the verdicts (they hold requests admitted under an older one to
 * it at connect). */
static void serving(gw_config_t *c)
{
    if (R.cbs) R.cbs->serving(c);
}

int gw_resolver_start(gw_config_t *c, const gw_resolver_cbs_t *cbs)
{
    R.cbs = cbs;
    serving(c);
    pthread_mutex_lock(&R.mu);
    R.cfg = gw_config_ref(c);
    R.stop = 0;
    int rc = pthread_create(&R.th, NULL, resolver_main, NULL);
    R.running = rc == 0;
    if (rc != 0) {
        gw_config_unref(R.cfg);
        R.cfg = NULL;
    }
    pthread_mutex_unlock(&R.mu);
    return rc == 0 ? 0 : -1;
}

void gw_resolver_set_config(gw_config_t *c)
{
    serving(c);
    pthread_mutex_lock(&R.mu);
    if (R.running) {
        gw_config_t *old = R.cfg;
        R.cfg = gw_config_ref(c);
        pthread_cond_signal(&R.cv);
        pthread_mutex_unlock(&R.mu);
        gw_config_unref(old);
        return;
    }
    pthread_mutex_unlock(&R.mu);
}

void gw_resolver_stop(void)
{
    serving(NULL);
    pthread_mutex_lock(&R.mu);
    if (!R.running) {
        pthread_mutex_unlock(&R.mu);
        return;
    }
    R.stop = 1;
    pthread_cond_signal(&R.cv);
    pthread_mutex_unlock(&R.mu);
    pthread_join(R.th, NULL);
    pthread_mutex_lock(&R.mu);
    R.running = 0;
    gw_config_t *c = R.cfg;
    R.cfg = NULL;
    pthread_mutex_unlock(&R.mu);
    gw_config_unref(c);
}
