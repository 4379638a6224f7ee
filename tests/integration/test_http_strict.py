#!/usr/bin/env python3
"""Strict HTTP/1.1 in: every smuggling defence and every limit, each with its exact request bytes.

A rejected request must get its error answer (400 bad_request unless said otherwise), the
connection must be closed after it, and nothing may reach the backend (the mock's record stays
empty). The controls at the top prove the same gateway accepts the well-formed versions.
"""

import os
import select
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from gwtest import (Conn, Gateway, IncompleteResponse, Mock, Shared, assert_error, brief, chunked,  # noqa: E402
                    gateway_config, header_values)

MAX_HEADER_BYTES = 4096
MAX_HEADERS = 20
MAX_BODY = 1024
HEADER_MS = 500
BODY_MS = 500


def _build():
    mock = Mock()
    gw = Gateway(gateway_config(
        [mock.port],
        limits={"max_header_bytes": MAX_HEADER_BYTES, "max_headers": MAX_HEADERS, "max_body_bytes": MAX_BODY},
        timeouts={"client_header_ms": HEADER_MS, "client_body_ms": BODY_MS}))
    return mock, gw


ENV = Shared(_build)

BODY = b'{"model":"m1","messages":[{"role":"user","content":"hi"}]}'
N = len(BODY)
CHUNKED_BODY = chunked(BODY, [10, 20])
# The head every case starts from (a valid request line, Host and Content-Type).
H = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
# A complete second request that a confused parser would take from the first one's body.
SMUGGLED = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (N, BODY))


def cl(n=N):
    return b"Content-Length: %d\r\n" % n


def env():
    mock, gw = ENV.get()
    mock.reset()
    return mock, gw


def send_and_read(gw, req, timeout=5.0):
    c = Conn(gw.port, timeout=timeout)
    try:
        c.send(req)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the gateway may answer and close before we finished writing
    return c, c.read_response(timeout=timeout)


def expect_ok(req, expect_body=BODY):
    """The request is answered 200 by the backend, which received exactly one request with our body
    framed by a Content-Length."""
    mock, gw = env()
    c, r = send_and_read(gw, req)
    c.close()
    assert r.status == 200, "request %s\n  got %s" % (brief(req), r.describe())
    recs = mock.wait_requests(1)
    assert len(recs) == 1, "the mock received %d requests, expected 1: %r" % (len(recs), recs)
    rec = recs[0]
    got = rec["body"].encode() if isinstance(rec["body"], str) else rec["body"]
    assert got == expect_body, "the mock received body %r, expected %r" % (got, expect_body)
    assert header_values(rec, "content-length") == [str(len(expect_body))], \
        "the backend got content-length %r, expected [%r]" % (header_values(rec, "content-length"), str(len(expect_body)))
    assert header_values(rec, "transfer-encoding") == [], \
        "transfer-encoding was forwarded: %r" % header_values(rec, "transfer-encoding")
    return rec


def expect_reject(req, status=400, code="bad_request", must_close=True, timeout=5.0):
    """The request gets an error answer, the connection is closed, nothing reaches the backend."""
    mock, gw = env()
    try:
        c, r = send_and_read(gw, req, timeout)
    except IncompleteResponse as ex:
        raise AssertionError("no %s answer to request %s: %s" % (status, brief(req), ex))
    try:
        try:
            assert_error(r, status, code)
        except AssertionError as ex:
            raise AssertionError("%s\n  request: %s" % (ex, brief(req)))
        if must_close:
            closed = c.wait_closed(2.0)
            assert closed, "connection still open 2 s after the %d answer (it must be closed)\n  request: %s" % (r.status, brief(req))
            assert c.buf == b"", "more bytes after the %d answer: %r\n  request: %s" % (r.status, c.buf[:300], brief(req))
    finally:
        c.close()
    time.sleep(0.15)
    got = mock.api_requests()
    assert got == [], "the backend received %d request(s) for a rejected request %s: %s" % (len(got), brief(req), brief(repr(got).encode(), 600))
    return r


# ----------------------------------------------------------------------------- controls


def test_control_content_length():
    expect_ok(H + cl() + b"\r\n" + BODY)


