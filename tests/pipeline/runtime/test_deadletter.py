"""Dead-letter provenance headers."""

from pipeline.headers import H_FAILURE_COUNT, H_FIRST_FAILURE, H_ORIGINAL_OFFSET, H_ORIGINAL_TOPIC
from pipeline.runtime.deadletter import Provenance, dead_letter_headers, header_dict


def test_first_failure_records_provenance():
    """A first failure records where the record was and why it failed."""
    h = header_dict(dead_letter_headers(
        [("traceparent", b"00-abc")], Provenance("t.in", 3, 42, 1000), "ingest",
        ValueError("bad"), now_ms=5000, message_id="TX1"))
    assert h[H_ORIGINAL_TOPIC] == "t.in" and h[H_ORIGINAL_OFFSET] == "42"
    assert h["telex.dlq.error_class"] == "ValueError" and h["telex.dlq.error_message"] == "bad"
    assert h[H_FIRST_FAILURE] == "5000" and h[H_FAILURE_COUNT] == "1"
    assert h["traceparent"] == "00-abc"


def test_second_failure_keeps_first_origin_and_time():
    """A replayed record that fails again keeps its original provenance and counts failures."""
    first = dead_letter_headers(None, Provenance("t.in", 3, 42, 1000), "ingest",
                                ValueError("bad"), now_ms=5000)
    again = header_dict(dead_letter_headers(first, Provenance("t.in", 0, 7, 9000), "ingest",
                                            KeyError("worse"), now_ms=9999))
    assert again[H_ORIGINAL_OFFSET] == "42" and again[H_FIRST_FAILURE] == "5000"
    assert again[H_FAILURE_COUNT] == "2" and again["telex.dlq.error_class"] == "KeyError"
