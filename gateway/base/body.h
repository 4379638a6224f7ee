/* The JSON the gateway reads from bodies, as pure functions of bytes: a request body's model and
 * stream, and an answer's usage. The request (request.c) calls them; so does tests/fuzz. */
#ifndef GW_BODY_H
#define GW_BODY_H

#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>

#include "base/arena.h"

/* What gw_body_inspect says of a request body, in the order the request answers them. */
enum {
    GW_BODY_OK = 0,
    GW_BODY_NOT_OBJECT = -1,    /* not JSON, bytes after the JSON, or not an object */
    GW_BODY_DUPLICATE_KEY = -2, /* a key twice in any object, also when the two are only equal
                                 * under case folding ("k" and "K", "s" and U+017F, "k" and
                                 * U+212A): parsers disagree on which wins, Go's ignore case */
    GW_BODY_NO_MODEL = -3,      /* model missing, not a string, or empty */
    GW_BODY_BAD_STREAM = -4,    /* stream neither a boolean nor null; model is set */
    GW_BODY_NUL = -5,       /* a NUL, raw or \u0000: cJSON's strings end at it, the backend's not */
    GW_BODY_BAD_UTF8 = -6,  /* bytes that are not UTF-8 (RFC 3629): checked first */
    GW_BODY_TOO_LARGE = -7, /* its parse would take more than GW_BODY_PARSE_BUDGET(len) */
    GW_BODY_BAD_STREAM_OPTIONS = -8, /* stream_options not an object or null, or its
                                      * include_usage not a boolean or null; model is set */
    GW_BODY_NOT_JSON = -9,    /* not strict RFC 8259 where cJSON is lax: a raw control character in
                               * a string, white space other than SP HT CR LF, a number with a
                               * leading zero, a '+' or a '.' without digits on both sides, a bad
                               * escape (gw_body_scan); checked with the UTF-8 */
    GW_BODY_FOLDED_KEY = -10, /* a key of the top object (or of its stream_options) that
                               * folds onto a name the gateway reads without being it:
                               * "MODEL", "Stream", "u\u017fer" (Go reads them as those) */
    GW_BODY_INEXACT_NUMBER = -11, /* an integer beyond +-2^53 or a number beyond the double's
                                   * range: a re-printed body would carry another value */
};

/* The memory a body's parse may take from its arena: twice its length and 8 MiB. A body of
 * text costs about its length, a small value 80 bytes (a node): 4 MiB holding two million
 * zeros would cost 160 MiB and is refused instead, while 80,000 token ids or 29,000 short
 * messages fit. The tree lives only through the body phase (request.c settle_body). */
#define GW_BODY_PARSE_BUDGET(len) (2 * (size_t)(len) + ((size_t)8 << 20))

typedef struct gw_body {
    cJSON *json;       /* the parsed value (also when refused, unless it did not parse whole) */
    const char *model; /* json's model (non-empty); set for GW_BODY_OK and GW_BODY_BAD_STREAM */
    int stream;        /* stream is true */
    int usage_asked;   /* stream_options.include_usage is true: the client wants the usage chunk */
} gw_body_t;

/* Parses the len bytes at p (no NUL needed, none read past len) into nodes from arena (NULL:
 * the heap; free out->json with cJSON_Delete either way) and checks the keys the gateway routes
 * on. Returns GW_BODY_OK or one of the errors above. */
int gw_body_inspect(gw_arena_t *arena, const char *p, size_t len, gw_body_t *out);

/* The len bytes at p are UTF-8 (RFC 3629: no overlong forms, no surrogates, nothing past
 * U+10FFFF, no truncated sequence). */
int gw_body_utf8_valid(const char *p, size_t len);

/* What gw_body_scan notes of a text it passes. */
enum {
    GW_BODY_SCAN_BIG_INTEGER = 1, /* an integer literal beyond +-2^53 */
    GW_BODY_SCAN_NUL_ESCAPE = 2,  /* a \u0000 escape in a string */
};

/* Checks the len bytes at p in one pass: UTF-8 (as gw_body_utf8_valid) and strict JSON in the
 * respects cJSON is lax in (GW_BODY_NOT_JSON; the grammar is left to cJSON). Returns
 * GW_BODY_OK, GW_BODY_BAD_UTF8 (said first) or GW_BODY_NOT_JSON, and sets *notes to the
 * GW_BODY_SCAN_ bits of what it saw. */
int gw_body_scan(const char *p, size_t len, unsigned *notes);

/* Turns every number node of the value v and its siblings into a raw node holding its exact
 * text (whole numbers within +-2^53 as integers, others in the fewest digits that read back as
 * the same double), so that cJSON prints them so; strings from the cJSON hooks (the heap, once
 * the parse is over). Just before printing a tree that goes to a backend. Returns 0 or -1 (out
 * of memory: part of the tree converted, all of it still freed by cJSON_Delete). */
int gw_body_exact_numbers(cJSON *v);

/* Sets stream_options.include_usage to true in json (an object), in place; new nodes come from
 * the heap. Returns 1 when it changed json, 0 when it was already so, -1 out of memory. */
int gw_body_ask_usage(cJSON *json);

/* One event's data (len bytes) is a usage chunk: an object with a "usage" object and an empty
 * "choices" array, as a backend sends when asked for stream_options.include_usage. */
int gw_body_is_usage_chunk(gw_arena_t *arena, const char *data, size_t len);

/* An answer's usage, from its JSON text (a whole body, or one event's data; len bytes, no NUL
 * needed): the last key "usage" whose value is an object. Returns 1 with its prompt_tokens and
 * completion_tokens (without completion_tokens: total_tokens - prompt_tokens, as embeddings
 * report), each a whole number in [0, 1e12), and, when at is not NULL, the offset of the object
 * in text; 0 when there is none or either count is missing or not such a number (a partial
 * usage is no usage: the caller falls back to its estimate). The object is parsed into arena (NULL:
 * the heap) and not kept. */
int gw_body_usage(gw_arena_t *arena, const char *text, size_t len, int64_t *prompt,
                  int64_t *completion, size_t *at);

#endif
