"""REST API throughput and latency: ``telex api`` publishing to a real broker on this box.

    python -m bench.api [--runs 3] [--requests 10000] [--connections 32] [--rate 1000]
                        [--seconds 10]

Uses ``KAFKA_BOOTSTRAP_SERVERS`` and ``DATABASE_URL`` when set, else starts a dev broker and a
dev PostgreSQL for the run. Each run starts ``telex api`` in its own process (fresh topics and
schema, rate limit lifted) and measures, with POSTs that each publish a new message (no
Idempotency-Key, so every request is a new message through the SDK to Kafka and a row in
PostgreSQL):

1. **closed loop**: ``--requests`` POSTs over ``--connections`` keep-alive connections with
   ``hey`` (~/go/bin/hey or on PATH): requests/s, and the API process's CPU µs per request
   (utime+stime from /proc over the interval / answered requests, librdkafka's threads
   included);
2. **open loop** at ``--rate`` POSTs/s for ``--seconds`` (request *i* due at t0 + i/rate; latency
   from the due time, so a stalled server is not hidden): p50/p99 and CPU µs per request.

Prints each run, then median (min, max) of the runs. The load generator, Kafka and PostgreSQL
share the two cores with the API: requests/s is a floor for this box, not for the API alone.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from bench.http_stack import _cpu_s, _hey_path, _tree
from pipeline.procutil import free_ports

REPO = Path(__file__).resolve().parent.parent
ACCOUNT = "acct-bench"
BODY = json.dumps({"To": "+14155552671", "From": "+14155550100",
                   "Body": "Your verification code is 424242. It expires in 10 minutes.",
                   "StatusCallback": "https://client.example/telex/status",
                   "ValidityPeriod": 600}).encode()


@contextlib.contextmanager
def _services() -> Iterator[tuple[str, str]]:
    """(bootstrap, database URL): the environment's, or dev ones started for the run."""
    with contextlib.ExitStack() as stack:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if not bootstrap:
            from pipeline.dev.broker import DevBroker

            broker = DevBroker(die_with_parent=True)
            stack.callback(broker.stop)
            bootstrap = broker.start()
        url = os.environ.get("DATABASE_URL")
        if not url:
            from pipeline.dev.postgres import DevPostgres

            cluster = DevPostgres()
            url = cluster.start()
            stack.callback(cluster.stop)
        yield bootstrap, url


def _env(bootstrap: str, url: str, port: int, keys: Path) -> dict[str, str]:
    run = uuid.uuid4().hex[:8]
    return {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "DATABASE_URL": url,
            "TELEX_TOPIC_PREFIX": f"bench{run}.", "TELEX_PG_SCHEMA": f"bench_{run}",
            "TELEX_API_PORT": str(port), "TELEX_API_KEYS_FILE": str(keys),
            "TELEX_API_RATE": "1000000", "TELEX_API_BURST": "1000000",
            "TELEX_LOG_LEVEL": "WARNING", "PYTHONPATH": str(REPO)}


def _telex(env: dict[str, str], *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "pipeline.cli.main", *args], cwd=REPO,
                          env=env, check=True, capture_output=True, text=True).stdout


