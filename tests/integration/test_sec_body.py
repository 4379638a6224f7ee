"""Request body inspection and usage charging (issue 14): invalid UTF-8 and duplicate keys at any
depth refused, the memory a parsed body may take bounded, usage asked for on every stream and
charged even when the client tries to switch it off. The review that followed: keys equal under
case folding, JSON that is not strict RFC 8259, numbers re-printed exactly."""
import hashlib
import json
import os
import threading

import gwtest
from gwtest import Gateway, Mock, gateway_config, post_json, assert_error

KEY = "gk_sectestbody00000000000000000000000000000000"


def _post(gw, body, headers=None, timeout=20):
    h = {"authorization": "Bearer " + KEY}
    h.update(headers or {})
    return post_json(gw.port, "/v1/chat/completions", body, headers=h, timeout=timeout)


def _refused_unsent(gw, mock, body, status, code, label):
    before = len(mock.api_requests())
    r = _post(gw, body)
    try:
        assert_error(r, status, code)
    except AssertionError as e:
        raise AssertionError("%s: %s" % (label, e))
    assert len(mock.api_requests()) == before, "%s: the refused body reached the backend" % label


_shared = gwtest.Shared(lambda: _plain())


def _plain():
    mock = Mock()
    return mock, Gateway(gateway_config([mock.port]))


# ------------------------------------------------------------------ finding 3: invalid UTF-8

BAD_UTF8 = {
    "ff_fe": b"\xff\xfe",
    "lone_continuation": b"\x80",
    "overlong_slash_2": b"\xc0\xaf",
    "overlong_nul_2": b"\xc0\x80",
    "overlong_3": b"\xe0\x80\xaf",
    "overlong_4": b"\xf0\x80\x80\xaf",
    "surrogate_d800": b"\xed\xa0\x80",
    "surrogate_dfff": b"\xed\xbf\xbf",
    "surrogate_pair_cesu": b"\xed\xa0\xbd\xed\xb8\x80",
    "truncated_2_of_3": b"\xe2\x82",
    "truncated_1_of_2": b"\xc3",
    "truncated_3_of_4": b"\xf0\x9f\x98",
    "above_10ffff": b"\xf4\x90\x80\x80",
    "f5_lead": b"\xf5\x80\x80\x80",
    "five_byte": b"\xf8\x88\x80\x80\x80",
}


def test_invalid_utf8_refused_everywhere():
    """Raw invalid UTF-8 in a message, in a nested key, in the model string or after a valid
    multibyte character: 400 invalid_json, nothing sent."""
    mock, gw = _shared.get()
    cases = []
    for name, bad in BAD_UTF8.items():
        cases.append((name + "/content", b'{"model":"m1","messages":[{"role":"user","content":"a' + bad + b'b"}]}'))
        cases.append((name + "/key", b'{"model":"m1","messages":[{"role":"user","content":"x"}],"meta":{"k' + bad + b'":1}}'))
        cases.append((name + "/end_of_string", b'{"model":"m1","messages":[{"role":"user","content":"\xc3\xa9' + bad + b'"}]}'))
    gwtest.check_all(cases, lambda c: _refused_unsent(gw, mock, c[1], 400, "invalid_json", c[0]))


def test_valid_utf8_and_lone_surrogate_escapes():
    """Valid multibyte text (2, 3, 4 bytes, U+FFFF, U+10FFFF, an escaped pair) is forwarded byte
    for byte; lone surrogate escapes stay refused."""
    mock, gw = _shared.get()
    for text in (b"\xc3\xa9", b"\xe2\x82\xac", b"\xf0\x9d\x84\x9e", b"\xef\xbf\xbf", b"\xf4\x8f\xbf\xbf",
                 b"\\ud83d\\ude00", b"\xed\x9f\xbf", b"\xee\x80\x80"):
        body = b'{"model":"m1","messages":[{"role":"user","content":"a' + text + b'b"}]}'
        r = _post(gw, body)
        assert r.status == 200, "%r: %s" % (text, r.describe())
        assert mock.api_requests()[-1]["body"].encode("utf-8") == body, mock.api_requests()[-1]["body"]
    for esc in (b"\\ud800", b"\\udc00", b"\\ud800\\u0041", b"\\udfff\\ud800"):
        body = b'{"model":"m1","messages":[{"role":"user","content":"a' + esc + b'b"}]}'
        _refused_unsent(gw, mock, body, 400, "invalid_json", esc.decode())


