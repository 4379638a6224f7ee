/* TLS contexts: listeners (TLS 1.2 and up) and verified connections to https backends. */
#include "base/tls.h"

#include <arpa/inet.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* Session-ticket keys. OpenSSL 3 makes one random ticket key per SSL_CTX and keeps it for the
 * context's life (until the next reload): a key stolen from memory would open every ticket,
 * and with TLS 1.2 a ticket holds the session's master secret, so every recorded session that
 * issued one. Each listener's context gets its own ring instead: a current key (RAND_bytes)
 * that seals new tickets for rotate_s, then the previous key that only opens tickets (which
 * are then renewed under the current one) until it is 2 * rotate_s old and wiped. Rotation
 * happens on the first handshake after the interval, which is when a key would be used. TLS
 * 1.3's tickets go through the same callback; resuming one there also runs a fresh (EC)DHE
 * (OpenSSL refuses psk_ke without SSL_OP_ALLOW_NO_DHE_KEX) and 0-RTT stays off, so a stolen
 * key does not open resumed TLS 1.3 traffic, but the rotation bounds it all the same. */
typedef struct ticket_key {
    unsigned char name[16], aes[32], hmac[32];
    int64_t born_ms;
    int set;
} ticket_key_t;

typedef struct ticket_ring {
    pthread_mutex_t mu; /* workers' handshakes share the listener's context */
    ticket_key_t cur, prev;
    int64_t rotate_ms;
} ticket_ring_t;

static int ring_index = -1;
static pthread_once_t ring_once = PTHREAD_ONCE_INIT;

static void ring_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    ticket_ring_t *r = ptr;
    if (!r) return;
    pthread_mutex_destroy(&r->mu);
    OPENSSL_clear_free(r, sizeof(*r));
}

static void ring_index_init(void)
{
    ring_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, ring_free);
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Under r->mu: a new current key when it is due, the previous one wiped when too old. */
static int ring_rotate(ticket_ring_t *r, int64_t now)
{
    if (!r->cur.set || now - r->cur.born_ms >= r->rotate_ms) {
        ticket_key_t k = {.born_ms = now, .set = 1};
        if (RAND_bytes(k.name, sizeof(k.name)) != 1 || RAND_bytes(k.aes, sizeof(k.aes)) != 1 ||
            RAND_bytes(k.hmac, sizeof(k.hmac)) != 1) {
            OPENSSL_cleanse(&k, sizeof(k));
            return -1;
        }
        r->prev = r->cur;
        r->cur = k;
        OPENSSL_cleanse(&k, sizeof(k));
    }
    if (r->prev.set && now - r->prev.born_ms >= 2 * r->rotate_ms)
        OPENSSL_cleanse(&r->prev, sizeof(r->prev));
    return 0;
}

/* OpenSSL's ticket key callback: enc 1 seals a new ticket under the current key (1); enc 0
 * opens one under the current key (1), the previous (2: renew it) or none (0: full handshake);
 * -1 on an error. */
static int ticket_cb(SSL *s, unsigned char name[16], unsigned char *iv, EVP_CIPHER_CTX *cctx,
                     EVP_MAC_CTX *hctx, int enc)
{
    ticket_ring_t *r = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(s), ring_index);
    if (!r) return -1;
    pthread_mutex_lock(&r->mu);
    const ticket_key_t *k = NULL;
    int rc = ring_rotate(r, mono_ms()) < 0 ? -1 : 0;
    if (rc == 0 && enc) {
        k = &r->cur;
        memcpy(name, k->name, sizeof(k->name));
        rc = RAND_bytes(iv, EVP_CIPHER_get_iv_length(EVP_aes_256_cbc())) == 1 ? 1 : -1;
    } else if (rc == 0) {
        if (r->cur.set && CRYPTO_memcmp(name, r->cur.name, sizeof(r->cur.name)) == 0)
            k = &r->cur, rc = 1;
        else if (r->prev.set && CRYPTO_memcmp(name, r->prev.name, sizeof(r->prev.name)) == 0)
            k = &r->prev, rc = 2;
    }
    if (rc > 0) {
        char digest[] = "SHA256";
        OSSL_PARAM params[] = {
            OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, (void *)k->hmac, sizeof(k->hmac)),
            OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
            OSSL_PARAM_construct_end()};
        int ok = EVP_MAC_CTX_set_params(hctx, params) == 1 &&
                 (enc ? EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k->aes, iv)
                      : EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k->aes, iv)) == 1;
        if (!ok) rc = -1;
    }
    pthread_mutex_unlock(&r->mu);
    return rc;
}

/* Gives ctx its own rotating ticket keys: 0, or -1. */
static int ticket_keys(SSL_CTX *ctx, int64_t rotate_s)
{
    pthread_once(&ring_once, ring_index_init);
    if (ring_index < 0) return -1;
    ticket_ring_t *r = OPENSSL_zalloc(sizeof(*r));
    if (!r) return -1;
    r->rotate_ms = (rotate_s > 0 ? rotate_s : GW_TLS_TICKET_ROTATE_S) * 1000;
    if (pthread_mutex_init(&r->mu, NULL) != 0) {
        OPENSSL_free(r);
        return -1;
    }
    if (SSL_CTX_set_ex_data(ctx, ring_index, r) != 1) {
        ring_free(NULL, r, NULL, 0, 0, NULL);
        return -1;
    }
    return SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_cb) == 1 ? 0 : -1;
}

void gw_tls_init(void)
{
    OPENSSL_init_ssl(OPENSSL_INIT_LOAD_SSL_STRINGS | OPENSSL_INIT_LOAD_CRYPTO_STRINGS, NULL);
}

static void last_error(char *err, size_t errlen, const char *what)
{
    unsigned long e = ERR_get_error();
    char buf[256] = "unknown error";
    if (e) ERR_error_string_n(e, buf, sizeof(buf));
    snprintf(err, errlen, "%s: %s", what, buf);
    ERR_clear_error();
}

SSL_CTX *gw_tls_server_ctx(const char *cert, const char *key, int64_t ticket_rotate_s, char *err,
                           size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        last_error(err, errlen, "cannot create a TLS context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        last_error(err, errlen, "cannot load the certificate");
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        last_error(err, errlen, "cannot load the private key");
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        last_error(err, errlen, "the key does not match the certificate");
        goto fail;
    }
    if (ticket_keys(ctx, ticket_rotate_s) < 0) {
        last_error(err, errlen, "cannot set up session-ticket keys");
        goto fail;
    }
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

SSL_CTX *gw_tls_client_ctx(const char *ca_file, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        last_error(err, errlen, "cannot create a TLS context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    int ok = ca_file ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL)
                     : SSL_CTX_set_default_verify_paths(ctx);
    if (ok != 1) {
        last_error(err, errlen, "cannot load the CA certificates");
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

SSL *gw_tls_client_ssl(SSL_CTX *ctx, const char *host)
{
    SSL *ssl = SSL_new(ctx);
    if (!ssl) return NULL;
    unsigned char tmp[16];
    int is_ip = inet_pton(AF_INET, host, tmp) == 1 || inet_pton(AF_INET6, host, tmp) == 1;
    if (is_ip) {
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host);
    } else {
        SSL_set_tlsext_host_name(ssl, host);
        if (SSL_set1_host(ssl, host) != 1) {
            SSL_free(ssl);
            return NULL;
        }
    }
    return ssl;
}
