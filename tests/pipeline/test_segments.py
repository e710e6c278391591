"""GSM-7 / UCS-2 detection and segment counts."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.segments import GSM7_BASIC, GSM7_EXTENSION, Encoding, segment


@pytest.mark.parametrize(
    ("body", "encoding", "units", "segments"),
    [
        ("hi", Encoding.GSM7, 2, 1),
        ("a" * 160, Encoding.GSM7, 160, 1),
        ("a" * 161, Encoding.GSM7, 161, 2),
        ("a" * 306, Encoding.GSM7, 306, 2),
        ("a" * 307, Encoding.GSM7, 307, 3),
        ("€" * 80, Encoding.GSM7, 160, 1),
        ("é" * 10, Encoding.GSM7, 10, 1),
        ("ç", Encoding.UCS2, 1, 1),
        ("ж" * 70, Encoding.UCS2, 70, 1),
        ("ж" * 71, Encoding.UCS2, 71, 2),
        ("😀" * 35, Encoding.UCS2, 70, 1),
    ],
)
def test_encoding_and_segment_count(body: str, encoding: Encoding, units: int, segments: int):
    """Bodies get the encoding, unit count and segment count an SMSC would bill."""
    seg = segment(body)
    assert (seg.encoding, seg.units, seg.segments) == (encoding, units, segments)
    assert "".join(seg.parts) == body


def test_extension_character_never_straddles_parts():
    """A two-septet character at a part boundary moves whole to the next part."""
    seg = segment("a" * 152 + "€" + "b" * 10)
    assert seg.parts[0] == "a" * 152
    assert seg.parts[1].startswith("€")


def test_surrogate_pair_never_straddles_parts():
    """An emoji (two UTF-16 units) at a UCS-2 part boundary moves whole to the next part."""
    seg = segment("ж" * 66 + "😀" + "ж" * 10)
    assert seg.parts[0] == "ж" * 66
    assert all(len(p.encode("utf-16-be")) // 2 <= 67 for p in seg.parts)


def test_no_body_has_no_segments():
    """A media-only message has encoding NONE and no text parts."""
    assert segment(None).encoding is Encoding.NONE
    assert segment("").segments == 0


def _reference(body: str) -> list[str]:
    """Independent split: greedy by septet cost, 160 single / 153 per part."""
    cost = [2 if ch in GSM7_EXTENSION else 1 for ch in body]
    if sum(cost) <= 160:
        return [body]
    parts, current, used = [], "", 0
    for ch, c in zip(body, cost, strict=True):
        if used + c > 153:
            parts.append(current)
            current, used = "", 0
        current += ch
        used += c
    return [*parts, current]


@given(st.text(alphabet=sorted(GSM7_BASIC | GSM7_EXTENSION), min_size=1, max_size=700))
def test_gsm7_split_matches_reference(body: str):
    """The fast path and the general path split GSM-7 text exactly as the reference does."""
    seg = segment(body)
    assert seg.encoding is Encoding.GSM7
    assert seg.parts == _reference(body)
