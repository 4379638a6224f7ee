"""Issue 4's "must show", over real sockets: three gateways sharing one Redis against one
tenant's limit for a whole minute (and one gateway with the in-process store beside them);
streamed tokens against a tokens-per-minute limit across instances; Redis frozen, killed and
restarted under load.

Each client is a thread with its own keep-alive connection, paced, and stops at its deadline:
every loop is bounded in time."""
import hashlib
import http.client
import json
import math
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from gwtest import Gateway, Mock, gateway_config  # noqa: E402
from redisutil import Redis  # noqa: E402

gwtest.TEST_TIMEOUT = max(gwtest.TEST_TIMEOUT, 200)

KEYS = {t: "gk_cluster_%s_%s" % (t, "0" * 32) for t in ("acme", "small", "solo", "tok", "lim", "free")}


def tenant(tid, limits=None):
    t = {"id": tid, "models": ["*"],
         "api_keys": [{"id": tid + "-1", "sha256": hashlib.sha256(KEYS[tid].encode()).hexdigest()}]}
    if limits:
        t["limits"] = limits
    return t


def config(mock, tenants, redis=None, on_unavailable="reject", workers=2):
    extra = {}
    if redis:
        extra["redis"] = {"url": "redis://127.0.0.1:%d/0" % redis.port, "timeout_ms": 100,
                          "on_unavailable": on_unavailable}
    return gateway_config([mock.port], models=("m1", "m2"), workers=workers, tenants=tenants, **extra)


def wait_connected(gw, workers=2):
    gwtest.wait_for(lambda: gw.stderr_text().count("redis connected") >= workers, timeout=5,
                    what="every worker connected to redis")


class Client:
    """One keep-alive connection; send() returns (status, headers dict, body bytes, t_sent)."""

    def __init__(self, port):
        self.port = port
        self.c = None

    def send(self, body, key, extra=None):
        h = {"content-type": "application/json", "authorization": "Bearer " + KEYS[key]}
        h.update(extra or {})
        data = json.dumps(body)
        for attempt in (0, 1):
            if self.c is None:
                self.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            t = time.monotonic()
            try:
                self.c.request("POST", "/v1/chat/completions", body=data, headers=h)
                r = self.c.getresponse()
                payload = r.read()
                hdrs = {k.lower(): v for k, v in r.getheaders()}
                if hdrs.get("connection", "").lower() == "close":
                    self.c.close()
                    self.c = None
                return r.status, hdrs, payload, t
            except (OSError, http.client.HTTPException):
                self.c.close()
                self.c = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self):
        if self.c:
            self.c.close()


def hammer(ports, key, nclients, seconds, pace, results, errors, body=None):
    """nclients threads, client i on ports[i % len(ports)], each sending a request every `pace`
    seconds until the deadline. results: (status, headers, t_sent, t_done)."""
    body = body or {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    deadline = time.monotonic() + seconds
    lock = threading.Lock()

    def run(i):
        cl = Client(ports[i % len(ports)])
        try:
            while time.monotonic() < deadline:
                st, h, payload, t = cl.send(body, key)
                done = time.monotonic()
                with lock:
                    results.append((st, h, t, done, payload))
                rest = pace - (done - t)
                if rest > 0:
                    time.sleep(min(rest, max(0.0, deadline - time.monotonic())))
        except Exception as ex:  # noqa: BLE001 - reported by the test
            with lock:
                errors.append("client %d: %r" % (i, ex))
        finally:
            cl.close()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(nclients)]
    for t in threads:
        t.start()
    return threads


def check_minute(what, results, limit, t0):
    """Issue 4: within 1% of the limit (exact up to 100); every other answer a correct 429."""
    ok = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] != 200]
    others = [(r[0], r[4][:120]) for r in refused if r[0] != 429]
    assert not others, "%s: answers other than 200 and 429: %d, e.g. %s" % (what, len(others), others[:3])
    n = len(ok)
    if limit <= 100:
        assert n == limit, "%s: %d admitted in the minute, the limit is %d" % (what, n, limit)
    else:
        assert abs(n - limit) <= limit // 100, "%s: %d admitted, limit %d (1%%)" % (what, n, limit)
    first = min(r[2] for r in ok)        # sent: the first admission was counted after this
    first_done = min(r[3] for r in ok)   # answered: ... and before this
    for st, h, t, done, payload in refused:
        assert st == 429, "%s: %d %s" % (what, st, payload[:200])
        err = json.loads(payload)["error"]
        assert err["code"] == "rate_limit_exceeded" and err["type"], err
        ms, s = int(h["retry-after-ms"]), int(h["retry-after"])
        assert s == math.ceil(ms / 1000), (what, h)
        assert h["x-ratelimit-limit-requests"] == str(limit), (what, h)
        assert h["x-ratelimit-remaining-requests"] == "0", (what, h)
        # the admissions of this minute leave the window 60-62 s after they were counted:
        # a retry time earlier than that would be a lie, much later a needless wait
        assert first + 59.0 <= done + ms / 1000 <= first_done + 62.5 + (done - t), \
            "%s: retry-after-ms %d at +%.2f s" % (what, ms, done - first)
    for st, h, t, done, payload in ok:
        assert h["x-ratelimit-limit-requests"] == str(limit), (what, h)
        assert 0 <= int(h["x-ratelimit-remaining-requests"]) < limit, (what, h)
    return n, len(refused)


