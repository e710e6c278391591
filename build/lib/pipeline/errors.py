"""The TelexError family, and the one table of error codes users see.

Codes follow Twilio's numbering where one exists, so customers and SREs recognise them.
"""

from __future__ import annotations

from dataclasses import dataclass


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


@dataclass(frozen=True, slots=True)
class ErrorCode:
    code: int
    title: str
    retryable: bool


_CODES = (
    ErrorCode(21211, "Invalid 'To' phone number", False),
    ErrorCode(21408, "Region not enabled for sending", False),
    ErrorCode(21606, "'From' is not a valid message-capable sender for this channel", False),
    ErrorCode(21611, "'From' has too many queued messages", True),
    ErrorCode(21614, "'To' is not a mobile number", False),
    ErrorCode(21617, "Body exceeds the channel's length limit", False),
    ErrorCode(21619, "A text body or media URL is required", False),
    ErrorCode(21620, "Invalid media URL", False),
    ErrorCode(21624, "Invalid validity period (must be 1-36000 s)", False),
    ErrorCode(21625, "Invalid send-at time", False),
    ErrorCode(21626, "Unsupported channel", False),
    ErrorCode(21627, "Invalid status callback URL", False),
    ErrorCode(21656, "Idempotency key reused with different content", False),
    ErrorCode(30001, "Queue overflow", True),
    ErrorCode(30003, "Unreachable destination handset", True),
    ErrorCode(30005, "Unknown destination handset", False),
    ErrorCode(30007, "Message filtered by carrier", False),
    # Retry for an unknown error is decided by the connector's classification of what happened
    # (a timeout is retried, an unexplained rejection is not), not by this code.
    ErrorCode(30008, "Unknown error", False),
    ErrorCode(30017, "Carrier network congestion", True),
    ErrorCode(30022, "Carrier rate limit exceeded (throttled)", True),
    ErrorCode(30036, "Validity period expired", False),
    ErrorCode(30500, "Internal error", True),
    ErrorCode(63016, "Outside the chat channel's customer-service window", False),
    ErrorCode(63018, "Channel rate limit exceeded", True),
    ErrorCode(63024, "Invalid recipient for this channel", False),
)

ERROR_CODES: dict[int, ErrorCode] = {c.code: c for c in _CODES}


def error_title(code: int) -> str:
    """Human-readable title of ``code``; unknown codes are reported, not hidden."""
    known = ERROR_CODES.get(code)
    return known.title if known else f"Unknown error code {code}"
