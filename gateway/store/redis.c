/* The shared store: one asynchronous hiredis connection per worker, on the worker's loop.
 *
 * Every command has a deadline (redis.timeout_ms): its callback runs exactly once, with the
 * reply, or with NULL when the deadline passes or the connection fails, so a request waiting
 * on Redis never hangs. A command that times out marks the connection down and drops it;
 * the worker reconnects with backoff (100 ms doubling to 2 s). Keys and values never hold
 * request content.
 *
 * A connection counts as up only once the server has answered AUTH (with a password) and
 * SELECT with OK: until then no command is sent on it, so nothing ever runs in another
 * database. A refusal (wrong password, a database the server lacks), an unexpected answer or
 * none within the handshake deadline drops the connection and retries with the same backoff;
 * gw_redis_problem() says why for /readyz, in constant words (never the password).
 *
 * A command nobody waits for (gw_redis_send: settlements, slot releases, usage counts) that
 * cannot be sent now (no connection, a connection being dropped) is kept in a bounded
 * per-worker queue and sent, in order, once a connection completes its handshake; a reload that
 * replaces the connection hands the queue over. Past QUEUE_MAX the oldest is dropped and
 * counted (gotthard_quota_store_dropped_total): the slots' lease is the backstop. */
#include "store/redis.h"

#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000   /* a Redis that returns is used again within about this */
#define HANDSHAKE_MIN_MS 1000 /* connect, AUTH and SELECT; redis.timeout_ms if longer */
#define QUEUE_MAX 4096        /* commands kept per worker while Redis is away */

/* A command waiting for a connection: argv and the bytes in one allocation. */
typedef struct queued {
    struct queued *next;
    int argc;
    const char **argv;
    size_t *argvlen;
} queued_t;

typedef struct pending {
    gw_redis_t *rd;
    gw_redis_detached_cb cb;
    void *arg;
    struct event *timer;
    int answered; /* the callback has run */
    int replied;  /* hiredis is done with it */
} pending_t;

struct gw_redis {
    gw_worker_t *w;
    char *host;
    int port, db;
    char *password;
    int64_t timeout_ms;
    redisAsyncContext *ac;
    int connected;
    int backoff_ms;
    struct event *retry;
    struct event *handshake; /* the deadline of connect, AUTH and SELECT */
    int problem;             /* the last gw_redis_problem_t of this connection, for the log */
    int freeing;
    queued_t *qhead, *qtail; /* commands waiting for the handshake (oldest first) */
    size_t nqueued;
    int retiring;            /* replaced by a reload: finishing what it was sent */
    struct event *retire_by; /* then closed by force */
    struct gw_redis *next_retiring;
};

/* The calling worker's retiring connections, freed at its end if still there. */
static _Thread_local gw_redis_t *retiring;

static void unlink_retiring(gw_redis_t *rd)
{
    for (gw_redis_t **pp = &retiring; *pp; pp = &(*pp)->next_retiring)
        if (*pp == rd) {
            *pp = rd->next_retiring;
            return;
        }
}

/* The handshake's commands, told apart in on_handshake by their private data. */
static char hs_auth, hs_select;

static void connect_now(gw_redis_t *rd);

/* Worker connections up now, for /readyz and gotthard_quota_store_up. */
static atomic_int connections_up;
/* Why the last connection attempt (any worker) failed: a gw_redis_problem_t. */
static atomic_int last_problem;
/* Queued commands dropped (the queue was full, or out of memory). */
static atomic_ulong queue_dropped;

/* Lua scripts registered by plugins (gw_redis_register_script): every connection loads them
 * right after its handshake, before anything queued is sent on it, so that an EVALSHA that
 * waited for a new connection (Redis restarted, a failover, a new redis.url) finds its script.
 * Only added to (at configure, on the main thread), read by the workers: under the lock. */
#define SCRIPTS_MAX 16
static pthread_mutex_t scripts_lock = PTHREAD_MUTEX_INITIALIZER;
static char *scripts[SCRIPTS_MAX];
static int nscripts;

int gw_redis_register_script(const char *source)
{
    if (!source) return -1;
    int rc = 0;
    pthread_mutex_lock(&scripts_lock);
    int i = 0;
    while (i < nscripts && strcmp(scripts[i], source) != 0) i++;
    if (i == nscripts) {
        if (nscripts == SCRIPTS_MAX || !(scripts[nscripts] = strdup(source)))
            rc = -1;
        else
            nscripts++;
    }
    pthread_mutex_unlock(&scripts_lock);
    return rc;
}

