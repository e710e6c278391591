"""An analyst's independent view of ``delivery-status``: what tests and the fault suite check.

Read the way someone outside Telex would read it: plain confluent-kafka and fastavro with the
schema file, none of Telex's codec or stage code, so a bug there cannot hide itself from the
check. The first two bytes of a value are the Avro single-object marker, the next eight the
schema fingerprint, the rest the body.

:func:`applied` and :func:`regressions` state the consumer contract of the README ("keep the
highest sequence applied per message") and the status model's monotonicity as checks.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from typing import Any

import fastavro
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from pipeline.codec import SCHEMA_DIR
from pipeline.records import RANK
from pipeline.settings import Settings

__all__ = ["FINAL", "HistoryReader", "applied", "independent_history", "regressions"]

FINAL = ("delivered", "undelivered", "failed", "read", "canceled")
_SCHEMA_FILE = SCHEMA_DIR / "delivery_status.avsc"
_LEADERSHIP = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
               KafkaError.UNKNOWN_TOPIC_OR_PART}
_MARKER = b"\xc3\x01"
_HEADER_LEN = 10  # marker + 8-byte fingerprint


class HistoryReader:
    """Every DeliveryStatus on ``topic`` per message, in partition order, read incrementally.

    :meth:`catch_up` reads up to the end offsets as they are when it is called, so a poller
    (the fault suite waiting for final statuses) pays only for what is new since its last call
    instead of re-reading the whole topic each time.
    """

    def __init__(self, settings: Settings, topic: str = "delivery-status") -> None:
        self._schema = fastavro.parse_schema(json.loads(_SCHEMA_FILE.read_text()))
        self._name = settings.topic(topic)
        self._consumer = Consumer({
            **settings.kafka_config(), "group.id": f"analyst-{uuid.uuid4().hex}",
            "enable.auto.commit": False, "isolation.level": "read_committed",
            "enable.partition.eof": True,
        })
        self._positions: dict[int, int] = {}
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.count = 0

    def catch_up(self, timeout: float = 60.0) -> dict[str, list[dict[str, Any]]]:
        """Read everything up to the current end of every partition; returns :attr:`events`."""
        deadline = time.monotonic() + timeout
        if not self._positions:
            parts = self._consumer.list_topics(self._name, timeout=10).topics[self._name]
            self._positions = dict.fromkeys(parts.partitions, 0)
            self._consumer.assign([TopicPartition(self._name, p, 0) for p in self._positions])
        ends = {p: self._end(p, deadline) for p in self._positions}
        while any(self._positions[p] < end for p, end in ends.items()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self._name}: could not read to the end in {timeout} s")
            for m in self._consumer.consume(1000, 0.5):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        # Only control records were left: nothing more to read for now.
                        ends[m.partition()] = min(ends[m.partition()], m.offset())
                        continue
                    raise RuntimeError(f"{self._name}: {err}")
                self._positions[m.partition()] = m.offset() + 1
                record = self._decode(m.value())
                if m.key().decode() != record["message_id"]:
                    raise ValueError(f"{self._name}@{m.partition()}/{m.offset()}: key "
                                     f"{m.key()!r} is not the message id")
                self.events.setdefault(record["message_id"], []).append(record)
                self.count += 1
        return self.events

    def _end(self, partition: int, deadline: float) -> int:
        """High watermark; retried while leadership moves (a new topic, a broker restart)."""
        while True:
            try:
                return int(self._consumer.get_watermark_offsets(
                    TopicPartition(self._name, partition), timeout=10)[1])
            except KafkaException as exc:
                err = exc.args[0]
                if not (err.retriable() or err.code() in _LEADERSHIP) or (
                        time.monotonic() > deadline):
                    raise
            time.sleep(0.2)  # leader election in progress; bounded by the deadline

    def _decode(self, value: bytes) -> dict[str, Any]:
        if value[:2] != _MARKER:
            raise ValueError(f"{self._name}: a value is not in Avro single-object encoding")
        record = fastavro.schemaless_reader(io.BytesIO(value[_HEADER_LEN:]), self._schema,
                                            self._schema)
        if not isinstance(record, dict):
            raise ValueError(f"{self._name}: a value is not a record")
        return record

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> HistoryReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def independent_history(settings: Settings, topic: str = "delivery-status",
                        timeout: float = 60.0) -> dict[str, list[dict[str, Any]]]:
    """Every DeliveryStatus on ``topic`` per message, in partition order, read once to the
    end (see :class:`HistoryReader`)."""
    with HistoryReader(settings, topic) as reader:
        return reader.catch_up(timeout)


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
