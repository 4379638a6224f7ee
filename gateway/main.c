/* gotthard: the command line, start-up, signals and the drain. */
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include "ops/access_log.h"
#include "ops/admin.h"
#include "base/arena.h"
#include "base/audit.h"
#include "proxy/auth_guard.h"
#include "config/config.h"
#include "config/load.h"
#include "base/json.h"
#include "base/log.h"
#include "ops/metrics.h"
#include "base/overload.h"
#include "config/plugin_host.h"
#include "proxy/request.h"
#include "proxy/serve.h"
#include "proxy/upstream.h"
#include "store/backend_geo.h"
#include "base/tls.h"
#include "io/worker.h"

#ifndef GW_VERSION
#define GW_VERSION "0.0.0"
#endif

typedef struct gw_main {
    const char *file;
    struct event_base *base;
    gw_config_t *cfg;
    gw_worker_t *workers;
    size_t nworkers;
    gw_admin_t *admin;
    struct event *sigterm, *sigint, *sighup, *sigusr1, *tick, *guard;
    uint64_t drain_deadline_ms;
    int draining, forced;
} gw_main_t;

static void usage(FILE *f)
{
    fprintf(f, "usage: gotthard -c FILE      run in the foreground\n"
               "       gotthard -t -c FILE   check the config and exit\n"
               "       gotthard --residency-report -c FILE [--json]\n"
               "                             verify every backend's residency; exit 0 if all are "
               "approved\n"
               "       gotthard -v           print the version\n");
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void print_errors(const char *file, const char *errors)
{
    const char *p = errors;
    while (p && *p) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        fprintf(stderr, "%s: %.*s\n", file, (int)n, p);
        p = nl ? nl + 1 : p + n;
    }
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    gw_main_t *m = arg;
    size_t done = 0;
    for (size_t i = 0; i < m->nworkers; i++) done += atomic_load(&m->workers[i].done) != 0;
    if (done == m->nworkers) {
        event_base_loopbreak(m->base);
        return;
    }
    if (!m->forced && now_ms() >= m->drain_deadline_ms) {
        gw_warn("drain time is over: closing what is still open");
        m->forced = 1;
        for (size_t i = 0; i < m->nworkers; i++) gw_worker_signal(&m->workers[i], 's');
    }
}

/* The failed-authentication limiter's summary lines (auth_guard.c). */
static void guard_cb(evutil_socket_t fd, short what, void *arg)
{
    gw_main_t *m = arg;
    gw_auth_guard_sweep(m->cfg->auth.failure_summary_ms, 0);
}

static void stop_cb(evutil_socket_t sig, short what, void *arg)
{
    gw_main_t *m = arg;
    if (m->draining) return;
    m->draining = 1;
    gw_info("signal %d: draining for up to %lld ms", (int)sig,
            (long long)m->cfg->timeouts.drain_ms);
    gw_admin_set_draining(m->admin);
    m->drain_deadline_ms = now_ms() + (uint64_t)m->cfg->timeouts.drain_ms;
    for (size_t i = 0; i < m->nworkers; i++) gw_worker_signal(&m->workers[i], 'd');
    struct timeval tv = {0, 20000};
    event_add(m->tick, &tv);
}

/* Listeners and workers are bound at start: a reload may change everything else. */
static int same_sockets(const gw_config_t *a, const gw_config_t *b)
{
    if (a->workers != b->workers || a->listen.n != b->listen.n ||
        strcmp(a->admin.address, b->admin.address) != 0)
        return 0;
    gw_listen_t *la = a->listen.items, *lb = b->listen.items;
    for (size_t i = 0; i < a->listen.n; i++)
        if (strcmp(la[i].address, lb[i].address) != 0 || (la[i].ssl == NULL) != (lb[i].ssl == NULL))
            return 0;
    return 1;
}

