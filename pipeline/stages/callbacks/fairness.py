"""Who may send a callback now: per-host and per-account caps, breakers, disabled hosts (pure).

One slow or dead customer endpoint must delay nobody else. Attempts run concurrently, so
what bounds the damage is how many of them one host (and one account) may hold at once:

- **Concurrency caps across workers.** Each worker holds ``cap * share`` of a host's and an
  account's attempts in flight, ``share`` being the fraction of the input's partitions it owns.
  Cooperative rebalancing revokes a partition before anyone is assigned it, so the shares never
  sum above 1 and the workers together never exceed the cap. A worker always gets at least one
  slot (a share under one attempt would starve it); with more workers than the cap allows that
  rounds the total up to one per worker, which the README says.
- **A rate per host** (``rate`` callbacks/s, the same share of it per worker): GCRA
  (:mod:`pipeline.gcra`), slots ``1 / (rate * share)`` apart with a burst of 0.1 s worth, so a
  customer's endpoint sees a steady stream after an outage rather than a flood. Only an
  admitted attempt books its slot. A restarted worker starts with no credit beyond that burst.
- **A circuit breaker per host** (:class:`pipeline.breaker.CircuitBreaker`): ``failures``
  consecutive failed attempts (no answer, 408, 429, 5xx) open it for a cooldown that doubles
  on each failed probe (30 s up to 10 min); then one probe goes, and its success closes it.
  While open, the host's callbacks wait without spending attempts. Late results count
  (``late_results``): an attempt started before the breaker opened that succeeds closes it,
  one that fails restarts the cooldown. A probe is never given up by time: the stage reports
  every admitted attempt to :meth:`Gates.finish`.
- **Disabled hosts**: a 410, or failing without one success for ``disable_after_ms``. Their
  callbacks are given up (dead-lettered, replayable) instead of waiting for ever.

Nothing here does I/O or reads a clock: the stage passes ``now_ms``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.breaker import CLOSED, CircuitBreaker
from pipeline.gcra import Limit, reserve

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
    failing_since_ms: int | None = None
    disabled: str | None = None  # why, once disabled
    rate_tat_ms: float | None = None  # the host rate's GCRA TAT (None: idle)
    # Made by Gates on first use, with its settings; None (a new or reset host): a fresh one.
    breaker: CircuitBreaker | None = None


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
        self._limit: tuple[float, Limit] | None = None  # (share, the host rate's share of it)
        self._breaker()  # invalid breaker settings fail here, not at the first callback

    @staticmethod
    def slots(cap: int, share: float) -> int:
        """This worker's part of ``cap``: ⌊cap * share⌋, at least one."""
        return max(1, math.floor(cap * share + 1e-9))

    def admit(self, host: str, account: str, share: float, now_ms: int) -> Admission:
        health, breaker = self._health(host)
        if health.disabled is not None:
            return Admission(False, disabled=health.disabled)
        if breaker.state(now_ms) == CLOSED:
            if health.in_flight >= self.slots(self._host_cap, share):
                return Admission(False, now_ms + FULL_WAIT_MS, reason="host at its cap")
        elif not breaker.allow(now_ms):  # half-open: allow() lets this one attempt probe
            return Admission(False, max(breaker.open_until_ms, now_ms + FULL_WAIT_MS),
                             reason="breaker open")
        if self._accounts.get(account, 0) >= self.slots(self._account_cap, share):
            breaker.release()
            return Admission(False, now_ms + FULL_WAIT_MS, reason="account at its cap")
        if self._host_rate:
            # Up to RATE_BURST_S of slots at once, so a worker that looks late (a busy loop)
            # still sends at the rate instead of one per look.
            slot = reserve(health.rate_tat_ms, now_ms, 1, self._rate_limit(self._host_rate, share))
            if slot.release_at_ms > now_ms:
                breaker.release()
                return Admission(False, math.ceil(slot.release_at_ms), reason="host at its rate")
            health.rate_tat_ms = slot.tat_ms
        health.in_flight += 1
        self._accounts[account] = self._accounts.get(account, 0) + 1
        return Admission(True)

    def finish(self, host: str, account: str, outcome: str, now_ms: int) -> None:
        """An admitted attempt ended: ``ok`` (answered 2xx or a final 4xx: the host is up),
        ``failed`` (no answer, 408/429/5xx) or ``gone`` (410)."""
        health, breaker = self._health(host)
        health.in_flight = max(0, health.in_flight - 1)
        left = self._accounts.get(account, 0) - 1
        if left > 0:
            self._accounts[account] = left
        else:
            self._accounts.pop(account, None)
        if outcome == "gone":
            health.disabled = "the endpoint answered 410 Gone"
            return
        if outcome == "ok":
            breaker.record_success(now_ms)
            health.failing_since_ms = None
            return
        if health.failing_since_ms is None:
            health.failing_since_ms = now_ms
        if now_ms - health.failing_since_ms >= self._disable_after_ms:
            health.disabled = (f"no successful callback for "
                               f"{(now_ms - health.failing_since_ms) / 3_600_000:.1f} h")
            return
        breaker.record_failure(now_ms)

    def prune(self, now_ms: int) -> int:
        """Forget hosts with nothing to remember: none in flight, not failing, not disabled,
        breaker closed and rate credit full again. Keeps ``hosts`` as large as the hosts that
        matter now rather than every host ever called. Returns how many were forgotten."""
        idle = [host for host, h in self.hosts.items()
                if h.in_flight == 0 and h.disabled is None and h.failing_since_ms is None
                and (h.breaker is None or h.breaker.state(now_ms) == CLOSED)
                and (h.rate_tat_ms is None or h.rate_tat_ms <= now_ms)]
        for host in idle:
            del self.hosts[host]
        return len(idle)

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
        return health.breaker.state(now_ms) if health.breaker else "closed"

    def in_flight(self) -> int:
        return sum(h.in_flight for h in self.hosts.values())

    def _health(self, host: str) -> tuple[HostHealth, CircuitBreaker]:
        health = self.hosts.get(host)
        if health is None:
            health = self.hosts[host] = HostHealth()
        if health.breaker is None:
            health.breaker = self._breaker()
        return health, health.breaker

    def _breaker(self) -> CircuitBreaker:
        # One probe at a time and never given up by time: every admitted attempt is finished.
        return CircuitBreaker(self._failures, COOLDOWN_MS, MAX_COOLDOWN_MS, half_open_trials=1,
                              trial_timeout_ms=None, late_results=True)

    def _rate_limit(self, host_rate: float, share: float) -> Limit:
        """This worker's share of the host rate, with RATE_BURST_S of burst (at least one).
        Kept while the share holds: admit runs for every look at a waiting callback."""
        if self._limit is None or self._limit[0] != share:
            rate = host_rate * max(share, 1e-6)
            self._limit = (share, Limit(rate, max(1.0, rate * RATE_BURST_S)))
        return self._limit[1]
