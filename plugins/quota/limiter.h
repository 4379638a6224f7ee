/* The quota core: per-tenant (and per tenant+model) limits as pure, clock-injected C.
 *
 * Four limits per key, each optional (0 = unlimited):
 *   requests_per_minute  a sliding window of one-second buckets
 *   tokens_per_minute    the same window, each request weighing its token estimate
 *   tokens_per_day       a budget that resets at 00:00 UTC
 *   max_concurrent       requests admitted and not yet settled
 *
 * The window: a request admitted in second s counts until second s + W (W = GQ_WINDOW_S, 61,
 * for the in-process store), that is for more than 60 s and at most 61 s. So in ANY interval of
 * 60 seconds a key admits at most its per-minute limit: there is no burst at a window edge, and
 * a fresh tenant saturating its limit gets exactly the limit in its first minute. (The price:
 * a tenant that saturates its limit for long gets N per 60-61 s, not per 60.) The window keeps a
 * running sum and the range [lo, hi] of seconds that may hold counts; buckets are forgotten as
 * the window moves, so each check costs O(1) amortized; only a refusal walks the buckets, to
 * compute the exact retry time (when enough old buckets have expired).
 *
 * Rules common to both stores:
 *   - A request needs room for max(est, 1) tokens in tpm and tpd.
 *   - A request whose estimate exceeds a whole limit (est > tpm, est > tpd) is admitted only
 *     when that limit is entirely unused, and charged in full (it never waits forever).
 *   - Refused: insufficient_quota when any tpd refuses (retry: until 00:00 UTC); otherwise
 *     rate_limit_exceeded for the refusing limit with the longest retry_after.
 *   - Settlement adds actual - reserved to the admission's tpm bucket (when it has expired
 *     meanwhile, a long stream: a positive rest goes to the current bucket) and to tpd (only if
 *     still the same UTC day as the admission), and frees the slot.
 *   - The clock never goes back: a key's newest second is the earliest it will count in.
 *
 * Leases (the Redis store, scripts.h): a process takes a share of a key's room from Redis in
 * the same call that admits a request (counted there at once, in the request's bucket), spends
 * it here without a round trip, and gives back what is left with its next call. Shares are an
 * eighth of the room left (tpd: also at most 1/256 of the day), so they shrink to nothing near
 * the limit and each request then goes to Redis: the shared count stays exact. A lease is
 * spent only until GQ_LEASE_MS after the call that took it was sent, and Redis counts with
 * W = GQ_WINDOW_S + 1: a lease counted in second s is spent before s + 2, and counts until
 * s + 62, so the 60-second bound above holds across instances too.
 *
 * Thread safety: a limiter is built single-threaded (gq_limiter_new/set), then only read;
 * each key's state has its own lock (4 bytes, spinning then yielding). Keys with a
 * tenant-level and a model-level part lock the tenant first. State is shared with the limiter
 * a reload replaces (gq_limiter_new(prev)), so a reload neither resets nor leaks counts. A
 * ticket must be settled on the limiter that admitted it, which must stay alive until then.
 */
#ifndef GQ_LIMITER_H
#define GQ_LIMITER_H

#include <stddef.h>
#include <stdint.h>

#define GQ_PERIOD_MS 60000
#define GQ_WINDOW_S 61    /* the in-process window, in one-second buckets */
#define GQ_LEASE_MS 1000  /* a lease is spent only this long after its call was sent */
#define GQ_REFUSAL_MS 100 /* a refusal from Redis is repeated here this long, at most */
#define GQ_DAY_MS 86400000LL
#define GQ_MAX_LIMIT 10000000000LL /* any limit or burst; keeps every value below 2^53 */
#define GQ_MAX_ID_LEN 128          /* tenant ids and model names */
#define GQ_CONC_RETRY_MS 1000      /* retry_after for a concurrency refusal */

typedef struct gq_limits {
    int64_t rpm;
    int64_t tpm;
    int64_t tpd;
    int64_t concurrent;
} gq_limits_t;

typedef enum { GQ_OK = 0, GQ_RPM = 1, GQ_TPM = 2, GQ_TPD = 3, GQ_CONC = 4 } gq_reason_t;

/* "rate_limit_exceeded" (rpm, tpm, concurrency), "insufficient_quota" (tpd), or NULL. */
const char *gq_reason_code(gq_reason_t why);
/* A short label for metrics ({kind}): "requests", "tokens", "tokens_per_day", "concurrency". */
const char *gq_reason_kind(gq_reason_t why);

