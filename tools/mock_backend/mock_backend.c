/* gotthard-mock-backend: an OpenAI-compatible inference server for demos, tests and benchmarks. */

/*
 * One thread, one libevent loop, a small HTTP/1.1 server on bufferevents.
 *
 * Every accepted socket is a conn. A conn reads one request at a time (head,
 * then a Content-Length or chunked body); while that request is being answered
 * the conn keeps reading, so a peer that goes away is noticed at once (EOF or
 * error on the socket), and pipelined requests wait in the input buffer. Each
 * conn owns one timer, reused for every wait: the x-mock-delay-ms wait, the
 * time to first token, each token of a stream, the keep-alive idle timeout.
 *
 * Every request outside /_mock/ gets a rec, kept in a ring of the last
 * RECORD_MAX; the conn holds a second reference while it answers, so a reset
 * of the record never frees a rec in use. Nothing scans all requests or all
 * connections on the hot path.
 */

#include "base/http.h"
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#define RECORD_MAX 10000
#define OK_BODY "{\"status\":\"ok\"}"
#define ADD_LIT(buf, lit) evbuffer_add((buf), (lit), sizeof(lit) - 1)
#define MAX_HEAD_BYTES (64 * 1024)
#define MAX_HEADERS 256
#define MAX_BODY_BYTES (64 * 1024 * 1024)
#define MAX_MS 86400000L             /* one day: the largest delay accepted */
#define MAX_TOKENS 10000000L         /* per answer */
#define STREAM_OUT_HIGH (256 * 1024) /* token-ms 0: pause a stream above this much unsent */

/* ---- options and global state ---------------------------------------- */

struct model {
    char *id;
    long running;            /* requests for this model in progress (slot or queue) */
    long waiting;            /* of those, waiting for a slot (--slots) */
    uint64_t requests_total; /* answered completely */
    uint64_t prompt_tokens_total;
    uint64_t generation_tokens_total;
};

struct rec {
    int refs;
    uint64_t seq;
    uint64_t conn_id;
    char *method;
    char *target;
    char *hbuf; /* "name\0value\0" pairs, names lowercased, in order received */
    size_t hlen, hcap, nhdr;
    char *body; /* always NUL-terminated; body_len excludes the NUL */
    size_t body_len, body_cap;
    int status; /* status written, 0 if none */
    bool stream, completed, client_closed;
    long tokens_sent;
    int64_t started_ms, ended_ms; /* ended_ms < 0: still running */
};

struct conn;

static struct {
    const char *host;
    long port;
    const char *api_key;
    const char *name;
    long ttft_ms, token_ms, tokens, keepalive_ms;
    long slots, prompt_us; /* capacity model: concurrent slots (0: any), prefill per token */
    long busy;             /* slots taken */
    struct conn *wait_head, *wait_tail; /* requests waiting for a slot, oldest first */
    struct model *models;
    size_t nmodels;

    struct event_base *base;
    struct evconnlistener *listener;
    struct event *ev_term, *ev_int, *ev_relisten;
    int64_t start_us;

    uint64_t next_seq, next_conn_id;
    uint64_t conns_accepted, conns_open, requests;
    struct conn *conns; /* all open connections, for teardown */

    struct rec *ring[RECORD_MAX];
    size_t ring_head, ring_count;
} G;

/* ---- small helpers ---------------------------------------------------- */

static void die_oom(void)
{
    fputs("gotthard-mock-backend: out of memory\n", stderr);
    abort();
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) die_oom();
    return p;
}

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p) die_oom();
    return p;
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s);
    char *d = xmalloc(n + 1);
    memcpy(d, s, n + 1);
    return d;
}

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t since_start_ms(void)
{
    return (now_us() - G.start_us) / 1000;
}

/* A decimal in [0, max], the whole string; -1 if it is not one. */
static long parse_num(const char *s, long max)
{
    char *end;
    long v;
    if (!s) return -1;
    while (*s == ' ' || *s == '\t') s++;
    if (!isdigit((unsigned char)*s)) return -1;
    errno = 0;
    v = strtol(s, &end, 10);
    while (*end == ' ' || *end == '\t') end++;
    if (errno || *end || v < 0 || v > max) return -1;
    return v;
}

/* Appends s[0..n) as a JSON string. Invalid UTF-8 bytes become \u00XX. */
static void json_str(struct evbuffer *o, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, plain = 0;
    char esc[8];

    ADD_LIT(o, "\"");
    while (i < n) {
        unsigned char ch = p[i];
        size_t seq = 0;
        if (ch >= 0x20 && ch < 0x80 && ch != '"' && ch != '\\') {
            i++;
            continue;
        }
        if (ch >= 0x80) {
            unsigned cp = 0;
            if (ch >= 0xc2 && ch <= 0xdf)
                seq = 2, cp = ch & 0x1f;
            else if (ch >= 0xe0 && ch <= 0xef)
                seq = 3, cp = ch & 0x0f;
            else if (ch >= 0xf0 && ch <= 0xf4)
                seq = 4, cp = ch & 0x07;
            if (seq && i + seq <= n) {
                size_t k;
                for (k = 1; k < seq; k++) {
                    if ((p[i + k] & 0xc0) != 0x80) break;
                    cp = (cp << 6) | (p[i + k] & 0x3f);
                }
                if (k == seq && !(seq == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) &&
                    !(seq == 4 && (cp < 0x10000 || cp > 0x10ffff))) {
                    i += seq;
                    continue;
                }
            }
        }
        /* flush the plain run before i, then the escape for byte i */
        evbuffer_add(o, s + plain, i - plain);
        switch (ch) {
        case '"':
            ADD_LIT(o, "\\\"");
            break;
        case '\\':
            ADD_LIT(o, "\\\\");
            break;
        case '\n':
            ADD_LIT(o, "\\n");
            break;
        case '\r':
            ADD_LIT(o, "\\r");
            break;
        case '\t':
            ADD_LIT(o, "\\t");
            break;
        default:
            snprintf(esc, sizeof esc, "\\u%04x", (unsigned)ch);
            evbuffer_add(o, esc, 6);
        }
        i++;
        plain = i;
    }
    evbuffer_add(o, s + plain, n - plain);
    ADD_LIT(o, "\"");
}

static void json_cstr(struct evbuffer *o, const char *s)
{
    json_str(o, s, strlen(s));
}

/* A malloc'd, NUL-terminated copy of an evbuffer's contents (which it drains). */
static char *evbuffer_take_str(struct evbuffer *b, size_t *len)
{
    size_t n = evbuffer_get_length(b);
    char *s = xmalloc(n + 1);
    evbuffer_remove(b, s, n);
    s[n] = 0;
    if (len) *len = n;
    return s;
}

static long count_words(const char *s)
{
    long n = 0;
    bool in = false;
    for (; *s; s++) {
        bool sp = isspace((unsigned char)*s);
        if (!sp && !in) n++;
        in = !sp;
    }
    return n;
}

/* ---- the record ------------------------------------------------------- */

static struct rec *rec_new(void)
{
    struct rec *r = xmalloc(sizeof *r);
    memset(r, 0, sizeof *r);
    r->refs = 1;
    r->ended_ms = -1;
    return r;
}

static void rec_unref(struct rec *r)
{
    if (!r || --r->refs > 0) return;
    free(r->method);
    free(r->target);
    free(r->hbuf);
    free(r->body);
    free(r);
}

static void rec_add_header(struct rec *r, const char *name, size_t nlen, const char *val,
                           size_t vlen)
{
    size_t need = r->hlen + nlen + vlen + 2;
    if (need > r->hcap) {
        r->hcap = need * 2 > 512 ? need * 2 : 512;
        r->hbuf = xrealloc(r->hbuf, r->hcap);
    }
    for (size_t i = 0; i < nlen; i++) r->hbuf[r->hlen + i] = (char)tolower((unsigned char)name[i]);
    r->hlen += nlen;
    r->hbuf[r->hlen++] = 0;
    memcpy(r->hbuf + r->hlen, val, vlen);
    r->hlen += vlen;
    r->hbuf[r->hlen++] = 0;
    r->nhdr++;
}

