"""What `telex lag` and `telex health` read from the broker: consumer lag per stage, stage
liveness, dead-letter counts, disabled callback endpoints. Read-only; every call has a
deadline."""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from pipeline.codec import AvroCodec
from pipeline.errors import BrokerError
from pipeline.ops.topic_reader import read_from_start
from pipeline.runtime.registry import consuming, dead_letter_topics
from pipeline.settings import Settings
from pipeline.stages.callbacks import endpoints
from pipeline.stages.callbacks.endpoints import EndpointState

# Each stage's consumer group (after the prefix) and the topics it consumes.
STAGE_INPUTS: dict[str, tuple[str, ...]] = consuming()


@dataclass(frozen=True, slots=True)
class Lag:
    stage: str
    topic: str
    partition: int
    committed: int | None  # None: the group has committed nothing here yet
    end: int

    @property
    def lag(self) -> int:
        return self.end - (self.committed if self.committed is not None else 0)


def admin(settings: Settings, timeout: float) -> AdminClient:
    """An admin client that has reached the broker, or a BrokerError saying where it looked."""
    client = AdminClient({**settings.kafka_config(), "socket.connection.setup.timeout.ms":
                          int(timeout * 1000)})
    try:
        client.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise BrokerError(f"cannot reach Kafka at {settings.kafka_bootstrap_servers} within "
                          f"{timeout:g} s: {exc.args[0].str() if exc.args else exc}") from None
    return client


def _end_offsets(client: AdminClient, tps: list[TopicPartition], timeout: float
                 ) -> dict[tuple[str, int], int]:
    futures = client.list_offsets({tp: OffsetSpec.latest() for tp in tps},
                                  request_timeout=timeout)
    return {(tp.topic, tp.partition): fut.result(timeout).offset for tp, fut in futures.items()}


def consumer_lag(settings: Settings, timeout: float = 10.0) -> list[Lag]:
    """Committed offset, end offset and lag of every stage group on every input partition."""
    client = admin(settings, timeout)
    meta = client.list_topics(timeout=timeout).topics
    rows: list[Lag] = []
    for stage, inputs in STAGE_INPUTS.items():
        tps = [TopicPartition(settings.topic(t), p) for t in inputs
               if settings.topic(t) in meta for p in meta[settings.topic(t)].partitions]
        if not tps:
            continue
        ends = _end_offsets(client, tps, timeout)
        request = [ConsumerGroupTopicPartitions(settings.topic(stage), tps)]
        result = client.list_consumer_group_offsets(request, request_timeout=timeout)
        committed = {
            (tp.topic, tp.partition): (tp.offset if tp.offset >= 0 else None)
            for fut in result.values() for tp in fut.result(timeout).topic_partitions
        }
        rows += [Lag(stage, tp.topic.removeprefix(settings.topic_prefix), tp.partition,
                     committed.get((tp.topic, tp.partition)), ends[(tp.topic, tp.partition)])
                 for tp in tps]
    return rows


def stage_members(settings: Settings, timeout: float = 10.0) -> dict[str, int]:
    """Live members of each stage's consumer group (0: nobody is consuming)."""
    client = admin(settings, timeout)
    groups = [settings.topic(stage) for stage in STAGE_INPUTS]
    out: dict[str, int] = {}
    for group, fut in client.describe_consumer_groups(groups, request_timeout=timeout).items():
        try:
            out[group.removeprefix(settings.topic_prefix)] = len(fut.result(timeout).members)
        except KafkaException:
            out[group.removeprefix(settings.topic_prefix)] = 0
    return out


def dead_letters(settings: Settings, timeout: float = 10.0) -> dict[str, int]:
    """Records retained in each dead-letter topic (end minus start offsets)."""
    client = admin(settings, timeout)
    meta = client.list_topics(timeout=timeout).topics
    out: dict[str, int] = {}
    for name in dead_letter_topics():
        topic = settings.topic(name)
        if topic not in meta:
            continue
        tps = [TopicPartition(topic, p) for p in meta[topic].partitions]
        ends = _end_offsets(client, tps, timeout)
        starts = client.list_offsets({tp: OffsetSpec.earliest() for tp in tps},
                                     request_timeout=timeout)
        out[name] = sum(ends[(tp.topic, tp.partition)] - fut.result(timeout).offset
                                  for tp, fut in starts.items())
    return out


def disabled_endpoints(settings: Settings, timeout: float = 10.0) -> dict[str, EndpointState]:
    """Customer callback endpoint hosts disabled now: the latest ``callback-endpoints`` record
    per host, where it says disabled (``telex health``, ``telex callbacks``)."""
    codec = AvroCodec.from_settings(settings)
    latest: dict[str, EndpointState] = {}
    for msg in read_from_start(settings, settings.topic(endpoints.TOPIC), timeout=timeout):
        if msg.value() is not None:
            state = endpoints.decode(codec, msg.value())
            latest[state.host] = state
    return {h: s for h, s in latest.items() if s.state == endpoints.DISABLED}
