"""Who may send a callback now: per-host and per-account caps, breakers, disabled hosts (pure).

One slow or dead customer endpoint must delay nobody else. Attempts run concurrently, so
what bounds the damage is how many of them one host (and one account) may hold at once:

- **Concurrency caps across workers.** Each worker holds ``cap * share`` of a host's and an
  account's attempts in flight, ``share`` being the fraction of the input's partitions it owns.
  Cooperative rebalancing revokes a partition before anyone is assigned it, so the shares never
  sum above 1 and the workers together never exceed the cap. A worker always gets at least one
  slot (a share under one attempt would starve it); with more workers than the cap allows that
  rounds the total up to one per worker, which the README says.
- **A rate per host** (``rate`` callbacks/s, the same share of it per worker): GCRA, slots
  ``1 / (rate * share)`` apart with a burst of 0.1 s worth, so a customer's endpoint sees a
  steady stream after an outage rather than a flood. A restarted worker starts with no
  credit beyond that burst.
- **A circuit breaker per host**: ``failures`` consecutive failed attempts (no answer, 408,
  429, 5xx) open it for a cooldown that doubles on each failed probe (30 s up to 10 min); then
  one probe goes, and its success closes it. While open, the host's callbacks wait without
  spending attempts.
- **Disabled hosts**: a 410, or failing without one success for ``disable_after_ms``. Their
  callbacks are given up (dead-lettered, replayable) instead of waiting for ever.

Nothing here does I/O or reads a clock: the stage passes ``now_ms``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Admission", "Gates", "HostHealth"]

COOLDOWN_MS = 30_000
MAX_COOLDOWN_MS = 600_000
#: the host rate's burst: this many seconds' worth of its rate may go at once.
RATE_BURST_S = 0.1
#: how long a callback that found its host or account full waits before it asks again.
FULL_WAIT_MS = 250


@dataclass(slots=True)
class HostHealth:
    """One endpoint host as this worker has seen it."""

    in_flight: int = 0
    failures: int = 0  # consecutive
    open_until_ms: int = 0  # breaker open until then (0: closed)
    cooldown_ms: int = COOLDOWN_MS
    probing: bool = False  # the one half-open probe is in flight
    failing_since_ms: int | None = None
    disabled: str | None = None  # why, once disabled
    next_slot_ms: float = 0.0  # earliest time the next attempt may start (host rate)


@dataclass(frozen=True, slots=True)
class Admission:
    """``go``: send now (a slot is held until :meth:`Gates.finish`). Otherwise ``wait_until_ms``
    says when to ask again, or ``disabled`` why never."""

    go: bool
    wait_until_ms: int = 0
    disabled: str | None = None
    reason: str = ""


class Gates:
    """Admission of attempts by host and account; :meth:`finish` reports how each ended."""

    def __init__(self, host_cap: int, account_cap: int, failures: int,
                 disable_after_ms: int, host_rate: float | None = None) -> None:
        self._host_rate = host_rate
        self._host_cap = host_cap
        self._account_cap = account_cap
        self._failures = failures
        self._disable_after_ms = disable_after_ms
        self.hosts: dict[str, HostHealth] = {}
        self._accounts: dict[str, int] = {}

    @staticmethod
    def slots(cap: int, share: float) -> int:
        """This worker's part of ``cap``: ⌊cap * share⌋, at least one."""
        return max(1, math.floor(cap * share + 1e-9))

    def admit(self, host: str, account: str, share: float, now_ms: int) -> Admission:
        health = self.hosts.setdefault(host, HostHealth())
        if health.disabled is not None:
            return Admission(False, disabled=health.disabled)
        if health.open_until_ms:
            if now_ms < health.open_until_ms or health.probing:
                return Admission(False, max(health.open_until_ms, now_ms + FULL_WAIT_MS),
                                 reason="breaker open")
            health.probing = True  # half-open: this one attempt probes
        elif health.in_flight >= self.slots(self._host_cap, share):
            return Admission(False, now_ms + FULL_WAIT_MS, reason="host at its cap")
        if self._accounts.get(account, 0) >= self.slots(self._account_cap, share):
            health.probing = False
            return Admission(False, now_ms + FULL_WAIT_MS, reason="account at its cap")
        if self._host_rate:
            # GCRA: slots ``spacing`` apart, up to RATE_BURST_S of them at once, so a worker
            # that looks late (a busy loop) still sends at the rate instead of one per look.
            rate = self._host_rate * max(share, 1e-6)
            spacing = 1000.0 / rate
            tolerance = spacing * (max(1.0, rate * RATE_BURST_S) - 1)
            if health.next_slot_ms - now_ms > tolerance:
                health.probing = False
                return Admission(False, math.ceil(health.next_slot_ms - tolerance),
                                 reason="host at its rate")
            health.next_slot_ms = max(health.next_slot_ms, now_ms) + spacing
        health.in_flight += 1
        self._accounts[account] = self._accounts.get(account, 0) + 1
        return Admission(True)

    def finish(self, host: str, account: str, outcome: str, now_ms: int) -> None:
        """An admitted attempt ended: ``ok`` (answered 2xx or a final 4xx: the host is up),
        ``failed`` (no answer, 408/429/5xx) or ``gone`` (410)."""
        health = self.hosts.setdefault(host, HostHealth())
        health.in_flight = max(0, health.in_flight - 1)
        left = self._accounts.get(account, 0) - 1
        if left > 0:
            self._accounts[account] = left
        else:
            self._accounts.pop(account, None)
        was_probe, health.probing = health.probing, False
        if outcome == "gone":
            health.disabled = "the endpoint answered 410 Gone"
            return
        if outcome == "ok":
            health.failures, health.open_until_ms = 0, 0
            health.cooldown_ms, health.failing_since_ms = COOLDOWN_MS, None
            return
        health.failures += 1
        if health.failing_since_ms is None:
            health.failing_since_ms = now_ms
        if now_ms - health.failing_since_ms >= self._disable_after_ms:
            health.disabled = (f"no successful callback for "
                               f"{(now_ms - health.failing_since_ms) / 3_600_000:.1f} h")
            return
        if was_probe:
            health.cooldown_ms = min(MAX_COOLDOWN_MS, health.cooldown_ms * 2)
        if was_probe or health.failures >= self._failures:
            health.open_until_ms = now_ms + health.cooldown_ms

    def disable(self, host: str, reason: str) -> None:
        """Disable ``host`` (another worker, or this one before a restart, saw it fail)."""
        self.hosts.setdefault(host, HostHealth()).disabled = reason

    def enable(self, host: str) -> None:
        """Enable ``host`` again (an operator did): a fresh start, breaker closed; attempts
        still in flight keep their slots."""
        old = self.hosts.get(host)
        if old is not None:
            self.hosts[host] = HostHealth(in_flight=old.in_flight)

    def state(self, host: str, now_ms: int) -> str:
        """closed | open | half_open | disabled, for metrics and logs."""
        health = self.hosts.get(host)
        if health is None:
            return "closed"
        if health.disabled is not None:
            return "disabled"
        if not health.open_until_ms:
            return "closed"
        return "open" if now_ms < health.open_until_ms else "half_open"

    def in_flight(self) -> int:
        return sum(h.in_flight for h in self.hosts.values())
