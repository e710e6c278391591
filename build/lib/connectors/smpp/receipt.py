"""SMPP delivery receipts: the de-facto text format and the SMPP 3.4 TLVs, mapped to Telex.

Text: ``id:<id> sub:001 dlvrd:001 submit date:<d> done date:<d> stat:DELIVRD err:000 text:...``.
Keys are matched case-insensitively and in any order (``submit_date`` and ``submitdate`` too).
The first occurrence of each key wins, and a key name already seen does not end a value, so a
``text:`` that quotes ``id:`` does not hijack the id; a ``text:`` placed *before* an unseen key
can still be cut there, an ambiguity the format itself has. Dates are ``yyMMddHHmm``,
``yyMMddHHmmss`` or ``yyyyMMddHHmmss`` and read as UTC unless the SMSC's offset is given.

When receipted_message_id (0x001E) or message_state (0x0427) TLVs are present they win over the
text, which then only supplies dates and err.

``stat`` mapping (SMPP 3.4 message_state names): DELIVRD → delivered; ACCEPTD and ENROUTE →
sent (not final); UNDELIV, EXPIRED, DELETED, REJECTD → undelivered, because the carrier had
accepted the message (Twilio keeps ``failed`` for messages never sent), each with its own
error code: UNDELIV → unreachable (30003), EXPIRED → expired (30036), REJECTD → filtered
(30007), DELETED → rejected (30008); UNKNOWN or anything else → unknown.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timezone

from connectors.base import (
    ErrorKind,
    IdBase,
    Receipt,
    ReceiptStatus,
    error_code_for,
    normalise_message_id,
)
from connectors.smpp.encoding import decode_text
from connectors.smpp.pdu import DeliverSm, Tag, tlv_int, tlv_str

# message_state (TLV 0x0427) → stat word of the text format (SMPP 3.4 §5.2.28).
MESSAGE_STATES = {1: "ENROUTE", 2: "DELIVRD", 3: "EXPIRED", 4: "DELETED", 5: "UNDELIV",
                  6: "ACCEPTD", 7: "UNKNOWN", 8: "REJECTD"}

_STAT: dict[str, tuple[ReceiptStatus, ErrorKind | None]] = {
    "DELIVRD": (ReceiptStatus.DELIVERED, None),
    "ACCEPTD": (ReceiptStatus.SENT, None),
    "ENROUTE": (ReceiptStatus.SENT, None),
    "UNDELIV": (ReceiptStatus.UNDELIVERED, ErrorKind.UNREACHABLE),
    "EXPIRED": (ReceiptStatus.UNDELIVERED, ErrorKind.EXPIRED),
    "REJECTD": (ReceiptStatus.UNDELIVERED, ErrorKind.REJECTED_CONTENT),
    "DELETED": (ReceiptStatus.UNDELIVERED, ErrorKind.REJECTED),
    "UNKNOWN": (ReceiptStatus.UNKNOWN, None),
}

_KEY = re.compile(r"(?i)(?<![\w])(id|sub|dlvrd|submit[ _]?date|done[ _]?date|stat|err|text)\s*:")


@dataclass(frozen=True, slots=True)
class ReceiptText:
    """Fields of the text form, raw except for dates (epoch ms, None when unparseable)."""

    id: str | None = None
    sub: str | None = None
    dlvrd: str | None = None
    submit_date_ms: int | None = None
    done_date_ms: int | None = None
    stat: str | None = None
    err: str | None = None
    text: str | None = None


def parse_receipt_text(text: str, tz: timezone = UTC) -> ReceiptText:
    """Fields of a receipt's short_message text; missing fields are None."""
    found: dict[str, str] = {}
    marks: list[tuple[str, int, int]] = []  # (key, key start, value start)
    for m in _KEY.finditer(text):
        key = m.group(1).lower().replace(" ", "").replace("_", "")
        if key not in found:
            found[key] = ""
            marks.append((key, m.start(), m.end()))
    for i, (key, _start, value_start) in enumerate(marks):
        end = marks[i + 1][1] if i + 1 < len(marks) else len(text)
        value = text[value_start:end]
        found[key] = value if key == "text" else value.strip()
    return ReceiptText(
        id=found.get("id") or None, sub=found.get("sub"), dlvrd=found.get("dlvrd"),
        submit_date_ms=parse_date(found.get("submitdate"), tz),
        done_date_ms=parse_date(found.get("donedate"), tz),
        stat=(found.get("stat") or "").upper() or None, err=found.get("err") or None,
        text=found.get("text"),
    )


