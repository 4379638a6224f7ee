/* Accept guard: a listener that cannot accept for want of descriptors or memory pauses for
 * 100 ms instead of spinning. libevent's listener stays enabled after a failed accept(), and
 * the listening socket stays readable while connections wait: without a pause, the loop would
 * call accept() again at once, at 100% CPU, until a descriptor came free. */
#ifndef GW_ACCEPT_GUARD_H
#define GW_ACCEPT_GUARD_H

#include <event2/event.h>
#include <event2/listener.h>

typedef struct gw_accept_guard gw_accept_guard_t;

/* who names the loop in the warning ("worker 0", "admin"). */
gw_accept_guard_t *gw_accept_guard_new(struct event_base *base, const char *who);
/* Guards l (sets its error callback); all listeners of a guard pause together. */
int gw_accept_guard_add(gw_accept_guard_t *g, struct evconnlistener *l);
/* Before its listeners are freed: a pending pause then re-enables nothing. */
void gw_accept_guard_free(gw_accept_guard_t *g);

#endif
