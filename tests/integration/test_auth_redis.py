"""API keys kept in Redis (plugins/auth_apikey with "api_keys": {"redis": true, "cache_ms": N}).

A digest not in the config is looked up as the hash gotthard:apikey:<sha256 hex> (fields tenant,
id); answers, found or not, are cached per worker for cache_ms; DEL revokes. Checked here, with a
redis-server this file starts on a free port (no persistence) and stops by PID:
- a Redis-held key works, goes to the backend without the client's credentials;
- DEL stops it within cache_ms + 1 s, an HSET after a negative answer starts it within the same;
- lookups are cached (MONITOR counts the HMGETs); config keys never ask Redis;
- Redis frozen (SIGSTOP) or killed: Redis-only keys get the same 401 quickly (< 1 s), config keys
  keep working; after SIGCONT / a restart on the same port, Redis keys work again;
- Redis never holds key material other than the digests the test put there.
"""

import base64
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from gwtest import (Mock, Gateway, gateway_config, pool, backend, chat, post_json, get,  # noqa: E402
                    assert_error, header_names, wait_for)

HOST = "127.0.0.1"
CACHE_MS = 1000
TIMEOUT_MS = 100
HINT_RE = re.compile(r"^(-|sha256:[0-9a-f]{8}|acme-c|(acme|star|ghost)-r?\d+|acme-late)$")


from redisutil import Monitor, Redis, Resp, redis_bin  # noqa: E402,F401


# --------------------------------------------------------------------------- helpers


def new_key():
    return "gk_" + base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


def digest(key):
    return hashlib.sha256(key.encode()).hexdigest()


def rkey(key):
    return "gotthard:apikey:" + digest(key)


def bearer(key):
    return {"Authorization": "Bearer " + key}


def chat_req(gw, key, model="m1", timeout=10.0):
    return post_json(gw.port, "/v1/chat/completions", chat(model), headers=bearer(key), timeout=timeout)


def timed(gw, key, model="m1"):
    t0 = time.monotonic()
    r = chat_req(gw, key, model)
    return r, time.monotonic() - t0


def ok(r, what=""):
    assert r.status == 200, "%sexpected 200, got %s" % (what + ": " if what else "", r.describe())
    return r


def audit_events(gw, event="auth_failure"):
    p = os.path.join(gw.dir, "audit.log")
    if not os.path.exists(p):
        return []
    with open(p) as f:
        evs = [json.loads(ln) for ln in f if ln.strip()]
    return [e for e in evs if event is None or e.get("event") == event]


def auth_failures(gw):
    r = get(gw.admin_port, "/metrics")
    assert r.status == 200, r.describe()
    return {m.group(1): int(m.group(2)) for m in
            re.finditer(r'^gotthard_auth_failures_total\{reason="([^"]*)"\}\s+(\d+)', r.text(), re.M)}


