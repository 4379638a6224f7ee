/* Diagnostics to stderr: fixed messages and named metadata, never request content. */
#include "base/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <time.h>

void gw_log(const char *level, const char *fmt, ...)
{
    char msg[1024], ts[32];
    struct timespec now;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /* One write per line, so that threads do not interleave. */
    fprintf(stderr, "%s.%03ldZ gotthard %s: %s\n", ts, now.tv_nsec / 1000000, level, msg);
}
