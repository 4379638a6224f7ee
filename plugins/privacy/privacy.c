/* Privacy: what a backend learns of the client, and what a client learns of the backend.
 *
 * Always in the chain, with its defaults when the config has no "privacy" key: privacy is
 * a property of the gateway, not an option. The config can only choose among documented
 * behaviours (docs/privacy.md):
 *
 *   "privacy": {
 *     "strip_request_headers": ["x-stainless-*", ...],   added to the default list
 *     "forward_request_headers": ["x-session-id"],      defaults let through, by name
 *     "forward_client_ip": false,
 *     "user_field": "drop",            keep | drop | hash
 *     "user_hash_salt_file": "...",    or "user_hash_salt_env": "NAME"; else a random salt
 *     "hide_response_headers": ["server", "x-powered-by", ...],
 *     "backend_errors": "replace"      replace | pass
 *   }
 *
 * Request headers: every header of the default list (cookie, openai-organization,
 * openai-project, x-session-id) and of strip_request_headers (a trailing '*' matches a
 * prefix) is removed before the request goes upstream, unless forward_request_headers names
 * it; the client-address headers of the common proxies and CDNs (X-Forwarded-For,
 * Forwarded, X-Real-IP, True-Client-IP, CF-Connecting-IP, ... and the location a CDN derives
 * from the address) are removed whatever the lists say: a client can forge them, and they
 * name a person. Every header whose name holds a '_' is dropped (CGI and WSGI servers read
 * X_Real_IP as X-Real-IP). forward_client_ip sets X-Forwarded-For to the address the connection
 * comes from, nothing else. The client's credentials, the client's own request id and any content
 * coding are never forwarded (the core's rules); forward_request_headers cannot name them.
 *
 * The user field (OpenAI's "user" and its successor "safety_identifier"): kept, dropped,
 * or replaced by HMAC-SHA256(salt, tenant "\n" value) in hex, so a backend can still tell
 * one end user from another within a tenant without learning who they are, and the same
 * user in two tenants looks like two.
 *
 * Answers: headers in hide_response_headers are not passed back (the backend's own
 * x-request-id never is: the core sets the gateway's). With backend_errors "replace", a
 * backend's error answer (status >= 400) reaches the client as the gateway's own
 * OpenAI-shaped error: inference servers quote the request in their errors (vLLM names the
 * unknown model, pydantic repeats the offending input). It keeps the backend's Retry-After and
 * Retry-After-Ms on a 429 or 503 when they are digits. In a successful stream, each error event
 * is replaced by the gateway's own (upstream.c).
 */
#include "privacy.h"

#include <ctype.h>
#include <errno.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

#define MIN_SALT 16
#define MAX_SALT 4096
#define MAX_NAMES 256
#define MAX_NAME_LEN 128
#define MAX_RETRY_DIGITS 10

enum { USER_KEEP, USER_DROP, USER_HASH };
enum { SALT_RANDOM, SALT_FILE, SALT_ENV };

typedef struct pattern {
    char *name; /* lowercase, without the '*' */
    size_t len;
    int prefix;
    uint32_t hash; /* of the name (name_hash), for whole names */
} pattern_t;

/* Kept in order of the names' first characters (for the /privacy report); looked up through a
 * hash table of the whole names and a short list of the prefixes, so that a header costs one
 * hash however long the lists are (the address list alone has ~40 names). */
typedef struct plist {
    pattern_t *items;
    size_t n;
    uint16_t *slots; /* open addressing: index + 1 of a whole name in items, 0 empty */
    size_t nslots;   /* a power of two, at least twice the whole names; 0 when none */
    uint16_t *pre;   /* indexes of the prefix patterns */
    size_t npre;
    /* The lowercase first characters of the whole names and of the prefixes: most header names
     * miss both, and are turned away before any hashing or comparing. */
    uint64_t first[4], first_pre[4];
} plist_t;

typedef struct privacy_conf {
    plist_t strip, forward, address, hide;
    int forward_client_ip, user_field, salt_source, replace_errors;
    unsigned char salt[MAX_SALT];
    size_t salt_len;
    /* as written (configure reads them into the above) */
    const cJSON *strip_json, *forward_json, *hide_json;
    char *salt_file, *salt_env;
} privacy_conf_t;

