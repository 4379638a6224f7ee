/* Quotas: each tenant held to its requests and tokens per minute, tokens per day and
 * concurrent requests, with OpenAI's x-ratelimit-* headers and 429s the SDKs honour. */
#include <gotthard/plugin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/random.h>

#include "limiter.h"
#include "quota.h"
#include "scripts.h"

/*
 * config (inside each tenant):
 *   "limits": {"requests_per_minute": 600, "tokens_per_minute": 200000,
 *              "tokens_per_day": 5000000, "max_concurrent": 32,
 *              "models": {"llama-3-8b": {"requests_per_minute": 60}}}
 * A model override holds that model's requests to both its limits and the tenant's.
 *
 * Without "redis" the counts live in the process. With it, they live in Redis (scripts.h) and
 * every instance shares them: a request is admitted from this process's leases when they
 * cover it (no round trip), else by one EVALSHA on the worker's Redis connection that also
 * gives back the old leases and takes new ones (limiter.h: leases shrink near the limit, so
 * the count stays exact). Tenants with max_concurrent take a slot in Redis per request. When
 * Redis does not answer, redis.on_unavailable decides: "reject" answers 503
 * quota_unavailable, "local" falls back to the in-process counts.
 *
 * Tokens: admission reserves an estimate (request body bytes / 4, plus max_tokens or
 * DEFAULT_COMPLETION per choice: max(n, best_of, 1) up to MAX_CHOICES); the answer's usage
 * settles it, and a request that relayed no 2xx answer is settled at 0. For streams the core
 * asks the backend for stream_options.include_usage whatever the client sent, and removes that
 * chunk when the client did not ask for it (request.c, upstream.c); JSON answers carry theirs.
 * Without usage from the backend a JSON answer is charged the estimate, a stream the prompt
 * estimate plus one token per event relayed (at least the estimate when it ended well).
 */
#define DEFAULT_COMPLETION 256
#define MAX_CHOICES 128                /* n / best_of counted up to this (OpenAI's bound for n) */
#define SLOT_LEASE_MS (15 * 60 * 1000) /* a concurrency slot outlives a dead gateway this long */

typedef struct quota_conf {
    gq_limiter_t *lim;
    int redis, fallback_local;
    char url[512]; /* redis.url, for the usage report */
    int timeout_ms;
    atomic_int refs; /* the snapshot's, and one per lease renewal in flight */
} quota_conf_t;

typedef struct quota_ctx {
    gq_ticket_t ticket;
    const gq_key_t *key;
    int admitted, in_redis, retried, renewing;
    int count_only; /* a tenant without limits: only its usage is counted */
    int64_t est;
    int64_t sent;    /* monotonic ms the admission was sent (the leases' clock) */
    int64_t touched; /* monotonic ms the concurrency slot was last extended */
    char slot[48];
    gq_redis_cmd_t *cmd;
} quota_ctx_t;

static uint64_t instance_id;
static atomic_uint_fast64_t slot_seq;
/* The quota state of the last config kept: a reload builds the next limiter on its limiter, so
 * counts carry over. Only activate moves it (the config passed every check): a refused
 * config's limiter never becomes the base of the next one, and its release leaves this one
 * alone. Under latest_lock, because the snapshot holding it may be released on a worker while
 * the main thread configures (a config without tenants may serve in between): configure takes
 * a reference (latest_ref), a release to zero clears it first. */
static pthread_mutex_t latest_lock = PTHREAD_MUTEX_INITIALIZER;
static quota_conf_t *latest;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A tenant's "limits" and, in its "models", a model's override. */
typedef struct model_limits {
    const char *model;
    gq_limits_t limits;
} model_limits_t;
typedef struct tenant_limits {
    gq_limits_t limits;
    gw_conf_list_t models; /* model_limits_t */
} tenant_limits_t;
_Static_assert(offsetof(tenant_limits_t, limits) == 0, "limit_keys serve both");

static int load_models(gw_conf_ctx_t *cx, const cJSON *o, const char *path, void *dst);

#define NO_LIMIT "0: no limit" /* what a limit of 0 means, in its bound error */

/* "models" first: an override is read by the same keys without it (limit_keys + 1). */
static const gw_conf_key_t limit_keys[] = {
    {"models", GW_CT_FN, offsetof(tenant_limits_t, models), .fn = load_models},
    {"requests_per_minute", GW_CT_INT, offsetof(gq_limits_t, rpm), 0, GQ_MAX_LIMIT,
     .note = NO_LIMIT},
    {"tokens_per_minute", GW_CT_INT, offsetof(gq_limits_t, tpm), 0, GQ_MAX_LIMIT, .note = NO_LIMIT},
    {"tokens_per_day", GW_CT_INT, offsetof(gq_limits_t, tpd), 0, GQ_MAX_LIMIT, .note = NO_LIMIT},
    {"max_concurrent", GW_CT_INT, offsetof(gq_limits_t, concurrent), 0, GQ_MAX_LIMIT,
     .note = NO_LIMIT},
    {NULL},
};
static const gw_conf_obj_t model_obj = {sizeof(gq_limits_t), limit_keys + 1, NULL, NULL};
static const gw_conf_obj_t limits_obj = {sizeof(tenant_limits_t), limit_keys, NULL, NULL};
static const gw_conf_key_t tenant_conf_keys[] = {
    {"limits", GW_CT_OBJ, 0, .obj = &limits_obj},
    {NULL},
};
static const gw_conf_obj_t tenant_obj = {sizeof(tenant_limits_t), tenant_conf_keys, NULL, NULL};

