"""Quix Streams wiring shared by every stage.

A stage's decision function returns :class:`Out` records; the wiring here writes each one to its
topic with its own key and headers. Quix Streams' checkpoint then gives the commit protocol:
(1) produce outputs and state changelogs, (2) flush the producer and check every delivery,
(3) commit input offsets, (4) flush local state. Offsets are therefore committed only after the
outputs are durable on the broker (acks=all, idempotent producer): at-least-once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog
from quixstreams import Application
from quixstreams.context import message_context
from quixstreams.dataframe import StreamingDataFrame
from quixstreams.kafka.configuration import ConnectionConfig
from quixstreams.models import Topic
from quixstreams.models.serializers import SerializationContext, Serializer

from pipeline.runtime.deadletter import Provenance, counted, dead_letter_headers
from pipeline.settings import Settings
from pipeline.topics import admin_client, apply_topics, catalogue

Guarantee = Literal["at-least-once", "exactly-once"]

_log = structlog.get_logger("telex.runtime")


@dataclass(frozen=True, slots=True)
class Out:
    """One record a stage emits: destination (catalogue short name), key, Avro value, headers."""

    topic: str
    key: str
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)


class _OutSerializer(Serializer):
    """Takes the already-encoded bytes out of an :class:`Out` (stages encode with our codec)."""

    def __call__(self, value: Out, ctx: SerializationContext) -> bytes:
        return value.value


def make_app(
    settings: Settings,
    consumer_group: str,
    *,
    guarantee: Guarantee = "at-least-once",
    state_dir: str | None = None,
    loglevel: str = "WARNING",
    **kwargs: Any,
) -> Application:
    """A Quix Streams application configured from Telex settings.

    Topics come from the catalogue (created here if missing, idempotently) so Quix never creates
    one with its own defaults; only its changelog topics are left to it.
    """
    apply_topics(admin_client(settings), catalogue(settings))
    return Application(
        broker_address=ConnectionConfig.from_librdkafka_dict(settings.kafka_config()),
        consumer_group=consumer_group,
        auto_offset_reset="earliest",
        commit_interval=settings.commit_interval_s,
        processing_guarantee=guarantee,
        state_dir=state_dir or settings.state_dir,
        loglevel=loglevel,  # type: ignore[arg-type]
        producer_extra_config={"linger.ms": 5, "compression.type": "lz4"},
        consumer_extra_config={
            k: v for k, v in settings.consumer_config(consumer_group).items()
            if k in ("fetch.wait.max.ms", "session.timeout.ms", "heartbeat.interval.ms")
        },
        **kwargs,
    )


def input_topic(app: Application, settings: Settings, name: str) -> Topic:
    """A catalogue topic read as raw bytes: decoding is the stage's job, inside its guard."""
    return app.topic(
        settings.topic(name), key_deserializer="str", value_deserializer="bytes",
        key_serializer="str", value_serializer="bytes",
    )


def output_topics(
    app: Application, settings: Settings, names: Sequence[str]
) -> dict[str, Topic]:
    return {
        name: app.topic(
            settings.topic(name), key_serializer="str", value_serializer=_OutSerializer(),
            key_deserializer="str", value_deserializer="bytes",
        )
        for name in names
    }


def route_outputs(sdf: StreamingDataFrame, topics: Mapping[str, Topic]) -> StreamingDataFrame:
    """Write every :class:`Out` row to its topic with its key and headers.

    Outputs are timestamped when they are produced (not with their input's time), so a
    downstream reader sees when each stage released a record.
    """

    def pick(value: Out, key: Any, ts: int, headers: Any) -> Topic:
        return topics[value.topic]

    sdf = sdf.set_headers(lambda value, key, ts, headers: value.headers)
    sdf = sdf.set_timestamp(lambda value, key, ts, headers: int(time.time() * 1000))
    return sdf.to_topic(pick, key=lambda value: value.key)


def keyed_stage(app: Application, settings: Settings, in_topic: str,
                process: Callable[..., list[Out]], out_topics: Sequence[str]) -> None:
    """Wire the usual stage: one input topic, ``process(value, key, timestamp, headers,
    state)`` per record with per-key state, its :class:`Out` rows routed to their topics."""
    sdf = app.dataframe(input_topic(app, settings, in_topic))
    sdf = sdf.apply(process, stateful=True, metadata=True, expand=True)
    route_outputs(sdf, output_topics(app, settings, out_topics))


def dead_letter_out(stage: str, value: bytes | None, key: str | None, timestamp: int,
                    headers: Any, exc: Exception, now_ms: float,
                    message_id: str | None = None) -> Out:
    """The dead-letter record of the record a Quix stage is processing: original bytes and
    key, provenance headers from the message context, counted and logged."""
    ctx = message_context()
    prov = Provenance(ctx.topic, ctx.partition, ctx.offset, timestamp)
    counted(stage, exc, ctx.topic, ctx.partition, ctx.offset)
    return Out(f"dlq-{stage}", key or "", value or b"",
               dead_letter_headers(headers, prov, stage, exc, int(now_ms), message_id))
