"""The connector protocol: what dispatch hands a carrier connector, and what comes back.

A connector turns one :class:`SubmitRequest` into one :class:`SubmitResult` or raises one
:class:`ConnectorError`; receipts arrive later, asynchronously, as :class:`Receipt` events. The
error's ``kind`` decides retry and the user-visible code through :data:`CLASSIFICATION`, the
only place where carrier failures meet Twilio-style codes, so SMPP and HTTP connectors cannot
drift apart.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from pipeline.errors import Code, TelexError
from pipeline.segments import Encoding, Segmentation, segment

__all__ = [
    "CLASSIFICATION",
    "BindError",
    "Classification",
    "Connector",
    "ConnectorError",
    "ErrorKind",
    "Health",
    "IdBase",
    "Receipt",
    "ReceiptStatus",
    "ReceiptStream",
    "SubmitRequest",
    "SubmitResult",
    "error_code_for",
    "normalise_message_id",
    "now_ms",
]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class ErrorKind(StrEnum):
    """Why a carrier refused or lost a message; decides retry and the user-facing code."""

    THROTTLED = "throttled"
    QUEUE_FULL = "queue_full"
    TIMEOUT = "timeout"
    SERVER_ERROR = "server_error"
    CONNECTION_LOST = "connection_lost"
    INVALID_DESTINATION = "invalid_destination"
    REJECTED_CONTENT = "rejected_content"
    OUTSIDE_WINDOW = "outside_window"  # chat channels: free text outside the 24 h window
    UNREACHABLE = "unreachable"  # receipts: handset could not be reached
    EXPIRED = "expired"  # receipts: validity period ran out at the carrier
    REJECTED = "rejected"  # any other permanent refusal


@dataclass(frozen=True, slots=True)
class Classification:
    kind: ErrorKind
    retryable: bool
    sms_code: int
    chat_code: int


# How connector failures classify: retryable or not, and the user-facing code per channel
# (named in pipeline.errors.Code, titled in its ERROR_CODES); "chat" is any
# non-SMS channel (WhatsApp, Messenger). Timeout and connection_lost are retryable although the
# carrier may have accepted the message: the dispatch journal, not the connector, resolves that.
CLASSIFICATION: dict[ErrorKind, Classification] = {
    c.kind: c
    for c in (
        Classification(ErrorKind.THROTTLED, True, Code.THROTTLED, Code.CHANNEL_RATE_LIMIT),
        Classification(ErrorKind.QUEUE_FULL, True, Code.QUEUE_OVERFLOW, Code.QUEUE_OVERFLOW),
        Classification(ErrorKind.TIMEOUT, True, Code.UNKNOWN, Code.UNKNOWN),
        Classification(ErrorKind.CONNECTION_LOST, True, Code.UNKNOWN, Code.UNKNOWN),
        Classification(ErrorKind.SERVER_ERROR, True, Code.INTERNAL, Code.INTERNAL),
        Classification(ErrorKind.INVALID_DESTINATION, False, Code.INVALID_TO,
                       Code.INVALID_CHAT_RECIPIENT),
        Classification(ErrorKind.REJECTED_CONTENT, False, Code.FILTERED, Code.FILTERED),
        Classification(ErrorKind.OUTSIDE_WINDOW, False, Code.FILTERED, Code.OUTSIDE_WINDOW),
        # Retryable: one resend may reach it.
        Classification(ErrorKind.UNREACHABLE, True, Code.UNREACHABLE, Code.UNREACHABLE),
        Classification(ErrorKind.EXPIRED, False, Code.EXPIRED, Code.EXPIRED),
        Classification(ErrorKind.REJECTED, False, Code.UNKNOWN, Code.UNKNOWN),
    )
}


def error_code_for(kind: ErrorKind, channel: str) -> int:
    """User-facing code of ``kind`` on ``channel`` ("sms" or a chat channel)."""
    row = CLASSIFICATION[kind]
    return row.sms_code if channel == "sms" else row.chat_code


class ConnectorError(TelexError):
    """A submit failed; ``retryable`` and ``code`` come from :data:`CLASSIFICATION`.

    ``carrier_error`` is the carrier's own reason (``ESME_RTHROTTLED``, ``HTTP 400 131026``) for
    the dispatch journal's ``error_reason``. ``retry_after_s`` is a hint (HTTP Retry-After).
    """

    def __init__(
        self,
        kind: ErrorKind,
        carrier_error: str,
        *,
        channel: str = "sms",
        retry_after_s: float | None = None,
    ) -> None:
        row = CLASSIFICATION[kind]
        self.kind = kind
        self.retryable = row.retryable
        self.code = error_code_for(kind, channel)
        self.carrier_error = carrier_error
        self.channel = channel
        self.retry_after_s = retry_after_s
        super().__init__(f"{kind.value} ({self.code}): {carrier_error}")


class BindError(ConnectorError):
    """The carrier refused our credentials or session at start; retrying will not help."""


class ReceiptStatus(StrEnum):
    """Telex's delivery vocabulary, as in the CarrierReceipt schema."""

    SENT = "sent"
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"
    FAILED = "failed"
    READ = "read"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class SubmitRequest:
    """One message as dispatch hands it to a connector.

    ``encoding`` and ``parts`` are the split validation billed; when omitted the connector
    computes them with :func:`pipeline.segments.segment`, the same function.
    """

    message_id: str
    sender: str
    recipient: str
    body: str | None
    channel: str = "sms"
    encoding: Encoding | None = None
    parts: Sequence[str] | None = None
    validity_ms: int | None = None
    registered_delivery: bool = True
    media_urls: Sequence[str] = ()

    def segmentation(self) -> Segmentation:
        if self.encoding is not None and self.parts is not None:
            # units are only for billing, which already happened; connectors read parts.
            return Segmentation(self.encoding, sum(map(len, self.parts)), list(self.parts))
        return segment(self.body)


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """The carrier accepted the message.

    ``carrier_message_id`` is canonical (:func:`normalise_message_id`). For a multipart SMS it is
    the first part's id and ``part_ids`` lists every part's id in order, because the SMSC sends
    one receipt per part.
    """

    carrier_message_id: str
    submitted_at_ms: int
    segments: int = 1
    part_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Receipt:
    """A delivery receipt or status webhook, fields as in ``schemas/carrier_receipt.avsc``."""

    connector: str
    carrier_message_id: str
    status: ReceiptStatus
    carrier_status: str
    received_at_ms: int
    error_code: int | None = None
    carrier_error: str | None = None
    done_at_ms: int | None = None
    message_id: str | None = None
    raw: str | None = None

    def to_record(self) -> dict[str, Any]:
        """The CarrierReceipt record (a plain dict for the Avro codec)."""
        return {
            "connector": self.connector, "carrier_message_id": self.carrier_message_id,
            "carrier_status": self.carrier_status, "status": self.status.value,
            "error_code": self.error_code, "carrier_error": self.carrier_error,
            "done_at_ms": self.done_at_ms, "received_at_ms": self.received_at_ms,
            "message_id": self.message_id, "raw": self.raw,
        }


