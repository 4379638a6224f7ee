"""gwtest: the harness for gotthard's integration tests (python3, standard library only).

Everything here talks to 127.0.0.1 only, every socket operation has a timeout, and
every process it starts is stopped by PID (SIGTERM, then SIGKILL) even when a test
fails or the interpreter exits.

A test file looks like this:

    import gwtest
    from gwtest import Mock, Gateway, Conn, gateway_config, assert_error

    def test_chat_is_routed():
        mock = Mock()
        gw = Gateway(gateway_config([mock.port]))
        r = gwtest.post_json(gw.port, "/v1/chat/completions", {"model": "m1", "messages": []})
        assert r.status == 200, r.describe()
        assert len(mock.requests()) == 1

    if __name__ == "__main__":
        gwtest.run(globals())

Services started inside a test are stopped when that test ends. Services started in
`setup_module()` (or through a `Shared` fixture) live until the file's tests are done;
if one of them dies during a test (crash, sanitizer abort) that test fails with the
exit code and the tail of the process's stderr.

Environment:
  GOTTHARD_BIN    the gateway (default: <repo>/build/gateway/gotthard)
  MOCK_BIN        the mock backend (default: <repo>/build/tools/mock_backend/gotthard-mock-backend)
  EXAMPLE_PLUGIN  the example plugin .so (default: searched under <repo>/build/plugins)
  GWTEST_TEST_TIMEOUT  seconds one test may take before it is failed (default 120)
  GWTEST_START_TIMEOUT seconds a service may take to start (default 10)
  GWTEST_VERBOSE=1     print the stderr of services when a test fails
  GWTEST_CHECK_FDS=0   do not check the gateway's descriptors after each test

Run one file: `python3 tests/integration/test_x.py [test_name ...]`.
"""

import atexit
import http.client
import json
import os
import queue
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HOST = "127.0.0.1"
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BUILD = os.path.join(REPO, "build")

START_TIMEOUT = float(os.environ.get("GWTEST_START_TIMEOUT", "10"))
TEST_TIMEOUT = float(os.environ.get("GWTEST_TEST_TIMEOUT", "120"))
VERBOSE = os.environ.get("GWTEST_VERBOSE", "") not in ("", "0")
# After each test (and each file's shared services), a gateway still running must be back to the
# descriptors it had at start-up, with no client connection open (fd_census).
CHECK_FDS = os.environ.get("GWTEST_CHECK_FDS", "1") not in ("", "0")

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "WARNING: ThreadSanitizer", "ERROR: UndefinedBehaviorSanitizer")


class TestSkipped(Exception):
    """Raise (via gwtest.skip) when a test cannot run here; it is reported as SKIP, not FAIL."""


def skip(reason):
    raise TestSkipped(reason)


# --------------------------------------------------------------------------- binaries


def _bin(envname, *candidates):
    v = os.environ.get(envname)
    if v:
        return v
    for c in candidates:
        p = os.path.join(BUILD, c)
        if os.path.exists(p):
            return p
    return os.path.join(BUILD, candidates[0])


def gotthard_bin():
    return _bin("GOTTHARD_BIN", "gateway/gotthard", "gotthard")


def mock_bin():
    return _bin("MOCK_BIN", "tools/mock_backend/gotthard-mock-backend", "gotthard-mock-backend")


def example_plugin():
    """Path of the example plugin .so (EXAMPLE_PLUGIN, or the first *.so under build/plugins/example)."""
    v = os.environ.get("EXAMPLE_PLUGIN")
    if v:
        return v
    d = os.path.join(BUILD, "plugins", "example")
    if os.path.isdir(d):
        for n in sorted(os.listdir(d)):
            if n.endswith(".so"):
                return os.path.join(d, n)
    return os.path.join(d, "gw_example.so")


def site_mmdb():
    """Path of the site GeoIP database CMake builds from conf/geoip/site.csv (SITE_MMDB, set by
    ctest for whatever build directory it runs from, else build/conf/geoip/site.mmdb)."""
    p = os.environ.get("SITE_MMDB") or os.path.join(BUILD, "conf", "geoip", "site.mmdb")
    if not os.path.exists(p):
        raise AssertionError("no site database at %s (built by CMake's site_mmdb target)" % p)
    return p


def _need_exec(path, what):
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise AssertionError("%s binary not found or not executable: %s (build first, or set the env var)"
                             % (what, path))


# --------------------------------------------------------------------------- small utilities


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((HOST, 0))
        return s.getsockname()[1]
    finally:
        s.close()