/* What the x-ratelimit-* headers need, merged over a key's levels (the tighter one wins).
 * A *_limit of 0 means that limit is not configured (send no header for it). Resets are the
 * durations until the limit is full again (tokens, requests) or until 00:00 UTC (day). */
typedef struct gq_state {
    int64_t req_limit, req_remaining, req_reset_ms;
    int64_t tok_limit, tok_remaining, tok_reset_ms;
    int64_t day_limit, day_remaining, day_reset_ms;
    int64_t conc_limit, conc_in_use;
} gq_state_t;

typedef struct gq_decision {
    int allowed;
    gq_reason_t reason; /* GQ_OK when allowed */
    int level;          /* refused by the tenant's limits (0) or the model override's (1) */
    int64_t retry_after_ms;
    int64_t now_ms;   /* the clock the decision used (Redis: the server's) */
    gq_state_t state; /* after the admission (or, refused, as it stands) */
} gq_decision_t;

typedef struct gq_key gq_key_t;

/* What an admission took, to be given back to gq_settle (or gq_redis_settle_cmd). */
typedef struct gq_ticket {
    const gq_key_t *key;
    int64_t reserved; /* tokens reserved */
    int64_t sec;      /* the second (bucket) the tokens were counted in */
    int64_t day;      /* UTC day (days since the epoch) of the admission */
    int slot_taken[2];
    uint32_t lease_gen[2]; /* admitted from (or with) these leases; 0: not */
    char slot[48];         /* Redis: the concurrency slot id */
} gq_ticket_t;

/* One level's raw figures; gq_state_merge turns them into a gq_state_t. */
typedef struct gq_level_fig {
    int64_t req_remaining, req_reset_ms;
    int64_t tok_remaining, tok_reset_ms;
    int64_t day_remaining;
    int64_t conc_in_use;
} gq_level_fig_t;

void gq_state_merge(gq_state_t *s, int nlevels, const gq_limits_t *const lim[],
                    const gq_level_fig_t fig[], int64_t now_ms);

/* Durations as OpenAI writes them in x-ratelimit-reset-* (Go's time.Duration format at
 * millisecond precision): "0s", "120ms", "1s", "1.5s", "6m0s", "1h2m3s". Returns the length
 * (snprintf-like; a 32-byte buffer always suffices). */
int gq_format_duration(char *buf, size_t cap, int64_t ms);
/* retry-after in whole seconds (rounded up, at least 1 when ms > 0). */
int64_t gq_retry_after_seconds(int64_t ms);
int64_t gq_utc_day(int64_t now_ms);
int64_t gq_until_utc_midnight(int64_t now_ms);

/* 0 if the limits are valid (each in [0, GQ_MAX_LIMIT]), else -1 and *field names the bad
 * one ("requests_per_minute", ...). */
int gq_limits_check(const gq_limits_t *l, const char **field);

/* The in-process limiter. */
typedef struct gq_limiter gq_limiter_t;

/* A new, empty limiter; with prev (the one a reload replaces; it must stay alive until the
 * gq_limiter_set calls are done), keys that exist in both share their state. */
gq_limiter_t *gq_limiter_new(const gq_limiter_t *prev);
/* Limits for a tenant (model NULL) or a model override inside a tenant (its requests are held
 * to both). Before the limiter is used only. -1: invalid limits or id, or out of memory. */
int gq_limiter_set(gq_limiter_t *lim, const char *tenant, const char *model,
                   const gq_limits_t *limits);
void gq_limiter_free(gq_limiter_t *lim);

/* The key a request is held to: the tenant's, or its override for this model. NULL when the
 * tenant has no limits. Lock-free; the key lives as long as the limiter. */
const gq_key_t *gq_find(const gq_limiter_t *lim, const char *tenant, const char *model);

/* The levels of a key: [0] the tenant, [1] the model override if any. Returns 1 or 2. */
typedef struct gq_level_info {
    const char *tenant;
    const char *model; /* NULL at the tenant level */
    const gq_limits_t *limits;
} gq_level_info_t;
int gq_key_levels(const gq_key_t *key, gq_level_info_t out[2]);

/* Admit a request estimated at est_tokens at time now_ms. Allowed: reserves the tokens and a
 * concurrency slot, fills *t, returns 1. Refused: nothing is taken, returns 0. */
int gq_admit(const gq_key_t *key, int64_t now_ms, int64_t est_tokens, gq_decision_t *d,
             gq_ticket_t *t);
