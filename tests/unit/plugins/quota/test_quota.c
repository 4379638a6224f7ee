/* Unit tests of the quota core: the in-process limiter with an injected clock, the same
 * scenarios against the Lua scripts on a real redis-server (its own, on a free port), exactness
 * across connections ("instances"), and a threaded microbenchmark.
 *
 * The Redis part is skipped only when redis-server is missing; the test then says so and exits
 * 77 (ctest: skipped), never reporting it as passed. */
#include <arpa/inet.h>
#include <errno.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "base/body.h"
#include "check.h"
#include "limiter.h"
#include "quota.h"
#include "scripts.h"

#define P GQ_PERIOD_MS
#define T0 1710028800000LL /* 2024-03-10 00:00:00 UTC */
#define DAY GQ_DAY_MS

static gq_limits_t L(int64_t rpm, int64_t tpm, int64_t tpd, int64_t conc)
{
    return (gq_limits_t){.rpm = rpm, .tpm = tpm, .tpd = tpd, .concurrent = conc};
}

/* ---------------------------------------------------------------- format_duration, clocks */

static void test_format(void)
{
    static const struct {
        int64_t ms;
        const char *want;
    } cases[] = {
        {-5, "0s"},
        {0, "0s"},
        {1, "1ms"},
        {120, "120ms"},
        {999, "999ms"},
        {1000, "1s"},
        {1500, "1.5s"},
        {1050, "1.05s"},
        {1001, "1.001s"},
        {59999, "59.999s"},
        {60000, "1m0s"},
        {360000, "6m0s"},
        {90500, "1m30.5s"},
        {3600000, "1h0m0s"},
        {3723000, "1h2m3s"},
        {86400000, "24h0m0s"},
        {3723004, "1h2m3.004s"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char buf[32];
        int n = gq_format_duration(buf, sizeof(buf), cases[i].ms);
        CHECK(strcmp(buf, cases[i].want) == 0 && n == (int)strlen(buf), "%lld ms: got %s want %s",
              (long long)cases[i].ms, buf, cases[i].want);
    }
    char small[4];
    gq_format_duration(small, sizeof(small), 3723000);
    CHECK(strlen(small) == 3, "truncates safely");
    CHECK(gq_retry_after_seconds(0) == 0 && gq_retry_after_seconds(1) == 1 &&
              gq_retry_after_seconds(1000) == 1 && gq_retry_after_seconds(1001) == 2,
          "retry-after seconds round up");
    CHECK(gq_utc_day(T0) == 19792 && gq_utc_day(T0 - 1) == 19791, "UTC day");
    CHECK(gq_until_utc_midnight(T0) == DAY && gq_until_utc_midnight(T0 + DAY - 30000) == 30000,
          "until midnight");
    CHECK(strcmp(gq_reason_code(GQ_TPD), "insufficient_quota") == 0 &&
              strcmp(gq_reason_code(GQ_RPM), "rate_limit_exceeded") == 0 &&
              strcmp(gq_reason_code(GQ_TPM), "rate_limit_exceeded") == 0 &&
              strcmp(gq_reason_code(GQ_CONC), "rate_limit_exceeded") == 0 &&
              gq_reason_code(GQ_OK) == NULL,
          "codes");
    gq_limits_t bad = L(-1, 0, 0, 0);
    const char *field = NULL;
    CHECK(gq_limits_check(&bad, &field) == -1 && strcmp(field, "requests_per_minute") == 0,
          "negative limit refused");
    bad = L(0, 0, GQ_MAX_LIMIT + 1, 0);
    CHECK(gq_limits_check(&bad, &field) == -1 && strcmp(field, "tokens_per_day") == 0,
          "huge limit refused");
}

/* ---------------------------------------------------------------- the local limiter */

static gq_limiter_t *one(const char *tenant, gq_limits_t l)
{
    gq_limiter_t *lim = gq_limiter_new(NULL);
    gq_limiter_set(lim, tenant, NULL, &l);
    return lim;
}

static int admit(const gq_key_t *k, int64_t now, int64_t est, gq_decision_t *d, gq_ticket_t *t)
{
    gq_ticket_t scratch;
    return gq_admit(k, now, est, d, t ? t : &scratch);
}

/* Every admission time in log[0..n): no interval of 60 s holds more than limit. */
static int max_in_any_minute(const int64_t *log, int n)
{
    int best = 0;
    for (int i = 0, j = 0; i < n; i++) {
        while (log[i] - log[j] >= 60000) j++;
        if (i - j + 1 > best) best = i - j + 1;
    }
    return best;
}

static void test_window_requests(void)
{
    gq_limiter_t *lim = one("a", L(60, 0, 0, 0));
    const gq_key_t *k = gq_find(lim, "a", NULL);
    gq_decision_t d;
    CHECK(k != NULL, "key");
    CHECK(gq_find(lim, "nobody", NULL) == NULL, "unknown tenant: no key");

    /* The whole minute's allowance one second before a minute edge... */
    int64_t t = T0 + 59000;
    int ok = 0;
    for (int i = 0; i < 60; i++) ok += admit(k, t, 1, &d, NULL);
    CHECK(ok == 60, "60 at once: %d", ok);
    CHECK(d.state.req_limit == 60 && d.state.req_remaining == 0 && d.state.req_reset_ms == 61000,
          "state after them: %lld %lld %lld", (long long)d.state.req_limit,
          (long long)d.state.req_remaining, (long long)d.state.req_reset_ms);
    CHECK(!admit(k, t, 1, &d, NULL) && d.reason == GQ_RPM && d.retry_after_ms == 61000,
          "61st refused, retry 61 s: %d %lld", d.reason, (long long)d.retry_after_ms);
    /* ...and nothing more at the edge, nor until the window has moved past them. */
    ok = 0;
    for (int i = 0; i < 60; i++) ok += admit(k, T0 + 60000, 1, &d, NULL);
    CHECK(ok == 0, "at the minute edge nothing more: %d", ok);
    CHECK(!admit(k, T0 + 119999, 1, &d, NULL) && d.retry_after_ms == 1, "1 ms short: %lld",
          (long long)d.retry_after_ms);
    gq_state_t s;
    gq_state(k, T0 + 90500, &s);
    CHECK(s.req_remaining == 0 && s.req_reset_ms == 29500, "reset: %lld",
          (long long)s.req_reset_ms);
    CHECK(admit(k, T0 + 120000, 1, &d, NULL) && d.state.req_remaining == 59, "then a new minute");
    gq_limiter_free(lim);

    /* Saturated from cold for three minutes, one attempt every 100 ms: exactly the limit in
     * each of the first minutes, and never more in any 60 s. */
    lim = one("a", L(60, 0, 0, 0));
    k = gq_find(lim, "a", NULL);
    static int64_t log[4000];
    int n = 0, first = 0, second = 0;
    for (int64_t at = T0; at < T0 + 3 * P; at += 100) {
        if (!admit(k, at, 1, &d, NULL)) continue;
        log[n++] = at;
        first += at < T0 + P;
        second += at >= T0 + P && at < T0 + 2 * P;
    }
    CHECK(first == 60 && second == 60, "first minute %d, second %d", first, second);
    CHECK(max_in_any_minute(log, n) == 60, "at most 60 in any 60 s: %d", max_in_any_minute(log, n));
    gq_limiter_free(lim);

    /* A random arrival pattern: the same bound, and the refusals' retry times are exact (one
     * millisecond earlier is still refused, at the time it is admitted). */
    lim = one("r", L(25, 0, 0, 0));
    k = gq_find(lim, "r", NULL);
    n = 0;
    uint64_t seed = 7;
    int exact = 0, tried = 0;
    for (int64_t at = T0; at < T0 + 10 * P && n < 4000;) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        at += (int64_t)(seed >> 33) % 3000;
        if (admit(k, at, 1, &d, NULL)) {
            log[n++] = at;
            continue;
        }
        if (tried++ % 10) continue;
        int64_t when = at + d.retry_after_ms;
        gq_state_t st;
        gq_state(k, when - 1, &st);
        exact += st.req_remaining == 0;
        if (admit(k, when, 1, &d, NULL)) {
            log[n++] = when;
            exact++;
            at = when;
        }
    }
    CHECK(max_in_any_minute(log, n) <= 25, "random: at most 25 in any 60 s: %d",
          max_in_any_minute(log, n));
    CHECK(tried > 20 && exact == 2 * ((tried + 9) / 10), "retry times exact: %d of %d", exact,
          2 * ((tried + 9) / 10));
    gq_limiter_free(lim);

    /* The retry is when the oldest bucket that frees enough has left the window. */
    lim = one("c", L(3, 0, 0, 0));
    k = gq_find(lim, "c", NULL);
    admit(k, T0, 1, &d, NULL);
    admit(k, T0 + 10000, 1, &d, NULL);
    admit(k, T0 + 20500, 1, &d, NULL);
    CHECK(!admit(k, T0 + 30000, 1, &d, NULL) && d.retry_after_ms == 31000,
          "the oldest frees one: %lld", (long long)d.retry_after_ms);
    CHECK(d.state.req_reset_ms == 81000 - 30000, "reset when the newest leaves: %lld",
          (long long)d.state.req_reset_ms);
    CHECK(admit(k, T0 + 61000, 1, &d, NULL) && !admit(k, T0 + 61000, 1, &d, NULL),
          "one freed at 61 s, one only");
    CHECK(d.retry_after_ms == 10000, "the next at 71 s: %lld", (long long)d.retry_after_ms);
    /* The clock going back does not reopen the window. */
    CHECK(!admit(k, T0 + 1000, 1, &d, NULL), "a clock that went back");
    gq_limiter_free(lim);
}