/* x-session-id steers affinity (read from the head before the plugins), and is not the
 * backend's business. */
static const char *const default_strip[] = {"cookie", "openai-organization", "openai-project",
                                            "x-session-id", NULL};
/* Removed whatever the lists say: they carry (or forge) the client's address, or where the
 * address places the client. */
static const char *const address_headers[] = {
    "forwarded",
    "x-forwarded-for",
    "x-forwarded",
    "x-forwarded-*",            /* RFC 7239, de facto */
    "x-original-forwarded-for", /* ingress-nginx */
    "x-real-ip",
    "x-client-ip",
    "client-ip",
    "x-remote-ip",
    "x-remote-addr", /* nginx, generic */
    "x-cluster-client-ip",
    "x-originating-ip",
    "x-proxyuser-ip",    /* Rackspace, Microsoft, Google */
    "cluster-client-ip", /* the same without x- */
    "via",               /* a client-side proxy's Via names the client's network (RFC 9110 7.6.3) */
    "wl-proxy-client-ip",
    "proxy-client-ip", /* WebLogic, Apache plugins */
    "true-client-ip",
    "x-akamai-edgescape", /* Akamai, Cloudflare */
    "cf-connecting-ip",
    "cf-connecting-ipv6",
    "cf-pseudo-ipv4", /* Cloudflare: addresses */
    "cf-ip*",
    "cf-postal-code",
    "cf-region*",
    "cf-metro-code",
    "cf-timezone", /* and location */
    "fastly-client-ip",
    "fastly-geo*",
    "client-geo-*",             /* Fastly (its geo example) */
    "cloudfront-viewer-*",      /* AWS CloudFront */
    "x-envoy-external-address", /* Envoy, Istio */
    "x-azure-clientip",
    "x-azure-socketip", /* Azure Front Door */
    "x-appengine-*",    /* Google App Engine */
    "x-client-geo-location",
    "x-client-region*",
    "x-client-city*", /* Google Cloud LB, CDN */
    "fly-client-ip",  /* Fly.io */
    "x-vercel-forwarded-for",
    "x-vercel-ip-*", /* Vercel */
    "x-nf-client-connection-ip",
    "x-nf-geo",               /* Netlify */
    "do-connecting-ip",       /* DigitalOcean */
    "cdn-requestcountrycode", /* Bunny CDN */
    "visitor-ip-*",
    "pantheon-geo", /* Contentstack, Pantheon */
    "incap-client-ip",
    "x-sucuri-clientip",
    "x-sucuri-country", /* Imperva, Sucuri */
    NULL};
static const char *const default_hide[] = {"server",
                                           "x-powered-by",
                                           "via",
                                           "set-cookie",
                                           "request-id",
                                           "x-amzn-*",
                                           "x-envoy-*",
                                           "x-compute-*",
                                           "x-total-time",
                                           "x-validation-time",
                                           "x-queue-time",
                                           "x-inference-time",
                                           "x-time-per-token",
                                           "x-prompt-tokens",
                                           "x-generated-tokens",
                                           "openai-organization",
                                           "openai-project",
                                           "openai-processing-ms",
                                           "openai-version",
                                           NULL};
static const char *const user_fields[] = {"user", "safety_identifier", NULL};

static const char *const user_names[] = {"keep", "drop", "hash", NULL};
static const char *const backend_errors_names[] = {"pass", "replace", NULL}; /* replace_errors */
static const char *const salt_names[] = {"random", "file", "env"};

/* One salt per process for user_field "hash" without a configured one: stable across
 * reloads, different on every start and on every instance. */
static unsigned char process_salt[32];
static int process_salt_ready;

static void release(void *state)
{
    (void)state; /* in the config's memory; its salt is wiped by wipe_salt */
}

static void wipe_salt(void *state)
{
    privacy_conf_t *c = state;
    explicit_bzero(c->salt, sizeof(c->salt));
}

/* The first pattern whose name begins with ch or a later character (names are tchar). */
static size_t first_at(const plist_t *l, unsigned ch)
{
    size_t lo = 0, hi = l->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if ((unsigned char)l->items[mid].name[0] < ch)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static inline unsigned char lower(unsigned char ch)
{
    return ch >= 'A' && ch <= 'Z' ? (unsigned char)(ch + 32) : ch;
}

/* FNV-1a of the lowercase name. */
static inline uint32_t name_hash(const char *name, size_t len)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++) h = (h ^ lower((unsigned char)name[i])) * 16777619u;
    return h;
}

