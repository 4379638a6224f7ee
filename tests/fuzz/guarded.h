/* Fuzz inputs placed against an unreadable page: a read past an input's length crashes at once,
 * also in code built without instrumentation (cJSON, libc). libFuzzer's own buffers have no
 * such page behind them. */
#ifndef GW_FUZZ_GUARDED_H
#define GW_FUZZ_GUARDED_H

#include <stddef.h>
#include <stdlib.h>

#define GW_FUZZ_AREA (1u << 20) /* the largest input that can be placed */

/* The fuzz targets' assertion: a broken property is a finding, so it aborts. */
static inline void check(int ok)
{
    if (!ok) abort();
}

/* The n bytes at p (n <= GW_FUZZ_AREA; p may lie in the area), copied to end where the
 * readable memory ends. The area and the page behind it are mapped at the first call. */
char *gw_fuzz_guarded(const char *p, size_t n);
/* Where the readable memory ends: gw_fuzz_guarded(p, n) == gw_fuzz_guard_end() - n. */
const char *gw_fuzz_guard_end(void);

#endif
