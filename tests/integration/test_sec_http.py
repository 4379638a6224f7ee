#!/usr/bin/env python3
"""HTTP framing of answers (issue 14), over real sockets against the mock and a scripted backend.

- the client's head rebuilt from a backend's answer is written into room of its exact size: a
  backend answering `HTTP/1.1 203` (no reason phrase) with 250 empty headers, whose rebuilt head
  is longer than its own (a reason phrase filled in, ": " after every name), is relayed whole and
  nothing overflows (the ASan build aborts on an overflow);
- HEAD (RFC 9110 9.3.2): no answer to a HEAD carries a body, on any path (/v1/models, 404, 401,
  413, a head that does not parse), and Content-Length says what the GET would carry;
- the gateway is the only author of its headers: a hostile backend sending every header name the
  gateway or its plugins emit (x-request-id, x-gotthard-*, x-ratelimit-*, retry-after and any
  other name a plugin sets) gets none of them to the client;
- a backend's redirect (301/302/303/307/308, any 3xx) is never relayed: 502 upstream_error, no
  Location, and not counted against the backend's health (as nginx and Envoy);
- one rule for every refusal: an error the gateway answers itself closes the connection, and
  nothing pipelined behind it reaches a backend, whatever the status (400, 401, 403, 404, 413,
  429, ...).

The reviewer's follow-up (issue 14, F1-F5):
- a client that takes nothing of its answer for timeouts.client_send_ms is closed with its
  backend connection: a stalled reader cannot hold a backend slot; one that reads slowly can;
- Connection takes 32 tokens at most (400 that closes, 502 from a backend), and its cost is
  linear: a head of 16K one-letter tokens costs the gateway no more CPU than a plain one;
- an HTTP/1.0 request's Expect: 100-continue is ignored (no interim answer);
- a 204 carries no framing header (Content-Length, Transfer-Encoding);
- blank lines before a request line are skipped however they are split across reads.
"""

import hashlib
import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from gwtest import (Conn, Gateway, Mock, assert_error, backend, chat, gateway_config, http_request,  # noqa: E402
                    pool, post_json)
from test_backend_faults import RawBackend, json_answer  # noqa: E402

KEY = "gk_sechttptestkey0000000000000000000000000000"
NARROW_KEY = "gk_sechttpnarrowkey00000000000000000000000000"
CLOSE_S = 2.0


def _sha(k):
    return hashlib.sha256(k.encode()).hexdigest()


def _chat_bytes(rid, model="m1", headers=(), body=None):
    b = json.dumps(body if body is not None else chat(model)).encode()
    return http_request("POST", "/v1/chat/completions", b,
                        [("Content-Type", "application/json"), ("X-Request-Id", rid), ("X-Trace", rid)]
                        + list(headers))


def _rids(records):
    out = []
    for rec in records:
        v = gwtest.header_values(rec, "x-trace")  # the backend gets the gateway's x-request-id
        out.append(v[0] if v else None)
    return out


# --------------------------------------------------------------------------- 1. exact head sizes


def _empty_headers_script(req, fake):
    """`HTTP/1.1 203` without a reason phrase, 250 empty headers and a pad header of x-pad bytes."""
    pad = int(req.header("x-pad", "0"))
    body = b'{"ok":true}'
    head = b"HTTP/1.1 203\r\n" + b"".join(b"x-e%03d:\r\n" % i for i in range(250))
    if pad:
        head += b"x-pad: " + b"p" * pad + b"\r\n"
    head += b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    return [head + body]


def test_rebuilt_head_longer_than_the_backends_is_written_whole():
    """The rebuilt head grows by a byte per empty header and by the reason phrase: 250 empty
    headers outgrow any fixed slack. Swept over head sizes (a pad header of 0..2400 bytes) so that
    the reserved room meets every allocation boundary of the buffer; each answer must arrive whole,
    with all 250 empty headers, and the gateway must not overflow (ASan)."""
    fake = RawBackend(_empty_headers_script)
    gw = Gateway(gateway_config(pools=[pool("p1", ["m1"], [backend(fake.port)])],
                                limits={"max_headers": 400}, timeouts={"drain_ms": 2000}))
    for pad in range(0, 2400, 37):
        with Conn(gw.port, timeout=10) as c:  # http.client refuses answers of over 100 headers
            c.send(_chat_bytes("pad-%d" % pad, headers=[("x-pad", str(pad))]))
            r = c.read_response()
        assert r.status == 203, "pad %d: %s" % (pad, r.describe())
        assert r.reason == "Non-Authoritative Information", "pad %d: reason %r" % (pad, r.reason)
        empty = [k for k, v in r.headers if k.startswith("x-e") and v == ""]
        assert len(empty) == 250, "pad %d: %d empty headers relayed, expected 250" % (pad, len(empty))
        assert r.json() == {"ok": True}, r.describe()
        assert gw.alive(), "the gateway died at pad %d" % pad