/* Settle an admission: charge actual - reserved, free the slot. Exactly once per ticket. */
void gq_settle(const gq_ticket_t *t, int64_t now_ms, int64_t actual_tokens);
/* The key's state now, without taking anything. */
void gq_state(const gq_key_t *key, int64_t now_ms, gq_state_t *s);

/* ---- usage: per tenant and UTC day, what its served requests used ---- */

#define GQ_USAGE_DAYS 8        /* days kept in the process */
#define GQ_USAGE_FLUSH_MS 1000 /* Redis store: a process sends its counts at least this often */

typedef struct gq_usage {
    int64_t day; /* days since the epoch (UTC) */
    int64_t requests, prompt_tokens, completion_tokens;
} gq_usage_t;

/* Counts a served request at the tenant level of key: in the process's days, and (pending)
 * in what goes to Redis next. When the pending counts are of an earlier day, they are moved
 * to *flush first and 1 is returned: send them. */
int gq_usage_add(const gq_key_t *key, int64_t now_ms, int64_t prompt, int64_t completion,
                 gq_usage_t *flush);
/* The pending counts, when the oldest is GQ_USAGE_FLUSH_MS old (mono, a monotonic clock) or
 * force is set: moved to *out, 1. Else 0. */
int gq_usage_take(const gq_key_t *key, int64_t mono, int force, gq_usage_t *out);
/* This process's counts of a tenant on a day: 1 if it has them (zeros otherwise). */
int gq_usage_get(const gq_limiter_t *lim, const char *tenant, int64_t day, gq_usage_t *out);
/* The tenants a limiter knows, for reports: up to max ids into out; how many (out NULL: how
 * many there are). */
size_t gq_tenants(const gq_limiter_t *lim, const char **out, size_t max);
/* The tenant-level key of a tenant (with or without limits); NULL if unknown. */
const gq_key_t *gq_find_tenant(const gq_limiter_t *lim, const char *tenant);
/* Has the key (and its tenant) any limit at all? */
int gq_key_limited(const gq_key_t *key);

/* ---- leases (the Redis store; see the top of this file) ---- */

/* What a renewal gives back to Redis, per level: the unspent rest of each lease (negative: a
 * settlement charged more than the lease had left) with the bucket or day it was counted in. */
typedef struct gq_lease_ret {
    int64_t rpm_sec, rpm, tpm_sec, tpm, day, tpd;
} gq_lease_ret_t;

/* What an admission with leases granted, per level (scripts.h fills it from the reply). */
typedef struct gq_lease_grant {
    int64_t sec, day;
    int64_t rpm, tpm, tpd;
} gq_lease_grant_t;

/* Can a key lease at all? (Not with max_concurrent at any level: slots are per request.) */
int gq_leasable(const gq_key_t *key);
/* Admit from the leases at mono_ms (a monotonic clock). 1: admitted, *d and *t filled, nothing
 * to send; if *renew is set the leases are ageing and the caller sends a renewal that admits
 * nothing (lease 2), giving back ret[level], and calls gq_lease_install with its answer.
 * -1: refused here, *d filled: Redis refused this key less than GQ_REFUSAL_MS ago and its
 * retry time has not come (so a flood of refused requests does not become a flood of calls).
 * 0: not covered; then *renew says whether the caller became the one renewal in flight for
 * this key (it sends an admission with leases, giving back ret[level], and calls
 * gq_lease_install once it has the answer, or not), else it sends a plain admission. */
int gq_lease_admit(const gq_key_t *key, int64_t mono_ms, int64_t est, gq_decision_t *d,
                   gq_ticket_t *t, int *renew, gq_lease_ret_t ret[2]);
/* The renewal's end: grants (NULL when it failed) become the leases, spendable until
 * deadline_mono (the monotonic time the call was sent + GQ_LEASE_MS); fig are the reply's
 * figures, for the headers of requests the leases admit. A ticket the renewal admitted gets
 * the new leases' generation (so its settlement can fold into them). */
void gq_lease_install(const gq_key_t *key, int64_t deadline_mono, const gq_lease_grant_t g[2],
                      const gq_level_fig_t fig[2], gq_ticket_t *t);
/* Redis refused a request of this key (sent at mono_sent): repeat the refusal here for a while
 * (not for concurrency, whose slots free at any moment). */
void gq_lease_refused(const gq_key_t *key, int64_t mono_sent, const gq_decision_t *d);
/* Settle a ticket into the leases it came from, when they are all still live: 1 done;
 * 0 the caller sends a settlement to Redis. */
int gq_lease_settle(const gq_ticket_t *t, int64_t mono_ms, int64_t actual);

#endif
