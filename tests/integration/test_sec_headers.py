"""What the gateway sends to backends (issue 14): request ids, content codings, forwarded headers.

Every check reads the bytes the backend received (the mock backend's record, or a scripted raw
backend) and, where it matters, what the client got back:

- request ids: the backend always gets the gateway's own id, 32 hex digits from a CSPRNG, never
  the client's; two requests with the same client id carry different ids to the backend; the
  next id cannot be computed from the previous one; the client's own id (x-client-request-id,
  else x-request-id; a token of at most 128 characters) comes back to that client only, as
  x-client-request-id, and is logged as the access log's client_request_id;
- content codings: Accept-Encoding is replaced by "accept-encoding: identity"; a request body
  with a Content-Encoding other than identity is refused with 415 before it is read (no
  100 Continue, nothing forwarded, the connection closed); a backend answer with a content
  coding is a 502;
- client-address privacy: no header of the default client-address list reaches the backend,
  whatever strip_request_headers says; a configured strip list adds to the default one;
  forward_request_headers lets a default one through, never an address header; x-session-id
  steers affinity and is not forwarded unless listed in forward_request_headers;
- the location CDNs derive from the address, Cluster-Client-IP and Via never reach the backend;
  no header whose name has a '_' does; forward_request_headers naming any of them, or a header
  the core never forwards (credentials, ids, framing), is a config error.
"""

import json
import os
import re
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from gwtest import (Mock, Gateway, Conn, gateway_config, pool, backend, chat, post_json, get,  # noqa: E402
                    http_request, chunked, assert_error, header_values, header_names, wait_for)
from test_access_log import lines as log_lines  # noqa: E402
from test_backend_faults import RawBackend, json_answer, chunk, SSE_END, TOKEN_EVENT, DONE_EVENT  # noqa: E402

HEX32 = re.compile(r"^[0-9a-f]{32}$")

# The client-address headers of the common front proxies, CDNs and platforms (the class): every
# one must be gone at the backend whatever the config says. Values look like addresses.
ADDRESS_HEADERS = [
    "forwarded", "x-forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto",
    "x-forwarded-client-ip", "x-original-forwarded-for", "x-real-ip", "x-client-ip", "client-ip",
    "true-client-ip", "cf-connecting-ip", "cf-connecting-ipv6", "cf-pseudo-ipv4", "cf-ipcountry",
    "cf-ipcity", "fastly-client-ip", "x-cluster-client-ip", "x-originating-ip", "x-remote-ip",
    "x-remote-addr", "x-envoy-external-address", "x-azure-clientip", "x-azure-socketip",
    "fly-client-ip", "x-appengine-user-ip", "x-appengine-citylatlong", "x-proxyuser-ip",
    "cloudfront-viewer-address", "cloudfront-viewer-country", "x-vercel-forwarded-for",
    "x-vercel-ip-city", "x-nf-client-connection-ip", "do-connecting-ip", "incap-client-ip",
    "x-sucuri-clientip", "wl-proxy-client-ip", "proxy-client-ip", "x-akamai-edgescape",
]


def addr_value(i):
    return "203.0.113.%d" % (10 + i)


def mock_gw(**over):
    mock = Mock()
    gw = Gateway(gateway_config([mock.port], access_log={"path": "access.log"}, **over))
    return mock, gw


def send(gw, headers=None, body=None):
    r = post_json(gw.port, "/v1/chat/completions", body or chat("m1"), headers=headers or {})
    assert r.status == 200, r.describe()
    return r


def access_lines(gw, n, timeout=5.0):
    path = os.path.join(gw.dir, "access.log")
    return wait_for(lambda: len(log_lines(path)) >= n and log_lines(path), timeout,
                    what="%d access log lines" % n)


def all_header_text(rec):
    return "\n".join("%s: %s" % (k, v) for k, v in rec["headers"])


# --------------------------------------------------------------------------- request ids


