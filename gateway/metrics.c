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

void gw_metrics_render(struct evbuffer *out)
{
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
