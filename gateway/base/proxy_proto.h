/* HAProxy's PROXY protocol, versions 1 (text) and 2 (binary): a pure parser of the header a load
 * balancer sends before the client's bytes, naming the client's address. */
#ifndef GW_PROXY_PROTO_H
#define GW_PROXY_PROTO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define GW_PROXY_V1_MAX 107          /* the longest v1 line, "\r\n" included */
#define GW_PROXY_V2_MAX (16 + 65535) /* the fixed part and the longest body */

enum { GW_PROXY_INCOMPLETE = 0, GW_PROXY_BAD = -1 };

typedef struct gw_proxy_hdr {
    int version; /* 1 or 2 */
    /* 1: src is the client's address (TCP over IPv4 or IPv6). 0: the header names none (v1
     * UNKNOWN, v2 LOCAL, v2 UNSPEC or UNIX addresses): the client is not known (conn.c). */
    int has_addr;
    struct sockaddr_storage src;
    socklen_t src_len;
} gw_proxy_hdr_t;

/* Parses the PROXY header at the start of the len bytes at buf. Returns its length (> 0) when it
 * is whole and valid (out is set), GW_PROXY_INCOMPLETE when the bytes so far are a valid
 * beginning, GW_PROXY_BAD as soon as they cannot be one. v2 TLVs are checked to lie within the
 * declared length, and skipped. Reads no byte past buf + len. */
long gw_proxy_parse(const uint8_t *buf, size_t len, gw_proxy_hdr_t *out);

/* The whole length a v2 header declares, once its fixed 16 bytes are in buf; 0 otherwise (not
 * v2, or too few bytes yet). */
size_t gw_proxy_v2_length(const uint8_t *buf, size_t len);

#endif
