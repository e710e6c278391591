"""The SSRF guard for customer callback URLs: which URLs and which addresses Telex may POST to.

Pure checks, no I/O. A customer chooses ``status_callback_url``, so it is hostile input: it must
never make a Telex worker reach a loopback service, the cloud metadata endpoint or anything on
an internal network. Two checks, both needed:

- :func:`check_url` accepts only a plain ``https://host[:port]/path?query`` (no credentials,
  no ambiguous host spellings) and normalises it, so the sender, the Host header and the
  certificate check all use the one host name checked here;
- :func:`refused_address` judges every address the host name resolves to; the sender then
  connects to exactly those addresses (``sender.resolve_target``), never resolving again.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from urllib.parse import quote, urlsplit

import idna

from pipeline.errors import TelexError

__all__ = [
    "MAX_URL_LENGTH",
    "CallbackURL",
    "RefusedURL",
    "check_url",
    "refused_address",
]

MAX_URL_LENGTH = 2_048
"""Longest callback URL accepted (what browsers and most servers handle; nobody needs more)."""

_DEFAULT_PORTS = {"https": 443, "http": 80}
# Characters kept as they are in the request target: RFC 3986 pchar, "/", "?" and "%" (existing
# escapes); everything else (non-ASCII, quotes, braces...) is percent-encoded as UTF-8.
_TARGET_SAFE = "!$&'()*+,;=:@/?%-._~"
# A DNS name as sent on the wire: LDH labels (plus "_", seen in real hosts), at most 63 each.
_HOST_NAME = re.compile(r"[a-z0-9_-]{1,63}(\.[a-z0-9_-]{1,63})*\.?")
# A last label that resolvers and URL parsers read as a number (WHATWG: an IPv4 host).
_NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)")


class RefusedURL(TelexError):
    """A callback URL (or an address its host resolves to) that Telex will not POST to."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class CallbackURL:
    """A checked callback URL, normalised: the only form the sender ever uses."""

    scheme: str  # "https" (or "http" where allowed)
    host: str  # lower-case ASCII (IDNA); an IPv6 literal without brackets
    port: int
    target: str  # path and query, percent-encoded; "/" at least; no fragment

    @property
    def authority(self) -> str:
        """``host[:port]`` as in the Host header: brackets around IPv6, default port left out."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    @property
    def origin(self) -> str:
        """``scheme://authority``: what connections are pooled (and logged) by."""
        return f"{self.scheme}://{self.authority}"


def check_url(url: str, *, allow_http: bool) -> CallbackURL:
    """Check and normalise a callback URL, or raise :class:`RefusedURL` saying why.

    The fragment is dropped (it is never sent). Addresses are not judged here: a host name is
    only known to be safe once every address it resolves to has passed :func:`refused_address`.
    """
    if len(url) > MAX_URL_LENGTH:
        raise RefusedURL(f"URL longer than {MAX_URL_LENGTH:,} characters")
    if any(_is_space_or_control(ch) for ch in url):
        raise RefusedURL("whitespace, control or invisible formatting character in URL")
    if "\\" in url:
        raise RefusedURL("backslash in URL (URL parsers disagree on what it means)")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise RefusedURL(f"malformed URL: {exc}") from exc
    allowed = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in allowed:
        shown = parts.scheme or "(none)"
        raise RefusedURL(f"scheme {shown!r} not allowed (only {' or '.join(allowed)})")
    if "@" in parts.netloc:
        raise RefusedURL("credentials (user:password@) in URL not allowed")
    raw_host, port = _split_netloc(parts.netloc, parts.scheme)
    host = _normalise_host(raw_host)
    path = parts.path or "/"
    target = quote(path, safe=_TARGET_SAFE)
    if parts.query:
        target += "?" + quote(parts.query, safe=_TARGET_SAFE)
    return CallbackURL(parts.scheme, host, port, target)


