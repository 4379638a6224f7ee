"""Threaded parts under load: several workers, reloads and the drain while requests and streams
run. The test command also runs this file against a ThreadSanitizer build (GOTTHARD_BIN set by
tests/integration/CMakeLists.txt to build-tsan when it exists)."""
import os
import signal
import threading
import time

import gwtest
from gwtest import Gateway, Mock, gateway_config


def load(port, n, results, stream=False):
    for i in range(n):
        body = {"model": "m1", "messages": [{"role": "user", "content": "x %d" % i}],
                "max_tokens": 4, "stream": stream}
        try:
            r = gwtest.post_json(port, "/v1/chat/completions", body, timeout=20)
            ok = r.status == 200 and (not stream or b"[DONE]" in r.body)
            results.append(ok or ("%d %r" % (r.status, r.body[:120])))
        except Exception as ex:  # a failed request is what this test looks for
            results.append(repr(ex))


def test_workers_reload_and_drain_under_load():
    mock = Mock(["--token-ms", "2"])
    cfg = gateway_config([mock.port], workers=2)
    gw = Gateway(cfg)
    results = []
    threads = [threading.Thread(target=load, args=(gw.port, 60, results, i % 2 == 1)) for i in range(6)]
    for t in threads:
        t.start()
    # Reloads while the load runs: good ones (a model added) and a bad one (refused).
    for k in range(4):
        time.sleep(0.2)
        if k == 2:
            gw.reload(dict(cfg, workers="two"))
        else:
            gw.reload(gateway_config([mock.port], models=("m1", "m2", "extra%d" % k),
                                     listen=cfg["listen"], admin=cfg["admin"], workers=2))
    for t in threads:
        t.join(60)
    bad = [r for r in results if r is not True]
    assert len(results) == 360 and not bad, "%d of %d failed, e.g. %s" % (len(bad), len(results), bad[:3])
    # The last reload may land just after the load ends: new connections see it soon.
    def reloaded():
        models = gwtest.request(gw.port, "GET", "/v1/models").json()
        return "extra3" in [m["id"] for m in models["data"]]
    gwtest.wait_for(reloaded, timeout=5, what="the last reload to be served")
    # Drain with streams in flight: they complete, the gateway exits 0.
    results.clear()
    slow = [threading.Thread(target=load, args=(gw.port, 1, results, True)) for _ in range(8)]
    for t in slow:
        t.start()
    time.sleep(0.05)
    rc = gw.stop(signal.SIGTERM, timeout=20)
    for t in slow:
        t.join(20)
    assert rc == 0, "exit code %s\n%s" % (rc, gw.stderr_text()[-2000:])
    assert "ThreadSanitizer" not in gw.stderr_text(), gw.stderr_text()[-4000:]


if __name__ == "__main__":
    gwtest.run(globals())
