#!/usr/bin/env python3
"""Keep-alive and pipelining on the client side: answers in order on one connection, Connection:
close and HTTP/1.0 close after the answer, idle keep-alive connections close after keepalive_ms."""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from gwtest import Conn, Gateway, IncompleteResponse, Mock, Shared, assert_error, chat, chunked, gateway_config  # noqa: E402

KEEPALIVE_MS = 2000
CLOSE_S = 1.0  # closing after an answer must be prompt: well under keepalive_ms


def _build():
    mock = Mock()
    gw = Gateway(gateway_config([mock.port], timeouts={"keepalive_ms": KEEPALIVE_MS}))
    return mock, gw


ENV = Shared(_build)


def env():
    mock, gw = ENV.get()
    mock.reset()
    return mock, gw


def chat_req(rid, model="m1", extra=b"", version=b"HTTP/1.1", content="hi"):
    body = json.dumps(chat(model, content)).encode()
    return (b"POST /v1/chat/completions " + version + b"\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b"X-Request-Id: " + rid.encode() + b"\r\n" + extra
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)


def models_req(rid, extra=b"", version=b"HTTP/1.1"):
    return b"GET /v1/models " + version + b"\r\nHost: gw\r\nX-Request-Id: " + rid.encode() + b"\r\n" + extra + b"\r\n"


def notfound_req(rid):
    return b"GET /v1/nothing-here HTTP/1.1\r\nHost: gw\r\nX-Request-Id: " + rid.encode() + b"\r\n\r\n"


def read_in_order(c, rids, statuses, timeout=10):
    rs = []
    for i, (rid, st) in enumerate(zip(rids, statuses)):
        try:
            r = c.read_response(timeout=timeout)
        except IncompleteResponse as ex:
            raise AssertionError("answer %d of %d (%s) missing: %s; answers so far: %r"
                                 % (i + 1, len(rids), rid, ex, [x.header("x-client-request-id") for x in rs]))
        got = r.header("x-client-request-id")  # the client's own id comes back under this name
        assert got == rid, "answer %d has x-client-request-id %r, expected %r (out of order?): %s" % (
            i + 1, got, rid, r.describe())
        assert r.status == st, "answer %d (%s): expected %d, got %s" % (i + 1, rid, st, r.describe())
        rs.append(r)
    return rs


def test_two_requests_one_connection():
    mock, gw = env()
    with Conn(gw.port) as c:
        c.send(chat_req("ka-1"))
        r1 = read_in_order(c, ["ka-1"], [200])[0]
        assert not r1.has_token("connection", "close"), "first answer closes a keep-alive connection: %s" % r1.describe()
        assert c.is_open(0.2), "connection closed after the first answer"
        c.send(chat_req("ka-2"))
        read_in_order(c, ["ka-2"], [200])
    assert len(mock.wait_requests(2)) == 2