def refused_address(ip: IPv4Address | IPv6Address,
                    allowed: Sequence[IPv4Network | IPv6Network]) -> str | None:
    """Why Telex may not connect to ``ip``, or None when it may.

    The metadata endpoints are refused first, whatever is allowed (their own reason).
    ``allowed`` (local demos and tests, e.g. 127.0.0.0/8) comes next: an address in it
    passes. Then, first match wins: the ranges of
    ``_RANGES`` (addresses embedding an IPv4 address are judged by that address, with the
    same rules), and last the ``ipaddress`` properties as a backstop.
    """
    if isinstance(ip, IPv6Address) and ip.scope_id:
        ip = IPv6Address(int(ip))  # the zone (fe80::1%eth0) does not change the range
    if ip in _METADATA:  # never allowed: no demo needs credentials endpoints
        return f"cloud metadata endpoint {ip} ({_METADATA[ip]})"
    if any(ip in net for net in allowed):
        return None
    for rng in _RANGES:
        if ip not in rng.network:
            continue
        if rng.embedded is None or not isinstance(ip, IPv6Address):
            return f"{rng.reason} ({rng.network})"
        inner = rng.embedded(ip)
        why = refused_address(inner, allowed)
        return None if why is None else f"{rng.reason} of {inner}: {why}"
    if isinstance(ip, IPv6Address) and ip not in _IPV6_GLOBAL_UNICAST:
        return f"outside IPv6 global unicast ({_IPV6_GLOBAL_UNICAST})"
    for prop in ("is_loopback", "is_private", "is_link_local", "is_multicast",
                 "is_unspecified", "is_reserved"):
        if getattr(ip, prop):
            return f"not a public address ({prop})"
    if not ip.is_global:
        return "not a globally routable address"
    return None


# --- the tables --------------------------------------------------------------------------------

_METADATA: dict[IPv4Address | IPv6Address, str] = {
    ipaddress.ip_address("169.254.169.254"): "AWS, GCP, Azure, OpenStack instance metadata",
    ipaddress.ip_address("169.254.170.2"): "AWS ECS task metadata and credentials",
    ipaddress.ip_address("169.254.170.23"): "AWS EKS Pod Identity credentials",
    ipaddress.ip_address("fd00:ec2::254"): "AWS instance metadata over IPv6",
    ipaddress.ip_address("fd00:ec2::23"): "AWS EKS Pod Identity credentials over IPv6",
    ipaddress.ip_address("100.100.100.200"): "Alibaba Cloud instance metadata",
}
"""Named on their own so a refusal says plainly that a metadata endpoint was the target (every
one also lies in a range of ``_RANGES``)."""


@dataclass(frozen=True, slots=True)
class _Range:
    network: IPv4Network | IPv6Network
    reason: str
    # For prefixes that carry an IPv4 address: the address they lead to, judged instead.
    embedded: Callable[[IPv6Address], IPv4Address] | None = None


def _net(cidr: str) -> IPv4Network | IPv6Network:
    return ipaddress.ip_network(cidr)


def _low32(ip: IPv6Address) -> IPv4Address:
    return IPv4Address(int(ip) & 0xFFFF_FFFF)


def _sixtofour(ip: IPv6Address) -> IPv4Address:
    return IPv4Address((int(ip) >> 80) & 0xFFFF_FFFF)


def _teredo_client(ip: IPv6Address) -> IPv4Address:
    return IPv4Address(~int(ip) & 0xFFFF_FFFF)  # the client address is stored inverted


