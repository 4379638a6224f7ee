"""Streaming (server-sent events) through the gateway: relayed event by event and unbuffered, in
order, to a clean end; client disconnect cancels the backend request; a backend that dies mid-stream
ends the client's stream with an error event and no clean end; slow clients get backpressure with
bounded gateway memory; HTTP/1.0 streams end with the close."""

import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from gwtest import Mock, Gateway, Shared, gateway_config, chat, post_json  # noqa: E402
import streamutil as su  # noqa: E402


def _env():
    mock = Mock()
    gw = Gateway(gateway_config([mock.port], timeouts={"drain_ms": 2000}))
    return mock, gw


ENV = Shared(_env)


def _hdr(**kw):
    return {"x-mock-" + k.replace("_", "-"): str(v) for k, v in kw.items()}


def test_stream_framing_order_and_clean_end():
    mock, gw = ENV.get()
    res = su.stream(gw.port, chat("m1", stream=True), _hdr(tokens=25, token_ms=5))
    su.assert_clean_stream(res, 25)
    r = res.resp
    assert r.header("x-request-id"), "stream response without x-request-id: %s" % res.describe()
    assert r.header("content-length") is None, "stream response has content-length: %s" % res.describe()
    assert r.chunks[-1:] and b"[DONE]" in r.chunks[-1], "last data chunk does not carry [DONE]: %r" % r.chunks[-3:]
    # the first event carries the role, like OpenAI
    first = res.json_events()[0]
    assert first["choices"][0]["delta"].get("role") == "assistant", "first event: %r" % first
    assert not res.closed, "gateway closed a keep-alive connection after a clean stream: %s" % res.describe()


def test_stream_is_relayed_unbuffered():
    """token-ms 200, 8 tokens: the first event must reach the client long before the last one is
    even produced by the backend (~1.4 s later)."""
    mock, gw = ENV.get()
    res = su.stream(gw.port, chat("m1", stream=True), _hdr(tokens=8, token_ms=200), timeout=15)
    su.assert_clean_stream(res, 8)
    first = res.times[0] - res.t0
    last_tok = res.times[7] - res.t0
    assert first < 1.0, "first event took %.2fs (backend sent it at once): gateway buffers? %s" % (first, res.describe())
    assert last_tok >= 1.3, "last token arrived at %.2fs, before the backend could produce it?" % last_tok
    # each token i arrives about i * 200 ms after the first, not much later (no batching); timed
    # from the first event, so that a slow connect or first token does not count
    for i in range(8):
        at = res.times[i] - res.times[0]
        assert at < i * 0.2 + 0.35, "token %d arrived %.2fs after the first, expected about %.2fs: events are " \
            "batched; times %r" % (i, at, i * 0.2, [round(t - res.t0, 2) for t in res.times])


def test_stream_event_per_chunk_granularity():
    """With a token every 100 ms, each event arrives in its own read: no two token events arrive
    together (a relay that waits for more data would merge them)."""
    mock, gw = ENV.get()
    res = su.stream(gw.port, chat("m1", stream=True), _hdr(tokens=6, token_ms=100))
    su.assert_clean_stream(res, 6)
    gaps = [res.times[i + 1] - res.times[i] for i in range(5)]
    merged = [g for g in gaps if g < 0.04]
    assert len(merged) <= 1, "token events arrived together (gaps %r): relay is not event by event" % (
        [round(g, 3) for g in gaps],)


def test_completions_stream_and_usage_chunk():
    mock, gw = ENV.get()
    res = su.stream(gw.port, {"model": "m1", "prompt": "one two three", "stream": True,
                              "stream_options": {"include_usage": True}},
                    _hdr(tokens=7), path="/v1/completions")
    r = res.resp
    assert r.status == 200 and r.chunked and res.complete, res.describe()
    assert su.chat_tokens(res) == su.expected_tokens(7), res.describe()
    usage = [j for j in res.json_events() if j.get("usage")]
    assert usage and usage[-1]["usage"]["completion_tokens"] == 7, "no usage chunk: %s" % res.describe()
    assert res.events[-1] == "[DONE]", res.describe()


