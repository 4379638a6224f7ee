/* One request: its memory, the plugin phases, routing, and the answers the gateway makes. */
#include "proxy/request.h"

#include "base/clock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <arpa/inet.h>
#include <sys/socket.h>

#include "base/body.h"
#include "base/client_addr.h"
#include "base/json.h"
#include "base/oai_error.h"
#include "base/log.h"
#include "io/worker.h"

enum { HOOK_HEADERS, HOOK_BODY, HOOK_SELECT };

static const gw_req_upstream_t *upstream; /* upstream.c's, gw_req_set_upstream */

void gw_req_set_upstream(const gw_req_upstream_t *u)
{
    upstream = u;
}

/* What the gateway's own edits of a body may add past limits.max_body_bytes. */
#define GW_BODY_EDIT_ROOM 4096

/* The lines every answer of a request carries, and the connection line. */
static void tail_headers(gw_out_t *o, const char *id, const gw_req_t *r, int close, int minor)
{
    const char *cid = r ? r->client_id : NULL;
    gw_out_put(o, "x-request-id: ", 14);
    gw_out_str(o, id);
    gw_out_put(o, "\r\n", 2);
    if (cid) {
        gw_out_put(o, "x-client-request-id: ", 21);
        gw_out_str(o, cid);
        gw_out_put(o, "\r\n", 2);
    }
    for (const gw_hdr_edit_t *h = r ? r->resp_headers : NULL; h; h = h->next) {
        /* a backend header removed; framing, ids and the like are the gateway's */
        if (!h->value || gw_http_header_kind(h->name, strlen(h->name)) != GW_H_OTHER) continue;
        gw_out_str(o, h->name);
        gw_out_put(o, ": ", 2);
        gw_out_str(o, h->value);
        gw_out_put(o, "\r\n", 2);
    }
    if (close)
        gw_out_put(o, "connection: close\r\n", 19);
    else if (minor == 0)
        gw_out_put(o, "connection: keep-alive\r\n", 24);
}

/* The head of a JSON answer of n bytes, without its final empty line (status 0: only the tail
 * lines of a relayed answer's head). */
static void json_head(gw_out_t *o, int status, size_t n, const char *id, const gw_req_t *r,
                      int close, int minor)
{
    if (status) {
        gw_out_status_line(o, status);
        gw_out_put(o, "content-type: application/json\r\ncontent-length: ", 48);
        gw_out_u64(o, n);
        gw_out_put(o, "\r\n", 2);
    }
    tail_headers(o, id, r, close, minor);
}

/* Writes a head into room of its exact size (counted first, by the same code): one evbuffer
 * call, not four per line. */
static void add_head(struct evbuffer *out, int status, size_t n, const char *id, const gw_req_t *r,
                     int close, int minor)
{
    gw_out_t o = {NULL, 0, 0};
    json_head(&o, status, n, id, r, close, minor);
    size_t need = o.len;
    struct evbuffer_iovec v;
    if (evbuffer_reserve_space(out, (ssize_t)need, &v, 1) < 1) return;
    o = (gw_out_t){v.iov_base, 0, v.iov_len};
    json_head(&o, status, n, id, r, close, minor);
    if (o.len != need) return; /* cannot happen: the same code over the same input */
    v.iov_len = need;
    evbuffer_commit_space(out, &v, 1);
}

/* Writes a complete answer with a JSON body: no body to a HEAD (RFC 9110 9.3.2), whose
 * content-length is still the GET's. `ref`: body is constant and outlives the buffer. */
static void write_json(struct evbuffer *out, int status, const char *body, size_t n, const char *id,
                       gw_req_t *r, int close, int minor, int head_only, int ref)
{
    add_head(out, status, n, id, r, close, minor);
    evbuffer_add(out, "\r\n", 2);
    if (head_only || n == 0) return;
    if (ref)
        evbuffer_add_reference(out, body, n, NULL, NULL);
    else
        evbuffer_add(out, body, n);
}

/* Messages are the gateway's own constants: they never hold request content. */
static void write_error(struct evbuffer *out, int status, const char *code, const char *message,
                        const char *id, gw_req_t *r, int close, int minor, int head_only)
{
    char body[512];
    size_t n = gw_error_json(body, sizeof(body), status, code, message);
    write_json(out, status, body, n, id, r, close, minor, head_only, 0);
}

