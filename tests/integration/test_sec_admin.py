"""The admin listener and the operator tools after an independent review (issues 14/22 follow-up).

- GET /usage against a Redis that trickles its answers: one deadline for the whole report
  (503 quota_store_timeout), /healthz answered meanwhile, a failed report not asked again at once.
- admin connections: at most 64 at once (more are closed at accept), 5 s from accept to a whole
  request however the head trickles, an 8 KB head; the public API unharmed.
- config strings: invalid UTF-8 (Latin-1, overlong, surrogates), control characters and \\u0000
  refuse the config, at their path, in `gotthard -t` and on reload.
- gotthard-keygen: an id it makes from a long tenant id stays within 128 and can be revoked.
- gotthard-usage --redis: a key SCAN returns twice counts once; the round cap is an error; a
  tenant id from Redis outside [A-Za-z0-9._-]{1,128} is refused, the table prints only
  [A-Za-z0-9._-] (the rest %XX, names from --admin too).
- admin Host: HTTP/1.1 without exactly one valid Host, or a header name with a space, is 400.
"""

import http.server
import json
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from gwtest import Mock, Gateway, gateway_config, chat, post_json, get, run_gotthard  # noqa: E402
from redisutil import Redis  # noqa: E402
from test_sec_tools import FakeRedis, run_tool, bulk, today, no_crash  # noqa: E402

HOST = "127.0.0.1"


def raw(port, data):
    """Sends data on a fresh connection; returns (status or None, the bytes answered)."""
    out = bytes(gwtest.raw(port, data, timeout=5.0))
    status = int(out.split(b" ", 2)[1]) if out.startswith(b"HTTP/1.") else None
    return status, out


# --------------------------------------------------------------------------- F1 /usage deadline


class TrickleSock:
    """A socket whose sendall sends one byte every 30 ms while owner.trickle is set."""

    def __init__(self, sock, owner):
        self.sock, self.owner = sock, owner

    def sendall(self, data):
        if not self.owner.trickle:
            return self.sock.sendall(data)
        for i in range(len(data)):
            self.sock.sendall(data[i:i + 1])
            time.sleep(0.03)

    def __getattr__(self, name):
        return getattr(self.sock, name)


class TrickleRedis(FakeRedis):
    def __init__(self, answer):
        self.trickle = False
        FakeRedis.__init__(self, answer)

    def _serve(self, c):
        c.settimeout(60)
        FakeRedis._serve(self, TrickleSock(c, self))


def test_usage_deadline_with_a_trickling_redis():
    def answer(argv):
        cmd = argv[0].upper()
        if cmd == b"PING":
            return b"+PONG\r\n"
        if cmd == b"HMGET":
            return b"*3\r\n" + bulk("5") + bulk("7") + b"$-1\r\n"
        return None
    fake = TrickleRedis(answer)
    mock = Mock()
    try:
        cfg = gateway_config([mock.port], redis={"url": fake.url(), "timeout_ms": 100, "on_unavailable": "local"},
                             tenants=[{"id": "acme", "models": ["*"], "limits": {"requests_per_minute": 100}}])
        gw = Gateway(cfg)
        r = get(gw.admin_port, "/usage?days=2", timeout=10)
        assert r.status == 200 and r.json()["days"][0]["tenants"]["acme"]["requests"] == 5, r.describe()
        fake.trickle = True
        res = {}

        def slow():
            t0 = time.time()
            res["r"] = get(gw.admin_port, "/usage?days=40", timeout=60)
            res["t"] = time.time() - t0
        th = threading.Thread(target=slow)
        th.start()
        time.sleep(0.2)
        worst = 0.0
        while th.is_alive() and not res:
            t0 = time.time()
            h = get(gw.admin_port, "/healthz", timeout=30)
            worst = max(worst, time.time() - t0)
            assert h.status == 200, h.describe()
            time.sleep(0.1)
        th.join(60)
        r = res["r"]
        # the deadline is 1 s (4 x 100 ms, at least 1 s); generous margins for a loaded machine
        assert r.status == 503 and r.error_code() == "quota_store_timeout", r.describe()
        assert res["t"] < 4.0, "/usage took %.1f s" % res["t"]
        assert worst < 4.0, "/healthz waited %.1f s" % worst
        # a failed report is not asked again at once: the next answers from memory
        n = len(fake.commands)
        t0 = time.time()
        r = get(gw.admin_port, "/usage?days=40", timeout=30)
        assert r.status == 503 and time.time() - t0 < 0.8, (r.describe(), time.time() - t0)
        assert len(fake.commands) == n, "asked Redis again"
        gw.stop()
    finally:
        fake.close()


