/* The audit log: compliance events as JSON lines, metadata only. */
#ifndef GW_AUDIT_H
#define GW_AUDIT_H

#include <stddef.h>

/* Opens (or reopens) the audit log at path ("-": standard output, NULL: none). */
int gw_audit_open(const char *path);
void gw_audit_close(void);
/* The last (at most max, at most 200) audit events, oldest first, as a JSON text
 * {"total": events since start, "events": [{"ts", "event", ...}, ...]} (free it), or NULL. */
char *gw_audit_recent_json(size_t max);

#endif
