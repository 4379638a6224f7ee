/* Parsing redis://[:password@]host[:port][/db], for the gateway and its tools. */
#include "base/redis_url.h"

#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

int gw_redis_url_parse(const char *u, gw_redis_url_t *out)
{
    memset(out, 0, sizeof(*out));
    out->port = 6379;
    if (strncmp(u, "redis://", 8) != 0) return -1;
    u += 8;
    const char *at = strchr(u, '@');
    if (at) {
        size_t n = (size_t)(at - u - 1);
        if (*u != ':' || n == 0 || n >= sizeof(out->password)) return -1;
        memcpy(out->password, u + 1, n);
        u = at + 1;
    }
    size_t hl = strcspn(u, ":/");
    if (hl == 0 || hl >= sizeof(out->host)) return -1;
    memcpy(out->host, u, hl);
    u += hl;
    if (*u == ':') {
        char *end;
        long port = strtol(u + 1, &end, 10);
        if (end == u + 1 || port < 1 || port > 65535) return -1;
        out->port = (int)port;
        u = end;
    }
    if (*u == '/') {
        char *end;
        long db = strtol(u + 1, &end, 10);
        if (end == u + 1 || *end || db < 0 || db > 1000) return -1;
        out->db = (int)db;
        u = end;
    }
    return *u ? -1 : 0;
}

redisContext *gw_redis_url_connect(const char *url, int timeout_ms, char *err, size_t errlen)
{
    gw_redis_url_t u;
    if (gw_redis_url_parse(url, &u) < 0) {
        snprintf(err, errlen, "not a redis://host:port/db URL");
        return NULL;
    }
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    redisContext *rc = redisConnectWithTimeout(u.host, u.port, tv);
    if (!rc || rc->err) {
        snprintf(err, errlen, "cannot connect to redis: %s", rc ? rc->errstr : "out of memory");
        if (rc) redisFree(rc);
        explicit_bzero(u.password, sizeof(u.password));
        return NULL;
    }
    redisSetTimeout(rc, tv);
    /* Both must answer OK: an error or any other reply (not a redis server?) is a refusal. */
    const char *refused = NULL;
    redisReply *r = NULL;
    if (u.password[0]) {
        r = redisCommand(rc, "AUTH %s", u.password);
        if (!r || r->type != REDIS_REPLY_STATUS || strcmp(r->str, "OK") != 0)
            refused =
                "redis refused AUTH (the password in the URL is wrong, or the server has none)";
        freeReplyObject(r);
    }
    explicit_bzero(u.password, sizeof(u.password));
    if (!refused) {
        r = redisCommand(rc, "SELECT %d", u.db);
        if (!r || r->type != REDIS_REPLY_STATUS || strcmp(r->str, "OK") != 0)
            refused = r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOAUTH", 6) == 0
                          ? "redis needs a password (NOAUTH)"
                          : "redis refused SELECT (no such database on the server?)";
        freeReplyObject(r);
    }
    if (refused) {
        snprintf(err, errlen, "%s", refused);
        redisFree(rc);
        return NULL;
    }
    return rc;
}
