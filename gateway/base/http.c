/* A strict HTTP/1.1 message parser: request and response heads, and chunked bodies. */
#include "base/http.h"

#include <string.h>
#include <strings.h>

/* tchar per RFC 9110 5.6.2 */
static const unsigned char tchar[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
    ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1,  ['~'] = 1, ['0'] = 1,
    ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1,  ['7'] = 1, ['8'] = 1,
    ['9'] = 1, ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1,  ['f'] = 1, ['g'] = 1,
    ['h'] = 1, ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1,  ['n'] = 1, ['o'] = 1,
    ['p'] = 1, ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1,  ['v'] = 1, ['w'] = 1,
    ['x'] = 1, ['y'] = 1, ['z'] = 1, ['A'] = 1, ['B'] = 1, ['C'] = 1,  ['D'] = 1, ['E'] = 1,
    ['F'] = 1, ['G'] = 1, ['H'] = 1, ['I'] = 1, ['J'] = 1, ['K'] = 1,  ['L'] = 1, ['M'] = 1,
    ['N'] = 1, ['O'] = 1, ['P'] = 1, ['Q'] = 1, ['R'] = 1, ['S'] = 1,  ['T'] = 1, ['U'] = 1,
    ['V'] = 1, ['W'] = 1, ['X'] = 1, ['Y'] = 1, ['Z'] = 1,
};

static int is_vchar_or_obs(unsigned char c)
{
    return (c >= 0x21 && c <= 0x7e) || c >= 0x80;
}

/* Bytes a field value may hold: VCHAR, obs-text, SP and HTAB. Built once. */
static unsigned char value_byte[256];

static void init_value_bytes(void)
{
    for (int c = 0; c < 256; c++)
        value_byte[c] = is_vchar_or_obs((unsigned char)c) || c == ' ' || c == '\t';
}

__attribute__((constructor)) static void http_tables(void)
{
    init_value_bytes();
}

long gw_http_find_head_end(const char *buf, size_t len, size_t *scanned)
{
    size_t i = *scanned;
    while (i < len) {
        const char *lf = memchr(buf + i, '\n', len - i);
        if (!lf) break;
        size_t at = (size_t)(lf - buf);
        if (at == 0 || buf[at - 1] != '\r') return GW_HTTP_BAD;
        if (at >= 3 && buf[at - 2] == '\n' && buf[at - 3] == '\r') {
            *scanned = at + 1;
            return (long)(at + 1);
        }
        i = at + 1;
    }
    *scanned = len;
    return GW_HTTP_INCOMPLETE;
}

size_t gw_http_blank_lines(const char *buf, size_t len, size_t *scanned)
{
    size_t i = 0;
    while (len - i >= 2 && buf[i] == '\r' && buf[i + 1] == '\n') i += 2;
    if (i) *scanned = 0; /* a search that began at a lone CR began before the head */
    return i;
}

int gw_http_name_eq(const char *a, size_t alen, const char *lit)
{
    size_t n = strlen(lit);
    return alen == n && strncasecmp(a, lit, n) == 0;
}

/* Two names equal, ignoring case. */
static int names_eq(const char *a, size_t alen, const char *b, size_t blen)
{
    return alen == blen && strncasecmp(a, b, alen) == 0;
}

const gw_header_t *gw_http_find(const gw_http_head_t *h, const char *name)
{
    for (size_t i = 0; i < h->nheaders; i++)
        if (gw_http_name_eq(h->headers[i].name, h->headers[i].name_len, name))
            return &h->headers[i];
    return NULL;
}

const gw_header_t *gw_http_find_kind(const gw_http_head_t *h, int kind)
{
    for (size_t i = 0; i < h->nheaders; i++)
        if (h->kind[i] == kind) return &h->headers[i];
    return NULL;
}

/* Equal to a lower-case literal of the same length, ignoring case. Names hold only tchar,
 * for which OR-ing 0x20 folds exactly the letters onto the literals used here. */
static int lc_eq(const char *a, const char *lit, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((a[i] | 0x20) != lit[i]) return 0;
    return 1;
}

