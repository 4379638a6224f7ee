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

static const char *const user_names[] = {"keep", "drop", "hash"};
static const char *const salt_names[] = {"random", "file", "env"};

/* One salt per process for user_field "hash" without a configured one: stable across
 * reloads, different on every start and on every instance. */
static unsigned char process_salt[32];
static int process_salt_ready;

static void plist_free(plist_t *l)
{
    for (size_t i = 0; i < l->n; i++) free(l->items[i].name);
    free(l->items);
    free(l->slots);
    free(l->pre);
    *l = (plist_t){0};
}

static void release(void *state)
{
    privacy_conf_t *c = state;
    if (!c) return;
    plist_free(&c->strip);
    plist_free(&c->forward);
    plist_free(&c->address);
    plist_free(&c->hide);
    explicit_bzero(c->salt, sizeof(c->salt));
    free(c);
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

/* Rebuilds the lookup of l after a change of its items. */
static int plist_index(plist_t *l)
{
    size_t whole = 0, npre = 0;
    for (size_t i = 0; i < l->n; i++) whole += !l->items[i].prefix;
    size_t nslots = whole ? 4 : 0;
    while (nslots && nslots < 2 * whole) nslots *= 2;
    uint16_t *slots = nslots ? calloc(nslots, sizeof(*slots)) : NULL;
    uint16_t *pre = l->n - whole ? malloc((l->n - whole) * sizeof(*pre)) : NULL;
    if ((nslots && !slots) || (l->n - whole && !pre)) {
        free(slots);
        free(pre);
        return -1;
    }
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
    free(l->slots);
    free(l->pre);
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

static int plist_add(plist_t *l, const char *s)
{
    size_t n = strlen(s);
    int prefix = n && s[n - 1] == '*';
    if (prefix) n--;
    for (size_t i = 0; i < l->n; i++)
        if (l->items[i].len == n && l->items[i].prefix == prefix &&
            strncasecmp(l->items[i].name, s, n) == 0)
            return 0;
    pattern_t *items = realloc(l->items, (l->n + 1) * sizeof(*items));
    if (!items) return -1;
    l->items = items;
    char *name = malloc(n + 1);
    if (!name) return -1;
    for (size_t i = 0; i < n; i++) name[i] = (char)tolower((unsigned char)s[i]);
    name[n] = '\0';
    size_t at = first_at(l, (unsigned char)name[0] + 1u); /* after its letter's others */
    memmove(&l->items[at + 1], &l->items[at], (l->n - at) * sizeof(*items));
    l->items[at] = (pattern_t){name, n, prefix, name_hash(name, n)};
    l->n++;
    return plist_index(l);
}

static int plist_add_all(plist_t *l, const char *const *names)
{
    for (; *names; names++)
        if (plist_add(l, *names) < 0) return -1;
    return 0;
}

/* Does the core forward a client's header of this name (not framing, hop-by-hop,
 * credentials, the request ids or the codings)? */
static int core_forwards(const char *name, size_t len)
{
    return gw_header_forwarded(name, len);
}

/* A list of header name patterns from the config: it replaces `defaults` (`add` 0), or adds to
 * them (`add` 1). With `never`, a list of names one by one (no prefix), none matched by never. */
static int load_list(gw_conf_ctx_t *cx, const cJSON *o, const char *key, const char *path,
                     const char *const *defaults, int add, const plist_t *never, plist_t *l)
{
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, key);
    char p[160];
    snprintf(p, sizeof(p), "%s.%s", path, key);
    if ((!a || add) && defaults && plist_add_all(l, defaults) < 0) return -1;
    if (!a) return 0;
    if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) > MAX_NAMES) {
        gw_conf_error(cx, p, "must be an array of at most %d header names", MAX_NAMES);
        return -1;
    }
    int rc = 0, i = 0;
    for (const cJSON *e = a->child; e; e = e->next, i++) {
        char ep[180];
        snprintf(ep, sizeof(ep), "%s[%d]", p, i);
        size_t n = cJSON_IsString(e) ? strlen(e->valuestring) : 0;
        if (!cJSON_IsString(e) || !valid_pattern(e->valuestring)) {
            gw_conf_error(cx, ep, "must be a header name (a trailing * matches a prefix)");
            rc = -1;
        } else if (never && e->valuestring[n - 1] == '*') {
            gw_conf_error(cx, ep, "must be one header name, not a prefix");
            rc = -1;
        } else if (never && match(never, e->valuestring, n)) {
            gw_conf_error(cx, ep,
                          "is a client-address header: never forwarded (see forward_client_ip)");
            rc = -1;
        } else if (never && strchr(e->valuestring, '_')) {
            gw_conf_error(cx, ep, "is never forwarded: a name with '_' is always dropped");
            rc = -1;
        } else if (never && !core_forwards(e->valuestring, n)) {
            gw_conf_error(cx, ep, "is never forwarded: the gateway writes it itself, or drops it");
            rc = -1;
        } else if (plist_add(l, e->valuestring) < 0) {
            return -1;
        }
    }
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