def wait_for(pred, timeout=5.0, interval=0.05, what="condition"):
    """Poll pred() until it returns a truthy value (returned) or fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s (last value: %r)" % (timeout, what, last))
        time.sleep(interval)


def _tail(text, lines=40):
    ls = text.splitlines()
    return "\n".join(ls[-lines:])


def _head_tail(text, head=12, tail=30):
    """The first and last lines of a long output (a start-up error comes first, sanitizer
    reports last)."""
    ls = text.splitlines()
    if len(ls) <= head + tail:
        return text
    return "\n".join(ls[:head] + ["... (%d lines left out) ..." % (len(ls) - head - tail)] + ls[-tail:])


_tempdirs = []
KEEP = os.environ.get("GWTEST_KEEP", "") not in ("", "0")


def tempdir(prefix="gwtest-"):
    """A fresh temporary directory, removed when the test file ends (kept if GWTEST_KEEP=1)."""
    d = tempfile.mkdtemp(prefix=prefix)
    _tempdirs.append(d)
    return d


def _remove_tempdirs():
    if KEEP:
        return
    for d in _tempdirs:
        shutil.rmtree(d, ignore_errors=True)


def brief(data, limit=240):
    """repr() of bytes for a failure message, cut to `limit` bytes with the total length noted."""
    if len(data) <= limit:
        return repr(data)
    return "%r...(%d bytes in all)" % (data[:limit], len(data))


def deep_merge(base, over):
    """Merge dict `over` into a copy of dict `base`: dicts merge recursively, other values replace,
    and a value of None deletes the key."""
    out = dict(base)
    for k, v in over.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


# --------------------------------------------------------------------------- process registry

_services = []          # every Service started and not yet stopped
_started = []           # every Service started (for the sanitizer check when its scope ends)
_scope = ["module"]     # "module" outside tests, "test" while a test runs


def _kill_pid_tree(proc, sig=signal.SIGTERM, timeout=3.0):
    """Signal proc by PID, wait up to timeout, then SIGKILL. Returns the exit code (or None)."""
    if proc.poll() is not None:
        return proc.returncode
    try:
        os.kill(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        return None


def _stop_all():
    for s in list(_services):
        try:
            s.stop(timeout=3)
        except Exception:
            pass


def _at_exit():
    _stop_all()
    _remove_tempdirs()


atexit.register(_at_exit)


class Service:
    """A child process we own. Subclasses set self.proc, self.name, self.stderr_path."""

    proc = None
    name = "service"
    stderr_path = None

    def _register(self):
        self.scope = _scope[-1]
        self.stopped = False
        self.death_reported = False
        self.sanitizer_checked = False
        if self not in _services:
            _services.append(self)
        if self not in _started:
            _started.append(self)

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stderr_text(self):
        if not self.stderr_path:
            return ""
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def sanitizer_report(self):
        """The sanitizer report lines in stderr, or '' if there are none."""
        t = self.stderr_text()
        if any(m in t for m in SANITIZER_MARKERS):
            return t
        return ""

    def stop(self, sig=signal.SIGTERM, timeout=3.0):
        """Stop by PID (sig, then SIGKILL after timeout). Returns the exit code: 0 for a clean
        exit, negative for a signal (Popen convention), None if it had to be SIGKILLed."""
        if self.proc is None:
            return None
        if getattr(self, "stopped", False):
            return self.proc.returncode
        rc = _kill_pid_tree(self.proc, sig, timeout)
        self.stopped = True
        if self in _services:
            _services.remove(self)
        self._closed()
        return rc

    def _closed(self):
        pass



# --------------------------------------------------------------------------- descriptors


def tcp_sockets():
    """{socket inode: (local port, remote port, state)} of every TCP socket on this host (one
    network namespace); state as in /proc/net/tcp ("01" established, "08" CLOSE_WAIT, "0A" LISTEN)."""
    out = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    p = line.split()
                    out[p[9]] = (int(p[1].rsplit(":", 1)[1], 16), int(p[2].rsplit(":", 1)[1], 16), p[3])
        except OSError:
            pass
    return out


def fd_targets(pid):
    """{fd: link target} of process `pid` ("socket:[inode]", a path, "pipe:[...]"), or None if it
    is gone."""
    try:
        fds = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return None
    out = {}
    for fd in fds:
        try:
            out[int(fd)] = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            pass  # closed meanwhile
    return out


def socket_inode(target):
    """The inode of an fd_targets() target that is a socket, else None."""
    m = re.match(r"socket:\[(\d+)\]$", target)
    return m.group(1) if m else None


def fd_census(pid, own_ports):
    """The descriptors of process `pid` in three kinds: (own, clients, upstream). `clients` are TCP
    connections accepted on one of `own_ports` (listeners and admin); `upstream` are the other
    connected TCP sockets (backends, Redis: pools that come and go); `own` is everything else
    (listening sockets, files, pipes, eventfds), as {fd: link target}. None if the process is gone."""
    targets = fd_targets(pid)
    if targets is None:
        return None
    tcp = tcp_sockets()
    own, clients, upstream = {}, 0, 0
    for fd, target in targets.items():
        info = tcp.get(socket_inode(target))
        if info and info[2] != "0A":  # 0A: LISTEN
            if info[0] in own_ports:
                clients += 1
            else:
                upstream += 1
        else:
            own[fd] = target
    return own, clients, upstream

# --------------------------------------------------------------------------- mock backend


class Mock(Service):
    """The mock backend: `$MOCK_BIN --port 0 [--models m1,m2,m3] ARGS...`; .port, .url, .requests(),
    .reset(), .stats(). It serves the models m1, m2, m3 unless `models` or a --models in args says
    otherwise."""

    def __init__(self, args=(), env=None, models=("m1", "m2", "m3")):
        binary = mock_bin()
        _need_exec(binary, "mock backend (MOCK_BIN)")
        self.name = "mock"
        self.dir = tempdir("gwtest-mock-")
        self.stderr_path = os.path.join(self.dir, "stderr.txt")
        self._stderr = open(self.stderr_path, "wb")
        e = dict(os.environ)
        if env:
            e.update(env)
        args = list(args)
        if models and "--models" not in args:
            args = ["--models", ",".join(models)] + args
        self.proc = subprocess.Popen([binary, "--port", "0"] + args, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=self._stderr, env=e, cwd=self.dir)
        self._register()
        self._lines = queue.Queue()
        self.stdout_lines = []
        t = threading.Thread(target=self._drain, daemon=True)
        t.start()
        self.port = None
        deadline = time.monotonic() + START_TIMEOUT
        while self.port is None:
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                raise AssertionError("mock backend printed no port=N line within %.0fs; stderr:\n%s"
                                     % (START_TIMEOUT, _tail(self.stderr_text())))
            try:
                line = self._lines.get(timeout=min(left, 0.2))
            except queue.Empty:
                if self.proc.poll() is not None:
                    rc = self.proc.returncode
                    self.stop()
                    raise AssertionError("mock backend exited with %s before printing its port; stderr:\n%s"
                                         % (rc, _tail(self.stderr_text())))
                continue
            if line is None:
                continue
            m = re.search(r"\bport=(\d+)", line)
            if m:
                self.port = int(m.group(1))
        self.url = "http://%s:%d" % (HOST, self.port)

    def _drain(self):
        try:
            for raw_line in self.proc.stdout:
                line = raw_line.decode("utf-8", "replace").rstrip("\r\n")
                self.stdout_lines.append(line)
                self._lines.put(line)
        except Exception:
            pass
        self._lines.put(None)

    def _closed(self):
        try:
            self._stderr.close()
        except Exception:
            pass

    def _call(self, method, path, body=None, timeout=5.0):
        c = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            hdrs = {}
            if body is not None:
                hdrs["Content-Type"] = "application/json"
            c.request(method, path, body=body, headers=hdrs)
            r = c.getresponse()
            data = r.read()
            if r.status != 200:
                raise AssertionError("mock %s %s answered %d: %r" % (method, path, r.status, data[:300]))
            return json.loads(data) if data.strip() else None
        finally:
            c.close()

    def requests(self):
        """What the mock received: a list of dicts (seq, method, path, headers [[name, value]...], body,
        stream, tokens_sent, completed, client_closed, started_ms, ended_ms)."""
        r = self._call("GET", "/_mock/requests")
        if isinstance(r, dict) and "requests" in r:
            r = r["requests"]
        return r

    def api_requests(self):
        """requests() without the mock's own /_mock/ control calls."""
        return [q for q in self.requests() if not str(q.get("path", "")).startswith("/_mock/")]

    def reset(self):
        self._call("POST", "/_mock/reset", body=b"{}")

    def stats(self):
        """{"connections_accepted", "connections_open", "requests"}."""
        return self._call("GET", "/_mock/stats")

    def wait_requests(self, n, timeout=5.0, completed=False):
        """Wait until at least n API requests are recorded (and, if completed, all of them ended)."""
        def ok():
            rs = self.api_requests()
            if len(rs) < n:
                return None
            if completed and not all(q.get("completed") or q.get("client_closed") or q.get("ended_ms")
                                     for q in rs):
                return None
            return rs
        return wait_for(ok, timeout, what="%d request(s) recorded by the mock" % n)


