"""The example external plugin (plugins/example, loaded from its .so): a header stamped both ways, a
refusal that never reaches the backend, an asynchronous wait that does not block the worker, a client
that leaves during the wait, and config errors reported under $.plugins[0]."""

import json
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from gwtest import Mock, Gateway, Conn, gateway_config, chat, post_json, assert_error  # noqa: E402
import streamutil as su  # noqa: E402


def _plugin_cfg(**conf):
    c = {"header": "x-gotthard-example", "value": "hello", "delay_ms": 0}
    c.update(conf)
    return [{"path": gwtest.example_plugin(), "config": c}]


def _need_plugin():
    p = gwtest.example_plugin()
    if not os.path.isfile(p):
        raise AssertionError("example plugin not found: %s (build it, or set EXAMPLE_PLUGIN)" % p)


def _gw(mock, **conf):
    _need_plugin()
    return Gateway(gateway_config([mock.port], plugins=_plugin_cfg(**conf), timeouts={"drain_ms": 2000}))


def test_header_reaches_backend_and_client():
    mock = Mock()
    gw = _gw(mock)
    r = post_json(gw.port, "/v1/chat/completions", chat("m1"))
    assert r.status == 200, r.describe()
    assert r.header("x-gotthard-example") == "hello", "client response lacks x-gotthard-example: hello: %s" % r.describe()
    rec = mock.wait_requests(1)[0]
    assert gwtest.header_values(rec, "x-gotthard-example") == ["hello"], (
        "backend got x-gotthard-example %r" % gwtest.header_values(rec, "x-gotthard-example"))


def test_header_on_streams_and_other_endpoints():
    mock = Mock()
    gw = _gw(mock)
    res = su.stream(gw.port, chat("m1", stream=True), {"x-mock-tokens": "4"})
    su.assert_clean_stream(res, 4)
    assert res.resp.header("x-gotthard-example") == "hello", res.describe()
    r = post_json(gw.port, "/v1/embeddings", {"model": "m1", "input": "x"})
    assert r.status == 200 and r.header("x-gotthard-example") == "hello", r.describe()
    for rec in mock.wait_requests(2):
        assert gwtest.header_values(rec, "x-gotthard-example") == ["hello"], rec


def test_client_cannot_override_plugin_header_twice():
    """A client-sent x-gotthard-example must not produce two values at the backend."""
    mock = Mock()
    gw = _gw(mock)
    r = post_json(gw.port, "/v1/chat/completions", chat("m1"), headers={"x-gotthard-example": "client"})
    assert r.status == 200, r.describe()
    vals = gwtest.header_values(mock.wait_requests(1)[0], "x-gotthard-example")
    assert vals == ["hello"], "backend got x-gotthard-example %r (expected exactly the plugin's value)" % vals


def test_deny_is_403_and_nothing_reaches_backend():
    mock = Mock()
    gw = _gw(mock)
    r = post_json(gw.port, "/v1/chat/completions", chat("m1", content="CANARY-4711"), headers={"x-example-deny": "1"})
    assert_error(r, 403, "denied_by_example", canary="CANARY-4711")
    r2 = post_json(gw.port, "/v1/chat/completions", chat("m1", stream=True), headers={"x-example-deny": "1"})
    assert_error(r2, 403, "denied_by_example")
    time.sleep(0.2)
    assert mock.api_requests() == [], "a denied request reached the backend: %r" % mock.api_requests()
    # the connection after a plugin refusal: either keep-alive goes on, or the 403 says
    # "Connection: close" (closing a persistent connection unannounced breaks keep-alive clients)
    c = Conn(gw.port, timeout=5)
    try:
        c.send(gwtest.http_request("POST", "/v1/chat/completions", chat("m1"),
                                   [("Content-Type", "application/json"), ("x-example-deny", "1")]))
        rr = c.read_response(5)
        assert rr.status == 403, rr.describe()
        if rr.has_token("connection", "close"):
            assert c.wait_closed(2), "403 said Connection: close but the connection stayed open"
        else:
            assert c.is_open(0.3), (
                "the gateway closed the keep-alive connection after a plugin refusal without saying "
                "Connection: close in the 403: %s" % rr.describe())
            c.send(gwtest.http_request("POST", "/v1/chat/completions", chat("m1"),
                                       [("Content-Type", "application/json")]))
            rr = c.read_response(5)
            assert rr.status == 200, "request after a 403 on the same connection: %s" % rr.describe()
            assert len(mock.api_requests()) == 1
    finally:
        c.close()


def test_deny_only_for_value_1():
    mock = Mock()
    gw = _gw(mock)
    r = post_json(gw.port, "/v1/chat/completions", chat("m1"), headers={"x-example-deny": "0"})
    assert r.status == 200, r.describe()


def test_async_delay_waits():
    mock = Mock()
    gw = _gw(mock, delay_ms=200)
    for _ in range(3):
        t0 = time.monotonic()
        r = post_json(gw.port, "/v1/chat/completions", chat("m1"))
        dt = time.monotonic() - t0
        assert r.status == 200, r.describe()
        assert dt >= 0.19, "delay_ms 200 but the request took %.3fs" % dt
        assert r.header("x-gotthard-example") == "hello", r.describe()


