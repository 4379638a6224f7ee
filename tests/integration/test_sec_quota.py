"""Quota accounting under review (issues 14/22 follow-up): Redis concurrency slots that outlive a
lost answer, a stream ending or a reload; requests never served charged nothing; the estimate
counting every choice (n, best_of); a pool alias held to its model's limits; usage read from
answers of any size up to the cap; partial usage treated as none; Redis usage counts flushed
without later traffic and at shutdown."""
import datetime
import hashlib
import json
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from gwtest import Gateway, gateway_config  # noqa: E402
from redisutil import Redis  # noqa: E402

KEY = "gk_secquotatestkey00000000000000000000000000"
HOST = "127.0.0.1"


class Backend:
    """An OpenAI-shaped backend on a free port: honours n, max_tokens, stream and include_usage.
    status: the status of its answers (non-2xx: an OpenAI error body); usage: None (the true
    counts: len(body) // 4 and n * max_tokens), "omit", or an object reported verbatim; pad: bytes
    of filler in a JSON answer; delay: seconds per token of a stream, or before a JSON answer;
    cut: None, or ("close" | "error", k): a stream ends after k content events, by closing the
    connection or by an error event."""

    def __init__(self):
        self.status, self.usage, self.pad, self.delay = 200, None, 0, 0.0
        self.cut = None
        self.seen = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.closed = False
        threading.Thread(target=self._serve, daemon=True).start()

    def stop(self):
        self.closed = True
        for c in [self.sock] + self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def _serve(self):
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._handle, args=(c,), daemon=True).start()

    def _read(self, c, buf):
        while b"\r\n\r\n" not in buf:
            d = c.recv(65536)
            if not d:
                return None, None, None
            buf += d
        head, buf = buf.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        n = 0
        for ln in lines[1:]:
            k, _, v = ln.partition(b":")
            if k.strip().lower() == b"content-length":
                n = int(v)
        while len(buf) < n:
            d = c.recv(65536)
            if not d:
                return None, None, None
            buf += d
        return lines[0].split(b" ")[1].decode(), buf[:n], buf[n:]

    def _send_json(self, c, status, obj):
        b = json.dumps(obj).encode()
        c.sendall(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                  % (status, len(b)) + b)

    def _handle(self, c):
        buf = b""
        try:
            while True:
                path, body, buf = self._read(c, buf)
                if path is None:
                    return
                if not path.startswith("/v1/"):
                    self._send_json(c, 200, {"status": "ok"})
                    continue
                j = json.loads(body)
                self.seen.append(j)
                n = j.get("n") or 1
                mt = j.get("max_tokens") or 16
                usage = {"prompt_tokens": len(body) // 4, "completion_tokens": n * mt,
                         "total_tokens": len(body) // 4 + n * mt}
                if self.usage is not None:
                    usage = self.usage
                if self.status != 200:
                    self._send_json(c, self.status, {"error": {"message": "refused", "type":
                                                               "invalid_request_error",
                                                               "code": "bad"}})
                    continue
                if not j.get("stream"):
                    time.sleep(self.delay)
                    o = {"id": "x", "object": "chat.completion", "model": j.get("model"),
                         "choices": [{"index": i, "message": {"role": "assistant",
                                                              "content": "tok " * mt},
                                      "finish_reason": "length"} for i in range(n)],
                         "pad": "p" * self.pad}
                    if usage != "omit":
                        o["usage"] = usage
                    self._send_json(c, 200, o)
                    continue
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n")

                def ev(data):
                    d = b"data: " + data + b"\n\n"
                    c.sendall(b"%x\r\n" % len(d) + d + b"\r\n")

                for t in range(mt):
                    if self.cut and t == self.cut[1]:
                        break
                    for i in range(n):
                        ev(json.dumps({"id": "x", "object": "chat.completion.chunk",
                                       "choices": [{"index": i, "delta": {"content": "tok "}}]})
                           .encode())
                    time.sleep(self.delay)
                if self.cut and self.cut[0] == "close":
                    return
                if self.cut:
                    ev(b'{"error":{"message":"boom","type":"server_error","code":"server_error"}}')
                    c.sendall(b"0\r\n\r\n")
                    continue
                if (j.get("stream_options") or {}).get("include_usage") and usage != "omit":
                    ev(json.dumps({"id": "x", "object": "chat.completion.chunk", "choices": [],
                                   "usage": usage}).encode())
                ev(b"[DONE]")
                c.sendall(b"0\r\n\r\n")
        except OSError:
            return
        finally:
            c.close()


def tenant(limits):
    return [{"id": "acme", "models": ["*"],
             "api_keys": [{"id": "acme-1", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}],
             "limits": limits}]


def config(be, limits, redis=None, timeout_ms=100, db="/0", **kw):
    extra = {}
    if redis:
        extra["redis"] = {"url": "redis://127.0.0.1:%d%s" % (redis.port, db), "timeout_ms": timeout_ms,
                          "on_unavailable": "reject"}
    extra.update(kw)
    return gateway_config([be.port], models=("m1",), tenants=tenant(limits), **extra)


AUTH = {"authorization": "Bearer " + KEY}


def chat(gw, model="m1", timeout=15, **body):
    b = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    b.update(body)
    return gwtest.post_json(gw.port, "/v1/chat/completions", b, headers=AUTH, timeout=timeout)


def stream(gw, **body):
    b = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
         "stream": True}
    b.update(body)
    return gwtest.open_stream(gw.port, "/v1/chat/completions", b, headers=AUTH, timeout=15)


