"""Submit throughput and latency through one SMPP bind.

Run ``python -m connectors.simulators.bench_smpp [--count N] [--windows 10,50]``.

The SMSC simulator runs in a child process (so it does not share the client's CPU and event
loop) on a free loopback port; the client keeps exactly ``window`` submits in flight with
``window`` workers, so latency is the round trip, not time spent queueing for the window.
Prints one line per window size: msg/s, p50 and p99 submit latency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

from connectors.base import SubmitRequest
from connectors.smpp import SmppClient, SmppConfig
from pipeline.procutil import die_with_parent, free_ports


@contextlib.contextmanager
def smsc_process(extra: list[str]) -> Iterator[int]:
    """A simulator child on a free port; yields the port once it prints that it listens."""
    [port] = free_ports(1)
    cmd = [sys.executable, "-m", "connectors.simulators.smsc", "--port", str(port), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                            preexec_fn=die_with_parent())  # spawned from the main thread
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the server is up, or the child died
        if "listening" not in line:
            raise RuntimeError(f"simulator did not start: {line!r} (exit {proc.poll()})")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


async def run(port: int, window: int, count: int, receipts: bool) -> tuple[float, list[float]]:
    cfg = SmppConfig("127.0.0.1", port, "telex", "secret", window=window,
                     receipt_buffer=max(10_000, count * 2))
    latencies: list[float] = []
    async with SmppClient(cfg) as esme:
        per_worker = count // window

        async def worker(w: int) -> None:
            for i in range(per_worker):
                req = SubmitRequest(f"B{w}-{i}", "+14155550100", "+14155550123",
                                    "Your code is 123456", registered_delivery=receipts)
                t0 = time.perf_counter()
                await esme.submit(req)
                latencies.append(time.perf_counter() - t0)

        start = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(window)))
        elapsed = time.perf_counter() - start
    return len(latencies) / elapsed, latencies


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="SMPP submit throughput through one bind.")
    ap.add_argument("--count", type=int, default=20_000)
    ap.add_argument("--windows", default="10,50")
    ap.add_argument("--latency-ms", type=float, default=0.0, help="simulated SMSC latency")
    ap.add_argument("--receipts", action="store_true", help="request and receive receipts")
    a = ap.parse_args(argv)
    extra = ["--latency-ms", str(a.latency_ms)] + ([] if a.receipts else ["--receipt-form",
                                                                           "none"])
    with smsc_process(extra) as port:
        for window in (int(w) for w in a.windows.split(",")):
            rate, lat = asyncio.run(run(port, window, a.count, a.receipts))
            print(f"window={window:<3} n={len(lat)} {rate:,.0f} msg/s  "
                  f"p50={_pct(lat, 50):.2f} ms  p99={_pct(lat, 99):.2f} ms  "
                  f"(smsc latency {a.latency_ms} ms, receipts {'on' if a.receipts else 'off'})",
                  flush=True)


if __name__ == "__main__":
    main()
