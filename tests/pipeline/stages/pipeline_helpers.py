"""The whole pipeline as real processes, and an analyst's independent view of its output."""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import fastavro
from confluent_kafka import Consumer, TopicPartition

from pipeline.settings import Settings
from pipeline.stages.status_decision import RANK
from tests.fixtures.telex import REPO, Worker

ALL_STAGES = ("ingest", "ratelimit", "scheduler", "dispatch", "reconcile", "status")
FINAL = ("delivered", "undelivered", "failed", "read", "canceled")
_STATUS_SCHEMA = fastavro.parse_schema(
    json.loads((REPO / "schemas" / "delivery_status.avsc").read_text()))


def start_pipeline(settings: Settings, worker: Callable[[str, Settings], Worker],
                   stages: Iterable[str] = ALL_STAGES) -> dict[str, Worker]:
    return {s: worker(s, settings) for s in stages}


def carriers_file(tmp_path: Path, connectors: list[dict[str, Any]],
                  routes: list[dict[str, Any]]) -> str:
    path = tmp_path / f"carriers-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps({"connectors": connectors, "routes": routes}))
    return str(path)


def smpp(name: str, port: int, window: int = 20) -> dict[str, Any]:
    return {"name": name, "type": "smpp", "host": "127.0.0.1", "port": port,
            "system_id": "telex", "password": "secret", "window": window,
            "response_timeout_s": 5}


def independent_history(settings: Settings, topic: str = "delivery-status"
                        ) -> dict[str, list[dict[str, Any]]]:
    """Every DeliveryStatus on ``topic`` per message, in partition order, read the way an
    analyst would: plain confluent-kafka and fastavro with the schema file, none of Telex's
    code. The first two bytes are the Avro single-object marker, the next eight the schema
    fingerprint."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers,
                         "group.id": f"analyst-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "isolation.level": "read_committed"})
    name = settings.topic(topic)
    try:
        parts = consumer.list_topics(name, timeout=10).topics[name].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)[1]
                for p in parts}
        consumer.assign([TopicPartition(name, p, 0) for p in parts])
        out: dict[str, list[dict[str, Any]]] = {}
        done = {p for p, end in ends.items() if end == 0}
        deadline = time.monotonic() + 60
        while len(done) < len(ends):
            if time.monotonic() > deadline:
                raise AssertionError(f"{name}: could not read to the end in 60 s")
            for m in consumer.consume(500, 0.5):
                if m.error() is not None:
                    raise AssertionError(str(m.error()))
                value = m.value()
                assert value[:2] == b"\xc3\x01", "not Avro single-object encoding"
                record = fastavro.schemaless_reader(io.BytesIO(value[10:]), _STATUS_SCHEMA,
                                                    _STATUS_SCHEMA)
                assert isinstance(record, dict)
                assert m.key().decode() == record["message_id"]
                out.setdefault(record["message_id"], []).append(record)
                if m.offset() + 1 >= ends[m.partition()]:
                    done.add(m.partition())
        return out
    finally:
        consumer.close()


def applied(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events a sequence-respecting consumer applies: redeliveries (a sequence already
    seen, after a stage restart) are dropped."""
    kept: list[dict[str, Any]] = []
    for e in events:
        if not kept or e["sequence"] > kept[-1]["sequence"]:
            kept.append(e)
    return kept


def regressions(events: list[dict[str, Any]]) -> list[str]:
    """Ways a message's history breaks the model: a gap or disorder in its sequence numbers,
    or an effective status lower than the one before."""
    problems = []
    seqs = [e["sequence"] for e in events]
    if seqs != list(range(1, len(seqs) + 1)):
        problems.append(f"sequences {seqs}")
    ranks = [RANK[e["effective_status"]] for e in events]
    if ranks != sorted(ranks):
        problems.append("status moved back: " + " → ".join(
            f"{e['status']}/{e['effective_status']}" for e in events))
    return problems


def wait_final(settings: Settings, ids: set[str], workers: dict[str, Worker],
               timeout: float = 180) -> dict[str, list[dict[str, Any]]]:
    """Poll the history until every message in ``ids`` has a final effective status."""
    deadline = time.monotonic() + timeout
    while True:
        history = independent_history(settings)
        pending = {i for i in ids
                   if not history.get(i) or applied(history[i])[-1]["effective_status"]
                   not in FINAL}
        if not pending:
            return history
        for w in workers.values():
            w.assert_alive()
        if time.monotonic() > deadline:
            sample = {i: [(e["status"], e["source"]) for e in history.get(i, [])]
                      for i in sorted(pending)[:3]}
            raise AssertionError(f"{len(pending)} of {len(ids)} messages not final; e.g. "
                                 f"{sample}")
        time.sleep(1)  # pacing between reads of the topic; the condition above decides
