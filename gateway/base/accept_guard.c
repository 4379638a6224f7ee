/* Accept guard: pause listeners out of descriptors instead of spinning (accept_guard.h). */
#include "base/accept_guard.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/log.h"

#define PAUSE_MS 100
#define WARN_EVERY_S 10 /* one warning per episode, not ten a second */

struct gw_accept_guard {
    gw_accept_guard_t *next;
    struct evconnlistener **ls;
    size_t n;
    struct event *retry;
    time_t warned;
    char who[32];
};

/* libevent hands an error callback the listener's accept argument, not one of its own: the
 * guards are found by listener. Consulted only when accept() fails. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static gw_accept_guard_t *guards;

static gw_accept_guard_t *guard_of(const struct evconnlistener *l)
{
    pthread_mutex_lock(&lock);
    gw_accept_guard_t *g = guards;
    for (; g; g = g->next) {
        size_t i = 0;
        while (i < g->n && g->ls[i] != l) i++;
        if (i < g->n) break;
    }
    pthread_mutex_unlock(&lock);
    return g; /* only its own loop's thread uses or frees it */
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
    gw_accept_guard_t *g = arg;
    (void)fd;
    (void)what;
    for (size_t i = 0; i < g->n; i++) evconnlistener_enable(g->ls[i]);
}

static void error_cb(struct evconnlistener *l, void *arg)
{
    int err = EVUTIL_SOCKET_ERROR();
    gw_accept_guard_t *g = guard_of(l);
    (void)arg;
    if (!g || (err != EMFILE && err != ENFILE && err != ENOBUFS && err != ENOMEM)) return;
    time_t now = time(NULL);
    if (now - g->warned >= WARN_EVERY_S) {
        g->warned = now;
        gw_warn("%s: cannot accept (%s); pausing accept for %d ms", g->who, strerror(err),
                PAUSE_MS);
    }
    for (size_t i = 0; i < g->n; i++) evconnlistener_disable(g->ls[i]);
    struct timeval tv = {0, PAUSE_MS * 1000};
    evtimer_add(g->retry, &tv);
}

gw_accept_guard_t *gw_accept_guard_new(struct event_base *base, const char *who)
{
    gw_accept_guard_t *g = calloc(1, sizeof(*g));
    if (!g) return NULL;
    g->retry = evtimer_new(base, retry_cb, g);
    if (!g->retry) {
        free(g);
        return NULL;
    }
    snprintf(g->who, sizeof(g->who), "%s", who);
    pthread_mutex_lock(&lock);
    g->next = guards;
    guards = g;
    pthread_mutex_unlock(&lock);
    return g;
}

int gw_accept_guard_add(gw_accept_guard_t *g, struct evconnlistener *l)
{
    pthread_mutex_lock(&lock);
    struct evconnlistener **ls = realloc(g->ls, (g->n + 1) * sizeof(*ls));
    if (ls) {
        g->ls = ls;
        g->ls[g->n++] = l;
    }
    pthread_mutex_unlock(&lock);
    if (!ls) return -1;
    evconnlistener_set_error_cb(l, error_cb);
    return 0;
}

void gw_accept_guard_free(gw_accept_guard_t *g)
{
    if (!g) return;
    pthread_mutex_lock(&lock);
    gw_accept_guard_t **p = &guards;
    while (*p != g) p = &(*p)->next;
    *p = g->next;
    pthread_mutex_unlock(&lock);
    event_free(g->retry);
    free(g->ls);
    free(g);
}
