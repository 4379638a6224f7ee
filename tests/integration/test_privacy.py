"""Zero retention (issue 6): the gateway keeps nothing of what a tenant asks, and proves it.

The canary test sends unique strings in the prompt, a system message, tool-call arguments,
the user field, custom headers, a cookie, the query string, the model name and the API key,
on requests that succeed, stream, and fail with 400, 401, 404, 429, 502, 503 (Redis frozen),
504 and a backend's own errors; afterwards none of them is in the gateway's output, its
access and audit logs, /metrics, /privacy, any answer, Redis (every key and value, and
MONITOR for the whole run) or any file the gateway wrote or holds open. The mock backend's
record shows the stripped headers gone and the user field hashed as configured.

The other tests: the defaults without a "privacy" key, each user_field mode,
forward_client_ip, backend headers that reveal internals, backend error bodies (replace and
pass), Retry-After on the gateway's own errors, error events inside a stream (replaced), GET
/privacy, process hardening, and config errors.
"""

import hashlib
import hmac
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from gwtest import (Mock, Gateway, gateway_config, chat, post_json, request, assert_error,  # noqa: E402
                    header_values, header_names, record_json, wait_for, open_stream, iter_sse)
from redisutil import Redis, Monitor  # noqa: E402


def canary(label):
    return "cnry%s%s" % (label, os.urandom(8).hex())


C = {k: canary(k) for k in ("prompt", "system", "tool", "user", "header", "cookie", "model",
                            "key", "apikey", "query", "assistant", "orgid")}
GOOD_KEY = "gk_" + os.urandom(24).hex()
TIGHT_KEY = "gk_" + os.urandom(24).hex()
SALT = os.urandom(24).hex()
SALT_ENV = "GWTEST_PRIVACY_SALT"
SECRETS = dict(C, good_key=GOOD_KEY, tight_key=TIGHT_KEY, salt=SALT)

STRIPPED = ["cookie", "x-forwarded-for", "x-real-ip", "forwarded", "true-client-ip",
            "openai-organization", "openai-project"]


def sha(s):
    return hashlib.sha256(s.encode()).hexdigest()


def expected_user_hash(tenant, user, salt=SALT):
    return hmac.new(salt.encode(), (tenant + "\n" + user).encode(), hashlib.sha256).hexdigest()


def content_body(model="m1", **extra):
    """A chat request carrying every content canary."""
    b = {"model": model,
         "messages": [
             {"role": "system", "content": "You are careful. " + C["system"]},
             {"role": "user", "content": "Please look up " + C["prompt"]},
             {"role": "assistant", "content": C["assistant"],
              "tool_calls": [{"id": "call_1", "type": "function",
                              "function": {"name": "lookup",
                                           "arguments": json.dumps({"q": C["tool"]})}}]},
             {"role": "tool", "tool_call_id": "call_1", "content": "found"}],
         "user": C["user"], "max_tokens": 4}
    b.update(extra)
    return b


def content_headers(key=GOOD_KEY):
    h = {"x-canary-note": C["header"], "cookie": "session=" + C["cookie"],
         "x-forwarded-for": "203.0.113.77", "x-real-ip": "203.0.113.78",
         "forwarded": "for=203.0.113.79", "true-client-ip": "203.0.113.80",
         "openai-organization": C["orgid"], "openai-project": "proj-" + C["orgid"]}
    if key:
        h["authorization"] = "Bearer " + key
    return h


