"""Log offsets for the SRE tools: a just-created topic's passing "not leader" is asked again."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from pipeline.errors import BrokerError
from pipeline.ops import offsets


class _Answer:
    def __init__(self, offset: int) -> None:
        self.offset = offset


class _Admin:
    """Answers list_offsets with ``errors`` first (one per call), then offset 7."""

    def __init__(self, errors: list[int]) -> None:
        self.errors = errors
        self.calls = 0

    def list_offsets(self, request: dict[TopicPartition, Any], request_timeout: float
                     ) -> dict[TopicPartition, Future[Any]]:
        self.calls += 1
        out: dict[TopicPartition, Future[Any]] = {}
        for tp in request:
            fut: Future[Any] = Future()
            if self.errors:
                fut.set_exception(KafkaException(KafkaError(self.errors.pop(0))))
            else:
                fut.set_result(_Answer(7))
            out[tp] = fut
        return out


def test_not_leader_yet_is_asked_again():
    """NOT_LEADER_FOR_PARTITION twice, then an answer: the offsets come back."""
    admin = _Admin([KafkaError.NOT_LEADER_FOR_PARTITION] * 2)
    assert offsets.log_offsets(admin, [("t", 0)], timeout=5) == {("t", 0): (7, 7)}  # type: ignore[arg-type]
    assert admin.calls == 4  # earliest: 3 calls; latest: 1


def test_a_refusal_is_a_broker_error_at_once():
    """An error asking again cannot fix (authorisation) is raised on the first answer."""
    admin = _Admin([KafkaError.TOPIC_AUTHORIZATION_FAILED])
    with pytest.raises(BrokerError, match=r"(?i)authorization failed"):
        offsets.log_offsets(admin, [("t", 0)], timeout=5)  # type: ignore[arg-type]
    assert admin.calls == 1
