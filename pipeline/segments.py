"""GSM 03.38 / UCS-2 detection and SMS segment counting.

A multi-segment SMS costs its segment count against carrier rate limits and bills, so the count
must match what the SMPP connector will really send: GSM-7 fits 160 septets in one part, 153 per
part when concatenated (the UDH takes 7); UCS-2 fits 70 UTF-16 units, 67 per part. An extension
character (``€``, ``[`` …) costs two septets and never straddles two parts; neither does a
UTF-16 surrogate pair. The alphabet comes from the ``gsm0338`` codec rather than a hand-typed
table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

import gsm0338  # noqa: F401  (registers the "gsm03.38" codec)

__all__ = [
    "Encoding",
    "Segmentation",
    "segment",
]

_ESC = 0x1B


def _alphabet() -> tuple[frozenset[str], frozenset[str]]:
    basic = {bytes([i]).decode("gsm03.38") for i in range(128) if i != _ESC}
    extension = {bytes([_ESC, i]).decode("gsm03.38", errors="ignore") for i in range(128)}
    return frozenset(basic), frozenset(extension - basic - {""})


GSM7_BASIC, GSM7_EXTENSION = _alphabet()

GSM7_SINGLE, GSM7_PART = 160, 153
UCS2_SINGLE, UCS2_PART = 70, 67


class Encoding(StrEnum):
    GSM7 = "GSM7"
    UCS2 = "UCS2"
    NONE = "NONE"  # no text body (media only)


@dataclass(frozen=True, slots=True)
class Segmentation:
    encoding: Encoding
    units: int  # septets for GSM7, UTF-16 code units for UCS2
    parts: list[str]

    @property
    def segments(self) -> int:
        return len(self.parts)


def _cost(ch: str) -> int | None:
    """Septets a character costs in GSM-7, or None if it is not in the alphabet."""
    if ch in GSM7_BASIC:
        return 1
    if ch in GSM7_EXTENSION:
        return 2
    return None


def _pack(costs: list[tuple[str, int]], single: int, part: int) -> list[str]:
    total = sum(c for _, c in costs)
    if total <= single:
        return ["".join(ch for ch, _ in costs)]
    parts: list[str] = []
    current: list[str] = []
    used = 0
    for ch, c in costs:
        if used + c > part:
            parts.append("".join(current))
            current, used = [], 0
        current.append(ch)
        used += c
    if current:
        parts.append("".join(current))
    return parts


_BASIC_ONLY = re.compile("[" + re.escape("".join(sorted(GSM7_BASIC))) + "]*")


def segment(body: str | None) -> Segmentation:
    """Choose the encoding of ``body`` and split it into the parts an SMSC will receive."""
    if not body:
        return Segmentation(Encoding.NONE, 0, [])
    if _BASIC_ONLY.fullmatch(body):  # the common case: one septet per character
        if len(body) <= GSM7_SINGLE:
            return Segmentation(Encoding.GSM7, len(body), [body])
        parts = [body[i:i + GSM7_PART] for i in range(0, len(body), GSM7_PART)]
        return Segmentation(Encoding.GSM7, len(body), parts)
    costs: list[tuple[str, int]] = []
    for ch in body:
        c = _cost(ch)
        if c is None:
            break
        costs.append((ch, c))
    else:
        return Segmentation(
            Encoding.GSM7, sum(c for _, c in costs), _pack(costs, GSM7_SINGLE, GSM7_PART)
        )
    ucs2 = [(ch, 2 if ord(ch) > 0xFFFF else 1) for ch in body]
    return Segmentation(
        Encoding.UCS2, sum(c for _, c in ucs2), _pack(ucs2, UCS2_SINGLE, UCS2_PART)
    )