class Env:
    """redis-server, a mock, a gateway with one config key (acme-c) and Redis-held keys."""

    def __init__(self, cache_ms=CACHE_MS, timeout_ms=TIMEOUT_MS):
        self.redis = Redis()
        self.mock = Mock()
        self.cfg_key = new_key()
        self.put = {}     # redis key -> fields we put there
        tenants = [{"id": "acme", "models": ["m1"],
                    "api_keys": [{"id": "acme-c", "sha256": digest(self.cfg_key)}]},
                   {"id": "star", "models": ["*"]}]
        cfg = gateway_config([self.mock.port], tenants=tenants, audit_log={"path": "audit.log"},
                             redis={"url": "redis://%s:%d/0" % (HOST, self.redis.port), "timeout_ms": timeout_ms},
                             api_keys={"redis": True, "cache_ms": cache_ms},
                             timeouts={"drain_ms": 2000},
                             # this file measures the lookups themselves, hundreds a second from
                             # one address: the failed-authentication limiter (test_sec_auth.py) off
                             auth={"failure_rate": 0})
        self.gw = Gateway(cfg)
        self.keys = [self.cfg_key]

    def add(self, tenant="acme", kid=None):
        k = new_key()
        self.hset(k, tenant, kid or "%s-r%d" % (tenant, len(self.keys)))
        return k

    def hset(self, k, tenant, kid):
        self.redis.cmd("HSET", rkey(k), "tenant", tenant, "id", kid)
        self.put[rkey(k)] = {"tenant": tenant, "id": kid}
        if k not in self.keys:
            self.keys.append(k)

    def assert_no_key_material(self):
        """Redis holds only the hashes we put there, with the fields we put there; no client key."""
        d = self.redis.dump()
        blob = repr(d)
        for k in self.keys:
            assert k not in blob and k[3:23] not in blob, "Redis holds a client key: %r" % blob[:500]
        ours = set(self.put)
        for name, (t, v) in d.items():
            n = name.decode() if isinstance(name, bytes) else name
            hexes = re.findall(r"[0-9a-f]{64}", n + repr(v))
            if n in ours:
                assert t == "hash", "%s is a %s" % (n, t)
                got = {v[i].decode(): v[i + 1].decode() for i in range(0, len(v), 2)}
                assert got == self.put[n], "%s holds %r, we put %r" % (n, got, self.put[n])
            else:
                for h in hexes:
                    assert "gotthard:apikey:" + h in ours, \
                        "Redis key %r holds a digest the test did not put there: %r" % (n, v)
                assert not n.startswith("gotthard:apikey:"), "the gateway wrote %s = %r" % (n, v)


# --------------------------------------------------------------------------- tests


def test_redis_key_works_and_is_not_forwarded():
    e = Env()
    k = e.add()
    ok(chat_req(e.gw, k), "a Redis-held key")
    ok(post_json(e.gw.port, "/v1/chat/completions", chat("m1"), headers={"api-key": k}), "as api-key")
    ok(chat_req(e.gw, e.cfg_key), "the config key")
    # the tenant's model list applies to Redis-held keys too
    assert_error(chat_req(e.gw, k, model="m2"), 403, "model_not_allowed")
    r = get(e.gw.port, "/v1/models", headers=bearer(k))
    ok(r)
    assert sorted(m["id"] for m in r.json()["data"]) == ["m1"], r.describe()
    ks = e.add(tenant="star")
    ok(chat_req(e.gw, ks, model="m2"), "a Redis-held key of a * tenant")
    for rec in e.mock.wait_requests(4):
        hs = header_names(rec)
        assert "authorization" not in hs and "api-key" not in hs, "backend got credentials: %r" % rec["headers"]
    # unknown key, and a Redis entry naming a tenant the config lacks: the same 401
    ref = chat_req(e.gw, new_key())
    assert_error(ref, 401, "invalid_api_key")
    ghost = e.add(tenant="ghost", kid="ghost-1")
    r = chat_req(e.gw, ghost)
    assert_error(r, 401, "invalid_api_key")
    assert r.body == ref.body, "unknown tenant body %r vs %r" % (r.body, ref.body)
    # a Redis entry without an id still maps to its tenant or is refused; never a crash
    k_noid = new_key()
    e.redis.cmd("HSET", rkey(k_noid), "tenant", "acme")
    e.put[rkey(k_noid)] = {"tenant": "acme"}
    e.keys.append(k_noid)
    r = chat_req(e.gw, k_noid)
    assert r.status in (200, 401), r.describe()
    # a Redis value that is not a hash: refused, same body
    k_str = new_key()
    e.redis.cmd("SET", rkey(k_str), "acme")
    e.put[rkey(k_str)] = None
    e.keys.append(k_str)
    r = chat_req(e.gw, k_str)
    assert_error(r, 401, "invalid_api_key")
    assert r.body == ref.body, "wrong-type entry body %r vs %r" % (r.body, ref.body)
    evs = audit_events(e.gw)
    assert len(evs) >= 3, evs
    for ev in evs:
        assert HINT_RE.match(ev.get("key", "")), "audit key field %r" % ev
    assert any(ev.get("key") == "sha256:" + digest(ghost)[:8] or ev.get("key") == "ghost-1" for ev in evs), evs
    for k in e.keys:
        assert k not in e.gw.stderr_text() and k not in open(os.path.join(e.gw.dir, "audit.log")).read()
    e.put.pop(rkey(k_str))   # a string we set ourselves
    e.redis.cmd("DEL", rkey(k_str))
    e.assert_no_key_material()


