"""State that survives reload, and a fair wait queue (issue 22).

What is checked:
- a reload is a transaction: a config refused at any check (a changed admin address, a log that
  cannot be opened, an external plugin that does not load, a residency problem) publishes
  nothing, so the next good reload keeps every quota count: a tenant at its per-minute limit
  stays there, its concurrency slot stays taken, and /usage stays exact;
- backends' in-flight and queued requests belong to the process, not to the snapshot: two
  streams, a reload, two more streams, and the backend never runs more than max_concurrent; a
  full queue stays full across a reload;
- the wait queue is fair: a tenant flooding the queue is refused before a quiet tenant, whose
  request is queued and served; queued bodies are held to queue.max_bytes (503 + retry-after);
- shares of places and of bytes are re-divided as tenants come (review): after three or four
  flooding tenants a quiet one takes the newest place of the tenant most past its share (on any
  worker) and is served;
- a reload's max_concurrent applies to requests already waiting (review);
- the systemd unit's reload sends SIGHUP only once the gateway holds it (review).
"""

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
from gwtest import Gateway, Mock, gateway_config, pool, backend, wait_for  # noqa: E402

KEY_A = "gk_sec_reload_tenant_a_00000000000000000000000"
KEY_B = "gk_sec_reload_tenant_b_00000000000000000000000"


def tenant(tid, key, limits=None):
    t = {"id": tid, "models": ["*"],
         "api_keys": [{"id": tid + "-1", "sha256": hashlib.sha256(key.encode()).hexdigest()}]}
    if limits is not None:
        t["limits"] = limits
    return t


def auth(key):
    return {"authorization": "Bearer " + key}


