"""The minimal HTTP/1.1 server: keep-alive and pipelining, bodies read only on demand, refusals
of what it does not speak, and a handler failure answered 500."""

from __future__ import annotations

import asyncio

from pipeline.runtime.httpserver import HttpServer, Request, Response


async def _echo(request: Request) -> Response:
    if request.path == "/boom":
        raise RuntimeError("handler bug")
    if request.path == "/skip":  # answers without reading the body
        return Response(404, b"nope")
    body = await request.body()
    return Response(200, f"{request.method} {request.path} {request.query} ".encode() + body)


async def exchange(data: bytes) -> bytes:
    """Send ``data`` to a fresh server on one connection; everything until it closes."""
    server = HttpServer(_echo, "127.0.0.1", 0)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(data)
        out = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return out
    finally:
        await server.close(5)


def post(path: str, body: bytes, *, close: bool = False) -> bytes:
    extra = "Connection: close\r\n" if close else ""
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            ).encode() + body


def test_pipelined_requests_are_answered_in_order_on_one_connection() -> None:
    """Three requests in one write; an unread body is drained; Connection: close ends it."""
    data = post("/a?x=1", b"one") + post("/skip", b"unread") + post("/c", b"three", close=True)
    out = asyncio.run(exchange(data))
    assert out.count(b"HTTP/1.1 ") == 3
    first, second, third = out.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200 ") and first.endswith(b"POST /a {'x': '1'} one")
    assert second.startswith(b"404 ") and second.endswith(b"nope")
    assert third.startswith(b"200 ") and b"Connection: close" in third


def test_chunked_bodies_are_refused_with_501() -> None:
    """A request with Transfer-Encoding: chunked is answered 501."""
    data = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    assert asyncio.run(exchange(data)).startswith(b"HTTP/1.1 501 ")


def test_malformed_request_line_is_400() -> None:
    """A malformed request line ('HELLO') is answered 400."""
    assert asyncio.run(exchange(b"HELLO\r\n\r\n")).startswith(b"HTTP/1.1 400 ")


def test_head_over_64_kib_is_431() -> None:
    """A request head with a 70,000-byte header, over the 64 KiB limit, is answered 431."""
    data = b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
    assert asyncio.run(exchange(data)).startswith(b"HTTP/1.1 431 ")


def test_handler_failure_is_500_and_closes() -> None:
    """A handler that raises is answered 500 and the connection closes: the pipelined second
    request gets no answer."""
    out = asyncio.run(exchange(post("/boom", b"") + post("/a", b"never")))
    assert out.startswith(b"HTTP/1.1 500 ") and out.count(b"HTTP/1.1 ") == 1