# ------------------------------------------------------------------ finding 2: duplicate keys


def _nest(depth, in_array, leaf):
    """`leaf` (an object's inner text) at `depth` levels under the top object."""
    s = "{" + leaf + "}"
    for _ in range(depth - 1):
        s = ('{"a":[%s]}' % s) if in_array else ('{"a":%s}' % s)
    return s


def test_duplicate_keys_at_every_depth():
    """A key twice in an object at depth 1 to 5 (objects in objects, objects in arrays, and in a
    message) is refused; the same key in sibling objects is not."""
    mock, gw = _shared.get()
    head = '{"model":"m1","messages":[{"role":"user","content":"hi"}],"x":'
    cases = []
    for depth in range(1, 6):
        for in_array in (False, True):
            cases.append(("depth%d%s" % (depth, "_array" if in_array else ""),
                          head + _nest(depth, in_array, '"k":1,"k":2') + "}"))
    cases.append(("message", '{"model":"m1","messages":[{"role":"user","content":"a","content":"b"}]}'))
    cases.append(("message_many_keys", '{"model":"m1","messages":[{%s,"role":"user","k7":0}]}' %
                  ",".join('"k%d":0' % i for i in range(40))))
    cases.append(("stream_options", '{"model":"m1","messages":[],"stream":true,'
                  '"stream_options":{"include_usage":true,"include_usage":false}}'))
    cases.append(("array_of_arrays", head + '[[[{"k":1,"k":1}]]]}'))
    gwtest.check_all(cases, lambda c: _refused_unsent(gw, mock, c[1].encode(), 400, "invalid_json", c[0]))
    ok = head + '[{"k":1},{"k":2},{"a":{"k":1},"k":{"a":1}}]}'
    r = _post(gw, ok)
    assert r.status == 200, r.describe()


# ------------------------------------------------------------------ finding 2: usage on streams


def _stream_body(stream_options, tokens_hint=None):
    b = '{"model":"m1","messages":[{"role":"user","content":"hello"}],"stream":true'
    if stream_options is not None:
        b += ',"stream_options":' + stream_options
    return (b + "}").encode()


def _usage_chunks(body):
    out = []
    for e in gwtest.sse_events(body):
        if e.strip() == "[DONE]":
            continue
        j = json.loads(e)
        if "usage" in j and j.get("usage") and not j.get("choices"):
            out.append(j)
    return out


VARIANTS = {"absent": None, "null": "null", "false": '{"include_usage":false}', "empty": "{}",
            "include_null": '{"include_usage":null}'}


def test_stream_asks_for_usage_whatever_the_client_sent():
    """Without any plugin: the backend is asked for usage on every stream; the client that did not
    ask for it does not see the usage chunk, the one that did keeps it."""
    mock, gw = _shared.get()
    for name, so in VARIANTS.items():
        r = _post(gw, _stream_body(so))
        assert r.status == 200, "%s: %s" % (name, r.describe())
        sent = json.loads(mock.api_requests()[-1]["body"])
        assert (sent.get("stream_options") or {}).get("include_usage") is True, "%s: backend got %s" % (name, sent)
        assert not _usage_chunks(r.body), "%s: the client did not ask for usage but got it" % name
        assert gwtest.sse_events(r.body)[-1].strip() == "[DONE]", name
    r = _post(gw, _stream_body('{"include_usage":true}'))
    assert r.status == 200 and len(_usage_chunks(r.body)) == 1, r.describe()


def test_stream_options_of_the_wrong_type_refused():
    mock, gw = _shared.get()
    cases = [("so_" + n, _stream_body(v)) for n, v in
             (("number", "5"), ("string", '"x"'), ("array", "[]"), ("true", "true"))]
    cases += [("iu_" + n, _stream_body('{"include_usage":%s}' % v)) for n, v in
              (("string", '"yes"'), ("number", "1"), ("object", "{}"))]
    gwtest.check_all(cases, lambda c: _refused_unsent(gw, mock, c[1], 400, "invalid_request_error", c[0]))


