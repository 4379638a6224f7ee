"""GET /metrics on the admin listener (gateway/metrics.c, issue 8).

What is checked:
- every scrape parses by the Prometheus text-format rules (promtext.py: HELP/TYPE before the
  samples, one TYPE per family, families together, label escaping, histogram buckets
  ascending and monotonic with +Inf = _count and _sum present), and holds every family of
  CONTRACT.md;
- the counters move as requests pass (plain and streamed), fail (unknown model, a backend
  error, bad credentials) and are limited (429): requests by tenant, model and status, tokens,
  the duration and TTFT histograms, refusals by code, rate limits; backend up and in-flight;
- a model the config does not know is counted as "<unknown>" and its name never appears;
- label values with a quote, a backslash and a newline (a pool name, a model name) come back
  out of the parser as they were in the config;
- the parser itself refuses broken expositions (so that the checks above can fail).
"""

import hashlib
import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
import promtext  # noqa: E402
from gwtest import Gateway, Mock, gateway_config, pool, wait_for  # noqa: E402

KEY = "gk_metricstestkey0000000000000000000000000000"
TINY = "gk_metricstinykey0000000000000000000000000000"
CANARY_MODEL = "canary-model-7f3a9c"

CONTRACT_FAMILIES = {
    "gotthard_requests_total": "counter",
    "gotthard_request_duration_seconds": "histogram",
    "gotthard_ttft_seconds": "histogram",
    "gotthard_tokens_total": "counter",
    "gotthard_ratelimited_total": "counter",
    "gotthard_residency_blocked_total": "counter",
    "gotthard_backend_up": "gauge",
    "gotthard_backend_inflight": "gauge",
    "gotthard_quota_store_up": "gauge",
    "gotthard_reloads_total": "counter",
    "gotthard_rejected_total": "counter",
}


def sha(k):
    return hashlib.sha256(k.encode()).hexdigest()


def config(mock, **over):
    cfg = gateway_config(
        [mock.port], models=("m1", "m2"),
        tenants=[{"id": "acme", "models": ["*"], "api_keys": [{"id": "acme-1", "sha256": sha(KEY)}]},
                 {"id": "tiny", "models": ["*"], "api_keys": [{"id": "tiny-1", "sha256": sha(TINY)}],
                  "limits": {"requests_per_minute": 1}}])
    return gwtest.deep_merge(cfg, over)


def scrape(gw):
    r = gwtest.get(gw.admin_port, "/metrics")
    assert r.status == 200, r.describe()
    ctype = r.header("content-type") or ""
    assert ctype.startswith("text/plain; version=0.0.4"), ctype
    text = r.body.decode("utf-8")
    fams = promtext.parse(text)
    for name, typ in CONTRACT_FAMILIES.items():
        assert name in fams, "family %s missing from /metrics" % name
        assert fams[name]["type"] == typ, "%s is %s, not %s" % (name, fams[name]["type"], typ)
        assert fams[name]["help"], "%s has no HELP" % name
    return fams, text


