/* A table-driven JSON config loader: each module declares its keys once. */
#ifndef GW_CONF_H
#define GW_CONF_H

#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>

#include "base/arena.h"
#include "gotthard/plugin.h"

typedef enum {
    GW_CT_INT,
    GW_CT_BOOL,
    GW_CT_STR,
    GW_CT_STRS,
    GW_CT_OBJ,
    GW_CT_OBJS,
    GW_CT_FN
} gw_conf_type_t;

enum { GW_CK_REQUIRED = 1 };

typedef struct gw_conf_key gw_conf_key_t;

typedef struct gw_conf_obj {
    size_t size;               /* of one item (GW_CT_OBJS) */
    const gw_conf_key_t *keys; /* ends with a NULL name */
    void (*init)(void *item);  /* defaults; may be NULL */
    /* A key not in the table that someone else parses (a built-in plugin): 1 to accept. */
    int (*owned_elsewhere)(const char *key);
} gw_conf_obj_t;

struct gw_conf_key {
    const char *name;
    gw_conf_type_t type;
    size_t offset;
    int64_t min, max; /* INT: bounds. STR: max length. STRS/OBJS: min and max count (max 0: any) */
    unsigned flags;
    const gw_conf_obj_t *obj;
    /* GW_CT_FN: parses the node itself. */
    int (*fn)(gw_conf_ctx_t *cx, const cJSON *node, const char *path, void *dst);
};

/* A list of strings (char *) or of objects (obj->size bytes each). */
typedef struct gw_conf_list {
    void *items;
    size_t n;
} gw_conf_list_t;

struct gw_conf_ctx {
    gw_arena_t *arena;
    char *errors; /* lines "path: message\n" */
    size_t errors_len, errors_cap;
    int nerrors;
    void *config; /* the gw_config_t being loaded, when there is one */
};

void gw_conf_ctx_init(gw_conf_ctx_t *cx, gw_arena_t *arena);
void gw_conf_ctx_release(gw_conf_ctx_t *cx);
int gw_conf_load_obj(gw_conf_ctx_t *cx, const cJSON *node, const char *path,
                     const gw_conf_obj_t *obj, void *dst);
/* path + "." + key, or path + "[i]", in the context's arena. */
char *gw_conf_path_key(gw_conf_ctx_t *cx, const char *path, const char *key);
char *gw_conf_path_index(gw_conf_ctx_t *cx, const char *path, size_t i);
/* Config text parsed like cJSON_ParseWithLengthOpts (end: where it stopped), except that a
 * \u0000 escape or a raw NUL reads as U+0001, for gw_conf_check_strings to refuse. */
cJSON *gw_conf_parse(const char *text, size_t len, const char **end);
/* Whether a config string is valid UTF-8 without control characters (< 0x20, 0x7f). */
int gw_conf_string_ok(const char *s);
/* Every string and key under node, at any depth: 0, or -1 with an error at each bad one's path. */
int gw_conf_check_strings(gw_conf_ctx_t *cx, const cJSON *node, const char *path);

#endif
