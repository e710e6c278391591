"""The worker memory probe (TELEX_MEMORY_PROBE_DIR): what a soak reads next to RSS."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline import memprobe
from tests.fixtures.waiting import until_sync


def test_a_snapshot_reports_malloc_python_and_rocksdb_figures():
    """malloc in use / free / arenas, pymalloc blocks and threads; gc objects only on request."""
    figures = memprobe.snapshot(gc_objects=True)
    assert figures["pid"] == os.getpid()
    assert figures["malloc"]["in_use"] > 0 and figures["malloc"]["arenas"] >= 1
    assert figures["python"]["pymalloc_blocks"] > 0 and figures["python"]["threads"] >= 1
    assert figures["python"]["gc_objects"] > 0
    assert "gc_objects" not in memprobe.snapshot()["python"]
    assert isinstance(figures["rocksdb"], dict)


def test_without_its_variable_the_probe_does_not_start(monkeypatch: pytest.MonkeyPatch):
    """Off by default: no thread, no file."""
    monkeypatch.delenv("TELEX_MEMORY_PROBE_DIR", raising=False)
    assert memprobe.start_from_env() is None


def test_the_probe_writes_its_figures_to_a_file_named_for_the_pid(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """With TELEX_MEMORY_PROBE_DIR set, DIR/<pid>.json holds a snapshot (written atomically)."""
    monkeypatch.setenv("TELEX_MEMORY_PROBE_DIR", str(tmp_path))
    monkeypatch.setenv("TELEX_MEMORY_PROBE_S", "0.05")
    stop = memprobe.start_from_env()
    assert stop is not None
    try:
        path = tmp_path / f"{os.getpid()}.json"
        until_sync(path.exists, what="the probe's file")
        assert json.loads(path.read_text())["pid"] == os.getpid()
    finally:
        stop.set()
