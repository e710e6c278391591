"""The status model: monotonic, duplicates absorbed, sequenced, deadlines and resends."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from pipeline.records import IN_DOUBT, RANK, RECEIPT_WINDOW
from pipeline.stages.status.decision import MessageStatus, Policy, Result, UnknownMessage, apply

POLICY = Policy(receipt_window_ms=60_000, max_resends=1)
MID = "TX" + "0" * 32


def upd(status: str | None, source: str, attempt: int | None = 0, t: int = 1_000,
        **extra: Any) -> dict[str, Any]:
    return {"message_id": MID, "source": source, "status": status, "timer": None,
            "attempt": attempt, "account_id": "acct", "channel": "sms", "event_time_ms": t,
            "error_code": None, "error_reason": None, "carrier_message_id": None,
            "connector": None, "carrier_status": None, "segments": None, "trace_id": None,
            "resend_message": None, **extra}


def sent(attempt: int = 0, connector: str = "smsc-a", t: int = 2_000) -> dict[str, Any]:
    return upd("sent", "dispatch", attempt, t, connector=connector,
               carrier_message_id=f"c{attempt}", resend_message=b"\xc3\x01msg")


def run(updates: list[dict[str, Any]], state: MessageStatus | None = None
        ) -> tuple[MessageStatus, list[Result]]:
    results = []
    for u in updates:
        r = apply(state, u, 10_000, POLICY)
        state = r.state
        results.append(r)
    assert state is not None
    return state, results


def test_in_order_history_is_sequenced_from_one() -> None:
    """accepted, sent and delivered in order are all applied as events 1, 2, 3, each its own
    effective status; the message ends delivered."""
    state, results = run([upd("accepted", "ingest"), sent(),
                          upd("delivered", "receipt", connector="smsc-a")])
    events = [e for r in results for e in r.events]
    assert [(e["status"], e["sequence"], e["effective_status"]) for e in events] == [
        ("accepted", 1, "accepted"), ("sent", 2, "sent"), ("delivered", 3, "delivered")]
    assert state.status == "delivered" and [r.outcome for r in results] == ["applied"] * 3


def test_late_sent_after_delivered_is_history_but_never_moves_back() -> None:
    """A dispatch sent after delivered is written as history (effective delivered, no latest);
    the message stays delivered at sequence 3."""
    state, results = run([upd("accepted", "ingest"),
                          upd("delivered", "receipt", connector="smsc-a"), sent()])
    late = results[-1]
    assert late.outcome == "history" and late.latest is None
    assert late.events[0]["status"] == "sent" and late.events[0]["effective_status"] == "delivered"
    assert state.status == "delivered" and state.sequence == 3


def test_duplicate_receipt_is_absorbed() -> None:
    """The same delivered receipt twice: the second is a duplicate that writes no event and the
    sequence stays at 3."""
    state, results = run([upd("accepted", "ingest"), sent(), upd("delivered", "receipt"),
                          upd("delivered", "receipt")])
    assert results[-1].outcome == "duplicate" and results[-1].events == []
    assert state.sequence == 3


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_any_arrival_order_ends_in_the_highest_status_without_regression(
        order: tuple[int, ...]) -> None:
    """In all 24 orders of accepted, dispatch sent, receipt sent and delivered the message ends
    delivered, applied statuses never drop in rank and sequence numbers run 1, 2, … unbroken."""
    updates = [upd("accepted", "ingest"), sent(), upd("sent", "receipt"),
               upd("delivered", "receipt")]
    state, results = run([updates[i] for i in order])
    assert state.status == "delivered"
    applied = [r.latest["status"] for r in results if r.latest is not None]
    assert [RANK[s] for s in applied] == sorted(RANK[s] for s in applied)
    seqs = [e["sequence"] for r in results for e in r.events]
    assert seqs == list(range(1, len(seqs) + 1))


def test_sent_books_a_receipt_window_deadline_that_ends_undelivered_30008() -> None:
    """A dispatch sent at 5 s books one receipt-window deadline, attempt 0, at 65 s; when it comes
    due the message ends undelivered with 30008 and a 'no delivery receipt' reason."""
    state, results = run([upd("accepted", "ingest"), sent(t=5_000)])
    [timer] = results[-1].timers
    assert (timer.due_ms, timer.kind, timer.attempt) == (65_000, RECEIPT_WINDOW, 0)
    r = apply(state, upd(None, "timeout", 0, timer=RECEIPT_WINDOW), 65_000, POLICY)
    assert r.outcome == "timeout" and r.latest is not None
    assert (r.latest["status"], r.latest["error_code"]) == ("undelivered", 30008)
    assert "no delivery receipt" in r.latest["error_reason"]


def test_receipt_window_deadline_after_delivery_is_stale() -> None:
    """A receipt-window deadline coming due after delivered is a stale timer and writes nothing."""
    state, _ = run([upd("accepted", "ingest"), sent(), upd("delivered", "receipt")])
    r = apply(state, upd(None, "timeout", 0, timer=RECEIPT_WINDOW), 99_000, POLICY)
    assert r.outcome == "stale_timer" and r.events == []


def test_delivered_after_the_window_closed_still_wins() -> None:
    """After the receipt-window deadline made the message undelivered, a delivered receipt is
    still applied and the message ends delivered."""
    state, _ = run([upd("accepted", "ingest"), sent(),
                    upd(None, "timeout", 0, timer=RECEIPT_WINDOW)])
    assert state.status == "undelivered"
    state, [r] = run([upd("delivered", "receipt")], state)
    assert r.outcome == "applied" and state.status == "delivered"


def test_in_doubt_deadline_fails_unless_a_receipt_proved_the_send() -> None:
    """An in-doubt deadline fails an accepted message with 30008; once a receipt has reported
    sent, the same deadline is a stale timer."""
    state, _ = run([upd("accepted", "ingest")])
    r = apply(state, upd(None, "timeout", 0, timer=IN_DOUBT), 99_000, POLICY)
    assert (r.latest or {}).get("status") == "failed" and r.latest["error_code"] == 30008
    state, _ = run([upd("accepted", "ingest"), upd("sent", "receipt", attempt=None)])
    assert apply(state, upd(None, "timeout", 0, timer=IN_DOUBT), 99_000,
                 POLICY).outcome == "stale_timer"


def test_resendable_receipt_failure_resends_once_through_another_route() -> None:
    """An SMS receipt undelivered with 30003 yields a resend as attempt 1 avoiding smsc-a (no
    latest, effective sent); attempt 1 failing alike is applied: undelivered, one resend in all."""
    state, results = run([upd("accepted", "ingest"), sent(0, "smsc-a"),
                          upd("undelivered", "receipt", 0, error_code=30003,
                              connector="smsc-a")])
    r = results[-1]
    assert r.outcome == "resend" and r.resend is not None
    assert (r.resend.attempt, r.resend.avoid_connector) == (1, "smsc-a")
    assert r.latest is None and r.events[0]["effective_status"] == "sent"
    # The resend is sent and fails the same way: no second resend, the message ends.
    state, results = run([sent(1, "smsc-b"),
                          upd("undelivered", "receipt", 1, error_code=30003)], state)
    assert results[-1].outcome == "applied" and state.status == "undelivered"
    assert state.resends == 1


@pytest.mark.parametrize("code", [30005, 30007, 30036, None])
def test_other_receipt_failures_are_final(code: int | None) -> None:
    """Receipt failures with 30005, 30007, 30036 or no code are applied without a resend and end
    the message undelivered."""
    state, results = run([upd("accepted", "ingest"), sent(),
                          upd("undelivered", "receipt", 0, error_code=code)])
    assert results[-1].outcome == "applied" and results[-1].resend is None
    assert state.status == "undelivered"


def test_a_receipt_for_an_older_attempt_does_not_resend_again() -> None:
    """After attempt 1 was sent, a resendable 30003 failure receipt for attempt 0 asks no resend."""
    state, _ = run([upd("accepted", "ingest"), sent(0), sent(1, "smsc-b")])
    state, [r] = run([upd("undelivered", "receipt", 0, error_code=30003)], state)
    assert r.resend is None


def test_update_for_unknown_message_without_owner_is_refused() -> None:
    """An update for a message with no status and no account or channel raises UnknownMessage."""
    with pytest.raises(UnknownMessage):
        apply(None, upd("delivered", "receipt", account_id=None, channel=None), 1, POLICY)


def test_state_round_trips_through_its_stored_form() -> None:
    """A status holding a kept resend message comes back equal through to_state and from_state."""
    state, _ = run([upd("accepted", "ingest"), sent()])
    assert MessageStatus.from_state(state.to_state()) == state


def test_random_chaos_never_regresses() -> None:
    """200 random runs of 8 updates (accepted, dispatch and receipt sent, delivered, read, failed):
    after every update the status's rank is at least the one before."""
    rng = random.Random(7)
    pool = [upd("accepted", "ingest"), sent(), upd("sent", "receipt"),
            upd("delivered", "receipt"), upd("read", "receipt"), upd("failed", "dispatch")]
    for _ in range(200):
        picks = [rng.choice(pool) for _ in range(8)]
        state: MessageStatus | None = None
        best = -1
        for u in picks:
            r = apply(state, u, 1, POLICY)
            state = r.state
            assert state.status is not None and RANK[state.status] >= best
            best = RANK[state.status]
