/* The plugin host: loads the configured plugins into a snapshot, orders them, releases them. */
#include "config/plugin_host.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "base/conf.h"
#include "base/http.h"

/* The config whose plugins answer gw_plugins_own_key, between gw_plugins_open and
 * gw_plugins_configure (the core's loader asks it about keys not in its tables). */
static _Thread_local const gw_config_t *loading;

static const char *const *keys_of(const gw_plugin_t *p, int tenant)
{
    return tenant ? p->tenant_keys : p->config_keys;
}

static const gw_plugin_t *owner(const gw_config_t *c, const char *key, int tenant)
{
    for (size_t i = 0; i < c->nknown; i++)
        for (const char *const *k = keys_of(c->known[i].plugin, tenant); k && *k; k++)
            if (strcmp(*k, key) == 0) return c->known[i].plugin;
    return NULL;
}

int gw_plugins_own_key(const char *key)
{
    return loading && (loading->keys_unchecked || owner(loading, key, 0));
}

int gw_plugins_own_tenant_key(const char *key)
{
    return loading && (loading->keys_unchecked || owner(loading, key, 1));
}

/* Loads the external plugin of plugins[i] (a .so) into inst: 0, or -1 after an error. Nothing
 * in a .so of another ABI is called: its table is only read for the number. */
static int open_external(gw_conf_ctx_t *cx, const char *file, size_t i, gw_plugin_inst_t *inst)
{
    inst->path = gw_conf_path_index(cx, "$.plugins", i);
    inst->entry = (long)i;
    char *ppath = gw_conf_path_key(cx, inst->path, "path");
    /* RTLD_NODELETE: a plugin's code stays mapped after the last config that loaded it is
     * released, for what still points into it (a worker's thread-local state that its
     * thread_exit frees only when the worker stops, a detached Redis callback). */
    void *dl = dlopen(file, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    if (!dl) {
        gw_conf_error(cx, ppath, "cannot load: %s", dlerror());
        return -1;
    }
    const gw_plugin_t *p = dlsym(dl, GW_PLUGIN_SYMBOL);
    if (!p) {
        gw_conf_error(cx, ppath, "is not a gotthard plugin (no symbol %s)", GW_PLUGIN_SYMBOL);
    } else if (p->abi != GW_PLUGIN_ABI) {
        gw_conf_error(cx, ppath, "built against plugin ABI %d; this gateway loads ABI %d", p->abi,
                      GW_PLUGIN_ABI);
    } else if (!p->name || !*p->name) {
        gw_conf_error(cx, ppath, "is a gotthard plugin without a name");
    } else {
        inst->plugin = p;
        inst->dl = dl;
        return 0;
    }
    dlclose(dl);
    return -1;
}

static int core_has(const gw_conf_obj_t *obj, const char *key)
{
    for (const gw_conf_key_t *k = obj->keys; k->name; k++)
        if (strcmp(k->name, key) == 0) return 1;
    return 0;
}

/* Each key is owned once: by the core or by one plugin. */
static int check_claims(gw_conf_ctx_t *cx, const gw_plugin_inst_t *ps, size_t n,
                        const gw_conf_obj_t *core[2])
{
    static const char *const what[2] = {"top-level", "tenant"};
    int rc = 0;
    for (size_t i = 0; i < n; i++)
        for (int t = 0; t < 2; t++)
            for (const char *const *k = keys_of(ps[i].plugin, t); k && *k; k++) {
                const gw_plugin_t *o = NULL;
                for (size_t j = 0; j < i && !o; j++)
                    for (const char *const *l = keys_of(ps[j].plugin, t); l && *l && !o; l++)
                        if (strcmp(*k, *l) == 0) o = ps[j].plugin;
                if (!o && !core_has(core[t], *k)) continue;
                gw_conf_error(cx, ps[i].path,
                              "plugin \"%s\" claims the %s key \"%s\", which %s%s%s",
                              ps[i].plugin->name, what[t], *k, o ? "plugin \"" : "the core owns",
                              o ? o->name : "", o ? "\" owns" : "");
                rc = -1;
            }
    return rc;
}

static long find_named(const gw_plugin_inst_t *ps, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(ps[i].plugin->name, name) == 0) return (long)i;
    return -1;
}

static int rank_of(const gw_plugin_t *p)
{
    return p->rank ? p->rank : GW_RANK_LAST;
}

