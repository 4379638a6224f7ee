/* Load balancing: choosing a backend per request, per-pool wait queues, passive health. */
#include "proxy/balance.h"

#include "base/clock.h"

#include <stdlib.h>
#include <string.h>

#include "proxy/balance_math.h"
#include "proxy/health.h"
#include "config/live.h"
#include "base/log.h"

#define QUEUE_TICK_US 5000 /* waiters look for a slot freed by another worker this often */

/* The requests of one tenant waiting for one pool, oldest first. The pool is its live state
 * and the tenant its id (the head's), so that the requests of an old snapshot and of the new
 * one wait in one line after a reload. */
typedef struct tq {
    gw_pool_live_t *pool;
    gw_req_t *head, *tail;
} tq_t;

struct gw_balance_worker {
    gw_worker_t *w;
    gw_config_t *cfg; /* the snapshot wrr is sized for (a reference) */
    int64_t *wrr;     /* smooth weighted round robin: current weight by backend index */
    tq_t *q;          /* one FIFO per (pool, tenant) with waiters; served round robin */
    size_t nq, capq, rr, waiting;
    atomic_int evictions; /* this worker's waiters whose places other requests took (any thread) */
    struct event *tick;
    gw_health_t *health; /* worker 0 only */
};

/* ------------------------------------------------------------------ choosing */

enum { C_NO, C_FULL, C_ROOM };

/* May b (index i of the pool) take r now? Its load and share (slow start) when it may. */
static inline int candidate(const gw_req_t *r, gw_backend_t *b, size_t i, uint64_t now, int *load,
                            unsigned *share)
{
    if (r->vetoed[i] || !atomic_load_explicit(&b->live->healthy, memory_order_relaxed)) return C_NO;
    *load = atomic_load_explicit(&b->live->inflight, memory_order_relaxed);
    *share = 1024;
    uint64_t su = atomic_load_explicit(&b->live->lb.slow_until_us, memory_order_relaxed);
    if (su > now)
        *share = gw_lb_slow_share(
            atomic_load_explicit(&b->live->lb.slow_from_us, memory_order_relaxed), su, now);
    /* The live cap, not the snapshot's: a request waiting through a reload gets the new one. */
    int64_t mc = atomic_load_explicit(&b->live->max_concurrent, memory_order_relaxed);
    if (mc && *load >= gw_lb_cap(mc, *share)) return C_FULL;
    return C_ROOM;
}

/* candidate() for the algorithms that take only backends with room: notes a full one in
 * *full (so the request may wait in the queue). */
static inline int has_room(const gw_req_t *r, gw_backend_t *b, size_t i, uint64_t now, int *load,
                           unsigned *share, int *full)
{
    int c = candidate(r, b, i, now, load, share);
    *full |= c == C_FULL;
    return c == C_ROOM;
}

/* The backend's weight (1..1000) of the config in service (live, as max_concurrent). */
static inline int64_t weight_of(const gw_backend_t *b)
{
    int64_t w = atomic_load_explicit(&b->live->weight, memory_order_relaxed);
    return w > 0 ? w : 1;
}

/* The load that least_outstanding and power_of_two compare (gw_lb_weighted_load). */
static inline uint64_t weighted(const gw_backend_t *b, int load, unsigned share)
{
    return gw_lb_weighted_load(load, share, weight_of(b));
}

static gw_backend_t *least_outstanding(gw_req_t *r, uint64_t now, int *full)
{
    gw_pool_t *p = r->pool;
    gw_backend_t *bs = p->backends.items, *best = NULL;
    size_t n = p->backends.n;
    uint64_t best_load = 0;
    size_t start = r->w->rr++ % n; /* ties go round */
    for (size_t k = 0; k < n; k++) {
        size_t i = start + k < n ? start + k : start + k - n;
        int load;
        unsigned share;
        if (!has_room(r, &bs[i], i, now, &load, &share, full)) continue;
        uint64_t l = weighted(&bs[i], load, share);
        if (!best || l < best_load) {
            best = &bs[i];
            best_load = l;
        }
    }
    return best;
}

