"""Regression: every Telex producer partitions keys as the Quix Streams stages do."""

from quixstreams.kafka import Producer as QuixProducer
from quixstreams.kafka.configuration import ConnectionConfig

from pipeline.settings import Settings
from pipeline.topics import TopicSpec, admin_client, apply_topics
from tests.fixtures.telex import produce, read_all


def test_plain_and_quix_producers_put_a_key_on_the_same_partition(settings: Settings):
    """A key written by the SDK/scheduler/dispatch producers and by a Quix stage lands on one
    partition, so buckets keep one owner and a message's records keep their order."""
    name = settings.topic("copartition-probe")
    apply_topics(admin_client(settings), [TopicSpec(name, "stream", 6, 1, {})])
    keys = [f"sms:+1415555{i:04d}" for i in range(60)] + [f"TX{i:032x}" for i in range(60)]
    produce(settings, "copartition-probe", [(k, b"plain") for k in keys])
    quix = QuixProducer(ConnectionConfig.from_librdkafka_dict(settings.kafka_config()))
    for k in keys:
        quix.produce(name, key=k.encode(), value=b"quix")
    assert quix.flush(30) == 0
    where: dict[tuple[str, bytes], int] = {}
    for m in read_all(settings, "copartition-probe"):
        where[(m.key().decode(), m.value())] = m.partition()
    assert len(where) == 2 * len(keys)
    mismatched = [k for k in keys if where[(k, b"plain")] != where[(k, b"quix")]]
    assert mismatched == []
