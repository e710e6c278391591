"""The circuit breaker: with dispatch's settings (the defaults) and with the callbacks stage's
(late results count, a probe is never given up by time)."""

from collections.abc import Callable

import pytest

from pipeline.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from pipeline.errors import ConfigError


def _breaker() -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=3, base_cooldown_ms=1_000, max_cooldown_ms=4_000)


def _callbacks_breaker() -> CircuitBreaker:
    """The callbacks stage's settings (fairness.Gates), with short cool-downs."""
    return CircuitBreaker(failure_threshold=3, base_cooldown_ms=1_000, max_cooldown_ms=4_000,
                          trial_timeout_ms=None, late_results=True)


def _trip(breaker: CircuitBreaker, now_ms: int) -> None:
    for _ in range(breaker.failure_threshold):
        breaker.record_failure(now_ms)


# Dispatch's settings: late results are ignored while open, a lost trial is given up.


def test_breaker_opens_after_consecutive_failures():
    """The threshold-th consecutive failure opens the breaker; before that it stays closed."""
    breaker = _breaker()
    breaker.record_failure(0)
    breaker.record_failure(0)
    assert breaker.state(0) == CLOSED and breaker.allow(0)
    breaker.record_failure(0)
    assert breaker.state(0) == OPEN
    assert not breaker.allow(999)


def test_success_resets_consecutive_failures():
    """A success between failures starts the count again."""
    breaker = _breaker()
    breaker.record_failure(0)
    breaker.record_failure(0)
    breaker.record_success(0)
    breaker.record_failure(0)
    breaker.record_failure(0)
    assert breaker.state(0) == CLOSED


def test_breaker_half_opens_after_cooldown():
    """After the cool-down the breaker is half-open and allows a limited number of trials."""
    breaker = _breaker()
    _trip(breaker, 0)
    assert breaker.state(999) == OPEN
    assert breaker.state(1_000) == HALF_OPEN
    assert breaker.allow(1_000)
    assert not breaker.allow(1_001)  # one trial in flight


def test_state_does_not_consume_trials():
    """Asking for the state has no side effect; only allow() reserves a trial."""
    breaker = _breaker()
    _trip(breaker, 0)
    for _ in range(3):
        assert breaker.state(1_000) == HALF_OPEN
    assert breaker.allow(1_000)


def test_half_open_success_closes():
    """A successful trial closes the breaker."""
    breaker = _breaker()
    _trip(breaker, 0)
    assert breaker.allow(1_000)
    breaker.record_success(1_010)
    assert breaker.state(1_010) == CLOSED
    assert breaker.allow(1_010) and breaker.allow(1_010)


@pytest.mark.parametrize("make", [_breaker, _callbacks_breaker], ids=["dispatch", "callbacks"])
def test_half_open_failure_reopens_with_longer_cooldown(make: Callable[[], CircuitBreaker]):
    """A failed trial (probe) reopens; each reopen doubles the cool-down up to the cap, with
    either configuration."""
    breaker = make()
    _trip(breaker, 0)
    opened = 0
    for cooldown in (2_000, 4_000, 4_000):
        opened += breaker.cooldown_ms
        assert breaker.allow(opened)
        breaker.record_failure(opened)
        assert breaker.cooldown_ms == cooldown
        assert breaker.state(opened + cooldown - 1) == OPEN
        assert breaker.state(opened + cooldown) == HALF_OPEN


def test_cooldown_resets_after_closing():
    """Once closed, the next trip starts again from the base cool-down."""
    breaker = _breaker()
    _trip(breaker, 0)
    breaker.allow(1_000)
    breaker.record_failure(1_000)
    breaker.allow(3_000)
    breaker.record_success(3_000)
    _trip(breaker, 5_000)
    assert breaker.cooldown_ms == 1_000
    assert breaker.state(6_000) == HALF_OPEN


def test_results_while_open_are_ignored():
    """Late results of submits started before opening neither close nor extend the breaker."""
    breaker = _breaker()
    _trip(breaker, 0)
    breaker.record_success(500)
    breaker.record_failure(600)
    assert breaker.state(999) == OPEN
    assert breaker.state(1_000) == HALF_OPEN


