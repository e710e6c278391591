"""The delay-tier scheduler: releases delayed records to their destination when due.

A batch stage (:class:`~pipeline.runtime.runner.StageRunner` runs it) that holds records
across batches, through the runner's holding hooks, instead of keeping them in a store: it acts
on the heads of tier partitions and paces per bucket, which per-key store timers do not model
(a timer fires at most every ``TELEX_PUNCTUATE_INTERVAL_S``; pacing needs the millisecond).
Per assigned partition it keeps the consumed-but-not-yet-actionable records in order (see
:mod:`pipeline.runtime.delay`), acts on heads as they become actionable, and pauses a partition
whose buffer is full. A due record of a rate-limited bucket also waits for its bucket's pace
(see :class:`~pipeline.runtime.delay.Pace`) in a per-bucket queue, out of its partition's way,
so a late bucket never holds up another bucket's records.

What the runner guarantees with the hooks: the poll's wait ends at :meth:`next_wake_ms` (the
next head, held record, paced slot or parked partition coming due); outputs are produced at
once and acknowledged at the checkpoint before it commits, per partition, no further than
:meth:`commit_floor`, the lowest offset not yet acted on (a record held or waiting for its pace
counts as not acted on). A crash repeats at most the actions taken since those offsets
(at-least-once; released records keep their message id, so dispatch's journal absorbs a
repeat).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import structlog

from pipeline.gcra import Limit
from pipeline.headers import H_DUE, H_PACE, H_TARGET
from pipeline.metrics import RECORDS
from pipeline.runtime.delay import (
    RELEASE,
    TIER_DELAYS_MS,
    WAIT,
    Pace,
    act,
    delay_headers,
    tier_topic,
)
from pipeline.runtime.pacing import Pacers
from pipeline.runtime.stage import Input, Out, Record, Runtime, Stage
from pipeline.runtime.store import Store
from pipeline.settings import Settings

__all__ = ["HOLD_MS", "LOOKAHEAD_MS", "MAX_BUFFERED", "STAGE", "Scheduler", "build"]

STAGE = "scheduler"
MAX_BUFFERED = 20_000  # per partition, including records waiting for their pace
# Memory is spent only on records actionable soon: a record that becomes actionable later than
# this is not kept; its partition is parked (paused) until shortly before and re-read from that
# record (each wake re-reads at most one fetch per partition: memory traded for broker reads).
# Actionable order equals write order in a tier partition, so nothing behind it is needed
# before. Without this, a tier of long delays (receipt-window timers wait 48 h) kept
# MAX_BUFFERED records per partition in memory, for hours, in each of its partitions.
LOOKAHEAD_MS = 5_000
# A record due within this much is held in memory until due instead of taking another hop
# through a tier topic: a hop costs a broker round trip, which would make it late. It pins its
# partition's committed offset for at most this long.
HOLD_MS = 1_000
_PACER_IDLE_MS = 3_600_000  # forget a bucket's pace after an hour without releases
_STRIPPED = (H_DUE, H_TARGET, H_PACE)

log = structlog.get_logger("telex.scheduler")

PartitionKey = tuple[str, int]


@dataclass
class _Partition:
    tier: int
    records: deque[Record] = field(default_factory=deque)
    held: set[int] = field(default_factory=set)  # offsets waiting in a timer or pace queue
    next_offset: int | None = None  # after the last record taken off ``records``
    paused: bool = False
    parked_at: int | None = None  # first offset not kept (re-read from here when it is time)
    wake_ms: float = 0.0  # when a parked partition is read again

    def commit_offset(self) -> int | None:
        """The lowest offset not acted on yet (None: nothing consumed)."""
        candidates = [o for o in (
            self.records[0].offset if self.records else self.next_offset,
            min(self.held) if self.held else None,
            self.parked_at,
        ) if o is not None]
        return min(candidates) if candidates else None


class Scheduler(Stage):
    """Consumes every delay tier and releases or moves records as they become actionable."""

    name = STAGE
    inputs = tuple(Input(tier_topic(i)) for i in range(len(TIER_DELAYS_MS)))

    def __init__(self, settings: Settings) -> None:
        self._tiers = {settings.topic(tier_topic(i)): i for i in range(len(TIER_DELAYS_MS))}
        self._runtime: Runtime | None = None
        self._parts: dict[PartitionKey, _Partition] = {}
        self._pacers: Pacers[tuple[PartitionKey, Record, str]] = Pacers(_PACER_IDLE_MS)
        self._timers: list[tuple[float, int, PartitionKey, Record, str, Pace | None]] = []
        self._timer_seq = 0
        self._next_ms: float | None = None
        self._released = RECORDS.labels(STAGE, "released")
        self._moved = RECORDS.labels(STAGE, "moved")

    def buffered(self) -> int:
        """Records held in memory (waiting in a partition, a timer or a pace queue)."""
        return sum(len(p.records) + len(p.held) for p in list(self._parts.values()))

    def parked(self) -> list[PartitionKey]:
        """Partitions not read until their next record is nearly actionable."""
        return [k for k, p in list(self._parts.items()) if p.parked_at is not None]

    # -- the runner's hooks --

    def open(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def process(self, records: Sequence[Record], stores: Mapping[tuple[str, int], Store],
                now_ms: int) -> list[Out]:
        for record in records:
            self._buffer(record, now_ms)
        return self._turn(now_ms)

    def wake(self, now_ms: int,
             stores: Mapping[tuple[str, int], Store] | None = None) -> list[Out]:
        return self._turn(now_ms)

    def next_wake_ms(self) -> float | None:
        return self._next_ms

    def commit_floor(self, topic: str, partition: int) -> int | None:
        part = self._parts.get((topic, partition))
        return None if part is None else part.commit_offset()

    def forget(self, partitions: Sequence[tuple[str, int]]) -> None:
        gone = set(partitions)
        for key in gone:
            self._parts.pop(key, None)
        self._pacers.drop(lambda item: item[0] in gone)
        self._timers = [t for t in self._timers if t[2] not in gone]
        heapq.heapify(self._timers)

    def message_id_of(self, record: Record) -> str | None:
        return None  # a tier record's key is its destination's (a bucket, a message id)

    # -- holding --

    def _buffer(self, record: Record, now_ms: float) -> None:
        key = (record.topic, record.partition)
        part = self._parts.get(key)
        if part is None:
            part = self._parts[key] = _Partition(self._tiers[record.topic])
        if part.parked_at is not None:
            return  # fetched before the pause took effect: re-read when the partition wakes
        ready = _ready_ms(record, part.tier)
        if ready is not None and ready > now_ms + LOOKAHEAD_MS:
            self._park(key, part, record, ready)
            return
        part.records.append(record)
        if len(part.records) + len(part.held) >= MAX_BUFFERED and not part.paused:
            self._pause(key, part)

    def _pause(self, key: PartitionKey, part: _Partition) -> None:
        assert self._runtime is not None, "open() first"
        self._runtime.pause(*key)
        part.paused = True

    def _park(self, key: PartitionKey, part: _Partition, record: Record,
              ready_ms: float) -> None:
        """Stop reading ``record``'s partition until ``ready_ms``; ``record`` and whatever
        follows it are read again then (the commit floor never passes them)."""
        part.parked_at = record.offset
        part.wake_ms = ready_ms - LOOKAHEAD_MS / 2
        if not part.paused:
            self._pause(key, part)

    def _unpark(self, now_ms: float) -> float:
        """Resume parked partitions whose time has come; returns the next wake-up time."""
        next_wake = math.inf
        for key, part in self._parts.items():
            if part.parked_at is None:
                continue
            if part.wake_ms > now_ms:
                next_wake = min(next_wake, part.wake_ms)
                continue
            assert self._runtime is not None, "open() first"
            self._runtime.resume(*key, part.parked_at)
            # Everything before the parked record was taken off or is still in ``records``.
            part.next_offset = part.parked_at
            part.parked_at = None
            part.paused = False
        return next_wake

    def _turn(self, now_ms: float) -> list[Out]:
        """Act on every actionable record; remember when the next one becomes actionable."""
        outs: list[Out] = []
        next_ready = self._unpark(now_ms)
        for key, part in self._parts.items():
            while part.records:
                record = part.records[0]
                try:
                    due, target, pace = _delay_of(record)
                except ValueError as exc:
                    outs.append(self.dead_letter(record, exc, int(now_ms)))
                else:
                    action = act(due, record.timestamp, part.tier, now_ms)
                    if action.kind == WAIT:
                        next_ready = min(next_ready, action.until_ms)
                        break
                    if action.kind == RELEASE:
                        self._release(key, record, target, pace, now_ms, outs, held=False)
                    elif due - now_ms < HOLD_MS:
                        heapq.heappush(self._timers,
                                       (due, self._timer_seq, key, record, target, pace))
                        self._timer_seq += 1
                        part.held.add(record.offset)
                    else:
                        outs.append(_out(tier_topic(action.tier), record, now_ms,
                                         delay_headers(due, target, pace)))
                        self._moved.inc()
                part.next_offset = part.records.popleft().offset + 1
        while self._timers and self._timers[0][0] <= now_ms:
            _, _, key, record, target, pace = heapq.heappop(self._timers)
            if key in self._parts:
                self._release(key, record, target, pace, now_ms, outs, held=True)
        if self._timers:
            next_ready = min(next_ready, self._timers[0][0])
        released, next_paced = self._pacers.release(now_ms)
        for key, record, target in released:
            outs.append(_out(target, record, now_ms))
            self._released.inc()
            part = self._parts.get(key)
            if part is not None:
                part.held.discard(record.offset)
        next_ready = min(next_ready, next_paced)
        self._next_ms = None if next_ready == math.inf else next_ready
        self._resume_drained()
        return outs

    def _release(self, key: PartitionKey, record: Record, target: str, pace: Pace | None,
                 now_ms: float, outs: list[Out], *, held: bool) -> None:
        """Release a due record now, or queue it behind its bucket's pace."""
        part = self._parts[key]
        if pace is not None:
            # Never laxer than the stage's books (which include its direct releases).
            self._pacers.offer(pace.bucket, Limit(pace.rate, pace.burst), (key, record, target),
                               pace.segments, pace.booked_ms)
            part.held.add(record.offset)
            return
        outs.append(_out(target, record, now_ms))
        self._released.inc()
        if held:
            part.held.discard(record.offset)

    def _resume_drained(self) -> None:
        """Read again a partition paused for a full buffer once half of it is gone."""
        for key, part in self._parts.items():
            if (part.paused and part.parked_at is None
                    and len(part.records) + len(part.held) < MAX_BUFFERED // 2):
                assert self._runtime is not None, "open() first"
                self._runtime.resume(*key)
                part.paused = False


def build(settings: Settings) -> Scheduler:
    """The registry's entry point."""
    return Scheduler(settings)


def _out(topic: str, record: Record, now_ms: float,
         extra: list[tuple[str, bytes]] | None = None) -> Out:
    """``record`` to ``topic`` (a catalogue short name) without its delay headers, stamped
    with the decision's time (the clock the pacing and the tier delays are computed on)."""
    headers = [(k, v) for k, v in (record.headers or []) if k not in _STRIPPED]
    return Out(topic, record.key or "", record.value or b"", headers + (extra or []),
               int(now_ms))


def _delay_of(record: Record) -> tuple[float, str, Pace | None]:
    headers = dict(record.headers or [])
    try:
        pace = Pace.decode(headers[H_PACE]) if H_PACE in headers else None
        return float(headers[H_DUE]), headers[H_TARGET].decode(), pace
    except (KeyError, ValueError, AttributeError) as exc:
        raise ValueError(f"delayed record without valid {H_DUE}/{H_TARGET} headers") from exc


def _ready_ms(record: Record, tier: int) -> float | None:
    """When ``record`` becomes actionable in ``tier`` (None: no valid delay headers; such a
    record is kept, to be dead-lettered in turn)."""
    try:
        due, _, _ = _delay_of(record)
    except ValueError:
        return None
    return min(due, record.timestamp + TIER_DELAYS_MS[tier])
