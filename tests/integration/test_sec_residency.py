#!/usr/bin/env python3
"""Residency at connect, refused backends in config checks, resolver history (issues 14, 22).

The site database of test_residency.py, plus 127.0.0.5 in CH (a second Swiss address for a name
to alternate between). What is checked:
- the residency check runs at connect time against the backend state current then, for the
  global verdict and a tenant's narrowed policy alike: requests that waited in a pool's queue,
  and retried requests, while a backend name re-resolved from a CH address to a DE one, never
  reach the DE address and get 503 residency_unavailable (or the retry's failure);
- `gotthard -t`, start and reload refuse a config with a backend that the policy refuses
  (declared outside, resolving outside), naming pool, backend and reason;
  residency.allow_refused_backends keeps the old behaviour (start, 503 for that pool); a backend
  refused later by a re-resolution does not stop a running gateway;
- re-resolved backend states are not kept without bound: with the hosts file alternating
  between two answers every refresh, gotthard_resolver_states stays flat.
"""

import json
import os
import re
import shutil
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from gwtest import Mock, Gateway, pool, chat, post_json, get, assert_error, wait_for, run_gotthard  # noqa: E402
import test_residency as tr  # noqa: E402
from test_residency import (HostMock, site_db, res_config, backend_entry, de_untouched, report,  # noqa: E402
                            verdict_of, served_by_ch, write, audit, _key)

CSV = """# test site database, with a second CH address
127.0.0.1/32,CH
127.0.0.2/32,DE
127.0.0.4/32,LI
127.0.0.5/32,CH
"""

HOSTNAME = "llm.sec-residency.test"


def db():
    return site_db(CSV)


def hosts_file(addr):
    d = gwtest.tempdir("gwtest-secres-hosts-")
    path = os.path.join(d, "hosts")
    write(path, "%s %s\n" % (addr, HOSTNAME))
    return path


def states(gw):
    text = get(gw.admin_port, "/metrics").text()
    m = re.search(r"^gotthard_resolver_states (\d+)$", text, re.M)
    assert m, "no gotthard_resolver_states in /metrics"
    return int(m.group(1))


# --------------------------------------------------------------------------- residency at connect


def _slow_and_queued(gw, busy, headers, delay_ms):
    """One slow request (delay_ms) takes the only slot of backend `busy`, three more wait in the
    pool's queue. Returns (out: "slow", "slow_end" once it ends; the waiting answers; threads)."""
    out, waiting = {}, []

    def slow():
        h = dict(headers)
        h["x-mock-delay-ms"] = str(delay_ms)
        out["slow"] = post_json(gw.port, "/v1/chat/completions", chat(), headers=h, timeout=60)
        out["slow_end"] = time.monotonic()

    def queued():
        waiting.append(post_json(gw.port, "/v1/chat/completions", chat(), headers=headers, timeout=60))

    ts = [threading.Thread(target=slow, daemon=True)]
    ts[0].start()
    wait_for(lambda: busy.requests(), 10, what="the slow request at the backend")
    for _ in range(3):
        t = threading.Thread(target=queued, daemon=True)
        t.start()
        ts.append(t)
    time.sleep(1.0)  # they wait in p1's queue: the only slot is the slow request's
    assert len(busy.requests()) == 1 and not waiting, "the queued requests did not wait"
    return out, waiting, ts


