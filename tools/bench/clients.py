#!/usr/bin/env python3
"""Load clients for tools/bench (python3 standard library only).

  clients.py stream --host H --port P --conns C --duration S --tokens N [--model M]
      C concurrent connections; each sends streamed chat completions one after
      another (keep-alive) until S seconds have passed, and checks that every
      event of every stream arrives complete and in order: the content of the
      data events is tok<k> with k increasing by one, exactly N of them, and the
      stream ends with `data: [DONE]` and a complete HTTP body.
      Prints one JSON line with the results.

  clients.py idle --host H --port P --conns N [--path /v1/models] [--hold S]
      Opens N keep-alive connections, each sends one request and reads the
      answer, then stays idle.  Prints {"phase":"ready",...} once all are
      open, waits for a line on stdin (or --hold seconds), prints
      {"phase":"done",...} with how many are still open, and exits.
"""
import argparse
import asyncio
import json
import re
import resource
import socket
import sys
import time


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def pct(sorted_vals, p):
    if not sorted_vals:
        return None
    k = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


CONTENT_RE = re.compile(rb'"content"\s*:\s*"([^"]*)"')
TOK_RE = re.compile(rb'tok(\d+)')


class StreamRun:
    def __init__(self, args):
        self.args = args
        self.deadline = 0.0
        self.ttfts = []          # seconds
        self.gaps = []           # seconds
        self.events = 0          # data events received (incl. [DONE])
        self.tokens = 0          # content events received
        self.streams_ok = 0
        self.streams_failed = 0
        self.errors = {}         # message -> count
        self.examples = []
        self.conns_opened = 0
        self.status_counts = {}
        body = json.dumps({"model": args.model, "stream": True,
                           "messages": [{"role": "user", "content": "hello"}]},
                          separators=(",", ":")).encode()
        self.request = (b"POST /v1/chat/completions HTTP/1.1\r\n"
                        b"Host: " + args.host.encode() + b":" + str(args.port).encode() + b"\r\n"
                        b"Content-Type: application/json\r\n"
                        b"Accept: text/event-stream\r\n"
                        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        self.active = set()

    def error(self, msg):
        self.errors[msg] = self.errors.get(msg, 0) + 1


class StreamConn(asyncio.Protocol):
    def __init__(self, run):
        self.run = run
        self.transport = None
        self.closed = False
        self.must_close = False
        self.waiter = None
        self.last_data = time.monotonic()

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # -- one stream ---------------------------------------------------------
    def start(self):
        loop = asyncio.get_running_loop()
        self.waiter = loop.create_future()
        self.head = bytearray()
        self.in_body = False
        self.status = 0
        self.chunked = False
        self.clen = None
        self.body_read = 0
        self.cbuf = bytearray()      # undecoded chunked bytes
        self.chunk_left = 0          # data bytes left in the current chunk
        self.need_crlf = False       # the CRLF after a chunk's data is due
        self.sse = bytearray()
        self.next_tok = None
        self.ntok = 0
        self.done_seen = False
        self.body_complete = False
        self.t_send = time.perf_counter()
        self.t_last = None
        self.last_data = time.monotonic()
        self.run.active.add(self)
        self.transport.write(self.run.request)
        return self.waiter

    def finish(self, err=None):
        if self.waiter is None or self.waiter.done():
            return
        self.run.active.discard(self)
        if err is None:
            self.run.streams_ok += 1
        else:
            self.run.streams_failed += 1
            self.run.error(err)
            self.must_close = True
        self.waiter.set_result(err is None)

    def fail(self, err):
        self.finish(err)
        if self.transport is not None:
            self.transport.close()

    # -- parsing ------------------------------------------------------------
    def data_received(self, data):
        self.last_data = time.monotonic()
        if self.waiter is None or self.waiter.done():
            if data:
                self.run.error("unexpected bytes between responses")
                self.must_close = True
            return
        if not self.in_body:
            self.head += data
            i = self.head.find(b"\r\n\r\n")
            if i < 0:
                if len(self.head) > 65536:
                    self.fail("response head too large")
                return
            head = bytes(self.head[:i]).decode("latin-1")
            rest = bytes(self.head[i + 4:])
            self.in_body = True
            lines = head.split("\r\n")
            try:
                self.status = int(lines[0].split(" ")[1])
            except (IndexError, ValueError):
                self.fail("bad status line")
                return
            self.run.status_counts[self.status] = self.run.status_counts.get(self.status, 0) + 1
            for line in lines[1:]:
                k, _, v = line.partition(":")
                k = k.strip().lower()
                v = v.strip().lower()
                if k == "transfer-encoding" and v == "chunked":
                    self.chunked = True
                elif k == "content-length":
                    self.clen = int(v)
                elif k == "connection" and "close" in v:
                    self.must_close = True
            if self.status != 200:
                self.fail("HTTP status %d" % self.status)
                return
            if not self.chunked and self.clen is None:
                self.must_close = True   # close-delimited body
            data = rest
            if not data:
                return
        if self.chunked:
            self.feed_chunked(data)
        else:
            if self.clen is not None:
                self.body_read += len(data)
                if self.body_read > self.clen:
                    self.fail("more body bytes than Content-Length")
                    return
            self.feed_sse(data)
            if self.clen is not None and self.body_read == self.clen:
                self.body_complete = True
                self.end_of_body()

    def feed_chunked(self, data):
        buf = self.cbuf
        buf += data
        pos = 0
        n = len(buf)
        out = []
        while pos < n:
            if self.chunk_left > 0:
                d = min(self.chunk_left, n - pos)
                out.append(bytes(buf[pos:pos + d]))
                self.chunk_left -= d
                pos += d
                if self.chunk_left == 0:
                    self.need_crlf = True
                continue
            if self.need_crlf:
                if n - pos < 2:
                    break
                if buf[pos:pos + 2] != b"\r\n":
                    self.cbuf = bytearray()
                    self.fail("bad chunk terminator")
                    return
                pos += 2
                self.need_crlf = False
                continue
            j = buf.find(b"\r\n", pos)
            if j < 0:
                break
            line = bytes(buf[pos:j]).split(b";")[0].strip()
            try:
                size = int(line, 16)
            except ValueError:
                self.cbuf = bytearray()
                self.fail("bad chunk size line")
                return
            if size == 0:
                # last chunk; expect an empty trailer section
                k = buf.find(b"\r\n", j + 2)
                if k < 0:
                    break
                if k != j + 2:
                    k = buf.find(b"\r\n\r\n", j + 2)
                    if k < 0:
                        break
                    k += 2
                pos = k + 2
                if out:
                    self.feed_sse(b"".join(out))
                    out = []
                self.body_complete = True
                if pos < n:
                    self.run.error("bytes after the end of the response")
                    self.must_close = True
                self.cbuf = bytearray()
                self.end_of_body()
                return
            pos = j + 2
            self.chunk_left = size
        self.cbuf = buf[pos:]
        if out:
            self.feed_sse(b"".join(out))

    def feed_sse(self, data):
        if self.waiter is None or self.waiter.done():
            return
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        sse = self.sse
        sse += data
        start = 0
        now = None
        run = self.run
        while True:
            i = sse.find(b"\n\n", start)
            if i < 0:
                break
            ev = bytes(sse[start:i])
            start = i + 2
            payload = None
            for line in ev.split(b"\n"):
                if line.startswith(b"data:"):
                    p = line[5:]
                    if p.startswith(b" "):
                        p = p[1:]
                    payload = p if payload is None else payload + b"\n" + p
            if payload is None:
                continue   # comment or keep-alive event
            if now is None:
                now = time.perf_counter()
            run.events += 1
            if self.done_seen:
                self.fail("data event after [DONE]")
                return
            if payload == b"[DONE]":
                self.done_seen = True
                continue
            if payload.startswith(b'{"error"') or b'"error":' in payload[:40]:
                self.fail("error event in stream")
                return
            m = CONTENT_RE.search(payload)
            if not m or not m.group(1):
                continue   # role-only, finish_reason or usage chunk
            t = TOK_RE.search(m.group(1))
            if not t:
                self.fail("content without tokN")
                return
            k = int(t.group(1))
            if self.next_tok is None:
                if k not in (0, 1):
                    self.fail("first token is tok%d" % k)
                    return
            elif k != self.next_tok:
                self.fail("token out of order")
                return
            self.next_tok = k + 1
            self.ntok += 1
            run.tokens += 1
            if self.t_last is None:
                run.ttfts.append(now - self.t_send)
            else:
                run.gaps.append(now - self.t_last)
            self.t_last = now
        if start:
            del sse[:start]

    def end_of_body(self):
        if not self.done_seen:
            self.fail("body ended without [DONE] after %s tokens" % ("<10" if self.ntok < 10 else "some"))
        elif self.ntok != self.run.args.tokens:
            self.fail("wrong token count")
        elif self.sse.strip():
            self.fail("partial event at end of body")
        else:
            self.finish(None)

    def connection_lost(self, exc):
        self.closed = True
        self.run.active.discard(self)
        if self.waiter is not None and not self.waiter.done():
            if self.in_body and not self.chunked and self.clen is None:
                self.body_complete = True
                self.end_of_body()
            else:
                self.finish("connection closed mid-stream" if self.in_body else
                            "connection closed before response")


async def stream_slot(run, loop):
    conn = None
    while time.monotonic() < run.deadline:
        if conn is None or conn.closed or conn.must_close:
            if conn is not None and not conn.closed:
                conn.transport.close()
            try:
                _, conn = await asyncio.wait_for(
                    loop.create_connection(lambda: StreamConn(run), run.args.host, run.args.port), 10)
                run.conns_opened += 1
            except (OSError, asyncio.TimeoutError) as e:
                run.error("connect: %s" % (type(e).__name__,))
                conn = None
                await asyncio.sleep(0.2)
                continue
        await conn.start()
    if conn is not None and not conn.closed:
        conn.transport.close()


async def watchdog(run, stall):
    while True:
        await asyncio.sleep(1.0)
        now = time.monotonic()
        for c in list(run.active):
            if now - c.last_data > stall:
                c.fail("stalled: no bytes for %ds" % stall)


async def stream_main(args):
    raise_nofile()
    loop = asyncio.get_running_loop()
    run = StreamRun(args)
    t0 = time.perf_counter()
    run.deadline = time.monotonic() + args.duration
    wd = asyncio.ensure_future(watchdog(run, args.stall))
    slots = [asyncio.ensure_future(stream_slot(run, loop)) for _ in range(args.conns)]
    done, pending = await asyncio.wait(slots, timeout=args.duration + args.stall + 30)
    for c in list(run.active):
        c.fail("run deadline passed")
    for p in pending:
        p.cancel()
    wd.cancel()
    wall = time.perf_counter() - t0
    run.ttfts.sort()
    run.gaps.sort()
    ms = lambda v: None if v is None else round(v * 1000.0, 3)
    out = {
        "conns": args.conns, "wall_s": round(wall, 3),
        "streams_ok": run.streams_ok, "streams_failed": run.streams_failed,
        "events": run.events, "tokens": run.tokens,
        "events_per_s": round(run.events / wall, 1),
        "ttft_p50_ms": ms(pct(run.ttfts, 50)), "ttft_p99_ms": ms(pct(run.ttfts, 99)),
        "gap_p50_ms": ms(pct(run.gaps, 50)), "gap_p99_ms": ms(pct(run.gaps, 99)),
        "gap_max_ms": ms(run.gaps[-1] if run.gaps else None),
        "conns_opened": run.conns_opened,
        "status_counts": {str(k): v for k, v in run.status_counts.items()},
        "errors": run.errors,
        "pending_slots": len(pending),
    }
    print(json.dumps(out), flush=True)


# -- idle connections ---------------------------------------------------------

class IdleConn(asyncio.Protocol):
    def __init__(self, st, req):
        self.st = st
        self.req = req
        self.buf = bytearray()
        self.answered = False
        self.closed = False
        self.fut = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.req)

    def data_received(self, data):
        if self.answered:
            self.st["unexpected_bytes"] += 1
            return
        self.buf += data
        i = self.buf.find(b"\r\n\r\n")
        if i < 0:
            return
        head = bytes(self.buf[:i]).decode("latin-1").lower()
        body = len(self.buf) - i - 4
        m = re.search(r"content-length:\s*(\d+)", head)
        if m:
            complete = body >= int(m.group(1))
        elif "chunked" in head:
            complete = self.buf.endswith(b"0\r\n\r\n")
        else:
            complete = True
        if complete:
            self.answered = True
            try:
                status = int(head.split(" ")[1])
            except (IndexError, ValueError):
                status = 0
            self.st["status"][status] = self.st["status"].get(status, 0) + 1
            self.buf = bytearray()
            if not self.fut.done():
                self.fut.set_result(status)

    def connection_lost(self, exc):
        self.closed = True
        if not self.fut.done():
            self.fut.set_result(-1)


