/* A client connection: reads HTTP/1.1 requests strictly, one at a time, and writes answers. */
#include "io/conn.h"

#include <errno.h>
#include <event2/buffer.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/log.h"
#include "base/proxy_proto.h"

#define CLIENT_WRITE_LOW (64 * 1024)
#define LINGER_MS 2000
#define PROXY_PEEK 256 /* a v1 line (107 bytes at most), or a v2 header's fixed part and more */

/* Reading the PROXY header (listen[].proxy_protocol), before the connection's io exists, so that
 * a TLS listener's handshake starts after it: from the socket itself, peeked until its length
 * is known, then taken exactly, never a byte of what follows. */
struct proxy_wait {
    int fd;
    SSL *ssl; /* the TLS listener's, handed to the io once the header is read */
    struct event *ev;
    uint8_t *buf; /* a v2 header longer than PROXY_PEEK, being taken: total bytes */
    size_t have, total;
};

static void process(gw_conn_t *c);

/* The request layer above (gw_worker_hooks_t.conn). */
static const gw_conn_handler_t *handler(const gw_conn_t *c)
{
    return c->w->hooks->conn;
}

static void proxy_wait_free(struct proxy_wait *p)
{
    if (p->ev) event_free(p->ev);
    if (p->ssl) SSL_free(p->ssl);
    if (p->fd >= 0) close(p->fd);
    free(p->buf);
    free(p);
}

static void arm(gw_conn_t *c, int64_t ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(c->timer, &tv);
}

static void unlink_conn(gw_conn_t *c)
{
    gw_worker_t *w = c->w;
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    w->nconns--;
}

