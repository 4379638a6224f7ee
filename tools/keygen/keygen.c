/* gotthard-keygen: a new API key and the config line holding its SHA-256 digest; or the
 * same key stored in Redis for the gateway's Redis-held keys, and their revocation. */
#include <hiredis/hiredis.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <string.h>

#include "redis_url.h"

#define KEY_BYTES 32

static void usage(FILE *f)
{
    fprintf(f, "usage: gotthard-keygen [--tenant ID] [--id KEY_ID]\n"
               "       gotthard-keygen --redis URL --tenant ID [--id KEY_ID]\n"
               "       gotthard-keygen --redis URL --revoke KEY_ID\n"
               "Prints a new API key (gk_ + 32 random bytes, base64url) on the first line and the\n"
               "entry for the tenant's \"api_keys\" on the second. Only the digest goes in the config.\n"
               "With --redis the key is stored instead as gotthard:apikey:<sha256> {tenant, id}\n"
               "(and gotthard:apikey-id:<id> -> <sha256>), for \"api_keys\": {\"redis\": true};\n"
               "--revoke deletes both, and gateways refuse the key within their cache_ms.\n");
}

static redisContext *redis_open(const char *url)
{
    char err[256];
    redisContext *rc = gw_redis_url_connect(url, 2000, err, sizeof(err));
    if (!rc) fprintf(stderr, "gotthard-keygen: --redis %s\n", err);
    return rc;
}

static int ok_reply(redisReply *r)
{
    int ok = r && r->type != REDIS_REPLY_ERROR;
    freeReplyObject(r);
    return ok;
}

static int revoke(const char *url, const char *id)
{
    redisContext *rc = redis_open(url);
    if (!rc) return 1;
    redisReply *r = redisCommand(rc, "GET gotthard:apikey-id:%s", id);
    int found = r && r->type == REDIS_REPLY_STRING && r->len == 64;
    char hex[65] = "";
    if (found) memcpy(hex, r->str, 65 > r->len ? (size_t)r->len + 1 : 65);
    freeReplyObject(r);
    if (!found) {
        fprintf(stderr, "gotthard-keygen: no key with id %s in redis\n", id);
        redisFree(rc);
        return 1;
    }
    hex[64] = '\0';
    int ok = ok_reply(redisCommand(rc, "DEL gotthard:apikey:%s gotthard:apikey-id:%s", hex, id));
    redisFree(rc);
    if (ok) printf("revoked %s\n", id);
    return ok ? 0 : 1;
}

static int id_ok(const char *s)
{
    if (!*s || strlen(s) > 128) return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '-' || *s == '_' || *s == '.'))
            return 0;
    return 1;
}

int main(int argc, char **argv)
{
    const char *tenant = NULL, *id = NULL, *redis = NULL, *revoke_id = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--tenant") == 0 && i + 1 < argc) tenant = argv[++i];
        else if (strcmp(argv[i], "--id") == 0 && i + 1 < argc) id = argv[++i];
        else if (strcmp(argv[i], "--redis") == 0 && i + 1 < argc) redis = argv[++i];
        else if (strcmp(argv[i], "--revoke") == 0 && i + 1 < argc) revoke_id = argv[++i];
        else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if ((tenant && !id_ok(tenant)) || (id && !id_ok(id)) || (revoke_id && !id_ok(revoke_id))) {
        fprintf(stderr, "gotthard-keygen: ids hold only letters, digits, '-', '_' and '.'\n");
        return 2;
    }
    if (revoke_id) {
        if (!redis) {
            usage(stderr);
            return 2;
        }
        return revoke(redis, revoke_id);
    }
    if (redis && !tenant) {
        fprintf(stderr, "gotthard-keygen: --redis needs --tenant\n");
        return 2;
    }
    unsigned char raw[KEY_BYTES];
    if (RAND_bytes(raw, sizeof(raw)) != 1) {
        fprintf(stderr, "gotthard-keygen: no randomness available\n");
        return 1;
    }
    unsigned char b64[64];
    int n = EVP_EncodeBlock(b64, raw, sizeof(raw));
    char key[80] = "gk_";
    size_t k = 3;
    for (int i = 0; i < n; i++) {
        char ch = (char)b64[i];
        if (ch == '=') break;
        key[k++] = ch == '+' ? '-' : ch == '/' ? '_' : ch;
    }
    key[k] = '\0';
    unsigned char d[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)key, k, d);
    char hex[2 * SHA256_DIGEST_LENGTH + 1];
    for (size_t i = 0; i < sizeof(d); i++) snprintf(hex + 2 * i, 3, "%02x", d[i]);
    char kid[160];
    if (id) snprintf(kid, sizeof(kid), "%s", id);
    else {
        char suffix[9];
        snprintf(suffix, sizeof(suffix), "%.8s", hex);
        snprintf(kid, sizeof(kid), "%s-%s", tenant ? tenant : "key", suffix);
    }
    if (redis) {
        redisContext *rc = redis_open(redis);
        int ok = rc && ok_reply(redisCommand(rc, "HSET gotthard:apikey:%s tenant %s id %s", hex, tenant, kid)) &&
                 ok_reply(redisCommand(rc, "SET gotthard:apikey-id:%s %s", kid, hex));
        if (rc) redisFree(rc);
        if (!ok) {
            fprintf(stderr, "gotthard-keygen: could not store the key in redis\n");
            return 1;
        }
        printf("%s\nstored in redis as %s for tenant %s\n", key, kid, tenant);
    } else {
        printf("%s\n{\"id\": \"%s\", \"sha256\": \"%s\"}\n", key, kid, hex);
    }
    OPENSSL_cleanse(raw, sizeof(raw));
    OPENSSL_cleanse(key, sizeof(key));
    return 0;
}
