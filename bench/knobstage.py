"""A stage process for ``bench.clientknobs``: the real batch runtime under client knobs.

    python -m bench.knobstage ingest            the ingest stage (pipeline.stages.ingest.stage)
    python -m bench.knobstage hop NAME IN OUT   a passthrough stage: each record to OUT as is

Both run :class:`~pipeline.runtime.runner.StageRunner`, so the poll/produce/checkpoint loop is
the product's. ``TELEX_BENCH_KNOBS`` (JSON ``{"producer": {...}, "consumer": {...}}``) is
merged over ``runtime_producer_config`` / ``runtime_consumer_config``; each client's latest
librdkafka statistics (request counts by type, records sent/received) are written to
``TELEX_BENCH_STATS`` once a second.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.runtime.runner import StageRunner
from pipeline.runtime.stage import Input, Out, Record, Stage
from pipeline.runtime.store import Store
from pipeline.settings import Settings, load_settings

STATS_INTERVAL_MS = 1000


def client_stats(raw: str) -> tuple[str, dict[str, Any]]:
    """(client name, summary) of one librdkafka statistics JSON: requests by type summed over
    broker connections, records sent (producer) or received (consumer)."""
    stats = json.loads(raw)
    requests: dict[str, int] = {}
    for broker in stats.get("brokers", {}).values():
        for kind, count in (broker.get("req") or {}).items():
            requests[kind] = requests.get(kind, 0) + count
    return stats["name"], {"type": stats["type"], "req": requests,
                           "txmsgs": stats.get("txmsgs", 0), "rxmsgs": stats.get("rxmsgs", 0)}


class StatsFile:
    """Keeps the latest summary of every client of this process in one JSON file."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.latest: dict[str, dict[str, Any]] = {}

    def config(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        return {"statistics.interval.ms": STATS_INTERVAL_MS, "stats_cb": self.on_stats}

    def on_stats(self, raw: str) -> None:
        name, summary = client_stats(raw)
        self.latest[name] = summary
        if self.path is not None:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.latest))
            tmp.replace(self.path)


_KNOBS: dict[str, dict[str, Any]] = json.loads(os.environ.get("TELEX_BENCH_KNOBS", "{}"))
_STATS = StatsFile(Path(os.environ["TELEX_BENCH_STATS"])
                   if os.environ.get("TELEX_BENCH_STATS") else None)


class KnobSettings(Settings):
    """Settings whose runtime client configs carry the knobs under test and statistics."""

    def runtime_producer_config(self) -> dict[str, Any]:  # type: ignore[override]
        return {**super().runtime_producer_config(), **_KNOBS.get("producer", {}),
                **_STATS.config()}

    def runtime_consumer_config(self, group: str) -> dict[str, Any]:  # type: ignore[override]
        return {**super().runtime_consumer_config(group), **_KNOBS.get("consumer", {}),
                **_STATS.config()}


class Hop(Stage):
    """Passthrough: every input record to ``out`` with its key, value and headers."""

    def __init__(self, name: str, in_topic: str, out_topic: str) -> None:
        self.name = name
        self.inputs = (Input(in_topic),)
        self._out = out_topic

    def process(self, records: Sequence[Record], stores: Mapping[tuple[str, int], Store],
                now_ms: int) -> list[Out]:
        out = self._out
        return [Out(out, r.key or "", r.value or b"", r.headers or []) for r in records]


def main(argv: list[str]) -> int:
    base = load_settings()
    settings = KnobSettings(**base.model_dump())
    if argv[0] == "ingest":
        from pipeline.stages.ingest.stage import build
        stage: Stage = build(settings)
    else:
        _, name, in_topic, out_topic = argv
        stage = Hop(name, in_topic, out_topic)
    runner = StageRunner(settings, stage)
    signal.signal(signal.SIGTERM, lambda *_: runner.stop())
    runner.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
