/* Unit tests of the balancer's arithmetic (gateway/proxy/balance_math.h, used by balance.c):
 * smooth weighted round robin, power of two choices, slow start, queue-aware scores. */
#include <stdint.h>
#include <string.h>

#include "proxy/balance_math.h"
#include "check.h"

/* n picks of smooth WRR over weights w (0: no room, not offered), names 'a'.. into out. */
static void swrr_sequence(const int64_t *w, size_t nb, int64_t *cur, char *out, size_t n)
{
    for (size_t k = 0; k < n; k++) {
        gw_lb_swrr_t s;
        gw_lb_swrr_start(&s);
        for (size_t i = 0; i < nb; i++)
            if (w[i] > 0) gw_lb_swrr_offer(&s, (long)i, &cur[i], w[i]);
        long best = gw_lb_swrr_done(&s);
        out[k] = best < 0 ? '-' : (char)('a' + best);
    }
    out[n] = '\0';
}

static void test_swrr(void)
{
    /* nginx's own example (ngx_http_upstream_round_robin.c): weights 5, 1, 1. */
    int64_t w[3] = {5, 1, 1}, cur[3] = {0, 0, 0};
    char seq[32];
    swrr_sequence(w, 3, cur, seq, 7);
    CHECK(strcmp(seq, "aabacaa") == 0, "5,1,1: %s", seq);
    CHECK(cur[0] == 0 && cur[1] == 0 && cur[2] == 0, "back to zero after a cycle");
    swrr_sequence(w, 3, cur, seq, 14);
    CHECK(strcmp(seq, "aabacaaaabacaa") == 0, "two more cycles: %s", seq);

    /* Shares follow the weights exactly over a cycle, and smoothly: 3, 2 gives ababa. */
    int64_t w2[2] = {3, 2}, cur2[2] = {0, 0};
    swrr_sequence(w2, 2, cur2, seq, 5);
    CHECK(strcmp(seq, "ababa") == 0, "3,2: %s", seq);

    /* Equal weights: plain round robin, the first on ties. */
    int64_t w3[3] = {1, 1, 1}, cur3[3] = {0, 0, 0};
    swrr_sequence(w3, 3, cur3, seq, 6);
    CHECK(strcmp(seq, "abcabc") == 0, "1,1,1: %s", seq);

    /* A backend without room is not offered: the others share, and none at all is -1. */
    int64_t w4[3] = {5, 0, 1}, cur4[3] = {0, 0, 0};
    swrr_sequence(w4, 3, cur4, seq, 6);
    CHECK(strcmp(seq, "aaacaa") == 0, "5,-,1: %s", seq);
    int a = 0, c = 0;
    for (size_t k = 0; k < 6; k++) a += seq[k] == 'a', c += seq[k] == 'c';
    CHECK(a == 5 && c == 1, "5,-,1 over a cycle: %d a, %d c (%s)", a, c, seq);
    int64_t none[2] = {0, 0}, curn[2] = {0, 0};
    swrr_sequence(none, 2, curn, seq, 1);
    CHECK(strcmp(seq, "-") == 0, "nothing offered: %s", seq);

    /* The effective weight: at a share of slow start, never below 1. */
    CHECK(gw_lb_wrr_weight(10, 1024) == 10, "full share");
    CHECK(gw_lb_wrr_weight(10, 512) == 5, "half share: %lld", (long long)gw_lb_wrr_weight(10, 512));
    CHECK(gw_lb_wrr_weight(1, 64) == 1, "never below 1");
}

static void test_two_choices(void)
{
    /* Never the more loaded of the two, whatever the coin; a tie goes by the coin. */
    uint64_t x = 88172645463325252ull;
    int worse = 0, ties[2] = {0, 0};
    for (int k = 0; k < 10000; k++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        uint64_t la = x % 7, lb = (x >> 8) % 7, coin = x >> 20;
        int pick = gw_lb_two_choices(la, lb, coin);
        if (la != lb && (pick == 0 ? la > lb : lb > la)) worse++;
        if (la == lb) ties[pick]++;
    }
    CHECK(worse == 0, "picked the worse of two %d times", worse);
    CHECK(ties[0] > 500 && ties[1] > 500, "ties split by the coin: %d / %d", ties[0], ties[1]);
    CHECK(gw_lb_two_choices(3, 5, 0) == 0 && gw_lb_two_choices(5, 3, 1) == 1, "the lower one");
    CHECK(gw_lb_two_choices(4, 4, 1) == 0 && gw_lb_two_choices(4, 4, 2) == 1, "coin on a tie");

    /* The loads compared: in flight plus one, per unit of weight, scaled by the share. */
    CHECK(gw_lb_weighted_load(0, 1024, 1) == 1024, "idle");
    CHECK(gw_lb_weighted_load(3, 1024, 1) == 4 * 1024, "three in flight");
    CHECK(gw_lb_weighted_load(3, 1024, 2) == 2 * 1024, "weight 2 halves it");
    CHECK(gw_lb_weighted_load(3, 512, 1) == 8 * 1024, "half its slow start doubles it");
    CHECK(gw_lb_weighted_load(-1, 1024, 1) == 1024, "a negative count is 0");
    /* A backend of weight 3 with 5 in flight is less loaded than one of weight 1 with 2. */
    CHECK(gw_lb_two_choices(gw_lb_weighted_load(5, 1024, 3), gw_lb_weighted_load(2, 1024, 1), 0) ==
              0,
          "weights count");
}

