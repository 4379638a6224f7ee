"""Operator tools, the Redis connection set-up, signals during start-up (issue 22).

- gotthard-keygen --redis refuses an id that exists; --replace swaps the key atomically (the old
  key is refused by the gateway afterwards) and never for an id another tenant owns; a reply it
  does not expect (a fake Redis) is an error, not success.
- gotthard-usage --redis against a fake Redis (RESP from a socket server in this file) that sends
  wrong types, truncated escapes, bad cursors: a clear error and a non-zero exit, never a crash
  (not ASan's exit code 23, not a signal).
- the gateway reads the replies to AUTH and SELECT: a wrong database or password keeps the store
  down (requests never run in another database), /readyz says why (never the secret), the
  connection is retried with backoff, at start and after a reload.
- SIGHUP, SIGUSR1 and SIGTERM sent while the gateway starts do not kill it: they wait until the
  loop runs (one reload for the SIGHUPs, a drain for SIGTERM).
"""

import base64
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from gwtest import (Mock, Gateway, gateway_config, chat, post_json, get, assert_error,  # noqa: E402
                    wait_for)
from redisutil import Redis, Resp  # noqa: E402

HOST = "127.0.0.1"
CACHE_MS = 300
ASAN_EXIT = 23


def tool_bin(name):
    env = {"gotthard-keygen": "KEYGEN_BIN", "gotthard-usage": "USAGE_BIN"}[name]
    if os.environ.get(env):
        return os.environ[env]
    sub = name.split("-", 1)[1]
    return os.path.realpath(os.path.join(os.path.dirname(gwtest.gotthard_bin()), "..", "tools", sub, name))


def run_tool(name, *args, timeout=20):
    p = subprocess.run([tool_bin(name)] + list(args), stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=timeout)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def no_crash(rc, err, what):
    assert rc not in (0, ASAN_EXIT) and rc > 0, "%s: exit %d, stderr %r" % (what, rc, err[-1500:])
    for m in gwtest.SANITIZER_MARKERS:
        assert m not in err, "%s: sanitizer report:\n%s" % (what, err[-3000:])


def digest(key):
    return hashlib.sha256(key.encode()).hexdigest()


def bearer(key):
    return {"Authorization": "Bearer " + key}


def chat_req(gw, key):
    return post_json(gw.port, "/v1/chat/completions", chat("m1"), headers=bearer(key), timeout=10)


def keygen(url, tenant, kid, *more):
    return run_tool("gotthard-keygen", "--redis", url, "--tenant", tenant, "--id", kid, *more)


def redis_env(url_suffix="/0", **over):
    redis = Redis()
    mock = Mock()
    tenants = [{"id": "acme", "models": ["m1"]}, {"id": "star", "models": ["*"]}]
    cfg = gateway_config([mock.port], tenants=tenants,
                         redis={"url": "redis://%s:%d%s" % (HOST, redis.port, url_suffix), "timeout_ms": 200},
                         api_keys={"redis": True, "cache_ms": CACHE_MS}, timeouts={"drain_ms": 2000}, **over)
    return redis, mock, cfg


def readyz(gw):
    return get(gw.admin_port, "/readyz")


def store_up_metric(gw):
    r = get(gw.admin_port, "/metrics")
    m = re.search(r"^gotthard_quota_store_up (\d+)", r.text(), re.M)
    return int(m.group(1)) if m else None


def wait_ready(gw, timeout=8.0):
    wait_for(lambda: readyz(gw).status == 200, timeout, what="/readyz 200")


# --------------------------------------------------------------------------- a fake Redis


