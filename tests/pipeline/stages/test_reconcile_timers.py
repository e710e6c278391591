"""The reconciler's match TTL as a timer of its store (punctuation), without Kafka."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.codec import AvroCodec
from pipeline.headers import H_DEADLINE
from pipeline.records import update_record
from pipeline.runtime.stage import Out, Record
from pipeline.runtime.store import KeyState, MemoryStore
from pipeline.settings import Settings
from pipeline.stages.reconcile.stage import ReconcileStage

CODEC = AvroCodec()
TTL_MS = 30_000
KEY = "smsc-a:00AB"


@pytest.fixture
def stage() -> ReconcileStage:
    return ReconcileStage(Settings(TELEX_RECEIPT_MATCH_TTL_S=TTL_MS / 1000), CODEC)


def _receipt(message_id: str | None = None) -> dict[str, Any]:
    return {"connector": "smsc-a", "carrier_message_id": "00AB", "carrier_status": "DELIVRD",
            "status": "delivered", "error_code": None, "carrier_error": None,
            "done_at_ms": None, "received_at_ms": 5_000, "message_id": message_id, "raw": None}


def _feed(stage: ReconcileStage, store: MemoryStore, name: str, value: dict[str, Any],
          now_ms: int) -> list[Out]:
    record = Record("carrier-receipts", 0, 0, KEY, CODEC.encode(name, value), None, now_ms)
    return stage.process([record], {("carrier-receipts", 0): store}, now_ms)


def test_a_waiting_receipt_books_the_ttl_timer_and_writes_no_deadline_record(
        stage: ReconcileStage):
    """A receipt before its submission outputs nothing; its TTL is the entry's timer."""
    store = MemoryStore("match", 0, None)
    assert _feed(stage, store, "carrier_receipt", _receipt(), 1_000) == []
    assert KeyState(store, KEY, 1_000).timer == 1_000 + TTL_MS


def test_the_ttl_timer_releases_an_unmatched_receipt(stage: ReconcileStage):
    """At the TTL the receipt goes to receipts-unmatched; nothing waits, so no timer is left."""
    store = MemoryStore("match", 0, None)
    _feed(stage, store, "carrier_receipt", _receipt(), 1_000)
    assert stage.punctuate(1_000 + TTL_MS - 1, store) == []
    outs = stage.punctuate(1_000 + TTL_MS, store)
    assert [o.topic for o in outs] == ["receipts-unmatched"]
    assert KeyState(store, KEY, 0).timer is None


def test_the_submission_cancels_the_ttl_timer(stage: ReconcileStage):
    """Once the submission matched the waiting receipt, the deadline is cancelled, not fired."""
    store = MemoryStore("match", 0, None)
    _feed(stage, store, "carrier_receipt", _receipt(), 1_000)
    sub = update_record("TX1", "dispatch", 2_000, status="sent", attempt=1, account_id="a",
                        channel="sms", connector="smsc-a", carrier_message_id="00AB")
    outs = _feed(stage, store, "status_update", sub, 2_000)
    assert [CODEC.decode(o.value)["status"] for o in outs] == ["sent", "delivered"]
    assert KeyState(store, KEY, 2_000).timer is None
    assert stage.punctuate(10 * TTL_MS, store) == []


def test_a_deadline_record_released_by_the_delay_tiers_is_still_applied(stage: ReconcileStage):
    """A TTL deadline already in flight (header telex.reconcile.deadline, written by the old
    reconciler) releases what waited, as before."""
    store = MemoryStore("match", 0, None)
    _feed(stage, store, "carrier_receipt", _receipt(), 1_000)
    value = CODEC.encode("carrier_receipt", _receipt())
    record = Record("carrier-receipts", 0, 1, KEY, value, [(H_DEADLINE, b"1")], 40_000)
    outs = stage.process([record], {("carrier-receipts", 0): store}, 1_000 + TTL_MS)
    assert [o.topic for o in outs] == ["receipts-unmatched"]
    assert stage.punctuate(10 * TTL_MS, store) == []


def test_a_submission_is_passed_on_as_the_bytes_it_was_read_in(stage: ReconcileStage):
    """The ``sent`` passed on is byte for byte the record read, which is its re-encoding."""
    store = MemoryStore("match", 0, None)
    sent = update_record("m1", "dispatch", 1_000, status="sent", attempt=0, account_id="a",
                         channel="sms", connector="smsc-a", carrier_message_id="00AB",
                         segments=1, resend_message=b"\xc3\x01accepted")
    outs = _feed(stage, store, "status_update", sent, 1_000)
    assert [o.topic for o in outs] == ["status-updates"]
    assert outs[0].value == CODEC.encode("status_update", sent)
    assert CODEC.decode(outs[0].value) == sent
