"""Hot reload under load (issue 8): SIGHUP and POST /reload on the admin listener.

What is checked:
- under steady load (keep-alive client threads and streams through the mock backend), 20
  reloads alternating valid and invalid configs, by SIGHUP and by POST /reload, cause zero
  failed requests and zero broken streams; gotthard_reloads_total counts 10 ok and 10 refused;
- POST /reload answers 200 {"status": "reloaded"}, or 422 with an OpenAI-shaped error and the
  config's problems ("$.path: message"); the reason is logged and audited (config_refused);
  the old configuration keeps serving;
- /reload takes POST only (405 in JSON otherwise), and a POST from another origin (a web page
  in a browser) is refused with 403 and reloads nothing;
- (issue 22) 50 reloads, 20 of them refused at every kind of check, under traffic of a tenant
  with quotas through a backend with max_concurrent: zero failed requests or broken streams,
  the backend never runs more than max_concurrent, a tenant at its per-minute limit stays there
  across every reload, /usage counts exactly the requests served, and the in-flight and queued
  counts are back to zero at the end.
"""

import http.client
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
import promtext  # noqa: E402
from gwtest import Gateway, Mock, gateway_config, pool, wait_for  # noqa: E402

LOAD_SECONDS_MAX = 40  # the load stops by then whatever happens
CLIENTS = 4
STREAMERS = 2


def valid_a(mock):
    return gateway_config([mock.port], models=("m1", "m2"), workers=2)


def valid_b(base, mock):
    """Same sockets, different pools and timeouts: a real change."""
    c = json.loads(json.dumps(base))
    c["pools"] = [pool("p1", ["m1"], [mock.port]), pool("p2", ["m2"], [mock.port])]
    c["timeouts"]["upstream_idle_ms"] = 30000
    return c


def invalid_variants(base):
    unknown_key = dict(base, bogus_key=1)
    bad_tenant = dict(base, tenants=[{"id": "bad id!", "models": ["*"], "api_keys": []}])
    other_admin = json.loads(json.dumps(base))
    other_admin["admin"]["address"] = "127.0.0.1:%d" % gwtest.free_port()  # needs a restart
    return ["{ this is not json", unknown_key, bad_tenant, other_admin]


def write(gw, cfg):
    with open(gw.config_path, "w") as f:
        f.write(cfg if isinstance(cfg, str) else json.dumps(cfg, indent=2))


def reloads(gw):
    fams = promtext.parse(gwtest.get(gw.admin_port, "/metrics").body.decode())
    return (int(promtext.value(fams, "gotthard_reloads_total", result="ok")),
            int(promtext.value(fams, "gotthard_reloads_total", result="refused")))


def post_reload(gw, headers=None):
    return gwtest.request(gw.admin_port, "POST", "/reload", body=b"", headers=headers or {}, timeout=30)


