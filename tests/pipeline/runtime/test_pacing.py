"""The scheduler's per-bucket pacing (pure): overdue records leave no faster than the bucket's
limit, never laxer than the rate limiter's books, each bucket on its own."""

from __future__ import annotations

import math

from pipeline.gcra import Limit
from pipeline.runtime.pacing import Pacer, Pacers

TEN_PER_S = Limit(rate=10, burst=1)  # one segment per 100 ms, no bursting


def _drain(pacer: Pacer[int], now: float) -> list[tuple[float, int]]:
    released: list[tuple[float, int]] = []
    while pacer.queue:
        out, next_ms = pacer.release(now)
        released += [(now, i) for i in out]
        now = next_ms
    return released


def test_a_backlog_leaves_at_the_bucket_rate():
    """Ten records due at once (a late scheduler): they leave in order, one per interval,
    the first at once."""
    pacer: Pacer[int] = Pacer(TEN_PER_S)
    for i in range(10):
        pacer.offer(i, 1, booked_ms=0)
    released = _drain(pacer, 1_000.0)
    assert [i for _, i in released] == list(range(10))
    assert [t for t, _ in released] == [1_000.0 + 100 * i for i in range(10)]
    assert pacer.release(5_000) == ([], math.inf)


def test_never_laxer_than_the_books():
    """A record booked behind the limiter's TAT does not leave before the slot it booked."""
    pacer: Pacer[str] = Pacer(TEN_PER_S)
    pacer.offer("late", 1, booked_ms=5_000)  # the stage's TAT before booking it
    assert pacer.release(4_800) == ([], 5_000)
    assert pacer.release(5_000) == (["late"], math.inf)


def test_a_record_costing_more_than_the_burst_leaves_at_its_slot():
    """Regression: a 3-segment record on a burst-1 bucket is never conforming at once; its slot
    is reserved when first asked (1,200: two intervals later) and kept, not recomputed from
    each later call (which pushed it back forever). The next record waits behind its
    segments."""
    pacer: Pacer[str] = Pacer(TEN_PER_S)
    pacer.offer("long", 3, booked_ms=0)
    pacer.offer("next", 1, booked_ms=0)
    assert pacer.release(1_000) == ([], 1_200)
    assert pacer.release(1_100) == ([], 1_200)
    assert pacer.release(1_200) == (["long"], 1_300)
    assert pacer.release(1_300) == (["next"], math.inf)


def test_buckets_pace_apart_and_idle_ones_are_forgotten():
    """A backlog in one bucket does not hold another; an empty bucket is forgotten once its
    TAT is more than idle_ms old, not before."""
    pacers: Pacers[str] = Pacers(idle_ms=60_000)
    for i in range(5):
        pacers.offer("busy", TEN_PER_S, f"b{i}", 1, booked_ms=0)
    pacers.offer("quiet", TEN_PER_S, "q0", 1, booked_ms=0)
    out, next_ms = pacers.release(1_000)
    assert sorted(out) == ["b0", "q0"] and next_ms == 1_100
    while next_ms != math.inf:
        _, next_ms = pacers.release(next_ms)  # busy drains: its TAT ends at 1,500
    assert len(pacers) == 2
    pacers.release(61_050)  # quiet's TAT (1,100) is 59,950 ms old: kept
    assert len(pacers) == 2
    pacers.release(61_200)  # quiet's is 60,100 ms old, busy's (1,500) 59,700
    assert len(pacers) == 1
    pacers.release(61_600)
    assert len(pacers) == 0


def test_drop_removes_waiting_records():
    """Records of partitions given away are removed; the others keep their order."""
    pacers: Pacers[tuple[int, str]] = Pacers(idle_ms=60_000)
    for i, partition in enumerate((0, 1, 0, 1)):
        pacers.offer("b", Limit(rate=1, burst=1), (partition, f"r{i}"), 1, booked_ms=0)
    pacers.drop(lambda item: item[0] == 1)
    assert pacers.release(0) == ([(0, "r0")], 1_000)
    assert pacers.release(1_000) == ([(0, "r2")], math.inf)