int gw_http_header_kind(const char *n, size_t len)
{
#define IS(lit, k)                                                                                 \
    if (lc_eq(n, lit, len)) return k
    switch (len) {
    case 2:
        IS("te", GW_H_TE);
        break;
    case 4:
        IS("host", GW_H_HOST);
        break;
    case 5:
        IS("close", GW_H_CLOSE);
        break;
    case 6:
        IS("expect", GW_H_EXPECT);
        break;
    case 7:
        IS("api-key", GW_H_API_KEY);
        IS("upgrade", GW_H_UPGRADE);
        IS("trailer", GW_H_TRAILER);
        break;
    case 10:
        IS("connection", GW_H_CONNECTION);
        IS("keep-alive", GW_H_KEEP_ALIVE);
        break;
    case 12:
        IS("x-request-id", GW_H_X_REQUEST_ID);
        IS("content-type", GW_H_CONTENT_TYPE);
        break;
    case 13:
        IS("authorization", GW_H_AUTHORIZATION);
        break;
    case 14:
        IS("content-length", GW_H_CONTENT_LENGTH);
        break;
    case 15:
        IS("accept-encoding", GW_H_ACCEPT_ENCODING);
        break;
    case 16:
        IS("proxy-connection", GW_H_PROXY_CONNECTION);
        IS("content-encoding", GW_H_CONTENT_ENCODING);
        break;
    case 17:
        IS("transfer-encoding", GW_H_TRANSFER_ENCODING);
        break;
    case 18:
        IS("proxy-authenticate", GW_H_PROXY_AUTHENTICATE);
        break;
    case 19:
        IS("proxy-authorization", GW_H_PROXY_AUTHORIZATION);
        IS("x-client-request-id", GW_H_X_CLIENT_REQUEST_ID);
        break;
    }
#undef IS
    return GW_H_OTHER;
}

/* Parses "HTTP/1.x" at p; returns the minor version, or an error. */
static int parse_version(const char *p, const char *end)
{
    if (end - p < 8 || memcmp(p, "HTTP/", 5) != 0) return GW_HTTP_BAD;
    if (p[5] < '0' || p[5] > '9' || p[6] != '.' || p[7] < '0' || p[7] > '9') return GW_HTTP_BAD;
    if (p[5] != '1' || (p[7] != '0' && p[7] != '1')) return GW_HTTP_BAD_VERSION;
    return p[7] - '0';
}

static int parse_content_length(const char *v, size_t n, int64_t *out)
{
    if (n == 0 || n > 18) return -1;
    int64_t x = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9') return -1;
        x = x * 10 + (v[i] - '0');
    }
    *out = x;
    return 0;
}

/* Connection's tokens, over all its lines: a head may name GW_HTTP_MAX_CONNECTION_TOKENS at
 * most (a list longer than any real one is refused, 400 or 502, before it costs anything). */
typedef struct conn_tokens {
    struct {
        const char *p;
        size_t n;
    } t[GW_HTTP_MAX_CONNECTION_TOKENS];
    size_t n;
} conn_tokens_t;

/* Adds one Connection value's tokens to ct; close and keep-alive set their flags. -1: not a
 * token list, or more than GW_HTTP_MAX_CONNECTION_TOKENS tokens in all. */
static int connection_tokens(gw_http_head_t *h, const char *v, size_t n, conn_tokens_t *ct)
{
    size_t i = 0;
    while (i < n) {
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ',')) i++;
        size_t s = i;
        while (i < n && tchar[(unsigned char)v[i]]) i++;
        size_t tl = i - s;
        while (i < n && (v[i] == ' ' || v[i] == '\t')) i++;
        if (i < n && v[i] != ',') return -1;
        if (tl == 0) continue;
        if (gw_http_name_eq(v + s, tl, "close"))
            h->conn_close = 1;
        else if (gw_http_name_eq(v + s, tl, "keep-alive"))
            h->conn_keepalive = 1;
        if (ct->n == GW_HTTP_MAX_CONNECTION_TOKENS) return -1;
        ct->t[ct->n].p = v + s;
        ct->t[ct->n].n = tl;
        ct->n++;
    }
    return 0;
}

/* Does Connection make this header hop-by-hop (RFC 9110 7.6.1)? The one place that decides. */
static int decided_on(int kind)
{
    return kind == GW_H_AUTHORIZATION || kind == GW_H_API_KEY || kind == GW_H_CONTENT_ENCODING;
}

/* A header the gateway decides on keeps its kind: credentials and Content-Encoding are never
 * forwarded as they are anyway, and naming one must not hide it from authentication or from
 * the coding check (gw_http_content_coded reads kinds). */
