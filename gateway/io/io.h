/* Buffered non-blocking sockets: edge-triggered plain TCP, or TLS through libevent's OpenSSL
 * bufferevents, behind one small interface. */
#ifndef GW_IO_H
#define GW_IO_H

#include <event2/buffer.h>
#include <event2/event.h>
#include <openssl/ssl.h>
#include <sys/socket.h>

typedef struct gw_io gw_io_t;

enum { GW_IO_CONNECTED = 1, GW_IO_EOF = 2, GW_IO_ERROR = 4 };
enum { GW_IO_PLAIN, GW_IO_TLS_ACCEPT, GW_IO_TLS_CONNECT };

typedef struct gw_io_cbs {
    void (*read)(gw_io_t *io, void *arg);    /* new bytes in the input */
    void (*drained)(gw_io_t *io, void *arg); /* the output fell to the low mark by writing */
    void (*event)(gw_io_t *io, int what, void *arg);
} gw_io_cbs_t;

/* Takes ownership of fd (closed by gw_io_free) and, for TLS, of ssl. */
gw_io_t *gw_io_new(struct event_base *base, int fd, SSL *ssl, int mode, const gw_io_cbs_t *cbs,
                   void *arg);
/* A new outgoing connection; GW_IO_CONNECTED or GW_IO_ERROR follows. */
gw_io_t *gw_io_connect(struct event_base *base, const struct sockaddr *sa, socklen_t len, SSL *ssl,
                       const gw_io_cbs_t *cbs, void *arg);
void gw_io_setcb(gw_io_t *io, const gw_io_cbs_t *cbs, void *arg);
struct evbuffer *gw_io_in(gw_io_t *io);
struct evbuffer *gw_io_out(gw_io_t *io);
/* Writes what is queued, now where the socket takes it; never calls back. */
void gw_io_flush(gw_io_t *io);
void gw_io_read_enable(gw_io_t *io, int on);
/* The input size past which reading pauses (0: none), and the output low mark. */
void gw_io_set_limits(gw_io_t *io, size_t read_max, size_t write_low);
/* The reader waits for more (an answer in progress): after a short read, look once more,
 * so that a reset arriving with the last bytes is not missed. */
void gw_io_set_eager(gw_io_t *io, int on);
/* The reader took bytes from a full input: reading may resume. */
void gw_io_input_consumed(gw_io_t *io);
int gw_io_shutdown_write(gw_io_t *io); /* plain sockets only; -1 for TLS */
int gw_io_is_tls(const gw_io_t *io);
int gw_io_fd(const gw_io_t *io); /* the socket, for getpeername; -1 if none yet */
void gw_io_free(gw_io_t *io);

#endif