def _quota_gw(mock):
    return Gateway(gateway_config([mock.port], tenants=[
        {"id": "acme", "models": ["*"],
         "api_keys": [{"id": "acme-1", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}],
         "limits": {"tokens_per_minute": 1000}}]))


def test_quota_charges_streamed_tokens_whatever_stream_options():
    """A tenant with 1,000 tokens a minute, streams of 400 tokens (estimate: about 270). Each
    stream is charged its 400 completion tokens: two are served, the third is refused. Were they
    charged the estimate, three would fit. A duplicated include_usage is refused and not charged."""
    mock = Mock(["--tokens", "400"])
    for name in ("absent", "null", "false"):
        gw = _quota_gw(mock)
        got = []
        for i in range(3):
            r = _post(gw, _stream_body(VARIANTS[name]))
            got.append(r.status)
            if r.status == 200:
                ev = [e for e in gwtest.sse_events(r.body) if e.strip() != "[DONE]"]
                assert len(ev) >= 400, "%s: a stream of %d events" % (name, len(ev))
                assert not _usage_chunks(r.body), "%s: usage chunk not asked for, relayed" % name
        assert got[:2] == [200, 200] and got[2] == 429, \
            "%s: statuses %s: streams of 400 tokens were not charged 400" % (name, got)
        gw.stop()
    gw = _quota_gw(mock)
    before = len(mock.api_requests())
    for _ in range(3):
        assert_error(_post(gw, _stream_body('{"include_usage":true,"include_usage":false}')), 400, "invalid_json")
    assert len(mock.api_requests()) == before
    r = _post(gw, _stream_body(None))
    assert r.status == 200, "refused duplicates were charged: " + r.describe()


def test_quota_charges_what_a_stream_without_usage_relayed():
    """A backend that ignores stream_options and sends 400 content events without usage: each
    stream is charged the prompt estimate plus one token per event relayed (about 400), not its
    estimate (about 270): with 1,000 tokens a minute two are served and the third is 429."""
    from test_backend_faults import RawBackend, SSE_HEAD, SSE_END, TOKEN_EVENT, chunk
    events = b"".join(chunk(TOKEN_EVENT) for _ in range(400)) + chunk(b"data: [DONE]\n\n")
    fake = RawBackend(lambda req, f: [SSE_HEAD + events + SSE_END])
    try:
        gw = Gateway(gateway_config(pools=[gwtest.pool("p1", ["m1"], [gwtest.backend(fake.port)])], tenants=[
            {"id": "acme", "models": ["*"],
             "api_keys": [{"id": "acme-1", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}],
             "limits": {"tokens_per_minute": 1000}}]))
        got = [_post(gw, _stream_body(None)).status for _ in range(3)]
        sent = json.loads(fake.requests()[0].body)
        assert sent["stream_options"] == {"include_usage": True}, sent
        assert got == [200, 200, 429], "statuses %s: streams of 400 events were charged less" % got
    finally:
        fake.close()


# ------------------------------------------------------------------ finding 1: memory


def _status_kb(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError("no %s in /proc/%d/status" % (field, pid))


def _zeros_body(size):
    head = b'{"model":"m1","messages":[{"role":"user","content":"hi"}],"x":['
    n = (size - len(head) - 2) // 2
    return head + b"0," * (n - 1) + b"0]}"


def _measured_gateway(mock):
    """A gateway for peak-memory tests: two workers, no memory ceiling, ASan's quarantine off
    (freed memory would otherwise be held 256 MiB deep, so the growth measured is the gateway's
    own); GW_RELEASE_GOTTHARD, when set, runs that (Release) binary instead."""
    env = {"ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") +
           ":quarantine_size_mb=0:allocator_release_to_os_interval_ms=50"}
    rel = os.environ.get("GW_RELEASE_GOTTHARD")
    saved = os.environ.get("GOTTHARD_BIN")
    if rel:
        os.environ["GOTTHARD_BIN"] = rel
    try:
        return Gateway(gateway_config([mock.port], workers=2, limits={"max_memory_bytes": 0},
                                      timeouts={"upstream_first_byte_ms": 60000}), env=env)
    finally:
        if rel and saved is None:
            del os.environ["GOTTHARD_BIN"]
        elif rel:
            os.environ["GOTTHARD_BIN"] = saved


