"""An ASGI app served by uvicorn (httptools) inside the caller's asyncio loop (docs/adr/0006).

Telex's HTTP surfaces run uvicorn as a library, not as a process manager: the webhook receiver
needs the server in its own loop, next to the Kafka producer it flushes after the last answer.
:class:`AsgiServer` is that glue and nothing else.

Listening: :meth:`AsgiServer.serve` binds the socket itself and hands it to uvicorn, because
uvicorn answers a bind error with ``sys.exit(1)`` from inside our loop; here it is an
``OSError`` raised to the caller, and :attr:`AsgiServer.port` is known (port 0 included) from
the moment :attr:`AsgiServer.ready` is set, which is once uvicorn serves.

Stopping (:meth:`AsgiServer.stop`, from any thread or a signal handler) only sets uvicorn's
``should_exit``; uvicorn's own shutdown then (1) closes the listener; (2) in the same loop
callback, closes every connection whose request head has not been parsed yet and marks each
request in flight ``keep_alive = False``; (3) lets those requests finish, answered with
``connection: close``, for up to ``grace_s``; (4) cancels what is left. The state it decides on
in (2) — a request cycle exists, its response is not complete — is written by the protocol's
own callbacks in the same loop thread, in the very calls that parse the head and write the last
byte of the answer, so no request whose head was read can be taken for idle (the hand-written
server's race: its "busy" flag was set by the connection task after ``readuntil`` resumed, so
a head already buffered still looked idle to ``close()``).

Signals: uvicorn's ``serve()`` replaces SIGINT/SIGTERM handlers while it runs and re-raises
the signal after a clean stop (the process then dies with -15 after its flush); our processes
own their signals (``loop.add_signal_handler`` calling :meth:`stop`), so that capture is off.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Generator

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

_BACKLOG = 1024
_KEEP_ALIVE_S = 75.0
"""Idle keep-alive connections are closed after this. Above the usual client pool idle times
(Meta's and httpx's are shorter), so it is the client that closes an idle connection: a server
closing first races the client's next request on it, which then fails without an answer."""


class _Uvicorn(uvicorn.Server):
    """uvicorn's server with its signal capture off and a hook when it starts and stops."""

    def __init__(self, config: uvicorn.Config, owner: AsgiServer) -> None:
        super().__init__(config)
        self._owner = owner

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Off: the process owns SIGTERM/SIGINT (see the module docstring)."""
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self._owner._started()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._owner._on_stopping()
        await super().shutdown(sockets)


class AsgiServer:
    """``await serve()`` on a loop until :meth:`stop`; ``ready`` is set once it serves."""

    def __init__(self, app: ASGIApp, host: str, port: int, *, grace_s: float = 30.0,
                 on_started: Callable[[], None] | None = None,
                 on_stopping: Callable[[], None] | None = None) -> None:
        """``on_started`` runs on the loop once uvicorn serves, ``on_stopping`` once it begins
        to stop (before the listener closes, so :attr:`in_flight` is what the stop waits for).
        """
        self._host, self._port = host, port
        self._on_started = on_started or (lambda: None)
        self._on_stopping = on_stopping or (lambda: None)
        self._received = 0
        self._app = app
        config = uvicorn.Config(
            self._counted, host=host, port=port, loop="none", http="httptools", ws="none",
            lifespan="off", interface="asgi3", log_config=None, access_log=False,
            server_header=False, backlog=_BACKLOG, timeout_keep_alive=int(_KEEP_ALIVE_S),
            timeout_graceful_shutdown=int(grace_s))
        self._server = _Uvicorn(config, self)
        self._bound: int | None = None
        self.ready = threading.Event()

    @property
    def port(self) -> int:
        """The bound port (also after the stop, for logs and tests)."""
        if self._bound is None:
            raise RuntimeError("server not started")
        return self._bound

    @property
    def accepting(self) -> bool:
        """Whether the listener accepts connections (False from the first step of a stop)."""
        servers = getattr(self._server, "servers", ())
        return any(s.is_serving() for s in servers)

    @property
    def stopping(self) -> bool:
        return self._server.should_exit

    @property
    def in_flight(self) -> int:
        """Requests whose head was parsed and whose handling has not finished: uvicorn's own
        set of request tasks, the one its stop waits for."""
        return len(self._server.server_state.tasks)

    @property
    def received(self) -> int:
        """Requests handed to the app so far. A request counted here has a parsed head, so a
        stop from then on lets it finish (step 2 of the module docstring)."""
        return self._received

    def stop(self) -> None:
        """Begin a graceful stop; safe from any thread, from a signal handler, and before
        :meth:`serve` (which then starts, stops at once and returns)."""
        self._server.should_exit = True

    async def serve(self) -> None:
        """Serve until :meth:`stop` and return once every request in flight is answered (or
        cancelled after the grace period) and the listener is closed."""
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.create_server((self._host, self._port), family=family, backlog=_BACKLOG)
        self._bound = int(sock.getsockname()[1])
        try:
            await self._server.serve(sockets=[sock])
        finally:
            sock.close()

    def _started(self) -> None:
        """On the loop, once uvicorn serves: before ``ready``, so a waiter sees its effects."""
        self._on_started()
        self.ready.set()

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self._received += 1
        await self._app(scope, receive, send)
