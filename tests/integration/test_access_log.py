"""The access log (gateway/access_log.c): one JSON line of metadata per request.

What is checked:
- plain, streamed and failed requests each give one line with the right tenant, model, pool,
  backend, status, code, tokens (the backend's usage, or an estimate marked
  tokens_estimated), ttft_ms, duration_ms, bytes_in and bytes_out (compared with the exact
  bytes on the wire);
- a model that the config does not know is logged as "<unknown>", never verbatim;
- path "-" writes to standard output; SIGUSR1 reopens the file (log rotation); a reload
  moves the log to a new path; bad access_log configs are refused with their JSON path.
"""

import hashlib
import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from gwtest import (Mock, Gateway, gateway_config, pool, chat, post_json, raw, http_request,  # noqa: E402
                    parse_responses, open_stream, iter_sse, wait_for, assert_error)

KEY = "gk_accesslogtestkey00000000000000000000000000"
TTFT_MS = 40
# the mock's libevent timers may fire a few ms early (a cached clock): a lower bound with room
TTFT_MIN = TTFT_MS * 0.8


def config(mock, **over):
    cfg = gateway_config(
        [mock.port], models=("m1", "m2", "m4"),
        tenants=[{"id": "acme", "models": ["*"],
                  "api_keys": [{"id": "acme-1", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}]}],
        access_log={"path": "access.log"},
        timeouts={"upstream_first_byte_ms": 400})
    return gwtest.deep_merge(cfg, over)


def lines(path):
    try:
        with open(path, "rb") as f:
            data = f.read().decode()
    except FileNotFoundError:
        return []
    out = []
    for ln in data.splitlines():
        if ln.strip():
            out.append(json.loads(ln))  # every line is one JSON object
    return out


def line_for(path, rid, timeout=5.0):
    def find():
        for ln in lines(path):
            if ln.get("client_request_id") == rid:
                return ln
        return None
    return wait_for(find, timeout, what="access log line for %s in %s" % (rid, path))


FIELDS = ["ts", "request_id", "client_request_id", "tenant", "model", "pool", "backend", "status", "code",
          "prompt_tokens", "completion_tokens", "tokens_estimated", "ttft_ms", "duration_ms",
          "bytes_in", "bytes_out"]


def check_shape(ln):
    assert list(ln.keys()) == FIELDS, "fields %s" % list(ln.keys())
    assert isinstance(ln["ts"], str) and ln["ts"].endswith("Z") and len(ln["ts"]) == 24, ln["ts"]
    for k in ("prompt_tokens", "completion_tokens", "bytes_in", "bytes_out", "status"):
        assert isinstance(ln[k], int) and ln[k] >= 0, (k, ln)
    assert isinstance(ln["duration_ms"], (int, float)) and ln["duration_ms"] >= 0, ln
    assert ln["ttft_ms"] is None or 0 <= ln["ttft_ms"] <= ln["duration_ms"], ln


def exchange(gw, rid, body, headers=(), auth=True):
    """Sends one request with Connection: close and returns (request bytes, response bytes, resp)."""
    hs = [("Content-Type", "application/json"), ("x-request-id", rid), ("Connection", "close")]
    if auth:
        hs.append(("Authorization", "Bearer " + KEY))
    hs += list(headers)
    req = http_request("POST", "/v1/chat/completions",
                       body if isinstance(body, bytes) else json.dumps(body).encode(), hs)
    got = raw(gw.port, req, timeout=5)
    resp = parse_responses(got)
    assert len(resp) == 1, "expected one answer, got %r" % got[:300]
    return req, bytes(got), resp[0]


