/* Metrics: per-thread counters summed at scrape time, shown in Prometheus text on /metrics.
 *
 * The request path takes no lock and shares no cache line: every worker thread counts into
 * its own series, one per (tenant, model) it has seen, found through a hash index that only
 * that thread reads. A counter has one writer, so it is bumped with a relaxed load and store
 * (a plain add on x86, no lock prefix); the admin thread reads it with a relaxed load. A
 * thread allocates a series the first time it sees a tenant and model, and never again.
 * Series are published by a release store at the head of the thread's list and never
 * removed, so the scraper walks them without a lock; it sums the threads' series at scrape
 * time and aggregates the histograms by model.
 *
 * Label values are ids and names from the config, fixed words, and numbers: never request
 * content. A model name that the config does not know is counted as GW_METRICS_UNKNOWN_MODEL.
 * Every label value is escaped as the Prometheus text format says anyway. */
#include "ops/metrics.h"

#include "base/clock.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "proxy/auth_guard.h"
#include "proxy/request.h"
#include "store/backend_geo.h"

typedef atomic_ullong counter_t;

static inline void bump(counter_t *c, uint64_t v) /* single writer: no lock prefix needed */
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + v,
                          memory_order_relaxed);
}

static inline uint64_t get(const counter_t *c)
{
    return atomic_load_explicit((counter_t *)c, memory_order_relaxed);
}

/* ---- fixed label values ---- */

/* HTTP statuses: the common ones each have a slot; the rest count by class. */
static const short known_status[] = {200, 201, 202, 204, 400, 401, 403, 404, 405, 408, 409, 413,
                                     415, 422, 429, 431, 499, 500, 501, 502, 503, 504, 505};
#define N_KNOWN_STATUS (sizeof(known_status) / sizeof(known_status[0]))
static const char *const status_class[] = {"1xx", "2xx", "3xx", "4xx", "5xx", "other"};
#define N_STATUS_SLOTS (N_KNOWN_STATUS + 6)
/* status -> 1 + its slot in known_status, 0 for a class slot */
static const uint8_t status_slot_of[600] = {
    [200] = 1,  [201] = 2,  [202] = 3,  [204] = 4,  [400] = 5,  [401] = 6,  [403] = 7,  [404] = 8,
    [405] = 9,  [408] = 10, [409] = 11, [413] = 12, [415] = 13, [422] = 14, [429] = 15, [431] = 16,
    [499] = 17, [500] = 18, [501] = 19, [502] = 20, [503] = 21, [504] = 22, [505] = 23};

static size_t status_slot(int status)
{
    if (status < 100 || status >= 600) return N_KNOWN_STATUS + 5;
    uint8_t s = status_slot_of[status];
    return s ? (size_t)(s - 1) : N_KNOWN_STATUS + (size_t)(status / 100 - 1);
}

static void put_status(struct evbuffer *out, size_t slot)
{
    if (slot < N_KNOWN_STATUS)
        evbuffer_add_printf(out, "%d", known_status[slot]);
    else
        evbuffer_add_printf(out, "%s", status_class[slot - N_KNOWN_STATUS]);
}

/* The gateway's own error codes (CONTRACT.md, and the OpenAI codes kept from a backend's
 * error); any other code counts as "other". */
static const char *const reasons[] = {"invalid_json",
                                      "missing_model",
                                      "bad_request",
                                      "invalid_api_key",
                                      "model_not_allowed",
                                      "residency_denied",
                                      "model_not_found",
                                      "not_found",
                                      "request_timeout",
                                      "request_too_large",
                                      "rate_limit_exceeded",
                                      "insufficient_quota",
                                      "headers_too_large",
                                      "upstream_error",
                                      "no_backend_available",
                                      "residency_unavailable",
                                      "quota_unavailable",
                                      "upstream_timeout",
                                      "internal_error",
                                      "context_length_exceeded",
                                      "invalid_request_error",
                                      "server_overloaded",
                                      "auth_lookups_busy",
                                      "other",
                                      NULL};
#define N_REASONS (sizeof(reasons) / sizeof(reasons[0]) - 1)

static size_t reason_slot(const char *code)
{
    for (size_t i = 0; i < N_REASONS - 1; i++)
        if (strcmp(reasons[i], code) == 0) return i;
    return N_REASONS - 1;
}

