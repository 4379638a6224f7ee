/* The backend side: keep-alive pools, connecting, sending the request, relaying the answer. */
#include "proxy/upstream.h"

#include "base/clock.h"

#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "proxy/balance.h"
#include "base/body.h"
#include "base/json.h"
#include "base/log.h"
#include "base/oai_error.h"
#include "store/backend_geo.h"
#include "base/tls.h"

#define CLIENT_HIGH (256 * 1024) /* stop reading the backend past this much unsent */
#define MAX_RESPONSE_HEAD (64 * 1024)
#define MAX_RESPONSE_HEADERS 256
#define MAX_IDLE_PER_BACKEND 1024

enum { UP_CONNECTING, UP_WAITING, UP_BODY, UP_IDLE };
enum { F_NONE, F_LENGTH, F_CHUNKED, F_EOF };

struct gw_upconn {
    gw_worker_t *w;
    gw_backend_t *be;
    gw_config_t *cfg;
    gw_io_t *io;
    struct event *timer;
    gw_req_t *req;
    gw_upconn_t *prev, *next; /* in the idle list */
    int state, framing;
    size_t head_scanned;
    int64_t remaining;
    gw_chunked_t ck;
    uint64_t received;
    uint64_t sent_us; /* when the request went (a stale connection fails at once) */
    /* The backend refused the request in its stream's first event (a 4xx error event) */
    const char *refusal; /* that event's data, in the request's memory */
    size_t refusal_len;
    int refusal_status;
    uint64_t idle_since_us;
    struct evbuffer *held; /* the client's head while held back (see release_head) */
    size_t unsent;         /* paused: the client's unsent bytes when the timer was last armed */
    unsigned reused : 1, keepalive : 1, paused : 1;
    unsigned head_held : 1;   /* the client's head is in `held`: nothing reached the client yet */
    unsigned broken : 1;      /* the answer's body is unusable: end the request as failed */
    unsigned health_told : 2; /* passive health was told: HEALTH_OK or HEALTH_FAILED */
    const gw_resolved_t *res; /* the verified addresses it was connected under (held) */
};

static void up_read_cb(gw_io_t *io, void *arg);
static void up_event_cb(gw_io_t *io, int what, void *arg);
static void up_timer_cb(evutil_socket_t fd, short what, void *arg);
static void try_backend(gw_req_t *r);
static const gw_io_cbs_t up_cbs = {up_read_cb, NULL, up_event_cb};

enum { HEALTH_OK = 1, HEALTH_FAILED = 2 };
#define STALE_WINDOW_US 1000000 /* an idle close races a request by milliseconds, not seconds */

static void up_free(gw_upconn_t *u)
{
    gw_io_free(u->io);
    event_free(u->timer);
    evbuffer_free(u->held);
    gw_resolved_release(u->res);
    free(u);
}

static void arm(gw_upconn_t *u, int64_t ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(u->timer, &tv);
}

static void idle_remove(gw_upconn_t *u)
{
    gw_worker_t *w = u->w;
    size_t i = u->be->index;
    if (u->prev)
        u->prev->next = u->next;
    else
        w->idle[i] = u->next;
    if (u->next) u->next->prev = u->prev;
    w->nidle[i]--;
}

/* Hands the connection back: to the idle pool when it can carry another request. */
static void release(gw_upconn_t *u, int reusable)
{
    gw_worker_t *w = u->w;
    size_t i = u->be->index;
    /* Unsent output may still reference the request's body: such a connection is not reused. */
    /* Nor one whose backend re-resolved since: it would never be taken (take_idle), only keep
     * its old state alive. (The pointer is compared, not read.) */
    if (!reusable || w->draining || u->cfg != w->idle_cfg || w->nidle[i] >= MAX_IDLE_PER_BACKEND ||
        u->res != atomic_load_explicit(&u->be->res, memory_order_relaxed) ||
        evbuffer_get_length(gw_io_in(u->io)) || evbuffer_get_length(gw_io_out(u->io))) {
        up_free(u);
        return;
    }
    u->req = NULL;
    u->state = UP_IDLE;
    gw_io_set_eager(u->io, 0);
    if (u->paused) gw_io_read_enable(u->io, 1);
    u->paused = 0;
    /* A backend that closes is seen at once (EOF); one that keeps the connection open is left
     * after timeouts.upstream_keepalive_ms (up_timer_cb), as nginx's keepalive_timeout. */
    arm(u, u->cfg->timeouts.upstream_keepalive_ms);
    u->idle_since_us = gw_now_us();
    u->prev = NULL;
    u->next = w->idle[i];
    if (u->next) u->next->prev = u;
    w->idle[i] = u;
    w->nidle[i]++;
}

/* Detaches the backend connection from the request and counts the request out. */
static gw_upconn_t *detach(gw_req_t *r)
{
    gw_upconn_t *u = r->up;
    if (!u) return NULL;
    r->up = NULL;
    u->req = NULL;
    atomic_fetch_sub_explicit(&u->be->live->inflight, 1, memory_order_relaxed);
    gw_balance_kick(r->w); /* a slot is free: a waiting request may take it */
    return u;
}

void gw_upstream_abort(gw_req_t *r)
{
    gw_upconn_t *u = detach(r);
    if (u) up_free(u); /* the backend sees the close and stops generating */
}

void gw_upstream_close_idle(gw_worker_t *w)
{
    if (!w->idle_cfg) return;
    for (size_t i = 0; i < w->idle_cfg->nbackends; i++)
        while (w->idle[i]) {
            gw_upconn_t *u = w->idle[i];
            idle_remove(u);
            up_free(u);
        }
}