static int match_hashed(const plist_t *l, const char *name, size_t len, uint32_t h)
{
    if (len == 0) return 0;
    unsigned char ch = lower((unsigned char)name[0]);
    if (l->first[ch >> 6] >> (ch & 63) & 1)
        for (size_t i = h & (l->nslots - 1);; i = (i + 1) & (l->nslots - 1)) {
            unsigned s = l->slots[i];
            if (!s) break;
            const pattern_t *p = &l->items[s - 1];
            if (p->hash == h && p->len == len && strncasecmp(name, p->name, len) == 0) return 1;
        }
    if (!(l->first_pre[ch >> 6] >> (ch & 63) & 1)) return 0;
    for (size_t k = 0; k < l->npre; k++) {
        const pattern_t *p = &l->items[l->pre[k]];
        if ((unsigned char)p->name[0] == ch && len >= p->len &&
            strncasecmp(name, p->name, p->len) == 0)
            return 1;
    }
    return 0;
}

static int match(const plist_t *l, const char *name, size_t len)
{
    return match_hashed(l, name, len, name_hash(name, len));
}

/* Builds the lookup of l once its items are in. */
static int plist_index(gw_conf_ctx_t *cx, plist_t *l)
{
    size_t whole = 0, npre = 0;
    for (size_t i = 0; i < l->n; i++) whole += !l->items[i].prefix;
    size_t nslots = whole ? 4 : 0;
    while (nslots && nslots < 2 * whole) nslots *= 2;
    uint16_t *slots = nslots ? gw_conf_alloc(cx, nslots * sizeof(*slots)) : NULL;
    uint16_t *pre = l->n - whole ? gw_conf_alloc(cx, (l->n - whole) * sizeof(*pre)) : NULL;
    if ((nslots && !slots) || (l->n - whole && !pre)) return -1;
    memset(l->first, 0, sizeof(l->first));
    memset(l->first_pre, 0, sizeof(l->first_pre));
    for (size_t i = 0; i < l->n; i++) {
        pattern_t *p = &l->items[i];
        unsigned char ch = (unsigned char)p->name[0];
        (p->prefix ? l->first_pre : l->first)[ch >> 6] |= 1ull << (ch & 63);
        if (p->prefix) {
            pre[npre++] = (uint16_t)i;
            continue;
        }
        size_t at = p->hash & (nslots - 1);
        while (slots[at]) at = (at + 1) & (nslots - 1);
        slots[at] = (uint16_t)(i + 1);
    }
    l->slots = slots;
    l->nslots = nslots;
    l->pre = pre;
    l->npre = npre;
    return 0;
}

/* A header name pattern: token characters, optionally ending with '*'. */
static int valid_pattern(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > MAX_NAME_LEN) return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '*' && i == n - 1 && n > 1) continue;
        if (!(isalnum(ch) || strchr("!#$%&'+-.^_`|~", ch))) return 0;
    }
    return 1;
}

/* Adds a pattern (not already there) to l, whose items have room for it. */
static int plist_add(gw_conf_ctx_t *cx, plist_t *l, const char *s)
{
    size_t n = strlen(s);
    int prefix = n && s[n - 1] == '*';
    if (prefix) n--;
    for (size_t i = 0; i < l->n; i++)
        if (l->items[i].len == n && l->items[i].prefix == prefix &&
            strncasecmp(l->items[i].name, s, n) == 0)
            return 0;
    char *name = gw_conf_alloc(cx, n + 1);
    if (!name) return -1;
    for (size_t i = 0; i < n; i++) name[i] = (char)tolower((unsigned char)s[i]);
    size_t at = first_at(l, (unsigned char)name[0] + 1u); /* after its letter's others */
    memmove(&l->items[at + 1], &l->items[at], (l->n - at) * sizeof(*l->items));
    l->items[at] = (pattern_t){name, n, prefix, name_hash(name, n)};
    l->n++;
    return 0;
}

/* Does the core forward a client's header of this name (not framing, hop-by-hop,
 * credentials, the request ids or the codings)? */
static int core_forwards(const char *name, size_t len)
{
    return gw_header_forwarded(name, len);
}

