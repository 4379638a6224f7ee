"""The official OpenAI Node SDK (openai from npm, pinned by tests/sdk/package-lock.json) against
gotthard: runs `node --test tests/sdk/sdk.test.mjs` with GATEWAY_URL pointing at a gateway in front
of the mock backend. Installs the SDK with `npm ci` first if tests/sdk/node_modules is missing."""

import os
import shutil
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from gwtest import Mock, Gateway, gateway_config  # noqa: E402

SDK_DIR = os.path.join(gwtest.REPO, "tests", "sdk")


def _run(cmd, cwd, env, timeout):
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)   # its own session: only what it started
        except ProcessLookupError:
            pass
        out, _ = p.communicate(timeout=10)
        raise AssertionError("%s timed out after %ds; output ends:\n%s"
                             % (" ".join(cmd), timeout, out.decode("utf-8", "replace")[-3000:]))
    return p.returncode, out.decode("utf-8", "replace")


def _ensure_sdk():
    if not shutil.which("node"):
        gwtest.skip("node is not installed")
    if os.path.isfile(os.path.join(SDK_DIR, "node_modules", "openai", "package.json")):
        return
    if not shutil.which("npm"):
        gwtest.skip("npm is not installed and tests/sdk/node_modules is missing")
    rc, out = _run(["npm", "ci", "--no-audit", "--no-fund"], SDK_DIR, dict(os.environ), 300)
    assert rc == 0, "npm ci in tests/sdk failed (%d):\n%s" % (rc, out[-3000:])


def test_openai_node_sdk():
    _ensure_sdk()
    mock = Mock()
    gw = Gateway(gateway_config([mock.port], models=("m1", "m2"), timeouts={"drain_ms": 2000}))
    env = dict(os.environ)
    env.update({"GATEWAY_URL": "http://127.0.0.1:%d/v1" % gw.port, "OPENAI_API_KEY": "sk-dummy-not-a-key",
                "SDK_MODEL": "m1", "SDK_MODELS": "m1,m2", "NO_COLOR": "1"})
    for k in ("OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "HTTP_PROXY", "HTTPS_PROXY",
              "http_proxy", "https_proxy"):
        env.pop(k, None)
    rc, out = _run(["node", "--test", "--test-reporter=spec", "sdk.test.mjs"], SDK_DIR, env, 120)
    sys.stdout.write("".join("    node: %s\n" % ln for ln in out.splitlines() if ln.strip())[-6000:])
    assert rc == 0, "node --test tests/sdk/sdk.test.mjs exited %d; output ends:\n%s" % (rc, out[-4000:])
    # the SDK's calls really went through the gateway to the backend
    paths = [q["path"] for q in mock.api_requests()]
    assert "/v1/chat/completions" in paths and "/v1/embeddings" in paths, paths
    for q in mock.api_requests():
        assert "sk-dummy-not-a-key" not in repr(q.get("headers")), "the client's key reached the backend: %r" % q


if __name__ == "__main__":
    gwtest.run(globals())
