/* The vLLM metrics queue_aware balances on, read from a backend's Prometheus text exposition. */
#include "base/vllm_metrics.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* A sample line of the text format: name, optional {labels} (quoted values may hold spaces,
 * braces and escaped quotes), whitespace, the value, optionally whitespace and an integer
 * timestamp, optionally a CR. Returns 1 with the name and the value (NUL-terminated in num),
 * 0 for anything else. */
static int sample_line(const char *p, const char *e, size_t *name_len, char *num, size_t cap)
{
    const char *q = p;
    while (q < e && *q != '{' && *q != ' ' && *q != '\t') q++;
    *name_len = (size_t)(q - p);
    if (q < e && *q == '{') {
        int quoted = 0;
        for (q++; q < e && (quoted || *q != '}'); q++) {
            if (quoted && *q == '\\' && q + 1 < e)
                q++; /* skip the escaped byte too */
            else if (*q == '"')
                quoted = !quoted;
        }
        if (q >= e) return 0;
        q++;
    }
    if (q >= e || (*q != ' ' && *q != '\t')) return 0;
    while (q < e && (*q == ' ' || *q == '\t')) q++;
    const char *v = q;
    while (q < e && *q != ' ' && *q != '\t' && *q != '\r') q++;
    size_t vn = (size_t)(q - v);
    if (vn == 0 || vn >= cap) return 0;
    memcpy(num, v, vn);
    num[vn] = '\0';
    while (q < e && (*q == ' ' || *q == '\t')) q++;
    if (q < e && *q != '\r') { /* a timestamp: milliseconds, an integer */
        if (*q == '-') q++;
        const char *d = q;
        while (q < e && *q >= '0' && *q <= '9') q++;
        if (q == d) return 0;
        while (q < e && (*q == ' ' || *q == '\t')) q++;
    }
    return q == e || (*q == '\r' && q + 1 == e);
}

int gw_vllm_metrics_parse(const char *text, size_t len, int *waiting, int *running, int *cache_pm)
{
    int found = 0;
    double w = 0, r = 0, c = 0;
    const char *p = text, *end = text + len;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol) eol = end;
        size_t name_len;
        char num[64];
        if (eol > p && p[0] != '#' && sample_line(p, eol, &name_len, num, sizeof(num))) {
            char *e;
            double v = strtod(num, &e);
#define IS(name) (name_len == sizeof(name) - 1 && memcmp(p, name, sizeof(name) - 1) == 0)
            if (e != num && *e == '\0' && v >= 0 && v < 1e9) {
                if (IS("vllm:num_requests_waiting"))
                    w += v, found |= GW_VLLM_WAITING;
                else if (IS("vllm:num_requests_running"))
                    r += v, found |= GW_VLLM_RUNNING;
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
