"""Process helpers: the malloc arena cap and the periodic trim of worker processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from bench.harness import REPO

_THREADS_ALLOCATING = """
import json, sys, threading
from pipeline.procutil import limit_malloc_arenas
from pipeline.memprobe import snapshot

capped = limit_malloc_arenas(2)
barrier = threading.Barrier(8)

def churn():
    barrier.wait()  # all eight allocate at once: without a cap, each contended thread gets
    for _ in range(20_000):  # an arena of its own
        bytearray(4096)

threads = [threading.Thread(target=churn) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"capped": capped, "arenas": snapshot()["malloc"]["arenas"]}))
"""


def _run(env: dict[str, str]) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", _THREADS_ALLOCATING], cwd=REPO, env=env,
                         capture_output=True, text=True, check=True, timeout=60)
    return json.loads(out.stdout)


def test_worker_threads_share_at_most_the_capped_number_of_arenas():
    """After limit_malloc_arenas(2), eight threads allocating together use at most 2 arenas."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    result = _run(env)
    assert result["capped"] is True
    assert 1 <= result["arenas"] <= 2


def test_malloc_arena_max_in_the_environment_wins():
    """An operator's MALLOC_ARENA_MAX is left alone (the helper reports it did nothing)."""
    result = _run({**os.environ, "MALLOC_ARENA_MAX": "4"})
    assert result["capped"] is False
    assert result["arenas"] <= 4


_FRAGMENTED_THEN_TRIMMED = """
import json
from pipeline.procutil import malloc_trim

blocks = [bytearray(4096) for _ in range(20_000)]  # ~80 MiB on the heap
kept = blocks[::64]  # one block in 64 stays: the freed pages sit between live chunks
del blocks
print(json.dumps({"released": malloc_trim()}))
"""


def test_malloc_trim_gives_back_free_pages_held_between_live_chunks():
    """Memory freed between chunks still in use is not returned by free() alone; malloc_trim
    releases those pages (what a worker's periodic trim is for)."""
    out = subprocess.run([sys.executable, "-c", _FRAGMENTED_THEN_TRIMMED], cwd=REPO,
                         capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(out.stdout) == {"released": True}


def test_the_periodic_trim_runs_until_stopped():
    """trim_malloc_every calls its trim once per interval on a thread of its own, and stops
    when asked."""
    import threading

    from pipeline.procutil import trim_malloc_every
    from tests.fixtures.waiting import until_sync

    calls: list[str] = []
    stop = trim_malloc_every(0.01, lambda: bool(calls.append(threading.current_thread().name)))
    until_sync(lambda: len(calls) >= 3, 10, "three trims")
    stop.set()
    assert set(calls) == {"malloc-trim"}


def test_listen_ports_are_free_distinct_and_below_the_ephemeral_range() -> None:
    """A dev broker's ports: bindable now, all different, and never ones an outgoing
    connection could take as its local port while the broker is down."""
    import socket

    from pipeline.procutil import _ephemeral_low, listen_ports

    ports = listen_ports(3)
    assert len(set(ports)) == 3 and all(p < _ephemeral_low() for p in ports)
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