def _peak_growth(gw, bodies, headers=None):
    """Sends the bodies at once, one client each. Returns (results, VmHWM growth in MiB)."""
    base = _status_kb(gw.pid, "VmHWM")
    results = [None] * len(bodies)

    def send(i):
        try:
            results[i] = post_json(gw.port, "/v1/chat/completions", bodies[i], timeout=120, headers=headers)
        except Exception as e:  # noqa: BLE001
            results[i] = e

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    peak = _status_kb(gw.pid, "VmHWM")
    print("    VmHWM %.0f MiB -> %.0f MiB (%s)" % (base / 1024.0, peak / 1024.0,
                                                   "release" if os.environ.get("GW_RELEASE_GOTTHARD") else "asan"))
    for r in results:
        assert not isinstance(r, Exception) and r is not None, "a request was lost: %r" % (r,)
    if os.environ.get("GW_RELEASE_GOTTHARD"):  # no shadow memory: the resident peak itself
        assert peak < 200 * 1024, "peak resident memory %.0f MiB" % (peak / 1024.0)
    return results, (peak - base) / 1024.0


def test_memory_of_concurrent_node_heavy_bodies_is_bounded():
    """20 clients send 4 MiB bodies at once, each a long array of zeros beside the messages (two
    million JSON values): 413, and the gateway's peak resident memory (VmHWM) grows by less than
    200 MiB over its peak before (see _measured_gateway)."""
    mock = Mock()
    gw = _measured_gateway(mock)
    assert post_json(gw.port, "/v1/chat/completions", gwtest.chat("m1")).status == 200
    results, grew = _peak_growth(gw, [_zeros_body((4 << 20) - 64)] * 20)
    assert grew < 200, "peak resident memory grew by %.0f MiB for 20 x 4 MiB bodies" % grew
    for r in results:
        assert_error(r, 413, "request_too_large")
    r = post_json(gw.port, "/v1/chat/completions", gwtest.chat("m1"))
    assert r.status == 200, r.describe()


def _mixed_body(size, zeros):
    """`size` bytes: `zeros` zeros in an array, the rest a message's text."""
    head = b'{"model":"m1","messages":[{"role":"user","content":"'
    arr = b'"}],"x":[' + b"0," * (zeros - 1) + b"0]}"
    return head + b"a" * (size - len(head) - len(arr)) + arr


def test_memory_of_concurrent_bodies_that_fit_the_budget_is_bounded():
    """The worst the budget admits: 4 MiB bodies of text with as many zeros beside as still fit
    (found by halving), 20 of them held at the backend at once (ttft 3 s), half of them streams
    (whose body the gateway rewrites). Peak resident memory grows by less than 200 MiB: a
    request waiting for its backend holds its body, not its parse."""
    mock = Mock()
    gw = _measured_gateway(mock)
    size, zeros, step = (4 << 20) - 64, 1 << 20, 1 << 19
    body = None
    while step >= 1024:  # the most zeros accepted, within 1024
        r = post_json(gw.port, "/v1/chat/completions", _mixed_body(size, zeros), timeout=60)
        if r.status == 200:
            body = _mixed_body(size, zeros)
            zeros += step
        else:
            assert_error(r, 413, "request_too_large")
            zeros -= step
        step //= 2
    if body is None:
        zeros -= 1024
        body = _mixed_body(size, zeros)
    streamed = body.replace(b'{"model":"m1",', b'{"model":"m1","stream":true,', 1)
    print("    %d zeros fit" % zeros)
    results, grew = _peak_growth(gw, [body, streamed] * 10, headers={"x-mock-ttft-ms": "3000"})
    assert grew < 200, "peak resident memory grew by %.0f MiB" % grew
    assert all(r.status == 200 for r in results), [r.status for r in results]