# --------------------------------------------------------------------------- 2. HEAD


def _head_then_get(port, path, headers=()):
    """HEAD path then GET path pipelined on one connection: (head answer, get answer, bytes the
    connection held between them). The GET's answer must start right after the HEAD's head."""
    with Conn(port) as c:
        c.send(http_request("HEAD", path, headers=list(headers) + [("X-Request-Id", "h-1")])
               + http_request("GET", path, headers=list(headers) + [("X-Request-Id", "h-2")]))
        h = c.read_head(method="HEAD")
        # The next bytes are the GET's answer's status line, never a body of the HEAD's.
        deadline = time.monotonic() + 5
        while len(c.buf) < 9 and not c.eof and time.monotonic() < deadline:
            c._fill(deadline)
        after = c.buf[:9]
        assert after == b"HTTP/1.1 ", "bytes after the HEAD answer's head are not an answer: %r (%s)" % (
            c.buf[:200], h.describe())
        g = c.read_response()
        return h, g


def test_head_models_has_no_body_and_the_get_behind_it_is_intact():
    mock = Mock()
    gw = Gateway(gateway_config([mock.port], timeouts={"drain_ms": 2000}))
    h, g = _head_then_get(gw.port, "/v1/models")
    assert h.status == 200, h.describe()
    assert g.status == 200 and g.json()["object"] == "list", g.describe()
    assert h.header("content-length") == g.header("content-length"), (
        "HEAD's content-length %r is not the GET's %r" % (h.header("content-length"), g.header("content-length")))
    assert h.header("content-type") == g.header("content-type"), (h.describe(), g.describe())
    assert h.header("x-client-request-id") == "h-1" and g.header("x-client-request-id") == "h-2"


def _raw_after_head(port, data, timeout=3.0):
    """Sends data, reads until the gateway closes (or timeout): (head Response, bytes after it)."""
    with Conn(port, timeout=timeout) as c:
        c.send(data)
        closed = c.wait_closed(timeout)
        buf = c.buf
    assert b"\r\n\r\n" in buf, "no answer head: %r" % buf[:300]
    head, rest = buf.split(b"\r\n\r\n", 1)
    return gwtest._parse_head(head), rest, closed


