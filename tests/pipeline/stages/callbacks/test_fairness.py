"""Admission of callback attempts: caps with shares, breakers, disabled hosts (pure)."""

from __future__ import annotations

from pipeline.stages.callbacks.fairness import COOLDOWN_MS, Gates

DAY_MS = 86_400_000


def _gates(host_cap: int = 4, account_cap: int = 100, failures: int = 3) -> Gates:
    return Gates(host_cap, account_cap, failures, DAY_MS)


def test_a_host_gets_its_share_of_the_cap_and_others_are_not_affected() -> None:
    """Half the partitions: half the host's cap; a full host leaves another host free."""
    gates = _gates(host_cap=4)
    assert [gates.admit("slow.example", "a", 0.5, 0).go for _ in range(3)] == [True, True, False]
    assert gates.admit("fast.example", "a", 0.5, 0).go
    gates.finish("slow.example", "a", "ok", 1)
    assert gates.admit("slow.example", "a", 0.5, 1).go


def test_shares_never_sum_above_the_cap_and_every_worker_gets_one() -> None:
    """⌊cap * share⌋ per worker, at least one."""
    assert sum(Gates.slots(16, 1 / 3) for _ in range(3)) <= 16
    assert Gates.slots(16, 1.0) == 16
    assert Gates.slots(2, 1 / 6) == 1


def test_an_account_cap_holds_across_hosts() -> None:
    """One account spread over many hosts still has one cap."""
    gates = _gates(host_cap=100, account_cap=2)
    assert [gates.admit(f"h{i}.example", "acct", 1.0, 0).go for i in range(3)] == [
        True, True, False]
    assert gates.admit("h9.example", "other", 1.0, 0).go


def test_consecutive_failures_open_the_breaker_then_one_probe_closes_it() -> None:
    """Three failures open it; during the cooldown nothing goes; then a single probe, whose
    success closes the breaker."""
    gates = _gates(failures=3)
    for t in range(3):
        assert gates.admit("down.example", "a", 1.0, t).go
        gates.finish("down.example", "a", "failed", t)
    held = gates.admit("down.example", "a", 1.0, 10)
    assert not held.go and held.wait_until_ms >= 2 + COOLDOWN_MS
    assert gates.state("down.example", 10) == "open"
    later = 2 + COOLDOWN_MS
    assert gates.admit("down.example", "a", 1.0, later).go  # the probe
    assert not gates.admit("down.example", "a", 1.0, later).go  # only one
    gates.finish("down.example", "a", "ok", later + 5)
    assert gates.state("down.example", later + 5) == "closed"
    assert gates.admit("down.example", "a", 1.0, later + 6).go


def test_a_failed_probe_doubles_the_cooldown() -> None:
    """The breaker backs off from a host that stays down."""
    gates = _gates(failures=1)
    gates.admit("down.example", "a", 1.0, 0)
    gates.finish("down.example", "a", "failed", 0)
    probe_at = COOLDOWN_MS
    assert gates.admit("down.example", "a", 1.0, probe_at).go
    gates.finish("down.example", "a", "failed", probe_at)
    assert not gates.admit("down.example", "a", 1.0, probe_at + COOLDOWN_MS).go
    assert gates.admit("down.example", "a", 1.0, probe_at + 2 * COOLDOWN_MS).go


def test_a_late_success_closes_an_open_breaker() -> None:
    """An attempt that started before the breaker opened and then succeeds closes it."""
    gates = _gates(failures=1)
    assert gates.admit("up.example", "a", 1.0, 0).go and gates.admit("up.example", "a", 1.0, 0).go
    gates.finish("up.example", "a", "failed", 10)
    assert gates.state("up.example", 10) == "open"
    gates.finish("up.example", "a", "ok", 20)
    assert gates.state("up.example", 20) == "closed"


def test_a_probe_held_back_by_the_account_cap_is_given_back() -> None:
    """A half-open host whose would-be probe is refused by the account cap keeps its probe."""
    gates = _gates(account_cap=1, failures=1)
    gates.admit("down.example", "a", 1.0, 0)
    gates.finish("down.example", "a", "failed", 0)
    assert gates.admit("other.example", "a", 1.0, COOLDOWN_MS).go  # fills account a
    held = gates.admit("down.example", "a", 1.0, COOLDOWN_MS)
    assert not held.go and held.reason == "account at its cap"
    gates.finish("other.example", "a", "ok", COOLDOWN_MS + 1)
    assert gates.admit("down.example", "a", 1.0, COOLDOWN_MS + 1).go  # the probe


