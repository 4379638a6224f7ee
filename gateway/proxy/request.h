/* One request: its memory, the plugin phases, routing, and the answers the gateway makes. */
#ifndef GW_REQUEST_H
#define GW_REQUEST_H

#include <event2/buffer.h>

#include "proxy/auth_guard.h"
#include "io/conn.h"
#include "base/sse.h"

typedef struct gw_upconn gw_upconn_t;

enum { EP_NONE, EP_CHAT, EP_COMPLETIONS, EP_EMBEDDINGS, EP_MODELS };
enum { PH_HEADERS, PH_READ_BODY, PH_BODY, PH_SELECT, PH_UPSTREAM, PH_DONE };

typedef struct gw_hdr_edit {
    struct gw_hdr_edit *next;
    const char *name, *value; /* value NULL: remove */
} gw_hdr_edit_t;

struct gw_req {
    gw_conn_t *conn;
    gw_worker_t *w;
    gw_config_t *cfg;
    gw_arena_t *arena;
    gw_http_head_t head;
    char id[33];           /* the gateway's: 32 hex digits from the CSPRNG; what the backend gets */
    const char *client_id; /* the client's own (a token of 1..128 chars), echoed to it only */
    const char *path;      /* the target without its query, NUL-terminated */
    int endpoint;
    int phase;
    size_t plugin_pos;
    void **ctx;
    struct evbuffer *body;
    cJSON *json;
    const char *model;
    gw_pool_t *pool;
    uint8_t *vetoed;
    gw_backend_t *backend;
    gw_upconn_t *up;
    gw_hdr_edit_t *up_edits, *resp_headers;
    const gw_tenant_t *tenant;
    char **narrow; /* models a credential narrowed the tenant's to, or NULL */
    size_t nnarrow;
    char (*res_narrow)[3]; /* a tenant's residency countries, checked at connect, or NULL */
    size_t nres_narrow;
    const char *auth_reason, *auth_hint;
    gw_auth_guard_req_t guard;  /* the client's failed-authentication budget (auth_guard.c) */
    char *credential;           /* extracted once, NUL-terminated, in the arena */
    struct evbuffer *resp_copy; /* a JSON answer kept for its usage (cfg->want_usage) */
    int64_t usage_prompt, usage_completion;
    uint64_t events_relayed;
    int status;
    const char *code;
    int attempts;
    uint64_t start_us;
    uint64_t ttft_us;   /* the answer's head (JSON) or first event (SSE) reached the client */
    size_t head_len;    /* bytes of the request head */
    uint64_t bytes_out; /* bytes queued for the client (counted only with an access log) */
    struct evbuffer *out_counted; /* the client output counted into bytes_out, or NULL */
    struct evbuffer_cb_entry *out_cb;
    const gw_http_head_t *resp_head; /* the backend's head, during response_headers only */
    gw_req_t *q_next;                /* in its pool and tenant's wait queue (balance.c) */
    uint64_t q_until_us;             /* waits for a backend slot until then */
    struct gw_queue_place *q_place;  /* its place in the pool's queue (balance.c) */
    uint64_t affinity; /* hash of the session key (pool affinity), read before the plugins */
    /* The client's address: the connection's, or from a trusted proxy the one its
     * X-Forwarded-For names (issue 14). Never logged; client_len 0: not known. */
    struct sockaddr_storage client;
    socklen_t client_len;
    unsigned queued : 1, affine : 1;
    unsigned stream : 1, waiting : 1, aborted : 1, head_sent : 1, close : 1, logged : 1,
        json_replaced : 1, client_chunked : 1, sse : 1, body_read : 1, credential_done : 1,
        usage_known : 1, own_error : 1, no_id : 1;
    /* A plugin answers with the gateway's own errors (gw_req_own_error_body), and the answer is
     * a successful stream: its error events are replaced by the gateway's own (upstream.c). */
    unsigned own_stream_errors : 1;
    /* The client asked for a stream's usage chunk; else the gateway, which asked, removes it. */
    unsigned usage_asked : 1, strip_usage : 1;
    gw_arena_t *json_arena; /* json's nodes, freed after the body phase (settle_body) */
    size_t body_received;   /* the body's length as received, once body holds a rewritten one */
    unsigned head_only : 1; /* a HEAD: no answer carries a body */
    gw_sse_t sse_framer;
};

gw_req_t *gw_req_new(gw_conn_t *c, const char *head, size_t head_len, int *err);
/* The head is parsed: run request_headers. */
void gw_req_headers_ready(gw_req_t *r);
/* The body is read: inspect it, run the phases, go upstream. */
void gw_req_body_ready(gw_req_t *r);
/* A plugin's asynchronous work is over (gw_req_resume): go on with result's phase. */
void gw_req_continue(gw_req_t *r, int result);
/* The client went away. */
void gw_req_abort(gw_req_t *r);
/* The proxy's way to a backend (upstream.c, gw_upstream_install), installed at start-up before
 * any request: the phases reach it only through these. */
typedef struct gw_req_upstream {
    void (*start)(gw_req_t *r);   /* the phases are over: choose a backend, send r there */
    void (*abort)(gw_req_t *r);   /* r ends with its upstream side alive (r->up) */
    void (*dequeue)(gw_req_t *r); /* r ends while it waits for a backend (r->queued) */
} gw_req_upstream_t;
void gw_req_set_upstream(const gw_req_upstream_t *u);
/* A logger of the log phase: runs once per request, whatever happened, before the plugins' log
 * hooks, in the order registered. Registered at start-up, before any worker runs (main.c:
 * the metrics, then the access log); the same one again is kept once. 0, or -1 when full. */
typedef void (*gw_req_log_fn)(const gw_req_t *r);
int gw_req_add_logger(gw_req_log_fn fn);
/* Runs log hooks once and hands the connection on; frees the request. */
void gw_req_finish(gw_req_t *r, int close);
void gw_req_free(gw_req_t *r);
/* Writes a complete OpenAI-shaped error answer for a request without one yet. */
void gw_req_error(gw_req_t *r, int status, const char *code, const char *message);
/* An error answer without a request (a head that did not parse). */
void gw_conn_error_reply(gw_conn_t *c, int status, const char *code, const char *message,
                         int close);
/* Plugin hook dispatch for answers relayed from a backend. */
int gw_req_run_response_headers(gw_req_t *r);
int gw_req_run_response_event(gw_req_t *r, const char *ev, size_t len);
/* Appends the extra headers of every answer (x-request-id, plugin headers). */
void gw_req_add_common_headers(gw_req_t *r, struct evbuffer *out);
/* Reads "usage" from an answer's JSON text (a whole body, or one event's data). */
void gw_req_take_usage(gw_req_t *r, const char *json, size_t len);
/* A backend's error answer (own_error set by a plugin): answers the client with the
 * gateway's own OpenAI-shaped error instead; `body` is the backend's (or NULL), read only
 * for a known OpenAI error code. */
void gw_req_backend_error(gw_req_t *r, int status, const char *body, size_t len);
/* The code of the gateway's own error for a backend's error with this status: the backend's
 * error.code in `body` (an error answer's, or an error event's data) when it is one of OpenAI's
 * known codes, which say something to a client and never carry content; else the status's. */
const char *gw_req_backend_code(gw_req_t *r, int status, const char *body, size_t len);
/* Is this backend answer header one that the gateway writes itself or removed (any
 * gw_req_add_response_header of its name, with a value or NULL)? The gateway is the only author
 * of the headers it sets: a backend's of the same name is dropped, never sent next to it. */
int gw_req_response_header_taken(const gw_req_t *r, const char *name, size_t len);

#endif
