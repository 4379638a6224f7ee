"""streamutil: extra helpers for the streaming, upstream, drain, TLS and plugin tests
(python3, standard library only; 127.0.0.1 only; every socket operation has a timeout).

It builds on gwtest (Conn, Response, iter_sse ...) and adds:
  - read_stream(): read a whole SSE response, with the arrival time of every event
  - chat_tokens(): the "tokN " contents of mock chat events, to check order
  - rss_kib(pid): VmRSS of a process
  - FakeBackend: a tiny misbehaving HTTP backend (closes without answering, resets, hangs)
  - BacklogFull: a listening socket whose accept queue is full (connects to it hang)
  - connect_refused(port): True if a TCP connect to the port is refused
  - tls_client_context(cert_pem): a verifying ssl context trusting one self-signed cert
"""

import json
import os
import re
import socket
import ssl
import threading
import time

import gwtest
from gwtest import HOST, Conn, IncompleteResponse


# --------------------------------------------------------------------------- streams


class StreamResult:
    """What read_stream() saw: resp (the gwtest Response with headers, chunks, body), events
    (the data: payloads, in order), times (monotonic arrival time of each event), t0 (when the
    request was sent), complete (terminating zero chunk / clean close-delimited end), closed
    (the connection was closed by the gateway), timed_out (stopped because of the timeout)."""

    def __init__(self):
        self.resp = None
        self.events = []
        self.times = []
        self.t0 = 0.0
        self.t_head = 0.0
        self.t_end = 0.0
        self.complete = False
        self.closed = False
        self.timed_out = False

    def json_events(self):
        out = []
        for e in self.events:
            if e == "[DONE]":
                continue
            try:
                out.append(json.loads(e))
            except ValueError:
                out.append({"_unparsed": e})
        return out

    def error_events(self):
        return [j for j in self.json_events() if isinstance(j, dict) and "error" in j]

    def describe(self, limit=2):
        """A compact summary: status, headers, the number of events with the first and last few
        (each cut to 90 characters), and how the stream ended."""
        evs = [e if len(e) <= 90 else "..." + e[-75:] for e in self.events]
        if len(evs) > 2 * limit:
            evs = evs[:limit] + ["...(%d more)..." % (len(evs) - 2 * limit)] + evs[-limit:]
        return ("status %s headers [%s]; %d events %r; terminating zero chunk=%s, closed by the gateway=%s, "
                "timed out waiting=%s"
                % (self.resp.status if self.resp else None,
                   "; ".join("%s: %s" % h for h in (self.resp.headers if self.resp else [])),
                   len(self.events), evs, self.complete, self.closed, self.timed_out))


def send_stream_request(port, body, headers=None, path="/v1/chat/completions", timeout=10.0,
                        tls=False, ssl_context=None, version="HTTP/1.1", extra_lines=()):
    """Open a connection and send a POST (default: a chat completion) without reading. Returns the Conn."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    hs = [("Content-Type", "application/json")] + list((headers or {}).items()) + list(extra_lines)
    c = Conn(port, timeout=timeout, tls=tls, ssl_context=ssl_context)
    try:
        c.send(gwtest.http_request("POST", path, raw, hs, version=version))
    except Exception:
        c.close()
        raise
    return c


def read_stream(conn, timeout=10.0, event_timeout=None, t0=None, stop_after=None, on_event=None):
    """Read a streaming response on conn to its end (or stop_after events). Returns StreamResult.
    timeout bounds the whole read; event_timeout (default = timeout) bounds the wait for each event."""
    res = StreamResult()
    res.t0 = t0 if t0 is not None else time.monotonic()
    deadline = time.monotonic() + timeout
    r = conn.read_head(timeout)
    r._method = "POST"
    res.resp = r
    res.t_head = time.monotonic()
    et = event_timeout or timeout
    gen = gwtest.iter_sse(conn, r, et)
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                res.timed_out = True
                break
            try:
                ev = next(gen)
            except StopIteration:
                break
            res.events.append(ev)
            res.times.append(time.monotonic())
            if on_event:
                on_event(res, ev)
            if stop_after is not None and len(res.events) >= stop_after:
                return res
    except IncompleteResponse:
        res.timed_out = True
    res.t_end = time.monotonic()
    res.complete = bool(r.complete) and (r.chunked or not conn.reset)
    res.closed = conn.eof
    return res


def stream(port, body, headers=None, timeout=15.0, **kw):
    """Send a streaming request and read it whole. Returns StreamResult (connection closed after)."""
    t0 = time.monotonic()
    c = send_stream_request(port, body, headers, timeout=timeout, **kw)
    try:
        res = read_stream(c, timeout=timeout, t0=t0)
        if res.complete and res.resp.chunked:
            # keep-alive after a clean chunked end: the connection must still be open
            res.closed = not c.is_open(0.05)
        return res
    finally:
        c.close()


def chat_tokens(res):
    """The concatenated delta contents (or completion texts) of a StreamResult's events, split into tokens."""
    toks = []
    for j in res.json_events():
        for ch in (j.get("choices") or []) if isinstance(j, dict) else []:
            t = None
            if isinstance(ch.get("delta"), dict):
                t = ch["delta"].get("content")
            elif "text" in ch:
                t = ch.get("text")
            if t:
                toks.extend(t.split())
    return toks