def test_plain_request():
    mock = Mock(["--ttft-ms", str(TTFT_MS), "--tokens", "5"])
    gw = Gateway(config(mock))
    req, got, r = exchange(gw, "al-plain-1", chat("m1", "one two three"))
    assert r.status == 200, r.describe()
    usage = json.loads(r.body)["usage"]
    ln = line_for(os.path.join(gw.dir, "access.log"), "al-plain-1")
    check_shape(ln)
    want = {"tenant": "acme", "model": "m1", "pool": "p1", "backend": "127.0.0.1:%d" % mock.port,
            "status": 200, "code": None, "prompt_tokens": usage["prompt_tokens"],
            "completion_tokens": 5, "tokens_estimated": False,
            "bytes_in": len(req), "bytes_out": len(got)}
    bad = {k: (ln[k], v) for k, v in want.items() if ln[k] != v}
    assert not bad, "wrong fields (logged, expected): %s\n%s" % (bad, ln)
    assert ln["ttft_ms"] >= TTFT_MIN, "ttft_ms %s below the backend's %d ms" % (ln["ttft_ms"], TTFT_MS)
    assert ln["duration_ms"] >= ln["ttft_ms"]


def test_streams():
    mock = Mock(["--ttft-ms", str(TTFT_MS), "--token-ms", "5", "--tokens", "6"])
    gw = Gateway(config(mock))
    log = os.path.join(gw.dir, "access.log")
    # With include_usage: the backend's usage chunk gives the tokens.
    req, got, r = exchange(gw, "al-stream-usage",
                           chat("m2", "a b c d", stream=True, stream_options={"include_usage": True}))
    assert r.status == 200 and b"[DONE]" in r.body, r.describe()
    ln = line_for(log, "al-stream-usage")
    check_shape(ln)
    assert (ln["model"], ln["status"], ln["code"], ln["completion_tokens"], ln["tokens_estimated"]) == \
        ("m2", 200, None, 6, False), ln
    assert ln["prompt_tokens"] == 4, ln
    assert ln["ttft_ms"] >= TTFT_MIN, ln
    # half the spacing: timers on a loaded machine fire late and in bunches (seen: 19 ms of 25)
    assert ln["duration_ms"] >= ln["ttft_ms"] + 5 * 5 * 0.5, "six tokens 5 ms apart: %s" % ln
    assert (ln["bytes_in"], ln["bytes_out"]) == (len(req), len(got)), ln
    # Without the client asking: the gateway asks the backend for its usage chunk (a tenant's
    # usage is counted) and removes it from the answer: exact, not estimated.
    req, got, r = exchange(gw, "al-stream-est", chat("m2", "a b c d", stream=True))
    assert r.status == 200 and b'"usage"' not in r.body, r.describe()
    ln = line_for(log, "al-stream-est")
    check_shape(ln)
    assert (ln["tokens_estimated"], ln["prompt_tokens"], ln["completion_tokens"]) == (False, 4, 6), ln
    assert (ln["bytes_in"], ln["bytes_out"]) == (len(req), len(got)), ln


def test_failed_requests():
    mock = Mock()
    gw = Gateway(config(mock))
    log = os.path.join(gw.dir, "access.log")
    cases = [
        # (request id, body, headers, auth, status, code, model, pool, backend?)
        ("al-401", chat("m1"), (), False, 401, "invalid_api_key", None, None, False),
        ("al-400", b'{"model": "m1", "messages": [', (), True, 400, "invalid_json", None, None, False),
        ("al-404", chat("secret-model-name"), (), True, 404, "model_not_found", "<unknown>", None, False),
        ("al-502", chat("m1"), [("x-mock-close", "1")], True, 502, "upstream_error", "m1", "p1", True),
        ("al-504", chat("m1"), [("x-mock-delay-ms", "1500")], True, 504, "upstream_timeout", "m1", "p1", True),
        # m4 is in the gateway's config but the mock does not serve it: the backend's own 404.
        ("al-b404", chat("m4"), (), True, 404, "model_not_found", "m4", "p1", True),
        ("al-b503", chat("m1"), [("x-mock-status", "503")], True, 503, "upstream_error", "m1", "p1", True),
    ]

    def one(case):
        rid, body, hs, auth, status, code, model, pool_name, has_backend = case
        req, got, r = exchange(gw, rid, body, hs, auth)
        assert_error(r, status, code)
        ln = line_for(log, rid)
        check_shape(ln)
        got_fields = (ln["status"], ln["code"], ln["model"], ln["pool"], ln["backend"] is not None,
                      ln["tenant"])
        want = (status, code, model, pool_name, has_backend, None if status == 401 else "acme")
        assert got_fields == want, "logged %s, expected %s: %s" % (got_fields, want, ln)
        # A refused credential: the body is never read, and bytes_in counts what was.
        head = len(req.split(b"\r\n\r\n", 1)[0]) + 4
        assert (ln["bytes_in"], ln["bytes_out"]) == (head if status == 401 else len(req), len(got)), ln
        if not has_backend:
            assert (ln["prompt_tokens"], ln["completion_tokens"], ln["tokens_estimated"]) == (0, 0, False), ln
            assert ln["ttft_ms"] is None, ln
    gwtest.check_all(cases, one)
    text = open(log, "rb").read()
    assert b"secret-model-name" not in text, "an unknown model name was logged verbatim"


