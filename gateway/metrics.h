/* Metrics: counters kept with relaxed atomics, shown in Prometheus text on /metrics. */
#ifndef GW_METRICS_H
#define GW_METRICS_H

#include <event2/buffer.h>

#include "gotthard/plugin.h" /* gw_metrics_ratelimited */

/* A failed authentication, by reason (an unknown reason counts as "other"). */
void gw_metrics_auth_failure(const char *reason);
/* Appends the exposition of every metric. */
void gw_metrics_render(struct evbuffer *out);

#endif
