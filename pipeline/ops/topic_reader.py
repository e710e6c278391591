"""Read topics directly (no group): from the beginning, the one loop behind the demo's summary,
the dispatch journal's load, benchmarks and test assertions; or bounded offset ranges, for the
SRE tools (``telex dlq``, ``telex trace``)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from pipeline.settings import Settings


def read_from_start(
    settings: Settings,
    topic: str,
    *,
    partitions: Iterable[int] | None = None,
    until: Callable[[list[Message]], bool] | None = None,
    timeout: float | None = 60.0,
    isolation: str = "read_committed",
) -> list[Message]:
    """Records of ``topic`` (a full name) from offset 0 until ``until(records)`` holds or, by
    default, every partition's end is reached; all partitions unless ``partitions`` is given.

    Assigned directly (no group join, nothing committed). Raises TimeoutError when the
    condition is not met within ``timeout`` seconds (None: no deadline).
    """
    consumer = Consumer({
        **settings.kafka_config(), "group.id": "reader-" + uuid.uuid4().hex,
        "enable.auto.commit": False, "isolation.level": isolation,
        "enable.partition.eof": True,
    })
    try:
        if partitions is None:
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        wanted = list(partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in wanted])
        records: list[Message] = []
        at_end: set[int] = set()
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            if until is not None and until(records):
                return records
            if until is None and len(at_end) == len(wanted):
                return records
            for msg in consumer.consume(1000, 0.2):
                err = msg.error()
                if err is None:
                    records.append(msg)
                    at_end.discard(msg.partition())
                elif err.code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
        raise TimeoutError(
            f"{topic}: condition not met within {timeout}s ({len(records)} records read)")
    finally:
        consumer.close()


def read_ranges(
    settings: Settings,
    ranges: Mapping[tuple[str, int], tuple[int, int]],
    *,
    timeout: float = 60.0,
    isolation: str = "read_committed",
) -> list[Message]:
    """Records of each (topic, partition) from ``start`` up to (not including) ``end``: a
    bounded read, e.g. a dead-letter topic between a cursor and the end offset seen when a
    command started, so records written meanwhile do not keep it reading.

    Assigned directly, nothing committed. Raises TimeoutError after ``timeout`` seconds.
    """
    wanted = {tp: (start, end) for tp, (start, end) in ranges.items() if start < end}
    if not wanted:
        return []
    consumer = Consumer({
        **settings.kafka_config(), "group.id": "reader-" + uuid.uuid4().hex,
        "enable.auto.commit": False, "isolation.level": isolation,
        "enable.partition.eof": True,
    })
    try:
        consumer.assign([TopicPartition(t, p, start) for (t, p), (start, _) in wanted.items()])
        pending = set(wanted)
        records: list[Message] = []
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"partitions {sorted(pending)} not read to their end within "
                                   f"{timeout}s ({len(records)} records read)")
            for msg in consumer.consume(1000, 0.2):
                tp = (msg.topic(), msg.partition())
                if tp not in pending:
                    continue
                err = msg.error()
                if err is not None and err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(tp)  # at the end already: only transaction markers were left
                    continue
                if err is not None:
                    raise KafkaException(err)
                if msg.offset() < wanted[tp][1]:
                    records.append(msg)
                if msg.offset() >= wanted[tp][1] - 1:
                    pending.discard(tp)
                    # Stop fetching it; pause() keeps the other partitions' positions.
                    consumer.pause([TopicPartition(*tp)])
        return records
    finally:
        consumer.close()
