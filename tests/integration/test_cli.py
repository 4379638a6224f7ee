#!/usr/bin/env python3
"""The gotthard command line: -v, and -t -c FILE (FILE: ok, or one line per problem naming its
JSON path, exit 1)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from gwtest import backend, example_plugin, free_port, gateway_config, pool, run_gotthard  # noqa: E402


def workdir():
    return gwtest.tempdir("gwtest-cli-")


def write(d, name, content):
    p = os.path.join(d, name)
    with open(p, "w" if isinstance(content, str) else "wb") as f:
        f.write(content)
    return p


def good_config():
    return gateway_config(pools=[pool("p1", ["m1", "m2"], [backend(free_port(), api_key_env="GWTEST_KEY")])])


def check(config, name="gotthard.json", d=None, env=None):
    """Run `gotthard -t -c FILE` on a config (dict, or str written as is). Returns (rc, path, lines)."""
    d = d or workdir()
    text = config if isinstance(config, str) else json.dumps(config, indent=2)
    path = write(d, name, text)
    rc, out, err = run_gotthard(["-t", "-c", path], cwd=d, env=env if env is not None else {"GWTEST_KEY": "sk-test"})
    lines = [ln for ln in (out + err).splitlines() if ln.strip()]
    return rc, path, lines, out, err


def expect_problem(config, json_path):
    rc, path, lines, out, err = check(config)
    assert rc == 1, "gotthard -t exited %s for a config with a bad %s (expected 1); output %r" % (rc, json_path, lines)
    prefix = "%s: %s:" % (path, json_path)
    hits = [ln for ln in lines if ln.startswith(prefix) and ln[len(prefix):].strip()]
    assert hits, "no line '%s <message>' in the output of gotthard -t; output: %r" % (prefix, lines)
    for ln in lines:
        assert ln.startswith(path + ": "), "output line not of the form 'FILE: $.path: message': %r" % ln
        assert re.match(re.escape(path) + r": \$[^ ]*: \S", ln), \
            "output line not of the form 'FILE: $.path: message': %r" % ln
    return lines


def test_version():
    rc, out, err = run_gotthard(["-v"])
    assert rc == 0, "gotthard -v exited %d; stdout %r stderr %r" % (rc, out, err)
    assert re.search(r"\d+\.\d+\.\d+", out), "gotthard -v printed no version on stdout: %r (stderr %r)" % (out, err)


def test_check_good_config():
    rc, path, lines, out, err = check(good_config())
    assert rc == 0, "gotthard -t exited %d for a good config; output %r" % (rc, lines)
    assert lines == ["%s: ok" % path], "expected exactly '%s: ok', got %r" % (path, lines)


def test_check_full_config():
    # Every key of this version, including a TLS listener and the example plugin.
    d = workdir()
    cert, key = gwtest.self_signed_cert()
    write(d, "cert.pem", cert)
    write(d, "key.pem", key)
    plugin = example_plugin()
    cfg = {
        "listen": [{"address": "127.0.0.1:%d" % free_port()},
                   {"address": "127.0.0.1:%d" % free_port(), "tls": {"cert": "cert.pem", "key": "key.pem"}}],
        "admin": {"address": "127.0.0.1:%d" % free_port()},
        "workers": 1,
        "limits": {"max_header_bytes": 32768, "max_headers": 100, "max_body_bytes": 4194304},
        "timeouts": {"client_header_ms": 10000, "client_body_ms": 30000, "keepalive_ms": 60000,
                     "upstream_connect_ms": 2000, "upstream_first_byte_ms": 120000,
                     "upstream_idle_ms": 60000, "drain_ms": 30000},
        "pools": [{"name": "p1", "models": ["m1", "m2"], "balance": "least_outstanding",
                   "backends": [{"url": "http://127.0.0.1:%d" % free_port(), "country": "CH",
                                 "max_concurrent": 64, "api_key_env": "GWTEST_KEY"}]}],
    }
    if os.path.exists(plugin):
        cfg["plugins"] = [{"path": plugin, "config": {"header": "x-gotthard-example", "value": "hello"}}]
    rc, path, lines, out, err = check(cfg, d=d)
    assert rc == 0 and lines == ["%s: ok" % path], "full config (plugin %s) not ok: rc %d, output %r" % (
        "included" if "plugins" in cfg else "MISSING: " + plugin, rc, lines)
    assert "plugins" in cfg, "example plugin not found at %s (set EXAMPLE_PLUGIN)" % plugin


def test_check_defaults_suffice():
    # limits, timeouts and workers are optional (CONTRACT: the values shown are the defaults).
    cfg = good_config()
    for k in ("limits", "timeouts", "workers"):
        del cfg[k]
    rc, path, lines, out, err = check(cfg)
    assert rc == 0 and lines == ["%s: ok" % path], "config without limits/timeouts/workers: rc %d, %r" % (rc, lines)


def test_check_negative_workers():
    expect_problem(gateway_config(pools=good_config()["pools"], workers=-1), "$.workers")


def test_check_workers_not_integer():
    expect_problem(gateway_config(pools=good_config()["pools"], workers="two"), "$.workers")


def test_check_admin_never_on_a_public_port():
    for listen, admin in (("127.0.0.1:%d", "127.0.0.1:%d"), ("0.0.0.0:%d", "127.0.0.1:%d"),
                          ("127.0.0.1:%d", "0.0.0.0:%d"), ("[::]:%d", "127.0.0.1:%d")):
        port = free_port()
        cfg = good_config()
        cfg["listen"] = [{"address": listen % port}]
        cfg["admin"] = {"address": admin % port}
        expect_problem(cfg, "$.admin.address")
    cfg = good_config()  # same port on two distinct addresses is fine
    port = free_port()
    cfg["listen"] = [{"address": "127.0.0.1:%d" % port}]
    cfg["admin"] = {"address": "127.0.0.2:%d" % port}
    rc, path, lines, out, err = check(cfg)
    assert rc == 0, lines


def test_check_admin_allowed_hosts():
    for bad in ("gw1.mgmt.example:9090", "http://gw1", "", "gw1 mgmt", "a" * 254):
        cfg = good_config()
        cfg["admin"]["allowed_hosts"] = ["ok.example", bad]
        expect_problem(cfg, "$.admin.allowed_hosts[1]")
    cfg = good_config()
    cfg["admin"]["allowed_hosts"] = "gw1.mgmt.example"
    expect_problem(cfg, "$.admin.allowed_hosts")
    cfg = good_config()  # the public listeners have no such key
    cfg["listen"][0]["allowed_hosts"] = ["gw1.mgmt.example"]
    expect_problem(cfg, "$.listen[0].allowed_hosts")
    cfg = good_config()
    cfg["admin"]["allowed_hosts"] = ["gw1.mgmt.example", "GW-2.example."]
    rc, path, lines, out, err = check(cfg)
    assert rc == 0, lines


def test_check_bad_backend_url():
    cfg = good_config()
    cfg["pools"][0]["backends"][0]["url"] = "not a url"
    expect_problem(cfg, "$.pools[0].backends[0].url")


def test_check_backend_url_bad_scheme():
    cfg = good_config()
    cfg["pools"][0]["backends"][0]["url"] = "ftp://127.0.0.1:21"
    expect_problem(cfg, "$.pools[0].backends[0].url")


def test_check_bad_url_in_second_backend():
    cfg = good_config()
    cfg["pools"][0]["backends"].append(backend(free_port()))
    cfg["pools"][0]["backends"][1]["url"] = "http://"
    expect_problem(cfg, "$.pools[0].backends[1].url")


def test_check_unknown_key_in_limits():
    cfg = good_config()
    cfg["limits"]["bogus"] = 1
    expect_problem(cfg, "$.limits.bogus")


def test_check_unknown_top_level_key():
    cfg = good_config()
    cfg["bogus_top"] = True
    expect_problem(cfg, "$.bogus_top")


def test_check_unknown_key_in_backend():
    cfg = good_config()
    cfg["pools"][0]["backends"][0]["api_key"] = "inline-secret"
    lines = expect_problem(cfg, "$.pools[0].backends[0].api_key")
    assert not any("inline-secret" in ln for ln in lines), "a secret value is printed: %r" % lines


def test_check_backend_key_env_unset():
    # The variable api_key_env names must be set (the backend would get no key otherwise).
    cfg = good_config()
    cfg["pools"][0]["backends"][0]["api_key_env"] = "GWTEST_SURELY_UNSET_VAR"
    rc, path, lines, out, err = check(cfg)
    assert rc == 1 and any(ln.startswith("%s: $.pools[0].backends[0].api_key_env:" % path) for ln in lines), \
        "unset api_key_env variable: rc %d, output %r" % (rc, lines)


def test_check_timeout_as_string():
    cfg = good_config()
    cfg["timeouts"]["drain_ms"] = "30000"
    expect_problem(cfg, "$.timeouts.drain_ms")


def test_check_negative_limit():
    cfg = good_config()
    cfg["limits"]["max_body_bytes"] = -1
    expect_problem(cfg, "$.limits.max_body_bytes")


def test_check_bad_listen_address():
    cfg = good_config()
    cfg["listen"][0]["address"] = "127.0.0.1"
    expect_problem(cfg, "$.listen[0].address")


def test_check_bad_balance():
    cfg = good_config()
    cfg["pools"][0]["balance"] = "random-ish"
    expect_problem(cfg, "$.pools[0].balance")


def test_check_one_line_per_problem():
    cfg = good_config()
    cfg["workers"] = -1
    cfg["timeouts"]["drain_ms"] = "x"
    cfg["limits"]["bogus"] = 1
    rc, path, lines, out, err = check(cfg)
    assert rc == 1, "rc %d, output %r" % (rc, lines)
    for p in ("$.workers", "$.timeouts.drain_ms", "$.limits.bogus"):
        assert any(ln.startswith("%s: %s:" % (path, p)) for ln in lines), "problem %s not reported; output %r" % (p, lines)
    assert len(lines) == 3, "expected 3 lines (one per problem), got %r" % lines


def test_check_missing_file():
    d = workdir()
    path = os.path.join(d, "nope.json")
    rc, out, err = run_gotthard(["-t", "-c", path])
    assert rc == 1, "gotthard -t on a missing file exited %d; %r %r" % (rc, out, err)
    assert (out + err).strip(), "no message for a missing config file"
    assert path in out + err, "the message does not name the file: %r" % (out + err)


def test_check_invalid_json():
    rc, path, lines, out, err = check('{"listen": [ {"address": "127.0.0.1:1"} ,,, ')
    assert rc == 1, "gotthard -t on invalid JSON exited %d; %r" % (rc, lines)
    assert lines, "no message for invalid JSON"
    assert any(path in ln for ln in lines), "the message does not name the file: %r" % lines


def test_check_top_level_not_object():
    rc, path, lines, out, err = check("[1, 2, 3]")
    assert rc == 1 and lines, "rc %d, output %r" % (rc, lines)


def test_run_with_bad_config_exits():
    d = workdir()
    cfg = good_config()
    cfg["workers"] = -1
    path = write(d, "gotthard.json", json.dumps(cfg))
    rc, out, err = run_gotthard(["-c", path], timeout=10)
    assert rc != 0, "gotthard -c with a bad config exited 0"
    assert "$.workers" in out + err, "the problem's path is not printed: %r" % (out + err)


def test_unknown_option():
    rc, out, err = run_gotthard(["--no-such-option"])
    assert rc != 0, "unknown option accepted; %r %r" % (out, err)


def test_no_arguments():
    # Without -c it must not hang waiting on stdin or run with nothing: it exits or starts listening;
    # either way it must not crash.
    p = subprocess.Popen([gwtest.gotthard_bin()], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, cwd=workdir())
    try:
        p.wait(timeout=3)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)
    out, err = p.communicate(timeout=5)
    assert p.returncode is not None and p.returncode >= 0, "gotthard without arguments died by signal %d; %r" % (
        -p.returncode, err[-2000:])


if __name__ == "__main__":
    gwtest.run(globals())
