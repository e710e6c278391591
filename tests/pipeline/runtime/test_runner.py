"""The runner's batch handling without a broker (clients are created but never connect)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition

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


def _settings(tmp_path: Path):  # type: ignore[no-untyped-def]
    return load_settings(kafka_bootstrap_servers="127.0.0.1:1", topic_prefix="t.",
                         state_dir=str(tmp_path))


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
    settings = _settings(tmp_path)
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


class _Holding(Stage):
    """A stage holding records across batches through the runner's hooks."""

    name = "holding"
    inputs = (Input("in"),)

    def __init__(self) -> None:
        self.floor: int | None = None
        self.wake_at: float | None = None
        self.woken: list[int] = []
        self.forgotten: list[tuple[str, int]] = []

    def process(self, records: Sequence[Record], stores: Mapping[tuple[str, int], Store],
                now_ms: int) -> list[Out]:
        return []

    def commit_floor(self, topic: str, partition: int) -> int | None:
        return self.floor

    def next_wake_ms(self) -> float | None:
        return self.wake_at

    def wake(self, now_ms: int, stores: Mapping[tuple[str, int], Store]) -> list[Out]:
        self.woken.append(now_ms)
        self.wake_at = None
        return [Out("out", "k", b"v")]

    def forget(self, partitions: Sequence[tuple[str, int]]) -> None:
        self.forgotten += partitions


