"""The callback sender against real HTTP(S) servers on 127.0.0.1: pinned addresses, no second
lookup, SNI and certificates by name, no redirects, bounded time and memory.

Names like ``hooks.customer.test`` do not exist in DNS: only the stub resolver knows them, so a
request that arrives at all proves the sender never asked the system resolver.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pipeline.stages.callbacks.sender import (
    BODY_CAP,
    READ_BUFFER,
    CallbackSender,
    DeliveryError,
    Response,
    Target,
    resolve_target,
)
from pipeline.stages.callbacks.ssrf import RefusedURL
from tests.fixtures.waiting import until

HOST = "hooks.customer.test"
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
READ_SLACK = 256 * 1024 + 2 * READ_BUFFER  # one asyncio read (256 KiB) and the paused buffer


def run(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an ``async def`` test on a fresh event loop (no asyncio plugin is installed)."""
    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))
    return wrapper


# --- test doubles -------------------------------------------------------------------------------

class StubResolver:
    """Answers every lookup from a script: the n-th call gets the n-th answer (then the last)."""

    def __init__(self, *answers: list[str]) -> None:
        self._answers = answers
        self.calls: list[tuple[str, int]] = []

    async def resolve(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        return self._answers[min(len(self.calls), len(self._answers)) - 1]


class SpySockets:
    """Opens the sender's sockets (its ``socket_factory``), recording every address connected
    to and counting the bytes read from them."""

    def __init__(self) -> None:
        self.connects: list[tuple[str, int]] = []
        self.bytes_read = 0

    def __call__(self, addr_info: tuple[Any, ...]) -> socket.socket:
        family, kind, proto, _, sockaddr = addr_info
        self.connects.append((sockaddr[0], sockaddr[1]))
        return CountingSocket(family, kind, proto, spy=self)


class CountingSocket(socket.socket):
    """A socket that adds what it reads to its spy's count (asyncio's transports call recv)."""

    def __init__(self, family: int, kind: int, proto: int, *, spy: SpySockets) -> None:
        super().__init__(family, kind, proto)
        self._spy = spy

    def recv(self, size: int, flags: int = 0) -> bytes:
        data = super().recv(size, flags)
        self._spy.bytes_read += len(data)
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        read = super().recv_into(buffer, nbytes, flags)
        self._spy.bytes_read += read
        return read


@dataclass
class Seen:
    target: str
    headers: dict[str, str]
    body: bytes


Respond = Callable[["Server", asyncio.StreamWriter], Awaitable[bool]]


async def ok(server: Server, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    await writer.drain()
    return True  # keep the connection open


@dataclass
class Server:
    """A minimal HTTP/1.1 server on 127.0.0.1 (TLS when given a context); records requests.

    Bound and listening once ``__aenter__`` returns (asyncio.start_server), so no wait is needed
    before connecting to ``port``.
    """

    respond: Respond = ok
    tls: ssl.SSLContext | None = None
    requests: list[Seen] = field(default_factory=list)
    accepted: int = 0
    closed_by_peer: int = 0
    streamed_all: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls)
        self.port: int = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.accepted += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
                headers = {k.strip().lower(): v.strip()
                           for k, v in (line.split(":", 1) for line in lines)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append(Seen(request_line.split(" ")[1], headers, body))
                if not await self.respond(self, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_by_peer += 1
        finally:
            writer.close()


def answer(status: str, **headers: str) -> Respond:
    """A responder sending ``status`` with ``headers`` and no body, keeping the connection."""
    head = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())

    async def respond(server: Server, writer: asyncio.StreamWriter) -> bool:
        writer.write(f"HTTP/1.1 {status}\r\n{head}Content-Length: 0\r\n\r\n".encode())
        await writer.drain()
        return True
    return respond


async def close_after(server: Server, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    await writer.drain()
    return False


async def never_answer(server: Server, writer: asyncio.StreamWriter) -> bool:
    await server.release.wait()
    return False


HUGE = 32 * 1024 * 1024


async def huge_body(server: Server, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % HUGE)
    chunk = b"x" * 65_536
    for _ in range(HUGE // len(chunk)):
        writer.write(chunk)
        await writer.drain()
    server.streamed_all = True
    return True


def make_cert(name: str, directory: Path) -> tuple[Path, Path, str]:
    """A self-signed server certificate for ``name``: (cert file, key file, cert PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert_file.write_bytes(cert_pem)
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file, cert_pem.decode()


def server_tls(cert_file: Path, key_file: Path) -> tuple[ssl.SSLContext, list[str | None]]:
    """A server TLS context serving the certificate, and the SNI names clients sent."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    names: list[str | None] = []

    def record(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        names.append(name)

    context.sni_callback = record
    return context, names


async def deliver(url: str, resolver: StubResolver, sender: CallbackSender, *,
                  allowed: tuple[Any, ...] = LOOPBACK, timeout_s: float = 5.0) -> Response:
    """What a caller does: resolve and check the URL, then POST to the target."""
    target = await resolve_target(url, resolver=resolver, allow_http=True, allowed=allowed)
    return await sender.post(target, b'{"status":"delivered"}', {}, timeout_s)


# --- where connections go -----------------------------------------------------------------------

@run
async def test_post_reaches_the_checked_address_with_the_name_as_host() -> None:
    """Resolved once, two POSTs arrive at 127.0.0.1 with Host: name:port, target and body."""
    resolver = StubResolver(["127.0.0.1"])
    async with Server() as server, CallbackSender() as sender:
        url = f"http://{HOST}:{server.port}/status/cb?id=7"
        target = await resolve_target(url, resolver=resolver, allow_http=True, allowed=LOOPBACK)
        first = await sender.post(target, b'{"n":1}', {"Content-Type": "application/json"}, 5.0)
        second = await sender.post(target, b'{"n":2}', {}, 5.0)
    assert (first.status, second.status) == (200, 200)
    assert resolver.calls == [(HOST, server.port)]
    assert [r.body for r in server.requests] == [b'{"n":1}', b'{"n":2}']
    assert [r.headers["host"] for r in server.requests] == [f"{HOST}:{server.port}"] * 2
    assert [r.target for r in server.requests] == ["/status/cb?id=7"] * 2
    assert server.requests[0].headers["content-type"] == "application/json"


@run
async def test_connection_is_kept_alive_between_posts() -> None:
    """Two POSTs to one target share one TCP connection."""
    spy = SpySockets()
    async with Server() as server, CallbackSender(socket_factory=spy) as sender:
        for _ in range(2):
            await deliver(f"http://{HOST}:{server.port}/cb", StubResolver(["127.0.0.1"]), sender)
    assert (server.accepted, len(server.requests)) == (1, 2)
    assert spy.connects == [("127.0.0.1", server.port)]


@run
async def test_caller_cannot_override_the_host_header() -> None:
    """A Host header from the caller is dropped: the one sent is the checked URL's."""
    async with Server() as server, CallbackSender() as sender:
        target = await resolve_target(f"http://{HOST}:{server.port}/cb",
                                      resolver=StubResolver(["127.0.0.1"]), allow_http=True,
                                      allowed=LOOPBACK)
        await sender.post(target, b"{}", {"Host": "metadata.internal", "X-Sig": "abc"}, 5.0)
    [seen] = server.requests
    assert (seen.headers["host"], seen.headers["x-sig"]) == (f"{HOST}:{server.port}", "abc")


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.1", "169.254.169.254",
                                     "::ffff:127.0.0.1"])
@run
async def test_a_name_resolving_to_an_internal_address_gets_no_connection(address: str) -> None:
    """Without an allow-list the URL is refused before any connect; the loopback listener on
    the URL's port never sees a connection."""
    spy = SpySockets()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        port = listener.getsockname()[1]
        async with CallbackSender(socket_factory=spy) as sender:
            with pytest.raises(RefusedURL) as info:
                await deliver(f"https://{HOST}:{port}/cb", StubResolver([address]), sender,
                              allowed=())
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert f"resolves to {ipaddress.ip_address(address)}" in info.value.reason
    assert spy.connects == []


@run
async def test_one_private_answer_among_public_ones_refuses_the_url() -> None:
    """A name answering a public and a private address is refused as a whole."""
    spy = SpySockets()
    async with CallbackSender(socket_factory=spy) as sender:
        with pytest.raises(RefusedURL, match=r"resolves to 10\.0\.0\.1"):
            await deliver(f"https://{HOST}/cb", StubResolver(["93.184.215.14", "10.0.0.1"]),
                          sender, allowed=())
    assert spy.connects == []


@run
async def test_ip_literal_host_is_checked_without_a_lookup() -> None:
    """An IP-literal URL is never resolved: refused outright, or posted to when allowed."""
    resolver = StubResolver(["8.8.8.8"])
    async with Server() as server, CallbackSender() as sender:
        url = f"http://127.0.0.1:{server.port}/cb"
        with pytest.raises(RefusedURL, match="loopback"):
            await deliver(url, resolver, sender, allowed=())
        response = await deliver(url, resolver, sender)
    assert response.status == 200
    assert server.requests[0].headers["host"] == f"127.0.0.1:{server.port}"
    assert resolver.calls == []


@run
async def test_dns_rebinding_cannot_move_the_connection() -> None:
    """The resolver answers 127.0.0.1, then 10.0.0.1: both POSTs of the target (each on a new
    connection) still go to 127.0.0.1, and the resolver was asked once."""
    resolver = StubResolver(["127.0.0.1"], ["10.0.0.1"])
    spy = SpySockets()
    async with Server(respond=close_after) as server, \
            CallbackSender(socket_factory=spy) as sender:
        url = f"http://{HOST}:{server.port}/cb"
        target = await resolve_target(url, resolver=resolver, allow_http=True, allowed=LOOPBACK)
        statuses = [(await sender.post(target, b"{}", {}, 5.0)).status for _ in range(2)]
        assert (statuses, server.accepted) == ([200, 200], 2)
        assert spy.connects == [("127.0.0.1", server.port)] * 2
        assert resolver.calls == [(HOST, server.port)]
        with pytest.raises(RefusedURL, match=r"10\.0\.0\.1"):  # the name has rebound by now
            await resolve_target(url, resolver=resolver, allow_http=True, allowed=LOOPBACK)


@run
async def test_next_checked_address_is_tried_when_one_refuses() -> None:
    """127.0.0.2 refuses the connection (nothing listens there), so 127.0.0.1 is used next."""
    spy = SpySockets()
    async with Server() as server, CallbackSender(socket_factory=spy) as sender:
        response = await deliver(f"http://{HOST}:{server.port}/cb",
                                 StubResolver(["127.0.0.2", "127.0.0.1"]), sender)
    assert response.status == 200
    assert spy.connects == [("127.0.0.2", server.port), ("127.0.0.1", server.port)]


@run
async def test_pinned_resolver_refuses_every_other_origin() -> None:
    """A pool's resolver answers only its own (host, port), with its checked addresses; any
    other name is an error, never a lookup."""
    from pipeline.stages.callbacks.sender import _PinnedResolver

    resolver = _PinnedResolver(HOST, 443, ("127.0.0.1", "::1"))
    assert [(r["host"], r["port"]) for r in await resolver.resolve(HOST, 443)] == [
        ("127.0.0.1", 443), ("::1", 443)]
    for host, port in [("metadata.internal", 443), ("127.0.0.1", 443), (HOST, 8443)]:
        with pytest.raises(OSError, match="not the pinned origin"):
            await resolver.resolve(host, port)


# --- TLS ----------------------------------------------------------------------------------------

@run
async def test_tls_uses_the_name_for_sni_and_certificate(tmp_path: Path) -> None:
    """HTTPS to 127.0.0.1 succeeds with a certificate for the name: SNI and verification use
    the name while the TCP connection goes to the pinned address."""
    cert_file, key_file, pem = make_cert(HOST, tmp_path)
    tls, sni = server_tls(cert_file, key_file)
    spy = SpySockets()
    trust = ssl.create_default_context(cadata=pem)
    async with Server(tls=tls) as server, \
            CallbackSender(verify=trust, socket_factory=spy) as sender:
        response = await deliver(f"https://{HOST}:{server.port}/cb",
                                 StubResolver(["127.0.0.1"]), sender)
    assert response.status == 200
    assert sni == [HOST]
    assert spy.connects == [("127.0.0.1", server.port)]
    assert server.requests[0].headers["host"] == f"{HOST}:{server.port}"


@run
async def test_certificate_for_another_name_is_a_tls_error(tmp_path: Path) -> None:
    """A trusted certificate issued to another name fails verification: DeliveryError "tls",
    and no request is sent."""
    cert_file, key_file, pem = make_cert("other.customer.test", tmp_path)
    tls, _ = server_tls(cert_file, key_file)
    trust = ssl.create_default_context(cadata=pem)
    async with Server(tls=tls) as server, CallbackSender(verify=trust) as sender:
        with pytest.raises(DeliveryError) as info:
            await deliver(f"https://{HOST}:{server.port}/cb", StubResolver(["127.0.0.1"]),
                          sender)
    assert info.value.kind == "tls"
    assert server.requests == []


# --- what comes back ----------------------------------------------------------------------------

@run
async def test_redirect_is_returned_not_followed() -> None:
    """A 302 to the metadata endpoint comes back as status 302 with its Location; nothing else
    is requested or connected."""
    spy = SpySockets()
    location = "http://169.254.169.254/latest/meta-data/"
    async with Server(respond=answer("302 Found", Location=location)) as server, \
            CallbackSender(socket_factory=spy) as sender:
        response = await deliver(f"http://{HOST}:{server.port}/cb", StubResolver(["127.0.0.1"]),
                                 sender)
    assert (response.status, response.headers) == (302, {"location": location})
    assert len(server.requests) == 1
    assert spy.connects == [("127.0.0.1", server.port)]


@run
async def test_status_and_retry_after_are_reported() -> None:
    """A 503 is a Response (not an error) carrying Retry-After."""
    async with Server(respond=answer("503 Service Unavailable", Retry_After="120")) as server, \
            CallbackSender() as sender:
        response = await deliver(f"http://{HOST}:{server.port}/cb", StubResolver(["127.0.0.1"]),
                                 sender)
    assert (response.status, response.headers) == (503, {"retry-after": "120"})
    assert response.elapsed_s >= 0


@run
async def test_server_that_never_answers_is_a_timeout() -> None:
    """The request arrives but no response does: DeliveryError "timeout" within the call's
    timeout."""
    async with Server(respond=never_answer) as server, CallbackSender() as sender:
        with pytest.raises(DeliveryError) as info:
            await deliver(f"http://{HOST}:{server.port}/cb", StubResolver(["127.0.0.1"]), sender,
                          timeout_s=0.3)
    assert info.value.kind == "timeout"
    assert len(server.requests) == 1


@run
async def test_refused_connection_is_a_connect_error() -> None:
    """A port with nothing listening: DeliveryError "connect"."""
    with socket.socket() as bound_not_listening:
        bound_not_listening.bind(("127.0.0.1", 0))
        port = bound_not_listening.getsockname()[1]
        async with CallbackSender() as sender:
            with pytest.raises(DeliveryError) as info:
                await deliver(f"http://{HOST}:{port}/cb", StubResolver(["127.0.0.1"]), sender)
    assert info.value.kind == "connect"


@run
async def test_body_beyond_the_cap_is_not_read() -> None:
    """A 32 MiB answer: post returns the status after reading at most the cap (plus one read)
    and closes the connection, which the server sees before it could send it all."""
    spy = SpySockets()
    async with Server(respond=huge_body) as server, \
            CallbackSender(socket_factory=spy) as sender:
        response = await deliver(f"http://{HOST}:{server.port}/cb", StubResolver(["127.0.0.1"]),
                                 sender)
        assert response.status == 200
        assert spy.bytes_read <= BODY_CAP + READ_SLACK
        await until(lambda: server.closed_by_peer == 1, what="the client closing the connection")
    assert not server.streamed_all


# --- pool bound ---------------------------------------------------------------------------------

@run
async def test_idle_pools_beyond_the_limit_are_closed() -> None:
    """With room for one origin, a POST to a second origin closes the first one's idle
    connection; posting to the first again opens a new one."""
    resolver = StubResolver(["127.0.0.1"])
    async with Server() as server, CallbackSender(max_origins=1) as sender:
        a, b = (f"http://{name}:{server.port}/cb" for name in ("a.customer.test",
                                                               "b.customer.test"))
        await deliver(a, resolver, sender)
        await deliver(b, resolver, sender)
        await until(lambda: server.closed_by_peer == 1, what="the first pool's connection closed")
        await deliver(a, resolver, sender)
    assert server.accepted == 3
    assert [r.headers["host"].split(":")[0] for r in server.requests] == [
        "a.customer.test", "b.customer.test", "a.customer.test"]


def test_a_target_needs_an_address() -> None:
    """A Target without addresses cannot exist (there would be nothing checked to connect to)."""
    from pipeline.stages.callbacks.ssrf import check_url

    with pytest.raises(ValueError, match="at least one address"):
        Target(check_url(f"https://{HOST}/", allow_http=False), ())