/* GW_CT_FN: "models": {"<model>": {limits}}, into a gw_conf_list_t of model_limits_t. */
static int load_models(gw_conf_ctx_t *cx, const cJSON *o, const char *path, void *dst)
{
    gw_conf_list_t *l = dst;
    if (!cJSON_IsObject(o)) {
        gw_conf_error(cx, path, "must be an object of model name to limits");
        return -1;
    }
    model_limits_t *m = gw_conf_alloc(cx, (size_t)cJSON_GetArraySize(o) * sizeof(*m));
    if (!m) return -1;
    l->items = m;
    int rc = 0;
    for (const cJSON *e = o->child; e; e = e->next, l->n++) {
        m[l->n].model = e->string;
        if (gw_conf_load(cx, e, gw_conf_path_key(cx, path, e->string), &model_obj,
                         &m[l->n].limits) < 0)
            rc = -1;
    }
    return rc;
}

static void release(void *state)
{
    quota_conf_t *c = state;
    if (!c || atomic_fetch_sub(&c->refs, 1) != 1) return;
    pthread_mutex_lock(&latest_lock);
    if (latest == c) latest = NULL;
    pthread_mutex_unlock(&latest_lock);
    gq_limiter_free(c->lim);
    free(c);
}

/* A reference to latest, or NULL (none, or being released). */
static quota_conf_t *latest_ref(void)
{
    pthread_mutex_lock(&latest_lock);
    quota_conf_t *c = latest;
    int n = c ? atomic_load(&c->refs) : 0;
    while (n > 0 && !atomic_compare_exchange_weak(&c->refs, &n, n + 1)) {
    }
    pthread_mutex_unlock(&latest_lock);
    return n > 0 ? c : NULL;
}

/* A tenant's limits and its models' into the limiter. Every tenant has a key, limited or not:
 * its usage is counted. */
static int set_limits(gw_conf_ctx_t *cx, gq_limiter_t *lim, const char *id, const char *tpath,
                      const tenant_limits_t *t)
{
    const char *p = gw_conf_path_key(cx, tpath, "limits");
    int rc = 0;
    if (gq_limiter_set(lim, id, NULL, &t->limits) < 0) {
        gw_conf_error(cx, p, "cannot be used (tenant id too long?)");
        rc = -1;
    }
    const model_limits_t *m = t->models.items;
    for (size_t i = 0; i < t->models.n; i++)
        if (gq_limiter_set(lim, id, m[i].model, &m[i].limits) < 0) {
            gw_conf_error(cx, gw_conf_path_key(cx, gw_conf_path_key(cx, p, "models"), m[i].model),
                          "cannot be used (model name too long?)");
            rc = -1;
        }
    return rc;
}

/* The counts in Redis: the core's "redis" (checked by the core) read for the usage report. */
static int use_redis(gw_conf_ctx_t *cx, const cJSON *redis, quota_conf_t *c)
{
    const cJSON *ou = cJSON_GetObjectItemCaseSensitive(redis, "on_unavailable");
    const cJSON *url = cJSON_GetObjectItemCaseSensitive(redis, "url");
    const cJSON *tmo = cJSON_GetObjectItemCaseSensitive(redis, "timeout_ms");
    c->redis = 1;
    c->fallback_local = cJSON_IsString(ou) && strcmp(ou->valuestring, "local") == 0;
    if (cJSON_IsString(url)) snprintf(c->url, sizeof(c->url), "%s", url->valuestring);
    c->timeout_ms = cJSON_IsNumber(tmo) && tmo->valuedouble > 0 ? (int)tmo->valuedouble : 100;
    if (!instance_id && getrandom(&instance_id, sizeof(instance_id), 0) != sizeof(instance_id))
        instance_id = (uint64_t)time(NULL);
    /* Loaded on every new connection before its queued settlements and releases. */
    for (int s = 0; s < GQ_SCRIPT_COUNT; s++)
        if (gw_redis_register_script(gq_script_source((gq_script_t)s)) < 0) {
            gw_conf_error(cx, "$.redis", "cannot be used (out of memory for its scripts)");
            return -1;
        }
    return 0;
}