async def idle_main(args):
    nofile = raise_nofile()
    loop = asyncio.get_running_loop()
    st = {"status": {}, "unexpected_bytes": 0, "errors": {}}
    req = ("GET %s HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (args.path, args.host, args.port)).encode()
    conns = []
    sem = asyncio.Semaphore(args.parallel)
    t0 = time.monotonic()

    async def one():
        async with sem:
            try:
                _, c = await asyncio.wait_for(
                    loop.create_connection(lambda: IdleConn(st, req), args.host, args.port), 15)
            except (OSError, asyncio.TimeoutError) as e:
                k = "connect: %s" % type(e).__name__
                st["errors"][k] = st["errors"].get(k, 0) + 1
                return
            conns.append(c)
            try:
                await asyncio.wait_for(asyncio.shield(c.fut), 15)
            except asyncio.TimeoutError:
                st["errors"]["no answer"] = st["errors"].get("no answer", 0) + 1

    await asyncio.wait([asyncio.ensure_future(one()) for _ in range(args.conns)],
                       timeout=args.open_timeout)
    await asyncio.sleep(1.0)
    ok = sum(1 for c in conns if c.answered and not c.closed)
    print(json.dumps({"phase": "ready", "nofile": nofile, "opened": len(conns),
                      "answered_and_open": ok, "open_s": round(time.monotonic() - t0, 2),
                      "status": {str(k): v for k, v in st["status"].items()},
                      "errors": st["errors"]}), flush=True)
    # wait for the parent to finish measuring (a line on stdin), bounded
    try:
        await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), args.hold)
    except asyncio.TimeoutError:
        pass
    still = sum(1 for c in conns if not c.closed)
    print(json.dumps({"phase": "done", "still_open": still,
                      "unexpected_bytes": st["unexpected_bytes"]}), flush=True)
    for c in conns:
        c.transport.close()
    await asyncio.sleep(0.2)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stream")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--conns", type=int, default=100)
    s.add_argument("--duration", type=float, default=10)
    s.add_argument("--tokens", type=int, default=50)
    s.add_argument("--model", default="bench-model")
    s.add_argument("--stall", type=int, default=20)
    i = sub.add_parser("idle")
    i.add_argument("--host", default="127.0.0.1")
    i.add_argument("--port", type=int, required=True)
    i.add_argument("--conns", type=int, default=10000)
    i.add_argument("--path", default="/v1/models")
    i.add_argument("--parallel", type=int, default=100)
    i.add_argument("--open-timeout", type=float, default=120)
    i.add_argument("--hold", type=float, default=120)
    args = ap.parse_args()
    if args.cmd == "stream":
        asyncio.run(stream_main(args))
    else:
        asyncio.run(idle_main(args))


if __name__ == "__main__":
    main()
