/* Active health checks and metrics scraping: worker 0's loop probes each backend. */
#include "proxy/health.h"

#include "base/clock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/io.h"
#include "base/log.h"
#include "store/backend_geo.h"
#include "base/tls.h"
#include "base/vllm_metrics.h"

#define TICK_US 50000 /* the loop looks at every backend this often */
#define MAX_PROBE_ANSWER (1u << 20)

enum { K_HEALTH, K_METRICS };

typedef struct probe probe_t;

typedef struct bstate {
    gw_backend_t *b;
    uint64_t next_health_us, next_metrics_us;
    int ok, bad; /* active check results in a row */
    probe_t *probe[2];
} bstate_t;

struct probe {
    gw_health_t *h;
    bstate_t *st;
    int kind;
    gw_io_t *io;
    struct event *timer;
    const gw_resolved_t *rs;
    int connected;
};

struct gw_health {
    struct event_base *base;
    gw_health_readmit_fn readmit; /* the balancer's: back in rotation, with slow start */
    gw_config_t *cfg;
    struct event *tick;
    bstate_t *bs;
    size_t n;
};

static void probe_read_cb(gw_io_t *io, void *arg);
static void probe_event_cb(gw_io_t *io, int what, void *arg);
static const gw_io_cbs_t probe_cbs = {probe_read_cb, NULL, probe_event_cb};

static void probe_free(probe_t *p)
{
    if (!p) return;
    p->st->probe[p->kind] = NULL;
    if (p->io) gw_io_free(p->io);
    if (p->timer) event_free(p->timer);
    gw_resolved_release(p->rs);
    free(p);
}

/* ------------------------------------------------------------------ results */

static void health_result(gw_health_t *h, bstate_t *st, int ok)
{
    gw_backend_t *b = st->b;
    gw_pool_t *p = b->pool;
    uint64_t now = gw_now_us();
    if (ok) {
        st->bad = 0;
        st->ok++;
        if (!atomic_load(&b->live->healthy) && st->ok >= p->health.healthy_threshold &&
            now >= atomic_load(&b->live->lb.down_until_us))
            h->readmit(b, now);
    } else {
        st->ok = 0;
        st->bad++;
        if (st->bad >= p->health.unhealthy_threshold && atomic_exchange(&b->live->healthy, 0)) {
            atomic_store(&b->live->lb.down_until_us, now);
            gw_warn("pool %s: backend %s failed %d health checks in a row", p->name, b->name,
                    st->bad);
        }
    }
}

static void metrics_result(bstate_t *st, const char *body, size_t len)
{
    int w, r, c;
    const int need = GW_VLLM_WAITING | GW_VLLM_RUNNING; /* missing either: fall back */
    if ((gw_vllm_metrics_parse(body, len, &w, &r, &c) & need) != need) return;
    gw_backend_lb_t *lb = &st->b->live->lb;
    /* What the backend has shown it can run at once: all it runs while others wait. */
    int cap = atomic_load(&lb->m_cap);
    if (w > 0 && r > 0)
        cap = r;
    else if (r > cap)
        cap = r;
    if (st->b->max_concurrent && cap > st->b->max_concurrent) cap = (int)st->b->max_concurrent;
    atomic_store(&lb->m_cap, cap < 1 ? 1 : cap);
    atomic_store(&lb->m_waiting, w);
    atomic_store(&lb->m_running, r);
    atomic_store(&lb->m_cache_pm, c);
    atomic_store(&lb->m_inflight, atomic_load(&st->b->live->inflight));
    atomic_store_explicit(&lb->m_at_us, gw_now_us(), memory_order_release);
}

/* The probe's answer is complete (or the backend closed): judge it. */
static void probe_done(probe_t *p, int ok)
{
    struct evbuffer *in = p->io ? gw_io_in(p->io) : NULL;
    size_t len = in ? evbuffer_get_length(in) : 0;
    const char *buf = len ? (const char *)evbuffer_pullup(in, (ssize_t)len) : NULL;
    int status = 0;
    if (ok && buf && len >= 12 && memcmp(buf, "HTTP/1.", 7) == 0)
        status = (buf[9] - '0') * 100 + (buf[10] - '0') * 10 + (buf[11] - '0');
    if (p->kind == K_HEALTH) {
        health_result(p->h, p->st, status >= 200 && status < 300);
    } else if (status == 200) {
        const char *body = memmem(buf, len, "\r\n\r\n", 4);
        if (body) metrics_result(p->st, body + 4, len - (size_t)(body + 4 - buf));
    }
    probe_free(p);
}

static void probe_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    probe_done(arg, 0);
}

static void probe_read_cb(gw_io_t *io, void *arg)
{
    probe_t *p = arg;
    struct evbuffer *in = gw_io_in(io);
    size_t len = evbuffer_get_length(in);
    if (len > MAX_PROBE_ANSWER) {
        probe_done(p, 0);
        return;
    }
    /* A health check is judged by its status line; metrics are read to the close. */
    if (p->kind == K_HEALTH && len >= 12) probe_done(p, 1);
}

