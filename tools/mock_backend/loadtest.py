#!/usr/bin/env python3
"""Load check for gotthard-mock-backend (python3 standard library only).

  loadtest.py --port P [--streams 1000] [--tokens 250] [--token-ms 20] [--ttft-ms 0] [--pid PID]

Opens --streams connections at once, each sending one streamed chat completion
(token timing set per request with x-mock-* headers), reads every stream to
its end with epoll and prints: events per second, per-stream duration against
the ideal (ttft + (tokens-1) * token-ms), the largest gap between two events
of one stream, the durations the mock itself recorded (/_mock/requests; the
record is reset first), and, given --pid, the CPU the mock used over the run.
Run it on another CPU than the mock (taskset -c 1 ...) or it measures itself.
"""
import argparse
import json
import os
import resource
import select
import socket
import sys
import time
import urllib.request


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(sorted_vals, p):
    if not sorted_vals:
        return float("nan")
    return sorted_vals[min(len(sorted_vals) - 1, int(len(sorted_vals) * p / 100))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--tokens", type=int, default=250)
    ap.add_argument("--token-ms", type=int, default=20)
    ap.add_argument("--ttft-ms", type=int, default=0)
    ap.add_argument("--pid", type=int)
    a = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    body = b'{"model":"mock-model","stream":true,"messages":[{"role":"user","content":"hi"}]}'
    req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: mock\r\nContent-Type: application/json\r\n"
           b"x-mock-tokens: %d\r\nx-mock-token-ms: %d\r\nx-mock-ttft-ms: %d\r\n"
           b"Content-Length: %d\r\n\r\n%s" % (a.tokens, a.token_ms, a.ttft_ms, len(body), body))

    base = "http://%s:%d" % (a.host, a.port)
    urllib.request.urlopen(urllib.request.Request(base + "/_mock/reset", data=b"")).read()
    ep = select.epoll()
    conns = {}
    for _ in range(a.streams):
        s = socket.create_connection((a.host, a.port))
        s.setblocking(False)
        conns[s.fileno()] = {"s": s, "tail": b"", "events": 0, "first": None, "last": None,
                             "maxgap": 0.0, "end": None, "t0": None}
        ep.register(s.fileno(), select.EPOLLIN)

    cpu0 = cpu_seconds(a.pid) if a.pid else None
    t_start = time.perf_counter()
    for c in conns.values():
        c["t0"] = time.perf_counter()
        c["s"].sendall(req)

    per_second = {}
    open_n = len(conns)
    while open_n:
        for fd, _ in ep.poll(5.0):
            c = conns[fd]
            try:
                data = c["s"].recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            now = time.perf_counter()
            if not data:
                c["end"] = c["end"] or now
                ep.unregister(fd)
                open_n -= 1
                continue
            buf = c["tail"] + data
            n = buf.count(b"data: ")
            if n:
                if c["first"] is None:
                    c["first"] = now
                elif now - c["last"] > c["maxgap"]:
                    c["maxgap"] = now - c["last"]
                c["last"] = now
                c["events"] += n
                sec = int(now - t_start)
                per_second[sec] = per_second.get(sec, 0) + n
            if buf.endswith(b"\r\n0\r\n\r\n"):
                c["end"] = now
                ep.unregister(fd)
                open_n -= 1
            c["tail"] = buf[-5:]
    t_end = time.perf_counter()
    cpu1 = cpu_seconds(a.pid) if a.pid else None

    expect_events = a.tokens + 2  # tokens, the finish chunk, [DONE]
    ok = sum(1 for c in conns.values() if c["events"] == expect_events and c["end"])
    ideal = (a.ttft_ms + (a.tokens - 1) * a.token_ms) / 1000.0
    durs = sorted(c["end"] - c["t0"] for c in conns.values() if c["end"])
    ttfts = sorted(c["first"] - c["t0"] for c in conns.values() if c["first"])
    gaps = sorted(c["maxgap"] for c in conns.values())
    total = sum(c["events"] for c in conns.values())
    wall = t_end - t_start
    full = [v for k, v in sorted(per_second.items())][1:-1] or list(per_second.values())
    print("streams %d, complete and correct %d, events %d in %.2f s" % (a.streams, ok, total, wall))
    print("events/s: overall %.0f, per full second min %d median %d max %d (ideal %.0f)" % (
        total / wall, min(full), sorted(full)[len(full) // 2], max(full),
        a.streams * 1000.0 / a.token_ms if a.token_ms else float("inf")))
    print("ttft s: p50 %.4f p99 %.4f max %.4f (ideal %.3f)" % (
        pct(ttfts, 50), pct(ttfts, 99), ttfts[-1], a.ttft_ms / 1000.0))
    print("stream duration s: p50 %.3f p99 %.3f max %.3f (ideal %.3f)" % (
        pct(durs, 50), pct(durs, 99), durs[-1], ideal))
    print("largest gap between events of one stream, ms: p50 %.1f p99 %.1f max %.1f (token-ms %d)"
          % (pct(gaps, 50) * 1000, pct(gaps, 99) * 1000, gaps[-1] * 1000, a.token_ms))
    with urllib.request.urlopen(base + "/_mock/requests") as r:
        rec = json.load(r)
    sdur = sorted((e["ended_ms"] - e["started_ms"]) / 1000.0 for e in rec if e["ended_ms"] is not None)
    if sdur:
        print("stream duration on the mock's clock (record) s: p50 %.3f p99 %.3f max %.3f" % (
            pct(sdur, 50), pct(sdur, 99), sdur[-1]))
    if a.pid:
        print("mock CPU: %.2f s over %.2f s wall = %.0f%% of one core" % (
            cpu1 - cpu0, wall, 100.0 * (cpu1 - cpu0) / wall))
    for c in conns.values():
        c["s"].close()
    return 0 if ok == a.streams else 1


if __name__ == "__main__":
    sys.exit(main())