/* Refuses a reload: logs why, counts it, audits it; *why (if asked) gets the reason. */
static int refuse(const char *source, const char *reason, char **why)
{
    /* The log line and the audit event hold the first problem; *why holds them all. */
    size_t n = strcspn(reason, "\n");
    char *first = strndup(reason, n);
    int more = reason[n] && reason[n + 1];
    gw_error("reload refused (%s): %s%s; still serving the old configuration", source,
             first ? first : "", more ? " (and more)" : "");
    gw_metrics_reload(0);
    gw_audit("config_refused", "source", source, "reason", first ? first : "", NULL);
    free(first);
    if (why) *why = strdup(reason);
    return -1;
}

/* Whether a log file can be opened for appending (none and "-" can): both logs are checked
 * before either is switched, so that a refused reload leaves both where they were. */
static int log_path_ok(const char *path)
{
    if (!path || strcmp(path, "-") == 0) return 1;
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (fd < 0) return 0;
    close(fd);
    return 1;
}

/* Loads the file again, checks it whole and switches to it: 0, or -1 with the old
 * configuration still serving and *why (if asked, free it) saying why: the config's
 * problems, one "$.path: message" a line. source: "SIGHUP" or "POST /reload". */
static int reload(gw_main_t *m, const char *source, char **why)
{
    char *errors = NULL;
    gw_config_t *next = gw_config_load(m->file, &errors);
    if (!next) {
        gw_error("reload refused, still serving the old configuration:");
        print_errors(m->file, errors);
        int rc = refuse(source, errors ? errors : "the configuration is invalid", why);
        free(errors);
        return rc;
    }
    free(errors);
    const char *bad = NULL;
    if (!same_sockets(m->cfg, next))
        bad = "listen addresses, TLS on/off, admin and workers need a restart";
    else if (!log_path_ok(next->audit_log.path))
        bad = "the audit log cannot be opened";
    else if (!log_path_ok(next->access_log.path)) /* before the audit log moves */
        bad = "the access log cannot be opened";
    else if (gw_audit_open(next->audit_log.path) < 0)
        bad = "the audit log cannot be opened";
    else if (gw_access_log_open(next->access_log.path) < 0) {
        /* The audit log has moved already: back to where it was, so the refusal leaves both. */
        if (gw_audit_open(m->cfg->audit_log.path) < 0) gw_warn("the audit log cannot be reopened");
        bad = "the access log cannot be opened";
    }
    if (bad) {
        gw_config_unref(next); /* its plugins' state never served: nothing was published */
        return refuse(source, bad, why);
    }
    /* Every check has passed: from here on the new config is taken whole. Plugins publish what
     * outlives the snapshot (the quota counts) only now (plugin.h: activate). */
    gw_plugins_activate(next);
    gw_resolver_set_config(next); /* first: residency's connect check holds old requests to it */
    for (size_t i = 0; i < m->nworkers; i++) gw_worker_reload(&m->workers[i], gw_config_ref(next));
    gw_admin_set_config(m->admin, next);
    gw_overload_set_limit(next->limits.max_memory_bytes);
    gw_residency_audit_loaded(next);
    gw_config_unref(m->cfg);
    m->cfg = next;
    gw_metrics_reload(1);
    gw_info("configuration reloaded (%s)", source);
    return 0;
}

static void hup_cb(evutil_socket_t sig, short what, void *arg)
{
    gw_main_t *m = arg;
    if (!m->draining) reload(m, "SIGHUP", NULL);
}

/* POST /reload on the admin listener (the same loop as the signals). */
static int admin_reload(void *arg, char **why)
{
    gw_main_t *m = arg;
    if (m->draining) {
        if (why) *why = strdup("the gateway is draining");
        return -1;
    }
    return reload(m, "POST /reload", why);
}

/* Log rotation: the access and audit logs' paths are opened again (the old files were
 * renamed). */
static void usr1_cb(evutil_socket_t sig, short what, void *arg)
{
    gw_main_t *m = arg;
    if (gw_access_log_reopen() == 0) gw_info("access log reopened");
    if (m->cfg->audit_log.path && gw_audit_open(m->cfg->audit_log.path) == 0)
        gw_info("audit log reopened");
}

