"""tools/bench --mode balance: the balancing algorithms against three unequal mock backends.

Three gotthard-mock-backend processes with the capacity model (fast: 8 slots, 5 ms a token;
medium: 4 slots, 10 ms; slow: 2 slots, 20 ms; 20 us of prefill a prompt word), one gotthard
per algorithm in front of them (weighted_round_robin weighted by slots: 8, 4, 2), the same
open-loop Poisson arrivals of mixed requests (prompts of 10 to 2000 words, answers of 8 to 256
tokens, one seeded sequence) for each. Reports throughput, p50, p99 and errors per algorithm.
Standard library only.
"""

import concurrent.futures
import http.client
import json
import os
import random
import socket
import subprocess
import tempfile
import time

BACKENDS = [("fast", 8, 5), ("medium", 4, 10), ("slow", 2, 20)]
ALGOS = ["least_outstanding", "power_of_two", "weighted_round_robin", "queue_aware"]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start_mock(binary, name, slots, token_ms):
    p = subprocess.Popen([binary, "--port", "0", "--models", "bench-model", "--name", name,
                          "--slots", str(slots), "--token-ms", str(token_ms), "--prompt-us", "20"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    line = p.stdout.readline().decode()
    return p, int(line.strip().split("=")[1])


def start_gateway(binary, tmp, algo, ports):
    port, admin = free_port(), free_port()
    weights = {"fast": 8, "medium": 4, "slow": 2}
    cfg = {"listen": [{"address": "127.0.0.1:%d" % port}], "admin": {"address": "127.0.0.1:%d" % admin},
           "workers": 1,
           "pools": [{"name": "bench", "models": ["bench-model"], "balance": algo,
                      "metrics": {"interval_ms": 200},
                      "backends": [{"url": "http://127.0.0.1:%d" % ports[n], "country": "CH",
                                    "weight": weights[n]} for n, _s, _t in BACKENDS]}]}
    path = os.path.join(tmp, "gw-%s.json" % algo)
    with open(path, "w") as f:
        json.dump(cfg, f)
    p = subprocess.Popen([binary, "-c", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return p, port
        except OSError:
            time.sleep(0.05)
    p.kill()
    raise RuntimeError("gotthard did not start")


def workload(rate, duration, seed):
    rnd = random.Random(seed)
    t, out = 0.0, []
    while t < duration:
        t += rnd.expovariate(rate)
        words = int(rnd.choice([10, 50, 200, 500, 2000]) * rnd.uniform(0.5, 1.5))
        tokens = rnd.choice([8, 16, 32, 64, 128, 256])
        out.append((t, words, tokens))
    return out


def one(port, words, tokens):
    body = json.dumps({"model": "bench-model", "max_tokens": tokens,
                       "messages": [{"role": "user", "content": "w " * words}]})
    t0 = time.monotonic()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        c.request("POST", "/v1/chat/completions", body=body, headers={"content-type": "application/json"})
        r = c.getresponse()
        r.read()
        return r.status, time.monotonic() - t0, r.getheader("x-mock-backend")
    except Exception:  # noqa: BLE001 - counted as an error
        return 0, time.monotonic() - t0, None
    finally:
        c.close()


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


def run_algo(gw_bin, mock_bin, tmp, algo, work):
    mocks = {}
    procs = []
    try:
        for name, slots, token_ms in BACKENDS:
            p, port = start_mock(mock_bin, name, slots, token_ms)
            procs.append(p)
            mocks[name] = port
        g, port = start_gateway(gw_bin, tmp, algo, mocks)
        procs.append(g)
        time.sleep(0.5)  # first scrapes
        start = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=400) as ex:
            futs = []
            for t, words, tokens in work:
                d = start + t - time.monotonic()
                if d > 0:
                    time.sleep(d)
                futs.append(ex.submit(one, port, words, tokens))
            res = [f.result() for f in futs]
        end = time.monotonic()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
    ok = [r for r in res if r[0] == 200]
    lat = [r[1] for r in ok]
    share = {}
    for r in ok:
        share[r[2]] = share.get(r[2], 0) + 1
    return {"algo": algo, "n": len(res), "ok": len(ok), "errors": len(res) - len(ok),
            "rps": len(ok) / (end - start), "p50": pct(lat, 0.5), "p99": pct(lat, 0.99),
            "share": share}


def main(a):
    gw_bin = a.gotthard or os.path.join(a.build, "gateway", "gotthard")
    mock_bin = a.mock or os.path.join(a.build, "tools", "mock_backend", "gotthard-mock-backend")
    for b in (gw_bin, mock_bin):
        if not os.access(b, os.X_OK):
            print("bench: no binary at %s (build %s in Release first)" % (b, a.build))
            return 1
    rate, duration = a.balance_rate, a.duration
    work = workload(rate, duration, 7)
    tmp = tempfile.mkdtemp(prefix="gotthard-bench-bal-")
    rows = []
    for algo in ALGOS:
        r = run_algo(gw_bin, mock_bin, tmp, algo, work)
        rows.append(r)
        print("bench: %-22s %4d/%4d ok  %6.1f req/s  p50 %6.0f ms  p99 %6.0f ms  %r" % (
            algo, r["ok"], r["n"], r["rps"], r["p50"] * 1000, r["p99"] * 1000, r["share"]), flush=True)
    out = ["## Balancing (tools/bench --mode balance)", "",
           "Three mock backends: fast (8 slots, 5 ms a token), medium (4 slots, 10 ms), slow "
           "(2 slots, 20 ms), 20 us of prefill a prompt word; open-loop Poisson arrivals at %.0f "
           "req/s for %d s, prompts of 5 to 3000 words, answers of 8 to 256 tokens (one seeded "
           "sequence, the same for every algorithm); weighted_round_robin weighted 8:4:2 by slots; "
           "queue_aware scrapes every 200 ms; one worker." % (rate, duration), "",
           "| algorithm | ok / sent | req/s | p50 ms | p99 ms | fast / medium / slow |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        s = r["share"]
        out.append("| %s | %d / %d | %.1f | %.0f | %.0f | %d / %d / %d |" % (
            r["algo"], r["ok"], r["n"], r["rps"], r["p50"] * 1000, r["p99"] * 1000,
            s.get("fast", 0), s.get("medium", 0), s.get("slow", 0)))
    text = "\n".join(out)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    return 0
