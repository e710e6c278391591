"""Per-partition key-value stores backed by a compacted changelog topic (the Kafka Streams design).

A stage's state for one input partition lives in one :class:`Store`. Writes during a batch only
mark keys dirty; at a checkpoint the runtime writes **one changelog record per dirty key** (the
key's latest entry, or a tombstone) — a key written 50 times between checkpoints costs one
record. On assignment a store is rebuilt by replaying its changelog partition.

Two kinds, one interface:

- :class:`MemoryStore` — a dict; restored from the start of the changelog on every assignment.
  For state that is small (rate-limit buckets) or short-lived (the status of in-flight messages).
- :class:`DiskStore` — RocksDB (``rocksdict``); pending writes stay in memory until the
  checkpoint's offsets are committed, then go to disk in one write batch together with the
  changelog offset they correspond to (KIP-892's order: the disk never holds state that is not
  in the changelog). On assignment only the changelog after that offset is replayed. For state
  too large for memory: the dedup window at 10,000 msg/s holds hundreds of millions of keys.

Bounded: every store has a retention (``ttl_ms``) tied to what it promises — an entry not written
for that long is gone (expired on read, removed with a tombstone by :meth:`Store.sweep`). Entries
age by last write, so expiry order equals write order: the memory store keeps its dict in write
order, the disk store keeps an expiry index (``x`` + big-endian expiry + key).

Entry encoding (changelog value and disk value): the expiry (epoch ms, 8 bytes big-endian) then
the entry as JSON, a dict of named fields (a stage keeps several fields per key). The expiry
comes first so a restore can order and age entries without parsing them: a memory store keeps a
restored entry as bytes until a record of its key first reads it.

**Timers** (punctuation, see :meth:`pipeline.runtime.stage.Stage.punctuate`): a key may carry one
timer, the field :data:`TIMER_FIELD` of its entry (epoch ms; :meth:`KeyState.set_timer`). Being
a field, booking, moving or cancelling a timer costs no changelog record beyond the entry's own,
and a timer is exactly as durable as its entry. Each store keeps a due-time index over it,
consistent with the entries: :meth:`Store.due` lists keys whose timer is due. A memory store
keeps a heap (entries checked against the live entry when popped) and rebuilds it on restore; a
disk store keeps ``t`` + big-endian due + key beside the expiry index, written in the same
RocksDB write batches as the entries (so the local index always matches the checkpointed
entries), plus a heap for timers written since the last checkpoint. Reading the timer of an
encoded entry parses the JSON only when the bytes contain the field name.
"""

from __future__ import annotations

import heapq
import re
import shutil
import struct
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

__all__ = [
    "TIMER_FIELD",
    "DiskStore",
    "KeyState",
    "MemoryStore",
    "Store",
    "decode_entry",
    "encode_entry",
    "entry_expiry",
    "entry_timer",
    "rocksdb_memory",
]

Entry = dict[str, Any]
_NO_EXPIRY = 2**62
_U64 = struct.Struct(">Q")
#: the entry field holding the key's timer (epoch ms), maintained through :class:`KeyState`.
TIMER_FIELD = "_timer"
_TIMER_NEEDLE = b'"' + TIMER_FIELD.encode() + b'":'


def encode_entry(value: Entry, expires_ms: int) -> bytes:
    return _U64.pack(expires_ms) + orjson.dumps(value)


def decode_entry(raw: bytes) -> tuple[Entry, int]:
    return orjson.loads(raw[8:]), _U64.unpack_from(raw)[0]


def entry_expiry(raw: bytes) -> int:
    return int(_U64.unpack_from(raw)[0])


def entry_timer(value: Entry | bytes | None) -> int | None:
    """The timer of an entry (decoded, or encoded as in the changelog), or None."""
    if value is None:
        return None
    if isinstance(value, bytes):
        if _TIMER_NEEDLE not in value:  # most entries: no parse needed
            return None
        value = orjson.loads(value[8:])
    due = value.get(TIMER_FIELD)  # type: ignore[union-attr]
    return None if due is None else int(due)


