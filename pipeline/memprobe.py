"""Memory probe of a worker process, for soaks and memory investigations (off by default).

``TELEX_MEMORY_PROBE_DIR=DIR`` makes a worker process write ``DIR/<pid>.json`` every
``TELEX_MEMORY_PROBE_S`` seconds (10): what its resident memory is made of, as far as the
process itself can tell —

- ``rocksdb``: :func:`pipeline.runtime.store.rocksdb_memory` (the block cache once, memtables and
  table readers per store name; the same figures as the ``telex_rocksdb_*`` gauges);
- ``malloc``: glibc's ``mallinfo2`` over all arenas: ``in_use`` (allocated), ``free`` (held by
  malloc but free: fragmentation, or arenas not given back), ``mmapped``; and ``arenas``, the
  number of malloc arenas (one per thread that needed one, up to 8 per core unless
  ``MALLOC_ARENA_MAX`` says fewer);
- ``python``: pymalloc blocks allocated, live objects tracked by the garbage collector (only with
  ``TELEX_MEMORY_PROBE_GC=1``: walking every object costs tens of milliseconds), threads;
- with ``TELEX_TRACEMALLOC=FRAMES``, ``tracemalloc`` started at import with that many frames and
  the 15 source lines whose allocations grew most since the first probe written after
  ``TELEX_MEMORY_PROBE_BASELINE_S`` (300) seconds (costly: for investigations only).

The files are replaced atomically; :mod:`bench.soak` reads them next to each process's RSS.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

__all__ = ["snapshot", "start_from_env"]


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _malloc() -> dict[str, int]:
    """glibc's malloc statistics over all arenas (empty where mallinfo2 is missing)."""
    try:
        libc = ctypes.CDLL(None)
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        return {}
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return {"heap": info.arena, "mmapped": info.hblkhd, "in_use": info.uordblks + info.hblkhd,
            "free": info.fordblks, "arenas": _arenas()}


def _arenas() -> int:
    """Number of malloc arenas (main and per-thread), from ``malloc_info``'s XML."""
    try:
        libc = ctypes.CDLL(None)
        buf = ctypes.c_char_p()
        size = ctypes.c_size_t()
        libc.open_memstream.restype = ctypes.c_void_p
        stream = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
        libc.malloc_info(0, ctypes.c_void_p(stream))
        libc.fclose(ctypes.c_void_p(stream))
        text = ctypes.string_at(buf, size.value)
        libc.free(buf)
    except (OSError, AttributeError):
        return 0
    return text.count(b"<heap nr=")


def snapshot(*, gc_objects: bool = False) -> dict[str, Any]:
    """This process's memory as it sees it (see the module docstring)."""
    from pipeline.runtime.store import rocksdb_memory

    python: dict[str, Any] = {"pymalloc_blocks": sys.getallocatedblocks(),
                              "threads": threading.active_count()}
    if gc_objects:
        python["gc_objects"] = len(gc.get_objects())
    return {"pid": os.getpid(), "t": time.time(), "rocksdb": rocksdb_memory(),
            "malloc": _malloc(), "python": python}


def _write(path: Path, figures: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(figures))
    tmp.replace(path)


def _probe(path: Path, every_s: float, gc_objects: bool, baseline_s: float,
           stop: threading.Event) -> None:
    started = time.monotonic()
    baseline: tracemalloc.Snapshot | None = None
    while True:
        figures = snapshot(gc_objects=gc_objects)
        if tracemalloc.is_tracing():
            if baseline is None and time.monotonic() - started >= baseline_s:
                baseline = tracemalloc.take_snapshot()
            elif baseline is not None:
                stats = tracemalloc.take_snapshot().compare_to(baseline, "lineno")
                figures["tracemalloc_growth"] = [
                    {"where": str(s.traceback), "size_diff": s.size_diff,
                     "count_diff": s.count_diff} for s in stats[:15]]
        _write(path, figures)
        if stop.wait(every_s):  # the probe's period, not a readiness wait
            return


def start_from_env() -> threading.Event | None:
    """Start the probe thread when ``TELEX_MEMORY_PROBE_DIR`` is set; returns the event that
    stops it (None: not started)."""
    where = os.environ.get("TELEX_MEMORY_PROBE_DIR")
    if not where:
        return None
    frames = int(os.environ.get("TELEX_TRACEMALLOC") or 0)
    if frames and not tracemalloc.is_tracing():
        tracemalloc.start(frames)
    path = Path(where) / f"{os.getpid()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    threading.Thread(target=_probe, name="memory-probe", daemon=True, args=(
        path, float(os.environ.get("TELEX_MEMORY_PROBE_S") or 10),
        os.environ.get("TELEX_MEMORY_PROBE_GC") == "1",
        float(os.environ.get("TELEX_MEMORY_PROBE_BASELINE_S") or 300), stop)).start()
    return stop