def header_values(record, name):
    """All values of header `name` (case-insensitive) in a mock record's [[name, value], ...] list."""
    name = name.lower()
    return [v for (k, v) in record.get("headers", []) if k.lower() == name]


def header_names(record):
    return [k.lower() for (k, _v) in record.get("headers", [])]


def max_overlap(records):
    """The most requests a mock ran at once, from its records' started_ms and ended_ms (an end and
    a start in the same millisecond do not overlap; a request still running counts to the end)."""
    ev = sorted([(rec["started_ms"], 1) for rec in records] +
                [(rec.get("ended_ms", 1 << 62), -1) for rec in records])
    cur = best = 0
    for _, d in ev:
        cur += d
        best = max(best, cur)
    return best


def record_json(record):
    """The JSON body of a mock record, parsed."""
    b = record.get("body")
    if isinstance(b, (dict, list)):
        return b
    return json.loads(b)


# --------------------------------------------------------------------------- gateway


def default_limits():
    return {"max_header_bytes": 32768, "max_headers": 100, "max_body_bytes": 4194304}


def default_timeouts():
    return {"client_header_ms": 10000, "client_body_ms": 30000, "keepalive_ms": 60000,
            "upstream_connect_ms": 2000, "upstream_first_byte_ms": 120000,
            "upstream_idle_ms": 60000, "drain_ms": 30000}


def backend(port, **kw):
    """One backend entry for a mock on `port`: {"url", "country": "CH", "max_concurrent": 64, ...kw}."""
    b = {"url": "http://%s:%d" % (HOST, port), "country": "CH", "max_concurrent": 64}
    b.update(kw)
    return b


def pool(name, models, ports, **kw):
    """One pool entry: {"name", "models", "balance": "least_outstanding", "backends": [...]}.
    `ports` is a list of mock ports or of ready-made backend dicts."""
    p = {"name": name, "models": list(models), "balance": "least_outstanding",
         "backends": [b if isinstance(b, dict) else backend(b) for b in ports]}
    p.update(kw)
    return p


def gateway_config(mock_ports=(), models=("m1", "m2"), **overrides):
    """A minimal config: one public listener and an admin listener on free ports, workers 1, the
    default limits and timeouts, and (if mock_ports is not empty) one pool "p1" serving `models`
    with one backend per mock port. Keyword overrides are deep-merged (dicts merge, other values
    replace, None deletes): e.g. gateway_config([m.port], limits={"max_body_bytes": 1024}),
    pools=[pool("a", ["m1"], [m1.port]), pool("b", ["m3"], [m2.port])]."""
    cfg = {
        "listen": [{"address": "%s:%d" % (HOST, free_port())}],
        "admin": {"address": "%s:%d" % (HOST, free_port())},
        "workers": 1,
        "limits": default_limits(),
        "timeouts": default_timeouts(),
        "pools": [pool("p1", models, list(mock_ports))] if mock_ports else [],
    }
    return deep_merge(cfg, overrides)


def _port_of(address):
    return int(address.rsplit(":", 1)[1])


def _repick_ports(config):
    """A copy of config with new free ports for every 127.0.0.1 listener and the admin listener."""
    c = json.loads(json.dumps(config))
    for l in c.get("listen", []) + ([c["admin"]] if c.get("admin") else []):
        if l.get("address", "").startswith(HOST + ":"):
            l["address"] = "%s:%d" % (HOST, free_port())
    return c


