/* The failed-authentication limiter: per client address, failures beyond a rate get 429. */
#ifndef GW_AUTH_GUARD_H
#define GW_AUTH_GUARD_H

#include <stdint.h>

typedef struct gw_req gw_req_t;

/* What a request knows of its client's slot (in gw_req_t, zeroed with it). */
typedef struct gw_auth_guard_req {
    uint32_t slot;
    uint32_t tag; /* more bits of the keyed digest, for the summary line */
    unsigned located : 1, known : 1, throttled : 1, charged : 1;
} gw_auth_guard_req_t;

/*
 * One process-wide table of GW_AUTH_GUARD_SLOTS slots, indexed by a keyed digest (SHA-256 with
 * a random per-process key) of the client's address (gw_req_client_address; IPv6 by its /64),
 * found only when a request fails or asks a store, so a request with a known key never touches it:
 * memory is fixed whatever the number of addresses; addresses that share a slot share its
 * budget. Each slot is a GCRA bucket in one atomic word (auth.failure_rate per second, bursts
 * of auth.failure_burst): no lock anywhere. A store lookup takes its budget before it is sent,
 * so that however many requests are in flight, lookups never outrun the rate.
 */
#define GW_AUTH_GUARD_SLOTS 8192

/* An auth plugin is about to ask a store (Redis) about a credential (gw_req_auth_lookup):
 * 1 when the address has budget left, which the lookup then uses up until
 * gw_auth_guard_success gives it back; 0 when it is over its rate (no lookup). */
int gw_auth_guard_reserve(gw_req_t *r);
/* The request authenticated: a lookup it was charged for is given back. */
void gw_auth_guard_success(gw_req_t *r);

/* Authentication failed. Returns 0 when the failure is within the rate, or was paid for by
 * its lookup (answer 401 and audit it as always), or the seconds a client should wait (retry-after)
 * when it is over: answer 429 and write no audit line; refusals are counted, and at most one
 * summary audit line (auth_failures_limited) per slot and auth.failure_summary_ms says how many,
 * with the address's digest, never the address. */
int64_t gw_auth_guard_failure(gw_req_t *r);

/* Pure GCRA arithmetic (unit-tested): one event at `now` against a slot whose theoretical
 * arrival time is `tat` (microseconds), an emission interval of t_us and a burst of `burst`.
 * Returns 0 with *next the slot's new time when the event is within the rate, or the
 * microseconds until one would be (and *next untouched). */
uint64_t gw_auth_guard_gcra(uint64_t tat, uint64_t now, uint64_t t_us, uint64_t burst,
                            uint64_t *next);

#endif
