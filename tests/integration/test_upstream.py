"""The upstream side: status codes pass through, the retry rule (a connect failure or a close before
any byte reached the client is retried once on another backend, never after), keep-alive reuse of
backend connections, and the connect / first-byte / idle timeouts."""

import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from gwtest import Mock, Gateway, gateway_config, pool, backend, chat, post_json, assert_error  # noqa: E402
import streamutil as su  # noqa: E402


def _hdr(**kw):
    return {"x-mock-" + k.replace("_", "-"): str(v) for k, v in kw.items()}


def _gw(backends, **over):
    t = dict(gwtest.default_timeouts(), drain_ms=2000)
    t.update(over.pop("timeouts", {}))
    return Gateway(gateway_config(pools=[pool("p1", ["m1", "m2"], backends)], timeouts=t, **over))


# --------------------------------------------------------------------------- status pass-through


def test_upstream_429_passes_through_with_body():
    mock = Mock()
    gw = _gw([mock.port])
    r = post_json(gw.port, "/v1/chat/completions", chat("m1"), headers=_hdr(status=429))
    assert r.status == 429, "x-mock-status 429: expected the backend's 429, got %s" % r.describe()
    j = r.json()
    # The status passes; the body is the gateway's own error (privacy.backend_errors "replace":
    # backends quote requests in their errors, docs/privacy.md).
    assert j["error"]["code"] == "rate_limit_exceeded" and "Injected" not in j["error"]["message"], (
        "the backend's error body was passed through: %s" % r.describe())
    assert r.header("x-request-id"), r.describe()
    assert len(mock.api_requests()) == 1, "a 429 from the backend was retried"


def test_upstream_4xx_5xx_pass_through():
    mock = Mock()
    gw = _gw([mock.port])
    codes = {400: "bad_request", 404: "not_found", 500: "upstream_error", 503: "upstream_error"}
    for st in (400, 404, 500, 503):
        r = post_json(gw.port, "/v1/chat/completions", chat("m1"), headers=_hdr(status=st))
        assert r.status == st, "x-mock-status %d: got %s" % (st, r.describe())
        assert r.json()["error"]["code"] == codes[st], r.describe()  # the gateway's own error
    assert len(mock.api_requests()) == 4, "backend answers with a status were retried: %d requests at the mock" % (
        len(mock.api_requests()))


# --------------------------------------------------------------------------- retry rule


def test_connect_refused_backend_is_retried_on_the_other():
    dead = su.closed_port()
    mock = Mock()
    gw = _gw([backend(dead), mock.port])
    bad = []
    for i in range(20):
        r = post_json(gw.port, "/v1/chat/completions", chat("m1"))
        if r.status != 200:
            bad.append((i, r.describe()))
    assert not bad, "pool [closed port, mock]: %d of 20 requests failed, first: %r" % (len(bad), bad[0])
    assert len(mock.api_requests()) == 20, len(mock.api_requests())
    # streams too
    for _ in range(3):
        su.assert_clean_stream(su.stream(gw.port, chat("m1", stream=True), _hdr(tokens=4)), 4)


def test_connect_refused_only_backend_is_502():
    dead = su.closed_port()
    gw = _gw([backend(dead)])
    t0 = time.monotonic()
    r = post_json(gw.port, "/v1/chat/completions", chat("m1"))
    assert r.status in (502, 503), r.describe()
    if r.status == 502:
        assert_error(r, 502, "upstream_error")
    else:
        assert_error(r, 503, "no_backend_available")
    assert time.monotonic() - t0 < 3, "connect refused took %.1fs to report" % (time.monotonic() - t0)


def test_backend_closing_without_answer_is_retried_on_the_other():
    """Pool [fake backend that closes without a byte, mock]: every request ends 200 via the mock, and
    the fake did get requests (so the retry path ran)."""
    fake = su.FakeBackend("close")
    mock = Mock()
    gw = _gw([backend(fake.port), mock.port])
    bad = []
    for i in range(10):
        r = post_json(gw.port, "/v1/chat/completions", chat("m1"))
        if r.status != 200:
            bad.append((i, r.describe()))
    assert not bad, "pool [closes-without-answer, mock]: %d of 10 failed, first %r" % (len(bad), bad[0])
    assert fake.api_requests(), "the closing backend never got a request; the retry path was not exercised"


