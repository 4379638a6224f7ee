/* gotthard-mmdb: builds a site GeoIP database in MaxMind DB format (binary format 2.0, an
 * IPv6 tree) from lines `cidr,country_iso`, readable by libmaxminddb and mmdblookup.
 *
 *   # private datacenter ranges
 *   10.1.0.0/16,CH
 *   2001:db8::/32,CH
 *
 * Each network maps to {"country": {"iso_code": "CH"}} (the GeoIP2-Country path
 * `country iso_code`). IPv4 networks are stored at ::a.b.c.d/96+n (where libmaxminddb looks
 * IPv4 addresses up in an IPv6 database) and at the IPv4-mapped ::ffff:a.b.c.d/96+n. A more
 * specific network inside a larger one wins; the same network twice with different countries is
 * an error. Every input error is reported as `IN.csv:LINE: message`, the exit status is 1 and
 * no output file is left behind (the database is written to a temporary file and renamed).
 * build_epoch is SOURCE_DATE_EPOCH when set (reproducible builds), else the current time.
 *
 * Depends on libc only. */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "site_csv.h"

#define PROG "gotthard-mmdb"
#define MAX_ERRORS 50

/* ---------------------------------------------------------------- the prefix trie */

typedef struct {
    int32_t child[2]; /* trie node index, -1: none */
    int32_t country;  /* index into countries[], -1: no network ends here */
    int32_t line;     /* input line of the network ending here */
    int32_t number;   /* search tree node number, -1: a leaf (no more specific networks) */
} tnode_t;

static tnode_t *nodes;
static size_t nnodes, capnodes;

static char (*countries)[3];
static size_t ncountries, capcountries;

static const char *in_name;
static size_t nnetworks;
static int nerrors;

static void die_oom(void)
{
    fprintf(stderr, PROG ": out of memory\n");
    exit(1);
}

static void *grow(void *p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) return p;
    size_t n = *cap ? *cap : 64;
    while (n < need) {
        if (n > SIZE_MAX / 2 / elem) die_oom();
        n *= 2;
    }
    void *q = realloc(p, n * elem);
    if (!q) die_oom();
    *cap = n;
    return q;
}

static int32_t new_node(void)
{
    if (nnodes >= INT32_MAX - 1) die_oom();
    nodes = grow(nodes, &capnodes, nnodes + 1, sizeof *nodes);
    tnode_t *n = &nodes[nnodes];
    n->child[0] = n->child[1] = -1;
    n->country = -1;
    n->line = 0;
    n->number = -1;
    return (int32_t)nnodes++;
}

static int32_t country_index(const char *cc)
{
    for (size_t i = 0; i < ncountries; i++)
        if (countries[i][0] == cc[0] && countries[i][1] == cc[1]) return (int32_t)i;
    countries = grow(countries, &capcountries, ncountries + 1, sizeof *countries);
    countries[ncountries][0] = cc[0];
    countries[ncountries][1] = cc[1];
    countries[ncountries][2] = '\0';
    return (int32_t)ncountries++;
}

static void line_error(long line, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void line_error(long line, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s:%ld: ", in_name, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    if (++nerrors == MAX_ERRORS) {
        fprintf(stderr, "%s: too many errors, stopping\n", in_name);
        exit(1);
    }
}

static int bit_at(const uint8_t a[16], int i)
{
    return (a[i / 8] >> (7 - i % 8)) & 1;
}

/* Records the network addr/plen (an IPv6 prefix) as country cc from input line `line`.
 * Returns the trie node of an earlier, identical network with another country, else -1. */
static int32_t insert(const uint8_t addr[16], int plen, int32_t cc, long line)
{
    int32_t n = 0;
    for (int i = 0; i < plen; i++) {
        int b = bit_at(addr, i);
        if (nodes[n].child[b] < 0) {
            int32_t c = new_node(); /* may move nodes[] */
            nodes[n].child[b] = c;
        }
        n = nodes[n].child[b];
    }
    if (nodes[n].country >= 0)
        return nodes[n].country != cc ? n : -1; /* the same country again is harmless */
    nodes[n].country = cc;
    nodes[n].line = (int32_t)line;
    return -1;
}

