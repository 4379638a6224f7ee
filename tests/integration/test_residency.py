#!/usr/bin/env python3
"""Data residency (issue 5): no request ever reaches a backend outside the approved countries.

Every test builds its own site GeoIP database with gotthard-mmdb (127.0.0.1 CH, 127.0.0.2 DE,
127.0.0.4 LI; 127.0.0.3 is in no database) and runs mock backends on 127.0.0.1 (CH) and
127.0.0.2 (DE). What is checked:
- the DE backend in the same pool as the CH one never receives a byte (its own record and
  connection count): under concurrent load, while the CH backend flaps (stopped and started),
  on retries after CH failures, and after a backend host name re-resolves from the CH address
  to the DE one mid-run (through resolver.hosts_file, which the test rewrites);
- with no approved backend left: 503 residency_unavailable, an audit residency_block line and
  gotthard_residency_blocked_total; served answers carry x-gotthard-residency: CH;
- `gotthard --residency-report` (table and --json, exit 0 only when all are approved) and the
  admin GET /residency name every backend, its addresses, their countries and databases, the
  verdict and why;
- a tenant's policy narrows the global one; client_countries answers 403 residency_denied;
- unknown addresses, a missing or broken database and an empty policy refuse to start, and a
  reload with any of them keeps the old configuration, with a message naming the problem;
- the audit log: config_loaded with a policy digest, backend_verdict on every change.
"""

import json
import os
import re
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from gwtest import (Mock, Gateway, gateway_config, pool, chat, post_json, get, assert_error,  # noqa: E402
                    wait_for, run_gotthard, http_request, parse_responses)

SITE_CSV = """# test site database
127.0.0.1/32,CH
127.0.0.2/32,DE
127.0.0.4/32,LI
"""

HOSTNAME = "llm.residency.test"


# --------------------------------------------------------------------------- helpers


def mmdb_bin():
    return gwtest._bin("MMDB_BIN", "tools/mmdb/gotthard-mmdb", "gotthard-mmdb")


_DB = {}


