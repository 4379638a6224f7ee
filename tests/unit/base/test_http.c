/* Unit tests of the strict HTTP/1.1 parser: request heads, response heads, chunked bodies. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "base/http.h"

static gw_header_t hdrs[16];
static uint8_t hop[16];

static int req(const char *s, gw_http_head_t *h)
{
    size_t scanned = 0, len = strlen(s);
    long end = gw_http_find_head_end(s, len, &scanned);
    if (end < 0) return (int)end;
    if ((size_t)end != len) return -99; /* the test strings are exactly one head */
    return gw_http_parse_request(s, len, h, hdrs, hop, 16);
}

static void test_valid(void)
{
    gw_http_head_t h;
    int rc = req("POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n"
                 "X-Custom:  spaced value \t\r\n\r\n",
                 &h);
    CHECK(rc == 0, "rc=%d", rc);
    CHECK(h.content_length == 12, "cl=%lld", (long long)h.content_length);
    CHECK(h.method_len == 4 && memcmp(h.method, "POST", 4) == 0, "method");
    CHECK(h.target_len == 24, "target_len=%zu", h.target_len);
    CHECK(h.nheaders == 3, "n=%zu", h.nheaders);
    CHECK(h.headers[2].value_len == 12 && memcmp(h.headers[2].value, "spaced value", 12) == 0,
          "value trimmed: '%.*s'", (int)h.headers[2].value_len, h.headers[2].value);
    CHECK(GW_H_IS_HOP(hop[0]) && GW_H_IS_HOP(hop[1]) && !GW_H_IS_HOP(hop[2]),
          "host and content-length are not forwarded as is");

    rc = req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ChUnKeD\r\n\r\n", &h);
    CHECK(rc == 0 && h.chunked && h.content_length == -1, "chunked rc=%d", rc);

    rc = req("GET / HTTP/1.0\r\n\r\n", &h);
    CHECK(rc == 0 && h.minor == 0, "HTTP/1.0 without Host rc=%d", rc);

    rc = req("GET / HTTP/1.1\r\nHost: a\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\nX-Other: "
             "2\r\n\r\n",
             &h);
    CHECK(rc == 0 && h.conn_close, "connection close");
    CHECK(GW_H_IS_HOP(hop[2]) && !GW_H_IS_HOP(hop[3]),
          "a header named by Connection is hop-by-hop");
    CHECK(hop[1] == GW_H_CONNECTION, "kind of Connection");
    /* Connection never hides a credential header: it keeps its kind (and is never forwarded) */
    rc = req("GET / HTTP/1.1\r\nHost: a\r\nConnection: authorization, API-Key\r\n"
             "Authorization: Bearer a\r\napi-key: b\r\n\r\n",
             &h);
    CHECK(rc == 0 && hop[2] == GW_H_AUTHORIZATION && hop[3] == GW_H_API_KEY,
          "a credential named by Connection keeps its kind: %d %d", hop[2], hop[3]);
    CHECK(gw_http_find_kind(&h, GW_H_AUTHORIZATION) == &h.headers[2], "Authorization still found");
    /* one of each kind is fine */
    rc = req("GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer a\r\napi-key: b\r\n\r\n", &h);
    CHECK(rc == 0, "Authorization and api-key once each: rc=%d", rc);
}

