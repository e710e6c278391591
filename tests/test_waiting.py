"""The shared waiting helpers (tests/fixtures/waiting.py): they return as soon as the condition
holds, and fail naming what they waited for (and, for wait_for, the last value seen)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from tests.fixtures.waiting import until, until_sync, wait_for


def test_wait_for_returns_the_first_value_that_satisfies_until() -> None:
    """The probe is polled until ``until`` holds; that value is returned, no later one."""
    counter = itertools.count()
    assert wait_for(lambda: next(counter), until=lambda n: n >= 3, timeout=5,
                    interval_s=0) == 3


def test_wait_for_fails_with_what_and_the_last_value() -> None:
    """On time-out the error names ``what`` and shows the last value through ``describe``."""
    with pytest.raises(AssertionError, match=r"waiting for the answer \(last value 41!\)"):
        wait_for(lambda: 41, until=lambda n: n == 42, timeout=0.05, what="the answer",
                 interval_s=0.01, describe=lambda n: f"{n}!")


def test_until_sync_and_until_fail_with_what() -> None:
    """Both boolean helpers raise an AssertionError naming ``what`` on time-out, and return at
    once when the condition already holds."""
    until_sync(lambda: True, 0)
    asyncio.run(until(lambda: True, 0))
    with pytest.raises(AssertionError, match=r"timed out after 0\.05s waiting for never"):
        until_sync(lambda: False, 0.05, "never")
    with pytest.raises(AssertionError, match=r"timed out after 0\.05s waiting for never"):
        asyncio.run(until(lambda: False, 0.05, "never"))
