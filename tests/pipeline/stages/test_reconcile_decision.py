"""Receipt matching: submissions and receipts in either order, TTL, unknown ids."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.records import receipt_key
from pipeline.stages.reconcile.decision import on_deadline, on_receipt, on_submission, status_update

TTL = 30_000


def receipt(status: str = "delivered", message_id: str | None = None, **extra: Any
            ) -> dict[str, Any]:
    return {"connector": "smsc-a", "carrier_message_id": "00AB", "carrier_status": "DELIVRD",
            "status": status, "error_code": None, "carrier_error": None, "done_at_ms": None,
            "received_at_ms": 5_000, "message_id": message_id, "raw": None, **extra}


SUBMISSION = {"message_id": "TX1", "source": "dispatch", "status": "sent", "attempt": 2,
              "account_id": "acct", "channel": "sms", "connector": "smsc-a",
              "carrier_message_id": "00AB", "trace_id": None}


def test_key_names_connector_and_carrier_id() -> None:
    """A receipt key is the connector and the carrier id joined by a colon."""
    assert receipt_key("smsc-a", "00AB") == "smsc-a:00AB"


def test_submission_is_passed_on_as_the_messages_sent() -> None:
    """A submission is emitted unchanged as the only update and remembered in the state."""
    m = on_submission(None, SUBMISSION)
    assert m.updates == [SUBMISSION] and m.state is not None
    assert m.state["submission"]["message_id"] == "TX1"


def test_receipt_after_submission_is_matched_with_its_attempt() -> None:
    """A receipt for a known submission is matched into one receipt update carrying the
    submission's message id, attempt, account and channel."""
    state = on_submission(None, SUBMISSION).state
    m = on_receipt(state, receipt(error_code=None), 6_000, TTL)
    assert m.outcome == "matched"
    [u] = m.updates
    assert (u["message_id"], u["status"], u["attempt"], u["source"]) == (
        "TX1", "delivered", 2, "receipt")
    assert (u["account_id"], u["channel"]) == ("acct", "sms")


def test_early_receipt_waits_then_matches_when_the_submission_comes() -> None:
    """A receipt before its submission waits with a deadline at now + TTL (a second books none);
    the submission emits its sent then both receipts, leaves nothing pending; the deadline idles."""
    m = on_receipt(None, receipt(), 6_000, TTL)
    assert m.outcome == "waiting" and m.updates == [] and m.deadline_ms == 36_000
    second = on_receipt(m.state, receipt("sent"), 6_500, TTL)
    assert second.deadline_ms is None  # one deadline per waiting key
    matched = on_submission(second.state, SUBMISSION)
    assert [(u["status"], u["source"]) for u in matched.updates] == [
        ("sent", "dispatch"), ("delivered", "receipt"), ("sent", "receipt")]
    assert matched.state is not None and matched.state["pending"] == []
    assert on_deadline(matched.state, 36_000, TTL).outcome == "idle"


def test_unknown_id_goes_unmatched_after_the_ttl() -> None:
    """A waiting receipt naming no message is still held 1 ms before its TTL; at the TTL it goes to
    unmatched and nothing stays pending."""
    m = on_receipt(None, receipt(), 6_000, TTL)
    assert on_deadline(m.state, 35_999, TTL).unmatched == []
    done = on_deadline(m.state, 36_000, TTL)
    assert done.outcome == "unmatched" and [r["carrier_message_id"] for r in done.unmatched] == [
        "00AB"]
    assert done.state is not None and done.state["pending"] == []


def test_a_submission_announced_after_the_ttl_still_matches_the_expired_receipt() -> None:
    """Dispatch stalled (paused, slow batch) past the TTL: the receipt went to
    receipts-unmatched, and the late submission still gets its status."""
    m = on_receipt(None, receipt(), 6_000, TTL)
    expired = on_deadline(m.state, 36_000, TTL)
    late = on_submission(expired.state, SUBMISSION)
    assert [(u["status"], u["source"]) for u in late.updates] == [
        ("sent", "dispatch"), ("delivered", "receipt")]
    assert late.state is not None and "expired" not in late.state


def test_waiting_receipt_naming_its_message_is_released_without_submission() -> None:
    """At the TTL a waiting receipt that names its message (TX9) is released as an update without
    an attempt, and the key's state is dropped."""
    m = on_receipt(None, receipt(message_id="TX9"), 6_000, TTL)
    done = on_deadline(m.state, 36_000, TTL)
    assert done.outcome == "released" and done.state is None
    assert [(u["message_id"], u["attempt"]) for u in done.updates] == [("TX9", None)]


def test_deadline_keeps_younger_receipts_waiting_and_rebooks() -> None:
    """A deadline sends only the receipt that waited the full TTL to unmatched, keeps the younger
    one pending and books the next deadline at its TTL (50 s)."""
    m = on_receipt(None, receipt(), 6_000, TTL)
    m = on_receipt(m.state, receipt("sent"), 20_000, TTL)
    done = on_deadline(m.state, 36_000, TTL)
    assert len(done.unmatched) == 1 and done.deadline_ms == 50_000
    assert done.state is not None and len(done.state["pending"]) == 1


def test_unmapped_receipt_status_is_counted_not_forwarded() -> None:
    """A receipt with an unmapped status ('unknown') after its submission has outcome 'unmapped'
    (the stage counts outcomes) and forwards no status update and nothing unmatched."""
    state = on_submission(None, SUBMISSION).state
    match = on_receipt(state, receipt("unknown"), 6_000, TTL)
    assert (match.outcome, match.updates, match.unmatched) == ("unmapped", [], [])


def test_done_date_is_the_event_time_when_known() -> None:
    """A receipt's done date, not its received time, is the update's event time."""
    u = status_update(receipt(done_at_ms=4_000), SUBMISSION)
    assert u is not None and u["event_time_ms"] == 4_000


def test_receipt_without_submission_or_message_id_cannot_be_a_status() -> None:
    """A receipt with neither a submission nor its own message id raises ValueError naming the
    message id."""
    with pytest.raises(ValueError, match="message id"):
        status_update(receipt(), None)