static void probe_event_cb(gw_io_t *io, int what, void *arg)
{
    probe_t *p = arg;
    if (what & GW_IO_CONNECTED) {
        /* The same rule as requests: only a verified address gets a byte. */
        if (!gw_residency_peer_ok(p->h->cfg, p->rs, gw_io_fd(io))) {
            probe_free(p);
            return;
        }
        p->connected = 1;
        gw_backend_t *b = p->st->b;
        gw_pool_t *pl = b->pool;
        struct evbuffer *out = gw_io_out(io);
        evbuffer_add_printf(out, "GET %s HTTP/1.1\r\nhost: %s\r\nconnection: close\r\n",
                            p->kind == K_HEALTH ? pl->health.path : pl->metrics.path,
                            b->host_header);
        if (b->auth_line) evbuffer_add(out, b->auth_line, b->auth_line_len);
        evbuffer_add(out, "\r\n", 2);
        gw_io_flush(io);
        return;
    }
    /* Closed: a complete metrics answer, or a failure. */
    probe_done(p, p->connected && (what & GW_IO_EOF));
}

static void probe_start(gw_health_t *h, bstate_t *st, int kind)
{
    gw_backend_t *b = st->b;
    const gw_resolved_t *rs = gw_backend_hold(b); /* the probe holds it (probe_free) */
    const gw_addr_t *addr = gw_residency_connect_addr(h->cfg, rs);
    probe_t *p = addr ? calloc(1, sizeof(*p)) : NULL;
    if (!p) { /* not approved: never probed (the residency policy refuses it anyway) */
        gw_resolved_release(rs);
        return;
    }
    p->h = h;
    p->st = st;
    p->kind = kind;
    p->rs = rs;
    st->probe[kind] = p;
    SSL *ssl = b->ssl ? gw_tls_client_ssl(b->ssl, b->host) : NULL;
    p->timer = evtimer_new(h->base, probe_timer_cb, p);
    if ((b->ssl && !ssl) || !p->timer) {
        if (ssl) SSL_free(ssl);
        probe_free(p);
        return;
    }
    p->io =
        gw_io_connect(h->base, (const struct sockaddr *)&addr->ss, addr->len, ssl, &probe_cbs, p);
    if (!p->io) {
        if (kind == K_HEALTH) health_result(h, st, 0);
        probe_free(p);
        return;
    }
    int64_t ms = b->pool->health.timeout_ms;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(p->timer, &tv);
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    gw_health_t *h = arg;
    uint64_t now = gw_now_us();
    for (size_t i = 0; i < h->n; i++) {
        bstate_t *st = &h->bs[i];
        gw_backend_t *b = st->b;
        gw_pool_t *p = b->pool;
        if (p->health.path) {
            if (!st->probe[K_HEALTH] && now >= st->next_health_us) {
                st->next_health_us = now + (uint64_t)p->health.interval_ms * 1000;
                probe_start(h, st, K_HEALTH);
            }
        } else if (!atomic_load(&b->live->healthy) &&
                   now >= atomic_load(&b->live->lb.down_until_us)) {
            h->readmit(b, now); /* passive only: back after fail_timeout_ms */
        }
        if (p->algo == GW_BAL_QUEUE_AWARE && !st->probe[K_METRICS] && now >= st->next_metrics_us) {
            st->next_metrics_us = now + (uint64_t)p->metrics.interval_ms * 1000;
            probe_start(h, st, K_METRICS);
        }
    }
    struct timeval tv = {0, TICK_US};
    evtimer_add(h->tick, &tv);
}

static void stop_probes(gw_health_t *h)
{
    for (size_t i = 0; i < h->n; i++) {
        probe_free(h->bs[i].probe[K_HEALTH]);
        probe_free(h->bs[i].probe[K_METRICS]);
    }
}

void gw_health_set_config(gw_health_t *h, gw_config_t *cfg)
{
    if (h->cfg == cfg) return;
    bstate_t *bs = calloc(cfg->nbackends + 1, sizeof(*bs));
    if (!bs) {
        gw_warn("health checks: out of memory; the old backends stay checked");
        return;
    }
    for (size_t i = 0; i < cfg->nbackends; i++) {
        gw_backend_t *b = cfg->backends[i];
        bs[i].b = b;
        /* The same backend in the old snapshot (the same live state: live.h): its health is
         * shared already; the checks' run of results carries over too. */
        for (size_t j = 0; h->cfg && j < h->n; j++) {
            if (h->bs[j].b->live != b->live) continue;
            bs[i].ok = h->bs[j].ok;
            bs[i].bad = h->bs[j].bad;
            break;
        }
    }
    stop_probes(h);
    free(h->bs);
    gw_config_unref(h->cfg);
    h->cfg = gw_config_ref(cfg);
    h->bs = bs;
    h->n = cfg->nbackends;
}

gw_health_t *gw_health_new(struct event_base *base, gw_config_t *cfg, gw_health_readmit_fn readmit)
{
    gw_health_t *h = calloc(1, sizeof(*h));
    if (!h) return NULL;
    h->base = base;
    h->readmit = readmit;
    h->tick = evtimer_new(base, tick_cb, h);
    if (!h->tick) {
        free(h);
        return NULL;
    }
    gw_health_set_config(h, cfg);
    if (!h->cfg) {
        gw_health_free(h);
        return NULL;
    }
    struct timeval tv = {0, 0};
    evtimer_add(h->tick, &tv);
    return h;
}

void gw_health_free(gw_health_t *h)
{
    if (!h) return;
    stop_probes(h);
    if (h->tick) event_free(h->tick);
    free(h->bs);
    gw_config_unref(h->cfg);
    free(h);
}
