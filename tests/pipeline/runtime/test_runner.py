"""The runner's batch handling without a broker (clients are created but never connect)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from pipeline.runtime.runner import StageRunner
from pipeline.runtime.stage import Input, Out, Record, Stage
from pipeline.runtime.store import Store
from pipeline.settings import load_settings


class _Msg:
    """The part of confluent_kafka.Message the runner reads."""

    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self._t, self._p, self._o = topic, partition, offset

    def error(self) -> None:
        return None

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b"v"

    def headers(self) -> None:
        return None

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def timestamp(self) -> tuple[int, int]:
        return (1, 0)


class _Seen(Stage):
    name = "seen"
    inputs = (Input("in"),)

    def __init__(self) -> None:
        self.records: list[Record] = []

    def process(self, records: Sequence[Record], stores: Mapping[tuple[str, int], Store],
                now_ms: int) -> list[Out]:
        self.records += records
        return []


def test_a_record_of_a_partition_revoked_during_the_poll_is_left_to_its_new_owner(
    tmp_path: Path
):
    """Regression (found by the pipeline benchmark when a second worker joined): a poll can
    return a record and revoke its partition in the same call; the runner must neither decide
    it (its store is gone: it was dead-lettered, i.e. lost) nor commit its offset."""
    settings = load_settings(kafka_bootstrap_servers="127.0.0.1:1", topic_prefix="t.",
                             state_dir=str(tmp_path))
    stage = _Seen()
    runner = StageRunner(settings, stage)
    runner._assigned = {("t.in", 0)}
    runner._process([_Msg("t.in", 0, 5), _Msg("t.in", 1, 9), _Msg("t.in", 0, 6)])
    assert [(r.partition, r.offset) for r in stage.records] == [(0, 5), (0, 6)]
    assert runner._positions == {("t.in", 0): 7}


def test_a_broker_call_is_retried_while_the_leader_is_not_elected():
    """Regression (seen restoring a just-created changelog): NOT_LEADER_FOR_PARTITION is
    retried until the call succeeds; a non-retriable error is raised at once."""
    from confluent_kafka import KafkaError, KafkaException

    from pipeline.broker_retry import retrying as _retrying

    calls = []

    def flaky() -> int:
        calls.append(1)
        if len(calls) < 3:
            raise KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION))
        return 42

    assert _retrying(flaky) == 42 and len(calls) == 3

    def denied() -> int:
        calls.append(1)
        raise KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))

    calls.clear()
    with pytest.raises(KafkaException):
        _retrying(denied)
    assert len(calls) == 1


class _Producer:
    """The part of confluent_kafka.Producer the runner's produce path uses."""

    def __init__(self) -> None:
        self.produced: list[tuple[str, str, bytes]] = []

    def produce(self, topic: str, value: bytes, key: str, **_: object) -> None:
        self.produced.append((topic, key, value))

    def poll(self, _timeout: float) -> int:
        return 0


class _Views(Stage):
    """Emits, per record, a history record and a view record of its key's running count."""

    name = "views"
    inputs = (Input("in"),)

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def process(self, records: Sequence[Record], stores: Mapping[tuple[str, int], Store],
                now_ms: int) -> list[Out]:
        outs = []
        for r in records:
            n = self.counts[r.value.decode()] = self.counts.get(r.value.decode(), 0) + 1
            outs += [Out("history", r.value.decode(), str(n).encode()),
                     Out("latest", r.value.decode(), str(n).encode(), view=True)]
        return outs


class _Keyed(_Msg):
    def __init__(self, offset: int, key: str) -> None:
        super().__init__("t.in", 0, offset)
        self._k = key

    def value(self) -> bytes:
        return self._k.encode()


def test_view_records_wait_for_the_checkpoint_and_only_each_keys_last_goes_out(
    tmp_path: Path
):
    """Every history record is produced with its batch; view records are held until the
    checkpoint step that produces them, and then only the last per key, in the order their
    keys were last set."""
    settings = load_settings(kafka_bootstrap_servers="127.0.0.1:1", topic_prefix="t.",
                             state_dir=str(tmp_path))
    runner = StageRunner(settings, _Views())
    producer = _Producer()
    runner._producer = producer  # type: ignore[assignment]
    runner._assigned = {("t.in", 0)}
    runner._process([_Keyed(0, "a"), _Keyed(1, "b"), _Keyed(2, "a")])
    runner._process([_Keyed(3, "c"), _Keyed(4, "b")])
    assert [p for p in producer.produced if p[0] == "t.latest"] == []
    assert len([p for p in producer.produced if p[0] == "t.history"]) == 5
    producer.produced.clear()
    runner._produce_views()
    assert producer.produced == [("t.latest", "a", b"2"), ("t.latest", "c", b"1"),
                                 ("t.latest", "b", b"2")]
    producer.produced.clear()
    runner._produce_views()  # nothing new since: nothing written again
    assert producer.produced == []