def finish(conn, resp):
    try:
        for _ in gwtest.iter_sse(conn, resp, timeout=15):
            pass
    finally:
        conn.close()


def usage_today(gw):
    r = gwtest.get(gw.admin_port, "/usage?days=1")
    assert r.status == 200, r.describe()
    return r.json()["days"][0]["tenants"].get("acme", {})


CONC = "gotthard:q:{acme}:conc"


def wait_connected(gw, n=1):
    gwtest.wait_for(lambda: gw.stderr_text().count("redis connected") >= n, timeout=10,
                    what="the workers connected to redis")


def wait_slots_free(redis, timeout=10):
    gwtest.wait_for(lambda: redis.cmd("ZCARD", CONC) == 0, timeout=timeout,
                    what="the concurrency slots released in redis")


def assert_admits_streams(gw, n):
    """n concurrent streams (the tenant's max_concurrent) are all admitted."""
    opened = []
    try:
        for _ in range(n):
            c, r = stream(gw, max_tokens=20)
            opened.append((c, r))
            assert r.status == 200, "stream %d of %d: %s" % (len(opened), n, r.describe())
    finally:
        for c, r in opened:
            c.close()


# ---- A: Redis concurrency slots ----------------------------------------------------------------

def test_lost_admission_releases_its_slot():
    """Redis frozen past timeout_ms: the admission is answered 503 (on_unavailable reject) or
    served from the process's counts (local), but Redis runs it when it wakes up; its slot must
    be released, not held for the 15-minute lease."""
    for mode, status in (("reject", 503), ("local", 200)):
        redis, be = Redis(), Backend()
        be.delay = 0.05
        cfg = config(be, {"max_concurrent": 2}, redis)
        cfg["redis"]["on_unavailable"] = mode
        gw = Gateway(cfg)
        wait_connected(gw)
        assert chat(gw).status == 200  # the scripts are loaded: an EVALSHA now runs
        for round_ in range(2):
            redis.freeze()
            try:
                r = chat(gw)
            finally:
                redis.thaw()
            assert r.status == status, "%s: %s" % (mode, r.describe())
            gwtest.wait_for(lambda: gw.stderr_text().count("redis connected") >= round_ + 2,
                            timeout=10, what="the worker reconnected")
            wait_slots_free(redis)
        assert_admits_streams(gw, 2)
        be.stop()
        gw.stop()
        redis.stop()