/* ---------------------------------------------------------------- input */

/* Inserts a checked network (site_csv.c) from input line `line`. */
static void add_network(const site_net_t *n, long line)
{
    int32_t ci = country_index(n->cc);
    char shown[64];
    site_csv_format(shown, sizeof shown, n->v4, n->addr, n->plen);
    for (int k = 0; k < (n->v4 ? 2 : 1); k++) {
        uint8_t m[16];
        int mlen = n->plen;
        if (n->v4) {
            /* ::a.b.c.d/96+n, then the IPv4-mapped ::ffff:a.b.c.d/96+n. */
            memset(m, 0, sizeof m);
            if (k == 1) m[10] = m[11] = 0xff;
            memcpy(m + 12, n->addr, 4);
            mlen += 96;
        } else {
            memcpy(m, n->addr, sizeof m);
        }
        int32_t prev = insert(m, mlen, ci, line);
        if (prev >= 0) {
            line_error(line, "%s is %s here but already %s on line %ld (the same network)", shown,
                       n->cc, countries[nodes[prev].country], (long)nodes[prev].line);
            return;
        }
    }
    nnetworks++;
}

static void read_input(FILE *f)
{
    char *buf = NULL;
    size_t cap = 0;
    ssize_t n;
    long line = 0;
    while ((n = getline(&buf, &cap, f)) >= 0) {
        line++;
        site_net_t net;
        char *err;
        int rc = site_csv_line(buf, (size_t)n, &net, &err);
        if (rc == SITE_CSV_NET) {
            add_network(&net, line);
        } else if (rc == SITE_CSV_BAD) {
            if (!err) die_oom();
            line_error(line, "%s", err);
            free(err);
        }
    }
    free(buf);
}

/* ---------------------------------------------------------------- output buffer */

typedef struct {
    uint8_t *p;
    size_t len, cap;
} buf_t;

