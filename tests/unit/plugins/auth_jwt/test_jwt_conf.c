/* Unit tests of the auth_jwt plugin's config (plugins/auth_jwt/auth_jwt.c): off without "jwt",
 * issuers bound to configured tenants, and the parsed issuers freed with the config whether it
 * is taken or refused (ASan's leak check). */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "plugins/conf_load.h"

static char key_file[64];

/* "jwt": [issuer a, issuer b] (HS256, the key file), each with its tenants list (JSON text). */
static void jwt(char *out, size_t n, const char *tenants_a, const char *tenants_b)
{
    snprintf(
        out, n,
        "\"tenants\":[{\"id\":\"acme\",\"models\":[\"*\"]},{\"id\":\"beta\",\"models\":[\"*\"]}],"
        "\"jwt\":[{\"issuer\":\"https://a\",\"audience\":\"g\",\"algorithm\":\"HS256\","
        "\"key_file\":\"%s\",\"tenant_claim\":\"t\"%s},"
        "{\"issuer\":\"https://b\",\"audience\":\"g\",\"algorithm\":\"HS256\","
        "\"key_file\":\"%s\",\"tenant_claim\":\"t\"%s}]",
        key_file, tenants_a, key_file, tenants_b);
}

static void test_jwt(void)
{
    char text[2048];
    conf_taken("\"tenants\":[{\"id\":\"acme\",\"models\":[\"*\"]}]", "auth_jwt", 0);
    jwt(text, sizeof(text), ",\"tenants\":[\"acme\"]", ",\"tenants\":[\"beta\",\"acme\"]");
    conf_taken(text, "auth_jwt", 1);
    jwt(text, sizeof(text), ",\"tenants\":[\"acme\"]", ",\"tenants\":[\"beta\",\"nobody\"]");
    conf_refused(text, "$.jwt[1].tenants[1]: is not the id of a tenant in $.tenants");
    jwt(text, sizeof(text), ",\"tenants\":[\"acme\"]", "");
    conf_refused(text, "$.jwt[1].tenants: ");
    conf_refused("\"jwt\":{}", "$.jwt: ");
}

int main(void)
{
    snprintf(key_file, sizeof(key_file), "/tmp/gw-test-jwt-%ld.key", (long)getpid());
    FILE *f = fopen(key_file, "w");
    CHECK(f != NULL, "key file");
    if (f) {
        fputs("0123456789abcdef0123456789abcdef0123456789abcdef\n", f);
        fclose(f);
        test_jwt();
    }
    unlink(key_file);
    return check_done();
}