class _Consumer:
    """The part of confluent_kafka.Consumer the runner's checkpoint and flow call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[str, int, int]]]] = []

    def _log(self, what: str, tps: list[TopicPartition]) -> None:
        self.calls.append((what, [(tp.topic, tp.partition, tp.offset) for tp in tps]))

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self._log("commit", offsets)

    def pause(self, tps: list[TopicPartition]) -> None:
        self._log("pause", tps)

    def resume(self, tps: list[TopicPartition]) -> None:
        self._log("resume", tps)

    def seek(self, tp: TopicPartition) -> None:
        self._log("seek", [tp])


class _Producer:
    def __init__(self) -> None:
        self.produced: list[str] = []

    def produce(self, topic: str, *_: object, **__: object) -> None:
        self.produced.append(topic)

    def poll(self, _timeout: float) -> int:
        return 0

    def flush(self, _timeout: float) -> int:
        return 0


class _Recorder:
    """The part of confluent_kafka.Producer the runner's produce path uses, recording
    (topic, key, value)."""

    def __init__(self) -> None:
        self.produced: list[tuple[str, str, bytes]] = []

    def produce(self, topic: str, value: bytes, key: str, *_: object, **__: object) -> None:
        self.produced.append((topic, key, value))

    def poll(self, _timeout: float) -> int:
        return 0


class _Failing(_Seen):
    def process(self, records: Sequence[Record], stores: Mapping[tuple[str, int], Store],
                now_ms: int) -> list[Out]:
        raise ValueError("decision failed")


def test_a_batch_whose_process_raises_is_not_committable(tmp_path: Path):
    """A batch's offsets become committable only once the stage decided it: a failed batch
    (e.g. dispatch's write-ahead barrier refused) must be read again, not committed on close."""
    runner = StageRunner(_settings(tmp_path), _Failing())
    runner._assigned = {("t.in", 0)}
    runner._positions = {("t.in", 0): 5}
    with pytest.raises(ValueError):
        runner._process([_Msg("t.in", 0, 5), _Msg("t.in", 0, 6)])
    assert runner._positions == {("t.in", 0): 5}


def test_a_revocation_after_a_failure_drops_state_without_checkpointing(tmp_path: Path):
    """After a failed batch or checkpoint the revocation on close must not flush, commit or
    write stores: it only drops the partitions (their next owner restores and re-reads)."""
    from confluent_kafka import TopicPartition

    runner = StageRunner(_settings(tmp_path), _Seen())
    runner._assigned = {("t.in", 0)}
    runner._positions = {("t.in", 0): 7}
    runner._failed = True
    runner.checkpoint = lambda: pytest.fail("checkpoint after a failure")  # type: ignore[method-assign]
    runner._on_revoke(runner._consumer, [TopicPartition("t.in", 0)])
    assert runner._assigned == set() and runner._positions == {}


def test_durable_raises_on_a_failed_delivery(tmp_path: Path):
    """The write-ahead barrier a stage calls inside process: any delivery error reported so
    far (by the broker, through the producer's callback) stops the batch before it acts."""
    from pipeline.errors import CheckpointError

    runner = StageRunner(_settings(tmp_path), _Seen())
    runner.durable()  # nothing produced, nothing failed
    runner._delivery_errors.append("t.out[0]: Broker: Message size too large")
    with pytest.raises(CheckpointError, match="too large"):
        runner.durable()
    runner.durable()  # reported once


def test_emit_produces_from_another_thread_and_with_an_explicit_partition(tmp_path: Path):
    """Records that belong to no batch (carrier receipts) are produced from the stage's own
    thread; an Out naming a partition (a store's own changelog) goes to that partition."""
    import threading

    runner = StageRunner(_settings(tmp_path), _Seen())
    produced: list[tuple[str, int]] = []
    runner._producer = _RecordingProducer(produced)  # type: ignore[assignment]
    thread = threading.Thread(target=runner.emit, args=(
        [Out("receipts", "k", b"v"), Out("journal", "k", b"v", partition=3)],))
    thread.start()
    thread.join()
    assert produced == [("t.receipts", -1), ("t.journal", 3)]


class _RecordingProducer:
    def __init__(self, produced: list[tuple[str, int]]) -> None:
        self._produced = produced

    def produce(self, topic: str, value: bytes, key: str, partition: int = -1,
                **_: object) -> None:
        self._produced.append((topic, partition))

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
    settings = _settings(tmp_path)
    runner = StageRunner(settings, _Views())
    producer = _Recorder()
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


def _holding_runner(tmp_path: Path, clock_s: float = 1_000.0
                    ) -> tuple[StageRunner, _Holding, _Consumer]:
    settings = _settings(tmp_path)
    stage = _Holding()
    runner = StageRunner(settings, stage, clock=lambda: clock_s)
    consumer = _Consumer()
    runner._consumer = consumer  # type: ignore[assignment]
    runner._producer = _Producer()  # type: ignore[assignment]
    runner._assigned = {("t.in", 0)}
    return runner, stage, consumer


def test_the_checkpoint_commits_no_further_than_the_stages_commit_floor(tmp_path: Path):
    """A record the stage still holds (offset 5) is not committed past, though later ones
    were processed; once nothing is held, everything processed is committed."""
    runner, stage, consumer = _holding_runner(tmp_path)
    runner._process([_Msg("t.in", 0, 5), _Msg("t.in", 0, 6)])
    stage.floor = 5
    runner.checkpoint()
    stage.floor = None
    runner.checkpoint()
    assert consumer.calls == [("commit", [("t.in", 0, 5)]), ("commit", [("t.in", 0, 7)])]


def test_a_stage_without_holding_hooks_commits_everything_processed(tmp_path: Path):
    """The hooks' defaults leave the protocol as it was: commit the next offset to read."""
    settings = _settings(tmp_path)
    runner = StageRunner(settings, _Seen())
    consumer = _Consumer()
    runner._consumer = consumer  # type: ignore[assignment]
    runner._assigned = {("t.in", 0)}
    runner._process([_Msg("t.in", 0, 5)])
    runner.checkpoint()
    assert consumer.calls == [("commit", [("t.in", 0, 6)])]
    assert runner._until_wake(0.5) == 0.5


def test_the_poll_wait_ends_when_held_work_comes_due(tmp_path: Path):
    """The wait is cut to the stage's next wake, rounded up to the millisecond (librdkafka
    waits whole ms; waking early would spin), never below zero; no wake: the wait stands."""
    runner, stage, _ = _holding_runner(tmp_path, clock_s=1_000.0)
    stage.wake_at = 1_000_006.2
    assert runner._until_wake(0.5) == 0.007
    stage.wake_at = 999_000.0
    assert runner._until_wake(0.5) == 0.0
    stage.wake_at = 1_900_000.0
    assert runner._until_wake(0.5) == 0.5


def test_held_work_come_due_is_produced_and_checkpointed(tmp_path: Path):
    """wake() runs the stage's wake only once its time has come; its outputs are produced
    and count as uncommitted work (the next checkpoint flushes them, then commits)."""
    runner, stage, _ = _holding_runner(tmp_path, clock_s=1_000.0)
    stage.wake_at = 1_000_001.0
    runner.wake()
    assert stage.woken == []
    stage.wake_at = 1_000_000.0
    runner.wake()
    assert stage.woken == [1_000_000]
    assert runner._producer.produced == ["t.out"]  # type: ignore[attr-defined]
    assert runner._uncommitted == 1


def test_a_stage_pauses_and_resumes_a_partition_from_an_offset(tmp_path: Path):
    """The runtime a stage is given pauses, resumes, and resumes from an offset (seek)."""
    runner, _, consumer = _holding_runner(tmp_path)
    runner.pause("t.in", 3)
    runner.resume("t.in", 3)
    runner.resume("t.in", 3, 42)
    assert [(what, tps[0][:2], tps[0][2] if what == "seek" else None)
            for what, tps in consumer.calls] == [
        ("pause", ("t.in", 3), None), ("resume", ("t.in", 3), None),
        ("resume", ("t.in", 3), None), ("seek", ("t.in", 3), 42)]


def test_partitions_revoked_or_lost_are_forgotten_by_the_stage(tmp_path: Path):
    """What a stage holds of a partition no longer ours is dropped (its new owner re-reads
    it from the committed offset): on revocation after the checkpoint, and on loss."""
    runner, stage, consumer = _holding_runner(tmp_path)
    runner._assigned = {("t.in", 0), ("t.in", 1)}
    runner._process([_Msg("t.in", 0, 5)])
    stage.floor = 5
    runner._on_revoke(None, [TopicPartition("t.in", 0)])  # type: ignore[arg-type]
    runner._on_lost(None, [TopicPartition("t.in", 1)])  # type: ignore[arg-type]
    assert consumer.calls == [("commit", [("t.in", 0, 5)])]
    assert stage.forgotten == [("t.in", 0), ("t.in", 1)]


def test_a_store_with_its_own_changelog_restores_from_it_and_gets_no_changelog_records(
    tmp_path: Path
):
    """A store whose changelog is a topic the stage writes (dispatch's journal) is restored
    from that topic, and a checkpoint writes no runtime changelog records for it."""
    from pipeline.runtime.stage import StoreSpec
    from pipeline.runtime.store import MemoryStore

    class _Own(_Seen):
        inputs = (Input("in", StoreSpec("s", None, changelog="own-topic")),)

    runner = StageRunner(_settings(tmp_path), _Own())
    spec = runner._inputs["t.in"].store
    assert spec is not None and runner._changelog(spec) == "t.own-topic"
    store = MemoryStore("s", 0, None)
    store.put("k", {"v": 1}, 0)
    runner._stores[("t.in", 0)] = store
    produced: list[tuple[str, int]] = []
    runner._producer = _RecordingProducer(produced)  # type: ignore[assignment]
    runner._producer.flush = lambda _t: 0  # type: ignore[attr-defined]
    runner.checkpoint()  # no offsets to commit: stops after telling the store
    assert produced == [] and store.dirty_count() == 0


def test_an_idle_worker_sweeps_and_checkpoints_only_when_something_expired(tmp_path: Path):
    """Expiry does not wait for traffic (an idle dispatch forgets journal entries past
    retention): an idle sweep that removes an entry makes a checkpoint due; one that removes
    nothing does not."""
    from pipeline.runtime.store import MemoryStore

    now_s = 1_000.0
    runner = StageRunner(_settings(tmp_path), _Seen(), clock=lambda: now_s)
    store = MemoryStore("s", 0, 1_000)
    store.put("k", {"v": 1}, int(now_s * 1000) - 500)
    runner._stores[("t.in", 0)] = store
    runner._sweep_idle()
    assert runner._uncommitted == 0
    now_s += 1.0
    runner._sweep_idle()
    assert runner._uncommitted == 1 and store.get("k", int(now_s * 1000)) is None


def test_a_stage_batch_cap_below_the_setting_bounds_the_poll(tmp_path: Path):
    """A stage's own batch_max (dispatch: a batch bounds a crash's duplicates) wins when it
    is lower than TELEX_BATCH_MAX; it never raises it."""

    class _Small(_Seen):
        batch_max = 200

    assert StageRunner(_settings(tmp_path), _Small())._batch_max == 200
    _Small.batch_max = 10**6
    assert StageRunner(_settings(tmp_path), _Small())._batch_max == 2_000