def chat(gw, key=KEY, model="m1", headers=None, **body):
    b = {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
    b.update(body)
    h = {"authorization": "Bearer " + key}
    h.update(headers or {})
    return gwtest.post_json(gw.port, "/v1/chat/completions", b, headers=h, timeout=20)


def delta(before, after, name, **labels):
    return promtext.value(after, name, **labels) - promtext.value(before, name, **labels)


def test_counters_move_as_requests_pass_fail_and_are_limited():
    mock = Mock()
    gw = Gateway(config(mock))
    be = "127.0.0.1:%d" % mock.port
    before, _ = scrape(gw)

    assert chat(gw).status == 200
    r = chat(gw, stream=True)
    assert r.status == 200 and b"[DONE]" in r.body, r.describe()
    r = chat(gw, model=CANARY_MODEL)
    gwtest.assert_error(r, 404, "model_not_found")
    r = chat(gw, headers={"x-mock-status": "503"})
    assert r.status == 503, r.describe()
    r = chat(gw, key="gk_nobody0000000000000000000000000000000000000")
    gwtest.assert_error(r, 401, "invalid_api_key")
    assert chat(gw, key=TINY).status == 200
    r = chat(gw, key=TINY)
    gwtest.assert_error(r, 429, "rate_limit_exceeded")

    after, text = scrape(gw)
    d = lambda name, **l: delta(before, after, name, **l)  # noqa: E731
    assert d("gotthard_requests_total", tenant="acme", model="m1", code="200") == 2, text
    assert d("gotthard_requests_total", tenant="acme", model="m1", code="503") == 1, text
    assert d("gotthard_requests_total", tenant="acme", model="<unknown>", code="404") == 1, text
    assert d("gotthard_requests_total", tenant="<none>", code="401") == 1, text
    assert d("gotthard_requests_total", tenant="tiny", model="m1", code="200") == 1, text
    assert d("gotthard_requests_total", tenant="tiny", model="m1", code="429") == 1, text
    assert d("gotthard_requests_total") == 7, text

    assert d("gotthard_rejected_total", reason="model_not_found") == 1, text
    assert d("gotthard_rejected_total", reason="invalid_api_key") == 1, text
    assert d("gotthard_rejected_total", reason="rate_limit_exceeded") == 1, text
    assert d("gotthard_ratelimited_total", tenant="tiny", kind="requests") == 1, text
    assert d("gotthard_auth_failures_total") == 1, text

    # tokens: the mock's usage (4 completion tokens per answer, max_tokens 4)
    assert d("gotthard_tokens_total", tenant="acme", model="m1", kind="completion") >= 8, text
    assert d("gotthard_tokens_total", tenant="acme", model="m1", kind="prompt") >= 2, text
    assert d("gotthard_tokens_total", tenant="acme", model="<unknown>") == 0, text

    # histograms: every m1 request has a duration; those answered by the backend a TTFT
    assert d("gotthard_request_duration_seconds_count", model="m1") == 5, text
    assert d("gotthard_request_duration_seconds_bucket", model="m1", le="+Inf") == 5, text
    assert d("gotthard_ttft_seconds_count", model="m1") >= 3, text
    assert d("gotthard_request_duration_seconds_sum", model="m1") > 0, text

    # the made-up model name is nowhere
    assert CANARY_MODEL not in text, "a model name from a request reached /metrics"

    assert promtext.value(after, "gotthard_backend_up", pool="p1", backend=be) == 1, text
    assert promtext.value(after, "gotthard_backend_inflight", pool="p1", backend=be) == 0, text
    assert promtext.value(after, "gotthard_quota_store_up") == 1, text


def test_ttft_and_duration_land_in_the_right_buckets():
    mock = Mock()
    gw = Gateway(config(mock))
    before, _ = scrape(gw)
    r = chat(gw, stream=True, headers={"x-mock-ttft-ms": "300", "x-mock-token-ms": "100",
                                       "x-mock-tokens": "4"})
    assert r.status == 200, r.describe()
    after, text = scrape(gw)
    d = lambda name, **l: delta(before, after, name, **l)  # noqa: E731
    # TTFT: the first event after 300 ms (above the 0.25 bucket, within 1 s on a slow sanitizer build)
    assert d("gotthard_ttft_seconds_bucket", model="m1", le="0.25") == 0, text
    assert d("gotthard_ttft_seconds_bucket", model="m1", le="1") == 1, text
    # duration: 300 ms + 3 x 100 ms
    assert d("gotthard_request_duration_seconds_bucket", model="m1", le="0.5") == 0, text
    assert d("gotthard_request_duration_seconds_bucket", model="m1", le="2.5") == 1, text
    s = d("gotthard_request_duration_seconds_sum", model="m1")
    assert 0.55 < s < 2.0, "duration sum %r" % s


def test_inflight_while_a_request_runs():
    mock = Mock()
    gw = Gateway(config(mock))
    be = "127.0.0.1:%d" % mock.port
    result = []
    t = threading.Thread(target=lambda: result.append(chat(gw, headers={"x-mock-delay-ms": "1500"}).status))
    t.start()
    try:
        mock.wait_requests(1)
        fams, text = scrape(gw)
        assert promtext.value(fams, "gotthard_backend_inflight", pool="p1", backend=be) == 1, text
    finally:
        t.join(10)
    assert result == [200], result
    fams, text = scrape(gw)
    assert promtext.value(fams, "gotthard_backend_inflight", pool="p1", backend=be) == 0, text


def test_label_values_are_escaped():
    model = 'we"ird\\model'
    pool_name = 'pool "a"\\b c'  # a line break is refused by the config (test_sec_admin)
    mock = Mock(models=("m1",))  # the mock refuses such names: it answers 404 for this one
    cfg = gateway_config([], pools=[pool(pool_name, ["m1", model], [mock.port])])
    gw = Gateway(cfg)
    r = gwtest.post_json(gw.port, "/v1/chat/completions",
                         {"model": model, "messages": [{"role": "user", "content": "x"}]})
    assert r.status in (404, 502), r.describe()
    fams, text = scrape(gw)
    models = {ls.get("model") for _, ls, _ in fams["gotthard_requests_total"]["samples"]}
    assert model in models, "the model label did not come back as configured: %r\n%s" % (models, text)
    pools = {ls.get("pool") for _, ls, _ in fams["gotthard_backend_up"]["samples"]}
    assert pool_name in pools, "the pool label did not come back as configured: %r\n%s" % (pools, text)
    assert 'pool="pool \\"a\\"\\\\b c"' in text, text
    assert promtext.value(fams, "gotthard_request_duration_seconds_count", model=model) == 1, text


def test_a_scrape_under_no_traffic_is_valid_and_small():
    mock = Mock()
    gw = Gateway(config(mock))
    fams, text = scrape(gw)
    assert promtext.value(fams, "gotthard_requests_total") == 0, text
    assert promtext.value(fams, "gotthard_reloads_total", result="ok") == 0, text
    assert len(text) < 20000, len(text)


BAD = [
    ("no TYPE", "x_total 1\n"),
    ("two TYPEs", "# TYPE x_total counter\n# TYPE x_total counter\nx_total 1\n"),
    ("TYPE after samples", "# TYPE a gauge\na 1\n# TYPE a gauge\n"),
    ("families interleaved", "# TYPE a gauge\n# TYPE b gauge\na 1\nb 1\na{x=\"1\"} 2\n"),
    ("bad escape", "# TYPE a gauge\na{x=\"\\t\"} 1\n"),
    ("unterminated value", "# TYPE a gauge\na{x=\"1} 1\n"),
    ("raw quote", "# TYPE a gauge\na{x=\"a\"b\"} 1\n"),
    ("duplicate label", "# TYPE a gauge\na{x=\"1\",x=\"2\"} 1\n"),
    ("duplicate sample", "# TYPE a gauge\na{x=\"1\"} 1\na{x=\"1\"} 2\n"),
    ("no final newline", "# TYPE a gauge\na 1"),
    ("bad value", "# TYPE a gauge\na one\n"),
    ("negative counter", "# TYPE a_total counter\na_total -1\n"),
    ("buckets decrease", "# TYPE h histogram\nh_bucket{le=\"1\"} 3\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 2\n"),
    ("le not ascending", "# TYPE h histogram\nh_bucket{le=\"2\"} 1\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n"),
    ("+Inf is not _count", "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n"),
    ("no _sum", "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 2\n"),
    ("no +Inf", "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_sum 1\nh_count 2\n"),
]


def test_the_parser_is_strict():
    for what, text in BAD:
        try:
            promtext.parse(text)
        except promtext.ParseError:
            continue
        raise AssertionError("the parser accepted an exposition with %s: %r" % (what, text))
    good = ("# HELP a_total A \\\\ help.\n# TYPE a_total counter\n"
            "a_total{x=\"q\\\"\\\\\\n\"} 1\n"
            "# TYPE h histogram\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1.5\nh_count 2\n")
    fams = promtext.parse(good)
    assert fams["a_total"]["samples"][0][1] == {"x": "q\"\\\n"}, fams


if __name__ == "__main__":
    gwtest.run(globals())
