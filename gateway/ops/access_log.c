/* The access log: one JSON line of metadata per request, written by its own thread.
 *
 * Workers never wait for the disk. Each thread that logs owns a ring of RING_BYTES: it
 * formats a line on its stack, copies it into its ring and publishes it with one release
 * store (single producer, single consumer, no lock). The writer thread wakes every
 * FLUSH_MS, or at once when a ring passes half full, and writes every ring's published
 * bytes with write(2). A line that does not fit (the disk is slower than the traffic for
 * longer than a ring lasts) is dropped and counted, never waited for.
 *
 * The file is opened on the main thread (so that an error is reported where the config is)
 * and handed to the writer through `pending`; only the writer writes to or closes the file
 * in use. SIGUSR1 opens the same path again, for log rotation.
 *
 * What a line holds is fixed here and nothing else: ids, names from the config, numbers.
 * A model name that the config does not know is request content and is logged as
 * GW_ACCESS_LOG_UNKNOWN_MODEL. */
#include "ops/access_log.h"

#include "base/clock.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config/config.h"
#include "base/log.h"
#include "proxy/request.h"

#define RING_BYTES (2u << 20)
#define FLUSH_MS 100
#define MAX_LINE 8192
#define PENDING_NONE (-1)
#define PENDING_CLOSE (-2)

typedef struct ring {
    struct ring *next;
    _Atomic uint64_t head; /* bytes published by the owning thread */
    _Atomic uint64_t tail; /* bytes taken by the writer */
    char buf[RING_BYTES];
} ring_t;

static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    pthread_t thread;
    int started, stop;       /* under lock */
    atomic_int running;      /* lines are accepted */
    atomic_int pending;      /* a file for the writer to take, or PENDING_* */
    _Atomic(ring_t *) rings; /* every thread's ring, pushed at the front, never removed */
    atomic_uint_fast64_t dropped;
    char *path; /* main thread only */
} L = {
    .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER, .pending = PENDING_NONE};

static _Thread_local ring_t *my_ring;

/* ---- formatting ---- */

typedef struct out {
    char *p, *end;
    int overflow;
} out_t;

static void put(out_t *o, const char *s, size_t n)
{
    if (o->overflow || (size_t)(o->end - o->p) < n) {
        o->overflow = 1;
        return;
    }
    memcpy(o->p, s, n);
    o->p += n;
}

#define PUT_LIT(o, s) put(o, s, sizeof(s) - 1)

/* The fields of a line, in order: the writer's and GET /privacy's one list, written once. */
#define FIELDS(X)                                                                                  \
    X(TS, "ts")                                                                                    \
    X(REQUEST_ID, "request_id")                                                                    \
    X(CLIENT_REQUEST_ID, "client_request_id")                                                      \
    X(TENANT, "tenant")                                                                            \
    X(MODEL, "model")                                                                              \
    X(POOL, "pool")                                                                                \
    X(BACKEND, "backend")                                                                          \
    X(STATUS, "status")                                                                            \
    X(CODE, "code")                                                                                \
    X(PROMPT_TOKENS, "prompt_tokens")                                                              \
    X(COMPLETION_TOKENS, "completion_tokens")                                                      \
    X(TOKENS_ESTIMATED, "tokens_estimated")                                                        \
    X(TTFT_MS, "ttft_ms")                                                                          \
    X(DURATION_MS, "duration_ms")                                                                  \
    X(BYTES_IN, "bytes_in")                                                                        \
    X(BYTES_OUT, "bytes_out")

#define AS_NAME(id, name) name,
const char *const gw_access_log_fields[] = {FIELDS(AS_NAME) NULL};
#define AS_ENUM(id, name) F_##id,
enum { FIELDS(AS_ENUM) F_COUNT };
/* Each key as it is written, ,"name": with its length known at build time (a line is written
 * per request: no strlen). */
#define AS_KEY(id, name) {",\"" name "\":", sizeof(",\"" name "\":") - 1},
static const struct {
    const char *text;
    size_t len;
} keys[F_COUNT] = {FIELDS(AS_KEY)};