def chat(gw, key, **body):
    b = {"model": "m1", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
    b.update(body)
    return gwtest.post_json(gw.port, "/v1/chat/completions", b, headers=auth(key), timeout=30)


def reloads(gw):
    fams = promtext.parse(gwtest.get(gw.admin_port, "/metrics").body.decode())
    return (int(promtext.value(fams, "gotthard_reloads_total", result="ok")),
            int(promtext.value(fams, "gotthard_reloads_total", result="refused")))


def post_reload(gw, cfg):
    with open(gw.config_path, "w") as f:
        f.write(json.dumps(cfg, indent=2))
    return gwtest.request(gw.admin_port, "POST", "/reload", body=b"", timeout=30)


def usage(gw):
    r = gwtest.get(gw.admin_port, "/usage")
    assert r.status == 200, r.describe()
    return r.json()["days"][0]["tenants"]


def refused_variants(base, mock):
    """Configs refused after the quota plugin has configured: each check in turn."""
    other_admin = json.loads(json.dumps(base))
    other_admin["admin"]["address"] = "127.0.0.1:%d" % gwtest.free_port()
    bad_log = dict(base, access_log={"path": "no/such/dir/access.log"})
    bad_plugin = dict(base, plugins=[{"path": "/nonexistent/gotthard-plugin.so"}])
    residency = dict(base, residency={"databases": ["/nonexistent/geo.mmdb"], "allowed_countries": ["CH"]})
    return [other_admin, bad_log, bad_plugin, residency]


def test_refused_reloads_keep_quota_counts_and_usage():
    mock = Mock()
    base = gateway_config([mock.port], tenants=[tenant("acme", KEY_A, {"requests_per_minute": 3})])
    gw = Gateway(base)
    for _ in range(3):
        r = chat(gw, KEY_A)
        assert r.status == 200, r.describe()
    before = usage(gw)
    assert before["acme"]["requests"] == 3, before
    for cfg in refused_variants(base, mock):
        r = post_reload(gw, cfg)
        assert r.status == 422, r.describe()
        r = post_reload(gw, base)  # a good one after each refused one
        assert r.status == 200, r.describe()
        r = chat(gw, KEY_A)
        assert r.status == 429 and r.error_code() == "rate_limit_exceeded", \
            "a refused reload then a good one gave the tenant a fresh minute: " + r.describe()
        assert usage(gw) == before, (usage(gw), before)
    assert reloads(gw) == (4, 4), reloads(gw)


def test_refused_reload_keeps_concurrency_slot():
    """A stream holds the tenant's only slot; refused-then-good reloads do not free it."""
    mock = Mock()
    base = gateway_config([mock.port], tenants=[tenant("acme", KEY_A, {"max_concurrent": 1})])
    gw = Gateway(base)
    c, r = gwtest.open_stream(gw.port, "/v1/chat/completions",
                              {"model": "m1", "messages": [{"role": "user", "content": "x"}], "stream": True},
                              headers=dict(auth(KEY_A), **{"x-mock-tokens": "40", "x-mock-token-ms": "100"}))
    try:
        assert r.status == 200, r.describe()
        for cfg in refused_variants(base, mock)[:2]:
            assert post_reload(gw, cfg).status == 422
            assert post_reload(gw, base).status == 200
            r2 = chat(gw, KEY_A)
            assert r2.status == 429, "the slot of a running stream was freed by a refused reload: " + r2.describe()
        evs = list(gwtest.iter_sse(c, r, timeout=20))
        assert evs and evs[-1] == "[DONE]", evs[-3:]
    finally:
        c.close()
    wait_for(lambda: chat(gw, KEY_A).status == 200, timeout=10, what="the slot to free")


def stream(gw, results, i, headers=None, tokens=15, token_ms=100):
    h = {"x-mock-tokens": str(tokens), "x-mock-token-ms": str(token_ms)}
    h.update(headers or {})
    try:
        c, r = gwtest.open_stream(gw.port, "/v1/chat/completions",
                                  {"model": "m1", "messages": [{"role": "user", "content": "x"}],
                                   "stream": True}, headers=h, timeout=60)
        try:
            evs = list(gwtest.iter_sse(c, r, timeout=60)) if r.status == 200 else []
        finally:
            c.close()
        results[i] = (r.status, evs[-1] if evs else r.body[:200])
    except Exception as ex:  # noqa: BLE001
        results[i] = ("error", repr(ex))


def test_reload_keeps_backend_inflight():
    """Two streams, a reload, two more: the backend (max_concurrent 2) never runs more than two; the
    later ones wait in the queue and are served."""
    mock = Mock()
    base = gateway_config([], pools=[pool("p1", ["m1"], [backend(mock.port, max_concurrent=2)])])
    gw = Gateway(base)
    results = [None] * 4
    ts = [threading.Thread(target=stream, args=(gw, results, i), kwargs={"tokens": 30})
          for i in range(2)]
    for t in ts:
        t.start()
    wait_for(lambda: len(mock.api_requests()) == 2, timeout=10, what="two streams at the backend")
    changed = json.loads(json.dumps(base))
    changed["timeouts"]["upstream_idle_ms"] = 30000
    assert post_reload(gw, changed).status == 200
    ts2 = [threading.Thread(target=stream, args=(gw, results, i)) for i in (2, 3)]
    for t in ts2:
        t.start()
    for t in ts + ts2:
        t.join(90)
    assert all(r == (200, "[DONE]") for r in results), results
    recs = mock.wait_requests(4, completed=True, timeout=10)
    assert gwtest.max_overlap(recs) <= 2, "the backend ran %d requests at once (max_concurrent 2): %s" % (
        gwtest.max_overlap(recs), [(x["started_ms"], x.get("ended_ms")) for x in recs])


def test_reload_keeps_the_queue_count():
    """queue.max 1: one request waits; after a reload the queue is still full (503 at once), and the
    waiting one is served."""
    mock = Mock()
    base = gateway_config([], pools=[pool("p1", ["m1"], [backend(mock.port, max_concurrent=1)],
                                          queue={"max": 1, "timeout_ms": 30000})])
    gw = Gateway(base)
    results = [None] * 2
    t0 = threading.Thread(target=stream, args=(gw, results, 0), kwargs={"tokens": 40})
    t0.start()
    wait_for(lambda: len(mock.api_requests()) == 1, timeout=10, what="the first stream at the backend")
    t1 = threading.Thread(target=stream, args=(gw, results, 1), kwargs={"tokens": 2})
    t1.start()
    wait_for(lambda: queued(gw) == 1, timeout=10,
             what="the second request to wait")
    changed = json.loads(json.dumps(base))
    changed["timeouts"]["upstream_idle_ms"] = 30000
    assert post_reload(gw, changed).status == 200
    r = gwtest.post_json(gw.port, "/v1/chat/completions", gwtest.chat("m1"), timeout=30)
    assert r.status == 503 and r.error_code() == "no_backend_available", \
        "a reload emptied a full queue: " + r.describe()
    assert r.header("retry-after"), r.describe()
    t0.join(60)
    t1.join(60)
    assert results == [(200, "[DONE]"), (200, "[DONE]")], results


def queued(gw):
    r = gwtest.get(gw.admin_port, "/status")
    try:
        st = r.json()
    except Exception:  # noqa: BLE001
        return -1
    return sum(p.get("queued", 0) for p in st.get("pools", []))


def test_flooding_tenant_does_not_shut_out_another():
    """max_concurrent 1, queue.max 4: tenant A holds the slot and floods the queue; A is refused
    (503) before B, whose one request is queued and served."""
    mock = Mock()
    cfg = gateway_config([], tenants=[tenant("a", KEY_A), tenant("b", KEY_B)],
                         pools=[pool("p1", ["m1"], [backend(mock.port, max_concurrent=1)],
                                     queue={"max": 4, "timeout_ms": 60000})])
    gw = Gateway(cfg)
    n = 7
    results = [None] * (n + 1)
    ts = [threading.Thread(target=stream, args=(gw, results, 0),
                           kwargs={"headers": auth(KEY_A), "tokens": 20})]
    ts[0].start()
    wait_for(lambda: len(mock.api_requests()) == 1, timeout=10, what="A's stream at the backend")
    for i in range(1, n):
        t = threading.Thread(target=stream, args=(gw, results, i),
                             kwargs={"headers": auth(KEY_A), "tokens": 1, "token_ms": 1})
        t.start()
        ts.append(t)
    # A's flood is answered (queued or refused) before B comes
    wait_for(lambda: sum(1 for r in results[1:n] if r is not None) + queued(gw) >= n - 1, timeout=20,
             what="A's flood to be queued or refused")
    refused_a = [r for r in results[1:n] if r is not None and r[0] == 503]
    assert refused_a, "the flood of A was never refused: %s" % results
    tb = threading.Thread(target=stream, args=(gw, results, n),
                          kwargs={"headers": auth(KEY_B), "tokens": 1, "token_ms": 1})
    tb.start()
    ts.append(tb)
    for t in ts:
        t.join(90)
    assert results[n] == (200, "[DONE]"), "B was shut out by A's flood: %s" % (results,)
    assert results[0] == (200, "[DONE]"), results


def test_queue_max_bytes_bounds_held_bodies():
    """queue.max_bytes: queued bodies together stay within it; past it, 503 with retry-after, while a
    small body still queues."""
    mock = Mock()
    cfg = gateway_config([], pools=[pool("p1", ["m1"], [backend(mock.port, max_concurrent=1)],
                                         queue={"max": 10, "timeout_ms": 60000, "max_bytes": 3000})])
    gw = Gateway(cfg)
    results = [None] * 4
    t0 = threading.Thread(target=stream, args=(gw, results, 0), kwargs={"tokens": 20})
    t0.start()
    wait_for(lambda: len(mock.api_requests()) == 1, timeout=10, what="the first stream")
    big = "y" * 2000

    def post(i, content):
        try:
            r = gwtest.post_json(gw.port, "/v1/chat/completions",
                                 {"model": "m1", "messages": [{"role": "user", "content": content}],
                                  "max_tokens": 2}, timeout=60)
            results[i] = (r.status, r.header("retry-after"), r.error_code())
        except Exception as ex:  # noqa: BLE001
            results[i] = ("error", repr(ex))
    t1 = threading.Thread(target=post, args=(1, big))
    t1.start()
    wait_for(lambda: queued(gw) == 1, timeout=10, what="the first big body to wait")
    post(2, big)  # 2 x ~2 KB > 3000: refused at once
    assert results[2][0] == 503 and results[2][1] and results[2][2] == "no_backend_available", results
    t3 = threading.Thread(target=post, args=(3, "small"))
    t3.start()
    wait_for(lambda: queued(gw) == 2, timeout=10, what="a small body to wait")
    for t in (t0, t1, t3):
        t.join(60)
    assert results[1][0] == 200 and results[3][0] == 200, results



# ---------------------------------------------------------------- the queue's fair shares (review)

FLOOD_KEYS = {t: "gk_sec_reload_%s_" % t + "0" * (40 - len(t)) for t in ("t1", "t2", "t3", "t4", "quiet")}


def flood_config(queue, workers=1):
    mock = Mock()
    cfg = gateway_config([], workers=workers,
                         tenants=[tenant(t, k) for t, k in FLOOD_KEYS.items()],
                         pools=[pool("p1", ["m1"], [backend(mock.port, max_concurrent=1)],
                                     queue=dict({"timeout_ms": 60000}, **queue))])
    return mock, Gateway(cfg)


def body_of(size):
    """A chat body of exactly `size` bytes (what the queue's byte count holds)."""
    b = {"model": "m1", "messages": [{"role": "user", "content": ""}], "max_tokens": 1}
    b["messages"][0]["content"] = "y" * (size - len(json.dumps(b)))
    out = json.dumps(b)
    assert len(out) == size, (len(out), size)
    return out


def queued_post(gw, results, key, tid, body):
    try:
        r = gwtest.post_json(gw.port, "/v1/chat/completions", body,
                             headers=dict(auth(FLOOD_KEYS[tid]), **{"x-mock-tokens": "1", "x-mock-token-ms": "1"}),
                             timeout=90)
        results[key] = (r.status, r.error_code(), r.header("retry-after"))
    except Exception as ex:  # noqa: BLE001
        results[key] = ("error", repr(ex), None)


def flood_then_quiet(mock, gw, floods, quiet_body):
    """One stream holds the backend's only slot; then each tenant of `floods` ([(tenant, n,
    body)], in turn) sends n requests at once, each flood answered (queued or refused) before the
    next; then the quiet tenant sends one. Returns the results by (tenant, i) and the queue count
    seen once the quiet one was in."""
    hold, hr = gwtest.open_stream(gw.port, "/v1/chat/completions",
                                  {"model": "m1", "messages": [{"role": "user", "content": "x"}], "stream": True},
                                  headers=dict(auth(FLOOD_KEYS["t1"]), **{"x-mock-tokens": "600", "x-mock-token-ms": "50"}),
                                  timeout=60)
    results, threads = {}, []
    try:
        assert hr.status == 200, hr.describe()
        launched = 0
        for tid, n, body in floods:
            for i in range(n):
                t = threading.Thread(target=queued_post, args=(gw, results, (tid, i), tid, body))
                t.start()
                threads.append(t)
            launched += n
            # nothing is served while the slot is held: each request is queued or answered
            wait_for(lambda: len(results) + queued(gw) == launched, timeout=30,
                     what="%s's flood to be queued or refused" % tid)
        before = queued(gw)
        t = threading.Thread(target=queued_post, args=(gw, results, ("quiet", 0), "quiet", quiet_body))
        t.start()
        threads.append(t)
        wait_for(lambda: ("quiet", 0) in results or len(results) + queued(gw) == launched + 1, timeout=30,
                 what="the quiet tenant's request to be queued or refused")
        assert ("quiet", 0) not in results, \
            "the quiet tenant's one request was refused at once (queue %d): %s" % (before, results[("quiet", 0)])
        during = queued(gw)
    finally:
        hold.close()  # the slot frees: the waiters are served
    for t in threads:
        t.join(120)
    assert results[("quiet", 0)][0] == 200, "the quiet tenant was not served: %s" % (results,)
    for k, v in results.items():
        assert v[0] == 200 or (v[0] == 503 and v[1] == "no_backend_available" and v[2] == "1"), (k, v)
    return results, during


def check_shares(results, floods):
    """Every flooding tenant kept at least one place (served)."""
    for tid, n, _ in floods:
        served = sum(1 for i in range(n) if results[(tid, i)][0] == 200)
        assert served >= 1, "%s lost every place: %s" % (tid, results)


def test_quiet_tenant_gets_a_place_among_three_floods_by_count():
    """queue.max 6: three tenants flood in turn (places 3, 2, 1: full); a fourth, quiet tenant's
    one request takes the newest place of the tenant holding the most (503 + retry-after for that
    one) and is served; the queue never holds more than 6."""
    mock, gw = flood_config({"max": 6})
    floods = [(t, 6, gwtest.chat("m1")) for t in ("t1", "t2", "t3")]
    results, during = flood_then_quiet(mock, gw, floods, gwtest.chat("m1"))
    assert during <= 6, during
    served = {t: sum(1 for i in range(6) if results[(t, i)][0] == 200) for t in ("t1", "t2", "t3")}
    assert served == {"t1": 2, "t2": 2, "t3": 1}, (served, results)


def test_quiet_tenant_gets_a_place_among_four_floods_by_count():
    """queue.max 6 and four flooding tenants, then a quiet one: every tenant keeps a place and the
    quiet one is queued and served (the share is re-divided as tenants arrive)."""
    mock, gw = flood_config({"max": 6})
    floods = [(t, 6, gwtest.chat("m1")) for t in ("t1", "t2", "t3", "t4")]
    results, during = flood_then_quiet(mock, gw, floods, gwtest.chat("m1"))
    assert during <= 6, during
    check_shares(results, floods)
    served = sum(1 for k, v in results.items() if v[0] == 200)
    assert served == 6, results


def test_quiet_tenant_gets_a_place_among_floods_by_count_two_workers():
    """The same with two workers: the newest waiter of the tenant holding the most may wait on the
    other worker; it is refused there, and the quiet one is served."""
    mock, gw = flood_config({"max": 60}, workers=2)
    floods = [(t, 40, gwtest.chat("m1")) for t in ("t1", "t2", "t3")]
    results, during = flood_then_quiet(mock, gw, floods, gwtest.chat("m1"))
    assert during <= 60, during
    check_shares(results, floods)
    assert sum(1 for v in results.values() if v[0] == 200) == 60, results


def test_quiet_tenant_gets_a_place_among_three_floods_by_bytes():
    """queue.max_bytes 4 bodies: three tenants flood with bodies of a quarter each (the byte
    shares: 2, 1, 1 bodies: full); a quiet tenant's small request evicts the newest body of the
    tenant holding the most bytes, and is served."""
    size = 12000
    mock, gw = flood_config({"max": 100, "max_bytes": 4 * size})
    floods = [(t, 4, body_of(size)) for t in ("t1", "t2", "t3")]
    results, _ = flood_then_quiet(mock, gw, floods, body_of(200))
    served = {t: sum(1 for i in range(4) if results[(t, i)][0] == 200) for t in ("t1", "t2", "t3")}
    assert served == {"t1": 1, "t2": 1, "t3": 1}, (served, results)


def test_quiet_tenant_gets_a_place_among_four_floods_by_bytes():
    """The same with four flooding tenants and queue.max_bytes of five bodies."""
    size = 12000
    mock, gw = flood_config({"max": 100, "max_bytes": 5 * size})
    floods = [(t, 4, body_of(size)) for t in ("t1", "t2", "t3", "t4")]
    results, _ = flood_then_quiet(mock, gw, floods, body_of(200))
    check_shares(results, floods)
    served = {t: sum(1 for i in range(4) if results[(t, i)][0] == 200) for t in ("t1", "t2", "t3", "t4")}
    assert served == {"t1": 1, "t2": 1, "t3": 1, "t4": 1}, (served, results)


def test_one_tenant_holds_half_the_bytes():
    """Bytes have the per-tenant share places have: a tenant alone holds at most half of
    queue.max_bytes (reviewer: 16 bodies of 4 MiB took the default 64 MiB); another tenant's
    request is queued at once and served."""
    size = 10000
    mock, gw = flood_config({"max": 100, "max_bytes": 8 * size})
    floods = [("t1", 8, body_of(size))]
    results, during = flood_then_quiet(mock, gw, floods, body_of(200))
    served = sum(1 for i in range(8) if results[("t1", i)][0] == 200)
    assert served == 4, results
    assert during == 5, during



# ---------------------------------------------------------------- caps of a reload apply to waiters

def reload_cap_while_waiting(before, after, n, tokens, token_ms):
    """max_concurrent `before`, n streams (`before` run, the rest wait), then a reload with
    `after`. Returns the mock, the results and the streams' threads."""
    mock = Mock()

    def config(mc):
        return gateway_config([], pools=[pool("p1", ["m1"], [backend(mock.port, max_concurrent=mc)],
                                              queue={"max": 10, "timeout_ms": 60000})])
    base = config(before)
    gw = Gateway(base)
    results = [None] * n
    ts = [threading.Thread(target=stream, args=(gw, results, i), kwargs={"tokens": tokens, "token_ms": token_ms})
          for i in range(n)]
    for t in ts:
        t.start()
    wait_for(lambda: len(mock.api_requests()) == before and queued(gw) == n - before, timeout=20,
             what="%d streams at the backend and %d waiting" % (before, n - before))
    changed = config(after)
    changed["listen"], changed["admin"] = base["listen"], base["admin"]
    assert post_reload(gw, changed).status == 200
    return mock, results, ts


def test_lowered_max_concurrent_applies_to_waiting_requests():
    """max_concurrent 3, nine streams (three run, six wait), a reload with max_concurrent 1: the
    six that waited through the reload start one at a time (the cap is the backend's live state,
    not the snapshot the waiting request began under)."""
    mock, results, ts = reload_cap_while_waiting(3, 1, 9, 8, 150)
    for t in ts:
        t.join(120)
    assert all(r == (200, "[DONE]") for r in results), results
    recs = sorted(mock.wait_requests(9, completed=True, timeout=20), key=lambda x: x["started_ms"])
    for rec in recs[3:]:
        running = [x for x in recs if x is not rec and x["started_ms"] <= rec["started_ms"] < x["ended_ms"]]
        assert not running, "a request started with %d running after max_concurrent went to 1: %s" % (
            len(running), [(x["started_ms"], x["ended_ms"]) for x in recs])


def test_raised_max_concurrent_applies_to_waiting_requests():
    """The other way: max_concurrent 1, four streams (one runs, three wait), a reload with 4: the
    three waiting ones start at once, while the first still runs (3 s)."""
    mock, results, ts = reload_cap_while_waiting(1, 4, 4, 30, 100)
    try:
        wait_for(lambda: len(mock.api_requests()) == 4, timeout=2,
                 what="the three waiting streams to start while the first still runs")
    finally:
        for t in ts:
            t.join(120)
    assert all(r == (200, "[DONE]") for r in results), results


def test_reload_weights_apply_to_waiting_requests():
    """Two backends with weight 1 and max_concurrent 1, one stream on each, four requests waiting;
    a reload gives room (max_concurrent 10) and the second backend weight 1000: the four waiting
    requests go by the new weights, all to the second backend (least outstanding per unit of
    weight), not two and two."""
    ma, mb = Mock(), Mock()

    def config(mc, weight_b):
        return gateway_config([], pools=[pool("p1", ["m1"], [backend(ma.port, max_concurrent=mc, weight=1),
                                                             backend(mb.port, max_concurrent=mc, weight=weight_b)],
                                              queue={"max": 10, "timeout_ms": 60000})])
    base = config(1, 1)
    gw = Gateway(base)
    results = [None] * 6
    ts = [threading.Thread(target=stream, args=(gw, results, i), kwargs={"tokens": 40, "token_ms": 100})
          for i in range(2)]
    for t in ts:
        t.start()
    wait_for(lambda: len(ma.api_requests()) == 1 and len(mb.api_requests()) == 1, timeout=20,
             what="one stream on each backend")
    for i in range(2, 6):
        t = threading.Thread(target=stream, args=(gw, results, i), kwargs={"tokens": 1, "token_ms": 1})
        t.start()
        ts.append(t)
    wait_for(lambda: queued(gw) == 4, timeout=20, what="four requests waiting")
    changed = config(10, 1000)
    changed["listen"], changed["admin"] = base["listen"], base["admin"]
    assert post_reload(gw, changed).status == 200
    wait_for(lambda: all(results[i] for i in range(2, 6)), timeout=3,
             what="the waiting requests to be served while the streams run (4 s)")
    for t in ts:
        t.join(120)
    assert all(r == (200, "[DONE]") for r in results), results
    assert (len(ma.api_requests()), len(mb.api_requests())) == (1, 5), \
        "the waiting requests went by the old weights: %d to the first backend, %d to the second" % (
            len(ma.api_requests()) - 1, len(mb.api_requests()) - 1)


# ---------------------------------------------------------------- signals before main (systemd unit)

UNIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "conf", "systemd", "gotthard.service")

