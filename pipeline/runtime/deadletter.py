"""Dead-lettering: a record a stage cannot process is parked with its provenance, never lost.

The dead-letter record keeps the original key and value bytes unchanged (so a replay is a plain
re-publish) and adds provenance headers. Headers already on the record are kept, so a record
that fails twice still says where it first came from and when it first failed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from pipeline.headers import (
    H_DLQ,
    H_ERROR_CLASS,
    H_ERROR_MESSAGE,
    H_FAILURE_COUNT,
    H_FIRST_FAILURE,
    H_MESSAGE_ID,
    H_ORIGINAL_OFFSET,
    H_ORIGINAL_PARTITION,
    H_ORIGINAL_TIMESTAMP,
    H_ORIGINAL_TOPIC,
    H_STAGE,
)
from pipeline.metrics import DEAD_LETTERS


def dead_letter_topic(stage: str) -> str:
    """Catalogue short name of ``stage``'s dead-letter topic: one per stage, named for it."""
    return f"dlq-{stage}"


_MAX_ERROR_MESSAGE = 1000

_log = structlog.get_logger("telex.deadletter")

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Provenance:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int


def dead_letter_headers(
    original: Sequence[tuple[str, bytes | None]] | None,
    provenance: Provenance,
    stage: str,
    error: BaseException,
    now_ms: int,
    message_id: str | None = None,
) -> Headers:
    """Headers of the dead-letter copy of a record that failed in ``stage``."""
    kept = [(k, v or b"") for k, v in (original or [])]
    previous = {k: v for k, v in kept if k.startswith(H_DLQ)}
    first_failure = previous.get(H_FIRST_FAILURE, str(now_ms).encode())
    count = int(previous.get(H_FAILURE_COUNT, b"0") or 0) + 1
    # The first failure's origin is the record's true provenance; later hops keep it.
    origin = {
        H_ORIGINAL_TOPIC: previous.get(H_ORIGINAL_TOPIC, provenance.topic.encode()),
        H_ORIGINAL_PARTITION: previous.get(
            H_ORIGINAL_PARTITION, str(provenance.partition).encode()),
        H_ORIGINAL_OFFSET: previous.get(H_ORIGINAL_OFFSET, str(provenance.offset).encode()),
        H_ORIGINAL_TIMESTAMP: previous.get(
            H_ORIGINAL_TIMESTAMP, str(provenance.timestamp_ms).encode()),
    }
    message = f"{error}"[:_MAX_ERROR_MESSAGE]
    fresh = {
        **origin,
        H_STAGE: stage.encode(),
        H_ERROR_CLASS: type(error).__name__.encode(),
        H_ERROR_MESSAGE: message.encode(),
        H_FIRST_FAILURE: first_failure,
        H_FAILURE_COUNT: str(count).encode(),
    }
    if message_id:
        fresh[H_MESSAGE_ID] = message_id.encode()
    return [(k, v) for k, v in kept if not k.startswith(H_DLQ)] + list(fresh.items())


class ConsumedRecord(Protocol):
    """What dead-lettering needs of a consumed record (a confluent-kafka Message)."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def timestamp(self) -> tuple[int, int]: ...
    def headers(self) -> list[tuple[str, bytes]] | None: ...


def headers_of(msg: ConsumedRecord, stage: str, error: BaseException, now_ms: int,
               message_id: str | None = None) -> Headers:
    """Dead-letter headers for a record a plain-consumer stage could not process."""
    prov = Provenance(msg.topic() or "", msg.partition() or 0, msg.offset() or 0,
                      msg.timestamp()[1])
    return dead_letter_headers(msg.headers(), prov, stage, error, now_ms, message_id)


def counted(stage: str, error: BaseException, topic: str | None, partition: int | None,
            offset: int | None) -> None:
    """Count and log one dead letter (every stage's dead letters show in one metric)."""
    DEAD_LETTERS.labels(stage, type(error).__name__).inc()
    _log.warning("dead_lettered", stage=stage, topic=topic, partition=partition, offset=offset,
                 error_class=type(error).__name__, error=str(error))


def header_dict(headers: Iterable[tuple[str, bytes | None]] | None) -> dict[str, str]:
    """Headers as text, for display and filtering (last value wins)."""
    return {k: (v or b"").decode("utf-8", "replace") for k, v in (headers or [])}
