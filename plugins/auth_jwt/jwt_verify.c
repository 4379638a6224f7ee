/* JWT verification for auth_jwt: config entries, strict token shape, fixed algorithm, claims. */
#include "jwt_verify.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <jwt.h>
#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

/* ------------------------------------------------------------------ algorithms */

static const struct {
    const char *name;
    gwjwt_alg_t alg;
    jwt_alg_t lib;
} algs[] = {
    {"RS256", GWJWT_RS256, JWT_ALG_RS256}, {"RS384", GWJWT_RS384, JWT_ALG_RS384},
    {"RS512", GWJWT_RS512, JWT_ALG_RS512}, {"ES256", GWJWT_ES256, JWT_ALG_ES256},
    {"ES384", GWJWT_ES384, JWT_ALG_ES384}, {"HS256", GWJWT_HS256, JWT_ALG_HS256},
    {"HS384", GWJWT_HS384, JWT_ALG_HS384}, {"HS512", GWJWT_HS512, JWT_ALG_HS512},
};
#define N_ALGS (sizeof(algs) / sizeof(algs[0]))

const char *gwjwt_alg_name(gwjwt_alg_t alg)
{
    for (size_t i = 0; i < N_ALGS; i++)
        if (algs[i].alg == alg) return algs[i].name;
    return "?";
}

gwjwt_alg_t gwjwt_alg_parse(const char *name)
{
    for (size_t i = 0; i < N_ALGS; i++)
        if (strcmp(algs[i].name, name) == 0) return algs[i].alg;
    return 0;
}

static jwt_alg_t lib_alg(gwjwt_alg_t alg)
{
    for (size_t i = 0; i < N_ALGS; i++)
        if (algs[i].alg == alg) return algs[i].lib;
    return JWT_ALG_INVAL;
}

static int is_hmac(gwjwt_alg_t alg)
{
    return alg == GWJWT_HS256 || alg == GWJWT_HS384 || alg == GWJWT_HS512;
}

static const EVP_MD *hmac_md(gwjwt_alg_t alg)
{
    switch (alg) {
    case GWJWT_HS256: return EVP_sha256();
    case GWJWT_HS384: return EVP_sha384();
    case GWJWT_HS512: return EVP_sha512();
    default: return NULL;
    }
}

/* ------------------------------------------------------------------ config */

typedef struct {
    gwjwt_err_fn fn;
    void *arg;
    int n;
} errs_t;

static void report(errs_t *e, const char *base, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void report(errs_t *e, const char *base, const char *key, const char *fmt, ...)
{
    char path[512], msg[512];
    va_list ap;
    if (key)
        snprintf(path, sizeof(path), "%s.%s", base, key);
    else
        snprintf(path, sizeof(path), "%s", base);
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    e->n++;
    if (e->fn) e->fn(e->arg, path, msg);
}

/* Reads a whole regular file of at most `max` bytes. Returns 0, or -1 with a reason. */
static int read_file(const char *path, size_t max, unsigned char **data, size_t *len,
                     const char **why)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        *why = errno == ENOENT ? "no such file" : "cannot be opened";
        return -1;
    }
    struct stat st;
    if (fstat(fileno(f), &st) < 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        *why = "is not a regular file";
        return -1;
    }
    if (st.st_size < 0 || (unsigned long long)st.st_size > max) {
        fclose(f);
        *why = "is too large";
        return -1;
    }
    size_t n = (size_t)st.st_size;
    unsigned char *buf = malloc(n + 1);
    if (!buf) {
        fclose(f);
        *why = "out of memory";
        return -1;
    }
    size_t got = n ? fread(buf, 1, n, f) : 0;
    int bad = ferror(f) || got != n;
    fclose(f);
    if (bad) {
        OPENSSL_cleanse(buf, n);
        free(buf);
        *why = "cannot be read";
        return -1;
    }
    buf[n] = 0;
    *data = buf;
    *len = n;
    return 0;
}

static void wipe_free(unsigned char *p, size_t n)
{
    if (!p) return;
    OPENSSL_cleanse(p, n);
    free(p);
}