def test_stream_then_next_request_on_same_connection():
    mock, gw = ENV.get()
    c = su.send_stream_request(gw.port, chat("m1", stream=True), _hdr(tokens=5))
    try:
        res = su.read_stream(c, timeout=10)
        su.assert_clean_stream(res, 5)
        c.send(gwtest.http_request("POST", "/v1/chat/completions", chat("m1"),
                                   [("Content-Type", "application/json")]))
        r2 = c.read_response(10)
        assert r2.status == 200, "second request on the connection after a stream: %s" % r2.describe()
        assert r2.json()["object"] == "chat.completion", r2.describe()
    finally:
        c.close()


def test_many_concurrent_streams_in_order():
    mock, gw = ENV.get()
    n, ntok = 40, 20
    results = [None] * n
    errors = []

    def one(i):
        try:
            results[i] = su.stream(gw.port, chat("m1", stream=True), _hdr(tokens=ntok, token_ms=20), timeout=30)
        except Exception as ex:  # noqa: BLE001
            errors.append("stream %d: %r" % (i, ex))

    ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(40)
    assert not errors, errors[:5]
    for i, res in enumerate(results):
        assert res is not None, "stream %d did not finish" % i
        su.assert_clean_stream(res, ntok, "stream %d" % i)


def test_client_disconnect_cancels_backend_request():
    """The client reads 3 events of a 200-token stream (a token every 50 ms) and closes: the mock must
    see its request closed (client_closed) within 1 s, with far fewer than 200 tokens sent."""
    mock, gw = ENV.get()
    mock.reset()
    c = su.send_stream_request(gw.port, chat("m1", stream=True), _hdr(tokens=200, token_ms=50))
    try:
        res = su.read_stream(c, timeout=10, stop_after=3)
        assert res.resp.status == 200 and len(res.events) == 3, res.describe()
    finally:
        c.close()
    t_close = time.monotonic()

    def closed():
        rs = mock.api_requests()
        return rs and rs[-1].get("client_closed") and rs[-1]

    rec = gwtest.wait_for(closed, timeout=3.0, interval=0.02,
                          what="the mock to see the backend request closed after the client left")
    dt = time.monotonic() - t_close
    assert dt <= 1.5, "backend request closed %.2fs after the client disconnected (limit 1.5 s); record %r" % (dt, rec)
    assert not rec.get("completed"), "mock record says completed: %r" % rec
    assert rec.get("tokens_sent", 0) < 60, "backend kept generating: tokens_sent=%r of 200" % rec.get("tokens_sent")
    # and the gateway serves on
    r = post_json(gw.port, "/v1/chat/completions", chat("m1"))
    assert r.status == 200, r.describe()


def test_client_disconnect_before_first_token():
    """A client that leaves while the backend is still before its first token (ttft 3 s) also cancels."""
    mock, gw = ENV.get()
    mock.reset()
    c = su.send_stream_request(gw.port, chat("m1", stream=True), _hdr(tokens=5, ttft_ms=3000))
    gwtest.wait_for(lambda: mock.api_requests(), timeout=3, what="request at the mock")
    c.close()
    t_close = time.monotonic()
    rec = gwtest.wait_for(lambda: (mock.api_requests() or [{}])[-1].get("client_closed") and mock.api_requests()[-1],
                          timeout=3.0, interval=0.02, what="client_closed on the mock")
    dt = time.monotonic() - t_close
    assert dt <= 1.5, "backend request closed %.2fs after the client left (limit 1.5 s): %r" % (dt, rec)
    assert rec.get("tokens_sent", 0) == 0, rec