def privacy_config(mock, redis, **over):
    cfg = gateway_config(
        [mock.port], models=("m1", "m4"), workers=2,
        redis={"url": "redis://127.0.0.1:%d/0" % redis.port, "timeout_ms": 100,
               "on_unavailable": "reject"},
        tenants=[{"id": "acme", "models": ["*"], "api_keys": [{"id": "acme-1", "sha256": sha(GOOD_KEY)}],
                  # max_concurrent: every admission asks Redis (no local lease to spend).
                  "limits": {"requests_per_minute": 1000, "max_concurrent": 100}},
                 {"id": "tight", "models": ["*"], "api_keys": [{"id": "tight-1", "sha256": sha(TIGHT_KEY)}],
                  "limits": {"requests_per_minute": 1}}],
        access_log={"path": "access.log"}, audit_log={"path": "audit.log"},
        privacy={"user_field": "hash", "user_hash_salt_env": SALT_ENV,
                 "strip_request_headers": ["cookie", "openai-organization", "openai-project",
                                           "x-canary-*"]},
        timeouts={"upstream_first_byte_ms": 400})
    return gwtest.deep_merge(cfg, over)


def find_secrets(where, blob, found):
    if isinstance(blob, str):
        blob = blob.encode("utf-8", "replace")
    for name, s in SECRETS.items():
        if s.encode() in blob:
            found.append("%s holds the %s canary" % (where, name))


def open_files(pid):
    """Files the process holds open for writing (their paths), beyond its stdout and stderr; its
    /proc/self/statm (read for the memory ceiling, limits.max_memory_bytes) is read-only."""
    out = []
    d = "/proc/%d/fd" % pid
    for fd in os.listdir(d):
        if fd in ("0", "1", "2"):
            continue
        try:
            t = os.readlink(os.path.join(d, fd))
        except OSError:
            continue
        if t == "/proc/%d/statm" % pid:
            with open("/proc/%d/fdinfo/%s" % (pid, fd)) as f:
                flags = int(re.search(r"flags:\s*(\d+)", f.read()).group(1), 8)
            assert flags & os.O_ACCMODE == os.O_RDONLY, "statm open for writing: %o" % flags
            continue
        if t.startswith("/") and not t.startswith("/dev/") and os.path.isfile(t.split(" (deleted)")[0]):
            out.append(t)
    return out