static int configure(gw_conf_ctx_t *cx, const cJSON *root, const char *path, void **state)
{
    size_t nt = gw_conf_tenant_count(cx);
    if (!nt) return 0; /* no tenants: nothing to count */
    quota_conf_t *c = calloc(1, sizeof(*c));
    if (c) atomic_init(&c->refs, 1);
    quota_conf_t *prev = latest_ref(); /* held until the new limiter is built on it */
    if (!c || !(c->lim = gq_limiter_new(prev ? prev->lim : NULL))) {
        release(prev);
        free(c);
        return -1;
    }
    int rc = 0;
    for (size_t i = 0; i < nt; i++) {
        const char *id, *tpath;
        const cJSON *t = gw_conf_tenant(cx, i, &id, &tpath);
        tenant_limits_t l = {0};
        if (!t || !id) continue; /* the core reports it */
        if (gw_conf_load_some(cx, t, tpath, &tenant_obj, &l) < 0 ||
            set_limits(cx, c->lim, id, tpath, &l) < 0)
            rc = -1;
    }
    release(prev);
    const cJSON *redis = cJSON_GetObjectItemCaseSensitive(root, "redis");
    if (rc < 0 || (redis && use_redis(cx, redis, c) < 0)) {
        release(c);
        return -1;
    }
    *state = c;
    return 0;
}

/* The config is kept: the next one builds on this limiter. */
static void activate(void *state)
{
    pthread_mutex_lock(&latest_lock);
    latest = state;
    pthread_mutex_unlock(&latest_lock);
}

/* The choices an answer may hold: max(n, best_of, 1), an integer count, bounded. */
static int64_t choices(const cJSON *json)
{
    int64_t k = 1;
    const char *const names[] = {"n", "best_of"};
    for (size_t i = 0; i < 2; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(json, names[i]);
        if (!cJSON_IsNumber(v) || !(v->valuedouble >= 1)) continue;
        int64_t c = v->valuedouble >= (double)MAX_CHOICES ? MAX_CHOICES : (int64_t)v->valuedouble;
        if (c > k) k = c;
    }
    return k;
}

int64_t gw_quota_estimate_tokens(size_t body_len, const cJSON *json, int embeddings)
{
    int64_t est = (int64_t)body_len / 4;
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(json, "max_completion_tokens");
    if (!cJSON_IsNumber(mt)) mt = cJSON_GetObjectItemCaseSensitive(json, "max_tokens");
    if (embeddings) return est > 0 ? est : 1;
    int64_t completion = cJSON_IsNumber(mt) && mt->valuedouble >= 0 && mt->valuedouble < 1e9
                             ? (int64_t)mt->valuedouble
                             : DEFAULT_COMPLETION;
    est += completion * choices(json); /* below 1e9 * MAX_CHOICES: no overflow */
    return est > 0 ? est : 1;
}

static int64_t estimate(gw_req_t *r)
{
    return gw_quota_estimate_tokens(gw_req_body_length(r), gw_req_json(r),
                                    strcmp(gw_req_path(r), "/v1/embeddings") == 0);
}

static void add_duration_header(gw_req_t *r, const char *name, int64_t ms)
{
    char v[32];
    gq_format_duration(v, sizeof(v), ms);
    gw_req_add_response_header(r, name, v);
}

static void add_int_header(gw_req_t *r, const char *name, int64_t v)
{
    char s[24];
    snprintf(s, sizeof(s), "%lld", (long long)(v < 0 ? 0 : v));
    gw_req_add_response_header(r, name, s);
}

/* OpenAI's headers: requests and tokens, limit, remaining and reset. */
static void add_headers(gw_req_t *r, const gq_state_t *s)
{
    if (s->req_limit) {
        add_int_header(r, "x-ratelimit-limit-requests", s->req_limit);
        add_int_header(r, "x-ratelimit-remaining-requests", s->req_remaining);
        add_duration_header(r, "x-ratelimit-reset-requests", s->req_reset_ms);
    }
    if (s->tok_limit) {
        add_int_header(r, "x-ratelimit-limit-tokens", s->tok_limit);
        add_int_header(r, "x-ratelimit-remaining-tokens", s->tok_remaining);
        add_duration_header(r, "x-ratelimit-reset-tokens", s->tok_reset_ms);
    }
}

/* A decision, from either store, turned into headers, a 429, or going on. */
static int decided(gw_req_t *r, quota_ctx_t *q, int allowed, const gq_decision_t *d)
{
    add_headers(r, &d->state);
    if (!allowed) {
        gw_metrics_ratelimited(gw_req_tenant(r), gq_reason_kind(d->reason));
        add_int_header(r, "retry-after", gq_retry_after_seconds(d->retry_after_ms));
        add_int_header(r, "retry-after-ms", d->retry_after_ms);
        gw_req_respond_error(r, 429, gq_reason_code(d->reason),
                             d->reason == GQ_TPD
                                 ? "The tenant's token budget for today is spent."
                                 : "Rate limit reached; retry after the indicated time.");
        return GW_DONE;
    }
    q->admitted = 1;
    return GW_CONTINUE;
}

