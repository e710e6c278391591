"""What an attempt's answer means, and when to try again (pure: no I/O, no clock).

An attempt ends in one :class:`Verdict`:

- ``delivered``: any 2xx.
- ``retry``: 408, 429, any 5xx, or no answer (timeout, refused connection, TLS or protocol
  failure), while attempts are left; the wait is exponential backoff with *full jitter*
  (uniform in [0, ceiling]) so that thousands of callbacks failing together do not come back
  together. A ``Retry-After`` on 429/503 is honoured, bounded by :attr:`Schedule.max_retry_after_s`
  (an endpoint cannot park a callback for a week).
- ``give_up``: any other 4xx (the receiver says the request is wrong: repeating it cannot
  help), a redirect (never followed: it could point anywhere, including inside our network),
  a URL the SSRF guard refused, or attempts exhausted. The callback goes to ``dlq-callbacks``.
- ``disable``: 410 Gone, the receiver's way of saying the endpoint is retired; nothing more is
  sent to it until it is enabled again.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

__all__ = [
    "DEFAULT_CEILINGS_S",
    "DELIVERED",
    "DISABLE",
    "GIVE_UP",
    "RETRY",
    "Schedule",
    "Verdict",
    "judge",
    "parse_ceilings",
    "retry_after_s",
]

#: waits' ceilings after attempt 1, 2, …: eight attempts, the last ~24 h after the first at worst
#: (sum 23.6 h) and ~12 h on average with full jitter.
DEFAULT_CEILINGS_S: tuple[float, ...] = (60, 300, 1_800, 7_200, 18_000, 28_800, 28_800)

DELIVERED, RETRY, GIVE_UP, DISABLE = "delivered", "retry", "give_up", "disable"
_RETRIED_4XX = frozenset({408, 429})


@dataclass(frozen=True, slots=True)
class Schedule:
    """How often and how long a callback is tried (``TELEX_CALLBACK_RETRY_CEILINGS_S``)."""

    ceilings_s: tuple[float, ...] = DEFAULT_CEILINGS_S
    max_retry_after_s: float = 3_600.0

    @property
    def attempts(self) -> int:
        return len(self.ceilings_s) + 1

    def wait_s(self, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
        """Wait after failed attempt ``attempt`` (1-based): full jitter under its ceiling, or
        the endpoint's own ``Retry-After`` when it asks for more (bounded)."""
        ceiling = self.ceilings_s[min(attempt, len(self.ceilings_s)) - 1]
        wait = rng.uniform(0.0, ceiling)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_retry_after_s))
        return wait


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: str  # delivered | retry | give_up | disable
    reason: str
    wait_s: float = 0.0


def judge(attempt: int, status: int | None, error: str | None, retry_after: float | None,
          schedule: Schedule, rng: random.Random) -> Verdict:
    """The verdict on attempt ``attempt`` (1-based) that got HTTP ``status``, or no answer
    (``status`` None, ``error`` says why: timeout, connect, tls, protocol)."""
    if status is not None and 200 <= status < 300:
        return Verdict(DELIVERED, f"HTTP {status}")
    if status == 410:
        return Verdict(DISABLE, "HTTP 410 Gone: the endpoint is retired")
    if status is not None and 300 <= status < 400:
        return Verdict(GIVE_UP, f"HTTP {status}: redirects are not followed")
    if status is not None and 400 <= status < 500 and status not in _RETRIED_4XX:
        return Verdict(GIVE_UP, f"HTTP {status}: the endpoint refused the request")
    what = f"HTTP {status}" if status is not None else f"no answer ({error or 'error'})"
    if status is not None and not 100 <= status < 600:
        what = f"HTTP {status} (not a status code)"
    if attempt >= schedule.attempts:
        return Verdict(GIVE_UP, f"{what}; {attempt} attempts made, none left")
    honoured = retry_after if status in (429, 503) else None
    return Verdict(RETRY, what, schedule.wait_s(attempt, rng, honoured))


def retry_after_s(value: str | None, now_s: float) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; None when absent
    or unreadable (then the schedule alone decides)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now_s)


def parse_ceilings(text: str) -> tuple[float, ...]:
    """``"60,300,1800"`` → the schedule's ceilings; each positive, at least one."""
    values: Sequence[float] = tuple(float(v) for v in text.split(",") if v.strip())
    if not values or any(v <= 0 for v in values):
        raise ValueError("retry ceilings are positive seconds, comma-separated")
    return tuple(values)
