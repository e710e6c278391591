"""Producing without dropping: the one place that handles a full local producer queue."""

from __future__ import annotations

from typing import Any

from confluent_kafka import Producer

__all__ = [
    "produce_waiting",
]


def produce_waiting(producer: Producer, topic: str, **kwargs: Any) -> None:
    """``producer.produce(topic, **kwargs)``; while librdkafka's local queue is full, serve
    delivery reports to make room instead of dropping or raising."""
    while True:
        try:
            producer.produce(topic, **kwargs)
            return
        except BufferError:
            producer.poll(0.01)