/* Why a header name from the config cannot be in the list (NULL: it can). With `never`, a
 * list of names one by one (no prefix), none matched by never. */
static const char *list_refuses(const cJSON *e, const plist_t *never)
{
    if (!cJSON_IsString(e) || !valid_pattern(e->valuestring))
        return "must be a header name (a trailing * matches a prefix)";
    const char *s = e->valuestring;
    size_t n = strlen(s);
    if (!never) return NULL;
    if (s[n - 1] == '*') return "must be one header name, not a prefix";
    if (match(never, s, n))
        return "is a client-address header: never forwarded (see forward_client_ip)";
    if (strchr(s, '_')) return "is never forwarded: a name with '_' is always dropped";
    if (!core_forwards(s, n))
        return "is never forwarded: the gateway writes it itself, or drops it";
    return NULL;
}

/* A list of header name patterns from the config (a, at path; NULL when absent): it replaces
 * `defaults` (`add` 0), or adds to them (`add` 1). */
static int load_list(gw_conf_ctx_t *cx, const cJSON *a, const char *path,
                     const char *const *defaults, int add, const plist_t *never, plist_t *l)
{
    if (a && (!cJSON_IsArray(a) || cJSON_GetArraySize(a) > MAX_NAMES)) {
        gw_conf_error(cx, path, "must be an array of at most %d header names", MAX_NAMES);
        return -1;
    }
    size_t room = a ? (size_t)cJSON_GetArraySize(a) : 0;
    for (size_t i = 0; defaults && defaults[i]; i++) room++;
    if (!(l->items = gw_conf_alloc(cx, room * sizeof(*l->items)))) return -1;
    for (size_t i = 0; (!a || add) && defaults && defaults[i]; i++)
        if (plist_add(cx, l, defaults[i]) < 0) return -1;
    int rc = 0;
    size_t i = 0;
    for (const cJSON *e = a ? a->child : NULL; e; e = e->next, i++) {
        const char *why = list_refuses(e, never);
        if (why) {
            gw_conf_error(cx, gw_conf_path_index(cx, path, i), "%s", why);
            rc = -1;
        } else if (plist_add(cx, l, e->valuestring) < 0) {
            return -1;
        }
    }
    return plist_index(cx, l) < 0 ? -1 : rc;
}

/* The header lists: strip_request_headers adds to its defaults, hide_response_headers replaces
 * them, forward_request_headers names headers the address list and the core do not forbid. */
static int load_lists(gw_conf_ctx_t *cx, privacy_conf_t *c, const char *path)
{
    if (load_list(cx, NULL, path, address_headers, 1, NULL, &c->address) < 0) return -1;
    int rc = load_list(cx, c->strip_json, gw_conf_path_key(cx, path, "strip_request_headers"),
                       default_strip, 1, NULL, &c->strip);
    if (load_list(cx, c->forward_json, gw_conf_path_key(cx, path, "forward_request_headers"), NULL,
                  0, &c->address, &c->forward) < 0)
        rc = -1;
    if (load_list(cx, c->hide_json, gw_conf_path_key(cx, path, "hide_response_headers"),
                  default_hide, 0, NULL, &c->hide) < 0)
        rc = -1;
    return rc;
}

static int load_salt_bytes(gw_conf_ctx_t *cx, privacy_conf_t *c, const char *path,
                           const unsigned char *s, size_t n)
{
    while (n && isspace(s[n - 1])) n--;
    if (n < MIN_SALT || n > MAX_SALT) {
        gw_conf_error(cx, path, "the salt must have between %d and %d bytes", MIN_SALT, MAX_SALT);
        return -1;
    }
    memcpy(c->salt, s, n);
    c->salt_len = n;
    return 0;
}

static int load_salt_file(gw_conf_ctx_t *cx, privacy_conf_t *c, const char *path)
{
    const char *p = gw_conf_path_key(cx, path, "user_hash_salt_file");
    FILE *f = fopen(c->salt_file, "rb");
    if (!f) {
        gw_conf_error(cx, p, "cannot read the salt file: %s", strerror(errno));
        return -1;
    }
    unsigned char buf[MAX_SALT + 1];
    size_t n = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    int rc = load_salt_bytes(cx, c, p, buf, n);
    explicit_bzero(buf, sizeof(buf));
    c->salt_source = SALT_FILE;
    return rc;
}