def site_db(csv=SITE_CSV):
    """A site database built from csv by gotthard-mmdb (once per csv)."""
    if csv in _DB:
        return _DB[csv]
    gwtest._need_exec(mmdb_bin(), "gotthard-mmdb (MMDB_BIN)")
    d = gwtest.tempdir("gwtest-res-db-")
    src, dst = os.path.join(d, "site.csv"), os.path.join(d, "site.mmdb")
    with open(src, "w") as f:
        f.write(csv)
    import subprocess
    p = subprocess.run([mmdb_bin(), src, dst], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert p.returncode == 0, "gotthard-mmdb failed: %r" % p.stderr
    _DB[csv] = dst
    return dst


class HostMock(Mock):
    """A mock backend on another loopback address (127.0.0.2), optionally on a given port."""

    def __init__(self, host, port=0, name=None, args=()):
        self.host = host
        a = ["--host", host, "--port", str(port)] + (["--name", name] if name else []) + list(args)
        self.calls = 0  # our own connections to its /_mock/ endpoints
        Mock.__init__(self, args=a, models=("m1", "m2"))
        self.url = "http://%s:%d" % (host, self.port)

    def _call(self, method, path, body=None, timeout=5.0):
        import http.client
        self.calls += 1
        c = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            c.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
            r = c.getresponse()
            data = r.read()
            assert r.status == 200, "mock %s %s answered %d" % (method, path, r.status)
            return json.loads(data) if data.strip() else None
        finally:
            c.close()


def de_untouched(de):
    """The DE mock never received a request, nor a connection other than the test's own."""
    reqs = de.api_requests()
    assert reqs == [], "the DE backend received %d request(s): %r" % (len(reqs), reqs[:2])
    st = de.stats()
    assert st["requests"] == 0 and st["connections_accepted"] == de.calls, \
        "the DE backend was connected to: %r (the test's own connections: %d)" % (st, de.calls)


def backend_entry(url, country="CH", **kw):
    b = {"url": url, "country": country, "max_concurrent": 64}
    b.update(kw)
    return b


def res_config(backends, allowed=("CH",), dbs=None, pools=None, allow_refused=False, **over):
    """allow_refused: start with backends the policy refuses (residency.allow_refused_backends),
    as these tests do to show that such a backend never gets a byte."""
    res = {"allowed_countries": list(allowed)}
    if allow_refused:
        res["allow_refused_backends"] = True
    cfg = gateway_config(
        [], pools=pools or [pool("p1", ["m1"], backends)],
        geoip={"databases": dbs or [site_db()]},
        residency=res,
        audit_log={"path": "audit.log"})
    return gwtest.deep_merge(cfg, over)


def audit(gw, event=None):
    p = os.path.join(gw.dir, "audit.log")
    if not os.path.exists(p):
        return []
    with open(p) as f:
        lines = [json.loads(ln) for ln in f if ln.strip()]
    return [a for a in lines if event is None or a.get("event") == event]


def report(gw):
    r = get(gw.admin_port, "/residency")
    assert r.status == 200, r.describe()
    return r.json()


def verdict_of(rep, url):
    for b in rep["backends"]:
        if b["url"] == url:
            return b
    raise AssertionError("backend %s not in the report: %r" % (url, rep))


def metric(gw, pool_name, backend_name):
    text = get(gw.admin_port, "/metrics").text()
    m = re.search(r'^gotthard_residency_blocked_total\{pool="%s",backend="%s"\} (\d+)$'
                  % (re.escape(pool_name), re.escape(backend_name)), text, re.M)
    return int(m.group(1)) if m else 0


def served_by_ch(r):
    assert r.status == 200, r.describe()
    assert r.header("x-gotthard-residency") == "CH", "no x-gotthard-residency: CH: %s" % r.describe()
    assert r.header("x-mock-backend") == "ch", "not answered by the CH backend: %s" % r.describe()


def write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)  # the resolver never sees half a file


def load(port, n_threads, n_each, statuses, headers=None, stop=None, stream_every=3):
    """Concurrent requests; appends (status, x-gotthard-residency, x-mock-backend, code) to statuses."""
    def worker(t):
        for i in range(n_each):
            if stop is not None and stop.is_set():
                return
            body = chat(stream=(i % stream_every == 0))
            try:
                r = post_json(port, "/v1/chat/completions", body, headers=headers, timeout=20)
                statuses.append((r.status, r.header("x-gotthard-residency"), r.header("x-mock-backend"),
                                 r.error_code() if r.status != 200 else None))
            except Exception as ex:  # noqa: BLE001 - recorded, judged by the test
                statuses.append(("exception", repr(ex), None, None))
    ts = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(n_threads)]
    for t in ts:
        t.start()
    return ts


def check_statuses(statuses, allowed_errors, broken_ok=False):
    """Every 200 from CH; every error one of allowed_errors; with broken_ok, an answer cut off
    when the CH backend was stopped in the middle of it is fine too."""
    assert statuses, "no request was made"
    for st, res, mb, code in statuses:
        if st == "exception" and broken_ok and res.startswith(("IncompleteRead", "RemoteDisconnected",
                                                               "ConnectionResetError")):
            continue
        if st == 200:
            assert res == "CH" and mb == "ch", "a 200 not from the CH backend: %r" % ((st, res, mb),)
        else:
            assert (st, code) in allowed_errors, "unexpected answer %r (allowed: %r)" % ((st, res, mb, code), allowed_errors)


# --------------------------------------------------------------------------- the report