static int admit_local(gw_req_t *r, quota_ctx_t *q)
{
    gq_decision_t d;
    int allowed = gq_admit(q->key, now_ms(), q->est, &d, &q->ticket);
    return decided(r, q, allowed, &d);
}

/* Redis did not answer: the configured fallback. */
static int unavailable(gw_req_t *r, quota_conf_t *c, quota_ctx_t *q)
{
    if (c->fallback_local) return admit_local(r, q);
    gw_req_respond_error(r, 503, "quota_unavailable",
                         "The quota store is unavailable; retry later.");
    return GW_DONE;
}

typedef struct admit_arg {
    quota_conf_t *c;
    quota_ctx_t *q;
} admit_arg_t;

/* The end of a lease renewal, whatever its outcome (exactly once per renewal). */
static void renewed(quota_ctx_t *q, int ok, const gq_lease_grant_t g[2],
                    const gq_level_fig_t fig[2])
{
    if (!q->renewing) return;
    q->renewing = 0;
    gq_lease_install(q->key, q->sent + GQ_LEASE_MS, ok ? g : NULL, fig,
                     q->admitted || q->in_redis ? &q->ticket : NULL);
}

/* An admission whose answer was lost (a timeout, a dropped connection, a reload) may still
 * run in Redis, later, and take its slot: its release follows it (the settle script with
 * nothing to charge; removing a slot that is not there is harmless). Sent now or, with Redis
 * away, queued for the next connection (gateway/redis.c), so it runs after the admission. */
static void release_lost_slot(gw_req_t *r, quota_ctx_t *q)
{
    if (!q->slot[0]) return;
    gq_ticket_t t = {.key = q->key};
    gq_level_info_t lv[2];
    int n = gq_key_levels(q->key, lv);
    for (int i = 0; i < n; i++) t.slot_taken[i] = lv[i].limits->concurrent != 0;
    snprintf(t.slot, sizeof(t.slot), "%s", q->slot);
    gq_redis_cmd_t *cmd = gw_req_alloc(r, sizeof(*cmd));
    if (cmd && gq_redis_settle_cmd(cmd, &t, 0, GQ_REDIS_WINDOW_S, 0) == 0)
        gw_req_redis_send(r, cmd->argc, cmd->argv, cmd->argvlen);
}

static void on_admit(gw_req_t *r, const struct redisReply *reply, void *arg)
{
    admit_arg_t *a = arg;
    quota_ctx_t *q = a->q;
    if (reply && gq_redis_is_noscript(reply) && !q->retried) {
        /* Redis lost its scripts (restart, SCRIPT FLUSH): load, then ask again, in order. */
        q->retried = 1;
        gq_redis_cmd_t *load = gw_req_alloc(r, sizeof(*load));
        int ok = load != NULL;
        for (int s = 0; ok && s < GQ_SCRIPT_COUNT; s++)
            ok = gq_redis_load_cmd(load, (gq_script_t)s) == 0 &&
                 gw_req_redis_send(r, load->argc, load->argv, load->argvlen) == 0;
        if (ok && gw_req_redis(r, on_admit, a, q->cmd->argc, q->cmd->argv, q->cmd->argvlen) == 0)
            return;
    }
    gq_decision_t d;
    gq_lease_grant_t g[2];
    gq_level_fig_t fig[2];
    int allowed =
        reply ? gq_redis_admit_parse(reply, q->key, q->est, q->slot, &d, &q->ticket, g, fig) : -1;
    q->in_redis = allowed == 1;
    if (allowed < 0) release_lost_slot(r, q);
    renewed(q, allowed >= 0, g, fig);
    if (allowed == 0 && gq_leasable(q->key)) gq_lease_refused(q->key, q->sent, &d);
    if (gw_req_aborted(r)) {
        /* Admitted for a client that is gone: the reservation goes back (settled at 0). */
        if (allowed == 1) q->admitted = 1, q->est = 0;
        gw_req_resume(r, GW_DONE);
        return;
    }
    int rc = allowed < 0 ? unavailable(r, a->c, q) : decided(r, q, allowed, &d);
    gw_req_resume(r, rc);
}

/* A renewal ahead of time, in the background: the leases serve meanwhile. */
typedef struct renewal {
    quota_conf_t *c; /* held: the key lives as long as its limiter */
    const gq_key_t *key;
    int64_t sent;
    gq_redis_cmd_t cmd;
} renewal_t;

static void on_renewed(const struct redisReply *reply, void *arg)
{
    renewal_t *rn = arg;
    gq_decision_t d;
    gq_lease_grant_t g[2];
    gq_level_fig_t fig[2];
    int rc = reply ? gq_redis_admit_parse(reply, rn->key, 0, "", &d, NULL, g, fig) : -1;
    gq_lease_install(rn->key, rn->sent + GQ_LEASE_MS, rc >= 0 ? g : NULL, fig, NULL);
    release(rn->c);
    free(rn);
}

