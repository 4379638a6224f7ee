/* libFuzzer target for the parsers that read outside bytes on the wire: request heads (from
 * clients), response heads (from backends), chunked bodies (both) and the server-sent-events
 * framer (backends' streams).
 *
 * The first input byte picks the parser (byte % 4); the second, for the incremental ones,
 * seeds where the rest is split into pieces. Besides "no crash, no leak, no undefined
 * behaviour", each mode checks properties that a wrong parser would break:
 *   - heads: the head end is the same when searched in one go or resumed byte by byte; for a
 *     request, the blank lines before it and its end are the same whatever the split of the
 *     input (what conn.c does: gw_http_blank_lines, then gw_http_find_head_end, per read); a
 *     parsed head points only inside its buffer; a request with both Content-Length and
 *     Transfer-Encoding, or a response or request with a negative length, is never accepted.
 *   - the client's head rebuilt from a parsed response head (gw_http_answer_head, framing and
 *     connection lines picked by the second byte): written into room of exactly the length it
 *     says, nothing written when the room is a byte short, and it parses back as a response
 *     with the same status, one framing header at most (none for 1xx, 204, 304), and none of the
 * gateway's own headers (x-request-id, x-gotthard-*, x-ratelimit-*, those the gateway takes) nor
 * hop-by-hop ones from the backend.
 *   - chunked: the data and the verdict are the same whatever the split of the input; the
 *     data never exceeds the input.
 *   - SSE: the events (and the bytes left over) are the same whatever the split; each event
 *     ends with a blank line; together they never exceed the input.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "guarded.h"
#include "base/http.h"
#include "base/sse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_HEADERS 100

static int inside(const char *p, size_t n, const char *buf, size_t len)
{
    return n == 0 || (p >= buf && p + n <= buf + len);
}

/* A stand-in for the plugins' headers: some names the gateway writes itself. */
static int taken(void *arg, const char *name, size_t len)
{
    unsigned seed = *(const unsigned *)arg;
    return len && ((unsigned char)name[0] + seed) % 5 == 0;
}

static void answer(const gw_http_head_t *h, uint32_t seed)
{
    gw_answer_head_t a = {
        .status = h->status,
        .framing = (int)(seed & 3),
        .length = h->content_length >= 0 ? (uint64_t)h->content_length : (uint64_t)seed * 99991u,
        .close = (seed >> 2) & 1,
        .keepalive = (seed >> 3) & 1,
        .taken = (seed & 16) ? taken : NULL,
        .arg = &seed,
    };
    size_t need = gw_http_answer_head(NULL, 0, h, &a);
    check(need >= 17); /* "HTTP/1.1 NNN X\r\n" at least */
    /* a byte short: nothing is written */
    char *small = malloc(need - 1);
    check(small != NULL);
    memset(small, 0x5a, need - 1);
    check(gw_http_answer_head(small, need - 1, h, &a) == need);
    for (size_t i = 0; i < need - 1; i++) check(small[i] == 0x5a);
    free(small);
    /* exactly its length (ASan catches a byte more), plus the final empty line to parse it */
    char *out = malloc(need + 2);
    check(out != NULL);
    check(gw_http_answer_head(out, need, h, &a) == need);
    memcpy(out + need, "\r\n", 2);
    gw_header_t hs[MAX_HEADERS + 3];
    uint8_t kind[MAX_HEADERS + 3];
    gw_http_head_t o;
    check(gw_http_parse_response(out, need + 2, &o, hs, kind, MAX_HEADERS + 3) == 0);
    check(o.status == h->status && o.minor == 1);
    int framing = 0, conn = 0;
    for (size_t i = 0; i < o.nheaders; i++) {
        check(!gw_http_gateway_name(hs[i].name, hs[i].name_len));
        check(kind[i] != GW_H_X_REQUEST_ID);
        int own = kind[i] == GW_H_CONTENT_LENGTH || kind[i] == GW_H_TRANSFER_ENCODING ||
                  kind[i] == GW_H_CONNECTION; /* the lines the rebuild adds */
        check(own || !a.taken || !taken(&seed, hs[i].name, hs[i].name_len));
        framing += kind[i] == GW_H_CONTENT_LENGTH || kind[i] == GW_H_TRANSFER_ENCODING;
        conn += kind[i] == GW_H_CONNECTION;
        check(!GW_H_IS_HOP(kind[i]) || kind[i] == GW_H_CONTENT_LENGTH ||
              kind[i] == GW_H_TRANSFER_ENCODING || kind[i] == GW_H_CONNECTION);
    }
    check(framing == (a.framing != GW_AH_EOF && gw_http_status_has_body(h->status)));
    check(conn == (a.close || a.keepalive));
    if (framing && a.framing == GW_AH_LENGTH) check(o.content_length == (int64_t)a.length);
    if (framing && a.framing == GW_AH_EMPTY) check(o.content_length == 0);
    if (framing && a.framing == GW_AH_CHUNKED) check(o.chunked);
    free(out);
}