static void test_tokens(void)
{
    gq_limiter_t *lim = one("a", L(0, 1000, 0, 0));
    const gq_key_t *k = gq_find(lim, "a", NULL);
    gq_decision_t d;
    gq_ticket_t t1, t2, t3, t4;
    int64_t t = T0 + 12345;
    CHECK(admit(k, t, 600, &d, &t1) && t1.reserved == 600, "600 of 1000");
    CHECK(d.state.tok_limit == 1000 && d.state.tok_remaining == 400 &&
              d.state.tok_reset_ms == 60655,
          "state %lld %lld", (long long)d.state.tok_remaining, (long long)d.state.tok_reset_ms);
    CHECK(d.state.req_limit == 0, "no request limit configured");
    CHECK(!admit(k, t, 600, &d, NULL) && d.reason == GQ_TPM && d.retry_after_ms == 60655,
          "600 more refused: %lld", (long long)d.retry_after_ms);
    /* Settled down: 500 tokens come back. */
    gq_settle(&t1, t, 100);
    gq_state_t s;
    gq_state(k, t, &s);
    CHECK(s.tok_remaining == 900, "given back: %lld", (long long)s.tok_remaining);
    CHECK(admit(k, t, 600, &d, &t2) && d.state.tok_remaining == 300, "now fits");
    /* Settled up: 300 more than reserved is charged, beyond the estimate. */
    gq_settle(&t2, t, 900);
    gq_state(k, t, &s);
    CHECK(s.tok_remaining == 0 && s.tok_reset_ms == 60655, "charged up: %lld %lld",
          (long long)s.tok_remaining, (long long)s.tok_reset_ms);
    CHECK(!admit(k, t, 1, &d, NULL) && d.retry_after_ms == 60655, "one token waits: %lld",
          (long long)d.retry_after_ms);
    CHECK(!admit(k, t, 0, &d, NULL) && d.retry_after_ms == 60655, "an estimate of 0 needs 1 token");
    CHECK(admit(k, t + 60655, 1, &d, &t3), "after the window");
    /* Overrun beyond the whole limit: later requests wait for it to leave the window. */
    gq_settle(&t3, t + 60655, 2001);
    gq_state(k, t + 60655, &s);
    CHECK(s.tok_remaining == 0 && s.tok_reset_ms == 61000, "overrun: %lld",
          (long long)s.tok_reset_ms);
    /* A settlement after its bucket left the window (a long stream): the rest is charged
     * now; a rest in the other direction is dropped. */
    int64_t later = T0 + 200000;
    CHECK(admit(k, later, 10, &d, &t4), "admitted at 200 s");
    gq_ticket_t t5 = t4;
    gq_settle(&t4, later + 70000, 110);
    gq_state(k, later + 70000, &s);
    CHECK(s.tok_remaining == 900, "a long stream's rest charged when it ends: %lld",
          (long long)s.tok_remaining);
    t5.reserved = 500;
    gq_settle(&t5, later + 70000, 0);
    gq_state(k, later + 70000, &s);
    CHECK(s.tok_remaining == 900, "a stale credit changes nothing: %lld",
          (long long)s.tok_remaining);
    gq_limiter_free(lim);

    /* An estimate larger than the whole limit: only into an empty window, charged in full. */
    lim = one("a", L(0, 1000, 0, 0));
    k = gq_find(lim, "a", NULL);
    CHECK(admit(k, t, 1500, &d, &t1), "oversize admitted when empty");
    CHECK(!admit(k, t, 1, &d, NULL) && d.retry_after_ms == 60655, "then 1 token waits: %lld",
          (long long)d.retry_after_ms);
    CHECK(!admit(k, t + 1000, 1500, &d, NULL) && d.retry_after_ms == 59655,
          "oversize waits until empty: %lld", (long long)d.retry_after_ms);
    CHECK(admit(k, t + 60655, 1500, &d, NULL), "and then fits");
    gq_limiter_free(lim);
}

static void test_day(void)
{
    gq_limiter_t *lim = one("a", L(0, 0, 1000, 0));
    const gq_key_t *k = gq_find(lim, "a", NULL);
    gq_decision_t d;
    gq_ticket_t ta, tb;
    int64_t late = T0 + DAY - 30000; /* 23:59:30 UTC */
    CHECK(admit(k, late, 900, &d, &ta), "900 of 1000");
    CHECK(d.state.day_limit == 1000 && d.state.day_remaining == 100 &&
              d.state.day_reset_ms == 30000,
          "day state");
    CHECK(!admit(k, late, 200, &d, NULL) && d.reason == GQ_TPD && d.retry_after_ms == 30000,
          "budget spent: until midnight: %d %lld", d.reason, (long long)d.retry_after_ms);
    CHECK(strcmp(gq_reason_code(d.reason), "insufficient_quota") == 0, "insufficient_quota");
    CHECK(admit(k, late + 29999, 100, &d, &tb) && d.state.day_remaining == 0, "exact fit");
    CHECK(!admit(k, late + 29999, 1, &d, NULL) && d.retry_after_ms == 1, "1 ms before midnight");
    CHECK(admit(k, T0 + DAY, 200, &d, NULL) && d.state.day_remaining == 800 &&
              d.state.day_reset_ms == DAY,
          "00:00 UTC: a new budget");
    /* Yesterday's reservations settle into yesterday, not today. */
    gq_settle(&ta, T0 + DAY + 1, 0);
    gq_settle(&tb, T0 + DAY + 1, 5000);
    gq_state_t s;
    gq_state(k, T0 + DAY + 1, &s);
    CHECK(s.day_remaining == 800, "today untouched by yesterday's settlements: %lld",
          (long long)s.day_remaining);
    /* Settled down the same day gives tokens back. */
    gq_ticket_t tc;
    admit(k, T0 + DAY + 2, 300, &d, &tc);
    gq_settle(&tc, T0 + DAY + 3, 50);
    gq_state(k, T0 + DAY + 3, &s);
    CHECK(s.day_remaining == 750, "same-day settlement (200 + 50 used): %lld",
          (long long)s.day_remaining);
    /* Oversize: more than the whole day, only into an unused day. */
    CHECK(!admit(k, T0 + DAY + 4, 1500, &d, NULL) && d.reason == GQ_TPD, "oversize refused");
    CHECK(admit(k, T0 + 2 * DAY, 1500, &d, NULL) && d.state.day_remaining == 0,
          "oversize into a fresh day");
    gq_limiter_free(lim);
}

