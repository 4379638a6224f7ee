/* A server-sent-events framer: finds where each event ends, whatever the chunking. */
#include "base/sse.h"

#include <stdlib.h>
#include <string.h>

/* Where the framer is within the current line (lines end in CRLF, LF or CR). */
enum { LINE_START, IN_LINE, CR_IN_LINE, CR_EMPTY };

void gw_sse_init(gw_sse_t *s, size_t max_event)
{
    memset(s, 0, sizeof(*s));
    s->max = max_event;
}

void gw_sse_release(gw_sse_t *s)
{
    free(s->buf);
    s->buf = NULL;
    s->len = s->cap = 0;
}

static int hold(gw_sse_t *s, const char *p, size_t n)
{
    if (n == 0) return 0;
    if (s->len + n > s->max) return GW_SSE_TOO_LARGE;
    if (s->len + n > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 1024;
        while (cap < s->len + n) cap *= 2;
        char *b = realloc(s->buf, cap);
        if (!b) return GW_SSE_TOO_LARGE;
        s->buf = b;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, p, n);
    s->len += n;
    return 0;
}

/* Emits data[start..end) joined to what is held. */
static int emit(gw_sse_t *s, const char *data, size_t start, size_t end, gw_sse_event_fn fn,
                void *arg)
{
    if (s->len == 0) return fn(arg, data + start, end - start);
    int rc = hold(s, data + start, end - start);
    if (rc < 0) return rc;
    rc = fn(arg, s->buf, s->len);
    s->len = 0;
    return rc;
}

int gw_sse_feed(gw_sse_t *s, const char *data, size_t len, gw_sse_event_fn fn, void *arg)
{
    size_t start = 0;
    int rc;
    for (size_t i = 0; i < len; i++) {
        char c = data[i];
        switch (s->state) {
        case LINE_START:
            if (c == '\n') {
                if ((rc = emit(s, data, start, i + 1, fn, arg)) < 0) return rc;
                start = i + 1;
            } else if (c == '\r') {
                s->state = CR_EMPTY;
            } else {
                s->state = IN_LINE;
            }
            break;
        case IN_LINE:
            if (c == '\n')
                s->state = LINE_START;
            else if (c == '\r')
                s->state = CR_IN_LINE;
            break;
        case CR_IN_LINE:
            if (c == '\n')
                s->state = LINE_START;
            else if (c == '\r')
                s->state = CR_EMPTY;
            else
                s->state = IN_LINE;
            break;
        case CR_EMPTY:
            if (c == '\n') {
                if ((rc = emit(s, data, start, i + 1, fn, arg)) < 0) return rc;
                start = i + 1;
                s->state = LINE_START;
            } else {
                /* The event ended at the lone CR before this byte. */
                if ((rc = emit(s, data, start, i, fn, arg)) < 0) return rc;
                start = i;
                s->state = LINE_START;
                i--; /* this byte begins the next event */
            }
            break;
        }
    }
    return hold(s, data + start, len - start);
}

size_t gw_sse_finish(gw_sse_t *s, gw_sse_event_fn fn, void *arg)
{
    if (s->state == CR_EMPTY) {
        s->state = LINE_START;
        if (s->len) {
            fn(arg, s->buf, s->len);
            s->len = 0;
        }
    }
    return s->len;
}

int gw_sse_at_boundary(const gw_sse_t *s)
{
    return s->len == 0 && s->state == LINE_START;
}

static const char *skip_blanks(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t')) p++;
    return p;
}

/* The field's value when the line [p, end) is "name:value" (one leading space dropped, as the
 * SSE rules say), else NULL. */
static const char *field_value(const char *p, const char *end, const char *name, size_t n)
{
    if ((size_t)(end - p) < n + 1 || memcmp(p, name, n) != 0 || p[n] != ':') return NULL;
    p += n + 1;
    return p < end && *p == ' ' ? p + 1 : p;
}

/* Does the JSON text [p, end) open an object whose first member is "error", not null? */
static int json_opens_with_error(const char *p, const char *end)
{
    p = skip_blanks(p, end);
    if (p == end || *p != '{') return 0;
    p = skip_blanks(p + 1, end);
    if ((size_t)(end - p) < 7 || memcmp(p, "\"error\"", 7) != 0) return 0;
    p = skip_blanks(p + 7, end);
    if (p == end || *p != ':') return 0;
    p = skip_blanks(p + 1, end);
    return p < end && !((size_t)(end - p) >= 4 && memcmp(p, "null", 4) == 0);
}

int gw_sse_is_error_event(const char *ev, size_t len)
{
    const char *p = ev, *end = ev + len;
    int data_seen = 0;
    while (p < end) {
        const char *eol = p;
        while (eol < end && *eol != '\r' && *eol != '\n') eol++;
        const char *v = field_value(p, eol, "event", 5);
        if (v && eol - v == 5 && memcmp(v, "error", 5) == 0) return 1;
        v = data_seen ? NULL : field_value(p, eol, "data", 4);
        if (v) {
            if (json_opens_with_error(v, eol)) return 1;
            data_seen = 1;
        }
        p = eol < end && *eol == '\r' && eol + 1 < end && eol[1] == '\n' ? eol + 2 : eol + 1;
    }
    return 0;
}
