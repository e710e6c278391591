"""Rate-limiter precision: 1,000 senders at 1 segment/s plus 10 at 100/s, through ingest, the
rate-limit stage and the delay-tier scheduler on a local broker.

    python -m bench.ratelimit [--seconds 10] [--runs 3]

Each sender gets ``seconds`` worth of its capacity at once (a backlog). Prints, per run and as
medians with spreads: 1 s windows above rate + burst (violations), capacity used by the
backlogged buckets, and how late releases were against the slot the limiter booked for them
(p50/p99/max, from ratelimit-deferrals' expected release time vs dispatch-ready's timestamp).
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

from bench import harness
from bench.harness import REPO, worker_env
from pipeline.codec import AvroCodec
from pipeline.ops.topic_reader import read_from_start
from pipeline.sdk import OutboundMessage, TelexProducer
from pipeline.settings import Settings, load_settings
from pipeline.topics import admin_client, apply_topics, catalogue

SLOW, FAST = 1000, 10


def _senders() -> list[dict[str, object]]:
    slow = [{"address": f"+1415{500 + i // 10_000:03d}{i % 10_000:04d}", "channel": "sms",
             "kind": "long_code"} for i in range(SLOW)]
    fast = [{"address": f"5560{i}", "channel": "sms", "kind": "short_code"} for i in range(FAST)]
    return slow + fast


def _read(settings: Settings, topic: str) -> list[tuple[bytes, bytes, int]]:
    return [(m.key(), m.value(), m.timestamp()[1])
            for m in read_from_start(settings, settings.topic(topic), timeout=None)]


def one_run(bootstrap: str, seconds: int, tmp: Path) -> dict[str, float]:
    senders_file = tmp / "senders.json"
    senders_file.write_text(json.dumps(_senders()))
    settings = load_settings(kafka_bootstrap_servers=bootstrap,
                             topic_prefix=f"rlb{uuid.uuid4().hex[:8]}.",
                             state_dir=str(tmp / uuid.uuid4().hex),
                             senders_file=str(senders_file))
    apply_topics(admin_client(settings), catalogue(settings))
    env = {**worker_env(settings), "TELEX_SENDERS_FILE": str(senders_file)}
    procs = [subprocess.Popen([sys.executable, "-m", "pipeline.cli.main", "worker", s],
                              cwd=REPO, env=env) for s in ("ingest", "ratelimit", "scheduler")]
    try:
        messages = [OutboundMessage(account_id=f"acct-{n % 20}", channel="sms",
                                    sender=str(s["address"]), recipient=f"+1415201{n % 10_000:04d}",
                                    body="bench", idempotency_key=f"{s['address']}-{k}")
                    for n, s in enumerate(_senders())
                    for k in range(seconds * (1 if s["kind"] == "long_code" else 100))]
        with TelexProducer(settings) as producer:
            producer.send_batch(messages)
        want = len(messages)
        deadline = time.monotonic() + seconds * 6 + 120
        while time.monotonic() < deadline:
            ready = _read(settings, "dispatch-ready")
            if len({k for k, _, _ in ready}) >= want:
                break
            time.sleep(1)  # pacing between reads; the condition above decides
        else:
            raise SystemExit(f"only {len(ready)}/{want} released in time")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
    return _score(settings, ready)


def _score(settings: Settings, ready: list[tuple[bytes, bytes, int]]) -> dict[str, float]:
    codec = AvroCodec()
    first: dict[bytes, tuple[int, str]] = {}
    for key, value, ts in ready:
        first.setdefault(key, (ts, codec.decode(value)["sender"]))
    by_sender: dict[str, list[int]] = defaultdict(list)
    for ts, sender in first.values():
        by_sender[sender].append(ts)
    expected, queued = {}, set()
    for key, value, _ in _read(settings, "ratelimit-deferrals"):
        d = codec.decode(value)
        if d["bucket"].startswith("sender:"):
            expected[key] = d["expected_release_ms"]
            if d["position"] > 0:  # it really waited behind others
                queued.add(key)
    violations, ideal, actual = 0, 0.0, 0.0
    for sender, times in by_sender.items():
        times.sort()
        rate = 1.0 if sender.startswith("+") else 100.0
        j = 0
        for i, t in enumerate(times):
            while times[j] <= t - 1000:
                j += 1
            violations += (i - j + 1) > rate + rate  # burst equals rate by default
    # Capacity used while a bucket had a queue: a release the sender bucket had deferred
    # should follow the previous release of its bucket by exactly one interval.
    release_of = {k: ts for k, (ts, _) in first.items()}
    sender_of = {k: s for k, (_, s) in first.items()}
    for sender, times in by_sender.items():
        interval = 1000.0 if sender.startswith("+") else 10.0
        deferred = sorted(release_of[k] for k in queued if sender_of.get(k) == sender)
        previous = {b: a for a, b in itertools.pairwise(times)}
        for t in deferred:
            if t in previous:
                ideal += interval
                actual += t - previous[t]
    late = sorted(first[k][0] - e for k, e in expected.items() if k in first)
    pick = lambda q: float(late[min(len(late) - 1, int(q * len(late)))]) if late else 0.0  # noqa: E731
    return {"messages": float(len(first)), "violations": float(violations),
            "capacity_used_while_queued": ideal / actual if actual else 0.0,
            "late_p50_ms": pick(0.5), "late_p99_ms": pick(0.99),
            "late_max_ms": float(late[-1]) if late else 0.0,
            "early_releases": float(sum(x < 0 for x in late))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = harness.runs(args.runs,
                           lambda bootstrap, tmp: one_run(bootstrap, args.seconds, tmp),
                           "telex-rlbench-")
    harness.print_summary(f"rate limiter: {SLOW} senders at 1/s + {FAST} at 100/s, "
                          f"{args.seconds} s backlog each", results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