class Gateway(Service):
    """The gateway: writes `config` to a fresh temp dir as gotthard.json, starts `$GOTTHARD_BIN -c FILE`
    there (cwd = that dir, stderr to stderr.txt in it) and waits for the admin /healthz to answer 200.

    `files` ({name: bytes or str}) are written into the dir first (certs, keys). `env` is added to
    the environment. `args` are extra command-line arguments. With wait=False it does not wait.
    .port (first plain listener), .tls_port (first TLS listener, or None), .ports, .admin_port,
    .pid, .dir, .config_path, .stderr_text(), .stop(sig, timeout) -> exit code, .reload()."""

    def __init__(self, config, env=None, files=None, args=(), wait=True, start_timeout=None):
        binary = gotthard_bin()
        _need_exec(binary, "gateway (GOTTHARD_BIN)")
        self.name = "gateway"
        self.config = config
        self.dir = tempdir("gwtest-gw-")
        for name, content in (files or {}).items():
            p = os.path.join(self.dir, name)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "wb") as f:
                f.write(content.encode() if isinstance(content, str) else content)
        self.config_path = os.path.join(self.dir, "gotthard.json")
        self.stderr_path = os.path.join(self.dir, "stderr.txt")
        e = dict(os.environ)
        if env:
            e.update(env)
        for attempt in range(3):
            self._start(binary, config, args, e)
            if not wait:
                return
            try:
                self.wait_ready(start_timeout or START_TIMEOUT)
                return
            except AssertionError:
                # A free_port() race with another test run: pick new ports and try again.
                if attempt < 2 and "Address already in use" in self.stderr_text():
                    config = _repick_ports(config)
                    self.stopped = False
                    continue
                raise

    def _start(self, binary, config, args, env):
        self.config = config
        self.write_config(config)
        self.ports = [_port_of(l["address"]) for l in config.get("listen", [])]
        plain = [_port_of(l["address"]) for l in config.get("listen", []) if not l.get("tls")]
        tls = [_port_of(l["address"]) for l in config.get("listen", []) if l.get("tls")]
        self.port = plain[0] if plain else None
        self.tls_port = tls[0] if tls else None
        self.admin_port = _port_of(config["admin"]["address"]) if config.get("admin") else None
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen([binary, "-c", self.config_path] + list(args), stdin=subprocess.DEVNULL,
                                     stdout=self._stderr, stderr=subprocess.STDOUT, env=env, cwd=self.dir)
        self._register()

    def write_config(self, config):
        with open(self.config_path, "w") as f:
            json.dump(config, f, indent=2)

    def wait_ready(self, timeout=START_TIMEOUT):
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            if self.proc.poll() is not None:
                rc = self.proc.returncode
                self.stop()
                raise AssertionError("gateway exited with %s during start-up; config %s; output:\n%s"
                                     % (rc, json.dumps(self.config), _head_tail(self.stderr_text())))
            if self.admin_port:
                try:
                    r = request(self.admin_port, "GET", "/healthz", timeout=1.0)
                    if r.status == 200:
                        self.fd_baseline = self.fds()
                        return
                    last = "HTTP %d" % r.status
                except (OSError, http.client.HTTPException) as ex:
                    last = repr(ex)
            if time.monotonic() >= deadline:
                self.stop()
                raise AssertionError("gateway admin /healthz not 200 within %.0fs (last: %s); output:\n%s"
                                     % (timeout, last, _head_tail(self.stderr_text())))
            time.sleep(0.05)

    def fds(self):
        """fd_census() of the gateway: (own, clients, upstream), or None if it is gone."""
        ports = set(p for p in self.ports if p) | ({self.admin_port} if self.admin_port else set())
        return fd_census(self.proc.pid, ports)

    def fd_leaks(self, timeout=3.0):
        """'' when the gateway's own descriptors are back to their number at start-up and no client
        connection is left open; else what is left over. Waits up to `timeout` for closes in flight."""
        base = getattr(self, "fd_baseline", None)
        if base is None or not self.alive():
            return ""
        deadline = time.monotonic() + timeout
        while True:
            now = self.fds()
            if now is None:
                return ""
            own, clients, _ = now
            if len(own) <= len(base[0]) and clients == 0:
                return ""
            if time.monotonic() >= deadline:
                extra = sorted(set(own.items()) - set(base[0].items()))
                return ("%d own descriptors (%d at start-up; new: %s), %d client connections still open"
                        % (len(own), len(base[0]), ", ".join("%d -> %s" % e for e in extra[:10]) or "-",
                           clients))
            time.sleep(0.1)

    def reload(self, config=None):
        """Write `config` (if given) and send SIGHUP."""
        if config is not None:
            self.config = config
            self.write_config(config)
        os.kill(self.proc.pid, signal.SIGHUP)

    def _closed(self):
        try:
            self._stderr.close()
        except Exception:
            pass


def run_gotthard(args, timeout=10.0, env=None, cwd=None):
    """Run `$GOTTHARD_BIN ARGS...` to completion: returns (exit code, stdout, stderr) as text."""
    binary = gotthard_bin()
    _need_exec(binary, "gateway (GOTTHARD_BIN)")
    e = dict(os.environ)
    if env:
        e.update(env)
    p = subprocess.Popen([binary] + list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=e, cwd=cwd)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_pid_tree(p, signal.SIGKILL, 2)
        out, err = p.communicate(timeout=5)
        raise AssertionError("gotthard %s did not exit within %.0fs; stdout %r stderr %r"
                             % (" ".join(args), timeout, out[-500:], err[-500:]))
    return p.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def self_signed_cert(cn="localhost", san="DNS:localhost,IP:127.0.0.1"):
    """A fresh self-signed certificate (by default for localhost and 127.0.0.1): returns
    (cert_pem, key_pem) bytes. Needs the openssl command."""
    if not shutil.which("openssl"):
        skip("openssl command not available")
    d = tempfile.mkdtemp(prefix="gwtest-cert-")
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-days", "2", "-subj", "/CN=%s" % cn,
                        "-addext", "subjectAltName=%s" % san,
                        "-keyout", os.path.join(d, "key.pem"), "-out", os.path.join(d, "cert.pem")],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30)
        with open(os.path.join(d, "cert.pem"), "rb") as f:
            cert = f.read()
        with open(os.path.join(d, "key.pem"), "rb") as f:
            key = f.read()
        return cert, key
    finally:
        shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------- HTTP responses


