/* libFuzzer target for the `cidr,country` reader of gotthard-mmdb (tools/mmdb/site_csv.c).
 *
 * The input is a CSV file; each line (with its LF, as getline gives it) is read on its own,
 * placed against an unreadable page so that a read past its length crashes. Besides "no
 * crash, no leak, no undefined behaviour", for every line:
 *   - a network has a prefix length within its family's (0..32, 0..128), no host bits set, IPv4
 *     in its first 4 bytes only, and a country of two uppercase ASCII letters;
 *   - a network written back as `cidr,country` reads as the same network;
 *   - the verdict and message are the same whatever the line end (none, LF, CRLF);
 *   - a line skipped is blank or a comment; a line refused has a message.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "guarded.h"
#include "site_csv.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Reads the n bytes at p, placed so that they end where the readable memory ends. */
static int line(const char *p, size_t n, site_net_t *net, char **err)
{
    char *at = gw_fuzz_guarded(p, n);
    memset(net, 0x5a, sizeof(*net));
    int rc = site_csv_line(at, n, net, err);
    check(rc == SITE_CSV_NET || rc == SITE_CSV_SKIP || rc == SITE_CSV_BAD);
    check(rc == SITE_CSV_BAD ? *err && **err : !*err);
    return rc;
}

static void check_net(const site_net_t *n)
{
    check(n->plen >= 0 && n->plen <= (n->v4 ? 32 : 128));
    check(n->v4 == 0 || n->v4 == 1);
    int bytes = n->v4 ? 4 : 16;
    for (int i = bytes; i < 16; i++) check(n->addr[i] == 0);
    for (int i = n->plen; i < bytes * 8; i++) check(!((n->addr[i / 8] >> (7 - i % 8)) & 1));
    check(n->cc[0] >= 'A' && n->cc[0] <= 'Z' && n->cc[1] >= 'A' && n->cc[1] <= 'Z');
    check(n->cc[2] == '\0');
}

static int same(const site_net_t *a, const site_net_t *b)
{
    return a->v4 == b->v4 && a->plen == b->plen && memcmp(a->addr, b->addr, 16) == 0 &&
           memcmp(a->cc, b->cc, 3) == 0;
}

/* Blank or a comment, as a reader would see it: spaces and tabs, then nothing or '#'. */
static int blank_or_comment(const char *p, size_t n)
{
    size_t i = 0;
    while (i < n && (p[i] == ' ' || p[i] == '\t')) i++;
    if (i < n && p[i] == '#') return 1;
    for (; i < n; i++)
        if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r' && p[i] != '\n') return 0;
    return 1;
}

static void one_line(const char *p, size_t n)
{
    /* The line without its end of line, then with LF and with CRLF. */
    size_t bare = n;
    while (bare && (p[bare - 1] == '\n' || p[bare - 1] == '\r')) bare--;
    char *lf = malloc(bare + 2);
    check(lf != NULL);
    memcpy(lf, p, bare);
    site_net_t net, net2;
    char *err = NULL, *err2 = NULL;
    int rc = line(p, n, &net, &err);
    if (rc == SITE_CSV_NET) check_net(&net);
    if (memchr(p, '\0', n))
        check(rc == SITE_CSV_BAD);
    else
        check((rc == SITE_CSV_SKIP) == blank_or_comment(p, n));
    for (int variant = 0; variant < 3; variant++) {
        size_t k = bare;
        if (variant >= 1) lf[k++] = variant == 2 ? '\r' : '\n';
        if (variant == 2) lf[k++] = '\n';
        int rc2 = line(lf, k, &net2, &err2);
        /* "x\r\r" and "x\r" differ only in what trimming removes: the same verdict. */
        check(rc2 == rc);
        if (rc == SITE_CSV_NET) check(same(&net, &net2));
        if (rc == SITE_CSV_BAD) check(strcmp(err, err2) == 0);
        free(err2);
        err2 = NULL;
    }
    free(lf);
    if (rc == SITE_CSV_NET) {
        char text[128], cidr[64];
        site_csv_format(cidr, sizeof(cidr), net.v4, net.addr, net.plen);
        int k = snprintf(text, sizeof(text), "%s,%s\n", cidr, net.cc);
        check(k > 0 && (size_t)k < sizeof(text));
        check(line(text, (size_t)k, &net2, &err2) == SITE_CSV_NET);
        check(same(&net, &net2));
    }
    free(err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > GW_FUZZ_AREA) return 0;
    const char *p = (const char *)data, *end = p + size;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) + 1 : (size_t)(end - p);
        one_line(p, n);
        p += n;
    }
    return 0;
}
