/* gotthard-usage: requests and tokens per tenant and UTC day, as the quota plugin keeps them:
 * from a gateway's admin listener (GET /usage) or straight from the shared Redis. */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <getopt.h>
#include <hiredis/hiredis.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "base/redis_url.h"
#include "scripts.h"

static void usage_text(FILE *f)
{
    fputs("usage: gotthard-usage (--admin HOST:PORT | --redis URL) [--days N] [--json]\n"
          "Requests, prompt and completion tokens per tenant and UTC day (today first, N days,\n"
          "default 1). --admin asks a gateway's admin listener (GET /usage): with Redis every\n"
          "instance's counts, without it that instance's own. --redis reads the shared store\n"
          "directly (keys gotthard:u:{tenant}:YYYY-MM-DD).\n",
          f);
}

/* GET path from host:port over HTTP/1.0; the body, or NULL. */
static char *http_get(const char *hostport, const char *path)
{
    char host[256];
    const char *colon = strrchr(hostport, ':');
    if (!colon || (size_t)(colon - hostport) >= sizeof(host)) return NULL;
    memcpy(host, hostport, (size_t)(colon - hostport));
    host[colon - hostport] = '\0';
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
    if (getaddrinfo(host, colon + 1, &hints, &ai) != 0) return NULL;
    int fd = socket(ai->ai_family, SOCK_STREAM, 0);
    struct timeval tv = {10, 0};
    if (fd >= 0) {
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    }
    if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
        if (fd >= 0) close(fd);
        freeaddrinfo(ai);
        return NULL;
    }
    freeaddrinfo(ai);
    char req[512];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, hostport);
    if (n < 0 || (size_t)n >= sizeof(req) || write(fd, req, (size_t)n) != n) {
        close(fd);
        return NULL;
    }
    size_t len = 0, cap = 65536;
    char *buf = malloc(cap + 1);
    ssize_t got;
    while (buf && (got = read(fd, buf + len, cap - len)) > 0) {
        len += (size_t)got;
        if (len == cap) {
            char *nb = cap < (64u << 20) ? realloc(buf, 2 * cap + 1) : NULL;
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
    }
    close(fd);
    if (!buf) return NULL;
    buf[len] = '\0';
    char *body = strstr(buf, "\r\n\r\n");
    if (len < 12 || strncmp(buf, "HTTP/1.", 7) != 0 || strncmp(buf + 8, " 200", 4) != 0 || !body) {
        free(buf);
        return NULL;
    }
    memmove(buf, body + 4, strlen(body + 4) + 1);
    return buf;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* The tenant-id alphabet (gateway/config.c's derive_tenants). */
static int is_id_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
}

/* The tenant id of a usage key for day, percent-decoded into id: 0, -1 when the reply is not
 * a key the gateway would write (checked by writing it again with the gateway's own
 * gq_usage_key), -2 when the id is not one a config can hold (1 to 128 of [A-Za-z0-9._-]:
 * Redis's content is not trusted to reach a terminal). Reads only the reply's len bytes. */
static int key_tenant(const redisReply *k, int64_t day, char *id, size_t cap)
{
    static const char prefix[] = "gotthard:u:{";
    const size_t pl = sizeof(prefix) - 1;
    if (k->type != REDIS_REPLY_STRING || !k->str || k->len <= pl || memcmp(k->str, prefix, pl) != 0)
        return -1;
    const char *s = k->str + pl, *end = memchr(s, '}', k->len - pl);
    if (!end) return -1;
    size_t n = (size_t)(end - s), o = 0;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)s[i];
        if (c == '%') {
            if (n - i < 3 || hexval(s[i + 1]) < 0 || hexval(s[i + 2]) < 0) return -1;
            c = hexval(s[i + 1]) * 16 + hexval(s[i + 2]);
            i += 2;
        }
        if (c == 0 || o + 1 >= cap) return -1;
        id[o++] = (char)c;
    }
    id[o] = '\0';
    char again[1024];
    int len = o ? gq_usage_key(again, sizeof(again), id, day) : -1;
    if (len <= 0 || (size_t)len != k->len || memcmp(again, k->str, k->len) != 0) return -1;
    if (o > 128) return -2;
    for (size_t i = 0; i < o; i++)
        if (!is_id_char(id[i])) return -2;
    return 0;
}

