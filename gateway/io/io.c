/* Buffered non-blocking sockets: edge-triggered plain TCP, or TLS through libevent's OpenSSL
 * bufferevents, behind one small interface.
 *
 * Plain sockets are registered once, edge-triggered for both directions, so a request costs
 * no epoll_ctl; reads go straight into the input buffer (no FIONREAD), and writes are tried at
 * once by gw_io_flush. That is what keeps a proxied request at about four system calls. */
#include "io/io.h"

#include <errno.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define READ_CHUNK 16384

struct gw_io {
    struct event_base *base;
    int fd;
    struct bufferevent *bev; /* TLS only */
    struct event *ev;        /* plain only */
    struct evbuffer *in, *out;
    gw_io_cbs_t cbs;
    void *arg;
    size_t read_max, write_low;
    unsigned connecting : 1, reading : 1, in_cb : 1, dead : 1, eof : 1, failed : 1, full : 1,
        eager : 1;
};

static void io_destroy(gw_io_t *io)
{
    if (io->bev) {
        bufferevent_free(io->bev);
    } else {
        event_free(io->ev);
        evbuffer_free(io->in);
        evbuffer_free(io->out);
        close(io->fd);
    }
    free(io);
}

void gw_io_free(gw_io_t *io)
{
    if (!io) return;
    if (io->in_cb) {
        io->dead = 1; /* freed when the callback returns */
        return;
    }
    io_destroy(io);
}

static void nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* ---- TLS: a bufferevent underneath ---- */

static void bev_read(struct bufferevent *bev, void *arg)
{
    gw_io_t *io = arg;
    io->in_cb = 1;
    if (io->cbs.read) io->cbs.read(io, io->arg);
    io->in_cb = 0;
    if (io->dead) io_destroy(io);
}

static void bev_write(struct bufferevent *bev, void *arg)
{
    gw_io_t *io = arg;
    io->in_cb = 1;
    if (io->cbs.drained) io->cbs.drained(io, io->arg);
    io->in_cb = 0;
    if (io->dead) io_destroy(io);
}

static void bev_event(struct bufferevent *bev, short what, void *arg)
{
    gw_io_t *io = arg;
    int w = (what & BEV_EVENT_CONNECTED) ? GW_IO_CONNECTED
            : (what & BEV_EVENT_EOF)     ? GW_IO_EOF
                                         : GW_IO_ERROR;
    io->in_cb = 1;
    if (io->cbs.event) io->cbs.event(io, w, io->arg);
    io->in_cb = 0;
    if (io->dead) io_destroy(io);
}

/* ---- plain sockets ---- */

/* Edge-triggered: write until the output is empty or the socket is full. Returns the bytes
 * written, or -1 on an error. */
static int write_all(gw_io_t *io)
{
    int total = 0;
    while (evbuffer_get_length(io->out)) {
        int n = evbuffer_write(io->out, io->fd);
        if (n > 0) {
            total += n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) break;
        return -1;
    }
    return total;
}

