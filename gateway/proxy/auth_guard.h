/* The failed-authentication limiter: per client address, failures beyond a rate get 429. */
#ifndef GW_AUTH_GUARD_H
#define GW_AUTH_GUARD_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define GW_AUTH_GUARD_CHOICES 2

/* What a request knows of its client's slots (in gw_req_t, zeroed with it). */
typedef struct gw_auth_guard_req {
    uint32_t slot[GW_AUTH_GUARD_CHOICES];
    uint32_t tag; /* more bits of the keyed digest, for the summary line */
    unsigned located : 1, known : 1, throttled : 1, busy : 1, looking : 1;
    unsigned on : 1;                       /* the limiter applies (gw_auth_guard_bind) */
    uint64_t t_us, burst;                  /* auth.failure_rate as an interval, failure_burst */
    const struct sockaddr_storage *client; /* the request's client address; NULL: not known */
} gw_auth_guard_req_t;

/* Before any other call, once the request knows its client: the limiter's config (failure_rate
 * 0: it does not apply, as without tenants) and the client's address (client_len 0: not known;
 * the address stays the request's, never copied). */
void gw_auth_guard_bind(gw_auth_guard_req_t *g, int64_t failure_rate, int64_t failure_burst,
                        const struct sockaddr_storage *client, socklen_t client_len);

/*
 * One process-wide table of GW_AUTH_GUARD_SLOTS slots. A client address (the request's;
 * IPv6 by its /64) is digested with a random per-process key (SHA-256) into two slots, found
 * only when a request fails or asks a store, so a request with a known key never touches the
 * table: memory is fixed whatever the number of addresses. Each slot is a GCRA bucket in one
 * atomic word (auth.failure_rate per second, bursts of auth.failure_burst), kept as a count-min
 * sketch with conservative update: a failure moves the address's lower slot and raises the other
 * to it, and an address is over its budget only when both its slots are. Addresses that share
 * both slots share a budget; one that shares one slot with failing addresses keeps its own. No
 * lock anywhere; concurrent failures of one address on several workers may lose a charge,
 * never add one.
 *
 * Store lookups are not failures: a lookup is charged only when it does not authenticate (its
 * answer is "no such key", the store did not answer, or the request ended first). So that
 * failures cannot outrun the rate however many lookups are in flight, an address may have at
 * most as many lookups in flight as its budget has failures left; a lookup beyond that is not
 * sent, and the request gets 503 auth_lookups_busy with retry-after (never a 429: the address
 * has not failed).
 */
#define GW_AUTH_GUARD_SLOTS 65536

/* An auth plugin is about to ask a store (Redis) about a credential (gw_req_auth_lookup):
 * 1: go ahead (the lookup is in flight until the request authenticates, fails or ends);
 * 0: no lookup, either because the address is over its failure budget (the request then gets
 * 429) or because its lookups in flight already fill the budget (503). */
int gw_auth_guard_reserve(gw_auth_guard_req_t *g);
/* The request authenticated: its lookup, if any, is no longer in flight, and costs nothing. */
void gw_auth_guard_success(gw_auth_guard_req_t *g);
/* The request was refused a lookup because too many were in flight from its address. */
int gw_auth_guard_busy(const gw_auth_guard_req_t *g);
/* The request ends (gw_req_free): a lookup still in flight is charged as a failure. */
void gw_auth_guard_end(gw_auth_guard_req_t *g);

/* Authentication failed. Returns 0 when the failure is within the rate (answer 401 and audit it
 * as always), or the seconds a client should wait (retry-after) when it is over: answer 429 and
 * write no audit line; refusals are counted per slot and written by gw_auth_guard_sweep. */
int64_t gw_auth_guard_failure(gw_auth_guard_req_t *g);

/* Writes the pending refusal counts: one auth_failures_limited audit line per slot whose last
 * line is summary_ms old or more (all of them when `all`, at shutdown), saying how many requests
 * were refused since the last, with the address's digest, never the address. Visits only slots
 * with pending counts. Called by one thread (the main loop's timer, then at exit). */
void gw_auth_guard_sweep(int64_t summary_ms, int all);
#define GW_AUTH_GUARD_SWEEP_MS 250

/* A failed authentication, by reason (a 401's cause, or "rate_limited" for a 429); a reason not
 * in the fixed list counts as "other". Read for gotthard_auth_failures_total: the i-th reason of
 * the list and its count, NULL past the end. */
void gw_auth_guard_count(const char *reason);
const char *gw_auth_guard_counted(size_t i, unsigned long *count);

/* Pure GCRA arithmetic (unit-tested): one event at `now` against a slot whose theoretical
 * arrival time is `tat` (microseconds), an emission interval of t_us and a burst of `burst`.
 * Returns 0 with *next the slot's new time when the event is within the rate, or the
 * microseconds until one would be (and *next untouched). */
uint64_t gw_auth_guard_gcra(uint64_t tat, uint64_t now, uint64_t t_us, uint64_t burst,
                            uint64_t *next);
/* How many events a slot at `tat` would still let through at `now` (same arithmetic). */
uint64_t gw_auth_guard_room(uint64_t tat, uint64_t now, uint64_t t_us, uint64_t burst);

#endif
