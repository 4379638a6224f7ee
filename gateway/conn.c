/* A client connection: reads HTTP/1.1 requests strictly, one at a time, and writes answers. */
#include "conn.h"

#include <errno.h>
#include <event2/buffer.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"
#include "overload.h"
#include "request.h"
#include "upstream.h"

#define CLIENT_WRITE_LOW (64 * 1024)
#define LINGER_MS 2000

static void process(gw_conn_t *c);

static void arm(gw_conn_t *c, int64_t ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(c->timer, &tv);
}

static void unlink_conn(gw_conn_t *c)
{
    gw_worker_t *w = c->w;
    if (c->prev) c->prev->next = c->next;
    else w->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    w->nconns--;
}

void gw_conn_close(gw_conn_t *c)
{
    if (c->dead) return;
    if (c->req) {
        gw_req_t *r = c->req;
        c->req = NULL;
        r->conn = NULL;
        gw_req_abort(r);
    }
    if (c->in_process) {
        /* process() is below us on the stack: it frees the connection when it returns. */
        c->dead = 1;
        gw_io_read_enable(c->io, 0);
        evtimer_del(c->timer);
        return;
    }
    gw_worker_t *w = c->w;
    unlink_conn(c);
    event_free(c->timer);
    gw_io_free(c->io); /* closes the socket */
    free(c);
    gw_worker_conn_gone(w);
}

static void linger_start(gw_conn_t *c)
{
    /* Everything is written: stop sending, and read what the client still sends for a
     * moment, so that unread bytes do not turn into a reset that eats our answer. */
    if (gw_io_shutdown_write(c->io) < 0) {
        gw_conn_close(c);
        return;
    }
    c->lingering = 1;
    struct evbuffer *in = gw_io_in(c->io);
    evbuffer_drain(in, evbuffer_get_length(in));
    gw_io_set_limits(c->io, 0, CLIENT_WRITE_LOW);
    gw_io_read_enable(c->io, 1);
    arm(c, LINGER_MS);
}

void gw_conn_close_after_write(gw_conn_t *c)
{
    c->state = CONN_CLOSING;
    evtimer_del(c->timer);
    gw_io_flush(c->io);
    if (evbuffer_get_length(gw_io_out(c->io)) == 0) linger_start(c);
    else arm(c, 30000); /* a client that never reads its answer */
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    gw_conn_t *c = arg;
    switch (c->state) {
    case CONN_HEAD:
        gw_conn_error_reply(c, 408, "request_timeout", "The request head was not received in time.", 1);
        break;
    case CONN_BODY:
        if (c->req) {
            gw_req_t *r = c->req;
            r->close = 1;
            gw_req_error(r, 408, "request_timeout", "The request body was not received in time.");
            gw_req_finish(r, 1);
        } else {
            gw_conn_close(c);
        }
        break;
    case CONN_CLOSING:
    case CONN_IDLE:
    default:
        gw_conn_close(c);
        break;
    }
}

static void read_cb(gw_io_t *io, void *arg)
{
    gw_conn_t *c = arg;
    if (c->lingering) {
        struct evbuffer *in = gw_io_in(io);
        evbuffer_drain(in, evbuffer_get_length(in));
        return;
    }
    process(c);
}

static void write_cb(gw_io_t *io, void *arg)
{
    gw_conn_t *c = arg;
    if (c->state == CONN_CLOSING) {
        if (!c->lingering && evbuffer_get_length(gw_io_out(io)) == 0) linger_start(c);
        return;
    }
    if (c->req) gw_upstream_client_drained(c->req);
}

static void event_cb(gw_io_t *io, int what, void *arg)
{
    gw_conn_t *c = arg;
    if (what & GW_IO_CONNECTED) return;
    /* EOF or error: the client is gone (or done, when lingering). */
    gw_conn_close(c);
}

static const gw_io_cbs_t conn_cbs = {read_cb, write_cb, event_cb};

