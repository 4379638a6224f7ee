/* cJSON memory: request bodies are parsed into the request's arena, not the heap. */
#ifndef GW_JSON_H
#define GW_JSON_H

#include <cjson/cJSON.h>

#include "base/arena.h"

/* Installs the allocation hooks (once, at start). */
void gw_json_init(void);
/* Parses len bytes into nodes taken from arena (freed with it; cJSON_Delete is harmless). */
cJSON *gw_json_parse(gw_arena_t *arena, const char *p, size_t len, const char **end);
/* The same with at most budget bytes taken from arena (node and string sizes, with their
 * tags): past it the parse fails and *over is set to 1. */
cJSON *gw_json_parse_bounded(gw_arena_t *arena, const char *p, size_t len, const char **end,
                             size_t budget, int *over);

#endif
