"""The delay-tier consumer: releases delayed records to their destination when due.

A plain confluent-kafka loop, not Quix Streams: it must act on the clock, and Quix processes only
when a record arrives. Per assigned partition it keeps the consumed-but-not-yet-actionable
records in order (see :mod:`pipeline.runtime.delay`), acts on heads as they become actionable,
and pauses a partition whose buffer is full.

Commit protocol, each loop turn: (1) produce every release and move, (2) flush the producer and
check every delivery, (3) commit, per partition, the offset of the first record not yet acted
on. A crash therefore repeats at most the actions of one turn (at-least-once; released records
keep their message id, so dispatch's journal absorbs a repeat).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from pipeline.metrics import DEAD_LETTERS, RECORDS
from pipeline.runtime.deadletter import Provenance, dead_letter_headers
from pipeline.runtime.delay import (
    H_DUE,
    H_TARGET,
    MOVE,
    RELEASE,
    TIER_DELAYS_MS,
    act,
    delay_headers,
    tier_topic,
)
from pipeline.settings import Settings

STAGE = "scheduler"
MAX_BUFFERED = 20_000  # per partition; beyond it the partition is paused
MAX_IDLE_WAIT_S = 0.05

log = structlog.get_logger("telex.scheduler")


@dataclass
class _Partition:
    tier: int
    records: deque[Message] = field(default_factory=deque)
    paused: bool = False


class Scheduler:
    """Consumes every delay tier and releases or moves records as they become actionable."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._clock = clock
        self._tiers = {settings.topic(tier_topic(i)): i for i in range(len(TIER_DELAYS_MS))}
        self._consumer = Consumer({
            **settings.kafka_config(), "group.id": settings.topic(STAGE),
            "auto.offset.reset": "earliest", "enable.auto.commit": False,
            "fetch.wait.max.ms": 20,
        })
        self._producer = Producer(settings.producer_config())
        self._parts: dict[tuple[str, int], _Partition] = {}
        self._running = True
        self._released = RECORDS.labels(STAGE, "released")
        self._moved = RECORDS.labels(STAGE, "moved")

    def stop(self) -> None:
        self._running = False

    def run(self) -> None:
        self._consumer.subscribe(list(self._tiers), on_assign=self._on_assign,
                                 on_revoke=self._on_revoke, on_lost=self._on_revoke)
        try:
            wait = MAX_IDLE_WAIT_S
            while self._running:
                for msg in self._consumer.consume(1000, wait):
                    self._buffer(msg)
                wait = self._turn()
        finally:
            self._consumer.close()
            self._producer.flush(30)

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._parts[(tp.topic, tp.partition)] = _Partition(self._tiers[tp.topic])

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Everything acted on is already committed (each turn commits); the rest is re-read
        # by the next owner from the committed offset.
        for tp in partitions:
            self._parts.pop((tp.topic, tp.partition), None)

    def _buffer(self, msg: Message) -> None:
        err = msg.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer_error", error=err.str())
            return
        part = self._parts.get((msg.topic(), msg.partition()))
        if part is None:
            return  # revoked while in flight
        part.records.append(msg)
        if len(part.records) >= MAX_BUFFERED and not part.paused:
            self._consumer.pause([TopicPartition(msg.topic(), msg.partition())])
            part.paused = True

    def _turn(self) -> float:
        """Act on every actionable head; flush; commit. Returns how long the next poll may wait."""
        now_ms = self._clock() * 1000
        next_ready = now_ms + MAX_IDLE_WAIT_S * 1000
        commits: list[TopicPartition] = []
        for (topic, partition), part in self._parts.items():
            acted = None
            while part.records:
                msg = part.records[0]
                try:
                    due, target = _delay_of(msg)
                except ValueError as exc:
                    self._dead_letter(msg, exc, now_ms)
                else:
                    action = act(due, msg.timestamp()[1], part.tier, now_ms)
                    if action.kind == RELEASE:
                        self._send(self._settings.topic(target), msg, [], now_ms)
                        self._released.inc()
                    elif action.kind == MOVE:
                        self._send(self._settings.topic(tier_topic(action.tier)), msg,
                                   delay_headers(due, target), now_ms)
                        self._moved.inc()
                    else:
                        next_ready = min(next_ready, action.until_ms)
                        break
                acted = part.records.popleft()
            if acted is not None:
                offset = part.records[0].offset() if part.records else acted.offset() + 1
                commits.append(TopicPartition(topic, partition, offset))
            if part.paused and len(part.records) < MAX_BUFFERED // 2:
                self._consumer.resume([TopicPartition(topic, partition)])
                part.paused = False
        if commits:
            if self._producer.flush(30) != 0:
                raise RuntimeError("scheduler: releases not acknowledged within 30 s")
            self._consumer.commit(offsets=commits, asynchronous=False)
        return max(0.0, min(MAX_IDLE_WAIT_S, (next_ready - self._clock() * 1000) / 1000))

    def _send(self, topic: str, msg: Message, extra: list[tuple[str, bytes]],
              now_ms: float) -> None:
        headers = [(k, v) for k, v in (msg.headers() or []) if k not in (H_DUE, H_TARGET)]
        self._produce(topic, msg.key(), msg.value(), headers + extra, int(now_ms))

    def _produce(self, topic: str, key: bytes | None, value: bytes | None,
                 headers: list[tuple[str, bytes]], ts: int) -> None:
        while True:
            try:
                self._producer.produce(topic, key=key, value=value, headers=headers,
                                       timestamp=ts, on_delivery=_check_delivery)
                return
            except BufferError:
                self._producer.poll(0.01)

    def _dead_letter(self, msg: Message, exc: Exception, now_ms: float) -> None:
        prov = Provenance(msg.topic(), msg.partition(), msg.offset(), msg.timestamp()[1])
        headers = dead_letter_headers(msg.headers(), prov, STAGE, exc, int(now_ms))
        self._produce(self._settings.topic("dlq-ratelimit"), msg.key(), msg.value(), headers,
                      int(now_ms))
        DEAD_LETTERS.labels(STAGE, type(exc).__name__).inc()
        log.warning("dead_lettered", stage=STAGE, topic=msg.topic(), offset=msg.offset(),
                    error=str(exc))


def _delay_of(msg: Message) -> tuple[float, str]:
    headers = dict(msg.headers() or [])
    try:
        return float(headers[H_DUE]), headers[H_TARGET].decode()
    except (KeyError, ValueError, AttributeError) as exc:
        raise ValueError(f"delayed record without valid {H_DUE}/{H_TARGET} headers") from exc


def _check_delivery(err: KafkaError | None, _msg: Message) -> None:
    if err is not None:
        # A failed delivery must not be committed past: stop the process; the records are
        # re-read from the last committed offset on restart.
        raise RuntimeError(f"scheduler: delivery failed: {err.str()}")
