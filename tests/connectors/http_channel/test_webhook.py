"""Status webhook signature checks and parsing, against hand-written Cloud API payloads."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from connectors.base import ReceiptStatus
from connectors.http_channel import (
    WebhookSignatureError,
    WhatsAppClient,
    WhatsAppConfig,
    parse_status_webhook,
    receipts_from_request,
    sign,
    verify_signature,
    verify_subscription,
)

SECRET = "app-secret"
PAYLOAD = {
    "object": "whatsapp_business_account",
    "entry": [{
        "id": "102290129340398",
        "changes": [{
            "field": "messages",
            "value": {
                "messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "15550783881",
                             "phone_number_id": "106540352242922"},
                "statuses": [
                    {"id": "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJDQjZCMzlEQUE4OTJBMTE4RTUA",
                     "status": "read", "timestamp": "1700000000", "recipient_id": "16505551234",
                     "biz_opaque_callback_data": "TX42"},
                    {"id": "wamid.B", "status": "failed", "timestamp": "1700000005",
                     "recipient_id": "16505551234",
                     "errors": [{"code": 131047, "title": "Re-engagement message",
                                 "message": "Re-engagement message",
                                 "error_data": {"details": "24 hours have passed"}}]},
                ],
            },
        }],
    }],
}
RAW = json.dumps(PAYLOAD).encode()


def test_signature_is_hmac_sha256_of_the_raw_body() -> None:
    """sign() gives 'sha256=' and the hex HMAC-SHA256 of the raw body under the app secret, and
    verify_signature accepts it."""
    expected = "sha256=" + hmac.new(SECRET.encode(), RAW, hashlib.sha256).hexdigest()
    assert sign(RAW, SECRET) == expected
    assert verify_signature(RAW, expected, SECRET)


@pytest.mark.parametrize(
    ("body", "header", "secret"),
    [(RAW + b" ", sign(RAW, SECRET), SECRET), (RAW, sign(RAW, "other"), SECRET),
     (RAW, None, SECRET), (RAW, "", SECRET), (RAW, sign(RAW, SECRET)[7:], SECRET),
     (RAW, sign(RAW, SECRET), "")],
)
def test_bad_signatures_are_refused(body: bytes, header: str | None, secret: str) -> None:
    """Tampered body, wrong secret, missing or prefix-less header, or no secret configured."""
    assert not verify_signature(body, header, secret)


def test_statuses_become_receipts() -> None:
    """read keeps our message id (biz_opaque_callback_data); failed maps 131047 → 63016."""
    read, failed = parse_status_webhook(PAYLOAD, connector="wa", received_at_ms=9)
    assert (read.status, read.message_id, read.done_at_ms, read.received_at_ms) == (
        ReceiptStatus.READ, "TX42", 1_700_000_000_000, 9)
    assert read.carrier_message_id == PAYLOAD["entry"][0]["changes"][0]["value"][  # type: ignore[index]
        "statuses"][0]["id"]
    assert (failed.status, failed.error_code, failed.carrier_error) == (
        ReceiptStatus.FAILED, 63016, "131047 Re-engagement message")


def test_inbound_messages_and_unknown_statuses() -> None:
    """Inbound messages are not receipts; an unknown status word maps to unknown."""
    payload = {"entry": [{"changes": [{"value": {
        "messages": [{"from": "1", "id": "wamid.in", "type": "text"}],
        "statuses": [{"id": "wamid.X", "status": "deleted", "timestamp": "x"}]}}]}]}
    [receipt] = parse_status_webhook(payload)
    assert (receipt.status, receipt.carrier_status, receipt.done_at_ms) == (
        ReceiptStatus.UNKNOWN, "deleted", None)
    assert parse_status_webhook({"object": "page"}) == []


def test_receipts_from_request_checks_before_parsing() -> None:
    """A wrongly signed non-JSON body raises WebhookSignatureError, a correctly signed one
    ValueError; the signed payload yields its 2 receipts."""
    with pytest.raises(WebhookSignatureError):
        receipts_from_request(b"not json", sign(b"other", SECRET), SECRET)
    with pytest.raises(ValueError):
        receipts_from_request(b"not json", sign(b"not json", SECRET), SECRET)
    assert len(receipts_from_request(RAW, sign(RAW, SECRET), SECRET)) == 2


def test_subscription_challenge() -> None:
    """A subscribe with the right verify token gets its hub.challenge back; else None."""
    params = {"hub.mode": "subscribe", "hub.verify_token": "vt", "hub.challenge": "1158201444"}
    assert verify_subscription(params, "vt") == "1158201444"
    assert verify_subscription({**params, "hub.verify_token": "no"}, "vt") is None


async def test_client_queues_webhook_receipts() -> None:
    """accept_webhook verifies, queues for receipts(), and refuses bad signatures."""
    wa = WhatsAppClient(WhatsAppConfig("http://127.0.0.1:1", "1", "t", app_secret=SECRET))
    assert len(wa.accept_webhook(RAW, sign(RAW, SECRET))) == 2
    with pytest.raises(WebhookSignatureError):
        wa.accept_webhook(RAW, sign(RAW, "wrong"))
    await wa.close()
    assert [r.status async for r in wa.receipts()] == ["read", "failed"]
