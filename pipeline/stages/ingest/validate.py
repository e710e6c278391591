"""Validation of a message request: pure, deterministic, shared by the SDK and the ingest stage.

Deterministic matters: a client retry of the same request must get the same verdict, so time
checks compare against the request's own ``requested_at_ms``, never the processing clock.
A rejected request is not a pipeline error: it ends as a ``failed`` status with a code from
:mod:`pipeline.errors`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import phonenumbers
from phonenumbers import PhoneNumberType

from pipeline.errors import Code
from pipeline.records import CHANNELS, VALIDITY_MAX_S, VALIDITY_MIN_S
from pipeline.segments import Encoding, segment
from pipeline.senders import SenderRegistry

MAX_BODY = {"sms": 1600, "whatsapp": 4096, "messenger": 2000}
MAX_MEDIA = 10
VALIDITY_DEFAULT_S = VALIDITY_MAX_S
MAX_SCHEDULE_AHEAD_MS = 35 * 86_400_000  # Twilio schedules up to 35 days ahead
_REFUSED_TYPES = {
    PhoneNumberType.PREMIUM_RATE: (Code.REGION_NOT_ENABLED, "premium-rate numbers are not enabled"),
    PhoneNumberType.SHARED_COST: (Code.REGION_NOT_ENABLED, "shared-cost numbers are not enabled"),
    PhoneNumberType.FIXED_LINE: (Code.NOT_MOBILE, "'To' is a landline, not a mobile number"),
}


@dataclass(frozen=True, slots=True)
class Rejection:
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Valid:
    """A request that passed validation, with normalised addresses and its segmentation."""

    sender: str
    recipient: str
    encoding: Encoding
    segments: int
    validity_period_s: int
    expires_at_ms: int
    content_hash: str


class _Reject(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.rejection = Rejection(code, reason)


def _e164(raw: str) -> str:
    """Normalise a phone number to E.164; raises _Reject if it is not a number we send to."""
    result = _parse_e164(raw)
    if isinstance(result, Rejection):
        raise _Reject(result.code, result.reason)
    return result


@lru_cache(maxsize=65_536)
def _parse_e164(raw: str) -> str | Rejection:
    """Pure and the costliest check (~30 µs), so repeat recipients are served from a cache."""
    try:
        number = phonenumbers.parse(raw, None)
    except phonenumbers.NumberParseException as exc:
        return Rejection(Code.INVALID_TO,
                         f"'To' is not a phone number in E.164 form ({exc.error_type})")
    # number_type is UNKNOWN exactly when is_valid_number is False (both match the number
    # against its region's patterns); asking once halves the cost.
    kind = phonenumbers.number_type(number)
    if kind == PhoneNumberType.UNKNOWN:
        return Rejection(Code.INVALID_TO, "'To' is not a valid phone number")
    refused = _REFUSED_TYPES.get(kind)
    if refused:
        return Rejection(*refused)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _recipient(channel: str, raw: str) -> str:
    if channel == "sms":
        return _e164(raw)
    if channel == "whatsapp":
        return "whatsapp:" + _e164(raw.removeprefix("whatsapp:"))
    psid = raw.removeprefix("messenger:")
    if not (psid.isascii() and psid.isdigit() and 5 <= len(psid) <= 24):
        raise _Reject(Code.INVALID_TO,
                      "'To' is not a Messenger page-scoped id (messenger:<digits>)")
    return "messenger:" + psid


def _url(raw: str, code: int, what: str) -> None:
    try:
        parts = urlsplit(raw)
    except ValueError:
        raise _Reject(code, f"{what} is not a URL") from None
    if parts.scheme not in ("https", "http") or not parts.hostname or len(raw) > 2048:
        raise _Reject(code, f"{what} must be an http(s) URL with a host")


def content_hash(fields: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of what the customer asked for (not when or how)."""
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def request_content(req: Mapping[str, Any], sender: str, recipient: str) -> dict[str, Any]:
    """The fields that make two requests 'the same message' for idempotency."""
    return {
        "account_id": req["account_id"], "channel": req["channel"], "sender": sender,
        "recipient": recipient, "body": req.get("body"),
        "media_urls": list(req.get("media_urls") or []),
        "status_callback_url": req.get("status_callback_url"),
        "validity_period_s": req.get("validity_period_s"), "send_at_ms": req.get("send_at_ms"),
    }


def request_hash(req: Mapping[str, Any]) -> str:
    """Content hash of a request, valid or not; addresses normalised where they parse.

    Independent of the sender registry, so a retry judged after a registry change still hashes
    to the same value as the original.
    """
    try:
        recipient = _recipient(req["channel"], req["recipient"])
    except (_Reject, KeyError):
        recipient = req.get("recipient", "")
    return content_hash(request_content(req, req.get("sender", ""), recipient))


def validate(req: Mapping[str, Any], senders: SenderRegistry | None) -> Valid | Rejection:
    """Check a MessageRequested record; ``senders=None`` skips the registry (SDK-side checks)."""
    try:
        return _validate(req, senders)
    except _Reject as rej:
        return rej.rejection


def _validate(req: Mapping[str, Any], senders: SenderRegistry | None) -> Valid:
    channel = req["channel"]
    if channel not in CHANNELS:
        raise _Reject(Code.UNSUPPORTED_CHANNEL, f"channel {channel!r} is not supported")
    recipient = _recipient(channel, req["recipient"])
    sender = req["sender"]
    if senders is not None:
        known = senders.get(channel, sender)
        if known is None or not known.allows(req["account_id"]):
            raise _Reject(Code.INVALID_FROM,
                          f"'From' is not a registered {channel} sender for this account")

    body = req.get("body")
    media = list(req.get("media_urls") or [])
    if not body and not media:
        raise _Reject(Code.NO_CONTENT, "a text body or a media URL is required")
    if body and len(body) > MAX_BODY[channel]:
        limit = MAX_BODY[channel]
        raise _Reject(Code.BODY_TOO_LONG,
                      f"body has {len(body)} characters, {channel} allows {limit}")
    if len(media) > MAX_MEDIA:
        raise _Reject(Code.INVALID_MEDIA_URL, f"at most {MAX_MEDIA} media URLs are allowed")
    for url in media:
        _url(url, Code.INVALID_MEDIA_URL, "a media URL")
    callback = req.get("status_callback_url")
    if callback:
        _url(callback, Code.INVALID_CALLBACK_URL, "the status callback URL")

    validity = req.get("validity_period_s")
    if validity is not None and not VALIDITY_MIN_S <= validity <= VALIDITY_MAX_S:
        raise _Reject(Code.INVALID_VALIDITY, f"validity period {validity} s is outside 1-36000 s")
    requested_at = req["requested_at_ms"]
    send_at = req.get("send_at_ms")
    if send_at is not None and not requested_at < send_at <= requested_at + MAX_SCHEDULE_AHEAD_MS:
        raise _Reject(Code.INVALID_SEND_AT,
                      "send-at must be in the future and at most 35 days ahead")

    seg = segment(body) if channel == "sms" else segment(None)
    effective_validity = validity or VALIDITY_DEFAULT_S
    start = send_at if send_at is not None else requested_at
    return Valid(
        sender=sender, recipient=recipient, encoding=seg.encoding, segments=max(1, seg.segments),
        validity_period_s=effective_validity, expires_at_ms=start + effective_validity * 1000,
        content_hash=content_hash(request_content(req, sender, recipient)),  # == request_hash
    )
