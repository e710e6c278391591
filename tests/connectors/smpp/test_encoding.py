"""GSM-7 / UCS-2 short_message octets, concatenation UDH, validity and addresses."""

from __future__ import annotations

import pytest

from connectors.smpp.encoding import (
    ESM_UDHI,
    Concat,
    address,
    decode_text,
    encode_gsm7,
    encode_parts,
    is_receipt,
    relative_validity,
    split_udh,
)
from pipeline.errors import CodecError
from pipeline.segments import segment


def test_gsm7_is_unpacked_septets_with_gsm_code_points() -> None:
    """'@' is 0x00, '£' 0x01, '$' 0x02, '_' 0x11 (GSM 03.38 basic table), data_coding 0x00."""
    [part] = encode_parts(segment("@£$_A"), ref=0)
    assert (part.data_coding, part.esm_class, part.concat) == (0x00, 0, None)
    assert part.short_message == bytes([0x00, 0x01, 0x02, 0x11, 0x41])


def test_gsm7_extension_characters_take_escape_plus_code() -> None:
    """'€' is ESC 0x65 and '[' ESC 0x3C: two octets each."""
    [part] = encode_parts(segment("€["), ref=0)
    assert part.short_message == bytes([0x1B, 0x65, 0x1B, 0x3C])


def test_ucs2_is_utf16_big_endian() -> None:
    """Text outside GSM-7 goes as UTF-16BE with data_coding 0x08, surrogates included."""
    [part] = encode_parts(segment("Привет 👋"), ref=0)
    assert part.data_coding == 0x08
    assert part.short_message == "Привет 👋".encode("utf-16-be")


def test_long_gsm7_message_gets_8bit_udh_on_every_part() -> None:
    """200 GSM-7 characters: 2 parts of 153 and 47 septets, each prefixed 05 00 03 RR 02 NN."""
    body = "a" * 200
    parts = encode_parts(segment(body), ref=0x2A)
    assert [part.esm_class for part in parts] == [ESM_UDHI, ESM_UDHI]
    assert parts[0].short_message[:6] == bytes.fromhex("050003 2A 02 01")
    assert parts[1].short_message[:6] == bytes.fromhex("050003 2A 02 02")
    assert [len(part.short_message) - 6 for part in parts] == [153, 47]
    assert [part.concat for part in parts] == [Concat(0x2A, 2, 1), Concat(0x2A, 2, 2)]


def test_part_count_equals_billed_segments() -> None:
    """One submit_sm per segment that pipeline.segments bills, for both alphabets."""
    for body in ("x" * 160, "x" * 161, "€" * 80, "€" * 81, "ж" * 70, "ж" * 71, "ж" * 400):
        assert len(encode_parts(segment(body), ref=1)) == segment(body).segments


def test_ucs2_parts_hold_67_units() -> None:
    """100 UCS-2 characters: 67 + 33 characters, 134 + 66 octets after the UDH."""
    parts = encode_parts(segment("ж" * 100), ref=7)
    assert [len(part.short_message) - 6 for part in parts] == [134, 66]


def test_split_udh_reads_8_and_16_bit_references() -> None:
    """The simulator's parser understands both concatenation IEs and keeps the text."""
    assert split_udh(0x40, bytes.fromhex("050003 07 03 02") + b"hi") == (Concat(7, 3, 2), b"hi")
    assert split_udh(0x40, bytes.fromhex("06 08 04 0102 04 01") + b"yo") == (
        Concat(0x0102, 4, 1), b"yo")
    assert split_udh(0x00, b"\x05\x00\x03") == (None, b"\x05\x00\x03")


def test_decode_text_by_data_coding() -> None:
    """data_coding 0x00 decodes GSM-7 (escapes included), 0x08 UTF-16BE, another (0x03) Latin-1."""
    assert decode_text(0x00, bytes([0x00, 0x1B, 0x65])) == "@€"
    assert decode_text(0x08, "ж".encode("utf-16-be")) == "ж"
    assert decode_text(0x03, b"\xe9") == "é"


def test_empty_body_cannot_be_an_sms() -> None:
    """Encoding the parts of an absent body raises CodecError."""
    with pytest.raises(CodecError):
        encode_parts(segment(None), ref=0)


@pytest.mark.parametrize(
    ("ms", "expected"),
    [(3_600_000, "000000010000000R"), (1, "000000000001000R"),
     (36_000_000, "000000100000000R"), (90_061_000, "000001010101000R")],
)
def test_relative_validity(ms: int, expected: str) -> None:
    """SMPP relative time YYMMDDhhmmss tnn R, rounded up to the second."""
    assert relative_validity(ms) == expected


@pytest.mark.parametrize(
    ("addr", "expected"),
    [("+14155550123", (1, 1, "14155550123")), ("Telex", (5, 0, "Telex")),
     ("12345", (0, 1, "12345"))],
)
def test_address_ton_npi(addr: str, expected: tuple[int, int, str]) -> None:
    """E.164 → international/ISDN without '+'; letters → alphanumeric; digits → unknown/ISDN."""
    assert address(addr) == expected


def test_receipt_esm_class_bits() -> None:
    """Message type bits 2-5 equal to 0x04 mean delivery receipt, whatever other bits say."""
    assert is_receipt(0x04) and is_receipt(0x44)
    assert not is_receipt(0x00) and not is_receipt(0x08)


def test_ascii_fast_path_agrees_with_the_codec() -> None:
    """Every GSM-encodable ASCII character encodes and decodes exactly as gsm0338 does,
    including the ones whose codes differ ('@' 0x00, '$' 0x02, '_' 0x11, '{' ESC 0x28)."""
    for code in range(128):
        ch = chr(code)
        if ch == "\x1b":
            continue  # ESC is the extension-table prefix, not a character
        try:
            expected = ch.encode("gsm03.38")
        except UnicodeEncodeError:
            continue
        assert encode_gsm7(ch * 3) == expected * 3, repr(ch)
        assert decode_text(0x00, expected * 3) == ch * 3, repr(ch)


def test_text_outside_gsm7_is_a_codec_error() -> None:
    """encode_gsm7 of a character outside GSM-7 ('ж') raises CodecError."""
    with pytest.raises(CodecError):
        encode_gsm7("ж")