def test_backend_reset_without_answer_is_retried_on_the_other():
    fake = su.FakeBackend("reset")
    mock = Mock()
    gw = _gw([backend(fake.port), mock.port])
    for i in range(10):
        r = post_json(gw.port, "/v1/chat/completions", chat("m1"))
        assert r.status == 200, "request %d via pool [resets-without-answer, mock]: %s" % (i, r.describe())
    assert fake.api_requests(), "the resetting backend never got a request"


def test_mock_close_on_two_backends_is_retried_exactly_once():
    """x-mock-close: 1 on a pool of two mocks: both close without answering. The gateway tries one,
    retries once on the other, then answers 502 upstream_error: exactly 2 attempts in all."""
    m1, m2 = Mock(), Mock()
    gw = _gw([m1.port, m2.port])
    r = post_json(gw.port, "/v1/chat/completions", chat("m1"), headers=_hdr(close=1))
    assert_error(r, 502, "upstream_error")
    time.sleep(0.2)
    n1, n2 = len(m1.api_requests()), len(m2.api_requests())
    assert (n1, n2) == (1, 1), "expected one attempt on each backend (one retry), got %d + %d" % (n1, n2)


def test_mock_close_on_one_backend_is_502():
    mock = Mock()
    gw = _gw([mock.port])
    r = post_json(gw.port, "/v1/chat/completions", chat("m1"), headers=_hdr(close=1))
    assert_error(r, 502, "upstream_error")
    time.sleep(0.2)
    n = len(mock.api_requests())
    assert n == 1, "one backend, x-mock-close: the mock saw %d attempts, expected 1 (no other backend to retry on)" % n
    # and the next request works (the pool is not wedged)
    r = post_json(gw.port, "/v1/chat/completions", chat("m1"))
    assert r.status == 200, r.describe()


def test_close_then_success_on_the_other_backend():
    """Pool [mock A, mock B] and one x-mock-close request while the other mock would answer: use a
    fake closing backend next to a mock and check the client never sees the failure, also for streams."""
    fake = su.FakeBackend("close")
    mock = Mock()
    gw = _gw([backend(fake.port), mock.port])
    for _ in range(5):
        su.assert_clean_stream(su.stream(gw.port, chat("m1", stream=True), _hdr(tokens=5)), 5)
    assert fake.api_requests(), "the closing backend never got a stream request"


def test_failure_after_bytes_reached_client_is_not_retried():
    """A stream that dies after 3 events (x-mock-reset-after 3) on a pool of two mocks: the client
    gets the 3 events and an error event; the backends saw exactly one request in all."""
    m1, m2 = Mock(), Mock()
    gw = _gw([m1.port, m2.port])
    res = su.stream(gw.port, chat("m1", stream=True), _hdr(tokens=10, reset_after=3, token_ms=10))
    assert res.resp.status == 200, res.describe()
    assert su.chat_tokens(res) == su.expected_tokens(3), res.describe()
    assert res.error_events() and not res.complete and "[DONE]" not in res.events, res.describe()
    time.sleep(0.3)
    n = len(m1.api_requests()) + len(m2.api_requests())
    assert n == 1, "a stream that failed after bytes reached the client was retried: %d requests at the backends" % n


def test_nonstream_reset_before_answer_is_retried():
    """x-mock-reset-after 0 on a non-stream request: both mocks reset before answering. Retried once,
    then 502 upstream_error."""
    m1, m2 = Mock(), Mock()
    gw = _gw([m1.port, m2.port])
    r = post_json(gw.port, "/v1/chat/completions", chat("m1"), headers=_hdr(reset_after=0))
    assert_error(r, 502, "upstream_error")
    time.sleep(0.2)
    n1, n2 = len(m1.api_requests()), len(m2.api_requests())
    assert n1 + n2 == 2 and n1 == 1, "expected one attempt per backend, got %d + %d" % (n1, n2)


