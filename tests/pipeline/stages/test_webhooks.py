"""The webhook receiver's pure part: which connectors it serves and what a request yields."""

from __future__ import annotations

import json

import pytest

from connectors.http_channel import WebhookSignatureError, sign
from pipeline.stages.dispatch.carriers import Carriers
from pipeline.stages.dispatch.routing import RouteTable
from pipeline.stages.webhooks import UnparseableWebhook, read_receipts, whatsapp_secrets

SECRET = "s3cret"
BODY = json.dumps({"entry": [{"changes": [{"value": {"statuses": [
    {"id": "wamid.1", "status": "read", "timestamp": "1700000000",
     "biz_opaque_callback_data": "TX1"}]}}]}]}).encode()


def test_only_whatsapp_connectors_are_served() -> None:
    """SMPP connectors have no webhooks; a whatsapp one without app_secret gets ""."""
    carriers = Carriers({
        "wa": {"type": "whatsapp", "base_url": "http://x", "phone_number_id": "1",
               "access_token": "t", "app_secret": SECRET},
        "wa2": {"type": "whatsapp", "base_url": "http://x", "phone_number_id": "2",
                "access_token": "t"},
        "smsc": {"host": "h", "port": 1, "system_id": "s", "password": "p"}},
        RouteTable.from_mapping([]))
    assert whatsapp_secrets(carriers) == {"wa": SECRET, "wa2": ""}


def test_a_signed_webhook_yields_its_receipts() -> None:
    """A correctly signed body yields its receipt: connector wa, wamid.1, TX1, status read."""
    [receipt] = read_receipts("wa", SECRET, BODY, sign(BODY, SECRET))
    assert (receipt.connector, receipt.carrier_message_id, receipt.message_id,
            receipt.carrier_status) == ("wa", "wamid.1", "TX1", "read")


@pytest.mark.parametrize("signature", [None, "sha256=00", sign(BODY, "other")])
def test_a_missing_or_wrong_signature_is_refused_before_parsing(signature: str | None) -> None:
    """A missing signature, a wrong digest or one made with another secret raises
    WebhookSignatureError, on a body that is not even JSON."""
    with pytest.raises(WebhookSignatureError):
        read_receipts("wa", SECRET, b"not even json", signature)


@pytest.mark.parametrize(("body", "cause"), [
    (b"{", "JSONDecodeError"), (b"[]", "ValueError"), (b'{"entry": "x"}', "AttributeError"),
    (b'{"entry": [{"changes": [{"value": {"statuses": [{"id": "w", "errors": {"a": 1}}]}}]}]}',
     "KeyError"),
])
def test_a_signed_unparseable_body_is_unparseable(body: bytes, cause: str) -> None:
    """Shape errors are as permanent as JSON errors; the parser's error is kept as the cause."""
    with pytest.raises(UnparseableWebhook) as info:
        read_receipts("wa", SECRET, body, sign(body, SECRET))
    assert type(info.value.cause).__name__ == cause