static void renew_ahead(gw_req_t *r, quota_conf_t *c, quota_ctx_t *q, const gq_lease_ret_t ret[2])
{
    renewal_t *rn = malloc(sizeof(*rn));
    if (rn && gq_redis_admit_cmd(&rn->cmd, q->key, 0, "", SLOT_LEASE_MS, GQ_REDIS_WINDOW_S, 2, ret,
                                 0) == 0) {
        rn->c = c;
        rn->key = q->key;
        rn->sent = q->sent;
        atomic_fetch_add(&c->refs, 1);
        if (gw_req_redis_detached(r, on_renewed, rn, rn->cmd.argc, rn->cmd.argv, rn->cmd.argvlen) ==
            0)
            return;
        atomic_fetch_sub(&c->refs, 1);
    }
    free(rn);
    gq_lease_install(q->key, 0, NULL, NULL, NULL); /* ends the renewal; the rests stay counted */
}

/* The key a request is held to. A pool alias is the same model under another name: the
 * override of the model the backend serves (the alias's target, the body's model once the
 * alias is applied) holds it, else the override of the name the client sent, else the
 * tenant's limits. */
static const gq_key_t *held_to(quota_conf_t *c, gw_req_t *r, const char *tenant, const char *model)
{
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(gw_req_json(r), "model");
    if (cJSON_IsString(m) && strcmp(m->valuestring, model) != 0) {
        const gq_key_t *served = gq_find(c->lim, tenant, m->valuestring);
        gq_level_info_t lv[2];
        if (served && gq_key_levels(served, lv) == 2) return served;
    }
    return gq_find(c->lim, tenant, model);
}

static int request_body(gw_req_t *r, void *conf, void **ctx)
{
    quota_conf_t *c = conf;
    const char *tenant = gw_req_tenant(r), *model = gw_req_model(r);
    const gq_key_t *k = tenant && model ? held_to(c, r, tenant, model) : NULL;
    const gq_key_t *tk = k ? k : gq_find_tenant(c->lim, tenant);
    if (!tk) return GW_CONTINUE;
    quota_ctx_t *q = gw_req_alloc(r, sizeof(*q));
    if (!q) return GW_ERROR;
    *ctx = q;
    q->key = tk;
    q->est = estimate(r);
    if (!k) { /* not limited: counted only */
        q->count_only = 1;
        return GW_CONTINUE;
    }
    if (!c->redis) return admit_local(r, q);
    gq_lease_ret_t ret[2];
    q->sent = q->touched = mono_ms();
    if (gq_leasable(k)) {
        gq_decision_t d;
        int got = gq_lease_admit(k, q->sent, q->est, &d, &q->ticket, &q->renewing, ret);
        if (got < 0) return decided(r, q, 0, &d);
        if (got) {
            q->in_redis = 1;
            if (q->renewing) {
                q->renewing = 0;
                renew_ahead(r, c, q, ret);
            }
            return decided(r, q, 1, &d);
        }
    } else {
        gq_slot_id(q->slot, instance_id, atomic_fetch_add(&slot_seq, 1));
    }
    q->cmd = gw_req_alloc(r, sizeof(*q->cmd));
    admit_arg_t *a = gw_req_alloc(r, sizeof(*a));
    if (!q->cmd || !a ||
        gq_redis_admit_cmd(q->cmd, k, q->est, q->slot, SLOT_LEASE_MS, GQ_REDIS_WINDOW_S,
                           q->renewing, q->renewing ? ret : NULL, 0) < 0) {
        renewed(q, 0, NULL, NULL);
        return GW_ERROR;
    }
    a->c = c;
    a->q = q;
    if (gw_req_redis(r, on_admit, a, q->cmd->argc, q->cmd->argv, q->cmd->argvlen) < 0) {
        renewed(q, 0, NULL, NULL);
        return unavailable(r, c, q);
    }
    return GW_WAIT;
}

/* A stream holding a concurrency slot in Redis keeps it: the slot's lease (SLOT_LEASE_MS) is
 * extended every third of it while events flow, so a stream longer than the lease is not
 * forgotten (and a gateway that dies frees its slots within the lease). */
static void keep_slot(gw_req_t *r, quota_ctx_t *q)
{
    int64_t now = mono_ms();
    if (now - q->touched < SLOT_LEASE_MS / 3) return;
    q->touched = now;
    gq_redis_cmd_t *cmd = gw_req_alloc(r, sizeof(*cmd));
    if (cmd && gq_redis_touch_cmd(cmd, &q->ticket, SLOT_LEASE_MS, 0) == 0)
        gw_req_redis_send(r, cmd->argc, cmd->argv, cmd->argvlen);
}

static int response_event(gw_req_t *r, void *conf, void **ctx, const char *ev, size_t len)
{
    quota_ctx_t *q = *ctx;
    (void)ev;
    (void)len;
    if (q && q->in_redis && (q->ticket.slot_taken[0] || q->ticket.slot_taken[1])) keep_slot(r, q);
    return GW_CONTINUE;
}