def test_canaries_leave_no_trace():
    redis = Redis()
    monitor = Monitor(redis.port)
    mock = Mock(["--token-ms", "2", "--tokens", "5"])
    gw = Gateway(privacy_config(mock, redis), env={SALT_ENV: SALT})
    gwtest.wait_for(lambda: gw.stderr_text().count("redis connected") >= 2, timeout=5,
                    what="both workers connected to redis")
    answers = []  # (what, Response)
    path = "/v1/chat/completions?trace=" + C["query"]

    def send(what, body, headers=None, status=None, code=None, p=path):
        r = post_json(gw.port, p, body, headers=headers if headers is not None else content_headers())
        answers.append((what, r))
        if status == 200:
            assert r.status == 200, "%s: %s" % (what, r.describe())
        elif status:
            assert_error(r, status, code)
        return r

    # Success, plain and streamed.
    ok = send("plain", content_body(), status=200)
    assert json.loads(ok.body)["usage"]["completion_tokens"] == 4
    c, resp = open_stream(gw.port, path, content_body(stream=True), headers=content_headers())
    events = list(iter_sse(c, resp))
    c.close()
    assert resp.status == 200 and events[-1] == "[DONE]", (resp.status, events[-3:])
    answers.append(("stream", resp))
    # A client that leaves in the middle of a stream.
    c, resp = open_stream(gw.port, path, content_body(stream=True, max_tokens=200),
                          headers=dict(content_headers(), **{"x-mock-token-ms": "30"}))
    next(iter_sse(c, resp))
    c.close()
    # 400: broken JSON (truncated), a duplicate key, a bad stream field: all full of canaries.
    full = json.dumps(content_body())
    send("400 truncated", full[:-7], status=400, code="invalid_json")
    send("400 duplicate", full[:-1] + ', "user": "%s"}' % C["user"], status=400, code="invalid_json")
    send("400 stream", content_body(stream="yes " + C["prompt"]), status=400, code="bad_request")
    # 401: an unknown key, as Bearer and as api-key; and none.
    send("401 bearer", content_body(), headers=content_headers(C["key"]), status=401, code="invalid_api_key")
    send("401 api-key", content_body(), headers=dict(content_headers(None), **{"api-key": C["apikey"]}),
         status=401, code="invalid_api_key")
    send("401 none", content_body(), headers=content_headers(None), status=401, code="invalid_api_key")
    # 404: a model nobody serves (its name is a canary); an unknown path with a query.
    send("404 model", content_body(model=C["model"]), status=404, code="model_not_found")
    r = request(gw.port, "GET", "/v1/" + C["query"] + "?q=" + C["query"], headers=content_headers())
    answers.append(("404 path", r))
    assert_error(r, 404, "not_found")
    # The backend's own 404 (m4 is configured, the mock does not serve it: it names the model).
    r = send("backend 404", content_body(model="m4"), status=404, code="model_not_found")
    assert b"m4" not in r.body, "the backend's error body was relayed: %s" % r.describe()
    # The backend's 500, and its 429 with Retry-After.
    send("backend 500", content_body(), headers=dict(content_headers(), **{"x-mock-status": "500"}),
         status=500, code="upstream_error")
    r = send("backend 429", content_body(),
             headers=dict(content_headers(), **{"x-mock-status": "429", "x-mock-reveal": "1"}),
             status=429, code="rate_limit_exceeded")
    assert r.header("retry-after") == "7", r.describe()
    # 429 from the quota: the tight tenant's second request.
    tight = content_headers(TIGHT_KEY)
    send("quota first", content_body(), headers=tight, status=200)
    send("429 quota", content_body(), headers=tight, status=429, code="rate_limit_exceeded")
    # 502: the backend closes without answering; 504: it answers too late.
    send("502", content_body(), headers=dict(content_headers(), **{"x-mock-close": "1"}),
         status=502, code="upstream_error")
    send("504", content_body(), headers=dict(content_headers(), **{"x-mock-delay-ms": "1200"}),
         status=504, code="upstream_timeout")
    # Redis frozen: 503 quota_unavailable; what the gateway sent meanwhile reaches MONITOR later.
    redis.freeze()
    try:
        for _ in range(20):  # a lease taken before the freeze may admit a few
            r = send("503 redis", content_body())
            if r.status != 200:
                break
        assert_error(r, 503, "quota_unavailable")
    finally:
        redis.thaw()
    wait_for(lambda: post_json(gw.port, "/v1/chat/completions", chat("m1"),
                               headers={"authorization": "Bearer " + GOOD_KEY}).status == 200,
             timeout=10, what="quotas back after the thaw")

    # What the backend got: the content (it must: it answers it), never the stripped headers,
    # never the client's credential, and the user field hashed with the tenant's salt.
    recs = [q for q in mock.api_requests() if C["prompt"] in q.get("body", "")]
    assert recs, "no request with the prompt reached the backend: the canaries were not sent"
    for q in recs:
        names = header_names(q)
        leaked = [h for h in STRIPPED + ["x-canary-note", "authorization", "api-key"] if h in names]
        assert not leaked, "the backend received %s: %s" % (leaked, q["headers"])
        body = record_json(q)
        tenant = "tight" if q in recs and body.get("user") == expected_user_hash("tight", C["user"]) else "acme"
        assert body.get("user") == expected_user_hash(tenant, C["user"]), \
            "user field %r, expected the HMAC of the tenant and the user" % body.get("user")
        assert C["user"] not in q["body"]
    assert len({record_json(q)["user"] for q in recs}) == 2, "acme and tight must hash the same user differently"

    # Every answer the clients got, error or not.
    found = []
    for what, r in answers:
        blob = (r.raw_head or b"") + b"\r\n" + (r.body or b"")
        blob += "".join("%s: %s\n" % h for h in r.headers).encode("latin-1", "replace")
        find_secrets("the %s answer" % what, blob, found)
    # The admin surface.
    for p in ("/metrics", "/privacy", "/readyz", "/healthz"):
        find_secrets("admin " + p, request(gw.admin_port, "GET", p).body, found)
    # Files the gateway holds open: only its two logs.
    held = open_files(gw.pid)
    assert sorted(os.path.basename(f) for f in held) == ["access.log", "audit.log"], held
    # Stop it (lines still buffered are written), then read everything it left.
    assert gw.stop() == 0, "the gateway did not exit cleanly"
    lines = monitor.stop()
    assert lines, "MONITOR saw nothing: the quota never used Redis"
    find_secrets("Redis MONITOR", b"\n".join(lines), found)
    dump = redis.dump()
    assert dump, "Redis holds no keys: the quota never used Redis"
    find_secrets("Redis keys and values", repr(sorted(dump.items())), found)
    find_secrets("the gateway's stdout/stderr", gw.stderr_text(), found)
    written = []
    for root, _dirs, files in os.walk(gw.dir):
        for f in files:
            p = os.path.join(root, f)
            written.append(os.path.relpath(p, gw.dir))
            with open(p, "rb") as fh:
                find_secrets("file " + os.path.relpath(p, gw.dir), fh.read(), found)
    assert sorted(written) == ["access.log", "audit.log", "gotthard.json", "stderr.txt"], written
    assert not found, "request content or secrets left behind:\n" + "\n".join(found)

    # The logs are there and say what they should, metadata only.
    access = [json.loads(ln) for ln in open(os.path.join(gw.dir, "access.log"))]
    assert len(access) >= len(answers), "%d access lines for %d answers" % (len(access), len(answers))
    models = {ln["model"] for ln in access}
    assert "<unknown>" in models and "m1" in models and "m4" in models, models
    audit = [json.loads(ln) for ln in open(os.path.join(gw.dir, "audit.log"))]
    assert sum(1 for a in audit if a.get("event") == "auth_failure") >= 3, audit