static void write_request(gw_req_t *r, gw_upconn_t *u)
{
    struct evbuffer *out = gw_io_out(u->io);
    gw_backend_t *b = u->be;
    const gw_http_head_t *h = &r->head;
    /* The body is the client's or, when a plugin changed it, the one settle_body printed. */
    size_t body_len = evbuffer_get_length(r->body);
    /* Room for every part counted; the writer checks as it writes, so a miscount truncates
     * nothing into memory beyond it, and the request then fails instead of going out cut. */
    size_t cap = 64 + 41 + 20 + h->target_len + h->method_len + strlen(b->host_header) +
                 strlen(r->id) + b->auth_line_len;
    for (size_t i = 0; i < h->nheaders; i++)
        cap += h->headers[i].name_len + h->headers[i].value_len + 4;
    for (gw_hdr_edit_t *e = r->up_edits; e; e = e->next)
        cap += strlen(e->name) + (e->value ? strlen(e->value) : 0) + 4;
    struct evbuffer_iovec v;
    if (evbuffer_reserve_space(out, (ssize_t)cap, &v, 1) < 1) return;
    gw_out_t o = {v.iov_base, 0, v.iov_len};
    gw_out_put(&o, h->method, h->method_len);
    gw_out_put(&o, " ", 1);
    gw_out_put(&o, h->target, h->target_len);
    gw_out_put(&o, " HTTP/1.1\r\nhost: ", 17);
    gw_out_str(&o, b->host_header);
    gw_out_put(&o, "\r\n", 2);
    for (size_t i = 0; i < h->nheaders; i++) {
        const gw_header_t *hd = &h->headers[i];
        int kind = h->kind[i];
        /* framing and hop-by-hop are the gateway's; credentials never leave; the ids are ours
         * (the client's own is for the client only); codings: the body is identity both ways */
        if (kind != GW_H_OTHER && kind != GW_H_CONTENT_TYPE) continue;
        int edited = 0;
        for (gw_hdr_edit_t *e = r->up_edits; e && !edited; e = e->next)
            edited = gw_http_name_eq(hd->name, hd->name_len, e->name);
        if (edited) continue;
        gw_out_put(&o, hd->name, hd->name_len);
        gw_out_put(&o, ": ", 2);
        gw_out_put(&o, hd->value, hd->value_len);
        gw_out_put(&o, "\r\n", 2);
    }
    for (gw_hdr_edit_t *e = r->up_edits; e; e = e->next) {
        /* a plugin sets what a client may send, no more (the kinds above are the gateway's) */
        int kind = e->value ? gw_http_header_kind(e->name, strlen(e->name)) : GW_H_OTHER;
        if (!e->value || (kind != GW_H_OTHER && kind != GW_H_CONTENT_TYPE)) continue;
        /* the newest edit of a name wins */
        int shadowed = 0;
        for (gw_hdr_edit_t *f = r->up_edits; f != e && !shadowed; f = f->next)
            shadowed = strcasecmp(f->name, e->name) == 0;
        if (shadowed) continue;
        gw_out_str(&o, e->name);
        gw_out_put(&o, ": ", 2);
        gw_out_str(&o, e->value);
        gw_out_put(&o, "\r\n", 2);
    }
    gw_out_put(&o, "accept-encoding: identity\r\nx-request-id: ", 41);
    gw_out_str(&o, r->id);
    gw_out_put(&o, "\r\ncontent-length: ", 18);
    gw_out_u64(&o, body_len);
    gw_out_put(&o, "\r\n", 2);
    if (b->auth_line) gw_out_put(&o, b->auth_line, b->auth_line_len);
    gw_out_put(&o, "\r\n", 2);
    if (o.len > o.cap) return; /* miscounted: nothing committed, the first-byte timer ends it */
    v.iov_len = o.len;
    evbuffer_commit_space(out, &v, 1);
    if (body_len) evbuffer_add_buffer_reference(out, r->body);
    gw_io_flush(u->io);
}

/* Connects to a verified address of rs, b's state that the connect check let through (held:
 * the connection takes that reference, or the caller keeps it on NULL). */
static gw_upconn_t *connect_backend(gw_req_t *r, gw_backend_t *b, const gw_resolved_t *rs)
{
    gw_worker_t *w = r->w;
    const gw_addr_t *addr = &rs->addrs[0];
    gw_upconn_t *u = calloc(1, sizeof(*u));
    if (!u) return NULL;
    u->w = w;
    u->be = b;
    u->cfg = r->cfg;
    SSL *ssl = b->ssl ? gw_tls_client_ssl(b->ssl, b->host) : NULL;
    if (b->ssl && !ssl) {
        free(u);
        return NULL;
    }
    u->timer = evtimer_new(w->base, up_timer_cb, u);
    u->held = evbuffer_new();
    if (!u->timer || !u->held) {
        if (ssl) SSL_free(ssl); /* gw_io_connect would own it, even when it fails */
    } else {
        u->io =
            gw_io_connect(w->base, (const struct sockaddr *)&addr->ss, addr->len, ssl, &up_cbs, u);
    }
    if (!u->io) {
        if (u->timer) event_free(u->timer);
        if (u->held) evbuffer_free(u->held);
        free(u);
        return NULL;
    }
    gw_io_set_limits(u->io, 0, 0);
    arm(u, r->cfg->timeouts.upstream_connect_ms);
    u->res = rs;
    return u;
}

static void fail(gw_req_t *r, int status, const char *code, int retryable);
static void connect_failed(gw_req_t *r, gw_backend_t *b);

/* The most recently used idle connection to b made under rs (b's current state), dropping
 * those idle for too long or made under a state since replaced. */
static gw_upconn_t *take_idle(gw_req_t *r, gw_backend_t *b, const gw_resolved_t *rs)
{
    gw_worker_t *w = r->w;
    if (w->idle_cfg != r->cfg) return NULL;
    uint64_t now = gw_now_us();
    while (w->idle[b->index]) {
        gw_upconn_t *u = w->idle[b->index];
        idle_remove(u);
        /* Re-resolved since: its address may no longer be a verified one. */
        if (now - u->idle_since_us < (uint64_t)u->cfg->timeouts.upstream_keepalive_ms * 1000u &&
            u->res == rs)
            return u;
        up_free(u);
    }
    return NULL;
}

