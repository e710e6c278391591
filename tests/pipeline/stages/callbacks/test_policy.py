"""The verdict on a callback attempt and the retry schedule (pure)."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from pipeline.stages.callbacks.policy import (
    DELIVERED,
    DISABLE,
    GIVE_UP,
    RETRY,
    Schedule,
    judge,
    parse_ceilings,
    retry_after_s,
)

SCHEDULE = Schedule(ceilings_s=(10.0, 100.0, 1000.0), max_retry_after_s=500.0)


def _judge(status: int | None, attempt: int = 1, error: str | None = None,
           retry_after: float | None = None) -> str:
    return judge(attempt, status, error, retry_after, SCHEDULE, random.Random(1)).kind


@pytest.mark.parametrize(("status", "kind"), [
    (200, DELIVERED), (204, DELIVERED), (299, DELIVERED),
    (410, DISABLE),
    (301, GIVE_UP), (302, GIVE_UP), (307, GIVE_UP),
    (400, GIVE_UP), (401, GIVE_UP), (404, GIVE_UP), (422, GIVE_UP),
    (408, RETRY), (429, RETRY), (500, RETRY), (502, RETRY), (503, RETRY),
    (None, RETRY),
])
def test_each_answer_has_its_verdict(status: int | None, kind: str) -> None:
    """2xx done, 410 disables, redirects and other 4xx end it, 408/429/5xx/no answer retry."""
    assert _judge(status, error="timeout" if status is None else None) == kind


def test_the_last_attempt_gives_up() -> None:
    """Attempts are len(ceilings) + 1; a retryable failure of the last one gives up."""
    assert SCHEDULE.attempts == 4
    assert _judge(500, attempt=3) == RETRY
    verdict = judge(4, 500, None, None, SCHEDULE, random.Random(1))
    assert verdict.kind == GIVE_UP and "4 attempts" in verdict.reason


def test_waits_are_full_jitter_under_each_ceiling() -> None:
    """Waits spread over [0, ceiling] of their attempt, never above it."""
    rng = random.Random(7)
    for attempt, ceiling in ((1, 10.0), (2, 100.0), (3, 1000.0)):
        waits = [SCHEDULE.wait_s(attempt, rng) for _ in range(2000)]
        assert 0.0 <= min(waits) < ceiling * 0.05
        assert ceiling * 0.95 < max(waits) <= ceiling


def test_retry_after_is_honoured_within_its_bound() -> None:
    """429/503 wait at least Retry-After, capped; other statuses ignore it."""
    rng = random.Random(3)
    assert judge(1, 429, None, 300.0, SCHEDULE, rng).wait_s >= 300.0
    assert judge(1, 503, None, 99_999.0, SCHEDULE, rng).wait_s == 500.0
    assert judge(1, 500, None, 300.0, SCHEDULE, rng).wait_s <= 10.0


def test_retry_after_reads_seconds_and_dates() -> None:
    """Delta-seconds and HTTP dates; junk is ignored."""
    now = 1_800_000_000.0
    date = format_datetime(datetime.fromtimestamp(now + 120, UTC), usegmt=True)
    assert retry_after_s("30", now) == 30.0
    assert retry_after_s(date, now) == pytest.approx(120.0)
    assert retry_after_s("soon", now) is None
    assert retry_after_s(None, now) is None


def test_ceilings_parse_from_the_setting() -> None:
    """Comma-separated positive seconds."""
    assert parse_ceilings("60, 300,1800") == (60.0, 300.0, 1800.0)
    with pytest.raises(ValueError):
        parse_ceilings("60,-1")