def test_report_names_the_foreign_backend_and_why():
    ch, de = Mock(args=["--name", "ch"]), HostMock("127.0.0.2", name="de")
    cfg = res_config([backend_entry(ch.url), backend_entry(de.url)])
    d = gwtest.tempdir("gwtest-res-")
    path = os.path.join(d, "gw.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    rc, out, err = run_gotthard(["--residency-report", "-c", path])
    assert rc == 1, "a refused backend must make the report exit 1: rc %d\n%s%s" % (rc, out, err)
    assert "127.0.0.2 is in DE" in out and "not allowed" in out and "refused" in out, out
    assert "approved" in out and "NOT every backend is approved" in out, out
    rc, out, err = run_gotthard(["--residency-report", "-c", path, "--json"])
    assert rc == 1, (rc, out, err)
    rep = json.loads(out)
    assert rep["policy"]["allowed_countries"] == ["CH"] and rep["policy"]["digest"].startswith("sha256:"), rep
    assert rep["all_approved"] is False
    v = verdict_of(rep, ch.url)
    assert v["verdict"] == "approved" and v["declared_country"] == "CH", v
    assert v["addresses"] == [{"address": "127.0.0.1", "country": "CH", "database": site_db(), "allowed": True}], v
    v = verdict_of(rep, de.url)
    assert v["verdict"] == "refused", v
    assert v["addresses"][0]["address"] == "127.0.0.2" and v["addresses"][0]["country"] == "DE", v
    assert v["addresses"][0]["database"] == site_db() and v["addresses"][0]["allowed"] is False, v
    assert "127.0.0.2 is in DE" in v["reason"], v
    # a declared country outside the policy is refused too, whatever its address says
    cfg = res_config([backend_entry(ch.url, country="DE")])
    with open(path, "w") as f:
        json.dump(cfg, f)
    rc, out, err = run_gotthard(["--residency-report", "-c", path, "--json"])
    assert rc == 1 and "declared country DE is not allowed" in verdict_of(json.loads(out), ch.url)["reason"], out
    # only approved backends: exit 0
    cfg = res_config([backend_entry(ch.url)])
    with open(path, "w") as f:
        json.dump(cfg, f)
    rc, out, err = run_gotthard(["--residency-report", "-c", path])
    assert rc == 0 and "every backend is approved" in out, (rc, out, err)
    # an unknown address is shown in the report (and refused), not hidden behind a config error
    cfg = res_config([backend_entry(ch.url), backend_entry("http://127.0.0.3:9")])
    with open(path, "w") as f:
        json.dump(cfg, f)
    rc, out, err = run_gotthard(["--residency-report", "-c", path, "--json"])
    assert rc == 1, (rc, out, err)
    v = verdict_of(json.loads(out), "http://127.0.0.3:9")
    assert v["verdict"] == "refused" and "127.0.0.3 is in no database" in v["reason"], v
    assert v["addresses"][0]["country"] is None, v


def test_shipped_site_database():
    """conf/geoip/site.csv, built by CMake: 127.0.0.1 is CH, 127.0.0.2 DE (the demo's ranges)."""
    db = gwtest.site_mmdb()
    ch, de = Mock(args=["--name", "ch"]), HostMock("127.0.0.2", name="de")
    d = gwtest.tempdir("gwtest-res-")
    path = os.path.join(d, "gw.json")
    with open(path, "w") as f:
        json.dump(res_config([backend_entry(ch.url), backend_entry(de.url)], dbs=[db]), f)
    rc, out, err = run_gotthard(["--residency-report", "-c", path, "--json"])
    rep = json.loads(out)
    a = verdict_of(rep, ch.url)["addresses"][0]
    b = verdict_of(rep, de.url)["addresses"][0]
    assert (a["country"], b["country"]) == ("CH", "DE"), rep


# --------------------------------------------------------------------------- never a byte to DE


def test_de_never_receives_a_byte_under_load_flaps_and_retries():
    ch, de = Mock(args=["--name", "ch"]), HostMock("127.0.0.2", name="de")
    port = ch.port
    gw = Gateway(res_config([backend_entry(ch.url), backend_entry(de.url)], workers=2, allow_refused=True))
    de_name = "127.0.0.2:%d" % de.port
    # 1. load: every answer from CH, with the residency header
    statuses = []
    for t in load(gw.port, 8, 30, statuses):
        t.join(60)
    assert len(statuses) == 240
    check_statuses(statuses, set())
    assert len(ch.api_requests()) == 240
    de_untouched(de)
    assert metric(gw, "p1", de_name) >= 240, "the DE backend's vetoes are not counted"

    # 2. retries: the CH backend fails before answering; the retry may not cross the border
    for hdr in ({"x-mock-close": "1"}, {"x-mock-reset-after": "0"}, {"x-mock-status": "503"}):
        for _ in range(5):
            r = post_json(gw.port, "/v1/chat/completions", chat(), headers=hdr)
            if "x-mock-status" in hdr:  # an answer, not a failure: never retried
                assert r.status in (502, 503) and r.header("x-gotthard-residency") == "CH", r.describe()
            else:
                assert_error(r, 502, "upstream_error")
    de_untouched(de)

    # 3. flaps: CH stopped and started again under load
    statuses = []
    stop = threading.Event()
    ts = load(gw.port, 4, 400, statuses, stop=stop, stream_every=4)
    for _ in range(3):
        time.sleep(0.3)
        ch.stop()
        time.sleep(0.3)
        ch = wait_for(lambda: _restart(port), 5, what="the CH mock back on port %d" % port)
    time.sleep(0.3)
    stop.set()
    for t in ts:
        t.join(60)
    check_statuses(statuses, {(502, "upstream_error")}, broken_ok=True)
    assert any(s[0] == 502 for s in statuses), "the flaps were not seen: %r" % statuses[:5]
    assert sum(1 for s in statuses if s[0] == 200) > 10, "too few answers served"
    de_untouched(de)
    # the gateway is still fine, and CH serves
    served_by_ch(post_json(gw.port, "/v1/chat/completions", chat()))


def _restart(port):
    try:
        return Mock(args=["--name", "ch", "--port", str(port)])
    except AssertionError:
        return None


def test_no_approved_backend_is_503_residency_unavailable():
    ch, de = Mock(args=["--name", "ch"]), HostMock("127.0.0.2", name="de")
    gw = Gateway(res_config([], pools=[pool("p1", ["m1"], [backend_entry(ch.url)]),
                                       pool("abroad", ["m2"], [backend_entry(de.url)])], allow_refused=True))
    served_by_ch(post_json(gw.port, "/v1/chat/completions", chat("m1")))
    for stream in (False, True):
        r = post_json(gw.port, "/v1/chat/completions", chat("m2", content="secret-canary", stream=stream))
        assert_error(r, 503, "residency_unavailable", canary="secret-canary")
        assert r.header("x-gotthard-residency") is None, r.describe()
    de_untouched(de)
    blocks = [a for a in audit(gw, "residency_block") if a.get("pool") == "abroad"]
    assert len(blocks) == 2 and all(b["reason"] == "no_backend_approved" and b["request_id"] for b in blocks), blocks
    assert "secret-canary" not in open(os.path.join(gw.dir, "audit.log")).read()
    assert metric(gw, "abroad", "127.0.0.2:%d" % de.port) == 2
    r = get(gw.admin_port, "/readyz")
    assert r.status == 503, "a pool without an approved backend is not ready: %s" % r.describe()


# --------------------------------------------------------------------------- re-resolution


def test_reresolution_to_a_foreign_address_is_refused_not_followed():
    ch = Mock(args=["--name", "ch"])
    de = HostMock("127.0.0.2", port=ch.port, name="de")  # the same port: only the address moves
    d = gwtest.tempdir("gwtest-res-hosts-")
    hosts = os.path.join(d, "hosts")
    write(hosts, "127.0.0.1 %s\n" % HOSTNAME)
    url = "http://%s:%d" % (HOSTNAME, ch.port)
    gw = Gateway(res_config([backend_entry(url)], resolver={"refresh_ms": 100, "hosts_file": hosts}))
    v = verdict_of(report(gw), url)
    assert v["verdict"] == "approved" and v["addresses"][0]["address"] == "127.0.0.1", v
    served_by_ch(post_json(gw.port, "/v1/chat/completions", chat()))

    # requests keep coming (keep-alive connections to CH stay open) while the name moves abroad
    statuses = []
    stop = threading.Event()
    ts = load(gw.port, 4, 100000, statuses, stop=stop)
    time.sleep(0.5)
    write(hosts, "127.0.0.2 %s\n" % HOSTNAME)
    v = wait_for(lambda: (lambda v: v if v["verdict"] == "refused" else None)(verdict_of(report(gw), url)),
                 10, what="the re-resolved backend refused")
    assert v["addresses"][0]["address"] == "127.0.0.2" and v["addresses"][0]["country"] == "DE", v
    assert "re-resolved" in v["reason"] and "127.0.0.2 is in DE" in v["reason"], v
    assert v["resolved_by"] == "re-resolution", v
    time.sleep(0.5)
    stop.set()
    for t in ts:
        t.join(60)
    check_statuses(statuses, {(503, "residency_unavailable")})
    assert statuses[-1][0] == 503, "requests after the move must be refused: %r" % (statuses[-3:],)
    assert sum(1 for s in statuses if s[0] == 200) > 0
    de_untouched(de)
    r = post_json(gw.port, "/v1/chat/completions", chat())
    assert_error(r, 503, "residency_unavailable")
    de_untouched(de)
    changes = [a for a in audit(gw, "backend_verdict") if a.get("cause") == "re-resolution"]
    assert changes and changes[-1]["verdict"] == "refused" and changes[-1]["addresses"] == "127.0.0.2=DE", changes
    assert "127.0.0.2 is in DE" in changes[-1]["reason"], changes

    # a mixed answer (CH and DE) is refused too: every address must be allowed
    write(hosts, "127.0.0.1 %s\n127.0.0.2 %s\n" % (HOSTNAME, HOSTNAME))
    wait_for(lambda: len(verdict_of(report(gw), url)["addresses"]) == 2, 10, what="two addresses")
    assert verdict_of(report(gw), url)["verdict"] == "refused"
    assert_error(post_json(gw.port, "/v1/chat/completions", chat()), 503, "residency_unavailable")
    de_untouched(de)

    # back home: approved again, served by CH
    write(hosts, "127.0.0.1 %s\n" % HOSTNAME)
    wait_for(lambda: verdict_of(report(gw), url)["verdict"] == "approved", 10, what="approved again")
    served_by_ch(post_json(gw.port, "/v1/chat/completions", chat()))
    assert audit(gw, "backend_verdict")[-1]["verdict"] == "approved"
    # the report from the command line resolves through the same hosts file
    write(hosts, "127.0.0.2 %s\n" % HOSTNAME)
    rc, out, err = run_gotthard(["--residency-report", "-c", gw.config_path], cwd=gw.dir)
    assert rc == 1 and "127.0.0.2 is in DE" in out, (rc, out, err)
    de_untouched(de)


# --------------------------------------------------------------------------- tenants


def _key(kid):
    import base64
    import hashlib
    k = "gk_" + base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
    return k, {"id": kid, "sha256": hashlib.sha256(k.encode()).hexdigest()}


def test_tenant_policy_narrows_the_global_one():
    ch, de = Mock(args=["--name", "ch"]), HostMock("127.0.0.2", name="de")
    ka, ea = _key("acme-1")
    kb, eb = _key("open-1")
    tenants = [{"id": "acme", "models": ["*"], "api_keys": [ea], "residency": {"allowed_countries": ["CH"]}},
               {"id": "open", "models": ["*"], "api_keys": [eb]}]
    gw = Gateway(res_config([], allowed=("CH", "DE"), tenants=tenants,
                            pools=[pool("p1", ["m1"], [backend_entry(ch.url), backend_entry(de.url, country="DE")]),
                                   pool("abroad", ["m2"], [backend_entry(de.url, country="DE")])]))
    for _ in range(20):
        served_by_ch(post_json(gw.port, "/v1/chat/completions", chat("m1"), headers={"Authorization": "Bearer " + ka}))
    de_untouched(de)
    assert_error(post_json(gw.port, "/v1/chat/completions", chat("m2"), headers={"Authorization": "Bearer " + ka}),
                 503, "residency_unavailable")
    de_untouched(de)
    blocks = audit(gw, "residency_block")
    assert blocks[-1]["tenant"] == "acme" and blocks[-1]["reason"] == "no_backend_approved_for_tenant", blocks
    # the other tenant is held to the global policy only: DE is allowed for it
    r = post_json(gw.port, "/v1/chat/completions", chat("m2"), headers={"Authorization": "Bearer " + kb})
    assert r.status == 200 and r.header("x-gotthard-residency") == "DE", r.describe()
    assert len(de.api_requests()) == 1


def _post_from(source, port, body, headers):
    """A request from a chosen loopback source address (127.0.0.x)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    try:
        raw = json.dumps(body).encode()
        s.sendall(http_request("POST", "/v1/chat/completions", raw,
                               [("Content-Type", "application/json"), ("Connection", "close")] + list(headers.items())))
        data = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
    finally:
        s.close()
    return parse_responses(data, "POST")[0]


def test_client_countries_403_residency_denied():
    ch = Mock(args=["--name", "ch"])
    kc, ec = _key("ch-only-1")
    kd, ed = _key("de-only-1")
    tenants = [{"id": "ch-only", "models": ["*"], "api_keys": [ec], "client_countries": ["CH"]},
               {"id": "de-only", "models": ["*"], "api_keys": [ed], "client_countries": ["DE"]}]
    gw = Gateway(res_config([backend_entry(ch.url)], tenants=tenants))
    ach, ade = {"Authorization": "Bearer " + kc}, {"Authorization": "Bearer " + kd}
    served_by_ch(_post_from("127.0.0.1", gw.port, chat(), ach))
    assert_error(_post_from("127.0.0.2", gw.port, chat(), ach), 403, "residency_denied")
    assert_error(_post_from("127.0.0.1", gw.port, chat(), ade), 403, "residency_denied")
    served_by_ch(_post_from("127.0.0.2", gw.port, chat(), ade))
    # an address no database knows: refused (fail closed)
    assert_error(_post_from("127.0.0.3", gw.port, chat(), ach), 403, "residency_denied")
    assert len(ch.api_requests()) == 2
    blocks = [a for a in audit(gw, "residency_block") if a.get("reason", "").startswith("client_country")]
    assert [b["reason"] for b in blocks] == ["client_country_not_allowed", "client_country_not_allowed",
                                             "client_country_unknown"], blocks
    text = open(os.path.join(gw.dir, "audit.log")).read()
    assert "127.0.0.2" not in text and "127.0.0.3" not in text, "a client address in the audit log"


# --------------------------------------------------------------------------- fail closed


def bad_configs(ch_url, d):
    broken = os.path.join(d, "broken.mmdb")
    with open(broken, "wb") as f:
        f.write(b"this is not a MaxMind DB file" * 10)
    missing = os.path.join(d, "missing.mmdb")
    good = [backend_entry(ch_url)]
    return [
        ("unknown address", res_config(good + [backend_entry("http://127.0.0.3:9")]),
         "$.pools[0].backends[1].url: residency: 127.0.0.3 is in no database"),
        ("missing database", res_config(good, dbs=[missing]), "$.geoip.databases[0]: cannot load the database " + missing),
        ("broken database", res_config(good, dbs=[site_db(), broken]),
         "$.geoip.databases[1]: cannot load the database " + broken),
        ("empty policy", res_config(good, allowed=()), "$.residency.allowed_countries: is empty"),
        ("no databases", res_config(good, geoip={"databases": []}), "$.geoip.databases: must list"),
        ("residency without geoip", res_config(good, geoip=None), "$.geoip: is required with residency"),
        ("bad country", res_config(good, allowed=("ch",)), "$.residency.allowed_countries[0]: must be an ISO"),
        ("tenant widens", res_config(good, tenants=[{"id": "t", "models": ["*"], "residency": {"allowed_countries": ["DE"]}}]),
         "$.tenants[0].residency.allowed_countries: DE is not allowed by the global policy"),
        ("tenant policy without global",
         gwtest.deep_merge(res_config(good, tenants=[{"id": "t", "models": ["*"], "client_countries": ["CH"]}]),
                           {"geoip": None, "residency": None}),
         "$.tenants[0].client_countries: needs the global"),
        ("unknown key", res_config(good, residency={"allowed_countries": ["CH"], "mode": "strict"}),
         "$.residency.mode: unknown key"),
    ]


def test_refuses_to_start_when_it_cannot_verify():
    ch = Mock(args=["--name", "ch"])
    d = gwtest.tempdir("gwtest-res-bad-")
    path = os.path.join(d, "gw.json")
    for what, cfg, msg in bad_configs(ch.url, d):
        with open(path, "w") as f:
            json.dump(cfg, f)
        rc, out, err = run_gotthard(["-t", "-c", path])
        assert rc == 1 and (path + ": " + msg) in err, "%s: -t gave %d, %r %r (wanted %r)" % (what, rc, out, err, msg)
        rc, out, err = run_gotthard(["-c", path])
        assert rc == 1 and msg in err, "%s: the gateway started (rc %d): %r" % (what, rc, err)
    assert ch.api_requests() == []


def test_reload_with_a_problem_keeps_the_old_config():
    ch, de = Mock(args=["--name", "ch"]), HostMock("127.0.0.2", name="de")
    d = gwtest.tempdir("gwtest-res-bad-")
    good = res_config([backend_entry(ch.url), backend_entry(de.url)], allow_refused=True)
    gw = Gateway(good)
    digest = report(gw)["policy"]["digest"]
    loaded = audit(gw, "config_loaded")
    assert len(loaded) == 1 and loaded[0]["digest"] == digest and loaded[0]["residency"] == "on", loaded
    assert loaded[0]["approved"] == "1" and loaded[0]["backends"] == "2", loaded
    verdicts = audit(gw, "backend_verdict")
    assert sorted(v["verdict"] for v in verdicts) == ["approved", "refused"], verdicts
    refused = 0
    for what, cfg, msg in bad_configs(ch.url, d):
        cfg = gwtest.deep_merge(cfg, {"listen": good["listen"], "admin": good["admin"]})
        gw.reload(cfg)
        refused += 1
        wait_for(lambda: gw.stderr_text().count("reload refused") >= refused and msg in gw.stderr_text(), 10,
                 what="reload refused naming the problem %r (%s)" % (msg, what))
        served_by_ch(post_json(gw.port, "/v1/chat/completions", chat()))
        assert report(gw)["policy"]["digest"] == digest
    de_untouched(de)
    assert len(audit(gw, "config_loaded")) == 1
    # a good reload: allowing DE changes the digest and the verdict
    gw.reload(gwtest.deep_merge(good, {"residency": {"allowed_countries": ["CH", "DE"]}}))
    wait_for(lambda: len(audit(gw, "config_loaded")) == 2, 10, what="config_loaded after the reload")
    new = audit(gw, "config_loaded")[-1]
    assert new["digest"] != digest and new["approved"] == "2", new
    assert report(gw)["all_approved"] is True


if __name__ == "__main__":
    gwtest.run(globals())