static int named_by_connection(const gw_header_t *hd, int kind, const conn_tokens_t *ct)
{
    if (GW_H_IS_HOP(kind) || decided_on(kind)) return 0; /* already, or never */
    for (size_t j = 0; j < ct->n; j++)
        if (names_eq(hd->name, hd->name_len, ct->t[j].p, ct->t[j].n)) return 1;
    return 0;
}

/* Marks the headers named by Connection's tokens as hop-by-hop: the tokens are collected once,
 * then the headers walked once against them (at most max_headers x 32 comparisons). */
static int parse_connection(gw_http_head_t *h)
{
    conn_tokens_t ct;
    ct.n = 0;
    for (size_t i = 0; i < h->nheaders; i++)
        if (h->kind[i] == GW_H_CONNECTION &&
            connection_tokens(h, h->headers[i].value, h->headers[i].value_len, &ct) < 0)
            return -1;
    for (size_t k = 0; ct.n && k < h->nheaders; k++)
        if (named_by_connection(&h->headers[k], h->kind[k], &ct))
            h->kind[k] = GW_H_NAMED_BY_CONNECTION;
    return 0;
}

/* Header lines from p to the final empty line. */
static int parse_headers(const char *p, const char *end, gw_http_head_t *h, gw_header_t *headers,
                         uint8_t *kinds, size_t max_headers, int is_request)
{
    int cl_seen = 0, te_seen = 0, host_seen = 0, conn_seen = 0, auth_seen = 0, key_seen = 0;
    h->headers = headers;
    h->kind = kinds;
    h->nheaders = 0;
    h->content_length = -1;
    for (;;) {
        if (end - p < 2) return GW_HTTP_BAD;
        if (p[0] == '\r') {
            if (p[1] != '\n') return GW_HTTP_BAD;
            p += 2;
            break;
        }
        const char *name = p;
        while (p < end && tchar[(unsigned char)*p]) p++;
        if (p == name || p >= end || *p != ':') return GW_HTTP_BAD; /* empty name, obs-fold, WS */
        size_t name_len = (size_t)(p - name);
        p++;
        while (p < end && (*p == ' ' || *p == '\t')) p++;
        const char *value = p;
        while (p < end && value_byte[(unsigned char)*p]) p++;
        const char *last = p; /* one past the last non-OWS byte */
        while (last > value && (last[-1] == ' ' || last[-1] == '\t')) last--;
        if (end - p < 2 || p[0] != '\r' || p[1] != '\n') return GW_HTTP_BAD; /* CTL, bare CR */
        p += 2;
        if (h->nheaders == max_headers) return GW_HTTP_TOO_MANY;
        gw_header_t *hd = &headers[h->nheaders];
        int kind = gw_http_header_kind(name, name_len);
        kinds[h->nheaders] = (uint8_t)kind;
        h->nheaders++;
        hd->name = name;
        hd->name_len = name_len;
        hd->value = value;
        hd->value_len = (size_t)(last - value);

        switch (kind) {
        case GW_H_CONTENT_LENGTH:
            if (cl_seen++ || parse_content_length(value, hd->value_len, &h->content_length) < 0)
                return GW_HTTP_BAD;
            break;
        case GW_H_TRANSFER_ENCODING:
            if (te_seen++ || !gw_http_name_eq(value, hd->value_len, "chunked")) return GW_HTTP_BAD;
            h->chunked = 1;
            break;
        case GW_H_HOST:
            if (is_request && (host_seen++ || hd->value_len == 0)) return GW_HTTP_BAD;
            h->has_host = 1;
            break;
        case GW_H_AUTHORIZATION: /* one credential of each kind: which one wins is ambiguous */
            if (is_request && auth_seen++) return GW_HTTP_BAD;
            break;
        case GW_H_API_KEY:
            if (is_request && key_seen++) return GW_HTTP_BAD;
            break;
        case GW_H_EXPECT:
            if (is_request && !gw_http_name_eq(value, hd->value_len, "100-continue"))
                return GW_HTTP_BAD;
            h->expect_continue = is_request;
            break;
        case GW_H_CONNECTION:
            conn_seen = 1;
            break;
        }
    }
    if (p != end) return GW_HTTP_BAD;
    if (cl_seen && te_seen) return GW_HTTP_BAD;
    if (conn_seen && parse_connection(h) < 0) return GW_HTTP_BAD;
    return 0;
}