/* The gateway's id for a request: 128 bits from the CSPRNG in 32 hex digits, so that no
 * client can choose or foresee the id another's request carries to a shared backend. -1 (and a
 * placeholder) if the CSPRNG failed. */
static int make_id(gw_worker_t *w, char *id)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char b[16];
    if (gw_worker_random_bytes(w, b, sizeof(b)) < 0) {
        memcpy(id, "unavailable", 12);
        return -1;
    }
    for (int i = 0; i < 16; i++) {
        id[2 * i] = hex[b[i] >> 4];
        id[2 * i + 1] = hex[b[i] & 15];
    }
    id[32] = '\0';
    return 0;
}

void gw_conn_error_reply(gw_conn_t *c, int status, const char *code, const char *message, int close)
{
    char id[33];
    make_id(c->w, id);
    write_error(gw_io_out(c->io), status, code, message, id, NULL, close, 1, c->asks_head);
    gw_io_flush(c->io);
    if (close) gw_conn_close_after_write(c);
}

/* A body left unread makes the connection unusable for a next request: say so. */
static void close_if_body_unread(gw_req_t *r)
{
    if (!r->body_read && (r->head.chunked || r->head.content_length > 0)) r->close = 1;
}

/* One rule for every refusal, whatever its status and whether the body was read: a request
 * the gateway answers with its own error without having sent it to a backend closes the
 * connection after the answer (connection: close), and whatever the client pipelined behind it
 * is discarded, never forwarded. A refused request says the client and the gateway may not
 * agree on where requests begin (a front proxy that frames differently, a request smuggled in
 * a body). A request that went to a backend was not refused: its answer, the backend's or the
 * gateway's error for it (502, 504, a replaced error answer), keeps the connection. */
void gw_req_error(gw_req_t *r, int status, const char *code, const char *message)
{
    r->status = status;
    r->code = code;
    if (r->head_sent || !r->conn) return;
    if (!r->attempts) r->close = 1;
    close_if_body_unread(r);
    r->head_sent = 1;
    write_error(gw_io_out(r->conn->io), status, code, message, r->id, r, r->close, r->head.minor,
                r->head_only);
}

/* A token (RFC 9110 tchar) of at most 128 characters. */
static int sane_request_id(const char *v, size_t n)
{
    if (n == 0 || n > 128) return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = v[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              (ch && strchr("!#$%&'*+-.^_`|~", ch))))
            return 0;
    }
    return 1;
}

/* The client's own id: x-client-request-id (OpenAI's name for it), else x-request-id, kept
 * only when sane. Echoed to that client and logged, never forwarded. */
static const char *client_id(gw_arena_t *a, const gw_http_head_t *h)
{
    const gw_header_t *x = gw_http_find_kind(h, GW_H_X_CLIENT_REQUEST_ID);
    if (!x) x = gw_http_find_kind(h, GW_H_X_REQUEST_ID);
    if (!x || !sane_request_id(x->value, x->value_len)) return NULL;
    return gw_arena_strndup(a, x->value, x->value_len);
}

static int endpoint_of(const gw_http_head_t *h, const char *path)
{
    int post = h->method_len == 4 && memcmp(h->method, "POST", 4) == 0;
    /* HEAD is GET without the body (RFC 9110 9.3.2): answered the same, body left out */
    int get = (h->method_len == 3 && memcmp(h->method, "GET", 3) == 0) ||
              (h->method_len == 4 && memcmp(h->method, "HEAD", 4) == 0);
    if (post && strcmp(path, "/v1/chat/completions") == 0) return EP_CHAT;
    if (post && strcmp(path, "/v1/completions") == 0) return EP_COMPLETIONS;
    if (post && strcmp(path, "/v1/embeddings") == 0) return EP_EMBEDDINGS;
    if (get && strcmp(path, "/v1/models") == 0) return EP_MODELS;
    return EP_NONE;
}

static void free_evbuffer(void *p)
{
    evbuffer_free(p);
}

/* With an access log: counts what is queued for the client while the request lives. */
static void count_out(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    ((gw_req_t *)arg)->bytes_out += info->n_added;
}

static void stop_counting(gw_req_t *r)
{
    if (!r->out_cb) return;
    evbuffer_remove_cb_entry(r->out_counted, r->out_cb);
    r->out_cb = NULL;
    r->out_counted = NULL;
}

