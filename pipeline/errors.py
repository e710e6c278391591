"""The TelexError family, and the one table of error codes users see.

Codes follow Twilio's numbering where one exists, so customers and SREs recognise them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "ERROR_CODES",
    "BrokerError",
    "CheckpointError",
    "Code",
    "CodecError",
    "ConfigError",
    "DatabaseError",
    "ErrorCode",
    "RegistryError",
    "SchemaMismatchError",
    "SchemaViolationError",
    "TelexError",
    "TopicError",
    "UnknownSchemaError",
    "error_title",
]


class TelexError(Exception):
    """Root of every error Telex raises on purpose."""


class ConfigError(TelexError):
    """Settings are missing or invalid."""


class BrokerError(TelexError):
    """The Kafka broker cannot be reached or started."""


class DatabaseError(TelexError):
    """PostgreSQL cannot be reached or started."""


class CodecError(TelexError):
    """A payload cannot be encoded or decoded."""


class UnknownSchemaError(CodecError):
    """A payload names a schema (fingerprint or registry id) that we do not know."""


class SchemaViolationError(CodecError):
    """A record does not match its schema."""


class SchemaMismatchError(CodecError):
    """A payload decodes, but under another schema than the caller expected (wrong topic wiring)."""


class RegistryError(TelexError):
    """The schema registry failed or refused a request.

    Not a CodecError on purpose: the payload is not at fault, so callers retry or stop instead of
    dead-lettering the record.
    """


class TopicError(TelexError):
    """A topic is unknown, or creating or configuring it failed."""


class CheckpointError(TelexError):
    """Outputs, changelog or journal records were not acknowledged: offsets must not be
    committed past them. The process stops; its successor re-reads from the last commit."""


class Code(IntEnum):
    """Every user-facing error code by name (values: Twilio's numbering); titles in
    :data:`ERROR_CODES`."""

    INVALID_PARAMETER = 20001
    AUTHENTICATE = 20003
    NOT_FOUND = 20404
    TOO_MANY_REQUESTS = 20429
    SERVICE_UNAVAILABLE = 20503
    INVALID_TO = 21211
    REGION_NOT_ENABLED = 21408
    INVALID_FROM = 21606
    QUEUE_FULL = 21611
    NOT_MOBILE = 21614
    BODY_TOO_LONG = 21617
    NO_CONTENT = 21619
    INVALID_MEDIA_URL = 21620
    INVALID_VALIDITY = 21624
    INVALID_SEND_AT = 21625
    UNSUPPORTED_CHANNEL = 21626
    INVALID_CALLBACK_URL = 21627
    IDEMPOTENCY_CONFLICT = 21656
    QUEUE_OVERFLOW = 30001
    UNREACHABLE = 30003
    UNKNOWN_HANDSET = 30005
    FILTERED = 30007
    UNKNOWN = 30008
    CONGESTION = 30017
    THROTTLED = 30022
    EXPIRED = 30036
    INTERNAL = 30500
    OUTSIDE_WINDOW = 63016
    CHANNEL_RATE_LIMIT = 63018
    INVALID_CHAT_RECIPIENT = 63024


@dataclass(frozen=True, slots=True)
class ErrorCode:
    code: Code
    title: str
    retryable: bool


_CODES = (
    # The REST API's own answers (pipeline/api), in Twilio's numbering for the same cases.
    ErrorCode(Code.INVALID_PARAMETER, "Invalid or missing parameter", False),
    ErrorCode(Code.AUTHENTICATE, "Authentication failed", False),
    ErrorCode(Code.NOT_FOUND, "The requested resource was not found", False),
    ErrorCode(Code.TOO_MANY_REQUESTS, "Too many requests", True),
    ErrorCode(Code.SERVICE_UNAVAILABLE, "Service unavailable: the request was not stored", True),
    ErrorCode(Code.INVALID_TO, "Invalid 'To' phone number", False),
    ErrorCode(Code.REGION_NOT_ENABLED, "Region not enabled for sending", False),
    ErrorCode(Code.INVALID_FROM, "'From' is not a valid message-capable sender for this channel",
              False),
    ErrorCode(Code.QUEUE_FULL, "'From' has too many queued messages", True),
    ErrorCode(Code.NOT_MOBILE, "'To' is not a mobile number", False),
    ErrorCode(Code.BODY_TOO_LONG, "Body exceeds the channel's length limit", False),
    ErrorCode(Code.NO_CONTENT, "A text body or media URL is required", False),
    ErrorCode(Code.INVALID_MEDIA_URL, "Invalid media URL", False),
    ErrorCode(Code.INVALID_VALIDITY, "Invalid validity period (must be 1-36000 s)", False),
    ErrorCode(Code.INVALID_SEND_AT, "Invalid send-at time", False),
    ErrorCode(Code.UNSUPPORTED_CHANNEL, "Unsupported channel", False),
    ErrorCode(Code.INVALID_CALLBACK_URL, "Invalid status callback URL", False),
    ErrorCode(Code.IDEMPOTENCY_CONFLICT, "Idempotency key reused with different content", False),
    ErrorCode(Code.QUEUE_OVERFLOW, "Queue overflow", True),
    ErrorCode(Code.UNREACHABLE, "Unreachable destination handset", True),
    ErrorCode(Code.UNKNOWN_HANDSET, "Unknown destination handset", False),
    ErrorCode(Code.FILTERED, "Message filtered by carrier", False),
    # Retry for an unknown error is decided by the connector's classification of what happened
    # (a timeout is retried, an unexplained rejection is not), not by this code.
    ErrorCode(Code.UNKNOWN, "Unknown error", False),
    ErrorCode(Code.CONGESTION, "Carrier network congestion", True),
    ErrorCode(Code.THROTTLED, "Carrier rate limit exceeded (throttled)", True),
    ErrorCode(Code.EXPIRED, "Validity period expired", False),
    ErrorCode(Code.INTERNAL, "Internal error", True),
    ErrorCode(Code.OUTSIDE_WINDOW, "Outside the chat channel's customer-service window", False),
    ErrorCode(Code.CHANNEL_RATE_LIMIT, "Channel rate limit exceeded", True),
    ErrorCode(Code.INVALID_CHAT_RECIPIENT, "Invalid recipient for this channel", False),
)

ERROR_CODES: dict[int, ErrorCode] = {c.code: c for c in _CODES}


def error_title(code: int) -> str:
    """Human-readable title of ``code``; unknown codes are reported, not hidden."""
    known = ERROR_CODES.get(code)
    return known.title if known else f"Unknown error code {code}"
