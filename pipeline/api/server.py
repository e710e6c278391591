"""``telex api``: uvicorn (httptools, uvloop) inside our own asyncio loop (docs/adr/0006).

Stopping on SIGTERM or SIGINT: uvicorn closes the listener and idle keep-alive connections,
lets requests in flight finish (at most ``_GRACE_S``), then runs the app's lifespan shutdown,
which flushes the producer: every 201 was already acknowledged, and nothing the API accepted is
left in librdkafka's queue. We handle the signals ourselves (not uvicorn's capture, which
re-raises them after its clean stop) so a clean stop exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Generator

import structlog
import uvicorn

from pipeline.api.app import build_app
from pipeline.api.keys import KeyRing
from pipeline.settings import Settings

__all__ = ["ApiServer", "serve"]

log = structlog.get_logger("telex.api")

_GRACE_S = 30  # in-flight requests get this long; a POST waits at most api_publish_timeout_s


class ApiServer(uvicorn.Server):
    """uvicorn's server with the stop signals left to the loop's own handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    @property
    def port(self) -> int:
        """The bound port (useful with TELEX_API_PORT=0), once started."""
        return int(self.servers[0].sockets[0].getsockname()[1])


def make_server(settings: Settings, keys: KeyRing | None = None) -> ApiServer:
    config = uvicorn.Config(
        build_app(settings, keys), host=settings.api_host, port=settings.api_port,
        loop="none", http="httptools", lifespan="on", access_log=False, log_config=None,
        timeout_graceful_shutdown=_GRACE_S, server_header=False)
    return ApiServer(config)


async def serve(settings: Settings, keys: KeyRing | None = None,
                on_ready: Callable[[int], None] | None = None) -> None:
    """Run the API until SIGTERM/SIGINT; ``on_ready(port)`` once it listens."""
    server = make_server(settings, keys)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _stop, server, sig)
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started and not serving.done():
            await asyncio.wait({serving}, timeout=0.02)  # polls uvicorn's started flag
        if server.started:
            log.info("api_listening", host=settings.api_host, port=server.port)
            if on_ready is not None:
                on_ready(server.port)
        await serving
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _stop(server: ApiServer, sig: int) -> None:
    log.info("api_stopping", signal=signal.Signals(sig).name)
    if server.should_exit:
        server.force_exit = True  # a second signal: stop waiting for requests in flight
    server.should_exit = True