void gw_conn_accept(gw_worker_t *w, int fd, gw_listen_t *l)
{
    gw_conn_t *c = calloc(1, sizeof(*c));
    SSL *ssl = l->ssl ? SSL_new(l->ssl) : NULL;
    if (!c || (l->ssl && !ssl)) {
        free(c);
        close(fd);
        return;
    }
    c->w = w;
    c->tls = ssl != NULL;
    c->io = gw_io_new(w->base, fd, ssl, ssl ? GW_IO_TLS_ACCEPT : GW_IO_PLAIN, &conn_cbs, c);
    c->timer = c->io ? evtimer_new(w->base, timer_cb, c) : NULL;
    if (!c->io || !c->timer) {
        if (c->io) gw_io_free(c->io);
        free(c);
        return;
    }
    c->next = w->conns;
    if (w->conns) w->conns->prev = c;
    w->conns = c;
    w->nconns++;
    gw_io_set_limits(c->io, (size_t)w->cfg->limits.max_header_bytes + 65536, CLIENT_WRITE_LOW);
    c->state = CONN_HEAD;
    arm(c, w->cfg->timeouts.client_header_ms);
}

/* Reads the body into the request as it arrives. Returns 1 when it is whole. */
static void body_data(void *arg, const char *p, size_t n)
{
    gw_req_t *r = arg;
    evbuffer_add(r->body, p, n);
}

static int read_body(gw_conn_t *c)
{
    gw_req_t *r = c->req;
    struct evbuffer *in = gw_io_in(c->io);
    int64_t max = r->cfg->limits.max_body_bytes;
    if (!r->head.chunked) {
        size_t have = evbuffer_get_length(in);
        size_t take = have < (size_t)c->body_left ? have : (size_t)c->body_left;
        if (take) evbuffer_remove_buffer(in, r->body, take);
        c->body_left -= (int64_t)take;
        return c->body_left == 0;
    }
    for (;;) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0) return 0;
        size_t used = 0;
        int rc = gw_chunked_feed(&c->chunked, v.iov_base, v.iov_len, &used, body_data, r);
        evbuffer_drain(in, used);
        if (rc == GW_CHUNKED_BAD) {
            r->close = 1;
            gw_req_error(r, 400, "bad_request", "The chunked request body is malformed.");
            gw_req_finish(r, 1);
            return -1;
        }
        if ((int64_t)evbuffer_get_length(r->body) > max) {
            r->close = 1;
            gw_req_error(r, 413, "request_too_large", "The request body is too large.");
            gw_req_finish(r, 1);
            return -1;
        }
        if (rc == GW_CHUNKED_DONE) return 1;
    }
}

void gw_conn_read_body(gw_conn_t *c)
{
    gw_req_t *r = c->req;
    if (!r->head.chunked && r->head.content_length <= 0) {
        c->state = CONN_BUSY;
        gw_req_body_ready(r);
        return;
    }
    c->state = CONN_BODY;
    c->body_left = r->head.chunked ? 0 : r->head.content_length;
    memset(&c->chunked, 0, sizeof(c->chunked));
    arm(c, r->cfg->timeouts.client_body_ms);
    if (r->head.expect_continue && evbuffer_get_length(gw_io_in(c->io)) == 0)
    {
        evbuffer_add(gw_io_out(c->io), "HTTP/1.1 100 Continue\r\n\r\n", 25);
        gw_io_flush(c->io);
    }
    if (!c->in_process) process(c);
}

void gw_conn_request_done(gw_conn_t *c, int close)
{
    c->req = NULL;
    if (close || c->w->draining) {
        gw_conn_close_after_write(c);
        return;
    }
    c->state = CONN_IDLE;
    c->head_scanned = 0;
    arm(c, c->w->cfg->timeouts.keepalive_ms);
    if (!c->in_process && evbuffer_get_length(gw_io_in(c->io))) process(c);
}

void gw_conn_drain(gw_conn_t *c)
{
    if (c->state == CONN_IDLE || (c->state == CONN_HEAD && !c->req &&
                                  evbuffer_get_length(gw_io_in(c->io)) == 0))
        gw_conn_close(c);
}

