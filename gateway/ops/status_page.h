/* The status page (gateway/status_page.html), embedded at build time by status_page.cmake. */
#ifndef GW_STATUS_PAGE_H
#define GW_STATUS_PAGE_H

#include <stddef.h>

extern const unsigned char gw_status_page_html[];
extern const size_t gw_status_page_html_len;

#endif
