"""Receipt text variants, TLV receipts and the stat → status mapping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from connectors.base import IdBase, ReceiptStatus
from connectors.smpp import pdu as p
from connectors.smpp.receipt import (
    map_stat,
    parse_date,
    parse_receipt_text,
    receipt_from_deliver_sm,
)

CANONICAL = ("id:0000A1B2C3 sub:001 dlvrd:001 submit date:2401021530 done date:2401021531 "
             "stat:DELIVRD err:000 text:Hello there")


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)


def test_canonical_receipt_text() -> None:
    """Every field of the de-facto format, dates as epoch ms in UTC."""
    r = parse_receipt_text(CANONICAL)
    assert (r.id, r.sub, r.dlvrd, r.stat, r.err, r.text) == (
        "0000A1B2C3", "001", "001", "DELIVRD", "000", "Hello there")
    assert r.submit_date_ms == ms(2024, 1, 2, 15, 30)
    assert r.done_date_ms == ms(2024, 1, 2, 15, 31)


def test_fields_in_any_order_and_case() -> None:
    """Key order and case vary between SMSCs; the stat value is upper-cased."""
    r = parse_receipt_text("STAT:undeliv Err:021 ID:77 Done Date:240102153000 DLVRD:000 "
                           "SUB:001 Submit_Date:20240102152959 Text:x")
    assert (r.id, r.stat, r.err, r.dlvrd) == ("77", "UNDELIV", "021", "000")
    assert r.done_date_ms == ms(2024, 1, 2, 15, 30, 0)
    assert r.submit_date_ms == ms(2024, 1, 2, 15, 29, 59)


def test_text_quoting_a_key_does_not_steal_it() -> None:
    """A text: that contains 'id:' or 'stat:' keeps them; the first occurrence wins."""
    r = parse_receipt_text("id:42 stat:DELIVRD err:000 text:my id:99 stat:REJECTD")
    assert (r.id, r.stat, r.text) == ("42", "DELIVRD", "my id:99 stat:REJECTD")


def test_missing_fields_are_none() -> None:
    """Fields absent from the text (err, submit date, text) are None; id and stat are read."""
    r = parse_receipt_text("id:5 stat:EXPIRED")
    assert (r.id, r.stat, r.err, r.submit_date_ms, r.text) == ("5", "EXPIRED", None, None, None)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("2401021530", ms(2024, 1, 2, 15, 30)), ("240102153045", ms(2024, 1, 2, 15, 30, 45)),
     ("20240102153045", ms(2024, 1, 2, 15, 30, 45)), ("2413011530", None), ("24010215", None),
     ("", None), (None, None), ("24O1021530", None)],
)
def test_receipt_dates(value: str | None, expected: int | None) -> None:
    """yyMMddHHmm, yyMMddHHmmss, yyyyMMddHHmmss; anything else (or impossible) is None."""
    assert parse_date(value) == expected


def test_dates_in_the_smsc_time_zone() -> None:
    """An SMSC on UTC+2 writes 17:30 for 15:30 UTC."""
    assert parse_date("2401021730", timezone(timedelta(hours=2))) == ms(2024, 1, 2, 15, 30)


@pytest.mark.parametrize(
    ("stat", "status", "code"),
    [("DELIVRD", ReceiptStatus.DELIVERED, None), ("ACCEPTD", ReceiptStatus.SENT, None),
     ("ENROUTE", ReceiptStatus.SENT, None), ("UNDELIV", ReceiptStatus.UNDELIVERED, 30003),
     ("EXPIRED", ReceiptStatus.UNDELIVERED, 30036), ("REJECTD", ReceiptStatus.UNDELIVERED, 30007),
     ("DELETED", ReceiptStatus.UNDELIVERED, 30008), ("UNKNOWN", ReceiptStatus.UNKNOWN, None),
     ("BOGUS", ReceiptStatus.UNKNOWN, None), (None, ReceiptStatus.UNKNOWN, None)],
)
def test_stat_mapping(stat: str | None, status: ReceiptStatus, code: int | None) -> None:
    """The documented stat table."""
    assert map_stat(stat) == (status, code)


def _deliver(text: str, tlvs: dict[int, bytes] | None = None) -> p.DeliverSm:
    return p.DeliverSm(esm_class=0x04, short_message=text.encode(), tlvs=tlvs or {})


def test_receipt_from_text_normalises_the_id() -> None:
    """A hex id with leading zeros becomes canonical lower-case hex; err and raw kept."""
    pdu = _deliver(CANONICAL.replace("err:000", "err:005").replace("DELIVRD", "UNDELIV"))
    r = receipt_from_deliver_sm(pdu, connector="smpp:a", received_at_ms=1)
    assert r is not None
    assert (r.carrier_message_id, r.status, r.carrier_status, r.error_code) == (
        "a1b2c3", ReceiptStatus.UNDELIVERED, "UNDELIV", 30003)
    assert r.carrier_error == "err:005"
    assert r.done_at_ms == ms(2024, 1, 2, 15, 31) and r.raw == pdu.short_message.decode()


def test_decimal_receipt_ids_match_hex_submit_ids() -> None:
    """An SMSC that reports receipts in decimal: id:10597059 is hex a1b2c3."""
    pdu = _deliver("id:10597059 stat:DELIVRD err:000")
    r = receipt_from_deliver_sm(pdu, connector="c", received_at_ms=1, id_base=IdBase.DECIMAL)
    assert r is not None and r.carrier_message_id == "a1b2c3"


def test_tlvs_win_over_text() -> None:
    """receipted_message_id and message_state override the text; network_error_code is kept."""
    tlvs = {p.Tag.RECEIPTED_MESSAGE_ID: p.tlv_cstring("00FF"),
            p.Tag.MESSAGE_STATE: p.tlv_u8(5),
            p.Tag.NETWORK_ERROR_CODE: bytes([3, 0x00, 0x22])}
    r = receipt_from_deliver_sm(_deliver("id:1 stat:DELIVRD done date:2401021531", tlvs),
                                connector="c", received_at_ms=1)
    assert r is not None
    assert (r.carrier_message_id, r.carrier_status, r.status) == (
        "ff", "UNDELIV", ReceiptStatus.UNDELIVERED)
    assert r.carrier_error == "net:3:34" and r.done_at_ms == ms(2024, 1, 2, 15, 31)


def test_tlv_only_receipt_without_text() -> None:
    """A deliver_sm with empty text takes id abc and state 2 (delivered) from TLVs; raw is None."""
    tlvs = {p.Tag.RECEIPTED_MESSAGE_ID: p.tlv_cstring("abc"), p.Tag.MESSAGE_STATE: p.tlv_u8(2)}
    r = receipt_from_deliver_sm(_deliver("", tlvs), connector="c", received_at_ms=1)
    assert r is not None and (r.carrier_message_id, r.status, r.raw) == (
        "abc", ReceiptStatus.DELIVERED, None)


def test_receipt_without_any_id_is_none() -> None:
    """A deliver_sm whose text has no id and that has no receipted_message_id TLV gives None."""
    assert receipt_from_deliver_sm(_deliver("stat:DELIVRD"), connector="c",
                                   received_at_ms=1) is None