def test_backend_gets_the_gateways_id_never_the_clients():
    """Two requests with the same client id (in x-request-id, then in x-client-request-id, then
    both): the backend gets two different 32-hex ids, the same the client's x-request-id shows,
    and never the client's id, under any header."""
    mock, gw = mock_gw()
    cases = [{"x-request-id": "shared-id-1"}, {"x-client-request-id": "shared-id-1"},
             {"x-request-id": "other-7", "x-client-request-id": "shared-id-1"}]
    for hs in cases:
        mock.reset()
        answers = [send(gw, hs), send(gw, hs)]
        recs = mock.wait_requests(2)
        ids = [header_values(rec, "x-request-id") for rec in recs]
        assert all(len(v) == 1 and HEX32.match(v[0]) for v in ids), "backend ids %s for %s" % (ids, hs)
        assert ids[0] != ids[1], "two requests carried the same id %s to the backend (%s)" % (ids, hs)
        for rec, a in zip(recs, answers):
            assert "shared-id-1" not in all_header_text(rec) and "other-7" not in all_header_text(rec), (
                "the client's id reached the backend (%s): %s" % (hs, rec["headers"]))
            assert header_values(rec, "x-client-request-id") == [], rec["headers"]
            assert a.header_all("x-request-id") == header_values(rec, "x-request-id"), (
                "the client's x-request-id %s is not the one the backend got %s" % (
                    a.header_all("x-request-id"), header_values(rec, "x-request-id")))
            assert a.header_all("x-client-request-id") == ["shared-id-1"], a.describe()


def _xorshift_next(out):
    """xorshift64* (the generator the ids came from): the output after `out`."""
    m = (1 << 64) - 1
    c = 0x2545F4914F6CDD1D
    x = (out * pow(c, -1, 1 << 64)) & m
    x ^= x >> 12
    x ^= (x << 25) & m
    x ^= x >> 27
    return (x * c) & m


def _halves(rid):
    """The two 64-bit draws an id of the old make_id was printed from (low nibble first)."""
    a = sum(int(rid[i], 16) << (4 * i) for i in range(16))
    b = sum(int(rid[16 + i], 16) << (4 * i) for i in range(16))
    return a, b


def test_next_id_cannot_be_computed_from_the_last():
    """A tenant who sees its own id must not be able to compute the next request's (which may be
    another tenant's): with the old generator (xorshift64*, two draws per id) the next id follows
    from the last one. 20 consecutive pairs, none predicted; all ids distinct."""
    mock, gw = mock_gw()
    ids = [send(gw).header("x-request-id") for _ in range(21)]
    assert all(HEX32.match(i) for i in ids), ids
    assert len(set(ids)) == len(ids), ids
    predicted = 0
    for prev, nxt in zip(ids, ids[1:]):
        _, b = _halves(prev)
        a2, b2 = _halves(nxt)
        if _xorshift_next(b) == a2 or _xorshift_next(_xorshift_next(b)) == a2:
            predicted += 1
    assert predicted == 0, "%d of 20 ids were computed from the one before" % predicted


def test_client_id_echoed_to_its_client_only_and_logged_apart():
    """The client's id comes back to that client only (not on another client's answer, also on
    the gateway's own errors), as x-client-request-id; x-request-id is the gateway's. The access
    log has the gateway's id as request_id and the client's as client_request_id (null when it
    sent none, or an unacceptable one: too long, not a token)."""
    mock, gw = mock_gw()
    a = send(gw, {"x-request-id": "client-a-1"})
    b = send(gw)
    nf = get(gw.port, "/nope", headers={"x-client-request-id": "client-c-3"})
    bad_json = post_json(gw.port, "/v1/chat/completions", "not json", headers={"x-request-id": "client-d-4"})
    long_id = "L" * 129
    e = send(gw, {"x-request-id": long_id})
    f = send(gw, {"x-request-id": 'has "quotes"'})
    assert a.header_all("x-client-request-id") == ["client-a-1"], a.describe()
    assert b.header_all("x-client-request-id") == [], b.describe()
    assert_error(nf, 404, "not_found")
    assert nf.header_all("x-client-request-id") == ["client-c-3"], nf.describe()
    assert_error(bad_json, 400)
    assert bad_json.header_all("x-client-request-id") == ["client-d-4"], bad_json.describe()
    for r in (e, f):
        assert r.header_all("x-client-request-id") == [], r.describe()
    for r in (a, b, nf, bad_json, e, f):
        assert HEX32.match(r.header("x-request-id") or ""), r.describe()
    lines = access_lines(gw, 6)
    by_id = {ln["request_id"]: ln for ln in lines}
    want = [(a, "client-a-1"), (b, None), (nf, "client-c-3"), (bad_json, "client-d-4"), (e, None), (f, None)]
    for r, cid in want:
        ln = by_id.get(r.header("x-request-id"))
        assert ln is not None, "no access line with request_id %s: %s" % (r.header("x-request-id"), lines)
        assert ln["client_request_id"] == cid, "client_request_id %r, expected %r: %s" % (
            ln["client_request_id"], cid, ln)
        assert list(ln).index("client_request_id") == list(ln).index("request_id") + 1, list(ln)
    assert long_id not in json.dumps(lines), "an unacceptable client id was logged"


