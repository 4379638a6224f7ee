/* The privacy plugin's own calls, for its unit test and fuzz target (never the core's). */
#ifndef GW_PRIVACY_H
#define GW_PRIVACY_H

#include <gotthard/plugin.h>

/* HMAC-SHA256(salt, tenant "\n" user) as 64 lowercase hex digits and a NUL: the value a
 * hashed user field gets. Returns 0, or -1. */
int gw_privacy_hash_user(const void *state, const char *tenant, const char *user, char out[65]);

/* The request body's user fields ("user", "safety_identifier") as configured, changed in place:
 * kept, dropped, or a string replaced by its hash (other values dropped). tenant may be NULL.
 * Returns 1 when json had one, 0 when not (or user_field is keep), -1 when out of memory. */
int gw_privacy_user_field(const void *state, const char *tenant, cJSON *json);

#endif