/* SCRIPT LOAD of every registered script, pipelined on a connection just up: Redis runs them
 * before what is sent after them on the same connection. */
static void load_scripts(gw_redis_t *rd)
{
    pthread_mutex_lock(&scripts_lock);
    for (int i = 0; i < nscripts && rd->ac; i++) {
        const char *argv[] = {"SCRIPT", "LOAD", scripts[i]};
        if (redisAsyncCommandArgv(rd->ac, NULL, NULL, 3, argv, NULL) != REDIS_OK) break;
    }
    pthread_mutex_unlock(&scripts_lock);
}

unsigned long gw_redis_queue_dropped(void)
{
    return atomic_load(&queue_dropped);
}

static void dequeue_head(gw_redis_t *rd)
{
    queued_t *q = rd->qhead;
    rd->qhead = q->next;
    if (!rd->qhead) rd->qtail = NULL;
    rd->nqueued--;
    free(q);
}

/* Keeps a command for the next connection; the oldest goes when the queue is full. */
static int enqueue(gw_redis_t *rd, int argc, const char **argv, const size_t *argvlen)
{
    if (argc <= 0) return -1;
    size_t bytes = sizeof(queued_t) + (size_t)argc * (sizeof(char *) + sizeof(size_t));
    for (int i = 0; i < argc; i++) bytes += argvlen ? argvlen[i] : strlen(argv[i]);
    queued_t *q = malloc(bytes);
    if (!q) {
        atomic_fetch_add(&queue_dropped, 1);
        return -1;
    }
    q->next = NULL;
    q->argc = argc;
    q->argv = (const char **)(q + 1);
    q->argvlen = (size_t *)(q->argv + argc);
    char *p = (char *)(q->argvlen + argc);
    for (int i = 0; i < argc; i++) {
        size_t n = argvlen ? argvlen[i] : strlen(argv[i]); /* hiredis: NULL lengths, strings */
        memcpy(p, argv[i], n);
        q->argv[i] = p;
        q->argvlen[i] = n;
        p += n;
    }
    if (rd->nqueued >= QUEUE_MAX) {
        dequeue_head(rd);
        atomic_fetch_add(&queue_dropped, 1);
    }
    if (rd->qtail)
        rd->qtail->next = q;
    else
        rd->qhead = q;
    rd->qtail = q;
    rd->nqueued++;
    return 0;
}

/* Sends what waited, in order, on a connection that is up. */
static void flush_queue(gw_redis_t *rd)
{
    while (rd->qhead && rd->connected && rd->ac) {
        queued_t *q = rd->qhead;
        if (redisAsyncCommandArgv(rd->ac, NULL, NULL, q->argc, q->argv, q->argvlen) != REDIS_OK)
            return;
        dequeue_head(rd);
    }
}

int gw_redis_connections_up(void)
{
    return atomic_load(&connections_up);
}

gw_redis_problem_t gw_redis_problem(void)
{
    if (atomic_load(&connections_up) > 0) return GW_REDIS_OK;
    gw_redis_problem_t p = (gw_redis_problem_t)atomic_load(&last_problem);
    return p == GW_REDIS_OK ? GW_REDIS_CONNECTING : p;
}

const char *gw_redis_problem_text(gw_redis_problem_t p)
{
    switch (p) {
    case GW_REDIS_OK:
        return NULL;
    case GW_REDIS_UNREACHABLE:
        return "redis: cannot connect to redis.url's host and port";
    case GW_REDIS_AUTH_REFUSED:
        return "redis: the server refused AUTH (the password in redis.url is wrong or missing)";
    case GW_REDIS_SELECT_REFUSED:
        return "redis: the server refused SELECT (it has no such database: the /db of redis.url)";
    case GW_REDIS_NO_ANSWER:
        return "redis: no answer to AUTH/SELECT within the connection deadline";
    case GW_REDIS_UNEXPECTED:
        return "redis: an unexpected answer to AUTH/SELECT (not a redis server?)";
    case GW_REDIS_CONNECTING:
        break;
    }
    return "redis: connecting";
}

