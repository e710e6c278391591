"""Dead letters as operators see them (pure): parsing, filters, summaries, cursors, replay plans.

No Kafka here: :mod:`pipeline.ops.dlq` reads the records and offsets, feeds these functions and
writes what they decide. Times always arrive as arguments.

Cursors are committed offsets of consumer groups that nothing consumes with; a cursor only moves
forward, and only across a leading run of records the command acted on (:func:`cursor_after`):
a record a filter left out, or one whose replay was not acknowledged, stops it, so no dead
letter is ever passed over silently.

A replay keeps key, value and headers and adds ``telex.replay.*`` headers. Stages keep a
record's other headers when they dead-letter it, so a replayed record that fails again comes
back carrying ``telex.replay.count``: :func:`plan_replay` then parks it in ``dlq-parked``
instead of replaying it a second time (no replay loops). Parked records are replayed only when
``dlq-parked`` is named explicitly, a human decision.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pipeline.codec import AvroCodec
from pipeline.errors import CodecError
from pipeline.headers import (
    H_DLQ,
    H_ERROR_CLASS,
    H_ERROR_MESSAGE,
    H_FAILURE_COUNT,
    H_FIRST_FAILURE,
    H_MESSAGE_ID,
    H_ORIGINAL_OFFSET,
    H_ORIGINAL_PARTITION,
    H_ORIGINAL_TOPIC,
    H_PARKED,
    H_REPLAY,
    H_REPLAY_AT,
    H_REPLAY_BY,
    H_REPLAY_COUNT,
    H_REPLAY_FROM_OFFSET,
    H_REPLAY_FROM_PARTITION,
    H_REPLAY_FROM_TOPIC,
    H_STAGE,
)
from pipeline.observability import redact_value
from pipeline.ops.display import redact
from pipeline.runtime.deadletter import header_dict

# Journal states after which the carrier may already hold the message: a replay must not
# offer it to dispatch again. IN_DOUBT_RESOLVED included: "maybe sent" is not "not sent".
_SUBMITTED_STATES = frozenset({"SUBMITTED", "ATTEMPTING", "IN_DOUBT_RESOLVED"})

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record of a dead-letter topic, its provenance headers and its decoded value."""

    topic: str  # full topic name
    partition: int
    offset: int
    timestamp_ms: int  # when it was dead-lettered
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    meta: Mapping[str, str]  # headers as text, last value wins
    schema: str | None = None
    record: Mapping[str, Any] | None = None
    decode_error: str | None = None

    @classmethod
    def parse(cls, topic: str, partition: int, offset: int, timestamp_ms: int,
              key: bytes | None, value: bytes | None,
              headers: Iterable[tuple[str, bytes | None]] | None,
              codec: AvroCodec) -> DeadLetter:
        kept = tuple((k, v or b"") for k, v in (headers or []))
        schema, record, error = decode_value(codec, value)
        return cls(topic, partition, offset, timestamp_ms, key, value, kept, header_dict(kept),
                   schema, record, error)

    @property
    def stage(self) -> str:
        return self.meta.get(H_STAGE, "?")

    @property
    def error_class(self) -> str:
        return self.meta.get(H_ERROR_CLASS, "?")

    @property
    def error_message(self) -> str:
        return self.meta.get(H_ERROR_MESSAGE, "")

    @property
    def original_topic(self) -> str | None:
        return self.meta.get(H_ORIGINAL_TOPIC) or None

    @property
    def first_failure_ms(self) -> int | None:
        return _int(self.meta.get(H_FIRST_FAILURE))

    @property
    def failure_count(self) -> int:
        return _int(self.meta.get(H_FAILURE_COUNT)) or 0

    @property
    def replay_count(self) -> int:
        """How often this record was replayed before it came back (0: never)."""
        return _int(self.meta.get(H_REPLAY_COUNT)) or 0

    @property
    def message_id(self) -> str | None:
        """The dead-letter header, else the decoded value's message id."""
        if self.meta.get(H_MESSAGE_ID):
            return self.meta[H_MESSAGE_ID]
        found = (self.record or {}).get("message_id")
        return found if isinstance(found, str) and found else None

    @property
    def account_id(self) -> str | None:
        found = (self.record or {}).get("account_id")
        return found if isinstance(found, str) else None

    def provenance(self) -> dict[str, str]:
        """The ``telex.dlq.*`` and ``telex.replay.*`` headers, for display."""
        return {k: v for k, v in self.meta.items()
                if k.startswith((H_DLQ, H_REPLAY, H_PARKED))}


def decode_value(codec: AvroCodec, value: bytes | None
                 ) -> tuple[str | None, dict[str, Any] | None, str | None]:
    """(schema, record, None) for a payload the codec reads, else (None, None, why not)."""
    if value is None:
        return None, None, "tombstone (no value)"
    try:
        schema, record = codec.decode_with_name(value)
    except CodecError as exc:
        return None, None, f"{type(exc).__name__}: {exc}"
    return schema, record, None


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


