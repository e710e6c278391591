"""Dedup by idempotency key, as payment APIs do it: pure decision, no I/O.

The first request for a message id (account + idempotency key) decides the message for the
whole window: an identical repeat is absorbed (its status is the original's), a repeat with
different content is refused with 21656 and never touches the original. This holds for requests
that failed validation too, so a message id has exactly one outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Verdict(StrEnum):
    NEW = "new"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"


@dataclass(frozen=True, slots=True)
class Seen:
    """What the dedup store remembers about a message id."""

    content_hash: str
    first_seen_ms: int
    outcome: str  # "accepted" or "rejected"

    def to_state(self) -> list[object]:
        return [self.content_hash, self.first_seen_ms, self.outcome]

    @classmethod
    def from_state(cls, raw: list[object] | None) -> Seen | None:
        if raw is None:
            return None
        content_hash, first_seen_ms, outcome = raw
        return cls(str(content_hash), int(first_seen_ms), str(outcome))  # type: ignore[call-overload]


def decide(seen: Seen | None, content_hash: str, event_ms: int, window_ms: int) -> Verdict:
    """Verdict for a request seen at event time ``event_ms`` (the Kafka record timestamp).

    An entry older than the window counts as absent, even if the store has not expired it yet:
    the window is a promise to clients, not a side effect of compaction timing.
    """
    if seen is None or event_ms - seen.first_seen_ms >= window_ms:
        return Verdict.NEW
    if seen.content_hash == content_hash:
        return Verdict.DUPLICATE
    return Verdict.CONFLICT
