/* The balancer's arithmetic (balance.c): pure functions of numbers, unit-tested without a loop. */
#ifndef GW_BALANCE_MATH_H
#define GW_BALANCE_MATH_H

#include <stdint.h>

#define GW_LB_SLOW_MIN 64 /* of 1024: the smallest share a slow-starting backend gets */

/* Slow start: the share (of 1024) of a backend re-admitted at from_us and at full weight at
 * until_us, growing linearly from GW_LB_SLOW_MIN; full (1024) from until_us on. */
static inline unsigned gw_lb_slow_share(uint64_t from_us, uint64_t until_us, uint64_t now_us)
{
    if (until_us <= now_us) return 1024;
    if (until_us <= from_us || now_us <= from_us) return GW_LB_SLOW_MIN;
    uint64_t s = (now_us - from_us) * 1024 / (until_us - from_us);
    return s < GW_LB_SLOW_MIN ? GW_LB_SLOW_MIN : (unsigned)s;
}

/* The requests a backend with max_concurrent (> 0) may have in flight at this share: at
 * least one. */
static inline int64_t gw_lb_cap(int64_t max_concurrent, unsigned share)
{
    int64_t cap = max_concurrent * (int64_t)share / 1024;
    return cap < 1 ? 1 : cap;
}

/* The load that least outstanding and power of two compare: in flight plus the one to come,
 * scaled by the share (a backend at half its slow start looks twice as loaded), per unit of
 * weight (as nginx's least_conn takes weights into account; equal weights keep plain least
 * outstanding). weight >= 1, share in 1..1024. */
static inline uint64_t gw_lb_weighted_load(int load, unsigned share, int64_t weight)
{
    uint64_t scaled = ((uint64_t)(load < 0 ? 0 : load) + 1) * 1024 * 1024 / share;
    return scaled / (uint64_t)weight;
}

/* Power of two choices: of two backends with loads la and lb (gw_lb_weighted_load), 0 for the
 * first, 1 for the second: never the more loaded one; a tie goes by coin's lowest bit. */
static inline int gw_lb_two_choices(uint64_t la, uint64_t lb, uint64_t coin)
{
    if (la == lb) return coin & 1 ? 0 : 1;
    return la < lb ? 0 : 1;
}

/* Smooth weighted round robin (nginx's), one pick: every backend with room is offered with its
 * current weight *cur and its effective weight (gw_lb_wrr_weight); each gains its weight, the
 * one with the highest current weight (the first on ties) is chosen, and it loses the total
 * (gw_lb_swrr_done). */
typedef struct gw_lb_swrr {
    int64_t total, best_cur;
    long best;      /* the chosen one's position among those offered, -1: none yet */
    int64_t *chose; /* its current weight */
} gw_lb_swrr_t;

static inline void gw_lb_swrr_start(gw_lb_swrr_t *s)
{
    *s = (gw_lb_swrr_t){0, 0, -1, 0};
}

/* Offers the backend at position i; 1 when it is the best so far. */
static inline int gw_lb_swrr_offer(gw_lb_swrr_t *s, long i, int64_t *cur, int64_t weight)
{
    *cur += weight;
    s->total += weight;
    if (s->best >= 0 && *cur <= s->best_cur) return 0;
    s->best = i;
    s->best_cur = *cur;
    s->chose = cur;
    return 1;
}

/* The pick is over: the position chosen (-1: none was offered). */
static inline long gw_lb_swrr_done(gw_lb_swrr_t *s)
{
    if (s->best >= 0) *s->chose -= s->total;
    return s->best;
}

/* The weight a backend is offered with in the round robin: its weight (1..1000) at its share
 * of slow start, at least 1. */
static inline int64_t gw_lb_wrr_weight(int64_t weight, unsigned share)
{
    int64_t w = weight * (int64_t)share / 1024;
    return w < 1 ? 1 : w;
}

/* Queue-aware scoring from a backend's scraped metrics (vLLM: running, waiting, KV-cache use in
 * per mille) plus what this gateway did since the scrape: the estimated queue is the scraped
 * running + waiting + (load now - load at the scrape), never below load; per slot of capacity
 * (cap, at least 1), plus a quarter of the KV-cache use; scaled by the slow-start share and
 * divided by the weight (slots are not speed: the operator's weight says how much faster a
 * backend is). Lower is better. */
typedef struct gw_lb_scraped {
    int64_t running, waiting; /* the backend's queue at the scrape */
    int64_t inflight;         /* this gateway's requests to it at the scrape */
    int64_t cap;              /* the slots it has shown it has */
    int64_t cache_pm;         /* KV-cache use, per mille */
} gw_lb_scraped_t;

static inline uint64_t gw_lb_queue_score(const gw_lb_scraped_t *m, int load, unsigned share,
                                         int64_t weight)
{
    int64_t est = m->running + m->waiting + (load - m->inflight);
    if (est < load) est = load;
    int64_t cap = m->cap < 1 ? 1 : m->cap;
    uint64_t score = (uint64_t)((est + 1) * 1000 / cap) + (uint64_t)m->cache_pm / 4;
    if (share != 1024) score = score * 1024 / share;
    return score / (uint64_t)weight;
}

/* Are a backend's metrics scraped at at_us (0: never) fresh enough at now_us to score it, with
 * a scrape every interval_ms? Three intervals and 100 ms of slack. */
static inline int gw_lb_metrics_fresh(uint64_t at_us, uint64_t now_us, int64_t interval_ms)
{
    uint64_t stale = 3 * (uint64_t)interval_ms * 1000 + 100000;
    return at_us && !(now_us > at_us && now_us - at_us > stale);
}

#endif
