/* A bump allocator whose memory, and the foreign objects registered with it, die together. */
#include "base/arena.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct block {
    struct block *next;
    size_t size, used;
    max_align_t data[];
} block_t;

typedef struct cleanup {
    struct cleanup *next;
    void (*fn)(void *);
    void *arg;
} cleanup_t;

struct gw_arena {
    block_t *head;
    cleanup_t *cleanups;
    size_t next_size;
};

/* First blocks of the common size are kept per thread and reused: a request then costs no
 * malloc for its arena. */
#define STD_BLOCK 16384
#define STD_CACHE 64
static _Thread_local block_t *std_cache;
static _Thread_local size_t std_cached;

static block_t *block_new(size_t size)
{
    block_t *b = NULL;
    if (size == STD_BLOCK && std_cache) {
        b = std_cache;
        std_cache = b->next;
        std_cached--;
    } else {
        b = malloc(sizeof(*b) + size);
        if (!b) return NULL;
    }
    b->next = NULL;
    b->size = size;
    b->used = 0;
    return b;
}

static void block_free(block_t *b)
{
    if (b->size == STD_BLOCK && std_cached < STD_CACHE) {
        b->next = std_cache;
        std_cache = b;
        std_cached++;
        return;
    }
    free(b);
}

void gw_arena_thread_cleanup(void)
{
    while (std_cache) {
        block_t *b = std_cache;
        std_cache = b->next;
        free(b);
    }
    std_cached = 0;
}

gw_arena_t *gw_arena_new(size_t first_block)
{
    if (first_block <= STD_BLOCK) first_block = STD_BLOCK;
    /* The arena header lives in its own first block. */
    block_t *b = block_new(first_block);
    if (!b) return NULL;
    gw_arena_t *a = (gw_arena_t *)b->data;
    b->used = (sizeof(*a) + 15) & ~(size_t)15;
    a->head = b;
    a->cleanups = NULL;
    a->next_size = first_block * 2;
    return a;
}

void gw_arena_free(gw_arena_t *a)
{
    if (!a) return;
    for (cleanup_t *c = a->cleanups; c; c = c->next) c->fn(c->arg);
    block_t *b = a->head;
    while (b) {
        block_t *next = b->next;
        block_free(b);
        b = next;
    }
}

void *gw_arena_alloc(gw_arena_t *a, size_t size)
{
    size = (size + 15) & ~(size_t)15;
    block_t *b = a->head;
    if (b->size - b->used < size) {
        size_t want = a->next_size;
        if (want < size) want = size;
        block_t *nb = block_new(want);
        if (!nb) return NULL;
        if (a->next_size < (1u << 20)) a->next_size *= 2;
        /* Keep the arena header's block last so that it is freed last. */
        nb->next = a->head;
        a->head = nb;
        b = nb;
    }
    void *p = (char *)b->data + b->used;
    b->used += size;
    return p;
}

void *gw_arena_calloc(gw_arena_t *a, size_t size)
{
    void *p = gw_arena_alloc(a, size);
    if (p) memset(p, 0, size);
    return p;
}

char *gw_arena_strndup(gw_arena_t *a, const char *s, size_t n)
{
    char *p = gw_arena_alloc(a, n + 1);
    if (!p) return NULL;
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *gw_arena_strdup(gw_arena_t *a, const char *s)
{
    return gw_arena_strndup(a, s, strlen(s));
}

int gw_arena_cleanup(gw_arena_t *a, void (*fn)(void *), void *arg)
{
    cleanup_t *c = gw_arena_alloc(a, sizeof(*c));
    if (!c) return -1;
    c->fn = fn;
    c->arg = arg;
    c->next = a->cleanups;
    a->cleanups = c;
    return 0;
}