def test_large_text_body_still_served():
    """A 3 MiB chat body of text, and a body of a few thousand small messages, are served."""
    mock, gw = _shared.get()
    r = post_json(gw.port, "/v1/chat/completions", gwtest.chat("m1", content="word " * (600 << 10)), timeout=60)
    assert r.status == 200, r.describe()
    msgs = [{"role": "user", "content": "message %d" % i} for i in range(3000)]
    r = post_json(gw.port, "/v1/chat/completions", {"model": "m1", "messages": msgs}, timeout=60)
    assert r.status == 200, r.describe()


def _meminfo_total():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def _read_number(path):
    try:
        with open(path) as f:
            v = f.read().split()
    except OSError:
        return 0
    return int(v[0]) if v and v[0].isdigit() else 0


def _cgroup_limit(pid):
    """As overload.c reads it: the process's own cgroup, else the mount's root; v2 before v1."""
    v2 = v1 = 0
    with open("/proc/%d/cgroup" % pid) as f:
        for line in f:
            num, ctl, path = line.rstrip("\n").split(":", 2)
            if num == "0" and ctl == "":
                v2 = _read_number("/sys/fs/cgroup%s/memory.max" % path)
            elif "memory" in ctl:
                v1 = _read_number("/sys/fs/cgroup/memory%s/memory.limit_in_bytes" % path)
    v2 = v2 or _read_number("/sys/fs/cgroup/memory.max")
    return v2 or v1 or _read_number("/sys/fs/cgroup/memory/memory.limit_in_bytes")


def test_max_memory_default_is_derived_from_the_machine():
    """Without limits.max_memory_bytes the ceiling is 3/4 of the smaller of the cgroup's memory
    limit and MemTotal; an explicit 0 still turns it off. limits.max_body_bytes defaults to 4 MiB."""
    mock = Mock()
    total = _meminfo_total()
    cfg = gateway_config([mock.port], limits={"max_body_bytes": None})
    gw = Gateway(cfg)
    cg = _cgroup_limit(gw.pid)
    avail = min(total, cg) if cg else total
    m = gwtest.request(gw.admin_port, "GET", "/metrics").body.decode()
    line = [ln for ln in m.splitlines() if ln.startswith("gotthard_memory_limit_bytes ")]
    assert line and int(line[0].split()[1]) == avail // 4 * 3, "%s, expected %d" % (line, avail // 4 * 3)
    r = post_json(gw.port, "/v1/chat/completions", gwtest.chat("m1", content="a" * ((4 << 20) + 1)), timeout=60)
    assert_error(r, 413, "request_too_large")
    gw.stop()
    gw = Gateway(gateway_config([mock.port], limits={"max_memory_bytes": 0}))
    m = gwtest.request(gw.admin_port, "GET", "/metrics").body.decode()
    assert "gotthard_memory_limit_bytes 0" in m



# ------------------------------------------------------------------ review F1: keys under case folding
# A Go backend (encoding/json) matches a key to a struct field ignoring case, with Unicode's simple
# folds (U+017F 'ſ' is s, U+212A 'K' is k), and the last match wins.

LONG_S, KELVIN = "\u017f", "\u212a"