static int load_salt(gw_conf_ctx_t *cx, const cJSON *o, const char *path, privacy_conf_t *c)
{
    const cJSON *file = cJSON_GetObjectItemCaseSensitive(o, "user_hash_salt_file");
    const cJSON *env = cJSON_GetObjectItemCaseSensitive(o, "user_hash_salt_env");
    char p[160];
    if (file && env) {
        gw_conf_error(cx, path, "user_hash_salt_file and user_hash_salt_env exclude each other");
        return -1;
    }
    if (file) {
        snprintf(p, sizeof(p), "%s.user_hash_salt_file", path);
        if (!cJSON_IsString(file) || !file->valuestring[0]) {
            gw_conf_error(cx, p, "must be a file name");
            return -1;
        }
        FILE *f = fopen(file->valuestring, "rb");
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
    if (env) {
        snprintf(p, sizeof(p), "%s.user_hash_salt_env", path);
        if (!cJSON_IsString(env) || !env->valuestring[0]) {
            gw_conf_error(cx, p, "must be the name of an environment variable");
            return -1;
        }
        const char *v = getenv(env->valuestring);
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

static int configure(gw_conf_ctx_t *cx, const cJSON *root, const char *rootpath, void **state)
{
    static const char *const keys[] = {"strip_request_headers",
                                       "forward_request_headers",
                                       "forward_client_ip",
                                       "user_field",
                                       "user_hash_salt_file",
                                       "user_hash_salt_env",
                                       "hide_response_headers",
                                       "backend_errors",
                                       NULL};
    const char *path = "$.privacy";
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(root, "privacy");
    int rc = 0;
    if (o && !cJSON_IsObject(o)) {
        gw_conf_error(cx, path, "must be an object");
        return -1;
    }
    for (const cJSON *k = o ? o->child : NULL; k; k = k->next) {
        size_t i = 0;
        while (keys[i] && strcmp(keys[i], k->string) != 0) i++;
        if (!keys[i]) {
            char p[160];
            snprintf(p, sizeof(p), "%s.%.100s", path, k->string);
            gw_conf_error(cx, p, "unknown key");
            rc = -1;
        }
    }
    privacy_conf_t *c = calloc(1, sizeof(*c));
    if (!c) return -1;
    c->user_field = USER_DROP;
    c->replace_errors = 1;
    if (load_list(cx, o, "strip_request_headers", path, default_strip, 1, NULL, &c->strip) < 0)
        rc = -1;
    if (plist_add_all(&c->address, address_headers) < 0) rc = -1;
    if (load_list(cx, o, "forward_request_headers", path, NULL, 0, &c->address, &c->forward) < 0)
        rc = -1;
    if (load_list(cx, o, "hide_response_headers", path, default_hide, 0, NULL, &c->hide) < 0)
        rc = -1;
    const cJSON *fwd = cJSON_GetObjectItemCaseSensitive(o, "forward_client_ip");
    if (fwd && !cJSON_IsBool(fwd)) {
        gw_conf_error(cx, "$.privacy.forward_client_ip", "must be true or false");
        rc = -1;
    }
    c->forward_client_ip = cJSON_IsTrue(fwd);
    const cJSON *uf = cJSON_GetObjectItemCaseSensitive(o, "user_field");
    if (uf) {
        int m = -1;
        for (int i = 0; i < 3 && cJSON_IsString(uf); i++)
            if (strcmp(uf->valuestring, user_names[i]) == 0) m = i;
        if (m < 0) {
            gw_conf_error(cx, "$.privacy.user_field", "must be keep, drop or hash");
            rc = -1;
        } else {
            c->user_field = m;
        }
    }
    const cJSON *be = cJSON_GetObjectItemCaseSensitive(o, "backend_errors");
    if (be) {
        if (cJSON_IsString(be) && strcmp(be->valuestring, "replace") == 0)
            c->replace_errors = 1;
        else if (cJSON_IsString(be) && strcmp(be->valuestring, "pass") == 0)
            c->replace_errors = 0;
        else {
            gw_conf_error(cx, "$.privacy.backend_errors", "must be replace or pass");
            rc = -1;
        }
    }
    if (load_salt(cx, o, path, c) < 0) rc = -1;
    if (rc < 0) {
        release(c);
        return -1;
    }
    (void)rootpath;
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