/* Checks that a PEM public key suits the algorithm. Returns NULL or what is wrong. */
static const char *check_public_key(gwjwt_alg_t alg, const unsigned char *pem, size_t len)
{
    if (len > INT_MAX) return "is too large";
    BIO *b = BIO_new_mem_buf(pem, (int)len);
    if (!b) return "cannot be read";
    EVP_PKEY *k = PEM_read_bio_PUBKEY(b, NULL, NULL, NULL);
    BIO_free(b);
    if (!k) return "is not a PEM public key (BEGIN PUBLIC KEY)";
    const char *why = NULL;
    if (alg == GWJWT_RS256 || alg == GWJWT_RS384 || alg == GWJWT_RS512) {
        if (EVP_PKEY_get_base_id(k) != EVP_PKEY_RSA)
            why = "is not an RSA public key";
        else if (EVP_PKEY_get_bits(k) < 2048)
            why = "is an RSA key shorter than 2048 bits";
    } else {
        char group[64] = "";
        size_t glen = 0;
        const char *want = alg == GWJWT_ES256 ? "prime256v1" : "secp384r1";
        if (EVP_PKEY_get_base_id(k) != EVP_PKEY_EC)
            why = "is not an EC public key";
        else if (!EVP_PKEY_get_utf8_string_param(k, OSSL_PKEY_PARAM_GROUP_NAME, group,
                                                 sizeof(group), &glen) ||
                 strcmp(group, want) != 0)
            why = alg == GWJWT_ES256 ? "is not a P-256 key" : "is not a P-384 key";
    }
    EVP_PKEY_free(k);
    return why;
}

/* A text secret file loses one trailing newline. */
static size_t secret_length(const unsigned char *s, size_t n)
{
    size_t end = n;
    if (end && s[end - 1] == '\n') {
        end--;
        if (end && s[end - 1] == '\r') end--;
    }
    for (size_t i = 0; i < end; i++)
        if (s[i] < 0x20 || s[i] > 0x7e) return n; /* binary: every byte counts */
    return end;
}

static int is_key(const char *k)
{
    static const char *const keys[] = {"issuer",   "audience",     "algorithm",
                                       "key_file", "tenant_claim", "leeway_s"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        if (strcmp(k, keys[i]) == 0) return 1;
    return 0;
}

static const char *str_item(errs_t *e, const char *base, const cJSON *obj, const char *key,
                            int required)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v) {
        if (required) report(e, base, key, "is required");
        return NULL;
    }
    if (!cJSON_IsString(v) || !v->valuestring[0] || strlen(v->valuestring) > 1024) {
        report(e, base, key, "must be a non-empty string (at most 1024 bytes)");
        return NULL;
    }
    return v->valuestring;
}

static int parse_entry(errs_t *e, const char *base, const cJSON *o, gwjwt_issuer_t *is)
{
    int before = e->n;
    if (!cJSON_IsObject(o)) {
        report(e, base, NULL, "must be an object");
        return -1;
    }
    for (const cJSON *c = o->child; c; c = c->next)
        if (!is_key(c->string)) report(e, base, NULL, "unknown key \"%.64s\"", c->string);

    const char *iss = str_item(e, base, o, "issuer", 1);
    const char *aud = str_item(e, base, o, "audience", 1);
    const char *algname = str_item(e, base, o, "algorithm", 1);
    const char *key_file = str_item(e, base, o, "key_file", 1);
    const char *tclaim = str_item(e, base, o, "tenant_claim", 1);
    const cJSON *lw = cJSON_GetObjectItemCaseSensitive(o, "leeway_s");

    gwjwt_alg_t alg = 0;
    if (algname && !(alg = gwjwt_alg_parse(algname)))
        report(e, base, "algorithm",
               "must be one of RS256, RS384, RS512, ES256, ES384, HS256, HS384, HS512");
    long leeway = 30;
    if (lw) {
        if (!cJSON_IsNumber(lw) || lw->valuedouble != (double)(long)lw->valuedouble ||
            lw->valuedouble < 0 || lw->valuedouble > 300)
            report(e, base, "leeway_s", "must be an integer between 0 and 300");
        else
            leeway = (long)lw->valuedouble;
    }

    unsigned char *key = NULL;
    size_t key_len = 0;
    if (key_file && alg) {
        const char *why = NULL;
        if (read_file(key_file, 1 << 20, &key, &key_len, &why) < 0) {
            report(e, base, "key_file", "%s", why);
        } else if (is_hmac(alg)) {
            size_t n = secret_length(key, key_len);
            if (n < GWJWT_MIN_SECRET)
                report(e, base, "key_file", "the secret must be at least %d bytes long",
                       GWJWT_MIN_SECRET);
            else if (n != key_len)
                OPENSSL_cleanse(key + n, key_len - n); /* the newline; the buffer keeps its size */
            key_len = n;
        } else if ((why = check_public_key(alg, key, key_len))) {
            report(e, base, "key_file", "%s", why);
        }
    }
    if (e->n != before) {
        wipe_free(key, key_len);
        return -1;
    }
    is->issuer = strdup(iss);
    is->audience = strdup(aud);
    is->tenant_claim = strdup(tclaim);
    is->alg = alg;
    is->key = key;
    is->key_len = key_len;
    is->leeway_s = leeway;
    if (!is->issuer || !is->audience || !is->tenant_claim) {
        report(e, base, NULL, "out of memory");
        return -1;
    }
    return 0;
}

