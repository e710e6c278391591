"""What a stage gives the batch runtime, and what the runtime hands it.

A stage names its inputs (catalogue topics, each with at most one store) and turns a polled
batch into :class:`Out` records. Most stages decide record by record with the key's state:
they subclass :class:`KeyedStage` and write :meth:`KeyedStage.handle`; the base class runs the
batch, gives each record its key's :class:`~pipeline.runtime.store.KeyState`, and dead-letters a
record whose handling raises (original bytes, provenance headers, counted) so the partition
keeps moving. A stage that must see the whole batch at once overrides :meth:`Stage.process`.

**Timers (punctuation).** A stage acting on the clock (a deadline) books a timer on a key of its
store (:meth:`~pipeline.runtime.store.KeyState.set_timer`); the runner calls
:meth:`Stage.punctuate` for each assigned partition's store at most every
``TELEX_PUNCTUATE_INTERVAL_S``, idle or not. A :class:`KeyedStage` writes
:meth:`KeyedStage.on_timer`: the base class clears each due key's timer, then hands it the
key's state (it may book the timer again). Guarantee: a timer fires at least once, at or after
its due time, on whichever member owns the partition then (the timer is part of the entry, so a
restored store has it); a crash between the firing and the next checkpoint fires it again,
with the same state, so ``on_timer`` must give the same outputs for the same state.

**Stages with I/O of their own** (dispatch: carrier calls on an asyncio loop) get the runner as a
:class:`Runtime` in :meth:`Stage.open`: ``durable()`` is a write-ahead barrier inside
:meth:`Stage.process` (what was emitted so far is on the broker before the stage acts on the
outside world), ``emit()`` produces records that arrive outside any batch (carrier receipts).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from pipeline.runtime.deadletter import (
    Provenance,
    counted,
    dead_letter_headers,
    dead_letter_topic,
)
from pipeline.runtime.store import KeyState, Store

__all__ = [
    "PUNCTUATE_LIMIT",
    "Input",
    "KeyedStage",
    "Out",
    "Record",
    "Runtime",
    "Stage",
    "StoreSpec",
    "header_value",
]

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Out:
    """One record a stage emits: destination (catalogue short name), key, Avro value, headers.

    ``timestamp_ms``: the record's Kafka timestamp when it must be the time of the decision
    (a rate limiter's release), not the time the runtime gets to produce it after the batch.

    ``view``: a record of a compacted *view* topic (the latest status per message), where a
    reader wants the last value per key and not every step to it. The runtime keeps only the
    last such record per (topic, key) and produces it with the next checkpoint, as it does a
    store's changelog: one record per changed key per checkpoint instead of one per event.
    """

    topic: str
    key: str
    value: bytes
    headers: Headers = field(default_factory=list)
    timestamp_ms: int = 0  # 0: librdkafka stamps the produce time
    view: bool = False
    #: -1: the partition of the key (murmur2). A store's own changelog written by the stage
    #: (dispatch's journal) names the input's partition, as the runner's changelogs do.
    partition: int = -1


@dataclass(frozen=True, slots=True)
class StoreSpec:
    """A store of a stage: its name (and changelog topic), retention, and where it lives.

    ``ttl_s``: an entry not written for this long is gone; ``None`` only for stores whose key
    space is bounded by configuration (rate-limit buckets). ``disk``: RocksDB instead of memory.

    ``changelog``: a topic (catalogue short name) the stage itself writes as its outputs and that
    serves as this store's changelog (dispatch's journal: it must be on the broker before a
    carrier call, not at the next checkpoint). The runner then restores the store from it,
    turning each record into an entry with ``entry`` (None drops the key), and writes no
    changelog records of its own for the store (expiry stays local: the topic is the truth).
    """

    name: str
    ttl_s: float | None
    disk: bool = False
    changelog: str | None = None
    entry: Callable[[bytes | None], bytes | None] | None = None


@dataclass(frozen=True, slots=True)
class Input:
    """One input topic (catalogue short name) and the store its keys own, if any."""

    topic: str
    store: StoreSpec | None = None


def header_value(headers: Headers | None, name: str) -> bytes | None:
    """The first value of header ``name`` (consumed records and changelog records alike)."""
    for k, v in headers or ():
        if k == name:
            return v
    return None


class Record:
    """One consumed record, decoded only as far as the runtime needs (key as text)."""

    __slots__ = ("headers", "key", "offset", "partition", "timestamp", "topic", "value")

    def __init__(self, topic: str, partition: int, offset: int, key: str | None,
                 value: bytes | None, headers: Headers | None, timestamp: int) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.key = key
        self.value = value
        self.headers = headers
        self.timestamp = timestamp

    def header(self, name: str) -> bytes | None:
        return header_value(self.headers, name)


class Runtime(Protocol):
    """What the runner offers a stage (see the module docstring): records outside a batch, a
    write-ahead barrier, and flow control of its input partitions."""

    def emit(self, outs: Sequence[Out]) -> None:
        """Produce ``outs`` now; callable from any thread. Their delivery is checked at the
        next ``durable()`` or checkpoint; they are tied to no input offset."""

    def durable(self) -> None:
        """Flush the producer and raise :class:`~pipeline.errors.CheckpointError` on any
        failed delivery (checkpoint step c). Only from the runner's thread (in ``process``)."""

    def pause(self, topic: str, partition: int) -> None:
        """Fetch nothing more of the partition until :meth:`resume`."""

    def resume(self, topic: str, partition: int, offset: int | None = None) -> None:
        """Fetch the partition again, from ``offset`` when given (records after it that were
        already polled come again)."""


