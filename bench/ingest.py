"""Ingest stage throughput and latency, against a plain consume→produce baseline in the same run.

    python -m bench.ingest [--messages 50000] [--runs 3]

Each run: fresh topics; N unique valid requests preloaded into message-requested; then the
stage worker (a real process) drains them while a reader timestamps every output as it arrives.
Throughput = outputs between the first and last arrival / that interval (start-up excluded).
Prints medians and spreads over runs, CPU seconds per 1,000 messages and peak RSS of the stage
process. Latency under an open-loop load belongs to the whole-pipeline benchmark (issue 7).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from bench import harness
from bench.harness import REPO, proc_stats, worker_env
from pipeline.sdk import OutboundMessage, TelexProducer
from pipeline.settings import Settings, load_settings
from pipeline.topics import TopicSpec, admin_client, apply_topics, catalogue


def _requests(n: int, tag: str) -> list[OutboundMessage]:
    """Unique valid requests, each to its own number (no cache can flatter the figures)."""
    return [OutboundMessage(account_id=f"acct-{i % 50}", channel="sms", sender="+14155550100",
                            recipient=f"+1415{200 + i // 10_000 % 800:03d}{i % 10_000:04d}",
                            body=f"Your code is {i:06d}", idempotency_key=f"{tag}-{i}")
            for i in range(n)]


class _Arrivals:
    """Reads a topic from the beginning and timestamps each record as it arrives.

    Assigned (no group join) and connected before the process under test starts, so a fast
    process cannot finish before the reader sees its first record.
    """

    def __init__(self, settings: Settings, topic: str) -> None:
        self._consumer = Consumer({
            **settings.kafka_config(), "group.id": "bench-" + uuid.uuid4().hex,
            "enable.auto.commit": False, "fetch.wait.max.ms": 5,
            "isolation.level": "read_committed",
        })
        parts = self._consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        self._consumer.consume(1, 0.5)
        self._topic = topic

    def wait_for(self, expected: int, timeout: float) -> list[float]:
        arrivals: list[float] = []
        deadline = time.monotonic() + timeout
        while len(arrivals) < expected and time.monotonic() < deadline:
            for m in self._consumer.consume(1000, 0.1):
                if m.error() is None:
                    arrivals.append(time.time())
        self._consumer.close()
        if len(arrivals) < expected:
            raise SystemExit(f"{self._topic}: {len(arrivals)}/{expected} records in {timeout}s")
        return arrivals


def _rate(arrivals: list[float]) -> float:
    span = arrivals[-1] - arrivals[0]
    return (len(arrivals) - 1) / span if span > 0 else float("inf")


def _measure(cmd: list[str], settings: Settings, out_topic: str, expected: int
             ) -> dict[str, float]:
    reader = _Arrivals(settings, out_topic)
    proc = subprocess.Popen(cmd, cwd=REPO, env=worker_env(settings))
    try:
        arrivals = reader.wait_for(expected, timeout=600)
        cpu, rss = proc_stats(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    return {"msg_per_s": _rate(arrivals), "cpu_s_per_1000": cpu / (expected / 1000),
            "peak_rss_mib": rss / 1024}


def _prepare(bootstrap: str, n: int, tmp: Path) -> Settings:
    """Fresh topics (own prefix) preloaded with ``n`` unique valid requests."""
    settings = load_settings(kafka_bootstrap_servers=bootstrap,
                             topic_prefix=f"bench{uuid.uuid4().hex[:8]}.",
                             state_dir=str(tmp / uuid.uuid4().hex))
    extra = [TopicSpec(settings.topic(f"baseline-{x}"), "stream", settings.partitions, 1,
                       {"cleanup.policy": "delete"}) for x in ("a", "b")]
    apply_topics(admin_client(settings), [*catalogue(settings), *extra])
    with TelexProducer(settings) as producer:
        producer.send_batch(_requests(n, settings.topic_prefix))
    return settings


def one_run(bootstrap: str, n: int, tmp: Path) -> dict[str, dict[str, float]]:
    settings = _prepare(bootstrap, n, tmp)
    worker = [sys.executable, "-m", "pipeline.cli.main", "worker", "ingest", "--no-supervise"]
    baseline = _measure(
        [sys.executable, "-m", "bench.passthrough", settings.topic("message-requested"),
         settings.topic("baseline"), settings.topic("baseline-a"), settings.topic("baseline-b")],
        settings, settings.topic("baseline-a"), n)
    ingest = _measure(worker, settings, settings.topic("message-accepted"), n)
    return {"baseline": baseline, "ingest": ingest}


def _summary(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{med:10.3f}  (min {min(values):.3f}, max {max(values):.3f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write results to this file")
    args = parser.parse_args()
    runs = harness.runs(args.runs, lambda bootstrap, tmp: one_run(bootstrap, args.messages, tmp),
                        "telex-bench-")
    print(f"\ningest stage vs plain confluent-kafka passthrough, {args.messages} messages, "
          f"{args.runs} runs, 6 partitions, one process each (median, spread)")
    for metric in ("msg_per_s", "cpu_s_per_1000", "peak_rss_mib"):
        for who in ("baseline", "ingest"):
            print(f"  {who:9} {metric:15} {_summary([r[who][metric] for r in runs])}")
    ratios = {who: [r[who]["msg_per_s"] / r["baseline"]["msg_per_s"] for r in runs]
              for who in ("ingest",)}
    for who, values in ratios.items():
        print(f"  ratio {who}/baseline msg/s: {statistics.median(values):.3f} "
              f"(min {min(values):.3f}, max {max(values):.3f})")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "ratios": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