/* The first value of a (lowercase) header, or NULL. */
static const char *rec_header(const struct rec *r, const char *name)
{
    const char *p = r->hbuf, *end = r->hbuf + r->hlen;
    while (p && p < end) {
        const char *v = p + strlen(p) + 1;
        if (strcmp(p, name) == 0) return v;
        p = v + strlen(v) + 1;
    }
    return NULL;
}

/* Whether any value of a header holds token tok in its comma-separated list. */
static bool rec_header_has_token(const struct rec *r, const char *name, const char *tok)
{
    const char *p = r->hbuf, *end = r->hbuf + r->hlen;
    size_t tlen = strlen(tok);
    while (p && p < end) {
        const char *v = p + strlen(p) + 1;
        if (strcmp(p, name) == 0) {
            const char *s = v;
            while (*s) {
                size_t n;
                while (*s == ' ' || *s == '\t' || *s == ',') s++;
                n = strcspn(s, ",");
                size_t m = n;
                while (m > 0 && (s[m - 1] == ' ' || s[m - 1] == '\t')) m--;
                if (m == tlen && strncasecmp(s, tok, tlen) == 0) return true;
                s += n;
            }
        }
        p = v + strlen(v) + 1;
    }
    return false;
}

static void record_push(struct rec *r)
{
    r->refs++;
    if (G.ring_count == RECORD_MAX) {
        rec_unref(G.ring[G.ring_head]);
        G.ring[G.ring_head] = r;
        G.ring_head = (G.ring_head + 1) % RECORD_MAX;
    } else {
        G.ring[(G.ring_head + G.ring_count) % RECORD_MAX] = r;
        G.ring_count++;
    }
}

static void record_clear(void)
{
    for (size_t i = 0; i < G.ring_count; i++) rec_unref(G.ring[(G.ring_head + i) % RECORD_MAX]);
    G.ring_head = G.ring_count = 0;
}

static void record_entry_json(struct evbuffer *o, const struct rec *r)
{
    const char *p = r->hbuf, *end = r->hbuf + r->hlen;
    bool first = true;

    evbuffer_add_printf(o, "{\"seq\":%" PRIu64 ",\"conn\":%" PRIu64 ",\"method\":", r->seq,
                        r->conn_id);
    json_cstr(o, r->method);
    ADD_LIT(o, ",\"path\":");
    json_cstr(o, r->target);
    ADD_LIT(o, ",\"headers\":[");
    while (p && p < end) {
        const char *v = p + strlen(p) + 1;
        if (!first) ADD_LIT(o, ",");
        first = false;
        ADD_LIT(o, "[");
        json_cstr(o, p);
        ADD_LIT(o, ",");
        json_cstr(o, v);
        ADD_LIT(o, "]");
        p = v + strlen(v) + 1;
    }
    ADD_LIT(o, "],\"body\":");
    json_str(o, r->body ? r->body : "", r->body_len);
    evbuffer_add_printf(o,
                        ",\"stream\":%s,\"tokens_sent\":%ld,\"completed\":%s,"
                        "\"client_closed\":%s,",
                        r->stream ? "true" : "false", r->tokens_sent,
                        r->completed ? "true" : "false", r->client_closed ? "true" : "false");
    if (r->status)
        evbuffer_add_printf(o, "\"status\":%d,", r->status);
    else
        evbuffer_add_printf(o, "\"status\":null,");
    evbuffer_add_printf(o, "\"started_ms\":%" PRId64 ",", r->started_ms);
    if (r->ended_ms >= 0)
        evbuffer_add_printf(o, "\"ended_ms\":%" PRId64 "}", r->ended_ms);
    else
        evbuffer_add_printf(o, "\"ended_ms\":null}");
}

/* ---- connections ------------------------------------------------------ */

enum cstate {
    C_HEAD,       /* reading the request line and headers */
    C_BODY_CL,    /* reading a Content-Length body */
    C_CHUNK_SIZE, /* chunked body: the size line */
    C_CHUNK_DATA, /* chunked body: data */
    C_CHUNK_CRLF, /* chunked body: the CRLF after data */
    C_TRAILERS,   /* chunked body: trailers up to the empty line */
    C_BUSY,       /* a request is being answered */
    C_CLOSING,    /* the last answer is being flushed; input is discarded */
};

enum phase { P_NONE, P_IDLE, P_RESUME, P_DELAY, P_WAIT, P_STREAM, P_CLOSE, P_START };

/* What to do once the output buffer drains; only set while it holds data (EV_WRITE on). */
enum drain { D_NONE, D_CLOSE, D_RESET, D_STREAM };

enum kind { K_NONE, K_CHAT, K_COMPL, K_EMBED, K_MODELS, K_HEALTH, K_METRICS, K_NOT_FOUND };

/* What the current request asks for, worked out once it is received. */
struct job {
    bool active; /* received and not finished yet */
    enum kind kind;
    int model;    /* index into G.models, or -1 */
    bool running; /* counted in G.models[model].running */
    bool stream, include_usage;
    long delay_ms, ttft_ms, token_ms, ntokens, reset_after, error_after, mock_status;
    bool mock_close;
    bool failed; /* ended by an injected error event (x-mock-error-after) */
    long prompt_tokens, sent;
    int err_status; /* a request error to answer after the delay, or 0 */
    const char *err_code;
    char err_msg[256];
    time_t created;
    char *prefix; /* a stream event up to the choice's fields */
    size_t prefix_len;
    char *model_json; /* the model name as a JSON string */
    char *body;       /* a precomputed answer body (embeddings) */
    size_t body_len;
    int64_t first_us;  /* when the first stream event is due */
    bool slot, queued; /* holds one of the --slots; waits for one */
};

struct conn {
    struct conn *prev, *next;
    struct bufferevent *bev;
    struct event *timer;
    uint64_t id;
    enum cstate st;
    enum phase phase;
    enum drain on_drain;
    size_t head_bytes;
    size_t body_left;
    bool http10, keepalive, chunked_out;
    struct rec *rec; /* the request being read or answered */
    struct job job;
    struct conn *wnext, *wprev; /* in G.wait_* while job.queued */
};

static void process_input(struct conn *c);
static void stream_tick(struct conn *c);
static void run_job(struct conn *c);

/*
 * Writes what is queued straight to the socket. EV_WRITE stays off while the
 * kernel takes everything (no epoll_ctl per event); only when it does not is
 * the rest left to the bufferevent, which also reports a failed write.
 */
static void flush(struct conn *c)
{
    struct evbuffer *o = bufferevent_get_output(c->bev);
    if (evbuffer_get_length(o) == 0 || (bufferevent_get_enabled(c->bev) & EV_WRITE)) return;
    evbuffer_write(o, bufferevent_getfd(c->bev));
    if (evbuffer_get_length(o) > 0) bufferevent_enable(c->bev, EV_WRITE);
}

static void arm(struct conn *c, enum phase p, int64_t delay_us)
{
    struct timeval tv;
    if (delay_us < 0) delay_us = 0;
    tv.tv_sec = (time_t)(delay_us / 1000000);
    tv.tv_usec = (suseconds_t)(delay_us % 1000000);
    c->phase = p;
    evtimer_add(c->timer, &tv);
}

static void disarm(struct conn *c)
{
    evtimer_del(c->timer);
    c->phase = P_NONE;
}

static void wait_remove(struct conn *c)
{
    if (c->wprev)
        c->wprev->wnext = c->wnext;
    else
        G.wait_head = c->wnext;
    if (c->wnext)
        c->wnext->wprev = c->wprev;
    else
        G.wait_tail = c->wprev;
    c->wnext = c->wprev = NULL;
    c->job.queued = false;
    G.models[c->job.model].waiting--;
}

/* A slot is free: the oldest waiting request takes it (started from the loop). */
static void slot_freed(void)
{
    G.busy--;
    if (G.wait_head && G.busy < G.slots) {
        struct conn *c = G.wait_head;
        wait_remove(c);
        c->job.slot = true;
        G.busy++;
        arm(c, P_START, 0);
    }
}

