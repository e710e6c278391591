"""A minimal asyncio HTTP/1.1 server for Telex's own endpoints (status webhooks).

Why not ``http.server``: a thread per connection, and a handler that must block while Kafka
acknowledges, cap a webhook receiver at a few hundred requests/s; here a waiting request costs a
coroutine. Why not a framework: the endpoints need five features (Content-Length bodies,
keep-alive, a body limit decided per request, header limits, graceful stop) and no new
dependency.

Supported: one request at a time per connection (pipelined requests are answered in order),
``Content-Length`` bodies, keep-alive (HTTP/1.1 default, ``Connection: close`` honoured).
Refused by the server itself: chunked bodies (501), malformed request lines or headers (400),
heads over 64 KiB (431). The handler reads the body with :meth:`Request.body` only if it wants
it, so it can refuse a request (404, 413) before a large body is received; an unread body is
discarded when small, else the connection is closed.

Graceful stop (:meth:`HttpServer.close`): (1) stop accepting; (2) close idle connections, those
waiting for a request head; (3) let requests whose head has arrived finish, answered with
``Connection: close``; (4) after ``grace_s``, cancel what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qsl, unquote, urlsplit

import structlog

_HEAD_LIMIT = 65_536
_DISCARD_LIMIT = 1_048_576  # unread bodies up to this size are drained to keep the connection
_IDLE_TIMEOUT_S = 75.0  # an idle keep-alive connection is closed after this
_BODY_TIMEOUT_S = 30.0  # a body that stalls this long is abandoned

log = structlog.get_logger("telex.http")


class HttpRequestError(Exception):
    """The request cannot be read as HTTP/1.1; answered with ``status`` and the connection
    closed."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


@dataclass(slots=True)
class Request:
    method: str
    path: str  # percent-decoded, without the query
    query: Mapping[str, str]
    headers: Mapping[str, str]  # names in lower case
    content_length: int
    peer: str
    keep_alive: bool
    _reader: asyncio.StreamReader = field(repr=False)
    _body: bytes | None = field(default=None, repr=False)

    async def body(self) -> bytes:
        """The whole body (read once, then cached)."""
        if self._body is None:
            async with asyncio.timeout(_BODY_TIMEOUT_S):
                self._body = await self._reader.readexactly(self.content_length)
        return self._body

    @property
    def body_read(self) -> bool:
        return self._body is not None or self.content_length == 0


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Awaitable[Response]]


@dataclass(eq=False, slots=True)
class _Connection:
    writer: asyncio.StreamWriter
    task: asyncio.Task[None] | None = None
    busy: bool = False  # a request head has arrived and is not answered yet


class HttpServer:
    """``await server.start()``, then ``server.port``; ``await server.close()`` to stop."""

    def __init__(self, handler: Handler, host: str, port: int,
                 *, on_refused: Callable[[str], None] | None = None) -> None:
        self._handler, self._host, self._port = handler, host, port
        self._on_refused = on_refused or (lambda _reason: None)
        self._server: asyncio.Server | None = None
        self._bound: int | None = None
        self._connections: set[_Connection] = set()
        self._closing = False
        self._received = 0

    @property
    def port(self) -> int:
        """The bound port (also after close, for logs and tests)."""
        if self._bound is None:
            raise RuntimeError("server not started")
        return self._bound

    @property
    def accepting(self) -> bool:
        return self._server is not None and self._server.is_serving()

    @property
    def in_flight(self) -> int:
        """Requests whose head has arrived and that are not answered yet."""
        return sum(c.busy for c in self._connections)

    @property
    def received(self) -> int:
        """Request heads read so far. With :attr:`in_flight`, tells which request is in
        flight: a request's flag is cleared only after its answer is written, so a client can
        hold the answer before the server has cleared it."""
        return self._received

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self._port,
                                                  limit=_HEAD_LIMIT, backlog=1024)
        self._bound = int(self._server.sockets[0].getsockname()[1])

    async def close(self, grace_s: float = 30.0) -> None:
        """Stop as in the module docstring; returns when every connection is gone."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            if not conn.busy and conn.task is not None:
                conn.task.cancel()
        tasks = [c.task for c in self._connections if c.task is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace_s)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection(writer, asyncio.current_task())
        self._connections.add(conn)
        peer = writer.get_extra_info("peername")
        peer_text = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        try:
            while not self._closing:
                try:
                    async with asyncio.timeout(_IDLE_TIMEOUT_S):
                        head = await reader.readuntil(b"\r\n\r\n")
                    conn.busy = True
                    self._received += 1
                    request = _parse_head(head, reader, peer_text)
                except HttpRequestError as exc:
                    self._on_refused(f"http_{exc.status}")
                    await _write(writer, Response(exc.status, str(exc).encode()), close=True)
                    return
                except asyncio.LimitOverrunError:
                    self._on_refused("http_431")
                    await _write(writer, Response(431, b"request head too large"), close=True)
                    return
                try:
                    response = await self._handler(request)
                except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
                    raise
                except Exception:  # a handler bug must not take the connection down unanswered
                    log.exception("http_handler_failed", method=request.method, path=request.path)
                    response, request.keep_alive = Response(500, b"internal error"), False
                keep = request.keep_alive and not self._closing and await _discard(request)
                await _write(writer, response, close=not keep)
                conn.busy = False
                if not keep:
                    return
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass  # the peer went away or stalled: nothing to answer
        finally:
            self._connections.discard(conn)
            writer.close()


def _parse_head(head: bytes, reader: asyncio.StreamReader, peer: str) -> Request:
    try:
        text = head.decode("latin-1")
        request_line, *lines = text[:-4].split("\r\n")
        method, target, version = request_line.split(" ")
    except ValueError:
        raise HttpRequestError(400, "malformed request line") from None
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HttpRequestError(505, "HTTP/1.1 only")
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpRequestError(400, "malformed header")
        headers[name.lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise HttpRequestError(501, "chunked bodies are not supported; send Content-Length")
    length_text = headers.get("content-length", "0")
    if not length_text.isdigit():
        raise HttpRequestError(400, "bad Content-Length")
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    url = urlsplit(target)
    return Request(method=method, path=unquote(url.path), query=dict(parse_qsl(url.query)),
                   headers=headers, content_length=int(length_text), peer=peer,
                   keep_alive=keep_alive, _reader=reader)


async def _discard(request: Request) -> bool:
    """Drain an unread body so the connection can carry the next request; False if too big."""
    if request.body_read:
        return True
    if request.content_length > _DISCARD_LIMIT:
        return False
    with contextlib.suppress(asyncio.IncompleteReadError, TimeoutError):
        await request.body()
        return True
    return False


async def _write(writer: asyncio.StreamWriter, response: Response, *, close: bool) -> None:
    reason = _REASONS.get(response.status, "")
    lines = [f"HTTP/1.1 {response.status} {reason}",
             f"Content-Type: {response.content_type}",
             f"Content-Length: {len(response.body)}"]
    lines += [f"{k}: {v}" for k, v in response.headers.items()]
    if close:
        lines.append("Connection: close")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body)
    await writer.drain()


_REASONS = {s.value: s.phrase for s in HTTPStatus}
