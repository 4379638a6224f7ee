"""TLS termination on a listener with "tls": chat completions and streams over TLS (verified against
the self-signed certificate), TLS 1.2+ only, plain HTTP on the TLS port harmless, bad TLS config
reported by `gotthard -t` with its JSON path."""

import http.client
import json
import os
import socket
import ssl
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from gwtest import Mock, Gateway, Shared, gateway_config, chat  # noqa: E402
import streamutil as su  # noqa: E402

CERT = {}


def _env():
    cert, key = gwtest.self_signed_cert()
    CERT["cert"], CERT["key"] = cert, key
    mock = Mock()
    cfg = gateway_config([mock.port], timeouts={"drain_ms": 2000})
    cfg["listen"].append({"address": "127.0.0.1:%d" % gwtest.free_port(),
                          "tls": {"cert": "cert.pem", "key": "key.pem"}})
    gw = Gateway(cfg, files={"cert.pem": cert, "key.pem": key})
    return mock, gw


ENV = Shared(_env)


def _ctx(**kw):
    return su.tls_client_context(CERT["cert"], **kw)


def _https(port, method, path, body=None, headers=None, ctx=None, timeout=10):
    c = http.client.HTTPSConnection("localhost", port, timeout=timeout, context=ctx or _ctx())
    # connect to 127.0.0.1 but verify the name localhost
    c._create_connection = lambda addr, timeout=None, source_address=None: socket.create_connection(
        (gwtest.HOST, port), timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        ver = c.sock.version()  # before the answer: one with connection: close takes the socket
        r = c.getresponse()
        return r.status, dict((k.lower(), v) for k, v in r.getheaders()), r.read(), ver
    finally:
        c.close()


def test_tls_chat_completion_verified():
    mock, gw = ENV.get()
    assert gw.tls_port, "no TLS listener"
    st, hs, body, ver = _https(gw.tls_port, "POST", "/v1/chat/completions", json.dumps(chat("m1")),
                               {"Content-Type": "application/json"})
    assert st == 200, (st, hs, body[:300])
    j = json.loads(body)
    assert j["object"] == "chat.completion" and j["choices"][0]["message"]["content"], j
    assert hs.get("x-request-id"), hs
    assert ver in ("TLSv1.2", "TLSv1.3"), ver


def test_tls_models_and_errors():
    mock, gw = ENV.get()
    st, hs, body, _ = _https(gw.tls_port, "GET", "/v1/models")
    assert st == 200 and json.loads(body)["object"] == "list", (st, body[:300])
    st, hs, body, _ = _https(gw.tls_port, "POST", "/v1/chat/completions", json.dumps(chat("nope")),
                             {"Content-Type": "application/json"})
    assert st == 404 and json.loads(body)["error"]["code"] == "model_not_found", (st, body[:300])


def test_tls_stream():
    mock, gw = ENV.get()
    res = su.stream(gw.tls_port, chat("m1", stream=True), {"x-mock-tokens": "12", "x-mock-token-ms": "20"},
                    tls=True, ssl_context=_ctx())
    su.assert_clean_stream(res, 12, "TLS stream")


def test_tls_stream_unbuffered():
    mock, gw = ENV.get()
    res = su.stream(gw.tls_port, chat("m1", stream=True), {"x-mock-tokens": "5", "x-mock-token-ms": "250"},
                    tls=True, ssl_context=_ctx())
    su.assert_clean_stream(res, 5, "TLS stream")
    assert res.times[0] - res.t0 < 0.6, "first TLS event after %.2fs: buffered" % (res.times[0] - res.t0)


def test_tls_keepalive_two_requests_one_connection():
    mock, gw = ENV.get()
    c = gwtest.Conn(gw.tls_port, timeout=5, tls=True, ssl_context=_ctx())
    try:
        for i in range(3):
            c.send(gwtest.http_request("POST", "/v1/chat/completions", chat("m1"),
                                       [("Content-Type", "application/json")]))
            r = c.read_response(5)
            assert r.status == 200, "TLS request %d on one connection: %s" % (i, r.describe())
    finally:
        c.close()


def test_tls_client_disconnect_cancels_backend():
    mock, gw = ENV.get()
    mock.reset()
    c = su.send_stream_request(gw.tls_port, chat("m1", stream=True),
                               {"x-mock-tokens": "200", "x-mock-token-ms": "50"}, tls=True, ssl_context=_ctx())
    try:
        res = su.read_stream(c, timeout=10, stop_after=2)
        assert len(res.events) == 2, res.describe()
    finally:
        c.close()
    t0 = time.monotonic()
    rec = gwtest.wait_for(lambda: (mock.api_requests() or [{}])[-1].get("client_closed") and mock.api_requests()[-1],
                          timeout=3, interval=0.02, what="client_closed at the mock after a TLS client left")
    assert time.monotonic() - t0 <= 1.5, "backend closed %.2fs after the TLS client left" % (time.monotonic() - t0)
    assert rec["tokens_sent"] < 60, rec


def test_tls12_accepted():
    mock, gw = ENV.get()
    ctx = _ctx(maximum=ssl.TLSVersion.TLSv1_2)
    st, _, _, ver = _https(gw.tls_port, "GET", "/v1/models", ctx=ctx)
    assert st == 200 and ver == "TLSv1.2", (st, ver)


def test_tls11_refused():
    mock, gw = ENV.get()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
            ctx.minimum_version = ssl.TLSVersion.TLSv1_1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    except (ValueError, ssl.SSLError) as ex:
        gwtest.skip("local OpenSSL will not let a client try TLS 1.1: %s" % ex)
    s = socket.create_connection((gwtest.HOST, gw.tls_port), timeout=5)
    try:
        try:
            ts = ctx.wrap_socket(s, server_hostname="localhost")
        except ssl.SSLError as ex:
            msg = str(ex).lower()
            if "no protocols available" in msg or "no ciphers available" in msg:
                gwtest.skip("local OpenSSL cannot offer TLS 1.1: %s" % ex)
            return   # handshake refused: as it must be
        except (ConnectionResetError, BrokenPipeError, socket.timeout, OSError):
            return   # closed or reset during the handshake: refused
        v = ts.version()
        ts.close()
        raise AssertionError("TLS 1.1 handshake accepted (negotiated %s); the gateway must require TLS 1.2+" % v)
    finally:
        s.close()


def test_plain_http_on_tls_port_is_harmless():
    mock, gw = ENV.get()
    res = gwtest.raw(gw.tls_port, gwtest.http_request("GET", "/v1/models"), timeout=3)
    assert res.closed, "plain HTTP on the TLS port: connection left open for 3 s (got %r)" % bytes(res[:200])
    assert b"data:" not in res and b'"object":"list"' not in res, "plain HTTP answered with content: %r" % bytes(res[:300])
    # junk and a half-open handshake too
    gwtest.raw(gw.tls_port, b"\x16\x03\x01\x00\x05hello", timeout=1)
    gwtest.raw(gw.tls_port, b"\x00" * 1000, timeout=1)
    assert gw.alive(), "gateway died after plain HTTP on the TLS port"
    st, _, body, _ = _https(gw.tls_port, "GET", "/v1/models")
    assert st == 200, (st, body[:200])
    r = gwtest.get(gw.port, "/v1/models")
    assert r.status == 200, r.describe()


def test_tls_client_that_never_handshakes_is_timed_out_or_harmless():
    """A TCP connection to the TLS port that never sends a ClientHello does not block others."""
    mock, gw = ENV.get()
    idle = socket.create_connection((gwtest.HOST, gw.tls_port), timeout=5)
    try:
        st, _, _, _ = _https(gw.tls_port, "GET", "/v1/models")
        assert st == 200
    finally:
        idle.close()


def test_tls_config_errors_have_json_path():
    import tempfile
    tmp = tempfile.mkdtemp(prefix="gwtest-tls-")
    cfg = gateway_config([1])
    cfg["listen"] = [{"address": "127.0.0.1:%d" % gwtest.free_port(),
                      "tls": {"cert": os.path.join(tmp, "missing-cert.pem"), "key": os.path.join(tmp, "missing-key.pem")}}]
    p = os.path.join(tmp, "g.json")
    with open(p, "w") as f:
        json.dump(cfg, f)
    rc, out, err = gwtest.run_gotthard(["-t", "-c", p])
    text = out + err
    assert rc == 1, "gotthard -t with a missing TLS cert exited %d: %s" % (rc, text[-500:])
    assert "$.listen[0].tls" in text, "error does not name $.listen[0].tls...: %s" % text[-500:]


if __name__ == "__main__":
    gwtest.run(globals())