class Load:
    """Keep-alive clients and streamers, until stop() or LOAD_SECONDS_MAX."""

    def __init__(self, gw, headers=None):
        self.gw = gw
        self.headers = headers or {}
        self.stop_ev = threading.Event()
        self.deadline = time.monotonic() + LOAD_SECONDS_MAX
        self.lock = threading.Lock()
        self.ok = self.failed = self.streams_ok = self.streams_broken = 0
        self.failures = []
        self.threads = [threading.Thread(target=self.client, daemon=True) for _ in range(CLIENTS)]
        self.threads += [threading.Thread(target=self.streamer, daemon=True) for _ in range(STREAMERS)]
        for t in self.threads:
            t.start()

    def running(self):
        return not self.stop_ev.is_set() and time.monotonic() < self.deadline

    def note(self, ok, what=None, stream=False):
        with self.lock:
            if stream:
                self.streams_ok += ok
                self.streams_broken += not ok
            else:
                self.ok += ok
                self.failed += not ok
            if not ok and len(self.failures) < 10:
                self.failures.append(what)

    def client(self):
        body = json.dumps({"model": "m1", "messages": [{"role": "user", "content": "hi"}],
                           "max_tokens": 4})
        conn = http.client.HTTPConnection("127.0.0.1", self.gw.port, timeout=10)
        n = 0
        while self.running() and n < 20000:
            n += 1
            try:
                conn.request("POST", "/v1/chat/completions", body=body,
                             headers=dict(self.headers, **{"content-type": "application/json"}))
                r = conn.getresponse()
                data = r.read()
                ok = r.status == 200 and b'"choices"' in data
                self.note(ok, "HTTP %d %r" % (r.status, data[:200]))
                if r.getheader("connection", "").lower() == "close":
                    conn.close()
            except (OSError, http.client.HTTPException) as ex:
                self.note(False, "client: %r" % ex)
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.gw.port, timeout=10)
        conn.close()

    def streamer(self):
        body = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        n = 0
        while self.running() and n < 2000:
            n += 1
            try:
                c, r = gwtest.open_stream(self.gw.port, "/v1/chat/completions", body,
                                          headers=dict(self.headers, **{"x-mock-tokens": "10",
                                                                        "x-mock-token-ms": "20"}))
                try:
                    evs = list(gwtest.iter_sse(c, r)) if r.status == 200 else []
                finally:
                    c.close()
                ok = r.status == 200 and r.complete and evs and evs[-1] == "[DONE]" and len(evs) == 12
                self.note(ok, "stream: HTTP %d complete=%s events=%d last=%r" % (
                    r.status, r.complete, len(evs), evs[-1] if evs else None), stream=True)
            except (OSError, AssertionError) as ex:
                self.note(False, "stream: %r" % ex, stream=True)

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(30)
        assert not any(t.is_alive() for t in self.threads), "load threads did not end"


