"""Per-account request rate limit of one API process: GCRA conformance (pipeline.gcra), no
queue: a request that may not go now is refused with how long to wait."""

from __future__ import annotations

import math

from pipeline.gcra import Limit, reserve

__all__ = ["RequestLimiter"]


class RequestLimiter:
    """One GCRA bucket per account, in memory (a replica limits its own share)."""

    def __init__(self, rate: float, burst: float) -> None:
        self._limit = Limit(rate, burst)
        self._tat: dict[str, float] = {}

    def admit(self, account_id: str, now_ms: float) -> int:
        """0 if the request may go (and it is counted), else whole seconds to wait (≥ 1)."""
        slot = reserve(self._tat.get(account_id), now_ms, 1, self._limit)
        if slot.release_at_ms <= now_ms:
            self._tat[account_id] = slot.tat_ms
            return 0
        return max(1, math.ceil(slot.wait_ms(now_ms) / 1000))