def test_client_closes_stream():
    mock = Mock(["--token-ms", "50", "--tokens", "100"])
    gw = Gateway(config(mock))
    c, r = open_stream(gw.port, "/v1/chat/completions", chat("m1", stream=True),
                       headers={"Authorization": "Bearer " + KEY, "x-request-id": "al-abort"})
    it = iter_sse(c, r)
    next(it)
    c.close()
    ln = line_for(os.path.join(gw.dir, "access.log"), "al-abort")
    check_shape(ln)
    assert (ln["status"], ln["code"], ln["tokens_estimated"]) == (200, "client_closed", True), ln
    assert 1 <= ln["completion_tokens"] < 100, ln


def test_stdout():
    mock = Mock()
    gw = Gateway(config(mock, access_log={"path": "-"}))
    r = post_json(gw.port, "/v1/chat/completions", chat("m1"),
                  headers={"Authorization": "Bearer " + KEY, "x-request-id": "al-stdout"})
    assert r.status == 200, r.describe()

    def found():
        for ln in gw.stderr_text().splitlines():
            if '"client_request_id":"al-stdout"' in ln:
                return json.loads(ln)
        return None
    ln = wait_for(found, 5, what="the access log line on standard output")
    check_shape(ln)
    assert not os.path.exists(os.path.join(gw.dir, "-"))


def test_sigusr1_reopens():
    mock = Mock()
    gw = Gateway(config(mock))
    log = os.path.join(gw.dir, "access.log")
    hdr = {"Authorization": "Bearer " + KEY}
    assert post_json(gw.port, "/v1/chat/completions", chat("m1"),
                     headers=dict(hdr, **{"x-request-id": "al-before"})).status == 200
    line_for(log, "al-before")
    os.rename(log, log + ".1")
    os.kill(gw.pid, signal.SIGUSR1)
    wait_for(lambda: "access log reopened" in gw.stderr_text(), 5, what="the reopen")
    assert post_json(gw.port, "/v1/chat/completions", chat("m1"),
                     headers=dict(hdr, **{"x-request-id": "al-after"})).status == 200
    line_for(log, "al-after")
    assert [ln["client_request_id"] for ln in lines(log)] == ["al-after"], lines(log)
    assert [ln["client_request_id"] for ln in lines(log + ".1")] == ["al-before"], lines(log + ".1")
    assert gw.alive()