/* ,"name": (the first field without the comma) */
static void put_key(out_t *o, int field)
{
    if (field)
        put(o, keys[field].text, keys[field].len);
    else
        put(o, keys[field].text + 1, keys[field].len - 1);
}

static void put_u64(out_t *o, uint64_t v)
{
    char tmp[24];
    char *e = gw_put_u64(tmp, v);
    put(o, tmp, (size_t)(e - tmp));
}

/* Microseconds as milliseconds with three decimals: 12.345. */
static void put_ms(out_t *o, uint64_t us)
{
    put_u64(o, us / 1000);
    char frac[4] = {'.', (char)('0' + us / 100 % 10), (char)('0' + us / 10 % 10),
                    (char)('0' + us % 10)};
    put(o, frac, 4);
}

/* A JSON string, or null. */
static void put_str(out_t *o, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    if (!s) {
        PUT_LIT(o, "null");
        return;
    }
    put(o, "\"", 1);
    const char *run = s;
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch >= 0x20 && ch != '"' && ch != '\\') continue;
        put(o, run, (size_t)(s - run));
        char esc[6] = {'\\', 'u', '0', '0', hex[ch >> 4], hex[ch & 15]};
        if (ch == '"' || ch == '\\') {
            esc[1] = (char)ch;
            put(o, esc, 2);
        } else {
            put(o, esc, 6);
        }
        run = s + 1;
    }
    put(o, run, (size_t)(s - run));
    put(o, "\"", 1);
}

/* "2024-05-01T12:00:00.123Z", the second part cached per thread. */
static void put_ts(out_t *o)
{
    static _Thread_local time_t cached_sec = -1;
    static _Thread_local char cached[24];
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    if (now.tv_sec != cached_sec) {
        struct tm tm;
        gmtime_r(&now.tv_sec, &tm);
        if (strftime(cached, sizeof(cached), "%Y-%m-%dT%H:%M:%S", &tm) != 19) cached[0] = '\0';
        cached_sec = now.tv_sec;
    }
    long ms = now.tv_nsec / 1000000;
    char frac[6] = {
        '.', (char)('0' + ms / 100), (char)('0' + ms / 10 % 10), (char)('0' + ms % 10), 'Z', '"'};
    put(o, "\"", 1);
    put(o, cached, strlen(cached));
    put(o, frac, 6);
}

/* The model, if the config knows it; a placeholder if the request named another one. */
static const char *model_of(const gw_req_t *r)
{
    if (r->pool && r->model) return r->model; /* routed: a name from the config */
    const cJSON *m = r->json ? cJSON_GetObjectItemCaseSensitive(r->json, "model") : NULL;
    if (!cJSON_IsString(m) || !m->valuestring[0]) return NULL;
    return gw_config_pool_for_model(r->cfg, m->valuestring) ? m->valuestring
                                                            : GW_ACCESS_LOG_UNKNOWN_MODEL;
}

