/* An example external plugin: stamps a header both ways, can refuse, and can wait. */
#include <event2/event.h>
#include <gotthard/plugin.h>
#include <stdlib.h>
#include <string.h>

/*
 * config: {"header": "x-gotthard-example", "value": "hello", "delay_ms": 0, "select_body": {...}}
 * - request_headers: a request carrying "x-example-deny: 1" is refused with 403.
 * - request_body: with delay_ms > 0 the request waits that long (asynchronously).
 * - upstream_select: with select_body, the body sent upstream is replaced by that object (a
 *   plugin may change the body in any phase; the core holds it to the same rules).
 * - upstream request and response both get header: value.
 */
typedef struct example_conf {
    char *header, *value;
    long delay_ms;
    cJSON *select_body;
} example_conf_t;

static int configure(gw_conf_ctx_t *cx, const cJSON *config, const char *path, void **state)
{
    if (!cJSON_IsObject(config)) {
        gw_conf_error(cx, path, "must be an object with header and value");
        return -1;
    }
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(config, "header");
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(config, "value");
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(config, "delay_ms");
    const cJSON *sb = cJSON_GetObjectItemCaseSensitive(config, "select_body");
    int rc = 0;
    for (const cJSON *e = config->child; e; e = e->next)
        if (strcmp(e->string, "header") && strcmp(e->string, "value") &&
            strcmp(e->string, "delay_ms") && strcmp(e->string, "select_body")) {
            gw_conf_error(cx, path, "unknown key %s", e->string);
            rc = -1;
        }
    if (!cJSON_IsString(h) || !h->valuestring[0]) {
        gw_conf_error(cx, path, "header must be a non-empty string");
        rc = -1;
    }
    if (!cJSON_IsString(v)) {
        gw_conf_error(cx, path, "value must be a string");
        rc = -1;
    }
    if (d && (!cJSON_IsNumber(d) || d->valuedouble < 0 || d->valuedouble > 60000)) {
        gw_conf_error(cx, path, "delay_ms must be between 0 and 60000");
        rc = -1;
    }
    if (sb && !cJSON_IsObject(sb)) {
        gw_conf_error(cx, path, "select_body must be an object");
        rc = -1;
    }
    if (rc < 0) return -1;
    example_conf_t *c = calloc(1, sizeof(*c));
    if (!c) return -1;
    c->header = strdup(h->valuestring);
    c->value = strdup(v->valuestring);
    c->delay_ms = d ? (long)d->valuedouble : 0;
    c->select_body = sb ? cJSON_Duplicate(sb, 1) : NULL;
    *state = c;
    return 0;
}

static void release(void *state)
{
    example_conf_t *c = state;
    free(c->header);
    free(c->value);
    cJSON_Delete(c->select_body);
    free(c);
}

static int request_headers(gw_req_t *r, void *conf, void **ctx)
{
    example_conf_t *c = conf;
    size_t n;
    const char *deny = gw_req_header(r, "x-example-deny", &n);
    if (deny && n == 1 && deny[0] == '1') {
        gw_req_respond_error(r, 403, "denied_by_example",
                             "The example plugin refused this request.");
        return GW_DONE;
    }
    return gw_req_set_upstream_header(r, c->header, c->value) == 0 ? GW_CONTINUE : GW_ERROR;
}

static void resume_cb(evutil_socket_t fd, short what, void *arg)
{
    gw_req_resume(arg, GW_CONTINUE);
}

static int request_body(gw_req_t *r, void *conf, void **ctx)
{
    example_conf_t *c = conf;
    if (c->delay_ms <= 0) return GW_CONTINUE;
    struct timeval tv = {c->delay_ms / 1000, (c->delay_ms % 1000) * 1000};
    if (event_base_once(gw_req_base(r), -1, EV_TIMEOUT, resume_cb, r, &tv) < 0) return GW_ERROR;
    return GW_WAIT;
}

static int upstream_select(gw_req_t *r, void *conf, void **ctx)
{
    example_conf_t *c = conf;
    if (!c->select_body) return GW_CONTINUE;
    return gw_req_replace_json(r, cJSON_Duplicate(c->select_body, 1)) == 0 ? GW_CONTINUE : GW_ERROR;
}

static int response_headers(gw_req_t *r, void *conf, void **ctx)
{
    example_conf_t *c = conf;
    return gw_req_add_response_header(r, c->header, c->value) == 0 ? GW_CONTINUE : GW_ERROR;
}

const gw_plugin_t gotthard_plugin = {
    .name = "example",
    .abi = GW_PLUGIN_ABI,
    .configure = configure,
    .release = release,
    .request_headers = request_headers,
    .request_body = request_body,
    .upstream_select = upstream_select,
    .response_headers = response_headers,
    .response_event = NULL,
    .log = NULL,
    .activate = NULL, /* nothing outlives the snapshot: configure publishes nothing */
};