/* The salt of user_field "hash": from a file, an environment variable, or the process's. */
static int load_salt(gw_conf_ctx_t *cx, privacy_conf_t *c, const char *path)
{
    if (c->salt_file && c->salt_env) {
        gw_conf_error(cx, path, "user_hash_salt_file and user_hash_salt_env exclude each other");
        return -1;
    }
    if (c->salt_file) return load_salt_file(cx, c, path);
    if (c->salt_env) {
        const char *p = gw_conf_path_key(cx, path, "user_hash_salt_env");
        const char *v = getenv(c->salt_env);
        if (!v) {
            gw_conf_error(cx, p, "the environment variable is not set");
            return -1;
        }
        c->salt_source = SALT_ENV;
        return load_salt_bytes(cx, c, p, (const unsigned char *)v, strlen(v));
    }
    if (!process_salt_ready) {
        if (getrandom(process_salt, sizeof(process_salt), 0) != (ssize_t)sizeof(process_salt)) {
            gw_conf_error(cx, path, "cannot get random bytes for the user hash salt");
            return -1;
        }
        process_salt_ready = 1;
    }
    memcpy(c->salt, process_salt, sizeof(process_salt));
    c->salt_len = sizeof(process_salt);
    c->salt_source = SALT_RANDOM;
    return 0;
}

/* "privacy": the lists as JSON (load_lists reads them), the rest into the privacy_conf_t. */
static const gw_conf_key_t privacy_keys[] = {
    {"strip_request_headers", GW_CT_JSON, offsetof(privacy_conf_t, strip_json)},
    {"forward_request_headers", GW_CT_JSON, offsetof(privacy_conf_t, forward_json)},
    {"forward_client_ip", GW_CT_BOOL, offsetof(privacy_conf_t, forward_client_ip)},
    {"user_field", GW_CT_ENUM, offsetof(privacy_conf_t, user_field), .names = user_names},
    {"user_hash_salt_file", GW_CT_STR, offsetof(privacy_conf_t, salt_file)},
    {"user_hash_salt_env", GW_CT_STR, offsetof(privacy_conf_t, salt_env)},
    {"hide_response_headers", GW_CT_JSON, offsetof(privacy_conf_t, hide_json)},
    {"backend_errors", GW_CT_ENUM, offsetof(privacy_conf_t, replace_errors),
     .names = backend_errors_names},
    {NULL},
};
static const gw_conf_obj_t privacy_obj = {0, privacy_keys, NULL, NULL};
static const gw_conf_key_t top_conf_keys[] = {
    {"privacy", GW_CT_OBJ, 0, .obj = &privacy_obj},
    {NULL},
};
static const gw_conf_obj_t top_obj = {sizeof(privacy_conf_t), top_conf_keys, NULL, NULL};

static int configure(gw_conf_ctx_t *cx, const cJSON *root, const char *rootpath, void **state)
{
    privacy_conf_t *c = gw_conf_alloc(cx, sizeof(*c));
    if (!c || gw_conf_on_release(cx, wipe_salt, c) < 0) return -1;
    c->user_field = USER_DROP;
    c->replace_errors = 1;
    int rc = gw_conf_load_some(cx, root, "$", &top_obj, c);
    if (load_lists(cx, c, "$.privacy") < 0 || load_salt(cx, c, "$.privacy") < 0) rc = -1;
    if (rc < 0) return -1;
    *state = c;
    return 0;
}

/* A header name as a NUL-terminated string in the request's memory. */
static char *name_copy(gw_req_t *r, const char *name, size_t len)
{
    char *s = gw_req_alloc(r, len + 1);
    if (s) {
        memcpy(s, name, len);
        s[len] = '\0';
    }
    return s;
}

