"""Broker calls repeated while they fail with a retriable error, up to a deadline.

A just-created topic can answer NOT_LEADER_FOR_PARTITION for a moment after its metadata shows
a leader; a group coordinator can still be loading. librdkafka retries produce and fetch by
itself, but not admin and one-shot calls (watermarks, committed offsets, list offsets)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import structlog
from confluent_kafka import KafkaError, KafkaException

__all__ = ["RETRIABLE_CODES", "retriable", "retrying"]

T = TypeVar("T")

_log = structlog.get_logger("telex.broker")

RETRIABLE_CODES = frozenset({
    KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._TIMED_OUT, KafkaError.REQUEST_TIMED_OUT,
})


def retriable(exc: KafkaException) -> bool:
    """Whether the broker may answer differently if asked again soon."""
    err = exc.args[0] if exc.args else None
    return isinstance(err, KafkaError) and (err.retriable() or err.code() in RETRIABLE_CODES)


def retrying(call: Callable[[], T], deadline_s: float = 60.0) -> T:
    """``call()``, repeated while it fails with a retriable broker error, up to a deadline;
    then the error is raised (a worker stops and its supervisor restarts it; a command
    reports it)."""
    deadline = time.monotonic() + deadline_s
    delay = 0.05
    while True:
        try:
            return call()
        except KafkaException as exc:
            if not retriable(exc) or time.monotonic() + delay > deadline:
                raise
            _log.info("broker_call_retried", error=str(exc))
            time.sleep(delay)  # backoff between attempts; bounded by the deadline above
            delay = min(1.0, delay * 2)