/* Histogram buckets, in microseconds (LLM answers take seconds to minutes). */
static const uint64_t bucket_us[] = {5000,     10000,    25000,    50000,     100000,
                                     250000,   500000,   1000000,  2500000,   5000000,
                                     10000000, 30000000, 60000000, 120000000, 300000000};
static const char *const bucket_le[] = {"0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1",
                                        "2.5",   "5",    "10",    "30",   "60",  "120",  "300"};
#define N_BUCKETS (sizeof(bucket_us) / sizeof(bucket_us[0]))

static size_t bucket_of(uint64_t us)
{
    size_t i = 0;
    while (i < N_BUCKETS && us > bucket_us[i]) i++;
    return i; /* N_BUCKETS: +Inf */
}

/* ---- per-thread series ---- */

typedef struct series {
    struct series *next; /* the thread's list, set before publication */
    uint64_t hash;
    const char *tenant, *model; /* copies, in the same allocation */
    counter_t status[N_STATUS_SLOTS];
    counter_t tokens[2]; /* prompt, completion */
    counter_t dur[N_BUCKETS + 1], dur_sum_us;
    counter_t ttft[N_BUCKETS + 1], ttft_sum_us;
} series_t;

#define MAX_SERIES_PER_THREAD 16384 /* past it, counts go to one "<other>" series */

typedef struct tstats {
    struct tstats *next;
    _Atomic(series_t *) head;
    counter_t rejected[N_REASONS];
    /* the owning thread only */
    series_t **index;
    size_t cap, n;
    series_t *overflow;
} tstats_t;

static _Atomic(tstats_t *) threads;
static _Thread_local tstats_t *me;

static tstats_t *tstats_register(void)
{
    tstats_t *t = calloc(1, sizeof(*t));
    if (!t) return NULL;
    tstats_t *first = atomic_load(&threads);
    do {
        t->next = first;
    } while (!atomic_compare_exchange_weak(&threads, &first, t));
    me = t;
    return t;
}

static uint64_t hash2(const char *a, const char *b)
{
    uint64_t h = 1469598103934665603ull;
    for (; *a; a++) h = (h ^ (unsigned char)*a) * 1099511628211ull;
    h = (h ^ 0xff) * 1099511628211ull;
    for (; *b; b++) h = (h ^ (unsigned char)*b) * 1099511628211ull;
    return h;
}

static series_t *series_new(tstats_t *t, uint64_t h, const char *tenant, const char *model)
{
    size_t lt = strlen(tenant) + 1, lm = strlen(model) + 1;
    series_t *s = calloc(1, sizeof(*s) + lt + lm);
    if (!s) return NULL;
    char *p = (char *)(s + 1);
    memcpy(p, tenant, lt);
    memcpy(p + lt, model, lm);
    s->tenant = p;
    s->model = p + lt;
    s->hash = h;
    s->next = atomic_load_explicit(&t->head, memory_order_relaxed);
    atomic_store_explicit(&t->head, s, memory_order_release);
    return s;
}

static void index_put(series_t **index, size_t cap, series_t *s)
{
    size_t i = s->hash & (cap - 1);
    while (index[i]) i = (i + 1) & (cap - 1);
    index[i] = s;
}

static series_t *series_for(tstats_t *t, const char *tenant, const char *model)
{
    uint64_t h = hash2(tenant, model);
    if (t->cap) {
        for (size_t i = h & (t->cap - 1);; i = (i + 1) & (t->cap - 1)) {
            series_t *s = t->index[i];
            if (!s) break;
            if (s->hash == h && strcmp(s->tenant, tenant) == 0 && strcmp(s->model, model) == 0)
                return s;
        }
    }
    /* New to this thread. */
    if (t->n >= MAX_SERIES_PER_THREAD) {
        if (!t->overflow) t->overflow = series_new(t, 0, "<other>", "<other>");
        return t->overflow;
    }
    if (2 * (t->n + 1) > t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 64;
        series_t **index = calloc(cap, sizeof(*index));
        if (!index) return NULL;
        for (size_t i = 0; i < t->cap; i++)
            if (t->index[i]) index_put(index, cap, t->index[i]);
        free(t->index);
        t->index = index;
        t->cap = cap;
    }
    series_t *s = series_new(t, h, tenant, model);
    if (!s) return NULL;
    index_put(t->index, t->cap, s);
    t->n++;
    return s;
}

/* The model label: routed requests carry a configured name; otherwise the request's model
 * only if the config knows it. */
