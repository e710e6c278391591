"""A SubmitRequest as the submit_sm PDUs that carry it: the pure half of sending over SMPP.

Refusals found here (wrong channel, no text, text outside its alphabet, overlong addresses)
are permanent ConnectorErrors raised before anything reaches the SMSC.
"""

from __future__ import annotations

from connectors.base import ConnectorError, ErrorKind, SubmitRequest
from connectors.smpp.encoding import address, encode_parts, relative_validity
from connectors.smpp.pdu import SubmitSm
from pipeline.errors import CodecError

_MAX_ADDR = 20  # source_addr and destination_addr are C-strings of at most 21 octets


def build_submit_sms(req: SubmitRequest, ref: int) -> list[SubmitSm]:
    """One submit_sm per part of ``req``; ``ref`` is the concatenation reference (0-255)."""
    if req.channel != "sms":
        raise ConnectorError(ErrorKind.REJECTED, f"SMPP cannot send {req.channel!r}")
    try:
        parts = encode_parts(req.segmentation(), ref)
        validity = relative_validity(req.validity_ms) if req.validity_ms else ""
    except CodecError as exc:
        raise ConnectorError(ErrorKind.REJECTED_CONTENT, str(exc)) from exc
    src_ton, src_npi, src = address(req.sender)
    dst_ton, dst_npi, dst = address(req.recipient)
    if not dst or len(dst) > _MAX_ADDR:
        raise ConnectorError(ErrorKind.INVALID_DESTINATION, "destination empty or too long")
    if len(src) > _MAX_ADDR:
        raise ConnectorError(ErrorKind.REJECTED, "source address over 20 characters")
    return [
        SubmitSm(source_addr_ton=src_ton, source_addr_npi=src_npi, source_addr=src,
                 dest_addr_ton=dst_ton, dest_addr_npi=dst_npi, destination_addr=dst,
                 esm_class=part.esm_class, data_coding=part.data_coding,
                 short_message=part.short_message, validity_period=validity,
                 registered_delivery=1 if req.registered_delivery else 0)
        for part in parts
    ]


def worst_error(errors: list[BaseException]) -> BaseException:
    """What a multipart submit raises: a non-connector error (a bug) first, then a permanent
    error (retrying the message cannot succeed), else the first retryable one."""
    for exc in errors:
        if not isinstance(exc, ConnectorError):
            return exc
    return next((e for e in errors if isinstance(e, ConnectorError) and not e.retryable),
                errors[0])
