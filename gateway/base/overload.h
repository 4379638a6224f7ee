/* Overload: the process's resident memory held against limits.max_memory_bytes. Past the
 * ceiling new requests are answered 503 server_overloaded; requests and streams already
 * running go on. Sampled on the main loop, read by the workers through one atomic flag. */
#ifndef GW_OVERLOAD_H
#define GW_OVERLOAD_H

#include <stdint.h>

#include <event2/buffer.h>
#include <event2/event.h>

/* limits.max_memory_bytes when the config does not set it: 3/4 of the smaller of this process's
 * cgroup memory limit (v2 memory.max, v1 memory.limit_in_bytes) and MemTotal; 0 (none) when
 * neither can be read. */
int64_t gw_overload_default_limit(void);
/* Starts sampling on base (every 100 ms). Returns 0, or -1 (no /proc/self/statm). */
int gw_overload_start(struct event_base *base, int64_t max_memory_bytes);
/* A reload's new ceiling (0: none); takes effect at once. */
void gw_overload_set_limit(int64_t max_memory_bytes);
void gw_overload_stop(void);
/* 1 while the resident memory is over the ceiling (and not yet back under 95% of it). */
int gw_overload_memory(void);
/* process_resident_memory_bytes, process_open_fds, gotthard_memory_limit_bytes and
 * gotthard_overloaded, in Prometheus text. */
void gw_overload_render(struct evbuffer *out);

#endif