# --------------------------------------------------------------------------- keep-alive reuse


def _backend_conns(mock):
    """The distinct backend connections the gateway's requests came on (the mock's record `conn`)."""
    return sorted(set(q.get("conn") for q in mock.api_requests()))


def test_backend_connections_are_reused():
    """Sequential requests (chat, streams, embeddings) reuse one keep-alive backend connection (one
    worker). Judged by the mock's record of which connection each request came on, and by
    /_mock/stats connections_accepted (which also counts the test's own /_mock/ calls, one each)."""
    mock = Mock()
    gw = _gw([mock.port])
    for i in range(8):
        r = post_json(gw.port, "/v1/chat/completions", chat("m1"))
        assert r.status == 200, r.describe()
    conns = _backend_conns(mock)   # one /_mock/ call
    assert len(conns) == 1, "8 sequential requests came on %d backend connections %r (expected 1)" % (len(conns), conns)
    for i in range(4):
        su.assert_clean_stream(su.stream(gw.port, chat("m1", stream=True), _hdr(tokens=3)), 3)
    r = post_json(gw.port, "/v1/embeddings", {"model": "m1", "input": ["a", "b"]})
    assert r.status == 200, r.describe()
    conns = _backend_conns(mock)   # second /_mock/ call
    assert len(conns) == 1, "sequential streams/embeddings used %d backend connections %r" % (len(conns), conns)
    st = mock.stats()              # third /_mock/ call, counted in connections_accepted
    assert st["connections_accepted"] - 3 == 1, "connections_accepted %d minus 3 control calls != 1: %r" % (
        st["connections_accepted"], st)


def test_backend_connection_not_reused_after_failed_stream():
    """After a stream the backend reset, the next request still works (a fresh connection)."""
    mock = Mock()
    gw = _gw([mock.port])
    su.stream(gw.port, chat("m1", stream=True), _hdr(tokens=10, reset_after=2))
    r = post_json(gw.port, "/v1/chat/completions", chat("m1"))
    assert r.status == 200, r.describe()


def test_backend_idle_close_is_survived():
    """The mock closes idle keep-alive connections after 200 ms: a request after that must not fail
    (a stale pooled connection is retried or replaced, never reported as 502)."""
    mock = Mock(["--keepalive-ms", "200"])
    gw = _gw([mock.port])
    for i in range(4):
        r = post_json(gw.port, "/v1/chat/completions", chat("m1"))
        assert r.status == 200, "request %d after the backend closed the idle connection: %s" % (i, r.describe())
        time.sleep(0.4)


# --------------------------------------------------------------------------- timeouts


def test_first_byte_timeout_is_504():
    mock = Mock()
    gw = _gw([mock.port], timeouts={"upstream_first_byte_ms": 300})
    t0 = time.monotonic()
    r = post_json(gw.port, "/v1/chat/completions", chat("m1"), headers=_hdr(delay_ms=1500))
    dt = time.monotonic() - t0
    assert_error(r, 504, "upstream_timeout")
    assert 0.25 <= dt < 1.2, "first-byte timeout of 300 ms answered after %.2fs" % dt
    # a backend within the limit is fine
    r = post_json(gw.port, "/v1/chat/completions", chat("m1"), headers=_hdr(delay_ms=100))
    assert r.status == 200, r.describe()


def test_first_byte_timeout_on_stream_is_504():
    mock = Mock()
    gw = _gw([mock.port], timeouts={"upstream_first_byte_ms": 300})
    r = post_json(gw.port, "/v1/chat/completions", chat("m1", stream=True), headers=_hdr(delay_ms=1500))
    assert_error(r, 504, "upstream_timeout")


def test_first_byte_timeout_closes_backend_request():
    """After a first-byte timeout the gateway gives the request up at the backend too."""
    mock = Mock()
    gw = _gw([mock.port], timeouts={"upstream_first_byte_ms": 300})
    r = post_json(gw.port, "/v1/chat/completions", chat("m1"), headers=_hdr(delay_ms=3000))
    assert r.status == 504, r.describe()
    rec = gwtest.wait_for(lambda: [q for q in mock.api_requests() if q.get("client_closed")], timeout=1.5,
                          what="the mock to see the timed-out request closed")
    assert rec