/* A counter field of HMGET: nil is 0, else a decimal count. */
static int count_field(const redisReply *f, double *out)
{
    *out = 0;
    if (f->type == REDIS_REPLY_NIL) return 0;
    if (f->type != REDIS_REPLY_STRING || f->len == 0 || f->len > 20) return -1;
    for (size_t i = 0; i < f->len; i++)
        if (f->str[i] < '0' || f->str[i] > '9') return -1;
    *out = strtod(f->str, NULL);
    return 0;
}

/* SCAN's reply: {cursor (a decimal that fits in cursor), array of keys}. */
static int scan_reply_ok(const redisReply *r, char *cursor, size_t cap)
{
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2) return 0;
    const redisReply *c = r->element[0], *keys = r->element[1];
    if (c->type != REDIS_REPLY_STRING || c->len == 0 || c->len >= cap ||
        keys->type != REDIS_REPLY_ARRAY)
        return 0;
    for (size_t i = 0; i < c->len; i++)
        if (c->str[i] < '0' || c->str[i] > '9') return 0;
    memcpy(cursor, c->str, c->len);
    cursor[c->len] = '\0';
    return 1;
}

/* One tenant's counts for the day under key (checked): 0, or -1 with the reason printed. A
 * key SCAN returns again (it may) is counted once. */
static int add_tenant(redisContext *rc, cJSON *tenants, const redisReply *key, int64_t day)
{
    char id[512];
    int got = key_tenant(key, day, id, sizeof(id));
    if (got < 0) {
        fprintf(stderr, "gotthard-usage: %s\n",
                got == -2 ? "a usage key's tenant id is not one a config can hold (1 to 128 "
                            "letters, digits, '-', '_' and '.')"
                          : "SCAN returned something that is not a usage key of that day");
        return -1;
    }
    if (cJSON_GetObjectItemCaseSensitive(tenants, id)) return 0;
    redisReply *h =
        redisCommand(rc, "HMGET %b requests prompt_tokens completion_tokens", key->str, key->len);
    static const char *const f[] = {"requests", "prompt_tokens", "completion_tokens"};
    double v[3];
    int ok = h && h->type == REDIS_REPLY_ARRAY && h->elements == 3;
    for (size_t j = 0; ok && j < 3; j++) ok = count_field(h->element[j], &v[j]) == 0;
    if (!ok)
        fprintf(stderr, "gotthard-usage: HMGET of a usage key: %s\n",
                h ? "unexpected reply (not three counts)" : "no reply");
    freeReplyObject(h);
    if (!ok) return -1;
    cJSON *t = cJSON_AddObjectToObject(tenants, id);
    for (size_t j = 0; t && j < 3; j++) cJSON_AddNumberToObject(t, f[j], v[j]);
    return t ? 0 : -1;
}

/* The same report as GET /usage, from Redis: every tenant that has a key for the day. Every
 * reply's type and length is checked; anything unexpected ends the report with an error. */
enum { SCAN_ROUNDS = 100000 }; /* of COUNT 1000: a hundred million keys */

