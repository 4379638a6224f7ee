/* TLS contexts: listeners (TLS 1.2 and up) and verified connections to https backends. */
#ifndef GW_TLS_H
#define GW_TLS_H

#include <openssl/ssl.h>
#include <stdint.h>

/* Session-ticket keys are replaced this often unless listen[].tls.ticket_key_rotate_s says;
 * the previous key still opens tickets for as long again. */
#define GW_TLS_TICKET_ROTATE_S 3600

void gw_tls_init(void);
/* Returns NULL and a reason in err on failure. ticket_rotate_s 0: GW_TLS_TICKET_ROTATE_S. */
SSL_CTX *gw_tls_server_ctx(const char *cert, const char *key, int64_t ticket_rotate_s, char *err,
                           size_t errlen);
SSL_CTX *gw_tls_client_ctx(const char *ca_file, char *err, size_t errlen);
/* A client SSL for one connection, checking the certificate against host. */
SSL *gw_tls_client_ssl(SSL_CTX *ctx, const char *host);

#endif