# Stands in for a gateway that has not reached main() yet: SIGHUP at its default (death) for
# 0.8 s, then held (blocked, as main()'s first statement does) and waited for.
NOT_YET_MAIN = """
import signal, sys, time
time.sleep(0.8)
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGHUP])
for _ in range(2000):
    if signal.SIGHUP in signal.sigpending():
        sys.exit(0)
    time.sleep(0.01)
sys.exit(3)
"""


def unit_reload_commands(binary, config_path, mainpid):
    """The unit's ExecReload= lines as argv lists, as systemd runs them ($$ is a $, $MAINPID the
    main process), with the installed paths replaced by the test's."""
    import shlex
    cmds = []
    for ln in open(UNIT).read().splitlines():
        if not ln.startswith("ExecReload="):
            continue
        cmd = ln[len("ExecReload="):].replace("$$", "\0").replace("${MAINPID}", str(mainpid))
        cmd = cmd.replace("$MAINPID", str(mainpid)).replace("\0", "$")
        cmd = cmd.replace("/usr/local/bin/gotthard", binary).replace("/etc/gotthard/gotthard.json", config_path)
        cmds.append(shlex.split(cmd))
    assert cmds, "no ExecReload= in the unit"
    return cmds


def systemctl_reload(binary, config_path, mainpid):
    """Runs the ExecReload= lines in turn, stopping at the first that fails (as systemd does)."""
    for argv in unit_reload_commands(binary, config_path, mainpid):
        if subprocess.run(argv, env=dict(os.environ, MAINPID=str(mainpid)), stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=30).returncode != 0:
            return False
    return True


