/* The audit log: compliance events as JSON lines, metadata only.
 *
 * Each event is one write(2) of one line to a file opened with O_APPEND, so lines from
 * several workers never interleave. Events are rare (a failed authentication, a residency
 * decision, a reload): they do not need the access log's buffering. The last events are also
 * kept in memory (metadata only, as in the file) for the admin listener. */
#include "base/audit.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "gotthard/plugin.h"
#include "base/log.h"

static atomic_int audit_fd = -1;
static int parked = -1; /* a number kept open on /dev/null while the log is off (main only) */

/* Opening again (a reload, a rotation) never changes the descriptor number workers write to:
 * the new file is dup3'ed onto it, atomically. Closing it instead would let a worker's
 * write land on whatever reuses the number next, a client socket say. */
int gw_audit_open(const char *path)
{
    int fd = -1;
    if (path && strcmp(path, "-") == 0) {
        fd = fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 0);
    } else if (path) {
        fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
        if (fd < 0) {
            gw_error("cannot open the audit log %s: %s", path, strerror(errno));
            return -1;
        }
    }
    int cur = atomic_load(&audit_fd), target = cur >= 0 ? cur : parked;
    if (target < 0) {
        atomic_store(&audit_fd, fd);
        return 0;
    }
    if (fd < 0) { /* off: writes stop; the number stays, on /dev/null, for the next open */
        atomic_store(&audit_fd, -1);
        fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
        if (fd >= 0 && dup3(fd, target, O_CLOEXEC) >= 0) parked = target;
        if (fd >= 0) close(fd);
        return 0;
    }
    if (dup3(fd, target, O_CLOEXEC) < 0) {
        gw_error("cannot switch the audit log: %s", strerror(errno));
        close(fd);
        return -1;
    }
    close(fd);
    parked = -1;
    atomic_store(&audit_fd, target);
    return 0;
}

void gw_audit_close(void)
{
    int old = atomic_exchange(&audit_fd, -1);
    if (old >= 0) close(old);
    if (parked >= 0) close(parked);
    parked = -1;
}

/* The last RECENT_LINES events, in memory for the admin GET /audit/recent and the status
 * page: the same metadata lines as the file, kept whether or not the file is on. */
#define RECENT_LINES 200
static struct {
    pthread_mutex_t lock;
    char *line[RECENT_LINES];
    uint64_t next; /* events seen since start; line[next % RECENT_LINES] is the oldest */
} recent = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void remember(char *line)
{
    pthread_mutex_lock(&recent.lock);
    char **slot = &recent.line[recent.next % RECENT_LINES];
    free(*slot);
    *slot = line;
    recent.next++;
    pthread_mutex_unlock(&recent.lock);
}

char *gw_audit_recent_json(size_t max)
{
    if (max > RECENT_LINES) max = RECENT_LINES;
    pthread_mutex_lock(&recent.lock);
    uint64_t have = recent.next < RECENT_LINES ? recent.next : RECENT_LINES;
    if (max > have) max = (size_t)have;
    /* exactly: the prefix, the lines, a comma between two, "]}" and the NUL */
    int pre = snprintf(NULL, 0, "{\"total\":%llu,\"events\":[", (unsigned long long)recent.next);
    size_t len = (size_t)(pre > 0 ? pre : 0) + (max ? max - 1 : 0) + 3;
    for (uint64_t i = recent.next - max; i < recent.next; i++)
        len += strlen(recent.line[i % RECENT_LINES]);
    char *out = pre > 0 ? malloc(len) : NULL, *p = out;
    if (out) {
        p += snprintf(p, len, "{\"total\":%llu,\"events\":[", (unsigned long long)recent.next);
        for (uint64_t i = recent.next - max; i < recent.next; i++) {
            const char *l = recent.line[i % RECENT_LINES];
            size_t n = strlen(l);
            memcpy(p, l, n);
            p += n;
            if (i + 1 < recent.next) *p++ = ',';
        }
        memcpy(p, "]}", 3);
    }
    pthread_mutex_unlock(&recent.lock);
    return out;
}

void gw_audit(const char *event, ...)
{
    int fd = atomic_load(&audit_fd);
    cJSON *o = cJSON_CreateObject();
    if (!o) return;
    char ts[40];
    struct timespec now;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    size_t n = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof(ts) - n, ".%03ldZ", now.tv_nsec / 1000000);
    cJSON_AddStringToObject(o, "ts", ts);
    cJSON_AddStringToObject(o, "event", event);
    va_list ap;
    va_start(ap, event);
    for (const char *name; (name = va_arg(ap, const char *));) {
        const char *value = va_arg(ap, const char *);
        cJSON_AddStringToObject(o, name, value ? value : "");
    }
    va_end(ap);
    char *line = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!line) return;
    size_t len = strlen(line);
    char *buf = malloc(len + 2);
    if (buf) {
        memcpy(buf, line, len);
        buf[len] = '\n';
        if (fd >= 0 && write(fd, buf, len + 1) < 0)
            gw_warn("cannot write the audit log: %s", strerror(errno));
        buf[len] = '\0';
        remember(buf);
    }
    cJSON_free(line);
}