def test_head_never_carries_a_body_on_any_error_path():
    """Every error a HEAD can get: the gateway's 404 (unknown path, a POST-only endpoint), 401 (no
    credential), 403 (a plugin refuses), 413 (a declared body over the limit), and the 400, 408,
    431 and 505 of a head that does not parse or come in time.
    The GET (or POST) twin of each carries a body of the same length that content-length gives."""
    mock = Mock()
    tenants = [{"id": "acme", "models": ["*"], "api_keys": [{"id": "k1", "sha256": _sha(KEY)}]}]
    plug = [{"path": gwtest.example_plugin(), "config": {"header": "x-gotthard-example", "value": "v"}}]
    gw = Gateway(gateway_config([mock.port], limits={"max_body_bytes": 1024}, plugins=plug,
                                timeouts={"drain_ms": 2000}))
    gwa = Gateway(gateway_config([mock.port], tenants=tenants, timeouts={"drain_ms": 2000}))
    auth = [("Authorization", "Bearer " + KEY)]
    cases = [
        ("404 path", gw, "/nothing-here", [], 404),
        ("404 post-only", gw, "/v1/chat/completions", [], 404),
        ("413", gw, "/v1/models", [("Content-Length", "5000")], 413),
        ("403 plugin", gw, "/v1/models", [("x-example-deny", "1")], 403),
        ("200", gw, "/v1/models", [], 200),
        ("401", gwa, "/v1/models", [], 401),
        ("200 with a key", gwa, "/v1/models", auth, 200),
    ]

    def one(case):
        name, g, path, extra, status = case
        h, rest, _ = _raw_after_head(g.port, http_request("HEAD", path, headers=extra + [("Connection", "close")]))
        assert h.status == status, "%s: %s" % (name, h.describe())
        assert rest == b"", "%s: HEAD answer %d carries a body: %r" % (name, h.status, rest[:200])
        twin, trest, _ = _raw_after_head(g.port, http_request("GET", path, headers=extra + [("Connection", "close")]))
        assert twin.status == status, "%s GET: %s" % (name, twin.describe())
        cl = h.header("content-length")
        assert cl is None or cl == twin.header("content-length"), (
            "%s: HEAD content-length %r, GET's %r" % (name, cl, twin.header("content-length")))
        if cl is not None:
            assert len(trest) == int(cl), "%s GET: body of %d bytes, content-length %s" % (name, len(trest), cl)
    gwtest.check_all(cases, one)
    # Heads the connection refuses before there is a request, when they begin with HEAD: a space
    # before the colon (400), over limits.max_headers (431), a version other than 1.x (505), and
    # a head not finished within client_header_ms (408). No body; the connection closes.
    gwt = Gateway(gateway_config([mock.port], timeouts={"client_header_ms": 400, "drain_ms": 2000}))
    many = "".join("x-h%d: v\r\n" % i for i in range(150)).encode()
    heads = [
        ("400", 400, b"HEAD /v1/models HTTP/1.1\r\nHost: gw\r\nX-A : b\r\n\r\n"),
        ("431", 431, b"HEAD /v1/models HTTP/1.1\r\nHost: gw\r\n" + many + b"\r\n"),
        ("505", 505, b"HEAD /v1/models HTTP/1.2\r\nHost: gw\r\n\r\n"),
        ("408", 408, b"HEAD /v1/models HTTP/1.1\r\nHost: gw\r\n"),
    ]

    def bad_head(case):
        name, status, data = case
        h, rest, closed = _raw_after_head(gwt.port, data)
        assert h.status == status and rest == b"" and closed, (name, h.describe(), rest[:200], closed)
        assert h.header("content-length") not in (None, "0"), (name, h.describe())
    gwtest.check_all(heads, bad_head)
    assert mock.api_requests() == [], "a HEAD reached the backend: %r" % mock.api_requests()


def test_head_on_the_admin_listener_has_no_body():
    """The admin listener (libevent's evhttp, which sends whatever body it is given, also to a
    HEAD) answers HEAD as GET without the body: /healthz, /metrics, and its 404."""
    mock = Mock()
    gw = Gateway(gateway_config([mock.port], timeouts={"drain_ms": 2000}))
    for path, status in (("/healthz", 200), ("/metrics", 200), ("/nothing", 404)):
        req = lambda m: http_request(m, path, host="127.0.0.1", headers=[("Connection", "close")])
        h, rest, _ = _raw_after_head(gw.admin_port, req("HEAD"))
        assert h.status == status, "%s: %s" % (path, h.describe())
        assert rest == b"", "admin HEAD %s: a body: %r" % (path, rest[:200])
        g, grest, _ = _raw_after_head(gw.admin_port, req("GET"))
        assert g.status == status and grest, "%s GET: %s" % (path, g.describe())
        if path != "/metrics":  # its counters move between the two
            assert h.header("content-length") == str(len(grest)), (path, h.describe(), len(grest))


# --------------------------------------------------------------------------- 3. the gateway's headers


def _geoip_db():
    return gwtest.site_mmdb()


# Every name the gateway and its plugins write into answers (grep gw_req_add_response_header and
# the core's writes): the core's x-request-id, residency's x-gotthard-residency, quota's
# x-ratelimit-* and retry-after(-ms), the example plugin's configured name (here x-gotthard-example
# and, in a second gateway, retry-after), and any other name in the gateway's namespaces.
HOSTILE = [
    ("x-request-id", "evil-id"),
    ("X-Gotthard-Residency", "US"),
    ("x-gotthard-example", "evil"),
    ("x-gotthard-anything", "evil"),
    ("x-ratelimit-limit-requests", "999999"),
    ("x-ratelimit-remaining-requests", "999999"),
    ("x-ratelimit-reset-requests", "0s"),
    ("x-ratelimit-limit-tokens", "999999"),
    ("x-ratelimit-remaining-tokens", "999999"),
    ("X-RateLimit-Reset-Tokens", "0s"),
    ("x-ratelimit-anything", "evil"),
]