def test_control_chunked_forwarded_with_content_length():
    expect_ok(H + b"Transfer-Encoding: chunked\r\n\r\n" + CHUNKED_BODY)


def test_control_chunked_case_insensitive():
    expect_ok(H + b"Transfer-Encoding: Chunked\r\n\r\n" + CHUNKED_BODY)


def test_control_chunked_with_surrounding_ows():
    expect_ok(H + b"Transfer-Encoding: \tchunked \t\r\n\r\n" + CHUNKED_BODY)


def test_control_body_at_limit():
    pad = MAX_BODY - len(b'{"model":"m1","messages":[],"pad":""}')
    body = b'{"model":"m1","messages":[],"pad":"' + b"x" * pad + b'"}'
    assert len(body) == MAX_BODY
    expect_ok(H + cl(len(body)) + b"\r\n" + body, expect_body=body)


def test_control_head_below_limits():
    # MAX_HEADERS - 4 extra headers, total head well below MAX_HEADER_BYTES.
    extra = b"".join(b"X-Fill-%d: %s\r\n" % (i, b"v" * 100) for i in range(MAX_HEADERS - 4))
    req = H + extra + cl() + b"\r\n" + BODY
    assert len(req) - N < MAX_HEADER_BYTES
    expect_ok(req)


def test_control_header_names_any_case():
    expect_ok(H.replace(b"Host:", b"hOST:") + b"content-LENGTH: %d\r\n\r\n" % N + BODY)
    expect_ok(H + b"TRANSFER-ENCODING: chunked\r\n\r\n" + CHUNKED_BODY)


def test_control_one_byte_chunks():
    expect_ok(H + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(BODY, [1] * N))


def test_control_expect_100_continue():
    mock, gw = env()
    c = Conn(gw.port)
    try:
        c.send(H + b"Expect: 100-continue\r\n" + cl() + b"\r\n")
        # The gateway may send 100 Continue or simply wait for the body; either way, send it.
        time.sleep(0.1)
        c.send(BODY)
        r = c.read_response()
    finally:
        c.close()
    assert r.status == 200, "Expect: 100-continue request: %s" % r.describe()
    assert all(i.status == 100 for i in r.informational), r.informational
    assert len(mock.wait_requests(1)) == 1


def test_control_exactly_max_headers():
    # Host, Content-Type, Content-Length and MAX_HEADERS - 3 others: exactly MAX_HEADERS.
    extra = b"".join(b"X-H-%d: v\r\n" % i for i in range(MAX_HEADERS - 3))
    expect_ok(H + extra + cl() + b"\r\n" + BODY)


# ----------------------------------------------------------------------------- framing: CL and TE


def test_content_length_and_transfer_encoding():
    body = CHUNKED_BODY + SMUGGLED
    expect_reject(H + cl(len(body)) + b"Transfer-Encoding: chunked\r\n\r\n" + body)


def test_transfer_encoding_and_content_length():
    body = CHUNKED_BODY + SMUGGLED
    expect_reject(H + b"Transfer-Encoding: chunked\r\n" + cl(len(body)) + b"\r\n" + body)


def test_two_content_length_equal():
    expect_reject(H + cl() + cl() + b"\r\n" + BODY)


def test_two_content_length_different():
    expect_reject(H + cl(N) + cl(N + len(SMUGGLED)) + b"\r\n" + BODY + SMUGGLED)


def test_content_length_list():
    expect_reject(H + b"Content-Length: %d, %d\r\n\r\n" % (N, N) + BODY)


def test_content_length_plus_sign():
    expect_reject(H + b"Content-Length: +%d\r\n\r\n" % N + BODY)


def test_content_length_negative():
    expect_reject(H + b"Content-Length: -1\r\n\r\n" + BODY)


def test_content_length_inner_space():
    expect_reject(H + b"Content-Length: 5 5\r\n\r\n" + BODY)


def test_content_length_hex():
    expect_reject(H + b"Content-Length: 0x%x\r\n\r\n" % N + BODY)


def test_content_length_empty():
    expect_reject(H + b"Content-Length: \r\n\r\n" + BODY)


