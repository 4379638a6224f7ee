"""Plugin ABI 3 (issue 15): an external plugin built outside the source tree against include/ only,
owning a tenant key and placed before the built-in quota plugin; a plugin of ABI 2 refused; keys
claimed twice, unknown after/before names and cycles refused with paths; the example plugin's
secret never shown and its part of GET /status."""
import hashlib
import json
import os
import shutil
import subprocess

import gwtest
from gwtest import Gateway, Mock, gateway_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEY = "gk_abi3testkey0000000000000000000000000000000"

# The plugin: in request_body (where quota admits a request), a request carrying "x-abi3-answer:
# 1" is answered by the plugin itself; every other one goes upstream with its tenant's
# "abi3_tag" (a tenant key it owns) in x-abi3-tag. Its name, position and keys come from -D.
SOURCE = r"""
#include <gotthard/plugin.h>
#include <stdlib.h>
#include <string.h>

#ifndef ABI
#define ABI GW_PLUGIN_ABI
#endif
#ifndef NAME
#define NAME "abi3"
#endif
#ifndef TKEY
#define TKEY "abi3_tag"
#endif
#ifndef CKEY
#define CKEY NULL
#endif
#ifndef BEFORE
#define BEFORE "quota"
#endif

typedef struct { const char *tag; } tenant_t;
typedef struct { size_t n; const char *ids[16], *tags[16]; } state_t;
static const gw_conf_key_t tkeys[] = {{TKEY, GW_CT_STR, offsetof(tenant_t, tag), .max = 64},
                                      {NULL}};
static const gw_conf_obj_t tobj = {sizeof(tenant_t), tkeys, NULL};

static int configure(gw_conf_ctx_t *cx, const cJSON *config, const char *path, void **state)
{
    if (getenv("ABI3_MARK_CONFIGURE")) gw_conf_error(cx, path, "configure was called");
    state_t *s = gw_conf_alloc(cx, sizeof(*s));
    if (!s) return -1;
    for (size_t i = 0; i < gw_conf_tenant_count(cx) && s->n < 16; i++) {
        const char *id = NULL, *tpath = NULL;
        const cJSON *t = gw_conf_tenant(cx, i, &id, &tpath);
        tenant_t v = {0};
        if (!t || gw_conf_load_some(cx, t, tpath, &tobj, &v) < 0) return -1;
        s->ids[s->n] = id;
        s->tags[s->n++] = v.tag;
    }
    *state = s;
    return 0;
}

static int request_body(gw_req_t *r, void *conf, void **ctx)
{
    state_t *s = conf;
    size_t n;
    const char *a = gw_req_header(r, "x-abi3-answer", &n);
    if (a && n == 1 && a[0] == '1') {
        gw_req_respond_error(r, 409, "answered_by_abi3", "The abi3 plugin answered this itself.");
        return GW_DONE;
    }
    const char *tenant = gw_req_tenant(r);
    for (size_t i = 0; tenant && i < s->n; i++)
        if (s->ids[i] && s->tags[i] && strcmp(s->ids[i], tenant) == 0 &&
            gw_req_set_upstream_header(r, "x-abi3-tag", s->tags[i]) < 0)
            return GW_ERROR;
    return GW_CONTINUE;
}

#ifdef ADMIN
/* A hostile admin side: a page answering odd statuses and a message filling its buffer, a
 * /status part that tries to replace the core's "pools". */
static int admin_report(void *state, const char *page, const char *query, cJSON *out,
                        gw_admin_err_t *err)
{
    (void)state;
    if (strcmp(page, GW_ADMIN_STATUS) == 0) {
        cJSON_AddStringToObject(out, "pools", "not the core's");
        cJSON_AddStringToObject(out, "abi3", "mine");
        return 0;
    }
    if (strcmp(page, "abi3/odd") != 0) return 0;
    cJSON_AddStringToObject(out, "partial", "never shown");
    if (query && strcmp(query, "q=full") == 0) {
        memset(err->message, '"', sizeof(err->message)); /* no NUL, all quotes */
        err->code = "bad\"code";
        return 503;
    }
    if (query && strcmp(query, "q=neg") == 0) return -1;
    return 302;
}
static const char *const pages[] = {"abi3/odd", NULL};
#endif

static const char *const tenant_keys[] = {TKEY, NULL};
static const char *const config_keys[] = {CKEY, NULL};

const gw_plugin_t gotthard_plugin = {
    .name = NAME,
    .abi = ABI,
    .config_keys = config_keys,
    .tenant_keys = tenant_keys,
    .before = BEFORE,
    .configure = configure,
    .request_body = request_body,
#ifdef ADMIN
    .admin_pages = pages,
    .admin_report = admin_report,
#endif
};
"""