def test_one_minute_three_instances_and_in_process():
    """300/min across three gateways sharing Redis, 100 clients; 100/min beside it, exact; and
    the in-process store on one gateway, 100 clients, at the same time."""
    redis, mock = Redis(), Mock()
    shared = [tenant("acme", {"requests_per_minute": 300}),
              tenant("small", {"requests_per_minute": 100})]
    gws = [Gateway(config(mock, shared, redis)) for _ in range(3)]
    for g in gws:
        wait_connected(g)
    solo = Gateway(config(mock, [tenant("solo", {"requests_per_minute": 300})]))
    ports = [g.port for g in gws]
    res = {"acme": [], "small": [], "solo": []}
    errors = []
    t0 = time.monotonic()
    threads = (hammer(ports, "acme", 100, 60.0, 0.25, res["acme"], errors) +
               hammer(ports, "small", 15, 60.0, 0.25, res["small"], errors) +
               hammer([solo.port], "solo", 100, 60.0, 0.25, res["solo"], errors))
    for t in threads:
        t.join(75)
    assert not errors, errors[:5]
    assert not any(t.is_alive() for t in threads), "a client hung"
    a = check_minute("3 instances, Redis, 300/min", res["acme"], 300, t0)
    b = check_minute("3 instances, Redis, 100/min", res["small"], 100, t0)
    c = check_minute("1 instance, in-process, 300/min", res["solo"], 300, t0)
    info = redis.cmd("INFO", "commandstats")
    info = info.decode() if isinstance(info, bytes) else info
    evalsha = int([l for l in info.splitlines()
                   if l.startswith("cmdstat_evalsha:")][0].split("calls=")[1].split(",")[0])
    print("  one minute: Redis 300/min: %d admitted, %d refused; Redis 100/min: %d, %d; "
          "in-process 300/min: %d, %d; EVALSHA calls %d" % (a + b + c + (evalsha,)))