static gw_backend_t *power_of_two(gw_req_t *r, uint64_t now, int *full)
{
    gw_pool_t *p = r->pool;
    gw_backend_t *bs = p->backends.items, *a = NULL, *b = NULL;
    uint64_t la = 0, lb = 0;
    size_t seen = 0;
    /* Two uniform choices among the backends with room (reservoir sampling, one pass). */
    for (size_t i = 0; i < p->backends.n; i++) {
        int load;
        unsigned share;
        if (!has_room(r, &bs[i], i, now, &load, &share, full)) continue;
        uint64_t l = weighted(&bs[i], load, share);
        seen++;
        if (seen == 1)
            a = &bs[i], la = l;
        else if (seen == 2)
            b = &bs[i], lb = l;
        else {
            uint64_t x = gw_worker_random(r->w) % seen;
            if (x == 0)
                a = &bs[i], la = l;
            else if (x == 1)
                b = &bs[i], lb = l;
        }
    }
    if (!b) return a;
    return gw_lb_two_choices(la, lb, la == lb ? gw_worker_random(r->w) : 0) ? b : a;
}

static gw_backend_t *weighted_round_robin(gw_req_t *r, uint64_t now, int *full)
{
    struct gw_balance_worker *bw = r->w->bal;
    if (!bw || bw->cfg != r->cfg || !bw->wrr) return least_outstanding(r, now, full);
    gw_pool_t *p = r->pool;
    gw_backend_t *bs = p->backends.items;
    gw_lb_swrr_t s;
    /* nginx's smooth weighted round robin over the backends with room. */
    gw_lb_swrr_start(&s);
    for (size_t i = 0; i < p->backends.n; i++) {
        int load;
        unsigned share;
        if (!has_room(r, &bs[i], i, now, &load, &share, full)) continue;
        gw_lb_swrr_offer(&s, (long)i, &bw->wrr[bs[i].index],
                         gw_lb_wrr_weight(weight_of(&bs[i]), share));
    }
    long best = gw_lb_swrr_done(&s);
    return best < 0 ? NULL : &bs[best];
}

