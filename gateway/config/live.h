/* State that outlives a config snapshot: backends' live counters, pools' wait-queue counts. */
#ifndef GW_LIVE_H
#define GW_LIVE_H

#include "config/config.h"

/*
 * A snapshot's backends and pools point into a process-wide registry, keyed by what names them
 * across configs: a backend by its pool's name and its url, a pool by its name. A reload finds
 * the same objects again, so the requests of the old snapshot and of the new one count against
 * one in-flight count, one queue and one health state. An entry lives while a snapshot refers
 * to it (requests hold their snapshot): a backend removed from the config, or whose url or pool
 * name changes, starts fresh once no snapshot names it, and so does a pool that is renamed.
 */

/* Attaches every backend and pool of c to its live state (found or made): 0, or -1 out of
 * memory. gw_live_detach gives them back (c's unref); safe on a partly attached config. */
int gw_live_attach(gw_config_t *c);
void gw_live_detach(gw_config_t *c);
/* Makes c's backend caps (max_concurrent, weight) the live ones: for the config in service
 * only, never one that may still be refused (attach gives a new backend its own at once). */
void gw_live_set_caps(const gw_config_t *c);

#endif