class Response:
    """A parsed HTTP response. headers is a list of (name, value) as received."""

    def __init__(self):
        self.version = ""
        self.status = 0
        self.reason = ""
        self.headers = []
        self.body = b""
        self.chunked = False
        self.chunks = []            # data of each chunk, for chunked bodies
        self.complete = False       # Content-Length satisfied / terminating zero chunk arrived / EOF-delimited ended
        self.trailers = []
        self.raw_head = b""
        self.informational = []     # 1xx responses that came before this one

    def header(self, name, default=None):
        """The first value of header `name` (case-insensitive), or default."""
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def header_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def has_token(self, name, token):
        """True if a comma-separated header (e.g. Connection) contains `token` (case-insensitive)."""
        for v in self.header_all(name):
            if token.lower() in [t.strip().lower() for t in v.split(",")]:
                return True
        return False

    def text(self):
        return self.body.decode("utf-8", "replace")

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            raise AssertionError("response body is not JSON: %s" % self.describe())

    def error_code(self):
        try:
            return json.loads(self.body)["error"]["code"]
        except Exception:
            return None

    def describe(self, limit=400):
        """A one-paragraph summary for assertion messages."""
        hs = "; ".join("%s: %s" % (k, v) for k, v in self.headers)
        body = self.body[:limit]
        more = "...(%d bytes)" % len(self.body) if len(self.body) > limit else ""
        return "%s %d %s [%s] body=%r%s" % (self.version, self.status, self.reason, hs, body, more)

    __repr__ = describe


class IncompleteResponse(AssertionError):
    pass


def _parse_head(head):
    """Parse b'HTTP/1.1 200 OK\\r\\nA: b\\r\\n...' (without the final CRLFCRLF) into a Response."""
    r = Response()
    r.raw_head = head
    lines = head.split(b"\r\n")
    m = re.match(rb"^(HTTP/\d\.\d) (\d{3})(?: (.*))?$", lines[0])
    if not m:
        raise AssertionError("malformed status line: %r" % lines[0][:200])
    r.version = m.group(1).decode()
    r.status = int(m.group(2))
    r.reason = (m.group(3) or b"").decode("latin-1")
    for ln in lines[1:]:
        if not ln:
            continue
        if b":" not in ln:
            raise AssertionError("malformed response header line: %r" % ln[:200])
        k, v = ln.split(b":", 1)
        r.headers.append((k.decode("latin-1"), v.strip(b" \t").decode("latin-1")))
    return r


def _has_body(method, status):
    if method and method.upper() == "HEAD":
        return False
    return not (100 <= status < 200 or status in (204, 304))