def test_async_delay_is_concurrent():
    """20 concurrent requests with a 200 ms plugin wait on one worker: done in well under 20 x 200 ms."""
    mock = Mock()
    gw = _gw(mock, delay_ms=200)
    out = [None] * 20
    times = [None] * 20

    def one(i):
        t = time.monotonic()
        out[i] = post_json(gw.port, "/v1/chat/completions", chat("m1"), timeout=15)
        times[i] = time.monotonic() - t

    t0 = time.monotonic()
    ts = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(20)
    total = time.monotonic() - t0
    assert all(r is not None and r.status == 200 for r in out), [r and r.status for r in out]
    assert min(times) >= 0.19, "a request skipped the wait: %.3fs" % min(times)
    assert total < 1.5, "20 concurrent 200 ms waits took %.2fs (they do not wait concurrently; serial would be 4 s)" % total


def test_delay_also_applies_to_streams():
    mock = Mock()
    gw = _gw(mock, delay_ms=200)
    t0 = time.monotonic()
    res = su.stream(gw.port, chat("m1", stream=True), {"x-mock-tokens": "3"})
    su.assert_clean_stream(res, 3)
    assert res.t_head - t0 >= 0.19, "stream head after %.3fs with delay_ms 200" % (res.t_head - t0)


def test_client_disconnect_during_wait():
    """Clients that leave during the plugin's 300 ms wait: the gateway survives (no crash, no
    sanitizer report), keeps serving, and the backend never sees those requests."""
    mock = Mock()
    gw = _gw(mock, delay_ms=300)
    for i in range(8):
        c = Conn(gw.port, timeout=5)
        c.send(gwtest.http_request("POST", "/v1/chat/completions", chat("m1", content="left-%d" % i),
                                   [("Content-Type", "application/json")]))
        time.sleep(0.03 * (i % 4))
        c.close()
    # also one that half-closes (shuts down its write side) during the wait
    c = Conn(gw.port, timeout=5)
    c.send(gwtest.http_request("POST", "/v1/chat/completions", chat("m1", content="half"),
                               [("Content-Type", "application/json")]))
    c.shutdown_write()
    time.sleep(0.6)   # every wait has ended by now
    c.close()
    assert gw.alive(), "gateway died after clients left during a plugin wait:\n%s" % gw.stderr_text()[-2000:]
    r = post_json(gw.port, "/v1/chat/completions", chat("m1", content="stay"))
    assert r.status == 200, r.describe()
    bodies = [gwtest.record_json(q)["messages"][0]["content"] for q in mock.api_requests()]
    leaked = [b for b in bodies if b.startswith("left-")]
    assert not leaked, "requests whose clients left during the wait reached the backend: %r" % leaked
    assert "stay" in bodies, bodies


def test_bad_plugin_config_fails_check_with_path():
    _need_plugin()
    tmp = tempfile.mkdtemp(prefix="gwtest-plugin-")
    cases = [
        ({"header": 5, "value": "hello"}, "$.plugins[0].config"),
        ({"header": "x-a", "value": "b", "delay_ms": -1}, "$.plugins[0].config"),
        ({"header": "x-a", "value": "b", "bogus": 1}, "$.plugins[0].config"),
    ]
    for conf, path in cases:
        cfg = gateway_config([1], plugins=[{"path": gwtest.example_plugin(), "config": conf}])
        p = os.path.join(tmp, "g.json")
        with open(p, "w") as f:
            json.dump(cfg, f)
        rc, out, err = gwtest.run_gotthard(["-t", "-c", p])
        text = out + err
        assert rc == 1, "gotthard -t with plugin config %r exited %d: %s" % (conf, rc, text[-400:])
        assert path in text, "plugin config %r: error does not name %s: %s" % (conf, path, text[-400:])
        assert p in text, "error lines must start with the file name: %s" % text[-400:]
    # and a good one passes
    cfg = gateway_config([1], plugins=_plugin_cfg())
    with open(os.path.join(tmp, "ok.json"), "w") as f:
        json.dump(cfg, f)
    rc, out, err = gwtest.run_gotthard(["-t", "-c", os.path.join(tmp, "ok.json")])
    assert rc == 0 and "ok" in out, (rc, out, err)


def test_missing_plugin_file_fails_check_with_path():
    tmp = tempfile.mkdtemp(prefix="gwtest-plugin-")
    cfg = gateway_config([1], plugins=[{"path": os.path.join(tmp, "nope.so"), "config": {}}])
    p = os.path.join(tmp, "g.json")
    with open(p, "w") as f:
        json.dump(cfg, f)
    rc, out, err = gwtest.run_gotthard(["-t", "-c", p])
    assert rc == 1 and "$.plugins[0]" in out + err, (rc, out, err)


if __name__ == "__main__":
    gwtest.run(globals())