/* The signals an operator or an orchestrator may send at any moment, start-up included. From
 * main's first statement until run() has their handlers on the loop they are blocked, so one
 * that arrives meanwhile waits instead of killing the process: the loop then sees it once (any
 * number of SIGHUPs: one reload; SIGTERM: a drain; SIGUSR1: logs reopened). Threads started in
 * between inherit the mask and leave these signals to the main thread. They are blocked again
 * when the loop ends, for the tear-down. SIGINT (an interactive ^C) still stops a start-up at
 * once. */
static void async_signals(int how)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(how, &set, NULL);
}

/* Loads FILE, or prints its problems ("FILE: $.path: what") and returns NULL. */
static gw_config_t *load_or_report(const char *file, unsigned flags)
{
    char *errors = NULL;
    gw_config_t *cfg = gw_config_load_flags(file, flags, &errors);
    if (!cfg) print_errors(file, errors);
    free(errors);
    return cfg;
}

static int run(const char *file)
{
    gw_config_t *cfg = load_or_report(file, 0);
    if (!cfg) return 1;
    gw_plugins_activate(cfg);
    gw_main_t m = {0};
    m.file = file;
    m.cfg = cfg;
    m.base = event_base_new();
    m.nworkers = (size_t)cfg->workers;
    m.workers = calloc(m.nworkers, sizeof(*m.workers));
    size_t started = 0;
    if (!m.base || !m.workers) goto fail;
    for (size_t i = 0; i < m.nworkers; i++) {
        m.workers[i].id = (int)i;
        m.workers[i].hooks = &gw_serve_hooks;
        m.workers[i].cfg = gw_config_ref(cfg);
    }
    if (gw_workers_bind(m.workers, m.nworkers, cfg) < 0) goto fail;
    if (gw_audit_open(cfg->audit_log.path) < 0) goto fail;
    gw_residency_audit_loaded(cfg);
    if (gw_access_log_open(cfg->access_log.path) < 0) goto fail;
    /* The proxy's upstream side and the log phase's own loggers, before any worker runs. */
    gw_upstream_install();
    gw_req_add_logger(gw_metrics_request);
    gw_req_add_logger(gw_access_log_request);
    m.admin = gw_admin_start(m.base, cfg);
    if (!m.admin) goto fail;
    gw_admin_set_reload(m.admin, admin_reload, &m);
    for (; started < m.nworkers; started++)
        if (gw_worker_start(&m.workers[started]) < 0) {
            gw_error("cannot start worker %zu", started);
            goto fail;
        }
    if (gw_resolver_start(cfg, &gw_backend_geo_resolver_cbs) < 0) {
        gw_error("cannot start the resolver thread");
        goto fail;
    }
    if (gw_overload_start(m.base, cfg->limits.max_memory_bytes) < 0 && cfg->limits.max_memory_bytes)
        gw_warn("cannot read /proc/self/statm: limits.max_memory_bytes is not enforced");
    m.sigterm = evsignal_new(m.base, SIGTERM, stop_cb, &m);
    m.sigint = evsignal_new(m.base, SIGINT, stop_cb, &m);
    m.sighup = evsignal_new(m.base, SIGHUP, hup_cb, &m);
    m.sigusr1 = evsignal_new(m.base, SIGUSR1, usr1_cb, &m);
    m.tick = event_new(m.base, -1, EV_PERSIST, tick_cb, &m);
    m.guard = event_new(m.base, -1, EV_PERSIST, guard_cb, &m);
    struct timeval sweep = {0, GW_AUTH_GUARD_SWEEP_MS * 1000};
    if (!m.guard || event_add(m.guard, &sweep) < 0)
        gw_warn("no timer: the auth_failures_limited lines are written at exit only");
    event_add(m.sigterm, NULL);
    event_add(m.sigint, NULL);
    event_add(m.sighup, NULL);
    event_add(m.sigusr1, NULL);
    async_signals(SIG_UNBLOCK); /* what came during start-up is handled now, by the loop */
    gw_info("gotthard %s: %zu workers, %zu listeners, admin on %s", GW_VERSION, m.nworkers,
            cfg->listen.n, cfg->admin.address);
    event_base_dispatch(m.base);
    async_signals(SIG_BLOCK); /* the handlers go with the loop: nothing may kill the exit */
    for (size_t i = 0; i < m.nworkers; i++) gw_worker_join(&m.workers[i]);
    gw_auth_guard_sweep(m.cfg->auth.failure_summary_ms, 1); /* what no line has said yet */
    gw_resolver_stop();
    gw_overload_stop();
    gw_admin_free(m.admin);
    event_free(m.sigterm);
    event_free(m.sigint);
    event_free(m.sighup);
    event_free(m.sigusr1);
    event_free(m.tick);
    if (m.guard) event_free(m.guard);
    event_base_free(m.base);
    free(m.workers);
    gw_config_unref(m.cfg);
    gw_audit_close();
    gw_access_log_close();
    gw_arena_thread_cleanup();
    gw_info("stopped");
    return 0;

fail:
    /* Start-up failed: stop what started, close what was opened. */
    gw_resolver_stop();
    for (size_t i = 0; i < started; i++) gw_worker_signal(&m.workers[i], 's');
    for (size_t i = 0; i < started; i++) gw_worker_join(&m.workers[i]);
    for (size_t i = started; m.workers && i < m.nworkers; i++) gw_worker_discard(&m.workers[i]);
    gw_admin_free(m.admin);
    if (m.base) event_base_free(m.base);
    free(m.workers);
    gw_config_unref(cfg);
    gw_audit_close();
    gw_access_log_close();
    return 1;
}