def test_gone_and_long_failing_hosts_are_disabled() -> None:
    """410 disables at once; failing with no success for the whole period disables too."""
    gates = _gates()
    gates.admit("retired.example", "a", 1.0, 0)
    gates.finish("retired.example", "a", "gone", 0)
    assert gates.admit("retired.example", "a", 1.0, 1).disabled
    assert gates.state("retired.example", 1) == "disabled"
    gates = Gates(4, 100, 1_000, disable_after_ms=1_000)
    for t in (0, 500, 1_000):
        gates.admit("down.example", "a", 1.0, t)
        gates.finish("down.example", "a", "failed", t)
    assert gates.admit("down.example", "a", 1.0, 1_001).disabled


def test_a_success_resets_the_failure_period() -> None:
    """Intermittent failures never add up to a disable."""
    gates = Gates(4, 100, 1_000, disable_after_ms=1_000)
    for t, outcome in ((0, "failed"), (900, "ok"), (1_500, "failed"), (2_000, "failed")):
        gates.admit("flaky.example", "a", 1.0, t)
        gates.finish("flaky.example", "a", outcome, t)
    assert gates.state("flaky.example", 2_001) != "disabled"


def test_a_host_rate_spaces_attempts_by_the_workers_share() -> None:
    """10/s with half the partitions: one attempt per 200 ms to that host; others unaffected."""
    gates = Gates(100, 100, 5, DAY_MS, host_rate=10.0)
    assert gates.admit("h.example", "a", 0.5, 1_000).go
    held = gates.admit("h.example", "a", 0.5, 1_050)
    assert not held.go and held.wait_until_ms == 1_200 and held.reason == "host at its rate"
    assert gates.admit("other.example", "a", 0.5, 1_050).go
    assert gates.admit("h.example", "a", 0.5, 1_200).go
    assert not gates.admit("h.example", "a", 0.5, 1_399).go


def test_a_late_look_still_sends_at_the_rate() -> None:
    """500/s: a worker that looks only every 10 ms still gets ~5 attempts per look (the burst
    covers 0.1 s), not one: the rate holds even when the loop is busy."""
    gates = Gates(1_000, 1_000, 5, DAY_MS, host_rate=500.0)
    sent = 0
    for look in range(100):  # one second of looks, 10 ms apart
        now = 1_000 + 10 * look
        while gates.admit("h.example", "a", 1.0, now).go:
            sent += 1
    assert 490 <= sent <= 550


def test_a_fresh_host_at_a_low_rate_goes_at_once() -> None:
    """3/s (one slot, 1000/3 ms apart): the first attempt to a host goes when it asks, not a
    rounding error later (regression: the release computed as (now + T) - T)."""
    gates = Gates(100, 100, 5, DAY_MS, host_rate=3.0)
    assert gates.admit("h.example", "a", 1.0, 1_715).go


def test_prune_forgets_only_hosts_with_nothing_to_remember() -> None:
    """An idle healthy host is forgotten (the map stays as large as the hosts that matter);
    one in flight, one with its breaker open, one disabled and one still owing rate credit are
    kept."""
    gates = Gates(host_cap=4, account_cap=100, failures=1, disable_after_ms=10**9,
                  host_rate=1.0)
    for host in ("idle", "busy", "broken", "gone", "paced"):
        assert gates.admit(host, "acct", 1.0, 0).go
    gates.finish("idle", "acct", "ok", 0)
    gates.finish("broken", "acct", "failed", 0)  # one failure opens it (failures=1)
    gates.finish("gone", "acct", "gone", 0)
    gates.finish("paced", "acct", "ok", 0)
    # At 500 ms the idle host's one-per-second slot is not yet free again either: nothing goes.
    assert gates.prune(500) == 0
    gates.admit("paced", "acct", 1.0, 1_000)  # takes the slot of 1 s: credit owed until 2 s
    gates.finish("paced", "acct", "ok", 1_000)
    assert gates.prune(1_500) == 1
    assert set(gates.hosts) == {"busy", "broken", "gone", "paced"}
