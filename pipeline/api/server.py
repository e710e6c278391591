"""``telex api``: uvicorn (httptools, uvloop) inside our own asyncio loop (docs/adr/0006).

Stopping on SIGTERM or SIGINT: uvicorn closes the listener and idle keep-alive connections,
lets requests in flight finish (at most ``_GRACE_S``), then runs the app's lifespan shutdown,
which flushes the producer: every 201 was already acknowledged, and nothing the API accepted is
left in librdkafka's queue. The signals are ours (not uvicorn's capture, which re-raises
them after its clean stop) so a clean stop exits 0; the glue is the webhook receiver's,
:class:`~pipeline.runtime.asgiserver.AsgiServer`.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import structlog

from pipeline.api.app import build_app
from pipeline.api.keys import KeyRing
from pipeline.runtime.asgiserver import AsgiServer
from pipeline.settings import Settings

__all__ = ["make_server", "serve"]

log = structlog.get_logger("telex.api")

_GRACE_S = 30  # in-flight requests get this long; a POST waits at most api_publish_timeout_s


def make_server(settings: Settings, keys: KeyRing | None = None,
                on_started: Callable[[], None] | None = None) -> AsgiServer:
    """The API app on Telex's one server glue (:mod:`pipeline.runtime.asgiserver`), with its
    lifespan on: the app opens its store and producer, and flushes the producer at the end."""
    return AsgiServer(build_app(settings, keys), settings.api_host, settings.api_port,
                      grace_s=_GRACE_S, lifespan=True, on_started=on_started)


async def serve(settings: Settings, keys: KeyRing | None = None,
                on_ready: Callable[[int], None] | None = None) -> None:
    """Run the API until SIGTERM/SIGINT; ``on_ready(port)`` once it listens."""
    def started() -> None:
        log.info("api_listening", host=settings.api_host, port=server.port)
        if on_ready is not None:
            on_ready(server.port)

    server = make_server(settings, keys, on_started=started)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _stop, server, sig)
    try:
        await server.serve()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _stop(server: AsgiServer, sig: int) -> None:
    """The first signal stops gracefully, a second stops waiting for requests in flight."""
    log.info("api_stopping", signal=signal.Signals(sig).name, in_flight=server.in_flight)
    server.stop()
