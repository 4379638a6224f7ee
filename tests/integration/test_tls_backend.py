"""TLS to https backends: the certificate chain and the host name are verified; a backend whose
certificate does not verify is never sent the request."""
import http.server
import json
import os
import ssl
import tempfile
import threading

import gwtest
from gwtest import Gateway, gateway_config, pool


class _Backend(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen = []

    def do_POST(self):
        n = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(n)
        _Backend.seen.append((self.path, dict(self.headers), body))
        out = json.dumps({"id": "tls-1", "object": "chat.completion", "model": "m1",
                          "choices": [{"index": 0, "message": {"role": "assistant", "content": "over tls"},
                                       "finish_reason": "stop"}],
                          "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


def _tls_backend(cert, key):
    d = tempfile.mkdtemp(prefix="gwtest-tlsbe-")
    cp, kp = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    with open(cp, "wb") as f:
        f.write(cert)
    with open(kp, "wb") as f:
        f.write(key)
    srv = http.server.ThreadingHTTPServer((gwtest.HOST, 0), _Backend)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cp, kp)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def _config(port, host, ca_name):
    b = {"url": "https://%s:%d" % (host, port), "country": "CH", "ca_file": ca_name}
    return gateway_config(pools=[pool("p1", ["m1"], [b])])


def test_verified_https_backend():
    cert, key = gwtest.self_signed_cert()
    srv = _tls_backend(cert, key)
    _Backend.seen.clear()
    try:
        gw = Gateway(_config(srv.server_address[1], "localhost", "ca.pem"), files={"ca.pem": cert})
        r = gwtest.post_json(gw.port, "/v1/chat/completions", {"model": "m1", "messages": []})
        assert r.status == 200, r.describe()
        assert r.json()["choices"][0]["message"]["content"] == "over tls", r.describe()
        assert len(_Backend.seen) == 1 and _Backend.seen[0][0] == "/v1/chat/completions"
        # by IP address too (the certificate names 127.0.0.1)
        gw2 = Gateway(_config(srv.server_address[1], "127.0.0.1", "ca.pem"), files={"ca.pem": cert})
        r = gwtest.post_json(gw2.port, "/v1/chat/completions", {"model": "m1", "messages": []})
        assert r.status == 200, r.describe()
    finally:
        srv.shutdown()


def test_unverified_https_backend_is_refused():
    cert, key = gwtest.self_signed_cert()
    other, _ = gwtest.self_signed_cert()  # a CA that did not sign the backend's certificate
    srv = _tls_backend(cert, key)
    _Backend.seen.clear()
    try:
        gw = Gateway(_config(srv.server_address[1], "localhost", "other.pem"), files={"other.pem": other})
        r = gwtest.post_json(gw.port, "/v1/chat/completions", {"model": "m1", "messages": []})
        assert r.status == 502 and r.error_code() == "upstream_error", r.describe()
        assert not _Backend.seen, "the request reached a backend whose certificate did not verify"
    finally:
        srv.shutdown()


def test_https_backend_name_mismatch_is_refused():
    cert, key = gwtest.self_signed_cert("elsewhere.example", san="DNS:elsewhere.example")
    srv = _tls_backend(cert, key)
    _Backend.seen.clear()
    try:
        # the chain verifies (the CA is the certificate itself), the host name does not
        gw = Gateway(_config(srv.server_address[1], "localhost", "ca.pem"), files={"ca.pem": cert})
        r = gwtest.post_json(gw.port, "/v1/chat/completions", {"model": "m1", "messages": []})
        assert r.status == 502 and r.error_code() == "upstream_error", r.describe()
        assert not _Backend.seen, "the request reached a backend whose certificate names another host"
    finally:
        srv.shutdown()


if __name__ == "__main__":
    gwtest.run(globals())