def _hostile_script(extra):
    def script(req, fake):
        body = b'{"id":"x","object":"chat.completion","choices":[]}'
        hs = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in HOSTILE + extra)
        ct = b"text/event-stream" if req.header("x-sse") else b"application/json"
        if req.header("x-sse"):
            ev = b'data: {"id":"x","object":"chat.completion.chunk","choices":[]}\n\ndata: [DONE]\n\n'
            return [b"HTTP/1.1 200 OK\r\n" + hs + b"Content-Type: " + ct + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + b"%x\r\n%s\r\n0\r\n\r\n" % (len(ev), ev)]
        status = req.header("x-status", "200").encode()
        return [b"HTTP/1.1 " + status + b" X\r\n" + hs + b"Content-Type: " + ct + b"\r\nContent-Length: %d\r\n\r\n"
                % len(body) + body]
    return script


def test_backend_cannot_write_the_gateways_headers():
    """Residency, quota and the example plugin on; the backend sends every gateway header name
    with its own values, on a JSON answer, a stream, and a 400. The client sees each name at most
    once, with the gateway's value, or not at all when the gateway does not set it."""
    fake = RawBackend(_hostile_script([("retry-after", "99"), ("retry-after-ms", "99000")]))
    tenants = [{"id": "acme", "models": ["*"], "api_keys": [{"id": "k1", "sha256": _sha(KEY)}],
                "limits": {"requests_per_minute": 1000}}]
    base = dict(pools=[pool("p1", ["m1"], [backend(fake.port, country="CH")])], tenants=tenants,
                geoip={"databases": [_geoip_db()]}, residency={"allowed_countries": ["CH"]},
                timeouts={"drain_ms": 2000})
    plug = [{"path": gwtest.example_plugin(), "config": {"header": "x-gotthard-example", "value": "ours"}}]
    gw = Gateway(gateway_config(plugins=plug, **base))
    auth = {"authorization": "Bearer " + KEY}
    variants = [("json", {}), ("sse", {"x-sse": "1"}), ("400", {"x-status": "400"})]

    def one(v):
        name, hs = v
        h = dict(auth, **hs)
        h["x-request-id"] = "client-id-" + name
        r = post_json(gw.port, "/v1/chat/completions", chat("m1"), headers=h, timeout=10)
        assert r.status in (200, 400), "%s: %s" % (name, r.describe())
        for hn, hv in HOSTILE:
            got = r.header_all(hn)
            assert hv not in got, "%s: the backend's %s: %s reached the client: %s" % (name, hn, hv, r.describe())
            assert len(got) <= 1, "%s: %s twice: %r" % (name, hn, got)
        assert r.header_all("x-client-request-id") == ["client-id-" + name], r.describe()
        assert len(r.header_all("x-request-id")) == 1 and r.header("x-request-id") != "evil-id", r.describe()
        assert r.header_all("x-gotthard-residency") == ["CH"], r.describe()
        assert r.header_all("x-gotthard-example") == ["ours"], r.describe()
        assert r.header_all("x-ratelimit-limit-requests") == ["1000"], r.describe()
        assert r.header_all("x-gotthard-anything") == [] and r.header_all("x-ratelimit-anything") == [], r.describe()
        # retry-after is the backend's to give while the gateway gives none of its own; on an
        # error the gateway replaces, only a 429's or 503's is kept (docs/privacy.md)
        want = [] if name == "400" else ["99"]
        assert r.header_all("retry-after") == want, r.describe()
    gwtest.check_all(variants, one)


def test_backend_header_the_gateway_sets_is_replaced_not_doubled():
    """A plugin that sets retry-after on every answer (the example plugin, configured so): the
    backend's retry-after and retry-after-ms are dropped, only the plugin's goes out."""
    fake = RawBackend(_hostile_script([("Retry-After", "99"), ("retry-after", "98")]))
    plug = [{"path": gwtest.example_plugin(), "config": {"header": "retry-after", "value": "7"}}]
    gw = Gateway(gateway_config(pools=[pool("p1", ["m1"], [backend(fake.port)])], plugins=plug,
                                timeouts={"drain_ms": 2000}))
    for hs in ({}, {"x-sse": "1"}):
        r = post_json(gw.port, "/v1/chat/completions", chat("m1"), headers=hs, timeout=10)
        assert r.status == 200, r.describe()
        assert r.header_all("retry-after") == ["7"], r.describe()


# --------------------------------------------------------------------------- 4. redirects


def _redirect_script(req, fake):
    st = req.header("x-status")
    if st:
        body = b"<a href='http://evil.example/'>moved</a>"
        return [b"HTTP/1.1 " + st.encode() + b" Moved\r\nLocation: http://evil.example/phish\r\n"
                b"Content-Type: text/html\r\nContent-Length: %d\r\n\r\n" % len(body) + body]
    return [json_answer()]