def test_stream_ending_while_redis_away_releases_its_slot():
    """A stream ends while the connection is down: its settlement waits for the next
    connection instead of being dropped."""
    redis, be = Redis(), Backend()
    be.delay = 0.1
    gw = Gateway(config(be, {"max_concurrent": 2}, redis))
    wait_connected(gw)
    c, r = stream(gw, max_tokens=30)  # about 3 s
    assert r.status == 200, r.describe()
    assert redis.cmd("ZCARD", CONC) == 1
    redis.freeze()
    try:
        r2 = chat(gw)  # times out: the connection is down
        assert r2.status == 503, r2.describe()
        finish(c, r)  # the stream ends while Redis is away
        time.sleep(0.5)
    finally:
        redis.thaw()
    wait_slots_free(redis)
    assert_admits_streams(gw, 2)
    be.stop()


def test_reloads_under_traffic_leak_no_slot():
    """Reloads alternating redis.timeout_ms (then also the spelling of redis.url, a new
    connection) under traffic: the commands in flight are not lost, no slot stays taken."""
    redis, be = Redis(), Backend()
    be.delay = 0.01
    limits = {"max_concurrent": 4}
    cfgs = [config(be, limits, redis, timeout_ms=t, db=db, workers=2)
            for t, db in ((100, "/0"), (150, "/0"), (150, ""))]
    for c in cfgs[1:]:
        c["listen"], c["admin"] = cfgs[0]["listen"], cfgs[0]["admin"]
    gw = Gateway(cfgs[0])
    wait_connected(gw, 2)
    stop = threading.Event()
    statuses = []

    def traffic():
        while not stop.is_set():
            try:
                if len(statuses) % 2:
                    c, r = stream(gw, max_tokens=10)
                    statuses.append(r.status)
                    finish(c, r)
                else:
                    statuses.append(chat(gw).status)
            except (OSError, AssertionError):
                statuses.append(0)

    threads = [threading.Thread(target=traffic) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(32):
            gw.reload(cfgs[(i + 1) % 2] if i < 16 else cfgs[(i % 2) * 2])
            time.sleep(0.15)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert statuses.count(200) > 10, "too little traffic got through: %s" % statuses[:50]
    if os.environ.get("FQ_DEBUG"):
        time.sleep(3)
        print(redis.cmd("ZRANGE", CONC, "0", "-1", "WITHSCORES"), sorted(set(statuses)),
              [(x, statuses.count(x)) for x in set(statuses)])
        print(gw.stderr_text()[-3000:])
    wait_slots_free(redis, timeout=15)
    assert_admits_streams(gw, 4)
    be.stop()


# ---- B: requests never served ------------------------------------------------------------------

def test_unserved_requests_are_not_charged():
    """Backend 4xx/5xx answers and the gateway's own 502s produce nothing: the minute and the
    day get their reservation back."""
    be = Backend()
    dead = gwtest.free_port()
    cfg = config(be, {"tokens_per_minute": 1000, "tokens_per_day": 1000},
                 pools=[gwtest.pool("p1", ["m1"], [be.port]), gwtest.pool("p2", ["m2"], [dead])])
    gw = Gateway(cfg)
    for status in (400, 500):
        be.status = status
        for _ in range(2):
            r = chat(gw, max_tokens=600)
            assert r.status == status, r.describe()
    for _ in range(3):
        r = chat(gw, model="m2", max_tokens=600)
        assert r.status in (502, 503), r.describe()
    be.status = 200
    r = chat(gw, max_tokens=600)
    assert r.status == 200, "refused after answers that produced nothing: " + r.describe()
    u = usage_today(gw)
    assert u.get("requests") == 1, u
    be.stop()


def test_queue_timeouts_are_not_charged():
    """Requests that wait in a pool's queue and time out (503) produced nothing: with two of
    them charged their 620-token estimate, a third request would not fit the minute."""
    be = Backend()
    be.delay = 1.5
    cfg = config(be, {"tokens_per_minute": 2000},
                 pools=[gwtest.pool("p1", ["m1"], [gwtest.backend(be.port, max_concurrent=1)],
                                    queue={"max": 10, "timeout_ms": 300})])
    gw = Gateway(cfg)
    first = {}
    t = threading.Thread(target=lambda: first.setdefault("r", chat(gw, max_tokens=600)))
    t.start()
    gwtest.wait_for(lambda: len(be.seen) == 1, timeout=5, what="the first request upstream")
    for _ in range(2):
        r = chat(gw, max_tokens=600)
        assert r.status == 503, r.describe()
    t.join(15)
    assert first["r"].status == 200, first["r"].describe()
    be.delay = 0
    r = chat(gw, max_tokens=600)
    assert r.status == 200, "refused after queue timeouts: " + r.describe()
    be.stop()


# ---- C: usage of large JSON answers ------------------------------------------------------------

def test_usage_read_from_large_json_answers():
    """An answer of ~480 KB (well below the 1 MiB cap) arrives in many pieces: its usage is
    read, not replaced by the estimate."""
    be = Backend()
    be.pad = 480 * 1024
    be.usage = {"prompt_tokens": 10, "completion_tokens": 5000, "total_tokens": 5010}
    gw = Gateway(config(be, {"tokens_per_day": 10 ** 9}))
    for _ in range(4):
        r = chat(gw, max_tokens=4)
        assert r.status == 200 and len(r.body) > 480 * 1024, r.describe()
    u = usage_today(gw)
    assert u.get("completion_tokens") == 4 * 5000 and u.get("prompt_tokens") == 40, u
    be.stop()


def test_answer_past_the_cap_is_charged_its_usage_or_every_choice():
    """An answer past the 1 MiB copy: its usage is read from its end (the copy keeps the last
    MiB); one without usage is charged its estimate, which counts n x max_tokens, so a large n
    is no way around the budget."""
    be = Backend()
    be.pad = 1100 * 1024
    gw = Gateway(config(be, {"tokens_per_day": 10 ** 9}))
    r = chat(gw, max_tokens=100, n=20)
    assert r.status == 200 and len(r.body) > 1100 * 1024, r.describe()
    u = usage_today(gw)
    assert u.get("completion_tokens") == 20 * 100, u
    be.usage = "omit"
    r = chat(gw, max_tokens=100, n=20)
    assert r.status == 200, r.describe()
    u = usage_today(gw)
    assert u.get("completion_tokens", 0) >= 2 * 20 * 100, u
    be.stop()


# ---- D: the estimate counts every choice --------------------------------------------------------

def test_estimate_counts_every_choice():
    """Concurrent requests with n:50 and max_tokens:40 each reserve 2,000 tokens: with
    tokens_per_minute 2000 the second is refused while the first runs (best_of: the unit test)."""
    be = Backend()
    be.delay = 1.5
    gw = Gateway(config(be, {"tokens_per_minute": 2000}))
    first = {}
    t = threading.Thread(target=lambda: first.setdefault("r", chat(gw, max_tokens=40, n=50)))
    t.start()
    gwtest.wait_for(lambda: len(be.seen) == 1, timeout=5, what="the first request upstream")
    r = chat(gw, max_tokens=40, n=50)
    t.join(15)
    assert first["r"].status == 200, first["r"].describe()
    assert r.status == 429 and r.error_code() == "rate_limit_exceeded", r.describe()
    be.stop()


# ---- E: a pool alias and per-model limits ------------------------------------------------------

def test_alias_held_to_its_models_limits():
    """The pool serves m1 also as gpt-x: the tenant's limit on m1 holds requests sent as gpt-x."""
    be = Backend()
    cfg = config(be, {"models": {"m1": {"requests_per_minute": 2}}},
                 pools=[gwtest.pool("p1", ["m1"], [be.port], aliases={"gpt-x": "m1"})])
    gw = Gateway(cfg)
    st = [chat(gw, model="gpt-x").status for _ in range(4)]
    assert st == [200, 200, 429, 429], st
    assert chat(gw, model="m1").status == 429
    be.stop()


def test_alias_with_its_own_limit():
    """A limit that names the alias holds it too (the target has none)."""
    be = Backend()
    cfg = config(be, {"models": {"gpt-x": {"requests_per_minute": 1}}},
                 pools=[gwtest.pool("p1", ["m1"], [be.port], aliases={"gpt-x": "m1"})])
    gw = Gateway(cfg)
    st = [chat(gw, model="gpt-x").status for _ in range(2)]
    assert st == [200, 429], st
    assert chat(gw, model="m1").status == 200
    be.stop()


# ---- F: Redis usage counts reach Redis ---------------------------------------------------------

def usage_key():
    return "gotthard:u:{acme}:" + datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")


def redis_requests(redis):
    v = redis.cmd("HGET", usage_key(), "requests")
    return int(v) if v is not None else 0


def test_usage_burst_reaches_redis_without_more_traffic():
    redis, be = Redis(), Backend()
    gw = Gateway(config(be, {"requests_per_minute": 1000}, redis))
    wait_connected(gw)
    for _ in range(5):
        assert chat(gw).status == 200
    gwtest.wait_for(lambda: redis_requests(redis) == 5, timeout=5,
                    what="the burst's counts in redis (have %d)" % redis_requests(redis))
    be.stop()


def test_usage_flushed_at_shutdown():
    redis, be = Redis(), Backend()
    gw = Gateway(config(be, {"requests_per_minute": 1000}, redis))
    wait_connected(gw)
    for _ in range(3):
        assert chat(gw).status == 200
    assert gw.stop() == 0
    assert redis_requests(redis) == 3, redis_requests(redis)
    be.stop()


# ---- G: partial usage --------------------------------------------------------------------------

def test_partial_usage_is_no_usage():
    """A usage without a valid completion_tokens is charged the estimate, not 0 completion
    tokens (JSON answers and streams)."""
    be = Backend()
    gw = Gateway(config(be, {"tokens_per_day": 10 ** 9}))
    bad = [{"prompt_tokens": 7}, {"prompt_tokens": 7, "completion_tokens": -5},
           {"prompt_tokens": 7, "completion_tokens": 2.5},
           {"prompt_tokens": 7, "completion_tokens": 1e13},
           {"prompt_tokens": 7, "completion_tokens": "9"}]
    done = 0
    for u in bad:
        be.usage = u
        r = chat(gw, max_tokens=50)
        assert r.status == 200, r.describe()
        done += 1
        got = usage_today(gw).get("completion_tokens", 0)
        assert got >= done * 50, "%s: completion tokens %d after %d answers" % (u, got, done)
    be.usage = {"prompt_tokens": 7}
    c, r = stream(gw, max_tokens=50)
    finish(c, r)
    got = usage_today(gw).get("completion_tokens", 0)
    assert got >= (done + 1) * 50, "a stream's partial usage: %d" % got
    be.stop()


# ---- G: what counts as served (merge review) ---------------------------------------------------

def test_stream_cut_by_backend_is_charged_what_it_relayed():
    """A backend that closes, or sends an error event, after 40 content events: the client got
    200 and the events, so quota charges the prompt estimate and the events relayed (not the
    reservation of max_tokens 500, not nothing), and the access log says the same."""
    be = Backend()
    for mode in ("close", "error"):
        be.cut = (mode, 40)
        log = os.path.join(gwtest.tempdir(), "access.log")
        gw = Gateway(config(be, {"tokens_per_minute": 1000000}, access_log={"path": log}))
        c, r = stream(gw, max_tokens=500)
        assert r.status == 200, r.describe()
        got = 0
        try:
            for _ in gwtest.iter_sse(c, r, timeout=15):
                got += 1
        except Exception:
            pass
        c.close()
        assert got >= 40, "%s: %d events" % (mode, got)
        gwtest.wait_for(lambda: usage_today(gw).get("requests") == 1, timeout=5,
                        what="%s: the cut stream counted in /usage" % mode)
        u = usage_today(gw)
        assert 40 <= u.get("completion_tokens", 0) < 500, (mode, u)
        gwtest.wait_for(lambda: os.path.exists(log) and open(log).read().strip(), timeout=5,
                        what="the access log line")
        line = json.loads(open(log).read().strip().splitlines()[-1])
        assert line["completion_tokens"] == u["completion_tokens"], (mode, line, u)
        assert line["prompt_tokens"] == u["prompt_tokens"], (mode, line, u)
        gw.stop()
    be.stop()


def tokens_metric(gw):
    r = gwtest.get(gw.admin_port, "/metrics")
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in r.body.decode().splitlines()
               if ln.startswith("gotthard_tokens_total{"))