static int on_request_headers(gw_req_t *r, void *conf, void **ctx)
{
    privacy_conf_t *c = conf;
    size_t n = gw_req_header_count(r);
    for (size_t i = 0; i < n; i++) {
        size_t len;
        const char *name = gw_req_header_at(r, i, &len, NULL, NULL);
        if (!name) continue;
        uint32_t h = name_hash(name, len); /* once for the three lists */
        /* A '_' in a name: dropped, as nginx does (underscores_in_headers off). CGI and WSGI
         * servers read X_Real_IP as X-Real-IP (HTTP_X_REAL_IP): no list can hold every
         * spelling, and no OpenAI-compatible API takes such a header. */
        if (!(memchr(name, '_', len) || match_hashed(&c->address, name, len, h) ||
              (match_hashed(&c->strip, name, len, h) && !match_hashed(&c->forward, name, len, h))))
            continue;
        char *s = name_copy(r, name, len);
        if (!s || gw_req_set_upstream_header(r, s, NULL) < 0) return GW_ERROR;
    }
    if (c->forward_client_ip) {
        char addr[64];
        if (gw_req_client_address(r, addr, sizeof(addr)) == 0 &&
            gw_req_set_upstream_header(r, "x-forwarded-for", addr) < 0)
            return GW_ERROR;
    }
    return GW_CONTINUE;
}

int gw_privacy_hash_user(const void *state, const char *tenant, const char *user, char out[65])
{
    static const char hex[] = "0123456789abcdef";
    const privacy_conf_t *c = state;
    size_t tl = strlen(tenant), ul = strlen(user);
    unsigned char *msg = malloc(tl + 1 + ul), mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    if (!msg) return -1;
    memcpy(msg, tenant, tl);
    msg[tl] = '\n';
    memcpy(msg + tl + 1, user, ul);
    unsigned char *ok =
        HMAC(EVP_sha256(), c->salt, (int)c->salt_len, msg, tl + 1 + ul, mac, &maclen);
    explicit_bzero(msg, tl + 1 + ul);
    free(msg);
    if (!ok || maclen != 32) return -1;
    for (unsigned i = 0; i < 32; i++) {
        out[2 * i] = hex[mac[i] >> 4];
        out[2 * i + 1] = hex[mac[i] & 15];
    }
    out[64] = '\0';
    explicit_bzero(mac, sizeof(mac));
    return 0;
}

int gw_privacy_user_field(const void *state, const char *tenant, cJSON *json)
{
    const privacy_conf_t *c = state;
    if (c->user_field == USER_KEEP) return 0;
    int changed = 0;
    for (const char *const *f = user_fields; *f && json; f++) {
        cJSON *u = cJSON_GetObjectItemCaseSensitive(json, *f);
        if (!u) continue;
        changed = 1;
        if (c->user_field == USER_DROP || !cJSON_IsString(u)) {
            cJSON_DeleteItemFromObjectCaseSensitive(json, *f);
            continue;
        }
        char hexmac[65];
        if (gw_privacy_hash_user(c, tenant ? tenant : "", u->valuestring, hexmac) < 0) return -1;
        cJSON *h = cJSON_CreateString(hexmac);
        if (!h || !cJSON_ReplaceItemInObjectCaseSensitive(json, *f, h)) {
            cJSON_Delete(h);
            return -1;
        }
    }
    return changed;
}

static int on_request_body(gw_req_t *r, void *conf, void **ctx)
{
    cJSON *json = (cJSON *)gw_req_json(r); /* changed in place, then handed back */
    int changed = gw_privacy_user_field(conf, gw_req_tenant(r), json);
    if (changed < 0) return GW_ERROR;
    if (changed && gw_req_replace_json(r, json) < 0) return GW_ERROR;
    return GW_CONTINUE;
}

/* A Retry-After or Retry-After-Ms value the gateway repeats: 1 to MAX_RETRY_DIGITS digits (the
 * delay-seconds form; an HTTP-date is not repeated). */
static int retry_value(const char *v, size_t n)
{
    if (n == 0 || n > MAX_RETRY_DIGITS) return 0;
    for (size_t i = 0; i < n; i++)
        if (v[i] < '0' || v[i] > '9') return 0;
    return 1;
}

