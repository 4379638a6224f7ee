/* Workers: one thread, one event loop and one SO_REUSEPORT listener set each. */
#include "io/worker.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/arena.h"
#include "io/conn.h"
#include "base/accept_guard.h"
#include "base/log.h"
#include "config/plugin_host.h"

typedef struct listen_ctx {
    gw_worker_t *w;
    size_t index; /* in the snapshot's listen list, the same across reloads */
} listen_ctx_t;

int gw_workers_bind(gw_worker_t *ws, size_t n, gw_config_t *cfg)
{
    gw_listen_t *ls = cfg->listen.items;
    for (size_t k = 0; k < n; k++) {
        gw_worker_t *w = &ws[k];
        w->fds = calloc(cfg->listen.n, sizeof(int));
        if (!w->fds) return -1;
        w->nlisteners = cfg->listen.n;
        for (size_t i = 0; i < cfg->listen.n; i++) w->fds[i] = -1;
        for (size_t i = 0; i < cfg->listen.n; i++) {
            int fd = socket(ls[i].ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            int one = 1;
            if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
                setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
                bind(fd, (struct sockaddr *)&ls[i].ss, ls[i].sslen) < 0 || listen(fd, 4096) < 0) {
                gw_error("cannot listen on %s: %s", ls[i].address, strerror(errno));
                if (fd >= 0) close(fd);
                return -1;
            }
            w->fds[i] = fd;
        }
    }
    return 0;
}

uint64_t gw_worker_random(gw_worker_t *w)
{
    /* xorshift64*: tie-breaks, not secrets (its next output follows from the last) */
    uint64_t x = w->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    w->rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

int gw_worker_random_bytes(gw_worker_t *w, void *out, size_t n)
{
    if (n > sizeof(w->rand_buf)) return -1;
    if (w->rand_left < n) {
        w->rand_left = 0;
        if (RAND_bytes(w->rand_buf, (int)sizeof(w->rand_buf)) != 1) return -1;
        w->rand_left = sizeof(w->rand_buf);
    }
    unsigned char *p = w->rand_buf + sizeof(w->rand_buf) - w->rand_left;
    memcpy(out, p, n);
    explicit_bzero(p, n); /* handed out once */
    w->rand_left -= n;
    return 0;
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len,
                      void *arg)
{
    listen_ctx_t *lc = arg;
    gw_listen_t *ls = lc->w->cfg->listen.items;
    gw_conn_accept(lc->w, fd, &ls[lc->index], sa, (socklen_t)len);
}

static void free_listeners(gw_worker_t *w)
{
    gw_accept_guard_free(w->accept_guard);
    w->accept_guard = NULL;
    for (size_t i = 0; i < w->nlisteners; i++)
        if (w->listeners && w->listeners[i]) {
            evconnlistener_free(w->listeners[i]); /* closes the socket */
            w->listeners[i] = NULL;
        }
}

static void start_drain(gw_worker_t *w)
{
    if (w->draining) return;
    w->draining = 1;
    free_listeners(w);
    w->hooks->drain(w);
    gw_conn_t *c = w->conns;
    while (c) {
        gw_conn_t *next = c->next;
        gw_conn_drain(c);
        c = next;
    }
    if (w->nconns == 0) event_base_loopexit(w->base, NULL);
}

/* Takes the snapshot a reload handed over; requests in flight keep theirs. */
static void take_reload(gw_worker_t *w)
{
    gw_config_t *next = atomic_exchange(&w->next_cfg, NULL);
    if (!next) return;
    gw_upconn_t **idle = calloc(next->nbackends + 1, sizeof(*idle));
    size_t *nidle = calloc(next->nbackends + 1, sizeof(*nidle));
    if (!idle || !nidle) {
        free(idle);
        free(nidle);
        gw_config_unref(next);
        gw_warn("worker %d: out of memory taking the new configuration", w->id);
        return;
    }
    w->hooks->reload(w, next); /* the idle connections go: the arrays are replaced */
    free(w->idle);
    free(w->nidle);
    w->idle = idle;
    w->nidle = nidle;
    gw_config_unref(w->cfg);
    w->cfg = next;
    w->idle_cfg = next;
    w->hooks->reloaded(w);
}

void gw_worker_reload(gw_worker_t *w, gw_config_t *cfg)
{
    gw_config_t *old = atomic_exchange(&w->next_cfg, cfg);
    if (old) gw_config_unref(old);
    gw_worker_signal(w, 'r');
}

static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
    gw_worker_t *w = arg;
    char cmd[16];
    ssize_t n = read(fd, cmd, sizeof(cmd));
    for (ssize_t i = 0; i < n; i++) {
        if (cmd[i] == 'd')
            start_drain(w);
        else if (cmd[i] == 's')
            event_base_loopbreak(w->base);
        else if (cmd[i] == 'r')
            take_reload(w);
    }
}

