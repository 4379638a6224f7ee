/* TLS contexts: listeners (TLS 1.2 and up) and verified connections to https backends. */
#ifndef GW_TLS_H
#define GW_TLS_H

#include <openssl/ssl.h>

void gw_tls_init(void);
/* Returns NULL and a reason in err on failure. */
SSL_CTX *gw_tls_server_ctx(const char *cert, const char *key, char *err, size_t errlen);
SSL_CTX *gw_tls_client_ctx(const char *ca_file, char *err, size_t errlen);
/* A client SSL for one connection, checking the certificate against host. */
SSL *gw_tls_client_ssl(SSL_CTX *ctx, const char *host);

#endif