size_t gw_access_log_format(const gw_req_t *r, char *buf, size_t cap)
{
    out_t o = {buf, buf + cap, 0};
    uint64_t now = gw_now_us();
    int status = r->status;
    const char *code = r->code;
    if (r->aborted) {
        if (!status) status = 499; /* nginx's "client closed request" */
        if (!code) code = "client_closed";
    }
    int64_t pt = 0, ct = 0;
    int estimated = 0;
    if (r->usage_known && gw_req_served(r)) {
        pt = r->usage_prompt;
        ct = r->usage_completion;
    } else if (r->backend && gw_req_served(r)) {
        /* Served by a backend that gave no usage: the estimate of what was observed (the
         * prompt's bytes / 4, one token per event relayed). Not served: 0, as quota charges. */
        estimated = 1;
        pt = (int64_t)(gw_req_body_length(r) / 4);
        ct = (int64_t)r->events_relayed;
    }
    PUT_LIT(&o, "{");
    put_key(&o, F_TS);
    put_ts(&o);
    put_key(&o, F_REQUEST_ID);
    put_str(&o, r->id);
    put_key(&o, F_CLIENT_REQUEST_ID);
    put_str(&o, r->client_id);
    put_key(&o, F_TENANT);
    put_str(&o, r->tenant ? r->tenant->id : NULL);
    put_key(&o, F_MODEL);
    put_str(&o, model_of(r));
    put_key(&o, F_POOL);
    put_str(&o, r->pool ? r->pool->name : NULL);
    put_key(&o, F_BACKEND);
    put_str(&o, r->backend ? r->backend->name : NULL);
    put_key(&o, F_STATUS);
    put_u64(&o, (uint64_t)(status > 0 ? status : 0));
    put_key(&o, F_CODE);
    put_str(&o, code);
    put_key(&o, F_PROMPT_TOKENS);
    put_u64(&o, (uint64_t)pt);
    put_key(&o, F_COMPLETION_TOKENS);
    put_u64(&o, (uint64_t)ct);
    put_key(&o, F_TOKENS_ESTIMATED);
    if (estimated)
        PUT_LIT(&o, "true");
    else
        PUT_LIT(&o, "false");
    put_key(&o, F_TTFT_MS);
    if (r->ttft_us && r->ttft_us >= r->start_us)
        put_ms(&o, r->ttft_us - r->start_us);
    else
        PUT_LIT(&o, "null");
    put_key(&o, F_DURATION_MS);
    put_ms(&o, now >= r->start_us ? now - r->start_us : 0);
    put_key(&o, F_BYTES_IN);
    put_u64(&o, (uint64_t)(r->head_len + gw_req_body_length(r))); /* as received */
    put_key(&o, F_BYTES_OUT);
    put_u64(&o, r->bytes_out);
    PUT_LIT(&o, "}\n");
    return o.overflow ? 0 : (size_t)(o.p - buf);
}

/* ---- the rings ---- */

static void wake_writer(void)
{
    pthread_cond_signal(&L.cond);
}

static ring_t *ring_register(void)
{
    ring_t *q = malloc(sizeof(*q));
    if (!q) return NULL;
    /* Touched now, once, rather than page by page as lines wrap around it: the memory a worker
     * costs is there from its first logged request and stays flat (tools/soak checks it). */
    memset(q->buf, 0, sizeof(q->buf));
    q->next = NULL;
    atomic_init(&q->head, 0);
    atomic_init(&q->tail, 0);
    ring_t *first = atomic_load(&L.rings);
    do {
        q->next = first;
    } while (!atomic_compare_exchange_weak(&L.rings, &first, q));
    my_ring = q;
    return q;
}

void gw_access_log_request(const gw_req_t *r)
{
    if (!r->cfg->access_log.path) return; /* none in the request's config */
    if (!atomic_load_explicit(&L.running, memory_order_relaxed)) return;
    char line[MAX_LINE];
    size_t n = gw_access_log_format(r, line, sizeof(line));
    ring_t *q = my_ring ? my_ring : ring_register();
    if (n == 0 || !q) {
        atomic_fetch_add_explicit(&L.dropped, 1, memory_order_relaxed);
        return;
    }
    uint64_t head = atomic_load_explicit(&q->head, memory_order_relaxed);
    uint64_t tail = atomic_load_explicit(&q->tail, memory_order_acquire);
    uint64_t used = head - tail;
    if (RING_BYTES - used < n) {
        atomic_fetch_add_explicit(&L.dropped, 1, memory_order_relaxed);
        wake_writer();
        return;
    }
    size_t off = (size_t)(head % RING_BYTES), first = RING_BYTES - off;
    if (first > n) first = n;
    memcpy(q->buf + off, line, first);
    memcpy(q->buf, line + first, n - first);
    atomic_store_explicit(&q->head, head + n, memory_order_release);
    if (used < RING_BYTES / 2 && used + n >= RING_BYTES / 2) wake_writer();
}

uint64_t gw_access_log_dropped(void)
{
    return atomic_load_explicit(&L.dropped, memory_order_relaxed);
}

/* ---- the writer ---- */