def test_backend_reset_mid_stream_ends_with_error_event():
    """x-mock-reset-after 3: the backend sends 3 token events, then resets the connection. The client
    gets those 3 events, then one error event with code upstream_error, then the connection closes
    without the terminating zero chunk and without [DONE]."""
    mock, gw = ENV.get()
    mock.reset()
    res = su.stream(gw.port, chat("m1", stream=True), _hdr(tokens=10, token_ms=20, reset_after=3), timeout=10)
    r = res.resp
    assert r.status == 200 and r.chunked, res.describe()
    assert not res.timed_out, "connection left open after the backend died: %s" % res.describe()
    assert su.chat_tokens(res) == su.expected_tokens(3), "expected tok0..tok2 before the error: %s" % res.describe()
    assert "[DONE]" not in res.events, "[DONE] after a backend failure: %s" % res.describe()
    errs = res.error_events()
    assert errs, "no error event at the end of a failed stream: %s" % res.describe()
    e = errs[-1]["error"]
    assert e.get("code") == "upstream_error", "error event code %r, expected upstream_error: %s" % (
        e.get("code"), res.describe())
    assert isinstance(e.get("message"), str) and e.get("type"), "error event not OpenAI-shaped: %r" % errs[-1]
    assert "error" in res.json_events()[-1], "the error event is not the last event: %s" % res.describe()
    assert not res.complete, "stream ended with the terminating zero chunk (a clean-looking end): %s" % res.describe()
    assert res.closed, "gateway did not close the connection: %s" % res.describe()
    recs = mock.api_requests()
    assert len(recs) == 1, "a failed stream was retried (mock saw %d requests)" % len(recs)


def test_backend_reset_in_fast_stream_ends_with_error_event():
    """The backend resets right after 20 tokens sent back to back (token-ms 0), so the last data and
    the reset arrive together: still an error event and a close, every time (10 tries)."""
    mock, gw = ENV.get()
    for i in range(10):
        res = su.stream(gw.port, chat("m1", stream=True), _hdr(tokens=50, reset_after=20), timeout=5)
        assert res.resp.status == 200, res.describe()
        assert su.chat_tokens(res) == su.expected_tokens(20), "try %d: %s" % (i, res.describe())
        assert not res.timed_out, (
            "try %d: the backend reset after 20 fast tokens, but the client's stream got neither an error "
            "event nor a close within 5 s (the gateway missed the reset): %s" % (i, res.describe()))
        assert "[DONE]" not in res.events and not res.complete, "try %d: %s" % (i, res.describe())
        errs = res.error_events()
        assert errs and errs[-1]["error"].get("code") == "upstream_error", "try %d: %s" % (i, res.describe())


