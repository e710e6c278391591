"""The connector protocol: id normalisation, error classification, requests, receipt stream."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from connectors.base import (
    CLASSIFICATION,
    Connector,
    ConnectorError,
    ErrorKind,
    IdBase,
    Receipt,
    ReceiptStatus,
    ReceiptStream,
    SubmitRequest,
    normalise_message_id,
)
from connectors.http_channel import WhatsAppClient, WhatsAppConfig
from connectors.smpp import SmppClient, SmppConfig
from pipeline.errors import TelexError
from pipeline.segments import Encoding

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


@pytest.mark.parametrize(
    ("raw", "base", "canonical"),
    [("00000A1B2C", IdBase.HEX, "a1b2c"), ("A1B2C", IdBase.HEX, "a1b2c"),
     ("0xA1B2C", IdBase.HEX, "a1b2c"), ("662316", IdBase.DECIMAL, "a1b2c"),
     ("000662316", IdBase.DECIMAL, "a1b2c"), ("0", IdBase.DECIMAL, "0"),
     (" a1b2c\x00", IdBase.HEX, "a1b2c"),
     ("msg-7f3e", IdBase.HEX, "msg-7f3e"), ("12ab", IdBase.DECIMAL, "12ab"),
     ("wamid.HBgLMTIz==", IdBase.OPAQUE, "wamid.HBgLMTIz==")],
)
def test_normalise_message_id(raw: str, base: IdBase, canonical: str) -> None:
    """Numbers become lower-case hex without leading zeros; other ids are kept verbatim."""
    assert normalise_message_id(raw, base) == canonical


def test_hex_submit_ids_match_decimal_receipt_ids() -> None:
    """SMSC answers submit_sm in hex and reports receipts in decimal: same canonical id."""
    assert normalise_message_id("00C0FFEE", IdBase.HEX) == normalise_message_id(
        str(0xC0FFEE), IdBase.DECIMAL)


def test_decimal_submit_ids_match_hex_receipt_ids() -> None:
    """The other direction: decimal submit_sm_resp ids, hex receipt ids."""
    assert normalise_message_id("12648430", IdBase.DECIMAL) == normalise_message_id(
        "C0FFEE", IdBase.HEX)


def test_every_kind_is_classified() -> None:
    """One row per ErrorKind: the table is the single source of codes and retryability."""
    assert set(CLASSIFICATION) == set(ErrorKind)


@pytest.mark.parametrize(
    ("kind", "channel", "code", "retryable"),
    [(ErrorKind.THROTTLED, "sms", 30022, True), (ErrorKind.THROTTLED, "whatsapp", 63018, True),
     (ErrorKind.QUEUE_FULL, "sms", 30001, True), (ErrorKind.TIMEOUT, "sms", 30008, True),
     (ErrorKind.CONNECTION_LOST, "sms", 30008, True),
     (ErrorKind.SERVER_ERROR, "whatsapp", 30500, True),
     (ErrorKind.INVALID_DESTINATION, "sms", 21211, False),
     (ErrorKind.INVALID_DESTINATION, "whatsapp", 63024, False),
     (ErrorKind.REJECTED_CONTENT, "sms", 30007, False),
     (ErrorKind.OUTSIDE_WINDOW, "whatsapp", 63016, False),
     (ErrorKind.REJECTED, "sms", 30008, False)],
)
def test_connector_error_classification(kind: ErrorKind, channel: str, code: int,
                                        retryable: bool) -> None:
    """ConnectorError takes code and retryability from the table, per channel family."""
    err = ConnectorError(kind, "detail", channel=channel)
    assert isinstance(err, TelexError)
    assert (err.code, err.retryable, err.kind) == (code, retryable, kind)
    assert str(code) in str(err) and "detail" in str(err)


def test_submit_request_uses_the_billed_split() -> None:
    """Parts given by validation are sent as given; without them segment() decides."""
    req = SubmitRequest("m", "Telex", "+1", "ab", encoding=Encoding.GSM7, parts=["a", "b"])
    assert req.segmentation().parts == ["a", "b"]
    assert SubmitRequest("m", "Telex", "+1", "x" * 161).segmentation().segments == 2


def test_connectors_satisfy_the_protocol() -> None:
    """SmppClient and WhatsAppClient instances are instances of the Connector protocol."""
    smpp = SmppClient(SmppConfig("127.0.0.1", 1, "u", "p"))
    wa = WhatsAppClient(WhatsAppConfig("http://127.0.0.1:1", "1", "t"))
    assert isinstance(smpp, Connector) and isinstance(wa, Connector)


def test_secrets_stay_out_of_config_repr() -> None:
    """The SMPP password and the WhatsApp access token and app secret do not appear in their
    configs' repr."""
    assert "hunter2" not in repr(SmppConfig("h", 1, "u", "hunter2"))
    shown = repr(WhatsAppConfig("http://h", "1", "tok3n", app_secret="s3cr3t"))
    assert "tok3n" not in shown and "s3cr3t" not in shown


async def test_receipt_stream_is_bounded_and_ends_on_close() -> None:
    """offer() refuses when full (the connector then pushes back); close() ends iteration."""
    stream = ReceiptStream(maxsize=2)
    receipts = [Receipt("c", str(i), ReceiptStatus.SENT, "ACCEPTD", 0) for i in range(3)]
    assert [stream.offer(r) for r in receipts] == [True, True, False]
    stream.close()
    assert [r.carrier_message_id async for r in stream] == ["0", "1"]
    assert not stream.offer(receipts[2])


def test_receipt_record_matches_the_avro_schema_fields() -> None:
    """to_record() has exactly the CarrierReceipt fields."""
    schema = json.loads((SCHEMAS / "carrier_receipt.avsc").read_text())
    record = Receipt("c", "1", ReceiptStatus.DELIVERED, "DELIVRD", 5).to_record()
    assert set(record) == {f["name"] for f in schema["fields"]}
    assert record["status"] == "delivered"


def test_every_classified_code_is_in_the_error_table():
    """Each code a connector can give a user is documented in pipeline.errors' one table."""
    from connectors.base import CLASSIFICATION
    from pipeline.errors import ERROR_CODES

    for c in CLASSIFICATION.values():
        assert c.sms_code in ERROR_CODES, c
        assert c.chat_code in ERROR_CODES, c