static void put(buf_t *b, const void *data, size_t n)
{
    b->p = grow(b->p, &b->cap, b->len + n, 1);
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void put_byte(buf_t *b, unsigned v)
{
    uint8_t c = (uint8_t)v;
    put(b, &c, 1);
}

/* MaxMind DB data types. */
enum { T_UTF8 = 2, T_UINT16 = 5, T_UINT32 = 6, T_MAP = 7, T_UINT64 = 9, T_ARRAY = 11 };

/* A control byte (and extended type byte, and size bytes) for `type` with payload size `size`. */
static void put_ctrl(buf_t *b, int type, size_t size)
{
    unsigned t = type <= 7 ? (unsigned)type << 5 : 0;
    uint8_t ext[4];
    size_t next = 0;
    unsigned sz;
    if (size < 29) {
        sz = (unsigned)size;
    } else if (size < 29 + 256) {
        sz = 29;
        ext[next++] = (uint8_t)(size - 29);
    } else if (size < 285 + 65536) {
        sz = 30;
        size -= 285;
        ext[next++] = (uint8_t)(size >> 8);
        ext[next++] = (uint8_t)size;
    } else {
        sz = 31;
        size -= 65821;
        ext[next++] = (uint8_t)(size >> 16);
        ext[next++] = (uint8_t)(size >> 8);
        ext[next++] = (uint8_t)size;
    }
    put_byte(b, t | sz);
    if (type > 7) put_byte(b, (unsigned)type - 7);
    put(b, ext, next);
}

static void put_str(buf_t *b, const char *s)
{
    size_t n = strlen(s);
    put_ctrl(b, T_UTF8, n);
    put(b, s, n);
}

static void put_uint(buf_t *b, int type, uint64_t v)
{
    uint8_t be[8];
    size_t n = 0;
    for (int i = 7; i >= 0; i--) {
        uint8_t byte = (uint8_t)(v >> (8 * i));
        if (n || byte) be[n++] = byte;
    }
    put_ctrl(b, type, n);
    put(b, be, n);
}

/* ---------------------------------------------------------------- the search tree */

static uint32_t node_count;

/* Numbers the trie nodes that become search tree nodes (those with a more specific network
 * below them, and always the root), depth first so the root is node 0. */
static void number_nodes(int32_t n, int depth)
{
    nodes[n].number = (int32_t)node_count++;
    for (int b = 0; b < 2; b++) {
        int32_t c = nodes[n].child[b];
        if (c >= 0 && depth + 1 < 128 && (nodes[c].child[0] >= 0 || nodes[c].child[1] >= 0))
            number_nodes(c, depth + 1);
    }
}

static uint64_t leaf_record(int32_t country, const uint32_t *data_off)
{
    if (country < 0) return node_count; /* no data: "not found" */
    return (uint64_t)node_count + 16 + data_off[country];
}

static void put_record_pair(buf_t *b, int record_size, uint64_t l, uint64_t r)
{
    uint8_t o[8];
    switch (record_size) {
    case 24:
        o[0] = (uint8_t)(l >> 16), o[1] = (uint8_t)(l >> 8), o[2] = (uint8_t)l;
        o[3] = (uint8_t)(r >> 16), o[4] = (uint8_t)(r >> 8), o[5] = (uint8_t)r;
        put(b, o, 6);
        break;
    case 28:
        o[0] = (uint8_t)(l >> 16), o[1] = (uint8_t)(l >> 8), o[2] = (uint8_t)l;
        o[3] = (uint8_t)(((l >> 24) & 0x0f) << 4 | ((r >> 24) & 0x0f));
        o[4] = (uint8_t)(r >> 16), o[5] = (uint8_t)(r >> 8), o[6] = (uint8_t)r;
        put(b, o, 7);
        break;
    default:
        for (int i = 0; i < 4; i++) {
            o[i] = (uint8_t)(l >> (24 - 8 * i));
            o[4 + i] = (uint8_t)(r >> (24 - 8 * i));
        }
        put(b, o, 8);
        break;
    }
}

/* Writes the records of search tree node n (and, depth first, of the nodes below it) in node
 * number order; `inherited` is the country of the most specific network containing n. */
static void emit_nodes(buf_t *b, int record_size, int32_t n, int32_t inherited,
                       const uint32_t *data_off)
{
    if (nodes[n].country >= 0) inherited = nodes[n].country;
    uint64_t rec[2];
    for (int k = 0; k < 2; k++) {
        int32_t c = nodes[n].child[k];
        if (c < 0)
            rec[k] = leaf_record(inherited, data_off);
        else if (nodes[c].number >= 0)
            rec[k] = (uint64_t)nodes[c].number;
        else
            rec[k] = leaf_record(nodes[c].country >= 0 ? nodes[c].country : inherited, data_off);
    }
    put_record_pair(b, record_size, rec[0], rec[1]);
    for (int k = 0; k < 2; k++) {
        int32_t c = nodes[n].child[k];
        if (c >= 0 && nodes[c].number >= 0) emit_nodes(b, record_size, c, inherited, data_off);
    }
}

/* ---------------------------------------------------------------- main */

static char *tmp_path;
static buf_t data, db;     /* the data section; the whole file */
static uint32_t *data_off; /* offset of each country's record in the data section */

static void free_all(void)
{
    free(tmp_path);
    free(db.p);
    free(data.p);
    free(data_off);
    free(nodes);
    free(countries);
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: " PROG " [--record-size 24|28|32] IN.csv OUT.mmdb\n"
            "Builds a MaxMind DB (IPv6 tree, binary format 2.0) from lines 'cidr,country', e.g.\n"
            "  10.1.0.0/16,CH\n"
            "  2001:db8::/32,CH\n"
            "('#' comments and blank lines allowed). Each network maps to\n"
            "{\"country\": {\"iso_code\": \"CH\"}}; IPv4 networks are stored at ::/96 and at\n"
            "::ffff:0:0/96. A more specific network inside a larger one wins. Errors are reported\n"
            "as 'IN.csv:LINE: message' (exit 1, no output written). build_epoch is\n"
            "SOURCE_DATE_EPOCH when set. The record size is the smallest that fits\n"
            "unless given.\n");
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int fail_output(const char *out, const char *what, int fd)
{
    int e = errno;
    fprintf(stderr, PROG ": %s: %s: %s\n", out, what, strerror(e));
    if (fd >= 0) close(fd);
    if (tmp_path) unlink(tmp_path);
    return 1;
}

/* The options: fills *record_size (0: the smallest that fits), *in and *out. Returns -1 to go
 * on, else the exit status. */
static int parse_args(int argc, char **argv, int *record_size, const char **in, const char **out)
{
    int argi = 1;
    *record_size = 0;
    if (argc == 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
        usage(stdout);
        return 0;
    }
    if (argc >= 3 && !strcmp(argv[1], "--record-size")) {
        *record_size = atoi(argv[2]);
        if (strcmp(argv[2], "24") && strcmp(argv[2], "28") && strcmp(argv[2], "32")) {
            fprintf(stderr, PROG ": --record-size must be 24, 28 or 32\n");
            return 2;
        }
        argi = 3;
    }
    if (argc - argi != 2) {
        usage(stderr);
        return 2;
    }
    *in = argv[argi];
    *out = argv[argi + 1];
    return -1;
}

/* build_epoch: SOURCE_DATE_EPOCH when set, else now. Returns 0, or 1 when it is not a number. */
static int build_epoch(time_t *epoch)
{
    *epoch = time(NULL);
    const char *sde = getenv("SOURCE_DATE_EPOCH");
    if (sde && *sde) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(sde, &end, 10);
        if (errno || *end || sde[0] == '-') {
            fprintf(stderr, PROG ": SOURCE_DATE_EPOCH '%s' is not a number of seconds\n", sde);
            return 1;
        }
        *epoch = (time_t)v;
    }
    return 0;
}