def test_del_revokes_within_cache_ms():
    e = Env()
    k = e.add()
    other = e.add()
    # keep the key hot so that the cache is as fresh as it can be when the DEL lands
    deadline = time.monotonic() + 1.5 * CACHE_MS / 1000
    while time.monotonic() < deadline:
        ok(chat_req(e.gw, k), "the Redis key before DEL")
        time.sleep(0.05)
    assert e.redis.cmd("DEL", rkey(k)) == 1
    e.put.pop(rkey(k))
    t_del = time.monotonic()
    first401 = None
    statuses = []
    while time.monotonic() - t_del < CACHE_MS / 1000 + 3:
        r = chat_req(e.gw, k)
        statuses.append(r.status)
        if r.status == 401:
            first401 = time.monotonic() - t_del
            assert_error(r, 401, "invalid_api_key")
            break
        assert r.status == 200, r.describe()
        time.sleep(0.05)
    assert first401 is not None, "still accepted %.1fs after DEL (cache_ms %d): %r" % (
        time.monotonic() - t_del, CACHE_MS, statuses[-5:])
    assert first401 <= CACHE_MS / 1000 + 1.0, "first 401 came %.2fs after DEL (cache_ms %d)" % (first401, CACHE_MS)
    # it stays refused, the other key still works
    for _ in range(5):
        assert_error(chat_req(e.gw, k), 401, "invalid_api_key")
    ok(chat_req(e.gw, other), "another Redis key after the DEL")
    ok(chat_req(e.gw, e.cfg_key), "the config key")
    print("    (first 401 %.3fs after DEL, cache_ms %d)" % (first401, CACHE_MS))
    # a key unknown to Redis (negative answer cached) that is then added starts within the same bound
    k2 = new_key()
    assert_error(chat_req(e.gw, k2), 401, "invalid_api_key")
    e.hset(k2, "acme", "acme-late")
    t_add = time.monotonic()
    wait_for(lambda: chat_req(e.gw, k2).status == 200, CACHE_MS / 1000 + 3, interval=0.05,
             what="a key added to Redis after a refusal to work")
    took = time.monotonic() - t_add
    assert took <= CACHE_MS / 1000 + 1.0, "a newly added key took %.2fs to work" % took
    e.assert_no_key_material()


def test_lookups_are_cached():
    e = Env(cache_ms=5000)
    k = e.add()
    unknown = new_key()
    mon = Monitor(e.redis.port)
    try:
        time.sleep(0.1)
        for _ in range(20):
            ok(chat_req(e.gw, k))
            ok(chat_req(e.gw, e.cfg_key))
            assert_error(chat_req(e.gw, unknown), 401, "invalid_api_key")
        time.sleep(0.2)
    finally:
        lines = mon.stop()
    hk, hu, hc = mon.count(digest(k)), mon.count(digest(unknown)), mon.count(digest(e.cfg_key))
    assert 1 <= hk <= 2, "Redis was asked %d times about a cached key in 20 requests: %r" % (hk, lines[-10:])
    assert 1 <= hu <= 2, "Redis was asked %d times about a (negatively cached) unknown key" % hu
    assert hc == 0, "Redis was asked about a config key %d times" % hc
    blob = b"\n".join(lines)
    for x in (k, unknown, e.cfg_key):
        assert x.encode() not in blob, "a client key went to Redis: %r" % blob[:400]
    for ln in lines:
        if b"gotthard:apikey:" in ln:
            assert re.search(rb'"(HMGET|HGETALL|HGET|EXISTS)"', ln, re.I), "unexpected command %r" % ln
    e.assert_no_key_material()