int gw_http_parse_request(const char *buf, size_t len, gw_http_head_t *h, gw_header_t *headers,
                          uint8_t *kind, size_t max_headers)
{
    const char *p = buf, *end = buf + len;
    memset(h, 0, sizeof(*h));
    h->method = p;
    while (p < end && tchar[(unsigned char)*p]) p++;
    h->method_len = (size_t)(p - h->method);
    if (h->method_len == 0 || p >= end || *p != ' ') return GW_HTTP_BAD;
    h->target = ++p;
    while (p < end && (unsigned char)*p >= 0x21 && (unsigned char)*p <= 0x7e) p++;
    h->target_len = (size_t)(p - h->target);
    if (h->target_len == 0 || p >= end || *p != ' ') return GW_HTTP_BAD;
    p++;
    int minor = parse_version(p, end);
    if (minor < 0) return minor;
    h->minor = minor;
    p += 8;
    if (end - p < 2 || p[0] != '\r' || p[1] != '\n') return GW_HTTP_BAD;
    p += 2;
    int rc = parse_headers(p, end, h, headers, kind, max_headers, 1);
    if (rc < 0) return rc;
    if (h->minor == 1 && !h->has_host) return GW_HTTP_BAD;
    if (h->minor == 0 && h->chunked) return GW_HTTP_BAD;
    if (h->minor == 0) h->expect_continue = 0; /* RFC 9110 10.1.1: ignored from HTTP/1.0 */
    return 0;
}

int gw_http_parse_response(const char *buf, size_t len, gw_http_head_t *h, gw_header_t *headers,
                           uint8_t *kind, size_t max_headers)
{
    const char *p = buf, *end = buf + len;
    memset(h, 0, sizeof(*h));
    int minor = parse_version(p, end);
    if (minor < 0) return GW_HTTP_BAD;
    h->minor = minor;
    p += 8;
    if (end - p < 5 || p[0] != ' ') return GW_HTTP_BAD;
    for (int i = 1; i <= 3; i++)
        if (p[i] < '0' || p[i] > '9') return GW_HTTP_BAD;
    h->status = (p[1] - '0') * 100 + (p[2] - '0') * 10 + (p[3] - '0');
    if (h->status < 100 || h->status > 599) return GW_HTTP_BAD; /* RFC 9110 15 */
    p += 4;
    if (*p == ' ') {
        p++;
        while (p < end && (is_vchar_or_obs((unsigned char)*p) || *p == ' ' || *p == '\t')) p++;
    }
    if (end - p < 2 || p[0] != '\r' || p[1] != '\n') return GW_HTTP_BAD;
    p += 2;
    int rc = parse_headers(p, end, h, headers, kind, max_headers, 0);
    /* RFC 9112 6.1: HTTP/1.0 with Transfer-Encoding is faulty framing, as for requests. */
    if (rc >= 0 && h->minor == 0 && h->chunked) return GW_HTTP_BAD;
    return rc;
}

int gw_http_response_start_ok(const char *buf, size_t len)
{
    static const char prefix[] = "HTTP/1.";
    size_t n = len < sizeof(prefix) - 1 ? len : sizeof(prefix) - 1;
    return n == 0 || memcmp(buf, prefix, n) == 0;
}

/* A Content-Encoding value made only of "identity" elements (empty list elements allowed)? */
static int identity_only(const char *v, size_t n)
{
    size_t i = 0;
    while (i < n) {
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ',')) i++;
        size_t s = i;
        while (i < n && v[i] != ',' && v[i] != ' ' && v[i] != '\t') i++;
        if (i > s && !gw_http_name_eq(v + s, i - s, "identity")) return 0;
    }
    return 1;
}

int gw_http_content_coded(const gw_http_head_t *h)
{
    for (size_t i = 0; i < h->nheaders; i++)
        if (h->kind[i] == GW_H_CONTENT_ENCODING &&
            !identity_only(h->headers[i].value, h->headers[i].value_len))
            return 1;
    return 0;
}

int gw_http_status_has_body(int status)
{
    return status >= 200 && status != 204 && status != 304;
}