#define VETO_RESIDENCY 3 /* r->vetoed: refused on the connect path (1: a plugin, 2: failed) */

/* The residency policy refused b for this request on the connect path (its host re-resolved
 * abroad, for the policy or the tenant's, after the request chose it; or the peer is not a
 * verified address): nothing is sent to it; the request may go on only to another backend the
 * plugins let through. */
static void residency_refused(gw_req_t *r, gw_backend_t *b, const char *reason)
{
    r->vetoed[b - (gw_backend_t *)r->pool->backends.items] = VETO_RESIDENCY;
    gw_metrics_residency_blocked(r->pool->name, b->name);
    gw_audit("residency_block", "request_id", r->id, "tenant", r->tenant ? r->tenant->id : "-",
             "pool", r->pool->name, "backend", b->name, "reason", reason, NULL);
}

static void no_backend(gw_req_t *r)
{
    int residency = 0, other = 0;
    for (size_t i = 0; i < r->pool->backends.n; i++) {
        residency |= r->vetoed[i] == VETO_RESIDENCY;
        other |= r->vetoed[i] != 1 && r->vetoed[i] != VETO_RESIDENCY;
    }
    if (residency && !other) {
        gw_req_error(r, 503, "residency_unavailable",
                     "No backend of this model's pool is approved by the residency policy.");
    } else {
        gw_req_add_response_header(r, "retry-after", "1");
        gw_req_error(r, 503, "no_backend_available", "No backend can take the request now.");
    }
    gw_req_finish(r, 0);
}

/* Sends r to b, or to the backend the pool's balancing picks (b NULL); waits in the pool's
 * queue when every eligible backend is full. `fresh`: on a new connection, never a pooled one. */
static void try_backend_on(gw_req_t *r, gw_backend_t *b, int fresh)
{
    if (!b) {
        int full = 0;
        b = gw_balance_pick(r, &full);
        if (!b && full && gw_balance_enqueue(r, gw_upstream_dispatch) == 0) return;
    }
    if (!b) {
        no_backend(r);
        return;
    }
    /* Residency: the one check of every try and connection, new or idle, against b's state
     * as it is now (it may have been re-resolved since the request chose b, waited in the
     * queue or failed elsewhere). */
    const gw_resolved_t *rs = gw_backend_hold(b);
    gw_geo_ask_t ask = {r->cfg, r->tenant ? r->tenant->id : NULL, r->res_narrow, r->nres_narrow};
    const char *why = gw_residency_connect_check(&ask, b, rs);
    if (why) {
        gw_resolved_release(rs);
        residency_refused(r, b, why);
        try_backend(r);
        return;
    }
    gw_upconn_t *u = fresh ? NULL : take_idle(r, b, rs);
    if (u) {
        u->reused = 1;
        gw_resolved_release(rs); /* the connection holds the same state */
    } else {
        u = connect_backend(r, b, rs);
        if (!u) {
            gw_resolved_release(rs);
            /* Refused at once: a connect failure like any other, retried by the same rule. */
            r->attempts++;
            r->backend = b;
            connect_failed(r, b);
            return;
        }
    }
    r->attempts++;
    r->backend = b;
    r->up = u;
    u->req = r;
    u->state = u->reused ? UP_WAITING : UP_CONNECTING;
    u->head_scanned = 0;
    u->received = 0;
    u->head_held = u->broken = u->health_told = 0;
    u->refusal_status = 0;
    u->sent_us = gw_now_us();
    atomic_fetch_add_explicit(&b->live->inflight, 1, memory_order_relaxed);
    gw_io_set_eager(u->io, 1);
    if (u->reused) arm(u, r->cfg->timeouts.upstream_first_byte_ms);
    write_request(r, u);
}

static void try_backend(gw_req_t *r)
{
    try_backend_on(r, NULL, 0);
}

void gw_upstream_dispatch(gw_req_t *r, gw_backend_t *b)
{
    if (b)
        try_backend_on(r, b, 0);
    else
        no_backend(r);
}

const gw_resolved_t *gw_upstream_resolved(const gw_req_t *r)
{
    return r->up ? r->up->res : NULL;
}

static const gw_req_upstream_t upstream_ops = {gw_upstream_start, gw_upstream_abort,
                                               gw_balance_dequeue};

void gw_upstream_install(void)
{
    gw_req_set_upstream(&upstream_ops);
}

void gw_upstream_start(gw_req_t *r)
{
    try_backend(r);
}

/* Fails the request on the backend side: retry, an error answer, or a broken stream. */
static void fail_on(gw_req_t *r, gw_backend_t *b, int stale, int counted, int status,
                    const char *code, int retryable);

/* The backend refused the request in its stream's first event, before anything reached the
 * client: answered as its error answer to a plain request would be (gw_req_backend_error), and
 * not held against the backend, which did its job. */
static void refused_in_stream(gw_req_t *r, gw_upconn_t *u)
{
    int status = u->refusal_status;
    const char *body = u->refusal;
    size_t len = u->refusal_len;
    gw_balance_succeeded(u->be);
    up_free(u); /* the rest of the stream is not read: the connection goes */
    r->sse = 0;
    gw_req_backend_error(r, status, body, len);
    gw_req_finish(r, 0);
}

/* A head still held goes with the connection: nothing reached the client, which gets a whole
 * error answer instead. */
static void fail(gw_req_t *r, int status, const char *code, int retryable)
{
    gw_upconn_t *u = detach(r);
    if (u && u->refusal_status && !r->head_sent) {
        refused_in_stream(r, u);
        return;
    }
    gw_backend_t *b = u ? u->be : r->backend;
    /* Stale: a pooled connection closed or reset before a byte of the answer came, at once.
     * The backend most likely closed it as idle while the request was on its way, and did not
     * take the request. A timeout is never stale, nor a close long after the request went: the
     * backend had it (a crash during prefill), and that is a failure. */
    int stale = retryable && u && u->reused && u->received == 0 &&
                gw_now_us() - u->sent_us < STALE_WINDOW_US;
    int counted = u && u->health_told == HEALTH_FAILED; /* one failure per request */
    if (u) up_free(u);
    fail_on(r, b, stale, counted, status, code, retryable);
}