static void test_concurrency(void)
{
    gq_limiter_t *lim = one("a", L(0, 0, 0, 2));
    const gq_key_t *k = gq_find(lim, "a", NULL);
    gq_decision_t d;
    gq_ticket_t t1, t2, t3;
    CHECK(admit(k, T0, 10, &d, &t1) && admit(k, T0, 10, &d, &t2), "two slots");
    CHECK(d.state.conc_limit == 2 && d.state.conc_in_use == 2, "in use 2");
    CHECK(!admit(k, T0, 10, &d, NULL) && d.reason == GQ_CONC &&
              d.retry_after_ms == GQ_CONC_RETRY_MS,
          "third refused");
    gq_settle(&t1, T0 + 5, 10);
    CHECK(admit(k, T0 + 5, 10, &d, &t3) && d.state.conc_in_use == 2, "slot freed");
    gq_settle(&t2, T0 + 6, 10);
    gq_settle(&t3, T0 + 6, 10);
    gq_state_t s;
    gq_state(k, T0 + 6, &s);
    CHECK(s.conc_in_use == 0, "all freed");
    gq_limiter_free(lim);
}

static void test_overrides(void)
{
    gq_limiter_t *lim = gq_limiter_new(NULL);
    gq_limits_t tl = L(10, 0, 0, 0), ml = L(3, 0, 0, 0);
    CHECK(gq_limiter_set(lim, "t", "m", &ml) == 0, "override before its tenant");
    CHECK(gq_limiter_set(lim, "t", NULL, &tl) == 0, "tenant");
    CHECK(gq_limiter_set(lim, "", NULL, &tl) == -1, "empty tenant id refused");
    const gq_key_t *km = gq_find(lim, "t", "m"), *ko = gq_find(lim, "t", "other"),
                   *kt = gq_find(lim, "t", NULL);
    gq_level_info_t lv[2];
    CHECK(gq_key_levels(km, lv) == 2 && strcmp(lv[0].tenant, "t") == 0 && !lv[0].model &&
              strcmp(lv[1].model, "m") == 0 && lv[1].limits->rpm == 3,
          "override levels");
    CHECK(ko == kt && gq_key_levels(ko, lv) == 1, "a model without override: the tenant key");
    gq_decision_t d;
    int ok = 0;
    for (int i = 0; i < 2; i++) ok += admit(ko, T0, 1, &d, NULL);
    for (int i = 0; i < 5; i++) ok += admit(km, T0 + 5000, 1, &d, NULL);
    CHECK(ok == 5 && d.reason == GQ_RPM && d.level == 1 && d.retry_after_ms == 61000,
          "model limit: %d, level %d, retry %lld", ok, d.level, (long long)d.retry_after_ms);
    CHECK(d.state.req_limit == 3 && d.state.req_remaining == 0, "headers show the tighter limit");
    ok = 0;
    for (int i = 0; i < 10; i++) ok += admit(ko, T0 + 6000, 1, &d, NULL);
    CHECK(ok == 5 && d.level == 0 && d.retry_after_ms == 55000, "the tenant's total: %d %lld", ok,
          (long long)d.retry_after_ms);
    /* Both refuse: the longer wait is reported. */
    CHECK(!admit(km, T0 + 6000, 1, &d, NULL) && d.level == 1 && d.retry_after_ms == 60000,
          "both refuse: %d %lld", d.level, (long long)d.retry_after_ms);
    /* At 61 s the tenant has room again but the model not. */
    CHECK(!admit(km, T0 + 61000, 1, &d, NULL) && d.level == 1 && d.retry_after_ms == 5000,
          "model still refuses: %lld", (long long)d.retry_after_ms);
    CHECK(admit(ko, T0 + 61000, 1, &d, NULL), "the tenant's other models go on");
    gq_limiter_free(lim);

    /* A tenant without limits of its own, with an override: only the override applies. */
    lim = gq_limiter_new(NULL);
    gq_limiter_set(lim, "u", "m", &ml);
    CHECK(gq_find(lim, "u", "x") == NULL && gq_find(lim, "u", "m") != NULL, "override only");
    gq_limiter_free(lim);
}

static void test_choice(void)
{
    /* rpm 2, tpm 100: after requests of 50 at 0 s and 1 s, a request of 100 is refused by
     * both; the tokens wait is longer and is the one reported. With the day spent, the day
     * wins. */
    gq_limiter_t *lim = one("a", L(2, 100, 1000000, 0));
    const gq_key_t *k = gq_find(lim, "a", NULL);
    gq_decision_t d;
    admit(k, T0, 50, &d, NULL);
    admit(k, T0 + 1000, 50, &d, NULL);
    CHECK(!admit(k, T0 + 1000, 100, &d, NULL) && d.reason == GQ_TPM && d.retry_after_ms == 61000,
          "tokens: %d %lld", d.reason, (long long)d.retry_after_ms);
    CHECK(!admit(k, T0 + 1000, 10, &d, NULL) && d.reason == GQ_RPM && d.retry_after_ms == 60000,
          "requests: %d %lld", d.reason, (long long)d.retry_after_ms);
    gq_limiter_free(lim);
    lim = one("a", L(1, 0, 10, 0));
    k = gq_find(lim, "a", NULL);
    admit(k, T0, 10, &d, NULL);
    CHECK(!admit(k, T0, 10, &d, NULL) && d.reason == GQ_TPD && d.retry_after_ms == DAY,
          "day first: %d", d.reason);
    gq_limiter_free(lim);
}

static void test_reload(void)
{
    gq_limits_t l = L(5, 0, 0, 2);
    gq_limiter_t *a = one("a", l);
    const gq_key_t *ka = gq_find(a, "a", NULL);
    gq_decision_t d;
    gq_ticket_t t1;
    admit(ka, T0, 1, &d, &t1);
    for (int i = 0; i < 4; i++) {
        gq_ticket_t t;
        admit(ka, T0, 1, &d, &t);
        gq_settle(&t, T0, 1);
    }
    gq_limiter_t *b = gq_limiter_new(a);
    gq_limits_t l2 = L(6, 0, 0, 1);
    gq_limiter_set(b, "a", NULL, &l2);
    gq_limiter_set(b, "new", NULL, &l2);
    const gq_key_t *kb = gq_find(b, "a", NULL);
    CHECK(admit(kb, T0, 1, &d, NULL) == 0 && d.reason == GQ_CONC, "slot held across the reload");
    gq_settle(&t1, T0, 1); /* the old limiter's ticket frees the shared slot */
    gq_ticket_t t2;
    CHECK(admit(kb, T0, 1, &d, &t2) && d.state.req_remaining == 0,
          "the sixth, under the new limit");
    CHECK(!admit(kb, T0, 1, &d, NULL), "and no more: the count carried over");
    gq_limiter_free(a);
    gq_settle(&t2, T0, 1);
    CHECK(admit(gq_find(b, "new", NULL), T0, 1, &d, NULL), "a new tenant");
    gq_limiter_free(b);
}

/* ---------------------------------------------------------------- threads */

typedef struct bench {
    const gq_key_t *k;
    long n;
    long refused;
    int64_t base;
} bench_t;

