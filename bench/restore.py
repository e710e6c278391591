"""Store restore speed: changelog records replayed per second into a memory and a disk store,
against a plain consume of the same partition measured in the same run.

    python -m bench.restore [--keys 500000] [--runs 3]

Each run: a fresh changelog partition holding ``--keys`` entries (the shape the status stage
writes: a few fields per key), then (1) a plain consumer reads it to its end (baseline), (2) the
runtime's restore replays it into a MemoryStore, (3) into a fresh DiskStore (RocksDB). Prints
medians and spreads of records per second; a restore happens when a worker is assigned a
partition it has no (current) local copy of, e.g. after a SIGKILL moved it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from bench import harness
from pipeline.runtime.runner import restore
from pipeline.runtime.store import DiskStore, MemoryStore, Store, encode_entry
from pipeline.settings import Settings, load_settings
from pipeline.topics import TopicSpec, admin_client, apply_topics


def _fill(settings: Settings, topic: str, keys: int) -> None:
    apply_topics(admin_client(settings), [TopicSpec(topic, "compacted", 1, 1,
                                                    {"cleanup.policy": "compact"})])
    producer = Producer({**settings.runtime_producer_config(), "linger.ms": 50})
    value = encode_entry({"status": {"status": "sent", "sequence": 3, "attempt": 1,
                                     "connector": "smsc-a", "carrier_message_id": "abc123"}},
                         2**40)
    headers = [("telex.changelog.source_offset", b"1")]
    for i in range(keys):
        while True:
            try:
                producer.produce(topic, value, f"TX{i:032x}", partition=0, headers=headers)
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(60) == 0


def _consumer(settings: Settings) -> Consumer:
    return Consumer({**settings.kafka_config(), "group.id": "bench-" + uuid.uuid4().hex,
                     "enable.auto.commit": False, "fetch.wait.max.ms": 10})


def _plain(settings: Settings, topic: str, keys: int) -> float:
    consumer = _consumer(settings)
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    started, got = time.perf_counter(), 0
    while got < keys:
        got += len(consumer.consume(min(10_000, keys - got), 0.5))
    seconds = time.perf_counter() - started
    consumer.close()
    return keys / seconds


def _restore(settings: Settings, topic: str, store: Store) -> float:
    consumer = _consumer(settings)
    started = time.perf_counter()
    applied, _ = restore(store, consumer, TopicPartition(topic, 0), committed=2**62)
    seconds = time.perf_counter() - started
    consumer.close()
    store.close()
    return applied / seconds


def one_run(bootstrap: str, tmp: Path, keys: int) -> dict[str, float]:
    settings = load_settings(kafka_bootstrap_servers=bootstrap)
    topic = f"bench-restore-{uuid.uuid4().hex[:8]}"
    _fill(settings, topic, keys)
    return {
        "plain consume": _plain(settings, topic, keys),
        "memory store": _restore(settings, topic, MemoryStore("s", 0, None)),
        "disk store": _restore(settings, topic, DiskStore("s", 0, None, tmp / uuid.uuid4().hex)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=500_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = harness.runs(args.runs, lambda b, _t: one_run(b, Path(tmp), args.keys),
                            "telex-bench-restore-")
    print(f"\nrestore of {args.keys} changelog records, {args.runs} runs: records/s, "
          "median (min, max)")
    for who in runs[0]:
        values = [r[who] for r in runs]
        print(f"  {who:14} {statistics.median(values):12,.0f}  "
              f"({min(values):,.0f}, {max(values):,.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