/* Records why a connection attempt failed; logs it when it is news for this connection. */
static void set_problem(gw_redis_t *rd, gw_redis_problem_t p)
{
    atomic_store(&last_problem, (int)p);
    if (rd->problem == (int)p) return;
    rd->problem = (int)p;
    gw_warn("worker %d: %s; retrying with backoff", rd->w->id, gw_redis_problem_text(p));
}

static void set_connected(gw_redis_t *rd, int up)
{
    if (rd->connected == up) return;
    rd->connected = up;
    atomic_fetch_add(&connections_up, up ? 1 : -1);
}

static void answer(pending_t *p, redisReply *reply)
{
    if (p->answered) return;
    p->answered = 1;
    if (p->timer) evtimer_del(p->timer);
    p->cb(reply, p->arg);
}

static void pending_free(pending_t *p)
{
    if (p->timer) event_free(p->timer);
    free(p);
}

static void on_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    pending_t *p = priv;
    if (!p) return;
    answer(p, reply); /* an error reply too: the caller may act on it (NOSCRIPT) */
    p->replied = 1;
    pending_free(p);
}

static void drop_connection(gw_redis_t *rd)
{
    if (!rd->ac) return;
    redisAsyncContext *ac = rd->ac;
    rd->ac = NULL;
    set_connected(rd, 0);
    /* Pending commands get their NULL reply from hiredis as it frees them. */
    redisAsyncFree(ac);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    pending_t *p = arg;
    gw_redis_t *rd = p->rd;
    /* Down before the callback runs: what it sends in return (a release of the slot this
     * command may still take when Redis wakes up) waits for the next connection. */
    int was_up = rd->connected;
    set_connected(rd, 0);
    answer(p, NULL);
    if (was_up && rd->ac) {
        gw_warn("worker %d: redis did not answer within %lld ms; reconnecting", rd->w->id,
                (long long)rd->timeout_ms);
        drop_connection(rd); /* also frees p through on_reply */
        struct timeval tv = {0, BACKOFF_MIN_MS * 1000};
        evtimer_add(rd->retry, &tv);
    }
}

static void schedule_retry(gw_redis_t *rd)
{
    if (rd->freeing) return;
    int ms = rd->backoff_ms ? rd->backoff_ms : BACKOFF_MIN_MS;
    rd->backoff_ms = ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : ms * 2;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(rd->retry, &tv);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    gw_redis_t *rd = ac->data;
    if (status != REDIS_OK) {
        if (rd->ac == ac) rd->ac = NULL; /* hiredis frees the context after this callback */
        evtimer_del(rd->handshake);
        set_connected(rd, 0);
        set_problem(rd, GW_REDIS_UNREACHABLE);
        schedule_retry(rd);
    }
    /* Connected: up once AUTH and SELECT are answered (on_handshake). */
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    gw_redis_t *rd = ac->data;
    if (rd->ac == ac && rd->retiring) { /* every reply is in: the retired connection is done */
        rd->ac = NULL;
        gw_redis_free(rd);
        return;
    }
    if (rd->ac == ac) {
        rd->ac = NULL;
        evtimer_del(rd->handshake);
        if (rd->connected)
            gw_warn("worker %d: redis connection lost; reconnecting", rd->w->id);
        else
            set_problem(rd, GW_REDIS_UNEXPECTED); /* closed during AUTH/SELECT */
        set_connected(rd, 0);
        schedule_retry(rd);
    }
}

/* The handshake failed: the connection is dropped before any command used it. */
static void handshake_failed(gw_redis_t *rd, gw_redis_problem_t p)
{
    evtimer_del(rd->handshake);
    set_problem(rd, p);
    drop_connection(rd); /* inside a hiredis callback: hiredis frees it on return */
    schedule_retry(rd);
}

static int is_ok(const redisReply *r)
{
    return r->type == REDIS_REPLY_STATUS && r->len == 2 && memcmp(r->str, "OK", 2) == 0;
}