static void connect_failed(gw_req_t *r, gw_backend_t *b)
{
    fail_on(r, b, 0, 0, 502, "upstream_error", 1);
}

static void fail_on(gw_req_t *r, gw_backend_t *b, int stale, int counted, int status,
                    const char *code, int retryable)
{
    size_t idx = (size_t)(b - (gw_backend_t *)r->pool->backends.items);
    if (!stale && !counted) gw_balance_failed(b); /* passive health */
    if (!r->head_sent && retryable) {
        /* Nothing reached the client: a kept-alive connection that the backend had closed is
         * retried on the same backend, on a new connection; a fresh failure once more on
         * another backend. A new connection is never stale, so this happens at most once per
         * attempt: the request is never walked through every pooled connection (each would
         * carry it to the backend once more). */
        if (stale) {
            r->attempts--; /* not an attempt: the next one may still be retried */
            try_backend_on(r, b, 1);
            return;
        }
        r->vetoed[idx] = 2;
        if (r->attempts < 2) {
            int other = 0;
            for (size_t i = 0; i < r->pool->backends.n; i++) other |= !r->vetoed[i];
            if (other) {
                try_backend(r);
                return;
            }
        }
    }
    if (!r->head_sent) {
        gw_req_error(r, status, code,
                     status == 504 ? "The backend did not answer in time." : "The backend failed.");
        gw_req_finish(r, 0);
        return;
    }
    /* The answer had begun: end it so that the client cannot take it for complete. */
    r->status = status;
    r->code = code;
    if (r->sse && r->conn) {
        char ev[256];
        int n = snprintf(ev, sizeof(ev),
                         "data: {\"error\":{\"message\":\"The backend failed during the stream.\","
                         "\"type\":\"server_error\",\"param\":null,\"code\":\"%s\"}}\n\n",
                         code);
        struct evbuffer *out = gw_io_out(r->conn->io);
        /* never more than was written; never an empty chunk, which would end the stream */
        if (n > 0 && (size_t)n < sizeof(ev)) {
            if (r->client_chunked) evbuffer_add_printf(out, "%x\r\n", n);
            evbuffer_add(out, ev, (size_t)n);
            if (r->client_chunked) evbuffer_add(out, "\r\n", 2);
        }
    }
    gw_req_finish(r, 1);
}

/* The client's head is held back until the first byte of the answer's body goes to the client
 * (for a stream, its first event), or the answer ends. Until then nothing has reached the
 * client, so an answer that turns out broken (a bad first chunk, a stream whose first event is
 * an error, a close before the body) is answered with a whole 502 instead of a 200 cut short:
 * a status a client can act on (the OpenAI SDKs retry a 502; they do not retry a failed 200
 * stream). This is called before every write of the body to the client. */
static void release_head(gw_req_t *r, gw_upconn_t *u)
{
    if (!u->head_held) return;
    u->head_held = 0;
    if (!r->conn || r->head_sent) { /* gone, or answered meanwhile: one head only */
        evbuffer_drain(u->held, evbuffer_get_length(u->held));
        return;
    }
    evbuffer_add_buffer(gw_io_out(r->conn->io), u->held);
    r->head_sent = 1;
    if (!r->sse) r->ttft_us = gw_now_us();
}

static void client_write(gw_req_t *r, const char *p, size_t n)
{
    if (!r->conn || n == 0) return;
    if (r->up) release_head(r, r->up);
    struct evbuffer *out = gw_io_out(r->conn->io);
    if (r->client_chunked) {
        char hdr[24];
        int hl = snprintf(hdr, sizeof(hdr), "%zx\r\n", n);
        evbuffer_add(out, hdr, (size_t)hl);
        evbuffer_add(out, p, n);
        evbuffer_add(out, "\r\n", 2);
    } else {
        evbuffer_add(out, p, n);
    }
}

#define MAX_USAGE_COPY (1u << 20)

/* The status an error event gives the request itself (400-499: its error.code, vLLM's
 * BadRequestError, OpenAI's invalid_request_error, TGI's validation error), or 0 when the
 * backend failed; *data and *n: the event's first data line. A request that the backend
 * refuses is the client's doing, not the backend's: counted against the backend, a client
 * could get healthy backends ejected. */
static int refusal_status(gw_req_t *r, const char *ev, size_t len, const char **data, size_t *n)
{
    const char *d = memmem(ev, len, "data:", 5);
    if (!d) return 0;
    d += 5;
    const char *eol = d;
    while (eol < ev + len && *eol != '\n' && *eol != '\r') eol++;
    *data = d;
    *n = (size_t)(eol - d);
    cJSON *j = gw_json_parse(r->arena, d, *n, NULL);
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
    const cJSON *code = cJSON_GetObjectItemCaseSensitive(e, "code");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(e, "type");
    const cJSON *tgi = cJSON_GetObjectItemCaseSensitive(j, "error_type");
    int status = 0;
    if (cJSON_IsNumber(code) && code->valuedouble >= 400 && code->valuedouble < 500)
        status = (int)code->valuedouble;
    else if (!cJSON_IsNumber(code) && cJSON_IsString(type) &&
             (strcmp(type->valuestring, "invalid_request_error") == 0 ||
              strcmp(type->valuestring, "BadRequestError") == 0))
        status = 400;
    else if (cJSON_IsString(e) && cJSON_IsString(tgi) &&
             strcmp(tgi->valuestring, "validation") == 0)
        status = 400;
    cJSON_Delete(j); /* nothing for nodes from the arena */
    return status;
}