def parse_date(value: str | None, tz: timezone = UTC) -> int | None:
    """Epoch ms of a receipt date (yyMMddHHmm, yyMMddHHmmss or yyyyMMddHHmmss), else None."""
    if not value or not value.isascii() or not value.isdigit() or len(value) not in (10, 12, 14):
        return None
    if len(value) == 14:
        year, rest = int(value[:4]), value[4:]
    else:  # two-digit years are 20yy: receipts are about messages sent this century
        year, rest = 2000 + int(value[:2]), value[2:]
    try:
        moment = datetime(year, int(rest[0:2]), int(rest[2:4]), int(rest[4:6]), int(rest[6:8]),
                          int(rest[8:10] or 0), tzinfo=tz)
    except ValueError:
        return None
    return int(moment.timestamp()) * 1000


def map_stat(stat: str | None, channel: str = "sms") -> tuple[ReceiptStatus, int | None]:
    """Telex status and error code of an SMPP stat word."""
    status, kind = _STAT.get((stat or "").upper(), (ReceiptStatus.UNKNOWN, None))
    return status, None if kind is None else error_code_for(kind, channel)


def receipt_from_deliver_sm(
    pdu: DeliverSm,
    *,
    connector: str,
    received_at_ms: int,
    id_base: IdBase = IdBase.HEX,
    tz: timezone = UTC,
    message_ids: Mapping[str, str] | None = None,
) -> Receipt | None:
    """The receipt carried by ``pdu``, or None if it names no message id.

    ``message_ids`` maps canonical carrier ids to Telex message ids the connector remembers.
    """
    payload = pdu.short_message or pdu.tlvs.get(Tag.MESSAGE_PAYLOAD, b"")
    raw = decode_text(pdu.data_coding, payload) if payload else ""
    fields = parse_receipt_text(raw, tz)
    raw_id = tlv_str(pdu, Tag.RECEIPTED_MESSAGE_ID) or fields.id
    if not raw_id:
        return None
    state = tlv_int(pdu, Tag.MESSAGE_STATE)
    stat = MESSAGE_STATES.get(state, f"STATE_{state}") if state is not None else fields.stat
    status, code = map_stat(stat)
    carrier_id = normalise_message_id(raw_id, id_base)
    return Receipt(
        connector=connector,
        carrier_message_id=carrier_id,
        status=status,
        carrier_status=stat or "",
        received_at_ms=received_at_ms,
        error_code=code,
        carrier_error=_carrier_error(pdu, fields.err),
        done_at_ms=fields.done_date_ms,
        message_id=message_ids.get(carrier_id) if message_ids else None,
        raw=raw or None,
    )


def _carrier_error(pdu: DeliverSm, err: str | None) -> str | None:
    """err: field, plus network_error_code as ``net:<type>:<code>`` (layout: u8 type, u16)."""
    parts = [f"err:{err}"] if err and err.strip("0") else []
    nec = pdu.tlvs.get(Tag.NETWORK_ERROR_CODE)
    if nec and len(nec) == 3:
        parts.append(f"net:{nec[0]}:{int.from_bytes(nec[1:], 'big')}")
    return " ".join(parts) or None


def receipt_text(
    message_id: str, stat: str, *, submit: datetime, done: datetime, err: str = "000",
    text: str = "", delivered: bool | None = None,
) -> str:
    """The text form, as an SMSC writes it (used by the simulator and tests)."""
    dlvrd = "001" if (stat == "DELIVRD" if delivered is None else delivered) else "000"
    return (f"id:{message_id} sub:001 dlvrd:{dlvrd} submit date:{submit:%y%m%d%H%M} "
            f"done date:{done:%y%m%d%H%M} stat:{stat} err:{err} text:{text[:20]}")


__all__ = ["MESSAGE_STATES", "ReceiptText", "map_stat", "parse_date", "parse_receipt_text",
           "receipt_from_deliver_sm", "receipt_text"]
