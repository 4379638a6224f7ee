/* Unit tests of the SSE framer: the same events whatever the split, at every byte offset. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "base/sse.h"

typedef struct {
    char events[16][128];
    size_t n;
} got_t;

static int on_event(void *arg, const char *ev, size_t len)
{
    got_t *g = arg;
    if (g->n < 16 && len < 128) {
        memcpy(g->events[g->n], ev, len);
        g->events[g->n][len] = '\0';
    }
    g->n++;
    return 0;
}

static void run(const char *stream, const char *const *want, size_t nwant)
{
    size_t len = strlen(stream);
    /* every single split point, and every two-point split */
    for (size_t a = 0; a <= len; a++)
        for (size_t b = a; b <= len; b += (len / 7) + 1) {
            gw_sse_t s;
            got_t g = {0};
            gw_sse_init(&s, 4096);
            gw_sse_feed(&s, stream, a, on_event, &g);
            gw_sse_feed(&s, stream + a, b - a, on_event, &g);
            gw_sse_feed(&s, stream + b, len - b, on_event, &g);
            size_t rest = gw_sse_finish(&s, on_event, &g);
            int ok = g.n == nwant && rest == 0;
            for (size_t i = 0; ok && i < nwant; i++) ok = strcmp(g.events[i], want[i]) == 0;
            CHECK(ok, "split %zu/%zu: %zu events, rest %zu", a, b, g.n, rest);
            gw_sse_release(&s);
        }
}

int main(void)
{
    const char *lf = "data: {\"a\":1}\n\nevent: x\ndata: 2\n\ndata: [DONE]\n\n";
    const char *want_lf[] = {"data: {\"a\":1}\n\n", "event: x\ndata: 2\n\n", "data: [DONE]\n\n"};
    run(lf, want_lf, 3);

    const char *crlf = "data: 1\r\n\r\ndata: 2\r\n\r\n";
    const char *want_crlf[] = {"data: 1\r\n\r\n", "data: 2\r\n\r\n"};
    run(crlf, want_crlf, 2);

    const char *cr = "data: 1\r\rdata: 2\r\r";
    const char *want_cr[] = {"data: 1\r\r", "data: 2\r\r"};
    run(cr, want_cr, 2);

    const char *mixed = ": comment\n\ndata: a\r\ndata: b\n\r\n";
    const char *want_mixed[] = {": comment\n\n", "data: a\r\ndata: b\n\r\n"};
    run(mixed, want_mixed, 2);

    /* an unfinished event stays held back and is reported at the end */
    gw_sse_t s;
    got_t g = {0};
    gw_sse_init(&s, 4096);
    gw_sse_feed(&s, "data: 1\n\ndata: par", 18, on_event, &g);
    CHECK(g.n == 1 && !gw_sse_at_boundary(&s), "partial held");
    CHECK(gw_sse_finish(&s, on_event, &g) == 9, "partial length");
    gw_sse_release(&s);

    /* an event larger than the bound is refused */
    gw_sse_init(&s, 16);
    char big[64];
    memset(big, 'x', sizeof(big));
    CHECK(gw_sse_feed(&s, big, sizeof(big), on_event, &g) == GW_SSE_TOO_LARGE, "too large");
    gw_sse_release(&s);

    /* error events: what backends send when a generation fails (upstream.c counts them) */
    static const struct {
        const char *ev;
        int error;
    } errs[] = {
        {"data: {\"error\": {\"message\": \"x\", \"code\": 400}}\n\n", 1},   /* OpenAI, vLLM */
        {"data:{\"error\":\"x\",\"error_type\":\"generation\"}\r\n\r\n", 1}, /* TGI */
        {"event: error\ndata: {}\n\n", 1},
        {"event: error\r\n\r\n", 1},
        {"data:  { \"error\" :\t{}}\n\n", 1},
        {"data: {\"error\": null, \"x\": 1}\n\n", 0},
        {"data: {\"choices\": [{\"delta\": {\"content\": \"\\\"error\\\": 1\"}}]}\n\n", 0},
        {"data: {\"id\": \"1\", \"error\": {}}\n\n", 0}, /* not the first member */
        {"data: [DONE]\n\n", 0},
        {": ping\n\n", 0},
        {"event: errors\ndata: {}\n\n", 0},
        {"data: {}\ndata: {\"error\": {}}\n\n", 0}, /* only the first data line */
        {"data: {\"error\"", 0},                    /* cut short: nothing after the key */
        {"data: {\"err", 0},
        {"", 0},
    };
    for (size_t i = 0; i < sizeof(errs) / sizeof(errs[0]); i++)
        CHECK(gw_sse_is_error_event(errs[i].ev, strlen(errs[i].ev)) == errs[i].error,
              "error event %zu: %s", i, errs[i].ev);
    /* never reads past its length: an error key just beyond it does not count */
    const char *cut = "data: {\"error\": {}}\n\n";
    for (size_t n = 0; n < 15; n++)
        CHECK(!gw_sse_is_error_event(cut, n), "error event cut at %zu", n);
    return check_done();
}
