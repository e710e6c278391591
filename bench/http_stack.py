"""HTTP stack cost: FastAPI or Starlette on uvicorn or granian, one worker each (ADR 0006).

    python -m bench.http_stack [--runs 3] [--requests 20000] [--connections 32]
                               [--rate 1000] [--seconds 10] [--no-shutdown-check]

Each run starts every candidate in turn (the order rotates run to run, so drift on the box falls
on all of them) in its own process on a free port, serving ``bench.http_apps``: a POST whose
~300-byte JSON body is validated into a pydantic model and answered ``201`` with ~400 bytes of
JSON, and a GET answered ``200`` with the same resource. The hand-written
``pipeline.runtime.httpserver`` serves the same endpoint as the baseline, in the same run.

Per candidate and run:
1. **closed loop**, ``--connections`` keep-alive connections each sending one request at a time
   (``hey`` when it is on PATH or in ~/go/bin, else this module's own asyncio client in its own
   process), ``--requests`` POSTs, then as many GETs: requests/s, p50/p99 latency, and the
   server's **CPU µs per request** — utime+stime of the server process and its children from
   ``/proc/<pid>/stat`` over the measured interval, divided by the answered requests;
2. **open loop** at ``--rate`` POSTs/s for ``--seconds`` (own client: request *i* is due at
   t0 + i/rate whether or not earlier ones were answered; latency counts from the due time, so a
   stalled server is not hidden by a waiting client): p50/p99 and CPU µs per request at a rate
   the box sustains with room to spare, which is where Telex's API will live;
3. after the last run, the **shutdown check**: a request that takes 2 s, SIGTERM 0.3 s into it;
   was it answered, and how long did the process take to exit.

The load generator shares the two cores with the server (and with Kafka if it runs), so
requests/s is a floor; CPU per request is the figure to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.procutil import free_ports

REPO = Path(__file__).resolve().parent.parent
_TICK = os.sysconf("SC_CLK_TCK")
ACCOUNT = "AC" + "1" * 32
POST_PATH = f"/v1/accounts/{ACCOUNT}/messages"
GET_PATH = f"{POST_PATH}/SM{'0' * 32}"
POST_BODY = json.dumps({
    "To": "+15550001234", "From": "+15550009876",
    "Body": "Your verification code is 123456. It expires in ten minutes. Do not share it "
            "with anyone; Telex staff will never ask you for it.",
    "StatusCallback": "https://hooks.example.com/telex/status/callbacks?tenant=acme-prod",
    "ValidityPeriod": 3600, "SendAt": None}, separators=(",", ":")).encode()

_UVICORN = ["-m", "uvicorn", "--factory", "--host", "127.0.0.1", "--loop", "uvloop",
            "--http", "httptools", "--no-access-log", "--log-level", "warning"]
_GRANIAN = ["-m", "granian", "--factory", "--interface", "asgi", "--host", "127.0.0.1",
            "--workers", "1", "--runtime-threads", "1", "--loop", "uvloop",
            "--no-access-log", "--log-level", "warning"]
BASELINE = "hand-written (baseline)"  # its stop path is tested in test_webhooks_e2e, not here
CANDIDATES: dict[str, list[str]] = {
    BASELINE: ["-m", "bench.http_stack", "--serve-handwritten"],
    "FastAPI on uvicorn": [*_UVICORN, "bench.http_apps:fastapi_app", "--port"],
    "Starlette on uvicorn": [*_UVICORN, "bench.http_apps:starlette_app", "--port"],
    "FastAPI on granian": [*_GRANIAN, "bench.http_apps:fastapi_app", "--port"],
    "Starlette on granian": [*_GRANIAN, "bench.http_apps:starlette_app", "--port"],
}


# --- the server's CPU ----------------------------------------------------------------------

def _tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _cpu_s(pids: list[int]) -> float:
    """utime+stime of the processes, in seconds (all their threads included)."""
    total = 0
    for p in pids:
        with open(f"/proc/{p}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / _TICK


def _rss_mib(pids: list[int]) -> float:
    kib = 0
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                kib += int(line.split()[1])
    return kib / 1024


# --- load: own asyncio client (open loop always; closed loop when hey is absent) -----------

def _request(method: str, path: str, port: int) -> bytes:
    if method == "GET":
        return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(POST_BODY)}\r\n\r\n"
            ).encode() + POST_BODY


async def _answer(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    match = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    if match is None:
        raise SystemExit(f"answer without Content-Length: {head[:200]!r}")
    await reader.readexactly(int(match[1]))
    return status


async def _drive(port: int, method: str, connections: int, n: int, rate: float) -> dict:
    """n requests over ``connections`` keep-alive connections; rate > 0: open loop."""
    path = POST_PATH if method == "POST" else GET_PATH
    request, want = _request(method, path, port), 201 if method == "POST" else 200
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    latencies: list[float] = []
    late = 0
    start = time.perf_counter()

    async def conn() -> None:
        nonlocal late
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while not queue.empty():
                i = queue.get_nowait()
                due = start + i / rate if rate else time.perf_counter()
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                elif rate and wait < -0.001:
                    late += 1
                writer.write(request)
                if await _answer(reader) != want:
                    raise SystemExit(f"unexpected status for {method}")
                latencies.append(time.perf_counter() - due)
        finally:
            writer.close()

    await asyncio.gather(*(conn() for _ in range(connections)))
    wall = time.perf_counter() - start
    latencies.sort()
    return {"n": len(latencies), "rps": len(latencies) / wall,
            "p50_ms": 1000 * latencies[len(latencies) // 2],
            "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)], "late": late}


def _own_client(port: int, method: str, connections: int, n: int, rate: float) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.http_stack", "--client", str(port),
                          method, str(connections), str(n), str(rate)],
                         cwd=REPO, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def _hey_path() -> str | None:
    return shutil.which("hey") or next(
        (str(p) for p in [Path.home() / "go/bin/hey"] if p.exists()), None)


def _hey(hey: str, port: int, method: str, connections: int, n: int, body: Path) -> dict:
    path = POST_PATH if method == "POST" else GET_PATH
    n -= n % connections  # hey sends n // c requests per connection
    cmd = [hey, "-n", str(n), "-c", str(connections), "-t", "5", "-m", method]
    if method == "POST":
        cmd += ["-T", "application/json", "-D", str(body)]
    out = subprocess.run([*cmd, f"http://127.0.0.1:{port}{path}"], check=True,
                         capture_output=True, text=True).stdout
    want = 201 if method == "POST" else 200
    ok = re.search(rf"\[{want}\]\s+(\d+) responses", out)
    if ok is None or int(ok[1]) != n:
        raise SystemExit(f"hey: not every answer was {want}:\n{out}")

    def pct(p: int) -> float:
        m = re.search(rf"\b{p}%%? in ([\d.]+) secs", out)
        return 1000 * float(m[1]) if m else float("nan")

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return {"n": n, "rps": float(rps[1]) if rps else float("nan"),
            "p50_ms": pct(50), "p99_ms": pct(99)}


# --- one candidate -------------------------------------------------------------------------

def _start(name: str, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, *CANDIDATES[name], str(port)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            asyncio.run(_drive(port, "GET", 1, 1, 0))
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{name} did not answer within 30 s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class _Args:
    requests: int
    connections: int
    rate: float
    seconds: float


def _measure(name: str, args: _Args, hey: str | None, body: Path) -> dict[str, float]:
    (port,) = free_ports(1)
    proc = _start(name, port)
    try:
        pids = _tree(proc.pid)

        def window(fn: Callable[[], dict]) -> dict:
            before = _cpu_s(pids)
            result = fn()
            result["cpu_us"] = 1e6 * (_cpu_s(pids) - before) / result["n"]
            return result

        def closed(method: str, n: int) -> dict:
            if hey:
                return _hey(hey, port, method, args.connections, n, body)
            return _own_client(port, method, args.connections, n, 0)

        closed("POST", 2000)  # warm-up: imports, caches, connection set-up
        closed("GET", 2000)
        post = window(lambda: closed("POST", args.requests))
        get = window(lambda: closed("GET", args.requests))
        n_open = int(args.rate * args.seconds)
        opened = window(lambda: _own_client(port, "POST", 64, n_open, args.rate))
        rss = _rss_mib(pids)
    finally:
        _stop(proc)
    return {"post_rps": post["rps"], "post_cpu_us": post["cpu_us"],
            "post_p50_ms": post["p50_ms"], "post_p99_ms": post["p99_ms"],
            "get_rps": get["rps"], "get_cpu_us": get["cpu_us"], "get_p99_ms": get["p99_ms"],
            "open_cpu_us": opened["cpu_us"], "open_p50_ms": opened["p50_ms"],
            "open_p99_ms": opened["p99_ms"], "open_rps": opened["rps"], "rss_mib": rss}


def _shutdown_check(name: str) -> str:
    """A 2 s request in flight, SIGTERM 0.3 s in: answered? exit after how long?"""
    (port,) = free_ports(1)
    proc = _start(name, port)

    async def slow() -> str:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        t0 = time.perf_counter()
        try:
            status = await _answer(reader)
            answered = f"answered {status} after {time.perf_counter() - t0:.1f} s"
        except (asyncio.IncompleteReadError, ConnectionError):
            answered = f"connection dropped after {time.perf_counter() - t0:.1f} s, no answer"
        writer.close()
        return answered

    t0 = time.perf_counter()
    answered = asyncio.run(slow())
    try:
        proc.wait(15)
        exited = f"exited {proc.returncode} {time.perf_counter() - t0:.1f} s after SIGTERM"
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        exited = "still running 15 s after SIGTERM (killed)"
    return f"{answered}; {exited}"


# --- report --------------------------------------------------------------------------------

_COLUMNS = [("post_cpu_us", "POST CPU µs/req", ".0f"), ("post_rps", "POST req/s", ".0f"),
            ("post_p50_ms", "POST p50 ms", ".1f"), ("post_p99_ms", "POST p99 ms", ".1f"),
            ("get_cpu_us", "GET CPU µs/req", ".0f"), ("get_rps", "GET req/s", ".0f"),
            ("open_cpu_us", "open-loop CPU µs/req", ".0f"),
            ("open_p50_ms", "open-loop p50 ms", ".2f"), ("open_p99_ms", "open-loop p99 ms", ".2f"),
            ("open_rps", "open-loop achieved req/s", ".0f"), ("rss_mib", "RSS MiB", ".0f")]


def _cell(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}, {max(values):{fmt}})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--only", action="append", choices=list(CANDIDATES))
    parser.add_argument("--no-shutdown-check", action="store_true")
    parser.add_argument("--serve-handwritten", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs=5, help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.serve_handwritten is not None:
        from bench.http_apps import serve_handwritten
        asyncio.run(serve_handwritten(ns.serve_handwritten))
        return
    if ns.client:
        import uvloop
        port, method, conns, n, rate = ns.client
        uvloop.install()
        print(json.dumps(asyncio.run(_drive(int(port), method, int(conns), int(n),
                                            float(rate)))))
        return

    names = ns.only or list(CANDIDATES)
    args = _Args(ns.requests, ns.connections, ns.rate, ns.seconds)
    hey = _hey_path()
    print(f"closed loop: {hey or 'own asyncio client'}, {args.connections} connections, "
          f"{args.requests} requests; open loop: own client, {args.rate:g}/s for "
          f"{args.seconds:g} s; load average {os.getloadavg()[0]:.1f}", flush=True)
    results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    with tempfile.NamedTemporaryFile(suffix=".json") as body:
        body.write(POST_BODY)
        body.flush()
        for run in range(ns.runs):
            order = names[run % len(names):] + names[:run % len(names)]
            for name in order:
                r = _measure(name, args, hey, Path(body.name))
                results[name].append(r)
                print(f"run {run + 1} {name}: " + ", ".join(
                    f"{label} {r[key]:{fmt}}" for key, label, fmt in _COLUMNS), flush=True)
    print(f"\n{ns.runs} runs: median (min, max); CPU is the server process tree's "
          f"utime+stime per answered request")
    for key, label, fmt in _COLUMNS:
        print(f"\n{label}")
        for name in names:
            print(f"  {name:26} {_cell([r[key] for r in results[name]], fmt)}")
    if not ns.no_shutdown_check:
        print("\nshutdown: POST /slow (2 s), SIGTERM 0.3 s in")
        for name in names[1:] if names[0] == BASELINE else names:
            print(f"  {name:26} {_shutdown_check(name)}")


if __name__ == "__main__":
    main()
