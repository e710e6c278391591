"""The scheduler's holding without a broker: what it commits, when it wants to wake, how it
parks (the runner's hooks driven by hand, the clock given)."""

from __future__ import annotations

from pipeline.runtime.delay import Pace, delay_headers, tier_topic
from pipeline.runtime.scheduler import HOLD_MS, Scheduler
from pipeline.runtime.stage import Record
from pipeline.settings import load_settings

SETTINGS = load_settings(kafka_bootstrap_servers="127.0.0.1:1", topic_prefix="t.")
NOW = 1_000_000_000


class _Flow:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int | None]] = []

    def pause(self, topic: str, partition: int) -> None:
        self.calls.append(("pause", partition, None))

    def resume(self, topic: str, partition: int, offset: int | None = None) -> None:
        self.calls.append(("resume", partition, offset))


def _scheduler() -> tuple[Scheduler, _Flow]:
    scheduler, flow = Scheduler(SETTINGS), _Flow()
    scheduler.open(flow)  # type: ignore[arg-type]
    return scheduler, flow


def _record(offset: int, due_ms: float, tier: int = 0, written_ms: int = NOW,
            pace: Pace | None = None) -> Record:
    return Record(f"t.{tier_topic(tier)}", 0, offset, f"m{offset}", b"v",
                  delay_headers(due_ms, "dispatch-ready", pace), written_ms)


def test_a_record_held_until_due_pins_the_commit_and_wakes_the_runner_at_its_due_time():
    """Due within HOLD_MS: held in memory, not committed past, released when woken at its
    due time, stamped with it and without delay headers; then committed past."""
    scheduler, _ = _scheduler()
    due = NOW + HOLD_MS // 2
    assert scheduler.process([_record(7, due)], {}, NOW) == []
    assert scheduler.commit_floor("t.delay-t0", 0) == 7
    assert scheduler.next_wake_ms() == due
    [out] = scheduler.wake(due)
    assert (out.topic, out.key, out.headers, out.timestamp_ms) == ("dispatch-ready", "m7", [],
                                                                   due)
    assert scheduler.commit_floor("t.delay-t0", 0) == 8
    assert scheduler.next_wake_ms() is None


def test_a_paced_record_is_committed_past_only_once_its_bucket_lets_it_go():
    """Two due records of a 1-per-second bucket: the second waits for its slot, holding the
    commit floor, and the runner is woken for that slot to the millisecond."""
    scheduler, _ = _scheduler()
    pace = Pace(rate=1, burst=1, segments=1, booked_ms=0, bucket="s1")
    outs = scheduler.process([_record(0, NOW, pace=pace), _record(1, NOW, pace=pace)], {}, NOW)
    assert [o.key for o in outs] == ["m0"]
    assert scheduler.commit_floor("t.delay-t0", 0) == 1
    assert scheduler.next_wake_ms() == NOW + 1_000
    assert scheduler.wake(NOW + 999) == []
    assert [o.key for o in scheduler.wake(NOW + 1_000)] == ["m1"]
    assert scheduler.commit_floor("t.delay-t0", 0) == 2


def test_a_parked_partition_is_not_committed_past_its_parked_record_until_released():
    """Regression guard: a record actionable hours ahead parks its partition (paused, what
    follows it ignored); woken, the partition is read again from that record, and the floor
    stays there until the record itself is acted on (committing the runner's position, past
    it, would lose it)."""
    scheduler, flow = _scheduler()
    far = NOW + 3_600_000
    assert scheduler.process([_record(3, far, tier=9), _record(4, far, tier=9)], {}, NOW) == []
    assert flow.calls == [("pause", 0, None)]
    assert scheduler.parked() == [("t.delay-t9", 0)]
    assert scheduler.buffered() == 0
    assert scheduler.commit_floor("t.delay-t9", 0) == 3
    wake = scheduler.next_wake_ms()
    assert wake is not None and NOW < wake < far
    assert scheduler.wake(int(wake)) == []
    assert flow.calls[-1] == ("resume", 0, 3)
    assert scheduler.commit_floor("t.delay-t9", 0) == 3
    assert scheduler.process([_record(3, far, tier=9)], {}, int(wake)) == []
    assert scheduler.commit_floor("t.delay-t9", 0) == 3
    assert scheduler.next_wake_ms() == far
    [released] = scheduler.wake(far)
    assert released.key == "m3"
    assert scheduler.commit_floor("t.delay-t9", 0) == 4


def test_a_record_without_delay_headers_is_dead_lettered_and_committed_past():
    """A tier record the scheduler cannot read goes to dlq-scheduler with provenance."""
    scheduler, _ = _scheduler()
    bad = Record("t.delay-t3", 0, 9, "m9", b"v", [], NOW)
    [dead] = scheduler.process([bad], {}, NOW)
    headers = dict(dead.headers)
    assert dead.topic == "dlq-scheduler"
    assert headers["telex.dlq.original_offset"] == b"9"
    assert scheduler.commit_floor("t.delay-t3", 0) == 10


def test_forgotten_partitions_release_nothing_more():
    """A revoked or lost partition's held records are dropped: its next owner has them."""
    scheduler, _ = _scheduler()
    scheduler.process([_record(7, NOW + 100)], {}, NOW)
    scheduler.forget([("t.delay-t0", 0)])
    assert scheduler.wake(NOW + 100) == []
    assert scheduler.commit_floor("t.delay-t0", 0) is None
