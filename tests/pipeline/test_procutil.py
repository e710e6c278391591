"""Process helpers: the malloc arena cap of worker processes."""

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
