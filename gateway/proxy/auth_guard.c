/* The failed-authentication limiter: lock-free GCRA buckets, two per hashed client address. */
#include "proxy/auth_guard.h"

#include "base/clock.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "base/audit.h"
#include "gotthard/plugin.h" /* gw_audit */
#include "base/log.h"

typedef struct slot {
    _Atomic uint64_t tat;        /* GCRA: theoretical arrival time of the next failure (us) */
    _Atomic uint64_t refused;    /* 429s since the last summary line */
    _Atomic uint64_t summary_us; /* when the last summary line was written; 0: never */
    _Atomic uint32_t inflight;   /* store lookups in flight from the addresses of this slot */
    _Atomic uint32_t tag;        /* the digest bits of the last address refused here */
} slot_t;

static slot_t slots[GW_AUTH_GUARD_SLOTS];
/* Slots with refusals not yet written, one bit each: the sweep visits only these. */
static _Atomic uint64_t pending[GW_AUTH_GUARD_SLOTS / 64];
static unsigned char digest_key[32]; /* random per process: digests cannot be precomputed */
static EVP_MD *sha256;
static int ready;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void init(void)
{
    if (RAND_bytes(digest_key, sizeof(digest_key)) != 1 ||
        !(sha256 = EVP_MD_fetch(NULL, "SHA256", NULL))) {
        gw_error("the failed-authentication limiter is off: no random key or SHA-256");
        return;
    }
    ready = 1;
}

uint64_t gw_auth_guard_gcra(uint64_t tat, uint64_t now, uint64_t t_us, uint64_t burst,
                            uint64_t *next)
{
    uint64_t n = (tat > now ? tat : now) + t_us, limit = burst * t_us;
    if (n - now > limit) return n - now - limit;
    *next = n;
    return 0;
}

uint64_t gw_auth_guard_room(uint64_t tat, uint64_t now, uint64_t t_us, uint64_t burst)
{
    uint64_t base = tat > now ? tat : now, cap = now + burst * t_us;
    return base >= cap ? 0 : (cap - base) / t_us;
}

/* The client's address as bytes (IPv6 by its /64: one host holds a whole one), digested with
 * the process's key; an unknown address is one address of its own. Returns 0, or -1 when the
 * digest fails. */
static int client_digest(const gw_auth_guard_req_t *g, unsigned char d[32])
{
    unsigned char in[sizeof(digest_key) + 1 + 16];
    size_t n = sizeof(digest_key);
    memcpy(in, digest_key, n);
    const struct sockaddr_storage *ss = g->client;
    const struct in6_addr *a6 =
        ss && ss->ss_family == AF_INET6 ? &((const struct sockaddr_in6 *)ss)->sin6_addr : NULL;
    if (ss && ss->ss_family == AF_INET) {
        in[n] = 4;
        memcpy(in + n + 1, &((const struct sockaddr_in *)ss)->sin_addr, 4);
        n += 1 + 4;
    } else if (a6 && IN6_IS_ADDR_V4MAPPED(a6)) {
        in[n] = 4; /* an IPv4 client of a dual-stack listener: the same address */
        memcpy(in + n + 1, &a6->s6_addr[12], 4);
        n += 1 + 4;
    } else if (a6) {
        in[n] = 6;
        memcpy(in + n + 1, a6->s6_addr, 8);
        n += 1 + 8;
    } else {
        /* Unknown (a trusted proxy named no usable address): one bucket for all such clients,
         * so that `X-Forwarded-For: unknown` is no way out of the limiter. */
        in[n] = 0;
        n += 1;
    }
    int ok = EVP_Digest(in, n, d, NULL, sha256, NULL) == 1;
    OPENSSL_cleanse(in, sizeof(in));
    return ok ? 0 : -1;
}

void gw_auth_guard_bind(gw_auth_guard_req_t *g, int64_t failure_rate, int64_t failure_burst,
                        const struct sockaddr_storage *client, socklen_t client_len)
{
    g->on = failure_rate > 0;
    g->t_us = g->on ? 1000000u / (uint64_t)failure_rate : 0;
    g->burst = (uint64_t)failure_burst;
    g->client = client_len ? client : NULL;
}