/* The request's client: the connection's, unless that is a trusted proxy whose
 * X-Forwarded-For headers (taken together, in order) name another, or name none usable (then
 * the client is not known). */
static void find_client(gw_req_t *r, const gw_conn_t *c)
{
    r->client = c->client;
    r->client_len = c->client_len;
    const gw_config_t *cfg = r->cfg;
    if (!cfg->ntrusted_nets || !c->client_len ||
        !gw_cidr_match(cfg->trusted_nets, cfg->ntrusted_nets, (const struct sockaddr *)&c->client))
        return;
    const gw_header_t *hs = r->head.headers;
    size_t n = 0, nh = r->head.nheaders;
    for (size_t i = 0; i < nh; i++)
        if (gw_http_name_eq(hs[i].name, hs[i].name_len, "x-forwarded-for")) n++;
    if (n == 0) return;
    const char **vals = gw_arena_alloc(r->arena, n * sizeof(*vals));
    size_t *lens = gw_arena_alloc(r->arena, n * sizeof(*lens));
    if (!vals || !lens) return;
    n = 0;
    for (size_t i = 0; i < nh; i++) {
        if (!gw_http_name_eq(hs[i].name, hs[i].name_len, "x-forwarded-for")) continue;
        vals[n] = hs[i].value;
        lens[n++] = hs[i].value_len;
    }
    struct sockaddr_storage ss;
    socklen_t sl = 0;
    int found = gw_xff_client(cfg->trusted_nets, cfg->ntrusted_nets, vals, lens, n, &ss, &sl);
    if (found == 1) {
        r->client = ss;
        r->client_len = sl;
    } else if (found < 0) {
        r->client_len = 0; /* no usable client address: not known, never the proxy's */
    }
    explicit_bzero(&ss, sizeof(ss));
}

gw_req_t *gw_req_new(gw_conn_t *c, const char *head, size_t head_len, int *err)
{
    gw_config_t *cfg = c->w->cfg;
    size_t maxh = (size_t)cfg->limits.max_headers;
    gw_arena_t *a = gw_arena_new(4096 + head_len + maxh * (sizeof(gw_header_t) + 1));
    if (!a) {
        *err = GW_HTTP_BAD;
        return NULL;
    }
    gw_req_t *r = gw_arena_calloc(a, sizeof(*r));
    char *copy = gw_arena_strndup(a, head, head_len);
    gw_header_t *headers = gw_arena_alloc(a, maxh * sizeof(gw_header_t));
    uint8_t *hop = gw_arena_alloc(a, maxh);
    struct evbuffer *body = evbuffer_new();
    if (!r || !copy || !headers || !hop || !body) {
        if (body) evbuffer_free(body);
        gw_arena_free(a);
        *err = GW_HTTP_BAD;
        return NULL;
    }
    r->body = body;
    gw_arena_cleanup(a, free_evbuffer, body);
    int rc = gw_http_parse_request(copy, head_len, &r->head, headers, hop, maxh);
    if (rc < 0) {
        gw_arena_free(a);
        *err = rc;
        return NULL;
    }
    r->arena = a;
    r->conn = c;
    r->w = c->w;
    r->cfg = gw_config_ref(cfg);
    r->start_us = gw_now_us();
    r->head_len = head_len;
    if (cfg->access_log.path) {
        r->out_counted = gw_io_out(c->io);
        r->out_cb = evbuffer_add_cb(r->out_counted, count_out, r);
        if (!r->out_cb) r->out_counted = NULL;
    }
    size_t plen = strcspn(r->head.target, "?");
    if (plen > r->head.target_len) plen = r->head.target_len;
    r->path = gw_arena_strndup(a, r->head.target, plen);
    r->endpoint = endpoint_of(&r->head, r->path);
    r->head_only = r->head.method_len == 4 && memcmp(r->head.method, "HEAD", 4) == 0;
    r->close = r->head.conn_close || (r->head.minor == 0 && !r->head.conn_keepalive);
    r->client_chunked = r->head.minor >= 1;
    r->no_id = make_id(c->w, r->id) < 0;
    r->client_id = client_id(a, &r->head);
    r->ctx = gw_arena_calloc(a, (cfg->nplugins + 1) * sizeof(void *));
    gw_sse_init(&r->sse_framer, 1u << 20);
    find_client(r, c);
    gw_auth_guard_bind(&r->guard, cfg->tenants.n ? cfg->auth.failure_rate : 0,
                       cfg->auth.failure_burst, &r->client, r->client_len);
    return r;
}