/* Reads in_name into the trie. Returns 0, or 1 when it cannot be read or holds an error or no
 * network (each reported). */
static int load_input(void)
{
    FILE *f = fopen(in_name, "r");
    if (!f) {
        fprintf(stderr, PROG ": %s: %s\n", in_name, strerror(errno));
        return 1;
    }
    new_node(); /* the root, ::/0 */
    read_input(f);
    if (ferror(f)) {
        fprintf(stderr, PROG ": %s: read error\n", in_name);
        fclose(f);
        return 1;
    }
    fclose(f);
    if (nerrors) return 1;
    if (ncountries == 0) {
        fprintf(stderr, "%s: no networks (every line is blank or a comment)\n", in_name);
        return 1;
    }
    return 0;
}

/* Data section: one {"country": {"iso_code": CC}} per country, at data_off[i]. */
static void put_data_section(void)
{
    data_off = calloc(ncountries, sizeof *data_off);
    if (!data_off) die_oom();
    for (size_t i = 0; i < ncountries; i++) {
        data_off[i] = (uint32_t)data.len;
        put_ctrl(&data, T_MAP, 1);
        put_str(&data, "country");
        put_ctrl(&data, T_MAP, 1);
        put_str(&data, "iso_code");
        put_str(&data, countries[i]);
    }
}

/* The record size for the numbered tree: *record_size if given and large enough, else the
 * smallest that fits. Returns 0, or 1 (reported). */
