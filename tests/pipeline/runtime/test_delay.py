"""Tier choice and actions of the delay tiers, with an injected clock."""

from pipeline.runtime.delay import MOVE, RELEASE, TIER_DELAYS_MS, WAIT, act, tier_for


def test_tier_fits_remaining_wait():
    """The chosen tier's delay never exceeds the remaining wait."""
    assert tier_for(0) == 0 and tier_for(49) == 0 and tier_for(50) == 1
    assert tier_for(999) == 2 and tier_for(1000) == 3
    assert tier_for(10 * 3600 * 1000) == len(TIER_DELAYS_MS) - 1
    for remaining in range(0, 2_000_000, 997):
        assert TIER_DELAYS_MS[tier_for(remaining)] <= remaining


def test_head_waits_until_tier_delay_then_moves_down():
    """A record due in 10 s, written to its tier, waits its tier's delay then moves lower."""
    due = 10_000
    tier = tier_for(due)
    assert TIER_DELAYS_MS[tier] == 5_000
    assert act(due, 0, tier, 100).kind == WAIT
    moved = act(due, 0, tier, 5_000)
    assert moved.kind == MOVE and TIER_DELAYS_MS[moved.tier] <= 5_000


def test_due_record_is_released():
    """Once due, a record is released whatever its tier."""
    assert act(1000, 0, 3, 1000).kind == RELEASE
    assert act(1000, 990, 0, 1000).kind == RELEASE


def test_hops_converge_to_release_at_due_time():
    """Following the actions from write to release never releases early and hops a few times."""
    due, now, written, tier, hops = 3_600_000, 0, 0, tier_for(3_600_000), 0
    while True:
        a = act(due, written, tier, now)
        if a.kind == WAIT:
            now = a.until_ms
        elif a.kind == MOVE:
            tier, written, hops = a.tier, now, hops + 1
        else:
            break
    assert now == due and hops <= len(TIER_DELAYS_MS)