def healthy(admin_port):
    try:
        return gwtest.get(admin_port, "/healthz", timeout=1).status == 200
    except OSError:
        return False


def test_unit_reload_waits_for_the_gateway_to_hold_sighup():
    """With Type=simple the unit is active from the fork: `systemctl reload` may come before the
    gateway's main() runs, when a SIGHUP still kills it. The unit's ExecReload sends SIGHUP only once
    the main process holds it: against a process that holds it only after 0.8 s, the reload waits
    and the process gets the signal alive; and a real gateway reloaded from its spawn on survives,
    serves, and has reloaded."""
    d = gwtest.tempdir("gwtest-unit-")
    mock = Mock()
    cfg = gateway_config([mock.port], workers=2)
    path = os.path.join(d, "gotthard.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    binary = gwtest.gotthard_bin()

    stand_in = subprocess.Popen([sys.executable, "-c", NOT_YET_MAIN], stdin=subprocess.DEVNULL)
    try:
        assert systemctl_reload(binary, path, stand_in.pid), "the unit's reload failed"
        rc = stand_in.wait(30)
    finally:
        if stand_in.poll() is None:
            stand_in.kill()
            stand_in.wait(10)
    assert rc == 0, "the unit's reload sent SIGHUP before the process held it (exit %s)" % rc

    admin = int(cfg["admin"]["address"].rsplit(":", 1)[1])
    port = int(cfg["listen"][0]["address"].rsplit(":", 1)[1])
    err = open(os.path.join(d, "stderr.txt"), "wb")
    p = subprocess.Popen([binary, "-c", path], stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT, cwd=d)
    try:
        reloads_ok = [systemctl_reload(binary, path, p.pid) for _ in range(2)]
        assert p.poll() is None, "a reload killed the gateway: exit %s" % p.returncode
        assert all(reloads_ok), reloads_ok
        wait_for(lambda: healthy(admin), timeout=30, what="the gateway to start")
        wait_for(lambda: "configuration reloaded (SIGHUP)" in open(os.path.join(d, "stderr.txt")).read(),
                 timeout=10, what="the reload to be done")
        r = gwtest.post_json(port, "/v1/chat/completions", gwtest.chat("m1"))
        assert r.status == 200, r.describe()
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        rc = p.wait(30)
        err.close()
    assert rc == 0, "exit %s after SIGTERM" % rc


if __name__ == "__main__":
    gwtest.run(globals())