static gw_backend_t *queue_aware(gw_req_t *r, uint64_t now, int *full)
{
    gw_pool_t *p = r->pool;
    gw_backend_t *bs = p->backends.items, *best = NULL;
    uint64_t best_score = 0;
    int best_load = 0;
    for (size_t i = 0; i < p->backends.n; i++) {
        int load;
        unsigned share;
        if (!has_room(r, &bs[i], i, now, &load, &share, full)) continue;
        gw_backend_lb_t *lb = &bs[i].live->lb;
        uint64_t at = atomic_load_explicit(&lb->m_at_us, memory_order_acquire);
        /* No recent metrics from a backend with room: least outstanding for this pick. */
        if (!gw_lb_metrics_fresh(at, now, p->metrics.interval_ms))
            return least_outstanding(r, now, full);
        /* The scraped queue, plus what this gateway sent (or saw end) since the scrape. */
        gw_lb_scraped_t m = {(int64_t)atomic_load_explicit(&lb->m_running, memory_order_relaxed),
                             (int64_t)atomic_load_explicit(&lb->m_waiting, memory_order_relaxed),
                             (int64_t)atomic_load_explicit(&lb->m_inflight, memory_order_relaxed),
                             (int64_t)atomic_load_explicit(&lb->m_cap, memory_order_relaxed),
                             (int64_t)atomic_load_explicit(&lb->m_cache_pm, memory_order_relaxed)};
        uint64_t score = gw_lb_queue_score(&m, load, share, weight_of(&bs[i]));
        if (!best || score < best_score || (score == best_score && load < best_load)) {
            best = &bs[i];
            best_score = score;
            best_load = load;
        }
    }
    return best;
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* Rendezvous hashing over the healthy, not vetoed backends: a session stays on its backend
 * while that one is healthy, and only its sessions move when it is not. NULL if it is full. */
static gw_backend_t *affine(gw_req_t *r, uint64_t now, uint64_t key)
{
    gw_pool_t *p = r->pool;
    gw_backend_t *bs = p->backends.items, *best = NULL;
    uint64_t best_h = 0;
    int best_c = C_NO;
    for (size_t i = 0; i < p->backends.n; i++) {
        int load;
        unsigned share;
        int c = candidate(r, &bs[i], i, now, &load, &share);
        if (c == C_NO) continue;
        uint64_t h = mix64(key ^ mix64(i + 1));
        if (!best || h > best_h) {
            best = &bs[i];
            best_h = h;
            best_c = c;
        }
    }
    return best_c == C_ROOM ? best : NULL;
}

static gw_backend_t *pick_now(gw_req_t *r, uint64_t now, int *full)
{
    if (r->affine) {
        gw_backend_t *b = affine(r, now, r->affinity);
        if (b) return b;
    }
    switch (r->pool->algo) {
    case GW_BAL_POWER_OF_TWO:
        return power_of_two(r, now, full);
    case GW_BAL_WRR:
        return weighted_round_robin(r, now, full);
    case GW_BAL_QUEUE_AWARE:
        return queue_aware(r, now, full);
    default:
        return least_outstanding(r, now, full);
    }
}

gw_backend_t *gw_balance_pick(gw_req_t *r, int *full)
{
    *full = 0;
    /* Others wait already: a new request queues behind them (fairness), never jumps ahead. */
    if (r->pool->queue.max &&
        atomic_load_explicit(&r->pool->live->queued, memory_order_relaxed) > 0) {
        *full = 1;
        return NULL;
    }
    return pick_now(r, r->start_us, full);
}

/* ------------------------------------------------------------------ waiting */

static void arm_tick(struct gw_balance_worker *bw)
{
    struct timeval tv = {0, QUEUE_TICK_US};
    if (bw->waiting) evtimer_add(bw->tick, &tv);
}

static const char *tenant_id(const gw_req_t *r)
{
    return r->tenant ? r->tenant->id : "";
}

/* Is r's FIFO q? The same pool (live) and tenant (by id: the head may be of another snapshot). */
static int is_fifo(const tq_t *q, const gw_req_t *r)
{
    return q->pool == r->pool->live && strcmp(tenant_id(q->head), tenant_id(r)) == 0;
}

/* A waiting request's place: in its worker's FIFO (the request's q_next) and in its tenant's
 * line over every worker (the pool's lock), from which a newer tenant may take it. */
struct gw_queue_place {
    struct gw_balance_worker *bw;         /* the worker whose FIFO holds the request */
    struct gw_queue_place *older, *newer; /* in its tenant's line (pool lock) */
    uint64_t bytes;                       /* its body as received (and the tree beside it) */
    int held;                             /* counted in the pool's queue (pool lock) */
    atomic_int evicted; /* given to another tenant: the request gets the full queue's 503 */
    gw_balance_dispatch_fn dispatch; /* sends the request on when it leaves the queue */
};

static size_t share_find(const gw_pool_live_t *pl, const char *id)
{
    size_t t = 0;
    while (t < pl->ntenants && strcmp(pl->tenants[t].id, id) != 0) t++;
    return t;
}

/* Takes place p (of tenant t) out of its line and the pool's counts; a tenant left without a
 * place leaves the table (the last entry moves into t). The pool's lock is held. */
static void place_release(gw_pool_live_t *pl, size_t t, struct gw_queue_place *p)
{
    gw_queue_share_t *s = &pl->tenants[t];
    if (p->older)
        p->older->newer = p->newer;
    else
        s->oldest = p->newer;
    if (p->newer)
        p->newer->older = p->older;
    else
        s->newest = p->older;
    p->older = p->newer = NULL;
    s->n--;
    s->bytes -= (int64_t)p->bytes;
    pl->bytes -= (int64_t)p->bytes;
    atomic_fetch_sub(&pl->queued, 1);
    p->held = 0;
    if (s->n == 0) {
        free(s->id);
        *s = pl->tenants[--pl->ntenants];
    }
}

/* The tenant other than `self` holding the most places (by_bytes: bytes) past `share`, or
 * ntenants when none holds more than its share. */
static size_t most_over(const gw_pool_live_t *pl, size_t self, int by_bytes, int64_t share)
{
    size_t v = pl->ntenants;
    int64_t most = share;
    for (size_t t = 0; t < pl->ntenants; t++) {
        int64_t h = by_bytes ? pl->tenants[t].bytes : pl->tenants[t].n;
        if (t != self && h > most) v = t, most = h;
    }
    return v;
}

/* Gives tenant v's newest place to the request being queued. Its request is answered by its
 * own worker's tick (every 5 ms while it has waiters, at once on this one): 503
 * no_backend_available with retry-after, the answer of a full queue. */
static void evict_newest(gw_pool_live_t *pl, size_t v)
{
    struct gw_queue_place *p = pl->tenants[v].newest;
    place_release(pl, v, p);
    atomic_store(&p->evicted, 1);
    atomic_fetch_add(&p->bw->evictions, 1);
}

/*
 * Takes a place for r in its pool's queue (every worker and snapshot together), or -1:
 *   - at most queue.max places, and at most queue.max_bytes of bodies held;
 *   - with tenants, each tenant has a fair share of places, max(1, queue.max / (n + 1)) (and at
 *     most queue.max_per_tenant when set), and of bytes, queue.max_bytes / (n + 1), with n the
 *     tenants waiting, itself included (the + 1 keeps room for a tenant yet to come). A tenant
 *     at its share of places, or whose body would pass its share of bytes, is refused (its
 *     first waiter may hold more bytes than the share while they are free, as it always has
 *     one place);
 *   - shares are re-divided as tenants come: when the queue is full (places or bytes) and r's
 *     tenant stays within both its shares with r, r takes the newest place of the tenant
 *     holding the most places (bytes) past its share, as often as needed. Such a tenant exists
 *     while the queue is full: the others together hold more than n - 1 shares.
 * Without tenants, the whole queue is one share.
 */
static int queue_take(gw_req_t *r, struct gw_queue_place *place)
{
    gw_pool_t *p = r->pool;
    gw_pool_live_t *pl = p->live;
    const char *id = tenant_id(r);
    int64_t bytes = (int64_t)place->bytes;
    char *new_id = NULL;
    int rc = -1;
    pthread_mutex_lock(&pl->lock);
    size_t t = share_find(pl, id);
    if (t == pl->ntenants) { /* room and a name for a new tenant first: nothing fails later */
        if (pl->ntenants == pl->captenants) {
            size_t cap = pl->captenants ? pl->captenants * 2 : 8;
            gw_queue_share_t *a = realloc(pl->tenants, cap * sizeof(*a));
            if (!a) goto out;
            pl->tenants = a;
            pl->captenants = cap;
        }
        if (!(new_id = strdup(id))) goto out;
    }
    int64_t mine = new_id ? 0 : pl->tenants[t].n, mine_b = new_id ? 0 : pl->tenants[t].bytes;
    int64_t share = p->queue.max, share_b = p->queue.max_bytes;
    if (r->tenant) {
        size_t waiting = pl->ntenants + (new_id != NULL);
        share = p->queue.max / (int64_t)(waiting + 1);
        if (share < 1) share = 1;
        if (p->queue.max_per_tenant && share > p->queue.max_per_tenant)
            share = p->queue.max_per_tenant;
        share_b = p->queue.max_bytes / (int64_t)(waiting + 1);
    }
    if (mine >= share || (mine && mine_b + bytes > share_b)) goto out;
    int may_evict = r->tenant && mine_b + bytes <= share_b;
    for (;;) {
        int by_bytes = atomic_load(&pl->queued) < p->queue.max;
        if (by_bytes && pl->bytes + bytes <= p->queue.max_bytes) break;
        if (!may_evict) goto out;
        size_t v = most_over(pl, t, by_bytes, by_bytes ? share_b : share);
        if (v == pl->ntenants) goto out;
        evict_newest(pl, v);
        if (!new_id) t = share_find(pl, id); /* the table may have moved */
    }
    if (new_id) {
        t = pl->ntenants++;
        pl->tenants[t] = (gw_queue_share_t){new_id, 0, 0, NULL, NULL};
        new_id = NULL;
    }
    gw_queue_share_t *s = &pl->tenants[t];
    place->older = s->newest;
    place->newer = NULL;
    if (s->newest)
        s->newest->newer = place;
    else
        s->oldest = place;
    s->newest = place;
    s->n++;
    s->bytes += bytes;
    pl->bytes += bytes;
    place->held = 1;
    atomic_fetch_add(&pl->queued, 1);
    rc = 0;
out:
    pthread_mutex_unlock(&pl->lock);
    free(new_id);
    return rc;
}

/* Gives r's place back, unless another tenant's request has taken it. */
static void queue_give(gw_req_t *r)
{
    gw_pool_live_t *pl = r->pool->live;
    struct gw_queue_place *p = r->q_place;
    pthread_mutex_lock(&pl->lock);
    if (p->held) {
        size_t t = share_find(pl, tenant_id(r));
        if (t < pl->ntenants) place_release(pl, t, p);
    }
    pthread_mutex_unlock(&pl->lock);
}

int gw_balance_enqueue(gw_req_t *r, gw_balance_dispatch_fn dispatch)
{
    struct gw_balance_worker *bw = r->w->bal;
    gw_pool_t *p = r->pool;
    if (!bw || !p->queue.max || r->w->draining) return -1;
    size_t i = 0;
    while (i < bw->nq && !is_fifo(&bw->q[i], r)) i++;
    if (i == bw->nq && bw->nq == bw->capq) {
        size_t cap = bw->capq ? bw->capq * 2 : 8;
        tq_t *q = realloc(bw->q, cap * sizeof(*q));
        if (!q) return -1;
        bw->q = q;
        bw->capq = cap;
    }
    if (!r->q_place) { /* the same place each time the request waits (after a failed try) */
        r->q_place = gw_arena_calloc(r->arena, sizeof(*r->q_place));
        if (!r->q_place) return -1;
        atomic_init(&r->q_place->evicted, 0);
    }
    struct gw_queue_place *place = r->q_place;
    place->bw = bw;
    place->dispatch = dispatch;
    place->bytes = gw_req_body_length(r);
    atomic_store(&place->evicted, 0);
    if (queue_take(r, place) < 0) return -1;
    if (i == bw->nq) bw->q[bw->nq++] = (tq_t){p->live, NULL, NULL};
    tq_t *q = &bw->q[i];
    if (!r->q_until_us) r->q_until_us = gw_now_us() + (uint64_t)p->queue.timeout_ms * 1000;
    r->q_next = NULL;
    if (q->tail)
        q->tail->q_next = r;
    else
        q->head = r;
    q->tail = r;
    r->queued = 1;
    bw->waiting++;
    if (atomic_load(&bw->evictions))
        event_active(bw->tick, EV_TIMEOUT, 1); /* answer them now */
    else if (!evtimer_pending(bw->tick, NULL))
        arm_tick(bw);
    return 0;
}

/* Removes an emptied FIFO, keeping the round robin's place. */
static void drop_fifo(struct gw_balance_worker *bw, size_t i)
{
    bw->q[i] = bw->q[--bw->nq];
    if (bw->rr > i) bw->rr = i;
}

void gw_balance_dequeue(gw_req_t *r)
{
    struct gw_balance_worker *bw = r->w->bal;
    if (!r->queued || !bw) return;
    for (size_t i = 0; i < bw->nq; i++) {
        tq_t *q = &bw->q[i];
        if (!is_fifo(q, r)) continue;
        gw_req_t **pp = &q->head, *prev = NULL;
        while (*pp && *pp != r) {
            prev = *pp;
            pp = &(*pp)->q_next;
        }
        if (!*pp) break;
        *pp = r->q_next;
        if (q->tail == r) q->tail = prev;
        if (!q->head) drop_fifo(bw, i);
        break;
    }
    r->queued = 0;
    r->q_next = NULL;
    bw->waiting--;
    queue_give(r);
}

static int evicted(const gw_req_t *r)
{
    return atomic_load_explicit(&r->q_place->evicted, memory_order_relaxed);
}

/* Answers this worker's waiters whose places went to other tenants' requests (queue_take, on
 * any worker): out of the queue first, then each its 503. */
static void answer_evicted(struct gw_balance_worker *bw)
{
    gw_req_t *out = NULL;
    for (;;) {
        gw_req_t *r = NULL;
        for (size_t i = 0; i < bw->nq && !r; i++)
            for (gw_req_t *x = bw->q[i].head; x && !r; x = x->q_next)
                if (evicted(x)) r = x;
        if (!r) break;
        gw_balance_dequeue(r);
        r->q_next = out;
        out = r;
    }
    while (out) {
        gw_req_t *r = out;
        out = r->q_next;
        r->q_next = NULL;
        r->q_place->dispatch(r, NULL); /* 503 no_backend_available with retry-after */
    }
}

/* Serves the waiters: one request per (pool, tenant) FIFO in turn while slots are free; a
 * request whose time is up, whose place was taken, or whose pool has no eligible backend left,
 * gets its 503 now. */
static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct gw_balance_worker *bw = arg;
    if (atomic_exchange(&bw->evictions, 0)) answer_evicted(bw);
    size_t stalled = 0;
    while (bw->nq && stalled < bw->nq) {
        size_t i = bw->rr % bw->nq;
        gw_req_t *r = bw->q[i].head;
        uint64_t now = gw_now_us();
        int full = 0;
        gw_backend_t *b = r->q_until_us <= now || evicted(r) ? NULL : pick_now(r, now, &full);
        if (!b && full) {
            bw->rr = i + 1;
            stalled++;
            continue;
        }
        size_t before = bw->nq;
        gw_balance_dequeue(r);
        bw->rr = bw->nq == before ? i + 1 : i; /* next tenant, or the FIFO moved into i */
        stalled = 0;
        r->q_place->dispatch(r, b); /* b NULL: 503 no_backend_available with retry-after */
    }
    if (bw->nq == 0) bw->rr = 0;
    arm_tick(bw);
}