/* Must a run before b (a's before, or b's after, names the other)? */
static int must_precede(const gw_plugin_inst_t *a, const gw_plugin_inst_t *b)
{
    return (a->plugin->before && strcmp(a->plugin->before, b->plugin->name) == 0) ||
           (b->plugin->after && strcmp(b->plugin->after, a->plugin->name) == 0);
}

/* The admin listener's own pages (ops/admin.c serves them): no plugin's page may take one. */
static const char *const core_pages[] = {"",       "healthz",   "readyz", "metrics",      "privacy",
                                         "status", "residency", "reload", "audit/recent", NULL};

/* Why page (a plugin's GET /<page>) cannot be one, or NULL: a short path of [a-z0-9_-] words
 * joined by '/', not the core's, not another plugin's. */
static const char *page_problem(const gw_plugin_inst_t *ps, size_t i, const char *page)
{
    size_t len = strlen(page);
    if (len == 0 || len > 64 || page[0] == '/' || page[len - 1] == '/' || strstr(page, "//"))
        return "is not a page name (1 to 64 characters, words joined by '/')";
    for (const char *c = page; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || strchr("_-/", *c)))
            return "is not a page name (lower-case letters, digits, '_', '-' and '/')";
    for (const char *const *k = core_pages; *k; k++)
        if (strcmp(*k, page) == 0) return "is a page of the core's";
    for (size_t j = 0; j < i; j++)
        for (const char *const *q = ps[j].plugin->admin_pages; q && *q; q++)
            if (strcmp(*q, page) == 0) return "is served by another plugin";
    return NULL;
}

/* Names: unique, after/before name a plugin, admin pages are free. */
static int check_names(gw_conf_ctx_t *cx, const gw_plugin_inst_t *ps, size_t n)
{
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        const gw_plugin_t *p = ps[i].plugin;
        for (const char *const *q = p->admin_pages; q && *q; q++) {
            const char *why = page_problem(ps, i, *q);
            if (!why) continue;
            gw_conf_error(cx, ps[i].path, "plugin \"%s\": its admin page \"%s\" %s", p->name,
                          gw_conf_string_ok(*q) ? *q : "?", why);
            rc = -1;
        }
        if (find_named(ps, i, p->name) >= 0) {
            gw_conf_error(cx, ps[i].path, "a plugin named \"%s\" is loaded already", p->name);
            rc = -1;
        }
        const char *rel[2] = {p->after, p->before}, *relname[2] = {"after", "before"};
        for (int k = 0; k < 2; k++)
            if (rel[k] && find_named(ps, n, rel[k]) < 0) {
                gw_conf_error(cx, ps[i].path,
                              "plugin \"%s\" wants to run %s \"%s\", which is no plugin", p->name,
                              relname[k], rel[k]);
                rc = -1;
            }
    }
    return rc;
}

/* Where a plugin sorts: its rank, moved to the rank of the plugin it runs before (when lower)
 * or after (when higher), just before or after that one; then as listed. */
typedef struct {
    int rank, side; /* side: -1 just before, +1 just after a plugin of that rank, 0 none */
} place_t;

static void places(const gw_plugin_inst_t *ps, size_t n, place_t *pl)
{
    for (size_t i = 0; i < n; i++) pl[i] = (place_t){rank_of(ps[i].plugin), 0};
    for (size_t round = 0; round < n; round++) /* along chains of after/before */
        for (size_t i = 0; i < n; i++) {
            const gw_plugin_t *p = ps[i].plugin;
            long b = p->before ? find_named(ps, n, p->before) : -1;
            long a = p->after ? find_named(ps, n, p->after) : -1;
            if (b >= 0 && pl[b].rank <= pl[i].rank) pl[i] = (place_t){pl[b].rank, -1};
            if (a >= 0 && pl[a].rank >= pl[i].rank) pl[i] = (place_t){pl[a].rank, +1};
        }
}

static int sorts_first(const place_t *pl, size_t i, long best)
{
    return best < 0 || pl[i].rank < pl[best].rank ||
           (pl[i].rank == pl[best].rank && pl[i].side < pl[best].side);
}

static int placed(const gw_plugin_t *p)
{
    return p->after || p->before;
}

/* A position moves its own plugin only: two plugins that name no position keep the order of
 * their ranks (an external plugin "after quota, before auth_apikey" would put authentication
 * after the quota: refused, at that plugin). */