/* The parsed body and its arena. */
static void drop_json(gw_req_t *r)
{
    if (r->json) cJSON_Delete(r->json); /* the nodes from the heap (a plugin's, the core's) */
    r->json = NULL;
    gw_arena_free(r->json_arena);
    r->json_arena = NULL;
}

void gw_req_free(gw_req_t *r)
{
    stop_counting(r);
    gw_auth_guard_end(&r->guard); /* a lookup still in flight did not authenticate */
    if (r->queued) upstream->dequeue(r);
    if (r->up) upstream->abort(r);
    if (r->resp_copy) evbuffer_free(r->resp_copy);
    gw_sse_release(&r->sse_framer);
    drop_json(r);
    gw_config_t *cfg = r->cfg;
    explicit_bzero(&r->client, sizeof(r->client)); /* arena blocks are reused */
    gw_arena_free(r->arena);
    gw_config_unref(cfg);
}

/* The log phase's own loggers (ops/: metrics, the access log), registered at start-up. */
#define MAX_LOGGERS 4
static gw_req_log_fn loggers[MAX_LOGGERS];
static size_t nloggers;

int gw_req_add_logger(gw_req_log_fn fn)
{
    for (size_t i = 0; i < nloggers; i++)
        if (loggers[i] == fn) return 0;
    if (nloggers == MAX_LOGGERS) return -1;
    loggers[nloggers++] = fn;
    return 0;
}

static void run_log(gw_req_t *r)
{
    if (r->logged) return;
    r->logged = 1;
    gw_config_t *cfg = r->cfg;
    for (size_t i = 0; i < nloggers; i++) loggers[i](r);
    for (size_t i = 0; i < cfg->nplugins; i++)
        if (cfg->plugins[i].plugin->log)
            cfg->plugins[i].plugin->log(r, cfg->plugins[i].state, &r->ctx[i]);
}

void gw_req_finish(gw_req_t *r, int close)
{
    gw_conn_t *c = r->conn;
    if (r->up) upstream->abort(r);
    run_log(r);
    close_if_body_unread(r);
    close = close || r->close;
    gw_req_free(r);
    if (c) {
        gw_io_flush(c->io);
        gw_conn_request_done(c, close);
    }
}

void gw_req_abort(gw_req_t *r)
{
    stop_counting(r); /* the connection's buffers go now */
    r->aborted = 1;
    r->conn = NULL;
    if (r->up) upstream->abort(r);
    if (r->waiting) return; /* gw_req_resume frees it */
    run_log(r);
    gw_req_free(r);
}

/* Runs one phase's hooks from r->plugin_pos on. */
static int run_phase(gw_req_t *r, int phase)
{
    gw_config_t *cfg = r->cfg;
    for (; r->plugin_pos < cfg->nplugins; r->plugin_pos++) {
        size_t i = r->plugin_pos;
        const gw_plugin_t *p = cfg->plugins[i].plugin;
        int (*hook)(gw_req_t *, void *, void **) = phase == HOOK_HEADERS ? p->request_headers
                                                   : phase == HOOK_BODY  ? p->request_body
                                                                         : p->upstream_select;
        if (!hook) continue;
        int rc = hook(r, cfg->plugins[i].state, &r->ctx[i]);
        if (rc == GW_CONTINUE) continue;
        if (rc == GW_WAIT) {
            r->waiting = 1;
            r->plugin_pos = i + 1;
            return GW_WAIT;
        }
        r->plugin_pos = 0;
        if (rc != GW_DONE || !r->status)
            gw_req_error(r, 500, "internal_error", "The gateway failed to handle the request.");
        return GW_DONE;
    }
    r->plugin_pos = 0;
    return GW_CONTINUE;
}

/* May this request use the model: its tenant's list, narrowed by its credential. */
static int model_allowed(const gw_req_t *r, const char *model)
{
    if (!r->tenant) return 1;
    if (!gw_tenant_allows(r->tenant, model)) return 0;
    if (!r->narrow) return 1;
    for (size_t i = 0; i < r->nnarrow; i++)
        if (strcmp(r->narrow[i], model) == 0) return 1;
    return 0;
}