/* Ends the current job: fills in its record entry, releases what it holds. */
static void job_end(struct conn *c, bool completed, bool client_closed)
{
    struct job *j = &c->job;
    if (!j->active) return;
    j->active = false;
    if (j->queued) wait_remove(c);
    if (j->slot) {
        j->slot = false;
        slot_freed();
    }
    if (c->rec) {
        c->rec->completed = completed;
        c->rec->client_closed = client_closed;
        c->rec->tokens_sent = j->sent;
        c->rec->ended_ms = since_start_ms();
    }
    if (j->running) {
        struct model *m = &G.models[j->model];
        m->running--;
        if (completed && (j->kind == K_CHAT || j->kind == K_COMPL || j->kind == K_EMBED) &&
            !j->err_status && !j->mock_status && !j->failed) {
            m->requests_total++;
            m->prompt_tokens_total += (uint64_t)j->prompt_tokens;
            m->generation_tokens_total += (uint64_t)j->sent;
        }
    }
    free(j->prefix);
    free(j->model_json);
    free(j->body);
    memset(j, 0, sizeof *j);
}

static void conn_free(struct conn *c, bool client_closed)
{
    job_end(c, false, client_closed);
    rec_unref(c->rec);
    if (c->prev)
        c->prev->next = c->next;
    else
        G.conns = c->next;
    if (c->next) c->next->prev = c->prev;
    event_free(c->timer);
    bufferevent_free(c->bev);
    G.conns_open--;
    free(c);
}

/* Resets the TCP connection: SO_LINGER {1, 0}, then close. */
static void conn_reset(struct conn *c)
{
    struct linger lg = {1, 0};
    evutil_socket_t fd = bufferevent_getfd(c->bev);
    if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    conn_free(c, false);
}

/* The job is over without an answer; reset once what was written is flushed. May free c. */
static void start_reset(struct conn *c)
{
    job_end(c, false, false);
    c->st = C_CLOSING;
    disarm(c);
    flush(c);
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
        conn_reset(c);
    else
        c->on_drain = D_RESET;
}

/* The answer is fully queued: get ready for the next request or close. */
static void respond_done(struct conn *c)
{
    job_end(c, true, false);
    rec_unref(c->rec);
    c->rec = NULL;
    disarm(c);
    flush(c);
    if (!c->keepalive) {
        c->st = C_CLOSING;
        if (evbuffer_get_length(bufferevent_get_output(c->bev)) > 0)
            c->on_drain = D_CLOSE;
        else
            arm(c, P_CLOSE, 0);
        return;
    }
    c->st = C_HEAD;
    c->head_bytes = 0;
    c->body_left = 0;
    c->http10 = false;
    c->chunked_out = false;
    if (evbuffer_get_length(bufferevent_get_input(c->bev)) > 0)
        arm(c, P_RESUME, 0); /* a pipelined request: handle it from the loop, not from here */
    else if (G.keepalive_ms > 0)
        arm(c, P_IDLE, (int64_t)G.keepalive_ms * 1000);
}

/* Writes the status line and headers. content_length < 0: a streamed body. */
static void write_head(struct conn *c, int status, const char *ctype, long content_length)
{
    struct evbuffer *o = bufferevent_get_output(c->bev);
    evbuffer_add_printf(o, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n", status, gw_http_reason(status),
                        ctype);
    if (status == 204 || status == 304) {
        /* no body and no Content-Length */
    } else if (content_length >= 0) {
        evbuffer_add_printf(o, "Content-Length: %ld\r\n", content_length);
    } else {
        evbuffer_add_printf(o, "Cache-Control: no-cache\r\n");
        if (c->http10) {
            c->keepalive = false;
        } else {
            c->chunked_out = true;
            evbuffer_add_printf(o, "Transfer-Encoding: chunked\r\n");
        }
    }
    evbuffer_add_printf(o, "X-Mock-Backend: %s\r\n", G.name);
    if (c->rec && c->rec->seq) evbuffer_add_printf(o, "X-Mock-Seq: %" PRIu64 "\r\n", c->rec->seq);
    if (c->rec && rec_header(c->rec, "x-mock-reveal"))
        /* What inference servers tell about themselves (for the gateway's privacy tests). */
        evbuffer_add_printf(
            o,
            "Server: uvicorn\r\nX-Powered-By: mock/1.0\r\nX-Request-Id: mock-%" PRIu64
            "\r\nSet-Cookie: backend-node=gpu-7\r\nRetry-After: 7\r\n",
            c->rec->seq);
    if (!c->keepalive)
        evbuffer_add_printf(o, "Connection: close\r\n\r\n");
    else if (c->http10)
        evbuffer_add_printf(o, "Connection: keep-alive\r\n\r\n");
    else
        ADD_LIT(o, "\r\n");
    if (c->rec) c->rec->status = status;
}

/* A complete answer with a body; ends the request. */
static void send_body(struct conn *c, int status, const char *ctype, const char *body, size_t len)
{
    write_head(c, status, ctype, (long)len);
    if (status != 204 && status != 304) evbuffer_add(bufferevent_get_output(c->bev), body, len);
    respond_done(c);
}

static void send_evbody(struct conn *c, int status, const char *ctype, struct evbuffer *body)
{
    write_head(c, status, ctype, (long)evbuffer_get_length(body));
    if (status != 204 && status != 304) evbuffer_add_buffer(bufferevent_get_output(c->bev), body);
    respond_done(c);
}

static void send_error(struct conn *c, int status, const char *type, const char *code,
                       const char *msg)
{
    struct evbuffer *b = evbuffer_new();
    if (!b) die_oom();
    ADD_LIT(b, "{\"error\":{\"message\":");
    json_cstr(b, msg);
    ADD_LIT(b, ",\"type\":");
    json_cstr(b, type);
    ADD_LIT(b, ",\"param\":null,\"code\":");
    json_cstr(b, code);
    ADD_LIT(b, "}}");
    send_evbody(c, status, "application/json", b);
    evbuffer_free(b);
}

/* A malformed request: answer and close (it is not recorded). */
static void bad_request(struct conn *c, int status, const char *msg)
{
    c->keepalive = false;
    rec_unref(c->rec);
    c->rec = NULL;
    c->st = C_BUSY;
    send_error(c, status, "invalid_request_error", "bad_request", msg);
}

/* Writes one stream event: "data: <json>\n\n", as one HTTP chunk. */
static void sse_write(struct conn *c, const char *a, size_t alen, const char *b, size_t blen)
{
    struct evbuffer *o = bufferevent_get_output(c->bev);
    if (c->chunked_out) evbuffer_add_printf(o, "%zx\r\n", alen + blen + 8);
    ADD_LIT(o, "data: ");
    evbuffer_add(o, a, alen);
    evbuffer_add(o, b, blen);
    ADD_LIT(o, "\n\n");
    if (c->chunked_out) ADD_LIT(o, "\r\n");
}

/* ---- the endpoints ---------------------------------------------------- */

static int find_model(const char *name)
{
    for (size_t i = 0; i < G.nmodels; i++)
        if (strcmp(G.models[i].id, name) == 0) return (int)i;
    return -1;
}

static bool path_is(const struct rec *r, const char *path)
{
    size_t n = strcspn(r->target, "?");
    return strlen(path) == n && strncmp(r->target, path, n) == 0;
}

static long prompt_words(const cJSON *v)
{
    long n = 0;
    const cJSON *e;
    if (cJSON_IsString(v)) return count_words(v->valuestring);
    if (cJSON_IsArray(v)) {
        cJSON_ArrayForEach(e, v)
        {
            if (cJSON_IsString(e))
                n += count_words(e->valuestring);
            else if (cJSON_IsNumber(e))
                n++; /* a token id */
            else if (cJSON_IsObject(e))
                n += prompt_words(cJSON_GetObjectItemCaseSensitive(e, "text"));
            else if (cJSON_IsArray(e))
                n += prompt_words(e);
        }
    }
    return n;
}

