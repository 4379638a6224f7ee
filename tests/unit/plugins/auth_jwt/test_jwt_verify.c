/* Unit tests of plugins/auth_jwt/jwt_verify.c: keys and tokens made here, every acceptance and
 * rejection, with an injected clock. */
#include "check.h"
#include "base/http.h"
#include "jwt_verify.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#define NOW 1700000000L

static char dir[64];

/* ------------------------------------------------------------------ helpers */

static char *b64url(const unsigned char *p, size_t n)
{
    static const char al[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    char *o = malloc(n * 4 / 3 + 4), *q = o;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        unsigned v = (unsigned)p[i] << 16 | (unsigned)p[i + 1] << 8 | p[i + 2];
        *q++ = al[v >> 18];
        *q++ = al[(v >> 12) & 63];
        *q++ = al[(v >> 6) & 63];
        *q++ = al[v & 63];
    }
    if (n - i == 1) {
        unsigned v = (unsigned)p[i] << 16;
        *q++ = al[v >> 18];
        *q++ = al[(v >> 12) & 63];
    } else if (n - i == 2) {
        unsigned v = (unsigned)p[i] << 16 | (unsigned)p[i + 1] << 8;
        *q++ = al[v >> 18];
        *q++ = al[(v >> 12) & 63];
        *q++ = al[(v >> 6) & 63];
    }
    *q = 0;
    return o;
}

static char *b64s(const char *s)
{
    return b64url((const unsigned char *)s, strlen(s));
}

typedef struct {
    enum { S_NONE, S_HMAC, S_RSA, S_EC } kind;
    const EVP_MD *md;
    EVP_PKEY *pk;
    const unsigned char *sec;
    size_t sec_len;
    int ec_bytes;
} signer_t;

/* The signature of `in` with s, base64url-encoded (empty for S_NONE). */
static char *sign(const signer_t *s, const char *in)
{
    unsigned char out[1024];
    size_t n = 0;
    if (s->kind == S_HMAC) {
        unsigned int l = 0;
        HMAC(s->md, s->sec, (int)s->sec_len, (const unsigned char *)in, strlen(in), out, &l);
        n = l;
    } else if (s->kind == S_RSA || s->kind == S_EC) {
        EVP_MD_CTX *m = EVP_MD_CTX_new();
        unsigned char der[1024];
        size_t dl = sizeof(der);
        if (EVP_DigestSignInit(m, NULL, s->md, NULL, s->pk) != 1 ||
            EVP_DigestSign(m, der, &dl, (const unsigned char *)in, strlen(in)) != 1) {
            fprintf(stderr, "signing failed\n");
            exit(2);
        }
        EVP_MD_CTX_free(m);
        if (s->kind == S_RSA) {
            memcpy(out, der, dl);
            n = dl;
        } else {
            const unsigned char *p = der;
            ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)dl);
            const BIGNUM *r, *sv;
            ECDSA_SIG_get0(es, &r, &sv);
            BN_bn2binpad(r, out, s->ec_bytes);
            BN_bn2binpad(sv, out + s->ec_bytes, s->ec_bytes);
            n = (size_t)s->ec_bytes * 2;
            ECDSA_SIG_free(es);
        }
    }
    return b64url(out, n);
}

/* header.payload.signature, every part given as JSON text. */
static char *token(const char *header, const char *payload, const signer_t *s)
{
    char *h = b64s(header), *p = b64s(payload);
    size_t n = strlen(h) + strlen(p) + 2;
    char *in = malloc(n);
    snprintf(in, n, "%s.%s", h, p);
    char *sig = s ? sign(s, in) : strdup("");
    char *t = malloc(n + strlen(sig) + 1);
    sprintf(t, "%s.%s", in, sig);
    free(h);
    free(p);
    free(in);
    free(sig);
    return t;
}

static char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static char *fmt(const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    char *s = NULL;
    if (vasprintf(&s, f, ap) < 0) exit(2);
    va_end(ap);
    return s;
}

