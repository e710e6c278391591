"""POSTs to customer callback URLs, connecting only to addresses the SSRF guard has checked.

Two steps, so that no DNS answer is ever used unchecked:

1. :func:`resolve_target` checks the URL, resolves its host once and judges every address
   (one refused address refuses the URL: a name answering one public and one private address
   is a rebinding setup, not bad luck); :class:`Targets` keeps the answer for a minute;
2. :meth:`CallbackSender.post` connects to those addresses and nothing else. Each pool's
   resolver answers only its own (host, port), and only with the pinned addresses, so the Host
   header, TLS SNI and certificate check use the host name while the TCP connection never looks
   the name up again (which a rebinding DNS server could answer differently).

Built on aiohttp's client: measured on this box (``bench.callbacks``, ADR 0005) it spends
~120 µs of CPU per keep-alive POST against ~2,200 µs for the httpcore pool used before (pure
Python h11 parsing, and a pool that rescans every waiting request on each change: with 256
requests queued for 64 connections one waited past its 10 s timeout). What a callback must not
do is switched off: redirects are never followed, no proxy is read from the environment, no
cookies are kept, bodies are not decompressed.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import Any, Literal, Protocol

import aiohttp
import httpx
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from pipeline.errors import TelexError
from pipeline.stages.callbacks.ssrf import CallbackURL, RefusedURL, check_url, refused_address

__all__ = [
    "BODY_CAP",
    "CallbackSender",
    "DeliveryError",
    "DeliveryKind",
    "Resolver",
    "Response",
    "SocketFactory",
    "SystemResolver",
    "Target",
    "Targets",
    "resolve_target",
]

BODY_CAP = 64 * 1024
"""Most response-body bytes read: a callback's answer is its status; a hostile endpoint must
not stream into our memory. A longer body is left unread and its connection closed."""

#: read buffer per connection (aiohttp pauses the socket at twice this much unread).
READ_BUFFER = 16 * 1024

DeliveryKind = Literal["dns", "timeout", "connect", "tls", "protocol"]

#: what opens a connection's socket, given getaddrinfo's tuple (tests spy on it).
SocketFactory = Callable[[tuple[Any, ...]], socket.socket]

# Set by the sender itself; a caller's copy would contradict what is actually sent.
_OWN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
_KEPT_HEADERS = ("retry-after", "location")
# aiohttp's defaults that a callback does not want: no compressed answers (nothing to unpack
# from a hostile endpoint), no Accept, and the caller names its own User-Agent.
_SKIPPED_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent")


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


class Targets:
    """Checked targets by URL, each resolved at most once per ``ttl_s`` and at most ``size``
    kept (least recently used dropped): one lookup per customer URL a minute, not per callback.
    """

    def __init__(self, resolver: Resolver, *, allow_http: bool,
                 allowed: Sequence[IPv4Network | IPv6Network], ttl_s: float = 60.0,
                 size: int = 4096) -> None:
        self._resolver = resolver
        self._allow_http = allow_http
        self._allowed = allowed
        self._ttl_s = ttl_s
        self._size = size
        self._cache: collections.OrderedDict[str, tuple[float, Target]] = (
            collections.OrderedDict())

    async def get(self, url: str) -> Target:
        """The URL's target; raises as :func:`resolve_target` does (refusals are not kept)."""
        now = time.monotonic()
        cached = self._cache.get(url)
        if cached is not None and now - cached[0] < self._ttl_s:
            self._cache.move_to_end(url)
            return cached[1]
        target = await resolve_target(url, resolver=self._resolver, allow_http=self._allow_http,
                                      allowed=self._allowed)
        self._cache[url] = (now, target)
        self._cache.move_to_end(url)
        while len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return target


class _PinnedResolver(AbstractResolver):
    """aiohttp's resolver for one pool: its own (host, port) → the checked addresses, in order;
    any other name is an error, never a lookup."""

    def __init__(self, host: str, port: int, addresses: tuple[str, ...]) -> None:
        self._origin = (host, port)
        self._results: list[ResolveResult] = [
            {"hostname": host, "host": address, "port": port,
             "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
             "proto": socket.IPPROTO_TCP, "flags": socket.AI_NUMERICHOST}
            for address in addresses]

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_UNSPEC) -> list[ResolveResult]:
        if (host, port) != self._origin:
            raise OSError(f"{host}:{port} is not the pinned origin")
        return list(self._results)

    async def close(self) -> None:
        return None


@dataclass(slots=True)
class _Pool:
    session: aiohttp.ClientSession
    in_flight: int = 0


