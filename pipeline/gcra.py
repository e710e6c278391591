"""GCRA (generic cell rate algorithm) as a reservation: when may a message of cost c leave?

The one implementation of rate spacing in Telex: the rate-limit stage's buckets and the
scheduler's pacers (cost = a message's segments) and the callbacks stage's host rate (cost 1)
all reserve through :func:`reserve`. Pure: callers pass ``now_ms`` and keep the TAT.

State per bucket is one number, the theoretical arrival time (TAT). A bucket with rate r
(units/s) and burst b (units) has emission interval T = 1000/r ms. A message of cost c
arriving at t reserves the next slot: new TAT = max(TAT, t) + c·T, and may leave at
max(t, new TAT - b·T). So b units leave at once from an idle bucket, then one per T; any
1-second window holds at most r + b units. Reserving at arrival gives every message its exact
release time up front: queue-full and expired-in-queue are decided immediately and precisely,
and nothing ever waits in front of another bucket's messages. A caller that only admits what
may leave now (no queue) takes the reservation when ``release_at_ms <= now_ms`` and otherwise
keeps its old TAT: that is the classic GCRA conformance test, with tolerance (b - 1)·T.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limit", "Reservation", "backlog_ms", "reserve"]


@dataclass(frozen=True, slots=True)
class Limit:
    """A rate in units (segments, callbacks) per second and a burst in units."""

    rate: float
    burst: float

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got {self.rate}, {self.burst}")

    @property
    def interval_ms(self) -> float:
        return 1000.0 / self.rate


@dataclass(frozen=True, slots=True)
class Reservation:
    release_at_ms: float  # when the message may leave
    tat_ms: float  # the bucket's new TAT, to store if the reservation is taken
    position: float  # units reserved ahead of this message (how long the queue is)

    def wait_ms(self, now_ms: float) -> float:
        return max(0.0, self.release_at_ms - now_ms)


def reserve(tat_ms: float | None, now_ms: float, cost: float, limit: Limit) -> Reservation:
    """The slot a message of ``cost`` units would get; the caller decides to take it (stores
    ``tat_ms``) or not (keeps its TAT: nothing was booked)."""
    interval = limit.interval_ms
    start = now_ms if tat_ms is None else max(tat_ms, now_ms)
    new_tat = start + cost * interval
    # start - (b - c)·T, not new_tat - b·T: the same value, but when a message is due exactly
    # now (an idle bucket, c = b) this is ``start`` itself, where (start + c·T) - b·T can round
    # a hair above now and defer a message that conforms.
    release = max(now_ms, start - (limit.burst - cost) * interval)
    ahead = max(0.0, (start - now_ms) / interval)
    return Reservation(release, new_tat, ahead)


def backlog_ms(tat_ms: float | None, now_ms: float) -> float:
    """How far ahead the bucket is booked: the wait a new one-unit message would see,
    plus the burst allowance (0 when idle)."""
    return 0.0 if tat_ms is None else max(0.0, tat_ms - now_ms)