/* The backend reported in its stream that the generation failed. Before anything reached the
 * client, the whole answer becomes a 502 (returns -1: stop the stream); after, the event is
 * relayed with the rest of the stream, and the request still counts as failed, in the logs
 * and metrics (502 upstream_error) and for passive health. An event that refuses the request
 * itself (refusal_status) is the backend's answer: before anything reached the client it is
 * answered as a plain error answer with its status (refused_in_stream), after it is relayed;
 * neither counts against the backend. */
static int stream_error_event(gw_req_t *r, gw_upconn_t *u, const char *ev, size_t len)
{
    const char *data = NULL;
    size_t n = 0;
    int refused = refusal_status(r, ev, len, &data, &n);
    if (refused && !u->head_held) return 0;
    if (u->head_held) {
        char *copy = refused ? gw_req_alloc(r, n) : NULL; /* kept until refused_in_stream */
        if (copy) {
            memcpy(copy, data, n);
            u->refusal = copy;
            u->refusal_len = n;
            u->refusal_status = refused;
        }
        u->broken = 1;
        return -1;
    }
    r->status = 502;
    r->code = "upstream_error";
    if (u->health_told != HEALTH_FAILED) gw_balance_failed(u->be);
    u->health_told = HEALTH_FAILED;
    return 0;
}

/* Does this event carry a backend's error, in any shape a client could read (with
 * gw_sse_is_error_event: a data object with "error" at any place or "object":"error", an
 * "error:" field as llama.cpp's server writes)? Asked only of streams whose errors the gateway
 * replaces, and only of events that spell "error". */
static int error_shaped(const char *ev, size_t len)
{
    const char *p = ev, *end = ev + len;
    while (p < end) {
        const char *eol = p;
        while (eol < end && *eol != '\r' && *eol != '\n') eol++;
        size_t n = (size_t)(eol - p);
        if (n >= 6 && memcmp(p, "error:", 6) == 0) return 1;
        if (n >= 5 && memcmp(p, "data:", 5) == 0) {
            cJSON *j = cJSON_ParseWithLength(p + 5, n - 5);
            const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
            const cJSON *o = cJSON_GetObjectItemCaseSensitive(j, "object");
            int yes = (e && !cJSON_IsNull(e)) ||
                      (cJSON_IsString(o) && strcmp(o->valuestring, "error") == 0);
            cJSON_Delete(j);
            if (yes) return 1;
        }
        p = eol < end && *eol == '\r' && eol + 1 < end && eol[1] == '\n' ? eol + 2 : eol + 1;
    }
    return 0;
}

/* The gateway's own error event in place of a backend's (privacy's backend_errors "replace"):
 * its constant message, the backend's code only when it is one of OpenAI's known codes. The
 * stream's status is sent already: a refusal of the request keeps its type and code, as its
 * error answer would (gw_req_backend_code). Returns the length written into buf (0 when it did
 * not fit). */
static size_t own_error_event(gw_req_t *r, const char *ev, size_t len, char *buf, size_t cap)
{
    const char *data = NULL;
    size_t n = 0;
    int status = refusal_status(r, ev, len, &data, &n);
    /* as gw_req_backend_error: a refusal of the gateway's credentials is the backend failing */
    if (!status || status == 401 || status == 403 || status == 407) status = 502;
    const char *code = gw_req_backend_code(r, status, data, n);
    if (cap < 8) return 0;
    memcpy(buf, "data: ", 6);
    size_t j = gw_error_json(buf + 6, cap - 8, status, code,
                             status >= 500 ? "The backend failed during the stream."
                                           : "The backend refused the request.");
    if (!j) return 0;
    memcpy(buf + 6 + j, "\n\n", 2);
    return 6 + j + 2;
}

/* With the gateway's own errors (own_stream_errors), an error-shaped event (`error`: as
 * gw_sse_is_error_event judged it) is replaced: *ev and *len then point at the gateway's own event
 * in buf. -1 when it did not fit: the backend's is never relayed instead. */
static int own_if_error(gw_req_t *r, int error, const char **ev, size_t *len, char *buf, size_t cap)
{
    if (!r->own_stream_errors) return 0;
    if (!error && !(memmem(*ev, *len, "error", 5) && error_shaped(*ev, *len))) return 0;
    *len = own_error_event(r, *ev, *len, buf, cap);
    *ev = buf;
    return *len ? 0 : -1;
}

static int on_event(void *arg, const char *ev, size_t len)
{
    gw_req_t *r = arg;
    int error = gw_sse_is_error_event(ev, len);
    /* Only a successful stream's: an error status already says the answer failed. */
    if (r->status < 300 && error && stream_error_event(r, r->up, ev, len) < 0) return -1;
    char own[512];
    if (own_if_error(r, error, &ev, &len, own, sizeof(own)) < 0) return -1;
    /* Every stream's usage is read: quota, access log and metrics count it (request.c asks the
     * backend for it); the chunk the client did not ask for is not relayed. */
    if (memmem(ev, len, "\"usage\"", 7)) {
        const char *data = memmem(ev, len, "data:", 5);
        size_t n = data ? len - (size_t)(data + 5 - ev) : 0;
        if (data) gw_req_take_usage(r, data + 5, n);
        if (data && r->strip_usage && gw_body_is_usage_chunk(NULL, data + 5, n)) return 0;
    }
    if (gw_req_run_response_event(r, ev, len) == GW_DROP) return 0;
    if (!r->events_relayed) r->ttft_us = gw_now_us();
    r->events_relayed++;
    client_write(r, ev, len);
    return 0;
}

/* A JSON answer is kept when a plugin wants its usage: its last MAX_USAGE_COPY bytes, where an
 * answer's usage is (it closes the object), so that no size of answer hides its usage. A
 * backend's error answer read for its code (own_error) is kept whole up to the cap, or not. */
