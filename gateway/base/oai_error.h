/* OpenAI-shaped error bodies: {"error": {message, type, param, code}} for the gateway's own
 * constant codes and messages, served by the public listener and the admin listener alike. */
#ifndef GW_OAI_ERROR_H
#define GW_OAI_ERROR_H

#include <stddef.h>

/* OpenAI's error type for an HTTP status ("authentication_error", "rate_limit_error", ...). */
const char *gw_error_type(int status);
/* The error body for the gateway's own constant code and message, never request content, into
 * buf; its length (0 when it does not fit; buf then holds ""). */
size_t gw_error_json(char *buf, size_t cap, int status, const char *code, const char *message);

#endif
