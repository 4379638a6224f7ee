"""The status page (GET / on the admin listener) in a real browser: headless Chromium (Debian's
`chromium`, installed by tools/deps).

What is checked:
- the page is one self-contained HTML document (no external URL in it, a strict
  Content-Security-Policy) and renders in Chromium: the pools, backends, tenants of the test
  config, their health, residency verdicts and quota use, and recent audit events appear in
  the rendered DOM after its scripts fetched /status, /usage and /audit/recent;
- a screenshot is kept as a test artifact: $GW_ARTIFACT_DIR/status_page.png (default: the
  build tree's tests/artifacts/, or the repository's build/ when run by hand);
- /status and /audit/recent hold names and numbers only: no API key (not even its digest).

Chromium missing is a failure, not a skip: tools/deps installs it.
"""

import hashlib
import html.parser
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from gwtest import Gateway, Mock, gateway_config, pool  # noqa: E402

KEY = "gk_statuspagekey0000000000000000000000000000"


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    raise AssertionError("chromium is not installed: run tools/deps (apt-get install chromium)")


def artifact_dir():
    d = os.environ.get("GW_ARTIFACT_DIR")
    if not d:
        gw_bin = gwtest.gotthard_bin()
        # <build>/gateway/gotthard -> <build>/tests/artifacts
        d = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(gw_bin))), "tests", "artifacts")
    os.makedirs(d, exist_ok=True)
    return d


def browse(url, *args, timeout=60):
    profile = gwtest.tempdir("gwtest-chromium-")
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-extensions", "--disable-background-networking", "--disable-sync",
           "--disable-component-update", "--no-default-browser-check", "--mute-audio",
           "--user-data-dir=" + profile, "--virtual-time-budget=4000"] + list(args) + [url]
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout, cwd=profile)
    return p


class Text(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.parts = []

    def handle_data(self, data):
        self.parts.append(data)


def visible_text(dom):
    t = Text()
    t.feed(dom)
    return " ".join(" ".join(t.parts).split())


def config(mock1, mock2):
    sha = hashlib.sha256(KEY.encode()).hexdigest()
    return gateway_config(
        [], pools=[pool("llama-gva", ["m1"], [mock1.port, mock2.port]),
                   pool("mixtral-zrh", ["m2"], [mock2.port])],
        tenants=[{"id": "acme", "models": ["*"], "api_keys": [{"id": "acme-1", "sha256": sha}],
                  "limits": {"tokens_per_day": 100000, "requests_per_minute": 600}},
                 {"id": "globex", "models": ["m1"], "api_keys": [{"id": "globex-1", "sha256": sha[::-1]}]}],
        audit_log={"path": "audit.log"})


def test_status_page_renders_in_chromium():
    mock1, mock2 = Mock(), Mock()
    gw = Gateway(config(mock1, mock2))
    for _ in range(3):
        r = gwtest.post_json(gw.port, "/v1/chat/completions", gwtest.chat("m1", max_tokens=4),
                             headers={"authorization": "Bearer " + KEY})
        assert r.status == 200, r.describe()
    gwtest.post_json(gw.port, "/v1/chat/completions", gwtest.chat("m1"),
                     headers={"authorization": "Bearer gk_wrong000000000000000000000000000000000000"})

    page = gwtest.get(gw.admin_port, "/")
    assert page.status == 200, page.describe()
    assert page.header("content-type").startswith("text/html"), page.describe()
    csp = page.header("content-security-policy") or ""
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp, csp
    src = page.body.decode()
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", src), "the page loads something from elsewhere"
    assert not re.search(r"https?://", src.split("<script>")[1]), "the script names an external URL"

    url = "http://127.0.0.1:%d/" % gw.admin_port
    p = browse(url, "--dump-dom")
    dom = p.stdout.decode("utf-8", "replace")
    assert p.returncode == 0 and "<html" in dom, "chromium failed (%d): %s" % (p.returncode, p.stderr.decode()[-2000:])
    text = visible_text(dom)
    b1, b2 = "127.0.0.1:%d" % mock1.port, "127.0.0.1:%d" % mock2.port
    for want in ("llama-gva", "mixtral-zrh", b1, b2, "acme", "globex"):
        assert want in text, "%r is not on the rendered page; text: %s" % (want, text[:3000])
    assert 'data-pool="llama-gva"' in dom and 'data-tenant="globex"' in dom, dom[:3000]
    assert "loading…" not in text, "the page did not finish loading its data: %s" % text[:2000]
    # health, residency and load columns, quota use and the audit list are filled in
    for want in ("healthy", "unverified", "ready", "100,000", "config_loaded", "auth_failure"):
        assert want in text, "%r is not on the rendered page; text: %s" % (want, text[:3000])
    # acme's three requests today
    row = re.search(r'<tr data-tenant="acme">(.*?)</tr>', dom, re.S)
    assert row and re.search(r">3<", row.group(1)), row.group(0) if row else dom[:3000]

    shot = os.path.join(artifact_dir(), "status_page.png")
    if os.path.exists(shot):
        os.remove(shot)
    p = browse(url, "--screenshot=" + shot, "--window-size=1280,900", "--hide-scrollbars")
    assert p.returncode == 0 and os.path.exists(shot) and os.path.getsize(shot) > 10000, \
        "no screenshot (%d): %s" % (p.returncode, p.stderr.decode()[-2000:])
    print("    screenshot: %s" % shot)


def test_status_json_holds_no_secrets():
    mock1, mock2 = Mock(), Mock()
    gw = Gateway(config(mock1, mock2))
    gwtest.post_json(gw.port, "/v1/chat/completions", gwtest.chat("m1"),
                     headers={"authorization": "Bearer " + KEY + "x"})
    sha = hashlib.sha256(KEY.encode()).hexdigest()
    for path in ("/status", "/audit/recent", "/", "/usage"):
        r = gwtest.get(gw.admin_port, path)
        assert r.status == 200, r.describe()
        for secret in (KEY, sha, sha[:16], sha[::-1]):
            assert secret.encode() not in r.body, "%s shows a credential" % path
    st = gwtest.get(gw.admin_port, "/status").json()
    assert [p["name"] for p in st["pools"]] == ["llama-gva", "mixtral-zrh"], st
    b = st["pools"][0]["backends"][0]
    assert b["up"] is True and b["healthy"] is True and b["inflight"] == 0 and b["verdict"] == "unverified", b
    assert [t["id"] for t in st["tenants"]] == ["acme", "globex"], st
    assert st["tenants"][0]["limits"]["tokens_per_day"] == 100000, st
    assert "api_keys" not in st["tenants"][0], st


if __name__ == "__main__":
    gwtest.run(globals())
