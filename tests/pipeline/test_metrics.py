"""Prometheus metrics of a worker process: RocksDB memory gauges read at each scrape."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

import pipeline.metrics  # noqa: F401  (registers the RocksDB collector)
from pipeline.runtime.store import DiskStore, KeyState, rocksdb_memory


def _samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client import generate_latest

    text = generate_latest(REGISTRY).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name.startswith("telex_rocksdb_")}


def test_an_open_disk_store_is_exposed_as_rocksdb_gauges(tmp_path: Path):
    """A disk store's partitions, memtables and table readers appear under its name, and the
    process's one block cache once, with its budget as capacity."""
    store = DiskStore("gauged", 3, None, tmp_path / "db")
    try:
        KeyState(store, "k", now_ms=1).set("n", 1)
        store.checkpointed(1)
        samples = _samples()
        label = (("store", "gauged"),)
        assert samples[("telex_rocksdb_open_stores", label)] == 1
        assert samples[("telex_rocksdb_memtable_bytes", label)] > 0
        assert ("telex_rocksdb_table_readers_bytes", label) in samples
        assert samples[("telex_rocksdb_block_cache_capacity_bytes", ())] == (
            rocksdb_memory()["cache"]["capacity"])
        assert samples[("telex_rocksdb_block_cache_usage_bytes", ())] > 0
        assert any(name == "telex_rocksdb_block_cache_role_bytes" for name, _ in samples)
    finally:
        store.close()
    assert ("telex_rocksdb_open_stores", (("store", "gauged"),)) not in _samples()