def test_content_length_letters():
    expect_reject(H + b"Content-Length: %dabc\r\n\r\n" % N + BODY)


def test_content_length_overflow_wraps():
    # 2**64 + N: a parser that wraps at 64 bits reads N and forwards BODY, then SMUGGLED.
    expect_reject(H + b"Content-Length: %d\r\n\r\n" % (2 ** 64 + N) + BODY + SMUGGLED)


def test_content_length_huge():
    expect_reject(H + b"Content-Length: 99999999999999999999999999999999\r\n\r\n" + BODY)


def test_transfer_encoding_gzip_chunked():
    expect_reject(H + b"Transfer-Encoding: gzip, chunked\r\n\r\n" + CHUNKED_BODY)


def test_transfer_encoding_chunked_chunked():
    expect_reject(H + b"Transfer-Encoding: chunked, chunked\r\n\r\n" + CHUNKED_BODY)


def test_transfer_encoding_two_headers():
    expect_reject(H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED_BODY)


def test_transfer_encoding_identity():
    expect_reject(H + b"Transfer-Encoding: identity\r\n" + cl() + b"\r\n" + BODY)


def test_transfer_encoding_identity_alone():
    expect_reject(H + b"Transfer-Encoding: identity\r\n\r\n" + BODY)


def test_transfer_encoding_gzip():
    expect_reject(H + b"Transfer-Encoding: gzip\r\n\r\n" + CHUNKED_BODY)


def test_transfer_encoding_xchunked():
    expect_reject(H + b"Transfer-Encoding: xchunked\r\n\r\n" + CHUNKED_BODY)


def test_transfer_encoding_chunked_suffix():
    expect_reject(H + b"Transfer-Encoding: chunkedx\r\n\r\n" + CHUNKED_BODY)


def test_transfer_encoding_vertical_tab():
    # \x0b is not OWS: "\x0bchunked" is not the coding "chunked".
    expect_reject(H + b"Transfer-Encoding: \x0bchunked\r\n" + cl() + b"\r\n" + BODY)


def test_transfer_encoding_empty():
    expect_reject(H + b"Transfer-Encoding: \r\n" + cl() + b"\r\n" + BODY)


def test_transfer_encoding_in_http10():
    # RFC 9112 6.1: Transfer-Encoding in an HTTP/1.0 request is faulty framing.
    expect_reject(b"POST /v1/chat/completions HTTP/1.0\r\nHost: gw\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n" + CHUNKED_BODY)


# ----------------------------------------------------------------------------- head syntax


def test_obs_fold_space():
    expect_reject(H + b"X-Folded: a\r\n b\r\n" + cl() + b"\r\n" + BODY)


def test_obs_fold_tab():
    expect_reject(H + b"X-Folded: a\r\n\tb\r\n" + cl() + b"\r\n" + BODY)


def test_obs_fold_of_content_length():
    expect_reject(H + b"Content-Length:\r\n %d\r\n\r\n" % N + BODY)


def test_whitespace_line_after_request_line():
    expect_reject(b"POST /v1/chat/completions HTTP/1.1\r\n Host: gw\r\nContent-Type: application/json\r\n"
                  + cl() + b"\r\n" + BODY)


def test_bare_lf_after_request_line():
    expect_reject(b"POST /v1/chat/completions HTTP/1.1\nHost: gw\r\nContent-Type: application/json\r\n"
                  + cl() + b"\r\n" + BODY)


def test_bare_lf_after_header():
    expect_reject(H + b"X-A: a\n" + cl() + b"\r\n" + BODY)


def test_bare_lf_everywhere():
    expect_reject(b"POST /v1/chat/completions HTTP/1.1\nHost: gw\nContent-Type: application/json\n"
                  b"Content-Length: %d\n\n" % N + BODY)


def test_bare_lf_ending_head():
    expect_reject(H + cl() + b"\n" + BODY)


def test_bare_cr_inside_header_value():
    expect_reject(H + b"X-A: a\rb\r\n" + cl() + b"\r\n" + BODY)


def test_bare_cr_as_line_end():
    expect_reject(H + b"X-A: a\r" + cl() + b"\r\n" + BODY)


