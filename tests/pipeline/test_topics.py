"""Topic catalogue applied to the real broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

from confluent_kafka import Producer

from pipeline.settings import Settings, load_settings
from pipeline.topics import (
    COMPACTED,
    TopicSpec,
    admin_client,
    apply_topics,
    catalogue,
    describe_configs,
)
from tests.fixtures.telex import REPO, read_all
from tests.fixtures.waiting import wait_for


def test_apply_creates_every_catalogue_topic(settings: Settings):
    """A first apply creates every topic with its partitions and cleanup policy."""
    report = apply_topics(admin_client(settings), catalogue(settings))
    specs = catalogue(settings)
    assert sorted(report.created) == sorted(s.name for s in specs)
    live = admin_client(settings).list_topics(timeout=10).topics
    configs = describe_configs(admin_client(settings), [s.name for s in specs])
    for s in specs:
        assert len(live[s.name].partitions) == s.partitions
        expected = "compact" if s.kind == COMPACTED else "delete"
        assert configs[s.name]["cleanup.policy"] == expected


def test_second_apply_changes_nothing(settings: Settings):
    """Applying an unchanged catalogue twice reports no change the second time."""
    admin = admin_client(settings)
    apply_topics(admin, catalogue(settings))
    again = apply_topics(admin, catalogue(settings))
    assert not again.changed
    assert len(again.unchanged) == len(catalogue(settings))


def test_changed_config_is_applied(settings: Settings):
    """A config that drifted from the catalogue is set back; nothing else is touched."""
    admin = admin_client(settings)
    specs = catalogue(settings)
    apply_topics(admin, specs)
    target = specs[0]
    changed = TopicSpec(target.name, target.kind, target.partitions, target.replication,
                        {**target.configs, "retention.ms": "12345678"})
    report = apply_topics(admin, [changed])
    assert report.updated == {target.name: {"retention.ms": "12345678"}}
    assert describe_configs(admin, [target.name])[target.name]["retention.ms"] == "12345678"


def test_cli_apply_and_list(settings: Settings):
    """`telex topics apply` then `telex topics list --json` show every topic present."""
    env = {**os.environ, **settings.to_env()}
    cli = [sys.executable, "-m", "pipeline.cli.main", "topics"]
    first = subprocess.run([*cli, "apply", "--json"], env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert len(json.loads(first.stdout)["created"]) == len(catalogue(settings))
    listed = subprocess.run([*cli, "list", "--json"], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert all(r["exists"] for r in rows) and len(rows) == len(catalogue(settings))


def test_compacted_topic_keeps_latest_value_per_key(settings: Settings):
    """Two values for a key, a forced segment roll, and only the latest is read back."""
    name = settings.topic("compaction-probe")
    spec = TopicSpec(name, COMPACTED, 1, 1, {
        "cleanup.policy": "compact", "segment.ms": "100", "min.cleanable.dirty.ratio": "0.01",
        "delete.retention.ms": "100", "min.compaction.lag.ms": "0",
    })
    apply_topics(admin_client(settings), [spec])
    producer = Producer(settings.producer_config())
    producer.produce(name, key="k", value=b"old")
    producer.produce(name, key="k", value=b"new")
    producer.flush(10)
    # The active segment is never cleaned: keep writing another key until the broker has rolled
    # and compacted the segment holding "old" (polled with a deadline, not a fixed wait).
    def values_of_k_after_one_more_write() -> list[bytes]:
        producer.produce(name, key=f"roll-{uuid.uuid4().hex}", value=b"x")
        producer.flush(10)
        return [m.value() for m in read_all(settings, "compaction-probe") if m.key() == b"k"]

    wait_for(values_of_k_after_one_more_write, until=lambda values: values == [b"new"],
             timeout=90, what="key k compacted to its latest value only", interval_s=0.5)


def test_every_topic_keeps_the_producers_codec():
    """Every catalogue topic pins compression.type=producer, so no broker default makes the
    broker re-compress what producers send."""
    assert {s.configs["compression.type"] for s in catalogue(load_settings())} == {"producer"}
