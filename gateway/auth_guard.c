/* The failed-authentication limiter: a fixed table of lock-free GCRA buckets per hashed address. */
#include "auth_guard.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "audit.h"
#include "log.h"
#include "metrics.h"
#include "request.h"

typedef struct slot {
    _Atomic uint64_t tat;        /* GCRA: theoretical arrival time of the next failure (us) */
    _Atomic uint64_t refused;    /* 429s since the last summary line */
    _Atomic uint64_t summary_us; /* when the last summary line was written; 0: never */
} slot_t;

static slot_t slots[GW_AUTH_GUARD_SLOTS];
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

/* The client's address as bytes (IPv6 by its /64: one host holds a whole one), digested with
 * the process's key. Returns 0, or -1 when the address is not known. */
static int client_digest(gw_req_t *r, unsigned char d[32])
{
    char text[64];
    unsigned char in[sizeof(digest_key) + 1 + 16];
    size_t n = sizeof(digest_key);
    if (gw_req_client_address(r, text, sizeof(text)) < 0) return -1;
    memcpy(in, digest_key, n);
    if (inet_pton(AF_INET, text, in + n + 1) == 1) {
        in[n] = 4;
        n += 1 + 4;
    } else if (inet_pton(AF_INET6, text, in + n + 1) == 1) {
        in[n] = 6;
        n += 1 + 8;
    } else {
        return -1;
    }
    int ok = EVP_Digest(in, n, d, NULL, sha256, NULL) == 1;
    OPENSSL_cleanse(in, sizeof(in));
    return ok ? 0 : -1;
}

static uint64_t interval_us(const gw_req_t *r)
{
    return 1000000u / (uint64_t)r->cfg->auth.failure_rate;
}

/* The client's slot, once per request. 0, or -1 when the limiter does not apply. */
static int locate(gw_req_t *r)
{
    gw_auth_guard_req_t *g = &r->guard;
    if (!g->located) {
        g->located = 1;
        unsigned char d[32];
        if (!r->cfg->tenants.n || r->cfg->auth.failure_rate <= 0) return -1;
        pthread_once(&once, init);
        if (!ready || client_digest(r, d) < 0) return -1;
        uint32_t h;
        memcpy(&h, d, sizeof(h));
        g->slot = h % GW_AUTH_GUARD_SLOTS;
        memcpy(&g->tag, d + 4, sizeof(g->tag));
        g->known = 1;
    }
    return g->known ? 0 : -1;
}

/* Takes one failure's budget: 0, or the microseconds until there is some. */
static uint64_t take(gw_req_t *r, uint64_t now)
{
    slot_t *s = &slots[r->guard.slot];
    uint64_t tat = atomic_load(&s->tat), next = 0, wait;
    do {
        if ((wait = gw_auth_guard_gcra(tat, now, interval_us(r),
                                       (uint64_t)r->cfg->auth.failure_burst, &next)) != 0)
            return wait;
    } while (!atomic_compare_exchange_weak(&s->tat, &tat, next));
    return 0;
}

int gw_auth_guard_reserve(gw_req_t *r)
{
    gw_auth_guard_req_t *g = &r->guard;
    if (locate(r) < 0 || g->charged) return 1;
    if (g->throttled || take(r, gw_now_us()) != 0) {
        g->throttled = 1;
        return 0;
    }
    g->charged = 1;
    return 1;
}

void gw_auth_guard_success(gw_req_t *r)
{
    if (!r->guard.charged) return;
    r->guard.charged = 0;
    atomic_fetch_sub(&slots[r->guard.slot].tat, interval_us(r));
}

/* At most one line per slot and interval: the first refusal after it has passed writes the
 * count of refusals since the last line. */
static void summarise(const gw_req_t *r, slot_t *s, uint32_t tag, uint64_t now)
{
    uint64_t last = atomic_load(&s->summary_us);
    uint64_t every = (uint64_t)r->cfg->auth.failure_summary_ms * 1000u;
    if (last && now - last < every) return;
    if (!atomic_compare_exchange_strong(&s->summary_us, &last, now ? now : 1)) return;
    uint64_t n = atomic_exchange(&s->refused, 0);
    char client[16], count[24], ms[24];
    snprintf(client, sizeof(client), "h:%08x", (unsigned)tag);
    snprintf(count, sizeof(count), "%llu", (unsigned long long)n);
    snprintf(ms, sizeof(ms), "%lld", (long long)r->cfg->auth.failure_summary_ms);
    gw_audit("auth_failures_limited", "client", client, "refused", count, "interval_ms", ms, NULL);
}

int64_t gw_auth_guard_failure(gw_req_t *r)
{
    gw_auth_guard_req_t *g = &r->guard;
    if (locate(r) < 0 || g->charged) return 0;
    slot_t *s = &slots[g->slot];
    uint64_t now = gw_now_us(), next, wait;
    if (g->throttled) {
        /* Refused a lookup: answered 429 whatever the budget now, and not counted again. */
        wait = gw_auth_guard_gcra(atomic_load(&s->tat), now, interval_us(r),
                                  (uint64_t)r->cfg->auth.failure_burst, &next);
        if (!wait) wait = 1;
    } else if ((wait = take(r, now)) == 0) {
        return 0;
    }
    atomic_fetch_add(&s->refused, 1);
    gw_metrics_auth_failure("rate_limited");
    summarise(r, s, g->tag, now);
    return (int64_t)((wait + 999999u) / 1000000u);
}