def build(tmp, name="abi3.so", **defines):
    """Compiles SOURCE in tmp against include/ only: the path of the .so."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        gwtest.skip("no C compiler")
    src = os.path.join(tmp, "plugin.c")
    with open(src, "w") as f:
        f.write(SOURCE)
    out = os.path.join(tmp, name)
    args = [cc, "-shared", "-fPIC", "-std=c11", "-Wall", "-Werror", "-I", os.path.join(ROOT, "include"),
            "-I/usr/include/cjson", "-o", out, src]
    for k, v in defines.items():
        args.append("-D%s=%s" % (k, v))
    p = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, "cc failed: %s" % p.stderr[-2000:]
    return out


def tenants(**extra):
    t = {"id": "acme", "models": ["*"],
         "api_keys": [{"id": "acme-1", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}],
         "limits": {"requests_per_minute": 1}}
    t.update(extra)
    return [t]


def check(cfg, env=None):
    """gotthard -t on cfg: (exit code, everything it printed)."""
    tmp = gwtest.tempdir()
    p = os.path.join(tmp, "g.json")
    with open(p, "w") as f:
        json.dump(cfg, f)
    rc, out, err = gwtest.run_gotthard(["-t", "-c", p], env=env)
    return rc, out + err


def chat(gw, headers=None):
    h = {"authorization": "Bearer " + KEY}
    h.update(headers or {})
    return gwtest.post_json(gw.port, "/v1/chat/completions",
                            {"model": "m1", "messages": [{"role": "user", "content": "hi"}],
                             "max_tokens": 4}, headers=h, timeout=20)


def test_external_plugin_runs_before_quota_with_its_tenant_key():
    """Requests the plugin answers itself in request_body never reach quota (1 request a minute):
    it runs before quota, as it declares; its tenant key's value reaches it."""
    so = build(gwtest.tempdir())
    mock = Mock()
    gw = Gateway(gateway_config([mock.port], tenants=tenants(abi3_tag="gold"),
                                plugins=[{"path": so}]))
    for i in range(3):
        r = chat(gw, {"x-abi3-answer": "1"})
        assert r.status == 409 and r.error_code() == "answered_by_abi3", "answer %d: %s" % (
            i, r.describe())
    r = chat(gw)
    assert r.status == 200, "the quota's one request a minute was not spent: %s" % r.describe()
    rec = mock.wait_requests(1)[0]
    assert gwtest.header_values(rec, "x-abi3-tag") == ["gold"], rec["headers"]
    r = chat(gw)
    assert r.status == 429 and r.error_code() == "rate_limit_exceeded", r.describe()


def test_tenant_key_nobody_owns_is_refused_with_its_path():
    so = build(gwtest.tempdir())
    rc, text = check(gateway_config([1], tenants=tenants(abi3_tag="x", nobody_owns=1),
                                    plugins=[{"path": so}]))
    assert rc == 1 and "$.tenants[0].nobody_owns: unknown key" in text, (rc, text[-800:])
    assert "abi3_tag" not in text, text[-800:]
    # without the plugin, its key is nobody's
    rc, text = check(gateway_config([1], tenants=tenants(abi3_tag="x")))
    assert rc == 1 and "$.tenants[0].abi3_tag: unknown key" in text, (rc, text[-800:])
    rc, text = check(gateway_config([1], tenants=tenants(abi3_tag="x"), plugins=[{"path": so}]))
    assert rc == 0, text[-800:]


def refused(sos, want, env=None):
    """gotthard -t with the plugins sos (paths of .so files): refused, and want in what it says."""
    rc, text = check(gateway_config([1], tenants=tenants(), plugins=[{"path": so} for so in sos]),
                     env=env)
    assert rc == 1 and want in text, "want %r: %s" % (want, text[-800:])
    return text


def test_abi2_plugin_is_refused_without_being_called():
    so = build(gwtest.tempdir(), ABI="2")
    text = refused([so], "$.plugins[0].path: built against plugin ABI 2; this gateway loads ABI 3",
                   env={"ABI3_MARK_CONFIGURE": "1"})
    assert "configure was called" not in text, text[-800:]