static void *bench_run(void *arg)
{
    bench_t *b = arg;
    for (long i = 0; i < b->n; i++) {
        gq_decision_t d;
        gq_ticket_t t;
        int64_t now = b->base + i / 1000;
        if (gq_admit(b->k, now, 10, &d, &t))
            gq_settle(&t, now, 10);
        else
            b->refused++;
    }
    return NULL;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double parallelism; /* CPU time / wall time of the last best run: ~2 when truly parallel */

static double bench1(const gq_key_t *k1, const gq_key_t *k2, int threads, long n, long *refused,
                     double *par)
{
    bench_t b[2] = {{k1, n, 0, T0}, {k2, n, 0, T0}};
    pthread_t th[2];
    double t = now_s(), c = cpu_s();
    for (int i = 0; i < threads; i++) pthread_create(&th[i], NULL, bench_run, &b[i]);
    for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
    t = now_s() - t;
    *par = (cpu_s() - c) / t;
    *refused += b[0].refused + b[1].refused;
    return threads * n / t;
}

#define REPS 3

/* The best of REPS runs (the machine may be busy): admit+settle pairs per second, in total. */
static double bench(const gq_key_t *k1, const gq_key_t *k2, int threads, long n, long *refused)
{
    double best = 0, par;
    for (int i = 0; i < REPS; i++) {
        double r = bench1(k1, k2, threads, n, refused, &par);
        if (r > best) {
            best = r;
            parallelism = par;
        }
    }
    return best;
}

static void test_threads(void)
{
    gq_limits_t l = {.rpm = 1000000000, .tpm = GQ_MAX_LIMIT, .tpd = GQ_MAX_LIMIT, .concurrent = 64};
    gq_limiter_t *lim = gq_limiter_new(NULL);
    gq_limiter_set(lim, "x", NULL, &l);
    gq_limiter_set(lim, "y", NULL, &l);
    gq_limiter_set(lim, "x", "m", &l);
    const gq_key_t *kx = gq_find(lim, "x", NULL), *ky = gq_find(lim, "y", NULL),
                   *kxm = gq_find(lim, "x", "m");
    const char *env = getenv("GQ_BENCH_N");
    const long n = env ? atol(env) : 1000000;
    long refused = 0;
    double one_t = bench(kx, NULL, 1, n, &refused);
    double same = bench(kx, kx, 2, n, &refused), p_same = parallelism;
    double diff = bench(kx, ky, 2, n, &refused), p_diff = parallelism;
    double lv2 = bench(kxm, kxm, 2, n, &refused), p_lv2 = parallelism;
    printf("bench (%ld per thread, best of %d): admit+settle per second: 1 thread %.2fM; "
           "2 threads, one tenant %.2fM (cpu/wall %.1f); 2 threads, two tenants %.2fM (%.1f); "
           "2 threads, tenant+model override %.2fM (%.1f)\n",
           n, REPS, one_t / 1e6, same / 1e6, p_same, diff / 1e6, p_diff, lv2 / 1e6, p_lv2);
    CHECK(refused == 0, "nothing refused: %ld", refused);
    gq_state_t s;
    gq_state(kx, T0 + 10000, &s);
    /* every admission was settled with what it reserved: only the counts remain */
    CHECK(s.conc_in_use == 0, "no slot leaked: %lld", (long long)s.conc_in_use);
    CHECK(s.day_remaining == GQ_MAX_LIMIT - 10 * REPS * (n + 2 * n + n + 2 * n),
          "exact day count across threads: %lld", (long long)(GQ_MAX_LIMIT - s.day_remaining));
    gq_state(ky, T0 + 10000, &s);
    CHECK(s.day_remaining == GQ_MAX_LIMIT - 10 * REPS * n, "tenant y: %lld",
          (long long)(GQ_MAX_LIMIT - s.day_remaining));
    /* Two threads must not serialize badly: on two tenants, in total at least 3/4 of the
     * one-thread rate (with two CPUs; loose, as the machine may be shared; the numbers above
     * are the measurement). */
    if (sysconf(_SC_NPROCESSORS_ONLN) >= 2)
        CHECK(diff >= 0.75 * one_t, "two tenants in parallel: %.2fM vs %.2fM", diff / 1e6,
              one_t / 1e6);
    gq_limiter_free(lim);

    /* Exactness under contention: 2 threads race for a limit of 1000 requests. */
    lim = one("z", L(1000, 0, 0, 0));
    const gq_key_t *kz = gq_find(lim, "z", NULL);
    bench_t b[2] = {{kz, 5000, 0, T0}, {kz, 5000, 0, T0}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++) pthread_create(&th[i], NULL, bench_run, &b[i]);
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    /* times run T0..T0+4 ms: 1000 + floor(4 ms * 1000/60000) = 1000 */
    CHECK(10000 - b[0].refused - b[1].refused == 1000, "exactly 1000 admitted: %ld",
          10000 - b[0].refused - b[1].refused);
    gq_limiter_free(lim);
}

/* ---------------------------------------------------------------- Redis */

static pid_t redis_pid;
static int redis_port;

static int have_redis_server(void)
{
    const char *path = getenv("PATH");
    if (!path) return 0;
    char *dup = strdup(path), *save = NULL;
    int found = 0;
    for (char *dir = strtok_r(dup, ":", &save); dir && !found; dir = strtok_r(NULL, ":", &save)) {
        char f[4096];
        snprintf(f, sizeof(f), "%s/redis-server", dir);
        found = access(f, X_OK) == 0;
    }
    free(dup);
    return found;
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) < 0) {
        if (fd >= 0) close(fd);
        return -1;
    }
    close(fd);
    return ntohs(a.sin_port);
}

static void redis_stop(void)
{
    if (redis_pid > 0) {
        kill(redis_pid, SIGTERM);
        waitpid(redis_pid, NULL, 0);
        redis_pid = 0;
    }
}

static redisContext *redis_connect(void)
{
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", redis_port, tv);
    if (c && c->err) {
        redisFree(c);
        return NULL;
    }
    return c;
}

static int redis_start(void)
{
    redis_port = free_port();
    if (redis_port <= 0) return -1;
    char port[16];
    snprintf(port, sizeof(port), "%d", redis_port);
    pid_t parent = getpid();
    redis_pid = fork();
    if (redis_pid < 0) return -1;
    if (redis_pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM); /* never outlive the test */
        if (getppid() != parent) _exit(1);
        freopen("/dev/null", "w", stdout);
        execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--loglevel", "warning", (char *)NULL);
        _exit(127);
    }
    atexit(redis_stop);
    for (int i = 0; i < 100; i++) {
        redisContext *c = redis_connect();
        if (c) {
            redisReply *r = redisCommand(c, "PING");
            int ok = r && r->type == REDIS_REPLY_STATUS;
            freeReplyObject(r);
            redisFree(c);
            if (ok) return 0;
        }
        int st;
        if (waitpid(redis_pid, &st, WNOHANG) == redis_pid) {
            redis_pid = 0;
            return -1;
        }
        usleep(50000);
    }
    return -1;
}

/* Run a script command; reload the scripts on NOSCRIPT, as the plugin will. */
static redisReply *run(redisContext *c, gq_redis_cmd_t *cmd, gq_script_t s)
{
    redisReply *r = redisCommandArgv(c, cmd->argc, cmd->argv, cmd->argvlen);
    if (gq_redis_is_noscript(r)) {
        freeReplyObject(r);
        gq_redis_cmd_t load;
        gq_redis_load_cmd(&load, s);
        r = redisCommandArgv(c, load.argc, load.argv, load.argvlen);
        freeReplyObject(r);
        r = redisCommandArgv(c, cmd->argc, cmd->argv, cmd->argvlen);
    }
    if (r && r->type == REDIS_REPLY_ERROR) fprintf(stderr, "redis: %s\n", r->str);
    return r;
}

static int r_admit(redisContext *c, const gq_key_t *k, int64_t now, int64_t est, const char *slot,
                   int64_t lease, gq_decision_t *d, gq_ticket_t *t)
{
    static gq_redis_cmd_t cmd; /* main thread only */
    if (gq_redis_admit_cmd(&cmd, k, est, slot, lease, GQ_WINDOW_S, 0, NULL, now) < 0) return -1;
    redisReply *r = run(c, &cmd, GQ_SCRIPT_ADMIT);
    int rc = gq_redis_admit_parse(r, k, est, slot, d, t, NULL, NULL);
    freeReplyObject(r);
    return rc;
}

