"""SMPP 3.4 PDU codec against byte layouts written by hand from the specification."""

from __future__ import annotations

import asyncio

import pytest

from connectors.smpp import pdu as p


def hx(text: str) -> bytes:
    """Bytes from spaced hex, so expected layouts read like the specification's tables."""
    return bytes.fromhex(text)


def test_enquire_link_is_a_bare_header() -> None:
    """enquire_link: command_length 16, command_id 0x15, status 0, sequence (§4.11.1)."""
    assert p.encode(p.EnquireLink(sequence=1)) == hx("00000010 00000015 00000000 00000001")
    resp = p.decode(hx("00000010 80000015 00000000 00000001"))
    assert isinstance(resp, p.EnquireLinkResp) and resp.sequence == 1


def test_unbind_and_resp_layouts() -> None:
    """unbind 0x06 and unbind_resp 0x80000006 have no body (§4.2)."""
    assert p.encode(p.Unbind(sequence=9)) == hx("00000010 00000006 00000000 00000009")
    assert p.encode(p.UnbindResp(sequence=9)) == hx("00000010 80000006 00000000 00000009")


def test_generic_nack_carries_status_and_sequence() -> None:
    """generic_nack 0x80000000 echoes the offending sequence with an error status (§4.3)."""
    raw = hx("00000010 80000000 00000003 00000007")
    nack = p.decode(raw)
    assert isinstance(nack, p.GenericNack)
    assert (nack.status, nack.sequence) == (p.Status.ESME_RINVCMDID, 7)
    assert p.encode(nack) == raw


def test_bind_transceiver_layout() -> None:
    """bind_transceiver: system_id, password, system_type C-strings, version 0x34, TON, NPI,
    address_range (§4.1.5)."""
    expected = hx(
        "00000022 00000009 00000000 00000001"  # length 34, bind_transceiver, ROK, seq 1
        "74656c657800"  # system_id "telex"
        "73656372657400"  # password "secret"
        "00"  # system_type ""
        "34 00 00"  # interface_version 3.4, addr_ton, addr_npi
        "00"  # address_range ""
    )
    bind = p.BindTransceiver(sequence=1, system_id="telex", password="secret")
    assert p.encode(bind) == expected
    assert p.decode(expected) == bind


def test_bind_transceiver_resp_with_interface_version_tlv() -> None:
    """bind_transceiver_resp: system_id then the optional sc_interface_version TLV (§4.1.6)."""
    raw = hx("0000001A 80000009 00000000 00000001" "534D534300" "0210 0001 34")
    resp = p.decode(raw)
    assert isinstance(resp, p.BindTransceiverResp)
    assert resp.system_id == "SMSC"
    assert resp.tlvs == {p.Tag.SC_INTERFACE_VERSION: b"\x34"}
    assert p.encode(resp) == raw


def test_submit_sm_layout() -> None:
    """submit_sm mandatory parameters in specification order (§4.4.1)."""
    expected = hx(
        "00000036 00000004 00000000 00000002"  # length 54, submit_sm, ROK, seq 2
        "00"  # service_type ""
        "05 00" "54656c657800"  # source TON alphanumeric, NPI unknown, "Telex"
        "01 01" "313431353535353031323300"  # dest TON international, NPI E.164, "14155550123"
        "00 00 00"  # esm_class, protocol_id, priority_flag
        "00" "00"  # schedule_delivery_time "", validity_period ""
        "01 00 00 00"  # registered_delivery, replace_if_present, data_coding, sm_default_msg_id
        "05" "68656c6c6f"  # sm_length 5, "hello"
    )
    sm = p.SubmitSm(sequence=2, source_addr_ton=5, source_addr="Telex", dest_addr_ton=1,
                    dest_addr_npi=1, destination_addr="14155550123", registered_delivery=1,
                    short_message=b"hello")
    assert p.encode(sm) == expected
    assert p.decode(expected) == sm


def test_submit_sm_resp_layout() -> None:
    """submit_sm_resp: message_id C-string (§4.4.2)."""
    raw = hx("00000015 80000004 00000000 00000002" "3141324200")
    resp = p.decode(raw)
    assert isinstance(resp, p.SubmitSmResp) and resp.message_id == "1A2B"
    assert p.encode(resp) == raw


