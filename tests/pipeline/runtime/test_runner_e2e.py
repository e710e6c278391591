"""The batch runtime on the real broker: checkpoints, SIGKILL mid-batch, restore, dead letters."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter as Tally
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Message

from pipeline.headers import H_ERROR_CLASS, H_ORIGINAL_OFFSET
from pipeline.runtime.deadletter import header_dict
from pipeline.runtime.runner import changelog_topic
from pipeline.settings import Settings
from pipeline.topics import TopicSpec, admin_client, apply_topics
from tests.fixtures.telex import REPO, produce, read_all
from tests.pipeline.runtime.counter_stage import IN_TOPIC, OUT_TOPIC, STORE, VIEW_TOPIC, Counter

KEYS = 20_000
ROUNDS = 5


@pytest.fixture
def rt(settings: Settings) -> Settings:
    """The counter stage's topics: input, output, its changelog and its dead letters."""
    specs = [TopicSpec(settings.topic(n), "stream", settings.partitions, 1, {})
             for n in (IN_TOPIC, OUT_TOPIC, VIEW_TOPIC, f"dlq-{Counter.name}")]
    specs.append(TopicSpec(changelog_topic(settings, Counter.name, STORE), "compacted",
                           settings.partitions, 1, {"cleanup.policy": "compact"}))
    apply_topics(admin_client(settings), specs)
    return settings


class _Proc:
    def __init__(self, settings: Settings, kind: str, log: Path) -> None:
        env = {**os.environ, **settings.to_env()}
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.pipeline.runtime.counter_stage", kind],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)


@pytest.fixture
def procs() -> Iterator[list[_Proc]]:
    started: list[_Proc] = []
    yield started
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait(10)


def _last_views(settings: Settings, keys: int, rounds: int) -> dict[str, int]:
    """Last view record per key once ``keys`` keys end at ``rounds`` (fails on time-out)."""
    last: dict[str, int] = {}
    seen = 0

    def done(records: list[Message]) -> bool:
        nonlocal seen
        for m in records[seen:]:
            last[m.key().decode()] = int(m.value())
        seen = len(records)
        return sum(1 for v in last.values() if v == rounds) >= keys

    read_all(settings, VIEW_TOPIC, until=done, timeout=240)
    return last


def _final_counts(settings: Settings, expected_total: int) -> dict[str, int]:
    """Highest count per key once the counts add up to ``expected_total`` (fails on time-out).
    Counts only grow per key, so the sum reaches the total exactly when nothing was lost; a
    double-applied record shows as a count above the rounds."""
    final: dict[str, int] = {}
    seen = 0

    def done(records: list[Message]) -> bool:
        nonlocal seen
        for m in records[seen:]:
            key = m.key().decode()
            final[key] = max(final.get(key, 0), int(m.value()))
        seen = len(records)
        return sum(final.values()) >= expected_total

    read_all(settings, OUT_TOPIC, until=done, timeout=240)
    return final


def _restore_logs(log: Path) -> list[dict]:  # type: ignore[type-arg]
    out = []
    for line in log.read_text().splitlines():
        if '"store_restored"' in line:
            out.append(json.loads(line))
    return out


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_sigkill_mid_batch_loses_nothing_and_counts_nothing_twice(
    rt: Settings, procs: list[_Proc], tmp_path: Path, kind: str
):
    """Records for 20,000 keys, five rounds; the worker is SIGKILLed while it processes round
    three and restarted: every key's count ends exactly at five (a lost changelog record would
    end lower, a store restored ahead of its committed input higher), the compacted view's last
    record per key says the same, and the restart restored the store from the changelog."""
    rounds = [[(f"k{i:05d}", b"+") for i in range(KEYS)] for _ in range(ROUNDS)]
    produce(rt, IN_TOPIC, [r for rnd in rounds[:2] for r in rnd])
    first = _Proc(rt, kind, tmp_path / "first.log")
    procs.append(first)
    _final_counts(rt, 2 * KEYS)  # two rounds applied (and checkpointed at least partly)
    produce(rt, IN_TOPIC, rounds[2])

    def mid_round(records: list[Message]) -> bool:
        return len(records) >= 2 * KEYS + KEYS // 4
    read_all(rt, OUT_TOPIC, until=mid_round, timeout=120)
    first.kill()
    produce(rt, IN_TOPIC, [r for rnd in rounds[3:] for r in rnd])
    second = _Proc(rt, kind, tmp_path / "second.log")
    procs.append(second)
    final = _final_counts(rt, ROUNDS * KEYS)
    views = _last_views(rt, KEYS, ROUNDS)
    second.stop()
    assert Tally(final.values()) == Tally({ROUNDS: KEYS})
    # The view ends at the same counts: no view record waiting for a checkpoint was lost.
    assert views == final
    restored = _restore_logs(tmp_path / "second.log")
    assert {r["partition"] for r in restored} == set(range(rt.partitions))
    if kind == "memory":  # a memory store replays the changelog: every key is back
        assert sum(r["records"] for r in restored) >= 2 * KEYS // 2