/* The replies to AUTH and SELECT, in order; the connection is up after SELECT's OK. */
static void on_handshake(redisAsyncContext *ac, void *reply, void *priv)
{
    gw_redis_t *rd = ac->data;
    redisReply *r = reply;
    if (!rd || rd->ac != ac || !r) return; /* dropped meanwhile; on_disconnect retries */
    if (r->type == REDIS_REPLY_ERROR) {
        int noauth = r->len >= 6 && memcmp(r->str, "NOAUTH", 6) == 0;
        handshake_failed(rd, priv == &hs_auth || noauth ? GW_REDIS_AUTH_REFUSED
                                                        : GW_REDIS_SELECT_REFUSED);
        return;
    }
    if (!is_ok(r)) {
        handshake_failed(rd, GW_REDIS_UNEXPECTED);
        return;
    }
    if (priv != &hs_select) return; /* AUTH's OK: SELECT's answer follows */
    evtimer_del(rd->handshake);
    rd->backoff_ms = 0;
    rd->problem = GW_REDIS_OK;
    atomic_store(&last_problem, GW_REDIS_OK);
    set_connected(rd, 1);
    gw_info("worker %d: redis connected (database %d)", rd->w->id, rd->db);
    load_scripts(rd); /* before what waited: its EVALSHAs need them */
    flush_queue(rd);
}

static void handshake_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    gw_redis_t *rd = arg;
    if (rd->connected || !rd->ac) return;
    set_problem(rd, GW_REDIS_NO_ANSWER);
    drop_connection(rd);
    schedule_retry(rd);
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
    connect_now(arg);
}

static void connect_now(gw_redis_t *rd)
{
    if (rd->ac || rd->freeing) return;
    redisAsyncContext *ac = redisAsyncConnect(rd->host, rd->port);
    if (!ac || ac->err) {
        if (ac) redisAsyncFree(ac);
        set_problem(rd, GW_REDIS_UNREACHABLE);
        schedule_retry(rd);
        return;
    }
    ac->data = rd;
    rd->ac = ac;
    redisLibeventAttach(ac, rd->w->base);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    /* Sent as soon as the connection is up, before anything else; SELECT even for database 0,
     * so that every connection is confirmed by an answer before it is used. */
    char db[16];
    snprintf(db, sizeof(db), "%d", rd->db);
    const char *auth[] = {"AUTH", rd->password}, *select[] = {"SELECT", db};
    if ((rd->password &&
         redisAsyncCommandArgv(ac, on_handshake, &hs_auth, 2, auth, NULL) != REDIS_OK) ||
        redisAsyncCommandArgv(ac, on_handshake, &hs_select, 2, select, NULL) != REDIS_OK) {
        drop_connection(rd);
        set_problem(rd, GW_REDIS_UNEXPECTED);
        schedule_retry(rd);
        return;
    }
    int64_t ms = rd->timeout_ms > HANDSHAKE_MIN_MS ? rd->timeout_ms : HANDSHAKE_MIN_MS;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(rd->handshake, &tv);
}

gw_redis_t *gw_redis_new(gw_worker_t *w, const gw_config_t *cfg)
{
    if (!cfg->redis.url) return NULL;
    gw_redis_t *rd = calloc(1, sizeof(*rd));
    if (!rd) return NULL;
    rd->w = w;
    rd->host = strdup(cfg->redis.host);
    rd->port = cfg->redis.port;
    rd->db = cfg->redis.db;
    rd->password = cfg->redis.password ? strdup(cfg->redis.password) : NULL;
    rd->timeout_ms = cfg->redis.timeout_ms;
    rd->retry = evtimer_new(w->base, retry_cb, rd);
    rd->handshake = evtimer_new(w->base, handshake_timeout_cb, rd);
    rd->problem = GW_REDIS_CONNECTING;
    if (!rd->host || !rd->retry || !rd->handshake) {
        gw_redis_free(rd);
        return NULL;
    }
    connect_now(rd);
    return rd;
}

void gw_redis_hand_over(gw_redis_t *from, gw_redis_t *to)
{
    if (!from || !to) return;
    while (from->qhead) {
        queued_t *q = from->qhead;
        if (enqueue(to, q->argc, q->argv, q->argvlen) < 0) break;
        dequeue_head(from);
    }
    flush_queue(to);
}

void gw_redis_set_timeout(gw_redis_t *rd, int64_t timeout_ms)
{
    if (rd) rd->timeout_ms = timeout_ms;
}

static void retire_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    gw_redis_free(arg); /* still waiting: what is left is answered NULL */
}