static void respond_models(gw_req_t *r)
{
    struct evbuffer *out = gw_io_out(r->conn->io);
    r->status = 200;
    r->head_sent = 1;
    close_if_body_unread(r);
    if (!r->tenant) {
        write_json(out, 200, r->cfg->models_json, r->cfg->models_json_len, r->id, r, r->close,
                   r->head.minor, r->head_only, 1);
        return;
    }
    /* Only the models this tenant may use. */
    cJSON *all = cJSON_Parse(r->cfg->models_json), *data = cJSON_GetObjectItem(all, "data");
    for (cJSON *m = data ? data->child : NULL, *next; m; m = next) {
        next = m->next;
        const cJSON *id = cJSON_GetObjectItem(m, "id");
        if (!cJSON_IsString(id) || !model_allowed(r, id->valuestring))
            cJSON_Delete(cJSON_DetachItemViaPointer(data, m));
    }
    char *body = all ? cJSON_PrintUnformatted(all) : NULL;
    cJSON_Delete(all);
    const char *b = body ? body : "{\"object\":\"list\",\"data\":[]}";
    write_json(out, 200, b, strlen(b), r->id, r, r->close, r->head.minor, r->head_only, 0);
    cJSON_free(body);
}

/* The 401 is the same whatever the cause; the cause goes to the audit log and metrics. Over
 * the address's failure rate, 429 instead, without an audit line each (auth_guard.c). A key not
 * looked up because the address's lookups in flight filled its budget did not fail: 503. */
static void refuse_auth(gw_req_t *r)
{
    if (gw_auth_guard_busy(&r->guard)) {
        gw_req_add_response_header(r, "retry-after", "1");
        gw_req_error(r, 503, "auth_lookups_busy",
                     "Too many credential lookups in flight from this address; try again shortly.");
        return;
    }
    int64_t wait = gw_auth_guard_failure(&r->guard);
    if (wait > 0) {
        char s[24];
        snprintf(s, sizeof(s), "%lld", (long long)wait);
        gw_req_add_response_header(r, "retry-after", s);
        gw_req_error(r, 429, "rate_limit_exceeded", "Too many failed authentications.");
        return;
    }
    const char *reason = r->auth_reason               ? r->auth_reason
                         : gw_req_credential(r, NULL) ? "unknown_key"
                                                      : "no_credentials";
    gw_auth_guard_count(reason);
    gw_audit("auth_failure", "request_id", r->id, "reason", reason, "key",
             r->auth_hint ? r->auth_hint : "-", NULL);
    gw_req_error(r, 401, "invalid_api_key", "Invalid authentication credentials.");
}

/* The answer to each of gw_body_inspect's refusals (README's error table). */
static const struct {
    int rc, status;
    const char *code, *message;
} refusals[] = {
    {GW_BODY_NOT_OBJECT, 400, "invalid_json", "The request body is not a JSON object."},
    {GW_BODY_BAD_UTF8, 400, "invalid_json", "The request body is not valid UTF-8."},
    {GW_BODY_NOT_JSON, 400, "invalid_json",
     "The request body is not strict JSON (RFC 8259): a raw control character, white space "
     "other than space, tab, CR, LF, or a malformed number or escape."},
    /* its parse would take over GW_BODY_PARSE_BUDGET */
    {GW_BODY_TOO_LARGE, 413, "request_too_large",
     "The request body holds too many JSON values for its size."},
    {GW_BODY_NUL, 400, "invalid_json", "The request body holds a NUL character (\\u0000)."},
    /* read differently by different parsers: refused */
    {GW_BODY_DUPLICATE_KEY, 400, "invalid_json",
     "The request body has a duplicate key (keys differing only in letter case count)."},
    {GW_BODY_INEXACT_NUMBER, 400, "invalid_json",
     "The request body has a number that cannot be kept exactly (an integer beyond 2^53, or "
     "out of range)."},
    /* a backend matching keys regardless of case would read it as the other */
    {GW_BODY_FOLDED_KEY, 400, "invalid_json",
     "The request body has a key that differs from one the gateway reads only in letter case."},
    {GW_BODY_NO_MODEL, 400, "missing_model", "The request body has no model."},
    {GW_BODY_BAD_STREAM, 400, "bad_request", "The stream field must be a boolean."},
    {GW_BODY_BAD_STREAM_OPTIONS, 400, "invalid_request_error",
     "stream_options must be an object whose include_usage is a boolean."},
};