def test_idle_timeout_mid_stream_ends_with_error_event():
    """upstream_idle_ms 300 and a token every 1 s: the first token arrives, then the gateway gives up:
    an error event with code upstream_timeout, no [DONE], no terminating zero chunk."""
    mock = Mock()
    gw = _gw([mock.port], timeouts={"upstream_idle_ms": 300})
    t0 = time.monotonic()
    res = su.stream(gw.port, chat("m1", stream=True), _hdr(tokens=5, token_ms=1000), timeout=8)
    dt = time.monotonic() - t0
    assert res.resp.status == 200, res.describe()
    assert not res.timed_out, "stream still open after the idle timeout: %s" % res.describe()
    errs = res.error_events()
    assert errs and errs[-1]["error"].get("code") == "upstream_timeout", (
        "expected an error event with code upstream_timeout: %s" % res.describe())
    assert "[DONE]" not in res.events, res.describe()
    assert not res.complete, "an idle-timed-out stream ended with the terminating chunk: %s" % res.describe()
    assert su.chat_tokens(res) == ["tok0"], "expected exactly tok0 before the timeout: %s" % res.describe()
    assert dt < 2.0, "idle timeout of 300 ms took %.2fs" % dt


def test_idle_timeout_not_hit_by_steady_stream():
    mock = Mock()
    gw = _gw([mock.port], timeouts={"upstream_idle_ms": 300, "upstream_first_byte_ms": 300})
    su.assert_clean_stream(su.stream(gw.port, chat("m1", stream=True), _hdr(tokens=10, token_ms=100)), 10)


def test_connect_timeout():
    """A backend whose listen queue is full (connects hang) with upstream_connect_ms 300: alone in its
    pool → 504 upstream_timeout (or 502) in about 0.3 s; next to a mock → retried there, 200."""
    bl = su.BacklogFull()
    if not bl.ok:
        bl.close()
        gwtest.skip("cannot make a hanging connect on 127.0.0.1 here (listen backlog trick did not work)")
    try:
        gw = _gw([backend(bl.port)], timeouts={"upstream_connect_ms": 300})
        t0 = time.monotonic()
        r = post_json(gw.port, "/v1/chat/completions", chat("m1"), timeout=10)
        dt = time.monotonic() - t0
        assert r.status in (502, 504), "connect timeout: %s" % r.describe()
        assert_error(r, (502, 504), "upstream_timeout" if r.status == 504 else "upstream_error")
        assert 0.25 <= dt < 1.5, "connect timeout of 300 ms answered after %.2fs" % dt
        gw.stop()
        mock = Mock()
        gw2 = _gw([backend(bl.port), mock.port], timeouts={"upstream_connect_ms": 300})
        for i in range(4):
            r = post_json(gw2.port, "/v1/chat/completions", chat("m1"), timeout=10)
            assert r.status == 200, "pool [hanging connect, mock], request %d: %s" % (i, r.describe())
    finally:
        bl.close()


def test_concurrent_requests_spread_and_all_succeed():
    """Least-outstanding balancing: 10 concurrent slow requests on two mocks land on both."""
    m1, m2 = Mock(), Mock()
    gw = _gw([m1.port, m2.port])
    out = [None] * 10

    def one(i):
        out[i] = post_json(gw.port, "/v1/chat/completions", chat("m1"), headers=_hdr(delay_ms=300), timeout=10)

    ts = [threading.Thread(target=one, args=(i,)) for i in range(10)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(15)
    assert all(r is not None and r.status == 200 for r in out), [r and r.status for r in out]
    n1, n2 = len(m1.api_requests()), len(m2.api_requests())
    assert n1 + n2 == 10 and min(n1, n2) >= 3, "10 concurrent requests split %d / %d (least outstanding?)" % (n1, n2)


if __name__ == "__main__":
    try:
        gwtest.run(globals())
    finally:
        su.close_fakes()