def test_key_owned_twice_is_refused_naming_both():
    tmp = gwtest.tempdir()
    refused([build(tmp, "limits.so", TKEY='"limits"')],
            '$.plugins[0]: plugin "abi3" claims the tenant key "limits", which plugin "quota" owns')
    refused([build(tmp, "pools.so", CKEY='"pools"')],
            '$.plugins[0]: plugin "abi3" claims the top-level key "pools", which the core owns')


def test_unknown_position_and_cycle_are_refused_with_paths():
    tmp = gwtest.tempdir()
    refused([build(tmp, "nosuch.so", BEFORE='"nosuch"')],
            '$.plugins[0]: plugin "abi3" wants to run before "nosuch", which is no plugin')
    a = build(tmp, "a.so", NAME='"a"', BEFORE='"b"', TKEY='"a_tag"')
    b = build(tmp, "b.so", NAME='"b"', BEFORE='"a"', TKEY='"b_tag"')
    text = refused([a, b], "(after/before) make a cycle")
    assert "$.plugins[0]: " in text or "$.plugins[1]: " in text, text[-800:]


SECRET = "TOPSECRET-abi3-4711"


def example_entry(**over):
    c = {"header": "x-gotthard-example", "value": "hello", "upstream_token": SECRET}
    c.update(over)
    return [{"path": gwtest.example_plugin(), "config": c}]


def test_example_secret_never_shown_and_status_part():
    if not os.path.exists(gwtest.example_plugin()):
        raise AssertionError("example plugin not found: %s" % gwtest.example_plugin())
    # gotthard -t: accepted, the secret not printed
    rc, text = check(gateway_config([1], tenants=tenants(example_tag="gold"),
                                    plugins=example_entry()))
    assert rc == 0 and SECRET not in text, (rc, text[-800:])
    # config errors: about the secret itself, and next to it
    rc, text = check(gateway_config([1], plugins=example_entry(upstream_token=SECRET + "x" * 300)))
    assert rc == 1 and "$.plugins[0].config.upstream_token: must be at most" in text, text[-800:]
    assert SECRET not in text, text[-800:]
    rc, text = check(gateway_config([1], plugins=example_entry(delay_ms=-1, bogus=SECRET)))
    assert rc == 1 and "$.plugins[0].config.delay_ms" in text and SECRET not in text, text[-800:]
    # serving: the backend gets it, nobody else sees it
    mock = Mock()
    gw = Gateway(gateway_config([mock.port], tenants=tenants(example_tag="gold"),
                                plugins=example_entry()))
    r = chat(gw)
    assert r.status == 200 and SECRET not in r.text(), r.describe()
    rec = mock.wait_requests(1)[0]
    assert gwtest.header_values(rec, "x-example-token") == [SECRET], rec["headers"]
    assert gwtest.header_values(rec, "x-example-tag") == ["gold"], rec["headers"]
    st = gwtest.get(gw.admin_port, "/status")
    assert st.status == 200, st.describe()
    part = st.json().get("example")
    assert part and part["upstream_token"] is True and part["requests"] >= 1, st.json()
    assert part["tagged_tenants"] == 1, part
    for path in ("/status", "/privacy", "/metrics"):
        assert SECRET not in gwtest.get(gw.admin_port, path).text(), path
    assert gw.stop() == 0
    assert SECRET not in gw.stderr_text(), gw.stderr_text()[-800:]


def test_plugin_admin_errors_are_well_formed_and_parts_never_shadow():
    """A plugin's page error is always an OpenAI-shaped JSON error: a message that fills its
    buffer without a NUL is cut, quotes escaped, a code that is not a token replaced, a status
    that is no error status made 500; its partial output never shown. A plugin's /status part
    cannot replace a member of the core's."""
    so = build(gwtest.tempdir(), ADMIN=1)
    mock = Mock()
    gw = Gateway(gateway_config([mock.port], plugins=[{"path": so}]))
    for query, status in (("q=full", 503), ("q=odd", 500), ("q=neg", 500)):
        r = gwtest.get(gw.admin_port, "/abi3/odd?" + query)
        assert r.status == status, (query, r.describe())
        err = r.json()["error"]  # valid JSON, or this raises
        assert err["code"] == "internal_error" and "partial" not in r.text(), (query, r.text())
        if query == "q=full":
            assert err["message"] == '"' * 199, err
    st = gwtest.get(gw.admin_port, "/status")
    assert st.status == 200 and st.text().count('"pools"') == 1, st.text()[:400]
    assert isinstance(st.json()["pools"], list) and st.json()["abi3"] == "mine", st.json()
    assert gw.stop() == 0


if __name__ == "__main__":
    gwtest.run(globals())