@dataclass(frozen=True, slots=True)
class Health:
    connected: bool
    window_in_use: int
    window_size: int
    reconnects: int = 0
    last_error: str | None = None


@runtime_checkable
class Connector(Protocol):
    """What dispatch needs from a carrier connector. All methods run on one asyncio loop."""

    name: str

    async def start(self) -> None: ...

    async def submit(self, req: SubmitRequest) -> SubmitResult: ...

    def receipts(self) -> AsyncIterator[Receipt]: ...

    async def close(self) -> None: ...

    @property
    def health(self) -> Health: ...


class IdBase(StrEnum):
    """How a carrier writes a message id: hexadecimal, decimal, or an opaque token."""

    HEX = "hex"
    DECIMAL = "decimal"
    OPAQUE = "opaque"


_HEX = re.compile(r"(?:0[xX])?[0-9A-Fa-f]+")


def normalise_message_id(raw: str, base: IdBase = IdBase.HEX) -> str:
    """Canonical form of a carrier message id, so submit results and receipts match.

    Rule: numeric ids become lower-case hexadecimal without leading zeros (``"00A1"`` read as
    hex and ``"161"`` read as decimal both give ``"a1"``); ``base`` says how *this* field is
    written, because an SMSC may answer submit_sm in hex and report receipts in decimal. An id
    that is not a number in ``base`` (and every OPAQUE id) is kept verbatim, minus surrounding
    whitespace and NULs.
    """
    text = raw.strip().strip("\x00").strip()
    if base is IdBase.HEX and _HEX.fullmatch(text):
        return format(int(text, 16), "x")
    if base is IdBase.DECIMAL and text.isascii() and text.isdigit():
        return format(int(text), "x")
    return text


@dataclass(slots=True)
class ReceiptStream:
    """Buffer of receipts between a connector's reader and its consumer.

    Bounded on purpose: when nobody reads, :meth:`offer` says no and the connector pushes back
    on the carrier (SMPP answers a temporary error, so the SMSC redelivers later) instead of
    growing memory without limit.
    """

    maxsize: int = 10_000
    _queue: asyncio.Queue[Receipt | None] = field(init=False)
    _closed: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self._queue = asyncio.Queue(self.maxsize + 1)  # one slot kept for the end marker

    def offer(self, receipt: Receipt) -> bool:
        if self._closed or self._queue.qsize() >= self.maxsize:
            return False
        self._queue.put_nowait(receipt)
        return True

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[Receipt]:
        while (item := await self._queue.get()) is not None:
            yield item
        self._queue.put_nowait(None)  # later iterators end too