def test_many_requests_one_connection():
    mock, gw = env()
    n = 50
    with Conn(gw.port) as c:
        for i in range(n):
            rid = "seq-%d" % i
            c.send(chat_req(rid) if i % 2 == 0 else models_req(rid))
            read_in_order(c, [rid], [200])
    assert len(mock.wait_requests(n // 2)) == n // 2


def test_pipelined_answers_in_order():
    mock, gw = env()
    # The first is slow at the backend, the second is answered by the gateway itself, the third is fast:
    # the answers must still come back in request order. A refusal (the 404) ends the connection
    # (issue 14: one rule for every refusal), so it comes last.
    reqs = (chat_req("p-1", extra=b"X-Mock-Delay-Ms: 400\r\n") + models_req("p-2") + chat_req("p-3")
            + chat_req("p-5", model="m2") + notfound_req("p-4"))
    with Conn(gw.port) as c:
        c.send(reqs)
        read_in_order(c, ["p-1", "p-2", "p-3", "p-5", "p-4"], [200, 200, 200, 200, 404])
        assert c.wait_closed(CLOSE_S), "connection open after the refusal that ends the pipeline"
    assert len(mock.wait_requests(3)) == 3


def test_pipelined_many_written_at_once():
    mock, gw = env()
    n = 30
    rids = ["batch-%d" % i for i in range(n)]
    with Conn(gw.port) as c:
        c.send(b"".join(chat_req(r) for r in rids))
        read_in_order(c, rids, [200] * n, timeout=15)
    assert len(mock.wait_requests(n)) == n


def test_pipelined_flood_without_reading():
    # 300 requests written before reading any answer: the gateway must neither deadlock nor drop one.
    mock, gw = env()
    n = 300
    rids = ["f-%d" % i for i in range(n)]
    with Conn(gw.port, timeout=20) as c:
        c.send(b"".join(models_req(r) for r in rids), timeout=20)
        read_in_order(c, rids, [200] * n, timeout=20)


def test_pipelined_split_across_writes():
    # The second request's head arrives in pieces glued to the end of the first.
    mock, gw = env()
    data = chat_req("s-1") + chat_req("s-2") + models_req("s-3")
    with Conn(gw.port) as c:
        cut1 = len(chat_req("s-1")) + 7
        cut2 = cut1 + 40
        c.send(data[:cut1])
        time.sleep(0.05)
        c.send(data[cut1:cut2])
        time.sleep(0.05)
        c.send(data[cut2:])
        read_in_order(c, ["s-1", "s-2", "s-3"], [200, 200, 200])


def test_keepalive_after_chunked_request():
    mock, gw = env()
    body = json.dumps(chat("m1", "chunky")).encode()
    req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
           b"X-Request-Id: ch-1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(body, [5, 9]))
    with Conn(gw.port) as c:
        c.send(req + chat_req("ch-2"))
        read_in_order(c, ["ch-1", "ch-2"], [200, 200])
    recs = mock.wait_requests(2)
    assert [json.loads(r["body"])["messages"][0]["content"] for r in recs] == ["chunky", "hi"], recs


def test_error_answers_close_the_connection():
    # Issue 14: a request the gateway refuses ends its connection (connection: close), whatever
    # the status and whether its body was read; the client's next request goes on a new one.
    mock, gw = env()
    bad = json.dumps({"model": "no-such-model"}).encode()
    refusals = [
        (notfound_req("e-1"), "e-1", 404),
        (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nX-Request-Id: e-2\r\n"
         b"Content-Length: %d\r\n\r\n" % len(bad) + bad, "e-2", 404),
        (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nX-Request-Id: e-3\r\nContent-Length: 1\r\n\r\n{",
         "e-3", 400),
    ]
    for req, rid, status in refusals:
        with Conn(gw.port) as c:
            c.send(req)
            r = read_in_order(c, [rid], [status])[0]
            assert r.has_token("connection", "close"), r.describe()
            assert c.wait_closed(CLOSE_S), "connection open after the %d" % status
    with Conn(gw.port) as c:
        c.send(chat_req("e-4"))
        read_in_order(c, ["e-4"], [200])


def test_pipelined_then_bad_request():
    # A good request, then a malformed one: the first is answered, then 400 and close; the request
    # after the malformed one is never processed.
    mock, gw = env()
    bad = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nX-Request-Id: b-2\r\n"
           b"Content-Length: 5\r\nContent-Length: 5\r\n\r\n{}{}{")
    with Conn(gw.port) as c:
        c.send(chat_req("b-1") + bad + chat_req("b-3"))
        read_in_order(c, ["b-1"], [200])
        r = c.read_response()
        assert_error(r, 400, "bad_request")
        assert c.wait_closed(CLOSE_S), "connection open after the 400"
        assert c.buf == b"", "bytes after the 400: %r" % c.buf[:300]
    time.sleep(0.2)
    assert len(mock.api_requests()) == 1, "expected only b-1 at the backend: %r" % mock.api_requests()


def test_connection_close_closes_after_answer():
    mock, gw = env()
    with Conn(gw.port) as c:
        c.send(chat_req("c-1", extra=b"Connection: close\r\n"))
        r = read_in_order(c, ["c-1"], [200])[0]
        assert c.wait_closed(CLOSE_S), "connection still open after answering a Connection: close request"
        assert r.has_token("connection", "close"), "answer to Connection: close lacks Connection: close: %s" % r.describe()


def test_connection_close_ignores_pipelined_rest():
    mock, gw = env()
    with Conn(gw.port) as c:
        c.send(chat_req("cc-1", extra=b"Connection: close\r\n") + chat_req("cc-2"))
        read_in_order(c, ["cc-1"], [200])
        assert c.wait_closed(CLOSE_S), "connection still open after a Connection: close answer"
        assert c.buf == b"", "a request after Connection: close was answered: %r" % c.buf[:300]
    time.sleep(0.2)
    assert len(mock.api_requests()) == 1, "request after Connection: close reached the backend: %r" % mock.api_requests()


def test_connection_close_case_insensitive():
    mock, gw = env()
    with Conn(gw.port) as c:
        c.send(models_req("cci-1", extra=b"connection: Close\r\n"))
        read_in_order(c, ["cci-1"], [200])
        assert c.wait_closed(CLOSE_S), "connection still open after 'connection: Close'"


def test_connection_close_on_gateway_answer():
    mock, gw = env()
    with Conn(gw.port) as c:
        c.send(b"GET /nope HTTP/1.1\r\nHost: gw\r\nX-Request-Id: cg-1\r\nConnection: close\r\n\r\n")
        read_in_order(c, ["cg-1"], [404])
        assert c.wait_closed(CLOSE_S), "connection still open after a 404 to a Connection: close request"


def test_http10_closes():
    mock, gw = env()
    with Conn(gw.port) as c:
        c.send(chat_req("h10-1", version=b"HTTP/1.0"))
        r = read_in_order(c, ["h10-1"], [200])[0]
        assert c.wait_closed(CLOSE_S), "HTTP/1.0 connection without keep-alive still open after the answer"
        assert not r.chunked, "chunked answer to an HTTP/1.0 client: %s" % r.describe()


def test_http10_without_host_accepted():
    mock, gw = env()
    with Conn(gw.port) as c:
        c.send(b"GET /v1/models HTTP/1.0\r\nX-Request-Id: h10-2\r\n\r\n")
        read_in_order(c, ["h10-2"], [200])
        assert c.wait_closed(CLOSE_S), "HTTP/1.0 connection still open after the answer"


def test_idle_keepalive_closed():
    mock, gw = env()
    with Conn(gw.port) as c:
        c.send(models_req("idle-1"))
        read_in_order(c, ["idle-1"], [200])
        t0 = time.monotonic()
        assert c.is_open(KEEPALIVE_MS / 1000 * 0.4), "idle connection closed well before keepalive_ms=%d" % KEEPALIVE_MS
        closed = c.wait_closed(KEEPALIVE_MS / 1000 + 3)
        dt = time.monotonic() - t0
        assert closed, "idle keep-alive connection still open %.1fs after the answer (keepalive_ms=%d)" % (dt, KEEPALIVE_MS)
        assert c.buf == b"", "bytes sent on an idle connection before closing: %r" % c.buf[:300]


def test_keepalive_timer_restarts_with_each_request():
    mock, gw = env()
    with Conn(gw.port) as c:
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < KEEPALIVE_MS / 1000 * 3:
            rid = "tick-%d" % i
            c.send(models_req(rid))
            read_in_order(c, [rid], [200])
            time.sleep(KEEPALIVE_MS / 1000 * 0.4)
            i += 1
        assert i >= 5


def test_idle_connection_without_request_closed():
    # A connection that never sends a byte does not stay open for ever.
    mock, gw = env()
    with Conn(gw.port) as c:
        closed = c.wait_closed(KEEPALIVE_MS / 1000 + 11)
        assert closed, "a connection that sent nothing is still open after %.1fs" % (KEEPALIVE_MS / 1000 + 11)


if __name__ == "__main__":
    gwtest.run(globals())