def expected_tokens(n):
    return ["tok%d" % i for i in range(n)]


def assert_clean_stream(res, ntokens, what="stream"):
    """A complete, well-formed chat stream of ntokens mock tokens: 200, event-stream, chunked,
    every token in order, [DONE] last, the terminating zero chunk."""
    r = res.resp
    assert r.status == 200, "%s: expected 200, got %s" % (what, res.describe())
    ct = (r.header("content-type") or "").lower()
    assert ct.startswith("text/event-stream"), "%s: content-type %r, expected text/event-stream; %s" % (
        what, ct, res.describe())
    assert not res.timed_out, "%s: timed out before the end; %s" % (what, res.describe())
    toks = chat_tokens(res)
    assert toks == expected_tokens(ntokens), "%s: tokens out of order or missing: got %d tokens %r...; %s" % (
        what, len(toks), toks[:12], res.describe())
    assert res.events and res.events[-1] == "[DONE]", "%s: last event is not [DONE]; %s" % (what, res.describe())
    assert not res.error_events(), "%s: error event in a healthy stream; %s" % (what, res.describe())
    if r.version == "HTTP/1.1":
        assert r.chunked, "%s: HTTP/1.1 stream without transfer-encoding: chunked; %s" % (what, res.describe())
        assert res.complete, "%s: no terminating zero chunk; %s" % (what, res.describe())


def dechunk(body):
    """Decode a whole chunked body (bytes after the head) in linear time.
    Returns (data, complete): complete is True if the terminating zero chunk (and its CRLF) is there.
    Raises AssertionError on bad framing."""
    out = []
    i, n = 0, len(body)
    while True:
        j = body.find(b"\r\n", i)
        if j < 0:
            return b"".join(out), False
        size_txt = body[i:j].split(b";", 1)[0].strip()
        if not re.fullmatch(rb"[0-9a-fA-F]+", size_txt):
            raise AssertionError("malformed chunk size line at byte %d: %r" % (i, body[i:j][:80]))
        size = int(size_txt, 16)
        if size == 0:
            return b"".join(out), body.find(b"\r\n\r\n", j) >= 0   # the empty line after (trailers)
        if j + 2 + size + 2 > n:
            out.append(body[j + 2:j + 2 + size])
            return b"".join(out), False
        if body[j + 2 + size:j + 4 + size] != b"\r\n":
            raise AssertionError("chunk data not followed by CRLF at byte %d" % (j + 2 + size))
        out.append(body[j + 2:j + 2 + size])
        i = j + 4 + size


# --------------------------------------------------------------------------- processes


def rss_kib(pid):
    """VmRSS of pid in KiB (0 if it cannot be read)."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for ln in f:
                if ln.startswith("VmRSS:"):
                    return int(ln.split()[1])
    except OSError:
        pass
    return 0


def wait_exit(proc, timeout):
    """Wait up to timeout for a Popen to exit: returns (exit code or None, seconds waited)."""
    t0 = time.monotonic()
    try:
        rc = proc.wait(timeout=timeout)
    except Exception:
        rc = None
    return rc, time.monotonic() - t0


def wait_service_exit(svc, timeout):
    """Wait up to timeout for a gwtest Service (e.g. a Gateway sent SIGTERM by the test) to exit.
    Returns (exit code or None, seconds waited). If it exited, it is marked stopped, so the harness
    does not report it as an unexpected death."""
    rc, dt = wait_exit(svc.proc, timeout)
    if rc is not None:
        svc.stop()
    return rc, dt


def connect_refused(port, timeout=0.5):
    """True if a TCP connect to 127.0.0.1:port is refused (or reset at once); False if it is accepted."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((HOST, port))
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    except socket.timeout:
        return False
    finally:
        s.close()
    return False