/* The session key: x-session-id, else the body's user field, read before any plugin (the
 * privacy plugin may drop it); only its hash is kept, and it never leaves the process. */
static void affinity_key(gw_req_t *r)
{
    const char *s = NULL;
    size_t n = 0;
    const gw_header_t *hd = gw_http_find(&r->head, "x-session-id");
    if (hd && hd->value_len) {
        s = hd->value;
        n = hd->value_len;
    } else if (r->json) {
        const cJSON *u = cJSON_GetObjectItemCaseSensitive(r->json, "user");
        if (cJSON_IsString(u) && u->valuestring[0]) {
            s = u->valuestring;
            n = strlen(s);
        }
    }
    if (!s) return;
    uint64_t x = 0xcbf29ce484222325ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++) x = (x ^ (unsigned char)s[i]) * 0x100000001b3ULL;
    r->affinity = x;
    r->affine = 1;
}

/* The pool alias of r->model: the body sent upstream carries the backend's name. */
static int apply_alias(gw_req_t *r)
{
    gw_pool_t *p = r->pool;
    for (size_t a = 0; a < p->naliases; a++) {
        if (strcmp(p->alias_from[a], r->model) != 0) continue;
        /* r->model lives in the JSON tree being changed: keep the client's name. */
        char *client = gw_arena_strdup(r->arena, r->model);
        cJSON *to = cJSON_CreateString(p->alias_to[a]);
        if (!client || !to) {
            cJSON_Delete(to);
            return -1;
        }
        r->model = client;
        if (!cJSON_ReplaceItemInObjectCaseSensitive(r->json, "model", to)) {
            cJSON_Delete(to);
            return -1;
        }
        r->json_replaced = 1;
        return 0;
    }
    return 0;
}

/* Reads the few keys the gateway routes on. Returns 0, or answers and returns -1. */
static int inspect_body(gw_req_t *r)
{
    size_t len = evbuffer_get_length(r->body);
    const char *p = (const char *)evbuffer_pullup(r->body, -1);
    gw_body_t b;
    /* The tree gets its own arena: it is freed after the body phase (settle_body). */
    if (!(r->json_arena = gw_arena_new(0))) {
        gw_req_error(r, 500, "internal_error", "Out of memory.");
        return -1;
    }
    int rc = gw_body_inspect(r->json_arena, p, len, &b);
    r->json = b.json;
    if (b.model && !model_allowed(r, b.model)) { /* before the stream's type: it has a model */
        gw_req_error(r, 403, "model_not_allowed", "This key may not use the model.");
        return -1;
    }
    for (size_t i = 0; rc != GW_BODY_OK && i < sizeof(refusals) / sizeof(refusals[0]); i++)
        if (refusals[i].rc == rc) {
            gw_req_error(r, refusals[i].status, refusals[i].code, refusals[i].message);
            return -1;
        }
    if (rc != GW_BODY_OK) { /* every verdict is in the table */
        gw_req_error(r, 400, "invalid_json", "The request body was refused.");
        return -1;
    }
    r->stream = b.stream;
    r->usage_asked = b.usage_asked;
    r->model = gw_arena_strdup(r->arena, b.model); /* outlives the tree */
    if (!r->model) {
        gw_req_error(r, 500, "internal_error", "Out of memory.");
        return -1;
    }
    r->pool = gw_config_pool_for_model(r->cfg, r->model);
    if (!r->pool) {
        gw_req_error(r, 404, "model_not_found", "The model does not exist or is not served here.");
        return -1;
    }
    /* A pool alias: the backend gets its own name for the model (docs/balancing.md). */
    if (r->pool->affine) affinity_key(r); /* before a plugin drops the user field */
    if (r->pool->naliases && apply_alias(r) < 0) {
        gw_req_error(r, 500, "internal_error", "Out of memory.");
        return -1;
    }
    return 0;
}

/* A stream's usage is the gateway's to know (quota, access log, metrics), whatever the client
 * or a plugin sent: the backend is asked for it after the body phase, and the chunk is removed
 * from the answer (upstream.c) when the client did not ask for it. Returns 0, or answers and
 * returns -1. */
static int ask_usage(gw_req_t *r)
{
    if (!r->stream || !r->json || (r->endpoint != EP_CHAT && r->endpoint != EP_COMPLETIONS))
        return 0;
    int rc = gw_body_ask_usage(r->json);
    if (rc < 0) {
        gw_req_error(r, 500, "internal_error", "Out of memory.");
        return -1;
    }
    if (rc) r->json_replaced = 1;
    r->strip_usage = !r->usage_asked;
    return 0;
}

