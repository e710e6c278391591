"""The API's per-account request limit (GCRA, no queue)."""

from __future__ import annotations

from pipeline.api.ratelimit import RequestLimiter


def test_burst_then_refusal_with_whole_seconds_to_wait_then_admitted() -> None:
    """Burst 2 at 1/s: two admitted at t=0, the third told to wait 1 s, admitted at t=1 s."""
    limiter = RequestLimiter(rate=1, burst=2)
    assert [limiter.admit("A", 0) for _ in range(3)] == [0, 0, 1]
    assert limiter.admit("A", 1000) == 0


def test_accounts_have_their_own_buckets() -> None:
    """Account B is admitted while A is refused."""
    limiter = RequestLimiter(rate=1, burst=1)
    assert (limiter.admit("A", 0), limiter.admit("A", 0), limiter.admit("B", 0)) == (0, 1, 0)
