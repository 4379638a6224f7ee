/* GeoIP: the country of an address, from MaxMind DB files (site databases first).
 *
 * Each file is read once, at open, into a private copy (a sealed memfd, unlinked, that
 * libmaxminddb then maps read-only through /proc/self/fd): the bytes that were checked and
 * digested are the ones every lookup reads until the next reload. The file may then be
 * truncated or rewritten in place (cp over it) without a fault (SIGBUS on a shared mapping of a
 * shrunk file) and without a verdict changing under a digest that says otherwise. Lookups only
 * read: one gw_geoip_t is shared by every thread. A database that fails to open, an address
 * that no database knows and a failed lookup are all distinct answers, so the caller can fail
 * closed and say why. */
#include "base/geoip.h"

#include <errno.h>
#include <fcntl.h>
#include <maxminddb.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct gw_geoip {
    size_t n;
    MMDB_s *dbs;
    char **paths;
    unsigned char (*sha256)[32]; /* of each copy */
};

void gw_geoip_close(gw_geoip_t *g)
{
    if (!g) return;
    for (size_t i = 0; i < g->n; i++) {
        if (g->dbs[i].filename) MMDB_close(&g->dbs[i]);
        free(g->paths[i]);
    }
    free(g->dbs);
    free(g->paths);
    free(g->sha256);
    free(g);
}

/* The file's bytes into a new memfd, sealed, and their SHA-256: the fd, or -1 with err. The
 * digest is taken of the copy itself, after the read: the bytes named are the bytes used. */
static int private_copy(const char *path, unsigned char sha[32], char *err, size_t errlen)
{
    int in = open(path, O_RDONLY | O_CLOEXEC);
    if (in < 0) {
        snprintf(err, errlen, "cannot load the database %s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    int fd = -1;
    unsigned char *map = MAP_FAILED;
    size_t size = 0, have = 0;
    unsigned int dl = 0;
    int ok = fstat(in, &st) == 0 && st.st_size > 0 && (size = (size_t)st.st_size) > 0 &&
             (fd = memfd_create("gotthard-geoip", MFD_CLOEXEC | MFD_ALLOW_SEALING)) >= 0 &&
             ftruncate(fd, st.st_size) == 0 &&
             (map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)) != MAP_FAILED;
    while (ok && have < size) {
        ssize_t k = read(in, map + have, size - have);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0)
            ok = 0; /* a read error, or the file shrank while read */
        else
            have += (size_t)k;
    }
    ok = ok && EVP_Digest(map, size, sha, &dl, EVP_sha256(), NULL) && dl == 32;
    if (map != MAP_FAILED) munmap(map, size);
    /* Nobody writes the copy any more, not even this process. */
    ok =
        ok && fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) == 0;
    close(in);
    if (!ok) {
        snprintf(err, errlen, "cannot load the database %s: cannot read it into a private copy",
                 path);
        if (fd >= 0) close(fd);
        return -1;
    }
    return fd;
}

gw_geoip_t *gw_geoip_open(const char *const *paths, size_t n, size_t *bad, char *err, size_t errlen)
{
    *bad = 0;
    gw_geoip_t *g = calloc(1, sizeof(*g));
    if (!g || !(g->dbs = calloc(n ? n : 1, sizeof(*g->dbs))) ||
        !(g->paths = calloc(n ? n : 1, sizeof(*g->paths))) ||
        !(g->sha256 = calloc(n ? n : 1, sizeof(*g->sha256)))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        *bad = i;
        int fd = private_copy(paths[i], g->sha256[i], err, errlen);
        if (fd < 0) goto fail;
        char proc[64];
        snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
        int rc = MMDB_open(proc, MMDB_MODE_MMAP, &g->dbs[i]);
        close(fd); /* the mapping keeps the copy */
        if (rc != MMDB_SUCCESS) {
            snprintf(err, errlen, "cannot load the database %s: %s", paths[i], MMDB_strerror(rc));
            memset(&g->dbs[i], 0, sizeof(g->dbs[i]));
            g->n = i;
            goto fail;
        }
        g->n = i + 1;
        if (!(g->paths[i] = strdup(paths[i]))) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
    }
    return g;
fail:
    gw_geoip_close(g);
    return NULL;
}

const unsigned char *gw_geoip_sha256(const gw_geoip_t *g, size_t i)
{
    return i < g->n ? g->sha256[i] : NULL;
}

int gw_geoip_lookup(const gw_geoip_t *g, const struct sockaddr *sa, char cc[3], const char **source,
                    char *err, size_t errlen)
{
    cc[0] = '\0';
    for (size_t i = 0; i < g->n; i++) {
        int mmerr = MMDB_SUCCESS;
        MMDB_lookup_result_s res = MMDB_lookup_sockaddr(&g->dbs[i], sa, &mmerr);
        if (mmerr != MMDB_SUCCESS) {
            snprintf(err, errlen, "lookup in %s failed: %s", g->paths[i], MMDB_strerror(mmerr));
            return GW_GEOIP_ERROR;
        }
        if (!res.found_entry) continue;
        MMDB_entry_data_s d;
        int rc = MMDB_get_value(&res.entry, &d, "country", "iso_code", NULL);
        if (rc == MMDB_LOOKUP_PATH_DOES_NOT_MATCH_DATA_ERROR || (rc == MMDB_SUCCESS && !d.has_data))
            continue; /* this database has the network but no country for it */
        if (rc != MMDB_SUCCESS) {
            snprintf(err, errlen, "lookup in %s failed: %s", g->paths[i], MMDB_strerror(rc));
            return GW_GEOIP_ERROR;
        }
        if (d.type != MMDB_DATA_TYPE_UTF8_STRING || d.data_size != 2 || d.utf8_string[0] < 'A' ||
            d.utf8_string[0] > 'Z' || d.utf8_string[1] < 'A' || d.utf8_string[1] > 'Z') {
            snprintf(err, errlen, "%s holds a country that is not an ISO 3166 alpha-2 code",
                     g->paths[i]);
            return GW_GEOIP_ERROR;
        }
        cc[0] = d.utf8_string[0];
        cc[1] = d.utf8_string[1];
        cc[2] = '\0';
        if (source) *source = g->paths[i];
        return GW_GEOIP_FOUND;
    }
    return GW_GEOIP_UNKNOWN;
}