def _ids_script(req, fake):
    return [json_answer().replace(b"\r\n\r\n", b"\r\nX-Client-Request-Id: from-backend\r\n"
                                  b"X-Request-Id: backend-id\r\n\r\n", 1)]


def test_backend_cannot_set_the_ids_the_client_sees():
    """A backend's own x-request-id and x-client-request-id never reach the client: it sees the
    gateway's id and its own (or none)."""
    fake = RawBackend(_ids_script)
    gw = Gateway(gateway_config(pools=[pool("p1", ["m1"], [backend(fake.port)])]))
    for hs, want in (({"x-client-request-id": "mine-1"}, ["mine-1"]), ({}, [])):
        r = send(gw, hs)
        assert r.header_all("x-client-request-id") == want, r.describe()
        assert len(r.header_all("x-request-id")) == 1 and HEX32.match(r.header("x-request-id")), r.describe()
        assert fake.requests()[-1].header("x-request-id") == r.header("x-request-id")


# --------------------------------------------------------------------------- encodings


def test_accept_encoding_is_identity_at_the_backend():
    """Accept-Encoding from the client (gzip, br; or several lines; or none) never reaches the
    backend: it gets exactly one "accept-encoding: identity". TE is hop-by-hop: not forwarded."""
    mock, gw = mock_gw()
    for hs in ([("Accept-Encoding", "gzip, br")], [("accept-encoding", "gzip"), ("Accept-Encoding", "zstd")],
               [], [("TE", "trailers, gzip")]):
        mock.reset()
        body = json.dumps(chat("m1")).encode()
        with Conn(gw.port) as c:
            c.send(http_request("POST", "/v1/chat/completions", body,
                                [("Content-Type", "application/json")] + hs))
            r = c.read_response()
        assert r.status == 200, r.describe()
        rec = mock.wait_requests(1)[0]
        assert header_values(rec, "accept-encoding") == ["identity"], (hs, rec["headers"])
        assert header_values(rec, "te") == [], rec["headers"]


ENCODED = [
    [("Content-Encoding", "gzip")],
    [("Content-Encoding", "br")],
    [("content-encoding", "deflate")],
    [("Content-Encoding", "GZIP")],
    [("Content-Encoding", "identity, gzip")],
    [("Content-Encoding", "identity"), ("Content-Encoding", "zstd")],
    [("Content-Encoding", "x-custom")],
    [("Content-Encoding", "gzip"), ("Connection", "content-encoding")],
]