void gw_balance_kick(gw_worker_t *w)
{
    struct gw_balance_worker *bw = w->bal;
    if (bw && bw->waiting) event_active(bw->tick, EV_TIMEOUT, 1);
}

/* ------------------------------------------------------------------ passive health */

void gw_balance_failed(gw_backend_t *b)
{
    gw_pool_t *p = b->pool;
    int n = atomic_fetch_add_explicit(&b->live->lb.fails, 1, memory_order_relaxed) + 1;
    if (!p->health.max_fails || n < p->health.max_fails) return;
    int up = 1;
    if (!atomic_compare_exchange_strong(&b->live->healthy, &up, 0)) return;
    atomic_store(&b->live->lb.down_until_us,
                 gw_now_us() + (uint64_t)p->health.fail_timeout_ms * 1000);
    gw_warn("pool %s: backend %s ejected after %d failures in a row", p->name, b->name, n);
}

void gw_balance_succeeded(gw_backend_t *b)
{
    if (atomic_load_explicit(&b->live->lb.fails, memory_order_relaxed))
        atomic_store_explicit(&b->live->lb.fails, 0, memory_order_relaxed);
}

void gw_balance_readmit(gw_backend_t *b, uint64_t now)
{
    gw_pool_t *p = b->pool;
    atomic_store(&b->live->lb.fails, 0);
    if (p->health.slow_start_ms) {
        atomic_store(&b->live->lb.slow_from_us, now);
        atomic_store(&b->live->lb.slow_until_us, now + (uint64_t)p->health.slow_start_ms * 1000);
    }
    if (!atomic_exchange(&b->live->healthy, 1))
        gw_info("pool %s: backend %s re-admitted", p->name, b->name);
}