def test_redis_frozen_then_thawed():
    e = Env()
    k_used = e.add()
    k_fresh = e.add()     # never used before the freeze: not in the cache
    ok(chat_req(e.gw, k_used))
    ok(chat_req(e.gw, e.cfg_key))
    ref = chat_req(e.gw, new_key())
    assert_error(ref, 401, "invalid_api_key")
    m0 = auth_failures(e.gw)
    time.sleep(CACHE_MS / 1000 + 0.3)     # let the cache of k_used expire
    e.redis.freeze()
    t_freeze = time.monotonic()
    bad = []
    try:
        bad = refusals_while_down(e, lambda: (("used", k_used), ("fresh", k_fresh)), ref, 0)
        # the admin listener still answers
        assert get(e.gw.admin_port, "/healthz", timeout=2).status == 200
    finally:
        frozen_for = time.monotonic() - t_freeze
        e.redis.thaw()
    assert not bad, "with Redis frozen (%.1fs):\n  %s" % (frozen_for, "\n  ".join(bad))
    m1 = auth_failures(e.gw)
    assert m1.get("key_store_unavailable", 0) > m0.get("key_store_unavailable", 0), \
        "no key_store_unavailable in the metrics: %r -> %r" % (m0, m1)
    evs = audit_events(e.gw)
    assert any(ev.get("reason") == "key_store_unavailable" for ev in evs), evs[-5:]
    for ev in evs:
        assert HINT_RE.match(ev.get("key", "")), ev
    t_thaw = time.monotonic()
    wait_for(lambda: chat_req(e.gw, k_used).status == 200 and chat_req(e.gw, k_fresh).status == 200,
             10.0, interval=0.1, what="Redis keys to work again after SIGCONT")
    print("    (Redis keys worked again %.2fs after SIGCONT)" % (time.monotonic() - t_thaw))
    ok(chat_req(e.gw, e.cfg_key))
    e.assert_no_key_material()


def refusals_while_down(e, keys, ref, pause):
    """Six rounds with Redis unusable: every Redis-held key gets the reference 401 in under
    1 s, and the config key keeps working. Returns the problems found."""
    bad = []
    for i in range(6):
        for name, key in keys():
            try:
                r, dt = timed(e.gw, key)
            except OSError as ex:
                bad.append("%s #%d: %r" % (name, i, ex))
                continue
            if r.status != 401 or r.body != ref.body:
                bad.append("%s #%d: %s" % (name, i, r.describe()))
            if dt >= 1.0:
                bad.append("%s #%d took %.2fs" % (name, i, dt))
        r, dt = timed(e.gw, e.cfg_key)
        if r.status != 200 or dt >= 1.0:
            bad.append("config key #%d with Redis unusable: %.2fs %s" % (i, dt, r.describe()))
        time.sleep(pause)
    return bad


def test_redis_killed_then_restarted():
    e = Env()
    k = e.add()
    ok(chat_req(e.gw, k))
    ref = chat_req(e.gw, new_key())
    assert_error(ref, 401, "invalid_api_key")
    time.sleep(CACHE_MS / 1000 + 0.3)
    port = e.redis.port
    e.redis.stop(signal.SIGKILL)
    bad = refusals_while_down(e, lambda: (("redis key", k), ("another redis key", new_key())), ref, 0.1)
    assert not bad, "with Redis killed:\n  %s" % "\n  ".join(bad)
    assert e.gw.alive()
    # back on the same port (empty: no persistence), the key put back
    e.redis = Redis(port)
    e.put = {}
    e.hset(k, "acme", "acme-r1")
    t0 = time.monotonic()
    wait_for(lambda: chat_req(e.gw, k).status == 200, 10.0, interval=0.1,
             what="the Redis key to work after redis-server restarted")
    print("    (Redis key worked again %.2fs after the restart)" % (time.monotonic() - t0))
    ok(chat_req(e.gw, e.cfg_key))
    e.assert_no_key_material()


