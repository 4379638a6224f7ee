"""Quotas shared through Redis: exact across instances, hash-tagged keys without content,
scripts reloaded after SCRIPT FLUSH, and the on_unavailable choices when Redis freezes."""
import hashlib
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from gwtest import Gateway, Mock, gateway_config  # noqa: E402
from redisutil import Redis  # noqa: E402

KEY = "gk_quotaredistestkey0000000000000000000000000"


def config(mock, redis, limits, on_unavailable="reject"):
    return gateway_config(
        [mock.port], models=("m1", "m2"), workers=2,
        redis={"url": "redis://127.0.0.1:%d/0" % redis.port, "timeout_ms": 100,
               "on_unavailable": on_unavailable},
        tenants=[{"id": "acme", "models": ["*"],
                  "api_keys": [{"id": "acme-1", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}],
                  "limits": limits}])


def chat(gw, **body):
    b = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    b.update(body)
    return gwtest.post_json(gw.port, "/v1/chat/completions", b,
                            headers={"authorization": "Bearer " + KEY}, timeout=10)


def wait_connected(gw):
    gwtest.wait_for(lambda: gw.stderr_text().count("redis connected") >= 2, timeout=5,
                    what="both workers connected to redis")


def test_exact_across_instances():
    redis, mock = Redis(), Mock()
    cfg = config(mock, redis, {"requests_per_minute": 20})
    a, b = Gateway(cfg), Gateway(config(mock, redis, {"requests_per_minute": 20}))
    wait_connected(a)
    wait_connected(b)
    statuses = []
    lock = threading.Lock()

    def hammer(gw):
        for _ in range(20):
            s = chat(gw).status
            with lock:
                statuses.append(s)

    threads = [threading.Thread(target=hammer, args=(g,)) for g in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert statuses.count(200) == 20 and statuses.count(429) == 60, \
        "two instances admitted %d of 80 against one limit of 20 a minute" % statuses.count(200)
    keys = [k.decode() if isinstance(k, bytes) else k for k in redis.cmd("KEYS", "*")]
    assert keys and all("{acme}" in k for k in keys), keys
    for k in keys:
        ttl = redis.cmd("PTTL", k)
        assert int(ttl) > 0, "key %s never expires" % k


def test_scripts_reloaded_after_flush():
    redis, mock = Redis(), Mock()
    gw = Gateway(config(mock, redis, {"requests_per_minute": 100}))
    wait_connected(gw)
    assert chat(gw).status == 200
    redis.cmd("SCRIPT", "FLUSH")
    r = chat(gw)
    assert r.status == 200 and r.header("x-ratelimit-limit-requests") == "100", r.describe()
    assert chat(gw).status == 200


def test_frozen_redis_reject_and_local():
    redis, mock = Redis(), Mock()
    reject = Gateway(config(mock, redis, {"requests_per_minute": 100}, "reject"))
    local = Gateway(config(mock, redis, {"requests_per_minute": 100}, "local"))
    wait_connected(reject)
    wait_connected(local)
    assert chat(reject).status == 200 and chat(local).status == 200
    redis.freeze()
    # What each instance holds of a lease is already counted in Redis: it may still be spent
    # for up to a second (GQ_LEASE_MS); after that every request needs Redis.
    time.sleep(1.1)
    try:
        for gw, want in ((reject, 503), (local, 200)):
            for _ in range(4):
                t0 = time.monotonic()
                r = chat(gw)
                dt = time.monotonic() - t0
                assert r.status == want, r.describe()
                if want == 503:
                    assert r.error_code() == "quota_unavailable", r.describe()
                assert dt < 1.0, "a request waited %.2fs on a frozen Redis" % dt
    finally:
        redis.thaw()
    gwtest.wait_for(lambda: chat(reject).status == 200, timeout=10, what="quotas back after SIGCONT")


def test_usage_shared_across_instances():
    """Each instance sends its usage counts to Redis at most every second (with a later
    request); the admin /usage of any instance and gotthard-usage --redis show the sum."""
    import subprocess
    from test_quota_local import usage_bin
    redis, mock = Redis(), Mock()
    a = Gateway(config(mock, redis, {"requests_per_minute": 100}))
    b = Gateway(config(mock, redis, {"requests_per_minute": 100}))
    wait_connected(a)
    wait_connected(b)
    for gw in (a, b, a, b, a, b):
        assert chat(gw).status == 200  # prompt 1 word, 4 tokens each
    time.sleep(1.1)
    assert chat(a).status == 200 and chat(b).status == 200  # these send what is pending
    want = {"acme": {"requests": 8, "prompt_tokens": 8, "completion_tokens": 32}}
    gwtest.wait_for(lambda: json.loads(gwtest.get(a.admin_port, "/usage").body)["days"][0]["tenants"] == want,
                    timeout=3, what="both instances' usage in Redis")
    rep = json.loads(gwtest.get(b.admin_port, "/usage?days=2").body)
    assert rep["store"] == "redis" and len(rep["days"]) == 2 and rep["days"][0]["tenants"] == want, rep
    keys = [k.decode() if isinstance(k, bytes) else k for k in redis.cmd("KEYS", "gotthard:u:*")]
    assert keys == ["gotthard:u:{acme}:" + time.strftime("%Y-%m-%d", time.gmtime())], keys
    assert 0 < int(redis.cmd("TTL", keys[0])) <= 40 * 86400
    out = subprocess.run([usage_bin(), "--redis", "redis://127.0.0.1:%d/0" % redis.port, "--json"],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["days"][0]["tenants"] == want, out.stdout
    redis.stop()
    time.sleep(1.1)  # an answer is served again for 1 s (the status page's polling)
    r = json.loads(gwtest.get(a.admin_port, "/usage").body)
    assert "error" in r and r["days"][0]["tenants"]["acme"]["requests"] >= 4, r


def test_readyz_and_metric_follow_the_store():
    redis, mock = Redis(), Mock()
    port = redis.port
    reject = Gateway(config(mock, redis, {"requests_per_minute": 100}, "reject"))
    local = Gateway(config(mock, redis, {"requests_per_minute": 100}, "local"))
    wait_connected(reject)
    wait_connected(local)

    def readyz(gw):
        return gwtest.request(gw.admin_port, "GET", "/readyz", timeout=2).status

    def store_up(gw):
        text = gwtest.request(gw.admin_port, "GET", "/metrics", timeout=2).body.decode()
        return [l for l in text.splitlines() if l.startswith("gotthard_quota_store_up ")][0].split()[1]

    assert readyz(reject) == 200 and store_up(reject) == "1"
    redis.stop()
    gwtest.wait_for(lambda: readyz(reject) == 503, timeout=5, what="/readyz 503 with Redis gone (reject)")
    assert store_up(reject) == "0"
    assert readyz(local) == 200, "on_unavailable local: the in-process counts make the gateway ready"
    assert chat(reject).status == 503 and chat(local).status == 200
    redis2 = Redis(port=port)
    gwtest.wait_for(lambda: readyz(reject) == 200 and chat(reject).status == 200, timeout=8,
                    what="ready again within seconds of Redis returning")
    assert store_up(reject) == "1"
    redis2.stop()


if __name__ == "__main__":
    gwtest.run(globals())
