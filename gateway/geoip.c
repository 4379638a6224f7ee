/* GeoIP: the country of an address, from MaxMind DB files (site databases first).
 *
 * libmaxminddb maps each file (MMDB_MODE_MMAP) and its lookups only read: one gw_geoip_t is
 * shared by every thread. A database that fails to open, an address that no database knows and
 * a failed lookup are all distinct answers, so the caller can fail closed and say why. */
#include "geoip.h"

#include <maxminddb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct gw_geoip {
    size_t n;
    MMDB_s *dbs;
    char **paths;
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
    free(g);
}

gw_geoip_t *gw_geoip_open(const char *const *paths, size_t n, size_t *bad, char *err, size_t errlen)
{
    *bad = 0;
    gw_geoip_t *g = calloc(1, sizeof(*g));
    if (!g || !(g->dbs = calloc(n ? n : 1, sizeof(*g->dbs))) ||
        !(g->paths = calloc(n ? n : 1, sizeof(*g->paths)))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        *bad = i;
        int rc = MMDB_open(paths[i], MMDB_MODE_MMAP, &g->dbs[i]);
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
        if (d.type != MMDB_DATA_TYPE_UTF8_STRING || d.data_size != 2 ||
            d.utf8_string[0] < 'A' || d.utf8_string[0] > 'Z' || d.utf8_string[1] < 'A' ||
            d.utf8_string[1] > 'Z') {
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