const char *gw_http_reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 203:
        return "Non-Authoritative Information";
    case 204:
        return "No Content";
    case 205:
        return "Reset Content";
    case 206:
        return "Partial Content";
    case 207:
        return "Multi-Status";
    case 300:
        return "Multiple Choices";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 303:
        return "See Other";
    case 304:
        return "Not Modified";
    case 307:
        return "Temporary Redirect";
    case 308:
        return "Permanent Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 406:
        return "Not Acceptable";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 410:
        return "Gone";
    case 411:
        return "Length Required";
    case 412:
        return "Precondition Failed";
    case 415:
        return "Unsupported Media Type";
    case 417:
        return "Expectation Failed";
    case 421:
        return "Misdirected Request";
    case 424:
        return "Failed Dependency";
    case 428:
        return "Precondition Required";
    case 451:
        return "Unavailable For Legal Reasons";
    case 413:
        return "Content Too Large";
    case 422:
        return "Unprocessable Content";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Status";
    }
}

static int is_ws(char ch)
{
    return ch == ' ' || ch == '\t';
}

int gw_http_credential(int is_authorization, const char *value, size_t len, const char **cred,
                       size_t *cred_len)
{
    *cred = NULL;
    *cred_len = 0;
    if (!value) return -1;
    size_t b = 0, e = len;
    while (b < e && is_ws(value[b])) b++;
    while (e > b && is_ws(value[e - 1])) e--;
    if (is_authorization) {
        static const char scheme[] = "bearer";
        if (e - b < sizeof(scheme) || strncasecmp(value + b, scheme, sizeof(scheme) - 1) != 0 ||
            !is_ws(value[b + sizeof(scheme) - 1]))
            return -1;
        b += sizeof(scheme) - 1;
        while (b < e && is_ws(value[b])) b++;
    }
    if (b == e) return -1;
    for (size_t i = b; i < e; i++)
        if ((unsigned char)value[i] < 0x21 || (unsigned char)value[i] > 0x7e) return -1;
    *cred = value + b;
    *cred_len = e - b;
    return 0;
}

char *gw_put(char *p, const char *s, size_t n)
{
    memcpy(p, s, n);
    return p + n;
}

char *gw_put_str(char *p, const char *s)
{
    return gw_put(p, s, strlen(s));
}

char *gw_put_u64(char *p, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n) *p++ = tmp[--n];
    return p;
}

void gw_out_u64(gw_out_t *o, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[sizeof(tmp) - ++n] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    gw_out_put(o, tmp + sizeof(tmp) - n, n);
}

void gw_out_status_line(gw_out_t *o, int status)
{
    if (status < 100 || status > 999) status = 500; /* never a malformed line */
    char line[80] = "HTTP/1.1 ";
    line[9] = (char)('0' + status / 100);
    line[10] = (char)('0' + status / 10 % 10);
    line[11] = (char)('0' + status % 10);
    line[12] = ' ';
    const char *reason = gw_http_reason(status);
    size_t n = strlen(reason);
    if (n > sizeof(line) - 15) n = sizeof(line) - 15;
    memcpy(line + 13, reason, n);
    memcpy(line + 13 + n, "\r\n", 2);
    gw_out_put(o, line, 15 + n);
}

static int has_prefix(const char *name, size_t len, const char *lit, size_t n)
{
    return len > n && strncasecmp(name, lit, n) == 0;
}

int gw_http_gateway_name(const char *name, size_t len)
{
    if (len < 12 || (name[0] | 0x20) != 'x' || name[1] != '-') return 0; /* most names, at once */
    return has_prefix(name, len, "x-gotthard-", 11) || has_prefix(name, len, "x-ratelimit-", 12);
}

static void answer_head(gw_out_t *o, const gw_http_head_t *h, const gw_answer_head_t *a)
{
    gw_out_status_line(o, a->status);
    for (size_t i = 0; i < h->nheaders; i++) {
        const gw_header_t *hd = &h->headers[i];
        /* framing and hop-by-hop are the gateway's; the id and the namespace are its own */
        if (GW_H_IS_HOP(h->kind[i]) || h->kind[i] == GW_H_X_REQUEST_ID ||
            h->kind[i] == GW_H_X_CLIENT_REQUEST_ID ||
            gw_http_gateway_name(hd->name, hd->name_len) ||
            (a->taken && a->taken(a->arg, hd->name, hd->name_len)))
            continue;
        gw_out_put(o, hd->name, hd->name_len);
        gw_out_put(o, ": ", 2);
        gw_out_put(o, hd->value, hd->value_len);
        gw_out_put(o, "\r\n", 2);
    }
    /* No framing line where a body cannot be (RFC 9110 8.6, 15.3.5, 15.4.5): 1xx, 204, 304. */
    switch (gw_http_status_has_body(a->status) ? a->framing : GW_AH_EOF) {
    case GW_AH_EMPTY:
        gw_out_put(o, "content-length: 0\r\n", 19);
        break;
    case GW_AH_LENGTH:
        gw_out_put(o, "content-length: ", 16);
        gw_out_u64(o, a->length);
        gw_out_put(o, "\r\n", 2);
        break;
    case GW_AH_CHUNKED:
        gw_out_put(o, "transfer-encoding: chunked\r\n", 28);
        break;
    }
    if (a->close)
        gw_out_put(o, "connection: close\r\n", 19);
    else if (a->keepalive)
        gw_out_put(o, "connection: keep-alive\r\n", 24);
}