static void head_error(gw_conn_t *c, int rc)
{
    if (rc == GW_HTTP_TOO_MANY)
        gw_conn_error_reply(c, 431, "headers_too_large", "The request headers are too large.", 1);
    else if (rc == GW_HTTP_BAD_VERSION)
        gw_conn_error_reply(c, 505, "bad_request", "Only HTTP/1.0 and HTTP/1.1 are supported.", 1);
    else
        gw_conn_error_reply(c, 400, "bad_request", "The request is malformed.", 1);
}

/* Answers a request refused before its body is read; the connection closes after it (the body
 * would otherwise be taken for the next request). */
static void refuse_unread(gw_req_t *r, int status, const char *code, const char *message)
{
    r->close = 1;
    gw_req_error(r, status, code, message);
    gw_req_finish(r, 1);
}

/* Parses as many requests as the input holds, one at a time. */
static void process(gw_conn_t *c)
{
    struct evbuffer *in = gw_io_in(c->io);
    c->in_process = 1;
    while (!c->dead) {
        size_t len = evbuffer_get_length(in);
        if (c->state == CONN_IDLE) {
            if (len == 0) break;
            /* The header timer starts here; it is armed only if the head is not whole yet. */
            c->state = CONN_HEAD;
            c->head_timer_due = 1;
        }
        if (c->state == CONN_HEAD) {
            /* Blank lines before a request line are allowed (RFC 9112 2.2). */
            while (c->head_scanned == 0 && len >= 2) {
                unsigned char two[2];
                evbuffer_copyout(in, two, 2);
                if (two[0] != '\r' || two[1] != '\n') break;
                evbuffer_drain(in, 2);
                len -= 2;
            }
            if (len == 0) break;
            size_t max = (size_t)c->w->cfg->limits.max_header_bytes;
            size_t look = len < max + 4 ? len : max + 4;
            const char *buf = (const char *)evbuffer_pullup(in, (ssize_t)look);
            c->asks_head = look >= 5 && memcmp(buf, "HEAD ", 5) == 0;
            long hl = gw_http_find_head_end(buf, look, &c->head_scanned);
            if (hl == GW_HTTP_INCOMPLETE) {
                if (look > max) head_error(c, GW_HTTP_TOO_MANY);
                else if (c->head_timer_due) arm(c, c->w->cfg->timeouts.client_header_ms);
                c->head_timer_due = 0;
                break;
            }
            c->head_timer_due = 0;
            if (hl < 0 || (size_t)hl > max) {
                head_error(c, hl < 0 ? (int)hl : GW_HTTP_TOO_MANY);
                break;
            }
            int err = 0;
            gw_req_t *r = gw_req_new(c, buf, (size_t)hl, &err);
            evbuffer_drain(in, (size_t)hl);
            c->head_scanned = 0;
            if (!r) {
                head_error(c, err);
                break;
            }
            c->req = r;
            c->state = CONN_BUSY;
            evtimer_del(c->timer);
            if (gw_overload_memory()) {
                /* Short of memory: running requests go on, this one is refused cheaply. */
                gw_req_add_response_header(r, "retry-after", "1");
                refuse_unread(r, 503, "server_overloaded",
                              "The gateway is short of memory; try again shortly.");
                break;
            }
            if (r->head.content_length > r->cfg->limits.max_body_bytes) {
                refuse_unread(r, 413, "request_too_large", "The request body is too large.");
                break;
            }
            gw_req_headers_ready(r);
            continue;
        }
        if (c->state == CONN_BODY) {
            int rc = read_body(c);
            if (rc < 0) break;
            if (rc == 0) break;
            evtimer_del(c->timer);
            c->state = CONN_BUSY;
            gw_req_body_ready(c->req);
            continue;
        }
        /* CONN_BUSY: a pipelined request waits in the input; CONN_CLOSING: ignore. */
        break;
    }
    c->in_process = 0;
    if (!c->dead) gw_io_input_consumed(c->io);
    if (c->dead) {
        c->dead = 0;
        gw_conn_close(c);
    }
}
