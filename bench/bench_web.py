#!/usr/bin/env python3
"""Web figures: GET /hub/repos with 200 repos next to a bare ThreadingHTTPServer, SSE fan-out
latency to 100 clients, and the idle hub's memory.

Run from the project root: python3 bench/bench_web.py [--repos 200] [--seconds 3]. Prints figures;
asserts nothing. Targets: within 2x of the bare server; SSE p99 < 100 ms; hub RSS < 60 MB.
Both servers run as subprocesses (`python -m car hub serve` and a bare script), so the load
generator's threads never share a GIL with the server they measure.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import List, Tuple

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(ROOT))

BARE_SERVER = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
body = open(sys.argv[1], "rb").read()
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_GET(self):
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body)
    def log_message(self, *a):
        pass
ThreadingHTTPServer.daemon_threads = True
s = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(f"serving http://127.0.0.1:{s.server_address[1]}/", flush=True)
s.serve_forever()
"""

TICK_AGENT = r"""
import sys, time
sys.stdin.read()
n, every = int(sys.argv[1]), float(sys.argv[2])
for i in range(n):
    print(f"tick {i} {time.time():.6f}", flush=True)
    time.sleep(every)
"""


def start(argv: List[str], cwd: Path) -> Tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(argv, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"{argv} ended: {proc.stderr.read()[-2000:]}")
        if "serving http://" in line:
            return proc, int(line.strip().rstrip("/").rsplit(":", 1)[1])
    raise SystemExit(f"{argv} did not start")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def make_hub(root: Path, repos: int) -> None:
    from car.config import default_data
    from car.files import write_yaml

    write_yaml(root / ".codex-autorunner" / "config.yml", default_data("hub"))
    for i in range(repos):
        (root / f"repo-{i:03d}" / ".git").mkdir(parents=True)  # discovery needs only .git
    subprocess.run([sys.executable, "-m", "car", "hub", "scan"], cwd=root, env=ENV, check=True,
                   capture_output=True, timeout=600)  # inits all, so the served hub starts warm


def load(port: int, path: str, clients: int, seconds: float) -> Tuple[List[float], float, int]:
    """`clients` threads on keep-alive connections for `seconds`; latencies (s), elapsed, count."""
    latencies: List[List[float]] = [[] for _ in range(clients)]
    go, end = threading.Event(), [0.0]

    def worker(out: List[float]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        go.wait()
        while time.perf_counter() < end[0]:
            t = time.perf_counter()
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            out.append(time.perf_counter() - t)
        conn.close()

    threads = [threading.Thread(target=worker, args=(out,)) for out in latencies]
    for t in threads:
        t.start()
    begin = time.perf_counter()
    end[0] = begin + seconds
    go.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - begin
    flat = [x for out in latencies for x in out]
    return flat, elapsed, len(flat)


def pct(values: List[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))] * 1000


def bench_hub_repos(tmp: Path, repos: int, seconds: float) -> subprocess.Popen:
    hub = tmp / "hub"
    make_hub(hub, repos)
    car, car_port = start([sys.executable, "-m", "car", "hub", "serve", "--port", "0"], hub)
    conn = http.client.HTTPConnection("127.0.0.1", car_port, timeout=30)
    conn.request("GET", "/hub/repos")
    body = conn.getresponse().read()
    conn.close()
    assert len(json.loads(body)["repos"]) == repos
    (tmp / "body.json").write_bytes(body)
    bare, bare_port = start([sys.executable, "-c", BARE_SERVER, str(tmp / "body.json")], tmp)
    print(f"GET /hub/repos, {repos} repos, body {len(body) // 1024} KiB, {seconds:.0f} s per level:")
    try:
        for clients in (1, 8, 32):
            load(car_port, "/hub/repos", clients, 0.3)  # warm-up
            rows = {}
            for name, port in (("bare", bare_port), ("car", car_port)):
                lat, elapsed, n = load(port, "/hub/repos", clients, seconds)
                rows[name] = (pct(lat, 50), pct(lat, 99), n / elapsed)
            (b50, b99, brps), (c50, c99, crps) = rows["bare"], rows["car"]
            print(f"  {clients:>2} clients: car p50 {c50:6.2f} ms p99 {c99:6.2f} ms {crps:7.0f} req/s | "
                  f"bare p50 {b50:6.2f} ms p99 {b99:6.2f} ms {brps:7.0f} req/s | "
                  f"car/bare p50 {c50 / b50:.2f}x, throughput {brps / crps:.2f}x (target within 2x)")
    finally:
        stop(bare)
    return car


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_sse(tmp: Path, clients: int, lines: int, every: float) -> None:
    from support import make_repo, update_config

    agent = tmp / "tick_agent.py"
    agent.write_text(TICK_AGENT)
    hub = tmp / "sse-hub"
    hub.mkdir()
    from car.config import default_data
    from car.files import write_yaml

    write_yaml(hub / ".codex-autorunner" / "config.yml", default_data("hub"))
    make_repo(hub / "ticker", items=("tick",))
    update_config(hub / "ticker", codex={"binary": sys.executable, "args": [str(agent), str(lines), str(every)]})
    proc, port = start([sys.executable, "-m", "car", "hub", "serve", "--port", "0"], hub)
    try:
        sel, socks = selectors.DefaultSelector(), []
        for _ in range(clients):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(f"GET /repos/ticker/api/logs/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, bytearray())
            socks.append(s)
        time.sleep(1.0)  # all connected and past their context lines
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/hub/repos/ticker/run", body=b'{"once": true}',
                     headers={"Content-Type": "application/json"})
        assert conn.getresponse().status == 200
        delays: List[float] = []
        deadline = time.monotonic() + lines * every + 30
        while len(delays) < clients * lines and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1):
                buf: bytearray = key.data
                chunk = key.fileobj.recv(65536)
                now = time.time()
                buf += chunk
                *done, rest = bytes(buf).split(b"\n")
                key.data[:] = rest
                for line in done:
                    parts = line.split(b" tick ")
                    if len(parts) == 2 and line.startswith(b"data:"):
                        delays.append(now - float(parts[1].split()[1]))
        for s in socks:
            s.close()
        print(f"SSE: {clients} clients following one log, {lines} lines every {every * 1000:.0f} ms: "
              f"{len(delays)}/{clients * lines} delivered, latency p50 {pct(delays, 50):.1f} ms, "
              f"p99 {pct(delays, 99):.1f} ms, max {max(delays) * 1000:.1f} ms (target p99 < 100 ms)")
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repos", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--sse-clients", type=int, default=100)
    args = parser.parse_args()
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    with tempfile.TemporaryDirectory() as tmp:
        car = bench_hub_repos(Path(tmp), args.repos, args.seconds)
        try:
            time.sleep(3)  # idle
            print(f"hub idle with {args.repos} repos: VmRSS {rss_mb(car.pid):.1f} MB (target < 60 MB)")
        finally:
            stop(car)
        bench_sse(Path(tmp), args.sse_clients, lines=50, every=0.05)


if __name__ == "__main__":
    main()
