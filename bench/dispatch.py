"""Dispatch throughput and submit latency per connector, against the raw connector baseline.

    python -m bench.dispatch [--messages 20000] [--runs 3] [--window 50]

Each run: an SMSC simulator process; ``--messages`` MessageAccepted records preloaded into
``dispatch-ready`` (so only dispatch is measured); a dispatch worker process drains them.
Throughput = SUBMITTED journal entries between the first and the last / that interval; submit
latency = carrier answer (the 'sent' status time) minus the ATTEMPTING entry's time, so it
includes journaling. Baseline in the same run: the SMPP client alone, the same window, through
the same kind of simulator (``connectors.simulators.bench_smpp``). Medians and spreads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import Message

from bench import harness
from bench.harness import REPO, worker_env
from connectors.simulators.bench_smpp import run as raw_smpp
from connectors.simulators.bench_smpp import smsc_process
from pipeline.codec import AvroCodec
from pipeline.settings import Settings, load_settings
from pipeline.topics import admin_client, apply_topics, catalogue
from tests.fixtures.samples import sample
from tests.fixtures.telex import produce, read_all


def _preload(settings: Settings, n: int) -> None:
    codec = AvroCodec()
    far = int(time.time() * 1000) + 3_600_000
    records = []
    for i in range(n):
        mid = f"TX{uuid.uuid4().hex}"
        records.append((mid, codec.encode("message_accepted", sample(
            "message_accepted", message_id=mid, sender="55501",
            recipient=f"+1415{206 + i // 10_000:03d}{i % 10_000:04d}", body=f"bench {i}",
            segments=1, encoding="GSM7", expires_at_ms=far, attempt=0))))
    produce(settings, "dispatch-ready", records)


def one_run(bootstrap: str, n: int, window: int, tmp: Path) -> dict[str, float]:
    with smsc_process(["--account", "telex:secret"]) as port:
        settings = load_settings(kafka_bootstrap_servers=bootstrap,
                                 topic_prefix=f"dsb{uuid.uuid4().hex[:8]}.",
                                 state_dir=str(tmp / uuid.uuid4().hex))
        carriers = tmp / f"{settings.topic_prefix}carriers.json"
        carriers.write_text(json.dumps({
            "connectors": [{"name": "smsc", "type": "smpp", "host": "127.0.0.1", "port": port,
                            "system_id": "telex", "password": "secret", "window": window}],
            "routes": [{"channel": "sms", "prefix": "", "connectors": ["smsc"]}]}))
        apply_topics(admin_client(settings), catalogue(settings))
        _preload(settings, n)
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli.main", "worker",
                                 "dispatch", "--no-supervise"], cwd=REPO,
                                env={**worker_env(settings), "TELEX_CARRIERS_FILE": str(carriers)})
        try:
            read_all(settings, "carrier-receipts", until=_submissions_reach(n), timeout=600)
        finally:
            proc.terminate()
            proc.wait(30)
        baseline, _ = asyncio.run(raw_smpp(port, window, min(n, 20_000), receipts=False))
    codec = AvroCodec()
    attempting, submitted = {}, []
    for m in read_all(settings, "dispatch-journal"):
        e = codec.decode(m.value())
        if e["state"] == "ATTEMPTING":
            attempting[e["message_id"]] = e["at_ms"]
        elif e["state"] == "SUBMITTED":
            submitted.append(e["at_ms"])
    latencies = sorted(
        codec.decode(m.value())["event_time_ms"] - attempting[m.key().decode()]
        for m in read_all(settings, "carrier-receipts")
        if codec.decode_with_name(m.value())[0] == "status_update")
    submitted.sort()
    rate = (len(submitted) - 1) / ((submitted[-1] - submitted[0]) / 1000)
    return {"dispatch_msg_per_s": rate, "baseline_smpp_msg_per_s": baseline,
            "ratio": rate / baseline,
            "submit_p50_ms": float(latencies[len(latencies) // 2]),
            "submit_p99_ms": float(latencies[int(len(latencies) * 0.99)])}


def _submissions_reach(n: int) -> Callable[[list[Message]], bool]:
    """carrier-receipts holds dispatch's submissions and the SMSC's receipts: count the
    former, incrementally (the reader calls this with the growing list)."""
    codec, counted = AvroCodec(), [0, 0]  # records looked at, submissions among them

    def until(records: list[Message]) -> bool:
        for m in records[counted[0]:]:
            counted[1] += codec.decode_with_name(m.value())[0] == "status_update"
        counted[0] = len(records)
        return counted[1] >= n

    return until


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--window", type=int, default=50)
    args = parser.parse_args()
    results = harness.runs(
        args.runs, lambda bootstrap, tmp: one_run(bootstrap, args.messages, args.window, tmp),
        "telex-dsbench-")
    harness.print_summary(f"dispatch over one SMPP bind (window {args.window}), "
                          f"{args.messages} messages", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
