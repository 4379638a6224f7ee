"""Backend faults (issue 9, point 3), over real sockets against a scripted fake backend.

The fake (RawBackend) is a python socket server on 127.0.0.1 that answers each request with exactly
the bytes a test chooses, and records every connection and request: which connection a request
came on, whether the gateway closed that connection, and when. What is checked:

- malformed answers (Content-Length with Transfer-Encoding, bad or overflowing lengths, bad chunk
  size lines, an oversized or over-full head, a status line that is not HTTP/1.x, bytes after the
  end of an answer) give the client 502 upstream_error, OpenAI-shaped, and the backend connection
  is closed, never reused: the next request goes on a fresh connection;
- a pooled connection that the backend closes (or resets) when the next request arrives is retried
  once, on a fresh connection: the client gets 200 and the backend answered exactly once; the
  retry is bounded (one per attempt, never a walk through every pooled connection); a connection
  that failed after the backend began answering, or timed out, is never retried (a timeout on a
  pooled connection counts for passive health);
- an idle pooled connection that the backend closes is closed by the gateway at once (no socket
  left in CLOSE_WAIT), and bytes a backend sends on an idle connection are never taken as the next
  answer;
- an error event as the first event of a 200 stream is a failure: the client gets 502
  upstream_error (the gateway holds a stream's head until its first event); an error event after
  the head went out is relayed with the end of the stream; either way the access log and
  gotthard_requests_total say 502 / upstream_error and passive health counts a failure; the same
  with the mock backend's x-mock-error-after.
"""

import json
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
import promtext  # noqa: E402
import streamutil as su  # noqa: E402
from gwtest import (HOST, Gateway, Mock, gateway_config, pool, backend, chat, post_json,  # noqa: E402
                    assert_error, wait_for)

# --------------------------------------------------------------------------- the fake backend


def json_answer(body=None, extra=b""):
    """A complete 200 JSON answer (with `extra` bytes glued after it)."""
    if body is None:
        body = json.dumps({"id": "fake", "object": "chat.completion", "model": "m1",
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": "fake"},
                                        "finish_reason": "stop"}],
                           "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
            + body + extra)


SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
SSE_END = b"0\r\n\r\n"
TOKEN_EVENT = (b'data: {"id":"x","object":"chat.completion.chunk","model":"m1","choices":[{"index":0,'
               b'"delta":{"role":"assistant","content":"tok0 "},"finish_reason":null}]}\n\n')
# What vLLM sends when generation fails right away (serving_chat: create_streaming_error_response).
ERROR_EVENT = (b'data: {"error": {"object": "error", "message": "engine failed", "type": "InternalServerError",'
               b' "param": null, "code": 500}}\n\n')
DONE_EVENT = b"data: [DONE]\n\n"
# What vLLM sends when the request itself is at fault (a prompt over the context length).
REFUSAL_EVENT = (b'data: {"error": {"object": "error", "message": "This model\'s maximum context length is '
                 b'4096 tokens", "type": "BadRequestError", "param": null, "code": 400}}\n\n')


def chunk(data):
    return b"%x\r\n%s\r\n" % (len(data), data)


class Conn:
    """One connection the fake accepted: no (1, 2, ...), requests read on it, and when the gateway
    closed it (peer_closed_at, monotonic) or the fake did (we_closed_at)."""

    def __init__(self, no):
        self.no = no
        self.requests = 0
        self.peer_closed_at = None
        self.we_closed_at = None


class Request:
    def __init__(self, conn, nth, method, path, headers, body):
        self.conn = conn          # the Conn number
        self.nth = nth            # 1 for the first request on its connection
        self.method = method
        self.path = path
        self.headers = headers    # {lowercase name: value}
        self.body = body
        self.at = time.monotonic()

    def header(self, name, default=""):
        return self.headers.get(name, default)