static void keep_for_usage(gw_req_t *r, const char *p, size_t n)
{
    if (!r->resp_copy) return;
    size_t have = evbuffer_get_length(r->resp_copy);
    if (have + n > MAX_USAGE_COPY) {
        if (r->own_error) {
            evbuffer_free(r->resp_copy);
            r->resp_copy = NULL;
            return;
        }
        if (n >= MAX_USAGE_COPY) {
            p += n - MAX_USAGE_COPY;
            n = MAX_USAGE_COPY;
        }
        size_t over = have + n - MAX_USAGE_COPY;
        evbuffer_drain(r->resp_copy, over < have ? over : have);
    }
    evbuffer_add(r->resp_copy, p, n);
}

/* The first n bytes of in, kept for usage however many pieces they span. */
static void copy_for_usage(gw_req_t *r, struct evbuffer *in, size_t n)
{
    struct evbuffer_ptr pos;
    if (!r->resp_copy || evbuffer_ptr_set(in, &pos, 0, EVBUFFER_PTR_SET) < 0) return;
    size_t left = n;
    while (left && r->resp_copy) {
        struct evbuffer_iovec vs[8];
        int nv = evbuffer_peek(in, (ssize_t)left, &pos, vs, 8);
        size_t took = 0;
        for (int i = 0; i < nv && i < 8 && left; i++) {
            size_t take = vs[i].iov_len < left ? vs[i].iov_len : left;
            keep_for_usage(r, vs[i].iov_base, take);
            left -= take;
            took += take;
        }
        if (!took || evbuffer_ptr_set(in, &pos, took, EVBUFFER_PTR_ADD) < 0) break;
    }
    if (left && r->resp_copy) { /* cannot happen: in holds n bytes */
        evbuffer_free(r->resp_copy);
        r->resp_copy = NULL;
    }
}

static void on_data(void *arg, const char *p, size_t n)
{
    gw_req_t *r = arg;
    gw_upconn_t *u = r->up;
    if (u->broken) return; /* what follows a failure is dropped: the request ends as failed */
    if (r->sse) {
        /* An event over the framer's limit, or an error event while the head is held. */
        if (gw_sse_feed(&r->sse_framer, p, n, on_event, r) < 0) u->broken = 1;
    } else {
        keep_for_usage(r, p, n);
        if (!r->own_error) client_write(r, p, n);
    }
}

/* Passive health hears of an answer by its head, except a successful stream's: it may still
 * report a failure in its events, so it is judged by its first error event or by its end. */
static void judge_head(gw_req_t *r, gw_upconn_t *u, int status)
{
    if (r->sse && status < 300) return; /* see stream_error_event and complete */
    if (status >= 500)
        gw_balance_failed(u->be);
    else
        gw_balance_succeeded(u->be);
    u->health_told = status >= 500 ? HEALTH_FAILED : HEALTH_OK;
}

/* A backend's answer header that the gateway writes itself or removed (its plugins'). */
static int header_taken(void *arg, const char *name, size_t len)
{
    return gw_req_response_header_taken(arg, name, len);
}

#define REDIRECTED (-2)

/* A backend's redirect is not the client's to follow: the gateway speaks for its backends, and
 * a Location from one would send the client (and its credentials) elsewhere. Answered 502
 * upstream_error; the backend answered, so, as nginx and Envoy do with a 3xx, it is not held
 * against its health. Its connection goes (the body is not read). */
static void redirected(gw_req_t *r)
{
    gw_upconn_t *u = detach(r);
    gw_balance_succeeded(u->be);
    up_free(u);
    gw_req_error(r, 502, "upstream_error",
                 "The backend answered with a redirect, which is not relayed.");
    gw_req_finish(r, 0);
}

/* Finds the backend's head and parses it in place (its bytes stay in the input until the
 * client's head is written), past interim (1xx) answers. Returns its length, 0 for more, -1, or
 * REDIRECTED. */
static long parse_head(gw_upconn_t *u, gw_http_head_t *h, gw_header_t *hdrs, uint8_t *kinds)
{
    struct evbuffer *in = gw_io_in(u->io);
    for (;;) {
        size_t len = evbuffer_get_length(in);
        size_t look = len < MAX_RESPONSE_HEAD ? len : MAX_RESPONSE_HEAD;
        const char *buf = (const char *)evbuffer_pullup(in, (ssize_t)look);
        /* Another protocol (an SSH banner, HTTP/2): fail now, not at the first-byte timeout. */
        if (!gw_http_response_start_ok(buf, look)) return -1;
        long hl = gw_http_find_head_end(buf, look, &u->head_scanned);
        if (hl == GW_HTTP_INCOMPLETE) return look >= MAX_RESPONSE_HEAD ? -1 : 0;
        if (hl < 0) return -1;
        if (gw_http_parse_response(buf, (size_t)hl, h, hdrs, kinds, MAX_RESPONSE_HEADERS) < 0)
            return -1;
        if (h->status < 200) {
            if (h->status == 101) return -1;
            evbuffer_drain(in, (size_t)hl);
            u->head_scanned = 0;
            continue; /* an interim answer: the real one follows */
        }
        if (h->status >= 300 && h->status < 400) return REDIRECTED;
        /* Asked for identity: a coded body can be neither read for usage nor framed. */
        if (gw_http_content_coded(h)) return -1;
        return hl;
    }
}

/* How the backend frames its answer and whether its connection stays; whether the answer is a
 * stream (SSE) and whether a JSON answer is copied for its usage; passive health hears of it. */
