/* The vLLM metrics queue_aware balances on, read from a backend's Prometheus text exposition. */
#ifndef GW_VLLM_METRICS_H
#define GW_VLLM_METRICS_H

#include <stddef.h>

/* Which of the samples a page had, as the bits of gw_vllm_metrics_parse's answer. */
enum { GW_VLLM_WAITING = 1, GW_VLLM_RUNNING = 2, GW_VLLM_CACHE = 4 };

/* Sums (waiting, running) and takes the largest cache usage (per mille) of a vLLM-style
 * Prometheus text (len bytes, no NUL needed). Returns the GW_VLLM_* bits of the samples found
 * at least once: a page without one reads as 0 for it, which is not the same as a 0 sample. */
int gw_vllm_metrics_parse(const char *text, size_t len, int *waiting, int *running, int *cache_pm);

#endif
