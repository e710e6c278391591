"""WhatsApp status webhooks: signature check and parsing into :class:`Receipt` events.

The signature is an HMAC-SHA256 of the *raw* request body with the app secret, sent as
``X-Hub-Signature-256: sha256=<hex>``; it must be checked before the JSON is parsed and
compared in constant time. Statuses may arrive out of order, twice, and ``read`` without
``delivered``; ordering them is reconciliation's job, so every status becomes a receipt.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from connectors.base import (
    ErrorKind,
    IdBase,
    Receipt,
    ReceiptStatus,
    error_code_for,
    normalise_message_id,
    now_ms,
)
from connectors.http_channel.errors import kind_for
from pipeline.errors import TelexError

SIGNATURE_HEADER = "X-Hub-Signature-256"

_STATUS = {"sent": ReceiptStatus.SENT, "delivered": ReceiptStatus.DELIVERED,
           "read": ReceiptStatus.READ, "failed": ReceiptStatus.FAILED}


class WebhookSignatureError(TelexError):
    """A webhook's X-Hub-Signature-256 is missing or wrong: answer 401 and drop it."""


def sign(raw_body: bytes, app_secret: str | bytes) -> str:
    """The header value Meta would send for ``raw_body``."""
    key = app_secret.encode() if isinstance(app_secret, str) else app_secret
    return "sha256=" + hmac.new(key, raw_body, hashlib.sha256).hexdigest()


def verify_signature(raw_body: bytes, header: str | None, app_secret: str | bytes) -> bool:
    """True when ``header`` is the HMAC-SHA256 of ``raw_body`` (constant-time comparison)."""
    if not header or not app_secret:
        return False
    expected = sign(raw_body, app_secret).encode()
    return hmac.compare_digest(expected, header.strip().lower().encode())


def verify_subscription(params: Mapping[str, str], verify_token: str) -> str | None:
    """The hub.challenge to echo for Meta's GET verification, or None to refuse (403)."""
    if params.get("hub.mode") == "subscribe" and hmac.compare_digest(
            params.get("hub.verify_token", "").encode(), verify_token.encode()):
        return params.get("hub.challenge", "")
    return None


def parse_status_webhook(
    payload: Mapping[str, Any], *, connector: str = "whatsapp", received_at_ms: int | None = None,
    raw: str | None = None,
) -> list[Receipt]:
    """Every status in a webhook payload; inbound messages and other fields are ignored."""
    received = now_ms() if received_at_ms is None else received_at_ms
    receipts: list[Receipt] = []
    for entry in payload.get("entry") or ():
        for change in entry.get("changes") or ():
            for status in (change.get("value") or {}).get("statuses") or ():
                receipt = _receipt(status, connector, received, raw)
                if receipt is not None:
                    receipts.append(receipt)
    return receipts


def receipts_from_request(
    raw_body: bytes, header: str | None, app_secret: str | bytes, *, connector: str = "whatsapp"
) -> list[Receipt]:
    """Verify then parse a webhook request; raises WebhookSignatureError or ValueError."""
    if not verify_signature(raw_body, header, app_secret):
        raise WebhookSignatureError("bad or missing X-Hub-Signature-256")
    payload = json.loads(raw_body)
    if not isinstance(payload, dict):
        raise ValueError("webhook body is not a JSON object")
    return parse_status_webhook(payload, connector=connector, raw=raw_body.decode("utf-8",
                                                                                 "replace"))


def _receipt(status: Mapping[str, Any], connector: str, received: int,
             raw: str | None) -> Receipt | None:
    wamid = status.get("id")
    if not isinstance(wamid, str) or not wamid:
        return None
    word = str(status.get("status", ""))
    mapped = _STATUS.get(word, ReceiptStatus.UNKNOWN)
    code: int | None = None
    carrier_error: str | None = None
    errors = status.get("errors") or []
    if errors and isinstance(errors[0], Mapping):
        wa_code = errors[0].get("code")
        wa_code = wa_code if isinstance(wa_code, int) else None
        carrier_error = f"{wa_code} {errors[0].get('title', '')}".strip()
        code = error_code_for(kind_for(wa_code), "whatsapp")
    elif mapped is ReceiptStatus.FAILED:
        code = error_code_for(ErrorKind.REJECTED, "whatsapp")
    timestamp = status.get("timestamp")
    done = int(timestamp) * 1000 if str(timestamp or "").isdigit() else None
    opaque = status.get("biz_opaque_callback_data")
    return Receipt(
        connector=connector, carrier_message_id=normalise_message_id(wamid, IdBase.OPAQUE),
        status=mapped, carrier_status=word, received_at_ms=received, error_code=code,
        carrier_error=carrier_error, done_at_ms=done,
        message_id=opaque if isinstance(opaque, str) and opaque else None, raw=raw)
