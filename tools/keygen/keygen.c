/* gotthard-keygen: a new API key and the config line holding its SHA-256 digest. */
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <string.h>

#define KEY_BYTES 32

static void usage(FILE *f)
{
    fprintf(f, "usage: gotthard-keygen [--tenant ID] [--id KEY_ID]\n"
               "Prints a new API key (gk_ + 32 random bytes, base64url) on the first line and the\n"
               "entry for the tenant's \"api_keys\" on the second. Only the digest goes in the config.\n");
}

static int id_ok(const char *s)
{
    if (!*s || strlen(s) > 128) return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '-' || *s == '_' || *s == '.'))
            return 0;
    return 1;
}

int main(int argc, char **argv)
{
    const char *tenant = NULL, *id = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--tenant") == 0 && i + 1 < argc) tenant = argv[++i];
        else if (strcmp(argv[i], "--id") == 0 && i + 1 < argc) id = argv[++i];
        else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if ((tenant && !id_ok(tenant)) || (id && !id_ok(id))) {
        fprintf(stderr, "gotthard-keygen: ids hold only letters, digits, '-', '_' and '.'\n");
        return 2;
    }
    unsigned char raw[KEY_BYTES];
    if (RAND_bytes(raw, sizeof(raw)) != 1) {
        fprintf(stderr, "gotthard-keygen: no randomness available\n");
        return 1;
    }
    unsigned char b64[64];
    int n = EVP_EncodeBlock(b64, raw, sizeof(raw));
    char key[80] = "gk_";
    size_t k = 3;
    for (int i = 0; i < n; i++) {
        char ch = (char)b64[i];
        if (ch == '=') break;
        key[k++] = ch == '+' ? '-' : ch == '/' ? '_' : ch;
    }
    key[k] = '\0';
    unsigned char d[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)key, k, d);
    char hex[2 * SHA256_DIGEST_LENGTH + 1];
    for (size_t i = 0; i < sizeof(d); i++) snprintf(hex + 2 * i, 3, "%02x", d[i]);
    char kid[160];
    if (id) snprintf(kid, sizeof(kid), "%s", id);
    else {
        char suffix[9];
        snprintf(suffix, sizeof(suffix), "%.8s", hex);
        snprintf(kid, sizeof(kid), "%s-%s", tenant ? tenant : "key", suffix);
    }
    printf("%s\n{\"id\": \"%s\", \"sha256\": \"%s\"}\n", key, kid, hex);
    OPENSSL_cleanse(raw, sizeof(raw));
    OPENSSL_cleanse(key, sizeof(key));
    return 0;
}
