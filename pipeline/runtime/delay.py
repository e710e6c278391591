"""Durable delays without head-of-line blocking: tiered delay topics (pure decisions).

A record that must wait is written to the tier topic whose delay fits its remaining wait, with
its due time and destination in headers. In tier i every record becomes actionable
``TIER_DELAYS_MS[i]`` after it was written (or at its due time, if sooner), so actionable order
equals write order: the tier's consumer only ever waits for the record at the head of a
partition, and that record is the next one to act on. When actionable, a record is released to
its destination if due, else moved to the lower tier that fits what is left. A wait of hours
hops a handful of times; nothing waits behind a record due later than itself, except inside
tier 0 (remaining < 50 ms), which bounds release lateness to about 50 ms.

The same mechanism serves rate-limit deferrals, scheduled sends (send-at) and retry backoff.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.headers import H_DUE, H_PACE, H_TARGET

TIER_DELAYS_MS = (0, 50, 250, 1_000, 5_000, 25_000, 125_000, 625_000, 3_125_000, 15_625_000)

RELEASE = "release"
MOVE = "move"
WAIT = "wait"


def tier_topic(index: int) -> str:
    """Catalogue short name of tier ``index``."""
    return f"delay-t{index}"


def tier_for(remaining_ms: float) -> int:
    """The tier whose delay is the largest one not above ``remaining_ms``."""
    return max(0, bisect_right(TIER_DELAYS_MS, max(0.0, remaining_ms)) - 1)


@dataclass(frozen=True, slots=True)
class Action:
    kind: str  # release | move | wait
    tier: int = 0  # destination tier for MOVE
    until_ms: float = 0.0  # for WAIT: when to look again


def act(due_ms: float, written_ms: float, tier: int, now_ms: float,
        delays: Sequence[int] = TIER_DELAYS_MS) -> Action:
    """What to do now with the head record of a partition of tier ``tier``."""
    ready = min(due_ms, written_ms + delays[tier])
    if now_ms < ready:
        return Action(WAIT, until_ms=ready)
    if now_ms >= due_ms:
        return Action(RELEASE)
    return Action(MOVE, tier=tier_for(due_ms - now_ms))


def delay_headers(due_ms: float, target: str, pace: Pace | None = None
                  ) -> list[tuple[str, bytes]]:
    headers = [(H_DUE, str(int(due_ms)).encode()), (H_TARGET, target.encode())]
    if pace is not None:
        headers.append((H_PACE, pace.encode()))
    return headers


@dataclass(frozen=True, slots=True)
class Pace:
    """The bucket a rate-limited record belongs to, and that bucket's limit.

    A late scheduler (a stalled process, a busy machine) must not catch up by releasing a
    bucket's overdue records at once: that would burst the carrier. The scheduler re-checks
    every paced release against the bucket's own rate and burst on actual release times, so
    any 1 s window of its releases holds at most rate + burst segments, however late it ran.
    ``booked_ms`` is the bucket's TAT before this message was booked: it tells the scheduler
    about releases the stage made directly, so its pacing starts from the stage's books.
    """

    rate: float
    burst: float
    segments: int
    booked_ms: float
    bucket: str

    def encode(self) -> bytes:
        return (f"{self.rate:g}:{self.burst:g}:{self.segments}:{self.booked_ms:.0f}:"
                f"{self.bucket}").encode()

    @classmethod
    def decode(cls, raw: bytes) -> Pace:
        rate, burst, segments, booked, bucket = raw.decode().split(":", 4)
        return cls(float(rate), float(burst), int(segments), float(booked), bucket)
