/* The audit log: compliance events as JSON lines, metadata only. */
#ifndef GW_AUDIT_H
#define GW_AUDIT_H

/* Opens (or reopens) the audit log at path ("-": standard output, NULL: none). */
int gw_audit_open(const char *path);
void gw_audit_close(void);

#endif
