/* The vLLM metrics queue_aware balances on, read from a backend's Prometheus text exposition. */
#ifndef GW_VLLM_METRICS_H
#define GW_VLLM_METRICS_H

#include <stddef.h>

/* Sums (waiting, running) and takes the largest cache usage (per mille) of a vLLM-style
 * Prometheus text (len bytes, no NUL needed). Returns the number of those samples found. */
int gw_vllm_metrics_parse(const char *text, size_t len, int *waiting, int *running,
                          int *cache_pm);

#endif
