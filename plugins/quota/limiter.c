/* The in-process quota limiter: a sliding window of one-second buckets per minute limit, a
 * UTC-day budget and a concurrency count per key, with an injected clock; and the leases the
 * Redis store spends locally. The window arithmetic mirrors the Lua of scripts.c line for line. */
#include "limiter.h"

#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define D_MAX 4503599627370496LL /* 2^52: counts are clamped here (Lua does the same) */
#define W GQ_WINDOW_S

static int64_t cdiv(int64_t a, int64_t b)
{
    return a / b + (a % b != 0);
}

static int64_t clamp(int64_t v, int64_t lo, int64_t hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

static int64_t sec_of(int64_t ms)
{
    return ms >= 0 ? ms / 1000 : -cdiv(-ms, 1000);
}

/* ---- the sliding window (see scripts.c for the Lua twin) ---- */

typedef struct win {
    int64_t sum, lo, hi; /* counts live in seconds [lo, hi], hi <= lo + W - 1 */
    int64_t b[W];        /* second x's count at b[x % W] */
} win_t;

static int64_t *slot_of(win_t *w, int64_t sec)
{
    int64_t i = sec % W;
    return &w->b[i < 0 ? i + W : i];
}

/* Forgets what is older than the window ending at sec; returns the second to count in (never
 * before the newest one counted). */
static int64_t w_prune(win_t *w, int64_t sec)
{
    if (sec < w->hi) sec = w->hi;
    int64_t first = sec - W + 1;
    if (w->sum == 0) {
        w->lo = w->hi = sec;
    } else if (first > w->hi) {
        for (int64_t x = w->lo; x <= w->hi; x++) *slot_of(w, x) = 0;
        w->sum = 0;
        w->lo = w->hi = sec;
    } else if (w->lo < first) {
        for (int64_t x = w->lo; x < first; x++) {
            w->sum -= *slot_of(w, x);
            *slot_of(w, x) = 0;
        }
        w->lo = first;
    }
    return sec;
}

static void w_add(win_t *w, int64_t sec, int64_t c)
{
    int64_t *v = slot_of(w, sec);
    *v = clamp(*v + c, 0, D_MAX);
    w->sum = clamp(w->sum + c, 0, D_MAX);
    w->hi = sec;
}

/* Adds delta (either sign) to second bsec if the window still holds it; a positive rest for a
 * forgotten second goes to the current one (sec, after w_prune). */
static void w_adjust(win_t *w, int64_t bsec, int64_t delta, int64_t sec)
{
    if (bsec >= w->lo && bsec <= w->hi) {
        int64_t *v = slot_of(w, bsec), nv = clamp(*v + delta, 0, D_MAX);
        w->sum += nv - *v;
        *v = nv;
    } else if (delta > 0) {
        w_add(w, sec, delta);
    }
}

static int w_fits(const win_t *w, int64_t N, int64_t c)
{
    if (c > N) return w->sum == 0;
    return w->sum + (c > 1 ? c : 1) <= N;
}

/* When a refused cost c fits: the end of the oldest bucket that frees enough. */
static int64_t w_retry(win_t *w, int64_t N, int64_t c, int64_t now)
{
    if (c <= N) {
        int64_t need = w->sum + (c > 1 ? c : 1) - N, freed = 0;
        for (int64_t x = w->lo; x <= w->hi; x++) {
            freed += *slot_of(w, x);
            if (freed >= need) return (x + W) * 1000 - now;
        }
    }
    return (w->hi + W) * 1000 - now;
}

static int64_t w_remaining(const win_t *w, int64_t N)
{
    return w->sum >= N ? 0 : N - w->sum;
}

static int64_t w_reset(const win_t *w, int64_t now)
{
    return w->sum > 0 ? (w->hi + W) * 1000 - now : 0;
}

static int d_fits(int64_t used, int64_t T, int64_t est)
{
    if (est > T) return used == 0;
    return used + (est > 1 ? est : 1) <= T;
}

int64_t gq_utc_day(int64_t now_ms)
{
    return now_ms >= 0 ? now_ms / GQ_DAY_MS : -cdiv(-now_ms, GQ_DAY_MS);
}

int64_t gq_until_utc_midnight(int64_t now_ms)
{
    return (gq_utc_day(now_ms) + 1) * GQ_DAY_MS - now_ms;
}

const char *gq_reason_code(gq_reason_t why)
{
    switch (why) {
    case GQ_RPM:
    case GQ_TPM:
    case GQ_CONC:
        return "rate_limit_exceeded";
    case GQ_TPD:
        return "insufficient_quota";
    default:
        return NULL;
    }
}

const char *gq_reason_kind(gq_reason_t why)
{
    switch (why) {
    case GQ_RPM:
        return "requests";
    case GQ_TPM:
        return "tokens";
    case GQ_TPD:
        return "tokens_per_day";
    case GQ_CONC:
        return "concurrency";
    default:
        return NULL;
    }
}

int gq_format_duration(char *buf, size_t cap, int64_t ms)
{
    if (ms <= 0) return snprintf(buf, cap, "0s");
    if (ms < 1000) return snprintf(buf, cap, "%lldms", (long long)ms);
    long long h = ms / 3600000, m = ms / 60000 % 60, s = ms / 1000 % 60, f = ms % 1000;
    char hm[48] = "", frac[8] = "";
    if (h)
        snprintf(hm, sizeof(hm), "%lldh%lldm", h, m);
    else if (m)
        snprintf(hm, sizeof(hm), "%lldm", m);
    if (f) {
        snprintf(frac, sizeof(frac), ".%03lld", f);
        size_t n = strlen(frac);
        while (n > 1 && frac[n - 1] == '0') frac[--n] = '\0';
    }
    return snprintf(buf, cap, "%s%lld%ss", hm, s, frac);
}

int64_t gq_retry_after_seconds(int64_t ms)
{
    return ms <= 0 ? 0 : cdiv(ms, 1000);
}

int gq_limits_check(const gq_limits_t *l, const char **field)
{
    static const char *const names[] = {"requests_per_minute", "tokens_per_minute",
                                        "tokens_per_day", "max_concurrent"};
    const int64_t v[] = {l->rpm, l->tpm, l->tpd, l->concurrent};
    for (size_t i = 0; i < 4; i++)
        if (v[i] < 0 || v[i] > GQ_MAX_LIMIT) {
            if (field) *field = names[i];
            return -1;
        }
    return 0;
}

void gq_state_merge(gq_state_t *s, int n, const gq_limits_t *const lim[],
                    const gq_level_fig_t fig[], int64_t now_ms)
{
    memset(s, 0, sizeof(*s));
    for (int i = 0; i < n; i++) {
        const gq_limits_t *l = lim[i];
        const gq_level_fig_t *f = &fig[i];
        if (l->rpm &&
            (!s->req_limit || f->req_remaining < s->req_remaining ||
             (f->req_remaining == s->req_remaining && f->req_reset_ms > s->req_reset_ms))) {
            s->req_limit = l->rpm;
            s->req_remaining = f->req_remaining;
            s->req_reset_ms = f->req_reset_ms;
        }
        if (l->tpm &&
            (!s->tok_limit || f->tok_remaining < s->tok_remaining ||
             (f->tok_remaining == s->tok_remaining && f->tok_reset_ms > s->tok_reset_ms))) {
            s->tok_limit = l->tpm;
            s->tok_remaining = f->tok_remaining;
            s->tok_reset_ms = f->tok_reset_ms;
        }
        if (l->tpd && (!s->day_limit || f->day_remaining < s->day_remaining)) {
            s->day_limit = l->tpd;
            s->day_remaining = f->day_remaining;
            s->day_reset_ms = gq_until_utc_midnight(now_ms);
        }
        if (l->concurrent &&
            (!s->conc_limit || l->concurrent - f->conc_in_use < s->conc_limit - s->conc_in_use)) {
            s->conc_limit = l->concurrent;
            s->conc_in_use = f->conc_in_use;
        }
    }
}

/* ---- the limiter ---- */

/* A test-and-test-and-set lock: the critical sections are a few dozen instructions, and a
 * 4-byte lock keeps a bucket in one cache line (one transfer per contended check, not three).
 * A waiter that spins too long yields its CPU (a preempted holder). */
typedef atomic_int lock_t;

static void lock_take(lock_t *l)
{
    for (;;) {
        if (!atomic_exchange_explicit(l, 1, memory_order_acquire)) return;
        for (int n = 0; atomic_load_explicit(l, memory_order_relaxed); n++) {
            if (n >= 256) {
                sched_yield();
                n = 0;
            }
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
        }
    }
}

static void lock_give(lock_t *l)
{
    atomic_store_explicit(l, 0, memory_order_release);
}

/* The leases of one key level (Redis store): what is left of each, and the figures of the
 * call that granted them, for headers. */
typedef struct lease {
    int64_t sec, rpm, tpm; /* the bucket they were counted in; what is left */
    int64_t day, tpd;
    int64_t g_rpm, g_tpm, g_tpd; /* what was granted */
    int64_t deadline;            /* monotonic ms; spendable before */
    int64_t granted;             /* monotonic ms of the grant's call */
    uint32_t gen;                /* 0: none */
    gq_level_fig_t fig;
    gq_lease_ret_t back; /* the rest of a lease replaced while it lived, for the next call */
} lease_t;

typedef struct bucket {
    lock_t mu;
    atomic_int refs;
    int renewing;                    /* a lease renewal is in flight for this key (as the leaf) */
    int64_t closed_at, closed_until; /* a refusal from Redis, repeated here (as the leaf) */
    gq_decision_t closed;
    int64_t day, used; /* tpd */
    int64_t in_use;    /* concurrency */
    lease_t lease;
    win_t req, tok;                 /* rpm, tpm */
    gq_usage_t days[GQ_USAGE_DAYS]; /* usage by day % GQ_USAGE_DAYS (tenant level) */
    gq_usage_t pending;             /* not yet sent to Redis */
    int64_t pending_since;          /* monotonic ms of its first request; 0: empty */
} bucket_t;

struct gq_key {
    char *tenant, *model;
    gq_limits_t limits;
    bucket_t *b;
    const gq_key_t *parent; /* the tenant's key, for a model override */
    uint64_t hash;
};

struct gq_limiter {
    gq_key_t **slots;
    size_t cap, n;
    const gq_limiter_t *prev; /* during the build only: whose state to share */
};

static uint64_t key_hash(const char *tenant, const char *model)
{
    uint64_t h = 1469598103934665603ULL;
    for (const unsigned char *p = (const unsigned char *)tenant; *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    if (model) {
        h = (h ^ 0x100) * 1099511628211ULL;
        for (const unsigned char *p = (const unsigned char *)model; *p; p++)
            h = (h ^ *p) * 1099511628211ULL;
    }
    return h ? h : 1;
}

static gq_key_t *lookup(const gq_limiter_t *lim, const char *tenant, const char *model)
{
    if (!lim || !lim->cap) return NULL;
    uint64_t h = key_hash(tenant, model);
    for (size_t i = h & (lim->cap - 1);; i = (i + 1) & (lim->cap - 1)) {
        gq_key_t *k = lim->slots[i];
        if (!k) return NULL;
        if (k->hash == h && strcmp(k->tenant, tenant) == 0 &&
            (model ? k->model && strcmp(k->model, model) == 0 : !k->model))
            return k;
    }
}

static bucket_t *bucket_new(void)
{
    size_t size = (sizeof(bucket_t) + 63) / 64 * 64; /* whole cache lines, not shared */
    bucket_t *b = aligned_alloc(64, size);
    if (!b) return NULL;
    memset(b, 0, size);
    atomic_init(&b->mu, 0);
    atomic_init(&b->refs, 1);
    return b;
}

static void bucket_unref(bucket_t *b)
{
    if (b && atomic_fetch_sub(&b->refs, 1) == 1) {
        free(b);
    }
}

static int insert(gq_limiter_t *lim, gq_key_t *k)
{
    if ((lim->n + 1) * 2 > lim->cap) {
        size_t cap = lim->cap ? lim->cap * 2 : 16;
        gq_key_t **slots = calloc(cap, sizeof(*slots));
        if (!slots) return -1;
        for (size_t i = 0; i < lim->cap; i++) {
            gq_key_t *o = lim->slots[i];
            if (!o) continue;
            size_t j = o->hash & (cap - 1);
            while (slots[j]) j = (j + 1) & (cap - 1);
            slots[j] = o;
        }
        free(lim->slots);
        lim->slots = slots;
        lim->cap = cap;
    }
    size_t j = k->hash & (lim->cap - 1);
    while (lim->slots[j]) j = (j + 1) & (lim->cap - 1);
    lim->slots[j] = k;
    lim->n++;
    return 0;
}

gq_limiter_t *gq_limiter_new(const gq_limiter_t *prev)
{
    gq_limiter_t *lim = calloc(1, sizeof(*lim));
    if (!lim) return NULL;
    lim->prev = prev;
    return lim;
}

static int valid_id(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    return n > 0 && n <= GQ_MAX_ID_LEN;
}

static gq_key_t *key_get(gq_limiter_t *lim, const char *tenant, const char *model)
{
    gq_key_t *k = lookup(lim, tenant, model);
    if (k) return k;
    k = calloc(1, sizeof(*k));
    if (!k) return NULL;
    k->tenant = strdup(tenant);
    k->model = model ? strdup(model) : NULL;
    k->hash = key_hash(tenant, model);
    gq_key_t *old = lookup(lim->prev, tenant, model);
    if (old) {
        k->b = old->b;
        atomic_fetch_add(&k->b->refs, 1);
    } else {
        k->b = bucket_new();
    }
    if (!k->tenant || (model && !k->model) || !k->b || insert(lim, k) < 0) {
        bucket_unref(k->b);
        free(k->tenant);
        free(k->model);
        free(k);
        return NULL;
    }
    return k;
}

int gq_limiter_set(gq_limiter_t *lim, const char *tenant, const char *model,
                   const gq_limits_t *limits)
{
    if (!lim || !valid_id(tenant) || (model && !valid_id(model)) || gq_limits_check(limits, NULL))
        return -1;
    gq_key_t *t = key_get(lim, tenant, NULL);
    if (!t) return -1;
    if (!model) {
        t->limits = *limits;
        return 0;
    }
    gq_key_t *k = key_get(lim, tenant, model);
    if (!k) return -1;
    k->limits = *limits;
    k->parent = t;
    return 0;
}

void gq_limiter_free(gq_limiter_t *lim)
{
    if (!lim) return;
    for (size_t i = 0; i < lim->cap; i++) {
        gq_key_t *k = lim->slots[i];
        if (!k) continue;
        bucket_unref(k->b);
        free(k->tenant);
        free(k->model);
        free(k);
    }
    free(lim->slots);
    free(lim);
}

static int limits_empty(const gq_limits_t *l)
{
    return !l->rpm && !l->tpm && !l->tpd && !l->concurrent;
}

const gq_key_t *gq_find(const gq_limiter_t *lim, const char *tenant, const char *model)
{
    if (!tenant) return NULL;
    if (model) {
        const gq_key_t *k = lookup(lim, tenant, model);
        if (k) return k;
    }
    const gq_key_t *k = lookup(lim, tenant, NULL);
    return k && !limits_empty(&k->limits) ? k : NULL;
}

static int levels(const gq_key_t *key, const gq_key_t *lv[2])
{
    if (key->parent) {
        lv[0] = key->parent;
        lv[1] = key;
        return 2;
    }
    lv[0] = key;
    lv[1] = NULL;
    return 1;
}

int gq_key_levels(const gq_key_t *key, gq_level_info_t out[2])
{
    const gq_key_t *lv[2];
    int n = levels(key, lv);
    for (int i = 0; i < n; i++) {
        out[i].tenant = lv[i]->tenant;
        out[i].model = lv[i]->model;
        out[i].limits = &lv[i]->limits;
    }
    return n;
}

/* The figures of one level (the caller holds the lock and has pruned the windows). */
static void figures(const gq_key_t *k, int64_t now, int64_t day, gq_level_fig_t *f)
{
    const gq_limits_t *l = &k->limits;
    bucket_t *b = k->b;
    memset(f, 0, sizeof(*f));
    if (l->rpm) {
        f->req_remaining = w_remaining(&b->req, l->rpm);
        f->req_reset_ms = w_reset(&b->req, now);
    }
    if (l->tpm) {
        f->tok_remaining = w_remaining(&b->tok, l->tpm);
        f->tok_reset_ms = w_reset(&b->tok, now);
    }
    if (l->tpd) {
        int64_t used = b->day >= day ? b->used : 0;
        f->day_remaining = used >= l->tpd ? 0 : l->tpd - used;
    }
    if (l->concurrent) f->conc_in_use = b->in_use;
}

static void lock_levels(const gq_key_t *const lv[2], int n)
{
    for (int i = 0; i < n; i++) lock_take(&lv[i]->b->mu);
}

static void unlock_levels(const gq_key_t *const lv[2], int n)
{
    for (int i = n - 1; i >= 0; i--) lock_give(&lv[i]->b->mu);
}

/* Moves a level's windows and day to now; returns the second to count in. */
static int64_t advance(const gq_key_t *k, int64_t now, int64_t day)
{
    const gq_limits_t *l = &k->limits;
    bucket_t *b = k->b;
    int64_t sec = sec_of(now), s1 = sec, s2 = sec;
    if (l->rpm) s1 = w_prune(&b->req, sec);
    if (l->tpm) s2 = w_prune(&b->tok, sec);
    if (l->tpd && day > b->day) { /* a new UTC day (never back: a stale clock keeps today) */
        b->day = day;
        b->used = 0;
    }
    return s1 > s2 ? s1 : s2;
}

int gq_admit(const gq_key_t *key, int64_t now, int64_t est, gq_decision_t *d, gq_ticket_t *t)
{
    const gq_key_t *lv[2];
    int n = levels(key, lv);
    est = clamp(est, 0, GQ_MAX_LIMIT);
    int64_t day = gq_utc_day(now), sec = sec_of(now);
    gq_reason_t why = GQ_OK;
    int wlevel = 0;
    int64_t retry = 0;
    gq_level_fig_t fig[2];
    const gq_limits_t *lims[2] = {&lv[0]->limits, n > 1 ? &lv[1]->limits : NULL};

    lock_levels(lv, n);
    for (int i = 0; i < n; i++) {
        int64_t s = advance(lv[i], now, day);
        if (s > sec) sec = s;
    }
    for (int i = 0; i < n; i++) {
        const gq_limits_t *l = &lv[i]->limits;
        bucket_t *b = lv[i]->b;
        for (int which = 0; which < 4; which++) {
            gq_reason_t w = GQ_OK;
            int64_t r = 0;
            if (which == 0 && l->rpm) {
                if (!w_fits(&b->req, l->rpm, 1)) {
                    w = GQ_RPM;
                    r = w_retry(&b->req, l->rpm, 1, now);
                }
            } else if (which == 1 && l->tpm) {
                if (!w_fits(&b->tok, l->tpm, est)) {
                    w = GQ_TPM;
                    r = w_retry(&b->tok, l->tpm, est, now);
                }
            } else if (which == 2 && l->tpd) {
                if (!d_fits(b->used, l->tpd, est)) {
                    w = GQ_TPD;
                    r = gq_until_utc_midnight(now);
                }
            } else if (which == 3 && l->concurrent) {
                if (b->in_use >= l->concurrent) {
                    w = GQ_CONC;
                    r = GQ_CONC_RETRY_MS;
                }
            }
            if (w == GQ_OK || why == GQ_TPD) continue;
            if (w == GQ_TPD || why == GQ_OK || r > retry) {
                why = w;
                wlevel = i;
                retry = r;
            }
        }
    }
    if (why == GQ_OK) {
        for (int i = 0; i < n; i++) {
            const gq_limits_t *l = &lv[i]->limits;
            bucket_t *b = lv[i]->b;
            if (l->rpm) w_add(&b->req, sec, 1);
            if (l->tpm) w_add(&b->tok, sec, est);
            if (l->tpd) b->used = clamp(b->used + est, 0, D_MAX);
            if (l->concurrent) b->in_use++;
        }
    }
    for (int i = 0; i < n; i++) figures(lv[i], now, day, &fig[i]);
    unlock_levels(lv, n);

    memset(d, 0, sizeof(*d));
    d->allowed = why == GQ_OK;
    d->reason = why;
    d->level = why == GQ_OK ? 0 : wlevel;
    d->retry_after_ms = why == GQ_OK ? 0 : retry;
    d->now_ms = now;
    gq_state_merge(&d->state, n, lims, fig, now);
    if (why != GQ_OK) return 0;
    if (t) {
        memset(t, 0, sizeof(*t));
        t->key = key;
        t->reserved = est;
        t->sec = sec;
        t->day = day;
        for (int i = 0; i < n; i++) t->slot_taken[i] = lv[i]->limits.concurrent != 0;
    }
    return 1;
}

void gq_settle(const gq_ticket_t *t, int64_t now, int64_t actual)
{
    if (!t || !t->key) return;
    const gq_key_t *lv[2];
    int n = levels(t->key, lv);
    int64_t diff = clamp(actual, 0, GQ_MAX_LIMIT) - t->reserved, day = gq_utc_day(now);
    lock_levels(lv, n);
    for (int i = 0; i < n; i++) {
        const gq_limits_t *l = &lv[i]->limits;
        bucket_t *b = lv[i]->b;
        int64_t sec = advance(lv[i], now, day);
        if (l->tpm && diff) w_adjust(&b->tok, t->sec, diff, sec);
        if (l->tpd && diff && b->day == t->day) b->used = clamp(b->used + diff, 0, D_MAX);
        if (t->slot_taken[i] && b->in_use > 0) b->in_use--;
    }
    unlock_levels(lv, n);
}

void gq_state(const gq_key_t *key, int64_t now, gq_state_t *s)
{
    const gq_key_t *lv[2];
    int n = levels(key, lv);
    int64_t day = gq_utc_day(now);
    gq_level_fig_t fig[2];
    const gq_limits_t *lims[2] = {&lv[0]->limits, n > 1 ? &lv[1]->limits : NULL};
    lock_levels(lv, n);
    for (int i = 0; i < n; i++) {
        advance(lv[i], now, day);
        figures(lv[i], now, day, &fig[i]);
    }
    unlock_levels(lv, n);
    gq_state_merge(s, n, lims, fig, now);
}

/* ---- usage ---- */

const gq_key_t *gq_find_tenant(const gq_limiter_t *lim, const char *tenant)
{
    return tenant ? lookup(lim, tenant, NULL) : NULL;
}

int gq_key_limited(const gq_key_t *key)
{
    return key &&
           (!limits_empty(&key->limits) || (key->parent && !limits_empty(&key->parent->limits)));
}

size_t gq_tenants(const gq_limiter_t *lim, const char **out, size_t max)
{
    size_t n = 0;
    for (size_t j = 0; lim && j < lim->cap && (!out || n < max); j++) {
        const gq_key_t *k = lim->slots[j];
        if (k && !k->model) {
            if (out) out[n] = k->tenant;
            n++;
        }
    }
    return n;
}

int gq_usage_add(const gq_key_t *key, int64_t now, int64_t prompt, int64_t completion,
                 gq_usage_t *flush)
{
    const gq_key_t *t = key->parent ? key->parent : key;
    bucket_t *b = t->b;
    int64_t day = gq_utc_day(now);
    int out = 0;
    prompt = clamp(prompt, 0, GQ_MAX_LIMIT);
    completion = clamp(completion, 0, GQ_MAX_LIMIT);
    lock_take(&b->mu);
    gq_usage_t *u = &b->days[day % GQ_USAGE_DAYS];
    if (u->day != day) *u = (gq_usage_t){.day = day};
    u->requests++;
    u->prompt_tokens = clamp(u->prompt_tokens + prompt, 0, D_MAX);
    u->completion_tokens = clamp(u->completion_tokens + completion, 0, D_MAX);
    if (b->pending.requests && b->pending.day != day) {
        *flush = b->pending;
        out = 1;
        memset(&b->pending, 0, sizeof(b->pending));
        b->pending_since = 0;
    }
    if (!b->pending.requests) b->pending.day = day;
    b->pending.requests++;
    b->pending.prompt_tokens = clamp(b->pending.prompt_tokens + prompt, 0, D_MAX);
    b->pending.completion_tokens = clamp(b->pending.completion_tokens + completion, 0, D_MAX);
    lock_give(&b->mu);
    return out;
}

int gq_usage_take(const gq_key_t *key, int64_t mono, int force, gq_usage_t *out)
{
    const gq_key_t *t = key->parent ? key->parent : key;
    bucket_t *b = t->b;
    int got = 0;
    lock_take(&b->mu);
    if (b->pending.requests && !b->pending_since) b->pending_since = mono;
    if (b->pending.requests && (force || mono - b->pending_since >= GQ_USAGE_FLUSH_MS)) {
        *out = b->pending;
        memset(&b->pending, 0, sizeof(b->pending));
        b->pending_since = 0;
        got = 1;
    }
    lock_give(&b->mu);
    return got;
}

int gq_usage_get(const gq_limiter_t *lim, const char *tenant, int64_t day, gq_usage_t *out)
{
    const gq_key_t *t = gq_find_tenant(lim, tenant);
    memset(out, 0, sizeof(*out));
    out->day = day;
    if (!t) return 0;
    lock_take(&t->b->mu);
    const gq_usage_t *u = &t->b->days[day % GQ_USAGE_DAYS];
    int have = u->day == day && u->requests;
    if (have) *out = *u;
    lock_give(&t->b->mu);
    return have;
}

/* ---- leases ---- */

static atomic_uint lease_gens = 1;

int gq_leasable(const gq_key_t *key)
{
    const gq_key_t *lv[2];
    int n = levels(key, lv);
    for (int i = 0; i < n; i++)
        if (lv[i]->limits.concurrent) return 0;
    return 1;
}

static int lease_live(const lease_t *ls, int64_t mono)
{
    return ls->gen && mono < ls->deadline;
}

/* Does level k's lease cover a request of est tokens? */
static int lease_covers(const gq_key_t *k, int64_t mono, int64_t est)
{
    const gq_limits_t *l = &k->limits;
    const lease_t *ls = &k->b->lease;
    if (!lease_live(ls, mono)) return 0;
    int64_t c = est > 1 ? est : 1;
    if (est > l->tpm && l->tpm) return 0; /* oversize: only Redis can tell the window is empty */
    if (est > l->tpd && l->tpd) return 0;
    return (!l->rpm || ls->rpm >= 1) && (!l->tpm || ls->tpm >= c) && (!l->tpd || ls->tpd >= c);
}

/* Adds a rest (sec, n) to what goes back: one second per kind is kept; of two different ones
 * the larger rest goes back and the other stays counted in Redis until its window forgets it
 * (never too little counted). */
static void back_add(int64_t *bsec, int64_t *bn, int64_t sec, int64_t n)
{
    if (!n) return;
    if (*bn && *bsec == sec)
        *bn += n;
    else if (!*bn || n > *bn)
        *bsec = sec, *bn = n;
}

static void lease_to_back(lease_t *ls)
{
    if (!ls->gen) return;
    back_add(&ls->back.rpm_sec, &ls->back.rpm, ls->sec, ls->rpm);
    back_add(&ls->back.tpm_sec, &ls->back.tpm, ls->sec, ls->tpm);
    back_add(&ls->back.day, &ls->back.tpd, ls->day, ls->tpd);
    ls->rpm = ls->tpm = ls->tpd = 0;
    ls->gen = 0;
}

/* Empties a level's lease and what waits to go back into what the next call gives back. */
static void lease_take_back(lease_t *ls, gq_lease_ret_t *r)
{
    lease_to_back(ls);
    *r = ls->back;
    memset(&ls->back, 0, sizeof(ls->back));
}

/* Time to ask for the next lease while this one still serves: its last quarter, in time or
 * in any amount. */
static int lease_ageing(const gq_key_t *k, int64_t mono)
{
    const gq_limits_t *l = &k->limits;
    const lease_t *ls = &k->b->lease;
    return mono >= ls->deadline - GQ_LEASE_MS / 4 || (l->rpm && ls->rpm * 4 < ls->g_rpm) ||
           (l->tpm && ls->tpm * 4 < ls->g_tpm) || (l->tpd && ls->tpd * 4 < ls->g_tpd);
}

int gq_lease_admit(const gq_key_t *key, int64_t mono, int64_t est, gq_decision_t *d, gq_ticket_t *t,
                   int *renew, gq_lease_ret_t ret[2])
{
    const gq_key_t *lv[2];
    int n = levels(key, lv);
    est = clamp(est, 0, GQ_MAX_LIMIT);
    *renew = 0;
    lock_levels(lv, n);
    bucket_t *lb = lv[n - 1]->b;
    if (mono < lb->closed_until) {
        int64_t aged = mono - lb->closed_at;
        *d = lb->closed;
        unlock_levels(lv, n);
        d->retry_after_ms = clamp(d->retry_after_ms - aged, 1, D_MAX);
        d->state.req_reset_ms = clamp(d->state.req_reset_ms - aged, 0, D_MAX);
        d->state.tok_reset_ms = clamp(d->state.tok_reset_ms - aged, 0, D_MAX);
        d->state.day_reset_ms = clamp(d->state.day_reset_ms - aged, 0, D_MAX);
        return -1;
    }
    int covered = 1;
    for (int i = 0; i < n && covered; i++) covered = lease_covers(lv[i], mono, est);
    if (covered) {
        int64_t c = est > 1 ? est : 1;
        gq_level_fig_t fig[2];
        const gq_limits_t *lims[2] = {&lv[0]->limits, n > 1 ? &lv[1]->limits : NULL};
        memset(t, 0, sizeof(*t));
        for (int i = 0; i < n; i++) {
            lease_t *ls = &lv[i]->b->lease;
            const gq_limits_t *l = &lv[i]->limits;
            if (l->rpm) ls->rpm--;
            if (l->tpm) ls->tpm -= c;
            if (l->tpd) ls->tpd -= c;
            /* As the tenant sees it: what Redis had left when it granted, plus what is left of
             * the lease (counted there as used); resets aged since the grant. */
            int64_t aged = mono - ls->granted;
            fig[i] = ls->fig;
            fig[i].req_remaining += ls->rpm;
            fig[i].tok_remaining += ls->tpm;
            fig[i].day_remaining += ls->tpd;
            fig[i].req_reset_ms = clamp(fig[i].req_reset_ms - aged, 0, D_MAX);
            fig[i].tok_reset_ms = clamp(fig[i].tok_reset_ms - aged, 0, D_MAX);
            t->lease_gen[i] = ls->gen;
            t->sec = ls->sec;
            t->day = ls->day;
        }
        /* Renew ahead, in the background: the leases go on serving meanwhile, and what is left
         * of them when the new ones arrive goes back with the call after. */
        bucket_t *leaf = lv[n - 1]->b;
        int ageing = 0;
        for (int i = 0; i < n && !ageing; i++) ageing = lease_ageing(lv[i], mono);
        if (ageing && !leaf->renewing) {
            leaf->renewing = 1;
            *renew = 1;
            for (int i = 0; i < n; i++) {
                ret[i] = lv[i]->b->lease.back;
                memset(&lv[i]->b->lease.back, 0, sizeof(ret[i]));
            }
        }
        unlock_levels(lv, n);
        memset(d, 0, sizeof(*d));
        d->allowed = 1;
        d->now_ms = t->sec * 1000;
        gq_state_merge(&d->state, n, lims, fig, d->now_ms);
        d->state.day_reset_ms = 0;
        t->key = key;
        t->reserved = est;
        return 1;
    }
    bucket_t *leaf = lv[n - 1]->b;
    if (!leaf->renewing) {
        leaf->renewing = 1;
        *renew = 1;
        for (int i = 0; i < n; i++) lease_take_back(&lv[i]->b->lease, &ret[i]);
    }
    unlock_levels(lv, n);
    return 0;
}

void gq_lease_install(const gq_key_t *key, int64_t deadline, const gq_lease_grant_t g[2],
                      const gq_level_fig_t fig[2], gq_ticket_t *t)
{
    const gq_key_t *lv[2];
    int n = levels(key, lv);
    lock_levels(lv, n);
    for (int i = 0; g && i < n; i++) {
        lease_t *ls = &lv[i]->b->lease;
        /* The lease this one replaces (renewed ahead, or installed by another renewal for a
         * tenant-level lease shared with a model key): its rest joins the new lease when it
         * was counted in the same second and day, else goes back with the next call. */
        if (ls->gen && !(ls->sec == g[i].sec && ls->day == g[i].day)) lease_to_back(ls);
        if (!ls->gen) ls->rpm = ls->tpm = ls->tpd = 0;
        ls->g_rpm = g[i].rpm;
        ls->g_tpm = g[i].tpm;
        ls->g_tpd = g[i].tpd;
        ls->sec = g[i].sec;
        ls->day = g[i].day;
        ls->rpm += g[i].rpm;
        ls->tpm += g[i].tpm;
        ls->tpd += g[i].tpd;
        ls->deadline = deadline;
        ls->granted = deadline - GQ_LEASE_MS;
        ls->fig = fig[i];
        ls->gen = atomic_fetch_add(&lease_gens, 1) | 1u; /* never 0 */
        if (t && t->key == key && t->sec == g[i].sec && t->day == g[i].day)
            t->lease_gen[i] = ls->gen;
    }
    lv[n - 1]->b->renewing = 0;
    unlock_levels(lv, n);
}

void gq_lease_refused(const gq_key_t *key, int64_t mono_sent, const gq_decision_t *d)
{
    if (d->allowed || d->reason == GQ_CONC) return;
    const gq_key_t *lv[2];
    int n = levels(key, lv);
    int64_t hold = d->retry_after_ms < GQ_REFUSAL_MS ? d->retry_after_ms : GQ_REFUSAL_MS;
    lock_levels(lv, n);
    bucket_t *lb = lv[n - 1]->b;
    lb->closed = *d;
    lb->closed_at = mono_sent;
    lb->closed_until = mono_sent + hold;
    unlock_levels(lv, n);
}

int gq_lease_settle(const gq_ticket_t *t, int64_t mono, int64_t actual)
{
    if (!t || !t->key) return 1;
    const gq_key_t *lv[2];
    int n = levels(t->key, lv);
    int64_t diff = clamp(actual, 0, GQ_MAX_LIMIT) - t->reserved;
    if (!diff) return 1;
    lock_levels(lv, n);
    int ok = 1;
    for (int i = 0; i < n && ok; i++) {
        const lease_t *ls = &lv[i]->b->lease;
        ok = t->lease_gen[i] && ls->gen == t->lease_gen[i] && lease_live(ls, mono);
    }
    if (ok)
        for (int i = 0; i < n; i++) {
            lease_t *ls = &lv[i]->b->lease;
            if (lv[i]->limits.tpm) ls->tpm -= diff;
            if (lv[i]->limits.tpd) ls->tpd -= diff;
        }
    unlock_levels(lv, n);
    return ok;
}