static void *run(void *arg)
{
    gw_worker_t *w = arg;
    w->hooks->thread(w);
    event_base_dispatch(w->base);
    /* Stopped: whatever is still open is closed now. */
    while (w->conns) gw_conn_close(w->conns);
    /* The plugins' thread state goes (the quota counts still pending go to Redis); a drained
     * worker waits for them to arrive (no listener is left to accept anything meanwhile: the
     * stop hook delivers them). */
    gw_plugins_thread_exit(w->cfg);
    w->hooks->stop(w);
    gw_arena_thread_cleanup();
    atomic_store(&w->done, 1);
    return NULL;
}

int gw_worker_start(gw_worker_t *w)
{
    struct event_config *ec = event_config_new();
    if (!ec) return -1;
    event_config_set_flag(ec, EVENT_BASE_FLAG_NOLOCK); /* one thread per loop */
    w->base = event_base_new_with_config(ec);
    event_config_free(ec);
    if (!w->base) return -1;
    uint64_t seed = 0;
    if (getrandom(&seed, sizeof(seed), 0) != sizeof(seed) || seed == 0)
        seed = 0x9E3779B97F4A7C15ULL ^ (uint64_t)(uintptr_t)w;
    w->rng = seed | 1;
    unsigned char probe[16];
    if (gw_worker_random_bytes(w, probe, sizeof(probe)) < 0) {
        gw_error("worker %d: no random bytes for request ids", w->id);
        return -1;
    }
    w->listeners = calloc(w->nlisteners, sizeof(*w->listeners));
    listen_ctx_t *lcs = calloc(w->nlisteners, sizeof(*lcs));
    char who[32];
    snprintf(who, sizeof(who), "worker %d", w->id);
    w->accept_guard = gw_accept_guard_new(w->base, who);
    if (!w->listeners || !lcs || !w->accept_guard) return -1;
    for (size_t i = 0; i < w->nlisteners; i++) {
        lcs[i].w = w;
        lcs[i].index = i;
        w->listeners[i] =
            evconnlistener_new(w->base, accept_cb, &lcs[i], LEV_OPT_CLOSE_ON_FREE, -1, w->fds[i]);
        if (!w->listeners[i]) return -1;
        w->fds[i] = -1; /* the listener owns it now */
        if (gw_accept_guard_add(w->accept_guard, w->listeners[i]) < 0) return -1;
    }
    int pfd[2];
    if (pipe2(pfd, O_NONBLOCK | O_CLOEXEC) < 0) return -1;
    w->wake_fd = pfd[1];
    w->wake = event_new(w->base, pfd[0], EV_READ | EV_PERSIST, wake_cb, w);
    if (!w->wake || event_add(w->wake, NULL) < 0) return -1;
    w->idle_cfg = w->cfg;
    w->idle = calloc(w->cfg->nbackends + 1, sizeof(*w->idle));
    w->nidle = calloc(w->cfg->nbackends + 1, sizeof(*w->nidle));
    if (!w->idle || !w->nidle) return -1;
    w->lctx = lcs;
    if (w->hooks->start(w) < 0) return -1;
    return pthread_create(&w->thread, NULL, run, w) == 0 ? 0 : -1;
}

void gw_worker_signal(gw_worker_t *w, char what)
{
    if (write(w->wake_fd, &what, 1) < 0) gw_warn("cannot signal worker %d", w->id);
}

void gw_worker_join(gw_worker_t *w)
{
    pthread_join(w->thread, NULL);
    gw_worker_discard(w);
}

void gw_worker_discard(gw_worker_t *w)
{
    if (w->hooks) w->hooks->discard(w); /* before its event base */
    for (size_t i = 0; w->fds && i < w->nlisteners; i++)
        if (w->fds[i] >= 0) close(w->fds[i]);
    free_listeners(w);
    if (w->wake) {
        close(event_get_fd(w->wake));
        close(w->wake_fd);
        event_free(w->wake);
    }
    if (w->base) event_base_free(w->base);
    free(w->listeners);
    free(w->lctx);
    free(w->fds);
    free(w->idle);
    free(w->nidle);
    gw_config_unref(atomic_exchange(&w->next_cfg, NULL));
    gw_config_unref(w->cfg);
    w->cfg = NULL;
}
