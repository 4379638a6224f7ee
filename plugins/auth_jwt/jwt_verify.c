/* JWT verification for auth_jwt: config entries, strict token shape, fixed algorithm, claims. */
#include "jwt_verify.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <jwt.h>
#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
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
    case GWJWT_HS256:
        return EVP_sha256();
    case GWJWT_HS384:
        return EVP_sha384();
    case GWJWT_HS512:
        return EVP_sha512();
    default:
        return NULL;
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

/* Loads a PEM public key and checks that it suits the algorithm. Returns the key, or NULL with
 * *why saying what is wrong. */
static EVP_PKEY *load_public_key(gwjwt_alg_t alg, const unsigned char *pem, size_t len,
                                 const char **why)
{
    *why = NULL;
    if (len > INT_MAX) {
        *why = "is too large";
        return NULL;
    }
    BIO *b = BIO_new_mem_buf(pem, (int)len);
    if (!b) {
        *why = "cannot be read";
        return NULL;
    }
    EVP_PKEY *k = PEM_read_bio_PUBKEY(b, NULL, NULL, NULL);
    BIO_free(b);
    if (!k) {
        *why = "is not a PEM public key (BEGIN PUBLIC KEY)";
        return NULL;
    }
    if (alg == GWJWT_RS256 || alg == GWJWT_RS384 || alg == GWJWT_RS512) {
        if (EVP_PKEY_get_base_id(k) != EVP_PKEY_RSA)
            *why = "is not an RSA public key";
        else if (EVP_PKEY_get_bits(k) < 2048)
            *why = "is an RSA key shorter than 2048 bits";
    } else {
        char group[64] = "";
        size_t glen = 0;
        const char *want = alg == GWJWT_ES256 ? "prime256v1" : "secp384r1";
        if (EVP_PKEY_get_base_id(k) != EVP_PKEY_EC)
            *why = "is not an EC public key";
        else if (!EVP_PKEY_get_utf8_string_param(k, OSSL_PKEY_PARAM_GROUP_NAME, group,
                                                 sizeof(group), &glen) ||
                 strcmp(group, want) != 0)
            *why = alg == GWJWT_ES256 ? "is not a P-256 key" : "is not a P-384 key";
    }
    if (*why) {
        EVP_PKEY_free(k);
        return NULL;
    }
    return k;
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
    static const char *const keys[] = {"issuer",       "audience", "algorithm", "key_file",
                                       "tenant_claim", "leeway_s", "tenants"};
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

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* "tenants": the tenants the entry's tokens may name, kept sorted for bsearch. */
static int parse_tenants(errs_t *e, const char *base, const cJSON *t, gwjwt_issuer_t *is)
{
    int n = cJSON_IsArray(t) ? cJSON_GetArraySize(t) : -1;
    if (n < 1 || n > 100000) {
        report(e, base, "tenants", "must be an array of 1 to 100000 tenant ids");
        return -1;
    }
    if (!(is->tenants = calloc((size_t)n, sizeof(*is->tenants)))) {
        report(e, base, "tenants", "out of memory");
        return -1;
    }
    int i = 0;
    for (const cJSON *x = t->child; x; x = x->next, i++) {
        if (!cJSON_IsString(x) || !x->valuestring[0] || strlen(x->valuestring) > GWJWT_MAX_TENANT) {
            char key[48];
            snprintf(key, sizeof(key), "tenants[%d]", i);
            report(e, base, key, "must be a tenant id (a non-empty string of at most %d bytes)",
                   GWJWT_MAX_TENANT);
            return -1;
        }
        if (!(is->tenants[is->ntenants] = strdup(x->valuestring))) {
            report(e, base, "tenants", "out of memory");
            return -1;
        }
        is->ntenants++;
    }
    qsort(is->tenants, is->ntenants, sizeof(*is->tenants), cmp_str);
    return 0;
}

static int tenant_bound(const gwjwt_issuer_t *is, const char *tenant)
{
    if (!is->tenants) return 1;
    return bsearch(&tenant, is->tenants, is->ntenants, sizeof(*is->tenants), cmp_str) != NULL;
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
    const cJSON *tl = cJSON_GetObjectItemCaseSensitive(o, "tenants");
    if (tl) parse_tenants(e, base, tl, is); /* freed with the entry on any error */

    gwjwt_alg_t alg = 0;
    if (algname && !(alg = gwjwt_alg_parse(algname)))
        report(e, base, "algorithm",
               "must be one of RS256, RS384, RS512, ES256, ES384, HS256, HS384, HS512");
    long leeway = 30;
    if (lw) {
        if (!cJSON_IsNumber(lw) || lw->valuedouble < 0 || lw->valuedouble > 300 ||
            lw->valuedouble != (double)(long)lw->valuedouble) /* the cast within range only */
            report(e, base, "leeway_s", "must be an integer between 0 and 300");
        else
            leeway = (long)lw->valuedouble;
    }

    unsigned char *key = NULL;
    size_t key_len = 0;
    EVP_PKEY *pkey = NULL;
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
        } else if (!(pkey = load_public_key(alg, key, key_len, &why))) {
            report(e, base, "key_file", "%s", why);
        }
    }
    if (e->n != before) {
        wipe_free(key, key_len);
        EVP_PKEY_free(pkey);
        return -1;
    }
    is->issuer = strdup(iss);
    is->audience = strdup(aud);
    is->tenant_claim = strdup(tclaim);
    is->alg = alg;
    is->key = key;
    is->key_len = key_len;
    is->pkey_ = pkey;
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
    for (size_t i = 0; i < is->ntenants; i++) free(is->tenants[i]);
    free(is->tenants);
    wipe_free(is->key, is->key_len);
    EVP_PKEY_free(is->pkey_);
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
        /* Several identity providers: each names the tenants it speaks for. */
        if (n > 1 && cJSON_IsObject(o) && !cJSON_GetObjectItemCaseSensitive(o, "tenants"))
            report(&e, base, "tenants", "is required when more than one issuer is configured");
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