static void issuer_free(gwjwt_issuer_t *is)
{
    free(is->issuer);
    free(is->audience);
    free(is->tenant_claim);
    wipe_free(is->key, is->key_len);
    memset(is, 0, sizeof(*is));
}

void gwjwt_conf_free(gwjwt_conf_t *c)
{
    if (!c) return;
    for (size_t i = 0; i < c->n; i++) issuer_free(&c->issuers[i]);
    free(c->issuers);
    free(c);
}

int gwjwt_conf_parse(const cJSON *jwt, const char *path, gwjwt_err_fn err, void *err_arg,
                     gwjwt_conf_t **out)
{
    errs_t e = {err, err_arg, 0};
    *out = NULL;
    if (!cJSON_IsArray(jwt)) {
        report(&e, path, NULL, "must be an array of issuers");
        return -1;
    }
    int n = cJSON_GetArraySize(jwt);
    if (n < 1 || n > 64) {
        report(&e, path, NULL, "must list between 1 and 64 issuers");
        return -1;
    }
    gwjwt_conf_t *c = calloc(1, sizeof(*c));
    if (!c || !(c->issuers = calloc((size_t)n, sizeof(*c->issuers)))) {
        free(c);
        report(&e, path, NULL, "out of memory");
        return -1;
    }
    int i = 0;
    for (const cJSON *o = jwt->child; o; o = o->next, i++) {
        char base[256];
        snprintf(base, sizeof(base), "%s[%d]", path, i);
        if (parse_entry(&e, base, o, &c->issuers[c->n]) < 0) {
            issuer_free(&c->issuers[c->n]);
            continue;
        }
        for (size_t j = 0; j < c->n; j++)
            if (strcmp(c->issuers[j].issuer, c->issuers[c->n].issuer) == 0) {
                report(&e, base, "issuer", "is already configured by %s[%zu]", path, j);
                break;
            }
        c->n++;
    }
    if (e.n) {
        gwjwt_conf_free(c);
        return -1;
    }
    *out = c;
    return 0;
}

/* ------------------------------------------------------------------ token shape */

static signed char b64url_val(unsigned char ch)
{
    if (ch >= 'A' && ch <= 'Z') return (signed char)(ch - 'A');
    if (ch >= 'a' && ch <= 'z') return (signed char)(ch - 'a' + 26);
    if (ch >= '0' && ch <= '9') return (signed char)(ch - '0' + 52);
    if (ch == '-') return 62;
    if (ch == '_') return 63;
    return -1;
}

/* Strict base64url without padding: only the alphabet, no impossible length, and the unused
 * low bits of the last character zero (one encoding per byte string). `out` has room for
 * len * 3 / 4 bytes. Returns the decoded length, or -1. */
