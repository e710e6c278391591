"""What stages share about the records they exchange: the status vocabulary and its ranks, the
deadline kinds, the channels a message may be resent on, how a StatusUpdate is built, and how
carrier receipts are keyed. Stages import these from here, never from each other."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "CHANNELS",
    "FINAL_RANK",
    "IN_DOUBT",
    "RANK",
    "RECEIPT_WINDOW",
    "RESENDABLE_CHANNELS",
    "UPDATE_FIELDS",
    "VALIDITY_MAX_S",
    "VALIDITY_MIN_S",
    "accepted_key",
    "receipt_key",
    "update_record",
]

CHANNELS = ("sms", "whatsapp", "messenger")  # what a message may be sent on
# A message's validity period (seconds from release), as Twilio's ValidityPeriod: past it no
# copy of the message may reach a carrier.
VALIDITY_MIN_S, VALIDITY_MAX_S = 1, 36_000

# Twilio's status vocabulary, ranked: a message's status only moves up (equal ranks are
# alternative final outcomes; delivered and read can still follow a failure report).
RANK: Mapping[str, int] = {
    "accepted": 0, "scheduled": 0, "queued": 1, "sending": 2, "sent": 3,
    "failed": 4, "undelivered": 4, "canceled": 4, "delivered": 5, "read": 6,
}
FINAL_RANK = 4  # from here on a status is final

# Channels where sending a message again is safe enough to do on a doubt or a resendable
# failure: SMS (a duplicate costs a second SMS); chat channels are never resent blindly.
RESENDABLE_CHANNELS: frozenset[str] = frozenset({"sms"})

# Deadline kinds (the ``timer`` field of a StatusUpdate).
RECEIPT_WINDOW = "receipt_window"  # a sent attempt waits this long for its receipt
IN_DOUBT = "in_doubt"  # an attempt a crash left unknown waits for a receipt naming it

UPDATE_FIELDS = ("message_id", "source", "status", "timer", "attempt", "account_id", "channel",
                 "event_time_ms", "error_code", "error_reason", "carrier_message_id",
                 "connector", "carrier_status", "segments", "trace_id", "resend_message",
                 "status_callback_url")


def update_record(message_id: str, source: str, event_time_ms: int, **fields: Any
                  ) -> dict[str, Any]:
    """A StatusUpdate record (``schemas/status_update.avsc``): the fields given, the rest
    null. Every stage reporting to the status stage builds its records here."""
    unknown = set(fields) - set(UPDATE_FIELDS)
    if unknown:
        raise ValueError(f"not StatusUpdate fields: {sorted(unknown)}")
    return {**dict.fromkeys(UPDATE_FIELDS), "message_id": message_id, "source": source,
            "event_time_ms": event_time_ms, **fields}


def accepted_key(message: Mapping[str, Any]) -> str:
    """Kafka key of ``message-accepted``: the account id, so the partition that owns the
    account's rate-limit bucket reads the accepted messages themselves (no re-keying hop)."""
    return str(message["account_id"])


def receipt_key(connector: str, carrier_message_id: str) -> str:
    """Kafka key of ``carrier-receipts``: carrier ids are only unique per connector."""
    return f"{connector}:{carrier_message_id}"