# --------------------------------------------------------------------------- F2 admin connections


def test_admin_connections_capped_and_deadlined():
    mock = Mock()
    gw = Gateway(gateway_config([mock.port]))
    socks = []
    try:
        for _ in range(150):
            s = socket.create_connection((HOST, gw.admin_port), timeout=5)
            s.sendall(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            socks.append(s)
        # beyond the cap, connections are closed at once: EOF within a second or two
        closed = 0
        t0 = time.time()
        for s in socks:
            s.settimeout(max(0.05, 3.0 - (time.time() - t0)))
            try:
                if s.recv(1) == b"":
                    closed += 1
            except socket.timeout:
                pass
            except OSError:
                closed += 1
        assert closed >= 150 - 64, "only %d of 150 connections closed" % closed
        r = post_json(gw.port, "/v1/chat/completions", chat("m1"), timeout=10)
        assert r.status == 200, r.describe()
    finally:
        for s in socks:
            s.close()
    # a head trickled a byte every 0.4 s is closed 5 s after accept (evhttp's idle timeout
    # alone would wait for ever)
    s = socket.create_connection((HOST, gw.admin_port), timeout=5)
    t0 = time.time()
    ended = None
    try:
        for ch in b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100:
            s.sendall(bytes([ch]))
            time.sleep(0.4)
            if time.time() - t0 > 12:
                break
    except OSError:
        ended = time.time() - t0
    if ended is None:
        s.settimeout(1)
        try:
            ended = time.time() - t0 if s.recv(1) == b"" else None
        except OSError:
            ended = time.time() - t0
    s.close()
    assert ended is not None and ended < 9, "a trickled head was still open after %.1f s" % (time.time() - t0)
    # the head limit is 8 KB
    status, out = raw(gw.admin_port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 12000 + b"\r\n\r\n")
    assert status != 200, out[:200]
    # and the listener is usable afterwards
    wait = time.time() + 10
    while time.time() < wait:
        try:
            if get(gw.admin_port, "/healthz", timeout=2).status == 200:
                break
        except Exception:
            time.sleep(0.2)
    else:
        raise AssertionError("/healthz not answered after the flood")


# --------------------------------------------------------------------------- F3 config strings


def check_config(raw_json):
    d = gwtest.tempdir()
    path = os.path.join(d, "gw.json")
    with open(path, "wb") as f:
        f.write(raw_json)
    return run_gotthard(["-t", "-c", path])


def test_config_strings_must_be_utf8_without_controls():
    mock_port = gwtest.free_port()
    base = json.dumps(gateway_config([mock_port])).encode()
    assert b'"p1"' in base
    cases = {
        "latin-1": (b'"z\xfcrich"', "$.pools[0].name"),
        "overlong": (b'"p\xc0\xafx"', "$.pools[0].name"),
        "surrogate": (b'"p\xed\xa0\x80x"', "$.pools[0].name"),
        "raw control": (b'"p\x01x"', "$.pools[0].name"),
        "escaped control": (b'"p\\u001bx"', "$.pools[0].name"),
        "escaped NUL": (b'"p\\u0000x"', "$.pools[0].name"),
        "DEL": (b'"p\x7fx"', "$.pools[0].name"),
    }
    for name, (value, where) in cases.items():
        rc, out, err = check_config(base.replace(b'"p1"', value, 1))
        assert rc != 0 and rc != 23, "%s: accepted (exit %d) %r" % (name, rc, err)
        assert where in err and "UTF-8" in err, "%s: %r" % (name, err)
    # a plugin's own config (read by the plugin with cJSON), and a key
    ok = base
    rc, out, err = check_config(ok)
    assert rc == 0, err
    cfg = gateway_config([mock_port], tenants=[{"id": "acme", "models": ["*"],
                                                "limits": {"requests_per_minute": 5}}])
    text = json.dumps(cfg).encode()
    rc, out, err = check_config(text.replace(b'"acme"', b'"ac\\u0000me"'))
    assert rc != 0 and "$.tenants[0].id" in err, err
    rc, out, err = check_config(text.replace(b'"requests_per_minute"', b'"requests\xff"'))
    assert rc != 0 and "$.tenants[0].limits" in err and "\xff" not in err, err
    # valid non-ASCII is fine
    rc, out, err = check_config(base.replace(b'"p1"', '"zürich"'.encode(), 1))
    assert rc == 0, err


def test_reload_refuses_latin1_names():
    mock = Mock()
    cfg = gateway_config([mock.port])
    gw = Gateway(cfg)
    with open(gw.config_path, "wb") as f:
        f.write(json.dumps(cfg).encode().replace(b'"p1"', b'"z\xfcrich"'))
    r = gwtest.request(gw.admin_port, "POST", "/reload")
    assert r.status == 422, r.describe()
    r = get(gw.admin_port, "/metrics")
    r.body.decode("utf-8")  # strict: the scrape stays UTF-8
    assert b"z\xfcrich" not in r.body


# --------------------------------------------------------------------------- F4 keygen ids


def test_keygen_id_from_a_long_tenant_is_revocable():
    tenant = "t" * 124
    rc, out, err = run_tool("gotthard-keygen", "--tenant", tenant)
    assert rc == 0, err
    line = json.loads(out.splitlines()[1])
    assert len(line["id"]) <= 128 and line["id"].startswith("t" * 100), line
    redis = Redis()
    url = "redis://%s:%d/0" % (HOST, redis.port)
    rc, out, err = run_tool("gotthard-keygen", "--redis", url, "--tenant", tenant)
    assert rc == 0, err
    kid = out.splitlines()[1].split(" as ", 1)[1].split(" for ", 1)[0]
    assert len(kid) <= 128, kid
    rc, out, err = run_tool("gotthard-keygen", "--redis", url, "--revoke", kid)
    assert rc == 0 and "revoked" in out, (rc, out, err)
    # a config line the gateway takes
    mock_port = gwtest.free_port()
    rc2, out2, err2 = run_tool("gotthard-keygen", "--tenant", tenant)
    cfg = gateway_config([mock_port], tenants=[{"id": tenant, "models": ["*"],
                                                "api_keys": [json.loads(out2.splitlines()[1])]}])
    rc, out, err = check_config(json.dumps(cfg).encode())
    assert rc == 0, err


# --------------------------------------------------------------------------- F5/F6 gotthard-usage


def scan_fake(pages, hmget=None):
    """SCAN answers pages[cursor] (a dict cursor -> (next cursor, [keys]))."""
    def answer(argv):
        cmd = argv[0].upper()
        if cmd == b"SCAN":
            nxt, keys = pages(argv[1].decode())
            return b"*2\r\n" + bulk(nxt) + b"*%d\r\n" % len(keys) + b"".join(bulk(k) for k in keys)
        if cmd == b"HMGET":
            return hmget or b"*3\r\n" + bulk("1") + bulk("2") + bulk("3")
        return None
    return FakeRedis(answer)


def test_usage_counts_a_key_scan_returns_twice_once():
    key = "gotthard:u:{acme}:" + today()
    fake = scan_fake(lambda c: ("5", [key]) if c == "0" else ("0", [key]))
    try:
        rc, out, err = run_tool("gotthard-usage", "--redis", fake.url(), "--json")
        assert rc == 0, err
        assert out.count('"acme"') == 1, out
        assert json.loads(out)["days"][0]["tenants"]["acme"]["requests"] == 1, out
        rc, out, err = run_tool("gotthard-usage", "--redis", fake.url())
        assert rc == 0 and out.count("acme") == 1, out
    finally:
        fake.close()


def test_usage_round_cap_is_an_error():
    fake = scan_fake(lambda c: ("7", []))
    try:
        rc, out, err = run_tool("gotthard-usage", "--redis", fake.url(), "--json", timeout=300)
        no_crash(rc, err, "endless SCAN")
        assert "gotthard-usage:" in err and "SCAN" in err, err
        assert out == "", out
    finally:
        fake.close()


def test_usage_prints_no_terminal_escapes():
    d = today()
    bad = {"escape": "%1B%5B2Jx", "bell": "a%07", "DEL": "a%7F", "latin-1": "z%FCrich", "space": "a%20b",
           "brace": "a%7Bb", "utf-8": "z%C3%BCrich", "long": "a" * 129}
    for name, tenant in bad.items():
        fake = scan_fake(lambda c: ("0", ["gotthard:u:{%s}:%s" % (tenant, d)]))
        try:
            for fmt in ([], ["--json"]):
                rc, out, err = run_tool("gotthard-usage", "--redis", fake.url(), *fmt)
                no_crash(rc, err, "gotthard-usage, %s" % name)
                assert "\x1b" not in out + err and "\x07" not in out + err, (name, out, err)
                assert "gotthard-usage:" in err, (name, err)
        finally:
            fake.close()
    # names from --admin (another gateway, or anything answering there) are escaped in the table
    doc = {"store": "redis", "error": "\x1b[31mred",
           "days": [{"date": "\x1b]0;title\x07", "tenants": {"\x1b[2Jevil b": {"requests": 1, "prompt_tokens": 2,
                                                                                "completion_tokens": 3}}}]}
    body = json.dumps(doc).encode()

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass
    srv = http.server.HTTPServer((HOST, 0), H)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        rc, out, err = run_tool("gotthard-usage", "--admin", "%s:%d" % (HOST, srv.server_port))
        assert rc == 0, (rc, out, err)
        assert "\x1b" not in out and "\x07" not in out, out
        assert "%1B%5B2Jevil%20b" in out and "%1B%5D0%3Btitle%07" in out, out
    finally:
        srv.shutdown()
        srv.server_close()


# --------------------------------------------------------------------------- F7 admin Host


def test_admin_host_header_must_be_one_and_valid():
    mock = Mock()
    gw = Gateway(gateway_config([mock.port]))
    A = gw.admin_port
    h = b"Host: 127.0.0.1:%d\r\n" % A
    bad = {
        "space before colon": b"GET /status HTTP/1.1\r\nHost : evil.com\r\n\r\n",
        "folded": b"GET /status HTTP/1.1\r\nAccept: */*\r\n Host: evil.com\r\n\r\n",
        "none": b"GET /status HTTP/1.1\r\n\r\n",
        "two": b"GET /status HTTP/1.1\r\n" + h + b"Host: evil.com\r\n\r\n",
        "two, evil first": b"GET /status HTTP/1.1\r\nHost: evil.com\r\n" + h + b"\r\n",
        "space inside": b"GET /status HTTP/1.1\r\nHost: 127.0.0.1 evil.com\r\n\r\n",
        "comma": b"GET /status HTTP/1.1\r\nHost: 127.0.0.1,evil.com\r\n\r\n",
        "reload without host": b"POST /reload HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    }
    for name, req in bad.items():
        status, out = raw(A, req)
        assert status in (400, 421), "%s: %r" % (name, out[:300])
        body = out.split(b"\r\n\r\n", 1)[1]
        assert json.loads(body)["error"]["code"], (name, body)
    good = {
        "host": b"GET /status HTTP/1.1\r\n" + h + b"\r\n",
        "HTTP/1.0 without host": b"GET /status HTTP/1.0\r\n\r\n",
        "probe without host": b"GET /healthz HTTP/1.1\r\n\r\n",
        "probe, other name": b"GET /healthz HTTP/1.1\r\nHost: lb.example\r\n\r\n",
        "localhost": b"GET /status HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "v6": b"GET /status HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
    }
    for name, req in good.items():
        status, out = raw(A, req)
        assert status == 200, "%s: %r" % (name, out[:300])
    status, out = raw(A, b"GET /status HTTP/1.1\r\nHost: evil.com\r\n\r\n")
    assert status == 421, out[:300]


# --------------------------------------------------------------------------- probes at the cap


def test_probes_answered_while_slow_connections_fill_the_cap():
    """100 connections that never finish their head (reopened as the gateway closes them) keep
    the admin listener at its cap: every /readyz and /healthz probe, every 200 ms for 4 s,
    still gets its 200 (the oldest incomplete connection makes room, not the probe)."""
    mock = Mock()
    gw = Gateway(gateway_config([mock.port]))
    socks, stop = [], threading.Event()

    def hold_100():
        while not stop.is_set():
            for s in list(socks):
                try:
                    if s.recv(1) == b"":
                        raise OSError("closed")
                except BlockingIOError:
                    continue
                except OSError:
                    socks.remove(s)
                    s.close()
            while len(socks) < 100 and not stop.is_set():
                try:
                    s = socket.create_connection((HOST, gw.admin_port), timeout=5)
                    s.sendall(b"GET /readyz HTTP/1.1\r\n")
                    s.setblocking(False)
                    socks.append(s)
                except OSError:
                    break
            time.sleep(0.05)

    t = threading.Thread(target=hold_100, daemon=True)
    t.start()
    results = []
    try:
        wait_until = time.time() + 10
        while len(socks) < 100 and time.time() < wait_until:
            time.sleep(0.05)
        time.sleep(0.5)
        t_end = time.time() + 4
        i = 0
        while time.time() < t_end:
            path = ("/readyz", "/healthz")[i % 2]
            i += 1
            try:
                results.append((path, get(gw.admin_port, path, timeout=3).status))
            except Exception as e:  # noqa: BLE001
                results.append((path, type(e).__name__))
            time.sleep(0.2)
    finally:
        stop.set()
        t.join(10)
        for s in socks:
            s.close()
    bad = [x for x in results if x[1] != 200]
    assert len(results) >= 10 and not bad, "probes not answered: %s of %d" % (bad, len(results))
    assert get(gw.admin_port, "/healthz", timeout=5).status == 200


if __name__ == "__main__":
    gwtest.run(globals())