class FakeRedis:
    """A RESP server on 127.0.0.1: answer(argv) -> the raw bytes to send back for one command
    (argv: list of bytes). AUTH and SELECT are answered +OK unless answer says otherwise."""

    def __init__(self, answer):
        self.answer = answer
        self.sock = socket.socket()
        self.sock.bind((HOST, 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.commands = []
        self.stop_ev = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def url(self, db=0):
        return "redis://%s:%d/%d" % (HOST, self.port, db)

    def _run(self):
        while not self.stop_ev.is_set():
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        c.settimeout(5)
        f = c.makefile("rb")
        try:
            while True:
                ln = f.readline()
                if not ln:
                    return
                n = int(ln[1:].strip())
                argv = []
                for _ in range(n):
                    ln = f.readline()
                    size = int(ln[1:].strip())
                    argv.append(f.read(size + 2)[:-2])
                self.commands.append(argv)
                out = self.answer(argv)
                if out is None and argv[0].upper() in (b"AUTH", b"SELECT"):
                    out = b"+OK\r\n"
                if out is None:
                    out = b"-ERR unexpected\r\n"
                c.sendall(out)
        except (OSError, ValueError):
            pass
        finally:
            c.close()

    def close(self):
        self.stop_ev.set()
        self.sock.close()
        self.t.join(2)


def bulk(s):
    s = s if isinstance(s, bytes) else s.encode()
    return b"$%d\r\n%s\r\n" % (len(s), s)


def today():
    return time.strftime("%Y-%m-%d", time.gmtime())


# --------------------------------------------------------------------------- keygen


def test_keygen_refuses_a_reused_id_and_replaces_atomically():
    redis, mock, cfg = redis_env()
    gw = Gateway(cfg)
    url = "redis://%s:%d/0" % (HOST, redis.port)
    rc, out, err = keygen(url, "acme", "acme-1")
    assert rc == 0, (rc, out, err)
    k1 = out.splitlines()[0]
    assert chat_req(gw, k1).status == 200
    # the same id again: refused, nothing changed, the first key still works and can be revoked
    rc, out, err = keygen(url, "acme", "acme-1")
    assert rc != 0, "a reused id was accepted: %r" % out
    assert "acme-1" in err and "--replace" in err, err
    assert redis.cmd("GET", "gotthard:apikey-id:acme-1") == digest(k1).encode()
    assert len([k for k in redis.cmd("KEYS", "gotthard:apikey:*")]) == 1, redis.dump()
    assert chat_req(gw, k1).status == 200
    # --replace: the new key works, the old one is gone in the same step
    rc, out, err = keygen(url, "acme", "acme-1", "--replace")
    assert rc == 0, (rc, out, err)
    k2 = out.splitlines()[0]
    assert k2 != k1
    assert "replaced" in out, out
    assert redis.cmd("GET", "gotthard:apikey-id:acme-1") == digest(k2).encode()
    assert redis.cmd("EXISTS", "gotthard:apikey:" + digest(k1)) == 0, redis.dump()
    time.sleep(CACHE_MS / 1000 + 0.5)
    assert_error(chat_req(gw, k1), 401, "invalid_api_key")
    assert chat_req(gw, k2).status == 200
    # revoking the id now revokes the key that holds it: nothing is left that works
    rc, out, err = run_tool("gotthard-keygen", "--redis", url, "--revoke", "acme-1")
    assert rc == 0, (rc, out, err)
    time.sleep(CACHE_MS / 1000 + 0.5)
    for k in (k1, k2):
        assert_error(chat_req(gw, k), 401, "invalid_api_key")
    assert redis.cmd("KEYS", "gotthard:apikey*") == [], redis.dump()
    # --replace of an id nobody holds stores it like a new one
    rc, out, err = keygen(url, "acme", "acme-2", "--replace")
    assert rc == 0, (rc, out, err)
    assert chat_req(gw, out.splitlines()[0]).status == 200
    mock.stop()


def test_keygen_never_takes_another_tenants_id():
    redis = Redis()
    url = "redis://%s:%d/0" % (HOST, redis.port)
    rc, out, err = keygen(url, "acme", "shared-1")
    assert rc == 0, (rc, out, err)
    k1 = out.splitlines()[0]
    before = redis.dump()
    for more in ((), ("--replace",)):
        rc, out, err = keygen(url, "star", "shared-1", *more)
        assert rc != 0, "star took acme's id %s: %r" % (more, out)
        assert "shared-1" in err, err
        assert redis.dump() == before, "keygen %s changed redis: %r" % (more, redis.dump())
    assert redis.cmd("HGET", "gotthard:apikey:" + digest(k1), "tenant") == b"acme"
    # --replace without --redis, or with --revoke, is a usage error
    rc, _, err = run_tool("gotthard-keygen", "--tenant", "acme", "--id", "x", "--replace")
    assert rc == 2, (rc, err)


def test_keygen_unexpected_replies_are_errors():
    replies = [b"*1\r\n:1\r\n", b"$-1\r\n", b":7\r\n", b"+OK\r\n", b"-ERR no scripts here\r\n"]
    for rep in replies:
        fake = FakeRedis(lambda argv, rep=rep: rep if argv[0].upper() not in (b"AUTH", b"SELECT") else None)
        try:
            rc, out, err = keygen(fake.url(), "acme", "acme-1")
            no_crash(rc, err, "keygen, reply %r" % rep)
            assert "redis" in err and "gk_" not in out and "gk_" not in err, (rep, out, err)
            rc, out, err = run_tool("gotthard-keygen", "--redis", fake.url(), "--revoke", "acme-1")
            no_crash(rc, err, "keygen --revoke, reply %r" % rep)
        finally:
            fake.close()


def test_tools_refuse_a_handshake_that_is_not_ok():
    """SELECT (or AUTH) answered with anything but OK: both tools stop there, saying which."""
    for name, bad in (("SELECT", b":1\r\n"), ("SELECT", b"-ERR DB index is out of range\r\n"),
                      ("AUTH", b"$2\r\nOK\r\n"), ("AUTH", b"-WRONGPASS no\r\n")):
        fake = FakeRedis(lambda argv, name=name, bad=bad: bad if argv[0].upper() == name.encode() else b"*0\r\n")
        try:
            url = fake.url(2) if name == "SELECT" else "redis://:Zq9-secret@%s:%d/0" % (HOST, fake.port)
            for args in (("gotthard-keygen", "--redis", url, "--tenant", "acme"),
                         ("gotthard-usage", "--redis", url)):
                rc, out, err = run_tool(*args)
                no_crash(rc, err, "%s with %s answered %r" % (args[0], name, bad))
                assert name in err and "Zq9-secret" not in err, (args[0], name, bad, err)
            assert not [a for a in fake.commands if a[0].upper() not in (b"AUTH", b"SELECT")], fake.commands
        finally:
            fake.close()


# --------------------------------------------------------------------------- usage


def usage_answers(scan, hmget=None):
    def answer(argv):
        cmd = argv[0].upper()
        if cmd == b"SCAN":
            return scan
        if cmd == b"HMGET":
            return hmget if hmget is not None else b"*3\r\n" + bulk("1") + bulk("2") + bulk("3")
        return None
    return answer


def test_usage_malformed_replies_are_errors():
    d = today()
    good_key = bulk("gotthard:u:{acme}:" + d)
    long_tenant = "a" * 505 + "%A"
    cases = {
        "integer key": b"*2\r\n" + bulk("0") + b"*1\r\n:5\r\n",
        "nil key": b"*2\r\n" + bulk("0") + b"*1\r\n$-1\r\n",
        "array key": b"*2\r\n" + bulk("0") + b"*1\r\n*0\r\n",
        "integer cursor": b"*2\r\n:0\r\n*1\r\n" + good_key,
        "nil cursor": b"*2\r\n$-1\r\n*0\r\n",
        "integer key list": b"*2\r\n" + bulk("0") + b":3\r\n",
        "long cursor": b"*2\r\n" + bulk("9" * 100) + b"*0\r\n",
        "cursor not a number": b"*2\r\n" + bulk("x1") + b"*0\r\n",
        "three elements": b"*3\r\n" + bulk("0") + b"*0\r\n*0\r\n",
        "error": b"-ERR nope\r\n",
        "truncated escape %A": b"*2\r\n" + bulk("0") + b"*1\r\n" + bulk("gotthard:u:{%s}:%s" % (long_tenant, d)),
        "truncated escape %": b"*2\r\n" + bulk("0") + b"*1\r\n" + bulk("gotthard:u:{%s%%}:%s" % ("b" * 506, d)),
        "no braces": b"*2\r\n" + bulk("0") + b"*1\r\n" + bulk("gotthard:u:acme:" + d),
        "other date": b"*2\r\n" + bulk("0") + b"*1\r\n" + bulk("gotthard:u:{acme}:1999-01-01"),
        "embedded NUL": b"*2\r\n" + bulk("0") + b"*1\r\n" + bulk(b"gotthard:u:{ac\0me}:" + d.encode()),
        "encoded NUL": b"*2\r\n" + bulk("0") + b"*1\r\n" + bulk("gotthard:u:{ac%00me}:" + d),
    }
    hmgets = {
        "hmget integer": b":1\r\n",
        "hmget two fields": b"*2\r\n" + bulk("1") + bulk("2"),
        "hmget array field": b"*3\r\n*0\r\n" + bulk("2") + bulk("3"),
        "hmget not a number": b"*3\r\n" + bulk("1x") + bulk("2") + bulk("3"),
        "hmget error": b"-WRONGTYPE no\r\n",
    }
    todo = [(n, usage_answers(s)) for n, s in cases.items()] + \
           [(n, usage_answers(b"*2\r\n" + bulk("0") + b"*1\r\n" + good_key, h)) for n, h in hmgets.items()]
    for name, answer in todo:
        fake = FakeRedis(answer)
        try:
            rc, out, err = run_tool("gotthard-usage", "--redis", fake.url(), "--json")
            no_crash(rc, err, "gotthard-usage, %s" % name)
            assert "gotthard-usage:" in err, "%s: no message: %r" % (name, err)
        finally:
            fake.close()
    # the well-formed answer still works, a missing field is 0 (a tenant id is [A-Za-z0-9._-]:
    # one with escapes, "a%7Bb%25", is refused since the admin review, test_sec_admin.py)
    fake = FakeRedis(usage_answers(b"*2\r\n" + bulk("0") + b"*1\r\n" + bulk("gotthard:u:{a.b-c_D9}:" + d),
                                   b"*3\r\n" + bulk("4") + b"$-1\r\n" + bulk("6")))
    try:
        rc, out, err = run_tool("gotthard-usage", "--redis", fake.url(), "--json")
        assert rc == 0, (rc, out, err)
        import json
        doc = json.loads(out)
        assert doc["days"][0]["tenants"] == {"a.b-c_D9": {"requests": 4, "prompt_tokens": 0, "completion_tokens": 6}}, doc
    finally:
        fake.close()


# --------------------------------------------------------------------------- Redis set-up


def test_wrong_database_refused_at_start_and_on_reload():
    redis, mock, cfg = redis_env("/99")     # redis-server has 16 databases
    url0 = "redis://%s:%d/0" % (HOST, redis.port)
    rc, out, err = keygen(url0, "acme", "acme-db0")
    assert rc == 0, (rc, out, err)
    k = out.splitlines()[0]
    # the tools refuse the URL
    rc, _, err = run_tool("gotthard-keygen", "--redis", "redis://%s:%d/99" % (HOST, redis.port), "--tenant", "acme")
    assert rc != 0 and "SELECT" in err, (rc, err)
    gw = Gateway(cfg)
    time.sleep(1.0)   # several connection attempts
    r = readyz(gw)
    assert r.status == 503, "a wrong database is ready: %s" % r.describe()
    why = r.json().get("reasons", [])
    assert any("SELECT" in w and "database" in w for w in why), r.describe()
    assert store_up_metric(gw) == 0
    # the key lives in database 0: a gateway configured for 99 must not find it there
    r = chat_req(gw, k)
    assert r.status != 200, "a key from database 0 was accepted by a gateway set to 99: %s" % r.describe()
    assert "redis connected" not in gw.stderr_text(), gw.stderr_text()[-2000:]
    assert "SELECT" in gw.stderr_text()
    # a reload to database 0: ready, the key works
    cfg0 = dict(cfg, redis=dict(cfg["redis"], url=url0))
    gw.reload(cfg0)
    wait_ready(gw)
    assert chat_req(gw, k).status == 200
    # and back to 99: not ready again, saying why
    gw.reload(cfg)
    wait_for(lambda: any("SELECT" in w for w in readyz(gw).json().get("reasons", [])), 8,
             what="/readyz 503 saying SELECT after a reload to db 99")
    time.sleep(CACHE_MS / 1000 + 0.3)
    assert chat_req(gw, k).status != 200
    mock.stop()


def test_wrong_password_refused_and_retried():
    redis, mock, cfg = redis_env()
    right, wrong = "s3cret-Right-pw", "s3cret-Wrong-pw"
    assert redis.cmd("CONFIG", "SET", "requirepass", right) == "OK"
    base = "%s:%d/0" % (HOST, redis.port)
    cfg_wrong = dict(cfg, redis=dict(cfg["redis"], url="redis://:%s@%s" % (wrong, base)))
    cfg_right = dict(cfg, redis=dict(cfg["redis"], url="redis://:%s@%s" % (right, base)))
    gw = Gateway(cfg_wrong)
    time.sleep(1.0)
    r = readyz(gw)
    assert r.status == 503, "a wrong password is ready: %s" % r.describe()
    assert any("AUTH" in w for w in r.json().get("reasons", [])), r.describe()
    assert store_up_metric(gw) == 0

    def leaks():
        texts = [gw.stderr_text(), readyz(gw).text(), get(gw.admin_port, "/metrics").text(),
                 get(gw.admin_port, "/status").text()]
        return [t for t in texts if wrong in t or right in t]
    assert not leaks(), leaks()
    # the server is given the gateway's password: the retry (backoff <= 2 s) gets through
    c = Resp(redis.port)
    c.cmd("AUTH", right)
    assert c.cmd("CONFIG", "SET", "requirepass", wrong) == "OK"
    c.close()
    wait_ready(gw, 8)
    assert store_up_metric(gw) == 1
    # a reload to a password the server does not take: refused, not ready, saying why
    gw.reload(cfg_right)
    wait_for(lambda: any("AUTH" in w for w in readyz(gw).json().get("reasons", [])), 8,
             what="/readyz 503 saying AUTH after a reload to a wrong password")
    assert readyz(gw).status == 503
    assert not leaks(), leaks()
    mock.stop()


def test_handshake_without_answer_is_not_ready():
    """A server that accepts but never answers AUTH/SELECT: not ready, the gateway stays responsive."""
    fake = FakeRedis(lambda argv: b"" if argv[0].upper() == b"SELECT" else None)
    try:
        mock = Mock()
        cfg = gateway_config([mock.port], tenants=[{"id": "acme", "models": ["m1"]}],
                             redis={"url": fake.url(3), "timeout_ms": 100},
                             api_keys={"redis": True, "cache_ms": CACHE_MS})
        gw = Gateway(cfg)
        time.sleep(1.5)
        r = readyz(gw)
        assert r.status == 503, r.describe()
        assert r.json().get("reasons"), r.describe()
        assert not any(a[0].upper() not in (b"AUTH", b"SELECT") for a in fake.commands), fake.commands[:5]
        gw.stop()
    finally:
        fake.close()


# --------------------------------------------------------------------------- TLS ticket keys


def tls_fetch(port, ctx, session=None):
    """GET /v1/models over a fresh TLS connection offering `session`: (resumed?, its session)."""
    c = gwtest.Conn(port)
    try:
        c.sock = ctx.wrap_socket(c.sock, server_hostname="localhost", session=session)
        c.send(gwtest.http_request("GET", "/v1/models", host="localhost"))
        r = c.read_response()
        assert r.status == 200, r.describe()
        return c.sock.session_reused, c.sock.session
    finally:
        c.close()


def test_tls_ticket_keys_rotate():
    """listen[].tls.ticket_key_rotate_s 2: a ticket resumes under the current and the previous
    key, and no longer once its key is 2 intervals old (OpenSSL's own key would live until the
    next reload). TLS 1.2 and 1.3."""
    import ssl
    import streamutil as su
    cert, key = gwtest.self_signed_cert()
    mock = Mock()
    cfg = gateway_config([mock.port], timeouts={"drain_ms": 2000})
    cfg["listen"].append({"address": "127.0.0.1:%d" % gwtest.free_port(),
                          "tls": {"cert": "cert.pem", "key": "key.pem", "ticket_key_rotate_s": 2}})
    gw = Gateway(cfg, files={"cert.pem": cert, "key.pem": key})
    ctxs = {v: su.tls_client_context(cert, minimum=v, maximum=v)
            for v in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)}
    t0 = time.monotonic()
    first = {v: tls_fetch(gw.tls_port, c) for v, c in ctxs.items()}
    for v, c in ctxs.items():
        assert first[v][1] is not None and first[v][1].has_ticket, "%s: no ticket" % v
        assert tls_fetch(gw.tls_port, c, first[v][1])[0], "%s: the ticket did not resume at once" % v
    time.sleep(max(0, t0 + 2.4 - time.monotonic()))
    for v, c in ctxs.items():
        assert tls_fetch(gw.tls_port, c, first[v][1])[0], "%s: not resumed under the previous key" % v
    time.sleep(max(0, t0 + 6.5 - time.monotonic()))
    for v, c in ctxs.items():
        assert not tls_fetch(gw.tls_port, c, first[v][1])[0], "%s: a ticket outlived its key" % v
        # and a new ticket works again
        reused, sess = tls_fetch(gw.tls_port, c)
        assert tls_fetch(gw.tls_port, c, sess)[0], "%s: a fresh ticket did not resume" % v
    mock.stop()


# --------------------------------------------------------------------------- signals


def fifo_gateway(tmp_name="audit.fifo"):
    """A gateway whose audit log is a FIFO: it binds its listeners, then blocks opening the FIFO
    until this test reads it. Returns (gateway, start_reader)."""
    mock = Mock()
    d = gwtest.tempdir("gwtest-fifo-")
    fifo = os.path.join(d, tmp_name)
    os.mkfifo(fifo)
    cfg = gateway_config([mock.port], audit_log={"path": fifo}, timeouts={"drain_ms": 2000})
    gw = Gateway(cfg, wait=False)
    # start-up is under way (past main's first instructions) once the listener is bound
    wait_for(lambda: any(st == "0A" and lp == gw.port for lp, _, st in gwtest.tcp_sockets().values()),
             15, what="the listener bound")
    time.sleep(0.2)
    assert gw.alive()
    got = []

    def reader():
        with open(fifo, "rb") as f:
            while True:
                b = f.read(4096)
                if not b:
                    return
                got.append(b)

    def start_reader():
        t = threading.Thread(target=reader, daemon=True)
        t.start()
        return t
    return gw, start_reader, mock


def test_sighup_during_startup_does_not_kill():
    gw, start_reader, mock = fifo_gateway()
    for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGHUP, signal.SIGHUP):
        os.kill(gw.pid, sig)
        time.sleep(0.05)
    time.sleep(0.3)
    assert gw.alive(), "the gateway died of a signal during start-up: %s\n%s" % (
        gw.proc.returncode, gw.stderr_text()[-1500:])
    start_reader()
    gw.wait_ready()
    # the SIGHUPs were remembered: one reload once the loop runs
    wait_for(lambda: "configuration reloaded (SIGHUP)" in gw.stderr_text(), 5, what="the remembered reload")
    assert post_json(gw.port, "/v1/chat/completions", chat("m1")).status == 200
    assert gw.stop() == 0
    mock.stop()