FOLDED_REFUSED = {
    "MODEL_after_model": '{"model":"m1","MODEL":"m2","messages":[]}',
    "Model_before_model": '{"Model":"m2","model":"m1","messages":[]}',
    "Stream": '{"model":"m1","Stream":true,"messages":[]}',
    "long_s_stream": '{"model":"m1","' + LONG_S + 'tream":true,"messages":[]}',
    "USER": '{"model":"m1","USER":"alice@example.com","messages":[]}',
    "long_s_user": '{"model":"m1","u' + LONG_S + 'er":"alice@example.com","messages":[]}',
    "Safety_Identifier": '{"model":"m1","Safety_Identifier":"alice","messages":[]}',
    "Stream_Options": '{"model":"m1","stream":true,"stream_options":null,'
                      '"Stream_Options":{"include_usage":false},"messages":[]}',
    "Include_Usage": '{"model":"m1","stream":true,"stream_options":{"Include_Usage":false},"messages":[]}',
    "Max_Tokens": '{"model":"m1","Max_Tokens":100000,"messages":[]}',
    "N": '{"model":"m1","N":5,"messages":[]}',
    "Messages": '{"model":"m1","Messages":[],"messages":[]}',
    "escaped_MODEL": '{"model":"m1","\\u004dODEL":"m2","messages":[]}',
    "escaped_long_s": '{"model":"m1","\\u017ftream":true,"messages":[]}',
    # two keys equal under folding, at any depth, whatever their names
    "nested_pair": '{"model":"m1","messages":[],"x":{"abc":1,"ABC":2}}',
    "in_array": '{"model":"m1","messages":[{"role":"user","content":"a","Content":"b"}]}',
    "kelvin_pair": '{"model":"m1","messages":[],"x":[{"kind":1,"' + KELVIN + 'ind":2}]}',
    "long_s_pair": '{"model":"m1","messages":[],"x":{"a":{"sx":1,"' + LONG_S + 'x":2}}}',
    "many_keys": '{"model":"m1","messages":[],"x":{%s,"K17":0}}' % ",".join('"k%d":0' % i for i in range(40)),
}


def test_keys_equal_under_case_folding_refused():
    """A second key equal to another under case folding (ASCII, ſ, K) at any depth, or a top-level
    key (or one in stream_options) that folds onto a name the gateway reads without being it:
    400 invalid_json, nothing sent. A Go backend would have read MODEL as model, Stream as stream."""
    mock, gw = _shared.get()
    cases = [(n, b.encode()) for n, b in FOLDED_REFUSED.items()]
    gwtest.check_all(cases, lambda c: _refused_unsent(gw, mock, c[1], 400, "invalid_json", c[0]))


def test_keys_that_only_look_folded_pass():
    """Keys that do not fold onto each other, nor onto a name the gateway reads, reach the backend
    as they were: a Model key deeper down (a tool's schema), non-ASCII letters without an ASCII fold."""
    mock, gw = _shared.get()
    for body in ('{"model":"m1","messages":[],"tools":[{"type":"function","function":{"name":"f",'
                 '"parameters":{"type":"object","properties":{"Model":{"type":"string"},'
                 '"User":{"type":"string"}}}}}]}',
                 '{"model":"m1","messages":[],"metadata":{"\u00e9t\u00e9":"1","ete":"2","Stream":"x"}}',
                 '{"model":"m1","messages":[],"x":{"k":1,"kk":2,"s":3,"ss":4}}'):
        r = _post(gw, body.encode())
        assert r.status == 200, "%s: %s" % (body, r.describe())
        assert json.loads(mock.api_requests()[-1]["body"]) == json.loads(body), body


def test_model_check_not_bypassed_by_a_folded_key():
    """A tenant allowed m1 only: {"model":"m1","MODEL":"m2"} is refused, not run on m2."""
    mock = Mock()
    gw = Gateway(gateway_config([mock.port], tenants=[
        {"id": "acme", "models": ["m1"],
         "api_keys": [{"id": "acme-1", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}]}]))
    for body in (b'{"model":"m1","MODEL":"m2","messages":[]}', b'{"model":"m1","Model":"m2","messages":[]}'):
        _refused_unsent(gw, mock, body, 400, "invalid_json", body.decode())
    assert_error(_post(gw, b'{"model":"m2","messages":[]}'), 403, "model_not_allowed")


# ------------------------------------------------------------------ review F2: strict RFC 8259

