/* GeoIP: the country of an address, from MaxMind DB files (site databases first). */
#ifndef GW_GEOIP_H
#define GW_GEOIP_H

#include <stddef.h>
#include <sys/socket.h>

typedef struct gw_geoip gw_geoip_t;

/* Opens every database, in order: each file is read once into a private, sealed copy that the
 * lookups use until gw_geoip_close (the file changing afterwards changes nothing). On failure
 * returns NULL, names the database that failed in *bad (its index) and says why in err. */
gw_geoip_t *gw_geoip_open(const char *const *paths, size_t n, size_t *bad, char *err,
                          size_t errlen);
/* The SHA-256 (32 bytes) of database i's copy, the bytes the lookups read. */
const unsigned char *gw_geoip_sha256(const gw_geoip_t *g, size_t i);
void gw_geoip_close(gw_geoip_t *g);

enum { GW_GEOIP_FOUND = 1, GW_GEOIP_UNKNOWN = 0, GW_GEOIP_ERROR = -1 };

/* The first database that knows the address decides: cc gets its country (ISO 3166 alpha-2,
 * the GeoIP2 path country.iso_code) and *source that database's path. GW_GEOIP_UNKNOWN when no
 * database has a country for it; GW_GEOIP_ERROR (with err) when a lookup failed. Thread-safe. */
int gw_geoip_lookup(const gw_geoip_t *g, const struct sockaddr *sa, char cc[3], const char **source,
                    char *err, size_t errlen);

#endif