void gw_conn_close(gw_conn_t *c)
{
    if (c->dead) return;
    if (c->req) {
        gw_req_t *r = c->req;
        c->req = NULL;
        handler(c)->abort(r);
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
    if (c->pp) proxy_wait_free(c->pp); /* closes the socket */
    if (c->io) gw_io_free(c->io);      /* closes the socket */
    explicit_bzero(&c->client, sizeof(c->client));
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
    if (evbuffer_get_length(gw_io_out(c->io)) == 0)
        linger_start(c);
    else
        arm(c, 30000); /* a client that never reads its answer */
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    gw_conn_t *c = arg;
    switch (c->state) {
    case CONN_HEAD:
        handler(c)->reply(c, 408, "request_timeout", "The request head was not received in time.",
                          1);
        break;
    case CONN_BODY:
        if (c->req) {
            handler(c)->fail(c->req, 408, "request_timeout",
                             "The request body was not received in time.");
        } else {
            gw_conn_close(c);
        }
        break;
    case CONN_PROXY: /* no PROXY header in time: closed without an answer, like HAProxy */
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
    if (c->req) handler(c)->drained(c->req);
}

static void event_cb(gw_io_t *io, int what, void *arg)
{
    gw_conn_t *c = arg;
    if (what & GW_IO_CONNECTED) return;
    /* EOF or error: the client is gone (or done, when lingering). */
    gw_conn_close(c);
}

static const gw_io_cbs_t conn_cbs = {read_cb, write_cb, event_cb};

/* The header is whole: the client is the address it names (not known for LOCAL and UNKNOWN),
 * and the connection goes on as any other (TLS, then HTTP). */
static void proxy_done(gw_conn_t *c, const gw_proxy_hdr_t *h)
{
    struct proxy_wait *p = c->pp;
    if (h->has_addr) {
        c->client = h->src;
        c->client_len = h->src_len;
    } else {
        c->client_len = 0; /* the balancer's own address is not the client's */
    }
    int fd = p->fd;
    SSL *ssl = p->ssl;
    p->fd = -1;
    p->ssl = NULL;
    c->pp = NULL;
    proxy_wait_free(p);
    c->state = CONN_HEAD; /* the timer armed at accept goes on: header and head share it */
    c->io = gw_io_new(c->w->base, fd, ssl, ssl ? GW_IO_TLS_ACCEPT : GW_IO_PLAIN, &conn_cbs, c);
    if (!c->io) { /* fd and ssl are freed */
        gw_conn_close(c);
        return;
    }
    gw_io_set_limits(c->io, (size_t)c->w->cfg->limits.max_header_bytes + 65536, CLIENT_WRITE_LOW);
}

/* Edge-triggered: a new edge comes with every new byte, so a header still short waits for it. */
static void proxy_cb(evutil_socket_t fd, short what, void *arg)
{
    gw_conn_t *c = arg;
    struct proxy_wait *p = c->pp;
    gw_proxy_hdr_t h;
    for (;;) {
        if (p->total == 0) {
            uint8_t peek[PROXY_PEEK];
            ssize_t n = recv(fd, peek, sizeof(peek), MSG_PEEK);
            if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
            if (n <= 0) break; /* gone, or an error */
            long hl = gw_proxy_parse(peek, (size_t)n, &h);
            if (hl > 0) {
                /* Peeked, so in the socket: taken whole. */
                if (recv(fd, peek, (size_t)hl, 0) != hl) break;
                proxy_done(c, &h);
                return;
            }
            if (hl < 0) break;
            size_t total = gw_proxy_v2_length(peek, (size_t)n);
            if (total == 0) {
                /* A v1 line, or a v2 fixed part, still short: more comes with the next edge,
                 * unless the peer has closed its side. */
                if (what & EV_CLOSED) break;
                return;
            }
            /* No larger than a request head may be (limits.max_header_bytes): a v2 header
             * may declare 64 KiB, a connection does not get to hold that much for nothing. */
            if (total > (size_t)c->w->cfg->limits.max_header_bytes) break;
            p->buf = malloc(total);
            if (!p->buf) break;
            p->total = total;
            continue;
        }
        /* A v2 header of known length: every byte of it is the header's, read them. */
        ssize_t n = recv(fd, p->buf + p->have, p->total - p->have, 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
        if (n <= 0) break;
        p->have += (size_t)n;
        if (p->have < p->total) continue;
        if (gw_proxy_parse(p->buf, p->total, &h) != (long)p->total) break;
        proxy_done(c, &h);
        return;
    }
    /* Not a PROXY header, or the peer left: closed without a byte of answer. */
    gw_conn_close(c);
}

void gw_conn_accept(gw_worker_t *w, int fd, gw_listen_t *l, const struct sockaddr *sa,
                    socklen_t salen)
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
    if (sa && salen > 0 && (size_t)salen <= sizeof(c->client)) {
        memcpy(&c->client, sa, (size_t)salen);
        c->client_len = salen;
    }
    if (l->proxy_protocol) {
        c->pp = calloc(1, sizeof(*c->pp));
        if (c->pp) {
            c->pp->fd = fd;
            c->pp->ssl = ssl;
            evutil_make_socket_nonblocking(fd);
            c->pp->ev =
                event_new(w->base, fd, EV_READ | EV_CLOSED | EV_PERSIST | EV_ET, proxy_cb, c);
        }
        c->timer = c->pp && c->pp->ev ? evtimer_new(w->base, timer_cb, c) : NULL;
        if (!c->timer || event_add(c->pp->ev, NULL) < 0) {
            if (c->timer) event_free(c->timer);
            if (c->pp) {
                proxy_wait_free(c->pp); /* closes fd, frees ssl */
            } else {
                if (ssl) SSL_free(ssl);
                close(fd);
            }
            free(c);
            return;
        }
        c->state = CONN_PROXY;
    } else {
        c->io = gw_io_new(w->base, fd, ssl, ssl ? GW_IO_TLS_ACCEPT : GW_IO_PLAIN, &conn_cbs, c);
        c->timer = c->io ? evtimer_new(w->base, timer_cb, c) : NULL;
        if (!c->io || !c->timer) {
            if (c->io) gw_io_free(c->io);
            free(c);
            return;
        }
        gw_io_set_limits(c->io, (size_t)w->cfg->limits.max_header_bytes + 65536, CLIENT_WRITE_LOW);
        c->state = CONN_HEAD;
    }
    c->next = w->conns;
    if (w->conns) w->conns->prev = c;
    w->conns = c;
    w->nconns++;
    arm(c, w->cfg->timeouts.client_header_ms);
}

/* Reads the body into the request as it arrives. Returns 1 when it is whole. */
static void body_data(void *arg, const char *p, size_t n)
{
    struct evbuffer *into = arg;
    evbuffer_add(into, p, n);
}

static int read_body(gw_conn_t *c)
{
    const gw_conn_body_t *b = &c->body;
    struct evbuffer *in = gw_io_in(c->io);
    if (!b->chunked) {
        size_t have = evbuffer_get_length(in);
        size_t take = have < (size_t)c->body_left ? have : (size_t)c->body_left;
        if (take) evbuffer_remove_buffer(in, b->into, take);
        c->body_left -= (int64_t)take;
        return c->body_left == 0;
    }
    for (;;) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0) return 0;
        size_t used = 0;
        int rc = gw_chunked_feed(&c->chunked, v.iov_base, v.iov_len, &used, body_data, b->into);
        evbuffer_drain(in, used);
        if (rc == GW_CHUNKED_BAD) {
            handler(c)->fail(c->req, 400, "bad_request", "The chunked request body is malformed.");
            return -1;
        }
        if ((int64_t)evbuffer_get_length(b->into) > b->max_bytes) {
            handler(c)->fail(c->req, 413, "request_too_large", "The request body is too large.");
            return -1;
        }
        if (rc == GW_CHUNKED_DONE) return 1;
    }
}

