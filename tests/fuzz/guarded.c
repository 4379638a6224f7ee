/* Fuzz inputs placed against an unreadable page (guarded.h). */
#include "guarded.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static char *area; /* GW_FUZZ_AREA readable bytes, then a page that is not */

/* Maps the area and the page behind it; aborts if it cannot. */
static void guard_init(void)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    char *m =
        mmap(NULL, GW_FUZZ_AREA + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED || mprotect(m + GW_FUZZ_AREA, page, PROT_NONE) != 0) abort();
    area = m;
}

char *gw_fuzz_guarded(const char *p, size_t n)
{
    if (n > GW_FUZZ_AREA) abort();
    if (!area) guard_init();
    char *at = area + GW_FUZZ_AREA - n;
    memmove(at, p, n);
    return at;
}

const char *gw_fuzz_guard_end(void)
{
    if (!area) guard_init();
    return area + GW_FUZZ_AREA;
}
