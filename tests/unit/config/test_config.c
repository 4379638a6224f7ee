/* Unit tests of gateway/config/config.c's load sequence: the steps a higher layer registers
 * (gw_config_set_steps) run for every backend and once for the verdicts, in their place, with
 * their errors reported at the backend's url; the load flags reach them. */
#include <stdlib.h>
#include <string.h>

#include "base/json.h"
#include "check.h"
#include "config/config.h"
#include "config/load.h"

static struct {
    char hosts[4][64];
    size_t nresolved, nverdicts;
    unsigned flags;
    int fail_host; /* index whose resolution fails, or -1 */
} seen;

static int resolve_backend(gw_conf_ctx_t *cx, gw_config_t *c, gw_backend_t *b, const char *path,
                           char *err, size_t errlen)
{
    (void)cx;
    (void)path;
    CHECK(c->nbackends == 0 || c->backends, "called while backends are derived");
    CHECK(b->host && b->port && b->name, "called with the URL parsed");
    if (seen.nresolved < 4)
        snprintf(seen.hosts[seen.nresolved], sizeof(seen.hosts[0]), "%s|%s|%s", b->host, b->port,
                 b->name);
    if ((int)seen.nresolved++ == seen.fail_host) {
        snprintf(err, errlen, "cannot be resolved: test");
        return -1;
    }
    return 0;
}

static int verdicts(gw_conf_ctx_t *cx, gw_config_t *c)
{
    (void)cx;
    seen.nverdicts++;
    seen.flags = c->flags;
    return 0;
}

static const gw_config_steps_t steps = {resolve_backend, verdicts};

static const char text[] =
    "{\"listen\":[{\"address\":\"127.0.0.1:0\"}],\"admin\":{\"address\":\"127.0.0.1:0\"},"
    "\"pools\":[{\"name\":\"p\",\"models\":[\"m\"],\"backends\":["
    "{\"url\":\"http://127.0.0.1:9\",\"country\":\"CH\"},"
    "{\"url\":\"http://[::1]\",\"country\":\"CH\"}]}]}";

static gw_config_t *load(unsigned flags, int fail_host, char **errors)
{
    memset(&seen, 0, sizeof(seen));
    seen.fail_host = fail_host;
    return gw_config_load_text(text, strlen(text), flags, errors);
}

int main(void)
{
    gw_json_init();
    char *errors = NULL;
    /* Without registered steps: loaded, nothing resolved. */
    gw_config_t *c = load(0, -1, &errors);
    CHECK(c && seen.nresolved == 0 && seen.nverdicts == 0, "no steps: %s", errors ? errors : "");
    if (c) gw_config_unref(c);
    free(errors);

    gw_config_set_steps(&steps);
    c = load(GW_CONFIG_REPORT, -1, &errors);
    CHECK(c != NULL, "loaded: %s", errors ? errors : "");
    CHECK(seen.nresolved == 2, "each backend resolved once: %zu", seen.nresolved);
    CHECK(strcmp(seen.hosts[0], "127.0.0.1|9|127.0.0.1:9") == 0, "first: %s", seen.hosts[0]);
    CHECK(strcmp(seen.hosts[1], "::1|80|[::1]:80") == 0, "second: %s", seen.hosts[1]);
    CHECK(seen.nverdicts == 1 && (seen.flags & GW_CONFIG_REPORT), "verdicts once, with the flag");
    if (c) gw_config_unref(c);
    free(errors);

    c = load(0, 1, &errors);
    CHECK(!c, "a failed resolution refuses the config");
    CHECK(errors && strstr(errors, "$.pools[0].backends[1].url: cannot be resolved: test\n"),
          "said at the url: %s", errors ? errors : "");
    CHECK(seen.nverdicts == 0, "no verdicts after an error");
    if (c) gw_config_unref(c);
    free(errors);
    gw_config_set_steps(NULL);
    return check_done();
}