static void frame_answer(gw_req_t *r, gw_upconn_t *u, const gw_http_head_t *h)
{
    u->keepalive = h->minor >= 1 ? !h->conn_close : h->conn_keepalive;
    if (h->status == 204 || h->status == 304)
        u->framing = F_NONE;
    else if (h->chunked)
        u->framing = F_CHUNKED;
    else if (h->content_length >= 0)
        u->framing = F_LENGTH;
    else
        u->framing = F_EOF;
    u->remaining = h->content_length;
    memset(&u->ck, 0, sizeof(u->ck));
    if (u->framing == F_EOF) u->keepalive = 0;
    if (u->framing == F_LENGTH && u->remaining == 0) u->framing = F_NONE;

    const gw_header_t *ct = gw_http_find_kind(h, GW_H_CONTENT_TYPE);
    r->sse = ct && ct->value_len >= 17 && strncasecmp(ct->value, "text/event-stream", 17) == 0;
    if (r->cfg->want_usage && !r->sse && h->status == 200 && ct && ct->value_len >= 16 &&
        strncasecmp(ct->value, "application/json", 16) == 0)
        r->resp_copy = evbuffer_new();
    judge_head(r, u, h->status);
}

/* How the client's answer is framed (GW_AH_*): its length when known (the backend's, never a
 * stream's), else chunked for an HTTP/1.1 client and to the close for an HTTP/1.0 one. */
static int client_framing(gw_req_t *r, const gw_upconn_t *u)
{
    int length_known = u->framing == F_NONE || (u->framing == F_LENGTH && !r->sse);
    if (length_known)
        r->client_chunked = 0;
    else if (!r->client_chunked)
        r->close = 1; /* HTTP/1.0: the end of the answer is the close */
    if (r->w->draining) r->close = 1;
    return u->framing == F_NONE ? GW_AH_EMPTY
           : length_known       ? GW_AH_LENGTH
           : r->client_chunked  ? GW_AH_CHUNKED
                                : GW_AH_EOF;
}

/* Writes the client's head into u->held (held back, see release_head): the backend's status and
 * headers as the gateway rebuilds them (gw_http_answer_head), then the gateway's own lines.
 * 0, or -1. */
static int write_client_head(gw_req_t *r, gw_upconn_t *u, const gw_http_head_t *h, int framing)
{
    gw_answer_head_t a = {
        .status = h->status,
        .framing = framing,
        .length = u->framing == F_NONE ? 0 : (uint64_t)u->remaining,
        .close = r->close,
        .keepalive = !r->close && r->head.minor == 0,
        .taken = header_taken,
        .arg = r,
    };
    struct evbuffer *out = u->held;
    size_t need = gw_http_answer_head(NULL, 0, h, &a);
    struct evbuffer_iovec v;
    if (evbuffer_reserve_space(out, (ssize_t)need, &v, 1) < 1 ||
        gw_http_answer_head(v.iov_base, v.iov_len, h, &a) != need)
        return -1;
    v.iov_len = need;
    evbuffer_commit_space(out, &v, 1);
    gw_req_add_common_headers(r, out);
    evbuffer_add(out, "\r\n", 2);
    return 0;
}

/* The backend's head: parsed and framed, shown to the plugins (response_headers), and the
 * client's head prepared (held, see release_head). Returns 1 when done, 0 for more, -1, or
 * REDIRECTED. */
static int on_head(gw_req_t *r, gw_upconn_t *u)
{
    gw_http_head_t h;
    gw_header_t hdrs[MAX_RESPONSE_HEADERS];
    uint8_t kinds[MAX_RESPONSE_HEADERS];
    long hl = parse_head(u, &h, hdrs, kinds);
    if (hl <= 0) return (int)hl;
    frame_answer(r, u, &h);
    r->status = h.status;
    r->resp_head = &h;
    int hooks = gw_req_run_response_headers(r);
    r->resp_head = NULL;
    if (hooks != GW_CONTINUE) return -1;
    struct evbuffer *in = gw_io_in(u->io);
    if (r->own_error && h.status >= 400) {
        /* A plugin answers with the gateway's own error: the backend's body is read
         * (a copy of at most MAX_USAGE_COPY for its error code), never relayed. */
        r->sse = 0;
        if (!r->resp_copy) r->resp_copy = evbuffer_new();
        evbuffer_drain(in, (size_t)hl);
        u->head_scanned = 0;
        return 1;
    }
    r->own_stream_errors = r->own_error && r->sse;
    r->own_error = 0;
    if (write_client_head(r, u, &h, client_framing(r, u)) < 0) return -1;
    evbuffer_drain(in, (size_t)hl);
    u->head_scanned = 0;
    u->head_held = 1;
    return 1;
}

/* Relays what the backend sent. Returns 1 when the answer is complete, 0 for more, -1. */
static int relay(gw_req_t *r, gw_upconn_t *u)
{
    struct evbuffer *in = gw_io_in(u->io);
    switch (u->framing) {
    case F_NONE:
        return 1;
    case F_LENGTH:
        if (!r->sse) {
            size_t have = evbuffer_get_length(in);
            size_t n = have < (size_t)u->remaining ? have : (size_t)u->remaining;
            copy_for_usage(r, in, n);
            if (r->own_error) {
                evbuffer_drain(in, n);
            } else {
                if (n) release_head(r, u);
                evbuffer_remove_buffer(in, gw_io_out(r->conn->io), n);
            }
            u->remaining -= (int64_t)n;
            return u->remaining == 0;
        }
        /* An SSE answer with a length still goes event by event. */
        __attribute__((fallthrough));
    case F_EOF:
    case F_CHUNKED:
        for (;;) {
            struct evbuffer_iovec v;
            if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0) return 0;
            size_t used;
            int rc = GW_CHUNKED_MORE;
            if (u->framing == F_CHUNKED) {
                rc = gw_chunked_feed(&u->ck, v.iov_base, v.iov_len, &used, on_data, r);
            } else {
                used = v.iov_len;
                if (u->framing == F_LENGTH && used > (size_t)u->remaining)
                    used = (size_t)u->remaining;
                on_data(r, v.iov_base, used);
                if (u->framing == F_LENGTH && (u->remaining -= (int64_t)used) == 0)
                    rc = GW_CHUNKED_DONE;
            }
            evbuffer_drain(in, used);
            if (rc == GW_CHUNKED_BAD || u->broken) return -1;
            if (rc == GW_CHUNKED_DONE) return 1;
        }
    }
    return -1;
}

