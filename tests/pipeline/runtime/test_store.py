"""Stores of the batch runtime: one changelog record per changed key, retention, restore."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.runtime.store import (
    DiskStore,
    KeyState,
    MemoryStore,
    Store,
    decode_entry,
    encode_entry,
)


def _stores(tmp_path: Path, ttl_ms: int | None = 1_000) -> list[Store]:
    return [MemoryStore("s", 0, ttl_ms), DiskStore("s", 0, ttl_ms, tmp_path / "db")]


@pytest.fixture(params=["memory", "disk"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    kind = {"memory": 0, "disk": 1}[request.param]
    made = _stores(tmp_path)[kind]
    yield made
    made.close()


def test_many_writes_to_a_key_give_one_changelog_record(store: Store):
    """Fifty writes to one key between checkpoints leave one changelog record, its last value."""
    for i in range(50):
        KeyState(store, "k", now_ms=100).set("n", i)
    changes = list(store.changes(100))
    assert [(k, decode_entry(v)[0]) for k, v in changes if v] == [("k", {"n": 49})]
    assert len(changes) == 1


def test_a_checkpoint_clears_the_changes(store: Store):
    """After the checkpoint committed, nothing is dirty until the next write."""
    KeyState(store, "a", 100).set("x", 1)
    store.checkpointed(7)
    assert list(store.changes(100)) == []
    assert KeyState(store, "a", 200).get("x") == 1


def test_deleting_the_last_field_writes_a_tombstone(store: Store):
    """A key whose fields are all deleted is absent, and its changelog record is a tombstone."""
    KeyState(store, "a", 100).set("x", 1)
    store.checkpointed(1)
    KeyState(store, "a", 100).delete("x")
    assert list(store.changes(100)) == [("a", None)]
    assert store.get("a", 100) is None


def test_an_entry_expires_its_ttl_after_its_last_write(store: Store):
    """Retention counts from the last write: a rewritten key lives on, an idle one is gone."""
    KeyState(store, "old", 0).set("x", 1)
    KeyState(store, "new", 0).set("x", 1)
    KeyState(store, "new", 800).set("x", 2)
    store.checkpointed(1)
    assert store.get("old", 999) == {"x": 1}
    assert store.get("old", 1_000) is None
    assert store.get("new", 1_500) == {"x": 2}


def test_sweep_removes_expired_entries_with_tombstones(store: Store):
    """A sweep deletes every expired entry (a tombstone each) and stops at the first live one."""
    for i in range(5):
        KeyState(store, f"k{i}", i * 100).set("x", i)
    store.checkpointed(1)
    assert store.sweep(now_ms=1_250, limit=100) == 3  # k0..k2 expired at 1000..1200
    assert sorted(store.changes(1_250)) == [("k0", None), ("k1", None), ("k2", None)]
    store.checkpointed(2)
    assert [store.get(f"k{i}", 1_250) for i in range(5)] == [None, None, None, {"x": 3},
                                                              {"x": 4}]


def test_sweep_respects_its_limit(store: Store):
    """A sweep never does more than its limit in one checkpoint (bounded pause)."""
    for i in range(10):
        KeyState(store, f"k{i}", 0).set("x", i)
    store.checkpointed(1)
    assert store.sweep(now_ms=5_000, limit=4) == 4


def test_a_rewritten_key_is_not_swept_by_its_old_expiry(tmp_path: Path):
    """The disk index keeps one expiry per write: only the latest one can remove the key."""
    store = DiskStore("s", 0, 1_000, tmp_path / "db")
    KeyState(store, "k", 0).set("x", 1)
    store.checkpointed(1)
    KeyState(store, "k", 900).set("x", 2)
    store.checkpointed(2)
    assert store.sweep(now_ms=1_200, limit=100) == 0
    assert store.get("k", 1_200) == {"x": 2}
    assert store.sweep(now_ms=2_000, limit=100) == 1


def test_restore_replays_changelog_records(store: Store):
    """Replayed changelog records (values and tombstones) rebuild the store, not dirty."""
    store.restore("a", encode_entry({"x": 1}, 10_000))
    store.restore("b", encode_entry({"x": 2}, 10_000))
    store.restore("a", None)
    if isinstance(store, DiskStore):
        store.restored(3)
    assert store.get("a", 0) is None
    assert store.get("b", 0) == {"x": 2}
    assert list(store.changes(0)) == []


def test_a_disk_store_resumes_from_its_checkpointed_changelog_offset(tmp_path: Path):
    """Reopened, a disk store holds what was checkpointed and names where to resume replay;
    writes after the last checkpoint were never on disk."""
    first = DiskStore("s", 0, None, tmp_path / "db")
    KeyState(first, "a", 0).set("x", 1)
    first.checkpointed(41)
    KeyState(first, "b", 0).set("x", 2)  # not checkpointed: the crash loses it locally
    first.close()
    again = DiskStore("s", 0, None, tmp_path / "db")
    assert again.restore_from() == 41
    assert again.get("a", 0) == {"x": 1}
    assert again.get("b", 0) is None
    again.close()


def test_a_fresh_store_replays_from_the_beginning(tmp_path: Path):
    """No local copy: the whole changelog is replayed."""
    for s in _stores(tmp_path):
        assert s.restore_from() is None
        s.close()


def test_keystate_reads_fields_and_defaults(store: Store):
    """Named fields of one key: get with a default, set, delete one field keeps the others."""
    state = KeyState(store, "k", 0)
    assert state.get("a", 5) == 5
    state.set("a", 1)
    state.set("b", 2)
    state.delete("a")
    assert KeyState(store, "k", 0).get("b") == 2
    assert KeyState(store, "k", 0).get("a") is None


# -- timers: the due-time index --

def _replay(source: Store, target: Store) -> None:
    """What a restore does: apply the source's changelog records to a fresh store."""
    for key, raw in source.changes(0):
        target.restore(key, raw)
    if isinstance(target, DiskStore):
        target.restored(1)


