/* libFuzzer target for the config loader (gateway/config.c, the table-driven gateway/conf.c and
 * the built-in plugins' config parsers), loading from text with GW_CONFIG_OFFLINE.
 *
 * The input is a config file. The loader must not reach out while fuzzing: the library calls
 * that would are wrapped (-Wl,--wrap) and, while a config loads, a name resolution that is not
 * numeric, a plugin loaded, a GeoIP database opened or a TLS file read aborts (GW_CONFIG_OFFLINE
 * promises none), and every file a built-in plugin opens (a JWT key, a hash salt) is refused.
 * Outside a load they pass (libFuzzer itself writes its corpus and findings with fopen).
 *
 * Besides "no crash, no leak, no undefined behaviour, nothing read past the text" (it sits
 * against an unreadable page): a config either loads, and then is whole (listeners, pools with
 * models and backends, each model routed to its own pool, tenants found by id, the models list
 * valid JSON, values within their bounds) and gw_config_unref frees all of it; or it is refused
 * with error lines, each "$...: message".
 */
#include <errno.h>
#include <netdb.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <maxminddb.h>
#include <openssl/ssl.h>

#include "guarded.h"
#include "config/config.h"
#include "config/load.h"
#include "base/json.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int loading; /* a config is being loaded: the outside is closed */

/* ------------------------------------------------------------------ the outside, wrapped */

FILE *__real_fopen(const char *path, const char *mode);
FILE *__wrap_fopen(const char *path, const char *mode);
int __real_getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                       struct addrinfo **res);
int __wrap_getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                       struct addrinfo **res);
void *__wrap_dlopen(const char *file, int mode);
int __wrap_MMDB_open(const char *file, uint32_t flags, MMDB_s *mmdb);
int __wrap_SSL_CTX_use_certificate_chain_file(SSL_CTX *ctx, const char *file);
int __wrap_SSL_CTX_load_verify_locations(SSL_CTX *ctx, const char *file, const char *dir);
int __wrap_SSL_CTX_set_default_verify_paths(SSL_CTX *ctx);

FILE *__wrap_fopen(const char *path, const char *mode)
{
    if (!loading) return __real_fopen(path, mode);
    errno = EACCES;
    return NULL;
}

int __wrap_getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                       struct addrinfo **res)
{
    check(!loading || (hints && (hints->ai_flags & AI_NUMERICHOST))); /* never DNS */
    return __real_getaddrinfo(node, service, hints, res);
}

void *__wrap_dlopen(const char *file, int mode)
{
    (void)file;
    (void)mode;
    abort();
}

int __wrap_MMDB_open(const char *file, uint32_t flags, MMDB_s *mmdb)
{
    (void)file;
    (void)flags;
    (void)mmdb;
    abort();
}

int __wrap_SSL_CTX_use_certificate_chain_file(SSL_CTX *ctx, const char *file)
{
    (void)ctx;
    (void)file;
    abort();
}

int __wrap_SSL_CTX_load_verify_locations(SSL_CTX *ctx, const char *file, const char *dir)
{
    (void)ctx;
    (void)file;
    (void)dir;
    abort();
}

int __wrap_SSL_CTX_set_default_verify_paths(SSL_CTX *ctx)
{
    (void)ctx;
    abort();
}

/* ------------------------------------------------------------------ the checks */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    gw_json_init();
    setenv("FUZZ_CONFIG_SALT", "fuzz-config-salt-0123456789abcdef", 1); /* privacy's hash salt */
    return 0;
}

static int upper2(const char *s)
{
    return s && s[0] >= 'A' && s[0] <= 'Z' && s[1] >= 'A' && s[1] <= 'Z' && !s[2];
}

static void check_loaded(gw_config_t *c)
{
    check(c->workers >= 1 && c->workers <= 256);
    check(c->limits.max_headers >= 8 && c->limits.max_headers <= 1000);
    check(c->limits.max_header_bytes >= 1024 && c->limits.max_body_bytes >= 1024);
    check(c->limits.max_memory_bytes >= 0);
    check(c->listen.n >= 1);
    gw_listen_t *ls = c->listen.items;
    for (size_t i = 0; i < c->listen.n; i++) check(ls[i].address && ls[i].sslen && !ls[i].ssl);
    check(c->admin.address && c->admin.sslen);
    check(c->pools.n >= 1);
    gw_pool_t *pools = c->pools.items;
    size_t nb = 0, nmodels = 0;
    for (size_t i = 0; i < c->pools.n; i++) {
        gw_pool_t *p = &pools[i];
        check(p->name && p->name[0] && p->models.n >= 1 && p->backends.n >= 1);
        check(p->algo >= GW_BAL_LEAST_OUTSTANDING && p->algo <= GW_BAL_QUEUE_AWARE);
        check(p->metrics.path && p->metrics.path[0] == '/');
        char **models = p->models.items;
        for (size_t m = 0; m < p->models.n; m++) check(gw_config_pool_for_model(c, models[m]) == p);
        for (size_t a = 0; a < p->naliases; a++)
            check(gw_config_pool_for_model(c, p->alias_from[a]) == p && p->alias_to[a][0]);
        nmodels += p->models.n + p->naliases;
        gw_backend_t *bs = p->backends.items;
        for (size_t j = 0; j < p->backends.n; j++, nb++) {
            gw_backend_t *b = &bs[j];
            check(b->pool == p && c->backends[b->index] == b);
            check(b->host && b->host[0] && b->port && b->name && upper2(b->country));
            check(b->weight >= 1 && b->max_concurrent >= 0);
            /* offline: no address, no key, no TLS context */
            check(!b->ssl && !b->auth_line && !atomic_load(&b->res));
        }
    }
    check(nb == c->nbackends);
    gw_tenant_t *ts = c->tenants.items;
    for (size_t i = 0; i < c->tenants.n; i++) {
        check(ts[i].id && gw_config_tenant(c, ts[i].id) == &ts[i]);
        check(ts[i].models.n >= 1);
    }
    cJSON *models = cJSON_ParseWithLength(c->models_json, c->models_json_len);
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(models, "data");
    check(cJSON_IsArray(data) && (size_t)cJSON_GetArraySize(data) == nmodels);
    cJSON_Delete(models);
    check(c->nplugins >= 1); /* privacy is always on */
}

/* Lines "$...: message\n", at least one. */
static void check_errors(const char *e)
{
    check(e && *e);
    while (*e) {
        const char *nl = strchr(e, '\n');
        check(nl != NULL && e[0] == '$');
        const char *colon = strstr(e, ": ");
        check(colon && colon < nl && colon + 2 < nl);
        e = nl + 1;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > GW_FUZZ_AREA) return 0;
    char *text = gw_fuzz_guarded((const char *)data, size);
    char *errors = NULL;
    loading = 1;
    gw_config_t *c = gw_config_load_text(text, size, GW_CONFIG_OFFLINE, &errors);
    loading = 0;
    if (c) {
        check(errors == NULL);
        check_loaded(c);
        gw_config_unref(c);
    } else {
        check_errors(errors);
    }
    free(errors);
    return 0;
}
