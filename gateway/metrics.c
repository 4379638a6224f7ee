/* Metrics: counters kept with relaxed atomics, shown in Prometheus text on /metrics. */
#include "metrics.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* Label values come from this fixed list only, never from a request. */
static const char *const auth_reasons[] = {
    "no_credentials", "unknown_key", "unknown_tenant", "revoked_key", "key_store_unavailable",
    "jwt_malformed", "jwt_alg", "jwt_signature", "jwt_expired", "jwt_not_yet_valid",
    "jwt_issuer", "jwt_audience", "jwt_tenant", "other", NULL};
#define N_AUTH_REASONS (sizeof(auth_reasons) / sizeof(auth_reasons[0]) - 1)
static atomic_ulong auth_failures[N_AUTH_REASONS];

void gw_metrics_auth_failure(const char *reason)
{
    size_t i = 0;
    while (auth_reasons[i] && (!reason || strcmp(auth_reasons[i], reason) != 0)) i++;
    if (!auth_reasons[i]) i = N_AUTH_REASONS - 1; /* "other" */
    atomic_fetch_add_explicit(&auth_failures[i], 1, memory_order_relaxed);
}

/* Refusals by quota are rare: a small table under a lock. Tenant ids come from the config
 * (letters, digits, '-', '_', '.'), kinds from a fixed list; the table is bounded. */
#define MAX_RATELIMITED 4096
typedef struct rl_entry {
    char *tenant;
    const char *kind;
    unsigned long count;
} rl_entry_t;
static rl_entry_t rl_table[MAX_RATELIMITED];
static size_t rl_n;
static pthread_mutex_t rl_lock = PTHREAD_MUTEX_INITIALIZER;

void gw_metrics_ratelimited(const char *tenant, const char *kind)
{
    static const char *const kinds[] = {"requests", "tokens", "tokens_per_day", "concurrency", NULL};
    size_t k = 0;
    while (kinds[k] && (!kind || strcmp(kinds[k], kind) != 0)) k++;
    if (!kinds[k] || !tenant) return;
    pthread_mutex_lock(&rl_lock);
    size_t i = 0;
    while (i < rl_n && !(rl_table[i].kind == kinds[k] && strcmp(rl_table[i].tenant, tenant) == 0)) i++;
    if (i == rl_n && rl_n < MAX_RATELIMITED && (rl_table[i].tenant = strdup(tenant))) {
        rl_table[i].kind = kinds[k];
        rl_n++;
    }
    if (i < rl_n) rl_table[i].count++;
    pthread_mutex_unlock(&rl_lock);
}

/* Residency blocks, by pool and backend (names from the config). Hit on the request path
 * whenever a backend is kept out, so lookups take no lock: entries are appended under the
 * lock and published by the count; they are never removed (bounded). */
#define MAX_RESIDENCY_ENTRIES 4096
typedef struct rb_entry {
    char *pool, *backend;
    atomic_ulong count;
} rb_entry_t;
static rb_entry_t rb_table[MAX_RESIDENCY_ENTRIES];
static atomic_size_t rb_n;
static pthread_mutex_t rb_lock = PTHREAD_MUTEX_INITIALIZER;

static rb_entry_t *rb_find(const char *pool, const char *backend, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(rb_table[i].backend, backend) == 0 && strcmp(rb_table[i].pool, pool) == 0)
            return &rb_table[i];
    return NULL;
}

void gw_metrics_residency_blocked(const char *pool, const char *backend)
{
    if (!pool || !backend) return;
    rb_entry_t *e = rb_find(pool, backend, atomic_load_explicit(&rb_n, memory_order_acquire));
    if (!e) {
        pthread_mutex_lock(&rb_lock);
        size_t n = atomic_load_explicit(&rb_n, memory_order_relaxed);
        e = rb_find(pool, backend, n);
        if (!e && n < MAX_RESIDENCY_ENTRIES && (rb_table[n].pool = strdup(pool)) &&
            (rb_table[n].backend = strdup(backend))) {
            e = &rb_table[n];
            atomic_store_explicit(&rb_n, n + 1, memory_order_release);
        }
        pthread_mutex_unlock(&rb_lock);
        if (!e) return;
    }
    atomic_fetch_add_explicit(&e->count, 1, memory_order_relaxed);
}

static void render_residency(struct evbuffer *out)
{
    evbuffer_add_printf(out, "# HELP gotthard_residency_blocked_total Requests and connections the "
                             "residency policy kept from a backend.\n"
                             "# TYPE gotthard_residency_blocked_total counter\n");
    size_t n = atomic_load_explicit(&rb_n, memory_order_acquire);
    for (size_t i = 0; i < n; i++) {
        /* Pool names are free text in the config: escape them as Prometheus label values. */
        char pool[2 * 128 + 1], *q = pool;
        for (const char *p = rb_table[i].pool; *p && q < pool + sizeof(pool) - 2; p++) {
            if (*p == '"' || *p == '\\') *q++ = '\\';
            *q++ = *p == '\n' ? ' ' : *p;
        }
        *q = '\0';
        evbuffer_add_printf(out, "gotthard_residency_blocked_total{pool=\"%s\",backend=\"%s\"} %lu\n",
                            pool, rb_table[i].backend,
                            atomic_load_explicit(&rb_table[i].count, memory_order_relaxed));
    }
}

void gw_metrics_render(struct evbuffer *out)
{
    render_residency(out);
    evbuffer_add_printf(out, "# HELP gotthard_ratelimited_total Requests refused by a quota.\n"
                             "# TYPE gotthard_ratelimited_total counter\n");
    pthread_mutex_lock(&rl_lock);
    for (size_t i = 0; i < rl_n; i++)
        evbuffer_add_printf(out, "gotthard_ratelimited_total{tenant=\"%s\",kind=\"%s\"} %lu\n",
                            rl_table[i].tenant, rl_table[i].kind, rl_table[i].count);
    pthread_mutex_unlock(&rl_lock);
    evbuffer_add_printf(out, "# HELP gotthard_auth_failures_total Requests refused with 401, by reason.\n"
                             "# TYPE gotthard_auth_failures_total counter\n");
    for (size_t i = 0; i < N_AUTH_REASONS; i++)
        evbuffer_add_printf(out, "gotthard_auth_failures_total{reason=\"%s\"} %lu\n", auth_reasons[i],
                            atomic_load_explicit(&auth_failures[i], memory_order_relaxed));
}