class CallbackSender:
    """POSTs callbacks over keep-alive connections pooled per (origin, pinned addresses). Use it
    from one event loop.

    A pool per origin keeps one slow customer from taking connections the others need; at most
    ``connections_per_origin`` connections each (size it to the host concurrency cap: fewer
    make callbacks queue inside the sender, where no fairness rule sees them), and at most
    ``max_origins`` pools (the least recently used idle pool is closed beyond that), so
    connections stay bounded. ``verify``: an SSLContext to trust (tests), True for the certifi
    CA bundle, False only for local experiments. ``socket_factory``: what opens sockets (tests
    spy on it).
    """

    def __init__(self, *, verify: ssl.SSLContext | bool = True, body_cap: int = BODY_CAP,
                 max_origins: int = 256, connections_per_origin: int = 16,
                 keepalive_s: float = 30.0, socket_factory: SocketFactory | None = None) -> None:
        self._ssl = _ssl_context(verify)
        self._body_cap = body_cap
        self._max_origins = max_origins
        self._per_origin = connections_per_origin
        self._keepalive_s = keepalive_s
        self._socket_factory = socket_factory
        self._pools: collections.OrderedDict[tuple[str, tuple[str, ...]], _Pool] = (
            collections.OrderedDict())
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
        sent = {k: v for k, v in headers.items() if k.lower() not in _OWN_HEADERS}
        url = target.url
        entry, evicted = self._checkout(target)
        try:
            for old in evicted:
                await old.session.close()
            async with asyncio.timeout(timeout_s):
                status, kept = await self._exchange(entry.session, url, body, sent)
        except TimeoutError as exc:
            raise DeliveryError("timeout", f"{url.origin}: no answer within "
                                f"{timeout_s} s") from exc
        except aiohttp.ClientError as exc:
            raise DeliveryError(_kind(exc), f"{url.origin}: {exc}") from exc
        finally:
            entry.in_flight -= 1
        return Response(status, kept, time.monotonic() - started)

    async def aclose(self) -> None:
        """Close every pooled connection; the sender cannot be used afterwards."""
        self._closed = True
        pools, self._pools = list(self._pools.values()), collections.OrderedDict()
        for entry in pools:
            await entry.session.close()

    async def _exchange(self, session: aiohttp.ClientSession, url: CallbackURL, body: bytes,
                        headers: dict[str, str]) -> tuple[int, dict[str, str]]:
        request_url = URL(f"{url.origin}{url.target}", encoded=True)
        async with session.post(request_url, data=body, headers=headers,
                                allow_redirects=False) as resp:
            kept = {name: value for name in _KEPT_HEADERS
                    if (value := resp.headers.get(name)) is not None}
            if not await self._drain(resp):
                resp.close()  # over the cap: the rest is never read, the connection dropped
            return resp.status, kept

    async def _drain(self, resp: aiohttp.ClientResponse) -> bool:
        """Read the body so the connection can be reused, at most ``body_cap`` bytes; False
        when there was more."""
        read = 0
        while read <= self._body_cap:
            chunk = await resp.content.read(self._body_cap + 1 - read)
            if not chunk:
                return True
            read += len(chunk)
        return False

    def _checkout(self, target: Target) -> tuple[_Pool, list[_Pool]]:
        """The pool for (origin, addresses), counted in flight, and the least recently used
        idle pools past ``max_origins``, removed here (no task can check them out) for
        closing."""
        url = target.url
        key = (url.origin, target.addresses)
        entry = self._pools.get(key)
        if entry is None:
            entry = _Pool(self._session(url, target.addresses))
            self._pools[key] = entry
        self._pools.move_to_end(key)
        entry.in_flight += 1
        excess = len(self._pools) - self._max_origins
        idle = [k for k, e in self._pools.items() if e.in_flight == 0][:max(excess, 0)]
        return entry, [self._pools.pop(k) for k in idle]

    def _session(self, url: CallbackURL, addresses: tuple[str, ...]) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            resolver=_PinnedResolver(url.host, url.port, addresses), use_dns_cache=False,
            ssl=self._ssl if url.scheme == "https" else False,
            limit=self._per_origin, limit_per_host=self._per_origin,
            keepalive_timeout=self._keepalive_s,
            happy_eyeballs_delay=None,  # addresses in order, the next only when one refuses
            socket_factory=self._socket_factory)
        return aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False,
            auto_decompress=False, skip_auto_headers=_SKIPPED_AUTO_HEADERS,
            timeout=aiohttp.ClientTimeout(total=None), read_bufsize=READ_BUFFER)


def _kind(exc: aiohttp.ClientError) -> DeliveryKind:
    if isinstance(exc, aiohttp.ClientSSLError | aiohttp.ServerFingerprintMismatch):
        return "tls"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "dns"
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ServerDisconnectedError
                  | aiohttp.ClientOSError):
        return "connect"
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return "timeout"
    return "protocol"  # a malformed answer (ClientResponseError, ClientPayloadError, …)


def _ssl_context(verify: ssl.SSLContext | bool) -> ssl.SSLContext:
    """One context for every connection (a new one per connection reloads the CA bundle):
    httpx's, so callbacks trust the certifi bundle as the WhatsApp connector does."""
    return httpx.create_ssl_context(verify=verify, trust_env=False)
