/* Parsing redis://[:password@]host[:port][/db], for the gateway and its tools. */
#ifndef GW_REDIS_URL_H
#define GW_REDIS_URL_H

#include <stddef.h>

typedef struct gw_redis_url {
    char host[256];
    char password[256]; /* empty: none */
    int port, db;
} gw_redis_url_t;

int gw_redis_url_parse(const char *url, gw_redis_url_t *out);

/* A blocking connection for tools and admin reports (never on a worker's loop): connected,
 * authenticated and on its db, every command bounded by timeout_ms. NULL with a message in
 * err (never the password) on failure. */
struct redisContext;
struct redisContext *gw_redis_url_connect(const char *url, int timeout_ms, char *err,
                                          size_t errlen);

#endif