def _start_api(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli.main", "api"], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # readiness: the port answers
        if proc.poll() is not None:
            raise SystemExit(f"telex api exited: {proc.stderr.read().decode()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return proc
        time.sleep(0.05)  # pacing between connection attempts
    proc.kill()
    raise SystemExit("telex api did not listen within 60 s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _hey(hey: str, port: int, auth: str, connections: int, n: int, body: Path) -> dict:
    n -= n % connections
    out = subprocess.run([hey, "-n", str(n), "-c", str(connections), "-t", "10", "-m", "POST",
                          "-T", "application/json", "-D", str(body), "-H",
                          f"Authorization: Basic {base64.b64encode(auth.encode()).decode()}",
                          f"http://127.0.0.1:{port}/v1/accounts/{ACCOUNT}/messages"],
                         check=True, capture_output=True, text=True).stdout
    ok = re.search(r"\[201\]\s+(\d+) responses", out)
    if ok is None or int(ok[1]) != n:
        raise SystemExit(f"hey: not every answer was 201:\n{out}")
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return {"n": n, "rps": float(rps[1]) if rps else float("nan")}


async def _open_loop(port: int, auth: str, n: int, rate: float, connections: int = 64) -> dict:
    """n POSTs due at t0 + i/rate over keep-alive connections; latency from the due time."""
    token = base64.b64encode(auth.encode()).decode()
    request = (f"POST /v1/accounts/{ACCOUNT}/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               f"Authorization: Basic {token}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(BODY)}\r\n\r\n").encode() + BODY
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    latencies: list[float] = []
    start = time.perf_counter()

    async def conn() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while not queue.empty():
                i = queue.get_nowait()
                due = start + i / rate
                if (wait := due - time.perf_counter()) > 0:
                    await asyncio.sleep(wait)  # the schedule, not a readiness wait
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                await reader.readexactly(int(length[1]) if length else 0)
                if head[9:12] != b"201":
                    raise SystemExit(f"unexpected answer {head[:40]!r}")
                latencies.append(time.perf_counter() - due)
        finally:
            writer.close()

    await asyncio.gather(*(conn() for _ in range(connections)))
    wall = time.perf_counter() - start
    latencies.sort()
    return {"n": len(latencies), "rps": len(latencies) / wall,
            "p50_ms": 1000 * latencies[len(latencies) // 2],
            "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)]}


def _one_run(bootstrap: str, url: str, args: argparse.Namespace, hey: str,
             body: Path) -> dict[str, float]:
    (port,) = free_ports(1)
    with tempfile.TemporaryDirectory() as tmp:
        env = _env(bootstrap, url, port, Path(tmp) / "keys.json")
        _telex(env, "topics", "apply")
        key = json.loads(_telex(env, "api", "key", "create", ACCOUNT, "--json"))
        auth = f"{key['key_id']}:{key['secret']}"
        proc = _start_api(env, port)
        try:
            pids = _tree(proc.pid)
            _hey(hey, port, auth, args.connections, 1000, body)  # warm-up (and the scrypt check)
            before = _cpu_s(pids)
            closed = _hey(hey, port, auth, args.connections, args.requests, body)
            closed_cpu = 1e6 * (_cpu_s(pids) - before) / closed["n"]
            before = _cpu_s(pids)
            opened = asyncio.run(_open_loop(port, auth, int(args.rate * args.seconds),
                                            args.rate))
            open_cpu = 1e6 * (_cpu_s(pids) - before) / opened["n"]
        finally:
            _stop(proc)
    return {"rps": closed["rps"], "cpu_us": closed_cpu, "open_p50_ms": opened["p50_ms"],
            "open_p99_ms": opened["p99_ms"], "open_cpu_us": open_cpu,
            "open_rps": opened["rps"]}


_COLUMNS = [("rps", "POST req/s (closed loop)", ".0f"),
            ("cpu_us", "API CPU µs/POST (closed loop)", ".0f"),
            ("open_p50_ms", "p50 ms at the offered rate", ".2f"),
            ("open_p99_ms", "p99 ms at the offered rate", ".2f"),
            ("open_cpu_us", "API CPU µs/POST at the offered rate", ".0f"),
            ("open_rps", "achieved req/s at the offered rate", ".0f")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    hey = _hey_path()
    if hey is None:
        raise SystemExit("hey not found (go install github.com/rakyll/hey@latest)")
    import uvloop

    uvloop.install()
    results: list[dict[str, float]] = []
    with _services() as (bootstrap, url), tempfile.NamedTemporaryFile(suffix=".json") as body:
        body.write(BODY)
        body.flush()
        print(f"broker {bootstrap}; closed loop: hey, {args.connections} connections, "
              f"{args.requests} POSTs; open loop: {args.rate:g}/s for {args.seconds:g} s; "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)
        for run in range(args.runs):
            r = _one_run(bootstrap, url, args, hey, Path(body.name))
            results.append(r)
            print(f"run {run + 1}: " + ", ".join(f"{label} {r[key]:{fmt}}"
                                                for key, label, fmt in _COLUMNS), flush=True)
    print(f"\n{args.runs} runs, median (min, max):")
    for key, label, fmt in _COLUMNS:
        values = [r[key] for r in results]
        print(f"  {label:38} {statistics.median(values):{fmt}} "
              f"({min(values):{fmt}}, {max(values):{fmt}})")


if __name__ == "__main__":
    main()