def _queued_then_moved(tenant_narrowed):
    """One slow request holds the only slot of a backend named HOSTNAME (127.0.0.1, CH); three
    more wait in the pool's queue; the name moves to 127.0.0.2 (DE); the slow one ends and the
    waiting ones are dispatched. Returns (slow answer, waiting answers, ch, de, gw)."""
    ch = Mock(args=["--name", "ch"])
    de = HostMock("127.0.0.2", port=ch.port, name="de")  # the same port: only the address moves
    hosts = hosts_file("127.0.0.1")
    url = "http://%s:%d" % (HOSTNAME, ch.port)
    headers = {}
    over = {}
    allowed = ("CH",)
    if tenant_narrowed:
        key, entry = _key("acme-1")
        over["tenants"] = [{"id": "acme", "models": ["*"], "api_keys": [entry],
                            "residency": {"allowed_countries": ["CH"]}}]
        headers = {"Authorization": "Bearer " + key}
        allowed = ("CH", "DE")  # the move keeps the backend globally approved, not for acme
    gw = Gateway(res_config([], allowed=allowed, dbs=[db()],
                            pools=[pool("p1", ["m1"], [backend_entry(url, max_concurrent=1)],
                                        queue={"max": 10, "timeout_ms": 60000})],
                            resolver={"refresh_ms": 100, "hosts_file": hosts}, **over))
    served_by_ch(post_json(gw.port, "/v1/chat/completions", chat(), headers=headers))
    ch.reset()
    out, waiting, ts = _slow_and_queued(gw, ch, headers, 6000)
    write(hosts, "127.0.0.2 %s\n" % HOSTNAME)
    wait_for(lambda: verdict_of(report(gw), url)["addresses"][0]["address"] == "127.0.0.2", 10,
             what="the name re-resolved to 127.0.0.2")
    moved = time.monotonic()
    for t in ts:
        t.join(60)
    assert "slow" in out and out["slow_end"] > moved, \
        "the slow request ended before the re-resolution: the test proves nothing"
    return out["slow"], waiting, ch, de, gw


def _queued_refused(tenant_narrowed):
    """The slow request served by CH; the three that waited refused, DE never reached."""
    slow, waiting, ch, de, gw = _queued_then_moved(tenant_narrowed=tenant_narrowed)
    served_by_ch(slow)
    assert len(waiting) == 3, waiting
    for r in waiting:
        assert_error(r, 503, "residency_unavailable")
    de_untouched(de)
    assert len(ch.api_requests()) == 1
    return gw


def test_queued_requests_checked_at_connect_global():
    _queued_refused(tenant_narrowed=False)


def test_queued_requests_checked_at_connect_tenant_policy():
    gw = _queued_refused(tenant_narrowed=True)
    blocks = [a for a in audit(gw, "residency_block") if a.get("backend")]
    assert len(blocks) == 3 and all(b["reason"] == "backend_not_approved_for_tenant" for b in blocks), blocks


def test_retry_checked_at_connect_tenant_policy():
    """The first backend fails slowly; meanwhile the second one's name moves abroad (still
    allowed globally, not for the tenant): the retry must not connect to it."""
    ch = Mock(args=["--name", "ch"])
    ch2 = HostMock("127.0.0.5", name="ch2")
    de = HostMock("127.0.0.2", port=ch2.port, name="de")
    hosts = hosts_file("127.0.0.5")
    url2 = "http://%s:%d" % (HOSTNAME, ch2.port)
    key, entry = _key("acme-1")
    tenants = [{"id": "acme", "models": ["*"], "api_keys": [entry], "residency": {"allowed_countries": ["CH"]}}]
    gw = Gateway(res_config([], allowed=("CH", "DE"), dbs=[db()], tenants=tenants,
                            pools=[pool("p1", ["m1"], [backend_entry(ch.url, weight=100), backend_entry(url2)],
                                        balance="weighted_round_robin")],
                            resolver={"refresh_ms": 100, "hosts_file": hosts}))
    auth = {"Authorization": "Bearer " + key}
    # the first request goes to ch (round robin starts there), which closes after a delay
    res = {}

    def failing():
        h = dict(auth)
        h.update({"x-mock-delay-ms": "4000", "x-mock-close": "1"})
        res["r"] = post_json(gw.port, "/v1/chat/completions", chat(), headers=h, timeout=60)

    t = threading.Thread(target=failing, daemon=True)
    t.start()
    wait_for(lambda: ch.requests(), 10, what="the request at the first backend (the heavier one)")
    write(hosts, "127.0.0.2 %s\n" % HOSTNAME)
    wait_for(lambda: verdict_of(report(gw), url2)["addresses"][0]["address"] == "127.0.0.2", 10,
             what="the name re-resolved to 127.0.0.2")
    t.join(60)
    r = res["r"]
    assert r.status in (502, 503), r.describe()
    de_untouched(de)
    assert ch2.api_requests() == []


# --------------------------------------------------------------------------- refused backends at load


