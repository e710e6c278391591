"""POSTs to customer callback URLs, connecting only to addresses the SSRF guard has checked.

Two steps, so that no DNS answer is ever used unchecked:

1. :func:`resolve_target` checks the URL, resolves its host once and judges every address
   (one refused address refuses the URL: a name answering one public and one private address
   is a rebinding setup, not bad luck);
2. :meth:`CallbackSender.post` connects to those addresses and nothing else. Its network
   backend maps the URL's (host, port) to the pinned address, so the Host header, TLS SNI and
   certificate check use the host name while the TCP connection never looks the name up again
   (which a rebinding DNS server could answer differently).

Built on httpcore rather than an ``httpx.AsyncClient``: httpx's transports take no network
backend (encode/httpx discussion #3180; PR #3749 would add one), and what httpx adds over httpcore
(redirects, proxies from the environment, cookies, auth) is what a callback must not do. So
redirects are never followed and no proxy is ever used, by construction.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import Any, Literal, Protocol

import httpcore
import httpx

from pipeline.errors import TelexError
from pipeline.stages.callbacks.ssrf import CallbackURL, RefusedURL, check_url, refused_address

__all__ = [
    "BODY_CAP",
    "CallbackSender",
    "DeliveryError",
    "DeliveryKind",
    "Resolver",
    "Response",
    "SystemResolver",
    "Target",
    "resolve_target",
]

BODY_CAP = 64 * 1024
"""Most response-body bytes read: a callback's answer is its status; a hostile endpoint must
not stream into our memory. A longer body is left unread and its connection closed."""

DeliveryKind = Literal["dns", "timeout", "connect", "tls", "protocol"]

# Set by the sender itself; a caller's copy would contradict what is actually sent.
_OWN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
_KEPT_HEADERS = frozenset({b"retry-after", b"location"})


class DeliveryError(TelexError):
    """A callback POST got no HTTP response. ``kind`` says what failed:

    ``dns`` the host did not resolve; ``timeout`` the attempt ran out of time; ``connect``
    refused, unreachable, reset or closed before a complete response; ``tls`` handshake or
    certificate verification failed; ``protocol`` the peer did not speak HTTP/1.1.
    """

    def __init__(self, kind: DeliveryKind, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind: DeliveryKind = kind
        self.detail = detail


class Resolver(Protocol):
    """Resolves a host name to its addresses (as text, e.g. ``"192.0.2.7"``, ``"2001:db8::1"``)."""

    async def resolve(self, host: str, port: int) -> list[str]: ...


class SystemResolver:
    """The system resolver (getaddrinfo on the event loop's executor), TCP addresses only.

    A lookup cannot be cancelled (it holds an executor thread until the system resolver gives
    up), so callers bound it with their own deadline only to stop waiting.
    """

    async def resolve(self, host: str, port: int) -> list[str]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise DeliveryError("dns", f"cannot resolve {host}: {exc.strerror}") from exc
        return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True, slots=True)
class Target:
    """A checked URL and the checked addresses its host stands for; connections go only there.

    Made by :func:`resolve_target`; reused as long as its DNS answer may be (the resolver is
    not asked again for it). Addresses are tried in order when one refuses connections.
    """

    url: CallbackURL
    addresses: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.addresses:
            raise ValueError("a Target needs at least one address")


@dataclass(frozen=True, slots=True)
class Response:
    """What a callback endpoint answered (redirects included: they are never followed)."""

    status: int
    headers: dict[str, str]  # lower-case names; only retry-after and location are kept
    elapsed_s: float  # from the start of post() to the end of the (capped) body


async def resolve_target(url: str, *, resolver: Resolver, allow_http: bool,
                         allowed: Sequence[IPv4Network | IPv6Network]) -> Target:
    """Check ``url``, resolve its host once and check every address; raise RefusedURL if the
    URL or any address is refused, DeliveryError("dns") if the host has no address."""
    checked = check_url(url, allow_http=allow_http)
    try:
        answers = [str(ipaddress.ip_address(checked.host))]  # an IP literal: no lookup
    except ValueError:
        answers = await resolver.resolve(checked.host, checked.port)
    if not answers:
        raise DeliveryError("dns", f"{checked.host} has no address")
    addresses: list[str] = []
    for text in answers:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError as exc:
            raise RefusedURL(f"{checked.host} resolved to {text!r}, not an address") from exc
        why = refused_address(ip, allowed)
        if why is not None:
            raise RefusedURL(f"{checked.host} resolves to {ip}: {why}")
        addresses.append(str(ip))
    return Target(checked, tuple(dict.fromkeys(addresses)))


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects one origin's (host, port) to one checked address, and refuses anything else."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend, host: str, port: int,
                 address: str) -> None:
        self._inner = inner
        self._origin = (host, port)
        self._address = address

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        if (host, port) != self._origin:
            raise httpcore.ConnectError(f"{host}:{port} is not the pinned origin")
        return await self._inner.connect_tcp(self._address, port, timeout=timeout,
                                             local_address=local_address,
                                             socket_options=socket_options)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None,
                                  ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("callbacks never use unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


@dataclass(slots=True)
class _Pool:
    pool: httpcore.AsyncConnectionPool
    in_flight: int = 0


class CallbackSender:
    """POSTs callbacks over keep-alive connections pooled per (origin, pinned address). Use it
    from one event loop.

    A pool per origin keeps one slow customer from taking connections the others need; at most
    ``connections_per_origin`` connections each, and at most ``max_origins`` pools (the least
    recently used idle pool is closed beyond that), so connections stay bounded.
    ``verify``: an SSLContext to trust (tests), True for the certifi CA bundle, False only for
    local experiments. ``network_backend``: what actually opens sockets (tests spy on it).
    """

    def __init__(self, *, verify: ssl.SSLContext | bool = True, body_cap: int = BODY_CAP,
                 max_origins: int = 256, connections_per_origin: int = 4,
                 keepalive_s: float = 30.0,
                 network_backend: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._ssl = _ssl_context(verify)
        self._body_cap = body_cap
        self._max_origins = max_origins
        self._per_origin = connections_per_origin
        self._keepalive_s = keepalive_s
        self._backend = network_backend or httpcore.AnyIOBackend()
        self._pools: OrderedDict[tuple[str, str], _Pool] = OrderedDict()
        self._closed = False

    async def __aenter__(self) -> CallbackSender:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def post(self, target: Target, body: bytes, headers: Mapping[str, str],
                   timeout_s: float) -> Response:
        """POST ``body`` to ``target`` within ``timeout_s`` (connect, send and the capped read
        together); any HTTP status is a Response, no response at all a DeliveryError."""
        if self._closed:
            raise TelexError("the callback sender is closed")
        started = time.monotonic()
        sent = [("Host", target.url.authority),
                *((k, v) for k, v in headers.items() if k.lower() not in _OWN_HEADERS)]
        try:
            async with asyncio.timeout(timeout_s):
                status, kept = await self._post_to_first(target, body, sent, timeout_s)
        except (TimeoutError, httpcore.TimeoutException) as exc:
            raise DeliveryError("timeout", f"{target.url.origin}: no answer within "
                                f"{timeout_s} s") from exc
        except (httpcore.NetworkError, httpcore.ProtocolError,
                httpcore.UnsupportedProtocol) as exc:
            raise DeliveryError(_kind(exc), f"{target.url.origin}: {exc}") from exc
        return Response(status, kept, time.monotonic() - started)

    async def aclose(self) -> None:
        """Close every pooled connection; the sender cannot be used afterwards."""
        self._closed = True
        pools, self._pools = list(self._pools.values()), OrderedDict()
        for entry in pools:
            await entry.pool.aclose()

    async def _post_to_first(self, target: Target, body: bytes, headers: list[tuple[str, str]],
                             timeout_s: float) -> tuple[int, dict[str, str]]:
        """Try the addresses in order, moving on only when one refuses the connection (the
        request was not sent); a TLS failure is the server's answer and is not retried."""
        *others, last = target.addresses
        for address in others:
            try:
                return await self._exchange(target.url, address, body, headers, timeout_s)
            except httpcore.ConnectError as exc:
                if _kind(exc) == "tls":
                    raise
        return await self._exchange(target.url, last, body, headers, timeout_s)

    async def _exchange(self, url: CallbackURL, address: str, body: bytes,
                        headers: list[tuple[str, str]], timeout_s: float,
                        ) -> tuple[int, dict[str, str]]:
        entry, evicted = self._checkout(url, address)
        timeouts = {"connect": timeout_s, "read": timeout_s, "write": timeout_s,
                    "pool": timeout_s}
        request_url = httpcore.URL(scheme=url.scheme, host=url.host, port=url.port,
                                   target=url.target)
        try:
            for old in evicted:
                await old.pool.aclose()
            async with entry.pool.stream("POST", request_url, headers=headers, content=body,
                                         extensions={"timeout": timeouts}) as resp:
                kept = {k.decode("latin-1").lower(): v.decode("latin-1")
                        for k, v in resp.headers if k.lower() in _KEPT_HEADERS}
                await self._drain(resp)
                return resp.status, kept
        finally:
            entry.in_flight -= 1

    async def _drain(self, resp: httpcore.Response) -> None:
        """Read the body so the connection can be reused, but at most ``body_cap`` bytes (plus
        one network read); beyond that the connection is closed unread."""
        read = 0
        chunks = resp.aiter_stream()
        async with contextlib.aclosing(chunks):  # type: ignore[type-var]
            async for chunk in chunks:
                read += len(chunk)
                if read > self._body_cap:
                    return

    def _checkout(self, url: CallbackURL, address: str) -> tuple[_Pool, list[_Pool]]:
        """The pool for (origin, address), counted in flight, and the least recently used idle
        pools past ``max_origins``, removed here (no task can check them out) for closing."""
        key = (url.origin, address)
        entry = self._pools.get(key)
        if entry is None:
            backend = _PinnedBackend(self._backend, url.host, url.port, address)
            entry = _Pool(httpcore.AsyncConnectionPool(
                ssl_context=self._ssl, max_connections=self._per_origin,
                max_keepalive_connections=self._per_origin,
                keepalive_expiry=self._keepalive_s, network_backend=backend))
            self._pools[key] = entry
        self._pools.move_to_end(key)
        entry.in_flight += 1
        excess = len(self._pools) - self._max_origins
        idle = [k for k, e in self._pools.items() if e.in_flight == 0][:max(excess, 0)]
        return entry, [self._pools.pop(k) for k in idle]


def _kind(exc: Exception) -> DeliveryKind:
    if isinstance(exc, httpcore.ConnectError) and _caused_by_ssl(exc):
        return "tls"
    if isinstance(exc, httpcore.NetworkError):  # ConnectError, ReadError, WriteError
        return "connect"
    return "protocol"


def _caused_by_ssl(exc: BaseException) -> bool:
    """Whether an ssl.SSLError is behind ``exc``. The pool re-raises connection errors
    ``from None`` (encode/httpcore PR 880; PR 915 to undo it was declined), which blanks
    ``__cause__`` but keeps ``__context__``: both links are followed."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, ssl.SSLError):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def _ssl_context(verify: ssl.SSLContext | bool) -> ssl.SSLContext:
    """One context for every connection (a new one per connection reloads the CA bundle):
    httpx's, so callbacks trust the certifi bundle as the WhatsApp connector does."""
    return httpx.create_ssl_context(verify=verify, trust_env=False)
