"""The SMSC simulator on its own thread and event loop, for synchronous tests and tools.

``with ThreadedSmsc(config) as smsc: ... smsc.port ... smsc.submits``. Records are plain lists
appended on the simulator's thread; reading them from another thread is safe in CPython, and
anything that changes the simulator goes through :meth:`ThreadedSmsc.call`, which runs on its
loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

from connectors.simulators.smsc import SmscSimulator
from connectors.simulators.smsc_model import (
    Faults,
    ReceiptPlan,
    ReceiptRecord,
    SmscConfig,
    SubmitRecord,
)

T = TypeVar("T")


class ThreadedSmsc:
    def __init__(self, config: SmscConfig | None = None, faults: Faults | None = None,
                 *, start_timeout_s: float = 10.0) -> None:
        self.simulator = SmscSimulator(config, faults)
        self._timeout = start_timeout_s
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="smsc-simulator", daemon=True)

    @property
    def port(self) -> int:
        return self.simulator.port

    @property
    def submits(self) -> Sequence[SubmitRecord]:
        return self.simulator.submits

    @property
    def receipts_sent(self) -> Sequence[ReceiptRecord]:
        return self.simulator.receipts_sent

    @property
    def faults(self) -> Faults:
        return self.simulator.faults

    def receipt_plans(self) -> dict[str, ReceiptPlan]:
        """Receipt decisions so far, by issued message id (see SmscSimulator.receipt_plans)."""
        return self.simulator.receipt_plans()

    def start(self) -> ThreadedSmsc:
        self._thread.start()
        if not self._ready.wait(self._timeout):
            raise TimeoutError(f"SMSC simulator not listening within {self._timeout}s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(self._timeout)

    def call(self, fn: Callable[[SmscSimulator], T]) -> T:
        """Run ``fn(simulator)`` on the simulator's loop and return its result."""
        if self._loop is None:
            raise RuntimeError("simulator not started")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn(self.simulator))
            except Exception as exc:
                future.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return future.result(self._timeout)

    def __enter__(self) -> ThreadedSmsc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to start(); the thread must not die silently
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with self.simulator:
            self._ready.set()
            await self._stop.wait()