def test_redis_down_at_start():
    """The gateway starts with Redis unreachable; config keys work, Redis keys are refused, and
    work once Redis comes up."""
    port = gwtest.free_port()
    mock = Mock()
    ck = new_key()
    cfg = gateway_config([mock.port], tenants=[{"id": "acme", "models": ["*"],
                                                "api_keys": [{"id": "acme-c", "sha256": digest(ck)}]}],
                         redis={"url": "redis://%s:%d/0" % (HOST, port), "timeout_ms": TIMEOUT_MS},
                         api_keys={"redis": True, "cache_ms": CACHE_MS}, timeouts={"drain_ms": 2000})
    gw = Gateway(cfg)
    k = new_key()
    ok(chat_req(gw, ck), "config key with Redis down")
    r, dt = timed(gw, k)
    assert_error(r, 401, "invalid_api_key")
    assert dt < 1.0, "took %.2fs" % dt
    red = Redis(port)
    red.cmd("HSET", rkey(k), "tenant", "acme", "id", "acme-r1")
    wait_for(lambda: chat_req(gw, k).status == 200, 10.0, interval=0.1,
             what="the Redis key to work after Redis came up")


def test_reload_keeps_redis_keys():
    e = Env()
    k = e.add()
    ok(chat_req(e.gw, k))
    e.gw.reload(e.gw.config)
    time.sleep(0.5)
    for _ in range(3):
        ok(chat_req(e.gw, k), "a Redis key after SIGHUP")
        ok(chat_req(e.gw, e.cfg_key), "the config key after SIGHUP")


def test_frozen_redis_concurrent_and_aborted_lookups():
    """With Redis frozen: 20 concurrent lookups all get the 401 in < 1 s; clients that leave while
    their lookup is pending do not hurt the gateway (run under ASan)."""
    e = Env()
    keys = [e.add() for _ in range(20)]
    ref = chat_req(e.gw, new_key())
    assert_error(ref, 401, "invalid_api_key")
    e.redis.freeze()
    results = [None] * len(keys)
    try:
        # clients that send a request and leave at once
        for k in keys[:5]:
            c = gwtest.Conn(e.gw.port)
            c.send(gwtest.http_request("POST", "/v1/chat/completions", json.dumps(chat("m1")).encode(),
                                       [("Content-Type", "application/json"), ("Authorization", "Bearer " + k)]))
            c.close()

        def one(i):
            try:
                results[i] = timed(e.gw, keys[i])
            except Exception as ex:   # noqa: BLE001
                results[i] = (ex, None)
        ts = [threading.Thread(target=one, args=(i,)) for i in range(len(keys))]
        for t in ts:
            t.start()
        for t in ts:
            t.join(15)
        r, dt = timed(e.gw, e.cfg_key)
        ok(r, "config key with Redis frozen, after the burst")
    finally:
        e.redis.thaw()
    bad = []
    for i, (r, dt) in enumerate(results):
        if dt is None:
            bad.append("#%d: %r" % (i, r))
        elif r.status != 401 or r.body != ref.body or dt >= 1.0:
            bad.append("#%d: %.2fs %s" % (i, dt, r.describe()))
    assert not bad, "concurrent lookups with Redis frozen:\n  " + "\n  ".join(bad)
    print("    (slowest of %d concurrent refusals: %.3fs)" % (len(keys), max(dt for _, dt in results)))
    wait_for(lambda: chat_req(e.gw, keys[0]).status == 200, 10.0, interval=0.1, what="Redis keys after SIGCONT")
    assert e.gw.alive()


def test_del_revokes_within_cache_ms_two_workers():
    """Each worker caches on its own; a DEL still stops the key on every worker within cache_ms."""
    e = Env()
    e.gw.stop()
    cfg = gwtest.deep_merge(e.gw.config, {"workers": 2})
    e.gw = Gateway(cfg)
    k = e.add()
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:   # new connections: both workers see the key
        ok(chat_req(e.gw, k))
    e.redis.cmd("DEL", rkey(k))
    e.put.pop(rkey(k))
    t_del = time.monotonic()
    wait_for(lambda: chat_req(e.gw, k).status == 401, 5, interval=0.02, what="first 401 after DEL")
    # from then on (after the bound), every request on any worker is refused
    time.sleep(max(0.0, CACHE_MS / 1000 + 0.2 - (time.monotonic() - t_del)))
    st = [chat_req(e.gw, k).status for _ in range(30)]
    assert st == [401] * 30, "statuses %.2fs after DEL on two workers: %r" % (time.monotonic() - t_del, st)