def test_defaults_without_privacy_key():
    mock = Mock()
    gw = Gateway(gateway_config([mock.port], models=("m1",)))
    hs = dict(content_headers(None), **{"x-mock-reveal": "1", "x-stainless-os": "Linux"})
    r = post_json(gw.port, "/v1/chat/completions", content_body(), headers=hs)
    assert r.status == 200, r.describe()
    # Backend headers that reveal internals are not passed back; the gateway's id replaces its.
    for h in ("server", "x-powered-by", "set-cookie"):
        assert r.header(h) is None, "the backend's %s reached the client: %s" % (h, r.describe())
    assert len(r.header_all("x-request-id")) == 1 and not r.header("x-request-id").startswith("mock-")
    assert r.header("retry-after") == "7", "harmless backend headers pass: %s" % r.describe()
    q = mock.wait_requests(1)[0]
    names = header_names(q)
    leaked = [h for h in STRIPPED if h in names]
    assert not leaked, "stripped by default, yet forwarded: %s" % leaked
    assert header_values(q, "x-canary-note") == [C["header"]], "custom headers are forwarded by default"
    assert header_values(q, "x-stainless-os") == ["Linux"]
    assert "user" not in record_json(q), "user_field defaults to drop"
    assert C["prompt"] in q["body"]
    p = json.loads(request(gw.admin_port, "GET", "/privacy").body)
    assert p["privacy"]["enabled"] is True and p["privacy"]["user_field"] == "drop", p
    assert p["privacy"]["forward_client_ip"] is False and p["privacy"]["backend_errors"] == "replace", p
    assert set(STRIPPED) <= set(p["privacy"]["strip_request_headers"]), p
    assert p["access_log"]["enabled"] is False, p
    assert p["process"] == {"core_dumps": False, "dumpable": False, "bodies_on_disk": False}, p


