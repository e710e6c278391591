"""Which connector carries a message: route table, circuit breakers and failover (pure logic).

A route maps a channel and an E.164 destination prefix to connectors in priority order; the
longest matching prefix wins, so ``+4477`` (UK mobiles) can override ``+44`` and ``""`` (any).
Each connector has a :class:`CircuitBreaker`; :func:`choose` takes the first candidate whose
breaker allows a submit, which fails over to the next connector while one is unhealthy and
returns to the primary once its breaker closes again. Nothing here does I/O or reads a clock:
time is always passed in as ``now_ms``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connectors.base import ErrorKind
from pipeline.configfile import read_json
from pipeline.errors import ConfigError, TelexError
from pipeline.records import CHANNELS

__all__ = [
    "CLOSED",
    "HALF_OPEN",
    "OPEN",
    "CircuitBreaker",
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


CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class CircuitBreaker:
    """Per-connector breaker; rule: ``failure_threshold`` consecutive health failures open it.

    Consecutive failures rather than a ratio over a window: the caller only reports failures that
    :func:`counts_against_health`, and a healthy carrier answers (success or a per-message
    refusal, reported as success) between them, so a run of them is a clear signal and needs no
    window bookkeeping.

    * closed → open after ``failure_threshold`` consecutive failures.
    * open → half_open once the cool-down has passed. The cool-down doubles each time the
      breaker reopens without having closed (``base_cooldown_ms`` · 2^n, capped at
      ``max_cooldown_ms``), so a dead carrier is probed less and less often.
    * half_open allows ``half_open_trials`` submits; :meth:`allow` reserves one each time it
      answers True. A success closes the breaker (and resets the cool-down), a failure reopens
      it with the next, longer cool-down. A trial that never reports back (its message skipped,
      its task cancelled) is given up after ``trial_timeout_ms`` so the breaker cannot wedge.
    * Results reported while open come from submits started before it opened; they are ignored.
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        base_cooldown_ms: int = 5_000,
        max_cooldown_ms: int = 300_000,
        half_open_trials: int = 1,
        trial_timeout_ms: int = 30_000,
    ) -> None:
        if failure_threshold < 1 or half_open_trials < 1:
            raise ConfigError("failure_threshold and half_open_trials must be at least 1")
        if not 0 < base_cooldown_ms <= max_cooldown_ms or trial_timeout_ms <= 0:
            raise ConfigError("need 0 < base_cooldown_ms <= max_cooldown_ms, trial_timeout_ms > 0")
        self.failure_threshold = failure_threshold
        self.base_cooldown_ms = base_cooldown_ms
        self.max_cooldown_ms = max_cooldown_ms
        self.half_open_trials = half_open_trials
        self.trial_timeout_ms = trial_timeout_ms
        self._failures = 0  # consecutive, while closed
        self._trips = 0  # times opened since last closed; sets the cool-down
        self._opened_at_ms = 0
        self._trials = 0  # reserved in the current half-open round
        self._trials_since_ms = 0

    @property
    def cooldown_ms(self) -> int:
        """Cool-down of the current (or next) open period."""
        steps = max(0, self._trips - 1)
        return min(self.max_cooldown_ms, self.base_cooldown_ms << min(steps, 32))

    def state(self, now_ms: int) -> str:
        """"closed", "open" or "half_open" at ``now_ms`` (open turns half_open by time alone)."""
        if self._trips == 0:
            return CLOSED
        if now_ms - self._opened_at_ms < self.cooldown_ms:
            return OPEN
        return HALF_OPEN

    def allow(self, now_ms: int) -> bool:
        """May a submit go to this connector now? In half_open this reserves a trial."""
        state = self.state(now_ms)
        if state == CLOSED:
            return True
        if state == OPEN:
            return False
        if self._trials and now_ms - self._trials_since_ms >= self.trial_timeout_ms:
            self._trials = 0  # the earlier trials never reported back
        if self._trials >= self.half_open_trials:
            return False
        if self._trials == 0:
            self._trials_since_ms = now_ms
        self._trials += 1
        return True

    def record_success(self, now_ms: int) -> None:
        """The connector answered; closes a half-open breaker."""
        if self.state(now_ms) == OPEN:
            return
        self._failures = 0
        self._trips = 0
        self._trials = 0

    def record_failure(self, now_ms: int) -> None:
        """A failure that :func:`counts_against_health`; may open or reopen the breaker."""
        state = self.state(now_ms)
        if state == OPEN:
            return
        if state == CLOSED:
            self._failures += 1
            if self._failures < self.failure_threshold:
                return
        self._open(now_ms)

    def trip(self, now_ms: int) -> None:
        """Open now, whatever the count: the connector could not even connect."""
        if self.state(now_ms) != OPEN:
            self._open(now_ms)

    def _open(self, now_ms: int) -> None:
        self._failures = 0
        self._trials = 0
        self._trips += 1
        self._opened_at_ms = now_ms


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
