"""The callback's JSON body: one status event of one message, in Twilio's field names.

Twilio's status callbacks are what customers' code already parses, so the names are theirs
(``MessageSid``, ``AccountSid``, ``MessageStatus``, ``ErrorCode``); Telex adds what Twilio leaves
to guesswork: ``SequenceNumber`` (1, 2, … per message, no gaps: the order to apply events in)
and the event's own time. Sent as JSON (``application/json``), not Twilio's form encoding: the
Standard Webhooks signature covers the exact bytes, and JSON keeps types. Phone numbers and the
message body are not repeated: the customer has them under ``MessageSid``.

======================  =================================================================
field                   meaning
======================  =================================================================
``MessageSid``          the message id (the one the send request answered with)
``AccountSid``          the account that sent it
``MessageStatus``       the status this event reports (Twilio's vocabulary)
``EffectiveStatus``     the message's status after it (differs for a late, lower event)
``SequenceNumber``      the event's place in the message's history
``ErrorCode``           Twilio-numbered code for failed/undelivered, else null
``ErrorMessage``        the code's title and the detail Telex recorded, else null
``Channel``             sms, whatsapp or messenger
``Segments``            message segments billed, when known
``EventTime``           when it happened (RFC 3339, UTC, milliseconds)
``ApiVersion``          version of this body's shape (``2026-11-01``)
======================  =================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from pipeline.errors import error_title

__all__ = ["API_VERSION", "callback_body"]

API_VERSION = "2026-11-01"


def _rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def callback_body(event: Mapping[str, Any]) -> bytes:
    """The body for one DeliveryStatus event (decoded), as the bytes that get signed."""
    code = event.get("error_code")
    message = None
    if code is not None:
        reason = event.get("error_reason")
        message = f"{error_title(code)}: {reason}" if reason else error_title(code)
    return orjson.dumps({
        "MessageSid": event["message_id"],
        "AccountSid": event["account_id"],
        "MessageStatus": event["status"],
        "EffectiveStatus": event.get("effective_status") or event["status"],
        "SequenceNumber": event["sequence"],
        "ErrorCode": code,
        "ErrorMessage": message,
        "Channel": event["channel"],
        "Segments": event.get("segments"),
        "EventTime": _rfc3339(int(event["event_time_ms"])),
        "ApiVersion": API_VERSION,
    })