def _write(cfg):
    d = gwtest.tempdir("gwtest-secres-")
    path = os.path.join(d, "gw.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    return path


def refused_configs(ch, de_url):
    hosts = hosts_file("127.0.0.2")
    url = "http://%s:%d" % (HOSTNAME, ch.port)
    return [
        ("resolves abroad", res_config([backend_entry(ch.url), backend_entry(de_url)], dbs=[db()]),
         "backend 127.0.0.2:%s of pool p1 is refused by the residency policy: 127.0.0.2 is in DE"
         % de_url.rsplit(":", 1)[1]),
        ("declared abroad", res_config([backend_entry(ch.url, country="DE")], dbs=[db()]),
         "backend 127.0.0.1:%d of pool p1 is refused by the residency policy: declared country DE is not allowed"
         % ch.port),
        ("named abroad", res_config([backend_entry(url)], dbs=[db()], resolver={"hosts_file": hosts}),
         "backend %s:%d of pool p1 is refused by the residency policy: 127.0.0.2 is in DE" % (HOSTNAME, ch.port)),
    ]


def test_check_and_start_refuse_a_refused_backend():
    ch, de = Mock(args=["--name", "ch"]), HostMock("127.0.0.2", name="de")
    for what, cfg, msg in refused_configs(ch, de.url):
        path = _write(cfg)
        rc, out, err = run_gotthard(["-t", "-c", path])
        assert rc == 1 and msg in err and "$.pools[0].backends[" in err, \
            "%s: -t gave %d, %r %r (wanted %r)" % (what, rc, out, err, msg)
        assert "allow_refused_backends" in err, err
        rc, out, err = run_gotthard(["-c", path])
        assert rc == 1 and msg in err, "%s: the gateway started (rc %d): %r" % (what, rc, err)
        # the report still shows it, and exits 1
        rc, out, err = run_gotthard(["--residency-report", "-c", path])
        assert rc == 1 and "refused" in out, (what, rc, out, err)
    de_untouched(de)
    assert ch.api_requests() == []


def test_allow_refused_backends_starts_and_answers_503():
    ch, de = Mock(args=["--name", "ch"]), HostMock("127.0.0.2", name="de")
    cfg = res_config([], dbs=[db()], residency={"allowed_countries": ["CH"], "allow_refused_backends": True},
                     pools=[pool("p1", ["m1"], [backend_entry(ch.url)]),
                            pool("abroad", ["m2"], [backend_entry(de.url)])])
    rc, out, err = run_gotthard(["-t", "-c", _write(cfg)])
    assert rc == 0 and "ok" in out, (rc, out, err)
    gw = Gateway(cfg)
    served_by_ch(post_json(gw.port, "/v1/chat/completions", chat("m1")))
    assert_error(post_json(gw.port, "/v1/chat/completions", chat("m2")), 503, "residency_unavailable")
    de_untouched(de)
    # a wrong type is a config error, not "true"
    bad = gwtest.deep_merge(cfg, {"residency": {"allow_refused_backends": "yes"}})
    rc, out, err = run_gotthard(["-t", "-c", _write(bad)])
    assert rc == 1 and "$.residency.allow_refused_backends" in err, (rc, out, err)


def test_reload_refuses_a_refused_backend():
    ch, de = Mock(args=["--name", "ch"]), HostMock("127.0.0.2", name="de")
    good = res_config([backend_entry(ch.url)], dbs=[db()])
    gw = Gateway(good)
    n = 0
    for what, cfg, msg in refused_configs(ch, de.url):
        cfg = gwtest.deep_merge(cfg, {"listen": good["listen"], "admin": good["admin"]})
        gw.reload(cfg)
        n += 1
        wait_for(lambda: gw.stderr_text().count("reload refused") >= n and msg in gw.stderr_text(), 10,
                 what="reload refused naming the backend (%s)" % what)
        served_by_ch(post_json(gw.port, "/v1/chat/completions", chat()))
    assert len(audit(gw, "config_loaded")) == 1
    refused = audit(gw, "config_refused")
    assert len(refused) == n and "refused by the residency policy" in refused[-1]["reason"], refused
    # with allow_refused_backends the same config is taken
    cfg = gwtest.deep_merge(refused_configs(ch, de.url)[0][1],
                            {"listen": good["listen"], "admin": good["admin"],
                             "residency": {"allow_refused_backends": True}})
    gw.reload(cfg)
    wait_for(lambda: len(audit(gw, "config_loaded")) == 2, 10, what="the reload taken")
    served_by_ch(post_json(gw.port, "/v1/chat/completions", chat()))
    de_untouched(de)


def test_refused_later_by_reresolution_keeps_running():
    ch = Mock(args=["--name", "ch"])
    de = HostMock("127.0.0.2", port=ch.port, name="de")
    hosts = hosts_file("127.0.0.1")
    url = "http://%s:%d" % (HOSTNAME, ch.port)
    gw = Gateway(res_config([backend_entry(url)], dbs=[db()], resolver={"refresh_ms": 100, "hosts_file": hosts}))
    served_by_ch(post_json(gw.port, "/v1/chat/completions", chat()))
    write(hosts, "127.0.0.2 %s\n" % HOSTNAME)
    wait_for(lambda: verdict_of(report(gw), url)["verdict"] == "refused", 10, what="refused after the move")
    assert_error(post_json(gw.port, "/v1/chat/completions", chat()), 503, "residency_unavailable")
    assert get(gw.admin_port, "/healthz").status == 200
    assert "re-resolved to 127.0.0.2=DE: refused" in gw.stderr_text(), gw.stderr_text()
    de_untouched(de)


# --------------------------------------------------------------------------- resolver history


def test_resolver_states_stay_flat_while_names_alternate():
    """resolver.refresh_ms 100 and the hosts file flipping between two CH addresses every 150 ms
    for about 25 s (some 150 re-resolutions), with requests flowing: the number of backend
    states alive stays bounded by the current ones plus those held by connections."""
    ch = Mock(args=["--name", "ch"])
    ch5 = HostMock("127.0.0.5", port=ch.port, name="ch")
    hosts = hosts_file("127.0.0.1")
    url = "http://%s:%d" % (HOSTNAME, ch.port)
    gw = Gateway(res_config([backend_entry(url)], dbs=[db()],
                            resolver={"refresh_ms": 100, "hosts_file": hosts},
                            audit_log=None))
    base = states(gw)
    assert base == 1, "one backend, one state: %d" % base
    samples = []
    errors = []
    stop = threading.Event()

    def traffic():
        while not stop.is_set():
            try:
                r = post_json(gw.port, "/v1/chat/completions", chat(stream=bool(len(samples) % 2)), timeout=20)
                if r.status != 200:
                    errors.append(r.status)
            except Exception as ex:  # noqa: BLE001
                errors.append(repr(ex))

    ts = [threading.Thread(target=traffic, daemon=True) for _ in range(2)]
    for t in ts:
        t.start()
    end = time.monotonic() + 25
    flip = 0
    while time.monotonic() < end:
        flip += 1
        write(hosts, "%s %s\n" % ("127.0.0.5" if flip % 2 else "127.0.0.1", HOSTNAME))
        time.sleep(0.15)  # not a multiple of refresh_ms: a pass sees a change, not two flips
        if flip % 10 == 0:
            samples.append(states(gw))
    stop.set()
    for t in ts:
        t.join(30)
    changes = gw.stderr_text().count("backend %s:%d re-resolved to" % (HOSTNAME, ch.port))
    assert changes >= 50, "too few re-resolutions to prove anything: %d" % changes
    assert not errors, errors[:5]
    # current state plus those held by connections (one client connection at a time per thread,
    # a few idle backend connections): never growing with the number of re-resolutions
    assert max(samples) <= 8, "states grow with re-resolutions (%d changes): %r" % (changes, samples)
    # once idle connections are gone, only the current state is left
    wait_for(lambda: states(gw) <= 2, 10, what="states back to the current one")
    assert len(ch.api_requests()) + len(ch5.api_requests()) > 10


# --------------------------------------------------------------------------- review follow-up


def _reload_then_join(gw, new, out, ts):
    """Reloads gw with `new` while _slow_and_queued's requests wait, then waits for them all;
    the slow one must have ended after the reload was accepted."""
    gw.reload(new)
    wait_for(lambda: len(audit(gw, "config_loaded")) == 2, 10, what="the reload accepted")
    reloaded = time.monotonic()
    for t in ts:
        t.join(60)
    assert "slow" in out and out["slow_end"] > reloaded, \
        "the slow request ended before the reload: the test proves nothing"


def _reload_narrows(tenant):
    """A DE backend (max_concurrent 1, a queue) holds one slow request, three more wait; a
    reload narrows the policy to CH (global, or the tenant's) with a CH-only pool. The waiting
    requests were admitted under the old snapshot: they must not connect to DE after the reload
    is accepted. Returns (slow, waiting, ch, de, gw, reloaded_at)."""
    ch = Mock(args=["--name", "ch"])
    de = HostMock("127.0.0.2", name="de")
    headers, over = {}, {}
    if tenant:
        key, entry = _key("acme-1")
        headers = {"Authorization": "Bearer " + key}

    def cfgfor(global_allowed, tenant_allowed, backends):
        o = {}
        if tenant:
            o["tenants"] = [{"id": "acme", "models": ["*"], "api_keys": [entry],
                             "residency": {"allowed_countries": list(tenant_allowed)}}]
        return res_config([], allowed=global_allowed, dbs=[db()],
                          pools=[pool("p1", ["m1"], backends, queue={"max": 10, "timeout_ms": 60000})], **o)

    de_entry = backend_entry(de.url, country="DE", max_concurrent=1)
    old = cfgfor(("CH", "DE"), ("CH", "DE"), [de_entry])
    gw = Gateway(old)
    out, waiting, ts = _slow_and_queued(gw, de, headers, 5000)
    if tenant:  # the global policy keeps DE, the tenant's loses it (the DE backend stays)
        new = cfgfor(("CH", "DE"), ("CH",), [de_entry, backend_entry(ch.url, max_concurrent=8)])
    else:
        new = cfgfor(("CH",), ("CH",), [backend_entry(ch.url, max_concurrent=8)])
    new = gwtest.deep_merge(new, {"listen": old["listen"], "admin": old["admin"]})
    _reload_then_join(gw, new, out, ts)
    return out["slow"], waiting, ch, de, gw, headers


def _after_reload(tenant, reason, tenant_field):
    """The slow request finished at DE, the three queued ones were refused at connect (503,
    audited with the reason and the tenant), DE got nothing more, a new request is served."""
    slow, waiting, ch, de, gw, headers = _reload_narrows(tenant=tenant)
    assert slow.status == 200 and slow.header("x-gotthard-residency") == "DE", slow.describe()
    assert len(waiting) == 3, waiting
    for r in waiting:
        assert_error(r, 503, "residency_unavailable")
    assert len(de.api_requests()) == 1, "DE got requests after the reload no longer allowed it"
    blocks = [a for a in audit(gw, "residency_block") if a.get("backend")]
    assert len(blocks) == 3, blocks
    assert all(b["reason"] == reason and b.get("tenant") == tenant_field for b in blocks), blocks
    served_by_ch(post_json(gw.port, "/v1/chat/completions", chat(), headers=headers))


def test_reload_narrowing_the_policy_applies_to_queued_requests():
    _after_reload(False, "backend_not_approved", "-")


def test_reload_narrowing_a_tenant_applies_to_its_queued_requests():
    _after_reload(True, "backend_not_approved_for_tenant", "acme")


def test_connect_time_block_names_the_tenant():
    # The re-resolution case of issue 22: the connect-time residency_block carries the tenant.
    slow, waiting, ch, de, gw = _queued_then_moved(tenant_narrowed=True)
    blocks = [a for a in audit(gw, "residency_block") if a.get("backend")]
    assert blocks and all(b.get("tenant") == "acme" for b in blocks), blocks


def test_geoip_database_changed_in_place_is_not_read_until_reload():
    """The databases checked and digested at load are the ones used until a reload: truncating
    or rewriting the file in place neither crashes the gateway nor changes a verdict."""
    ch = Mock(args=["--name", "ch"])
    # the backend (127.0.0.1) is CH in both; the clients 127.0.0.2 and .3 swap countries
    a = site_db("127.0.0.1/32,CH\n127.0.0.2/32,DE\n127.0.0.3/32,CH\n")
    b = site_db("127.0.0.1/32,CH\n127.0.0.2/32,CH\n127.0.0.3/32,DE\n")
    assert os.path.getsize(a) == os.path.getsize(b), "the swap needs two databases of one size"
    d = gwtest.tempdir("gwtest-secres-db-")
    path = os.path.join(d, "site.mmdb")
    shutil.copy(a, path)
    kc, ec = _key("c-1")
    cfg = res_config([backend_entry(ch.url)], dbs=[path],
                     tenants=[{"id": "c", "models": ["*"], "api_keys": [ec], "client_countries": ["CH"]}])
    gw = Gateway(cfg)
    hdr = {"Authorization": "Bearer " + kc}
    assert tr._post_from("127.0.0.3", gw.port, chat(), hdr).status == 200
    assert_error(tr._post_from("127.0.0.2", gw.port, chat(), hdr), 403, "residency_denied")
    digest = report(gw)["policy"]["digest"]
    # rewritten in place, the same size: other verdicts in the same bytes' places
    with open(path, "r+b") as f:
        f.write(open(b, "rb").read())
    assert tr._post_from("127.0.0.3", gw.port, chat(), hdr).status == 200
    assert_error(tr._post_from("127.0.0.2", gw.port, chat(), hdr), 403, "residency_denied")
    # truncated in place (cp over it): a shared mapping would fault on the next lookup
    with open(path, "r+b") as f:
        f.truncate(0)
        f.flush()
        assert tr._post_from("127.0.0.3", gw.port, chat(), hdr).status == 200
        assert_error(tr._post_from("127.0.0.2", gw.port, chat(), hdr), 403, "residency_denied")
        assert gw.alive(), "the gateway died reading a truncated database"
        f.write(open(b, "rb").read())
    assert report(gw)["policy"]["digest"] == digest
    assert len(ch.api_requests()) == 3
    # the reload reads the new file: now 127.0.0.2 is CH
    gw.reload()
    wait_for(lambda: len(audit(gw, "config_loaded")) == 2, 10, what="the reload taken")
    assert report(gw)["policy"]["digest"] != digest
    assert tr._post_from("127.0.0.2", gw.port, chat(), hdr).status == 200
    assert_error(tr._post_from("127.0.0.3", gw.port, chat(), hdr), 403, "residency_denied")
    assert gw.alive()


def test_more_addresses_than_verified_is_refused():
    """A name with more addresses than a state keeps is refused, never approved on the first
    ones: 64 CH addresses and a DE one (the reviewer's case), and 70 CH ones."""
    d = gwtest.tempdir("gwtest-secres-many-")
    dbp = site_db("127.0.0.0/24,CH\n127.0.1.0/24,DE\n")
    host = "llm.many.test"
    for addrs in (["127.0.0.%d" % i for i in range(1, 65)] + ["127.0.1.1"],
                  ["127.0.0.%d" % i for i in range(1, 71)]):
        hp = os.path.join(d, "hosts")
        write(hp, "".join("%s %s\n" % (a, host) for a in addrs))
        cfg = res_config([backend_entry("http://%s:8000" % host)], dbs=[dbp],
                         resolver={"hosts_file": hp, "refresh_ms": 1000})
        cp = os.path.join(d, "c.json")
        write(cp, json.dumps(cfg))
        rc, out, err = run_gotthard(["-t", "-c", cp])
        assert rc != 0 and "more than 64 addresses" in out + err, (rc, out, err)
        rc, out, err = run_gotthard(["--residency-report", "-c", cp])
        assert "refused" in out and "more than 64 addresses" in out, out[-600:]
    # 64 exactly is verified as usual
    write(hp, "".join("127.0.0.%d %s\n" % (i, host) for i in range(1, 65)))
    rc, out, err = run_gotthard(["-t", "-c", cp])
    assert rc == 0, (rc, out, err)


def test_backend_verdict_audit_lists_whole_addresses():
    """backend_verdict.addresses holds whole "address=country" entries and says how many more
    there are, never an address cut in the middle."""
    ch = Mock(args=["--name", "ch"])
    d = gwtest.tempdir("gwtest-secres-al-")
    host = "llm.long.test"
    hp = os.path.join(d, "hosts")
    addrs = ["::ffff:127.0.0.%d" % i for i in range(1, 64)] + ["::ffff:127.0.1.1"]
    write(hp, "".join("%s %s\n" % (a, host) for a in addrs))
    gw = Gateway(res_config([backend_entry("http://%s:%d" % (host, ch.port)), backend_entry(ch.url)],
                            dbs=[site_db("127.0.0.0/24,CH\n127.0.1.0/24,DE\n")], allow_refused=True,
                            resolver={"hosts_file": hp}))
    v = [a for a in audit(gw, "backend_verdict") if a["backend"].startswith(host)][0]
    text = v["addresses"]
    m = re.search(r" \+(\d+) more$", text)
    assert m, "no count of the addresses left out: %r" % text[-60:]
    listed = text[:m.start()].split(",")
    for e in listed:
        a, _, cc = e.partition("=")
        assert a in addrs and cc in ("CH", "DE"), "a cut or unknown entry: %r" % e
    assert len(listed) + int(m.group(1)) == 64, (len(listed), m.group(1))
    assert len(text) <= 1024
    assert v["verdict"] == "refused"


# --------------------------------------------------------------------------- queued across a reload


def _reload_redeclares(new_backends, new_allowed, allow_refused):
    """Backend `ch` (declared CH, policy CH, max_concurrent 1, a queue) holds one slow request,
    three more wait; a reload changes how the current config declares or lists that backend.
    new_backends(ch) gives p1's backends after the reload. Returns (slow, waiting, ch, gw)."""
    ch = Mock(args=["--name", "ch"])

    def cfgfor(allowed, backends, refused):
        return res_config([], allowed=allowed, dbs=[db()], allow_refused=refused,
                          pools=[pool("p1", ["m1"], backends, queue={"max": 10, "timeout_ms": 60000})])

    old = cfgfor(("CH",), [backend_entry(ch.url, country="CH", max_concurrent=1)], False)
    gw = Gateway(old)
    out, waiting, ts = _slow_and_queued(gw, ch, {}, 4000)
    new = gwtest.deep_merge(cfgfor(new_allowed, new_backends(ch), allow_refused),
                            {"listen": old["listen"], "admin": old["admin"]})
    _reload_then_join(gw, new, out, ts)
    assert out["slow"].status == 200, out["slow"].describe()
    assert len(waiting) == 3, waiting
    return out["slow"], waiting, ch, gw


def test_reload_redeclaring_a_backend_refused_applies_to_queued_requests():
    """The same backend (same pool, same url) re-declared DE under a CH-only policy, started
    refused (allow_refused_backends): the requests queued before the reload are judged as the
    current config declares it, not by the old snapshot's CH."""
    _, waiting, ch, gw = _reload_redeclares(
        lambda ch: [backend_entry(ch.url, country="DE", max_concurrent=1)], ("CH",), True)
    for r in waiting:
        assert_error(r, 503, "residency_unavailable")
    assert len(ch.api_requests()) == 1, "the backend got requests the current config refuses"
    assert_error(post_json(gw.port, "/v1/chat/completions", chat(), timeout=10), 503,
                 "residency_unavailable")


def test_reload_removing_a_backend_applies_to_queued_requests():
    """The backend is gone from the current config (p1 lists another one): the requests queued
    before the reload never reach it."""
    other = Mock(args=["--name", "other"])
    _, waiting, ch, gw = _reload_redeclares(
        lambda ch: [backend_entry(other.url, country="CH", max_concurrent=8)], ("CH",), False)
    for r in waiting:
        assert_error(r, 503, "residency_unavailable")
    assert len(ch.api_requests()) == 1, "a backend the current config no longer has got requests"
    r = post_json(gw.port, "/v1/chat/completions", chat(), timeout=10)
    assert r.status == 200 and r.header("x-gotthard-residency") == "CH", r.describe()
    assert len(other.api_requests()) == 1


def test_reload_redeclaring_a_backend_allowed_names_the_current_country():
    """Re-declared LI with LI now allowed too: the queued requests may go, and their
    x-gotthard-residency names the country the current config gives (LI), never the old CH."""
    _, waiting, ch, gw = _reload_redeclares(
        lambda ch: [backend_entry(ch.url, country="LI", max_concurrent=1)], ("CH", "LI"), False)
    for r in waiting:
        assert r.status == 200, r.describe()
        assert r.header("x-gotthard-residency") == "LI", r.describe()
    assert len(ch.api_requests()) == 4


if __name__ == "__main__":
    gwtest.run(globals())