def test_user_field_modes():
    mock = Mock()
    base = gateway_config([mock.port], models=("m1",))

    def user_sent(privacy, env=None, body=None):
        mock.reset()
        gw = Gateway(gwtest.deep_merge(base, {"privacy": privacy}), env=env,
                     files={"salt.txt": SALT + "\n"})
        r = post_json(gw.port, "/v1/chat/completions", body or content_body(safety_identifier=C["user"]))
        assert r.status == 200, r.describe()
        b = record_json(mock.wait_requests(1)[0])
        gw.stop()
        return b.get("user"), b.get("safety_identifier"), b
    u, s, b = user_sent({"user_field": "keep"})
    assert (u, s) == (C["user"], C["user"]), b
    u, s, b = user_sent({"user_field": "drop"})
    assert "user" not in b and "safety_identifier" not in b, b
    assert b["messages"][1]["content"].endswith(C["prompt"]), "the rest of the body is untouched"
    want = expected_user_hash("", C["user"])
    u, s, b = user_sent({"user_field": "hash", "user_hash_salt_file": "salt.txt"})
    assert (u, s) == (want, want), (b, want)
    u, s, b = user_sent({"user_field": "hash", "user_hash_salt_env": SALT_ENV}, env={SALT_ENV: SALT})
    assert (u, s) == (want, want), b
    # A random salt: still a 64-hex HMAC, not the value, and not the configured-salt one.
    u, s, b = user_sent({"user_field": "hash"})
    assert len(u) == 64 and u != want and C["user"] not in json.dumps(b), b
    # A user field that is not a string is dropped rather than hashed.
    u, s, b = user_sent({"user_field": "hash"}, body=content_body(user={"id": C["user"]}))
    assert "user" not in b, b


def test_forward_client_ip():
    mock = Mock()
    gw = Gateway(gateway_config([mock.port], models=("m1",), privacy={"forward_client_ip": True}))
    r = post_json(gw.port, "/v1/chat/completions", chat("m1"),
                  headers={"x-forwarded-for": "203.0.113.5", "x-real-ip": "203.0.113.6"})
    assert r.status == 200, r.describe()
    q = mock.wait_requests(1)[0]
    assert header_values(q, "x-forwarded-for") == ["127.0.0.1"], q["headers"]
    assert header_values(q, "x-real-ip") == [], q["headers"]
    p = json.loads(request(gw.admin_port, "GET", "/privacy").body)
    assert p["privacy"]["forward_client_ip"] is True, p


def test_configured_lists_and_pass():
    mock = Mock()
    gw = Gateway(gateway_config([mock.port], models=("m1", "m4"), privacy={
        "strip_request_headers": ["x-stainless-*"], "forward_request_headers": ["cookie"],
        "hide_response_headers": ["x-mock-*"], "backend_errors": "pass"}))
    r = post_json(gw.port, "/v1/chat/completions", chat("m1"),
                  headers={"x-stainless-os": "Linux", "x-stainless-arch": "x64", "cookie": "a=b",
                           "x-forwarded-for": "203.0.113.5", "x-mock-reveal": "1"})
    assert r.status == 200, r.describe()
    assert r.header("x-mock-backend") is None and r.header("x-mock-seq") is None, r.describe()
    assert r.header("server") == "uvicorn", "the configured list replaces the default one"
    q = mock.wait_requests(1)[0]
    names = header_names(q)
    assert "x-stainless-os" not in names and "x-stainless-arch" not in names, names
    assert header_values(q, "cookie") == ["a=b"], "forward_request_headers lets a default one through"
    assert "x-forwarded-for" not in names, "client address headers go whatever the list says"
    # backend_errors pass: the backend's own error body reaches the client as it is.
    r = post_json(gw.port, "/v1/chat/completions", chat("m4"))
    assert r.status == 404 and b"m4" in r.body, r.describe()