/* The client's slots, once per request. 0, or -1 when the limiter does not apply. */
static int locate(gw_auth_guard_req_t *g)
{
    if (!g->located) {
        g->located = 1;
        unsigned char d[32];
        if (!g->on) return -1;
        pthread_once(&once, init);
        if (!ready || client_digest(g, d) < 0) return -1;
        for (int i = 0; i < GW_AUTH_GUARD_CHOICES; i++) {
            uint32_t h;
            memcpy(&h, d + 4 * i, sizeof(h));
            g->slot[i] = h % GW_AUTH_GUARD_SLOTS;
        }
        if (g->slot[1] == g->slot[0]) g->slot[1] = g->slot[0] ^ 1; /* two distinct slots */
        memcpy(&g->tag, d + 4 * GW_AUTH_GUARD_CHOICES, sizeof(g->tag));
        g->known = 1;
    }
    return g->known ? 0 : -1;
}

/* The address's slot with the lower time (count-min: its own failures are at most that). */
static slot_t *lower(const gw_auth_guard_req_t *g, uint64_t *tat, slot_t **other)
{
    slot_t *a = &slots[g->slot[0]], *b = &slots[g->slot[1]];
    uint64_t ta = atomic_load(&a->tat), tb = atomic_load(&b->tat);
    *tat = ta <= tb ? ta : tb;
    *other = ta <= tb ? b : a;
    return ta <= tb ? a : b;
}

/* Takes one failure's budget: 0, or the microseconds until there is some. Conservative update:
 * the lower slot moves on, the other is raised to it if it is behind. */
static uint64_t take(gw_auth_guard_req_t *g, uint64_t now)
{
    for (;;) {
        slot_t *other;
        uint64_t tat, next = 0, wait;
        slot_t *low = lower(g, &tat, &other);
        if ((wait = gw_auth_guard_gcra(tat, now, g->t_us, g->burst, &next)) != 0) return wait;
        if (!atomic_compare_exchange_strong(&low->tat, &tat, next)) continue;
        uint64_t o = atomic_load(&other->tat);
        while (o < next && !atomic_compare_exchange_weak(&other->tat, &o, next)) {
        }
        return 0;
    }
}

static void inflight_add(const gw_auth_guard_req_t *g, uint32_t *min)
{
    uint32_t a = atomic_fetch_add(&slots[g->slot[0]].inflight, 1) + 1;
    uint32_t b = atomic_fetch_add(&slots[g->slot[1]].inflight, 1) + 1;
    *min = a < b ? a : b;
}

static void inflight_sub(const gw_auth_guard_req_t *g)
{
    atomic_fetch_sub(&slots[g->slot[0]].inflight, 1);
    atomic_fetch_sub(&slots[g->slot[1]].inflight, 1);
}

int gw_auth_guard_reserve(gw_auth_guard_req_t *g)
{
    if (locate(g) < 0 || g->looking) return 1;
    if (g->throttled || g->busy) return 0;
    slot_t *other;
    uint64_t tat, now = gw_now_us();
    lower(g, &tat, &other);
    uint64_t room = gw_auth_guard_room(tat, now, g->t_us, g->burst);
    if (room == 0) {
        g->throttled = 1; /* the address has failed its whole budget */
        return 0;
    }
    uint32_t flying;
    inflight_add(g, &flying);
    if (flying > room) {
        inflight_sub(g);
        g->busy = 1; /* its lookups in flight fill what failures it has left */
        return 0;
    }
    g->looking = 1;
    return 1;
}

void gw_auth_guard_success(gw_auth_guard_req_t *g)
{
    if (!g->looking) return;
    g->looking = 0;
    inflight_sub(g);
}

int gw_auth_guard_busy(const gw_auth_guard_req_t *g)
{
    return g->busy;
}

void gw_auth_guard_end(gw_auth_guard_req_t *g)
{
    if (!g->looking) return;
    take(g, gw_now_us()); /* a lookup that never authenticated is a failure (over or not) */
    g->looking = 0;
    inflight_sub(g);
}