static cJSON *from_redis(const char *url, int days)
{
    char err[256];
    redisContext *rc = gw_redis_url_connect(url, 5000, err, sizeof(err));
    if (!rc) {
        fprintf(stderr, "gotthard-usage: --redis %s\n", err);
        return NULL;
    }
    cJSON *o = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(o, "days");
    cJSON_AddStringToObject(o, "store", "redis");
    int64_t today = (int64_t)time(NULL) / 86400;
    for (int d = 0; d < days; d++) {
        char date[11], match[64];
        gq_day_string(date, today - d);
        snprintf(match, sizeof(match), "gotthard:u:{*}:%s", date);
        cJSON *day = cJSON_CreateObject(), *tenants = cJSON_AddObjectToObject(day, "tenants");
        cJSON_AddStringToObject(day, "date", date);
        cJSON_AddItemToArray(arr, day);
        char cursor[32] = "0";
        int rounds = 0;
        do {
            redisReply *r = redisCommand(rc, "SCAN %s MATCH %s COUNT 1000", cursor, match);
            if (!scan_reply_ok(r, cursor, sizeof(cursor))) {
                fprintf(stderr, "gotthard-usage: SCAN: %s\n",
                        !r                             ? "no reply"
                        : r->type == REDIS_REPLY_ERROR ? "redis answered with an error"
                                                       : "unexpected reply");
                goto fail_reply;
            }
            for (size_t i = 0; i < r->element[1]->elements; i++)
                if (add_tenant(rc, tenants, r->element[1]->element[i], today - d) < 0)
                    goto fail_reply;
            freeReplyObject(r);
            continue;
        fail_reply:
            freeReplyObject(r);
            redisFree(rc);
            cJSON_Delete(o);
            return NULL;
        } while (strcmp(cursor, "0") != 0 && ++rounds < SCAN_ROUNDS);
        if (strcmp(cursor, "0") != 0) {
            fprintf(stderr,
                    "gotthard-usage: SCAN did not finish in %d rounds; no report (it "
                    "would be partial)\n",
                    SCAN_ROUNDS);
            redisFree(rc);
            cJSON_Delete(o);
            return NULL;
        }
    }
    redisFree(rc);
    return o;
}

/* s for a terminal: the tenant-id alphabet [A-Za-z0-9._-] as it is, every other byte %XX (a
 * name from the admin's JSON may hold anything, escapes included). */
static const char *shown(const char *s, char *buf, size_t cap)
{
    size_t o = 0;
    for (; s && *s && o + 4 < cap; s++) {
        if (is_id_char(*s))
            buf[o++] = *s;
        else
            o += (size_t)snprintf(buf + o, cap - o, "%%%02X", (unsigned char)*s);
    }
    buf[o] = '\0';
    return buf;
}

static void print_table(const cJSON *o)
{
    printf("%-10s  %-24s %12s %16s %18s\n", "date", "tenant", "requests", "prompt_tokens",
           "completion_tokens");
    const cJSON *day;
    cJSON_ArrayForEach(day, cJSON_GetObjectItemCaseSensitive(o, "days"))
    {
        const cJSON *date = cJSON_GetObjectItemCaseSensitive(day, "date"), *t;
        cJSON_ArrayForEach(t, cJSON_GetObjectItemCaseSensitive(day, "tenants"))
        {
            char d[64], name[1600];
            printf("%-10s  %-24s %12.0f %16.0f %18.0f\n",
                   shown(cJSON_IsString(date) ? date->valuestring : "?", d, sizeof(d)),
                   shown(t->string, name, sizeof(name)),
                   cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(t, "requests")),
                   cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(t, "prompt_tokens")),
                   cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(t, "completion_tokens")));
        }
    }
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(o, "error");
    if (!cJSON_IsString(err)) return;
    printf("note: ");
    for (const char *p = err->valuestring; *p; p++) putchar(*p >= 0x20 && *p < 0x7f ? *p : '?');
    putchar('\n');
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"admin", required_argument, NULL, 'a'}, {"redis", required_argument, NULL, 'r'},
        {"days", required_argument, NULL, 'd'},  {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},        {NULL, 0, NULL, 0}};
    const char *admin = NULL, *redis = NULL;
    int days = 1, json = 0, c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'a':
            admin = optarg;
            break;
        case 'r':
            redis = optarg;
            break;
        case 'd':
            days = atoi(optarg);
            break;
        case 'j':
            json = 1;
            break;
        case 'h':
            usage_text(stdout);
            return 0;
        default:
            usage_text(stderr);
            return 2;
        }
    }
    if (optind != argc || !admin == !redis || days < 1 || days > 40) {
        usage_text(stderr);
        return 2;
    }
    cJSON *o = NULL;
    if (admin) {
        char path[64];
        snprintf(path, sizeof(path), "/usage?days=%d", days);
        char *body = http_get(admin, path);
        o = body ? cJSON_Parse(body) : NULL;
        free(body);
        if (!o) fprintf(stderr, "gotthard-usage: no usage report from %s/usage\n", admin);
    } else {
        o = from_redis(redis, days);
    }
    if (!o) return 1;
    if (json) {
        char *s = cJSON_Print(o);
        if (s) puts(s);
        free(s);
    } else {
        print_table(o);
    }
    cJSON_Delete(o);
    return 0;
}