static void plain_cb(evutil_socket_t fd, short what, void *arg)
{
    gw_io_t *io = arg;
    io->in_cb = 1;
    if (io->connecting) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
        if (err == EINPROGRESS) goto out;
        io->connecting = 0;
        if (err) {
            io->failed = 1;
            if (io->cbs.event) io->cbs.event(io, GW_IO_ERROR, io->arg);
            goto out;
        }
        if (io->cbs.event) io->cbs.event(io, GW_IO_CONNECTED, io->arg);
        if (io->dead) goto out;
        what |= EV_WRITE;
    }
    if ((what & EV_WRITE) && evbuffer_get_length(io->out)) {
        int n = write_all(io);
        if (n < 0) {
            io->failed = 1;
            if (io->cbs.event) io->cbs.event(io, GW_IO_ERROR, io->arg);
            goto out;
        }
        if (n > 0 && evbuffer_get_length(io->out) <= io->write_low && io->cbs.drained) {
            io->cbs.drained(io, io->arg);
            if (io->dead) goto out;
        }
    }
    if (io->failed) {
        if (io->cbs.event) io->cbs.event(io, GW_IO_ERROR, io->arg);
        goto out;
    }
    if ((what & EV_READ) && io->reading && !io->eof) {
        int err = 0;
        for (;;) {
            size_t total = 0;
            int short_read = 0;
            for (;;) {
                if (io->read_max && evbuffer_get_length(io->in) >= io->read_max) {
                    io->full = 1; /* resumed by gw_io_input_consumed */
                    break;
                }
                struct evbuffer_iovec v;
                if (evbuffer_reserve_space(io->in, READ_CHUNK, &v, 1) < 1) break;
                size_t room = v.iov_len;
                ssize_t n = read(fd, v.iov_base, room);
                if (n > 0) {
                    v.iov_len = (size_t)n;
                    evbuffer_commit_space(io->in, &v, 1);
                    total += (size_t)n;
                    /* A short read drained the socket, unless the peer closed too: then
                     * read on to the end or the error. */
                    if ((size_t)n < room && !(what & EV_CLOSED)) {
                        short_read = 1;
                        break;
                    }
                    continue;
                }
                evbuffer_commit_space(io->in, &v, 0);
                if (n == 0)
                    io->eof = 1;
                else if (errno != EAGAIN && errno != EINTR)
                    err = 1;
                break;
            }
            if (total && io->cbs.read) {
                io->cbs.read(io, io->arg);
                if (io->dead) goto out;
            }
            if (io->eof || err) {
                if (io->cbs.event) io->cbs.event(io, err ? GW_IO_ERROR : GW_IO_EOF, io->arg);
                goto out;
            }
            /* libevent reports EPOLLHUP/EPOLLERR as plain read|write, so a reset that came
             * with the last data gives no second edge. A reader still waiting for more
             * (gw_io_set_eager) reads once more to find it; others learn of it on writing. */
            if (!(short_read && io->eager && io->reading && !io->full)) break;
        }
    }
out:
    io->in_cb = 0;
    if (io->dead) io_destroy(io);
}

static gw_io_t *io_alloc(struct event_base *base, int fd, const gw_io_cbs_t *cbs, void *arg)
{
    gw_io_t *io = calloc(1, sizeof(*io));
    if (!io) return NULL;
    io->base = base;
    io->fd = fd;
    io->cbs = *cbs;
    io->arg = arg;
    io->reading = 1;
    return io;
}

static gw_io_t *plain_new(struct event_base *base, int fd, const gw_io_cbs_t *cbs, void *arg,
                          int connecting)
{
    gw_io_t *io = io_alloc(base, fd, cbs, arg);
    if (!io) return NULL;
    io->connecting = connecting;
    io->in = evbuffer_new();
    io->out = evbuffer_new();
    io->ev = event_new(base, fd, EV_READ | EV_WRITE | EV_CLOSED | EV_PERSIST | EV_ET, plain_cb, io);
    if (!io->in || !io->out || !io->ev || event_add(io->ev, NULL) < 0) {
        if (io->ev) event_free(io->ev);
        if (io->in) evbuffer_free(io->in);
        if (io->out) evbuffer_free(io->out);
        free(io);
        return NULL;
    }
    return io;
}

static gw_io_t *tls_new(struct event_base *base, int fd, SSL *ssl, int mode, const gw_io_cbs_t *cbs,
                        void *arg)
{
    gw_io_t *io = io_alloc(base, fd, cbs, arg);
    if (!io) return NULL;
    io->bev = bufferevent_openssl_socket_new(base, fd, ssl,
                                             mode == GW_IO_TLS_ACCEPT ? BUFFEREVENT_SSL_ACCEPTING
                                                                      : BUFFEREVENT_SSL_CONNECTING,
                                             BEV_OPT_CLOSE_ON_FREE);
    if (!io->bev) {
        free(io);
        return NULL;
    }
    io->in = bufferevent_get_input(io->bev);
    io->out = bufferevent_get_output(io->bev);
    bufferevent_setcb(io->bev, bev_read, bev_write, bev_event, io);
    bufferevent_enable(io->bev, EV_READ | EV_WRITE);
    return io;
}