def test_backend_error_mapping():
    mock = Mock()
    gw = Gateway(gateway_config([mock.port], models=("m1",)))
    cases = [(400, 400, "bad_request"), (401, 502, "upstream_error"), (403, 502, "upstream_error"),
             (404, 404, "not_found"), (413, 413, "request_too_large"), (422, 422, "bad_request"),
             (429, 429, "rate_limit_exceeded"), (500, 500, "upstream_error"), (503, 503, "upstream_error")]

    def one(case):
        sent, status, code = case
        r = post_json(gw.port, "/v1/chat/completions", chat("m1", C["prompt"]),
                      headers={"x-mock-status": str(sent), "x-mock-reveal": "1"})
        e = assert_error(r, status, code, canary=C["prompt"])
        assert "mock" not in e["message"].lower(), r.describe()
        assert r.header("server") is None and r.header("x-mock-backend") is None, r.describe()
    gwtest.check_all(cases, one)
    # The connection stays usable after a replaced error (the backend's body was consumed).
    c = gwtest.Conn(gw.port)
    for _ in range(3):
        c.send(gwtest.http_request("POST", "/v1/chat/completions", json.dumps(chat("m1")),
                                   [("x-mock-status", "500"), ("Content-Type", "application/json")]))
        assert c.read_response().status == 500
    c.close()


def test_process_hardening():
    mock = Mock()
    gw = Gateway(gateway_config([mock.port], models=("m1",)))
    limits = open("/proc/%d/limits" % gw.pid).read()
    core = [ln for ln in limits.splitlines() if ln.startswith("Max core file size")]
    assert core and core[0].split()[4:6] == ["0", "0"], core
    p = json.loads(request(gw.admin_port, "GET", "/privacy").body)
    assert p["process"]["dumpable"] is False and p["process"]["core_dumps"] is False, p


def test_bad_configs():
    d = gwtest.tempdir()
    with open(os.path.join(d, "short.txt"), "w") as f:
        f.write("short")
    cases = [
        ({"privacy": {"user_field": "scramble"}}, "$.privacy.user_field"),
        ({"privacy": {"colour": "blue"}}, "$.privacy.colour"),
        ({"privacy": {"forward_client_ip": "yes"}}, "$.privacy.forward_client_ip"),
        ({"privacy": {"strip_request_headers": ["bad header"]}}, "$.privacy.strip_request_headers[0]"),
        ({"privacy": {"strip_request_headers": "cookie"}}, "$.privacy.strip_request_headers"),
        ({"privacy": {"hide_response_headers": ["*"]}}, "$.privacy.hide_response_headers[0]"),
        ({"privacy": {"backend_errors": "show"}}, "$.privacy.backend_errors"),
        ({"privacy": {"user_field": "hash", "user_hash_salt_file": "short.txt"}}, "$.privacy.user_hash_salt_file"),
        ({"privacy": {"user_field": "hash", "user_hash_salt_file": "missing.txt"}}, "$.privacy.user_hash_salt_file"),
        ({"privacy": {"user_field": "hash", "user_hash_salt_env": "GWTEST_NOT_SET_ANYWHERE"}},
         "$.privacy.user_hash_salt_env"),
        ({"privacy": []}, "$.privacy"),
    ]

    def one(case):
        over, path = case
        f = os.path.join(d, "c.json")
        with open(f, "w") as fh:
            json.dump(gwtest.deep_merge(gateway_config([1], models=("m1",)), over), fh)
        rc, out, err = gwtest.run_gotthard(["-t", "-c", f], cwd=d)
        assert rc == 1 and ("%s: %s:" % (f, path)) in err, "rc %s, stderr %r" % (rc, err)
    gwtest.check_all(cases, one)


# --------------------------------------------------------------------------- backend text in errors

PROSE = "ask bob@example.org"  # backend text that must never reach the client under "replace"


def _raw_gw(script, privacy=None):
    from test_backend_faults import RawBackend
    fake = RawBackend(script)
    over = {"privacy": privacy} if privacy else {}
    return fake, Gateway(gateway_config([fake.port], models=("m1",), **over))