NOT_STRICT = {
    "ws_vt": b'{"model":"m1",\x0b"messages":[]}',
    "ws_ff": b'{"model":"m1",\x0c"messages":[]}',
    "ws_0x1f": b'{"model":"m1",\x1f"messages":[]}',
    "ws_0x01_end": b'{"model":"m1","messages":[]}\x01',
    "ws_nbsp": b'{"model":"m1",\xc2\xa0"messages":[]}',
    "leading_zero": b'{"model":"m1","messages":[],"seed":010}',
    "neg_leading_zero": b'{"model":"m1","messages":[],"seed":-01}',
    "zero_zero": b'{"model":"m1","messages":[],"seed":00}',
    "trailing_dot": b'{"model":"m1","messages":[],"temperature":1.}',
    "dot_first": b'{"model":"m1","messages":[],"temperature":.5}',
    "minus_dot": b'{"model":"m1","messages":[],"temperature":-.5}',
    "dot_exp": b'{"model":"m1","messages":[],"temperature":1.e1}',
    "plus": b'{"model":"m1","messages":[],"temperature":+1}',
    "exp_no_digits": b'{"model":"m1","messages":[],"temperature":1e+}',
    "minus_alone": b'{"model":"m1","messages":[],"temperature":-}',
    "hex": b'{"model":"m1","messages":[],"seed":0x10}',
    "bad_escape": b'{"model":"m1","messages":[{"role":"user","content":"\\x41"}]}',
    "short_u_escape": b'{"model":"m1","messages":[{"role":"user","content":"\\u41"}]}',
    "unterminated": b'{"model":"m1","messages":[{"role":"user","content":"abc',
}
for _c in list(range(1, 0x20)):
    NOT_STRICT["raw_ctl_%02x" % _c] = (b'{"model":"m1","messages":[{"role":"user","content":"a'
                                       + bytes([_c]) + b'b"}]}')
NOT_STRICT["raw_ctl_in_key"] = b'{"model":"m1","messages":[],"k\x07":1}'
NOT_STRICT["raw_ctl_in_model"] = b'{"model":"m1\x09","messages":[]}'


def test_not_strict_json_refused():
    """What RFC 8259 does not allow and cJSON takes: raw control characters in strings, white space
    other than SP HT CR LF, numbers with leading zeros, a '.' without digits on both sides, a '+'
    sign; also bad escapes. 400 invalid_json, nothing sent (streams too: their body is re-printed)."""
    mock, gw = _shared.get()
    cases = []
    for name, body in NOT_STRICT.items():
        cases.append((name, body))
        if not name.startswith("raw_ctl_") or name in ("raw_ctl_01", "raw_ctl_0a", "raw_ctl_1f"):
            cases.append((name + "/stream", body.replace(b'"model":"m1"', b'"model":"m1","stream":true', 1)))
    gwtest.check_all(cases, lambda c: _refused_unsent(gw, mock, c[1], 400, "invalid_json", c[0]))


def test_strict_json_passes():
    """The strict forms around those: escaped control characters, every escape, numbers of every
    allowed shape, and SP HT CR LF around every token."""
    mock, gw = _shared.get()
    body = (b' \t\r\n{ "model" : "m1" ,\n"messages":[ {"role":"user","content":"\\u0001\\u001f\\b\\f\\n\\r\\t\\/\\\\\\""} ] ,'
            b'"x":[0,-0,1,-1,0.5,-0.5,10,1e5,1E5,1e+5,1e-5,1.5e3,0e0,-0.0e-0,123,true,false,null] }\r\n')
    for stream in (False, True):
        b = body.replace(b'"model" : "m1"', b'"model" : "m1","stream":true') if stream else body
        r = _post(gw, b)
        assert r.status == 200, "stream %s: %s" % (stream, r.describe())
        sent = json.loads(mock.api_requests()[-1]["body"])
        want = json.loads(b)
        if stream:
            want["stream_options"] = {"include_usage": True}
        assert sent == want, "stream %s: sent %s" % (stream, sent)


