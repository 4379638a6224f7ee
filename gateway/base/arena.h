/* A bump allocator whose memory, and the foreign objects registered with it, die together. */
#ifndef GW_ARENA_H
#define GW_ARENA_H

#include <stddef.h>

typedef struct gw_arena gw_arena_t;

gw_arena_t *gw_arena_new(size_t first_block);
void gw_arena_free(gw_arena_t *a);
void *gw_arena_alloc(gw_arena_t *a, size_t size);
void *gw_arena_calloc(gw_arena_t *a, size_t size);
char *gw_arena_strndup(gw_arena_t *a, const char *s, size_t n);
char *gw_arena_strdup(gw_arena_t *a, const char *s);
/* fn(arg) runs when the arena is freed, last registered first. */
int gw_arena_cleanup(gw_arena_t *a, void (*fn)(void *), void *arg);
/* Frees the blocks this thread keeps for reuse (at thread exit). */
void gw_arena_thread_cleanup(void);

#endif
