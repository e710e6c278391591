"""Regression: every Telex producer partitions a key as Kafka's Java client does (murmur2)."""

from confluent_kafka import Producer

from pipeline.ops.keyhash import partition_for
from pipeline.settings import Settings
from pipeline.topics import TopicSpec, admin_client, apply_topics
from tests.fixtures.telex import read_all


def test_sdk_and_runtime_producers_put_a_key_on_its_murmur2_partition(settings: Settings):
    """A key written by the SDK/scheduler/dispatch producer and by the stage runtime's producer
    lands on the partition Java's murmur2 partitioner names, so buckets keep one owner and a
    message's records keep their order whichever process writes them."""
    name = settings.topic("copartition-probe")
    apply_topics(admin_client(settings), [TopicSpec(name, "stream", 6, 1, {})])
    keys = [f"sms:+1415555{i:04d}" for i in range(60)] + [f"TX{i:032x}" for i in range(60)]
    for label, conf in (("sdk", settings.producer_config()),
                        ("runtime", settings.runtime_producer_config())):
        producer = Producer(conf)
        for k in keys:
            producer.produce(name, key=k.encode(), value=label.encode())
        assert producer.flush(30) == 0
    where = {(m.key().decode(), m.value().decode()): m.partition()
             for m in read_all(settings, "copartition-probe")}
    assert len(where) == 2 * len(keys)
    mismatched = [(k, label) for k in keys for label in ("sdk", "runtime")
                  if where[(k, label)] != partition_for(k, 6)]
    assert mismatched == []
