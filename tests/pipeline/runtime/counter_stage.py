"""A counting stage for runtime tests: ``python -m tests.pipeline.runtime.counter_stage
memory|disk``. Each record adds one to its key's count and emits the new count, so the last
output per key says whether the store lost or double-applied anything. It also writes each new
count to a compacted view topic (``Out.view``), whose last record per key must end the same."""

from __future__ import annotations

import signal
import sys

from pipeline.observability import configure_logging
from pipeline.runtime.runner import StageRunner
from pipeline.runtime.stage import Input, KeyedStage, Out, Record, StoreSpec
from pipeline.runtime.store import KeyState
from pipeline.settings import get_settings

IN_TOPIC, OUT_TOPIC, VIEW_TOPIC, STORE = "rt-in", "rt-out", "rt-view", "counts"


class Counter(KeyedStage):
    name = "rtcount"

    def __init__(self, disk: bool) -> None:
        self.inputs = (Input(IN_TOPIC, StoreSpec(STORE, 3600, disk=disk)),)

    def handle(self, record: Record, state: KeyState | None, now_ms: int) -> list[Out]:
        assert state is not None
        if record.value == b"poison":
            raise ValueError("poison record")
        count = state.get("n", 0) + 1
        state.set("n", count)
        value = str(count).encode()
        return [Out(OUT_TOPIC, record.key or "", value),
                Out(VIEW_TOPIC, record.key or "", value, view=True)]


def main() -> int:
    settings = get_settings()
    configure_logging(settings.log_level)
    runner = StageRunner(settings, Counter(disk=sys.argv[1] == "disk"))
    signal.signal(signal.SIGTERM, lambda *_: runner.stop())
    runner.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