static void test_rejects(void)
{
    static const struct {
        const char *why, *head;
        int want;
    } cases[] = {
        {"CL and TE",
         "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
         GW_HTTP_BAD},
        {"two CL", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
         GW_HTTP_BAD},
        {"CL list", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n", GW_HTTP_BAD},
        {"CL sign", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n", GW_HTTP_BAD},
        {"CL hex", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\n", GW_HTTP_BAD},
        {"CL empty", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n", GW_HTTP_BAD},
        {"CL huge", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
         GW_HTTP_BAD},
        {"TE gzip, chunked",
         "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", GW_HTTP_BAD},
        {"TE chunked, chunked",
         "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", GW_HTTP_BAD},
        {"TE twice",
         "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: "
         "chunked\r\n\r\n",
         GW_HTTP_BAD},
        {"TE identity", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n",
         GW_HTTP_BAD},
        {"TE xchunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
         GW_HTTP_BAD},
        {"TE in 1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", GW_HTTP_BAD},
        {"obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", GW_HTTP_BAD},
        {"obs-fold tab", "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb\r\n\r\n", GW_HTTP_BAD},
        {"space before colon", "GET / HTTP/1.1\r\nHost : a\r\n\r\n", GW_HTTP_BAD},
        {"empty name", "GET / HTTP/1.1\r\nHost: a\r\n: x\r\n\r\n", GW_HTTP_BAD},
        {"bare CR in value", "GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", GW_HTTP_BAD},
        {"NUL in value", "GET / HTTP/1.1\r\nHost: a\r\nX: a\001b\r\n\r\n", GW_HTTP_BAD},
        {"no Host in 1.1", "GET / HTTP/1.1\r\nX: a\r\n\r\n", GW_HTTP_BAD},
        {"two Host", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", GW_HTTP_BAD},
        {"two Authorization",
         "GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer a\r\nauthorization: Bearer b\r\n\r\n",
         GW_HTTP_BAD},
        {"two Authorization, one empty",
         "GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer a\r\nAuthorization:\r\n\r\n",
         GW_HTTP_BAD},
        {"two api-key", "GET / HTTP/1.1\r\nHost: a\r\napi-key: a\r\nAPI-KEY: b\r\n\r\n",
         GW_HTTP_BAD},
        {"HTTP/2.0", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", GW_HTTP_BAD_VERSION},
        {"HTTP/1.2", "GET / HTTP/1.2\r\nHost: a\r\n\r\n", GW_HTTP_BAD_VERSION},
        {"bad version", "GET / HTTX/1.1\r\nHost: a\r\n\r\n", GW_HTTP_BAD},
        {"two spaces", "GET  / HTTP/1.1\r\nHost: a\r\n\r\n", GW_HTTP_BAD},
        {"space in target", "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", GW_HTTP_BAD},
        {"bad method", "G(T / HTTP/1.1\r\nHost: a\r\n\r\n", GW_HTTP_BAD},
        {"Expect other", "POST / HTTP/1.1\r\nHost: a\r\nExpect: fancy\r\n\r\n", GW_HTTP_BAD},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        gw_http_head_t h;
        int rc = req(cases[i].head, &h);
        CHECK(rc == cases[i].want, "%s: rc=%d want %d", cases[i].why, rc, cases[i].want);
    }
    /* bare LF, found while looking for the end of the head */
    size_t scanned = 0;
    const char *lf = "GET / HTTP/1.1\nHost: a\r\n\r\n";
    CHECK(gw_http_find_head_end(lf, strlen(lf), &scanned) == GW_HTTP_BAD, "bare LF");
    scanned = 0;
    const char *nul = "GET / HTTP/1.1\r\nHost: a\r\nX: \0\r\n\r\n";
    gw_http_head_t h;
    CHECK(gw_http_parse_request(nul, 33, &h, hdrs, hop, 16) == GW_HTTP_BAD, "NUL");
    /* too many headers */
    char many[2048] = "GET / HTTP/1.1\r\nHost: a\r\n";
    for (int i = 0; i < 20; i++) strcat(many, "X: y\r\n");
    strcat(many, "\r\n");
    CHECK(req(many, &h) == GW_HTTP_TOO_MANY, "too many headers");
}

static void test_kinds(void)
{
    CHECK(gw_http_header_kind("Content-Length", 14) == GW_H_CONTENT_LENGTH, "content-length");
    CHECK(gw_http_header_kind("TRANSFER-ENCODING", 17) == GW_H_TRANSFER_ENCODING, "te");
    CHECK(gw_http_header_kind("Api-Key", 7) == GW_H_API_KEY, "api-key");
    CHECK(gw_http_header_kind("X-Request-Id", 12) == GW_H_X_REQUEST_ID, "x-request-id");
    CHECK(gw_http_header_kind("Content-Typf", 12) == GW_H_OTHER, "near miss");
    CHECK(gw_http_header_kind("Host2", 5) == GW_H_OTHER, "length");
    CHECK(gw_http_header_kind("Proxy-Authorization", 19) == GW_H_PROXY_AUTHORIZATION, "proxy-auth");
    CHECK(gw_http_header_kind("T^", 2) == GW_H_OTHER, "^ does not fold onto ~ or e");
    CHECK(gw_http_header_kind("Accept-Encoding", 15) == GW_H_ACCEPT_ENCODING, "accept-encoding");
    CHECK(gw_http_header_kind("CONTENT-ENCODING", 16) == GW_H_CONTENT_ENCODING, "content-encoding");
    CHECK(gw_http_header_kind("X-Client-Request-Id", 19) == GW_H_X_CLIENT_REQUEST_ID,
          "x-client-request-id");
}

/* Content codings: only identity (in any spelling, any list of it) is no coding. */
static void test_content_coded(void)
{
    static const struct {
        const char *head;
        int coded;
    } cases[] = {
        {"POST / HTTP/1.1\r\nHost: a\r\n\r\n", 0},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Encoding: identity\r\n\r\n", 0},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Encoding: IDENTITY , identity\r\n\r\n", 0},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Encoding:\r\n\r\n", 0},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Encoding: gzip\r\n\r\n", 1},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Encoding: identity, br\r\n\r\n", 1},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Encoding: identityx\r\n\r\n", 1},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Encoding: identity;q=1\r\n\r\n", 1},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Encoding: identity\r\n"
         "content-encoding: zstd\r\n\r\n",
         1},
        {"POST / HTTP/1.1\r\nHost: a\r\nConnection: content-encoding\r\n"
         "Content-Encoding: gzip\r\n\r\n",
         1},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        gw_http_head_t h;
        CHECK(req(cases[i].head, &h) == 0, "case %zu parses", i);
        CHECK(gw_http_content_coded(&h) == cases[i].coded, "case %zu: coded %d", i,
              gw_http_content_coded(&h));
    }
}

static void test_incremental_end(void)
{
    const char *s = "GET / HTTP/1.1\r\nHost: a\r\n\r\nNEXT";
    size_t full = strlen(s) - 4;
    for (size_t cut = 0; cut <= strlen(s); cut++) {
        size_t scanned = 0;
        long a = gw_http_find_head_end(s, cut, &scanned);
        CHECK(cut >= full ? a == (long)full : a == GW_HTTP_INCOMPLETE, "cut %zu: %ld", cut, a);
        if (a == GW_HTTP_INCOMPLETE) {
            long b = gw_http_find_head_end(s, strlen(s), &scanned);
            CHECK(b == (long)full, "resumed at %zu: %ld", cut, b);
        }
    }
}

static void test_response(void)
{
    gw_http_head_t h;
    const char *s =
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
    CHECK(gw_http_parse_response(s, strlen(s), &h, hdrs, hop, 16) == 0 && h.status == 200 &&
              h.chunked,
          "response");
    s = "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
    CHECK(gw_http_parse_response(s, strlen(s), &h, hdrs, hop, 16) == GW_HTTP_BAD, "CL+TE response");
    s = "HTTP/1.1 2000 OK\r\n\r\n";
    CHECK(gw_http_parse_response(s, strlen(s), &h, hdrs, hop, 16) == GW_HTTP_BAD, "bad status");
    s = "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    CHECK(gw_http_parse_response(s, strlen(s), &h, hdrs, hop, 16) == GW_HTTP_BAD,
          "1.0 chunked response");
    s = "HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n";
    CHECK(gw_http_parse_response(s, strlen(s), &h, hdrs, hop, 16) == GW_HTTP_BAD,
          "status over 599");
    s = "HTTP/1.1 599 Odd\r\nContent-Length: 0\r\n\r\n";
    CHECK(gw_http_parse_response(s, strlen(s), &h, hdrs, hop, 16) == 0 && h.status == 599,
          "status 599");
    s = "HTTP/1.0 404 \r\n\r\n";
    CHECK(gw_http_parse_response(s, strlen(s), &h, hdrs, hop, 16) == 0 && h.status == 404 &&
              h.minor == 0,
          "empty reason");
}

typedef struct {
    char out[256];
    size_t n;
} sink_t;

static void sink(void *arg, const char *p, size_t n)
{
    sink_t *s = arg;
    memcpy(s->out + s->n, p, n);
    s->n += n;
}

static int decode_split(const char *in, size_t len, size_t step, sink_t *s, size_t *consumed)
{
    gw_chunked_t c = {0};
    memset(s, 0, sizeof(*s));
    size_t off = 0;
    while (off < len) {
        size_t n = len - off < step ? len - off : step, used;
        int rc = gw_chunked_feed(&c, in + off, n, &used, sink, s);
        off += used;
        if (rc != GW_CHUNKED_MORE) {
            *consumed = off;
            return rc;
        }
    }
    *consumed = off;
    return GW_CHUNKED_MORE;
}

static void test_chunked(void)
{
    const char *ok = "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\nNEXT";
    size_t len = strlen(ok);
    for (size_t step = 1; step <= len; step++) {
        sink_t s;
        size_t used;
        int rc = decode_split(ok, len, step, &s, &used);
        CHECK(rc == GW_CHUNKED_DONE && s.n == 11 && memcmp(s.out, "hello world", 11) == 0 &&
                  used == len - 4,
              "step %zu: rc=%d n=%zu used=%zu", step, rc, s.n, used);
    }
    static const char *bad[] = {
        "x\r\n",        "-1\r\n", "ffffffffffffffffff\r\n",   "5\r\nhelloXX",
        "5\nhello\r\n", "\r\n",   "5 \r\nhello\r\n0\r\n\r\n", "0\r\n\r\r",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        sink_t s;
        size_t used;
        int rc = decode_split(bad[i], strlen(bad[i]), 1, &s, &used);
        CHECK(rc == GW_CHUNKED_BAD, "bad chunked %zu: rc=%d", i, rc);
    }
}

/* An answer in another protocol fails at its first byte (upstream.c), an HTTP/1.x one never. */
static void test_response_start(void)
{
    const char *ok = "HTTP/1.1 200 OK\r\n";
    for (size_t n = 0; n <= strlen(ok); n++)
        CHECK(gw_http_response_start_ok(ok, n), "HTTP/1.1 prefix of %zu bytes", n);
    CHECK(gw_http_response_start_ok("HTTP/1.0 200", 12), "HTTP/1.0");
    static const char *const bad[] = {"SSH-2.0-OpenSSH_9.2\r\n", "HTTP/2 200", "http/1.1 200",
                                      "\x00\x00\x12\x04",        "ICY 200 OK", " HTTP/1.1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECK(!gw_http_response_start_ok(bad[i], strlen(bad[i]) ? strlen(bad[i]) : 4),
              "not HTTP/1.x: %zu", i);
    CHECK(!gw_http_response_start_ok("X", 1), "a first byte that cannot start HTTP/1.x");
}

static int taken_x_plugin(void *arg, const char *name, size_t len)
{
    (void)arg;
    return gw_http_name_eq(name, len, "x-plugin");
}

/* The client's head rebuilt from a backend's: exact bytes, exact length, nothing past cap. */
static void test_answer_head(void)
{
    static gw_header_t hs[300];
    static uint8_t kinds[300];
    gw_http_head_t h;
    const char *in = "HTTP/1.1 203\r\nx-a:\r\nX-Request-Id: evil\r\nX-Gotthard-Residency: US\r\n"
                     "x-ratelimit-limit-requests: 9\r\nx-plugin: b\r\nConnection: close, x-hop\r\n"
                     "x-hop: 1\r\nContent-Length: 2\r\nx-gotthardish: ok\r\nClose: x\r\n\r\n";
    int rc = gw_http_parse_response(in, strlen(in), &h, hs, kinds, 300);
    CHECK(rc == 0, "rc=%d", rc);
    gw_answer_head_t a = {.status = 203,
                          .framing = GW_AH_LENGTH,
                          .length = 2,
                          .keepalive = 1,
                          .taken = taken_x_plugin};
    const char *want = "HTTP/1.1 203 Non-Authoritative Information\r\nx-a: \r\n"
                       "x-gotthardish: ok\r\ncontent-length: 2\r\nconnection: keep-alive\r\n";
    size_t need = gw_http_answer_head(NULL, 0, &h, &a);
    CHECK(need == strlen(want), "need=%zu want=%zu", need, strlen(want));
    char *out = malloc(need); /* exactly: ASan sees a byte more */
    CHECK(out && gw_http_answer_head(out, need, &h, &a) == need, "written");
    CHECK(out && memcmp(out, want, strlen(want)) == 0, "got '%.*s'", (int)need, out);
    char shortbuf[8];
    memset(shortbuf, 'z', sizeof(shortbuf));
    CHECK(gw_http_answer_head(shortbuf, sizeof(shortbuf), &h, &a) == need,
          "a short room: the length");
    CHECK(shortbuf[0] == 'z' && shortbuf[7] == 'z', "a short room: nothing written");
    free(out);

    /* 250 empty headers and no reason phrase: longer than the backend's head by 250 + 29 */
    char big[4096], *p = big;
    p += sprintf(p, "HTTP/1.1 203\r\n");
    for (int i = 0; i < 250; i++) p += sprintf(p, "x-e%03d:\r\n", i);
    p += sprintf(p, "\r\n");
    rc = gw_http_parse_response(big, (size_t)(p - big), &h, hs, kinds, 300);
    CHECK(rc == 0, "rc=%d", rc);
    gw_answer_head_t b = {.status = 203, .framing = GW_AH_CHUNKED, .close = 1};
    need = gw_http_answer_head(NULL, 0, &h, &b);
    size_t expect = strlen("HTTP/1.1 203 Non-Authoritative Information\r\n") +
                    250 * strlen("x-e000: \r\n") +
                    strlen("transfer-encoding: chunked\r\nconnection: close\r\n");
    CHECK(need == expect && need > (size_t)(p - big) + 160, "need=%zu expect=%zu", need, expect);
    out = malloc(need);
    CHECK(out && gw_http_answer_head(out, need, &h, &b) == need, "written whole");
    free(out);

    gw_out_t o = {NULL, 0, 0};
    gw_out_u64(&o, 18446744073709551615ull);
    CHECK(o.len == 20, "u64 counted: %zu", o.len);
    char two[2] = {'q', 'q'};
    o = (gw_out_t){two, 0, 2};
    gw_out_str(&o, "abc");
    CHECK(o.len == 3 && two[0] == 'q', "a put past cap writes nothing");
    CHECK(gw_http_gateway_name("X-Gotthard-a", 12) && gw_http_gateway_name("x-ratelimit-x", 13) &&
              !gw_http_gateway_name("x-gotthard-", 11) && !gw_http_gateway_name("x-gotthardx", 11),
          "namespace");
}

/* Connection: 32 tokens at most over all its lines (a client's 400, a backend's 502); the
 * headers they name are hop-by-hop; empty list elements are not tokens. */
static void test_connection_tokens(void)
{
    char line[1024], head[2048];
    gw_http_head_t h;
    for (int n = 30; n <= 34; n++) {
        char *p = line;
        for (int i = 0; i < n; i++) p += sprintf(p, "%st%d", i ? ", " : "", i);
        snprintf(head, sizeof(head),
                 "GET / HTTP/1.1\r\nHost: a\r\nConnection: %s\r\nT5: x\r\nT6: y\r\n\r\n", line);
        int rc = req(head, &h);
        CHECK(n <= GW_HTTP_MAX_CONNECTION_TOKENS ? rc == 0 : rc == GW_HTTP_BAD, "%d tokens: rc=%d",
              n, rc);
        if (rc == 0)
            CHECK(hop[2] == GW_H_NAMED_BY_CONNECTION && hop[3] == GW_H_NAMED_BY_CONNECTION,
                  "named");
        snprintf(head, sizeof(head),
                 "HTTP/1.1 200 OK\r\nConnection: %s\r\nContent-Length: 0\r\n\r\n", line);
        rc = gw_http_parse_response(head, strlen(head), &h, hdrs, hop, 16);
        CHECK(n <= GW_HTTP_MAX_CONNECTION_TOKENS ? rc == 0 : rc == GW_HTTP_BAD,
              "answer, %d tokens: rc=%d", n, rc);
    }
    /* counted over every Connection line, close and keep-alive included */
    char a[512], b[512], *p = a, *q = b;
    for (int i = 0; i < 20; i++) p += sprintf(p, "a%d,", i);
    for (int i = 0; i < 11; i++) q += sprintf(q, "b%d,", i);
    snprintf(head, sizeof(head),
             "GET / HTTP/1.1\r\nHost: a\r\nConnection: %s\r\nConnection: %s close\r\n\r\n", a, b);
    int rc = req(head, &h);
    CHECK(rc == 0 && h.conn_close, "32 over two lines: rc=%d", rc);
    snprintf(
        head, sizeof(head),
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: %s\r\nConnection: %s keep-alive, close\r\n\r\n",
        a, b);
    CHECK(req(head, &h) == GW_HTTP_BAD, "33 over two lines");
    /* a list of mostly empty elements holds few tokens */
    p = line;
    p += sprintf(p, "x");
    for (int i = 0; i < 500; i++) *p++ = ',';
    sprintf(p, " ,y");
    snprintf(head, sizeof(head),
             "GET / HTTP/1.1\r\nHost: a\r\nConnection: %s\r\nY: 1\r\nZ: 2\r\n\r\n", line);
    rc = req(head, &h);
    CHECK(rc == 0 && hop[2] == GW_H_NAMED_BY_CONNECTION && hop[3] == GW_H_OTHER,
          "empty elements: rc=%d", rc);
    /* naming a framing header leaves it what it is */
    rc =
        req("POST / HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\nContent-Length: 2\r\n\r\n",
            &h);
    CHECK(rc == 0 && hop[2] == GW_H_CONTENT_LENGTH && h.content_length == 2,
          "content-length kept: rc=%d", rc);
}

/* RFC 9110 10.1.1: Expect: 100-continue from an HTTP/1.0 client is ignored. */
static void test_expect_http10(void)
{
    gw_http_head_t h;
    int rc = req("POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n", &h);
    CHECK(rc == 0 && !h.expect_continue, "1.0: rc=%d expect=%d", rc, h.expect_continue);
    rc = req("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n", &h);
    CHECK(rc == 0 && h.expect_continue, "1.1: rc=%d expect=%d", rc, h.expect_continue);
}

/* Blank lines before a request line: dropped whatever the split of the bytes (a CR in one
 * read, its LF in the next), with the head end search restarted after them. */
static void test_blank_lines(void)
{
    size_t sc = 7;
    CHECK(gw_http_blank_lines("\r\n\r\nGET", 7, &sc) == 4 && sc == 0, "two blank lines");
    sc = 1;
    CHECK(gw_http_blank_lines("\r", 1, &sc) == 0 && sc == 1, "a lone CR waits");
    CHECK(gw_http_blank_lines("\r\n\r", 3, &sc) == 2 && sc == 0, "a blank line, then a CR");
    sc = 3;
    CHECK(gw_http_blank_lines("\r\r\n", 3, &sc) == 0 && sc == 3, "CR CR LF is no blank line");
    CHECK(gw_http_blank_lines("", 0, &sc) == 0, "nothing");

    const char *s = "\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
    size_t len = strlen(s), head = len - 6;
    for (size_t cut = 1; cut < len; cut++) {
        /* what conn.c does: bytes up to cut, then the rest */
        size_t off = 0, scanned = 0;
        long end = GW_HTTP_INCOMPLETE;
        size_t have[2] = {cut, len};
        for (int k = 0; k < 2 && end == GW_HTTP_INCOMPLETE; k++) {
            size_t b;
            while ((b = gw_http_blank_lines(s + off, have[k] - off, &scanned)) != 0) off += b;
            end = gw_http_find_head_end(s + off, have[k] - off, &scanned);
        }
        CHECK(off == 6 && end == (long)head, "cut at %zu: off=%zu end=%ld", cut, off, end);
    }
}

/* No framing line for an answer that cannot have a body: 1xx, 204, 304 (RFC 9110 8.6). */
static void test_answer_head_no_body(void)
{
    static gw_header_t hs[8];
    static uint8_t kinds[8];
    gw_http_head_t h;
    const char *in = "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nX-A: 1\r\n\r\n";
    CHECK(gw_http_parse_response(in, strlen(in), &h, hs, kinds, 8) == 0, "parses");
    static const int statuses[] = {100, 103, 204, 304, 200, 205};
    for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++)
        for (int f = GW_AH_EMPTY; f <= GW_AH_EOF; f++) {
            gw_answer_head_t a = {.status = statuses[i], .framing = f, .length = 5};
            char out[256];
            size_t n = gw_http_answer_head(out, sizeof(out), &h, &a);
            CHECK(n < sizeof(out), "fits");
            int framed =
                memmem(out, n, "content-length", 14) || memmem(out, n, "transfer-encoding", 17);
            int want = gw_http_status_has_body(statuses[i]) && f != GW_AH_EOF;
            CHECK(framed == want, "status %d framing %d: '%.*s'", statuses[i], f, (int)n, out);
            CHECK(memmem(out, n, "X-A: 1\r\n", 8) != NULL, "the other headers stay");
        }
    CHECK(!gw_http_status_has_body(204) && !gw_http_status_has_body(304) &&
              !gw_http_status_has_body(101) && gw_http_status_has_body(200) &&
              gw_http_status_has_body(502),
          "has_body");
}

int main(void)
{
    test_connection_tokens();
    test_expect_http10();
    test_blank_lines();
    test_answer_head_no_body();
    test_answer_head();
    test_response_start();
    test_valid();
    test_rejects();
    test_kinds();
    test_content_coded();
    test_incremental_end();
    test_response();
    test_chunked();
    return check_done();
}
