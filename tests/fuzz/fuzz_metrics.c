/* libFuzzer target for the vLLM metrics scrape of queue_aware balancing (gateway/vllm_metrics.c):
 * a backend's Prometheus text, of which it sums the requests waiting and running and takes the
 * largest cache usage.
 *
 * The first input byte picks the mode (byte % 2), the rest is the data:
 *   0  the data is a metrics page as a backend sends it. Besides "no crash, no undefined
 *      behaviour, nothing read past its length" (the page sits against an unreadable page):
 *      the counts are never negative, the cache usage is within 0..1000 per mille; and cut at
 *      any line end into two pages, the kinds of sample found unite, the cache usage is the
 *      larger of the two and the sums the same to within the rounding of each part.
 *   1  the data is a list of samples the harness writes as a vLLM page (names, labels with
 *      braces and escapes in their values, comments, other metrics, timestamps, LF or CRLF):
 *      what is parsed is exactly what was written.
 */
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "guarded.h"
#include "base/vllm_metrics.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct result {
    int found, waiting, running, cache;
} result_t;

static result_t parse(const char *p, size_t n)
{
    result_t r;
    r.found = gw_vllm_metrics_parse(gw_fuzz_guarded(p, n), n, &r.waiting, &r.running, &r.cache);
    check(r.found >= 0 && r.found <= (GW_VLLM_WAITING | GW_VLLM_RUNNING | GW_VLLM_CACHE));
    check(r.waiting >= 0 && r.running >= 0);
    check(r.cache >= 0 && r.cache <= 1000);
    return r;
}

static int near(int whole, int a, int b)
{
    long long sum = (long long)a + b;
    if (sum >= INT_MAX) return whole >= INT_MAX - 2; /* both clamp */
    return whole >= sum && whole <= sum + 1;
}

static void page_mode(const char *p, size_t n)
{
    result_t all = parse(p, n);
    /* Cut after the first line end from a point the data picks. */
    size_t from = n ? (unsigned char)p[0] * n / 256 : 0;
    const char *nl = from < n ? memchr(p + from, '\n', n - from) : NULL;
    if (!nl) return;
    size_t cut = (size_t)(nl - p) + 1;
    result_t a = parse(p, cut), b = parse(p + cut, n - cut);
    check(all.found == (a.found | b.found));
    check(all.cache == (a.cache > b.cache ? a.cache : b.cache));
    check(near(all.waiting, a.waiting, b.waiting));
    check(near(all.running, a.running, b.running));
}

typedef struct page {
    char *p;
    size_t len, cap;
} page_t;

static void add(page_t *pg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add(page_t *pg, const char *fmt, ...)
{
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int k = vsnprintf(pg->p + pg->len, pg->cap - pg->len, fmt, ap);
        va_end(ap);
        check(k >= 0);
        if ((size_t)k < pg->cap - pg->len) {
            pg->len += (size_t)k;
            return;
        }
        pg->cap = pg->cap * 2 + (size_t)k + 64;
        pg->p = realloc(pg->p, pg->cap);
        check(pg->p != NULL);
    }
}

/* Two bytes of flags (CRLF, the last line without its end), then each 4 bytes a sample: a kind,
 * a value (two bytes) and how it is written. */
static void sample_mode(const uint8_t *d, size_t n)
{
    static const char *const names[] = {"vllm:num_requests_waiting", "vllm:num_requests_running",
                                        "vllm:gpu_cache_usage_perc"};
    static const char *const labels[] = {"", "{model_name=\"m\"}",
                                         "{engine=\"0\",model_name=\"llama 3\"}",
                                         "{a=\"} {\\\" \\\\\"}", "{}"};
    page_t pg = {malloc(256), 0, 256};
    check(pg.p != NULL);
    const char *eol = n && (d[0] & 1) ? "\r\n" : "\n";
    double waiting = 0, running = 0, cache = 0;
    int found = 0;
    add(&pg, "# HELP vllm:num_requests_running Number of requests running.%s", eol);
    add(&pg, "# TYPE vllm:num_requests_running gauge%s", eol);
    for (size_t i = 2; i + 4 <= n && i < 4 * 200; i += 4) {
        int kind = d[i] % 5, how = d[i + 3];
        unsigned v = (unsigned)d[i + 1] << 8 | d[i + 2];
        const char *label = labels[how % 5];
        if (kind == 3) { /* another metric, or a comment: never counted */
            add(&pg, "%svllm:num_requests_waiting_total%s %u%s", how & 4 ? "# " : "", label, v,
                eol);
            continue;
        }
        if (kind == 4) {
            add(&pg, "vllm:prompt_tokens_total%s %u.0%s", label, v, eol);
            continue;
        }
        double x;
        /* after the value: a timestamp (ms, may be negative), whitespace, both or nothing */
        static const char *const tails[] = {"", " 1700000000000", "\t", " -42 "};
        const char *tail = tails[(how >> 5) % 4];
        if (how & 8) { /* any double, printed so that it reads back the same */
            x = kind == 2 ? v / 65536.0 : (double)v;
            add(&pg, "%s%s %.17g%s%s", names[kind], label, x, tail, eol);
        } else if (how & 16) { /* a tab before the value; a cache usage above 1 */
            x = (double)(v % 1000);
            add(&pg, "%s%s\t%.1f%s%s", names[kind], label, x, tail, eol);
        } else { /* as vLLM writes its gauges */
            x = kind == 2 ? 0 : (double)v;
            add(&pg, "%s%s %u.0%s%s", names[kind], label, (unsigned)x, tail, eol);
        }
        found |= kind == 0 ? GW_VLLM_WAITING : kind == 1 ? GW_VLLM_RUNNING : GW_VLLM_CACHE;
        if (kind == 0)
            waiting += x;
        else if (kind == 1)
            running += x;
        else if (x > cache)
            cache = x;
    }
    if (n >= 2 && (d[1] & 1)) pg.len -= strlen(eol); /* the last line without its end */
    result_t r = parse(pg.p, pg.len);
    if (getenv("FUZZ_DEBUG"))
        fprintf(stderr, "%.*s\n-- %d %d %d %d / %d %g %g %g\n", (int)pg.len, pg.p, r.found,
                r.waiting, r.running, r.cache, found, waiting, running, cache);
    check(r.found == found);
    check(r.waiting == (int)waiting && r.running == (int)running);
    check(r.cache == (cache > 1 ? 1000 : (int)(cache * 1000)));
    free(pg.p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size - 1 > GW_FUZZ_AREA) return 0;
    if (data[0] % 2 == 0)
        page_mode((const char *)data + 1, size - 1);
    else
        sample_mode(data + 1, size - 1);
    return 0;
}