/* After the body phase the backend's body is fixed: a tree the core or a plugin changed is
 * printed into r->body once, and the tree freed. A request waiting for or streaming from a
 * backend then holds its body once, not also its parse (up to GW_BODY_PARSE_BUDGET, twice the
 * body and 8 MiB). gw_req_json is NULL from here on. Returns 0, or answers and returns -1. */
static int settle_body(gw_req_t *r)
{
    if (r->json_replaced && r->json) {
        /* Numbers as the client wrote them (cJSON's own printing rounds to 15 digits). */
        char *s = gw_body_exact_numbers(r->json) == 0 ? cJSON_PrintUnformatted(r->json) : NULL;
        size_t received = evbuffer_get_length(r->body), len = s ? strlen(s) : 0;
        /* Grown past the limit by more than the gateway's own edits (include_usage, a user
         * hash, an alias) can add: a body of control characters re-printed as \u00XX. */
        if (s && len > (uint64_t)r->cfg->limits.max_body_bytes + GW_BODY_EDIT_ROOM) {
            cJSON_free(s);
            gw_req_error(r, 413, "request_too_large", "The request body is too large.");
            return -1;
        }
        if (!s || evbuffer_drain(r->body, received) < 0 || evbuffer_add(r->body, s, len) < 0) {
            cJSON_free(s);
            gw_req_error(r, 500, "internal_error", "Out of memory.");
            return -1;
        }
        cJSON_free(s);
        r->body_received = received;
        r->json_replaced = 0;
    }
    drop_json(r);
    return 0;
}

static void advance(gw_req_t *r)
{
    int rc;
    for (;;) {
        switch (r->phase) {
        case PH_HEADERS:
            rc = run_phase(r, HOOK_HEADERS);
            if (rc == GW_WAIT) return;
            if (rc == GW_DONE) goto done;
            if (r->tenant) gw_auth_guard_success(&r->guard);
            if (r->cfg->tenants.n && !r->tenant) {
                refuse_auth(r);
                goto done;
            }
            if (r->endpoint == EP_NONE) {
                gw_req_error(r, 404, "not_found", "There is nothing at this path.");
                goto done;
            }
            if (r->endpoint == EP_MODELS) {
                respond_models(r);
                goto done;
            }
            if (gw_http_content_coded(&r->head)) {
                /* The body checked here would not be the one the backend decodes: refused
                 * before it is read (the connection closes: the body is left unread). */
                gw_req_error(r, 415, "unsupported_content_encoding",
                             "Request bodies with a Content-Encoding are not supported.");
                goto done;
            }
            r->phase = PH_READ_BODY;
            gw_conn_read_body(r->conn); /* calls gw_req_body_ready when whole */
            return;
        case PH_READ_BODY:
            return;
        case PH_BODY:
            if (!r->json && inspect_body(r) < 0) goto done;
            rc = run_phase(r, HOOK_BODY);
            if (rc == GW_WAIT) return;
            if (rc == GW_DONE) goto done;
            if (ask_usage(r) < 0 || settle_body(r) < 0) goto done;
            r->phase = PH_SELECT;
            r->vetoed = gw_arena_calloc(r->arena, r->pool->backends.n + 1);
            break;
        case PH_SELECT:
            rc = run_phase(r, HOOK_SELECT);
            if (rc == GW_WAIT) return;
            if (rc == GW_DONE) goto done;
            if (r->json_replaced && settle_body(r) < 0) goto done; /* a body set at select */
            r->phase = PH_UPSTREAM;
            upstream->start(r);
            return;
        default:
            return;
        }
    }
done:
    r->phase = PH_DONE;
    gw_req_finish(r, 0);
}

void gw_req_headers_ready(gw_req_t *r)
{
    if (r->no_id) { /* no CSPRNG: nothing goes upstream under a guessable id */
        gw_req_error(r, 500, "internal_error", "The gateway failed to handle the request.");
        r->phase = PH_DONE;
        gw_req_finish(r, 1);
        return;
    }
    r->phase = PH_HEADERS;
    advance(r);
}

void gw_req_body_ready(gw_req_t *r)
{
    r->body_read = 1;
    r->phase = PH_BODY;
    advance(r);
}