static uint64_t count_lines(const char *p, size_t n)
{
    uint64_t k = 0;
    for (const char *e = p + n; (p = memchr(p, '\n', (size_t)(e - p))); p++) k++;
    return k;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void drain(int fd, int *failing)
{
    for (ring_t *q = atomic_load_explicit(&L.rings, memory_order_acquire); q; q = q->next) {
        uint64_t head = atomic_load_explicit(&q->head, memory_order_acquire);
        uint64_t tail = atomic_load_explicit(&q->tail, memory_order_relaxed);
        while (tail < head) {
            size_t off = (size_t)(tail % RING_BYTES), n = RING_BYTES - off;
            if (n > head - tail) n = (size_t)(head - tail);
            if (fd >= 0 && write_all(fd, q->buf + off, n) < 0) {
                atomic_fetch_add_explicit(&L.dropped, count_lines(q->buf + off, n),
                                          memory_order_relaxed);
                if (!*failing) gw_warn("cannot write the access log: %s", strerror(errno));
                *failing = 1;
            } else if (fd >= 0) {
                *failing = 0;
            }
            tail += n;
        }
        atomic_store_explicit(&q->tail, tail, memory_order_release);
    }
}

static void *writer(void *arg)
{
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    int fd = -1, failing = 0;
    uint64_t warned_drops = 0;
    pthread_mutex_lock(&L.lock);
    for (;;) {
        int stop = L.stop;
        pthread_mutex_unlock(&L.lock);
        /* Lines published before a new file was handed over go to the old one. */
        drain(fd, &failing);
        int next = atomic_exchange(&L.pending, PENDING_NONE);
        if (next != PENDING_NONE) {
            if (fd >= 0) close(fd);
            fd = next >= 0 ? next : -1;
            failing = 0;
        }
        uint64_t drops = gw_access_log_dropped();
        if (drops != warned_drops) {
            gw_warn("access log: %llu lines dropped so far", (unsigned long long)drops);
            warned_drops = drops;
        }
        if (stop) break;
        pthread_mutex_lock(&L.lock);
        if (!L.stop) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += FLUSH_MS * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&L.cond, &L.lock, &ts);
        }
    }
    drain(fd, &failing);
    if (fd >= 0) close(fd);
    return NULL;
}

static int open_path(const char *path)
{
    int fd = strcmp(path, "-") == 0 ? dup(STDOUT_FILENO)
                                    : open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (fd < 0) gw_error("cannot open the access log %s: %s", path, strerror(errno));
    return fd;
}

static void hand_over(int fd)
{
    int old = atomic_exchange(&L.pending, fd);
    if (old >= 0) close(old); /* never taken by the writer */
    wake_writer();
}

int gw_access_log_open(const char *path)
{
    if (!path) {
        atomic_store(&L.running, 0);
        free(L.path);
        L.path = NULL;
        hand_over(PENDING_CLOSE);
        return 0;
    }
    int fd = open_path(path);
    if (fd < 0) return -1;
    char *copy = strdup(path);
    if (!copy) {
        close(fd);
        return -1;
    }
    free(L.path);
    L.path = copy;
    hand_over(fd);
    pthread_mutex_lock(&L.lock);
    if (!L.started) {
        L.stop = 0;
        if (pthread_create(&L.thread, NULL, writer, NULL) != 0) {
            pthread_mutex_unlock(&L.lock);
            gw_error("cannot start the access log writer");
            return -1;
        }
        L.started = 1;
    }
    pthread_mutex_unlock(&L.lock);
    atomic_store(&L.running, 1);
    return 0;
}

int gw_access_log_reopen(void)
{
    if (!L.path) return 0;
    int fd = open_path(L.path);
    if (fd < 0) return -1;
    hand_over(fd);
    return 0;
}

void gw_access_log_close(void)
{
    atomic_store(&L.running, 0);
    pthread_mutex_lock(&L.lock);
    int started = L.started;
    L.stop = 1;
    pthread_cond_signal(&L.cond);
    pthread_mutex_unlock(&L.lock);
    if (started) pthread_join(L.thread, NULL);
    pthread_mutex_lock(&L.lock);
    L.started = 0;
    pthread_mutex_unlock(&L.lock);
    int pending = atomic_exchange(&L.pending, PENDING_NONE);
    if (pending >= 0) close(pending);
    /* Every thread that logged has ended: their rings go. */
    ring_t *q = atomic_exchange(&L.rings, NULL);
    while (q) {
        ring_t *next = q->next;
        free(q);
        q = next;
    }
    my_ring = NULL;
    free(L.path);
    L.path = NULL;
}