def test_a_timer_is_due_only_from_its_due_time(store: Store):
    """A key's timer is listed by ``due`` once the clock reaches it, not before."""
    KeyState(store, "a", 100).set_timer(500)
    assert store.due(499, 10) == []
    assert store.due(500, 10) == ["a"]


def test_due_lists_keys_in_due_order_up_to_the_limit(store: Store):
    """Keys come in due order, at most ``limit`` of them; before and after a checkpoint."""
    for key, due in (("late", 300), ("early", 100), ("mid", 200)):
        KeyState(store, key, 0).set_timer(due)
    assert store.due(900, 2) == ["early", "mid"]
    store.checkpointed(1)
    assert store.due(900, 10) == ["early", "mid", "late"]


def test_a_cancelled_timer_is_not_due(store: Store):
    """Cancelling a timer removes it from the index, written or checkpointed."""
    KeyState(store, "a", 0).set_timer(100)
    KeyState(store, "b", 0).set_timer(100)
    store.checkpointed(1)
    KeyState(store, "a", 0).set_timer(None)
    KeyState(store, "b", 0).set("x", 1)
    assert store.due(200, 10) == ["b"]
    store.checkpointed(2)
    assert store.due(200, 10) == ["b"]


def test_a_rescheduled_timer_is_due_at_its_new_time_only(store: Store):
    """Moving a timer later (or earlier) leaves one index entry, at the new time."""
    KeyState(store, "a", 0).set_timer(100)
    store.checkpointed(1)
    KeyState(store, "a", 0).set_timer(300)
    assert store.due(200, 10) == []
    store.checkpointed(2)
    assert store.due(200, 10) == []
    assert store.due(300, 10) == ["a"]
    KeyState(store, "a", 0).set_timer(50)
    assert store.due(60, 10) == ["a"]


def test_a_timer_costs_no_changelog_record_of_its_own(store: Store):
    """Booking a timer beside a field write leaves the key's one record, timer included."""
    state = KeyState(store, "a", 0)
    state.set("x", 1)
    state.set_timer(100)
    changes = list(store.changes(0))
    assert len(changes) == 1
    assert decode_entry(changes[0][1])[0] == {"x": 1, "_timer": 100}


def test_a_timer_stays_due_until_moved_or_cleared(store: Store):
    """Listing due keys does not consume them: an unfired (crashed) timer is listed again."""
    KeyState(store, "a", 0).set_timer(100)
    assert store.due(100, 10) == ["a"]
    assert store.due(100, 10) == ["a"]
    KeyState(store, "a", 100).set_timer(None)
    assert store.due(100, 10) == []


def test_an_expired_entry_does_not_fire_its_timer(store: Store):
    """A timer beyond its entry's retention goes with the entry (ttl 1 s here)."""
    KeyState(store, "a", 0).set_timer(5_000)
    assert store.due(5_000, 10) == []


def test_clearing_the_only_field_but_the_timer_removes_the_entry(store: Store):
    """An entry left holding only its timer is deleted (tombstone), and its timer with it."""
    state = KeyState(store, "a", 0)
    state.set("x", 1)
    state.set_timer(100)
    state.delete("x")
    assert store.get("a", 0) is None
    assert store.due(100, 10) == []


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_restore_rebuilds_the_timer_index(tmp_path: Path, kind: str):
    """A store restored from the changelog lists the same due timers as the one that wrote it."""
    source = MemoryStore("s", 0, 10_000)
    for i, due in enumerate((300, 100, 200)):
        state = KeyState(source, f"k{i}", 0)
        state.set("x", i)
        state.set_timer(due)
    KeyState(source, "plain", 0).set("x", 9)
    restored = (MemoryStore("s", 0, 10_000) if kind == "memory"
                else DiskStore("s", 0, 10_000, tmp_path / "db"))
    _replay(source, restored)
    assert restored.due(250, 10) == ["k1", "k2"]
    assert KeyState(restored, "k1", 0).timer == 100
    restored.close()