/* Eight deterministic floats in [-1, 1] for one input. */
static void embedding_json(struct evbuffer *o, const cJSON *in, size_t index)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a over the input */
    char *text = cJSON_PrintUnformatted(in);
    if (!text) die_oom();
    for (const char *p = text; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    free(text);
    evbuffer_add_printf(o, "%s{\"object\":\"embedding\",\"index\":%zu,\"embedding\":[",
                        index ? "," : "", index);
    for (int i = 0; i < 8; i++) {
        h ^= h << 13, h ^= h >> 7, h ^= h << 17; /* xorshift64 */
        double v = (double)(h >> 11) / 9007199254740992.0 * 2.0 - 1.0;
        evbuffer_add_printf(o, "%s%.6f", i ? "," : "", v);
    }
    ADD_LIT(o, "]}");
}

static void set_err(struct job *j, int status, const char *code, const char *msg)
{
    j->err_status = status;
    j->err_code = code;
    snprintf(j->err_msg, sizeof j->err_msg, "%s", msg);
}

/* Works out a chat, completion or embeddings request from its body. */
static void analyze_inference(struct conn *c)
{
    struct job *j = &c->job;
    struct rec *r = c->rec;
    cJSON *root = cJSON_ParseWithLength(r->body ? r->body : "", r->body_len);
    const cJSON *model, *v;
    long n;

    if (!root || !cJSON_IsObject(root)) {
        set_err(j, 400, "invalid_json", "The request body is not a valid JSON object.");
        goto out;
    }
    model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (model && !cJSON_IsNull(model)) {
        if (!cJSON_IsString(model)) {
            set_err(j, 400, "invalid_request", "'model' must be a string.");
            goto out;
        }
        j->model = find_model(model->valuestring);
        if (j->model < 0) {
            char msg[200];
            snprintf(msg, sizeof msg, "The model '%.120s' does not exist.", model->valuestring);
            set_err(j, 404, "model_not_found", msg);
            goto out;
        }
    } else {
        j->model = 0; /* like vLLM: no model means the served one */
    }
    {
        struct evbuffer *b = evbuffer_new();
        if (!b) die_oom();
        json_cstr(b, G.models[j->model].id);
        j->model_json = evbuffer_take_str(b, NULL);
        evbuffer_free(b);
    }
    G.models[j->model].running++;
    j->running = true;

    if (j->kind == K_EMBED) {
        const cJSON *in = cJSON_GetObjectItemCaseSensitive(root, "input");
        struct evbuffer *b;
        size_t count = 0;
        const cJSON *e;
        if (!cJSON_IsString(in) && !cJSON_IsArray(in)) {
            set_err(j, 400, "invalid_request", "'input' must be a string or an array.");
            goto out;
        }
        b = evbuffer_new();
        if (!b) die_oom();
        evbuffer_add_printf(b, "{\"object\":\"list\",\"data\":[");
        if (cJSON_IsString(in) || (cJSON_GetArraySize(in) > 0 && cJSON_IsNumber(in->child))) {
            embedding_json(b, in, count++); /* one text, or one list of token ids */
        } else {
            cJSON_ArrayForEach(e, in) embedding_json(b, e, count++);
        }
        n = prompt_words(in);
        j->prompt_tokens = n > 0 ? n : 1;
        ADD_LIT(b, "],\"model\":");
        evbuffer_add(b, j->model_json, strlen(j->model_json));
        evbuffer_add_printf(b, ",\"usage\":{\"prompt_tokens\":%ld,\"total_tokens\":%ld}}",
                            j->prompt_tokens, j->prompt_tokens);
        j->body = evbuffer_take_str(b, &j->body_len);
        evbuffer_free(b);
        goto out;
    }

    j->stream = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "stream"));
    r->stream = j->stream;
    v = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
    j->include_usage = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(v, "include_usage"));
    v = cJSON_GetObjectItemCaseSensitive(root, "max_tokens");
    if (!cJSON_IsNumber(v)) v = cJSON_GetObjectItemCaseSensitive(root, "max_completion_tokens");
    if (cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble < (double)j->ntokens)
        j->ntokens = (long)v->valuedouble;
    if (j->kind == K_CHAT) {
        const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(root, "messages"), *m;
        n = 0;
        cJSON_ArrayForEach(m, msgs) n +=
            prompt_words(cJSON_GetObjectItemCaseSensitive(m, "content"));
    } else {
        n = prompt_words(cJSON_GetObjectItemCaseSensitive(root, "prompt"));
    }
    j->prompt_tokens = n > 0 ? n : 1;
out:
    cJSON_Delete(root);
}

/* Works out what the request asks for, once it is fully received. */
static void analyze(struct conn *c)
{
    struct job *j = &c->job;
    struct rec *r = c->rec;
    long v;
    bool post = strcmp(r->method, "POST") == 0, get = strcmp(r->method, "GET") == 0;

    memset(j, 0, sizeof *j);
    j->active = true;
    j->model = -1;
    j->created = time(NULL);
    j->ttft_ms = G.ttft_ms;
    j->token_ms = G.token_ms;
    j->ntokens = G.tokens;
    j->reset_after = -1;
    j->error_after = -1;
    if ((v = parse_num(rec_header(r, "x-mock-delay-ms"), MAX_MS)) >= 0) j->delay_ms = v;
    if ((v = parse_num(rec_header(r, "x-mock-ttft-ms"), MAX_MS)) >= 0) j->ttft_ms = v;
    if ((v = parse_num(rec_header(r, "x-mock-token-ms"), MAX_MS)) >= 0) j->token_ms = v;
    if ((v = parse_num(rec_header(r, "x-mock-tokens"), MAX_TOKENS)) >= 0) j->ntokens = v;
    if ((v = parse_num(rec_header(r, "x-mock-reset-after"), MAX_TOKENS)) >= 0) j->reset_after = v;
    if ((v = parse_num(rec_header(r, "x-mock-error-after"), MAX_TOKENS)) >= 0) j->error_after = v;
    if ((v = parse_num(rec_header(r, "x-mock-status"), 599)) >= 200) j->mock_status = v;
    j->mock_close = parse_num(rec_header(r, "x-mock-close"), LONG_MAX) > 0;

    if (post && path_is(r, "/v1/chat/completions"))
        j->kind = K_CHAT;
    else if (post && path_is(r, "/v1/completions"))
        j->kind = K_COMPL;
    else if (post && path_is(r, "/v1/embeddings"))
        j->kind = K_EMBED;
    else if (get && path_is(r, "/v1/models"))
        j->kind = K_MODELS;
    else if (get && path_is(r, "/health"))
        j->kind = K_HEALTH;
    else if (get && path_is(r, "/metrics"))
        j->kind = K_METRICS;
    else
        j->kind = K_NOT_FOUND;

    if (G.api_key && strncmp(r->target, "/v1/", 4) == 0) {
        const char *a = rec_header(r, "authorization");
        if (!a || strncasecmp(a, "Bearer ", 7) != 0 || strcmp(a + 7, G.api_key) != 0) {
            set_err(j, 401, "invalid_api_key", "Incorrect API key provided.");
            return;
        }
    }
    if (j->kind == K_CHAT || j->kind == K_COMPL || j->kind == K_EMBED) analyze_inference(c);
}

static void answer_models(struct conn *c)
{
    struct evbuffer *b = evbuffer_new();
    if (!b) die_oom();
    evbuffer_add_printf(b, "{\"object\":\"list\",\"data\":[");
    for (size_t i = 0; i < G.nmodels; i++) {
        evbuffer_add_printf(b, "%s{\"id\":", i ? "," : "");
        json_cstr(b, G.models[i].id);
        evbuffer_add_printf(b, ",\"object\":\"model\",\"created\":0,\"owned_by\":");
        json_cstr(b, G.name);
        ADD_LIT(b, "}");
    }
    ADD_LIT(b, "]}");
    send_evbody(c, 200, "application/json", b);
    evbuffer_free(b);
}

