/* A server-sent-events framer: finds where each event ends, whatever the chunking. */
#ifndef GW_SSE_H
#define GW_SSE_H

#include <stddef.h>

/* Receives one whole event, its terminating blank line included. A negative return stops
 * the feed and is passed back. */
typedef int (*gw_sse_event_fn)(void *arg, const char *event, size_t len);

typedef struct gw_sse {
    char *buf; /* the unfinished event, when the input ended inside one */
    size_t len, cap, max;
    int state;
} gw_sse_t;

enum { GW_SSE_TOO_LARGE = -1000 };

void gw_sse_init(gw_sse_t *s, size_t max_event);
void gw_sse_release(gw_sse_t *s);
/* Feeds bytes; emits every event completed by them. Returns 0, GW_SSE_TOO_LARGE when one
 * event exceeds max_event, or the callback's negative return. */
int gw_sse_feed(gw_sse_t *s, const char *data, size_t len, gw_sse_event_fn fn, void *arg);
/* At the end of the stream: emits an event that ended with a lone CR; returns how many
 * bytes of an unfinished event remain (0 for a clean end). */
size_t gw_sse_finish(gw_sse_t *s, gw_sse_event_fn fn, void *arg);
/* True between events (nothing held back). */
int gw_sse_at_boundary(const gw_sse_t *s);
/* Does this whole event (as handed to a gw_sse_event_fn) report a failure: its type is "error",
 * or its first data line is a JSON object whose first member is "error" (OpenAI and vLLM:
 * {"error": {...}}; TGI: {"error": "...", "error_type": ...})? No allocation, no full parse. */
int gw_sse_is_error_event(const char *event, size_t len);

#endif