def test_bare_cr_after_request_line():
    expect_reject(b"POST /v1/chat/completions HTTP/1.1\rHost: gw\r\nContent-Type: application/json\r\n"
                  + cl() + b"\r\n" + BODY)


def test_nul_in_header_value():
    expect_reject(H + b"X-A: a\x00b\r\n" + cl() + b"\r\n" + BODY)


def test_nul_in_header_name():
    expect_reject(H + b"X-\x00A: b\r\n" + cl() + b"\r\n" + BODY)


def test_nul_in_request_target():
    expect_reject(b"POST /v1/chat/completions\x00x HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                  + cl() + b"\r\n" + BODY)


def test_empty_header_name():
    expect_reject(H + b": x\r\n" + cl() + b"\r\n" + BODY)


def test_space_before_colon():
    expect_reject(H + b"X-Custom : 1\r\n" + cl() + b"\r\n" + BODY)


def test_space_before_colon_content_length():
    expect_reject(H + b"Content-Length : %d\r\n\r\n" % N + BODY)


def test_tab_before_colon():
    expect_reject(H + b"X-Custom\t: 1\r\n" + cl() + b"\r\n" + BODY)


def test_header_line_without_colon():
    expect_reject(H + b"X-No-Colon\r\n" + cl() + b"\r\n" + BODY)


def test_header_name_with_invalid_char():
    expect_reject(H + b"X(A): b\r\n" + cl() + b"\r\n" + BODY)


# ----------------------------------------------------------------------------- chunk framing


TE = H + b"Transfer-Encoding: chunked\r\n\r\n"


def test_chunk_size_not_hex():
    expect_reject(TE + b"zz\r\n" + BODY + b"\r\n0\r\n\r\n")


def test_chunk_size_negative():
    expect_reject(TE + b"-1\r\n" + BODY + b"\r\n0\r\n\r\n")


def test_chunk_size_0x_prefix():
    expect_reject(TE + b"0x%x\r\n" % N + BODY + b"\r\n0\r\n\r\n")


def test_chunk_size_overflow():
    expect_reject(TE + b"ffffffffffffffffff\r\n" + BODY + b"\r\n0\r\n\r\n")


def test_chunk_size_overflow_wraps():
    # 2**64 + N in hex: a parser that wraps at 64 bits reads a chunk of N bytes.
    expect_reject(TE + b"%x\r\n" % (2 ** 64 + N) + BODY + b"\r\n0\r\n\r\n")


def test_chunk_size_empty():
    expect_reject(TE + b"\r\n" + BODY + b"\r\n0\r\n\r\n")


def test_chunk_data_without_crlf():
    expect_reject(TE + b"%x\r\n" % N + BODY + b"XX0\r\n\r\n")


def test_chunk_data_with_bare_lf():
    expect_reject(TE + b"%x\r\n" % N + BODY + b"\n0\r\n\r\n")


def test_chunk_size_line_bare_lf():
    expect_reject(TE + b"%x\n" % N + BODY + b"\r\n0\r\n\r\n")


# ----------------------------------------------------------------------------- request line, Host, version


def test_request_line_garbage():
    expect_reject(b"GARBAGE\r\n\r\n")


def test_request_line_double_space():
    expect_reject(b"POST  /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n" + cl() + b"\r\n" + BODY)


def test_request_line_extra_token():
    expect_reject(b"POST /v1/chat/completions HTTP/1.1 extra\r\nHost: gw\r\n" + cl() + b"\r\n" + BODY)


def test_request_line_lowercase_version():
    expect_reject(b"POST /v1/chat/completions http/1.1\r\nHost: gw\r\n" + cl() + b"\r\n" + BODY)


def test_request_line_without_version():
    expect_reject(b"POST /v1/chat/completions\r\nHost: gw\r\n" + cl() + b"\r\n" + BODY)


def test_request_line_control_char_in_method():
    expect_reject(b"PO\x01ST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n" + cl() + b"\r\n" + BODY)


def test_request_line_space_in_target():
    expect_reject(b"POST /v1/chat/ completions HTTP/1.1\r\nHost: gw\r\n" + cl() + b"\r\n" + BODY)


def test_http11_without_host():
    expect_reject(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Type: application/json\r\n"
                  + cl() + b"\r\n" + BODY)


def test_two_host_headers():
    # RFC 9112 3.2: more than one Host is answered 400.
    expect_reject(H + b"Host: other\r\n" + cl() + b"\r\n" + BODY)


def test_unsupported_http_version():
    expect_reject(b"POST /v1/chat/completions HTTP/2.0\r\nHost: gw\r\n" + cl() + b"\r\n" + BODY,
                  status=(505, 400), code=None)


# ----------------------------------------------------------------------------- limits


def test_header_too_large():
    req = H + b"X-Big: " + b"a" * (MAX_HEADER_BYTES + 100) + b"\r\n" + cl() + b"\r\n" + BODY
    expect_reject(req, status=431, code="headers_too_large", must_close=False)


def test_header_too_large_from_many_small():
    extra = b"".join(b"X-Fill-%d: %s\r\n" % (i, b"v" * 300) for i in range(MAX_HEADERS - 5))
    req = H + extra + cl() + b"\r\n" + BODY
    assert len(req) - N > MAX_HEADER_BYTES and extra.count(b"\r\n") < MAX_HEADERS - 3
    expect_reject(req, status=431, code="headers_too_large", must_close=False)


def test_too_many_headers():
    extra = b"".join(b"X-H-%d: v\r\n" % i for i in range(MAX_HEADERS + 5))
    req = H + extra + cl() + b"\r\n" + BODY
    assert len(req) < MAX_HEADER_BYTES
    expect_reject(req, status=431, code="headers_too_large", must_close=False)


def test_one_header_over_max_headers():
    extra = b"".join(b"X-H-%d: v\r\n" % i for i in range(MAX_HEADERS - 2))
    expect_reject(H + extra + cl() + b"\r\n" + BODY, status=431, code="headers_too_large", must_close=False)


def test_request_target_too_long():
    target = b"/v1/chat/completions?" + b"q" * (MAX_HEADER_BYTES + 100)
    req = b"POST " + target + b" HTTP/1.1\r\nHost: gw\r\n" + cl() + b"\r\n" + BODY
    expect_reject(req, status=(431, 414), code=None, must_close=False)


def test_body_timeout_is_total_not_per_read():
    # The body trickles one byte every 100 ms: the body deadline must still fire.
    mock, gw = env()
    c = Conn(gw.port, timeout=5)
    c.send(H + cl() + b"\r\n")
    t0 = time.monotonic()
    answered = False
    for i in range(N):
        if time.monotonic() - t0 > BODY_MS / 1000 + 4:
            break
        try:
            c.send(BODY[i:i + 1])
        except (BrokenPipeError, ConnectionResetError):
            answered = True
            break
        rd, _, _ = select.select([c.sock], [], [], 0.1)
        if rd:
            answered = True
            break
    dt = time.monotonic() - t0
    assert answered, "no answer after trickling the body for %.1fs (client_body_ms=%d): the body deadline " \
                     "is per read, not total" % (dt, BODY_MS)
    try:
        r = c.read_response(timeout=2)
    except IncompleteResponse as ex:
        raise AssertionError("connection ended without a 408 after %.2fs of trickling: %s" % (dt, ex))
    assert_error(r, 408, "request_timeout")
    c.close()
    time.sleep(0.1)
    assert mock.api_requests() == []


def test_body_too_large_by_content_length():
    body = b'{"model":"m1","messages":[],"pad":"' + b"x" * MAX_BODY + b'"}'
    expect_reject(H + cl(len(body)) + b"\r\n" + body, status=413, code="request_too_large", must_close=False)


def test_body_one_byte_over_limit():
    pad = MAX_BODY + 1 - len(b'{"model":"m1","messages":[],"pad":""}')
    body = b'{"model":"m1","messages":[],"pad":"' + b"x" * pad + b'"}'
    assert len(body) == MAX_BODY + 1
    expect_reject(H + cl(len(body)) + b"\r\n" + body, status=413, code="request_too_large", must_close=False)


def test_body_too_large_by_chunked_total():
    body = b'{"model":"m1","messages":[],"pad":"' + b"x" * MAX_BODY + b'"}'
    sizes = [MAX_BODY // 4] * 8  # every chunk below the limit, the total over it
    expect_reject(TE + chunked(body, sizes), status=413, code="request_too_large", must_close=False)


def test_header_timeout():
    mock, gw = env()
    t0 = time.monotonic()  # before the connect: the deadline runs from the gateway's accept
    c = Conn(gw.port, timeout=5)
    c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: appl")
    try:
        r = c.read_response(timeout=HEADER_MS / 1000 + 4)
    except IncompleteResponse as ex:
        raise AssertionError("no 408 for a head left incomplete (client_header_ms=%d): %s" % (HEADER_MS, ex))
    dt = time.monotonic() - t0
    assert_error(r, 408, "request_timeout")
    assert dt >= HEADER_MS / 1000 * 0.8, "408 after %.3fs, before client_header_ms=%d" % (dt, HEADER_MS)
    assert c.wait_closed(2), "connection not closed after the 408"
    c.close()
    assert mock.api_requests() == []


def test_header_timeout_is_total_not_per_read():
    # Slowloris: one byte every 100 ms keeps each read short; the head deadline must still fire.
    mock, gw = env()
    c = Conn(gw.port, timeout=5)
    head = H + b"X-Slow: " + b"s" * 200
    t0 = time.monotonic()
    answered = False
    for i in range(len(head)):
        if time.monotonic() - t0 > HEADER_MS / 1000 + 4:
            break
        try:
            c.send(head[i:i + 1])
        except (BrokenPipeError, ConnectionResetError):
            answered = True
            break
        rd, _, _ = select.select([c.sock], [], [], 0.1)
        if rd:
            answered = True
            break
    dt = time.monotonic() - t0
    assert answered, "no answer after trickling the head for %.1fs (client_header_ms=%d): the head deadline " \
                     "is per read, not total" % (dt, HEADER_MS)
    try:
        r = c.read_response(timeout=2)
    except IncompleteResponse as ex:
        raise AssertionError("connection ended without a 408 after %.2fs of trickling: %s" % (dt, ex))
    assert_error(r, 408, "request_timeout")
    assert dt < HEADER_MS / 1000 + 2, "408 only after %.2fs" % dt
    c.close()
    assert mock.api_requests() == []


def test_body_timeout():
    mock, gw = env()
    c = Conn(gw.port, timeout=5)
    t0 = time.monotonic()
    c.send(H + cl() + b"\r\n" + BODY[:10])
    try:
        r = c.read_response(timeout=BODY_MS / 1000 + 4)
    except IncompleteResponse as ex:
        raise AssertionError("no 408 for a body left incomplete (client_body_ms=%d): %s" % (BODY_MS, ex))
    dt = time.monotonic() - t0
    assert_error(r, 408, "request_timeout")
    assert dt >= BODY_MS / 1000 * 0.8, "408 after %.3fs, before client_body_ms=%d" % (dt, BODY_MS)
    assert c.wait_closed(2), "connection not closed after the 408"
    c.close()
    time.sleep(0.1)
    assert mock.api_requests() == []


def test_chunked_body_timeout():
    mock, gw = env()
    c = Conn(gw.port, timeout=5)
    c.send(TE + b"%x\r\n" % N + BODY + b"\r\n")  # no last chunk
    try:
        r = c.read_response(timeout=BODY_MS / 1000 + 4)
    except IncompleteResponse as ex:
        raise AssertionError("no 408 for a chunked body without its last chunk (client_body_ms=%d): %s"
                             % (BODY_MS, ex))
    assert_error(r, 408, "request_timeout")
    assert c.wait_closed(2), "connection not closed after the 408"
    c.close()
    time.sleep(0.1)
    assert mock.api_requests() == []


def test_gateway_survives_all_of_the_above():
    # After every hostile request the same gateway still serves a normal one.
    expect_ok(H + cl() + b"\r\n" + BODY)


if __name__ == "__main__":
    gwtest.run(globals())
