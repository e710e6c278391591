"""Text to short_message octets: data_coding, concatenation UDH and validity periods.

GSM-7 goes out as *unpacked* septets (one octet per septet, data_coding 0x00), which is what
SMSCs expect over SMPP; extension characters are ESC + code, two octets, as
:func:`pipeline.segments.segment` counts them. UCS-2 is UTF-16BE (data_coding 0x08). A message
of more than one part gets the 8-bit-reference concatenation UDH ``05 00 03 RR TT NN`` on every
part and esm_class UDHI (0x40); the split itself comes from ``segment`` so the number of
submit_sm equals the number of segments billed.
"""

from __future__ import annotations

from dataclasses import dataclass

import gsm0338  # noqa: F401  (registers the "gsm03.38" codec)

from pipeline.errors import CodecError
from pipeline.segments import Encoding, Segmentation

DATA_CODING_GSM7 = 0x00
DATA_CODING_LATIN1 = 0x03
DATA_CODING_UCS2 = 0x08
ESM_UDHI = 0x40
ESM_RECEIPT = 0x04  # message type bits (2-5) of a deliver_sm that is a delivery receipt
_ESM_TYPE_MASK = 0x3C

_DATA_CODING = {Encoding.GSM7: DATA_CODING_GSM7, Encoding.UCS2: DATA_CODING_UCS2}

# Octets whose GSM 03.38 character is the ASCII character of the same code (letters, digits,
# most punctuation, LF, CR). Text made only of these needs no table lookup: the gsm0338 codec is
# pure Python and was the largest cost per submit and per receipt at thousands per second.
_SAME_AS_ASCII = bytes(b for b in range(128)
                       if b != 0x1B and bytes([b]).decode("gsm03.38") == chr(b))


def encode_gsm7(text: str) -> bytes:
    """Unpacked GSM-7 septets of ``text``; raises CodecError outside the GSM alphabet."""
    if text.isascii():
        raw = text.encode("ascii")
        if not raw.translate(None, _SAME_AS_ASCII):
            return raw
    try:
        return text.encode("gsm03.38")
    except UnicodeEncodeError as exc:
        raise CodecError(f"not GSM 03.38: {exc.reason}") from exc


def _encode(text: str, encoding: Encoding) -> bytes:
    return encode_gsm7(text) if encoding is Encoding.GSM7 else text.encode("utf-16-be")


@dataclass(frozen=True, slots=True)
class Concat:
    """Concatenation info of one part: reference, total parts, 1-based part number."""

    ref: int
    total: int
    seq: int


@dataclass(frozen=True, slots=True)
class EncodedPart:
    """One submit_sm's worth of content."""

    esm_class: int
    data_coding: int
    short_message: bytes
    concat: Concat | None


def encode_parts(seg: Segmentation, ref: int) -> list[EncodedPart]:
    """The short_message of every part of ``seg``; ``ref`` (0-255) ties the parts together.

    The caller picks ``ref`` so that concurrent multipart messages to one handset differ.
    """
    if seg.encoding is Encoding.NONE or not seg.parts:
        raise CodecError("an SMS needs a text body")
    coding = _DATA_CODING[seg.encoding]
    if len(seg.parts) == 1:
        return [EncodedPart(0, coding, _encode(seg.parts[0], seg.encoding), None)]
    total = len(seg.parts)
    if total > 255:
        raise CodecError(f"{total} parts exceed the 255 an 8-bit UDH can number")
    ref &= 0xFF
    return [
        EncodedPart(ESM_UDHI, coding, bytes((5, 0, 3, ref, total, n)) + _encode(part, seg.encoding),
                    Concat(ref, total, n))
        for n, part in enumerate(seg.parts, start=1)
    ]


def split_udh(esm_class: int, short_message: bytes) -> tuple[Concat | None, bytes]:
    """Concatenation info (8- or 16-bit reference IE) and the text octets after the UDH."""
    if not esm_class & ESM_UDHI or not short_message:
        return None, short_message
    udhl = short_message[0]
    header, payload = short_message[1:1 + udhl], short_message[1 + udhl:]
    i, concat = 0, None
    while i + 2 <= len(header):
        iei, iedl = header[i], header[i + 1]
        data = header[i + 2:i + 2 + iedl]
        if iei == 0x00 and iedl == 3 and len(data) == 3:
            concat = Concat(data[0], data[1], data[2])
        elif iei == 0x08 and iedl == 4 and len(data) == 4:
            concat = Concat(int.from_bytes(data[:2], "big"), data[2], data[3])
        i += 2 + iedl
    return concat, payload


def decode_text(data_coding: int, octets: bytes) -> str:
    """Text of ``octets`` in ``data_coding``; unknown codings read as Latin-1, never raise."""
    if data_coding == DATA_CODING_UCS2:
        return octets.decode("utf-16-be", errors="replace")
    if data_coding == DATA_CODING_GSM7:
        if not octets.translate(None, _SAME_AS_ASCII):
            return octets.decode("ascii")
        return octets.decode("gsm03.38", errors="replace")
    return octets.decode("latin-1")


def is_receipt(esm_class: int) -> bool:
    return esm_class & _ESM_TYPE_MASK == ESM_RECEIPT


def relative_validity(validity_ms: int) -> str:
    """SMPP relative time ``YYMMDDhhmmss000R`` for a validity period (SMPP 3.4 §7.1.1).

    Rounded up to whole seconds so the carrier never expires a message earlier than asked.
    """
    if validity_ms <= 0:
        raise CodecError("validity must be positive")
    seconds = -(-validity_ms // 1000)
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days > 99:
        raise CodecError("validity over 99 days cannot be written as SMPP relative time")
    return f"0000{days:02d}{hours:02d}{minutes:02d}{secs:02d}000R"


def address(addr: str) -> tuple[int, int, str]:
    """(TON, NPI, digits) of an address: E.164 international or alphanumeric sender."""
    if addr.startswith("+") and addr[1:].isdigit():
        return 1, 1, addr[1:]  # international, ISDN/E.164
    if addr.isdigit():
        return 0, 1, addr  # unknown TON: short codes and national numbers
    return 5, 0, addr  # alphanumeric
