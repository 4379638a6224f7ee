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
  request is queued and served; queued bodies are held to queue.max_bytes (503 + retry-after).
"""

import hashlib
import json
import os
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


if __name__ == "__main__":
    gwtest.run(globals())