class RawBackend:
    """A scripted HTTP/1.1 backend on a free port of 127.0.0.1, one thread per connection.

    For every request it reads (head and Content-Length body) it records a Request and calls
    script(req, fake) for a list of steps, run in order:
      bytes           send them exactly (one sendall)
      ("sleep", s)    wait s seconds
      "close"         close the connection (FIN)
      "reset"         reset it (SO_LINGER 0, close)
    and then reads the next request on the same connection (an empty list: never answer). A read
    of EOF or a reset records the gateway's close. `answered` counts the requests the script
    answered (a step list that sends bytes); use it as "generations"."""

    def __init__(self, script):
        self.script = script
        self.lock = threading.Lock()
        self.conns = []
        self.reqs = []
        self.stopped = False
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, 0))
        self.sock.listen(128)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.threads = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self.threads.append(t)
        _fakes.append(self)

    # ---- what it saw

    def requests(self, path="/v1/chat/completions"):
        with self.lock:
            return [r for r in self.reqs if r.path == path]

    def conn(self, no):
        with self.lock:
            return self.conns[no - 1]

    def nconns(self):
        with self.lock:
            return len(self.conns)

    def wait_peer_closed(self, no, timeout=2.0):
        """Wait until the gateway closed connection `no`; returns when (monotonic)."""
        c = self.conn(no)
        return wait_for(lambda: c.peer_closed_at, timeout, interval=0.01,
                        what="the gateway to close backend connection %d" % no)

    # ---- serving

    def _accept(self):
        while not self.stopped:
            try:
                s, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                c = Conn(len(self.conns) + 1)
                self.conns.append(c)
            t = threading.Thread(target=self._serve, args=(s, c), daemon=True)
            t.start()
            self.threads.append(t)

    def _recv(self, s, c):
        """Bytes, or None when the gateway closed (recorded) or the fake stops."""
        while not self.stopped:
            try:
                d = s.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                d = b""
            if not d:
                c.peer_closed_at = time.monotonic()
                return None
            return d
        return None

    def _read_request(self, s, c, buf):
        while b"\r\n\r\n" not in buf:
            d = self._recv(s, c)
            if d is None:
                return None, buf
            buf += d
        head, buf = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        method, path = lines[0].split(" ")[:2]
        headers = {}
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        while len(buf) < n:
            d = self._recv(s, c)
            if d is None:
                return None, buf
            buf += d
        body, buf = buf[:n], buf[n:]
        c.requests += 1
        req = Request(c.no, c.requests, method, path, headers, body)
        with self.lock:
            self.reqs.append(req)
        return req, buf

    def _serve(self, s, c):
        s.settimeout(0.1)
        buf = b""
        try:
            while not self.stopped:
                req, buf = self._read_request(s, c, buf)
                if req is None:
                    return
                for step in self.script(req, self):
                    if isinstance(step, bytes):
                        s.sendall(step)
                    elif step[0] == "sleep":
                        time.sleep(step[1])
                    elif step in ("close", "reset"):
                        if step == "reset":
                            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                        c.we_closed_at = time.monotonic()
                        s.close()
                        return
        except OSError:
            if c.peer_closed_at is None and c.we_closed_at is None:
                c.peer_closed_at = time.monotonic()
        finally:
            try:
                s.close()
            except OSError:
                pass

    def close(self):
        self.stopped = True
        try:
            self.sock.close()
        except OSError:
            pass


_fakes = []


def _close_fakes():
    for f in _fakes:
        f.close()
    del _fakes[:]


# --------------------------------------------------------------------------- the gateway


def _gw(port, first_byte_ms=3000, **over):
    """A gateway (one worker) with one pool p1 of the fake backend, and an access log."""
    t = dict(gwtest.default_timeouts(), drain_ms=2000, upstream_first_byte_ms=first_byte_ms)
    t.update(over.pop("timeouts", {}))
    pools = over.pop("pools", None) or [pool("p1", ["m1", "m2"], [backend(port)], **over.pop("pool_kw", {}))]
    return Gateway(gateway_config(pools=pools, timeouts=t, access_log={"path": "access.log"}, **over))


def _fault(name, **more):
    """Request headers that tell the fake's script which case this is (forwarded by the gateway)."""
    h = {"x-fault": name}
    h.update(more)
    return h


def access_line(gw, rid, timeout=5.0):
    path = os.path.join(gw.dir, "access.log")

    def find():
        try:
            with open(path) as f:
                for ln in f:
                    if ln.strip():
                        j = json.loads(ln)
                        if j.get("client_request_id") == rid:
                            return j
        except FileNotFoundError:
            pass
        return None
    return wait_for(find, timeout, what="the access log line of %s" % rid)


