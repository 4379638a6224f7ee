/* The vLLM metrics queue_aware balances on, read from a backend's Prometheus text exposition. */
#include "vllm_metrics.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

int gw_vllm_metrics_parse(const char *text, size_t len, int *waiting, int *running,
                          int *cache_pm)
{
    int found = 0;
    double w = 0, r = 0, c = 0;
    const char *p = text, *end = text + len;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol) eol = end;
        size_t n = (size_t)(eol - p);
        if (n && p[0] != '#') {
            const char *val = p + n;
            while (val > p && val[-1] != ' ' && val[-1] != '\t') val--; /* the last field */
            char num[64];
            size_t vn = (size_t)(p + n - val);
            double v = 0;
            int have = 0;
            if (vn && vn < sizeof(num)) {
                memcpy(num, val, vn);
                num[vn] = '\0';
                char *e;
                v = strtod(num, &e);
                have = e != num && (*e == '\0' || *e == '\r');
            }
#define IS(name) (n > sizeof(name) - 1 && memcmp(p, name, sizeof(name) - 1) == 0 && \
                  (p[sizeof(name) - 1] == '{' || p[sizeof(name) - 1] == ' ' ||          \
                   p[sizeof(name) - 1] == '\t'))
            if (have && v >= 0 && v < 1e9) {
                if (IS("vllm:num_requests_waiting")) w += v, found |= GW_VLLM_WAITING;
                else if (IS("vllm:num_requests_running")) r += v, found |= GW_VLLM_RUNNING;
                else if (IS("vllm:kv_cache_usage_perc") || IS("vllm:gpu_cache_usage_perc")) {
                    /* the first name since vLLM 0.10, the second before */
                    if (v > c) c = v;
                    found |= GW_VLLM_CACHE;
                }
            }
#undef IS
        }
        p = eol + (eol < end);
    }
    /* Each sample is below 1e9, their sums may not be: an int holds at most INT_MAX. */
    *waiting = w < INT_MAX ? (int)w : INT_MAX;
    *running = r < INT_MAX ? (int)r : INT_MAX;
    *cache_pm = c > 1 ? 1000 : (int)(c * 1000);
    return found;
}
