/* A strict HTTP/1.1 message parser: request and response heads, and chunked bodies. */
#ifndef GW_HTTP_H
#define GW_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* What the parser recognises a header as. From GW_H_HOP_FIRST on, never forwarded as is. */
enum gw_header_kind {
    GW_H_OTHER = 0,
    GW_H_AUTHORIZATION,
    GW_H_API_KEY,
    GW_H_X_REQUEST_ID,
    GW_H_CONTENT_TYPE,
    GW_H_EXPECT,
    GW_H_X_CLIENT_REQUEST_ID, /* the client's own id: echoed to it, never forwarded */
    GW_H_ACCEPT_ENCODING,     /* the backend gets "identity" */
    GW_H_CONTENT_ENCODING,    /* anything but identity refused (gw_http_content_coded) */
    GW_H_HOP_FIRST,
    GW_H_HOST = GW_H_HOP_FIRST,
    GW_H_CONTENT_LENGTH,
    GW_H_TRANSFER_ENCODING,
    GW_H_CONNECTION,
    GW_H_KEEP_ALIVE,
    GW_H_PROXY_CONNECTION,
    GW_H_TE,
    GW_H_TRAILER,
    GW_H_UPGRADE,
    GW_H_PROXY_AUTHORIZATION,
    GW_H_PROXY_AUTHENTICATE,
    GW_H_CLOSE, /* a reserved name (RFC 9110 18.4): read as the connection option when relayed */
    GW_H_NAMED_BY_CONNECTION,
};
#define GW_H_IS_HOP(kind) ((kind) >= GW_H_HOP_FIRST)

typedef struct gw_header {
    const char *name, *value;
    size_t name_len, value_len;
} gw_header_t;

/* What the parser makes of the framing and connection headers. */
typedef struct gw_http_head {
    /* request line */
    const char *method, *target;
    size_t method_len, target_len;
    /* status line */
    int status;
    int minor; /* HTTP/1.<minor> */
    gw_header_t *headers;
    size_t nheaders;
    int64_t content_length; /* -1 when absent */
    unsigned chunked : 1, conn_close : 1, conn_keepalive : 1, has_host : 1, expect_continue : 1;
    /* One gw_header_kind per header; those named by Connection become hop-by-hop too. */
    uint8_t *kind;
} gw_http_head_t;

enum {
    GW_HTTP_INCOMPLETE = -1,
    GW_HTTP_BAD = -2,         /* 400 */
    GW_HTTP_TOO_MANY = -3,    /* 431 */
    GW_HTTP_BAD_VERSION = -4, /* 505 */
};

/* A Connection header field names this many options at most, over all its lines: more makes
 * the head GW_HTTP_BAD (a client's 400, a backend's 502). */
#define GW_HTTP_MAX_CONNECTION_TOKENS 32

/* The length of the blank lines (CRLF pairs) at buf's start, which precede a request line
 * (RFC 9112 2.2) and are dropped; when there are any, *scanned goes back to 0 (the head end is
 * searched for after them). A lone CR at the end is not one yet: it waits for its LF. */
size_t gw_http_blank_lines(const char *buf, size_t len, size_t *scanned);

/* Looks for the end of a head in buf[0..len), resuming at *scanned. Returns the head's
 * length, GW_HTTP_INCOMPLETE, or GW_HTTP_BAD on a bare LF. */
long gw_http_find_head_end(const char *buf, size_t len, size_t *scanned);

/* Parses a whole head (as delimited by gw_http_find_head_end) in place. `headers` and `kind`
 * have room for max_headers entries. Returns 0 or a GW_HTTP_* error. */
int gw_http_parse_request(const char *buf, size_t len, gw_http_head_t *h, gw_header_t *headers,
                          uint8_t *kind, size_t max_headers);
int gw_http_parse_response(const char *buf, size_t len, gw_http_head_t *h, gw_header_t *headers,
                           uint8_t *kind, size_t max_headers);
/* Can buf[0..len), the first bytes of an answer, still begin an "HTTP/1.x" status line? Lets
 * an answer in another protocol fail at its first byte, not at the first-byte timeout. */
int gw_http_response_start_ok(const char *buf, size_t len);