void gw_redis_retire(gw_redis_t *rd)
{
    if (!rd) return;
    if (!rd->connected || !rd->ac || !rd->retry) {
        gw_redis_free(rd);
        return;
    }
    /* No reconnecting, no new commands (the worker has its new connection); the commands in
     * flight, those nobody waits for too, are written and answered, then hiredis disconnects
     * (on_disconnect frees rd). Closing it at once would drop what is not yet written, and a
     * close with unread replies resets the connection, losing what Redis has not read. */
    rd->freeing = rd->retiring = 1;
    evtimer_del(rd->retry);
    evtimer_del(rd->handshake);
    set_connected(rd, 0);
    int64_t ms = rd->timeout_ms > HANDSHAKE_MIN_MS ? rd->timeout_ms : HANDSHAKE_MIN_MS;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    rd->retire_by = evtimer_new(rd->w->base, retire_deadline, rd);
    if (!rd->retire_by || evtimer_add(rd->retire_by, &tv) < 0) {
        gw_redis_free(rd);
        return;
    }
    rd->next_retiring = retiring;
    retiring = rd;
    redisAsyncDisconnect(rd->ac); /* may disconnect (and free rd) at once */
}

void gw_redis_free_retiring(void)
{
    while (retiring) gw_redis_free(retiring);
}

void gw_redis_free(gw_redis_t *rd)
{
    if (!rd) return;
    rd->freeing = 1;
    if (rd->retiring) unlink_retiring(rd);
    if (rd->retire_by) event_free(rd->retire_by);
    rd->retire_by = NULL;
    drop_connection(rd);
    while (rd->qhead) dequeue_head(rd);
    if (rd->retry) event_free(rd->retry);
    if (rd->handshake) event_free(rd->handshake);
    if (rd->password) {
        explicit_bzero(rd->password, strlen(rd->password));
        free(rd->password);
    }
    free(rd->host);
    free(rd);
}

int gw_redis_command(gw_redis_t *rd, gw_redis_detached_cb cb, void *arg, int argc,
                     const char **argv, const size_t *argvlen)
{
    if (!rd || !rd->connected || !rd->ac) return -1;
    pending_t *p = calloc(1, sizeof(*p));
    if (!p) return -1;
    p->rd = rd;
    p->cb = cb;
    p->arg = arg;
    p->timer = evtimer_new(rd->w->base, on_timeout, p);
    if (!p->timer || redisAsyncCommandArgv(rd->ac, on_reply, p, argc, argv, argvlen) != REDIS_OK) {
        pending_free(p);
        return -1;
    }
    struct timeval tv = {rd->timeout_ms / 1000, (rd->timeout_ms % 1000) * 1000};
    evtimer_add(p->timer, &tv);
    return 0;
}

static int send_or_queue(gw_redis_t *rd, int argc, const char **argv, const size_t *argvlen)
{
    if (!rd || rd->freeing) return -1;
    flush_queue(rd); /* what waited goes first */
    if (!rd->qhead && rd->connected && rd->ac &&
        redisAsyncCommandArgv(rd->ac, NULL, NULL, argc, argv, argvlen) == REDIS_OK)
        return 0;
    return enqueue(rd, argc, argv, argvlen);
}

int gw_redis_send(gw_redis_t *rd, int argc, const char **argv, const size_t *argvlen)
{
    return send_or_queue(rd, argc, argv, argvlen);
}

static _Thread_local gw_worker_t *this_worker;

void gw_redis_thread(gw_worker_t *w)
{
    this_worker = w;
}

int gw_worker_redis_send(int argc, const char **argv, const size_t *argvlen)
{
    return this_worker ? send_or_queue(this_worker->redis, argc, argv, argvlen) : -1;
}

typedef struct delivery {
    int answered, expired;
} delivery_t;

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    ((delivery_t *)arg)->expired = 1;
}

static void on_delivered(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)ac;
    (void)reply;
    ((delivery_t *)priv)->answered = 1;
}

void gw_redis_deliver(gw_redis_t *rd, struct event_base *base)
{
    if (!rd || !rd->connected || !rd->ac) return;
    delivery_t d = {0, 0};
    const char *ping[] = {"PING"};
    if (redisAsyncCommandArgv(rd->ac, on_delivered, &d, 1, ping, NULL) != REDIS_OK) return;
    /* Commands run in order: PING's answer (or the connection's end) says the rest arrived. */
    int64_t ms = rd->timeout_ms;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    struct event *deadline = evtimer_new(base, on_deadline, &d);
    if (!deadline || evtimer_add(deadline, &tv) < 0) d.expired = 1;
    while (!d.answered && !d.expired && event_base_loop(base, EVLOOP_ONCE) == 0) {
    }
    if (deadline) event_free(deadline);
    if (!d.answered) drop_connection(rd); /* answers PING now, while d is in scope */
}
