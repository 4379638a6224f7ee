/* Quotas: each tenant held to its requests and tokens per minute, tokens per day and
 * concurrent requests, with OpenAI's x-ratelimit-* headers and 429s the SDKs honour. */
#include <gotthard/plugin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "limiter.h"

/*
 * config (inside each tenant):
 *   "limits": {"requests_per_minute": 600, "tokens_per_minute": 200000,
 *              "tokens_per_day": 5000000, "max_concurrent": 32,
 *              "models": {"llama-3-8b": {"requests_per_minute": 60}}}
 * A model override holds that model's requests to both its limits and the tenant's.
 *
 * This version keeps the counts in the process (one instance, or per instance): the Redis
 * scripts with the same rules (scripts.h) are not wired in yet.
 *
 * Tokens: admission reserves an estimate (request body bytes / 4, plus max_tokens or
 * DEFAULT_COMPLETION); the answer's usage settles it. For streams the backend is asked for
 * stream_options.include_usage, and that extra chunk is removed when the client did not
 * ask for it; JSON answers carry theirs. Without usage from the backend the estimate stands.
 */
#define DEFAULT_COMPLETION 256

typedef struct quota_conf {
    gq_limiter_t *lim;
} quota_conf_t;

typedef struct quota_ctx {
    gq_ticket_t ticket;
    int admitted, injected_usage;
    int64_t est;
} quota_ctx_t;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const struct {
    const char *name;
    size_t offset;
} limit_keys[] = {
    {"requests_per_minute", offsetof(gq_limits_t, rpm)},
    {"tokens_per_minute", offsetof(gq_limits_t, tpm)},
    {"tokens_per_day", offsetof(gq_limits_t, tpd)},
    {"max_concurrent", offsetof(gq_limits_t, concurrent)},
    {NULL, 0},
};

/* One limits object (the tenant's, or a model's override). */
static int parse_limits(gw_conf_ctx_t *cx, const cJSON *o, const char *path, gq_limits_t *l,
                        const cJSON **models)
{
    memset(l, 0, sizeof(*l));
    if (models) *models = NULL;
    if (!cJSON_IsObject(o)) {
        gw_conf_error(cx, path, "must be an object");
        return -1;
    }
    int rc = 0;
    for (const cJSON *f = o->child; f; f = f->next) {
        char p[512];
        snprintf(p, sizeof(p), "%s.%s", path, f->string);
        if (models && strcmp(f->string, "models") == 0) {
            if (!cJSON_IsObject(f)) {
                gw_conf_error(cx, p, "must be an object of model name to limits");
                rc = -1;
            }
            *models = f;
            continue;
        }
        size_t i = 0;
        while (limit_keys[i].name && strcmp(limit_keys[i].name, f->string) != 0) i++;
        if (!limit_keys[i].name) {
            gw_conf_error(cx, p, "unknown key");
            rc = -1;
            continue;
        }
        if (!cJSON_IsNumber(f) || f->valuedouble < 0 || f->valuedouble > (double)GQ_MAX_LIMIT ||
            f->valuedouble != (double)(int64_t)f->valuedouble) {
            gw_conf_error(cx, p, "must be an integer between 0 and %lld (0: no limit)",
                          (long long)GQ_MAX_LIMIT);
            rc = -1;
            continue;
        }
        *(int64_t *)((char *)l + limit_keys[i].offset) = (int64_t)f->valuedouble;
    }
    return rc;
}

static void release(void *state)
{
    quota_conf_t *c = state;
    if (!c) return;
    gq_limiter_free(c->lim);
    free(c);
}

static int configure(gw_conf_ctx_t *cx, const cJSON *root, const char *path, void **state)
{
    const cJSON *tenants = cJSON_GetObjectItemCaseSensitive(root, "tenants");
    quota_conf_t *c = NULL;
    int rc = 0, ti = 0;
    for (const cJSON *t = cJSON_IsArray(tenants) ? tenants->child : NULL; t; t = t->next, ti++) {
        const cJSON *limits = cJSON_GetObjectItemCaseSensitive(t, "limits");
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(t, "id");
        if (!limits) continue;
        char p[128];
        snprintf(p, sizeof(p), "$.tenants[%d].limits", ti);
        gq_limits_t l;
        const cJSON *models = NULL;
        if (parse_limits(cx, limits, p, &l, &models) < 0 || !cJSON_IsString(id)) {
            rc = -1;
            continue;
        }
        if (!c) {
            c = calloc(1, sizeof(*c));
            if (!c || !(c->lim = gq_limiter_new(NULL))) {
                release(c);
                return -1;
            }
        }
        if (gq_limiter_set(c->lim, id->valuestring, NULL, &l) < 0) {
            gw_conf_error(cx, p, "cannot be used (tenant id too long?)");
            rc = -1;
        }
        for (const cJSON *m = models ? models->child : NULL; m; m = m->next) {
            char mp[512];
            snprintf(mp, sizeof(mp), "%s.models.%s", p, m->string);
            gq_limits_t ml;
            if (parse_limits(cx, m, mp, &ml, NULL) < 0) {
                rc = -1;
                continue;
            }
            if (gq_limiter_set(c->lim, id->valuestring, m->string, &ml) < 0) {
                gw_conf_error(cx, mp, "cannot be used (model name too long?)");
                rc = -1;
            }
        }
    }
    if (rc < 0) {
        release(c);
        return -1;
    }
    *state = c;
    return 0;
}

