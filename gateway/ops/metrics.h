/* Metrics: per-thread counters summed at scrape time, shown in Prometheus text on /metrics. */
#ifndef GW_METRICS_H
#define GW_METRICS_H

#include <event2/buffer.h>

#include "config/config.h"
#include "gotthard/plugin.h" /* gw_metrics_ratelimited, gw_metrics_residency_blocked */

/* Label values for what is not a name from the config. */
#define GW_METRICS_UNKNOWN_MODEL "<unknown>" /* a model the config does not know */
#define GW_METRICS_NONE "<none>"             /* no tenant, or no model in the request */

/* A finished request (a logger of the log phase, gw_req_add_logger: called once, on the worker
 * that ran it): requests
 * by tenant, model and status, tokens, duration and time to first token, refusals by code.
 * No lock and no allocation once the thread has seen this tenant and model. */
void gw_metrics_request(const gw_req_t *r);
/* A reload (SIGHUP or POST /reload): accepted (ok 1) or refused. */
void gw_metrics_reload(int ok);
void gw_metrics_reloads(unsigned long *ok, unsigned long *refused);
/* Appends the exposition of every metric; cfg is the snapshot in force (backends). */
void gw_metrics_render(struct evbuffer *out, const gw_config_t *cfg);
/* Appends s as a Prometheus label value, escaped (\\, \", \n). */
void gw_metrics_put_label(struct evbuffer *out, const char *s);
/* A backend may be sent requests: residency approves it (or there is no policy) and its
 * health says so. */
int gw_metrics_backend_up(const gw_config_t *cfg, const gw_backend_t *b);

#endif