class Stage:
    """Base of every stage on the batch runtime.

    A stage that holds records across batches (the delay-tier scheduler: records due soon,
    paced releases, parked partitions) also overrides the holding hooks below
    (:meth:`commit_floor`, :meth:`next_wake_ms`, :meth:`wake`, :meth:`forget`; it pauses and
    resumes partitions through the :class:`Runtime` given to :meth:`open`);
    their defaults leave the runner's protocol as it is for every other stage.
    """

    #: stage name: consumer group ``<prefix><name>``, dead letters to ``dlq-<name>``.
    name: str = ""
    inputs: tuple[Input, ...] = ()
    #: most records per batch when lower than ``TELEX_BATCH_MAX`` (dispatch: a batch bounds the
    #: duplicates a crash can cause); None: the setting.
    batch_max: int | None = None

    def open(self, runtime: Runtime) -> None:
        """Called once by the runner before it subscribes: start what the stage holds
        (connections, threads) and keep ``runtime`` for its hooks. Default: nothing."""

    def process(self, records: Sequence[Record], stores: Mapping[tuple[str, int], Store],
                now_ms: int) -> list[Out]:
        """All outputs of one polled batch (records of any assigned partition, in order per
        partition). ``stores`` maps (input topic, partition) to that partition's store."""
        raise NotImplementedError

    def punctuate(self, now_ms: int, store: Store) -> list[Out]:
        """Outputs of the timers of ``store`` (one partition) due by ``now_ms``. Called by
        the runner every ``TELEX_PUNCTUATE_INTERVAL_S`` for each store; outputs and store
        changes are checkpointed like a batch's. Default: no timers."""
        return []

    # -- holding records across batches (defaults: nothing held) --

    def commit_floor(self, topic: str, partition: int) -> int | None:
        """The lowest offset of the partition still held undecided (its outputs not yet
        produced): the checkpoint commits no further, so a crash re-reads it. None: nothing
        held, commit all that was processed. (A stage with a floor keeps no store: its
        changelog records would be headed with the processed offset, not the floor.)"""
        return None

    def next_wake_ms(self) -> float | None:
        """When held work next comes due (epoch ms on the runner's clock): the poll's wait
        ends then and :meth:`wake` runs, to the millisecond. None: nothing due."""
        return None

    def wake(self, now_ms: int, stores: Mapping[tuple[str, int], Store]) -> list[Out]:
        """Outputs of the held work due by ``now_ms``; they and the changes it makes to
        ``stores`` (as in :meth:`process`) are checkpointed like a batch's. (The callbacks stage
        applies the results of its HTTP attempts here, on the runner's thread.)"""
        return []

    def forget(self, partitions: Sequence[tuple[str, int]]) -> None:
        """These partitions are no longer this member's (revoked after a checkpoint, or lost):
        drop what is held of them; their next owner re-reads it from the committed offset."""

    def dead_letter(self, record: Record, exc: BaseException, now_ms: int,
                    message_id: str | None = None) -> Out:
        """The dead-letter copy of ``record``: original key and bytes, provenance headers."""
        counted(self.name, exc, record.topic, record.partition, record.offset)
        prov = Provenance(record.topic, record.partition, record.offset, record.timestamp)
        return Out(dead_letter_topic(self.name), record.key or "",
                   record.value or b"",
                   dead_letter_headers(record.headers, prov, self.name, exc, now_ms,
                                       message_id))

    def message_id_of(self, record: Record) -> str | None:
        """The message id named in dead-letter headers (default: the record key)."""
        return record.key

    def close(self) -> None:
        """Release what the stage holds (connections); called once the runner stopped."""


#: keys fired per store per punctuation; the rest fire at the next one.
PUNCTUATE_LIMIT = 10_000

_log = structlog.get_logger("telex.runtime")


class KeyedStage(Stage):
    """A stage that decides record by record with its key's state."""

    def on_timer(self, key: str, state: KeyState, now_ms: int) -> list[Out]:
        """Outputs of the key's timer, come due (already cleared: set it again to repeat)."""
        raise NotImplementedError

    def punctuate(self, now_ms: int, store: Store) -> list[Out]:
        if type(self).on_timer is KeyedStage.on_timer:
            return []
        outs: list[Out] = []
        for key in store.due(now_ms, PUNCTUATE_LIMIT):
            state = KeyState(store, key, now_ms)
            state.set_timer(None)  # fired: a failing on_timer must not fire forever
            try:
                outs += self.on_timer(key, state, now_ms)
            except Exception as exc:  # no record to dead-letter: logged, the timer dropped
                _log.error("timer_failed", stage=self.name, store=store.name,
                           partition=store.partition, key=key, error=repr(exc))
        return outs

    def handle(self, record: Record, state: KeyState | None, now_ms: int) -> list[Out]:
        """Outputs of one record; raise to dead-letter it (state set before raising stays)."""
        raise NotImplementedError

    def process(self, records: Sequence[Record], stores: Mapping[tuple[str, int], Store],
                now_ms: int) -> list[Out]:
        outs: list[Out] = []
        handle = self.handle
        for record in records:
            store = stores.get((record.topic, record.partition))
            state = KeyState(store, record.key or "", now_ms) if store is not None else None
            try:
                outs += handle(record, state, now_ms)
            except Exception as exc:  # every failure is routed, counted and logged
                outs.append(self.dead_letter(record, exc, now_ms, self.message_id_of(record)))
        return outs