def test_backend_redirect_is_502_without_location_and_not_a_health_failure():
    fake = RawBackend(_redirect_script)
    gw = Gateway(gateway_config(
        pools=[pool("p1", ["m1"], [backend(fake.port)], health={"max_fails": 2, "fail_timeout_ms": 60000})],
        timeouts={"drain_ms": 2000}))
    statuses = ["300", "301", "302", "303", "304", "307", "308", "399"]

    def one(st):
        r = post_json(gw.port, "/v1/chat/completions", chat("m1"), headers={"x-status": st}, timeout=10)
        assert_error(r, 502, "upstream_error")
        assert r.header("location") is None, "%s: Location relayed: %s" % (st, r.describe())
        assert b"evil.example" not in r.raw_head + r.body, "%s: %s" % (st, r.describe())
    gwtest.check_all(statuses, one)
    # max_fails 2 and eight redirects in a row: the backend was not ejected (it answered).
    r = post_json(gw.port, "/v1/chat/completions", chat("m1"), timeout=10)
    assert r.status == 200, "after the redirects: %s" % r.describe()
    n = len(fake.requests())
    assert n == len(statuses) + 1, "a redirect was retried: %d requests at the backend" % n


# --------------------------------------------------------------------------- 5. refusals and pipelining


def test_every_refusal_closes_and_nothing_pipelined_behind_it_is_forwarded():
    """Each refusal kind, with a good request pipelined behind it on the same connection: the
    refusal is answered (OpenAI-shaped, connection: close), the connection closes, nothing is
    answered after it, and the good request never reaches the backend."""
    mock = Mock()
    tenants = [
        {"id": "acme", "models": ["*"], "api_keys": [{"id": "k1", "sha256": _sha(KEY)}]},
        {"id": "narrow", "models": ["m1"], "api_keys": [{"id": "k2", "sha256": _sha(NARROW_KEY)}],
         "limits": {"requests_per_minute": 2}},
    ]
    plug = [{"path": gwtest.example_plugin(), "config": {"header": "x-gotthard-example", "value": "v"}}]
    gw = Gateway(gateway_config([mock.port], models=("m1", "m2"), tenants=tenants, plugins=plug,
                                limits={"max_body_bytes": 2000}, timeouts={"drain_ms": 2000}))
    auth = [("Authorization", "Bearer " + KEY)]
    narrow = [("Authorization", "Bearer " + NARROW_KEY)]

    def post(rid, body, headers=auth):
        b = body if isinstance(body, bytes) else json.dumps(body).encode()
        return http_request("POST", "/v1/chat/completions", b,
                            [("Content-Type", "application/json"), ("X-Request-Id", rid), ("X-Trace", rid)]
                        + list(headers))

    big = json.dumps(chat("m1", "x" * 3000)).encode()
    cases = [
        ("400 invalid_json", 400, "invalid_json", lambda rid: post(rid, b"{")),
        ("400 missing_model", 400, "missing_model", lambda rid: post(rid, {"messages": []})),
        ("400 bad stream", 400, "bad_request", lambda rid: post(rid, chat("m1", stream="yes"))),
        ("403 model_not_allowed", 403, "model_not_allowed", lambda rid: post(rid, chat("m2"), narrow)),
        ("403 plugin", 403, None, lambda rid: post(rid, chat("m1"), auth + [("x-example-deny", "1")])),
        ("404 model", 404, "model_not_found", lambda rid: post(rid, chat("m9"))),
        ("404 path", 404, "not_found", lambda rid: http_request("GET", "/nope", headers=auth + [("X-Request-Id", rid)])),
        ("404 path with a body", 404, "not_found", lambda rid: http_request(
            "POST", "/nope", b"{}", auth + [("X-Request-Id", rid)])),
        ("401 no key", 401, "invalid_api_key", lambda rid: post(rid, chat("m1"), [])),
        ("401 no key, no body", 401, "invalid_api_key", lambda rid: http_request(
            "GET", "/v1/models", headers=[("X-Request-Id", rid)])),
        ("413 length", 413, "request_too_large", lambda rid: post(rid, big)),
        ("413 chunked", 413, "request_too_large", lambda rid: http_request(
            "POST", "/v1/chat/completions", gwtest.chunked(big, [1000, 1000, 1000, 1000]),
            auth + [("X-Request-Id", rid), ("Transfer-Encoding", "chunked")])),
        ("429", 429, None, lambda rid: post(rid, chat("m1"), narrow)),
    ]

    def one(case):
        name, status, code, make = case
        rid = "ref-" + name.replace(" ", "-").replace(",", "")
        behind = rid + "-behind"
        if status == 429:  # spend the narrow tenant's two requests first
            for i in range(2):
                r = post_json(gw.port, "/v1/chat/completions", chat("m1"), headers=dict(narrow))
                assert r.status == 200, r.describe()
        with Conn(gw.port) as c:
            c.send(make(rid) + _chat_bytes(behind, headers=auth))
            r = c.read_response()
            assert_error(r, status, code)
            assert r.header("x-client-request-id") == rid, r.describe()
            assert r.has_token("connection", "close"), "%s: no connection: close: %s" % (name, r.describe())
            assert c.wait_closed(CLOSE_S), "%s: connection open after the refusal" % name
            assert c.buf == b"", "%s: answered after the refusal: %r" % (name, c.buf[:300])
        time.sleep(0.2)
        got = _rids(mock.api_requests())
        assert behind not in got, "%s: the request pipelined behind it reached the backend: %r" % (name, got)
        assert rid not in got, "%s: the refused request reached the backend" % name
    gwtest.check_all(cases, one)
    # The refusals left audit lines (auth failures): the admin's list of them, built in room of
    # its exact size, reads back whole.
    rec = gwtest.get(gw.admin_port, "/audit/recent").json()
    assert rec["total"] >= 2 and len(rec["events"]) >= 2, rec
    assert all(e.get("event") for e in rec["events"]), rec