static int kept_ranks(gw_conf_ctx_t *cx, const gw_plugin_inst_t *out, size_t n)
{
    for (size_t k = 0; k < n; k++)
        for (size_t l = k + 1; l < n; l++) {
            const gw_plugin_t *a = out[k].plugin, *b = out[l].plugin;
            if (placed(a) || placed(b) || rank_of(a) <= rank_of(b)) continue;
            size_t at = 0; /* the plugin whose positions did it: an external one if any */
            for (size_t i = 0; i < n; i++)
                if (placed(out[i].plugin) && (!placed(out[at].plugin) || out[i].entry >= 0)) at = i;
            gw_conf_error(cx, out[at].path,
                          "the positions of plugin \"%s\" (after/before) would run \"%s\" "
                          "after \"%s\", against their ranks",
                          out[at].plugin->name, b->name, a->name);
            return -1;
        }
    return 0;
}

/* ps in chain order into out: by place, each after what must precede it. */
static int order(gw_conf_ctx_t *cx, const gw_plugin_inst_t *ps, size_t n, gw_plugin_inst_t *out)
{
    char *done = gw_conf_alloc(cx, n);
    place_t *pl = gw_conf_alloc(cx, n * sizeof(*pl));
    if (!done || !pl) return -1;
    places(ps, n, pl);
    for (size_t k = 0; k < n; k++) {
        long best = -1;
        for (size_t i = 0; i < n; i++) {
            if (done[i]) continue;
            int ready = 1;
            for (size_t j = 0; j < n && ready; j++)
                if (j != i && !done[j] && must_precede(&ps[j], &ps[i])) ready = 0;
            if (ready && sorts_first(pl, i, best)) best = (long)i;
        }
        if (best < 0) {    /* what is left waits on itself */
            size_t at = n; /* preferably an external plugin: the config can change it */
            for (size_t i = 0; i < n; i++)
                if (!done[i] && (at == n || (ps[at].entry < 0 && ps[i].entry >= 0))) at = i;
            gw_conf_error(cx, ps[at].path,
                          "the positions of plugin \"%s\" (after/before) make a cycle",
                          ps[at].plugin->name);
            return -1;
        }
        done[best] = 1;
        out[k] = ps[best];
    }
    return kept_ranks(cx, out, n);
}

int gw_plugins_open(gw_conf_ctx_t *cx, gw_config_t *c, const gw_conf_obj_t *top,
                    const gw_conf_obj_t *tenant)
{
    loading = NULL;
    const cJSON *entries = cJSON_GetObjectItemCaseSensitive(c->json, "plugins");
    size_t nb = 0, ne = cJSON_IsArray(entries) ? (size_t)cJSON_GetArraySize(entries) : 0;
    while (gw_builtin_plugins[nb]) nb++;
    gw_plugin_inst_t *ps = gw_conf_alloc(cx, (nb + ne) * sizeof(*ps));
    c->known = gw_conf_alloc(cx, (nb + ne) * sizeof(*c->known));
    if (!ps || !c->known) return -1;
    size_t n = 0;
    for (size_t i = 0; i < nb; i++)
        ps[n++] = (gw_plugin_inst_t){gw_builtin_plugins[i], NULL, NULL, "$", -1};
    int rc = 0;
    /* Offline, external plugins are not loaded (gw_config_load_text): their keys are unknown. */
    c->keys_unchecked = (c->flags & GW_CONFIG_OFFLINE) && ne > 0;
    size_t i = 0;
    /* Nothing is loaded from a list the core's loader refuses (too long): no .so runs for it. */
    if (ne > GW_MAX_PLUGINS) c->keys_unchecked = 1, rc = -1;
    for (const cJSON *e = ne && !c->keys_unchecked ? entries->child : NULL; e; e = e->next, i++) {
        const cJSON *file = cJSON_GetObjectItemCaseSensitive(e, "path");
        if (!cJSON_IsString(file) || !*file->valuestring)
            continue; /* the core's loader says what is wrong */
        if (open_external(cx, file->valuestring, i, &ps[n]) == 0) {
            n++;
        } else {
            c->keys_unchecked = 1; /* its keys are not known: none is refused as unknown */
            rc = -1;
        }
    }
    const gw_conf_obj_t *core[2] = {top, tenant};
    if (check_names(cx, ps, n) < 0 || check_claims(cx, ps, n, core) < 0 ||
        order(cx, ps, n, c->known) < 0) {
        rc = -1;
        memcpy(c->known, ps, n * sizeof(*ps)); /* every handle is closed on release */
    }
    c->nknown = n;
    loading = c; /* the core's loader goes on, and reports its own problems too */
    return rc;
}

