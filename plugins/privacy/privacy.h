/* The privacy plugin's report for the admin GET /privacy (the core links it in). */
#ifndef GW_PRIVACY_H
#define GW_PRIVACY_H

#include <gotthard/plugin.h>

extern const gw_plugin_t gw_plugin_privacy;

/* The effective settings of a configured privacy state, as a new JSON object (the salt
 * itself never: only where it comes from). NULL when out of memory. */
cJSON *gw_privacy_report(const void *state);

/* HMAC-SHA256(salt, tenant "\n" user) as 64 lowercase hex digits and a NUL: the value a
 * hashed user field gets. Returns 0, or -1. */
int gw_privacy_hash_user(const void *state, const char *tenant, const char *user, char out[65]);

#endif