static long b64url_decode(const char *s, size_t len, unsigned char *out)
{
    if (len % 4 == 1) return -1;
    size_t o = 0;
    unsigned long acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        signed char v = b64url_val((unsigned char)s[i]);
        if (v < 0) return -1;
        acc = (acc << 6) | (unsigned long)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1UL << bits) - 1;
        }
    }
    if (acc != 0) return -1; /* non-canonical trailing bits */
    return (long)o;
}

/* No object in the tree has the same key twice (cJSON keeps the first, jansson the last). */
static int no_duplicate_keys(const cJSON *n)
{
    for (const cJSON *c = n->child; c; c = c->next) {
        if (cJSON_IsObject(n))
            for (const cJSON *d = c->next; d; d = d->next)
                if (strcmp(c->string, d->string) == 0) return 0;
        if ((cJSON_IsObject(c) || cJSON_IsArray(c)) && !no_duplicate_keys(c)) return 0;
    }
    return 1;
}

/* Parses one decoded segment: a JSON object and nothing else, no NUL bytes or "\u0000"
 * escapes (C strings would cut there), no duplicate keys. */
static cJSON *parse_object(const unsigned char *p, size_t n)
{
    if (memchr(p, 0, n)) return NULL;
    for (size_t i = 0; i + 5 < n; i++)
        if (p[i] == '\\' && p[i + 1] == 'u' && p[i + 2] == '0' && p[i + 3] == '0' &&
            p[i + 4] == '0' && p[i + 5] == '0')
            return NULL;
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts((const char *)p, n, &end, 0);
    if (!j) return NULL;
    const char *stop = (const char *)p + n;
    while (end && end < stop && (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r'))
        end++;
    if (!cJSON_IsObject(j) || end != stop || !no_duplicate_keys(j)) {
        cJSON_Delete(j);
        return NULL;
    }
    return j;
}

int gwjwt_is_jwt_shaped(const char *cred, size_t len)
{
    int dots = 0;
    for (size_t i = 0; i < len; i++)
        if (cred[i] == '.') dots++;
    return dots == 2;
}

/* ------------------------------------------------------------------ claims */

/* A NumericDate claim: 1 present (in *v), 0 absent, -1 not a number. */
static int num_claim(const cJSON *claims, const char *name, double *v)
{
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(claims, name);
    if (!c) return 0;
    if (!cJSON_IsNumber(c)) return -1;
    *v = c->valuedouble;
    return 1;
}

static int audience_ok(const cJSON *aud, const char *want)
{
    if (cJSON_IsString(aud)) return strcmp(aud->valuestring, want) == 0;
    if (!cJSON_IsArray(aud)) return 0;
    for (const cJSON *a = aud->child; a; a = a->next)
        if (cJSON_IsString(a) && strcmp(a->valuestring, want) == 0) return 1;
    return 0;
}

static int check_claims(const gwjwt_issuer_t *is, const cJSON *claims, time_t now)
{
    double t = (double)now, lw = (double)is->leeway_s, v;
    int has = num_claim(claims, "exp", &v);
    if (has <= 0) return GWJWT_E_NO_EXP;
    if (t > v + lw) return GWJWT_E_EXPIRED;
    if ((has = num_claim(claims, "nbf", &v)) < 0) return GWJWT_E_CLAIM_TYPE;
    if (has && t + lw < v) return GWJWT_E_NOT_YET_VALID;
    if ((has = num_claim(claims, "iat", &v)) < 0) return GWJWT_E_CLAIM_TYPE;
    if (has && v > t + lw) return GWJWT_E_ISSUED_FUTURE;
    if (!audience_ok(cJSON_GetObjectItemCaseSensitive(claims, "aud"), is->audience))
        return GWJWT_E_AUDIENCE;
    const cJSON *ten = cJSON_GetObjectItemCaseSensitive(claims, is->tenant_claim);
    if (!cJSON_IsString(ten) || !ten->valuestring[0] ||
        strlen(ten->valuestring) > GWJWT_MAX_TENANT)
        return GWJWT_E_TENANT;
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(claims, "models");
    if (m) {
        if (!cJSON_IsArray(m)) return GWJWT_E_CLAIM_TYPE;
        for (const cJSON *x = m->child; x; x = x->next)
            if (!cJSON_IsString(x) || !x->valuestring[0]) return GWJWT_E_CLAIM_TYPE;
    }
    return GWJWT_OK;
}

/* ------------------------------------------------------------------ signature */

/* HMAC compared in constant time here, whatever libjwt does after. */
static int hmac_ok(const gwjwt_issuer_t *is, const char *signing_input, size_t n,
                   const unsigned char *sig, size_t sig_len)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    if (is->key_len > INT_MAX) return 0;
    if (!HMAC(hmac_md(is->alg), is->key, (int)is->key_len, (const unsigned char *)signing_input,
              n, mac, &mac_len))
        return 0;
    int ok = mac_len == sig_len && CRYPTO_memcmp(mac, sig, sig_len) == 0;
    OPENSSL_cleanse(mac, sizeof(mac));
    return ok;
}

static int lib_verify(const gwjwt_issuer_t *is, const char *token)
{
    jwt_t *j = NULL;
    if (is->key_len > INT_MAX) return GWJWT_E_INTERNAL;
    int rc = jwt_decode(&j, token, is->key, (int)is->key_len);
    if (rc != 0 || !j) {
        if (j) jwt_free(j);
        return rc == ENOMEM ? GWJWT_E_INTERNAL : GWJWT_E_SIGNATURE;
    }
    /* libjwt used the header's alg: it must be ours (libjwt issue 33). */
    jwt_alg_t got = jwt_get_alg(j);
    jwt_free(j);
    return got == lib_alg(is->alg) ? GWJWT_OK : GWJWT_E_ALG;
}

/* ------------------------------------------------------------------ verify */

void gwjwt_result_free(gwjwt_result_t *res)
{
    if (!res) return;
    free(res->models);
    cJSON_Delete(res->claims_);
    memset(res, 0, sizeof(*res));
}

int gwjwt_verify(const gwjwt_conf_t *c, const char *token, size_t len, time_t now,
                 gwjwt_result_t *out)
{
    memset(out, 0, sizeof(*out));
    if (!c || !token || len == 0 || len > GWJWT_MAX_TOKEN) return GWJWT_E_MALFORMED;

    /* Three segments, each strict base64url. */
    const char *dot1 = memchr(token, '.', len);
    if (!dot1) return GWJWT_E_MALFORMED;
    const char *dot2 = memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token));
    if (!dot2 || memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token)))
        return GWJWT_E_MALFORMED;
    size_t hlen = (size_t)(dot1 - token), plen = (size_t)(dot2 - dot1 - 1);
    size_t slen = len - (size_t)(dot2 + 1 - token);
    if (!hlen || !plen || !slen) return GWJWT_E_MALFORMED;

    /* One buffer for the decoded header, payload and signature, and a NUL-ended copy. */
    unsigned char buf[GWJWT_MAX_TOKEN];
    char copy[GWJWT_MAX_TOKEN + 1];
    int copied = 0;
    unsigned char *hdr = buf, *pay, *sig;
    long hn = b64url_decode(token, hlen, hdr);
    if (hn <= 0) return GWJWT_E_MALFORMED;
    pay = hdr + hn;
    long pn = b64url_decode(dot1 + 1, plen, pay);
    if (pn <= 0) return GWJWT_E_MALFORMED;
    sig = pay + pn;
    long sn = b64url_decode(dot2 + 1, slen, sig);
    if (sn <= 0) return GWJWT_E_MALFORMED;

    int rc;
    cJSON *header = parse_object(hdr, (size_t)hn), *claims = NULL;
    if (!header || !(claims = parse_object(pay, (size_t)pn))) {
        rc = GWJWT_E_MALFORMED;
        goto fail;
    }
    /* Critical extensions are not understood here (RFC 7515 4.1.11). */
    if (cJSON_GetObjectItemCaseSensitive(header, "crit")) {
        rc = GWJWT_E_MALFORMED;
        goto fail;
    }

    /* The issuer picks the entry, and the entry the algorithm. */
    const cJSON *iss = cJSON_GetObjectItemCaseSensitive(claims, "iss");
    const gwjwt_issuer_t *is = NULL;
    size_t idx = 0;
    if (cJSON_IsString(iss))
        for (idx = 0; idx < c->n; idx++)
            if (strcmp(c->issuers[idx].issuer, iss->valuestring) == 0) {
                is = &c->issuers[idx];
                break;
            }
    if (!is) {
        rc = GWJWT_E_ISSUER;
        goto fail;
    }
    const cJSON *alg = cJSON_GetObjectItemCaseSensitive(header, "alg");
    if (!cJSON_IsString(alg) || strcmp(alg->valuestring, gwjwt_alg_name(is->alg)) != 0) {
        rc = GWJWT_E_ALG;
        goto fail;
    }

    /* The signature: our own constant-time HMAC first, then libjwt in every case. */
    if (is_hmac(is->alg) && !hmac_ok(is, token, (size_t)(dot2 - token), sig, (size_t)sn)) {
        rc = GWJWT_E_SIGNATURE;
        goto fail;
    }
    memcpy(copy, token, len);
    copy[len] = 0;
    copied = 1;
    if ((rc = lib_verify(is, copy)) != GWJWT_OK) goto fail;

    if ((rc = check_claims(is, claims, now)) != GWJWT_OK) goto fail;

    const cJSON *ten = cJSON_GetObjectItemCaseSensitive(claims, is->tenant_claim);
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(claims, "models");
    if (m) {
        int nm = cJSON_GetArraySize(m);
        out->has_models = 1;
        out->models = calloc(nm > 0 ? (size_t)nm : 1, sizeof(*out->models));
        if (!out->models) {
            rc = GWJWT_E_INTERNAL;
            goto fail;
        }
        for (const cJSON *x = m->child; x; x = x->next) out->models[out->n_models++] = x->valuestring;
    }
    out->issuer = idx;
    out->tenant = ten->valuestring;
    out->claims_ = claims;
    cJSON_Delete(header);
    OPENSSL_cleanse(copy, len);
    return GWJWT_OK;

