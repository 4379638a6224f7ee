/* gotthard-keygen: a new API key and the config line holding its SHA-256 digest; or the
 * same key stored in Redis for the gateway's Redis-held keys, and their revocation. */
#include <hiredis/hiredis.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <string.h>

#include "base/redis_url.h"

#define KEY_BYTES 32
#define ID_MAX 128 /* a key id's and a tenant id's longest, as the gateway's config */

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: gotthard-keygen [--tenant ID] [--id KEY_ID]\n"
        "       gotthard-keygen --redis URL --tenant ID [--id KEY_ID [--replace]]\n"
        "       gotthard-keygen --redis URL --revoke KEY_ID\n"
        "Prints a new API key (gk_ + 32 random bytes, base64url) on the first line and the\n"
        "entry for the tenant's \"api_keys\" on the second. Only the digest goes in the config.\n"
        "With --redis the key is stored instead as gotthard:apikey:<sha256> {tenant, id}\n"
        "(and gotthard:apikey-id:<id> -> <sha256>), for \"api_keys\": {\"redis\": true};\n"
        "--revoke deletes both, and gateways refuse the key within their cache_ms.\n"
        "An id that exists is refused; --replace revokes its key and stores the new one in\n"
        "one step, and only for the tenant that holds the id.\n");
}

static redisContext *redis_open(const char *url)
{
    char err[256];
    redisContext *rc = gw_redis_url_connect(url, 2000, err, sizeof(err));
    if (!rc) fprintf(stderr, "gotthard-keygen: --redis %s\n", err);
    return rc;
}

/* Both scripts run whole or not at all: no other client sees the id and the key half-written,
 * and no two keygens can both take one id. KEYS[1] is gotthard:apikey-id:<id>. */

/* KEYS[2] gotthard:apikey:<new digest>; ARGV tenant, id, new digest, "1" to replace.
 * {0, old digest or ""} stored (the old key deleted), {1, ""} the id exists (no --replace),
 * {2, ""} another tenant holds the id, {3, ""} the new digest exists. */
static const char store_script[] =
    "local old = redis.call('GET', KEYS[1])\n"
    "if old then\n"
    "  if ARGV[4] ~= '1' then return {1, ''} end\n"
    "  local owner = redis.call('HGET', 'gotthard:apikey:' .. old, 'tenant')\n"
    "  if owner and owner ~= ARGV[1] then return {2, ''} end\n"
    "end\n"
    "if redis.call('EXISTS', KEYS[2]) == 1 then return {3, ''} end\n"
    "if old then redis.call('DEL', 'gotthard:apikey:' .. old) end\n"
    "redis.call('HSET', KEYS[2], 'tenant', ARGV[1], 'id', ARGV[2])\n"
    "redis.call('SET', KEYS[1], ARGV[3])\n"
    "return {0, old or ''}\n";

/* -1 no such id, else how many of the two keys were deleted. */
static const char revoke_script[] = "local h = redis.call('GET', KEYS[1])\n"
                                    "if not h then return -1 end\n"
                                    "return redis.call('DEL', 'gotthard:apikey:' .. h, KEYS[1])\n";

/* A reply the scripts never give: say so (the server's own error text is not shown: it is
 * not ours to trust) and fail. */
static int unexpected(const redisContext *rc, const redisReply *r)
{
    if (!r)
        fprintf(stderr, "gotthard-keygen: no reply from redis (%s)\n",
                rc->errstr[0] ? rc->errstr : "closed");
    else if (r->type == REDIS_REPLY_ERROR)
        fprintf(
            stderr,
            "gotthard-keygen: redis answered with an error (scripting disabled, or not redis?)\n");
    else
        fprintf(stderr,
                "gotthard-keygen: unexpected reply from redis (type %d); nothing is known to be "
                "stored\n",
                r->type);
    return 1;
}