def requests_total(gw, code):
    """gotthard_requests_total summed over tenants and models for one status code label."""
    r = gwtest.get(gw.admin_port, "/metrics")
    assert r.status == 200, r.describe()
    fam = promtext.parse(r.body.decode()).get("gotthard_requests_total", {"samples": []})
    return sum(v for (_n, labels, v) in fam["samples"] if labels.get("code") == str(code))


def backend_sockets(pid, port):
    """The gateway's TCP sockets whose peer is 127.0.0.1:port: a list of (inode, state), state as in
    /proc/net/tcp ("01" established, "08" CLOSE_WAIT, ...)."""
    tcp = gwtest.tcp_sockets()
    out = []
    for target in (gwtest.fd_targets(pid) or {}).values():
        ino = gwtest.socket_inode(target)
        if ino in tcp and tcp[ino][1] == port:
            out.append((ino, tcp[ino][2]))
    return out


# --------------------------------------------------------------------------- 1. malformed answers

LONG = b"x" * 70000
MANY = b"".join(b"X-H%d: v\r\n" % i for i in range(300))

# Each case: the exact bytes the backend answers with (it keeps the connection open afterwards,
# so that only the gateway can end it).
MALFORMED = {
    "cl_and_te": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "te_and_cl": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 15\r\n\r\n"
                 b"5\r\nhello\r\n0\r\n\r\n",
    "te_not_chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "cl_negative": b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nhello",
    "cl_non_numeric": b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nhello",
    "cl_plus": b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
    "cl_two_different": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "cl_list": b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!",
    "cl_overflow": b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\nhello",
    "chunk_size_not_hex": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "chunk_size_negative": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
    "chunk_size_empty": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\nhello\r\n0\r\n\r\n",
    "chunk_size_overflow": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"ffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    "head_too_large": b"HTTP/1.1 200 OK\r\nX-Big: " + LONG + b"\r\nContent-Length: 2\r\n\r\nhi",
    "too_many_headers": b"HTTP/1.1 200 OK\r\n" + MANY + b"Content-Length: 2\r\n\r\nhi",
    "status_http2": b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nhi",
    "status_http09": b"HTTP/0.9 200 OK\r\nContent-Length: 2\r\n\r\nhi",
    "status_icy": b"ICY 200 OK\r\nContent-Length: 2\r\n\r\nhi",
    "status_over_599": b"HTTP/1.1 600 Odd\r\nContent-Length: 2\r\n\r\nhi",
    "http10_chunked": b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    "status_two_digits": b"HTTP/1.1 20 OK\r\nContent-Length: 2\r\n\r\nhi",
    "status_not_a_number": b"HTTP/1.1 abc OK\r\nContent-Length: 2\r\n\r\nhi",
    "switching_protocols": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    "bare_lf": b"HTTP/1.1 200 OK\nContent-Length: 2\n\nhi",
    "space_before_colon": b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nhi",
    "obs_fold": b"HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\nContent-Length: 2\r\n\r\nhi",
    "nul_in_value": b"HTTP/1.1 200 OK\r\nX-A: b\x00c\r\nContent-Length: 2\r\n\r\nhi",
}


# Broken after the first bytes of the body were good (and went to the client).
CUT = {
    "chunk_data_overrun": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
    "second_chunk_size_bad": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"5\r\nhello\r\nzz\r\nhello\r\n0\r\n\r\n",
}


def _malformed_script(req, fake):
    name = req.header("x-fault")
    if name in MALFORMED:
        return [MALFORMED[name]]   # and keep the connection open: only the gateway may end it
    if name in CUT:
        return [CUT[name]]
    return [json_answer()]


