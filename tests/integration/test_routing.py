#!/usr/bin/env python3
"""Routing by model, the OpenAI-shaped errors, /v1/models, the admin endpoints, x-request-id, and
which request headers reach the backend (asserted on what the mock backend recorded)."""

import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from gwtest import (Conn, Gateway, Mock, Shared, assert_error, backend, chat, check_all, gateway_config,  # noqa: E402
                    get, header_names, header_values, pool, post_json, record_json, request)

KEY_ENV = "GWTEST_BACKEND_KEY"
KEY = "sk-backend-Zq81-secret"
CANARY = "canary-7f3a9c2e41"
TOKEN_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


class Env:
    pass


def _build():
    e = Env()
    e.a = Mock(["--models", "m1,m2"])
    e.b = Mock(["--models", "m3"])
    cfg = gateway_config(pools=[
        pool("p1", ["m1", "m2"], [backend(e.a.port, api_key_env=KEY_ENV)]),
        pool("p2", ["m3"], [e.b.port]),
    ])
    e.gw = Gateway(cfg, env={KEY_ENV: KEY})
    return e


ENV = Shared(_build)


def env():
    e = ENV.get()
    e.a.reset()
    e.b.reset()
    return e


def no_backend_traffic(e, what):
    time.sleep(0.1)
    ra, rb = e.a.api_requests(), e.b.api_requests()
    assert ra == [] and rb == [], "%s reached a backend: %r %r" % (what, ra, rb)


# ----------------------------------------------------------------------------- routing


def test_chat_routed_to_pool_of_model():
    e = env()
    body = chat("m1", "hello one")
    r = post_json(e.gw.port, "/v1/chat/completions", body)
    assert r.status == 200, r.describe()
    assert r.json().get("object") == "chat.completion", r.describe()
    ra = e.a.wait_requests(1)
    assert e.b.api_requests() == [], "m1 reached the m3 backend: %r" % e.b.api_requests()
    assert len(ra) == 1
    assert ra[0]["method"] == "POST" and ra[0]["path"] == "/v1/chat/completions", ra[0]
    assert record_json(ra[0]) == body, "body changed on the way: sent %r, backend got %r" % (body, ra[0]["body"])


def test_second_model_of_pool():
    e = env()
    r = post_json(e.gw.port, "/v1/chat/completions", chat("m2"))
    assert r.status == 200, r.describe()
    assert len(e.a.wait_requests(1)) == 1 and e.b.api_requests() == []


def test_other_pool():
    e = env()
    r = post_json(e.gw.port, "/v1/chat/completions", chat("m3"))
    assert r.status == 200, r.describe()
    rb = e.b.wait_requests(1)
    assert len(rb) == 1 and e.a.api_requests() == [], "m3 went to the wrong backend"
    assert record_json(rb[0])["model"] == "m3"


def test_completions_routed():
    e = env()
    body = {"model": "m3", "prompt": "hi", "max_tokens": 3}
    r = post_json(e.gw.port, "/v1/completions", body)
    assert r.status == 200, r.describe()
    rb = e.b.wait_requests(1)
    assert rb[0]["path"] == "/v1/completions" and record_json(rb[0]) == body, rb[0]
    assert e.a.api_requests() == []


def test_embeddings_routed():
    e = env()
    body = {"model": "m1", "input": "hi"}
    r = post_json(e.gw.port, "/v1/embeddings", body)
    assert r.status == 200, r.describe()
    ra = e.a.wait_requests(1)
    assert ra[0]["path"] == "/v1/embeddings" and record_json(ra[0]) == body, ra[0]
    assert e.b.api_requests() == []


def test_models_list():
    e = env()
    r = get(e.gw.port, "/v1/models")
    assert r.status == 200, r.describe()
    j = r.json()
    assert j.get("object") == "list" and isinstance(j.get("data"), list), r.describe()
    ids = [m.get("id") for m in j["data"]]
    assert sorted(ids) == ["m1", "m2", "m3"], "models %r, expected m1, m2, m3 once each" % ids
    for m in j["data"]:
        assert m.get("object") == "model", "model entry without object=model: %r" % m
    assert r.header("x-request-id"), r.describe()
    assert (r.header("content-type") or "").startswith("application/json"), r.describe()