def _slow_socket_stream(port, body, headers, rcvbuf=4096):
    """A raw client socket with a small receive buffer (set before connect) that sends the request."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10)
    s.connect((gwtest.HOST, port))
    raw = gwtest.http_request("POST", "/v1/chat/completions", body,
                              [("Content-Type", "application/json")] + list(headers.items()))
    s.sendall(raw)
    return s


def test_slow_client_backpressure_bounded_memory():
    """600,000 token events (~96 MB) with token-ms 0 to a client with a 4 KiB receive buffer that
    reads 1 KiB every 100 ms for 4 s: the gateway must stop reading from the backend (the mock's
    tokens_sent stays far below the total), its RSS must grow < 32 MiB, and once the client reads at
    full speed the whole stream arrives in order with [DONE] and the terminating chunk. The total
    is well above what the kernel may buffer on the way: with tcp_rmem's maximum at 32 MiB, the
    gateway's receive queue from the backend alone was seen holding 16.7 MB (~105,000 events)
    while the gateway read nothing."""
    mock = Mock()
    gw = Gateway(gateway_config([mock.port], timeouts={"drain_ms": 2000}))
    total = 600000
    # warm up (pools, buffers) so the baseline is fair
    su.assert_clean_stream(su.stream(gw.port, chat("m1", stream=True), _hdr(tokens=2000)), 2000)
    time.sleep(0.3)
    base = su.rss_kib(gw.pid)
    mock.reset()
    s = _slow_socket_stream(gw.port, chat("m1", stream=True), _hdr(tokens=total))
    data = bytearray()
    peak = base
    t_end = time.monotonic() + 4.0
    try:
        while time.monotonic() < t_end:
            try:
                d = s.recv(1024)
            except socket.timeout:
                d = b""
            if d:
                data += d
            peak = max(peak, su.rss_kib(gw.pid))
            time.sleep(0.1)
        recs = mock.api_requests()
        sent_while_stalled = recs[-1].get("tokens_sent", 0) if recs else None
        growth_mib = (peak - base) / 1024.0
        # now read on at full speed
        s.settimeout(10)
        stalled_after = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                d = s.recv(1 << 20)
            except socket.timeout:
                stalled_after = len(data)
                break
            if not d:
                break
            data += d
            if data.endswith(b"0\r\n\r\n") and b"data: [DONE]" in data[-200:]:
                break
        recs = mock.api_requests()
        sent_at_end = recs[-1].get("tokens_sent", 0) if recs else None
    finally:
        s.close()
    assert sent_while_stalled is not None, "the request never reached the mock"
    assert sent_while_stalled < total // 2, (
        "no backpressure: while the client was stalled the backend sent %d of %d tokens (gateway kept reading)"
        % (sent_while_stalled, total))
    assert growth_mib < 32, "gateway RSS grew %.1f MiB (base %d KiB, peak %d KiB) for one slow stream" % (
        growth_mib, base, peak)
    assert stalled_after is None, (
        "the stream never resumed after backpressure: the client read at full speed but got nothing more "
        "for 10 s after %d bytes (tail %r); the backend had sent %d of %d tokens and was waiting for the "
        "gateway to read" % (stalled_after, bytes(data[-120:]), sent_at_end or -1, total))
    # parse what arrived
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    payload, complete = su.dechunk(body)
    assert complete, "slow stream did not end with the terminating chunk (got %d bytes, tail %r)" % (
        len(data), bytes(data[-300:]))
    evs = gwtest.sse_events(payload)
    assert evs[-1] == "[DONE]", evs[-3:]
    res = su.StreamResult()
    res.events = evs
    toks = su.chat_tokens(res)
    assert len(toks) == total and toks[:3] == ["tok0", "tok1", "tok2"] and toks[-1] == "tok%d" % (total - 1), (
        "slow stream lost or reordered tokens: %d tokens, last %r" % (len(toks), toks[-3:]))
    assert toks == su.expected_tokens(total), "slow stream tokens out of order"


def test_http10_stream_is_close_delimited():
    mock, gw = ENV.get()
    t0 = time.monotonic()
    c = su.send_stream_request(gw.port, chat("m1", stream=True), _hdr(tokens=6, token_ms=10), version="HTTP/1.0")
    try:
        res = su.read_stream(c, timeout=10, t0=t0)
    finally:
        c.close()
    r = res.resp
    assert r.status == 200, res.describe()
    assert not r.header_all("transfer-encoding"), "chunked encoding sent to an HTTP/1.0 client: %s" % res.describe()
    assert r.header("content-length") is None, res.describe()
    assert b"\r\n0\r\n" not in r.body and not r.body.startswith(b"0"), "chunk framing in an HTTP/1.0 body: %r" % r.body[:200]
    assert su.chat_tokens(res) == su.expected_tokens(6), res.describe()
    assert res.events[-1] == "[DONE]", res.describe()
    assert res.closed and not res.timed_out, "HTTP/1.0 stream not ended by the close: %s" % res.describe()


def test_stream_error_status_from_backend_is_not_sse():
    """A backend that refuses a stream (x-mock-status 429) gives the client that status, with the
    gateway's own error body (privacy.backend_errors "replace")."""
    mock, gw = ENV.get()
    r = post_json(gw.port, "/v1/chat/completions", chat("m1", stream=True), headers=_hdr(status=429))
    assert r.status == 429, r.describe()
    assert r.json()["error"]["code"] == "rate_limit_exceeded", r.describe()


if __name__ == "__main__":
    gwtest.run(globals())