def test_unserved_requests_count_no_tokens_anywhere():
    """The gateway's 502 (backend port closed) and a backend's 500 answer that carries a usage
    object: nothing served, so /usage, gotthard_tokens_total and the access log all count 0
    tokens (the log's tokens_estimated false)."""
    be = Backend()
    be.status = 500
    dead = gwtest.free_port()
    log = os.path.join(gwtest.tempdir(), "access.log")
    cfg = config(be, {"tokens_per_minute": 100000}, access_log={"path": log},
                 pools=[gwtest.pool("p1", ["m1"], [be.port]), gwtest.pool("p2", ["m2"], [dead])])
    gw = Gateway(cfg)
    for model in ("m2", "m2", "m1", "m1"):
        r = chat(gw, model=model, messages=[{"role": "user", "content": "x" * 4000}])
        assert r.status in (500, 502, 503), r.describe()
    gwtest.wait_for(lambda: os.path.exists(log) and len(open(log).read().splitlines()) == 4,
                    timeout=5, what="four access log lines")
    assert usage_today(gw) == {}, usage_today(gw)
    assert tokens_metric(gw) == 0, tokens_metric(gw)
    for ln in open(log).read().splitlines():
        j = json.loads(ln)
        assert j["prompt_tokens"] == 0 and j["completion_tokens"] == 0, j
        assert j["tokens_estimated"] is False, j
    # a served answer still counts
    be.status = 200
    r = chat(gw)
    assert r.status == 200, r.describe()
    gwtest.wait_for(lambda: tokens_metric(gw) > 0, timeout=5, what="a served answer's tokens")
    gw.stop()
    be.stop()