int gw_plugins_configure(gw_conf_ctx_t *cx, gw_config_t *c)
{
    loading = NULL;
    gw_plugin_entry_t *entries = c->plugin_entries.items;
    c->plugins = gw_conf_alloc(cx, (c->nknown + 1) * sizeof(*c->plugins));
    if (!c->plugins) return -1;
    int rc = 0;
    for (size_t i = 0; i < c->nknown; i++) {
        gw_plugin_inst_t *inst = &c->known[i];
        const gw_plugin_t *p = inst->plugin;
        if (inst->entry < 0) { /* a built-in sees the whole config, and may stay out */
            if (p->configure(cx, c->json, "$", &inst->state) < 0) rc = -1;
            if (inst->state) c->plugins[c->nplugins++] = *inst;
            continue;
        }
        const gw_plugin_entry_t *e = &entries[inst->entry];
        char *cpath = gw_conf_path_key(cx, inst->path, "config");
        if (p->configure && p->configure(cx, e->config, cpath, &inst->state) < 0) {
            rc = -1;
        } else if (!p->configure && e->config) {
            gw_conf_error(cx, cpath, "this plugin takes no config");
            rc = -1;
        }
        c->plugins[c->nplugins++] = *inst; /* an external plugin is always in the chain */
    }
    for (size_t i = 0; i < c->nplugins; i++) c->want_usage |= c->plugins[i].plugin->wants_usage;
    return rc;
}

/* The thread_exit of every plugin that has served since start, once each: a worker calls them
 * all as it stops, also those of plugins a reload has removed since (their thread-local state
 * on the workers outlives their config). Grows by one per plugin build ever served. */
static struct {
    pthread_mutex_t mu;
    void (**fn)(void);
    size_t n, cap;
} exits = {PTHREAD_MUTEX_INITIALIZER, NULL, 0, 0};

static int exit_known(void (*fn)(void))
{
    for (size_t i = 0; i < exits.n; i++)
        if (exits.fn[i] == fn) return 1;
    return 0;
}

static void note_thread_exit(void (*fn)(void))
{
    pthread_mutex_lock(&exits.mu);
    if (!exit_known(fn) && exits.n == exits.cap) {
        size_t cap = exits.cap ? exits.cap * 2 : 8;
        void (**v)(void) = realloc(exits.fn, cap * sizeof(*v));
        if (v) exits.fn = v, exits.cap = cap;
    }
    if (!exit_known(fn) && exits.n < exits.cap) exits.fn[exits.n++] = fn;
    pthread_mutex_unlock(&exits.mu);
}

void gw_plugins_activate(gw_config_t *c)
{
    for (size_t i = 0; i < c->nknown; i++)
        if (c->known[i].plugin->thread_exit) note_thread_exit(c->known[i].plugin->thread_exit);
    for (size_t i = 0; i < c->nplugins; i++) {
        gw_plugin_inst_t *inst = &c->plugins[i];
        if (inst->plugin->activate) inst->plugin->activate(inst->state);
    }
}

void gw_plugins_thread_exit(const gw_config_t *c)
{
    pthread_mutex_lock(&exits.mu);
    size_t n = exits.n;
    void (**fn)(void) = n ? malloc(n * sizeof(*fn)) : NULL;
    if (fn) memcpy(fn, exits.fn, n * sizeof(*fn));
    pthread_mutex_unlock(&exits.mu);
    for (size_t i = 0; i < (fn ? n : 0); i++) fn[i]();
    /* a config never activated (a unit test's): its own plugins */
    for (size_t i = 0; c && i < c->nknown; i++) {
        void (*f)(void) = c->known[i].plugin->thread_exit;
        int done = 0;
        for (size_t k = 0; f && fn && k < n; k++) done |= fn[k] == f;
        if (f && !done) f();
    }
    free(fn);
}

void gw_plugins_release(gw_config_t *c)
{
    if (loading == c) loading = NULL;
    for (size_t i = c->nknown; i-- > 0;) {
        gw_plugin_inst_t *inst = &c->known[i];
        if (inst->plugin && inst->plugin->release && inst->state)
            inst->plugin->release(inst->state);
        inst->state = NULL;
    }
    for (size_t i = c->nknown; i-- > 0;)
        if (c->known[i].dl) dlclose(c->known[i].dl);
    c->nknown = c->nplugins = 0;
}

int gw_header_forwarded(const char *name, size_t len)
{
    int kind = gw_http_header_kind(name, len);
    return kind == GW_H_OTHER || kind == GW_H_CONTENT_TYPE;
}
