/* The quota plugin's own calls, for its unit test and fuzz target (never the core's). */
#ifndef GW_QUOTA_H
#define GW_QUOTA_H

#include <gotthard/plugin.h>

/* The tokens a request reserves at admission: its body's bytes / 4, plus max_completion_tokens
 * (else max_tokens) when a count below 1e9, else 256; only the bytes / 4 for embeddings. At
 * least 1. json is the request body (may be NULL). */
int64_t gw_quota_estimate_tokens(size_t body_len, const cJSON *json, int embeddings);

#endif
