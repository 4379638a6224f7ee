/* A table-driven JSON config loader: each module declares its keys once. */
#ifndef GW_CONF_H
#define GW_CONF_H

#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>

#include "base/arena.h"
#include "gotthard/plugin.h"

/* The table types (gw_conf_key_t, gw_conf_obj_t, gw_conf_list_t) and the loader's public calls
 * (gw_conf_load, gw_conf_load_some, gw_conf_error, gw_conf_alloc...) are in gotthard/plugin.h:
 * the core and the plugins read their config with the same tables. */

struct gw_conf_ctx {
    gw_arena_t *arena;
    char *errors; /* lines "path: message\n" */
    size_t errors_len, errors_cap;
    int nerrors;
    void *config;      /* the gw_config_t being loaded, when there is one */
    const cJSON *root; /* the whole config being loaded (gw_conf_root) */
    /* The tenant gw_conf_tenant gave last, in which list: the next is one step away. */
    const cJSON *tenant_list, *tenant_node;
    size_t tenant_index;
    const cJSON *count_list; /* the list gw_conf_tenant_count counted, and its count */
    size_t count;
};

void gw_conf_ctx_init(gw_conf_ctx_t *cx, gw_arena_t *arena);
void gw_conf_ctx_release(gw_conf_ctx_t *cx);
/* Config text parsed like cJSON_ParseWithLengthOpts (end: where it stopped), except that a
 * \u0000 escape or a raw NUL reads as U+0001, for gw_conf_check_strings to refuse. */
cJSON *gw_conf_parse(const char *text, size_t len, const char **end);
/* Whether a config string is valid UTF-8 without control characters (< 0x20, 0x7f). */
int gw_conf_string_ok(const char *s);
/* Every string and key under node, at any depth: 0, or -1 with an error at each bad one's path. */
int gw_conf_check_strings(gw_conf_ctx_t *cx, const cJSON *node, const char *path);

#endif
