"""Quotas kept in the process: limits, 429s with retry-after, OpenAI's x-ratelimit-* headers,
concurrency, per-model overrides, and the usage chunk asked for and removed on streams."""
import hashlib
import json
import re
import threading
import time

import gwtest
from gwtest import Gateway, Mock, gateway_config

KEY = "gk_quotatestkey000000000000000000000000000000"
DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?s|\d+ms)$")


def config(mock, limits):
    return gateway_config([mock.port], models=("m1", "m2"), tenants=[
        {"id": "acme", "models": ["*"],
         "api_keys": [{"id": "acme-1", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}],
         "limits": limits}])


def chat(gw, model="m1", headers=None, **body):
    b = {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
    b.update(body)
    h = {"authorization": "Bearer " + KEY}
    h.update(headers or {})
    return gwtest.post_json(gw.port, "/v1/chat/completions", b, headers=h, timeout=20)


def test_requests_per_minute_and_429():
    mock = Mock()
    gw = Gateway(config(mock, {"requests_per_minute": 3}))
    for i in range(3):
        r = chat(gw)
        assert r.status == 200, r.describe()
        assert r.header("x-ratelimit-limit-requests") == "3", r.describe()
        assert r.header("x-ratelimit-remaining-requests") == str(2 - i), r.describe()
        assert DURATION.match(r.header("x-ratelimit-reset-requests") or ""), r.describe()
    before = len(mock.api_requests())
    r = chat(gw)
    assert r.status == 429 and r.error_code() == "rate_limit_exceeded", r.describe()
    ra, ram = r.header("retry-after"), r.header("retry-after-ms")
    # The window forgets a request 60-61 s after it was admitted (the three above: just now).
    assert ra and ram and 59000 < int(ram) <= 61000 and int(ra) * 1000 >= int(ram), r.describe()
    assert r.header("x-ratelimit-remaining-requests") == "0", r.describe()
    assert len(mock.api_requests()) == before, "a refused request reached the backend"
    metrics = gwtest.request(gw.admin_port, "GET", "/metrics").body.decode()
    assert 'gotthard_ratelimited_total{tenant="acme",kind="requests"} 1' in metrics, metrics


def test_tokens_per_day_is_insufficient_quota():
    mock = Mock()
    gw = Gateway(config(mock, {"tokens_per_day": 40}))
    r = chat(gw, max_tokens=10)
    assert r.status == 200, r.describe()
    r = chat(gw, max_tokens=10)
    r2 = chat(gw, max_tokens=10)
    codes = [x.status for x in (r, r2)]
    refused = [x for x in (r, r2) if x.status == 429]
    assert refused, "the day budget of 40 tokens never ran out: %s" % codes
    assert refused[0].error_code() == "insufficient_quota", refused[0].describe()
    assert int(refused[0].header("retry-after")) >= 1, refused[0].describe()


def test_tokens_per_minute_headers():
    mock = Mock()
    gw = Gateway(config(mock, {"tokens_per_minute": 10000}))
    r = chat(gw, max_tokens=100)
    assert r.status == 200, r.describe()
    assert r.header("x-ratelimit-limit-tokens") == "10000", r.describe()
    remaining = int(r.header("x-ratelimit-remaining-tokens"))
    assert 9000 < remaining < 10000, r.describe()
    assert DURATION.match(r.header("x-ratelimit-reset-tokens")), r.describe()


def test_model_override_is_held_too():
    mock = Mock()
    gw = Gateway(config(mock, {"requests_per_minute": 100, "models": {"m2": {"requests_per_minute": 1}}}))
    assert chat(gw, "m2").status == 200
    r = chat(gw, "m2")
    assert r.status == 429 and r.error_code() == "rate_limit_exceeded", r.describe()
    assert chat(gw, "m1").status == 200, "the override of m2 must not hold m1"


def test_max_concurrent():
    mock = Mock()
    gw = Gateway(config(mock, {"max_concurrent": 2}))
    results = []

    def slow():
        results.append(chat(gw, headers={"x-mock-delay-ms": "800"}).status)

    threads = [threading.Thread(target=slow) for _ in range(2)]
    for t in threads:
        t.start()
    gwtest.wait_for(lambda: len(mock.api_requests()) >= 2, timeout=5, what="two requests in flight")
    r = chat(gw)
    assert r.status == 429 and r.error_code() == "rate_limit_exceeded", r.describe()
    for t in threads:
        t.join(10)
    assert results == [200, 200], results
    assert chat(gw).status == 200, "the slots were not given back"


def _events(body):
    out = []
    for block in body.decode().split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("data: "):
                out.append(line[6:])
    return out


def test_stream_usage_is_asked_for_and_removed():
    mock = Mock()
    gw = Gateway(config(mock, {"tokens_per_minute": 100000}))
    r = chat(gw, stream=True, max_tokens=5)
    assert r.status == 200, r.describe()
    evs = _events(r.body)
    assert evs[-1] == "[DONE]", evs[-3:]
    chunks = [json.loads(e) for e in evs[:-1]]
    assert not any("usage" in c and not c.get("choices") for c in chunks), \
        "the client did not ask for usage but got the usage chunk"
    sent = json.loads(mock.api_requests()[-1]["body"])
    assert sent.get("stream_options", {}).get("include_usage") is True, sent
    # a client that asks for it keeps it
    r = chat(gw, stream=True, max_tokens=5, stream_options={"include_usage": True})
    chunks = [json.loads(e) for e in _events(r.body)[:-1]]
    assert any("usage" in c and not c.get("choices") for c in chunks), "the usage chunk the client asked for is gone"


def test_settled_with_real_usage():
    """A request reserves its estimate (max_tokens 600 here); the answer's usage (about 20
    tokens from the mock) settles it, so a second such request fits in 1000 tokens a minute.
    If the estimate stood, the second would be refused."""
    mock = Mock()
    gw = Gateway(config(mock, {"tokens_per_minute": 1000}))
    for stream in (False, True):
        r1 = chat(gw, max_tokens=600, stream=stream)
        assert r1.status == 200, r1.describe()
        r2 = chat(gw, max_tokens=600, stream=stream)
        assert r2.status == 200, "stream=%s: the first request was charged its estimate, not its usage: %s" % (
            stream, r2.describe())
        remaining = int(r2.header("x-ratelimit-remaining-tokens"))
        assert remaining < 1000 - 600, r2.describe()


def test_client_gone_is_charged_what_was_produced():
    """A stream the client leaves after a few events has no usage chunk: it is charged its
    prompt and the events relayed, not its whole reservation, so the next request fits."""
    import socket
    mock = Mock()
    gw = Gateway(config(mock, {"tokens_per_minute": 1000}))
    body = json.dumps({"model": "m1", "stream": True, "max_tokens": 600,
                       "messages": [{"role": "user", "content": "hello"}]}).encode()
    raw = gwtest.http_request("POST", "/v1/chat/completions", body,
                              [("Content-Type", "application/json"), ("Authorization", "Bearer " + KEY),
                               ("x-mock-tokens", "200"), ("x-mock-token-ms", "20")])
    s = socket.create_connection((gwtest.HOST, gw.port), timeout=5)
    s.sendall(raw)
    got = b""
    while got.count(b"data: ") < 3:
        got += s.recv(4096)
    s.close()
    gwtest.wait_for(lambda: mock.api_requests() and mock.api_requests()[-1].get("client_closed"),
                    timeout=5, what="the backend request closed")
    time.sleep(0.2)
    r = chat(gw, max_tokens=600)
    assert r.status == 200, "the stream left early was charged its whole reservation: " + r.describe()


FREE_KEY = "gk_quotatestfree00000000000000000000000000000"


def usage_bin():
    return gwtest._bin("USAGE_BIN", "tools/usage/gotthard-usage", "gotthard-usage")


def test_usage_per_tenant_and_day():
    """Served requests and the backend's token counts, per tenant and UTC day, for tenants with
    and without limits; refused and unauthenticated requests are not usage. On the admin
    listener (GET /usage) and through gotthard-usage."""
    import subprocess
    mock = Mock()
    cfg = gateway_config([mock.port], models=("m1", "m2"), tenants=[
        {"id": "acme", "models": ["*"], "limits": {"requests_per_minute": 5},
         "api_keys": [{"id": "acme-1", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}]},
        {"id": "free", "models": ["*"],
         "api_keys": [{"id": "free-1", "sha256": hashlib.sha256(FREE_KEY.encode()).hexdigest()}]}])
    gw = Gateway(cfg)
    for _ in range(3):
        assert chat(gw).status == 200  # prompt 1 word, 4 tokens
    assert chat(gw, stream=True, max_tokens=5).status == 200
    assert chat(gw, max_tokens=6, headers={"x-mock-status": "500"}).status >= 500  # not served
    assert chat(gw).status == 429  # the 6th in a minute: refused
    for _ in range(2):
        assert chat(gw, headers={"authorization": "Bearer " + FREE_KEY}, max_tokens=3).status == 200
    assert chat(gw, stream=True, max_tokens=2, headers={"authorization": "Bearer " + FREE_KEY}).status == 200
    assert chat(gw, headers={"authorization": "Bearer gk_wrong"}).status == 401
    r = gwtest.get(gw.admin_port, "/usage")
    assert r.status == 200, r.describe()
    rep = json.loads(r.body)
    assert rep["store"] == "process" and len(rep["days"]) == 1, rep
    today = time.strftime("%Y-%m-%d", time.gmtime())
    day = rep["days"][0]
    assert day["date"] == today, day
    assert day["tenants"] == {
        "acme": {"requests": 4, "prompt_tokens": 4, "completion_tokens": 17},
        "free": {"requests": 3, "prompt_tokens": 3, "completion_tokens": 8}}, day
    out = subprocess.run([usage_bin(), "--admin", "127.0.0.1:%d" % gw.admin_port, "--days", "3",
                          "--json"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    tool = json.loads(out.stdout)
    assert len(tool["days"]) == 3 and tool["days"][0] == day, tool
    table = subprocess.run([usage_bin(), "--admin", "127.0.0.1:%d" % gw.admin_port],
                           capture_output=True, text=True, timeout=10).stdout
    assert any(l.split()[:5] == [today, "acme", "4", "4", "17"] for l in table.splitlines()), table
    bad = subprocess.run([usage_bin(), "--days", "2"], capture_output=True, text=True, timeout=10)
    assert bad.returncode == 2 and "usage:" in bad.stderr, bad


def test_reload_keeps_the_counts():
    mock = Mock()
    cfg = config(mock, {"requests_per_minute": 3})
    gw = Gateway(cfg)
    for _ in range(3):
        assert chat(gw).status == 200
    cfg2 = json.loads(json.dumps(cfg))
    cfg2["pools"][0]["models"].append("m3")
    gw.reload(cfg2)
    gwtest.wait_for(lambda: "configuration reloaded" in gw.stderr_text(), timeout=5, what="the reload")
    r = chat(gw)
    assert r.status == 429, "a reload gave the tenant a fresh minute: " + r.describe()


def test_no_limits_no_headers():
    mock = Mock()
    cfg = config(mock, {"requests_per_minute": 5})
    cfg["tenants"][0].pop("limits")
    gw = Gateway(cfg)
    r = chat(gw)
    assert r.status == 200 and r.header("x-ratelimit-limit-requests") is None, r.describe()


def test_bad_limits_are_config_errors():
    import os
    import tempfile
    mock = Mock()
    cfg = config(mock, {"requests_per_minute": -1, "tokens_per_hour": 5})
    d = tempfile.mkdtemp(prefix="gwtest-quota-")
    path = os.path.join(d, "gotthard.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    rc, out, err = gwtest.run_gotthard(["-t", "-c", path])
    out = out + err
    assert rc == 1, out
    assert "$.tenants[0].limits.requests_per_minute" in out and "$.tenants[0].limits.tokens_per_hour" in out, out


if __name__ == "__main__":
    gwtest.run(globals())