static void test_slow_start(void)
{
    const uint64_t from = 1000000, until = from + 10000000; /* a 10 s window */
    CHECK(gw_lb_slow_share(from, until, from) == GW_LB_SLOW_MIN, "at re-admission: the minimum");
    CHECK(gw_lb_slow_share(from, until, from + 100000) == GW_LB_SLOW_MIN,
          "1%% in: still the minimum (%u)", gw_lb_slow_share(from, until, from + 100000));
    CHECK(gw_lb_slow_share(from, until, from + 2500000) == 256, "a quarter in: %u",
          gw_lb_slow_share(from, until, from + 2500000));
    CHECK(gw_lb_slow_share(from, until, from + 5000000) == 512, "half way: %u",
          gw_lb_slow_share(from, until, from + 5000000));
    CHECK(gw_lb_slow_share(from, until, until - 1) < 1024, "not full before the end");
    CHECK(gw_lb_slow_share(from, until, until) == 1024, "full at the end");
    CHECK(gw_lb_slow_share(from, until, until + 1) == 1024, "and after");
    /* Monotonic over the window. */
    unsigned prev = 0;
    int dips = 0;
    for (uint64_t t = from; t <= until; t += 250000) {
        unsigned s = gw_lb_slow_share(from, until, t);
        dips += s < prev;
        prev = s;
    }
    CHECK(dips == 0, "the share never shrinks (%d dips)", dips);
    CHECK(gw_lb_slow_share(from, from, from) == 1024, "an empty window: full");
    /* The cap at a share: at least one. */
    CHECK(gw_lb_cap(8, 1024) == 8 && gw_lb_cap(8, 512) == 4, "cap by share");
    CHECK(gw_lb_cap(8, 64) == 1 && gw_lb_cap(1, 1024) == 1, "never below one");
    /* The round robin's weight ramps with the share. */
    CHECK(gw_lb_wrr_weight(100, gw_lb_slow_share(from, until, from + 5000000)) == 50,
          "weight 100 half way through: 50");
}

static void test_queue_score(void)
{
    gw_lb_scraped_t idle = {0, 0, 0, 10, 0};
    /* Idle, 10 slots: (0 + 1) * 1000 / 10. */
    CHECK(gw_lb_queue_score(&idle, 0, 1024, 1) == 100, "idle: %llu",
          (unsigned long long)gw_lb_queue_score(&idle, 0, 1024, 1));
    /* Waiting counts like running. */
    gw_lb_scraped_t busy = {4, 5, 0, 10, 0};
    CHECK(gw_lb_queue_score(&busy, 0, 1024, 1) == 1000, "9 queued: %llu",
          (unsigned long long)gw_lb_queue_score(&busy, 0, 1024, 1));
    gw_lb_scraped_t waiting = {4, 6, 0, 10, 0};
    CHECK(gw_lb_queue_score(&waiting, 0, 1024, 1) > gw_lb_queue_score(&busy, 0, 1024, 1),
          "one more waiting scores worse");
    /* What this gateway sent since the scrape is added; what ended is taken off. */
    gw_lb_scraped_t since = {4, 5, 2, 10, 0};
    CHECK(gw_lb_queue_score(&since, 5, 1024, 1) == (4 + 5 + 3 + 1) * 100, "3 sent since: %llu",
          (unsigned long long)gw_lb_queue_score(&since, 5, 1024, 1));
    /* Never below what this gateway has in flight now. */
    gw_lb_scraped_t stale = {0, 0, 0, 10, 0};
    CHECK(gw_lb_queue_score(&stale, 7, 1024, 1) == 800, "at least load: %llu",
          (unsigned long long)gw_lb_queue_score(&stale, 7, 1024, 1));
    gw_lb_scraped_t ended = {0, 0, 9, 10, 0};
    CHECK(gw_lb_queue_score(&ended, 2, 1024, 1) == 300, "ended since the scrape: %llu",
          (unsigned long long)gw_lb_queue_score(&ended, 2, 1024, 1));
    /* KV cache: a quarter of its per mille. */
    gw_lb_scraped_t kv = {0, 0, 0, 10, 800};
    CHECK(gw_lb_queue_score(&kv, 0, 1024, 1) == 300, "80%% KV cache: %llu",
          (unsigned long long)gw_lb_queue_score(&kv, 0, 1024, 1));
    /* Capacity divides; no capacity is one slot. */
    gw_lb_scraped_t small = {4, 5, 0, 1, 0}, none = {4, 5, 0, 0, 0};
    CHECK(gw_lb_queue_score(&small, 0, 1024, 1) == 10000, "one slot");
    CHECK(gw_lb_queue_score(&none, 0, 1024, 1) == 10000, "cap 0 is one slot");
    /* Slow start scales it up, weight down. */
    CHECK(gw_lb_queue_score(&busy, 0, 512, 1) == 2000, "half share doubles");
    CHECK(gw_lb_queue_score(&busy, 0, 1024, 4) == 250, "weight 4 quarters");
    /* A backend with more room wins over a busier one of the same size. */
    CHECK(gw_lb_queue_score(&idle, 1, 1024, 1) < gw_lb_queue_score(&busy, 1, 1024, 1),
          "less queued is better");

    /* Freshness: three intervals and 100 ms. */
    CHECK(!gw_lb_metrics_fresh(0, 5000000, 1000), "never scraped");
    CHECK(gw_lb_metrics_fresh(1000000, 1000000 + 3100000, 1000), "just fresh");
    CHECK(!gw_lb_metrics_fresh(1000000, 1000000 + 3100001, 1000), "just stale");
    CHECK(gw_lb_metrics_fresh(2000000, 1000000, 1000), "a scrape after now (another clock)");
}

int main(void)
{
    test_swrr();
    test_two_choices();
    test_slow_start();
    test_queue_score();
    return check_done();
}
