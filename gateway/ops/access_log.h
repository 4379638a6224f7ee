/* The access log: one JSON line of metadata per request, written by its own thread. */
#ifndef GW_ACCESS_LOG_H
#define GW_ACCESS_LOG_H

#include <stddef.h>
#include <stdint.h>

typedef struct gw_req gw_req_t;

/* Opens (or, with the same path, reopens) the access log at path ("-": standard output;
 * NULL: none). Runs on the main thread: a file that cannot be opened is reported here
 * (-1) and the log keeps what it had. The writer thread starts at the first open and takes
 * the new file at its next turn; lines queued before go to the old one. */
int gw_access_log_open(const char *path);
/* SIGUSR1: the same path again, for log rotation (a new file after a rename). */
int gw_access_log_reopen(void);
/* Writes what is queued and stops the writer (at exit). */
void gw_access_log_close(void);

/* One line for a finished request whose config has an access log; never blocks: a line that
 * does not fit in the calling thread's buffer is dropped and counted. A logger of the log phase
 * (gw_req_add_logger): called once per request. */
void gw_access_log_request(const gw_req_t *r);

/* A model the config does not know is logged as this (never the client's text). */
#define GW_ACCESS_LOG_UNKNOWN_MODEL "<unknown>"

/* The fields of every line, in order (NULL-terminated): what GET /privacy reports. */
extern const char *const gw_access_log_fields[];

/* Lines dropped because a buffer was full or a write failed, since start. */
uint64_t gw_access_log_dropped(void);

/* For tests: formats the line of r into buf (at most cap bytes, newline included) and
 * returns its length. */
size_t gw_access_log_format(const gw_req_t *r, char *buf, size_t cap);

#endif