static int on_response_headers(gw_req_t *r, void *conf, void **ctx)
{
    privacy_conf_t *c = conf;
    size_t n = gw_req_response_header_count(r);
    int status = gw_req_status(r);
    int error = c->replace_errors && status >= 400;
    int retry = error && (status == 429 || status == 503); /* the statuses that advise it */
    for (size_t i = 0; i < n; i++) {
        size_t len, vlen;
        const char *value;
        const char *name = gw_req_response_header_at(r, i, &len, &value, &vlen);
        if (!name) continue;
        if (match(&c->hide, name, len)) {
            char *s = name_copy(r, name, len);
            if (!s || gw_req_add_response_header(r, s, NULL) < 0) return GW_ERROR;
        } else if (retry && retry_value(value, vlen) &&
                   ((len == 11 && strncasecmp(name, "retry-after", 11) == 0) ||
                    (len == 14 && strncasecmp(name, "retry-after-ms", 14) == 0))) {
            /* The gateway's own error keeps the backend's advice on when to retry: a number,
             * never the backend's text. */
            char v[MAX_RETRY_DIGITS + 1];
            memcpy(v, value, vlen);
            v[vlen] = '\0';
            char *s = name_copy(r, name, len);
            if (!s || gw_req_add_response_header(r, s, v) < 0) return GW_ERROR;
        }
    }
    /* Also for a successful stream: its error events are replaced by the gateway's own. */
    if (c->replace_errors) gw_req_own_error_body(r);
    return GW_CONTINUE;
}

static cJSON *list_json(const plist_t *l, const plist_t *more)
{
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; a && i < l->n; i++) {
        char buf[MAX_NAME_LEN + 2];
        snprintf(buf, sizeof(buf), "%s%s", l->items[i].name, l->items[i].prefix ? "*" : "");
        cJSON_AddItemToArray(a, cJSON_CreateString(buf));
    }
    if (a && more) {
        cJSON *b = list_json(more, NULL);
        for (cJSON *e = b ? b->child : NULL; e; e = b->child)
            cJSON_AddItemToArray(a, cJSON_DetachItemViaPointer(b, e));
        cJSON_Delete(b);
    }
    return a;
}

static cJSON *privacy_report(const void *state)
{
    const privacy_conf_t *c = state;
    cJSON *o = cJSON_CreateObject();
    if (!o || !c) return o;
    /* everything removed: the lists, then the client-address headers */
    cJSON_AddItemToObject(o, "strip_request_headers", list_json(&c->strip, &c->address));
    cJSON_AddItemToObject(o, "forward_request_headers", list_json(&c->forward, NULL));
    cJSON_AddBoolToObject(o, "forward_client_ip", c->forward_client_ip);
    cJSON_AddStringToObject(o, "user_field", user_names[c->user_field]);
    cJSON *uf = cJSON_AddArrayToObject(o, "user_field_names");
    for (const char *const *f = user_fields; uf && *f; f++)
        cJSON_AddItemToArray(uf, cJSON_CreateString(*f));
    if (c->user_field == USER_HASH) {
        cJSON_AddStringToObject(o, "user_hash", "hmac-sha256(salt, tenant \"\\n\" user), hex");
        cJSON_AddStringToObject(o, "user_hash_salt", salt_names[c->salt_source]);
    }
    cJSON_AddItemToObject(o, "hide_response_headers", list_json(&c->hide, NULL));
    cJSON_AddStringToObject(o, "backend_errors", c->replace_errors ? "replace" : "pass");
    return o;
}

/* GET /privacy: the effective settings (the salt itself never: only where it comes from). */
static int admin_report(void *state, const char *page, const char *query, cJSON *out,
                        gw_admin_err_t *err)
{
    (void)query;
    (void)err;
    if (strcmp(page, "privacy") != 0) return 0;
    cJSON *p = privacy_report(state);
    if (!p) return 0;
    cJSON_AddBoolToObject(p, "enabled", state != NULL);
    /* what the core really forwards: neither credential header ever goes upstream */
    cJSON_AddBoolToObject(p, "client_credentials_forwarded",
                          gw_header_forwarded("authorization", 13) ||
                              gw_header_forwarded("api-key", 7));
    cJSON_AddItemToObject(out, "privacy", p);
    return 0;
}

static const char *const config_keys[] = {"privacy", NULL};

const gw_plugin_t gw_plugin_privacy = {
    .name = "privacy",
    .abi = GW_PLUGIN_ABI,
    .config_keys = config_keys,
    .rank = GW_RANK_PRIVACY,
    .configure = configure,
    .release = release,
    .request_headers = on_request_headers,
    .request_body = on_request_body,
    .upstream_select = NULL,
    .response_headers = on_response_headers,
    .response_event = NULL,
    .log = NULL,
    .admin_report = admin_report,
};