static void answer_metrics(struct conn *c)
{
    static const struct {
        const char *name, *type, *help;
    } fams[] = {
        {"vllm:num_requests_running", "gauge", "Number of requests currently running."},
        {"vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed."},
        {"vllm:gpu_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage."},
        {"vllm:request_success_total", "counter", "Count of successfully processed requests."},
        {"vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed."},
        {"vllm:generation_tokens_total", "counter", "Number of generation tokens processed."},
    };
    struct evbuffer *b = evbuffer_new();
    if (!b) die_oom();
    for (size_t f = 0; f < sizeof fams / sizeof fams[0]; f++) {
        evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s %s\n", fams[f].name, fams[f].help,
                            fams[f].name, fams[f].type);
        for (size_t i = 0; i < G.nmodels; i++) {
            const struct model *m = &G.models[i];
            long run = m->running - m->waiting;
            double usage = G.slots ? (double)G.busy / (double)G.slots : run * 0.01;
            if (usage > 1.0) usage = 1.0;
            evbuffer_add_printf(b, "%s{model_name=\"%s\"} ", fams[f].name, m->id);
            switch (f) {
            case 0:
                evbuffer_add_printf(b, "%ld\n", run);
                break;
            case 1:
                evbuffer_add_printf(b, "%ld\n", m->waiting);
                break;
            case 2:
                evbuffer_add_printf(b, "%.4f\n", usage);
                break;
            case 3:
                evbuffer_add_printf(b, "%" PRIu64 "\n", m->requests_total);
                break;
            case 4:
                evbuffer_add_printf(b, "%" PRIu64 "\n", m->prompt_tokens_total);
                break;
            default:
                evbuffer_add_printf(b, "%" PRIu64 "\n", m->generation_tokens_total);
                break;
            }
        }
    }
    send_evbody(c, 200, "text/plain; version=0.0.4; charset=utf-8", b);
    evbuffer_free(b);
}

static void build_prefix(struct conn *c)
{
    struct job *j = &c->job;
    struct evbuffer *b = evbuffer_new();
    if (!b) die_oom();
    evbuffer_add_printf(b,
                        "{\"id\":\"%s-mock-%" PRIu64 "\",\"object\":\"%s\",\"created\":%lld,"
                        "\"model\":",
                        j->kind == K_CHAT ? "chatcmpl" : "cmpl", c->rec->seq,
                        j->kind == K_CHAT ? "chat.completion.chunk" : "text_completion",
                        (long long)j->created);
    evbuffer_add(b, j->model_json, strlen(j->model_json));
    ADD_LIT(b, ",\"choices\":");
    j->prefix = evbuffer_take_str(b, &j->prefix_len);
    evbuffer_free(b);
}

/* The complete non-stream answer of a chat or completion request. */
static void answer_completion(struct conn *c)
{
    struct job *j = &c->job;
    struct evbuffer *b = evbuffer_new();
    char tok[32];
    if (!b) die_oom();
    evbuffer_add_printf(b,
                        "{\"id\":\"%s-mock-%" PRIu64 "\",\"object\":\"%s\",\"created\":%lld,"
                        "\"model\":",
                        j->kind == K_CHAT ? "chatcmpl" : "cmpl", c->rec->seq,
                        j->kind == K_CHAT ? "chat.completion" : "text_completion",
                        (long long)j->created);
    evbuffer_add(b, j->model_json, strlen(j->model_json));
    if (j->kind == K_CHAT)
        evbuffer_add_printf(b, ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
                               "\"content\":\"");
    else
        evbuffer_add_printf(b, ",\"choices\":[{\"index\":0,\"text\":\"");
    for (long i = 0; i < j->ntokens; i++) {
        int n = snprintf(tok, sizeof tok, "tok%ld ", i);
        evbuffer_add(b, tok, (size_t)n);
    }
    j->sent = j->ntokens;
    evbuffer_add_printf(b,
                        "\"%s,\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":%ld,"
                        "\"completion_tokens\":%ld,\"total_tokens\":%ld}}",
                        j->kind == K_CHAT ? "}" : "", j->prompt_tokens, j->ntokens,
                        j->prompt_tokens + j->ntokens);
    send_evbody(c, 200, "application/json", b);
    evbuffer_free(b);
}

/* [DONE] and the last chunk. */
static void stream_done(struct conn *c)
{
    struct evbuffer *o = bufferevent_get_output(c->bev);
    if (c->chunked_out)
        ADD_LIT(o, "e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n");
    else
        ADD_LIT(o, "data: [DONE]\n\n");
    respond_done(c);
}

/* The end of a stream: the finish chunk, usage, [DONE], the last chunk. */
static void stream_tail(struct conn *c)
{
    struct job *j = &c->job;
    char buf[256];
    int n;
    if (j->kind == K_CHAT)
        n = snprintf(buf, sizeof buf, "[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}");
    else
        n = snprintf(buf, sizeof buf, "[{\"index\":0,\"text\":\"\",\"finish_reason\":\"stop\"}]}");
    sse_write(c, j->prefix, j->prefix_len, buf, (size_t)n);
    if (j->include_usage) {
        n = snprintf(buf, sizeof buf,
                     "[],\"usage\":{\"prompt_tokens\":%ld,\"completion_tokens\":%ld,"
                     "\"total_tokens\":%ld}}",
                     j->prompt_tokens, j->sent, j->prompt_tokens + j->sent);
        sse_write(c, j->prefix, j->prefix_len, buf, (size_t)n);
    }
    stream_done(c);
}

/* x-mock-error-after: the generation fails. vLLM says so in the stream, with an error event
 * (create_streaming_error_response), and then ends it as usual. */
static void stream_error(struct conn *c)
{
    static const char ev[] = "{\"error\":{\"object\":\"error\",\"message\":\"Injected generation "
                             "failure.\",\"type\":\"InternalServerError\",\"param\":null,"
                             "\"code\":500}}";
    sse_write(c, ev, sizeof ev - 1, "", 0);
    c->job.failed = true;
    stream_done(c);
}

/* One step of a stream: the next token event, the end, or the injected reset. May free c. */
static void stream_tick(struct conn *c)
{
    struct job *j = &c->job;
    struct evbuffer *o = bufferevent_get_output(c->bev);
    char buf[128];
    int n;

    for (;;) {
        if (j->reset_after >= 0 && j->sent == j->reset_after) {
            start_reset(c);
            return;
        }
        if (j->error_after >= 0 && j->sent == j->error_after) {
            stream_error(c);
            return;
        }
        if (j->sent >= j->ntokens) { /* no tokens at all: a role-only event, then the end */
            if (j->kind == K_CHAT) {
                n = snprintf(buf, sizeof buf,
                             "[{\"index\":0,\"delta\":{\"role\":\"assistant\","
                             "\"content\":\"\"},\"finish_reason\":null}]}");
                sse_write(c, j->prefix, j->prefix_len, buf, (size_t)n);
            }
            stream_tail(c);
            return;
        }
        if (j->kind == K_CHAT)
            n = snprintf(buf, sizeof buf,
                         "[{\"index\":0,\"delta\":{%s\"content\":\"tok%ld \"},"
                         "\"finish_reason\":null}]}",
                         j->sent == 0 ? "\"role\":\"assistant\"," : "", j->sent);
        else
            n = snprintf(buf, sizeof buf,
                         "[{\"index\":0,\"text\":\"tok%ld \",\"finish_reason\":null}]}", j->sent);
        sse_write(c, j->prefix, j->prefix_len, buf, (size_t)n);
        j->sent++;
        c->rec->tokens_sent = j->sent;
        if (j->sent == j->ntokens && j->reset_after != j->sent && j->error_after != j->sent) {
            stream_tail(c);
            return;
        }
        if (j->token_ms > 0) {
            flush(c);
            arm(c, P_STREAM, j->first_us + (int64_t)j->sent * j->token_ms * 1000 - now_us());
            return;
        }
        if (evbuffer_get_length(o) > STREAM_OUT_HIGH) {
            flush(c);
            if (evbuffer_get_length(o) == 0) continue;
            c->on_drain = D_STREAM; /* token-ms 0: go on once the peer has read some */
            return;
        }
    }
}

