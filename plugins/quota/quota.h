/* The quota plugin's usage report, for the admin GET /usage (the core links it in). */
#ifndef GW_QUOTA_H
#define GW_QUOTA_H

#include <gotthard/plugin.h>

extern const gw_plugin_t gw_plugin_quota;

/* Usage per tenant and UTC day, the last `days` days (today first), as a new JSON object:
 * {"store": "redis"|"process", "days": [{"date", "tenants": {id: {requests, prompt_tokens,
 * completion_tokens}}}]}. With Redis the counts are every instance's, read with a blocking
 * connection (call it off the workers' loops); when Redis does not answer, this process's own
 * counts, with "error". Every reply must be in by gw_quota_usage_deadline_ms from the call,
 * however slowly the server sends: else *late is set (and "error"). NULL when out of memory. */
cJSON *gw_quota_usage_report(const void *state, int days, int *late);
/* The whole report's deadline: 4 x redis.timeout_ms, at least 1 s, at most 10 s. */
int gw_quota_usage_deadline_ms(const void *state);

/* The tokens a request reserves at admission: its body's bytes / 4, plus max_completion_tokens
 * (else max_tokens) when a count below 1e9, else 256; only the bytes / 4 for embeddings. At
 * least 1. json is the request body (may be NULL). */
int64_t gw_quota_estimate_tokens(size_t body_len, const cJSON *json, int embeddings);

/* The calling worker stops: its pending usage counts go to Redis now (the core then gives its
 * connection a moment to deliver them) and its flush timer is freed. On the worker's thread,
 * before its event base is freed. */
void gw_quota_worker_stop(void);

#endif