static int r_settle(redisContext *c, const gq_ticket_t *t, int64_t now, int64_t actual)
{
    static gq_redis_cmd_t cmd;
    if (gq_redis_settle_cmd(&cmd, t, actual, GQ_WINDOW_S, now) < 0) return -1;
    redisReply *r = run(c, &cmd, GQ_SCRIPT_SETTLE);
    int ok = r && r->type == REDIS_REPLY_INTEGER;
    freeReplyObject(r);
    return ok ? 0 : -1;
}

static int same_decision(const gq_decision_t *a, const gq_decision_t *b)
{
    return a->allowed == b->allowed && a->reason == b->reason && a->level == b->level &&
           a->retry_after_ms == b->retry_after_ms && a->now_ms == b->now_ms &&
           memcmp(&a->state, &b->state, sizeof(a->state)) == 0;
}

static void show(const char *who, const gq_decision_t *d)
{
    const gq_state_t *s = &d->state;
    fprintf(
        stderr,
        "  %s: allowed %d reason %d level %d retry %lld | req %lld/%lld/%lld tok %lld/%lld/%lld "
        "day %lld/%lld/%lld conc %lld/%lld\n",
        who, d->allowed, d->reason, d->level, (long long)d->retry_after_ms, (long long)s->req_limit,
        (long long)s->req_remaining, (long long)s->req_reset_ms, (long long)s->tok_limit,
        (long long)s->tok_remaining, (long long)s->tok_reset_ms, (long long)s->day_limit,
        (long long)s->day_remaining, (long long)s->day_reset_ms, (long long)s->conc_limit,
        (long long)s->conc_in_use);
}

/* The scenario: tenants and overrides exercising every rule. `walk` gives the random walk
 * larger day budgets and more slots, so that it runs into every limit, not only the day's. */
static gq_limiter_t *scenario_limiter(int walk)
{
    gq_limiter_t *lim = gq_limiter_new(NULL);
    gq_limits_t acme = L(5, 1000, walk ? 40000 : 3000, walk ? 4 : 2), mix = L(2, 400, 0, 1);
    gq_limits_t beta = L(3, 0, 0, 0), bursty = L(60, 600, 0, 0);
    gq_limits_t odd = L(7, 333, walk ? 9000 : 777, 3), big = L(0, 0, 0, 0);
    big.tpm = 5000000;
    big.tpd = 50000000;
    gq_limiter_set(lim, "acme", NULL, &acme);
    gq_limiter_set(lim, "acme", "mixtral-8x7b", &mix);
    gq_limiter_set(lim, "beta", NULL, &beta);
    gq_limiter_set(lim, "bursty", NULL, &bursty);
    gq_limiter_set(lim, "odd/tenant{x}", NULL, &odd);
    gq_limiter_set(lim, "odd/tenant{x}", "meta/llama:3", &beta);
    gq_limiter_set(lim, "big", NULL, &big);
    return lim;
}

typedef struct step {
    int64_t at; /* ms after the start */
    char op;    /* 'A' admit into ticket slot `t`, 'S' settle ticket `t` with `n` tokens */
    const char *tenant, *model;
    int64_t n;
    int t;
} step_t;

/* Hand-written: edges of each rule. Starts 23:58:00 UTC, crosses midnight. */
static const step_t table[] = {
    {0, 'A', "acme", NULL, 400, 0},
    {0, 'A', "acme", NULL, 400, 1},
    {0, 'A', "acme", NULL, 400, 2}, /* tpm refuses, conc refuses: tpm longer */
    {0, 'S', NULL, NULL, 100, 0},
    {0, 'A', "acme", NULL, 400, 2},
    {1, 'A', "acme", "mixtral-8x7b", 10, 3}, /* conc full at the tenant */
    {2, 'S', NULL, NULL, 400, 1},
    {3, 'A', "acme", "mixtral-8x7b", 10, 3},
    {3, 'A', "acme", "mixtral-8x7b", 10, 4}, /* model conc 1 */
    {4, 'S', NULL, NULL, 0, 3},
    {5, 'A', "acme", "mixtral-8x7b", 500, 4},
    {6, 'A', "acme", "mixtral-8x7b", 10, 4},
    {7, 'A', "acme", "other", 10, 5},
    {8, 'A', "acme", NULL, 10, 6},
    {12000, 'A', "acme", NULL, 10, 6},
    {12001, 'S', NULL, NULL, 10, 2},
    {12001, 'S', NULL, NULL, 10, 5},
    {30000, 'A', "acme", NULL, 2000, 7},
    {90000, 'A', "acme", NULL, 900, 7},
    {90000, 'S', NULL, NULL, 900, 7},
    {100000, 'A', "acme", NULL, 900, 8},
    {100000, 'A', "acme", NULL, 10, 9},
    {119999, 'A', "acme", NULL, 10, 10},
    {120000, 'A', "acme", NULL, 10, 10},
    {120001, 'S', NULL, NULL, 5000, 8},
    {120002, 'A', "acme", NULL, 10, 11},
    {0, 'A', "beta", NULL, 1, 12},
    {0, 'A', "beta", NULL, 1, 12},
    {0, 'A', "beta", NULL, 1, 12},
    {0, 'A', "beta", NULL, 1, 12},
    {19999, 'A', "beta", NULL, 1, 12},
    {20000, 'A', "beta", NULL, 1, 12},
    {0, 'A', "bursty", NULL, 30, 13},
    {0, 'A', "bursty", NULL, 30, 13},
    {0, 'A', "bursty", NULL, 30, 13},
    {0, 'A', "bursty", NULL, 30, 13},
    {0, 'A', "bursty", NULL, 1, 13},
    {1000, 'A', "bursty", NULL, 500, 13},
    {10000, 'A', "bursty", NULL, 1, 13},
    {0, 'A', "odd/tenant{x}", NULL, 333, 14},
    {0, 'A', "odd/tenant{x}", NULL, 1, 15},
    {8571, 'A', "odd/tenant{x}", NULL, 1, 15},
    {8572, 'A', "odd/tenant{x}", NULL, 1, 15},
    {60061, 'A', "odd/tenant{x}", "meta/llama:3", 300, 16},
    {60062, 'A', "odd/tenant{x}", "meta/llama:3", 300, 17},
    {60063, 'S', NULL, NULL, 1, 16},
    {90000, 'A', "odd/tenant{x}", NULL, 500, 18},
    {0, 'A', "big", NULL, 4999999, 19},
    {0, 'A', "big", NULL, 2, 20},
    {1, 'A', "big", NULL, 83, 20},
    {1, 'A', "big", NULL, 0, 21},
    {0, 'S', NULL, NULL, 12345678, 19},
    {5000, 'A', "big", NULL, 1, 21},
};

/* What the compared admissions covered: [0] allowed, [1..4] refused by GQ_RPM..GQ_CONC,
 * [5] refused at the model level, [6] settlements. */
static int covered[7];

