"""What every benchmark shares: a broker for the run, worker environments, summaries."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any, TypeVar

from pipeline.dev.broker import DevBroker
from pipeline.settings import Settings

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_stats(pid: int) -> tuple[float, int]:
    """CPU seconds (user+system) and peak RSS in KiB of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    hwm = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text()
               .splitlines() if line.startswith("VmHWM"))
    return cpu, hwm


@contextmanager
def local_broker(prefix: str) -> Iterator[tuple[str, Path, int | None]]:
    """(bootstrap, scratch dir, broker pid): KAFKA_BOOTSTRAP_SERVERS if set (no pid), else a
    fresh local broker."""
    with TemporaryDirectory(prefix=prefix) as tmp:
        existing = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        broker = None if existing else DevBroker(Path(tmp) / "kafka", die_with_parent=True)
        try:
            bootstrap = existing or broker.start()  # type: ignore[union-attr]
            yield bootstrap, Path(tmp), broker.pid if broker else None
        finally:
            if broker is not None:
                broker.stop()


def runs(count: int, one: Callable[[str, Path], T], prefix: str) -> list[T]:
    """``count`` runs of ``one(bootstrap, scratch)`` on one broker."""
    with local_broker(prefix) as (bootstrap, tmp, _):
        return [one(bootstrap, tmp) for _ in range(count)]


def worker_env(settings: Settings) -> dict[str, str]:
    """Environment of a stage worker process for ``settings``."""
    return {**os.environ, **settings.to_env(), "TELEX_LOG_LEVEL": "WARNING"}


def print_summary(title: str, results: list[Mapping[str, float]], width: int = 24) -> None:
    """One line per metric: median over runs, then (min, max)."""
    print(f"\n{title} ({len(results)} runs: median (min, max))")
    for metric in results[0]:
        values = [r[metric] for r in results]
        print(f"  {metric:{width}} {statistics.median(values):12.3f}  "
              f"({min(values):.3f}, {max(values):.3f})")


def write_figures(args: argparse.Namespace, figures: Mapping[str, Any]) -> None:
    """``--json``: the machine, the arguments and every figure, in one file (when asked)."""
    if args.json is None:
        return
    args.json.write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "args": {k: str(v) for k, v in vars(args).items()}, **figures}, indent=1))
    print(f"\nfigures written to {args.json}")
