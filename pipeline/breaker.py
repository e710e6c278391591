"""A circuit breaker: consecutive failures open it, a cool-down, then limited half-open trials.

The one breaker in Telex: dispatch keeps one per connector (failover between carriers) and the
callbacks stage one per endpoint host. Pure: nothing here does I/O or reads a clock, the caller
passes ``now_ms``.

Both run the same state machine with their own settings; they differ in two details, kept as
parameters: what results of attempts started before the breaker opened do (``late_results``),
and whether a trial that never reports back is given up (``trial_timeout_ms``).
"""

from __future__ import annotations

from pipeline.errors import ConfigError

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "CircuitBreaker"]

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class CircuitBreaker:
    """Rule: ``failure_threshold`` consecutive failures open it.

    Consecutive failures rather than a ratio over a window: callers report only failures that
    say something about the remote end (dispatch: ``counts_against_health``; callbacks: no
    answer, 408/429/5xx), and a healthy one answers between them, so a run of them is a clear
    signal and needs no window bookkeeping.

    * closed → open after ``failure_threshold`` consecutive failures.
    * open → half_open once the cool-down has passed. The cool-down doubles each time the
      breaker reopens after a failed trial without having closed (``base_cooldown_ms`` · 2^n,
      capped at ``max_cooldown_ms``), so a dead remote end is probed less and less often.
    * half_open allows ``half_open_trials`` attempts; :meth:`allow` reserves one each time it
      answers True (:meth:`release` gives back one that was not used). A success closes the
      breaker (and resets the cool-down), a failed trial reopens it with the next, longer
      cool-down. A trial that never reports back (its message skipped, its task cancelled) is
      given up after ``trial_timeout_ms`` so the breaker cannot wedge; ``None`` never gives up,
      for a caller that reports every attempt it was allowed.
    * Late results (reported while open, or while half-open with no trial out: they come from
      attempts started before the breaker opened):

      - ``late_results=False`` (dispatch): ignored while open, so a window of submits that were
        already in flight neither closes nor extends it; once half-open, a failure counts as a
        failed trial (longer cool-down) and a success closes it.
      - ``late_results=True`` (callbacks): a success closes it at once (the host answered), a
        failure restarts the cool-down from now at its current length (the host is retried a
        full cool-down after its last failure; only a failed trial lengthens it). While a trial
        is out, the next result reported is taken as the trial's.
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        base_cooldown_ms: int = 5_000,
        max_cooldown_ms: int = 300_000,
        half_open_trials: int = 1,
        trial_timeout_ms: int | None = 30_000,
        *,
        late_results: bool = False,
    ) -> None:
        if failure_threshold < 1 or half_open_trials < 1:
            raise ConfigError("failure_threshold and half_open_trials must be at least 1")
        if not 0 < base_cooldown_ms <= max_cooldown_ms or (
            trial_timeout_ms is not None and trial_timeout_ms <= 0
        ):
            raise ConfigError("need 0 < base_cooldown_ms <= max_cooldown_ms, trial_timeout_ms > 0")
        self.failure_threshold = failure_threshold
        self.base_cooldown_ms = base_cooldown_ms
        self.max_cooldown_ms = max_cooldown_ms
        self.half_open_trials = half_open_trials
        self.trial_timeout_ms = trial_timeout_ms
        self.late_results = late_results
        self._failures = 0  # consecutive, while closed
        self._trips = 0  # times opened since last closed; sets the cool-down
        self._opened_at_ms = 0  # start of the current cool-down
        self._trials = 0  # reserved in the current half-open round
        self._trials_since_ms = 0

    @property
    def cooldown_ms(self) -> int:
        """Cool-down of the current (or next) open period."""
        steps = max(0, self._trips - 1)
        return min(self.max_cooldown_ms, self.base_cooldown_ms << min(steps, 32))

    @property
    def open_until_ms(self) -> int:
        """When the current cool-down ends (the breaker turns half-open); 0 while closed."""
        return self._opened_at_ms + self.cooldown_ms if self._trips else 0

    def state(self, now_ms: int) -> str:
        """"closed", "open" or "half_open" at ``now_ms`` (open turns half_open by time alone)."""
        if self._trips == 0:
            return CLOSED
        if now_ms - self._opened_at_ms < self.cooldown_ms:
            return OPEN
        return HALF_OPEN

    def allow(self, now_ms: int) -> bool:
        """May an attempt go now? In half_open this reserves a trial."""
        state = self.state(now_ms)
        if state == CLOSED:
            return True
        if state == OPEN:
            return False
        if (self._trials and self.trial_timeout_ms is not None
                and now_ms - self._trials_since_ms >= self.trial_timeout_ms):
            self._trials = 0  # the earlier trials never reported back
        if self._trials >= self.half_open_trials:
            return False
        if self._trials == 0:
            self._trials_since_ms = now_ms
        self._trials += 1
        return True

    def release(self) -> None:
        """Give back a trial :meth:`allow` reserved for an attempt that did not go after all
        (another limit held it back); without a trial out this does nothing."""
        self._trials = max(0, self._trials - 1)

    def record_success(self, now_ms: int) -> None:
        """The remote end answered; closes a half-open breaker (an open one too, with
        ``late_results``)."""
        if not self.late_results and self.state(now_ms) == OPEN:
            return
        self._failures = 0
        self._trips = 0
        self._trials = 0

    def record_failure(self, now_ms: int) -> None:
        """A failure that says the remote end is unhealthy; may open or reopen the breaker."""
        state = self.state(now_ms)
        if state == CLOSED:
            self._failures += 1
            if self._failures >= self.failure_threshold:
                self._open(now_ms)
        elif self.late_results:
            if self._trials:
                self._open(now_ms)  # the trial's answer: reopen, longer
            else:
                self._opened_at_ms = now_ms  # a late failure: the same cool-down, from now
        elif state == HALF_OPEN:
            self._open(now_ms)

    def trip(self, now_ms: int) -> None:
        """Open now, whatever the count: the remote end could not even be reached."""
        if self.state(now_ms) != OPEN:
            self._open(now_ms)

    def _open(self, now_ms: int) -> None:
        self._failures = 0
        self._trials = 0
        self._trips += 1
        self._opened_at_ms = now_ms