/* Runs steps on both stores from `start` and compares every admission. */
static int run_steps(redisContext *c, gq_limiter_t *lim, const step_t *steps, size_t n,
                     int64_t start, int64_t lease)
{
    static gq_ticket_t lt[64], rt[64];
    static int held[64];
    memset(held, 0, sizeof(held));
    int mismatches = 0;
    for (size_t i = 0; i < n; i++) {
        const step_t *s = &steps[i];
        int64_t now = start + s->at;
        if (s->op == 'A') {
            const gq_key_t *k = gq_find(lim, s->tenant, s->model);
            if (!k) continue;
            char slot[48];
            gq_slot_id(slot, 0xfeed, i);
            gq_decision_t dl, dr;
            gq_ticket_t tl, tr;
            int a = gq_admit(k, now, s->n, &dl, &tl);
            int b = r_admit(c, k, now, s->n, slot, lease, &dr, &tr);
            covered[dl.allowed ? 0 : dl.reason]++;
            covered[5] += !dl.allowed && dl.level == 1;
            if (a != b || !same_decision(&dl, &dr)) {
                if (mismatches++ < 5) {
                    fprintf(stderr, "step %zu (%s/%s est %lld at +%lld):\n", i, s->tenant,
                            s->model ? s->model : "-", (long long)s->n, (long long)s->at);
                    show("local", &dl);
                    show("redis", &dr);
                }
            }
            if (a == 1 && b == 1 && !held[s->t]) {
                lt[s->t] = tl;
                rt[s->t] = tr;
                held[s->t] = 1;
                if (tl.day != tr.day || tl.reserved != tr.reserved) mismatches++;
            }
        } else if (held[s->t]) {
            gq_settle(&lt[s->t], now, s->n);
            if (r_settle(c, &rt[s->t], now, s->n) < 0) mismatches++;
            covered[6]++;
            held[s->t] = 0;
        }
    }
    return mismatches;
}

/* A long pseudo-random walk over the same tenants: times, estimates, settlements. */
static size_t random_steps(step_t *out, size_t n, uint64_t seed)
{
    static const char *const tenants[] = {"acme",          "acme",          "beta", "bursty",
                                          "odd/tenant{x}", "odd/tenant{x}", "big",  "acme"};
    static const char *const models[] = {NULL, "mixtral-8x7b", NULL, NULL,
                                         NULL, "meta/llama:3", NULL, "other"};
    int64_t at = 0;
    int open[64] = {0};
    for (size_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        uint32_t r = (uint32_t)(seed >> 33);
        int gap = r % 7;
        at += gap == 0 ? 0 : gap < 4 ? (int64_t)(r >> 8) % 200 : (int64_t)(r >> 8) % 9000;
        int t = (int)((r >> 4) % 64);
        if (open[t]) {
            out[i] = (step_t){at, 'S', NULL, NULL, (int64_t)(r >> 12) % 700, t};
            open[t] = 0;
        } else {
            int w = (int)((r >> 16) % 8);
            int64_t est = (r >> 20) % 5 == 0 ? (int64_t)(r >> 9) % 3000 : (int64_t)(r >> 9) % 300;
            out[i] = (step_t){at, 'A', tenants[w], models[w], est, t};
            open[t] = 1; /* may not be admitted; a settle of it is then skipped */
        }
    }
    return n;
}

static int local_refusals; /* refusals repeated from a recent refusal of Redis */

/* One attempt of an "instance" with leases, as the plugin does it: from the leases, or one
 * admit call that gives back the old ones and takes new ones (or a plain admit while another
 * renewal is in flight, which cannot happen here). Settles with actual (>= 0) at once. */
static int lease_try(redisContext *c, const gq_key_t *k, int64_t mono, int64_t est, int64_t actual,
                     int *calls)
{
    static gq_redis_cmd_t cmd;
    gq_decision_t d;
    gq_ticket_t t;
    gq_lease_ret_t ret[2];
    int renew = 0, rc = 1;
    int got = gq_lease_admit(k, mono, est, &d, &t, &renew, ret);
    if (got < 0) {
        local_refusals++;
        return 0;
    }
    if (!got) {
        gq_redis_admit_cmd(&cmd, k, est, "", 1000, GQ_REDIS_WINDOW_S, renew, renew ? ret : NULL, 0);
        redisReply *r = run(c, &cmd, GQ_SCRIPT_ADMIT);
        (*calls)++;
        gq_lease_grant_t g[2];
        gq_level_fig_t f[2];
        rc = gq_redis_admit_parse(r, k, est, "", &d, &t, g, f);
        freeReplyObject(r);
        if (renew)
            gq_lease_install(k, mono + GQ_LEASE_MS, rc >= 0 ? g : NULL, f, rc == 1 ? &t : NULL);
        if (rc == 0) gq_lease_refused(k, mono, &d);
    } else if (renew) { /* admitted, and the leases are ageing: a renewal that admits nothing */
        gq_redis_admit_cmd(&cmd, k, 0, "", 1000, GQ_REDIS_WINDOW_S, 2, ret, 0);
        redisReply *r = run(c, &cmd, GQ_SCRIPT_ADMIT);
        (*calls)++;
        gq_decision_t d2;
        gq_lease_grant_t g[2];
        gq_level_fig_t f[2];
        int rc2 = gq_redis_admit_parse(r, k, 0, "", &d2, NULL, g, f);
        freeReplyObject(r);
        gq_lease_install(k, mono + GQ_LEASE_MS, rc2 >= 0 ? g : NULL, f, NULL);
    }
    if (rc == 1 && actual >= 0 && !gq_lease_settle(&t, mono, actual)) {
        gq_redis_settle_cmd(&cmd, &t, actual, GQ_REDIS_WINDOW_S, 0);
        freeReplyObject(run(c, &cmd, GQ_SCRIPT_SETTLE));
        (*calls)++;
    }
    return rc == 1;
}

static long long hget(redisContext *c, const char *key, const char *field)
{
    redisReply *r = redisCommand(c, "HGET %s %s", key, field);
    long long v = r && r->type == REDIS_REPLY_STRING ? atoll(r->str) : -1;
    freeReplyObject(r);
    return v;
}

static void test_leases(redisContext *c)
{
    /* Three "instances" (limiters of their own, as separate processes have), interleaved,
     * against 300 requests per minute: exactly 300, with far fewer round trips. */
    gq_limits_t ll = L(300, 0, 0, 0);
    gq_limiter_t *inst[3];
    for (int i = 0; i < 3; i++) {
        inst[i] = gq_limiter_new(NULL);
        gq_limiter_set(inst[i], "leased", NULL, &ll);
    }
    int adm = 0, calls = 0, calls_at_limit = 0;
    for (int i = 0; i < 900; i++) {
        adm += lease_try(c, gq_find(inst[i % 3], "leased", NULL), 1000000, 1, -1, &calls);
        if (adm == 300 && !calls_at_limit) calls_at_limit = calls;
    }
    CHECK(adm == 300, "three instances with leases: %d of 300", adm);
    CHECK(calls_at_limit > 0 && calls_at_limit < 120, "%d round trips for 300 admissions",
          calls_at_limit);
    CHECK(hget(c, "gotthard:q:{leased}:rpm", "s") == 300, "Redis counts 300: %lld",
          hget(c, "gotthard:q:{leased}:rpm", "s"));
    for (int i = 0; i < 3; i++) gq_limiter_free(inst[i]);

    /* Tokens: settlements fold into the lease; an expired lease's rest goes back with the next
     * call, and Redis then holds what was used plus the new lease. */
    gq_limits_t tl = L(0, 100000, 0, 0);
    gq_limiter_t *a = gq_limiter_new(NULL);
    gq_limiter_set(a, "tok", NULL, &tl);
    const gq_key_t *k = gq_find(a, "tok", NULL);
    calls = 0;
    for (int i = 0; i < 3; i++) lease_try(c, k, 5000000, 100, 40, &calls);
    CHECK(calls == 1, "one call for three admissions and settlements: %d", calls);
    long long s1 = hget(c, "gotthard:q:{tok}:tpm", "s");
    CHECK(s1 == 100 + (100000 - 100) / 8, "the first call: 100 and a lease of an eighth: %lld", s1);
    CHECK(lease_try(c, k, 5000000 + GQ_LEASE_MS, 100, -1, &calls) && calls == 2,
          "an expired lease renews");
    long long s2 = hget(c, "gotthard:q:{tok}:tpm", "s");
    CHECK(s2 == 220 + (100000 - 220) / 8, "used 3 x 40, 100 reserved, the new lease: %lld", s2);
    gq_limiter_free(a);

    /* Renewed ahead: in a lease's last quarter a request is admitted from it and a renewal that
     * admits nothing takes the next lease; the rest of the old one goes back later. */
    gq_limits_t al = L(800, 0, 0, 0);
    a = gq_limiter_new(NULL);
    gq_limiter_set(a, "ahead", NULL, &al);
    k = gq_find(a, "ahead", NULL);
    calls = 0;
    int64_t m0 = 9000000;
    CHECK(lease_try(c, k, m0, 1, -1, &calls) && calls == 1, "first: admitted with a lease");
    CHECK(hget(c, "gotthard:q:{ahead}:rpm", "s") == 1 + 799 / 8, "1 and a lease of 99");
    CHECK(lease_try(c, k, m0 + 100, 1, -1, &calls) && calls == 1, "from the lease");
    CHECK(lease_try(c, k, m0 + 800, 1, -1, &calls) && calls == 2, "ageing: renewed ahead");
    CHECK(hget(c, "gotthard:q:{ahead}:rpm", "s") == 100 + 700 / 8,
          "the renewal admitted nothing, leased 87: %lld", hget(c, "gotthard:q:{ahead}:rpm", "s"));
    CHECK(lease_try(c, k, m0 + 900, 1, -1, &calls) && calls == 2, "from the new lease");
    CHECK(lease_try(c, k, m0 + 2000, 1, -1, &calls) && calls == 3, "expired: renewed in line");
    CHECK(hget(c, "gotthard:q:{ahead}:rpm", "s") == 5 + (800 - 5) / 8,
          "every rest came back: 5 admitted and the new lease: %lld",
          hget(c, "gotthard:q:{ahead}:rpm", "s"));
    gq_limiter_free(a);

    /* Near the limit the leases shrink to nothing: every request asks Redis. */
    gq_limits_t sl = L(10, 0, 0, 0);
    a = gq_limiter_new(NULL);
    gq_limiter_set(a, "small", NULL, &sl);
    k = gq_find(a, "small", NULL);
    calls = 0;
    adm = 0;
    local_refusals = 0;
    for (int i = 0; i < 20; i++) adm += lease_try(c, k, 7000000, 1, -1, &calls);
    CHECK(adm == 10 && calls == 11 && local_refusals == 9,
          "limit 10: %d admitted, %d calls, %d refusals repeated here", adm, calls, local_refusals);
    /* A refusal is repeated only GQ_REFUSAL_MS, then Redis is asked again. */
    CHECK(!lease_try(c, k, 7000000 + GQ_REFUSAL_MS, 1, -1, &calls) && calls == 12, "asked again");
    gq_limiter_free(a);
}

