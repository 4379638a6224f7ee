/* Unit tests of the request's registries (gateway/proxy/request.c): the log phase's loggers. */
#include "proxy/request.h"
#include "check.h"

static void log_a(const gw_req_t *r)
{
    (void)r;
}
static void log_b(const gw_req_t *r)
{
    (void)r;
}
static void log_c(const gw_req_t *r)
{
    (void)r;
}
static void log_d(const gw_req_t *r)
{
    (void)r;
}
static void log_e(const gw_req_t *r)
{
    (void)r;
}

int main(void)
{
    /* Room for four loggers (the metrics and the access log use two); the same one again is
     * kept once and takes no room. */
    CHECK(gw_req_add_logger(log_a) == 0, "first");
    CHECK(gw_req_add_logger(log_a) == 0, "the same again");
    CHECK(gw_req_add_logger(log_b) == 0, "second");
    CHECK(gw_req_add_logger(log_c) == 0, "third");
    CHECK(gw_req_add_logger(log_d) == 0, "fourth (the duplicate took no room)");
    CHECK(gw_req_add_logger(log_e) == -1, "a fifth: full");
    CHECK(gw_req_add_logger(log_b) == 0, "one registered is still accepted when full");
    return check_done();
}