def test_sigusr1_reopens_the_audit_log_too():
    """The audit log rotates the same way; its descriptor number never changes (the new file is
    put in its place), so no event can land in a descriptor reused by something else."""
    mock = Mock()
    gw = Gateway(config(mock, audit_log={"path": "audit.log"}))
    audit = os.path.join(gw.dir, "audit.log")
    bad = {"Authorization": "Bearer gk_not_a_key"}
    assert post_json(gw.port, "/v1/chat/completions", chat("m1"), headers=bad).status == 401
    wait_for(lambda: any(l.get("event") == "auth_failure" for l in lines(audit)), 5, what="audit line")
    os.rename(audit, audit + ".1")
    os.kill(gw.pid, signal.SIGUSR1)
    wait_for(lambda: "audit log reopened" in gw.stderr_text(), 5, what="the audit reopen")
    assert post_json(gw.port, "/v1/chat/completions", chat("m1"), headers=bad).status == 401
    wait_for(lambda: any(l.get("event") == "auth_failure" for l in lines(audit)), 5,
             what="the event in the new file")
    old = [l["event"] for l in lines(audit + ".1")]
    assert old.count("auth_failure") == 1, old
    # a reload that turns the audit log off and on again keeps writing to the right file
    cfg = gw.config
    gw.reload(gwtest.deep_merge(cfg, {"audit_log": None}))
    wait_for(lambda: gw.stderr_text().count("configuration reloaded") >= 1, 5,
             what="reload without audit log")
    assert post_json(gw.port, "/v1/chat/completions", chat("m1"), headers=bad).status == 401
    gw.reload(gwtest.deep_merge(cfg, {"audit_log": {"path": "audit2.log"}}))
    wait_for(lambda: gw.stderr_text().count("configuration reloaded") >= 2, 5,
             what="reload with audit2.log")
    assert post_json(gw.port, "/v1/chat/completions", chat("m1"), headers=bad).status == 401
    audit2 = os.path.join(gw.dir, "audit2.log")
    wait_for(lambda: any(l.get("event") == "auth_failure" for l in lines(audit2)), 5, what="audit2")
    assert [l["event"] for l in lines(audit)].count("auth_failure") == 1, lines(audit)
    assert gw.alive()


def test_reload_moves_the_log():
    mock = Mock()
    cfg = config(mock)
    gw = Gateway(cfg)
    hdr = {"Authorization": "Bearer " + KEY}
    assert post_json(gw.port, "/v1/chat/completions", chat("m1"),
                     headers=dict(hdr, **{"x-request-id": "al-old"})).status == 200
    line_for(os.path.join(gw.dir, "access.log"), "al-old")
    gw.reload(gwtest.deep_merge(cfg, {"access_log": {"path": "other.log"}}))
    wait_for(lambda: "configuration reloaded" in gw.stderr_text(), 5, what="the reload")
    assert post_json(gw.port, "/v1/chat/completions", chat("m1"),
                     headers=dict(hdr, **{"x-request-id": "al-new"})).status == 200
    line_for(os.path.join(gw.dir, "other.log"), "al-new")
    assert "al-new" not in open(os.path.join(gw.dir, "access.log")).read()
    # Without the key: no access log, and no error.
    gw.reload(gwtest.deep_merge(cfg, {"access_log": None}))
    wait_for(lambda: gw.stderr_text().count("configuration reloaded") >= 2, 5, what="the second reload")
    assert post_json(gw.port, "/v1/chat/completions", chat("m1"),
                     headers=dict(hdr, **{"x-request-id": "al-none"})).status == 200


def test_bad_configs():
    cases = [
        ({"access_log": {}}, "$.access_log.path"),
        ({"access_log": {"path": "a.log", "format": "text"}}, "$.access_log.format"),
        ({"access_log": {"path": 3}}, "$.access_log.path"),
        ({"access_log": "a.log"}, "$.access_log"),
    ]
    d = gwtest.tempdir()

    def one(case):
        over, path = case
        f = os.path.join(d, "c.json")
        with open(f, "w") as fh:
            json.dump(gwtest.deep_merge(gateway_config([1], models=("m1",)), over), fh)
        rc, out, err = gwtest.run_gotthard(["-t", "-c", f])
        assert rc == 1 and ("%s: %s:" % (f, path)) in err, "rc %s, stderr %r" % (rc, err)
    gwtest.check_all(cases, one)


if __name__ == "__main__":
    gwtest.run(globals())
