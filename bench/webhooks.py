"""Webhook receiver throughput: signed status webhooks answered per second, broker ack included.

    python -m bench.webhooks [--requests 20000] [--connections 32] [--runs 3]

Each run: fresh topics; the receiver (``pipeline.stages.webhooks.run``) in its own process on a
free port; ``connections`` keep-alive connections from this process each send one signed
one-status webhook at a time and wait for its 200 (so every answer means the record is on the
broker, acks=all). Rate = answered requests / wall time; also p50/p99 latency and the receiver's
CPU seconds per 1,000 requests. The load generator shares the machine's cores with the receiver
and the broker, so the figure is a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from bench import harness
from bench.harness import REPO, proc_stats, worker_env
from connectors.http_channel import SIGNATURE_HEADER, sign
from pipeline.procutil import die_with_parent, free_ports
from pipeline.settings import load_settings
from pipeline.topics import admin_client, apply_topics, catalogue

SECRET = "bench-secret"


def _request(port: int, i: int) -> bytes:
    value = {"messaging_product": "whatsapp", "statuses": [{
        "id": f"wamid.bench{i:08d}", "status": "delivered", "timestamp": "1700000000",
        "recipient_id": "15550001", "biz_opaque_callback_data": f"TX{i:032x}"}]}
    body = json.dumps({"object": "whatsapp_business_account", "entry": [
        {"id": "0", "changes": [{"field": "messages", "value": value}]}]}).encode()
    return (f"POST /webhooks/wa HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{SIGNATURE_HEADER}: {sign(body, SECRET)}\r\n\r\n").encode() + body


async def _client(port: int, items: list[int], latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for i in items:
            t0 = time.perf_counter()
            writer.write(_request(port, i))
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200 "):
                raise SystemExit(f"unexpected answer: {head[:60]!r}")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
    finally:
        writer.close()


async def _load(port: int, n: int, connections: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    start = time.perf_counter()
    await asyncio.gather(*(_client(port, list(range(c, n, connections)), latencies)
                           for c in range(connections)))
    return n / (time.perf_counter() - start), latencies


def _wait_healthy(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"receiver exited with {proc.returncode}")
        try:
            with opener.open(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("receiver not healthy in time")


def one_run(bootstrap: str, tmp: Path, n: int, connections: int) -> dict[str, float]:
    settings = load_settings(kafka_bootstrap_servers=bootstrap,
                             topic_prefix=f"bench{uuid.uuid4().hex[:8]}.")
    apply_topics(admin_client(settings), catalogue(settings))
    carriers = tmp / f"carriers-{uuid.uuid4().hex[:6]}.json"
    carriers.write_text(json.dumps({"connectors": [
        {"name": "wa", "type": "whatsapp", "base_url": "http://127.0.0.1:9",
         "phone_number_id": "1", "access_token": "t", "app_secret": SECRET}], "routes": []}))
    [port] = free_ports(1)
    env = {**worker_env(settings), "TELEX_WEBHOOK_PORT": str(port),
           "TELEX_CARRIERS_FILE": str(carriers)}
    code = ("import sys; from pipeline.settings import get_settings; "
            "from pipeline.observability import configure_logging; "
            "configure_logging(get_settings().log_level); "
            "from pipeline.stages.webhooks import run; sys.exit(run(get_settings()))")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env,
                            preexec_fn=die_with_parent())
    try:
        _wait_healthy(port, proc)
        cpu0, _ = proc_stats(proc.pid)
        rate, latencies = asyncio.run(_load(port, n, connections))
        cpu1, rss = proc_stats(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    q = statistics.quantiles(latencies, n=100)
    return {"req_per_s": rate, "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000,
            "cpu_s_per_1000": (cpu1 - cpu0) / (n / 1000), "peak_rss_mib": rss / 1024}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results = harness.runs(
        args.runs, lambda bootstrap, tmp: one_run(bootstrap, tmp, args.requests,
                                                  args.connections), "telex-bench-")
    harness.print_summary(f"webhook receiver, {args.requests} requests over "
                          f"{args.connections} keep-alive connections", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