def test_malformed_answers_are_502_and_the_connection_is_closed():
    """Every case of MALFORMED: 502 upstream_error (OpenAI-shaped), the gateway closes the backend
    connection the answer came on (within 2 s), and the next request is answered 200 over a new
    connection. Cases alternate with good requests, so most malformed answers come on a reused
    connection."""
    fake = RawBackend(_malformed_script)
    gw = _gw(fake.port)

    def one(name):
        r = post_json(gw.port, "/v1/chat/completions", chat("m1"), headers=_fault(name), timeout=10)
        assert_error(r, 502, "upstream_error")
        req = fake.requests()[-1]
        assert req.header("x-fault") == name, "the fake's last request is not this case's"
        fake.wait_peer_closed(req.conn)
        r = post_json(gw.port, "/v1/chat/completions", chat("m1"), headers=_fault("ok"), timeout=10)
        assert r.status == 200, "the request after it: %s" % r.describe()
        nxt = fake.requests()[-1]
        assert nxt.conn != req.conn and nxt.nth == 1, (
            "the request after it came on connection %d (request %d there); the malformed answer's "
            "connection was %d" % (nxt.conn, nxt.nth, req.conn))
    gwtest.check_all(sorted(MALFORMED), one)
    n = len(fake.requests())
    assert n == 2 * len(MALFORMED), "a malformed answer was retried: the fake saw %d requests for %d cases" % (
        n, len(MALFORMED))


def test_bad_framing_after_the_body_began_cuts_the_answer():
    """The chunked body turns bad after good bytes went to the client (a chunk longer than its
    size line, a bad second size line): the client's answer is cut (no terminating chunk, the
    connection closed), so that it cannot be taken for complete; the backend connection is
    closed and the next request goes on a new one."""
    fake = RawBackend(_malformed_script)
    gw = _gw(fake.port)

    def one(name):
        c = gwtest.Conn(gw.port, timeout=5)
        try:
            c.send(gwtest.http_request("POST", "/v1/chat/completions", chat("m1"),
                                       [("Content-Type", "application/json"), ("x-fault", name)]))
            r = c.read_response(timeout=5)
            assert r.status == 200 and r.chunked and not r.complete, "expected a cut 200: %s" % r.describe()
            assert c.wait_closed(2), "the client connection stayed open after a cut answer"
        finally:
            c.close()
        req = fake.requests()[-1]
        fake.wait_peer_closed(req.conn)
        r = post_json(gw.port, "/v1/chat/completions", chat("m1"), headers=_fault("ok"))
        assert r.status == 200, r.describe()
        assert fake.requests()[-1].conn != req.conn, "the connection was reused"
    gwtest.check_all(sorted(CUT), one)


def test_not_http_is_502_at_once():
    """A backend that answers something that cannot begin an HTTP/1.x status line (an SSH banner,
    an HTTP/2 SETTINGS frame) and then waits: 502 at once, not a 504 at the first-byte timeout."""
    fake = RawBackend(lambda req, f: [b"SSH-2.0-OpenSSH_9.2\r\n"] if req.header("x-fault") == "ssh"
                      else [b"\x00\x00\x12\x04\x00\x00\x00\x00\x00"])
    gw = _gw(fake.port, first_byte_ms=3000)
    for name in ("ssh", "h2"):
        t0 = time.monotonic()
        r = post_json(gw.port, "/v1/chat/completions", chat("m1"), headers=_fault(name), timeout=10)
        dt = time.monotonic() - t0
        assert_error(r, 502, "upstream_error")
        assert dt < 1.5, "%s: 502 after %.2fs (the first-byte timeout is 3 s): not seen at once" % (name, dt)
        fake.wait_peer_closed(fake.requests()[-1].conn)