static const char *model_label(const gw_req_t *r)
{
    if (r->pool && r->model) return r->model;
    const cJSON *m = r->json ? cJSON_GetObjectItemCaseSensitive(r->json, "model") : NULL;
    if (!cJSON_IsString(m) || !m->valuestring[0]) return GW_METRICS_NONE;
    return gw_config_pool_for_model(r->cfg, m->valuestring) ? m->valuestring
                                                            : GW_METRICS_UNKNOWN_MODEL;
}

void gw_metrics_request(const gw_req_t *r)
{
    tstats_t *t = me ? me : tstats_register();
    if (!t) return;
    series_t *s = series_for(t, r->tenant ? r->tenant->id : GW_METRICS_NONE, model_label(r));
    if (!s) return;
    int status = r->status;
    const char *code = r->code;
    if (r->aborted && !status) status = 499;
    bump(&s->status[status_slot(status)], 1);
    if (code) bump(&t->rejected[reason_slot(code)], 1);
    if (!gw_req_served(r)) {
        /* not served: no tokens (quota charges none either) */
    } else if (r->usage_known) {
        if (r->usage_prompt > 0) bump(&s->tokens[0], (uint64_t)r->usage_prompt);
        if (r->usage_completion > 0) bump(&s->tokens[1], (uint64_t)r->usage_completion);
    } else if (r->backend) { /* the estimate the quota plugin and the access log use */
        bump(&s->tokens[0], gw_req_body_length(r) / 4);
        bump(&s->tokens[1], r->events_relayed);
    }
    uint64_t now = gw_now_us(), d = now >= r->start_us ? now - r->start_us : 0;
    bump(&s->dur[bucket_of(d)], 1);
    bump(&s->dur_sum_us, d);
    if (r->ttft_us && r->ttft_us >= r->start_us) {
        uint64_t f = r->ttft_us - r->start_us;
        bump(&s->ttft[bucket_of(f)], 1);
        bump(&s->ttft_sum_us, f);
    }
}

/* ---- rarer events: shared relaxed atomics, or small tables ---- */

static atomic_ulong reloads[2]; /* refused, ok */
static _Atomic int64_t last_reload_ok_s;

void gw_metrics_reload(int ok)
{
    atomic_fetch_add_explicit(&reloads[ok ? 1 : 0], 1, memory_order_relaxed);
    if (ok) atomic_store(&last_reload_ok_s, (int64_t)time(NULL));
}

void gw_metrics_reloads(unsigned long *ok, unsigned long *refused)
{
    *ok = atomic_load(&reloads[1]);
    *refused = atomic_load(&reloads[0]);
}

/* Refusals by quota are rare: a small table under a lock. Tenant ids come from the config,
 * kinds from a fixed list; the table is bounded. */
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
    static const char *const kinds[] = {"requests", "tokens", "tokens_per_day", "concurrency",
                                        NULL};
    size_t k = 0;
    while (kinds[k] && (!kind || strcmp(kinds[k], kind) != 0)) k++;
    if (!kinds[k] || !tenant) return;
    pthread_mutex_lock(&rl_lock);
    size_t i = 0;
    while (i < rl_n && !(rl_table[i].kind == kinds[k] && strcmp(rl_table[i].tenant, tenant) == 0))
        i++;
    if (i == rl_n && rl_n < MAX_RATELIMITED && (rl_table[i].tenant = strdup(tenant))) {
        rl_table[i].kind = kinds[k];
        rl_n++;
    }
    if (i < rl_n) rl_table[i].count++;
    pthread_mutex_unlock(&rl_lock);
}

/* Residency blocks, by pool and backend (names from the config). Hit on the request path
 * whenever a backend is kept out, so lookups take no lock: entries are appended under the
 * lock and published by the count; they are never removed (bounded). */
#define MAX_RESIDENCY_ENTRIES 4096
typedef struct rb_entry {
    char *pool, *backend;
    atomic_ulong count;
} rb_entry_t;
static rb_entry_t rb_table[MAX_RESIDENCY_ENTRIES];
static atomic_size_t rb_n;
static pthread_mutex_t rb_lock = PTHREAD_MUTEX_INITIALIZER;

static rb_entry_t *rb_find(const char *pool, const char *backend, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(rb_table[i].backend, backend) == 0 && strcmp(rb_table[i].pool, pool) == 0)
            return &rb_table[i];
    return NULL;
}