def _body_refused(gw, mock, hs, how):
    import gzip
    body = gzip.compress(json.dumps(chat("m1")).encode())
    mock.reset()
    with Conn(gw.port) as c:
        if how == "expect":
            c.send(http_request("POST", "/v1/chat/completions", b"",
                                [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                                 ("Expect", "100-continue")] + hs))
            r = c.read_response(timeout=5)
            assert not r.informational, "100 Continue for a body that will be refused: %s" % r.describe()
        elif how == "chunked":
            c.send(http_request("POST", "/v1/chat/completions", chunked(body, [7]),
                                [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")] + hs))
            r = c.read_response(timeout=5)
        else:
            c.send(http_request("POST", "/v1/chat/completions", body,
                                [("Content-Type", "application/json")] + hs))
            r = c.read_response(timeout=5)
        assert_error(r, 415, "unsupported_content_encoding")
        assert r.has_token("connection", "close"), r.describe()
        assert c.wait_closed(3), "the connection stays open after the unread body"
    time.sleep(0.1)
    assert mock.api_requests() == [], "a coded body reached the backend"


def test_content_encoded_request_body_is_refused_before_it_is_read():
    """Every request whose Content-Encoding is not identity gets 415 unsupported_content_encoding
    before its body is read: no 100 Continue, nothing forwarded, the connection closed. A
    Connection header naming Content-Encoding does not hide it."""
    mock, gw = mock_gw()
    gwtest.check_all([(i, how) for i in range(len(ENCODED)) for how in ("plain", "expect", "chunked")],
                     lambda case: _body_refused(gw, mock, ENCODED[case[0]], case[1]))


def test_identity_content_encoding_is_accepted_and_not_forwarded():
    mock, gw = mock_gw()
    for v in ("identity", "Identity", " identity , identity "):
        mock.reset()
        body = json.dumps(chat("m1")).encode()
        with Conn(gw.port) as c:
            c.send(http_request("POST", "/v1/chat/completions", body,
                                [("Content-Type", "application/json"), ("Content-Encoding", v)]))
            r = c.read_response()
        assert r.status == 200, (v, r.describe())
        rec = mock.wait_requests(1)[0]
        assert header_values(rec, "content-encoding") == [], rec["headers"]


def _coded_script(req, fake):
    coding = req.header("x-coding")
    if req.header("x-kind") == "sse":
        head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
                + (b"Content-Encoding: %s\r\n" % coding.encode() if coding else b"") + b"\r\n")
        return [head + chunk(TOKEN_EVENT) + chunk(DONE_EVENT) + SSE_END]
    ans = json_answer()
    if coding:
        ans = ans.replace(b"\r\n\r\n", b"\r\nContent-Encoding: %s\r\n\r\n" % coding.encode(), 1)
    return [ans]


def test_coded_backend_answer_is_502():
    """A backend answer with a content coding (JSON or a stream) cannot be read for usage nor
    framed as events: the client gets 502 upstream_error. identity passes."""
    fake = RawBackend(_coded_script)
    gw = Gateway(gateway_config(pools=[pool("p1", ["m1"], [backend(fake.port)])]))

    def one(case):
        coding, kind = case
        body = chat("m1", stream=(kind == "sse"))
        r = post_json(gw.port, "/v1/chat/completions", body, headers={"x-coding": coding, "x-kind": kind})
        if coding in ("", "identity"):
            assert r.status == 200, r.describe()
        else:
            assert_error(r, 502, "upstream_error")
    gwtest.check_all([(c, k) for c in ("gzip", "br", "identity, gzip", "", "identity") for k in ("json", "sse")], one)


# --------------------------------------------------------------------------- forwarded headers


def _address_request(gw, extra=()):
    hs = [(h, addr_value(i)) for i, h in enumerate(ADDRESS_HEADERS)] + list(extra)
    body = json.dumps(chat("m1")).encode()
    with Conn(gw.port) as c:
        c.send(http_request("POST", "/v1/chat/completions", body, [("Content-Type", "application/json")] + hs))
        r = c.read_response()
    assert r.status == 200, r.describe()


def _no_address_reached(mock, rec_names=None):
    rec = mock.wait_requests(1)[0]
    text = all_header_text(rec)
    leaked = [h for h in ADDRESS_HEADERS if header_values(rec, h)]
    assert not leaked, "client-address headers reached the backend: %s" % leaked
    vals = [addr_value(i) for i in range(len(ADDRESS_HEADERS)) if addr_value(i) in text]
    assert not vals, "client addresses reached the backend: %s in %s" % (vals, rec["headers"])
    return rec


def test_every_client_address_header_is_stripped():
    """Every client-address header of the default list, sent at once: none reaches the backend,
    with the default config, with a custom strip list, and with forward_client_ip (then only the
    gateway's own X-Forwarded-For, the connection's address)."""
    for privacy in (None, {"strip_request_headers": ["x-custom"]},
                    {"strip_request_headers": [], "forward_client_ip": True}):
        mock, gw = mock_gw(**({"privacy": privacy} if privacy else {}))
        _address_request(gw)
        rec = _no_address_reached(mock) if not (privacy or {}).get("forward_client_ip") else mock.wait_requests(1)[0]
        if (privacy or {}).get("forward_client_ip"):
            assert header_values(rec, "x-forwarded-for") == ["127.0.0.1"], rec["headers"]
            others = [h for h in ADDRESS_HEADERS if h != "x-forwarded-for" and header_values(rec, h)]
            assert not others, others
            assert not any(addr_value(i) in all_header_text(rec) for i in range(len(ADDRESS_HEADERS))), rec["headers"]


DEFAULT_STRIPPED = {"cookie": "session=abc", "openai-organization": "org-1", "openai-project": "proj-1",
                    "x-session-id": "sess-1"}


def test_configured_strip_list_adds_to_the_default():
    """strip_request_headers ["x-custom", "x-team-*"] strips those AND the defaults (cookie,
    openai-organization, openai-project, x-session-id); other headers pass."""
    mock, gw = mock_gw(privacy={"strip_request_headers": ["x-custom", "x-team-*"]})
    hs = dict(DEFAULT_STRIPPED, **{"x-custom": "1", "x-team-name": "t", "x-kept": "yes"})
    send(gw, hs)
    rec = mock.wait_requests(1)[0]
    names = header_names(rec)
    leaked = [h for h in list(DEFAULT_STRIPPED) + ["x-custom", "x-team-name"] if h in names]
    assert not leaked, "forwarded although stripped: %s" % leaked
    assert header_values(rec, "x-kept") == ["yes"], rec["headers"]


def test_session_id_steers_affinity_and_is_not_forwarded():
    """x-session-id keeps a session on one backend (read before the plugins) and never reaches
    it by default; forward_request_headers ["x-session-id"] forwards it (and openai-project)."""
    ma, mb = Mock(), Mock()
    gw = Gateway(gateway_config(pools=[pool("p1", ["m1"], [backend(ma.port), backend(mb.port)],
                                            affinity="session")]))
    for s in range(6):
        before = len(ma.api_requests())
        for _ in range(3):
            send(gw, {"x-session-id": "sess-%d" % s})
        wait_for(lambda: len(ma.api_requests()) + len(mb.api_requests()) == 3 * (s + 1), 5, what="requests")
        moved = len(ma.api_requests()) - before
        assert moved in (0, 3), "session %d split across the backends (%d of 3 on one)" % (s, moved)
    for m in (ma, mb):
        for rec in m.api_requests():
            assert header_values(rec, "x-session-id") == [], rec["headers"]
    mock, gw2 = mock_gw(privacy={"forward_request_headers": ["x-session-id", "openai-project"]})
    send(gw2, dict(DEFAULT_STRIPPED))
    rec = mock.wait_requests(1)[0]
    assert header_values(rec, "x-session-id") == ["sess-1"], rec["headers"]
    assert header_values(rec, "openai-project") == ["proj-1"], rec["headers"]
    assert header_values(rec, "cookie") == [] and header_values(rec, "openai-organization") == [], rec["headers"]


def test_forward_request_headers_cannot_name_an_address_header():
    """An address header (or one a prefix entry of the address list covers) in
    forward_request_headers is a config error naming the entry; a '*' entry too."""
    for bad in ("x-forwarded-for", "X-Real-IP", "x-forwarded-proto", "cf-ipcountry", "x-session-*"):
        cfg = gateway_config([1], privacy={"forward_request_headers": ["x-ok", bad]})
        d = gwtest.tempdir()
        p = os.path.join(d, "gw.json")
        with open(p, "w") as f:
            json.dump(cfg, f)
        rc, out, err = gwtest.run_gotthard(["-t", "-c", p], timeout=20)
        assert rc != 0, "accepted forward_request_headers %r" % bad
        assert "$.privacy.forward_request_headers[1]" in out + err, out + err

def test_a_plugin_cannot_set_the_headers_the_gateway_owns():
    """A plugin's gw_req_set_upstream_header / gw_req_add_response_header (the example plugin,
    configured to stamp a header both ways) cannot add a second framing, host, credential, id or
    coding line to what the backend gets, nor to the client's answer: each comes once, the
    gateway's."""
    def one(name):
        mock = Mock()
        gw = Gateway(gateway_config([mock.port], plugins=[{"path": gwtest.example_plugin(),
                                                            "config": {"header": name, "value": "7"}}]))
        r = post_json(gw.port, "/v1/chat/completions", chat("m1"))
        assert r.status == 200, r.describe()
        rec = mock.wait_requests(1)[0]
        body_len = str(len(rec["body"].encode()))
        want = {"content-length": [body_len], "x-request-id": [r.header("x-request-id")],
                "accept-encoding": ["identity"], "host": ["127.0.0.1:%d" % mock.port],
                "transfer-encoding": [], "x-client-request-id": [], "authorization": [],
                "content-encoding": [], "connection": []}
        got = {k: header_values(rec, k) for k in want}
        assert got == want, "backend got %s, expected %s" % (got, want)
        # nor to the client's answer (the plugin stamps it too)
        assert "7" not in r.header_all(name), r.describe()
        assert r.header_all("content-length") == [str(len(r.body))], r.describe()
    gwtest.check_all(["content-length", "x-request-id", "accept-encoding", "Host", "transfer-encoding",
                      "x-client-request-id", "authorization", "content-encoding", "connection"], one)


# The location a CDN or platform derives from the client's address, the client-address headers
# without their usual x- (Cluster-Client-IP), and a client-side proxy's Via (it names the client's
# network): each vendor's documented origin headers (docs/privacy.md lists the sources).
LOCATION_HEADERS = {
    "cf-ipcountry": "CH", "cf-ipcity": "Zurich", "cf-ipcontinent": "EU", "cf-iplatitude": "47.37",
    "cf-iplongitude": "8.54", "cf-postal-code": "8001", "cf-region": "Zurich", "cf-region-code": "ZH",
    "cf-metro-code": "807", "cf-timezone": "Europe/Zurich",
    "cloudfront-viewer-city": "Zurich", "cloudfront-viewer-postal-code": "8001",
    "cloudfront-viewer-latitude": "47.37", "cloudfront-viewer-time-zone": "Europe/Zurich",
    "fastly-geo-city": "zurich", "fastly-geoip-postal-code": "8001", "client-geo-latlng": "47.37,8.54",
    "visitor-ip-city": "Zurich", "pantheon-geo": "country_code=CH;city=Zurich",
    "x-akamai-edgescape": "georegion=123,country_code=CH,city=ZURICH,lat=47.37,long=8.54",
    "x-nf-geo": "eyJjaXR5IjoiWnVyaWNoIn0=", "x-vercel-ip-city": "Zurich",
    "x-vercel-ip-postal-code": "8001", "x-vercel-ip-latitude": "47.37", "x-vercel-ip-timezone": "Europe/Zurich",
    "x-appengine-city": "zurich", "x-appengine-region": "zh", "x-appengine-citylatlong": "47.37,8.54",
    "x-client-geo-location": "CH,Zurich", "x-client-region": "CH", "x-client-region-subdivision": "CHZH",
    "x-client-city": "Zurich", "x-client-city-lat-long": "47.37,8.54",
    "cdn-requestcountrycode": "CH", "x-sucuri-country": "CH",
    "cluster-client-ip": "198.51.100.6", "via": "1.1 10.1.2.3:3128 (squid)",
}


def test_cdn_location_headers_are_stripped_and_cannot_be_forwarded():
    """Every location header of LOCATION_HEADERS (and Cluster-Client-IP, Via), sent at once with a
    custom strip list, and with forward_client_ip: none reaches the backend (name or value); each
    named in forward_request_headers is a config error naming the entry."""
    for privacy in (None, {"strip_request_headers": ["x-custom"], "forward_client_ip": True}):
        mock, gw = mock_gw(**({"privacy": privacy} if privacy else {}))
        send(gw, dict(LOCATION_HEADERS, **{"x-kept": "yes"}))
        rec = mock.wait_requests(1)[0]
        leaked = [h for h in LOCATION_HEADERS if header_values(rec, h)]
        assert not leaked, "location headers reached the backend: %s" % leaked
        text = all_header_text(rec)
        vals = [v for v in LOCATION_HEADERS.values() if len(v) >= 5 and v in text]
        assert not vals, "locations reached the backend: %s in %s" % (vals, rec["headers"])
        assert header_values(rec, "x-kept") == ["yes"], rec["headers"]
    _assert_forward_refused(list(LOCATION_HEADERS))


def _assert_forward_refused(names):
    d = gwtest.tempdir()

    def one(bad):
        cfg = gateway_config([1], privacy={"forward_request_headers": ["x-ok", bad]})
        p = os.path.join(d, "gw-%s.json" % re.sub(r"[^a-z0-9-]", "_", bad.lower()))
        with open(p, "w") as f:
            json.dump(cfg, f)
        rc, out, err = gwtest.run_gotthard(["-t", "-c", p], timeout=20)
        assert rc != 0, "accepted forward_request_headers %r" % bad
        assert "$.privacy.forward_request_headers[1]" in out + err, out + err
    gwtest.check_all(names, one)


# Spellings with '_': WSGI and CGI servers read X_Forwarded_For as X-Forwarded-For
# (HTTP_X_FORWARDED_FOR). Any header whose name has a '_' is dropped, as nginx does.
UNDERSCORE_HEADERS = {
    "X_Forwarded_For": "198.51.100.4", "X_Real_IP": "198.51.100.5", "True_Client_IP": "198.51.100.7",
    "CF_Connecting_IP": "198.51.100.8", "X-Real_IP": "198.51.100.9", "Forwarded_For": "198.51.100.10",
    "X_Cluster_Client_IP": "198.51.100.11", "CF_IPCountry": "CH", "x_custom": "custom-value",
    "_x": "lead", "x_": "trail",
}


def test_underscore_headers_are_dropped():
    """Every header whose name contains '_' (the address headers spelt with '_', and any other) is
    dropped before the request goes upstream, with the default config and with
    forward_client_ip (then only the gateway's X-Forwarded-For, the connection's address); a
    name with '_' in forward_request_headers is a config error. Headers with '-' still pass."""
    for privacy in (None, {"forward_client_ip": True}):
        mock, gw = mock_gw(**({"privacy": privacy} if privacy else {}))
        send(gw, dict(UNDERSCORE_HEADERS, **{"x-kept": "yes"}))
        rec = mock.wait_requests(1)[0]
        with_underscore = [k for k, _ in rec["headers"] if "_" in k]
        assert not with_underscore, "headers with '_' reached the backend: %s" % with_underscore
        text = all_header_text(rec)
        vals = [v for v in UNDERSCORE_HEADERS.values() if v in text]
        assert not vals, "values reached the backend: %s in %s" % (vals, rec["headers"])
        assert header_values(rec, "x-kept") == ["yes"], rec["headers"]
        if privacy:
            assert header_values(rec, "x-forwarded-for") == ["127.0.0.1"], rec["headers"]
    _assert_forward_refused(["x_custom", "X_Session_Id"])


def test_forward_request_headers_cannot_name_what_the_core_never_forwards():
    """forward_request_headers naming a header the gateway writes itself or never lets go
    (credentials, the request ids, framing, hop-by-hop, the codings) is a config error naming the
    entry, instead of a setting that silently does nothing."""
    _assert_forward_refused(["authorization", "Api-Key", "x-request-id", "x-client-request-id", "host",
                             "content-length", "transfer-encoding", "connection", "accept-encoding",
                             "content-encoding", "proxy-authorization", "te", "upgrade", "expect"])
    # what it may name still loads
    cfg = gateway_config([1], privacy={"forward_request_headers": ["x-session-id", "cookie", "content-type"]})
    p = os.path.join(gwtest.tempdir(), "ok.json")
    with open(p, "w") as f:
        json.dump(cfg, f)
    rc, out, err = gwtest.run_gotthard(["-t", "-c", p], timeout=20)
    assert rc == 0, out + err


if __name__ == "__main__":
    gwtest.run(globals())
