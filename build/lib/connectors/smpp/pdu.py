"""SMPP 3.4 PDUs: one dataclass per operation we speak, one codec driven by their layouts.

Every PDU is a 16-byte header (command_length, command_id, command_status, sequence_number,
big-endian unsigned 32-bit) followed by mandatory parameters in the order the specification
lists them and then optional TLVs (tag u16, length u16, value). Layouts are data
(``_LAYOUT``), so encoder and decoder cannot disagree about field order.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar, Literal

from pipeline.errors import CodecError

HEADER = struct.Struct(">IIII")
MAX_PDU = 65_536  # message_payload may hold up to 64 KiB; anything larger is a broken peer


class PduError(CodecError):
    """Bytes from the peer do not form a valid SMPP 3.4 PDU."""


class CommandId(IntEnum):
    GENERIC_NACK = 0x80000000
    BIND_RECEIVER = 0x00000001
    BIND_RECEIVER_RESP = 0x80000001
    BIND_TRANSMITTER = 0x00000002
    BIND_TRANSMITTER_RESP = 0x80000002
    SUBMIT_SM = 0x00000004
    SUBMIT_SM_RESP = 0x80000004
    DELIVER_SM = 0x00000005
    DELIVER_SM_RESP = 0x80000005
    UNBIND = 0x00000006
    UNBIND_RESP = 0x80000006
    BIND_TRANSCEIVER = 0x00000009
    BIND_TRANSCEIVER_RESP = 0x80000009
    ENQUIRE_LINK = 0x00000015
    ENQUIRE_LINK_RESP = 0x80000015


class Status(IntEnum):
    """command_status values (SMPP 3.4 §5.1.3) that Telex names."""

    ESME_ROK = 0x00
    ESME_RINVMSGLEN = 0x01
    ESME_RINVCMDLEN = 0x02
    ESME_RINVCMDID = 0x03
    ESME_RINVBNDSTS = 0x04
    ESME_RALYBND = 0x05
    ESME_RSYSERR = 0x08
    ESME_RINVSRCADR = 0x0A
    ESME_RINVDSTADR = 0x0B
    ESME_RINVMSGID = 0x0C
    ESME_RBINDFAIL = 0x0D
    ESME_RINVPASWD = 0x0E
    ESME_RINVSYSID = 0x0F
    ESME_RMSGQFUL = 0x14
    ESME_RINVESMCLASS = 0x43
    ESME_RSUBMITFAIL = 0x45
    ESME_RTHROTTLED = 0x58
    ESME_RINVSCHED = 0x61
    ESME_RINVEXPIRY = 0x62
    ESME_RX_T_APPN = 0x64
    ESME_RX_P_APPN = 0x65
    ESME_RX_R_APPN = 0x66
    ESME_RDELIVERYFAILURE = 0xFE
    ESME_RUNKNOWNERR = 0xFF


def status_name(code: int) -> str:
    try:
        return Status(code).name
    except ValueError:
        return f"0x{code:08X}"


class Tag(IntEnum):
    """Optional parameter tags (SMPP 3.4 §5.3.2)."""

    RECEIPTED_MESSAGE_ID = 0x001E
    USER_MESSAGE_REFERENCE = 0x0204
    SAR_MSG_REF_NUM = 0x020C
    SAR_TOTAL_SEGMENTS = 0x020E
    SAR_SEGMENT_SEQNUM = 0x020F
    SC_INTERFACE_VERSION = 0x0210
    NETWORK_ERROR_CODE = 0x0423
    MESSAGE_PAYLOAD = 0x0424
    MESSAGE_STATE = 0x0427


# A mandatory parameter: name, kind, and for C-octet strings the maximum size including the NUL.
_Kind = Literal["c", "u8", "sm"]
_Field = tuple[str, _Kind, int]


@dataclass(kw_only=True, slots=True)
class Pdu:
    command_id: ClassVar[int]
    _LAYOUT: ClassVar[tuple[_Field, ...]] = ()

    sequence: int = 0
    status: int = 0
    tlvs: dict[int, bytes] = field(default_factory=dict)

    @property
    def is_response(self) -> bool:
        return bool(self.command_id & 0x80000000)


@dataclass(kw_only=True, slots=True)
class _Bind(Pdu):
    _LAYOUT = (("system_id", "c", 16), ("password", "c", 9), ("system_type", "c", 13),
               ("interface_version", "u8", 0), ("addr_ton", "u8", 0), ("addr_npi", "u8", 0),
               ("address_range", "c", 41))
    system_id: str = ""
    password: str = ""
    system_type: str = ""
    interface_version: int = 0x34
    addr_ton: int = 0
    addr_npi: int = 0
    address_range: str = ""


@dataclass(kw_only=True, slots=True)
class BindTransceiver(_Bind):
    command_id = CommandId.BIND_TRANSCEIVER


@dataclass(kw_only=True, slots=True)
class BindTransmitter(_Bind):
    command_id = CommandId.BIND_TRANSMITTER


@dataclass(kw_only=True, slots=True)
class BindReceiver(_Bind):
    command_id = CommandId.BIND_RECEIVER


@dataclass(kw_only=True, slots=True)
class _BindResp(Pdu):
    _LAYOUT = (("system_id", "c", 16),)
    system_id: str = ""


@dataclass(kw_only=True, slots=True)
class BindTransceiverResp(_BindResp):
    command_id = CommandId.BIND_TRANSCEIVER_RESP


@dataclass(kw_only=True, slots=True)
class BindTransmitterResp(_BindResp):
    command_id = CommandId.BIND_TRANSMITTER_RESP


@dataclass(kw_only=True, slots=True)
class BindReceiverResp(_BindResp):
    command_id = CommandId.BIND_RECEIVER_RESP


@dataclass(kw_only=True, slots=True)
class _ShortMessage(Pdu):
    _LAYOUT = (("service_type", "c", 6), ("source_addr_ton", "u8", 0),
               ("source_addr_npi", "u8", 0), ("source_addr", "c", 21),
               ("dest_addr_ton", "u8", 0), ("dest_addr_npi", "u8", 0),
               ("destination_addr", "c", 21), ("esm_class", "u8", 0), ("protocol_id", "u8", 0),
               ("priority_flag", "u8", 0), ("schedule_delivery_time", "c", 17),
               ("validity_period", "c", 17), ("registered_delivery", "u8", 0),
               ("replace_if_present_flag", "u8", 0), ("data_coding", "u8", 0),
               ("sm_default_msg_id", "u8", 0), ("short_message", "sm", 254))
    service_type: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""
    dest_addr_ton: int = 0
    dest_addr_npi: int = 0
    destination_addr: str = ""
    esm_class: int = 0
    protocol_id: int = 0
    priority_flag: int = 0
    schedule_delivery_time: str = ""
    validity_period: str = ""
    registered_delivery: int = 0
    replace_if_present_flag: int = 0
    data_coding: int = 0
    sm_default_msg_id: int = 0
    short_message: bytes = b""


@dataclass(kw_only=True, slots=True)
class SubmitSm(_ShortMessage):
    command_id = CommandId.SUBMIT_SM


@dataclass(kw_only=True, slots=True)
class DeliverSm(_ShortMessage):
    command_id = CommandId.DELIVER_SM


@dataclass(kw_only=True, slots=True)
class SubmitSmResp(Pdu):
    command_id = CommandId.SUBMIT_SM_RESP
    _LAYOUT = (("message_id", "c", 65),)
    message_id: str = ""


@dataclass(kw_only=True, slots=True)
class DeliverSmResp(Pdu):
    command_id = CommandId.DELIVER_SM_RESP
    _LAYOUT = (("message_id", "c", 65),)  # unused by SMPP 3.4; always the empty string
    message_id: str = ""


@dataclass(kw_only=True, slots=True)
class EnquireLink(Pdu):
    command_id = CommandId.ENQUIRE_LINK


@dataclass(kw_only=True, slots=True)
class EnquireLinkResp(Pdu):
    command_id = CommandId.ENQUIRE_LINK_RESP


@dataclass(kw_only=True, slots=True)
class Unbind(Pdu):
    command_id = CommandId.UNBIND


@dataclass(kw_only=True, slots=True)
class UnbindResp(Pdu):
    command_id = CommandId.UNBIND_RESP


@dataclass(kw_only=True, slots=True)
class GenericNack(Pdu):
    command_id = CommandId.GENERIC_NACK


@dataclass(kw_only=True, slots=True)
class UnknownPdu(Pdu):
    """A command we do not implement; the session answers it with generic_nack."""

    command_id = 0
    raw_command_id: int = 0
    body: bytes = b""


_TYPES: dict[int, type[Pdu]] = {
    cls.command_id: cls
    for cls in (BindTransceiver, BindTransmitter, BindReceiver, BindTransceiverResp,
                BindTransmitterResp, BindReceiverResp, SubmitSm, DeliverSm, SubmitSmResp,
                DeliverSmResp, EnquireLink, EnquireLinkResp, Unbind, UnbindResp, GenericNack)
}

# Which command answers which request, for replies and generic_nack decisions.
RESPONSE_OF: dict[int, type[Pdu]] = {
    CommandId.BIND_TRANSCEIVER: BindTransceiverResp,
    CommandId.BIND_TRANSMITTER: BindTransmitterResp,
    CommandId.BIND_RECEIVER: BindReceiverResp,
    CommandId.SUBMIT_SM: SubmitSmResp,
    CommandId.DELIVER_SM: DeliverSmResp,
    CommandId.ENQUIRE_LINK: EnquireLinkResp,
    CommandId.UNBIND: UnbindResp,
}


def encode(pdu: Pdu) -> bytes:
    """Wire bytes of ``pdu``; raises PduError when a field does not fit its maximum size."""
    body = bytearray()
    if isinstance(pdu, UnknownPdu):
        command_id, body[:] = pdu.raw_command_id, pdu.body
    else:
        command_id = pdu.command_id
        # A failed response carries no body (SMPP 3.4 §4.4.2: "returned only if ... ESME_ROK").
        if not (pdu.is_response and pdu.status):
            _encode_fields(pdu, body)
        for tag, value in pdu.tlvs.items():
            body += struct.pack(">HH", tag, len(value))
            body += value
    return HEADER.pack(16 + len(body), command_id, pdu.status, pdu.sequence) + body


def _encode_fields(pdu: Pdu, out: bytearray) -> None:
    for name, kind, size in pdu._LAYOUT:
        value = getattr(pdu, name)
        if kind == "u8":
            out.append(value)
        elif kind == "c":
            raw = value.encode("latin-1")
            if len(raw) >= size or b"\x00" in raw:
                raise PduError(f"{name} does not fit a C-octet string of {size} octets")
            out += raw
            out.append(0)
        else:
            if len(value) > size:
                raise PduError(f"short_message is {len(value)} octets; the limit is {size}")
            out.append(len(value))
            out += value


def decode(frame: bytes) -> Pdu:
    """The PDU in ``frame`` (header included); raises PduError on malformed input."""
    if len(frame) < 16:
        raise PduError(f"PDU of {len(frame)} octets is shorter than its header")
    length, command_id, status, sequence = HEADER.unpack_from(frame)
    if length != len(frame):
        raise PduError(f"command_length {length} but {len(frame)} octets")
    cls = _TYPES.get(command_id)
    if cls is None:
        return UnknownPdu(sequence=sequence, status=status, raw_command_id=command_id,
                          body=bytes(frame[16:]))
    values: dict[str, str | int | bytes] = {}
    offset = 16
    for name, kind, size in cls._LAYOUT:
        if offset == length and command_id & 0x80000000:
            break  # error responses (and some lax peers) omit the body
        if offset >= length:
            raise PduError(f"{cls.__name__} truncated before {name}")
        if kind == "u8":
            values[name] = frame[offset]
            offset += 1
        elif kind == "c":
            end = frame.find(b"\x00", offset, min(offset + size, length))
            if end < 0:
                raise PduError(f"{name} is not a NUL-terminated string of at most {size} octets")
            values[name] = frame[offset:end].decode("latin-1")
            offset = end + 1
        else:
            sm_length = frame[offset]
            offset += 1
            if offset + sm_length > length:
                raise PduError("sm_length runs past the end of the PDU")
            values[name] = bytes(frame[offset:offset + sm_length])
            offset += sm_length
    tlvs: dict[int, bytes] = {}
    while offset < length:
        if offset + 4 > length:
            raise PduError("truncated TLV header")
        tag, size = struct.unpack_from(">HH", frame, offset)
        offset += 4
        if offset + size > length:
            raise PduError(f"TLV 0x{tag:04X} runs past the end of the PDU")
        tlvs[tag] = bytes(frame[offset:offset + size])
        offset += size
    return cls(sequence=sequence, status=status, tlvs=tlvs, **values)  # type: ignore[arg-type]


async def read_pdu(reader: asyncio.StreamReader) -> Pdu:
    """Next PDU from ``reader``; IncompleteReadError at a clean end of stream."""
    head = await reader.readexactly(4)
    (length,) = struct.unpack(">I", head)
    if not 16 <= length <= MAX_PDU:
        raise PduError(f"command_length {length} outside 16..{MAX_PDU}")
    return decode(head + await reader.readexactly(length - 4))


# TLV value helpers -------------------------------------------------------------------------

def tlv_u8(value: int) -> bytes:
    return bytes([value])


def tlv_u16(value: int) -> bytes:
    return struct.pack(">H", value)


def tlv_cstring(value: str) -> bytes:
    return value.encode("latin-1") + b"\x00"


def tlv_int(pdu: Pdu, tag: int) -> int | None:
    """Integer value of an optional parameter (any width), or None when absent or empty."""
    value = pdu.tlvs.get(tag)
    return int.from_bytes(value, "big") if value else None


def tlv_str(pdu: Pdu, tag: int) -> str | None:
    """C-octet-string value of an optional parameter, tolerating a missing NUL."""
    value = pdu.tlvs.get(tag)
    return None if value is None else value.split(b"\x00", 1)[0].decode("latin-1")
