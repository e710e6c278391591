"""The scheduler on the real broker with a controlled clock: a record due hours ahead is not
held in memory (its partition is parked), and is released once due."""

from __future__ import annotations

import threading
import time

from pipeline.runtime.delay import delay_headers, tier_topic
from pipeline.runtime.runner import StageRunner
from pipeline.runtime.scheduler import build
from pipeline.settings import Settings
from tests.fixtures.telex import produce, read_all
from tests.fixtures.waiting import until_sync

HOUR_MS = 3_600_000


def test_record_due_hours_ahead_is_not_held_in_memory_and_is_released_when_due(
    topics: Settings,
):
    """delay-t9 holds a record due in an hour: the scheduler parks its partition instead of
    buffering it (and what follows), then re-reads and releases it once the clock says due."""
    now = [time.time()]
    due_ms = now[0] * 1000 + HOUR_MS
    produce(topics, tier_topic(9), [("m-far", b"far")],
            headers=delay_headers(due_ms, "dispatch-ready"))
    scheduler = build(topics)
    runner = StageRunner(topics, scheduler, clock=lambda: now[0])
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        until_sync(lambda: len(scheduler.parked()) == 1, 60, "the partition parked",
                   interval_s=0.05)
        assert scheduler.buffered() == 0
        assert read_all(topics, "dispatch-ready") == []
        now[0] = due_ms / 1000 + 1
        [released] = read_all(topics, "dispatch-ready", until=lambda r: len(r) >= 1,
                              timeout=60)
        assert (released.key(), released.value()) == (b"m-far", b"far")
        until_sync(lambda: scheduler.parked() == [], 10, "the partition awake",
                   interval_s=0.05)
    finally:
        runner.stop()
        thread.join(30)
