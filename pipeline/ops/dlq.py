"""``telex dlq``: dead letters read, replayed and marked handled, on the broker.

Topics: ``dlq-<stage>`` for every stage in the catalogue, and ``dlq-parked``. A dead letter
keeps the original key and value bytes; ``telex.dlq.*`` headers say where it came from and why
it failed (:mod:`pipeline.runtime.deadletter`).

Cursors are committed offsets, per dead-letter partition, of two consumer groups that nothing
consumes with:

* ``<prefix>dlq-handled``: records before it are done. ``purge`` moves it (after confirmation);
  ``list``, ``show`` and ``replay`` start after it unless ``--all``.
* ``<prefix>dlq-replay``: records before it were replayed, parked or skipped. ``replay`` moves
  it only after its records are acknowledged, so an interrupted replay resumes where it stopped.

Both only move forward, across a leading run of records the command acted on: a record left out
by a filter stops them (:func:`pipeline.ops.dlq_decision.cursor_after`).

Replay, per run:

1. read each selected partition from its cursors to the end offset seen at the start;
2. plan each record (:func:`~pipeline.ops.dlq_decision.plan_replay`): filters; a record that
   came back after a replay goes to ``dlq-parked`` (never replayed again unless ``dlq-parked``
   is named); a message whose dispatch journal says the carrier may have it is skipped
   ("already submitted"): the journal is read only on the partitions its message ids hash to;
   everything else goes to its original topic, or to ``--to``;
3. produce (idempotent, acks=all), at most ``--rate`` records per second, with the original
   key, value and headers plus ``telex.replay.*`` provenance;
4. per chunk of records: flush, then move the replay cursor over what was acknowledged.

``--dry-run`` stops after step 2: it reads, but produces and commits nothing. Run one replay
at a time: the cursor records progress, it is not a lock.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient

from pipeline.codec import AvroCodec
from pipeline.errors import BrokerError, CodecError, TopicError
from pipeline.ops import offsets
from pipeline.ops.dlq_decision import (
    DeadLetter,
    Filter,
    Outcome,
    ReplayPlan,
    TopicSummary,
    cursor_after,
    park_headers,
    plan_replay,
    read_from,
    replay_headers,
    retained_before,
)
from pipeline.ops.health import admin
from pipeline.ops.keyhash import partition_for
from pipeline.ops.topic_reader import read_ranges
from pipeline.producing import produce_waiting
from pipeline.runtime.registry import dead_letter_topics
from pipeline.settings import Settings
from pipeline.topics import find

PARKED = "dlq-parked"
DLQ_TOPICS = (*dead_letter_topics(), PARKED)
HANDLED_GROUP = "dlq-handled"
REPLAY_GROUP = "dlq-replay"
# Records produced between two flushes: bounds what an interrupted replay produces without
# moving its cursor (those are offered again, and absorbed by the journal check or the stage).
CHUNK = 500

TP = tuple[str, int]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Partition:
    """One dead-letter partition: retained offsets and both cursors."""

    topic: str
    partition: int
    log_start: int
    end: int
    handled: int | None
    replayed: int | None

    @property
    def tp(self) -> TP:
        return (self.topic, self.partition)


class _Broker:
    """An admin connection and the topic metadata seen when the command started."""

    def __init__(self, settings: Settings, timeout: float) -> None:
        self.settings = settings
        self.timeout = timeout
        self.client: AdminClient = admin(settings, timeout)
        self.meta = self.client.list_topics(timeout=timeout).topics

    def select(self, names: Sequence[str] | None, *, include_parked: bool) -> list[str]:
        """Full names of the dead-letter topics named (all present ones by default)."""
        if not names:
            wanted = [n for n in DLQ_TOPICS if include_parked or n != PARKED]
            present = [self.settings.topic(n) for n in wanted
                       if self.settings.topic(n) in self.meta]
            if not present:  # most likely a wrong TELEX_TOPIC_PREFIX
                raise TopicError(f"no dead-letter topics ({self.settings.topic('dlq-*')}) on "
                                 f"the broker at {self.settings.kafka_bootstrap_servers}")
            return present
        out = []
        for name in names:
            short = name.removeprefix(self.settings.topic_prefix)
            if short not in DLQ_TOPICS:
                raise TopicError(f"unknown dead-letter topic {name!r} (known: "
                                 f"{', '.join(DLQ_TOPICS)})")
            out.append(self.require(self.settings.topic(short)))
        return out

    def require(self, topic: str) -> str:
        if topic not in self.meta:
            raise TopicError(f"topic {topic} does not exist on the broker at "
                             f"{self.settings.kafka_bootstrap_servers} (run `telex topics "
                             "apply`?)")
        return topic

    def partitions(self, topics: Sequence[str]) -> list[Partition]:
        tps = [(t, p) for t in topics for p in sorted(self.meta[t].partitions)]
        logs = offsets.log_offsets(self.client, tps, self.timeout)
        handled = offsets.committed(self.client, self.settings.topic(HANDLED_GROUP), tps,
                                    self.timeout)
        replayed = offsets.committed(self.client, self.settings.topic(REPLAY_GROUP), tps,
                                     self.timeout)
        return [Partition(t, p, *logs[(t, p)], handled.get((t, p)), replayed.get((t, p)))
                for t, p in tps]

    def commit(self, group: str, moves: Mapping[TP, int]) -> None:
        offsets.commit(self.client, self.settings.topic(group), moves, self.timeout)


def _read(settings: Settings, codec: AvroCodec, parts: Sequence[Partition],
          start: Callable[[Partition], int], timeout: float) -> list[DeadLetter]:
    ranges = {p.tp: (start(p), p.end) for p in parts}
    records = [DeadLetter.parse(m.topic(), m.partition(), m.offset(), m.timestamp()[1],
                                m.key(), m.value(), m.headers(), codec)
               for m in _read_or_fail(settings, ranges, timeout)]
    records.sort(key=lambda d: (d.topic, d.partition, d.offset))
    return records


def _read_or_fail(settings: Settings, ranges: Mapping[TP, tuple[int, int]], timeout: float
                  ) -> list[Message]:
    try:
        return read_ranges(settings, ranges, timeout=max(timeout, 30.0))
    except TimeoutError as exc:
        raise BrokerError(str(exc)) from None


# --- list and show -------------------------------------------------------------------------


def summarise(settings: Settings, names: Sequence[str] | None = None, *,
              everything: bool = False, timeout: float = 10.0,
              codec: AvroCodec | None = None) -> list[TopicSummary]:
    """Per dead-letter topic: records after the handled cursor, by stage and error class."""
    broker = _Broker(settings, timeout)
    parts = broker.partitions(broker.select(names, include_parked=True))
    by_tp = {p.tp: p for p in parts}
    summaries = {t: TopicSummary(t.removeprefix(settings.topic_prefix))
                 for t in dict.fromkeys(p.topic for p in parts)}
    for p in parts:
        if not everything:
            summaries[p.topic].handled += retained_before(p.log_start, p.end, p.handled)
    codec = codec or AvroCodec.from_settings(settings)
    for dl in _read(settings, codec, parts,
                    lambda p: read_from(p.log_start, p.handled, everything=everything), timeout):
        replayed = by_tp[(dl.topic, dl.partition)].replayed
        summaries[dl.topic].add(dl, replayed=replayed is not None and dl.offset < replayed)
    return list(summaries.values())


def select(settings: Settings, names: Sequence[str] | None, flt: Filter, *,
           everything: bool = False, timeout: float = 10.0,
           codec: AvroCodec | None = None) -> list[DeadLetter]:
    """Dead letters matching ``flt`` (oldest first per partition), after the handled cursor."""
    broker = _Broker(settings, timeout)
    parts = broker.partitions(broker.select(names, include_parked=True))
    codec = codec or AvroCodec.from_settings(settings)
    found = [dl for dl in _read(settings, codec, parts,
                                lambda p: read_from(p.log_start, p.handled,
                                                    everything=everything), timeout)
             if flt.matches(dl)]
    found.sort(key=lambda d: d.timestamp_ms)
    return found


# --- replay --------------------------------------------------------------------------------


@dataclass(slots=True)
class ReplayReport:
    """What a replay did (or, dry, would do)."""

    dry_run: bool
    plans: list[tuple[DeadLetter, ReplayPlan]] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    cursor: dict[TP, int] = field(default_factory=dict)  # replay cursor moves
    interrupted: bool = False

    @property
    def complete(self) -> bool:
        """Nothing failed or was left without a destination."""
        return not (self.errors or self.interrupted or self.counts[Outcome.NO_TARGET]
                    or self.counts["failed"])


def journal_latest(broker: _Broker, codec: AvroCodec, message_ids: set[str]
                   ) -> dict[str, dict[str, Any]]:
    """Latest dispatch-journal entry per message id, reading only the partitions they hash to
    (the journal is compacted and keyed by message id, partitioned with murmur2)."""
    topic = broker.settings.topic("dispatch-journal")
    if not message_ids or topic not in broker.meta:
        return {}
    count = len(broker.meta[topic].partitions)
    tps = [(topic, p) for p in sorted({partition_for(m, count) for m in message_ids})]
    latest: dict[str, dict[str, Any]] = {}
    for msg in _read_or_fail(broker.settings, offsets.log_offsets(broker.client, tps,
                                                                   broker.timeout),
                             broker.timeout):
        key = (msg.key() or b"").decode("utf-8", "replace")
        if key not in message_ids:
            continue
        if msg.value() is None:  # tombstone: the journal forgot the message
            latest.pop(key, None)
            continue
        try:
            latest[key] = codec.decode(msg.value(), expected="dispatch_journal_entry")
        except CodecError:
            continue  # not a journal entry we can judge by: no verdict from it
    return latest


class Pacer:
    """At most ``rate`` records per second (None: no cap), also after a stall: a flush or a
    slow broker delays the schedule instead of letting the overdue records out in a burst
    (a catch-up burst would defeat the cap the operator chose)."""

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._interval = 1 / rate if rate else 0.0
        self._clock, self._sleep = clock, sleep
        self._next: float | None = None

    def wait(self) -> None:
        if not self._interval:
            return
        now = self._clock()
        if self._next is not None and (ahead := self._next - now) > 0:
            self._sleep(ahead)  # the rate cap itself, not a readiness wait
            now = self._next
        self._next = now + self._interval


def replay(settings: Settings, names: Sequence[str] | None, flt: Filter, *,
           to: str | None = None, everything: bool = False, dry_run: bool = False,
           rate: float | None = None, by: str = "unknown",
           progress: Callable[[int, int], None] | None = None, timeout: float = 10.0,
           codec: AvroCodec | None = None) -> ReplayReport:
    """Replay dead letters (see the module docstring for the protocol)."""
    broker = _Broker(settings, timeout)
    to_topic = broker.require(find(settings, to).name) if to else None
    parts = broker.partitions(broker.select(names, include_parked=False))
    codec = codec or AvroCodec.from_settings(settings)
    records = _read(settings, codec, parts, lambda p: read_from(
        p.log_start, p.handled, p.replayed, everything=everything), timeout)
    ids = {dl.message_id for dl in records if flt.matches(dl) and dl.message_id}
    journal = journal_latest(broker, codec, {i for i in ids if i is not None})
    parked = settings.topic(PARKED)
    report = ReplayReport(dry_run)
    for dl in records:
        plan = plan_replay(dl, flt, journal.get(dl.message_id or ""), to_topic=to_topic,
                           parked_topic=parked, existing=broker.meta)
        report.plans.append((dl, plan))
    if dry_run:
        report.counts.update(plan.outcome for _, plan in report.plans)
        return report
    _execute(broker, parts, report, rate=rate, by=by, progress=progress)
    return report


def _execute(broker: _Broker, parts: Sequence[Partition], report: ReplayReport, *,
             rate: float | None, by: str, progress: Callable[[int, int], None] | None) -> None:
    producer = Producer(broker.settings.producer_config())
    pacer = Pacer(rate)
    total = sum(p.outcome in (Outcome.REPLAY, Outcome.PARK) for _, p in report.plans)
    acked: set[tuple[str, int, int]] = set()
    produced = 0
    by_tp: dict[TP, list[tuple[DeadLetter, ReplayPlan]]] = defaultdict(list)
    for dl, plan in report.plans:
        by_tp[(dl.topic, dl.partition)].append((dl, plan))

    def delivered(key: tuple[str, int, int]) -> Callable[[KafkaError | None, Message], None]:
        def done(err: KafkaError | None, _msg: Message) -> None:
            if err is None:
                acked.add(key)
            else:
                report.errors.append(f"{key[0]}[{key[1]}]@{key[2]}: {err.str()}")
        return done

    def settle(part: Partition, items: Sequence[tuple[DeadLetter, ReplayPlan]],
               upto: int, end: int) -> None:
        """Flush, count what was acknowledged and move the cursor over it."""
        if producer.flush(30) != 0:
            report.errors.append("records not acknowledged within 30 s")
        acted = set()
        for dl, plan in items[:upto]:
            ok = plan.outcome is Outcome.ALREADY_SUBMITTED or (
                plan.outcome in (Outcome.REPLAY, Outcome.PARK)
                and (dl.topic, dl.partition, dl.offset) in acked)
            if ok:
                acted.add(dl.offset)
        new = cursor_after([dl.offset for dl, _ in items[:upto]], acted, end)
        floor = part.replayed if part.replayed is not None else part.log_start
        if new > max(floor, report.cursor.get(part.tp, -1)):
            broker.commit(REPLAY_GROUP, {part.tp: new})
            report.cursor[part.tp] = new

    parts_by_tp = {p.tp: p for p in parts}
    try:
        for tp, items in by_tp.items():
            part = parts_by_tp[tp]
            for i, (dl, plan) in enumerate(items, 1):
                if plan.outcome in (Outcome.REPLAY, Outcome.PARK):
                    pacer.wait()
                    now = _now_ms()
                    headers = (replay_headers(dl, at_ms=now, by=by)
                               if plan.outcome is Outcome.REPLAY
                               else park_headers(dl, at_ms=now, by=by))
                    assert plan.target is not None
                    produce_waiting(producer, plan.target, key=dl.key, value=dl.value,
                                    headers=headers,
                                    on_delivery=delivered((dl.topic, dl.partition, dl.offset)))
                    producer.poll(0)
                    produced += 1
                    if progress is not None:
                        progress(produced, total)
                if i % CHUNK == 0 and i < len(items):
                    settle(part, items, i, dl.offset + 1)
            settle(part, items, len(items), part.end)
    except KeyboardInterrupt:
        report.interrupted = True
        producer.flush(30)
        for tp, items in by_tp.items():  # keep what was acknowledged
            part = parts_by_tp[tp]
            settle(part, items, len(items), items[-1][0].offset + 1)
    finally:
        _count(report, acked)


def _count(report: ReplayReport, acked: set[tuple[str, int, int]]) -> None:
    for dl, plan in report.plans:
        if plan.outcome in (Outcome.REPLAY, Outcome.PARK) and \
                (dl.topic, dl.partition, dl.offset) not in acked:
            report.counts["failed"] += 1
        else:
            report.counts[plan.outcome] += 1


# --- purge ---------------------------------------------------------------------------------


@dataclass(slots=True)
class PurgePlan:
    """Where the handled cursor moves, and how many dead letters that marks done."""

    moves: dict[TP, int] = field(default_factory=dict)
    marked: Counter[str] = field(default_factory=Counter)  # per topic (short name)
    left: int = 0  # pending records the cursor cannot pass (filtered out, or behind one)


def plan_purge(settings: Settings, names: Sequence[str] | None, flt: Filter, *,
               timeout: float = 10.0, codec: AvroCodec | None = None) -> PurgePlan:
    """What ``purge`` would mark handled; changes nothing."""
    broker = _Broker(settings, timeout)
    parts = broker.partitions(broker.select(names, include_parked=True))
    codec = codec or AvroCodec.from_settings(settings)
    records = _read(settings, codec, parts, lambda p: read_from(p.log_start, p.handled),
                    timeout)
    by_tp: dict[TP, list[DeadLetter]] = defaultdict(list)
    for dl in records:
        by_tp[(dl.topic, dl.partition)].append(dl)
    plan = PurgePlan()
    for part in parts:
        read = by_tp.get(part.tp, [])
        new = cursor_after([dl.offset for dl in read],
                           {dl.offset for dl in read if flt.matches(dl)}, part.end)
        current = part.handled if part.handled is not None else part.log_start
        if new > current:
            plan.moves[part.tp] = new
        marked = sum(dl.offset < new for dl in read)
        plan.marked[part.topic.removeprefix(settings.topic_prefix)] += marked
        plan.left += len(read) - marked
    return plan


def commit_purge(settings: Settings, plan: PurgePlan, *, timeout: float = 10.0) -> None:
    """Move the handled cursor as planned."""
    _Broker(settings, timeout).commit(HANDLED_GROUP, plan.moves)