class Store(ABC):
    """State of one stage store for one input partition."""

    def __init__(self, name: str, partition: int, ttl_ms: int | None) -> None:
        self.name = name
        self.partition = partition
        self.ttl_ms = ttl_ms
        self._dirty: set[str] = set()

    def expiry(self, now_ms: int) -> int:
        return _NO_EXPIRY if self.ttl_ms is None else now_ms + self.ttl_ms

    @abstractmethod
    def get(self, key: str, now_ms: int) -> Entry | None:
        """The key's entry, or None when absent or expired."""

    @abstractmethod
    def put(self, key: str, value: Entry | None, now_ms: int) -> None:
        """Set (or with None, delete) the key's entry; it becomes dirty."""

    @abstractmethod
    def sweep(self, now_ms: int, limit: int) -> int:
        """Delete up to ``limit`` expired entries (each becomes a tombstone); returns how many."""

    @abstractmethod
    def due(self, now_ms: int, limit: int) -> list[str]:
        """Up to ``limit`` keys whose timer is at or before ``now_ms`` (live entries only), in
        due order. A key stays due until its entry's timer is moved or cleared."""

    def dirty_count(self) -> int:
        """Keys changed since the last checkpoint."""
        return len(self._dirty)

    @abstractmethod
    def changes(self, now_ms: int) -> Iterator[tuple[str, bytes | None]]:
        """One (key, encoded entry or None) per dirty key, for the changelog."""

    @abstractmethod
    def restore(self, key: str, raw: bytes | None) -> None:
        """Apply one changelog record (restore path: not dirty)."""

    @abstractmethod
    def checkpointed(self, changelog_end: int | None) -> None:
        """Offsets are committed: the dirty keys are durable. ``changelog_end`` is the
        changelog partition's end offset after the checkpoint's flush (for DiskStore)."""

    @abstractmethod
    def restore_from(self) -> int | None:
        """Changelog offset to replay from (None: from the beginning)."""

    @abstractmethod
    def close(self) -> None: ...


class MemoryStore(Store):
    """A dict in write order (so in expiry order); fully restored on assignment. A restored
    entry stays encoded (bytes) until its key is first read."""

    def __init__(self, name: str, partition: int, ttl_ms: int | None) -> None:
        super().__init__(name, partition, ttl_ms)
        self._data: dict[str, tuple[Entry | bytes, int]] = {}
        # (due, key) for every timer written or restored; an item whose key's entry no
        # longer has that timer is dropped when it reaches the top.
        self._timers: list[tuple[int, str]] = []

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str, now_ms: int) -> Entry | None:
        found = self._data.get(key)
        if found is None or found[1] <= now_ms:
            return None
        value = found[0]
        if isinstance(value, bytes):
            value = orjson.loads(value[8:])
            self._data[key] = (value, found[1])
        return value

    def put(self, key: str, value: Entry | None, now_ms: int) -> None:
        old = self._data.pop(key, None)  # re-inserted at the end: write order = expiry order
        if value is not None:
            self._data[key] = (value, self.expiry(now_ms))
            due = value.get(TIMER_FIELD)
            if due is not None and (old is None or entry_timer(old[0]) != due):
                heapq.heappush(self._timers, (int(due), key))
        self._dirty.add(key)

    def due(self, now_ms: int, limit: int) -> list[str]:
        timers, data = self._timers, self._data
        keys: list[str] = []
        seen: set[str] = set()
        kept: list[tuple[int, str]] = []
        while timers and timers[0][0] <= now_ms and len(keys) < limit:
            item = heapq.heappop(timers)
            due, key = item
            found = data.get(key)
            if found is None or found[1] <= now_ms or key in seen:
                continue
            if entry_timer(found[0]) != due:
                continue  # moved or cancelled since
            keys.append(key)
            seen.add(key)
            kept.append(item)  # still the key's timer until the stage moves or clears it
        for item in kept:
            heapq.heappush(timers, item)
        return keys

    def sweep(self, now_ms: int, limit: int) -> int:
        removed = 0
        data = self._data
        while data and removed < limit:
            key = next(iter(data))
            if data[key][1] > now_ms:
                break
            del data[key]
            self._dirty.add(key)
            removed += 1
        return removed

    def changes(self, now_ms: int) -> Iterator[tuple[str, bytes | None]]:
        data = self._data
        for key in self._dirty:
            found = data.get(key)
            if found is None:
                yield key, None
            else:
                value, expires = found
                yield key, (value if isinstance(value, bytes) else encode_entry(value, expires))

    def restore(self, key: str, raw: bytes | None) -> None:
        self._data.pop(key, None)
        if raw is not None:
            self._data[key] = (raw, entry_expiry(raw))
            due = entry_timer(raw)
            if due is not None:
                heapq.heappush(self._timers, (due, key))

    def checkpointed(self, changelog_end: int | None) -> None:
        self._dirty.clear()

    def restore_from(self) -> int | None:
        return None

    def close(self) -> None:
        self._data.clear()
        self._dirty.clear()
        self._timers.clear()


