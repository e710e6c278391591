"""The dispatch journal as dispatch reads it: the latest entry per message id, kept on disk for
a bounded retention, per assigned partition.

The ``dispatch-journal`` topic (compacted, keyed by message id, partitioned like
``dispatch-ready``) is the truth and the store's changelog: every entry is produced there first
(ATTEMPTING flushed before any carrier call), and each assigned partition's copy is a RocksDB
store (:class:`~pipeline.runtime.store.DiskStore`) that the batch runtime opens, restores and
checkpoints like any stage store (:func:`store_spec`: the topic is the store's changelog in
another format, so the runtime writes no changelog of its own and :func:`entry_of` turns each
journal record into a store entry), replaying only what follows its locally checkpointed
offset. The topic itself is never tombstoned by retention (expiry is local to the store):
``telex dlq replay`` reads it to judge a replay, whatever dispatch has forgotten.

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

Memory: entries live on disk; what stays in memory is one checkpoint's pending writes (1 s), and
RocksDB's memtables and one block cache shared by every partition (bounded by the options
below), not one dict entry per message as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pipeline.codec import AvroCodec
from pipeline.records import VALIDITY_MAX_S
from pipeline.runtime.stage import StoreSpec
from pipeline.runtime.store import encode_entry
from pipeline.settings import Settings

__all__ = ["STORE", "TOPIC", "entry_of", "retention_s", "store_spec"]

STORE = "journal"
TOPIC = "dispatch-journal"


def retention_s(settings: Settings) -> float:
    """How long a journal entry is kept in dispatch's store (see the module docstring)."""
    if settings.journal_retention_s is not None:
        return settings.journal_retention_s
    longest_retry = max(settings.retry_schedule_s, default=0) * 1.2
    return max(float(settings.dedup_window_s), VALIDITY_MAX_S + longest_retry,
               settings.in_doubt_window_s)


def entry_of(codec: AvroCodec, ttl_ms: int) -> Callable[[bytes | None], bytes | None]:
    """Journal record → store entry for a restore, aged from the entry's own ``at_ms`` (so a
    restore forgets exactly what the first run's sweeps did); None for a tombstone or an entry
    past retention."""

    def entry(raw: bytes | None) -> bytes | None:
        if raw is None:
            return None
        decoded = codec.decode(raw, expected="dispatch_journal_entry")
        expires = int(decoded["at_ms"]) + ttl_ms
        return encode_entry(decoded, expires) if expires > time.time_ns() // 1_000_000 else None

    return entry


def store_spec(settings: Settings, codec: AvroCodec) -> StoreSpec:
    """The journal store of ``dispatch-ready``'s partitions: on disk, changelog = the topic."""
    ttl_s = retention_s(settings)
    return StoreSpec(STORE, ttl_s, disk=True, changelog=TOPIC,
                     entry=entry_of(codec, int(ttl_s * 1000)))