class Conn:
    """A raw client connection to 127.0.0.1:port (optionally TLS) with a receive buffer.

    send(bytes); read_response(timeout) -> Response; read_head() / read_chunk() for incremental
    chunked (streaming) bodies; wait_closed(timeout) -> True if the peer closed (EOF or reset).
    Every operation has a timeout; a timeout raises an AssertionError saying what was received."""

    def __init__(self, port, timeout=5.0, tls=False, server_hostname="localhost", ssl_context=None):
        self.port = port
        self.timeout = timeout
        self.buf = b""
        self.eof = False
        self.reset = False
        s = socket.create_connection((HOST, port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls:
            ctx = ssl_context
            if ctx is None:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            s = ctx.wrap_socket(s, server_hostname=server_hostname)
        self.sock = s

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data, timeout=None):
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.settimeout(timeout or self.timeout)
        self.sock.sendall(data)

    def send_slowly(self, data, step=1, delay=0.01):
        """Send data `step` bytes at a time with `delay` seconds between writes."""
        for i in range(0, len(data), step):
            self.send(data[i:i + step])
            time.sleep(delay)

    def shutdown_write(self):
        self.sock.shutdown(socket.SHUT_WR)

    def _fill(self, deadline):
        """Receive more bytes into buf. Returns False on EOF/reset; raises socket.timeout at deadline."""
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout()
        self.sock.settimeout(left)
        try:
            d = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            self.eof = True
            self.reset = True
            return False
        except ssl.SSLError:
            self.eof = True
            return False
        if not d:
            self.eof = True
            return False
        self.buf += d
        return True

    def _timeout_msg(self, what, timeout):
        return "timed out after %.1fs waiting for %s on port %d; buffered so far: %r" % (
            timeout, what, self.port, self.buf[:600])

    def read_head(self, timeout=None, method=None):
        """Read a response head (skipping 1xx). Returns a Response with no body yet."""
        timeout = timeout or self.timeout
        deadline = time.monotonic() + timeout
        infos = []
        while True:
            try:
                while b"\r\n\r\n" not in self.buf:
                    if not self._fill(deadline):
                        if not self.buf:
                            raise IncompleteResponse("connection on port %d %s before any response byte"
                                                     % (self.port, "was reset" if self.reset else "closed"))
                        raise IncompleteResponse("connection closed inside a response head: %r" % self.buf[:600])
            except socket.timeout:
                raise IncompleteResponse(self._timeout_msg("a response head", timeout))
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            r = _parse_head(head)
            if 100 <= r.status < 200 and r.status != 101:
                infos.append(r)
                continue
            r.informational = infos
            r._method = method
            return r

    def read_chunk(self, resp, timeout=None):
        """Read the next chunk of a chunked response; returns its data, b'' for the last chunk
        (and sets resp.complete), or None if the connection closed first."""
        timeout = timeout or self.timeout
        deadline = time.monotonic() + timeout
        try:
            while b"\r\n" not in self.buf:
                if not self._fill(deadline):
                    return None
            line, rest = self.buf.split(b"\r\n", 1)
            size_txt = line.split(b";", 1)[0].strip()
            if not re.fullmatch(rb"[0-9a-fA-F]+", size_txt):
                raise AssertionError("malformed chunk size line in response: %r" % line[:100])
            size = int(size_txt, 16)
            if size == 0:
                self.buf = rest
                while True:   # trailers up to the empty line
                    while b"\r\n" not in self.buf:
                        if not self._fill(deadline):
                            return None
                    tl, self.buf = self.buf.split(b"\r\n", 1)
                    if not tl:
                        break
                    k, _, v = tl.partition(b":")
                    resp.trailers.append((k.decode("latin-1"), v.strip().decode("latin-1")))
                resp.complete = True
                return b""
            while len(rest) < size + 2:
                if not self._fill(deadline):
                    resp.body += rest[:size]
                    self.buf = b""
                    return None
                rest = self.buf.split(b"\r\n", 1)[1]
            data, tail = rest[:size], rest[size:]
            if tail[:2] != b"\r\n":
                raise AssertionError("chunk data not followed by CRLF in response: %r" % tail[:20])
            self.buf = tail[2:]
            resp.chunks.append(data)
            resp.body += data
            return data
        except socket.timeout:
            raise IncompleteResponse(self._timeout_msg("a response chunk", timeout))

    def read_body(self, r, timeout=None):
        timeout = timeout or self.timeout
        deadline = time.monotonic() + timeout
        if not _has_body(getattr(r, "_method", None), r.status):
            r.complete = True
            return r
        te = ",".join(r.header_all("transfer-encoding")).lower()
        cl = r.header("content-length")
        if "chunked" in te:
            r.chunked = True
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise IncompleteResponse(self._timeout_msg("the rest of a chunked body", timeout))
                d = self.read_chunk(r, left)
                if d is None or d == b"":
                    break
            return r
        if cl is not None:
            if not re.fullmatch(r"\d+", cl.strip()):
                raise AssertionError("malformed Content-Length in response: %r" % cl)
            n = int(cl)
            try:
                while len(self.buf) < n:
                    if not self._fill(deadline):
                        break
            except socket.timeout:
                raise IncompleteResponse(self._timeout_msg("%d body bytes" % n, timeout))
            r.body, self.buf = self.buf[:n], self.buf[n:]
            r.complete = len(r.body) == n
            return r
        try:   # delimited by close
            while self._fill(deadline):
                pass
        except socket.timeout:
            raise IncompleteResponse(self._timeout_msg("the end of a close-delimited body", timeout))
        r.body, self.buf = self.buf, b""
        r.complete = True
        return r

    def read_response(self, timeout=None, method=None):
        """Read one whole response (head and body). method='HEAD' for responses without a body."""
        timeout = timeout or self.timeout
        deadline = time.monotonic() + timeout
        r = self.read_head(timeout, method)
        return self.read_body(r, max(0.05, deadline - time.monotonic()))

    def wait_closed(self, timeout=2.0):
        """True if the peer closes (EOF or reset) within timeout. Bytes that arrive meanwhile are kept
        in self.buf (a test can assert it is empty)."""
        deadline = time.monotonic() + timeout
        try:
            while self._fill(deadline):
                pass
            return True
        except socket.timeout:
            return False

    def is_open(self, wait=0.1):
        """True if the peer has not closed within `wait` seconds (data received is kept in buf)."""
        return not self.wait_closed(wait)


def raw_conn(port, data, timeout=5.0):
    c = Conn(port, timeout)
    c.send(data)
    return c


class RawResult(bytes):
    """bytes received, with .closed (peer closed within the timeout) and .reset (it was an RST)."""
    closed = False
    reset = False


def raw(port, data, timeout=3.0):
    """Send bytes, read until the peer closes or timeout seconds pass. Returns RawResult(bytes)."""
    c = Conn(port, timeout)
    try:
        c.send(data)
        closed = c.wait_closed(timeout)
        res = RawResult(c.buf)
        res.closed = closed
        res.reset = c.reset
        return res
    finally:
        c.close()


def parse_responses(data, method=None):
    """Parse every complete response in a byte string (e.g. from raw()). Returns a list of Response."""
    out = []
    c = Conn.__new__(Conn)
    c.port = 0
    c.timeout = 0.01
    c.buf = bytes(data)
    c.eof = True
    c.reset = False
    c.sock = None
    while c.buf:
        try:
            r = c.read_head(0.01, method)
            c.read_body(r, 0.01)
        except IncompleteResponse:
            break
        out.append(r)
    return out


# --------------------------------------------------------------------------- http.client helpers


def request(port, method, path, body=None, headers=None, timeout=10.0, tls=False):
    """One request over a fresh connection with http.client. Returns a Response (body read whole)."""
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        c = http.client.HTTPSConnection(HOST, port, timeout=timeout, context=ctx)
    else:
        c = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        if isinstance(body, str):
            body = body.encode()
        c.request(method, path, body=body, headers=dict(headers or {}))
        hr = c.getresponse()
        r = Response()
        r.version = "HTTP/1.1" if hr.version == 11 else "HTTP/1.0"
        r.status = hr.status
        r.reason = hr.reason
        r.headers = list(hr.getheaders())
        r.body = hr.read()
        r.complete = True
        r.chunked = (hr.getheader("transfer-encoding") or "").lower() == "chunked"
        return r
    finally:
        c.close()


def post_json(port, path, obj, headers=None, timeout=10.0, tls=False):
    """POST obj as JSON (bytes/str are sent as they are)."""
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    body = obj if isinstance(obj, (bytes, str)) else json.dumps(obj)
    return request(port, "POST", path, body=body, headers=h, timeout=timeout, tls=tls)


def get(port, path, headers=None, timeout=10.0, tls=False):
    return request(port, "GET", path, headers=headers, timeout=timeout, tls=tls)


def open_stream(port, path, obj, headers=None, timeout=10.0, tls=False):
    """POST obj as JSON on a raw Conn and read the response head only. Returns (conn, resp); read the
    body incrementally with conn.read_chunk(resp) or iter_sse(conn, resp). Close the conn when done."""
    body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    hs = [("Content-Type", "application/json")] + list((headers or {}).items())
    c = Conn(port, timeout=timeout, tls=tls)
    try:
        c.send(http_request("POST", path, body, hs))
        r = c.read_head(timeout)
    except Exception:
        c.close()
        raise
    r._method = "POST"
    return c, r


def iter_sse(conn, resp, timeout=10.0):
    """Yield the SSE event payloads (the `data:` text) of a streaming response as they arrive, for
    chunked or close-delimited bodies. Stops at the end of the body; resp.complete tells whether it
    ended cleanly (terminating zero chunk / EOF)."""
    pending = b""
    while True:
        if resp.chunked or "chunked" in ",".join(resp.header_all("transfer-encoding")).lower():
            resp.chunked = True
            d = conn.read_chunk(resp, timeout)
            if not d:
                break
        else:
            deadline = time.monotonic() + timeout
            if not conn.buf:
                try:
                    if not conn._fill(deadline):
                        resp.complete = True
                        break
                except socket.timeout:
                    raise IncompleteResponse(conn._timeout_msg("an SSE event", timeout))
            d, conn.buf = conn.buf, b""
            resp.body += d
        pending += d
        while True:
            m = re.search(rb"\r?\n\r?\n", pending)
            if not m:
                break
            block, pending = pending[:m.start()], pending[m.end():]
            for ev in sse_events(block + b"\n\n"):
                yield ev


def chat(model="m1", content="hi", **extra):
    """A chat completion request body."""
    b = {"model": model, "messages": [{"role": "user", "content": content}]}
    b.update(extra)
    return b


def http_request(method, path, body=b"", headers=(), version="HTTP/1.1", host="gw"):
    """Exact request bytes: request line, Host (unless host is None), `headers` in order
    ((name, value) pairs or ready 'Name: value' strings), Content-Length when body is not empty
    and no Content-Length/Transfer-Encoding header was given, then body."""
    if isinstance(body, str):
        body = body.encode()
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    lines = ["%s %s %s" % (method, path, version)]
    if host is not None:
        lines.append("Host: %s" % host)
    names = []
    for h in headers:
        if isinstance(h, tuple):
            lines.append("%s: %s" % h)
            names.append(h[0].lower())
        else:
            lines.append(h)
            names.append(h.split(":", 1)[0].strip().lower())
    if body and "content-length" not in names and "transfer-encoding" not in names:
        lines.append("Content-Length: %d" % len(body))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(body, sizes=None):
    """Encode body as a chunked request body (chunks of the given sizes; one chunk if None)."""
    if isinstance(body, str):
        body = body.encode()
    out = b""
    i = 0
    sizes = list(sizes or [len(body)])
    while i < len(body):
        n = sizes.pop(0) if sizes else len(body) - i
        part = body[i:i + n]
        out += b"%x\r\n" % len(part) + part + b"\r\n"
        i += n
    return out + b"0\r\n\r\n"


# --------------------------------------------------------------------------- assertions


def assert_error(r, status, code=None, canary=None):
    """Assert r is an OpenAI-shaped error: status (an int or a tuple of allowed ints), JSON body
    {"error": {"message": str, "type": str, "param": null, "code": code}}, an x-request-id header,
    and, if canary is given, that it appears nowhere in the response."""
    statuses = status if isinstance(status, (tuple, list)) else (status,)
    assert r.status in statuses, "expected HTTP %s%s, got %s" % (
        "/".join(map(str, statuses)), " " + code if code else "", r.describe())
    try:
        j = json.loads(r.body)
    except ValueError:
        raise AssertionError("error body is not JSON: %s" % r.describe())
    assert isinstance(j, dict) and isinstance(j.get("error"), dict), "error body not {\"error\": {...}}: %s" % r.describe()
    e = j["error"]
    assert isinstance(e.get("message"), str) and e["message"], "error.message missing or not a string: %s" % r.describe()
    assert isinstance(e.get("type"), str) and e["type"], "error.type missing or not a string: %s" % r.describe()
    assert "param" in e and e["param"] is None, "error.param must be null: %s" % r.describe()
    if code is not None:
        assert e.get("code") == code, "expected error.code %r, got %r: %s" % (code, e.get("code"), r.describe())
    else:
        assert isinstance(e.get("code"), str), "error.code missing: %s" % r.describe()
    assert r.header("x-request-id"), "error response without x-request-id: %s" % r.describe()
    if canary is not None:
        blob = r.raw_head + b"\r\n" + r.body if r.raw_head else r.body
        blob += "".join("%s: %s\n" % h for h in r.headers).encode("latin-1", "replace")
        assert canary.encode() not in blob, "error response echoes request content (%r): %s" % (canary, r.describe())
    return e


def sse_events(body):
    """Split an SSE body into a list of event payload strings (the `data:` lines joined)."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    events = []
    for block in re.split(r"\r?\n\r?\n", body):
        data = [ln[5:].lstrip(" ") if ln.startswith("data:") else None for ln in block.splitlines()]
        data = [d for d in data if d is not None]
        if data:
            events.append("\n".join(data))
    return events


def check_all(cases, fn):
    """Call fn(case) for every case; collect every failure (not only the first) into one
    AssertionError, one line per failing case."""
    bad = []
    for case in cases:
        try:
            fn(case)
        except Exception as ex:
            bad.append("%r: %s" % (case, ex if isinstance(ex, AssertionError) else "%s: %s" % (type(ex).__name__, ex)))
    if bad:
        raise AssertionError("%d of %d cases failed:\n" % (len(bad), len(cases)) + "\n".join(bad))


# --------------------------------------------------------------------------- fixtures and runner


class Shared:
    """A lazily built fixture shared by the tests of one file: `ENV = Shared(lambda: build())`, then
    `ENV.get()` in each test. Built outside the per-test scope (it lives until the file ends); rebuilt
    if one of its services has died. The factory may return a Service, a tuple/list/dict of them, or
    any object with such attributes."""

    def __init__(self, factory):
        self.factory = factory
        self.value = None
        self.services = []

    def get(self):
        if self.value is not None and all(s.alive() for s in self.services):
            return self.value
        for s in self.services:
            s.stop()
        before = set(map(id, _services))
        _scope.append("module")
        try:
            self.value = self.factory()
        finally:
            _scope.pop()
        self.services = [s for s in _services if id(s) not in before]
        return self.value


def _check_deaths():
    """Services that died on their own since the last check: a list of messages."""
    msgs = []
    for s in list(_services):
        if not s.stopped and not s.death_reported and s.proc is not None and s.proc.poll() is not None:
            s.death_reported = True
            s.sanitizer_checked = True  # its output is in this message already
            if s in _started:
                _started.remove(s)
            msgs.append("%s (pid %d) died unexpectedly with exit code %s; its output ends:\n%s"
                        % (s.name, s.proc.pid, s.proc.returncode, _indent(_head_tail(s.stderr_text()))))
    return msgs


def _indent(t, p="    "):
    return "\n".join(p + ln for ln in t.splitlines())


def _stop_scope(scope):
    """Stop the services of a scope; returns messages about sanitizer reports found in their output."""
    msgs = []
    for s in list(_services):
        if s.scope == scope and isinstance(s, Gateway) and not s.death_reported and CHECK_FDS:
            leak = s.fd_leaks()
            if leak:
                msgs.append("gateway (pid %d) descriptors not back to their baseline after the test: %s"
                            % (s.proc.pid, leak))
    for s in list(_services):
        if s.scope == scope:
            rc = s.stop(timeout=5.0)
            if isinstance(s, Gateway) and rc != 0 and not s.death_reported:
                msgs.append("gateway (pid %d) exited with %s on SIGTERM, expected 0 (a clean drain); its output ends:\n%s"
                            % (s.proc.pid, "SIGKILL after 5 s" if rc is None else rc, _indent(_tail(s.stderr_text(), 20))))
    for s in list(_started):
        if s.scope == scope and not s.sanitizer_checked:
            s.sanitizer_checked = True
            _started.remove(s)
            rep = s.sanitizer_report()
            if rep:
                msgs.append("%s (pid %d) output has a sanitizer report:\n%s" % (s.name, s.proc.pid, _indent(_tail(rep, 60))))
    return msgs


class _TestTimeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise _TestTimeout("test exceeded %.0fs (GWTEST_TEST_TIMEOUT)" % TEST_TIMEOUT)


def _reason(ex):
    tb = traceback.extract_tb(ex.__traceback__)
    where = ""
    for fr in reversed(tb):
        if os.path.basename(fr.filename) != "gwtest.py":
            where = " [%s:%d]" % (os.path.basename(fr.filename), fr.lineno)
            break
    msg = str(ex) if str(ex) else ""
    if isinstance(ex, AssertionError):
        if not msg:
            # a bare assert: show the source line
            msg = "assertion failed: %s" % (tb[-1].line if tb else "?")
        return msg + where
    return "%s: %s%s" % (type(ex).__name__, msg, where)


def run(namespace):
    """Run every test_* function of a module namespace in definition order (or only the names given
    on the command line), print PASS/FAIL/SKIP per test and `N passed, N failed`; exit 1 on failure."""
    tests = [(n, f) for n, f in namespace.items() if n.startswith("test_") and callable(f)]
    wanted = sys.argv[1:]
    if wanted:
        tests = [(n, f) for n, f in tests if n in wanted or n[5:] in wanted]
    passed = failed = skipped_n = 0
    old = signal.signal(signal.SIGALRM, _on_alarm)
    setup_err = None
    if "setup_module" in namespace:
        try:
            namespace["setup_module"]()
        except Exception as ex:
            setup_err = "setup_module failed: " + _reason(ex)
    for name, fn in tests:
        t0 = time.monotonic()
        problems = []
        skipped = None
        if setup_err:
            problems.append(setup_err)
        else:
            _scope.append("test")
            signal.setitimer(signal.ITIMER_REAL, TEST_TIMEOUT)
            try:
                fn()
            except TestSkipped as ex:
                skipped = str(ex)
            except (Exception, _TestTimeout) as ex:
                problems.append(_reason(ex))
                if VERBOSE:
                    problems.append(traceback.format_exc())
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                _scope.pop()
            problems.extend(_check_deaths())
            if problems and VERBOSE:
                for s in _services:
                    problems.append("%s output:\n%s" % (s.name, _indent(_tail(s.stderr_text(), 60))))
            problems.extend(_stop_scope("test"))
        dt = time.monotonic() - t0
        if skipped is not None:
            print("SKIP %s: %s" % (name, skipped), flush=True)
            skipped_n += 1  # a skipped test is never counted as passed
        elif problems:
            failed += 1
            first, rest = problems[0].split("\n", 1) if "\n" in problems[0] else (problems[0], "")
            print("FAIL %s: %s" % (name, first), flush=True)
            extra = [rest] if rest else []
            extra += problems[1:]
            for p in extra:
                print(_indent(p), flush=True)
        else:
            passed += 1
            print("PASS %s (%.2fs)" % (name, dt), flush=True)
    teardown = _check_deaths() + _stop_scope("module")
    if "teardown_module" in namespace:
        try:
            namespace["teardown_module"]()
        except Exception as ex:
            teardown.append("teardown_module failed: " + _reason(ex))
    if teardown:
        failed += 1
        print("FAIL teardown: %s" % teardown[0].split("\n", 1)[0], flush=True)
        for p in teardown:
            print(_indent(p), flush=True)
    signal.signal(signal.SIGALRM, old)
    if skipped_n:
        print("%d passed, %d failed, %d skipped" % (passed, failed, skipped_n), flush=True)
    else:
        print("%d passed, %d failed" % (passed, failed), flush=True)
    sys.exit(1 if failed else 0)