def test_reprinted_body_over_max_body_bytes_is_413():
    """A re-printed body longer than limits.max_body_bytes plus the room of the gateway's own
    edits (4 KiB: include_usage, a user hash, an alias) is refused 413, not sent; a stream at the
    limit, which include_usage makes a little longer, is served."""
    mock = Mock()
    gw = Gateway(gateway_config([mock.port], limits={"max_body_bytes": 4096}))
    head = b'{"model":"m1","stream":true,"messages":[{"role":"user","content":"'
    fill = b"a" * (4096 - len(head) - 4)
    body = head + fill + b'"}]}'
    assert len(body) == 4096
    r = _post(gw, body)
    assert r.status == 200, r.describe()
    rec = mock.api_requests()[-1]
    assert json.loads(rec["body"])["stream_options"] == {"include_usage": True}, rec["body"][-200:]
    # numbers printed in full: 1e15 is 1000000000000000 on the wire (17 bytes for 4)
    nums = b'{"model":"m1","stream":true,"messages":[],"x":[' + b",".join([b"1e15"] * 800) + b"]}"
    assert len(nums) < 4096
    _refused_unsent(gw, mock, nums, 413, "request_too_large", "numbers grown")


def test_body_replaced_at_select_is_held_to_the_same_rules():
    """A plugin may replace the body in upstream_select, after the core settled it: that body is
    printed with exact numbers and held to max_body_bytes (plus the room of edits) too, never
    printed by cJSON's rounding on the way out (found combining the branches of issue 14)."""
    mock = Mock()

    def gw_with(pad):
        sel = {"model": "m1", "messages": [], "x": 0.30000000000000004, "pad": "y" * pad}
        plug = [{"path": gwtest.example_plugin(),
                 "config": {"header": "x-example", "value": "1", "select_body": sel}}]
        return Gateway(gateway_config([mock.port], plugins=plug, limits={"max_body_bytes": 1024}))
    gw = gw_with(3000)  # within 1024 + 4096
    r = post_json(gw.port, "/v1/chat/completions", {"model": "m1", "messages": []})
    assert r.status == 200, r.describe()
    raw = mock.api_requests()[-1]["body"]
    assert '"x":0.30000000000000004' in raw, raw[:200]
    gw.stop()
    gw = gw_with(6000)  # past it
    before = len(mock.api_requests())
    r = post_json(gw.port, "/v1/chat/completions", {"model": "m1", "messages": []})
    assert_error(r, 413, "request_too_large")
    assert len(mock.api_requests()) == before, "the body past the limit reached the backend"


# ------------------------------------------------------------------ review F3: numbers printed exactly

EXACT_NUMBERS = ["9007199254740991", "-9007199254740991", "9007199254740992", "0.30000000000000004",
                 "0.1", "-0", "-0.0", "1.5", "1e-7", "2.5e300", "1.7976931348623157e308", "5e-324",
                 "123.456", "1e20", "1e15", "4.35", "100", "0", "1e-400", "2e-308"]
INEXACT_NUMBERS = ["123456789012345678", "9007199254740993", "-9007199254740993", "18446744073709551615",
                   "1e400", "-1e400", "1E309"]


def test_numbers_reach_the_backend_as_written():
    """A re-printed body (a stream) carries every number so that Python reads the value the
    client's text meant: whole numbers as integers, others round-tripping their double."""
    mock, gw = _shared.get()

    def one(v):
        body = ('{"model":"m1","stream":true,"messages":[],"seed":%s,"x":[%s,{"y":%s}]}' % (v, v, v)).encode()
        r = _post(gw, body)
        assert r.status == 200, r.describe()
        text = mock.api_requests()[-1]["body"]
        sent = json.loads(text)
        want = json.loads(v)
        for got in (sent["seed"], sent["x"][0], sent["x"][1]["y"]):
            assert got == want, "%s reached the backend as %r (%s)" % (v, got, text)
    gwtest.check_all(EXACT_NUMBERS, one)


def test_numbers_that_cannot_be_exact_refused():
    """Integers beyond +-2^53 and numbers past the double's range: 400 invalid_json, not sent,
    streaming or not, at any depth."""
    mock, gw = _shared.get()
    cases = []
    for v in INEXACT_NUMBERS:
        for stream in ("true", "false"):
            cases.append(("%s/%s" % (v, stream),
                          ('{"model":"m1","stream":%s,"messages":[],"x":[{"y":%s}]}' % (stream, v)).encode()))
    gwtest.check_all(cases, lambda c: _refused_unsent(gw, mock, c[1], 400, "invalid_json", c[0]))


if __name__ == "__main__":
    gwtest.run(globals())
