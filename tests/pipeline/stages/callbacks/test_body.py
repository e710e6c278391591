"""The callback body: Twilio's names for one status event."""

from __future__ import annotations

import orjson

from pipeline.stages.callbacks.body import API_VERSION, callback_body

EVENT = {
    "message_id": "m-1", "account_id": "acct-1", "channel": "sms", "status": "undelivered",
    "effective_status": None, "sequence": 4, "event_time_ms": 1_800_000_000_123,
    "recorded_at_ms": 1_800_000_000_200, "error_code": 30003,
    "error_reason": "DLR stat UNDELIV err 001", "carrier_message_id": "c-9",
    "connector": "smsc", "segments": 2, "trace_id": None, "attempt": 1, "source": "receipt",
}


def test_body_carries_the_event_in_twilio_names() -> None:
    """Status, code with its title and detail, sequence and RFC 3339 time."""
    body = orjson.loads(callback_body(EVENT))
    assert body == {
        "MessageSid": "m-1", "AccountSid": "acct-1", "MessageStatus": "undelivered",
        "EffectiveStatus": "undelivered", "SequenceNumber": 4, "ErrorCode": 30003,
        "ErrorMessage": "Unreachable destination handset: DLR stat UNDELIV err 001",
        "Channel": "sms", "Segments": 2, "EventTime": "2027-01-15T08:00:00.123Z",
        "ApiVersion": API_VERSION,
    }


def test_body_has_no_numbers_or_text() -> None:
    """Carrier internals and anything personal stay out of a customer-facing body."""
    body = orjson.loads(callback_body(EVENT))
    assert not {"To", "From", "Body", "carrier_message_id", "connector"} & body.keys()


def test_body_without_error_has_null_code_and_message() -> None:
    """A delivered event: no code, no message."""
    body = orjson.loads(callback_body({**EVENT, "status": "delivered", "error_code": None,
                                       "error_reason": None}))
    assert body["ErrorCode"] is None and body["ErrorMessage"] is None