/* A 429: counted in the address's first slot, for the sweep to write. */
static void count_refusal(const gw_auth_guard_req_t *g)
{
    uint32_t i = g->slot[0];
    atomic_store(&slots[i].tag, g->tag);
    atomic_fetch_add(&slots[i].refused, 1);
    atomic_fetch_or(&pending[i / 64], (uint64_t)1 << (i % 64));
    gw_auth_guard_count("rate_limited");
}

/* Failed authentications by reason (gotthard_auth_failures_total). Label values come from
 * this fixed list only, never from a request. */
static const char *const auth_reasons[] = {"no_credentials",
                                           "unknown_key",
                                           "unknown_tenant",
                                           "revoked_key",
                                           "key_store_unavailable",
                                           "jwt_malformed",
                                           "jwt_alg",
                                           "jwt_signature",
                                           "jwt_expired",
                                           "jwt_not_yet_valid",
                                           "jwt_issuer",
                                           "jwt_audience",
                                           "jwt_tenant",
                                           "jwt_tenant_not_bound",
                                           "rate_limited",
                                           "other",
                                           NULL};
#define N_AUTH_REASONS (sizeof(auth_reasons) / sizeof(auth_reasons[0]) - 1)
static atomic_ulong auth_failures[N_AUTH_REASONS];

void gw_auth_guard_count(const char *reason)
{
    size_t i = 0;
    while (auth_reasons[i] && (!reason || strcmp(auth_reasons[i], reason) != 0)) i++;
    if (!auth_reasons[i]) i = N_AUTH_REASONS - 1; /* "other" */
    atomic_fetch_add_explicit(&auth_failures[i], 1, memory_order_relaxed);
}

const char *gw_auth_guard_counted(size_t i, unsigned long *count)
{
    if (i >= N_AUTH_REASONS) return NULL;
    *count = atomic_load_explicit(&auth_failures[i], memory_order_relaxed);
    return auth_reasons[i];
}

void gw_auth_guard_sweep(int64_t summary_ms, int all)
{
    uint64_t now = gw_now_us(), every = (uint64_t)summary_ms * 1000u;
    char ms[24];
    snprintf(ms, sizeof(ms), "%lld", (long long)summary_ms);
    for (size_t w = 0; w < GW_AUTH_GUARD_SLOTS / 64; w++) {
        uint64_t bits = atomic_load(&pending[w]);
        while (bits) {
            unsigned b = (unsigned)__builtin_ctzll(bits);
            bits &= bits - 1;
            slot_t *s = &slots[w * 64 + b];
            uint64_t last = atomic_load(&s->summary_us);
            if (!all && last && now - last < every) continue;
            /* The bit goes before the count is taken: a refusal after it sets it again. */
            atomic_fetch_and(&pending[w], ~((uint64_t)1 << b));
            uint64_t n = atomic_exchange(&s->refused, 0);
            if (!n) continue;
            atomic_store(&s->summary_us, now ? now : 1);
            char client[16], count[24];
            snprintf(client, sizeof(client), "h:%08x", (unsigned)atomic_load(&s->tag));
            snprintf(count, sizeof(count), "%llu", (unsigned long long)n);
            gw_audit("auth_failures_limited", "client", client, "refused", count, "interval_ms", ms,
                     NULL);
        }
    }
}

int64_t gw_auth_guard_failure(gw_auth_guard_req_t *g)
{
    if (locate(g) < 0 || g->busy) return 0;
    uint64_t now = gw_now_us(), next, wait;
    if (g->looking) {
        /* Its lookup found nothing: charged now, and no longer in flight. */
        wait = take(g, now);
        g->looking = 0;
        inflight_sub(g);
        if (!wait) return 0;
    } else if (g->throttled) {
        /* Refused a lookup: answered 429 whatever the budget now, and not counted again. */
        slot_t *other;
        uint64_t tat;
        lower(g, &tat, &other);
        wait = gw_auth_guard_gcra(tat, now, g->t_us, g->burst, &next);
        if (!wait) wait = 1;
    } else if ((wait = take(g, now)) == 0) {
        return 0;
    }
    count_refusal(g);
    return (int64_t)((wait + 999999u) / 1000000u);
}