def _extra_script(req, fake):
    name = req.header("x-fault")
    if name == "extra_same_packet":
        # The answer and, glued to it, what looks like a second answer.
        return [json_answer(extra=b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL")]
    if name == "extra_later":
        return [json_answer(), ("sleep", 0.2), b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL"]
    return [json_answer(body=b'{"answer":"%d"}' % len(fake.requests()))]


def test_bytes_after_the_answer_are_not_the_next_answer():
    """A body longer than its Content-Length, on a keep-alive connection: the bytes after the answer
    (here a whole fake answer, "EVIL") are never given to the next request; the connection is
    dropped, and the next request goes on a fresh one. Both when the extra bytes come with the
    answer and when they come 200 ms later, while the connection idles in the pool."""
    fake = RawBackend(_extra_script)
    gw = _gw(fake.port)
    for name in ("extra_same_packet", "extra_later"):
        r = post_json(gw.port, "/v1/chat/completions", chat("m1"), headers=_fault(name))
        assert r.status == 200 and r.json()["id"] == "fake", "%s: %s" % (name, r.describe())
        req = fake.requests()[-1]
        fake.wait_peer_closed(req.conn)   # dropped, not kept for the next request
        r = post_json(gw.port, "/v1/chat/completions", chat("m1"), headers=_fault("ok"))
        assert r.status == 200 and b"EVIL" not in r.body, "%s: the next request got %s" % (name, r.describe())
        assert r.json() == {"answer": str(len(fake.requests()))}, r.describe()
        nxt = fake.requests()[-1]
        assert nxt.conn != req.conn, "%s: the next request reused the connection" % name


# --------------------------------------------------------------------------- 2. pooled connections


def _race_script(mode):
    """Answers the first request on each connection; on a later one (a reused, pooled connection)
    reads it and closes (`mode` "close") or resets (`mode` "reset") without answering: the backend
    closed its idle connection just as the gateway sent a request on it."""
    def script(req, fake):
        if req.nth >= 2 and req.header("x-fault") == "race":
            return [mode]
        return [json_answer()]
    return script


def test_pooled_connection_closed_at_send_is_retried_once_on_a_fresh_one():
    for mode in ("close", "reset"):
        fake = RawBackend(_race_script(mode))
        gw = _gw(fake.port)
        r = post_json(gw.port, "/v1/chat/completions", chat("m1"))
        assert r.status == 200, r.describe()
        r = post_json(gw.port, "/v1/chat/completions", chat("m1"), headers=_fault("race",
                      **{"x-request-id": "race-" + mode}))
        assert r.status == 200, "%s: the request whose pooled connection the backend closed: %s" % (
            mode, r.describe())
        seen = [(q.conn, q.nth) for q in fake.requests()]
        # 1: the first request; 2: the race (sent on the pooled connection, not answered); 3: the
        # retry on a fresh connection, answered. The backend answered (generated) once per request.
        assert seen == [(1, 1), (1, 2), (2, 1)], "%s: the fake saw requests on (conn, nth) %r" % (mode, seen)
        ln = access_line(gw, "race-" + mode)
        assert (ln["status"], ln["code"]) == (200, None), ln
        gw.stop()
        fake.close()


def _bound_script(req, fake):
    if req.header("x-fault") == "warm":
        return [("sleep", 0.5), json_answer()]
    if req.nth >= 2:
        return ["close"]
    return [json_answer()]


def test_stale_retry_is_bounded_to_one_fresh_connection():
    """Pooled connections (four concurrent requests open up to four), and a backend that closes
    every reused connection a request comes on: the request is sent once on a pooled connection,
    then once on a fresh one (answered), never walked through every pooled connection."""
    fake = RawBackend(_bound_script)
    gw = _gw(fake.port)
    out = []
    ts = [threading.Thread(target=lambda: out.append(
        post_json(gw.port, "/v1/chat/completions", chat("m1"), headers=_fault("warm")))) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    assert [r.status for r in out] == [200] * 4, out
    pooled = fake.nconns()
    assert pooled >= 2, "4 concurrent requests used %d connection(s): nothing to walk through" % pooled
    r = post_json(gw.port, "/v1/chat/completions", chat("m1"), headers=_fault("stale"))
    assert r.status == 200, r.describe()
    sent = [(q.conn, q.nth) for q in fake.requests() if q.header("x-fault") == "stale"]
    assert len(sent) == 2 and sent[0][1] == 2 and sent[1] == (pooled + 1, 1), (
        "with %d pooled connections the request was sent on (conn, nth) %r: expected one pooled "
        "connection, then a fresh one" % (pooled, sent))


def _answer_began_script(kind):
    def script(req, fake):
        if req.nth >= 2 and req.header("x-fault") == "began":
            if kind == "head":
                return [b"HTTP/1.1 200 OK\r\nContent-Type: applic", ("sleep", 0.05), "reset"]
            return [SSE_HEAD + chunk(TOKEN_EVENT), ("sleep", 0.05), "reset"]
        return [json_answer()]
    return script


def test_reset_after_the_answer_began_is_not_retried():
    """On a reused connection, the backend begins its answer (part of the head; or the head and an
    event of a stream) and then resets: not retried (the backend was generating). The client gets
    502 upstream_error, or the event and an error event; the fake saw the request once and no new
    connection was opened for it."""
    for kind in ("head", "event"):
        fake = RawBackend(_answer_began_script(kind))
        gw = _gw(fake.port)
        r = post_json(gw.port, "/v1/chat/completions", chat("m1"))
        assert r.status == 200, r.describe()
        if kind == "head":
            r = post_json(gw.port, "/v1/chat/completions", chat("m1"), headers=_fault("began"))
            assert_error(r, 502, "upstream_error")
        else:
            res = su.stream(gw.port, chat("m1", stream=True), _fault("began"), timeout=10)
            assert res.resp.status == 200, res.describe()
            assert su.chat_tokens(res) == ["tok0"], res.describe()
            errs = res.error_events()
            assert errs and errs[-1]["error"]["code"] == "upstream_error" and not res.complete, res.describe()
        time.sleep(0.3)
        seen = [(q.conn, q.nth) for q in fake.requests()]
        assert seen == [(1, 1), (1, 2)], "%s: retried after the answer began: (conn, nth) %r" % (kind, seen)
        assert fake.nconns() == 1, "%s: %d connections" % (kind, fake.nconns())
        gw.stop()
        fake.close()


def test_first_byte_timeout_on_a_pooled_connection_is_a_failure():
    """A reused connection on which the backend takes the request and never answers: 504
    upstream_timeout at the first-byte timeout, not retried (the backend has the request), and
    counted by passive health (max_fails 1: the backend is ejected)."""
    fake = RawBackend(lambda req, f: [] if req.header("x-fault") == "silent" else [json_answer()])
    gw = _gw(fake.port, first_byte_ms=300, pool_kw={"health": {"max_fails": 1, "fail_timeout_ms": 10000}})
    r = post_json(gw.port, "/v1/chat/completions", chat("m1"))
    assert r.status == 200, r.describe()
    r = post_json(gw.port, "/v1/chat/completions", chat("m1"), headers=_fault("silent"))
    assert_error(r, 504, "upstream_timeout")
    assert [(q.conn, q.nth) for q in fake.requests()] == [(1, 1), (1, 2)], "retried after a timeout"
    r = post_json(gw.port, "/v1/chat/completions", chat("m1"))
    assert_error(r, 503, "no_backend_available")


def _idle_close_script(req, fake):
    return [json_answer(), ("sleep", 1.0), "close"]


def test_idle_pooled_connection_closed_by_the_backend_is_closed_at_once():
    """The backend answers, then closes the kept-alive connection 1 s later while it idles in the
    gateway's pool: the gateway's socket to the backend is gone within 2 s (not left in
    CLOSE_WAIT until the connection would next be taken or its 30 s idle timer ends)."""
    fake = RawBackend(_idle_close_script)
    gw = _gw(fake.port, timeouts={"upstream_keepalive_ms": 30000})
    r = post_json(gw.port, "/v1/chat/completions", chat("m1"))
    assert r.status == 200, r.describe()
    socks = backend_sockets(gw.pid, fake.port)
    assert len(socks) == 1 and socks[0][1] == "01", "the pooled connection: %r" % socks
    closed_at = wait_for(lambda: fake.conn(1).we_closed_at, 2, interval=0.01, what="the fake to close")
    gone = wait_for(lambda: not backend_sockets(gw.pid, fake.port) and time.monotonic(), 2, interval=0.01,
                    what="the gateway's socket to the backend to go")
    assert gone - closed_at < 2.0, "the gateway closed its side %.2fs after the backend" % (gone - closed_at)
    r = post_json(gw.port, "/v1/chat/completions", chat("m1"))
    assert r.status == 200, r.describe()
    assert [(q.conn, q.nth) for q in fake.requests()] == [(1, 1), (2, 1)]


def test_idle_pooled_connection_is_closed_after_upstream_keepalive_ms():
    """A backend that keeps an idle connection open: the gateway closes its side after
    timeouts.upstream_keepalive_ms (400 ms here), not later, and the next request opens a new
    connection and is served."""
    fake = RawBackend(lambda req, fake: [json_answer()])
    gw = _gw(fake.port, timeouts={"upstream_keepalive_ms": 400})
    t_sent = time.monotonic()  # the idle timer starts after this, when the answer is in
    r = post_json(gw.port, "/v1/chat/completions", chat("m1"))
    assert r.status == 200, r.describe()
    t_answer = time.monotonic()
    gone = wait_for(lambda: not backend_sockets(gw.pid, fake.port) and time.monotonic(), 5, interval=0.02,
                    what="the idle connection to be closed")
    # Not before 400 ms after the request went out (pooled, not closed at once), and well before
    # the 4 s default would have closed it.
    assert gone - t_sent >= 0.35 and gone - t_answer < 2.0, \
        "the idle connection was closed %.2fs after the request, %.2fs after the answer" % (
            gone - t_sent, gone - t_answer)
    r = post_json(gw.port, "/v1/chat/completions", chat("m1"))
    assert r.status == 200, r.describe()
    assert [(q.conn, q.nth) for q in fake.requests()] == [(1, 1), (2, 1)]


# --------------------------------------------------------------------------- 3. error events


def _event_script(req, fake):
    name = req.header("x-fault")
    if name == "error_first":          # vLLM failing at once: head, error event, [DONE], end
        return [SSE_HEAD + chunk(ERROR_EVENT) + chunk(DONE_EVENT) + SSE_END]
    if name == "error_first_later":    # the head first, the error event 200 ms later
        return [SSE_HEAD, ("sleep", 0.2), chunk(ERROR_EVENT) + chunk(DONE_EVENT) + SSE_END]
    if name == "error_after_token":
        return [SSE_HEAD + chunk(TOKEN_EVENT), ("sleep", 0.1), chunk(ERROR_EVENT) + chunk(DONE_EVENT) + SSE_END]
    if name == "refused_first":        # the backend refuses the request in its first event
        return [SSE_HEAD + chunk(REFUSAL_EVENT) + chunk(DONE_EVENT) + SSE_END]
    if name == "refused_after_token":
        return [SSE_HEAD + chunk(TOKEN_EVENT), ("sleep", 0.1), chunk(REFUSAL_EVENT) + chunk(DONE_EVENT) + SSE_END]
    if name == "error_after_comment":  # a keep-alive comment, then the error as the first data event
        return [SSE_HEAD + chunk(b": ping\n\n"), ("sleep", 0.1), chunk(ERROR_EVENT) + chunk(DONE_EVENT) + SSE_END]
    return [SSE_HEAD + chunk(TOKEN_EVENT) + chunk(DONE_EVENT) + SSE_END]


def _event_gw(fake):
    # Passive health: two failures in a row eject the backend for 10 s.
    return _gw(fake.port, pool_kw={"health": {"max_fails": 2, "fail_timeout_ms": 10000}})


def _assert_ejected(gw, what):
    r = post_json(gw.port, "/v1/chat/completions", chat("m1", stream=True), headers=_fault("ok"))
    assert_error(r, 503, "no_backend_available")
    assert r.status == 503, "%s: two failures in a row did not eject the backend" % what


def _assert_counted_failures(gw, name, rids):
    """Each request logged 502 upstream_error, counted 502 (never 200) in the metrics, and two such
    failures in a row ejected the backend."""
    for rid in rids:
        ln = access_line(gw, rid)
        assert (ln["status"], ln["code"]) == (502, "upstream_error"), ln
    assert requests_total(gw, 502) == len(rids) and requests_total(gw, 200) == 0, "%s: metrics" % name
    _assert_ejected(gw, name)


def test_error_as_first_event_is_502():
    """The first event of a 200 stream is an error (at once, or 200 ms after the head): the client
    gets 502 upstream_error, OpenAI-shaped, not a 200; the access log says 502 upstream_error,
    gotthard_requests_total counts a 502, and two such answers in a row eject the backend (passive
    health, max_fails 2)."""
    for name in ("error_first", "error_first_later"):
        fake = RawBackend(_event_script)
        gw = _event_gw(fake)
        rids = ["%s-%d" % (name, i) for i in range(2)]
        for rid in rids:
            r = post_json(gw.port, "/v1/chat/completions", chat("m1", stream=True),
                          headers=_fault(name, **{"x-request-id": rid}))
            assert_error(r, 502, "upstream_error")
        _assert_counted_failures(gw, name, rids)
        gw.stop()
        fake.close()


def test_error_event_after_the_head_went_out_is_relayed_and_counted():
    """An error event that comes after the stream's head went to the client (after a token, or after
    a keep-alive comment): the client gets the events, an error event, [DONE] and the
    terminating chunk; the request is still counted a failure (access log and metrics 502
    upstream_error, passive health)."""
    for name in ("error_after_token", "error_after_comment"):
        fake = RawBackend(_event_script)
        gw = _event_gw(fake)
        rids = ["%s-%d" % (name, i) for i in range(2)]
        for rid in rids:
            res = su.stream(gw.port, chat("m1", stream=True), _fault(name, **{"x-request-id": rid}), timeout=10)
            assert res.resp.status == 200, res.describe()
            errs = res.error_events()
            # the gateway's own event in place of the backend's (privacy backend_errors "replace")
            assert len(errs) == 1 and errs[0]["error"]["message"] == "The backend failed during the stream.", \
                res.describe()
            assert res.events[-1] == "[DONE]" and res.complete, res.describe()
        _assert_counted_failures(gw, name, rids)
        gw.stop()
        fake.close()


def test_refusal_event_is_the_clients_error_not_the_backends():
    """An error event that refuses the request itself (vLLM's BadRequestError, code 400: a prompt
    over the context length), as a stream's first event: the client gets a 400 (the gateway's
    own OpenAI-shaped error, as for a backend's 400 to a plain request), logged 400; after a
    token it is relayed and the stream ends cleanly. Neither counts against the backend: five in
    a row (max_fails 2) and it still serves. Counted, any client could get healthy backends
    ejected by sending requests they refuse."""
    fake = RawBackend(_event_script)
    gw = _event_gw(fake)
    for i in range(5):
        rid = "refused-%d" % i
        r = post_json(gw.port, "/v1/chat/completions", chat("m1", stream=True),
                      headers=_fault("refused_first", **{"x-request-id": rid}))
        assert r.status == 400 and r.json()["error"]["type"] == "invalid_request_error", r.describe()
        assert b"context length" not in r.body, "the backend's message was relayed: %s" % r.describe()
        assert access_line(gw, rid)["status"] == 400
    res = su.stream(gw.port, chat("m1", stream=True), _fault("refused_after_token"), timeout=10)
    assert res.resp.status == 200 and len(res.error_events()) == 1 and res.complete, res.describe()
    res = su.stream(gw.port, chat("m1", stream=True), _fault("ok"), timeout=10)
    assert res.resp.status == 200 and res.complete, "the backend was ejected: %s" % res.describe()


def test_mock_error_event():
    """The same with the mock backend's x-mock-error-after (the error event vLLM sends): N = 0 with a
    TTFT of 200 ms, so that the head comes long before the event: 502 upstream_error; N = 2: 200
    with two tokens, the error event, [DONE] and the terminating chunk. Both are logged 502
    upstream_error."""
    mock = Mock(["--token-ms", "20"])
    gw = _gw(mock.port)
    r = post_json(gw.port, "/v1/chat/completions", chat("m1", stream=True),
                  headers={"x-mock-error-after": "0", "x-mock-ttft-ms": "200", "x-request-id": "mock-err-0"})
    assert_error(r, 502, "upstream_error")
    res = su.stream(gw.port, chat("m1", stream=True), {"x-mock-error-after": "2", "x-request-id": "mock-err-2"})
    assert res.resp.status == 200 and su.chat_tokens(res) == ["tok0", "tok1"], res.describe()
    assert len(res.error_events()) == 1 and res.events[-1] == "[DONE]" and res.complete, res.describe()
    for rid in ("mock-err-0", "mock-err-2"):
        ln = access_line(gw, rid)
        assert (ln["status"], ln["code"]) == (502, "upstream_error"), ln


def test_clean_streams_are_not_failures():
    """The counterpart: clean streams are 200 in the log and metrics and never eject the backend."""
    fake = RawBackend(_event_script)
    gw = _event_gw(fake)
    for i in range(3):
        su.assert_clean_stream(su.stream(gw.port, chat("m1", stream=True), _fault("ok"), timeout=10), 1)
    assert requests_total(gw, 200) == 3, "metrics"
    r = post_json(gw.port, "/v1/chat/completions", chat("m1", stream=True), headers=_fault("ok"))
    assert r.status == 200, r.describe()


if __name__ == "__main__":
    try:
        gwtest.run(globals())
    finally:
        _close_fakes()
        su.close_fakes()