static char *write_file(const char *name, const void *data, size_t n)
{
    char *path = fmt("%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    fwrite(data, 1, n, f);
    fclose(f);
    return path;
}

static char *write_pubkey(const char *name, EVP_PKEY *k)
{
    char *path = fmt("%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    PEM_write_PUBKEY(f, k);
    fclose(f);
    return path;
}

static unsigned char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    unsigned char *b = malloc(65536);
    *n = fread(b, 1, 65536, f);
    fclose(f);
    return b;
}

/* Config errors collected as "path: msg\n". */
static char errbuf[8192];
static void collect(void *arg, const char *path, const char *msg)
{
    (void)arg;
    size_t l = strlen(errbuf);
    snprintf(errbuf + l, sizeof(errbuf) - l, "%s: %s\n", path, msg);
}

static gwjwt_conf_t *conf_of(const char *json)
{
    cJSON *j = cJSON_Parse(json);
    if (!j) {
        fprintf(stderr, "bad test JSON: %s\n", json);
        exit(2);
    }
    errbuf[0] = 0;
    gwjwt_conf_t *c = NULL;
    int rc = gwjwt_conf_parse(j, "$.jwt", collect, NULL, &c);
    cJSON_Delete(j);
    if (rc < 0) return NULL;
    return c;
}

/* ------------------------------------------------------------------ fixtures */

static EVP_PKEY *rsa, *rsa2, *ec256, *ec384, *rsa1024;
static char *rsa_pub, *rsa2_pub, *ec256_pub, *ec384_pub, *rsa1024_pub, *priv_pem;
static const unsigned char secret[] = "0123456789abcdef0123456789abcdef-hmac-secret!";
static char *secret_path, *short_path, *text_secret_path, *garbage_path;

#define ISS "https://idp.example.ch"
#define AUD "gotthard"

static char *claims(long exp_off, const char *extra)
{
    return fmt("{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":%ld,\"tenant\":\"acme\"%s%s}",
               NOW + exp_off, extra && *extra ? "," : "", extra ? extra : "");
}

static gwjwt_conf_t *one(const char *alg, const char *key_file, int leeway)
{
    char *j = fmt("[{\"issuer\":\"" ISS "\",\"audience\":\"" AUD "\",\"algorithm\":\"%s\","
                  "\"key_file\":\"%s\",\"tenant_claim\":\"tenant\",\"leeway_s\":%d}]",
                  alg, key_file, leeway);
    gwjwt_conf_t *c = conf_of(j);
    if (!c) fprintf(stderr, "config failed: %s\n%s", j, errbuf);
    free(j);
    return c;
}

static int verify(const gwjwt_conf_t *c, const char *t, long now)
{
    gwjwt_result_t r;
    int rc = gwjwt_verify(c, t, strlen(t), (time_t)now, &r);
    gwjwt_result_free(&r);
    return rc;
}

/* ------------------------------------------------------------------ tests */

static void test_accept_each_algorithm(void)
{
    struct {
        const char *alg;
        const char *key;
        signer_t s;
    } cases[] = {
        {"RS256", rsa_pub, {S_RSA, EVP_sha256(), rsa, NULL, 0, 0}},
        {"RS384", rsa_pub, {S_RSA, EVP_sha384(), rsa, NULL, 0, 0}},
        {"RS512", rsa_pub, {S_RSA, EVP_sha512(), rsa, NULL, 0, 0}},
        {"ES256", ec256_pub, {S_EC, EVP_sha256(), ec256, NULL, 0, 32}},
        {"ES384", ec384_pub, {S_EC, EVP_sha384(), ec384, NULL, 0, 48}},
        {"HS256", secret_path, {S_HMAC, EVP_sha256(), NULL, secret, sizeof(secret) - 1, 0}},
        {"HS384", secret_path, {S_HMAC, EVP_sha384(), NULL, secret, sizeof(secret) - 1, 0}},
        {"HS512", secret_path, {S_HMAC, EVP_sha512(), NULL, secret, sizeof(secret) - 1, 0}},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        gwjwt_conf_t *c = one(cases[i].alg, cases[i].key, 30);
        CHECK(c != NULL, "%s config", cases[i].alg);
        if (!c) continue;
        char *cl = claims(600, "\"iat\":1699999990,\"nbf\":1699999990");
        char *hd = fmt("{\"alg\":\"%s\",\"typ\":\"JWT\"}", cases[i].alg);
        char *t = token(hd, cl, &cases[i].s);
        gwjwt_result_t r;
        int rc = gwjwt_verify(c, t, strlen(t), NOW, &r);
        CHECK(rc == GWJWT_OK, "%s accepted: rc %d", cases[i].alg, rc);
        CHECK(rc == 0 && r.tenant && strcmp(r.tenant, "acme") == 0, "%s tenant", cases[i].alg);
        CHECK(r.issuer == 0 && !r.has_models, "%s issuer/models", cases[i].alg);
        gwjwt_result_free(&r);
        /* Headers that would fetch keys are ignored: still accepted, nothing fetched. */
        char *hd2 = fmt("{\"alg\":\"%s\",\"kid\":\"k1\",\"jku\":\"http://127.0.0.1:1/jwks\","
                        "\"x5u\":\"http://127.0.0.1:1/x\",\"x5c\":[\"MIIB\"],"
                        "\"jwk\":{\"kty\":\"oct\",\"k\":\"AAAA\"}}",
                        cases[i].alg);
        char *t2 = token(hd2, cl, &cases[i].s);
        CHECK(verify(c, t2, NOW) == GWJWT_OK, "%s with jku/x5u/x5c/jwk/kid", cases[i].alg);
        /* The signature of another key of the same kind fails. */
        if (cases[i].s.kind == S_RSA) {
            signer_t o = cases[i].s;
            o.pk = rsa2;
            char *t3 = token(hd, cl, &o);
            CHECK(verify(c, t3, NOW) == GWJWT_E_SIGNATURE, "%s other key", cases[i].alg);
            free(t3);
        }
        if (cases[i].s.kind == S_HMAC) {
            signer_t o = cases[i].s;
            o.sec = (const unsigned char *)"another-secret-another-secret-another!";
            o.sec_len = 37;
            char *t3 = token(hd, cl, &o);
            CHECK(verify(c, t3, NOW) == GWJWT_E_SIGNATURE, "%s other secret", cases[i].alg);
            free(t3);
        }
        /* A flipped signature byte fails (change a middle char of the last segment). */
        size_t n = strlen(t);
        t[n - 10] = t[n - 10] == 'A' ? 'B' : 'A';
        CHECK(verify(c, t, NOW) == GWJWT_E_SIGNATURE, "%s flipped signature", cases[i].alg);
        /* A truncated signature fails. */
        t[n - 4] = 0;
        CHECK(verify(c, t, NOW) < 0, "%s truncated signature", cases[i].alg);
        free(t);
        free(t2);
        free(hd);
        free(hd2);
        free(cl);
        gwjwt_conf_free(c);
    }
}

static void test_alg_none_and_confusion(void)
{
    gwjwt_conf_t *c = one("RS256", rsa_pub, 30);
    char *cl = claims(600, NULL);
    signer_t rs = {S_RSA, EVP_sha256(), rsa, NULL, 0, 0};
    const char *nones[] = {"none", "None", "NONE", "nOnE", "NoNe", "none "};
    for (size_t i = 0; i < sizeof(nones) / sizeof(nones[0]); i++) {
        char *h = fmt("{\"alg\":\"%s\",\"typ\":\"JWT\"}", nones[i]);
        char *t = token(h, cl, NULL); /* empty signature */
        CHECK(verify(c, t, NOW) < 0, "alg %s, empty signature", nones[i]);
        char *t2 = token(h, cl, &rs); /* even with a valid RS256 signature */
        CHECK(verify(c, t2, NOW) == GWJWT_E_ALG, "alg %s, signed", nones[i]);
        free(h);
        free(t);
        free(t2);
    }
    /* Missing alg, alg not a string, alg in another case, other algorithms. */
    const char *hdrs[] = {"{\"typ\":\"JWT\"}",
                          "{\"alg\":null}",
                          "{\"alg\":256}",
                          "{\"alg\":[\"RS256\"]}",
                          "{\"alg\":\"rs256\"}",
                          "{\"alg\":\"RS384\"}",
                          "{\"alg\":\"RS512\"}",
                          "{\"alg\":\"PS256\"}",
                          "{\"alg\":\"ES256\"}",
                          "{\"alg\":\"HS256\"}",
                          "{\"alg\":\"RS256\\u0020\"}",
                          "{\"alg\":\"\"}"};
    for (size_t i = 0; i < sizeof(hdrs) / sizeof(hdrs[0]); i++) {
        char *t = token(hdrs[i], cl, &rs);
        CHECK(verify(c, t, NOW) == GWJWT_E_ALG, "header %s", hdrs[i]);
        free(t);
    }
    /* The attack: HS256 with the RSA public key PEM bytes as the HMAC secret. */
    size_t pn;
    unsigned char *pem = slurp(rsa_pub, &pn);
    signer_t confused = {S_HMAC, EVP_sha256(), NULL, pem, pn, 0};
    char *t = token("{\"alg\":\"HS256\",\"typ\":\"JWT\"}", cl, &confused);
    CHECK(verify(c, t, NOW) == GWJWT_E_ALG, "HS256 signed with the RSA public key");
    free(t);
    /* Same with the PEM minus its final newline, and with HS384/HS512. */
    signer_t confused2 = {S_HMAC, EVP_sha256(), NULL, pem, pn - 1, 0};
    t = token("{\"alg\":\"HS256\"}", cl, &confused2);
    CHECK(verify(c, t, NOW) == GWJWT_E_ALG, "HS256 signed with the PEM without newline");
    free(t);
    signer_t confused3 = {S_HMAC, EVP_sha512(), NULL, pem, pn, 0};
    t = token("{\"alg\":\"HS512\"}", cl, &confused3);
    CHECK(verify(c, t, NOW) == GWJWT_E_ALG, "HS512 signed with the RSA public key");
    free(t);
    /* Duplicate alg keys (parsers disagree on which wins): refused as malformed. */
    t = token("{\"alg\":\"RS256\",\"alg\":\"HS256\"}", cl, &confused);
    CHECK(verify(c, t, NOW) == GWJWT_E_MALFORMED, "duplicate alg");
    free(t);
    t = token("{\"alg\":\"HS256\",\"alg\":\"RS256\"}", cl, &confused);
    CHECK(verify(c, t, NOW) == GWJWT_E_MALFORMED, "duplicate alg, other order");
    free(t);
    /* crit extensions are not understood. */
    t = token("{\"alg\":\"RS256\",\"crit\":[\"b64\"],\"b64\":false}", cl, &rs);
    CHECK(verify(c, t, NOW) == GWJWT_E_MALFORMED, "crit header");
    free(t);
    /* An ES256 configuration refuses an RS256 token, and an HS256 one its ES256 public key. */
    gwjwt_conf_t *ce = one("ES256", ec256_pub, 30);
    t = token("{\"alg\":\"RS256\"}", cl, &rs);
    CHECK(verify(ce, t, NOW) == GWJWT_E_ALG, "RS256 token, ES256 config");
    free(t);
    size_t en;
    unsigned char *epem = slurp(ec256_pub, &en);
    signer_t confused4 = {S_HMAC, EVP_sha256(), NULL, epem, en, 0};
    t = token("{\"alg\":\"HS256\"}", cl, &confused4);
    CHECK(verify(ce, t, NOW) == GWJWT_E_ALG, "HS256 signed with the EC public key");
    free(t);
    /* An HS256 config refuses HS384 and RS256 tokens. */
    gwjwt_conf_t *ch = one("HS256", secret_path, 30);
    signer_t h384 = {S_HMAC, EVP_sha384(), NULL, secret, sizeof(secret) - 1, 0};
    t = token("{\"alg\":\"HS384\"}", cl, &h384);
    CHECK(verify(ch, t, NOW) == GWJWT_E_ALG, "HS384 token, HS256 config");
    free(t);
    t = token("{\"alg\":\"RS256\"}", cl, &rs);
    CHECK(verify(ch, t, NOW) == GWJWT_E_ALG, "RS256 token, HS256 config");
    free(t);
    free(pem);
    free(epem);
    free(cl);
    gwjwt_conf_free(c);
    gwjwt_conf_free(ce);
    gwjwt_conf_free(ch);
}

static void test_malformed(void)
{
    gwjwt_conf_t *c = one("HS256", secret_path, 30);
    signer_t hs = {S_HMAC, EVP_sha256(), NULL, secret, sizeof(secret) - 1, 0};
    char *cl = claims(600, NULL);
    char *good = token("{\"alg\":\"HS256\"}", cl, &hs);
    CHECK(verify(c, good, NOW) == GWJWT_OK, "the good token");
    char *dot1 = strchr(good, '.'), *dot2 = strchr(dot1 + 1, '.');
    char *h = strndup(good, (size_t)(dot1 - good));
    char *p = strndup(dot1 + 1, (size_t)(dot2 - dot1 - 1));
    char *s = strdup(dot2 + 1);
    char *cases[] = {
        fmt("%s.%s", h, p),             /* two segments */
        fmt("%s.%s.%s.%s", h, p, s, s), /* four */
        fmt("%s.%s.%s.", h, p, s),      /* four, the last empty */
        fmt("%s.%s.", h, p),            /* empty signature */
        fmt(".%s.%s", p, s),            /* empty header */
        fmt("%s..%s", h, s),            /* empty payload */
        strdup(".."),
        strdup(""),
        strdup("."),
        fmt("%s=.%s.%s", h, p, s), /* padding */
        fmt("%s.%s==.%s", h, p, s),
        fmt("%s.%s.%s=", h, p, s),
        fmt("%s+.%s.%s", h, p, s), /* base64, not base64url */
        fmt("%s.%s/.%s", h, p, s),
        fmt("%s.%s.%s ", h, p, s), /* whitespace */
        fmt(" %s.%s.%s", h, p, s),
        fmt("%s.%s.%s\n", h, p, s),
        fmt("%sA.%s.%s", h, p, s), /* length 4n+1: impossible */
        fmt("%s.%s.%s!", h, p, s),
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        CHECK(verify(c, cases[i], NOW) == GWJWT_E_MALFORMED, "case %zu: %s", i, cases[i]);
        free(cases[i]);
    }
    /* A NUL byte inside the token (length given explicitly). */
    size_t gl = strlen(good);
    char *withnul = malloc(gl + 1);
    memcpy(withnul, good, gl);
    withnul[gl - 5] = 0;
    gwjwt_result_t r;
    CHECK(gwjwt_verify(c, withnul, gl, NOW, &r) == GWJWT_E_MALFORMED, "NUL inside");
    free(withnul);
    /* Non-canonical base64url: "eyJ" ... with the unused bits of the last char set. */
    {
        char *hb = b64s("{\"alg\":\"HS256\"}"); /* 15 bytes → 20 chars, no spare bits */
        char *pb = b64s("{\"a\":1}");           /* 7 bytes → 10 chars, 4 spare bits */
        size_t pl = strlen(pb);
        char last = pb[pl - 1];
        pb[pl - 1] = (char)(last == 'Q' ? 'R' : last + 1); /* same byte, other low bits */
        char *t = fmt("%s.%s.%s", hb, pb, s);
        CHECK(verify(c, t, NOW) == GWJWT_E_MALFORMED, "non-canonical base64url");
        free(t);
        free(hb);
        free(pb);
    }
    /* Header or payload not a JSON object. */
    const char *notobj[] = {"[]",
                            "\"x\"",
                            "1",
                            "null",
                            "true",
                            "{",
                            "{\"alg\":\"HS256\"} x",
                            "{\"alg\":\"HS256\"}{}",
                            "",
                            "{\"alg\":\"HS256\",}",
                            "\xff"};
    for (size_t i = 0; i < sizeof(notobj) / sizeof(notobj[0]); i++) {
        char *t = token(notobj[i], cl, &hs);
        CHECK(verify(c, t, NOW) == GWJWT_E_MALFORMED, "header %s", notobj[i]);
        free(t);
        t = token("{\"alg\":\"HS256\"}", notobj[i], &hs);
        CHECK(verify(c, t, NOW) == GWJWT_E_MALFORMED, "payload %s", notobj[i]);
        free(t);
    }
    /* Whitespace around the JSON object is allowed. */
    char *t = token(" {\"alg\":\"HS256\"}\n", cl, &hs);
    CHECK(verify(c, t, NOW) == GWJWT_OK, "whitespace around the header");
    free(t);
    /* \u0000 in a claim and duplicate claims are refused. */
    char *cl0 = claims(600, "\"x\":\"a\\u0000b\"");
    t = token("{\"alg\":\"HS256\"}", cl0, &hs);
    CHECK(verify(c, t, NOW) == GWJWT_E_MALFORMED, "\\u0000 in a claim");
    free(t);
    free(cl0);
    char *cld = claims(600, "\"tenant\":\"other\"");
    t = token("{\"alg\":\"HS256\"}", cld, &hs);
    CHECK(verify(c, t, NOW) == GWJWT_E_MALFORMED, "duplicate tenant claim");
    free(t);
    free(cld);
    /* Oversized: grow a padding claim until the token passes 8 KiB. */
    size_t best_ok = 0, first_bad = 0;
    for (size_t pad = 5900; pad < 6300; pad++) {
        char *padding = malloc(pad + 1);
        memset(padding, 'x', pad);
        padding[pad] = 0;
        char *extra = fmt("\"pad\":\"%s\"", padding);
        char *clp = claims(600, extra);
        char *tp = token("{\"alg\":\"HS256\"}", clp, &hs);
        size_t tl = strlen(tp);
        int rc = verify(c, tp, NOW);
        if (tl <= GWJWT_MAX_TOKEN) {
            CHECK(rc == GWJWT_OK, "a %zu-byte token is accepted: %d", tl, rc);
            if (tl > best_ok) best_ok = tl;
        } else {
            CHECK(rc == GWJWT_E_MALFORMED, "a %zu-byte token is refused: %d", tl, rc);
            if (!first_bad) first_bad = tl;
        }
        free(padding);
        free(extra);
        free(clp);
        free(tp);
    }
    CHECK(best_ok > 8180 && first_bad > 8192, "size boundary covered (%zu, %zu)", best_ok,
          first_bad);
    /* The header is parsed before the signature is checked: it is kept small. */
    {
        char hpad[2100];
        memset(hpad, 'k', sizeof(hpad) - 1);
        hpad[sizeof(hpad) - 1] = 0;
        char *hb = fmt("{\"alg\":\"HS256\",\"x\":\"%.*s\"}", 2048 - 22, hpad);
        CHECK(strlen(hb) == 2048, "header of 2048 bytes: %zu", strlen(hb));
        t = token(hb, cl, &hs);
        CHECK(verify(c, t, NOW) == GWJWT_OK, "a 2048-byte header is accepted");
        free(t);
        free(hb);
        hb = fmt("{\"alg\":\"HS256\",\"x\":\"%.*s\"}", 2049 - 22, hpad);
        t = token(hb, cl, &hs);
        CHECK(verify(c, t, NOW) == GWJWT_E_MALFORMED, "a 2049-byte header is refused");
        free(t);
        free(hb);
    }
    /* Before the signature verifies, the payload is not even parsed. */
    {
        signer_t other = {S_HMAC, EVP_sha256(),
                          NULL,   (const unsigned char *)"not-the-secret-not-the-secret-not-the",
                          37,     0};
        const char *payloads[] = {"[]", "{", "{\"iss\":\"https://evil.example\"}", "\xff"};
        for (size_t i = 0; i < sizeof(payloads) / sizeof(payloads[0]); i++) {
            t = token("{\"alg\":\"HS256\"}", payloads[i], &other);
            CHECK(verify(c, t, NOW) == GWJWT_E_SIGNATURE, "unsigned payload %s", payloads[i]);
            free(t);
        }
    }
    /* Numbers JSON can hold but a date cannot: refused (libjwt's parser refuses them too). */
    {
        char *cl9 =
            fmt("{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"tenant\":\"acme\",\"exp\":1e999}");
        t = token("{\"alg\":\"HS256\"}", cl9, &hs);
        CHECK(verify(c, t, NOW) < 0, "exp 1e999");
        free(t);
        free(cl9);
    }
    /* A huge input is refused without reading it all. */
    char *huge = malloc(1 << 20);
    memset(huge, 'A', 1 << 20);
    CHECK(gwjwt_verify(c, huge, 1 << 20, NOW, &r) == GWJWT_E_MALFORMED, "1 MiB");
    free(huge);
    free(good);
    free(h);
    free(p);
    free(s);
    free(cl);
    gwjwt_conf_free(c);
}

static void test_time_claims(void)
{
    signer_t hs = {S_HMAC, EVP_sha256(), NULL, secret, sizeof(secret) - 1, 0};
    for (int lw = 0; lw <= 300; lw += 30) {
        if (lw != 0 && lw != 30 && lw != 300) continue;
        gwjwt_conf_t *c = one("HS256", secret_path, lw);
        char *cl = claims(0, NULL); /* exp = NOW */
        char *t = token("{\"alg\":\"HS256\"}", cl, &hs);
        CHECK(verify(c, t, NOW + lw) == GWJWT_OK, "lw %d: now = exp + leeway accepted", lw);
        CHECK(verify(c, t, NOW + lw + 1) == GWJWT_E_EXPIRED, "lw %d: exp + leeway + 1", lw);
        CHECK(verify(c, t, NOW - 1000) == GWJWT_OK, "lw %d: long before exp", lw);
        free(t);
        free(cl);

        char *nbf = fmt("\"nbf\":%ld", NOW + lw);
        cl = claims(600, nbf);
        t = token("{\"alg\":\"HS256\"}", cl, &hs);
        CHECK(verify(c, t, NOW) == GWJWT_OK, "lw %d: now + leeway = nbf accepted", lw);
        CHECK(verify(c, t, NOW - 1) == GWJWT_E_NOT_YET_VALID, "lw %d: now + leeway < nbf", lw);
        free(t);
        free(cl);
        free(nbf);

        char *iat = fmt("\"iat\":%ld", NOW + lw);
        cl = claims(600, iat);
        t = token("{\"alg\":\"HS256\"}", cl, &hs);
        CHECK(verify(c, t, NOW) == GWJWT_OK, "lw %d: iat = now + leeway accepted", lw);
        CHECK(verify(c, t, NOW - 1) == GWJWT_E_ISSUED_FUTURE, "lw %d: iat > now + leeway", lw);
        free(t);
        free(cl);
        free(iat);
        gwjwt_conf_free(c);
    }
    gwjwt_conf_t *c = one("HS256", secret_path, 30);
    struct {
        const char *payload;
        int want;
    } cases[] = {
        {"{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"tenant\":\"acme\"}", GWJWT_E_NO_EXP},
        {"{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"tenant\":\"acme\",\"exp\":\"1700000600\"}",
         GWJWT_E_NO_EXP},
        {"{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"tenant\":\"acme\",\"exp\":null}",
         GWJWT_E_NO_EXP},
        {"{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"tenant\":\"acme\",\"exp\":1700000600.5}",
         GWJWT_OK},
        {"{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"tenant\":\"acme\",\"exp\":1e300}", GWJWT_OK},
        {"{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"tenant\":\"acme\",\"exp\":-1e300}",
         GWJWT_E_EXPIRED},
        {"{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"tenant\":\"acme\",\"exp\":1700000600,"
         "\"nbf\":\"0\"}",
         GWJWT_E_CLAIM_TYPE},
        {"{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"tenant\":\"acme\",\"exp\":1700000600,"
         "\"iat\":true}",
         GWJWT_E_CLAIM_TYPE},
        {"{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"tenant\":\"acme\",\"exp\":1700000600,"
         "\"nbf\":-1e300,\"iat\":-1e300}",
         GWJWT_OK},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *t = token("{\"alg\":\"HS256\"}", cases[i].payload, &hs);
        int rc = verify(c, t, NOW);
        CHECK(rc == cases[i].want, "%s: %d, want %d", cases[i].payload, rc, cases[i].want);
        free(t);
    }
    gwjwt_conf_free(c);
}

static void test_iss_aud_tenant_models(void)
{
    signer_t hs = {S_HMAC, EVP_sha256(), NULL, secret, sizeof(secret) - 1, 0};
    gwjwt_conf_t *c = one("HS256", secret_path, 30);
#define BASE "\"exp\":1700000600,\"tenant\":\"acme\""
    struct {
        const char *payload;
        int want;
    } cases[] = {
        {"{" BASE ",\"aud\":\"" AUD "\"}", GWJWT_E_ISSUER},
        {"{" BASE ",\"aud\":\"" AUD "\",\"iss\":\"https://idp.example.ch/\"}", GWJWT_E_ISSUER},
        {"{" BASE ",\"aud\":\"" AUD "\",\"iss\":\"HTTPS://IDP.EXAMPLE.CH\"}", GWJWT_E_ISSUER},
        {"{" BASE ",\"aud\":\"" AUD "\",\"iss\":\"https://evil.example\"}", GWJWT_E_ISSUER},
        {"{" BASE ",\"aud\":\"" AUD "\",\"iss\":[\"" ISS "\"]}", GWJWT_E_ISSUER},
        {"{" BASE ",\"aud\":\"" AUD "\",\"iss\":\"\"}", GWJWT_E_ISSUER},
        {"{" BASE ",\"iss\":\"" ISS "\"}", GWJWT_E_AUDIENCE},
        {"{" BASE ",\"iss\":\"" ISS "\",\"aud\":\"gotthard2\"}", GWJWT_E_AUDIENCE},
        {"{" BASE ",\"iss\":\"" ISS "\",\"aud\":\"Gotthard\"}", GWJWT_E_AUDIENCE},
        {"{" BASE ",\"iss\":\"" ISS "\",\"aud\":[\"a\",\"b\"]}", GWJWT_E_AUDIENCE},
        {"{" BASE ",\"iss\":\"" ISS "\",\"aud\":[]}", GWJWT_E_AUDIENCE},
        {"{" BASE ",\"iss\":\"" ISS "\",\"aud\":[[\"" AUD "\"]]}", GWJWT_E_AUDIENCE},
        {"{" BASE ",\"iss\":\"" ISS "\",\"aud\":{\"x\":\"" AUD "\"}}", GWJWT_E_AUDIENCE},
        {"{" BASE ",\"iss\":\"" ISS "\",\"aud\":1}", GWJWT_E_AUDIENCE},
        {"{" BASE ",\"iss\":\"" ISS "\",\"aud\":[\"a\",\"" AUD "\"]}", GWJWT_OK},
        {"{" BASE ",\"iss\":\"" ISS "\",\"aud\":[1,null,\"" AUD "\"]}", GWJWT_OK},
        {"{\"exp\":1700000600,\"iss\":\"" ISS "\",\"aud\":\"" AUD "\"}", GWJWT_E_TENANT},
        {"{\"exp\":1700000600,\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"tenant\":\"\"}",
         GWJWT_E_TENANT},
        {"{\"exp\":1700000600,\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"tenant\":7}",
         GWJWT_E_TENANT},
        {"{\"exp\":1700000600,\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"tenant\":[\"acme\"]}",
         GWJWT_E_TENANT},
        {"{\"exp\":1700000600,\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"Tenant\":\"acme\"}",
         GWJWT_E_TENANT},
        {"{" BASE ",\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"models\":\"m1\"}",
         GWJWT_E_CLAIM_TYPE},
        {"{" BASE ",\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"models\":[\"m1\",2]}",
         GWJWT_E_CLAIM_TYPE},
        {"{" BASE ",\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"models\":[\"\"]}",
         GWJWT_E_CLAIM_TYPE},
        {"{" BASE ",\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"models\":null}", GWJWT_E_CLAIM_TYPE},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *t = token("{\"alg\":\"HS256\"}", cases[i].payload, &hs);
        int rc = verify(c, t, NOW);
        CHECK(rc == cases[i].want, "%s: %d, want %d", cases[i].payload, rc, cases[i].want);
        free(t);
    }
    /* A tenant claim over the limit. */
    char big[GWJWT_MAX_TENANT + 2];
    memset(big, 't', sizeof(big) - 1);
    big[sizeof(big) - 1] = 0;
    char *pl =
        fmt("{\"exp\":1700000600,\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"tenant\":\"%s\"}", big);
    char *t = token("{\"alg\":\"HS256\"}", pl, &hs);
    CHECK(verify(c, t, NOW) == GWJWT_E_TENANT, "long tenant");
    free(t);
    free(pl);
    /* models: absent, empty, several. */
    gwjwt_result_t r;
    char *cl = claims(600, "\"models\":[\"m1\",\"llama-3-8b\"]");
    t = token("{\"alg\":\"HS256\"}", cl, &hs);
    CHECK(gwjwt_verify(c, t, strlen(t), NOW, &r) == GWJWT_OK, "models claim");
    CHECK(r.has_models && r.n_models == 2 && strcmp(r.models[0], "m1") == 0 &&
              strcmp(r.models[1], "llama-3-8b") == 0,
          "models parsed");
    gwjwt_result_free(&r);
    CHECK(r.models == NULL && r.tenant == NULL, "result freed and cleared");
    free(t);
    free(cl);
    cl = claims(600, "\"models\":[]");
    t = token("{\"alg\":\"HS256\"}", cl, &hs);
    CHECK(gwjwt_verify(c, t, strlen(t), NOW, &r) == GWJWT_OK && r.has_models && r.n_models == 0,
          "empty models claim narrows to nothing");
    gwjwt_result_free(&r);
    free(t);
    free(cl);
    /* Custom tenant claim name. */
    char *j = fmt("[{\"issuer\":\"" ISS "\",\"audience\":\"" AUD "\",\"algorithm\":\"HS256\","
                  "\"key_file\":\"%s\",\"tenant_claim\":\"https://gotthard/tenant\"}]",
                  secret_path);
    gwjwt_conf_t *c2 = conf_of(j);
    CHECK(c2 && c2->issuers[0].leeway_s == 30, "default leeway 30");
    t = token("{\"alg\":\"HS256\"}",
              "{\"exp\":1700000600,\"iss\":\"" ISS "\",\"aud\":\"" AUD "\","
              "\"https://gotthard/tenant\":\"globex\",\"tenant\":\"acme\"}",
              &hs);
    CHECK(gwjwt_verify(c2, t, strlen(t), NOW, &r) == GWJWT_OK && strcmp(r.tenant, "globex") == 0,
          "namespaced tenant claim");
    gwjwt_result_free(&r);
    free(t);
    free(j);
    gwjwt_conf_free(c2);
    gwjwt_conf_free(c);
}

static int conf_fails(const char *json, const char *want_path);

static void test_several_issuers(void)
{
    char *j =
        fmt("[{\"issuer\":\"https://a.example\",\"audience\":\"gw-a\",\"algorithm\":\"RS256\","
            "\"key_file\":\"%s\",\"tenant_claim\":\"tenant\",\"tenants\":[\"acme\",\"initech\"]},"
            "{\"issuer\":\"https://b.example\",\"audience\":\"gw-b\",\"algorithm\":\"ES256\","
            "\"key_file\":\"%s\",\"tenant_claim\":\"org\",\"tenants\":[\"globex\"]},"
            "{\"issuer\":\"https://c.example\",\"audience\":\"gw-c\",\"algorithm\":\"RS256\","
            "\"key_file\":\"%s\",\"tenant_claim\":\"tenant\",\"tenants\":[\"acme\"]}]",
            rsa_pub, ec256_pub, rsa2_pub);
    gwjwt_conf_t *c = conf_of(j);
    CHECK(c && c->n == 3, "three issuers: %s", errbuf);
    if (!c) return;
    signer_t rs = {S_RSA, EVP_sha256(), rsa, NULL, 0, 0},
             rs2 = {S_RSA, EVP_sha256(), rsa2, NULL, 0, 0};
    signer_t es = {S_EC, EVP_sha256(), ec256, NULL, 0, 32};
    gwjwt_result_t r;
    char *t = token("{\"alg\":\"ES256\"}",
                    "{\"iss\":\"https://b.example\",\"aud\":\"gw-b\",\"exp\":1700000600,"
                    "\"org\":\"globex\"}",
                    &es);
    CHECK(gwjwt_verify(c, t, strlen(t), NOW, &r) == GWJWT_OK && r.issuer == 1 &&
              strcmp(r.tenant, "globex") == 0,
          "issuer b picked");
    gwjwt_result_free(&r);
    free(t);
    t = token("{\"alg\":\"RS256\"}",
              "{\"iss\":\"https://c.example\",\"aud\":\"gw-c\",\"exp\":1700000600,"
              "\"tenant\":\"acme\"}",
              &rs2);
    CHECK(gwjwt_verify(c, t, strlen(t), NOW, &r) == GWJWT_OK && r.issuer == 2, "issuer c");
    gwjwt_result_free(&r);
    free(t);
    /* Issuer a's key cannot speak for issuer c. */
    t = token("{\"alg\":\"RS256\"}",
              "{\"iss\":\"https://c.example\",\"aud\":\"gw-c\",\"exp\":1700000600,"
              "\"tenant\":\"acme\"}",
              &rs);
    CHECK(verify(c, t, NOW) == GWJWT_E_SIGNATURE, "a's key for c");
    free(t);
    /* Issuer b's audience does not do for issuer a. */
    t = token("{\"alg\":\"RS256\"}",
              "{\"iss\":\"https://a.example\",\"aud\":\"gw-b\",\"exp\":1700000600,"
              "\"tenant\":\"acme\"}",
              &rs);
    CHECK(verify(c, t, NOW) == GWJWT_E_AUDIENCE, "b's audience for a");
    free(t);
    /* An RS256 token claiming to be from ES256 issuer b. */
    t = token("{\"alg\":\"RS256\"}",
              "{\"iss\":\"https://b.example\",\"aud\":\"gw-b\",\"exp\":1700000600,"
              "\"org\":\"acme\"}",
              &rs);
    CHECK(verify(c, t, NOW) == GWJWT_E_ALG, "RS256 token for the ES256 issuer");
    free(t);
    /* ES signature of the wrong length. */
    t = token("{\"alg\":\"ES256\"}",
              "{\"iss\":\"https://b.example\",\"aud\":\"gw-b\",\"exp\":1700000600,"
              "\"org\":\"globex\"}",
              &rs);
    CHECK(verify(c, t, NOW) == GWJWT_E_SIGNATURE, "RSA-length signature on ES256");
    free(t);
    /* Each issuer names only its own tenants (issue 14). */
    const struct {
        const char *alg, *payload;
        const signer_t *by;
        int want;
        const char *what;
    } bound[] = {
        {"RS256", "\"iss\":\"https://a.example\",\"aud\":\"gw-a\",\"tenant\":\"initech\"", &rs,
         GWJWT_OK, "a names its second tenant"},
        {"RS256", "\"iss\":\"https://a.example\",\"aud\":\"gw-a\",\"tenant\":\"globex\"", &rs,
         GWJWT_E_TENANT_NOT_BOUND, "a names b's tenant"},
        {"ES256", "\"iss\":\"https://b.example\",\"aud\":\"gw-b\",\"org\":\"acme\"", &es,
         GWJWT_E_TENANT_NOT_BOUND, "b names a's tenant"},
        {"RS256", "\"iss\":\"https://c.example\",\"aud\":\"gw-c\",\"tenant\":\"acmE\"", &rs2,
         GWJWT_E_TENANT_NOT_BOUND, "tenants compare exactly"},
    };
    for (size_t i = 0; i < sizeof(bound) / sizeof(bound[0]); i++) {
        char *h = fmt("{\"alg\":\"%s\"}", bound[i].alg);
        char *pl = fmt("{\"exp\":1700000600,%s}", bound[i].payload);
        t = token(h, pl, bound[i].by);
        CHECK(verify(c, t, NOW) == bound[i].want, "%s", bound[i].what);
        free(t);
        free(pl);
        free(h);
    }
    CHECK(strcmp(gwjwt_reason(GWJWT_E_TENANT_NOT_BOUND), "jwt_tenant_not_bound") == 0, "reason");
    free(j);
    gwjwt_conf_free(c);
    /* Several issuers must each list their tenants; one may go without. */
    j = fmt("[{\"issuer\":\"https://a.example\",\"audience\":\"a\",\"algorithm\":\"RS256\","
            "\"key_file\":\"%s\",\"tenant_claim\":\"tenant\",\"tenants\":[\"acme\"]},"
            "{\"issuer\":\"https://b.example\",\"audience\":\"b\",\"algorithm\":\"ES256\","
            "\"key_file\":\"%s\",\"tenant_claim\":\"org\"}]",
            rsa_pub, ec256_pub);
    CHECK(conf_fails(j, "$.jwt[1].tenants: is required") && !strstr(errbuf, "$.jwt[0].tenants"),
          "tenants required with two issuers: %s", errbuf);
    free(j);
    const char *bad_lists[] = {"[]", "\"acme\"", "[\"\"]", "[1]", "{}"};
    for (size_t i = 0; i < sizeof(bad_lists) / sizeof(bad_lists[0]); i++) {
        j = fmt("[{\"issuer\":\"https://a.example\",\"audience\":\"a\",\"algorithm\":\"RS256\","
                "\"key_file\":\"%s\",\"tenant_claim\":\"tenant\",\"tenants\":%s}]",
                rsa_pub, bad_lists[i]);
        CHECK(conf_fails(j, "$.jwt[0].tenants"), "bad tenants %s: %s", bad_lists[i], errbuf);
        free(j);
    }
}

static int conf_fails(const char *json, const char *want_path)
{
    gwjwt_conf_t *c = conf_of(json);
    if (c) {
        gwjwt_conf_free(c);
        return 0;
    }
    return strstr(errbuf, want_path) != NULL;
}

static void test_config(void)
{
#define ENTRY(alg, key, extra)                                                                     \
    fmt("[{\"issuer\":\"" ISS "\",\"audience\":\"" AUD "\",\"algorithm\":\"%s\","                  \
        "\"key_file\":\"%s\",\"tenant_claim\":\"tenant\"%s}]",                                     \
        alg, key, extra)
    struct {
        char *json;
        const char *path;
    } bad[] = {
        {ENTRY("RS256", rsa_pub, ",\"colour\":\"red\""), "$.jwt[0]: unknown key \"colour\""},
        {ENTRY("none", rsa_pub, ""), "$.jwt[0].algorithm:"},
        {ENTRY("rs256", rsa_pub, ""), "$.jwt[0].algorithm:"},
        {ENTRY("PS256", rsa_pub, ""), "$.jwt[0].algorithm:"},
        {ENTRY("ES512", ec256_pub, ""), "$.jwt[0].algorithm:"},
        {ENTRY("RS256", "/nonexistent/key.pem", ""), "$.jwt[0].key_file: no such file"},
        {ENTRY("RS256", dir, ""), "$.jwt[0].key_file: is not a regular file"},
        {ENTRY("RS256", garbage_path, ""), "$.jwt[0].key_file: is not a PEM public key"},
        {ENTRY("RS256", priv_pem, ""), "$.jwt[0].key_file: is not a PEM public key"},
        {ENTRY("RS256", ec256_pub, ""), "$.jwt[0].key_file: is not an RSA public key"},
        {ENTRY("RS256", rsa1024_pub, ""), "$.jwt[0].key_file: is an RSA key shorter"},
        {ENTRY("ES256", rsa_pub, ""), "$.jwt[0].key_file: is not an EC public key"},
        {ENTRY("ES256", ec384_pub, ""), "$.jwt[0].key_file: is not a P-256 key"},
        {ENTRY("ES384", ec256_pub, ""), "$.jwt[0].key_file: is not a P-384 key"},
        {ENTRY("HS256", short_path, ""), "$.jwt[0].key_file: the secret must be at least 32"},
        {ENTRY("HS256", "/nonexistent/secret", ""), "$.jwt[0].key_file:"},
        {ENTRY("HS256", secret_path, ",\"leeway_s\":301"), "$.jwt[0].leeway_s:"},
        {ENTRY("HS256", secret_path, ",\"leeway_s\":-1"), "$.jwt[0].leeway_s:"},
        {ENTRY("HS256", secret_path, ",\"leeway_s\":1.5"), "$.jwt[0].leeway_s:"},
        {ENTRY("HS256", secret_path, ",\"leeway_s\":\"30\""), "$.jwt[0].leeway_s:"},
        {fmt("[{\"audience\":\"a\",\"algorithm\":\"HS256\",\"key_file\":\"%s\","
             "\"tenant_claim\":\"t\"}]",
             secret_path),
         "$.jwt[0].issuer: is required"},
        {fmt("[{\"issuer\":\"i\",\"algorithm\":\"HS256\",\"key_file\":\"%s\","
             "\"tenant_claim\":\"t\"}]",
             secret_path),
         "$.jwt[0].audience: is required"},
        {fmt("[{\"issuer\":\"i\",\"audience\":\"a\",\"algorithm\":\"HS256\",\"key_file\":\"%s\"}]",
             secret_path),
         "$.jwt[0].tenant_claim: is required"},
        {fmt("[{\"issuer\":\"i\",\"audience\":\"a\",\"key_file\":\"%s\",\"tenant_claim\":\"t\"}]",
             secret_path),
         "$.jwt[0].algorithm: is required"},
        {strdup("[{\"issuer\":\"i\",\"audience\":\"a\",\"algorithm\":\"HS256\","
                "\"tenant_claim\":\"t\"}]"),
         "$.jwt[0].key_file: is required"},
        {fmt("[{\"issuer\":\"\",\"audience\":\"a\",\"algorithm\":\"HS256\",\"key_file\":\"%s\","
             "\"tenant_claim\":\"t\"}]",
             secret_path),
         "$.jwt[0].issuer: must be a non-empty string"},
        {fmt("[{\"issuer\":1,\"audience\":\"a\",\"algorithm\":\"HS256\",\"key_file\":\"%s\","
             "\"tenant_claim\":\"t\"}]",
             secret_path),
         "$.jwt[0].issuer:"},
        {strdup("{}"), "$.jwt: must be an array"},
        {strdup("[]"), "$.jwt: must list"},
        {strdup("[1]"), "$.jwt[0]: must be an object"},
        {fmt("[{\"issuer\":\"i\",\"audience\":\"a\",\"algorithm\":\"HS256\",\"key_file\":\"%s\","
             "\"tenant_claim\":\"t\"},"
             "{\"issuer\":\"i\",\"audience\":\"b\",\"algorithm\":\"HS256\",\"key_file\":\"%s\","
             "\"tenant_claim\":\"t\"}]",
             secret_path, secret_path),
         "$.jwt[1].issuer: is already configured"},
        {fmt("[{\"issuer\":\"i\",\"audience\":\"a\",\"algorithm\":\"HS256\",\"key_file\":\"%s\","
             "\"tenant_claim\":\"t\"},"
             "{\"issuer\":\"j\",\"audience\":\"b\",\"algorithm\":\"HX256\",\"key_file\":\"%s\","
             "\"tenant_claim\":\"t\"}]",
             secret_path, secret_path),
         "$.jwt[1].algorithm:"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK(conf_fails(bad[i].json, bad[i].path), "config %zu %s: want %s, got: %s", i,
              bad[i].json, bad[i].path, errbuf);
        CHECK(!strstr(errbuf, "0123456789abcdef"), "no secret in errors");
        free(bad[i].json);
    }
    /* Several problems are all reported. */
    char *j = fmt("[{\"issuer\":\"i\",\"audience\":\"a\",\"algorithm\":\"XX\","
                  "\"key_file\":\"%s\",\"tenant_claim\":\"t\",\"leeway_s\":1000,\"k\":1}]",
                  secret_path);
    CHECK(conf_fails(j, "$.jwt[0].algorithm") && strstr(errbuf, "$.jwt[0].leeway_s") &&
              strstr(errbuf, "unknown key \"k\""),
          "all problems: %s", errbuf);
    free(j);
    /* Leeway bounds 0 and 300 are fine. */
    j = ENTRY("HS256", secret_path, ",\"leeway_s\":0");
    gwjwt_conf_t *c = conf_of(j);
    CHECK(c && c->issuers[0].leeway_s == 0, "leeway 0");
    gwjwt_conf_free(c);
    free(j);
    j = ENTRY("HS256", secret_path, ",\"leeway_s\":300");
    c = conf_of(j);
    CHECK(c && c->issuers[0].leeway_s == 300, "leeway 300");
    gwjwt_conf_free(c);
    free(j);
    /* A text secret loses its trailing newline; a token signed without it verifies. */
    j = ENTRY("HS256", text_secret_path, "");
    c = conf_of(j);
    CHECK(c && c->issuers[0].key_len == 64, "text secret length %zu",
          c ? c->issuers[0].key_len : 0);
    if (c) {
        signer_t hs = {S_HMAC,
                       EVP_sha256(),
                       NULL,
                       (const unsigned char *)"00112233445566778899aabbccddeeff"
                                              "00112233445566778899aabbccddeeff",
                       64,
                       0};
        char *cl = claims(600, NULL);
        char *t = token("{\"alg\":\"HS256\"}", cl, &hs);
        CHECK(verify(c, t, NOW) == GWJWT_OK, "text secret without its newline");
        free(t);
        free(cl);
    }
    gwjwt_conf_free(c);
    free(j);
    gwjwt_conf_free(NULL);
}

static void test_credential_header(void)
{
    struct {
        int auth;
        const char *in, *want;
    } cases[] = {
        {1, "Bearer abc.def.ghi", "abc.def.ghi"},
        {1, "bearer abc", "abc"},
        {1, "BEARER \t abc  ", "abc"},
        {1, "  Bearer abc", "abc"},
        {1, "Bearer", NULL},
        {1, "Bearer ", NULL},
        {1, "Bearerabc", NULL},
        {1, "Basic YWJjOmRlZg==", NULL},
        {1, "Bearer abc def", NULL},
        {1, "Bearer ab\x01", NULL},
        {1, "Bearer ab\xc3\xa9", NULL},
        {1, "", NULL},
        {1, "Token abc", NULL},
        {0, "gk_abc", "gk_abc"},
        {0, " gk_abc\t", "gk_abc"},
        {0, "", NULL},
        {0, "   ", NULL},
        {0, "Bearer gk_abc", NULL},
        {0, "gk\x7f", NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *c;
        size_t n;
        int rc = gw_http_credential(cases[i].auth, cases[i].in, strlen(cases[i].in), &c, &n);
        if (cases[i].want)
            CHECK(rc == 0 && n == strlen(cases[i].want) && memcmp(c, cases[i].want, n) == 0,
                  "%d %s", cases[i].auth, cases[i].in);
        else
            CHECK(rc == -1 && c == NULL && n == 0, "%d %s refused", cases[i].auth, cases[i].in);
    }
    const char *c;
    size_t n;
    CHECK(gw_http_credential(1, NULL, 0, &c, &n) == -1, "NULL");
    CHECK(gwjwt_is_jwt_shaped("a.b.c", 5) && gwjwt_is_jwt_shaped("..", 2) &&
              gwjwt_is_jwt_shaped("a.b.c.d", 7),
          "two dots or more");
    CHECK(!gwjwt_is_jwt_shaped("a.b", 3) && !gwjwt_is_jwt_shaped("a.b.c", 3) &&
              !gwjwt_is_jwt_shaped("gk_abc", 6) && !gwjwt_is_jwt_shaped("", 0) &&
              !gwjwt_is_jwt_shaped(NULL, 0),
          "fewer than two dots");
    CHECK(strcmp(gwjwt_reason(GWJWT_E_EXPIRED), "jwt_expired") == 0 &&
              strcmp(gwjwt_reason(GWJWT_E_ALG), "jwt_alg") == 0 &&
              strcmp(gwjwt_reason(GWJWT_E_SIGNATURE), "jwt_signature") == 0 &&
              strcmp(gwjwt_reason(GWJWT_E_AUDIENCE), "jwt_audience") == 0 &&
              strcmp(gwjwt_reason(-99), "other") == 0,
          "reasons");
}

/* Inputs the fuzz target found or that once misbehaved: each must simply be refused. */
static void test_fuzz_regressions(void)
{
    gwjwt_conf_t *c = one("RS256", rsa_pub, 30);
    const char *cases[] = {
        "e30.e30.e30",
        "eyJhbGciOiJSUzI1NiJ9.e30.AA",
        "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJodHRwczovL2lkcC5leGFtcGxlLmNoIn0.AA",
        "W10.W10.AA",
        "IiI.IiI.AA",
        "bnVsbA.bnVsbA.AA",
        "e30.e30.",
        "AAAA.AAAA.AAAA",
        "____.____.____",
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        CHECK(verify(c, cases[i], NOW) < 0, "%s refused", cases[i]);
    gwjwt_conf_free(c);
}

/* ------------------------------------------------------------------ main */

static EVP_PKEY *ec_key(const char *curve)
{
    return EVP_EC_gen(curve);
}

int main(void)
{
    snprintf(dir, sizeof(dir), "/tmp/test_jwt.XXXXXX");
    if (!mkdtemp(dir)) return 2;
    rsa = EVP_RSA_gen(2048);
    rsa2 = EVP_RSA_gen(2048);
    rsa1024 = EVP_RSA_gen(1024);
    ec256 = ec_key("P-256");
    ec384 = ec_key("P-384");
    if (!rsa || !rsa2 || !rsa1024 || !ec256 || !ec384) return 2;
    rsa_pub = write_pubkey("rsa.pub.pem", rsa);
    rsa2_pub = write_pubkey("rsa2.pub.pem", rsa2);
    rsa1024_pub = write_pubkey("rsa1024.pub.pem", rsa1024);
    ec256_pub = write_pubkey("ec256.pub.pem", ec256);
    ec384_pub = write_pubkey("ec384.pub.pem", ec384);
    priv_pem = fmt("%s/rsa.key.pem", dir);
    FILE *f = fopen(priv_pem, "wb");
    PEM_write_PrivateKey(f, rsa, NULL, NULL, 0, NULL, NULL);
    fclose(f);
    secret_path = write_file("hs.secret", secret, sizeof(secret) - 1);
    short_path = write_file("short.secret", "0123456789abcdef0123456789abcde\n", 32);
    text_secret_path = write_file(
        "text.secret", "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n", 65);
    garbage_path = write_file("garbage.pem", "-----BEGIN PUBLIC KEY-----\nnope\n", 32);

    test_accept_each_algorithm();
    test_alg_none_and_confusion();
    test_malformed();
    test_time_claims();
    test_iss_aud_tenant_models();
    test_several_issuers();
    test_config();
    test_credential_header();
    test_fuzz_regressions();

    const char *files[] = {rsa_pub,  rsa2_pub,    rsa1024_pub, ec256_pub,        ec384_pub,
                           priv_pem, secret_path, short_path,  text_secret_path, garbage_path};
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        unlink(files[i]);
        free((void *)files[i]);
    }
    rmdir(dir);
    EVP_PKEY_free(rsa);
    EVP_PKEY_free(rsa2);
    EVP_PKEY_free(rsa1024);
    EVP_PKEY_free(ec256);
    EVP_PKEY_free(ec384);
    return check_done();
}