/* Adds u to the tenant's day in Redis, on the request's worker (r) or, without a request, on
 * the calling worker's connection. Redis away: queued for the next connection (redis.c). */
static void send_usage(gw_req_t *r, const gq_key_t *key, const gq_usage_t *u)
{
    gq_level_info_t lv[2];
    gq_key_levels(key, lv);
    gq_redis_cmd_t *cmd = r ? gw_req_alloc(r, sizeof(*cmd)) : malloc(sizeof(*cmd));
    for (int step = 0; cmd && step < 4; step++)
        if (gq_redis_usage_cmd(cmd, step, lv[0].tenant, u) < 0 ||
            (r ? gw_req_redis_send(r, cmd->argc, cmd->argv, cmd->argvlen)
               : gw_worker_redis_send(cmd->argc, cmd->argv, cmd->argvlen)) < 0)
            break; /* out of memory: these counts are lost (the process keeps its own) */
    if (!r) free(cmd);
}

/* Pending usage counts reach Redis within about GQ_USAGE_FLUSH_MS even when no request follows
 * (a burst, then silence): each worker that leaves counts pending arms a timer that sends every
 * tenant's pending counts; thread_exit sends them when the worker stops. */
static _Thread_local struct event *flush_timer;

static void flush_pending(void)
{
    quota_conf_t *c = latest_ref();
    if (!c) return;
    size_t n = c->redis ? gq_tenants(c->lim, NULL, 0) : 0;
    const char **ids = n ? malloc(n * sizeof(*ids)) : NULL;
    if (ids) n = gq_tenants(c->lim, ids, n);
    for (size_t i = 0; ids && i < n; i++) {
        const gq_key_t *k = gq_find_tenant(c->lim, ids[i]);
        gq_usage_t u;
        if (k && gq_usage_take(k, mono_ms(), 1, &u)) send_usage(NULL, k, &u);
    }
    free(ids);
    release(c);
}

static void flush_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    flush_pending();
}

static void arm_flush(gw_req_t *r)
{
    if (!flush_timer) flush_timer = evtimer_new(gw_req_base(r), flush_cb, NULL);
    if (!flush_timer || evtimer_pending(flush_timer, NULL)) return;
    struct timeval tv = {GQ_USAGE_FLUSH_MS / 1000, (GQ_USAGE_FLUSH_MS % 1000) * 1000};
    evtimer_add(flush_timer, &tv);
}

/* thread_exit: the calling worker stops; its pending usage counts go to Redis now (the core
 * then gives its connection a moment to deliver them) and its flush timer is freed. */
static void thread_exit(void)
{
    if (flush_timer) event_free(flush_timer);
    flush_timer = NULL;
    flush_pending(); /* every tenant's, whichever worker counted them */
}

/* Usage: a request served (gw_req_served: a 2xx, or a stream that relayed events), with what
 * it used. */
static void count_usage(gw_req_t *r, quota_conf_t *c, quota_ctx_t *q, int64_t actual)
{
    if (!gw_req_served(r)) return;
    int64_t p, cp, prompt;
    if (gw_req_usage(r, &p, &cp)) {
        prompt = p;
    } else {
        prompt = (int64_t)gw_req_body_length(r) / 4;
        if (prompt > actual) prompt = actual;
        cp = actual - prompt;
    }
    gq_usage_t u;
    int64_t now = now_ms();
    if (gq_usage_add(q->key, now, prompt, cp, &u) && c->redis) send_usage(r, q->key, &u);
    if (c->redis && gq_usage_take(q->key, mono_ms(), 0, &u)) send_usage(r, q->key, &u);
    if (c->redis) arm_flush(r);
}

static void log_hook(gw_req_t *r, void *conf, void **ctx)
{
    quota_ctx_t *q = *ctx;
    if (!q || (!q->admitted && !q->count_only)) return;
    int64_t p, c, actual = q->est;
    if (!gw_req_served(r)) {
        /* Nothing produced for the client (the gateway's 502/503/504, a backend's error
         * answer, a client gone before the head): the reservation goes back whole. */
        actual = 0;
    } else if (gw_req_usage(r, &p, &c)) {
        actual = p + c;
    } else if (gw_req_is_stream(r)) {
        /* A stream without its usage (the core asks every backend for it; this one did not
         * send it, or the stream was cut short): the prompt estimate and one token per event
         * relayed, never less than that. A stream that ended well is charged at least its
         * reservation; one cut short (the client left, the backend failed) what it relayed. */
        int64_t produced = (int64_t)gw_req_body_length(r) / 4 + (int64_t)gw_req_events_relayed(r);
        int whole = !gw_req_aborted(r) && gw_req_status(r) == 200;
        actual = whole && q->est > produced ? q->est : produced;
    }
    count_usage(r, conf, q, actual);
    if (q->count_only) return;
    if (!q->in_redis) {
        gq_settle(&q->ticket, now_ms(), actual);
        return;
    }
    /* Into the leases it was spent from, while they live; else to Redis. Nobody waits for the
     * answer; with Redis away it waits in the worker's queue for the next connection. */
    if (!q->ticket.slot_taken[0] && !q->ticket.slot_taken[1] &&
        gq_lease_settle(&q->ticket, mono_ms(), actual))
        return;
    gq_redis_cmd_t *cmd = gw_req_alloc(r, sizeof(*cmd));
    if (cmd && gq_redis_settle_cmd(cmd, &q->ticket, actual, GQ_REDIS_WINDOW_S, 0) == 0)
        gw_req_redis_send(r, cmd->argc, cmd->argv, cmd->argvlen);
}