_DATA = b"d"
_INDEX = b"x"
_TIMERS = b"t"
_OFFSET_KEY = b"m:changelog_end"


# RocksDB memory budget of a process: one block cache (holding index and filter blocks too, else
# they grow with the data) with the memtables charged to it through a write buffer manager;
# RocksDB's defaults would give every partition's store its own cache and 64 MB memtables, growing
# with the data. The cache fills to its capacity whatever the working set: compaction rewrites
# files under new cache keys and the blocks of the files it deleted leave only by LRU eviction.
# So the budget is what the process holds after warm-up, and it is sized per open partition
# store: _MEMORY_PER_STORE each (capacity = that times the open stores, resized as stores open and
# close), half of it for memtables. Measured (bench.soak at 150 msg/s, ADR 0003 amendment
# 2026-11-29): at 64 MiB per process the cache was still filling after an hour (the
# whole-topology worker's data blocks +2.3 MiB/min, dispatch's +0.6), RSS +40 %; at 2 MiB per
# store (whole-topology worker: 18 stores, 36 MiB; dispatch: 6, 12 MiB) both are full by 10-12
# minutes and CPU per message did not rise (worker 2,875 µs, dispatch 880; 2,960 and 928 before).
# The memtables get the ~1 MiB per store the whole-topology worker had before (64 MiB / 3 over 18
# stores); the data blocks mostly serve reads of keys written minutes earlier. Production rates
# and retention (hundreds of millions of dedup keys) need more: filter blocks then outgrow any
# fixed budget, so this should become a setting sized per deployment.
_MEMORY_PER_STORE = 2 << 20
_MEMTABLE_SHARE = 2  # memtables may take 1/_MEMTABLE_SHARE of the budget
_WRITE_BUFFER_BYTES = 2 << 20  # per store memtable
_LOCK_WAIT_S = 30.0  # a previous owner of the directory (this process or one exiting) may hold it
_shared: dict[str, Any] = {}


def _budget(stores: int) -> int:
    """The process's RocksDB memory budget (block cache capacity) with ``stores`` open."""
    return _MEMORY_PER_STORE * max(1, stores)