def test_a_restored_tombstone_removes_the_disk_timer_index(tmp_path: Path):
    """Replaying a later tombstone (or a timer-less value) over a timed entry drops its index."""
    db = DiskStore("s", 0, 10_000, tmp_path / "db")
    db.restore("a", encode_entry({"x": 1, "_timer": 100}, 10_000))
    db.restore("b", encode_entry({"x": 1, "_timer": 100}, 10_000))
    db.restored(2)
    db.restore("a", None)
    db.restore("b", encode_entry({"x": 2}, 10_000))
    db.restored(4)
    assert db.due(1_000, 10) == []
    db.close()


def test_a_disk_store_keeps_its_timer_index_across_reopening(tmp_path: Path):
    """The disk index is local and consistent with the checkpointed entries: no replay needed."""
    db = DiskStore("s", 0, 10_000, tmp_path / "db")
    KeyState(db, "a", 0).set_timer(100)
    db.checkpointed(5)
    db.close()
    again = DiskStore("s", 0, 10_000, tmp_path / "db")
    assert again.restore_from() == 5
    assert again.due(100, 10) == ["a"]
    again.close()


def test_rocksdb_memory_reports_the_shared_cache_once_and_each_store_by_name(tmp_path: Path):
    """Open disk stores are summed by store name (partitions counted); the block cache, shared
    by every store of the process, is one figure with its budget as capacity."""
    from pipeline.runtime.store import rocksdb_memory

    opened = [DiskStore("mem-a", p, None, tmp_path / f"a{p}") for p in (0, 1)]
    opened.append(DiskStore("mem-b", 0, None, tmp_path / "b0"))
    for store in opened:
        KeyState(store, "k", now_ms=1).set("n", 1)
        store.checkpointed(1)
    figures = rocksdb_memory()
    assert figures["cache"]["usage"] >= figures["cache"]["pinned"] >= 0
    assert figures["stores"]["mem-a"]["open"] == 2
    assert figures["stores"]["mem-b"]["open"] == 1
    assert figures["stores"]["mem-a"]["memtables"] > 0  # the checkpoint's write is in one
    assert figures["cache"]["roles"]  # the memtables' charge at least (WriteBuffer)
    for store in opened:
        store.close()
    assert {"mem-a", "mem-b"}.isdisjoint(rocksdb_memory()["stores"])


def test_the_rocksdb_budget_follows_the_number_of_open_stores(tmp_path: Path):
    """The shared block cache (memtables charged to it) gets a fixed budget per open partition
    store: opening stores raises its capacity, closing them lowers it again."""
    from pipeline.runtime.store import _MEMORY_PER_STORE, rocksdb_memory

    first = DiskStore("budget", 0, None, tmp_path / "0")
    before = rocksdb_memory()["cache"]["capacity"]
    opened = [DiskStore("budget", p, None, tmp_path / str(p)) for p in (1, 2)]
    assert rocksdb_memory()["cache"]["capacity"] == before + 2 * _MEMORY_PER_STORE
    for store in opened:
        store.close()
    assert rocksdb_memory()["cache"]["capacity"] == before
    first.close()


def test_a_timer_set_below_where_the_last_scan_began_is_found(store: Store):
    """Scans start where the index's first live entry was last seen (past the deletion
    tombstones of moved timers); a timer written earlier than that afterwards still fires."""
    KeyState(store, "late", 0).set_timer(600)
    store.checkpointed(1)
    assert store.due(500, 10) == []  # the scan saw 600 first
    KeyState(store, "early", 0).set_timer(200)
    store.checkpointed(2)
    assert store.due(500, 10) == ["early"]
    assert store.due(700, 10) == ["early", "late"]


def test_an_expiry_written_below_where_the_last_sweep_began_is_swept(tmp_path: Path):
    """The expiry index likewise: an entry written after a sweep with an earlier expiry than
    the first one that sweep saw is still removed when due."""
    store = DiskStore("s", 0, 1_000, tmp_path / "db")
    KeyState(store, "a", 5_000).set("x", 1)  # expires 6,000
    store.checkpointed(1)
    assert store.sweep(now_ms=2_000, limit=100) == 0  # the sweep saw 6,000 first
    KeyState(store, "b", 0).set("x", 1)  # expires 1,000
    store.checkpointed(2)
    assert store.sweep(now_ms=2_000, limit=100) == 1
    assert store.get("b", 1_500) is None and store.get("a", 2_000) == {"x": 1}
    store.close()
