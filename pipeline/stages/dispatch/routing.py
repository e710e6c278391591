"""Which connector carries a message: route table, circuit breakers and failover (pure logic).

A route maps a channel and an E.164 destination prefix to connectors in priority order; the
longest matching prefix wins, so ``+4477`` (UK mobiles) can override ``+44`` and ``""`` (any).
Each connector has a :class:`~pipeline.breaker.CircuitBreaker` (built by the carriers file:
results reported while open are ignored, a lost trial is given up); :func:`choose` takes the
first candidate whose breaker allows a submit, which fails over to the next connector while one
is unhealthy and returns to the primary once its breaker closes again. Nothing here does I/O
or reads a clock: time is always passed in as ``now_ms``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connectors.base import ErrorKind
from pipeline.breaker import CircuitBreaker
from pipeline.configfile import read_json
from pipeline.errors import ConfigError, TelexError
from pipeline.records import CHANNELS

__all__ = [
    "NoRouteError",
    "Route",
    "RouteTable",
    "choose",
    "counts_against_health",
]

_PREFIX = re.compile(r"\+[1-9][0-9]{0,14}")


class NoRouteError(TelexError):
    """No route in the table matches the message's channel and destination."""


@dataclass(frozen=True, slots=True)
class Route:
    """Connectors (priority order) for ``channel`` destinations starting with ``prefix``."""

    channel: str
    prefix: str
    connectors: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.channel not in CHANNELS:
            raise ConfigError(f"route channel must be one of {CHANNELS}, got {self.channel!r}")
        if self.prefix and not _PREFIX.fullmatch(self.prefix):
            raise ConfigError(f"route prefix must be '' or '+' and digits, got {self.prefix!r}")
        if not self.connectors or not all(
            isinstance(c, str) and c for c in self.connectors
        ):
            raise ConfigError(f"route {self.channel} {self.prefix!r} needs connector names")
        if len(set(self.connectors)) != len(self.connectors):
            raise ConfigError(f"route {self.channel} {self.prefix!r} repeats a connector")


def _address(recipient: str) -> str:
    """The recipient without its channel scheme: 'whatsapp:+4477…' → '+4477…'.

    E.164 never contains ':', so everything up to the first ':' is a scheme.
    """
    return recipient.partition(":")[2] if ":" in recipient else recipient


class RouteTable:
    """Routes by (channel, prefix); :meth:`candidates` answers by longest matching prefix."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self._routes: dict[tuple[str, str], Route] = {}
        for route in routes:
            key = (route.channel, route.prefix)
            if key in self._routes:
                raise ConfigError(f"duplicate route for {route.channel} {route.prefix!r}")
            self._routes[key] = route

    @property
    def routes(self) -> tuple[Route, ...]:
        return tuple(self._routes.values())

    @classmethod
    def from_mapping(cls, raw: Sequence[Mapping[str, Any]]) -> RouteTable:
        """Table from ``[{"channel": "sms", "prefix": "+44", "connectors": ["smsc-a"]}, …]``."""
        if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
            raise ConfigError("routes must be a list of objects")
        routes = []
        for i, item in enumerate(raw):
            if not isinstance(item, Mapping):
                raise ConfigError(f"route #{i} must be an object, got {type(item).__name__}")
            unknown = set(item) - {"channel", "prefix", "connectors"}
            if unknown:
                raise ConfigError(f"route #{i} has unknown keys {sorted(unknown)}")
            connectors = item.get("connectors")
            if isinstance(connectors, str) or not isinstance(connectors, Sequence):
                raise ConfigError(f"route #{i}: 'connectors' must be a list of names")
            channel, prefix = item.get("channel"), item.get("prefix", "")
            if not isinstance(channel, str) or not isinstance(prefix, str):
                raise ConfigError(f"route #{i}: 'channel' and 'prefix' must be strings")
            routes.append(Route(channel, prefix, tuple(connectors)))
        return cls(routes)

    @classmethod
    def from_file(cls, path: str | Path) -> RouteTable:
        """Table from a JSON file holding a list of routes, or ``{"routes": [...]}``."""
        raw = read_json(path, "route table")
        if isinstance(raw, dict):
            raw = raw.get("routes")
        return cls.from_mapping(raw)

    def candidates(self, channel: str, recipient: str) -> tuple[str, ...]:
        """Connectors of the longest prefix matching ``recipient`` on ``channel``."""
        address = _address(recipient)
        best: Route | None = None
        for route in self._routes.values():
            if route.channel == channel and address.startswith(route.prefix) and (
                best is None or len(route.prefix) > len(best.prefix)
            ):
                best = route
        if best is None:
            raise NoRouteError(f"no route for {channel} recipient {recipient!r}")
        return best.connectors


# Failures that say something about the connector rather than the message. A refusal of one
# message (bad number, filtered content) proves the carrier is answering, so it must not trip
# the breaker: one customer's bad numbers would otherwise fail over everyone's traffic.
# QUEUE_FULL is the carrier's own overload signal, like THROTTLED.
_HEALTH_KINDS = frozenset({
    ErrorKind.TIMEOUT,
    ErrorKind.CONNECTION_LOST,
    ErrorKind.SERVER_ERROR,
    ErrorKind.THROTTLED,
    ErrorKind.QUEUE_FULL,
})


def counts_against_health(kind: ErrorKind) -> bool:
    """Whether a failure of ``kind`` should be fed to the connector's breaker."""
    return kind in _HEALTH_KINDS


def choose(
    candidates: Sequence[str], breakers: Mapping[str, CircuitBreaker], now_ms: int
) -> str | None:
    """First candidate whose breaker allows a submit, or None when every one is open.

    A candidate without a breaker counts as healthy: no evidence against it. Breakers are asked
    in order and only until one allows, so a half-open trial is reserved only on the connector
    that will actually be used.
    """
    for name in candidates:
        breaker = breakers.get(name)
        if breaker is None or breaker.allow(now_ms):
            return name
    return None
