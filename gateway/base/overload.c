/* Overload: resident memory against limits.max_memory_bytes (docs/reliability.md).
 *
 * The main loop reads /proc/self/statm every 100 ms: a pread on a descriptor opened at start,
 * so it still works when descriptors run out. The workers only load one atomic flag per new
 * request. Over the ceiling, the heap is also trimmed (at most once a second) so that freed
 * memory goes back to the system and the flag can clear; it clears under 95% of the ceiling,
 * so that the answer does not flap around one value. */
#include "base/overload.h"

#include <dirent.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/log.h"

#define SAMPLE_MS 100
#define TRIM_EVERY 10 /* samples */

static struct {
    int statm; /* /proc/self/statm */
    long page;
    struct event *timer;
    unsigned over_samples;
    _Atomic int64_t limit;
    atomic_int over;
} ov = {.statm = -1};

/* The number at the start of a small file, or -1 ("max", absent, unreadable). */
static int64_t read_number(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    long long v = -1;
    if (fscanf(f, "%lld", &v) != 1) v = -1;
    fclose(f);
    return v > 0 ? (int64_t)v : -1;
}

/* The memory limit of this process's cgroup: v2 memory.max, else v1 memory.limit_in_bytes, each
 * in the process's own cgroup (from /proc/self/cgroup) or at the mount's root (a cgroup
 * namespace); -1 when there is none. */
static int64_t cgroup_limit(void)
{
    char line[512], path[700];
    int64_t v2 = -1, v1 = -1;
    FILE *f = fopen("/proc/self/cgroup", "r");
    while (f && fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\n")] = '\0';
        char *ctl = strchr(line, ':'), *cg = ctl ? strchr(ctl + 1, ':') : NULL;
        if (!cg) continue;
        *cg++ = '\0';
        ctl++;
        if (strcmp(line, "0") == 0 && *ctl == '\0') {
            snprintf(path, sizeof(path), "/sys/fs/cgroup%s/memory.max", cg);
            v2 = read_number(path);
        } else if (strstr(ctl, "memory")) {
            snprintf(path, sizeof(path), "/sys/fs/cgroup/memory%s/memory.limit_in_bytes", cg);
            v1 = read_number(path);
        }
    }
    if (f) fclose(f);
    if (v2 < 0) v2 = read_number("/sys/fs/cgroup/memory.max");
    if (v2 > 0) return v2;
    if (v1 < 0) v1 = read_number("/sys/fs/cgroup/memory/memory.limit_in_bytes");
    return v1;
}

int64_t gw_overload_default_limit(void)
{
    int64_t total = -1, cg = cgroup_limit();
    char line[256];
    FILE *f = fopen("/proc/meminfo", "r");
    while (f && fgets(line, sizeof(line), f)) {
        long long kb;
        if (sscanf(line, "MemTotal: %lld kB", &kb) == 1) {
            total = (int64_t)kb * 1024;
            break;
        }
    }
    if (f) fclose(f);
    int64_t avail = total > 0 && (cg <= 0 || total < cg) ? total : cg; /* v1's "none" is huge */
    return avail > 0 ? avail / 4 * 3 : 0;
}

static int64_t read_rss(void)
{
    char buf[128];
    ssize_t n = pread(ov.statm, buf, sizeof(buf) - 1, 0);
    if (n <= 0) return -1;
    buf[n] = '\0';
    char *end;
    strtoll(buf, &end, 10); /* size */
    long long resident = strtoll(end, NULL, 10);
    return resident > 0 ? (int64_t)resident * ov.page : -1;
}

static void sample(void)
{
    int64_t rss = read_rss(), limit = atomic_load(&ov.limit);
    if (rss < 0) return;
    int was = atomic_load_explicit(&ov.over, memory_order_relaxed);
    int now = limit > 0 && (was ? rss >= limit - limit / 20 : rss >= limit);
    if (now && ov.over_samples++ % TRIM_EVERY == 0) {
        malloc_trim(0); /* give freed memory back before judging again */
        rss = read_rss();
        if (rss >= 0 && (was ? rss < limit - limit / 20 : rss < limit)) now = 0;
    }
    if (!now) ov.over_samples = 0;
    if (now == was) return;
    atomic_store_explicit(&ov.over, now, memory_order_relaxed);
    if (now)
        gw_warn("resident memory %lld MiB is over limits.max_memory_bytes (%lld MiB): new requests "
                "get 503 until it is under 95%%",
                (long long)(rss >> 20), (long long)(limit >> 20));
    else
        gw_info("resident memory %lld MiB is under the ceiling again: serving new requests",
                (long long)(rss >> 20));
}

static void sample_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    sample();
}

int gw_overload_start(struct event_base *base, int64_t max_memory_bytes)
{
    ov.page = sysconf(_SC_PAGESIZE);
    ov.statm = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    if (ov.statm >= 0 && ov.page > 0) ov.timer = event_new(base, -1, EV_PERSIST, sample_cb, NULL);
    struct timeval tv = {0, SAMPLE_MS * 1000};
    if (!ov.timer || event_add(ov.timer, &tv) < 0) {
        gw_overload_stop(); /* no sampling at all: never a flag that cannot clear */
        return -1;
    }
    gw_overload_set_limit(max_memory_bytes);
    return 0;
}

void gw_overload_set_limit(int64_t max_memory_bytes)
{
    atomic_store(&ov.limit, max_memory_bytes);
    if (ov.timer)
        sample();
    else if (max_memory_bytes)
        gw_warn("limits.max_memory_bytes is not enforced: /proc/self/statm cannot be read");
}

void gw_overload_stop(void)
{
    if (ov.timer) event_free(ov.timer);
    ov.timer = NULL;
    if (ov.statm >= 0) close(ov.statm);
    ov.statm = -1;
    atomic_store(&ov.over, 0);
}

int gw_overload_memory(void)
{
    return atomic_load_explicit(&ov.over, memory_order_relaxed);
}

static long count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -1; /* out of descriptors, most likely */
    long n = -1;       /* not the directory's own descriptor */
    while (readdir(d)) n++;
    closedir(d);
    return n - 2; /* "." and ".." */
}

void gw_overload_render(struct evbuffer *out)
{
    int64_t rss = ov.statm >= 0 ? read_rss() : -1;
    if (rss >= 0)
        evbuffer_add_printf(out,
                            "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
                            "# TYPE process_resident_memory_bytes gauge\n"
                            "process_resident_memory_bytes %lld\n",
                            (long long)rss);
    long fds = count_fds();
    if (fds >= 0)
        evbuffer_add_printf(out,
                            "# HELP process_open_fds Number of open file descriptors.\n"
                            "# TYPE process_open_fds gauge\n"
                            "process_open_fds %ld\n",
                            fds);
    evbuffer_add_printf(out,
                        "# HELP gotthard_memory_limit_bytes limits.max_memory_bytes (0: none).\n"
                        "# TYPE gotthard_memory_limit_bytes gauge\n"
                        "gotthard_memory_limit_bytes %lld\n"
                        "# HELP gotthard_overloaded 1 while new requests are refused for memory.\n"
                        "# TYPE gotthard_overloaded gauge\n"
                        "gotthard_overloaded %d\n",
                        (long long)atomic_load(&ov.limit), gw_overload_memory());
}
