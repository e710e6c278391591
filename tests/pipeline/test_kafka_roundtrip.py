"""Produce and consume on the real broker with headers and Avro values."""

from pipeline.codec import AvroCodec
from pipeline.settings import Settings
from tests.fixtures.samples import sample
from tests.fixtures.telex import produce, read_all


def test_avro_value_and_headers_survive_a_round_trip(topics: Settings):
    """A record produced with headers and an Avro value reads back identical."""
    codec = AvroCodec()
    record = sample("message_requested")
    produce(topics, "message-requested",
            [(record["message_id"], codec.encode("message_requested", record))],
            headers=[("traceparent", b"00-abc-def-01"), ("telex.test", b"\x00\xff")])
    [msg] = read_all(topics, "message-requested")
    assert msg.key().decode() == record["message_id"]
    assert codec.decode(msg.value(), expected="message_requested") == record
    assert msg.headers() == [("traceparent", b"00-abc-def-01"), ("telex.test", b"\x00\xff")]
