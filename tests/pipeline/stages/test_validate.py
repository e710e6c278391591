"""Request validation: codes, normalisation, determinism."""

from typing import Any

import pytest

from pipeline.segments import Encoding
from pipeline.senders import DEMO_SENDERS
from pipeline.stages.ingest.validate import Rejection, Valid, request_hash, validate

NOW = 1_800_000_000_000


def request(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "message_id": "TX1", "account_id": "acct-1", "idempotency_key": "k1", "channel": "sms",
        "sender": "+14155550100", "recipient": "+1 (415) 555-0123", "body": "hello",
        "media_urls": [], "status_callback_url": None, "validity_period_s": None,
        "send_at_ms": None, "requested_at_ms": NOW, "trace_id": None, "client": None,
        "metadata": {},
    }
    return base | overrides


def code_of(result: Valid | Rejection) -> int | None:
    return result.code if isinstance(result, Rejection) else None


def test_valid_sms_is_normalised_to_e164():
    """A valid SMS gets an E.164 recipient, GSM-7 encoding, one segment and default validity."""
    result = validate(request(), DEMO_SENDERS)
    assert isinstance(result, Valid)
    assert result.recipient == "+14155550123"
    assert (result.encoding, result.segments) == (Encoding.GSM7, 1)
    assert result.expires_at_ms == NOW + 36_000_000


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"recipient": "not a number"}, 21211),
        ({"recipient": "+1415555"}, 21211),
        ({"recipient": "+19005550100"}, 21408),  # premium rate
        ({"recipient": "+442071838750"}, 21614),  # UK landline
        ({"sender": "+19999999999"}, 21606),
        ({"body": None}, 21619),
        ({"body": "x" * 1601}, 21617),
        ({"validity_period_s": 0}, 21624),
        ({"validity_period_s": 36_001}, 21624),
        ({"send_at_ms": NOW - 1}, 21625),
        ({"send_at_ms": NOW + 36 * 86_400_000}, 21625),
        ({"media_urls": ["ftp://example.com/a.png"]}, 21620),
        ({"status_callback_url": "not-a-url"}, 21627),
        ({"channel": "pigeon"}, 21626),
    ],
)
def test_invalid_requests_get_their_code(overrides: dict[str, Any], code: int):
    """Each kind of bad request is rejected with its documented code."""
    assert code_of(validate(request(**overrides), DEMO_SENDERS)) == code


def test_sender_restricted_to_other_account_is_refused():
    """A registered sender owned by another account is refused with 21606."""
    from pipeline.senders import Sender, SenderKind, SenderRegistry

    registry = SenderRegistry([Sender("+14155550100", "sms", SenderKind.LONG_CODE,
                                      frozenset({"acct-2"}))])
    assert code_of(validate(request(), registry)) == 21606


def test_sdk_side_validation_skips_registry():
    """Without a registry (the SDK's local check) an unknown sender passes."""
    assert isinstance(validate(request(sender="+19999999999"), None), Valid)


def test_whatsapp_and_messenger_addresses():
    """Chat channels normalise their address forms."""
    wa = validate(request(channel="whatsapp", sender="whatsapp:+14155550199",
                          recipient="+447911123456"), DEMO_SENDERS)
    assert isinstance(wa, Valid) and wa.recipient == "whatsapp:+447911123456"
    ms = validate(request(channel="messenger", sender="messenger:1000000001",
                          recipient="messenger:123456789"), DEMO_SENDERS)
    assert isinstance(ms, Valid) and ms.recipient == "messenger:123456789"
    bad = validate(request(channel="messenger", sender="messenger:1000000001",
                           recipient="bob"), DEMO_SENDERS)
    assert code_of(bad) == 21211


def test_multi_segment_and_unicode_bodies_are_counted():
    """Segment counts follow GSM-7 153-per-part and UCS-2 67-per-part."""
    long_gsm = validate(request(body="a" * 400), DEMO_SENDERS)
    unicode = validate(request(body="Привет " * 20), DEMO_SENDERS)
    assert isinstance(long_gsm, Valid) and long_gsm.segments == 3
    assert isinstance(unicode, Valid) and unicode.encoding is Encoding.UCS2
    assert unicode.segments == 3


def test_content_hash_ignores_request_time_and_number_formatting():
    """A client retry (new timestamp, other formatting of the same number) hashes the same."""
    a = validate(request(), DEMO_SENDERS)
    b = validate(request(requested_at_ms=NOW + 5000, recipient="+14155550123"), DEMO_SENDERS)
    c = validate(request(body="other"), DEMO_SENDERS)
    assert isinstance(a, Valid) and isinstance(b, Valid) and isinstance(c, Valid)
    assert a.content_hash == b.content_hash != c.content_hash
    assert request_hash(request()) == a.content_hash