def test_twenty_reloads_under_load_drop_nothing():
    mock = Mock()
    base = valid_a(mock)
    gw = Gateway(base)
    good = [base, valid_b(base, mock)]
    bad = invalid_variants(base)
    load = Load(gw)
    try:
        wait_for(lambda: load.ok > 20 and load.streams_ok > 2, timeout=10, what="the load to run")
        for i in range(20):
            valid = i % 2 == 0
            cfg = good[(i // 2) % 2] if valid else bad[(i // 2) % len(bad)]
            by_post = (i // 2) % 2 == 1  # SIGHUP and POST, for valid and invalid configs alike
            before = reloads(gw)
            write(gw, cfg)
            if by_post:
                r = post_reload(gw)
                if valid:
                    assert r.status == 200 and r.json() == {"status": "reloaded"}, r.describe()
                else:
                    assert r.status == 422, r.describe()
                    j = r.json()
                    assert j["error"]["code"] == "config_invalid" and j["error"]["param"] is None, j
                    assert j["problems"], j
            else:
                os.kill(gw.pid, signal.SIGHUP)
            want = (before[0] + 1, before[1]) if valid else (before[0], before[1] + 1)
            wait_for(lambda: reloads(gw) == want, timeout=20, what="reload %d counted (%s)" % (i, want))
            time.sleep(0.15)
        # the last one was invalid: the last valid config (B or A) still serves, m2 included
        r = gwtest.post_json(gw.port, "/v1/chat/completions",
                             {"model": "m2", "messages": [{"role": "user", "content": "x"}]})
        assert r.status == 200, r.describe()
        time.sleep(0.5)
    finally:
        load.stop()
    assert load.failed == 0, "%d of %d requests failed: %s" % (load.failed, load.ok + load.failed, load.failures)
    assert load.streams_broken == 0, "%d of %d streams broken: %s" % (
        load.streams_broken, load.streams_ok + load.streams_broken, load.failures)
    assert load.ok > 100 and load.streams_ok > 10, (load.ok, load.streams_ok)
    assert reloads(gw) == (10, 10), reloads(gw)
    err = gw.stderr_text()
    assert err.count("reload refused") >= 10, err[-3000:]
    print("    load: %d requests, %d streams, 0 failed, 20 reloads" % (load.ok, load.streams_ok))


LOAD_KEY = "gk_reload_load_tenant_000000000000000000000000"
CAPPED_KEY = "gk_reload_capped_tenant_0000000000000000000000"


def quota_config(mock):
    def tenant(tid, key, limits):
        return {"id": tid, "models": ["*"], "limits": limits,
                "api_keys": [{"id": tid + "-1", "sha256": hashlib.sha256(key.encode()).hexdigest()}]}
    return gateway_config([], workers=2, tenants=[
        tenant("load", LOAD_KEY, {"requests_per_minute": 1000000, "tokens_per_day": 10 ** 9,
                                  "max_concurrent": CLIENTS + STREAMERS}),
        tenant("capped", CAPPED_KEY, {"requests_per_minute": 3})],
        pools=[pool("p1", ["m1", "m2"], [gwtest.backend(mock.port, max_concurrent=3)],
                    queue={"max": 64, "timeout_ms": 30000})])


def refused_after_configure(base):
    """Configs refused after every plugin has configured, one per kind of check."""
    other_admin = json.loads(json.dumps(base))
    other_admin["admin"]["address"] = "127.0.0.1:%d" % gwtest.free_port()
    return [other_admin,
            dict(base, access_log={"path": "no/such/dir/access.log"}),
            dict(base, plugins=[{"path": "/nonexistent/gotthard-plugin.so"}]),
            dict(base, residency={"databases": ["/nonexistent/geo.mmdb"], "allowed_countries": ["CH"]}),
            dict(base, bogus_key=1)]


def test_fifty_reloads_keep_every_counter():
    t0 = time.monotonic()
    mock = Mock()
    base = quota_config(mock)
    gw = Gateway(base)
    capped = {"authorization": "Bearer " + CAPPED_KEY}
    for _ in range(3):
        r = gwtest.post_json(gw.port, "/v1/chat/completions", gwtest.chat("m1"), headers=capped)
        assert r.status == 200, r.describe()
    changed = json.loads(json.dumps(base))
    changed["timeouts"]["upstream_idle_ms"] = 30000
    good, bad = [base, changed], refused_after_configure(base)
    load = Load(gw, headers={"authorization": "Bearer " + LOAD_KEY})
    capped_refused = 0
    try:
        wait_for(lambda: load.ok > 10 and load.streams_ok > 2, timeout=20, what="the load to run")
        for i in range(50):
            valid = i % 5 not in (1, 3)  # 30 kept, 20 refused
            cfg = good[i % 2] if valid else bad[(i // 2) % len(bad)]
            write(gw, cfg)
            r = post_reload(gw)
            assert r.status == (200 if valid else 422), (i, r.describe())
            r = gwtest.post_json(gw.port, "/v1/chat/completions", gwtest.chat("m1"), headers=capped)
            assert r.status == 429 and r.error_code() == "rate_limit_exceeded", \
                "reload %d (%s) gave the capped tenant a fresh minute: %s" % (
                    i, "kept" if valid else "refused", r.describe())
            capped_refused += 1
            time.sleep(0.05)  # let the load run across each snapshot
    finally:
        load.stop()
    assert load.failed == 0, "%d of %d requests failed: %s" % (load.failed, load.ok + load.failed, load.failures)
    assert load.streams_broken == 0, "%d of %d streams broken: %s" % (
        load.streams_broken, load.streams_ok + load.streams_broken, load.failures)
    assert reloads(gw) == (30, 20), reloads(gw)
    recs = mock.wait_requests(3, completed=True, timeout=20)
    assert gwtest.max_overlap(recs) <= 3, "the backend ran %d at once (max_concurrent 3)" % gwtest.max_overlap(recs)
    served = load.ok + load.streams_ok

    def usage():
        return gwtest.get(gw.admin_port, "/usage").json()["days"][0]["tenants"]
    # the log hook counts a request just after its answer: give the last ones a moment
    wait_for(lambda: usage()["load"]["requests"] >= served, timeout=5, what="the last requests counted")
    tenants = usage()
    assert tenants["capped"]["requests"] == 3, tenants
    assert tenants["load"]["requests"] == served, (tenants, served)
    st = gwtest.get(gw.admin_port, "/status").json()
    for p in st["pools"]:
        assert p["queued"] == 0, p
        for b in p["backends"]:
            assert b["inflight"] == 0, b
    elapsed = time.monotonic() - t0
    assert elapsed < 90, "took %.0f s" % elapsed
    print("    load: %d requests, %d streams, 0 failed, 50 reloads (20 refused), %.0f s" % (
        load.ok, load.streams_ok, elapsed))


def test_post_reload_refused_with_reasons_and_audited():
    mock = Mock()
    base = gateway_config([mock.port], audit_log={"path": "audit.log"})
    gw = Gateway(base)
    write(gw, dict(base, bogus_key=1, pools=[pool("p1", ["m1"], [mock.port], weight_typo=3)]))
    r = post_reload(gw)
    assert r.status == 422, r.describe()
    j = r.json()
    assert j["error"]["type"] == "invalid_request_error" and j["error"]["code"] == "config_invalid", j
    problems = "\n".join(j["problems"])
    assert "$.bogus_key" in problems and "$.pools[0].weight_typo" in problems, j
    assert "$.bogus_key" in gw.stderr_text(), gw.stderr_text()[-2000:]
    # the old config serves
    r = gwtest.post_json(gw.port, "/v1/chat/completions", gwtest.chat("m1"))
    assert r.status == 200, r.describe()
    # audited, in the file and in memory
    rec = gwtest.get(gw.admin_port, "/audit/recent").json()
    refused = [e for e in rec["events"] if e["event"] == "config_refused"]
    assert refused and refused[-1]["source"] == "POST /reload", rec
    with open(os.path.join(gw.dir, "audit.log")) as f:
        assert '"event":"config_refused"' in f.read()
    # a good one is taken
    write(gw, base)
    r = post_reload(gw)
    assert r.status == 200, r.describe()
    assert reloads(gw) == (1, 1)
    rec = gwtest.get(gw.admin_port, "/audit/recent").json()
    assert rec["events"][-1]["event"] in ("config_loaded", "backend_verdict"), rec


def test_refused_reload_moves_neither_log():
    """A reload that would move both logs, the access log into a folder that does not exist, is
    refused, and neither log moves: the next audit event is in the old audit log, the next
    request in the old access log (the audit log used to move before the access log failed)."""
    mock = Mock()
    base = gateway_config([mock.port], audit_log={"path": "audit.log"}, access_log={"path": "access.log"})
    gw = Gateway(base)
    write(gw, dict(base, audit_log={"path": "audit2.log"}, access_log={"path": "missing/access.log"}))
    r = post_reload(gw)
    assert r.status == 422 and "access log" in r.text(), r.describe()
    write(gw, dict(base, bogus_key=1))
    assert post_reload(gw).status == 422  # audited: config_refused
    r = gwtest.post_json(gw.port, "/v1/chat/completions", gwtest.chat("m1"))
    assert r.status == 200, r.describe()
    gwtest.wait_for(lambda: os.path.getsize(os.path.join(gw.dir, "access.log")) > 0, 3, what="the access log line")
    with open(os.path.join(gw.dir, "audit.log")) as f:
        assert f.read().count('"event":"config_refused"') == 2, "the refusals are not in the old audit log"
    moved = os.path.join(gw.dir, "audit2.log")
    assert not os.path.exists(moved) or os.path.getsize(moved) == 0, "the audit log moved on a refused reload"


def test_reload_method_and_origin():
    mock = Mock()
    gw = Gateway(gateway_config([mock.port]))
    r = gwtest.get(gw.admin_port, "/reload")
    assert r.status == 405 and r.json()["error"]["code"] == "method_not_allowed", r.describe()
    r = post_reload(gw, headers={"origin": "http://evil.example"})
    assert r.status == 403 and r.json()["error"]["code"] == "forbidden_origin", r.describe()
    assert reloads(gw) == (0, 0)
    r = post_reload(gw, headers={"origin": "http://127.0.0.1:%d" % gw.admin_port})
    assert r.status == 200, r.describe()
    r = post_reload(gw)
    assert r.status == 200, r.describe()
    assert reloads(gw) == (2, 0)
    r = gwtest.request(gw.admin_port, "DELETE", "/metrics")
    assert r.status == 405 and r.json()["error"]["param"] is None, r.describe()
    r = gwtest.get(gw.admin_port, "/nothing-here")
    assert r.status == 404 and r.json()["error"]["code"] == "not_found", r.describe()


def test_admin_answers_only_to_its_host_names():
    """DNS rebinding: a page whose own name is made to resolve to the admin address sends that name
    as Host (and as Origin, so the Origin check alone lets its POST /reload through). The admin
    answers 421 misdirected_request to a Host that is not an IP literal, localhost or a name of
    admin.allowed_hosts, except on /healthz and /readyz; the answer never echoes the name."""
    mock = Mock()
    gw = Gateway(gateway_config([mock.port], admin={"allowed_hosts": ["gw-admin.mgmt.example"]}))
    port = gw.admin_port

    def get(path, host):
        return gwtest.request(port, "GET", path, headers={"host": host})
    for path in ("/", "/metrics", "/status", "/residency", "/privacy", "/usage", "/audit/recent"):
        r = get(path, "rebind.evil.example:%d" % port)
        assert r.status == 421 and r.json()["error"]["code"] == "misdirected_request", (path, r.describe())
        assert "evil" not in r.text(), r.describe()
    evil = "rebind.evil.example:%d" % port
    r = post_reload(gw, headers={"host": evil, "origin": "http://" + evil})
    assert r.status == 421, r.describe()
    assert reloads(gw) == (0, 0), "a rebinding page's reload went through"
    for path in ("/healthz", "/readyz"):
        assert get(path, evil).status == 200, path
    for host in ("127.0.0.1:%d" % port, "127.0.0.1", "localhost:%d" % port, "LocalHost", "[::1]:%d" % port,
                 "gw-admin.mgmt.example:%d" % port, "GW-Admin.Mgmt.Example.", "gw-admin.mgmt.example"):
        r = get("/metrics", host)
        assert r.status == 200, (host, r.describe())
    for host in ("127.0.0.1.evil.example", "gw-admin.mgmt.example.evil", "[evil]:1"):
        r = get("/metrics", host)
        assert r.status == 421, (host, r.describe())
    for host in ("[::1", "[::1]x", ""):  # not a host[:port] at all: 400 (RFC 9112 3.2, test_sec_admin)
        r = get("/metrics", host)
        assert r.status == 400, (host, r.describe())
    c = gwtest.Conn(port)  # HTTP/1.0 without Host: no browser sends that
    c.send(b"GET /metrics HTTP/1.0\r\n\r\n")
    assert c.read_response().status == 200
    c.close()


def test_production_example_config_passes_check():
    """conf/production.json passes `gotthard -t` where conf/README.md says it runs: in
    /etc/gotthard (here a temp dir) with the site GeoIP database, the TLS files and the backend
    keys in the environment (conf/systemd/gotthard.service: EnvironmentFile)."""
    d = gwtest.tempdir("gwtest-prod-")
    os.makedirs(os.path.join(d, "geoip"))
    os.makedirs(os.path.join(d, "tls"))
    with open(os.path.join(d, "site.csv"), "w") as f:
        f.write("10.20.0.0/16,CH\n10.30.0.0/16,CH\n")
    mmdb = gwtest._bin("MMDB_BIN", "tools/mmdb/gotthard-mmdb", "gotthard-mmdb")
    gwtest._need_exec(mmdb, "gotthard-mmdb (MMDB_BIN)")
    subprocess.run([mmdb, os.path.join(d, "site.csv"), os.path.join(d, "geoip", "site.mmdb")],
                   check=True, timeout=30)
    cert, key = gwtest.self_signed_cert()
    for name, data in (("tls/fullchain.pem", cert), ("tls/privkey.pem", key)):
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    conf = os.path.join(gwtest.REPO, "conf", "production.json")
    env = {"LLAMA_GVA_KEY": "example-secret-1", "MIXTRAL_ZRH_KEY": "example-secret-2"}
    rc, out, err = gwtest.run_gotthard(["-t", "-c", conf], env=env, cwd=d)
    assert rc == 0 and out.strip() == conf + ": ok", "rc %d\n%s%s" % (rc, out, err)
    assert "example-secret" not in out + err


if __name__ == "__main__":
    gwtest.run(globals())