def test_lost_trial_is_released_after_timeout():
    """A trial that never reports back frees its slot after trial_timeout_ms."""
    breaker = CircuitBreaker(failure_threshold=1, base_cooldown_ms=1_000, trial_timeout_ms=5_000)
    breaker.record_failure(0)
    assert breaker.allow(1_000)
    assert not breaker.allow(5_999)
    assert breaker.allow(6_000)


def test_invalid_breaker_settings_are_config_errors():
    """Thresholds below one or a cool-down above its cap are refused."""
    with pytest.raises(ConfigError):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ConfigError):
        CircuitBreaker(base_cooldown_ms=10, max_cooldown_ms=5)


def test_trip_opens_a_closed_breaker_at_once():
    """A connector that cannot connect opens its breaker without waiting for N failures."""
    breaker = CircuitBreaker(failure_threshold=5)
    breaker.trip(1_000)
    assert breaker.state(1_000) == OPEN
    assert not breaker.allow(1_001)


def test_open_until_is_when_the_cooldown_ends():
    """open_until_ms is 0 while closed, then the end of the current cool-down."""
    breaker = _breaker()
    assert breaker.open_until_ms == 0
    _trip(breaker, 500)
    assert breaker.open_until_ms == 1_500
    assert breaker.allow(1_500)
    breaker.record_failure(1_600)
    assert breaker.open_until_ms == 3_600


def test_released_trial_can_be_taken_again():
    """A trial given back by release() (the attempt did not go) is free for the next caller."""
    breaker = _breaker()
    _trip(breaker, 0)
    assert breaker.allow(1_000)
    assert not breaker.allow(1_000)
    breaker.release()
    assert breaker.allow(1_000)
    breaker.release()
    breaker.release()  # nothing out: no effect
    assert breaker.allow(1_000) and not breaker.allow(1_000)


def test_trial_timeout_must_be_positive_or_none():
    """A trial timeout of zero is refused; None (never give up) is accepted."""
    with pytest.raises(ConfigError):
        CircuitBreaker(trial_timeout_ms=0)
    assert CircuitBreaker(trial_timeout_ms=None).trial_timeout_ms is None


# The callbacks stage's settings: late results count, a probe waits for its answer.


def test_late_success_while_open_closes():
    """An attempt started before the breaker opened that succeeds closes it: the host answered."""
    breaker = _callbacks_breaker()
    _trip(breaker, 0)
    breaker.record_success(500)
    assert breaker.state(500) == CLOSED
    assert breaker.allow(501)


def test_late_failure_while_open_restarts_the_cooldown_at_its_length():
    """A late failure while open pushes the end of the cool-down to a full cool-down from now,
    without lengthening it."""
    breaker = _callbacks_breaker()
    _trip(breaker, 0)
    breaker.record_failure(600)
    assert breaker.cooldown_ms == 1_000
    assert breaker.state(1_599) == OPEN
    assert breaker.state(1_600) == HALF_OPEN


def test_late_failure_while_half_open_without_a_trial_does_not_lengthen():
    """Half-open with no probe out, a late failure restarts the same cool-down."""
    breaker = _callbacks_breaker()
    _trip(breaker, 0)
    breaker.record_failure(1_200)
    assert breaker.cooldown_ms == 1_000
    assert breaker.state(2_199) == OPEN and breaker.state(2_200) == HALF_OPEN


def test_while_a_probe_is_out_the_next_result_is_taken_as_its():
    """The first result after the probe went decides; a later one is a late result again."""
    breaker = _callbacks_breaker()
    _trip(breaker, 0)
    assert breaker.allow(1_000)  # the probe
    breaker.record_failure(1_100)  # an older attempt's failure, taken as the probe's
    assert breaker.cooldown_ms == 2_000 and breaker.open_until_ms == 3_100
    breaker.record_failure(1_200)  # the probe's own failure: a late one now
    assert breaker.cooldown_ms == 2_000 and breaker.open_until_ms == 3_200


def test_a_probe_is_never_given_up_by_time():
    """Without a trial timeout, one probe out holds the breaker however long it takes."""
    breaker = _callbacks_breaker()
    _trip(breaker, 0)
    assert breaker.allow(1_000)
    assert not breaker.allow(1_000 + 86_400_000)
    breaker.record_success(1_000 + 86_400_000)
    assert breaker.state(1_000 + 86_400_000) == CLOSED