static void heads(const char *buf, size_t len, int response, uint32_t seed)
{
    size_t scanned = 0, step = 0;
    long end = gw_http_find_head_end(buf, len, &scanned);
    long end2 = GW_HTTP_INCOMPLETE;
    for (size_t i = 1; i <= len && end2 == GW_HTTP_INCOMPLETE; i++)
        end2 = gw_http_find_head_end(buf, i, &step);
    check(end == end2);
    if (end <= 0) return;
    gw_header_t hs[MAX_HEADERS];
    uint8_t kind[MAX_HEADERS];
    gw_http_head_t h;
    int rc = response ? gw_http_parse_response(buf, (size_t)end, &h, hs, kind, MAX_HEADERS)
                      : gw_http_parse_request(buf, (size_t)end, &h, hs, kind, MAX_HEADERS);
    if (rc != 0) return;
    check(h.nheaders <= MAX_HEADERS);
    check(h.content_length >= -1);
    if (!response) {
        check(inside(h.method, h.method_len, buf, (size_t)end));
        check(inside(h.target, h.target_len, buf, (size_t)end));
        check(!(h.chunked && h.content_length >= 0)); /* request smuggling */
    } else {
        check(h.status >= 100 && h.status <= 599);
        check(h.minor == 1 || !h.chunked);                  /* RFC 9112 6.1 */
        check(gw_http_response_start_ok(buf, (size_t)end)); /* never failed early by mistake */
    }
    for (size_t i = 0; i < h.nheaders; i++) {
        check(inside(hs[i].name, hs[i].name_len, buf, (size_t)end));
        check(inside(hs[i].value, hs[i].value_len, buf, (size_t)end));
        check(hs[i].name_len > 0);
    }
    if (response) answer(&h, seed);
}

typedef struct sink {
    char *out;
    size_t len, cap;
} sink_t;

static void sink_add(sink_t *s, const char *p, size_t n)
{
    if (s->len + n > s->cap) {
        s->cap = (s->len + n) * 2 + 64;
        s->out = realloc(s->out, s->cap);
        check(s->out != NULL);
    }
    memcpy(s->out + s->len, p, n);
    s->len += n;
}

static void on_data(void *arg, const char *p, size_t n)
{
    sink_add(arg, p, n);
}

/* The pieces: lengths from a small PRNG seeded by the input's second byte. */
static size_t piece(uint32_t *seed, size_t left)
{
    *seed = *seed * 1103515245u + 12345u;
    size_t n = 1 + (*seed >> 16) % 17;
    return n < left ? n : left;
}

/* Decodes in[0..len) in pieces; returns the verdict and where decoding stopped. */
static int chunked(const char *in, size_t len, uint32_t seed, int whole, sink_t *s, size_t *used)
{
    gw_chunked_t c;
    memset(&c, 0, sizeof(c));
    size_t at = 0;
    while (at < len) {
        size_t n = whole ? len - at : piece(&seed, len - at), consumed = 0;
        int rc = gw_chunked_feed(&c, in + at, n, &consumed, on_data, s);
        check(consumed <= n);
        at += consumed;
        if (rc != GW_CHUNKED_MORE) {
            *used = at;
            return rc;
        }
        check(consumed == n); /* MORE means it took everything it was given */
    }
    *used = at;
    return GW_CHUNKED_MORE;
}