# --- filters -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Filter:
    """Which dead letters a command acts on; unset fields match everything."""

    stage: str | None = None
    error: str | None = None  # error class, or a substring of the class or message
    account: str | None = None
    message_id: str | None = None
    since_ms: int | None = None  # dead-lettered at or after
    until_ms: int | None = None  # dead-lettered before

    def matches(self, dl: DeadLetter) -> bool:
        if self.stage is not None and dl.stage != self.stage:
            return False
        if self.error is not None:
            needle = self.error.lower()
            if needle not in dl.error_class.lower() and needle not in dl.error_message.lower():
                return False
        if self.account is not None and dl.account_id != self.account:
            return False
        if self.message_id is not None and dl.message_id != self.message_id:
            return False
        if self.since_ms is not None and dl.timestamp_ms < self.since_ms:
            return False
        return self.until_ms is None or dl.timestamp_ms < self.until_ms


_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_time(text: str, now_ms: int) -> int:
    """Epoch ms from '15m'/'2h'/'1d' (that long ago), epoch milliseconds, or ISO 8601 (UTC
    unless an offset is given). ValueError names the accepted forms."""
    text = text.strip()
    if m := _RELATIVE.fullmatch(text):
        return now_ms - round(float(m.group(1)) * _UNIT_MS[m.group(2)])
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"cannot read time {text!r}: use e.g. 15m, 2h, 1d (ago), epoch "
                         "milliseconds or 2024-05-01T12:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


# --- cursors -------------------------------------------------------------------------------


def read_from(log_start: int, handled: int | None, replayed: int | None = None, *,
              everything: bool = False) -> int:
    """First offset a command reads: past the handled (and, for replay, the replay) cursor,
    never before the oldest retained record; ``everything`` reads all that is retained."""
    if everything:
        return log_start
    return max(log_start, handled or 0, replayed or 0)


def cursor_after(read: Sequence[int], acted: Container[int], end: int) -> int:
    """Where a cursor may move after a run that read offsets ``read`` (in order, up to
    ``end``) and acted on ``acted``: to the first record not acted on, else to ``end``
    (which also steps over transaction markers after the last record)."""
    for offset in read:
        if offset not in acted:
            return offset
    return end


def retained_before(log_start: int, end: int, cursor: int | None) -> int:
    """Retained records before ``cursor`` (offsets between log start and the cursor)."""
    if cursor is None:
        return 0
    return max(0, min(cursor, end) - log_start)


# --- summaries -----------------------------------------------------------------------------


@dataclass(slots=True)
class Group:
    count: int = 0
    oldest_ms: int | None = None
    newest_ms: int | None = None

    def add(self, ts: int) -> None:
        self.count += 1
        self.oldest_ms = ts if self.oldest_ms is None else min(self.oldest_ms, ts)
        self.newest_ms = ts if self.newest_ms is None else max(self.newest_ms, ts)


@dataclass(slots=True)
class TopicSummary:
    """What one dead-letter topic holds after its handled cursor."""

    topic: str  # short name
    pending: Group = field(default_factory=Group)
    handled: int = 0  # retained, before the handled cursor
    replayed: int = 0  # pending, but before the replay cursor
    by_stage: Counter[str] = field(default_factory=Counter)
    by_error: Counter[str] = field(default_factory=Counter)
    groups: dict[tuple[str, str], Group] = field(default_factory=dict)

    def add(self, dl: DeadLetter, *, replayed: bool) -> None:
        self.pending.add(dl.timestamp_ms)
        self.replayed += replayed
        self.by_stage[dl.stage] += 1
        self.by_error[dl.error_class] += 1
        self.groups.setdefault((dl.stage, dl.error_class), Group()).add(dl.timestamp_ms)

    def as_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic, "pending": self.pending.count, "handled": self.handled,
            "replayed": self.replayed, "oldest_ms": self.pending.oldest_ms,
            "newest_ms": self.pending.newest_ms, "by_stage": dict(self.by_stage),
            "by_error_class": dict(self.by_error),
            "groups": [{"stage": s, "error_class": e, "count": g.count, "oldest_ms": g.oldest_ms,
                        "newest_ms": g.newest_ms} for (s, e), g in sorted(self.groups.items())],
        }


# --- replay --------------------------------------------------------------------------------


class Outcome(StrEnum):
    REPLAY = "replayed"
    ALREADY_SUBMITTED = "already_submitted"
    PARK = "parked"
    FILTERED = "filtered_out"
    NO_TARGET = "no_target"


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    outcome: Outcome
    target: str | None  # full topic name to produce to (REPLAY, PARK)
    reason: str


def already_submitted(journal_latest: Mapping[str, Any] | None) -> str | None:
    """Why a message with this latest journal entry must not go to dispatch again, or None."""
    if journal_latest is None:
        return None
    state = journal_latest.get("state")
    attempt = journal_latest.get("attempt")
    if state in _SUBMITTED_STATES:
        return f"journal says {state} in attempt {attempt}"
    if state == "FAILED" and not journal_latest.get("retryable", False):
        return f"journal says FAILED for good in attempt {attempt}"
    return None