size_t gw_http_answer_head(char *out, size_t cap, const gw_http_head_t *h,
                           const gw_answer_head_t *a)
{
    gw_out_t o = {NULL, 0, 0};
    answer_head(&o, h, a);
    if (!out || o.len > cap) return o.len;
    o = (gw_out_t){out, 0, cap};
    answer_head(&o, h, a);
    return o.len; /* the same code over the same input: need again (the caller checks) */
}

enum {
    CK_SIZE,
    CK_EXT,
    CK_SIZE_LF,
    CK_DATA,
    CK_DATA_CR,
    CK_DATA_LF,
    CK_TRAILER,
    CK_TRAILER_LINE,
    CK_TRAILER_LF,
    CK_FINAL_LF,
    CK_DONE
};

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int gw_chunked_feed(gw_chunked_t *c, const char *in, size_t len, size_t *consumed,
                    void (*data)(void *arg, const char *p, size_t n), void *arg)
{
    size_t i = 0;
    while (i < len) {
        unsigned char ch = (unsigned char)in[i];
        switch (c->state) {
        case CK_SIZE: {
            int v = hexval(ch);
            if (v >= 0) {
                c->seen = 1;
                if ((c->remaining || v) && ++c->digits > 15) goto bad;
                c->remaining = c->remaining * 16 + (uint64_t)v;
                i++;
                break;
            }
            if (!c->seen) goto bad;
            if (ch == ';')
                c->state = CK_EXT;
            else if (ch == '\r')
                c->state = CK_SIZE_LF;
            else
                goto bad;
            i++;
            break;
        }
        case CK_EXT:
            if (ch == '\r')
                c->state = CK_SIZE_LF;
            else if (ch != '\t' && (ch < 0x20 || ch == 0x7f))
                goto bad;
            i++;
            break;
        case CK_SIZE_LF:
            if (ch != '\n') goto bad;
            i++;
            c->digits = 0;
            c->seen = 0;
            c->state = c->remaining ? CK_DATA : CK_TRAILER;
            break;
        case CK_DATA: {
            size_t n = len - i;
            if (n > c->remaining) n = (size_t)c->remaining;
            if (data) data(arg, in + i, n);
            c->remaining -= n;
            i += n;
            if (c->remaining == 0) c->state = CK_DATA_CR;
            break;
        }
        case CK_DATA_CR:
            if (ch != '\r') goto bad;
            c->state = CK_DATA_LF;
            i++;
            break;
        case CK_DATA_LF:
            if (ch != '\n') goto bad;
            c->state = CK_SIZE;
            i++;
            break;
        case CK_TRAILER:
            if (ch == '\r')
                c->state = CK_FINAL_LF;
            else if (tchar[ch])
                c->state = CK_TRAILER_LINE;
            else
                goto bad;
            i++;
            break;
        case CK_TRAILER_LINE:
            if (ch == '\r')
                c->state = CK_TRAILER_LF;
            else if (ch != '\t' && (ch < 0x20 || ch == 0x7f))
                goto bad;
            if (++c->remaining > 8192) goto bad;
            i++;
            break;
        case CK_TRAILER_LF:
            if (ch != '\n') goto bad;
            c->state = CK_TRAILER;
            i++;
            break;
        case CK_FINAL_LF:
            if (ch != '\n') goto bad;
            c->state = CK_DONE;
            i++;
            *consumed = i;
            return GW_CHUNKED_DONE;
        default:
            goto bad;
        }
    }
    *consumed = i;
    return GW_CHUNKED_MORE;
bad:
    *consumed = i;
    return GW_CHUNKED_BAD;
}
