/* JWT verification for auth_jwt: the config entries and the token checks, pure and clock-injected.
 */
#ifndef GWJWT_VERIFY_H
#define GWJWT_VERIFY_H

#include <stddef.h>
#include <time.h>
#include <cjson/cJSON.h>

/* Longest token accepted (bytes of the compact serialisation). */
#define GWJWT_MAX_TOKEN 8192
/* Shortest HMAC secret (bytes). */
#define GWJWT_MIN_SECRET 32
/* Longest decoded JOSE header accepted (bytes): it is parsed before the signature is checked. */
#define GWJWT_MAX_HEADER 2048
/* Longest tenant claim value accepted (bytes). */
#define GWJWT_MAX_TENANT 256

/* The algorithms a config entry may name; the token's header must carry exactly this one. */
typedef enum {
    GWJWT_RS256 = 1,
    GWJWT_RS384,
    GWJWT_RS512,
    GWJWT_ES256,
    GWJWT_ES384,
    GWJWT_HS256,
    GWJWT_HS384,
    GWJWT_HS512,
} gwjwt_alg_t;

/* One trusted issuer ("jwt": [{...}, ...]). */
typedef struct gwjwt_issuer {
    char *issuer;       /* "iss" must equal this exactly */
    char *audience;     /* "aud" must equal it, or (an array) contain it */
    char *tenant_claim; /* the claim naming the tenant (a non-empty string) */
    gwjwt_alg_t alg;
    unsigned char *key; /* PEM of the public key (RS/ES), or the secret's bytes (HS): secret */
    size_t key_len;
    void *pkey_;    /* private: the parsed public key (EVP_PKEY), RS/ES */
    long leeway_s;  /* 0..300, default 30 */
    char **tenants; /* the tenants this issuer may name ("tenants"); NULL: any (one issuer only) */
    size_t ntenants;
} gwjwt_issuer_t;

typedef struct gwjwt_conf {
    gwjwt_issuer_t *issuers;
    size_t n;
} gwjwt_conf_t;

/* Where configuration problems go: a JSON path such as "$.jwt[0].algorithm" and a message
 * (which never holds a secret). */
typedef void (*gwjwt_err_fn)(void *arg, const char *path, const char *msg);

/*
 * Parses the "jwt" array (at JSON path `path`, e.g. "$.jwt") into a new config, reading the key
 * files (paths as written, relative to the working directory). Key files:
 *   RS256/384/512: a PEM public key ("BEGIN PUBLIC KEY"), RSA of at least 2048 bits.
 *   ES256/ES384:   a PEM public key on P-256 / P-384.
 *   HS256/384/512: the secret's bytes, at least 32; if the file is text (printable ASCII) one
 *                  trailing newline ("\n" or "\r\n") is not part of the secret.
 * "tenants" (an array of 1..100000 distinct non-empty strings) binds the entry to the tenants
 * its tokens may name; it is required when more than one entry is configured, so that one
 * identity provider can never speak for another's tenants.
 * Returns 0 with *out set, or -1 after reporting every problem through err.
 */
int gwjwt_conf_parse(const cJSON *jwt, const char *path, gwjwt_err_fn err, void *err_arg,
                     gwjwt_conf_t **out);
/* Frees a config (secrets are wiped first). NULL is fine. */
void gwjwt_conf_free(gwjwt_conf_t *c);

const char *gwjwt_alg_name(gwjwt_alg_t alg);
/* The algorithm of this exact name (case-sensitive, as JWS defines them), or 0. */
gwjwt_alg_t gwjwt_alg_parse(const char *name);

/* What a verified token says. Owned by the result: release with gwjwt_result_free. */
typedef struct gwjwt_result {
    size_t issuer;      /* index into conf->issuers */
    const char *tenant; /* the tenant claim's value */
    int has_models;     /* 1 when the token carries a "models" claim (may be empty) */
    const char **models;
    size_t n_models;
    cJSON *claims_; /* private: what tenant and models point into */
} gwjwt_result_t;

void gwjwt_result_free(gwjwt_result_t *res);

/* Why a token was refused. */
enum {
    GWJWT_OK = 0,
    GWJWT_E_MALFORMED = -1,     /* size, segments, base64url, JSON, duplicate keys, "crit" */
    GWJWT_E_ALG = -2,           /* header "alg" missing or not the configured one ("none"...) */
    GWJWT_E_SIGNATURE = -3,     /* the signature does not verify with the configured key */
    GWJWT_E_EXPIRED = -4,       /* now > exp + leeway */
    GWJWT_E_NOT_YET_VALID = -5, /* now + leeway < nbf */
    GWJWT_E_ISSUED_FUTURE = -6, /* iat > now + leeway */
    GWJWT_E_ISSUER = -7,        /* no "iss", or no entry for it */
    GWJWT_E_AUDIENCE = -8,      /* "aud" missing or without our audience */
    GWJWT_E_TENANT = -9,        /* the tenant claim is missing, empty, too long or not a string */
    GWJWT_E_NO_EXP = -10,       /* "exp" missing or not a number */
    GWJWT_E_CLAIM_TYPE = -11,   /* "nbf"/"iat" not numbers, "models" not an array of strings */
    GWJWT_E_INTERNAL = -12,     /* out of memory or a library failure */
    GWJWT_E_TENANT_NOT_BOUND = -13, /* the tenant claim names a tenant not in the entry's tenants */
};

/*
 * Verifies a compact JWS `token` of `len` bytes (need not be NUL-terminated) at time `now`.
 * Order: shape (size, three base64url segments, a header of at most GWJWT_MAX_HEADER bytes that
 * is a JSON object without duplicate keys or "crit") → the signature, checked with the key of
 * each entry configured for exactly the header's "alg" (never "none", never an alg from the
 * token) → the payload (a JSON object, no duplicate keys) → the entry named by "iss", which
 * must be one whose key signed → libjwt's jwt_decode with that key, and jwt_get_alg equal to
 * the entry's (libjwt issue 33) → exp/nbf/iat with the entry's leeway → aud → tenant (one of
 * the entry's tenants when it lists them) → models.
 * Unauthenticated input thus costs at most a header parse and one signature check per entry.
 * Returns GWJWT_OK with *out filled (free it with gwjwt_result_free), or a GWJWT_E_* code with
 * *out empty. Nothing is fetched: jku, x5u, x5c, jwk and kid are ignored.
 */
int gwjwt_verify(const gwjwt_conf_t *c, const char *token, size_t len, time_t now,
                 gwjwt_result_t *out);

/* The reason string for the audit log and metrics ("jwt_expired", ...). */
const char *gwjwt_reason(int rc);

/* 1 when a credential is JWT territory: two '.' or more (as auth_apikey leaves them; three or
 * more are then refused as malformed by gwjwt_verify), else 0. */
int gwjwt_is_jwt_shaped(const char *cred, size_t len);

/*
 * The credential in a header value, as the core's gw_req_credential finds it:
 *   authorization: "Bearer" (any case), one or more spaces/tabs, then the credential;
 *   api-key:       the value itself.
 * Leading and trailing spaces/tabs are trimmed; the credential must be non-empty and hold only
 * visible ASCII (0x21..0x7e). `is_authorization` picks the header. Returns 0 with *cred and
 * *cred_len pointing into `value`, or -1.
 */

#endif