def _retry_script(req, fake):
    status, name, value = req.header("x-case").split("|")
    body = b'{"error":{"message":"busy","type":"server_error","code":null}}'
    return [b"HTTP/1.1 %s Busy\r\nContent-Type: application/json\r\n%s: %s\r\nContent-Length: %d\r\n\r\n%s"
            % (status.encode(), name.encode(), value.encode(), len(body), body)]


def test_retry_after_is_a_number_on_429_and_503_only():
    """With backend_errors "replace", the gateway's own error repeats the backend's Retry-After /
    Retry-After-Ms only when it is 1 to 10 digits and the status is 429 or 503: the backend's text
    (prose, an HTTP-date, a fraction, a sign) or the header on another status never reaches the
    client."""
    fake, gw = _raw_gw(_retry_script)
    cases = [("429", "Retry-After", "7", "7"), ("503", "retry-after", "120", "120"),
             ("429", "Retry-After-Ms", "1500", "1500"), ("503", "retry-after-ms", "20", "20"),
             ("429", "Retry-After", PROSE, None), ("429", "Retry-After-Ms", PROSE, None),
             ("503", "Retry-After", "Wed, 21 Oct 2026 07:28:00 GMT", None),
             ("429", "Retry-After-Ms", "12.5", None), ("429", "Retry-After", "-1", None),
             ("429", "Retry-After", "12345678901", None), ("429", "Retry-After", "7 bob", None),
             ("500", "Retry-After", "7", None), ("400", "Retry-After", "7", None),
             ("404", "Retry-After-Ms", "7", None)]

    def one(case):
        status, name, value, want = case
        r = post_json(gw.port, "/v1/chat/completions", chat("m1"), headers={"x-case": "|".join(case[:3])})
        assert r.status == int(status), r.describe()
        got = r.header(name)
        assert got == want, "%s: %r on the client, expected %r: %s" % (name, got, want, r.describe())
        assert PROSE.encode() not in r.raw_head + r.body and b"busy" not in r.body, r.describe()
    gwtest.check_all(cases, one)


_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
_TOKEN = (b'data: {"id":"x","object":"chat.completion.chunk","model":"m1","choices":[{"index":0,'
          b'"delta":{"role":"assistant","content":"tok0 "},"finish_reason":null}]}\n\n')
# Error events in the shapes backends send them, each with the backend's prose.
STREAM_ERRORS = {
    "vllm": (b'data: {"error": {"object": "error", "message": "engine failed: ' + PROSE.encode() +
             b'", "type": "InternalServerError", "param": null, "code": 500}}\n\n', "upstream_error"),
    "vllm_refusal": (b'data: {"error": {"object": "error", "message": "' + PROSE.encode() +
                     b' is over the context", "type": "BadRequestError", "param": null, "code": 400}}\n\n',
                     "bad_request"),
    "refusal_429": (b'data: {"error":{"message":"' + PROSE.encode() + b'","type":"RateLimitError","code":429}}\n\n',
                    "rate_limit_exceeded"),
    "refusal_401": (b'data: {"error":{"message":"' + PROSE.encode() + b'","type":"AuthenticationError","code":401}}\n\n',
                    "upstream_error"),
    "openai_known_code": (b'data: {"error":{"message":"' + PROSE.encode() + b'","type":"invalid_request_error",'
                          b'"param":"messages","code":"context_length_exceeded"}}\n\n', "context_length_exceeded"),
    "unknown_code": (b'data: {"error":{"message":"m","type":"server_error","code":"' + PROSE.encode() +
                     b'"}}\n\n', "upstream_error"),
    "tgi": (b'data: {"error":"' + PROSE.encode() + b'","error_type":"generation"}\n\n', "upstream_error"),
    "event_error": (b"event: error\ndata: " + PROSE.encode() + b"\n\n", "upstream_error"),
    "error_not_first": (b'data: {"id":"x","error":{"message":"' + PROSE.encode() + b'"}}\n\n', "upstream_error"),
    "object_error": (b'data: {"object":"error","message":"' + PROSE.encode() + b'","code":500}\n\n',
                     "upstream_error"),
    "llamacpp": (b'error: {"error":{"code":500,"message":"' + PROSE.encode() + b'","type":"server_error"}}\n\n',
                 "upstream_error"),
}