typedef struct inst {
    const gq_key_t *k;
    int attempts, admitted, errors;
} inst_t;

static void *instance_run(void *arg)
{
    inst_t *in = arg;
    redisContext *c = redis_connect();
    if (!c) {
        in->errors++;
        return NULL;
    }
    gq_redis_cmd_t *cmd = malloc(sizeof(*cmd));
    for (int i = 0; i < in->attempts; i++) {
        gq_decision_t d;
        gq_ticket_t t;
        gq_redis_admit_cmd(cmd, in->k, 1, "s", 60000, GQ_REDIS_WINDOW_S, 0, NULL, 0);
        redisReply *r = redisCommandArgv(c, cmd->argc, cmd->argv, cmd->argvlen);
        int rc = gq_redis_admit_parse(r, in->k, 1, "s", &d, &t, NULL, NULL);
        freeReplyObject(r);
        if (rc < 0) in->errors++;
        if (rc == 1) in->admitted++;
    }
    free(cmd);
    redisFree(c);
    return NULL;
}

static void test_redis(void)
{
    if (redis_start() < 0) {
        CHECK(0, "redis-server is installed but did not start");
        return;
    }
    redisContext *c = redis_connect(), *c2 = redis_connect();
    CHECK(c && c2, "connected");
    if (!c || !c2) return;

    /* Script SHAs agree with the server's. */
    for (int s = 0; s < GQ_SCRIPT_COUNT; s++) {
        gq_redis_cmd_t load;
        gq_redis_load_cmd(&load, (gq_script_t)s);
        redisReply *r = redisCommandArgv(c, load.argc, load.argv, load.argvlen);
        CHECK(r && r->type == REDIS_REPLY_STRING && strcmp(r->str, gq_script_sha(s)) == 0,
              "script %d loads: %s", s, r ? r->str : "(null)");
        freeReplyObject(r);
    }

    /* Keys: hash-tagged by tenant, encoded. */
    char key[256];
    gq_redis_key(key, sizeof(key), "odd/tenant{x}", "meta/llama:3", "rpm");
    CHECK(strcmp(key, "gotthard:q:{odd%2Ftenant%7Bx%7D}:m:meta%2Fllama%3A3:rpm") == 0, "key %s",
          key);
    CHECK(gq_redis_key(key, 20, "acme", NULL, "rpm") == -1, "too small a buffer");

    /* The scenario table, then a long random walk, on both stores: the same decisions. */
    gq_limiter_t *lim = scenario_limiter(0);
    int64_t start = T0 + DAY - 120000; /* 23:58 UTC */
    int mm = run_steps(c, lim, table, sizeof(table) / sizeof(table[0]), start, DAY);
    CHECK(mm == 0, "scenario table: %d mismatches", mm);
    gq_limiter_free(lim);
    redisReply *r = redisCommand(c, "FLUSHALL");
    freeReplyObject(r);

    enum { NRAND = 3000 };
    static step_t walk[NRAND];
    random_steps(walk, NRAND, 42);
    lim = scenario_limiter(1);
    mm = run_steps(c, lim, walk, NRAND, T0 + DAY - 1800000, 2 * DAY);
    CHECK(mm == 0, "random walk of %d steps: %d mismatches", NRAND, mm);
    printf("redis: %d-step scenario table and %d-step random walk compared: %d admitted, refused "
           "%d rpm, %d tpm, %d tpd, %d concurrency (%d by a model override), %d settled\n",
           (int)(sizeof(table) / sizeof(table[0])), NRAND, covered[0], covered[1], covered[2],
           covered[3], covered[4], covered[5], covered[6]);
    CHECK(covered[0] > 100 && covered[1] > 10 && covered[2] > 10 && covered[3] > 10 &&
              covered[4] > 10 && covered[5] > 10 && covered[6] > 100,
          "every rule exercised");

    /* Keys expire on their own and hold nothing but the tenant's and models' names. */
    r = redisCommand(c, "KEYS *");
    int bad = 0, nkeys = r ? (int)r->elements : 0;
    for (int i = 0; i < nkeys; i++) {
        const char *kname = r->element[i]->str;
        redisReply *ttl = redisCommand(c, "PTTL %s", kname);
        if (strncmp(kname, "gotthard:q:{", 12) != 0 || !ttl || ttl->integer <= 0) {
            fprintf(stderr, "key %s pttl %lld\n", kname, ttl ? ttl->integer : -9);
            bad++;
        }
        freeReplyObject(ttl);
    }
    freeReplyObject(r);
    CHECK(nkeys > 0 && bad == 0, "%d keys, %d without expiry or misnamed", nkeys, bad);
    gq_limiter_free(lim);
    r = redisCommand(c, "FLUSHALL");
    freeReplyObject(r);

    /* Concurrency slots lease: a slot never settled frees itself; touch extends it. */
    lim = one("lease", L(0, 0, 0, 1));
    const gq_key_t *k = gq_find(lim, "lease", NULL);
    gq_decision_t d;
    gq_ticket_t t, t2;
    int64_t x = T0 + 5000;
    CHECK(r_admit(c, k, x, 1, "dead-gateway:1", 1000, &d, &t) == 1, "slot taken");
    CHECK(r_admit(c, k, x + 500, 1, "g:2", 1000, &d, NULL) == 0 && d.reason == GQ_CONC,
          "slot busy");
    gq_redis_cmd_t *touch = malloc(sizeof(*touch));
    gq_redis_touch_cmd(touch, &t, 1000, x + 900);
    r = run(c, touch, GQ_SCRIPT_TOUCH);
    CHECK(r && r->type == REDIS_REPLY_INTEGER && r->integer == 1, "touched");
    freeReplyObject(r);
    CHECK(r_admit(c, k, x + 1500, 1, "g:3", 1000, &d, NULL) == 0, "still held after the touch");
    CHECK(r_admit(c, k, x + 1901, 1, "g:4", 1000, &d, &t2) == 1 && d.state.conc_in_use == 1,
          "expired slot pruned");
    gq_redis_touch_cmd(touch, &t, 1000, x + 2000);
    r = run(c, touch, GQ_SCRIPT_TOUCH);
    CHECK(r && r->type == REDIS_REPLY_INTEGER && r->integer == 0, "a lost slot is not revived");
    freeReplyObject(r);
    free(touch);
    CHECK(r_settle(c, &t, x + 2001, 1) == 0, "settling a lost slot is harmless");
    CHECK(r_admit(c, k, x + 2002, 1, "g:5", 1000, &d, NULL) == 0, "the live slot still counts");
    r_settle(c, &t2, x + 2003, 1);
    r = redisCommand(c, "EXISTS gotthard:q:{lease}:conc");
    CHECK(r && r->integer == 0, "empty slot set deleted");
    freeReplyObject(r);
    gq_limiter_free(lim);

    /* NOSCRIPT after a flush of the script cache: reloaded and retried. */
    r = redisCommand(c, "SCRIPT FLUSH");
    freeReplyObject(r);
    lim = one("ns", L(10, 0, 0, 0));
    k = gq_find(lim, "ns", NULL);
    gq_redis_cmd_t *cmd = malloc(sizeof(*cmd));
    gq_redis_admit_cmd(cmd, k, 1, "s", 1000, GQ_REDIS_WINDOW_S, 0, NULL, 0);
    r = redisCommandArgv(c, cmd->argc, cmd->argv, cmd->argvlen);
    CHECK(gq_redis_is_noscript(r), "NOSCRIPT after SCRIPT FLUSH");
    freeReplyObject(r);
    free(cmd);
    CHECK(r_admit(c, k, 0, 1, "s", 1000, &d, NULL) == 1 && d.now_ms > T0,
          "reloaded; the server's clock: %lld", (long long)d.now_ms);
    gq_limiter_free(lim);

    /* Two "instances" (connections) alternating against a limit of 100 per minute, on the
     * server's clock: exactly 100. Then four threads, each its own connection, limit 20. */
    lim = one("inst", L(100, 0, 0, 0));
    k = gq_find(lim, "inst", NULL);
    int admitted = 0;
    for (int i = 0; i < 300; i++)
        admitted += r_admit(i % 2 ? c2 : c, k, 0, 1, "s", 1000, &d, NULL) == 1;
    CHECK(admitted == 100, "two connections alternating: %d of 100", admitted);
    CHECK(d.state.req_remaining == 0 && d.reason == GQ_RPM, "the last refused");
    gq_limiter_free(lim);
    lim = one("inst4", L(20, 0, 0, 0));
    inst_t in[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        in[i] = (inst_t){gq_find(lim, "inst4", NULL), 50, 0, 0};
        pthread_create(&th[i], NULL, instance_run, &in[i]);
    }
    admitted = 0;
    int errors = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        admitted += in[i].admitted;
        errors += in[i].errors;
    }
    CHECK(admitted == 20 && errors == 0, "four concurrent connections: %d of 20, %d errors",
          admitted, errors);
    gq_limiter_free(lim);

    test_leases(c);

    redisFree(c);
    redisFree(c2);
    redis_stop();
}

