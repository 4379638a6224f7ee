/* Unit tests of the failed-authentication limiter's arithmetic (GCRA), with an injected clock. */
#include <stdint.h>
#include <string.h>

#include "proxy/auth_guard.h"
#include "check.h"

#define S 1000000ull

/* Events at `now` until one is refused: how many passed. */
static int burst_at(uint64_t *tat, uint64_t now, uint64_t t, uint64_t burst, uint64_t *wait)
{
    int n = 0;
    uint64_t next;
    while ((*wait = gw_auth_guard_gcra(*tat, now, t, burst, &next)) == 0 && n < 1000000) {
        *tat = next;
        n++;
    }
    return n;
}

int main(void)
{
    uint64_t tat = 0, wait = 0, now = 1000 * S, t = S / 10; /* 10 per second */
    /* From cold: exactly the burst at once, then the wait for one more. */
    CHECK(burst_at(&tat, now, t, 100, &wait) == 100, "burst of 100");
    CHECK(wait == t, "the next one in one interval: %llu", (unsigned long long)wait);
    /* Refused events do not move the slot: the wait shrinks with time only. */
    uint64_t before = tat, next = 0;
    CHECK(gw_auth_guard_gcra(tat, now + t / 2, t, 100, &next) == t / 2 && tat == before,
          "half an interval later, half the wait");
    /* Sustained: one per interval, never more. */
    int passed = 0;
    for (uint64_t at = now; at < now + 10 * S; at += t / 4) {
        if (gw_auth_guard_gcra(tat, at, t, 100, &next) == 0) {
            tat = next;
            passed++;
        }
    }
    CHECK(passed >= 99 && passed <= 101, "10 s at 10/s after the burst: %d", passed);
    /* Idle long enough, the whole burst is back, not more. */
    CHECK(burst_at(&tat, now + 1000 * S, t, 100, &wait) == 100, "burst refilled, capped");
    /* A burst of one: every other event at twice the rate. */
    tat = 0;
    passed = 0;
    for (uint64_t at = now; at < now + S; at += t / 2) {
        if (gw_auth_guard_gcra(tat, at, t, 1, &next) == 0) {
            tat = next;
            passed++;
        }
    }
    CHECK(passed == 10, "burst 1 at 20/s offered: %d", passed);
    /* A huge rate with a huge burst does not overflow. */
    tat = 0;
    CHECK(gw_auth_guard_gcra(tat, UINT64_MAX / 4, 1, 1000000, &next) == 0, "extremes");
    /* Room: what a slot still lets through, in step with the GCRA itself. */
    t = S / 10;
    CHECK(gw_auth_guard_room(0, now, t, 100) == 100, "a cold slot: the whole burst");
    tat = 0;
    CHECK(burst_at(&tat, now, t, 100, &wait) == 100, "burst");
    CHECK(gw_auth_guard_room(tat, now, t, 100) == 0, "spent: no room");
    CHECK(gw_auth_guard_room(tat, now + t, t, 100) == 1, "one interval later: one");
    CHECK(gw_auth_guard_room(tat, now + t + t / 2, t, 100) == 1, "one and a half: still one");
    for (uint64_t k = 0, at = now; k < 300; k++, at += t / 3) {
        uint64_t room = gw_auth_guard_room(tat, at, t, 7), n = 0;
        uint64_t probe = tat;
        while (gw_auth_guard_gcra(probe, at, t, 7, &next) == 0 && n < 100) {
            probe = next;
            n++;
        }
        CHECK(room == n, "room %llu, events that pass %llu", (unsigned long long)room,
              (unsigned long long)n);
        if (k % 2 && gw_auth_guard_gcra(tat, at, t, 7, &next) == 0) tat = next;
    }
    /* Failures counted by reason, in the fixed list's order; an unknown reason as "other". */
    unsigned long before_exp = 0, before_other = 0, c = 0;
    const char *name;
    size_t n = 0, i_exp = 0, i_other = 0;
    for (size_t i = 0; (name = gw_auth_guard_counted(i, &c)); i++, n++) {
        if (strcmp(name, "jwt_expired") == 0) i_exp = i, before_exp = c;
        if (strcmp(name, "other") == 0) i_other = i, before_other = c;
    }
    CHECK(n == 16 && i_exp && i_other == n - 1, "16 reasons, other last: %zu", n);
    gw_auth_guard_count("jwt_expired");
    gw_auth_guard_count("jwt_expired");
    gw_auth_guard_count("no_such_reason");
    gw_auth_guard_count(NULL);
    gw_auth_guard_counted(i_exp, &c);
    CHECK(c == before_exp + 2, "jwt_expired counted twice: %lu", c);
    gw_auth_guard_counted(i_other, &c);
    CHECK(c == before_other + 2, "unknown reasons as other: %lu", c);
    CHECK(gw_auth_guard_counted(n, &c) == NULL, "NULL past the end");
    return check_done();
}