static int choose_record_size(int *record_size)
{
    uint64_t max_record = (uint64_t)node_count + 16 + data.len;
    int fits = max_record < (1ull << 24) ? 24 : max_record < (1ull << 28) ? 28 : 32;
    if (max_record >= (1ull << 32)) {
        fprintf(stderr, "%s: too many networks for a MaxMind DB\n", in_name);
        return 1;
    }
    if (!*record_size)
        *record_size = fits;
    else if (*record_size < fits) {
        fprintf(stderr, PROG ": --record-size %d is too small for %u nodes (needs %d)\n",
                *record_size, node_count, fits);
        return 1;
    }
    return 0;
}

/* The metadata section, after its marker, at the end of the file. */
static void put_metadata(int record_size, time_t epoch)
{
    static const uint8_t marker[] = "\xAB\xCD\xEFMaxMind.com";
    put(&db, marker, sizeof marker - 1);
    put_ctrl(&db, T_MAP, 9);
    put_str(&db, "binary_format_major_version");
    put_uint(&db, T_UINT16, 2);
    put_str(&db, "binary_format_minor_version");
    put_uint(&db, T_UINT16, 0);
    put_str(&db, "build_epoch");
    put_uint(&db, T_UINT64, (uint64_t)epoch);
    put_str(&db, "database_type");
    put_str(&db, "Gotthard-Site-Country");
    put_str(&db, "description");
    put_ctrl(&db, T_MAP, 1);
    put_str(&db, "en");
    put_str(&db, "gotthard site database (gotthard-mmdb): country per network");
    put_str(&db, "ip_version");
    put_uint(&db, T_UINT16, 6);
    put_str(&db, "languages");
    put_ctrl(&db, T_ARRAY, 1);
    put_str(&db, "en");
    put_str(&db, "node_count");
    put_uint(&db, T_UINT32, node_count);
    put_str(&db, "record_size");
    put_uint(&db, T_UINT16, (uint64_t)record_size);
}

/* Writes db to OUT.tmp.XXXXXX beside out, then renames it over out. Returns 0, or 1 (reported,
 * the temporary file removed). */
static int write_output(const char *out)
{
    size_t tl = strlen(out) + sizeof ".tmp.XXXXXX";
    tmp_path = malloc(tl);
    if (!tmp_path) die_oom();
    snprintf(tmp_path, tl, "%s.tmp.XXXXXX", out);
    int fd = mkstemp(tmp_path);
    if (fd < 0) {
        free(tmp_path);
        tmp_path = NULL;
        return fail_output(out, "cannot create a temporary file beside it", -1);
    }
    mode_t um = umask(0);
    umask(um);
    if (fchmod(fd, 0666 & ~um) < 0) return fail_output(out, "chmod", fd);
    if (write_all(fd, db.p, db.len) < 0) return fail_output(out, "write", fd);
    if (fsync(fd) < 0) return fail_output(out, "fsync", fd);
    if (close(fd) < 0) return fail_output(out, "close", -1);
    if (rename(tmp_path, out) < 0) return fail_output(out, "rename", -1);
    return 0;
}

int main(int argc, char **argv)
{
    int record_size;
    const char *out = NULL;
    int rc = parse_args(argc, argv, &record_size, &in_name, &out);
    if (rc >= 0) return rc;
    time_t epoch;
    if (build_epoch(&epoch)) return 1;
    atexit(free_all);
    if (load_input()) return 1;

    put_data_section();
    number_nodes(0, 0);
    if (choose_record_size(&record_size)) return 1;
    emit_nodes(&db, record_size, 0, -1, data_off);
    static const uint8_t zeros[16];
    put(&db, zeros, sizeof zeros);
    put(&db, data.p, data.len);
    put_metadata(record_size, epoch);
    if (write_output(out)) return 1;

    printf("%s: %zu networks in %zu countries, %u nodes, record size %d, %zu bytes\n", out,
           nnetworks, ncountries, node_count, record_size, db.len);
    return 0;
}