def test_failed_submit_sm_resp_has_no_body() -> None:
    """A non-ROK submit_sm_resp omits message_id; both directions accept that (§4.4.2)."""
    raw = hx("00000010 80000004 00000058 00000002")
    resp = p.decode(raw)
    assert isinstance(resp, p.SubmitSmResp)
    assert (resp.status, resp.message_id) == (p.Status.ESME_RTHROTTLED, "")
    assert p.encode(p.SubmitSmResp(sequence=2, status=0x58, message_id="ignored")) == raw


def test_deliver_sm_receipt_with_tlvs() -> None:
    """deliver_sm with receipted_message_id (0x001E) and message_state (0x0427) TLVs."""
    raw = hx(
        "00000039 00000005 00000000 00000003"
        "00" "01 01" "313233343500"  # service_type, source 12345
        "05 00" "54656c657800"  # destination "Telex"
        "04 00 00" "00" "00" "00 00 00 00"  # esm_class receipt, ..., data_coding 0
        "00"  # sm_length 0
        "001E 0005 3141324200"  # receipted_message_id "1A2B"
        "0427 0001 02"  # message_state DELIVERED
    )
    dsm = p.decode(raw)
    assert isinstance(dsm, p.DeliverSm)
    assert dsm.esm_class == 0x04 and dsm.source_addr == "12345"
    assert p.tlv_str(dsm, p.Tag.RECEIPTED_MESSAGE_ID) == "1A2B"
    assert p.tlv_int(dsm, p.Tag.MESSAGE_STATE) == 2
    assert p.encode(dsm) == raw


def test_sar_tlvs_encode_with_their_widths() -> None:
    """sar_msg_ref_num is 2 octets, sar_total_segments and sar_segment_seqnum 1 (§5.3.2.22-24)."""
    sm = p.SubmitSm(tlvs={p.Tag.SAR_MSG_REF_NUM: p.tlv_u16(0x1234),
                          p.Tag.SAR_TOTAL_SEGMENTS: p.tlv_u8(3),
                          p.Tag.SAR_SEGMENT_SEQNUM: p.tlv_u8(1)})
    raw = p.encode(sm)
    assert raw.endswith(hx("020C 0002 1234" "020E 0001 03" "020F 0001 01"))
    back = p.decode(raw)
    assert p.tlv_int(back, p.Tag.SAR_MSG_REF_NUM) == 0x1234


def test_message_payload_tlv_round_trips() -> None:
    """message_payload 0x0424 carries long content with an empty short_message."""
    body = b"x" * 1000
    sm = p.SubmitSm(tlvs={p.Tag.MESSAGE_PAYLOAD: body})
    assert p.decode(p.encode(sm)).tlvs[p.Tag.MESSAGE_PAYLOAD] == body


def test_unknown_command_decodes_for_a_nack() -> None:
    """An unimplemented command (query_sm 0x03) decodes to UnknownPdu, keeping its sequence."""
    unknown = p.decode(hx("00000012 00000003 00000000 0000002A 4142"))
    assert isinstance(unknown, p.UnknownPdu)
    assert (unknown.raw_command_id, unknown.sequence, unknown.body) == (3, 42, b"AB")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (hx("00000011 00000015 00000000 00000001"), "command_length"),
        (hx("00000015 00000009 00000000 00000001 74656c6578"), "NUL-terminated"),
        (hx("00000015 80000004 00000000 00000001 00 0424 0010"), "TLV"),
        (hx("0000000F 00000015 00000000 000000"), "shorter than its header"),
    ],
)
def test_malformed_pdus_are_rejected(raw: bytes, reason: str) -> None:
    """Length mismatches, unterminated strings and overlong TLVs raise PduError."""
    with pytest.raises(p.PduError, match=reason):
        p.decode(raw)


def test_fields_over_their_maximum_size_do_not_encode() -> None:
    """system_id is at most 15 characters + NUL; short_message at most 254 octets."""
    with pytest.raises(p.PduError, match="system_id"):
        p.encode(p.BindTransceiver(system_id="x" * 16))
    with pytest.raises(p.PduError, match="short_message"):
        p.encode(p.SubmitSm(short_message=b"x" * 255))


async def test_read_pdu_frames_a_stream() -> None:
    """read_pdu splits back-to-back PDUs and refuses an absurd command_length."""
    reader = asyncio.StreamReader()
    reader.feed_data(p.encode(p.EnquireLink(sequence=1)) + p.encode(p.Unbind(sequence=2)))
    reader.feed_data(hx("7FFFFFFF"))
    assert isinstance(await p.read_pdu(reader), p.EnquireLink)
    assert isinstance(await p.read_pdu(reader), p.Unbind)
    with pytest.raises(p.PduError, match="outside"):
        await p.read_pdu(reader)