static int64_t est_of(const char *json, size_t len)
{
    cJSON *j = cJSON_Parse(json);
    int64_t e = gw_quota_estimate_tokens(len, j, 0);
    cJSON_Delete(j);
    return e;
}

/* The reservation counts every choice an answer may hold: max(n, best_of, 1), bounded. */
static void test_estimate(void)
{
    CHECK(est_of("{\"max_tokens\":40}", 400) == 100 + 40, "one choice");
    CHECK(est_of("{\"max_tokens\":40,\"n\":50}", 400) == 100 + 2000, "n: 50");
    CHECK(est_of("{\"max_tokens\":40,\"best_of\":20,\"n\":3}", 0) == 800, "best_of over n");
    CHECK(est_of("{\"max_tokens\":40,\"best_of\":2,\"n\":3}", 0) == 120, "n over best_of");
    CHECK(est_of("{\"max_completion_tokens\":10,\"n\":4}", 0) == 40, "max_completion_tokens");
    CHECK(est_of("{\"n\":2}", 0) == 2 * 256, "the default completion, per choice");
    CHECK(est_of("{\"max_tokens\":10,\"n\":1e9}", 0) == 10 * 128, "n bounded");
    CHECK(est_of("{\"max_tokens\":999999999,\"n\":1e300}", 0) == 999999999LL * 128,
          "the largest estimate, no overflow");
    CHECK(est_of("{\"max_tokens\":10,\"n\":0}", 0) == 10, "n 0 counts one");
    CHECK(est_of("{\"max_tokens\":10,\"n\":-3}", 0) == 10, "negative n counts one");
    CHECK(est_of("{\"max_tokens\":10,\"n\":\"7\"}", 0) == 10, "a string n counts one");
    CHECK(est_of("{\"max_tokens\":10,\"n\":2.5}", 0) == 20, "a fractional n: its whole part");
    cJSON *j = cJSON_Parse("{\"n\":50}");
    CHECK(gw_quota_estimate_tokens(400, j, 1) == 100, "embeddings: no completion");
    cJSON_Delete(j);
}

static int usage_of(const char *text, int64_t *p, int64_t *c)
{
    *p = *c = -1;
    return gw_body_usage(NULL, text, strlen(text), p, c, NULL);
}

/* A partial usage is no usage: the caller falls back to its estimate. */
static void test_usage(void)
{
    int64_t p, c;
    CHECK(usage_of("{\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":9}}", &p, &c) == 1 &&
              p == 7 && c == 9,
          "whole usage");
    CHECK(usage_of("{\"usage\":{\"prompt_tokens\":7,\"total_tokens\":7}}", &p, &c) == 1 && p == 7 &&
              c == 0,
          "embeddings: total_tokens");
    CHECK(usage_of("{\"usage\":{\"prompt_tokens\":7,\"total_tokens\":12}}", &p, &c) == 1 && c == 5,
          "completion from total_tokens");
    const char *partial[] = {
        "{\"usage\":{\"prompt_tokens\":7}}",
        "{\"usage\":{\"prompt_tokens\":7,\"total_tokens\":3}}",
        "{\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":-1}}",
        "{\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2.5}}",
        "{\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":1e13}}",
        "{\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":\"9\"}}",
        "{\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":null}}",
        "{\"usage\":{\"prompt_tokens\":7.5,\"completion_tokens\":9}}",
        "{\"usage\":{\"completion_tokens\":9}}",
        "{\"usage\":{\"prompt_tokens\":-7,\"completion_tokens\":9}}",
        NULL,
    };
    for (size_t i = 0; partial[i]; i++)
        CHECK(usage_of(partial[i], &p, &c) == 0, "%s: read as usage %lld/%lld", partial[i],
              (long long)p, (long long)c);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    test_estimate();
    test_usage();
    test_format();
    test_window_requests();
    test_tokens();
    test_day();
    test_concurrency();
    test_overrides();
    test_choice();
    test_reload();
    test_threads();
    int skipped = 0;
    if (have_redis_server())
        test_redis();
    else {
        printf("SKIPPED: the Redis part (redis-server not found in PATH)\n");
        skipped = 1;
    }
    int rc = check_done();
    if (skipped) printf("1 skipped\n");
    return rc ? rc : skipped ? 77 : 0;
}
