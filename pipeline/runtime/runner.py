"""The batch-at-a-time stage runtime on confluent-kafka: poll, decide, produce, checkpoint.

One :class:`StageRunner` runs one :class:`~pipeline.runtime.stage.Stage` in consumer group
``<prefix><stage>``:

1. **Poll** up to ``batch_max`` records (waits only when nothing is buffered, and returns as
   soon as one record arrives: batching never adds latency at a low rate).
2. **Decide**: the stage turns the batch into outputs, reading and writing its stores.
3. **Produce** the outputs at once (idempotent producer, ``acks=all``); they are on their way
   while the next batch is polled.
4. **Checkpoint** every ``commit_interval_s`` or ``checkpoint_records`` records, in this order
   (at-least-once; each step's failure stops the worker before the next, and the supervisor
   restarts it):
   a. sweep expired entries of every store (tombstones; an idle worker sweeps every
      ``commit_interval_s`` too, and checkpoints only when that removed something); produce
      the last record per key of every compacted view output
      (:attr:`~pipeline.runtime.stage.Out.view`) since the last checkpoint;
   b. produce **one changelog record per dirty key** to the store's compacted changelog topic,
      on the input's partition number, headed with the input offset being committed;
   c. flush the producer and check every delivery report: any failure stops the worker;
   d. commit the input offsets, each no further than the stage's commit floor (the lowest
      offset it still holds undecided, step 5). A commit refused because a rebalance is under
      way or the group moved on is logged and retried at the next checkpoint; partitions
      really lost are dropped by ``on_lost``, and their new owner re-reads the uncommitted
      records;
   e. tell the stores their changes are durable (a disk store writes them now, with the
      changelog end offset, so its local copy never runs ahead of the changelog).

   A store whose changelog is a topic the stage writes itself (``StoreSpec.changelog``:
   dispatch's journal) gets no records in step b: the stage's outputs are its changelog, and
   step c acknowledges them before step e writes the entries locally.

5. **Held records** (a stage that holds records across batches, the delay-tier scheduler;
   every hook defaults to "nothing held"): the stage may pause a partition and resume it,
   optionally from an offset (``pause``/``resume`` of the
   :class:`~pipeline.runtime.stage.Runtime` given through ``Stage.open``), to bound what it
   holds or to park a partition whose next record is far off; the checkpoint commits each
   partition no further than ``Stage.commit_floor``, so a held record is re-read after a crash,
   never lost; the poll's wait ends at ``Stage.next_wake_ms`` (to the millisecond: pacing), when
   ``Stage.wake`` produces what came due, checkpointed like a batch's outputs; and
   ``Stage.forget`` drops what it holds of partitions revoked (after the checkpoint) or lost.

**Hooks for stages with I/O of their own** (:class:`~pipeline.runtime.stage.Runtime`, the
runner itself, handed over by :meth:`~pipeline.runtime.stage.Stage.open` before it
subscribes):
``durable()`` runs step c on demand inside ``process`` (a write-ahead barrier: dispatch's
ATTEMPTING entries are on the broker before any carrier call); ``emit(outs)`` produces records
that arrive outside a batch, from any thread (carrier receipts), checked at the next step c.
A batch's input offsets become committable only once ``process`` returned; after a failed
batch or checkpoint the worker stops without checkpointing again (the revocation on close
drops the partitions' state), so nothing of the failed batch is committed or stored.

**Punctuation** (timers kept in the stores, see :mod:`pipeline.runtime.stage`): at most every
``punctuate_interval_s``, whether records arrive or not (the poll's wait ends at the next
punctuation, so an idle worker wakes for it without spinning), the stage's
:meth:`~pipeline.runtime.stage.Stage.punctuate` runs for every assigned partition's store. Its
outputs are produced at once and its store changes (fired timers cleared) are dirty keys: both
go through the next checkpoint exactly like a batch's, so a crash before that checkpoint
restores the timers and fires them again (at least once).

**Restore**: on assignment (cooperative-sticky: only moved partitions pause) each store is
rebuilt from its changelog before any input record of that partition is processed; changelog
records headed with an input offset beyond the partition's committed offset are skipped (they
belong to a checkpoint that never committed, whose input is about to be processed again).
On revocation the runner checkpoints first; on lost membership it drops the partitions' state.
A record polled in the same call that revoked its partition is left to the new owner.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import structlog
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from pipeline.broker_retry import retrying
from pipeline.errors import CheckpointError
from pipeline.headers import H_SOURCE_OFFSET
from pipeline.metrics import (
    RUNTIME_BATCH_RECORDS,
    RUNTIME_CHANGELOG_RECORDS,
    RUNTIME_CHECKPOINT_SECONDS,
    RUNTIME_RESTORED_KEYS,
    RUNTIME_VIEW_RECORDS,
)
from pipeline.producing import produce_waiting
from pipeline.runtime.membership import is_lost_membership
from pipeline.runtime.stage import Out, Record, Stage, StoreSpec, header_value
from pipeline.runtime.store import DiskStore, MemoryStore, Store
from pipeline.settings import Settings

__all__ = [
    "StageRunner",
    "changelog_topic",
    "restore",
]

T = TypeVar("T")
_SWEEP_LIMIT = 200_000

_log = structlog.get_logger("telex.runtime")


def changelog_topic(settings: Settings, stage: str, store: str) -> str:
    """Full name of a store's changelog topic (one per stage store, compacted)."""
    return settings.topic(f"{stage}-{store}-changelog")