def test_slow_redis_never_mixes_up_answers():
    """Redis answering late (frozen for a bit more than timeout_ms, again and again): a late reply
    must never be taken as the answer to another lookup. With cache_ms 0 every request asks Redis;
    acme may use m1 only, star every model. An unknown key must never pass, an acme key never
    reach m2 (it would, if it got star's answer)."""
    e = Env(cache_ms=0)
    acme = [e.add("acme") for _ in range(3)]
    star = [e.add("star") for _ in range(3)]
    stop = threading.Event()
    seen = {}
    wrong = []
    lock = threading.Lock()

    def client(kind, keys, model, allowed):
        i = 0
        while not stop.is_set():
            k = keys[i % len(keys)] if keys else new_key()
            i += 1
            try:
                r, dt = timed(e.gw, k, model)
            except OSError as ex:
                with lock:
                    wrong.append("%s: %r" % (kind, ex))
                continue
            with lock:
                seen[(kind, r.status)] = seen.get((kind, r.status), 0) + 1
                if r.status not in allowed:
                    wrong.append("%s (model %s): %s" % (kind, model, r.describe()))
                if dt >= 1.0:
                    wrong.append("%s took %.2fs" % (kind, dt))
    ts = [threading.Thread(target=client, args=a) for a in (
        ("acme key, m2", acme, "m2", (401, 403)),
        ("acme key, m1", acme, "m1", (200, 401)),
        ("unknown key", [], "m1", (401,)),
        ("star key, m2", star, "m2", (200, 401)),
        ("unknown key 2", [], "m2", (401,)))]
    for t in ts:
        t.start()
    try:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            e.redis.freeze()
            time.sleep((TIMEOUT_MS + 30 + 40 * (int(time.monotonic() * 10) % 3)) / 1000)
            e.redis.thaw()
            time.sleep(0.06)
    finally:
        e.redis.thaw()
        stop.set()
        for t in ts:
            t.join(15)
    assert not wrong, "%d wrong answers with a slow Redis, e.g.:\n  %s\n(all: %r)" % (
        len(wrong), "\n  ".join(wrong[:8]), seen)
    # the slow phases did produce refusals and acceptances both, or the test proved nothing
    assert seen.get(("acme key, m1", 200)) and seen.get(("star key, m2", 200)), seen
    assert seen.get(("acme key, m1", 401)) or seen.get(("star key, m2", 401)), seen
    print("    (%r)" % sorted(seen.items()))
    wait_for(lambda: chat_req(e.gw, acme[0]).status == 200, 10, interval=0.1, what="Redis keys after the slow phase")


def test_long_freeze_recovers_within_backoff():
    """Frozen for 7 s while requests keep coming (each refused in < 1 s), then thawed: Redis keys
    work again within a few seconds (the reconnect backoff is capped)."""
    e = Env()
    k = e.add()
    ok(chat_req(e.gw, k))
    time.sleep(CACHE_MS / 1000 + 0.2)
    e.redis.freeze()
    slow = []
    try:
        t_end = time.monotonic() + 7
        while time.monotonic() < t_end:
            r, dt = timed(e.gw, k)
            if r.status != 401 or dt >= 1.0:
                slow.append("%.2fs %s" % (dt, r.describe()))
            r, dt = timed(e.gw, e.cfg_key)
            if r.status != 200 or dt >= 1.0:
                slow.append("config key: %.2fs %s" % (dt, r.describe()))
            time.sleep(0.3)
    finally:
        e.redis.thaw()
    assert not slow, "during a 7 s freeze:\n  " + "\n  ".join(slow[:8])
    t0 = time.monotonic()
    wait_for(lambda: chat_req(e.gw, k).status == 200, 10, interval=0.1, what="the Redis key after a 7 s freeze")
    took = time.monotonic() - t0
    print("    (Redis key worked again %.2fs after SIGCONT)" % took)
    assert took <= 6.0, "took %.2fs after SIGCONT" % took


if __name__ == "__main__":
    gwtest.run(globals())