/* base64url digit values; 64 marks everything else. */
static const unsigned char b64url_tab[256] = {
    64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64,
    64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 62, 64, 64,
    52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 64, 64, 64, 64, 64, 64, 64, 0,  1,  2,  3,  4,  5,  6,
    7,  8,  9,  10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 64, 64, 64, 64, 63,
    64, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48,
    49, 50, 51, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64,
    64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64,
    64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64,
    64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64,
    64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64,
    64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64};

/* Strict base64url without padding: only the alphabet, no impossible length, and the unused
 * low bits of the last character zero (one encoding per byte string). `out` has room for
 * len * 3 / 4 bytes. Returns the decoded length, or -1. */
static long b64url_decode(const char *s, size_t len, unsigned char *out)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t o = 0, i = 0, rest = len % 4;
    if (rest == 1) return -1;
    for (; i + 4 <= len; i += 4) {
        unsigned a = b64url_tab[p[i]], b = b64url_tab[p[i + 1]], c = b64url_tab[p[i + 2]],
                 d = b64url_tab[p[i + 3]];
        if ((a | b | c | d) & 64) return -1;
        unsigned long v = (unsigned long)a << 18 | b << 12 | c << 6 | d;
        out[o++] = (unsigned char)(v >> 16);
        out[o++] = (unsigned char)(v >> 8);
        out[o++] = (unsigned char)v;
    }
    if (rest) {
        unsigned a = b64url_tab[p[i]], b = b64url_tab[p[i + 1]];
        unsigned c = rest == 3 ? b64url_tab[p[i + 2]] : 0;
        if ((a | b | c) & 64) return -1;
        unsigned long v = (unsigned long)a << 18 | b << 12 | c << 6;
        out[o++] = (unsigned char)(v >> 16);
        if (rest == 3) {
            if (v & 0xff) return -1; /* non-canonical trailing bits */
            out[o++] = (unsigned char)(v >> 8);
        } else if (v & 0xffff) {
            return -1;
        }
    }
    return (long)o;
}