class StageRunner:
    """Runs one stage until :meth:`stop`; see the module docstring for the protocol."""

    def __init__(self, settings: Settings, stage: Stage, *, group: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.stage = stage
        self.group = group or settings.topic(stage.name)
        self._clock = clock
        self._stop = threading.Event()
        self._inputs = {settings.topic(i.topic): i for i in stage.inputs}
        self._topic_names = _TopicNames(settings)
        self._producer = Producer({**settings.runtime_producer_config(),
                                   "on_delivery": self._on_delivery})
        self._consumer = Consumer({**settings.runtime_consumer_config(self.group)})
        self._restorer: Consumer | None = None
        self._stores: dict[tuple[str, int], Store] = {}
        self._positions: dict[tuple[str, int], int] = {}  # next offset to commit
        # Partitions this member owns now. A poll can return a record and then, in the same
        # call, revoke its partition (the rebalance callback runs inside poll/consume): such a
        # record belongs to the new owner, which reads it from the committed offset.
        self._assigned: set[tuple[str, int]] = set()
        self._uncommitted = 0
        # View records waiting for the checkpoint, the last per (topic, key); at most one per
        # record processed since the last checkpoint (bounded by ``checkpoint_records``).
        self._views: dict[tuple[str, str], Out] = {}
        self._delivery_errors: list[str] = []
        self._state_root = Path(settings.state_dir) / self.group
        self._batch_max = min(settings.batch_max, stage.batch_max or settings.batch_max)
        self._failed = False  # a batch or checkpoint raised: never checkpoint after it
        self._batch_metric = RUNTIME_BATCH_RECORDS.labels(stage.name)
        self._changelog_metric = RUNTIME_CHANGELOG_RECORDS.labels(stage.name)
        self._checkpoint_metric = RUNTIME_CHECKPOINT_SECONDS.labels(stage.name)
        self._views_produced = RUNTIME_VIEW_RECORDS.labels(stage.name, "produced")
        self._views_superseded = RUNTIME_VIEW_RECORDS.labels(stage.name, "superseded")

    # -- lifecycle --

    def stop(self) -> None:
        """Ask the loop to finish its batch, checkpoint and leave the group."""
        self._stop.set()

    def run(self) -> None:
        try:
            self.stage.open(self)
            self._run()
        except BaseException:
            self._failed = True
            raise
        finally:
            self._close()

    def emit(self, outs: Sequence[Out]) -> None:
        """Produce records that belong to no batch (see the module docstring); any thread."""
        self._produce(outs)

    def durable(self) -> None:
        """Step c on demand: everything produced so far is acknowledged, or this raises."""
        left = self._producer.flush(self.settings.flush_timeout_s)
        if left or self._delivery_errors:
            errors, self._delivery_errors = self._delivery_errors[:5], []
            raise CheckpointError(f"{self.stage.name}: {left} records unacknowledged after "
                                  f"{self.settings.flush_timeout_s} s; errors: {errors}")

    def pause(self, topic: str, partition: int) -> None:
        """Fetch nothing more of the partition until :meth:`resume` (a holding stage)."""
        self._consumer.pause([TopicPartition(topic, partition)])

    def resume(self, topic: str, partition: int, offset: int | None = None) -> None:
        """Fetch the partition again, from ``offset`` when given (a seek)."""
        if offset is None:
            self._consumer.resume([TopicPartition(topic, partition)])
            return
        tp = TopicPartition(topic, partition, offset)
        self._consumer.resume([tp])
        self._consumer.seek(tp)

    def _run(self) -> None:
        self._consumer.subscribe(list(self._inputs), on_assign=self._on_assign,
                                 on_revoke=self._on_revoke, on_lost=self._on_lost)
        _log.info("stage_running", stage=self.stage.name, group=self.group,
                  inputs=sorted(self._inputs))
        interval = self.settings.commit_interval_s
        next_checkpoint = time.monotonic() + interval
        punctuating = type(self.stage).punctuate is not Stage.punctuate
        tick = self.settings.punctuate_interval_s
        next_punctuation = time.monotonic() + tick
        waking = type(self.stage).next_wake_ms is not Stage.next_wake_ms
        while not self._stop.is_set():
            wait = min(0.5, interval)
            if punctuating:
                wait = max(0.0, min(wait, next_punctuation - time.monotonic()))
            if waking:
                wait = self._until_wake(wait)
            batch = self._poll(wait)
            if batch:
                self._process(batch)
            if waking:
                self.wake()
            if punctuating and time.monotonic() >= next_punctuation:
                self.punctuate()
                next_punctuation = time.monotonic() + tick
            due = time.monotonic() >= next_checkpoint
            if due and not self._uncommitted:
                self._sweep_idle()
            if self._uncommitted and (due or
                                      self._uncommitted >= self.settings.checkpoint_records):
                self.checkpoint()
            if due:
                next_checkpoint = time.monotonic() + interval
        self.checkpoint()

    def _close(self) -> None:
        try:
            self._consumer.close()  # leaves the group (revoke → checkpoint of anything left)
        except (KafkaException, RuntimeError) as exc:
            _log.warning("consumer_close_failed", stage=self.stage.name, error=str(exc))
        for store in self._stores.values():
            store.close()
        self._stores.clear()
        if self._restorer is not None:
            self._restorer.close()
        try:
            self.stage.close()  # before the flush: what it emits while closing goes out too
        finally:
            self._producer.flush(30)
        _log.info("stage_stopped", stage=self.stage.name)

    # -- the loop --

    def _poll(self, wait_s: float) -> list[Message]:
        batch = self._consumer.consume(self._batch_max, 0)
        if not batch:
            first = self._consumer.poll(wait_s)
            if first is None:
                return []
            batch = [first, *self._consumer.consume(self._batch_max - 1, 0)]
        return batch

    def _process(self, batch: list[Message]) -> None:
        records: list[Record] = []
        positions = self._positions
        assigned = self._assigned
        for msg in batch:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                _log.warning("consume_error", stage=self.stage.name, error=err.str())
                continue
            key = msg.key()
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            if (topic, partition) not in assigned:
                continue  # revoked while this batch was being polled: not ours to process
            records.append(Record(topic, partition, offset,
                                  None if key is None else key.decode("utf-8", "replace"),
                                  msg.value(), msg.headers(), msg.timestamp()[1]))
        if not records:
            return
        self._batch_metric.observe(len(records))
        now_ms = int(self._clock() * 1000)
        outs = self.stage.process(records, self._stores, now_ms)
        self._produce(outs)
        for record in records:  # committable only now that the batch is decided
            positions[(record.topic, record.partition)] = record.offset + 1
        self._uncommitted += len(records)

    def _until_wake(self, wait_s: float) -> float:
        """``wait_s``, cut to when the stage's held work comes due (rounded up to the ms:
        librdkafka waits whole milliseconds, and waking early would spin)."""
        due_ms = self.stage.next_wake_ms()
        if due_ms is None:
            return wait_s
        return max(0.0, min(wait_s, math.ceil(due_ms - self._clock() * 1000) / 1000))

    def wake(self) -> None:
        """Let the stage act on held work come due; outputs produced, checkpointed later."""
        due_ms = self.stage.next_wake_ms()
        now_ms = int(self._clock() * 1000)
        if due_ms is None or due_ms > now_ms:
            return
        before = sum(store.dirty_count() for store in self._stores.values())
        outs = self.stage.wake(now_ms, self._stores)
        if outs:
            self._produce(outs)
        changed = sum(store.dirty_count() for store in self._stores.values()) - before
        if outs or changed:
            self._uncommitted += max(len(outs), changed)

    def punctuate(self) -> None:
        """Fire every assigned store's due timers; outputs are produced, changes checkpointed."""
        now_ms = int(self._clock() * 1000)
        for store in list(self._stores.values()):
            before = store.dirty_count()
            outs = self.stage.punctuate(now_ms, store)
            if outs:
                self._produce(outs)
            changed = store.dirty_count() - before
            if outs or changed:
                self._uncommitted += max(1, len(outs), changed)

    def _produce(self, outs: Sequence[Out]) -> None:
        produce = self._producer.produce
        names = self._topic_names
        views = self._views
        for out in outs:
            if out.view:
                if views.pop((out.topic, out.key), None) is not None:
                    self._views_superseded.inc()
                views[(out.topic, out.key)] = out  # re-inserted: produced in the order set
                continue
            topic = names[out.topic]
            try:
                produce(topic, out.value, out.key, out.partition, headers=out.headers or None,
                        timestamp=out.timestamp_ms)
            except BufferError:
                produce_waiting(self._producer, topic, value=out.value, key=out.key,
                                partition=out.partition, headers=out.headers or None,
                                timestamp=out.timestamp_ms)
        self._producer.poll(0)  # serve delivery reports (errors only)

    def _produce_views(self) -> None:
        """Step a: the waiting view records, each key's last, in the order they were set."""
        if not self._views:
            return
        views, self._views = list(self._views.values()), {}
        names = self._topic_names
        for out in views:
            produce_waiting(self._producer, names[out.topic], value=out.value, key=out.key,
                            headers=out.headers or None, timestamp=out.timestamp_ms)
        self._views_produced.inc(len(views))

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._delivery_errors.append(f"{msg.topic()}[{msg.partition()}]: {err.str()}")

    def _sweep_idle(self) -> None:
        """Step a for a worker with nothing to commit: expiry must not wait for traffic (an
        idle dispatch still forgets journal entries past retention); a checkpoint follows only
        when something expired."""
        now_ms = int(self._clock() * 1000)
        swept = sum(store.sweep(now_ms, _SWEEP_LIMIT) for store in self._stores.values())
        if swept:
            self._uncommitted = max(1, self._uncommitted)

    # -- checkpoint --

    def checkpoint(self) -> None:
        """Make everything processed so far durable, then commit it (steps a to e above)."""
        started = time.perf_counter()
        now_ms = int(self._clock() * 1000)
        changed = 0
        disk: list[tuple[Store, str]] = []
        self._produce_views()
        for (topic, partition), store in self._stores.items():
            store.sweep(now_ms, _SWEEP_LIMIT)
            spec = self._inputs[topic].store
            assert spec is not None
            changelog = self._changelog(spec)
            if spec.changelog is None:
                source = str(self._positions.get((topic, partition), -1)).encode()
                headers = [(H_SOURCE_OFFSET, source)]
                for key, raw in store.changes(now_ms):
                    produce_waiting(self._producer, changelog, key=key, value=raw,
                                    partition=partition, headers=headers)
                    changed += 1
            if isinstance(store, DiskStore):
                disk.append((store, changelog))
        self.durable()
        floor = self.stage.commit_floor
        offsets = []
        for (t, p), o in self._positions.items():
            held = floor(t, p)
            offsets.append(TopicPartition(t, p, o if held is None else min(o, held)))
        committed = True
        if offsets:
            try:
                self._consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                if not is_lost_membership(exc):
                    raise
                committed = False
                _log.warning("commit_refused_lost_membership", stage=self.stage.name,
                             error=str(exc))
        if not committed:
            # Keep state, positions and dirty keys: the next checkpoint writes the changelog
            # again and retries the commit. Partitions really lost come back through on_lost,
            # which drops them; their new owner restores up to the old committed offset.
            self._uncommitted = max(1, self._uncommitted)
            return
        for store in self._stores.values():
            if not isinstance(store, DiskStore):
                store.checkpointed(None)
        # The end offsets come through the restorer's consumer, which fetches nothing between
        # restores: on the stage's own consumer each query queued behind a fetch waiting for
        # records, ~460 ms per disk-store partition when the input was quiet (3-4 ms on an
        # idle consumer; measured by bench.callbacks' profile, session 6).
        ends = self._restorer_consumer()
        for store, changelog in disk:
            _, high = retrying(lambda c=changelog, p=store.partition:
                                ends.get_watermark_offsets(
                                    TopicPartition(c, p), timeout=10, cached=False))
            store.checkpointed(high)
        self._uncommitted = 0
        self._changelog_metric.inc(changed)
        self._checkpoint_metric.observe(time.perf_counter() - started)

    # -- rebalancing --

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            spec = self._inputs[tp.topic].store
            if spec is not None:
                self._stores[(tp.topic, tp.partition)] = self._restore(spec, tp)
            self._assigned.add((tp.topic, tp.partition))
        # The restorer stays open (assigned nothing, fetching nothing): every checkpoint of a
        # disk store asks it for the changelog's end offsets (see checkpoint).
        _log.info("partitions_assigned", stage=self.stage.name,
                  partitions=[f"{tp.topic}[{tp.partition}]" for tp in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._failed:  # closing after a failure: the next owner re-reads from the commit
            _log.warning("revoked_after_failure", stage=self.stage.name)
        elif self._stores or self._positions:
            try:
                self.checkpoint()
            except KafkaException as exc:
                _log.warning("revoke_checkpoint_failed", stage=self.stage.name, error=str(exc))
        self._drop([(tp.topic, tp.partition) for tp in partitions])
        _log.info("partitions_revoked", stage=self.stage.name,
                  partitions=[f"{tp.topic}[{tp.partition}]" for tp in partitions])

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # View records of lost partitions go out now, as they would have without the wait for
        # a checkpoint (those of partitions still owned too: a view record is never dropped).
        # Their new owner re-processes the same records and writes the same or later values.
        self._produce_views()
        self._drop([(tp.topic, tp.partition) for tp in partitions])
        _log.warning("partitions_lost", stage=self.stage.name,
                     partitions=[f"{tp.topic}[{tp.partition}]" for tp in partitions])

    def _drop(self, keys: list[tuple[str, int]]) -> None:
        self.stage.forget(keys)
        for key in keys:
            self._assigned.discard(key)
            self._positions.pop(key, None)
            store = self._stores.pop(key, None)
            if store is not None:
                store.close()

    def _open(self, spec: StoreSpec, partition: int) -> Store:
        ttl_ms = None if spec.ttl_s is None else int(spec.ttl_s * 1000)
        if spec.disk:
            return DiskStore(spec.name, partition, ttl_ms,
                             self._state_root / spec.name / str(partition))
        return MemoryStore(spec.name, partition, ttl_ms)

    def _restore(self, spec: StoreSpec, tp: TopicPartition) -> Store:
        """A partition's store rebuilt from its changelog, up to the committed input offset."""
        started = time.perf_counter()
        store = self._open(spec, tp.partition)
        changelog = TopicPartition(self._changelog(spec), tp.partition)
        committed = retrying(lambda: self._consumer.committed(
            [TopicPartition(tp.topic, tp.partition)], timeout=30)[0].offset)
        applied, skipped = restore(store, self._restorer_consumer(), changelog, committed,
                                   entry=spec.entry)
        seconds = time.perf_counter() - started
        RUNTIME_RESTORED_KEYS.labels(self.stage.name, spec.name).inc(applied)
        _log.info("store_restored", stage=self.stage.name, store=spec.name,
                  partition=tp.partition, records=applied, skipped_uncommitted=skipped,
                  seconds=round(seconds, 3),
                  records_per_s=round(applied / seconds) if seconds > 0 else None)
        return store

    def _changelog(self, spec: StoreSpec) -> str:
        """Full name of a store's changelog: the runner's own, or the stage's topic."""
        if spec.changelog is not None:
            return self._topic_names[spec.changelog]
        return changelog_topic(self.settings, self.stage.name, spec.name)

    def _restorer_consumer(self) -> Consumer:
        if self._restorer is None:
            self._restorer = Consumer({
                **self.settings.kafka_config(), "group.id": self.group + ".restore",
                "enable.auto.commit": False, "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 10,
            })
        return self._restorer


def restore(store: Store, restorer: Consumer, changelog: TopicPartition,
            committed: int = 2**62,
            entry: Callable[[bytes | None], bytes | None] | None = None) -> tuple[int, int]:
    """Replay ``changelog`` into ``store`` from the store's local checkpoint (or the start) to
    the partition's end; records headed with an input offset beyond ``committed`` are skipped.
    ``entry`` turns a record's value into the store's entry (for a topic that serves as the
    changelog of a store without being written in its format, e.g. dispatch's journal; None
    drops the key). Returns (records applied, records skipped)."""
    low, high = retrying(
        lambda: restorer.get_watermark_offsets(changelog, timeout=30, cached=False))
    start = store.restore_from()
    start = low if start is None or start < low else start
    applied = skipped = 0
    if start < high:
        restorer.assign([TopicPartition(changelog.topic, changelog.partition,
                                        start if start > 0 else OFFSET_BEGINNING)])
        position = start
        while position < high:
            # Ask for exactly what is left, so the last batch returns when it is complete.
            msgs = restorer.consume(min(10_000, high - position), 0.5)
            if not msgs:  # compaction can leave the last offsets empty
                position = max(position, restorer.position([changelog])[0].offset)
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.fatal():
                        raise KafkaException(err)
                    continue
                position = msg.offset() + 1
                source = header_value(msg.headers(), H_SOURCE_OFFSET)
                if source is not None and int(source) > committed:
                    skipped += 1  # a checkpoint that never committed
                    continue
                key = msg.key()
                value = msg.value() if entry is None else entry(msg.value())
                store.restore(key.decode() if key is not None else "", value)
                applied += 1
        restorer.unassign()
    if isinstance(store, DiskStore):
        store.restored(high)
    return applied, skipped


class _TopicNames(dict[str, str]):
    """Catalogue short name → full topic name, computed once per name."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self._prefix = settings.topic_prefix

    def __missing__(self, name: str) -> str:
        full = self[name] = self._prefix + name
        return full
