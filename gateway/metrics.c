/* Metrics: counters kept with relaxed atomics, shown in Prometheus text on /metrics. */
#include "metrics.h"

#include <stdatomic.h>
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

void gw_metrics_render(struct evbuffer *out)
{
    evbuffer_add_printf(out, "# HELP gotthard_auth_failures_total Requests refused with 401, by reason.\n"
                             "# TYPE gotthard_auth_failures_total counter\n");
    for (size_t i = 0; i < N_AUTH_REASONS; i++)
        evbuffer_add_printf(out, "gotthard_auth_failures_total{reason=\"%s\"} %lu\n", auth_reasons[i],
                            atomic_load_explicit(&auth_failures[i], memory_order_relaxed));
}