def test_queued_settlement_survives_redis_restart():
    """max_concurrent 1, a stream running, Redis (AOF on) restarted: the stream's settlement and
    slot release wait in the queue for the new connection, whose server has no scripts; they must
    not be lost to NOSCRIPT (the slot would stay for its lease, the next request 429)."""
    redis, be = Redis(extra=("--appendonly", "yes")), Backend()
    be.delay = 0.1
    gw = Gateway(config(be, {"max_concurrent": 1}, redis))
    wait_connected(gw)
    assert chat(gw).status == 200
    c, r = stream(gw, max_tokens=30)
    assert r.status == 200, r.describe()
    assert redis.cmd("ZCARD", CONC) == 1
    port, rdir = redis.port, redis.dir
    redis.stop()
    finish(c, r)  # the stream ends while Redis is away: its settlement is queued
    time.sleep(0.3)
    redis = Redis(port=port, dir=rdir, extra=("--appendonly", "yes"))
    assert redis.cmd("ZCARD", CONC) == 1, "the AOF did not keep the slot"
    wait_connected(gw, 2)
    wait_slots_free(redis, timeout=5)
    stats = str(redis.cmd("INFO", "errorstats"))
    assert "NOSCRIPT" not in stats, stats
    r = chat(gw)
    assert r.status == 200, r.describe()
    gw.stop()
    be.stop()
    redis.stop()


if __name__ == "__main__":
    gwtest.run(globals())