def test_answered_requests_keep_the_connection():
    """The other side of the rule: an answer relayed from a backend (2xx, and a backend's own 4xx)
    and /v1/models keep the connection; pipelined requests behind them are served."""
    fake = RawBackend(lambda req, f: [json_answer()] if not req.header("x-status") else
                      [b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"])
    gw = Gateway(gateway_config(pools=[pool("p1", ["m1"], [backend(fake.port)])], timeouts={"drain_ms": 2000}))
    with Conn(gw.port) as c:
        c.send(_chat_bytes("k-1") + _chat_bytes("k-2", headers=[("x-status", "400")])
               + http_request("GET", "/v1/models", headers=[("X-Request-Id", "k-3")]) + _chat_bytes("k-4"))
        for rid, st in (("k-1", 200), ("k-2", 400), ("k-3", 200), ("k-4", 200)):
            r = c.read_response()
            assert r.status == st and r.header("x-client-request-id") == rid, r.describe()
            assert not r.has_token("connection", "close"), r.describe()
        assert c.is_open(0.3), "connection closed after relayed answers"


# --------------------------------------------------------------------------- 6. the follow-up (F1-F5)


def _stalled_stream(port, rcvbuf=4096):
    """A streaming request from a client with a small receive buffer that never reads."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    s.sendall(_chat_bytes("stalled", headers=[("x-mock-tokens", "1000000")],
                          body=dict(chat("m1"), stream=True)))
    return s


def _read_to_close(s, timeout):
    """Everything s receives until the peer closes; None if it is still open after timeout."""
    s.settimeout(timeout)
    data = b""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            d = s.recv(1 << 16)
        except socket.timeout:
            return None
        except ConnectionResetError:
            return data
        if not d:
            return data
        data += d
    return None


def test_client_that_stops_reading_frees_the_backend_slot():
    """F1: one backend slot (max_concurrent 1); a client streams and stops reading. After
    timeouts.client_send_ms without taking a byte it is closed with its backend connection, the
    request is logged as closed by the client, and the next request (waiting in the queue for
    the slot) is served within client_send_ms and a margin."""
    mock = Mock(["--token-ms", "0"])
    gw = Gateway(gateway_config(pools=[pool("p1", ["m1"], [backend(mock.port, max_concurrent=1)],
                                            queue={"timeout_ms": 15000})],
                                timeouts={"client_send_ms": 500, "drain_ms": 2000},
                                access_log={"path": "access.log"}))
    s = _stalled_stream(gw.port)
    try:
        mock.wait_requests(1)
        t0 = time.monotonic()
        r = post_json(gw.port, "/v1/chat/completions", chat("m1"), timeout=20)
        took = time.monotonic() - t0
        assert r.status == 200, r.describe()
        assert took < 0.5 + 5.0, "the slot came free after %.1f s" % took
        data = _read_to_close(s, 10)
        assert data is not None, "the stalled client was never closed"
        assert b"data: [DONE]" not in data, "the stalled stream was not cut"
    finally:
        s.close()
    recs = mock.wait_requests(2, completed=True, timeout=10)
    assert recs[0]["client_closed"] and not recs[0]["completed"], recs[0]
    path = os.path.join(gw.dir, "access.log")
    from test_access_log import lines as log_lines
    first = gwtest.wait_for(lambda: [ln for ln in log_lines(path) if ln.get("code") == "client_closed"],
                            5, what="the stalled request logged as closed by the client")
    assert len(first) == 1, first


def test_client_that_reads_slowly_is_not_cut():
    """F1's other side: a client that keeps taking its answer, slowly, is never cut, even when
    emptying the gateway's buffer takes it longer than client_send_ms: only a client that takes
    nothing for that long is."""
    mock = Mock(["--token-ms", "0"])
    gw = Gateway(gateway_config([mock.port], timeouts={"client_send_ms": 1000, "drain_ms": 2000}))
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    s.connect(("127.0.0.1", gw.port))
    try:
        s.sendall(_chat_bytes("slow", headers=[("x-mock-tokens", "2500")],
                              body=dict(chat("m1"), stream=True)))
        data = b""
        end = time.monotonic() + 60
        while b"data: [DONE]" not in data and time.monotonic() < end:
            time.sleep(0.1)  # about 80 KiB/s: 256 KiB take longer than client_send_ms
            try:
                d = s.recv(8192)
            except ConnectionResetError:
                break
            if not d:
                break
            data += d
        assert b"data: [DONE]" in data, "cut after %d bytes" % len(data)
        assert len(data) > 400000, "the answer (%d bytes) was too short to pause the backend" % len(data)
    finally:
        s.close()


def _many_headers_head(tokens, n_headers=97, size=32768, path="/v1/models"):
    line0 = b"GET %s HTTP/1.1\r\nHost: x\r\n" % path.encode()
    hdrs = b"".join(b"%c: x\r\n" % (97 + (i % 26)) for i in range(n_headers))
    room = size - len(line0) - len(hdrs) - 40
    conn = b"Connection: " + (b"a," * (room // 2) if tokens else b"x" * room) + b"\r\n"
    return line0 + hdrs + conn + b"\r\n"


def _cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        p = f.read().rsplit(")", 1)[1].split()
    return (int(p[11]) + int(p[12])) / os.sysconf("SC_CLK_TCK")


def test_connection_tokens_cost_is_linear_and_bounded():
    """F2: 97 headers and a Connection header of ~16K one-letter tokens in 32 KiB, before any
    authentication. The gateway's CPU time for such heads stays within a small multiple of
    plain heads of the same size (it was 85 times as much), and each is a 400 that closes."""
    mock = Mock()
    gw = Gateway(gateway_config([mock.port], limits={"max_headers": 100, "max_header_bytes": 32768}))
    pid = gw.pid
    cost = {}
    for tokens in (False, True):
        head = _many_headers_head(tokens)
        c0 = _cpu_s(pid)
        for _ in range(60):
            with Conn(gw.port, timeout=10) as c:
                c.send(head)
                r = c.read_response()
                if tokens:
                    assert_error(r, 400, "bad_request")
                    assert r.has_token("connection", "close"), r.describe()
                    assert c.wait_closed(5), "a refused head left the connection open"
                else:
                    assert r.status == 200, r.describe()
        cost[tokens] = _cpu_s(pid) - c0
    assert cost[True] <= 3 * cost[False] + 0.3, "CPU: plain %.2f s, tokens %.2f s" % (cost[False], cost[True])


def test_connection_takes_32_tokens_from_clients_and_backends():
    """F2's bound: 32 Connection tokens (over all Connection lines) are a request; 33 are a 400
    that closes, and 33 from a backend are a 502. The tokens still do their job: the headers they
    name are not forwarded."""
    fake = RawBackend(lambda req, f: [json_answer()] if not req.header("x-many") else
                      [b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: "
                       + b",".join(b"t%d" % i for i in range(int(req.header("x-many")))) + b"\r\n"
                       b"t0: hidden\r\nX-Kept: 1\r\nContent-Length: 2\r\n\r\n{}"])
    gw = Gateway(gateway_config(pools=[pool("p1", ["m1"], [backend(fake.port)])], timeouts={"drain_ms": 2000}))
    toks = ["t%d" % i for i in range(33)]
    with Conn(gw.port) as c:
        c.send(_chat_bytes("c-32", headers=[("Connection", ", ".join(toks[:20])), ("Connection", ",".join(toks[20:32])),
                                            ("t0", "hop"), ("t31", "hop")]))
        r = c.read_response()
        assert r.status == 200, r.describe()
    rec = fake.requests()[-1]
    assert rec.header("t0", None) is None and rec.header("t31", None) is None, "a header Connection named was forwarded"
    with Conn(gw.port) as c:
        c.send(_chat_bytes("c-33", headers=[("Connection", ", ".join(toks[:20])), ("Connection", ",".join(toks[20:]))]))
        r = c.read_response()
        assert_error(r, 400, "bad_request")
        assert c.wait_closed(5), "a refused head left the connection open"
    for n, status in ((32, 200), (33, 502)):
        with Conn(gw.port) as c:
            c.send(_chat_bytes("b-%d" % n, headers=[("x-many", str(n))]))
            r = c.read_response()
            assert r.status == status, r.describe()
            if status == 200:
                assert r.header("t0") is None and r.header("x-kept") == "1", r.describe()


def test_expect_100_continue_is_ignored_from_http_1_0():
    """F3 (RFC 9110 10.1.1): no 100 Continue to an HTTP/1.0 request; HTTP/1.1 still gets one."""
    mock = Mock()
    gw = Gateway(gateway_config([mock.port]))
    body = json.dumps(chat("m1")).encode()
    for version, interim in (("HTTP/1.0", False), ("HTTP/1.1", True)):
        head = ("POST /v1/chat/completions %s\r\nHost: x\r\nContent-Type: application/json\r\n"
                "Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % (version, len(body))).encode()
        with Conn(gw.port) as c:
            c.send(head)
            time.sleep(0.5)
            c.is_open(0.2)  # collects what came meanwhile
            got = c.buf
            assert got.startswith(b"HTTP/1.1 100 Continue\r\n\r\n") == interim, (version, got)
            if interim:
                c.buf = c.buf[25:]
            c.send(body)
            r = c.read_response()
            assert r.status == 200, r.describe()


def test_no_content_answer_has_no_framing_header():
    """F4 (RFC 9110 8.6): a relayed 204 carries neither Content-Length nor Transfer-Encoding,
    whatever the backend framed it with, and the connection goes on."""
    answers = {
        "bare": b"HTTP/1.1 204 No Content\r\nX-Kept: 1\r\n\r\n",
        "cl0": b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nX-Kept: 1\r\n\r\n",
    }
    fake = RawBackend(lambda req, f: [answers[req.header("x-case")]] if req.header("x-case") else [json_answer()])
    gw = Gateway(gateway_config(pools=[pool("p1", ["m1"], [backend(fake.port)])], timeouts={"drain_ms": 2000}))
    for case in answers:
        with Conn(gw.port) as c:
            c.send(_chat_bytes("n-" + case, headers=[("x-case", case)]) + _chat_bytes("n-next"))
            r = c.read_response()
            assert r.status == 204 and r.header("x-kept") == "1", r.describe()
            assert r.header("content-length") is None and r.header("transfer-encoding") is None, r.describe()
            r = c.read_response()
            assert r.status == 200 and r.header("x-client-request-id") == "n-next", r.describe()


def test_leading_blank_lines_whatever_the_split():
    """F5 (RFC 9112 2.2): blank lines before a request line are skipped, however they are split
    across reads (a CR in one segment and its LF in the next), on a new connection and between
    keep-alive requests; bytes that are not blank lines are still a 400 either way."""
    mock = Mock()
    gw = Gateway(gateway_config([mock.port]))
    req = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
    for pieces in ([b"\r", b"\n" + req], [b"\r\n\r", b"\n\r", b"\n" + req], [b"\r\n", req]):
        with Conn(gw.port) as c:
            for i, p in enumerate(pieces):
                c.send(p)
                if i + 1 < len(pieces):
                    time.sleep(0.2)
            r = c.read_response()
            assert r.status == 200, (pieces, r.describe())
            # and between two requests of one connection
            c.send(pieces[0])
            time.sleep(0.2)
            c.send(b"".join(pieces[1:]))
            r = c.read_response()
            assert r.status == 200, (pieces, r.describe())
    for pieces in ([b"\r", b"\r\n" + req], [b"\r\n\n" + req]):
        with Conn(gw.port) as c:
            for p in pieces:
                c.send(p)
                time.sleep(0.2)
            r = c.read_response()
            assert r.status == 400, (pieces, r.describe())


if __name__ == "__main__":
    gwtest.run(globals())