gw_io_t *gw_io_new(struct event_base *base, int fd, SSL *ssl, int mode, const gw_io_cbs_t *cbs,
                   void *arg)
{
    evutil_make_socket_nonblocking(fd);
    nodelay(fd);
    gw_io_t *io = mode == GW_IO_PLAIN ? plain_new(base, fd, cbs, arg, 0)
                                      : tls_new(base, fd, ssl, mode, cbs, arg);
    if (!io) {
        if (ssl) SSL_free(ssl);
        close(fd);
    }
    return io;
}

gw_io_t *gw_io_connect(struct event_base *base, const struct sockaddr *sa, socklen_t len, SSL *ssl,
                       const gw_io_cbs_t *cbs, void *arg)
{
    if (ssl) {
        gw_io_t *io = io_alloc(base, -1, cbs, arg);
        if (!io) return NULL;
        io->bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
                                                 BEV_OPT_CLOSE_ON_FREE);
        if (!io->bev) {
            SSL_free(ssl);
            free(io);
            return NULL;
        }
        io->in = bufferevent_get_input(io->bev);
        io->out = bufferevent_get_output(io->bev);
        bufferevent_setcb(io->bev, bev_read, bev_write, bev_event, io);
        if (bufferevent_socket_connect(io->bev, (struct sockaddr *)sa, (int)len) < 0) {
            io_destroy(io);
            return NULL;
        }
        int fd = bufferevent_getfd(io->bev);
        if (fd >= 0) nodelay(fd);
        bufferevent_enable(io->bev, EV_READ | EV_WRITE);
        return io;
    }
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return NULL;
    nodelay(fd);
    if (connect(fd, sa, len) < 0 && errno != EINPROGRESS) {
        close(fd);
        return NULL;
    }
    gw_io_t *io = plain_new(base, fd, cbs, arg, 1);
    if (!io) close(fd);
    return io;
}

void gw_io_setcb(gw_io_t *io, const gw_io_cbs_t *cbs, void *arg)
{
    io->cbs = *cbs;
    io->arg = arg;
}

struct evbuffer *gw_io_in(gw_io_t *io)
{
    return io->in;
}
struct evbuffer *gw_io_out(gw_io_t *io)
{
    return io->out;
}
int gw_io_is_tls(const gw_io_t *io)
{
    return io->bev != NULL;
}
int gw_io_fd(const gw_io_t *io)
{
    return io->bev ? bufferevent_getfd(io->bev) : io->fd;
}

void gw_io_flush(gw_io_t *io)
{
    if (io->bev || io->connecting || io->failed || evbuffer_get_length(io->out) == 0) return;
    if (write_all(io) < 0) {
        /* Reported from the loop, never from inside the caller. */
        io->failed = 1;
        event_active(io->ev, EV_WRITE, 0);
    }
}

void gw_io_read_enable(gw_io_t *io, int on)
{
    if (io->bev) {
        if (on)
            bufferevent_enable(io->bev, EV_READ);
        else
            bufferevent_disable(io->bev, EV_READ);
        return;
    }
    int was = io->reading;
    io->reading = on ? 1 : 0;
    /* The edge may have come while paused: look again. */
    if (on && !was) event_active(io->ev, EV_READ, 0);
}

void gw_io_set_limits(gw_io_t *io, size_t read_max, size_t write_low)
{
    io->read_max = read_max;
    io->write_low = write_low;
    if (io->bev) {
        bufferevent_setwatermark(io->bev, EV_READ, 0, read_max);
        bufferevent_setwatermark(io->bev, EV_WRITE, write_low, 0);
    }
}

void gw_io_set_eager(gw_io_t *io, int on)
{
    io->eager = on ? 1 : 0;
}

void gw_io_input_consumed(gw_io_t *io)
{
    if (io->full && evbuffer_get_length(io->in) < io->read_max) {
        io->full = 0;
        event_active(io->ev, EV_READ, 0);
    }
}

int gw_io_shutdown_write(gw_io_t *io)
{
    if (io->bev) return -1;
    return shutdown(io->fd, SHUT_WR);
}