/* The kind of a header name (case-insensitive). */
int gw_http_header_kind(const char *name, size_t len);
int gw_http_name_eq(const char *a, size_t alen, const char *lit);
const gw_header_t *gw_http_find(const gw_http_head_t *h, const char *name);
const gw_header_t *gw_http_find_kind(const gw_http_head_t *h, int kind);
const char *gw_http_reason(int status);
/* May an answer with this status have a body, and so a framing header (RFC 9110 6.4.1: not
 * 1xx, 204 or 304)? */
int gw_http_status_has_body(int status);
/* Does the head declare a content coding other than identity, in any Content-Encoding line
 * (whatever Connection says of it)? Such a body is not the one the gateway could read. */
int gw_http_content_coded(const gw_http_head_t *h);

/* The credential in an "Authorization: Bearer X" (is_authorization) or "api-key: X" value:
 * visible ASCII only, surrounding white space trimmed. Returns 0, or -1 when there is none. */
int gw_http_credential(int is_authorization, const char *value, size_t len, const char **cred,
                       size_t *cred_len);

/* Building heads in room of their exact size: the same code runs twice, first with buf NULL
 * to count (len), then into room of exactly len bytes. A byte past cap is never written, only
 * counted: a caller whose second pass counts more than cap (a miscount) writes nothing wrong. */
typedef struct gw_out {
    char *buf;
    size_t len, cap;
} gw_out_t;

static inline void gw_out_put(gw_out_t *o, const char *s, size_t n)
{
    if (o->buf && n <= o->cap && o->len <= o->cap - n) memcpy(o->buf + o->len, s, n);
    o->len += n;
}
static inline void gw_out_str(gw_out_t *o, const char *s)
{
    gw_out_put(o, s, strlen(s));
}
void gw_out_u64(gw_out_t *o, uint64_t v);
/* "HTTP/1.1 200 OK\r\n" */
void gw_out_status_line(gw_out_t *o, int status);

/* Is this answer header name in the gateway's own namespace (x-gotthard-*, x-ratelimit-*)? Only
 * the gateway writes those: a backend's are never relayed. */
int gw_http_gateway_name(const char *name, size_t len);

/* How the client's head is rebuilt from a backend's answer (gw_http_answer_head). */
enum { GW_AH_EMPTY, GW_AH_LENGTH, GW_AH_CHUNKED, GW_AH_EOF };
typedef struct gw_answer_head {
    int status;
    int framing;     /* GW_AH_*: content-length: 0, content-length: length, chunked, nothing;
                        always nothing for a status without a body (gw_http_status_has_body) */
    uint64_t length; /* GW_AH_LENGTH */
    unsigned close : 1, keepalive : 1; /* connection: close / keep-alive (an HTTP/1.0 client) */
    /* A backend header the gateway writes itself (a plugin sets or removes it); may be NULL. */
    int (*taken)(void *arg, const char *name, size_t len);
    void *arg;
} gw_answer_head_t;

/* The client's head from a backend's parsed answer h, without its final empty line: the status
 * line, the backend's end-to-end headers except the gateway's own (x-request-id, its namespace,
 * `taken`), then the framing and connection lines. Written into out[0..cap) only when it fits
 * whole; returns its exact length either way (out NULL, cap 0: only the length). */
size_t gw_http_answer_head(char *out, size_t cap, const gw_http_head_t *h,
                           const gw_answer_head_t *a);

/* Building heads in a buffer the caller sized: each returns the new end. Prefer gw_out_t. */
char *gw_put(char *p, const char *s, size_t n);
char *gw_put_str(char *p, const char *s);
char *gw_put_u64(char *p, uint64_t v);

/* An incremental strict decoder of chunked bodies. */
typedef struct gw_chunked {
    int state;
    uint64_t remaining; /* of the current chunk's data */
    int digits, seen;
} gw_chunked_t;

enum { GW_CHUNKED_MORE = 0, GW_CHUNKED_DONE = 1, GW_CHUNKED_BAD = -1 };

/* Feeds in[0..len). Data bytes are reported as (offset, length) runs through `data`;
 * *consumed is how much of `in` was used (on DONE, what follows belongs to the next
 * message). Returns GW_CHUNKED_MORE, GW_CHUNKED_DONE or GW_CHUNKED_BAD. */
int gw_chunked_feed(gw_chunked_t *c, const char *in, size_t len, size_t *consumed,
                    void (*data)(void *arg, const char *p, size_t n), void *arg);

#endif
