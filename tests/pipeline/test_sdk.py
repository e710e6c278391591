"""Producer SDK against the real broker."""

from __future__ import annotations

import asyncio
import socket

import pytest

from pipeline.codec import AvroCodec
from pipeline.sdk import (
    OutboundMessage,
    PublishError,
    RequestRejected,
    TelexProducer,
    message_id_for,
)
from pipeline.settings import Settings, load_settings
from tests.fixtures.telex import read_all

CODEC = AvroCodec()


def message(key: str | None = "order-42", **kw: object) -> OutboundMessage:
    base: dict[str, object] = dict(account_id="acct-1", channel="sms", sender="+14155550100",
                                   recipient="+14155550123", body="hi", idempotency_key=key)
    return OutboundMessage(**(base | kw))  # type: ignore[arg-type]


def test_message_id_is_deterministic_per_account_and_key():
    """The same account and key give the same id; another account or key does not."""
    assert message_id_for("a", "k") == message_id_for("a", "k")
    assert message_id_for("a", "k") != message_id_for("b", "k")
    assert message_id_for("a", "k") != message_id_for("a", "k2")
    assert message_id_for("a", "k").startswith("TX") and len(message_id_for("a", "k")) == 34


def test_send_returns_id_of_a_durable_keyed_record(topics: Settings):
    """send() returns once acknowledged; the record is keyed by its message id."""
    with TelexProducer(topics) as producer:
        mid = producer.send(message(trace_id="trace-1"))
    [record] = read_all(topics, "message-requested")
    value = CODEC.decode(record.value(), expected="message_requested")
    assert record.key().decode() == mid == value["message_id"]
    assert value["idempotency_key"] == "order-42" and value["trace_id"] == "trace-1"


def test_batch_and_async_variants_publish_everything(topics: Settings):
    """send_batch and send_async publish every request they were given."""
    with TelexProducer(topics) as producer:
        ids = producer.send_batch([message(f"b{i}") for i in range(50)])

        async def send_some() -> list[str]:
            return await asyncio.gather(*(producer.send_async(message(f"a{i}"))
                                          for i in range(20)))

        ids += asyncio.run(send_some())
    keys = {m.key().decode() for m in read_all(topics, "message-requested")}
    assert keys == set(ids) and len(ids) == 70


def test_locally_invalid_request_raises_and_publishes_nothing(topics: Settings):
    """A request the SDK can already refuse raises RequestRejected with its code."""
    with TelexProducer(topics) as producer, pytest.raises(RequestRejected) as info:
        producer.send_batch([message("ok"), message("bad", recipient="12")])
    assert info.value.code == 21211
    assert read_all(topics, "message-requested") == []


def test_broker_outage_raises_publish_error():
    """With no broker, send() raises PublishError after its timeout; nothing is dropped
    silently."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    producer = TelexProducer(load_settings(kafka_bootstrap_servers=dead), delivery_timeout_s=2)
    with pytest.raises(PublishError) as info:
        producer.send(message())
    assert info.value.message_id == message_id_for("acct-1", "order-42")
