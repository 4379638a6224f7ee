/* The Redis side of the quota core: the same semantics as limiter.h, as Lua scripts run with
 * EVALSHA, and the commands and replies around them.
 *
 * Keys, all hash-tagged by tenant so that one tenant's keys share one Redis Cluster slot
 * (tenant ids and model names come from the config, percent-encoded outside [A-Za-z0-9._~-]):
 *   gotthard:q:{<tenant>}:rpm           hash s, lo, hi, <second>...  the sliding window
 *                                       (requests): sum, range of seconds, count per second
 *   gotthard:q:{<tenant>}:tpm           hash s, lo, hi, <second>...  the same for tokens
 *   gotthard:q:{<tenant>}:tpd           hash day, used  the UTC day (days since the epoch)
 *                                                       and the tokens used that day
 *   gotthard:q:{<tenant>}:conc          zset slot id -> expiry (ms): concurrency slots
 * and the same under gotthard:q:{<tenant>}:m:<model>:... for a model override. The day
 * budget is one key holding its day (rather than a key per date) so the scripts touch only
 * the keys they are given (KEYS), as Redis Cluster requires. Every key carries a PEXPIRE:
 * the time until its window is empty again, the next 00:00 UTC, or the latest slot's expiry,
 * plus 10 s, so an idle tenant leaves nothing behind. No request content is ever stored:
 * only numbers and slot ids (made by the gateway: gq_slot_id).
 *
 * The scripts read the clock with redis.call('TIME'), so instances with skewed clocks agree.
 * A now_override > 0 replaces it (tests only: pass 0).
 *
 * Concurrency slots expire: a slot is admitted with a lease (lease_ms), pruned by any admit
 * after its expiry, refreshed by the touch script (a long stream should touch every
 * lease_ms / 3), and removed by settle. A gateway that dies leaks its slots for at most
 * lease_ms.
 *
 * NOSCRIPT: after a Redis restart or SCRIPT FLUSH, EVALSHA answers NOSCRIPT; send
 * gq_redis_load_cmd (SCRIPT LOAD) and the same EVALSHA again. (gw_req_redis hands error replies
 * to the callback as NULL, indistinguishable from a timeout: a caller that gets NULL may send
 * SCRIPT LOAD and retry once; a timed-out connection refuses new commands until it is back,
 * so that retry costs nothing when Redis is down.)
 */
#ifndef GQ_SCRIPTS_H
#define GQ_SCRIPTS_H

#include <stddef.h>
#include <stdint.h>

#include "limiter.h"

struct redisReply;

typedef enum { GQ_SCRIPT_ADMIT, GQ_SCRIPT_SETTLE, GQ_SCRIPT_TOUCH, GQ_SCRIPT_COUNT } gq_script_t;

const char *gq_script_source(gq_script_t s);
const char *gq_script_sha(gq_script_t s); /* 40 lowercase hex digits; thread-safe */

#define GQ_REDIS_MAX_ARGV 48
#define GQ_REDIS_BUF 8192

/* A command ready for redisCommandArgv / gw_req_redis. argv points into buf: do not copy the
 * struct, build it where it is used (about 8.5 KB). */
typedef struct gq_redis_cmd {
    int argc;
    const char *argv[GQ_REDIS_MAX_ARGV];
    size_t argvlen[GQ_REDIS_MAX_ARGV];
    size_t used;
    char buf[GQ_REDIS_BUF];
} gq_redis_cmd_t;

/* The Redis key of one level: suffix "rpm", "tpm", "tpd" or "conc"; model NULL at the tenant
 * level. Returns the length, or -1 when it does not fit. */
int gq_redis_key(char *out, size_t cap, const char *tenant, const char *model, const char *suffix);

/* A concurrency slot id from an instance id (random at start) and a per-instance counter. */
void gq_slot_id(char out[48], uint64_t instance, uint64_t seq);

/* The window the gateway uses in Redis: one second longer than the in-process one, for the
 * second a lease may be spent after it was counted (limiter.h). */
#define GQ_REDIS_WINDOW_S (GQ_WINDOW_S + 1)

/* EVALSHA admit: est_tokens, the slot id this admission would take and its lease (slot_ms),
 * the window in seconds; lease 1: also take leases for this process and give back ret (per
 * level; NULL: nothing); lease 2: only that, admitting nothing (a renewal ahead of time; the
 * reply then says allowed). 0 or -1. */
int gq_redis_admit_cmd(gq_redis_cmd_t *c, const gq_key_t *key, int64_t est_tokens, const char *slot,
                       int64_t slot_ms, int window_s, int lease, const gq_lease_ret_t *ret,
                       int64_t now_override);
/* The admit script's reply into a decision (and, allowed, a ticket), as gq_admit gives them,
 * and (when not NULL) the leases granted and each level's figures. Returns 1 allowed,
 * 0 refused, -1 a malformed reply (or an error reply). */
int gq_redis_admit_parse(const struct redisReply *r, const gq_key_t *key, int64_t est_tokens,
                         const char *slot, gq_decision_t *d, gq_ticket_t *t,
                         gq_lease_grant_t grant[2], gq_level_fig_t figs[2]);
/* EVALSHA settle: charge actual - reserved, free the slot. */
int gq_redis_settle_cmd(gq_redis_cmd_t *c, const gq_ticket_t *t, int64_t actual_tokens,
                        int window_s, int64_t now_override);
/* EVALSHA touch: extend the ticket's slots to now + lease_ms. Replies the number of slots
 * still held (0: they had expired). */
int gq_redis_touch_cmd(gq_redis_cmd_t *c, const gq_ticket_t *t, int64_t lease_ms,
                       int64_t now_override);
/* Usage, per tenant and UTC day: hash gotthard:u:{<tenant>}:<YYYY-MM-DD> with fields requests,
 * prompt_tokens and completion_tokens, kept GQ_USAGE_KEEP_DAYS. Each process adds its counts
 * at most every GQ_USAGE_FLUSH_MS (limiter.h), with HINCRBY (exact, whatever the order). */
#define GQ_USAGE_KEEP_DAYS 40
int gq_usage_key(char *out, size_t cap, const char *tenant, int64_t day);
/* Step i (0..3) of adding u to a tenant's day: three HINCRBY, then EXPIRE. -1 on error. */
int gq_redis_usage_cmd(gq_redis_cmd_t *c, int step, const char *tenant, const gq_usage_t *u);
/* YYYY-MM-DD of a UTC day (11 bytes with the NUL); and back: -1 if not such a date. */
void gq_day_string(char out[11], int64_t day);
int64_t gq_day_parse(const char *s);

/* SCRIPT LOAD <source>: its reply is the script's SHA. */
int gq_redis_load_cmd(gq_redis_cmd_t *c, gq_script_t s);
/* Is this reply a NOSCRIPT error? */
int gq_redis_is_noscript(const struct redisReply *r);

#endif
