"""A redis-server for the tests (free port on 127.0.0.1, no persistence, stopped by PID), a
minimal RESP client, and MONITOR, shared by the tests that use Redis."""

import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import gwtest

HOST = "127.0.0.1"


def redis_bin():
    b = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
    if not b:
        gwtest.skip("redis-server not installed")
    return b


# --------------------------------------------------------------------------- a tiny RESP client


class Resp:
    """A minimal Redis client (RESP2) with timeouts."""

    def __init__(self, port, timeout=2.0):
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.buf = b""

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, *args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        self.sock.sendall(out)

    def _line(self):
        while b"\r\n" not in self.buf:
            d = self.sock.recv(65536)
            if not d:
                raise ConnectionError("redis closed the connection")
            self.buf += d
        ln, self.buf = self.buf.split(b"\r\n", 1)
        return ln

    def _n(self, n):
        while len(self.buf) < n + 2:
            d = self.sock.recv(65536)
            if not d:
                raise ConnectionError("redis closed the connection")
            self.buf += d
        x, self.buf = self.buf[:n], self.buf[n + 2:]
        return x

    def reply(self):
        ln = self._line()
        t, rest = ln[:1], ln[1:]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            raise AssertionError("redis error: %s" % rest.decode())
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            return None if n < 0 else self._n(n)
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise AssertionError("bad RESP line %r" % ln)

    def cmd(self, *args):
        self.send(*args)
        return self.reply()


class Redis(gwtest.Service):
    """redis-server on 127.0.0.1:port, no persistence; stopped by PID (SIGCONT first)."""

    def __init__(self, port=None, dir=None, extra=()):
        """extra: more redis-server arguments (later ones win: "--appendonly", "yes"); dir: the
        data directory of a server stopped before (to restart it with its AOF)."""
        self.name = "redis"
        self.port = port or gwtest.free_port()
        self.dir = dir or gwtest.tempdir("gwtest-redis-")
        self.stderr_path = os.path.join(self.dir, "redis.log")
        self._out = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen([redis_bin(), "--port", str(self.port), "--bind", HOST,
                                      "--save", "", "--appendonly", "no", "--dir", self.dir,
                                      "--protected-mode", "no", *extra],
                                     stdin=subprocess.DEVNULL, stdout=self._out, stderr=subprocess.STDOUT,
                                     cwd=self.dir)
        self._register()
        deadline = time.monotonic() + gwtest.START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("redis-server exited with %s:\n%s" % (self.proc.returncode, self.stderr_text()[-1500:]))
            try:
                if self.cmd("PING") == "PONG":
                    return
            except (OSError, ConnectionError, AssertionError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError("redis-server did not answer PING on %d" % self.port)
            time.sleep(0.05)

    def cmd(self, *args):
        c = Resp(self.port)
        try:
            return c.cmd(*args)
        finally:
            c.close()

    def freeze(self):
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self):
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self, sig=signal.SIGTERM, timeout=3.0):
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        return super().stop(sig, timeout)

    def _closed(self):
        try:
            self._out.close()
        except Exception:
            pass

    def sanitizer_report(self):
        return ""

    def dump(self):
        """Every key with its type and contents (SCAN, TYPE, then the matching read)."""
        out = {}
        cursor = b"0"
        while True:
            cursor, keys = self.cmd("SCAN", cursor, "COUNT", "1000")
            for k in keys:
                t = self.cmd("TYPE", k)
                if t == "string":
                    v = self.cmd("GET", k)
                elif t == "hash":
                    v = self.cmd("HGETALL", k)
                elif t == "list":
                    v = self.cmd("LRANGE", k, 0, -1)
                elif t == "set":
                    v = self.cmd("SMEMBERS", k)
                elif t == "zset":
                    v = self.cmd("ZRANGE", k, 0, -1, "WITHSCORES")
                else:
                    v = self.cmd("DUMP", k)
                out[k] = (t, v)
            if cursor in (b"0", "0"):
                return out


class Monitor:
    """MONITOR in a thread: .lines (bytes) of every command Redis receives."""

    def __init__(self, port):
        self.c = Resp(port, timeout=0.2)
        assert self.c.cmd("MONITOR") == "OK"
        self.lines = []
        self.stop_ev = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stop_ev.is_set():
            try:
                self.lines.append(self.c._line())
            except socket.timeout:
                continue
            except (OSError, ConnectionError):
                return

    def stop(self):
        self.stop_ev.set()
        self.t.join(2)
        self.c.close()
        return self.lines

    def count(self, needle):
        return sum(1 for ln in self.lines if needle.encode() in ln)
