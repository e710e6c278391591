"""The whole pipeline as real processes, and an analyst's independent view of its output
(:mod:`pipeline.dev.history`, shared with the fault-injection suite in ``bench/faults.py``)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pipeline.dev.history import FINAL, applied, independent_history, regressions
from pipeline.settings import Settings
from tests.fixtures.telex import Worker
from tests.fixtures.waiting import wait_for

__all__ = ["ALL_STAGES", "FINAL", "applied", "carriers_file", "independent_history",
           "regressions", "smpp", "start_pipeline", "wait_final"]

ALL_STAGES = ("ingest", "ratelimit", "scheduler", "dispatch", "reconcile", "status")


def start_pipeline(settings: Settings, worker: Callable[[str, Settings], Worker],
                   stages: Iterable[str] = ALL_STAGES) -> dict[str, Worker]:
    return {s: worker(s, settings) for s in stages}


def carriers_file(tmp_path: Path, connectors: list[dict[str, Any]],
                  routes: list[dict[str, Any]]) -> str:
    path = tmp_path / f"carriers-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps({"connectors": connectors, "routes": routes}))
    return str(path)


def smpp(name: str, port: int, window: int = 20) -> dict[str, Any]:
    return {"name": name, "type": "smpp", "host": "127.0.0.1", "port": port,
            "system_id": "telex", "password": "secret", "window": window,
            "response_timeout_s": 5}


def wait_final(settings: Settings, ids: set[str], workers: dict[str, Worker],
               timeout: float = 180) -> dict[str, list[dict[str, Any]]]:
    """Poll the history until every message in ``ids`` has a final effective status (every
    worker still alive while some are pending)."""
    History = dict[str, list[dict[str, Any]]]

    def pending(history: History) -> set[str]:
        return {i for i in ids
                if not history.get(i) or applied(history[i])[-1]["effective_status"]
                not in FINAL}

    def read() -> History:
        history = independent_history(settings)
        if pending(history):
            for w in workers.values():
                w.assert_alive()
        return history

    def not_final(history: History) -> str:
        left = pending(history)
        sample = {i: [(e["status"], e["source"]) for e in history.get(i, [])]
                  for i in sorted(left)[:3]}
        return f"{len(left)} of {len(ids)} messages not final; e.g. {sample}"

    return wait_for(read, until=lambda history: not pending(history), timeout=timeout,
                    what="every message final", interval_s=1, describe=not_final)
