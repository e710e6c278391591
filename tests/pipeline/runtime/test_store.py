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