/* A request's blank lines and head end, read in one go and in pieces as conn.c reads them. */
static void blank_lines_mode(const char *buf, size_t len, uint32_t seed)
{
    size_t s1 = 0, off1 = gw_http_blank_lines(buf, len, &s1);
    long e1 = gw_http_find_head_end(buf + off1, len - off1, &s1);
    size_t s2 = 0, off2 = 0, have = 0;
    long e2 = GW_HTTP_INCOMPLETE;
    while (have < len && e2 == GW_HTTP_INCOMPLETE) {
        have += piece(&seed, len - have);
        size_t b;
        while ((b = gw_http_blank_lines(buf + off2, have - off2, &s2)) != 0) {
            check(b % 2 == 0 && off2 + b <= have);
            off2 += b;
        }
        e2 = gw_http_find_head_end(buf + off2, have - off2, &s2);
    }
    check(off1 == off2 && e1 == e2);
}

static void chunked_mode(const char *in, size_t len, uint32_t seed)
{
    sink_t a = {0}, b = {0};
    size_t ua = 0, ub = 0;
    int ra = chunked(in, len, seed, 1, &a, &ua), rb = chunked(in, len, seed, 0, &b, &ub);
    check(ra == rb);
    if (ra != GW_CHUNKED_BAD) {
        check(ua == ub);
        check(a.len == b.len && (a.len == 0 || memcmp(a.out, b.out, a.len) == 0));
    }
    check(a.len <= len);
    free(a.out);
    free(b.out);
}

static int on_event(void *arg, const char *ev, size_t n)
{
    check(n >= 1);
    /* every event ends with its blank line: LF LF, CR CR, CR LF CR LF... the last byte is an
     * end of line */
    check(ev[n - 1] == '\n' || ev[n - 1] == '\r');
    /* The error-event test (upstream.c counts such a stream as failed) on an exact copy, so a
     * read past the event is caught; an event it calls an error names one. */
    char *copy = malloc(n);
    check(copy != NULL);
    memcpy(copy, ev, n);
    if (gw_sse_is_error_event(copy, n)) check(memmem(copy, n, "error", 5) != NULL);
    free(copy);
    sink_t *s = arg;
    sink_add(s, ev, n);
    sink_add(s, "\0", 1); /* keep the event boundaries in the comparison */
    return 0;
}

static size_t sse(const char *in, size_t len, uint32_t seed, int whole, sink_t *s, int *rc)
{
    gw_sse_t f;
    gw_sse_init(&f, 4096);
    size_t at = 0;
    *rc = 0;
    while (at < len && *rc == 0) {
        size_t n = whole ? len - at : piece(&seed, len - at);
        *rc = gw_sse_feed(&f, in + at, n, on_event, s);
        at += n;
    }
    size_t left = *rc == 0 ? gw_sse_finish(&f, on_event, s) : 0;
    gw_sse_release(&f);
    return left;
}

static void sse_mode(const char *in, size_t len, uint32_t seed)
{
    sink_t a = {0}, b = {0};
    int ra, rb;
    size_t la = sse(in, len, seed, 1, &a, &ra), lb = sse(in, len, seed, 0, &b, &rb);
    check(ra == rb);
    if (ra == 0) {
        check(la == lb);
        check(a.len == b.len && (a.len == 0 || memcmp(a.out, b.out, a.len) == 0));
    }
    free(a.out);
    free(b.out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) return 0;
    int mode = data[0] % 4;
    uint32_t seed = data[1];
    /* a private copy: the parsers must not read past what they are given */
    size_t len = size - 2;
    char *buf = malloc(len ? len : 1);
    check(buf != NULL);
    memcpy(buf, data + 2, len);
    switch (mode) {
    case 0:
        heads(buf, len, 0, seed);
        blank_lines_mode(buf, len, seed);
        break;
    case 1:
        heads(buf, len, 1, seed);
        break;
    case 2:
        chunked_mode(buf, len, seed);
        break;
    default:
        sse_mode(buf, len, seed);
        break;
    }
    free(buf);
    return 0;
}
