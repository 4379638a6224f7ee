/* The in-process quota limiter: GCRA per minute, a UTC-day budget and a concurrency count per
 * key, with an injected clock. The arithmetic mirrors the Lua of scripts.c line for line. */
#include "limiter.h"

#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define P GQ_PERIOD_MS
#define D_MAX 4503599627370496LL /* 2^52: debts are clamped here (Lua does the same) */

/* floor and ceil of a / b for a >= 0, b > 0 */
static int64_t fdiv(int64_t a, int64_t b)
{
    return a / b;
}

static int64_t cdiv(int64_t a, int64_t b)
{
    return a / b + (a % b != 0);
}

static int64_t clamp(int64_t v, int64_t lo, int64_t hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

/* ---- GCRA and day-budget math (see scripts.c for the Lua twin) ---- */

static void g_decay(int64_t *d, int64_t *t, int64_t now, int64_t L)
{
    if (*d == 0) {
        *t = now;
    } else if (now > *t) {
        int64_t el = now - *t;
        if (el >= cdiv(*d, L))
            *d = 0;
        else
            *d -= el * L;
        *t = now;
    }
}

/* Does cost c fit into a GCRA with debt d, rate L, burst B? If not, *retry. */
static int g_fits(int64_t d, int64_t L, int64_t B, int64_t c, int64_t *retry)
{
    int64_t cap = B * P;
    if (c > B) { /* larger than the whole burst: only into an empty bucket */
        if (d == 0) return 1;
        *retry = cdiv(d, L);
        return 0;
    }
    int64_t need = d + (c > 1 ? c : 1) * P;
    if (need <= cap) return 1;
    *retry = cdiv(need - cap, L);
    return 0;
}

static int64_t g_remaining(int64_t d, int64_t B)
{
    int64_t cap = B * P;
    return d >= cap ? 0 : fdiv(cap - d, P);
}

static int d_fits(int64_t used, int64_t T, int64_t est)
{
    if (est > T) return used == 0;
    return used + (est > 1 ? est : 1) <= T;
}

static int64_t burst(int64_t limit, int64_t b)
{
    return b > 0 ? b : limit;
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
    case GQ_CONC: return "rate_limit_exceeded";
    case GQ_TPD: return "insufficient_quota";
    default: return NULL;
    }
}

const char *gq_reason_kind(gq_reason_t why)
{
    switch (why) {
    case GQ_RPM: return "requests";
    case GQ_TPM: return "tokens";
    case GQ_TPD: return "tokens_per_day";
    case GQ_CONC: return "concurrency";
    default: return NULL;
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
    static const char *const names[] = {"requests_per_minute", "requests_burst",
                                        "tokens_per_minute",   "tokens_burst",
                                        "tokens_per_day",      "max_concurrent"};
    const int64_t v[] = {l->rpm, l->rpm_burst, l->tpm, l->tpm_burst, l->tpd, l->concurrent};
    for (size_t i = 0; i < 6; i++)
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
        if (l->rpm && (!s->req_limit || f->req_remaining < s->req_remaining ||
                       (f->req_remaining == s->req_remaining && f->req_reset_ms > s->req_reset_ms))) {
            s->req_limit = l->rpm;
            s->req_remaining = f->req_remaining;
            s->req_reset_ms = f->req_reset_ms;
        }
        if (l->tpm && (!s->tok_limit || f->tok_remaining < s->tok_remaining ||
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

typedef struct bucket {
    lock_t mu;
    atomic_int refs;
    int64_t rd, rt;  /* rpm GCRA: debt, time */
    int64_t td, tt;  /* tpm GCRA */
    int64_t day, used; /* tpd */
    int64_t in_use;    /* concurrency */
} bucket_t;
_Static_assert(sizeof(bucket_t) <= 64, "a bucket fits one cache line");

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
    size_t size = (sizeof(bucket_t) + 63) / 64 * 64; /* one cache line each, at least */
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

/* The figures of one level, its state decayed to now (the caller holds the lock). */
static void figures(const gq_key_t *k, int64_t day, gq_level_fig_t *f)
{
    const gq_limits_t *l = &k->limits;
    bucket_t *b = k->b;
    memset(f, 0, sizeof(*f));
    if (l->rpm) {
        f->req_remaining = g_remaining(b->rd, burst(l->rpm, l->rpm_burst));
        f->req_reset_ms = cdiv(b->rd, l->rpm);
    }
    if (l->tpm) {
        f->tok_remaining = g_remaining(b->td, burst(l->tpm, l->tpm_burst));
        f->tok_reset_ms = cdiv(b->td, l->tpm);
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

int gq_admit(const gq_key_t *key, int64_t now, int64_t est, gq_decision_t *d, gq_ticket_t *t)
{
    const gq_key_t *lv[2];
    int n = levels(key, lv);
    est = clamp(est, 0, GQ_MAX_LIMIT);
    int64_t day = gq_utc_day(now);
    gq_reason_t why = GQ_OK;
    int wlevel = 0;
    int64_t retry = 0;
    gq_level_fig_t fig[2];
    const gq_limits_t *lims[2] = {&lv[0]->limits, n > 1 ? &lv[1]->limits : NULL};

    lock_levels(lv, n);
    for (int i = 0; i < n; i++) {
        const gq_limits_t *l = &lv[i]->limits;
        bucket_t *b = lv[i]->b;
        int64_t r = 0;
        gq_reason_t w = GQ_OK;
        for (int which = 0; which < 4; which++) {
            w = GQ_OK;
            if (which == 0 && l->rpm) {
                g_decay(&b->rd, &b->rt, now, l->rpm);
                if (!g_fits(b->rd, l->rpm, burst(l->rpm, l->rpm_burst), 1, &r)) w = GQ_RPM;
            } else if (which == 1 && l->tpm) {
                g_decay(&b->td, &b->tt, now, l->tpm);
                if (!g_fits(b->td, l->tpm, burst(l->tpm, l->tpm_burst), est, &r)) w = GQ_TPM;
            } else if (which == 2 && l->tpd) {
                if (day > b->day) { /* a new UTC day (never back: a stale clock keeps today) */
                    b->day = day;
                    b->used = 0;
                }
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
            if (l->rpm) b->rd = clamp(b->rd + P, 0, D_MAX);
            if (l->tpm) b->td = clamp(b->td + est * P, 0, D_MAX);
            if (l->tpd) b->used = clamp(b->used + est, 0, D_MAX);
            if (l->concurrent) b->in_use++;
        }
    }
    for (int i = 0; i < n; i++) figures(lv[i], day, &fig[i]);
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
    int64_t diff = clamp(actual, 0, GQ_MAX_LIMIT) - t->reserved;
    lock_levels(lv, n);
    for (int i = 0; i < n; i++) {
        const gq_limits_t *l = &lv[i]->limits;
        bucket_t *b = lv[i]->b;
        if (l->tpm && diff) {
            g_decay(&b->td, &b->tt, now, l->tpm);
            b->td = clamp(b->td + diff * P, 0, D_MAX);
        }
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
        const gq_limits_t *l = &lv[i]->limits;
        bucket_t *b = lv[i]->b;
        if (l->rpm) g_decay(&b->rd, &b->rt, now, l->rpm);
        if (l->tpm) g_decay(&b->td, &b->tt, now, l->tpm);
        figures(lv[i], day, &fig[i]);
    }
    unlock_levels(lv, n);
    gq_state_merge(s, n, lims, fig, now);
}