def test_streamed_tokens_across_instances():
    """1,000 tokens a minute, three gateways, streams: what the backend produced for the
    admitted streams stays within the limit (their reservations cover what they produce), and
    settlements give back what the estimates overshot, so the limit is used, not wasted."""
    redis, mock = Redis(), Mock()
    tenants = [tenant("tok", {"tokens_per_minute": 1000})]
    gws = [Gateway(config(mock, tenants, redis)) for _ in range(3)]
    for g in gws:
        wait_connected(g)
    used, statuses, errors = [], [], []
    lock = threading.Lock()
    deadline = time.monotonic() + 20.0
    body = {"model": "m1", "stream": True, "max_tokens": 40,
            "messages": [{"role": "user", "content": "one two three four five six seven eight"}]}

    def run(i):
        port = gws[i % 3].port
        try:
            while time.monotonic() < deadline:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                c.request("POST", "/v1/chat/completions", body=json.dumps(body),
                          headers={"content-type": "application/json", "x-mock-token-ms": "10", "x-mock-tokens": "40",
                                   "authorization": "Bearer " + KEYS["tok"]})
                r = c.getresponse()
                data = r.read().decode()
                c.close()
                with lock:
                    statuses.append(r.status)
                if r.status != 200:
                    time.sleep(0.2)
                    continue
                assert '"usage"' not in data, "the usage chunk the client did not ask for was relayed"
                assert data.rstrip().endswith("data: [DONE]"), data[-200:]
                with lock:
                    used.append(len(json.dumps(body)) // 4 + 40)  # the gateway's estimate
        except Exception as ex:  # noqa: BLE001
            with lock:
                errors.append(repr(ex))

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    assert not errors, errors[:3]
    # the backend's own record: the prompt (8 words) and the tokens it sent, per stream
    recs = mock.api_requests()
    produced = sum(8 + r["tokens_sent"] for r in recs)
    assert len(recs) == len(used), "every admitted stream reached the backend once: %d vs %d" % (
        len(recs), len(used))
    assert all(r["tokens_sent"] == 40 for r in recs), "every admitted stream ran to its end"
    assert produced <= 1000, "streams produced %d tokens against a limit of 1000" % produced
    est = used[0] if used else 0
    assert produced >= 1000 - 9 * est, \
        "settlement gives the overshoot of the estimates back: only %d tokens used" % produced
    assert statuses.count(429) > 0, "the limit was reached"
    print("  streamed: %d streams admitted, %d tokens produced (prompt + completion) of 1000; "
          "estimate per stream %d; %d refused" % (len(used), produced, est, statuses.count(429)))


def test_redis_frozen_killed_restarted_under_load():
    redis, mock = Redis(), Mock()
    port = redis.port
    tenants = [tenant("lim", {"requests_per_minute": 1000000}), tenant("free")]
    rej = Gateway(config(mock, tenants, redis, "reject"))
    loc = Gateway(config(mock, tenants, redis, "local"))
    wait_connected(rej)
    wait_connected(loc)
    log, errors = [], []  # (gateway, tenant, status, code, t_sent, t_done)
    lock = threading.Lock()
    stop = threading.Event()

    def run(gw, key):
        cl = Client(gw.port)
        body = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        try:
            end = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < end:
                st, h, payload, t = cl.send(body, key)
                code = json.loads(payload)["error"]["code"] if st != 200 else None
                with lock:
                    log.append((gw.name_tag, key, st, code, t, time.monotonic()))
                time.sleep(0.02)
        except Exception as ex:  # noqa: BLE001
            with lock:
                errors.append("%s/%s: %r" % (gw.name_tag, key, ex))
        finally:
            cl.close()

    rej.name_tag, loc.name_tag = "reject", "local"
    threads = [threading.Thread(target=run, args=(g, k), daemon=True)
               for g in (rej, loc) for k in ("lim", "free") for _ in range(3)]
    for t in threads:
        t.start()
    marks = {}
    time.sleep(2)
    marks["freeze"] = time.monotonic()
    redis.freeze()
    time.sleep(3)
    redis.thaw()
    marks["thaw"] = time.monotonic()
    time.sleep(3)
    marks["kill"] = time.monotonic()
    redis.stop(signal_kill())
    time.sleep(3)
    marks["gone_end"] = time.monotonic()  # a worker may reconnect before Redis() has seen PING
    redis2 = Redis(port=port)
    marks["back"] = time.monotonic()
    # recovery: within 5 s of Redis returning every worker serves the limited tenant again
    # (each worker has its own connection and its own reconnect backoff)
    time.sleep(5.5)
    time.sleep(2)
    stop.set()
    for t in threads:
        t.join(15)
    assert not errors, errors[:3]
    assert rej.alive() and loc.alive(), "a gateway died"

    def phase(a, b):
        return [e for e in log if a + 1.2 <= e[4] and e[5] <= b]  # 1.2 s: leases run out

    # A request held by the 3 s freeze would wait seconds; 2 s leaves room for a noisy machine.
    slow = [e for e in log if e[5] - e[4] > 2.0]
    assert not slow, "requests waited more than 2 s: %s" % slow[:3]
    for name, a, b in (("frozen", marks["freeze"], marks["thaw"]),
                       ("gone", marks["kill"], marks["gone_end"])):
        out = phase(a, b)
        rl = [e for e in out if e[0] == "reject" and e[1] == "lim"]
        assert rl and all(e[2] == 503 and e[3] == "quota_unavailable" for e in rl), \
            (name, sorted(set((e[2], e[3]) for e in rl)))
        ll = [e for e in out if e[0] == "local" and e[1] == "lim"]
        assert ll and all(e[2] == 200 for e in ll), (name, sorted(set(e[2] for e in ll)))
        fr = [e for e in out if e[1] == "free"]
        assert fr and all(e[2] == 200 for e in fr), "other tenants unaffected: %s" % (
            sorted(set(e[2] for e in fr)),)
    failed_after = [e for e in log if e[4] > marks["back"] and e[2] != 200]
    marks["recovered"] = max([e[5] for e in failed_after] + [marks["back"]])
    assert marks["recovered"] - marks["back"] <= 5.0, \
        "a request failed %.2f s after Redis returned: %s" % (marks["recovered"] - marks["back"],
                                                              failed_after[-3:])
    assert all(e[0] == "reject" and e[1] == "lim" for e in failed_after), failed_after[:3]
    after = [e for e in log if e[4] > marks["back"] + 5.0]
    assert after and all(e[2] == 200 for e in after), sorted(set((e[0], e[1], e[2]) for e in after))
    print("  faults: %d requests; the last refusal %.2f s after Redis returned; slowest %.0f ms" % (
        len(log), marks["recovered"] - marks["back"], 1000 * max(e[5] - e[4] for e in log)))
    redis2.stop()


def signal_kill():
    import signal
    return signal.SIGKILL


if __name__ == "__main__":
    gwtest.run(globals())