/* After the x-mock-delay-ms wait: the faults, then the answer. May free c. */
static void dispatch(struct conn *c)
{
    struct job *j = &c->job;
    char msg[64];

    if (j->mock_close) {
        job_end(c, false, false);
        conn_free(c, false);
        return;
    }
    if (j->reset_after == 0 && !j->stream) {
        start_reset(c);
        return;
    }
    if (j->mock_status) {
        snprintf(msg, sizeof msg, "Injected status %ld.", j->mock_status);
        send_error(c, (int)j->mock_status,
                   j->mock_status >= 500 ? "server_error" : "invalid_request_error", "mock_error",
                   msg);
        return;
    }
    if (j->err_status) {
        send_error(c, j->err_status, "invalid_request_error", j->err_code, j->err_msg);
        return;
    }
    /* The capacity model: an inference request needs one of the --slots; it waits for one. */
    if (G.slots && j->running && !j->slot) {
        if (G.busy >= G.slots) {
            j->queued = true;
            G.models[j->model].waiting++;
            c->wnext = NULL;
            c->wprev = G.wait_tail;
            if (G.wait_tail)
                G.wait_tail->wnext = c;
            else
                G.wait_head = c;
            G.wait_tail = c;
            return;
        }
        j->slot = true;
        G.busy++;
    }
    run_job(c);
}

/* Answers an inference request that has its slot (or any other request). May free c. */
static void run_job(struct conn *c)
{
    struct job *j = &c->job;
    if (j->running && G.prompt_us > 0 && (j->kind == K_CHAT || j->kind == K_COMPL))
        j->ttft_ms += j->prompt_tokens * G.prompt_us / 1000; /* prefill */
    switch (j->kind) {
    case K_HEALTH:
        send_body(c, 200, "application/json", OK_BODY, sizeof OK_BODY - 1);
        return;
    case K_MODELS:
        answer_models(c);
        return;
    case K_METRICS:
        answer_metrics(c);
        return;
    case K_EMBED:
        if (j->ttft_ms > 0) {
            arm(c, P_WAIT, j->ttft_ms * 1000);
            return;
        }
        send_body(c, 200, "application/json", j->body, j->body_len);
        return;
    case K_CHAT:
    case K_COMPL:
        if (j->stream) {
            build_prefix(c);
            write_head(c, 200, "text/event-stream", -1);
            j->first_us = now_us() + j->ttft_ms * 1000;
            flush(c);
            arm(c, P_STREAM, j->ttft_ms * 1000);
            return;
        }
        {
            int64_t wait_us = (j->ttft_ms + j->ntokens * j->token_ms) * 1000;
            if (wait_us > 0) {
                arm(c, P_WAIT, wait_us);
                return;
            }
        }
        answer_completion(c);
        return;
    default:
        send_error(c, 404, "invalid_request_error", "not_found", "Not found.");
        return;
    }
}

/* The /_mock/ endpoints: never recorded, never delayed. */
static void handle_mock(struct conn *c)
{
    struct rec *r = c->rec;
    bool get = strcmp(r->method, "GET") == 0, post = strcmp(r->method, "POST") == 0;
    struct evbuffer *b;

    if (post && path_is(r, "/_mock/reset")) {
        record_clear();
        G.requests = 0;
        G.conns_accepted = 0;
        send_body(c, 200, "application/json", OK_BODY, sizeof OK_BODY - 1);
        return;
    }
    if (get && path_is(r, "/_mock/stats")) {
        char buf[256];
        int n = snprintf(buf, sizeof buf,
                         "{\"connections_accepted\":%" PRIu64 ",\"connections_open\":%" PRIu64
                         ",\"requests\":%" PRIu64 "}",
                         G.conns_accepted, G.conns_open, G.requests);
        send_body(c, 200, "application/json", buf, (size_t)n);
        return;
    }
    if (get && path_is(r, "/_mock/requests")) {
        /* ?since=N: only entries with seq > N */
        uint64_t since = 0;
        const char *q = strstr(r->target, "since=");
        bool first = true;
        if (q && strchr(r->target, '?') && q > strchr(r->target, '?'))
            since = strtoull(q + 6, NULL, 10);
        b = evbuffer_new();
        if (!b) die_oom();
        ADD_LIT(b, "[");
        for (size_t i = 0; i < G.ring_count; i++) {
            const struct rec *e = G.ring[(G.ring_head + i) % RECORD_MAX];
            if (e->seq <= since) continue;
            if (!first) ADD_LIT(b, ",\n");
            first = false;
            record_entry_json(b, e);
        }
        ADD_LIT(b, "]\n");
        send_evbody(c, 200, "application/json", b);
        evbuffer_free(b);
        return;
    }
    send_error(c, 404, "invalid_request_error", "not_found", "Not found.");
}

/* A request is fully received. May free c. */
static void handle_request(struct conn *c)
{
    struct rec *r = c->rec;
    c->st = C_BUSY;
    r->conn_id = c->id;
    r->started_ms = since_start_ms();
    if (strncmp(r->target, "/_mock/", 7) == 0) {
        handle_mock(c);
        return;
    }
    r->seq = ++G.next_seq;
    G.requests++;
    record_push(r);
    analyze(c);
    if (c->job.delay_ms > 0) {
        arm(c, P_DELAY, c->job.delay_ms * 1000);
        return;
    }
    dispatch(c);
}

/* ---- reading requests ------------------------------------------------- */

static bool parse_request_line(struct conn *c, char *line)
{
    char *sp1 = strchr(line, ' '), *sp2;
    if (!sp1 || sp1 == line) return false;
    sp2 = strchr(sp1 + 1, ' ');
    if (!sp2 || sp2 == sp1 + 1 || strchr(sp2 + 1, ' ')) return false;
    *sp1 = *sp2 = 0;
    if (strcmp(sp2 + 1, "HTTP/1.1") == 0)
        c->http10 = false;
    else if (strcmp(sp2 + 1, "HTTP/1.0") == 0)
        c->http10 = true;
    else
        return false;
    for (const char *p = line; *p; p++)
        if (!isupper((unsigned char)*p)) return false;
    c->rec = rec_new();
    c->rec->method = xstrdup(line);
    c->rec->target = xstrdup(sp1 + 1);
    return true;
}

static bool parse_header_line(struct conn *c, const char *line, size_t len)
{
    const char *colon = memchr(line, ':', len), *v, *e;
    if (!colon || colon == line || c->rec->nhdr >= MAX_HEADERS) return false;
    for (const char *p = line; p < colon; p++)
        if (*p <= ' ' || *p >= 127) return false;
    v = colon + 1;
    e = line + len;
    while (v < e && (*v == ' ' || *v == '\t')) v++;
    while (e > v && (e[-1] == ' ' || e[-1] == '\t')) e--;
    rec_add_header(c->rec, line, (size_t)(colon - line), v, (size_t)(e - v));
    return true;
}

static void body_append(struct rec *r, struct evbuffer *in, size_t n)
{
    if (r->body_len + n + 1 > r->body_cap) {
        size_t cap = r->body_cap ? r->body_cap : 1024;
        while (cap < r->body_len + n + 1) cap *= 2;
        r->body = xrealloc(r->body, cap);
        r->body_cap = cap;
    }
    evbuffer_remove(in, r->body + r->body_len, n);
    r->body_len += n;
    r->body[r->body_len] = 0;
}