static int revoke(const char *url, const char *id)
{
    redisContext *rc = redis_open(url);
    if (!rc) return 1;
    char idkey[192];
    snprintf(idkey, sizeof(idkey), "gotthard:apikey-id:%s", id);
    redisReply *r = redisCommand(rc, "EVAL %s 1 %s", revoke_script, idkey);
    int rc_exit;
    if (!r || r->type != REDIS_REPLY_INTEGER || r->integer < -1 || r->integer > 2) {
        rc_exit = unexpected(rc, r);
    } else if (r->integer == -1) {
        fprintf(stderr, "gotthard-keygen: no key with id %s in redis\n", id);
        rc_exit = 1;
    } else {
        printf("revoked %s\n", id);
        rc_exit = 0;
    }
    freeReplyObject(r);
    redisFree(rc);
    return rc_exit;
}

/* Stores the key's digest under kid for tenant: 0, or 1 with the reason printed. */
static int store(const char *url, const char *tenant, const char *kid, const char *hex, int replace,
                 int *replaced)
{
    redisContext *rc = redis_open(url);
    if (!rc) return 1;
    char idkey[192], hkey[96]; /* kid: at most 159 bytes (main) */
    snprintf(idkey, sizeof(idkey), "gotthard:apikey-id:%s", kid);
    snprintf(hkey, sizeof(hkey), "gotthard:apikey:%s", hex);
    redisReply *r = redisCommand(rc, "EVAL %s 2 %s %s %s %s %s %s", store_script, idkey, hkey,
                                 tenant, kid, hex, replace ? "1" : "0");
    int ret = 1;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_INTEGER || r->element[1]->type != REDIS_REPLY_STRING ||
        (r->element[1]->len != 0 && r->element[1]->len != 64)) {
        ret = unexpected(rc, r);
    } else {
        switch (r->element[0]->integer) {
        case 0:
            *replaced = r->element[1]->len == 64;
            ret = 0;
            break;
        case 1:
            fprintf(stderr,
                    "gotthard-keygen: id %s exists; --replace revokes its key and stores a new "
                    "one (for the same tenant only)\n",
                    kid);
            break;
        case 2:
            fprintf(stderr, "gotthard-keygen: id %s belongs to another tenant; refused\n", kid);
            break;
        case 3:
            fprintf(stderr, "gotthard-keygen: the new key's digest exists already; run again\n");
            break;
        default:
            ret = unexpected(rc, r);
            break;
        }
    }
    freeReplyObject(r);
    redisFree(rc);
    return ret;
}

static int id_ok(const char *s)
{
    if (!*s || strlen(s) > ID_MAX) return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '-' || *s == '_' || *s == '.'))
            return 0;
    return 1;
}

int main(int argc, char **argv)
{
    const char *tenant = NULL, *id = NULL, *redis = NULL, *revoke_id = NULL;
    int replace = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--tenant") == 0 && i + 1 < argc)
            tenant = argv[++i];
        else if (strcmp(argv[i], "--id") == 0 && i + 1 < argc)
            id = argv[++i];
        else if (strcmp(argv[i], "--redis") == 0 && i + 1 < argc)
            redis = argv[++i];
        else if (strcmp(argv[i], "--revoke") == 0 && i + 1 < argc)
            revoke_id = argv[++i];
        else if (strcmp(argv[i], "--replace") == 0)
            replace = 1;
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
    if (replace && (!redis || !id || revoke_id)) {
        fprintf(stderr, "gotthard-keygen: --replace needs --redis, --tenant and --id\n");
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
    if (id)
        snprintf(kid, sizeof(kid), "%s", id);
    else {
        /* <tenant>-<8 hex digits>, the tenant cut so that the id stays within the 128 that
         * --revoke, the config and the gateway's log accept (id_ok). */
        snprintf(kid, sizeof(kid), "%.*s-%.8s", ID_MAX - 9, tenant ? tenant : "key", hex);
    }
    if (redis) {
        int replaced = 0;
        if (store(redis, tenant, kid, hex, replace, &replaced) != 0) {
            OPENSSL_cleanse(raw, sizeof(raw));
            OPENSSL_cleanse(key, sizeof(key));
            return 1;
        }
        printf("%s\nstored in redis as %s for tenant %s%s\n", key, kid, tenant,
               replaced ? " (replaced: the old key is revoked)" : "");
    } else {
        printf("%s\n{\"id\": \"%s\", \"sha256\": \"%s\"}\n", key, kid, hex);
    }
    OPENSSL_cleanse(raw, sizeof(raw));
    OPENSSL_cleanse(key, sizeof(key));
    return 0;
}
