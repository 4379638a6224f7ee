/* A client connection: reads HTTP/1.1 requests strictly, one at a time, and writes answers. */
#ifndef GW_CONN_H
#define GW_CONN_H

#include "base/http.h"
#include "io/io.h"
#include "io/worker_t.h"

typedef struct gw_req gw_req_t;

enum { CONN_IDLE, CONN_HEAD, CONN_BODY, CONN_BUSY, CONN_CLOSING, CONN_PROXY };

/* A request's body as the request layer frames it: where its bytes go and within what. */
typedef struct gw_conn_body {
    struct evbuffer *into; /* the request's, alive as long as it */
    int64_t length;        /* Content-Length (0: none); unused when chunked */
    int64_t max_bytes;     /* a chunked body past this is refused */
    int64_t timeout_ms;    /* for the whole body */
    int chunked, expect_continue;
} gw_conn_body_t;

/* The request layer a connection serves, as the layer above io provides it (gw_worker_hooks_t:
 * proxy/serve.c): the connection reads and frames bytes, the handler makes and runs requests,
 * which stay opaque here. Every function is required. */
typedef struct gw_conn_handler {
    /* A whole head of len bytes: a new request, or NULL with *err a GW_HTTP_* code. */
    gw_req_t *(*begin)(gw_conn_t *c, const char *head, size_t len, int *err);
    /* Answers an error before there is a request (a bad head, a head not read in time), in the
     * request layer's shape; with close, the connection closes after it. */
    void (*reply)(gw_conn_t *c, int status, const char *code, const char *message, int close);
    /* The head is read: the request runs (or is refused before its body is read). */
    void (*headers)(gw_req_t *r);
    /* How its body is framed (when gw_conn_read_body is called). */
    void (*body_plan)(gw_req_t *r, gw_conn_body_t *out);
    /* The body is whole (in body_plan's buffer). */
    void (*body)(gw_req_t *r);
    /* Answers an error (a bad body, a timeout); the connection closes after it. */
    void (*fail)(gw_req_t *r, int status, const char *code, const char *message);
    /* The connection is closing under the request: it ends without a client. */
    void (*abort)(gw_req_t *r);
    /* The client's output fell to the low mark: an answer held back may go on. */
    void (*drained)(gw_req_t *r);
} gw_conn_handler_t;

struct gw_conn {
    gw_worker_t *w;
    gw_io_t *io;
    struct event *timer;
    gw_req_t *req;
    gw_conn_t *prev, *next;
    int state;
    size_t head_scanned;
    int64_t body_left; /* Content-Length bytes still to read */
    gw_chunked_t chunked;
    gw_conn_body_t body; /* CONN_BODY: the request's framing (handler->body_plan) */
    /* The client's address, for every per-address rule: the peer accept() gave, or the one a
     * PROXY header named. Never logged. client_len 0: not known. */
    struct sockaddr_storage client;
    socklen_t client_len;
    struct proxy_wait *pp; /* CONN_PROXY: reading the PROXY header; io is NULL until it is whole */
    unsigned tls : 1, in_process : 1, lingering : 1, dead : 1, head_timer_due : 1;
    unsigned asks_head : 1; /* the head being read is a HEAD's: its error answer has no body */
};

/* sa: the peer accept() gave. A listener with proxy_protocol first reads the PROXY header (the
 * connection is closed without an answer when it is not one), then TLS or HTTP. */
void gw_conn_accept(gw_worker_t *w, int fd, gw_listen_t *l, const struct sockaddr *sa,
                    socklen_t salen);
/* The request's head was handled by the request_headers phase: read its body. */
void gw_conn_read_body(gw_conn_t *c);
/* The answer is written (or queued): next request, or close when close is set. */
void gw_conn_request_done(gw_conn_t *c, int close);
/* Close at once (a broken stream, a worker stopping). */
void gw_conn_close(gw_conn_t *c);
/* Write everything queued, then close (lingering). */
void gw_conn_close_after_write(gw_conn_t *c);
/* Drain: close if idle, else close after the current request. */
void gw_conn_drain(gw_conn_t *c);

#endif