void gw_metrics_residency_blocked(const char *pool, const char *backend)
{
    if (!pool || !backend) return;
    rb_entry_t *e = rb_find(pool, backend, atomic_load_explicit(&rb_n, memory_order_acquire));
    if (!e) {
        pthread_mutex_lock(&rb_lock);
        size_t n = atomic_load_explicit(&rb_n, memory_order_relaxed);
        e = rb_find(pool, backend, n);
        if (!e && n < MAX_RESIDENCY_ENTRIES && (rb_table[n].pool = strdup(pool)) &&
            (rb_table[n].backend = strdup(backend))) {
            e = &rb_table[n];
            atomic_store_explicit(&rb_n, n + 1, memory_order_release);
        }
        pthread_mutex_unlock(&rb_lock);
        if (!e) return;
    }
    atomic_fetch_add_explicit(&e->count, 1, memory_order_relaxed);
}

/* ---- the exposition ---- */

void gw_metrics_put_label(struct evbuffer *out, const char *s)
{
    const char *run = s ? s : "";
    for (const char *p = run; *p; p++) {
        if (*p != '\\' && *p != '"' && *p != '\n') continue;
        evbuffer_add(out, run, (size_t)(p - run));
        evbuffer_add(out, *p == '\\' ? "\\\\" : *p == '"' ? "\\\"" : "\\n", 2);
        run = p + 1;
    }
    evbuffer_add(out, run, strlen(run));
}