# Listed explicitly rather than trusted to ipaddress alone: its is_private/is_global changed
# across Python versions, and on 3.11 64:ff9b::a00:1 (NAT64 of 10.0.0.1), 2002:a00:1:: (6to4
# of 10.0.0.1) and 3fff::1 (documentation) all count as global. First match wins, so narrower
# networks come before wider ones that contain them.
_RANGES: tuple[_Range, ...] = (
    # IPv4 (RFC 6890 special-purpose registry)
    _Range(_net("0.0.0.0/8"), "unspecified ('this network')"),  # RFC 791; 0.0.0.0 is local
    _Range(_net("10.0.0.0/8"), "private network"),  # RFC 1918
    _Range(_net("100.64.0.0/10"), "carrier-grade NAT"),  # RFC 6598: shared address space
    _Range(_net("127.0.0.0/8"), "loopback"),  # RFC 1122
    _Range(_net("169.254.0.0/16"), "link-local"),  # RFC 3927; cloud metadata lives here
    _Range(_net("172.16.0.0/12"), "private network"),  # RFC 1918
    _Range(_net("192.0.0.0/24"), "reserved (IETF protocol assignments)"),  # RFC 6890, DS-Lite
    _Range(_net("192.0.2.0/24"), "documentation"),  # RFC 5737 TEST-NET-1
    _Range(_net("192.88.99.0/24"), "reserved (6to4 relay anycast)"),  # RFC 7526, deprecated
    _Range(_net("192.168.0.0/16"), "private network"),  # RFC 1918
    _Range(_net("198.18.0.0/15"), "benchmarking"),  # RFC 2544
    _Range(_net("198.51.100.0/24"), "documentation"),  # RFC 5737 TEST-NET-2
    _Range(_net("203.0.113.0/24"), "documentation"),  # RFC 5737 TEST-NET-3
    _Range(_net("224.0.0.0/4"), "multicast"),  # RFC 5771
    _Range(_net("255.255.255.255/32"), "broadcast"),  # RFC 919 limited broadcast
    _Range(_net("240.0.0.0/4"), "reserved"),  # RFC 1112 class E (after broadcast, inside it)
    # IPv6 (IANA IPv6 special-purpose registry)
    _Range(_net("::/128"), "unspecified"),  # RFC 4291
    _Range(_net("::1/128"), "loopback"),  # RFC 4291
    _Range(_net("::ffff:0:0/96"), "IPv4-mapped address", _low32),  # RFC 4291: is that IPv4
    _Range(_net("::/96"), "IPv4-compatible address (deprecated)"),  # RFC 4291: never used
    _Range(_net("64:ff9b::/96"), "NAT64 address", _low32),  # RFC 6052: reaches that IPv4
    _Range(_net("64:ff9b:1::/48"), "local-use NAT64"),  # RFC 8215: an operator's own network
    _Range(_net("100::/64"), "discard-only"),  # RFC 6666
    _Range(_net("2001::/32"), "Teredo address", _teredo_client),  # RFC 4380: tunnels to IPv4
    _Range(_net("2001:2::/48"), "benchmarking"),  # RFC 5180
    _Range(_net("2001:10::/28"), "reserved (ORCHID)"),  # RFC 4843, deprecated
    _Range(_net("2001:20::/28"), "reserved (ORCHIDv2)"),  # RFC 7343: not routable
    _Range(_net("2001:db8::/32"), "documentation"),  # RFC 3849
    _Range(_net("2002::/16"), "6to4 address", _sixtofour),  # RFC 3056: tunnels to IPv4
    _Range(_net("3fff::/20"), "documentation"),  # RFC 9637
    _Range(_net("5f00::/16"), "reserved (SRv6 SIDs)"),  # RFC 9602
    _Range(_net("fc00::/7"), "unique-local (private)"),  # RFC 4193; includes fd00:ec2::
    _Range(_net("fe80::/10"), "link-local"),  # RFC 4291
    _Range(_net("fec0::/10"), "site-local"),  # RFC 3879, deprecated but still routed inside
    _Range(_net("ff00::/8"), "multicast"),  # RFC 4291
)

_IPV6_GLOBAL_UNICAST = IPv6Network("2000::/3")  # RFC 4291: the only IPv6 space routed publicly


# --- URL helpers --------------------------------------------------------------------------------

def _is_space_or_control(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zs", "Zl", "Zp")


def _split_netloc(netloc: str, scheme: str) -> tuple[str, int]:
    """(host, port) from ``host[:port]`` or ``[v6][:port]``; brackets stay on the host."""
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            raise RefusedURL("unclosed '[' in host")
        host, rest = netloc[: end + 1], netloc[end + 1 :]
        if rest and not rest.startswith(":"):
            raise RefusedURL("unexpected text after ']' in host")
        port_text = rest[1:]
    else:
        host, _, port_text = netloc.partition(":")
    if not host:
        raise RefusedURL("no host in URL")
    if not port_text:
        return host, _DEFAULT_PORTS[scheme]
    if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5
            and 0 < int(port_text) <= 65_535):
        raise RefusedURL(f"bad port {port_text!r} (1-65535)")
    return host, int(port_text)


def _normalise_host(host: str) -> str:
    """Lower-case ASCII host: IDNA (UTS 46) for names, canonical text for IP literals."""
    if host.startswith("["):
        try:
            ip = IPv6Address(host[1:-1])
        except ValueError as exc:
            raise RefusedURL(f"not an IPv6 address in brackets: {host}") from exc
        if ip.scope_id:
            raise RefusedURL("IPv6 zone identifier in host")
        return str(ip)
    try:
        return str(IPv4Address(host))
    except ValueError:
        pass
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise RefusedURL(f"host is not a valid internationalised name: {exc}") from exc
    host = host.lower()
    if len(host.rstrip(".")) > 253 or not _HOST_NAME.fullmatch(host):
        raise RefusedURL(f"invalid host name {host!r}")
    if _NUMERIC_LABEL.fullmatch(host.rstrip(".").rsplit(".", 1)[-1]):
        raise RefusedURL(f"numeric host {host!r} is not a plain dotted-quad IPv4 address")
    return host
