"""The delay-tier consumer: releases delayed records to their destination when due.

A plain confluent-kafka loop, not (yet) a batch-runtime stage: it acts on the heads of tier
partitions and paces per bucket, which the runtime's per-key store timers (punctuation) do not
model. Status and reconcile deadlines no longer come through here (they are store timers).
Per assigned partition it keeps the consumed-but-not-yet-actionable records in order (see
:mod:`pipeline.runtime.delay`), acts on heads as they become actionable, and pauses a partition
whose buffer is full. A due record of a rate-limited bucket also waits for its bucket's pace
(see :class:`~pipeline.runtime.delay.Pace`) in a per-bucket queue, out of its partition's way,
so a late bucket never holds up another bucket's records.

Commit protocol, every ``commit_interval_s``: (1) every release and move was produced, (2) flush
the producer and check every delivery, (3) commit, per partition, the lowest offset not yet acted
on (a record waiting for its pace counts as not acted on). Flushing only at commits keeps the
loop on time between them. A crash repeats at most the actions taken since those offsets
(at-least-once; released records keep their message id, so dispatch's journal absorbs a
repeat).
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from pipeline.errors import CheckpointError
from pipeline.headers import H_DUE, H_PACE, H_TARGET
from pipeline.metrics import RECORDS
from pipeline.producing import produce_waiting
from pipeline.runtime.deadletter import counted, dead_letter_topic, headers_of
from pipeline.runtime.delay import (
    RELEASE,
    TIER_DELAYS_MS,
    WAIT,
    Pace,
    act,
    delay_headers,
    tier_topic,
)
from pipeline.runtime.membership import is_lost_membership
from pipeline.runtime.pacing import Pacers
from pipeline.settings import Settings
from pipeline.stages.ratelimit.gcra import Limit

STAGE = "scheduler"
MAX_BUFFERED = 20_000  # per partition, including records waiting for their pace
# Memory is spent only on records actionable soon: a record that becomes actionable later than
# this is not kept; its partition is parked (paused) until shortly before and re-read from that
# record (each wake re-reads at most one fetch per partition: memory traded for broker reads).
# Actionable order equals write order in a tier partition, so nothing behind it is needed
# before. Without this, a tier of long delays (receipt-window timers wait 48 h) kept
# MAX_BUFFERED records per partition in memory, for hours, in each of its partitions.
LOOKAHEAD_MS = 5_000
MAX_IDLE_WAIT_S = 0.05
# A record due within this much is held in memory until due instead of taking another hop
# through a tier topic: a hop costs a broker round trip, which would make it late. It pins its
# partition's committed offset for at most this long.
HOLD_MS = 1_000
_PACER_IDLE_MS = 3_600_000  # forget a bucket's pace after an hour without releases

log = structlog.get_logger("telex.scheduler")

PartitionKey = tuple[str, int]


@dataclass
class _Partition:
    tier: int
    records: deque[Message] = field(default_factory=deque)
    held: set[int] = field(default_factory=set)  # offsets waiting in a pace queue
    next_offset: int | None = None  # after the last record taken off ``records``
    paused: bool = False
    parked_at: int | None = None  # first offset not kept (re-read from here when it is time)
    wake_ms: float = 0.0  # when a parked partition is read again

    def commit_offset(self) -> int | None:
        candidates = [o for o in (
            self.records[0].offset() if self.records else self.next_offset,
            min(self.held) if self.held else None,
        ) if o is not None]
        return min(candidates) if candidates else None


class Scheduler:
    """Consumes every delay tier and releases or moves records as they become actionable."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._clock = clock
        self._tiers = {settings.topic(tier_topic(i)): i for i in range(len(TIER_DELAYS_MS))}
        self._consumer = Consumer(settings.consumer_config(settings.topic(STAGE)))
        self._producer = Producer(settings.producer_config())
        self._parts: dict[PartitionKey, _Partition] = {}
        self._pacers: Pacers[tuple[PartitionKey, Message, str]] = Pacers(_PACER_IDLE_MS)
        self._timers: list[tuple[float, int, PartitionKey, Message, str, Pace | None]] = []
        self._timer_seq = 0
        self._running = True
        self._touched: set[PartitionKey] = set()
        self._next_commit = 0.0
        self._released = RECORDS.labels(STAGE, "released")
        self._moved = RECORDS.labels(STAGE, "moved")

    def stop(self) -> None:
        self._running = False

    def buffered(self) -> int:
        """Records held in memory (waiting in a partition, a timer or a pace queue)."""
        return sum(len(p.records) + len(p.held) for p in list(self._parts.values()))

    def parked(self) -> list[PartitionKey]:
        """Partitions not read until their next record is nearly actionable."""
        return [k for k, p in list(self._parts.items()) if p.parked_at is not None]

    def run(self) -> None:
        self._consumer.subscribe(list(self._tiers), on_assign=self._on_assign,
                                 on_revoke=self._on_revoke, on_lost=self._on_lost)
        try:
            wait = MAX_IDLE_WAIT_S
            while self._running:
                for msg in self._consumer.consume(1000, wait):
                    self._buffer(msg)
                wait = self._turn()
            self._commit(self._touched)
        finally:
            self._consumer.close()
            self._producer.flush(30)

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._parts[(tp.topic, tp.partition)] = _Partition(self._tiers[tp.topic])

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Commit what was acted on; the rest (held records too) is re-read by the next owner
        # from the committed offset.
        self._commit(self._touched)
        self._touched = set()
        self._forget(partitions)

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions taken away without a revoke (the session expired, e.g. while the broker
        was down): they are not ours to commit any more; their next owner repeats what was
        released since the last commit (at-least-once, the same as after a crash)."""
        log.warning("partitions_lost", partitions=[(tp.topic, tp.partition) for tp in partitions])
        self._producer.flush(30)
        self._touched -= {(tp.topic, tp.partition) for tp in partitions}
        self._forget(partitions)

    def _forget(self, partitions: list[TopicPartition]) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        for key in gone:
            self._parts.pop(key, None)
        self._pacers.drop(lambda item: item[0] in gone)
        self._timers = [t for t in self._timers if t[2] not in gone]
        heapq.heapify(self._timers)

    def _buffer(self, msg: Message) -> None:
        err = msg.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer_error", error=err.str())
            return
        part = self._parts.get((msg.topic(), msg.partition()))
        if part is None:
            return  # revoked while in flight
        if part.parked_at is not None:
            return  # fetched before the pause took effect: re-read when the partition wakes
        ready = _ready_ms(msg, part.tier)
        if ready is not None and ready > self._clock() * 1000 + LOOKAHEAD_MS:
            self._park(part, msg, ready)
            return
        part.records.append(msg)
        if len(part.records) + len(part.held) >= MAX_BUFFERED and not part.paused:
            self._consumer.pause([TopicPartition(msg.topic(), msg.partition())])
            part.paused = True

    def _park(self, part: _Partition, msg: Message, ready_ms: float) -> None:
        """Stop reading ``msg``'s partition until ``ready_ms``; ``msg`` and whatever follows
        it are read again then (the committed offset never passes them)."""
        part.parked_at = msg.offset()
        part.wake_ms = ready_ms - LOOKAHEAD_MS / 2
        if not part.paused:
            self._consumer.pause([TopicPartition(msg.topic(), msg.partition())])
            part.paused = True

    def _wake(self, now_ms: float) -> float:
        """Resume parked partitions whose time has come; returns the next wake-up time."""
        next_wake = float("inf")
        for (topic, partition), part in self._parts.items():
            if part.parked_at is None:
                continue
            if part.wake_ms > now_ms:
                next_wake = min(next_wake, part.wake_ms)
                continue
            tp = TopicPartition(topic, partition, part.parked_at)
            self._consumer.resume([tp])
            self._consumer.seek(tp)
            part.parked_at = None
            part.paused = False
        return next_wake

    def _turn(self) -> float:
        """Act on every actionable record; flush; commit. Returns how long the next poll may
        wait."""
        now_ms = self._clock() * 1000
        next_ready = min(now_ms + MAX_IDLE_WAIT_S * 1000, self._wake(now_ms))
        touched: set[PartitionKey] = set()
        for key, part in self._parts.items():
            while part.records:
                msg = part.records[0]
                try:
                    due, target, pace = _delay_of(msg)
                except ValueError as exc:
                    self._dead_letter(msg, exc, now_ms)
                else:
                    action = act(due, msg.timestamp()[1], part.tier, now_ms)
                    if action.kind == WAIT:
                        next_ready = min(next_ready, action.until_ms)
                        break
                    if action.kind == RELEASE:
                        self._release(key, msg, target, pace, now_ms, held=False)
                    elif due - now_ms < HOLD_MS:
                        heapq.heappush(self._timers,
                                       (due, self._timer_seq, key, msg, target, pace))
                        self._timer_seq += 1
                        part.held.add(msg.offset())
                    else:
                        self._send(self._settings.topic(tier_topic(action.tier)), msg,
                                   delay_headers(due, target, pace), now_ms)
                        self._moved.inc()
                part.next_offset = part.records.popleft().offset() + 1
                touched.add(key)
        while self._timers and self._timers[0][0] <= now_ms:
            _, _, key, msg, target, pace = heapq.heappop(self._timers)
            if key in self._parts:
                self._release(key, msg, target, pace, now_ms, held=True)
                touched.add(key)
        if self._timers:
            next_ready = min(next_ready, self._timers[0][0])
        next_ready = min(next_ready, self._release_paced(now_ms, touched))
        self._touched |= touched
        if self._clock() >= self._next_commit:
            self._commit(self._touched)
            self._touched = set()
            self._next_commit = self._clock() + self._settings.commit_interval_s
        return max(0.0, min(MAX_IDLE_WAIT_S, (next_ready - self._clock() * 1000) / 1000))

    def _release(self, key: PartitionKey, msg: Message, target: str, pace: Pace | None,
                 now_ms: float, *, held: bool) -> None:
        """Release a due record now, or queue it behind its bucket's pace."""
        part = self._parts[key]
        if pace is not None:
            # Never laxer than the stage's books (which include its direct releases).
            self._pacers.offer(pace.bucket, Limit(pace.rate, pace.burst), (key, msg, target),
                               pace.segments, pace.booked_ms)
            part.held.add(msg.offset())
            return
        self._send(self._settings.topic(target), msg, [], now_ms)
        self._released.inc()
        if held:
            part.held.discard(msg.offset())

    def _release_paced(self, now_ms: float, touched: set[PartitionKey]) -> float:
        """Release queued records each bucket's limit allows now; returns the next due time."""
        released, next_ready = self._pacers.release(now_ms)
        for key, msg, target in released:
            self._send(self._settings.topic(target), msg, [], now_ms)
            self._released.inc()
            part = self._parts.get(key)
            if part is not None:
                part.held.discard(msg.offset())
                touched.add(key)
        return next_ready

    def _commit(self, touched: set[PartitionKey]) -> None:
        commits = []
        for key in touched:
            part = self._parts.get(key)
            if part is None:
                continue
            offset = part.commit_offset()
            if offset is not None:
                commits.append(TopicPartition(key[0], key[1], offset))
            if (part.paused and part.parked_at is None
                    and len(part.records) + len(part.held) < MAX_BUFFERED // 2):
                self._consumer.resume([TopicPartition(*key)])
                part.paused = False
        if self._producer.flush(30) != 0:
            raise CheckpointError("scheduler: releases not acknowledged within 30 s")
        if commits:
            try:
                self._consumer.commit(offsets=commits, asynchronous=False)
            except KafkaException as exc:
                if not is_lost_membership(exc):
                    raise
                log.warning("commit_after_lost_membership", error=exc.args[0].str())

    def _send(self, topic: str, msg: Message, extra: list[tuple[str, bytes]],
              now_ms: float) -> None:
        headers = [(k, v) for k, v in (msg.headers() or [])
                   if k not in (H_DUE, H_TARGET, H_PACE)]
        self._produce(topic, msg.key(), msg.value(), headers + extra, int(now_ms))

    def _produce(self, topic: str, key: bytes | None, value: bytes | None,
                 headers: list[tuple[str, bytes]], ts: int) -> None:
        produce_waiting(self._producer, topic, key=key, value=value, headers=headers,
                        timestamp=ts, on_delivery=_check_delivery)

    def _dead_letter(self, msg: Message, exc: Exception, now_ms: float) -> None:
        self._produce(self._settings.topic(dead_letter_topic(STAGE)), msg.key(), msg.value(),
                      headers_of(msg, STAGE, exc, int(now_ms)), int(now_ms))
        counted(STAGE, exc, msg.topic(), msg.partition(), msg.offset())


def _delay_of(msg: Message) -> tuple[float, str, Pace | None]:
    headers = dict(msg.headers() or [])
    try:
        pace = Pace.decode(headers[H_PACE]) if H_PACE in headers else None
        return float(headers[H_DUE]), headers[H_TARGET].decode(), pace
    except (KeyError, ValueError, AttributeError) as exc:
        raise ValueError(f"delayed record without valid {H_DUE}/{H_TARGET} headers") from exc


def _ready_ms(msg: Message, tier: int) -> float | None:
    """When ``msg`` becomes actionable in ``tier`` (None: no valid delay headers; such a
    record is kept, to be dead-lettered in turn)."""
    try:
        due, _, _ = _delay_of(msg)
    except ValueError:
        return None
    return min(due, msg.timestamp()[1] + TIER_DELAYS_MS[tier])


def _check_delivery(err: KafkaError | None, _msg: Message) -> None:
    if err is not None:
        # A failed delivery must not be committed past: stop the process; the records are
        # re-read from the last committed offset on restart.
        raise CheckpointError(f"scheduler: delivery failed: {err.str()}")


def run(settings: Settings) -> int:
    """``telex worker scheduler``: release delayed records until SIGTERM/SIGINT."""
    import signal

    from pipeline.topics import admin_client, apply_topics, catalogue

    apply_topics(admin_client(settings), catalogue(settings))
    scheduler = Scheduler(settings)
    signal.signal(signal.SIGTERM, lambda *_: scheduler.stop())
    signal.signal(signal.SIGINT, lambda *_: scheduler.stop())
    scheduler.run()
    return 0