static void complete(gw_req_t *r, gw_upconn_t *u)
{
    if (r->own_error) {
        size_t n = r->resp_copy ? evbuffer_get_length(r->resp_copy) : 0;
        const char *body = n ? (const char *)evbuffer_pullup(r->resp_copy, -1) : NULL;
        gw_req_backend_error(r, r->status, body, n);
        if (r->resp_copy) evbuffer_free(r->resp_copy);
        r->resp_copy = NULL;
        detach(r);
        release(u, u->keepalive && u->framing != F_EOF);
        gw_req_finish(r, 0);
        return;
    }
    if (r->resp_copy) {
        size_t n = evbuffer_get_length(r->resp_copy);
        gw_req_take_usage(r, (const char *)evbuffer_pullup(r->resp_copy, -1), n);
        evbuffer_free(r->resp_copy);
        r->resp_copy = NULL;
    }
    if (r->sse) {
        gw_sse_finish(&r->sse_framer, on_event, r);
        if (u->broken) { /* the last event, ended by the close, was an error */
            fail(r, 502, "upstream_error", 0);
            return;
        }
        if (r->sse_framer.len) { /* an event the end cut short: clients drop it, but it is sent */
            const char *ev = r->sse_framer.buf;
            size_t n = r->sse_framer.len;
            char own[512];
            if (own_if_error(r, gw_sse_is_error_event(ev, n), &ev, &n, own, sizeof(own)) == 0)
                client_write(r, ev, n);
        }
        r->sse_framer.len = 0;
        if (!u->health_told) gw_balance_succeeded(u->be); /* a stream without an error event */
    }
    release_head(r, u); /* an answer without a body byte (204, an empty body or stream) */
    if (r->client_chunked && r->conn) evbuffer_add(gw_io_out(r->conn->io), "0\r\n\r\n", 5);
    detach(r);
    release(u, u->keepalive && u->framing != F_EOF);
    gw_req_finish(r, 0);
}

static void up_read_cb(gw_io_t *io, void *arg)
{
    gw_upconn_t *u = arg;
    gw_req_t *r = u->req;
    if (!r) { /* idle: a backend does not speak unasked; drop the connection */
        idle_remove(u);
        up_free(u);
        return;
    }
    u->received += evbuffer_get_length(gw_io_in(io));
    if (u->state != UP_BODY) {
        int rc = on_head(r, u);
        if (rc == 0) return;
        if (rc == REDIRECTED) {
            redirected(r);
            return;
        }
        if (rc < 0) {
            fail(r, 502, "upstream_error", 0);
            return;
        }
        u->state = UP_BODY;
    }
    int rc = relay(r, u);
    if (rc < 0) {
        fail(r, 502, "upstream_error", 0);
        return;
    }
    if (rc == 1) {
        complete(r, u);
        return;
    }
    arm(u, r->cfg->timeouts.upstream_idle_ms);
    if (r->conn) {
        gw_io_flush(r->conn->io);
        size_t unsent = evbuffer_get_length(gw_io_out(r->conn->io));
        if (unsent > CLIENT_HIGH) {
            /* A slow client is not the backend's fault: the timer is the client's now, and
             * bounds how long it may take nothing (up_timer_cb). */
            gw_io_read_enable(io, 0);
            u->paused = 1;
            u->unsent = unsent;
            arm(u, r->cfg->timeouts.client_send_ms);
        }
    }
}

void gw_upstream_client_drained(gw_req_t *r)
{
    gw_upconn_t *u = r->up;
    if (u && u->paused) {
        u->paused = 0;
        arm(u, r->cfg->timeouts.upstream_idle_ms);
        gw_io_read_enable(u->io, 1);
    }
}

static void up_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    gw_upconn_t *u = arg;
    gw_req_t *r = u->req;
    if (!r) { /* idle in the pool for upstream_keepalive_ms: closed */
        if (u->state == UP_IDLE) {
            idle_remove(u);
            up_free(u);
        }
        return;
    }
    if (u->paused && r->conn) {
        /* Reading the backend waits for the client (up_read_cb): as nginx's send_timeout, a
         * client that took nothing for timeouts.client_send_ms is closed, with the backend
         * connection, as a client that left (gw_req_abort). One that took some has more time. */
        size_t unsent = evbuffer_get_length(gw_io_out(r->conn->io));
        if (unsent < u->unsent) {
            u->unsent = unsent;
            arm(u, r->cfg->timeouts.client_send_ms);
            return;
        }
        gw_conn_close(r->conn); /* frees u (gw_upstream_abort) */
        return;
    }
    /* Not connected in time: a connect failure (retryable); else no answer in time. */
    fail(r, 504, "upstream_timeout", u->state == UP_CONNECTING);
}

static void up_event_cb(gw_io_t *io, int what, void *arg)
{
    gw_upconn_t *u = arg;
    gw_req_t *r = u->req;
    if (!r) {
        idle_remove(u);
        up_free(u);
        return;
    }
    if (what & GW_IO_CONNECTED) {
        if (!gw_residency_peer_ok(u->cfg, u->res, gw_io_fd(io))) {
            /* Not one of the verified addresses: close before a byte of the request goes. */
            gw_backend_t *b = u->be;
            up_free(detach(r));
            residency_refused(r, b, "peer_not_verified");
            try_backend(r);
            return;
        }
        u->state = UP_WAITING;
        arm(u, r->cfg->timeouts.upstream_first_byte_ms);
        return;
    }
    if ((what & GW_IO_EOF) && u->state == UP_BODY && u->framing == F_EOF) {
        /* Whatever is left in the input is the end of the answer. */
        if (relay(r, u) >= 0) {
            complete(r, u);
            return;
        }
    }
    /* A connect failure, or a reset or close before any byte of the answer: retryable. */
    fail(r, 502, "upstream_error", u->received == 0);
}