static void family(struct evbuffer *out, const char *name, const char *type, const char *help)
{
    evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* name{k1="v1",k2="v2" with escaped values (the caller adds more labels, or "}"). */
static void sample_start(struct evbuffer *out, const char *name, const char *k1, const char *v1,
                         const char *k2, const char *v2)
{
    evbuffer_add_printf(out, "%s{%s=\"", name, k1);
    gw_metrics_put_label(out, v1);
    evbuffer_add_printf(out, "\",%s=\"", k2);
    gw_metrics_put_label(out, v2);
    evbuffer_add(out, "\"", 1);
}

int gw_metrics_backend_up(const gw_config_t *cfg, const gw_backend_t *b)
{
    const gw_resolved_t *rs = gw_backend_hold(b);
    int approved = rs && rs->n > 0 && (!cfg->residency || rs->approved);
    gw_resolved_release(rs);
    return approved && atomic_load_explicit(&b->live->healthy, memory_order_relaxed);
}

static void render_backends(struct evbuffer *out, const gw_config_t *cfg)
{
    static const struct {
        const char *name, *help;
    } fams[] = {
        {"gotthard_backend_up", "1 when the backend may be sent requests: residency approves it "
                                "(or there is no policy) and it is healthy."},
        {"gotthard_backend_healthy", "The backend's health (active checks, passive ejection)."},
        {"gotthard_backend_residency_approved",
         "1 when the residency policy approves the backend (or there is no policy)."},
        {"gotthard_backend_inflight", "Requests in flight to the backend, across workers."},
    };
    for (size_t f = 0; f < sizeof(fams) / sizeof(fams[0]); f++) {
        family(out, fams[f].name, "gauge", fams[f].help);
        gw_pool_t *pools = cfg->pools.items;
        for (size_t p = 0; p < cfg->pools.n; p++) {
            gw_backend_t *bs = pools[p].backends.items;
            for (size_t i = 0; i < pools[p].backends.n; i++) {
                gw_backend_t *b = &bs[i];
                const gw_resolved_t *rs = gw_backend_hold(b);
                long v = 0;
                switch (f) {
                case 0:
                    v = gw_metrics_backend_up(cfg, b);
                    break;
                case 1:
                    v = atomic_load_explicit(&b->live->healthy, memory_order_relaxed) != 0;
                    break;
                case 2:
                    v = rs && (!cfg->residency || rs->approved);
                    break;
                default:
                    v = atomic_load_explicit(&b->live->inflight, memory_order_relaxed);
                    break;
                }
                gw_resolved_release(rs);
                sample_start(out, fams[f].name, "pool", pools[p].name, "backend", b->name);
                evbuffer_add_printf(out, "} %ld\n", v);
            }
        }
    }
}

static int by_tenant_model(const void *a, const void *b)
{
    const series_t *x = *(series_t *const *)a, *y = *(series_t *const *)b;
    int c = strcmp(x->tenant, y->tenant);
    return c ? c : strcmp(x->model, y->model);
}

static int by_model(const void *a, const void *b)
{
    const series_t *x = *(series_t *const *)a, *y = *(series_t *const *)b;
    int c = strcmp(x->model, y->model);
    return c ? c : strcmp(x->tenant, y->tenant);
}

/* Every series of every thread, or NULL (n 0). */
static series_t **collect(size_t *n)
{
    size_t cap = 0, k = 0;
    for (tstats_t *t = atomic_load(&threads); t; t = t->next)
        for (series_t *s = atomic_load_explicit(&t->head, memory_order_acquire); s; s = s->next)
            cap++;
    series_t **all = cap ? malloc(cap * sizeof(*all)) : NULL;
    if (!all) {
        *n = 0;
        return NULL;
    }
    /* Threads may have added series meanwhile: take at most cap. */
    for (tstats_t *t = atomic_load(&threads); t && k < cap; t = t->next)
        for (series_t *s = atomic_load_explicit(&t->head, memory_order_acquire); s && k < cap;
             s = s->next)
            all[k++] = s;
    *n = k;
    return all;
}

static void render_requests(struct evbuffer *out, series_t **all, size_t n)
{
    if (n) qsort(all, n, sizeof(*all), by_tenant_model);
    family(out, "gotthard_requests_total", "counter",
           "Requests finished, by tenant, model and HTTP status (499: the client left).");
    for (size_t i = 0; i < n;) {
        size_t j = i;
        uint64_t sum[N_STATUS_SLOTS] = {0};
        for (; j < n && by_tenant_model(&all[i], &all[j]) == 0; j++)
            for (size_t k = 0; k < N_STATUS_SLOTS; k++) sum[k] += get(&all[j]->status[k]);
        for (size_t k = 0; k < N_STATUS_SLOTS; k++) {
            if (!sum[k]) continue;
            sample_start(out, "gotthard_requests_total", "tenant", all[i]->tenant, "model",
                         all[i]->model);
            evbuffer_add(out, ",code=\"", 7);
            put_status(out, k);
            evbuffer_add_printf(out, "\"} %llu\n", (unsigned long long)sum[k]);
        }
        i = j;
    }
    family(out, "gotthard_tokens_total", "counter",
           "Tokens by tenant, model and kind (prompt, completion): the backend's usage, or the "
           "gateway's estimate when it gave none.");
    for (size_t i = 0; i < n;) {
        size_t j = i;
        uint64_t sum[2] = {0, 0};
        for (; j < n && by_tenant_model(&all[i], &all[j]) == 0; j++) {
            sum[0] += get(&all[j]->tokens[0]);
            sum[1] += get(&all[j]->tokens[1]);
        }
        for (int k = 0; k < 2 && (sum[0] || sum[1]); k++) {
            sample_start(out, "gotthard_tokens_total", "tenant", all[i]->tenant, "model",
                         all[i]->model);
            evbuffer_add_printf(out, ",kind=\"%s\"} %llu\n", k ? "completion" : "prompt",
                                (unsigned long long)sum[k]);
        }
        i = j;
    }
}

static void render_histogram(struct evbuffer *out, series_t **all, size_t n, const char *name,
                             const char *help, int ttft)
{
    family(out, name, "histogram", help);
    for (size_t i = 0; i < n;) {
        size_t j = i;
        uint64_t b[N_BUCKETS + 1] = {0}, sum_us = 0;
        for (; j < n && strcmp(all[i]->model, all[j]->model) == 0; j++) {
            const counter_t *h = ttft ? all[j]->ttft : all[j]->dur;
            for (size_t k = 0; k <= N_BUCKETS; k++) b[k] += get(&h[k]);
            sum_us += get(ttft ? &all[j]->ttft_sum_us : &all[j]->dur_sum_us);
        }
        uint64_t cum = 0;
        for (size_t k = 0; k <= N_BUCKETS; k++) cum += b[k];
        if (cum) {
            cum = 0;
            for (size_t k = 0; k <= N_BUCKETS; k++) {
                cum += b[k];
                evbuffer_add_printf(out, "%s_bucket{model=\"", name);
                gw_metrics_put_label(out, all[i]->model);
                evbuffer_add_printf(out, "\",le=\"%s\"} %llu\n",
                                    k < N_BUCKETS ? bucket_le[k] : "+Inf", (unsigned long long)cum);
            }
            evbuffer_add_printf(out, "%s_sum{model=\"", name);
            gw_metrics_put_label(out, all[i]->model);
            evbuffer_add_printf(out, "\"} %llu.%06llu\n", (unsigned long long)(sum_us / 1000000),
                                (unsigned long long)(sum_us % 1000000));
            /* _count is the +Inf bucket of the same read: they always agree */
            evbuffer_add_printf(out, "%s_count{model=\"", name);
            gw_metrics_put_label(out, all[i]->model);
            evbuffer_add_printf(out, "\"} %llu\n", (unsigned long long)cum);
        }
        i = j;
    }
}

void gw_metrics_render(struct evbuffer *out, const gw_config_t *cfg)
{
    size_t n = 0;
    series_t **all = collect(&n);
    render_requests(out, all, n);
    if (n) qsort(all, n, sizeof(*all), by_model);
    render_histogram(out, all, n, "gotthard_request_duration_seconds",
                     "Time from the request's head to its end (streams: the last event), by model.",
                     0);
    render_histogram(out, all, n, "gotthard_ttft_seconds",
                     "Time from the request's head to the answer's head (plain) or first event "
                     "(streams), by model.",
                     1);
    free(all);

    family(out, "gotthard_rejected_total", "counter",
           "Requests that ended with one of the gateway's own error codes, by code.");
    uint64_t rej[N_REASONS] = {0};
    for (tstats_t *t = atomic_load(&threads); t; t = t->next)
        for (size_t k = 0; k < N_REASONS; k++) rej[k] += get(&t->rejected[k]);
    for (size_t k = 0; k < N_REASONS; k++)
        evbuffer_add_printf(out, "gotthard_rejected_total{reason=\"%s\"} %llu\n", reasons[k],
                            (unsigned long long)rej[k]);

    family(out, "gotthard_ratelimited_total", "counter", "Requests refused by a quota.");
    pthread_mutex_lock(&rl_lock);
    for (size_t i = 0; i < rl_n; i++) {
        sample_start(out, "gotthard_ratelimited_total", "tenant", rl_table[i].tenant, "kind",
                     rl_table[i].kind);
        evbuffer_add_printf(out, "} %lu\n", rl_table[i].count);
    }
    pthread_mutex_unlock(&rl_lock);

    family(out, "gotthard_auth_failures_total", "counter",
           "Failed authentications: the 401s by cause, and as reason rate_limited the 429s of "
           "addresses over auth.failure_rate.");
    const char *reason;
    unsigned long count;
    for (size_t i = 0; (reason = gw_auth_guard_counted(i, &count)); i++)
        evbuffer_add_printf(out, "gotthard_auth_failures_total{reason=\"%s\"} %lu\n", reason,
                            count);

    family(out, "gotthard_residency_blocked_total", "counter",
           "Requests and connections the residency policy kept from a backend.");
    size_t nb = atomic_load_explicit(&rb_n, memory_order_acquire);
    for (size_t i = 0; i < nb; i++) {
        sample_start(out, "gotthard_residency_blocked_total", "pool", rb_table[i].pool, "backend",
                     rb_table[i].backend);
        evbuffer_add_printf(out, "} %lu\n",
                            atomic_load_explicit(&rb_table[i].count, memory_order_relaxed));
    }

    render_backends(out, cfg);

    family(out, "gotthard_resolver_states", "gauge",
           "Resolved backend states alive (current ones and those connections still use).");
    evbuffer_add_printf(out, "gotthard_resolver_states %ld\n", gw_resolver_states());

    family(
        out, "gotthard_reloads_total", "counter",
        "Configuration reloads (SIGHUP, POST /reload): ok, or refused (the old one kept serving).");
    evbuffer_add_printf(out,
                        "gotthard_reloads_total{result=\"ok\"} %lu\n"
                        "gotthard_reloads_total{result=\"refused\"} %lu\n",
                        atomic_load(&reloads[1]), atomic_load(&reloads[0]));
    int64_t last = atomic_load(&last_reload_ok_s);
    if (last) {
        family(out, "gotthard_last_reload_success_timestamp_seconds", "gauge",
               "When the configuration was last reloaded successfully (Unix time).");
        evbuffer_add_printf(out, "gotthard_last_reload_success_timestamp_seconds %lld\n",
                            (long long)last);
    }
}