/* --residency-report: every backend resolved and verified; exit 0 only if all are approved. */
static int residency_report(const char *file, int json)
{
    /* unknown addresses are verdicts to show, not errors */
    gw_config_t *cfg = load_or_report(file, GW_CONFIG_REPORT);
    if (!cfg) return 1;
    int ok = gw_residency_all_approved(cfg);
    if (json) {
        char *s = gw_residency_report_json(cfg);
        if (s) printf("%s\n", s);
        cJSON_free(s);
    } else {
        gw_residency_report_table(cfg, stdout);
    }
    gw_config_unref(cfg);
    return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    async_signals(SIG_BLOCK);
    const char *file = NULL;
    int test = 0, report = 0, json = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-v") == 0 || strcmp(argv[i], "--version") == 0) {
            printf("gotthard %s\n", GW_VERSION);
            return 0;
        } else if (strcmp(argv[i], "-t") == 0) {
            test = 1;
        } else if (strcmp(argv[i], "--residency-report") == 0) {
            report = 1;
        } else if (strcmp(argv[i], "--json") == 0) {
            json = 1;
        } else if (strcmp(argv[i], "-c") == 0 && i + 1 < argc) {
            file = argv[++i];
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (!file || (json && !report) || (test && report)) {
        usage(stderr);
        return 2;
    }
    /* Prompts pass through this process: they must never reach a core dump. */
    struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    signal(SIGPIPE, SIG_IGN);
    gw_tls_init();
    gw_json_init();
    gw_config_set_steps(&gw_backend_geo_config_steps); /* backends resolved and judged at load */
    if (report || test) { /* one-shot: no logs to reopen, the default actions otherwise */
        signal(SIGUSR1, SIG_IGN);
        async_signals(SIG_UNBLOCK);
    }
    if (report) return residency_report(file, json);
    if (test) {
        gw_config_t *cfg = load_or_report(file, 0);
        if (!cfg) return 1;
        gw_config_unref(cfg);
        printf("%s: ok\n", file);
        return 0;
    }
    return run(file);
}