void gw_conn_read_body(gw_conn_t *c)
{
    gw_req_t *r = c->req;
    memset(&c->body, 0, sizeof(c->body));
    handler(c)->body_plan(r, &c->body);
    if (!c->body.chunked && c->body.length <= 0) {
        c->state = CONN_BUSY;
        handler(c)->body(r);
        return;
    }
    c->state = CONN_BODY;
    c->body_left = c->body.chunked ? 0 : c->body.length;
    memset(&c->chunked, 0, sizeof(c->chunked));
    arm(c, c->body.timeout_ms);
    if (c->body.expect_continue && evbuffer_get_length(gw_io_in(c->io)) == 0) {
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
    if (c->state == CONN_IDLE || c->state == CONN_PROXY ||
        (c->state == CONN_HEAD && !c->req && evbuffer_get_length(gw_io_in(c->io)) == 0))
        gw_conn_close(c);
}

static void head_error(gw_conn_t *c, int rc)
{
    if (rc == GW_HTTP_TOO_MANY)
        handler(c)->reply(c, 431, "headers_too_large", "The request headers are too large.", 1);
    else if (rc == GW_HTTP_BAD_VERSION)
        handler(c)->reply(c, 505, "bad_request", "Only HTTP/1.0 and HTTP/1.1 are supported.", 1);
    else
        handler(c)->reply(c, 400, "bad_request", "The request is malformed.", 1);
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
            if (len == 0) break;
            size_t max = (size_t)c->w->cfg->limits.max_header_bytes;
            size_t look = len < max + 4 ? len : max + 4;
            const char *buf = (const char *)evbuffer_pullup(in, (ssize_t)look);
            /* Blank lines before a request line are allowed (RFC 9112 2.2), however split. */
            size_t blank = gw_http_blank_lines(buf, look, &c->head_scanned);
            if (blank) {
                evbuffer_drain(in, blank);
                continue;
            }
            c->asks_head = look >= 5 && memcmp(buf, "HEAD ", 5) == 0;
            long hl = gw_http_find_head_end(buf, look, &c->head_scanned);
            if (hl == GW_HTTP_INCOMPLETE) {
                if (look > max)
                    head_error(c, GW_HTTP_TOO_MANY);
                else if (c->head_timer_due)
                    arm(c, c->w->cfg->timeouts.client_header_ms);
                c->head_timer_due = 0;
                break;
            }
            c->head_timer_due = 0;
            if (hl < 0 || (size_t)hl > max) {
                head_error(c, hl < 0 ? (int)hl : GW_HTTP_TOO_MANY);
                break;
            }
            int err = 0;
            gw_req_t *r = handler(c)->begin(c, buf, (size_t)hl, &err);
            evbuffer_drain(in, (size_t)hl);
            c->head_scanned = 0;
            if (!r) {
                head_error(c, err);
                break;
            }
            c->req = r;
            c->state = CONN_BUSY;
            evtimer_del(c->timer);
            handler(c)->headers(r); /* which may refuse it, the connection closing after */
            continue;
        }
        if (c->state == CONN_BODY) {
            int rc = read_body(c);
            if (rc < 0) break;
            if (rc == 0) break;
            evtimer_del(c->timer);
            c->state = CONN_BUSY;
            handler(c)->body(c->req);
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