def closed_port():
    """A port on 127.0.0.1 where nothing listens (connect is refused)."""
    for _ in range(20):
        p = gwtest.free_port()
        if connect_refused(p):
            return p
    raise AssertionError("could not find a closed port")


# --------------------------------------------------------------------------- fake backends


class FakeBackend:
    """A minimal HTTP backend on 127.0.0.1 run in a thread, for faults the mock cannot make on one
    backend alone. mode: "close" (read the request, close without a byte), "reset" (read, then RST),
    "hang" (read, never answer), "ok" (answer a small chat completion). GET /health is always answered
    200 so health checks (if any) keep it in the pool. .requests is the list of (method, path) seen;
    .connections the number accepted. Stop with .close() (also done at exit)."""

    def __init__(self, mode="close"):
        self.mode = mode
        self.requests = []
        self.connections = 0
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopped = False
        self.conns = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        _fakes.append(self)

    def api_requests(self):
        with self.lock:
            return [r for r in self.requests if r[1] != "/health"]

    def _serve(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            with self.lock:
                self.connections += 1
                self.conns.append(c)
            threading.Thread(target=self._handle, args=(c,), daemon=True).start()

    def _handle(self, c):
        c.settimeout(5.0)
        buf = b""
        try:
            while not self.stopped:
                while b"\r\n\r\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                head, buf = buf.split(b"\r\n\r\n", 1)
                lines = head.split(b"\r\n")
                parts = lines[0].split(b" ")
                method, path = parts[0].decode("latin-1"), parts[1].decode("latin-1") if len(parts) > 1 else ""
                n = 0
                for ln in lines[1:]:
                    k, _, v = ln.partition(b":")
                    if k.strip().lower() == b"content-length":
                        n = int(v.strip())
                while len(buf) < n:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                buf = buf[n:]
                with self.lock:
                    self.requests.append((method, path))
                if path == "/health":
                    body = b'{"status":"ok"}'
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                              % (len(body), body))
                    continue
                if self.mode == "close":
                    return
                if self.mode == "reset":
                    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    return
                if self.mode == "hang":
                    while not self.stopped:
                        try:
                            if not c.recv(65536):
                                return
                        except socket.timeout:
                            continue
                    return
                body = json.dumps({"id": "fake", "object": "chat.completion", "model": "m1",
                                   "choices": [{"index": 0, "message": {"role": "assistant", "content": "fake"},
                                                "finish_reason": "stop"}],
                                   "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                          % (len(body), body))
        except OSError:
            return
        finally:
            try:
                c.close()
            except OSError:
                pass

    def close(self):
        self.stopped = True
        try:
            self.sock.close()
        except OSError:
            pass
        with self.lock:
            for c in self.conns:
                try:
                    c.close()
                except OSError:
                    pass


_fakes = []


class BacklogFull:
    """A listening socket that never accepts, with its accept queue filled, so that a new TCP connect
    to it hangs (the kernel drops the SYN). .port; .ok tells whether the trick worked here (a probe
    connect did not complete within probe_s). Close with .close()."""

    def __init__(self, probe_s=0.3):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((HOST, 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.fillers = []
        self.ok = False
        for _ in range(8):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect((HOST, self.port))
            except BlockingIOError:
                pass
            except OSError:
                s.close()
                break
            t_end = time.monotonic() + probe_s
            done = False
            while time.monotonic() < t_end:
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    break
                try:
                    s.getpeername()
                    done = True
                    break
                except OSError:
                    time.sleep(0.01)
            if done:
                self.fillers.append(s)
                continue
            s.close()   # this connect hangs: the queue is full
            self.ok = True
            break
        _fakes.append(self)

    def close(self):
        for s in self.fillers:
            try:
                s.close()
            except OSError:
                pass
        try:
            self.sock.close()
        except OSError:
            pass


def close_fakes():
    for f in list(_fakes):
        f.close()
    del _fakes[:]


import atexit  # noqa: E402
atexit.register(close_fakes)


# --------------------------------------------------------------------------- TLS


def tls_client_context(cert_pem, minimum=None, maximum=None):
    """An ssl context that verifies the gateway against one self-signed cert (host name localhost)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=cert_pem.decode() if isinstance(cert_pem, bytes) else cert_pem)
    ctx.check_hostname = True
    if minimum is not None:
        ctx.minimum_version = minimum
    if maximum is not None:
        ctx.maximum_version = maximum
    return ctx
