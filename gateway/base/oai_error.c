/* OpenAI-shaped error bodies for the gateway's own answers (public and admin listeners). */
#include "base/oai_error.h"

#include <stdio.h>

const char *gw_error_type(int status)
{
    switch (status) {
    case 401:
        return "authentication_error";
    case 403:
        return "permission_error";
    case 429:
        return "rate_limit_error";
    default:
        return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

size_t gw_error_json(char *buf, size_t cap, int status, const char *code, const char *message)
{
    int n = snprintf(
        buf, cap, "{\"error\":{\"message\":\"%s\",\"type\":\"%s\",\"param\":null,\"code\":\"%s\"}}",
        message, gw_error_type(status), code);
    if (n < 0 || (size_t)n >= cap) n = 0;
    if (cap) buf[n] = '\0';
    return (size_t)n;
}
