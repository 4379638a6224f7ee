/* libFuzzer target for the credential path: header value → credential → JWT verification. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "base/http.h"
#include "jwt_verify.h"

/*
 * The first input byte picks a mode (byte % 3), the rest is the data:
 *   '0'  an Authorization header value ("Bearer ...")
 *   '1'  an api-key header value
 *   '2'  header JSON, a NUL byte, payload JSON: the harness encodes and signs them with the
 *        HS256 secret below, so the claim checks behind the signature are reached too.
 * Every credential found is verified against two fixed configs: RS256 (the public key below;
 * its private key was thrown away after signing the seed corpus) and HS256.
 * The clock is fixed at 1700000000 so that the corpus' tokens stay valid.
 */

#define NOW ((time_t)1700000000)

static const char rsa_pub[] = "-----BEGIN PUBLIC KEY-----\n"
                              "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA1BluSHqpkVQa6IsMFP74\n"
                              "W5b3hd/okGhUpteQ16TQ2XusEW/yW+z2H+MOFMTJqfOBiakdEqAo1gckz24HQMCV\n"
                              "5BURjJkw6UFYK/j4/61UlHZkhDs8WixMivWQ2pKYRdsRcBhtN/qkKpdvikgJB1PA\n"
                              "EJt2zkSqyxGG8aVicLixE67WX/XrJ1hRNPwwPmT9Dhgah5qCmmlWGjO79XeSedN+\n"
                              "dLuI4pz4bvSAkhTa55oIRF7n+E/H8fAGWz8bdawYi06Hb15OyY6fDWcTyZ831j4m\n"
                              "3hFFIOx6drCwfyPNAgE1B+m2FKvNOD6Q/C1t0nG3h4sQzInS5A4sgkS+hoZXwLd1\n"
                              "bQIDAQAB\n"
                              "-----END PUBLIC KEY-----\n";
static const char hs_secret[] = "fuzz-secret-fuzz-secret-fuzz-secret-0123";

static gwjwt_conf_t *conf_rs, *conf_hs;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void write_file(const char *path, const char *s)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(s, 1, strlen(s), f) != strlen(s)) abort();
    fclose(f);
}

static void conf_err(void *arg, const char *path, const char *msg)
{
    (void)arg;
    fprintf(stderr, "fuzz_credentials: config: %s: %s\n", path, msg);
}

static gwjwt_conf_t *make_conf(const char *alg, const char *key_file)
{
    char json[1024];
    snprintf(json, sizeof(json),
             "[{\"issuer\":\"https://idp.example.ch\",\"audience\":\"gotthard\","
             "\"algorithm\":\"%s\",\"key_file\":\"%s\",\"tenant_claim\":\"tenant\","
             "\"leeway_s\":30}]",
             alg, key_file);
    cJSON *j = cJSON_Parse(json);
    gwjwt_conf_t *c = NULL;
    if (!j || gwjwt_conf_parse(j, "$.jwt", conf_err, NULL, &c) < 0) abort();
    cJSON_Delete(j);
    return c;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char dir[] = "/tmp/fuzz_credentials.XXXXXX";
    if (!mkdtemp(dir)) abort();
    char pub[64], sec[64];
    snprintf(pub, sizeof(pub), "%s/rsa.pub.pem", dir);
    snprintf(sec, sizeof(sec), "%s/hs.secret", dir);
    write_file(pub, rsa_pub);
    write_file(sec, hs_secret);
    conf_rs = make_conf("RS256", pub);
    conf_hs = make_conf("HS256", sec);
    unlink(pub);
    unlink(sec);
    rmdir(dir);
    return 0;
}

static void check(const gwjwt_conf_t *c, const char *tok, size_t n)
{
    gwjwt_result_t r;
    int rc = gwjwt_verify(c, tok, n, NOW, &r);
    if (rc == GWJWT_OK) {
        /* A success must be whole: an issuer, a non-empty tenant, models as claimed. */
        if (r.issuer >= c->n || !r.tenant || !r.tenant[0]) abort();
        for (size_t i = 0; i < r.n_models; i++)
            if (!r.models[i] || !r.models[i][0]) abort();
    } else if (r.tenant || r.models || r.n_models) {
        abort(); /* a refusal leaves nothing behind */
    }
    if (!gwjwt_reason(rc)) abort();
    gwjwt_result_free(&r);
}

static size_t b64url(const uint8_t *p, size_t n, char *o)
{
    static const char al[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t k = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        unsigned v = (unsigned)p[i] << 16 | (unsigned)p[i + 1] << 8 | p[i + 2];
        o[k++] = al[v >> 18];
        o[k++] = al[(v >> 12) & 63];
        o[k++] = al[(v >> 6) & 63];
        o[k++] = al[v & 63];
    }
    if (n - i >= 1) {
        unsigned v = (unsigned)p[i] << 16 | (n - i == 2 ? (unsigned)p[i + 1] << 8 : 0);
        o[k++] = al[v >> 18];
        o[k++] = al[(v >> 12) & 63];
        if (n - i == 2) o[k++] = al[(v >> 6) & 63];
    }
    return k;
}

/* header JSON \0 payload JSON → an HS256-signed token. */
static void signed_parts(const uint8_t *d, size_t n)
{
    const uint8_t *z = memchr(d, 0, n);
    if (!z || n > 6000) return;
    size_t hn = (size_t)(z - d), pn = n - hn - 1;
    char *t = malloc(n * 4 / 3 + 64);
    if (!t) return;
    size_t k = b64url(d, hn, t);
    t[k++] = '.';
    k += b64url(z + 1, pn, t + k);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int ml = 0;
    if (HMAC(EVP_sha256(), hs_secret, (int)strlen(hs_secret), (const unsigned char *)t, k, mac,
             &ml)) {
        t[k++] = '.';
        k += b64url(mac, ml, t + k);
        check(conf_hs, t, k);
        check(conf_rs, t, k);
    }
    free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    int mode = data[0] % 3;
    const char *v = (const char *)data + 1;
    size_t n = size - 1;
    if (mode == 2) {
        signed_parts(data + 1, n);
        return 0;
    }
    const char *cred;
    size_t cn;
    if (gw_http_credential(mode == 0, v, n, &cred, &cn) == 0) {
        if (!cred || cn == 0 || cred < v || cred + cn > v + n) abort();
        if (gwjwt_is_jwt_shaped(cred, cn)) {
            check(conf_rs, cred, cn);
            check(conf_hs, cred, cn);
        }
    }
    /* The raw bytes as a token too (the verifier must not trust its caller's parsing). */
    check(conf_rs, v, n);
    check(conf_hs, v, n);
    return 0;
}
