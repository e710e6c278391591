"""SubmitRequest → submit_sm PDUs, and the refusals made before anything is sent."""

from __future__ import annotations

import pytest

from connectors.base import ConnectorError, ErrorKind, SubmitRequest
from connectors.smpp.submit import build_submit_sms, worst_error
from pipeline.segments import Encoding


def test_single_part_fields() -> None:
    """Addresses get TON/NPI, validity is relative time, registered_delivery asks for a receipt."""
    [sm] = build_submit_sms(SubmitRequest("m", "Telex", "+447700900123", "hi",
                                          validity_ms=600_000), ref=0)
    assert (sm.source_addr_ton, sm.source_addr, sm.dest_addr_ton, sm.dest_addr_npi,
            sm.destination_addr) == (5, "Telex", 1, 1, "447700900123")
    assert (sm.validity_period, sm.registered_delivery, sm.esm_class, sm.short_message) == (
        "000000001000000R", 1, 0, b"hi")


def test_no_receipt_requested() -> None:
    """registered_delivery=False gives a submit_sm with registered_delivery 0."""
    [sm] = build_submit_sms(SubmitRequest("m", "Telex", "+1555", "hi",
                                          registered_delivery=False), ref=0)
    assert sm.registered_delivery == 0


def test_billed_parts_are_sent_as_given() -> None:
    """Parts from validation drive the split, one submit_sm each, with a shared reference."""
    req = SubmitRequest("m", "Telex", "+1555", "abcd", encoding=Encoding.GSM7,
                        parts=["ab", "cd"])
    sms = build_submit_sms(req, ref=300)
    assert [sm.short_message for sm in sms] == [bytes.fromhex("050003 2C 02 01") + b"ab",
                                                bytes.fromhex("050003 2C 02 02") + b"cd"]


@pytest.mark.parametrize(
    ("req", "kind"),
    [(SubmitRequest("m", "Telex", "+1555", "hi", channel="whatsapp"), ErrorKind.REJECTED),
     (SubmitRequest("m", "Telex", "+1555", None), ErrorKind.REJECTED_CONTENT),
     (SubmitRequest("m", "Telex", "+1555", "ж", encoding=Encoding.GSM7, parts=["ж"]),
      ErrorKind.REJECTED_CONTENT),
     (SubmitRequest("m", "Telex", "+1" + "5" * 20, "hi"), ErrorKind.INVALID_DESTINATION),
     (SubmitRequest("m", "T" * 21, "+1555", "hi"), ErrorKind.REJECTED)],
)
def test_refusals_are_permanent(req: SubmitRequest, kind: ErrorKind) -> None:
    """Wrong channel, no text, text outside the billed alphabet, overlong addresses."""
    with pytest.raises(ConnectorError) as info:
        build_submit_sms(req, ref=0)
    assert info.value.kind is kind and not info.value.retryable


def test_worst_error_prefers_bugs_then_permanent() -> None:
    """A non-connector error (a bug) wins over any ConnectorError, a permanent one over a retryable
    one; a lone retryable error is returned as is."""
    throttled = ConnectorError(ErrorKind.THROTTLED, "x")
    rejected = ConnectorError(ErrorKind.REJECTED, "y")
    bug = KeyError("z")
    assert worst_error([throttled, rejected]) is rejected
    assert worst_error([throttled, bug, rejected]) is bug
    assert worst_error([throttled]) is throttled