def test_restart_after_a_clean_stop_resumes_from_the_disk_copy(
    rt: Settings, procs: list[_Proc], tmp_path: Path
):
    """A disk store stopped cleanly replays nothing on restart: its local copy is checkpointed
    with the changelog offset it corresponds to."""
    produce(rt, IN_TOPIC, [(f"k{i}", b"+") for i in range(2_000)])
    first = _Proc(rt, "disk", tmp_path / "first.log")
    procs.append(first)
    _final_counts(rt, 2_000)
    first.stop()
    assert first.proc.returncode == 0
    produce(rt, IN_TOPIC, [(f"k{i}", b"+") for i in range(2_000)])
    second = _Proc(rt, "disk", tmp_path / "second.log")
    procs.append(second)
    final = _final_counts(rt, 4_000)
    second.stop()
    assert set(final.values()) == {2}
    restored = _restore_logs(tmp_path / "second.log")
    assert restored and sum(r["records"] for r in restored) == 0


def test_a_record_that_fails_is_dead_lettered_and_the_partition_moves_on(
    rt: Settings, procs: list[_Proc], tmp_path: Path
):
    """A record whose handling raises goes to dlq-<stage> with its original bytes and
    provenance; the records after it on the same key are still counted."""
    produce(rt, IN_TOPIC, [("k", b"+"), ("k", b"poison"), ("k", b"+")])
    procs.append(_Proc(rt, "memory", tmp_path / "w.log"))
    assert _final_counts(rt, 2) == {"k": 2}
    dead = read_all(rt, f"dlq-{Counter.name}", until=lambda r: len(r) >= 1)
    assert [(m.key(), m.value()) for m in dead] == [(b"k", b"poison")]
    headers = header_dict(dead[0].headers())
    assert headers[H_ERROR_CLASS] == "ValueError"
    assert headers[H_ORIGINAL_OFFSET] == "1"


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_workers_joining_and_leaving_mid_stream_lose_and_double_count_nothing(
    rt: Settings, procs: list[_Proc], tmp_path: Path, kind: str
):
    """A second worker joins while the first is busy (half the partitions move to it), then
    the first stops cleanly (the rest move): every key's count ends exactly at the rounds
    produced, and nothing is dead-lettered (a record polled in the same call that revoked its
    partition belongs to the new owner, not to this one's dead letters)."""
    keys = 5_000
    rounds = [[(f"k{i:04d}", b"+") for i in range(keys)] for _ in range(ROUNDS)]
    first = _Proc(rt, kind, tmp_path / "first.log")
    procs.append(first)
    produce(rt, IN_TOPIC, rounds[0])
    read_all(rt, OUT_TOPIC, until=lambda r: len(r) >= keys // 2, timeout=120)
    produce(rt, IN_TOPIC, rounds[1])
    second = _Proc(rt, kind, tmp_path / "second.log")
    procs.append(second)
    produce(rt, IN_TOPIC, [r for rnd in rounds[2:4] for r in rnd])
    read_all(rt, OUT_TOPIC, until=lambda r: len(r) >= 3 * keys, timeout=180)
    first.stop()
    assert first.proc.returncode == 0
    produce(rt, IN_TOPIC, rounds[4])
    final = _final_counts(rt, ROUNDS * keys)
    second.stop()
    assert Tally(final.values()) == Tally({ROUNDS: keys})
    assert read_all(rt, f"dlq-{Counter.name}") == []
    moved = _restore_logs(tmp_path / "second.log")
    assert {r["partition"] for r in moved} == set(range(rt.partitions))
