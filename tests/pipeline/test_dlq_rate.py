"""`telex dlq replay --rate`: the cap holds, also after a stall (pure, with a fake clock)."""

from __future__ import annotations

from pipeline.ops.dlq import Pacer


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_records_leave_one_interval_apart():
    """At 4/s the first record leaves at once and each next one 0.25 s after it."""
    clock = _Clock()
    pacer = Pacer(4, clock=lambda: clock.now, sleep=clock.sleep)
    times = []
    for _ in range(4):
        pacer.wait()
        times.append(clock.now)
    assert times == [100.0, 100.25, 100.5, 100.75]


def test_a_stall_delays_the_schedule_instead_of_bursting():
    """After a 3 s stall (a flush, a slow broker) the next records still leave 0.25 s apart;
    the overdue ones do not go out at once."""
    clock = _Clock()
    pacer = Pacer(4, clock=lambda: clock.now, sleep=clock.sleep)
    pacer.wait()
    clock.now += 3.0  # stalled between two records
    times = []
    for _ in range(3):
        pacer.wait()
        times.append(clock.now)
    assert times == [103.0, 103.25, 103.5]


def test_no_rate_never_waits():
    """Without --rate nothing sleeps."""
    clock = _Clock()
    pacer = Pacer(None, clock=lambda: clock.now, sleep=clock.sleep)
    for _ in range(5):
        pacer.wait()
    assert clock.slept == []