def test_sigterm_during_startup_drains_once_running():
    gw, start_reader, mock = fifo_gateway()
    os.kill(gw.pid, signal.SIGTERM)
    time.sleep(0.3)
    assert gw.alive(), "SIGTERM during start-up killed the gateway: %s" % gw.proc.returncode
    start_reader()
    rc = gw.proc.wait(15)
    gw.stop()
    assert rc == 0, "exit %s after a SIGTERM during start-up\n%s" % (rc, gw.stderr_text()[-1500:])
    assert "draining" in gw.stderr_text(), gw.stderr_text()[-1500:]
    mock.stop()


def test_sighup_storm_during_shutdown_exits_cleanly():
    """SIGTERM, then SIGHUPs as fast as they go until the process is gone: the loop ignores
    them while draining, and after it (the handlers freed, the process tearing down) they stay
    blocked: the exit status is 0, never death by SIGHUP."""
    for _ in range(3):
        mock = Mock()
        gw = Gateway(gateway_config([mock.port], workers=2, timeouts={"drain_ms": 300}))
        os.kill(gw.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while gw.proc.poll() is None and time.monotonic() < deadline:
            try:
                os.kill(gw.pid, signal.SIGHUP)
            except ProcessLookupError:
                break
            time.sleep(0.0005)
        rc = gw.proc.wait(5)
        gw.stop()
        assert rc == 0, "exit %s with SIGHUPs during shutdown\n%s" % (rc, gw.stderr_text()[-1500:])
        mock.stop()


if __name__ == "__main__":
    gwtest.run(globals())