/* ------------------------------------------------------------------ per worker */

static int size_for(struct gw_balance_worker *bw, gw_config_t *cfg)
{
    int64_t *wrr = calloc(cfg->nbackends + 1, sizeof(*wrr));
    if (!wrr) return -1;
    free(bw->wrr);
    bw->wrr = wrr;
    gw_config_unref(bw->cfg);
    bw->cfg = gw_config_ref(cfg);
    return 0;
}

int gw_balance_worker_init(gw_worker_t *w)
{
    struct gw_balance_worker *bw = calloc(1, sizeof(*bw));
    if (!bw) return -1;
    bw->w = w;
    w->bal = bw;
    bw->tick = evtimer_new(w->base, tick_cb, bw);
    if (!bw->tick || size_for(bw, w->cfg) < 0) return -1;
    if (w->id == 0) {
        bw->health = gw_health_new(w->base, w->cfg, gw_balance_readmit);
        if (!bw->health) return -1;
    }
    return 0;
}

void gw_balance_worker_reload(gw_worker_t *w)
{
    struct gw_balance_worker *bw = w->bal;
    if (!bw) return;
    if (size_for(bw, w->cfg) < 0) gw_warn("worker %d: out of memory: WRR falls back", w->id);
    /* One worker publishes the caps of the config in service (reloads reach it in order). */
    if (w->id == 0) gw_live_set_caps(w->cfg);
    if (bw->health) gw_health_set_config(bw->health, w->cfg);
}

void gw_balance_worker_drain(gw_worker_t *w)
{
    struct gw_balance_worker *bw = w->bal;
    if (!bw || !bw->health) return;
    gw_health_free(bw->health);
    bw->health = NULL;
}

void gw_balance_worker_free(gw_worker_t *w)
{
    struct gw_balance_worker *bw = w->bal;
    if (!bw) return;
    /* Waiters are requests of connections closed before this: nothing is left to serve. */
    gw_health_free(bw->health);
    if (bw->tick) event_free(bw->tick);
    free(bw->wrr);
    free(bw->q);
    gw_config_unref(bw->cfg);
    free(bw);
    w->bal = NULL;
}