static int cmp_key(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The object has no key twice (cJSON keeps the first, jansson the last: libjwt would read
 * another "alg" than we do). Only the top level matters: no nested member is read by anyone.
 * Sorted, so that a token full of keys costs n log n, not n squared. */
static int no_duplicate_keys(const cJSON *o)
{
    size_t n = 0;
    for (const cJSON *c = o->child; c; c = c->next) n++;
    if (n < 2) return 1;
    const char **keys = malloc(n * sizeof(*keys));
    if (!keys) return 0;
    n = 0;
    for (const cJSON *c = o->child; c; c = c->next) keys[n++] = c->string;
    qsort(keys, n, sizeof(*keys), cmp_key);
    int ok = 1;
    for (size_t i = 1; i < n && ok; i++)
        if (strcmp(keys[i - 1], keys[i]) == 0) ok = 0;
    free(keys);
    return ok;
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
    const char *dot = cred ? memchr(cred, '.', len) : NULL;
    return dot && memchr(dot + 1, '.', len - (size_t)(dot + 1 - cred)) != NULL;
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
    if (!cJSON_IsString(ten) || !ten->valuestring[0] || strlen(ten->valuestring) > GWJWT_MAX_TENANT)
        return GWJWT_E_TENANT;
    if (!tenant_bound(is, ten->valuestring)) return GWJWT_E_TENANT_NOT_BOUND;
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
    if (!HMAC(hmac_md(is->alg), is->key, (int)is->key_len, (const unsigned char *)signing_input, n,
              mac, &mac_len))
        return 0;
    int ok = mac_len == sig_len && CRYPTO_memcmp(mac, sig, sig_len) == 0;
    OPENSSL_cleanse(mac, sizeof(mac));
    return ok;
}

static const EVP_MD *pkey_md(gwjwt_alg_t alg)
{
    switch (alg) {
    case GWJWT_RS256:
    case GWJWT_ES256:
        return EVP_sha256();
    case GWJWT_RS384:
    case GWJWT_ES384:
        return EVP_sha384();
    case GWJWT_RS512:
        return EVP_sha512();
    default:
        return NULL;
    }
}

/* RS/ES with the key parsed at configure time. JWS ECDSA signatures are r || s of fixed size,
 * OpenSSL wants DER. */
static int pkey_ok(const gwjwt_issuer_t *is, const char *signing_input, size_t n,
                   const unsigned char *sig, size_t sig_len)
{
    unsigned char der[160];
    const unsigned char *vsig = sig;
    size_t vlen = sig_len;
    if (is->alg == GWJWT_ES256 || is->alg == GWJWT_ES384) {
        size_t half = is->alg == GWJWT_ES256 ? 32 : 48;
        if (sig_len != 2 * half) return 0;
        ECDSA_SIG *es = ECDSA_SIG_new();
        BIGNUM *r = BN_bin2bn(sig, (int)half, NULL), *s = BN_bin2bn(sig + half, (int)half, NULL);
        if (!es || !r || !s || !ECDSA_SIG_set0(es, r, s)) {
            ECDSA_SIG_free(es);
            BN_free(r);
            BN_free(s);
            return 0;
        }
        int dl = i2d_ECDSA_SIG(es, NULL);
        unsigned char *p = der;
        if (dl <= 0 || (size_t)dl > sizeof(der) || i2d_ECDSA_SIG(es, &p) != dl) {
            ECDSA_SIG_free(es);
            return 0;
        }
        ECDSA_SIG_free(es);
        vsig = der;
        vlen = (size_t)dl;
    }
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    int ok = m && EVP_DigestVerifyInit(m, NULL, pkey_md(is->alg), NULL, is->pkey_) == 1 &&
             EVP_DigestVerify(m, vsig, vlen, (const unsigned char *)signing_input, n) == 1;
    EVP_MD_CTX_free(m);
    return ok;
}

static int signature_ok(const gwjwt_issuer_t *is, const char *signing_input, size_t n,
                        const unsigned char *sig, size_t sig_len)
{
    return is_hmac(is->alg) ? hmac_ok(is, signing_input, n, sig, sig_len)
                            : pkey_ok(is, signing_input, n, sig, sig_len);
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
    if (!dot2 || memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token))) return GWJWT_E_MALFORMED;
    size_t hlen = (size_t)(dot1 - token), plen = (size_t)(dot2 - dot1 - 1);
    size_t slen = len - (size_t)(dot2 + 1 - token);
    if (!hlen || !plen || !slen) return GWJWT_E_MALFORMED;

    /* One buffer for the decoded header, payload and signature, and a NUL-ended copy. */
    unsigned char buf[GWJWT_MAX_TOKEN];
    char copy[GWJWT_MAX_TOKEN + 1];
    int copied = 0;
    unsigned char *hdr = buf, *pay, *sig;
    long hn = b64url_decode(token, hlen, hdr);
    if (hn <= 0 || hn > GWJWT_MAX_HEADER) return GWJWT_E_MALFORMED;
    pay = hdr + hn;
    long pn = b64url_decode(dot1 + 1, plen, pay);
    if (pn <= 0) return GWJWT_E_MALFORMED;
    sig = pay + pn;
    long sn = b64url_decode(dot2 + 1, slen, sig);
    if (sn <= 0) return GWJWT_E_MALFORMED;

    int rc;
    cJSON *header = parse_object(hdr, (size_t)hn), *claims = NULL;
    if (!header) {
        rc = GWJWT_E_MALFORMED;
        goto fail;
    }
    /* Critical extensions are not understood here (RFC 7515 4.1.11). */
    if (cJSON_GetObjectItemCaseSensitive(header, "crit")) {
        rc = GWJWT_E_MALFORMED;
        goto fail;
    }

    /* The signature before the payload is even parsed: with the key of every entry configured
     * for exactly the header's alg (usually one). Nothing unsigned costs more than that. */
    const cJSON *alg = cJSON_GetObjectItemCaseSensitive(header, "alg");
    const char *signing_input = token;
    size_t si_len = (size_t)(dot2 - token);
    uint64_t signed_by = 0;
    int alg_known = 0;
    for (size_t i = 0; cJSON_IsString(alg) && i < c->n; i++)
        if (strcmp(alg->valuestring, gwjwt_alg_name(c->issuers[i].alg)) == 0) {
            alg_known = 1;
            if (signature_ok(&c->issuers[i], signing_input, si_len, sig, (size_t)sn))
                signed_by |= (uint64_t)1 << i;
        }
    if (!alg_known || !signed_by) {
        rc = alg_known ? GWJWT_E_SIGNATURE : GWJWT_E_ALG;
        goto fail;
    }

    /* The issuer picks the entry, which must be one whose key signed. */
    if (!(claims = parse_object(pay, (size_t)pn))) {
        rc = GWJWT_E_MALFORMED;
        goto fail;
    }
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
    if (!(signed_by & ((uint64_t)1 << idx))) {
        rc = strcmp(alg->valuestring, gwjwt_alg_name(is->alg)) ? GWJWT_E_ALG : GWJWT_E_SIGNATURE;
        goto fail;
    }

    /* libjwt's opinion too, with the entry's key; it must have used the entry's alg. */
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
        for (const cJSON *x = m->child; x; x = x->next)
            out->models[out->n_models++] = x->valuestring;
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
    case GWJWT_OK:
        return "ok";
    case GWJWT_E_MALFORMED:
        return "jwt_malformed";
    case GWJWT_E_ALG:
        return "jwt_alg";
    case GWJWT_E_SIGNATURE:
        return "jwt_signature";
    case GWJWT_E_EXPIRED:
        return "jwt_expired";
    case GWJWT_E_NOT_YET_VALID:
        return "jwt_not_yet_valid";
    case GWJWT_E_ISSUED_FUTURE:
        return "jwt_not_yet_valid"; /* iat in the future */
    case GWJWT_E_ISSUER:
        return "jwt_issuer";
    case GWJWT_E_AUDIENCE:
        return "jwt_audience";
    case GWJWT_E_TENANT:
        return "jwt_tenant";
    case GWJWT_E_TENANT_NOT_BOUND:
        return "jwt_tenant_not_bound";
    case GWJWT_E_NO_EXP:
        return "jwt_malformed"; /* a required claim is missing */
    case GWJWT_E_CLAIM_TYPE:
        return "jwt_malformed";
    default:
        return "other";
    }
}

/* ------------------------------------------------------------------ credential header */