fail:
    cJSON_Delete(header);
    cJSON_Delete(claims);
    free(out->models);
    memset(out, 0, sizeof(*out));
    if (copied) OPENSSL_cleanse(copy, len);
    return rc;
}

const char *gwjwt_reason(int rc)
{
    switch (rc) {
    case GWJWT_OK: return "ok";
    case GWJWT_E_MALFORMED: return "jwt_malformed";
    case GWJWT_E_ALG: return "jwt_alg";
    case GWJWT_E_SIGNATURE: return "jwt_signature";
    case GWJWT_E_EXPIRED: return "jwt_expired";
    case GWJWT_E_NOT_YET_VALID: return "jwt_not_yet_valid";
    case GWJWT_E_ISSUED_FUTURE: return "jwt_not_yet_valid"; /* iat in the future */
    case GWJWT_E_ISSUER: return "jwt_issuer";
    case GWJWT_E_AUDIENCE: return "jwt_audience";
    case GWJWT_E_TENANT: return "jwt_tenant";
    case GWJWT_E_NO_EXP: return "jwt_malformed"; /* a required claim is missing */
    case GWJWT_E_CLAIM_TYPE: return "jwt_malformed";
    default: return "other";
    }
}

/* ------------------------------------------------------------------ credential header */

static int is_ws(char ch)
{
    return ch == ' ' || ch == '\t';
}

int gwjwt_credential_from_header(int is_authorization, const char *value, size_t len,
                                 const char **cred, size_t *cred_len)
{
    *cred = NULL;
    *cred_len = 0;
    if (!value) return -1;
    size_t b = 0, e = len;
    while (b < e && is_ws(value[b])) b++;
    while (e > b && is_ws(value[e - 1])) e--;
    if (is_authorization) {
        static const char scheme[] = "bearer";
        if (e - b < sizeof(scheme) || strncasecmp(value + b, scheme, sizeof(scheme) - 1) != 0 ||
            !is_ws(value[b + sizeof(scheme) - 1]))
            return -1;
        b += sizeof(scheme) - 1;
        while (b < e && is_ws(value[b])) b++;
    }
    if (b == e) return -1;
    for (size_t i = b; i < e; i++)
        if ((unsigned char)value[i] < 0x21 || (unsigned char)value[i] > 0x7e) return -1;
    *cred = value + b;
    *cred_len = e - b;
    return 0;
}
