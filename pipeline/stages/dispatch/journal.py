"""The dispatch journal as dispatch reads it: the latest entry per message id, kept on disk for
a bounded retention, per assigned partition.

The ``dispatch-journal`` topic (compacted, keyed by message id, partitioned like
``dispatch-ready``) is the truth and the store's changelog: every entry is produced there first
(ATTEMPTING flushed before any carrier call), and each assigned partition's copy is a RocksDB
store (:class:`~pipeline.runtime.store.DiskStore`) rebuilt from that partition, replaying only
what follows its locally checkpointed offset. The topic itself is never tombstoned by
retention: ``telex dlq replay`` reads it to judge a replay, whatever dispatch has forgotten.

**Retention** (``TELEX_JOURNAL_RETENTION_S``; by default the longest of the windows below),
counted from the entry's ``at_ms``, so a restore ages entries exactly as the first run did.
An entry is needed only while another copy of its message id can reach ``dispatch-ready``:

- *redeliveries* (a crash or rebalance of ingest, rate limit, scheduler or dispatch) arrive
  within seconds to minutes of the original;
- *retries* come back through the delay tiers at most ``max(retry schedule) * 1.2`` (jitter)
  after the FAILED entry they follow, and every attempt rewrites the entry (its age restarts);
- the *message validity* (at most ``VALIDITY_MAX_S``, 10 h, from release) ends every copy's
  chance to reach a carrier: past ``expires_at_ms`` dispatch refuses it whatever the journal
  says; keeping entries that long also keeps such late copies skipped rather than failed;
- the *dedup window* (``TELEX_DEDUP_WINDOW_S``, 24 h) is how long a client's resubmission of an
  idempotency key is absorbed by ingest; the journal keeps the same promise for copies that
  slipped past it (ingest's own at-least-once), and no longer.

Not tied to it: the *receipt window* (48 h) — a resend ordered after a failed receipt carries a
higher attempt and goes out with or without the SUBMITTED entry (expired by then, it is refused
on validity either way); the *in-doubt window* (15 min) is shorter than all of the above.
So the default is ``max(dedup window, validity max + longest retry * 1.2, in-doubt window)``.
Risk accepted: a dispatch outage longer than the retention, with an in-doubt ATTEMPTING entry,
resolves that message as a first attempt (for SMS the same as the in-doubt policy, RESEND).

Memory: entries live on disk; what stays in memory is one checkpoint's pending writes, and
RocksDB's memtables and one block cache shared by every partition (bounded by the options
below), not one dict entry per message as before.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import structlog
from confluent_kafka import Consumer, TopicPartition

from pipeline.codec import AvroCodec
from pipeline.records import VALIDITY_MAX_S
from pipeline.runtime.runner import restore
from pipeline.runtime.store import DiskStore, encode_entry
from pipeline.settings import Settings

log = structlog.get_logger("telex.dispatch")

STORE = "journal"
_SWEEP_LIMIT = 50_000  # per partition and checkpoint: a backlog of expiries is spread out


def retention_s(settings: Settings) -> float:
    """How long a journal entry is kept in dispatch's store (see the module docstring)."""
    if settings.journal_retention_s is not None:
        return settings.journal_retention_s
    longest_retry = max(settings.retry_schedule_s, default=0) * 1.2
    return max(float(settings.dedup_window_s), VALIDITY_MAX_S + longest_retry,
               settings.in_doubt_window_s)


class Journal:
    """Latest journal entry per message id, for the partitions this worker owns.

    Writes (:meth:`record`) are pending in memory until :meth:`checkpoint`, which dispatch calls
    after a batch's outputs are flushed and its offsets committed; the journal records behind
    them are on the broker by then (``delivered`` tells the journal where each partition's
    changelog ends)."""

    def __init__(self, settings: Settings, codec: AvroCodec) -> None:
        self._settings = settings
        self._codec = codec
        self._topic = settings.topic("dispatch-journal")
        self._ttl_ms = int(retention_s(settings) * 1000)
        self._root = Path(settings.state_dir) / settings.topic("dispatch") / STORE
        self._stores: dict[int, DiskStore] = {}
        self._ends: dict[int, int] = {}  # partition -> changelog end after our last delivery

    @property
    def topic(self) -> str:
        return self._topic

    def owns(self, partition: int) -> bool:
        return partition in self._stores

    def get(self, partition: int, message_id: str) -> dict[str, Any] | None:
        store = self._stores.get(partition)
        if store is None:
            raise KeyError(f"journal partition {partition} is not assigned here")
        return store.get(message_id, _now_ms())

    def record(self, partition: int, entry: dict[str, Any]) -> None:
        """Keep ``entry`` (already produced to the journal topic) until retention ends."""
        self._stores[partition].put(entry["message_id"], entry, int(entry["at_ms"]))

    def delivered(self, partition: int, offset: int) -> None:
        """A journal record of ``partition`` landed at ``offset``."""
        if offset + 1 > self._ends.get(partition, -1):
            self._ends[partition] = offset + 1

    def checkpoint(self) -> int:
        """Sweep expired entries and write pending ones to disk with the changelog offset they
        reach. Call only when every journal record produced so far is acknowledged. Returns
        the number of entries removed."""
        now = _now_ms()
        removed = 0
        for partition, store in self._stores.items():
            removed += store.sweep(now, _SWEEP_LIMIT)
            store.checkpointed(self._ends.pop(partition, None))
        return removed

    def assign(self, partitions: list[int]) -> int:
        """Open and restore the stores of newly assigned partitions; returns entries replayed."""
        replayed = 0
        for p in partitions:
            if p not in self._stores:
                store = DiskStore(STORE, p, self._ttl_ms, self._root / str(p))
                replayed += self._restore(store)
                self._stores[p] = store
        return replayed

    def revoke(self, partitions: list[int], *, durable: bool) -> None:
        """Close revoked partitions' stores; ``durable``: their pending writes are on the
        broker (else they are dropped, and the next owner replays them from the topic)."""
        for p in partitions:
            store = self._stores.pop(p, None)
            end = self._ends.pop(p, None)
            if store is not None:
                if durable:
                    store.checkpointed(end)
                store.close()

    def close(self) -> None:
        self.revoke(list(self._stores), durable=False)

    def entries(self, partition: int) -> list[str]:
        """Message ids on disk for ``partition`` (swept entries excluded)."""
        return list(self._stores[partition].keys_on_disk())

    def _restore(self, store: DiskStore) -> int:
        """Replay the journal partition after the store's checkpointed offset."""
        started = time.perf_counter()
        tp = TopicPartition(self._topic, store.partition)
        consumer = Consumer({
            **self._settings.kafka_config(), "group.id": self._settings.topic("dispatch.restore"),
            "enable.auto.commit": False, "isolation.level": "read_committed",
        })
        now = _now_ms()

        def entry(raw: bytes | None) -> bytes | None:
            if raw is None:
                return None  # a tombstone
            decoded = self._codec.decode(raw, expected="dispatch_journal_entry")
            expires = int(decoded["at_ms"]) + self._ttl_ms
            return encode_entry(decoded, expires) if expires > now else None  # expired: drop

        start = store.restore_from()
        try:
            applied, _ = restore(store, consumer, tp, entry=entry)
        finally:
            consumer.close()
        log.info("journal_restored", partition=store.partition, records=applied,
                 from_offset=start,
                 seconds=round(time.perf_counter() - started, 3))
        return applied


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
