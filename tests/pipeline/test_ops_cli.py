"""`telex lag` and `telex health`, driven as an SRE would, against the real broker."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable

from pipeline.sdk import OutboundMessage, TelexProducer
from pipeline.settings import Settings
from tests.fixtures.telex import REPO, Worker, produce, read_all
from tests.fixtures.waiting import wait_for


def telex(settings: Settings, *args: str, bootstrap: str | None = None
          ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings.to_env()}
    if bootstrap:
        env["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
    return subprocess.run([sys.executable, "-m", "pipeline.cli.main", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_lag_shows_each_stage_group_catching_up(
    topics: Settings, worker: Callable[[str, Settings], Worker]
):
    """After ingest processed 50 requests, `telex lag --json` shows its group at lag 0."""
    with TelexProducer(topics) as producer:
        producer.send_batch([OutboundMessage(
            account_id="a", channel="sms", sender="+14155550100", recipient="+14155550123",
            body="x", idempotency_key=f"lag-{i}") for i in range(50)])
    worker("ingest", topics)
    read_all(topics, "message-accepted", until=lambda r: len(r) >= 50, timeout=120)

    def ingest_lag() -> list[dict]:
        run = telex(topics, "lag", "--json")
        assert run.returncode == 0, run.stderr
        return [r for r in json.loads(run.stdout) if r["stage"] == "ingest"]

    def caught_up(rows: list[dict]) -> bool:
        return sum(r["end"] for r in rows) == 50 and all(r["lag"] == 0 for r in rows)

    # Commits follow processing by up to one checkpoint interval: poll.
    wait_for(ingest_lag, until=caught_up, timeout=60,
             what="ingest's group at lag 0 with 50 records", interval_s=0.5)


def test_health_names_stages_not_consuming_and_dead_letters(
    topics: Settings, worker: Callable[[str, Settings], Worker]
):
    """With only ingest running and one poison record dead-lettered, `telex health` exits 1 and
    says which stages are not consuming and which dead-letter topic holds records."""
    produce(topics, "message-requested", [("TXpoison", b"not avro")])
    worker("ingest", topics)
    read_all(topics, "dlq-ingest", until=lambda r: len(r) >= 1, timeout=120)

    def health() -> tuple[int, dict]:
        run = telex(topics, "health", "--json")
        return run.returncode, json.loads(run.stdout)

    returncode, report = wait_for(health, until=lambda got: got[1]["stages"]["ingest"] >= 1,
                                  timeout=60, what="ingest consuming in `telex health`",
                                  interval_s=0.5)
    assert returncode == 1
    assert report["stages"] == {"ingest": 1, "ratelimit": 0, "scheduler": 0, "dispatch": 0,
                                "reconcile": 0, "status": 0}
    assert report["dead_letters"]["dlq-ingest"] == 1 and not report["healthy"]
    human = telex(topics, "health")
    assert "dispatch   NOT CONSUMING" in human.stdout and "UNHEALTHY" in human.stdout


def test_wrong_broker_address_is_a_clear_error(settings: Settings):
    """A broker address nobody listens on: exit 3 and a message naming the address."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    run = telex(settings, "lag", "--timeout", "3", bootstrap=dead)
    assert run.returncode == 3
    assert f"cannot reach Kafka at {dead}" in run.stderr
