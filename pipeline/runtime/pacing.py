"""Pacing of due records per rate-limited bucket (pure): the scheduler's last guard before a
deferred record reaches dispatch.

The rate-limit stage books each deferred message a slot (GCRA) and sends it through the delay
tiers with its bucket's limit and the bucket's TAT before the booking (a
:class:`~pipeline.runtime.delay.Pace`). A scheduler that falls behind would release every
overdue record at once; each bucket's :class:`Pacer` lets them go no faster than the bucket's
limit allows on actual release times, and never laxer than the stage's books (its TAT starts at
the booked one). Buckets without waiting records are forgotten after ``idle_ms``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from pipeline.gcra import Limit, reserve

__all__ = ["Pacer", "Pacers"]

T = TypeVar("T")


@dataclass
class Pacer(Generic[T]):
    """One bucket: its limit, its TAT on actual releases, and the records waiting in order."""

    limit: Limit
    tat_ms: float | None = None
    queue: deque[tuple[T, int]] = field(default_factory=deque)  # (item, segments)
    # The head's slot, once reserved. Reserved once, not asked again at every call: a record
    # costing more segments than the burst is never conforming at once, and recomputing its
    # slot from "now" at each call would push it back forever.
    head_at_ms: float | None = None

    def offer(self, item: T, segments: int, booked_ms: float) -> None:
        """Queue a due record; ``booked_ms`` is the bucket's TAT when the stage booked it."""
        self.tat_ms = max(self.tat_ms or 0.0, booked_ms)
        self.queue.append((item, segments))

    def release(self, now_ms: float) -> tuple[list[T], float]:
        """The records the limit lets go at ``now_ms``, in order, and when the next one may
        go (``inf`` when none waits)."""
        out: list[T] = []
        while self.queue:
            item, segments = self.queue[0]
            if self.head_at_ms is None:
                slot = reserve(self.tat_ms, now_ms, segments, self.limit)
                self.tat_ms, self.head_at_ms = slot.tat_ms, slot.release_at_ms
            if self.head_at_ms > now_ms:
                return out, self.head_at_ms
            self.queue.popleft()
            self.head_at_ms = None
            out.append(item)
        return out, math.inf


class Pacers(Generic[T]):
    """Every bucket's :class:`Pacer`, by bucket name."""

    def __init__(self, idle_ms: float) -> None:
        self._idle_ms = idle_ms
        self._buckets: dict[str, Pacer[T]] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def offer(self, bucket: str, limit: Limit, item: T, segments: int, booked_ms: float
              ) -> None:
        self._buckets.setdefault(bucket, Pacer(limit)).offer(item, segments, booked_ms)

    def release(self, now_ms: float) -> tuple[list[T], float]:
        """Every bucket's releases at ``now_ms`` and the earliest next release time."""
        out: list[T] = []
        next_ms = math.inf
        for bucket, pacer in list(self._buckets.items()):
            released, next_bucket = pacer.release(now_ms)
            out += released
            next_ms = min(next_ms, next_bucket)
            if not pacer.queue and (pacer.tat_ms or 0.0) < now_ms - self._idle_ms:
                del self._buckets[bucket]
        return out, next_ms

    def drop(self, gone: Callable[[T], bool]) -> None:
        """Remove waiting records (e.g. of partitions this worker no longer owns)."""
        for pacer in self._buckets.values():
            head = pacer.queue[0] if pacer.queue else None
            pacer.queue = deque(entry for entry in pacer.queue if not gone(entry[0]))
            if not pacer.queue or pacer.queue[0] is not head:
                pacer.head_at_ms = None  # its slot stays booked: stricter, never laxer