/* The head is read: decide how the body comes. Returns false on a bad request. */
static bool head_done(struct conn *c)
{
    struct rec *r = c->rec;
    const char *cl = rec_header(r, "content-length");
    const char *p = r->hbuf, *end = r->hbuf + r->hlen;

    if (c->http10)
        c->keepalive = rec_header_has_token(r, "connection", "keep-alive");
    else
        c->keepalive = !rec_header_has_token(r, "connection", "close");
    /* every Content-Length must agree */
    while (p < end) {
        const char *v = p + strlen(p) + 1;
        if (strcmp(p, "content-length") == 0 && strcmp(v, cl) != 0) return false;
        p = v + strlen(v) + 1;
    }
    if (rec_header(r, "transfer-encoding")) {
        if (!rec_header_has_token(r, "transfer-encoding", "chunked") || c->http10) return false;
        c->st = C_CHUNK_SIZE;
    } else if (cl) {
        long n = parse_num(cl, MAX_BODY_BYTES);
        if (n < 0) return false;
        c->body_left = (size_t)n;
        r->body = xmalloc((size_t)n + 1);
        r->body_cap = (size_t)n + 1;
        r->body[0] = 0;
        c->st = C_BODY_CL;
    } else {
        c->body_left = 0;
        c->st = C_BODY_CL;
    }
    if (c->st != C_BODY_CL || c->body_left > 0) {
        if (rec_header_has_token(r, "expect", "100-continue") && !c->http10 &&
            evbuffer_get_length(bufferevent_get_input(c->bev)) == 0) {
            ADD_LIT(bufferevent_get_output(c->bev), "HTTP/1.1 100 Continue\r\n\r\n");
            flush(c);
        }
    }
    return true;
}

/* Reads as much of the next request as has arrived. May free c. */
static void process_input(struct conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    char *line;
    size_t n;

    for (;;) {
        switch (c->st) {
        case C_HEAD:
            line = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF);
            if (!line) {
                if (c->head_bytes + evbuffer_get_length(in) > MAX_HEAD_BYTES)
                    bad_request(c, 431, "Request header too large.");
                return;
            }
            c->head_bytes += n + 2;
            if (c->head_bytes > MAX_HEAD_BYTES) {
                free(line);
                bad_request(c, 431, "Request header too large.");
                return;
            }
            if (!c->rec) {
                if (n > 0 && !parse_request_line(c, line)) {
                    free(line);
                    bad_request(c, 400, "Malformed request line.");
                    return;
                }
            } else if (n == 0) {
                if (!head_done(c)) {
                    free(line);
                    bad_request(c, 400, "Malformed request framing.");
                    return;
                }
            } else if (!parse_header_line(c, line, n)) {
                free(line);
                bad_request(c, 400, "Malformed header line.");
                return;
            }
            free(line);
            break;
        case C_BODY_CL:
            n = evbuffer_get_length(in);
            if (n > c->body_left) n = c->body_left;
            if (n > 0) {
                body_append(c->rec, in, n);
                c->body_left -= n;
            }
            if (c->body_left > 0) return;
            handle_request(c);
            return;
        case C_CHUNK_SIZE:
        case C_CHUNK_CRLF:
        case C_TRAILERS:
            line = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF);
            if (!line) {
                if (evbuffer_get_length(in) > 4096) bad_request(c, 400, "Malformed chunked body.");
                return;
            }
            if (c->st == C_CHUNK_SIZE) {
                char *e = line;
                unsigned long sz;
                errno = 0;
                sz = isxdigit((unsigned char)line[0]) ? strtoul(line, &e, 16) : ULONG_MAX;
                if (sz == ULONG_MAX || errno || (*e && *e != ';' && *e != ' ' && *e != '\t') ||
                    c->rec->body_len + sz > MAX_BODY_BYTES) {
                    free(line);
                    bad_request(c, sz > MAX_BODY_BYTES ? 413 : 400, "Bad chunk size.");
                    return;
                }
                c->body_left = sz;
                c->st = sz ? C_CHUNK_DATA : C_TRAILERS;
            } else if (c->st == C_CHUNK_CRLF) {
                if (n != 0) {
                    free(line);
                    bad_request(c, 400, "Malformed chunked body.");
                    return;
                }
                c->st = C_CHUNK_SIZE;
            } else if (n == 0) {
                free(line);
                if (!c->rec->body) c->rec->body = xstrdup("");
                handle_request(c);
                return;
            }
            free(line);
            break;
        case C_CHUNK_DATA:
            n = evbuffer_get_length(in);
            if (n > c->body_left) n = c->body_left;
            if (n == 0) return;
            body_append(c->rec, in, n);
            c->body_left -= n;
            if (c->body_left == 0) c->st = C_CHUNK_CRLF;
            break;
        case C_BUSY:
        case C_CLOSING:
            return;
        }
    }
}

/* ---- libevent callbacks ----------------------------------------------- */

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    enum phase p = c->phase;
    (void)fd;
    (void)what;
    c->phase = P_NONE;
    switch (p) {
    case P_IDLE:
    case P_CLOSE:
        conn_free(c, false);
        return;
    case P_RESUME:
        process_input(c);
        return;
    case P_DELAY:
        dispatch(c);
        return;
    case P_START:
        run_job(c);
        return;
    case P_WAIT:
        if (c->job.kind == K_EMBED)
            send_body(c, 200, "application/json", c->job.body, c->job.body_len);
        else
            answer_completion(c);
        return;
    case P_STREAM:
        stream_tick(c);
        return;
    case P_NONE:
        return;
    }
}

static void read_cb(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    if (c->st == C_CLOSING) {
        evbuffer_drain(in, evbuffer_get_length(in));
        return;
    }
    if (c->st == C_BUSY) return; /* pipelined: waits until the current answer is done */
    if (c->phase == P_IDLE || c->phase == P_RESUME) disarm(c);
    process_input(c);
}

static void write_cb(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    enum drain d = c->on_drain;
    if (evbuffer_get_length(bufferevent_get_output(bev)) > 0) return;
    bufferevent_disable(bev, EV_WRITE); /* back to writing directly, see flush() */
    c->on_drain = D_NONE;
    switch (d) {
    case D_CLOSE:
        conn_free(c, false);
        return;
    case D_RESET:
        conn_reset(c);
        return;
    case D_STREAM:
        stream_tick(c);
        return;
    case D_NONE:
        return;
    }
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct conn *c = arg;
    (void)bev;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
        conn_free(c, true); /* the peer went away: an unfinished job is client_closed */
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
                      void *arg)
{
    struct conn *c;
    int one = 1;
    (void)l;
    (void)sa;
    (void)salen;
    (void)arg;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c = xmalloc(sizeof *c);
    memset(c, 0, sizeof *c);
    c->bev = bufferevent_socket_new(G.base, fd, BEV_OPT_CLOSE_ON_FREE);
    c->timer = evtimer_new(G.base, timer_cb, c);
    if (!c->bev || !c->timer) {
        fputs("gotthard-mock-backend: cannot set up a connection\n", stderr);
        if (c->bev)
            bufferevent_free(c->bev);
        else
            evutil_closesocket(fd);
        if (c->timer) event_free(c->timer);
        free(c);
        return;
    }
    c->id = ++G.next_conn_id;
    c->next = G.conns;
    if (G.conns) G.conns->prev = c;
    G.conns = c;
    G.conns_accepted++;
    G.conns_open++;
    bufferevent_setcb(c->bev, read_cb, write_cb, event_cb, c);
    bufferevent_enable(c->bev, EV_READ); /* EV_WRITE only while output waits, see flush() */
    if (G.keepalive_ms > 0) arm(c, P_IDLE, (int64_t)G.keepalive_ms * 1000);
}

static void relisten_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    evconnlistener_enable(G.listener);
}