def _stream_error_script(req, fake):
    ev = STREAM_ERRORS[req.header("x-case")][0]
    ch = lambda d: b"%x\r\n%s\r\n" % (len(d), d)  # noqa: E731
    return [_HEAD + ch(_TOKEN), ("sleep", 0.1), ch(ev) + ch(b"data: [DONE]\n\n") + b"0\r\n\r\n"]


def test_stream_error_events_are_replaced():
    """With backend_errors "replace" (the default), an error event inside a 200 stream, after the
    head went out, in every shape backends use (vLLM's, its refusal, OpenAI's, TGI's, "event:
    error", an "error" member not first, "object":"error", llama.cpp's "error:" field), reaches
    the client as the gateway's own error event: its constant message, the backend's code only
    when it is one of OpenAI's known codes; the token before it and [DONE] after it still come,
    and the backend's text is nowhere in the answer. With "pass" the backend's event is relayed."""
    import streamutil as su
    fake, gw = _raw_gw(_stream_error_script)

    def one(name):
        res = su.stream(gw.port, chat("m1", stream=True), {"x-case": name}, timeout=10)
        assert res.resp.status == 200 and res.complete, res.describe()
        assert PROSE.encode() not in res.resp.body, "the backend's text reached the client: %s" % res.describe()
        errs = res.error_events()
        assert len(errs) == 1, res.describe()
        e = errs[0]["error"]
        failed = e["code"] in ("upstream_error",)
        assert e["message"] == ("The backend failed during the stream." if failed else "The backend refused the request."), e
        assert e["code"] == STREAM_ERRORS[name][1] and (e["type"] == "server_error") == failed, e
        assert res.events[0].startswith("{") and "tok0" in res.events[0] and res.events[-1] == "[DONE]", \
            res.describe()
    gwtest.check_all(sorted(STREAM_ERRORS), one)
    fake2, gw2 = _raw_gw(_stream_error_script, {"backend_errors": "pass"})
    for name in ("vllm", "tgi"):
        res = su.stream(gw2.port, chat("m1", stream=True), {"x-case": name}, timeout=10)
        assert res.resp.status == 200 and PROSE.encode() in res.resp.body, res.describe()



def _unterminated_script(req, fake):
    ch = lambda d: b"%x\r\n%s\r\n" % (len(d), d)  # noqa: E731
    ev = b'data: {"error":{"message":"' + PROSE.encode() + b'","type":"server_error","code":500}}'
    if req.header("x-case") == "lf":
        ev += b"\n"  # one line end, not the blank line that ends an event
    return [_HEAD + ch(_TOKEN), ("sleep", 0.1), ch(ev) + b"0\r\n\r\n"]


def test_unterminated_error_event_at_the_end_is_replaced():
    """A stream whose last bytes are an error event without the blank line that ends it (the
    backend closed the stream mid-event): with "replace" the backend's text does not reach the
    client either; the client gets the gateway's own error event in its place."""
    import streamutil as su
    fake, gw = _raw_gw(_unterminated_script)
    for case in ("none", "lf"):
        res = su.stream(gw.port, chat("m1", stream=True), {"x-case": case}, timeout=10)
        assert res.resp.status == 200 and "tok0" in res.events[0], res.describe()
        assert PROSE.encode() not in res.resp.body, "the backend's text reached the client: %s" % res.describe()
        errs = res.error_events()
        assert len(errs) == 1 and errs[0]["error"]["message"] == "The backend failed during the stream.", \
            res.describe()


if __name__ == "__main__":
    gwtest.run(globals())