/* The next reply on rc by deadline (mono_ms): 0 with *reply, -1 when the connection failed,
 * GQ_USAGE_LATE when the deadline passed. hiredis's own timeout starts again with every byte
 * read (a server trickling its answer would hold the caller for ever): each read is given only
 * the time left. */
#define GQ_USAGE_LATE (-2)
static int reply_by(redisContext *rc, int64_t deadline, void **reply)
{
    *reply = NULL;
    for (int done = 0; !done;) {
        int64_t left = deadline - mono_ms();
        if (left <= 0) return GQ_USAGE_LATE;
        struct timeval tv = {.tv_sec = left / 1000, .tv_usec = (left % 1000) * 1000};
        if (redisSetTimeout(rc, tv) != REDIS_OK || redisBufferWrite(rc, &done) != REDIS_OK)
            return mono_ms() >= deadline ? GQ_USAGE_LATE : -1;
    }
    for (;;) {
        if (redisGetReplyFromReader(rc, reply) != REDIS_OK) return -1;
        if (*reply) return 0;
        int64_t left = deadline - mono_ms();
        if (left <= 0) return GQ_USAGE_LATE;
        struct timeval tv = {.tv_sec = left / 1000, .tv_usec = (left % 1000) * 1000};
        if (redisSetTimeout(rc, tv) != REDIS_OK || redisBufferRead(rc) != REDIS_OK)
            return mono_ms() >= deadline ? GQ_USAGE_LATE : -1;
    }
}

/* One day's counts of every tenant, from Redis (pipelined HMGETs, all answered by deadline)
 * or this process: 0, -1, or GQ_USAGE_LATE. */
static int usage_day(const quota_conf_t *c, redisContext *rc, int64_t deadline, int64_t day,
                     const char *const *ids, size_t n, cJSON *tenants)
{
    for (size_t i = 0; rc && i < n; i++) {
        char key[512];
        if (gq_usage_key(key, sizeof(key), ids[i], day) < 0 ||
            redisAppendCommand(rc, "HMGET %s requests prompt_tokens completion_tokens", key) !=
                REDIS_OK)
            return -1;
    }
    for (size_t i = 0; i < n; i++) {
        gq_usage_t u = {0};
        int have = 0;
        if (rc) {
            void *reply = NULL;
            int got = reply_by(rc, deadline, &reply);
            if (got < 0) return got;
            redisReply *r = reply;
            if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 3) {
                int64_t *f[3] = {&u.requests, &u.prompt_tokens, &u.completion_tokens};
                for (size_t j = 0; j < 3; j++)
                    if (r->element[j]->type == REDIS_REPLY_STRING) {
                        *f[j] = strtoll(r->element[j]->str, NULL, 10);
                        have = 1;
                    }
            }
            freeReplyObject(reply);
        } else {
            have = gq_usage_get(c->lim, ids[i], day, &u);
        }
        if (!have) continue;
        cJSON *t = cJSON_AddObjectToObject(tenants, ids[i]);
        if (!t) return -1;
        cJSON_AddNumberToObject(t, "requests", (double)u.requests);
        cJSON_AddNumberToObject(t, "prompt_tokens", (double)u.prompt_tokens);
        cJSON_AddNumberToObject(t, "completion_tokens", (double)u.completion_tokens);
    }
    return 0;
}

/* The whole usage report's deadline: 4 x redis.timeout_ms, at least 1 s, at most 10 s. */
static int usage_deadline_ms(const void *state)
{
    const quota_conf_t *c = state;
    int64_t t = c && c->redis ? 4 * (int64_t)c->timeout_ms : 0;
    return t < 1000 ? 1000 : t > 10000 ? 10000 : (int)t;
}

/* Usage per tenant and UTC day, the last `days` days (today first), as a new JSON object:
 * {"store": "redis"|"process", "days": [{"date", "tenants": {id: {requests, prompt_tokens,
 * completion_tokens}}}]}. With Redis the counts are every instance's, read with a blocking
 * connection (the admin's thread, never a worker's loop); when Redis does not answer, this
 * process's own counts, with "error". Every reply must be in by usage_deadline_ms from the call,
 * however slowly the server sends: else *late is set (and "error"). NULL when out of memory. */
