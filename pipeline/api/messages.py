"""Pure translations between the wire and the pipeline: a POST body to an OutboundMessage
(the SDK's request), and a stored row to the message resource. No I/O."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from pipeline.api.models import Message, MessageCreate
from pipeline.records import RANK
from pipeline.sdk import OutboundMessage

__all__ = ["channel_of", "form_fields", "outbound", "resource", "text_is_storable"]

_LISTS = frozenset({"MediaUrl"})


def form_fields(body: bytes) -> dict[str, Any]:
    """A form-encoded body as the JSON object it stands for (MediaUrl may repeat)."""
    fields: dict[str, Any] = {}
    for name, value in parse_qsl(body.decode("utf-8", errors="strict"), keep_blank_values=True,
                                 strict_parsing=False, max_num_fields=64):
        if name in _LISTS:
            fields.setdefault(name, []).append(value)
        else:
            fields[name] = value
    return fields


def channel_of(to: str) -> str:
    """The channel a recipient address names, as Twilio reads it (prefix, else SMS)."""
    if to.startswith("whatsapp:"):
        return "whatsapp"
    if to.startswith("messenger:"):
        return "messenger"
    return "sms"


def text_is_storable(*values: str | None) -> bool:
    """PostgreSQL text and Avro strings take neither NUL nor lone surrogates."""
    for value in values:
        if value is None:
            continue
        if "\x00" in value:
            return False
        try:
            value.encode()
        except UnicodeEncodeError:
            return False
    return True


def outbound(account_id: str, create: MessageCreate, idempotency_key: str) -> OutboundMessage:
    """The SDK request for a validated POST body."""
    send_at = create.send_at
    if send_at is not None and send_at.tzinfo is None:
        send_at = send_at.replace(tzinfo=UTC)  # RFC 3339 without offset: read as UTC
    return OutboundMessage(
        account_id=account_id, channel=channel_of(create.to),
        sender=create.from_ or create.messaging_service_sid or "",
        recipient=create.to, body=create.body, media_urls=tuple(create.media_url),
        idempotency_key=idempotency_key, status_callback_url=create.status_callback,
        validity_period_s=create.validity_period,
        send_at_ms=None if send_at is None else int(send_at.timestamp() * 1000),
        metadata={"api": "v1"} if create.messaging_service_sid is None
        else {"api": "v1", "messaging_service_sid": create.messaging_service_sid},
    )


def _status(row: Mapping[str, Any]) -> str:
    """The read model's status once the pipeline reported one; until then what the POST
    answered (accepted, or scheduled for a SendAt in the future)."""
    status = row.get("status")
    if status in RANK:
        return str(status)
    return "scheduled" if row.get("send_at") is not None else "accepted"


def resource(row: Mapping[str, Any], prefix: str = "/v1") -> Message:
    """The message resource of an ``api_messages`` row joined with ``message_status``."""
    created: datetime = row["date_created"]
    updated: datetime = row.get("updated_at") or created
    code = row.get("error_code")
    return Message(
        sid=row["message_id"], account_sid=row["account_id"], to=row["recipient"],
        from_=row["sender"], messaging_service_sid=row.get("messaging_service_sid"),
        body=row.get("body"), num_segments=row.get("live_segments") or row["segments"],
        num_media=len(row.get("media_urls") or ()), media_urls=list(row.get("media_urls") or ()),
        status=_status(row), error_code=code,
        error_message=row.get("error_reason") if code is not None else None,
        validity_period=row.get("validity_period_s"), date_created=created,
        date_updated=max(updated, created), date_send_at=row.get("send_at"),
        uri=f"{prefix}/accounts/{row['account_id']}/messages/{row['message_id']}",
    )