def plan_replay(dl: DeadLetter, flt: Filter, journal_latest: Mapping[str, Any] | None, *,
                to_topic: str | None, parked_topic: str, existing: Container[str]
                ) -> ReplayPlan:
    """What replaying ``dl`` does; ``journal_latest`` is its message id's latest entry and
    ``existing`` the topics the broker has."""
    if not flt.matches(dl):
        return ReplayPlan(Outcome.FILTERED, None, "left out by the filters")
    if dl.replay_count > 0 and dl.topic != parked_topic:
        if parked_topic not in existing:
            return ReplayPlan(Outcome.NO_TARGET, None, f"topic {parked_topic} does not exist")
        return ReplayPlan(Outcome.PARK, parked_topic,
                          f"failed again after {dl.replay_count} replay(s)")
    if (why := already_submitted(journal_latest)) is not None:
        return ReplayPlan(Outcome.ALREADY_SUBMITTED, None, why)
    target = to_topic or dl.original_topic
    if not target:
        return ReplayPlan(Outcome.NO_TARGET, None,
                          f"no {H_ORIGINAL_TOPIC} header; name a destination with --to")
    if target not in existing:
        return ReplayPlan(Outcome.NO_TARGET, None, f"topic {target} does not exist")
    return ReplayPlan(Outcome.REPLAY, target, f"to {target}")


def replay_headers(dl: DeadLetter, *, at_ms: int, by: str) -> Headers:
    """The record's headers with fresh replay provenance (the count goes up by one)."""
    kept = [(k, v) for k, v in dl.headers if not k.startswith(H_REPLAY)]
    return [
        *kept,
        (H_REPLAY_FROM_TOPIC, dl.topic.encode()),
        (H_REPLAY_FROM_PARTITION, str(dl.partition).encode()),
        (H_REPLAY_FROM_OFFSET, str(dl.offset).encode()),
        (H_REPLAY_AT, str(at_ms).encode()),
        (H_REPLAY_BY, by.encode()),
        (H_REPLAY_COUNT, str(dl.replay_count + 1).encode()),
    ]


def park_headers(dl: DeadLetter, *, at_ms: int, by: str) -> Headers:
    """The record's headers plus where it was parked from (replay headers kept as evidence)."""
    kept = [(k, v) for k, v in dl.headers if not k.startswith(H_PARKED)]
    return [
        *kept,
        (H_PARKED + "from_topic", dl.topic.encode()),
        (H_PARKED + "from_partition", str(dl.partition).encode()),
        (H_PARKED + "from_offset", str(dl.offset).encode()),
        (H_PARKED + "at_ms", str(at_ms).encode()),
        (H_PARKED + "by", by.encode()),
    ]


# --- display -------------------------------------------------------------------------------


def value_preview(dl: DeadLetter, *, redacted: bool, limit: int = 16) -> str:
    """Hex of undecodable bytes: only the first ``limit`` (marker and fingerprint) when
    redacted, since raw bytes can hold a body or a number."""
    raw = dl.value or b""
    shown = raw[:limit] if redacted else raw
    more = "…" if len(shown) < len(raw) else ""
    return f"{len(raw)} bytes: {shown.hex()}{more}"


def _original(dl: DeadLetter) -> str:
    return (f"{dl.original_topic or '?'}:{dl.meta.get(H_ORIGINAL_PARTITION, '?')}:"
            f"{dl.meta.get(H_ORIGINAL_OFFSET, '?')}")


def describe(dl: DeadLetter, prefix: str, *, redacted: bool) -> dict[str, Any]:
    """A dead letter as shown by ``telex dlq show --json`` (and, formatted, without it)."""
    key = (dl.key or b"").decode("utf-8", "replace") if dl.key is not None else None
    error = dl.error_message
    out: dict[str, Any] = {
        "topic": dl.topic.removeprefix(prefix), "partition": dl.partition, "offset": dl.offset,
        "timestamp_ms": dl.timestamp_ms, "stage": dl.stage, "error_class": dl.error_class,
        "error_message": redact_value("error_message", error) if redacted else error,
        "message_id": dl.message_id, "account_id": dl.account_id,
        "original": _original(dl), "failure_count": dl.failure_count,
        "replay_count": dl.replay_count,
        "key": redact_value("key", key) if redacted and key is not None else key,
        "headers": {k: (redact_value(k, v) if redacted else v)
                    for k, v in dl.provenance().items()},
        "schema": dl.schema,
        "value": (redact(dl.record) if redacted else dl.record) if dl.record else None,
    }
    if dl.decode_error is not None:
        out["decode_error"] = redact_value("error", dl.decode_error) if redacted \
            else dl.decode_error
        out["value_bytes"] = value_preview(dl, redacted=redacted)
    return out