/* accept() failed (out of descriptors, most likely): pause accepting for 100 ms. */
static void accept_error_cb(struct evconnlistener *l, void *arg)
{
    struct timeval tv = {0, 100000};
    (void)arg;
    fprintf(stderr, "gotthard-mock-backend: accept: %s\n",
            evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
    evconnlistener_disable(l);
    evtimer_add(G.ev_relisten, &tv);
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    (void)arg;
    event_base_loopbreak(G.base);
}

/* ---- start-up --------------------------------------------------------- */

static void usage(FILE *f)
{
    fputs("usage: gotthard-mock-backend --port N [options]\n"
          "\n"
          "An OpenAI-compatible inference server for demos, tests and benchmarks.\n"
          "\n"
          "  --port N          port to listen on; 0 picks a free one (printed as port=N)\n"
          "  --host ADDR       address to listen on (default 127.0.0.1)\n"
          "  --models A,B,...  served model ids (default mock-model)\n"
          "  --ttft-ms N       time to first token (default 0)\n"
          "  --token-ms N      time between tokens (default 0)\n"
          "  --tokens N        completion tokens per answer (default 16)\n"
          "  --api-key KEY     require 'Authorization: Bearer KEY' on /v1/\n"
          "  --name NAME       this backend's name, in X-Mock-Backend and owned_by (default mock)\n"
          "  --keepalive-ms N  close idle keep-alive connections after N ms (default 0: never)\n"
          "  --slots N         run at most N inference requests at once; the rest wait in\n"
          "                    a FIFO queue (vllm:num_requests_waiting); 0: no limit (default)\n"
          "  --prompt-us N     prefill: N microseconds per prompt token before the first\n"
          "                    token (default 0)\n"
          "  --help            this text\n"
          "\n"
          "Per-request headers: x-mock-status, x-mock-delay-ms, x-mock-ttft-ms,\n"
          "x-mock-token-ms, x-mock-tokens, x-mock-reset-after, x-mock-error-after,\n"
          "x-mock-close, x-mock-reveal.\n"
          "Test endpoints: GET /_mock/requests[?since=SEQ], POST /_mock/reset, GET /_mock/stats.\n",
          f);
}

static int parse_models(const char *list)
{
    char *copy = xstrdup(list), *save = NULL, *tok;
    for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (!*tok || strlen(tok) > 200 || strpbrk(tok, "\"\\\n\r") || find_model(tok) >= 0) {
            fprintf(stderr, "gotthard-mock-backend: bad or repeated model id in --models\n");
            free(copy);
            return -1;
        }
        G.models = xrealloc(G.models, (G.nmodels + 1) * sizeof *G.models);
        memset(&G.models[G.nmodels], 0, sizeof *G.models);
        G.models[G.nmodels++].id = xstrdup(tok);
    }
    free(copy);
    if (G.nmodels == 0) {
        fprintf(stderr, "gotthard-mock-backend: --models names no model\n");
        return -1;
    }
    return 0;
}

static int parse_args(int argc, char **argv)
{
    enum {
        O_PORT = 1,
        O_HOST,
        O_MODELS,
        O_TTFT,
        O_TOKEN,
        O_TOKENS,
        O_KEY,
        O_NAME,
        O_KA,
        O_SLOTS,
        O_PROMPT,
        O_HELP
    };
    static const struct option longopts[] = {
        {"port", required_argument, NULL, O_PORT},
        {"host", required_argument, NULL, O_HOST},
        {"models", required_argument, NULL, O_MODELS},
        {"ttft-ms", required_argument, NULL, O_TTFT},
        {"token-ms", required_argument, NULL, O_TOKEN},
        {"tokens", required_argument, NULL, O_TOKENS},
        {"api-key", required_argument, NULL, O_KEY},
        {"name", required_argument, NULL, O_NAME},
        {"keepalive-ms", required_argument, NULL, O_KA},
        {"slots", required_argument, NULL, O_SLOTS},
        {"prompt-us", required_argument, NULL, O_PROMPT},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    const char *models = "mock-model";
    int opt;

    G.host = "127.0.0.1";
    G.port = -1;
    G.name = "mock";
    G.tokens = 16;
    while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        long *num = NULL, max = MAX_MS;
        switch (opt) {
        case O_PORT:
            num = &G.port, max = 65535;
            break;
        case O_HOST:
            G.host = optarg;
            break;
        case O_MODELS:
            models = optarg;
            break;
        case O_TTFT:
            num = &G.ttft_ms;
            break;
        case O_TOKEN:
            num = &G.token_ms;
            break;
        case O_TOKENS:
            num = &G.tokens, max = MAX_TOKENS;
            break;
        case O_KEY:
            G.api_key = optarg;
            break;
        case O_NAME:
            G.name = optarg;
            break;
        case O_KA:
            num = &G.keepalive_ms;
            break;
        case O_SLOTS:
            num = &G.slots, max = 1000000;
            break;
        case O_PROMPT:
            num = &G.prompt_us;
            break;
        case 'h':
        case O_HELP:
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            return -1;
        }
        if (num && (*num = parse_num(optarg, max)) < 0) {
            fprintf(stderr, "gotthard-mock-backend: bad number for --%s\n", longopts[opt - 1].name);
            return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "gotthard-mock-backend: unexpected argument\n");
        usage(stderr);
        return -1;
    }
    if (G.port < 0) {
        fprintf(stderr, "gotthard-mock-backend: --port is required\n");
        usage(stderr);
        return -1;
    }
    if (!*G.name || strpbrk(G.name, "\"\\\r\n")) {
        fprintf(stderr, "gotthard-mock-backend: bad --name\n");
        return -1;
    }
    if (G.api_key && !*G.api_key) {
        fprintf(stderr, "gotthard-mock-backend: empty --api-key\n");
        return -1;
    }
    return parse_models(models);
}

static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int listen_on(void)
{
    struct addrinfo hints, *ai = NULL;
    char port[16];
    struct sockaddr_storage ss;
    socklen_t sslen = sizeof ss;
    int rc, bound;

    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    snprintf(port, sizeof port, "%ld", G.port);
    rc = getaddrinfo(G.host, port, &hints, &ai);
    if (rc != 0) {
        fprintf(stderr, "gotthard-mock-backend: %s: %s\n", G.host, gai_strerror(rc));
        return -1;
    }
    G.listener = evconnlistener_new_bind(
        G.base, accept_cb, NULL, LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC,
        4096, ai->ai_addr, (int)ai->ai_addrlen);
    freeaddrinfo(ai);
    if (!G.listener) {
        fprintf(stderr, "gotthard-mock-backend: cannot listen on %s:%ld: %s\n", G.host, G.port,
                strerror(errno));
        return -1;
    }
    evconnlistener_set_error_cb(G.listener, accept_error_cb);
    if (getsockname(evconnlistener_get_fd(G.listener), (struct sockaddr *)&ss, &sslen) != 0)
        return -1;
    bound = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                           : ((struct sockaddr_in *)&ss)->sin_port);
    printf("port=%d\n", bound);
    fflush(stdout);
    fprintf(stderr, "gotthard-mock-backend: %s listening on %s port %d\n", G.name, G.host, bound);
    return 0;
}

int main(int argc, char **argv)
{
    int rc = 1;

    if (parse_args(argc, argv) != 0) {
        for (size_t i = 0; i < G.nmodels; i++) free(G.models[i].id);
        free(G.models);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit();
    G.start_us = now_us();

    G.base = event_base_new();
    if (!G.base) {
        fputs("gotthard-mock-backend: cannot create the event loop\n", stderr);
        goto out;
    }
    G.ev_term = evsignal_new(G.base, SIGTERM, signal_cb, NULL);
    G.ev_int = evsignal_new(G.base, SIGINT, signal_cb, NULL);
    G.ev_relisten = evtimer_new(G.base, relisten_cb, NULL);
    if (!G.ev_term || !G.ev_int || !G.ev_relisten || evsignal_add(G.ev_term, NULL) != 0 ||
        evsignal_add(G.ev_int, NULL) != 0) {
        fputs("gotthard-mock-backend: cannot set up signals\n", stderr);
        goto out;
    }
    if (listen_on() != 0) goto out;
    event_base_dispatch(G.base);
    rc = 0;
out:
    while (G.conns) conn_free(G.conns, false);
    record_clear();
    if (G.listener) evconnlistener_free(G.listener);
    if (G.ev_relisten) event_free(G.ev_relisten);
    if (G.ev_int) event_free(G.ev_int);
    if (G.ev_term) event_free(G.ev_term);
    if (G.base) event_base_free(G.base);
    libevent_global_shutdown();
    for (size_t i = 0; i < G.nmodels; i++) free(G.models[i].id);
    free(G.models);
    return rc;
}
