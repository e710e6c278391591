"""Offsets the SRE tools read and move: log start and end per partition, and cursors kept as
a consumer group's committed offsets (a group nothing consumes with, so committing through the
admin API never races a member). Every call has a deadline; failures are BrokerError."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from pipeline.broker_retry import retriable
from pipeline.errors import BrokerError

TP = tuple[str, int]


def log_offsets(client: AdminClient, tps: Iterable[TP], timeout: float
                ) -> dict[TP, tuple[int, int]]:
    """(oldest retained offset, end offset) of each partition."""
    wanted = [TopicPartition(t, p) for t, p in tps]
    if not wanted:
        return {}
    out: dict[TP, list[int]] = {(tp.topic, tp.partition): [0, 0] for tp in wanted}
    deadline = time.monotonic() + timeout
    for index, spec in ((0, OffsetSpec.earliest()), (1, OffsetSpec.latest())):
        pending = wanted
        delay = 0.05
        while pending:
            futures = client.list_offsets({tp: spec for tp in pending}, request_timeout=timeout)
            again = []
            for tp, fut in futures.items():
                try:
                    out[(tp.topic, tp.partition)][index] = _result(fut, timeout).offset
                except _Retriable:
                    # A just-created topic answers "not leader" for a moment after its
                    # metadata shows a leader: ask again, within the deadline.
                    if time.monotonic() + delay > deadline:
                        raise
                    again.append(tp)
            if again:
                time.sleep(delay)  # backoff before asking again; bounded by the deadline
                delay = min(1.0, delay * 2)
            pending = again
    return {tp: (start, end) for tp, (start, end) in out.items()}


def committed(client: AdminClient, group: str, tps: Iterable[TP], timeout: float
              ) -> dict[TP, int | None]:
    """The group's committed offset per partition (None where it has committed nothing)."""
    wanted = [TopicPartition(t, p) for t, p in tps]
    if not wanted:
        return {}
    result = client.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, wanted)], request_timeout=timeout)
    out: dict[TP, int | None] = {}
    for fut in result.values():
        for tp in _result(fut, timeout).topic_partitions:
            out[(tp.topic, tp.partition)] = tp.offset if tp.offset >= 0 else None
    return out


def commit(client: AdminClient, group: str, offsets: Mapping[TP, int], timeout: float) -> None:
    """Set the group's committed offsets (the cursor moves; nothing is consumed)."""
    if not offsets:
        return
    request = [ConsumerGroupTopicPartitions(
        group, [TopicPartition(t, p, o) for (t, p), o in offsets.items()])]
    for fut in client.alter_consumer_group_offsets(request, request_timeout=timeout).values():
        for tp in _result(fut, timeout).topic_partitions:
            if tp.error is not None:
                raise BrokerError(f"cannot move cursor {group} on {tp.topic}[{tp.partition}]: "
                                  f"{tp.error.str()}")


def _result(fut: Future[Any], timeout: float) -> Any:
    try:
        return fut.result(timeout)
    except TimeoutError:
        raise BrokerError(f"broker did not answer within {timeout:g} s") from None
    except KafkaException as exc:
        error = BrokerError(f"broker request failed: {exc.args[0].str() if exc.args else exc}")
        raise (_Retriable(str(error)) if retriable(exc) else error) from None


class _Retriable(BrokerError):
    """A BrokerError the broker may not repeat if asked again soon."""