static int64_t estimate(gw_req_t *r)
{
    int64_t est = (int64_t)gw_req_body_length(r) / 4;
    const cJSON *json = gw_req_json(r);
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(json, "max_completion_tokens");
    if (!cJSON_IsNumber(mt)) mt = cJSON_GetObjectItemCaseSensitive(json, "max_tokens");
    if (strcmp(gw_req_path(r), "/v1/embeddings") == 0) return est > 0 ? est : 1;
    if (cJSON_IsNumber(mt) && mt->valuedouble >= 0 && mt->valuedouble < 1e9)
        est += (int64_t)mt->valuedouble;
    else
        est += DEFAULT_COMPLETION;
    return est > 0 ? est : 1;
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

/* Asks a streaming backend for its usage chunk when the client did not. */
static int ask_for_usage(gw_req_t *r, quota_ctx_t *q)
{
    const cJSON *json = gw_req_json(r);
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(json, "stream_options");
    const cJSON *iu = cJSON_GetObjectItemCaseSensitive(so, "include_usage");
    if (cJSON_IsTrue(iu)) return 0;
    if (so && !cJSON_IsObject(so)) return 0; /* not ours to repair: the backend answers it */
    cJSON *copy = cJSON_Duplicate(json, 1);
    if (!copy) return -1;
    cJSON *cso = cJSON_GetObjectItemCaseSensitive(copy, "stream_options");
    if (!cso) cso = cJSON_AddObjectToObject(copy, "stream_options");
    if (!cso) {
        cJSON_Delete(copy);
        return -1;
    }
    cJSON_DeleteItemFromObjectCaseSensitive(cso, "include_usage");
    cJSON_AddBoolToObject(cso, "include_usage", 1);
    if (gw_req_replace_json(r, copy) < 0) return -1;
    q->injected_usage = 1;
    return 0;
}

static int request_body(gw_req_t *r, void *conf, void **ctx)
{
    quota_conf_t *c = conf;
    const char *tenant = gw_req_tenant(r), *model = gw_req_model(r);
    const gq_key_t *k = tenant && model ? gq_find(c->lim, tenant, model) : NULL;
    if (!k) return GW_CONTINUE;
    quota_ctx_t *q = gw_req_alloc(r, sizeof(*q));
    if (!q) return GW_ERROR;
    *ctx = q;
    q->est = estimate(r);
    gq_decision_t d;
    if (!gq_admit(k, now_ms(), q->est, &d, &q->ticket)) {
        add_headers(r, &d.state);
        add_int_header(r, "retry-after", gq_retry_after_seconds(d.retry_after_ms));
        add_int_header(r, "retry-after-ms", d.retry_after_ms);
        const char *code = gq_reason_code(d.reason);
        gw_req_respond_error(r, 429, code,
                             d.reason == GQ_TPD ? "The tenant's token budget for today is spent."
                                                : "Rate limit reached; retry after the indicated time.");
        return GW_DONE;
    }
    q->admitted = 1;
    add_headers(r, &d.state);
    if (gw_req_is_stream(r) && ask_for_usage(r, q) < 0) return GW_ERROR;
    return GW_CONTINUE;
}

/* Removes the usage chunk the gateway asked for and the client did not (the core has
 * already read its usage). */
static int response_event(gw_req_t *r, void *conf, void **ctx, const char *ev, size_t len)
{
    quota_ctx_t *q = *ctx;
    if (!q || !q->injected_usage || !memmem(ev, len, "\"usage\"", 7)) return GW_CONTINUE;
    const char *data = memmem(ev, len, "data:", 5);
    if (!data) return GW_CONTINUE;
    data += 5;
    cJSON *json = cJSON_ParseWithLength(data, len - (size_t)(data - ev));
    const cJSON *choices = cJSON_GetObjectItemCaseSensitive(json, "choices");
    int drop = cJSON_IsArray(choices) && cJSON_GetArraySize(choices) == 0 &&
               cJSON_GetObjectItemCaseSensitive(json, "usage");
    cJSON_Delete(json);
    return drop ? GW_DROP : GW_CONTINUE;
}

static void log_hook(gw_req_t *r, void *conf, void **ctx)
{
    quota_ctx_t *q = *ctx;
    if (!q || !q->admitted) return;
    int64_t p, c;
    gq_settle(&q->ticket, now_ms(), gw_req_usage(r, &p, &c) ? p + c : q->est);
}

static const char *const config_keys[] = {NULL};

const gw_plugin_t gw_plugin_quota = {
    .name = "quota",
    .abi = GW_PLUGIN_ABI,
    .config_keys = config_keys,
    .configure = configure,
    .release = release,
    .request_body = request_body,
    .response_event = response_event,
    .log = log_hook,
    .wants_usage = 1,
};