def _resize(stores: int) -> None:
    """Fit the shared cache and write buffer manager to ``stores`` open stores."""
    if "cache" in _shared:
        budget = _budget(stores)
        _shared["cache"].set_capacity(budget)
        _shared["buffers"].set_buffer_size(budget // _MEMTABLE_SHARE)
        _shared["capacity"] = budget


def _rocksdb_options() -> Any:
    """RocksDB options sharing the process-wide memory budget above, and a bloom filter (most
    lookups are of keys never stored: a first request, a first attempt)."""
    from rocksdict import BlockBasedOptions, Cache, Options, WriteBufferManager

    with _open_lock:  # stage threads open their first stores together
        if not _shared:
            cache = Cache(_budget(1))
            _shared["buffers"] = WriteBufferManager.new_write_buffer_manager_with_cache(
                _budget(1) // _MEMTABLE_SHARE, False, cache)
            _shared["capacity"] = _budget(1)
            _shared["cache"] = cache  # last: rocksdb_memory() reads the others once it is set
    table = BlockBasedOptions()
    table.set_block_cache(_shared["cache"])
    table.set_cache_index_and_filter_blocks(True)
    table.set_bloom_filter(10, False)
    options = Options(raw_mode=True)
    options.set_block_based_table_factory(table)
    options.set_write_buffer_size(_WRITE_BUFFER_BYTES)
    options.set_write_buffer_manager(_shared["buffers"])
    options.set_max_write_buffer_number(2)
    return options


# Open disk stores of this process, for :func:`rocksdb_memory` (read by the metrics thread while
# stage threads open and close stores: a store leaves the set before its database closes).
_open_stores: set[DiskStore] = set()
_open_lock = threading.Lock()

#: RocksDB per-database properties summed by store name in :func:`rocksdb_memory`.
_DB_PROPERTIES = {"memtables": "rocksdb.cur-size-all-mem-tables",
                  "table_readers": "rocksdb.estimate-table-readers-mem"}


_ROLE = re.compile(r"(\w+)\((\d+),[^,]*,([\d.e+-]+)%\)")


def _cache_roles(db: Any) -> dict[str, int]:
    """Bytes of the block cache by role (DataBlock, FilterBlock, IndexBlock, WriteBuffer: the
    memtables' charge, ...), from RocksDB's cache entry statistics (at most a minute old: RocksDB
    rescans the cache only that often)."""
    text = db.property_value("rocksdb.block-cache-entry-stats") or ""
    return {role: round(float(portion) / 100 * _shared["capacity"])
            for role, _count, portion in _ROLE.findall(text.split("entry stats", 1)[-1])}


def rocksdb_memory() -> dict[str, Any]:
    """RocksDB memory of this process's open disk stores, in bytes: the one shared block cache
    (``cache``: capacity, usage — memtables charged to it included — pinned usage, and usage by
    role) reported once, and per store name the number of open partition stores with their
    memtables and table readers summed (``stores``). Empty before the first disk store opens."""
    if "cache" not in _shared:
        return {}
    cache = _shared["cache"]
    out: dict[str, Any] = {"cache": {"capacity": _shared["capacity"],
                                     "usage": cache.get_usage(),
                                     "pinned": cache.get_pinned_usage(),
                                     "memtables_charged": _shared["buffers"].get_usage(),
                                     "roles": {}},
                           "stores": {}}
    with _open_lock:
        for store in _open_stores:
            if not out["cache"]["roles"]:  # the cache is shared: any store reports it
                out["cache"]["roles"] = _cache_roles(store._db)
            figures = out["stores"].setdefault(
                store.name, {"open": 0, **{name: 0 for name in _DB_PROPERTIES}})
            figures["open"] += 1
            for name, prop in _DB_PROPERTIES.items():
                figures[name] += store._db.property_int_value(prop) or 0
    return out


class DiskStore(Store):
    """RocksDB via rocksdict; written only after the checkpoint that makes entries durable."""

    def __init__(self, name: str, partition: int, ttl_ms: int | None, path: Path) -> None:
        super().__init__(name, partition, ttl_ms)
        from rocksdict import Rdict  # imported here: only disk stores need it

        self._path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + _LOCK_WAIT_S
        while True:
            try:
                self._db = Rdict(str(path), options=_rocksdb_options())
                break
            except Exception as exc:  # rocksdict raises a bare Exception for a held lock
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)  # pacing between attempts to take the lock; deadline above
        # Written this batch or checkpoint, not yet on disk: key -> (entry or None, expiry).
        self._pending: dict[str, tuple[Entry | None, int]] = {}
        self._pending_timers: list[tuple[int, str]] = []  # timers in _pending, by due time
        self._restoring: dict[bytes, bytes | None] = {}
        # Where the timer and expiry indexes' first live entries were last seen: nothing on
        # disk lies below (a write below lowers it). Scans seek there, not to the index's
        # start: moved timers and expiries leave deletion tombstones at the low end of each
        # index, which RocksDB keeps until a compaction reaches them, and a scan from the start
        # steps over every one. A queue-like store (the callbacks stage re-arming a million
        # waiting entries) made each due() slower by the minute until the stage stalled.
        self._timer_floor = 0
        self._expiry_floor = 0
        with _open_lock:
            _open_stores.add(self)
            _resize(len(_open_stores))

    def _disk(self, key: str) -> tuple[Entry, int] | None:
        raw = self._db.get(_DATA + key.encode())
        return None if raw is None else decode_entry(raw)

    def get(self, key: str, now_ms: int) -> Entry | None:
        found = self._pending.get(key)
        if found is None:
            found = self._disk(key)
        if found is None or found[0] is None or found[1] <= now_ms:
            return None
        return found[0]

    def put(self, key: str, value: Entry | None, now_ms: int) -> None:
        self._pending[key] = (value, self.expiry(now_ms))
        self._dirty.add(key)
        due = None if value is None else value.get(TIMER_FIELD)
        if due is not None:
            heapq.heappush(self._pending_timers, (int(due), key))

    def due(self, now_ms: int, limit: int) -> list[str]:
        candidates: list[tuple[int, str]] = []
        it = self._db.iter()
        it.seek(_TIMERS + _U64.pack(self._timer_floor))
        first = True
        while it.valid() and len(candidates) < limit:
            ikey: bytes = it.key()
            if not ikey.startswith(_TIMERS):
                break
            due = _U64.unpack_from(ikey, 1)[0]
            if first:
                self._timer_floor, first = due, False
            if due > now_ms:
                break
            candidates.append((due, ikey[9:].decode()))
            it.next()
        del it
        for item in self._pending_timers:  # small: written since the last checkpoint
            if item[0] <= now_ms:
                candidates.append(item)
        candidates.sort()
        keys: list[str] = []
        seen: set[str] = set()
        for due, key in candidates:
            if key in seen or len(keys) >= limit:
                continue
            current = self._pending.get(key) or self._disk(key)
            if (current is None or current[0] is None or current[1] <= now_ms
                    or current[0].get(TIMER_FIELD) != due):
                continue  # moved, cancelled or expired (a pending write not yet on disk)
            keys.append(key)
            seen.add(key)
        return keys

    def sweep(self, now_ms: int, limit: int) -> int:
        it = self._db.iter()
        it.seek(_INDEX + _U64.pack(self._expiry_floor))
        removed = 0
        stale: list[bytes] = []
        while it.valid() and len(stale) < limit:
            ikey: bytes = it.key()
            if not ikey.startswith(_INDEX):
                break
            expires = _U64.unpack_from(ikey, 1)[0]
            if not stale:
                self._expiry_floor = expires  # the first live entry (deleted below if due)
            if expires > now_ms:
                break
            key = ikey[9:].decode()
            current = self._pending.get(key) or self._disk(key)
            if current is not None and current[0] is not None and current[1] == expires:
                self._pending[key] = (None, 0)
                self._dirty.add(key)
                removed += 1
            stale.append(ikey)  # this index entry is done either way
            it.next()
        del it
        for ikey in stale:
            self._db.delete(ikey)
        return removed

    def changes(self, now_ms: int) -> Iterator[tuple[str, bytes | None]]:
        for key in self._dirty:
            value, expires = self._pending[key]
            yield key, (None if value is None else encode_entry(value, expires))

    def restore(self, key: str, raw: bytes | None) -> None:
        self._restoring[key.encode()] = raw
        if len(self._restoring) >= 10_000:
            self._write_restored()

    def _write_restored(self) -> None:
        from rocksdict import WriteBatch

        batch = WriteBatch(raw_mode=True)
        for bkey, raw in self._restoring.items():
            self._write_raw(batch, bkey, raw)
        self._db.write(batch)
        self._restoring.clear()

    def _write(self, batch: Any, bkey: bytes, entry: tuple[Entry | None, int] | None) -> None:
        raw = None if entry is None or entry[0] is None else encode_entry(entry[0], entry[1])
        self._write_raw(batch, bkey, raw)

    def _write_raw(self, batch: Any, bkey: bytes, raw: bytes | None) -> None:
        old = self._db.get(_DATA + bkey)
        if old is not None:
            batch.delete(_INDEX + old[:8] + bkey)
            old_due = entry_timer(old)
            if old_due is not None:
                batch.delete(_TIMERS + _U64.pack(old_due) + bkey)
        if raw is None:
            batch.delete(_DATA + bkey)
        else:
            batch.put(_DATA + bkey, raw)
            expires = entry_expiry(raw)
            if expires < _NO_EXPIRY:
                batch.put(_INDEX + raw[:8] + bkey, b"")
                self._expiry_floor = min(self._expiry_floor, expires)
            due = entry_timer(raw)
            if due is not None:
                batch.put(_TIMERS + _U64.pack(due) + bkey, b"")
                self._timer_floor = min(self._timer_floor, due)

    def checkpointed(self, changelog_end: int | None) -> None:
        from rocksdict import WriteBatch

        if self._restoring:
            self._write_restored()
        batch = WriteBatch(raw_mode=True)
        for key, entry in self._pending.items():
            self._write(batch, key.encode(), entry)
        if changelog_end is not None:
            batch.put(_OFFSET_KEY, _U64.pack(changelog_end))
        self._db.write(batch)
        self._pending.clear()
        self._pending_timers.clear()
        self._dirty.clear()

    def restore_from(self) -> int | None:
        raw = self._db.get(_OFFSET_KEY)
        return None if raw is None else _U64.unpack(raw)[0]

    def keys_on_disk(self) -> Iterator[str]:
        """Keys persisted by checkpoints, expired-but-unswept ones included (diagnostics)."""
        it = self._db.iter()
        it.seek(_DATA)
        while it.valid() and it.key().startswith(_DATA):
            yield it.key()[len(_DATA):].decode()
            it.next()

    def restored(self, changelog_end: int) -> None:
        """Replay finished at ``changelog_end``: persist what was replayed and where it ended."""
        self.checkpointed(changelog_end)

    def close(self) -> None:
        with _open_lock:
            _open_stores.discard(self)
            _resize(len(_open_stores))
        self._db.close()

    def destroy(self) -> None:
        """Remove the local copy (it can always be rebuilt from the changelog)."""
        self.close()
        shutil.rmtree(self._path, ignore_errors=True)


class KeyState:
    """One record key's view of a store, with named fields (the API the decisions use)."""

    __slots__ = ("_entry", "_key", "_now_ms", "_store")

    def __init__(self, store: Store, key: str, now_ms: int) -> None:
        self._store = store
        self._key = key
        self._now_ms = now_ms
        self._entry: Entry | None = store.get(key, now_ms)

    def get(self, name: str, default: Any = None) -> Any:
        entry = self._entry
        return default if entry is None else entry.get(name, default)

    def set(self, name: str, value: Any) -> None:
        entry = dict(self._entry or {})
        entry[name] = value
        self._entry = entry
        self._store.put(self._key, entry, self._now_ms)

    def delete(self, name: str) -> None:
        """Remove one field; an entry left with no field but its timer is removed whole."""
        if self._entry is None or name not in self._entry:
            return
        entry = {k: v for k, v in self._entry.items() if k != name}
        self._entry = entry if set(entry) - {TIMER_FIELD} else None
        self._store.put(self._key, self._entry, self._now_ms)

    @property
    def partition(self) -> int:
        """The partition of the store the key lives in (a timer's owner needs it)."""
        return self._store.partition

    @property
    def timer(self) -> int | None:
        """The key's timer (epoch ms), or None."""
        return self.get(TIMER_FIELD)

    def set_timer(self, due_ms: int | None) -> None:
        """Book (or move) the key's one timer; None cancels it. Part of the entry: no
        changelog record of its own. Nothing happens when it is already so."""
        if self.timer == due_ms:
            return
        if due_ms is None:
            self.delete(TIMER_FIELD)
        else:
            self.set(TIMER_FIELD, int(due_ms))
