"""GCRA reservations: rates, bursts, multi-segment cost, with an injected clock."""

import pytest

from pipeline.gcra import Limit, reserve


def run(limit: Limit, arrivals: list[tuple[float, float]]) -> list[float]:
    """Release times for (arrival ms, cost) in order, taking every reservation."""
    tat = None
    out = []
    for t, cost in arrivals:
        r = reserve(tat, t, cost, limit)
        tat = r.tat_ms
        out.append(r.release_at_ms)
    return out


def max_in_window(times: list[float], costs: list[float], window_ms: float = 1000) -> float:
    pairs = sorted(zip(times, costs, strict=True))
    best, j, acc = 0.0, 0, 0.0
    for t, c in pairs:
        acc += c
        while pairs[j][0] <= t - window_ms:
            acc -= pairs[j][1]
            j += 1
        best = max(best, acc)
    return best


def test_idle_bucket_lets_burst_through_at_once():
    """An idle bucket with burst 3 releases three messages immediately, then one per interval."""
    releases = run(Limit(rate=1, burst=3), [(0, 1)] * 5)
    assert releases == [0, 0, 0, 1000, 2000]


def test_steady_rate_never_exceeds_limit_plus_burst_in_any_window():
    """10,000 arrivals at once: every 1 s window holds at most rate + burst segments."""
    limit = Limit(rate=100, burst=10)
    releases = run(limit, [(0, 1)] * 10_000)
    assert max_in_window(releases, [1] * 10_000) <= 110
    assert releases[-1] == pytest.approx((10_000 - 10) * 10)


def test_multi_segment_message_costs_its_segments():
    """A 3-segment message at 1 segment/s holds the bucket for 3 s."""
    releases = run(Limit(rate=1, burst=1), [(0, 3), (0, 1)])
    assert releases == [2000, 3000]


def test_bucket_recovers_while_idle():
    """After a quiet period the bucket is idle again and the burst is available."""
    releases = run(Limit(rate=10, burst=2), [(0, 1), (0, 1), (0, 1), (10_000, 1), (10_000, 1)])
    assert releases == [0, 0, 100, 10_000, 10_000]


def test_position_counts_segments_booked_ahead():
    """Position says how many segments are reserved before this message."""
    limit = Limit(rate=1, burst=1)
    tat = None
    positions = []
    for _ in range(4):
        r = reserve(tat, 0, 1, limit)
        tat = r.tat_ms
        positions.append(r.position)
    assert positions == [0, 1, 2, 3]


def test_full_utilisation_under_backlog():
    """A backlog drains at exactly the configured rate (no capacity lost)."""
    releases = run(Limit(rate=50, burst=1), [(0, 1)] * 501)
    assert releases[-1] - releases[0] == pytest.approx(500 * 20)


def test_invalid_limit_rejected():
    """Zero rate or a burst below one segment is a configuration error."""
    with pytest.raises(ValueError):
        Limit(rate=0, burst=1)
    with pytest.raises(ValueError):
        Limit(rate=1, burst=0.5)


def test_regression_due_now_is_not_deferred_by_rounding():
    """A conforming message is released at ``now`` itself: computed as (now + T) - b·T, a
    1000/3 ms interval put the release a hair after 1715 and deferred it."""
    limit = Limit(rate=3, burst=1)
    assert reserve(None, 1_715, 1, limit).release_at_ms == 1_715
    assert reserve(1_715.0, 1_715, 1, limit).release_at_ms == 1_715
