"""partition_for agrees with Kafka's murmur2 partitioner: Java's test vectors, and where the
broker actually puts keys written by a Telex producer."""

from __future__ import annotations

import pytest

from pipeline.ops.keyhash import murmur2, partition_for
from pipeline.settings import Settings
from pipeline.topics import TopicSpec, admin_client, apply_topics
from tests.fixtures.telex import produce, read_all


@pytest.mark.parametrize(("data", "expected"), [
    # org.apache.kafka.common.utils.UtilsTest#testMurmur2
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
])
def test_murmur2_matches_the_java_client(data: bytes, expected: int):
    """murmur2 gives the Java client's values for its test vectors."""
    assert murmur2(data) == expected


def test_partition_for_refuses_a_topic_without_partitions():
    """partition_for with 0 partitions raises ValueError."""
    with pytest.raises(ValueError, match="at least one partition"):
        partition_for("TX1", 0)


def test_keys_land_where_partition_for_says(settings: Settings):
    """Message ids and bucket keys written by a Telex producer are on partition_for's
    partition, for 6 and 7 partitions."""
    for count in (6, 7):
        short = f"keyhash-probe-{count}"
        apply_topics(admin_client(settings),
                     [TopicSpec(settings.topic(short), "stream", count, 1, {})])
        keys = [f"TX{i:032x}" for i in range(50)] + [f"sms:+1415555{i:04d}" for i in range(50)]
        produce(settings, short, [(k, b"x") for k in keys])
        where = {m.key().decode(): m.partition() for m in read_all(settings, short)}
        assert len(where) == len(keys)
        assert {k: partition_for(k, count) for k in keys} == where