void gw_req_continue(gw_req_t *r, int result)
{
    r->waiting = 0;
    if (r->aborted) {
        run_log(r);
        gw_req_free(r);
        return;
    }
    if (result == GW_CONTINUE) {
        advance(r);
        return;
    }
    if (result != GW_DONE || !r->status)
        gw_req_error(r, 500, "internal_error", "The gateway failed to handle the request.");
    r->phase = PH_DONE;
    gw_req_finish(r, 0);
}

int gw_req_run_response_headers(gw_req_t *r)
{
    gw_config_t *cfg = r->cfg;
    for (size_t i = 0; i < cfg->nplugins; i++) {
        const gw_plugin_t *p = cfg->plugins[i].plugin;
        if (!p->response_headers) continue;
        int rc = p->response_headers(r, cfg->plugins[i].state, &r->ctx[i]);
        if (rc != GW_CONTINUE) return GW_DONE;
    }
    return GW_CONTINUE;
}

int gw_req_run_response_event(gw_req_t *r, const char *ev, size_t len)
{
    gw_config_t *cfg = r->cfg;
    for (size_t i = 0; i < cfg->nplugins; i++) {
        const gw_plugin_t *p = cfg->plugins[i].plugin;
        if (p->response_event &&
            p->response_event(r, cfg->plugins[i].state, &r->ctx[i], ev, len) == GW_DROP)
            return GW_DROP;
    }
    return GW_CONTINUE;
}

void gw_req_add_common_headers(gw_req_t *r, struct evbuffer *out)
{
    add_head(out, 0, 0, r->id, r, 0, 1);
}

/* ---- answers relayed from a backend ---- */

int gw_req_response_header_taken(const gw_req_t *r, const char *name, size_t len)
{
    for (const gw_hdr_edit_t *e = r->resp_headers; e; e = e->next)
        if ((e->name[0] | 0x20) == (name[0] | 0x20) && gw_http_name_eq(name, len, e->name))
            return 1;
    return 0;
}

/* OpenAI's error codes that say something to a client and never carry content: a backend's
 * error answer keeps its code when it is one of these. */
static const char *const known_codes[] = {"context_length_exceeded",
                                          "model_not_found",
                                          "invalid_api_key",
                                          "rate_limit_exceeded",
                                          "insufficient_quota",
                                          "invalid_request_error",
                                          "invalid_value",
                                          "invalid_type",
                                          "missing_required_parameter",
                                          "unsupported_parameter",
                                          "unsupported_value",
                                          "string_above_max_length",
                                          "array_above_max_length",
                                          "invalid_json",
                                          "server_error",
                                          "server_overloaded",
                                          "model_overloaded",
                                          "content_filter",
                                          "content_policy_violation",
                                          NULL};

const char *gw_req_backend_code(gw_req_t *r, int status, const char *body, size_t len)
{
    const char *code = NULL;
    const cJSON *json = body && len ? gw_json_parse(r->arena, body, len, NULL) : NULL;
    const cJSON *c =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(json, "error"), "code");
    for (size_t i = 0; cJSON_IsString(c) && known_codes[i] && !code; i++)
        if (strcmp(c->valuestring, known_codes[i]) == 0) code = known_codes[i];
    if (json) cJSON_Delete((cJSON *)json);
    if (!code)
        code = status == 404   ? "not_found"
               : status == 413 ? "request_too_large"
               : status == 429 ? "rate_limit_exceeded"
               : status >= 500 ? "upstream_error"
                               : "bad_request";
    return code;
}

void gw_req_backend_error(gw_req_t *r, int status, const char *body, size_t len)
{
    const char *code, *message;
    /* The backend refused the gateway's own credentials: not the client's affair. */
    if (status == 401 || status == 403 || status == 407) status = 502;
    code = gw_req_backend_code(r, status, body, len);
    message = status >= 500 ? "The backend failed." : "The backend refused the request.";
    gw_req_error(r, status, code, message);
}

/* ---- usage ---- */

/* Reads "usage" from an answer's JSON text (gw_body_usage). */
void gw_req_take_usage(gw_req_t *r, const char *text, size_t len)
{
    int64_t prompt, completion;
    if (!gw_body_usage(r->arena, text, len, &prompt, &completion, NULL)) return;
    r->usage_prompt = prompt;
    r->usage_completion = completion;
    r->usage_known = 1;
}