static cJSON *usage_report(const void *state, int days, int *late)
{
    const quota_conf_t *c = state;
    *late = 0;
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "store", c && c->redis ? "redis" : "process");
    cJSON *arr = cJSON_AddArrayToObject(o, "days");
    if (!c || !arr) return o;
    int64_t deadline = mono_ms() + usage_deadline_ms(state);
    redisContext *rc = NULL;
    if (c->redis) {
        char err[256];
        rc = gw_redis_url_connect(c->url, c->timeout_ms, err, sizeof(err));
        if (!rc)
            cJSON_AddStringToObject(o, "error",
                                    "the quota store did not answer: these are this "
                                    "instance's own counts");
    }
    int64_t today = gq_utc_day(now_ms());
    size_t n = gq_tenants(c->lim, NULL, 0);
    const char **ids = malloc((n ? n : 1) * sizeof(*ids));
    if (!ids)
        days = 0;
    else
        n = gq_tenants(c->lim, ids, n);
    for (int d = 0; d < days; d++) {
        cJSON *day = cJSON_CreateObject();
        char date[11];
        gq_day_string(date, today - d);
        cJSON_AddStringToObject(day, "date", date);
        cJSON *tenants = cJSON_AddObjectToObject(day, "tenants");
        cJSON_AddItemToArray(arr, day);
        int got = tenants ? usage_day(c, rc, deadline, today - d, ids, n, tenants) : -1;
        if (got == GQ_USAGE_LATE) *late = 1;
        if (got < 0) {
            cJSON_AddStringToObject(o, "error", "the quota store failed while answering");
            break;
        }
    }
    free(ids);
    if (rc) redisFree(rc);
    return o;
}

/* GET /usage[?days=N], 1 <= N <= 40 (default 1): usage_report; 503 quota_store_timeout when
 * the store is late (the admin serves that again for five seconds). */
static int report_usage(void *state, const char *query, cJSON *out, gw_admin_err_t *err)
{
    int days = 1;
    for (const char *q = query; q && *q;) {
        if (strncmp(q, "days=", 5) == 0) days = atoi(q + 5);
        q = strchr(q, '&');
        if (q) q++;
    }
    days = days < 1 ? 1 : days > 40 ? 40 : days;
    int late = 0;
    cJSON *o = usage_report(state, days, &late);
    if (late) {
        cJSON_Delete(o);
        err->code = "quota_store_timeout";
        snprintf(err->message, sizeof(err->message),
                 "The quota store did not answer within %d ms; try again in a few seconds.",
                 usage_deadline_ms(state));
        return 503;
    }
    if (!o) return 500;
    for (cJSON *e = o->child; e;) { /* the whole answer */
        cJSON *next = e->next;
        cJSON_AddItemToObject(out, e->string, cJSON_DetachItemViaPointer(o, e));
        e = next;
    }
    cJSON_Delete(o);
    return 0;
}

/* GET /status: each tenant's limits (numbers only), in its entry of "tenants". */
static void report_status(const quota_conf_t *c, cJSON *out)
{
    static const char *const names[] = {"requests_per_minute", "tokens_per_minute",
                                        "tokens_per_day", "max_concurrent"};
    cJSON *ts = cJSON_GetObjectItemCaseSensitive(out, "tenants");
    for (cJSON *t = c && cJSON_IsArray(ts) ? ts->child : NULL; t; t = t->next) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(t, "id");
        const gq_key_t *k = cJSON_IsString(id) ? gq_find(c->lim, id->valuestring, NULL) : NULL;
        gq_level_info_t lv[2];
        if (!k || gq_key_levels(k, lv) < 1) continue;
        const int64_t v[4] = {lv[0].limits->rpm, lv[0].limits->tpm, lv[0].limits->tpd,
                              lv[0].limits->concurrent};
        cJSON *l = cJSON_AddObjectToObject(t, "limits");
        for (int i = 0; l && i < 4; i++)
            if (v[i]) cJSON_AddNumberToObject(l, names[i], (double)v[i]);
    }
}

static int admin_report(void *state, const char *page, const char *query, cJSON *out,
                        gw_admin_err_t *err)
{
    if (strcmp(page, "usage") == 0) return report_usage(state, query, out, err);
    if (strcmp(page, "status") == 0) report_status(state, out);
    return 0;
}

static const char *const config_keys[] = {NULL};
static const char *const tenant_keys[] = {"limits", NULL};
static const char *const admin_pages[] = {"usage", NULL};

const gw_plugin_t gw_plugin_quota = {
    .name = "quota",
    .abi = GW_PLUGIN_ABI,
    .config_keys = config_keys,
    .tenant_keys = tenant_keys,
    .rank = GW_RANK_QUOTA,
    .configure = configure,
    .release = release,
    .request_body = request_body,
    .response_event = response_event,
    .log = log_hook,
    .wants_usage = 1,
    .activate = activate,
    .admin_pages = admin_pages,
    .admin_report = admin_report,
    .thread_exit = thread_exit,
};