def test_unknown_paths_404():
    e = env()
    cases = [("GET", "/"), ("GET", "/v1"), ("GET", "/v1/foo"), ("POST", "/v1/chat"),
             ("POST", "/v1/chat/completions/extra"), ("GET", "/v1/chat/completions"),
             ("POST", "/v1/models"), ("POST", "/v2/chat/completions"), ("DELETE", "/v1/models"),
             ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")]

    def one(case):
        method, path = case
        body = json.dumps(chat("m1")) if method == "POST" else None
        r = request(e.gw.port, method, path, body=body,
                    headers={"Content-Type": "application/json"} if body else {})
        assert_error(r, 404, "not_found")
    check_all(cases, one)
    no_backend_traffic(e, "a request to an unknown path")


def test_invalid_json():
    e = env()
    r = post_json(e.gw.port, "/v1/chat/completions", '{"model": "m1", "messages": [' + CANARY)
    assert_error(r, 400, "invalid_json", canary=CANARY)
    no_backend_traffic(e, "invalid JSON")


def test_invalid_json_trailing_garbage():
    e = env()
    r = post_json(e.gw.port, "/v1/chat/completions", '{"model": "m1", "messages": []} ' + CANARY)
    assert_error(r, 400, "invalid_json", canary=CANARY)
    no_backend_traffic(e, "JSON with trailing garbage")


def test_invalid_json_empty_body():
    e = env()
    r = request(e.gw.port, "POST", "/v1/chat/completions", body=b"",
                headers={"Content-Type": "application/json", "Content-Length": "0"})
    assert_error(r, 400, "invalid_json")
    no_backend_traffic(e, "an empty body")


def test_missing_model():
    e = env()
    r = post_json(e.gw.port, "/v1/chat/completions", {"messages": [{"role": "user", "content": CANARY}]})
    assert_error(r, 400, "missing_model", canary=CANARY)
    no_backend_traffic(e, "a body without model")


def test_model_not_a_string():
    e = env()

    def one(bad):
        r = post_json(e.gw.port, "/v1/chat/completions", {"model": bad, "messages": [], "x": CANARY})
        assert_error(r, 400, "missing_model", canary=CANARY)
    check_all([42, None, ["m1"], {"id": "m1"}, True], one)
    no_backend_traffic(e, "a non-string model")


def test_body_not_an_object():
    e = env()
    r = post_json(e.gw.port, "/v1/chat/completions", '["m1", "%s"]' % CANARY)
    e_ = assert_error(r, 400, None, canary=CANARY)
    assert e_["code"] in ("missing_model", "invalid_json"), r.describe()
    no_backend_traffic(e, "a JSON array body")


def test_model_not_found():
    e = env()

    def one(path):
        r = post_json(e.gw.port, path, {"model": CANARY, "messages": [], "prompt": "x", "input": "x"})
        assert_error(r, 404, "model_not_found", canary=CANARY)
    check_all(["/v1/chat/completions", "/v1/completions", "/v1/embeddings"], one)
    no_backend_traffic(e, "an unknown model")


def test_model_names_are_case_sensitive():
    e = env()
    r = post_json(e.gw.port, "/v1/chat/completions", chat("M1"))
    assert_error(r, 404, "model_not_found")
    no_backend_traffic(e, "model M1")


# ----------------------------------------------------------------------------- admin


def test_admin_healthz():
    e = env()
    r = get(e.gw.admin_port, "/healthz")
    assert r.status == 200, r.describe()


def test_admin_readyz():
    e = env()
    r = get(e.gw.admin_port, "/readyz")
    assert r.status == 200, r.describe()


def test_admin_paths_not_on_public_port():
    e = env()
    for path in ("/healthz", "/readyz"):
        r = get(e.gw.port, path)
        try:
            assert_error(r, 404, "not_found")
        except AssertionError as ex:
            raise AssertionError("public GET %s: %s" % (path, ex))


# ----------------------------------------------------------------------------- x-request-id


def _check_generated(r, not_equal=None):
    rid = r.header("x-request-id")
    assert rid, "no x-request-id: %s" % r.describe()
    assert len(rid) <= 128 and TOKEN_RE.match(rid), "generated x-request-id %r is not a short token" % rid
    if not_equal is not None:
        assert rid != not_equal, "the client's unacceptable x-request-id %r was kept" % not_equal
    return rid


def test_request_id_on_every_response():
    e = env()
    rs = [("chat 200", post_json(e.gw.port, "/v1/chat/completions", chat("m1"))),
          ("models 200", get(e.gw.port, "/v1/models")),
          ("404 path", get(e.gw.port, "/nope")),
          ("400 invalid_json", post_json(e.gw.port, "/v1/chat/completions", "{")),
          ("400 missing_model", post_json(e.gw.port, "/v1/chat/completions", {})),
          ("404 model", post_json(e.gw.port, "/v1/chat/completions", chat("nope")))]
    for what, r in rs:
        assert r.header("x-request-id"), "%s without x-request-id: %s" % (what, r.describe())
        assert len(r.header_all("x-request-id")) == 1, "%s has %d x-request-id headers" % (
            what, len(r.header_all("x-request-id")))
        _check_generated(r)


def test_request_ids_are_unique():
    e = env()
    ids = [post_json(e.gw.port, "/v1/chat/completions", chat("m1")).header("x-request-id") for _ in range(5)]
    ids += [get(e.gw.port, "/nope").header("x-request-id") for _ in range(5)]
    assert None not in ids and len(set(ids)) == len(ids), "request ids repeat: %r" % ids


def test_client_request_id_kept():
    e = env()
    ids = ["abc", "client-req-0001", "a.b_c", "a~b", "a!b", "a#b", "a*b", "a'b", "a|b", "a`b^c+d%e$f&g",
           "0123456789abcdef0123456789abcdef0123456789abcdef",  # 48
           "x" * 64, "x" * 127, "x" * 128]

    def one(rid):
        for r in (post_json(e.gw.port, "/v1/chat/completions", chat("m1"), headers={"X-Request-Id": rid}),
                  get(e.gw.port, "/nope", headers={"x-request-id": rid})):
            # echoed as x-client-request-id; x-request-id is the gateway's own (test_sec_headers.py)
            assert r.header("x-client-request-id") == rid, "sane client x-request-id (%d chars) not echoed: got %r (status %d)" % (
                len(rid), r.header("x-client-request-id"), r.status)
            _check_generated(r, not_equal=rid)
    check_all(ids, one)


def test_client_request_id_too_long_replaced():
    e = env()
    rid = "y" * 129
    r = post_json(e.gw.port, "/v1/chat/completions", chat("m1"), headers={"X-Request-Id": rid})
    assert r.status == 200, r.describe()
    _check_generated(r, not_equal=rid)


def test_client_request_id_bad_chars_replaced():
    e = env()

    def one(rid):
        hdr = ("X-Request-Id: %s\r\n" % rid).encode("utf-8")
        req = (b"GET /v1/models HTTP/1.1\r\nHost: gw\r\n" + hdr + b"\r\n")
        with Conn(e.gw.port) as c:
            c.send(req)
            r = c.read_response()
        assert r.status == 200, "request %r: %s" % (req, r.describe())
        _check_generated(r, not_equal=rid)
    check_all(["a b", 'a"b', "a,b", "a;b", "a/b", "<script>", "a\tb", "a:b", "y" * 200 + " z"], one)


def test_client_request_id_empty_replaced():
    e = env()
    with Conn(e.gw.port) as c:
        c.send(b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nX-Request-Id: \r\n\r\n")
        r = c.read_response()
    assert r.status == 200, r.describe()
    _check_generated(r)


# ----------------------------------------------------------------------------- header forwarding


def _send_raw_chat(e, model, extra_headers, close=False):
    body = json.dumps(chat(model)).encode()
    req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
           + b"".join(h.encode() + b"\r\n" for h in extra_headers)
           + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    with Conn(e.gw.port) as c:
        c.send(req)
        r = c.read_response()
    assert r.status == 200, "request %r: %s" % (req, r.describe())
    mock = e.a if model in ("m1", "m2") else e.b
    recs = mock.wait_requests(1)
    assert len(recs) == 1, recs
    return req, recs[0]


def test_hop_by_hop_headers_not_forwarded():
    e = env()
    req, rec = _send_raw_chat(e, "m1", [
        "Connection: keep-alive",
        "Keep-Alive: timeout=5, max=100",
        "Proxy-Connection: keep-alive",
        "TE: trailers",
        "Trailer: X-Checksum",
        "Upgrade: h2c",
        "Proxy-Authorization: Basic cHJveHk6c2VjcmV0",
    ])
    names = header_names(rec)
    for h in ("keep-alive", "proxy-connection", "te", "trailer", "upgrade", "transfer-encoding",
              "proxy-authorization"):
        assert h not in names, "hop-by-hop header %r reached the backend: %r" % (h, rec["headers"])
    for v in header_values(rec, "connection"):
        toks = [t.strip().lower() for t in v.split(",")]
        assert set(toks) <= {"keep-alive", "close"}, "client Connection tokens forwarded: %r" % v
    assert "cHJveHk6c2VjcmV0" not in json.dumps(rec["headers"]), "proxy credentials forwarded"


def test_headers_named_in_connection_not_forwarded():
    e = env()
    req, rec = _send_raw_chat(e, "m1", [
        "Connection: keep-alive, X-Drop-Me",
        "Connection: x-drop-too",
        "X-Drop-Me: d1",
        "X-Drop-Too: d2",
        "X-Keep-Me: k1",
    ])
    names = header_names(rec)
    assert "x-drop-me" not in names, "header named in Connection reached the backend: %r" % rec["headers"]
    assert "x-drop-too" not in names, "header named in a second Connection reached the backend: %r" % rec["headers"]
    assert header_values(rec, "x-keep-me") == ["k1"], "x-keep-me not forwarded: %r" % rec["headers"]


def test_client_authorization_not_forwarded_backend_key_set():
    e = env()
    req, rec = _send_raw_chat(e, "m1", ["Authorization: Bearer client-secret-" + CANARY])
    assert CANARY not in json.dumps(rec["headers"]), "the client's Authorization reached the backend: %r" % rec["headers"]
    assert header_values(rec, "authorization") == ["Bearer " + KEY], \
        "backend should get exactly 'authorization: Bearer <$%s>', got %r" % (KEY_ENV, header_values(rec, "authorization"))


def test_client_api_key_not_forwarded():
    e = env()
    req, rec = _send_raw_chat(e, "m1", ["api-key: client-key-" + CANARY])
    assert "api-key" not in header_names(rec), "api-key header reached the backend: %r" % rec["headers"]
    assert CANARY not in json.dumps(rec["headers"])


def test_backend_key_without_client_credentials():
    e = env()
    req, rec = _send_raw_chat(e, "m2", [])
    assert header_values(rec, "authorization") == ["Bearer " + KEY], \
        "backend with api_key_env got authorization %r" % header_values(rec, "authorization")


def test_no_backend_key_means_no_authorization():
    e = env()
    req, rec = _send_raw_chat(e, "m3", ["Authorization: Bearer client-secret-" + CANARY, "api-key: k-" + CANARY])
    assert "authorization" not in header_names(rec) and "api-key" not in header_names(rec), \
        "backend without api_key_env got credentials: %r" % rec["headers"]
    assert CANARY not in json.dumps(rec["headers"])


def test_backend_key_never_in_response():
    e = env()
    r = post_json(e.gw.port, "/v1/chat/completions", chat("m1"))
    assert r.status == 200
    assert KEY not in r.describe(10 ** 6), "the backend key leaks into the response"
    assert KEY not in e.gw.stderr_text(), "the backend key is printed in the gateway's output"


def test_custom_headers_forwarded():
    e = env()
    req, rec = _send_raw_chat(e, "m1", ["X-Custom: 1", "X-Other-Thing: a b c", "User-Agent: gwtest/1"])
    assert header_values(rec, "x-custom") == ["1"], "x-custom not forwarded as is: %r" % rec["headers"]
    assert header_values(rec, "x-other-thing") == ["a b c"], rec["headers"]
    assert header_values(rec, "user-agent") == ["gwtest/1"], rec["headers"]
    assert header_values(rec, "content-type") == ["application/json"], rec["headers"]


if __name__ == "__main__":
    gwtest.run(globals())
